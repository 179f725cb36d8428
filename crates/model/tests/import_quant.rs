//! The int8 importers of `import_quant.rs`: QOperator and QDQ graphs into grids and given weight
//! scales, Split/Slice/ReduceMean, and hostile int8 graphs refused with the error that names
//! what is wrong.

mod common;

use common::{int, ints};
use tessera_model::proto::{AttributeProto, NodeProto, TensorProto, data_type};
use tessera_model::{ImportOptions, ModelError, Op, QParam, import_model};

fn node(op: &str, ins: &[&str], outs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: format!("{op}_{}", outs.first().copied().unwrap_or("")),
        op_type: op.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn ms(n: NodeProto) -> NodeProto {
    NodeProto {
        domain: "com.microsoft".into(),
        ..n
    }
}

fn f32s(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        float_data: v.to_vec(),
        ..Default::default()
    }
}

fn bytes_of(name: &str, dims: &[i64], ty: i32, v: &[i32]) -> TensorProto {
    let raw = match ty {
        data_type::INT32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => v.iter().map(|&x| x as u8).collect(),
    };
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: ty,
        raw_data: raw,
        ..Default::default()
    }
}

fn u8s(name: &str, v: &[i32]) -> TensorProto {
    bytes_of(name, &[], data_type::UINT8, v)
}

