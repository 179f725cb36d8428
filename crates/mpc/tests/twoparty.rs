//! Garbling and OT together, as the `2pc` scheme will use them: the evaluator's input labels
//! are its outputs of a correlated OT whose offset is the garbler's Δ (the garbler garbles with
//! the OT's blocks as the 0-labels), over a garbled 32-bit compare-and-select, with the garbled
//! material streamed between two threads through a pipe.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_mpc::block::Block;
use tessera_mpc::circuit::{Builder, Checked, from_bits, to_bits};
use tessera_mpc::garble::{evaluate_checked, garble_with};
use tessera_mpc::ot::duplex;
use tessera_mpc::ot::iknp::{CotReceiver, CotSender};
use tessera_mpc::stream::{StreamReader, StreamWriter};

#[test]
fn the_evaluators_labels_come_from_correlated_ot() {
    // max(a, b) of the garbler's a and the evaluator's b (signed 32-bit), and a + b.
    let mut b = Builder::new();
    let x = b.input(32);
    let y = b.input(32);
    let lt = b.lt_signed(&x, &y);
    let m = b.mux_word(lt, &y, &x);
    let s = b.add(&x, &y);
    b.output(&m);
    b.output(&s);
    let c = Checked::new(b.finish().expect("circuit")).expect("valid");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for _ in 0..4 {
        let (ga, eb): (i32, i32) = (rng.random(), rng.random());
        let delta = Block(rng.random::<u128>() | 1);
        let e_bits = to_bits(u128::from(eb as u32), 32);
        let e_bits2 = e_bits.clone();
        let (pipe_r, pipe_w) = std::io::pipe().expect("pipe");
        let (mut gch, mut ech) = duplex();
        let c2 = c.clone();
        let seed = rng.random::<u64>();
        let got = std::thread::scope(|sc| {
            let garbler = sc.spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(seed);
                let mut cot = CotSender::setup(&mut gch, &mut rng, b"2pc", delta).expect("setup");
                let qs = cot.extend(&mut gch, 32).expect("cot");
                let own: Vec<Block> = (0..32).map(|_| Block(rng.random())).collect();
                let zero: Vec<Block> = own.iter().chain(&qs).copied().collect();
                let mut w = StreamWriter::new(pipe_w);
                let g = garble_with(&c2, delta, zero, &mut rng, &mut w).expect("garbles");
                drop(w);
                // The garbler's own input labels.
                let mine = g
                    .inputs
                    .encode(0, &to_bits(u128::from(ga as u32), 32))
                    .expect("encode");
                gch.send_blocks(&mine);
                let out = gch.recv_blocks();
                g.check
                    .check(&out)
                    .expect("the evaluator's labels are valid")
            });
            let mut rc =
                CotReceiver::setup(&mut ech, &mut ChaCha20Rng::seed_from_u64(seed ^ 7), b"2pc")
                    .expect("setup");
            let theirs = rc.extend(&mut ech, &e_bits2).expect("cot");
            let mine = ech.recv_blocks();
            let inputs: Vec<Block> = mine.into_iter().chain(theirs).collect();
            let out =
                evaluate_checked(&c, &inputs, &mut StreamReader::new(pipe_r)).expect("evaluates");
            ech.send_blocks(&out);
            garbler.join().expect("thread")
        });
        assert_eq!(from_bits(&got[..32]) as u32 as i32, ga.max(eb));
        assert_eq!(
            from_bits(&got[32..]) as u32,
            (ga as u32).wrapping_add(eb as u32)
        );
        let _ = e_bits;
    }
}

trait Blocks {
    fn send_blocks(&mut self, b: &[Block]);
    fn recv_blocks(&mut self) -> Vec<Block>;
}

impl<C: tessera_mpc::ot::Channel> Blocks for C {
    fn send_blocks(&mut self, b: &[Block]) {
        self.send(b.iter().flat_map(|x| x.to_bytes()).collect())
            .expect("send");
    }
    fn recv_blocks(&mut self) -> Vec<Block> {
        self.recv()
            .expect("recv")
            .chunks_exact(16)
            .map(|c| Block::from_bytes(c.try_into().expect("16")))
            .collect()
    }
}
