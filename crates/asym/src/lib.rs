//! The `asym` scheme (AsymML): the linear layers of a network are split between a small trusted
//! enclave and a fast untrusted worker by a low-rank decomposition of their inputs.
//!
//! # The scheme
//!
//! For the input `X` of every Conv and Dense layer — the network input included — the enclave
//! computes a low-rank part and a residual, `X = U·V + R`:
//!
//! * a conv input is decomposed **per sample** as the matrix `M ∈ ℝ^{C×HW}` (channels ×
//!   positions), AsymML's view: a convolution mixes channels linearly, so `U` (`C × k`) folds into
//!   the weights, `W' = W·U` gives `k` virtual input channels, and the enclave computes
//!   `conv(V, W')` — `k/C` of the layer's multiply-adds plus the fold;
//! * a dense input is decomposed as the **batch** matrix `N × K` (per sample it is a vector, which
//!   has no low-rank structure to exploit); at batch 1 every dense layer therefore stays in the
//!   enclave.
//!
//! The worker receives only `R` and returns `L(R) = conv(R, W) + b`; the enclave adds its
//! low-rank part, applies every non-linear op (ReLU, pooling, residual additions, softmax), and
//! decomposes the next layer's input. The last linear layer (the classifier head) runs entirely
//! in the enclave. Because `U·V + R = X` holds up to float rounding, the output equals the unsplit
//! model whatever the rank: the rank only moves work (and information) between the two sides.
//! The decomposition is a randomized range finder with subspace iterations and an exact small
//! eigen-solve ([`decompose`]), its subspace estimated on a sample of the columns of a wide
//! matrix and its projection exact on all of them; rank by schedule (start 2, doubling, cap
//! 32), fixed, by an energy threshold (`‖R‖²/‖X‖² ≤ τ`, exactly, per decomposed matrix), or per
//! layer as [`select`] chooses for a global target (`--trusted-share S`: the least largest
//! residual energy within a share of the multiply-adds; `--energy E`: the least trusted work
//! with every layer's estimated energy ≤ E; a layer may be kept whole when that is cheaper).
//!
//! [`Basis::PerSample`] is AsymML's form above. Under [`Basis::Batch`] a conv input is
//! decomposed as the batch matrix `C × N·H·W`: one `U` per layer per batch, the fold `W·U` paid
//! once per batch instead of once per sample, which is what makes late, small-spatial layers
//! worth splitting at batch > 1. Training ([`Trainer`]) follows the same
//! split: the worker computes the input gradient and the residual's weight gradient, the enclave
//! the low-rank weight gradient `Σ U·wgrad(V, G)` and the loss.
//!
//! # Threat model and leakage
//!
//! The enclave is trusted for confidentiality and integrity; the worker and the host are not.
//! The worker is sent the architecture and the weights of the layers it computes (the split
//! ones); every layer kept in the enclave — the classifier head among them — reaches it with
//! zero weights and bias ([`Plan::worker_graph`]), and the enclave's seed is not sent. AsymML
//! protects the data, not the split layers' weights. Exactly what the worker learns:
//!
//! * **Inference, per split layer:** the residual `R = X − U·V` in the clear. `R` is *not*
//!   encrypted or blinded: it is the part of each activation outside its top-`k` channel
//!   subspace — edges and fine texture of the input image at the first layer. `‖R‖²/‖X‖²`
//!   (reported per layer) is the fraction of the activation's energy the worker sees; at τ = 0.1
//!   that is up to 10%. From `R` the worker also learns the rank `k` kept (the numerical rank of
//!   `R` is at most `C − k`) and the singular values of `X` below the `k`-th (they are those of
//!   `R`). The raw input never reaches the worker (its first layer is split at rank ≥ 1 or kept in
//!   the enclave), but an input with little energy outside a few components is still partly
//!   visible. With the optional Gaussian noise σ (3LegRace's DP variant) the worker sees
//!   `R + N(0, σ²)` instead, the noise drawn in the enclave from the OS-seeded CSPRNG afresh for
//!   every residual, so nothing the worker holds lets it regenerate and subtract the noise; the
//!   output is then no longer exact.
//! * **Batch basis:** the worker sees, for each sample, its activation minus its projection on
//!   the *batch's* common top-`k` subspace. The energy threshold then bounds the residual
//!   energy of the batch as a whole: a sample unlike the rest of its batch can leave more than
//!   τ of its own energy to the worker (the per-sample form bounds each sample). The worker
//!   also learns that the batch's samples share the kept subspace (it is the same for all of
//!   them), not the subspace itself. Per-layer ranks chosen by [`select`] are fixed before the
//!   pass, so the energy actually left varies with the input: each run reports it per layer.
//! * **Inference, from the worker:** `L(R)`. An untrusted worker can return anything: the enclave
//!   checks shapes and finiteness, but nothing here verifies the arithmetic (no Freivalds check as
//!   in Slalom); a malicious worker can corrupt the output, not learn more.
//! * **Training:** for every split layer the upstream gradient `G = ∂ℓ/∂Y` in the clear (as in
//!   AsymML), the residuals it is applied to, and every update of its weights. `G` is zero where
//!   the ReLU that follows was inactive and outside each max-pool's chosen position, so the
//!   activation and pooling masks of the batch can be read off it; for the last split layer
//!   `G` is that mask times the head's backward pass of `softmax − onehot(label)`, which carries
//!   the labels through the head's weights: the worker is not sent those weights, but each `G`
//!   is a fixed linear image of `softmax − onehot(label)` under them, so over many steps the
//!   labels are not safe from it. Gradients carry information about the batch's
//!   inputs (gradient-inversion attacks); this scheme does not hide them. The loss, the head's
//!   weights and gradients, and the low-rank parts stay in the enclave.
//! * Shapes, ranks per layer and timing are visible to the host.
//!
//! # API for the runtime
//!
//! [`Plan::new`] places every layer; [`Plan::worker_layers`] is what the worker must hold. The
//! enclave drives a pass with [`infer`] (or [`Trainer::step`]) through a [`WorkerLink`];
//! [`LocalWorker`] is the in-process worker, and its functions [`worker_linear`] /
//! [`worker_backward`] are what a remote worker runs. [`enclave_split`] and [`enclave_combine`]
//! expose the two halves of one split layer for a runtime that wants to overlap them.

