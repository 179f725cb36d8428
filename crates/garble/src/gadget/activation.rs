//! The exact sign of a CRT-encoded signed value, the bit × residue product, and ReLU.
//!
//! # Sign: prime-only mixed-radix conversion, 2 last (DESIGN §2.1)
//!
//! The input is the k residue wires of x over the first k CRT primes (wire i mod pᵢ, p₁ = 2), i.e.
//! the residues of u = x mod M. Write u in mixed radix with the radices in the order
//! r₁, …, r_k = 3, 5, 7, …, p_k, 2:
//!
//! ```text
//! u = a₁ + a₂·r₁ + a₃·r₁r₂ + … + a_k·(r₁⋯r_{k−1}),     0 ≤ aᵢ < rᵢ
//! ```
//!
//! The last weight is r₁⋯r_{k−1} = M/2 and a_k ∈ {0, 1}, while the lower terms sum to at most
//! M/2 − 1, so a_k = 1 ⇔ u ≥ M/2 ⇔ x < 0: **the last digit is the sign bit**.
//!
//! The digits come out one at a time. Keep one wire per radix, wⱼ = (current quotient) mod rⱼ.
//! At step i the digit is aᵢ = wᵢ; for every later radix rⱼ the quotient becomes
//! (u − aᵢ)/rᵢ, i.e. wⱼ ← (wⱼ − aᵢ)·rᵢ⁻¹ mod rⱼ. Only the aᵢ term needs a gate: one projection
//! mod rᵢ → mod rⱼ with φ(a) = −a·rᵢ⁻¹ mod rⱼ, and wⱼ·rᵢ⁻¹ + φ(aᵢ) is free. After step k − 1 the
//! mod-2 wire holds a_k. Every wire is prime; no composite modulus appears.
//!
//! Cost: Σᵢ (rᵢ − 1)(k − i) ciphertexts — 126 at k = 7, **194 at k = 8**, 284 at k = 9
//! (asserted in the tests against the cost backend and the real garbler).
//!
//! # Bit × residue: lift to a prime P ≥ 2p
//!
//! For a mod-2 wire β and a mod-p wire x, β·x mod p is computed with projections only: let P be
//! the smallest full-strength prime ≥ 2p (an offset of at least 120 bits, like every wire; 17 → 47
//! rather than 37; P ≤ 251 is required). Lift x to mod P (φ(a) = a, p − 1
//! ciphertexts) and β to mod P as p·β (1 ciphertext), add: z = x + p·β ∈ [0, 2p) exactly (no
//! wrap mod P), which determines (β, x). Then project z mod P → mod p with φ(z) = z − p for
//! z ≥ p and 0 otherwise (P − 1 ciphertexts). Total **p + P − 1** ciphertexts. A dedicated
//! mixed-modulus half gate would cost about p + 1 and is future work.
//!
//! # ReLU
//!
//! relu(x) = (1 − sign(x))·x residue by residue: 1 − s is free (s + 1 mod 2), then one bit ×
//! residue product per prime. At k = 8: 194 + 255 = 449 ciphertexts.

use super::Backend;
use crate::GarbleError;
use crate::cost::GarbleCost;
use crate::crt::{MAX_CRT_PRIMES, inverse_mod_prime};
use crate::gadget::CostBackend;
use crate::modulus::{MAX_MODULUS, Modulus};

/// Checks that `residues` are wires over the first k CRT primes ([`Modulus::first_primes`]: 2, 3, 5, … in order), 1 ≤ k ≤
/// [`MAX_CRT_PRIMES`]; returns the moduli.
pub(super) fn crt_moduli<B: Backend>(
    b: &B,
    residues: &[B::Wire],
) -> Result<Vec<Modulus>, GarbleError> {
    if residues.is_empty() || residues.len() > MAX_CRT_PRIMES {
        return Err(GarbleError::ResidueCount {
            expected: residues.len().clamp(1, MAX_CRT_PRIMES),
            got: residues.len(),
        });
    }
    let moduli = Modulus::first_primes(residues.len())?;
    for (w, m) in residues.iter().zip(&moduli) {
        let got = b.modulus_of(w);
        if got != *m {
            return Err(GarbleError::ModulusMismatch {
                expected: m.q(),
                got: got.q(),
            });
        }
    }
    Ok(moduli)
}

