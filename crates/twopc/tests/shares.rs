//! One linear layer through the offline HE phase and the online step: the two shares add up to
//! the integer engine's accumulator `W·x + b` (mod 2^ℓ, read signed), on random convs and a
//! dense layer; the client's share carries no trace of the weights in its noise is the HE
//! layer's test (`tessera-he`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tessera_he::layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
use tessera_he::linear::PlainWeights;
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::{HeParams, KeyPair};
use tessera_twopc::offline::{client_mask, client_share, server_answer};
use tessera_twopc::share;

/// The server's online linear layer: `(y, b, ℓ) ↦ W·y + b mod 2^ℓ`.
type Online<'a> = &'a dyn Fn(&[u64], &[i64], usize) -> Vec<u64>;

/// One layer: its layout at a ring degree, its weights and bias, the input and the expected
/// accumulators.
struct Case<'a> {
    plan_of: &'a dyn Fn(usize) -> LinearPlan,
    w: &'a [i64],
    b: &'a [i64],
    x: &'a [i64],
    online: Online<'a>,
    want: &'a [i64],
}

fn run(case: Case<'_>, seed: u64) {
    let Case {
        plan_of,
        w,
        b,
        x,
        online,
        want,
    } = case;
    let n_in = x.len();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let probe = plan_of(4096);
    let acc_bound = want
        .iter()
        .map(|v| v.unsigned_abs() as u128)
        .max()
        .unwrap_or(1)
        * 2
        + 1;
    let nd = LayerNeed {
        name: "l".into(),
        acc_bound,
        x_bound: 1 << 23,
        w_bound: 127,
        terms: probe.terms(),
        products: probe.max_products(),
        product: Product::Plain,
    };
    let params = HeParams::choose(
        &[nd],
        ParamOptions {
            flood: true,
            ..ParamOptions::default()
        },
    )
    .expect("params");
    let bits = params.plain_bits as usize;
    let plan = plan_of(params.degree());
    let keys = KeyPair::generate(&params, &mut rng);
    // Offline.
    let (r, enc_r) = client_mask(&keys.public, &plan, n_in, &mut rng).expect("mask");
    let zero_bias = vec![0i64; b.len()];
    let weights = PlainWeights::new(&params, plan.clone(), w, &zero_bias).expect("weights");
    let (s, answer) = server_answer(
        &params,
        &keys.public,
        &weights,
        want.len(),
        &enc_r,
        &mut rng,
    )
    .expect("answer");
    let c = client_share(&keys.secret, &plan, &answer).expect("share");
    // Online: the server computes on y = x − r and adds s.
    let y: Vec<u64> = x
        .iter()
        .zip(&r)
        .map(|(&xi, &ri)| share::reduce(share::residue(xi, bits).wrapping_sub(ri), bits))
        .collect();
    let a: Vec<u64> = online(&y, b, bits)
        .iter()
        .zip(&s)
        .map(|(&v, &si)| share::reduce(v.wrapping_add(si), bits))
        .collect();
    let got: Vec<i64> = a
        .iter()
        .zip(&c)
        .map(|(&ai, &ci)| share::signed(ai.wrapping_add(ci), bits))
        .collect();
    assert_eq!(got, want, "{}", params.describe());
    let _ = rng.random::<u8>();
}

fn conv_oracle(s: &ConvShape, x: &[i64], w: &[i64], b: &[i64]) -> Vec<i64> {
    let y: Vec<u64> = x.iter().map(|&v| v as u64).collect();
    share::conv(s, &y, w, b, 64)
        .iter()
        .map(|&v| v as i64)
        .collect()
}

