//! The integer semantics v2 against an independent i128 oracle: naive loops over the lowered
//! constants (`IntModel::op`), no GEMM, no im2col, no shared helpers, on random networks with
//! grouped and depthwise convolutions, residual adds, clips, pools and constant ops.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_engine::qint::{
    Calibration, IntModel, IntOp, QintConfig, default_calibration_inputs, rq,
};
use tessera_model::ir::{Graph, Op};
use tessera_model::{GraphBuilder, Tensor};

fn ref_rq(a: i128, m: i64, n: u32) -> i128 {
    let p = a * i128::from(m);
    if n == 0 {
        p
    } else {
        (p + (1i128 << (n - 1))).div_euclid(1i128 << n)
    }
}

/// Strides of a row-major shape.
fn strides(s: &[usize]) -> Vec<usize> {
    let mut st = vec![1; s.len()];
    for i in (0..s.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * s[i + 1];
    }
    st
}

/// Index into `src` (shape `ss`) for output multi-index of flat `i` in `os` (numpy broadcast).
fn bidx(i: usize, os: &[usize], ss: &[usize]) -> usize {
    let ost = strides(os);
    let sst = strides(ss);
    let off = os.len() - ss.len();
    let mut j = 0;
    for (d, &st) in ost.iter().enumerate() {
        let c = (i / st) % os[d];
        if d >= off && ss[d - off] != 1 {
            j += c * sst[d - off];
        }
    }
    j
}

/// Coordinates of flat index `i` in `shape`.
fn coords(i: usize, shape: &[usize]) -> Vec<usize> {
    strides(shape)
        .iter()
        .zip(shape)
        .map(|(&st, &d)| (i / st) % d)
        .collect()
}

/// Flat index of coordinates `c` in `shape`.
fn flat(c: &[usize], shape: &[usize]) -> usize {
    c.iter().zip(strides(shape)).map(|(&v, st)| v * st).sum()
}

