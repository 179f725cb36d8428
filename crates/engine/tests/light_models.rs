//! The nine "light" real architectures of the ONNX backend tests (onnx/onnx
//! `backend/test/data/light`: ResNet-50, VGG-19, SqueezeNet, DenseNet-121, Inception v1/v2,
//! ShuffleNet, AlexNet, ZFNet-512) through the importer and the float engine.
//!
//! Their float initializers are `ConstantOfShape` nodes, which the importer folds. The expected
//! output `light_*_output_0.pb` was computed by onnx's reference evaluator on the input the
//! backend runner generates (`Runner.generate_dummy_data(x, seed=0, random=False)`): for an input
//! of `n` elements (symbolic dimensions set to 1), element `i` is `float32(i / n)`, the division
//! in f64. The runner compares with `rtol = 1e-3, atol = 1e-7`, and so does this test.
//!
//! The light graphs' weights are constants, so they also serve as architectures: with seeded
//! random weights (`seeded`), the float engine matches onnxruntime's logits (committed, generated
//! by scripts/refs/light_seeded_ort.py) within 1e-4 of the largest logit, and v2 (LRN included)
//! stays within a stated error of the float logits for all nine.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::path::Path;
use tessera_data::{load_pb, shared_data};
use tessera_engine::qint::{Calibration, IntModel, QintConfig, default_calibration_inputs};
use tessera_engine::{EngineError, QuantConfig, QuantModel, run_f32};
use tessera_model::ir::{BinOp, Graph, Op};
use tessera_model::limits::GIB;
use tessera_model::{ImportLimits, ImportOptions, Tensor, load_model};

const MODELS: &[&str] = &[
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
];

/// The backend runner's deterministic input for `shape`: `arange(n) / n` in f32.
fn runner_input(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| (i as f64 / n as f64) as f32).collect();
    Tensor::new(shape.to_vec(), data).expect("shape and data agree")
}

