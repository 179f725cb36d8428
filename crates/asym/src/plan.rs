//! Which linear layer runs where, at which rank: the [`Plan`].

use crate::AsymError;
use crate::decompose::{DecompOptions, LowRank, RankSpec};
use crate::kernels::ConvShape;
use tessera_engine::window::conv_geometry;
use tessera_model::ir::{Conv, Dense, Graph, Op};

/// How the rank of each split layer is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum RankRule {
    /// The same rank everywhere (`--rank r`).
    Fixed(usize),
    /// `start` for the first linear layer, doubled for each following one, capped at `cap`
    /// (AsymML's schedule: start 2, cap 32).
    Schedule {
        /// Rank of the first layer.
        start: usize,
        /// Largest rank.
        cap: usize,
    },
    /// Per sample, the smallest rank with `‖R‖²/‖X‖² ≤ threshold` (`--energy 0.1`), at most
    /// `max_rank`.
    Energy {
        /// Residual energy bound.
        threshold: f32,
        /// Cap on the rank.
        max_rank: usize,
    },
    /// One rank per linear layer in execution order (what [`crate::select`] chooses for a
    /// global trusted-share or energy target); 0 keeps that layer whole in the enclave. The
    /// classifier head stays whole whatever its entry says.
    PerLayer(Vec<usize>),
}

/// Which activations share one low-rank basis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// AsymML's form: every sample's conv input `C × H·W` gets its own `U`, and the fold `W·U`
    /// is paid per sample. The worker sees each sample's residual outside that sample's own
    /// top-`k` channel subspace.
    PerSample,
    /// One basis for the whole batch: a conv input is decomposed as `C × N·H·W`, the fold is
    /// paid once per batch. The residual of each sample is what lies outside the batch's
    /// common top-`k` subspace, so a sample unlike the rest of its batch leaves more of its
    /// energy to the worker than it would alone; the energy rule bounds the batch's total
    /// residual energy, not each sample's. Dense layers always use the batch matrix.
    Batch,
}

/// Options of the split.
#[derive(Clone, Debug, PartialEq)]
pub struct AsymOptions {
    /// Rank rule.
    pub rank: RankRule,
    /// Standard deviation of the Gaussian noise added to each residual before it leaves the
    /// enclave (0 = none; the DP variant of 3LegRace). With noise the output is no longer exact.
    pub noise_sigma: f32,
    /// Seed of the sketches (the noise is drawn from the OS CSPRNG, see [`crate::enclave`]).
    pub seed: u64,
    /// Per-sample or per-batch basis for conv inputs.
    pub basis: Basis,
    /// Range-finder tuning.
    pub decomp: DecompOptions,
    /// Keep a layer in the enclave when, at its fixed rank, splitting would cost the enclave at
    /// least the whole layer's multiply-adds ([`EnclaveReason::NoGain`]). Not applied to the
    /// energy rule, whose rank is only known per input.
    pub skip_unprofitable: bool,
}

impl Default for AsymOptions {
    fn default() -> Self {
        Self {
            rank: RankRule::Schedule { start: 2, cap: 32 },
            noise_sigma: 0.0,
            seed: 0x5eed,
            basis: Basis::PerSample,
            decomp: DecompOptions::default(),
            skip_unprofitable: true,
        }
    }
}

/// Where a linear layer runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placement {
    /// Split: the enclave keeps a low-rank part of the input at this rank, the worker gets the
    /// residual.
    Split(RankSpec),
    /// Entirely in the enclave.
    Enclave(EnclaveReason),
}

/// Why a layer stays in the enclave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnclaveReason {
    /// The classifier head (the last linear layer): its output is the prediction.
    Head,
    /// The wanted rank reaches the matrix's full rank (e.g. a 1-channel image, or a dense layer
    /// at batch 1): the residual would be rounding noise, so the worker gets nothing.
    FullRank,
    /// Grouped convolution (not split).
    Grouped,
    /// Splitting would cost the enclave at least as many multiply-adds as the whole layer
    /// (decomposition plus the per-sample fold `W·U` outgrow a small-spatial layer).
    NoGain,
    /// The plan runs everything in the enclave (the TEE-only baseline).
    Baseline,
    /// A per-layer rank of 0 ([`RankRule::PerLayer`]): the rank selection found keeping the
    /// layer whole cheaper or needed.
    Chosen,
}

