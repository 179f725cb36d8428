//! The one error type of this crate. Every message says what was wrong and, where there is
//! something to do about it, what to do.

use std::path::PathBuf;

use crate::TeeKind;

/// Why evidence could not be produced, decoded or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// A file could not be read, written or created.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The versioned evidence container is malformed.
    #[error("malformed evidence container: {0} (expected bytes written by Evidence::encode)")]
    Container(String),
    /// A report or quote could not be parsed, or a field has a value this verifier refuses.
    #[error("malformed {kind} evidence: {reason}")]
    Malformed {
        /// The evidence kind.
        kind: TeeKind,
        /// What was wrong.
        reason: String,
    },
    /// The policy does not list this evidence kind.
    #[error(
        "{kind} evidence is not allowed by the policy (allowed kinds: {allowed}); add \"{kind}\" to \"allowed_kinds\" if it should be"
    )]
    KindNotAllowed {
        /// The evidence kind.
        kind: TeeKind,
        /// The kinds the policy allows.
        allowed: String,
    },
    /// Simulated evidence met a policy that does not allow it.
    #[error(
        "the evidence is SIMULATED (a software key on an ordinary machine: no hardware protection, no security) and the policy does not allow simulated evidence; for development only, pass --allow-simulated or set \"allow_simulated\": true in the policy"
    )]
    SimulatedNotAllowed,
    /// A signature over the report, quote or collateral does not verify.
    #[error("{kind} signature check failed: {what}")]
    Signature {
        /// The evidence kind.
        kind: TeeKind,
        /// Which signature, and the verifier's reason.
        what: String,
    },
    /// A certificate of the endorsement chain is malformed, untrusted, outside its validity
    /// period or inconsistent with the report.
    #[error("{kind} certificate {which} rejected: {reason}")]
    Certificate {
        /// The evidence kind.
        kind: TeeKind,
        /// Which certificate (ARK, ASK, VCEK, ...).
        which: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Verification needs material the evidence does not carry.
    #[error("{kind} evidence carries no {what}: {hint}")]
    MissingMaterial {
        /// The evidence kind.
        kind: TeeKind,
        /// What is missing.
        what: &'static str,
        /// Where to get it.
        hint: &'static str,
    },
    /// The collateral (DCAP JSON, SNP certificate table) is malformed.
    #[error("malformed {kind} collateral: {reason}")]
    Collateral {
        /// The evidence kind.
        kind: TeeKind,
        /// What was wrong.
        reason: String,
    },
    /// The collateral is out of date at the verification time: verification fails at that
    /// time but gets further (or succeeds) at a time inside the collateral's own window.
    #[error(
        "{kind} collateral expired: {item} was valid until {until}, but the verification time is {now}; fetch fresh collateral from the PCCS, or verify at a time inside its window with --at{note}"
    )]
    CollateralExpired {
        /// The evidence kind.
        kind: TeeKind,
        /// Which collateral item expired first.
        item: String,
        /// Its end of validity (RFC 3339).
        until: String,
        /// The verification time (RFC 3339).
        now: String,
        /// Empty, or what else fails inside the window (prefixed by "; ").
        note: String,
    },
    /// The collateral is not valid yet at the verification time (as for expiry).
    #[error(
        "{kind} collateral is not valid yet: {item} is valid from {from}, but the verification time is {now}; check the clock or the --at time{note}"
    )]
    CollateralNotYetValid {
        /// The evidence kind.
        kind: TeeKind,
        /// Which collateral item starts last.
        item: String,
        /// Its start of validity (RFC 3339).
        from: String,
        /// The verification time (RFC 3339).
        now: String,
        /// Empty, or what else fails inside the window (prefixed by "; ").
        note: String,
    },
    /// The DCAP quote verifier rejected the quote.
    #[error("{kind} quote verification failed: {reason}")]
    Quote {
        /// The evidence kind.
        kind: TeeKind,
        /// The verifier's reasons, outermost first.
        reason: String,
    },
    /// The measurement is not one the policy expects.
    #[error(
        "measurement {got} is not one of the policy's expected measurements ({expected}); if this build is trusted, add its measurement to \"measurements\""
    )]
    MeasurementMismatch {
        /// The evidence's measurement (hex).
        got: String,
        /// The expected ones (hex, comma-separated).
        expected: String,
    },
    /// The application measurement bound into the evidence is not one the policy accepts.
    #[error(
        "application measurement {got} is not one the policy accepts ({expected}): the enclave runs another binary, model or enclave policy; if this build is trusted, add the measurement printed by `tessera enclave --measure-only` to \"app_measurements\""
    )]
    AppMeasurementMismatch {
        /// The measurement the evidence binds (hex).
        got: String,
        /// What the policy accepts.
        expected: String,
    },
    /// A TDX runtime measurement register differs from the policy's.
    #[error(
        "TDX RTMR{index} is {got}, but the policy expects {expected}: the TD booted another firmware configuration, kernel, command line or initrd"
    )]
    RtmrMismatch {
        /// The register (0 to 3).
        index: usize,
        /// Its value (hex).
        got: String,
        /// The policy's value (hex).
        expected: String,
    },
    /// The policy pins no measurement for a real TEE, so any guest on genuine hardware would pass.
    #[error(
        "the policy accepts {kind} evidence but names no {missing}: without it any guest on genuine {kind} hardware, including one the host runs with its own code, would be accepted; add the measurement printed by `tessera enclave --measure-only` to \"app_measurements\", the launch measurement of the confidential VM image (SEV-SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE) to \"measurements\", and for TDX its RTMR0-RTMR2 to \"tdx_rtmrs\""
    )]
    MeasurementRequired {
        /// The evidence kind.
        kind: TeeKind,
        /// The policy key that is empty.
        missing: &'static str,
    },
    /// The report data is not the expected value: the evidence is not bound to this session.
    #[error(
        "report data does not match the expected value: the evidence is not bound to this session's nonce, channel key and claimed application measurement (replayed or relayed evidence, or a substituted certificate or measurement)"
    )]
    ReportDataMismatch,
    /// The platform's TCB status is not accepted.
    #[error(
        "TCB status {status} is not accepted by the policy (accepted: {accepted}; advisories: {advisories}); update the platform, or add the status to \"accepted_tcb_statuses\" if the risk is understood"
    )]
    TcbStatusRejected {
        /// The status.
        status: String,
        /// The accepted statuses.
        accepted: String,
        /// The platform's advisories.
        advisories: String,
    },
    /// The platform is affected by an advisory the policy rejects.
    #[error("the platform is affected by advisory {0}, which the policy rejects")]
    AdvisoryRejected(String),
    /// An SEV-SNP TCB component is below the policy's minimum.
    #[error(
        "SEV-SNP reported TCB {field} = {got} is below the policy minimum {min}; update the platform's firmware or microcode"
    )]
    TcbTooLow {
        /// The component (bootloader, tee, snp, microcode, fmc).
        field: &'static str,
        /// The reported value.
        got: u8,
        /// The policy's minimum.
        min: u8,
    },
    /// The guest or enclave runs in debug mode.
    #[error(
        "{kind} evidence comes from a debug-enabled guest or enclave, whose memory the host can read; the policy does not allow debug (\"allow_debug\")"
    )]
    DebugNotAllowed {
        /// The evidence kind.
        kind: TeeKind,
    },
    /// Simulated evidence signed by a key the policy does not pin.
    #[error(
        "simulated platform key {fingerprint} is not one the policy pins (\"sim_platform_keys\"); add its fingerprint if this machine is the expected one"
    )]
    PlatformKeyNotPinned {
        /// The key's fingerprint (hex).
        fingerprint: String,
    },
    /// A policy file is malformed.
    #[error("invalid policy {path}: {reason}")]
    Policy {
        /// The policy file (or `"<inline>"`).
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The simulated platform key file is malformed or unsafe.
    #[error("simulated platform key {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What was wrong and what to do.
        reason: String,
    },
    /// Linux configfs-tsm is not there.
    #[error(
        "configfs-tsm is not available at {path}: {reason}; real evidence needs Linux 6.7 or newer inside an SEV-SNP or TDX guest with configfs mounted (mount -t configfs none /sys/kernel/config), otherwise run the enclave in sim mode"
    )]
    TsmUnavailable {
        /// The configfs-tsm report directory.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The SEV-SNP secure processor could not derive a sealing key.
    #[error("SEV-SNP derived key: {0}")]
    DerivedKey(String),
    /// configfs-tsm is there but the report could not be made.
    #[error("configfs-tsm report failed: {0}")]
    Tsm(String),
    /// A verification time could not be parsed.
    #[error(
        "invalid time {input:?}: {reason}; give RFC 3339 (2025-07-01T00:00:00Z) or unix seconds"
    )]
    Time {
        /// The text given.
        input: String,
        /// What was wrong.
        reason: String,
    },
    /// An unknown TEE kind name.
    #[error("unknown TEE kind {0:?}: expected one of sim, snp, tdx, sgx")]
    UnknownKind(String),
    /// An evidence file whose format was not recognised.
    #[error("cannot recognise evidence file {path}: {reason}")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What was tried.
        reason: String,
    },
}

impl AttestError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        AttestError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn malformed(kind: TeeKind, reason: impl Into<String>) -> Self {
        AttestError::Malformed {
            kind,
            reason: reason.into(),
        }
    }
}
