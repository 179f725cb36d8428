//! Property tests of tessera's integer semantics against independent i128 reference code.
//!
//! The linear layers of `QuantModel` run through an f64 GEMM when the worst-case accumulator is
//! below 2^53 (where f64 is exact), and through an exact i64 GEMM otherwise. Both must equal the
//! naive definition `rescale(Σ q_f(W)·x + q_2f(b), f)` computed here in i128.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_engine::EngineError;
use tessera_engine::quant::{QuantConfig, QuantModel, quantize, rescale, rescale_div};
use tessera_model::ir::{BinOp, Conv, Dense, Graph, Op, Pool};
use tessera_model::{GraphBuilder, Tensor};

/// `⌊(a + 2^(f−1)) / 2^f⌋` in i128 (the identity for f = 0).
fn ref_rescale(a: i128, f: u32) -> i128 {
    if f == 0 {
        a
    } else {
        (a + (1i128 << (f - 1))).div_euclid(1i128 << f)
    }
}

/// `round_half_away_from_zero(v · 2^s)` in i128.
fn ref_quantize(v: f32, s: u32) -> i128 {
    let x = f64::from(v) * 2f64.powi(s as i32);
    let r = x.abs().floor() + if x.abs().fract() >= 0.5 { 1.0 } else { 0.0 };
    (r.copysign(x)) as i128
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rescale_is_floor_of_shifted_quotient(a in -(1i64 << 62)..(1i64 << 62), f in 0u32..=40) {
        let want = ref_rescale(i128::from(a), f);
        prop_assert_eq!(i128::from(rescale(a, f)), want);
        prop_assert_eq!(i128::from(rescale_div(a, 1i64 << f)), want);
    }

    #[test]
    fn rescale_div_is_rounded_floor_division(a in -(1i64 << 62)..(1i64 << 62), d in 1i64..1_000_000) {
        let want = (i128::from(a) + i128::from(d / 2)).div_euclid(i128::from(d));
        prop_assert_eq!(i128::from(rescale_div(a, d)), want);
    }

    #[test]
    fn quantize_rounds_half_away_from_zero(k in -(1i64 << 20)..(1i64 << 20), s in 0u32..=12) {
        // (k + 1/2) / 2^s is exact in f32, and v·2^s is exactly halfway between k and k + 1.
        let v = ((k as f64 + 0.5) / 2f64.powi(s as i32)) as f32;
        let want = if k >= 0 { k + 1 } else { k };
        prop_assert_eq!(quantize(v, s).expect("in range"), want);
        prop_assert_eq!(quantize(-v, s).expect("in range"), -want);
    }

    #[test]
    fn quantize_matches_reference(v in -1.0e6f32..1.0e6, s in 0u32..=24) {
        let q = quantize(v, s).expect("in range");
        prop_assert_eq!(i128::from(q), ref_quantize(v, s));
        prop_assert!((q as f64 - f64::from(v) * 2f64.powi(s as i32)).abs() <= 0.5);
        prop_assert_eq!(quantize(-v, s).expect("in range"), -q);
    }
}

#[test]
fn quantize_examples() {
    assert_eq!(quantize(0.5, 0).expect("q"), 1);
    assert_eq!(quantize(-0.5, 0).expect("q"), -1);
    assert_eq!(quantize(1.5, 0).expect("q"), 2);
    assert_eq!(quantize(-2.5, 0).expect("q"), -3);
    assert_eq!(quantize(0.49999997, 0).expect("q"), 0);
    assert_eq!(quantize(3.0 / 512.0, 8).expect("q"), 2); // 1.5 → 2
    assert_eq!(quantize(-3.0 / 512.0, 8).expect("q"), -2);
    assert!(quantize(f32::NAN, 8).is_err());
    assert!(quantize(f32::INFINITY, 0).is_err());
    assert!(quantize(1e30, 8).is_err());
    assert_eq!(rescale(-1, 1), 0); // −0.5 rounds toward +∞
    assert_eq!(rescale(1, 1), 1); // +0.5 rounds toward +∞
    assert_eq!(rescale(-3, 1), -1); // −1.5 → −1
    assert_eq!(rescale_div(-7, 2), -3); // −3.5 → −3
    assert_eq!(rescale_div(7, 3), 2);
}

// ---------------------------------------------------------------- reference linear layers ----

