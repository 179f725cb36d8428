//! `tessera train`: train a small CNN through the asym split, or whole in the enclave (`tee`).

use crate::{CliError, Result, Table, pct, print_json, progress};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tessera_asym::{
    AsymOptions, Basis, LocalWorker, RankRule, Target, TrainOptions, Trainer, rebatch,
};
use tessera_data::{Dataset, load_mnist_dir, synth};
use tessera_engine::{argmax, run_f32};
use tessera_model::{Graph, Tensor, builders};
use tessera_runtime::cost::{Footprint, SGX1, model_request};

/// `tessera train`.
#[derive(Args)]
pub struct TrainArgs {
    /// asym (low-rank split, worker threads in this process) or tee (the whole network in the
    /// enclave).
    #[arg(long, default_value = "asym")]
    scheme: String,
    /// mnist (from --data; the first 8,000 images train, the last 2,000 test), digits (the UCI
    /// 8×8 digits from --digits; 1,500 train, 297 test), mnist-rgb32 (MNIST as a CIFAR-shaped
    /// 3×32×32 set: each digit centred and coloured), or glyphs (generated: needs nothing outside
    /// the repository).
    #[arg(long, default_value = "mnist", value_parser = ["mnist", "digits", "mnist-rgb32", "glyphs"])]
    dataset: String,
    /// Network: cnn (conv 16 5×5, pool, conv 32 5×5, pool, dense 128, dense 10), vgg (conv 32,
    /// 32, pool, 64, 64, pool, 128, global average pool, dense) or resnet (conv 32, a residual
    /// block, pool, conv 64, a residual block, global average pool, dense).
    #[arg(long, default_value = "cnn", value_parser = ["cnn", "vgg", "resnet"])]
    arch: String,
    /// vgg and resnet: multiply every channel count by this (2: 64 … 256 channels).
    #[arg(long, default_value_t = 1)]
    width: usize,
    /// MNIST directory.
    #[arg(long, default_value = "../shared/data/mnist-t10k")]
    data: PathBuf,
    /// The digits file (scikit-learn's digits.csv, optionally gzip'd).
    #[arg(long, default_value = "../shared/data/sklearn-datasets/digits.csv.gz")]
    digits: PathBuf,
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
    /// Rank selection by a global target: per-layer ranks (and which layers stay whole) that
    /// keep at most this fraction of the multiply-adds in the enclave with the least residual
    /// energy, chosen again at the start of every epoch on two training batches (e.g. 0.09).
    #[arg(long, value_name = "S")]
    trusted_share: Option<f64>,
    /// Rank selection the other way round: per-layer ranks with an estimated residual energy
    /// ‖R‖²/‖X‖² ≤ E each, at the least trusted work (e.g. 0.1); chosen like --trusted-share.
    #[arg(long, value_name = "E")]
    energy: Option<f64>,
    /// Instead of a calibrated choice: pick the rank for every decomposed matrix as it comes,
    /// the smallest with ‖R‖²/‖X‖² ≤ E exactly (at most 32).
    #[arg(long, value_name = "E")]
    adaptive_energy: Option<f32>,
    /// One low-rank basis per sample (AsymML's form) or per batch (the fold W·U paid once per
    /// batch; see ARCHITECTURE.md for what the worker then sees).
    #[arg(long, default_value = "sample", value_parser = ["sample", "batch"])]
    basis: String,
    /// Gaussian noise σ added to every residual (the DP variant).
    #[arg(long, default_value_t = 0.0)]
    noise: f32,
    /// After training, the held-out accuracy through the split with residual noise of each of
    /// these σ (comma-separated, e.g. 0.05,0.1,0.2).
    #[arg(long, value_delimiter = ',', value_name = "SIGMAS")]
    noise_eval: Vec<f32>,
    /// After training, measure batch 1 and the training batch, inference and a training step,
    /// split and unsplit, and model the speed-up over tee with a GPU worker.
    #[arg(long)]
    figures: bool,
    /// --figures: how much faster than these cores the modeled GPU worker is.
    #[arg(long, default_value_t = 50.0, value_name = "G")]
    gpu_speedup: f64,
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

/// The data set and how many of its images train (the rest are held out).
pub(crate) fn training_data(a: &TrainArgs) -> Result<(Dataset, usize)> {
    Ok(match a.dataset.as_str() {
        "mnist" => (load_mnist_dir(&a.data)?, 8000usize),
        "mnist-rgb32" => (
            load_mnist_dir(&a.data)?
                .tinted_rgb32(0x7e55)
                .map_err(usage)?,
            8000,
        ),
        "digits" => (tessera_data::load_digits(&a.digits)?, 1500),
        _ => (synth::glyphs(6000, 21), 5000),
    })
}

#[derive(Serialize)]
struct Report {
    scheme: String,
    dataset: String,
    arch: String,
    basis: String,
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
    /// The last rank selection (--trusted-share / --energy), per layer.
    selection: Option<tessera_asym::Selection>,
    /// Held-out accuracy through the split with residual noise σ, per σ of --noise-eval.
    noise_accuracy: Vec<(f32, f64)>,
    /// --figures.
    figures: Option<crate::asym_figures::Figures>,
    /// Ranks per layer for ‖R‖²/‖X‖² ≤ 0.1, 0.05, 0.01 on held-out images, trained network.
    rank_profile_trained: tessera_asym::RankProfile,
    /// The same for the architecture with random (He) weights.
    rank_profile_random_weights: tessera_asym::RankProfile,
}

pub(crate) fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Images `idx` of `d` as one batch `[n, C, rows, cols]` scaled to [0, 1], and their labels.
pub(crate) fn batch_of(d: &Dataset, idx: &[usize]) -> Result<(Tensor, Vec<usize>)> {
    let n = d.channels * d.rows * d.cols;
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
    Ok((
        Tensor::new(vec![idx.len(), d.channels, d.rows, d.cols], x)?,
        labels,
    ))
}

/// How the split chooses its ranks.
enum Ranks {
    Rule(RankRule),
    Select(Target),
}

fn rank_choice(a: &TrainArgs) -> Result<Ranks> {
    let given = [
        a.rank.is_some(),
        a.trusted_share.is_some(),
        a.energy.is_some(),
        a.adaptive_energy.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(usage(
            "give one of --rank, --trusted-share, --energy and --adaptive-energy",
        ));
    }
    Ok(
        match (a.rank, a.trusted_share, a.energy, a.adaptive_energy) {
            (Some(r), ..) => Ranks::Rule(RankRule::Fixed(r)),
            (_, Some(s), ..) => Ranks::Select(Target::TrustedShare(s)),
            (_, _, Some(e), _) => Ranks::Select(Target::Energy(e)),
            (.., Some(e)) => Ranks::Rule(RankRule::Energy {
                threshold: e,
                max_rank: 32,
            }),
            _ => Ranks::Rule(RankRule::Schedule { start: 2, cap: 32 }),
        },
    )
}

/// Choose ranks for `target` on `calib` (batches shaped as `g`'s input).
pub(crate) fn choose_ranks(
    g: &Graph,
    calib: &[Tensor],
    opts: &AsymOptions,
    target: Target,
) -> Result<tessera_asym::Selection> {
    let sp = tessera_asym::spectra(g, calib, opts).map_err(usage)?;
    tessera_asym::select(g, &sp, target, opts).map_err(usage)
}

/// Train and report.
pub fn train(a: &TrainArgs) -> Result<()> {
    let (data, train_n) = training_data(a)?;
    if data.rows != data.cols || data.count <= train_n {
        return Err(usage(
            "training needs square images and more than the training split",
        ));
    }
    let batch = a.batch.max(1);
    let ranks = rank_choice(a)?;
    let split_opts = match a.scheme.as_str() {
        "asym" => Some(AsymOptions {
            rank: match &ranks {
                Ranks::Rule(r) => r.clone(),
                // Replaced by the first epoch's selection before any step.
                Ranks::Select(_) => RankRule::Schedule { start: 2, cap: 32 },
            },
            noise_sigma: a.noise,
            basis: if a.basis == "batch" {
                Basis::Batch
            } else {
                Basis::PerSample
            },
            ..AsymOptions::default()
        }),
        "tee" => None,
        other => {
            return Err(usage(format!(
                "train runs --scheme asym or tee, not '{other}'"
            )));
        }
    };
    let selecting = match (&ranks, &split_opts) {
        (Ranks::Select(t), Some(_)) => Some(*t),
        (Ranks::Select(_), None) => {
            return Err(usage(
                "--trusted-share and --energy choose the split's ranks: --scheme asym",
            ));
        }
        _ => None,
    };
    if selecting.is_some() && a.worker.is_some() {
        return Err(usage(
            "--trusted-share and --energy re-plan the split every epoch, which a worker process set up once cannot follow: use worker threads (no --worker) or a fixed --rank",
        ));
    }
    let g = builders::trainable(&a.arch, a.width, batch, data.channels, data.rows, 10)?;
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
    if per_epoch == 0 {
        return Err(usage(format!(
            "no full batch of {batch} in the {} training images",
            a.limit.unwrap_or(train_n).min(train_n)
        )));
    }
    let pb = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        progress(
            (a.epochs * per_epoch / batch) as u64,
            &format!("train {} {}", a.scheme, a.arch),
        )
    };
    let t0 = Instant::now();
    let mut steps_ms = Vec::new();
    let mut worker_time = Duration::ZERO;
    let (mut trusted, mut unsplit) = (0u64, 0u64);
    let (mut energy, mut energy_n) = (0f64, 0usize);
    let mut selection = None;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..a.epochs {
        let mut order: Vec<usize> = (0..train_n).collect();
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        if let (Some(target), Some(o)) = (selecting, &split_opts) {
            // Ranks for this epoch, from two of its batches through the current weights.
            let calib = order
                .chunks_exact(batch)
                .take(2)
                .map(|c| batch_of(&data, c).map(|b| b.0))
                .collect::<Result<Vec<_>>>()?;
            let sel = choose_ranks(t.graph(), &calib, o, target)?;
            t.set_rank_rule(sel.rule()).map_err(usage)?;
            worker = LocalWorker::new(t.plan().worker_layers());
            selection = Some(sel);
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
    let held_out: Vec<usize> = (train_n..data.count).collect();
    let mut noise_accuracy = Vec::new();
    for &sigma in &a.noise_eval {
        let o = AsymOptions {
            noise_sigma: sigma,
            ..split_opts.clone().unwrap_or_default()
        };
        let acc =
            crate::asym_figures::split_accuracy(t.graph(), &o, selecting, &data, &held_out, batch)?;
        noise_accuracy.push((sigma, acc));
    }
    let figures = if a.figures {
        let o = split_opts.clone().unwrap_or_default();
        Some(crate::asym_figures::measure(
            t.graph(),
            &o,
            selecting,
            &data,
            train_n,
            batch,
            a.gpu_speedup,
            (a.lr, a.momentum),
        )?)
    } else {
        None
    };
    // How low-rank the trained network's activations are, against the same architecture with
    // random weights, on up to 32 held-out images.
    let samples: Vec<Tensor> = (train_n..data.count.min(train_n + 32))
        .map(|i| batch_of(&data, &[i]).map(|b| b.0))
        .collect::<Result<_>>()?;
    let thresholds = [0.1f32, 0.05, 0.01];
    let profile_opts = AsymOptions {
        basis: Basis::PerSample,
        ..split_opts.clone().unwrap_or_default()
    };
    let trained_profile =
        tessera_asym::rank_profile(&eval, &samples, &thresholds, &profile_opts).map_err(usage)?;
    let random_profile = tessera_asym::rank_profile(
        &builders::trainable(&a.arch, a.width, 1, data.channels, data.rows, 10)?,
        &samples,
        &thresholds,
        &profile_opts,
    )
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
        arch: a.arch.clone(),
        basis: a.basis.clone(),
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
        selection,
        noise_accuracy,
        figures,
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
    if a.dataset.starts_with("mnist") {
        println!(
            "note: the shared MNIST folder holds the 10,000 test images only; the first {train_n} train, the last {test_n} test"
        );
    }
    let mut tb = Table::new(&["", "value"]);
    tb.row(vec![
        "scheme, network".into(),
        format!(
            "{}{}, {}{} on {}",
            report.scheme,
            if report.scheme == "asym" {
                format!(" ({} basis)", a.basis)
            } else {
                String::new()
            },
            a.arch,
            if a.width > 1 {
                format!(" ×{}", a.width)
            } else {
                String::new()
            },
            a.dataset
        ),
    ]);
    tb.row(vec![
        "held-out accuracy".into(),
        format!("{} ({right}/{test_n})", pct(right, test_n)),
    ]);
    for (s, acc) in &report.noise_accuracy {
        tb.row(vec![
            format!("held-out accuracy through the split, noise σ = {s}"),
            format!("{:.2}%", 100.0 * acc),
        ]);
    }
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
    if let Some(sel) = &report.selection {
        println!(
            "{}",
            crate::asym_figures::selection_text(
                sel,
                "the last epoch's, estimated on two of its training batches"
            )
        );
    }
    if let Some(f) = &report.figures {
        crate::asym_figures::print(f);
    }
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