fn oracle(m: &IntModel, x: &Tensor<i64>) -> Vec<i128> {
    let g = m.graph();
    let mut vals: Vec<Option<(Vec<usize>, Vec<i128>)>> = vec![None; g.values.len()];
    vals[g.inputs[0]] = Some((
        x.shape().to_vec(),
        x.data().iter().map(|&v| i128::from(v)).collect(),
    ));
    for (ni, n) in g.nodes.iter().enumerate() {
        let (xs, xv) = vals[n.inputs[0]].clone().expect("input");
        let os = g.shape(n.output).to_vec();
        let len: usize = os.iter().product();
        let op = m.op(ni).expect("op");
        let clamp = |v: i128, lo: i64, hi: i64| v.clamp(i128::from(lo), i128::from(hi));
        let y: Vec<i128> = match (&n.op, op) {
            (Op::Conv(c), IntOp::Linear(l)) => {
                let (nb, ci, h, w) = (xs[0], xs[1], xs[2], xs[3]);
                let (co, oh, ow) = (os[1], os[2], os[3]);
                let (kh, kw) = (c.weight.shape()[2], c.weight.shape()[3]);
                let (cig, cog) = (ci / c.groups, co / c.groups);
                let mut y = vec![0; len];
                for b in 0..nb {
                    for o in 0..co {
                        let gr = o / cog;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut acc = i128::from(l.b[o]);
                                for cc in 0..cig {
                                    for ky in 0..kh {
                                        for kx in 0..kw {
                                            let iy = (oy * c.strides[0] + ky * c.dilations[0])
                                                as isize
                                                - c.pads[0] as isize;
                                            let ix = (ox * c.strides[1] + kx * c.dilations[1])
                                                as isize
                                                - c.pads[1] as isize;
                                            if iy < 0
                                                || ix < 0
                                                || iy >= h as isize
                                                || ix >= w as isize
                                            {
                                                continue;
                                            }
                                            let xin = xv[((b * ci + gr * cig + cc) * h
                                                + iy as usize)
                                                * w
                                                + ix as usize];
                                            let wv = l.w[((o * cig + cc) * kh + ky) * kw + kx];
                                            acc += i128::from(wv) * xin;
                                        }
                                    }
                                }
                                y[((b * co + o) * oh + oy) * ow + ox] =
                                    clamp(ref_rq(acc, l.mult[o], l.shift), l.lo, l.hi);
                            }
                        }
                    }
                }
                y
            }
            (Op::Dense(_), IntOp::Linear(l)) => {
                let (nb, k) = (xs[0], xs[1]);
                let mo = os[1];
                let mut y = vec![0; len];
                for b in 0..nb {
                    for r in 0..mo {
                        let mut acc = i128::from(l.b[r]);
                        for j in 0..k {
                            acc += i128::from(l.w[r * k + j]) * xv[b * k + j];
                        }
                        y[b * mo + r] = clamp(ref_rq(acc, l.mult[r], l.shift), l.lo, l.hi);
                    }
                }
                y
            }
            (
                _,
                IntOp::AddAct {
                    ma,
                    mb,
                    shift,
                    lo,
                    hi,
                },
            ) => {
                let (bs, bv) = vals[n.inputs[1]].clone().expect("second input");
                (0..len)
                    .map(|i| {
                        let a = xv[bidx(i, &os, &xs)];
                        let b = bv[bidx(i, &os, &bs)];
                        clamp(
                            ref_rq(a * i128::from(*ma) + b * i128::from(*mb), 1, *shift),
                            *lo,
                            *hi,
                        )
                    })
                    .collect()
            }
            (
                Op::Binary {
                    constant: Some(c), ..
                },
                IntOp::AddConst { c: cq, neg_x },
            ) => (0..len)
                .map(|i| {
                    let a = xv[bidx(i, &os, &xs)];
                    let k = i128::from(cq[bidx(i, &os, c.shape())]);
                    if *neg_x { k - a } else { k + a }
                })
                .collect(),
            (
                Op::Binary {
                    constant: Some(c), ..
                },
                IntOp::MulConst {
                    mult,
                    add,
                    shift,
                    lo,
                    hi,
                },
            ) => (0..len)
                .map(|i| {
                    let a = xv[bidx(i, &os, &xs)];
                    let j = bidx(i, &os, c.shape());
                    let m = i128::from(mult[j]);
                    let k = add.get(j).map_or(0, |&v| i128::from(v));
                    clamp(ref_rq(a * m + k, 1, *shift), *lo, *hi)
                })
                .collect(),
            (_, IntOp::Relu) => xv.iter().map(|&v| v.max(0)).collect(),
            (_, IntOp::Clip { lo, hi }) => xv.iter().map(|&v| clamp(v, *lo, *hi)).collect(),
            (Op::MaxPool(p) | Op::AvgPool(p), _) => {
                let (nb, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
                let (oh, ow) = (os[2], os[3]);
                let mut y = vec![0; len];
                for pl in 0..nb * c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (mut best, mut sum, mut padded) = (i128::MIN, 0i128, 0usize);
                            let mut valid = 0;
                            for ky in 0..p.kernel[0] {
                                for kx in 0..p.kernel[1] {
                                    let iy = (oy * p.strides[0] + ky * p.dilations[0]) as isize
                                        - p.pads[0] as isize;
                                    let ix = (ox * p.strides[1] + kx * p.dilations[1]) as isize
                                        - p.pads[1] as isize;
                                    if iy >= -(p.pads[0] as isize)
                                        && iy < (h + p.pads[2]) as isize
                                        && ix >= -(p.pads[1] as isize)
                                        && ix < (w + p.pads[3]) as isize
                                    {
                                        padded += 1;
                                    }
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        let v = xv[(pl * h + iy as usize) * w + ix as usize];
                                        best = best.max(v);
                                        sum += v;
                                        valid += 1;
                                    }
                                }
                            }
                            let _ = (padded, valid);
                            y[(pl * oh + oy) * ow + ox] = match op {
                                IntOp::MaxPool => best,
                                IntOp::AvgPool { mult, shift } => {
                                    ref_rq(sum, mult[oy * ow + ox], *shift)
                                }
                                _ => unreachable!("pool op"),
                            };
                        }
                    }
                }
                y
            }
            (_, IntOp::GlobalAvgPool { mult, shift }) => {
                let hw = xs[2] * xs[3];
                xv.chunks(hw)
                    .map(|c| ref_rq(c.iter().sum(), *mult, *shift))
                    .collect()
            }
            (_, IntOp::Pass) => xv.clone(),
            (Op::Sigmoid | Op::Tanh, IntOp::Table { first, table }) => xv
                .iter()
                .map(|&v| {
                    i128::from(
                        table[usize::try_from(v - i128::from(*first)).expect("in the interval")],
                    )
                })
                .collect(),
            (
                Op::Lrn {
                    size,
                    alpha,
                    beta,
                    bias,
                },
                IntOp::Lrn { s_x, s_y, lo, hi },
            ) => {
                let (c, inner) = (xs[1], xs[2..].iter().product::<usize>());
                let mut y = vec![0; len];
                for b in 0..xs[0] {
                    for ch in 0..c {
                        for i in 0..inner {
                            let mut sq = 0i128;
                            for cc in 0..c {
                                // The window: (size − 1) / 2 channels before, the rest after.
                                let before = (*size - 1) / 2;
                                if cc + before >= ch && cc <= ch + (*size - 1 - before) {
                                    let v = xv[(b * c + cc) * inner + i];
                                    sq += v * v;
                                }
                            }
                            let v = xv[(b * c + ch) * inner + i] as f64 * s_x;
                            let den = (f64::from(*bias)
                                + f64::from(*alpha) / *size as f64 * sq as f64 * s_x * s_x)
                                .powf(f64::from(*beta));
                            let q = (v / den / s_y).round() as i128;
                            y[(b * c + ch) * inner + i] = clamp(q, *lo, *hi);
                        }
                    }
                }
                y
            }
            (
                Op::Quantize(_),
                IntOp::Requant {
                    mult,
                    shift,
                    lo,
                    hi,
                },
            ) => xv
                .iter()
                .map(|&v| clamp(ref_rq(v, *mult, *shift), *lo, *hi))
                .collect(),
            // Data movement: each output coordinate read from its input coordinate.
            (Op::Transpose { perm }, IntOp::Move) => (0..len)
                .map(|i| {
                    let oc = coords(i, &os);
                    let mut ic = vec![0; xs.len()];
                    for (d, &p) in perm.iter().enumerate() {
                        ic[p] = oc[d];
                    }
                    xv[flat(&ic, &xs)]
                })
                .collect(),
            (Op::Slice { axis, start, .. }, IntOp::Move) => (0..len)
                .map(|i| {
                    let mut c = coords(i, &os);
                    c[*axis] += start;
                    xv[flat(&c, &xs)]
                })
                .collect(),
            (Op::Concat { axis }, IntOp::Concat { parts, lo, hi }) => {
                let ins: Vec<(Vec<usize>, Vec<i128>)> = n
                    .inputs
                    .iter()
                    .map(|&v| vals[v].clone().expect("input"))
                    .collect();
                (0..len)
                    .map(|i| {
                        let mut c = coords(i, &os);
                        let mut k = 0;
                        while c[*axis] >= ins[k].0[*axis] {
                            c[*axis] -= ins[k].0[*axis];
                            k += 1;
                        }
                        let (m, sh) = parts[k];
                        clamp(ref_rq(ins[k].1[flat(&c, &ins[k].0)], m, sh), *lo, *hi)
                    })
                    .collect()
            }
            (op, l) => panic!("oracle has no rule for {} as {}", op.kind(), l.kind()),
        };
        vals[n.output] = Some((os, y));
    }
    vals[g.outputs[0]].clone().expect("output").1
}

