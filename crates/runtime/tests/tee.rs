//! The `tee` service end to end: attested TLS channel, bit-exact inference, concurrency,
//! misbehaving clients, sealed state, and what a relaying host sees.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_engine::quant::{QuantConfig, QuantModel};
use tessera_model::export::export_model;
use tessera_model::{Graph, GraphBuilder, Tensor};
use tessera_runtime::channel::{Channel, ChannelOptions, Role};
use tessera_runtime::enclave::{Enclave, EnclaveConfig, Mode, sealed_identity_path, serve_enclave};
use tessera_runtime::{AttestedClient, RuntimeError, cost};

fn small_cnn(seed: u64) -> Graph {
    let mut b = GraphBuilder::new("small-cnn", seed);
    let x = b.input("x", vec![1, 1, 12, 12]).unwrap();
    let c = b.conv(x, 4, 3, 1, 1).unwrap();
    let r = b.relu(c).unwrap();
    let p = b.max_pool(r, 2, 2).unwrap();
    let f = b.flatten(p).unwrap();
    let d = b.dense(f, 10).unwrap();
    b.finish(vec![d]).unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tessera-runtime-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(g: &Graph, dir: &std::path::Path) -> EnclaveConfig {
    EnclaveConfig {
        mode: Mode::Sim,
        state_dir: dir.to_path_buf(),
        model_onnx: export_model(g).unwrap(),
        semantics: tessera_engine::Semantics::default(),
        profile: cost::SGX1,
        binary: Some(b"test enclave binary v1".to_vec()),
        channel: ChannelOptions {
            deadline: Some(Duration::from_secs(20)),
            ..ChannelOptions::default()
        },
        backend: Default::default(),
        limits: tessera_model::ImportLimits::default(),
    }
}

fn policy(measurement: &[u8; 48]) -> tessera_attest::Policy {
    let mut p = tessera_attest::Policy::simulated_dev();
    p.measurements = vec![hex(measurement)];
    p
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn input(seed: u64, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let data = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % 1000) as f32 / 1000.0
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn connect(addr: std::net::SocketAddr, m: &[u8; 48]) -> Result<AttestedClient, RuntimeError> {
    let s = TcpStream::connect(addr).unwrap();
    AttestedClient::connect(s, &policy(m), ChannelOptions::default())
}

#[test]
fn bit_exact_over_attested_tls() {
    let g = small_cnn(3);
    let dir = temp_dir("exact");
    let enclave = Enclave::start(config(&g, &dir)).unwrap();
    let m = *enclave.measurement();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let reference = QuantModel::new(&g, QuantConfig::default()).unwrap();
    let mut c = connect(server.addr(), &m).unwrap();
    assert!(c.claims().simulated);
    for i in 0..5 {
        let x = input(i, &[1, 1, 12, 12]);
        let out = c.infer(&x).unwrap();
        let want = reference
            .run(std::slice::from_ref(&x))
            .unwrap()
            .outputs
            .remove(0);
        assert_eq!(out.exact.data(), want.data(), "input {i}");
        assert_eq!(out.tee.profile, "sgx1");
        assert!(out.tee.modeled_ns >= out.tee.measured_ns);
    }
    let info = c.info().unwrap();
    assert!(info.simulated);
    assert_eq!(info.measurement, hex(&m));
    let (up, down, rounds) = c.counters().snapshot();
    assert!(up > 0 && down > 0);
    assert_eq!(rounds, 2 + 5 + 1, "hello, attest, five inferences, info");
}

#[test]
fn wrong_measurement_is_refused() {
    let g = small_cnn(3);
    let dir = temp_dir("wrong");
    let enclave = Enclave::start(config(&g, &dir)).unwrap();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let e = match connect(server.addr(), &[0u8; 48]) {
        Err(e) => e,
        Ok(_) => panic!("a client accepted an unexpected measurement"),
    };
    assert!(e.to_string().contains("measurement"), "{e}");
}

#[test]
fn simulated_evidence_needs_explicit_consent() {
    let g = small_cnn(3);
    let dir = temp_dir("consent");
    let enclave = Enclave::start(config(&g, &dir)).unwrap();
    let m = *enclave.measurement();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let mut p = policy(&m);
    p.allow_simulated = false;
    let s = TcpStream::connect(server.addr()).unwrap();
    let e = match AttestedClient::connect(s, &p, ChannelOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("simulated evidence accepted without allow_simulated"),
    };
    assert!(e.to_string().to_lowercase().contains("simulated"), "{e}");
}

#[test]
fn evidence_for_another_nonce_or_certificate_is_refused() {
    let g = small_cnn(3);
    let dir = temp_dir("bind");
    let enclave = Enclave::start(config(&g, &dir)).unwrap();
    let m = *enclave.measurement();
    let ev = enclave.evidence(b"nonce one").unwrap().encode();
    let p = policy(&m);
    let now = std::time::SystemTime::now();
    let verify = |cert: &[u8], app: &[u8], nonce: &[u8]| {
        let bound = tessera_runtime::client::Bound {
            cert,
            app_measurement: app,
            key_binding: &[],
        };
        tessera_runtime::client::verify_binding(&ev, &bound, nonce, &p, now)
    };
    verify(enclave.cert(), &m, b"nonce one").unwrap();
    for (cert, app, nonce) in [
        (enclave.cert(), &m[..], &b"nonce two"[..]),
        (&b"another cert"[..], &m[..], &b"nonce one"[..]),
        (enclave.cert(), &[7u8; 48][..], &b"nonce one"[..]),
    ] {
        let e = verify(cert, app, nonce).unwrap_err();
        assert!(
            matches!(
                e,
                RuntimeError::Attest(tessera_attest::AttestError::ReportDataMismatch)
            ),
            "{e}"
        );
    }
}

/// The right (simulated) platform, the wrong application: another model in an enclave whose
/// evidence is genuine, pinned by `app_measurements` only. Its report data honestly binds its
/// own measurement, so only the application-measurement check refuses it.
#[test]
fn right_platform_wrong_application_measurement_is_refused() {
    let dir = temp_dir("appm");
    let expected = Enclave::start(config(&small_cnn(3), &dir)).unwrap();
    let want = *expected.measurement();
    drop(expected);
    let other = Enclave::start(config(&small_cnn(4), &dir)).unwrap();
    assert_ne!(*other.measurement(), want);
    let server = serve_enclave(other, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let mut p = tessera_attest::Policy::simulated_dev();
    p.app_measurements = vec![hex(&want)];
    let s = TcpStream::connect(server.addr()).unwrap();
    let e = match AttestedClient::connect(s, &p, ChannelOptions::default()) {
        Err(e) => e,
        Ok(_) => panic!("a client accepted another application"),
    };
    assert!(
        matches!(
            e,
            RuntimeError::Attest(tessera_attest::AttestError::AppMeasurementMismatch { .. })
        ),
        "{e}"
    );
    // The same platform and policy accept the expected application.
    let right = Enclave::start(config(&small_cnn(3), &dir)).unwrap();
    let server = serve_enclave(right, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let s = TcpStream::connect(server.addr()).unwrap();
    AttestedClient::connect(s, &p, ChannelOptions::default()).unwrap();
}

/// A real-TEE policy that pins nothing is refused before the evidence is looked at: a fake
/// enclave answers with SEV-SNP evidence.
#[test]
fn real_tee_policy_without_measurements_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut ch = Channel::new(s, ChannelOptions::default()).unwrap();
        ch.handshake(Role::Enclave, &[Role::Client]).unwrap();
        let _: tessera_runtime::protocol::ClientMsg = ch.recv().unwrap();
        let ev = tessera_attest::Evidence {
            kind: tessera_attest::TeeKind::SevSnp,
            report: vec![0; 1184],
            aux: Vec::new(),
        };
        ch.send(&tessera_runtime::protocol::EnclaveMsg::Evidence {
            evidence: ev.encode(),
            cert: b"cert".to_vec(),
            app_measurement: vec![0; 48],
            key_binding: Vec::new(),
        })
        .unwrap();
        let _ = ch.recv::<tessera_runtime::protocol::ClientMsg>();
    });
    let s = TcpStream::connect(addr).unwrap();
    let e = match AttestedClient::connect(
        s,
        &tessera_attest::Policy::default(),
        ChannelOptions::default(),
    ) {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    };
    assert!(
        matches!(
            e,
            RuntimeError::Attest(tessera_attest::AttestError::MeasurementRequired {
                missing: "app_measurements",
                ..
            })
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("tessera enclave --measure-only"),
        "{e}"
    );
    fake.join().unwrap();
}

/// 64 connections that trickle one byte a second and never finish their handshake fill the
/// unauthenticated pool; a real client is still served within a few seconds.
#[test]
fn slow_loris_connections_do_not_keep_a_real_client_out() {
    let g = small_cnn(3);
    let dir = temp_dir("loris");
    let enclave = Enclave::start(config(&g, &dir)).unwrap();
    let m = *enclave.measurement();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let addr = server.addr();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut lorises = Vec::new();
    for _ in 0..64 {
        let stop = stop.clone();
        lorises.push(std::thread::spawn(move || {
            use std::io::Write;
            let mut s = TcpStream::connect(addr).unwrap();
            // A hello frame announcing 200 bytes, one byte a second.
            let bytes = [205u8, 0, 0, 0, 0, 0, 0, 0, 0]
                .into_iter()
                .chain(std::iter::repeat(0u8));
            for b in bytes {
                if stop.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let t0 = std::time::Instant::now();
    let mut c = connect(addr, &m).expect("a real client is served");
    c.infer(&input(1, &[1, 1, 12, 12])).unwrap();
    let waited = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(waited < Duration::from_secs(5), "served after {waited:?}");
    for l in lorises {
        l.join().unwrap();
    }
}

/// A connection that never completes its handshake is dropped when its pre-authentication
/// budget runs out, however steadily it trickles bytes.
#[test]
fn unauthenticated_phase_has_a_total_budget() {
    let g = small_cnn(3);
    let dir = temp_dir("preauth");
    let mut cfg = config(&g, &dir);
    cfg.channel.preauth_deadline = Duration::from_secs(1);
    let enclave = Enclave::start(cfg).unwrap();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut hello = [0u8; 256];
    // The enclave's own hello comes first; then it waits for ours.
    let mut got = 0;
    // A well-formed hello header announcing 200 bytes, then its payload one byte at a time:
    // every read gets a byte long before the per-read deadline, and the frame deadline is far.
    let mut trickle = [205u8, 0, 0, 0, 0, 0, 0, 0, 0]
        .into_iter()
        .chain(std::iter::repeat(0u8));
    let closed_after = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "still open after 6 s"
        );
        if s.write_all(&[trickle.next().unwrap_or(0)]).is_err() {
            break t0.elapsed();
        }
        match s.read(&mut hello) {
            Ok(0) => break t0.elapsed(),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break t0.elapsed(),
        }
        std::thread::sleep(Duration::from_millis(150));
    };
    assert!(got > 0, "the enclave sent its hello");
    assert!(
        closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
}

#[test]
fn sixteen_concurrent_clients_and_misbehaving_ones() {
    let g = small_cnn(5);
    let dir = temp_dir("conc");
    let enclave = Enclave::start(config(&g, &dir)).unwrap();
    let m = *enclave.measurement();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let addr = server.addr();
    let reference = Arc::new(QuantModel::new(&g, QuantConfig::default()).unwrap());
    // Misbehaving clients: garbage, a giant length, a disconnect in the middle of a request.
    let mut bad = Vec::new();
    for kind in 0..3 {
        bad.push(std::thread::spawn(move || {
            use std::io::Write;
            let mut s = TcpStream::connect(addr).unwrap();
            match kind {
                0 => {
                    let _ = s.write_all(b"\x16\x03\x01 definitely not tessera");
                }
                1 => {
                    let _ = s.write_all(&u32::MAX.to_le_bytes());
                }
                _ => {
                    let mut ch =
                        Channel::new(s.try_clone().unwrap(), ChannelOptions::default()).unwrap();
                    ch.handshake(Role::Client, &[Role::Enclave]).unwrap();
                    // Half a frame, then hang up.
                    let _ = s.write_all(&[200, 0, 0, 0, 1, 1]);
                }
            }
        }));
    }
    let mut good = Vec::new();
    for i in 0..16u64 {
        let reference = reference.clone();
        good.push(std::thread::spawn(move || {
            let mut c = connect(addr, &m).unwrap();
            for j in 0..3 {
                let x = input(i * 10 + j, &[1, 1, 12, 12]);
                let out = c.infer(&x).unwrap();
                let want = reference
                    .run(std::slice::from_ref(&x))
                    .unwrap()
                    .outputs
                    .remove(0);
                assert_eq!(out.exact.data(), want.data());
            }
        }));
    }
    for b in bad {
        b.join().unwrap();
    }
    for g in good {
        g.join().unwrap();
    }
    // A wrong input shape is a clear error for that client only.
    let mut c = connect(addr, &m).unwrap();
    let e = c.infer(&input(1, &[1, 1, 10, 10])).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    let mut c = connect(addr, &m).unwrap();
    c.infer(&input(1, &[1, 1, 12, 12])).unwrap();
}

#[test]
fn sealed_identity_survives_restart_and_not_another_measurement() {
    let g = small_cnn(7);
    let dir = temp_dir("seal");
    let a = Enclave::start(config(&g, &dir)).unwrap();
    assert!(!a.restored_identity());
    assert!(
        a.sealing().host_can_read(),
        "sim mode says its key is on the host's disk"
    );
    let cert = a.cert().to_vec();
    let ma = *a.measurement();
    drop(a);
    let a2 = Enclave::start(config(&g, &dir)).unwrap();
    assert!(a2.restored_identity());
    assert_eq!(a2.cert(), cert.as_slice(), "same key after a restart");
    // Another model: another measurement. The host copies A's sealed identity to where B
    // looks for its own, so that B tries to unseal it: B must refuse it, not adopt A's key.
    let g2 = small_cnn(8);
    let cfg_b = config(&g2, &dir);
    let mb = cfg_b.measurement().unwrap();
    assert_ne!(ma, mb);
    let sealed_a = std::fs::read(sealed_identity_path(&dir, &ma)).unwrap();
    let path_b = sealed_identity_path(&dir, &mb);
    std::fs::create_dir_all(path_b.parent().unwrap()).unwrap();
    std::fs::write(&path_b, &sealed_a).unwrap();
    let e = match Enclave::start(cfg_b) {
        Err(e) => e,
        Ok(b) => panic!(
            "B started with A's sealed identity (restored: {})",
            b.restored_identity()
        ),
    };
    assert!(
        matches!(e, RuntimeError::Seal(ref m) if m.contains("another measurement")),
        "{e}"
    );
    // Each of the two bindings holds on its own: B's key with A's measurement as associated
    // data (the key derivation stops it), and A's key with B's measurement (the associated
    // data stops it).
    let platform =
        tessera_attest::sim::PlatformKey::load_or_create(&dir.join("platform.key")).unwrap();
    let e = tessera_runtime::seal::unseal(&platform.seal_key(&mb), &ma, &sealed_a).unwrap_err();
    assert!(matches!(e, RuntimeError::Seal(_)), "{e}");
    let e = tessera_runtime::seal::unseal(&platform.seal_key(&ma), &mb, &sealed_a).unwrap_err();
    assert!(matches!(e, RuntimeError::Seal(_)), "{e}");
    tessera_runtime::seal::unseal(&platform.seal_key(&ma), &ma, &sealed_a).unwrap();
    // A corrupted sealed file stops the enclave with a clear error instead of a new identity.
    let path = sealed_identity_path(&dir, &ma);
    let mut bytes = sealed_a.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = match Enclave::start(config(&g, &dir)) {
        Err(e) => e,
        Ok(_) => panic!("a corrupted sealed identity was accepted"),
    };
    assert!(e.to_string().contains("unseal"), "{e}");
}

#[test]
fn snp_mode_without_the_guest_device_fails_clearly_and_tdx_keeps_secrets_in_memory() {
    let g = small_cnn(7);
    let dir = temp_dir("modes");
    let mut cfg = config(&g, &dir);
    cfg.mode = Mode::Snp;
    if !std::path::Path::new(tessera_attest::sev_guest::SEV_GUEST_DEVICE).exists() {
        let e = match Enclave::start(cfg) {
            Err(e) => e,
            Ok(_) => panic!("snp mode started without /dev/sev-guest"),
        };
        assert!(
            matches!(e, RuntimeError::Attest(tessera_attest::AttestError::DerivedKey(ref m)) if m.contains("/dev/sev-guest")),
            "{e}"
        );
    }
    let mut cfg = config(&g, &dir);
    cfg.mode = Mode::Tdx;
    let t = Enclave::start(cfg).unwrap();
    assert!(matches!(
        t.sealing(),
        tessera_runtime::seal::SealingKey::MemoryOnly
    ));
    assert!(!t.restored_identity());
    let sealed = dir.join("sealed");
    assert!(
        !sealed.exists() || std::fs::read_dir(&sealed).unwrap().next().is_none(),
        "TDX mode wrote sealed state"
    );
}

#[test]
fn a_relaying_host_sees_no_plaintext() {
    let g = small_cnn(9);
    let dir = temp_dir("relay");
    let enclave = Enclave::start(config(&g, &dir)).unwrap();
    let m = *enclave.measurement();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 64).unwrap();
    let tap = Arc::new(Mutex::new(Vec::new()));
    let relay = tessera_runtime::relay::relay(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        server.addr(),
        Some(tap.clone()),
    )
    .unwrap();
    // A recognisable input: every value the same unusual float.
    let x = Tensor::new(vec![1, 1, 12, 12], vec![0.123_456_79f32; 144]).unwrap();
    let mut c = connect(relay.addr(), &m).unwrap();
    let out = c.infer(&x).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    let seen = tap.lock().unwrap().clone();
    assert!(seen.len() > 1000, "the relay carried the conversation");
    let needle: Vec<u8> = 0.123_456_79f32.to_le_bytes().repeat(4);
    assert!(
        !seen.windows(needle.len()).any(|w| w == needle.as_slice()),
        "input visible to the host"
    );
    let out_bytes: Vec<u8> = out
        .exact
        .data()
        .iter()
        .take(2)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert!(
        !seen
            .windows(out_bytes.len())
            .any(|w| w == out_bytes.as_slice()),
        "output visible to the host"
    );
}

#[test]
fn mnist8_through_the_enclave_matches_reference() {
    let Some(dir) = tessera_data::shared_data("onnx-mnist-8") else {
        return;
    };
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let g = tessera_model::import_model(&bytes, &tessera_model::ImportOptions::default()).unwrap();
    let state = temp_dir("mnist");
    let mut cfg = config(&g, &state);
    cfg.model_onnx = bytes;
    let enclave = Enclave::start(cfg).unwrap();
    let m = *enclave.measurement();
    let server = serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").unwrap(), 4).unwrap();
    let reference = QuantModel::new(&g, QuantConfig::default()).unwrap();
    let mut c = connect(server.addr(), &m).unwrap();
    for set in 0..3 {
        let x =
            tessera_data::load_pb(&dir.join(format!("test_data_set_{set}/input_0.pb"))).unwrap();
        let out = c.infer(&x).unwrap();
        let want = reference
            .run(std::slice::from_ref(&x))
            .unwrap()
            .outputs
            .remove(0);
        assert_eq!(out.exact.data(), want.data(), "set {set}");
    }
}