/// The layer's quantized constants and geometry, read back from the graph's op.
fn ref_conv(c: &Conv, x: &Tensor<i64>, f: u32) -> (Vec<usize>, Vec<i128>) {
    let [n, ci, h, w] = <[usize; 4]>::try_from(x.shape()).expect("NCHW");
    let ws = c.weight.shape();
    let (co, cig, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let cog = co / c.groups;
    let span = |k: usize, d: usize| d * (k - 1) + 1;
    let oh = (h + c.pads[0] + c.pads[2] - span(kh, c.dilations[0])) / c.strides[0] + 1;
    let ow = (w + c.pads[1] + c.pads[3] - span(kw, c.dilations[1])) / c.strides[1] + 1;
    let qw: Vec<i128> = c
        .weight
        .data()
        .iter()
        .map(|&v| ref_quantize(v, f))
        .collect();
    let qb: Vec<i128> = match &c.bias {
        Some(b) => b.data().iter().map(|&v| ref_quantize(v, 2 * f)).collect(),
        None => vec![0; co],
    };
    let xd = x.data();
    let mut out = Vec::with_capacity(n * co * oh * ow);
    for b in 0..n {
        for o in 0..co {
            let gr = o / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = qb[o];
                    for cl in 0..cig {
                        let cin = gr * cig + cl;
                        for ki in 0..kh {
                            let iy =
                                (oy * c.strides[0] + ki * c.dilations[0]) as i64 - c.pads[0] as i64;
                            if iy < 0 || iy >= h as i64 {
                                continue;
                            }
                            for kj in 0..kw {
                                let ix = (ox * c.strides[1] + kj * c.dilations[1]) as i64
                                    - c.pads[1] as i64;
                                if ix < 0 || ix >= w as i64 {
                                    continue;
                                }
                                let xv = xd[((b * ci + cin) * h + iy as usize) * w + ix as usize];
                                acc += qw[((o * cig + cl) * kh + ki) * kw + kj] * i128::from(xv);
                            }
                        }
                    }
                    out.push(ref_rescale(acc, f));
                }
            }
        }
    }
    (vec![n, co, oh, ow], out)
}

fn ref_dense(d: &Dense, x: &[i128], n: usize, f: u32) -> Vec<i128> {
    let (m, k) = (d.weight.shape()[0], d.weight.shape()[1]);
    let qw: Vec<i128> = d
        .weight
        .data()
        .iter()
        .map(|&v| ref_quantize(v, f))
        .collect();
    let mut out = Vec::with_capacity(n * m);
    for b in 0..n {
        for r in 0..m {
            let mut acc = d
                .bias
                .as_ref()
                .map_or(0, |t| ref_quantize(t.data()[r], 2 * f));
            for c in 0..k {
                acc += qw[r * k + c] * x[b * k + c];
            }
            out.push(ref_rescale(acc, f));
        }
    }
    out
}

/// Worst-case |accumulator| bound the engine uses to choose its GEMM path.
fn acc_bound(weight: &Tensor, bias: Option<&Tensor>, rows: usize, xmax: i128, f: u32) -> i128 {
    let k = weight.len() / rows;
    let row = weight
        .data()
        .chunks(k)
        .map(|r| r.iter().map(|&v| ref_quantize(v, f).abs()).sum::<i128>())
        .max()
        .unwrap_or(0);
    let b = bias.map_or(0, |t| {
        t.data()
            .iter()
            .map(|&v| ref_quantize(v, 2 * f).abs())
            .max()
            .unwrap_or(0)
    });
    row * xmax + b
}

fn random_tensor(rng: &mut ChaCha20Rng, shape: Vec<usize>, scale: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(
        shape,
        (0..n).map(|_| rng.random_range(-scale..scale)).collect(),
    )
    .expect("tensor")
}

/// A random conv geometry that fits a `h`×`w` input.
#[derive(Clone, Debug)]
struct ConvCase {
    n: usize,
    groups: usize,
    cig: usize,
    cog: usize,
    h: usize,
    w: usize,
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    p: [usize; 4],
    bias: bool,
    seed: u64,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..=2, 1usize..=3, 1usize..=3, 1usize..=3),
        (3usize..=9, 3usize..=9),
        (
            1usize..=3,
            1usize..=3,
            1usize..=2,
            1usize..=2,
            1usize..=2,
            1usize..=2,
        ),
        (0usize..=2, 0usize..=2, 0usize..=2, 0usize..=2),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_filter_map(
            "window must fit",
            |((n, groups, cig, cog), (h, w), (kh, kw, sh, sw, dh, dw), p, bias, seed)| {
                let p = [p.0, p.1, p.2, p.3];
                let fits = h + p[0] + p[2] > dh * (kh - 1) && w + p[1] + p[3] > dw * (kw - 1);
                fits.then_some(ConvCase {
                    n,
                    groups,
                    cig,
                    cog,
                    h,
                    w,
                    k: [kh, kw],
                    s: [sh, sw],
                    d: [dh, dw],
                    p,
                    bias,
                    seed,
                })
            },
        )
}

