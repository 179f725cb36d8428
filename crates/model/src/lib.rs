//! tessera's model layer: a typed IR for the networks every scheme runs, ONNX import and export
//! (protobuf handled by `prost`), static shape inference, network statistics, and seeded builders
//! for the networks the literature measures.
//!
//! Nothing here executes a network; the engines live in `tessera-engine`.

#![warn(missing_docs)]

pub mod builder;
pub mod builders;
pub mod export;
pub mod import;
pub mod ir;
pub mod limits;
pub mod proto;
pub mod stats;
pub mod tensor;

pub use builder::GraphBuilder;
pub use import::{ImportOptions, import_model, load_model};
pub use ir::{BinOp, Conv, Dense, Gemm, Graph, Node, Op, Pool, QParam, ValueId, ValueInfo};
pub use limits::{Budget, ImportLimits};
pub use tensor::Tensor;

/// Everything that can go wrong reading, building or checking a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes are not a valid ONNX protobuf message.
    #[error("not a valid ONNX file: {0} (is the file truncated or not an .onnx model?)")]
    Decode(String),
    /// An operator or attribute outside what tessera supports.
    #[error("node '{node}' (op {op}): {detail}")]
    Unsupported {
        /// Node name.
        node: String,
        /// ONNX op type.
        op: String,
        /// What is unsupported and what is.
        detail: String,
    },
    /// A graph that is structurally wrong (dangling reference, missing value, …).
    #[error("invalid model: {0}")]
    Invalid(String),
    /// Shapes that do not fit together.
    #[error("shape error: {0}")]
    Shape(String),
    /// An attribute, rank or dimension outside what [`ImportLimits`] accepts.
    #[error(
        "node '{node}' (op {op}): {attr} = {value} is outside the accepted range 0..={max}; no network tessera targets needs this, so the file is corrupt or hostile (if it is intended, raise ImportLimits::{field})"
    )]
    OutOfRange {
        /// Node name (or the value's name for a graph input).
        node: String,
        /// ONNX op type.
        op: String,
        /// Which attribute (or "rank", "a dimension").
        attr: String,
        /// The value found.
        value: i64,
        /// The largest accepted.
        max: u64,
        /// The [`ImportLimits`] field that sets the cap.
        field: &'static str,
    },
    /// A node, or the model up to that node, needs more memory or work than the budget allows.
    #[error(
        "node '{node}' (op {op}) needs {needed} of {resource}, over the {scope} budget of {limit}; if the model is trusted, raise the budget: {how}"
    )]
    OverBudget {
        /// The node (for a per-model budget: the node at which it ran out).
        node: String,
        /// Its op kind.
        op: String,
        /// Memory or work.
        resource: limits::Resource,
        /// The node's own budget or the model's.
        scope: limits::Scope,
        /// What it needs.
        needed: u64,
        /// The budget.
        limit: u64,
        /// How to raise it.
        how: &'static str,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}
