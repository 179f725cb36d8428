//! Messages between a client and an enclave (the `tee` service).

use crate::cost::TeeCost;
use serde::{Deserialize, Serialize};

/// A tensor on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorMsg {
    /// Dimensions.
    pub shape: Vec<u32>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// Client to enclave.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Ask for evidence bound to this fresh nonce and the enclave's TLS certificate.
    Attest {
        /// 32 random bytes.
        nonce: [u8; 32],
    },
    /// Run the loaded model on one input.
    Infer(TensorMsg),
    /// Describe the enclave.
    Info,
    /// Open a scheme-specific session (`lhe`: HE parameters, public key, result key).
    Session,
}

/// What the enclave says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnclaveInfo {
    /// `sim`, `snp` or `tdx`.
    pub mode: String,
    /// Whether the TEE is simulated (no security).
    pub simulated: bool,
    /// Measurement, hex.
    pub measurement: String,
    /// Model name.
    pub model: String,
    /// Expected input shape.
    pub input_shape: Vec<u32>,
    /// The integer semantics, in words ("pow2 f = 8", "v2 w8a8 B = 8").
    pub semantics: String,
    /// Cost profile.
    pub profile: String,
    /// The scheme served (`tee`, `gc`, `asym`).
    pub scheme: String,
}

/// What an enclave that offloads work to an untrusted worker (`gc`, `asym`) spent on it for
/// one request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OffloadCost {
    /// The scheme (`gc`, `asym`).
    pub scheme: String,
    /// Online bytes enclave → worker.
    pub bytes_to_worker: u64,
    /// Online bytes worker → enclave.
    pub bytes_from_worker: u64,
    /// Online round trips enclave ↔ worker.
    pub rounds: u64,
    /// Bytes the worker stored ahead of time for this request (garbled material).
    pub stored_bytes: u64,
    /// Offline time the enclave spent preparing this request (garbling), nanoseconds.
    pub offline_ns: u64,
    /// Time the worker computed, nanoseconds (as the worker reports it).
    pub worker_ns: u64,
    /// Bytes the enclave keeps per prepared request (seeds, offsets, output digests).
    pub enclave_bytes_kept: u64,
    /// Multiply-accumulates run in the enclave.
    pub trusted_macs: u64,
}

/// Enclave to client.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EnclaveMsg {
    /// Evidence (an encoded `tessera_attest::Evidence`) and what its report data binds
    /// (`tessera_attest::session_report_data`): the client's nonce, the certificate and the
    /// application measurement.
    Evidence {
        /// Encoded evidence.
        evidence: Vec<u8>,
        /// The enclave's TLS certificate, DER.
        cert: Vec<u8>,
        /// The enclave's application measurement (48 bytes: binary, model, enclave policy).
        app_measurement: Vec<u8>,
        /// A key the enclave generated at start, bound into the report data (`lhe`: SHA-256 of
        /// its HE public key); empty for schemes without one.
        key_binding: Vec<u8>,
    },
    /// The model's exact integer output.
    Output {
        /// Output dimensions.
        shape: Vec<u32>,
        /// Integer output; `exact · scale` is the real output.
        exact: Vec<i64>,
        /// The real value of one integer step (2^−f, or the v2 output scale).
        scale: f64,
        /// Measured and modeled TEE costs of the request.
        tee: TeeCost,
        /// What the enclave offloaded to an untrusted worker, if anything.
        offload: Option<OffloadCost>,
    },
    /// Answer to `Info`.
    Info(EnclaveInfo),
    /// Answer to `Session`: the scheme's session bytes.
    Session(Vec<u8>),
}