/// Graph: input → Conv → Relu → Flatten → Dense; outputs the conv and the dense results.
fn conv_dense_graph(cc: &ConvCase, wscale: f32, dense_out: usize) -> (Graph, Conv, Dense) {
    let mut rng = ChaCha20Rng::seed_from_u64(cc.seed);
    let (ci, co) = (cc.groups * cc.cig, cc.groups * cc.cog);
    let conv = Conv {
        weight: random_tensor(&mut rng, vec![co, cc.cig, cc.k[0], cc.k[1]], wscale),
        bias: cc.bias.then(|| random_tensor(&mut rng, vec![co], wscale)),
        strides: cc.s,
        pads: cc.p,
        dilations: cc.d,
        groups: cc.groups,
        weight_scales: None,
    };
    let mut b = GraphBuilder::new("case", 0);
    let x = b.input("x", vec![cc.n, ci, cc.h, cc.w]).expect("input");
    let y = b
        .push("conv", Op::Conv(conv.clone()), vec![x], "conv_out")
        .expect("conv fits");
    let r = b.relu(y).expect("relu");
    let fl = b.flatten(r).expect("flatten");
    let k = b.shape(fl)[1];
    let dense = Dense {
        weight: random_tensor(&mut rng, vec![dense_out, k], wscale),
        bias: Some(random_tensor(&mut rng, vec![dense_out], wscale)),
        weight_scales: None,
    };
    let z = b
        .push("dense", Op::Dense(dense.clone()), vec![fl], "dense_out")
        .expect("dense");
    (b.finish(vec![y, z]).expect("valid graph"), conv, dense)
}

fn random_input(rng: &mut ChaCha20Rng, shape: &[usize], xmax: i64) -> Tensor<i64> {
    let n = shape.iter().product();
    Tensor::new(
        shape.to_vec(),
        (0..n).map(|_| rng.random_range(-xmax..=xmax)).collect(),
    )
    .expect("input")
}

