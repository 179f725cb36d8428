//! The importers of `import_ops.rs`: constant folding of exporter plumbing, and hostile
//! attributes and shapes refused with typed errors.

mod common;

use common::{int, ints, model};
use tessera_model::proto::{AttributeProto, NodeProto, TensorProto, attr_type, data_type};
use tessera_model::{ImportLimits, ImportOptions, ModelError, Op, import_model};

fn i64s(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::INT64,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn node(name: &str, op: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        attribute: attrs,
        ..Default::default()
    }
}

#[test]
fn pytorch_flatten_plumbing_folds_to_one_reshape() {
    // Shape → Gather(0) → Unsqueeze → Concat([-1]) → Reshape, as torch.flatten exports.
    let bytes = model(
        &[2, 3, 2, 2],
        vec![
            node("shape", "Shape", &["x"], "s", vec![]),
            node(
                "gather",
                "Gather",
                &["s", "zero"],
                "n",
                vec![int("axis", 0)],
            ),
            node("unsq", "Unsqueeze", &["n"], "n1", vec![ints("axes", &[0])]),
            node(
                "cat",
                "Concat",
                &["n1", "minus1"],
                "spec",
                vec![int("axis", 0)],
            ),
            node("reshape", "Reshape", &["x", "spec"], "y", vec![]),
        ],
        vec![i64s("zero", &[], &[0]), i64s("minus1", &[1], &[-1])],
        11,
    );
    let g = import_model(&bytes, &ImportOptions::default()).expect("imports");
    assert_eq!(g.nodes.len(), 1, "{:?}", g.nodes);
    assert!(matches!(g.nodes[0].op, Op::Reshape));
    assert_eq!(g.shape(g.outputs[0]), [2, 12]);
}

#[test]
fn constant_of_shape_feeds_a_conv_weight_and_squeeze_unsqueeze_reshape() {
    let value = TensorProto {
        dims: vec![1],
        data_type: data_type::FLOAT,
        float_data: vec![0.5],
        ..Default::default()
    };
    let bytes = model(
        &[1, 2, 4, 4],
        vec![
            node(
                "w",
                "ConstantOfShape",
                &["wshape"],
                "W",
                vec![AttributeProto {
                    name: "value".into(),
                    r#type: attr_type::TENSOR,
                    t: Some(value),
                    ..Default::default()
                }],
            ),
            node("conv", "Conv", &["x", "W"], "c", vec![]),
            node("sq", "Squeeze", &["c"], "s", vec![ints("axes", &[0])]),
            node("un", "Unsqueeze", &["s"], "y", vec![ints("axes", &[-1])]),
        ],
        vec![i64s("wshape", &[4], &[3, 2, 3, 3])],
        11,
    );
    let g = import_model(&bytes, &ImportOptions::default()).expect("imports");
    let Op::Conv(c) = &g.nodes[0].op else {
        panic!("not a conv: {:?}", g.nodes[0].op);
    };
    assert!(c.weight.data().iter().all(|&v| v == 0.5));
    assert_eq!(g.shape(g.outputs[0]), [3, 2, 2, 1]);
}

#[test]
fn a_huge_constant_of_shape_is_charged_before_it_is_allocated() {
    // 8 bytes of shape ask for 2^20 elements; the budget of 1 MiB refuses it at the
    // ConstantOfShape itself (the Add that reads it would only be charged after the fold).
    let bytes = model(
        &[1, 1],
        vec![
            node("bomb", "ConstantOfShape", &["shape"], "c", vec![]),
            node("add", "Add", &["x", "c"], "y", vec![]),
        ],
        vec![i64s("shape", &[2], &[1024, 1024])],
        11,
    );
    let opts = ImportOptions {
        limits: ImportLimits::default().with_max_memory(1 << 20),
        ..Default::default()
    };
    let e = import_model(&bytes, &opts).expect_err("imports");
    assert!(
        matches!(&e, ModelError::OverBudget { node, op, .. } if node == "bomb" && op == "ConstantOfShape"),
        "{e:?}"
    );
}

#[test]
fn hostile_new_op_attributes_are_typed_errors() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "negative shape",
            model(
                &[1, 1],
                vec![
                    node("bomb", "ConstantOfShape", &["shape"], "c", vec![]),
                    node("add", "Add", &["x", "c"], "y", vec![]),
                ],
                vec![i64s("shape", &[1], &[-5])],
                11,
            ),
        ),
        (
            "bad perm",
            model(
                &[1, 2, 3],
                vec![node(
                    "bomb",
                    "Transpose",
                    &["x"],
                    "y",
                    vec![ints("perm", &[0, 0, 1])],
                )],
                vec![],
                11,
            ),
        ),
        (
            "gather out of range",
            model(
                &[1, 2],
                vec![
                    node("s", "Shape", &["x"], "s", vec![]),
                    node("bomb", "Gather", &["s", "idx"], "g", vec![]),
                    node("r", "Reshape", &["x", "g"], "y", vec![]),
                ],
                vec![i64s("idx", &[1], &[i64::MIN])],
                11,
            ),
        ),
        (
            "unsqueeze repeated axis",
            model(
                &[2],
                vec![node(
                    "bomb",
                    "Unsqueeze",
                    &["x"],
                    "y",
                    vec![ints("axes", &[0, 0])],
                )],
                vec![],
                11,
            ),
        ),
        (
            "concat mismatched",
            model(
                &[1, 2],
                vec![node(
                    "bomb",
                    "Concat",
                    &["x", "x"],
                    "y",
                    vec![int("axis", 5)],
                )],
                vec![],
                11,
            ),
        ),
    ];
    for (what, bytes) in cases {
        match import_model(&bytes, &ImportOptions::default()) {
            Err(ModelError::Unsupported { node, .. }) => assert_eq!(node, "bomb", "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    let out_of_range: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "huge pad",
            model(
                &[1, 1, 2, 2],
                vec![node(
                    "bomb",
                    "Pad",
                    &["x"],
                    "y",
                    vec![ints("pads", &[0, 0, 1 << 40, 0, 0, 0, 0, 0])],
                )],
                vec![],
                10,
            ),
            "max_pad",
        ),
        (
            "negative pad",
            model(
                &[1, 1, 2, 2],
                vec![node(
                    "bomb",
                    "Pad",
                    &["x"],
                    "y",
                    vec![ints("pads", &[0, 0, -1, 0, 0, 0, 0, 0])],
                )],
                vec![],
                10,
            ),
            "max_pad",
        ),
        (
            "huge LRN",
            model(
                &[1, 4, 2, 2],
                vec![node(
                    "bomb",
                    "LRN",
                    &["x"],
                    "y",
                    vec![int("size", i64::MAX)],
                )],
                vec![],
                11,
            ),
            "max_kernel",
        ),
    ];
    for (what, bytes, want) in out_of_range {
        match import_model(&bytes, &ImportOptions::default()) {
            Err(ModelError::OutOfRange { node, field, .. }) => {
                assert_eq!((node.as_str(), field), ("bomb", want), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}
