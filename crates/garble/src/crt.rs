//! CRT encoding of signed integers over the first k full-strength primes.
//!
//! With the basis p₁ = 2, p₂ = 3, …, p_k ([`Modulus::first_primes`]: the primes in order, skipping
//! those whose offsets would carry fewer than 120 bits, so 29 is followed by 47) and
//! M = p₁·…·p_k, a signed integer x with
//! −M/2 ≤ x < M/2 is carried as its k residues x mod pᵢ (each in `0..pᵢ`, i.e. the residues of
//! the unsigned representative x mod M). M is even because 2 is in the basis, so M/2 is exact and
//! x < 0 exactly when x mod M ≥ M/2 — the fact the sign gadget ([`crate::gadget::sign`]) relies
//! on. These are plain integers; garbling them is the gadgets' business.

use crate::GarbleError;
use crate::modulus::Modulus;

/// The most primes a basis may have: 13, the basis 2, 3, …, 29, 47, 53, 67 (M ≈ 1.08·10^15, about
/// 2^50). The next basis prime, 83, has no full-strength prime P ≥ 2·83 for the bit × residue
/// product of ReLU ([`crate::gadget::mul_bit`]), so the 120-bit floor on every wire caps the
/// range here.
pub const MAX_CRT_PRIMES: usize = 13;

/// A CRT basis: the first k primes, their product M and the reconstruction coefficients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrtBasis {
    moduli: Vec<Modulus>,
    product: u64,
    /// For each i: (M / pᵢ) · ((M / pᵢ)⁻¹ mod pᵢ) mod M.
    coefficients: Vec<u64>,
    /// ⌊(2^64 − 1)/M⌋, for the constant-time reduction mod M.
    reciprocal: u64,
}

