//! # tessera-attest: TEE attestation evidence, produced and verified
//!
//! An enclave proves what it runs with *evidence*: a report or quote, signed by a key that
//! only the TEE hardware (or, in `sim` mode, a software key) holds, carrying a *measurement*
//! of the code and data it loaded and 64 bytes of *report data* chosen by the enclave (for an
//! enclave session, the hash of a verifier's nonce, the enclave's TLS certificate and its
//! application measurement, see [`session_report_data`]).
//! This crate
//!
//! - produces evidence: simulated ([`sim::PlatformKey::attest`]) or real, from Linux
//!   configfs-tsm ([`tsm::collect`], SEV-SNP reports and TDX quotes);
//! - derives sealing keys: simulated ones from the platform key file (no protection) and
//!   SEV-SNP ones from the AMD secure processor ([`sev_guest::sealing_key`],
//!   `SNP_GET_DERIVED_KEY`); TDX has none;
//! - carries it in a versioned, length-checked container ([`Evidence::encode`]);
//! - verifies it against a [`Policy`] ([`verify`]): SEV-SNP reports with the `sev` crate and
//!   AMD's built-in ARK/ASK roots, SGX and TDX quotes with collateral through `dcap-qvl`, and
//!   simulated reports only where the policy allows them.
//!
//! ## Threat model of verification
//!
//! The verifier trusts: this code; the hardware vendors' roots that are compiled in (AMD's
//! ARK for Milan, Genoa and Turin from `sev`, Intel's SGX Root CA from `dcap-qvl`); the
//! policy file; and the verification time it is given. Everything else is hostile: the
//! evidence bytes, the certificates and collateral that come with them (they may come from
//! the untrusted host), the file names and the container. So:
//!
//! - Parsing never panics and every length is checked before use; a malformed input is a
//!   typed error ([`AttestError`]) that names what was wrong.
//! - A report is accepted only if a chain from a pinned root signs it: ARK (pinned) → ASK →
//!   VCEK → report for SEV-SNP; Intel Root CA → PCK chain → QE report → quote, with signed
//!   TCB info and QE identity, for SGX/TDX. The SNP report signature is checked over the
//!   *raw* signed bytes (`sev`'s own check re-encodes the parsed report, which would not cover
//!   reserved bytes), and the unused parts of the signature field must be zero, so that no
//!   byte of the report can change without detection.
//! - The VCEK's TCB extensions must equal the report's `reported_tcb` and its hardware ID the
//!   report's chip ID, so a VCEK of an older firmware cannot vouch for a report that claims a
//!   newer one (the same TCB check applies to a VLEK); certificates and collateral are checked against the verification time
//!   (expired DCAP collateral is reported as such, after proving that it is genuine).
//! - Only after authenticity are the claims checked against the policy: kind, measurement,
//!   TDX RTMRs, report data, TCB status or minimum TCB, advisories, debug mode.
//! - The VCEK's or VLEK's TCB extensions must equal the report's `reported_tcb` (a VLEK names
//!   no chip, so only a VCEK's hardware ID is compared).
//! - An enclave session ([`verify_session`]) also refuses, before anything else, a policy for
//!   SEV-SNP, TDX or SGX evidence that pins no hardware measurement (`measurements`), no
//!   application measurement (`app_measurements`), or for TDX not RTMR0–RTMR2
//!   ([`Policy::require_session_pins`]), and after verification runs
//!   [`check_session_binding`] on the parsed report data. SEV-SNP's `MEASUREMENT` and TDX's
//!   `MRTD`/RTMRs measure the VM's launch image, not the application: the application
//!   measurement reaches the verifier only through report data that the launch image
//!   computes, so it is exactly as trustworthy as the pinned image.
//! - Simulated evidence is signed by an ed25519 key that lives in a file on an ordinary
//!   machine: it proves nothing about isolation. It is refused unless the policy says
//!   `allow_simulated`, it may be pinned to known keys by fingerprint, and [`describe`]
//!   says loudly that it gives no security.
//!
//! Not covered: revocation of AMD VCEKs (no CRL is fetched; AMD's KDS CRL would be needed),
//! freshness beyond the report data (the caller binds a nonce through [`report_data`] and
//! checks it with [`verify_bound`] or the policy's `report_data`), side channels of the TEEs
//! themselves, and the correctness of the TEE vendors' firmware.
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha384, Sha512};
use subtle::ConstantTimeEq;

