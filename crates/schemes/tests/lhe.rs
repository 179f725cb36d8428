//! `lhe` end to end with every party on loopback: the server computes every conv and dense layer
//! on ciphertexts, the enclave the rest, and the integers equal the v2 reference bit for bit.

use tessera_engine::Semantics;
use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_model::{Tensor, builders};
use tessera_schemes::{Lhe, Scheme};

fn v2(g: &tessera_model::Graph) -> (Semantics, IntModel) {
    let cal_inputs = default_calibration_inputs(g, 0.0, 1.0, 8, 1).expect("inputs");
    let calibration = Calibration::from_inputs(g, &cal_inputs, "generated").expect("calibrates");
    let cfg = QintConfig::default();
    let reference = IntModel::new(g, cfg, &calibration).expect("lowers");
    (Semantics::V2 { cfg, calibration }, reference)
}

#[test]
fn lhe_matches_v2_on_a_residual_cnn() {
    // Input normalisation first (raw input encoding), grouped and depthwise convs, a residual
    // add, pools and a dense head.
    for (hw, c, seed) in [(8, 6, 3), (10, 3, 11), (6, 9, 29)] {
        let g = builders::mix(hw, c, seed).expect("builds");
        let (sem, reference) = v2(&g);
        let mut lhe = Lhe::new(&g, &sem).expect("lhe");
        let inputs: Vec<Tensor> =
            default_calibration_inputs(&g, -0.5, 1.5, 3, seed + 6).expect("inputs");
        for x in &inputs {
            let r = lhe.infer(x).expect("infers");
            assert_eq!(
                r.exact,
                reference.run(x).expect("reference"),
                "mix({hw}, {c}, {seed})"
            );
            assert_eq!(r.scale, reference.output_quant().expect("q").scale);
            assert!(r.cost.trusted_macs < r.cost.total_macs);
            assert!(r.cost.bytes_up > 0 && r.cost.stored_server > 0);
            let share = r
                .cost
                .trusted_share()
                .expect("enclave and server both work");
            assert!(share > 0.0 && share < 1.0, "{share}");
            assert_eq!(r.cost.links.len(), 2, "client-server and enclave-server");
        }
    }
}

#[test]
fn lhe_matches_v2_when_the_first_layer_takes_the_input() {
    // A conv on the raw input: the data owner encrypts in the conv's layout and the server
    // computes it straight on those ciphertexts.
    let g = builders::dash_a(4).expect("builds");
    let (sem, reference) = v2(&g);
    let mut lhe = Lhe::new(&g, &sem).expect("lhe");
    for x in default_calibration_inputs(&g, 0.0, 1.0, 2, 5).expect("inputs") {
        assert_eq!(
            lhe.infer(&x).expect("infers").exact,
            reference.run(&x).expect("reference")
        );
    }
}

/// mnist-8 (shared data) under v2 calibrated on 32 MNIST images: its three ONNX test sets and 200
/// MNIST test images through lhe, each equal to the reference integers.
#[test]
fn mnist8_test_sets_and_200_images_are_exact_under_lhe() {
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
    let calibration = Calibration::from_inputs(&g, &images[..32], "mnist:32").expect("calibrates");
    let cfg = QintConfig::default();
    let reference = IntModel::new(&g, cfg, &calibration).expect("lowers");
    let sem = Semantics::V2 { cfg, calibration };
    let mut lhe = Lhe::new(&g, &sem).expect("lhe");
    eprintln!("mnist-8 under lhe: {}", lhe.params());
    for set in 0..3 {
        let x = tessera_data::load_pb(&dir.join(format!("test_data_set_{set}/input_0.pb")))
            .expect("pb");
        assert_eq!(
            lhe.infer(&x).expect("infers").exact,
            reference.run(&x).expect("reference"),
            "set {set}"
        );
    }
    let mut agree = 0;
    for (i, x) in images[32..].iter().enumerate() {
        let r = lhe.infer(x).expect("infers");
        assert_eq!(r.exact, reference.run(x).expect("reference"), "image {i}");
        agree += usize::from(
            data.labels
                .get(32 + i)
                .is_some_and(|&l| usize::from(l) == r.class),
        );
    }
    eprintln!("mnist-8 under lhe: {agree}/200 correct");
}