#![warn(missing_docs)]

pub mod decompose;
pub mod enclave;
pub mod kernels;
pub mod plan;
pub mod profile;
pub mod select;
pub mod service;
pub mod train;
pub mod worker;

pub use decompose::{DecompOptions, LowRank, RankSpec, decompose, decompose_blocks};
pub use enclave::{
    EnclaveTime, Inference, LayerRun, LowRankState, Pending, enclave_combine, enclave_split, infer,
};
pub use plan::{
    AsymOptions, Basis, EnclaveReason, LinearKind, LinearLayer, Placement, Plan, RankRule,
    WorkerLayer, WorkerOp, rebatch,
};
pub use profile::{LayerProfile, RankProfile, rank_profile};
pub use select::{LayerChoice, LayerSpectrum, Selection, Target, select, spectra};
pub use train::{StepReport, TrainOptions, Trainer};
pub use worker::{LocalWorker, WorkerGrads, WorkerLink, worker_backward, worker_linear};

/// Everything that can go wrong in the asym scheme.
#[derive(Debug, thiserror::Error)]
pub enum AsymError {
    /// A model problem.
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    /// An engine problem.
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    /// Shapes that do not fit.
    #[error("shape error: {0}")]
    Shape(String),
    /// The caller's input does not fit.
    #[error("bad input: {0}")]
    Input(String),
    /// Invalid options.
    #[error("invalid options: {0}")]
    Options(String),
    /// An op or graph the scheme cannot run.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The enclave and the worker disagree (wrong layer, missing state, bad reply).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A failure at a named node.
    #[error("node '{node}': {source}")]
    At {
        /// Node name.
        node: String,
        /// Cause.
        source: Box<AsymError>,
    },
}

impl AsymError {
    /// Attach a node name.
    pub fn at(self, node: &str) -> Self {
        match self {
            e @ AsymError::At { .. } => e,
            e => AsymError::At {
                node: node.to_string(),
                source: Box::new(e),
            },
        }
    }
}
