//! The tweakable circular correlation-robust hash on fixed-key AES.
//!
//! `H(x, i) = π(σ(x) ⊕ i) ⊕ σ(x)` with π AES-128 under a public fixed key and
//! `σ(x_hi ‖ x_lo) = (x_hi ⊕ x_lo) ‖ x_hi` a linear orthomorphism: the construction of Guo, Katz,
//! Wang and Yu (S&P 2020), proved tweakable *circular* correlation robust (TCCR) in the
//! ideal-permutation model — the property free-XOR with half-gates needs, since the garbler's
//! global offset Δ both correlates the labels and is itself hidden in them.
//!
//! # Concrete security
//!
//! GKWY bound an adversary making `q` queries to π and seeing `μ` hash outputs under one Δ by
//! roughly `(q·μ + μ²)/2^127` (half-gates: `μ = 2` outputs per AND for the evaluator). With at
//! most 2^40 AND gates garbled under one key and Δ ([`MAX_GATES_PER_KEY`]) and an adversary of
//! 2^64 AES evaluations, the advantage stays below 2^−22; the garbler draws a fresh Δ and a
//! fresh public key for every circuit it garbles, so the bound is per circuit.

use crate::block::Block;
use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};

/// Hashes per AES pass of [`Tccr::hash_batch`].
pub const BATCH: usize = 128;

/// The most AND gates one garbler garbles under one key and Δ before it must re-key.
pub const MAX_GATES_PER_KEY: u64 = 1 << 40;

/// σ(x_hi ‖ x_lo) = (x_hi ⊕ x_lo) ‖ x_hi.
#[inline(always)]
pub fn sigma(x: Block) -> Block {
    let hi = x.0 >> 64;
    let lo = x.0 & u128::from(u64::MAX);
    Block(((hi ^ lo) << 64) | hi)
}

/// The hash, keyed by a public AES key.
#[derive(Clone)]
pub struct Tccr {
    aes: Aes128,
    fixed: crate::aesni::FixedAes,
}

impl std::fmt::Debug for Tccr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tccr(..)")
    }
}

impl Tccr {
    /// The hash under public key `key`.
    pub fn new(key: [u8; 16]) -> Self {
        Self {
            aes: Aes128::new(&Array::from(key)),
            fixed: crate::aesni::FixedAes::new(key),
        }
    }

    /// `H(x, tweak)`.
    #[inline]
    pub fn hash(&self, x: Block, tweak: u128) -> Block {
        let mut out = [Block::ZERO];
        self.hash_n(&[x], &[tweak], &mut out);
        out[0]
    }

    /// `N` hashes in one AES pass (N = 2 for the evaluator's half-gates, 4 for the garbler's).
    #[inline(always)]
    pub fn hash_n<const N: usize>(
        &self,
        xs: &[Block; N],
        tweaks: &[u128; N],
        out: &mut [Block; N],
    ) {
        let s: [u128; N] = std::array::from_fn(|i| sigma(xs[i]).0);
        let mut buf: [u128; N] = std::array::from_fn(|i| s[i] ^ tweaks[i]);
        self.fixed.encrypt(&mut buf);
        for i in 0..N {
            out[i] = Block(buf[i] ^ s[i]);
        }
        #[cfg(test)]
        TWEAKS.with(|t| t.borrow_mut().extend_from_slice(tweaks));
    }

    /// `H(xs[i], tweaks[i])` for up to [`BATCH`] inputs in one AES pass (more are done in
    /// passes of `BATCH`): independent hashes fill the AES pipeline.
    pub fn hash_batch(&self, xs: &[Block], tweaks: &[u128], out: &mut [Block]) {
        let mut s = [Block::ZERO; BATCH];
        let mut buf = [aes::Block::default(); BATCH];
        for ((xs, ts), out) in xs
            .chunks(BATCH)
            .zip(tweaks.chunks(BATCH))
            .zip(out.chunks_mut(BATCH))
        {
            let n = xs.len().min(ts.len()).min(out.len());
            for i in 0..n {
                s[i] = sigma(xs[i]);
                buf[i] = Array::from((s[i].0 ^ ts[i]).to_le_bytes());
            }
            self.aes.encrypt_blocks(&mut buf[..n]);
            for i in 0..n {
                out[i] = Block(u128::from_le_bytes(buf[i].0) ^ s[i].0);
            }
            #[cfg(test)]
            TWEAKS.with(|t| t.borrow_mut().extend_from_slice(&ts[..n]));
        }
    }

    /// π itself on a batch of blocks (for the OT extension's hashing).
    pub fn permute(&self, blocks: &mut [Block]) {
        let mut buf: Vec<aes::Block> = blocks.iter().map(|b| Array::from(b.to_bytes())).collect();
        self.aes.encrypt_blocks(&mut buf);
        for (b, e) in blocks.iter_mut().zip(buf) {
            *b = Block(u128::from_le_bytes(e.0));
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Every tweak hashed on this thread (unit tests only).
    pub(crate) static TWEAKS: std::cell::RefCell<Vec<u128>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_is_an_orthomorphism_on_samples() {
        // σ and x ↦ σ(x) ⊕ x are both permutations; spot-check injectivity on structured inputs.
        let xs: Vec<Block> = (0..2000u128)
            .map(|i| Block(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
            .collect();
        let mut a: Vec<u128> = xs.iter().map(|&x| sigma(x).0).collect();
        let mut b: Vec<u128> = xs.iter().map(|&x| (sigma(x) ^ x).0).collect();
        a.sort_unstable();
        a.dedup();
        b.sort_unstable();
        b.dedup();
        assert_eq!((a.len(), b.len()), (xs.len(), xs.len()));
    }

    #[test]
    fn tweaks_separate_outputs() {
        let h = Tccr::new([7; 16]);
        let x = Block(12345);
        assert_ne!(h.hash(x, 0), h.hash(x, 1));
        assert_ne!(h.hash(x, 0), h.hash(Block(12344), 0));
    }
}
