//! A flipped byte anywhere in a report, quote, signature, certificate or collateral is
//! rejected, with a message that names what failed. Offsets are sampled evenly in every
//! region (first and last byte included) and flipped with two masks.

mod common;

use std::collections::BTreeMap;
use std::ops::Range;

use common::*;
use tessera_attest::snp::{CertRole, build_cert_table};
use tessera_attest::{Evidence, Policy, TeeKind, verify};

/// At most `n` offsets spread over `r`, always including its ends.
fn sample(r: &Range<usize>, n: usize) -> Vec<usize> {
    let len = r.end - r.start;
    if len <= n {
        return r.clone().collect();
    }
    let mut v: Vec<usize> = (0..n).map(|i| r.start + i * (len - 1) / (n - 1)).collect();
    v.dedup();
    v
}

/// Flips each sampled byte of `region` in a copy of `bytes`, runs `check`, and asserts every
/// copy is rejected with a message containing one of `names`. Returns the distinct messages.
fn flip_region(
    what: &str,
    bytes: &[u8],
    region: Range<usize>,
    names: &[&str],
    masks: &[u8],
    per_region: usize,
    check: &dyn Fn(&[u8]) -> Result<(), String>,
) -> usize {
    assert!(
        region.end <= bytes.len() && region.start < region.end,
        "{what}: bad region {region:?}"
    );
    let mut seen = BTreeMap::new();
    for off in sample(&region, per_region) {
        for &m in masks {
            let mut b = bytes.to_vec();
            b[off] ^= m;
            match check(&b) {
                Ok(()) => panic!("{what}: flipping byte {off} with mask {m:#04x} was NOT detected"),
                Err(msg) => {
                    assert!(
                        names.iter().any(|n| msg.contains(n)),
                        "{what}: flipping byte {off} gave a message naming none of {names:?}: {msg}"
                    );
                    seen.entry(first_words(&msg)).or_insert(off);
                }
            }
        }
    }
    eprintln!(
        "{what}: {} kinds of rejection: {:?}",
        seen.len(),
        seen.keys().collect::<Vec<_>>()
    );
    seen.len()
}

fn first_words(m: &str) -> String {
    m.chars().take(90).collect()
}

