//! Training through a worker in another thread over TCP (the runtime's channel) gives the same
//! steps as the in-process worker.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use tessera_asym::service::{ChannelLink, serve_asym_worker_tcp, setup_worker};
use tessera_asym::{AsymOptions, LocalWorker, RankRule, TrainOptions, Trainer};
use tessera_model::{Graph, GraphBuilder, Tensor};
use tessera_runtime::ChannelOptions;

fn cnn() -> Graph {
    let mut b = GraphBuilder::new("remote-cnn", 5);
    let mut x = b.input("input", vec![4, 3, 12, 12]).unwrap();
    x = b.conv(x, 8, 3, 1, 1).unwrap();
    x = b.relu(x).unwrap();
    x = b.max_pool(x, 2, 2).unwrap();
    x = b.conv(x, 8, 3, 1, 1).unwrap();
    x = b.relu(x).unwrap();
    x = b.flatten(x).unwrap();
    let y = b.dense(x, 5).unwrap();
    b.finish(vec![y]).unwrap()
}

fn batch(step: usize) -> (Tensor, Vec<usize>) {
    let n = 4 * 3 * 12 * 12;
    let x = (0..n)
        .map(|i| (((i * 37 + step * 101) % 97) as f32) / 97.0 - 0.5)
        .collect();
    (
        Tensor::new(vec![4, 3, 12, 12], x).unwrap(),
        (0..4).map(|i| (i + step) % 5).collect(),
    )
}

#[test]
fn remote_training_matches_local() {
    let g = cnn();
    let split = AsymOptions {
        rank: RankRule::Fixed(2),
        skip_unprofitable: false,
        ..AsymOptions::default()
    };
    let opts = TrainOptions {
        lr: 0.05,
        momentum: 0.9,
        split: Some(split.clone()),
    };
    let mut local = Trainer::new(&g, opts.clone()).unwrap();
    let mut lw = LocalWorker::new(local.plan().worker_layers());
    let server = serve_asym_worker_tcp(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        ChannelOptions::default(),
    )
    .unwrap();
    let mut ch = setup_worker(
        &g,
        &split,
        TcpStream::connect(server.addr()).unwrap(),
        ChannelOptions::default(),
    )
    .unwrap();
    let ns = AtomicU64::new(0);
    let mut remote = Trainer::new(&g, opts).unwrap();
    assert!(
        local.plan().worker_layers().len() >= 2,
        "the test needs split layers"
    );
    for step in 0..3 {
        let (x, y) = batch(step);
        let a = local.step(&x, &y, Some(&mut lw)).unwrap();
        let mut link = ChannelLink::new(&mut ch, &ns);
        let b = remote.step(&x, &y, Some(&mut link)).unwrap();
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * a.loss.abs().max(1.0),
            "step {step}: {} vs {}",
            a.loss,
            b.loss
        );
    }
    let (x, _) = batch(9);
    let ya = tessera_engine::run_f32(local.graph(), std::slice::from_ref(&x)).unwrap();
    let yb = tessera_engine::run_f32(remote.graph(), std::slice::from_ref(&x)).unwrap();
    for (p, q) in ya[0].data().iter().zip(yb[0].data()) {
        assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{p} vs {q}");
    }
    assert!(
        ch.counters().snapshot().2 > 6,
        "forward, backward and updates crossed the wire"
    );
}

/// What the worker is sent at setup: the architecture and the weights of the layers it computes,
/// nothing of the layers kept in the enclave (the head's weights arrive as zeros), and no seed.
/// A stand-in worker records the setup message; the real worker runs on it in
/// `remote_training_matches_local`.
#[test]
fn the_worker_setup_carries_no_head_weights_and_no_seed() {
    use tessera_asym::service::ToAsymWorker;
    use tessera_model::ir::Op;
    use tessera_runtime::channel::{Channel, Role};
    let g = cnn();
    let split = AsymOptions {
        rank: RankRule::Fixed(2),
        skip_unprofitable: false,
        seed: 0xfeed_beef,
        ..AsymOptions::default()
    };
    let (a, b) = tessera_runtime::transport::duplex();
    let fake = std::thread::spawn(move || {
        let mut ch = Channel::new(b, ChannelOptions::default()).expect("channel");
        ch.handshake(Role::Worker, &[Role::Enclave])
            .expect("handshake");
        ch.recv::<ToAsymWorker>().expect("setup message")
    });
    // The stand-in never answers, so the enclave's setup ends in an error; the message is what
    // counts here.
    let _ = setup_worker(&g, &split, a, ChannelOptions::default());
    let ToAsymWorker::Setup {
        model_onnx,
        options,
    } = fake.join().expect("fake worker")
    else {
        panic!("the first message is not Setup");
    };
    assert_eq!(options.seed, 0, "the enclave's seed never leaves it");
    let sent = tessera_model::import_model(&model_onnx, &Default::default()).expect("imports");
    let weights = |g: &Graph, i: usize| match &g.nodes[i].op {
        Op::Conv(c) => Some(c.weight.data().to_vec()),
        Op::Dense(d) => Some(d.weight.data().to_vec()),
        _ => None,
    };
    let plan = tessera_asym::Plan::new(&g, &split).expect("plan");
    let mut seen_head = false;
    for l in plan.layers() {
        let (Some(orig), Some(got)) = (weights(&g, l.node), weights(&sent, l.node)) else {
            panic!("layer {} is not linear in both graphs", l.name);
        };
        match l.placement {
            tessera_asym::Placement::Split(_) => assert_eq!(got, orig, "{}", l.name),
            _ => {
                assert!(orig.iter().any(|&w| w != 0.0));
                assert!(
                    got.iter().all(|&w| w == 0.0),
                    "{} reached the worker",
                    l.name
                );
                seen_head = true;
            }
        }
    }
    assert!(seen_head, "the head stays in the enclave");
}