fn as_i128(t: &Tensor<i64>) -> Vec<i128> {
    t.data().iter().map(|&v| i128::from(v)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// Ordinary magnitudes (f64 fast path): conv and dense agree with the i128 reference.
    #[test]
    fn conv_dense_match_reference(cc in conv_case(), f in 0u32..=16, xbits in 1u32..=20, m in 1usize..=6) {
        let (g, conv, dense) = conv_dense_graph(&cc, 1.5, m);
        let qm = QuantModel::new(&g, QuantConfig { frac_bits: f, max_bits: None }).expect("quantizes");
        let mut rng = ChaCha20Rng::seed_from_u64(cc.seed ^ 0x5eed);
        let x = random_input(&mut rng, g.shape(g.inputs[0]), 1i64 << xbits);
        let run = qm.run_int(std::slice::from_ref(&x)).expect("runs");
        let (cshape, cref) = ref_conv(&conv, &x, f);
        prop_assert_eq!(run.outputs[0].shape(), cshape.as_slice());
        prop_assert_eq!(as_i128(&run.outputs[0]), cref.clone());
        let relu: Vec<i128> = cref.iter().map(|&v| v.max(0)).collect();
        let dref = ref_dense(&dense, &relu, cc.n, f);
        prop_assert_eq!(as_i128(&run.outputs[1]), dref);
    }

    /// Accumulator bounds from 2^40 to beyond 2^53: whichever GEMM path the engine picks, the
    /// result is exact. Small `f` keeps every low bit of the accumulator visible in the output
    /// (a large `f` would round an inexact f64 sum away). Dense only (convolutions below).
    #[test]
    fn dense_exact_near_and_past_2_pow_53(
        n in 1usize..=3, k in 1usize..=40, m in 1usize..=5, xbits in 16u32..=40, f in 0u32..=3,
        seed in any::<u64>()
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        // |q_f(W)| up to 2^22 whatever f is.
        let scale = 4.0 * 2f32.powi(20 - f as i32);
        let dense = Dense {
            weight: random_tensor(&mut rng, vec![m, k], scale),
            bias: Some(random_tensor(&mut rng, vec![m], scale)),
            weight_scales: None,
        };
        let mut b = GraphBuilder::new("dense", 0);
        let x = b.input("x", vec![n, k]).expect("input");
        let y = b.push("dense", Op::Dense(dense.clone()), vec![x], "").expect("dense");
        let g = b.finish(vec![y]).expect("graph");
        let qm = QuantModel::new(&g, QuantConfig { frac_bits: f, max_bits: None }).expect("quantizes");
        let xt = random_input(&mut rng, &[n, k], (1i64 << xbits) - 1);
        let xmax = xt.data().iter().map(|v| i128::from(v.unsigned_abs())).max().unwrap_or(0);
        let bound = acc_bound(&dense.weight, dense.bias.as_ref(), m, xmax, f);
        prop_assume!(bound < i128::from(i64::MAX));
        let run = qm.run_int(std::slice::from_ref(&xt)).expect("runs");
        prop_assert_eq!(as_i128(&run.outputs[0]), ref_dense(&dense, &as_i128(&xt), n, f));
    }
}

/// Conv and dense with frac_bits 20 (and 0, where no rounding hides accumulator errors) and
/// inputs near 2^31: the accumulator bound is past 2^53, so the engine takes the exact i64 path;
/// results still equal the reference.
#[test]
fn i64_fallback_path_is_exact() {
    for f in [20, 0] {
        i64_fallback_case(f);
    }
}

fn i64_fallback_case(f: u32) {
    // |q_f(W)| up to 2^21 whatever f is.
    let scale = 2.0 * 2f32.powi(20 - f as i32);
    let mut cases = 0;
    for seed in 0..24u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let cc = ConvCase {
            n: 1 + (seed % 2) as usize,
            groups: 1 + (seed % 3) as usize,
            cig: 2,
            cog: 2,
            h: 6,
            w: 5,
            k: [3, 2],
            s: [1 + (seed % 2) as usize, 1],
            d: [1, 1 + (seed % 2) as usize],
            p: [1, 0, (seed % 3) as usize, 1],
            bias: seed % 4 != 0,
            seed,
        };
        let mut b = GraphBuilder::new("big", 0);
        let conv = Conv {
            weight: random_tensor(&mut rng, vec![cc.groups * cc.cog, cc.cig, 3, 2], scale),
            bias: cc
                .bias
                .then(|| random_tensor(&mut rng, vec![cc.groups * cc.cog], scale)),
            strides: cc.s,
            pads: cc.p,
            dilations: cc.d,
            groups: cc.groups,
            weight_scales: None,
        };
        let xin = b
            .input("x", vec![cc.n, cc.groups * cc.cig, cc.h, cc.w])
            .expect("input");
        let y = b
            .push("conv", Op::Conv(conv.clone()), vec![xin], "")
            .expect("conv");
        let g = b.finish(vec![y]).expect("graph");
        let qm = QuantModel::new(
            &g,
            QuantConfig {
                frac_bits: f,
                max_bits: None,
            },
        )
        .expect("quantizes");
        let x = random_input(&mut rng, g.shape(g.inputs[0]), (1i64 << 31) - 1);
        let xmax = x
            .data()
            .iter()
            .map(|v| i128::from(v.unsigned_abs()))
            .max()
            .unwrap_or(0);
        let rows = conv.weight.shape()[0];
        let bound = acc_bound(&conv.weight, conv.bias.as_ref(), rows, xmax, f);
        assert!(
            bound >= 1i128 << 53 && bound < i128::from(i64::MAX),
            "f {f}, seed {seed}: bound 2^{:.1} does not force the i64 path",
            (bound as f64).log2()
        );
        let run = qm.run_int(std::slice::from_ref(&x)).expect("runs");
        let (shape, want) = ref_conv(&conv, &x, f);
        assert_eq!(run.outputs[0].shape(), shape.as_slice());
        assert_eq!(as_i128(&run.outputs[0]), want, "f {f}, seed {seed}");
        // The reported accumulator width is that of a value past 2^53 in magnitude for some
        // position only if the data reach it; it must at least cover the output.
        let w = run.widths.iter().find(|w| w.name == "conv").expect("width");
        assert!(w.acc_max >= w.out_max);
        cases += 1;
    }
    assert_eq!(cases, 24);

    // Dense, same regime.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let (n, k, m) = (2, 30, 4);
    let dense = Dense {
        weight: random_tensor(&mut rng, vec![m, k], scale),
        bias: Some(random_tensor(&mut rng, vec![m], scale)),
        weight_scales: None,
    };
    let mut b = GraphBuilder::new("bigdense", 0);
    let xin = b.input("x", vec![n, k]).expect("input");
    let y = b
        .push("dense", Op::Dense(dense.clone()), vec![xin], "")
        .expect("dense");
    let g = b.finish(vec![y]).expect("graph");
    let qm = QuantModel::new(
        &g,
        QuantConfig {
            frac_bits: f,
            max_bits: None,
        },
    )
    .expect("quantizes");
    let x = random_input(&mut rng, &[n, k], (1i64 << 31) - 1);
    let xmax = x
        .data()
        .iter()
        .map(|v| i128::from(v.unsigned_abs()))
        .max()
        .unwrap_or(0);
    let bound = acc_bound(&dense.weight, dense.bias.as_ref(), m, xmax, f);
    assert!(bound >= 1i128 << 53 && bound < i128::from(i64::MAX));
    let run = qm.run_int(std::slice::from_ref(&x)).expect("runs");
    assert_eq!(
        as_i128(&run.outputs[0]),
        ref_dense(&dense, &as_i128(&x), n, f)
    );
}