/// A small residual CNN with every op of v2 (`builders::mix_bn`): input normalisation (Sub, Mul
/// by constants), a grouped conv, a depthwise conv with ReLU6 (Clip), a residual Add, a batch
/// normalisation (Mul, Add by constants), a padded 3×3 average pool (divisors 4, 6 and 9), a max pool, global average pooling and a dense head.
fn residual_net(seed: u64, c: usize, hw: usize) -> Graph {
    tessera_model::builders::mix_bn(hw, c, seed).expect("builds")
}

/// An input anywhere in the model's input interval, the extremes every `period` elements.
fn extreme_input(m: &IntModel, seed: u64, period: usize) -> Tensor<i64> {
    let iq = m.input_quant().expect("input");
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let g = m.graph();
    let shape = g.shape(g.inputs[0]).to_vec();
    let len: usize = shape.iter().product();
    let data = (0..len)
        .map(|i| match i % period {
            0 => iq.lo,
            1 => iq.hi,
            _ => rng.random_range(iq.lo..=iq.hi),
        })
        .collect();
    Tensor::new(shape, data).expect("x")
}

/// Runs `m` on `x`, asserts the oracle's result, and returns the engine's.
fn assert_oracle(m: &IntModel, x: &Tensor<i64>) -> Tensor<i64> {
    let got = m.run_int(x).expect("runs");
    let want = oracle(m, x);
    assert_eq!(
        got.data()
            .iter()
            .map(|&v| i128::from(v))
            .collect::<Vec<_>>(),
        want
    );
    got
}

