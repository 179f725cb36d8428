//! `tessera`: confidential neural-network inference on hardware its users do not trust.

mod attested_cmd;
mod calibrate;
mod lhe_cmd;
mod qint_cmd;
mod remote;
mod table;
mod train_cmd;
mod twopc_cmd;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use qint_cmd::{V2Layer, v2_layers};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use table::Table;
use tessera_data::{Dataset, load_input, load_mnist_dir, synth};
use tessera_engine::gemm::{View, dgemm, sgemm};
use tessera_engine::quant::{NodeWidth, QuantConfig, QuantModel, merge_widths, static_widths};
use tessera_engine::train::{TrainConfig, train_mlp};
use tessera_engine::{ExactModel, Semantics};
use tessera_engine::{argmax, run_f32};
use tessera_model::stats::stats;
use tessera_model::{Graph, ImportOptions, builders, load_model};
use tessera_schemes::{
    Asym, Gc, GcOptions, Lhe, Plain, SCHEMES, Scheme, Summary, Tee, TeeOptions, TwoPc, summarize,
};

#[derive(Parser)]
#[command(name = "tessera", version, about = "Confidential neural-network inference on untrusted hardware", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct QuantArgs {
    /// Integer semantics every scheme reproduces: `pow2` (one global scale 2^f, --frac-bits) or
    /// `v2` (per-channel --weight-bits weights, calibrated per-tensor --act-bits activations,
    /// requantization by a --mult-bits multiplier and a shift, saturation after every layer).
    /// `auto`: v2 with the model's own scales for an int8 model (QuantizeLinear, QLinearConv…),
    /// v2 calibrated on the data when --calibrate is given, pow2 otherwise (v2 without
    /// calibration data would calibrate on generated inputs, which is coarse).
    #[arg(long, default_value = "auto", value_parser = ["auto", "pow2", "v2"])]
    semantics: String,
    /// pow2: fractional bits f of the fixed-point format (values are integers at scale 2^f).
    #[arg(long, default_value_t = tessera_engine::quant::DEFAULT_FRAC_BITS)]
    frac_bits: u32,
    /// v2: calibrate the activation scales on this data set (mnist[:N] from --calibration-data,
    /// or glyphs[:N]). Default: 16 seeded generated inputs uniform in [0, --calibrate-range],
    /// which gives coarser scales than real data.
    #[arg(long, value_name = "DATA")]
    calibrate: Option<String>,
    /// v2: the MNIST directory --calibrate mnist reads.
    #[arg(long, default_value = "../shared/data/mnist-t10k", value_name = "DIR")]
    calibration_data: PathBuf,
    /// v2: largest input value of the generated calibration inputs (when --calibrate is absent).
    #[arg(long, default_value_t = 255.0, value_name = "R")]
    calibrate_range: f32,
    /// v2: weight bits (signed, per output channel).
    #[arg(long, default_value_t = 8)]
    weight_bits: u32,
    /// v2: activation bits (unsigned after ReLU, else signed).
    #[arg(long, default_value_t = 8)]
    act_bits: u32,
    /// v2: bits of the output logits.
    #[arg(long, default_value_t = 16)]
    out_bits: u32,
    /// v2: multiplier bits B of every requantization (smaller: a smaller gc CRT range; larger:
    /// finer per-channel weight scales).
    #[arg(long, default_value_t = tessera_engine::qint::DEFAULT_MULT_BITS)]
    mult_bits: u32,
    /// Reject any integer (activation or accumulator) wider than this many signed bits.
    #[arg(long)]
    max_bits: Option<u32>,
    /// gc: number of CRT primes k (default: the smallest that holds the worst case of every value
    /// for inputs up to the input range, 255; a k below that is refused unless --gc-calibrated).
    #[arg(long)]
    gc_primes: Option<usize>,
    /// gc, opt-in and NOT SOUND: choose k from the widths the model reaches on this data set
    /// (mnist[:N] from --gc-calibration-data, or glyphs[:N]) plus --gc-margin-bits; every result
    /// is labelled "calibrated, not sound", and inputs wider than the data's are refused.
    #[arg(long, value_name = "DATA")]
    gc_calibrated: Option<String>,
    /// gc: the MNIST directory --gc-calibrated mnist reads.
    #[arg(long, default_value = "../shared/data/mnist-t10k", value_name = "DIR")]
    gc_calibration_data: PathBuf,
    /// gc: bits of range added above the calibrated widths.
    #[arg(long, default_value_t = 1, value_name = "B")]
    gc_margin_bits: u32,
    /// 2pc: which party garbles — server-garbler (Delphi: the server garbles offline, the
    /// client evaluates) or client-garbler (CryptoNite: the client garbles, the server
    /// evaluates, less online traffic and client storage). Default for run/eval/demo:
    /// server-garbler; `server --scheme 2pc` without it serves whichever a client asks for.
    #[arg(long, value_parser = ["server-garbler", "client-garbler"])]
    variant: Option<String>,
    /// Memory a model may need when it is loaded, in bytes (K, M, G suffixes: powers of 1024),
    /// per layer and in all. A model over it is refused at import, naming the layer. Default:
    /// 2 GiB per layer, 4 GiB in all.
    #[arg(long, value_parser = parse_bytes)]
    max_memory: Option<u64>,
    /// Work (multiply-accumulates and window reads per inference) a loaded model may need, per
    /// layer and in all. Default: 2^36 per layer, 2^38 in all.
    #[arg(long)]
    max_macs: Option<u64>,
}

/// Bytes with an optional K, M or G (powers of 1024) suffix.
pub(crate) fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|v| v.checked_mul(1 << shift))
        .ok_or_else(|| format!("'{s}' is not a byte count (e.g. 8G, 512M, 1073741824)"))
}

impl QuantArgs {
    /// Import options with the budgets of --max-memory and --max-macs.
    fn import_options(&self) -> ImportOptions {
        let mut limits = tessera_model::ImportLimits::default();
        if let Some(b) = self.max_memory {
            limits = limits.with_max_memory(b);
        }
        if let Some(m) = self.max_macs {
            limits = limits.with_max_macs(m);
        }
        ImportOptions {
            limits,
            ..Default::default()
        }
    }

