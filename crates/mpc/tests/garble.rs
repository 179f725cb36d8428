//! Garbling on random circuits and inputs against the plaintext evaluator; the builder's word
//! operations against Rust's integers; damaged material is refused or decodes to the truth.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_mpc::circuit::{Bit, Builder, Circuit, from_bits, to_bits};
use tessera_mpc::garble::{evaluate, garble};
use tessera_mpc::stream::{StreamReader, StreamWriter};

/// A random circuit over two inputs of `w` bits: `ops` random word operations, some with
/// constants, all results output.
fn random_circuit(seed: u64, w: usize, ops: usize) -> Circuit {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut b = Builder::new();
    let mut words = vec![b.input(w), b.input(w)];
    for _ in 0..ops {
        let x = words[rng.random_range(0..words.len())].clone();
        let y = if rng.random_bool(0.2) {
            b.constant(rng.random_range(-100..100), w)
        } else {
            words[rng.random_range(0..words.len())].clone()
        };
        let z = match rng.random_range(0..7) {
            0 => b.add(&x, &y),
            1 => b.sub(&x, &y),
            2 => {
                let s = b.lt_signed(&x, &y);
                b.mux_word(s, &x, &y)
            }
            3 => {
                let s = b.lt_unsigned(&x, &y);
                vec![s; w]
            }
            4 => x.iter().zip(&y).map(|(&p, &q)| b.and(p, q)).collect(),
            5 => x.iter().zip(&y).map(|(&p, &q)| b.or(p, q)).collect(),
            _ => b.shr(&x, rng.random_range(0..w), true),
        };
        words.push(z);
    }
    for wd in &words[2..] {
        b.output(wd);
    }
    b.finish().expect("valid")
}

fn run_garbled(c: &Circuit, inputs: &[Vec<bool>], seed: u64) -> Vec<bool> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut w = StreamWriter::with_max_chunk(Vec::new(), 256);
    let g = garble(c, &mut rng, &mut w).expect("garbles");
    let flat: Vec<bool> = inputs.iter().flatten().copied().collect();
    let labels = g.inputs.encode(0, &flat).expect("encode");
    let bytes = w.into_inner();
    let out = evaluate(c, &labels, &mut StreamReader::new(bytes.as_slice())).expect("evaluates");
    g.check.check(&out).expect("valid labels")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_circuits_garble_to_their_plaintext_value(seed in any::<u64>(), w in 1usize..=16, ops in 1usize..=12, a in any::<u64>(), b in any::<u64>()) {
        let c = random_circuit(seed, w, ops);
        let inputs = vec![to_bits(u128::from(a), w), to_bits(u128::from(b), w)];
        let want: Vec<bool> = c.eval(&inputs).expect("plain").into_iter().flatten().collect();
        prop_assert_eq!(run_garbled(&c, &inputs, seed ^ 1), want);
    }

    #[test]
    fn word_operations_match_integers(a in any::<i32>(), b in any::<i32>(), k in 0usize..32) {
        let mut bl = Builder::new();
        let x = bl.input(32);
        let y = bl.input(32);
        let outs = [
            bl.add(&x, &y),
            bl.sub(&x, &y),
            vec![bl.lt_unsigned(&x, &y)],
            vec![bl.lt_signed(&x, &y)],
            bl.shl(&x, k),
            bl.shr(&x, k, true),
            bl.shr(&x, k, false),
        ];
        let sel = bl.lt_signed(&x, &y);
        let m = bl.mux_word(sel, &x, &y);
        for o in outs.iter().chain([&m]) {
            bl.output(o);
        }
        let c = bl.finish().expect("valid");
        let inputs = vec![to_bits(u128::from(a as u32), 32), to_bits(u128::from(b as u32), 32)];
        let got: Vec<u128> = c.eval(&inputs).expect("eval").iter().map(|v| from_bits(v)).collect();
        let (ua, ub) = (a as u32, b as u32);
        let want = [
            u128::from(ua.wrapping_add(ub)),
            u128::from(ua.wrapping_sub(ub)),
            u128::from(ua < ub),
            u128::from(a < b),
            u128::from(ua << k),
            u128::from((a >> k) as u32),
            u128::from(ua >> k),
            u128::from(a.min(b) as u32),
        ];
        prop_assert_eq!(got, want.to_vec());
    }

    /// A flipped bit anywhere (with the checksums left as they are, or recomputed so that only
    /// the garbling stands in the way) is an error, or decodes to the true output: never a
    /// wrong value accepted, never a panic.
    #[test]
    fn damaged_material_is_refused_or_harmless(seed in any::<u64>(), pos in any::<prop::sample::Index>(), bit in 0u8..8, reseal in any::<bool>()) {
        let c = random_circuit(seed, 8, 6);
        let inputs = vec![to_bits(u128::from(seed as u8), 8), to_bits(u128::from((seed >> 8) as u8), 8)];
        let want: Vec<bool> = c.eval(&inputs).expect("plain").into_iter().flatten().collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        // One data chunk: header (36) · chunk header (16) · payload · crc · end chunk.
        let mut w = StreamWriter::with_max_chunk(Vec::new(), 1 << 20);
        let g = garble(&c, &mut rng, &mut w).expect("garbles");
        let mut bytes = w.into_inner();
        let payload = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
        let i = if reseal && payload > 0 { 52 + pos.index(payload) } else { pos.index(bytes.len()) };
        bytes[i] ^= 1 << bit;
        if reseal && payload > 0 {
            let crc = crc32fast::hash(&bytes[36..52 + payload]);
            bytes[52 + payload..56 + payload].copy_from_slice(&crc.to_le_bytes());
        }
        let flat: Vec<bool> = inputs.iter().flatten().copied().collect();
        let labels = g.inputs.encode(0, &flat).expect("encode");
        if let Ok(out) = evaluate(&c, &labels, &mut StreamReader::new(bytes.as_slice()))
            && let Ok(bits) = g.check.check(&out)
        {
            prop_assert_eq!(bits, want);
        }
    }
}

