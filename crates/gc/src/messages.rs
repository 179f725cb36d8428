//! Messages between the enclave (garbler) and the worker (evaluator).
//!
//! Byte fields are serialized as bytes (`serde_bytes`): postcard writes them exactly as a
//! sequence of u8 (a length, then the bytes), but reads and writes them in one copy instead of
//! one call per byte, which had been about a fifth of the CPU time of a benchmark run.

use serde::{Deserialize, Serialize};

/// Enclave → worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The model the worker compiles its public circuit from ([`crate::public_model`], ONNX),
    /// with the integer semantics (for v2, its calibration: public where the weights are) and
    /// the number of CRT primes.
    Setup {
        /// ONNX bytes of the public model.
        #[serde(with = "serde_bytes")]
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
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// Whether this is the last piece.
        last: bool,
    },
    /// Evaluate the stored garbling `slot` on these input labels (then delete it).
    Evaluate {
        /// Which garbling.
        slot: u64,
        /// Serialized input labels.
        #[serde(with = "serde_bytes")]
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
        #[serde(with = "serde_bytes")]
        labels: Vec<u8>,
        /// Time the evaluation took on the worker, nanoseconds.
        eval_ns: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same messages with their byte fields as plain sequences of u8 (the encoding before
    /// `serde_bytes`); only the position of `Setup` matters here.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum Plain {
        Setup,
        Material {
            slot: u64,
            data: Vec<u8>,
            last: bool,
        },
        Evaluate {
            slot: u64,
            labels: Vec<u8>,
        },
    }

    #[test]
    fn byte_fields_keep_the_wire_format_of_a_u8_sequence() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let ours = postcard::to_allocvec(&ToWorker::Material {
            slot: 7,
            data: data.clone(),
            last: true,
        })
        .unwrap();
        let plain = postcard::to_allocvec(&Plain::Material {
            slot: 7,
            data: data.clone(),
            last: true,
        })
        .unwrap();
        assert_eq!(ours, plain);
        let back: ToWorker = postcard::from_bytes(&plain).unwrap();
        assert!(matches!(back, ToWorker::Material { slot: 7, data: d, last: true } if d == data));
        let ours = postcard::to_allocvec(&ToWorker::Evaluate {
            slot: 1,
            labels: data.clone(),
        })
        .unwrap();
        let plain = postcard::to_allocvec(&Plain::Evaluate {
            slot: 1,
            labels: data,
        })
        .unwrap();
        assert_eq!(ours, plain);
    }
}
