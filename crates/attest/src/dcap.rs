//! Intel SGX and TDX quotes, verified with collateral through `dcap-qvl`: Intel's Root CA
//! (built into `dcap-qvl`) → PCK chain in the quote → QE report → quote signature, with
//! TCB info and QE identity signed by Intel's TCB signing key, CRLs, and the TCB status.

use std::time::SystemTime;

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::{QuoteClaims, QuotePolicy};
use parity_scale_codec::{Decode, Encode};
use x509_cert::der::Decode as _;

use crate::{AttestError, Claims, Policy, TeeKind, rfc3339, unix_secs};

const TEE_TYPE_SGX: u32 = 0;
const TEE_TYPE_TDX: u32 = 0x81;
/// Largest quote accepted.
const MAX_QUOTE_LEN: usize = 1 << 16;

/// The collateral JSON, read strictly: unknown keys are errors, byte fields are hex.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CollateralJson {
    pck_crl_issuer_chain: String,
    root_ca_crl: String,
    pck_crl: String,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: String,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: String,
    #[serde(default)]
    pck_certificate_chain: Option<String>,
}

/// Parses DCAP collateral JSON (the layout of `dcap-qvl`'s `QuoteCollateralV3`).
pub fn parse_collateral(kind: TeeKind, aux: &[u8]) -> Result<QuoteCollateralV3, AttestError> {
    let bad = |reason: String| AttestError::Collateral { kind, reason };
    let j: CollateralJson = serde_json::from_slice(aux)
        .map_err(|e| bad(format!("collateral JSON does not parse: {e}")))?;
    let hex_field =
        |name: &str, v: &str| hex::decode(v).map_err(|e| bad(format!("{name} is not hex: {e}")));
    Ok(QuoteCollateralV3 {
        pck_crl_issuer_chain: j.pck_crl_issuer_chain,
        root_ca_crl: hex_field("root_ca_crl", &j.root_ca_crl)?,
        pck_crl: hex_field("pck_crl", &j.pck_crl)?,
        tcb_info_issuer_chain: j.tcb_info_issuer_chain,
        tcb_info: j.tcb_info,
        tcb_info_signature: hex_field("tcb_info_signature", &j.tcb_info_signature)?,
        qe_identity_issuer_chain: j.qe_identity_issuer_chain,
        qe_identity: j.qe_identity,
        qe_identity_signature: hex_field("qe_identity_signature", &j.qe_identity_signature)?,
        pck_certificate_chain: j.pck_certificate_chain,
    })
}

/// The TEE kind a quote's header names, if the bytes look like a DCAP ECDSA quote.
pub fn quote_kind(raw: &[u8]) -> Option<TeeKind> {
    let version = u16::from_le_bytes([*raw.first()?, *raw.get(1)?]);
    let key_type = u16::from_le_bytes([*raw.get(2)?, *raw.get(3)?]);
    let tee = crate::read_u32(raw.get(4..8)?);
    if !(3..=5).contains(&version) || key_type != 2 {
        return None;
    }
    match tee {
        TEE_TYPE_SGX => Some(TeeKind::Sgx),
        TEE_TYPE_TDX => Some(TeeKind::Tdx),
        _ => None,
    }
}

/// Parses a quote and checks that it is canonical: re-encoding it gives back exactly the
/// input (no trailing or unparsed bytes anywhere).
pub fn parse_quote(kind: TeeKind, raw: &[u8]) -> Result<Quote, AttestError> {
    if raw.len() > MAX_QUOTE_LEN {
        return Err(AttestError::malformed(
            kind,
            format!(
                "quote of {} bytes exceeds the {MAX_QUOTE_LEN}-byte limit",
                raw.len()
            ),
        ));
    }
    let found = quote_kind(raw).ok_or_else(|| {
        AttestError::malformed(
            kind,
            "header: not a DCAP ECDSA-P256 quote of version 3 to 5 for SGX or TDX",
        )
    })?;
    if found != kind {
        return Err(AttestError::malformed(
            kind,
            format!("header: the evidence says {kind} but the quote is a {found} quote"),
        ));
    }
    let mut input = raw;
    let q = Quote::decode(&mut input)
        .map_err(|e| AttestError::malformed(kind, format!("quote does not parse: {e}")))?;
    // Quotes read from fixed-size buffers (configfs-tsm, TDX) may end in zero padding.
    if input.iter().any(|&b| b != 0) {
        return Err(AttestError::malformed(
            kind,
            format!(
                "{} bytes follow the quote and they are not zero padding",
                input.len()
            ),
        ));
    }
    let used = raw.len() - input.len();
    if raw.get(..used) != Some(&q.encode()[..]) {
        return Err(AttestError::malformed(
            kind,
            "the quote is not canonical: its signature data holds bytes that no field accounts for",
        ));
    }
    Ok(q)
}

