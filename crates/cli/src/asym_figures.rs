//! `tessera train --figures` and `--noise-eval`: the asym split of a trained network measured
//! at batch 1 and at the training batch, inference and a training step, split and unsplit on
//! these cores, with the modeled speed-up over `tee` for a GPU worker; and the held-out
//! accuracy through the split with residual noise.
//!
//! The model: in a TEE a pass runs `S` times slower than here (DESIGN §2.6: 16× inference, 26×
//! training), plus the runtime cost model's EPC paging of the enclave's working set
//! ([`tessera_asym::Plan::enclave_bytes`]) and one exit per message to the worker; the worker's
//! time is divided by the stated GPU speed-up `G`. `tee` = unsplit × S (+ paging of the whole
//! network's working set); `asym` = enclave × S (+ its paging and exits) + worker ÷ G. The
//! transfer of residuals to the GPU is not modeled.

use crate::train_cmd::{batch_of, usage};
use crate::{Result, Table};
use serde::Serialize;
use std::time::Duration;
use tessera_asym::{
    AsymOptions, LocalWorker, Plan, Selection, TrainOptions, Trainer, infer, rebatch,
};
use tessera_data::Dataset;
use tessera_engine::argmax;
use tessera_model::Graph;
use tessera_runtime::cost::{Footprint, SGX1, model_request};

/// In-enclave slowdown of inference and of training (DESIGN §2.6).
pub const SLOWDOWN: (f64, f64) = (16.0, 26.0);

/// One measured configuration.
#[derive(Clone, Debug, Serialize)]
pub struct FigureRow {
    /// Images per pass.
    pub batch: usize,
    /// `inference` or `training step`.
    pub pass: &'static str,
    /// Median time of the whole network in the enclave process (the TEE-only baseline).
    pub unsplit_ms: f64,
    /// Median time of the split pass (enclave + worker on the same cores).
    pub split_ms: f64,
    /// Of it, the enclave's part (the split pass minus the time inside worker calls).
    pub enclave_ms: f64,
    /// The worker's part.
    pub worker_ms: f64,
    /// Forward multiply-adds in the enclave over the unsplit network's.
    pub trusted_share_macs: f64,
    /// Enclave time over the unsplit time.
    pub trusted_share_time: f64,
    /// Mean residual energy over the split layers.
    pub mean_energy: f64,
    /// Estimated enclave memory, split and unsplit, in MB.
    pub enclave_mb: f64,
    /// The unsplit network's memory in the enclave, MB.
    pub tee_mb: f64,
    /// Modeled `tee` time.
    pub modeled_tee_ms: f64,
    /// Modeled `asym` time with a GPU worker.
    pub modeled_asym_ms: f64,
    /// Their ratio.
    pub modeled_speedup: f64,
    /// Inference: the enclave's time split into decomposition, low-rank products, layers kept
    /// whole and every other op (medians, ms).
    pub enclave_parts_ms: Option<[f64; 4]>,
}

/// One layer at the training batch, inference.
#[derive(Clone, Debug, Serialize)]
pub struct LayerFigure {
    /// Node name.
    pub layer: String,
    /// `split` or why whole.
    pub placement: String,
    /// Mean kept rank.
    pub rank: f64,
    /// Measured residual energy.
    pub energy: f64,
    /// The layer's trusted share of its multiply-adds.
    pub trusted_share: f64,
}

/// Everything `--figures` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    /// The stated GPU speed-up G.
    pub gpu_speedup: f64,
    /// S for inference and training.
    pub slowdown: (f64, f64),
    /// Per batch and pass.
    pub rows: Vec<FigureRow>,
    /// Per layer, inference at the training batch.
    pub layers: Vec<LayerFigure>,
}

