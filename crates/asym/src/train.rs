//! Training through the split: forward as in inference (recording activations and the low-rank
//! factors), softmax cross-entropy in the enclave, backward with the worker computing each split
//! layer's input gradient and residual weight gradient and the enclave the low-rank weight
//! gradient `Σₙ Uₙ·wgrad(Vₙ, Gₙ)`; SGD with momentum, the same step applied to both copies of
//! the weights.

use crate::AsymError;
use crate::enclave::{LayerRun, LowRankState, forward};
use crate::kernels::{
    ConvShape, conv_bias_grad, conv_input_grad, conv_weight_grad, dense_backward, maxpool_backward,
};
use crate::plan::{AsymOptions, LinearKind, LinearLayer, Placement, Plan, RankRule};
use crate::worker::WorkerLink;
use rayon::prelude::*;
use std::time::{Duration, Instant};
use tessera_engine::gemm::{View, sgemm};
use tessera_engine::window::{im2col, pool_geometry};
use tessera_model::Tensor;
use tessera_model::ir::{BinOp, Graph, Op};

/// Training settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Learning rate.
    pub lr: f32,
    /// Momentum.
    pub momentum: f32,
    /// `Some`: train through the asym split with these options; `None`: everything in the
    /// enclave (the TEE-only baseline, and the reference the split must track).
    pub split: Option<AsymOptions>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            lr: 0.05,
            momentum: 0.9,
            split: Some(AsymOptions::default()),
        }
    }
}

/// What one training step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Mean cross-entropy of the batch (before the update).
    pub loss: f32,
    /// Correct predictions in the batch (before the update).
    pub correct: usize,
    /// Forward report per linear layer.
    pub layers: Vec<LayerRun>,
    /// Time spent in worker calls (forward, backward and update).
    pub worker_time: Duration,
    /// Total time of the step.
    pub total_time: Duration,
}

/// A network under training, split or not.
#[derive(Debug)]
pub struct Trainer {
    plan: Plan,
    opts: TrainOptions,
    velocity: Vec<(Vec<f32>, Vec<f32>)>,
    steps: u64,
}

struct Grads {
    w: Vec<f32>,
    b: Option<Vec<f32>>,
}

fn add_into(slot: &mut Option<Vec<f32>>, g: Vec<f32>) {
    match slot {
        Some(a) => {
            for (x, y) in a.iter_mut().zip(&g) {
                *x += y;
            }
        }
        None => *slot = Some(g),
    }
}

impl Trainer {
    /// Prepare `graph` for training (its batch size is the training batch; see
    /// [`crate::rebatch`]). The graph's output must be the logits, or a Softmax over them.
    pub fn new(graph: &Graph, opts: TrainOptions) -> Result<Self, AsymError> {
        if !(opts.lr.is_finite() && opts.momentum.is_finite()) {
            return Err(AsymError::Options(
                "learning rate and momentum must be finite".into(),
            ));
        }
        let plan = match &opts.split {
            Some(a) => Plan::new(graph, a)?,
            None => Plan::enclave_only(graph)?,
        };
        let velocity = plan
            .layers
            .iter()
            .map(|l| {
                let (w, b) = match plan.graph.nodes.get(l.node).map(|n| &n.op) {
                    Some(Op::Conv(c)) => (c.weight.len(), c.bias.as_ref().map_or(0, Tensor::len)),
                    Some(Op::Dense(d)) => (d.weight.len(), d.bias.as_ref().map_or(0, Tensor::len)),
                    _ => (0, 0),
                };
                (vec![0f32; w], vec![0f32; b])
            })
            .collect();
        Ok(Self {
            plan,
            opts,
            velocity,
            steps: 0,
        })
    }

    /// The plan (placements, ranks, current weights).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The network with its current weights.
    pub fn graph(&self) -> &Graph {
        &self.plan.graph
    }

