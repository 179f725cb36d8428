//! The HE linear layers against the integer engine (semantics v2) itself: a layer lowered by the
//! engine, its accumulators computed on ciphertexts in both product forms, requantized and
//! clamped by the engine's own rule, equal the engine's output bit for bit.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_engine::qint::{
    Calibration, IntModel, IntOp, QintConfig, default_calibration_inputs, rq,
};
use tessera_he::layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
use tessera_he::linear::{EncryptedWeights, PlainWeights, decrypt_output, encrypt_input};
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::{HeParams, KeyPair};
use tessera_model::builder::GraphBuilder;
use tessera_model::ir::{Graph, Op};
use tessera_model::tensor::Tensor;

fn lower(g: &Graph, seed: u64) -> IntModel {
    let inputs = default_calibration_inputs(g, 0.0, 1.0, 8, seed).expect("inputs");
    let cal = Calibration::from_inputs(g, &inputs, "generated").expect("calibration");
    IntModel::new(g, QintConfig::default(), &cal).expect("lowers")
}

/// One linear layer (conv with `groups`, or dense) on a random input in the engine's interval.
fn compare(g: &Graph, seed: u64) {
    let m = lower(g, seed);
    let iq = m.input_quant().expect("input");
    let shape = g.shape(g.inputs[0]).to_vec();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let x: Vec<i64> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(iq.lo..=iq.hi))
        .collect();
    let want = m
        .run_int(&Tensor::new(shape.clone(), x.clone()).expect("x"))
        .expect("engine");
    let node = &g.nodes[0];
    let Some(IntOp::Linear(l)) = m.op(0) else {
        panic!("the first node is not linear")
    };
    let plan_of = |n: usize| match &node.op {
        Op::Conv(c) => {
            let ws = c.weight.shape();
            let s = ConvShape {
                c_in: shape[1],
                h: shape[2],
                w: shape[3],
                c_out: ws[0],
                k: [ws[2], ws[3]],
                stride: c.strides,
                pads: c.pads,
                dil: c.dilations,
                groups: c.groups,
            };
            LinearPlan::Conv(ConvPlan::new(s, n).expect("plan"))
        }
        Op::Dense(d) => {
            let ws = d.weight.shape();
            LinearPlan::Dense(DensePlan::new(ws[1], ws[0], n).expect("plan"))
        }
        op => panic!("not linear: {}", op.kind()),
    };
    let xmax = iq.max_abs();
    let acc_bound = l
        .row_abs
        .iter()
        .map(|&r| r as u128 * xmax)
        .max()
        .unwrap_or(0)
        + l.b
            .iter()
            .map(|b| u128::from(b.unsigned_abs()))
            .max()
            .unwrap_or(0);
    let wmax =
        l.w.iter()
            .map(|w| u128::from(w.unsigned_abs()))
            .max()
            .unwrap_or(1);
    for product in [Product::Plain, Product::Encrypted] {
        let probe = plan_of(4096);
        let nd = LayerNeed {
            name: node.name.clone(),
            acc_bound,
            x_bound: xmax,
            w_bound: wmax,
            terms: probe.terms(),
            products: probe.max_products(),
            product,
        };
        let params = HeParams::choose(&[nd], ParamOptions::default()).expect("params");
        let plan = plan_of(params.degree());
        let keys = KeyPair::generate(&params, &mut rng);
        let cx = encrypt_input(&keys.public, &plan, &x, &mut rng).expect("enc");
        let outs = match product {
            Product::Plain => PlainWeights::new(&params, plan.clone(), &l.w, &l.b)
                .expect("w")
                .eval(&params, &cx),
            Product::Encrypted => {
                EncryptedWeights::encrypt(&keys.public, &plan, &l.w, &l.b, &mut rng)
                    .expect("enc w")
                    .prepare(&params, plan.clone())
                    .expect("prepare")
                    .eval(&params, &cx)
            }
        }
        .expect("eval");
        let acc = decrypt_output(&keys.secret, &plan, &outs, acc_bound).expect("decrypt");
        let per = acc.len() / l.mult.len();
        let y: Vec<i64> = acc
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let c = i / per;
                (rq(i128::from(a), l.mult[c], l.shift).expect("fits") as i64).clamp(l.lo, l.hi)
            })
            .collect();
        assert_eq!(y, want.data(), "{product:?}, {}", params.describe());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_convs_match(seed in any::<u64>(), c in 1usize..=4, hw in 4usize..=12, k in 1usize..=3, stride in 1usize..=2, depthwise in any::<bool>()) {
        let mut b = GraphBuilder::new("conv", seed);
        let x = b.input("x", vec![1, c, hw, hw]).expect("input");
        let (out, groups) = if depthwise { (c, c) } else { (c + 2, 1) };
        let y = b.conv_grouped(x, out, k, stride, k / 2, groups).expect("conv");
        compare(&b.finish(vec![y]).expect("graph"), seed);
    }

    #[test]
    fn engine_dense_layers_match(seed in any::<u64>(), k in 1usize..=200, m in 1usize..=12) {
        let mut b = GraphBuilder::new("dense", seed);
        let x = b.input("x", vec![1, k]).expect("input");
        let y = b.dense(x, m).expect("dense");
        compare(&b.finish(vec![y]).expect("graph"), seed);
    }
}

