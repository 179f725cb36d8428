//! The non-linear step against the integer semantics' own rule, in plaintext and garbled, and its
//! cost per activation against Delphi's ReLU (CryptoNite's figures).

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_engine::qint::rq;
use tessera_mpc::circuit::{Checked, from_bits, to_bits};
use tessera_mpc::garble::{evaluate_checked, garble_checked};
use tessera_mpc::stream::{StreamReader, StreamWriter};
use tessera_twopc::gadget::{Requant, layer_circuit};

fn reference(q: &Requant, acc: i64, r: u64) -> u64 {
    let y = (rq(i128::from(acc), q.mult, q.shift).expect("fits") as i64).clamp(q.lo, q.hi);
    let modulus = 1u128 << q.out_bits;
    ((i128::from(y) - i128::from(r)).rem_euclid(modulus as i128)) as u64
}

fn split(acc: i64, bits: usize, rng: &mut ChaCha20Rng) -> (u64, u64) {
    let m = 1u64 << bits;
    let a = rng.random::<u64>() % m;
    let c = (acc as i128 - a as i128).rem_euclid(m as i128) as u64;
    (a, c)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_step_is_the_integer_semantics(seed in any::<u64>(), mult in -300i64..300, shift in 0u32..20, lo in -200i64..0, span in 1i64..400, relu in any::<bool>()) {
        let q = Requant { share_bits: 24, mult: if mult == 0 { 1 } else { mult }, shift, lo: if relu { 0 } else { lo }, hi: lo.max(0) + span, out_bits: 24 };
        let c = Checked::new(layer_circuit(&q, 3).expect("circuit")).expect("valid");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let accs: Vec<i64> = (0..3).map(|i| match i { 0 => (1 << 23) - 1, 1 => -(1 << 23) + 1, _ => rng.random_range(-(1 << 22)..(1 << 22)) }).collect();
        let mut sa = Vec::new();
        let mut sc = Vec::new();
        let mut rs = Vec::new();
        for &acc in &accs {
            let (a, cc) = split(acc, 24, &mut rng);
            sa.push(to_bits(u128::from(a), 24));
            sc.push(to_bits(u128::from(cc), 24));
            rs.push(rng.random::<u64>() % (1 << 24));
        }
        let mut inputs: Vec<Vec<bool>> = sa.clone();
        inputs.extend(sc.clone());
        inputs.extend(rs.iter().map(|&r| to_bits(u128::from(r), 24)));
        let want: Vec<u64> = accs.iter().zip(&rs).map(|(&acc, &r)| reference(&q, acc, r)).collect();
        let plain: Vec<u64> = c.eval(&inputs).expect("eval").iter().map(|o| from_bits(o) as u64).collect();
        prop_assert_eq!(&plain, &want);
        let mut w = StreamWriter::new(Vec::new());
        let g = garble_checked(&c, &mut rng, &mut w).expect("garble");
        let flat: Vec<bool> = inputs.iter().flatten().copied().collect();
        let labels = g.inputs.encode(0, &flat).expect("encode");
        let bytes = w.into_inner();
        let out = evaluate_checked(&c, &labels, &mut StreamReader::new(bytes.as_slice())).expect("evaluate");
        let bits = g.check.check(&out).expect("valid");
        let garbled: Vec<u64> = bits.chunks(24).map(|o| from_bits(o) as u64).collect();
        prop_assert_eq!(garbled, want);
    }
}

/// AND gates and garbled bytes per activation for mnist-8-like constants (ℓ = 24, an 8-bit
/// multiplier, ReLU into [0, 255]), beside Delphi's 17,072 garbled bytes per ReLU.
#[test]
fn cost_per_activation() {
    for (mult, label) in [
        (181i64, "8-bit m"),
        (45_000, "16-bit m (given int8 weights)"),
    ] {
        let q = Requant {
            share_bits: 24,
            mult,
            shift: 20,
            lo: 0,
            hi: 255,
            out_bits: 24,
        };
        let c = layer_circuit(&q, 1).expect("circuit");
        let ands = c.and_count();
        eprintln!(
            "2pc step, {label}: {ands} ANDs, {} B garbled per activation (Delphi: 17,072 B)",
            ands * 32
        );
        assert!(ands * 32 < 17_072);
    }
}

/// Why shares live in Z_(2^ℓ): reconstructing `a + c` there is one ℓ-bit add; in a prime field
/// Z_p (p just below 2^ℓ) it is an (ℓ+1)-bit add, a comparison with p and a conditional
/// subtraction — measured here on the same builder at ℓ = 24.
#[test]
fn ring_shares_reconstruct_cheaper_than_field_shares() {
    use tessera_mpc::circuit::Builder;
    let l = 24;
    let mut b = Builder::new();
    let (a, c) = (b.input(l), b.input(l));
    let s = b.add(&a, &c);
    b.output(&s);
    let ring = b.finish().expect("circuit").and_count();
    let mut b = Builder::new();
    let p: i128 = (1 << l) - 3;
    let (a, c) = (b.input(l), b.input(l));
    let ext = |w: &Vec<_>| {
        let mut w: Vec<_> = w.clone();
        w.push(tessera_mpc::circuit::Bit::Const(false));
        w
    };
    let s = b.add(&ext(&a), &ext(&c));
    let pw = b.constant(p, l + 1);
    let below = b.lt_unsigned(&s, &pw);
    let reduced = b.sub(&s, &pw);
    let r = b.mux_word(below, &s, &reduced);
    b.output(&r);
    let field = b.finish().expect("circuit").and_count();
    eprintln!(
        "reconstructing a share at ℓ = {l}: {ring} ANDs in Z_2^ℓ, {field} in Z_p (the whole step: 281 + {} ANDs)",
        field - ring
    );
    assert!(ring < field);
}
