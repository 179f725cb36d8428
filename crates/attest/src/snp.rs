//! AMD SEV-SNP: attestation reports, their certificate material, and verification
//! (ARK → ASK → VCEK → report) with the `sev` crate and AMD's built-in roots.
//!
//! Certificate material (the `aux` of SNP [`crate::Evidence`]) is either the certificate table
//! that configfs-tsm's `auxblob` and the GHCB extended guest request return (16-byte GUID,
//! u32le offset, u32le length entries ended by an all-zero entry, then the DER
//! certificates), or a PEM bundle. Each certificate is recognised by its content: the VCEK
//! (or VLEK) has an EC P-384 key, the ARK signs itself, the ASK is the other RSA key. Where
//! the ASK or ARK is missing, AMD's built-in ones (Milan, Genoa, Turin) are used; a given
//! ARK must be byte-identical to a built-in one.

use std::time::SystemTime;

use p384::ecdsa::signature::Verifier as _;
use sev::certs::snp::{Certificate as SevCert, Verifiable, builtin};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use x509_cert::der::{Decode, Encode};

use crate::{AttestError, Claims, Policy, TeeKind, rfc3339, unix_secs};

const KIND: TeeKind = TeeKind::SevSnp;
/// Length of an SEV-SNP attestation report.
pub const REPORT_LEN: usize = 1184;
/// The report signature covers bytes `[0, 0x2A0)`.
const SIGNED_LEN: usize = 0x2A0;
/// ECDSA P-384 with SHA-384, the only signature algorithm AMD defines for reports.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// The role of a certificate in an SNP certificate table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (signs VCEKs), or the ASVK (signs VLEKs).
    Ask,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// A certificate revocation list (carried but not used by this verifier).
    Crl,
}

const GUIDS: [(CertRole, &str); 5] = [
    (CertRole::Ark, "c0b406a4a803495297433fb6014cd0ae"),
    (CertRole::Ask, "4ab7b379bbac4fe4a02f05aef327c782"),
    (CertRole::Vcek, "63da758de6644564adc5f4b93be8accd"),
    (CertRole::Vlek, "a8074bc2a25a483eaae639c045a0b8a1"),
    (CertRole::Crl, "92f81bc358114d3d97ffd19f88dc67ea"),
];

fn guid_bytes(s: &str) -> [u8; 16] {
    let mut g = [0u8; 16];
    if let Ok(v) = hex::decode(s) {
        for (d, b) in g.iter_mut().zip(v) {
            *d = b;
        }
    }
    g
}

/// The GUID in the byte order of Microsoft's GUID structure (first three fields little-endian).
fn guid_mixed(g: [u8; 16]) -> [u8; 16] {
    let mut m = g;
    m[..4].reverse();
    m[4..6].reverse();
    m[6..8].reverse();
    m
}

fn role_of_guid(g: &[u8]) -> Option<CertRole> {
    GUIDS.iter().find_map(|(role, s)| {
        let b = guid_bytes(s);
        (g == b || g == guid_mixed(b)).then_some(*role)
    })
}

/// Builds a certificate table (GUIDs in RFC 4122 byte order, as the `sev` crate and `snphost`
/// write them) from DER certificates.
pub fn build_cert_table(entries: &[(CertRole, Vec<u8>)]) -> Vec<u8> {
    let table_len = (entries.len() + 1) * 24;
    let mut out = Vec::new();
    let mut offset = table_len;
    for (role, der) in entries {
        let guid = GUIDS
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, s)| guid_bytes(s))
            .unwrap_or_default();
        out.extend_from_slice(&guid);
        out.extend_from_slice(&crate::len_u32(offset).to_le_bytes());
        out.extend_from_slice(&crate::len_u32(der.len()).to_le_bytes());
        offset += der.len();
    }
    out.extend_from_slice(&[0u8; 24]);
    for (_, der) in entries {
        out.extend_from_slice(der);
    }
    out
}

