//! The enclave's side of the forward pass: decomposition of each split layer's input, the
//! low-rank part of the layer (`conv(V, W·U)` without bias), every non-linear op, and the layers
//! that stay in the enclave (the classifier head among them).

use crate::AsymError;
use crate::decompose::{LowRank, SplitMix, decompose_blocks};
use crate::kernels::{ConvShape, conv_accumulate, conv_forward, dense_forward};
use crate::plan::{LinearKind, LinearLayer, Placement, Plan};
use crate::worker::WorkerLink;
use rayon::prelude::*;
use std::time::{Duration, Instant};
use tessera_engine::gemm::{View, sgemm};
use tessera_model::Tensor;
use tessera_model::ir::Op;

/// What one linear layer did in one forward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRun {
    /// Layer id.
    pub id: usize,
    /// Node name.
    pub name: String,
    /// "split", or why it stayed in the enclave ("head", "full-rank", "grouped", "enclave").
    pub placement: &'static str,
    /// Mean kept rank over the decomposed matrices (0 when not split).
    pub rank_mean: f64,
    /// Largest kept rank.
    pub rank_max: usize,
    /// Mean residual energy `‖R‖²/‖X‖²` (0 when not split).
    pub residual_energy: f64,
    /// Multiply-adds in the enclave (decomposition, folding, low-rank layer; or the whole
    /// layer when not split).
    pub trusted_macs: u64,
    /// Multiply-adds on the worker (the full-size layer on the residual).
    pub untrusted_macs: u64,
    /// Multiply-adds of the unsplit layer.
    pub unsplit_macs: u64,
}

impl LayerRun {
    /// Trusted multiply-adds relative to the unsplit layer.
    pub fn trusted_share(&self) -> f64 {
        if self.unsplit_macs == 0 {
            0.0
        } else {
            self.trusted_macs as f64 / self.unsplit_macs as f64
        }
    }
}

/// The low-rank factors the enclave keeps for a split layer's backward pass.
#[derive(Clone, Debug)]
pub struct LowRankState {
    /// Per decomposed matrix (per sample for a per-sample conv basis; one otherwise): `U`
    /// (`rows × k`) and `V`, row-major, with `k`. `V` is `k × cols`, except under a batch conv
    /// basis, where it is stored per sample as `[N, k, H·W]` (the layout the batched low-rank
    /// convolution and its weight gradient read).
    pub factors: Vec<(usize, Vec<f32>, Vec<f32>)>,
}

/// A split layer between [`enclave_split`] and [`enclave_combine`].
#[derive(Debug)]
pub struct Pending {
    layer: usize,
    state: LowRankState,
    energy: Vec<f64>,
    out_shape: Vec<usize>,
}

impl Pending {
    /// The layer id whose worker output this waits for.
    pub fn layer(&self) -> usize {
        self.layer
    }
}

pub(crate) fn placement_name(p: &Placement) -> &'static str {
    use crate::plan::EnclaveReason::*;
    match p {
        Placement::Split(_) => "split",
        Placement::Enclave(Head) => "head",
        Placement::Enclave(FullRank) => "full-rank",
        Placement::Enclave(Grouped) => "grouped",
        Placement::Enclave(NoGain) => "no-gain",
        Placement::Enclave(Baseline) => "enclave",
        Placement::Enclave(Chosen) => "chosen-whole",
    }
}

