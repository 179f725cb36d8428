//! Every real sample in ../shared/data verifies at its pinned time with the status its
//! SOURCES.md gives; expired collateral is refused with a message naming expiry.
// The tests change one policy field at a time on purpose.
#![allow(clippy::field_reassign_with_default)]

mod common;

use common::*;
use tessera_attest::cli::{VerifyArgs, verify_cmd};
use tessera_attest::{
    AttestError, Evidence, Policy, SessionBinding, TeeKind, check_session_binding, describe,
    session_report_data, verify, verify_session,
};

fn dcap_evidence(s: &DcapSample) -> Evidence {
    Evidence {
        kind: s.kind,
        report: s.quote.clone(),
        aux: s.collateral.clone(),
    }
}

#[test]
fn dcap_samples_verify_with_their_documented_status() {
    let Some(samples) = dcap_samples() else {
        return;
    };
    for s in &samples {
        if s.name == "tdx_quote_outdated" {
            // Its platform TCB is below every level of the TCB info (eval #18) that comes
            // with it, so no status applies and the quote is refused (upstream accepts it
            // only with a TCB-info override, which tessera does not offer).
            let err = verify(&dcap_evidence(s), &permissive(), s.at).unwrap_err();
            eprintln!("{}: {err}", s.name);
            assert!(matches!(err, AttestError::Quote { .. }), "{err}");
            assert!(
                err.to_string().contains("No matching TCB level found"),
                "{err}"
            );
            continue;
        }
        let c = verify(&dcap_evidence(s), &permissive(), s.at)
            .unwrap_or_else(|e| panic!("{} does not verify: {e}", s.name));
        eprintln!(
            "{}: {} {:?} | {}",
            s.name,
            c.tcb_status,
            c.advisories,
            describe(&c)
        );
        assert_eq!(c.kind, s.kind);
        assert!(!c.simulated);
        match s.name {
            "sgx_quote" => {
                assert_eq!(c.tcb_status, "ConfigurationAndSWHardeningNeeded");
                assert_eq!(c.advisories, ["INTEL-SA-00289", "INTEL-SA-00615"]);
                assert_eq!(c.measurement.len(), 32);
            }
            "tdx_quote" => {
                assert_eq!(c.tcb_status, "UpToDate");
                assert!(c.advisories.is_empty());
                assert_eq!(c.measurement.len(), 48);
            }
            _ => unreachable!(),
        }
        assert_eq!(c.platform.len(), 12, "FMSPC is 6 bytes");
    }
}

#[test]
fn snp_milan_report_verifies_with_vcek_and_chain() {
    let Some(s) = snp_sample() else { return };
    let c = verify(&s.evidence(), &Policy::default(), snp_time()).expect("milan report verifies");
    eprintln!("{}", describe(&c));
    assert_eq!(
        hex::encode(&c.measurement),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );
    assert_eq!(c.kind, TeeKind::SevSnp);
    assert_eq!(c.tcb_status, "NotEvaluated");
    assert_eq!(c.platform.len(), 128);
    // The built-in ASK and ARK suffice when only the VCEK comes with the report.
    let only_vcek = Evidence {
        aux: tessera_attest::snp::build_cert_table(&[(
            tessera_attest::snp::CertRole::Vcek,
            s.vcek.clone(),
        )]),
        ..s.evidence()
    };
    assert_eq!(
        verify(&only_vcek, &Policy::default(), snp_time()).expect("vcek only"),
        c
    );
    // Encoded container round trip.
    let e = s.evidence();
    assert_eq!(Evidence::decode(&e.encode()).expect("decodes"), e);
}

