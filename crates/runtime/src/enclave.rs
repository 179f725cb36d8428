//! The enclave: the trusted process that holds the model, proves what it runs, and serves
//! inference over attested TLS channels.
//!
//! # Threat model (the `tee` scheme)
//!
//! Untrusted in every mode: the host OS and operator, the network, every relay between client
//! and enclave, and other clients. The host can drop, delay, reorder or replay bytes, start
//! the enclave with other files, run guests of its own on the same hardware, and read
//! everything outside the TEE (the state directory included).
//!
//! The *application measurement* is SHA-384 over the enclave binary, the model and the
//! enclave policy ([`measurement_of`]; `tessera enclave --measure-only` prints it). Every
//! connection's evidence carries report data
//! [`tessera_attest::session_report_data`]`(nonce, certificate, application measurement)`,
//! and the client ([`crate::client::verify_binding`]) accepts it only if the evidence is
//! authentic and meets its policy, the report data is that hash of its own fresh nonce, the
//! certificate offered and the application measurement offered, and that measurement is one
//! its policy accepts. So the host can neither replay evidence to another connection, nor
//! attach it to a certificate whose key it holds, nor present evidence of one application as
//! another's. What that proves depends on the mode:
//!
//! - **`sim`: nothing.** The evidence is signed by a software key in a file on the host's disk
//!   and its sealing key is derived from the same file, so the host can forge evidence for any
//!   measurement and read everything sealed; every report, table and start-up line says so
//!   (the start-up line "simulated TEE: sealing key is on the host's disk, no protection",
//!   and a line naming each file sealed under it). Only a policy with `allow_simulated`
//!   accepts it.
//! - **`snp`**: the report is signed by the chip's VCEK (or a VLEK) under AMD's root, and its
//!   `MEASUREMENT` covers the guest's launch image only. The report data, and so the
//!   application measurement in it, is computed by software in that image; it is worth
//!   exactly as much as the image is trustworthy, which is why the client refuses a policy
//!   for a real TEE that does not pin both the launch measurement (`measurements`) and the
//!   application measurement (`app_measurements`). Sealed state (the TLS identity key) is
//!   encrypted under a key the AMD secure processor derives from the chip's VCEK root, the
//!   guest policy and the launch measurement (`SNP_GET_DERIVED_KEY` through
//!   `/dev/sev-guest`), then mixed with the application measurement (HKDF): the host,
//!   another launch image or another chip cannot derive it. Other software inside the same
//!   image could ask for the same derived key, so the application measurement separates
//!   applications only as far as the pinned image runs nothing but this enclave. Without the
//!   device the enclave does not start.
//! - **`tdx`**: the quote is signed through Intel's DCAP chain; `MRTD` covers only the virtual
//!   firmware, so a client's policy must pin RTMR0–RTMR2 (firmware configuration, loader and
//!   kernel, command line and initrd) as well as `MRTD` and `app_measurements`. A TD has no
//!   sealing key: the TLS identity is made afresh at every start and every secret stays in
//!   this process's memory; nothing is written to disk (and the enclave says so at start).
//!
//! Availability: the host can always deny service. Against other clients the service bounds
//! what an unauthenticated connection can hold: every connection gets
//! [`ChannelOptions::preauth_deadline`] (10 s by default) from its start to its first
//! authenticated message (hello, attestation, TLS handshake, first request), however slowly
//! its bytes trickle in; at most `max_conns` connections are in that phase, and a new one
//! pushes out the oldest ([`serve_enclave`]); at most `max_conns` clients are served after it.
//! After authentication a client may be idle up to [`crate::channel::IDLE_DEADLINE`] between
//! requests, but each frame must arrive whole within [`ChannelOptions::frame_deadline`] of
//! its first byte. A client that completes attestation can still hold one of the `max_conns`
//! served places for up to the idle deadline (clients are not authenticated to the enclave).
//!
//! Out of scope: side channels (page-fault, cache, timing) of real TEEs, the TEE vendors'
//! firmware, revocation of AMD VCEKs (no CRL is fetched), and denial of service by the host.
//!
//! # One connection
//!
//! hello ↔ hello (version), client → `Attest{nonce}`, enclave →
//! `Evidence{evidence, cert, app_measurement}`, then TLS 1.3 on the same stream, then any
//! number of `Infer` → `Output` exchanges.

