//! The official ONNX backend node tests (onnx/onnx `backend/test/data/node` and
//! `pytorch-converted`) through the importer and the float engine.
//!
//! Every test directory is run; each ends up "passed", "unsupported" (the importer rejects an op
//! tessera does not implement, with `ModelError::Unsupported`), or a failure. Tests of ops tessera
//! supports must pass; no test may panic.

use prost::Message;
use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use tessera_data::{load_pb, load_pb_any, shared_data};
use tessera_engine::run_f32;
use tessera_model::import::ConstTensor;
use tessera_model::proto::ModelProto;
use tessera_model::{ImportOptions, ModelError, Tensor, import_model};

/// Name prefixes (after `test_`, lower-cased) of tests whose op tessera does not implement; these
/// may end "unsupported".
const UNSUPPORTED_OPS: &[&str] = &[
    "argmax",
    "convinteger",
    "dequantizelinear",
    "erf",
    "exp",
    "logsoftmax",
    "matmulinteger",
    "pow",
    "qlinear",
    "quantizelinear",
    "reduce_mean",
    "sqrt",
    "globalmaxpool",
];

/// Name prefixes of tests whose op tessera supports; these must pass.
const SUPPORTED_OPS: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "relu",
    "conv",
    "basic_conv",
    "averagepool",
    "maxpool",
    "globalaveragepool",
    "batchnorm",
    "gemm",
    "matmul",
    "flatten",
    "reshape",
    "identity",
    "softmax",
    "avgpool2d",
    "linear",
    "maxpool2d",
    "conv2d",
    "batchnorm2d_eval",
    "clip",
    "concat",
    "sigmoid",
    "tanh",
    "transpose",
];

#[derive(Debug)]
enum Outcome {
    Passed,
    Unsupported(String),
    Failed(String),
    Panicked(String),
}

/// (op type, input position) pairs whose operand tessera needs as a constant.
fn needs_const(op: &str, pos: usize) -> bool {
    match op {
        "Conv" => pos == 1 || pos == 2,
        "BatchNormalization" => (1..=4).contains(&pos),
        "Reshape" => pos == 1,
        "Clip" => pos == 1 || pos == 2,
        _ => false,
    }
}

fn numbered(dir: &Path, stem: &str) -> Vec<PathBuf> {
    (0..)
        .map(|i| dir.join(format!("{stem}_{i}.pb")))
        .take_while(|p| p.exists())
        .collect()
}

fn close(a: f32, b: f32) -> bool {
    if b.is_nan() {
        return a.is_nan();
    }
    if b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-7 + 1e-3 * b.abs()
}