/// Verifies an SGX or TDX quote with its collateral (`aux`) at `now`.
pub(crate) fn verify(
    kind: TeeKind,
    quote: &[u8],
    aux: &[u8],
    policy: &Policy,
    now: SystemTime,
) -> Result<Claims, AttestError> {
    let q = parse_quote(kind, quote)?;
    if aux.is_empty() {
        return Err(AttestError::MissingMaterial {
            kind,
            what: "collateral",
            hint: "pass --collateral with the DCAP collateral JSON for this quote (TCB info, QE identity, CRLs and their issuer chains, from Intel's PCS or a PCCS)",
        });
    }
    let collateral = parse_collateral(kind, aux)?;
    let chain = q
        .raw_cert_chain()
        .map_err(|e| AttestError::malformed(kind, format!("PCK certificate chain: {e:#}")))?;
    check_canonical_pem(chain).map_err(|reason| {
        AttestError::malformed(
            kind,
            format!("PCK certificate chain in the quote: {reason}"),
        )
    })?;
    for (name, pem) in [
        (
            "pck_crl_issuer_chain",
            Some(&collateral.pck_crl_issuer_chain),
        ),
        (
            "tcb_info_issuer_chain",
            Some(&collateral.tcb_info_issuer_chain),
        ),
        (
            "qe_identity_issuer_chain",
            Some(&collateral.qe_identity_issuer_chain),
        ),
        (
            "pck_certificate_chain",
            collateral.pck_certificate_chain.as_ref(),
        ),
    ] {
        if let Some(pem) = pem {
            check_canonical_pem(pem.as_bytes()).map_err(|reason| AttestError::Collateral {
                kind,
                reason: format!("{name}: {reason}"),
            })?;
        }
    }
    let now_s = unix_secs(now);
    let claims = match run(quote, &collateral, now_s, policy) {
        Ok(c) => c,
        Err(e) => return Err(explain_failure(kind, quote, &collateral, now_s, policy, e)),
    };
    // Every certificate of every chain must be authentic, not only those on the path the
    // verifier chose: copies of the root or of intermediates it ignored must not be
    // alterable either.
    let root_key_id = &claims.platform.root_key_id;
    check_chain_signatures(chain, root_key_id).map_err(|reason| AttestError::Certificate {
        kind,
        which: "in the quote's PCK chain".into(),
        reason,
    })?;
    for (name, pem) in [
        ("pck_crl_issuer_chain", &collateral.pck_crl_issuer_chain),
        ("tcb_info_issuer_chain", &collateral.tcb_info_issuer_chain),
        (
            "qe_identity_issuer_chain",
            &collateral.qe_identity_issuer_chain,
        ),
    ] {
        check_chain_signatures(pem.as_bytes(), root_key_id).map_err(|reason| {
            AttestError::Certificate {
                kind,
                which: format!("in the collateral's {name}"),
                reason,
            }
        })?;
    }
    let td10 = match &claims.report {
        Report::SgxEnclave(_) => None,
        Report::TD10(r) => Some(r),
        Report::TD15(r) => Some(&r.base),
        Report::TD15Ex(r) => Some(&r.base.base),
    };
    let (measurement, report_data, rtmrs, is_sgx) = match (&claims.report, td10) {
        (Report::SgxEnclave(r), _) => (r.mr_enclave.to_vec(), r.report_data, Vec::new(), true),
        (_, Some(r)) => (
            r.mr_td.to_vec(),
            r.report_data,
            vec![
                r.rt_mr0.to_vec(),
                r.rt_mr1.to_vec(),
                r.rt_mr2.to_vec(),
                r.rt_mr3.to_vec(),
            ],
            false,
        ),
        (_, None) => {
            return Err(AttestError::malformed(
                kind,
                "the quote's report body is neither an SGX enclave report nor a TD report",
            ));
        }
    };
    if is_sgx != (kind == TeeKind::Sgx) || is_sgx != q.report.is_sgx() {
        return Err(AttestError::malformed(
            kind,
            "the quote's report body does not match its TEE type",
        ));
    }
    Ok(Claims {
        kind,
        measurement,
        report_data,
        tcb_status: claims.tcb.status.to_string(),
        advisories: claims.tcb.advisory_ids.clone(),
        simulated: false,
        platform: hex::encode(claims.platform.pck.fmspc),
        rtmrs,
    })
}

