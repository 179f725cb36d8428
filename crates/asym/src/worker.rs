//! The untrusted worker's side: the full-size linear layer on the residual, its gradients, and
//! the [`WorkerLink`] through which the enclave reaches a worker (in process, or over a channel).

use crate::AsymError;
use crate::kernels::{
    conv_bias_grad, conv_forward, conv_input_grad, conv_weight_grad, dense_backward, dense_forward,
};
use crate::plan::{LinearKind, WorkerLayer, WorkerOp};
use std::time::{Duration, Instant};
use tessera_model::Tensor;

/// Gradients the worker returns for one split layer.
#[derive(Clone, Debug)]
pub struct WorkerGrads {
    /// `∂ℓ/∂X` (the full input gradient, `conv_input(W, G)`), when asked for.
    pub input: Option<Tensor>,
    /// The residual's weight gradient `wgrad(R, G)`.
    pub weight: Tensor,
    /// The bias gradient `Σ G`, when the layer has a bias.
    pub bias: Option<Tensor>,
}

/// How the enclave reaches its worker. An in-process worker is [`LocalWorker`]; the runtime
/// implements this over its channel and serves it with the same functions on the other side.
pub trait WorkerLink {
    /// Forward: `L(R) = conv(R, W) + b` (or `R·Wᵀ + b`) for split layer `layer`. With `keep`
    /// the worker retains `R` for the next [`WorkerLink::backward`] of that layer.
    fn linear(&mut self, layer: usize, residual: Tensor, keep: bool) -> Result<Tensor, AsymError>;
    /// Backward with upstream gradient `G = ∂ℓ/∂Y` against the kept residual.
    fn backward(
        &mut self,
        layer: usize,
        grad_out: &Tensor,
        input_grad: bool,
    ) -> Result<WorkerGrads, AsymError>;
    /// Add the optimizer's step to the worker's copy of the weights (both copies stay equal).
    fn apply_update(
        &mut self,
        layer: usize,
        weight_step: &[f32],
        bias_step: Option<&[f32]>,
    ) -> Result<(), AsymError>;
}

fn check_len(what: &str, t: &Tensor, per_sample: usize) -> Result<usize, AsymError> {
    let n = t.shape().first().copied().unwrap_or(0);
    if per_sample == 0 || n == 0 || t.len() != n * per_sample {
        return Err(AsymError::Shape(format!(
            "{what} of shape {:?} does not fit the layer ({per_sample} values per sample)",
            t.shape()
        )));
    }
    Ok(n)
}

fn conv_weight_bias(op: &WorkerOp) -> (&[f32], Option<&[f32]>) {
    match op {
        WorkerOp::Conv(c) => (c.weight.data(), c.bias.as_ref().map(|b| b.data())),
        WorkerOp::Dense(d) => (d.weight.data(), d.bias.as_ref().map(|b| b.data())),
    }
}

fn check_weights(layer: &WorkerLayer) -> Result<(), AsymError> {
    let (w, b) = conv_weight_bias(&layer.op);
    let (wl, bl) = match layer.kind {
        LinearKind::Conv(s) => (s.co * s.c * s.kk(), s.co),
        LinearKind::Dense { k, m } => (k * m, m),
    };
    if w.len() != wl || b.is_some_and(|b| b.len() != bl) {
        return Err(AsymError::Shape(format!(
            "layer '{}': weights do not match its geometry",
            layer.name
        )));
    }
    Ok(())
}

/// The worker's forward for one layer: `conv(R, W) + b` or `R·Wᵀ + b`. Checks the residual's
/// size against the layer (a peer's tensor is untrusted input).
pub fn worker_linear(layer: &WorkerLayer, residual: &Tensor) -> Result<Tensor, AsymError> {
    check_weights(layer)?;
    let (w, b) = conv_weight_bias(&layer.op);
    match layer.kind {
        LinearKind::Conv(s) => {
            let n = check_len("residual", residual, s.c * s.hw())?;
            let mut out = vec![0f32; n * s.co * s.ohw()];
            conv_forward(residual.data(), n, &s, |_| w, b, &mut out);
            Ok(Tensor::new(vec![n, s.co, s.g.oh, s.g.ow], out)?)
        }
        LinearKind::Dense { k, m } => {
            let n = check_len("residual", residual, k)?;
            let out = dense_forward(residual.data(), n, k, w, m, b);
            Ok(Tensor::new(vec![n, m], out)?)
        }
    }
}