fn model(g: &Graph, cfg: QintConfig, seed: u64) -> IntModel {
    let inputs = default_calibration_inputs(g, 0.0, 1.0, 8, seed).expect("inputs");
    let cal = Calibration::from_inputs(g, &inputs, "generated").expect("calibration");
    IntModel::new(g, cfg, &cal).expect("lowers")
}

/// Conv → ReLU → LRN → conv → Tanh → global pool → dense → Sigmoid: the float-only ops of the
/// light architectures under v2.
fn nonlinear_net(seed: u64, c: usize, hw: usize, size: usize) -> Graph {
    let mut b = GraphBuilder::new("nonlinear", seed);
    let x = b.input("x", vec![1, 3, hw, hw]).expect("input");
    let x = b.conv(x, c, 3, 1, 1).expect("conv");
    let x = b.relu(x).expect("relu");
    let lrn = Op::Lrn {
        size,
        alpha: 1e-2,
        beta: 0.75,
        bias: 1.0,
    };
    let x = b.push("lrn", lrn, vec![x], "").expect("lrn");
    let x = b.conv(x, c, 3, 1, 1).expect("conv");
    let x = b.push("tanh", Op::Tanh, vec![x], "").expect("tanh");
    let x = b.global_avg_pool(x).expect("gap");
    let x = b.reshape("flat", x, vec![1, c], "").expect("flatten");
    let x = b.dense(x, 4).expect("dense");
    let y = b
        .push("sigmoid", Op::Sigmoid, vec![x], "")
        .expect("sigmoid");
    b.finish(vec![y]).expect("graph")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn lrn_and_tables_match_the_oracle(seed in any::<u64>(), c in 2usize..=10, hw in 3usize..=6, size in 1usize..=5, act_bits in 4u32..=10) {
        let g = nonlinear_net(seed, c, hw, size);
        let cfg = QintConfig { act_bits, ..QintConfig::default() };
        let m = model(&g, cfg, seed);
        let kinds: Vec<&str> = (0..g.nodes.len()).filter_map(|i| m.op(i)).map(IntOp::kind).collect();
        prop_assert!(kinds.contains(&"lrn") && kinds.contains(&"table"), "{:?}", kinds);
        let x = extreme_input(&m, seed ^ 5, 4);
        let got = m.run_int(&x).expect("runs");
        prop_assert_eq!(got.data().iter().map(|&v| i128::from(v)).collect::<Vec<_>>(), oracle(&m, &x));
        // The sigmoid's output is on its fixed grid, probabilities at 1/(2^b − 1).
        let oq = m.output_quant().expect("output");
        prop_assert_eq!((oq.lo, oq.hi), (0, (1i64 << act_bits) - 1));
    }

    #[test]
    fn random_int8_nets_match_the_oracle(seed in any::<u64>(), c in 1usize..=4, hw in 3usize..=8) {
        let g = tessera_model::builders::shuffle_int8(hw, c, seed).expect("builds");
        let none = Calibration::given("none");
        let m = IntModel::new(&g, QintConfig::default(), &none).expect("lowers from the grids alone");
        let kinds: Vec<&str> = (0..g.nodes.len()).filter_map(|i| m.op(i)).map(IntOp::kind).collect();
        for k in ["linear", "concat", "move", "requant", "clip"] {
            prop_assert!(kinds.contains(&k), "{} lowers to {:?}", k, kinds);
        }
        let x = extreme_input(&m, seed ^ 3, 5);
        let got = m.run_int(&x).expect("runs");
        prop_assert_eq!(got.data().iter().map(|&v| i128::from(v)).collect::<Vec<_>>(), oracle(&m, &x));
        // The weights are the given integers.
        for i in 0..g.nodes.len() {
            if let (Op::Conv(cv), Some(IntOp::Linear(l))) = (&g.nodes[i].op, m.op(i)) {
                let s = cv.weight_scales.as_ref().expect("scales");
                let k = l.w.len() / s.len();
                for (j, (&q, &w)) in l.w.iter().zip(cv.weight.data()).enumerate() {
                    prop_assert_eq!(q, (f64::from(w) / f64::from(s[j / k])).round() as i64);
                }
            }
        }
    }

    #[test]
    fn random_residual_nets_match_the_oracle(
        seed in any::<u64>(),
        c in 1usize..=3,
        hw in 4usize..=9,
        mult_bits in 1u32..=16,
        aux_mult_bits in 1u32..=16,
        act_bits in 2u32..=10,
        weight_bits in 2u32..=10,
    ) {
        let g = residual_net(seed, c * 3, hw);
        let cfg = QintConfig { weight_bits, act_bits, out_bits: 16, mult_bits, aux_mult_bits };
        let m = model(&g, cfg, seed);
        let x = extreme_input(&m, seed ^ 1, 7);
        let got = m.run_int(&x).expect("runs");
        let want = oracle(&m, &x);
        prop_assert_eq!(got.data().iter().map(|&v| i128::from(v)).collect::<Vec<_>>(), want);
    }

    #[test]
    fn wide_nets_on_the_8bit_gemm_match_the_oracle(seed in any::<u64>(), c in 6usize..=9, hw in 5usize..=11) {
        // 18 to 27 channels at w8a8: every conv and the dense head take the 8-bit GEMM (groups
        // of 6 to 9 channels stay on the general path), with row and column tails.
        let g = residual_net(seed, c * 3, hw);
        let m = model(&g, QintConfig::default(), seed);
        let x = extreme_input(&m, seed ^ 2, 5);
        let got = m.run_int(&x).expect("runs");
        prop_assert_eq!(got.data().iter().map(|&v| i128::from(v)).collect::<Vec<_>>(), oracle(&m, &x));
    }

    #[test]
    fn requantization_is_the_rounded_floor(a in -(1i64 << 40)..(1i64 << 40), m in -(1i64 << 20)..(1i64 << 20), n in 0u32..=40) {
        prop_assert_eq!(rq(i128::from(a), m, n), Some(ref_rq(i128::from(a), m, n)));
    }
}