use crate::RuntimeError;
use crate::channel::{Channel, ChannelOptions, Role};
use crate::cost::{Footprint, Profile, TeeCost, model_request};
use crate::protocol::{ClientMsg, EnclaveInfo, EnclaveMsg, OffloadCost, TensorMsg};
use crate::seal;
use crate::tls::Identity;
use crate::transport::Transport;
use serde::Serialize;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;
use tessera_attest::{Evidence, TeeKind};
use tessera_engine::{ExactModel, Semantics};
use tessera_model::Tensor;
use tessera_model::import::{ImportOptions, import_model};

/// How the enclave obtains evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Software platform key on disk. No security: for development and tests only.
    Sim,
    /// AMD SEV-SNP confidential VM (configfs-tsm).
    Snp,
    /// Intel TDX confidential VM (configfs-tsm).
    Tdx,
}

impl Mode {
    /// Parse `sim`, `snp` or `tdx`.
    pub fn parse(s: &str) -> Result<Self, RuntimeError> {
        match s {
            "sim" => Ok(Mode::Sim),
            "snp" => Ok(Mode::Snp),
            "tdx" => Ok(Mode::Tdx),
            _ => Err(RuntimeError::Config(format!(
                "unknown enclave mode {s:?}: use sim, snp or tdx"
            ))),
        }
    }
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sim => "sim",
            Mode::Snp => "snp",
            Mode::Tdx => "tdx",
        }
    }
}

/// The line every simulated enclave prints and reports.
pub const SIMULATED_WARNING: &str = "WARNING: SIMULATED TEE: no hardware protection; evidence is signed by a software key on disk \
     and proves nothing. Use only for development and tests.";

/// Work the enclave hands to an untrusted worker instead of running the model itself (the `gc`
/// and `asym` schemes implement it; without one the enclave runs the model, the `tee` scheme).
pub trait InferBackend: Send + Sync {
    /// The scheme's name, part of the enclave's measured policy.
    fn scheme(&self) -> &'static str;
    /// Run one inference on a float input of the model's input shape.
    fn infer(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), RuntimeError>;
    /// The enclave's working set while serving (for the cost model).
    fn footprint(&self) -> Footprint;
    /// The real value of one output step when the backend's output is not at the model's
    /// integer scale (a float scheme such as `asym`); `None`: the model's.
    fn output_scale(&self) -> Option<f64> {
        None
    }
    /// A key the backend generated inside the enclave that clients must be able to tie to the
    /// evidence (`lhe`: the hash of its HE public key); it goes into every session's report
    /// data ([`tessera_attest::session_report_data_with_key`]). Empty: none.
    fn key_binding(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Scheme-specific set-up for one attested client (`lhe`: the HE parameters and public key,
    /// and a fresh session with its result key), sent inside TLS.
    fn session(&self) -> Result<Vec<u8>, RuntimeError> {
        Err(RuntimeError::BadRequest(format!(
            "the {} scheme has no client sessions",
            self.scheme()
        )))
    }
}

/// An optional backend in a configuration.
#[derive(Clone, Default)]
pub struct Backend(pub Option<Arc<dyn InferBackend>>);

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(b) => write!(f, "Backend({})", b.scheme()),
            None => f.write_str("Backend(local)"),
        }
    }
}

/// What the enclave's measurement covers besides its binary and model.
#[derive(Clone, Debug, Serialize)]
pub struct EnclavePolicy {
    /// Protocol version.
    pub protocol: u16,
    /// The scheme served (`tee`, `gc`, `asym`).
    pub scheme: &'static str,
    /// Evidence mode.
    pub mode: &'static str,
    /// The integer semantics and its parameters (for v2, its calibration too).
    pub semantics: Semantics,
}

