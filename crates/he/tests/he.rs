//! The HE layer against an independent i128 oracle and the integer engine: conv (stride,
//! padding, dilation, groups), dense, pooling sums and residual adds on ciphertexts, in both
//! product forms; the noise rule against measured noise; circuit privacy; the wire format.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_he::layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
use tessera_he::linear::{
    EncryptedWeights, PlainWeights, add_scaled, decrypt_output, encrypt_input,
};
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::{HeError, HeParams, KeyPair};

/// Naive conv accumulators `[c_out, oh, ow]` in i128.
fn conv_oracle(s: &ConvShape, x: &[i64], w: &[i64], b: &[i64]) -> Vec<i128> {
    let (oh, ow) = s.out_hw();
    let cg = s.c_in / s.groups;
    let og = s.c_out / s.groups;
    let mut out = Vec::new();
    for o in 0..s.c_out {
        let g = o / og;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = i128::from(b[o]);
                for ci in 0..cg {
                    let c = g * cg + ci;
                    for l in 0..s.k[0] {
                        for m in 0..s.k[1] {
                            let iy =
                                (oy * s.stride[0] + l * s.dil[0]) as isize - s.pads[0] as isize;
                            let ix =
                                (ox * s.stride[1] + m * s.dil[1]) as isize - s.pads[1] as isize;
                            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                continue;
                            }
                            let xv = x[(c * s.h + iy as usize) * s.w + ix as usize];
                            let wv = w[((o * cg + ci) * s.k[0] + l) * s.k[1] + m];
                            acc += i128::from(xv) * i128::from(wv);
                        }
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

fn dense_oracle(k: usize, m: usize, x: &[i64], w: &[i64], b: &[i64]) -> Vec<i128> {
    (0..m)
        .map(|r| {
            i128::from(b[r])
                + (0..k)
                    .map(|j| i128::from(w[r * k + j]) * i128::from(x[j]))
                    .sum::<i128>()
        })
        .collect()
}

fn need(
    name: &str,
    plan: &LinearPlan,
    xb: i64,
    wb: i64,
    bb: i64,
    fan_in: usize,
    product: Product,
) -> LayerNeed {
    LayerNeed {
        name: name.into(),
        acc_bound: fan_in as u128 * xb as u128 * wb as u128 + bb as u128,
        x_bound: xb as u128,
        w_bound: wb as u128,
        terms: plan.terms(),
        products: plan.max_products(),
        product,
    }
}

fn rand_vec(rng: &mut ChaCha20Rng, n: usize, bound: i64) -> Vec<i64> {
    (0..n)
        .map(|i| match i % 7 {
            0 => bound,
            1 => -bound,
            _ => rng.random_range(-bound..=bound),
        })
        .collect()
}

/// Run one layer both ways and compare with the oracle; returns the measured noise bits of the
/// ct×pt and ct×ct results next to the rule's estimates.
fn check_layer(
    plan_of: impl Fn(usize) -> LinearPlan,
    fan_in: usize,
    oracle: impl Fn(&[i64], &[i64], &[i64]) -> Vec<i128>,
    sizes: (usize, usize, usize),
    seed: u64,
) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let (nx, nw, nb) = sizes;
    let (xb, wb, bb) = (255i64, 127i64, 1000i64);
    let x = rand_vec(&mut rng, nx, xb);
    let w = rand_vec(&mut rng, nw, wb);
    let b = rand_vec(&mut rng, nb, bb);
    let want = oracle(&x, &w, &b);
    for product in [Product::Plain, Product::Encrypted] {
        let probe = plan_of(4096);
        let nd = need("layer", &probe, xb, wb, bb, fan_in, product);
        let params =
            HeParams::choose(std::slice::from_ref(&nd), ParamOptions::default()).expect("params");
        let plan = plan_of(params.degree());
        let keys = KeyPair::generate(&params, &mut rng);
        let cx = encrypt_input(&keys.public, &plan, &x, &mut rng).expect("encrypt");
        let outs = match product {
            Product::Plain => PlainWeights::new(&params, plan.clone(), &w, &b)
                .expect("weights")
                .eval(&params, &cx),
            Product::Encrypted => EncryptedWeights::encrypt(&keys.public, &plan, &w, &b, &mut rng)
                .expect("encrypt weights")
                .prepare(&params, plan.clone())
                .expect("prepare")
                .eval(&params, &cx),
        }
        .expect("eval");
        let got = decrypt_output(&keys.secret, &plan, &outs, nd.acc_bound).expect("decrypt");
        let got: Vec<i128> = got.iter().map(|&v| i128::from(v)).collect();
        assert_eq!(got, want, "{product:?} under {}", params.describe());
        let measured = outs
            .iter()
            .map(|c| keys.secret.noise_bits(c).expect("noise"))
            .max()
            .unwrap_or(0);
        let est = tessera_he::params::layer_noise_bits(&nd, params.degree(), params.plain_bits);
        eprintln!(
            "{product:?} {}: measured 2^{measured}, rule 2^{est}",
            params.describe()
        );
        // Switched down to the first prime, as results leave the evaluator: still exact.
        let mut low = outs.clone();
        tessera_he::linear::switch_down(&params, &mut low).expect("switch");
        let switched = low
            .iter()
            .map(|c| keys.secret.noise_bits(c).expect("noise"))
            .max()
            .unwrap_or(0);
        let bound = tessera_he::params::switched_noise_bits(params.degree());
        assert!(
            switched as u32 <= bound,
            "{product:?}: switched noise 2^{switched} over the rule's 2^{bound}"
        );
        let got_low = decrypt_output(&keys.secret, &plan, &low, nd.acc_bound).expect("switched");
        let got_low: Vec<i128> = got_low.iter().map(|&v| i128::from(v)).collect();
        assert_eq!(got_low, want, "{product:?} switched down");
        assert!(
            measured as u32 <= est,
            "{product:?}: measured noise 2^{measured} over the rule's 2^{est}"
        );
    }
}

fn conv_case(s: ConvShape, seed: u64) {
    let cg = s.c_in / s.groups;
    let sizes = (s.c_in * s.h * s.w, s.c_out * cg * s.k[0] * s.k[1], s.c_out);
    check_layer(
        |n| LinearPlan::Conv(ConvPlan::new(s, n).expect("plan")),
        cg * s.k[0] * s.k[1],
        |x, w, b| conv_oracle(&s, x, w, b),
        sizes,
        seed,
    );
}

#[test]
fn mnist8_shaped_convs_and_dense_are_exact() {
    // conv1 of mnist-8 (1→8, 5×5, pad 2 on 28×28), conv2 (8→16 on 14×14), the 256→10 head.
    conv_case(
        ConvShape {
            c_in: 1,
            h: 28,
            w: 28,
            c_out: 8,
            k: [5, 5],
            stride: [1, 1],
            pads: [2; 4],
            dil: [1, 1],
            groups: 1,
        },
        1,
    );
    conv_case(
        ConvShape {
            c_in: 8,
            h: 14,
            w: 14,
            c_out: 16,
            k: [5, 5],
            stride: [1, 1],
            pads: [2; 4],
            dil: [1, 1],
            groups: 1,
        },
        2,
    );
    check_layer(
        |n| LinearPlan::Dense(DensePlan::new(256, 10, n).expect("plan")),
        256,
        |x, w, b| dense_oracle(256, 10, x, w, b),
        (256, 2560, 10),
        3,
    );
}

#[test]
fn tiled_and_chunked_layouts_are_exact() {
    // Too big for one polynomial: channel blocks, row tiles, input chunks and row blocks.
    conv_case(
        ConvShape {
            c_in: 3,
            h: 70,
            w: 70,
            c_out: 2,
            k: [3, 3],
            stride: [2, 2],
            pads: [1; 4],
            dil: [1, 1],
            groups: 1,
        },
        4,
    );
    conv_case(
        ConvShape {
            c_in: 20,
            h: 16,
            w: 16,
            c_out: 3,
            k: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
            dil: [1, 1],
            groups: 1,
        },
        5,
    );
    check_layer(
        |n| LinearPlan::Dense(DensePlan::new(5000, 7, n).expect("plan")),
        5000,
        |x, w, b| dense_oracle(5000, 7, x, w, b),
        (5000, 35000, 7),
        6,
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_convs_are_exact(
        seed in any::<u64>(),
        groups in 1usize..=3,
        cpg in 1usize..=3,
        opg in 1usize..=2,
        hw in 3usize..=9,
        k in 1usize..=3,
        stride in 1usize..=2,
        pad in 0usize..=2,
        dil in 1usize..=2,
    ) {
        let s = ConvShape {
            c_in: groups * cpg, h: hw, w: hw + 1, c_out: groups * opg, k: [k, k.max(2) - 1],
            stride: [stride, 1], pads: [pad, pad.min(1), pad, 0], dil: [dil, 1], groups,
        };
        let (kh, kw) = s.extent();
        let (hp, wp) = s.padded();
        prop_assume!(kh <= hp && kw <= wp);
        conv_case(s, seed);
    }

    #[test]
    fn random_dense_layers_are_exact(seed in any::<u64>(), k in 1usize..=300, m in 1usize..=12) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let nw = k * m;
        let _ = rng.random::<u8>();
        check_layer(
            |n| LinearPlan::Dense(DensePlan::new(k, m, n).expect("plan")),
            k,
            |x, w, b| dense_oracle(k, m, x, w, b),
            (k, nw, m),
            seed,
        );
    }
}

#[test]
fn pooling_sums_and_residual_adds_are_exact() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    // 3×3 average pool, stride 2, pad 1, over 4 channels: a depthwise conv with unit weights.
    let s = ConvShape {
        c_in: 4,
        h: 9,
        w: 9,
        c_out: 4,
        k: [3, 3],
        stride: [2, 2],
        pads: [1; 4],
        dil: [1, 1],
        groups: 4,
    };
    let x = rand_vec(&mut rng, 4 * 81, 255);
    let nd = LayerNeed {
        name: "pool".into(),
        acc_bound: 9 * 255 * 40,
        x_bound: 255,
        w_bound: 1,
        terms: 9,
        products: 1,
        product: Product::Plain,
    };
    let params = HeParams::choose(&[nd], ParamOptions::default()).expect("params");
    let plan = ConvPlan::new(s, params.degree()).expect("plan");
    let ones = plan.unit_weights();
    let plan = LinearPlan::Conv(plan);
    let keys = KeyPair::generate(&params, &mut rng);
    let cx = encrypt_input(&keys.public, &plan, &x, &mut rng).expect("encrypt");
    let w = PlainWeights::new(&params, plan.clone(), &ones, &[0; 4]).expect("weights");
    let sums = w.eval(&params, &cx).expect("eval");
    let got = decrypt_output(&keys.secret, &plan, &sums, 9 * 255).expect("decrypt");
    let want = conv_oracle(&s, &x, &ones, &[0; 4]);
    assert_eq!(got.iter().map(|&v| i128::from(v)).collect::<Vec<_>>(), want);

    // Residual: 3·sums − 5·sums' on the same layout.
    let x2 = rand_vec(&mut rng, 4 * 81, 255);
    let sums2 = w
        .eval(
            &params,
            &encrypt_input(&keys.public, &plan, &x2, &mut rng).expect("enc"),
        )
        .expect("eval");
    let mixed = add_scaled(&params, &sums, 3, &sums2, -5).expect("add");
    let got = decrypt_output(&keys.secret, &plan, &mixed, 8 * 9 * 255).expect("decrypt");
    let want2 = conv_oracle(&s, &x2, &ones, &[0; 4]);
    let want: Vec<i128> = want
        .iter()
        .zip(&want2)
        .map(|(a, b)| 3 * a - 5 * b)
        .collect();
    assert_eq!(got.iter().map(|&v| i128::from(v)).collect::<Vec<_>>(), want);
}

#[test]
fn a_value_outside_the_proven_bound_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let plan_d = |n| LinearPlan::Dense(DensePlan::new(4, 1, n).expect("plan"));
    let nd = LayerNeed {
        name: "d".into(),
        acc_bound: 4 * 255 * 127,
        x_bound: 255,
        w_bound: 127,
        terms: 4,
        products: 1,
        product: Product::Plain,
    };
    let params = HeParams::choose(&[nd], ParamOptions::default()).expect("params");
    let plan = plan_d(params.degree());
    let keys = KeyPair::generate(&params, &mut rng);
    let cx = encrypt_input(&keys.public, &plan, &[255, 255, 255, 255], &mut rng).expect("enc");
    let w = PlainWeights::new(&params, plan.clone(), &[127, 127, 127, 127], &[0]).expect("w");
    let out = w.eval(&params, &cx).expect("eval");
    // Decoding with a bound one below the true value refuses it: the check, not the arithmetic.
    let e = decrypt_output(&keys.secret, &plan, &out, 4 * 255 * 127 - 1).expect_err("out of range");
    assert!(
        matches!(e, HeError::OutOfRange { value: 129540, .. }),
        "{e}"
    );
    assert_eq!(
        decrypt_output(&keys.secret, &plan, &out, 4 * 255 * 127).expect("in range"),
        vec![129540]
    );
}