/// Parses a certificate table. Every byte outside the table and the certificates it points
/// to must be zero (padding), entries must not overlap, and unknown GUIDs are refused, so no
/// byte of the table can change unnoticed.
pub fn parse_cert_table(b: &[u8]) -> Result<Vec<(CertRole, Vec<u8>)>, AttestError> {
    let bad = |reason: String| AttestError::Collateral { kind: KIND, reason };
    let mut covered = vec![false; b.len()];
    let mut out = Vec::new();
    let mut pos = 0usize;
    loop {
        let e = b.get(pos..pos + 24).ok_or_else(|| {
            bad(format!(
                "certificate table: entry at byte {pos} runs past the end ({} bytes) before the all-zero terminator",
                b.len()
            ))
        })?;
        for c in covered.iter_mut().skip(pos).take(24) {
            *c = true;
        }
        pos += 24;
        let (guid, rest) = e.split_at(16);
        let off = crate::read_u32(&rest[..4]) as usize;
        let len = crate::read_u32(&rest[4..]) as usize;
        if guid.iter().all(|&x| x == 0) {
            if off != 0 || len != 0 {
                return Err(bad(
                    "certificate table: the terminating entry has a non-zero offset or length"
                        .into(),
                ));
            }
            break;
        }
        let role = role_of_guid(guid).ok_or_else(|| {
            bad(format!(
                "certificate table: unknown GUID {} in the entry at byte {}",
                hex::encode(guid),
                pos - 24
            ))
        })?;
        let end = off
            .checked_add(len)
            .filter(|&end| end <= b.len() && len > 0)
            .ok_or_else(|| {
                bad(format!(
                    "certificate table: {role:?} entry (offset {off}, length {len}) lies outside the {} bytes",
                    b.len()
                ))
            })?;
        for c in &mut covered[off..end] {
            if *c {
                return Err(bad(format!(
                    "certificate table: {role:?} entry overlaps the table or another certificate"
                )));
            }
            *c = true;
        }
        out.push((role, b[off..end].to_vec()));
        if out.len() > 16 {
            return Err(bad("certificate table: more than 16 entries".into()));
        }
    }
    if let Some(i) = covered.iter().zip(b).position(|(&c, &x)| !c && x != 0) {
        return Err(bad(format!(
            "certificate table: byte {i} belongs to no certificate but is not zero padding"
        )));
    }
    Ok(out)
}

/// The certificates that endorse a report.
#[derive(Debug, Clone, Default)]
pub struct SnpCerts {
    /// VCEK or VLEK (DER).
    pub vek: Option<Vec<u8>>,
    /// True when `vek` is a VLEK.
    pub vlek: bool,
    /// ASK or ASVK (DER), if given.
    pub ask: Option<Vec<u8>>,
    /// ARK (DER), if given.
    pub ark: Option<Vec<u8>>,
}

/// Splits the certificates in a PEM text (any number of `CERTIFICATE` blocks) into DER.
pub fn pem_certs(text: &[u8]) -> Result<Vec<Vec<u8>>, AttestError> {
    let certs =
        x509_cert::Certificate::load_pem_chain(text).map_err(|e| AttestError::Collateral {
            kind: KIND,
            reason: format!("PEM certificate bundle does not parse: {e}"),
        })?;
    certs
        .iter()
        .map(|c| {
            c.to_der().map_err(|e| AttestError::Collateral {
                kind: KIND,
                reason: format!("certificate does not re-encode: {e}"),
            })
        })
        .collect()
}

/// Decides what a DER certificate is by its content: an EC key is a VCEK/VLEK, a
/// self-signed RSA certificate an ARK, any other RSA certificate an ASK/ASVK.
pub fn classify_der(der: &[u8]) -> Result<CertRole, AttestError> {
    let c = x509_cert::Certificate::from_der(der).map_err(|e| AttestError::Certificate {
        kind: KIND,
        which: "(unclassified)".into(),
        reason: format!("not a DER X.509 certificate: {e}"),
    })?;
    let tbs = &c.tbs_certificate;
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    if tbs.subject_public_key_info.algorithm.oid.to_string() == EC_PUBLIC_KEY {
        let vlek = tbs.subject.to_string().contains("VLEK");
        return Ok(if vlek { CertRole::Vlek } else { CertRole::Vcek });
    }
    if tbs.subject == tbs.issuer {
        Ok(CertRole::Ark)
    } else {
        Ok(CertRole::Ask)
    }
}

