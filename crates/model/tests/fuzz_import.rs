//! Bounded, deterministic fuzzing of the ONNX importer: mutated real models (bit flips, byte
//! overwrites, truncations, inserted and duplicated spans) must give `Ok` or `Err`, never a panic.
//! Every mutant that imports (under a small budget, [`fuzz_limits`]) is then run on a small
//! input by the float and the integer engine, which must also give `Ok` or `Err`, never a panic.

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;
use tessera_data::shared_data;
use tessera_model::builders::find;
use tessera_model::export::export_model;
use tessera_model::proto::ModelProto;
use tessera_model::{Graph, ImportLimits, ImportOptions, ModelError, Tensor, import_model};

/// The budget mutants import under: small enough that running one takes milliseconds.
fn fuzz_limits() -> ImportLimits {
    ImportLimits::default()
        .with_max_memory(64 << 20)
        .with_max_macs(20_000_000)
}

/// Run `g` on a small deterministic input in both engines; engine errors are fine.
fn run_engines(g: &Graph) -> (bool, bool) {
    let inputs: Vec<Tensor> = g
        .inputs
        .iter()
        .map(|&i| {
            let shape = g.shape(i).to_vec();
            let n: usize = shape.iter().product();
            let data = (0..n).map(|j| ((j % 17) as f32 - 8.0) / 8.0).collect();
            Tensor::new(shape, data).expect("input tensor")
        })
        .collect();
    let float_ok = tessera_engine::run_f32(g, &inputs).is_ok();
    let quant_ok = tessera_engine::QuantModel::new(g, tessera_engine::QuantConfig::default())
        .and_then(|q| q.run(&inputs))
        .is_ok();
    // The integer semantics v2 too: calibrate on the input, lower, run (errors are fine).
    let v2_ok = match inputs.as_slice() {
        [x] => tessera_engine::qint::Calibration::from_inputs(g, std::slice::from_ref(x), "fuzz")
            .and_then(|c| tessera_engine::qint::IntModel::new(g, Default::default(), &c))
            .and_then(|m| m.run(x))
            .is_ok(),
        _ => false,
    };
    (float_ok, quant_ok || v2_ok)
}

/// Total mutated inputs over all seed models.
const TOTAL_MUTATIONS: usize = 3_000;

/// Whether bytes decode as an ONNX ModelProto (protobuf-level well-formedness).
fn decodes_as_model(bytes: &[u8]) -> bool {
    ModelProto::decode(bytes).is_ok()
}

fn seed_models() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let dash = (find("dash-b").expect("dash-b").build)(1).expect("builds");
    out.push((
        "builder dash-b".to_string(),
        export_model(&dash).expect("exports"),
    ));
    for rel in ["onnx-mnist-8/model.onnx", "onnx-mnist-cntk-2018/model.onnx"] {
        if let Some(p) = shared_data(rel) {
            out.push((rel.to_string(), std::fs::read(&p).expect("read model")));
        }
    }
    for t in [
        "node/test_basic_conv_with_padding",
        "node/test_gemm_all_attributes",
        "node/test_maxpool_2d_ceil",
        "node/test_maxpool_2d_same_lower",
        "node/test_averagepool_2d_pads_count_include_pad",
        "node/test_averagepool_2d_ceil_last_window_starts_on_pad",
        "node/test_matmul_bcast",
        "node/test_softmax_axis_1",
        "node/test_flatten_axis2",
        "pytorch-converted/test_BatchNorm2d_eval",
        "pytorch-converted/test_Conv2d_strided",
        "pytorch-converted/test_Linear",
        "pytorch-converted/test_AvgPool2d",
        "node/test_concat_3d_axis_negative_2",
        "node/test_transpose_all_permutations_3",
        "node/test_clip_splitbounds",
        "node/test_qlinearconv",
        "node/test_qlinearmatmul_2D_uint8_float32",
        "node/test_dequantizelinear_axis",
        "light/light_squeezenet.onnx",
        "light/light_zfnet512.onnx",
    ] {
        let rel = if t.ends_with(".onnx") {
            format!("onnx-backend-node-tests/{t}")
        } else {
            format!("onnx-backend-node-tests/{t}/model.onnx")
        };
        if let Some(p) = shared_data(&rel) {
            out.push((t.to_string(), std::fs::read(&p).expect("read model")));
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    BitFlips,
    Overwrite,
    Truncate,
    Insert,
    Duplicate,
}

fn mutate(rng: &mut ChaCha20Rng, src: &[u8]) -> (Kind, Vec<u8>) {
    let mut b = src.to_vec();
    let len = b.len();
    let kind = match rng.random_range(0..5) {
        0 => Kind::BitFlips,
        1 => Kind::Overwrite,
        2 => Kind::Truncate,
        3 => Kind::Insert,
        _ => Kind::Duplicate,
    };
    match kind {
        Kind::BitFlips => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(0..len);
                b[i] ^= 1 << rng.random_range(0..8);
            }
        }
        Kind::Overwrite => {
            let n = rng.random_range(1..=16).min(len);
            let at = rng.random_range(0..=len - n);
            // Mix random bytes with values that stress varints and lengths.
            for v in &mut b[at..at + n] {
                *v = match rng.random_range(0..4) {
                    0 => 0xff,
                    1 => 0x00,
                    2 => 0x80,
                    _ => rng.random(),
                };
            }
        }
        Kind::Truncate => {
            b.truncate(rng.random_range(0..len));
        }
        Kind::Insert => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..=32);
            let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            b.splice(at..at, ins);
        }
        Kind::Duplicate => {
            let n = rng.random_range(1..=len.min(256));
            let from = rng.random_range(0..=len - n);
            let at = rng.random_range(0..=len);
            let span = src[from..from + n].to_vec();
            b.splice(at..at, span);
        }
    }
    (kind, b)
}

