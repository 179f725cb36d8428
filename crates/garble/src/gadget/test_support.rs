//! Helpers shared by the gadget tests: the integer rule, CRT encoding on the plaintext backend,
//! and garble → evaluate → decode of a circuit over CRT values.

use crate::GarbleError;
use crate::crt::CrtBasis;
use crate::gadget::{EvalBackend, GarbleBackend, PlainBackend, PlainWire};
use crate::gate::{Evaluator, Garbler};
use crate::label::{Label, Seed};

/// The engine's rule, written out again: ⌊(a + 2^(f−1)) / 2^f⌋, a for f = 0.
pub(crate) fn reference_rescale(a: i64, f: u32) -> i64 {
    if f == 0 {
        a
    } else {
        (a + (1i64 << (f - 1))).div_euclid(1i64 << f)
    }
}

pub(crate) fn basis(k: usize) -> CrtBasis {
    CrtBasis::first_primes(k).expect("basis")
}

pub(crate) fn plain_wires(b: &CrtBasis, x: i64) -> Vec<PlainWire> {
    b.encode(x)
        .expect("in range")
        .iter()
        .zip(b.moduli())
        .map(|(&r, &m)| PlainWire::new(m, u64::from(r)))
        .collect()
}

pub(crate) fn plain_decode(b: &CrtBasis, w: &[PlainWire]) -> i64 {
    let r: Vec<u8> = w.iter().map(|w| w.value()).collect();
    b.decode(&r).expect("valid")
}

pub(crate) type Circuit<'a, B> = dyn Fn(&mut B, &[Vec<Label>]) -> Vec<Label> + 'a;

/// Garbles a circuit over `inputs.len()` CRT values, evaluates it on `inputs`, decodes.
pub(crate) fn garbled(
    b: &CrtBasis,
    inputs: &[i64],
    seed: [u8; 32],
    garble: &Circuit<'_, GarbleBackend>,
    eval: &Circuit<'_, EvalBackend>,
) -> i64 {
    let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes(seed)));
    let zeros: Vec<Vec<Label>> = inputs
        .iter()
        .map(|_| {
            b.moduli()
                .iter()
                .map(|&m| g.garbler_mut().input_wire(m))
                .collect()
        })
        .collect();
    let out_zeros = garble(&mut g, &zeros);
    let garbled_cost = g.garbler_mut().cost().ciphertexts;
    let (mut garbler, tables) = g.into_parts();
    let labels: Vec<Vec<Label>> = zeros
        .iter()
        .zip(inputs)
        .map(|(z, &x)| {
            z.iter()
                .zip(b.encode(x).expect("in range"))
                .map(|(z, r)| garbler.encode(z, u64::from(r)).expect("encode"))
                .collect()
        })
        .collect();
    let stored: usize = tables.iter().map(|t| t.rows().len()).sum();
    assert_eq!(stored as u64, garbled_cost);
    let mut e = EvalBackend::new(Evaluator::new(garbler.hash_key()), tables);
    let out = eval(&mut e, &labels);
    e.finish().expect("every table used");
    let r: Vec<u8> = out_zeros
        .iter()
        .zip(&out)
        .map(|(z, l)| garbler.decode(z, l).expect("valid label"))
        .collect();
    b.decode(&r).expect("valid")
}

/// A rescale gadget on the plaintext backend.
pub(crate) type PlainRescale =
    fn(&mut PlainBackend, &[PlainWire], u32) -> Result<Vec<PlainWire>, GarbleError>;

/// The input contract both rescale gadgets share, over k = 7: too few residues, a scale the range
/// cannot hold (up to l = u32::MAX), swapped moduli — each an error, never a panic — and the
/// largest scale in range accepted.
pub(crate) fn check_rescale_input_errors(rescale: PlainRescale) {
    let b = basis(7);
    let w = plain_wires(&b, 5);
    assert!(matches!(
        rescale(&mut PlainBackend, &w[..1], 3),
        Err(GarbleError::ResidueCount {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        rescale(&mut PlainBackend, &[], 3),
        Err(GarbleError::ResidueCount { .. })
    ));
    for l in [20, 64, u32::MAX] {
        assert!(
            matches!(
                rescale(&mut PlainBackend, &w, l),
                Err(GarbleError::CrtOutOfRange { .. })
            ),
            "l = {l}"
        );
    }
    assert!(rescale(&mut PlainBackend, &w, 18).is_ok());
    let mut swapped = w.clone();
    swapped.swap(1, 2);
    assert!(matches!(
        rescale(&mut PlainBackend, &swapped, 3),
        Err(GarbleError::ModulusMismatch { .. })
    ));
}
