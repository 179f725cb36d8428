//! Coefficient encoding (no rotations) against SIMD packing with rotations, on mnist-8's first
//! conv (1→8, 5×5, pad 2, 28×28) and its dense head (256→10), ciphertext × plaintext, at the
//! same ring degree; plus the coefficient layers' ciphertext × ciphertext time.
//!
//! `cargo bench -p tessera-he --bench coeff_vs_simd` (release). Prints medians of 9 runs.

use fhe::bfv::{
    BfvParametersBuilder, Ciphertext, Encoding, EvaluationKeyBuilder, Plaintext, PublicKey,
    SecretKey,
};
use fhe_math::zq::primes::generate_prime;
use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::time::Instant;
use tessera_he::layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
use tessera_he::linear::{EncryptedWeights, PlainWeights, decrypt_output, encrypt_input};
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::{HeParams, KeyPair};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut out = f();
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        out = f();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(ts), out)
}

const REPS: usize = 9;

/// The coefficient path: (ct×pt ms, ct×ct ms, N, log q) with the rule's parameters.
fn coefficient(
    name: &str,
    plan_of: &dyn Fn(usize) -> LinearPlan,
    x: &[i64],
    w: &[i64],
    b: &[i64],
    acc: u128,
) -> [(f64, usize, usize); 2] {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut res = [(0.0, 0, 0); 2];
    for (i, product) in [Product::Plain, Product::Encrypted].into_iter().enumerate() {
        let probe = plan_of(4096);
        let nd = LayerNeed {
            name: name.into(),
            acc_bound: acc,
            x_bound: 255,
            w_bound: 127,
            terms: probe.terms(),
            products: probe.max_products(),
            product,
        };
        let params = HeParams::choose(&[nd], ParamOptions::default()).expect("params");
        let plan = plan_of(params.degree());
        let keys = KeyPair::generate(&params, &mut rng);
        let cx = encrypt_input(&keys.public, &plan, x, &mut rng).expect("enc");
        let ms = match product {
            Product::Plain => {
                let pw = PlainWeights::new(&params, plan.clone(), w, b).expect("w");
                let (ms, out) = time(REPS, || pw.eval(&params, &cx).expect("eval"));
                decrypt_output(&keys.secret, &plan, &out, acc).expect("exact");
                ms
            }
            Product::Encrypted => {
                let pw = EncryptedWeights::encrypt(&keys.public, &plan, w, b, &mut rng)
                    .expect("enc w")
                    .prepare(&params, plan.clone())
                    .expect("prep");
                let (ms, out) = time(REPS, || pw.eval(&params, &cx).expect("eval"));
                decrypt_output(&keys.secret, &plan, &out, acc).expect("exact");
                ms
            }
        };
        res[i] = (ms, params.degree(), params.log_q());
    }
    res
}

struct Simd {
    par: std::sync::Arc<fhe::bfv::BfvParameters>,
    sk: SecretKey,
    pk: PublicKey,
    t: u64,
}

fn simd(plain_bits: usize) -> Simd {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let n = 4096;
    let t = generate_prime(plain_bits, 2 * n as u64, 1 << plain_bits).expect("prime t");
    let par = BfvParametersBuilder::new()
        .set_degree(n)
        .set_plaintext_modulus(t)
        .set_moduli_sizes(&[36, 36, 37])
        .build_arc()
        .expect("params");
    let sk = SecretKey::random(&par, &mut rng);
    let pk = PublicKey::new(&sk, &mut rng);
    Simd { par, sk, pk, t }
}

