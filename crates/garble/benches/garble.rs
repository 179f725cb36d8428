//! Throughput of the garbling engine against the fixed-key AES ceiling (no criterion: medians of
//! a few repetitions, printed as tables). Run with `cargo bench -p tessera-garble`; name sections
//! to run only those: `cargo bench -p tessera-garble -- kernels gates gadgets matmul networks`.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use std::hint::black_box;
use std::time::Instant;
use tessera_garble::gadget::{
    Backend, LayerEvalBackend, LayerGarbleBackend, relu, relu_cost, rescale_pow2,
    rescale_pow2_cost, rescale_pow2_onestep, rescale_pow2_onestep_cost,
};
use tessera_garble::hash::output_blocks;
use tessera_garble::{CrtBasis, Evaluator, Garbler, LabelTensor, Modulus, Seed};

const REPS: usize = 5;

/// Median seconds of `REPS` timed runs of `run` (after one warm-up), each on a fresh `setup()`.
fn median_secs<S, R>(mut setup: impl FnMut() -> S, mut run: impl FnMut(S) -> R) -> f64 {
    black_box(run(setup()));
    let mut t: Vec<f64> = (0..REPS)
        .map(|_| {
            let s = setup();
            let start = Instant::now();
            black_box(run(s));
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[REPS / 2]
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

/// Fixed-key AES blocks per second on the current thread, in batches of `batch` blocks.
fn aes_rate(batch: usize) -> f64 {
    let aes = Aes128::new(&Array::from([7u8; 16]));
    let total = 1 << 23;
    let mut blocks = vec![Array::from([1u8; 16]); batch];
    let secs = median_secs(
        || (),
        |()| {
            for _ in 0..total / batch {
                aes.encrypt_blocks(&mut blocks);
            }
        },
    );
    (total / batch * batch) as f64 / secs
}

fn pool(threads: usize) -> rayon::ThreadPool {
    ok(rayon::ThreadPoolBuilder::new().num_threads(threads).build())
}

fn m(q: u64) -> Modulus {
    ok(Modulus::new(q))
}

fn gates(ceiling: f64, threads: usize) {
    let (one, all) = (pool(1), pool(threads));
    for qv in [2u64, 3] {
        let q = m(qv);
        let b = (1 + output_blocks(q)) as f64;
        println!();
        println!(
            "projection gates p -> q = {qv}: {b} AES blocks per hash; garble hashes p labels per gate, evaluate 1"
        );
        println!("AES% = AES blocks/s the gates need / (1-core ceiling x threads used)");
        println!(
            "{:>3} {:>7} | {:>12} {:>6} | {:>12} {:>6} | {:>12} {:>6} | {:>12} {:>6}",
            "p",
            "gates",
            "garble 1t/s",
            "AES%",
            format!("garble {threads}t/s"),
            "AES%",
            "eval 1t/s",
            "AES%",
            format!("eval {threads}t/s"),
            "AES%"
        );
        for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23] {
            let pm = m(p);
            let count = 16_384usize;
            let mut g = Garbler::new(&Seed::from_bytes([p as u8; 32]));
            let a0 = ok(g.input_tensor(pm, &[count]));
            let phi: Vec<u8> = (0..p).map(|x| u8::from(x * 2 >= p)).collect();
            let values: Vec<i64> = (0..count as i64).map(|i| i % p as i64).collect();
            let x = ok(g.encode_tensor(&a0, &values));
            let mut row = vec![];
            for (pl, n) in [(&one, 1usize), (&all, threads)] {
                let secs =
                    pl.install(|| median_secs(|| (), |()| ok(g.projection_batch(&a0, q, &phi))));
                let rate = count as f64 / secs;
                row.push((rate, rate * b * p as f64 / (ceiling * n as f64)));
            }
            let (tables, _) = ok(g.projection_batch(&a0, q, &phi));
            let mut e = Evaluator::new(g.hash_key());
            for (pl, n) in [(&one, 1usize), (&all, threads)] {
                let secs =
                    pl.install(|| median_secs(|| (), |()| ok(e.projection_batch(&tables, &x))));
                let rate = count as f64 / secs;
                row.push((rate, rate * b / (ceiling * n as f64)));
            }
            print!("{p:>3} {count:>7}");
            for (rate, frac) in row {
                print!(" | {:>10.3}M {:>5.1}%", rate / 1e6, frac * 100.0);
            }
            println!();
        }
    }
}

type Gadget<B> = fn(&mut B, &[<B as Backend>::Wire]) -> Vec<<B as Backend>::Wire>;

/// Values per second of a gadget over a layer of `count` values, garbled and evaluated
/// layer-wise on every core: (garble/s, evaluate/s).
fn gadget_rate(
    k: usize,
    count: usize,
    garble: Gadget<LayerGarbleBackend>,
    eval: Gadget<LayerEvalBackend>,
) -> (f64, f64) {
    let basis = ok(CrtBasis::first_primes(k));
    let seed = Seed::from_bytes([k as u8; 32]);
    let inputs = |g: &mut Garbler| -> Vec<LabelTensor> {
        basis
            .moduli()
            .iter()
            .map(|&q| ok(g.input_tensor(q, &[count])))
            .collect()
    };
    let g_secs = median_secs(
        || {
            let mut g = Garbler::new(&seed);
            let zeros = inputs(&mut g);
            (LayerGarbleBackend::new(g), zeros)
        },
        |(mut b, zeros)| garble(&mut b, &zeros),
    );
    let mut g = Garbler::new(&seed);
    let zeros = inputs(&mut g);
    let mut b = LayerGarbleBackend::new(g);
    garble(&mut b, &zeros);
    let (mut g, batches) = b.into_parts();
    // Value i is (i − count/2)·37: both signs, well inside every range.
    let labels: Vec<LabelTensor> = zeros
        .iter()
        .map(|z| {
            let q = i64::from(z.modulus().q());
            let v: Vec<i64> = (0..count as i64)
                .map(|i| ((i - count as i64 / 2) * 37).rem_euclid(q))
                .collect();
            ok(g.encode_tensor(z, &v))
        })
        .collect();
    let key = g.hash_key();
    let e_secs = median_secs(
        || LayerEvalBackend::new(Evaluator::new(key), batches.clone()),
        |mut e| eval(&mut e, &labels),
    );
    (count as f64 / g_secs, count as f64 / e_secs)
}

fn relu_g(b: &mut LayerGarbleBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(relu(b, w))
}
fn relu_e(b: &mut LayerEvalBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(relu(b, w))
}
fn rescale_g(b: &mut LayerGarbleBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2(b, w, RESCALE_BITS))
}
fn rescale_e(b: &mut LayerEvalBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2(b, w, RESCALE_BITS))
}
fn onestep_g(b: &mut LayerGarbleBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2_onestep(b, w, RESCALE_BITS))
}
fn onestep_e(b: &mut LayerEvalBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2_onestep(b, w, RESCALE_BITS))
}
fn rescale_small_g(b: &mut LayerGarbleBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2(b, w, RESCALE_BITS_SMALL))
}
fn rescale_small_e(b: &mut LayerEvalBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2(b, w, RESCALE_BITS_SMALL))
}
fn onestep_small_g(b: &mut LayerGarbleBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2_onestep(b, w, RESCALE_BITS_SMALL))
}
fn onestep_small_e(b: &mut LayerEvalBackend, w: &[LabelTensor]) -> Vec<LabelTensor> {
    ok(rescale_pow2_onestep(b, w, RESCALE_BITS_SMALL))
}