pub mod cli;
mod dcap;
mod error;
mod policy;
pub mod sev_guest;
pub mod sim;
pub mod snp;
pub mod tsm;

pub use error::AttestError;
pub use policy::{KNOWN_TCB_STATUSES, Policy, SnpMinTcb};

/// The kinds of TEE whose evidence this crate handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TeeKind {
    /// A simulated TEE: a software platform key, no protection at all.
    #[serde(rename = "sim")]
    Sim,
    /// AMD SEV-SNP confidential VM.
    #[serde(rename = "snp")]
    SevSnp,
    /// Intel TDX confidential VM.
    #[serde(rename = "tdx")]
    Tdx,
    /// Intel SGX enclave.
    #[serde(rename = "sgx")]
    Sgx,
}

impl TeeKind {
    /// Every kind, in a fixed order.
    pub const ALL: [TeeKind; 4] = [TeeKind::Sim, TeeKind::SevSnp, TeeKind::Tdx, TeeKind::Sgx];

    /// The short name: "sim", "snp", "tdx" or "sgx".
    pub fn name(self) -> &'static str {
        match self {
            TeeKind::Sim => "sim",
            TeeKind::SevSnp => "snp",
            TeeKind::Tdx => "tdx",
            TeeKind::Sgx => "sgx",
        }
    }

    fn code(self) -> u8 {
        match self {
            TeeKind::Sim => 1,
            TeeKind::SevSnp => 2,
            TeeKind::Tdx => 3,
            TeeKind::Sgx => 4,
        }
    }

    fn from_code(c: u8) -> Option<TeeKind> {
        TeeKind::ALL.into_iter().find(|k| k.code() == c)
    }
}

impl fmt::Display for TeeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TeeKind {
    type Err = AttestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sim" | "simulated" => Ok(TeeKind::Sim),
            "snp" | "sev-snp" | "sevsnp" | "sev_snp" => Ok(TeeKind::SevSnp),
            "tdx" => Ok(TeeKind::Tdx),
            "sgx" => Ok(TeeKind::Sgx),
            _ => Err(AttestError::UnknownKind(s.to_string())),
        }
    }
}

/// Attestation evidence: what an enclave sends a verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Which TEE made it.
    pub kind: TeeKind,
    /// The SEV-SNP report (1184 bytes), the TDX or SGX quote, or the simulated report.
    pub report: Vec<u8>,
    /// Endorsement material: for SEV-SNP a certificate table (the configfs-tsm `auxblob`
    /// format) or a PEM bundle (VCEK, then optionally ASK and ARK); for TDX/SGX the DCAP
    /// collateral JSON (`dcap-qvl`'s `QuoteCollateralV3` layout); empty for simulated evidence.
    pub aux: Vec<u8>,
}

/// Magic bytes that open an encoded [`Evidence`] container.
pub const EVIDENCE_MAGIC: [u8; 4] = *b"TSEV";
/// The container version this build writes and reads.
pub const EVIDENCE_VERSION: u8 = 1;
const HEADER_LEN: usize = 16;
/// Largest report or quote a container may hold.
pub const MAX_REPORT_LEN: usize = 1 << 20;
/// Largest aux blob a container may hold.
pub const MAX_AUX_LEN: usize = 16 << 20;

impl Evidence {
    /// Encodes as `"TSEV" ‖ version u8 ‖ kind u8 ‖ 0u16 ‖ report_len u32le ‖ aux_len u32le ‖
    /// report ‖ aux`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.report.len() + self.aux.len());
        out.extend_from_slice(&EVIDENCE_MAGIC);
        out.push(EVIDENCE_VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len_u32(self.report.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(self.aux.len()).to_le_bytes());
        out.extend_from_slice(&self.report);
        out.extend_from_slice(&self.aux);
        out
    }

