//! The integer semantics v2 through every exact scheme: `plain`, `tee` (enclave on loopback,
//! attested TLS) and `gc` (enclave garbling for a worker on loopback) return the same integers,
//! bit for bit, on a residual CNN with grouped and depthwise convolutions, ReLU6, a residual add
//! and a padded average pool; gc picks the sound k from the circuit, and the output scale
//! travels with the result.

use tessera_engine::Semantics;
use tessera_engine::qint::{Calibration, IntModel, IntOp, QintConfig, default_calibration_inputs};
use tessera_gc::GcOptions;
use tessera_model::{Tensor, builders};
use tessera_schemes::{Gc, Plain, Scheme, Tee, TeeOptions};

/// plain, tee (state in `dir`) and gc (one garbling at a time) over `g` under `sem`, and gc's
/// statistics.
fn exact_schemes(
    g: &tessera_model::Graph,
    sem: &Semantics,
    dir: &std::path::Path,
) -> (Vec<Box<dyn Scheme>>, tessera_gc::GcStats) {
    let gc = Gc::new(
        g,
        GcOptions {
            semantics: sem.clone(),
            pool: 1,
            overlap: false,
            ..GcOptions::default()
        },
    )
    .expect("gc");
    let st = gc.stats();
    let tee = Tee::new(
        g,
        sem,
        TeeOptions {
            state_dir: Some(dir.to_path_buf()),
            ..TeeOptions::default()
        },
    )
    .expect("tee");
    let schemes: Vec<Box<dyn Scheme>> = vec![
        Box::new(Plain::new(g, sem).expect("plain")),
        Box::new(tee),
        Box::new(gc),
    ];
    (schemes, st)
}

/// Every scheme returns the reference integers bit for bit, with the reference's output scale
/// and no caveat.
fn assert_all_agree(
    schemes: &mut [Box<dyn Scheme>],
    inputs: &[Tensor],
    want: &[Tensor<i64>],
    scale: f64,
) {
    for s in schemes {
        for (x, w) in inputs.iter().zip(want) {
            let r = s.infer(x).expect("infers");
            assert_eq!(
                r.exact.data(),
                w.data(),
                "{} differs from the v2 reference",
                s.name()
            );
            assert_eq!(r.scale, scale, "{}: output scale", s.name());
            assert_eq!(s.caveat(), None);
            assert_cost_is_comparable(s.name(), &r.cost);
        }
    }
}

#[test]
fn plain_tee_and_gc_agree_bit_for_bit_under_v2() {
    let g = builders::mix_bn(8, 6, 3).expect("builds");
    let cal_inputs = default_calibration_inputs(&g, 0.0, 1.0, 8, 1).expect("inputs");
    let calibration = Calibration::from_inputs(&g, &cal_inputs, "generated").expect("calibrates");
    let cfg = QintConfig {
        mult_bits: 4,
        ..QintConfig::default()
    };
    let sem = Semantics::V2 {
        cfg,
        calibration: calibration.clone(),
    };
    let reference = IntModel::new(&g, cfg, &calibration).expect("lowers");
    let scale = reference.output_quant().expect("output").scale;
    let inputs: Vec<Tensor> = default_calibration_inputs(&g, -0.5, 1.5, 3, 9).expect("inputs");
    let want: Vec<Tensor<i64>> = inputs
        .iter()
        .map(|x| reference.run(x).expect("runs"))
        .collect();

    let dir = std::env::temp_dir().join(format!("tessera-v2-tee-{}", std::process::id()));
    let (mut schemes, st) = exact_schemes(&g, &sem, &dir);
    assert_eq!(st.sound_primes, Some(st.primes), "gc runs at the sound k");
    assert!(st.calibrated.is_none(), "v2's k is sound, never calibrated");
    assert_all_agree(&mut schemes, &inputs, &want, scale);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_k_below_the_sound_one_is_refused_under_v2() {
    let g = builders::mix(6, 3, 1).expect("builds");
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 2, 1).expect("inputs");
    let calibration = Calibration::from_inputs(&g, &xs, "generated").expect("calibrates");
    let sem = Semantics::V2 {
        cfg: QintConfig::default(),
        calibration,
    };
    let k = tessera_gc::sound_primes(&g, &sem, 1.0).expect("sound k");
    let e = Gc::new(
        &g,
        GcOptions {
            semantics: sem,
            primes: Some(k - 1),
            pool: 1,
            ..GcOptions::default()
        },
    )
    .err()
    .expect("a k below the sound one is refused")
    .to_string();
    assert!(
        e.contains(&format!("{} CRT primes are below the {k} needed", k - 1)),
        "{e}"
    );
}

