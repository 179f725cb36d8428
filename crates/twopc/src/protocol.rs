//! What both variants share: the server's model (public description, HE parameters, encoded
//! weights), the HE offline phase of the linear layers, the server's online linear layers on
//! its shares, message helpers over any [`Channel`], and the embedded runner that puts both
//! parties of one session in this process on their own threads over an in-memory channel.
//!
//! The HE offline phase (both variants): the client draws a fresh key pair and a mask `r_i`
//! for every linear layer's input and sends `Enc(r_i)`; the server answers `Enc(W_i·r_i − s_i)`
//! (flooded, switched down) and keeps `s_i`; the client decrypts its share `c_i`. Online the
//! client sends `x − r_0`, and for each layer the server computes its share
//! `a_i = W_i·y_i + b_i + s_i` of the accumulators from the masked input `y_i`, so that
//! `a_i + c_i = W_i·x_i + b_i`. What the variants do with the shares is in [`crate::sg`]
//! (server garbles) and [`crate::cg`] (client garbles).

use crate::model::{Cut, Shape};
use crate::public::{PUBLIC_VERSION, Public, PublicModel};
use crate::session::{self, Variant};
use crate::{offline, share};
use rand::{CryptoRng, Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;
use tessera_engine::qint::IntModel;
use tessera_he::linear::PlainWeights;
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::wire::{read_cts, read_public, write_cts, write_public};
use tessera_he::{HeParams, KeyPair};
use tessera_model::Tensor;
use tessera_mpc::block::Block;
use tessera_mpc::circuit::{from_bits, to_bits};
use tessera_mpc::ot::{Channel, duplex};

/// Errors of a 2pc run.
#[derive(Debug, thiserror::Error)]
pub enum TwoPcError {
    /// Garbling, OT, circuits, the channel.
    #[error(transparent)]
    Mpc(#[from] tessera_mpc::MpcError),
    /// The HE layer.
    #[error(transparent)]
    He(#[from] tessera_he::HeError),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    /// A message that is malformed, out of order or not the expected one.
    #[error("2pc protocol: {0}")]
    Protocol(String),
    /// The client's input does not fit the model.
    #[error("2pc input: {0}")]
    Input(String),
    /// An online phase asked for preprocessing that was never made or was already used.
    #[error(
        "2pc: no unused preprocessing for this inference — each mask and each garbled circuit serves one inference; run the offline phase first"
    )]
    NoPreprocessing,
    /// A party's thread failed.
    #[error("2pc: {0}")]
    Party(String),
    /// Stored preprocessing could not be written, found or read.
    #[error("2pc preprocessing store: {0}")]
    Store(String),
}

/// What one inference cost, per phase, as the client measured it (bytes each way on its
/// channel) plus the figures both sides report.
#[derive(Clone, Debug, Default)]
pub struct RunCost {
    /// Offline bytes client → server.
    pub offline_up: u64,
    /// Offline bytes server → client.
    pub offline_down: u64,
    /// Online bytes client → server.
    pub online_up: u64,
    /// Online bytes server → client.
    pub online_down: u64,
    /// Garbled tables and their headers (part of the offline bytes).
    pub garbled_bytes: u64,
    /// AND gates garbled.
    pub and_gates: u64,
    /// Correlated OTs.
    pub ots: u64,
    /// Bytes the client keeps between its offline and online phase.
    pub client_stored: u64,
    /// Bytes the server keeps between its offline and online phase (it reports them).
    pub server_stored: u64,
    /// Offline wall time, milliseconds.
    pub offline_ms: f64,
    /// Online wall time, milliseconds.
    pub online_ms: f64,
    /// Of `online_ms`, the time the client waited for the server's messages (the server's
    /// work and the transfer); the rest is the client's own work.
    pub online_wait_ms: f64,
    /// Online messages (each direction change is a round).
    pub online_messages: u64,
}

/// A channel that counts what passes through it.
pub struct Meter<'a, C: Channel> {
    inner: &'a mut C,
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
    /// Messages either way.
    pub messages: u64,
    /// Time spent waiting in `recv` (the peer's work and the transfer), nanoseconds.
    pub waited_ns: u64,
}

impl<'a, C: Channel> Meter<'a, C> {
    /// Count on `inner`.
    pub fn new(inner: &'a mut C) -> Self {
        Self {
            inner,
            sent: 0,
            received: 0,
            messages: 0,
            waited_ns: 0,
        }
    }
}