fn run_one(dir: &Path) -> Outcome {
    let bytes = match std::fs::read(dir.join("model.onnx")) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(format!("cannot read model.onnx: {e}")),
    };
    let model = match ModelProto::decode(bytes.as_slice()) {
        Ok(m) => m,
        Err(e) => return Outcome::Failed(format!("model.onnx does not decode: {e}")),
    };
    let graph = model.graph.unwrap_or_default();
    let mut const_names = BTreeSet::new();
    for n in &graph.node {
        for (pos, name) in n.input.iter().enumerate() {
            if needs_const(&n.op_type, pos) {
                const_names.insert(name.clone());
            }
        }
    }
    let data = dir.join("test_data_set_0");
    let mut opts = ImportOptions::default();
    let mut runtime: Vec<Tensor> = Vec::new();
    for (i, path) in numbered(&data, "input").iter().enumerate() {
        let Some(gi) = graph.input.get(i) else {
            return Outcome::Failed(format!("input_{i}.pb has no graph input"));
        };
        let t = match load_pb_any(path) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(format!("input_{i}.pb: {e}")),
        };
        // Integer tensors are never runtime inputs in tessera (they are shapes, indices or
        // quantized data), so they are bound as constants too.
        if const_names.contains(&gi.name) || matches!(t, ConstTensor::I64(_)) {
            opts.constants.insert(gi.name.clone(), t);
        } else {
            runtime.push(t.to_f32());
        }
    }
    let g = match import_model(&bytes, &opts) {
        Ok(g) => g,
        Err(e @ ModelError::Unsupported { .. }) => return Outcome::Unsupported(e.to_string()),
        Err(e) => return Outcome::Failed(format!("import: {e}")),
    };
    let got = match run_f32(&g, &runtime) {
        Ok(o) => o,
        Err(e) => return Outcome::Failed(format!("run: {e}")),
    };
    let want = numbered(&data, "output");
    if want.len() != got.len() {
        return Outcome::Failed(format!(
            "{} outputs, the test expects {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (path, y)) in want.iter().zip(&got).enumerate() {
        let w = match load_pb(path) {
            Ok(w) => w,
            Err(e) => return Outcome::Failed(format!("output_{i}.pb: {e}")),
        };
        if w.shape() != y.shape() {
            return Outcome::Failed(format!(
                "output {i} has shape {:?}, expected {:?}",
                y.shape(),
                w.shape()
            ));
        }
        let bad = y
            .data()
            .iter()
            .zip(w.data())
            .enumerate()
            .filter(|(_, (a, b))| !close(**a, **b))
            .collect::<Vec<_>>();
        if let Some((k, (a, b))) = bad.first() {
            return Outcome::Failed(format!(
                "output {i}: {} of {} elements differ; first at {k}: got {a}, expected {b}",
                bad.len(),
                w.len()
            ));
        }
    }
    Outcome::Passed
}

fn op_of(test: &str) -> String {
    test.trim_start_matches("test_").to_ascii_lowercase()
}

fn is_supported(test: &str) -> bool {
    let op = op_of(test);
    // "globalaveragepool" starts with neither "globalmaxpool" nor any unsupported prefix, but
    // "conv" is a prefix of "convinteger": check the unsupported list first.
    if UNSUPPORTED_OPS.iter().any(|p| op.starts_with(p)) {
        return false;
    }
    SUPPORTED_OPS.iter().any(|p| op.starts_with(p))
}

fn may_be_unsupported(test: &str) -> bool {
    let op = op_of(test);
    UNSUPPORTED_OPS.iter().any(|p| op.starts_with(p))
}

#[test]
fn onnx_backend_node_tests() {
    let Some(root) = shared_data("onnx-backend-node-tests") else {
        return;
    };
    let started = std::time::Instant::now();
    let mut results: Vec<(String, Outcome)> = Vec::new();
    for sub in ["node", "pytorch-converted"] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join(sub))
            .unwrap_or_else(|e| panic!("cannot list {sub}: {e}"))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.join("model.onnx").exists())
            .collect();
        dirs.sort();
        for d in dirs {
            let name = format!(
                "{sub}/{}",
                d.file_name().expect("test dir name").to_string_lossy()
            );
            let outcome = catch_unwind(AssertUnwindSafe(|| run_one(&d))).unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-string panic".into());
                Outcome::Panicked(msg)
            });
            results.push((name, outcome));
        }
    }
    let mut problems = Vec::new();
    let (mut passed, mut unsupported) = (0, 0);
    println!("ONNX backend node tests ({} run):", results.len());
    for (name, o) in &results {
        let test = name.rsplit('/').next().unwrap_or(name);
        let (tag, detail) = match o {
            Outcome::Passed => {
                passed += 1;
                ("passed", String::new())
            }
            Outcome::Unsupported(d) => {
                unsupported += 1;
                ("unsupported", d.clone())
            }
            Outcome::Failed(d) => ("FAILED", d.clone()),
            Outcome::Panicked(d) => ("PANICKED", d.clone()),
        };
        println!("  {tag:<12} {name:<64} {detail}");
        let ok = match o {
            Outcome::Passed => true,
            Outcome::Unsupported(_) => may_be_unsupported(test),
            Outcome::Failed(_) | Outcome::Panicked(_) => false,
        };
        if !ok {
            problems.push(format!("{name}: {tag} {detail}"));
        }
    }
    let supported: Vec<&String> = results
        .iter()
        .map(|(n, _)| n)
        .filter(|n| is_supported(n.rsplit('/').next().unwrap_or(n)))
        .collect();
    println!(
        "{passed} passed, {unsupported} unsupported, {} other, of {} ({} of supported ops); {:.2} s",
        results.len() - passed - unsupported,
        results.len(),
        supported.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        results.len() >= 150,
        "expected the 143 node + 10 pytorch-converted tests, found {}",
        results.len()
    );
    assert!(
        problems.is_empty(),
        "{} node tests went wrong:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every test directory is classified as supported or known-unsupported (no silent gaps).
#[test]
fn every_node_test_is_classified() {
    let Some(root) = shared_data("onnx-backend-node-tests") else {
        return;
    };
    let mut unknown = Vec::new();
    let mut counts: HashMap<bool, usize> = HashMap::new();
    for sub in ["node", "pytorch-converted"] {
        for e in std::fs::read_dir(root.join(sub)).expect("list tests") {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            let (s, u) = (is_supported(&name), may_be_unsupported(&name));
            if s == u {
                unknown.push(name);
            } else {
                *counts.entry(s).or_default() += 1;
            }
        }
    }
    assert!(unknown.is_empty(), "unclassified tests: {unknown:?}");
    println!(
        "{} tests of supported ops, {} of unsupported ops",
        counts.get(&true).copied().unwrap_or(0),
        counts.get(&false).copied().unwrap_or(0)
    );
}