/// Linear layer kind with its static geometry.
#[derive(Clone, Copy, Debug)]
pub enum LinearKind {
    /// Convolution (groups = 1 when split).
    Conv(ConvShape),
    /// Dense `[n, k] → [n, m]`.
    Dense {
        /// Inputs per sample.
        k: usize,
        /// Outputs per sample.
        m: usize,
    },
}

/// One linear layer of the plan.
#[derive(Clone, Debug)]
pub struct LinearLayer {
    /// Index in [`Plan::layers`] (the id the worker knows it by).
    pub id: usize,
    /// Node index in the graph.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// Batch size of the plan.
    pub batch: usize,
    /// Kind and geometry.
    pub kind: LinearKind,
    /// Where it runs.
    pub placement: Placement,
    /// One basis for the whole batch (conv under [`Basis::Batch`]; always for dense layers).
    pub shared_basis: bool,
}

impl LinearLayer {
    /// The matrix each input is decomposed as: per sample `C × H·W` for a conv (`C × N·H·W`
    /// with a batch basis), the batch `N × K` for a dense layer.
    pub fn matrix(&self) -> (usize, usize) {
        match self.kind {
            LinearKind::Conv(s) if self.shared_basis => (s.c, s.hw() * self.batch),
            LinearKind::Conv(s) => (s.c, s.hw()),
            LinearKind::Dense { k, .. } => (self.batch, k),
        }
    }

    /// How many matrices one pass decomposes: one per sample for a per-sample conv basis, one
    /// otherwise.
    pub fn matrices(&self) -> usize {
        match self.kind {
            LinearKind::Conv(_) if !self.shared_basis => self.batch,
            _ => 1,
        }
    }

    /// Multiply-adds of the unsplit layer over the batch.
    pub fn macs(&self) -> u64 {
        let n = self.batch as u64;
        match self.kind {
            LinearKind::Conv(s) => n * (s.co * s.c * s.kk() * s.ohw()) as u64,
            LinearKind::Dense { k, m } => n * (k * m) as u64,
        }
    }

    /// The enclave's multiply-adds for one split pass with `ranks` kept (one per decomposed
    /// matrix, see [`LinearLayer::matrices`]): decomposition, the fold `W·U`, the low-rank layer.
    pub fn trusted_macs(&self, ranks: &[usize], decomp: &DecompOptions) -> u64 {
        let (rows, cols) = self.matrix();
        let full = rows.min(cols);
        ranks
            .iter()
            .map(|&k| {
                let k = k.min(full);
                let dec = LowRank::cost_macs(rows, cols, k, decomp);
                let k = k as u64;
                match self.kind {
                    LinearKind::Conv(s) => {
                        // The low-rank conv runs on every sample the matrix covers.
                        let per = if self.shared_basis {
                            self.batch as u64
                        } else {
                            1
                        };
                        let fold = k * (s.c * s.co * s.kk()) as u64;
                        let conv = per * k * (s.co * s.kk() * s.ohw()) as u64;
                        dec + fold + conv
                    }
                    LinearKind::Dense { k: kin, m } => {
                        dec + k * (kin * m) as u64 + k * (self.batch * m) as u64
                    }
                }
            })
            .sum()
    }

    /// (trusted, untrusted) multiply-adds of one forward pass when every matrix keeps rank `k`.
    pub fn split_macs(&self, k: usize, decomp: &DecompOptions) -> (u64, u64) {
        let full = self.macs();
        match self.placement {
            Placement::Enclave(_) => (full, 0),
            Placement::Split(_) => (self.trusted_macs(&vec![k; self.matrices()], decomp), full),
        }
    }
}