/// Import under [`fuzz_limits`] and, if that succeeds, run the graph in both engines. `Err` is a
/// panic in either (with the engine's panics marked as such).
fn try_import(bytes: &[u8]) -> Result<Result<(), ModelError>, String> {
    let message = |p: Box<dyn std::any::Any + Send>| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    };
    let opts = ImportOptions {
        limits: fuzz_limits(),
        ..Default::default()
    };
    let g = match catch_unwind(AssertUnwindSafe(|| import_model(bytes, &opts))).map_err(message)? {
        Ok(g) => g,
        Err(e) => return Ok(Err(e)),
    };
    let (f, q) = catch_unwind(AssertUnwindSafe(|| run_engines(&g)))
        .map_err(|p| format!("engine: {}", message(p)))?;
    RUNS.with(|r| {
        let mut r = r.borrow_mut();
        r.0 += 1;
        r.1 += usize::from(f);
        r.2 += usize::from(q);
    });
    Ok(Ok(()))
}

thread_local! {
    /// Graphs run by the engines, and how many ran to the end in float and in integers.
    static RUNS: std::cell::RefCell<(usize, usize, usize)> = const { std::cell::RefCell::new((0, 0, 0)) };
}

fn runs_report(what: &str) -> usize {
    let (n, f, q) = RUNS.with(|r| *r.borrow());
    println!("{what}: {n} imported graphs run, {f} ran in float, {q} in integers");
    n
}

