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

use std::time::Instant;
use tessera_engine::{EngineError, argmax};
use tessera_engine::{ExactModel, Semantics};
use tessera_model::stats::stats;
use tessera_model::{Graph, Tensor};

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
mod cost;
mod embedded;
mod gc;
mod lhe;
mod tee;
mod twopc;
pub use asym::Asym;
pub use cost::{Cost, Inference, Link, Summary, median, summarize};
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
