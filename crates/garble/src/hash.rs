//! The tweakable correlation-robust hash H(label, tweak) → label mod q, on fixed-key AES.
//!
//! # Construction
//!
//! Let π be AES-128 under a key that is **public** and fixed for one garbling (the garbler draws
//! it from its seeded CSPRNG and sends it with the garbled material; see
//! [`crate::gate::Garbler::hash_key`]). For an input label L mod p and a tweak τ = (gate, row):
//!
//! 1. x = the compressed block of L (Σ dᵢ·pⁱ, 16 little-endian bytes; injective).
//! 2. y = π(x).
//! 3. For j = 0..b: hⱼ = π(y ⊕ T(τ, j)) ⊕ y, where the 128-bit tweak block T(τ, j) is
//!    `gate` (8 bytes LE) ‖ `row` (4 bytes LE) ‖ j ‖ p ‖ q ‖ 0x00.
//!    Each hⱼ is the TCCR hash of Guo, Katz, Wang and Yu (S&P 2020), π(π(x) ⊕ i) ⊕ π(x), with
//!    tweak i = T(τ, j); the b output blocks share the one evaluation of π(x).
//! 4. The output: for q = 2, b = 1 and the output is h₀ itself (digit i is bit i; exactly
//!    uniform). For odd q, b = 2: with N = h₀ + 2^128·h₁, the output is the **pad**
//!    I = ⌊N·q^n / 2^256⌋ ∈ [0, q^n) (`block::pad`), i.e. the label mod q whose
//!    compressed block is I. If N is uniform, the statistical distance of I from uniform on
//!    [0, q^n) is below q^n / 2^256 ≤ 2^−128.
//!
//! Projection tables use the output as an element of Z_{q^n} (a block) and never as digits (see
//! [`crate::gate`]); [`Hasher::hash`] unpacks it into a [`Label`] for callers that want one.
//!
//! Cost: 1 + b AES blocks per call (2 for q = 2, 3 otherwise). The batched core
//! (`Hasher::hash_raw`) encrypts the π(x) of 64 calls in one AES pass and their π(y ⊕ T) in
//! another, on stack buffers, so AES-NI pipelines many blocks and nothing is allocated. The pad
//! is one 256 × 128-bit product.
//!
//! # Security assumption
//!
//! GKWY20 prove the TCCR property in the ideal-permutation model for XOR correlations x ⊕ Δ. Here
//! the hidden correlation is arithmetic — the inputs are compressions of A + k·Δ_p mod p — so this
//! crate *assumes* the same construction is correlation robust for that family, as arithmetic
//! garbling (BMR16) assumes of its hash. The argument it rests on, that the adversary cannot
//! predict x (hence π(x)) for the labels it does not hold, holds with min-entropy
//! (n − 1)·log2 p ≥ 122 bits for every prime p ≤ 23 (Δ_p's n − 1 non-colour digits are uniform and
//! k ≠ 0 is invertible mod a prime). Every (gate, row) pair gets its own tweak, so no two table
//! rows in one garbling share a pad even when one label feeds several gates.

use crate::cost::GarbleCost;
use crate::label::Label;
use crate::modulus::Modulus;
use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use zeroize::Zeroize;

type Block = aes::Block;

/// The tweak of one hash call: the gate's number in the garbling and the table row (the input
/// label's colour). The garbler must never use one tweak twice in a garbling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tweak {
    /// The gate's number, unique within a garbling.
    pub gate: u64,
    /// The row: the colour digit of the input label.
    pub row: u32,
}

impl Tweak {
    /// The 128-bit tweak block T(τ, 0) for input modulus p and output modulus q; T(τ, j) is this
    /// block with j in bits 96..104.
    pub(crate) fn block(self, p: Modulus, q: Modulus) -> u128 {
        u128::from(self.gate)
            | (u128::from(self.row) << 64)
            | (u128::from(p.q()) << 104)
            | (u128::from(q.q()) << 112)
    }
}

/// AES blocks of hash output per label mod q: enough for an unbiased (q = 2) or 2^−128-close
/// (odd q) expansion to n digits.
pub fn output_blocks(q: Modulus) -> usize {
    if q.q() == 2 { 1 } else { 2 }
}

/// Hash calls per AES pass of [`Hasher::hash_raw`]: enough to keep the AES pipeline full, small
/// enough for the stack.
const AES_BATCH: usize = 64;

/// The AES buffers of [`Hasher::hash_raw_with`] (π(x) and π(y ⊕ T) of one batch): they hold
/// values derived from labels, so they are zeroized when dropped.
pub(crate) struct HashScratch {
    ys: [Block; AES_BATCH],
    zs: [Block; 2 * AES_BATCH],
}

