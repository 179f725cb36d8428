//! Rescaling by a power of two (round half up) and the maximum of two CRT values.
//!
//! # Rescale: l exact floor-halvings (DESIGN §2.1)
//!
//! The integer rule after a linear layer is y = ⌊(x + 2^(l−1)) / 2^l⌋ for signed x — round half
//! up, so a floor (not a truncation towards zero) on negative values. The gadget adds the public
//! constant 2^(l−1) to every residue (free) and then halves with a floor l times; nested floors
//! compose, ⌊⌊y/2⌋/2⌋ = ⌊y/4⌋, so the result is exact.
//!
//! One floor-halving of y (residue wires mod 2, 3, …, p_k; h = M/2, odd, the product of the odd
//! primes):
//!
//! 1. b = y mod 2 is the mod-2 wire itself (the Euclidean remainder, so also for y < 0), and
//!    ⌊y/2⌋ = (y − b)/2 as integers. For every odd prime p, project b into mod p (1 ciphertext)
//!    and set zₚ = (yₚ − b)·2⁻¹ mod p (free). These are exact residues of z = ⌊y/2⌋.
//! 2. The mod-2 residue of z cannot be divided out; it is rebuilt by **base extension** from the
//!    odd residues. They determine z modulo h only, so z is shifted into [0, h): with
//!    −h ≤ y ≤ h − 2, z lies in [−(h+1)/2, (h−3)/2], and v = z + (h+1)/2 lies in [0, h − 1].
//!    Prime-only mixed-radix conversion of v over the radices 3, 5, …, p_k (as in
//!    [`super::sign`]) gives digits aᵢ with v = Σ aᵢ·wᵢ; every weight wᵢ is a product of odd
//!    primes, hence odd, so v mod 2 = Σ aᵢ mod 2. Each digit is projected to the later odd
//!    radices and to mod 2, where the parities are summed (free). Finally z mod 2 = v mod 2 −
//!    (h+1)/2 (free).
//!
//! Cost per halving: (k − 1) + Σᵢ (rᵢ − 1)(k − i) ciphertexts over the odd radices rᵢ — the
//! same sum as the sign gadget, plus k − 1 — i.e. 132 at k = 7, 201 at k = 8, 292 at k = 9.
//! A rescale by 2^l costs l times that: **660 / 1,005 / 1,460** ciphertexts for l = 5 and
//! **1,056 / 1,608 / 2,336** for l = 8 at k = 7 / 8 / 9 (asserted in the tests). Dividing by a
//! product of odd CRT primes instead (ReDash) would need one base extension in all; that needs an
//! integer rule with such a divisor and is not done here.
//!
//! **Precondition** (not checkable on garbled wires; a violation gives a wrong value, never a
//! panic): the input x must satisfy −M/2 ≤ x and x + 2^(l−1) ≤ M/2 − 2, i.e. x ∈ [−M/2,
//! M/2 − 2 − 2^(l−1)] for l ≥ 1. Every intermediate value then stays in range by itself.
//!
//! # Max of two values
//!
//! max(a, b) = b + relu(a − b), residue by residue (the subtraction and addition are free), so
//! it costs one [`super::relu`]. Precondition: a − b ∈ [−M/2, M/2) (e.g. |a|, |b| < M/4).

use super::Backend;
use super::activation::{crt_moduli, mixed_radix_step, relu};
use crate::GarbleError;
use crate::cost::GarbleCost;
use crate::crt::inverse_mod_prime;
use crate::gadget::CostBackend;
use crate::modulus::Modulus;

/// The mod-2 residue of v ∈ [0, h) from its residue wires over the odd primes 3, 5, …, p_k
/// (h their product), by prime-only mixed-radix conversion; `two` is the mod-2 modulus.
fn odd_parity<B: Backend>(
    b: &mut B,
    odd: &[B::Wire],
    two: Modulus,
) -> Result<B::Wire, GarbleError> {
    let mut wires = odd.to_vec();
    let mut parity: Option<B::Wire> = None;
    for i in 0..wires.len() {
        let digit = mixed_radix_step(b, &mut wires, i)?;
        let ri = u64::from(b.modulus_of(&digit).q());
        let phi: Vec<u16> = (0..ri).map(|a| (a % 2) as u16).collect();
        let bit = b.project(&digit, two, &phi)?;
        parity = Some(match parity {
            None => bit,
            Some(acc) => b.add(&acc, &bit)?,
        });
    }
    parity.ok_or(GarbleError::Internal("no odd residues"))
}

