//! IKNP correlated OT extension with the sender's offset equal to a given Δ (the garbler's), so
//! that the sender's `q_j` and `q_j ⊕ Δ` are a wire's two labels and the receiver's
//! `t_j = q_j ⊕ r_j·Δ` is the label of its choice `r_j`.
//!
//! Set-up: 128 base OTs with the roles swapped — the COT sender receives `k_{i,Δ_i}` (its choice
//! bits are Δ's bits), the COT receiver sends both `k_{i,0}, k_{i,1}`.
//! Extension of `m` OTs (m rounded up to a multiple of 128), in sub-batches of [`SUB_BATCH`]:
//! the receiver expands `t_i = G(k_{i,0})`, sends `u_i = t_i ⊕ G(k_{i,1}) ⊕ r` for each of the
//! 128 columns (16 bytes per OT, one message per sub-batch); the sender computes
//! `q_i = G(k_{i,Δ_i}) ⊕ Δ_i·u_i = t_i ⊕ Δ_i·r`; both transpose.
//! G is AES-128 in counter mode under the base key, its counter continuing across calls so no
//! key stream is reused.
//!
//! On top: chosen-message OT ([`CotSender::send_chosen`]: `y_b = m_b ⊕ H(q_j ⊕ b·Δ, j)`, 32 bytes
//! per OT), random OT (`H(q_j, j)`, `H(q_j ⊕ Δ, j)`), and the derandomization of precomputed
//! random COTs ([`derandomize_send`]): the receiver sends `d = b ⊕ r` (1 bit), the sender
//! `z = L⁰ ⊕ q ⊕ d·Δ` (one block), and the receiver's `z ⊕ t` is the label of `b` for the
//! sender's chosen 0-label `L⁰`.

use crate::MpcError;
use crate::block::Block;
use crate::hash::Tccr;
use crate::ot::{Channel, base, gf128, transpose::transpose};
use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use rand::Rng;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The public hash key of the OT's correlation-robust hash (a fixed public constant: the
/// tweak `j` makes every use distinct within a session, and the session's keys differ).
const OT_HASH_KEY: [u8; 16] = *b"tessera-ot-hash1";

/// OTs per extension message: the 128-row matrix of one sub-batch (256 kB) stays in cache, and
/// the receiver sends one message per sub-batch.
pub const SUB_BATCH: usize = 1 << 14;

/// Most OTs one extension call may produce.
pub const MAX_EXTEND: usize = 1 << 26;

/// AES-CTR key stream of a base key.
struct Prg {
    aes: Aes128,
    counter: u128,
}

impl Prg {
    fn new(key: Block) -> Self {
        Self {
            aes: Aes128::new(&Array::from(key.to_bytes())),
            counter: 0,
        }
    }

    /// The next `bytes` bytes (a multiple of 16) of the stream, XORed into `out`.
    fn xor_into(&mut self, out: &mut [u8]) {
        let mut buf = [aes::Block::default(); 64];
        for chunk in out.chunks_mut(16 * 64) {
            let n = chunk.len() / 16;
            for (k, b) in buf.iter_mut().take(n).enumerate() {
                *b = Array::from((self.counter + k as u128).to_le_bytes());
            }
            self.counter += n as u128;
            self.aes.encrypt_blocks(&mut buf[..n]);
            for (dst, src) in chunk.chunks_exact_mut(16).zip(&buf[..n]) {
                let mut d = [0u8; 16];
                d.copy_from_slice(dst);
                let x = u128::from_le_bytes(d) ^ u128::from_le_bytes(src.0);
                dst.copy_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// `dst ^= src & mask`, eight bytes at a time (the rows are whole multiples of 16 bytes).
fn xor_masked(dst: &mut [u8], src: &[u8], mask: u64) {
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(d);
        b.copy_from_slice(s);
        d.copy_from_slice(&(u64::from_le_bytes(a) ^ (u64::from_le_bytes(b) & mask)).to_le_bytes());
    }
}

/// Extra OTs a checked extension runs and discards: they hide the receiver's choices in the
/// linear combination the check reveals.
const KOS_EXTRA: usize = 256;

/// The challenges χ_j: AES-CTR under the sender's fresh seed.
fn challenges(seed: [u8; 16], n: usize) -> Vec<u128> {
    let mut prg = Prg::new(Block::from_bytes(seed));
    let mut bytes = vec![0u8; 16 * n];
    prg.xor_into(&mut bytes);
    bytes
        .chunks_exact(16)
        .map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(c);
            u128::from_le_bytes(b)
        })
        .collect()
}

fn padded(m: usize) -> Result<usize, MpcError> {
    if m == 0 || m > MAX_EXTEND {
        return Err(MpcError::Protocol(format!(
            "{m} OTs in one extension (1 to {MAX_EXTEND})"
        )));
    }
    Ok(m.div_ceil(128) * 128)
}

/// The COT sender (the garbler: it holds Δ).
pub struct CotSender {
    delta: Block,
    prgs: Vec<Prg>,
    done: u128,
    hash: Tccr,
    scratch: Vec<u8>,
    check: bool,
}

/// The COT receiver (the evaluator).
pub struct CotReceiver {
    prgs: Vec<[Prg; 2]>,
    done: u128,
    hash: Tccr,
    scratch: Vec<u8>,
    check: bool,
}

impl CotSender {
    /// Base OTs as their receiver, with Δ's bits as choices. `delta` must have lsb 1 when the
    /// COTs are to be garbling labels.
    pub fn setup<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        rng: &mut R,
        sid: &[u8],
        delta: Block,
    ) -> Result<Self, MpcError> {
        let choices: Vec<bool> = (0..128).map(|i| (delta.0 >> i) & 1 == 1).collect();
        let mut keys = base::receive(ch, rng, sid, &choices)?;
        let prgs = keys.iter().map(|&k| Prg::new(k)).collect();
        keys.zeroize();
        Ok(Self {
            delta,
            prgs,
            done: 0,
            hash: Tccr::new(OT_HASH_KEY),
            scratch: Vec::new(),
            check: false,
        })
    }