impl Simd {
    fn enc(&self, v: &[i64]) -> Ciphertext {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let r: Vec<u64> = v
            .iter()
            .map(|&x| x.rem_euclid(self.t as i64) as u64)
            .collect();
        let pt = Plaintext::try_encode(r.as_slice(), Encoding::simd(), &self.par).expect("encode");
        self.pk.try_encrypt(&pt, &mut rng).expect("enc")
    }
    fn pt(&self, v: &[i64]) -> Plaintext {
        let r: Vec<u64> = v
            .iter()
            .map(|&x| x.rem_euclid(self.t as i64) as u64)
            .collect();
        Plaintext::try_encode(r.as_slice(), Encoding::simd(), &self.par).expect("encode")
    }
    fn dec(&self, ct: &Ciphertext) -> Vec<i64> {
        let pt = self.sk.try_decrypt(ct).expect("dec");
        let t = self.t as i64;
        Vec::<u64>::try_decode(&pt, Encoding::simd())
            .expect("decode")
            .iter()
            .map(|&v| {
                if v as i64 > t / 2 {
                    v as i64 - t
                } else {
                    v as i64
                }
            })
            .collect()
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: benchmarks are not
    // tests, so only `cargo bench` (which passes `--bench`) measures anything.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let n = 4096;
    let row = n / 2;
    println!("| layer | encoding | ct×pt ms | rotations | ct×ct ms | N | log q |");
    println!("|---|---|---|---|---|---|---|");

    // --- conv1: 1→8, 5×5, pad 2, 28×28.
    let s = ConvShape {
        c_in: 1,
        h: 28,
        w: 28,
        c_out: 8,
        k: [5, 5],
        stride: [1, 1],
        pads: [2; 4],
        dil: [1, 1],
        groups: 1,
    };
    let x: Vec<i64> = (0..784).map(|_| rng.random_range(0..=255)).collect();
    let w: Vec<i64> = (0..200).map(|_| rng.random_range(-127..=127)).collect();
    let b: Vec<i64> = (0..8).map(|_| rng.random_range(-1000..=1000)).collect();
    let acc = 25 * 255 * 127 + 1000;
    let [(pt_ms, n1, q1), (ct_ms, _, _)] = coefficient(
        "conv1",
        &|n| LinearPlan::Conv(ConvPlan::new(s, n).expect("plan")),
        &x,
        &w,
        &b,
        acc,
    );
    println!("| mnist-8 conv1 1→8 5×5 | coefficient | {pt_ms:.2} | 0 | {ct_ms:.2} | {n1} | {q1} |");

    // SIMD: padded 32×32 image in each half-row; output o in row 0, o + 4 in row 1; one rotation
    // per kernel offset, then a slot-wise plaintext multiply per offset and output pair.
    let h = simd(24);
    let mut xs = vec![0i64; n];
    for half in 0..2 {
        for y in 0..28 {
            for xx in 0..28 {
                xs[half * row + (y + 2) * 32 + xx + 2] = x[y * 28 + xx];
            }
        }
    }
    let cx = h.enc(&xs);
    let mut ekb = EvaluationKeyBuilder::new(&h.sk).expect("ekb");
    let offsets: Vec<usize> = (0..25)
        .map(|i| (i / 5) * 32 + i % 5)
        .filter(|&o| o > 0)
        .collect();
    for &o in &offsets {
        ekb.enable_column_rotation(o).expect("rot");
    }
    let ek = ekb.build(&mut rng).expect("ek");
    let wpts: Vec<Vec<Plaintext>> = (0..4)
        .map(|o| {
            (0..25)
                .map(|i| {
                    let mut v = vec![0i64; n];
                    v[..row].fill(w[o * 25 + i]);
                    v[row..].fill(w[(o + 4) * 25 + i]);
                    h.pt(&v)
                })
                .collect()
        })
        .collect();
    let (simd_conv, outs) = time(REPS, || {
        let mut rots = vec![cx.clone()];
        for &o in &offsets {
            rots.push(ek.rotates_columns_by(&cx, o).expect("rotate"));
        }
        (0..4)
            .map(|o| {
                let mut acc = &rots[0] * &wpts[o][0];
                for i in 1..25 {
                    acc += &(&rots[i] * &wpts[o][i]);
                }
                acc
            })
            .collect::<Vec<_>>()
    });
    // Check one output position against the plain sum.
    let y0 = h.dec(&outs[0]);
    let want: i64 = (0..25).map(|i| w[i] * xs[(i / 5) * 32 + i % 5]).sum();
    assert_eq!(y0[0], want, "SIMD conv disagrees");
    println!(
        "| mnist-8 conv1 1→8 5×5 | SIMD + rotations | {simd_conv:.2} | {} | — | {n} | 109 |",
        offsets.len()
    );

    // --- dense head 256→10.
    let (k, m) = (256, 10);
    let x: Vec<i64> = (0..k).map(|_| rng.random_range(0..=255)).collect();
    let w: Vec<i64> = (0..k * m).map(|_| rng.random_range(-127..=127)).collect();
    let b: Vec<i64> = (0..m).map(|_| rng.random_range(-1000..=1000)).collect();
    let acc = 256 * 255 * 127 + 1000;
    let [(pt_ms, n2, q2), (ct_ms, _, _)] = coefficient(
        "dense",
        &|n| LinearPlan::Dense(DensePlan::new(k, m, n).expect("plan")),
        &x,
        &w,
        &b,
        acc,
    );
    println!("| mnist-8 dense 256→10 | coefficient | {pt_ms:.2} | 0 | {ct_ms:.2} | {n2} | {q2} |");

    // SIMD: x replicated per output row (8 rows in slot row 0, 2 in slot row 1), one multiply by
    // the flattened weights, then rotate-and-sum within each 256-slot block (8 rotations).
    let h = simd(26);
    let mut xs = vec![0i64; n];
    let mut ws = vec![0i64; n];
    for r in 0..m {
        let base = (r / 8) * row + (r % 8) * k;
        xs[base..base + k].copy_from_slice(&x);
        ws[base..base + k].copy_from_slice(&w[r * k..(r + 1) * k]);
    }
    let cx = h.enc(&xs);
    let wpt = h.pt(&ws);
    let mut ekb = EvaluationKeyBuilder::new(&h.sk).expect("ekb");
    let steps: Vec<usize> = (0..8).map(|i| 1usize << i).collect();
    for &s in &steps {
        ekb.enable_column_rotation(s).expect("rot");
    }
    let ek = ekb.build(&mut rng).expect("ek");
    let (simd_dense, out) = time(REPS, || {
        let mut acc = &cx * &wpt;
        for &s in &steps {
            let r = ek.rotates_columns_by(&acc, s).expect("rotate");
            acc += &r;
        }
        acc
    });
    let y = h.dec(&out);
    let want: i64 = (0..k).map(|j| w[j] * x[j]).sum();
    assert_eq!(y[0], want, "SIMD dense disagrees");
    println!(
        "| mnist-8 dense 256→10 | SIMD + rotations | {simd_dense:.2} | {} | — | {n} | 109 |",
        steps.len()
    );
}