#[test]
fn mutated_models_never_panic() {
    let models = seed_models();
    assert!(!models.is_empty());
    let started = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(0x7e55e7a);
    let per = TOTAL_MUTATIONS.div_ceil(models.len());
    let mut panics = Vec::new();
    let (mut ok, mut err, mut trunc_boundary) = (0usize, 0usize, 0usize);
    let mut by_kind = std::collections::BTreeMap::<String, (usize, usize)>::new();
    for (name, src) in &models {
        // The unmutated model's own outcome, for the record.
        let base = try_import(src).unwrap_or_else(|p| panic!("{name} panics unmutated: {p}"));
        println!(
            "{name} ({} bytes): {}",
            src.len(),
            match &base {
                Ok(()) => "imports".to_string(),
                Err(e) => format!("does not import: {e}"),
            }
        );
        for i in 0..per {
            let (kind, bytes) = mutate(&mut rng, src);
            let e = by_kind.entry(format!("{kind:?}")).or_default();
            match try_import(&bytes) {
                Err(p) => panics.push(format!("{name} mutation {i} ({kind:?}): {p}")),
                Ok(Ok(())) => {
                    ok += 1;
                    e.0 += 1;
                }
                Ok(Err(m)) => {
                    err += 1;
                    e.1 += 1;
                    assert!(!m.to_string().trim().is_empty(), "empty error message");
                }
            }
            if kind == Kind::Truncate {
                // A cut inside any length-delimited field cannot decode. A cut exactly between
                // two top-level fields leaves a shorter but well-formed message; only then may
                // the import succeed.
                if decodes_as_model(&bytes) {
                    trunc_boundary += 1;
                } else {
                    match import_model(&bytes, &ImportOptions::default()) {
                        Err(e @ ModelError::Decode(_)) => {
                            assert!(!e.to_string().trim().is_empty())
                        }
                        other => panic!("{name}: truncated to {} bytes: {other:?}", bytes.len()),
                    }
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} mutated models: {ok} imported, {err} rejected, {} panicked; {trunc_boundary} truncations fell on a field boundary; {secs:.2} s",
        ok + err + panics.len(),
        panics.len()
    );
    for (k, (o, e)) in &by_kind {
        println!("  {k:<10} ok {o:>5}  err {e:>5}");
    }
    assert!(
        runs_report("byte mutations") >= ok,
        "every imported mutant is run"
    );
    assert!(ok + err + panics.len() >= TOTAL_MUTATIONS);
    assert!(
        panics.is_empty(),
        "{} mutated models made the importer or an engine panic:\n{}",
        panics.len(),
        panics.join("\n")
    );
    assert!(secs < 60.0, "fuzzing took {secs:.1} s");
}

#[test]
fn truncated_files_are_clear_errors() {
    let mut models = seed_models();
    models.truncate(3);
    for (name, src) in &models {
        let len = src.len();
        for cut in [0, 1, 2, 5, len / 4, len / 2, 3 * len / 4, len - 1] {
            let b = &src[..cut];
            if cut > 0 && decodes_as_model(b) {
                continue; // a top-level field boundary: a shorter, well-formed file
            }
            let e = import_model(b, &ImportOptions::default())
                .expect_err(&format!("{name} cut to {cut} bytes imports"));
            let msg = e.to_string();
            assert!(!msg.trim().is_empty(), "{name} cut to {cut}: empty message");
            println!("{name} cut to {cut} bytes: {msg}");
        }
    }
    // Not a model at all.
    for junk in [&b"hello world, this is not onnx"[..], &[0xffu8; 64][..]] {
        let e = import_model(junk, &ImportOptions::default()).expect_err("junk imports");
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn mnist_cntk_2018_imports_or_is_clearly_unsupported() {
    let Some(p) = shared_data("onnx-mnist-cntk-2018/model.onnx") else {
        return;
    };
    let bytes = std::fs::read(&p).expect("read");
    match import_model(&bytes, &ImportOptions::default()) {
        Ok(g) => {
            println!(
                "mnist-cntk-2018 imports: {} nodes, input {:?}, output {:?}",
                g.nodes.len(),
                g.shape(g.inputs[0]),
                g.shape(g.outputs[0])
            );
            assert_eq!(g.shape(g.inputs[0]), [1, 1, 28, 28]);
            assert_eq!(g.shape(g.outputs[0]), [1, 10]);
        }
        Err(e @ ModelError::Unsupported { .. }) => {
            let msg = e.to_string();
            println!("mnist-cntk-2018 is unsupported: {msg}");
            assert!(msg.contains("node '") && msg.len() > 20, "unclear: {msg}");
        }
        Err(e) => panic!("mnist-cntk-2018 fails without an Unsupported error: {e}"),
    }
}

// ------------------------------------------------------------- structure-aware mutations ----

/// Structure-aware mutations per seed model: decode, change one field to an awkward value,
/// re-encode. Byte-level mutations mostly stop in the protobuf decoder; these reach the
/// importer's attribute, shape and graph checks.
const STRUCTURED_PER_MODEL: usize = 125;

const AWKWARD: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    -2,
    7,
    1 << 16,
    1 << 31,
    (1 << 31) - 1,
    1 << 32,
    1 << 62,
    i64::MAX,
    i64::MIN,
];

fn awkward(rng: &mut ChaCha20Rng) -> i64 {
    AWKWARD[rng.random_range(0..AWKWARD.len())]
}

fn pick<'a, T>(rng: &mut ChaCha20Rng, v: &'a mut [T]) -> Option<&'a mut T> {
    if v.is_empty() {
        None
    } else {
        let i = rng.random_range(0..v.len());
        v.get_mut(i)
    }
}

const OPS: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "BatchNormalization",
    "Identity",
    "Dropout",
    "Constant",
    "Softmax",
    "Sigmoid",
    "Tanh",
    "Clip",
    "Sum",
    "Concat",
    "Transpose",
    "Pad",
    "LRN",
    "Unsqueeze",
    "Squeeze",
    "Shape",
    "Gather",
    "ConstantOfShape",
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearGlobalAveragePool",
    "Split",
    "Slice",
    "ReduceMean",
    "",
];