    /// Re-plan a split trainer with another rank rule (e.g. a new [`crate::select`] choice
    /// between epochs), keeping the weights and the momentum. The placements may change: the
    /// caller must give the worker the new plan's [`Plan::worker_layers`] before the next step.
    /// Errors on a trainer that does not split.
    pub fn set_rank_rule(&mut self, rule: RankRule) -> Result<(), AsymError> {
        let Some(split) = &mut self.opts.split else {
            return Err(AsymError::Options(
                "a trainer without a split has no ranks to set".into(),
            ));
        };
        split.rank = rule;
        self.plan = Plan::new(&self.plan.graph, split)?;
        Ok(())
    }

    /// Change the learning rate for the steps that follow (a schedule), keeping the momentum.
    pub fn set_learning_rate(&mut self, lr: f32) -> Result<(), AsymError> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(AsymError::Options(format!(
                "learning rate {lr} must be positive and finite"
            )));
        }
        self.opts.lr = lr;
        Ok(())
    }

    /// One SGD step on a batch `x` (the graph's input shape) with `labels`. A split trainer
    /// needs its worker (built from `self.plan().worker_layers()`).
    pub fn step(
        &mut self,
        x: &Tensor,
        labels: &[usize],
        mut worker: Option<&mut (dyn WorkerLink + '_)>,
    ) -> Result<StepReport, AsymError> {
        let t0 = Instant::now();
        let step = self.steps;
        self.steps += 1;
        let fwd = forward(&self.plan, x, worker.as_deref_mut(), true, step)?;
        let mut worker_time = fwd.worker_time;
        let g = &self.plan.graph;
        let &out = g
            .outputs
            .first()
            .ok_or_else(|| AsymError::Unsupported("graph has no output".into()))?;
        let producer = g.nodes.iter().rposition(|n| n.output == out);
        let logits_id = match producer.and_then(|p| g.nodes.get(p)) {
            Some(n) if matches!(n.op, Op::Softmax { .. }) => *n
                .inputs
                .first()
                .ok_or_else(|| AsymError::Protocol("softmax without input".into()))?,
            _ => out,
        };
        let logits = fwd
            .vals
            .get(logits_id)
            .and_then(|v| v.as_ref())
            .ok_or_else(|| AsymError::Protocol("logits not computed".into()))?;
        let [n, classes] = <[usize; 2]>::try_from(logits.shape())
            .map_err(|_| AsymError::Unsupported("logits must be [N, classes]".into()))?;
        if labels.len() != n || labels.iter().any(|&y| y >= classes) {
            return Err(AsymError::Input(format!(
                "{} labels for a batch of {n}, each below {classes}",
                labels.len()
            )));
        }
        // Softmax cross-entropy (enclave).
        let mut loss = 0f64;
        let mut correct = 0usize;
        let mut dlogits = vec![0f32; n * classes];
        for (r, &y) in labels.iter().enumerate() {
            let z = &logits.data()[r * classes..(r + 1) * classes];
            let mx = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = z.iter().map(|v| (v - mx).exp()).collect();
            let s: f32 = e.iter().sum();
            loss -= f64::from((e[y] / s).max(1e-30)).ln();
            if tessera_engine::argmax(z) == y {
                correct += 1;
            }
            for c in 0..classes {
                dlogits[r * classes + c] = (e[c] / s - if c == y { 1.0 } else { 0.0 }) / n as f32;
            }
        }
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; g.values.len()];
        grads[logits_id] = Some(dlogits);
        let mut layer_grads: Vec<Option<Grads>> =
            (0..self.plan.layers.len()).map(|_| None).collect();
        let split = self.plan.split;
        let input_id = g.inputs.first().copied();
        let start = g
            .nodes
            .iter()
            .rposition(|nd| nd.output == logits_id)
            .ok_or_else(|| AsymError::Unsupported("the logits are the graph input".into()))?;
        for k in (0..=start).rev() {
            let nd = &g.nodes[k];
            let Some(gy) = grads.get_mut(nd.output).and_then(Option::take) else {
                continue;
            };
            let val = |i: usize| -> Result<&Tensor, AsymError> {
                fwd.vals
                    .get(i)
                    .and_then(|v| v.as_ref())
                    .ok_or_else(|| AsymError::Protocol(format!("value {i} not recorded")))
            };
            let out_shape = g.shape(nd.output).to_vec();
            let &xin = nd
                .inputs
                .first()
                .ok_or_else(|| AsymError::Protocol(format!("node '{}' has no input", nd.name)))?;
            let needs_dx = Some(xin) != input_id && !is_constant(g, xin);
            match self.plan.layer_of_node(k) {
                Some(l) => {
                    let x = val(xin)?;
                    let (lg, dx) = if split && matches!(l.placement, Placement::Split(_)) {
                        let w = worker.as_deref_mut().ok_or_else(|| {
                            AsymError::Protocol("a split trainer needs its worker".into())
                        })?;
                        let tw = Instant::now();
                        let wg = w.backward(
                            l.id,
                            &Tensor::new(out_shape.clone(), gy.clone())?,
                            needs_dx,
                        )?;
                        worker_time += tw.elapsed();
                        let state =
                            fwd.states
                                .get(l.id)
                                .and_then(|s| s.as_ref())
                                .ok_or_else(|| {
                                    AsymError::Protocol(format!(
                                        "no low-rank state for '{}'",
                                        l.name
                                    ))
                                })?;
                        let low = lowrank_weight_grad(l, state, &gy)?;
                        let (_, mut dw) = wg.weight.into_parts();
                        if dw.len() != low.len() {
                            return Err(AsymError::Shape(format!(
                                "worker weight gradient for '{}' has {} values, expected {}",
                                l.name,
                                dw.len(),
                                low.len()
                            )));
                        }
                        for (a, b) in dw.iter_mut().zip(&low) {
                            *a += b;
                        }
                        let dx = match wg.input {
                            Some(t) if t.len() == x.len() => Some(t.into_parts().1),
                            Some(_) => {
                                return Err(AsymError::Shape("worker input gradient size".into()));
                            }
                            None if needs_dx => {
                                return Err(AsymError::Protocol(
                                    "worker sent no input gradient".into(),
                                ));
                            }
                            None => None,
                        };
                        (
                            Grads {
                                w: dw,
                                b: wg.bias.map(|b| b.into_parts().1),
                            },
                            dx,
                        )
                    } else {
                        local_linear_backward(&nd.op, l, x, &gy, needs_dx)?
                    };
                    if let Some(slot) = layer_grads.get_mut(l.id) {
                        *slot = Some(lg);
                    }
                    if let Some(dx) = dx {
                        add_into(&mut grads[xin], dx);
                    }
                }
                None => {
                    let back = op_backward(&nd.op, nd.inputs.as_slice(), &gy, &out_shape, &val)
                        .map_err(|e| e.at(&nd.name))?;
                    for (i, d) in back {
                        if Some(i) != input_id && !is_constant(g, i) {
                            add_into(&mut grads[i], d);
                        }
                    }
                }
            }
        }
        // SGD with momentum; the worker applies the same step to its copy.
        let (lr, mu) = (self.opts.lr, self.opts.momentum);
        for l in &self.plan.layers {
            let Some(Some(lg)) = layer_grads.get_mut(l.id).map(Option::take) else {
                continue;
            };
            let Some((vw, vb)) = self.velocity.get_mut(l.id) else {
                continue;
            };
            let Some(node) = self.plan.graph.nodes.get_mut(l.node) else {
                continue;
            };
            let (w, b) = match &mut node.op {
                Op::Conv(c) => (&mut c.weight, c.bias.as_mut()),
                Op::Dense(d) => (&mut d.weight, d.bias.as_mut()),
                _ => continue,
            };
            for ((wv, v), gv) in w.data_mut().iter_mut().zip(vw.iter_mut()).zip(&lg.w) {
                *v = mu * *v - lr * gv;
                *wv += *v;
            }
            if let (Some(b), Some(gb)) = (b, &lg.b) {
                for ((bv, v), gv) in b.data_mut().iter_mut().zip(vb.iter_mut()).zip(gb) {
                    *v = mu * *v - lr * gv;
                    *bv += *v;
                }
            }
            if split && matches!(l.placement, Placement::Split(_)) {
                let w = worker.as_deref_mut().ok_or_else(|| {
                    AsymError::Protocol("a split trainer needs its worker".into())
                })?;
                let tw = Instant::now();
                w.apply_update(l.id, vw, lg.b.as_ref().map(|_| vb.as_slice()))?;
                worker_time += tw.elapsed();
            }
        }
        Ok(StepReport {
            loss: (loss / n as f64) as f32,
            correct,
            layers: fwd.runs,
            worker_time,
            total_time: t0.elapsed(),
        })
    }
}

