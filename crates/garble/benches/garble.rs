//! Throughput of the garbling engine against the fixed-key AES ceiling (no criterion: medians of
//! a few repetitions, printed as a table). Run with `cargo bench -p tessera-garble`.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use std::hint::black_box;
use std::time::Instant;
use tessera_garble::hash::output_blocks;
use tessera_garble::{Evaluator, Garbler, LabelTensor, Modulus, Seed};

const REPS: usize = 7;

/// Median seconds of `REPS` runs of `f` (after one warm-up run).
fn median_secs(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..REPS)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[REPS / 2]
}

/// Fixed-key AES blocks per second on the current thread, in batches of `batch` blocks.
fn aes_rate(batch: usize) -> f64 {
    let aes = Aes128::new(&Array::from([7u8; 16]));
    let total = 1 << 23;
    let mut blocks = vec![Array::from([1u8; 16]); batch];
    let secs = median_secs(|| {
        for _ in 0..total / batch {
            aes.encrypt_blocks(&mut blocks);
        }
        black_box(&blocks);
    });
    (total / batch * batch) as f64 / secs
}

fn pool(threads: usize) -> rayon::ThreadPool {
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(p) => p,
        Err(e) => panic!("thread pool: {e}"),
    }
}

fn m(q: u64) -> Modulus {
    match Modulus::new(q) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let one = pool(1);
    let all = pool(threads);
    let (c8, c1024) = one.install(|| (aes_rate(8), aes_rate(1024)));
    println!("tessera-garble benchmark: medians of {REPS} runs, {threads} threads available");
    println!(
        "fixed-key AES-128, 1 core: batch 8: {:.1} M blocks/s; batch 1024: {:.1} M blocks/s (ceiling)",
        c8 / 1e6,
        c1024 / 1e6
    );
    for qv in [2u64, 3] {
        let q = m(qv);
        let b = (1 + output_blocks(q)) as f64;
        println!();
        println!(
            "projection gates p -> q = {qv}: {b} AES blocks per hash; per gate: garble {b}p, evaluate {b}"
        );
        println!(
            "'AES%' = AES blocks/s the gates need / (1-core batch-1024 ceiling x threads used)"
        );
        println!(
            "{:>3} {:>7} | {:>12} {:>6} | {:>12} {:>6} | {:>12} {:>6} | {:>12} {:>6}",
            "p",
            "gates",
            "garble 1t/s",
            "AES%",
            "garble Nt/s",
            "AES%",
            "eval 1t/s",
            "AES%",
            "eval Nt/s",
            "AES%"
        );
        for p in [2u64, 3, 5, 7, 11, 13, 17, 19, 23] {
            let pm = m(p);
            let gates = 16_384usize;
            let mut g = Garbler::new(&Seed::from_bytes([p as u8; 32]));
            let a0 = match g.input_tensor(pm, &[gates]) {
                Ok(t) => t,
                Err(e) => panic!("{e}"),
            };
            let phi: Vec<u8> = (0..p).map(|x| u8::from(x * 2 >= p)).collect();
            let values: Vec<i64> = (0..gates as i64).map(|i| i % p as i64).collect();
            let x = match g.encode_tensor(&a0, &values) {
                Ok(t) => t,
                Err(e) => panic!("{e}"),
            };
            let mut row = vec![];
            let mut tables = None;
            for (pl, nthreads) in [(&one, 1usize), (&all, threads)] {
                let secs = pl.install(|| {
                    median_secs(|| {
                        tables = Some(match g.projection_batch(&a0, q, &phi) {
                            Ok(t) => t,
                            Err(e) => panic!("{e}"),
                        });
                    })
                });
                let rate = gates as f64 / secs;
                row.push((rate, rate * b * p as f64 / (c1024 * nthreads as f64)));
            }
            let Some((tables, _)) = tables else {
                panic!("no tables")
            };
            let mut e = Evaluator::new(g.hash_key());
            for (pl, nthreads) in [(&one, 1usize), (&all, threads)] {
                let secs = pl.install(|| {
                    median_secs(|| {
                        black_box(match e.projection_batch(&tables, &x) {
                            Ok(t) => t,
                            Err(e) => panic!("{e}"),
                        });
                    })
                });
                let rate = gates as f64 / secs;
                row.push((rate, rate * b / (c1024 * nthreads as f64)));
            }
            print!("{p:>3} {gates:>7}");
            for (rate, frac) in row {
                print!(" | {:>10.3}M {:>5.1}%", rate / 1e6, frac * 100.0);
            }
            println!();
        }
    }
    println!();
    println!("matmul_public (label-MACs/s; one label-MAC = digits(q) digit multiply-adds)");
    println!(
        "{:>3} {:>6} {:>6} | {:>14} | {:>14}",
        "q", "rows", "n_in", "1 thread", "all threads"
    );
    for q in [2u64, 3, 7, 23] {
        let qm = m(q);
        let (rows, n_in) = (128usize, 1152usize);
        let mut g = Garbler::new(&Seed::from_bytes([9; 32]));
        let x = match g.input_tensor(qm, &[n_in]) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let w: Vec<i64> = (0..rows * n_in).map(|i| (i as i64 * 37) % 15 - 7).collect();
        let mut rates = vec![];
        for pl in [&one, &all] {
            let secs = pl.install(|| {
                median_secs(|| {
                    black_box(match LabelTensor::matmul_public(&w, rows, &x) {
                        Ok(t) => t,
                        Err(e) => panic!("{e}"),
                    });
                })
            });
            rates.push((rows * n_in) as f64 / secs);
        }
        println!(
            "{q:>3} {rows:>6} {n_in:>6} | {:>12.1}M | {:>12.1}M   ({} digits/label)",
            rates[0] / 1e6,
            rates[1] / 1e6,
            qm.digits()
        );
    }
}