fn structured(rng: &mut ChaCha20Rng, src: &ModelProto) -> ModelProto {
    use tessera_model::proto::{AttributeProto, Dimension, attr_type};
    let mut m = src.clone();
    let Some(g) = m.graph.as_mut() else {
        return m;
    };
    let names: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().chain(&n.output).cloned())
        .chain(g.initializer.iter().map(|t| t.name.clone()))
        .collect();
    let any_name = |rng: &mut ChaCha20Rng| -> String {
        if names.is_empty() || rng.random_range(0..4) == 0 {
            ["", "nope", "x"][rng.random_range(0..3)].to_string()
        } else {
            names[rng.random_range(0..names.len())].clone()
        }
    };
    match rng.random_range(0..12) {
        // An initializer's dims.
        0 => {
            if let Some(t) = pick(rng, &mut g.initializer) {
                match rng.random_range(0..3) {
                    0 if !t.dims.is_empty() => {
                        let i = rng.random_range(0..t.dims.len());
                        t.dims[i] = awkward(rng);
                    }
                    1 => t.dims.push(awkward(rng)),
                    _ => {
                        t.dims.pop();
                    }
                }
            }
        }
        // An initializer's type or payload.
        1 => {
            if let Some(t) = pick(rng, &mut g.initializer) {
                match rng.random_range(0..4) {
                    0 => t.data_type = [0, 1, 2, 3, 6, 7, 9, 10, 11, 16][rng.random_range(0..10)],
                    1 => {
                        let n = rng.random_range(0..=t.raw_data.len());
                        t.raw_data.truncate(n);
                    }
                    2 => t.float_data.push(1.5),
                    _ => t.data_location = 1,
                }
            }
        }
        // A node attribute's value.
        2 => {
            if let Some(n) = pick(rng, &mut g.node)
                && let Some(a) = pick(rng, &mut n.attribute)
            {
                match rng.random_range(0..5) {
                    0 => a.i = awkward(rng),
                    1 if !a.ints.is_empty() => {
                        let i = rng.random_range(0..a.ints.len());
                        a.ints[i] = awkward(rng);
                    }
                    2 => a.ints.push(awkward(rng)),
                    3 => {
                        a.ints.pop();
                    }
                    _ => a.f = [0.0, -1.0, f32::NAN, f32::INFINITY, 1e30][rng.random_range(0..5)],
                }
            }
        }
        // A node attribute's type or name; or a new attribute.
        3 => {
            if let Some(n) = pick(rng, &mut g.node) {
                let names = [
                    "axis",
                    "pads",
                    "strides",
                    "kernel_shape",
                    "dilations",
                    "group",
                    "auto_pad",
                    "ceil_mode",
                    "transA",
                    "transB",
                    "allowzero",
                    "shape",
                    "value",
                    "count_include_pad",
                ];
                let name = names[rng.random_range(0..names.len())].to_string();
                match rng.random_range(0..3) {
                    0 => {
                        if let Some(a) = pick(rng, &mut n.attribute) {
                            a.r#type = [0, 1, 2, 3, 4, 6, 7][rng.random_range(0..7)];
                        }
                    }
                    1 => {
                        if let Some(a) = pick(rng, &mut n.attribute) {
                            a.name = name;
                        }
                    }
                    _ => {
                        let ints: Vec<i64> =
                            (0..rng.random_range(0..5)).map(|_| awkward(rng)).collect();
                        n.attribute.push(AttributeProto {
                            name,
                            r#type: attr_type::INTS,
                            i: awkward(rng),
                            ints,
                            s: b"SAME_UPPER".to_vec(),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        // A node's inputs.
        4 => {
            let nm = any_name(rng);
            if let Some(n) = pick(rng, &mut g.node) {
                match rng.random_range(0..3) {
                    0 => {
                        n.input.pop();
                    }
                    1 => n.input.push(nm),
                    _ => {
                        if let Some(i) = pick(rng, &mut n.input) {
                            *i = nm;
                        }
                    }
                }
            }
        }
        // A node's op type or outputs.
        5 => {
            let nm = any_name(rng);
            if let Some(n) = pick(rng, &mut g.node) {
                match rng.random_range(0..3) {
                    0 => n.op_type = OPS[rng.random_range(0..OPS.len())].to_string(),
                    1 => n.output = vec![nm],
                    _ => n.output.push(nm),
                }
            }
        }
        // Graph input shapes.
        6 => {
            if let Some(v) = pick(rng, &mut g.input) {
                let shape = v
                    .r#type
                    .get_or_insert_default()
                    .tensor_type
                    .get_or_insert_default()
                    .shape
                    .get_or_insert_default();
                match rng.random_range(0..4) {
                    0 => {
                        if let Some(d) = pick(rng, &mut shape.dim) {
                            d.dim_value = Some(awkward(rng));
                        }
                    }
                    1 => {
                        if let Some(d) = pick(rng, &mut shape.dim) {
                            *d = Dimension {
                                dim_value: None,
                                dim_param: Some("N".into()),
                            };
                        }
                    }
                    2 => {
                        shape.dim.pop();
                    }
                    _ => shape.dim.push(Dimension {
                        dim_value: Some(awkward(rng).rem_euclid(5)),
                        dim_param: None,
                    }),
                }
            }
        }
        // Graph outputs.
        7 => {
            let nm = any_name(rng);
            match rng.random_range(0..3) {
                0 => {
                    g.output.pop();
                }
                1 => {
                    if let Some(o) = pick(rng, &mut g.output) {
                        o.name = nm;
                    }
                }
                _ => g.output.push(tessera_model::proto::ValueInfoProto {
                    name: nm,
                    r#type: None,
                }),
            }
        }
        // Node order and count.
        8 => {
            let len = g.node.len();
            if len > 0 {
                let (i, j) = (rng.random_range(0..len), rng.random_range(0..len));
                match rng.random_range(0..3) {
                    0 => g.node.swap(i, j),
                    1 => {
                        g.node.remove(i);
                    }
                    _ => {
                        let n = g.node[i].clone();
                        g.node.insert(j, n);
                    }
                }
            }
        }
        // Drop an initializer (a weight becomes undefined or a runtime input).
        9 => {
            if !g.initializer.is_empty() {
                let i = rng.random_range(0..g.initializer.len());
                g.initializer.remove(i);
            }
        }
        // Opset.
        10 => {
            let v = awkward(rng);
            match m.opset_import.first_mut() {
                Some(o) => o.version = v,
                None => m.opset_import.clear(),
            }
        }
        // Node domain.
        _ => {
            if let Some(n) = pick(rng, &mut g.node) {
                n.domain = ["com.microsoft", "ai.onnx", "", "ai.onnx.ml"][rng.random_range(0..4)]
                    .to_string();
            }
        }
    }
    m
}

#[test]
fn structurally_mutated_models_never_panic() {
    let models = seed_models();
    let started = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(0x57_2c_7e);
    let (mut ok, mut err) = (0usize, 0usize);
    let mut panics = Vec::new();
    for (name, src) in &models {
        let m = ModelProto::decode(src.as_slice()).expect("seed model decodes");
        for i in 0..STRUCTURED_PER_MODEL {
            // One to three stacked mutations.
            let mut cur = m.clone();
            for _ in 0..rng.random_range(1..=3) {
                cur = structured(&mut rng, &cur);
            }
            match try_import(&cur.encode_to_vec()) {
                Err(p) => panics.push(format!("{name} structured mutation {i}: {p}")),
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => {
                    err += 1;
                    assert!(!e.to_string().trim().is_empty(), "empty error message");
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} structurally mutated models: {ok} imported, {err} rejected, {} panicked; {secs:.2} s",
        ok + err + panics.len(),
        panics.len()
    );
    assert!(
        runs_report("structured mutations") >= ok,
        "every imported mutant is run"
    );
    assert!(
        panics.is_empty(),
        "{} structurally mutated models made the importer or an engine panic:\n{}",
        panics.len(),
        panics.join("\n")
    );
    assert!(secs < 60.0, "fuzzing took {secs:.1} s");
}

/// Regressions found by the structure-aware fuzzer: window attributes and a legacy broadcast
/// axis near the i64 limits overflowed in the importer's arithmetic (a panic in debug builds).
#[test]
fn extreme_window_attributes_are_errors_not_panics() {
    use tessera_model::proto::{AttributeProto, attr_type};
    let mut b = tessera_model::GraphBuilder::new("t", 1);
    let x = b.input("x", vec![1, 2, 8, 8]).expect("input");
    let c = b.conv(x, 2, 3, 1, 1).expect("conv");
    let p = b.max_pool(c, 2, 2).expect("pool");
    let r = b.relu(p).expect("relu");
    let s = b.add(r, r).expect("add");
    let g = b.finish(vec![s]).expect("graph");
    let base = ModelProto::decode(export_model(&g).expect("exports").as_slice()).expect("decodes");
    let ints = |name: &str, v: Vec<i64>| AttributeProto {
        name: name.into(),
        r#type: attr_type::INTS,
        ints: v,
        ..Default::default()
    };
    let big = [i64::MAX, i64::MIN, 1 << 62, 1 << 40, (1 << 31) + 1];
    let mut cases = 0;
    for op in ["Conv", "MaxPool"] {
        for &v in &big {
            for attr in ["dilations", "strides", "pads", "kernel_shape"] {
                for auto in [None, Some("SAME_UPPER"), Some("SAME_LOWER")] {
                    let mut m = base.clone();
                    let graph = m.graph.as_mut().expect("graph");
                    let n = graph
                        .node
                        .iter_mut()
                        .find(|n| n.op_type == op)
                        .expect("node");
                    n.attribute.retain(|a| a.name != attr && a.name != "pads");
                    let len = if attr == "pads" { 4 } else { 2 };
                    n.attribute.push(ints(attr, vec![v; len]));
                    if let Some(a) = auto {
                        n.attribute.push(AttributeProto {
                            name: "auto_pad".into(),
                            r#type: attr_type::STRING,
                            s: a.as_bytes().to_vec(),
                            ..Default::default()
                        });
                    }
                    let r = try_import(&m.encode_to_vec())
                        .unwrap_or_else(|p| panic!("{op} {attr} = {v} {auto:?} panics: {p}"));
                    if attr == "pads" && auto.is_some() {
                        // auto_pad overrides explicit pads: the model is fine.
                        continue;
                    }
                    let e = r.expect_err(&format!("{op} {attr} = {v} {auto:?} imports"));
                    assert!(!e.to_string().is_empty());
                    cases += 1;
                }
            }
        }
    }
    // Opset-6 legacy broadcast with an axis at the i64 limits.
    for axis in [i64::MIN, i64::MAX, -5, 5] {
        let mut m = base.clone();
        m.opset_import[0].version = 6;
        let graph = m.graph.as_mut().expect("graph");
        let n = graph
            .node
            .iter_mut()
            .find(|n| n.op_type == "Add")
            .expect("add");
        for (name, i) in [("broadcast", 1), ("axis", axis)] {
            n.attribute.push(AttributeProto {
                name: name.into(),
                r#type: attr_type::INT,
                i,
                ..Default::default()
            });
        }
        let r = try_import(&m.encode_to_vec())
            .unwrap_or_else(|p| panic!("legacy broadcast axis {axis} panics: {p}"));
        assert!(r.is_err(), "axis {axis} imports");
        cases += 1;
    }
    println!("{cases} extreme-attribute models rejected cleanly");
}
