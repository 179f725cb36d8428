//! The client-garbler variant (CryptoNite's study of Delphi).
//!
//! Offline, after the HE phase: the client draws Δ and runs one correlated-OT session as the
//! sender with offset Δ; the server receives with **random** choice bits `b` (its real inputs,
//! its shares `a_i`, exist only online) and keeps `t_j = q_j ⊕ b_j·Δ`. The client garbles every
//! segment with fresh 0-labels `A_j` for the server's inputs, and sends the tables, the labels
//! of its own inputs (its shares `c_i` and next masks `r_(i+1)`, known offline) and, for every
//! segment but the last, the permute bits of the outputs (the server is to learn the next
//! masked input). The client keeps `A_j ⊕ q_j` per server input bit, Δ, its masks and the last
//! segment's output check; the server keeps the tables, the client's labels, `b`, `t` and the
//! permute bits — so the large storage moves to the server.
//!
//! Online: the client sends `x − r_0`; per layer the server computes its share `a_i`, sends
//! `d = a_i ⊕ b` (one bit per input bit: `b` is uniform, so `d` says nothing), the client
//! answers `z_j = A_j ⊕ q_j ⊕ d_j·Δ`, and the server's label is `t_j ⊕ z_j = A_j ⊕ a_j·Δ`. The
//! server evaluates, decodes the next masked input with the permute bits, and after the last
//! segment returns the output labels, which the client checks (hashed labels) and decodes.

use crate::protocol::{
    RunCost, ServerModel, TwoPcError, blocks_bytes, bytes_blocks, client_inputs, he_client,
    he_server, pack, recv_big, send_big, take_writes, unpack,
};
use crate::public::Public;
use crate::sg::{decode, encode, material_bound};
use crate::share;
use rand::{CryptoRng, Rng, RngCore};
use serde::{Deserialize, Serialize};
use tessera_mpc::block::Block;
use tessera_mpc::circuit::from_bits;
use tessera_mpc::garble::{OutputCheck, garble_with};
use tessera_mpc::ot::Channel;
use tessera_mpc::ot::iknp::{CotReceiver, CotSender, derandomize_choices, derandomize_receive};
use tessera_mpc::parts::{default_threads, evaluate_parallel};
use tessera_mpc::stream::StreamWriter;
use zeroize::Zeroize;

/// OT session tag of this variant.
const OT_TAG: &[u8] = b"tessera-2pc-cg";

/// What the server keeps between its offline and online phase.
pub struct ServerPre {
    ss: Vec<Vec<u64>>,
    b: Vec<bool>,
    ts: Vec<Block>,
    materials: Vec<Vec<u8>>,
    client_labels: Vec<Vec<Block>>,
    decodings: Vec<Vec<bool>>,
}

#[derive(Serialize, Deserialize)]
struct ServerRepr {
    ss: Vec<Vec<u64>>,
    b: Vec<bool>,
    ts: Vec<u128>,
    materials: Vec<Vec<u8>>,
    client_labels: Vec<Vec<u128>>,
    decodings: Vec<Vec<bool>>,
}

impl ServerPre {
    /// The bytes to store.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TwoPcError> {
        encode(&ServerRepr {
            ss: self.ss.clone(),
            b: self.b.clone(),
            ts: self.ts.iter().map(|t| t.0).collect(),
            materials: self.materials.clone(),
            client_labels: self
                .client_labels
                .iter()
                .map(|l| l.iter().map(|x| x.0).collect())
                .collect(),
            decodings: self.decodings.clone(),
        })
    }

    /// Read what [`ServerPre::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TwoPcError> {
        let r: ServerRepr = decode(bytes)?;
        Ok(Self {
            ss: r.ss,
            b: r.b,
            ts: r.ts.into_iter().map(Block).collect(),
            materials: r.materials,
            client_labels: r
                .client_labels
                .into_iter()
                .map(|l| l.into_iter().map(Block).collect())
                .collect(),
            decodings: r.decodings,
        })
    }

    /// Bytes the server must keep: its shares (8 each), its random choices (1 bit) and OT
    /// labels (16) per input bit, the tables, the client's labels (16 each), permute bits.
    pub fn stored_bytes(&self) -> u64 {
        let shares: u64 = self.ss.iter().map(|s| s.len() as u64 * 8).sum();
        let labels: u64 = self.client_labels.iter().map(|l| l.len() as u64 * 16).sum();
        let perm: u64 = self.decodings.iter().map(|d| d.len() as u64).sum::<u64>() / 8;
        shares
            + (self.b.len() as u64).div_ceil(8)
            + self.ts.len() as u64 * 16
            + self.materials.iter().map(|m| m.len() as u64).sum::<u64>()
            + labels
            + perm
    }
}