/// Mean and standard deviation of |noise| over a set of ciphertexts.
fn noise_stats(keys: &KeyPair, cts: &[tessera_he::Ct]) -> (f64, f64, f64) {
    let v: Vec<f64> = cts
        .iter()
        .flat_map(|c| keys.secret.noise_coefficients(c).expect("noise"))
        .collect();
    let n = v.len() as f64;
    let mean_abs = v.iter().map(|x| x.abs()).sum::<f64>() / n;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
    (mean_abs, sd, max)
}

#[test]
fn sanitized_results_carry_no_trace_of_the_weights_in_their_noise() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let (k, m) = (256, 10);
    let plan_of = |n| LinearPlan::Dense(DensePlan::new(k, m, n).expect("plan"));
    let nd = need("head", &plan_of(4096), 255, 127, 1000, k, Product::Plain);
    let opts = ParamOptions {
        flood: true,
        ..ParamOptions::default()
    };
    let params = HeParams::choose(std::slice::from_ref(&nd), opts).expect("params");
    let flood = params.flood_bits.expect("flooding room");
    let plan = plan_of(params.degree());
    let keys = KeyPair::generate(&params, &mut rng);
    let x = rand_vec(&mut rng, k, 255);
    let cx = encrypt_input(&keys.public, &plan, &x, &mut rng).expect("enc");
    // Two models: the largest weights allowed, and weights of ±1 — different noise growth.
    let heavy = rand_vec(&mut rng, k * m, 127)
        .iter()
        .map(|&w| if w >= 0 { 127i64 } else { -127 })
        .collect::<Vec<i64>>();
    let light = heavy.iter().map(|&w| w.signum()).collect::<Vec<_>>();
    let run = |w: &[i64], rng: &mut ChaCha20Rng| {
        let raw = PlainWeights::new(&params, plan.clone(), w, &[0; 10])
            .expect("w")
            .eval(&params, &cx)
            .expect("eval");
        let clean = raw
            .iter()
            .map(|c| {
                tessera_he::privacy::sanitize(&params, &keys.public, c, rng).expect("sanitize")
            })
            .collect::<Vec<_>>();
        // Still the exact result after flooding and switching down.
        let want: Vec<i64> = dense_oracle(k, m, &x, w, &[0; 10])
            .iter()
            .map(|&v| v as i64)
            .collect();
        assert_eq!(
            decrypt_output(&keys.secret, &plan, &clean, nd.acc_bound).expect("decrypt"),
            want
        );
        (raw, clean)
    };
    let (raw_h, clean_h) = run(&heavy, &mut rng);
    let (raw_l, clean_l) = run(&light, &mut rng);
    // Unprotected, the noise tells the two models apart by far.
    let (rh, _, _) = noise_stats(&keys, &raw_h);
    let (rl, _, _) = noise_stats(&keys, &raw_l);
    assert!(
        rh > 16.0 * rl,
        "raw noise {rh} vs {rl}: the weights should show without flooding"
    );
    // Sanitized, both are the flooding distribution: uniform on ±2^F scaled by q₀/q.
    let q0: usize = params.moduli_bits[0];
    let scale = 2f64.powi(flood as i32) / 2f64.powi((params.log_q() - q0) as i32);
    let (ah, sh, mh) = noise_stats(&keys, &clean_h);
    let (al, sl, ml) = noise_stats(&keys, &clean_l);
    for (a, s, mx) in [(ah, sh, mh), (al, sl, ml)] {
        assert!(
            (a / (scale / 2.0) - 1.0).abs() < 0.05,
            "mean |noise| {a} vs the flood's {}",
            scale / 2.0
        );
        assert!(
            (s / (scale / 3f64.sqrt()) - 1.0).abs() < 0.05,
            "sd {s} vs the flood's {}",
            scale / 3f64.sqrt()
        );
        assert!(
            mx <= scale * 1.01 + 2f64.powi(20),
            "max |noise| {mx} beyond the flood bound {scale}"
        );
    }
    assert!(
        (ah / al - 1.0).abs() < 0.03 && (sh / sl - 1.0).abs() < 0.03,
        "heavy {ah}/{sh} vs light {al}/{sl}"
    );
}

#[test]
fn a_layer_beyond_every_parameter_set_is_named() {
    let huge = LayerNeed {
        name: "conv-huge".into(),
        acc_bound: 1 << 70,
        x_bound: 255,
        w_bound: 127,
        terms: 9,
        products: 1,
        product: Product::Encrypted,
    };
    let small = LayerNeed {
        name: "conv-small".into(),
        acc_bound: 1000,
        ..huge.clone()
    };
    let e = HeParams::choose(&[small.clone(), huge], ParamOptions::default()).expect_err("no fit");
    match e {
        HeError::DoesNotFit { layer, .. } => assert_eq!(layer, "conv-huge"),
        e => panic!("{e}"),
    }
    // Noise beyond N = 32768 (a product sum no modulus at 128-bit security holds).
    let deep = LayerNeed {
        name: "dense-deep".into(),
        acc_bound: 1 << 59,
        products: 1 << 40,
        ..small.clone()
    };
    let e = HeParams::choose(&[small, deep], ParamOptions::default()).expect_err("no fit");
    assert!(
        matches!(&e, HeError::DoesNotFit { layer, .. } if layer == "dense-deep"),
        "{e}"
    );
}
