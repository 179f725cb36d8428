//! Commands for parties on separate machines: `enclave`, `client`, `relay`, `attest`.

use crate::{CliError, QuantArgs, Result, print_json};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tessera_data::load_input;
use tessera_engine::argmax;
use tessera_runtime::enclave::{
    Backend, Enclave, EnclaveConfig, Mode, SIMULATED_WARNING, hex, serve_enclave,
};
use tessera_runtime::{AttestedClient, ChannelOptions, Profile};

/// `tessera enclave`.
#[derive(Args)]
pub struct EnclaveArgs {
    /// The ONNX model to load (measured byte for byte).
    model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: String,
    /// Evidence: sim (software key, NO security), snp or tdx (Linux configfs-tsm).
    #[arg(long, default_value = "sim")]
    mode: String,
    /// Directory for the simulated platform key and sealed state.
    #[arg(long, default_value = "tessera-enclave-state")]
    state: PathBuf,
    /// Cost profile of the modeled TEE: sgx1, sgx2 or cvm.
    #[arg(long, default_value = "sgx1")]
    profile: String,
    /// EPC budget in MB for the cost model (default: the profile's, 93 MB for sgx1).
    #[arg(long)]
    epc_mb: Option<u64>,
    /// Most clients served at once.
    #[arg(long, default_value_t = 64)]
    max_clients: usize,
    /// Print the measurement and exit without serving.
    #[arg(long)]
    measure_only: bool,
    /// Scheme: tee (the enclave runs the model), gc (the enclave garbles, a worker evaluates) or
    /// lhe (the enclave holds the HE key and runs the non-linear layers, a server the rest).
    #[arg(long, default_value = "tee")]
    scheme: String,
    /// gc: the worker's address (`tessera worker`).
    #[arg(long)]
    worker: Option<String>,
    /// gc, scaled out: the NATS server (JetStream) through which any number of workers
    /// (`tessera worker --queue`) take evaluation requests, instead of one --worker; needs
    /// --store.
    #[arg(long, value_name = "URL")]
    queue: Option<String>,
    /// gc with --queue: where garbled material goes, a directory every worker can read or
    /// s3://bucket/prefix (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY;
    /// `?endpoint=URL&allow_http=true` for a store other than AWS).
    #[arg(long, value_name = "LOC")]
    store: Option<String>,
    /// gc with --queue: the deployment's name; enclaves and workers that share it share the
    /// work.
    #[arg(long, default_value = "tessera")]
    deployment: String,
    /// lhe: the untrusted server's address (`tessera server`); the enclave connects to it and
    /// drives every request.
    #[arg(long)]
    server: Option<String>,
    /// gc: garblings kept ready on the worker.
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// gc: largest |input| accepted; the number of CRT primes holds every value for inputs up
    /// to it, and the enclave refuses any input beyond it.
    #[arg(long, default_value_t = 255.0)]
    input_range: f32,
    #[command(flatten)]
    quant: QuantArgs,
}

/// `tessera worker`.
#[derive(Args)]
pub struct WorkerArgs {
    /// Address to listen on for enclaves.
    #[arg(long, default_value = "127.0.0.1:7200")]
    listen: String,
    /// Where garbled material is stored (one file per garbling, deleted after use). With
    /// --queue: the store the enclaves write to, a directory or s3://bucket/prefix.
    #[arg(long, default_value = "tessera-worker-store")]
    store: String,
    /// gc, scaled out: take evaluation requests from this NATS server (JetStream) instead of
    /// listening for one enclave; any number of workers share them.
    #[arg(long, value_name = "URL")]
    queue: Option<String>,
    /// With --queue: the deployment's name (the enclaves' --deployment).
    #[arg(long, default_value = "tessera")]
    deployment: String,
    /// Compute device. Only cpu is served: the gc evaluator and the asym linear layers run on
    /// CPU threads. cuda is refused until the GPU evaluator is wired in (the GPU kernels
    /// themselves are checked by `tessera selftest --device cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Which scheme's worker: gc (stores and evaluates garbled material) or asym (computes
    /// linear layers on residuals, for inference and training).
    #[arg(long, default_value = "gc")]
    scheme: String,
}