fn run(
    quote: &[u8],
    collateral: &QuoteCollateralV3,
    now_s: u64,
    policy: &Policy,
) -> Result<QuoteClaims, String> {
    QuoteVerifier::new_prod()
        .allow_debug(policy.allow_debug)
        .verify_with_policy(quote, collateral, now_s, &QuotePolicy::claims_only(now_s))
        .map_err(|e| format!("{e:#}"))
}

/// A collateral item's validity window.
struct Dated {
    item: &'static str,
    from: u64,
    until: u64,
}

fn json_dates(item: &'static str, json: &str) -> Option<Dated> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let date = |k: &str| -> Option<u64> {
        let s = v.get(k)?.as_str()?;
        u64::try_from(chrono::DateTime::parse_from_rfc3339(s).ok()?.timestamp()).ok()
    };
    Some(Dated {
        item,
        from: date("issueDate")?,
        until: date("nextUpdate")?,
    })
}

fn crl_dates(item: &'static str, der: &[u8]) -> Option<Dated> {
    let crl = x509_cert::crl::CertificateList::from_der(der).ok()?;
    let t = &crl.tbs_cert_list;
    Some(Dated {
        item,
        from: t.this_update.to_unix_duration().as_secs(),
        until: t.next_update?.to_unix_duration().as_secs(),
    })
}

/// Turns a verification failure into the clearest true error. If the collateral verifies at
/// a time inside its own validity window but not at `now`, it is genuine and out of date:
/// say so, naming the item. Otherwise the verifier's own reasons stand.
fn explain_failure(
    kind: TeeKind,
    quote: &[u8],
    c: &QuoteCollateralV3,
    now_s: u64,
    policy: &Policy,
    reason: String,
) -> AttestError {
    let original = reason.clone();
    let fallback = AttestError::Quote {
        kind,
        reason: explain_reason(&reason),
    };
    let items: Option<Vec<Dated>> = (|| {
        Some(vec![
            json_dates("TCB info", &c.tcb_info)?,
            json_dates("QE identity", &c.qe_identity)?,
            crl_dates("root CA CRL", &c.root_ca_crl)?,
            crl_dates("PCK CRL", &c.pck_crl)?,
        ])
    })();
    let Some(items) = items else { return fallback };
    let (Some(first_end), Some(last_start)) = (
        items.iter().min_by_key(|d| d.until),
        items.iter().max_by_key(|d| d.from),
    ) else {
        return fallback;
    };
    if last_start.from > first_end.until || (now_s <= first_end.until && now_s >= last_start.from) {
        return fallback;
    }
    let inside = first_end.until.saturating_sub(1).max(last_start.from);
    // Time is the cause if, inside the window, verification succeeds or fails later on
    // with another reason.
    let note = match run(quote, c, inside, policy) {
        Ok(_) => String::new(),
        Err(e) if e == original => return fallback,
        Err(e) => format!(
            "; at {} (inside the window) it still fails: {}",
            rfc3339(inside),
            explain_reason(&e)
        ),
    };
    if now_s > first_end.until {
        AttestError::CollateralExpired {
            kind,
            item: format!(
                "{} (next update due {})",
                first_end.item,
                rfc3339(first_end.until)
            ),
            until: rfc3339(first_end.until),
            now: rfc3339(now_s),
            note,
        }
    } else {
        AttestError::CollateralNotYetValid {
            kind,
            item: last_start.item.to_string(),
            from: rfc3339(last_start.from),
            now: rfc3339(now_s),
            note,
        }
    }
}