/// How to start an enclave.
#[derive(Clone, Debug)]
pub struct EnclaveConfig {
    /// Evidence mode.
    pub mode: Mode,
    /// Directory for the platform key (sim) and sealed state.
    pub state_dir: PathBuf,
    /// The model, ONNX bytes (measured as given).
    pub model_onnx: Vec<u8>,
    /// Integer semantics.
    pub semantics: Semantics,
    /// Cost profile of the modeled TEE.
    pub profile: Profile,
    /// The enclave binary's bytes for the measurement; `None`: this process's executable.
    pub binary: Option<Vec<u8>>,
    /// Channel limits.
    pub channel: ChannelOptions,
    /// Work offloaded to an untrusted worker; none: the enclave runs the model (`tee`).
    pub backend: Backend,
    /// The memory and work budget the model must fit at import (`--max-memory`, `--max-macs`).
    pub limits: tessera_model::ImportLimits,
}

enum Platform {
    Sim(Box<tessera_attest::sim::PlatformKey>),
    Tsm,
}

/// A started enclave (shareable between connection threads).
pub struct Enclave {
    mode: Mode,
    measurement: [u8; 48],
    identity: Identity,
    platform: Platform,
    model: ExactModel,
    name: String,
    input_shape: Vec<usize>,
    footprint: Footprint,
    profile: Profile,
    channel: ChannelOptions,
    restored: bool,
    sealing: seal::SealingKey,
    backend: Backend,
}

/// The measurement of an enclave binary running `model_onnx` under `policy`.
pub fn measurement_of(binary: &[u8], model_onnx: &[u8], policy: &EnclavePolicy) -> [u8; 48] {
    let policy = serde_json::to_vec(policy).unwrap_or_default();
    tessera_attest::measure(&[binary, model_onnx, &policy])
}

/// This process's executable, for the measurement.
pub fn own_binary() -> Result<Vec<u8>, RuntimeError> {
    let exe = std::env::current_exe()
        .map_err(|e| RuntimeError::Io(format!("locating this executable: {e}")))?;
    std::fs::read(&exe).map_err(|e| RuntimeError::Io(format!("reading {}: {e}", exe.display())))
}

impl EnclaveConfig {
    /// The measurement policy of this configuration.
    pub fn policy(&self) -> EnclavePolicy {
        EnclavePolicy {
            protocol: crate::channel::PROTOCOL_VERSION,
            scheme: self.backend.0.as_ref().map_or("tee", |b| b.scheme()),
            mode: self.mode.name(),
            semantics: self.semantics.clone(),
        }
    }

    /// The measurement an enclave started with this configuration will report.
    pub fn measurement(&self) -> Result<[u8; 48], RuntimeError> {
        let own;
        let bin = match &self.binary {
            Some(b) => b.as_slice(),
            None => {
                own = own_binary()?;
                own.as_slice()
            }
        };
        Ok(measurement_of(bin, &self.model_onnx, &self.policy()))
    }
}

impl Enclave {
    /// Load the model, measure, restore or create the sealed identity.
    pub fn start(cfg: EnclaveConfig) -> Result<Arc<Self>, RuntimeError> {
        let measurement = cfg.measurement()?;
        let graph = import_model(
            &cfg.model_onnx,
            &ImportOptions {
                limits: cfg.limits.clone(),
                ..ImportOptions::default()
            },
        )?;
        let model = ExactModel::new(&graph, &cfg.semantics)?;
        let input_shape = graph
            .inputs
            .first()
            .map(|&v| graph.shape(v).to_vec())
            .ok_or_else(|| RuntimeError::Config("the model has no input".into()))?;
        let footprint = match &cfg.backend.0 {
            Some(b) => b.footprint(),
            None => Footprint::of(&graph),
        };
        let (platform, sealing) = match cfg.mode {
            Mode::Sim => {
                let key = tessera_attest::sim::PlatformKey::load_or_create(
                    &cfg.state_dir.join("platform.key"),
                )?;
                let sealing = seal::SealingKey::HostDisk(key.seal_key(&measurement));
                (Platform::Sim(Box::new(key)), sealing)
            }
            Mode::Snp => (
                Platform::Tsm,
                seal::SealingKey::Hardware(tessera_attest::sev_guest::sealing_key(&measurement)?),
            ),
            Mode::Tdx => (Platform::Tsm, seal::SealingKey::MemoryOnly),
        };
        eprintln!("{}", sealing.note());
        let (identity, restored) = match sealing {
            seal::SealingKey::MemoryOnly => (Identity::generate()?, false),
            _ => sealed_identity(&cfg.state_dir, &sealing, &measurement)?,
        };
        Ok(Arc::new(Self {
            mode: cfg.mode,
            measurement,
            identity,
            platform,
            model,
            name: graph.name.clone(),
            input_shape,
            footprint,
            profile: cfg.profile,
            channel: cfg.channel,
            restored,
            sealing,
            backend: cfg.backend,
        }))
    }

