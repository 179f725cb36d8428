//! The simulated TEE: key file handling, evidence, policy, sealing keys, and the loud
//! warning.

use std::time::SystemTime;

use tessera_attest::cli::{VerifyArgs, verify_cmd};
use tessera_attest::sim::PlatformKey;
use tessera_attest::{
    AttestError, Evidence, Policy, TeeKind, describe, measure, report_data, verify, verify_bound,
};

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tessera-attest-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn simulated_evidence_round_trip_and_policy() {
    let dir = tmpdir("sim");
    let path = dir.join("keys/platform.key");
    let key = PlatformKey::load_or_create(&path).expect("creates");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = PlatformKey::load_or_create(&path).expect("loads");
    assert_eq!(key.fingerprint(), again.fingerprint());
    assert_eq!(key.fingerprint().len(), 64);

    let m = measure(&[b"enclave binary", b"model", b"policy"]);
    assert_ne!(
        m,
        measure(&[b"enclave binary", b"modelpolicy"]),
        "parts are length-prefixed"
    );
    let rd = report_data(b"nonce", b"channel key");
    assert_ne!(rd, report_data(b"nonc", b"echannel key"));
    let e = key.attest(&m, &rd);
    let now = SystemTime::now();

    // Refused by default, accepted by the development policy.
    let err = verify(&e, &Policy::default(), now).unwrap_err();
    assert!(matches!(err, AttestError::SimulatedNotAllowed), "{err}");
    assert!(err.to_string().contains("SIMULATED"));
    let c = verify_bound(&e, &Policy::simulated_dev(), now, &rd).expect("dev policy accepts");
    assert!(c.simulated);
    assert_eq!(c.measurement, m.to_vec());
    assert_eq!(c.platform, key.fingerprint());
    let line = describe(&c);
    assert!(
        line.contains("SIMULATED") && line.contains("NO SECURITY"),
        "{line}"
    );
    assert!(matches!(
        verify_bound(&e, &Policy::simulated_dev(), now, &[0u8; 64]),
        Err(AttestError::ReportDataMismatch)
    ));

    // Pinning by fingerprint.
    let mut pinned = Policy::simulated_dev();
    pinned.sim_platform_keys = vec![key.fingerprint()];
    verify(&e, &pinned, now).expect("pinned key");
    pinned.sim_platform_keys = vec!["ab".repeat(32)];
    assert!(matches!(
        verify(&e, &pinned, now),
        Err(AttestError::PlatformKeyNotPinned { .. })
    ));

    // Every byte of the report matters.
    for i in 0..e.report.len() {
        let mut bad = e.clone();
        bad.report[i] ^= 0x01;
        let err = verify(&bad, &Policy::simulated_dev(), now)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("header") || err.contains("signature"),
            "byte {i}: {err}"
        );
    }

    // Through the CLI: the container file, with and without --allow-simulated.
    let file = dir.join("evidence.bin");
    std::fs::write(&file, e.encode()).unwrap();
    let args = VerifyArgs {
        evidence: file.clone(),
        ..VerifyArgs::default()
    };
    assert!(matches!(
        verify_cmd(&args),
        Err(AttestError::SimulatedNotAllowed)
    ));
    let c = verify_cmd(&VerifyArgs {
        allow_simulated: true,
        ..args
    })
    .expect("allowed");
    assert_eq!(c.kind, TeeKind::Sim);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sealing_keys_depend_on_platform_and_measurement() {
    let dir = tmpdir("seal");
    let a = PlatformKey::load_or_create(&dir.join("a.key")).unwrap();
    let b = PlatformKey::load_or_create(&dir.join("b.key")).unwrap();
    let m1 = measure(&[b"one"]);
    let m2 = measure(&[b"two"]);
    assert_eq!(*a.seal_key(&m1), *a.seal_key(&m1));
    assert_ne!(*a.seal_key(&m1), *a.seal_key(&m2));
    assert_ne!(*a.seal_key(&m1), *b.seal_key(&m1));
    let reloaded = PlatformKey::load_or_create(&dir.join("a.key")).unwrap();
    assert_eq!(
        *a.seal_key(&m1),
        *reloaded.seal_key(&m1),
        "survives a restart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn unsafe_or_foreign_key_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("perm");
    let p = dir.join("k");
    PlatformKey::load_or_create(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = PlatformKey::load_or_create(&p).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    let q = dir.join("q");
    std::fs::write(&q, b"not a key").unwrap();
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = PlatformKey::load_or_create(&q).unwrap_err().to_string();
    assert!(
        err.contains("not a tessera simulated platform key"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_files_are_strict() {
    let dir = tmpdir("policy");
    let p = dir.join("p.json");
    std::fs::write(&p, br#"{"allow_simulated": true, "alow_debug": true}"#).unwrap();
    let err = Policy::load(&p).unwrap_err().to_string();
    assert!(err.contains("alow_debug"), "{err}");
    std::fs::write(&p, br#"{"accepted_tcb_statuses": ["UpToDate", "Revoked"]}"#).unwrap();
    assert!(Policy::load(&p).is_err());
    std::fs::write(&p, br#"{"measurements": ["abcd"]}"#).unwrap();
    assert!(Policy::load(&p).unwrap_err().to_string().contains("bytes"));
    std::fs::write(
        &p,
        br#"{"allowed_kinds": ["snp"], "snp_min_tcb": {"microcode": 115}}"#,
    )
    .unwrap();
    let pol = Policy::load(&p).unwrap();
    assert_eq!(pol.allowed_kinds, [TeeKind::SevSnp]);
    assert!(!pol.allow_simulated);
    assert_eq!(pol.accepted_tcb_statuses, ["UpToDate"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kinds_and_tsm_absence() {
    for k in TeeKind::ALL {
        assert_eq!(k.to_string().parse::<TeeKind>().unwrap(), k);
    }
    assert!("sev".parse::<TeeKind>().is_err());
    let err =
        tessera_attest::tsm::collect_at(std::path::Path::new("/nonexistent/tsm/report"), &[0; 64])
            .unwrap_err()
            .to_string();
    assert!(err.contains("configfs-tsm is not available"), "{err}");
    assert_eq!(
        tessera_attest::tsm::kind_of_provider("sev_guest\n"),
        Some(TeeKind::SevSnp)
    );
    assert_eq!(
        tessera_attest::tsm::kind_of_provider("tdx_guest"),
        Some(TeeKind::Tdx)
    );
    let e = Evidence {
        kind: TeeKind::Tdx,
        report: vec![1, 2, 3],
        aux: vec![4],
    };
    assert_eq!(Evidence::decode(&e.encode()).unwrap(), e);
}
