//! The server-garbler variant (Delphi).
//!
//! Offline, after the HE phase ([`crate::protocol::he_server`]): one correlated-OT session
//! whose offset is the server's Δ gives the client the labels of its segment inputs (its shares
//! `c_i` and next masks `r_(i+1)`, known offline), and the server garbles every segment with
//! those OT blocks as the 0-labels and sends the tables. The server keeps its shares `s_i`, the
//! 0-labels of its own inputs, Δ, and each segment's output check; the client keeps its masks,
//! its input labels and the tables.
//!
//! Online: the client sends `x − r_0`; per layer the server computes its share `a_i` and sends
//! the labels of `a_i`; the client evaluates the segment and returns the output labels, which
//! the server checks (hashed labels: a label that is neither of its wire's is caught) and
//! decodes into the next masked input `y_(i+1) = x_(i+1) − r_(i+1)`; for the last segment the
//! server sends the permute bits of the output wires instead, and only the client decodes the
//! output.

use crate::protocol::{
    RunCost, ServerModel, TwoPcError, blocks_bytes, bytes_blocks, client_inputs, he_client,
    he_server, pack, recv_big, send_big, take_writes, unpack,
};
use crate::public::Public;
use crate::share;
use rand::{CryptoRng, Rng, RngCore};
use serde::{Deserialize, Serialize};
use tessera_mpc::block::Block;
use tessera_mpc::circuit::from_bits;
use tessera_mpc::garble::{OutputCheck, garble_with};
use tessera_mpc::ot::Channel;
use tessera_mpc::ot::iknp::{CotReceiver, CotSender};
use tessera_mpc::parts::{default_threads, evaluate_parallel};
use tessera_mpc::stream::StreamWriter;
use zeroize::Zeroize;

/// OT session tag of this variant.
const OT_TAG: &[u8] = b"tessera-2pc-sg";

/// What the server keeps between its offline and online phase: its shares, the 0-labels of its
/// own inputs, Δ, each non-last segment's output check, the last segment's permute bits.
pub struct ServerPre {
    ss: Vec<Vec<u64>>,
    own_zero: Vec<Vec<Block>>,
    delta: Block,
    checks: Vec<OutputCheck>,
    last_decoding: Vec<bool>,
}

#[derive(Serialize, Deserialize)]
struct ServerRepr {
    ss: Vec<Vec<u64>>,
    own_zero: Vec<Vec<u128>>,
    delta: u128,
    checks: Vec<Vec<u8>>,
    last_decoding: Vec<bool>,
}

impl ServerPre {
    /// Bytes the server must keep (as [`ServerPre::to_bytes`] writes them).
    pub fn stored_bytes(&self) -> u64 {
        let shares: u64 = self.ss.iter().map(|s| s.len() as u64 * 8).sum();
        let labels: u64 = self.own_zero.iter().map(|z| z.len() as u64 * 16).sum();
        let checks: u64 = self
            .checks
            .iter()
            .map(|c| 16 + c.outputs() as u64 * 32)
            .sum();
        shares + labels + 16 + checks + self.last_decoding.len() as u64
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TwoPcError> {
        encode(&ServerRepr {
            ss: self.ss.clone(),
            own_zero: self
                .own_zero
                .iter()
                .map(|z| z.iter().map(|b| b.0).collect())
                .collect(),
            delta: self.delta.0,
            checks: self.checks.iter().map(OutputCheck::to_bytes).collect(),
            last_decoding: self.last_decoding.clone(),
        })
    }

    /// Read what [`ServerPre::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8]) -> Result<Self, TwoPcError> {
        let r: ServerRepr = decode(b)?;
        Ok(Self {
            ss: r.ss,
            own_zero: r
                .own_zero
                .into_iter()
                .map(|z| z.into_iter().map(Block).collect())
                .collect(),
            delta: Block(r.delta),
            checks: r
                .checks
                .iter()
                .map(|c| OutputCheck::from_bytes(c))
                .collect::<Result<_, _>>()?,
            last_decoding: r.last_decoding,
        })
    }
}

impl Drop for ServerPre {
    fn drop(&mut self) {
        for s in &mut self.ss {
            s.zeroize();
        }
        self.delta = Block(0);
    }
}

