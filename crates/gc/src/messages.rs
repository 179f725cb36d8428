//! Messages between the enclave (garbler) and the worker (evaluator).

use serde::{Deserialize, Serialize};

/// Enclave → worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The model the worker compiles its public circuit from ([`crate::public_model`], ONNX),
    /// with the integer semantics (for v2, its calibration: public where the weights are) and
    /// the number of CRT primes.
    Setup {
        /// ONNX bytes of the public model.
        model_onnx: Vec<u8>,
        /// The integer semantics the circuit reproduces.
        semantics: tessera_engine::Semantics,
        /// CRT primes k.
        primes: u32,
        /// Per circuit step, the primes its sign gadgets use (empty: all k;
        /// `NetworkCircuit::with_sign_bases`).
        sign_bases: Vec<u8>,
        /// The enclave's namespace for garbling files on the worker (both of its connections
        /// send the same one), so that several enclaves can share a worker.
        namespace: u64,
    },
    /// A piece of one garbling's material, in order; `last` closes it.
    Material {
        /// The enclave's number for this garbling (its file on the worker).
        slot: u64,
        /// Bytes of the material stream.
        data: Vec<u8>,
        /// Whether this is the last piece.
        last: bool,
    },
    /// Evaluate the stored garbling `slot` on these input labels (then delete it).
    Evaluate {
        /// Which garbling.
        slot: u64,
        /// Serialized input labels.
        labels: Vec<u8>,
    },
}

/// Worker → enclave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// The circuit is compiled; the worker computes on `device`.
    Ready {
        /// What the worker computes on.
        device: String,
    },
    /// A garbling is stored.
    Stored {
        /// Which.
        slot: u64,
        /// Its size on the worker's disk.
        bytes: u64,
    },
    /// The output labels of an evaluation.
    Output {
        /// Which garbling was evaluated.
        slot: u64,
        /// Serialized output labels.
        labels: Vec<u8>,
        /// Time the evaluation took on the worker, nanoseconds.
        eval_ns: u64,
    },
}
