//! Whole models through the server-garbler protocol (both parties on their own threads over
//! in-memory channels): the output integers equal the integer engine's (semantics v2).

use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_model::{Graph, GraphBuilder, Tensor, builders};
use tessera_twopc::protocol::TwoPc;
use tessera_twopc::session::Variant;

const BOTH: [Variant; 2] = [Variant::ServerGarbler, Variant::ClientGarbler];

fn lower(g: &Graph, cal_inputs: &[Tensor]) -> IntModel {
    let cal = Calibration::from_inputs(g, cal_inputs, "test").expect("calibrates");
    IntModel::new(g, QintConfig::default(), &cal).expect("lowers")
}

#[test]
fn conv_nets_with_max_pools_are_exact() {
    for (g, seed) in [
        (builders::dash_b(3).expect("dash-b"), 1u64),
        (builders::dash_a(4).expect("dash-a"), 2),
    ] {
        let xs = default_calibration_inputs(&g, 0.0, 1.0, 8, seed).expect("inputs");
        let m = lower(&g, &xs);
        let p = TwoPc::new(m.clone()).expect("2pc");
        eprintln!("{}: {}", g.name, p.describe());
        for (k, x) in default_calibration_inputs(&g, 0.0, 1.0, 2, seed + 9)
            .expect("inputs")
            .iter()
            .enumerate()
        {
            for v in BOTH {
                let (y, cost) = p.infer(x, seed * 100 + k as u64, v).expect("infers");
                assert_eq!(
                    y,
                    m.run(x).expect("reference"),
                    "{} input {k} {v:?}",
                    g.name
                );
                assert!(cost.garbled_bytes > 0 && cost.ots > 0);
                assert!(cost.client_stored > 0 && cost.server_stored > 0);
            }
        }
    }
}

/// A random residual conv net (seeded): a stem, blocks with identity or projection (strided
/// 1×1 conv) shortcuts, an optional average or max pool between blocks, global average pooling
/// and a dense head.
fn random_resnet(seed: u64) -> Graph {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut b = GraphBuilder::new(&format!("resnet-random-{seed}"), seed);
    let hw = rng.random_range(6..=9);
    let mut x = b.input("input", vec![1, 3, hw, hw]).expect("input");
    let mut c = rng.random_range(2..=4);
    x = b.conv(x, c, 3, 1, 1).expect("stem");
    x = b.relu(x).expect("relu");
    for _ in 0..rng.random_range(1..=3) {
        let project = rng.random_bool(0.5) && b.shape(x)[2] >= 4;
        let (planes, stride) = if project { (c + 2, 2) } else { (c, 1) };
        let mut y = b.conv(x, planes, 3, stride, 1).expect("conv");
        y = b.relu(y).expect("relu");
        y = b.conv(y, planes, 3, 1, 1).expect("conv");
        let short = if project {
            b.conv(x, planes, 1, stride, 0).expect("projection")
        } else {
            x
        };
        x = b.add(y, short).expect("add");
        x = b.relu(x).expect("relu");
        c = planes;
        match rng.random_range(0..3) {
            0 => x = b.avg_pool(x, 3, 1, 1).expect("avg pool"),
            1 if b.shape(x)[2] >= 4 => x = b.max_pool(x, 2, 2).expect("max pool"),
            _ => {}
        }
    }
    x = b.global_avg_pool(x).expect("gap");
    x = b.flatten(x).expect("flatten");
    let y = b.dense(x, 10).expect("head");
    b.finish(vec![y]).expect("graph")
}

