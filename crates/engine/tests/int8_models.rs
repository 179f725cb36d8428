//! int8 ONNX models imported straight into the integer semantics v2: the ONNX model zoo's
//! ShuffleNet-v2 int8 (QOperator: QLinearConv, QLinearMatMul, QLinearAdd, with Split, Concat,
//! Transpose and ReduceMean between them) against its test_data_set_0 reference, and a QDQ
//! export/import round trip.
//!
//! The reference was computed by onnxruntime's int8 kernels, which requantize in float32 and
//! round half to even; v2 requantizes with an integer multiplier (16 bits for given weights, 12
//! for element-wise steps) and a rounding shift, ties up. The two agree on almost every integer;
//! where a rounding differs by one step, later layers carry it on, so the logits may differ by a
//! few output steps. The test states the bound it checks.

use std::path::Path;
use tessera_data::{load_pb, shared_data};
use tessera_engine::qint::{Calibration, IntModel, QintConfig};
use tessera_engine::run_f32;
use tessera_model::ir::Op;
use tessera_model::{ImportOptions, load_model};

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// No calibration: every scale comes from the model.
fn no_calibration() -> Calibration {
    Calibration::given("the model's int8 grids")
}

#[test]
fn shufflenet_v2_int8_matches_its_reference() {
    let Some(dir) = shared_data("onnx-shufflenet-v2-12-int8") else {
        return;
    };
    let g = load_model(&dir.join("model.onnx"), &ImportOptions::default()).expect("imports");
    let count = |k: &str| g.nodes.iter().filter(|n| n.op.kind() == k).count();
    assert_eq!(
        count("QuantizeLinear"),
        18 + 56 + 2,
        "one grid per Q/QLinear op"
    );
    assert!(
        g.nodes
            .iter()
            .any(|n| matches!(&n.op, Op::Conv(c) if c.groups > 1))
    );
    let x = load_pb(&dir.join("test_data_set_0/input_0.pb")).expect("input");
    let want = load_pb(&Path::new(&dir).join("test_data_set_0/output_0.pb")).expect("output");

    // The float engine computes QuantizeLinear+DequantizeLinear at every grid.
    let f = run_f32(&g, std::slice::from_ref(&x)).expect("float run");
    let f = f.first().expect("one output");
    assert_eq!(argmax(f.data()), argmax(want.data()));

    let m = IntModel::new(&g, QintConfig::default(), &no_calibration()).expect("lowers");
    let out = m.output_quant().expect("output grid");
    let y = m.run(&x).expect("runs");
    let got = m.dequantize_output(&y).expect("dequantizes");
    let ort = ort_reference();
    let (zoo_top, ort_top) = (argmax(want.data()), argmax(&ort));
    assert_eq!(zoo_top, ort_top);
    assert_eq!(argmax(got.data()), zoo_top, "same top-1 as the reference");
    let zoo = steps_apart(got.data(), want.data(), out.scale);
    let now = steps_apart(got.data(), &ort, out.scale);
    let ort_zoo = steps_apart(&ort, want.data(), out.scale);
    let float = steps_apart(f.data(), &ort, out.scale);
    eprintln!(
        "shufflenet-v2 int8, output steps of {}: v2 vs zoo reference {zoo:?}, v2 vs onnxruntime {now:?}, \
         onnxruntime vs zoo reference {ort_zoo:?}, float engine vs onnxruntime {float:?} (largest, logits that differ)",
        out.scale
    );
    assert!(float.0 <= 2.0, "float engine vs onnxruntime: {float:?}");
    // The zoo's 2021 reference is as far from today's onnxruntime as from v2.
    assert!(zoo.0 <= ort_zoo.0, "v2 vs the zoo reference: {zoo:?}");
    // One step per rounding rule that differs (ties, the 16-bit multiplier, the fc bias rounded
    // at the activation's scale), carried through the layers.
    assert!(now.0 <= 2.0, "v2 vs onnxruntime: {now:?}");
}

/// The largest distance in output steps and how many logits are a step or more apart.
fn steps_apart(a: &[f32], b: &[f32], scale: f64) -> (f64, usize) {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&p, &q)| ((f64::from(p) - f64::from(q)) / scale).abs().round())
        .collect();
    (
        d.iter().copied().fold(0.0, f64::max),
        d.iter().filter(|&&v| v > 0.0).count(),
    )
}

/// The logits today's onnxruntime gives (scripts/refs/shufflenet_int8_ort.py).
fn ort_reference() -> Vec<f32> {
    include_str!("data/shufflenet_v2_int8_ort.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.parse().expect("a float"))
        .collect()
}

/// The imported int8 graph exports as QDQ (QuantizeLinear/DequantizeLinear pairs, int8 weights
/// behind DequantizeLinear) and re-imports to the same integers: the form in which the enclave
/// and the `gc` worker receive a model.
#[test]
fn int8_graph_survives_a_qdq_round_trip() {
    let Some(dir) = shared_data("onnx-shufflenet-v2-12-int8") else {
        return;
    };
    let g = load_model(&dir.join("model.onnx"), &ImportOptions::default()).expect("imports");
    let bytes = tessera_model::export::export_model(&g).expect("exports");
    let h = tessera_model::import_model(&bytes, &ImportOptions::default()).expect("re-imports");
    assert_eq!(g.nodes.len(), h.nodes.len());
    for (a, b) in g.nodes.iter().zip(&h.nodes) {
        assert_eq!(a.op, b.op, "node '{}'", a.name);
    }
    let x = load_pb(&dir.join("test_data_set_0/input_0.pb")).expect("input");
    let cfg = QintConfig::default();
    let m1 = IntModel::new(&g, cfg, &no_calibration()).expect("lowers");
    let m2 = IntModel::new(&h, cfg, &no_calibration()).expect("lowers");
    assert_eq!(m1.run(&x).expect("runs"), m2.run(&x).expect("runs"));
}
