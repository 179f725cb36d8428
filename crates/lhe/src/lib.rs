//! The `lhe` scheme (DESIGN §2.5, after Liu–Zhang): leveled homomorphic encryption on an
//! untrusted server for every conv and dense layer, an enclave on that server only for the key
//! and the non-linear layers, and three parties that do not trust one another — the model
//! owner, the data owner, and the server's operator.
//!
//! # One inference
//!
//! 1. At start the enclave ([`enclave::LheBackend`]) generates a BFV key pair (parameters by
//!    the rule of `tessera_he::params` from every layer's proven accumulator bound); the secret
//!    key never leaves it. Its evidence binds SHA-256 of the public key's wire bytes
//!    (`tessera_attest::session_report_data_with_key`). It connects to the server and tells it
//!    the public set-up ([`PublicSetup`]: parameters, public key hash, layer shapes).
//! 2. The model owner ([`owner`]) attests the enclave, receives the public key inside TLS,
//!    checks it against the evidence's key binding, encrypts every linear layer's integer
//!    weights and biases (coefficient encoding) and uploads them to the server once; the server
//!    stores the upload atomically ([`server`]).
//! 3. The data owner ([`client`]) attests the enclave the same way and opens a session (a
//!    fresh 256-bit result key inside TLS), quantizes its input, encrypts it in the first
//!    layer's layout and sends it to the server.
//! 4. Per linear layer the server multiplies ciphertexts by ciphertexts (degree-2 results, no
//!    relinearization key exists); the enclave decrypts, checks every accumulator against its
//!    proven bound, requantizes, clamps and runs the non-linear layers exactly as the integer
//!    semantics v2 says (`IntModel::run_split`), and encrypts the next linear layer's input
//!    afresh. The last output is sealed under the session's result key (AES-256-GCM, the
//!    request number as nonce) and relayed by the server to the data owner.
//!
//! # Threat model
//!
//! Trusted by both owners: the enclave (see `tessera_runtime::enclave` for the TEE's own
//! model; in `sim` mode nothing is protected, and every report says so). It holds the model
//! (its measurement covers it, so the model owner pins exactly what it runs) and the secret key.
//!
//! * **The server** is honest-but-curious: it runs the protocol and tries to learn from what it
//!   sees — the architecture (layer shapes), the HE parameters (whose plaintext modulus `2^ℓ`
//!   bounds the largest accumulator to within a factor of two), ciphertexts under a key it does
//!   not have, sealed results, and timing. It never sees a plaintext weight, bias, input,
//!   activation or output. A server that deviates is *not* kept from corrupting results (it
//!   holds the public key, so it can substitute encryptions of values of its choice that stay
//!   in range), and it could feed one data owner's ciphertexts into another's request, so a
//!   colluding data owner could obtain an output computed on another's data: confidentiality
//!   against a malicious server needs ciphertexts bound to their request, which this version
//!   does not have. What it does catch: ciphertexts made under other parameters (fingerprint),
//!   malformed or truncated bytes, counts that do not match the layout, and decrypted values
//!   outside their proven bound (a wrong key, noise overflow, most tampering) — each ends the
//!   request with an error, and an out-of-range value also ends the data owner's session, so
//!   probing the enclave's range check reveals at most one bit per session.
//! * **The data owner** learns its own output (the logits at the output scale) and the public
//!   set-up, nothing about the weights beyond what the outputs reveal.
//! * **The model owner** learns nothing about inputs: it talks to the enclave and the server,
//!   never sees a request. Its upload is checked against the commitment to the measured
//!   model's integer weights that the enclave sends inside TLS, which catches a wrong model
//!   file; the enclave does not decrypt the upload, so a model owner who wants to can upload
//!   other weights than the measured ones — a data owner's assurance about which weights run
//!   rests on the model owner as well as on the measurement.
//! * Messages between the data or model owner and the enclave travel inside attested TLS;
//!   messages through the server are authenticated only where they matter to confidentiality
//!   (the sealed result is AES-GCM under a key the server never sees; ciphertexts are checked
//!   by fingerprint and range). Denial of service by the server is out of scope.

#![warn(missing_docs)]