/// Where even i64 cannot hold the accumulator, the engine refuses instead of wrapping.
#[test]
fn accumulator_past_i64_is_an_overflow_error() {
    let f = 24;
    let dense = Dense {
        weight: Tensor::new(vec![1, 4], vec![100.0; 4]).expect("w"),
        bias: None,
        weight_scales: None,
    };
    let mut b = GraphBuilder::new("huge", 0);
    let xin = b.input("x", vec![1, 4]).expect("input");
    let y = b
        .push("dense", Op::Dense(dense), vec![xin], "")
        .expect("dense");
    let g = b.finish(vec![y]).expect("graph");
    let qm = QuantModel::new(
        &g,
        QuantConfig {
            frac_bits: f,
            max_bits: None,
        },
    )
    .expect("quantizes");
    let x = Tensor::new(vec![1, 4], vec![i64::MAX / 8; 4]).expect("x");
    let err = qm.run_int(&[x]).expect_err("must not wrap");
    let msg = err.to_string();
    assert!(msg.contains("dense") && msg.contains("64 bits"), "{msg}");
}

#[test]
fn max_bits_bound_names_the_node() {
    let g = (tessera_model::builders::find("dash-a")
        .expect("dash-a")
        .build)(1)
    .expect("builds");
    let qm = QuantModel::new(
        &g,
        QuantConfig {
            frac_bits: 8,
            max_bits: Some(10),
        },
    )
    .expect("quantizes");
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let x = random_tensor(&mut rng, g.shape(g.inputs[0]).to_vec(), 1.0).map(|v| v.abs());
    match qm.run(&[x]) {
        Err(EngineError::WidthExceeded { node, bits, bound }) => {
            assert_eq!(bound, 10);
            assert!(bits > 10, "{bits} bits reported over a bound of 10");
            assert!(
                g.nodes.iter().any(|n| n.name == node),
                "'{node}' is not a node of the graph"
            );
            println!("max_bits 10: node '{node}' needs {bits} bits");
        }
        other => panic!("expected WidthExceeded, got {other:?}"),
    }
    // A generous bound passes and reports widths within it.
    let qm = QuantModel::new(
        &g,
        QuantConfig {
            frac_bits: 8,
            max_bits: Some(48),
        },
    )
    .expect("quantizes");
    let x = random_tensor(&mut rng, g.shape(g.inputs[0]).to_vec(), 1.0);
    let r = qm.run(&[x]).expect("fits in 48 bits");
    assert!(r.widths.iter().all(|w| w.acc_bits() <= 48));
}

/// The reference window: every (iy, ix) of output (oy, ox), in range or not.
fn window(p: &Pool, oy: usize, ox: usize) -> impl Iterator<Item = (isize, isize)> + '_ {
    (0..p.kernel[0]).flat_map(move |ky| {
        (0..p.kernel[1]).map(move |kx| {
            (
                (oy * p.strides[0] + ky * p.dilations[0]) as isize - p.pads[0] as isize,
                (ox * p.strides[1] + kx * p.dilations[1]) as isize - p.pads[1] as isize,
            )
        })
    })
}

