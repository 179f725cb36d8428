//! Renumbering a circuit's wires to reuse slots (what `Checked::new` does) changes no value:
//! random word programs evaluate the same before and after, in plaintext and garbled, on fewer
//! wires.

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_mpc::circuit::{Builder, Checked, Word, compact};
use tessera_mpc::garble::{evaluate_checked, garble_checked};
use tessera_mpc::stream::{StreamReader, StreamWriter};

fn program(ops: &[(u8, usize, usize)], width: usize) -> tessera_mpc::circuit::Circuit {
    let mut b = Builder::new();
    let mut words: Vec<Word> = (0..3).map(|_| b.input(width)).collect();
    for &(op, i, j) in ops {
        let (x, y) = (
            words[i % words.len()].clone(),
            words[j % words.len()].clone(),
        );
        let w = match op % 6 {
            0 => b.add(&x, &y),
            1 => b.sub(&x, &y),
            2 => {
                let lt = b.lt_signed(&x, &y);
                b.mux_word(lt, &x, &y)
            }
            3 => x.iter().zip(&y).map(|(&p, &q)| b.and(p, q)).collect(),
            4 => x.iter().zip(&y).map(|(&p, &q)| b.xor(p, q)).collect(),
            _ => x.iter().map(|&p| b.not(p)).collect(),
        };
        words.push(w);
    }
    // Outputs: the last word and one input (an input that is also an output).
    let last = words.last().cloned().unwrap_or_default();
    b.output(&last);
    b.output(&words[1].clone());
    b.finish().expect("circuit")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compaction_keeps_every_output(ops in proptest::collection::vec((any::<u8>(), 0usize..64, 0usize..64), 1..24), xs in proptest::collection::vec(any::<u16>(), 3), seed in any::<u64>()) {
        let c = program(&ops, 12);
        let inputs: Vec<Vec<bool>> = xs.iter().map(|&v| (0..12).map(|k| (v >> k) & 1 == 1).collect()).collect();
        let want = c.eval(&inputs).expect("eval");
        let small = compact(c.clone());
        prop_assert!(small.wires <= c.wires);
        prop_assert_eq!(small.and_count(), c.and_count());
        prop_assert_eq!(&small.eval(&inputs).expect("eval"), &want);
        let checked = Checked::new(c).expect("valid");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut w = StreamWriter::new(Vec::new());
        let g = garble_checked(&checked, &mut rng, &mut w).expect("garbles");
        let flat: Vec<bool> = inputs.iter().flatten().copied().collect();
        let labels = g.inputs.encode(0, &flat).expect("encodes");
        let bytes = w.into_inner();
        let out = evaluate_checked(&checked, &labels, &mut StreamReader::new(bytes.as_slice())).expect("evaluates");
        let bits = g.check.check(&out).expect("checks");
        let flat_want: Vec<bool> = want.iter().flatten().copied().collect();
        prop_assert_eq!(bits, flat_want);
    }
}