/// Collects certificates into [`SnpCerts`]; two of one role is an error.
pub fn collect_certs(
    entries: impl IntoIterator<Item = (CertRole, Vec<u8>)>,
) -> Result<SnpCerts, AttestError> {
    let mut s = SnpCerts::default();
    for (role, der) in entries {
        let slot = match role {
            CertRole::Vcek | CertRole::Vlek => {
                s.vlek = role == CertRole::Vlek;
                &mut s.vek
            }
            CertRole::Ask => &mut s.ask,
            CertRole::Ark => &mut s.ark,
            CertRole::Crl => continue,
        };
        if slot.is_some() {
            return Err(AttestError::Collateral {
                kind: KIND,
                reason: format!("more than one {role:?} certificate"),
            });
        }
        *slot = Some(der);
    }
    Ok(s)
}

/// Reads the certificate material of SNP evidence: a PEM bundle or a certificate table.
pub fn parse_aux(aux: &[u8]) -> Result<SnpCerts, AttestError> {
    let start = aux
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(aux.len());
    if aux[start..].starts_with(b"-----BEGIN") {
        let ders = pem_certs(aux)?;
        let mut entries = Vec::new();
        for d in ders {
            entries.push((classify_der(&d)?, d));
        }
        collect_certs(entries)
    } else {
        collect_certs(parse_cert_table(aux)?)
    }
}

fn cert_err(which: &str, reason: impl Into<String>) -> AttestError {
    AttestError::Certificate {
        kind: KIND,
        which: which.to_string(),
        reason: reason.into(),
    }
}

/// A parsed certificate, in both the `sev` and the `x509-cert` forms.
struct Cert {
    sev: SevCert,
    x509: x509_cert::Certificate,
}

fn parse_cert(which: &str, der: &[u8]) -> Result<Cert, AttestError> {
    let x509 = x509_cert::Certificate::from_der(der)
        .map_err(|e| cert_err(which, format!("not a DER X.509 certificate: {e}")))?;
    let sev = SevCert::from_der(der).map_err(|e| cert_err(which, e.to_string()))?;
    // The signature BIT STRING's unused-bits count is not covered by the signature either.
    if x509.signature.unused_bits() != 0 {
        return Err(cert_err(
            which,
            "its signature BIT STRING declares unused bits (malformed or altered)",
        ));
    }
    // The outer signature algorithm is not covered by the signature; X.509 requires it to
    // equal the signed copy in the TBS part, which pins every byte of it.
    if x509.signature_algorithm != x509.tbs_certificate.signature {
        return Err(cert_err(
            which,
            "its outer signature algorithm differs from the signed one in the certificate body",
        ));
    }
    Ok(Cert { sev, x509 })
}

fn check_validity(which: &str, c: &Cert, now: u64) -> Result<(), AttestError> {
    let v = &c.x509.tbs_certificate.validity;
    let nb = v.not_before.to_unix_duration().as_secs();
    let na = v.not_after.to_unix_duration().as_secs();
    if now < nb {
        return Err(cert_err(
            which,
            format!(
                "not valid before {} (verification time {})",
                rfc3339(nb),
                rfc3339(now)
            ),
        ));
    }
    if now > na {
        return Err(cert_err(
            which,
            format!(
                "expired at {} (verification time {}); fetch a current certificate from AMD's KDS",
                rfc3339(na),
                rfc3339(now)
            ),
        ));
    }
    Ok(())
}

/// `signer` signs `signee` (RSA-PSS with SHA-384, through `sev`).
fn check_signs(
    signer_name: &str,
    signer: &Cert,
    which: &str,
    signee: &Cert,
) -> Result<(), AttestError> {
    (&signer.sev, &signee.sev).verify().map_err(|e| {
        cert_err(
            which,
            format!("its signature does not verify with the {signer_name} key: {e}"),
        )
    })
}

struct Root {
    name: &'static str,
    ark: &'static [u8],
    ask: &'static [u8],
}

