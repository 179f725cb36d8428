//! tessera's protection schemes behind one interface, and the cost report they all fill in.
//!
//! Every scheme runs one inference on one input and reports the same measured costs, so a user
//! can compare schemes on their own model: latency, bytes each way, rounds, bytes stored ahead of
//! time, and the share of the multiply-accumulates that ran on the trusted side.
//!
//! Schemes so far: `plain` (the integer reference, no protection) and `tee` (the whole model
//! in an enclave, reached over an attested channel) and `gc` (the enclave garbles, an untrusted
//! worker evaluates) and `asym` (low-rank split: the enclave keeps the low-rank part of every
//! linear layer's input, a worker computes on the residual). Each later scheme (`lhe`,
//! `attested`, `2pc`) adds a type implementing [`Scheme`].

#![warn(missing_docs)]

use serde::Serialize;
use std::time::{Duration, Instant};
use tessera_engine::{EngineError, argmax};
use tessera_engine::{ExactModel, Semantics};
use tessera_model::stats::stats;
use tessera_model::{Graph, Tensor};

/// Costs of one inference, measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cost {
    /// Wall time from input to prediction.
    pub latency: Duration,
    /// Bytes sent by the data owner's side (client or enclave) to untrusted parties.
    pub bytes_up: u64,
    /// Bytes received back.
    pub bytes_down: u64,
    /// Round trips between parties.
    pub rounds: u64,
    /// Bytes of precomputed material stored for this inference (garbled circuits, HE keys, …).
    pub stored_bytes: u64,
    /// Multiply-accumulates run on the trusted side.
    pub trusted_macs: u64,
    /// All multiply-accumulates of the inference.
    pub total_macs: u64,
    /// Modeled time of the trusted part inside a real TEE (from the runtime's cost model), where
    /// the scheme has one. A model, never added to `latency`.
    pub modeled_tee: Option<Duration>,
}

/// The result of one private inference.
#[derive(Clone, Debug)]
pub struct Inference {
    /// The model output in real units (dequantized logits or probabilities).
    pub output: Tensor,
    /// The exact integer output (the value every scheme must reproduce; `output` is it times
    /// the output scale).
    pub exact: Tensor<i64>,
    /// The real value of one step of `exact`.
    pub scale: f64,
    /// Argmax of the output.
    pub class: usize,
    /// What it cost.
    pub cost: Cost,
}

/// Errors of a scheme.
#[derive(Debug, thiserror::Error)]
pub enum SchemeError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The scheme cannot run this model or input.
    #[error("{0}")]
    Unsupported(String),
    /// The runtime (transport, enclave, attestation) failed.
    #[error(transparent)]
    Runtime(#[from] tessera_runtime::RuntimeError),
}

/// A way of running a model privately.
pub trait Scheme {
    /// Scheme name as used on the command line.
    fn name(&self) -> &'static str;
    /// What the untrusted side learns, in one line.
    fn protects(&self) -> &'static str;
    /// Run one inference.
    fn infer(&mut self, input: &Tensor) -> Result<Inference, SchemeError>;
    /// Whether the scheme reproduces the integer reference bit for bit (false: a float scheme,
    /// equal to the float engine within rounding).
    fn exact(&self) -> bool {
        true
    }
    /// A caveat every result of this scheme instance must carry (for example gc's "calibrated,
    /// not sound"); `None` when its results hold without one.
    fn caveat(&self) -> Option<String> {
        None
    }
}

mod asym;
mod embedded;
mod gc;
mod lhe;
mod tee;
mod twopc;
pub use asym::Asym;
pub use gc::Gc;
pub use lhe::Lhe;
pub use tee::{Tee, TeeOptions};
pub use tessera_asym::AsymOptions;
pub use tessera_gc::GcOptions;
pub use twopc::TwoPc;

/// The names of the schemes this build offers.
pub const SCHEMES: &[&str] = &["plain", "tee", "gc", "asym", "lhe", "2pc"];

/// Whether scheme `name` can run `g`, decided before any work (no enclave, worker or garbling is
/// started): the integer semantics for every scheme (the enclave runs them), the circuit for
/// `gc`, the split plan for `asym`. The error names the node and the op it cannot run.
pub fn check(name: &str, g: &Graph, semantics: &Semantics) -> Result<(), SchemeError> {
    ExactModel::new(g, semantics)?;
    match name {
        "plain" | "tee" => Ok(()),
        "gc" => tessera_gc::check_model(g, semantics)
            .map_err(|e| SchemeError::Unsupported(e.to_string())),
        "asym" => tessera_asym::Plan::new(g, &AsymOptions::default())
            .map(|_| ())
            .map_err(|e| SchemeError::Unsupported(e.to_string())),
        "lhe" => tessera_lhe::LheModel::new(g, semantics)
            .map(|_| ())
            .map_err(|e| SchemeError::Unsupported(e.to_string())),
        "2pc" => twopc::lowered(g, semantics).and_then(|m| {
            tessera_twopc::model::Cut::new(m)
                .map(|_| ())
                .map_err(|e| SchemeError::Unsupported(e.to_string()))
        }),
        other => Err(SchemeError::Unsupported(format!(
            "unknown scheme '{other}'; this build offers: {}",
            SCHEMES.join(", ")
        ))),
    }
}