impl CrtBasis {
    /// The basis of the first `k` primes, 1 ≤ k ≤ [`MAX_CRT_PRIMES`].
    pub fn first_primes(k: usize) -> Result<Self, GarbleError> {
        if k > MAX_CRT_PRIMES {
            return Err(GarbleError::TooManyPrimes {
                requested: k,
                available: MAX_CRT_PRIMES,
            });
        }
        if k == 0 {
            return Err(GarbleError::ResidueCount {
                expected: 1,
                got: 0,
            });
        }
        let moduli = Modulus::first_primes(k)?;
        let product: u64 = moduli.iter().map(|m| u64::from(m.q())).product();
        let coefficients = moduli
            .iter()
            .map(|m| {
                let p = u64::from(m.q());
                let rest = product / p;
                let inv = inverse_mod_prime(rest % p, p)
                    .ok_or(GarbleError::Internal("CRT cofactor is not invertible"))?;
                // rest · inv < M · p < 2^63 · 2^8 fits a u128.
                let c = (u128::from(rest) * u128::from(inv)) % u128::from(product);
                u64::try_from(c).map_err(|_| GarbleError::Internal("CRT coefficient overflow"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            moduli,
            product,
            coefficients,
            reciprocal: u64::MAX / product,
        })
    }

    /// The moduli, in order 2, 3, 5, ….
    pub fn moduli(&self) -> &[Modulus] {
        &self.moduli
    }

    /// The number of primes k.
    pub fn len(&self) -> usize {
        self.moduli.len()
    }

    /// Always false: a basis has at least one prime.
    pub fn is_empty(&self) -> bool {
        self.moduli.is_empty()
    }

    /// M, the product of the primes.
    pub fn product(&self) -> u64 {
        self.product
    }

    /// The smallest representable value, −M/2.
    pub fn min_value(&self) -> i64 {
        // M < 2^63, so M/2 fits.
        -((self.product / 2) as i64)
    }

    /// The largest representable value, M/2 − 1.
    pub fn max_value(&self) -> i64 {
        (self.product / 2) as i64 - 1
    }

    /// The residues of `x`; errors unless −M/2 ≤ x < M/2.
    pub fn encode(&self, x: i64) -> Result<Vec<u8>, GarbleError> {
        if x < self.min_value() || x > self.max_value() {
            return Err(GarbleError::CrtOutOfRange {
                x,
                half: self.product / 2,
            });
        }
        // The unsigned representative u = x mod M in constant time: add M when x < 0 by a mask
        // from the sign bit, no branch. In range, 0 ≤ u < M < 2^63.
        let negative = ((x >> 63) as u64) & self.product;
        let u = (x as u64).wrapping_add(negative);
        Ok(self.moduli.iter().map(|m| ct_rem(u, m.q())).collect())
    }

    /// The signed value in [−M/2, M/2) with these residues; errors on the wrong number of
    /// residues or a residue not below its prime (safe on data from a peer).
    pub fn decode(&self, residues: &[u8]) -> Result<i64, GarbleError> {
        if residues.len() != self.moduli.len() {
            return Err(GarbleError::ResidueCount {
                expected: self.moduli.len(),
                got: residues.len(),
            });
        }
        // Which residue is out of range is about the peer's message, not a secret; the values
        // themselves are combined without a branch or a division on them.
        if let Some((&r, m)) = residues
            .iter()
            .zip(&self.moduli)
            .find(|(r, m)| **r >= m.q())
        {
            return Err(GarbleError::DigitOutOfRange { q: m.q(), digit: r });
        }
        let m = self.product;
        let mut acc: u64 = 0;
        for (&r, &c) in residues.iter().zip(&self.coefficients) {
            // r · c < 2^8 · M ≤ 2^58 and acc < M ≤ 2^50, so the sum fits; one reduction.
            acc = ct_reduce(acc + u64::from(r) * c, m, self.reciprocal);
        }
        // Signed: subtract M when acc ≥ M/2, by a mask. acc < M < 2^63 fits an i64.
        let half = m / 2;
        let upper = ((half.wrapping_sub(acc + 1) as i64) >> 63) as u64;
        Ok((acc as i64).wrapping_sub((upper & m) as i64))
    }
}

/// u mod p for a small prime p in constant time: a quotient from a precomputable reciprocal
/// (⌊2^64/p⌋, at most one short) and one masked correction — no division and no branch on u.
fn ct_rem(u: u64, p: u8) -> u8 {
    let p = u64::from(p);
    let reciprocal = u64::MAX / p;
    ct_reduce(u, p, reciprocal) as u8
}

/// a mod m for 0 < m < 2^61 and any a < 2^63, with `reciprocal` = ⌊(2^64 − 1)/m⌋, in constant time.
/// The estimate ⌊a·reciprocal/2^64⌋ is below ⌊a/m⌋ by at most 2 (the reciprocal is short by
/// less than one and so is the floor), so r < 3m and two masked subtractions finish it.
fn ct_reduce(a: u64, m: u64, reciprocal: u64) -> u64 {
    let q = ((u128::from(a) * u128::from(reciprocal)) >> 64) as u64;
    let mut r = a - q * m;
    for _ in 0..2 {
        // t = r − m; keep t when it did not go negative (r, m < 2^63, so bit 63 is the sign).
        let t = r.wrapping_sub(m);
        let keep_r = ((t as i64) >> 63) as u64;
        r = (r & keep_r) | (t & !keep_r);
    }
    r
}

/// a⁻¹ mod p for a prime p, or `None` when a ≡ 0 (Fermat: a^(p−2)).
pub fn inverse_mod_prime(a: u64, p: u64) -> Option<u64> {
    let a = a % p;
    if a == 0 || p < 2 {
        return None;
    }
    let mut result = 1u64;
    let mut base = a;
    let mut e = p - 2;
    while e > 0 {
        if e & 1 == 1 {
            result = result * base % p;
        }
        base = base * base % p;
        e >>= 1;
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn basis(k: usize) -> CrtBasis {
        CrtBasis::first_primes(k).expect("basis")
    }

    /// A basis with k ∈ {7, 8, 9} and a value in its range.
    fn basis_and_value() -> impl Strategy<Value = (usize, i64)> {
        (7usize..=9).prop_flat_map(|k| {
            let b = basis(k);
            (Just(k), b.min_value()..=b.max_value())
        })
    }

    proptest! {
        /// The constant-time reductions against `%`, over the whole range they are used on.
        #[test]
        fn constant_time_reduction_is_the_remainder(a in 0u64..(1 << 62), m in 1u64..(1 << 51), p in 2u8..=251) {
            prop_assert_eq!(ct_reduce(a, m, u64::MAX / m), a % m);
            prop_assert_eq!(u64::from(ct_rem(a, p)), a % u64::from(p));
        }

        #[test]
        fn encode_decode_round_trips((k, x) in basis_and_value()) {
            let b = basis(k);
            let r = b.encode(x).expect("in range");
            prop_assert_eq!(r.len(), k);
            for (&ri, m) in r.iter().zip(b.moduli()) {
                prop_assert_eq!(i64::from(ri), x.rem_euclid(i64::from(m.q())));
            }
            prop_assert_eq!(b.decode(&r).expect("valid"), x);
        }

        #[test]
        fn decode_encode_round_trips(k in 7usize..=9, seed: Vec<u8>) {
            let b = basis(k);
            let r: Vec<u8> = b
                .moduli()
                .iter()
                .enumerate()
                .map(|(i, m)| seed.get(i).copied().unwrap_or(0) % m.q())
                .collect();
            let x = b.decode(&r).expect("valid");
            prop_assert!(x >= b.min_value() && x <= b.max_value());
            prop_assert_eq!(b.encode(x).expect("in range"), r);
        }
    }

    /// The edges of the range and of the reductions, for every basis size.
    #[test]
    fn edges_round_trip_for_every_k() {
        for k in 1..=MAX_CRT_PRIMES {
            let b = basis(k);
            for x in [
                b.min_value(),
                b.min_value() + 1,
                -1,
                0,
                1,
                b.max_value() - 1,
                b.max_value(),
            ] {
                if x < b.min_value() || x > b.max_value() {
                    // k = 1 holds only −1 and 0.
                    continue;
                }
                let r = b.encode(x).expect("in range");
                for (d, m) in r.iter().zip(b.moduli()) {
                    assert_eq!(
                        i64::from(*d),
                        x.rem_euclid(i64::from(m.q())),
                        "k = {k}, x = {x}"
                    );
                }
                assert_eq!(b.decode(&r).expect("valid"), x, "k = {k}");
            }
        }
        for m in [1u64, 2, 3, 251, (1 << 50) - 1, 1 << 50, (1 << 61) - 1] {
            for a in [0u64, 1, m - 1, m, m + 1, 3 * m - 1, (1 << 63) - 1] {
                assert_eq!(ct_reduce(a, m, u64::MAX / m), a % m, "{a} mod {m}");
            }
        }
    }

    #[test]
    fn products_and_ranges() {
        assert_eq!(basis(7).product(), 510_510);
        assert_eq!(basis(8).product(), 9_699_690);
        assert_eq!(basis(9).product(), 223_092_870);
        let b = basis(8);
        assert_eq!(b.min_value(), -4_849_845);
        assert_eq!(b.max_value(), 4_849_844);
        for x in [b.min_value(), -1, 0, 1, b.max_value()] {
            assert_eq!(b.decode(&b.encode(x).expect("in range")).expect("ok"), x);
        }
        assert!(basis(MAX_CRT_PRIMES).product() < 1 << 63);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let b = basis(7);
        assert!(matches!(
            b.encode(255_255),
            Err(GarbleError::CrtOutOfRange { .. })
        ));
        assert!(matches!(
            b.encode(-255_256),
            Err(GarbleError::CrtOutOfRange { .. })
        ));
        assert!(b.encode(-255_255).is_ok());
        assert!(matches!(
            b.decode(&[0; 6]),
            Err(GarbleError::ResidueCount {
                expected: 7,
                got: 6
            })
        ));
        assert!(matches!(
            b.decode(&[0, 3, 0, 0, 0, 0, 0]),
            Err(GarbleError::DigitOutOfRange { q: 3, digit: 3 })
        ));
        assert!(matches!(
            CrtBasis::first_primes(16),
            Err(GarbleError::TooManyPrimes { .. })
        ));
        assert!(CrtBasis::first_primes(0).is_err());
    }

    #[test]
    fn inverses() {
        for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 251] {
            assert_eq!(inverse_mod_prime(0, p), None);
            for a in 1..p {
                let inv = inverse_mod_prime(a, p).expect("invertible");
                assert_eq!(a * inv % p, 1, "a = {a}, p = {p}");
            }
        }
    }
}
