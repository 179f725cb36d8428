//! Laying a circuit out in independent parts and evaluating the parts on several threads
//! changes no value: random batches of word programs (many components side by side, some
//! joined) give the same outputs in plaintext, garbled and evaluated in sequence, and garbled
//! and evaluated in parallel with any thread count; damaged material is refused by the reader
//! that enters the damaged chunk.

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_mpc::MpcError;
use tessera_mpc::circuit::{Builder, Checked, Circuit, Word};
use tessera_mpc::garble::{Garbled, evaluate_checked, garble_checked};
use tessera_mpc::parts::{evaluate_parallel, material_blocks};
use tessera_mpc::stream::{StreamReader, StreamWriter};

/// `n` independent programs over 8-bit words, the last `joined` of them also reading the
/// previous program's result (joining two components), outputs interleaved with inputs.
fn batch(ops: &[(u8, usize, usize)], n: usize, joined: usize) -> Circuit {
    let mut b = Builder::new();
    let ins: Vec<Vec<Word>> = (0..n)
        .map(|_| (0..2).map(|_| b.input(8)).collect())
        .collect();
    let mut prev: Option<Word> = None;
    let mut outs = Vec::new();
    for (k, mut words) in ins.into_iter().enumerate() {
        if k + joined >= n
            && let Some(p) = prev.clone()
        {
            words.push(p);
        }
        for &(op, i, j) in ops {
            let (x, y) = (
                words[i % words.len()].clone(),
                words[j % words.len()].clone(),
            );
            let w = match op % 5 {
                0 => b.add(&x, &y),
                1 => b.sub(&x, &y),
                2 => {
                    let lt = b.lt_signed(&x, &y);
                    b.mux_word(lt, &x, &y)
                }
                3 => x.iter().zip(&y).map(|(&p, &q)| b.and(p, q)).collect(),
                _ => x.iter().map(|&p| b.not(p)).collect(),
            };
            words.push(w);
        }
        let last = words.last().cloned().unwrap_or_default();
        outs.push(last.clone());
        prev = Some(last);
    }
    // Outputs in reverse order, plus one input passed through.
    for o in outs.iter().rev() {
        b.output(o);
    }
    if let Some(w) = b.input(3).first().copied() {
        b.output(&vec![w]);
    }
    b.finish().expect("circuit")
}

fn garble(c: &Checked, seed: u64) -> (Garbled, Vec<u8>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut w = StreamWriter::with_max_chunk(Vec::new(), 96);
    let g = garble_checked(c, &mut rng, &mut w).expect("garbles");
    (g, w.into_inner())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parts_evaluate_like_the_whole(
        ops in proptest::collection::vec((any::<u8>(), 0usize..8, 0usize..8), 1..8),
        n in 1usize..12,
        joined in 0usize..4,
        parts in 1usize..10,
        xs in proptest::collection::vec(any::<bool>(), 200),
        seed in any::<u64>(),
    ) {
        let c = batch(&ops, n, joined);
        let bits: Vec<bool> = (0..c.input_bits()).map(|i| xs[i % xs.len()] ^ (i % 7 == 3)).collect();
        let mut at = 0;
        let grouped: Vec<Vec<bool>> = c.inputs.iter().map(|g| { at += g.len(); bits[at - g.len()..at].to_vec() }).collect();
        let want: Vec<bool> = c.eval(&grouped).expect("eval").into_iter().flatten().collect();
        let laid = Checked::with_parts(c.clone(), parts).expect("valid");
        prop_assert!(laid.parts().len() <= parts.max(1));
        prop_assert_eq!(laid.and_count(), c.and_count());
        let plain: Vec<bool> = laid.eval(&grouped).expect("eval").into_iter().flatten().collect();
        prop_assert_eq!(&plain, &want);
        // Parts tile the gates, the ANDs and the slots, in order.
        let (mut g, mut s, mut a) = (0usize, 0u32, 0u64);
        for p in laid.parts() {
            prop_assert_eq!(p.gates.start, g);
            prop_assert_eq!(p.slots.start, s);
            prop_assert_eq!(p.first_and, a);
            g = p.gates.end;
            s = p.slots.end;
            a += laid.gates[p.gates.clone()].iter().filter(|x| matches!(x, tessera_mpc::Gate::And { .. })).count() as u64;
        }
        prop_assert_eq!(g, laid.gates.len());
        prop_assert_eq!(s as usize, laid.wires);
        let (gb, bytes) = garble(&laid, seed);
        let labels = gb.inputs.encode(0, &bits).expect("encodes");
        let seq = evaluate_checked(&laid, &labels, &mut StreamReader::new(bytes.as_slice())).expect("evaluates");
        prop_assert_eq!(&gb.check.check(&seq).expect("checks"), &want);
        for threads in [1, 2, 3, 8] {
            let par = evaluate_parallel(&laid, &labels, &bytes, threads).expect("evaluates");
            prop_assert_eq!(&par, &seq);
        }
    }
}