fn is_constant(g: &Graph, v: usize) -> bool {
    g.nodes
        .iter()
        .any(|n| n.output == v && matches!(n.op, Op::Constant(_)))
}

/// The enclave's share of a split layer's weight gradient: `wgrad(U·V, G)` computed from the
/// factors, `Σₙ Uₙ·wgrad(Vₙ, Gₙ)` for a conv, `(Gᵀ·U)·V` for a dense layer.
fn lowrank_weight_grad(
    l: &LinearLayer,
    state: &LowRankState,
    gy: &[f32],
) -> Result<Vec<f32>, AsymError> {
    match l.kind {
        LinearKind::Conv(s) if l.shared_basis => {
            // One basis for the batch: U·(Σₙ wgrad(Vₙ, Gₙ)), the sum over the batch first.
            let kk = s.kk();
            if gy.len() != l.batch * s.co * s.ohw() || state.factors.len() != 1 {
                return Err(AsymError::Shape(format!("gradient size at '{}'", l.name)));
            }
            let mut acc = vec![0f32; s.co * s.c * kk];
            if let Some((k, u, v)) = state.factors.first()
                && *k > 0
            {
                let k = *k;
                let dwp = conv_weight_grad(v, gy, l.batch, &s.with_channels(k));
                for o in 0..s.co {
                    sgemm(
                        s.c,
                        k,
                        kk,
                        1.0,
                        View::rows(u, k),
                        View::rows(&dwp[o * k * kk..(o + 1) * k * kk], kk),
                        0.0,
                        &mut acc[o * s.c * kk..(o + 1) * s.c * kk],
                    );
                }
            }
            Ok(acc)
        }
        LinearKind::Conv(s) => {
            let kk = s.kk();
            let npos = s.ohw();
            let per_out = s.co * npos;
            if gy.len() != l.batch * per_out || state.factors.len() != l.batch {
                return Err(AsymError::Shape(format!("gradient size at '{}'", l.name)));
            }
            let acc_len = s.co * s.c * kk;
            let acc = state
                .factors
                .par_iter()
                .enumerate()
                .fold(
                    || (vec![0f32; acc_len], Vec::new()),
                    |(mut acc, mut col), (b, (k, u, v))| {
                        let k = *k;
                        if k == 0 {
                            return (acc, col);
                        }
                        let cols: &[f32] = if s.g.is_pointwise() {
                            v
                        } else {
                            im2col(v, k, &s.g, &mut col);
                            &col
                        };
                        let mut dwp = vec![0f32; s.co * k * kk];
                        sgemm(
                            s.co,
                            npos,
                            k * kk,
                            1.0,
                            View::rows(&gy[b * per_out..(b + 1) * per_out], npos),
                            View::transposed(cols, npos),
                            0.0,
                            &mut dwp,
                        );
                        for o in 0..s.co {
                            sgemm(
                                s.c,
                                k,
                                kk,
                                1.0,
                                View::rows(u, k),
                                View::rows(&dwp[o * k * kk..(o + 1) * k * kk], kk),
                                1.0,
                                &mut acc[o * s.c * kk..(o + 1) * s.c * kk],
                            );
                        }
                        (acc, col)
                    },
                )
                .map(|(a, _)| a)
                .reduce(
                    || vec![0f32; acc_len],
                    |mut a, b| {
                        for (x, y) in a.iter_mut().zip(&b) {
                            *x += y;
                        }
                        a
                    },
                );
            Ok(acc)
        }
        LinearKind::Dense { k: kin, m } => {
            let n = l.batch;
            if gy.len() != n * m {
                return Err(AsymError::Shape(format!("gradient size at '{}'", l.name)));
            }
            let mut dw = vec![0f32; m * kin];
            if let Some((k, u, v)) = state.factors.first()
                && *k > 0
            {
                let k = *k;
                let mut gu = vec![0f32; m * k];
                sgemm(
                    m,
                    n,
                    k,
                    1.0,
                    View::transposed(gy, m),
                    View::rows(u, k),
                    0.0,
                    &mut gu,
                );
                sgemm(
                    m,
                    k,
                    kin,
                    1.0,
                    View::rows(&gu, k),
                    View::rows(v, kin),
                    0.0,
                    &mut dw,
                );
            }
            Ok(dw)
        }
    }
}