/// A grouped convolution is kept whole in the enclave and trains there: one step on a network
/// with one gives the same loss and the same updated weights as the equivalent network with
/// that layer as an ordinary convolution whose weights are block-diagonal (the blocks equal to
/// the groups' weights), both unsplit and through the split.
#[test]
fn grouped_convolutions_train_in_the_enclave() {
    use tessera_model::ir::Op;
    let mut b = GraphBuilder::new("grouped", 3);
    let mut x = b.input("input", vec![4, 4, 8, 8]).unwrap();
    x = b.conv(x, 4, 3, 1, 1).unwrap();
    x = b.relu(x).unwrap();
    x = b.conv_grouped(x, 8, 3, 1, 1, 2).unwrap();
    x = b.relu(x).unwrap();
    x = b.flatten(x).unwrap();
    let y = b.dense(x, 5).unwrap();
    let grouped = b.finish(vec![y]).unwrap();
    // The same layer as a groups = 1 convolution with block-diagonal weights.
    let mut full = grouped.clone();
    let gi = full
        .nodes
        .iter()
        .position(|n| matches!(&n.op, Op::Conv(c) if c.groups == 2))
        .unwrap();
    let Op::Conv(c) = &mut full.nodes[gi].op else {
        unreachable!()
    };
    let (co, cg, kk) = (8, 2, 9);
    let mut w = vec![0f32; co * 4 * kk];
    for o in 0..co {
        let g = o / 4;
        for i in 0..cg {
            for t in 0..kk {
                w[(o * 4 + g * cg + i) * kk + t] = c.weight.data()[(o * cg + i) * kk + t];
            }
        }
    }
    c.weight = Tensor::new(vec![co, 4, 3, 3], w).unwrap();
    c.groups = 1;
    let (xb, labels) = {
        let n = 4 * 4 * 8 * 8;
        let v = (0..n)
            .map(|i| ((i * 29 % 83) as f32) / 83.0 - 0.4)
            .collect();
        (Tensor::new(vec![4, 4, 8, 8], v).unwrap(), vec![0, 3, 1, 4])
    };
    for split in [
        None,
        Some(AsymOptions {
            rank: RankRule::Fixed(2),
            skip_unprofitable: false,
            ..AsymOptions::default()
        }),
    ] {
        let opts = TrainOptions {
            lr: 0.1,
            momentum: 0.0,
            split: split.clone(),
        };
        let mut a = Trainer::new(&grouped, opts.clone()).unwrap();
        let mut b = Trainer::new(&full, opts).unwrap();
        let (mut wa, mut wb) = (
            LocalWorker::new(a.plan().worker_layers()),
            LocalWorker::new(b.plan().worker_layers()),
        );
        let (la, lb) = if split.is_some() {
            (
                a.step(&xb, &labels, Some(&mut wa)).unwrap(),
                b.step(&xb, &labels, Some(&mut wb)).unwrap(),
            )
        } else {
            (
                a.step(&xb, &labels, None).unwrap(),
                b.step(&xb, &labels, None).unwrap(),
            )
        };
        assert!(
            (la.loss - lb.loss).abs() < 1e-5,
            "{} vs {}",
            la.loss,
            lb.loss
        );
        let close = |p: &[f32], q: &[f32], what: &str| {
            assert_eq!(p.len(), q.len());
            for (u, v) in p.iter().zip(q) {
                assert!(
                    (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                    "{what}: {u} vs {v}"
                );
            }
        };
        let (ga, gb) = (a.graph(), b.graph());
        for (i, (na, nb)) in ga.nodes.iter().zip(&gb.nodes).enumerate() {
            match (&na.op, &nb.op) {
                (Op::Conv(ca), Op::Conv(cb)) if i == gi => {
                    // The groups' updated weights are the diagonal blocks of the full layer's.
                    for o in 0..co {
                        let g = o / 4;
                        let got = &ca.weight.data()[o * cg * kk..(o + 1) * cg * kk];
                        let want =
                            &cb.weight.data()[(o * 4 + g * cg) * kk..(o * 4 + g * cg + cg) * kk];
                        close(got, want, "grouped weights");
                    }
                    close(
                        ca.bias.as_ref().unwrap().data(),
                        cb.bias.as_ref().unwrap().data(),
                        "grouped bias",
                    );
                }
                // The layer before it learns through the grouped layer's input gradient.
                (Op::Conv(ca), Op::Conv(cb)) => close(ca.weight.data(), cb.weight.data(), "conv"),
                (Op::Dense(da), Op::Dense(db)) => {
                    close(da.weight.data(), db.weight.data(), "dense")
                }
                _ => {}
            }
        }
    }
}
