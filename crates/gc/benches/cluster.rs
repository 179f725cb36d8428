//! Scale-out throughput: inferences per second with 1 and 2 workers behind NATS JetStream and an
//! S3 store (garbling done ahead), the time the store and the queue add per inference against
//! the embedded path (one worker over TCP), and the bytes each inference moves.
//!
//! Needs the servers the test script starts: run it as
//! `bash -c 'source scripts/servers.sh; trap stop_servers EXIT; start_s3; start_nats;
//! cargo bench -p tessera-gc --bench cluster'` (BENCH_N sets the inferences, default 40).

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tessera_engine::qint::default_calibration_inputs;
use tessera_engine::quant::QuantConfig;
use tessera_gc::cluster::{ClusterEnclave, ClusterOptions, run_cluster_worker};
use tessera_gc::{GcBackend, GcOptions, WorkerOptions, serve_worker_tcp};
use tessera_model::{Tensor, builders};
use tessera_runtime::ChannelOptions;
use tessera_runtime::enclave::InferBackend;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench` (release)");
        return;
    }
    let (Ok(nats), Ok(s3)) = (
        std::env::var("TESSERA_TEST_NATS"),
        std::env::var("TESSERA_TEST_S3"),
    ) else {
        println!(
            "benchmark skipped: TESSERA_TEST_NATS and TESSERA_TEST_S3 are not set (start the servers with scripts/servers.sh)"
        );
        return;
    };
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let g = builders::dash_d(1).expect("model");
    let opts = GcOptions {
        semantics: tessera_engine::Semantics::Pow2(QuantConfig {
            frac_bits: 4,
            max_bits: None,
        }),
        input_range: 1.0,
        pool: n,
        ..GcOptions::default()
    };
    let xs: Vec<Tensor> = default_calibration_inputs(&g, 0.0, 1.0, n, 1).expect("inputs");
    println!("model: Dash D (builder, seed 1), {n} inferences per row, garbling done ahead");

    // Embedded: one worker over TCP, the pool garbled ahead.
    let dir = std::env::temp_dir().join(format!("tessera-bench-cluster-{}", std::process::id()));
    let w = serve_worker_tcp(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        WorkerOptions {
            store: dir.clone(),
            channel: ChannelOptions::default(),
        },
    )
    .expect("worker");
    let b = GcBackend::start(
        &g,
        &opts,
        TcpStream::connect(w.addr()).expect("connect"),
        TcpStream::connect(w.addr()).expect("connect"),
        ChannelOptions::default(),
    )
    .expect("backend");
    b.wait_ready(Duration::from_secs(600)).expect("pool");
    while b.progress().garbled < n {
        std::thread::sleep(Duration::from_millis(50));
    }
    b.shutdown();
    let t0 = Instant::now();
    let mut online = 0u64;
    for x in &xs {
        let (_, c) = b.infer(x).expect("infer");
        online += c.bytes_to_worker + c.bytes_from_worker;
    }
    let emb = t0.elapsed().as_secs_f64();
    let material = b.stats().material_bytes;
    println!("| path | workers | inferences/s | ms per inference | bytes moved per inference |");
    println!("|---|---|---|---|---|");
    println!(
        "| embedded (TCP) | 1 | {:.2} | {:.1} | {} online (+ {} material, streamed ahead) |",
        n as f64 / emb,
        emb * 1e3 / n as f64,
        online / n as u64,
        material
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);

    for (workers, sequential) in [(1usize, true), (1, false), (2, false)] {
        let c = ClusterOptions {
            queue: nats.clone(),
            name: format!(
                "bench{}_{workers}{}",
                std::process::id(),
                u8::from(sequential)
            ),
            store: format!(
                "{}/bench-{}-{workers}-{sequential}",
                s3.trim_end_matches('/'),
                std::process::id()
            )
            .parse()
            .expect("location"),
            ack_wait: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
        };
        let mut e = ClusterEnclave::start(&g, &opts, &c).expect("enclave");
        e.garble(n).expect("garble");
        let stop = Arc::new(AtomicBool::new(false));
        let hs: Vec<_> = (0..workers)
            .map(|k| {
                let (c, stop) = (c.clone(), stop.clone());
                std::thread::spawn(move || {
                    run_cluster_worker(&c, &format!("w{k}"), &stop, None).expect("worker")
                })
            })
            .collect();
        // Let the workers connect and compile before timing.
        let warm = e.infer(&xs[0]);
        warm.expect("warm-up");
        e.garble(1).expect("garble");
        let t0 = Instant::now();
        let mut moved = 0u64;
        if sequential {
            for x in &xs {
                let r = e.infer_batch_with_costs(std::slice::from_ref(x));
                for a in r {
                    let (_, cost) = a.expect("answered");
                    moved += cost.bytes_to_worker + cost.bytes_from_worker;
                }
            }
        } else {
            for a in e.infer_batch_with_costs(&xs) {
                let (_, cost) = a.expect("answered");
                moved += cost.bytes_to_worker + cost.bytes_from_worker;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        for h in hs {
            h.join().expect("join");
        }
        let material = e.report().material_bytes;
        println!(
            "| queue + {}, {} | {workers} | {:.2} | {:.1} | {} through the queue + {} material written, {} read |",
            if s3.starts_with("s3://") {
                "S3"
            } else {
                "local directory"
            },
            if sequential {
                "one at a time"
            } else {
                "all published at once"
            },
            n as f64 / secs,
            secs * 1e3 / n as f64,
            moved / n as u64,
            material,
            material
        );
        e.close().expect("close");
    }
}
