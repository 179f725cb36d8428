//! The asym scheme over the runtime: the enclave's [`AsymBackend`] drives the split and sends
//! each split layer's residual to a worker process over a framed channel; the worker
//! ([`serve_asym_worker`]) computes `conv(R, W) + b` and answers. One round trip per split layer.
//!
//! The worker receives the model (AsymML protects the data, not the weights) and the split
//! options, and builds the same plan; residuals and results travel in the clear on the channel:
//! the residual is what the scheme reveals by design (see the crate documentation).

use crate::plan::{AsymOptions, Basis, Plan, RankRule};
use crate::worker::{LocalWorker, WorkerGrads, WorkerLink};
use crate::{AsymError, DecompOptions};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tessera_model::export::export_model;
use tessera_model::{Graph, ImportOptions, Tensor, import_model};
use tessera_runtime::channel::{Channel, Role};
use tessera_runtime::cost::Footprint;
use tessera_runtime::enclave::InferBackend;
use tessera_runtime::protocol::{OffloadCost, TensorMsg};
use tessera_runtime::{ChannelOptions, RuntimeError, Transport};

/// The split options on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OptionsMsg {
    /// 0 fixed, 1 schedule, 2 energy, 3 per layer ([`OptionsMsg::ranks`]).
    pub rule: u8,
    /// Per-layer ranks (rule 3).
    pub ranks: Vec<u64>,
    /// 0 per-sample basis, 1 batch basis.
    pub basis: u8,
    /// Fixed rank, schedule start, or energy max rank.
    pub a: u64,
    /// Schedule cap.
    pub b: u64,
    /// Energy threshold.
    pub threshold: f32,
    /// Noise σ.
    pub noise_sigma: f32,
    /// Seed.
    pub seed: u64,
    /// Range-finder oversampling.
    pub oversample: u64,
    /// Subspace iterations.
    pub power_iters: u64,
    /// Columns the subspace is estimated on (0 = all).
    pub sample_cols: u64,
    /// Keep unprofitable layers whole.
    pub skip_unprofitable: bool,
}

impl From<&AsymOptions> for OptionsMsg {
    fn from(o: &AsymOptions) -> Self {
        let (rule, a, b, threshold) = match &o.rank {
            RankRule::Fixed(r) => (0, *r as u64, 0, 0.0),
            RankRule::Schedule { start, cap } => (1, *start as u64, *cap as u64, 0.0),
            RankRule::Energy {
                threshold,
                max_rank,
            } => (2, *max_rank as u64, 0, *threshold),
            RankRule::PerLayer(_) => (3, 0, 0, 0.0),
        };
        Self {
            rule,
            ranks: match &o.rank {
                RankRule::PerLayer(r) => r.iter().map(|&v| v as u64).collect(),
                _ => Vec::new(),
            },
            basis: u8::from(o.basis == Basis::Batch),
            a,
            b,
            threshold,
            noise_sigma: o.noise_sigma,
            // The enclave's seed (sketches) never leaves it; the worker needs none.
            seed: 0,
            oversample: o.decomp.oversample as u64,
            power_iters: o.decomp.power_iters as u64,
            sample_cols: o.decomp.sample_cols as u64,
            skip_unprofitable: o.skip_unprofitable,
        }
    }
}

impl OptionsMsg {
    fn options(&self) -> Result<AsymOptions, AsymError> {
        let us =
            |v: u64| usize::try_from(v).map_err(|_| AsymError::Options(format!("{v} too large")));
        let rank = match self.rule {
            0 => RankRule::Fixed(us(self.a)?),
            1 => RankRule::Schedule {
                start: us(self.a)?,
                cap: us(self.b)?,
            },
            2 => RankRule::Energy {
                threshold: self.threshold,
                max_rank: us(self.a)?,
            },
            3 => RankRule::PerLayer(
                self.ranks
                    .iter()
                    .map(|&v| us(v))
                    .collect::<Result<_, _>>()?,
            ),
            r => return Err(AsymError::Options(format!("unknown rank rule {r}"))),
        };
        let basis = match self.basis {
            0 => Basis::PerSample,
            1 => Basis::Batch,
            b => return Err(AsymError::Options(format!("unknown basis {b}"))),
        };
        Ok(AsymOptions {
            rank,
            noise_sigma: self.noise_sigma,
            seed: self.seed,
            basis,
            decomp: DecompOptions {
                oversample: us(self.oversample)?,
                power_iters: us(self.power_iters)?,
                sample_cols: us(self.sample_cols)?,
            },
            skip_unprofitable: self.skip_unprofitable,
        })
    }
}