fn check(dir: &Path, name: &str) -> Result<(), String> {
    let model = dir.join(format!("light_{name}.onnx"));
    let mut opts = ImportOptions::default();
    if name == "vgg19" {
        // fc6's 25088×4096 weights cost 2.9 GB under the cost model (the integer engine's i64
        // and f64 copies), over the default 2 GiB per node: a trusted model raises the budget.
        opts.limits = ImportLimits::default().with_max_memory(8 * GIB);
    }
    let g = load_model(&model, &opts).map_err(|e| format!("import: {e}"))?;
    // The integer engine either takes the graph or refuses a float-only op by name.
    match QuantModel::new(&g, QuantConfig::default()) {
        Ok(_) | Err(EngineError::Unsupported { .. }) => {}
        Err(e) => return Err(format!("integer engine: {e}")),
    }
    let inputs: Vec<Tensor> = g.inputs.iter().map(|&i| runner_input(g.shape(i))).collect();
    let out = run_f32(&g, &inputs).map_err(|e| format!("run: {e}"))?;
    let want = load_pb(&dir.join(format!("light_{name}_output_0.pb")))
        .map_err(|e| format!("expected output: {e}"))?;
    let got = out.first().ok_or("no output")?;
    if got.len() != want.len() {
        return Err(format!(
            "output shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let (rtol, atol) = (1e-3f32, 1e-7f32);
    for (i, (&a, &b)) in got.data().iter().zip(want.data()).enumerate() {
        let within = (a - b).abs() <= atol + rtol * b.abs();
        if !within {
            return Err(format!("element {i}: got {a}, expected {b}"));
        }
    }
    Ok(())
}

#[test]
fn light_models_match_the_reference_outputs() {
    let Some(dir) = shared_data("onnx-backend-node-tests/light") else {
        return;
    };
    let failures: Vec<String> = MODELS
        .iter()
        .filter_map(|m| check(&dir, m).err().map(|e| format!("{m}: {e}")))
        .collect();
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// `g` with seeded random weights (He-uniform per layer, small biases, per-channel scale and
/// shift constants near 1 and 0) and its final Softmax removed, so that its output is the
/// logits: the light graph's architecture with weights that make every layer matter.
fn seeded(mut g: Graph, seed: u64) -> Graph {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut uniform = |t: &Tensor, a: f32| {
        let d = (0..t.len()).map(|_| rng.random_range(-a..=a)).collect();
        Tensor::new(t.shape().to_vec(), d).expect("same shape")
    };
    for n in &mut g.nodes {
        match &mut n.op {
            Op::Conv(c) => {
                let fan_in = c.weight.len() / c.weight.shape()[0].max(1);
                c.weight = uniform(&c.weight, (6.0 / fan_in as f32).sqrt());
                let co = c.weight.shape()[0];
                c.bias = Some(uniform(
                    &Tensor::new(vec![co], vec![0.0; co]).expect("b"),
                    0.05,
                ));
            }
            Op::Dense(d) => {
                let fan_in = d.weight.shape()[1].max(1);
                d.weight = uniform(&d.weight, (3.0 / fan_in as f32).sqrt());
                let m = d.weight.shape()[0];
                d.bias = Some(uniform(
                    &Tensor::new(vec![m], vec![0.0; m]).expect("b"),
                    0.05,
                ));
            }
            Op::Binary {
                op,
                constant: Some(c),
                ..
            } => {
                let r = uniform(c, 0.25);
                *c = match op {
                    BinOp::Mul | BinOp::Div => r.map(|v| 1.0 + v),
                    _ => r.map(|v| 0.4 * v),
                };
            }
            _ => {}
        }
    }
    if let Some(last) = g.nodes.last()
        && matches!(last.op, Op::Softmax { .. })
        && let Some(&x) = last.inputs.first()
    {
        g.outputs = vec![x];
        g.nodes.pop();
    }
    g
}

fn load_light(dir: &Path, name: &str) -> Graph {
    // VGG-19's and the LRN nets' fully connected layers exceed the default 2 GiB per node under
    // the cost model: trusted models raise the budget.
    let opts = ImportOptions {
        limits: ImportLimits::default().with_max_memory(8 * GIB),
        ..ImportOptions::default()
    };
    load_model(&dir.join(format!("light_{name}.onnx")), &opts).expect("imports")
}

/// Writes the seeded graphs as ONNX into `$TESSERA_SEEDED_OUT` for the reference generator
/// (scripts/refs/light_seeded_ort.py): `TESSERA_SEEDED_OUT=/tmp/seeded cargo test --release -p
/// tessera-engine --test light_models -- --ignored write_seeded`.
#[test]
#[ignore = "writes the seeded graphs for the reference generator"]
fn write_seeded_graphs() {
    let dir = shared_data("onnx-backend-node-tests/light").expect("light graphs");
    let out = std::path::PathBuf::from(std::env::var("TESSERA_SEEDED_OUT").expect("output dir"));
    std::fs::create_dir_all(&out).expect("output dir");
    for name in MODELS {
        let g = seeded(load_light(&dir, name), SEED);
        let bytes = tessera_model::export::export_model(&g).expect("exports");
        std::fs::write(out.join(format!("{name}.onnx")), bytes).expect("writes");
    }
}

/// onnxruntime's logits for a seeded graph on the runner input (tests/data/light_seeded).
fn ort_logits(name: &str) -> Option<Vec<f32>> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/light_seeded/{name}.bin"));
    let b = std::fs::read(p).ok()?;
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

const SEED: u64 = 7;

/// Largest v2 logit error per seeded graph, in percent of its largest float logit, calibrated
/// on 4 generated inputs uniform in [0, 1] with the default parameters (w8a8, B = 3): the
/// figures measured when this test was written, rounded up (BENCHMARKS.md has them). The
/// calibration runs the float engine, whose f32 summation order follows the kernel the CPU
/// has, so a figure can move by a few tenths of a point between machines. DenseNet-121 went
/// from 7.0% to 2.0% when chains of constant ops (its unfolded batch normalisations) began to
/// requantize once and concatenated values to land on the concatenation's grid; VGG-19 (19
/// layers of 8-bit activations, no normalisation) stays near 4% at the int8 default and is
/// held to 1% at 10-bit weights and activations ([`WIDE`]; BENCHMARKS.md explains).
const V2_ERROR_PERCENT: &[(&str, f32)] = &[
    ("bvlc_alexnet", 2.0),
    ("inception_v1", 3.0),
    ("zfnet512", 3.0),
    ("densenet121", 2.5),
    ("inception_v2", 2.0),
    ("resnet50", 2.0),
    ("shufflenet", 2.0),
    ("squeezenet", 2.0),
    ("vgg19", 4.5),
];

/// Graphs also checked at wider weights and activations (b_w, b_a), with their bound in
/// percent: VGG-19 cannot reach 2% with 8-bit activations (16-bit weights give 3.1%,
/// calibrating on the test input itself 2.5%), and DenseNet-121 sits on 2% at 8 bits. At
/// b_w = b_a = 10 they measured 0.74% and 0.54%.
const WIDE: &[(&str, u32, u32, f32)] = &[("densenet121", 10, 10, 1.0), ("vgg19", 10, 10, 1.0)];

#[test]
fn seeded_light_graphs_match_onnxruntime_and_v2_tracks_them() {
    let Some(dir) = shared_data("onnx-backend-node-tests/light") else {
        return;
    };
    let mut failures = Vec::new();
    for name in MODELS {
        let g = seeded(load_light(&dir, name), SEED);
        let x = runner_input(g.shape(g.inputs[0]));
        let f = run_f32(&g, std::slice::from_ref(&x)).expect("float");
        let f = f.first().expect("output").data();
        let want = ort_logits(name).expect("the committed reference");
        let top = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = f
            .iter()
            .zip(&want)
            .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
        eprintln!(
            "{name}: float vs onnxruntime {:.1e} of max |logit| {top:.4}",
            err / top
        );
        if f.len() != want.len() || err > 1e-4 * top {
            failures.push(format!(
                "{name}: float is {err} from onnxruntime (max |logit| {top})"
            ));
        }
        let &(_, bound) = V2_ERROR_PERCENT
            .iter()
            .find(|(n, _)| n == name)
            .expect("a bound for every graph");
        let cal_in = default_calibration_inputs(&g, 0.0, 1.0, 4, 3).expect("inputs");
        let cal = Calibration::from_inputs(&g, &cal_in, "generated").expect("calibrates");
        let wide = WIDE
            .iter()
            .filter(|w| w.0 == *name)
            .map(|&(_, wb, ab, b)| (wb, ab, b));
        let int8 = QintConfig::default();
        let settings = std::iter::once((int8.weight_bits, int8.act_bits, bound)).chain(wide);
        for (wb, ab, bound) in settings {
            let cfg = QintConfig {
                weight_bits: wb,
                act_bits: ab,
                ..QintConfig::default()
            };
            let m = IntModel::new(&g, cfg, &cal).expect("lowers under v2");
            let y = m.dequantize_output(&m.run(&x).expect("runs")).expect("deq");
            let e = f
                .iter()
                .zip(y.data())
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            let ftop = f.iter().fold(0f32, |a, v| a.max(v.abs()));
            let pct = 100.0 * e / ftop;
            eprintln!(
                "{name}: v2 (w{wb}a{ab}) logit error {pct:.2}% of max |float logit| {ftop:.4}"
            );
            if pct > bound {
                failures.push(format!(
                    "{name}: v2 w{wb}a{ab} error {pct:.2}% over {bound}%"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