/// A whole residual CNN (`builders::mix`: grouped and depthwise convs, clamps, a residual add,
/// pools, a dense head) run by the engine with every conv and dense layer's accumulators computed
/// on ciphertexts (ciphertext × ciphertext, as the `lhe` server does): the same output.
#[test]
fn a_whole_network_with_every_linear_layer_encrypted_matches() {
    let g = tessera_model::builders::mix(8, 6, 5).expect("builds");
    let m = lower(&g, 5);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let iq = m.input_quant().expect("input");
    let shape = g.shape(g.inputs[0]).to_vec();
    let x: Vec<i64> = (0..shape.iter().product::<usize>())
        .map(|_| rng.random_range(iq.lo..=iq.hi))
        .collect();
    let x = Tensor::new(shape, x).expect("x");
    let want = m.run_int(&x).expect("engine");
    let mut layers = 0;
    let got = m
        .run_split(&x, &mut |k, input, out_shape| {
            let Some(IntOp::Linear(l)) = m.op(k) else {
                return Ok(None);
            };
            let node = &g.nodes[k];
            let ishape = input.shape();
            let plan_of = |n: usize| match &node.op {
                Op::Conv(c) => {
                    let ws = c.weight.shape();
                    LinearPlan::Conv(
                        ConvPlan::new(
                            ConvShape {
                                c_in: ishape[1],
                                h: ishape[2],
                                w: ishape[3],
                                c_out: ws[0],
                                k: [ws[2], ws[3]],
                                stride: c.strides,
                                pads: c.pads,
                                dil: c.dilations,
                                groups: c.groups,
                            },
                            n,
                        )
                        .expect("plan"),
                    )
                }
                Op::Dense(d) => LinearPlan::Dense(
                    DensePlan::new(d.weight.shape()[1], d.weight.shape()[0], n).expect("plan"),
                ),
                _ => unreachable!("linear"),
            };
            let xq = m.value(node.inputs[0]).expect("interval").max_abs();
            let acc_bound = l.row_abs.iter().map(|&r| r as u128 * xq).max().unwrap_or(0)
                + l.b
                    .iter()
                    .map(|b| u128::from(b.unsigned_abs()))
                    .max()
                    .unwrap_or(0);
            let probe = plan_of(4096);
            let nd = LayerNeed {
                name: node.name.clone(),
                acc_bound,
                x_bound: xq,
                w_bound: 127,
                terms: probe.terms(),
                products: probe.max_products(),
                product: Product::Encrypted,
            };
            let params = HeParams::choose(&[nd], ParamOptions::default()).expect("params");
            let plan = plan_of(params.degree());
            let keys = KeyPair::generate(&params, &mut rng);
            let cx = encrypt_input(&keys.public, &plan, input.data(), &mut rng).expect("enc");
            let w = EncryptedWeights::encrypt(&keys.public, &plan, &l.w, &l.b, &mut rng)
                .expect("enc w")
                .prepare(&params, plan.clone())
                .expect("prep");
            let acc = decrypt_output(
                &keys.secret,
                &plan,
                &w.eval(&params, &cx).expect("eval"),
                acc_bound,
            )
            .expect("decrypt");
            layers += 1;
            Ok(Some(Tensor::new(out_shape.to_vec(), acc)?))
        })
        .expect("split run");
    assert!(layers >= 4, "only {layers} linear layers went through HE");
    assert_eq!(got, want);
}