fn median(v: &mut [f64]) -> f64 {
    tessera_schemes::median(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The options to split `g` (at its own batch) with: `opts`, with the rank selection redone on
/// two batches of training images when `select` is set.
pub(crate) fn options_at(
    g: &Graph,
    opts: &AsymOptions,
    select: Option<tessera_asym::Target>,
    data: &Dataset,
) -> Result<(AsymOptions, Option<Selection>)> {
    let Some(target) = select else {
        return Ok((opts.clone(), None));
    };
    let b = g
        .inputs
        .first()
        .and_then(|&i| g.shape(i).first().copied())
        .unwrap_or(1);
    let calib = (0..2)
        .map(|c| batch_of(data, &(c * b..(c + 1) * b).collect::<Vec<_>>()).map(|x| x.0))
        .collect::<Result<Vec<_>>>()?;
    let sel = crate::train_cmd::choose_ranks(g, &calib, opts, target)?;
    Ok((
        AsymOptions {
            rank: sel.rule(),
            ..opts.clone()
        },
        Some(sel),
    ))
}

/// Held-out accuracy of `g` through the split with `opts` (noise included), in batches.
pub(crate) fn split_accuracy(
    g: &Graph,
    opts: &AsymOptions,
    select: Option<tessera_asym::Target>,
    data: &Dataset,
    idx: &[usize],
    batch: usize,
) -> Result<f64> {
    let mut right = 0usize;
    let mut cache: Option<(usize, Plan, LocalWorker)> = None;
    for (step, chunk) in idx.chunks(batch.max(1)).enumerate() {
        if cache.as_ref().map(|c| c.0) != Some(chunk.len()) {
            let gb = rebatch(g, chunk.len()).map_err(usage)?;
            let (o, _) = options_at(&gb, opts, select, data)?;
            let plan = Plan::new(&gb, &o).map_err(usage)?;
            let w = LocalWorker::new(plan.worker_layers());
            cache = Some((chunk.len(), plan, w));
        }
        let Some((_, plan, w)) = cache.as_mut() else {
            continue;
        };
        let (x, labels) = batch_of(data, chunk)?;
        let out = infer(plan, &x, Some(w), step as u64).map_err(usage)?;
        let y = out
            .outputs
            .first()
            .ok_or_else(|| usage("the model has no output"))?;
        let classes = y.len() / chunk.len().max(1);
        for (i, l) in labels.iter().enumerate() {
            let row = y.data().get(i * classes..(i + 1) * classes).unwrap_or(&[]);
            right += usize::from(argmax(row) == *l);
        }
    }
    Ok(right as f64 / idx.len().max(1) as f64)
}

fn modeled(bytes: u64, time_ms: f64, io: u64) -> f64 {
    let fp = Footprint {
        weight_bytes: bytes,
        activation_bytes: 0,
    };
    model_request(&SGX1, &fp, Duration::from_secs_f64(time_ms / 1e3), io).modeled_ns as f64 / 1e6
}

/// Measure the trained `g` (any batch) split with `opts` at batch 1 and `batch`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn measure(
    g: &Graph,
    opts: &AsymOptions,
    select: Option<tessera_asym::Target>,
    data: &Dataset,
    train_n: usize,
    batch: usize,
    gpu: f64,
    (lr, momentum): (f32, f32),
) -> Result<Figures> {
    if !(gpu.is_finite() && gpu > 0.0) {
        return Err(usage("--gpu-speedup must be a positive number"));
    }
    let mut rows = Vec::new();
    let mut layers = Vec::new();
    let mut sizes = vec![1usize];
    if batch > 1 {
        sizes.push(batch);
    }
    const REPS: usize = 5;
    for &b in &sizes {
        let gb = rebatch(g, b).map_err(usage)?;
        let (o, _) = options_at(&gb, opts, select, data)?;
        let plan = Plan::new(&gb, &o).map_err(usage)?;
        let whole = Plan::enclave_only(&gb).map_err(usage)?;
        let mut w = LocalWorker::new(plan.worker_layers());
        let held = |r: usize| -> Result<(tessera_model::Tensor, Vec<usize>)> {
            let start = train_n + (r * b) % (data.count - train_n).max(1);
            let idx: Vec<usize> = (0..b)
                .map(|i| start + i)
                .map(|i| i.min(data.count - 1))
                .collect();
            batch_of(data, &idx)
        };
        // Inference.
        let (mut un, mut sp, mut wk) = (Vec::new(), Vec::new(), Vec::new());
        let mut pieces: [Vec<f64>; 4] = Default::default();
        let mut last = None;
        for r in 0..=REPS {
            let (x, _) = held(r)?;
            let a = infer(&whole, &x, None, r as u64).map_err(usage)?;
            let s = infer(&plan, &x, Some(&mut w), r as u64).map_err(usage)?;
            if r > 0 {
                un.push(ms(a.total_time));
                sp.push(ms(s.total_time));
                wk.push(ms(s.worker_time));
                let e = s.enclave_time;
                for (v, d) in pieces
                    .iter_mut()
                    .zip([e.split, e.combine, e.whole, e.other])
                {
                    v.push(ms(d));
                }
            }
            last = Some(s);
        }
        let parts = pieces.map(|mut v| median(&mut v));
        let last = last.ok_or_else(|| usage("nothing measured"))?;
        let split_layers = last
            .layers
            .iter()
            .filter(|l| l.placement == "split")
            .count() as u64;
        let (tm, um): (u64, u64) = last
            .layers
            .iter()
            .fold((0, 0), |(t, u), l| (t + l.trusted_macs, u + l.unsplit_macs));
        let ranks: Vec<f64> = last.layers.iter().map(|l| l.rank_mean).collect();
        let energies: Vec<f64> = last
            .layers
            .iter()
            .filter(|l| l.placement == "split")
            .map(|l| l.residual_energy)
            .collect();
        let mean_energy = energies.iter().sum::<f64>() / energies.len().max(1) as f64;
        if b == *sizes.last().unwrap_or(&1) {
            layers = last
                .layers
                .iter()
                .map(|l| LayerFigure {
                    layer: l.name.clone(),
                    placement: l.placement.to_string(),
                    rank: l.rank_mean,
                    energy: l.residual_energy,
                    trusted_share: l.trusted_share(),
                })
                .collect();
        }
        let mut row = |pass: &'static str,
                       un: &mut [f64],
                       sp: &mut [f64],
                       wk: &mut [f64],
                       training: bool,
                       enclave_parts_ms: Option<[f64; 4]>| {
            let (unsplit_ms, split_ms, worker_ms) = (median(un), median(sp), median(wk));
            let enclave_ms = (split_ms - worker_ms).max(0.0);
            let s = if training { SLOWDOWN.1 } else { SLOWDOWN.0 };
            let eb = plan.enclave_bytes(&ranks, training);
            let tb = whole.enclave_bytes(&[], training);
            // One exit to send each residual and one to receive each result (twice more per
            // split layer in training: the gradient and the update).
            let io = split_layers * if training { 4 } else { 2 };
            let modeled_tee_ms = modeled(tb, unsplit_ms * s, 0);
            let modeled_asym_ms = modeled(eb, enclave_ms * s, io) + worker_ms / gpu;
            rows.push(FigureRow {
                batch: b,
                pass,
                unsplit_ms,
                split_ms,
                enclave_ms,
                worker_ms,
                trusted_share_macs: tm as f64 / um.max(1) as f64,
                trusted_share_time: enclave_ms / unsplit_ms.max(1e-9),
                mean_energy,
                enclave_mb: eb as f64 / 1e6,
                tee_mb: tb as f64 / 1e6,
                modeled_tee_ms,
                modeled_asym_ms,
                modeled_speedup: modeled_tee_ms / modeled_asym_ms.max(1e-9),
                enclave_parts_ms,
            });
        };
        row("inference", &mut un, &mut sp, &mut wk, false, Some(parts));
        // A training step (on copies of the trained weights).
        let topts = |split: Option<AsymOptions>| TrainOptions {
            lr,
            momentum,
            split,
        };
        let mut ts = Trainer::new(&gb, topts(Some(o.clone()))).map_err(usage)?;
        let mut tu = Trainer::new(&gb, topts(None)).map_err(usage)?;
        let mut tw = LocalWorker::new(ts.plan().worker_layers());
        let (mut un, mut sp, mut wk) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..=3 {
            let (x, labels) = held(r)?;
            let a = tu.step(&x, &labels, None).map_err(usage)?;
            let s = ts.step(&x, &labels, Some(&mut tw)).map_err(usage)?;
            if r > 0 {
                un.push(ms(a.total_time));
                sp.push(ms(s.total_time));
                wk.push(ms(s.worker_time));
            }
        }
        row("training step", &mut un, &mut sp, &mut wk, true, None);
    }
    Ok(Figures {
        gpu_speedup: gpu,
        slowdown: SLOWDOWN,
        rows,
        layers,
    })
}

/// A rank selection as text: the target, where it was estimated (`source`), and per layer.
pub(crate) fn selection_text(sel: &Selection, source: &str) -> String {
    let mut tb = Table::new(&[
        "layer",
        "rank (0 = whole)",
        "estimated energy",
        "trusted MACs",
    ]);
    for l in &sel.layers {
        tb.row(vec![
            l.layer.clone(),
            l.rank.to_string(),
            format!("{:.3}", l.energy),
            format!(
                "{:.1}%",
                100.0 * l.trusted_macs as f64 / l.macs.max(1) as f64
            ),
        ]);
    }
    format!(
        "rank selection for {} ({source}): trusted share {:.1}%, largest residual energy {:.3}\n{}",
        sel.target,
        100.0 * sel.trusted_share,
        sel.max_energy,
        tb.render()
    )
}

/// Print `--figures`.
pub(crate) fn print(f: &Figures) {
    let mut tb = Table::new(&[
        "batch",
        "pass",
        "unsplit ms",
        "split ms",
        "enclave ms",
        "worker ms",
        "trusted MACs",
        "trusted time",
        "mean energy",
        "enclave MB (tee MB)",
        "modeled tee ms",
        "modeled asym ms",
        "modeled speed-up",
    ]);
    for r in &f.rows {
        tb.row(vec![
            r.batch.to_string(),
            r.pass.into(),
            format!("{:.1}", r.unsplit_ms),
            format!("{:.1}", r.split_ms),
            format!("{:.1}", r.enclave_ms),
            format!("{:.1}", r.worker_ms),
            format!("{:.1}%", 100.0 * r.trusted_share_macs),
            format!("{:.1}%", 100.0 * r.trusted_share_time),
            format!("{:.3}", r.mean_energy),
            format!("{:.1} ({:.1})", r.enclave_mb, r.tee_mb),
            format!("{:.1}", r.modeled_tee_ms),
            format!("{:.1}", r.modeled_asym_ms),
            format!("{:.2}×", r.modeled_speedup),
        ]);
    }
    println!(
        "the split measured on these cores (median of 5 inferences, 3 training steps, held-out images) and modeled in SGX1 with a GPU worker {}× faster than these cores (in-enclave slowdown {}× inference, {}× training; EPC paging from the cost model; residual transfer not modeled):\n{}",
        f.gpu_speedup,
        f.slowdown.0,
        f.slowdown.1,
        tb.render()
    );
    let mut pt = Table::new(&[
        "batch",
        "decomposition ms",
        "low-rank products ms",
        "layers kept whole ms",
        "other ops ms",
    ]);
    for r in &f.rows {
        if let Some(p) = r.enclave_parts_ms {
            let mut row = vec![r.batch.to_string()];
            row.extend(p.iter().map(|v| format!("{v:.1}")));
            pt.row(row);
        }
    }
    println!("where the enclave's inference time goes:\n{}", pt.render());
    let mut lt = Table::new(&[
        "layer",
        "placement",
        "rank",
        "residual energy",
        "trusted MACs",
    ]);
    for l in &f.layers {
        lt.row(vec![
            l.layer.clone(),
            l.placement.clone(),
            format!("{:.1}", l.rank),
            format!("{:.3}", l.energy),
            format!("{:.1}%", 100.0 * l.trusted_share),
        ]);
    }
    println!(
        "per layer, inference at the training batch:\n{}",
        lt.render()
    );
}