    /// Check every extension with KOS (the receiver must switch it on too).
    pub fn with_consistency_check(mut self) -> Self {
        self.check = true;
        self
    }

    /// Δ.
    pub fn delta(&self) -> Block {
        self.delta
    }

    /// `m` correlated OTs: the sender's `q_j` (the receiver holds `q_j ⊕ r_j·Δ`).
    pub fn extend<C: Channel>(&mut self, ch: &mut C, m: usize) -> Result<Vec<Block>, MpcError> {
        if !self.check {
            return self.extend_raw(ch, m);
        }
        padded(m)?;
        let mut qs = self.extend_raw(ch, m + KOS_EXTRA)?;
        let mut seed = [0u8; 16];
        rand::rng().fill_bytes(&mut seed);
        ch.send(seed.to_vec())?;
        let msg = ch.recv()?;
        if msg.len() != 32 {
            return Err(MpcError::Protocol(format!(
                "a {}-byte consistency answer (expected 32)",
                msg.len()
            )));
        }
        let mut x = [0u8; 16];
        let mut t = [0u8; 16];
        x.copy_from_slice(&msg[..16]);
        t.copy_from_slice(&msg[16..]);
        let (x, t) = (u128::from_le_bytes(x), u128::from_le_bytes(t));
        let chi = challenges(seed, qs.len());
        let mut acc = gf128::Wide::default();
        for (q, c) in qs.iter().zip(&chi) {
            acc ^= gf128::mul_wide(q.0, *c);
        }
        let q = gf128::reduce(acc);
        let want = t ^ gf128::mul(x, self.delta.0);
        if !bool::from(q.to_le_bytes().ct_eq(&want.to_le_bytes())) {
            return Err(MpcError::Cheating(
                "the receiver's extension columns are inconsistent (KOS check failed)".into(),
            ));
        }
        qs.truncate(m);
        Ok(qs)
    }

    fn extend_raw<C: Channel>(&mut self, ch: &mut C, m: usize) -> Result<Vec<Block>, MpcError> {
        let mp = padded(m)?;
        let mut out = Vec::with_capacity(mp);
        let mut part = Vec::with_capacity(SUB_BATCH);
        for first in (0..mp).step_by(SUB_BATCH) {
            let n = SUB_BATCH.min(mp - first);
            let rb = n / 8;
            let u = ch.recv()?;
            if u.len() != 128 * rb {
                return Err(MpcError::Protocol(format!(
                    "{} bytes of extension columns for OTs {first}..{} of {m} (expected {})",
                    u.len(),
                    first + n,
                    128 * rb
                )));
            }
            let q = &mut self.scratch;
            q.clear();
            q.resize(128 * rb, 0);
            for (i, prg) in self.prgs.iter_mut().enumerate() {
                let row = &mut q[i * rb..(i + 1) * rb];
                prg.xor_into(row);
                let mask = (((self.delta.0 >> i) & 1) as u64).wrapping_neg();
                xor_masked(row, &u[i * rb..(i + 1) * rb], mask);
            }
            transpose(q, n, &mut part);
            out.extend_from_slice(&part);
        }
        self.scratch.zeroize();
        part.zeroize();
        out.truncate(m);
        self.done += mp as u128;
        Ok(out)
    }

