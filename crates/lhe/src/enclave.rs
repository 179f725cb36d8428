//! The enclave's part of lhe: the key pair, client sessions, and the loop that drives the
//! server through a request — decrypt, requantize, non-linear layers, re-encrypt — and seals
//! the output for the data owner.

use crate::messages::{EnclaveToServer, ServerToEnclave};
use crate::{
    InputEncoding, LayerCost, LheError, LheModel, LheResult, PublicSetup, SessionInfo, seal_result,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_engine::EngineError;
use tessera_engine::Semantics;
use tessera_he::linear::{decrypt_output, encrypt_input};
use tessera_he::wire::{read_cts, write_cts, write_public};
use tessera_he::{HeError, KeyPair};
use tessera_model::{Graph, Tensor};
use tessera_runtime::channel::{Channel, ChannelOptions, IDLE_DEADLINE, Role};
use tessera_runtime::cost::Footprint;
use tessera_runtime::enclave::InferBackend;
use tessera_runtime::protocol::OffloadCost;
use tessera_runtime::{RuntimeError, Transport};
use zeroize::Zeroizing;

/// Most sessions kept at once (a new one past it replaces the oldest).
const MAX_SESSIONS: usize = 4096;

struct SessionState {
    key: Zeroizing<[u8; 32]>,
    last_request: Option<u64>,
    dead: bool,
}

/// The lhe backend of an enclave: generates the key pair at start, opens sessions for attested
/// clients, and serves the server's requests on one connection ([`LheBackend::drive`]).
pub struct LheBackend {
    model: LheModel,
    keys: KeyPair,
    public_key: Vec<u8>,
    key_hash: [u8; 32],
    setup: PublicSetup,
    commitment: [u8; 32],
    sessions: Mutex<HashMap<u64, SessionState>>,
    next_session: AtomicU64,
    footprint: Footprint,
}

/// The first session id from 64 random bits: random, and in [2^62, 2^63), where every id takes
/// the same nine bytes as a postcard varint — so a session's messages (and the bytes the cost
/// report counts) have one size in every run; a uniformly random id was a byte shorter one run
/// in 128. Counting up from there never leaves the interval.
fn first_session(random: u64) -> u64 {
    (random >> 2) | (1 << 62)
}

impl LheBackend {
    /// Lower the model, choose the parameters, generate the key pair.
    pub fn new(graph: &Graph, semantics: &Semantics) -> Result<Arc<Self>, LheError> {
        let model = LheModel::new(graph, semantics)?;
        let keys = KeyPair::generate(&model.params, &mut rand::rng());
        let public_key = write_public(&keys.public)?;
        let key_hash: [u8; 32] = Sha256::digest(&public_key).into();
        let setup = model.public_setup(&public_key);
        let commitment = model.commitment()?;
        let mut start = [0u8; 8];
        rand::rng().fill_bytes(&mut start);
        Ok(Arc::new(Self {
            footprint: Footprint::of(graph),
            model,
            keys,
            public_key,
            key_hash,
            setup,
            commitment,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(first_session(u64::from_le_bytes(start))),
        }))
    }

    /// The model under lhe (layers, bounds, parameters).
    pub fn model(&self) -> &LheModel {
        &self.model
    }

    /// The public key's wire bytes.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// The public set-up the server receives.
    pub fn public_setup(&self) -> &PublicSetup {
        &self.setup
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionState>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connect to the server over `raw`, announce the set-up, and serve its requests on a
    /// thread until the connection ends. Returns whether the server already holds an uploaded
    /// model for this set-up, and the thread.
    pub fn drive<T: Transport + 'static>(
        self: &Arc<Self>,
        raw: T,
        opts: ChannelOptions,
    ) -> Result<(bool, std::thread::JoinHandle<Result<(), LheError>>), LheError> {
        let mut ch = Channel::new(raw, opts)?;
        ch.handshake(Role::Enclave, &[Role::Worker])?;
        ch.set_deadline(Some(IDLE_DEADLINE))?;
        ch.send(&EnclaveToServer::Hello(self.setup.clone()))?;
        let stored = match ch.recv::<ServerToEnclave>()? {
            ServerToEnclave::Ready { model } => model,
            _ => return Err(LheError::Protocol("expected the server's ready".into())),
        };
        let me = self.clone();
        let join = std::thread::Builder::new()
            .name("tessera-lhe-link".into())
            .spawn(move || me.serve_link(ch))
            .map_err(|e| LheError::Protocol(format!("starting the server link: {e}")))?;
        Ok((stored, join))
    }

    fn serve_link(&self, mut ch: Channel) -> Result<(), LheError> {
        loop {
            if let Err(e) = ch.send(&EnclaveToServer::Next) {
                return match e {
                    RuntimeError::Closed(_) => Ok(()),
                    e => Err(e.into()),
                };
            }
            let (session, request) = match ch.recv::<ServerToEnclave>() {
                Ok(ServerToEnclave::Request { session, request }) => (session, request),
                Ok(_) => {
                    return Err(LheError::Protocol(
                        "expected a request from the server".into(),
                    ));
                }
                Err(RuntimeError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            match self.process(&mut ch, session, request) {
                Ok(sealed) => ch.send(&EnclaveToServer::Done { request, sealed })?,
                Err(e @ (LheError::Runtime(_) | LheError::Protocol(_))) if !ch.is_open() => {
                    return Err(e);
                }
                Err(e) => ch.send(&EnclaveToServer::Failed {
                    request,
                    reason: e.to_string(),
                })?,
            }
        }
    }

    /// Run one request: check its session and number, drive the server through every linear
    /// layer, seal the output.
    fn process(&self, ch: &mut Channel, session: u64, request: u64) -> Result<Vec<u8>, LheError> {
        let key = {
            let mut s = self.sessions();
            let st = s.get_mut(&session).ok_or_else(|| {
                LheError::Protocol(format!(
                    "session {session} is unknown (open one with the enclave first)"
                ))
            })?;
            if st.dead {
                return Err(LheError::Protocol(format!(
                    "session {session} was closed after a decryption out of range; open a new one"
                )));
            }
            if st.last_request.is_some_and(|l| request <= l) {
                return Err(LheError::Protocol(format!(
                    "request {request} of session {session} is not newer than the last one (replayed or reordered)"
                )));
            }
            st.last_request = Some(request);
            st.key.clone()
        };
        let counters = ch.counters();
        let (up0, down0, rounds0) = counters.snapshot();
        let t0 = Instant::now();
        let mut waited = Duration::ZERO;
        let mut stats = LheResult {
            shape: Vec::new(),
            exact: Vec::new(),
            scale: 0.0,
            enclave_ns: 0,
            server_ns: 0,
            bytes_to_server: 0,
            bytes_from_server: 0,
            rounds: 0,
            decryptions: 0,
            encryptions: 0,
            products: 0,
            layers: Vec::new(),
        };
        let out = self.run(ch, request, &mut stats, &mut waited);
        let out = match out {
            Ok(y) => y,
            Err(e) => {
                let out_of_range = match &e {
                    LheError::He(h) | LheError::AtLayer { source: h, .. } => {
                        matches!(**h, HeError::OutOfRange { .. })
                    }
                    _ => false,
                };
                if out_of_range && let Some(st) = self.sessions().get_mut(&session) {
                    st.dead = true;
                }
                return Err(e);
            }
        };
        let (up1, down1, rounds1) = counters.snapshot();
        stats.enclave_ns = t0.elapsed().saturating_sub(waited).as_nanos() as u64;
        stats.bytes_to_server = up1 - up0;
        stats.bytes_from_server = down1 - down0;
        stats.rounds = rounds1 - rounds0;
        stats.shape = out.shape().to_vec();
        stats.exact = out.data().to_vec();
        stats.scale = self.model.int.output_quant()?.scale;
        seal_result(&key, session, request, &stats)
    }

    fn run(
        &self,
        ch: &mut Channel,
        request: u64,
        stats: &mut LheResult,
        waited: &mut Duration,
    ) -> Result<Tensor<i64>, LheError> {
        let m = &self.model;
        let p = &m.params;
        let g = m.int.graph();
        let shape = g
            .inputs
            .first()
            .map(|&v| g.shape(v).to_vec())
            .unwrap_or_default();
        let x = match m.input {
            // The server computes the first layer on the data owner's ciphertexts; the engine's
            // input is a placeholder its hook never reads (0 lies in every input interval).
            InputEncoding::FirstLayer => Tensor::new(shape.clone(), vec![0i64; m.input_len()])?,
            InputEncoding::Raw => {
                ch.send(&EnclaveToServer::FetchInput { request })?;
                let t = Instant::now();
                let cts = match ch.recv::<ServerToEnclave>()? {
                    ServerToEnclave::Input { request: r, cts } if r == request => cts,
                    _ => return Err(LheError::Protocol("expected the data owner's input".into())),
                };
                *waited += t.elapsed();
                let cts = read_cts(p, &cts, m.raw_chunks())?;
                if cts.len() != m.raw_chunks() {
                    return Err(LheError::Protocol(format!(
                        "{} input ciphertexts, expected {}",
                        cts.len(),
                        m.raw_chunks()
                    )));
                }
                let iq = m.int.input_quant()?;
                let mut v = Vec::with_capacity(m.input_len());
                for ct in &cts {
                    v.extend_from_slice(&self.keys.secret.decrypt(ct)?);
                    stats.decryptions += 1;
                }
                v.truncate(m.input_len());
                if let Some((index, &value)) = v
                    .iter()
                    .enumerate()
                    .find(|(_, x)| **x < iq.lo || **x > iq.hi)
                {
                    return Err(HeError::OutOfRange {
                        index,
                        value,
                        bound: iq.max_abs(),
                    }
                    .into());
                }
                Tensor::new(shape, v)?
            }
        };
        let index: HashMap<usize, usize> = m
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.node, i))
            .collect();
        let mut failure: Option<LheError> = None;
        let y = m.int.run_split(&x, &mut |node, input, out_shape| {
            let Some(&li) = index.get(&node) else {
                return Ok(None);
            };
            match self.layer(ch, request, li, input, out_shape, stats, waited) {
                Ok(t) => Ok(Some(t)),
                Err(e) => {
                    let text = e.to_string();
                    failure = Some(e);
                    Err(EngineError::Internal(text))
                }
            }
        });
        match (y, failure) {
            (_, Some(e)) => Err(e),
            (Ok(y), None) => Ok(y),
            (Err(e), None) => Err(e.into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        ch: &mut Channel,
        request: u64,
        li: usize,
        input: &Tensor<i64>,
        out_shape: &[usize],
        stats: &mut LheResult,
        waited: &mut Duration,
    ) -> Result<Tensor<i64>, LheError> {
        let m = &self.model;
        let p = &m.params;
        let (plan, need) = m
            .plans
            .get(li)
            .zip(m.needs.get(li))
            .ok_or_else(|| LheError::Protocol(format!("no linear layer {li}")))?;
        let t_enc = Instant::now();
        let (up0, down0, _) = ch.counters().snapshot();
        let mut cost = LayerCost {
            name: need.name.clone(),
            ..LayerCost::default()
        };
        let input = if li == 0 && m.input == InputEncoding::FirstLayer {
            None
        } else {
            let cts = encrypt_input(&self.keys.public, plan, input.data(), &mut rand::rng())?;
            cost.encryptions = cts.len() as u64;
            Some(write_cts(p, &cts)?)
        };
        cost.enclave_ns = t_enc.elapsed().as_nanos() as u64;
        ch.send(&EnclaveToServer::Compute {
            request,
            layer: li as u32,
            input,
        })?;
        let t = Instant::now();
        let (outs, server_ns) = match ch.recv::<ServerToEnclave>()? {
            ServerToEnclave::Computed {
                request: r,
                layer,
                outs,
                server_ns,
            } if r == request && layer as usize == li => (outs, server_ns),
            _ => {
                return Err(LheError::Protocol(format!(
                    "expected layer {li}'s output from the server"
                )));
            }
        };
        *waited += t.elapsed();
        let t_dec = Instant::now();
        cost.server_ns = server_ns;
        let outs = read_cts(p, &outs, plan.n_outputs())?;
        if outs.len() != plan.n_outputs() {
            return Err(LheError::Protocol(format!(
                "layer '{}': {} output ciphertexts, the layout has {}",
                need.name,
                outs.len(),
                plan.n_outputs()
            )));
        }
        cost.decryptions = outs.len() as u64;
        cost.products = (0..plan.n_outputs())
            .map(|o| plan.products(o).len() as u64)
            .sum::<u64>();
        let acc =
            decrypt_output(&self.keys.secret, plan, &outs, need.acc_bound).map_err(|source| {
                LheError::AtLayer {
                    layer: need.name.clone(),
                    source: Box::new(source),
                }
            })?;
        cost.enclave_ns += t_dec.elapsed().as_nanos() as u64;
        let (up1, down1, _) = ch.counters().snapshot();
        cost.bytes_to_server = up1 - up0;
        cost.bytes_from_server = down1 - down0;
        stats.server_ns += cost.server_ns;
        stats.decryptions += cost.decryptions;
        stats.encryptions += cost.encryptions;
        stats.products += cost.products;
        stats.layers.push(cost);
        Ok(Tensor::new(out_shape.to_vec(), acc)?)
    }
}

impl InferBackend for LheBackend {
    fn scheme(&self) -> &'static str {
        "lhe"
    }

    fn infer(&self, _input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), RuntimeError> {
        Err(RuntimeError::BadRequest(
            "an lhe data owner encrypts its input and sends it to the server (tessera client --scheme lhe --server ADDR); the enclave never takes a plaintext input".into(),
        ))
    }

    fn footprint(&self) -> Footprint {
        self.footprint
    }

    fn key_binding(&self) -> Vec<u8> {
        self.key_hash.to_vec()
    }

    fn session(&self) -> Result<Vec<u8>, RuntimeError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        let session = self.next_session.fetch_add(1, Ordering::SeqCst);
        {
            let mut s = self.sessions();
            if s.len() >= MAX_SESSIONS
                && let Some(&oldest) = s.keys().min()
            {
                s.remove(&oldest);
            }
            s.insert(
                session,
                SessionState {
                    key: key.clone(),
                    last_request: None,
                    dead: false,
                },
            );
        }
        let g = self.model.int.graph();
        let iq = self.model.int.input_quant().map_err(RuntimeError::Engine)?;
        let info = SessionInfo {
            session,
            result_key: *key,
            public_key: self.public_key.clone(),
            setup: self.setup.clone(),
            model: self.commitment,
            input_shape: g
                .inputs
                .first()
                .map(|&v| g.shape(v).to_vec())
                .unwrap_or_default(),
            input_scale: iq.scale,
            input_lo: iq.lo,
            input_hi: iq.hi,
        };
        postcard::to_allocvec(&info)
            .map(Zeroizing::new)
            .map(|b| b.to_vec())
            .map_err(|e| RuntimeError::Backend(format!("encoding the session: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::first_session;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the random start, the first session id and the ids counted up from it all
        /// encode to the same number of bytes on the wire.
        #[test]
        fn session_ids_have_one_wire_size(random: u64, later in 0u64..1 << 40) {
            let size = |v: u64| postcard::to_allocvec(&v).map(|b| b.len()).ok();
            let first = first_session(random);
            prop_assert_eq!(size(first), Some(9));
            prop_assert_eq!(size(first + later), Some(9));
        }
    }
}