pub mod client;
pub mod enclave;
pub mod messages;
pub mod owner;
pub mod server;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tessera_engine::qint::{IntLinear, IntModel, IntOp};
use tessera_engine::{ExactModel, Semantics};
use tessera_he::layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
use tessera_he::params::{LayerNeed, ParamOptions, Product};
use tessera_he::{HeError, HeParams};
use tessera_model::Graph;
use tessera_model::ir::Op;

/// Errors of the lhe scheme.
#[derive(Debug, thiserror::Error)]
pub enum LheError {
    /// The HE layer.
    #[error(transparent)]
    He(Box<HeError>),
    /// The HE layer, at a named linear layer.
    #[error("layer '{layer}': {source}")]
    AtLayer {
        /// The layer's node name.
        layer: String,
        /// What failed.
        source: Box<HeError>,
    },
    /// The engine.
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
    /// A tensor that does not fit its shape.
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    /// Transport, attestation, framing.
    #[error(transparent)]
    Runtime(#[from] tessera_runtime::RuntimeError),
    /// The model cannot run under lhe.
    #[error("lhe cannot run this model: {0}")]
    Unsupported(String),
    /// A party broke the protocol.
    #[error("lhe protocol: {0}")]
    Protocol(String),
    /// The server's storage.
    #[error("lhe server storage {path}: {reason}")]
    Store {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

impl From<HeError> for LheError {
    fn from(e: HeError) -> Self {
        LheError::He(Box::new(e))
    }
}

impl From<LheError> for tessera_runtime::RuntimeError {
    fn from(e: LheError) -> Self {
        match e {
            LheError::Runtime(r) => r,
            other => tessera_runtime::RuntimeError::Backend(other.to_string()),
        }
    }
}

/// A linear layer's geometry (public: the server computes by it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerShape {
    /// A convolution.
    Conv(ConvShape),
    /// A dense layer `[m, k]`.
    Dense {
        /// Inputs.
        k: usize,
        /// Outputs.
        m: usize,
    },
}

impl LayerShape {
    /// The coefficient layout at ring degree `n`.
    pub fn plan(&self, n: usize) -> Result<LinearPlan, HeError> {
        Ok(match self {
            LayerShape::Conv(s) => LinearPlan::Conv(ConvPlan::new(*s, n)?),
            LayerShape::Dense { k, m } => LinearPlan::Dense(DensePlan::new(*k, *m, n)?),
        })
    }
}

/// One linear layer of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The graph node.
    pub node: usize,
    /// The node's name.
    pub name: String,
    /// Its geometry.
    pub shape: LayerShape,
}

/// How the data owner encodes its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputEncoding {
    /// In the first linear layer's layout: the graph's input feeds that layer alone, so the
    /// server computes it straight on the data owner's ciphertexts.
    FirstLayer,
    /// Packed in `N`-coefficient chunks, decrypted by the enclave (the input feeds other ops
    /// first).
    Raw,
}

/// What the server learns: parameters, the public key's hash, the layer shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicSetup {
    /// The HE parameters' wire bytes.
    pub params: Vec<u8>,
    /// SHA-256 of the public key's wire bytes (an upload is for this key).
    pub public_key_hash: [u8; 32],
    /// The linear layers in graph order.
    pub layers: Vec<LayerSpec>,
    /// The input's encoding.
    pub input: InputEncoding,
    /// Number of input integers.
    pub input_len: usize,
}

impl PublicSetup {
    /// The fingerprint an upload and a stored model are filed under.
    pub fn fingerprint(&self) -> [u8; 32] {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        Sha256::digest(bytes).into()
    }
}

/// The model under lhe: the v2 lowering, its linear layers, their bounds and the parameters.
#[derive(Clone, Debug)]
pub struct LheModel {
    /// The lowered model.
    pub int: IntModel,
    /// Linear layers in graph order.
    pub layers: Vec<LayerSpec>,
    /// What each layer needs of the parameters (accumulator bounds).
    pub needs: Vec<LayerNeed>,
    /// The parameters.
    pub params: HeParams,
    /// Each layer's layout at the parameters' degree.
    pub plans: Vec<LinearPlan>,
    /// The input's encoding.
    pub input: InputEncoding,
}