    /// Chosen-message OT on `qs` (from [`CotSender::extend`], first index `first` of this
    /// session): sends `m_b ⊕ H(q_j ⊕ b·Δ, j)` for b = 0, 1.
    pub fn send_chosen<C: Channel>(
        &self,
        ch: &mut C,
        qs: &[Block],
        first: u128,
        msgs: &[[Block; 2]],
    ) -> Result<(), MpcError> {
        if qs.len() != msgs.len() {
            return Err(MpcError::Input(format!(
                "{} messages for {} OTs",
                msgs.len(),
                qs.len()
            )));
        }
        let mut out = Vec::with_capacity(32 * qs.len());
        for (j, (q, m)) in qs.iter().zip(msgs).enumerate() {
            let t = first + j as u128;
            out.extend_from_slice(&(m[0] ^ self.hash.hash(*q, t)).to_bytes());
            out.extend_from_slice(&(m[1] ^ self.hash.hash(*q ^ self.delta, t)).to_bytes());
        }
        ch.send(out)
    }

    /// Random OT: both random messages of each OT.
    pub fn random(&self, qs: &[Block], first: u128) -> Vec<[Block; 2]> {
        qs.iter()
            .enumerate()
            .map(|(j, q)| {
                let t = first + j as u128;
                [self.hash.hash(*q, t), self.hash.hash(*q ^ self.delta, t)]
            })
            .collect()
    }
}

impl CotReceiver {
    /// Base OTs as their sender.
    pub fn setup<C: Channel, R: RngCore + CryptoRng>(
        ch: &mut C,
        rng: &mut R,
        sid: &[u8],
    ) -> Result<Self, MpcError> {
        let mut keys = base::send(ch, rng, sid, 128)?;
        let prgs = keys
            .iter()
            .map(|k| [Prg::new(k[0]), Prg::new(k[1])])
            .collect();
        keys.iter_mut().for_each(|k| k.zeroize());
        Ok(Self {
            prgs,
            done: 0,
            hash: Tccr::new(OT_HASH_KEY),
            scratch: Vec::new(),
            check: false,
        })
    }

    /// Answer the KOS check on every extension (the sender must switch it on too).
    pub fn with_consistency_check(mut self) -> Self {
        self.check = true;
        self
    }

    /// `m` correlated OTs with choices `r`: the blocks `t_j = q_j ⊕ r_j·Δ`.
    pub fn extend<C: Channel>(&mut self, ch: &mut C, r: &[bool]) -> Result<Vec<Block>, MpcError> {
        if !self.check {
            return self.extend_raw(ch, r);
        }
        let m = r.len();
        padded(m)?;
        let mut rng = rand::rng();
        let mut all = r.to_vec();
        all.extend((0..KOS_EXTRA).map(|_| rng.random::<bool>()));
        let mut ts = self.extend_raw(ch, &all)?;
        let seed = ch.recv()?;
        let seed: [u8; 16] = seed.as_slice().try_into().map_err(|_| {
            MpcError::Protocol(format!(
                "a {}-byte challenge seed (expected 16)",
                seed.len()
            ))
        })?;
        let chi = challenges(seed, ts.len());
        let mut x = 0u128;
        let mut acc = gf128::Wide::default();
        for ((t, c), &b) in ts.iter().zip(&chi).zip(&all) {
            x ^= c & u128::from(b).wrapping_neg();
            acc ^= gf128::mul_wide(t.0, *c);
        }
        let mut msg = x.to_le_bytes().to_vec();
        msg.extend_from_slice(&gf128::reduce(acc).to_le_bytes());
        ch.send(msg)?;
        all.zeroize();
        ts.truncate(m);
        Ok(ts)
    }

