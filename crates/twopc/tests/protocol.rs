//! Whole models through the server-garbler protocol (both parties on their own threads over
//! in-memory channels): the output integers equal the integer engine's (semantics v2).

use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_model::{Graph, Tensor, builders};
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
    let images: Vec<Tensor> = (0..36).filter_map(|i| data.image(i)).collect();
    let m = lower(&g, &images[..32]);
    let p = TwoPc::new(m.clone()).expect("2pc");
    eprintln!("mnist-8: {}", p.describe());
    for (k, x) in images[32..].iter().enumerate() {
        for v in BOTH {
            let (y, cost) = p.infer(x, k as u64, v).expect("infers");
            assert_eq!(y, m.run(x).expect("reference"), "image {k} {v:?}");
            eprintln!(
                "mnist-8 image {k} {v:?}: offline {} B up, {} B down ({} B garbled, {} ANDs, {} OTs, {:.0} ms); online {} B up, {} B down ({:.0} ms); stored client {} B, server {} B",
                cost.offline_up,
                cost.offline_down,
                cost.garbled_bytes,
                cost.and_gates,
                cost.ots,
                cost.offline_ms,
                cost.online_up,
                cost.online_down,
                cost.online_ms,
                cost.client_stored,
                cost.server_stored
            );
        }
    }
}