#[test]
fn requantization_rounds_half_up() {
    assert_eq!(rq(3, 1, 1), Some(2)); // 1.5 → 2
    assert_eq!(rq(-3, 1, 1), Some(-1)); // −1.5 → −1
    assert_eq!(rq(-1, 1, 1), Some(0)); // −0.5 → 0
    assert_eq!(rq(5, 3, 2), Some(4)); // 15/4 = 3.75 → 4
    assert_eq!(rq(i128::MAX, 2, 0), None);
}

#[test]
fn weights_use_their_bits_and_scales_are_exact() {
    let g = residual_net(7, 9, 8);
    for b in [3u32, 8] {
        let m = model(
            &g,
            QintConfig {
                mult_bits: b,
                ..QintConfig::default()
            },
            7,
        );
        let top = (1i64 << b) - 1;
        let mut linear = 0;
        for i in 0..g.nodes.len() {
            if let Some(IntOp::Linear(l)) = m.op(i) {
                linear += 1;
                let wmax = l.w.iter().map(|v| v.abs()).max().expect("weights");
                assert!(wmax <= 127, "8-bit weights, got {wmax}");
                // The largest channel uses most of its range: the ceiling of a normalised
                // multiplier m ≥ 2^(B−1) wastes at most a factor m / (m + 1).
                let floor = 127 * (top / 2 + 1) / (top / 2 + 2);
                assert!(
                    wmax >= floor,
                    "B = {b}: weights use their range, got {wmax} < {floor}"
                );
                assert!(l.mult.iter().all(|&m| (1..=top).contains(&m)));
                assert!(
                    l.mult.iter().any(|&m| m > top / 2),
                    "B = {b}: one channel's multiplier is normalised"
                );
            }
        }
        assert_eq!(linear, 4);
    }
}

