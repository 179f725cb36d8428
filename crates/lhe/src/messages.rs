//! Messages of the lhe scheme. Ciphertexts travel as `tessera_he::wire` envelopes (versioned,
//! length-checked, fingerprinted with the parameters). Byte fields are serialized as bytes
//! (`serde_bytes`: postcard's wire format for a sequence of u8, read and written in one copy).

use crate::PublicSetup;
use serde::{Deserialize, Serialize};

/// Enclave → server (the enclave connects to the server and drives every request).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EnclaveToServer {
    /// The public set-up the server computes by.
    Hello(PublicSetup),
    /// Give me the next data owner's request (the server answers when one arrives).
    Next,
    /// Compute linear layer `layer` of `request` on these input ciphertexts (`None`: the data
    /// owner's own ciphertexts, for the first layer).
    Compute {
        /// The request.
        request: u64,
        /// Index of the linear layer.
        layer: u32,
        /// Input ciphertexts in the layer's layout, or `None`.
        #[serde(with = "serde_bytes")]
        input: Option<Vec<u8>>,
    },
    /// Send me the data owner's raw input ciphertexts (input encoding `Raw`).
    FetchInput {
        /// The request.
        request: u64,
    },
    /// The request is done: deliver this sealed result to its data owner.
    Done {
        /// The request.
        request: u64,
        /// AES-256-GCM under the session's result key.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
    /// The request failed; tell its data owner why.
    Failed {
        /// The request.
        request: u64,
        /// Why (no secret in it).
        reason: String,
    },
}

/// Server → enclave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ServerToEnclave {
    /// The set-up is accepted; whether an uploaded model for it is stored.
    Ready {
        /// An encrypted model for this set-up is loaded.
        model: bool,
    },
    /// A data owner's request.
    Request {
        /// The data owner's session (the enclave issued it).
        session: u64,
        /// The request's number (increasing per session).
        request: u64,
    },
    /// A linear layer's output ciphertexts.
    Computed {
        /// The request.
        request: u64,
        /// The layer.
        layer: u32,
        /// Output ciphertexts (degree 2).
        #[serde(with = "serde_bytes")]
        outs: Vec<u8>,
        /// Server compute time, ns.
        server_ns: u64,
    },
    /// The data owner's raw input ciphertexts.
    Input {
        /// The request.
        request: u64,
        /// The ciphertexts.
        #[serde(with = "serde_bytes")]
        cts: Vec<u8>,
    },
}

/// Data owner → server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientToServer {
    /// Run the model on this encrypted input.
    Infer {
        /// The session the enclave opened for this data owner.
        session: u64,
        /// The request's number (increasing per session).
        request: u64,
        /// Input ciphertexts (first layer's layout or raw chunks).
        #[serde(with = "serde_bytes")]
        input: Vec<u8>,
    },
}

/// Server → data owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ServerToClient {
    /// The sealed result of a request.
    Result {
        /// The request.
        request: u64,
        /// AES-256-GCM under the session's result key.
        #[serde(with = "serde_bytes")]
        sealed: Vec<u8>,
    },
}

/// Model owner → server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum OwnerToServer {
    /// An upload for this set-up (its fingerprint) of this many layers begins.
    Begin {
        /// `PublicSetup::fingerprint` of the set-up the weights were encrypted for.
        setup: [u8; 32],
        /// Number of layers that follow.
        layers: u32,
    },
    /// One layer's encrypted weights and biases, in order.
    Layer {
        /// The layer.
        index: u32,
        /// Weight ciphertexts.
        #[serde(with = "serde_bytes")]
        w: Vec<u8>,
        /// Bias ciphertexts.
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
    },
    /// Every layer was sent: store the upload.
    Commit,
}

/// Server → model owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ServerToOwner {
    /// The upload is stored (durably) and loaded.
    Stored {
        /// Bytes on the server's disk.
        bytes: u64,
    },
}