/// `tessera client`.
#[derive(Args)]
pub struct ClientArgs {
    /// Enclave (or relay) address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub(crate) connect: String,
    /// Input: FILE.pb, FILE.npy, FILE.png or IDXFILE:INDEX (2pc with --precompute may omit it).
    #[arg(long)]
    pub(crate) input: Option<String>,
    /// Scheme: tee, gc and asym take the input over the enclave's attested channel; lhe
    /// opens a session there and sends the encrypted input to --server; 2pc runs Delphi's
    /// protocol with the `tessera server --scheme 2pc` at --connect (no enclave).
    #[arg(long, default_value = "tee")]
    pub(crate) scheme: String,
    /// lhe: the untrusted server's address (`tessera server`).
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// 2pc: the server's certificate (DER), as `tessera server --scheme 2pc` wrote it; the
    /// client talks only to the holder of its key.
    #[arg(long, value_name = "FILE")]
    pub(crate) server_cert: Option<PathBuf>,
    /// 2pc: run N offline phases first and keep them on disk here and on the server (with a
    /// progress bar); later clients (and this one, with --input) use one per inference.
    #[arg(long, value_name = "N")]
    pub(crate) precompute: Option<usize>,
    /// 2pc: where the client keeps stored preprocessing (used when it holds some for this
    /// server's model and the variant): a directory or s3://bucket/prefix.
    #[arg(long, default_value = "tessera-2pc-client-store", value_name = "LOC")]
    pub(crate) store: PathBuf,
    /// 2pc: the most bytes stored preprocessing may take in --store (K, M, G suffixes).
    #[arg(long, default_value = "16G", value_parser = crate::parse_bytes)]
    pub(crate) storage: u64,
    /// 2pc: server-garbler (Delphi) or client-garbler (CryptoNite).
    #[arg(long, default_value = "server-garbler", value_parser = ["server-garbler", "client-garbler"])]
    pub(crate) variant: String,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a party accepts as evidence from an enclave.
#[derive(Args)]
pub struct PolicyArgs {
    /// Attestation policy (JSON). Without it, only --allow-simulated evidence is accepted.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Accept evidence from a simulated TEE (no security; development only).
    #[arg(long)]
    allow_simulated: bool,
    /// Expected platform measurement (hex), added to the policy's `measurements`: for a
    /// simulated enclave the value `tessera enclave --measure-only` prints; for snp/tdx/sgx the
    /// launch measurement of the VM or enclave image.
    #[arg(long)]
    measurement: Option<String>,
    /// Expected application measurement (hex: what `tessera enclave --measure-only` prints — the
    /// binary, the model and the enclave policy), added to the policy's `app_measurements`;
    /// snp/tdx/sgx policies must name one.
    #[arg(long)]
    app_measurement: Option<String>,
}

impl PolicyArgs {
    /// The attestation policy these flags describe.
    pub(crate) fn policy(&self) -> Result<tessera_attest::Policy> {
        let mut policy = match &self.policy {
            Some(p) => tessera_attest::Policy::load(p).map_err(usage)?,
            None if self.allow_simulated => tessera_attest::Policy::simulated_dev(),
            None => {
                return Err(usage(
                    "give --policy FILE (expected measurements, TCB, allowed TEE kinds), or \
                     --allow-simulated to talk to a simulated enclave (no security)",
                ));
            }
        };
        if self.allow_simulated {
            policy.allow_simulated = true;
        }
        if let Some(m) = &self.measurement {
            policy.measurements.push(m.to_lowercase());
        }
        if let Some(m) = &self.app_measurement {
            policy.app_measurements.push(m.to_lowercase());
        }
        Ok(policy)
    }