#[test]
fn snp_policy_checks_measurement_and_minimum_tcb() {
    let Some(s) = snp_sample() else { return };
    let e = s.evidence();
    let mut p = Policy::default();
    p.measurements = vec!["7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f".into()];
    p.snp_min_tcb = Some(tessera_attest::SnpMinTcb {
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: None,
    });
    let c = verify(&e, &p, snp_time()).expect("meets the minimum");
    assert_eq!(c.tcb_status, "MeetsPolicyMinimum");
    p.snp_min_tcb = Some(tessera_attest::SnpMinTcb {
        microcode: 200,
        ..tessera_attest::SnpMinTcb::default()
    });
    let err = verify(&e, &p, snp_time()).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::TcbTooLow {
                field: "microcode",
                got: 115,
                min: 200
            }
        ),
        "{err}"
    );
    p.snp_min_tcb = None;
    p.measurements = vec!["00".repeat(48)];
    let err = verify(&e, &p, snp_time()).unwrap_err();
    assert!(err.to_string().contains("measurement"), "{err}");
    let mut p = Policy::default();
    p.report_data = Some("11".repeat(64));
    let err = verify(&e, &p, snp_time()).unwrap_err();
    assert!(matches!(err, AttestError::ReportDataMismatch), "{err}");
    let mut p = Policy::default();
    p.allowed_kinds = vec![TeeKind::Tdx];
    assert!(matches!(
        verify(&e, &p, snp_time()),
        Err(AttestError::KindNotAllowed { .. })
    ));
}

#[test]
fn dcap_default_policy_enforces_status_and_advisories() {
    let Some(samples) = dcap_samples() else {
        return;
    };
    let sgx = &samples[0];
    let err = verify(&dcap_evidence(sgx), &Policy::default(), sgx.at).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("ConfigurationAndSWHardeningNeeded") && msg.contains("INTEL-SA-00615"),
        "{msg}"
    );
    let mut p = permissive();
    p.rejected_advisories = vec!["INTEL-SA-00615".into()];
    let err = verify(&dcap_evidence(sgx), &p, sgx.at).unwrap_err();
    assert!(
        matches!(err, AttestError::AdvisoryRejected(ref a) if a == "INTEL-SA-00615"),
        "{err}"
    );
    let tdx = &samples[1];
    verify(&dcap_evidence(tdx), &Policy::default(), tdx.at)
        .expect("UpToDate passes the default policy");
}

#[test]
fn expired_collateral_is_refused_naming_expiry() {
    let Some(samples) = dcap_samples() else {
        return;
    };
    for s in &samples {
        let err = verify(
            &dcap_evidence(s),
            &permissive(),
            std::time::SystemTime::now(),
        )
        .unwrap_err();
        let msg = err.to_string();
        eprintln!("{}: {msg}", s.name);
        assert!(
            matches!(err, AttestError::CollateralExpired { .. }),
            "{}: {msg}",
            s.name
        );
        assert!(msg.contains("expired"), "{msg}");
        // And before the window opens: not yet valid.
        let err = verify(&dcap_evidence(s), &permissive(), secs(1_600_000_000)).unwrap_err();
        assert!(
            matches!(err, AttestError::CollateralNotYetValid { .. }),
            "{}: {err}",
            s.name
        );
    }
}