/// One step of prime-only mixed-radix conversion: wire `i` holds the current digit aᵢ (mod rᵢ);
/// every later wire wⱼ becomes the residue of (v − aᵢ)/rᵢ mod rⱼ, i.e. wⱼ·rᵢ⁻¹ + φ(aᵢ) with
/// φ(a) = −a·rᵢ⁻¹ mod rⱼ (one projection of rᵢ − 1 ciphertexts per later wire). Returns aᵢ.
pub(super) fn mixed_radix_step<B: Backend>(
    b: &mut B,
    wires: &mut [B::Wire],
    i: usize,
) -> Result<B::Wire, GarbleError> {
    if i >= wires.len() {
        return Err(GarbleError::Internal("mixed-radix step past the last wire"));
    }
    let (head, tail) = wires.split_at_mut(i + 1);
    let digit = head
        .last()
        .ok_or(GarbleError::Internal("empty digit slice"))?
        .clone();
    let ri = u64::from(b.modulus_of(&digit).q());
    for w in tail.iter_mut() {
        let mj = b.modulus_of(w);
        let rj = u64::from(mj.q());
        let inv =
            inverse_mod_prime(ri, rj).ok_or(GarbleError::Internal("radices are not coprime"))?;
        let phi: Vec<u16> = (0..ri)
            .map(|a| ((rj - a % rj) % rj * inv % rj) as u16)
            .collect();
        let correction = b.project(&digit, mj, &phi)?;
        b.mul_const_add_assign(w, inv, &correction)?;
    }
    Ok(digit)
}

/// The sign bit of a CRT-encoded signed value: a mod-2 wire that is 1 iff x < 0. `residues` are
/// the wires of x mod 2, 3, 5, …, p_k (in that order). See the module docs for the circuit.
pub fn sign<B: Backend>(b: &mut B, residues: &[B::Wire]) -> Result<B::Wire, GarbleError> {
    crt_moduli(b, residues)?;
    // Radix order 3, 5, …, p_k, 2.
    let mut wires: Vec<B::Wire> = residues.iter().skip(1).cloned().collect();
    let two = residues
        .first()
        .ok_or(GarbleError::Internal("no mod-2 residue"))?;
    wires.push(two.clone());

    for i in 0..wires.len().saturating_sub(1) {
        mixed_radix_step(b, &mut wires, i)?;
    }
    wires.pop().ok_or(GarbleError::Internal("no sign wire"))
}

/// The smallest full-strength prime P ≥ 2p ([`Modulus::full_strength`]: its offset carries at
/// least 120 bits, like every other wire; so 17 → 47, not 37).
fn lift_modulus(p: Modulus) -> Result<Modulus, GarbleError> {
    let start = 2 * u64::from(p.q());
    (start..=u64::from(MAX_MODULUS))
        .filter_map(|c| Modulus::new(c).ok())
        .find(|m| m.full_strength())
        .ok_or(GarbleError::UnsupportedModulus(start))
}

/// β·x mod p for a mod-2 wire β and a mod-p wire x, with three projections (p + P − 1
/// ciphertexts, P the smallest prime ≥ 2p; see the module docs).
pub fn mul_bit<B: Backend>(b: &mut B, bit: &B::Wire, x: &B::Wire) -> Result<B::Wire, GarbleError> {
    let mb = b.modulus_of(bit);
    if mb.q() != 2 {
        return Err(GarbleError::ModulusMismatch {
            expected: 2,
            got: mb.q(),
        });
    }
    let mp = b.modulus_of(x);
    let p = u16::from(mp.q());
    let big = lift_modulus(mp)?;
    let lifted_x = b.project(x, big, &(0..p).collect::<Vec<u16>>())?;
    let lifted_bit = b.project(bit, big, &[0, p])?;
    let z = b.add(&lifted_x, &lifted_bit)?;
    let phi: Vec<u16> = (0..u16::from(big.q()))
        .map(|z| if (p..2 * p).contains(&z) { z - p } else { 0 })
        .collect();
    b.project(&z, mp, &phi)
}

/// ReLU of a CRT-encoded signed value: the residue wires of max(x, 0).
pub fn relu<B: Backend>(b: &mut B, residues: &[B::Wire]) -> Result<Vec<B::Wire>, GarbleError> {
    let s = sign(b, residues)?;
    let positive = b.add_const(&s, 1)?;
    residues.iter().map(|x| mul_bit(b, &positive, x)).collect()
}

