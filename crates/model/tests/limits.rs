//! Hostile models: tiny files that declare huge windows, pads or im2col buffers are rejected at
//! import, quickly, with the error that names the node and the limit; the real models still
//! import under the default limits.

mod common;

use common::{int, ints, value};
use prost::Message;
use std::time::{Duration, Instant};
use tessera_data::shared_data;
use tessera_model::limits::{Resource, Scope};
use tessera_model::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, data_type,
};
use tessera_model::{ImportLimits, ImportOptions, ModelError, import_model};

/// A one-node model `y = op(x[, W])` over input dims `x`, with an optional float weight.
fn one_node(
    op: &str,
    x: &[i64],
    weight: Option<&[i64]>,
    attrs: Vec<AttributeProto>,
    opset: i64,
) -> Vec<u8> {
    let mut inputs = vec!["x".to_string()];
    let mut init = vec![];
    if let Some(ws) = weight {
        let n: i64 = ws.iter().product();
        init.push(TensorProto {
            name: "W".into(),
            dims: ws.to_vec(),
            data_type: data_type::FLOAT,
            float_data: vec![0.5; n as usize],
            ..Default::default()
        });
        inputs.push("W".into());
    }
    let m = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(GraphProto {
            name: "hostile".into(),
            node: vec![NodeProto {
                name: "bomb".into(),
                op_type: op.into(),
                input: inputs,
                output: vec!["y".into()],
                attribute: attrs,
                ..Default::default()
            }],
            initializer: init,
            input: vec![value("x", x)],
            output: vec![value("y", &[])],
            ..Default::default()
        }),
        ..Default::default()
    };
    m.encode_to_vec()
}

/// Import with the default limits, asserting it fails fast; returns the error.
fn rejected(bytes: &[u8]) -> ModelError {
    assert!(
        bytes.len() < 4096,
        "the hostile model is {} bytes",
        bytes.len()
    );
    let t = Instant::now();
    let e = import_model(bytes, &ImportOptions::default()).expect_err("the hostile model imports");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "rejection took {:?}",
        t.elapsed()
    );
    e
}

#[test]
fn huge_pads_are_out_of_range() {
    // 2^30 was accepted before (the old cap was 2^31) and made a window of 2^30 positions.
    let b = one_node(
        "MaxPool",
        &[1, 1, 4, 4],
        None,
        vec![
            ints("kernel_shape", &[2, 2]),
            ints("pads", &[0, 0, 1 << 30, 0]),
        ],
        13,
    );
    let e = rejected(&b);
    assert!(
        matches!(&e, ModelError::OutOfRange { node, attr, field: "max_pad", .. } if node == "bomb" && attr == "pads"),
        "{e:?}"
    );
    assert!(e.to_string().contains("max_pad"), "{e}");
}

#[test]
fn huge_pool_kernel_is_out_of_range() {
    let b = one_node(
        "AveragePool",
        &[1, 1, 4, 4],
        None,
        vec![
            ints("kernel_shape", &[1 << 20, 1 << 20]),
            ints("pads", &[1 << 20, 1 << 20, 0, 0]),
        ],
        13,
    );
    let e = rejected(&b);
    assert!(
        matches!(&e, ModelError::OutOfRange { node, attr, field: "max_kernel", .. } if node == "bomb" && attr == "kernel_shape"),
        "{e:?}"
    );
}

#[test]
fn huge_strides_dilations_and_groups_are_out_of_range() {
    for (attr, field, extra) in [
        ("strides", "max_stride", ints("strides", &[1 << 20, 1])),
        (
            "dilations",
            "max_dilation",
            ints("dilations", &[1, 1 << 20]),
        ),
        ("group", "max_groups", int("group", 1 << 20)),
    ] {
        let b = one_node("Conv", &[1, 1, 4, 4], Some(&[1, 1, 1, 1]), vec![extra], 13);
        let e = rejected(&b);
        assert!(
            matches!(&e, ModelError::OutOfRange { node, attr: a, field: f, .. } if node == "bomb" && a == attr && *f == field),
            "{attr}: {e:?}"
        );
    }
}

#[test]
fn a_huge_im2col_buffer_is_over_the_memory_budget() {
    // 200 weights (800 bytes) on an 8 × 2048 × 2048 input: every attribute is in range and
    // the input and output fit (256 MiB and 32 MiB), but the im2col buffer would be 8·25 rows
    // of 2044² columns, 6.7 GB.
    let b = one_node("Conv", &[1, 8, 2048, 2048], Some(&[1, 8, 5, 5]), vec![], 13);
    let e = rejected(&b);
    assert!(
        matches!(&e, ModelError::OverBudget { node, resource: Resource::Memory, scope: Scope::Node, limit, needed, .. }
            if node == "bomb" && *limit == 2 << 30 && *needed > 6_000_000_000),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("bomb") && msg.contains("--max-memory"),
        "{msg}"
    );
    // Raising the budget lets the same model import (it is legitimate, just big).
    let opts = ImportOptions {
        limits: ImportLimits::default().with_max_memory(16 << 30),
        ..Default::default()
    };
    import_model(&b, &opts).expect("imports under a raised budget");
}

#[test]
fn a_huge_pooling_window_is_over_the_work_budget() {
    // A 1024 × 1024 window (in range) at stride 1 over 1025² positions: 2^40 window reads.
    let b = one_node(
        "MaxPool",
        &[1, 1, 1024, 1024],
        None,
        vec![
            ints("kernel_shape", &[1024, 1024]),
            ints("pads", &[512, 512, 512, 512]),
        ],
        13,
    );
    let e = rejected(&b);
    assert!(
        matches!(&e, ModelError::OverBudget { node, resource: Resource::Work, scope: Scope::Node, .. } if node == "bomb"),
        "{e:?}"
    );
    assert!(e.to_string().contains("--max-macs"), "{e}");
}