/// The rescale measured: by 2^8, the integer engine's default fraction bits.
const RESCALE_BITS: u32 = 8;
/// A smaller rescale, by 2^5, measured as well.
const RESCALE_BITS_SMALL: u32 = 5;

fn gadgets(threads: usize) {
    let count = 4096;
    println!();
    println!(
        "CRT gadgets over a layer of {count} values (LayerGarbleBackend / LayerEvalBackend, {threads} threads); ct = ciphertexts per value"
    );
    println!(
        "{:>2} {:<22} | {:>6} | {:>12} | {:>12}",
        "k", "gadget", "ct", "garble/s", "evaluate/s"
    );
    for k in [7usize, 8, 9] {
        let rows: [(String, u64, Gadget<_>, Gadget<_>); 5] = [
            (
                "ReLU (exact sign)".into(),
                ok(relu_cost(k)).ciphertexts,
                relu_g,
                relu_e,
            ),
            (
                format!("rescale 2^{RESCALE_BITS}, halvings"),
                ok(rescale_pow2_cost(k, RESCALE_BITS)).ciphertexts,
                rescale_g,
                rescale_e,
            ),
            (
                format!("rescale 2^{RESCALE_BITS}, one-step"),
                ok(rescale_pow2_onestep_cost(k, RESCALE_BITS)).ciphertexts,
                onestep_g,
                onestep_e,
            ),
            (
                format!("rescale 2^{RESCALE_BITS_SMALL}, halvings"),
                ok(rescale_pow2_cost(k, RESCALE_BITS_SMALL)).ciphertexts,
                rescale_small_g,
                rescale_small_e,
            ),
            (
                format!("rescale 2^{RESCALE_BITS_SMALL}, one-step"),
                ok(rescale_pow2_onestep_cost(k, RESCALE_BITS_SMALL)).ciphertexts,
                onestep_small_g,
                onestep_small_e,
            ),
        ];
        for (name, ct, g, e) in rows {
            let (gr, er) = gadget_rate(k, count, g, e);
            println!("{k:>2} {name:<22} | {ct:>6} | {gr:>12.0} | {er:>12.0}");
        }
    }
}