const ROOTS: [Root; 3] = [
    Root {
        name: "Milan",
        ark: builtin::milan::ARK,
        ask: builtin::milan::ASK,
    },
    Root {
        name: "Genoa",
        ark: builtin::genoa::ARK,
        ask: builtin::genoa::ASK,
    },
    Root {
        name: "Turin",
        ark: builtin::turin::ARK,
        ask: builtin::turin::ASK,
    },
];

fn builtin_cert(which: &str, pem: &[u8]) -> Result<Cert, AttestError> {
    let der = pem_certs(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| cert_err(which, "built-in certificate is empty"))?;
    parse_cert(which, &der)
}

/// Finds the verified chain ARK → ASK for the VEK; returns the ASK and the root's name.
fn verify_chain(
    certs: &SnpCerts,
    vek: &Cert,
    now: u64,
) -> Result<(Cert, &'static str), AttestError> {
    let ask_name = if certs.vlek { "ASVK" } else { "ASK" };
    let vek_name = if certs.vlek { "VLEK" } else { "VCEK" };
    // The root: a given ARK must be one of AMD's; otherwise every built-in root is a candidate.
    let roots: Vec<&Root> = match &certs.ark {
        Some(ark_der) => {
            let given = parse_cert("ARK", ark_der)?;
            let given_der = given
                .x509
                .to_der()
                .map_err(|e| cert_err("ARK", e.to_string()))?;
            let root = ROOTS
                .iter()
                .find(|r| {
                    builtin_cert("ARK", r.ark)
                        .ok()
                        .and_then(|c| c.x509.to_der().ok())
                        .is_some_and(|d| d == given_der && d == *ark_der)
                })
                .ok_or_else(|| {
                    cert_err(
                        "ARK",
                        "it is not one of AMD's root keys built into this verifier (Milan, Genoa, Turin)",
                    )
                })?;
            vec![root]
        }
        None => ROOTS.iter().collect(),
    };
    let mut last_err = None;
    for root in roots {
        let ark = builtin_cert("ARK", root.ark)?;
        check_signs("ARK", &ark, "ARK", &ark)?;
        check_validity("ARK", &ark, now)?;
        let ask = match &certs.ask {
            Some(d) => parse_cert(ask_name, d)?,
            None => builtin_cert(ask_name, root.ask)?,
        };
        if let Err(e) = check_signs(&format!("ARK-{}", root.name), &ark, ask_name, &ask) {
            last_err = Some(e);
            continue;
        }
        check_validity(ask_name, &ask, now)?;
        if let Err(e) = check_signs(ask_name, &ask, vek_name, vek) {
            last_err = Some(e);
            continue;
        }
        return Ok((ask, root.name));
    }
    Err(last_err.unwrap_or_else(|| cert_err(vek_name, "no AMD root signs it")))
}

const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

fn extension<'a>(c: &'a x509_cert::Certificate, oid: &str) -> Option<&'a [u8]> {
    c.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// A small DER INTEGER (the VCEK's SPL extensions).
fn der_small_int(v: &[u8]) -> Option<u8> {
    match v {
        [0x02, 1, x] if *x < 0x80 => Some(*x),
        [0x02, 2, 0, x] if *x >= 0x80 => Some(*x),
        _ => None,
    }
}

/// The TCB a VCEK or VLEK was issued for (its SPL extensions) must equal the report's
/// `reported_tcb`: AMD derives (VCEK) or provisions (VLEK) a key per TCB version, so a key
/// of an older, perhaps vulnerable, firmware must not vouch for a report that claims a newer
/// one. `which` names the certificate ("VCEK" or "VLEK") in errors.
pub fn check_tcb_extensions(
    which: &str,
    vek_der: &[u8],
    reported: &sev::firmware::host::TcbVersion,
) -> Result<(), AttestError> {
    let vek = x509_cert::Certificate::from_der(vek_der)
        .map_err(|e| cert_err(which, format!("not a DER X.509 certificate: {e}")))?;
    check_tcb_fields(which, &vek, reported)
}

