//! Training time, `attested` vs `tee`, on the same model and data.
//!
//! - `attested`: the host trains with all CPU cores (what `run_host_job` does after the keys
//!   are released).
//! - `tee`: the same training on one thread, as the enclave process would run it (measured),
//!   and the modeled SGX1 time: the measured time plus, per epoch, the EPC paging and ECALL
//!   cost of `tessera_runtime::cost` for the training working set (data set, weights, momentum
//!   and gradients, one mini-batch of activations, 8 MiB fixed).
//!
//! Convolutional jobs (the second table) are modeled per TEE profile: SGX1 = the measured
//! one-thread time × the in-enclave training slowdown S = 26 (DESIGN §2.6) + the cost model's
//! EPC paging per epoch; SGX2 and a confidential VM = the measured time + the cost model (no
//! slowdown factor: DESIGN §2.6 reports their overhead as small). "With a GPU host" divides
//! the attested host's time by a stated GPU speed-up G = 50 over these cores.
//!
//! Run: `cargo bench -p tessera-attested --bench training` (release; `BENCH_ONLY=cnn` for the
//! convolutional table only). Prints markdown tables.

use std::io::Write;
use std::time::Duration;

use tessera_attested::dataset::{load_breast_cancer, load_mnist, standardize};
use tessera_attested::flow::split;
use tessera_attested::host::train;
use tessera_attested::{JobSpec, Network, Output, PlainDataset, Stakeholder, TrainSpec};
use tessera_runtime::cost::{CVM, Footprint, Profile, SGX1, SGX2, model_request};