/// The semantics lhe reproduces, or why not.
fn lowered(graph: &Graph, semantics: &Semantics) -> Result<IntModel, LheError> {
    match ExactModel::new(graph, semantics)? {
        ExactModel::V2(m) => Ok(m),
        ExactModel::Pow2(_) => Err(LheError::Unsupported(
            "lhe reproduces the integer semantics v2 (saturated activations give every layer a \
             proven accumulator bound, which sizes the plaintext modulus); run with \
             --semantics v2 or --calibrate DATA"
                .into(),
        )),
    }
}

fn linear_of(m: &IntModel, k: usize) -> Option<&IntLinear> {
    match m.op(k) {
        Some(IntOp::Linear(l)) => Some(l),
        _ => None,
    }
}

impl LheModel {
    /// Lower `graph` and choose the parameters by the rule.
    pub fn new(graph: &Graph, semantics: &Semantics) -> Result<Self, LheError> {
        let (int, layers, needs, input) = Self::derive(graph, semantics)?;
        let params = HeParams::choose(&needs, ParamOptions::default())?;
        Self::finish(int, layers, needs, params, input)
    }

    /// Lower `graph` for parameters chosen elsewhere (the enclave's, as a model owner receives
    /// them); the parameters must be the ones the rule picks for this model.
    pub fn with_params(
        graph: &Graph,
        semantics: &Semantics,
        params: HeParams,
    ) -> Result<Self, LheError> {
        let (int, layers, needs, input) = Self::derive(graph, semantics)?;
        let own = HeParams::choose(&needs, ParamOptions::default())?;
        if tessera_he::wire::fingerprint(&own) != tessera_he::wire::fingerprint(&params) {
            return Err(LheError::Protocol(format!(
                "the enclave's HE parameters ({}) are not the ones this model needs ({})",
                params.describe(),
                own.describe()
            )));
        }
        Self::finish(int, layers, needs, params, input)
    }

    #[allow(clippy::type_complexity)]
    fn derive(
        graph: &Graph,
        semantics: &Semantics,
    ) -> Result<(IntModel, Vec<LayerSpec>, Vec<LayerNeed>, InputEncoding), LheError> {
        let int = lowered(graph, semantics)?;
        let mut layers = Vec::new();
        let mut needs = Vec::new();
        for (k, node) in graph.nodes.iter().enumerate() {
            let Some(l) = linear_of(&int, k) else {
                continue;
            };
            let input = *node.inputs.first().ok_or_else(|| {
                LheError::Unsupported(format!("node '{}' has no input", node.name))
            })?;
            let ishape = graph.shape(input);
            let shape = match (&node.op, ishape) {
                (Op::Conv(c), &[1, c_in, h, w]) => {
                    let ws = c.weight.shape();
                    LayerShape::Conv(ConvShape {
                        c_in,
                        h,
                        w,
                        c_out: ws[0],
                        k: [ws[2], ws[3]],
                        stride: c.strides,
                        pads: c.pads,
                        dil: c.dilations,
                        groups: c.groups,
                    })
                }
                (Op::Dense(d), &[1, k_in]) => LayerShape::Dense {
                    k: k_in,
                    m: d.weight.shape()[0],
                },
                (op, s) => {
                    return Err(LheError::Unsupported(format!(
                        "node '{}' ({}) on input {s:?}: lhe lays out conv on [1, C, H, W] and dense on [1, K] (batch 1)",
                        node.name,
                        op.kind()
                    )));
                }
            };
            let xq = int
                .value(input)
                .ok_or_else(|| {
                    LheError::Unsupported(format!(
                        "node '{}' has no proven input interval",
                        node.name
                    ))
                })?
                .max_abs();
            let acc_bound = l
                .row_abs
                .iter()
                .zip(&l.b)
                .map(|(&r, &b)| r.unsigned_abs() * xq + u128::from(b.unsigned_abs()))
                .max()
                .unwrap_or(0)
                .max(1);
            let w_bound =
                l.w.iter()
                    .map(|w| u128::from(w.unsigned_abs()))
                    .max()
                    .unwrap_or(0);
            let probe = shape.plan(4096)?;
            needs.push(LayerNeed {
                name: node.name.clone(),
                acc_bound,
                x_bound: xq,
                w_bound,
                terms: probe.terms(),
                products: probe.max_products(),
                product: Product::Encrypted,
            });
            layers.push(LayerSpec {
                node: k,
                name: node.name.clone(),
                shape,
            });
        }
        if layers.is_empty() {
            return Err(LheError::Unsupported(
                "the model has no conv or dense layer for the server to compute".into(),
            ));
        }
        let g_in = *graph
            .inputs
            .first()
            .ok_or_else(|| LheError::Unsupported("no input".into()))?;
        let readers = graph
            .nodes
            .iter()
            .filter(|n| n.inputs.contains(&g_in))
            .count();
        let input = match layers.first() {
            Some(f)
                if readers == 1
                    && graph
                        .nodes
                        .get(f.node)
                        .is_some_and(|n| n.inputs.first() == Some(&g_in)) =>
            {
                InputEncoding::FirstLayer
            }
            _ => InputEncoding::Raw,
        };
        Ok((int, layers, needs, input))
    }

