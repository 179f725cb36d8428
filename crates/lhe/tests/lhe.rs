//! The lhe protocol's checks, each against an adversary that passes every earlier check:
//! sealed results, the evidence's key binding, replayed requests, ciphertexts under another
//! key, truncated and malformed uploads.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use tessera_engine::Semantics;
use tessera_engine::qint::{Calibration, QintConfig, default_calibration_inputs};
use tessera_he::linear::EncryptedWeights;
use tessera_he::wire::{read_public, write_cts};
use tessera_he::{HeParams, KeyPair};
use tessera_lhe::client::DataOwner;
use tessera_lhe::enclave::LheBackend;
use tessera_lhe::messages::{ClientToServer, OwnerToServer, ServerToClient};
use tessera_lhe::server::{ServerOptions, serve_server};
use tessera_lhe::{LheError, LheResult, open_result, seal_result};
use tessera_model::{Graph, Tensor, builders};
use tessera_runtime::channel::{Channel, ChannelOptions, Role};
use tessera_runtime::enclave::{
    Backend, Enclave, EnclaveConfig, InferBackend, Mode, ServerHandle, serve_enclave,
};
use tessera_runtime::{AttestedClient, RuntimeError};

fn semantics(g: &Graph) -> Semantics {
    let xs = default_calibration_inputs(g, 0.0, 1.0, 8, 1).expect("inputs");
    Semantics::V2 {
        cfg: QintConfig::default(),
        calibration: Calibration::from_inputs(g, &xs, "generated").expect("calibrates"),
    }
}

struct Parties {
    server: ServerHandle,
    enclave: ServerHandle,
    measurement: [u8; 48],
    backend: Arc<LheBackend>,
    store: std::path::PathBuf,
    graph: Graph,
    sem: Semantics,
}

fn tcp(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connects")
}

fn enclave_config(graph: &Graph, sem: &Semantics, backend: Arc<dyn InferBackend>) -> EnclaveConfig {
    EnclaveConfig {
        mode: Mode::Sim,
        state_dir: std::env::temp_dir().join("tessera-sim-enclave"),
        model_onnx: tessera_model::export::export_model(graph).expect("export"),
        semantics: sem.clone(),
        profile: tessera_runtime::cost::SGX1,
        binary: None,
        channel: ChannelOptions::default(),
        backend: Backend(Some(backend)),
        limits: tessera_model::ImportLimits::default(),
    }
}