/// Backward pass of a grouped (or depthwise) convolution, kept whole in the enclave: each group
/// is an ordinary convolution over its slice of the channels, so the groups=1 kernels run on
/// gathered slices and the results are scattered back.
fn grouped_conv_backward(
    c: &tessera_model::ir::Conv,
    s: &ConvShape,
    n: usize,
    x: &[f32],
    gy: &[f32],
    needs_dx: bool,
) -> Result<(Grads, Option<Vec<f32>>), AsymError> {
    let groups = c.groups;
    if groups == 0 || !s.c.is_multiple_of(groups) || !s.co.is_multiple_of(groups) {
        return Err(AsymError::Shape(format!(
            "{groups} groups do not divide {} input and {} output channels",
            s.c, s.co
        )));
    }
    let (cg, cog) = (s.c / groups, s.co / groups);
    let sg = s.with_channels(cg);
    let sg = ConvShape { co: cog, ..sg };
    let (hw, ohw, wlen) = (s.hw(), s.ohw(), cog * cg * s.kk());
    let short = || AsymError::Shape("grouped conv: input, gradient or weights too short".into());
    let w = c.weight.data();
    let mut dw = vec![0f32; groups * wlen];
    let mut dx = needs_dx.then(|| vec![0f32; n * s.c * hw]);
    for gi in 0..groups {
        let mut xg = Vec::with_capacity(n * cg * hw);
        let mut gyg = Vec::with_capacity(n * cog * ohw);
        for b in 0..n {
            let at = (b * s.c + gi * cg) * hw;
            xg.extend_from_slice(x.get(at..at + cg * hw).ok_or_else(short)?);
            let at = (b * s.co + gi * cog) * ohw;
            gyg.extend_from_slice(gy.get(at..at + cog * ohw).ok_or_else(short)?);
        }
        let dwg = conv_weight_grad(&xg, &gyg, n, &sg);
        dw.get_mut(gi * wlen..(gi + 1) * wlen)
            .ok_or_else(short)?
            .copy_from_slice(dwg.get(..wlen).ok_or_else(short)?);
        if let Some(dx) = dx.as_mut() {
            let wg = w.get(gi * wlen..(gi + 1) * wlen).ok_or_else(short)?;
            let mut dxg = vec![0f32; n * cg * hw];
            conv_input_grad(&gyg, n, &sg, wg, &mut dxg);
            for b in 0..n {
                let at = (b * s.c + gi * cg) * hw;
                dx.get_mut(at..at + cg * hw)
                    .ok_or_else(short)?
                    .copy_from_slice(dxg.get(b * cg * hw..(b + 1) * cg * hw).ok_or_else(short)?);
            }
        }
    }
    let db = c.bias.as_ref().map(|_| conv_bias_grad(gy, n, s.co, ohw));
    Ok((Grads { w: dw, b: db }, dx))
}

