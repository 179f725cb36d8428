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
//! 4. Expand to n = ⌊128 / log2 q⌋ digits mod q: for q = 2, b = 1 and digit i is bit i of h₀
//!    (exactly uniform). For odd q, b = 2 and the digits are the n low base-q digits of the
//!    256-bit integer N = h₀ + 2^128·h₁, i.e. of N mod q^n. If N is uniform, the statistical
//!    distance of N mod q^n from uniform is below q^n / 2^256 ≤ 2^128 / 2^256 = 2^−128.
//!
//! Cost: 1 + b AES blocks per call (2 for q = 2, 3 otherwise). [`Hasher::hash_batch`] encrypts all
//! the π(x) of a batch in one call and then all the π(y ⊕ T) in another, so the AES backend works
//! on many blocks at a time (AES-NI/VAES pipelines 8 or more).
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
use crate::label::{Label, digits_from_words, words_of};
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
    /// The 128-bit tweak block T(τ, j) for output block j, input modulus p and output modulus q.
    fn block(self, j: u8, p: Modulus, q: Modulus) -> u128 {
        u128::from(self.gate)
            | (u128::from(self.row) << 64)
            | (u128::from(j) << 96)
            | (u128::from(p.q()) << 104)
            | (u128::from(q.q()) << 112)
    }
}

/// AES blocks of hash output per label mod q: enough for an unbiased (q = 2) or 2^−128-close
/// (odd q) expansion to n digits.
pub fn output_blocks(q: Modulus) -> usize {
    if q.q() == 2 { 1 } else { 2 }
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
        let b = output_blocks(out);
        let mut y = Array::from(label.to_block().to_le_bytes());
        self.aes.encrypt_block(&mut y);
        let y = u128::from_le_bytes(y.0);
        let mut h = [0u128; 2];
        for (j, hj) in (0u8..).zip(h.iter_mut()).take(b) {
            let mut z = Array::from((y ^ tweak.block(j, label.modulus(), out)).to_le_bytes());
            self.aes.encrypt_block(&mut z);
            *hj = u128::from_le_bytes(z.0) ^ y;
        }
        self.record(&[(label.modulus(), label.to_block(), tweak)]);
        cost.hash_calls += 1;
        cost.aes_blocks += 1 + b as u64;
        expand(out, h)
    }

    /// H(label, tweak) mod `out` for every pair, in order, with batched AES calls.
    pub fn hash_batch(
        &self,
        inputs: &[(&Label, Tweak)],
        out: Modulus,
        cost: &mut GarbleCost,
    ) -> Vec<Label> {
        let items: Vec<(Modulus, u128, Tweak)> = inputs
            .iter()
            .map(|(label, tweak)| (label.modulus(), label.to_block(), *tweak))
            .collect();
        self.raw_batch(&items, out, cost)
            .into_iter()
            .map(|h| expand(out, h))
            .collect()
    }

    /// The raw output blocks (h₀, h₁) of H(label, tweak) mod `out` for labels given as compressed
    /// blocks mod `input` (h₁ is unused, zero, when q = 2): the same function as
    /// [`Hasher::hash_batch`] before expansion, with two AES calls over the whole batch.
    pub(crate) fn hash_blocks_raw(
        &self,
        input: Modulus,
        inputs: &[(u128, Tweak)],
        out: Modulus,
        cost: &mut GarbleCost,
    ) -> Vec<[u128; 2]> {
        let items: Vec<(Modulus, u128, Tweak)> =
            inputs.iter().map(|&(x, tweak)| (input, x, tweak)).collect();
        self.raw_batch(&items, out, cost)
    }

    /// The hash core over (input modulus, compressed label, tweak) items: y = π(x), then
    /// hⱼ = π(y ⊕ T(tweak, j)) ⊕ y, one AES call per round over the whole batch.
    fn raw_batch(
        &self,
        items: &[(Modulus, u128, Tweak)],
        out: Modulus,
        cost: &mut GarbleCost,
    ) -> Vec<[u128; 2]> {
        let b = output_blocks(out);
        let mut ys: Vec<Block> = items
            .iter()
            .map(|(_, x, _)| Array::from(x.to_le_bytes()))
            .collect();
        self.aes.encrypt_blocks(&mut ys);
        let mut zs: Vec<Block> = Vec::with_capacity(items.len() * b);
        for ((input, _, tweak), y) in items.iter().zip(&ys) {
            let y = u128::from_le_bytes(y.0);
            for j in (0u8..).take(b) {
                zs.push(Array::from((y ^ tweak.block(j, *input, out)).to_le_bytes()));
            }
        }
        self.aes.encrypt_blocks(&mut zs);
        self.record(items);
        let calls = items.len() as u64;
        cost.hash_calls += calls;
        cost.aes_blocks += calls * (1 + b as u64);
        ys.iter()
            .zip(zs.chunks_exact(b))
            .map(|(y, z)| {
                let y = u128::from_le_bytes(y.0);
                let mut h = [0u128; 2];
                for (hj, zj) in h.iter_mut().zip(z) {
                    *hj = u128::from_le_bytes(zj.0) ^ y;
                }
                h
            })
            .collect()
    }

    /// [`Hasher::hash_blocks_raw`] expanded digit-wise into `dst` (`out.digits()` bytes per
    /// input, in order). Errors when `dst` is not exactly `inputs.len() · out.digits()` long.
    pub(crate) fn hash_blocks_into(
        &self,
        input: Modulus,
        inputs: &[(u128, Tweak)],
        out: Modulus,
        dst: &mut [u8],
        cost: &mut GarbleCost,
    ) -> Result<(), crate::GarbleError> {
        let n = out.digits();
        if dst.len() != inputs.len() * n {
            return Err(crate::GarbleError::Internal("hash output buffer length"));
        }
        let mut hs = self.hash_blocks_raw(input, inputs, out, cost);
        for (h, d) in hs.iter().zip(dst.chunks_exact_mut(n)) {
            expand_into(out, *h, d);
        }
        hs.zeroize();
        Ok(())
    }

    /// Test builds record every hashed (input modulus, input block, tweak); others do nothing.
    #[cfg_attr(not(test), allow(unused_variables))]
    fn record(&self, items: &[(Modulus, u128, Tweak)]) {
        #[cfg(test)]
        if let Ok(mut log) = self.log.lock() {
            log.extend(items.iter().map(|&(m, x, tweak)| (m.q(), x, tweak)));
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

/// Expands the hash output blocks to a label mod q (step 4 of the construction).
fn expand(out: Modulus, h: [u128; 2]) -> Label {
    let mut label = Label::zero(out);
    let [h0, h1] = h;
    if out.q() == 2 {
        for (i, d) in label.digits_mut().iter_mut().enumerate() {
            *d = ((h0 >> i) & 1) as u8;
        }
    } else {
        let (lo, hi) = (words_of(h0), words_of(h1));
        let mut words = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
        digits_from_words(out, &mut words, label.digits_mut());
    }
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

/// [`expand`] written into a digit slice (its first `out.digits()` bytes).
fn expand_into(out: Modulus, h: [u128; 2], dst: &mut [u8]) {
    let [h0, h1] = h;
    if out.q() == 2 {
        spread_bits(h0, dst);
    } else {
        let (lo, hi) = (words_of(h0), words_of(h1));
        let mut words = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
        let mut digits = [0u8; crate::modulus::MAX_DIGITS];
        digits_from_words(out, &mut words, &mut digits);
        for (d, &e) in dst.iter_mut().zip(&digits) {
            *d = e;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn m(q: u64) -> Modulus {
        Modulus::new(q).expect("prime")
    }

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
