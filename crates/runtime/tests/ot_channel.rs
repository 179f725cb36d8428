//! The OT protocols over the runtime's framed channel: correlated OTs with the garbler's Δ
//! between two channels on an in-process duplex, and a frame over the size limit refused.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tessera_mpc::Block;
use tessera_mpc::ot::iknp::{CotReceiver, CotSender};
use tessera_runtime::channel::{Channel, ChannelOptions, Role};
use tessera_runtime::duplex;

fn pair(max_frame: usize) -> (Channel, Channel) {
    let (a, b) = duplex();
    let opts = ChannelOptions {
        max_frame,
        ..ChannelOptions::default()
    };
    let mut x = Channel::new(a, opts).expect("channel");
    let mut y = Channel::new(b, opts).expect("channel");
    std::thread::scope(|s| {
        let h = s.spawn(|| x.handshake(Role::Enclave, &[Role::Client]).map(|_| ()));
        y.handshake(Role::Client, &[Role::Enclave])
            .expect("handshake");
        h.join().expect("thread").expect("handshake");
    });
    (x, y)
}

#[test]
fn correlated_ot_runs_over_the_framed_channel() {
    let (mut x, mut y) = pair(1 << 22);
    let delta = Block(0xdead_beef_0000_0001);
    let r: Vec<bool> = (0..5000).map(|j| j % 7 == 2).collect();
    let (qs, ts) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut snd =
                CotSender::setup(&mut x, &mut ChaCha20Rng::seed_from_u64(1), b"rt", delta)
                    .expect("setup")
                    .with_consistency_check();
            snd.extend(&mut x, r.len()).expect("extend")
        });
        let mut rcv = CotReceiver::setup(&mut y, &mut ChaCha20Rng::seed_from_u64(2), b"rt")
            .expect("setup")
            .with_consistency_check();
        let ts = rcv.extend(&mut y, &r).expect("extend");
        (h.join().expect("thread"), ts)
    });
    for (j, &b) in r.iter().enumerate() {
        assert_eq!(ts[j], qs[j] ^ delta.and_bit(b));
    }
    assert!(
        x.counters().snapshot().1 > 16 * 5000,
        "the columns crossed the channel"
    );
}

#[test]
fn an_extension_message_over_the_frame_limit_is_refused() {
    // One sub-batch of columns is 256 kB: over a 64 kB frame limit the receiver cannot send it.
    let (mut x, mut y) = pair(1 << 16);
    let res = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let _ = CotSender::setup(&mut x, &mut ChaCha20Rng::seed_from_u64(3), b"rt", Block(1))
                .and_then(|mut snd| snd.extend(&mut x, 1 << 14));
        });
        let res = CotReceiver::setup(&mut y, &mut ChaCha20Rng::seed_from_u64(4), b"rt")
            .and_then(|mut rcv| rcv.extend(&mut y, &vec![true; 1 << 14]));
        drop(y);
        let _ = h.join();
        res
    });
    let e = res.expect_err("refused");
    assert!(e.to_string().contains("exceeds the maximum"), "{e}");
}