/// The residue wires of ⌊y/2⌋ for y ∈ [−M/2, M/2 − 2]; `moduli` are those of `residues`
/// (already checked: the first k ≥ 2 primes).
fn halve_floor<B: Backend>(
    b: &mut B,
    residues: &[B::Wire],
    moduli: &[Modulus],
) -> Result<Vec<B::Wire>, GarbleError> {
    let (bit, odd) = residues
        .split_first()
        .ok_or(GarbleError::Internal("no mod-2 residue"))?;
    let two = moduli
        .first()
        .copied()
        .ok_or(GarbleError::Internal("no mod-2 modulus"))?;
    let half: u64 = moduli.iter().skip(1).map(|m| u64::from(m.q())).product();
    // v = z + (h + 1)/2 ∈ [0, h).
    let shift = half.div_ceil(2);
    let mut zs = Vec::with_capacity(odd.len());
    let mut vs = Vec::with_capacity(odd.len());
    for (y, m) in odd.iter().zip(moduli.iter().skip(1)) {
        let p = u64::from(m.q());
        let inv2 = inverse_mod_prime(2, p).ok_or(GarbleError::Internal("2 is not invertible"))?;
        let lifted = b.project(bit, *m, &[0, 1])?;
        let diff = b.sub(y, &lifted)?;
        let z = b.mul_const(&diff, inv2)?;
        vs.push(b.add_const(&z, shift)?);
        zs.push(z);
    }
    let parity = odd_parity(b, &vs, two)?;
    // z mod 2 = v mod 2 − shift = v mod 2 + shift (mod 2).
    let z2 = b.add_const(&parity, shift)?;
    let mut out = Vec::with_capacity(residues.len());
    out.push(z2);
    out.extend(zs);
    Ok(out)
}

/// The moduli of a rescale's input (its CRT basis): errors unless the wires are the residues mod
/// the first k primes with k ≥ 2 (mod 2 and at least one odd prime).
pub(super) fn rescale_moduli<B: Backend>(
    b: &B,
    residues: &[B::Wire],
) -> Result<Vec<Modulus>, GarbleError> {
    let moduli = crt_moduli(b, residues)?;
    if moduli.len() < 2 {
        return Err(GarbleError::ResidueCount {
            expected: 2,
            got: moduli.len(),
        });
    }
    Ok(moduli)
}

/// The residue wires of ⌊(x + 2^(l−1)) / 2^l⌋ (x itself for l = 0) — round half up, exact for
/// signed x. `residues` are the wires of x mod 2, 3, …, p_k (k ≥ 2), and x must satisfy
/// −M/2 ≤ x ≤ M/2 − 2 − 2^(l−1) (module docs). Errors unless 2^l ≤ M.
pub fn rescale_pow2<B: Backend>(
    b: &mut B,
    residues: &[B::Wire],
    l: u32,
) -> Result<Vec<B::Wire>, GarbleError> {
    let moduli = rescale_moduli(b, residues)?;
    if l == 0 {
        return Ok(residues.to_vec());
    }
    let product: u64 = moduli.iter().map(|m| u64::from(m.q())).product();
    let round = 1u64.checked_shl(l - 1).unwrap_or(u64::MAX);
    if round > product / 2 {
        return Err(GarbleError::CrtOutOfRange {
            x: i64::try_from(round).unwrap_or(i64::MAX),
            half: product / 2,
        });
    }
    let mut wires = residues
        .iter()
        .map(|w| b.add_const(w, round))
        .collect::<Result<Vec<_>, _>>()?;
    for _ in 0..l {
        wires = halve_floor(b, &wires, &moduli)?;
    }
    Ok(wires)
}

/// The residue wires of max(a, b) = b + relu(a − b), for two values over the same first k
/// primes with a − b ∈ [−M/2, M/2).
pub fn max2<B: Backend>(
    b: &mut B,
    x: &[B::Wire],
    y: &[B::Wire],
) -> Result<Vec<B::Wire>, GarbleError> {
    crt_moduli(b, x)?;
    crt_moduli(b, y)?;
    if x.len() != y.len() {
        return Err(GarbleError::ResidueCount {
            expected: x.len(),
            got: y.len(),
        });
    }
    let diff = x
        .iter()
        .zip(y)
        .map(|(xi, yi)| b.sub(xi, yi))
        .collect::<Result<Vec<_>, _>>()?;
    let r = relu(b, &diff)?;
    y.iter().zip(&r).map(|(yi, ri)| b.add(yi, ri)).collect()
}

/// The garbled size of [`rescale_pow2`] over the first k CRT primes.
pub fn rescale_pow2_cost(k: usize, l: u32) -> Result<GarbleCost, GarbleError> {
    let mut c = CostBackend::default();
    rescale_pow2(&mut c, &Modulus::first_primes(k)?, l)?;
    Ok(c.cost)
}

