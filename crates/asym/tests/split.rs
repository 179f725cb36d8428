//! The split equals the unsplit float model; training through it tracks unsplit training.

use tessera_asym::{
    AsymError, AsymOptions, Basis, DecompOptions, LocalWorker, Placement, Plan, RankRule,
    TrainOptions, Trainer, WorkerGrads, WorkerLink, infer, rebatch,
};
use tessera_data::{load_pb, shared_data};
use tessera_engine::run_f32;
use tessera_model::ir::Op;
use tessera_model::{Graph, GraphBuilder, ImportOptions, Tensor, builders, load_model};

fn rand_input(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * scale
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = b.data().iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0f32, f32::max)
}

fn split_vs_float(g: &Graph, x: &Tensor, opts: &AsymOptions) -> (f32, tessera_asym::Inference) {
    let plan = Plan::new(g, opts).unwrap();
    let mut w = LocalWorker::new(plan.worker_layers());
    let got = infer(&plan, x, Some(&mut w), 0).unwrap();
    let want = run_f32(g, std::slice::from_ref(x)).unwrap();
    (max_rel(&got.outputs[0], &want[0]), got)
}

fn rules() -> Vec<AsymOptions> {
    [
        RankRule::Schedule { start: 2, cap: 32 },
        RankRule::Fixed(3),
        RankRule::Energy {
            threshold: 0.1,
            max_rank: 32,
        },
    ]
    .into_iter()
    .flat_map(|rank| {
        [Basis::PerSample, Basis::Batch].map(|basis| AsymOptions {
            rank: rank.clone(),
            basis,
            // Split every layer that can be split, profitable or not: these tests check
            // exactness.
            skip_unprofitable: false,
            ..AsymOptions::default()
        })
    })
    .collect()
}

#[test]
fn mnist8_split_matches_reference() {
    let Some(dir) = shared_data("onnx-mnist-8") else {
        return;
    };
    let g = load_model(&dir.join("model.onnx"), &ImportOptions::default()).unwrap();
    let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.kind()).collect();
    eprintln!("mnist-8 ops: {kinds:?}");
    for opts in rules() {
        for set in 0..3 {
            let d = dir.join(format!("test_data_set_{set}"));
            let x = load_pb(&d.join("input_0.pb")).unwrap();
            let want = load_pb(&d.join("output_0.pb")).unwrap();
            let (rel, got) = split_vs_float(&g, &x, &opts);
            assert!(
                rel <= 1e-4,
                "{:?} set {set}: split vs float {rel}",
                opts.rank
            );
            let r = max_rel(&got.outputs[0], &want);
            assert!(
                r <= 1e-4,
                "{:?} set {set}: split vs reference {r}",
                opts.rank
            );
            assert!(got.layers.iter().any(|l| l.placement == "split"));
            assert_eq!(got.layers.last().map(|l| l.placement), Some("head"));
        }
    }
}

#[test]
fn builder_networks_split_match_float() {
    for name in ["dash-b", "dash-c", "dash-d", "resnet18-32"] {
        let g = (builders::find(name).unwrap().build)(3).unwrap();
        let shape = g.shape(g.inputs[0]).to_vec();
        let x = rand_input(&shape, 11, 1.0);
        for opts in rules() {
            let (rel, got) = split_vs_float(&g, &x, &opts);
            assert!(rel <= 1e-4, "{name} {:?}: {rel}", opts.rank);
            let split = got.layers.iter().filter(|l| l.placement == "split").count();
            assert!(split > 0 || name == "dash-c", "{name}: nothing split");
        }
    }
}

#[test]
fn batched_split_matches_float_and_splits_dense_layers() {
    let g = rebatch(&builders::dash_d(5).unwrap(), 6).unwrap();
    let x = rand_input(&[6, 1, 28, 28], 2, 1.0);
    for opts in rules() {
        let (rel, got) = split_vs_float(&g, &x, &opts);
        assert!(rel <= 1e-4, "{:?}: {rel}", opts.rank);
        // The hidden dense layer (batch 6) is split at batch > rank.
        if matches!(opts.rank, RankRule::Fixed(3)) {
            assert!(got.layers.iter().filter(|l| l.placement == "split").count() >= 1);
        }
    }
}