impl HashScratch {
    pub(crate) fn new() -> Self {
        Self {
            ys: [Block::default(); AES_BATCH],
            zs: [Block::default(); 2 * AES_BATCH],
        }
    }
}

impl Drop for HashScratch {
    fn drop(&mut self) {
        for block in self.ys.iter_mut().chain(self.zs.iter_mut()) {
            block.0.zeroize();
        }
    }
}

/// The tweakable hash of one garbling: fixed-key AES-128 under a public key.
pub struct Hasher {
    aes: Aes128,
    key: [u8; 16],
    /// Test-only record of every (input modulus, input block, tweak) hashed.
    #[cfg(test)]
    pub(crate) log: std::sync::Mutex<Vec<(u8, u128, Tweak)>>,
}

impl Hasher {
    /// A hasher under the public AES key `key`.
    pub fn new(key: [u8; 16]) -> Self {
        Self {
            aes: Aes128::new(&Array::from(key)),
            key,
            #[cfg(test)]
            log: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The public AES key.
    pub fn key(&self) -> [u8; 16] {
        self.key
    }

    /// H(label, tweak) as a label mod `out` (one call; see [`Hasher::hash_batch`] for many).
    pub fn hash(&self, label: &Label, tweak: Tweak, out: Modulus, cost: &mut GarbleCost) -> Label {
        let mut h = [[0u128; 2]];
        let item = [(label.to_block(), tweak.block(label.modulus(), out))];
        self.hash_raw(&item, out, &mut h, cost);
        let [h] = h;
        expand(out, h)
    }

    /// H(label, tweak) mod `out` for every pair, in order, with batched AES calls.
    pub fn hash_batch(
        &self,
        inputs: &[(&Label, Tweak)],
        out: Modulus,
        cost: &mut GarbleCost,
    ) -> Vec<Label> {
        let items: Vec<(u128, u128)> = inputs
            .iter()
            .map(|(label, tweak)| (label.to_block(), tweak.block(label.modulus(), out)))
            .collect();
        let mut hs = vec![[0u128; 2]; items.len()];
        self.hash_raw(&items, out, &mut hs, cost);
        let labels = hs.iter().map(|&h| expand(out, h)).collect();
        hs.zeroize();
        labels
    }

    /// The hash core before expansion: for every item (x, T) — a compressed input label and its
    /// tweak block from [`Tweak::block`] — writes (h₀, h₁) with y = π(x), hⱼ = π(y ⊕ T ⊕ j·2^96) ⊕ y
    /// to `dst` (h₁ is zero when `out` is 2). AES runs over [`AES_BATCH`] items at a time, on the
    /// stack; nothing is allocated. Items beyond `dst.len()` are not hashed.
    pub(crate) fn hash_raw(
        &self,
        items: &[(u128, u128)],
        out: Modulus,
        dst: &mut [[u128; 2]],
        cost: &mut GarbleCost,
    ) {
        let mut scratch = HashScratch::new();
        self.hash_raw_with(&mut scratch, items, out, dst, cost);
    }

    /// [`Hasher::hash_raw`] on the caller's AES buffers: batch loops keep one [`HashScratch`] for
    /// many calls, so its zeroization (on drop) is paid once, not per call.
    pub(crate) fn hash_raw_with(
        &self,
        scratch: &mut HashScratch,
        items: &[(u128, u128)],
        out: Modulus,
        dst: &mut [[u128; 2]],
        cost: &mut GarbleCost,
    ) {
        if output_blocks(out) == 1 {
            self.hash_blocks::<1>(scratch, items, dst, cost);
        } else {
            self.hash_blocks::<2>(scratch, items, dst, cost);
        }
    }

    /// [`Hasher::hash_raw_with`] with B output blocks per hash, a constant so that the loops
    /// around the AES passes unroll.
    #[inline(always)]
    fn hash_blocks<const B: usize>(
        &self,
        scratch: &mut HashScratch,
        items: &[(u128, u128)],
        dst: &mut [[u128; 2]],
        cost: &mut GarbleCost,
    ) {
        let HashScratch { ys, zs } = scratch;
        for (chunk, dst) in items.chunks(AES_BATCH).zip(dst.chunks_mut(AES_BATCH)) {
            let m = chunk.len().min(dst.len());
            for (y, (x, _)) in ys.iter_mut().zip(chunk) {
                *y = Array::from(x.to_le_bytes());
            }
            self.aes.encrypt_blocks(&mut ys[..m]);
            for (z, (y, (_, t))) in zs.chunks_exact_mut(B).zip(ys.iter().zip(chunk)) {
                let y = u128::from_le_bytes(y.0);
                for (j, zj) in z.iter_mut().enumerate() {
                    *zj = Array::from((y ^ t ^ ((j as u128) << 96)).to_le_bytes());
                }
            }
            self.aes.encrypt_blocks(&mut zs[..m * B]);
            for (h, (y, z)) in dst.iter_mut().zip(ys.iter().zip(zs.chunks_exact(B))) {
                let y = u128::from_le_bytes(y.0);
                *h = [0; 2];
                for (hj, zj) in h.iter_mut().zip(z) {
                    *hj = u128::from_le_bytes(zj.0) ^ y;
                }
            }
            self.record(&chunk[..m]);
            cost.hash_calls += m as u64;
            cost.aes_blocks += m as u64 * (1 + B as u64);
        }
    }

    /// Test builds record every hashed (input modulus, input block, tweak), read back from the
    /// tweak block; others do nothing.
    #[cfg_attr(not(test), allow(unused_variables))]
    fn record(&self, items: &[(u128, u128)]) {
        #[cfg(test)]
        if let Ok(mut log) = self.log.lock() {
            log.extend(items.iter().map(|&(x, t)| {
                let tweak = Tweak {
                    gate: t as u64,
                    row: (t >> 64) as u32,
                };
                ((t >> 104) as u8, x, tweak)
            }));
        }
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The hash output (h₀, h₁) as a label mod q (step 4 of the construction).
fn expand(out: Modulus, h: [u128; 2]) -> Label {
    let mut label = Label::zero(out);
    expand_into(out, h, label.digits_mut());
    label
}

/// For every byte b: the u64 whose byte i (little-endian) is bit i of b.
static BIT_SPREAD: [u64; 256] = spread_table();

const fn spread_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = 0u64;
        let mut i = 0;
        while i < 8 {
            v |= (((b >> i) & 1) as u64) << (8 * i);
            i += 1;
        }
        table[b] = v;
        b += 1;
    }
    table
}

/// The bits of `x` as digits mod 2: bit i to `dst[i]` (for the first `dst.len()` ≤ 128 bits).
pub(crate) fn spread_bits(x: u128, dst: &mut [u8]) {
    // Byte j of x gives digits 8j..8j+8, bit i of the byte as digit 8j + i.
    let bytes = x.to_le_bytes();
    let full = dst.len() / 8;
    let mut chunks = dst.chunks_exact_mut(8);
    for (d, &byte) in (&mut chunks).zip(&bytes) {
        d.copy_from_slice(&BIT_SPREAD[usize::from(byte)].to_le_bytes());
    }
    let tail = chunks.into_remainder();
    if let Some(&byte) = bytes.get(full) {
        let spread = BIT_SPREAD[usize::from(byte)].to_le_bytes();
        for (di, &si) in tail.iter_mut().zip(&spread) {
            *di = si;
        }
    }
}

/// Step 4 of the construction as digits: the n digits mod `out` of the output for hash output
/// (h₀, h₁), written to the first n bytes of `dst`.
pub(crate) fn expand_into(out: Modulus, h: [u128; 2], dst: &mut [u8]) {
    if out.q() == 2 {
        spread_bits(h[0], dst);
    } else {
        crate::pack::unpack_into(out, crate::block::pad_of(out, h), dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use crate::modulus::testing::m;

    #[test]
    fn aes_matches_the_fips_197_vector() {
        // FIPS-197 appendix C.1: key 00 01 … 0f, plaintext 00 11 22 … ff.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let pt: [u8; 16] = std::array::from_fn(|i| (i as u8) * 0x11);
        let expect = [
            0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
            0xc5, 0x5a,
        ];
        let h = Hasher::new(key);
        let mut block = Array::from(pt);
        h.aes.encrypt_block(&mut block);
        assert_eq!(block.0, expect);
    }

    #[test]
    fn batch_equals_single_and_is_deterministic() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let h = Hasher::new([3; 16]);
        let mut cost = GarbleCost::default();
        for (p, q) in [(2, 2), (3, 17), (23, 2), (5, 251), (2, 23)] {
            let labels: Vec<Label> = (0..37).map(|_| Label::random(m(p), &mut rng)).collect();
            let inputs: Vec<(&Label, Tweak)> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    (
                        l,
                        Tweak {
                            gate: i as u64,
                            row: 0,
                        },
                    )
                })
                .collect();
            let batch = h.hash_batch(&inputs, m(q), &mut cost);
            assert_eq!(batch.len(), inputs.len());
            for ((l, t), out) in inputs.iter().zip(&batch) {
                let one = h.hash(l, *t, m(q), &mut cost);
                assert_eq!(&one, out);
                assert_eq!(out.modulus(), m(q));
                assert!(out.digits().iter().all(|&d| d < m(q).q()));
                // Round trip through the compressed form checks the unused digits are zero.
                assert_eq!(
                    &Label::from_block(m(q), out.to_block()).expect("valid"),
                    out
                );
            }
        }
        assert_eq!(cost.hash_calls, 2 * 5 * 37);
    }

    #[test]
    fn every_tweak_component_and_the_key_change_the_output() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let h = Hasher::new([5; 16]);
        let mut c = GarbleCost::default();
        let l = Label::random(m(3), &mut rng);
        let t = Tweak { gate: 9, row: 1 };
        let base = h.hash(&l, t, m(5), &mut c);
        let others = [
            h.hash(&l, Tweak { gate: 10, row: 1 }, m(5), &mut c),
            h.hash(&l, Tweak { gate: 9, row: 2 }, m(5), &mut c),
            Hasher::new([6; 16]).hash(&l, t, m(5), &mut c),
            h.hash(
                &l.try_add(&Label::random(m(3), &mut rng)).expect("same"),
                t,
                m(5),
                &mut c,
            ),
        ];
        for o in others {
            assert_ne!(o, base);
        }
        // The output modulus is bound into the tweak: mod-7 output is not mod-5 output re-read.
        let b7 = h.hash(&l, t, m(7), &mut c);
        assert_eq!(b7.modulus(), m(7));
    }