/// The schemes of this build that can run `g` ([`check`]).
pub fn schemes_for(g: &Graph, semantics: &Semantics) -> Vec<&'static str> {
    SCHEMES
        .iter()
        .copied()
        .filter(|s| check(s, g, semantics).is_ok())
        .collect()
}

/// `plain`: the integer reference in one process, no protection. Every other scheme's output is
/// checked against it bit for bit.
pub struct Plain {
    model: ExactModel,
    macs: u64,
}

impl Plain {
    /// Quantize `graph` under `semantics`.
    pub fn new(graph: &tessera_model::Graph, semantics: &Semantics) -> Result<Self, SchemeError> {
        Ok(Self {
            macs: stats(graph).macs,
            model: ExactModel::new(graph, semantics)?,
        })
    }
}

impl Scheme for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }
    fn protects(&self) -> &'static str {
        "nothing (reference)"
    }
    fn infer(&mut self, input: &Tensor) -> Result<Inference, SchemeError> {
        let t0 = Instant::now();
        let exact = self.model.run(input)?;
        let output = self.model.dequantize(&exact)?;
        let class = argmax(output.data());
        let cost = Cost {
            latency: t0.elapsed(),
            trusted_macs: 0,
            total_macs: self.macs,
            ..Cost::default()
        };
        Ok(Inference {
            output,
            scale: self.model.output_scale()?,
            exact,
            class,
            cost,
        })
    }
}

/// Aggregated costs of a scheme over many inferences (medians).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scheme name.
    pub scheme: String,
    /// What it hides from the untrusted side.
    pub protects: String,
    /// Inferences run.
    pub inferences: usize,
    /// Correct top-1 predictions, when labels were known.
    pub correct: Option<usize>,
    /// Inferences whose exact integer output equals the plain reference bit for bit.
    pub exact_matches: usize,
    /// Whether the scheme computes the integer semantics (false: float, like `asym`).
    pub exact_semantics: bool,
    /// Median latency in milliseconds.
    pub latency_ms_median: f64,
    /// Median bytes up per inference.
    pub bytes_up: u64,
    /// Median bytes down per inference.
    pub bytes_down: u64,
    /// Median rounds per inference.
    pub rounds: u64,
    /// Median stored bytes per inference.
    pub stored_bytes: u64,
    /// Trusted share of the multiply-accumulates (0..1), `None` where no trusted part exists.
    pub trusted_share: Option<f64>,
    /// Median modeled TEE time in milliseconds, where the scheme has a trusted part.
    pub modeled_tee_ms_median: Option<f64>,
}

/// Median of a list (upper median; 0 for empty).
pub fn median<T: Copy + PartialOrd + Default>(v: &mut [T]) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Summarise a scheme's inferences.
pub fn summarize(
    scheme: &dyn Scheme,
    runs: &[Inference],
    labels: Option<&[u8]>,
    reference: &[Tensor<i64>],
    has_trusted_part: bool,
) -> Summary {
    let mut lat: Vec<f64> = runs
        .iter()
        .map(|r| r.cost.latency.as_secs_f64() * 1e3)
        .collect();
    let mut up: Vec<u64> = runs.iter().map(|r| r.cost.bytes_up).collect();
    let mut down: Vec<u64> = runs.iter().map(|r| r.cost.bytes_down).collect();
    let mut rounds: Vec<u64> = runs.iter().map(|r| r.cost.rounds).collect();
    let mut stored: Vec<u64> = runs.iter().map(|r| r.cost.stored_bytes).collect();
    let mut modeled: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.cost.modeled_tee.map(|d| d.as_secs_f64() * 1e3))
        .collect();
    let (tm, am) = runs.iter().fold((0u64, 0u64), |(t, a), r| {
        (t + r.cost.trusted_macs, a + r.cost.total_macs)
    });
    Summary {
        scheme: match scheme.caveat() {
            Some(c) => format!("{} ({c})", scheme.name()),
            None => scheme.name().into(),
        },
        protects: scheme.protects().into(),
        inferences: runs.len(),
        correct: labels.map(|l| {
            runs.iter()
                .zip(l)
                .filter(|(r, y)| r.class == usize::from(**y))
                .count()
        }),
        exact_matches: runs
            .iter()
            .zip(reference)
            .filter(|(r, e)| r.exact.data() == e.data())
            .count(),
        exact_semantics: scheme.exact(),
        latency_ms_median: median(&mut lat),
        bytes_up: median(&mut up),
        bytes_down: median(&mut down),
        rounds: median(&mut rounds),
        stored_bytes: median(&mut stored),
        trusted_share: if has_trusted_part && am > 0 {
            Some(tm as f64 / am as f64)
        } else {
            None
        },
        modeled_tee_ms_median: if modeled.is_empty() {
            None
        } else {
            Some(median(&mut modeled))
        },
    }
}
