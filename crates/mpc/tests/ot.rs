//! Oblivious transfer: base OT, the IKNP correlated extension with the garbler's Δ, chosen and
//! random OT on top, derandomized precomputed COT; the sender's view of the choices; malformed
//! and short messages.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_mpc::MpcError;
use tessera_mpc::block::Block;
use tessera_mpc::ot::iknp::{
    CotReceiver, CotSender, derandomize_choices, derandomize_receive, derandomize_send,
};
use tessera_mpc::ot::{Channel, MemChannel, base, duplex};

fn both<A: Send, B: Send>(
    a: impl FnOnce(&mut MemChannel) -> A + Send,
    b: impl FnOnce(&mut MemChannel) -> B + Send,
) -> (A, B) {
    let (mut x, mut y) = duplex();
    std::thread::scope(|s| {
        let h = s.spawn(move || a(&mut x));
        let rb = b(&mut y);
        (h.join().expect("thread"), rb)
    })
}

#[test]
fn base_ot_gives_the_receiver_exactly_its_chosen_keys() {
    let choices: Vec<bool> = (0..128).map(|i| i % 3 == 0).collect();
    let (keys, got) = both(
        |ch| base::send(ch, &mut ChaCha20Rng::seed_from_u64(1), b"sid", 128).expect("send"),
        |ch| {
            base::receive(ch, &mut ChaCha20Rng::seed_from_u64(2), b"sid", &choices)
                .expect("receive")
        },
    );
    for (i, ((k, g), &c)) in keys.iter().zip(&got).zip(&choices).enumerate() {
        assert_eq!(*g, k[usize::from(c)], "instance {i}");
        assert_ne!(*g, k[usize::from(!c)], "instance {i}");
    }
}

/// Δ, the receiver's choices per call, the sender's q's and the receiver's t's per call.
type CotRun = (Block, Vec<Vec<bool>>, Vec<Vec<Block>>, Vec<Vec<Block>>);

fn cot(m: usize, calls: usize, seed: u64) -> CotRun {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let delta = Block(rng.random::<u128>() | 1);
    let rs: Vec<Vec<bool>> = (0..calls)
        .map(|_| (0..m).map(|_| rng.random()).collect())
        .collect();
    let rs2 = rs.clone();
    let (qs, ts) = both(
        move |ch| {
            let mut s =
                CotSender::setup(ch, &mut ChaCha20Rng::seed_from_u64(seed + 1), b"cot", delta)
                    .expect("setup");
            (0..calls)
                .map(|_| s.extend(ch, m).expect("extend"))
                .collect::<Vec<_>>()
        },
        move |ch| {
            let mut r = CotReceiver::setup(ch, &mut ChaCha20Rng::seed_from_u64(seed + 2), b"cot")
                .expect("setup");
            rs2.iter()
                .map(|r_i| r.extend(ch, r_i).expect("extend"))
                .collect::<Vec<_>>()
        },
    );
    (delta, rs, qs, ts)
}

#[test]
fn correlated_ot_carries_the_garblers_delta() {
    for (m, calls) in [(128, 1), (1000, 3), (4096, 2)] {
        let (delta, rs, qs, ts) = cot(m, calls, m as u64);
        for c in 0..calls {
            for j in 0..m {
                assert_eq!(
                    ts[c][j],
                    qs[c][j] ^ delta.and_bit(rs[c][j]),
                    "call {c} OT {j}"
                );
            }
        }
        // Later calls continue the key streams: no two calls share a q.
        if calls > 1 {
            assert_ne!(qs[0][0], qs[1][0]);
        }
    }
}

