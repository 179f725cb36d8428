//! The gc scheme scaled out over a real NATS JetStream server and a real S3 server (the test
//! script starts both on loopback and sets TESSERA_TEST_NATS and TESSERA_TEST_S3): two workers
//! share a hundred inferences bit-exact, a request whose worker dies is completed by the other,
//! and damaged material is refused.

mod tamper;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tessera_engine::qint::default_calibration_inputs;
use tessera_engine::quant::{QuantConfig, QuantModel};
use tessera_garble::GarbleError;
use tessera_gc::cluster::{
    ClusterEnclave, ClusterOptions, ClusterWorker, Handled, WorkerReport, run_cluster_worker,
};
use tessera_gc::{GcError, GcOptions};
use tessera_model::{Graph, Tensor, builders};
use tessera_objstore::{Location, Objects};
use tessera_queue::{Queue, WorkOptions};

/// The servers, or None (with the reason printed) outside CI.
fn servers(test: &str) -> Option<(String, Location)> {
    match (
        std::env::var("TESSERA_TEST_NATS"),
        std::env::var("TESSERA_TEST_S3"),
    ) {
        (Ok(n), Ok(s)) => Some((
            n,
            format!("{}/{test}-{}", s.trim_end_matches('/'), std::process::id())
                .parse()
                .expect("location"),
        )),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but TESSERA_TEST_NATS or TESSERA_TEST_S3 is not: scripts/test.sh starts both servers"
            )
        }
        _ => {
            eprintln!(
                "skipping {test}: TESSERA_TEST_NATS and TESSERA_TEST_S3 are not set (scripts/test.sh starts nats-server and an S3 server)"
            );
            None
        }
    }
}

fn options(test: &str, nats: String, store: Location, ack_wait: Duration) -> ClusterOptions {
    ClusterOptions {
        queue: nats,
        name: format!("t{}_{test}", std::process::id()),
        store,
        ack_wait,
        timeout: Duration::from_secs(120),
    }
}

fn gc_opts() -> GcOptions {
    GcOptions {
        semantics: tessera_engine::Semantics::Pow2(QuantConfig {
            frac_bits: 4,
            max_bits: None,
        }),
        input_range: 1.0,
        ..GcOptions::default()
    }
}

/// Input `seed`: uniform in [0, 1] (the input range k is chosen for), seeded.
fn input(seed: u64) -> Tensor {
    let g = builders::dash_a(1).expect("model");
    default_calibration_inputs(&g, 0.0, 1.0, 1, seed)
        .expect("input")
        .remove(0)
}

fn reference(g: &Graph, x: &Tensor) -> Vec<i64> {
    let QuantConfig {
        frac_bits,
        max_bits,
    } = QuantConfig {
        frac_bits: 4,
        max_bits: None,
    };
    QuantModel::new(
        g,
        QuantConfig {
            frac_bits,
            max_bits,
        },
    )
    .expect("model")
    .run(std::slice::from_ref(x))
    .expect("run")
    .outputs
    .remove(0)
    .data()
    .to_vec()
}

/// Workers on their own threads until `stop`.
fn workers(
    c: &ClusterOptions,
    names: &[&str],
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<WorkerReport>> {
    names
        .iter()
        .map(|n| {
            let (c, stop, n) = (c.clone(), stop.clone(), n.to_string());
            std::thread::spawn(move || run_cluster_worker(&c, &n, &stop, None).expect("worker"))
        })
        .collect()
}

#[test]
fn two_workers_share_a_hundred_inferences_bit_exact() {
    let Some((nats, store)) = servers("hundred") else {
        return;
    };
    let c = options("hundred", nats, store, Duration::from_secs(30));
    let g = builders::dash_a(1).expect("model");
    let mut e = ClusterEnclave::start(&g, &gc_opts(), &c).expect("enclave");
    // Garbled ahead, as a deployment would.
    e.garble(100).expect("garble");
    let stop = Arc::new(AtomicBool::new(false));
    let ws = workers(&c, &["w1", "w2"], &stop);
    let xs: Vec<Tensor> = (0..100).map(|i| input(i + 1)).collect();
    let ys = e.infer_batch(&xs);
    stop.store(true, Ordering::SeqCst);
    let reports: Vec<WorkerReport> = ws.into_iter().map(|w| w.join().expect("join")).collect();
    for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
        assert_eq!(y.expect("answered").data(), reference(&g, x), "input {i}");
    }
    let r = e.report().clone();
    assert_eq!(r.answered, 100);
    assert_eq!(r.duplicates_refused, 0);
    assert_eq!(
        reports.iter().map(|w| w.evaluated).sum::<u64>(),
        100,
        "{reports:?}"
    );
    assert!(
        r.by_worker.len() == 2 && r.by_worker.values().all(|&n| n > 0),
        "both workers take a share: {:?}",
        r.by_worker
    );
    // Used material is deleted: only the setup is left, and `close` removes it.
    let s = Objects::open(&c.store).expect("store");
    assert_eq!(s.list("").expect("list").len(), 1);
    e.close().expect("close");
    assert!(s.list("").expect("list").is_empty());
}

