//! The untrusted server: stores the model owner's encrypted model, queues the data owners'
//! encrypted inputs, and computes every linear layer on ciphertexts when the enclave asks.
//!
//! One enclave connection drives the work (one request at a time per connection); data owners
//! and model owners connect beside it. An upload is written to a temporary file and renamed
//! into place only after every layer has arrived, parsed and been fsynced: a truncated or
//! malformed upload leaves nothing behind, and a stored model is checked again when loaded.

use crate::messages::{
    ClientToServer, EnclaveToServer, OwnerToServer, ServerToClient, ServerToEnclave, ServerToOwner,
};
use crate::{InputEncoding, LheError, PublicSetup};
use std::collections::VecDeque;
use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tessera_he::linear::{EncryptedWeights, PreparedWeights, switch_down};
use tessera_he::wire::{read_cts, read_params, write_cts};
use tessera_he::{Ct, HeParams, LinearPlan};
use tessera_objstore::{Location, ObjectWriter, Objects, StoreError};
use tessera_runtime::RuntimeError;
use tessera_runtime::channel::{Channel, ChannelOptions, IDLE_DEADLINE, Role};
use tessera_runtime::enclave::{ServerHandle, serve_tcp};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Where uploaded models are stored, one object per set-up fingerprint: a directory or an
    /// S3-compatible store ([`tessera_objstore`]; an upload becomes visible only once complete).
    pub store: Location,
    /// Channel limits.
    pub channel: ChannelOptions,
    /// How long a data owner's request may wait for the enclave.
    pub request_timeout: Duration,
}