/// The worker's backward for one layer: input gradient (optional), residual weight gradient,
/// bias gradient.
pub fn worker_backward(
    layer: &WorkerLayer,
    residual: &Tensor,
    grad_out: &Tensor,
    input_grad: bool,
) -> Result<WorkerGrads, AsymError> {
    check_weights(layer)?;
    let (w, b) = conv_weight_bias(&layer.op);
    match layer.kind {
        LinearKind::Conv(s) => {
            let n = check_len("residual", residual, s.c * s.hw())?;
            if check_len("gradient", grad_out, s.co * s.ohw())? != n {
                return Err(AsymError::Shape(
                    "gradient and residual batch differ".into(),
                ));
            }
            let input = if input_grad {
                let mut dx = vec![0f32; n * s.c * s.hw()];
                conv_input_grad(grad_out.data(), n, &s, w, &mut dx);
                Some(Tensor::new(vec![n, s.c, s.g.h, s.g.w], dx)?)
            } else {
                None
            };
            let dw = conv_weight_grad(residual.data(), grad_out.data(), n, &s);
            let bias = b
                .map(|_| {
                    Tensor::new(
                        vec![s.co],
                        conv_bias_grad(grad_out.data(), n, s.co, s.ohw()),
                    )
                })
                .transpose()?;
            Ok(WorkerGrads {
                input,
                weight: Tensor::new(vec![s.co, s.c, s.g.k[0], s.g.k[1]], dw)?,
                bias,
            })
        }
        LinearKind::Dense { k, m } => {
            let n = check_len("residual", residual, k)?;
            if check_len("gradient", grad_out, m)? != n {
                return Err(AsymError::Shape(
                    "gradient and residual batch differ".into(),
                ));
            }
            let (dw, db, dx) =
                dense_backward(residual.data(), grad_out.data(), n, k, w, m, input_grad);
            Ok(WorkerGrads {
                input: dx.map(|d| Tensor::new(vec![n, k], d)).transpose()?,
                weight: Tensor::new(vec![m, k], dw)?,
                bias: b.map(|_| Tensor::new(vec![m], db)).transpose()?,
            })
        }
    }
}

/// A worker in this process (CPU threads via rayon): holds the split layers' weights and the
/// residuals kept for backward, and counts the time it spends.
#[derive(Debug, Default)]
pub struct LocalWorker {
    layers: Vec<Option<WorkerLayer>>,
    kept: Vec<Option<Tensor>>,
    busy: Duration,
}

impl LocalWorker {
    /// A worker for these layers (from [`crate::Plan::worker_layers`]).
    pub fn new(layers: Vec<WorkerLayer>) -> Self {
        let len = layers.iter().map(|l| l.id + 1).max().unwrap_or(0);
        let mut slots: Vec<Option<WorkerLayer>> = vec![None; len];
        for l in layers {
            let id = l.id;
            if let Some(s) = slots.get_mut(id) {
                *s = Some(l);
            }
        }
        Self {
            layers: slots,
            kept: vec![None; len],
            busy: Duration::ZERO,
        }
    }

    /// Time spent computing so far.
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// Reset the time counter.
    pub fn reset_busy(&mut self) {
        self.busy = Duration::ZERO;
    }

    fn layer(&self, id: usize) -> Result<&WorkerLayer, AsymError> {
        self.layers
            .get(id)
            .and_then(|l| l.as_ref())
            .ok_or_else(|| AsymError::Protocol(format!("the worker holds no split layer {id}")))
    }
}

impl WorkerLink for LocalWorker {
    fn linear(&mut self, layer: usize, residual: Tensor, keep: bool) -> Result<Tensor, AsymError> {
        let t = Instant::now();
        let out = worker_linear(self.layer(layer)?, &residual)?;
        if let Some(k) = self.kept.get_mut(layer) {
            *k = keep.then_some(residual);
        }
        self.busy += t.elapsed();
        Ok(out)
    }

    fn backward(
        &mut self,
        layer: usize,
        grad_out: &Tensor,
        input_grad: bool,
    ) -> Result<WorkerGrads, AsymError> {
        let t = Instant::now();
        let r = self
            .kept
            .get_mut(layer)
            .and_then(Option::take)
            .ok_or_else(|| {
                AsymError::Protocol(format!("backward of layer {layer} without a kept forward"))
            })?;
        let g = worker_backward(self.layer(layer)?, &r, grad_out, input_grad)?;
        self.busy += t.elapsed();
        Ok(g)
    }

    fn apply_update(
        &mut self,
        layer: usize,
        weight_step: &[f32],
        bias_step: Option<&[f32]>,
    ) -> Result<(), AsymError> {
        let t = Instant::now();
        let l = self
            .layers
            .get_mut(layer)
            .and_then(|l| l.as_mut())
            .ok_or_else(|| {
                AsymError::Protocol(format!("the worker holds no split layer {layer}"))
            })?;
        let (w, b) = match &mut l.op {
            WorkerOp::Conv(c) => (&mut c.weight, c.bias.as_mut()),
            WorkerOp::Dense(d) => (&mut d.weight, d.bias.as_mut()),
        };
        if w.len() != weight_step.len()
            || b.as_ref().map(|b| b.len()) != bias_step.map(<[f32]>::len)
        {
            return Err(AsymError::Shape(format!(
                "update of layer {layer} does not match its weights"
            )));
        }
        for (x, s) in w.data_mut().iter_mut().zip(weight_step) {
            *x += s;
        }
        if let (Some(b), Some(s)) = (b, bias_step) {
            for (x, s) in b.data_mut().iter_mut().zip(s) {
                *x += s;
            }
        }
        self.busy += t.elapsed();
        Ok(())
    }
}
