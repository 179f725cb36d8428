//! The client side of an attested channel to an enclave.

use crate::RuntimeError;
use crate::channel::{Channel, ChannelOptions, Role};
use crate::cost::TeeCost;
use crate::protocol::{ClientMsg, EnclaveInfo, EnclaveMsg, OffloadCost, TensorMsg};
use crate::tls;
use crate::transport::{Counters, Transport};
use rand::RngCore;
use std::sync::Arc;
use std::time::SystemTime;
use tessera_attest::{Claims, Evidence, Policy, SessionBinding};
use tessera_model::Tensor;

/// A verified, TLS-protected channel to one enclave.
pub struct AttestedClient {
    ch: Channel,
    claims: Claims,
    key_binding: Vec<u8>,
}

/// The enclave's answer to one inference.
#[derive(Clone, Debug)]
pub struct EnclaveOutput {
    /// Integer output; `exact · scale` is the real output.
    pub exact: Tensor<i64>,
    /// The real value of one integer step (finite and positive: checked).
    pub scale: f64,
    /// The enclave's measured and modeled costs.
    pub tee: TeeCost,
    /// What the enclave offloaded to an untrusted worker, if anything.
    pub offload: Option<OffloadCost>,
}

impl AttestedClient {
    /// Handshake, request evidence for a fresh nonce, verify it against `policy` (at the current
    /// time), check that it binds the nonce and the certificate offered, then start TLS pinned to
    /// that certificate.
    pub fn connect<T: Transport + 'static>(
        raw: T,
        policy: &Policy,
        opts: ChannelOptions,
    ) -> Result<Self, RuntimeError> {
        Self::connect_at(raw, policy, opts, SystemTime::now())
    }

    /// [`AttestedClient::connect`] with an explicit verification time.
    pub fn connect_at<T: Transport + 'static>(
        raw: T,
        policy: &Policy,
        opts: ChannelOptions,
        now: SystemTime,
    ) -> Result<Self, RuntimeError> {
        let mut ch = Channel::new(raw, opts)?;
        ch.handshake(Role::Client, &[Role::Enclave])?;
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        ch.send(&ClientMsg::Attest { nonce })?;
        let (evidence, cert, app_measurement, key_binding) = match ch.recv::<EnclaveMsg>()? {
            EnclaveMsg::Evidence {
                evidence,
                cert,
                app_measurement,
                key_binding,
            } => (evidence, cert, app_measurement, key_binding),
            _ => {
                let e = RuntimeError::Protocol("expected evidence from the enclave".into());
                ch.send_error(&e.to_string());
                return Err(e);
            }
        };
        let bound = Bound {
            cert: &cert,
            app_measurement: &app_measurement,
            key_binding: &key_binding,
        };
        let claims = match verify_binding(&evidence, &bound, &nonce, policy, now) {
            Ok(c) => c,
            Err(e) => {
                ch.send_error(&format!("attestation rejected: {e}"));
                return Err(e);
            }
        };
        let (seq_out, seq_in, peer) = ch.position();
        let (io, link) = ch.into_parts()?;
        let conn =
            rustls::ClientConnection::new(tls::pinned_client_config(&cert)?, tls::server_name()?)
                .map_err(|e| RuntimeError::Tls(format!("starting TLS: {e}")))?;
        let mut stream = rustls::StreamOwned::new(conn, io);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| RuntimeError::Tls(format!("TLS handshake with the enclave: {e}")))?;
        }
        let mut ch = Channel::from_parts(Box::new(stream), link, opts)?;
        ch.continue_from(seq_out, seq_in, peer);
        // The enclave may compute for long (a garbling, a large model) before it answers.
        ch.set_deadline(Some(crate::channel::IDLE_DEADLINE))?;
        Ok(Self {
            ch,
            claims,
            key_binding,
        })
    }

    /// The key the evidence binds besides the channel (`lhe`: SHA-256 of the enclave's HE
    /// public key; empty for other schemes). A client compares it with the key it is given.
    pub fn key_binding(&self) -> &[u8] {
        &self.key_binding
    }

    /// Open a scheme-specific session inside TLS (`lhe`).
    pub fn session(&mut self) -> Result<Vec<u8>, RuntimeError> {
        self.ch.send(&ClientMsg::Session)?;
        match self.ch.recv::<EnclaveMsg>()? {
            EnclaveMsg::Session(b) => Ok(b),
            _ => Err(RuntimeError::Protocol(
                "expected a session from the enclave".into(),
            )),
        }
    }

    /// What the evidence established.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Bytes and rounds so far on this connection (encrypted bytes, as on the wire).
    pub fn counters(&self) -> Arc<Counters> {
        self.ch.counters()
    }

    /// Run one inference in the enclave.
    pub fn infer(&mut self, input: &Tensor) -> Result<EnclaveOutput, RuntimeError> {
        self.ch.send(&ClientMsg::Infer(TensorMsg {
            shape: input.shape().iter().map(|&d| d as u32).collect(),
            data: input.data().to_vec(),
        }))?;
        match self.ch.recv::<EnclaveMsg>()? {
            EnclaveMsg::Output {
                shape,
                exact,
                scale,
                tee,
                offload,
            } => {
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(RuntimeError::Malformed(format!(
                        "the enclave's output scale {scale} is not a positive number"
                    )));
                }
                let shape = shape.iter().map(|&d| d as usize).collect();
                let exact = Tensor::new(shape, exact).map_err(|e| {
                    RuntimeError::Malformed(format!("the enclave's output tensor: {e}"))
                })?;
                Ok(EnclaveOutput {
                    exact,
                    scale,
                    tee,
                    offload,
                })
            }
            _ => Err(RuntimeError::Protocol(
                "expected an output from the enclave".into(),
            )),
        }
    }

    /// Ask the enclave to describe itself.
    pub fn info(&mut self) -> Result<EnclaveInfo, RuntimeError> {
        self.ch.send(&ClientMsg::Info)?;
        match self.ch.recv::<EnclaveMsg>()? {
            EnclaveMsg::Info(i) => Ok(i),
            _ => Err(RuntimeError::Protocol("expected the enclave's info".into())),
        }
    }
}