    fn finish(
        int: IntModel,
        layers: Vec<LayerSpec>,
        needs: Vec<LayerNeed>,
        params: HeParams,
        input: InputEncoding,
    ) -> Result<Self, LheError> {
        let plans = layers
            .iter()
            .map(|l| l.shape.plan(params.degree()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            int,
            layers,
            needs,
            params,
            plans,
            input,
        })
    }

    /// The integer weights and biases of layer `i`.
    pub fn weights(&self, i: usize) -> Result<(&[i64], &[i64]), LheError> {
        let spec = self
            .layers
            .get(i)
            .ok_or_else(|| LheError::Protocol(format!("no linear layer {i}")))?;
        let l = linear_of(&self.int, spec.node)
            .ok_or_else(|| LheError::Protocol(format!("node {} is not linear", spec.node)))?;
        Ok((&l.w, &l.b))
    }

    /// Number of input integers.
    pub fn input_len(&self) -> usize {
        let g = self.int.graph();
        g.inputs.first().map_or(0, |&v| g.shape(v).iter().product())
    }

    /// The raw input's layout: chunks of `N` coefficients.
    pub fn raw_chunks(&self) -> usize {
        self.input_len().div_ceil(self.params.degree())
    }

    /// SHA-256 over every linear layer's integer weights and biases (and the requantization
    /// the enclave applies is fixed by the measured model and semantics): what a model owner
    /// compares with its own before uploading. Sent only inside TLS, never to the server.
    pub fn commitment(&self) -> Result<[u8; 32], LheError> {
        let mut h = Sha256::new();
        h.update(b"tessera-lhe-model-v1\0");
        for i in 0..self.layers.len() {
            let (w, b) = self.weights(i)?;
            for part in [w, b] {
                h.update((part.len() as u64).to_le_bytes());
                for v in part {
                    h.update(v.to_le_bytes());
                }
            }
        }
        Ok(h.finalize().into())
    }

    /// The public set-up for a public key's wire bytes.
    pub fn public_setup(&self, public_key: &[u8]) -> PublicSetup {
        PublicSetup {
            params: tessera_he::wire::write_params(&self.params),
            public_key_hash: Sha256::digest(public_key).into(),
            layers: self.layers.clone(),
            input: self.input,
            input_len: self.input_len(),
        }
    }
}

/// What a data or model owner receives from the enclave inside TLS when it opens a session.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session number (the server routes results by it).
    pub session: u64,
    /// AES-256-GCM key of this session's results (secret: only inside TLS).
    pub result_key: [u8; 32],
    /// The public key's wire bytes (its SHA-256 is the evidence's key binding).
    pub public_key: Vec<u8>,
    /// The public set-up (parameters, layers, input encoding).
    pub setup: PublicSetup,
    /// The model's commitment ([`LheModel::commitment`]): a model owner uploads only weights
    /// that match it.
    pub model: [u8; 32],
    /// Input shape.
    pub input_shape: Vec<usize>,
    /// Input quantization: scale.
    pub input_scale: f64,
    /// Input quantization: smallest integer.
    pub input_lo: i64,
    /// Input quantization: largest integer.
    pub input_hi: i64,
}

impl Drop for SessionInfo {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.result_key);
    }
}