    fn config(&self) -> QuantConfig {
        QuantConfig {
            frac_bits: self.frac_bits,
            max_bits: self.max_bits,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model's layers: op, output shape, parameters, MACs, ReLUs and worst-case integer widths.
    Inspect {
        /// An ONNX file, or the name of a built-in network (see `tessera build --list`).
        model: String,
        /// Largest |input| assumed for the worst-case integer widths.
        #[arg(long, default_value_t = 255.0)]
        input_range: f32,
        #[command(flatten)]
        quant: QuantArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run one input through a model under a scheme and print the prediction and its costs.
    Run {
        /// An ONNX file, or a built-in network name.
        model: String,
        /// Input: FILE.pb (ONNX TensorProto), FILE.npy, FILE.png, or IDXFILE:INDEX (an MNIST idx image).
        #[arg(long)]
        input: String,
        /// Protection scheme.
        #[arg(long, default_value = "plain")]
        scheme: String,
        #[command(flatten)]
        quant: QuantArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accuracy of float vs quantized execution on a data set, with per-layer integer widths.
    Eval {
        /// An ONNX file, or a built-in network name.
        model: String,
        /// Data set: mnist[:N] (MNIST test set from --data) or glyphs[:N] (generated).
        #[arg(long, default_value = "mnist")]
        dataset: String,
        /// Directory holding t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz].
        #[arg(long, default_value = "../shared/data/mnist-t10k")]
        data: PathBuf,
        /// Scheme whose outputs are checked against the integer reference.
        #[arg(long, default_value = "plain")]
        scheme: String,
        #[command(flatten)]
        quant: QuantArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a built-in literature network (seeded random weights) as ONNX.
    Build {
        /// Network name.
        name: Option<String>,
        /// Output file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Weight seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// List the networks.
        #[arg(long)]
        list: bool,
    },
    /// The main job: train a model on generated data, run private inference under every scheme
    /// that works, and end with one table comparing their costs. Needs nothing outside the repository.
    Demo {
        /// Test images per scheme.
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// Use this ONNX model (with --data for MNIST) instead of the self-trained one.
        #[arg(long)]
        model: Option<String>,
        /// MNIST directory, used with --model.
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        quant: QuantArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
    Selftest {
        /// cpu, or cuda (needs a build with `--features cuda` and a GPU).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Time the reference engines (release builds only give meaningful figures).
    Bench {
        /// mnist-8 ONNX file (skipped when absent).
        #[arg(long, default_value = "../shared/data/onnx-mnist-8/model.onnx")]
        mnist8: PathBuf,
        /// An int8 ONNX model timed under v2 with its own scales (skipped when absent).
        #[arg(
            long,
            default_value = "../shared/data/onnx-shufflenet-v2-12-int8/model.onnx"
        )]
        int8: PathBuf,
        /// Repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Benchmark the gc scheme on these networks instead (comma-separated: mnist-8 or an
        /// ONNX path, dash-a..dash-d, f-small, f): garbling time, garbled bytes, online
        /// latency and bytes.
        #[arg(long, value_delimiter = ',')]
        gc: Vec<String>,
        /// Benchmark the lhe scheme on these networks instead (comma-separated: mnist-8,
        /// dash-a..dash-d, f-small, …): end to end and per layer — server and enclave time,
        /// bytes, stored bytes, HE operation counts — with tee and gc on the same input.
        #[arg(long, value_delimiter = ',')]
        lhe: Vec<String>,
        /// Benchmark the 2pc scheme on these networks instead (comma-separated: mnist-8,
        /// dash-a..dash-d, resnet32-32, …): both variants' offline and online time and bytes,
        /// stored bytes on each side, per activation, with tee, lhe and gc on the same input.
        #[arg(long = "2pc", value_delimiter = ',')]
        two_pc: Vec<String>,
        /// Fractional bits for --gc.
        #[arg(long, default_value_t = 4)]
        gc_frac_bits: u32,
        /// --gc, NOT SOUND (rows are labelled "calibrated, not sound"): choose k from the widths
        /// the benchmark input actually reaches plus this many bits of margin, instead of the
        /// worst case for every input in range.
        #[arg(long)]
        gc_measured_margin: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
        Cmd::Inspect {
            model,
            input_range,
            quant,
            json,
        } => inspect(&model, input_range, &quant, json),
        Cmd::Run {
            model,
            input,
            scheme,
            quant,
            json,
        } => run(&model, &input, &scheme, &quant, json),
        Cmd::Eval {
            model,
            dataset,
            data,
            scheme,
            quant,
            json,
        } => eval(&model, &dataset, &data, &scheme, &quant, json),
        Cmd::Build {
            name,
            output,
            seed,
            list,
        } => build(name, output, seed, list),
        Cmd::Demo {
            n,
            model,
            data,
            quant,
            json,
        } => demo(n, model, data, &quant, json),
        Cmd::Bench {
            mnist8,
            int8,
            reps,
            gc,
            gc_frac_bits,
            gc_measured_margin,
            lhe,
            two_pc,
            json,
        } => {
            if !two_pc.is_empty() {
                twopc_cmd::bench_2pc(&two_pc, &mnist8, reps, json)
            } else if !lhe.is_empty() {
                lhe_cmd::bench_lhe(&lhe, &mnist8, reps, json)
            } else if gc.is_empty() {
                bench(&mnist8, &int8, reps, json)
            } else {
                bench_gc(&gc, &mnist8, reps, gc_frac_bits, gc_measured_margin, json)
            }
        }
        Cmd::Selftest { device, seed } => selftest(&device, seed),
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

/// Show the background garbler's progress until the first garbling is ready.
fn garble_bar(b: &tessera_gc::GcBackend) {
    let pb = progress(1, "garbling");
    loop {
        let p = b.progress();
        if p.garbled > 0 {
            break;
        }
        if p.steps_total > 0 {
            pb.set_length(p.steps_total as u64);
            pb.set_position(p.steps_done as u64);
        }
        if b.wait_ready(std::time::Duration::from_millis(200)).is_err() {
            break;
        }
        if b.progress().garbled > 0 {
            break;
        }
    }
    pb.finish_and_clear();
}

fn selftest(device: &str, seed: u64) -> Result<()> {
    let usage = |e: tessera_cuda::CudaError| CliError::Usage(e.to_string());
    let dev = tessera_cuda::Device::open(device.parse().map_err(usage)?).map_err(usage)?;
    println!("device: {}", dev.describe());
    let checks = tessera_cuda::selftest::run(&dev, seed).map_err(usage)?;
    let mut t = Table::new(&["kernel", "result", "detail"]);
    let mut failed = 0;
    for c in &checks {
        failed += usize::from(!c.ok);
        t.row(vec![
            c.name.clone(),
            if c.ok { "ok" } else { "MISMATCH" }.into(),
            c.detail.clone(),
        ]);
    }
    println!("{}", t.render());
    if failed > 0 {
        return Err(CliError::Usage(format!(
            "{failed} of {} kernel checks differ from the CPU reference",
            checks.len()
        )));
    }
    Ok(())
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

/// Refuses, before any work (input, data set, enclave, worker), a scheme that cannot run `g`:
/// the message names the node and op it cannot run and the schemes that can.
fn require_scheme(name: &str, g: &Graph, sem: &Semantics) -> Result<()> {
    if !SCHEMES.contains(&name) {
        return Err(CliError::Usage(format!(
            "unknown scheme '{name}'; this build offers: {}",
            SCHEMES.join(", ")
        )));
    }
    match tessera_schemes::check(name, g, sem) {
        Ok(()) => Ok(()),
        Err(e) => {
            let can = tessera_schemes::schemes_for(g, sem);
            Err(CliError::Usage(format!(
                "scheme {name} cannot run this model: {e}; {}",
                if can.is_empty() {
                    "no scheme of this build can (only the float engine runs it; every \
                     scheme needs the integer semantics)"
                        .to_string()
                } else {
                    format!("schemes that can: {}", can.join(", "))
                }
            )))
        }
    }
}

fn make_scheme(
    name: &str,
    g: &Graph,
    quant: &QuantArgs,
    sem: &Semantics,
) -> Result<Box<dyn Scheme>> {
    match name {
        "plain" => Ok(Box::new(Plain::new(g, sem)?)),
        "tee" => {
            let t = Tee::new(g, sem, TeeOptions::default())?;
            eprintln!("tee: {}", t.describe());
            Ok(Box::new(t))
        }
        "asym" => Ok(Box::new(Asym::new(
            g,
            sem,
            &tessera_schemes::AsymOptions::default(),
        )?)),
        "gc" => {
            let t = Gc::new(
                g,
                GcOptions {
                    semantics: sem.clone(),
                    primes: quant.gc_primes,
                    calibration: calibrate::gc_calibration(g, quant)?,
                    ..GcOptions::default()
                },
            )?;
            garble_bar(t.backend());
            let st = t.stats();
            eprintln!(
                "gc: k = {} CRT primes ({}), {} of garbled material per inference, the enclave keeps {} per garbling",
                st.primes,
                match &st.calibrated {
                    Some(src) => format!("{}: calibrated on {src}", tessera_gc::CALIBRATED_LABEL),
                    None => "sound for every input in range".into(),
                },
                human(st.material_bytes),
                human(st.kept_bytes)
            );
            Ok(Box::new(t))
        }
        "lhe" => {
            let t = Lhe::new(g, sem)?;
            let u = t.upload();
            eprintln!(
                "lhe: {}; the model owner uploaded {} ciphertexts ({})",
                t.params(),
                u.ciphertexts,
                human(u.bytes_stored)
            );
            Ok(Box::new(t))
        }
        "2pc" => {
            let variant: tessera_twopc::session::Variant = quant
                .variant
                .as_deref()
                .unwrap_or("server-garbler")
                .parse()
                .map_err(CliError::Usage)?;
            let t = TwoPc::with_variant(g, sem, variant)?;
            eprintln!(
                "2pc ({}, both parties in this process): {}",
                variant.name(),
                t.describe()
            );
            Ok(Box::new(t))
        }
        other => Err(CliError::Usage(format!(
            "unknown scheme '{other}'; this build offers: {}",
            SCHEMES.join(", ")
        ))),
    }
}

fn progress(len: u64, msg: &str) -> ProgressBar {
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

fn print_json<T: Serialize>(v: &T) -> Result<()> {
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

fn inspect(spec: &str, input_range: f32, quant: &QuantArgs, json: bool) -> Result<()> {
    let g = resolve_model(spec, &quant.import_options())?;
    let st = stats(&g);
    let sem = quant.semantics(&g);
    let v2_layers = match &sem {
        Ok(s @ Semantics::V2 { .. }) => Some(v2_layers(&g, s)?),
        _ => None,
    };
    let widths = QuantModel::new(&g, quant.config()).and_then(|q| static_widths(&q, input_range));
    let gc_k = match &sem {
        Ok(s) => tessera_gc::sound_primes(&g, s, input_range).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            name: &'a str,
            stats: &'a tessera_model::stats::NetStats,
            frac_bits: u32,
            worst_case_widths: Option<Vec<NodeWidth>>,
            integer_semantics_error: Option<String>,
            /// The CRT primes gc needs to hold every value for |input| ≤ the input range
            /// (under v2: for every input).
            gc_sound_primes: Option<usize>,
            gc_error: Option<String>,
            /// The integer semantics, in words.
            semantics: String,
            /// Under v2: per node, the scales, multipliers, shift and clamp bounds.
            v2_layers: Option<Vec<V2Layer>>,
        }
        let (w, e) = match widths {
            Ok(w) => (Some(w), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let (k, ke) = match gc_k {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e.to_string())),
        };
        return print_json(&Out {
            name: &g.name,
            stats: &st,
            frac_bits: quant.frac_bits,
            worst_case_widths: w,
            integer_semantics_error: e,
            gc_sound_primes: k,
            gc_error: ke,
            semantics: sem
                .as_ref()
                .map_or_else(|e| e.to_string(), Semantics::label),
            v2_layers,
        });
    }
    println!(
        "model {} — inputs {:?}, outputs {:?}",
        g.name,
        g.inputs.iter().map(|&i| g.shape(i)).collect::<Vec<_>>(),
        g.outputs.iter().map(|&i| g.shape(i)).collect::<Vec<_>>()
    );
    let mut t = Table::new(&[
        "node",
        "op",
        "output shape",
        "params",
        "MACs",
        "ReLUs",
        "out bits",
        "acc bits",
    ]);
    let wv = widths.as_ref().ok();
    for (i, l) in st.layers.iter().enumerate() {
        let w = wv.and_then(|w| w.get(i + 1));
        t.row(vec![
            l.name.clone(),
            l.op.clone(),
            format!("{:?}", l.shape),
            human(l.params),
            human(l.macs),
            human(l.relus),
            w.map_or("-".into(), |w| w.out_bits().to_string()),
            w.map_or("-".into(), |w| w.acc_bits().to_string()),
        ]);
    }
    t.row(vec![
        "total".into(),
        String::new(),
        String::new(),
        human(st.params),
        human(st.macs),
        st.relus.to_string(),
        String::new(),
        String::new(),
    ]);
    println!("{}", t.render());
    match widths {
        Ok(_) => println!(
            "integer widths: worst case for |input| ≤ {input_range} at f = {} (signed bits; `eval` reports the widths real data reach)",
            quant.frac_bits
        ),
        // Under v2 the power-of-two widths are only a side note.
        Err(e) if v2_layers.is_some() => {
            println!("(the power-of-two semantics cannot run this model: {e})")
        }
        Err(e) => println!("integer semantics: not available for this model: {e}"),
    }
    if let Some(layers) = &v2_layers {
        let mut t = Table::new(&[
            "node",
            "v2 op",
            "out scale",
            "interval",
            "shift",
            "multipliers",
            "max |w|",
        ]);
        for l in layers {
            t.row(vec![
                l.node.clone(),
                l.op.into(),
                format!("{:.4e}", l.scale),
                format!("[{}, {}]", l.lo, l.hi),
                l.shift.map_or("-".into(), |n| n.to_string()),
                l.mult.map_or("-".into(), |[a, b]| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}..{b}")
                    }
                }),
                l.weight_max.map_or("-".into(), |w| w.to_string()),
            ]);
        }
        if let Ok(s) = &sem {
            println!("integer semantics {}:\n{}", s.label(), t.render());
        }
    }
    match (gc_k, &sem) {
        (Ok(k), Ok(Semantics::V2 { .. })) => println!(
            "gc: sound k = {k} CRT primes for every input (v2 saturates; what `--scheme gc` picks)"
        ),
        (Ok(k), _) => println!(
            "gc: sound k = {k} CRT primes for |input| ≤ {input_range} at f = {} (what `--scheme gc` picks)",
            quant.frac_bits
        ),
        (Err(e), _) => println!("{e}"),
    }
    Ok(())
}

fn run(spec: &str, input: &str, scheme: &str, quant: &QuantArgs, json: bool) -> Result<()> {
    let g = resolve_model(spec, &quant.import_options())?;
    let sem = quant.semantics_for(&g, scheme)?;
    require_scheme(scheme, &g, &sem)?;
    let x = load_input(input)?;
    let float = run_f32(&g, std::slice::from_ref(&x))?;
    let f0 = float
        .first()
        .ok_or_else(|| CliError::Usage("the model has no output".into()))?;
    let mut s = make_scheme(scheme, &g, quant, &sem)?;
    let r = s.infer(&x)?;
    let caveat = s.caveat();
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            scheme: &'a str,
            /// Set when the result holds only with a caveat ("calibrated, not sound").
            caveat: Option<String>,
            class: usize,
            output: &'a [f32],
            exact_output: &'a [i64],
            /// The integer semantics, in words.
            semantics: String,
            /// The real value of one step of `exact_output`.
            output_scale: f64,
            float_output: &'a [f32],
            float_class: usize,
            cost: &'a tessera_schemes::Cost,
        }
        return print_json(&Out {
            scheme,
            caveat,
            class: r.class,
            output: r.output.data(),
            exact_output: r.exact.data(),
            semantics: sem.label(),
            output_scale: r.scale,
            float_output: f0.data(),
            float_class: argmax(f0.data()),
            cost: &r.cost,
        });
    }
    println!(
        "scheme {scheme}{}: class {} (float engine: class {})",
        caveat.map_or(String::new(), |c| format!(" ({c})")),
        r.class,
        argmax(f0.data())
    );
    let mut t = Table::new(&["index", "scheme output", "exact integer", "float"]);
    for (i, ((o, e), f)) in r
        .output
        .data()
        .iter()
        .zip(r.exact.data())
        .zip(f0.data())
        .enumerate()
        .take(20)
    {
        t.row(vec![
            i.to_string(),
            format!("{o:.4}"),
            e.to_string(),
            format!("{f:.4}"),
        ]);
    }
    println!("{}", t.render());
    println!(
        "latency {:.3} ms, {} B up, {} B down, {} rounds, {} B stored",
        r.cost.latency.as_secs_f64() * 1e3,
        r.cost.bytes_up,
        r.cost.bytes_down,
        r.cost.rounds,
        r.cost.stored_bytes
    );
    if let Some(m) = r.cost.modeled_tee {
        println!(
            "modeled latency in a real TEE (cost model, not measured): {:.3} ms",
            m.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn parse_dataset(spec: &str, dir: &Path) -> Result<Dataset> {
    let (name, n) = match spec.split_once(':') {
        Some((a, b)) => (
            a,
            Some(b.parse::<usize>().map_err(|_| {
                CliError::Usage(format!("'{b}' is not a count in --dataset {spec}"))
            })?),
        ),
        None => (spec, None),
    };
    let mut d = match name {
        "mnist" => load_mnist_dir(dir)?,
        "glyphs" => synth::glyphs(n.unwrap_or(2000), 2),
        other => {
            return Err(CliError::Usage(format!(
                "unknown data set '{other}'; use mnist[:N] or glyphs[:N]"
            )));
        }
    };
    if let Some(n) = n {
        d.truncate(n);
    }
    Ok(d)
}

#[derive(Serialize)]
struct EvalReport {
    model: String,
    images: usize,
    /// The integer semantics, in words.
    semantics: String,
    float_correct: usize,
    quantized_correct: usize,
    agreement: usize,
    scheme: Summary,
    widths: Vec<NodeWidth>,
}

fn evaluate(
    g: &Graph,
    d: &Dataset,
    scheme: &str,
    quant: &QuantArgs,
    sem: &Semantics,
    show: bool,
) -> Result<EvalReport> {
    use rayon::prelude::*;
    let qm = ExactModel::new(g, sem)?;
    let pb = if show {
        progress(d.count as u64, "reference")
    } else {
        ProgressBar::hidden()
    };
    let refs: Vec<(usize, tessera_model::Tensor<i64>, Vec<NodeWidth>)> = (0..d.count)
        .into_par_iter()
        .map(|i| -> Result<_> {
            let x = d
                .image(i)
                .ok_or_else(|| CliError::Usage(format!("image {i} missing")))?;
            let f = argmax(
                run_f32(g, std::slice::from_ref(&x))?
                    .first()
                    .map(|t| t.data())
                    .unwrap_or(&[]),
            );
            // Widths are tracked by the power-of-two engine; v2 saturates every activation and
            // its intervals are proven (`inspect` prints them).
            let (out, widths) = match &qm {
                ExactModel::Pow2(q) => {
                    let r = q.run(&[x])?;
                    let out = r
                        .outputs
                        .into_iter()
                        .next()
                        .ok_or_else(|| CliError::Usage("no output".into()))?;
                    (out, r.widths)
                }
                ExactModel::V2(m) => (m.run(&x)?, Vec::new()),
            };
            pb.inc(1);
            Ok((f, out, widths))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let mut s = make_scheme(scheme, g, quant, sem)?;
    let pb = if show {
        progress(d.count as u64, scheme)
    } else {
        ProgressBar::hidden()
    };
    let mut runs = Vec::with_capacity(d.count);
    for i in 0..d.count {
        let x = d
            .image(i)
            .ok_or_else(|| CliError::Usage(format!("image {i} missing")))?;
        runs.push(s.infer(&x)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let exact: Vec<_> = refs.iter().map(|r| r.1.clone()).collect();
    let summary = summarize(
        s.as_ref(),
        &runs,
        Some(&d.labels),
        &exact,
        scheme != "plain",
    );
    let mut widths = Vec::new();
    let (mut fc, mut qc, mut agree) = (0, 0, 0);
    for (i, (f, out, w)) in refs.iter().enumerate() {
        let q = argmax(qm.dequantize(out)?.data());
        let y = d.labels.get(i).map(|&l| usize::from(l));
        fc += usize::from(Some(*f) == y);
        qc += usize::from(Some(q) == y);
        agree += usize::from(*f == q);
        merge_widths(&mut widths, w);
    }
    Ok(EvalReport {
        model: g.name.clone(),
        images: d.count,
        semantics: sem.label(),
        float_correct: fc,
        quantized_correct: qc,
        agreement: agree,
        scheme: summary,
        widths,
    })
}

fn pct(a: usize, n: usize) -> String {
    format!("{:.2}%", 100.0 * a as f64 / n.max(1) as f64)
}

fn eval(
    spec: &str,
    dataset: &str,
    dir: &Path,
    scheme: &str,
    quant: &QuantArgs,
    json: bool,
) -> Result<()> {
    let g = resolve_model(spec, &quant.import_options())?;
    let sem = quant.semantics_for(&g, scheme)?;
    require_scheme(scheme, &g, &sem)?;
    let d = parse_dataset(dataset, dir)?;
    let r = evaluate(&g, &d, scheme, quant, &sem, !json)?;
    if json {
        return print_json(&r);
    }
    println!("{} on {} images ({}):", r.model, r.images, r.semantics);
    println!(
        "  float top-1       {} ({})",
        r.float_correct,
        pct(r.float_correct, r.images)
    );
    println!(
        "  quantized top-1   {} ({})",
        r.quantized_correct,
        pct(r.quantized_correct, r.images)
    );
    println!(
        "  float/quantized top-1 agreement {} ({})",
        r.agreement,
        pct(r.agreement, r.images)
    );
    println!(
        "  scheme {}: {} of {} outputs bit-exact with the integer reference, median latency {:.3} ms",
        r.scheme.scheme, r.scheme.exact_matches, r.images, r.scheme.latency_ms_median
    );
    let mut t = Table::new(&["node", "op", "out bits", "acc bits"]);
    for w in &r.widths {
        t.row(vec![
            w.name.clone(),
            w.op.clone(),
            w.out_bits().to_string(),
            w.acc_bits().to_string(),
        ]);
    }
    println!("largest signed integer widths reached:\n{}", t.render());
    Ok(())
}

fn build(name: Option<String>, output: Option<PathBuf>, seed: u64, list: bool) -> Result<()> {
    if list || name.is_none() {
        let mut t = Table::new(&["name", "ReLUs", "MACs", "description"]);
        for n in builders::NETWORKS {
            let g = (n.build)(seed)?;
            let s = stats(&g);
            t.row(vec![
                n.name.into(),
                s.relus.to_string(),
                human(s.macs),
                n.about.into(),
            ]);
        }
        println!("{}", t.render());
        return Ok(());
    }
    let name = name.unwrap_or_default();
    let spec = builders::find(&name).ok_or_else(|| {
        CliError::Usage(format!(
            "no built-in network '{name}'; see `tessera build --list`"
        ))
    })?;
    let g = (spec.build)(seed)?;
    let bytes = tessera_model::export::export_model(&g)?;
    let out = output.unwrap_or_else(|| PathBuf::from(format!("{name}.onnx")));
    write_atomic(&out, &bytes)?;
    println!(
        "wrote {} ({} bytes, {} ReLUs)",
        out.display(),
        bytes.len(),
        stats(&g).relus
    );
    Ok(())
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

/// Test images the demo runs through `gc` (one garbling each).
const GC_DEMO_IMAGES: usize = 20;

fn demo(
    n: usize,
    model: Option<String>,
    data: Option<PathBuf>,
    quant: &QuantArgs,
    json: bool,
) -> Result<()> {
    let (g, test, calib, calib_source) = match model {
        Some(spec) => {
            let g = resolve_model(&spec, &quant.import_options())?;
            let dir = data.unwrap_or_else(|| PathBuf::from("../shared/data/mnist-t10k"));
            let mut d = load_mnist_dir(&dir)?;
            d.truncate(n);
            let calib: Vec<tessera_model::Tensor> =
                (0..d.count.min(64)).filter_map(|i| d.image(i)).collect();
            (g, d, calib, "the first 64 images of --data")
        }
        None => {
            let train = synth::glyphs(6000, 11);
            let mut test = synth::glyphs(n, 12);
            test.truncate(n);
            let cfg = TrainConfig::default();
            let pb = if json {
                ProgressBar::hidden()
            } else {
                progress(cfg.epochs as u64, "training")
            };
            let t0 = Instant::now();
            let g = train_mlp(
                &train.pixels,
                &train.labels,
                &[1, 1, synth::SIDE, synth::SIDE],
                10,
                &cfg,
                |e, loss| {
                    pb.set_message(format!("loss {loss:.3}"));
                    pb.set_position(e as u64 + 1);
                },
            )?;
            pb.finish_and_clear();
            if !json {
                println!(
                    "trained {} (dense {}-{}-10) on 6,000 generated glyph images in {:.1} s",
                    g.name,
                    synth::SIDE * synth::SIDE,
                    cfg.hidden
                        .iter()
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join("-"),
                    t0.elapsed().as_secs_f64()
                );
            }
            let calib: Vec<tessera_model::Tensor> =
                (0..64).filter_map(|i| train.image(i)).collect();
            (g, test, calib, "64 training glyphs")
        }
    };
    // v2 without --calibrate: the demo calibrates on its own images (the training glyphs, or
    // the first 64 images of --data), which real deployments would do with their own data.
    let sem = match (&quant.calibrate, quant.v2_for(&g)) {
        (None, true) => quant.semantics_on(&g, &calib, calib_source)?,
        _ => quant.semantics(&g)?,
    };
    let mut rows = Vec::new();
    let mut lhe_own_v2 = false;
    for &scheme in SCHEMES {
        // gc garbles the whole network afresh for every inference: a sample of the test set
        // keeps the demo short.
        let mut sample;
        let data = if (scheme == "gc" || scheme == "2pc") && test.count > GC_DEMO_IMAGES {
            sample = test.clone();
            sample.truncate(GC_DEMO_IMAGES);
            &sample
        } else {
            &test
        };
        // lhe reproduces v2 only: under pow2 it runs v2 calibrated on the same images, and its
        // row says so.
        let own;
        let (sem_s, note) = match (&sem, scheme) {
            (Semantics::Pow2(_), "lhe" | "2pc") => {
                let mut q = quant.clone();
                q.semantics = "v2".into();
                own = q.semantics_on(&g, &calib, calib_source)?;
                lhe_own_v2 = true;
                (&own, " (v2)")
            }
            _ => (&sem, ""),
        };
        let mut r = evaluate(&g, data, scheme, quant, sem_s, !json)?;
        if !json {
            println!(
                "{scheme}{note}: float top-1 {}, quantized top-1 {}, {} of {} bit-exact with the integer reference",
                pct(r.float_correct, r.images),
                pct(r.quantized_correct, r.images),
                r.scheme.exact_matches,
                r.images
            );
        }
        r.scheme.scheme.push_str(note);
        rows.push(r.scheme);
    }
    // attested: train on an attested (software-TPM) host with keys from the broker in the
    // enclave, then predict in the enclave; its row joins the table.
    let dir = std::env::temp_dir().join(format!("tessera-demo-attested-{}", std::process::id()));
    if !json {
        println!(
            "attested: stakeholders, broker, swtpm-attested host, training, inference in the enclave…"
        );
    }
    let attested = tessera_attested::demo_flow_with(&dir, false);
    let _ = std::fs::remove_dir_all(&dir);
    match &attested {
        Ok(r) => {
            let n = r.test_rows.max(1) as u64;
            if !json {
                println!("{}", r.summary());
            }
            rows.push(Summary {
                scheme: "attested".into(),
                protects: "data and model from hosts off the allow-list (software TPM here)".into(),
                inferences: r.test_rows,
                correct: Some((r.test_accuracy * r.test_rows as f64).round() as usize),
                exact_matches: 0,
                exact_semantics: false,
                latency_ms_median: r.inference_mean_ms,
                bytes_up: r.inference_bytes.0 / n,
                bytes_down: r.inference_bytes.1 / n,
                rounds: 1,
                stored_bytes: 0,
                trusted_share: Some(1.0),
                modeled_tee_ms_median: Some(r.modeled_sgx_mean_ms),
            });
        }
        Err(e) => {
            if !json {
                println!("attested: not run: {e}");
            }
        }
    }
    if json {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "scheme",
        "hides from untrusted side",
        "top-1",
        "bit-exact",
        "latency ms (median)",
        "modeled TEE ms",
        "bytes up",
        "bytes down",
        "rounds",
        "stored B",
        "trusted share",
    ]);
    for s in &rows {
        t.row(vec![
            s.scheme.clone(),
            s.protects.clone(),
            s.correct.map_or("-".into(), |c| pct(c, s.inferences)),
            if s.exact_semantics {
                format!("{}/{}", s.exact_matches, s.inferences)
            } else {
                "float".into()
            },
            format!("{:.3}", s.latency_ms_median),
            s.modeled_tee_ms_median
                .map_or("-".into(), |m| format!("{m:.3}")),
            human(s.bytes_up),
            human(s.bytes_down),
            s.rounds.to_string(),
            human(s.stored_bytes),
            s.trusted_share
                .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x)),
        ]);
    }
    println!("\n{}", t.render());
    println!(
        "tee runs a SIMULATED enclave here (no security); its modeled column applies the SGX1 cost model"
    );
    println!(
        "gc ran on the first {GC_DEMO_IMAGES} images (a fresh garbling per inference; 'stored B' is the garbled material the worker holds per inference, 'bytes' are online enclave<->worker bytes)"
    );
    println!(
        "asym is a float scheme (equal to the float engine within 1e-4, not to the integer reference); its trusted share counts the low-rank parts and the layers kept whole"
    );
    println!(
        "attested trained its own model (a dense net on 3,000 generated glyphs) on the attested host and predicts 500 held-out glyphs in the enclave (float, not the integer reference)"
    );
    if lhe_own_v2 {
        println!(
            "lhe (v2) and 2pc (v2) ran under the integer semantics v2 where the others ran pow2 (they need every activation saturated), calibrated on the same images"
        );
    }
    println!(
        "lhe: 'bytes' are data owner<->server plus enclave<->server, 'stored B' the encrypted model on the server; its enclave (simulated here) holds the HE key and runs the non-linear layers, which have no multiply-accumulates on a dense model"
    );
    println!(
        "2pc ran on the first {GC_DEMO_IMAGES} images (server-garbler, both parties in this process; 'bytes' count offline and online, 'stored B' the garbled material the client holds per inference; no TEE)"
    );
    Ok(())
}

#[derive(Serialize)]
struct BenchRow {
    what: String,
    engine: String,
    median_ms: f64,
    per_second: f64,
    /// Multiply-accumulates per second (billions).
    gmacs: f64,
    /// gmacs over the raw GEMM ceiling of the same precision measured in the same run.
    ratio_to_gemm: f64,
}

fn time_median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(tessera_schemes::median(&mut v))
}

#[derive(Serialize)]
struct GcBenchRow {
    network: String,
    primes: usize,
    /// "sound", or "calibrated, not sound" when k came from measured widths.
    range: String,
    relus: u64,
    garble_ms: f64,
    garbled_bytes: u64,
    online_ms: f64,
    online_bytes_up: u64,
    online_bytes_down: u64,
    /// (inputs + outputs) × k × 16 B, DESIGN §2.1's estimate of online bytes.
    online_bytes_formula: u64,
    enclave_bytes_kept: u64,
    rounds: u64,
    exact: bool,
    threads: usize,
}

fn bench_gc(
    nets: &[String],
    mnist8: &Path,
    reps: usize,
    f: u32,
    measured_margin: Option<u32>,
    json: bool,
) -> Result<()> {
    let threads = rayon::current_num_threads();
    let cfg = QuantConfig {
        frac_bits: f,
        max_bits: None,
    };
    let mut rows = Vec::new();
    for name in nets {
        let (g, x, range) = if name == "mnist-8" {
            if !mnist8.exists() {
                eprintln!("skipping mnist-8: {} not found", mnist8.display());
                continue;
            }
            let g = load_model(mnist8, &ImportOptions::default())?;
            let dir = mnist8.parent().unwrap_or(Path::new("."));
            let x = tessera_data::load_pb(&dir.join("test_data_set_0/input_0.pb"))?;
            (g, x, 255.0)
        } else {
            let g = resolve_model(name, &ImportOptions::default())?;
            let shape = g
                .inputs
                .first()
                .map(|&v| g.shape(v).to_vec())
                .ok_or_else(|| CliError::Usage(format!("{name} has no input")))?;
            let n: usize = shape.iter().product();
            let x = tessera_model::Tensor::new(
                shape,
                (0..n)
                    .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                    .collect(),
            )?;
            (g, x, 1.0)
        };
        if !json {
            eprintln!("gc bench: {name}: compiling and garbling…");
        }
        let calibration = match measured_margin {
            Some(m) => Some(tessera_gc::Calibration {
                widths: QuantModel::new(&g, cfg)?
                    .run(std::slice::from_ref(&x))?
                    .widths,
                margin_bits: m,
                source: "the benchmark input".into(),
            }),
            None => None,
        };
        let mut s = Gc::new(
            &g,
            GcOptions {
                semantics: Semantics::Pow2(cfg),
                input_range: range,
                calibration,
                pool: 1,
                overlap: false,
                ..GcOptions::default()
            },
        )?;
        let reference = QuantModel::new(&g, cfg)?
            .run(std::slice::from_ref(&x))?
            .outputs
            .into_iter()
            .next();
        let mut online = Vec::new();
        let mut last = None;
        let mut exact = true;
        for _ in 0..reps.max(1) {
            s.wait_ready(std::time::Duration::from_secs(7200))?;
            let r = s.infer(&x)?;
            exact &= reference
                .as_ref()
                .is_some_and(|e| e.data() == r.exact.data());
            online.push(r.cost.latency.as_secs_f64() * 1e3);
            last = Some(r.cost);
        }
        let st = s.stats();
        let c = last.unwrap_or_default();
        let inputs = x.len() as u64;
        let outputs = reference.as_ref().map_or(0, |o| o.len() as u64);
        let row = GcBenchRow {
            network: name.clone(),
            primes: st.primes,
            range: st
                .calibrated
                .as_ref()
                .map_or("sound".into(), |_| tessera_gc::CALIBRATED_LABEL.into()),
            relus: stats(&g).relus,
            garble_ms: st.garble_ms,
            garbled_bytes: st.material_bytes,
            online_ms: tessera_schemes::median(&mut online),
            online_bytes_up: c.bytes_up,
            online_bytes_down: c.bytes_down,
            online_bytes_formula: (inputs + outputs) * st.primes as u64 * 16,
            enclave_bytes_kept: st.kept_bytes,
            rounds: c.rounds,
            exact,
            threads,
        };
        eprintln!(
            "gc bench: {}: k = {} ({}), garble {:.0} ms, {} B garbled, online {:.0} ms, {} B up / {} B down, {} round(s), bit-exact {}",
            row.network,
            row.primes,
            row.range,
            row.garble_ms,
            row.garbled_bytes,
            row.online_ms,
            row.online_bytes_up,
            row.online_bytes_down,
            row.rounds,
            row.exact
        );
        rows.push(row);
    }
    if json {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "network",
        "k",
        "CRT range",
        "garble ms",
        "garbled B",
        "online ms",
        "online B up/down",
        "vs formula",
        "enclave keeps",
        "rounds",
        "bit-exact",
    ]);
    for r in &rows {
        t.row(vec![
            r.network.clone(),
            r.primes.to_string(),
            r.range.clone(),
            format!("{:.0}", r.garble_ms),
            human(r.garbled_bytes),
            format!("{:.0}", r.online_ms),
            format!(
                "{} / {}",
                human(r.online_bytes_up),
                human(r.online_bytes_down)
            ),
            format!(
                "{:.2}×",
                (r.online_bytes_up + r.online_bytes_down) as f64
                    / r.online_bytes_formula.max(1) as f64
            ),
            human(r.enclave_bytes_kept),
            r.rounds.to_string(),
            r.exact.to_string(),
        ]);
    }
    println!("{}", t.render());
    println!(
        "{threads} threads; online = input labels to the worker, evaluation, output labels back, decode"
    );
    Ok(())
}

fn bench(mnist8: &Path, int8: &Path, reps: usize, json: bool) -> Result<()> {
    use rayon::prelude::*;
    let mut rows = Vec::new();
    let batch = 256usize;
    // Ceiling: the blocked GEMM alone on a large square product, f32 (float engine) and f64
    // (the integer engine's exact path).
    let n = 1024usize;
    let a32: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32).collect();
    let mut c32 = vec![0f32; n * n];
    let ms32 = time_median(reps, || {
        sgemm(
            n,
            n,
            n,
            1.0,
            View::rows(&a32, n),
            View::rows(&a32, n),
            0.0,
            &mut c32,
        );
        Ok(())
    })?;
    let a64: Vec<f64> = a32.iter().map(|&v| f64::from(v)).collect();
    let mut c64 = vec![0f64; n * n];
    let ms64 = time_median(reps, || {
        dgemm(
            n,
            n,
            n,
            1.0,
            View::rows(&a64, n),
            View::rows(&a64, n),
            0.0,
            &mut c64,
        );
        Ok(())
    })?;
    let a8: Vec<i8> = (0..n * n).map(|i| (i % 255) as i8).collect();
    let b8: Vec<u8> = (0..n * n).map(|i| (i % 251) as u8).collect();
    let mut c8 = vec![0i32; n * n];
    let kernel = tessera_engine::gemm_i8::Kernel::best();
    let ms8 = time_median(reps, || {
        tessera_engine::gemm_i8::gemm_u8i8(kernel, n, n, n, &a8, &b8, &mut c8);
        Ok(())
    })?;
    let macs = (n * n * n) as f64;
    let ceil32 = macs / ms32 / 1e6;
    let ceil64 = macs / ms64 / 1e6;
    let ceil8 = macs / ms8 / 1e6;
    let mut row = |what: String, engine: &str, ms: f64, items: f64, macs_per_item: f64| {
        let gmacs = macs_per_item * items / ms / 1e6;
        let ceil = match engine {
            "float" => ceil32,
            "integer v2" => ceil8,
            _ => ceil64,
        };
        rows.push(BenchRow {
            what,
            engine: engine.into(),
            median_ms: ms,
            per_second: items / ms * 1e3,
            gmacs,
            ratio_to_gemm: gmacs / ceil,
        });
    };
    row(format!("GEMM {n}³ f32 (ceiling)"), "float", ms32, 1.0, macs);
    row(
        format!("GEMM {n}³ f64 (ceiling)"),
        "integer",
        ms64,
        1.0,
        macs,
    );
    row(
        format!("GEMM {n}³ u8·i8 {kernel:?} (ceiling)"),
        "integer v2",
        ms8,
        1.0,
        macs,
    );
    if mnist8.exists() {
        let g = load_model(mnist8, &ImportOptions::default())?;
        let qm = QuantModel::new(&g, QuantConfig::default())?;
        let imgs: Vec<_> = synth_images(&g, batch);
        let ms = time_median(reps, || {
            imgs.par_iter()
                .try_for_each(|x| run_f32(&g, std::slice::from_ref(x)).map(|_| ()))?;
            Ok(())
        })?;
        let m8 = stats(&g).macs as f64;
        row(
            format!("mnist-8, {batch} images"),
            "float",
            ms,
            batch as f64,
            m8,
        );
        let ms = time_median(reps, || {
            imgs.par_iter()
                .try_for_each(|x| qm.run(std::slice::from_ref(x)).map(|_| ()))?;
            Ok(())
        })?;
        row(
            format!("mnist-8, {batch} images"),
            "integer",
            ms,
            batch as f64,
            m8,
        );
    } else if !json {
        println!(
            "mnist-8 skipped: {} not found (pass --mnist8 FILE)",
            mnist8.display()
        );
    }
    for name in ["resnet18-32", "vgg16-32", "resnet50-224"] {
        let g = resolve_model(name, &ImportOptions::default())?;
        let qm = QuantModel::new(&g, QuantConfig::default())?;
        let mut xs = synth_images(&g, 5);
        let x = xs.pop().ok_or_else(|| CliError::Usage("no input".into()))?;
        // v2, calibrated on four other pseudo-images.
        let calibration = tessera_engine::qint::Calibration::from_inputs(&g, &xs, "4 images")?;
        let v2 = tessera_engine::qint::IntModel::new(
            &g,
            tessera_engine::qint::QintConfig::default(),
            &calibration,
        )?;
        let ms = time_median(reps, || {
            run_f32(&g, std::slice::from_ref(&x))
                .map(|_| ())
                .map_err(Into::into)
        })?;
        let mm = stats(&g).macs as f64;
        row(format!("{name}, 1 image"), "float", ms, 1.0, mm);
        let ms = time_median(reps, || {
            qm.run(std::slice::from_ref(&x))
                .map(|_| ())
                .map_err(Into::into)
        })?;
        row(format!("{name}, 1 image"), "integer", ms, 1.0, mm);
        let ms = time_median(reps, || v2.run(&x).map(|_| ()).map_err(Into::into))?;
        row(format!("{name}, 1 image"), "integer v2", ms, 1.0, mm);
    }
    if int8.exists() {
        let g = load_model(int8, &ImportOptions::default())?;
        let calibration = tessera_engine::qint::Calibration::given("the model's own int8 scales");
        let m = tessera_engine::qint::IntModel::new(
            &g,
            tessera_engine::qint::QintConfig::default(),
            &calibration,
        )?;
        let x = synth_images(&g, 1)
            .pop()
            .ok_or_else(|| CliError::Usage("no input".into()))?
            .map(|v| v / 255.0);
        let mm = stats(&g).macs as f64;
        let name = g.name.clone();
        let ms = time_median(reps, || {
            run_f32(&g, std::slice::from_ref(&x))
                .map(|_| ())
                .map_err(Into::into)
        })?;
        row(format!("{name} (int8 file), 1 image"), "float", ms, 1.0, mm);
        let ms = time_median(reps, || m.run(&x).map(|_| ()).map_err(Into::into))?;
        row(
            format!("{name} (int8 file), 1 image"),
            "integer v2",
            ms,
            1.0,
            mm,
        );
    } else if !json {
        println!(
            "int8 model skipped: {} not found (pass --int8 FILE)",
            int8.display()
        );
    }
    if json {
        return print_json(&rows);
    }
    let mut t = Table::new(&[
        "workload",
        "engine",
        "median ms",
        "per second",
        "GMAC/s",
        "of GEMM ceiling",
    ]);
    for r in &rows {
        t.row(vec![
            r.what.clone(),
            r.engine.clone(),
            format!("{:.2}", r.median_ms),
            format!("{:.1}", r.per_second),
            format!("{:.2}", r.gmacs),
            format!("{:.0}%", 100.0 * r.ratio_to_gemm),
        ]);
    }
    println!(
        "{}\n({} threads, median of {reps} runs)",
        t.render(),
        rayon::current_num_threads()
    );
    Ok(())
}

/// Deterministic pseudo-images (values 0..255) shaped like the model's input.
fn synth_images(g: &Graph, n: usize) -> Vec<tessera_model::Tensor> {
    let shape = g
        .inputs
        .first()
        .map(|&i| g.shape(i).to_vec())
        .unwrap_or_default();
    let len: usize = shape.iter().product();
    (0..n)
        .filter_map(|k| {
            let data = (0..len)
                .map(|i| ((i * 7919 + k * 104_729) % 256) as f32)
                .collect();
            tessera_model::Tensor::new(shape.clone(), data).ok()
        })
        .collect()
}
