//! The `gc` scheme (Dash, DESIGN §2.1): the enclave garbles the quantized network — a fresh
//! garbling per inference — and streams the garbled material to an untrusted worker, which
//! stores it; online, the enclave sends the input's labels in one message, the worker evaluates
//! and returns the output labels in one message, and the enclave decodes and checks them.
//!
//! # Threat model
//!
//! Trusted: the enclave (garbler; see `tessera_runtime::enclave` for the TEE's own threat model)
//! and the client. Untrusted and possibly malicious: the worker, its storage and the network
//! between it and the enclave.
//!
//! * **Confidentiality of data.** The worker sees garbled tables and one label per wire; under
//!   the garbling's security (the tweakable correlation-robust hash, prime moduli for every
//!   Δ-carrying wire) these reveal nothing about the input, the activations or the output. Each
//!   garbling is used for exactly one input: labels of two inputs under one garbling would reveal
//!   Δ, so the enclave forgets a garbling's secrets once its input is encoded.
//! * **Integrity.** The enclave accepts an output only when every output label is one of the two
//!   (or p) valid labels of its wire, checked against keyed digests the worker never sees; a
//!   worker that flips table bits, swaps or replays labels, evaluates an old garbling or returns
//!   random labels produces an error, never a wrong prediction (with probability 1 − 2^−λ per
//!   label, λ ≥ 120).
//! * **Never a silently wrong value.** Garbled wires cannot see a CRT wrap-around: a value
//!   outside the range of the k primes turns into a *valid* but wrong output label. The enclave
//!   therefore (a) chooses k as the smallest that holds the worst case of every value for all
//!   inputs with |x| ≤ `input_range` (`tessera_engine::quant::static_widths`), (b) refuses a
//!   fixed k below that bound ([`GcError::UnsoundPrimes`]), and (c) checks every quantized input
//!   against the range k was chosen for before it spends a garbling
//!   ([`GcError::InputOutOfRange`]). A k below the sound bound is possible only by opting in to
//!   a [`Calibration`] (widths measured on the user's data plus a stated margin); such a backend
//!   reports [`GcStats::calibrated`], and every result built on it is labelled
//!   [`CALIBRATED_LABEL`]. For a calibrated backend (c) uses the largest input the calibration
//!   saw, but an input inside that range can still drive an inner value past the calibrated
//!   range: that is exactly what "not sound" means.
//!   Under the integer semantics v2 (`tessera_engine::qint`) every activation saturates, the
//!   input included, so (a) holds for *every* input: k is computed from the circuit's own
//!   weights, biases and multipliers (`NetworkCircuit::sound_primes`), no input can fall outside
//!   it, and a calibrated k is refused as pointless. The same bounds give every ReLU and clamp
//!   the number of primes its sign needs; the enclave computes them and sends them to the worker,
//!   which must use them (a different list garbles a different circuit, and the output check
//!   fails).
//! * **What the worker learns by design**: the architecture, k, and the weights of the linear
//!   layers (they are public multipliers of the free operations; see `tessera_garble::network`).
//!   Biases and added constants are garbled and stay hidden. The worker receives the model with
//!   biases and added constants zeroed ([`public_model`]) and compiles the same circuit. Under
//!   v2 it also receives the calibration (every activation's calibrated minimum and maximum),
//!   from which it derives the same scales, multipliers, shifts and clamp bounds: per-tensor
//!   extremes of the calibration data, nothing per input.
//! * **What k reveals about the biases.** The sound k bounds every accumulator by
//!   Σ|w|·X + |b| per layer, so with automatic k the worker (who knows the weights and the input
//!   range) learns in which of the at most 13 CRT ranges the largest bias-inclusive bound falls:
//!   a coarse upper and lower bound on the largest |bias| of the layer that sets k, never a bias
//!   value. A deployment that must not reveal even that fixes k with `--gc-primes` from public
//!   information (k must still be at least the sound bound, which the enclave checks). Under v2
//!   the per-step sign bases reveal the same kind of coarse bound per layer (in which of at most
//!   13 ranges each layer's rescaled worst case falls, biases included); pow2 sends none.
//! * Messages between enclave and worker travel on a plain framed channel (sequence numbers,
//!   size limits, deadlines): they carry nothing secret, and tampering is caught by the output
//!   check. Denial of service by the worker is out of scope.

#![warn(missing_docs)]

mod backend;
pub mod cluster;
mod messages;
mod worker;

pub use backend::{CALIBRATED_LABEL, Calibration, GarbleProgress, GcBackend, GcOptions, GcStats};
pub use messages::{FromWorker, ToWorker};
pub use worker::{WorkerOptions, serve_worker, serve_worker_tcp};

use tessera_model::Graph;
use tessera_model::ir::{BinOp, Op};