/// An opset-13 model (`common::model`).
fn model(x_dims: &[i64], nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> Vec<u8> {
    common::model(x_dims, nodes, inits, 13)
}

/// QuantizeLinear → QLinearConv (2 output channels, per-channel int8 weights, int32 bias) →
/// DequantizeLinear, with the dequantize reading the conv output on `read_scale`.
fn qconv(read_scale: f32, conv_x_scale: f32) -> Vec<u8> {
    model(
        &[1, 1, 3, 3],
        vec![
            node("QuantizeLinear", &["x", "xs", "xz"], &["xq"], vec![]),
            node(
                "QLinearConv",
                &["xq", "cxs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                &["yq"],
                vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
            ),
            node("DequantizeLinear", &["yq", "rs", "yz"], &["y"], vec![]),
        ],
        vec![
            f32s("xs", &[], &[0.02]),
            f32s("cxs", &[], &[conv_x_scale]),
            u8s("xz", &[10]),
            bytes_of(
                "w",
                &[2, 1, 3, 3],
                data_type::INT8,
                &[
                    1, -2, 3, -4, 5, -6, 7, -8, 9, 127, 0, 0, 0, -127, 0, 0, 0, 1,
                ],
            ),
            f32s("ws", &[2], &[0.5, 0.25]),
            bytes_of("wz", &[2], data_type::INT8, &[0, 0]),
            f32s("ys", &[], &[0.1]),
            u8s("yz", &[128]),
            f32s("rs", &[], &[read_scale]),
            bytes_of("b", &[2], data_type::INT32, &[100, -7]),
        ],
    )
}

fn unsupported(e: ModelError) -> (String, String) {
    match e {
        ModelError::Unsupported { op, detail, .. } => (op, detail),
        other => panic!("expected an unsupported-op error, got {other}"),
    }
}

#[test]
fn qlinear_conv_imports_to_a_conv_with_given_weights_and_two_grids() {
    let g = import_model(&qconv(0.1, 0.02), &ImportOptions::default()).expect("imports");
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(ops, ["QuantizeLinear", "Conv", "QuantizeLinear"]);
    let Op::Quantize(q) = &g.nodes[0].op else {
        panic!("a grid")
    };
    assert_eq!(*q, QParam::new(0.02, 10, false).expect("grid"));
    assert_eq!(q.interval(), (-10, 245));
    let Op::Conv(c) = &g.nodes[1].op else {
        panic!("a conv")
    };
    assert_eq!(c.weight_scales.as_deref(), Some(&[0.5f32, 0.25][..]));
    assert_eq!(c.weight.data()[..3], [0.5, -1.0, 1.5]);
    assert_eq!(c.weight.data()[9], 127.0 * 0.25);
    // The int32 bias at the accumulator's scale x_scale · w_scale.
    let b = c.bias.as_ref().expect("bias").data();
    assert!((b[0] - 100.0 * 0.02 * 0.5).abs() < 1e-6);
    assert!((b[1] + 7.0 * 0.02 * 0.25).abs() < 1e-6);
    assert!(matches!(&g.nodes[2].op, Op::Quantize(q) if q.zero_point == 128));
    // The graph output is the quantized value itself (the DequantizeLinear is the same value).
    assert_eq!(g.outputs, vec![g.nodes[2].output]);
}

#[test]
fn a_tensor_read_on_another_grid_is_refused() {
    // Everything else is well formed (types, ranges, shapes): only the grid check can stop it.
    let (op, detail) = unsupported(
        import_model(&qconv(0.2, 0.02), &ImportOptions::default()).expect_err("refused"),
    );
    assert_eq!(op, "DequantizeLinear");
    assert!(detail.contains("was quantized with scale 0.1"), "{detail}");
    let (op, detail) = unsupported(
        import_model(&qconv(0.1, 0.03), &ImportOptions::default()).expect_err("refused"),
    );
    assert_eq!(op, "QLinearConv");
    assert!(detail.contains("was quantized with scale 0.02"), "{detail}");
}

#[test]
fn bad_scales_zero_points_and_types_are_refused() {
    let q = |inits: Vec<TensorProto>| {
        let bytes = model(
            &[1, 4],
            vec![
                node("QuantizeLinear", &["x", "s", "z"], &["q"], vec![]),
                node("DequantizeLinear", &["q", "s", "z"], &["y"], vec![]),
            ],
            inits,
        );
        unsupported(import_model(&bytes, &ImportOptions::default()).expect_err("refused")).1
    };
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let d = q(vec![f32s("s", &[], &[bad]), u8s("z", &[0])]);
        assert!(d.contains("not a finite positive number"), "{d}");
    }
    let d = q(vec![
        f32s("s", &[], &[0.1]),
        bytes_of("z", &[], data_type::INT32, &[0]),
    ]);
    assert!(d.contains("data type 6"), "{d}");
    let d = q(vec![f32s("s", &[2], &[0.1, 0.2]), u8s("z", &[0])]);
    assert!(d.contains("per tensor"), "{d}");
    // A well-formed pair imports as one grid.
    let bytes = model(
        &[1, 4],
        vec![
            node("QuantizeLinear", &["x", "s", "z"], &["q"], vec![]),
            node("DequantizeLinear", &["q", "s", "z"], &["y"], vec![]),
        ],
        vec![
            f32s("s", &[], &[0.1]),
            bytes_of("z", &[], data_type::INT8, &[-3]),
        ],
    );
    let g = import_model(&bytes, &ImportOptions::default()).expect("imports");
    assert!(
        matches!(&g.nodes[..], [n] if n.op == Op::Quantize(QParam::new(0.1, -3, true).expect("grid")))
    );
}

#[test]
fn split_slice_and_spatial_reduce_mean() {
    let bytes = model(
        &[1, 6, 4, 4],
        vec![
            node("Split", &["x", "sizes"], &["a", "b"], vec![int("axis", 1)]),
            node("Slice", &["b", "starts", "ends", "axes"], &["c"], vec![]),
            node("Concat", &["a", "c"], &["d"], vec![int("axis", 1)]),
            node(
                "ReduceMean",
                &["d"],
                &["y"],
                vec![ints("axes", &[-1, 2]), int("keepdims", 0)],
            ),
        ],
        vec![
            TensorProto {
                name: "sizes".into(),
                dims: vec![2],
                data_type: data_type::INT64,
                int64_data: vec![2, 4],
                ..Default::default()
            },
            TensorProto {
                name: "starts".into(),
                dims: vec![1],
                data_type: data_type::INT64,
                int64_data: vec![-3],
                ..Default::default()
            },
            TensorProto {
                name: "ends".into(),
                dims: vec![1],
                data_type: data_type::INT64,
                int64_data: vec![i64::MAX],
                ..Default::default()
            },
            TensorProto {
                name: "axes".into(),
                dims: vec![1],
                data_type: data_type::INT64,
                int64_data: vec![1],
                ..Default::default()
            },
        ],
    );
    let g = import_model(&bytes, &ImportOptions::default()).expect("imports");
    let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
    assert!(matches!(
        ops[..],
        [
            Op::Slice {
                axis: 1,
                start: 0,
                end: 2
            },
            Op::Slice {
                axis: 1,
                start: 2,
                end: 6
            },
            Op::Slice {
                axis: 1,
                start: 1,
                end: 4
            },
            Op::Concat { axis: 1 },
            Op::GlobalAvgPool,
            Op::Reshape
        ]
    ));
    assert_eq!(g.shape(g.outputs[0]), [1, 5]);
    // Uneven splits and non-spatial means are refused by name.
    let bad = model(
        &[1, 5, 2, 2],
        vec![node("Split", &["x"], &["a", "y"], vec![int("axis", 1)])],
        vec![],
    );
    let (op, d) = unsupported(import_model(&bad, &ImportOptions::default()).expect_err("refused"));
    assert_eq!(op, "Split");
    assert!(d.contains("does not split evenly"), "{d}");
    let bad = model(
        &[1, 5, 2, 2],
        vec![node("ReduceMean", &["x"], &["y"], vec![ints("axes", &[1])])],
        vec![],
    );
    let (op, d) = unsupported(import_model(&bad, &ImportOptions::default()).expect_err("refused"));
    assert_eq!(op, "ReduceMean");
    assert!(d.contains("spatial axes"), "{d}");
}

#[test]
fn microsoft_ops_outside_the_int8_set_are_refused() {
    let bytes = model(
        &[1, 4],
        vec![ms(node("FusedGemm", &["x"], &["y"], vec![]))],
        vec![],
    );
    let (_, d) = unsupported(import_model(&bytes, &ImportOptions::default()).expect_err("refused"));
    assert!(d.contains("QLinearAdd, QLinearGlobalAveragePool"), "{d}");
    // QLinearAdd with a quantized constant operand.
    let bytes = model(
        &[1, 4],
        vec![
            node("QuantizeLinear", &["x", "s", "z"], &["q"], vec![]),
            ms(node(
                "QLinearAdd",
                &["q", "s", "z", "c", "cs", "cz", "s", "z"],
                &["y"],
                vec![],
            )),
        ],
        vec![
            f32s("s", &[], &[0.1]),
            u8s("z", &[3]),
            bytes_of("c", &[4], data_type::UINT8, &[0, 1, 2, 250]),
            f32s("cs", &[], &[0.5]),
            u8s("cz", &[1]),
        ],
    );
    let g = import_model(&bytes, &ImportOptions::default()).expect("imports");
    let Op::Binary {
        constant: Some(c), ..
    } = &g.nodes[1].op
    else {
        panic!("an add of a constant")
    };
    assert_eq!(c.data(), [-0.5, 0.0, 0.5, 124.5]);
    assert!(matches!(g.nodes[2].op, Op::Quantize(_)));
}