#[test]
fn snp_every_region_of_report_and_certificates() {
    let Some(s) = snp_sample() else { return };
    let now = snp_time();
    let policy = Policy::default();
    verify(&s.evidence(), &policy, now).expect("the untouched sample verifies");

    let report_check = |b: &[u8]| -> Result<(), String> {
        let e = Evidence {
            report: b.to_vec(),
            ..s.evidence()
        };
        verify(&e, &policy, now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let r = &s.report;
    let masks = [0x01, 0x80];
    flip_region(
        "snp header",
        r,
        0x00..0x50,
        &["header", "signature", "KEY_INFO", "VLEK"],
        &masks,
        40,
        &report_check,
    );
    flip_region(
        "snp report data",
        r,
        0x50..0x90,
        &["report signature"],
        &masks,
        24,
        &report_check,
    );
    flip_region(
        "snp measurement",
        r,
        0x90..0xC0,
        &["report signature"],
        &masks,
        24,
        &report_check,
    );
    flip_region(
        "snp body",
        r,
        0xC0..0x2A0,
        &["report signature", "certificate VCEK", "header/body"],
        &masks,
        60,
        &report_check,
    );
    flip_region(
        "snp signature",
        r,
        0x2A0..0x4A0,
        &["signature"],
        &masks,
        60,
        &report_check,
    );

    // Certificates, each in its own table: flip inside each DER.
    let table = s.table();
    let aux_check = |b: &[u8]| -> Result<(), String> {
        let e = Evidence {
            aux: b.to_vec(),
            ..s.evidence()
        };
        verify(&e, &policy, now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let header_len = 4 * 24;
    let vcek = header_len..header_len + s.vcek.len();
    let ask = vcek.end..vcek.end + s.ask.len();
    let ark = ask.end..ask.end + s.ark.len();
    assert_eq!(ark.end, table.len());
    flip_region(
        "snp cert table",
        &table,
        0..header_len,
        &["certificate table", "certificate"],
        &masks,
        40,
        &aux_check,
    );
    flip_region(
        "snp VCEK",
        &table,
        vcek,
        &["certificate VCEK"],
        &masks,
        60,
        &aux_check,
    );
    flip_region(
        "snp ASK",
        &table,
        ask,
        &["certificate ASK"],
        &masks,
        60,
        &aux_check,
    );
    flip_region(
        "snp ARK",
        &table,
        ark,
        &["certificate ARK"],
        &masks,
        60,
        &aux_check,
    );

    // Zero padding after the certificates is allowed, but a flipped padding byte is not.
    let mut padded = table.clone();
    padded.extend_from_slice(&[0u8; 32]);
    aux_check(&padded).expect("zero padding is fine");
    let end = padded.len();
    flip_region(
        "snp table padding",
        &padded,
        table.len()..end,
        &["zero padding"],
        &[0x01],
        8,
        &aux_check,
    );

    // A VCEK alone (built-in ASK/ARK) still catches flips in it.
    let only = build_cert_table(&[(CertRole::Vcek, s.vcek.clone())]);
    let v = 48..48 + s.vcek.len();
    flip_region(
        "snp VCEK (built-in chain)",
        &only,
        v,
        &["certificate VCEK"],
        &[0x01],
        40,
        &aux_check,
    );
}

/// Byte ranges of a DCAP quote's parts.
struct QuoteLayout {
    header: Range<usize>,
    body: Range<usize>,
    report_data: Range<usize>,
    measurement: Range<usize>,
    auth_len: Range<usize>,
    quote_sig: Range<usize>,
    att_key: Range<usize>,
    qe_report: Range<usize>,
    qe_sig: Range<usize>,
    qe_auth: Range<usize>,
    pem: Range<usize>,
    padding: Range<usize>,
}

fn u16le(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes([b[o], b[o + 1]]) as usize
}
fn u32le(b: &[u8], o: usize) -> usize {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize
}

fn layout(q: &[u8], kind: TeeKind) -> QuoteLayout {
    let version = u16le(q, 0);
    let mut p = 48;
    if version == 5 {
        p += 6;
    }
    let body_len = if kind == TeeKind::Sgx {
        384
    } else if version == 5 {
        u32le(q, 50)
    } else {
        584
    };
    let body = p..p + body_len;
    let (rd, meas) = if kind == TeeKind::Sgx {
        (
            body.start + 320..body.start + 384,
            body.start + 64..body.start + 96,
        )
    } else {
        (body.end - 64..body.end, body.start + 136..body.start + 184)
    };
    p = body.end;
    let auth_len = p..p + 4;
    let auth_end = auth_len.end + u32le(q, p);
    p += 4;
    let quote_sig = p..p + 64;
    let att_key = p + 64..p + 128;
    p += 128;
    if version >= 4 {
        p += 6; // certification data type 6 and its length
    }
    let qe_report = p..p + 384;
    let qe_sig = p + 384..p + 448;
    p += 448;
    let qe_auth = p..p + 2 + u16le(q, p);
    p = qe_auth.end + 6; // certification data type 5 and its length
    let pem = p..auth_end;
    QuoteLayout {
        header: 0..48,
        body,
        report_data: rd,
        measurement: meas,
        auth_len,
        quote_sig,
        att_key,
        qe_report,
        qe_sig,
        qe_auth,
        pem,
        padding: auth_end..q.len(),
    }
}

#[test]
fn dcap_every_region_of_quote_and_collateral() {
    let Some(samples) = dcap_samples() else {
        return;
    };
    for s in samples.iter().filter(|s| s.name != "tdx_quote_outdated") {
        let policy = permissive();
        let base = Evidence {
            kind: s.kind,
            report: s.quote.clone(),
            aux: s.collateral.clone(),
        };
        verify(&base, &policy, s.at).expect("the untouched sample verifies");
        let quote_check = |b: &[u8]| -> Result<(), String> {
            let e = Evidence {
                report: b.to_vec(),
                ..base.clone()
            };
            verify(&e, &policy, s.at)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let l = layout(&s.quote, s.kind);
        let q = &s.quote;
        let n = |x: &str| format!("{} {x}", s.name);
        let masks = [0x01, 0x80];
        let any_quote = [
            "quote",
            "header",
            "signature",
            "Signature",
            "QE",
            "TCB",
            "certificate",
        ];
        flip_region(
            &n("header"),
            q,
            l.header.clone(),
            &any_quote,
            &masks,
            48,
            &quote_check,
        );
        flip_region(
            &n("body"),
            q,
            l.body.clone(),
            &[
                "signature",
                "Signature",
                "TCB",
                "debug",
                "Debug",
                "attribute",
            ],
            &masks,
            60,
            &quote_check,
        );
        flip_region(
            &n("report data"),
            q,
            l.report_data.clone(),
            &["signature", "Signature"],
            &masks,
            24,
            &quote_check,
        );
        flip_region(
            &n("measurement"),
            q,
            l.measurement.clone(),
            &["signature", "Signature"],
            &masks,
            24,
            &quote_check,
        );
        flip_region(
            &n("auth data length"),
            q,
            l.auth_len.clone(),
            &["quote", "parse", "decode"],
            &masks,
            4,
            &quote_check,
        );
        flip_region(
            &n("quote signature"),
            q,
            l.quote_sig.clone(),
            &["signature", "Signature"],
            &masks,
            24,
            &quote_check,
        );
        flip_region(
            &n("attestation key"),
            q,
            l.att_key.clone(),
            &["signature", "Signature", "QE", "key", "hash"],
            &masks,
            24,
            &quote_check,
        );
        flip_region(
            &n("QE report"),
            q,
            l.qe_report.clone(),
            &["QE", "signature", "Signature"],
            &masks,
            48,
            &quote_check,
        );
        flip_region(
            &n("QE report signature"),
            q,
            l.qe_sig.clone(),
            &["QE", "signature", "Signature"],
            &masks,
            24,
            &quote_check,
        );
        flip_region(
            &n("QE auth data"),
            q,
            l.qe_auth.clone(),
            &["QE", "quote", "hash", "parse", "decode"],
            &masks,
            24,
            &quote_check,
        );
        flip_region(
            &n("PCK chain"),
            q,
            l.pem.clone(),
            &["cert", "Cert", "PCK", "chain", "quote"],
            &[0x01],
            72,
            &quote_check,
        );
        if !l.padding.is_empty() {
            flip_region(
                &n("padding"),
                q,
                l.padding.clone(),
                &["zero padding"],
                &[0x01],
                16,
                &quote_check,
            );
        }

        // Collateral: flip inside the value of every field of the JSON.
        let coll_check = |b: &[u8]| -> Result<(), String> {
            let e = Evidence {
                aux: b.to_vec(),
                ..base.clone()
            };
            verify(&e, &policy, s.at)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let text = &s.collateral;
        let fields: [(&str, &[&str]); 9] = [
            (
                "pck_crl_issuer_chain",
                &["collateral", "cert", "Cert", "CRL", "crl", "chain"],
            ),
            ("root_ca_crl", &["collateral", "CRL", "crl"]),
            ("pck_crl", &["collateral", "CRL", "crl"]),
            (
                "tcb_info_issuer_chain",
                &["collateral", "cert", "Cert", "TCB", "chain"],
            ),
            ("tcb_info", &["collateral", "TCB", "Tcb", "tcb"]),
            (
                "tcb_info_signature",
                &["collateral", "TCB", "Tcb", "signature"],
            ),
            (
                "qe_identity_issuer_chain",
                &["collateral", "cert", "Cert", "QE", "chain"],
            ),
            (
                "qe_identity",
                &["collateral", "QE", "Qe", "identity", "Identity"],
            ),
            (
                "qe_identity_signature",
                &["collateral", "QE", "Qe", "identity", "signature"],
            ),
        ];
        for (key, names) in fields {
            let r = json_value_range(text, key);
            flip_region(
                &n(&format!("collateral {key}")),
                text,
                r,
                names,
                &[0x01],
                28,
                &coll_check,
            );
        }
        // And the JSON structure itself (keys, quotes, commas).
        flip_region(
            &n("collateral JSON structure"),
            text,
            0..24,
            &["collateral"],
            &[0x01],
            24,
            &coll_check,
        );
    }
}

/// The byte range of the string value of `key` in a flat JSON object (without the quotes).
fn json_value_range(text: &[u8], key: &str) -> Range<usize> {
    let pat = format!("\"{key}\"");
    let at = text
        .windows(pat.len())
        .position(|w| w == pat.as_bytes())
        .expect("key present");
    let mut i = at + pat.len();
    while text[i] != b'"' {
        i += 1;
    }
    let start = i + 1;
    let mut j = start;
    while text[j] != b'"' {
        if text[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    start..j
}