/// ReLU of the residue wires `x` with the sign computed over the first `sign_primes` of them (0:
/// all): exact when |x| is below half the product of those primes, since x is then determined by
/// its residues modulo them; the bit × residue products still cover every residue.
pub fn relu_narrow<B: Backend>(
    b: &mut B,
    x: &[B::Wire],
    sign_primes: u8,
) -> Result<Vec<B::Wire>, GarbleError> {
    let j = match usize::from(sign_primes) {
        0 => x.len(),
        j => j,
    };
    let head = x.get(..j).ok_or(GarbleError::Internal(
        "a sign over more primes than the wire has",
    ))?;
    let s = sign(b, head)?;
    let positive = b.add_const(&s, 1)?;
    x.iter().map(|r| mul_bit(b, &positive, r)).collect()
}

/// `clamp(x, lo, hi)` over the residue wires `x`, exact when |x| + max(|lo|, |hi|) is below half
/// the product of the primes its two signs use (`sign_primes`, 0: all); `lo ≤ hi`.
///
/// With s_lo = [x < lo] and s_hi = [x < hi] (two signs) and t = s_lo ⊕ s_hi (free: one is 1 only
/// when the other is), `clamp = hi + t·(x − lo) − s_hi·(hi − lo)`: below lo both bits are 1 and it
/// gives lo, inside [lo, hi) t = 1 and it gives x, from hi on both are 0 and it gives hi. One bit ×
/// residue product per residue (three projections) and one projection of s_hi per residue (one
/// ciphertext), where `lo + relu(x − lo) − relu(x − hi)` needs two products per residue.
pub fn clamp<B: Backend>(
    b: &mut B,
    x: &[B::Wire],
    lo: i64,
    hi: i64,
    sign_primes: u8,
) -> Result<Vec<B::Wire>, GarbleError> {
    if lo > hi {
        return Err(GarbleError::Internal("a clamp with lo > hi"));
    }
    let j = match usize::from(sign_primes) {
        0 => x.len(),
        j => j,
    };
    let shift = |b: &mut B, c: i64| -> Result<Vec<B::Wire>, GarbleError> {
        x.iter()
            .map(|w| {
                let q = i64::from(b.modulus_of(w).q());
                b.add_const(w, c.rem_euclid(q) as u64)
            })
            .collect()
    };
    let below = shift(b, -lo)?;
    let above = shift(b, -hi)?;
    let head = |v: &[B::Wire]| -> Result<Vec<B::Wire>, GarbleError> {
        v.get(..j)
            .map(<[B::Wire]>::to_vec)
            .ok_or(GarbleError::Internal(
                "a sign over more primes than the wire has",
            ))
    };
    let s_lo = sign(b, &head(&below)?)?;
    let s_hi = sign(b, &head(&above)?)?;
    let t = b.add(&s_lo, &s_hi)?;
    let span = i128::from(hi) - i128::from(lo);
    below
        .iter()
        .map(|u| {
            let m = b.modulus_of(u);
            let q = i128::from(m.q());
            let prod = mul_bit(b, &t, u)?;
            let d = u16::try_from(span.rem_euclid(q)).map_err(|_| GarbleError::Internal("span"))?;
            let drop = b.project(&s_hi, m, &[0, d])?;
            let y = b.sub(&prod, &drop)?;
            b.add_const(&y, i128::from(hi).rem_euclid(q) as u64)
        })
        .collect()
}

/// The garbled size of [`sign`] over the first k CRT primes.
pub fn sign_cost(k: usize) -> Result<GarbleCost, GarbleError> {
    let mut c = CostBackend::default();
    sign(&mut c, &Modulus::first_primes(k)?)?;
    Ok(c.cost)
}