/// Per-label cost of the base conversion a gate pays besides AES (the kernels the gate loops
/// call: packing n digits into a block, unpacking a block into n digits of a label-major
/// tensor), against the AES time of one hash into that modulus at the ceiling.
fn kernels(ceiling: f64) {
    use rand::{Rng, SeedableRng};
    use tessera_garble::bench_support::{block_of, unpack_into};
    println!();
    println!("base conversion per label, 1 thread (ns); AES = one hash's blocks at the ceiling");
    println!(
        "{:>4} {:>6} | {:>8} {:>8} | {:>8}",
        "q", "digits", "pack", "unpack", "AES"
    );
    let count = 1 << 16;
    for qv in [3u64, 5, 7, 11, 13, 17, 23, 67, 137] {
        let q = m(qv);
        let n = q.digits();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(qv);
        let digits: Vec<u8> = (0..count * n).map(|_| rng.random_range(0..q.q())).collect();
        let blocks: Vec<u128> = digits.chunks_exact(n).map(|d| block_of(q, d)).collect();
        let mut out = vec![0u8; count * n];
        let pack = median_secs(
            || (),
            |()| {
                (0..count).fold(0u128, |a, i| {
                    a ^ block_of(q, digits.get(i * n..).unwrap_or(&[]))
                })
            },
        );
        let unpack = median_secs(
            || (),
            |()| {
                for (i, &b) in blocks.iter().enumerate() {
                    unpack_into(q, b, out.get_mut(i * n..).unwrap_or(&mut []));
                }
                out.first().copied()
            },
        );
        assert_eq!(out, digits, "unpack inverts pack");
        let aes = (1 + output_blocks(q)) as f64 / ceiling;
        println!(
            "{qv:>4} {n:>6} | {:>8.1} {:>8.1} | {:>8.1}",
            pack * 1e9 / count as f64,
            unpack * 1e9 / count as f64,
            aes * 1e9
        );
    }
}

fn matmul(threads: usize) {
    let (one, all) = (pool(1), pool(threads));
    println!();
    println!(
        "matmul_public, free layer arithmetic (label-MACs/s; one label-MAC = digits(q) digit multiply-adds)"
    );
    println!(
        "{:>3} {:>6} {:>6} | {:>14} | {:>14}",
        "q",
        "rows",
        "n_in",
        "1 thread",
        format!("{threads} threads")
    );
    for q in [2u64, 3, 7, 23] {
        let qm = m(q);
        let (rows, n_in) = (128usize, 1152usize);
        let mut g = Garbler::new(&Seed::from_bytes([9; 32]));
        let x = ok(g.input_tensor(qm, &[n_in]));
        let w: Vec<i64> = (0..rows * n_in).map(|i| (i as i64 * 37) % 15 - 7).collect();
        let rates: Vec<f64> = [&one, &all]
            .iter()
            .map(|pl| {
                let secs = pl.install(|| {
                    median_secs(|| (), |()| ok(LabelTensor::matmul_public(&w, rows, &x)))
                });
                (rows * n_in) as f64 / secs
            })
            .collect();
        println!(
            "{q:>3} {rows:>6} {n_in:>6} | {:>12.1}M | {:>12.1}M   ({} digits/label)",
            rates[0] / 1e6,
            rates[1] / 1e6,
            qm.digits()
        );
    }
    conv_kernel();
}

/// The dot-product kernel on the shape of a conv layer's inner loop (288 = 32 channels x 3 x 3
/// input rows, one 4,096-digit block of output), one thread: digit multiply-adds per second.
fn conv_kernel() {
    use rand::{Rng, SeedableRng};
    use tessera_garble::bench_support::dot_rows;
    println!();
    println!("dot-product kernel, conv-shaped (288 rows x 4,096 digits), 1 thread");
    println!("{:>3} | {:>18}", "q", "digit-MACs/s");
    let (kk, width) = (288usize, 4096usize);
    for q in [2u16, 3, 7, 23, 67, 137] {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(q));
        let rows: Vec<u8> = (0..kk * width)
            .map(|_| rng.random_range(0..q) as u8)
            .collect();
        let w: Vec<u16> = (0..kk).map(|_| rng.random_range(1..q)).collect();
        let mut acc = vec![0u16; width];
        let mut out = vec![0u8; width];
        let reps = 20;
        let secs = median_secs(
            || (),
            |()| {
                for _ in 0..reps {
                    acc.iter_mut().for_each(|a| *a = 0);
                    let pairs = w.iter().copied().zip(rows.chunks_exact(width));
                    dot_rows(m(u64::from(q)), pairs, &mut acc, &mut out);
                }
                out.first().copied()
            },
        );
        println!(
            "{q:>3} | {:>16.2}G",
            (reps * kk * width) as f64 / secs / 1e9
        );
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: benchmarks are not
    // tests, so only `cargo bench` (which passes `--bench`) measures anything.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench` (release)");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (c64, c1024) = pool(1).install(|| (aes_rate(64), aes_rate(1024)));
    println!("tessera-garble benchmark: medians of {REPS} runs, {threads} threads available");
    println!(
        "fixed-key AES-128, 1 core: batch 64: {:.1} M blocks/s; batch 1024: {:.1} M blocks/s (the ceiling)",
        c64 / 1e6,
        c1024 / 1e6
    );
    if want("kernels") {
        kernels(c1024);
    }
    if want("gates") {
        gates(c1024, threads);
    }
    if want("gadgets") {
        gadgets(threads);
    }
    if want("matmul") {
        matmul(threads);
    }
    if want("networks") {
        networks(threads);
    }
}