/// The split of a graph: every Conv/Dense layer with its placement and rank.
#[derive(Clone, Debug)]
pub struct Plan {
    pub(crate) graph: Graph,
    pub(crate) layers: Vec<LinearLayer>,
    pub(crate) layer_of_node: Vec<Option<usize>>,
    pub(crate) opts: AsymOptions,
    pub(crate) split: bool,
}

impl Plan {
    /// Plan the split of `graph` (validated here). Every Conv and Dense input is decomposed,
    /// the network input included; the last linear layer (the classifier head) stays in the
    /// enclave. Errors on ops the scheme cannot place (variable MatMul/Gemm), on a rank of 0,
    /// or on an invalid graph.
    pub fn new(graph: &Graph, opts: &AsymOptions) -> Result<Self, AsymError> {
        Self::build(graph, opts, true)
    }

    /// The model as the worker may see it: the same ops and shapes, the weights and biases of
    /// the layers it computes (the split ones), and every other linear layer — kept whole in the
    /// enclave, the classifier head among them — with zero weights and bias. Planning it gives
    /// the same placements (they depend on shapes and options only).
    pub fn worker_graph(&self) -> Graph {
        let mut g = self.graph.clone();
        for (i, n) in g.nodes.iter_mut().enumerate() {
            let split = self
                .layer_of_node
                .get(i)
                .copied()
                .flatten()
                .and_then(|l| self.layers.get(l))
                .is_some_and(|l| matches!(l.placement, Placement::Split(_)));
            if split {
                continue;
            }
            match &mut n.op {
                Op::Conv(c) => {
                    c.weight = c.weight.map(|_| 0.0);
                    c.bias = c.bias.as_ref().map(|b| b.map(|_| 0.0));
                }
                Op::Dense(d) => {
                    d.weight = d.weight.map(|_| 0.0);
                    d.bias = d.bias.as_ref().map(|b| b.map(|_| 0.0));
                }
                _ => {}
            }
        }
        g
    }

    /// The TEE-only baseline: the same graph with every layer in the enclave.
    pub fn enclave_only(graph: &Graph) -> Result<Self, AsymError> {
        Self::build(graph, &AsymOptions::default(), false)
    }

