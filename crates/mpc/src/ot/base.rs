//! Base OT: Chou–Orlandi ("the simplest OT") over the Ristretto group, fixed.
//!
//! The sender draws `a` and sends `A = a·G`. For choice `c_i` the receiver draws `b_i` and sends
//! `B_i = b_i·G` (c = 0) or `A + b_i·G` (c = 1). Keys:
//! `k_{i,0} = H(sid, i, A, B_i, 2·a·B_i)`, `k_{i,1} = H(sid, i, A, B_i, 2·a·(B_i − A))` for the
//! sender, `k_{i,c_i} = H(sid, i, A, B_i, 2·b_i·A)` for the receiver, H = SHA-256 with a domain
//! separator, truncated to a block (the shared points enter doubled: each side compresses them
//! all in one batch with one field inversion, which yields the encoding of 2P). Identity points are refused, every point must decompress,
//! and the session id and transcript are in every key, so keys of one session or instance
//! are useless in another.

use crate::MpcError;
use crate::block::Block;
use crate::ot::Channel;
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoBasepointTable, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// Most instances one session may run.
pub const MAX_INSTANCES: usize = 1 << 16;

fn scalar<R: RngCore + CryptoRng>(rng: &mut R) -> Scalar {
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    let s = Scalar::from_bytes_mod_order_wide(&wide);
    wide.zeroize();
    s
}

fn point(bytes: &[u8], what: &str) -> Result<RistrettoPoint, MpcError> {
    let p = CompressedRistretto::from_slice(bytes)
        .ok()
        .and_then(|c| c.decompress())
        .ok_or_else(|| MpcError::Protocol(format!("{what} is not a Ristretto point")))?;
    if p == RistrettoPoint::identity() {
        return Err(MpcError::Protocol(format!("{what} is the identity point")));
    }
    Ok(p)
}

/// The key of instance `i` from the transcript and `shared2`, the compression of twice the
/// shared point (each side compresses all its shared points in one batch, with one field
/// inversion, which yields the encoding of 2P).
fn key(sid: &[u8], i: usize, a: &[u8; 32], b: &[u8; 32], shared2: &CompressedRistretto) -> Block {
    let mut h = Sha256::new();
    h.update(b"tessera-base-ot-v2\0");
    h.update((sid.len() as u64).to_le_bytes());
    h.update(sid);
    h.update((i as u64).to_le_bytes());
    h.update(a);
    h.update(b);
    h.update(shared2.as_bytes());
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    Block::from_bytes(k)
}

/// The sender's side of `n` base OTs: both keys of every instance.
pub fn send<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    rng: &mut R,
    sid: &[u8],
    n: usize,
) -> Result<Vec<[Block; 2]>, MpcError> {
    if n == 0 || n > MAX_INSTANCES {
        return Err(MpcError::Protocol(format!(
            "{n} base OTs (1 to {MAX_INSTANCES})"
        )));
    }
    let mut a = scalar(rng);
    let big_a = &a * RISTRETTO_BASEPOINT_TABLE;
    let a_bytes = big_a.compress().to_bytes();
    ch.send(a_bytes.to_vec())?;
    let a_a = a * big_a;
    let msg = ch.recv()?;
    if msg.len() != 32 * n {
        return Err(MpcError::Protocol(format!(
            "{} bytes of receiver points for {n} base OTs (expected {})",
            msg.len(),
            32 * n
        )));
    }
    let mut shared = Vec::with_capacity(2 * n);
    for c in msg.chunks_exact(32) {
        let ab = a * point(c, "a receiver's point")?;
        // a·(B − A) = a·B − a·A, with a·A computed once.
        shared.push(ab);
        shared.push(ab - a_a);
    }
    a.zeroize();
    let comp = RistrettoPoint::double_and_compress_batch(&shared);
    shared.zeroize();
    Ok(msg
        .chunks_exact(32)
        .zip(comp.chunks_exact(2))
        .enumerate()
        .map(|(i, (c, k))| {
            let mut bb = [0u8; 32];
            bb.copy_from_slice(c);
            [
                key(sid, i, &a_bytes, &bb, &k[0]),
                key(sid, i, &a_bytes, &bb, &k[1]),
            ]
        })
        .collect())
}

/// The receiver's side: the key of each chosen message.
pub fn receive<C: Channel, R: RngCore + CryptoRng>(
    ch: &mut C,
    rng: &mut R,
    sid: &[u8],
    choices: &[bool],
) -> Result<Vec<Block>, MpcError> {
    let n = choices.len();
    if n == 0 || n > MAX_INSTANCES {
        return Err(MpcError::Protocol(format!(
            "{n} base OTs (1 to {MAX_INSTANCES})"
        )));
    }
    let msg = ch.recv()?;
    let big_a = point(&msg, "the sender's point")?;
    let mut a_bytes = [0u8; 32];
    a_bytes.copy_from_slice(&msg);
    // B_i = b_i·G (+ A) is sent as the encoding of 2·X_i with X_i = (b_i/2)·G (+ A/2): all
    // the encodings come out of one batch with one field inversion.
    let half = Scalar::from(2u8).invert();
    let a_half = half * big_a;
    let mut bs = Vec::with_capacity(n);
    let mut xs = Vec::with_capacity(n);
    for &c in choices {
        let b = scalar(rng);
        let base = &(b * half) * RISTRETTO_BASEPOINT_TABLE;
        // Both branches computed; the choice selects without a branch on the secret.
        xs.push(RistrettoPoint::conditional_select(
            &base,
            &(base + a_half),
            subtle::Choice::from(u8::from(c)),
        ));
        bs.push(b);
    }
    let out_msg: Vec<u8> = RistrettoPoint::double_and_compress_batch(&xs)
        .iter()
        .flat_map(|p| p.to_bytes())
        .collect();
    xs.zeroize();
    ch.send(out_msg.clone())?;
    // b·A for every instance from one table of A (fixed-base multiplication).
    let table = RistrettoBasepointTable::create(&big_a);
    let mut shared: Vec<RistrettoPoint> = bs.iter().map(|b| b * &table).collect();
    bs.iter_mut().for_each(|b| b.zeroize());
    let comp = RistrettoPoint::double_and_compress_batch(&shared);
    shared.zeroize();
    Ok(comp
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let mut bb = [0u8; 32];
            bb.copy_from_slice(&out_msg[32 * i..32 * i + 32]);
            key(sid, i, &a_bytes, &bb, k)
        })
        .collect())
}

use subtle::ConditionallySelectable;