    /// The measurement.
    pub fn measurement(&self) -> &[u8; 48] {
        &self.measurement
    }

    /// Whether the TLS identity was restored from sealed state.
    pub fn restored_identity(&self) -> bool {
        self.restored
    }

    /// Where the sealing key comes from (and so what sealed state is worth).
    pub fn sealing(&self) -> &seal::SealingKey {
        &self.sealing
    }

    /// The TLS certificate (DER).
    pub fn cert(&self) -> &[u8] {
        self.identity.cert()
    }

    /// Whether the TEE is simulated.
    pub fn simulated(&self) -> bool {
        self.mode == Mode::Sim
    }

    /// The memory footprint of the loaded model.
    pub fn footprint(&self) -> Footprint {
        self.footprint
    }

    /// Describe the enclave.
    pub fn info(&self) -> EnclaveInfo {
        EnclaveInfo {
            mode: self.mode.name().into(),
            simulated: self.simulated(),
            measurement: hex(&self.measurement),
            model: self.name.clone(),
            input_shape: self.input_shape.iter().map(|&d| d as u32).collect(),
            semantics: self.semantics_label(),
            profile: self.profile.name.into(),
            scheme: self.backend.0.as_ref().map_or("tee", |b| b.scheme()).into(),
        }
    }

    /// Evidence whose report data binds `nonce`, this enclave's certificate and its
    /// application measurement ([`tessera_attest::session_report_data`]).
    pub fn evidence(&self, nonce: &[u8]) -> Result<Evidence, RuntimeError> {
        let rd = tessera_attest::session_report_data_with_key(
            nonce,
            self.identity.cert(),
            &self.measurement,
            &self.key_binding(),
        );
        match &self.platform {
            Platform::Sim(k) => Ok(k.attest(&self.measurement, &rd)),
            Platform::Tsm => {
                let e = tessera_attest::tsm::collect(&rd)?;
                let want = if self.mode == Mode::Snp {
                    TeeKind::SevSnp
                } else {
                    TeeKind::Tdx
                };
                if e.kind != want {
                    return Err(RuntimeError::Config(format!(
                        "configfs-tsm produced {} evidence but the enclave runs in {} mode",
                        e.kind,
                        self.mode.name()
                    )));
                }
                Ok(e)
            }
        }
    }

    /// The key binding of the backend (empty for `tee`).
    pub fn key_binding(&self) -> Vec<u8> {
        self.backend
            .0
            .as_ref()
            .map(|b| b.key_binding())
            .unwrap_or_default()
    }

    /// The real value of one step of the integers this enclave returns.
    pub fn output_scale(&self) -> Result<f64, RuntimeError> {
        match self.backend.0.as_ref().and_then(|b| b.output_scale()) {
            Some(s) => Ok(s),
            None => Ok(self.model.output_scale()?),
        }
    }

    fn semantics_label(&self) -> String {
        match &self.model {
            ExactModel::Pow2(m) => format!("pow2 f = {}", m.config().frac_bits),
            ExactModel::V2(m) => {
                let c = m.config();
                format!("v2 w{}a{} B = {}", c.weight_bits, c.act_bits, c.mult_bits)
            }
        }
    }

