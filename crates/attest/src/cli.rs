//! The body of `tessera attest verify FILE`: recognise the evidence file, fetch the sidecar
//! material named by the flags, build the policy and verify.
//!
//! Recognised files: an encoded [`Evidence`] container; a raw SEV-SNP report (1184 bytes);
//! an SGX or TDX DCAP quote (by its header); a raw simulated report; and any of these as hex
//! text.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::snp::{self, CertRole};
use crate::{AttestError, Claims, Evidence, Policy, TeeKind, verify};

/// Largest evidence, collateral or certificate file read.
const MAX_FILE: u64 = 16 << 20;

/// The arguments of `tessera attest verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyArgs {
    /// The evidence file.
    pub evidence: PathBuf,
    /// A JSON policy file; absent means the strict default policy.
    pub policy: Option<PathBuf>,
    /// DCAP collateral JSON for an SGX or TDX quote (replaces any in the container).
    pub collateral: Option<PathBuf>,
    /// SEV-SNP certificates: a file (VCEK as DER or PEM, optionally followed by ASK and ARK
    /// in PEM, or a certificate table) or a directory of such files (replaces any in the
    /// container).
    pub certs: Option<PathBuf>,
    /// Verification time: RFC 3339 or unix seconds; absent means now.
    pub at: Option<String>,
    /// Accept simulated evidence (no security; development only).
    pub allow_simulated: bool,
}

/// Runs `tessera attest verify`: loads everything the arguments name and verifies.
pub fn verify_cmd(a: &VerifyArgs) -> Result<Claims, AttestError> {
    let mut policy = match &a.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    if a.allow_simulated {
        policy.allow_simulated = true;
        if !policy.allowed_kinds.contains(&TeeKind::Sim) {
            policy.allowed_kinds.push(TeeKind::Sim);
        }
    }
    let now = match &a.at {
        Some(s) => parse_time(s)?,
        None => SystemTime::now(),
    };
    let e = load_evidence(&a.evidence, a.collateral.as_deref(), a.certs.as_deref())?;
    verify(&e, &policy, now)
}

/// Parses a verification time: RFC 3339 (`2025-07-01T00:00:00Z`) or unix seconds.
pub fn parse_time(s: &str) -> Result<SystemTime, AttestError> {
    let t = s.trim();
    let bad = |reason: String| AttestError::Time {
        input: s.to_string(),
        reason,
    };
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = t.parse().map_err(|e| bad(format!("{e}")))?;
        return UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| bad("out of range".into()));
    }
    let d = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| bad(e.to_string()))?;
    let secs = u64::try_from(d.timestamp()).map_err(|_| bad("before 1970".into()))?;
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| bad("out of range".into()))
}

/// Reads an evidence file and the sidecar material: `collateral` becomes the aux of an SGX
/// or TDX quote, `certs` the certificate table of an SEV-SNP report.
pub fn load_evidence(
    path: &Path,
    collateral: Option<&Path>,
    certs: Option<&Path>,
) -> Result<Evidence, AttestError> {
    let bytes = crate::policy::read_capped(path, MAX_FILE)?;
    let mut e = detect(&bytes).map_err(|reason| AttestError::UnknownFormat {
        path: path.to_path_buf(),
        reason,
    })?;
    match e.kind {
        TeeKind::Sgx | TeeKind::Tdx => {
            if let Some(c) = collateral {
                e.aux = crate::policy::read_capped(c, MAX_FILE)?;
            }
            if certs.is_some() {
                return Err(flag_mismatch(
                    path,
                    e.kind,
                    "--certs is for SEV-SNP reports; use --collateral",
                ));
            }
        }
        TeeKind::SevSnp => {
            if let Some(c) = certs {
                e.aux = snp::build_cert_table(&load_certs(c)?);
            }
            if collateral.is_some() {
                return Err(flag_mismatch(
                    path,
                    e.kind,
                    "--collateral is for SGX/TDX quotes; use --certs",
                ));
            }
        }
        TeeKind::Sim => {
            if collateral.is_some() || certs.is_some() {
                return Err(flag_mismatch(
                    path,
                    e.kind,
                    "simulated evidence takes neither --collateral nor --certs",
                ));
            }
        }
    }
    Ok(e)
}

fn flag_mismatch(path: &Path, kind: TeeKind, why: &str) -> AttestError {
    AttestError::UnknownFormat {
        path: path.to_path_buf(),
        reason: format!("it holds {kind} evidence, and {why}"),
    }
}

/// Recognises evidence bytes (see the module docs); the error says what was tried.
pub fn detect(bytes: &[u8]) -> Result<Evidence, String> {
    if bytes.starts_with(&crate::EVIDENCE_MAGIC) {
        return Evidence::decode(bytes).map_err(|e| e.to_string());
    }
    if bytes.starts_with(b"TSIM") {
        return Ok(raw(TeeKind::Sim, bytes));
    }
    if let Some(kind) = crate::dcap::quote_kind(bytes) {
        return Ok(raw(kind, bytes));
    }
    if bytes.len() == snp::REPORT_LEN {
        let version = crate::read_u32(&bytes[..4]);
        if (2..=5).contains(&version) {
            return Ok(raw(TeeKind::SevSnp, bytes));
        }
    }
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !text.is_empty()
        && text.len().is_multiple_of(2)
        && text.iter().all(u8::is_ascii_hexdigit)
        && let Ok(decoded) = hex::decode(&text)
    {
        // The decoded bytes are half as long, so this recursion ends.
        return detect(&decoded).map_err(|e| format!("hex text decodes, but {e}"));
    }
    Err(format!(
        "{} bytes that are neither an evidence container (\"TSEV\"), a simulated report (\"TSIM\"), an SGX/TDX DCAP quote (version 3-5, ECDSA-P256) nor an SEV-SNP report ({} bytes, version 2-5), nor hex of one",
        bytes.len(),
        snp::REPORT_LEN
    ))
}

fn raw(kind: TeeKind, bytes: &[u8]) -> Evidence {
    Evidence {
        kind,
        report: bytes.to_vec(),
        aux: Vec::new(),
    }
}

/// Reads SEV-SNP certificates from a file or every file of a directory. Each file is a DER
/// certificate, PEM certificates, or a certificate table; each certificate is recognised by
/// its content.
pub fn load_certs(path: &Path) -> Result<Vec<(CertRole, Vec<u8>)>, AttestError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| AttestError::io("list", path, e))?
            .filter_map(|d| d.ok().map(|d| d.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out: Vec<(CertRole, Vec<u8>)> = Vec::new();
    for f in files {
        let b = crate::policy::read_capped(&f, MAX_FILE)?;
        let ders: Vec<Vec<u8>> = if b.windows(10).any(|w| w == b"-----BEGIN") {
            snp::pem_certs(&b)?
        } else if b.first() == Some(&0x30) {
            vec![b]
        } else {
            snp::parse_cert_table(&b)?
                .into_iter()
                .filter(|(r, _)| *r != CertRole::Crl)
                .map(|(_, d)| d)
                .collect()
        };
        for d in ders {
            let role = snp::classify_der(&d)?;
            if out.iter().any(|(r, _)| *r == role) {
                return Err(AttestError::Collateral {
                    kind: TeeKind::SevSnp,
                    reason: format!("{} holds a second {role:?} certificate", f.display()),
                });
            }
            out.push((role, d));
        }
    }
    // VCEK first, then ASK, then ARK, as hosts write the table.
    out.sort_by_key(|(r, _)| match r {
        CertRole::Vcek | CertRole::Vlek => 0,
        CertRole::Ask => 1,
        _ => 2,
    });
    Ok(out)
}