    fn extend_raw<C: Channel>(&mut self, ch: &mut C, r: &[bool]) -> Result<Vec<Block>, MpcError> {
        let m = r.len();
        let mp = padded(m)?;
        let mut out = Vec::with_capacity(mp);
        let mut part = Vec::with_capacity(SUB_BATCH);
        let mut rbits = vec![0u8; SUB_BATCH / 8];
        for first in (0..mp).step_by(SUB_BATCH) {
            let n = SUB_BATCH.min(mp - first);
            let rb = n / 8;
            rbits.iter_mut().for_each(|b| *b = 0);
            for (j, &b) in r.iter().skip(first).take(n).enumerate() {
                rbits[j / 8] |= u8::from(b) << (j % 8);
            }
            let t = &mut self.scratch;
            t.clear();
            t.resize(128 * rb, 0);
            let mut u = vec![0u8; 128 * rb];
            for (i, [p0, p1]) in self.prgs.iter_mut().enumerate() {
                let (ti, ui) = (&mut t[i * rb..(i + 1) * rb], &mut u[i * rb..(i + 1) * rb]);
                p0.xor_into(ti);
                p1.xor_into(ui);
                xor_masked(ui, ti, u64::MAX);
                xor_masked(ui, &rbits[..rb], u64::MAX);
            }
            ch.send(u)?;
            transpose(t, n, &mut part);
            out.extend_from_slice(&part);
        }
        self.scratch.zeroize();
        part.zeroize();
        rbits.zeroize();
        out.truncate(m);
        self.done += mp as u128;
        Ok(out)
    }

    /// Chosen-message OT: the messages of the choices `r` the `ts` were extended with.
    pub fn receive_chosen<C: Channel>(
        &self,
        ch: &mut C,
        ts: &[Block],
        first: u128,
        r: &[bool],
    ) -> Result<Vec<Block>, MpcError> {
        let msg = ch.recv()?;
        if msg.len() != 32 * ts.len() || r.len() != ts.len() {
            return Err(MpcError::Protocol(format!(
                "{} bytes of chosen messages for {} OTs",
                msg.len(),
                ts.len()
            )));
        }
        Ok(ts
            .iter()
            .zip(r)
            .enumerate()
            .map(|(j, (t, &b))| {
                let off = 32 * j + 16 * usize::from(b);
                let mut y = [0u8; 16];
                y.copy_from_slice(&msg[off..off + 16]);
                Block::from_bytes(y) ^ self.hash.hash(*t, first + j as u128)
            })
            .collect())
    }

    /// Random OT: the message of each choice.
    pub fn random(&self, ts: &[Block], first: u128) -> Vec<Block> {
        ts.iter()
            .enumerate()
            .map(|(j, t)| self.hash.hash(*t, first + j as u128))
            .collect()
    }
}

/// The receiver's online step of precomputed random COTs: `d_j = b_j ⊕ r_j` (one bit per OT),
/// packed.
pub fn derandomize_choices(b: &[bool], r: &[bool]) -> Result<Vec<u8>, MpcError> {
    if b.len() != r.len() {
        return Err(MpcError::Input(format!(
            "{} choices for {} precomputed OTs",
            b.len(),
            r.len()
        )));
    }
    let mut d = vec![0u8; b.len().div_ceil(8)];
    for (j, (&x, &y)) in b.iter().zip(r).enumerate() {
        d[j / 8] |= u8::from(x ^ y) << (j % 8);
    }
    Ok(d)
}

/// The sender's answer: `z_j = L⁰_j ⊕ q_j ⊕ d_j·Δ` for its 0-labels `zero` (one block per OT).
pub fn derandomize_send(
    qs: &[Block],
    delta: Block,
    zero: &[Block],
    d: &[u8],
) -> Result<Vec<Block>, MpcError> {
    if zero.len() != qs.len() || d.len() != qs.len().div_ceil(8) {
        return Err(MpcError::Protocol(format!(
            "{} bytes of choice differences and {} labels for {} precomputed OTs",
            d.len(),
            zero.len(),
            qs.len()
        )));
    }
    Ok(qs
        .iter()
        .zip(zero)
        .enumerate()
        .map(|(j, (q, z))| *z ^ *q ^ delta.and_bit((d[j / 8] >> (j % 8)) & 1 == 1))
        .collect())
}

/// The receiver's labels: `z_j ⊕ t_j`.
pub fn derandomize_receive(ts: &[Block], zs: &[Block]) -> Result<Vec<Block>, MpcError> {
    if ts.len() != zs.len() {
        return Err(MpcError::Protocol(format!(
            "{} answers for {} precomputed OTs",
            zs.len(),
            ts.len()
        )));
    }
    Ok(ts.iter().zip(zs).map(|(t, z)| *t ^ *z).collect())
}