impl ServerOptions {
    /// Defaults with this store (a directory path, or a parsed [`Location`]).
    pub fn new(store: impl Into<Location>) -> Self {
        Self {
            store: store.into(),
            channel: ChannelOptions::default(),
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// The set-up an enclave announced, with what the server derives from it.
struct Setup {
    public: PublicSetup,
    fingerprint: [u8; 32],
    params: HeParams,
    plans: Vec<LinearPlan>,
}

/// A data owner's request waiting for, or in, the enclave.
struct Pending {
    session: u64,
    request: u64,
    input: Vec<Ct>,
    reply: mpsc::Sender<Result<Vec<u8>, String>>,
}

#[derive(Default)]
struct State {
    setup: Option<Arc<Setup>>,
    model: Option<Arc<Vec<PreparedWeights>>>,
    stored_bytes: u64,
    queue: VecDeque<Pending>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn store_err(path: &str, e: impl std::fmt::Display) -> LheError {
    LheError::Store {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const STORE_MAGIC: &[u8; 8] = b"TSLHE\x01\0\0";

fn model_key(fp: &[u8; 32]) -> String {
    format!("{}.lhe", hex(fp))
}

/// Parse a stored model (magic, fingerprint, layer count, length-prefixed ciphertext envelopes,
/// CRC-32) and prepare it for `setup`.
fn load_model(
    bytes: &[u8],
    path: &str,
    setup: &Setup,
) -> Result<(Vec<PreparedWeights>, u64), LheError> {
    let bad = |why: &str| store_err(path, format!("not a valid stored model: {why}"));
    if bytes.len() < 8 + 32 + 4 + 4 {
        return Err(bad("too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_le_bytes(c) {
        return Err(bad("checksum mismatch"));
    }
    if &body[..8] != STORE_MAGIC || body[8..40] != setup.fingerprint[..] {
        return Err(bad("another format or set-up"));
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&body[40..44]);
    let layers = u32::from_le_bytes(n) as usize;
    if layers != setup.plans.len() {
        return Err(bad("layer count differs from the set-up"));
    }
    let mut rest = &body[44..];
    let mut take = || -> Result<Vec<u8>, LheError> {
        if rest.len() < 8 {
            return Err(bad("ends early"));
        }
        let mut l = [0u8; 8];
        l.copy_from_slice(&rest[..8]);
        let l = usize::try_from(u64::from_le_bytes(l)).map_err(|_| bad("length"))?;
        if rest.len() - 8 < l {
            return Err(bad("ends early"));
        }
        let v = rest[8..8 + l].to_vec();
        rest = &rest[8 + l..];
        Ok(v)
    };
    let mut out = Vec::with_capacity(layers);
    for plan in &setup.plans {
        let w = take()?;
        let b = take()?;
        out.push(prepare_layer(&setup.params, plan, &w, &b)?);
    }
    Ok((out, bytes.len() as u64))
}

/// Parse one layer's uploaded ciphertexts against its layout and extend them for products.
fn prepare_layer(
    params: &HeParams,
    plan: &LinearPlan,
    w: &[u8],
    b: &[u8],
) -> Result<PreparedWeights, LheError> {
    let w = read_cts(params, w, plan.n_weights())?;
    let b = read_cts(params, b, plan.n_biases())?;
    Ok(EncryptedWeights { w, b }.prepare(params, plan.clone())?)
}

/// Serve on `listener` until the handle is dropped or waited on.
pub fn serve_server(listener: TcpListener, opts: ServerOptions) -> Result<ServerHandle, LheError> {
    let objects = Objects::open(&opts.store).map_err(|e| store_err(&opts.store.to_string(), e))?;
    let shared = Arc::new(Shared::default());
    let handle = serve_tcp(listener, 256, move |stream| {
        let mut ch = Channel::new(stream, opts.channel)?;
        match ch.handshake(Role::Worker, &[Role::Enclave, Role::Client, Role::Owner])? {
            Role::Enclave => enclave_link(&mut ch, &shared, &objects),
            Role::Owner => owner(&mut ch, &shared, &objects),
            _ => data_owner(&mut ch, &shared, &opts),
        }
        .map_err(|e| {
            let text = e.to_string();
            ch.send_error(&text);
            RuntimeError::from(e)
        })
    })?;
    Ok(handle)
}

fn enclave_link(ch: &mut Channel, shared: &Shared, objects: &Objects) -> Result<(), LheError> {
    ch.set_deadline(Some(IDLE_DEADLINE))?;
    let public = match ch.recv::<EnclaveToServer>()? {
        EnclaveToServer::Hello(s) => s,
        _ => {
            return Err(LheError::Protocol(
                "the enclave must announce its set-up first".into(),
            ));
        }
    };
    let params = read_params(&public.params)?;
    let plans = public
        .layers
        .iter()
        .map(|l| l.shape.plan(params.degree()))
        .collect::<Result<Vec<_>, _>>()?;
    let setup = Arc::new(Setup {
        fingerprint: public.fingerprint(),
        public,
        params,
        plans,
    });
    let key = model_key(&setup.fingerprint);
    let name = format!("{key} in {}", objects.name());
    let stored = match objects.get(&key) {
        Ok(bytes) => {
            let (m, n) = load_model(&bytes, &name, &setup)?;
            Some((Arc::new(m), n))
        }
        Err(StoreError::NotFound(..)) => None,
        Err(e) => return Err(store_err(&name, e)),
    };
    {
        let mut st = shared.lock();
        st.setup = Some(setup.clone());
        st.model = stored.as_ref().map(|(m, _)| m.clone());
        st.stored_bytes = stored.as_ref().map_or(0, |(_, b)| *b);
    }
    ch.send(&ServerToEnclave::Ready {
        model: stored.is_some(),
    })?;
    let mut current: Option<Pending> = None;
    let result = (|| -> Result<(), LheError> {
        loop {
            let msg = match ch.recv::<EnclaveToServer>() {
                Ok(m) => m,
                Err(RuntimeError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            match msg {
                EnclaveToServer::Next => {
                    let p = {
                        let mut st = shared.lock();
                        loop {
                            if let Some(p) = st.queue.pop_front() {
                                break p;
                            }
                            st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                    };
                    let (session, request) = (p.session, p.request);
                    current = Some(p);
                    ch.send(&ServerToEnclave::Request { session, request })?;
                }
                EnclaveToServer::Compute {
                    request,
                    layer,
                    input,
                } => {
                    let p = active(&current, request)?;
                    let model = shared.lock().model.clone().ok_or_else(|| {
                        LheError::Protocol(
                            "no encrypted model has been uploaded for this set-up".into(),
                        )
                    })?;
                    let li = layer as usize;
                    let (w, plan) = model
                        .get(li)
                        .zip(setup.plans.get(li))
                        .ok_or_else(|| LheError::Protocol(format!("no linear layer {layer}")))?;
                    let t0 = Instant::now();
                    let outs = match input {
                        Some(bytes) => w.eval(
                            &setup.params,
                            &read_cts(&setup.params, &bytes, plan.n_inputs())?,
                        )?,
                        None if li == 0 && setup.public.input == InputEncoding::FirstLayer => {
                            w.eval(&setup.params, &p.input)?
                        }
                        None => {
                            return Err(LheError::Protocol(format!(
                                "layer {layer} needs its input ciphertexts"
                            )));
                        }
                    };
                    let mut outs = outs;
                    switch_down(&setup.params, &mut outs)?;
                    let server_ns = t0.elapsed().as_nanos() as u64;
                    ch.send(&ServerToEnclave::Computed {
                        request,
                        layer,
                        outs: write_cts(&setup.params, &outs)?,
                        server_ns,
                    })?;
                }
                EnclaveToServer::FetchInput { request } => {
                    let p = active(&current, request)?;
                    ch.send(&ServerToEnclave::Input {
                        request,
                        cts: write_cts(&setup.params, &p.input)?,
                    })?;
                }
                EnclaveToServer::Done { request, sealed } => {
                    let p = finish(&mut current, request)?;
                    let _ = p.reply.send(Ok(sealed));
                }
                EnclaveToServer::Failed { request, reason } => {
                    let p = finish(&mut current, request)?;
                    let _ = p.reply.send(Err(reason));
                }
                EnclaveToServer::Hello(_) => {
                    return Err(LheError::Protocol(
                        "a second set-up on one connection".into(),
                    ));
                }
            }
        }
    })();
    if let Some(p) = current.take() {
        let _ = p.reply.send(Err(
            "the enclave's connection ended during the request".into()
        ));
    }
    result
}

fn active(current: &Option<Pending>, request: u64) -> Result<&Pending, LheError> {
    current
        .as_ref()
        .filter(|p| p.request == request)
        .ok_or_else(|| LheError::Protocol(format!("request {request} is not the one in progress")))
}

fn finish(current: &mut Option<Pending>, request: u64) -> Result<Pending, LheError> {
    active(current, request)?;
    current
        .take()
        .ok_or_else(|| LheError::Protocol("no request in progress".into()))
}

fn data_owner(ch: &mut Channel, shared: &Shared, opts: &ServerOptions) -> Result<(), LheError> {
    ch.set_deadline(Some(IDLE_DEADLINE))?;
    loop {
        let (session, request, input) = match ch.recv::<ClientToServer>() {
            Ok(ClientToServer::Infer {
                session,
                request,
                input,
            }) => (session, request, input),
            Err(RuntimeError::Closed(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let (setup, has_model) = {
            let st = shared.lock();
            (st.setup.clone(), st.model.is_some())
        };
        let setup = setup.ok_or_else(|| {
            LheError::Protocol("no enclave has connected to this server yet".into())
        })?;
        if !has_model {
            return Err(LheError::Protocol(
                "no encrypted model has been uploaded for the enclave's set-up; run the model owner's upload first".into(),
            ));
        }
        let want = match setup.public.input {
            InputEncoding::FirstLayer => setup.plans.first().map_or(0, |p| p.n_inputs()),
            InputEncoding::Raw => setup.public.input_len.div_ceil(setup.params.degree()),
        };
        let cts = read_cts(&setup.params, &input, want)?;
        if cts.len() != want {
            return Err(LheError::Protocol(format!(
                "{} input ciphertexts, the layout needs {want}",
                cts.len()
            )));
        }
        let (tx, rx) = mpsc::channel();
        {
            let mut st = shared.lock();
            st.queue.push_back(Pending {
                session,
                request,
                input: cts,
                reply: tx,
            });
        }
        shared.wake.notify_all();
        match rx.recv_timeout(opts.request_timeout) {
            Ok(Ok(sealed)) => ch.send(&ServerToClient::Result { request, sealed })?,
            Ok(Err(reason)) => {
                return Err(LheError::Protocol(format!(
                    "the enclave refused request {request}: {reason}"
                )));
            }
            Err(_) => {
                return Err(LheError::Protocol(format!(
                    "request {request} got no answer from the enclave in time"
                )));
            }
        }
    }
}

fn owner(ch: &mut Channel, shared: &Shared, objects: &Objects) -> Result<(), LheError> {
    let (fp, layers) = match ch.recv::<OwnerToServer>()? {
        OwnerToServer::Begin { setup, layers } => (setup, layers as usize),
        _ => {
            return Err(LheError::Protocol(
                "an upload begins with its set-up".into(),
            ));
        }
    };
    let setup =
        shared.lock().setup.clone().ok_or_else(|| {
            LheError::Protocol("no enclave has connected to this server yet".into())
        })?;
    if fp != setup.fingerprint {
        return Err(LheError::Protocol(
            "the upload was encrypted for another set-up (other parameters, public key or layers) than the connected enclave's".into(),
        ));
    }
    if layers != setup.plans.len() {
        return Err(LheError::Protocol(format!(
            "an upload of {layers} layers for a model with {}",
            setup.plans.len()
        )));
    }
    let key = model_key(&fp);
    let name = format!("{key} in {}", objects.name());
    // Visible under its key only once complete; an upload that fails midway is aborted when
    // the writer is dropped, and nothing of it stays.
    let mut out = objects.writer(&key).map_err(|e| store_err(&name, e))?;
    let mut crc = crc32fast::Hasher::new();
    let mut put = |out: &mut ObjectWriter, b: &[u8]| -> Result<(), LheError> {
        crc.update(b);
        out.write_all(b).map_err(|e| store_err(&name, e))
    };
    put(&mut out, STORE_MAGIC)?;
    put(&mut out, &fp)?;
    put(&mut out, &(layers as u32).to_le_bytes())?;
    let mut prepared = Vec::with_capacity(layers);
    for (i, plan) in setup.plans.iter().enumerate() {
        let (index, w, b) = match ch.recv::<OwnerToServer>()? {
            OwnerToServer::Layer { index, w, b } => (index, w, b),
            _ => {
                return Err(LheError::Protocol(format!(
                    "expected layer {i} of the upload"
                )));
            }
        };
        if index as usize != i {
            return Err(LheError::Protocol(format!(
                "layer {index} arrived where layer {i} was expected"
            )));
        }
        prepared.push(prepare_layer(&setup.params, plan, &w, &b)?);
        for part_bytes in [&w, &b] {
            put(&mut out, &(part_bytes.len() as u64).to_le_bytes())?;
            put(&mut out, part_bytes)?;
        }
    }
    match ch.recv::<OwnerToServer>()? {
        OwnerToServer::Commit => {}
        _ => return Err(LheError::Protocol("expected the upload's commit".into())),
    }
    let sum = crc.finalize();
    out.write_all(&sum.to_le_bytes())
        .map_err(|e| store_err(&name, e))?;
    let bytes = out.finish().map_err(|e| store_err(&name, e))?;
    {
        let mut st = shared.lock();
        if st.setup.as_ref().is_some_and(|s| s.fingerprint == fp) {
            st.model = Some(Arc::new(prepared));
            st.stored_bytes = bytes;
        }
    }
    ch.send(&ServerToOwner::Stored { bytes })?;
    Ok(())
}