#[test]
fn chosen_random_and_derandomized_ot() {
    let m = 300;
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let delta = Block(rng.random::<u128>() | 1);
    let r: Vec<bool> = (0..m).map(|_| rng.random()).collect();
    let b: Vec<bool> = (0..m).map(|_| rng.random()).collect();
    let msgs: Vec<[Block; 2]> = (0..m)
        .map(|_| [Block(rng.random()), Block(rng.random())])
        .collect();
    let zero: Vec<Block> = (0..m).map(|_| Block(rng.random())).collect();
    let (r2, b2, msgs2, zero2) = (r.clone(), b.clone(), msgs.clone(), zero.clone());
    let (sender_random, (chosen, receiver_random, labels)) = both(
        move |ch| {
            let mut s = CotSender::setup(ch, &mut ChaCha20Rng::seed_from_u64(10), b"ot", delta)
                .expect("setup");
            let qs = s.extend(ch, m).expect("extend");
            s.send_chosen(ch, &qs, 0, &msgs2).expect("chosen");
            let random = s.random(&qs, 0);
            // Precomputed random COT, derandomized online.
            let qs2 = s.extend(ch, m).expect("extend");
            let d = ch.recv().expect("d");
            ch.send(
                derandomize_send(&qs2, delta, &zero2, &d)
                    .expect("z")
                    .iter()
                    .flat_map(|z| z.to_bytes())
                    .collect(),
            )
            .expect("send z");
            random
        },
        move |ch| {
            let mut rc =
                CotReceiver::setup(ch, &mut ChaCha20Rng::seed_from_u64(11), b"ot").expect("setup");
            let ts = rc.extend(ch, &r2).expect("extend");
            let chosen = rc.receive_chosen(ch, &ts, 0, &r2).expect("chosen");
            let random = rc.random(&ts, 0);
            let ts2 = rc.extend(ch, &r2).expect("extend");
            ch.send(derandomize_choices(&b2, &r2).expect("d"))
                .expect("send d");
            let z = ch.recv().expect("z");
            let zs: Vec<Block> = z
                .chunks_exact(16)
                .map(|c| Block::from_bytes(c.try_into().expect("16")))
                .collect();
            (
                chosen,
                random,
                derandomize_receive(&ts2, &zs).expect("labels"),
            )
        },
    );
    for j in 0..m {
        let c = usize::from(r[j]);
        assert_eq!(chosen[j], msgs[j][c], "chosen OT {j}");
        assert_eq!(receiver_random[j], sender_random[j][c], "random OT {j}");
        assert_eq!(
            labels[j],
            zero[j] ^ delta.and_bit(b[j]),
            "derandomized OT {j}"
        );
    }
}

/// A channel that keeps a copy of every message it receives (the sender's view).
struct Recording {
    inner: MemChannel,
    seen: Vec<Vec<u8>>,
}