#[test]
fn constants_fold_and_cost_nothing() {
    let mut b = Builder::new();
    let x = b.input(8);
    let k = b.constant(5, 8);
    let zero = b.constant(0, 8);
    let s = b.add(&k, &zero);
    let t: Vec<Bit> = x.iter().zip(&zero).map(|(&p, &q)| b.and(p, q)).collect();
    b.output(&s);
    b.output(&t);
    let c = b.finish().expect("valid");
    assert_eq!(
        c.and_count(),
        0,
        "a sum of constants and an AND with 0 fold away"
    );
    let out = c.eval(&[to_bits(200, 8)]).expect("eval");
    assert_eq!((from_bits(&out[0]), from_bits(&out[1])), (5, 0));
    assert_eq!(run_garbled(&c, &[to_bits(200, 8)], 1), out.concat());
}

/// An evaluator returning any label but its wire's two is refused by the hashed-label check
/// (the permute-bit decoding would have read it as a bit).
#[test]
fn the_output_check_refuses_a_label_that_is_not_the_wires() {
    let c = random_circuit(7, 8, 4);
    let inputs = [to_bits(3, 8), to_bits(200, 8)];
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let mut w = StreamWriter::new(Vec::new());
    let g = garble(&c, &mut rng, &mut w).expect("garbles");
    let flat: Vec<bool> = inputs.iter().flatten().copied().collect();
    let labels = g.inputs.encode(0, &flat).expect("encode");
    let bytes = w.into_inner();
    let mut out =
        evaluate(&c, &labels, &mut StreamReader::new(bytes.as_slice())).expect("evaluates");
    assert!(g.check.check(&out).is_ok());
    out[0].0 ^= 1 << 5;
    assert!(
        g.decoding.decode(&out).is_ok(),
        "permute bits alone cannot tell"
    );
    let e = g.check.check(&out).expect_err("refused");
    assert!(matches!(e, tessera_mpc::MpcError::Cheating(_)), "{e}");
}
