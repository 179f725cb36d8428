//! The gc scheme end to end: an enclave garbles, a worker on loopback evaluates; bit-exact with
//! the integer reference; one online round per inference; a cheating worker is caught.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;
use tessera_engine::quant::{QuantConfig, QuantModel};
use tessera_gc::{GcBackend, GcOptions, Misbehave, WorkerOptions, serve_worker_tcp};
use tessera_model::{Graph, Tensor, builders};
use tessera_runtime::ChannelOptions;
use tessera_runtime::enclave::{InferBackend, ServerHandle};

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tessera-gc-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn worker(tag: &str, misbehave: Misbehave) -> ServerHandle {
    serve_worker_tcp(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        WorkerOptions {
            store: temp_dir(tag),
            channel: ChannelOptions::default(),
            misbehave,
        },
    )
    .unwrap()
}

fn backend(g: &Graph, w: &ServerHandle, opts: &GcOptions) -> GcBackend {
    let off = TcpStream::connect(w.addr()).unwrap();
    let on = TcpStream::connect(w.addr()).unwrap();
    GcBackend::start(g, opts, off, on, ChannelOptions::default()).unwrap()
}

fn input(seed: u64, shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed | 1;
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 1000) as f32 / 1000.0 * scale
        })
        .collect();
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn small_opts() -> GcOptions {
    GcOptions {
        quant: QuantConfig {
            frac_bits: 4,
            max_bits: None,
        },
        input_range: 1.0,
        pool: 2,
        ..GcOptions::default()
    }
}

#[test]
fn dash_a_bit_exact_and_one_round() {
    let g = builders::dash_a(1).unwrap();
    let w = worker("a", Misbehave::Honest);
    let opts = small_opts();
    let b = backend(&g, &w, &opts);
    let reference = QuantModel::new(&g, opts.quant).unwrap();
    for i in 0..3 {
        let x = input(i + 1, &[1, 1, 28, 28], 1.0);
        let (y, cost) = b.infer(&x).unwrap();
        let want = reference
            .run(std::slice::from_ref(&x))
            .unwrap()
            .outputs
            .remove(0);
        assert_eq!(y.data(), want.data(), "input {i}");
        assert_eq!(
            cost.rounds, 1,
            "exactly one enclave-worker round trip per inference"
        );
        assert!(cost.stored_bytes > 1_000_000, "{cost:?}");
        assert!(
            cost.enclave_bytes_kept < cost.stored_bytes / 100,
            "{cost:?}"
        );
    }
    let s = b.stats();
    assert!(s.primes >= 2 && s.material_bytes > 0, "{s:?}");
}

fn cheating(m: Misbehave) -> String {
    let g = builders::dash_a(2).unwrap();
    let w = worker("cheat", m);
    let b = backend(&g, &w, &small_opts());
    let mut last = String::new();
    // Two requests: replay and old-garbling attacks need a previous one.
    for i in 0..2 {
        match b.infer(&input(10 + i, &[1, 1, 28, 28], 1.0)) {
            Ok(_) if m == Misbehave::Honest => {}
            Ok(_)
                if i == 0
                    && matches!(
                        m,
                        Misbehave::ReplayPreviousOutput | Misbehave::EvaluateOldGarbling
                    ) => {}
            Ok(_) => panic!("{m:?}: a cheating worker's answer was accepted"),
            Err(e) => last = e.to_string(),
        }
    }
    last
}

#[test]
fn a_cheating_worker_is_detected() {
    for m in [
        Misbehave::FlipTableBit,
        Misbehave::ReplayPreviousOutput,
        Misbehave::EvaluateOldGarbling,
        Misbehave::RandomLabels,
    ] {
        let e = cheating(m);
        assert!(!e.is_empty(), "{m:?} went unnoticed");
        eprintln!("{m:?}: {e}");
    }
}

#[test]
fn mnist8_bit_exact() {
    let Some(dir) = tessera_data::shared_data("onnx-mnist-8") else {
        return;
    };
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let g = tessera_model::import_model(&bytes, &tessera_model::ImportOptions::default()).unwrap();
    let w = worker("mnist", Misbehave::Honest);
    let opts = GcOptions {
        quant: QuantConfig {
            frac_bits: 4,
            max_bits: None,
        },
        pool: 1,
        ..GcOptions::default()
    };
    let b = backend(&g, &w, &opts);
    b.wait_ready(Duration::from_secs(600)).unwrap();
    let reference = QuantModel::new(&g, opts.quant).unwrap();
    for set in 0..3 {
        let x =
            tessera_data::load_pb(&dir.join(format!("test_data_set_{set}/input_0.pb"))).unwrap();
        let (y, _) = b.infer(&x).unwrap();
        let want = reference
            .run(std::slice::from_ref(&x))
            .unwrap()
            .outputs
            .remove(0);
        assert_eq!(y.data(), want.data(), "set {set}");
    }
}
