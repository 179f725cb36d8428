//! tessera's runtime: how the trusted and untrusted parties talk and where the trusted part
//! runs.
//!
//! * [`frame`] and [`channel`]: length-prefixed frames with a maximum size, a version
//!   handshake, a deadline on every read and a total deadline on every frame (enforced on the
//!   raw bytes, under TLS), sequence numbers, and byte and round counters.
//! * [`transport`]: TCP, an in-process duplex for tests, and counting.
//! * [`tls`]: the enclave's TLS identity and a client that pins the attested certificate.
//! * [`enclave`] and [`client`]: the enclave process's service and its attested client (the
//!   `tee` scheme), with the threat model in [`enclave`].
//! * [`cost`]: the modeled cost of running inside a TEE (EPC paging, crossings).
//! * [`seal`]: sealed state bound to the platform and the measurement: under a key on the
//!   host's disk in `sim` mode (no protection, and said so), a key the AMD secure processor
//!   derives in `snp` mode, and not at all in `tdx` mode (secrets in memory only).
//! * [`relay`]: an untrusted host forwarding opaque bytes.

#![warn(missing_docs)]

pub mod channel;
pub mod client;
pub mod cost;
pub mod enclave;
pub mod frame;
pub mod protocol;
pub mod relay;
pub mod seal;
pub mod tls;
pub mod transport;

pub use channel::{Channel, ChannelOptions, Role};
pub use client::{AttestedClient, EnclaveOutput};
pub use cost::{Profile, TeeCost};
pub use enclave::{Enclave, EnclaveConfig, Mode, ServerHandle};
pub use transport::{Counters, Transport, duplex};

/// Errors of the runtime. Every one closes the connection it happened on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An I/O error other than a timeout or a closed peer.
    #[error("I/O error: {0}")]
    Io(String),
    /// A read passed its deadline.
    #[error("timed out {0}: the peer sent nothing before the deadline")]
    Timeout(String),
    /// The peer closed the connection.
    #[error("connection closed ({0})")]
    Closed(String),
    /// A frame longer than allowed.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Announced payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Bytes that are not a valid frame or message.
    #[error("malformed data: {0}")]
    Malformed(String),
    /// A frame with an unexpected sequence number (dropped, replayed or reordered).
    #[error("frame out of order: expected number {expected}, got {got}")]
    OutOfOrder {
        /// The next expected number.
        expected: u32,
        /// The number received.
        got: u32,
    },
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: this build speaks {ours}, the peer {theirs}; run the same tessera version on both sides"
    )]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// A valid message at the wrong time.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer reported an error and closed.
    #[error("the peer reported: {0}")]
    Peer(String),
    /// The server has no room for another client now.
    #[error("the server is busy: {0}; retry later")]
    Busy(String),
    /// A request the enclave cannot serve.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Attestation evidence was rejected.
    #[error("attestation: {0}")]
    Attestation(String),
    /// Evidence verification failed.
    #[error(transparent)]
    Attest(#[from] tessera_attest::AttestError),
    /// Sealed storage failed.
    #[error("sealed storage: {0}")]
    Seal(String),
    /// A bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The scheme's offloaded work failed (for `gc`: a worker that cheated or erred).
    #[error("{0}")]
    Backend(String),
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] tessera_engine::EngineError),
}