fn sample() -> (Checked, Garbled, Vec<u8>) {
    let ops = [(0u8, 0usize, 1usize), (2, 2, 0), (3, 3, 1), (1, 4, 2)];
    let c = Checked::with_parts(batch(&ops, 16, 0), 4).expect("valid");
    assert_eq!(c.parts().len(), 4);
    let (g, bytes) = garble(&c, 9);
    (c, g, bytes)
}

#[test]
fn a_large_batch_is_split_into_balanced_parts() {
    let (c, _, _) = sample();
    let ands: Vec<usize> = c
        .parts()
        .iter()
        .map(|p| {
            c.gates[p.gates.clone()]
                .iter()
                .filter(|g| matches!(g, tessera_mpc::Gate::And { .. }))
                .count()
        })
        .collect();
    // 16 equal programs in 4 parts: 4 each.
    assert!(ands.iter().all(|&a| a == ands[0]), "{ands:?}");
}

#[test]
fn a_damaged_chunk_is_refused_by_the_part_that_reads_it() {
    let (c, g, mut bytes) = sample();
    let labels = g
        .inputs
        .encode(0, &vec![true; c.input_bits()])
        .expect("encodes");
    // The last part's first table: its chunk (96-byte chunks, 116 bytes each with framing).
    let last = c.parts().last().expect("parts");
    let chunk = (last.first_block * 16 / 96) as usize;
    let at = 36 + chunk * 116 + 16 + 5;
    bytes[at] ^= 1;
    match evaluate_parallel(&c, &labels, &bytes, 4) {
        Err(MpcError::Stream(m)) => assert!(m.contains("fails its checksum"), "{m}"),
        other => panic!("damaged material accepted: {other:?}"),
    }
}

#[test]
fn material_of_the_wrong_length_is_refused_before_any_work() {
    let (c, g, bytes) = sample();
    let labels = g
        .inputs
        .encode(0, &vec![false; c.input_bits()])
        .expect("encodes");
    let err = |b: &[u8]| match evaluate_parallel(&c, &labels, b, 2) {
        Err(MpcError::Stream(m)) => m,
        other => panic!("accepted: {other:?}"),
    };
    assert!(err(&bytes[..bytes.len() - 3]).contains("truncated"));
    let mut long = bytes.clone();
    long.push(0);
    assert!(err(&long).contains("after the end chunk"));
    // Material of another circuit (one program fewer).
    let ops = [(0u8, 0usize, 1usize), (2, 2, 0), (3, 3, 1), (1, 4, 2)];
    let other = Checked::with_parts(batch(&ops, 15, 0), 4).expect("valid");
    let (_, other_bytes) = garble(&other, 9);
    assert_ne!(material_blocks(&other), material_blocks(&c));
    assert!(err(&other_bytes).contains("for a circuit that reads"));
}