/// The worker compiles its circuit from the public model, whose added constants are zeroed: a
/// ReLU right after a garbled constant (here an input shift that makes some inputs negative)
/// must compile to the same circuit on both sides, so gc still agrees with plain bit for bit.
#[test]
fn relu_after_a_garbled_constant_compiles_the_same_on_both_sides() {
    use tessera_model::ir::BinOp;
    let mut b = tessera_model::GraphBuilder::new("shift-relu", 5);
    let x = b.input("x", vec![1, 1, 6, 6]).expect("input");
    let c = Tensor::new(vec![1], vec![0.5]).expect("constant");
    let y = b.constant_op(x, BinOp::Sub, c).expect("sub");
    let y = b.relu(y).expect("relu");
    let y = b.conv(y, 2, 3, 1, 1).expect("conv");
    let y = b.relu(y).expect("relu");
    let y = b.flatten(y).expect("flatten");
    let y = b.dense(y, 3).expect("dense");
    let g = b.finish(vec![y]).expect("graph");
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 4, 2).expect("inputs");
    let calibration = Calibration::from_inputs(&g, &xs, "generated").expect("calibrates");
    let sem = Semantics::V2 {
        cfg: QintConfig::default(),
        calibration,
    };
    let mut plain = Plain::new(&g, &sem).expect("plain");
    let mut gc = Gc::new(
        &g,
        GcOptions {
            semantics: sem,
            pool: 1,
            overlap: false,
            ..GcOptions::default()
        },
    )
    .expect("gc");
    for x in &xs {
        let want = plain.infer(x).expect("plain infers");
        let got = gc.infer(x).expect("gc infers");
        assert_eq!(got.exact.data(), want.exact.data());
    }
}

/// An int8 model's own grids and integer weights through plain, tee and gc — a ShuffleNet-style
/// unit: split, depthwise conv, concatenation on different grids, channel shuffle, grid
/// changes — the same integers.
#[test]
fn an_int8_model_runs_bit_for_bit_in_plain_tee_and_gc() {
    let g = builders::shuffle_int8(5, 2, 3).expect("builds");
    let calibration = Calibration::given("the model's own int8 scales");
    let cfg = QintConfig::default();
    let sem = Semantics::V2 {
        cfg,
        calibration: calibration.clone(),
    };
    let reference = IntModel::new(&g, cfg, &calibration).expect("lowers");
    assert!(
        (0..g.nodes.len()).any(|i| matches!(reference.op(i), Some(IntOp::Requant { .. }))),
        "the last grid change is a requantization"
    );
    let inputs: Vec<Tensor> = default_calibration_inputs(&g, 0.0, 1.2, 3, 4).expect("inputs");
    let want: Vec<Tensor<i64>> = inputs
        .iter()
        .map(|x| reference.run(x).expect("runs"))
        .collect();
    let dir = std::env::temp_dir().join(format!("tessera-int8-tee-{}", std::process::id()));
    let (mut schemes, _) = exact_schemes(&g, &sem, &dir);
    let scale = reference.output_quant().expect("output").scale;
    assert_all_agree(&mut schemes, &inputs, &want, scale);
    let _ = std::fs::remove_dir_all(dir);
}

/// The cost report follows one definition in every scheme: every link counted (the client's
/// leg included), offline work and stored bytes on their own, a trusted share from measured
/// time in 0..1.
fn assert_cost_is_comparable(name: &str, c: &tessera_schemes::Cost) {
    let names: Vec<&str> = c.links.iter().map(|l| l.name.as_str()).collect();
    match name {
        "plain" => {
            assert!(names.is_empty());
            assert_eq!(c.trusted_share(), None);
        }
        "tee" => {
            assert_eq!(names, ["client-enclave"]);
            assert!(c.bytes_up > 0 && c.bytes_down > 0 && c.rounds >= 1);
            assert_eq!(c.trusted_share(), Some(1.0), "all work in the enclave");
            assert_eq!(c.offline, std::time::Duration::ZERO);
        }
        "gc" => {
            assert_eq!(names, ["client-enclave", "enclave-worker"]);
            let worker = &c.links[1];
            assert!(
                c.offline > std::time::Duration::ZERO,
                "garbling is reported"
            );
            assert!(c.stored_server > 0 && c.stored_server == worker.offline_up);
            assert_eq!(c.bytes_up, c.links[0].up + worker.up, "every link counted");
            let share = c.trusted_share().expect("enclave and worker both work");
            assert!(share > 0.0 && share < 1.0, "{share}");
        }
        other => panic!("unexpected scheme {other}"),
    }
}