#[test]
fn inputs_saturate_and_intervals_hold() {
    let g = residual_net(3, 6, 6);
    let m = model(&g, QintConfig::default(), 3);
    let iq = m.input_quant().expect("input");
    assert_eq!(
        (iq.lo, iq.hi),
        (0, 255),
        "a non-negative input is unsigned 8-bit"
    );
    let big = Tensor::new(g.shape(g.inputs[0]).to_vec(), vec![1e6; 108]).expect("x");
    let q = m.quantize_input(&big).expect("quantizes");
    assert!(q.data().iter().all(|&v| v == 255), "saturates at the top");
    let out = m.run(&big).expect("runs");
    let oq = m.output_quant().expect("output");
    assert!(out.data().iter().all(|&v| v >= oq.lo && v <= oq.hi));
    assert_eq!((oq.lo, oq.hi), (-32767, 32767), "16-bit signed logits");
    let outside = Tensor::new(q.shape().to_vec(), vec![256; 108]).expect("x");
    assert!(
        m.run_int(&outside).is_err(),
        "an input outside the interval is refused"
    );
    let nan = Tensor::new(g.shape(g.inputs[0]).to_vec(), vec![f32::NAN; 108]).expect("x");
    assert!(m.quantize_input(&nan).is_err());
}

#[test]
fn v2_tracks_the_float_engine() {
    // Over generated inputs in the calibration range, the dequantized logits stay close to the
    // float ones: the largest error is under 5% of the largest logit.
    let g = residual_net(11, 9, 8);
    let m = model(&g, QintConfig::default(), 11);
    let xs = default_calibration_inputs(&g, 0.0, 1.0, 16, 99).expect("inputs");
    let (mut err, mut top) = (0f32, 0f32);
    for x in &xs {
        let f = tessera_engine::run_f32(&g, std::slice::from_ref(x)).expect("float");
        let q = m.dequantize_output(&m.run(x).expect("int")).expect("deq");
        for (a, b) in f[0].data().iter().zip(q.data()) {
            err = err.max((a - b).abs());
            top = top.max(a.abs());
        }
    }
    assert!(
        err <= 0.05 * top,
        "max error {err} against max |logit| {top}"
    );
}

#[test]
fn bad_configs_and_ops_are_refused() {
    let g = residual_net(1, 6, 5);
    let inputs = default_calibration_inputs(&g, 0.0, 1.0, 2, 1).expect("inputs");
    let cal = Calibration::from_inputs(&g, &inputs, "generated").expect("calibration");
    for cfg in [
        QintConfig {
            weight_bits: 1,
            ..QintConfig::default()
        },
        QintConfig {
            act_bits: 17,
            ..QintConfig::default()
        },
        QintConfig {
            mult_bits: 0,
            ..QintConfig::default()
        },
        QintConfig {
            aux_mult_bits: 25,
            ..QintConfig::default()
        },
    ] {
        assert!(IntModel::new(&g, cfg, &cal).is_err());
    }
    let mut short = cal.clone();
    short.ranges.pop_last();
    let e = IntModel::new(&g, QintConfig::default(), &short)
        .expect_err("a value without a range is refused")
        .to_string();
    assert!(e.contains("has no range for value"), "{e}");
    // The calibration is keyed by value name, so it survives an ONNX export and re-import.
    let bytes = tessera_model::export::export_model(&g).expect("exports");
    let back = tessera_model::import_model(&bytes, &tessera_model::ImportOptions::default())
        .expect("imports");
    let x = default_calibration_inputs(&g, 0.0, 1.0, 1, 5)
        .expect("input")
        .remove(0);
    let a = IntModel::new(&g, QintConfig::default(), &cal).expect("lowers");
    let b = IntModel::new(&back, QintConfig::default(), &cal).expect("lowers the re-import");
    assert_eq!(a.run(&x).expect("runs"), b.run(&x).expect("runs"));
    // An op outside v2 is refused with the node named.
    let mut b = GraphBuilder::new("t", 0);
    let x = b.input("x", vec![1, 4]).expect("input");
    let pad = Op::Pad {
        pads: vec![0, 0, 0, 1],
        value: 0.0,
    };
    let y = b.push("pad", pad, vec![x], "").expect("pad");
    let g = b.finish(vec![y]).expect("graph");
    let inputs = default_calibration_inputs(&g, 0.0, 1.0, 2, 1).expect("inputs");
    let cal = Calibration::from_inputs(&g, &inputs, "generated").expect("calibration");
    let e = IntModel::new(&g, QintConfig::default(), &cal)
        .expect_err("refused")
        .to_string();
    assert!(e.contains("pad") && e.contains("Pad"), "{e}");
}

