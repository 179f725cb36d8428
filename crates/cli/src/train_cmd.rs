//! `tessera train`: train a small CNN through the asym split, or whole in the enclave (`tee`).

use crate::{CliError, Result, Table, pct, print_json, progress};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tessera_asym::{AsymOptions, LocalWorker, RankRule, TrainOptions, Trainer, rebatch};
use tessera_data::{Dataset, load_mnist_dir, synth};
use tessera_engine::{argmax, run_f32};
use tessera_model::{Graph, GraphBuilder, Tensor};
use tessera_runtime::cost::{Footprint, SGX1, model_request};

/// `tessera train`.
#[derive(Args)]
pub struct TrainArgs {
    /// asym (low-rank split, worker threads in this process) or tee (the whole network in the
    /// enclave).
    #[arg(long, default_value = "asym")]
    scheme: String,
    /// mnist (from --data; the first 8,000 images train, the last 2,000 test) or glyphs
    /// (generated: needs nothing outside the repository).
    #[arg(long, default_value = "mnist")]
    dataset: String,
    /// MNIST directory.
    #[arg(long, default_value = "../shared/data/mnist-t10k")]
    data: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.02)]
    lr: f32,
    /// Momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Fixed rank of every split layer (default: AsymML's schedule 2, 4, … up to 32).
    #[arg(long)]
    rank: Option<usize>,
    /// Instead of a rank: the largest residual energy ‖R‖²/‖X‖² allowed per layer (e.g. 0.1).
    #[arg(long)]
    energy: Option<f32>,
    /// Gaussian noise σ added to every residual (the DP variant).
    #[arg(long, default_value_t = 0.0)]
    noise: f32,
    /// Stop after this many training images per epoch (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// asym: a worker process (`tessera worker --scheme asym`) instead of worker threads here.
    #[arg(long)]
    worker: Option<String>,
    /// Write the trained model (ONNX, batch 1) here.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn cnn(batch: usize, side: usize) -> std::result::Result<Graph, tessera_model::ModelError> {
    let mut b = GraphBuilder::new("cnn", 7);
    let mut x = b.input("input", vec![batch, 1, side, side])?;
    x = b.conv(x, 16, 5, 1, 2)?;
    x = b.relu(x)?;
    x = b.max_pool(x, 2, 2)?;
    x = b.conv(x, 32, 5, 1, 2)?;
    x = b.relu(x)?;
    x = b.max_pool(x, 2, 2)?;
    x = b.flatten(x)?;
    x = b.dense(x, 128)?;
    x = b.relu(x)?;
    let y = b.dense(x, 10)?;
    b.finish(vec![y])
}

