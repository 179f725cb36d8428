//! The moduli of garbled wires and the size of a label over each.
//!
//! A wire that carries a global offset Δ_q (every wire of the arithmetic garbling) must have a
//! **prime** modulus. Over a composite q = a·b, the multiple a·Δ_q has digits in the small set
//! {0, a, 2a, …} only, so an evaluator can enumerate it, decrypt the other rows of a projection
//! table and recover Δ (DESIGN §2.1 "known break"). [`Modulus::new`] therefore refuses composite
//! moduli with [`GarbleError::CompositeModulus`]; there is no opt-out in this crate.

use crate::GarbleError;
use crate::block::{BlockParams, block_params};

/// The largest supported modulus: digits are stored as `u8`, and 251 is the largest prime below 256.
pub const MAX_MODULUS: u8 = 251;

/// The security floor of an offset Δ_q in bits: an evaluator that guesses Δ faces at least
/// 2^120 candidates on every wire of a garbling (DESIGN §2.1).
pub const MIN_DELTA_BITS: f64 = 120.0;

/// The largest number of digits a label can have (q = 2: one bit per digit, 128 of them).
pub const MAX_DIGITS: usize = 128;

/// A prime modulus q ≤ [`MAX_MODULUS`] together with the shape of a label over it.
///
/// A label mod q has `n = ⌊128 / log2 q⌋` digits, computed exactly as the largest n with
/// q^n ≤ 2^128, so that every label packs into one 128-bit block (see
/// [`crate::label::Label::to_block`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Modulus {
    q: u8,
    n: u8,
    /// q^n and ⌈2^256 / q^n⌉, for arithmetic on compressed labels ([`crate::block`]).
    block: BlockParams,
}

impl Modulus {
    /// A prime modulus. Errors on 0, 1, values above [`MAX_MODULUS`] and composite numbers.
    pub fn new(q: u64) -> Result<Self, GarbleError> {
        if !(2..=u64::from(MAX_MODULUS)).contains(&q) {
            return Err(GarbleError::UnsupportedModulus(q));
        }
        if let Some(factor) = smallest_factor(q) {
            return Err(GarbleError::CompositeModulus { q, factor });
        }
        let q8 = u8::try_from(q).map_err(|_| GarbleError::UnsupportedModulus(q))?;
        let n = digits_for(q);
        Ok(Self {
            q: q8,
            n,
            block: block_params(q),
        })
    }

    /// The first `k` **full-strength** primes as moduli, ascending: the primes q ≤ 251 whose
    /// offsets Δ_q carry at least [`MIN_DELTA_BITS`] bits ([`Modulus::full_strength`]). These
    /// are the CRT bases (2, 3, 5, …, 29 and then 47, 53, 67, 83, 103, 137: the primes 31, 37,
    /// 41, 43, 59, 61, 71, … are skipped, since ⌊128 / log2 q⌋ digits leave them 114–119.8 bits);
    /// k = 7 gives 2·3·…·17 = 510,510.
    pub fn first_primes(k: usize) -> Result<Vec<Self>, GarbleError> {
        let primes: Vec<Self> = (2..=u64::from(MAX_MODULUS))
            .filter_map(|q| Self::new(q).ok())
            .filter(|m| m.full_strength())
            .take(k)
            .collect();
        if primes.len() < k {
            return Err(GarbleError::TooManyPrimes {
                requested: k,
                available: primes.len(),
            });
        }
        Ok(primes)
    }

    /// The modulus q.
    pub fn q(self) -> u8 {
        self.q
    }

    /// Digits per label: ⌊128 / log2 q⌋.
    pub fn digits(self) -> usize {
        usize::from(self.n)
    }

    /// The constants of block arithmetic mod q^n (all zero for q = 2).
    pub(crate) fn block_params(self) -> BlockParams {
        self.block
    }

    /// Whether `block` is the compressed form of some label mod q (always, for q = 2).
    pub fn holds_block(self, block: u128) -> bool {
        self.q == 2 || block < self.block.pow
    }

    /// `x mod q` as a digit.
    pub fn reduce(self, x: u64) -> u8 {
        // The remainder is < q ≤ 251, so the narrowing is lossless.
        (x % u64::from(self.q)) as u8
    }

    /// Entropy of a global offset Δ_q in bits: its n − 1 non-colour digits are uniform.
    pub fn delta_entropy_bits(self) -> f64 {
        (f64::from(self.n) - 1.0) * f64::from(self.q).log2()
    }

