//! The nine "light" real architectures of the ONNX backend tests (onnx/onnx
//! `backend/test/data/light`: ResNet-50, VGG-19, SqueezeNet, DenseNet-121, Inception v1/v2,
//! ShuffleNet, AlexNet, ZFNet-512) through the importer and the float engine.
//!
//! Their float initializers are `ConstantOfShape` nodes, which the importer folds. The expected
//! output `light_*_output_0.pb` was computed by onnx's reference evaluator on the input the
//! backend runner generates (`Runner.generate_dummy_data(x, seed=0, random=False)`): for an input
//! of `n` elements (symbolic dimensions set to 1), element `i` is `float32(i / n)`, the division
//! in f64. The runner compares with `rtol = 1e-3, atol = 1e-7`, and so does this test.

use std::path::Path;
use tessera_data::{load_pb, shared_data};
use tessera_engine::{EngineError, QuantConfig, QuantModel, run_f32};
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