/// Server and enclave (driving it), no upload yet; `wrap` may replace the enclave's backend.
fn parties(tag: &str, wrap: impl FnOnce(Arc<LheBackend>) -> Arc<dyn InferBackend>) -> Parties {
    let graph = builders::mix(8, 6, 3).expect("builds");
    let sem = semantics(&graph);
    let store = std::env::temp_dir().join(format!("tessera-lhe-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    let server = serve_server(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        ServerOptions::new(store.clone()),
    )
    .expect("server");
    let backend = LheBackend::new(&graph, &sem).expect("backend");
    backend
        .drive(tcp(server.addr()), ChannelOptions::default())
        .expect("drive");
    let enclave =
        Enclave::start(enclave_config(&graph, &sem, wrap(backend.clone()))).expect("enclave");
    let measurement = *enclave.measurement();
    let enclave =
        serve_enclave(enclave, TcpListener::bind("127.0.0.1:0").expect("bind"), 8).expect("serve");
    Parties {
        server,
        enclave,
        measurement,
        backend,
        store,
        graph,
        sem,
    }
}

impl Parties {
    fn attested(&self) -> AttestedClient {
        let mut policy = tessera_attest::Policy::simulated_dev();
        policy.measurements = vec![tessera_runtime::enclave::hex(&self.measurement)];
        AttestedClient::connect(tcp(self.enclave.addr()), &policy, ChannelOptions::default())
            .expect("attests")
    }

    fn upload(&self) -> Result<tessera_lhe::owner::UploadReport, LheError> {
        let mut owner = self.attested();
        tessera_lhe::owner::upload(
            &mut owner,
            &self.graph,
            &self.sem,
            tcp(self.server.addr()),
            ChannelOptions::default(),
            &mut |_, _| {},
        )
    }

    fn data_owner(&self) -> Result<DataOwner, LheError> {
        DataOwner::connect(
            &mut self.attested(),
            tcp(self.server.addr()),
            ChannelOptions::default(),
        )
    }

    fn input(&self) -> Tensor {
        default_calibration_inputs(&self.graph, 0.0, 1.0, 1, 7)
            .expect("input")
            .remove(0)
    }

    fn params(&self) -> HeParams {
        self.backend.model().params.clone()
    }

    /// A raw data-owner connection to the server.
    fn raw_client(&self) -> Channel {
        let mut ch =
            Channel::new(tcp(self.server.addr()), ChannelOptions::default()).expect("channel");
        ch.handshake(Role::Client, &[Role::Worker])
            .expect("handshake");
        ch
    }
}

impl Drop for Parties {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn result() -> LheResult {
    LheResult {
        shape: vec![1, 2],
        exact: vec![3, -4],
        scale: 0.5,
        enclave_ns: 1,
        server_ns: 2,
        bytes_to_server: 3,
        bytes_from_server: 4,
        rounds: 5,
        decryptions: 6,
        encryptions: 7,
        products: 8,
        layers: Vec::new(),
    }
}

#[test]
fn sealed_results_refuse_tampering_replay_and_other_sessions() {
    let key = [7u8; 32];
    let sealed = seal_result(&key, 11, 5, &result()).expect("seals");
    assert_eq!(
        open_result(&key, 11, 5, &sealed).expect("opens").exact,
        vec![3, -4]
    );
    let mut flipped = sealed.clone();
    flipped[3] ^= 1;
    for (k, s, q, bytes) in [
        (key, 11, 5, &flipped),
        (key, 11, 6, &sealed),
        (key, 12, 5, &sealed),
        ([8u8; 32], 11, 5, &sealed),
    ] {
        let e = open_result(&k, s, q, bytes).expect_err("refused");
        assert!(e.to_string().contains("does not open"), "{e}");
    }
}

/// A backend whose sessions offer another enclave's public key while its evidence binds its
/// own: attestation and TLS pass, and only the owners' key check stops it.
struct Swapped {
    own: Arc<LheBackend>,
    other: Arc<LheBackend>,
}

impl InferBackend for Swapped {
    fn scheme(&self) -> &'static str {
        "lhe"
    }
    fn infer(
        &self,
        x: &Tensor,
    ) -> Result<(Tensor<i64>, tessera_runtime::protocol::OffloadCost), RuntimeError> {
        self.own.infer(x)
    }
    fn footprint(&self) -> tessera_runtime::cost::Footprint {
        self.own.footprint()
    }
    fn key_binding(&self) -> Vec<u8> {
        self.own.key_binding()
    }
    fn session(&self) -> Result<Vec<u8>, RuntimeError> {
        self.other.session()
    }
}

#[test]
fn a_public_key_the_evidence_does_not_bind_is_refused() {
    let p = parties("swap", |own| {
        let g = builders::mix(8, 6, 3).expect("builds");
        let other = LheBackend::new(&g, &semantics(&g)).expect("other");
        Arc::new(Swapped { own, other })
    });
    let e = p.data_owner().err().expect("refused");
    assert!(
        e.to_string()
            .contains("not the one the enclave's evidence binds"),
        "{e}"
    );
    let e = p.upload().expect_err("refused");
    assert!(
        e.to_string()
            .contains("not the one the enclave's evidence binds"),
        "{e}"
    );
}

#[test]
fn evidence_binds_the_public_key_into_the_report_data() {
    let p = parties("bind", |b| b);
    assert_eq!(
        p.attested().key_binding(),
        p.backend.key_binding().as_slice()
    );
    let e = Enclave::start(enclave_config(&p.graph, &p.sem, p.backend.clone())).expect("enclave");
    let ev = e.evidence(b"nonce").expect("evidence").encode();
    let mut policy = tessera_attest::Policy::simulated_dev();
    policy.measurements = vec![tessera_runtime::enclave::hex(e.measurement())];
    let check = |key: &[u8]| {
        let bound = tessera_runtime::client::Bound {
            cert: e.cert(),
            app_measurement: e.measurement(),
            key_binding: key,
        };
        tessera_runtime::client::verify_binding(
            &ev,
            &bound,
            b"nonce",
            &policy,
            std::time::SystemTime::now(),
        )
    };
    check(&p.backend.key_binding()).expect("the bound key");
    let err = check(&[0u8; 32]).expect_err("another key");
    assert!(
        matches!(
            err,
            RuntimeError::Attest(tessera_attest::AttestError::ReportDataMismatch)
        ),
        "{err}"
    );
}

/// Well-formed input ciphertexts (zeros) under a key of the same parameters but not the
/// enclave's.
fn foreign_input(params: &HeParams, chunks: usize) -> Vec<u8> {
    let kp = KeyPair::generate(params, &mut rand::rng());
    let cts: Vec<_> = (0..chunks)
        .map(|_| kp.public.encrypt(&[], &mut rand::rng()).expect("enc"))
        .collect();
    write_cts(params, &cts).expect("write")
}

#[test]
fn a_replayed_request_number_is_refused() {
    let p = parties("replay", |b| b);
    p.upload().expect("uploads");
    let mut d = p.data_owner().expect("session");
    d.infer(&p.input()).expect("request 1");
    // The same session and request number again: the server queues it, the enclave's order
    // check refuses it before decrypting anything.
    let mut raw = p.raw_client();
    raw.send(&ClientToServer::Infer {
        session: d.session(),
        request: 1,
        input: foreign_input(&p.params(), p.backend.model().raw_chunks()),
    })
    .expect("send");
    let e = raw.recv::<ServerToClient>().expect_err("refused");
    assert!(e.to_string().contains("not newer than the last one"), "{e}");
}

#[test]
fn a_ciphertext_under_another_key_ends_the_request_and_the_session() {
    let p = parties("wrongkey", |b| b);
    p.upload().expect("uploads");
    let mut d = p.data_owner().expect("session");
    let mut raw = p.raw_client();
    raw.send(&ClientToServer::Infer {
        session: d.session(),
        request: 1,
        input: foreign_input(&p.params(), p.backend.model().raw_chunks()),
    })
    .expect("send");
    let e = raw.recv::<ServerToClient>().expect_err("refused");
    assert!(e.to_string().contains("outside the proven bound"), "{e}");
    let e = d.infer(&p.input()).expect_err("the session is closed");
    assert!(
        e.to_string()
            .contains("closed after a decryption out of range"),
        "{e}"
    );
    // Other sessions go on.
    p.data_owner()
        .expect("session")
        .infer(&p.input())
        .expect("a fresh session");
}

#[test]
fn truncated_and_malformed_uploads_leave_nothing_behind() {
    let p = parties("upload", |b| b);
    let params = p.params();
    let pk = read_public(&params, p.backend.public_key()).expect("pk");
    let m = p.backend.model();
    let (w, b) = m.weights(0).expect("weights");
    let enc = EncryptedWeights::encrypt(&pk, &m.plans[0], w, b, &mut rand::rng()).expect("encrypt");
    let (wb, bb) = (
        write_cts(&params, &enc.w).expect("w"),
        write_cts(&params, &enc.b).expect("b"),
    );
    let owner = || {
        let mut ch =
            Channel::new(tcp(p.server.addr()), ChannelOptions::default()).expect("channel");
        ch.handshake(Role::Owner, &[Role::Worker])
            .expect("handshake");
        ch.send(&OwnerToServer::Begin {
            setup: p.backend.public_setup().fingerprint(),
            layers: m.layers.len() as u32,
        })
        .expect("begin");
        ch
    };
    // One good layer, then the connection drops.
    let mut ch = owner();
    ch.send(&OwnerToServer::Layer {
        index: 0,
        w: wb.clone(),
        b: bb.clone(),
    })
    .expect("layer");
    drop(ch);
    // One layer whose weight ciphertexts are cut short.
    let mut ch = owner();
    ch.send(&OwnerToServer::Layer {
        index: 0,
        w: wb[..wb.len() - 100].to_vec(),
        b: bb,
    })
    .expect("layer");
    let e = ch
        .recv::<tessera_lhe::messages::ServerToOwner>()
        .expect_err("refused");
    assert!(e.to_string().contains("malformed ciphertexts"), "{e}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let left: Vec<_> = std::fs::read_dir(&p.store)
        .expect("store")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert!(left.is_empty(), "the store holds {left:?}");
    let e = p
        .data_owner()
        .expect("session")
        .infer(&p.input())
        .expect_err("no model");
    assert!(
        e.to_string()
            .contains("no encrypted model has been uploaded"),
        "{e}"
    );
    // A complete upload then serves.
    p.upload().expect("uploads");
    assert_eq!(std::fs::read_dir(&p.store).expect("store").count(), 1);
    p.data_owner()
        .expect("session")
        .infer(&p.input())
        .expect("serves");
}

#[test]
fn an_upload_of_another_model_is_refused() {
    let p = parties("othermodel", |b| b);
    // The measured model with one weight's sign flipped, under the same semantics: the same
    // shapes, bounds, parameters and public set-up, so only the enclave's commitment to its
    // measured weights tells them apart.
    let mut other = p.graph.clone();
    let w = other
        .nodes
        .iter_mut()
        .find_map(|n| match &mut n.op {
            tessera_model::ir::Op::Conv(c) => Some(&mut c.weight),
            _ => None,
        })
        .expect("a conv");
    w.data_mut()[0] = -w.data()[0];
    let mut owner = p.attested();
    let e = tessera_lhe::owner::upload(
        &mut owner,
        &other,
        &p.sem,
        tcp(p.server.addr()),
        ChannelOptions::default(),
        &mut |_, _| {},
    )
    .expect_err("refused");
    assert!(e.to_string().contains("runs another model"), "{e}");
    assert_eq!(std::fs::read_dir(&p.store).expect("store").count(), 0);
}