/// The garbled size of [`relu`] over the first k CRT primes.
pub fn relu_cost(k: usize) -> Result<GarbleCost, GarbleError> {
    let mut c = CostBackend::default();
    relu(&mut c, &Modulus::first_primes(k)?)?;
    Ok(c.cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crt::CrtBasis;
    use crate::gadget::{EvalBackend, GarbleBackend, PlainBackend, PlainWire};
    use crate::gate::{Evaluator, Garbler};
    use crate::label::Seed;
    use proptest::prelude::*;

    use crate::gadget::test_support::{basis, plain_wires};

    fn plain_sign(b: &CrtBasis, x: i64) -> u8 {
        sign(&mut PlainBackend, &plain_wires(b, x))
            .expect("sign")
            .value()
    }

    fn plain_relu(b: &CrtBasis, x: i64) -> i64 {
        let out: Vec<u8> = relu(&mut PlainBackend, &plain_wires(b, x))
            .expect("relu")
            .iter()
            .map(|w| w.value())
            .collect();
        b.decode(&out).expect("valid")
    }

    /// Garbles `circuit` over the basis, evaluates it on x and decodes the output residues.
    fn garbled<F, G>(b: &CrtBasis, x: i64, seed: [u8; 32], garble: F, eval: G) -> Vec<u8>
    where
        F: Fn(&mut GarbleBackend, &[crate::Label]) -> Vec<crate::Label>,
        G: Fn(&mut EvalBackend, &[crate::Label]) -> Vec<crate::Label>,
    {
        let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes(seed)));
        let zeros: Vec<_> = b
            .moduli()
            .iter()
            .map(|&m| g.garbler_mut().input_wire(m))
            .collect();
        let out_zeros = garble(&mut g, &zeros);
        let (mut garbler, tables) = g.into_parts();
        let labels: Vec<_> = zeros
            .iter()
            .zip(b.encode(x).expect("in range"))
            .map(|(z, r)| garbler.encode(z, u64::from(r)).expect("encode"))
            .collect();
        let mut e = EvalBackend::new(Evaluator::new(garbler.hash_key()), tables);
        let out = eval(&mut e, &labels);
        e.finish().expect("every table used");
        out_zeros
            .iter()
            .zip(&out)
            .map(|(z, l)| garbler.decode(z, l).expect("valid label"))
            .collect()
    }

    fn garbled_sign(b: &CrtBasis, x: i64, seed: [u8; 32]) -> u8 {
        let out = garbled(
            b,
            x,
            seed,
            |g, w| vec![sign(g, w).expect("garble")],
            |e, w| vec![sign(e, w).expect("evaluate")],
        );
        out[0]
    }

    fn garbled_relu(b: &CrtBasis, x: i64, seed: [u8; 32]) -> i64 {
        let out = garbled(
            b,
            x,
            seed,
            |g, w| relu(g, w).expect("garble"),
            |e, w| relu(e, w).expect("evaluate"),
        );
        b.decode(&out).expect("valid")
    }

    fn basis_and_value() -> impl Strategy<Value = (usize, i64)> {
        (7usize..=9).prop_flat_map(|k| {
            let b = basis(k);
            (Just(k), b.min_value()..=b.max_value())
        })
    }

    #[test]
    fn sign_is_exact_on_whole_small_bases() {
        for k in 1..=5 {
            let b = basis(k);
            for x in b.min_value()..=b.max_value() {
                assert_eq!(plain_sign(&b, x), u8::from(x < 0), "k = {k}, x = {x}");
            }
        }
    }

    #[test]
    fn sign_is_exact_near_zero_and_at_the_range_ends() {
        for k in 7..=9 {
            let b = basis(k);
            let ranges = [
                -5_000..=5_000,
                b.min_value()..=b.min_value() + 2_000,
                b.max_value() - 2_000..=b.max_value(),
            ];
            for x in ranges.into_iter().flatten() {
                assert_eq!(plain_sign(&b, x), u8::from(x < 0), "k = {k}, x = {x}");
            }
        }
    }

    #[test]
    fn relu_is_exact_on_whole_small_bases() {
        for k in 1..=4 {
            let b = basis(k);
            for x in b.min_value()..=b.max_value() {
                assert_eq!(plain_relu(&b, x), x.max(0), "k = {k}, x = {x}");
            }
        }
    }

    proptest! {
        #[test]
        fn sign_matches_plain_comparison((k, x) in basis_and_value()) {
            prop_assert_eq!(plain_sign(&basis(k), x), u8::from(x < 0));
        }

        #[test]
        fn relu_matches_max_with_zero((k, x) in basis_and_value()) {
            prop_assert_eq!(plain_relu(&basis(k), x), x.max(0));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        #[test]
        fn garbled_sign_matches_plaintext((k, x) in basis_and_value(), seed: [u8; 32]) {
            let b = basis(k);
            prop_assert_eq!(garbled_sign(&b, x, seed), plain_sign(&b, x));
        }

        #[test]
        fn garbled_relu_matches_plaintext((k, x) in basis_and_value(), seed: [u8; 32]) {
            let b = basis(k);
            prop_assert_eq!(garbled_relu(&b, x, seed), plain_relu(&b, x));
        }
    }

    #[test]
    fn garbled_gadgets_at_the_edges() {
        for k in 7..=9 {
            let b = basis(k);
            for x in [b.min_value(), -1, 0, 1, b.max_value()] {
                assert_eq!(garbled_sign(&b, x, [k as u8; 32]), u8::from(x < 0));
                assert_eq!(garbled_relu(&b, x, [k as u8; 32]), x.max(0));
            }
        }
    }

    /// Σᵢ (rᵢ − 1)(k − i) over the radices 3, 5, …, p_k, 2.
    fn sign_formula(k: usize) -> u64 {
        let primes = Modulus::first_primes(k).expect("primes");
        primes
            .iter()
            .skip(1)
            .enumerate()
            .map(|(i, m)| (u64::from(m.q()) - 1) * (k - 1 - i) as u64)
            .sum()
    }

    #[test]
    fn ciphertext_counts() {
        let expected_sign = [(7, 126), (8, 194), (9, 284)];
        for (k, want) in expected_sign {
            let c = sign_cost(k).expect("cost");
            assert_eq!(c.ciphertexts, want, "sign, k = {k}");
            assert_eq!(c.ciphertexts, sign_formula(k));
            assert_eq!(c.bytes, 16 * want);
        }
        // ReLU adds p + P − 1 per prime (P the smallest full-strength prime ≥ 2p: 17 → 47 and
        // 19 → 47, where 37 and 41 would carry offsets below 120 bits).
        let expected_relu = [(7, 126 + 190), (8, 194 + 255), (9, 284 + 324)];
        for (k, want) in expected_relu {
            let c = relu_cost(k).expect("cost");
            assert_eq!(c.ciphertexts, want, "relu, k = {k}");
            let products: u64 = Modulus::first_primes(k)
                .expect("primes")
                .iter()
                .map(|&m| {
                    let big = lift_modulus(m).expect("lift");
                    u64::from(m.q()) + u64::from(big.q()) - 1
                })
                .sum();
            assert_eq!(c.ciphertexts, sign_formula(k) + products);
        }
    }

    #[test]
    fn the_real_garbler_produces_what_the_cost_backend_counts() {
        for k in 7..=9 {
            let b = basis(k);
            let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes([1; 32])));
            let zeros: Vec<_> = b
                .moduli()
                .iter()
                .map(|&m| g.garbler_mut().input_wire(m))
                .collect();
            sign(&mut g, &zeros).expect("garble");
            let after_sign = g.garbler_mut().cost();
            assert_eq!(
                after_sign.ciphertexts,
                sign_cost(k).expect("cost").ciphertexts
            );
            assert_eq!(after_sign.gates, sign_cost(k).expect("cost").gates);
            relu(&mut g, &zeros).expect("garble");
            let total = g.garbler_mut().cost().ciphertexts;
            assert_eq!(
                total - after_sign.ciphertexts,
                relu_cost(k).expect("cost").ciphertexts
            );
            let stored: usize = g.tables().iter().map(|t| t.rows().len()).sum();
            assert_eq!(stored as u64, total);
        }
    }

    #[test]
    fn wrong_inputs_are_errors() {
        let b = basis(7);
        let mut w = plain_wires(&b, 5);
        assert!(matches!(
            sign(&mut PlainBackend, &[]),
            Err(GarbleError::ResidueCount { .. })
        ));
        w.swap(1, 2);
        assert!(matches!(
            sign(&mut PlainBackend, &w),
            Err(GarbleError::ModulusMismatch {
                expected: 3,
                got: 5
            })
        ));
        let m7 = Modulus::new(7).expect("prime");
        let x = PlainWire::new(m7, 3);
        assert!(matches!(
            mul_bit(&mut PlainBackend, &x, &x),
            Err(GarbleError::ModulusMismatch {
                expected: 2,
                got: 7
            })
        ));
        let big = PlainWire::new(Modulus::new(127).expect("prime"), 3);
        let bit = PlainWire::new(Modulus::new(2).expect("prime"), 1);
        assert!(matches!(
            mul_bit(&mut PlainBackend, &bit, &big),
            Err(GarbleError::UnsupportedModulus(254))
        ));
        for v in 0..7 {
            for beta in 0..2 {
                let out = mul_bit(
                    &mut PlainBackend,
                    &PlainWire::new(Modulus::new(2).expect("prime"), beta),
                    &PlainWire::new(m7, v),
                )
                .expect("product");
                assert_eq!(u64::from(out.value()), beta * v);
            }
        }
    }
}