/// Whole networks through [`tessera_garble::network`]: garble into a file, evaluate from it,
/// on every core; k from the widths the engine measures on the inputs (no margin).
fn networks(threads: usize) {
    use tessera_engine::quant::merge_widths;
    use tessera_engine::{QuantConfig, QuantModel};
    use tessera_garble::network::{NetworkCircuit, decode, encode_input, evaluate, garble};
    use tessera_model::{Graph, Tensor};

    let mut cases: Vec<(String, Graph, Vec<Tensor>)> = Vec::new();
    if let Some(dir) = tessera_data::shared_data("onnx-mnist-8") {
        let g = ok(tessera_model::load_model(
            &dir.join("model.onnx"),
            &tessera_model::ImportOptions::default(),
        ));
        let xs = (0..3)
            .map(|i| {
                ok(tessera_data::load_pb(
                    &dir.join(format!("test_data_set_{i}/input_0.pb")),
                ))
            })
            .collect();
        cases.push(("mnist-8".into(), g, xs));
    }
    let g = ok(tessera_model::builders::f_small(5));
    let shape = g.shape(g.inputs[0]).to_vec();
    let n: usize = shape.iter().product();
    let xs = (0..3u32)
        .map(|s| {
            let d = (0..n as u32)
                .map(|i| {
                    ((i.wrapping_mul(2_654_435_761) ^ s.wrapping_mul(97)) % 256) as f32 / 256.0
                })
                .collect();
            ok(Tensor::new(shape.clone(), d))
        })
        .collect();
    cases.push(("f-small".into(), g, xs));
    println!();
    println!(
        "Whole networks, f = 4, {threads} threads, material streamed to a file and read back (median of 3):"
    );
    println!(
        "| network | k | gates | ciphertexts | garbled bytes | garble | evaluate | decode check |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let path =
        std::env::temp_dir().join(format!("tessera-garble-bench-{}.bin", std::process::id()));
    for (name, g, xs) in cases {
        let cfg = QuantConfig {
            frac_bits: 4,
            max_bits: None,
        };
        let qm = ok(QuantModel::new(&g, cfg));
        let mut widths = Vec::new();
        let mut qs = Vec::new();
        let mut wants = Vec::new();
        for x in &xs {
            let q = ok(qm.quantize_inputs(std::slice::from_ref(x)));
            let run = ok(qm.run_int(&q));
            merge_widths(&mut widths, &run.widths);
            wants.push(run.outputs[0].clone());
            qs.push(q[0].clone());
        }
        let c = ok(NetworkCircuit::compile(&g, cfg, 2));
        let k = ok(c.primes_needed(&widths, 0));
        let c = ok(c.with_primes(k));
        let public = c.public();
        let cost = ok(c.cost());
        let mut gs = Vec::new();
        let mut es = Vec::new();
        let mut bytes = 0;
        let mut exact = true;
        for (i, (q, want)) in qs.iter().zip(&wants).enumerate() {
            let start = Instant::now();
            let file = ok(std::fs::File::create(&path));
            let secrets = ok(garble(&c, &Seed::from_bytes([i as u8; 32]), file));
            gs.push(start.elapsed().as_secs_f64());
            bytes = secrets.material_bytes();
            let (inputs, secrets) = ok(encode_input(secrets, q));
            let start = Instant::now();
            let out = ok(evaluate(&public, ok(std::fs::File::open(&path)), &inputs));
            es.push(start.elapsed().as_secs_f64());
            exact &= ok(decode(&secrets, &out)) == *want;
        }
        gs.sort_by(f64::total_cmp);
        es.sort_by(f64::total_cmp);
        println!(
            "| {name} | {k} | {} | {} | {:.1} MB | {:.2} s | {:.2} s | {} |",
            cost.gates,
            cost.ciphertexts,
            bytes as f64 / 1e6,
            gs[1],
            es[1],
            if exact { "bit-exact" } else { "MISMATCH" }
        );
    }
    let _ = std::fs::remove_file(&path);
}