#[test]
fn conv_and_dense_shares_add_up_to_the_accumulator() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for (k, s) in [
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
        ConvShape {
            c_in: 4,
            h: 9,
            w: 9,
            c_out: 4,
            k: [3, 3],
            stride: [2, 2],
            pads: [1; 4],
            dil: [1, 1],
            groups: 2,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let x: Vec<i64> = (0..s.c_in * s.h * s.w)
            .map(|_| rng.random_range(0..=255))
            .collect();
        let w: Vec<i64> = (0..s.c_out * (s.c_in / s.groups) * 9usize.max(s.k[0] * s.k[1]))
            .take(s.c_out * (s.c_in / s.groups) * s.k[0] * s.k[1])
            .map(|_| rng.random_range(-127..=127))
            .collect();
        let b: Vec<i64> = (0..s.c_out)
            .map(|_| rng.random_range(-5000..=5000))
            .collect();
        let want = conv_oracle(&s, &x, &w, &b);
        let plan_of = |n| LinearPlan::Conv(ConvPlan::new(s, n).expect("plan"));
        let online = |y: &[u64], b: &[i64], bits| share::conv(&s, y, &w, b, bits);
        let case = Case {
            plan_of: &plan_of,
            w: &w,
            b: &b,
            x: &x,
            online: &online,
            want: &want,
        };
        run(case, k as u64);
    }
    let (kk, m) = (256, 10);
    let x: Vec<i64> = (0..kk).map(|_| rng.random_range(0..=255)).collect();
    let w: Vec<i64> = (0..kk * m).map(|_| rng.random_range(-127..=127)).collect();
    let b: Vec<i64> = (0..m).map(|_| rng.random_range(-5000..=5000)).collect();
    let y: Vec<u64> = x.iter().map(|&v| v as u64).collect();
    let want: Vec<i64> = share::dense(kk, m, &y, &w, &b, 64)
        .iter()
        .map(|&v| v as i64)
        .collect();
    let plan_of = |n| LinearPlan::Dense(DensePlan::new(kk, m, n).expect("plan"));
    let online = |y: &[u64], b: &[i64], bits| share::dense(kk, m, y, &w, b, bits);
    let case = Case {
        plan_of: &plan_of,
        w: &w,
        b: &b,
        x: &x,
        online: &online,
        want: &want,
    };
    run(case, 9);
}

/// Masks and shares are uniform residues mod 2^ℓ; the residue 2^(ℓ−1) (read as a signed ℓ-bit
/// integer, −2^(ℓ−1)) must reach the HE encoders as +2^(ℓ−1), the one representative of their
/// range (−t/2, t/2]. A mask made only of that residue, and of the others at the range's ends,
/// goes through the offline phase and the shares still add up to W·r.
#[test]
fn masks_at_the_edge_of_the_ring_go_through_the_offline_phase() {
    use tessera_twopc::offline::encrypt_mask;
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let n_in = 16usize;
    let w: Vec<i64> = (0..4 * n_in).map(|i| (i as i64 % 7) - 3).collect();
    let nd = LayerNeed {
        name: "edge".into(),
        acc_bound: 1 << 20,
        x_bound: 1 << 23,
        w_bound: 127,
        terms: n_in,
        products: 4 * n_in,
        product: Product::Plain,
    };
    let params = HeParams::choose(
        &[nd],
        ParamOptions {
            flood: true,
            ..ParamOptions::default()
        },
    )
    .expect("params");
    let bits = params.plain_bits as usize;
    let plan = LinearPlan::Dense(DensePlan::new(n_in, 4, params.degree()).expect("plan"));
    let keys = KeyPair::generate(&params, &mut rng);
    let half = 1u64 << (bits - 1);
    let t = 1u64 << bits;
    let r: Vec<u64> = (0..n_in)
        .map(|i| match i % 3 {
            0 => half,
            1 => half + 1,
            _ => t - 1,
        })
        .collect();
    let enc_r = encrypt_mask(&keys.public, &plan, &r, &mut rng).expect("the edge residue encrypts");
    let weights = PlainWeights::new(&params, plan.clone(), &w, &[0; 4]).expect("weights");
    let (s, answer) =
        server_answer(&params, &keys.public, &weights, 4, &enc_r, &mut rng).expect("answer");
    let c = client_share(&keys.secret, &plan, &answer).expect("share");
    for o in 0..4 {
        let wr = (0..n_in).fold(0u64, |acc, i| {
            acc.wrapping_add((w[o * n_in + i] as u64).wrapping_mul(r[i]))
        });
        assert_eq!(
            share::reduce(c[o].wrapping_add(s[o]), bits),
            share::reduce(wr, bits),
            "output {o}"
        );
    }
}
