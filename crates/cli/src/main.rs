//! `tessera`: confidential neural-network inference on hardware its users do not trust.
//!
//! One module per command (or group of commands): a new command is one file, one variant of
//! [`Cmd`] and one arm of the dispatch in `main`.

mod asym_figures;
mod attested_cmd;
mod bench_cmd;
mod build_cmd;
mod calibrate;
mod characterize_cmd;
mod chart;
mod compare_cmd;
mod demo_cmd;
mod inspect_cmd;
mod lhe_cmd;
mod qint_cmd;
mod quant_args;
mod remote;
mod run_cmd;
mod scheme_setup;
mod table;
mod train_cmd;
mod twopc_cmd;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::Path;
use tessera_model::{Graph, ImportOptions, builders, load_model};

pub(crate) use quant_args::{QuantArgs, parse_bytes};
pub(crate) use run_cmd::parse_dataset;
pub(crate) use scheme_setup::garble_bar;
pub(crate) use table::Table;

#[derive(Parser)]
#[command(name = "tessera", version, about = "Confidential neural-network inference on untrusted hardware", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model's layers: op, output shape, parameters, MACs, ReLUs and worst-case integer widths.
    Inspect(inspect_cmd::InspectArgs),
    /// Run one input through a model under a scheme and print the prediction and its costs.
    Run(run_cmd::RunArgs),
    /// Accuracy of float vs quantized execution on a data set, with per-layer integer widths.
    Eval(run_cmd::EvalArgs),
    /// Every scheme on one model and the same inputs: one table of their measured costs (online
    /// and offline, bytes on every link, stored bytes per side, trusted share), JSON and charts.
    Compare(compare_cmd::CompareArgs),
    /// Mean latency under load from measured costs and a hardware profile (CryptoNite's system
    /// model: Poisson arrivals, storage budgets, a background precompute worker, FIFO service),
    /// per scheme, storage budget and arrival rate; tables, JSON and charts.
    Characterize(characterize_cmd::CharacterizeArgs),
    /// Write a built-in literature network (seeded random weights) as ONNX.
    Build(build_cmd::BuildArgs),
    /// The main job: train a model on generated data, run private inference under every scheme
    /// that works, and end with one table comparing their costs. Needs nothing outside the repository.
    Demo(demo_cmd::DemoArgs),
    /// Run an enclave: load a model, prove what runs (attestation), serve clients over attested
    /// TLS. In `--mode sim` the TEE is simulated and gives no security.
    Enclave(remote::EnclaveArgs),
    /// Send one input to an enclave over an attested channel and print the prediction.
    Client(remote::ClientArgs),
    /// The untrusted worker of the gc scheme: stores garbled material, evaluates it on request.
    Worker(remote::WorkerArgs),
    /// attested: the key broker in the enclave (serve, print its measurement, serve inference
    /// with a trained model).
    #[command(subcommand)]
    Broker(attested_cmd::BrokerCmd),
    /// attested: the training host's agent (TPM identity; attest, receive the keys, train).
    #[command(subcommand)]
    Agent(attested_cmd::AgentCmd),
    /// attested: a stakeholder's actions (make a signing key; submit or withdraw a policy,
    /// upload an encrypted data set, deposit a model key, submit a job, each signed; fetch the
    /// trained model).
    #[command(subcommand)]
    Stakeholder(attested_cmd::StakeholderCmd),
    /// attested: the whole flow on this machine (swtpm host, broker, training, inference in the
    /// enclave) in one command.
    AttestedDemo(attested_cmd::AttestedDemoArgs),
    /// Train a small CNN through the asym split (or whole, as in a TEE) and report held-out
    /// accuracy, time, and the trusted share of the work.
    Train(train_cmd::TrainArgs),
    /// Forward clients' bytes to an enclave (the untrusted host's role); sees only ciphertext.
    Relay(remote::RelayArgs),
    /// lhe: the untrusted server — stores the encrypted model, computes every conv and dense
    /// layer on ciphertexts for the enclave, relays sealed results to data owners. 2pc: the
    /// model's holder, running Delphi's protocol (either variant) with each client.
    Server(lhe_cmd::ServerArgs),
    /// lhe: the model owner — attest the enclave, encrypt the model's weights under its HE key,
    /// upload them to the server.
    Upload(lhe_cmd::UploadArgs),
    /// Attestation evidence tools.
    Attest {
        #[command(subcommand)]
        cmd: remote::AttestCmd,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Check the worker's compute device: run every kernel (label matmul mod p, AES, float GEMM)
    /// on random inputs and compare with the CPU reference.
    Selftest(build_cmd::SelftestArgs),
    /// Time the reference engines (release builds only give meaningful figures).
    Bench(bench_cmd::BenchArgs),
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    #[error(transparent)]
    Data(#[from] tessera_data::DataError),
    #[error(transparent)]
    Scheme(#[from] tessera_schemes::SchemeError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, CliError>;

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Inspect(a) => inspect_cmd::main(&a),
        Cmd::Run(a) => run_cmd::main_run(&a),
        Cmd::Eval(a) => run_cmd::main_eval(&a),
        Cmd::Compare(a) => compare_cmd::main(&a),
        Cmd::Characterize(a) => characterize_cmd::main(&a),
        Cmd::Build(a) => build_cmd::main_build(&a),
        Cmd::Demo(a) => demo_cmd::main(&a),
        Cmd::Bench(a) => bench_cmd::main(&a),
        Cmd::Selftest(a) => build_cmd::main_selftest(&a),
        Cmd::Enclave(a) => remote::enclave(&a),
        Cmd::Client(a) => remote::client(&a),
        Cmd::Worker(a) => remote::worker(&a),
        Cmd::Train(a) => train_cmd::train(&a),
        Cmd::Broker(c) => attested_cmd::run_broker(c).map_err(CliError::Usage),
        Cmd::Agent(c) => attested_cmd::run_agent(c).map_err(CliError::Usage),
        Cmd::Stakeholder(c) => attested_cmd::run_stakeholder(c).map_err(CliError::Usage),
        Cmd::AttestedDemo(a) => attested_cmd::run_attested_demo(a).map_err(CliError::Usage),
        Cmd::Relay(a) => remote::relay(&a),
        Cmd::Server(a) => lhe_cmd::server(&a),
        Cmd::Upload(a) => lhe_cmd::upload(&a),
        Cmd::Attest { cmd, json } => remote::attest(&cmd, json),
    };
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// An ONNX path, or a built-in network name.
pub(crate) fn resolve_model(spec: &str, opts: &ImportOptions) -> Result<Graph> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(load_model(p, opts)?);
    }
    if let Some(n) = builders::find(spec) {
        return Ok((n.build)(1)?);
    }
    Err(CliError::Usage(format!(
        "'{spec}' is neither an existing ONNX file nor a built-in network ({})",
        builders::NETWORKS
            .iter()
            .map(|n| n.name)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

pub(crate) fn progress(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

pub(crate) fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| CliError::Usage(e.to_string()))?
    );
    Ok(())
}

pub(crate) fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1} k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub(crate) fn pct(a: usize, n: usize) -> String {
    format!("{:.2}%", 100.0 * a as f64 / n.max(1) as f64)
}

/// Write via a temporary file and rename, so a failure leaves no half-written file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp-tessera");
    let io = |source| CliError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Io {
            path: path.display().to_string(),
            source,
        }
    })
}