/// Enclave → worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToAsymWorker {
    /// The model (ONNX) and the split options.
    Setup {
        /// ONNX bytes.
        model_onnx: Vec<u8>,
        /// Split options.
        options: OptionsMsg,
    },
    /// Compute split layer `layer` on a residual.
    Linear {
        /// Layer id.
        layer: u64,
        /// The residual.
        residual: TensorMsg,
        /// Keep the residual for the backward pass (training).
        keep: bool,
    },
    /// Training: gradients of split layer `layer` from the upstream gradient.
    Backward {
        /// Layer id.
        layer: u64,
        /// ∂ℓ/∂output of the layer.
        grad_out: TensorMsg,
        /// Also return ∂ℓ/∂input.
        input_grad: bool,
    },
    /// Training: apply a step to the worker's copy of the layer's weights.
    Update {
        /// Layer id.
        layer: u64,
        /// Step for the weights.
        weight_step: Vec<f32>,
        /// Step for the bias.
        bias_step: Option<Vec<f32>>,
    },
}

/// Worker → enclave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromAsymWorker {
    /// The plan is built; the worker splits this many layers.
    Ready {
        /// Split layers.
        layers: u64,
    },
    /// `conv(R, W) + b` of a `Linear` request.
    Output {
        /// The result.
        tensor: TensorMsg,
        /// Worker time, nanoseconds.
        ns: u64,
    },
    /// Gradients of a `Backward` request.
    Grads {
        /// ∂ℓ/∂input, when asked for.
        input: Option<TensorMsg>,
        /// Weight gradient of the residual part.
        weight: TensorMsg,
        /// Bias gradient.
        bias: Option<TensorMsg>,
    },
    /// An `Update` was applied.
    Updated,
}

fn to_msg(t: &Tensor) -> TensorMsg {
    TensorMsg {
        shape: t.shape().iter().map(|&d| d as u32).collect(),
        data: t.data().to_vec(),
    }
}

fn from_msg(m: TensorMsg) -> Result<Tensor, AsymError> {
    Tensor::new(m.shape.iter().map(|&d| d as usize).collect(), m.data)
        .map_err(|e| AsymError::Protocol(format!("a tensor from the peer: {e}")))
}

fn rt(e: RuntimeError) -> AsymError {
    AsymError::Protocol(e.to_string())
}

fn layer_id(layer: u64) -> Result<usize, AsymError> {
    usize::try_from(layer).map_err(|_| AsymError::Protocol("layer id too large".into()))
}

/// Pass a result on, or tell the enclave what failed before returning the error.
fn reply_or_report<T>(ch: &mut Channel, r: Result<T, AsymError>) -> Result<T, AsymError> {
    if let Err(e) = &r {
        ch.send_error(&e.to_string());
    }
    r
}

/// Serve one enclave on `ch` until it closes.
pub fn serve_asym_worker(ch: &mut Channel) -> Result<(), AsymError> {
    ch.handshake(Role::Worker, &[Role::Enclave]).map_err(rt)?;
    let mut worker: Option<LocalWorker> = None;
    loop {
        let msg = match ch.recv::<ToAsymWorker>() {
            Ok(m) => m,
            Err(RuntimeError::Closed(_)) => return Ok(()),
            Err(e) => return Err(rt(e)),
        };
        let reply = match msg {
            ToAsymWorker::Setup {
                model_onnx,
                options,
            } => {
                let g = import_model(&model_onnx, &ImportOptions::default())
                    .map_err(|e| AsymError::Protocol(format!("the model: {e}")))?;
                let plan = Plan::new(&g, &options.options()?)?;
                let layers = plan.worker_layers();
                let n = layers.len() as u64;
                worker = Some(LocalWorker::new(layers));
                ch.set_deadline(Some(tessera_runtime::channel::IDLE_DEADLINE))
                    .map_err(rt)?;
                FromAsymWorker::Ready { layers: n }
            }
            ToAsymWorker::Linear {
                layer,
                residual,
                keep,
            } => {
                let w = worker
                    .as_mut()
                    .ok_or_else(|| AsymError::Protocol("a layer request before setup".into()))?;
                let t0 = Instant::now();
                let out = w.linear(layer_id(layer)?, from_msg(residual)?, keep);
                let out = reply_or_report(ch, out)?;
                FromAsymWorker::Output {
                    tensor: to_msg(&out),
                    ns: t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
                }
            }
            ToAsymWorker::Backward {
                layer,
                grad_out,
                input_grad,
            } => {
                let w = worker
                    .as_mut()
                    .ok_or_else(|| AsymError::Protocol("a backward request before setup".into()))?;
                let g = w.backward(layer_id(layer)?, &from_msg(grad_out)?, input_grad);
                let g = reply_or_report(ch, g)?;
                FromAsymWorker::Grads {
                    input: g.input.as_ref().map(to_msg),
                    weight: to_msg(&g.weight),
                    bias: g.bias.as_ref().map(to_msg),
                }
            }
            ToAsymWorker::Update {
                layer,
                weight_step,
                bias_step,
            } => {
                let w = worker
                    .as_mut()
                    .ok_or_else(|| AsymError::Protocol("an update before setup".into()))?;
                let r = w.apply_update(layer_id(layer)?, &weight_step, bias_step.as_deref());
                reply_or_report(ch, r)?;
                FromAsymWorker::Updated
            }
        };
        ch.send(&reply).map_err(rt)?;
    }
}