/// The garbled size of [`max2`] over the first k CRT primes.
pub fn max2_cost(k: usize) -> Result<GarbleCost, GarbleError> {
    let mut c = CostBackend::default();
    let m = Modulus::first_primes(k)?;
    max2(&mut c, &m, &m)?;
    Ok(c.cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crt::CrtBasis;
    use crate::gadget::test_support::{
        basis, check_rescale_input_errors, garbled, plain_decode, plain_wires, reference_rescale,
    };
    use crate::gadget::{GarbleBackend, PlainBackend, relu_cost, sign_cost};
    use crate::gate::Garbler;
    use crate::label::Seed;
    use proptest::prelude::*;

    /// The largest x the rescale precondition admits.
    fn rescale_max(b: &CrtBasis, l: u32) -> i64 {
        let round = if l == 0 { 0 } else { 1i64 << (l - 1) };
        b.max_value() - 1 - round
    }

    fn plain_rescale(b: &CrtBasis, x: i64, l: u32) -> i64 {
        let out = rescale_pow2(&mut PlainBackend, &plain_wires(b, x), l).expect("rescale");
        plain_decode(b, &out)
    }

    fn plain_max(b: &CrtBasis, x: i64, y: i64) -> i64 {
        let out = max2(&mut PlainBackend, &plain_wires(b, x), &plain_wires(b, y)).expect("max");
        plain_decode(b, &out)
    }

    fn garbled_rescale(b: &CrtBasis, x: i64, l: u32, seed: [u8; 32]) -> i64 {
        garbled(
            b,
            &[x],
            seed,
            &|g, w| rescale_pow2(g, &w[0], l).expect("garble"),
            &|e, w| rescale_pow2(e, &w[0], l).expect("evaluate"),
        )
    }

    fn garbled_max(b: &CrtBasis, x: i64, y: i64, seed: [u8; 32]) -> i64 {
        garbled(
            b,
            &[x, y],
            seed,
            &|g, w| max2(g, &w[0], &w[1]).expect("garble"),
            &|e, w| max2(e, &w[0], &w[1]).expect("evaluate"),
        )
    }

    #[test]
    fn reference_rule_is_round_half_up() {
        assert_eq!(reference_rescale(3, 1), 2);
        assert_eq!(reference_rescale(-3, 1), -1);
        assert_eq!(reference_rescale(-5, 2), -1);
        assert_eq!(reference_rescale(-6, 2), -1);
        assert_eq!(reference_rescale(-7, 2), -2);
        assert_eq!(reference_rescale(-48, 5), -1);
        assert_eq!(reference_rescale(-49, 5), -2);
        for a in -1000..1000 {
            for f in 1..8 {
                assert_eq!(reference_rescale(a, f), (a + (1 << (f - 1))) >> f);
            }
        }
    }

    #[test]
    fn rescale_is_exact_on_whole_small_bases() {
        for k in 2..=5 {
            let b = basis(k);
            let mut l = 0;
            while (1u64 << l) <= b.product() {
                for x in b.min_value()..=rescale_max(&b, l) {
                    assert_eq!(
                        plain_rescale(&b, x, l),
                        reference_rescale(x, l),
                        "k = {k}, l = {l}, x = {x}"
                    );
                }
                l += 1;
            }
        }
    }

    #[test]
    fn the_precondition_is_tight() {
        // One past the top of the admitted range wraps and the result is wrong.
        for k in 2..=5 {
            let b = basis(k);
            for l in [1, 2] {
                let x = rescale_max(&b, l) + 1;
                assert_ne!(plain_rescale(&b, x, l), reference_rescale(x, l), "k = {k}");
            }
        }
    }

    #[test]
    fn max_is_exact_on_whole_small_bases() {
        for k in 2..=4 {
            let b = basis(k);
            let quarter = i64::try_from(b.product() / 4).expect("small");
            for x in -quarter..quarter {
                for y in -quarter..quarter {
                    assert_eq!(plain_max(&b, x, y), x.max(y), "k = {k}, {x}, {y}");
                }
            }
        }
    }

    fn rescale_case() -> impl Strategy<Value = (usize, u32, i64)> {
        (7usize..=9, 0u32..=12).prop_flat_map(|(k, l)| {
            let b = basis(k);
            (Just(k), Just(l), b.min_value()..=rescale_max(&b, l))
        })
    }

    fn max_case() -> impl Strategy<Value = (usize, i64, i64)> {
        (7usize..=9).prop_flat_map(|k| {
            let q = i64::try_from(basis(k).product() / 4).expect("fits");
            (Just(k), -q..q, -q..q)
        })
    }

    proptest! {
        #[test]
        fn rescale_matches_the_integer_rule((k, l, x) in rescale_case()) {
            prop_assert_eq!(plain_rescale(&basis(k), x, l), reference_rescale(x, l));
        }

        #[test]
        fn max_matches_the_integer_max((k, x, y) in max_case()) {
            prop_assert_eq!(plain_max(&basis(k), x, y), x.max(y));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn garbled_rescale_matches_the_integer_rule(
            (k, l, x) in rescale_case(),
            seed: [u8; 32],
        ) {
            prop_assert_eq!(garbled_rescale(&basis(k), x, l, seed), reference_rescale(x, l));
        }

        #[test]
        fn garbled_max_matches_the_integer_max((k, x, y) in max_case(), seed: [u8; 32]) {
            prop_assert_eq!(garbled_max(&basis(k), x, y, seed), x.max(y));
        }
    }

    #[test]
    fn garbled_gadgets_at_the_edges() {
        for k in 7..=9 {
            let b = basis(k);
            for l in [1, 5, 8] {
                let top = rescale_max(&b, l);
                for x in [b.min_value(), -17, -16, -1, 0, 1, 16, top] {
                    assert_eq!(
                        garbled_rescale(&b, x, l, [l as u8; 32]),
                        reference_rescale(x, l),
                        "k = {k}, l = {l}, x = {x}"
                    );
                }
            }
            let q = i64::try_from(b.product() / 4).expect("fits");
            for (x, y) in [(-q, q - 1), (q - 1, -q), (-3, -3), (0, -1), (-1, 0)] {
                assert_eq!(garbled_max(&b, x, y, [k as u8; 32]), x.max(y));
            }
        }
    }

    #[test]
    fn ciphertext_counts() {
        for (k, per_halving) in [(7, 132), (8, 201), (9, 292)] {
            let sign = sign_cost(k).expect("cost").ciphertexts;
            assert_eq!(per_halving, sign + k as u64 - 1);
            for l in [1u32, 5, 8] {
                let c = rescale_pow2_cost(k, l).expect("cost");
                assert_eq!(
                    c.ciphertexts,
                    per_halving * u64::from(l),
                    "k = {k}, l = {l}"
                );
                assert_eq!(c.bytes, 16 * c.ciphertexts);
            }
            assert_eq!(rescale_pow2_cost(k, 0).expect("cost").ciphertexts, 0);
            assert_eq!(
                max2_cost(k).expect("cost").ciphertexts,
                relu_cost(k).expect("cost").ciphertexts
            );
        }
        let l5: Vec<u64> = (7..=9)
            .map(|k| rescale_pow2_cost(k, 5).expect("cost").ciphertexts)
            .collect();
        let l8: Vec<u64> = (7..=9)
            .map(|k| rescale_pow2_cost(k, 8).expect("cost").ciphertexts)
            .collect();
        assert_eq!(l5, [660, 1005, 1460]);
        assert_eq!(l8, [1056, 1608, 2336]);
        let m: Vec<u64> = (7..=9)
            .map(|k| max2_cost(k).expect("cost").ciphertexts)
            .collect();
        assert_eq!(m, [316, 449, 608]);
    }

    #[test]
    fn the_real_garbler_produces_what_the_cost_backend_counts() {
        for k in 7..=9 {
            let b = basis(k);
            let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes([3; 32])));
            let zeros: Vec<_> = b
                .moduli()
                .iter()
                .map(|&m| g.garbler_mut().input_wire(m))
                .collect();
            rescale_pow2(&mut g, &zeros, 5).expect("garble");
            let after = g.garbler_mut().cost();
            let want = rescale_pow2_cost(k, 5).expect("cost");
            assert_eq!(after.ciphertexts, want.ciphertexts);
            assert_eq!(after.gates, want.gates);
            max2(&mut g, &zeros, &zeros).expect("garble");
            let total = g.garbler_mut().cost().ciphertexts;
            assert_eq!(
                total - after.ciphertexts,
                max2_cost(k).expect("cost").ciphertexts
            );
        }
    }

    #[test]
    fn wrong_inputs_are_errors() {
        check_rescale_input_errors(rescale_pow2::<PlainBackend>);
        let b = basis(7);
        let w = plain_wires(&b, 5);
        let mut swapped = w.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            max2(&mut PlainBackend, &w, &w[..6]),
            Err(GarbleError::ResidueCount {
                expected: 7,
                got: 6
            })
        ));
        assert!(matches!(
            max2(&mut PlainBackend, &w, &swapped),
            Err(GarbleError::ModulusMismatch { .. })
        ));
    }
}