    /// Run one inference; the input's shape must be the model's.
    pub fn infer(
        &self,
        input: &TensorMsg,
    ) -> Result<(Tensor<i64>, TeeCost, Option<OffloadCost>), RuntimeError> {
        let shape: Vec<usize> = input.shape.iter().map(|&d| d as usize).collect();
        if shape != self.input_shape {
            return Err(RuntimeError::BadRequest(format!(
                "input shape {shape:?} does not match the model's {:?}",
                self.input_shape
            )));
        }
        let t = Tensor::new(shape, input.data.clone())
            .map_err(|e| RuntimeError::BadRequest(format!("input tensor: {e}")))?;
        let t0 = Instant::now();
        if let Some(b) = &self.backend.0 {
            let (out, off) = b.infer(&t)?;
            // The enclave's own time excludes the worker's; two more sends/receives (to and from
            // the worker) per online round.
            let own = t0
                .elapsed()
                .saturating_sub(std::time::Duration::from_nanos(off.worker_ns));
            let tee = model_request(&self.profile, &self.footprint, own, 2 + 2 * off.rounds);
            return Ok((out, tee, Some(off)));
        }
        let out = self.model.run(&t)?;
        let measured = t0.elapsed();
        // One receive and one send inside the enclave per request.
        Ok((
            out,
            model_request(&self.profile, &self.footprint, measured, 2),
            None,
        ))
    }

    /// Serve one client connection to its end. Returns when the client closes; an error is
    /// reported to the client and returned.
    pub fn serve(&self, raw: Box<dyn Transport>) -> Result<(), RuntimeError> {
        self.serve_admitted(raw, &mut || Ok(()))
    }

    /// [`Enclave::serve`], calling `authenticated` when the first message inside TLS has
    /// arrived (the end of the unauthenticated phase; an error from it, such as a full server,
    /// ends the connection).
    ///
    /// Until then the connection runs under the short pre-authentication budget
    /// ([`ChannelOptions::preauth_deadline`], from the start of this call, bounding every read
    /// however its bytes trickle in); afterwards an idle client may wait up to
    /// [`crate::channel::IDLE_DEADLINE`] between requests, and every frame must arrive whole
    /// within [`ChannelOptions::frame_deadline`] of its first byte.
    pub fn serve_admitted(
        &self,
        raw: Box<dyn Transport>,
        authenticated: &mut dyn FnMut() -> Result<(), RuntimeError>,
    ) -> Result<(), RuntimeError> {
        let preauth = self.channel.preauth_deadline;
        let opts = ChannelOptions {
            deadline: Some(self.channel.deadline.map_or(preauth, |d| d.min(preauth))),
            ..self.channel
        };
        let mut ch = Channel::new(raw, opts)?;
        ch.set_read_by(Some(Instant::now() + preauth));
        ch.handshake(Role::Enclave, &[Role::Client])?;
        let nonce = match ch.recv::<ClientMsg>()? {
            ClientMsg::Attest { nonce } => nonce,
            other => {
                let e = RuntimeError::Protocol(format!(
                    "expected an attestation request first, got {}",
                    msg_name(&other)
                ));
                ch.send_error(&e.to_string());
                return Err(e);
            }
        };
        let evidence = match self.evidence(&nonce) {
            Ok(e) => e,
            Err(e) => {
                ch.send_error(&format!("the enclave cannot produce evidence: {e}"));
                return Err(e);
            }
        };
        ch.send(&EnclaveMsg::Evidence {
            evidence: evidence.encode(),
            cert: self.identity.cert().to_vec(),
            app_measurement: self.measurement.to_vec(),
            key_binding: self.key_binding(),
        })?;
        let (seq_out, seq_in, peer) = ch.position();
        let (io, link) = ch.into_parts()?;
        let conn = rustls::ServerConnection::new(self.identity.server_config()?)
            .map_err(|e| RuntimeError::Tls(format!("starting TLS: {e}")))?;
        let tls = rustls::StreamOwned::new(conn, io);
        let mut ch = Channel::from_parts(Box::new(tls), link, opts)?;
        ch.continue_from(seq_out, seq_in, peer);
        let mut first = true;
        loop {
            let msg = match ch.recv::<ClientMsg>() {
                Ok(m) => m,
                Err(RuntimeError::Closed(_)) => return Ok(()),
                // A client that refuses the evidence says so in a plain frame and leaves; that
                // frame then arrives where the TLS handshake should be.
                Err(e) if first => {
                    return Err(RuntimeError::Closed(format!(
                        "the client left before completing TLS, as it does when it refuses the evidence ({e})"
                    )));
                }
                Err(e) => return Err(e),
            };
            if first {
                // Authenticated: from now on a client may stay idle between requests.
                if let Err(e) = authenticated() {
                    ch.send_error(&e.to_string());
                    return Err(e);
                }
                ch.set_read_by(None);
                ch.set_deadline(Some(crate::channel::IDLE_DEADLINE))?;
            }
            first = false;
            let reply = match msg {
                ClientMsg::Infer(t) => match self.infer(&t) {
                    Ok((out, tee, offload)) => EnclaveMsg::Output {
                        shape: out.shape().iter().map(|&d| d as u32).collect(),
                        exact: out.data().to_vec(),
                        scale: self.output_scale()?,
                        tee,
                        offload,
                    },
                    Err(e) => {
                        ch.send_error(&e.to_string());
                        return Err(e);
                    }
                },
                ClientMsg::Info => EnclaveMsg::Info(self.info()),
                ClientMsg::Session => {
                    let made = match &self.backend.0 {
                        Some(b) => b.session(),
                        None => Err(RuntimeError::BadRequest(
                            "the tee scheme has no client sessions".into(),
                        )),
                    };
                    match made {
                        Ok(bytes) => EnclaveMsg::Session(bytes),
                        Err(e) => {
                            ch.send_error(&e.to_string());
                            return Err(e);
                        }
                    }
                }
                ClientMsg::Attest { .. } => {
                    let e = RuntimeError::Protocol("a second attestation request".into());
                    ch.send_error(&e.to_string());
                    return Err(e);
                }
            };
            ch.send(&reply)?;
            // A session carries secrets (lhe's result key): wipe this copy once it is sent.
            if let EnclaveMsg::Session(mut bytes) = reply {
                zeroize::Zeroize::zeroize(&mut bytes);
            }
        }
    }
}