/// What the client keeps between its offline and online phase.
pub struct ClientPre {
    rs: Vec<Vec<u64>>,
    ts: Vec<Block>,
    materials: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct ClientRepr {
    rs: Vec<Vec<u64>>,
    ts: Vec<u128>,
    materials: Vec<Vec<u8>>,
}

impl ClientPre {
    /// Bytes the client must keep: masks (8 each), input labels (16 each), garbled tables.
    pub fn stored_bytes(&self) -> u64 {
        let masks: u64 = self.rs.iter().map(|r| r.len() as u64 * 8).sum();
        masks
            + self.ts.len() as u64 * 16
            + self.materials.iter().map(|m| m.len() as u64).sum::<u64>()
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TwoPcError> {
        encode(&ClientRepr {
            rs: self.rs.clone(),
            ts: self.ts.iter().map(|b| b.0).collect(),
            materials: self.materials.clone(),
        })
    }

    /// Read what [`ClientPre::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8]) -> Result<Self, TwoPcError> {
        let r: ClientRepr = decode(b)?;
        Ok(Self {
            rs: r.rs,
            ts: r.ts.into_iter().map(Block).collect(),
            materials: r.materials,
        })
    }
}

impl Drop for ClientPre {
    fn drop(&mut self) {
        for r in &mut self.rs {
            r.zeroize();
        }
    }
}

/// A stored form as bytes.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TwoPcError> {
    postcard::to_allocvec(v)
        .map_err(|e| TwoPcError::Store(format!("encoding a preprocessing: {e}")))
}

/// A stored form from bytes.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, TwoPcError> {
    postcard::from_bytes(b)
        .map_err(|e| TwoPcError::Store(format!("a stored preprocessing does not decode: {e}")))
}

/// The most bytes a segment's garbled stream can take (two blocks per AND gate, the stream's
/// headers and chunk framing).
pub(crate) fn material_bound(and_gates: usize) -> u64 {
    and_gates as u64 * 32 + (and_gates as u64 / 1024 + 16) * 64 + 4096
}

/// The server's offline phase.
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    m: &ServerModel,
    ch: &mut C,
    rng: &mut R,
) -> Result<ServerPre, TwoPcError> {
    let p = &m.public;
    let ss = he_server(m, ch, rng)?;
    let delta = Block(rng.random::<u128>() | 1);
    let mut cots = CotSender::setup(ch, rng, OT_TAG, delta)?;
    let n_ot: usize = (0..p.segments.len())
        .map(|i| p.segments[i].input_bits() - p.server_bits(i))
        .sum();
    let qs = cots.extend(ch, n_ot)?;
    let mut q_at = 0;
    let last = p.segments.len() - 1;
    let mut own_zero = Vec::with_capacity(p.segments.len());
    let mut checks = Vec::with_capacity(last);
    let mut last_decoding = Vec::new();
    for (i, seg) in p.segments.iter().enumerate() {
        let own = p.server_bits(i);
        let n_client = seg.input_bits() - own;
        let mut zero: Vec<Block> = (0..own).map(|_| Block(rng.random())).collect();
        zero.extend_from_slice(&qs[q_at..q_at + n_client]);
        q_at += n_client;
        let mut w = StreamWriter::new(Vec::new());
        let mine: Vec<Block> = zero[..own].to_vec();
        let g = garble_with(seg, delta, zero, rng, &mut w)?;
        send_big(ch, w.into_inner())?;
        own_zero.push(mine);
        if i == last {
            last_decoding = g.decoding.bits;
        } else {
            checks.push(g.check);
        }
    }
    Ok(ServerPre {
        ss,
        own_zero,
        delta,
        checks,
        last_decoding,
    })
}

