//! The float engine's LRN, Pad, Concat and Transpose against hand-computed values, and the
//! integer engine's refusal of the float-only ops.

use tessera_engine::{EngineError, QuantConfig, QuantModel, run_f32};
use tessera_model::{GraphBuilder, Op, Tensor};

fn run1(op: Op, shape: &[usize], x: Vec<f32>) -> Tensor {
    let mut b = GraphBuilder::new("t", 0);
    let i = b.input("x", shape.to_vec()).expect("input");
    let y = b.push("op", op, vec![i], "y").expect("push");
    let g = b.finish(vec![y]).expect("graph");
    let x = Tensor::new(shape.to_vec(), x).expect("tensor");
    run_f32(&g, &[x]).expect("runs").remove(0)
}

fn near(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(want) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn lrn_sums_the_onnx_channel_window() {
    // alpha/size = 1, beta = 1, bias = 1: y = x / (1 + Σ x²) over the window.
    let odd = Op::Lrn {
        size: 3,
        alpha: 3.0,
        beta: 1.0,
        bias: 1.0,
    };
    let y = run1(odd, &[1, 3, 1, 1], vec![1.0, 2.0, 3.0]);
    near(y.data(), &[1.0 / 6.0, 2.0 / 15.0, 3.0 / 14.0]);
    // Even size: floor((size-1)/2) = 0 channels below, ceil((size-1)/2) = 1 above.
    let even = Op::Lrn {
        size: 2,
        alpha: 2.0,
        beta: 1.0,
        bias: 1.0,
    };
    let y = run1(even, &[1, 3, 1, 1], vec![1.0, 2.0, 3.0]);
    near(y.data(), &[1.0 / 6.0, 2.0 / 14.0, 3.0 / 10.0]);
}

#[test]
fn pad_places_the_input_after_the_begin_pads() {
    let op = Op::Pad {
        pads: vec![0, 1, 1, 0],
        value: 9.0,
    };
    let y = run1(op, &[1, 2], vec![1.0, 2.0]);
    assert_eq!(y.shape(), [2, 3]);
    near(y.data(), &[9.0, 1.0, 2.0, 9.0, 9.0, 9.0]);
}

#[test]
fn channel_shuffle_transpose_and_concat() {
    // [1, g=2, c=3] → [1, 3, 2]: element (0, i, j) of the output is (0, j, i) of the input.
    let y = run1(
        Op::Transpose {
            perm: vec![0, 2, 1],
        },
        &[1, 2, 3],
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    );
    near(y.data(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let mut b = GraphBuilder::new("t", 0);
    let x = b.input("x", vec![1, 2, 1]).expect("input");
    let z = b.input("z", vec![1, 1, 1]).expect("input");
    let y = b
        .push("cat", Op::Concat { axis: 1 }, vec![x, z], "y")
        .expect("push");
    let g = b.finish(vec![y]).expect("graph");
    let t = |s: Vec<usize>, d: Vec<f32>| Tensor::new(s, d).expect("tensor");
    let out = run_f32(
        &g,
        &[
            t(vec![1, 2, 1], vec![1.0, 2.0]),
            t(vec![1, 1, 1], vec![3.0]),
        ],
    )
    .expect("runs");
    near(out[0].data(), &[1.0, 2.0, 3.0]);
}

#[test]
fn the_integer_engine_refuses_float_only_ops_by_node_and_op() {
    for op in [
        Op::Sigmoid,
        Op::Tanh,
        Op::Clip { min: 0.0, max: 6.0 },
        Op::Transpose { perm: vec![1, 0] },
        Op::Pad {
            pads: vec![0, 0, 0, 1],
            value: 0.0,
        },
        Op::Concat { axis: 1 },
    ] {
        let kind = op.kind();
        let mut b = GraphBuilder::new("t", 0);
        let x = b.input("x", vec![2, 2]).expect("input");
        let y = b.push("float_only", op, vec![x], "y").expect("push");
        let g = b.finish(vec![y]).expect("graph");
        let e = QuantModel::new(&g, QuantConfig::default()).expect_err("quantizes");
        assert!(
            matches!(&e, EngineError::Unsupported { node, detail } if node == "float_only" && detail.contains(kind)),
            "{kind}: {e:?}"
        );
    }
}

#[test]
fn the_new_ops_survive_an_onnx_round_trip() {
    let mut b = GraphBuilder::new("rt", 0);
    let x = b.input("x", vec![1, 4, 2, 2]).expect("input");
    let mut push = |name: &str, op: Op, ins: Vec<usize>| b.push(name, op, ins, "").expect(name);
    let l = push(
        "lrn",
        Op::Lrn {
            size: 3,
            alpha: 1e-2,
            beta: 0.75,
            bias: 2.0,
        },
        vec![x],
    );
    let p = push(
        "pad",
        Op::Pad {
            pads: vec![0, 0, 1, 0, 0, 0, 0, 2],
            value: -1.0,
        },
        vec![l],
    );
    let t = push(
        "tr",
        Op::Transpose {
            perm: vec![0, 1, 3, 2],
        },
        vec![p],
    );
    let c = push(
        "clip",
        Op::Clip {
            min: -0.5,
            max: 0.5,
        },
        vec![t],
    );
    let s = push("sig", Op::Sigmoid, vec![c]);
    let h = push("tanh", Op::Tanh, vec![t]);
    let y = push("cat", Op::Concat { axis: 1 }, vec![s, h]);
    let g = b.finish(vec![y]).expect("graph");
    let bytes = tessera_model::export::export_model(&g).expect("exports");
    let back = tessera_model::import_model(&bytes, &Default::default()).expect("imports");
    let n = 16;
    let input = Tensor::new(
        vec![1, 4, 2, 2],
        (0..n).map(|i| i as f32 / 4.0 - 2.0).collect(),
    )
    .expect("tensor");
    let want = run_f32(&g, std::slice::from_ref(&input)).expect("runs");
    let got = run_f32(&back, &[input]).expect("runs");
    assert_eq!(got[0].shape(), [1, 8, 4, 3]);
    near(got[0].data(), want[0].data());
}