/// `⌊(a + ⌊d/2⌋) / d⌋`, the pow2 semantics' division (naive, i128).
fn ref_div(a: i128, d: i128) -> i128 {
    (a + d / 2).div_euclid(d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Mul and Add by per-channel constants, a padded average pool (either divisor), a max pool
    /// and global average pooling, each against naive i128 loops.
    #[test]
    fn pools_and_constant_ops_match_reference(
        c in 1usize..=4, h in 3usize..=9, w in 3usize..=9, f in 0u32..=12, include in any::<bool>(),
        stride in 1usize..=2, seed in any::<u64>()
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mul = random_tensor(&mut rng, vec![1, c, 1, 1], 3.0);
        let add = random_tensor(&mut rng, vec![1, c, 1, 1], 3.0);
        let avg = Pool {
            kernel: [3, 3],
            strides: [stride, stride],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            count_include_pad: include,
            ceil_mode: false,
        };
        let max = Pool { kernel: [2, 2], strides: [1, 1], pads: [0; 4], count_include_pad: false, ..avg.clone() };
        let mut b = GraphBuilder::new("pools", 0);
        let x = b.input("x", vec![1, c, h, w]).expect("input");
        let bin = |op, t: &Tensor| Op::Binary { op, constant: Some(t.clone()), constant_first: false };
        let m = b.push("mul", bin(BinOp::Mul, &mul), vec![x], "").expect("mul");
        let a = b.push("add", bin(BinOp::Add, &add), vec![m], "").expect("add");
        let p = b.push("avg", Op::AvgPool(avg.clone()), vec![a], "").expect("avg");
        let q = b.push("max", Op::MaxPool(max.clone()), vec![p], "").expect("max");
        let g2 = b.push("gap", Op::GlobalAvgPool, vec![q], "").expect("gap");
        let g = b.finish(vec![m, a, p, q, g2]).expect("graph");
        let qm = QuantModel::new(&g, QuantConfig { frac_bits: f, max_bits: None }).expect("quantizes");
        let xt = random_input(&mut rng, &[1, c, h, w], 1 << (f + 4));
        let run = qm.run_int(std::slice::from_ref(&xt)).expect("runs");

        let xv = as_i128(&xt);
        let plane = h * w;
        let mv: Vec<i128> = xv.iter().enumerate()
            .map(|(i, &v)| ref_rescale(v * ref_quantize(mul.data()[i / plane], f), f))
            .collect();
        prop_assert_eq!(as_i128(&run.outputs[0]), mv.clone());
        let av: Vec<i128> = mv.iter().enumerate()
            .map(|(i, &v)| v + ref_quantize(add.data()[i / plane], f))
            .collect();
        prop_assert_eq!(as_i128(&run.outputs[1]), av.clone());
        let pool = |src: &[i128], ih: usize, iw: usize, p: &Pool, is_max: bool| {
            let oh = (ih + p.pads[0] + p.pads[2] - p.kernel[0]) / p.strides[0] + 1;
            let ow = (iw + p.pads[1] + p.pads[3] - p.kernel[1]) / p.strides[1] + 1;
            let mut out = Vec::new();
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let inside: Vec<i128> = window(p, oy, ox)
                            .filter(|&(y, x)| y >= 0 && x >= 0 && (y as usize) < ih && (x as usize) < iw)
                            .map(|(y, x)| src[(ch * ih + y as usize) * iw + x as usize])
                            .collect();
                        out.push(if is_max {
                            inside.iter().copied().max().expect("a window")
                        } else {
                            let d = if p.count_include_pad { (p.kernel[0] * p.kernel[1]) as i128 } else { inside.len() as i128 };
                            ref_div(inside.iter().sum(), d)
                        });
                    }
                }
            }
            (oh, ow, out)
        };
        let (ph, pw, pv) = pool(&av, h, w, &avg, false);
        prop_assert_eq!(as_i128(&run.outputs[2]), pv.clone());
        let (qh, qw, qv) = pool(&pv, ph, pw, &max, true);
        prop_assert_eq!(as_i128(&run.outputs[3]), qv.clone());
        let gv: Vec<i128> = qv.chunks(qh * qw).map(|s| ref_div(s.iter().sum(), (qh * qw) as i128)).collect();
        prop_assert_eq!(as_i128(&run.outputs[4]), gv);
    }
}