/// Errors of the gc scheme.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Garbling, evaluation or decoding failed (for decoding: the worker cheated or erred).
    #[error(transparent)]
    Garble(#[from] tessera_garble::GarbleError),
    /// Transport.
    #[error(transparent)]
    Runtime(#[from] tessera_runtime::RuntimeError),
    /// The model.
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    /// The engine.
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    /// Storage on the worker.
    #[error("worker storage {path}: {reason}")]
    Store {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The peer broke the protocol.
    #[error("gc protocol: {0}")]
    Protocol(String),
    /// A k below the bound that holds every value (the worst case for the stated input range,
    /// or the calibrated widths): values could wrap in CRT and decode to a wrong prediction.
    #[error(
        "gc: {primes} CRT primes are below the {sound} needed to hold every value (for every \
         input in the stated range; under --semantics v2, for every input), so a wrap-around \
         would return a wrong prediction as valid; use at least {sound} primes, or, under \
         --semantics pow2, opt in to a calibrated range measured on your data (--gc-calibrated \
         DATA, labelled 'calibrated, not sound')"
    )]
    UnsoundPrimes {
        /// The k asked for.
        primes: usize,
        /// The smallest k that holds the bound.
        sound: usize,
    },
    /// The worst case of some value is beyond the largest CRT range the basis offers.
    #[error(
        "gc: no sound CRT range: the worst case for the stated input range reaches {need}, beyond \
         the {half} that the largest basis ({primes} primes) holds; narrow the input range, lower \
         --frac-bits, or opt in to a calibrated range measured on your data (--gc-calibrated \
         DATA, labelled 'calibrated, not sound')"
    )]
    NoSoundRange {
        /// The largest |value| the worst case reaches.
        need: i64,
        /// M/2 of the largest basis.
        half: u64,
        /// Primes of the largest basis.
        primes: usize,
    },
    /// An input value outside the range k was chosen for.
    #[error(
        "gc: an input value of magnitude {widest} (quantized) exceeds the {limit} the CRT range \
         was chosen for; scale the input into range or start the enclave with a larger \
         --gc-input-range"
    )]
    InputOutOfRange {
        /// The largest |value| of the input.
        widest: u64,
        /// The largest accepted.
        limit: u64,
    },
}

impl From<GcError> for tessera_runtime::RuntimeError {
    fn from(e: GcError) -> Self {
        match e {
            GcError::Runtime(r) => r,
            other => tessera_runtime::RuntimeError::Backend(other.to_string()),
        }
    }
}

/// Whether the gc scheme can run `g` under these integer semantics: compiles its circuit (no
/// garbling, no worker), so the error names the node and what is not garbled.
pub fn check_model(g: &Graph, semantics: &tessera_engine::Semantics) -> Result<(), GcError> {
    let m = tessera_engine::ExactModel::new(g, semantics)?;
    tessera_garble::network::NetworkCircuit::compile_exact(&m, 2)?;
    Ok(())
}

/// The k the enclave picks by default for inputs with |x| ≤ `input_range` (v2: for every input,
/// which saturates): the smallest that holds the worst case of every value (see [`GcOptions`]).
/// Compiles the circuit, garbles nothing.
pub fn sound_primes(
    g: &Graph,
    semantics: &tessera_engine::Semantics,
    input_range: f32,
) -> Result<usize, GcError> {
    let m = tessera_engine::ExactModel::new(g, semantics)?;
    let probe = tessera_garble::network::NetworkCircuit::compile_exact(&m, 2)?;
    match &m {
        tessera_engine::ExactModel::Pow2(qm) => {
            let widths = tessera_engine::quant::static_widths(qm, input_range)?;
            probe.primes_needed(&widths, 0).map_err(no_sound_range)
        }
        tessera_engine::ExactModel::V2(im) => probe
            .sound_primes(im.input_quant()?.max_abs())
            .map_err(no_sound_range),
    }
}

/// A worst case beyond the basis is the user's choice of range, not a garbling failure: say so.
pub(crate) fn no_sound_range(e: tessera_garble::GarbleError) -> GcError {
    match e {
        tessera_garble::GarbleError::CrtOutOfRange { x, half } => GcError::NoSoundRange {
            need: x,
            half,
            primes: tessera_garble::crt::MAX_CRT_PRIMES,
        },
        other => GcError::Garble(other),
    }
}

/// The model as the worker may see it: every bias and every added or subtracted constant set to
/// zero (they become garbled constants), weights and multipliers kept (the worker learns them by
/// design). Compiling this graph gives the same circuit structure as the full one.
pub fn public_model(g: &Graph) -> Graph {
    let mut out = g.clone();
    for n in &mut out.nodes {
        match &mut n.op {
            Op::Conv(c) => {
                if let Some(b) = c.bias.as_mut() {
                    b.data_mut().iter_mut().for_each(|v| *v = 0.0);
                }
            }
            Op::Dense(d) => {
                if let Some(b) = d.bias.as_mut() {
                    b.data_mut().iter_mut().for_each(|v| *v = 0.0);
                }
            }
            Op::Binary {
                op: BinOp::Add | BinOp::Sub,
                constant: Some(c),
                ..
            } => c.data_mut().iter_mut().for_each(|v| *v = 0.0),
            _ => {}
        }
    }
    out
}