impl Channel for Recording {
    fn send(&mut self, msg: Vec<u8>) -> Result<(), MpcError> {
        self.inner.send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>, MpcError> {
        let m = self.inner.recv()?;
        self.seen.push(m.clone());
        Ok(m)
    }
}

/// With all-zero and all-one choices the sender sees messages whose bits are balanced to within
/// 10 standard deviations, and equally so: its view does not depend on the choices.
#[test]
fn the_senders_view_is_independent_of_the_choices() {
    let m = 8192;
    let mut ones = Vec::new();
    for choice in [false, true] {
        let (x, mut y) = duplex();
        let seen = std::thread::scope(|s| {
            let h = s.spawn(move || {
                let mut rec = Recording {
                    inner: x,
                    seen: Vec::new(),
                };
                let mut snd = CotSender::setup(
                    &mut rec,
                    &mut ChaCha20Rng::seed_from_u64(21),
                    b"view",
                    Block(3),
                )
                .expect("setup");
                snd.extend(&mut rec, m).expect("extend");
                rec.seen
            });
            let mut rcv = CotReceiver::setup(&mut y, &mut ChaCha20Rng::seed_from_u64(22), b"view")
                .expect("setup");
            rcv.extend(&mut y, &vec![choice; m]).expect("extend");
            h.join().expect("thread")
        });
        let u = seen.last().expect("the extension message");
        let bits = (u.len() * 8) as f64;
        let one = u.iter().map(|b| b.count_ones() as f64).sum::<f64>() / bits;
        let sd = (0.25 / bits).sqrt();
        assert!(
            (one - 0.5).abs() < 10.0 * sd,
            "choices all {choice}: ones fraction {one}"
        );
        ones.push(one);
    }
    assert!((ones[0] - ones[1]).abs() < 10.0 * (0.5 / (128.0 * m as f64)).sqrt());
}

#[test]
fn malformed_and_short_messages_are_errors() {
    // A sender point that is not a point, the identity, or cut short.
    for bad in [vec![0xffu8; 32], vec![0u8; 32], vec![1u8; 31]] {
        let (mut x, mut y) = duplex();
        x.send(bad).expect("send");
        let e = base::receive(&mut y, &mut ChaCha20Rng::seed_from_u64(1), b"s", &[true])
            .expect_err("refused");
        assert!(matches!(e, MpcError::Protocol(_)), "{e}");
    }
    // Too few receiver points.
    let (mut x, mut y) = duplex();
    y.send(vec![0u8; 64]).expect("send");
    let e = base::send(&mut x, &mut ChaCha20Rng::seed_from_u64(1), b"s", 3).expect_err("refused");
    assert!(e.to_string().contains("receiver points"), "{e}");
    // A short extension message.
    let (res, _) = both(
        |ch| {
            let mut s = CotSender::setup(ch, &mut ChaCha20Rng::seed_from_u64(3), b"x", Block(1))
                .expect("setup");
            s.extend(ch, 256).map(|_| ())
        },
        |ch| {
            let _r =
                CotReceiver::setup(ch, &mut ChaCha20Rng::seed_from_u64(4), b"x").expect("setup");
            ch.send(vec![0u8; 100]).expect("send");
        },
    );
    let e = res.expect_err("refused");
    assert!(e.to_string().contains("extension columns"), "{e}");
}

/// A channel that flips one bit in row 0 of the first message of `len` bytes it carries (a
/// receiver sending inconsistent columns: the message is well-formed, so only the KOS check can
/// object; row 0 is used because Δ's bit 0 is 1, so the flip reaches the sender's output).
struct Flip {
    inner: MemChannel,
    len: usize,
    done: bool,
}

impl Channel for Flip {
    fn send(&mut self, mut msg: Vec<u8>) -> Result<(), MpcError> {
        if !self.done && msg.len() == self.len {
            msg[5] ^= 0x10;
            self.done = true;
        }
        self.inner.send(msg)
    }
    fn recv(&mut self) -> Result<Vec<u8>, MpcError> {
        self.inner.recv()
    }
}

#[test]
fn the_kos_check_passes_honest_extensions_and_refuses_inconsistent_columns() {
    let m = 1000;
    let delta = Block(0x1234_5678_9abc_def0_0fed_cba9_8765_4321 | 1);
    let r: Vec<bool> = (0..m).map(|j| j % 5 == 1).collect();
    let r2 = r.clone();
    let (qs, ts) = both(
        move |ch| {
            let mut s = CotSender::setup(ch, &mut ChaCha20Rng::seed_from_u64(31), b"kos", delta)
                .expect("setup")
                .with_consistency_check();
            s.extend(ch, m).expect("an honest extension passes")
        },
        move |ch| {
            let mut rc = CotReceiver::setup(ch, &mut ChaCha20Rng::seed_from_u64(32), b"kos")
                .expect("setup")
                .with_consistency_check();
            rc.extend(ch, &r2).expect("extend")
        },
    );
    for j in 0..m {
        assert_eq!(ts[j], qs[j] ^ delta.and_bit(r[j]));
    }
    // The receiver's column message for m + 256 OTs (padded to 1280): 128 rows of 160 bytes.
    let (mut x, y) = duplex();
    let mut flip = Flip {
        inner: y,
        len: 128 * 1280 / 8,
        done: false,
    };
    let (res, _) = std::thread::scope(|s| {
        let h = s.spawn(move || {
            let mut rc = CotReceiver::setup(&mut flip, &mut ChaCha20Rng::seed_from_u64(34), b"kos")
                .expect("setup")
                .with_consistency_check();
            let _ = rc.extend(&mut flip, &vec![true; m]);
        });
        let mut snd = CotSender::setup(&mut x, &mut ChaCha20Rng::seed_from_u64(33), b"kos", delta)
            .expect("setup")
            .with_consistency_check();
        let res = snd.extend(&mut x, m);
        drop(x);
        (res, h.join())
    });
    let e = res.expect_err("refused");
    assert!(matches!(e, MpcError::Cheating(_)), "{e}");
}