#[test]
fn a_request_whose_worker_dies_is_completed_by_another() {
    let Some((nats, store)) = servers("dies") else {
        return;
    };
    let c = options("dies", nats, store, Duration::from_secs(1));
    let g = builders::dash_a(1).expect("model");
    let mut e = ClusterEnclave::start(&g, &gc_opts(), &c).expect("enclave");
    e.garble(3).expect("garble");
    // A worker that takes one request and dies with it (never answers, never acknowledges).
    let took = Arc::new(AtomicBool::new(false));
    let dying = {
        let (c, took) = (c.clone(), took.clone());
        std::thread::spawn(move || {
            let q = Queue::connect(&c.queue).expect("connect");
            let wq = q
                .work_queue(
                    &format!("{}_GC_EVAL", c.name.to_ascii_uppercase()),
                    &format!("{}.gc.eval", c.name.to_ascii_lowercase()),
                    tessera_gc::cluster::WORKERS,
                    &WorkOptions {
                        ack_wait: c.ack_wait,
                        max_deliver: 5,
                    },
                )
                .expect("queue");
            loop {
                if let Some(job) = wq.next(Duration::from_millis(200)).expect("pull") {
                    took.store(true, Ordering::SeqCst);
                    drop(job);
                    return;
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let starter = {
        let (c, took, stop) = (c.clone(), took.clone(), stop.clone());
        std::thread::spawn(move || {
            while !took.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            run_cluster_worker(&c, "survivor", &stop, None).expect("worker")
        })
    };
    let xs: Vec<Tensor> = (0..3).map(|i| input(i + 7)).collect();
    let ys = e.infer_batch(&xs);
    stop.store(true, Ordering::SeqCst);
    dying.join().expect("join");
    let report = starter.join().expect("join");
    for (x, y) in xs.iter().zip(ys) {
        assert_eq!(y.expect("answered").data(), reference(&g, x));
    }
    assert_eq!(e.report().answered, 3, "every inference answered once");
    assert_eq!(report.evaluated, 3, "{report:?}");
    assert_eq!(
        report.redelivered, 1,
        "the dead worker's request came back: {report:?}"
    );
    e.close().expect("close");
}

/// Replace the stored material of the enclave's one ready garbling with `damage` of it, then
/// infer once with one worker.
fn infer_on_damaged(test: &str, damage: impl Fn(&mut Vec<u8>)) -> Option<Result<(), GcError>> {
    let (nats, store) = servers(test)?;
    let c = options(test, nats, store, Duration::from_secs(30));
    let g = builders::dash_a(1).expect("model");
    let mut e = ClusterEnclave::start(&g, &gc_opts(), &c).expect("enclave");
    e.garble(1).expect("garble");
    let key = e.material_key(e.ready_slots()[0]);
    let s = Objects::open(&c.store).expect("store");
    let mut m = s.get(&key).expect("material");
    damage(&mut m);
    s.put(&key, &m).expect("replace");
    let stop = Arc::new(AtomicBool::new(false));
    let ws = workers(&c, &["w"], &stop);
    let r = e.infer(&input(3)).map(|_| ());
    stop.store(true, Ordering::SeqCst);
    for w in ws {
        w.join().expect("join");
    }
    e.close().expect("close");
    Some(r)
}

/// A store that rewrites tables and fixes the chunk's CRC (so the reader's checks pass) is
/// stopped by the enclave's output check, and by nothing earlier.
#[test]
fn tampered_material_with_valid_checksums_fails_the_output_check() {
    let Some(r) = infer_on_damaged("tampered", |m| tamper::tamper_tables(m)) else {
        return;
    };
    match r {
        Err(GcError::Garble(GarbleError::InvalidOutputLabel { .. })) => {}
        other => panic!("expected the output check to refuse it, got {other:?}"),
    }
}

/// A byte flipped in the stored material is refused by the chunk checksum.
#[test]
fn damaged_material_is_refused() {
    let Some(r) = infer_on_damaged("damaged", |m| {
        let mid = m.len() / 2;
        m[mid] ^= 0x10;
    }) else {
        return;
    };
    let err = r
        .expect_err("damaged material must not give a value")
        .to_string();
    assert!(err.contains("checksum"), "{err}");
}

/// An S3 server process of this test's own, killed when dropped.
struct OwnS3(std::process::Child);

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_s3(bin: &str, port: u16, root: &std::path::Path) -> OwnS3 {
    let child = std::process::Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--access-key",
            &std::env::var("AWS_ACCESS_KEY_ID").expect("key"),
            "--secret-key",
            &std::env::var("AWS_SECRET_ACCESS_KEY").expect("secret"),
        ])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the S3 server");
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the S3 server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    OwnS3(child)
}

#[test]
fn the_store_restarting_between_garbling_and_evaluation_loses_nothing() {
    let Some((nats, _)) = servers("restart") else {
        return;
    };
    let Ok(bin) = std::env::var("TESSERA_S3S_BIN") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but TESSERA_S3S_BIN is not: scripts/test.sh exports the S3 server's path"
        );
        eprintln!("skipping: TESSERA_S3S_BIN is not set (scripts/test.sh exports it)");
        return;
    };
    let root = std::env::temp_dir().join(format!("tessera-s3-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("tessera-restart")).expect("bucket");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let server = start_s3(&bin, port, &root);
    let store: Location =
        format!("s3://tessera-restart/run?endpoint=http://127.0.0.1:{port}&allow_http=true")
            .parse()
            .expect("location");
    let c = options("restart", nats, store, Duration::from_secs(30));
    let g = builders::dash_a(1).expect("model");
    let mut e = ClusterEnclave::start(&g, &gc_opts(), &c).expect("enclave");
    e.garble(3).expect("garble");
    // The store goes down and comes back on the same data before anything is evaluated.
    drop(server);
    let _server = start_s3(&bin, port, &root);
    let stop = Arc::new(AtomicBool::new(false));
    let ws = workers(&c, &["w"], &stop);
    let xs: Vec<Tensor> = (0..3).map(|i| input(i + 40)).collect();
    let ys = e.infer_batch(&xs);
    stop.store(true, Ordering::SeqCst);
    for w in ws {
        w.join().expect("join");
    }
    for (x, y) in xs.iter().zip(ys) {
        assert_eq!(y.expect("answered").data(), reference(&g, x));
    }
    e.close().expect("close");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_second_answer_for_a_slot_is_refused() {
    let Some((nats, store)) = servers("twice") else {
        return;
    };
    let c = options("twice", nats, store, Duration::from_secs(1));
    let g = builders::dash_a(1).expect("model");
    let mut e = ClusterEnclave::start(&g, &gc_opts(), &c).expect("enclave");
    e.garble(1).expect("garble");
    // A worker answers and dies before acknowledging: the request is delivered again after
    // ack_wait and answered a second time by another worker.
    let dies_after_answering = {
        let c = c.clone();
        std::thread::spawn(move || {
            let mut w = ClusterWorker::connect(&c, "dies").expect("worker");
            loop {
                if let Some(job) = w.next_job(Duration::from_millis(200)).expect("pull") {
                    assert_eq!(w.answer(&job).expect("answer"), Handled::Answered);
                    drop(job);
                    return;
                }
            }
        })
    };
    let x = input(77);
    let y = e.infer(&x).expect("the first answer is accepted");
    assert_eq!(y.data(), reference(&g, &x));
    dies_after_answering.join().expect("join");
    let stop = Arc::new(AtomicBool::new(false));
    let ws = workers(&c, &["second"], &stop);
    // The redelivered request is answered again; the enclave refuses that answer while it
    // serves the next inference.
    e.garble(1).expect("garble");
    let x2 = input(78);
    let t0 = std::time::Instant::now();
    let mut y2 = e.infer(&x2).expect("answered");
    while e.report().duplicates_refused == 0 && t0.elapsed() < Duration::from_secs(20) {
        e.garble(1).expect("garble");
        y2 = e.infer(&x2).expect("answered");
    }
    stop.store(true, Ordering::SeqCst);
    let reports: Vec<WorkerReport> = ws.into_iter().map(|w| w.join().expect("join")).collect();
    assert_eq!(y2.data(), reference(&g, &x2));
    assert_eq!(e.report().duplicates_refused, 1, "{:?}", e.report());
    assert_eq!(reports[0].redelivered, 1, "{reports:?}");
    e.close().expect("close");
}

/// The enclave command's backend: garblings kept ready in the background, each answer with its
/// cost (one round through the queue, the stored material, the garbling time).
#[test]
fn the_enclave_backend_keeps_a_pool_and_reports_costs() {
    use tessera_runtime::enclave::InferBackend;
    let Some((nats, store)) = servers("backend") else {
        return;
    };
    let c = options("backend", nats, store, Duration::from_secs(30));
    let g = builders::dash_a(1).expect("model");
    let b = tessera_gc::cluster::ClusterBackend::start(&g, &gc_opts(), &c, 2).expect("backend");
    let stop = Arc::new(AtomicBool::new(false));
    let ws = workers(&c, &["w"], &stop);
    for i in 0..4 {
        let x = input(i + 90);
        let (y, cost) = b.infer(&x).expect("answered");
        assert_eq!(y.data(), reference(&g, &x), "input {i}");
        assert_eq!(cost.rounds, 1);
        assert!(
            cost.stored_bytes > 1_000_000 && cost.offline_ns > 0,
            "{cost:?}"
        );
        assert!(
            cost.bytes_to_worker > 0 && cost.bytes_from_worker > 0,
            "{cost:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in ws {
        w.join().expect("join");
    }
    let r = b.report();
    assert_eq!(r.answered, 4);
    assert!(r.garbled >= 4, "{r:?}");
}