/// The sealed result's associated data: domain, session and request.
fn result_aad(session: u64, request: u64) -> Vec<u8> {
    let mut a = b"tessera-lhe-result-v1\0".to_vec();
    a.extend_from_slice(&session.to_le_bytes());
    a.extend_from_slice(&request.to_le_bytes());
    a
}

/// The nonce of request `request` (unique per session: the enclave accepts each request number
/// once, in increasing order).
fn result_nonce(request: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&request.to_le_bytes());
    n
}

/// Seal `result` for the data owner of `session` (AES-256-GCM under its result key, the
/// request number as nonce, session and request in the associated data).
pub fn seal_result(
    key: &[u8; 32],
    session: u64,
    request: u64,
    result: &LheResult,
) -> Result<Vec<u8>, LheError> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let plain = zeroize::Zeroizing::new(
        postcard::to_allocvec(result)
            .map_err(|e| LheError::Protocol(format!("encoding the result: {e}")))?,
    );
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(key)
        .map_err(|e| LheError::Protocol(format!("result key: {e}")))?;
    cipher
        .encrypt(
            &aes_gcm::Nonce::from(result_nonce(request)),
            Payload {
                msg: &plain,
                aad: &result_aad(session, request),
            },
        )
        .map_err(|e| LheError::Protocol(format!("sealing the result: {e}")))
}

/// Open a sealed result of request `request` of `session`; anything altered, replayed from
/// another request or sealed for another session is refused.
pub fn open_result(
    key: &[u8; 32],
    session: u64,
    request: u64,
    sealed: &[u8],
) -> Result<LheResult, LheError> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(key)
        .map_err(|e| LheError::Protocol(format!("result key: {e}")))?;
    let plain = zeroize::Zeroizing::new(
        cipher
            .decrypt(
                &aes_gcm::Nonce::from(result_nonce(request)),
                Payload {
                    msg: sealed,
                    aad: &result_aad(session, request),
                },
            )
            .map_err(|_| {
                LheError::Protocol(format!(
                    "the sealed result does not open as request {request} of session {session}: altered, replayed from another request, or another session's"
                ))
            })?,
    );
    let result: LheResult = postcard::from_bytes(&plain)
        .map_err(|e| LheError::Protocol(format!("the result does not decode: {e}")))?;
    if result.exact.len() != result.shape.iter().product::<usize>()
        || !(result.scale.is_finite() && result.scale > 0.0)
    {
        return Err(LheError::Protocol(
            "the result's shape or scale is inconsistent".into(),
        ));
    }
    Ok(result)
}

/// An inference's output and what it cost, sealed for the data owner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LheResult {
    /// Output shape.
    pub shape: Vec<usize>,
    /// The exact integer output.
    pub exact: Vec<i64>,
    /// The real value of one step.
    pub scale: f64,
    /// Time the enclave computed (decrypt, requantize, non-linear layers, encrypt), ns.
    pub enclave_ns: u64,
    /// Time the server computed the linear layers, ns (as the server reports it).
    pub server_ns: u64,
    /// Bytes enclave → server for this request.
    pub bytes_to_server: u64,
    /// Bytes server → enclave for this request.
    pub bytes_from_server: u64,
    /// Round trips enclave ↔ server.
    pub rounds: u64,
    /// Ciphertexts the enclave decrypted.
    pub decryptions: u64,
    /// Ciphertexts the enclave encrypted.
    pub encryptions: u64,
    /// Ciphertext × ciphertext products the server computed.
    pub products: u64,
    /// Per linear layer.
    pub layers: Vec<LayerCost>,
}

/// What one linear layer cost within a request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerCost {
    /// The layer's node name.
    pub name: String,
    /// Server time (its own measurement), ns.
    pub server_ns: u64,
    /// Enclave time on this layer's ciphertexts (encrypting its input, decrypting and checking
    /// its output), ns.
    pub enclave_ns: u64,
    /// Bytes enclave → server.
    pub bytes_to_server: u64,
    /// Bytes server → enclave.
    pub bytes_from_server: u64,
    /// Ciphertext × ciphertext products.
    pub products: u64,
    /// Ciphertexts decrypted.
    pub decryptions: u64,
    /// Ciphertexts encrypted.
    pub encryptions: u64,
}
