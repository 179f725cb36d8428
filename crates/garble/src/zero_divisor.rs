//! The known break of arithmetic garbling over composite moduli (DESIGN §2.1), run against this
//! crate's own projection gates: over q = 86 = 2·43 the multiple 43·Δ₈₆ has every digit in
//! {0, 43}, so an evaluator holding one label and one table enumerates 2^18 candidates, finds
//! 43·Δ₈₆ (the parity of every digit of Δ) and opens a second row of the table. The same search
//! over a default CRT prime finds nothing, and [`Modulus::new`] refuses the composite modulus.

use crate::GarbleError;
use crate::cost::GarbleCost;
use crate::gate::{Garbler, evaluate_projection};
use crate::label::{Label, Seed};
use crate::modulus::Modulus;
use crate::modulus::testing::{composite_for_attack_test, m};

/// The evaluator's search: every label D whose colour digit is `a` and whose next 18 digits are
/// 0 or `a` (the rest 0), tried as the shift from the held label `held` to the label of
/// x + a; a candidate is confirmed when the opened row equals the output label `out` the
/// evaluator already has (φ(x + a) = φ(x)). Returns the shift found, if any.
fn search(
    garbler: &Garbler,
    table: &crate::gate::ProjectionTable,
    held: &Label,
    out: &Label,
    a: u8,
) -> Option<Label> {
    let p = held.modulus();
    let mut cost = GarbleCost::default();
    let free = 18.min(p.digits() - 1);
    for bits in 0u32..(1 << free) {
        let mut digits = vec![0u8; p.digits()];
        digits[0] = a;
        for (i, d) in digits.iter_mut().skip(1).take(free).enumerate() {
            if bits >> i & 1 == 1 {
                *d = a;
            }
        }
        let shift = Label::from_digits(p, &digits).ok()?;
        let Ok(guess) = held.try_add(&shift) else {
            continue;
        };
        if let Ok(opened) = evaluate_projection(garbler.hasher(), table, &guess, &mut cost)
            && bool::from(opened.ct_eq(out))
        {
            return Some(shift);
        }
    }
    None
}

/// Garbles one gate p → q with φ(v) = φ(v + a) and runs the search from the label of x.
fn attack(p: Modulus, q: Modulus, a: u8, x: u64) -> (Option<Label>, Label) {
    let mut g = Garbler::new(&Seed::from_bytes([42; 32]));
    let a0 = g.input_wire(p);
    let phi: Vec<u8> = (0..p.q()).map(|v| v % a % q.q()).collect();
    let (table, c0) = g.projection(&a0, q, &phi).expect("garbles");
    let held = g.encode(&a0, x).expect("encodes");
    let out = g.encode(&c0, u64::from(phi[x as usize])).expect("encodes");
    let truth = g.delta(p).times(u64::from(a));
    (search(&g, &table, &held, &out, a), truth)
}

#[test]
fn the_zero_divisor_attack_breaks_a_composite_modulus_and_not_a_prime() {
    // The library refuses the composite modulus outright.
    assert!(matches!(
        Modulus::new(86),
        Err(GarbleError::CompositeModulus { q: 86, factor: 2 })
    ));
    let p86 = composite_for_attack_test(86);
    // The search covers all of Δ's non-colour digits: 86 has ⌊128 / log2 86⌋ = 19 digits.
    assert_eq!(p86.digits(), 19);
    let (found, truth) = attack(p86, m(43), 43, 5);
    let found = found.expect("the search recovers 43·Δ over the composite modulus");
    assert!(bool::from(found.ct_eq(&truth)), "it is exactly 43·Δ₈₆");
    // The default CRT primes: the same search (same 2^18 candidates, a = 43 as close as a
    // multiple can get to a zero divisor) finds nothing over 67, the largest basis prime.
    let (none, _) = attack(m(67), m(43), 43, 5);
    assert!(none.is_none(), "no shift found over a prime modulus");
}
