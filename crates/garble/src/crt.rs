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
        Ok(self
            .moduli
            .iter()
            .map(|m| {
                let p = i64::from(m.q());
                // rem_euclid is in 0..p ≤ 251.
                x.rem_euclid(p) as u8
            })
            .collect())
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
        let m = u128::from(self.product);
        let mut acc: u128 = 0;
        for ((&r, modulus), &c) in residues.iter().zip(&self.moduli).zip(&self.coefficients) {
            if r >= modulus.q() {
                return Err(GarbleError::DigitOutOfRange {
                    q: modulus.q(),
                    digit: r,
                });
            }
            // r · c < 2^8 · 2^63; acc < M: no overflow.
            acc = (acc + u128::from(r) * u128::from(c)) % m;
        }
        let u = u64::try_from(acc).map_err(|_| GarbleError::Internal("CRT value overflow"))?;
        let half = self.product / 2;
        // u < M < 2^63, so both branches fit an i64.
        Ok(if u >= half {
            u as i64 - self.product as i64
        } else {
            u as i64
        })
    }
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