fn msg_name(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Attest { .. } => "Attest",
        ClientMsg::Infer(_) => "Infer",
        ClientMsg::Info => "Info",
        ClientMsg::Session => "Session",
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Restore the TLS identity sealed for this measurement, or create and seal a new one.
fn sealed_identity(
    dir: &std::path::Path,
    sealing: &seal::SealingKey,
    measurement: &[u8; 48],
) -> Result<(Identity, bool), RuntimeError> {
    let path = sealed_identity_path(dir, measurement);
    let key = sealing.key().ok_or_else(|| {
        RuntimeError::Seal("this platform has no sealing key; the identity stays in memory".into())
    })?;
    if path.exists() {
        let bytes = std::fs::read(&path)
            .map_err(|e| RuntimeError::Io(format!("reading {}: {e}", path.display())))?;
        let plain = seal::unseal(key, measurement, &bytes)?;
        return Ok((Identity::from_bytes(&plain)?, true));
    }
    let id = Identity::generate()?;
    sealing.seal_to_file(measurement, &path, &id.to_bytes())?;
    Ok((id, false))
}

/// Where the identity sealed for `measurement` lives.
pub fn sealed_identity_path(dir: &std::path::Path, measurement: &[u8; 48]) -> PathBuf {
    dir.join("sealed")
        .join(format!("{}.identity", hex(&measurement[..16])))
}

/// A running TCP server; dropping it stops accepting (connections in progress finish).
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Block until the server stops (never, unless stopped from another thread).
    pub fn wait(mut self) {
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Accept connections on `listener` and run `handle` on each in its own thread, at most
/// `max_conns` at a time (an extra connection is told the server is busy and closed).
pub fn serve_tcp<F>(
    listener: TcpListener,
    max_conns: usize,
    handle: F,
) -> Result<ServerHandle, RuntimeError>
where
    F: Fn(TcpStream) -> Result<(), RuntimeError> + Send + Sync + 'static,
{
    let addr = listener
        .local_addr()
        .map_err(|e| RuntimeError::Io(format!("listening address: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = Arc::new(handle);
    let active = Arc::new(AtomicUsize::new(0));
    let join = std::thread::Builder::new()
        .name("tessera-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let _ = stream.set_nodelay(true);
                if active.load(Ordering::SeqCst) >= max_conns {
                    if let Ok(mut ch) = Channel::new(stream, ChannelOptions::default()) {
                        ch.send_error("the server is busy: too many connections; retry later");
                    }
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let h = handle.clone();
                let a = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("tessera-conn".into())
                    .spawn(move || {
                        let peer = stream.peer_addr().ok();
                        if let Err(e) = h(stream)
                            && !matches!(e, RuntimeError::Closed(_))
                        {
                            eprintln!("connection {peer:?}: {e}");
                        }
                        a.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| RuntimeError::Io(format!("starting the accept thread: {e}")))?;
    Ok(ServerHandle {
        addr,
        stop,
        join: Some(join),
    })
}

/// Serve `enclave` on `listener`: at most `max_conns` authenticated clients at a time, and at
/// most `max_conns` connections still in their unauthenticated phase (hello, attestation,
/// TLS handshake, first request). When that second pool is full, a new connection pushes out
/// the oldest unauthenticated one, so connections that never finish their handshake (slow or
/// stalled peers) cannot keep real clients out: a real client's handshake takes
/// milliseconds, so it is never the oldest for long. Each unauthenticated connection is also
/// dropped when its pre-authentication budget ([`ChannelOptions::preauth_deadline`]) runs
/// out. A client that authenticates while `max_conns` clients are being served is told the
/// server is busy.
pub fn serve_enclave(
    enclave: Arc<Enclave>,
    listener: TcpListener,
    max_conns: usize,
) -> Result<ServerHandle, RuntimeError> {
    let addr = listener
        .local_addr()
        .map_err(|e| RuntimeError::Io(format!("listening address: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let admission = Arc::new(Admission {
        pending: std::sync::Mutex::new(std::collections::VecDeque::new()),
        served: AtomicUsize::new(0),
        max: max_conns.max(1),
    });
    let join = std::thread::Builder::new()
        .name("tessera-accept".into())
        .spawn(move || {
            let mut next_id = 0u64;
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let _ = stream.set_nodelay(true);
                let Ok(handle) = stream.try_clone() else {
                    continue;
                };
                next_id += 1;
                let ticket = admission.admit(next_id, handle);
                let enclave = enclave.clone();
                let _ = std::thread::Builder::new()
                    .name("tessera-conn".into())
                    .spawn(move || {
                        let mut ticket = ticket;
                        let peer = stream.peer_addr().ok();
                        let r = enclave
                            .serve_admitted(Box::new(stream), &mut || ticket.authenticated());
                        drop(ticket);
                        if let Err(e) = r
                            && !matches!(e, RuntimeError::Closed(_))
                        {
                            eprintln!("connection {peer:?}: {e}");
                        }
                    });
            }
        })
        .map_err(|e| RuntimeError::Io(format!("starting the accept thread: {e}")))?;
    Ok(ServerHandle {
        addr,
        stop,
        join: Some(join),
    })
}

/// The enclave server's two pools: unauthenticated connections (oldest first, each with a
/// handle to shut it down) and the count of authenticated ones.
struct Admission {
    pending: std::sync::Mutex<std::collections::VecDeque<(u64, TcpStream)>>,
    served: AtomicUsize,
    max: usize,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, TcpStream)>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new unauthenticated connection, pushing out the oldest one if the pool is
    /// full.
    fn admit(self: &Arc<Self>, id: u64, handle: TcpStream) -> Ticket {
        let mut pending = self.lock();
        while pending.len() >= self.max {
            if let Some((_, oldest)) = pending.pop_front() {
                let _ = oldest.shutdown(std::net::Shutdown::Both);
            }
        }
        pending.push_back((id, handle));
        Ticket {
            admission: self.clone(),
            id,
            served: false,
        }
    }
}

/// One connection's place in [`Admission`]; dropping it frees the place.
struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    served: bool,
}

impl Ticket {
    fn leave_pending(&self) {
        self.admission.lock().retain(|(id, _)| *id != self.id);
    }

    /// The connection authenticated: it moves to the served pool, if there is room.
    fn authenticated(&mut self) -> Result<(), RuntimeError> {
        self.leave_pending();
        if self.served {
            return Ok(());
        }
        let a = &self.admission;
        if a.served.fetch_add(1, Ordering::SeqCst) >= a.max {
            a.served.fetch_sub(1, Ordering::SeqCst);
            return Err(RuntimeError::Busy(format!(
                "{} clients are being served",
                a.max
            )));
        }
        self.served = true;
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave_pending();
        if self.served {
            self.admission.served.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