/// Adds what to do to the verifier's reasons where they need it.
fn explain_reason(reason: &str) -> String {
    const HINTS: [(&str, &str); 4] = [
        (
            "No matching TCB level",
            "the platform's TCB (CPU SVNs, PCE SVN, TDX module) is below every level in Intel's TCB info, i.e. older than anything Intel still rates; update the platform's microcode, firmware and TDX module",
        ),
        (
            "UnknownRevocationStatus",
            "no valid CRL covers a certificate of the chain: the collateral's pck_crl or root_ca_crl is altered or belongs to another CA",
        ),
        (
            "CertRevoked",
            "a certificate of the chain is revoked by the collateral's CRL",
        ),
        (
            "InvalidCrlSignatureForPublicKey",
            "a CRL of the collateral is not signed by its issuer (altered pck_crl or root_ca_crl)",
        ),
    ];
    match HINTS.iter().find(|(k, _)| reason.contains(k)) {
        Some((_, hint)) => format!("{reason}: {hint}"),
        None => reason.to_string(),
    }
}

/// Checks that a PEM certificate chain is in canonical form (each certificate DER-valid and
/// written with 64-character lines and LF endings, optionally followed by NUL padding). The
/// signatures authenticate the certificates, not their PEM text; this makes every byte of
/// the text matter, so that no byte can change unnoticed.
pub fn check_canonical_pem(text: &[u8]) -> Result<(), String> {
    use x509_cert::der::EncodePem;
    let end = text.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let body = &text[..end];
    let certs = x509_cert::Certificate::load_pem_chain(body)
        .map_err(|e| format!("PEM certificates do not parse: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate".into());
    }
    let mut canonical = String::new();
    for c in &certs {
        let pem = c
            .to_pem(x509_cert::der::pem::LineEnding::LF)
            .map_err(|e| format!("certificate does not re-encode: {e}"))?;
        canonical.push_str(&pem);
    }
    if canonical.as_bytes() != body {
        return Err(
            "the PEM text is not canonical (altered whitespace, line breaks, base64 padding bits or stray text)"
                .into(),
        );
    }
    Ok(())
}

/// Checks that each certificate of a PEM chain is signed (ECDSA P-256, SHA-256) by the next
/// one and that the last is Intel's root: self-signed, with the public key whose SHA-384 is
/// `root_key_id` (the one `dcap-qvl` pins).
fn check_chain_signatures(pem: &[u8], root_key_id: &[u8]) -> Result<(), String> {
    use p256::ecdsa::signature::Verifier as _;
    use sha2::Digest;
    use x509_cert::der::Encode as _;
    let end = pem.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let certs = x509_cert::Certificate::load_pem_chain(&pem[..end])
        .map_err(|e| format!("does not parse: {e}"))?;
    let last = certs.last().ok_or("the chain is empty")?;
    let root_key = last
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let digest: [u8; 48] = sha2::Sha384::digest(root_key).into();
    if digest[..] != *root_key_id {
        return Err("the last certificate is not Intel's SGX root CA".into());
    }
    for (i, c) in certs.iter().enumerate() {
        let n = i + 1;
        let issuer = certs.get(i + 1).unwrap_or(c);
        if c.signature_algorithm != c.tbs_certificate.signature || c.signature.unused_bits() != 0 {
            return Err(format!(
                "certificate {n}: its outer signature algorithm or signature encoding is altered"
            ));
        }
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(
            issuer
                .tbs_certificate
                .subject_public_key_info
                .subject_public_key
                .raw_bytes(),
        )
        .map_err(|e| format!("certificate {n}: its issuer's key is not a P-256 key: {e}"))?;
        let sig = p256::ecdsa::Signature::from_der(c.signature.raw_bytes())
            .map_err(|e| format!("certificate {n}: malformed ECDSA signature: {e}"))?;
        let tbs = c
            .tbs_certificate
            .to_der()
            .map_err(|e| format!("certificate {n}: does not re-encode: {e}"))?;
        key.verify(&tbs, &sig).map_err(|_| {
            format!("certificate {n} of the chain is not signed by the next one (altered)")
        })?;
    }
    Ok(())
}