/// A [`WorkerLink`] over a channel: the enclave's view of a worker process.
pub struct ChannelLink<'a> {
    ch: &'a mut Channel,
    worker_ns: &'a AtomicU64,
}

impl<'a> ChannelLink<'a> {
    /// Drive the worker on `ch` (set up with [`setup_worker`]); worker time adds to `worker_ns`.
    pub fn new(ch: &'a mut Channel, worker_ns: &'a AtomicU64) -> Self {
        Self { ch, worker_ns }
    }
}

impl WorkerLink for ChannelLink<'_> {
    fn linear(&mut self, layer: usize, residual: Tensor, keep: bool) -> Result<Tensor, AsymError> {
        self.ch
            .send(&ToAsymWorker::Linear {
                layer: layer as u64,
                residual: to_msg(&residual),
                keep,
            })
            .map_err(rt)?;
        match self.ch.recv::<FromAsymWorker>().map_err(rt)? {
            FromAsymWorker::Output { tensor, ns } => {
                self.worker_ns.fetch_add(ns, Ordering::Relaxed);
                from_msg(tensor)
            }
            _ => Err(AsymError::Protocol("expected a layer output".into())),
        }
    }
    fn backward(
        &mut self,
        layer: usize,
        grad_out: &Tensor,
        input_grad: bool,
    ) -> Result<WorkerGrads, AsymError> {
        self.ch
            .send(&ToAsymWorker::Backward {
                layer: layer as u64,
                grad_out: to_msg(grad_out),
                input_grad,
            })
            .map_err(rt)?;
        match self.ch.recv::<FromAsymWorker>().map_err(rt)? {
            FromAsymWorker::Grads {
                input,
                weight,
                bias,
            } => Ok(WorkerGrads {
                input: input.map(from_msg).transpose()?,
                weight: from_msg(weight)?,
                bias: bias.map(from_msg).transpose()?,
            }),
            _ => Err(AsymError::Protocol("expected gradients".into())),
        }
    }
    fn apply_update(
        &mut self,
        layer: usize,
        weight_step: &[f32],
        bias_step: Option<&[f32]>,
    ) -> Result<(), AsymError> {
        self.ch
            .send(&ToAsymWorker::Update {
                layer: layer as u64,
                weight_step: weight_step.to_vec(),
                bias_step: bias_step.map(<[f32]>::to_vec),
            })
            .map_err(rt)?;
        match self.ch.recv::<FromAsymWorker>().map_err(rt)? {
            FromAsymWorker::Updated => Ok(()),
            _ => Err(AsymError::Protocol(
                "expected an update confirmation".into(),
            )),
        }
    }
}