    /// Decodes a container written by [`Evidence::encode`]: every length is checked, and
    /// nothing may follow the aux blob.
    pub fn decode(b: &[u8]) -> Result<Self, AttestError> {
        let header = b.get(..HEADER_LEN).ok_or_else(|| {
            AttestError::Container(format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte header",
                b.len()
            ))
        })?;
        let (magic, rest) = header.split_at(4);
        if magic != EVIDENCE_MAGIC {
            return Err(AttestError::Container(
                "it does not start with the magic \"TSEV\"".into(),
            ));
        }
        let (version, kind, reserved) = (rest[0], rest[1], &rest[2..4]);
        if version != EVIDENCE_VERSION {
            return Err(AttestError::Container(format!(
                "version {version} is not the version this build reads ({EVIDENCE_VERSION}); upgrade tessera"
            )));
        }
        let kind = TeeKind::from_code(kind)
            .ok_or_else(|| AttestError::Container(format!("unknown TEE kind code {kind}")))?;
        if reserved != [0, 0] {
            return Err(AttestError::Container(
                "reserved header bytes are not zero".into(),
            ));
        }
        let report_len = read_u32(&rest[4..8]) as usize;
        let aux_len = read_u32(&rest[8..12]) as usize;
        if report_len > MAX_REPORT_LEN {
            return Err(AttestError::Container(format!(
                "report length {report_len} exceeds the limit {MAX_REPORT_LEN}"
            )));
        }
        if aux_len > MAX_AUX_LEN {
            return Err(AttestError::Container(format!(
                "aux length {aux_len} exceeds the limit {MAX_AUX_LEN}"
            )));
        }
        let body = &b[HEADER_LEN..];
        let want = report_len + aux_len;
        if body.len() != want {
            return Err(AttestError::Container(format!(
                "the header announces {want} bytes of report and aux but {} follow (truncated or trailing data)",
                body.len()
            )));
        }
        let (report, aux) = body.split_at(report_len);
        Ok(Evidence {
            kind,
            report: report.to_vec(),
            aux: aux.to_vec(),
        })
    }
}

fn len_u32(n: usize) -> u32 {
    // Evidence larger than 4 GiB cannot be produced by any TEE; saturating keeps encode
    // infallible and decode rejects the result (its lengths no longer add up).
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_le_bytes(a)
}

/// What verified evidence says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Which TEE made the evidence.
    pub kind: TeeKind,
    /// The measurement: SEV-SNP `MEASUREMENT` (48 bytes), TDX `MRTD` (48), SGX `MRENCLAVE`
    /// (32), or the simulated measurement (48).
    pub measurement: Vec<u8>,
    /// The 64 bytes of report data the enclave chose.
    pub report_data: [u8; 64],
    /// SGX/TDX: Intel's TCB status (`UpToDate`, `OutOfDate`, ...). SEV-SNP: `MeetsPolicyMinimum`
    /// when the policy sets `snp_min_tcb`, else `NotEvaluated`. Simulated: `Simulated`.
    pub tcb_status: String,
    /// Intel security advisories that apply to the platform (SGX/TDX only).
    pub advisories: Vec<String>,
    /// True for simulated evidence, which gives no security.
    pub simulated: bool,
    /// The platform: SEV-SNP chip ID, SGX/TDX FMSPC, or the simulated key's fingerprint (hex).
    pub platform: String,
    /// TDX only: the runtime measurement registers RTMR0..RTMR3 (48 bytes each); empty for
    /// every other kind.
    pub rtmrs: Vec<Vec<u8>>,
}

impl Claims {
    /// The claims as JSON (hex for byte strings), for `--json` output.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.name(),
            "measurement": hex::encode(&self.measurement),
            "report_data": hex::encode(self.report_data),
            "tcb_status": self.tcb_status,
            "advisories": self.advisories,
            "simulated": self.simulated,
            "platform": self.platform,
            "rtmrs": self.rtmrs.iter().map(hex::encode).collect::<Vec<_>>(),
        })
    }
}