/// Residual networks with every pooling, bit-exact in both variants: mix (client-side input
/// normalisation, grouped and depthwise convs, ReLU6, a residual add of a segment's value read
/// back two layers later, a padded average pool, a max pool, global average pooling) and random
/// residual nets with identity and projection shortcuts.
#[test]
fn residual_nets_with_pools_are_exact() {
    let mut nets = vec![
        (builders::mix(8, 6, 3).expect("mix"), 3u64),
        (builders::mix(6, 9, 4).expect("mix"), 4),
    ];
    nets.extend((0..4).map(|s| (random_resnet(s), 10 + s)));
    let (mut projections, mut skips) = (0, 0);
    for (g, seed) in nets {
        let xs = default_calibration_inputs(&g, 0.0, 1.0, 8, seed).expect("inputs");
        let m = lower(&g, &xs);
        let p = TwoPc::new(m.clone()).expect("2pc");
        eprintln!("{}: {}", g.name, p.describe());
        let segs = &p.server().public.model.segments;
        // A projection shortcut: one segment takes two layers' shares; an identity one reads a
        // masked value written by an earlier segment.
        projections += segs.iter().filter(|s| s.linears.len() == 2).count();
        skips += segs.iter().filter(|s| !s.reads.is_empty()).count();
        let x = &default_calibration_inputs(&g, 0.0, 1.0, 1, seed + 7).expect("inputs")[0];
        for v in BOTH {
            let (y, _) = p.infer(x, seed, v).expect("infers");
            assert_eq!(y, m.run(x).expect("reference"), "{} {v:?}", g.name);
        }
    }
    assert!(
        projections > 0 && skips > 0,
        "{projections} projections, {skips} skips"
    );
}

/// mnist-8 under both variants: its three ONNX test sets (the same class as the float
/// reference) and 200 MNIST test images in each variant, every output bit-exact with the v2
/// engine.
#[test]
fn mnist8_is_exact_under_2pc() {
    let Some(dir) = tessera_data::shared_data("onnx-mnist-8") else {
        return;
    };
    let Some(mdir) = tessera_data::shared_data("mnist-t10k") else {
        return;
    };
    let g = tessera_model::load_model(
        &dir.join("model.onnx"),
        &tessera_model::ImportOptions::default(),
    )
    .expect("model");
    let data = tessera_data::load_mnist_dir(&mdir).expect("mnist");
    let images: Vec<Tensor> = (0..232).filter_map(|i| data.image(i)).collect();
    let m = lower(&g, &images[..32]);
    let p = TwoPc::new(m.clone()).expect("2pc");
    eprintln!("mnist-8: {}", p.describe());
    for set in 0..3 {
        let d = dir.join(format!("test_data_set_{set}"));
        let x = tessera_data::load_pb(&d.join("input_0.pb")).expect("input");
        let want = tessera_data::load_pb(&d.join("output_0.pb")).expect("output");
        for v in BOTH {
            let (y, cost) = p.infer(&x, set, v).expect("infers");
            assert_eq!(y, m.run(&x).expect("reference"), "test set {set} {v:?}");
            let yf: Vec<f32> = y.data().iter().map(|&v| v as f32).collect();
            assert_eq!(
                tessera_engine::argmax(&yf),
                tessera_engine::argmax(want.data()),
                "test set {set} {v:?}: class"
            );
            eprintln!(
                "mnist-8 set {set} {v:?}: offline {} B up, {} B down ({} B garbled, {} ANDs, {} OTs, {:.0} ms); online {} B up, {} B down in {} messages ({:.0} ms); stored client {} B, server {} B",
                cost.offline_up,
                cost.offline_down,
                cost.garbled_bytes,
                cost.and_gates,
                cost.ots,
                cost.offline_ms,
                cost.online_up,
                cost.online_down,
                cost.online_messages,
                cost.online_ms,
                cost.client_stored,
                cost.server_stored
            );
        }
    }
    let t0 = std::time::Instant::now();
    assert_eq!(images.len(), 232, "the MNIST test set has the images");
    for v in BOTH {
        for (k, x) in images[32..].iter().enumerate() {
            let (y, _) = p.infer(x, 1000 + k as u64, v).expect("infers");
            assert_eq!(y, m.run(x).expect("reference"), "image {} {v:?}", 32 + k);
        }
    }
    eprintln!(
        "mnist-8: 200 MNIST test images bit-exact in each variant, in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// A step 2pc has no circuit for (an affine chain: a batch normalisation after a residual add)
/// is refused before any work, with the node, the op and the schemes that run it named.
#[test]
fn an_affine_chain_is_refused_by_name() {
    let g = builders::mix_bn(6, 3, 1).expect("mix-bn");
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 2, 1).expect("inputs");
    let Err(e) = TwoPc::new(lower(&g, &xs)) else {
        panic!("2pc took an affine chain")
    };
    let e = e.to_string();
    assert!(
        e.contains("cannot run node") && e.contains("affine chain") && e.contains("plain and tee"),
        "{e}"
    );
}