/// Connect to a worker on `stream` and send it `graph` and the split options; returns the
/// channel to drive it with [`ChannelLink`].
pub fn setup_worker<T: Transport + 'static>(
    graph: &Graph,
    opts: &AsymOptions,
    stream: T,
    channel: ChannelOptions,
) -> Result<Channel, AsymError> {
    let mut ch = Channel::new(stream, channel).map_err(rt)?;
    ch.handshake(Role::Enclave, &[Role::Worker]).map_err(rt)?;
    // The worker gets the architecture and the weights of the layers it computes, nothing else:
    // the layers kept in the enclave (the head among them) travel with zero weights.
    let plan = Plan::new(graph, opts)?;
    let model_onnx = export_model(&plan.worker_graph())
        .map_err(|e| AsymError::Protocol(format!("exporting the model: {e}")))?;
    ch.send(&ToAsymWorker::Setup {
        model_onnx,
        options: OptionsMsg::from(opts),
    })
    .map_err(rt)?;
    match ch.recv::<FromAsymWorker>().map_err(rt)? {
        FromAsymWorker::Ready { .. } => {
            ch.set_deadline(Some(tessera_runtime::channel::IDLE_DEADLINE))
                .map_err(rt)?;
            Ok(ch)
        }
        _ => Err(AsymError::Protocol(
            "the worker did not confirm setup".into(),
        )),
    }
}

/// The enclave side of asym inference.
pub struct AsymBackend {
    plan: Plan,
    frac_bits: u32,
    ch: Mutex<Channel>,
    step: AtomicU64,
    footprint: Footprint,
}

impl AsymBackend {
    /// Plan the split of `graph`, connect to the worker on `stream` and send it the model.
    /// Outputs go to the client as integers at scale 2^`frac_bits` (the enclave's setting).
    pub fn start<T: Transport + 'static>(
        graph: &Graph,
        opts: &AsymOptions,
        frac_bits: u32,
        stream: T,
        channel: ChannelOptions,
    ) -> Result<Self, AsymError> {
        let plan = Plan::new(graph, opts)?;
        let ch = setup_worker(graph, opts, stream, channel)?;
        Ok(Self {
            footprint: Footprint::of(graph),
            frac_bits,
            plan,
            ch: Mutex::new(ch),
            step: AtomicU64::new(0),
        })
    }

    /// The plan (per-layer placement).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}

impl InferBackend for AsymBackend {
    fn scheme(&self) -> &'static str {
        "asym"
    }

    fn infer(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), RuntimeError> {
        let err = |e: AsymError| RuntimeError::Backend(e.to_string());
        let mut ch = self
            .ch
            .lock()
            .map_err(|_| RuntimeError::Backend("worker channel lock poisoned".into()))?;
        let counters = ch.counters();
        let (s0, r0, n0) = counters.snapshot();
        let worker_ns = AtomicU64::new(0);
        let step = self.step.fetch_add(1, Ordering::Relaxed);
        let mut link = ChannelLink::new(&mut ch, &worker_ns);
        let run = crate::enclave::infer(&self.plan, input, Some(&mut link), step).map_err(err)?;
        let (s1, r1, n1) = counters.snapshot();
        let out = run
            .outputs
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::Backend("the model has no output".into()))?;
        let trusted: u64 = run.layers.iter().map(|l| l.trusted_macs).sum();
        // The client protocol carries integers at scale 2^frac_bits: the float output is
        // quantized there (asym is a float scheme, exact only to float rounding).
        let f = self.frac_bits;
        let data = out
            .data()
            .iter()
            .map(|&v| tessera_engine::quant::quantize(v, f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RuntimeError::Backend(e.to_string()))?;
        let exact = Tensor::new(out.shape().to_vec(), data)
            .map_err(|e| RuntimeError::Backend(e.to_string()))?;
        Ok((
            exact,
            OffloadCost {
                scheme: "asym".into(),
                bytes_to_worker: s1 - s0,
                bytes_from_worker: r1 - r0,
                rounds: n1 - n0,
                stored_bytes: 0,
                offline_ns: 0,
                worker_ns: worker_ns.load(Ordering::Relaxed),
                enclave_bytes_kept: 0,
                // May exceed the unsplit MACs: decomposition and folding are extra work.
                trusted_macs: trusted,
            },
        ))
    }

    fn output_scale(&self) -> Option<f64> {
        Some(2f64.powi(-(self.frac_bits as i32)))
    }

    fn footprint(&self) -> Footprint {
        self.footprint
    }
}

/// Serve asym enclaves on `listener`.
pub fn serve_asym_worker_tcp(
    listener: std::net::TcpListener,
    channel: ChannelOptions,
) -> Result<tessera_runtime::ServerHandle, RuntimeError> {
    tessera_runtime::enclave::serve_tcp(listener, 64, move |stream| {
        let mut ch = Channel::new(stream, channel)?;
        serve_asym_worker(&mut ch).map_err(|e| RuntimeError::Backend(e.to_string()))
    })
}