impl Drop for ServerPre {
    fn drop(&mut self) {
        for s in &mut self.ss {
            s.zeroize();
        }
        self.b.zeroize();
    }
}

/// What the client keeps between its offline and online phase.
pub struct ClientPre {
    rs: Vec<Vec<u64>>,
    delta: Block,
    zq: Vec<Block>,
    check: OutputCheck,
}

#[derive(Serialize, Deserialize)]
struct ClientRepr {
    rs: Vec<Vec<u64>>,
    delta: u128,
    zq: Vec<u128>,
    check: Vec<u8>,
}

impl ClientPre {
    /// The bytes to store.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TwoPcError> {
        encode(&ClientRepr {
            rs: self.rs.clone(),
            delta: self.delta.0,
            zq: self.zq.iter().map(|z| z.0).collect(),
            check: self.check.to_bytes(),
        })
    }

    /// Read what [`ClientPre::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8]) -> Result<Self, TwoPcError> {
        let r: ClientRepr = decode(b)?;
        Ok(Self {
            rs: r.rs,
            delta: Block(r.delta),
            zq: r.zq.into_iter().map(Block).collect(),
            check: OutputCheck::from_bytes(&r.check)?,
        })
    }

    /// Bytes the client must keep: masks (8 each), `A ⊕ q` per server input bit and Δ (16
    /// each), two hashed labels per final output.
    pub fn stored_bytes(&self) -> u64 {
        let masks: u64 = self.rs.iter().map(|r| r.len() as u64 * 8).sum();
        masks + (self.zq.len() as u64 + 1) * 16 + self.check.outputs() as u64 * 32
    }
}

impl Drop for ClientPre {
    fn drop(&mut self) {
        for r in &mut self.rs {
            r.zeroize();
        }
        self.delta = Block(0);
        for z in &mut self.zq {
            *z = Block(0);
        }
    }
}

/// The server's offline phase (it evaluates).
pub fn server_offline<C: Channel, R: RngCore + CryptoRng>(
    m: &ServerModel,
    ch: &mut C,
    rng: &mut R,
) -> Result<ServerPre, TwoPcError> {
    let p = &m.public;
    let ss = he_server(m, ch, rng)?;
    let n_ot: usize = (0..p.segments.len()).map(|i| p.server_bits(i)).sum();
    let b: Vec<bool> = (0..n_ot).map(|_| rng.random()).collect();
    let mut cotr = CotReceiver::setup(ch, rng, OT_TAG)?;
    let ts = cotr.extend(ch, &b)?;
    let last = p.segments.len() - 1;
    let mut materials = Vec::with_capacity(p.segments.len());
    let mut client_labels = Vec::with_capacity(p.segments.len());
    let mut decodings = Vec::with_capacity(last);
    for (i, seg) in p.segments.iter().enumerate() {
        materials.push(recv_big(
            ch,
            material_bound(seg.and_count()),
            "garbled tables",
        )?);
        let n_client = seg.input_bits() - p.server_bits(i);
        client_labels.push(bytes_blocks(&ch.recv()?, n_client, "the client's labels")?);
        if i != last {
            let d = ch.recv()?;
            let n_out = p.model.segments.get(i).map_or(0, |s| {
                s.writes.iter().map(|&w| p.value_len(w)).sum::<usize>() * p.share_bits
            });
            if d.len() != n_out || d.iter().any(|&v| v > 1) {
                return Err(TwoPcError::Protocol(format!(
                    "{} permute bits for {n_out} outputs",
                    d.len()
                )));
            }
            decodings.push(d.iter().map(|&v| v == 1).collect());
        }
    }
    Ok(ServerPre {
        ss,
        b,
        ts,
        materials,
        client_labels,
        decodings,
    })
}