fn local_linear_backward(
    op: &Op,
    l: &LinearLayer,
    x: &Tensor,
    gy: &[f32],
    needs_dx: bool,
) -> Result<(Grads, Option<Vec<f32>>), AsymError> {
    match (op, l.kind) {
        (Op::Conv(c), LinearKind::Conv(s)) if c.groups != 1 => {
            grouped_conv_backward(c, &s, l.batch, x.data(), gy, needs_dx)
        }
        (Op::Conv(c), LinearKind::Conv(s)) if c.groups == 1 => {
            let n = l.batch;
            let w = c.weight.data();
            let dx = needs_dx.then(|| {
                let mut dx = vec![0f32; n * s.c * s.hw()];
                conv_input_grad(gy, n, &s, w, &mut dx);
                dx
            });
            let dw = conv_weight_grad(x.data(), gy, n, &s);
            let db = c
                .bias
                .as_ref()
                .map(|_| conv_bias_grad(gy, n, s.co, s.ohw()));
            Ok((Grads { w: dw, b: db }, dx))
        }
        (Op::Dense(d), LinearKind::Dense { k, m }) => {
            let (dw, db, dx) =
                dense_backward(x.data(), gy, l.batch, k, d.weight.data(), m, needs_dx);
            Ok((
                Grads {
                    w: dw,
                    b: d.bias.as_ref().map(|_| db),
                },
                dx,
            ))
        }
        _ => Err(AsymError::Unsupported(format!(
            "layer '{}' cannot be trained (grouped convolution)",
            l.name
        ))),
    }
}