fn check_tcb_fields(
    which: &str,
    vek: &x509_cert::Certificate,
    tcb: &sev::firmware::host::TcbVersion,
) -> Result<(), AttestError> {
    let mut fields = vec![
        ("bootloader", OID_BL_SPL, tcb.bootloader),
        ("tee", OID_TEE_SPL, tcb.tee),
        ("snp", OID_SNP_SPL, tcb.snp),
        ("microcode", OID_UCODE_SPL, tcb.microcode),
    ];
    if let Some(fmc) = tcb.fmc {
        fields.push(("fmc", OID_FMC_SPL, fmc));
    }
    for (name, oid, reported) in fields {
        let v = extension(vek, oid).and_then(der_small_int).ok_or_else(|| {
            cert_err(
                which,
                format!("its {name} SPL extension ({oid}) is missing or malformed"),
            )
        })?;
        if v != reported {
            return Err(cert_err(
                which,
                format!(
                    "it was issued for {name} SPL {v} but the report's reported_tcb says {reported}: the certificate does not match the TCB that signed the report"
                ),
            ));
        }
    }
    Ok(())
}

/// The VEK's binding to the report: its TCB extensions ([`check_tcb_extensions`]) for a VCEK
/// and a VLEK alike, and for a VCEK also its hardware ID, which must equal the report's chip
/// ID (a VCEK is derived for one chip; a VLEK is provisioned to a cloud provider and names no
/// chip).
fn check_vek_binding(
    vek: &Cert,
    vlek: bool,
    r: &AttestationReport,
    chip_masked: bool,
) -> Result<(), AttestError> {
    let which = if vlek { "VLEK" } else { "VCEK" };
    check_tcb_fields(which, &vek.x509, &r.reported_tcb)?;
    if !vlek && !chip_masked {
        let hw = extension(&vek.x509, OID_HW_ID)
            .ok_or_else(|| cert_err("VCEK", "its hwID extension is missing"))?;
        let chip = &r.chip_id[..];
        let ok = hw == chip || (hw.len() == 8 && chip.get(..8) == Some(hw));
        if !ok {
            return Err(cert_err(
                "VCEK",
                "its hardware ID differs from the report's chip ID: it belongs to another processor",
            ));
        }
    }
    Ok(())
}

/// The report signature (ECDSA P-384, SHA-384) over the raw bytes `[0, 0x2A0)`. The unused
/// high bytes of r and s and the rest of the signature field must be zero.
fn check_report_signature(report: &[u8], vek: &Cert) -> Result<(), AttestError> {
    let sig_err = |what: String| AttestError::Signature { kind: KIND, what };
    let field = report
        .get(SIGNED_LEN..REPORT_LEN)
        .ok_or_else(|| AttestError::malformed(KIND, "report too short for its signature"))?;
    let (r_le, rest) = field.split_at(72);
    let (s_le, tail) = rest.split_at(72);
    if r_le[48..]
        .iter()
        .chain(&s_le[48..])
        .chain(tail)
        .any(|&b| b != 0)
    {
        return Err(sig_err(
            "the report signature field has non-zero bytes outside the 48-byte r and s values"
                .into(),
        ));
    }
    let mut rs = [0u8; 96];
    for (d, s) in rs[..48].iter_mut().zip(r_le[..48].iter().rev()) {
        *d = *s;
    }
    for (d, s) in rs[48..].iter_mut().zip(s_le[..48].iter().rev()) {
        *d = *s;
    }
    let sig = p384::ecdsa::Signature::from_slice(&rs).map_err(|e| {
        sig_err(format!(
            "the report signature is not a valid P-384 signature: {e}"
        ))
    })?;
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(vek.sev.public_key_sec1())
        .map_err(|e| cert_err("VCEK", format!("its public key is not a P-384 key: {e}")))?;
    key.verify(&report[..SIGNED_LEN], &sig).map_err(|_| {
        sig_err("the report signature does not verify with the VCEK: the report (header, report data, measurement or any other signed field) or its signature was altered, or the VCEK belongs to another platform".into())
    })
}

