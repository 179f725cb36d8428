//! TLS for attested channels: the enclave's self-signed identity and a client that trusts
//! exactly one certificate, the one the enclave's attestation evidence binds.
//!
//! There is no certificate authority here. The client learns the enclave's certificate in the
//! attestation step, checks that the evidence's report data is
//! [`tessera_attest::session_report_data`] of its own fresh nonce, that certificate and the
//! application measurement its policy accepts, and then accepts a TLS handshake
//! only from the holder of that certificate's private key (the TLS 1.3 handshake signature is
//! verified against it). Only TLS 1.3 is offered, with the `ring` provider.

use crate::RuntimeError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The name the enclave's certificate carries (the client ignores names: it pins the key).
pub const ENCLAVE_NAME: &str = "tessera-enclave";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Tls(format!("{what}: {e}"))
}

/// The enclave's TLS identity: a P-256 key (PKCS#8, zeroized on drop) and its self-signed
/// certificate.
pub struct Identity {
    key_pkcs8: Zeroizing<Vec<u8>>,
    cert: Vec<u8>,
}

impl Identity {
    /// A fresh identity.
    pub fn generate() -> Result<Self, RuntimeError> {
        let key = rcgen::KeyPair::generate().map_err(|e| tls_err("generating a key", e))?;
        Self::from_key(Zeroizing::new(key.serialize_der()))
    }

    /// The identity of a stored PKCS#8 key; the certificate is issued again.
    pub fn from_key(key_pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, RuntimeError> {
        let key = rcgen::KeyPair::try_from(key_pkcs8.as_slice())
            .map_err(|e| tls_err("loading the identity key", e))?;
        let params = rcgen::CertificateParams::new(vec![ENCLAVE_NAME.to_string()])
            .map_err(|e| tls_err("certificate parameters", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_err("self-signing the certificate", e))?;
        Ok(Self {
            key_pkcs8,
            cert: cert.der().to_vec(),
        })
    }

    /// The private key (PKCS#8 DER).
    pub fn key_pkcs8(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// Key and certificate in one buffer, for sealing: `u32 LE key length ‖ key ‖ certificate`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            4 + self.key_pkcs8.len() + self.cert.len(),
        ));
        out.extend_from_slice(&(self.key_pkcs8.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.key_pkcs8);
        out.extend_from_slice(&self.cert);
        out
    }

    /// Read what [`Identity::to_bytes`] wrote (the same certificate, byte for byte).
    pub fn from_bytes(b: &[u8]) -> Result<Self, RuntimeError> {
        let bad = || RuntimeError::Seal("the sealed identity is malformed".into());
        let (len, rest) = b.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(bad());
        }
        let (key, cert) = rest.split_at(len);
        // Check that the key parses; the certificate was sealed with it.
        rcgen::KeyPair::try_from(key).map_err(|e| tls_err("loading the identity key", e))?;
        Ok(Self {
            key_pkcs8: Zeroizing::new(key.to_vec()),
            cert: cert.to_vec(),
        })
    }

    /// The certificate (DER).
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    /// A server configuration presenting this identity.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, RuntimeError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.to_vec()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_err("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(self.cert.clone())], key)
            .map_err(|e| tls_err("server certificate", e))?;
        // No resumption (every connection attests afresh), so no session tickets: after the
        // handshake the only bytes the server sends are replies, which keeps the client's
        // per-frame deadline (it starts with the first byte of a frame) exact.
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(cfg))
    }
}

/// Accepts exactly one certificate, byte for byte, and checks handshake signatures against it.
#[derive(Debug)]
struct Pinned {
    cert: Vec<u8>,
    provider: Arc<CryptoProvider>,
    refusal: &'static str,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if intermediates.is_empty() && end_entity.as_ref() == self.cert.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(self.refusal.into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts only `cert`, the one attestation evidence bound.
pub fn pinned_client_config(cert: &[u8]) -> Result<Arc<rustls::ClientConfig>, RuntimeError> {
    pinned_config(
        cert,
        "the server's certificate is not the one its attestation evidence binds",
    )
}

fn pinned_config(
    cert: &[u8],
    refusal: &'static str,
) -> Result<Arc<rustls::ClientConfig>, RuntimeError> {
    let p = provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err("TLS versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            cert: cert.to_vec(),
            provider: p,
            refusal,
        }))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The server name the client presents.
pub fn server_name() -> Result<ServerName<'static>, RuntimeError> {
    ServerName::try_from(ENCLAVE_NAME).map_err(|e| tls_err("server name", e))
}

/// Continue `ch` (after its hello) in TLS as the server presenting `id`: for a server without
/// attestation (`2pc`), whose clients pin its certificate out of band.
pub fn accept(
    ch: crate::Channel,
    id: &Identity,
    opts: crate::ChannelOptions,
) -> Result<crate::Channel, RuntimeError> {
    let (seq_out, seq_in, peer) = ch.position();
    let (io, link) = ch.into_parts()?;
    let conn = rustls::ServerConnection::new(id.server_config()?)
        .map_err(|e| tls_err("starting TLS", e))?;
    let mut ch =
        crate::Channel::from_parts(Box::new(rustls::StreamOwned::new(conn, io)), link, opts)?;
    ch.continue_from(seq_out, seq_in, peer);
    Ok(ch)
}

/// Continue `ch` (after its hello) in TLS as a client that accepts only the server holding
/// `cert` (DER), given out of band (`tessera server --scheme 2pc` writes it).
pub fn connect(
    ch: crate::Channel,
    cert: &[u8],
    opts: crate::ChannelOptions,
) -> Result<crate::Channel, RuntimeError> {
    let (seq_out, seq_in, peer) = ch.position();
    let (io, link) = ch.into_parts()?;
    let cfg = pinned_config(
        cert,
        "the server's certificate is not the one pinned (--server-cert): another server, or the file is stale",
    )?;
    let conn = rustls::ClientConnection::new(cfg, server_name()?)
        .map_err(|e| tls_err("starting TLS", e))?;
    let mut stream = rustls::StreamOwned::new(conn, io);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| tls_err("TLS handshake with the server", e))?;
    }
    let mut ch = crate::Channel::from_parts(Box::new(stream), link, opts)?;
    ch.continue_from(seq_out, seq_in, peer);
    Ok(ch)
}