#[test]
fn cli_verifies_raw_files_with_sidecars() {
    let (Some(dcap), Some(snp)) = (dcap_dir(), snp_dir()) else {
        return;
    };
    let c = verify_cmd(&VerifyArgs {
        evidence: dcap.join("tdx_quote"),
        collateral: Some(dcap.join("tdx_quote_collateral.json")),
        at: Some("2025-07-19T10:00:34Z".into()),
        ..VerifyArgs::default()
    })
    .expect("tdx via cli");
    assert_eq!(c.kind, TeeKind::Tdx);
    // SGX without a policy: the strict default refuses its status.
    let err = verify_cmd(&VerifyArgs {
        evidence: dcap.join("sgx_quote"),
        collateral: Some(dcap.join("sgx_quote_collateral.json")),
        at: Some("1752919277".into()),
        ..VerifyArgs::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, AttestError::TcbStatusRejected { .. }),
        "{err}"
    );
    // Missing collateral is named.
    let err = verify_cmd(&VerifyArgs {
        evidence: dcap.join("sgx_quote"),
        ..VerifyArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--collateral"), "{err}");
    // SNP: the raw report, the hex report, with the VCEK alone or a directory of certs.
    for report in ["report_milan.bin", "report_milan.hex"] {
        let c = verify_cmd(&VerifyArgs {
            evidence: snp.join(report),
            certs: Some(snp.join("vcek_milan.der")),
            at: Some("2026-11-20T00:00:00Z".into()),
            ..VerifyArgs::default()
        })
        .unwrap_or_else(|e| panic!("{report}: {e}"));
        assert_eq!(c.kind, TeeKind::SevSnp);
    }
    let dir = std::env::temp_dir().join(format!("tessera-attest-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(snp.join("vcek_milan.der"), dir.join("vcek.der")).unwrap();
    std::fs::copy(snp.join("cert_chain_milan"), dir.join("chain.pem")).unwrap();
    let c = verify_cmd(&VerifyArgs {
        evidence: snp.join("report_milan.bin"),
        certs: Some(dir.clone()),
        at: Some("2026-11-20T00:00:00Z".into()),
        ..VerifyArgs::default()
    })
    .expect("snp with a cert directory");
    assert_eq!(c.kind, TeeKind::SevSnp);
    // The Turin VCEK does not sign a Milan report.
    std::fs::copy(snp.join("vcek_turin.der"), dir.join("vcek.der")).unwrap();
    let err = verify_cmd(&VerifyArgs {
        evidence: snp.join("report_milan.bin"),
        certs: Some(dir.clone()),
        at: Some("2026-11-20T00:00:00Z".into()),
        ..VerifyArgs::default()
    })
    .unwrap_err();
    eprintln!("turin vcek: {err}");
    assert!(err.to_string().contains("certificate VCEK"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
    // Missing certs are named.
    let err = verify_cmd(&VerifyArgs {
        evidence: snp.join("report_milan.bin"),
        ..VerifyArgs::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("--certs"), "{err}");
}

/// The Intel root CA in ../shared/data, with its key replaced by one the test holds and
/// re-signed with it: a self-signed certificate with Intel's name that is not Intel's root.
fn impostor_root(intel_der: &[u8], want_len: usize) -> Vec<u8> {
    use p256::ecdsa::signature::Signer as _;
    use x509_cert::der::{Decode, Encode};
    for seed in 1u8..=255 {
        let mut c = x509_cert::Certificate::from_der(intel_der).expect("the root parses");
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("a scalar");
        let point = sk.verifying_key().to_encoded_point(false);
        c.tbs_certificate.subject_public_key_info.subject_public_key =
            x509_cert::der::asn1::BitString::from_bytes(point.as_bytes()).expect("bit string");
        let tbs = c.tbs_certificate.to_der().expect("tbs encodes");
        let sig: p256::ecdsa::Signature = sk.sign(&tbs);
        c.signature = x509_cert::der::asn1::BitString::from_bytes(sig.to_der().as_bytes())
            .expect("bit string");
        let der = c.to_der().expect("encodes");
        if der.len() == want_len {
            return der;
        }
    }
    panic!("no impostor of the same length");
}

/// The root that ends the quote's PCK chain must be Intel's: a quote whose chain ends in a
/// self-signed impostor with Intel's name (every other byte genuine) is refused for exactly
/// that reason.
#[test]
fn intel_root_in_shared_data_is_the_one_the_verifier_pins() {
    use x509_cert::der::{Decode, EncodePem};
    let (Some(dir), Some(samples)) = (dcap_dir(), dcap_samples()) else {
        return;
    };
    let der = std::fs::read(dir.join("Intel_SGX_Provisioning_Certification_RootCA.der")).unwrap();
    let root = x509_cert::Certificate::from_der(&der).unwrap();
    let pem = root
        .to_pem(x509_cert::der::pem::LineEnding::LF)
        .unwrap()
        .into_bytes();
    let fake = x509_cert::Certificate::from_der(&impostor_root(&der, der.len()))
        .unwrap()
        .to_pem(x509_cert::der::pem::LineEnding::LF)
        .unwrap()
        .into_bytes();
    assert_eq!(fake.len(), pem.len());
    for s in samples.iter().filter(|s| s.name != "tdx_quote_outdated") {
        let at = s
            .quote
            .windows(pem.len())
            .rposition(|w| w == pem.as_slice())
            .unwrap_or_else(|| panic!("{}: the quote's PCK chain ends in the shared root", s.name));
        let ok = verify(&dcap_evidence(s), &permissive(), s.at);
        assert!(ok.is_ok(), "{}: {ok:?}", s.name);
        let mut q = s.quote.clone();
        q[at..at + pem.len()].copy_from_slice(&fake);
        let e = Evidence {
            report: q,
            ..dcap_evidence(s)
        };
        let err = verify(&e, &permissive(), s.at).unwrap_err();
        eprintln!("{}: {err}", s.name);
        assert!(
            matches!(err, AttestError::Certificate { ref reason, .. } if reason.contains("not Intel's SGX root CA")),
            "{}: {err}",
            s.name
        );
    }
}

/// A real-TEE policy without measurements is refused for an enclave session, naming the key
/// to add and where the value comes from.
#[test]
fn session_policy_for_a_real_tee_must_pin_measurements() {
    let Some(s) = snp_sample() else { return };
    let binding = SessionBinding {
        nonce: b"nonce",
        cert: b"cert",
        app_measurement: &[1; 48],
        key_binding: &[],
    };
    let mut p = Policy::default();
    let err = verify_session(&s.evidence(), &p, snp_time(), &binding).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::MeasurementRequired {
                kind: TeeKind::SevSnp,
                missing: "app_measurements"
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("tessera enclave --measure-only"),
        "{err}"
    );
    p.app_measurements = vec!["01".repeat(48)];
    let err = verify_session(&s.evidence(), &p, snp_time(), &binding).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::MeasurementRequired {
                missing: "measurements",
                ..
            }
        ),
        "{err}"
    );
    // Pinned: verification runs, and the sample's report data binds no tessera session.
    p.measurements = vec![SNP_MEASUREMENT.into()];
    let err = verify_session(&s.evidence(), &p, snp_time(), &binding).unwrap_err();
    assert!(matches!(err, AttestError::ReportDataMismatch), "{err}");
    // TDX needs RTMR0-2 as well.
    let Some(samples) = dcap_samples() else {
        return;
    };
    let tdx = &samples[1];
    let mut p = permissive();
    p.app_measurements = vec!["01".repeat(48)];
    p.measurements = vec!["00".repeat(48)];
    let err = verify_session(&dcap_evidence(tdx), &p, tdx.at, &binding).unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::MeasurementRequired {
                kind: TeeKind::Tdx,
                missing: "tdx_rtmrs"
            }
        ),
        "{err}"
    );
}

const SNP_MEASUREMENT: &str = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";

/// The binding check on genuine SEV-SNP claims whose report data a guest on the right
/// platform computed for another application measurement (the sample cannot be re-signed,
/// so the check that `verify_session` runs on the parsed report data is called directly).
#[test]
fn snp_binding_refuses_another_application_measurement() {
    let Some(s) = snp_sample() else { return };
    let mut p = Policy::default();
    p.measurements = vec![SNP_MEASUREMENT.into()];
    let right = [0x11u8; 48];
    let wrong = [0x22u8; 48];
    p.app_measurements = vec![hex::encode(right)];
    let mut claims = verify(&s.evidence(), &p, snp_time()).expect("genuine");
    let (nonce, cert) = (&b"fresh nonce"[..], &b"enclave certificate"[..]);
    // The guest binds the application it really runs, and says so: refused by the policy.
    claims.report_data = session_report_data(nonce, cert, &wrong);
    let b = SessionBinding {
        nonce,
        cert,
        app_measurement: &wrong,
        key_binding: &[],
    };
    let err = check_session_binding(&claims, &p, &b).unwrap_err();
    assert!(
        matches!(err, AttestError::AppMeasurementMismatch { ref got, .. } if *got == hex::encode(wrong)),
        "{err}"
    );
    // It claims the expected one beside evidence that binds another: not this session's.
    let b = SessionBinding {
        nonce,
        cert,
        app_measurement: &right,
        key_binding: &[],
    };
    let err = check_session_binding(&claims, &p, &b).unwrap_err();
    assert!(matches!(err, AttestError::ReportDataMismatch), "{err}");
    // The right application, bound honestly, passes.
    claims.report_data = session_report_data(nonce, cert, &right);
    check_session_binding(&claims, &p, &b).expect("the expected application");
    // A key the enclave generated is bound too: evidence binding one key vouches for no other.
    claims.report_data =
        tessera_attest::session_report_data_with_key(nonce, cert, &right, b"key A");
    let kb = SessionBinding {
        key_binding: b"key B",
        ..b
    };
    let err = check_session_binding(&claims, &p, &kb).unwrap_err();
    assert!(matches!(err, AttestError::ReportDataMismatch), "{err}");
    let ka = SessionBinding {
        key_binding: b"key A",
        ..b
    };
    check_session_binding(&claims, &p, &ka).expect("the bound key");
    // Nonce, certificate and measurement are each length-delimited and domain-separated.
    assert_ne!(
        session_report_data(b"ab", b"c", &right),
        session_report_data(b"a", b"bc", &right)
    );
    assert_ne!(
        session_report_data(nonce, cert, &right),
        tessera_attest::report_data(nonce, cert)
    );
}

/// TDX: the policy's RTMRs are compared with the quote's.
#[test]
fn tdx_rtmrs_are_checked_as_the_policy_names_them() {
    let Some(samples) = dcap_samples() else {
        return;
    };
    let tdx = &samples[1];
    let c = verify(&dcap_evidence(tdx), &permissive(), tdx.at).expect("genuine");
    assert_eq!(c.rtmrs.len(), 4);
    let mut p = permissive();
    p.measurements = vec![hex::encode(&c.measurement)];
    p.tdx_rtmrs = Some([
        Some(hex::encode(&c.rtmrs[0])),
        Some(hex::encode(&c.rtmrs[1])),
        Some(hex::encode(&c.rtmrs[2])),
        None,
    ]);
    verify(&dcap_evidence(tdx), &p, tdx.at).expect("MRTD and RTMR0-2 as pinned");
    for i in 0..4 {
        let mut q = p.clone();
        let mut bad = c.rtmrs[i].clone();
        bad[0] ^= 1;
        if let Some(r) = q.tdx_rtmrs.as_mut() {
            r[i] = Some(hex::encode(&bad));
        }
        let err = verify(&dcap_evidence(tdx), &q, tdx.at).unwrap_err();
        assert!(
            matches!(err, AttestError::RtmrMismatch { index, .. } if index == i),
            "RTMR{i}: {err}"
        );
    }
}

/// A VLEK's TCB extensions must match the report's reported TCB, as a VCEK's do. No VLEK
/// sample exists, so the Milan VCEK plays one: the report says it is VLEK-signed (KEY_INFO)
/// and claims a newer microcode; the chain and key-kind checks pass, and the TCB check must
/// stop it before the report signature (which the edits break) is looked at.
#[test]
fn vlek_tcb_extensions_must_match_the_reported_tcb() {
    use tessera_attest::snp::{CertRole, build_cert_table, check_tcb_extensions, parse_report};
    let Some(s) = snp_sample() else { return };
    let tcb = parse_report(&s.report).expect("parses").reported_tcb;
    check_tcb_extensions("VLEK", &s.vcek, &tcb).expect("the VCEK's own TCB");
    let mut newer = tcb;
    newer.microcode += 1;
    let err = check_tcb_extensions("VLEK", &s.vcek, &newer).unwrap_err();
    assert!(
        matches!(err, AttestError::Certificate { ref which, ref reason, .. } if which == "VLEK" && reason.contains("microcode")),
        "{err}"
    );
    // Through the verifier.
    const KEY_INFO: usize = 0x48;
    const REPORTED_TCB_MICROCODE: usize = 0x180 + 7;
    let mut report = s.report.clone();
    report[KEY_INFO] = (report[KEY_INFO] & !0b11100) | (1 << 2);
    report[REPORTED_TCB_MICROCODE] += 1;
    assert_eq!(
        parse_report(&report).unwrap().reported_tcb.microcode,
        newer.microcode
    );
    let e = Evidence {
        kind: TeeKind::SevSnp,
        report,
        aux: build_cert_table(&[
            (CertRole::Vlek, s.vcek.clone()),
            (CertRole::Ask, s.ask.clone()),
            (CertRole::Ark, s.ark.clone()),
        ]),
    };
    let err = verify(&e, &Policy::default(), snp_time()).unwrap_err();
    assert!(
        matches!(err, AttestError::Certificate { ref which, ref reason, .. } if which == "VLEK" && reason.contains("reported_tcb")),
        "{err}"
    );
}