/// The client's offline phase (it garbles).
pub fn client_offline<C: Channel, R: RngCore + CryptoRng>(
    p: &Public,
    ch: &mut C,
    rng: &mut R,
) -> Result<(ClientPre, RunCost), TwoPcError> {
    let (rs, cs) = he_client(p, ch, rng)?;
    let delta = Block(rng.random::<u128>() | 1);
    let n_ot: usize = (0..p.segments.len()).map(|i| p.server_bits(i)).sum();
    let mut cots = CotSender::setup(ch, rng, OT_TAG, delta)?;
    let qs = cots.extend(ch, n_ot)?;
    let mut zq = Vec::with_capacity(n_ot);
    let mut check = None;
    let mut garbled_bytes = 0;
    let last = p.segments.len() - 1;
    let mut q_at = 0;
    for (i, seg) in p.segments.iter().enumerate() {
        let own = p.server_bits(i);
        let zero: Vec<Block> = (0..seg.input_bits()).map(|_| Block(rng.random())).collect();
        for (z, q) in zero.iter().zip(&qs[q_at..q_at + own]) {
            zq.push(*z ^ *q);
        }
        q_at += own;
        let mine = client_inputs(p, i, &rs, &cs);
        let mut w = StreamWriter::new(Vec::new());
        let g = garble_with(seg, delta, zero, rng, &mut w)?;
        let material = w.into_inner();
        garbled_bytes += material.len() as u64;
        send_big(ch, material)?;
        ch.send(blocks_bytes(&g.inputs.encode(own, &mine)?))?;
        if i == last {
            check = Some(g.check);
        } else {
            ch.send(g.decoding.bits.iter().map(|&b| u8::from(b)).collect())?;
        }
    }
    let check = check.ok_or_else(|| TwoPcError::Protocol("the model has no segment".into()))?;
    let pre = ClientPre {
        rs,
        delta,
        zq,
        check,
    };
    let cost = RunCost {
        garbled_bytes,
        ots: n_ot as u64,
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
    let mut at = 0;
    for (j, seg) in p.segments.iter().enumerate() {
        let (material, theirs) = pre
            .materials
            .get(j)
            .zip(pre.client_labels.get(j))
            .ok_or_else(|| TwoPcError::Protocol(format!("no preprocessing for segment {j}")))?;
        let a = m.server_inputs(j, &ys, &pre.ss)?;
        let span = at..at + a.len();
        let (b, ts) = pre
            .b
            .get(span.clone())
            .zip(pre.ts.get(span))
            .ok_or_else(|| TwoPcError::Protocol("too few precomputed OTs".into()))?;
        at += a.len();
        ch.send(derandomize_choices(&a, b)?)?;
        let zs = bytes_blocks(&ch.recv()?, a.len(), "the client's OT answers")?;
        let mut labels = derandomize_receive(ts, &zs)?;
        labels.extend_from_slice(theirs);
        let res = evaluate_parallel(seg, &labels, material, default_threads())?;
        if j == last {
            ch.send(blocks_bytes(&res))?;
        } else {
            let d = pre
                .decodings
                .get(j)
                .filter(|d| d.len() == res.len())
                .ok_or_else(|| TwoPcError::Protocol("permute bits missing".into()))?;
            let bits_out: Vec<bool> = res.iter().zip(d).map(|(l, &p)| l.lsb() ^ p).collect();
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
    let mut at = 0;
    for i in 0..p.segments.len() {
        let own = p.server_bits(i);
        let d = ch.recv()?;
        let zq = pre
            .zq
            .get(at..at + own)
            .ok_or_else(|| TwoPcError::Protocol("too few precomputed OTs".into()))?;
        at += own;
        if d.len() != own.div_ceil(8) {
            return Err(TwoPcError::Protocol(format!(
                "{} bytes of choice differences for {own} input bits",
                d.len()
            )));
        }
        let zs: Vec<Block> = zq
            .iter()
            .enumerate()
            .map(|(j, z)| *z ^ pre.delta.and_bit((d[j / 8] >> (j % 8)) & 1 == 1))
            .collect();
        ch.send(blocks_bytes(&zs))?;
    }
    let out = bytes_blocks(&ch.recv()?, pre.check.outputs(), "output labels")?;
    let bits_out = pre.check.check(&out)?;
    Ok(bits_out
        .chunks(p.model.out_bits)
        .map(|c| share::signed(from_bits(c) as u64, p.model.out_bits))
        .collect())
}