    /// An attested channel to the enclave at `addr`.
    pub(crate) fn connect(&self, addr: &str) -> Result<AttestedClient> {
        let policy = self.policy()?;
        let stream = TcpStream::connect(addr)
            .map_err(|e| usage(format!("cannot connect to the enclave at {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        AttestedClient::connect(stream, &policy, ChannelOptions::default()).map_err(usage)
    }
}

/// `tessera relay`.
#[derive(Args)]
pub struct RelayArgs {
    /// Address to listen on for clients.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// The enclave's address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    to: String,
}

/// `tessera attest`.
#[derive(Subcommand)]
pub enum AttestCmd {
    /// Verify a piece of evidence (an SNP report, an SGX or TDX quote, or a tessera evidence
    /// file) against a policy and print what it proves.
    Verify(VerifyArgs),
}

/// `tessera attest verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Evidence file: a raw SEV-SNP report (binary or hex), an SGX or TDX quote, or a tessera
    /// evidence file.
    evidence: PathBuf,
    /// Policy (JSON): allowed kinds, measurements, accepted TCB statuses, minimum SNP TCB.
    /// Default: a strict policy (real TEEs only, TCB status UpToDate).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// DCAP collateral (JSON) for an SGX or TDX quote.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// SEV-SNP certificates: a VCEK (DER or PEM, optionally followed by ASK and ARK), a
    /// certificate table, or a directory of such files.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Verification time (RFC 3339 or Unix seconds); default now. Collateral outside its
    /// validity window at this time is rejected.
    #[arg(long)]
    at: Option<String>,
    /// Accept simulated evidence (no security).
    #[arg(long)]
    allow_simulated: bool,
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

fn enclave_config(a: &EnclaveArgs) -> Result<EnclaveConfig> {
    let mode = Mode::parse(&a.mode).map_err(usage)?;
    let mut profile = Profile::by_name(&a.profile).ok_or_else(|| {
        usage(format!(
            "unknown profile '{}': use sgx1, sgx2 or cvm",
            a.profile
        ))
    })?;
    if let Some(mb) = a.epc_mb {
        profile = profile.with_epc(mb.saturating_mul(1_000_000));
    }
    let model_onnx = std::fs::read(&a.model).map_err(|source| CliError::Io {
        path: a.model.display().to_string(),
        source,
    })?;
    // The semantics is measured with the model; v2 calibrates on the model here, before TLS.
    let g = tessera_model::import_model(&model_onnx, &a.quant.import_options())?;
    let semantics = a.quant.semantics_for(&g, &a.scheme)?;
    let backend = match a.scheme.as_str() {
        "tee" => Backend(None),
        "lhe" => {
            let addr = a.server.as_deref().ok_or_else(|| {
                usage("--scheme lhe needs --server ADDR (a running `tessera server`)")
            })?;
            let stream = TcpStream::connect(addr)
                .map_err(|e| usage(format!("cannot connect to the server at {addr}: {e}")))?;
            let b = tessera_lhe::enclave::LheBackend::new(&g, &semantics).map_err(usage)?;
            let (stored, _link) = b.drive(stream, ChannelOptions::default()).map_err(usage)?;
            eprintln!(
                "lhe: {} (key generated in the enclave, its hash bound into every report); {}",
                b.model().params.describe(),
                if stored {
                    "the server holds the encrypted model for this key"
                } else {
                    "the server has no encrypted model for this key yet: run `tessera upload`"
                }
            );
            Backend(Some(b))
        }
        "gc" if a.queue.is_some() => {
            let store = a.store.as_deref().ok_or_else(|| {
                usage("--queue needs --store LOC: where the workers read the garbled material")
            })?;
            let opts = gc_options(a, &g, &semantics)?;
            let c = tessera_gc::cluster::ClusterOptions {
                queue: a.queue.clone().unwrap_or_default(),
                name: a.deployment.clone(),
                store: store.parse().map_err(usage)?,
                ack_wait: std::time::Duration::from_secs(60),
                timeout: std::time::Duration::from_secs(600),
            };
            eprintln!(
                "gc: compiling the circuit and garbling {} inferences ahead into {store}; requests go through {}",
                a.pool.max(1),
                c.queue
            );
            let b =
                tessera_gc::cluster::ClusterBackend::start(&g, &opts, &c, a.pool).map_err(usage)?;
            Backend(Some(Arc::new(b)))
        }
        "gc" => {
            let addr = a.worker.as_deref().ok_or_else(|| {
                usage("--scheme gc needs --worker ADDR (a running `tessera worker`), or --queue URL --store LOC for workers behind a NATS server")
            })?;
            let connect = || {
                TcpStream::connect(addr)
                    .map_err(|e| usage(format!("cannot connect to the worker at {addr}: {e}")))
            };
            let opts = gc_options(a, &g, &semantics)?;
            eprintln!(
                "gc: compiling the circuit and garbling {} inferences ahead",
                a.pool.max(1)
            );
            let b = tessera_gc::GcBackend::start(
                &g,
                &opts,
                connect()?,
                connect()?,
                ChannelOptions::default(),
            )
            .map_err(usage)?;
            let b = Arc::new(b);
            crate::garble_bar(&b);
            Backend(Some(b))
        }
        other => {
            return Err(usage(format!(
                "the enclave serves --scheme tee, gc or lhe, not '{other}'"
            )));
        }
    };
    Ok(EnclaveConfig {
        mode,
        state_dir: a.state.clone(),
        model_onnx,
        semantics,
        profile,
        binary: None,
        channel: ChannelOptions::default(),
        backend,
        limits: a.quant.import_options().limits,
    })
}

/// The enclave's gc options from its command line.
fn gc_options(
    a: &EnclaveArgs,
    g: &tessera_model::Graph,
    semantics: &tessera_engine::Semantics,
) -> Result<tessera_gc::GcOptions> {
    Ok(tessera_gc::GcOptions {
        semantics: semantics.clone(),
        primes: a.quant.gc_primes,
        input_range: a.input_range,
        margin_bits: 0,
        calibration: crate::calibrate::gc_calibration(g, &a.quant)?,
        pool: a.pool,
        overlap: true,
    })
}

/// What `tessera worker --device cuda` answers.
pub const CUDA_WORKER_REFUSAL: &str = "--device cuda: the GPU evaluator is not wired in yet; the worker runs on the CPU; use --device cpu";

/// Run a worker until killed.
pub fn worker(a: &WorkerArgs) -> Result<()> {
    let kind: tessera_cuda::DeviceKind = a.device.parse().map_err(usage)?;
    if kind == tessera_cuda::DeviceKind::Cuda {
        // Refused before the GPU is opened: nothing of the gc or asym worker calls the device's
        // kernels yet, so accepting the flag would claim GPU work that does not happen.
        return Err(usage(CUDA_WORKER_REFUSAL.to_string()));
    }
    let dev = tessera_cuda::Device::open(kind).map_err(usage)?;
    println!("device: {}", dev.describe());
    if let Some(queue) = &a.queue {
        if a.scheme != "gc" {
            return Err(usage("--queue serves --scheme gc only"));
        }
        let c = tessera_gc::cluster::ClusterOptions {
            queue: queue.clone(),
            name: a.deployment.clone(),
            store: a.store.parse().map_err(usage)?,
            ack_wait: std::time::Duration::from_secs(60),
            timeout: std::time::Duration::from_secs(600),
        };
        let name = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
            std::process::id()
        );
        println!(
            "gc worker {name}: taking requests of deployment '{}' from {queue}, material from {}",
            a.deployment, a.store
        );
        let stop = std::sync::atomic::AtomicBool::new(false);
        let r = tessera_gc::cluster::run_cluster_worker(&c, &name, &stop, None).map_err(usage)?;
        println!("{r:?}");
        return Ok(());
    }
    let listener = TcpListener::bind(&a.listen)
        .map_err(|e| usage(format!("cannot listen on {}: {e}", a.listen)))?;
    if a.scheme == "asym" {
        let server =
            tessera_asym::service::serve_asym_worker_tcp(listener, ChannelOptions::default())
                .map_err(usage)?;
        println!("worker listening on {}", server.addr());
        server.wait();
        return Ok(());
    }
    if a.scheme != "gc" {
        return Err(usage(format!(
            "the worker serves --scheme gc or asym, not '{}'",
            a.scheme
        )));
    }
    let server = tessera_gc::serve_worker_tcp(
        listener,
        tessera_gc::WorkerOptions {
            store: PathBuf::from(&a.store),
            channel: ChannelOptions::default(),
        },
    )
    .map_err(usage)?;
    println!("worker listening on {}", server.addr());
    server.wait();
    Ok(())
}

/// Run the enclave until killed.
pub fn enclave(a: &EnclaveArgs) -> Result<()> {
    let cfg = enclave_config(a)?;
    if cfg.mode == Mode::Sim {
        eprintln!("{SIMULATED_WARNING}");
    }
    if a.measure_only {
        println!("{}", hex(&cfg.measurement().map_err(usage)?));
        return Ok(());
    }
    let profile = cfg.profile;
    let enclave = Enclave::start(cfg).map_err(usage)?;
    let fp = enclave.footprint();
    println!("measurement {}", hex(enclave.measurement()));
    println!(
        "model working set {:.1} MB ({:.1} MB weights) against an EPC budget of {} ({} profile){}",
        fp.working_set() as f64 / 1e6,
        fp.weight_bytes as f64 / 1e6,
        if profile.epc_bytes == u64::MAX {
            "unlimited".to_string()
        } else {
            format!("{:.0} MB", profile.epc_bytes as f64 / 1e6)
        },
        profile.name,
        if fp.working_set() > profile.epc_bytes {
            ": every inference will page"
        } else {
            ""
        }
    );
    if enclave.restored_identity() {
        println!("TLS identity restored from sealed state");
    }
    let listener = TcpListener::bind(&a.listen)
        .map_err(|e| usage(format!("cannot listen on {}: {e}", a.listen)))?;
    let server = serve_enclave(enclave, listener, a.max_clients).map_err(usage)?;
    println!("listening on {}", server.addr());
    server.wait();
    Ok(())
}

/// Send one input to an enclave and print the prediction.
pub fn client(a: &ClientArgs) -> Result<()> {
    if a.scheme == "lhe" {
        return crate::lhe_cmd::client(a);
    }
    if a.scheme == "2pc" {
        return crate::twopc_cmd::client(a);
    }
    let policy = a.policy.policy()?;
    let x = load_input(
        a.input
            .as_deref()
            .ok_or_else(|| usage("--input X is required"))?,
    )?;
    let stream = TcpStream::connect(&a.connect)
        .map_err(|e| usage(format!("cannot connect to {}: {e}", a.connect)))?;
    let _ = stream.set_nodelay(true);
    let t0 = Instant::now();
    let mut c =
        AttestedClient::connect(stream, &policy, ChannelOptions::default()).map_err(usage)?;
    let setup = t0.elapsed();
    let claims_line = tessera_attest::describe(c.claims());
    let t1 = Instant::now();
    let out = c.infer(&x).map_err(usage)?;
    let latency = t1.elapsed();
    let scale = out.scale;
    let output: Vec<f32> = out
        .exact
        .data()
        .iter()
        .map(|&v| (v as f64 * scale) as f32)
        .collect();
    let class = argmax(&output);
    let (up, down, rounds) = c.counters().snapshot();
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            class: usize,
            output: &'a [f32],
            exact_output: &'a [i64],
            /// The real value of one step of `exact_output`.
            scale: f64,
            attestation: &'a str,
            setup_ms: f64,
            latency_ms: f64,
            tee: &'a tessera_runtime::TeeCost,
            offload: &'a Option<tessera_runtime::protocol::OffloadCost>,
            bytes_up: u64,
            bytes_down: u64,
            rounds: u64,
        }
        return print_json(&Out {
            class,
            output: &output,
            exact_output: out.exact.data(),
            scale: out.scale,
            attestation: &claims_line,
            setup_ms: setup.as_secs_f64() * 1e3,
            latency_ms: latency.as_secs_f64() * 1e3,
            tee: &out.tee,
            offload: &out.offload,
            bytes_up: up,
            bytes_down: down,
            rounds,
        });
    }
    println!("{claims_line}");
    println!("class {class}");
    if let Some(o) = &out.offload {
        println!(
            "{}: worker computed {:.3} ms; online enclave<->worker {} B up, {} B down, {} round(s); {} B stored on the worker for this inference",
            o.scheme,
            o.worker_ns as f64 / 1e6,
            o.bytes_to_worker,
            o.bytes_from_worker,
            o.rounds,
            o.stored_bytes
        );
    }
    println!(
        "attested channel set up in {:.1} ms; inference {:.3} ms (enclave compute {:.3} ms measured, {:.3} ms modeled in {}); {up} B up, {down} B down, {rounds} rounds in all",
        setup.as_secs_f64() * 1e3,
        latency.as_secs_f64() * 1e3,
        out.tee.measured_ns as f64 / 1e6,
        out.tee.modeled_ns as f64 / 1e6,
        out.tee.profile,
    );
    Ok(())
}

/// Forward bytes between clients and an enclave.
pub fn relay(a: &RelayArgs) -> Result<()> {
    let to =
        a.to.parse()
            .map_err(|e| usage(format!("--to {}: {e}", a.to)))?;
    let listener = TcpListener::bind(&a.listen)
        .map_err(|e| usage(format!("cannot listen on {}: {e}", a.listen)))?;
    let server = tessera_runtime::relay::relay(listener, to, None).map_err(usage)?;
    println!("relaying {} -> {to}", server.addr());
    server.wait();
    Ok(())
}

/// `tessera attest …`.
pub fn attest(c: &AttestCmd, json: bool) -> Result<()> {
    match c {
        AttestCmd::Verify(a) => {
            let args = tessera_attest::cli::VerifyArgs {
                evidence: a.evidence.clone(),
                policy: a.policy.clone(),
                collateral: a.collateral.clone(),
                certs: a.certs.clone(),
                at: a.at.clone(),
                allow_simulated: a.allow_simulated,
            };
            let claims = tessera_attest::cli::verify_cmd(&args).map_err(usage)?;
            if json {
                return print_json(&claims.to_json());
            }
            println!("{}", tessera_attest::describe(&claims));
            Ok(())
        }
    }
}