/// What a party that holds the model with biases and added constants zeroed (the `gc` worker)
/// lowers is exactly the full lowering with those constants zeroed: same ops, scales, shifts,
/// multipliers and intervals. The worker compiles its circuit from that, so any dependence of
/// these on a secret constant would make the two circuits differ.
#[test]
fn the_public_model_lowers_to_the_same_structure() {
    use tessera_model::ir::BinOp;
    let g = residual_net(13, 6, 7);
    let cal = Calibration::from_inputs(
        &g,
        &default_calibration_inputs(&g, 0.0, 1.0, 4, 13).expect("inputs"),
        "generated",
    )
    .expect("calibration");
    let mut public = g.clone();
    for n in &mut public.nodes {
        match &mut n.op {
            Op::Conv(c) => c.bias.iter_mut().for_each(|b| b.data_mut().fill(0.0)),
            Op::Dense(d) => d.bias.iter_mut().for_each(|b| b.data_mut().fill(0.0)),
            Op::Binary {
                op: BinOp::Add | BinOp::Sub,
                constant: Some(c),
                ..
            } => c.data_mut().fill(0.0),
            _ => {}
        }
    }
    let full = IntModel::new(&g, QintConfig::default(), &cal).expect("lowers");
    let open = IntModel::new(&public, QintConfig::default(), &cal).expect("lowers");
    let stripped = full.without_constants();
    for i in 0..g.nodes.len() {
        assert_eq!(stripped.op(i), open.op(i), "node {i}");
    }
    for v in 0..g.values.len() {
        assert_eq!(full.value(v), open.value(v), "value {v}");
    }
}

/// A bias near 2^60 in the accumulator's scale (a QDQ model's float bias over a tiny weight
/// scale): the requantization cannot run in i64 and takes the i128 path, on the 8-bit GEMM
/// (8 rows) and on the general path (3 rows); both equal the oracle.
#[test]
fn huge_biases_requantize_exactly() {
    use tessera_model::ir::{Dense, QParam};
    for rows in [8usize, 3] {
        let k = 4;
        let s_w = 1e-3f32;
        let weight: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 255) as i32 - 127) as f32 * s_w)
            .collect();
        // b / (s_x · s_w) ≈ ±2^60 for s_x = 0.01.
        let bias: Vec<f32> = (0..rows)
            .map(|r| if r % 2 == 0 { 1.15e13 } else { -1.15e13 })
            .collect();
        let mut b = GraphBuilder::new("huge-bias", 0);
        let x = b.input("x", vec![1, k]).expect("input");
        let grid = |s, z| QParam::new(s, z, false).expect("grid");
        let x = b
            .push("qin", Op::Quantize(grid(0.01, 0)), vec![x], "")
            .expect("q");
        let dense = Op::Dense(Dense {
            weight: Tensor::new(vec![rows, k], weight).expect("w"),
            bias: Some(Tensor::new(vec![rows], bias).expect("b")),
            weight_scales: Some(vec![s_w]),
        });
        let y = b.push("fc", dense, vec![x], "").expect("dense");
        let y = b
            .push("qout", Op::Quantize(grid(0.05, 100)), vec![y], "")
            .expect("q");
        let g = b.finish(vec![y]).expect("graph");
        let m =
            IntModel::new(&g, QintConfig::default(), &Calibration::given("given")).expect("lowers");
        let Some(IntOp::Linear(l)) = m.op(1) else {
            panic!("a linear layer")
        };
        assert!(l.b.iter().all(|v| v.unsigned_abs() > 1 << 59), "{:?}", l.b);
        for seed in 0..4 {
            let x = extreme_input(&m, seed, 3);
            let got = assert_oracle(&m, &x);
            // The saturation is what the bias drives every output to.
            assert!(got.data().iter().all(|&v| v == -100 || v == 155), "{got:?}");
        }
    }
}