#[test]
fn energy_rule_meets_its_threshold_and_reports_trusted_share() {
    let g = builders::resnet18(32, 10, 1).unwrap();
    let x = rand_input(&[1, 3, 32, 32], 4, 1.0);
    let opts = AsymOptions {
        rank: RankRule::Energy {
            threshold: 0.1,
            max_rank: 64,
        },
        ..AsymOptions::default()
    };
    let (_, got) = split_vs_float(&g, &x, &opts);
    for l in &got.layers {
        if l.placement == "split" {
            assert!(
                l.residual_energy <= 0.1 + 1e-6 || l.rank_max == 64,
                "{}: energy {} at rank {}",
                l.name,
                l.residual_energy,
                l.rank_max
            );
            assert!(l.untrusted_macs == l.unsplit_macs && l.trusted_macs > 0);
        }
    }
}

/// A worker wrapper that records every message the enclave sends it.
struct Spy {
    inner: LocalWorker,
    /// (layer, tensor) of every `linear` residual and every `backward` gradient.
    seen: Vec<(usize, Tensor)>,
    /// Every weight update.
    updates: Vec<Vec<f32>>,
}

impl Spy {
    fn new(plan: &Plan) -> Self {
        Self {
            inner: LocalWorker::new(plan.worker_layers()),
            seen: Vec::new(),
            updates: Vec::new(),
        }
    }
}

impl WorkerLink for Spy {
    fn linear(&mut self, layer: usize, residual: Tensor, keep: bool) -> Result<Tensor, AsymError> {
        self.seen.push((layer, residual.clone()));
        self.inner.linear(layer, residual, keep)
    }
    fn backward(&mut self, l: usize, g: &Tensor, i: bool) -> Result<WorkerGrads, AsymError> {
        self.seen.push((l, g.clone()));
        self.inner.backward(l, g, i)
    }
    fn apply_update(&mut self, l: usize, w: &[f32], b: Option<&[f32]>) -> Result<(), AsymError> {
        let mut u = w.to_vec();
        u.extend(b.unwrap_or(&[]));
        self.updates.push(u);
        self.inner.apply_update(l, w, b)
    }
}

