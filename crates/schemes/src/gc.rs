//! `gc` (Dash): the enclave garbles the quantized network for every inference, an untrusted
//! worker evaluates it. All parties local (the embedded default): a worker thread storing
//! garbled material under the system's temporary directory, an enclave (simulated) garbling in
//! the background into a pool of ready garblings, and a client over attested TLS — the full
//! protocol on loopback TCP.

use crate::{Cost, Inference, Scheme, SchemeError};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_gc::{GcBackend, GcOptions, WorkerOptions, serve_worker_tcp};
use tessera_model::Tensor;
use tessera_model::stats::stats;
use tessera_runtime::enclave::{Backend, ServerHandle};
use tessera_runtime::{AttestedClient, ChannelOptions};

/// The `gc` scheme with every party in this process.
pub struct Gc {
    // Dropped in this order: the client, the enclave, the garbler, the worker, its files.
    client: AttestedClient,
    _enclave: ServerHandle,
    backend: Arc<GcBackend>,
    _worker: ServerHandle,
    _store: StoreDir,
    macs: u64,
}

impl Drop for Gc {
    fn drop(&mut self) {
        // Stop the garbler before the worker's folder goes (the enclave may outlive this
        // handle for a moment and still hold the backend).
        self.backend.shutdown();
    }
}

/// The embedded worker's folder, removed when the scheme is dropped.
struct StoreDir(std::path::PathBuf);

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use crate::embedded::io;

impl Gc {
    /// Start a worker, an enclave garbling `graph`, and connect to it.
    pub fn new(graph: &tessera_model::Graph, opts: GcOptions) -> Result<Self, SchemeError> {
        let store = std::env::temp_dir().join(format!(
            "tessera-gc-store-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let worker = serve_worker_tcp(
            TcpListener::bind("127.0.0.1:0").map_err(io("binding the worker port"))?,
            WorkerOptions {
                store: store.clone(),
                channel: ChannelOptions::default(),
            },
        )?;
        let off = TcpStream::connect(worker.addr()).map_err(io("connecting to the worker"))?;
        let on = TcpStream::connect(worker.addr()).map_err(io("connecting to the worker"))?;
        let _ = on.set_nodelay(true);
        let backend = Arc::new(
            GcBackend::start(graph, &opts, off, on, ChannelOptions::default())
                .map_err(|e| SchemeError::Runtime(e.into()))?,
        );
        let (server, client) = crate::embedded::start(
            graph,
            &opts.semantics,
            tessera_runtime::cost::SGX1,
            std::env::temp_dir().join("tessera-sim-enclave"),
            Backend(Some(backend.clone())),
        )?;
        Ok(Self {
            _store: StoreDir(store),
            _worker: worker,
            _enclave: server,
            backend,
            client,
            macs: stats(graph).macs,
        })
    }

    /// Wait until a garbling is ready (so that a measured inference is online time only).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), SchemeError> {
        self.backend
            .wait_ready(timeout)
            .map_err(|e| SchemeError::Runtime(e.into()))
    }

    /// The enclave's garbling backend (for progress and figures).
    pub fn backend(&self) -> &GcBackend {
        &self.backend
    }

    /// Figures of the garbling (k, bytes per inference, enclave memory, garbling time).
    pub fn stats(&self) -> tessera_gc::GcStats {
        self.backend.stats()
    }
}

impl Scheme for Gc {
    fn name(&self) -> &'static str {
        "gc"
    }
    fn protects(&self) -> &'static str {
        "data and activations (weights visible to the worker); cheating detected"
    }
    fn caveat(&self) -> Option<String> {
        self.backend
            .stats()
            .calibrated
            .map(|_| tessera_gc::CALIBRATED_LABEL.to_string())
    }
    fn infer(&mut self, input: &Tensor) -> Result<Inference, SchemeError> {
        // Waiting for a ready garbling is part of this request's time, reported as `waited`.
        let w0 = Instant::now();
        self.backend
            .wait_ready(Duration::from_secs(3600))
            .map_err(|e| SchemeError::Runtime(e.into()))?;
        let waited = w0.elapsed();
        let counters = self.client.counters();
        let before = counters.snapshot();
        let t0 = Instant::now();
        let out = self.client.infer(input)?;
        let latency = t0.elapsed();
        let after = counters.snapshot();
        let off = out.offload.clone().unwrap_or_default();
        let cost = Cost {
            waited,
            offline: Duration::from_nanos(off.offline_ns),
            // The garbled material, counted by the enclave as it sent it; the worker keeps it.
            stored_server: off.stored_bytes,
            // The enclave keeps the garbling's secrets (seeds, decoding) for the client.
            stored_client: off.enclave_bytes_kept,
            // Garbling is the enclave's offline work; evaluation the worker's.
            trusted_ns: off.offline_ns,
            untrusted_ns: off.worker_ns,
            trusted_macs: off.trusted_macs,
            total_macs: self.macs,
            ..Cost::default()
        }
        .with_links(vec![
            crate::embedded::client_link(before, after),
            crate::embedded::worker_link(&off, off.stored_bytes),
        ]);
        Ok(crate::embedded::inference(out, latency, cost))
    }
}