    fn build(graph: &Graph, opts: &AsymOptions, split: bool) -> Result<Self, AsymError> {
        graph.validate()?;
        if graph.inputs.len() != 1 || graph.outputs.len() != 1 {
            return Err(AsymError::Unsupported(
                "asym runs graphs with one input and one output".into(),
            ));
        }
        match &opts.rank {
            RankRule::Fixed(0) | RankRule::Schedule { start: 0, .. } => {
                return Err(AsymError::Options(
                    "a rank of 0 would send a layer's raw input to the worker".into(),
                ));
            }
            RankRule::Energy {
                threshold,
                max_rank,
            } if !(0.0..1.0).contains(threshold) || *max_rank == 0 => {
                return Err(AsymError::Options(format!(
                    "energy threshold must be in [0, 1) and the rank cap positive (got {threshold}, {max_rank})"
                )));
            }
            _ => {}
        }
        if !(opts.noise_sigma.is_finite() && opts.noise_sigma >= 0.0) {
            return Err(AsymError::Options("noise σ must be finite and ≥ 0".into()));
        }
        let mut layers = Vec::new();
        let mut layer_of_node = vec![None; graph.nodes.len()];
        for (i, n) in graph.nodes.iter().enumerate() {
            let in_shape = n
                .inputs
                .first()
                .map(|&v| graph.shape(v).to_vec())
                .unwrap_or_default();
            let out_shape = graph.shape(n.output).to_vec();
            let kind = match &n.op {
                Op::Conv(c) => {
                    if in_shape.len() != 4 || out_shape.len() != 4 {
                        return Err(AsymError::Shape(format!("conv '{}' is not NCHW", n.name)));
                    }
                    let g = conv_geometry(c, &in_shape, &out_shape);
                    LinearKind::Conv(ConvShape {
                        c: in_shape[1],
                        co: out_shape[1],
                        g,
                    })
                }
                Op::Dense(d) => LinearKind::Dense {
                    k: d.weight.shape().get(1).copied().unwrap_or(0),
                    m: d.weight.shape().first().copied().unwrap_or(0),
                },
                Op::MatMul | Op::Gemm(_) => {
                    return Err(AsymError::Unsupported(format!(
                        "node '{}' ({}) multiplies two variables; asym splits only Conv and Dense",
                        n.name,
                        n.op.kind()
                    )));
                }
                _ => continue,
            };
            layer_of_node[i] = Some(layers.len());
            layers.push(LinearLayer {
                id: layers.len(),
                node: i,
                name: n.name.clone(),
                batch: in_shape.first().copied().unwrap_or(1),
                shared_basis: matches!(kind, LinearKind::Dense { .. })
                    || opts.basis == Basis::Batch,
                kind,
                placement: Placement::Enclave(EnclaveReason::Baseline),
            });
        }
        if let RankRule::PerLayer(r) = &opts.rank
            && r.len() != layers.len()
        {
            return Err(AsymError::Options(format!(
                "{} per-layer ranks for a graph with {} linear layers",
                r.len(),
                layers.len()
            )));
        }
        if split {
            let last = layers.len().saturating_sub(1);
            for (j, l) in layers.iter_mut().enumerate() {
                let (rows, cols) = l.matrix();
                let full = rows.min(cols);
                let grouped = matches!(graph.nodes.get(l.node).map(|n| &n.op), Some(Op::Conv(c)) if c.groups != 1);
                let spec = match &opts.rank {
                    RankRule::Fixed(r) => RankSpec::Fixed(*r),
                    RankRule::PerLayer(r) => RankSpec::Fixed(r.get(j).copied().unwrap_or(0)),
                    RankRule::Schedule { start, cap } => RankSpec::Fixed(
                        start
                            .checked_shl(j.min(63) as u32)
                            .filter(|v| v >= start)
                            .unwrap_or(usize::MAX)
                            .min(*cap.max(start)),
                    ),
                    RankRule::Energy {
                        threshold,
                        max_rank,
                    } => RankSpec::Energy {
                        threshold: *threshold,
                        max_rank: *max_rank,
                    },
                };
                let full_rank = match spec {
                    RankSpec::Fixed(r) => r >= full,
                    RankSpec::Energy { .. } => full <= 1,
                };
                let chosen_whole = matches!(spec, RankSpec::Fixed(0));
                l.placement = if j == last {
                    Placement::Enclave(EnclaveReason::Head)
                } else if chosen_whole {
                    Placement::Enclave(EnclaveReason::Chosen)
                } else if grouped {
                    Placement::Enclave(EnclaveReason::Grouped)
                } else if full_rank {
                    Placement::Enclave(EnclaveReason::FullRank)
                } else {
                    l.placement = Placement::Split(spec);
                    let unprofitable = match spec {
                        RankSpec::Fixed(r) => l.split_macs(r.min(full), &opts.decomp).0 >= l.macs(),
                        RankSpec::Energy { .. } => false,
                    };
                    let per_layer = matches!(opts.rank, RankRule::PerLayer(_));
                    if opts.skip_unprofitable && unprofitable && !per_layer {
                        Placement::Enclave(EnclaveReason::NoGain)
                    } else {
                        Placement::Split(spec)
                    }
                };
            }
        }
        Ok(Self {
            graph: graph.clone(),
            layers,
            layer_of_node,
            opts: opts.clone(),
            split,
        })
    }

    /// The graph (with the current weights).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Every Conv/Dense layer in execution order.
    pub fn layers(&self) -> &[LinearLayer] {
        &self.layers
    }

    /// The options.
    pub fn options(&self) -> &AsymOptions {
        &self.opts
    }

    /// What the worker needs: the weights and geometry of every split layer (the worker knows
    /// the model; AsymML protects the data, not the weights).
    pub fn worker_layers(&self) -> Vec<WorkerLayer> {
        self.layers
            .iter()
            .filter(|l| matches!(l.placement, Placement::Split(_)))
            .filter_map(|l| {
                let op = match self.graph.nodes.get(l.node).map(|n| &n.op) {
                    Some(Op::Conv(c)) => WorkerOp::Conv(c.clone()),
                    Some(Op::Dense(d)) => WorkerOp::Dense(d.clone()),
                    _ => return None,
                };
                Some(WorkerLayer {
                    id: l.id,
                    name: l.name.clone(),
                    kind: l.kind,
                    op,
                })
            })
            .collect()
    }