/// Parses an SEV-SNP report with `sev` after checking its length and version.
pub fn parse_report(report: &[u8]) -> Result<AttestationReport, AttestError> {
    if report.len() != REPORT_LEN {
        return Err(AttestError::malformed(
            KIND,
            format!(
                "an SEV-SNP report has {REPORT_LEN} bytes, this one {}",
                report.len()
            ),
        ));
    }
    let version = crate::read_u32(&report[..4]);
    if !(2..=5).contains(&version) {
        return Err(AttestError::malformed(
            KIND,
            format!("header: report version {version} is not one this verifier reads (2 to 5)"),
        ));
    }
    let r = AttestationReport::from_bytes(report)
        .map_err(|e| AttestError::malformed(KIND, format!("header/body do not parse: {e}")))?;
    if r.sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(AttestError::malformed(
            KIND,
            format!(
                "header: signature algorithm {} is not ECDSA P-384/SHA-384 (1)",
                r.sig_algo
            ),
        ));
    }
    Ok(r)
}

/// Verifies an SEV-SNP report with its certificate material against the policy.
pub(crate) fn verify(
    report: &[u8],
    aux: &[u8],
    policy: &Policy,
    now: SystemTime,
) -> Result<Claims, AttestError> {
    let now = unix_secs(now);
    let r = parse_report(report)?;
    if aux.is_empty() {
        return Err(AttestError::MissingMaterial {
            kind: KIND,
            what: "VCEK certificate",
            hint: "pass --certs with the VCEK (DER or PEM, optionally followed by the ASK and ARK), fetched from AMD's KDS for this chip and TCB, or collect evidence with the host's certificate table",
        });
    }
    let certs = parse_aux(aux)?;
    let vek_der = certs.vek.as_ref().ok_or(AttestError::MissingMaterial {
        kind: KIND,
        what: "VCEK certificate",
        hint: "the certificate material has no VCEK or VLEK; add it (--certs)",
    })?;
    let vek_name = if certs.vlek { "VLEK" } else { "VCEK" };
    let vek = parse_cert(vek_name, vek_der)?;
    let (_ask, root) = verify_chain(&certs, &vek, now)?;
    check_validity(vek_name, &vek, now)?;
    // KEY_INFO.SIGNING_KEY: 0 is the VCEK, 1 the VLEK, anything else an unsigned report.
    match (r.key_info.signing_key(), certs.vlek) {
        (0, false) | (1, true) => {}
        (0, true) => {
            return Err(cert_err(
                "VLEK",
                "the report says it is signed by a VCEK, but the certificate material holds a VLEK",
            ));
        }
        (1, false) => {
            return Err(cert_err(
                "VCEK",
                "the report says it is signed by a VLEK, but the certificate material holds a VCEK",
            ));
        }
        (k, _) => {
            return Err(AttestError::Signature {
                kind: KIND,
                what: format!("the report is not signed (KEY_INFO signing key {k})"),
            });
        }
    }
    // With MaskChipId set the platform zeroes the chip ID in reports.
    let chip_masked = r.chip_id.iter().all(|&b| b == 0);
    check_vek_binding(&vek, certs.vlek, &r, chip_masked)?;
    check_report_signature(report, &vek)?;

    // Authentic from here on: the policy's SNP-specific checks.
    if r.policy.debug_allowed() && !policy.allow_debug {
        return Err(AttestError::DebugNotAllowed { kind: KIND });
    }
    let tcb_status = match &policy.snp_min_tcb {
        Some(min) => {
            let t = &r.reported_tcb;
            let mut checks = vec![
                ("bootloader", t.bootloader, min.bootloader),
                ("tee", t.tee, min.tee),
                ("snp", t.snp, min.snp),
                ("microcode", t.microcode, min.microcode),
            ];
            if let (Some(got), Some(m)) = (t.fmc, min.fmc) {
                checks.push(("fmc", got, m));
            }
            for (field, got, min) in checks {
                if got < min {
                    return Err(AttestError::TcbTooLow { field, got, min });
                }
            }
            "MeetsPolicyMinimum"
        }
        None => "NotEvaluated",
    };
    Ok(Claims {
        kind: KIND,
        measurement: r.measurement.to_vec(),
        report_data: r.report_data,
        tcb_status: tcb_status.into(),
        advisories: Vec::new(),
        simulated: false,
        platform: if chip_masked {
            format!("masked ({root})")
        } else {
            hex::encode(r.chip_id)
        },
        rtmrs: Vec::new(),
    })
}