/// A run of element-wise ops with constants (the input normalisation Sub→Mul, an unfolded batch
/// normalisation Mul→Add) lowers to one requantization at its last node, `x·m + a` to the last
/// value's grid, and every earlier node of the run moves its input on unchanged.
#[test]
fn affine_chains_requantize_once() {
    let g = residual_net(5, 6, 6);
    let m = model(&g, QintConfig::default(), 5);
    let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.kind()).collect();
    let chains: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| {
            kinds
                .get(i..i + 2)
                .is_some_and(|k| k == ["Sub", "Mul"] || k == ["Mul", "Add"])
        })
        .collect();
    assert_eq!(
        chains.len(),
        2,
        "the normalisation and the batch norm: {kinds:?}"
    );
    for i in chains {
        assert!(matches!(m.op(i), Some(IntOp::Pass)), "node {i} passes");
        let Some(IntOp::MulConst { mult, add, .. }) = m.op(i + 1) else {
            panic!("node {} requantizes the chain", i + 1)
        };
        assert_eq!(add.len(), mult.len(), "one added constant per multiplier");
        assert!(
            add.iter().any(|&a| a != 0),
            "the chain's constants are kept"
        );
    }
}

/// An added constant far past the output range saturates every output, exactly as the oracle
/// says, and is stored clamped to `|m|·max|x| + 2^n·(max(|lo|, |hi|) + 1)`, so the pre-shift sum
/// has a bound that no constant's value moves (the `gc` worker holds the constants zeroed).
#[test]
fn huge_added_constants_saturate_and_stay_bounded() {
    use tessera_model::ir::BinOp;
    let net = |add: [f32; 2]| {
        let mut b = GraphBuilder::new("affine", 3);
        let x = b.input("x", vec![1, 2, 3, 3]).expect("input");
        let y = b.conv(x, 2, 1, 1, 0).expect("conv");
        let c = |v: Vec<f32>| Tensor::new(vec![1, 2, 1, 1], v).expect("c");
        let y = b
            .constant_op(y, BinOp::Mul, c(vec![0.9, 1.1]))
            .expect("mul");
        let y = b.constant_op(y, BinOp::Add, c(add.to_vec())).expect("add");
        let y = b.relu(y).expect("relu");
        b.finish(vec![y]).expect("graph")
    };
    // Scales calibrated on the model with small constants: the huge ones then lie far outside
    // the output grid, as a constant the calibration did not see would.
    let small = net([0.1, -0.1]);
    let cal = Calibration::from_inputs(
        &small,
        &default_calibration_inputs(&small, 0.0, 1.0, 2, 1).expect("inputs"),
        "generated",
    )
    .expect("calibration");
    for sign in [1f32, -1.0] {
        let g = net([sign * 1e30, sign * 3e20]);
        let m = IntModel::new(&g, QintConfig::default(), &cal).expect("lowers");
        let conv = m.value(g.nodes[0].output).expect("conv value");
        let Some(IntOp::MulConst {
            mult,
            add,
            shift,
            lo,
            hi,
        }) = m.op(2)
        else {
            panic!("the chain requantizes at its Add")
        };
        for (&mj, &aj) in mult.iter().zip(add) {
            let xmax = i128::from(conv.lo.abs().max(conv.hi.abs()));
            let cap = i128::from(mj.abs()) * xmax
                + (1i128 << shift) * i128::from(lo.abs().max(hi.abs()) + 1);
            assert!(i128::from(aj.abs()) <= cap, "{aj} within {cap}");
            assert_eq!(aj.signum() as f32, sign, "the constant keeps its sign");
        }
        let x =
            Tensor::new(vec![1, 2, 3, 3], (0..18).map(|i| i as f32 / 18.0).collect()).expect("x");
        let q = m.quantize_input(&x).expect("q");
        let got = assert_oracle(&m, &q);
        let top = if sign > 0.0 { *hi } else { 0 };
        assert!(got.data().iter().all(|&v| v == top), "saturated at {top}");
    }
}