impl<C: Channel> Channel for Meter<'_, C> {
    fn send(&mut self, msg: Vec<u8>) -> Result<(), tessera_mpc::MpcError> {
        self.sent += msg.len() as u64;
        self.messages += 1;
        self.inner.send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>, tessera_mpc::MpcError> {
        let t0 = std::time::Instant::now();
        let m = self.inner.recv()?;
        self.waited_ns = self
            .waited_ns
            .saturating_add(t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64);
        self.received += m.len() as u64;
        self.messages += 1;
        Ok(m)
    }
}

/// The largest frame this protocol sends; larger payloads go in pieces.
pub const PIECE: usize = 8 << 20;

/// Send `bytes` of any size: its length, then pieces of at most [`PIECE`] bytes.
pub fn send_big<C: Channel>(ch: &mut C, bytes: Vec<u8>) -> Result<(), TwoPcError> {
    ch.send((bytes.len() as u64).to_le_bytes().to_vec())?;
    if bytes.len() <= PIECE {
        ch.send(bytes)?;
    } else {
        for piece in bytes.chunks(PIECE) {
            ch.send(piece.to_vec())?;
        }
    }
    Ok(())
}

/// Receive what [`send_big`] sent, refusing more than `max` bytes in all.
pub fn recv_big<C: Channel>(ch: &mut C, max: u64, what: &str) -> Result<Vec<u8>, TwoPcError> {
    let head = ch.recv()?;
    let len = <[u8; 8]>::try_from(head.as_slice())
        .map(u64::from_le_bytes)
        .map_err(|_| TwoPcError::Protocol(format!("{what}: a length of {} bytes", head.len())))?;
    if len > max {
        return Err(TwoPcError::Protocol(format!(
            "{what}: {len} bytes announced where at most {max} can be right"
        )));
    }
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        let piece = ch.recv()?;
        if piece.is_empty() || out.len() as u64 + piece.len() as u64 > len {
            return Err(TwoPcError::Protocol(format!(
                "{what}: pieces do not add up to the {len} bytes announced"
            )));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// Labels as bytes.
pub fn blocks_bytes(b: &[Block]) -> Vec<u8> {
    b.iter().flat_map(|x| x.to_bytes()).collect()
}

/// Exactly `n` labels from `b`.
pub fn bytes_blocks(b: &[u8], n: usize, what: &str) -> Result<Vec<Block>, TwoPcError> {
    if b.len() != n * 16 {
        return Err(TwoPcError::Protocol(format!(
            "{what}: {} bytes where {n} labels take {}",
            b.len(),
            n * 16
        )));
    }
    Ok(b.chunks_exact(16)
        .map(|c| {
            let mut a = [0u8; 16];
            a.copy_from_slice(c);
            Block::from_bytes(a)
        })
        .collect())
}

/// Ring elements as little-endian u64s.
pub fn pack(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Exactly `n` ring elements of `bits` bits from `b`.
pub fn unpack(b: &[u8], n: usize, bits: usize, what: &str) -> Result<Vec<u64>, TwoPcError> {
    if b.len() != n * 8 {
        return Err(TwoPcError::Protocol(format!(
            "{what}: {} bytes where {n} values take {}",
            b.len(),
            n * 8
        )));
    }
    Ok(b.chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            share::reduce(u64::from_le_bytes(a), bits)
        })
        .collect())
}

/// The bits of a list of ring elements, `bits` each, least significant first.
pub fn ring_bits(v: &[u64], bits: usize) -> Vec<bool> {
    v.iter()
        .flat_map(|&x| to_bits(u128::from(x), bits))
        .collect()
}

/// The server's side: the public model, its HE parameters (with flooding), the encoded weights
/// and the integer weights and biases of its online linear layers.
pub struct ServerModel {
    /// What the client sees.
    pub public: Arc<Public>,
    weights: Vec<PlainWeights>,
    linear: Vec<(Vec<i64>, Vec<i64>)>,
}

impl ServerModel {
    /// Choose the HE parameters for `cut` (circuit privacy on), encode the weights, build the
    /// public description and the circuits.
    pub fn new(cut: &Cut) -> Result<Self, TwoPcError> {
        let needs: Vec<LayerNeed> = cut
            .layers
            .iter()
            .map(|l| {
                let probe = l.public.shape.plan(4096)?;
                Ok(LayerNeed {
                    name: l.public.name.clone(),
                    acc_bound: l.acc_bound,
                    x_bound: 1 << 20,
                    w_bound: l
                        .w
                        .iter()
                        .map(|w| u128::from(w.unsigned_abs()))
                        .max()
                        .unwrap_or(1),
                    terms: probe.terms(),
                    products: probe.max_products(),
                    product: Product::Plain,
                })
            })
            .collect::<Result<_, tessera_he::HeError>>()?;
        let params = HeParams::choose(
            &needs,
            ParamOptions {
                flood: true,
                ..ParamOptions::default()
            },
        )?;
        let g = cut.int.graph();
        let shape_of = |v: Option<&usize>| v.map(|&v| g.shape(v).to_vec()).unwrap_or_default();
        let oq = cut.int.output_quant()?;
        let model = PublicModel {
            version: PUBLIC_VERSION,
            input_shape: shape_of(g.inputs.first()),
            input: cut.int.input_quant()?,
            output_shape: shape_of(g.outputs.first()),
            output_scale: oq.scale,
            out_bits: (129 - oq.max_abs().leading_zeros()) as usize + 1,
            he: tessera_he::wire::write_params(&params),
            values: cut.values.clone(),
            layers: cut.public_layers(),
            segments: cut.segments.clone(),
        };
        let public = Public::new(model, Some(params))?;
        let weights = cut
            .layers
            .iter()
            .zip(&public.plans)
            .map(|(l, p)| PlainWeights::new(&public.params, p.clone(), &l.w, &vec![0; l.b.len()]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            public: Arc::new(public),
            weights,
            linear: cut
                .layers
                .iter()
                .map(|l| (l.w.clone(), l.b.clone()))
                .collect(),
        })
    }

    /// The server's share of layer `i`'s accumulators, `W·y + b + s`, as input bits.
    fn share_bits_of(&self, i: usize, y: &[u64], s: &[u64]) -> Result<Vec<bool>, TwoPcError> {
        let bits = self.public.share_bits;
        let (layer, (w, b)) = self
            .public
            .model
            .layers
            .get(i)
            .zip(self.linear.get(i))
            .ok_or_else(|| TwoPcError::Protocol(format!("no linear layer {i}")))?;
        if y.len() != layer.shape.inputs() {
            return Err(TwoPcError::Protocol(format!(
                "layer '{}' got {} masked inputs for {}",
                layer.name,
                y.len(),
                layer.shape.inputs()
            )));
        }
        let lin = match &layer.shape {
            Shape::Conv(c) => share::conv(c, y, w, b, bits),
            Shape::Dense { k, m } => share::dense(*k, *m, y, w, b, bits),
        };
        let a: Vec<u64> = lin
            .iter()
            .zip(s)
            .map(|(&v, &s)| share::reduce(v.wrapping_add(s), bits))
            .collect();
        Ok(ring_bits(&a, bits))
    }

    /// The server's input bits of segment `j`: its shares of the layers the segment takes
    /// (computed now from the masked values `ys` it holds) and the masked values it reads.
    pub fn server_inputs(
        &self,
        j: usize,
        ys: &[Option<Vec<u64>>],
        ss: &[Vec<u64>],
    ) -> Result<Vec<bool>, TwoPcError> {
        let p = &self.public;
        let seg = p
            .model
            .segments
            .get(j)
            .ok_or_else(|| TwoPcError::Protocol(format!("no segment {j}")))?;
        let missing = |v: usize| TwoPcError::Protocol(format!("masked value {v} is not known yet"));
        let mut bits = Vec::with_capacity(p.server_bits(j));
        for &l in &seg.linears {
            let v = p.model.layers.get(l).map_or(usize::MAX, |x| x.input);
            let y = ys
                .get(v)
                .and_then(Option::as_ref)
                .ok_or_else(|| missing(v))?;
            let s = ss
                .get(l)
                .ok_or_else(|| TwoPcError::Protocol(format!("no share of layer {l}")))?;
            bits.extend(self.share_bits_of(l, y, s)?);
        }
        for &v in &seg.reads {
            let y = ys
                .get(v)
                .and_then(Option::as_ref)
                .ok_or_else(|| missing(v))?;
            bits.extend(ring_bits(y, p.share_bits));
        }
        Ok(bits)
    }
}

/// The client's input bits of segment `j`: its shares `c` of the layers taken, the masks of the
/// values read, the fresh masks of the values written.
pub fn client_inputs(p: &Public, j: usize, rs: &[Vec<u64>], cs: &[Vec<u64>]) -> Vec<bool> {
    let Some(seg) = p.model.segments.get(j) else {
        return Vec::new();
    };
    let bits = p.share_bits;
    let mut out = Vec::new();
    for &l in &seg.linears {
        out.extend(ring_bits(
            cs.get(l).map(Vec::as_slice).unwrap_or_default(),
            bits,
        ));
    }
    for &v in seg.reads.iter().chain(&seg.writes) {
        out.extend(ring_bits(
            rs.get(v).map(Vec::as_slice).unwrap_or_default(),
            bits,
        ));
    }
    out
}

/// The server's masked values after segment `j`'s outputs `bits` are decoded.
pub fn take_writes(
    p: &Public,
    j: usize,
    bits: &[bool],
    ys: &mut [Option<Vec<u64>>],
) -> Result<(), TwoPcError> {
    let seg = p
        .model
        .segments
        .get(j)
        .ok_or_else(|| TwoPcError::Protocol(format!("no segment {j}")))?;
    let l = p.share_bits;
    let mut at = 0;
    for &w in &seg.writes {
        let n = p.value_len(w) * l;
        let chunk = bits
            .get(at..at + n)
            .ok_or_else(|| TwoPcError::Protocol(format!("segment {j} output too short")))?;
        at += n;
        let slot = ys
            .get_mut(w)
            .ok_or_else(|| TwoPcError::Protocol(format!("no masked value {w}")))?;
        *slot = Some(chunk.chunks(l).map(|c| from_bits(c) as u64).collect());
    }
    Ok(())
}

/// The server's HE offline phase: answer every layer's encrypted mask; returns the `s_i`.
pub fn he_server<C: Channel, R: RngCore + CryptoRng>(
    m: &ServerModel,
    ch: &mut C,
    rng: &mut R,
) -> Result<Vec<Vec<u64>>, TwoPcError> {
    let p = &m.public;
    let pk = read_public(&p.params, &ch.recv()?)?;
    let mut ss = Vec::with_capacity(p.plans.len());
    for ((w, plan), layer) in m.weights.iter().zip(&p.plans).zip(&p.model.layers) {
        let enc_r = read_cts(&p.params, &ch.recv()?, plan.n_inputs())?;
        let (s, answer) =
            offline::server_answer(&p.params, &pk, w, layer.shape.outputs().0, &enc_r, rng)?;
        send_big(ch, write_cts(&p.params, &answer)?)?;
        ss.push(s);
    }
    Ok(ss)
}

/// One ring vector per linear layer.
pub type Masks = Vec<Vec<u64>>;

/// The client's HE offline phase: fresh keys, a mask per masked value, its share per layer.
/// Returns the masks `r_v` (per value) and the shares `c_i` (per layer).
pub fn he_client<C: Channel, R: RngCore + CryptoRng>(
    p: &Public,
    ch: &mut C,
    rng: &mut R,
) -> Result<(Masks, Masks), TwoPcError> {
    let keys = KeyPair::generate(&p.params, rng);
    ch.send(write_public(&keys.public)?)?;
    let bits = p.share_bits;
    let rs: Masks = p
        .model
        .values
        .iter()
        .map(|&n| (0..n).map(|_| share::reduce(rng.random(), bits)).collect())
        .collect();
    let mut cs = Vec::with_capacity(p.plans.len());
    // A ciphertext at the switched-down level takes at most this many bytes (two polynomials
    // of N coefficients of at most 8 bytes per prime), so a layer's answer is bounded.
    let per_ct = 2 * p.params.degree() as u64 * 8 * p.params.moduli_bits.len() as u64 + 4096;
    for (plan, layer) in p.plans.iter().zip(&p.model.layers) {
        let r = rs
            .get(layer.input)
            .ok_or_else(|| TwoPcError::Protocol(format!("no mask for layer '{}'", layer.name)))?;
        let enc = offline::encrypt_mask(&keys.public, plan, r, rng)?;
        ch.send(write_cts(&p.params, &enc)?)?;
        let bytes = recv_big(ch, per_ct * plan.n_outputs() as u64, "an HE answer")?;
        let answer = read_cts(&p.params, &bytes, plan.n_outputs())?;
        cs.push(offline::client_share(&keys.secret, plan, &answer)?);
    }
    Ok((rs, cs))
}

/// A model ready for 2pc with both parties in this process.
pub struct TwoPc {
    server: Arc<ServerModel>,
    client: Arc<Public>,
    cut: Cut,
}

impl TwoPc {
    /// Cut the model, choose parameters, encode the weights, build the circuits.
    pub fn new(int: IntModel) -> Result<Self, TwoPcError> {
        let cut = Cut::new(int)?;
        let server = Arc::new(ServerModel::new(&cut)?);
        // Both parties build the same circuits from the same description (a remote client
        // builds its own from the server's, `session::Client::open`); in one process they
        // share them, which halves the memory a large network's circuits take.
        let client = server.public.clone();
        Ok(Self {
            server,
            client,
            cut,
        })
    }

    /// The server's model (for serving remote clients).
    pub fn server(&self) -> Arc<ServerModel> {
        self.server.clone()
    }

    /// The ops the client must run before the first linear layer (empty when a remote client
    /// can run this model).
    pub fn client_prefix(&self) -> &[String] {
        &self.cut.prefix
    }

    /// Segments (one garbled circuit and one online round each).
    pub fn segments(&self) -> usize {
        self.client.segments.len()
    }

    /// The parameters and circuit sizes, in words.
    pub fn describe(&self) -> String {
        let p = &self.server.public;
        format!(
            "{}; {} segments, {} AND gates for {} activations per inference",
            p.params.describe(),
            p.segments.len(),
            p.and_gates(),
            p.activations()
        )
    }

    /// The first linear layer's input: the client runs the ops before it on its own input.
    fn first_input(&self, xq: &Tensor<i64>) -> Result<Vec<i64>, TwoPcError> {
        let first = self.cut.layers.first().map(|l| l.node);
        let mut captured: Option<Vec<i64>> = None;
        let res = self.cut.int.run_split(xq, &mut |k, input, _| {
            if Some(k) == first {
                captured = Some(input.data().to_vec());
                // Stop here: nothing after the first linear layer runs in the clear.
                return Err(tessera_engine::EngineError::Internal("stop".into()));
            }
            Ok(None)
        });
        match (captured, res) {
            (Some(t), _) => Ok(t),
            (None, Err(e)) => Err(e.into()),
            (None, Ok(_)) => Err(TwoPcError::Party("the model has no linear layer".into())),
        }
    }

    /// Run one inference on `x` in `variant`: a server thread and this thread as the client,
    /// one session with one offline and one online phase. Returns the output integers and the
    /// cost.
    pub fn infer(
        &self,
        x: &Tensor,
        seed: u64,
        variant: Variant,
    ) -> Result<(Tensor<i64>, RunCost), TwoPcError> {
        let xq = self.first_input(&self.cut.int.quantize_input(x)?)?;
        let out_shape = self.client.model.output_shape.clone();
        let (mut sch, cch) = duplex();
        let result = std::thread::scope(|s| {
            let server = s.spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(seed);
                session::serve(
                    &self.server,
                    &mut sch,
                    &mut rng,
                    &session::ServeConfig {
                        max_pending: 1,
                        ..Default::default()
                    },
                )
            });
            let client = (|| {
                let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_c11e);
                let mut c = session::Client::open_known(cch, variant, self.client.clone())?;
                let mut cost = c.offline(&mut rng)?;
                let (y, online) = c.online(&xq)?;
                cost.add_online(&online);
                c.close()?;
                Ok::<_, TwoPcError>((y, cost))
            })();
            let server = server
                .join()
                .map_err(|_| TwoPcError::Party("the server thread panicked".into()))?;
            // When one party fails the other sees its channel close: report both.
            match (server, client) {
                (Ok(_), Ok(r)) => Ok(r),
                (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
                (Err(s), Err(c)) => Err(TwoPcError::Party(format!("server: {s}; client: {c}"))),
            }
        });
        let (y, cost) = result?;
        Ok((
            Tensor::new(out_shape, y).map_err(tessera_engine::EngineError::from)?,
            cost,
        ))
    }
}