type Val<'a> = dyn Fn(usize) -> Result<&'a Tensor, AsymError> + 'a;

/// Gradients of a non-linear op's inputs.
fn op_backward<'a>(
    op: &Op,
    inputs: &[usize],
    gy: &[f32],
    out_shape: &[usize],
    val: &Val<'a>,
) -> Result<Vec<(usize, Vec<f32>)>, AsymError> {
    let unsupported = || {
        Err(AsymError::Unsupported(format!(
            "training through {} is not supported",
            op.kind()
        )))
    };
    let &x0 = inputs
        .first()
        .ok_or_else(|| AsymError::Protocol("op without input".into()))?;
    Ok(match op {
        Op::Constant(_) => Vec::new(),
        Op::Relu => {
            let x = val(x0)?;
            let d = gy
                .iter()
                .zip(x.data())
                .map(|(&g, &v)| if v > 0.0 { g } else { 0.0 })
                .collect();
            vec![(x0, d)]
        }
        Op::Reshape => vec![(x0, gy.to_vec())],
        Op::MaxPool(p) => {
            let x = val(x0)?;
            let g = pool_geometry(p, x.shape(), out_shape);
            let planes = x.shape().iter().take(2).product();
            vec![(x0, maxpool_backward(x.data(), gy, planes, &g))]
        }
        Op::GlobalAvgPool => {
            let x = val(x0)?;
            let hw = x.shape().get(2..4).map(|s| s[0] * s[1]).unwrap_or(1).max(1);
            let mut d = vec![0f32; x.len()];
            for (pl, &g) in gy.iter().enumerate() {
                d[pl * hw..(pl + 1) * hw].fill(g / hw as f32);
            }
            vec![(x0, d)]
        }
        Op::Binary {
            op: bop,
            constant,
            constant_first,
        } => {
            let x = val(x0)?;
            if x.shape() != out_shape {
                return unsupported();
            }
            match constant {
                None => {
                    let &x1 = inputs
                        .get(1)
                        .ok_or_else(|| AsymError::Protocol("binary op arity".into()))?;
                    if val(x1)?.shape() != out_shape {
                        return unsupported();
                    }
                    match bop {
                        BinOp::Add => vec![(x0, gy.to_vec()), (x1, gy.to_vec())],
                        BinOp::Sub => {
                            vec![(x0, gy.to_vec()), (x1, gy.iter().map(|v| -v).collect())]
                        }
                        _ => return unsupported(),
                    }
                }
                Some(c) => {
                    let cmap = tessera_model::tensor::broadcast_index_map(c.shape(), out_shape);
                    let cv = |i: usize| {
                        c.data()
                            .get(cmap.get(i).copied().unwrap_or(0))
                            .copied()
                            .unwrap_or(0.0)
                    };
                    let d: Vec<f32> = match (bop, constant_first) {
                        (BinOp::Add, _) | (BinOp::Sub, false) => gy.to_vec(),
                        (BinOp::Sub, true) => gy.iter().map(|v| -v).collect(),
                        (BinOp::Mul, _) => gy.iter().enumerate().map(|(i, g)| g * cv(i)).collect(),
                        (BinOp::Div, false) => {
                            gy.iter().enumerate().map(|(i, g)| g / cv(i)).collect()
                        }
                        (BinOp::Div, true) => return unsupported(),
                    };
                    vec![(x0, d)]
                }
            }
        }
        _ => return unsupported(),
    })
}
