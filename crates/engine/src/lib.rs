//! tessera's reference engines.
//!
//! * [`float`]: runs any imported graph in f32 (the accuracy reference).
//! * [`quant`]: the exact fixed-point integer semantics every private scheme must reproduce bit
//!   for bit, with width tracking.
//! * [`qint`]: the integer semantics v2 (per-channel weight scales, calibrated per-tensor
//!   activation scales, one requantization rule with saturation) that the schemes move to.
//! * [`train`]: a small SGD trainer for dense networks (the demo's self-made model).
//!
//! Convolutions run as im2col + blocked GEMM (`matrixmultiply`), split over all cores with rayon.

#![warn(missing_docs)]

pub mod float;
pub mod gemm;
pub mod gemm_f32;
pub mod gemm_i8;
pub mod qint;
pub mod quant;
pub mod semantics;
pub mod train;
pub mod window;

pub use float::{FloatModel, argmax, run_f32};

/// Runs `f` on a thread of rayon's pool, where it already is one. An inference is a sequence
/// of parallel loops with short sequential steps between them; run from outside the pool, every
/// loop hands its work to the pool and puts the caller to sleep until it is done (two context
/// switches per loop, about a tenth of a ResNet-18 CIFAR inference on 2 cores), and the
/// caller's thread is one core the loops do not use. On a pool thread the loops start in place
/// and the caller's core takes part.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Runs `f` on the calling thread's scratch buffer in `key` (kept between calls: no fresh pages
/// per layer). A thread that waits inside a parallel loop may run another inference's layer
/// (rayon steals work); that one finds the buffer taken and gets a fresh one.
pub(crate) fn with_scratch<T: Default + 'static, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut t) => f(&mut t),
        Err(_) => f(&mut T::default()),
    })
}
pub use quant::{QuantConfig, QuantModel};
pub use semantics::{ExactModel, Semantics};

/// Everything that can go wrong running a model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A model problem (shapes, structure).
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    /// The caller's input does not fit the model.
    #[error("bad input: {0}")]
    Input(String),
    /// The op cannot run in this engine.
    #[error("node '{node}': {detail}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Why.
        detail: String,
    },
    /// An integer left its range.
    #[error("integer overflow: {0}")]
    Overflow(String),
    /// A value needed more bits than the configured bound.
    #[error(
        "node '{node}' needs {bits} signed bits, over the bound of {bound}; lower the fractional bits or raise --max-bits"
    )]
    WidthExceeded {
        /// Node name.
        node: String,
        /// Bits needed.
        bits: u32,
        /// The bound.
        bound: u32,
    },
    /// A failure at a named node.
    #[error("node '{node}': {source}")]
    At {
        /// Node name.
        node: String,
        /// Cause.
        source: Box<EngineError>,
    },
    /// A bug in tessera.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl EngineError {
    /// Attach the node name.
    pub fn at(self, node: &str) -> Self {
        match self {
            e @ (EngineError::At { .. }
            | EngineError::Unsupported { .. }
            | EngineError::WidthExceeded { .. }) => e,
            e => EngineError::At {
                node: node.to_string(),
                source: Box::new(e),
            },
        }
    }
}