#[derive(Serialize)]
struct Report {
    scheme: String,
    dataset: String,
    train_images: usize,
    test_images: usize,
    epochs: usize,
    test_correct: usize,
    test_accuracy: f64,
    train_seconds: f64,
    worker_seconds: f64,
    step_ms_median: f64,
    modeled_sgx_step_ms: Option<f64>,
    trusted_share_forward: f64,
    mean_residual_energy: Option<f64>,
    /// Ranks per layer for ‖R‖²/‖X‖² ≤ 0.1, 0.05, 0.01 on held-out images, trained network.
    rank_profile_trained: tessera_asym::RankProfile,
    /// The same for the architecture with random (He) weights.
    rank_profile_random_weights: tessera_asym::RankProfile,
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Images `idx` of `d` as one batch `[n, 1, rows, cols]` scaled to [0, 1], and their labels.
pub(crate) fn batch_of(d: &Dataset, idx: &[usize]) -> Result<(Tensor, Vec<usize>)> {
    let n = d.rows * d.cols;
    let mut x = Vec::with_capacity(idx.len() * n);
    for &i in idx {
        let px = d
            .pixels
            .get(i * n..(i + 1) * n)
            .ok_or_else(|| usage(format!("image {i} is missing from the data set")))?;
        x.extend(px.iter().map(|v| v / 255.0));
    }
    let labels = idx
        .iter()
        .map(|&i| d.labels.get(i).map(|&l| usize::from(l)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| usage("the data set has no labels"))?;
    Ok((Tensor::new(vec![idx.len(), 1, d.rows, d.cols], x)?, labels))
}

/// Train and report.
pub fn train(a: &TrainArgs) -> Result<()> {
    let (data, train_n) = match a.dataset.as_str() {
        "mnist" => (load_mnist_dir(&a.data)?, 8000usize),
        "glyphs" => (synth::glyphs(6000, 21), 5000usize),
        other => {
            return Err(usage(format!(
                "unknown data set '{other}': use mnist or glyphs"
            )));
        }
    };
    if data.rows != data.cols || data.channels != 1 || data.count <= train_n {
        return Err(usage(
            "training needs square one-channel images and more than the training split",
        ));
    }
    let batch = a.batch.max(1);
    let split_opts = match a.scheme.as_str() {
        "asym" => Some(AsymOptions {
            rank: match (a.rank, a.energy) {
                (Some(_), Some(_)) => return Err(usage("give --rank or --energy, not both")),
                (Some(r), None) => RankRule::Fixed(r),
                (None, Some(e)) => RankRule::Energy {
                    threshold: e,
                    max_rank: 32,
                },
                (None, None) => RankRule::Schedule { start: 2, cap: 32 },
            },
            noise_sigma: a.noise,
            ..AsymOptions::default()
        }),
        "tee" => None,
        other => {
            return Err(usage(format!(
                "train runs --scheme asym or tee, not '{other}'"
            )));
        }
    };
    let g = cnn(batch, data.rows)?;
    let footprint = Footprint::of(&g);
    let mut t = Trainer::new(
        &g,
        TrainOptions {
            lr: a.lr,
            momentum: a.momentum,
            split: split_opts.clone(),
        },
    )
    .map_err(usage)?;
    let mut worker = LocalWorker::new(t.plan().worker_layers());
    let worker_ns = std::sync::atomic::AtomicU64::new(0);
    let mut remote = match (&a.worker, &split_opts) {
        (Some(addr), Some(o)) => {
            let s = std::net::TcpStream::connect(addr)
                .map_err(|e| usage(format!("cannot connect to the worker at {addr}: {e}")))?;
            Some(
                tessera_asym::service::setup_worker(
                    &g,
                    o,
                    s,
                    tessera_runtime::ChannelOptions::default(),
                )
                .map_err(usage)?,
            )
        }
        (Some(_), None) => return Err(usage("--worker is for --scheme asym")),
        _ => None,
    };
    let per_epoch = a.limit.unwrap_or(train_n).min(train_n) / batch * batch;
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        progress(
            (a.epochs * per_epoch / batch) as u64,
            &format!("train {}", a.scheme),
        )
    };
    let t0 = Instant::now();
    let mut steps_ms = Vec::new();
    let mut worker_time = Duration::ZERO;
    let (mut trusted, mut unsplit) = (0u64, 0u64);
    let (mut energy, mut energy_n) = (0f64, 0usize);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..a.epochs {
        let mut order: Vec<usize> = (0..train_n).collect();
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        for chunk in order[..per_epoch].chunks_exact(batch) {
            let (x, labels) = batch_of(&data, chunk)?;
            let mut link = remote
                .as_mut()
                .map(|ch| tessera_asym::service::ChannelLink::new(ch, &worker_ns));
            let w: Option<&mut dyn tessera_asym::WorkerLink> = match (&mut link, a.scheme.as_str())
            {
                (Some(l), _) => Some(l),
                (None, "asym") => Some(&mut worker),
                _ => None,
            };
            let r = t.step(&x, &labels, w).map_err(usage)?;
            steps_ms.push(r.total_time.as_secs_f64() * 1e3);
            worker_time += r.worker_time;
            for l in &r.layers {
                trusted += l.trusted_macs;
                unsplit += l.unsplit_macs;
                if l.placement == "split" {
                    energy += l.residual_energy;
                    energy_n += 1;
                }
            }
            pb.set_message(format!("loss {:.3}", r.loss));
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let train_seconds = t0.elapsed().as_secs_f64();
    let eval = rebatch(t.graph(), 1).map_err(usage)?;
    let mut right = 0usize;
    for i in train_n..data.count {
        let (x, labels) = batch_of(&data, &[i])?;
        let out = run_f32(&eval, &[x])?;
        let o = out
            .first()
            .ok_or_else(|| usage("the model has no output"))?;
        right += usize::from(labels.first() == Some(&argmax(o.data())));
    }
    let test_n = data.count - train_n;
    // How low-rank the trained network's activations are, against the same architecture with
    // random weights, on up to 32 held-out images.
    let samples: Vec<Tensor> = (train_n..data.count.min(train_n + 32))
        .map(|i| batch_of(&data, &[i]).map(|b| b.0))
        .collect::<Result<_>>()?;
    let thresholds = [0.1f32, 0.05, 0.01];
    let profile_opts = split_opts.clone().unwrap_or_default();
    let trained_profile =
        tessera_asym::rank_profile(&eval, &samples, &thresholds, &profile_opts).map_err(usage)?;
    let random_profile =
        tessera_asym::rank_profile(&cnn(1, data.rows)?, &samples, &thresholds, &profile_opts)
            .map_err(usage)?;
    let step_ms = tessera_schemes::median(&mut steps_ms);
    // Training keeps weights, gradients and momentum: three copies of the weights, and the
    // activations of the whole batch for the backward pass.
    let train_fp = Footprint {
        weight_bytes: footprint.weight_bytes / 8 * 4 * 3,
        activation_bytes: footprint.activation_bytes / 8 * 4 * 3,
    };
    let modeled = (a.scheme == "tee").then(|| {
        model_request(&SGX1, &train_fp, Duration::from_secs_f64(step_ms / 1e3), 0).modeled_ns as f64
            / 1e6
    });
    let report = Report {
        scheme: a.scheme.clone(),
        dataset: a.dataset.clone(),
        train_images: per_epoch,
        test_images: test_n,
        epochs: a.epochs,
        test_correct: right,
        test_accuracy: right as f64 / test_n.max(1) as f64,
        train_seconds,
        worker_seconds: worker_time.as_secs_f64(),
        step_ms_median: step_ms,
        modeled_sgx_step_ms: modeled,
        trusted_share_forward: trusted as f64 / unsplit.max(1) as f64,
        mean_residual_energy: (energy_n > 0).then(|| energy / energy_n as f64),
        rank_profile_trained: trained_profile,
        rank_profile_random_weights: random_profile,
    };
    if let Some(p) = &a.output {
        let bytes = tessera_model::export::export_model(&eval)?;
        std::fs::write(p, bytes).map_err(|source| CliError::Io {
            path: p.display().to_string(),
            source,
        })?;
    }
    if a.json {
        return print_json(&report);
    }
    if a.dataset == "mnist" {
        println!(
            "note: the shared MNIST folder holds the 10,000 test images only; the first {train_n} train, the last {test_n} test"
        );
    }
    let mut tb = Table::new(&["", "value"]);
    tb.row(vec!["scheme".into(), report.scheme.clone()]);
    tb.row(vec![
        "held-out accuracy".into(),
        format!("{} ({right}/{test_n})", pct(right, test_n)),
    ]);
    tb.row(vec![
        "training time".into(),
        format!("{train_seconds:.1} s"),
    ]);
    tb.row(vec!["step, median".into(), format!("{step_ms:.1} ms")]);
    if let Some(m) = modeled {
        tb.row(vec!["step, modeled in SGX1".into(), format!("{m:.1} ms")]);
    }
    tb.row(vec![
        "worker time".into(),
        format!("{:.1} s", report.worker_seconds),
    ]);
    tb.row(vec![
        "trusted share of forward MACs".into(),
        format!("{:.1}%", 100.0 * report.trusted_share_forward),
    ]);
    if let Some(e) = report.mean_residual_energy {
        tb.row(vec!["mean residual energy".into(), format!("{e:.3}")]);
    }
    println!("{}", tb.render());
    print_profiles(&report);
    Ok(())
}

/// Ranks per layer for each energy threshold, trained against random weights.
fn print_profiles(r: &Report) {
    let (t, x) = (&r.rank_profile_trained, &r.rank_profile_random_weights);
    let taus: Vec<String> = t.thresholds.iter().map(|v| format!("τ={v}")).collect();
    let mut head = vec!["layer".to_string(), "placement".into(), "full rank".into()];
    head.extend(taus.iter().map(|s| format!("rank {s} trained / random")));
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    let mut tb = Table::new(&head);
    for (a, b) in t.layers.iter().zip(&x.layers) {
        let mut row = vec![
            a.layer.clone(),
            a.placement.clone(),
            a.full_rank.to_string(),
        ];
        row.extend(
            a.ranks
                .iter()
                .zip(&b.ranks)
                .map(|(p, q)| format!("{p} / {q}")),
        );
        tb.row(row);
    }
    let mut row = vec!["trusted share".into(), String::new(), String::new()];
    row.extend(
        t.trusted_share
            .iter()
            .zip(&x.trusted_share)
            .map(|(p, q)| format!("{:.1}% / {:.1}%", 100.0 * p, 100.0 * q)),
    );
    tb.row(row);
    println!(
        "rank each layer's input needs to keep ‖R‖²/‖X‖² ≤ τ (median over {} held-out images), the trained network against the same architecture with random weights:\n{}",
        t.samples,
        tb.render()
    );
}