/// Verifies evidence against a policy at time `now`: authenticity first (signatures and
/// certificate chains up to the pinned vendor roots, collateral validity at `now`), then the
/// policy's checks on the claims.
pub fn verify(e: &Evidence, policy: &Policy, now: SystemTime) -> Result<Claims, AttestError> {
    policy.check_kind(e.kind)?;
    let claims = match e.kind {
        TeeKind::Sim => sim::verify_report(&e.report, &e.aux, policy)?,
        TeeKind::SevSnp => snp::verify(&e.report, &e.aux, policy, now)?,
        TeeKind::Tdx | TeeKind::Sgx => dcap::verify(e.kind, &e.report, &e.aux, policy, now)?,
    };
    policy.check_claims(&claims)?;
    Ok(claims)
}

/// [`verify`], then checks in constant time that the report data equals
/// `expected_report_data` (normally [`report_data`] of the verifier's nonce and the
/// enclave's channel key).
pub fn verify_bound(
    e: &Evidence,
    policy: &Policy,
    now: SystemTime,
    expected_report_data: &[u8; 64],
) -> Result<Claims, AttestError> {
    let claims = verify(e, policy, now)?;
    if !bool::from(claims.report_data.ct_eq(expected_report_data)) {
        return Err(AttestError::ReportDataMismatch);
    }
    Ok(claims)
}

/// The measurement of an enclave: SHA-384 over the parts (enclave binary, model, policy, ...),
/// each preceded by its length as a little-endian u64, so that no two different lists of
/// parts hash the same bytes.
pub fn measure(parts: &[&[u8]]) -> [u8; 48] {
    let mut h = Sha384::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The report data that binds evidence to a nonce and a channel key only:
/// SHA-512(len(nonce) as u64le ‖ nonce ‖ channel_key). It says nothing about the software
/// that holds the key; an enclave session (`tessera-runtime`) uses [`session_report_data`],
/// which also binds the application measurement.
pub fn report_data(nonce: &[u8], channel_key: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update((nonce.len() as u64).to_le_bytes());
    h.update(nonce);
    h.update(channel_key);
    h.finalize().into()
}

/// Domain separator of [`session_report_data`]: no other use of SHA-512 in tessera hashes
/// bytes that start with it.
pub const SESSION_DOMAIN: &[u8] = b"tessera-session-report-data-v1\0";

/// The report data of an enclave session: SHA-512(`SESSION_DOMAIN` ‖ len(nonce) u64le ‖ nonce ‖
/// len(cert) u64le ‖ cert ‖ app_measurement). It binds the verifier's fresh nonce, the TLS
/// certificate the verifier will pin, and the *application* measurement (enclave binary,
/// model, enclave policy; see [`measure`]) that the enclave says it runs. For SEV-SNP and TDX
/// the hardware measures only the VM's launch image, so the application measurement reaches
/// the verifier only through these bytes; they are as trustworthy as the launch image that
/// computes them (which the policy must pin, see [`Policy::require_session_pins`]).
pub fn session_report_data(nonce: &[u8], cert: &[u8], app_measurement: &[u8; 48]) -> [u8; 64] {
    session_report_data_with_key(nonce, cert, app_measurement, &[])
}

/// [`session_report_data`] that also binds a key the enclave generated at start (the `lhe`
/// scheme's HE public key, by its hash): with a nonempty `key_binding` the hashed bytes go on
/// with `len(key_binding) u64le ‖ key_binding`; with an empty one the result is
/// [`session_report_data`]'s.
pub fn session_report_data_with_key(
    nonce: &[u8],
    cert: &[u8],
    app_measurement: &[u8; 48],
    key_binding: &[u8],
) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(SESSION_DOMAIN);
    h.update((nonce.len() as u64).to_le_bytes());
    h.update(nonce);
    h.update((cert.len() as u64).to_le_bytes());
    h.update(cert);
    h.update(app_measurement);
    if !key_binding.is_empty() {
        h.update((key_binding.len() as u64).to_le_bytes());
        h.update(key_binding);
    }
    h.finalize().into()
}

/// What a verifier expects an enclave session's evidence to bind.
#[derive(Debug, Clone, Copy)]
pub struct SessionBinding<'a> {
    /// The verifier's fresh nonce.
    pub nonce: &'a [u8],
    /// The TLS certificate (DER) the enclave offered and the verifier will pin.
    pub cert: &'a [u8],
    /// The application measurement the enclave claims (sent beside the evidence).
    pub app_measurement: &'a [u8; 48],
    /// A key the enclave says it generated (empty: none), bound by
    /// [`session_report_data_with_key`].
    pub key_binding: &'a [u8],
}