/// The client's offline phase.
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    p: &Public,
    ch: &mut C,
    rng: &mut R,
) -> Result<(ClientPre, RunCost), TwoPcError> {
    let (rs, cs) = he_client(p, ch, rng)?;
    let choices: Vec<bool> = (0..p.segments.len())
        .flat_map(|j| client_inputs(p, j, &rs, &cs))
        .collect();
    let mut cotr = CotReceiver::setup(ch, rng, OT_TAG)?;
    let ts = cotr.extend(ch, &choices)?;
    let mut garbled_bytes = 0;
    let materials: Vec<Vec<u8>> = p
        .segments
        .iter()
        .map(|s| {
            let m = recv_big(ch, material_bound(s.and_count()), "garbled tables")?;
            garbled_bytes += m.len() as u64;
            Ok(m)
        })
        .collect::<Result<_, TwoPcError>>()?;
    let pre = ClientPre { rs, ts, materials };
    let cost = RunCost {
        garbled_bytes,
        ots: choices.len() as u64,
        client_stored: pre.stored_bytes(),
        ..RunCost::default()
    };
    Ok((pre, cost))
}

/// The server's online phase.
pub fn server_online<C: Channel>(
    m: &ServerModel,
    ch: &mut C,
    pre: ServerPre,
) -> Result<(), TwoPcError> {
    let p = &m.public;
    let bits = p.share_bits;
    let mut ys: Vec<Option<Vec<u64>>> = vec![None; p.model.values.len()];
    ys[0] = Some(unpack(
        &ch.recv()?,
        p.value_len(0),
        bits,
        "the masked input",
    )?);
    let last = p.segments.len() - 1;
    for j in 0..p.segments.len() {
        let a = m.server_inputs(j, &ys, &pre.ss)?;
        let zero = pre
            .own_zero
            .get(j)
            .filter(|z| z.len() == a.len())
            .ok_or_else(|| TwoPcError::Protocol(format!("no input labels for segment {j}")))?;
        let labels: Vec<Block> = zero
            .iter()
            .zip(&a)
            .map(|(z, &bit)| *z ^ pre.delta.and_bit(bit))
            .collect();
        ch.send(blocks_bytes(&labels))?;
        if j == last {
            ch.send(pre.last_decoding.iter().map(|&b| u8::from(b)).collect())?;
        } else {
            let check = pre
                .checks
                .get(j)
                .ok_or_else(|| TwoPcError::Protocol(format!("no output check for segment {j}")))?;
            let out = bytes_blocks(&ch.recv()?, check.outputs(), "output labels")?;
            let bits_out = check.check(&out)?;
            take_writes(p, j, &bits_out, &mut ys)?;
        }
    }
    Ok(())
}

/// The client's online phase on the first layer's quantized input `x`; the output integers.
pub fn client_online<C: Channel>(
    p: &Public,
    ch: &mut C,
    pre: ClientPre,
    x: &[i64],
) -> Result<Vec<i64>, TwoPcError> {
    let bits = p.share_bits;
    let y0 = share::masked_input(
        x,
        pre.rs.first().map(Vec::as_slice).unwrap_or_default(),
        bits,
    )?;
    ch.send(pack(&y0))?;
    let mut t_at = 0;
    let last = p.segments.len() - 1;
    for (i, (seg, material)) in p.segments.iter().zip(&pre.materials).enumerate() {
        let own = p.server_bits(i);
        let mut labels = bytes_blocks(&ch.recv()?, own, "the server's input labels")?;
        let n_client = seg.input_bits() - own;
        let mine = pre
            .ts
            .get(t_at..t_at + n_client)
            .ok_or_else(|| TwoPcError::Protocol("too few OT labels".into()))?;
        labels.extend_from_slice(mine);
        t_at += n_client;
        let res = evaluate_parallel(seg, &labels, material, default_threads())?;
        if i == last {
            let d = ch.recv()?;
            if d.len() != res.len() || d.iter().any(|&b| b > 1) {
                return Err(TwoPcError::Protocol(format!(
                    "{} decoding bits for {} outputs",
                    d.len(),
                    res.len()
                )));
            }
            let bits_out: Vec<bool> = res
                .iter()
                .zip(&d)
                .map(|(l, &b)| l.lsb() ^ (b == 1))
                .collect();
            return Ok(bits_out
                .chunks(p.model.out_bits)
                .map(|c| share::signed(from_bits(c) as u64, p.model.out_bits))
                .collect());
        }
        ch.send(blocks_bytes(&res))?;
    }
    Err(TwoPcError::Protocol("the model has no segment".into()))
}