    #[test]
    fn output_digits_look_uniform() {
        // 80,000 digits mod 3 and 31,000 mod 17: each count within 5σ of its mean.
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let h = Hasher::new([7; 16]);
        let mut c = GarbleCost::default();
        for q in [3u64, 17, 2] {
            let labels: Vec<Label> = (0..1000).map(|_| Label::random(m(5), &mut rng)).collect();
            let inputs: Vec<(&Label, Tweak)> = labels
                .iter()
                .map(|l| (l, Tweak { gate: 0, row: 0 }))
                .collect();
            let mut counts = vec![0f64; q as usize];
            for out in h.hash_batch(&inputs, m(q), &mut c) {
                for &d in out.digits() {
                    counts[usize::from(d)] += 1.0;
                }
            }
            let total: f64 = counts.iter().sum();
            let p = 1.0 / q as f64;
            let sigma = (total * p * (1.0 - p)).sqrt();
            for (v, &k) in counts.iter().enumerate() {
                assert!(
                    (k - total * p).abs() < 5.0 * sigma,
                    "q = {q}, digit {v}: {k} of {total}"
                );
            }
        }
    }

    /// The output mod odd q equals its definition computed the slow way: the base-q digits of
    /// ⌊N·q^n / 2^256⌋, taken one at a time from the 256-bit fraction (most significant first),
    /// as the digits of a label (least significant first).
    #[test]
    fn odd_expansion_matches_its_definition() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        for q in [3u64, 5, 7, 11, 13, 17, 19, 23, 29, 41, 251] {
            let m = m(q);
            for _ in 0..40 {
                let h: [u128; 2] = [rng.random(), rng.random()];
                // Most significant digit first: multiply the fraction by q, keep the carry.
                let mut f = [
                    h[0] as u32,
                    (h[0] >> 32) as u32,
                    (h[0] >> 64) as u32,
                    (h[0] >> 96) as u32,
                    h[1] as u32,
                    (h[1] >> 32) as u32,
                    (h[1] >> 64) as u32,
                    (h[1] >> 96) as u32,
                ];
                let msd_first: Vec<u8> = (0..m.digits())
                    .map(|_| {
                        let mut carry = 0u64;
                        for w in f.iter_mut() {
                            let t = u64::from(*w) * q + carry;
                            *w = t as u32;
                            carry = t >> 32;
                        }
                        carry as u8
                    })
                    .collect();
                let want: Vec<u8> = msd_first.iter().rev().copied().collect();
                let mut got = [0u8; 128];
                expand_into(m, h, &mut got);
                assert_eq!(&got[..m.digits()], &want[..], "q = {q}");
                assert!(got[m.digits()..].iter().all(|&d| d == 0));
            }
        }
    }

    #[test]
    fn aes_block_counts() {
        let h = Hasher::new([0; 16]);
        let l = Label::zero(m(2));
        let mut c = GarbleCost::default();
        h.hash(&l, Tweak { gate: 0, row: 0 }, m(2), &mut c);
        assert_eq!(c.aes_blocks, 2);
        h.hash(&l, Tweak { gate: 0, row: 0 }, m(3), &mut c);
        assert_eq!(c.aes_blocks, 5);
    }
}
