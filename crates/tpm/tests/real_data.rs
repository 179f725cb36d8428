//! Real data: IBM TSS IMA logs with their known PCR 10 values, and a GCP Shielded VM quote.

use base64::Engine;
use tessera_tpm::tpm2::Attested;
use tessera_tpm::{
    Attest, HashAlg, IMA_PCR, ImaEvent, ImaLog, PcrValues, PublicArea, TpmError, TpmSignature,
};

fn read(rel: &str) -> Option<Vec<u8>> {
    let path = tessera_data::shared_data(rel)?;
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The four PCR 10 lines of imakvtpcr10.txt (" PCR 10: 9b e6 …"), in file order sha1..sha512.
fn known_pcr10() -> Option<Vec<Vec<u8>>> {
    let text = String::from_utf8(read("ima-tpm/ibmtss/imakvtpcr10.txt")?).unwrap();
    Some(
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("PCR 10:"))
            .map(|hexes| hex::decode(hexes.split_whitespace().collect::<String>()).unwrap())
            .collect(),
    )
}

#[test]
fn ibmtss_logs_replay_to_known_pcr10_for_all_four_banks() {
    let Some(known) = known_pcr10() else { return };
    assert_eq!(known.len(), 4);
    for (alg, expected) in HashAlg::ALL.into_iter().zip(&known) {
        let Some(bytes) = read(&format!("ima-tpm/ibmtss/{}.log", alg.name())) else {
            return;
        };
        let log = ImaLog::parse(&bytes, alg).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(log.entries().len(), 362, "{alg}");
        log.check_template_hashes()
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(&log.replay(IMA_PCR, alg), expected, "{alg} replay");
        assert_eq!(log.replay_to(IMA_PCR, alg, expected), Some(362));
        // The template-hash size is found without being told.
        assert_eq!(ImaLog::parse_any(&bytes).unwrap().template_hash_alg(), alg);
        // Writing the log back gives the same bytes.
        assert_eq!(log.to_bytes(), bytes, "{alg} re-encoding");

        let first = &log.entries()[0];
        assert_eq!(first.template_name, "ima-sig");
        assert_eq!(first.path(), Some(&b"boot_aggregate"[..]));
        let signed = log
            .entries()
            .iter()
            .filter(|e| {
                matches!(
                    &e.event,
                    ImaEvent::File {
                        signature: Some(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(signed, 21, "{alg} signed entries");
        assert!(
            log.entries()
                .iter()
                .all(|e| e.digest().and_then(|d| d.hash_alg()) == Some(HashAlg::Sha256))
        );
    }
    assert_eq!(
        hex::encode(&known[0]),
        "9be6bac02bf18d09d17e726c2df00bca4e8831ea"
    );
    assert_eq!(
        hex::encode(&known[1]),
        "7fac48c81837d6d29046008aef0cdad8c2745cc98c3340cbba9bfdf39b4124b8"
    );
}

#[test]
fn ibmtss_log_tampering_is_caught() {
    let Some(bytes) = read("ima-tpm/ibmtss/sha256.log") else {
        return;
    };
    let Some(known) = known_pcr10() else { return };
    let log = ImaLog::parse(&bytes, HashAlg::Sha256).unwrap();
    // Change one byte of a file path in the middle of the log.
    let target = log.entries()[100].path().unwrap().to_vec();
    let at = bytes
        .windows(target.len())
        .position(|w| w == target.as_slice())
        .unwrap();
    let mut tampered = bytes.clone();
    tampered[at + 1] ^= 0x20;
    let bad = ImaLog::parse(&tampered, HashAlg::Sha256).unwrap();
    let err = bad.check_template_hashes().unwrap_err();
    assert!(err.to_string().contains("tampered"), "{err}");
    // Dropping an entry breaks the replay.
    let mut shorter = ImaLog::new(HashAlg::Sha256);
    for (i, e) in log.entries().iter().enumerate() {
        if i != 200 {
            shorter.push(e.clone());
        }
    }
    assert_eq!(shorter.replay_to(IMA_PCR, HashAlg::Sha256, &known[1]), None);
    // Every truncation is an error, never a panic.
    for cut in (0..bytes.len()).step_by(97) {
        let _ = ImaLog::parse(&bytes[..cut], HashAlg::Sha256);
    }
}

#[test]
fn ibmtss_custom_templates_parse() {
    let Some(bytes) = read("ima-tpm/ibmtss/imatest.log") else {
        return;
    };
    let log = ImaLog::parse(&bytes, HashAlg::Sha1).unwrap();
    assert!(log.entries().len() >= 5);
    let names: Vec<&str> = log
        .entries()
        .iter()
        .map(|e| e.template_name.as_str())
        .collect();
    assert!(names.contains(&"d-ng|sig"), "{names:?}");
    assert!(names.contains(&"ima"), "{names:?}");
    assert!(names.contains(&"ima-ng"), "{names:?}");
    // The SHA-1 replay runs over custom templates and the ima template alike.
    assert_eq!(log.replay(IMA_PCR, HashAlg::Sha1).len(), 20);
}

struct GcpDump {
    ak: Vec<u8>,
    create_attestation: Vec<u8>,
    quote: Vec<u8>,
    signature: Vec<u8>,
    pcrs: PcrValues,
}

fn gcp() -> Option<GcpDump> {
    let text = read("ima-tpm/go-attestation/windows_gcp_shielded_vm.json")?;
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let b64 = |x: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(x.as_str().unwrap())
            .unwrap()
    };
    let mut pcrs = PcrValues::default();
    for p in v["Log"]["PCRs"].as_array().unwrap() {
        assert_eq!(p["DigestAlg"], 3, "Go's crypto.SHA1");
        pcrs.insert(
            HashAlg::Sha1,
            p["Index"].as_u64().unwrap() as u8,
            b64(&p["Digest"]),
        );
    }
    Some(GcpDump {
        ak: b64(&v["AK"]["Public"]),
        create_attestation: b64(&v["AK"]["CreateAttestation"]),
        quote: b64(&v["Quote"]["Quote"]),
        signature: b64(&v["Quote"]["Signature"]),
        pcrs,
    })
}

#[test]
fn gcp_quote_verifies() {
    let Some(d) = gcp() else { return };
    let ak = PublicArea::parse(&d.ak).unwrap();
    ak.check_attestation_key().unwrap();
    let quote = Attest::parse(&d.quote).unwrap();
    let sig = TpmSignature::parse(&d.signature).unwrap();
    assert_eq!(sig.hash, HashAlg::Sha1);
    quote.verify_signature(&ak, &sig).unwrap();
    assert!(quote.extra_data.is_empty(), "the dump's nonce is empty");
    let (selection, digest) = quote.quote().unwrap();
    assert_eq!(
        selection.banks,
        vec![(HashAlg::Sha1, (0..24).collect::<Vec<u8>>())]
    );
    assert!(hex::encode(digest).starts_with("a610f27b"));
    quote.check_pcr_digest(&d.pcrs, sig.hash).unwrap();

    // The AK's Name as computed here is the one the TPM certified at creation.
    let creation = Attest::parse(&d.create_attestation).unwrap();
    match &creation.attested {
        Attested::Creation { object_name, .. } => assert_eq!(object_name, &ak.name()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn gcp_quote_rejects_changes() {
    let Some(d) = gcp() else { return };
    let ak = PublicArea::parse(&d.ak).unwrap();
    let sig = TpmSignature::parse(&d.signature).unwrap();
    // One flipped bit anywhere in the quote breaks the signature.
    for i in [6, 40, d.quote.len() - 1] {
        let mut q = d.quote.clone();
        q[i] ^= 1;
        if let Ok(a) = Attest::parse(&q) {
            assert!(
                matches!(
                    a.verify_signature(&ak, &sig),
                    Err(TpmError::BadSignature(_))
                ),
                "byte {i}"
            );
        }
    }
    // A changed PCR value does not match the digest.
    let quote = Attest::parse(&d.quote).unwrap();
    let mut pcrs = d.pcrs.clone();
    pcrs.insert(HashAlg::Sha1, 10, vec![0x11; 20]);
    assert!(matches!(
        quote.check_pcr_digest(&pcrs, sig.hash),
        Err(TpmError::PcrDigestMismatch { .. })
    ));
    // A missing PCR value is named.
    let mut missing = PcrValues::default();
    missing.insert(HashAlg::Sha1, 0, vec![0; 20]);
    let err = quote.check_pcr_digest(&missing, sig.hash).unwrap_err();
    assert!(
        matches!(err, TpmError::PcrValueMissing { pcr: 1, .. }),
        "{err}"
    );
    // Truncations never panic.
    for cut in 0..d.quote.len() {
        assert!(Attest::parse(&d.quote[..cut]).is_err());
    }
    for cut in 0..d.ak.len() {
        assert!(PublicArea::parse(&d.ak[..cut]).is_err());
    }
}
