//! Regressions for arithmetic a hostile model or input could break: a scalar Softmax, the
//! average pool's window sum and the rounding adds near the i64 limits.

use tessera_engine::EngineError;
use tessera_engine::quant::{QuantConfig, QuantModel, rescale, rescale_div};
use tessera_model::ir::{Graph, Node, Op, Pool, ValueInfo};
use tessera_model::{GraphBuilder, Tensor};

fn value(name: &str, shape: Vec<usize>) -> ValueInfo {
    ValueInfo {
        name: name.into(),
        shape,
    }
}

/// A graph assembled by hand (no builder, so no validation on the way): Softmax along axis 0 of
/// a rank-0 value, the opset-13 form that indexed past the shape.
#[test]
fn softmax_of_a_scalar_is_an_error_not_a_panic() {
    let g = Graph {
        name: "scalar-softmax".into(),
        values: vec![value("x", vec![]), value("y", vec![])],
        inputs: vec![0],
        outputs: vec![1],
        nodes: vec![Node {
            name: "sm".into(),
            op: Op::Softmax {
                axis: 0,
                coerce_2d: false,
            },
            inputs: vec![0],
            output: 1,
        }],
    };
    let x = Tensor::new(vec![], vec![1.5f32]).expect("scalar");
    let e =
        tessera_engine::run_f32(&g, std::slice::from_ref(&x)).expect_err("a scalar has no axis 0");
    assert!(
        matches!(&e, EngineError::Model(tessera_model::ModelError::Shape(m)) if m.contains("softmax axis")),
        "{e:?}"
    );
    // The kernel itself refuses too, for callers that bypass the graph.
    let e = tessera_engine::float::softmax(&x, 0, false).expect_err("no axis 0");
    assert!(matches!(e, EngineError::Input(_)), "{e:?}");
    // The legacy form flattens at the axis: a scalar is one row, softmax 1.
    let y = tessera_engine::float::softmax(&x, 0, true).expect("legacy scalar");
    assert_eq!(y.data(), &[1.0]);
}

#[test]
fn average_pool_window_sum_overflow_is_an_error() {
    let mut b = GraphBuilder::new("avg", 1);
    let x = b.input("x", vec![1, 1, 2, 2]).expect("input");
    let p = Pool {
        kernel: [2, 2],
        strides: [1, 1],
        pads: [0; 4],
        dilations: [1, 1],
        count_include_pad: false,
        ceil_mode: false,
    };
    let y = b.push("pool", Op::AvgPool(p), vec![x], "").expect("pool");
    let g = b.finish(vec![y]).expect("graph");
    let qm = QuantModel::new(&g, QuantConfig::default()).expect("quantizes");
    // Four values of 2^62: the window sum is 2^64, past i64 (it wrapped to 0 in release).
    let big = Tensor::new(vec![1, 1, 2, 2], vec![1i64 << 62; 4]).expect("tensor");
    let e = qm.run_int(&[big]).expect_err("overflow");
    assert!(
        matches!(&e, EngineError::At { node, source } if node == "pool" && matches!(**source, EngineError::Overflow(_))),
        "{e:?}"
    );
    // Just inside the range the exact mean comes out (sum 2^63 − 4, over 4, rounded).
    let ok = Tensor::new(vec![1, 1, 2, 2], vec![(1i64 << 61) - 1; 4]).expect("tensor");
    let r = qm.run_int(&[ok]).expect("in range");
    assert_eq!(r.outputs[0].data(), &[(1i64 << 61) - 1]);
}

#[test]
fn rounding_adds_are_exact_at_the_i64_limits() {
    // Reference in i128, by the definition ⌊(a + ⌊d/2⌋) / d⌋.
    let want = |a: i64, d: i128| (i128::from(a) + d / 2).div_euclid(d);
    for a in [i64::MAX, i64::MAX - 1, i64::MIN, i64::MIN + 1, 0, -1, 1] {
        for f in [1u32, 2, 8, 24, 62, 63, 64] {
            assert_eq!(
                i128::from(rescale(a, f)),
                want(a, 1i128 << f),
                "rescale({a}, {f})"
            );
        }
        assert_eq!(rescale(a, 0), a);
        assert_eq!(i128::from(rescale(a, 200)), want(a, 1i128 << 100));
        for d in [1i64, 2, 3, 4, 7, 1 << 40, i64::MAX] {
            assert_eq!(
                i128::from(rescale_div(a, d)),
                want(a, i128::from(d)),
                "rescale_div({a}, {d})"
            );
        }
        // A divisor below 1 is taken as 1.
        assert_eq!(rescale_div(a, 0), a);
        assert_eq!(rescale_div(a, -5), a);
    }
}

#[test]
fn mul_by_a_constant_rounds_without_wrapping() {
    // x · q_f(c) at i64::MAX, then the rounding add of the rescale (which wrapped).
    let mut b = GraphBuilder::new("mul", 1);
    let x = b.input("x", vec![1]).expect("input");
    let y = b
        .push(
            "mul",
            Op::Binary {
                op: tessera_model::BinOp::Mul,
                constant: Some(Tensor::new(vec![1], vec![1.0 / 256.0]).expect("c")),
                constant_first: false,
            },
            vec![x],
            "",
        )
        .expect("mul");
    let g = b.finish(vec![y]).expect("graph");
    let qm = QuantModel::new(&g, QuantConfig::default()).expect("quantizes");
    // q_8(1/256) = 1, so the product is x = i64::MAX and the rescale is
    // ⌊(2^63 − 1 + 2^7) / 2^8⌋ = 2^55.
    let r = qm
        .run_int(&[Tensor::new(vec![1], vec![i64::MAX]).expect("x")])
        .expect("runs");
    assert_eq!(r.outputs[0].data(), &[1i64 << 55]);
}