/// Whether `hay` holds `needle` as a contiguous run (a raw image, or a sample of a batch, sent
/// whole or as part of a larger tensor).
fn contains_run(hay: &[f32], needle: &[f32]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every message must be free of the raw input: no message equals it or holds any of its
/// samples (or any sample's first row) as a contiguous run, and one the input's size keeps
/// under half of its energy (the low-rank part stays in the enclave).
fn assert_no_raw_input(seen: &[(usize, Tensor)], updates: &[Vec<f32>], x: &Tensor) {
    let batch = x.shape()[0];
    let per = x.len() / batch;
    let row = *x.shape().last().unwrap();
    let energy = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
    for (k, (layer, t)) in seen.iter().enumerate() {
        for s in 0..batch {
            let sample = &x.data()[s * per..(s + 1) * per];
            assert!(
                !contains_run(t.data(), sample) && !contains_run(t.data(), &sample[..row]),
                "message {k} (layer {layer}) carries raw sample {s}"
            );
        }
        if t.len() == x.len() {
            let e = energy(t.data()) / energy(x.data());
            assert!(
                e < 0.5,
                "message {k} (layer {layer}) keeps {e} of the input energy"
            );
        }
    }
    for (k, u) in updates.iter().enumerate() {
        assert!(
            !contains_run(u, &x.data()[..row]),
            "update {k} carries raw input"
        );
    }
}

#[test]
fn raw_input_never_reaches_the_worker_and_noise_blurs_residuals() {
    let g = builders::vgg16(32, 10, 2).unwrap();
    let x = rand_input(&[1, 3, 32, 32], 9, 255.0);
    let plan = Plan::new(&g, &AsymOptions::default()).unwrap();
    assert!(matches!(
        plan.layers().last().unwrap().placement,
        Placement::Enclave(tessera_asym::EnclaveReason::Head)
    ));
    let mut spy = Spy::new(&plan);
    infer(&plan, &x, Some(&mut spy), 0).unwrap();
    // One residual per split layer, the first conv among them.
    let split: Vec<usize> = plan
        .layers()
        .iter()
        .filter(|l| matches!(l.placement, Placement::Split(_)))
        .map(|l| l.id)
        .collect();
    let layers: Vec<usize> = spy.seen.iter().map(|(l, _)| *l).collect();
    assert_eq!(layers, split, "the worker sees exactly the split layers");
    assert_eq!(layers.first(), Some(&0), "the first conv is split");
    assert_no_raw_input(&spy.seen, &spy.updates, &x);
    // Noise: output changes, stays finite.
    let noisy = Plan::new(
        &g,
        &AsymOptions {
            noise_sigma: 0.5,
            ..AsymOptions::default()
        },
    )
    .unwrap();
    let mut w = LocalWorker::new(noisy.worker_layers());
    let a = infer(&noisy, &x, Some(&mut w), 0).unwrap();
    let b = run_f32(&g, std::slice::from_ref(&x)).unwrap();
    assert!(a.outputs[0].data().iter().all(|v| v.is_finite()));
    assert!(max_rel(&a.outputs[0], &b[0]) > 1e-4);
}

#[test]
fn bad_peers_and_options_are_errors() {
    let g = builders::dash_d(1).unwrap();
    assert!(matches!(
        Plan::new(
            &g,
            &AsymOptions {
                rank: RankRule::Fixed(0),
                ..AsymOptions::default()
            }
        ),
        Err(AsymError::Options(_))
    ));
    let plan = Plan::new(
        &g,
        &AsymOptions {
            skip_unprofitable: false,
            ..AsymOptions::default()
        },
    )
    .unwrap();
    struct Liar;
    impl WorkerLink for Liar {
        fn linear(&mut self, _: usize, r: Tensor, _: bool) -> Result<Tensor, AsymError> {
            Ok(r)
        }
        fn backward(&mut self, _: usize, _: &Tensor, _: bool) -> Result<WorkerGrads, AsymError> {
            Err(AsymError::Protocol("no".into()))
        }
        fn apply_update(
            &mut self,
            _: usize,
            _: &[f32],
            _: Option<&[f32]>,
        ) -> Result<(), AsymError> {
            Ok(())
        }
    }
    let x = rand_input(&[1, 1, 28, 28], 1, 1.0);
    assert!(infer(&plan, &x, Some(&mut Liar), 0).is_err());
    assert!(infer(&plan, &x, None, 0).is_err());
    let mut w = LocalWorker::new(plan.worker_layers());
    assert!(infer(&plan, &rand_input(&[1, 1, 27, 28], 1, 1.0), Some(&mut w), 0).is_err());
    let mut nan = x.clone();
    nan.data_mut()[3] = f32::NAN;
    assert!(infer(&plan, &nan, Some(&mut w), 0).is_err());
    assert!(w.linear(99, x.clone(), false).is_err());
    assert!(w.backward(0, &x, true).is_err());
}

/// Small CNN for the tracking tests: conv-relu-pool, conv-relu, dense-relu, dense.
fn small_cnn(batch: usize, seed: u64) -> Graph {
    let mut b = GraphBuilder::new("small-cnn", seed);
    let mut x = b.input("input", vec![batch, 2, 12, 12]).unwrap();
    x = b.conv(x, 6, 3, 1, 1).unwrap();
    x = b.relu(x).unwrap();
    x = b.max_pool(x, 2, 2).unwrap();
    x = b.conv(x, 8, 3, 1, 0).unwrap();
    x = b.relu(x).unwrap();
    x = b.flatten(x).unwrap();
    x = b.dense(x, 16).unwrap();
    x = b.relu(x).unwrap();
    let y = b.dense(x, 4).unwrap();
    b.finish(vec![y]).unwrap()
}

fn weights(g: &Graph) -> Vec<f32> {
    g.nodes
        .iter()
        .flat_map(|n| match &n.op {
            Op::Conv(c) => [c.weight.data(), c.bias.as_ref().unwrap().data()].concat(),
            Op::Dense(d) => [d.weight.data(), d.bias.as_ref().unwrap().data()].concat(),
            _ => Vec::new(),
        })
        .collect()
}

/// Training sends residuals, output gradients and weight updates: none carries the raw batch.
#[test]
fn raw_input_never_reaches_the_worker_in_training() {
    let batch = 4;
    // Six input channels, so that the first conv's input is not full rank at rank 1 and the
    // first conv is split: its residual is the message closest to the raw input.
    let mut gb = GraphBuilder::new("six-channel", 5);
    let mut v = gb.input("input", vec![batch, 6, 8, 8]).unwrap();
    v = gb.conv(v, 8, 3, 1, 1).unwrap();
    v = gb.relu(v).unwrap();
    v = gb.conv(v, 8, 3, 1, 0).unwrap();
    v = gb.relu(v).unwrap();
    v = gb.flatten(v).unwrap();
    let y = gb.dense(v, 4).unwrap();
    let g = gb.finish(vec![y]).unwrap();
    let mut t = Trainer::new(
        &g,
        TrainOptions {
            lr: 0.05,
            momentum: 0.9,
            split: Some(AsymOptions {
                rank: RankRule::Fixed(1),
                skip_unprofitable: false,
                ..AsymOptions::default()
            }),
        },
    )
    .unwrap();
    assert!(
        matches!(t.plan().layers()[0].placement, Placement::Split(_)),
        "{:?}",
        t.plan().layers()[0].placement
    );
    let mut spy = Spy::new(t.plan());
    for step in 0..2 {
        let x = rand_input(&[batch, 6, 8, 8], 40 + step, 1.0);
        let labels: Vec<usize> = (0..batch).map(|i| (i + step as usize) % 4).collect();
        let before = spy.seen.len();
        t.step(&x, &labels, Some(&mut spy)).unwrap();
        assert!(spy.seen.len() > before, "step {step} sent nothing");
        assert_no_raw_input(&spy.seen[before..], &spy.updates, &x);
    }
    assert!(
        !spy.updates.is_empty(),
        "no weight update reached the worker"
    );
}

#[test]
fn split_training_tracks_unsplit_training() {
    let batch = 8;
    let g = small_cnn(batch, 21);
    for rank in [
        RankRule::Fixed(1),
        RankRule::Schedule { start: 2, cap: 32 },
        RankRule::Energy {
            threshold: 0.2,
            max_rank: 8,
        },
    ]
    .into_iter()
    .flat_map(|r| [(r.clone(), Basis::PerSample), (r, Basis::Batch)])
    {
        let (rank, basis) = rank;
        let split = AsymOptions {
            rank: rank.clone(),
            basis,
            decomp: DecompOptions::default(),
            skip_unprofitable: false,
            ..AsymOptions::default()
        };
        let mut a = Trainer::new(
            &g,
            TrainOptions {
                lr: 0.05,
                momentum: 0.9,
                split: None,
            },
        )
        .unwrap();
        let mut b = Trainer::new(
            &g,
            TrainOptions {
                lr: 0.05,
                momentum: 0.9,
                split: Some(split),
            },
        )
        .unwrap();
        assert!(
            b.plan()
                .layers()
                .iter()
                .filter(|l| matches!(l.placement, Placement::Split(_)))
                .count()
                >= 1
        );
        let mut w = LocalWorker::new(b.plan().worker_layers());
        let mut la = Vec::new();
        for step in 0..6 {
            let x = rand_input(&[batch, 2, 12, 12], 100 + step, 1.0);
            let labels: Vec<usize> = (0..batch).map(|i| (i * 7 + step as usize) % 4).collect();
            let ra = a.step(&x, &labels, None).unwrap();
            let rb = b.step(&x, &labels, Some(&mut w)).unwrap();
            assert!(
                (ra.loss - rb.loss).abs() <= 1e-4 * ra.loss.abs().max(1.0),
                "{rank:?} {basis:?} step {step}: {} vs {}",
                ra.loss,
                rb.loss
            );
            la.push(ra.loss);
        }
        let (wa, wb) = (weights(a.graph()), weights(b.graph()));
        let scale = wa.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = wa
            .iter()
            .zip(&wb)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-4 * scale,
            "{rank:?} {basis:?}: weights drift {diff} (scale {scale})"
        );
        assert!(la.iter().all(|l| l.is_finite()));
    }
}