fn seed_for(base: u64, layer: usize, sample: usize, step: u64, salt: u64) -> u64 {
    let mut m = SplitMix::new(
        base ^ (layer as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (sample as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ step.wrapping_mul(0x1656_67B1_9E37_79F9)
            ^ salt,
    );
    m.next_u64()
}

/// A standard normal deviate from `rng` (Box–Muller).
fn gauss(rng: &mut impl rand::Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn layer_of(plan: &Plan, id: usize) -> Result<&LinearLayer, AsymError> {
    plan.layers
        .get(id)
        .ok_or_else(|| AsymError::Protocol(format!("no layer {id} in the plan")))
}

fn out_shape_of(plan: &Plan, l: &LinearLayer) -> Vec<usize> {
    plan.graph
        .nodes
        .get(l.node)
        .map(|n| plan.graph.shape(n.output).to_vec())
        .unwrap_or_default()
}

/// Enclave, first half of a split layer: decompose its input `x` (per sample `C × H·W` for a
/// conv, the batch `N × K` for a dense layer), keep `U` and `V`, and return the residual to send
/// to the worker (with the plan's Gaussian noise added, if any). `step` varies the sketches and
/// the noise between calls (a counter).
pub fn enclave_split(
    plan: &Plan,
    layer: usize,
    x: &Tensor,
    step: u64,
) -> Result<(Tensor, Pending), AsymError> {
    let l = layer_of(plan, layer)?;
    let Placement::Split(spec) = l.placement else {
        return Err(AsymError::Protocol(format!(
            "layer '{}' is not split",
            l.name
        )));
    };
    let (rows, cols) = l.matrix();
    let per = rows * cols;
    let mats = l.matrices();
    if x.len() != per * mats {
        return Err(AsymError::Shape(format!(
            "layer '{}' expects {} input values, got {}",
            l.name,
            per * mats,
            x.len()
        )));
    }
    let opts = &plan.opts;
    // A batch conv basis decomposes the batch as one `C × N·H·W` matrix, read in place as
    // the N blocks `[C, H·W]` of the input (V and R come back per sample).
    let (blocks, bcols) = match l.kind {
        LinearKind::Conv(s) if l.shared_basis => (l.batch, s.hw()),
        _ => (1, cols),
    };
    let parts: Vec<LowRank> = (0..mats)
        .into_par_iter()
        .map(|b| {
            decompose_blocks(
                &x.data()[b * per..(b + 1) * per],
                blocks,
                rows,
                bcols,
                spec,
                &opts.decomp,
                seed_for(opts.seed, layer, b, step, 1),
            )
        })
        .collect::<Result<_, _>>()?;
    let mut residual = Vec::with_capacity(per * mats);
    let mut factors = Vec::with_capacity(mats);
    let mut energy = Vec::with_capacity(mats);
    for p in parts {
        if opts.noise_sigma > 0.0 {
            // The noise is drawn here, from the OS-seeded CSPRNG, for every residual afresh:
            // nothing the worker holds (the options, the layer, the step) determines it, so the
            // worker cannot regenerate and subtract it.
            let mut rng = rand::rng();
            let s = f64::from(opts.noise_sigma);
            residual.extend(p.residual.iter().map(|&r| r + (s * gauss(&mut rng)) as f32));
        } else if mats == 1 {
            residual = p.residual;
        } else {
            residual.extend_from_slice(&p.residual);
        }
        energy.push(p.energy);
        factors.push((p.rank, p.u, p.v));
    }
    let residual = Tensor::new(x.shape().to_vec(), residual)?;
    Ok((
        residual,
        Pending {
            layer,
            state: LowRankState { factors },
            energy,
            out_shape: out_shape_of(plan, l),
        },
    ))
}

/// The weight folded to `k` virtual input channels, `W·U` as `[co, k·kk]` (`w` is `co × c·kk`).
fn fold_weight(s: &ConvShape, w: &[f32], k: usize, u: &[f32]) -> Vec<f32> {
    let kk = s.kk();
    // Wt: [c, co·kk] (the weight with its input channel first).
    let mut wt = vec![0f32; s.c * s.co * kk];
    for o in 0..s.co {
        for c in 0..s.c {
            let src = &w[(o * s.c + c) * kk..(o * s.c + c + 1) * kk];
            wt[(c * s.co + o) * kk..(c * s.co + o + 1) * kk].copy_from_slice(src);
        }
    }
    // F = Uᵀ·Wt: [k, co·kk].
    let mut f = vec![0f32; k * s.co * kk];
    sgemm(
        k,
        s.c,
        s.co * kk,
        1.0,
        View::transposed(u, k),
        View::rows(&wt, s.co * kk),
        0.0,
        &mut f,
    );
    // Folded weight [co, k·kk].
    let mut wf = vec![0f32; s.co * k * kk];
    for j in 0..k {
        for o in 0..s.co {
            wf[(o * k + j) * kk..(o * k + j + 1) * kk]
                .copy_from_slice(&f[(j * s.co + o) * kk..(j * s.co + o + 1) * kk]);
        }
    }
    wf
}

/// The low-rank part of a conv for one sample: `conv(V, W·U)` with `W·U` the weights folded to
/// `k` virtual input channels. `w` is `co × c·kk`.
fn conv_lowrank(s: &ConvShape, w: &[f32], k: usize, u: &[f32], v: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    if k == 0 {
        return;
    }
    let wf = fold_weight(s, w, k, u);
    conv_forward(v, 1, &s.with_channels(k), |_| &wf, None, out);
}

/// Enclave, second half: compute the low-rank part of the layer from the kept factors, add the
/// worker's `L(R)` (which carries the bias), and return the layer's output, the factors (for
/// training) and the layer's report.
pub fn enclave_combine(
    plan: &Plan,
    pending: Pending,
    worker_out: Tensor,
) -> Result<(Tensor, LowRankState, LayerRun), AsymError> {
    let l = layer_of(plan, pending.layer)?;
    if worker_out.shape() != pending.out_shape.as_slice() {
        return Err(AsymError::Shape(format!(
            "worker output for '{}' has shape {:?}, expected {:?}",
            l.name,
            worker_out.shape(),
            pending.out_shape
        )));
    }
    if let Some(i) = worker_out.data().iter().position(|v| !v.is_finite()) {
        return Err(AsymError::Protocol(format!(
            "worker output for '{}' has a non-finite value at {i}",
            l.name
        )));
    }
    let node = plan
        .graph
        .nodes
        .get(l.node)
        .ok_or_else(|| AsymError::Protocol("layer without node".into()))?;
    let (_, mut y) = worker_out.into_parts();
    let factors = &pending.state.factors;
    match (&node.op, l.kind) {
        (Op::Conv(c), LinearKind::Conv(s)) if l.shared_basis => {
            // One basis for the batch: fold once, one batched k-channel convolution.
            if let Some((k, u, v)) = factors.first()
                && *k > 0
            {
                let wf = fold_weight(&s, c.weight.data(), *k, u);
                conv_accumulate(v, l.batch, &s.with_channels(*k), &wf, &mut y);
            }
        }
        (Op::Conv(c), LinearKind::Conv(s)) => {
            let w = c.weight.data();
            let per = s.co * s.ohw();
            let low: Vec<Vec<f32>> = factors
                .par_iter()
                .map(|(k, u, v)| {
                    let mut o = vec![0f32; per];
                    conv_lowrank(&s, w, *k, u, v, &mut o);
                    o
                })
                .collect();
            for (yc, lc) in y.chunks_mut(per.max(1)).zip(&low) {
                for (a, b) in yc.iter_mut().zip(lc) {
                    *a += b;
                }
            }
        }
        (Op::Dense(d), LinearKind::Dense { k: kin, m }) => {
            if let Some((k, u, v)) = factors.first()
                && *k > 0
            {
                let p = dense_forward(v, *k, kin, d.weight.data(), m, None);
                sgemm(
                    l.batch,
                    *k,
                    m,
                    1.0,
                    View::rows(u, *k),
                    View::rows(&p, m),
                    1.0,
                    &mut y,
                );
            }
        }
        _ => return Err(AsymError::Protocol("layer kind and node disagree".into())),
    }
    let ranks: Vec<usize> = factors.iter().map(|f| f.0).collect();
    let nmat = ranks.len().max(1);
    let trusted = l.trusted_macs(&ranks, &plan.opts.decomp);
    let untrusted = l.macs();
    let run = LayerRun {
        id: l.id,
        name: l.name.clone(),
        placement: "split",
        rank_mean: ranks.iter().sum::<usize>() as f64 / nmat as f64,
        rank_max: ranks.iter().copied().max().unwrap_or(0),
        residual_energy: pending.energy.iter().sum::<f64>() / nmat as f64,
        trusted_macs: trusted,
        untrusted_macs: untrusted,
        unsplit_macs: l.macs(),
    };
    Ok((Tensor::new(pending.out_shape, y)?, pending.state, run))
}

/// The result of a forward pass.
#[derive(Debug)]
pub struct Forward {
    /// Every value (only the outputs unless recorded for training).
    pub(crate) vals: Vec<Option<Tensor>>,
    /// Low-rank factors per layer id (recorded passes only).
    pub(crate) states: Vec<Option<LowRankState>>,
    /// Per linear layer report.
    pub runs: Vec<LayerRun>,
    /// Time spent waiting on the worker (the enclave's idle time).
    pub worker_time: Duration,
    /// Where the enclave's own time went.
    pub enclave_time: EnclaveTime,
    /// Total time.
    pub total_time: Duration,
}

/// Where the enclave's time in a forward pass went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EnclaveTime {
    /// Decomposing the split layers' inputs (and adding noise).
    pub split: Duration,
    /// Folding, the low-rank products, and adding them to the worker's results.
    pub combine: Duration,
    /// Linear layers kept whole (the head among them).
    pub whole: Duration,
    /// Every other op: activations, pooling, residual additions, reshapes.
    pub other: Duration,
}

/// Run the graph: everything in the enclave but the split layers' residual halves.
pub(crate) fn forward(
    plan: &Plan,
    input: &Tensor,
    mut worker: Option<&mut (dyn WorkerLink + '_)>,
    record: bool,
    step: u64,
) -> Result<Forward, AsymError> {
    let t0 = Instant::now();
    let g = &plan.graph;
    let &inp = g
        .inputs
        .first()
        .ok_or_else(|| AsymError::Unsupported("graph has no input".into()))?;
    let want = g.shape(inp).to_vec();
    if input.len() != want.iter().product::<usize>() {
        return Err(AsymError::Input(format!(
            "input must have shape {want:?}, got {:?}",
            input.shape()
        )));
    }
    if let Some(i) = input.data().iter().position(|v| !v.is_finite()) {
        return Err(AsymError::Input(format!("input element {i} is not finite")));
    }
    let last = g.last_uses();
    let mut vals: Vec<Option<Tensor>> = vec![None; g.values.len()];
    vals[inp] = Some(input.clone().reshape(want)?);
    let mut states: Vec<Option<LowRankState>> = vec![None; plan.layers.len()];
    let mut runs = Vec::new();
    let mut worker_time = Duration::ZERO;
    let mut parts = EnclaveTime::default();
    for (k, n) in g.nodes.iter().enumerate() {
        let ins: Vec<&Tensor> = n
            .inputs
            .iter()
            .map(|&i| {
                vals.get(i).and_then(|v| v.as_ref()).ok_or_else(|| {
                    AsymError::Protocol(format!("value {i} missing at node '{}'", n.name))
                })
            })
            .collect::<Result<_, _>>()?;
        let out_shape = g.shape(n.output).to_vec();
        let y = match plan.layer_of_node(k) {
            Some(l) if matches!(l.placement, Placement::Split(_)) && plan.split => {
                let w = worker
                    .as_deref_mut()
                    .ok_or_else(|| AsymError::Protocol("a split plan needs a worker".into()))?;
                let x = ins
                    .first()
                    .ok_or_else(|| AsymError::Protocol("linear layer without input".into()))?;
                let ts = Instant::now();
                let (r, pending) = enclave_split(plan, l.id, x, step)?;
                parts.split += ts.elapsed();
                let tw = Instant::now();
                let wo = w.linear(l.id, r, record)?;
                worker_time += tw.elapsed();
                let tc = Instant::now();
                let (y, st, run) = enclave_combine(plan, pending, wo)?;
                parts.combine += tc.elapsed();
                if record {
                    states[l.id] = Some(st);
                }
                runs.push(run);
                y
            }
            Some(l) => {
                let tl = Instant::now();
                let y = eval_linear_local(&n.op, &ins, &out_shape, l)?;
                parts.whole += tl.elapsed();
                runs.push(LayerRun {
                    id: l.id,
                    name: l.name.clone(),
                    placement: placement_name(&l.placement),
                    rank_mean: 0.0,
                    rank_max: 0,
                    residual_energy: 0.0,
                    trusted_macs: l.macs(),
                    untrusted_macs: 0,
                    unsplit_macs: l.macs(),
                });
                y
            }
            None => {
                let to = Instant::now();
                let y = eval_local(&n.op, &ins, &out_shape).map_err(|e| e.at(&n.name))?;
                parts.other += to.elapsed();
                y
            }
        };
        vals[n.output] = Some(y);
        if !record {
            for &i in &n.inputs {
                if last.get(i) == Some(&k) {
                    vals[i] = None;
                }
            }
        }
    }
    Ok(Forward {
        vals,
        states,
        runs,
        worker_time,
        enclave_time: parts,
        total_time: t0.elapsed(),
    })
}

fn eval_linear_local(
    op: &Op,
    ins: &[&Tensor],
    out_shape: &[usize],
    l: &LinearLayer,
) -> Result<Tensor, AsymError> {
    let x = ins
        .first()
        .ok_or_else(|| AsymError::Protocol("linear layer without input".into()))?;
    let data = match (op, l.kind) {
        (Op::Conv(c), LinearKind::Conv(s)) if c.groups == 1 => {
            let mut out = vec![0f32; l.batch * s.co * s.ohw()];
            conv_forward(
                x.data(),
                l.batch,
                &s,
                |_| c.weight.data(),
                c.bias.as_ref().map(|b| b.data()),
                &mut out,
            );
            out
        }
        (Op::Dense(d), LinearKind::Dense { k, m }) => dense_forward(
            x.data(),
            l.batch,
            k,
            d.weight.data(),
            m,
            d.bias.as_ref().map(|b| b.data()),
        ),
        // A grouped or depthwise convolution stays in the enclave (the plan never splits it:
        // its block-diagonal matrix has no useful low-rank form, and a depthwise layer is a few
        // MACs per output); the float engine's convolution runs it.
        (Op::Conv(c), LinearKind::Conv(_)) if c.groups != 1 => {
            return Ok(tessera_engine::float::eval_op(op, ins, out_shape)?);
        }
        _ => {
            return Err(AsymError::Protocol(format!(
                "layer '{}': the op and its plan disagree",
                l.name
            )));
        }
    };
    Ok(Tensor::new(out_shape.to_vec(), data)?)
}

/// The enclave's non-linear and shape ops: the float engine's own evaluator of each op (one
/// evaluator per op for every float path), the linear layers excepted.
pub(crate) fn eval_local(
    op: &Op,
    ins: &[&Tensor],
    out_shape: &[usize],
) -> Result<Tensor, AsymError> {
    if matches!(op, Op::Conv(_) | Op::Dense(_) | Op::MatMul | Op::Gemm(_)) {
        return Err(AsymError::Unsupported(format!(
            "{} is not a local op",
            op.kind()
        )));
    }
    Ok(tessera_engine::float::eval_op(op, ins, out_shape)?)
}

/// An inference: outputs and the per-layer report.
#[derive(Debug)]
pub struct Inference {
    /// The graph's outputs.
    pub outputs: Vec<Tensor>,
    /// One entry per linear layer.
    pub layers: Vec<LayerRun>,
    /// Time spent in the worker calls.
    pub worker_time: Duration,
    /// Where the enclave's own time went.
    pub enclave_time: EnclaveTime,
    /// Total time.
    pub total_time: Duration,
}

/// Run `plan` on `input`: the enclave drives, `worker` computes the residual halves. A plan
/// from [`Plan::enclave_only`] needs no worker (`None`). `step` varies sketches and noise.
pub fn infer(
    plan: &Plan,
    input: &Tensor,
    worker: Option<&mut (dyn WorkerLink + '_)>,
    step: u64,
) -> Result<Inference, AsymError> {
    let f = forward(plan, input, worker, false, step)?;
    let outputs = plan
        .graph
        .outputs
        .iter()
        .map(|&o| {
            f.vals
                .get(o)
                .cloned()
                .flatten()
                .ok_or_else(|| AsymError::Protocol("output not computed".into()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Inference {
        outputs,
        layers: f.runs,
        worker_time: f.worker_time,
        enclave_time: f.enclave_time,
        total_time: f.total_time,
    })
}