#[test]
fn the_model_budget_counts_every_node() {
    // Two convolutions of 8·8·9·64·64 = 2.4 M MACs each: under a per-node budget of 3 M, over a
    // per-model budget of 4 M at the second one.
    let mut m = ModelProto::decode(
        one_node(
            "Conv",
            &[1, 8, 64, 64],
            Some(&[8, 8, 3, 3]),
            vec![ints("pads", &[1; 4])],
            13,
        )
        .as_slice(),
    )
    .expect("decodes");
    let g = m.graph.as_mut().expect("graph");
    let mut second = g.node[0].clone();
    second.name = "second".into();
    second.input[0] = "y".into();
    second.output[0] = "z".into();
    g.node.push(second);
    g.output[0].name = "z".into();
    let bytes = m.encode_to_vec();
    import_model(&bytes, &ImportOptions::default()).expect("imports under the defaults");
    let limits = ImportLimits {
        max_node_macs: 3_000_000,
        max_model_macs: 4_000_000,
        ..Default::default()
    };
    let opts = ImportOptions {
        limits,
        ..Default::default()
    };
    let e = import_model(&bytes, &opts).expect_err("over the model budget");
    assert!(
        matches!(&e, ModelError::OverBudget { node, resource: Resource::Work, scope: Scope::Model, limit: 4_000_000, .. } if node == "second"),
        "{e:?}"
    );
}

#[test]
fn folding_two_constants_is_charged() {
    // [2^15, 1] + [1, 2^16] constants broadcast to 2^31 elements (8 GiB of f32 plus index maps)
    // from two small tensors.
    let mut m = ModelProto::decode(one_node("Relu", &[1, 4], None, vec![], 13).as_slice())
        .expect("decodes");
    let g = m.graph.as_mut().expect("graph");
    for (name, dims) in [("a", [1i64 << 15, 1]), ("b", [1, 1 << 16])] {
        // 128 KiB and 256 KiB of floats: small next to the 8 GiB the fold would allocate.
        let n = (dims[0] * dims[1]) as usize;
        g.initializer.push(TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: data_type::FLOAT,
            raw_data: vec![0; 4 * n],
            ..Default::default()
        });
    }
    g.node.insert(
        0,
        NodeProto {
            name: "fold".into(),
            op_type: "Add".into(),
            input: vec!["a".into(), "b".into()],
            output: vec!["c".into()],
            ..Default::default()
        },
    );
    let t = Instant::now();
    let e = import_model(&m.encode_to_vec(), &ImportOptions::default()).expect_err("imports");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(
        matches!(&e, ModelError::OverBudget { node, resource: Resource::Memory, .. } if node == "fold"),
        "{e:?}"
    );
}

#[test]
fn huge_ranks_and_dimensions_are_out_of_range() {
    let b = one_node("Relu", &[1; 9], None, vec![], 13);
    let e = rejected(&b);
    assert!(
        matches!(&e, ModelError::OutOfRange { node, attr, field: "max_rank", .. } if node == "x" && attr == "rank"),
        "{e:?}"
    );
    let b = one_node("Relu", &[1, 1 << 25, 0], None, vec![], 13);
    let e = rejected(&b);
    assert!(
        matches!(
            &e,
            ModelError::OutOfRange {
                field: "max_dim",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn softmax_of_a_scalar_is_refused_at_opset_13() {
    let b = one_node("Softmax", &[], None, vec![int("axis", 0)], 13);
    let e = rejected(&b);
    assert!(
        matches!(&e, ModelError::Unsupported { node, .. } if node == "bomb"),
        "{e:?}"
    );
}

#[test]
fn real_models_import_under_the_default_limits() {
    for rel in ["onnx-mnist-8/model.onnx", "onnx-mnist-cntk-2018/model.onnx"] {
        let Some(p) = shared_data(rel) else { continue };
        let g = tessera_model::load_model(&p, &ImportOptions::default())
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        let b = tessera_model::limits::check_graph(&g, &ImportLimits::default()).expect("budget");
        println!("{rel}: peak {} B, {} MACs", b.peak_memory, b.macs);
    }
    // Every onnx-backend node test that imported before the limits still imports.
    let Some(dir) = shared_data("onnx-backend-node-tests") else {
        return;
    };
    let mut n = 0;
    for suite in std::fs::read_dir(&dir).expect("read dir").flatten() {
        let Ok(cases) = std::fs::read_dir(suite.path()) else {
            continue;
        };
        for case in cases.flatten() {
            let p = case.path().join("model.onnx");
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let unlimited = ImportOptions {
                limits: ImportLimits {
                    max_rank: usize::MAX,
                    max_dim: usize::MAX,
                    max_kernel: usize::MAX,
                    max_stride: usize::MAX,
                    max_pad: usize::MAX,
                    max_dilation: usize::MAX,
                    max_groups: usize::MAX,
                    max_node_memory: u64::MAX,
                    max_model_memory: u64::MAX,
                    max_node_macs: u64::MAX,
                    max_model_macs: u64::MAX,
                },
                ..Default::default()
            };
            if import_model(&bytes, &unlimited).is_ok() {
                import_model(&bytes, &ImportOptions::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
    }
    println!("{n} node-test models import under the default limits");
    assert!(n > 50, "only {n} node-test models imported");
}

#[test]
fn builder_networks_fit_the_default_limits() {
    for net in tessera_model::builders::NETWORKS {
        let g = (net.build)(1).expect("builds");
        let b = tessera_model::limits::check_graph(&g, &ImportLimits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", net.name));
        println!(
            "{}: peak {} MiB, {} MMACs",
            net.name,
            b.peak_memory >> 20,
            b.macs / 1_000_000
        );
    }
}