    /// An estimate of the enclave's memory for one pass at the given mean ranks per layer
    /// (`ranks[id]`; ignored for layers kept whole), in bytes of `f32`: every layer's weights
    /// and biases (the enclave folds the split layers' weights too), times three in training
    /// (weights, gradients, momentum); the largest live input-plus-output of one node in
    /// inference, every activation of the pass in training (the backward pass reads them);
    /// and the low-rank factors `U` and `V` of the split layers. What the TEE cost model pages
    /// against the EPC budget.
    pub fn enclave_bytes(&self, ranks: &[f64], training: bool) -> u64 {
        let g = &self.graph;
        let numel = |v: usize| g.shape(v).iter().product::<usize>() as u64;
        let mut weights = 0u64;
        let (mut peak, mut all) = (0u64, 0u64);
        for n in &g.nodes {
            match &n.op {
                Op::Conv(c) => {
                    weights += (c.weight.len() + c.bias.as_ref().map_or(0, |b| b.len())) as u64
                }
                Op::Dense(d) => {
                    weights += (d.weight.len() + d.bias.as_ref().map_or(0, |b| b.len())) as u64
                }
                Op::Constant(t) => weights += t.len() as u64,
                _ => {}
            }
            let io = numel(n.output) + n.inputs.iter().map(|&v| numel(v)).sum::<u64>();
            peak = peak.max(io);
            all += numel(n.output);
        }
        let factors: u64 = self
            .layers
            .iter()
            .filter(|l| matches!(l.placement, Placement::Split(_)))
            .map(|l| {
                let k = ranks.get(l.id).copied().unwrap_or(0.0).ceil() as u64;
                let (rows, cols) = l.matrix();
                l.matrices() as u64 * k * (rows + cols) as u64
            })
            .sum();
        let floats = if training {
            3 * weights + all + factors
        } else {
            weights + peak + factors
        };
        floats * 4
    }

    /// The layer a node computes, if it is linear.
    pub fn layer_of_node(&self, node: usize) -> Option<&LinearLayer> {
        self.layer_of_node
            .get(node)
            .copied()
            .flatten()
            .and_then(|i| self.layers.get(i))
    }
}

/// The weights of a linear layer, as the worker holds them.
#[derive(Clone, Debug)]
pub enum WorkerOp {
    /// Convolution.
    Conv(Conv),
    /// Dense.
    Dense(Dense),
}

/// A split layer as the worker sees it: id, geometry and weights.
#[derive(Clone, Debug)]
pub struct WorkerLayer {
    /// Layer id (index in [`Plan::layers`]).
    pub id: usize,
    /// Node name.
    pub name: String,
    /// Geometry.
    pub kind: LinearKind,
    /// Weights and bias.
    pub op: WorkerOp,
}

/// Rewrite a graph for another batch size: every value computed from the input whose leading
/// dimension is the old batch gets `batch` instead. For the builders' batch-1 networks.
pub fn rebatch(graph: &Graph, batch: usize) -> Result<Graph, AsymError> {
    let old = graph
        .inputs
        .first()
        .and_then(|&i| graph.shape(i).first().copied())
        .ok_or_else(|| AsymError::Unsupported("graph has no batched input".into()))?;
    if batch == 0 {
        return Err(AsymError::Options("batch must be positive".into()));
    }
    let mut g = graph.clone();
    let mut ids: Vec<usize> = g.inputs.clone();
    ids.extend(
        g.nodes
            .iter()
            .filter(|n| !matches!(n.op, Op::Constant(_)))
            .map(|n| n.output),
    );
    for id in ids {
        if let Some(v) = g.values.get_mut(id)
            && v.shape.first() == Some(&old)
        {
            v.shape[0] = batch;
        }
    }
    g.validate()?;
    Ok(g)
}