fn shared(rel: &str) -> Option<std::path::PathBuf> {
    let base = std::env::var_os("TESSERA_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
        });
    let p = base.join(rel);
    if p.exists() {
        Some(p)
    } else {
        let _ = writeln!(std::io::stderr(), "SKIP {rel}: absent at {}", p.display());
        None
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn job(spec: TrainSpec) -> JobSpec {
    JobSpec {
        id: "bench".into(),
        dataset: "bench".into(),
        train: spec,
        program: None,
        outputs: [
            (Output::TrainedModel, Stakeholder::ModelOwner),
            (Output::Predictions, Stakeholder::DataOwner),
        ]
        .into_iter()
        .collect(),
    }
}

/// The training working set in the enclave.
fn footprint(data: &PlainDataset, spec: &TrainSpec) -> Footprint {
    let mut dims = vec![data.features_per_row()];
    dims.extend(&spec.hidden);
    dims.push(data.classes);
    let params: usize = dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
    let acts: usize = dims.iter().sum::<usize>() * spec.batch;
    let data_bytes = data.features.len() * 4 + data.labels.len();
    Footprint {
        // Weights, momentum and gradients, f32.
        weight_bytes: (params * 4 * 3) as u64,
        // The data set plus one mini-batch of activations and their gradients.
        activation_bytes: (data_bytes + acts * 4 * 2) as u64,
    }
}

/// Median training time on the host (all cores) and in one thread (the enclave), interleaved;
/// and the host's thread count.
fn measure(spec: &TrainSpec, data: &PlainDataset, reps: usize) -> (Duration, Duration, usize) {
    let j = job(spec.clone());
    let (mut host, mut tee, mut threads) = (Vec::new(), Vec::new(), 0);
    for _ in 0..reps {
        let (_, _, t, n) = train(&j, data, 0, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
        threads = n;
        host.push(t);
        let (_, _, t, _) = train(&j, data, 1, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
        tee.push(t);
    }
    (median(host), median(tee), threads)
}

fn run(name: &str, data: &PlainDataset, spec: TrainSpec, reps: usize) {
    let (h, t, threads) = measure(&spec, data, reps);
    let fp = footprint(data, &spec);
    // One "request" per epoch: a pass sweeps the whole working set.
    let per_epoch = model_request(&SGX1, &fp, Duration::ZERO, 0);
    let modeled = t + Duration::from_nanos(per_epoch.modeled_ns) * spec.epochs as u32;
    println!(
        "| {name} | {} | {:?} × {} ep, batch {} | {:.3} s ({threads} thr) | {:.3} s | {:.3} s (ws {:.1} MB, {} pages/epoch) | {:.2}× | {:.2}× |",
        data.rows(),
        spec.hidden,
        spec.epochs,
        spec.batch,
        h.as_secs_f64(),
        t.as_secs_f64(),
        modeled.as_secs_f64(),
        fp.working_set() as f64 / 1e6,
        per_epoch.page_ins + per_epoch.page_outs,
        t.as_secs_f64() / h.as_secs_f64(),
        modeled.as_secs_f64() / h.as_secs_f64(),
    );
}

/// In-enclave training slowdown of SGX1 (DESIGN §2.6).
const SGX1_TRAINING_SLOWDOWN: f64 = 26.0;
/// The stated speed-up of a GPU host over these cores.
const GPU_SPEEDUP: f64 = 50.0;

/// A convolutional job: attested (all cores) against tee (one thread), modeled per profile.
fn run_conv(name: &str, data: &PlainDataset, spec: TrainSpec, reps: usize) {
    let (h, t, threads) = measure(&spec, data, reps);
    let (h, t) = (h.as_secs_f64(), t.as_secs_f64());
    let [_, c, side, _] = <[usize; 4]>::try_from(data.input_shape.as_slice())
        .unwrap_or_else(|_| panic!("{name}: not images"));
    let g = tessera_model::builders::trainable(
        spec.network.name(),
        spec.width,
        spec.batch,
        c,
        side,
        data.classes,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fp = Footprint::of(&g);
    // Weights, gradients and momentum; the batch's activations kept for the backward pass and
    // their gradients (f32); the data set.
    let train_fp = Footprint {
        weight_bytes: fp.weight_bytes / 8 * 4 * 3,
        activation_bytes: fp.activation_bytes / 8 * 4 * 3
            + (data.features.len() * 4 + data.labels.len()) as u64,
    };
    // One sweep of the working set per epoch (paging past the EPC) and one enclave entry.
    let modeled = |p: &Profile, slowdown: f64| {
        let per_epoch = model_request(p, &train_fp, Duration::ZERO, 0);
        t * slowdown
            + (Duration::from_nanos(per_epoch.modeled_ns) * spec.epochs as u32).as_secs_f64()
    };
    let (s1, s2, cvm) = (
        modeled(&SGX1, SGX1_TRAINING_SLOWDOWN),
        modeled(&SGX2, 1.0),
        modeled(&CVM, 1.0),
    );
    let gpu = h / GPU_SPEEDUP;
    println!(
        "| {name} | {} | {}{} × {} ep, batch {} | {h:.2} s ({threads} thr) | {t:.2} s | {s1:.1} s (ws {:.1} MB) | {s2:.2} s | {cvm:.2} s | {:.1}× / {:.2}× / {:.2}× | {:.0}× / {:.0}× / {:.0}× |",
        data.rows(),
        spec.network.name(),
        if spec.width > 1 {
            format!(" ×{}", spec.width)
        } else {
            String::new()
        },
        spec.epochs,
        spec.batch,
        train_fp.working_set() as f64 / 1e6,
        s1 / h,
        s2 / h,
        cvm / h,
        s1 / gpu,
        s2 / gpu,
        cvm / gpu,
    );
}

fn conv_table() {
    println!(
        "| data | train rows | network | attested (host, all cores) | tee measured (1 thread) | tee modeled SGX1 | SGX2 | CVM | attested vs tee: SGX1 / SGX2 / CVM | with a GPU host (G = {GPU_SPEEDUP}) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let cnn = |network: Network, width: usize, epochs: usize| TrainSpec {
        network,
        width,
        hidden: Vec::new(),
        shift: 2,
        epochs,
        batch: 32,
        lr: 0.02,
        lr_final: None,
        momentum: 0.9,
        input_scale: 1.0 / 255.0,
        seed: 1,
    };
    if let Some(dir) = shared("mnist-t10k") {
        let all = load_mnist(&dir).unwrap_or_else(|e| panic!("{e}"));
        let (train_set, _) = split(all, 8_000, 1).unwrap_or_else(|e| panic!("{e}"));
        run_conv(
            "MNIST t10k (8k train)",
            &train_set,
            cnn(Network::Cnn, 1, 1),
            3,
        );
        run_conv(
            "MNIST t10k (8k train)",
            &train_set,
            cnn(Network::Vgg, 2, 1),
            1,
        );
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: measure only under
    // `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench` (release)");
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "cnn") {
        conv_table();
        return;
    }
    println!(
        "| data | train rows | model | attested (host, all cores) | tee measured (1 thread) | tee modeled SGX1 | measured ratio | modeled ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    if let Some(dir) = shared("mnist-t10k") {
        let all = load_mnist(&dir).unwrap_or_else(|e| panic!("{e}"));
        let (train_set, _) = split(all, 8_000, 1).unwrap_or_else(|e| panic!("{e}"));
        let spec = TrainSpec {
            network: Network::Mlp,
            width: 1,
            hidden: vec![64],
            shift: 0,
            epochs: 3,
            batch: 64,
            lr: 0.05,
            lr_final: None,
            momentum: 0.9,
            input_scale: 1.0 / 255.0,
            seed: 1,
        };
        run("MNIST t10k (8k train)", &train_set, spec, 5);
        // A wider network and more epochs, closer to a real job.
        let spec = TrainSpec {
            network: Network::Mlp,
            width: 1,
            hidden: vec![256, 128],
            shift: 0,
            epochs: 3,
            batch: 64,
            lr: 0.05,
            lr_final: None,
            momentum: 0.9,
            input_scale: 1.0 / 255.0,
            seed: 1,
        };
        run("MNIST t10k (8k train)", &train_set, spec, 3);
        // Larger batches give the parallel GEMM more rows per call.
        let spec = TrainSpec {
            network: Network::Mlp,
            width: 1,
            hidden: vec![256, 128],
            shift: 0,
            epochs: 3,
            batch: 256,
            lr: 0.1,
            lr_final: None,
            momentum: 0.9,
            input_scale: 1.0 / 255.0,
            seed: 1,
        };
        run("MNIST t10k (8k train)", &train_set, spec, 3);
        // A network whose training working set (≈ 100 MB) exceeds SGX1's 93 MB EPC.
        let spec = TrainSpec {
            network: Network::Mlp,
            width: 1,
            hidden: vec![2048, 2048],
            shift: 0,
            epochs: 1,
            batch: 256,
            lr: 0.05,
            lr_final: None,
            momentum: 0.9,
            input_scale: 1.0 / 255.0,
            seed: 1,
        };
        run("MNIST t10k (8k train)", &train_set, spec, 3);
    }
    if let Some(path) = shared("sklearn-datasets/breast_cancer.csv") {
        let all = load_breast_cancer(&path).unwrap_or_else(|e| panic!("{e}"));
        let (mut tr, mut te) = split(all, 455, 2).unwrap_or_else(|e| panic!("{e}"));
        standardize(&mut tr, &mut te);
        let spec = TrainSpec {
            network: Network::Mlp,
            width: 1,
            hidden: vec![16],
            shift: 0,
            epochs: 40,
            batch: 16,
            lr: 0.01,
            lr_final: None,
            momentum: 0.9,
            input_scale: 1.0,
            seed: 1,
        };
        run("breast cancer (455 train)", &tr, spec, 5);
    }
    println!();
    conv_table();
}
