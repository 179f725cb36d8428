//! asym benchmark: inference and training-step time, unsplit (everything in the enclave process,
//! the TEE-only baseline) vs split (enclave + a CPU worker on rayon threads in the same process),
//! on VGG-16 and ResNet-18 CIFAR shapes at batch 1 and 32, with the trusted share of
//! multiply-adds per layer.
//!
//! `cargo bench -p tessera-asym --bench asym [-- NAME...]` (NAME: infer, train, layers; default
//! all). `ASYM_REPS` sets the repetitions (default 5; training at batch 32 uses at most 3).

use std::time::{Duration, Instant};
use tessera_asym::{
    AsymOptions, Inference, LayerRun, LocalWorker, Plan, TrainOptions, Trainer, infer, rebatch,
};
use tessera_model::{Graph, Tensor, builders};
use tessera_runtime::cost::{Footprint, SGX1, model_request};

fn input(shape: &[usize], seed: u64) -> Tensor {
    let mut s = seed | 1;
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    Tensor::new(shape.to_vec(), data).expect("sized")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Row {
    /// Working set for the SGX1 cost model (bytes) and enclave↔worker messages per pass.
    ws: Footprint,
    messages: u64,
    net: String,
    batch: usize,
    what: &'static str,
    unsplit: Duration,
    split: Duration,
    enclave: Duration,
    worker: Duration,
    trusted: f64,
}

/// Modeled SGX1 time of `measured` enclave work with working set `ws` and `io` boundary
/// crossings (tessera_runtime::cost: 93 MB EPC, 40k cycles per page, 3 GHz).
fn sgx(measured: Duration, ws: &Footprint, io: u64) -> Duration {
    Duration::from_nanos(model_request(&SGX1, ws, measured, io).modeled_ns)
}

fn print_rows(rows: &[Row]) {
    println!(
        "| net | batch | pass | unsplit (TEE-only) | modeled SGX1 | split total | split: enclave | modeled SGX1 | split: worker | unsplit ÷ enclave (measured) | (modeled) | trusted MACs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let mu = sgx(r.unsplit, &r.ws, 0);
        let me = sgx(r.enclave, &r.ws, 2 * r.messages);
        println!(
            "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}× | {:.2}× | {:.1}% |",
            r.net,
            r.batch,
            r.what,
            ms(r.unsplit),
            ms(mu),
            ms(r.split),
            ms(r.enclave),
            ms(me),
            ms(r.worker),
            r.unsplit.as_secs_f64() / r.enclave.as_secs_f64().max(1e-9),
            mu.as_secs_f64() / me.as_secs_f64().max(1e-9),
            100.0 * r.trusted
        );
    }
    println!(
        "\nModeled SGX1: measured time + EPC paging when the working set exceeds 93 MB + 10k cycles per enclave-worker message (tessera_runtime::cost). Working set: f32 weights and the largest layer's activations, x3 for training (gradients, momentum, kept activations); the split enclave still holds every weight (it folds W·U), so paging is the same on both sides."
    );
}

/// f32 working set of `g` (the cost model's footprint is for 8-byte integers), ×3 for training.
fn working_set(g: &Graph, training: bool) -> Footprint {
    let f = Footprint::of(g);
    let k = if training { 3 } else { 1 };
    Footprint {
        weight_bytes: f.weight_bytes / 2 * k,
        activation_bytes: f.activation_bytes / 2 * k,
    }
}

fn share(layers: &[LayerRun]) -> f64 {
    let t: u64 = layers.iter().map(|l| l.trusted_macs).sum();
    let u: u64 = layers.iter().map(|l| l.unsplit_macs).sum();
    t as f64 / u.max(1) as f64
}

fn nets(batch: usize) -> Vec<(String, Graph)> {
    let v = builders::vgg16(32, 10, 1).expect("vgg16");
    let r = builders::resnet18(32, 10, 1).expect("resnet18");
    vec![
        ("VGG-16".into(), rebatch(&v, batch).expect("rebatch")),
        ("ResNet-18".into(), rebatch(&r, batch).expect("rebatch")),
    ]
}

fn bench_infer(
    reps: usize,
    rows: &mut Vec<Row>,
    layers_out: &mut Vec<(String, usize, Vec<LayerRun>)>,
) {
    for batch in [1, 32] {
        for (name, g) in nets(batch) {
            let x = input(g.shape(g.inputs[0]), 3);
            let base = Plan::enclave_only(&g).expect("plan");
            let plan = Plan::new(&g, &AsymOptions::default()).expect("plan");
            let mut w = LocalWorker::new(plan.worker_layers());
            let _ = infer(&base, &x, None, 0).expect("runs");
            let _ = infer(&plan, &x, Some(&mut w), 0).expect("runs");
            let mut tu = Vec::new();
            let (mut ts, mut te, mut tw) = (Vec::new(), Vec::new(), Vec::new());
            let mut last: Option<Inference> = None;
            for i in 0..reps {
                let t = Instant::now();
                let _ = infer(&base, &x, None, 0).expect("runs");
                tu.push(t.elapsed());
                let r = infer(&plan, &x, Some(&mut w), i as u64).expect("runs");
                ts.push(r.total_time);
                te.push(r.total_time.saturating_sub(r.worker_time));
                tw.push(r.worker_time);
                last = Some(r);
            }
            let layers = last.map(|l| l.layers).unwrap_or_default();
            let messages = layers.iter().filter(|l| l.placement == "split").count() as u64;
            rows.push(Row {
                ws: working_set(&g, false),
                messages,
                net: name.clone(),
                batch,
                what: "inference",
                unsplit: median(tu),
                split: median(ts),
                enclave: median(te),
                worker: median(tw),
                trusted: share(&layers),
            });
            layers_out.push((name, batch, layers));
        }
    }
}

fn bench_train(reps: usize, rows: &mut Vec<Row>) {
    for batch in [1, 32] {
        let reps = if batch > 1 { reps.min(3) } else { reps };
        for (name, g) in nets(batch) {
            let x = input(g.shape(g.inputs[0]), 5);
            let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
            let opts = TrainOptions {
                lr: 1e-4,
                momentum: 0.9,
                split: None,
            };
            let mut base = Trainer::new(&g, opts.clone()).expect("trainer");
            let mut split = Trainer::new(
                &g,
                TrainOptions {
                    split: Some(AsymOptions::default()),
                    ..opts
                },
            )
            .expect("trainer");
            let mut w = LocalWorker::new(split.plan().worker_layers());
            base.step(&x, &labels, None).expect("step");
            split.step(&x, &labels, Some(&mut w)).expect("step");
            let (mut tu, mut ts, mut te, mut tw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut trusted = 0.0;
            let mut messages = 0u64;
            for _ in 0..reps {
                let t = Instant::now();
                base.step(&x, &labels, None).expect("step");
                tu.push(t.elapsed());
                let r = split.step(&x, &labels, Some(&mut w)).expect("step");
                ts.push(r.total_time);
                te.push(r.total_time.saturating_sub(r.worker_time));
                tw.push(r.worker_time);
                trusted = share(&r.layers);
                // Forward, backward and update per split layer.
                messages = 3 * r.layers.iter().filter(|l| l.placement == "split").count() as u64;
            }
            rows.push(Row {
                ws: working_set(&g, true),
                messages,
                net: name,
                batch,
                what: "training step",
                unsplit: median(tu),
                split: median(ts),
                enclave: median(te),
                worker: median(tw),
                trusted,
            });
        }
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
    let reps: usize = std::env::var("ASYM_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    println!(
        "asym bench: {} rayon threads, {reps} reps (median), rank schedule start 2 ×2 cap 32, oversample 4, 1 subspace iteration",
        rayon::current_num_threads()
    );
    let mut rows = Vec::new();
    let mut layers = Vec::new();
    if want("infer") || want("layers") {
        bench_infer(reps, &mut rows, &mut layers);
    }
    if want("train") {
        bench_train(reps, &mut rows);
    }
    print_rows(&rows);
    if want("layers") {
        for (name, batch, ls) in &layers {
            println!("\n{name}, batch {batch}: per-layer forward multiply-adds");
            println!(
                "| layer | placement | rank (mean/max) | residual energy | unsplit MMAC | trusted MMAC | untrusted MMAC | trusted share |"
            );
            println!("|---|---|---|---|---|---|---|---|");
            for l in ls {
                println!(
                    "| {} | {} | {:.1}/{} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1}% |",
                    l.name,
                    l.placement,
                    l.rank_mean,
                    l.rank_max,
                    l.residual_energy,
                    l.unsplit_macs as f64 / 1e6,
                    l.trusted_macs as f64 / 1e6,
                    l.untrusted_macs as f64 / 1e6,
                    100.0 * l.trusted_share()
                );
            }
        }
    }
}
