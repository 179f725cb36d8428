//! The asym scheme over the runtime: the enclave's [`AsymBackend`] drives the split and sends
//! each split layer's residual to a worker process over a framed channel; the worker
//! ([`serve_asym_worker`]) computes `conv(R, W) + b` and answers. One round trip per split layer.
//!
//! The worker receives the model (AsymML protects the data, not the weights) and the split
//! options, and builds the same plan; residuals and results travel in the clear on the channel:
//! the residual is what the scheme reveals by design (see the crate documentation).

use crate::plan::{AsymOptions, Plan, RankRule};
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
    /// 0 fixed, 1 schedule, 2 energy.
    pub rule: u8,
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
    /// Keep unprofitable layers whole.
    pub skip_unprofitable: bool,
}

impl From<&AsymOptions> for OptionsMsg {
    fn from(o: &AsymOptions) -> Self {
        let (rule, a, b, threshold) = match o.rank {
            RankRule::Fixed(r) => (0, r as u64, 0, 0.0),
            RankRule::Schedule { start, cap } => (1, start as u64, cap as u64, 0.0),
            RankRule::Energy {
                threshold,
                max_rank,
            } => (2, max_rank as u64, 0, threshold),
        };
        Self {
            rule,
            a,
            b,
            threshold,
            noise_sigma: o.noise_sigma,
            seed: o.seed,
            oversample: o.decomp.oversample as u64,
            power_iters: o.decomp.power_iters as u64,
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
            r => return Err(AsymError::Options(format!("unknown rank rule {r}"))),
        };
        Ok(AsymOptions {
            rank,
            noise_sigma: self.noise_sigma,
            seed: self.seed,
            decomp: DecompOptions {
                oversample: us(self.oversample)?,
                power_iters: us(self.power_iters)?,
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
            ToAsymWorker::Linear { layer, residual } => {
                let w = worker
                    .as_mut()
                    .ok_or_else(|| AsymError::Protocol("a layer request before setup".into()))?;
                let t0 = Instant::now();
                let layer = usize::try_from(layer)
                    .map_err(|_| AsymError::Protocol("layer id too large".into()))?;
                let out = match w.linear(layer, from_msg(residual)?, false) {
                    Ok(o) => o,
                    Err(e) => {
                        ch.send_error(&e.to_string());
                        return Err(e);
                    }
                };
                FromAsymWorker::Output {
                    tensor: to_msg(&out),
                    ns: t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
                }
            }
        };
        ch.send(&reply).map_err(rt)?;
    }
}

/// A [`WorkerLink`] over a channel (inference only).
struct ChannelLink<'a> {
    ch: &'a mut Channel,
    worker_ns: &'a AtomicU64,
}

impl WorkerLink for ChannelLink<'_> {
    fn linear(&mut self, layer: usize, residual: Tensor, _keep: bool) -> Result<Tensor, AsymError> {
        self.ch
            .send(&ToAsymWorker::Linear {
                layer: layer as u64,
                residual: to_msg(&residual),
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
    fn backward(&mut self, _: usize, _: &Tensor, _: bool) -> Result<WorkerGrads, AsymError> {
        Err(AsymError::Protocol(
            "training through a remote worker is not supported yet; train with the worker in \
             this process (tessera train --scheme asym)"
                .into(),
        ))
    }
    fn apply_update(&mut self, _: usize, _: &[f32], _: Option<&[f32]>) -> Result<(), AsymError> {
        Err(AsymError::Protocol(
            "training through a remote worker is not supported yet".into(),
        ))
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
        let mut ch = Channel::new(stream, channel).map_err(rt)?;
        ch.handshake(Role::Enclave, &[Role::Worker]).map_err(rt)?;
        let model_onnx = export_model(graph)
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
            }
            _ => {
                return Err(AsymError::Protocol(
                    "the worker did not confirm setup".into(),
                ));
            }
        }
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
        let mut link = ChannelLink {
            ch: &mut ch,
            worker_ns: &worker_ns,
        };
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
