//! The crate's error type. Every message says what was wrong and, where there is one, what to do.

use crate::policy::Stakeholder;

/// Errors of the `attested` scheme.
#[derive(Debug, thiserror::Error)]
pub enum AttestedError {
    /// A stakeholder policy or job file is malformed or unusable.
    #[error("policy {origin}: {reason}")]
    PolicyFile {
        /// Where it came from (a path or a description).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stakeholder has not consented to the job (its policy is missing, or does not name the
    /// job).
    #[error(
        "job {job:?} rejected: the {stakeholder} has not consented ({reason}); the {stakeholder} must submit a policy that lists the job"
    )]
    MissingConsent {
        /// The job.
        job: String,
        /// Whose consent is missing.
        stakeholder: Stakeholder,
        /// Why it counts as missing.
        reason: String,
    },
    /// The stakeholders' policies cannot all hold at once, or the broker does not satisfy one.
    #[error("job {job:?} rejected by the {stakeholder}'s policy: {reason}")]
    PolicyConflict {
        /// The job.
        job: String,
        /// Whose policy fails.
        stakeholder: Stakeholder,
        /// What fails.
        reason: String,
    },
    /// The broker configuration (the stakeholders' pinned signing keys) is malformed.
    #[error("broker configuration {origin}: {reason}")]
    BrokerConfig {
        /// Where it came from.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stakeholder signing key file is malformed.
    #[error("signing key {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request claiming to come from a stakeholder is not signed by that stakeholder's
    /// pinned key; nothing was changed.
    #[error(
        "refused, nothing changed: a request for the {stakeholder}'s slot is not signed by the {stakeholder}: {reason}"
    )]
    BadSignature {
        /// The stakeholder the request claims to come from.
        stakeholder: Stakeholder,
        /// What failed.
        reason: String,
    },
    /// A request that the peer's role may not send (host agents only attest; stakeholders
    /// only send signed requests).
    #[error(
        "refused, nothing changed: a {role} peer may not send {request} requests (only {allowed})"
    )]
    WrongRole {
        /// The request.
        request: &'static str,
        /// The role the peer declared in its hello.
        role: String,
        /// Who may send it.
        allowed: &'static str,
    },
    /// A stakeholder signed (validly) a change to a slot that is not its own.
    #[error(
        "refused, nothing changed: the {signer} may not change {what}, which belongs to the {owner}"
    )]
    NotYourSlot {
        /// Who signed.
        signer: Stakeholder,
        /// Whose slot it is.
        owner: Stakeholder,
        /// What it tried to change.
        what: String,
    },
    /// A signed request whose revision does not exceed the stored one (a replay or a rollback).
    #[error(
        "refused, nothing changed: {what} is at revision {current}, and revision {revision} is not higher; sign the change with a higher revision (replayed or older requests are never accepted)"
    )]
    StaleRevision {
        /// What the request would change.
        what: String,
        /// The request's revision.
        revision: u64,
        /// The stored revision.
        current: u64,
    },
    /// A policy, job or key of the job changed between the host's challenge and its evidence.
    #[error(
        "no key released: {what} changed between the challenge and the host's evidence; the host must attest again"
    )]
    ChangedSinceChallenge {
        /// What changed.
        what: String,
    },
    /// The broker's stored state is not what this broker wrote (tampered with, or from another
    /// broker).
    #[error("broker state {path}: {reason}")]
    StateFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The training host's attestation failed; the key was not released.
    #[error("host attestation rejected, no key released: {0}")]
    Attestation(#[from] tessera_tpm::VerifyError),
    /// A program job's file is not in the quoted IMA log with the job's digest.
    #[error(
        "host attestation rejected, no key released: the job's program file {path} {reason}; the host must run exactly the files the job lists"
    )]
    ProgramNotMeasured {
        /// The file.
        path: String,
        /// What the log shows instead.
        reason: String,
    },
    /// The external training program failed.
    #[error("the training program failed: {0}")]
    Program(String),
    /// An IMA log entry that one stakeholder's allow-list does not accept; no key was released.
    #[error(
        "host attestation rejected, no key released: IMA allow-list check failed: entry {index} rejected by the {stakeholder}'s allow-list ({name}): {reason}"
    )]
    NotAllowed {
        /// The entry's index in the IMA log.
        index: usize,
        /// Whose allow-list refused it.
        stakeholder: Stakeholder,
        /// That stakeholder's name.
        name: String,
        /// Why.
        reason: tessera_tpm::EntryRejection,
    },
    /// The host agent failed to talk to its TPM.
    #[error("host agent: {0}")]
    Agent(#[from] tessera_tpm::AgentError),
    /// The enclave runtime (channel, sealing, inference enclave) failed.
    #[error("enclave runtime: {0}")]
    Runtime(#[from] tessera_runtime::RuntimeError),
    /// The broker's (simulated) TEE evidence was refused by a stakeholder.
    #[error("broker enclave attestation rejected: {0}")]
    BrokerEvidence(String),
    /// An encrypted dataset or model is malformed, was modified, reordered or truncated, or
    /// the key is wrong.
    #[error("encrypted {what}: {reason}")]
    Ciphertext {
        /// Which object (e.g. "dataset chunk 3 of 8").
        what: String,
        /// What was detected.
        reason: String,
    },
    /// A key wrap (to the broker or to the attested host) failed.
    #[error("key wrap: {0}")]
    KeyWrap(String),
    /// The broker has no sealed key, job or dataset of that name.
    #[error("{0}")]
    NotFound(String),
    /// The peer answered something out of protocol, or reported an error.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The broker refused a request; its reason.
    #[error("{0}")]
    Refused(String),
    /// Data (CSV, MNIST, tensors) is malformed.
    #[error("data: {0}")]
    Data(String),
    /// Training or model export failed.
    #[error("training: {0}")]
    Training(String),
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// swtpm (the software TPM for local runs) is not installed or did not start.
    #[error("{0}")]
    Swtpm(String),
    /// The operating system's random generator failed.
    #[error("random number generator: {0}")]
    Random(String),
}

impl AttestedError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        AttestedError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Fills `buf` from the operating system's random generator.
pub(crate) fn random(buf: &mut [u8]) -> Result<(), AttestedError> {
    getrandom::fill(buf).map_err(|e| AttestedError::Random(e.to_string()))
}