    /// Whether an offset mod q carries at least [`MIN_DELTA_BITS`] bits. Every wire the crate's
    /// gadgets and network circuits create has a full-strength modulus (tested); other primes are
    /// accepted by [`Modulus::new`] for experiments only.
    pub fn full_strength(self) -> bool {
        self.delta_entropy_bits() >= MIN_DELTA_BITS
    }
}

impl std::fmt::Display for Modulus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.q)
    }
}

/// The smallest proper factor of `q`, or `None` when q is prime.
fn smallest_factor(q: u64) -> Option<u64> {
    (2..)
        .take_while(|d| d * d <= q)
        .find(|&d| q.is_multiple_of(d))
}

/// The largest n with q^n ≤ 2^128 (exact integer arithmetic, no floating point).
pub(crate) const fn digits_for(q: u64) -> u8 {
    if q == 2 {
        return 128;
    }
    // For q > 2 prime, q^n is never 2^128, so q^n ≤ 2^128 ⇔ q^n fits a u128.
    let mut pow: u128 = 1;
    let mut n = 0u8;
    while let Some(next) = pow.checked_mul(q as u128) {
        pow = next;
        n += 1;
    }
    n
}

/// Helpers shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Modulus;

    /// The prime modulus q (panics on a composite: tests only).
    pub(crate) fn m(q: u64) -> Modulus {
        Modulus::new(q).expect("prime")
    }

    /// Every odd prime the crate accepts (3 ..= 251).
    pub(crate) fn odd_primes() -> Vec<u64> {
        (3..=251u64).filter(|&q| Modulus::new(q).is_ok()).collect()
    }

    /// A **composite** modulus, which [`Modulus::new`] refuses: only for the test that runs the
    /// zero-divisor attack against this crate's own gate code.
    pub(crate) fn composite_for_attack_test(q: u8) -> Modulus {
        assert!(
            super::smallest_factor(u64::from(q)).is_some(),
            "{q} is not composite"
        );
        Modulus {
            q,
            n: super::digits_for(u64::from(q)),
            block: super::block_params(u64::from(q)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_per_label_match_the_design() {
        let d = |q| Modulus::new(q).expect("prime").digits();
        assert_eq!(d(2), 128);
        assert_eq!(d(3), 80);
        assert_eq!(d(17), 31);
        // Cross-check every supported prime against the floating-point formula.
        for q in 2..=u64::from(MAX_MODULUS) {
            if let Ok(m) = Modulus::new(q) {
                let expect = (128.0 / (q as f64).log2()).floor() as usize;
                assert_eq!(m.digits(), expect, "q = {q}");
                assert!(m.digits() <= MAX_DIGITS);
            }
        }
    }

    #[test]
    fn composite_and_out_of_range_moduli_are_rejected() {
        for (q, factor) in [(4, 2), (9, 3), (86, 2), (98, 2), (76, 2), (221, 13)] {
            match Modulus::new(q) {
                Err(GarbleError::CompositeModulus { q: got, factor: f }) => {
                    assert_eq!((got, f), (q, factor));
                }
                other => panic!("q = {q}: expected a composite error, got {other:?}"),
            }
        }
        for q in [0, 1, 256, 257, u64::MAX] {
            assert!(matches!(
                Modulus::new(q),
                Err(GarbleError::UnsupportedModulus(_))
            ));
        }
    }

    #[test]
    fn first_primes_form_the_crt_bases() {
        let qs: Vec<u8> = Modulus::first_primes(9)
            .expect("enough primes")
            .iter()
            .map(|m| m.q())
            .collect();
        assert_eq!(qs, [2, 3, 5, 7, 11, 13, 17, 19, 23]);
        let m7: u64 = qs[..7].iter().map(|&q| u64::from(q)).product();
        assert_eq!(m7, 510_510);
        let all: Vec<u8> = Modulus::first_primes(16)
            .expect("enough primes")
            .iter()
            .map(|m| m.q())
            .collect();
        assert_eq!(
            all,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 47, 53, 67, 83, 103, 137]
        );
        assert!(matches!(
            Modulus::first_primes(17),
            Err(GarbleError::TooManyPrimes { .. })
        ));
    }

    #[test]
    fn offsets_of_the_crt_primes_carry_at_least_122_bits() {
        for m in Modulus::first_primes(9).expect("primes") {
            assert!(m.delta_entropy_bits() >= 122.0, "q = {m}");
        }
    }
}