/// The binding check of an enclave session, on claims whose authenticity [`verify`] has
/// established:
///
/// 1. the report data must equal [`session_report_data`] of the binding (in constant time),
///    else [`AttestError::ReportDataMismatch`]: the evidence belongs to another connection,
///    another certificate, or another application measurement than the one claimed;
/// 2. the claimed application measurement must be one the policy accepts, else
///    [`AttestError::AppMeasurementMismatch`]: for simulated evidence it must equal the
///    signed measurement of the simulated report (and be in `app_measurements` if the policy
///    names any); for SEV-SNP, TDX and SGX it must be in `app_measurements`.
pub fn check_session_binding(
    claims: &Claims,
    policy: &Policy,
    binding: &SessionBinding<'_>,
) -> Result<(), AttestError> {
    let want = session_report_data_with_key(
        binding.nonce,
        binding.cert,
        binding.app_measurement,
        binding.key_binding,
    );
    if !bool::from(claims.report_data.ct_eq(&want)) {
        return Err(AttestError::ReportDataMismatch);
    }
    let got = &binding.app_measurement[..];
    let mismatch = |expected: String| AttestError::AppMeasurementMismatch {
        got: hex::encode(got),
        expected,
    };
    if claims.kind == TeeKind::Sim && !ct_eq(&claims.measurement, got) {
        return Err(mismatch(format!(
            "{} (the simulated report's own measurement)",
            hex::encode(&claims.measurement)
        )));
    }
    let listed = policy.app_measurements.iter().any(|m| {
        hex::decode(m.trim())
            .map(|b| ct_eq(&b, got))
            .unwrap_or(false)
    });
    let required = claims.kind != TeeKind::Sim || !policy.app_measurements.is_empty();
    if required && !listed {
        return Err(mismatch(if policy.app_measurements.is_empty() {
            "none: the policy names no app_measurements".into()
        } else {
            policy.app_measurements.join(", ")
        }));
    }
    Ok(())
}

/// Verifies the evidence of an enclave session: [`Policy::require_session_pins`] for its
/// kind (a policy that pins no measurement of a real TEE is refused before anything else),
/// then [`verify`] (authenticity and the policy's checks), then [`check_session_binding`].
pub fn verify_session(
    e: &Evidence,
    policy: &Policy,
    now: SystemTime,
    binding: &SessionBinding<'_>,
) -> Result<Claims, AttestError> {
    policy.require_session_pins(e.kind)?;
    let claims = verify(e, policy, now)?;
    check_session_binding(&claims, policy, binding)?;
    Ok(claims)
}

/// One human line about verified claims. For simulated evidence it says loudly that the TEE
/// is SIMULATED and gives no security.
pub fn describe(c: &Claims) -> String {
    let m = short_hex(&c.measurement);
    if c.simulated || c.kind == TeeKind::Sim {
        return format!(
            "WARNING: SIMULATED TEE - NO SECURITY: this evidence is signed by a software key on an ordinary machine (platform key {}), so anyone who can read that key file can forge it and the host sees all data; measurement {m}",
            short(&c.platform)
        );
    }
    let name = match c.kind {
        TeeKind::SevSnp => "AMD SEV-SNP report",
        TeeKind::Tdx => "Intel TDX quote",
        TeeKind::Sgx => "Intel SGX quote",
        TeeKind::Sim => "simulated report",
    };
    let platform = match c.kind {
        TeeKind::SevSnp => "chip",
        _ => "FMSPC",
    };
    let adv = if c.advisories.is_empty() {
        "none".to_string()
    } else {
        c.advisories.join(", ")
    };
    format!(
        "{name} verified: measurement {m}, TCB {}, advisories {adv}, {platform} {}",
        c.tcb_status,
        short(&c.platform)
    )
}

fn short_hex(b: &[u8]) -> String {
    short(&hex::encode(b))
}

fn short(s: &str) -> String {
    if s.len() > 24 {
        format!("{}…", s.get(..24).unwrap_or(s))
    } else {
        s.to_string()
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 (UTC) text of a Unix time.
pub(crate) fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| format!("unix {secs}"))
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