#[test]
fn resnet_block_training_tracks_unsplit() {
    // Residual additions and global pooling in the backward pass.
    let mut b = GraphBuilder::new("mini-res", 3);
    let x = b.input("input", vec![4, 3, 8, 8]).unwrap();
    let y = b.conv(x, 8, 3, 1, 1).unwrap();
    let y = b.relu(y).unwrap();
    let z = b.conv(y, 8, 3, 1, 1).unwrap();
    let s = b.add(z, y).unwrap();
    let s = b.relu(s).unwrap();
    let p = b.global_avg_pool(s).unwrap();
    let f = b.flatten(p).unwrap();
    let o = b.dense(f, 3).unwrap();
    let g = b.finish(vec![o]).unwrap();
    let mut a = Trainer::new(
        &g,
        TrainOptions {
            split: None,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    let mut t = Trainer::new(&g, TrainOptions::default()).unwrap();
    let mut w = LocalWorker::new(t.plan().worker_layers());
    for step in 0..4 {
        let x = rand_input(&[4, 3, 8, 8], step, 1.0);
        let labels = [0, 1, 2, 1];
        let ra = a.step(&x, &labels, None).unwrap();
        let rb = t.step(&x, &labels, Some(&mut w)).unwrap();
        assert!(
            (ra.loss - rb.loss).abs() <= 1e-4,
            "{} vs {}",
            ra.loss,
            rb.loss
        );
    }
    let (wa, wb) = (weights(a.graph()), weights(t.graph()));
    let diff = wa
        .iter()
        .zip(&wb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff <= 1e-4, "drift {diff}");
}

#[test]
fn unsplit_gradients_match_finite_differences() {
    // lr = 1, momentum 0: w_after = w − g.
    let g = small_cnn(3, 5);
    let x = rand_input(&[3, 2, 12, 12], 8, 1.0);
    let labels = [1, 3, 0];
    let mut t = Trainer::new(
        &g,
        TrainOptions {
            lr: 1.0,
            momentum: 0.0,
            split: None,
        },
    )
    .unwrap();
    let before = weights(t.graph());
    t.step(&x, &labels, None).unwrap();
    let grad: Vec<f32> = before
        .iter()
        .zip(weights(t.graph()))
        .map(|(a, b)| a - b)
        .collect();
    let loss_at = |delta: f32, idx: usize| -> f32 {
        let mut gg = g.clone();
        let mut seen = 0;
        for n in &mut gg.nodes {
            let parts: Vec<&mut Tensor> = match &mut n.op {
                Op::Conv(c) => vec![&mut c.weight, c.bias.as_mut().unwrap()],
                Op::Dense(d) => vec![&mut d.weight, d.bias.as_mut().unwrap()],
                _ => continue,
            };
            for p in parts {
                if idx >= seen && idx < seen + p.len() {
                    p.data_mut()[idx - seen] += delta;
                }
                seen += p.len();
            }
        }
        let mut tr = Trainer::new(
            &gg,
            TrainOptions {
                lr: 0.0,
                momentum: 0.0,
                split: None,
            },
        )
        .unwrap();
        tr.step(&x, &labels, None).unwrap().loss
    };
    let eps = 1e-2;
    for idx in [0, 17, 60, 100, 170, 300, 500, 700, grad.len() - 1] {
        let fd = (loss_at(eps, idx) - loss_at(-eps, idx)) / (2.0 * eps);
        assert!(
            (fd - grad[idx]).abs() <= 2e-3 + 0.05 * fd.abs(),
            "param {idx}: analytic {} vs numeric {fd}",
            grad[idx]
        );
    }
}

/// The DP noise on a residual is drawn in the enclave afresh: the same layer, input and step
/// (everything the worker holds or sees besides the noised residual) give different noise, so
/// the worker cannot regenerate it. Without noise the split is deterministic.
#[test]
fn residual_noise_is_fresh_and_not_reproducible_by_the_worker() {
    let g = builders::vgg16(32, 10, 2).unwrap();
    let x = rand_input(&[1, 3, 32, 32], 9, 255.0);
    let sigma = 0.5f32;
    let noisy = Plan::new(
        &g,
        &AsymOptions {
            noise_sigma: sigma,
            ..AsymOptions::default()
        },
    )
    .unwrap();
    let clean = Plan::new(&g, &AsymOptions::default()).unwrap();
    let (r0, _) = tessera_asym::enclave_split(&clean, 0, &x, 3).unwrap();
    let (r0b, _) = tessera_asym::enclave_split(&clean, 0, &x, 3).unwrap();
    assert_eq!(r0.data(), r0b.data(), "the split itself is deterministic");
    let (r1, _) = tessera_asym::enclave_split(&noisy, 0, &x, 3).unwrap();
    let (r2, _) = tessera_asym::enclave_split(&noisy, 0, &x, 3).unwrap();
    assert_ne!(
        r1.data(),
        r2.data(),
        "same options, layer, input and step: new noise"
    );
    // It is noise of the stated size around the clean residual.
    let d: Vec<f64> = r1
        .data()
        .iter()
        .zip(r0.data())
        .map(|(a, b)| f64::from(a - b))
        .collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let sd = (d.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    assert!(
        mean.abs() < 0.05 && (sd - f64::from(sigma)).abs() < 0.05,
        "{mean} {sd}"
    );
}

/// The rank profile measures what the split would need: a rank-1 input (three equal channels)
/// needs rank 1 at every threshold, a random one more as τ falls; kept layers report their full
/// rank; bad thresholds and an empty sample set are errors.
#[test]
fn rank_profile_measures_the_rank_each_threshold_needs() {
    let g = builders::vgg16(32, 10, 2).unwrap();
    let plane = rand_input(&[1, 1, 32, 32], 4, 255.0);
    let same: Vec<f32> = (0..3).flat_map(|_| plane.data().iter().copied()).collect();
    let rank1 = Tensor::new(vec![1, 3, 32, 32], same).unwrap();
    let random = rand_input(&[1, 3, 32, 32], 5, 255.0);
    let taus = [0.1f32, 0.01, 0.0001];
    let opts = AsymOptions::default();
    let p1 = tessera_asym::rank_profile(&g, &[rank1], &taus, &opts).unwrap();
    let first = &p1.layers[0];
    assert_eq!(first.placement, "split");
    assert_eq!(
        first.ranks,
        vec![1, 1, 1],
        "three equal channels are rank 1"
    );
    assert!(first.trusted_share[0] < 1.0);
    let pr = tessera_asym::rank_profile(&g, &[random], &taus, &opts).unwrap();
    let r = &pr.layers[0].ranks;
    assert!(r[0] <= r[1] && r[1] <= r[2] && r[2] > 1, "{r:?}");
    let head = pr.layers.last().unwrap();
    assert_eq!(head.placement, "head");
    assert_eq!(head.trusted_share, vec![1.0; 3]);
    assert!(pr.trusted_share.windows(2).all(|w| w[0] <= w[1] + 1e-12));
    assert!(tessera_asym::rank_profile(&g, &[], &taus, &opts).is_err());
    assert!(
        tessera_asym::rank_profile(&g, &[rand_input(&[1, 3, 32, 32], 6, 1.0)], &[1.5], &opts)
            .is_err()
    );
}

/// Global rank selection: a share target is met on the calibration estimate with the least
/// largest energy (a looser target never leaves more energy), an energy target is met per
/// layer, the selected plan still equals the float model, the run's trusted share is the one
/// the selection promised, and a target below what the network allows is refused with the
/// least share it does allow.
#[test]
fn rank_selection_meets_share_and_energy_targets() {
    let g = rebatch(&builders::vgg16(32, 10, 2).unwrap(), 4).unwrap();
    let calib: Vec<Tensor> = (0..2)
        .map(|i| rand_input(&[4, 3, 32, 32], 40 + i, 1.0))
        .collect();
    for basis in [Basis::PerSample, Basis::Batch] {
        let opts = AsymOptions {
            basis,
            ..AsymOptions::default()
        };
        let sp = tessera_asym::spectra(&g, &calib, &opts).unwrap();
        assert!(sp.last().unwrap().curve.is_none(), "the head stays whole");
        let mut last_energy = f64::INFINITY;
        for share in [0.3, 0.5, 0.8] {
            let sel =
                tessera_asym::select(&g, &sp, tessera_asym::Target::TrustedShare(share), &opts)
                    .unwrap();
            assert!(
                sel.trusted_share <= share + 1e-12,
                "{basis:?} {share}: {}",
                sel.trusted_share
            );
            assert!(
                sel.max_energy <= last_energy + 1e-12,
                "a looser share leaves less energy"
            );
            last_energy = sel.max_energy;
            // The selected plan runs, equals the float model, and costs what was promised.
            let run_opts = AsymOptions {
                rank: sel.rule(),
                ..opts.clone()
            };
            let x = rand_input(&[4, 3, 32, 32], 77, 1.0);
            let (rel, got) = split_vs_float(&g, &x, &run_opts);
            assert!(rel <= 1e-4, "{basis:?} {share}: {rel}");
            let t: u64 = got.layers.iter().map(|l| l.trusted_macs).sum();
            let all: u64 = got.layers.iter().map(|l| l.unsplit_macs).sum();
            assert!(
                (t as f64 / all as f64 - sel.trusted_share).abs() < 1e-9,
                "{basis:?}: run {} vs selection {}",
                t as f64 / all as f64,
                sel.trusted_share
            );
            for (run, choice) in got.layers.iter().zip(&sel.layers) {
                assert_eq!(run.placement == "split", choice.rank > 0, "{}", run.name);
            }
        }
        let sel = tessera_asym::select(&g, &sp, tessera_asym::Target::Energy(0.05), &opts).unwrap();
        assert!(sel.layers.iter().all(|l| l.energy <= 0.05));
        let e = tessera_asym::select(&g, &sp, tessera_asym::Target::TrustedShare(0.0001), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the least this network allows"), "{e}");
    }
    assert!(tessera_asym::spectra(&g, &[], &AsymOptions::default()).is_err());
}

/// Under a batch basis the fold `W·U` is paid once per batch: the same layer at the same rank
/// costs the enclave less than per sample, and the batch's residual energy is still measured.
#[test]
fn batch_basis_pays_the_fold_once() {
    let g = rebatch(&builders::vgg16(32, 10, 2).unwrap(), 8).unwrap();
    let x = rand_input(&[8, 3, 32, 32], 9, 1.0);
    let run = |basis| {
        let opts = AsymOptions {
            rank: RankRule::Fixed(4),
            basis,
            skip_unprofitable: false,
            ..AsymOptions::default()
        };
        split_vs_float(&g, &x, &opts)
    };
    let (ra, a) = run(Basis::PerSample);
    let (rb, b) = run(Basis::Batch);
    assert!(ra <= 1e-4 && rb <= 1e-4, "{ra} {rb}");
    let late = |i: &tessera_asym::Inference| {
        i.layers
            .iter()
            .find(|l| l.name == "conv10")
            .map(|l| (l.trusted_macs, l.residual_energy, l.placement))
            .unwrap()
    };
    let (ta, _, pa) = late(&a);
    let (tb, eb, pb) = late(&b);
    assert_eq!((pa, pb), ("split", "split"));
    assert!(tb < ta, "batch basis {tb} vs per sample {ta}");
    assert!(eb > 0.0 && eb < 1.0);
}
