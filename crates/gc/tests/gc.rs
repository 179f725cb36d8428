//! The gc scheme end to end: an enclave garbles, a worker on loopback evaluates; bit-exact with
//! the integer reference; one online round per inference; a k below the sound bound and an
//! input outside the range k was chosen for are refused (a cheating worker: `adversary.rs`).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;
use tessera_engine::quant::{QuantConfig, QuantModel};
use tessera_gc::{GcBackend, GcOptions, WorkerOptions, serve_worker_tcp};
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

fn worker(tag: &str) -> ServerHandle {
    serve_worker_tcp(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        WorkerOptions {
            store: temp_dir(tag),
            channel: ChannelOptions::default(),
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

/// The power-of-two parameters these tests run under.
fn pow2(o: &GcOptions) -> QuantConfig {
    match &o.semantics {
        tessera_engine::Semantics::Pow2(c) => *c,
        tessera_engine::Semantics::V2 { .. } => panic!("these tests run the pow2 semantics"),
    }
}

fn small_opts() -> GcOptions {
    GcOptions {
        semantics: tessera_engine::Semantics::Pow2(QuantConfig {
            frac_bits: 4,
            max_bits: None,
        }),
        input_range: 1.0,
        pool: 2,
        ..GcOptions::default()
    }
}

#[test]
fn dash_a_bit_exact_and_one_round() {
    let g = builders::dash_a(1).unwrap();
    let w = worker("a");
    let opts = small_opts();
    let b = backend(&g, &w, &opts);
    let reference = QuantModel::new(&g, pow2(&opts)).unwrap();
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

/// Material is single use: the worker deletes what it evaluated once the answer is on its way
/// (after the reply, so the deletion is not online time), before it reads the next request.
#[test]
fn evaluated_material_is_deleted_after_the_answer() {
    let g = builders::dash_a(1).unwrap();
    let store = temp_dir("spent");
    let w = serve_worker_tcp(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        WorkerOptions {
            store: store.clone(),
            channel: ChannelOptions::default(),
        },
    )
    .unwrap();
    let opts = GcOptions {
        pool: 1,
        overlap: false,
        ..small_opts()
    };
    let b = backend(&g, &w, &opts);
    let objects = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".gc"))
            .collect();
        v.sort();
        v
    };
    b.wait_ready(Duration::from_secs(60)).unwrap();
    let before = objects();
    assert_eq!(before.len(), 1, "one garbling stored: {before:?}");
    b.infer(&input(3, &[1, 1, 28, 28], 1.0)).unwrap();
    // The next request on the same connection waits for the deletion; so does this poll.
    let t = std::time::Instant::now();
    while objects().contains(&before[0]) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "evaluated material {} is still in the store",
            before[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    b.wait_ready(Duration::from_secs(60)).unwrap();
    let after = objects();
    assert_eq!(after.len(), 1, "only the next garbling: {after:?}");
    assert_ne!(after, before);
}

#[test]
fn mnist8_bit_exact() {
    let Some(dir) = tessera_data::shared_data("onnx-mnist-8") else {
        return;
    };
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let g = tessera_model::import_model(&bytes, &tessera_model::ImportOptions::default()).unwrap();
    let w = worker("mnist");
    let opts = GcOptions {
        semantics: tessera_engine::Semantics::Pow2(QuantConfig {
            frac_bits: 4,
            max_bits: None,
        }),
        pool: 1,
        ..GcOptions::default()
    };
    let b = backend(&g, &w, &opts);
    b.wait_ready(Duration::from_secs(600)).unwrap();
    let reference = QuantModel::new(&g, pow2(&opts)).unwrap();
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

fn start(g: &Graph, w: &ServerHandle, opts: &GcOptions) -> Result<GcBackend, tessera_gc::GcError> {
    let off = TcpStream::connect(w.addr()).unwrap();
    let on = TcpStream::connect(w.addr()).unwrap();
    GcBackend::start(g, opts, off, on, ChannelOptions::default())
}

/// A k below the sound bound would let values wrap in CRT into valid but wrong output labels:
/// it is refused unless the user opts in to a calibration.
#[test]
fn a_k_below_the_sound_bound_is_refused() {
    let g = builders::dash_a(4).unwrap();
    let w = worker("k");
    let sound = backend(&g, &w, &small_opts()).stats();
    assert_eq!(sound.calibrated, None);
    assert_eq!(sound.sound_primes, Some(sound.primes));
    let below = GcOptions {
        primes: Some(sound.primes - 1),
        ..small_opts()
    };
    match start(&g, &w, &below) {
        Err(tessera_gc::GcError::UnsoundPrimes { primes, sound: s }) => {
            assert_eq!((primes, s), (sound.primes - 1, sound.primes));
        }
        Err(e) => panic!("expected UnsoundPrimes, got {e}"),
        Ok(_) => panic!("a k below the sound bound was accepted"),
    }
}

/// Inputs beyond the range k was chosen for are refused before a garbling is spent; without
/// the check this input wraps and decodes to a wrong prediction.
#[test]
fn an_input_outside_the_chosen_range_is_refused() {
    let g = builders::dash_a(5).unwrap();
    let w = worker("range");
    let b = backend(&g, &w, &small_opts());
    let x = input(3, &[1, 1, 28, 28], 1.0);
    assert!(b.infer_checked(&x).is_ok());
    let mut far = x.clone();
    far.data_mut()[100] = 1.0e4;
    match b.infer_checked(&far) {
        Err(tessera_gc::GcError::InputOutOfRange { widest, limit }) => {
            assert!(widest > limit, "{widest} ≤ {limit}");
        }
        other => panic!("expected InputOutOfRange, got {other:?}"),
    }
    // The garbling was not spent: the next valid input is served.
    assert!(b.infer_checked(&x).is_ok());
}

/// A calibrated k (below the sound bound) is opt-in, labelled, still bit-exact on the data it
/// was calibrated for, and refuses inputs wider than the calibration saw.
#[test]
fn a_calibrated_k_is_labelled_and_bounded_by_its_data() {
    let g = builders::dash_a(6).unwrap();
    let w = worker("cal");
    let opts = small_opts();
    let reference = QuantModel::new(&g, pow2(&opts)).unwrap();
    let data: Vec<Tensor> = (0..4)
        .map(|i| input(20 + i, &[1, 1, 28, 28], 0.5))
        .collect();
    let mut widths = Vec::new();
    for x in &data {
        let run = reference.run(std::slice::from_ref(x)).unwrap();
        tessera_engine::quant::merge_widths(&mut widths, &run.widths);
    }
    let cal = GcOptions {
        calibration: Some(tessera_gc::Calibration {
            widths,
            margin_bits: 1,
            source: "four test inputs".into(),
        }),
        ..opts.clone()
    };
    let b = backend(&g, &w, &cal);
    let st = b.stats();
    assert!(st.primes < st.sound_primes.unwrap(), "{st:?}");
    assert_eq!(st.calibrated.as_deref(), Some("four test inputs"));
    for x in &data {
        let (y, _) = b.infer_checked(x).unwrap();
        let want = reference
            .run(std::slice::from_ref(x))
            .unwrap()
            .outputs
            .remove(0);
        assert_eq!(y.data(), want.data());
    }
    let wider = input(30, &[1, 1, 28, 28], 1.0);
    assert!(matches!(
        b.infer_checked(&wider),
        Err(tessera_gc::GcError::InputOutOfRange { .. })
    ));
}

/// The default k without garbling; a worst case beyond the basis is a clear error, not a
/// garbling failure.
#[test]
fn sound_primes_are_reported_and_a_range_beyond_the_basis_is_named() {
    let cfg = pow2(&small_opts());
    let a = builders::dash_a(1).unwrap();
    let w = worker("sound");
    assert_eq!(
        tessera_gc::sound_primes(&a, &tessera_engine::Semantics::Pow2(cfg), 1.0).unwrap(),
        backend(&a, &w, &small_opts()).stats().primes
    );
    let f = builders::f_net(1).unwrap();
    match tessera_gc::sound_primes(&f, &tessera_engine::Semantics::Pow2(cfg), 1.0) {
        Err(tessera_gc::GcError::NoSoundRange { need, half, primes }) => {
            assert!(need as u64 > half && primes == 13, "{need} {half} {primes}");
        }
        other => panic!("expected NoSoundRange, got {other:?}"),
    }
}