/// What the enclave sent beside its evidence, which the evidence must bind.
#[derive(Clone, Copy, Debug)]
pub struct Bound<'a> {
    /// The TLS certificate offered (DER).
    pub cert: &'a [u8],
    /// The application measurement claimed (48 bytes).
    pub app_measurement: &'a [u8],
    /// The key binding claimed (empty: none).
    pub key_binding: &'a [u8],
}

/// Verify `evidence` against `policy` and check what it binds, through
/// [`tessera_attest::verify_session`]: a policy for a real TEE must pin the hardware and the
/// application measurements ([`tessera_attest::AttestError::MeasurementRequired`]); the evidence
/// must be authentic and meet the policy; its report data must be
/// [`tessera_attest::session_report_data`] of `nonce`, `cert` and `app_measurement`
/// ([`tessera_attest::AttestError::ReportDataMismatch`]: replayed, or another certificate);
/// and `app_measurement` must be one the policy accepts
/// ([`tessera_attest::AttestError::AppMeasurementMismatch`]).
pub fn verify_binding(
    evidence: &[u8],
    bound: &Bound<'_>,
    nonce: &[u8],
    policy: &Policy,
    now: SystemTime,
) -> Result<Claims, RuntimeError> {
    let ev = Evidence::decode(evidence)?;
    let app_measurement: &[u8; 48] = bound.app_measurement.try_into().map_err(|_| {
        RuntimeError::Malformed(format!(
            "the enclave's application measurement has {} bytes, expected 48",
            bound.app_measurement.len()
        ))
    })?;
    let binding = SessionBinding {
        nonce,
        cert: bound.cert,
        app_measurement,
        key_binding: bound.key_binding,
    };
    Ok(tessera_attest::verify_session(&ev, policy, now, &binding)?)
}
