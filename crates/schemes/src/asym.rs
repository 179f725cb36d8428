//! `asym` (AsymML): the enclave decomposes the input of every linear layer into a low-rank part
//! it keeps and a residual it sends to an untrusted worker, and applies every non-linear layer
//! itself. All parties local (the embedded default): a worker thread on loopback TCP and a
//! simulated enclave reached over attested TLS. A float scheme: its output equals the float
//! engine's within 1e-4 relative, not the integer reference bit for bit.

use crate::{Cost, Inference, Scheme, SchemeError};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Instant;
use tessera_asym::AsymOptions;
use tessera_asym::service::{AsymBackend, serve_asym_worker_tcp};
use tessera_engine::Semantics;
use tessera_model::Tensor;
use tessera_model::stats::stats;
use tessera_runtime::enclave::{Backend, ServerHandle};
use tessera_runtime::{AttestedClient, ChannelOptions};

/// The `asym` scheme with every party in this process.
pub struct Asym {
    client: AttestedClient,
    _enclave: ServerHandle,
    _worker: ServerHandle,
    macs: u64,
}

use crate::embedded::io;

impl Asym {
    /// Start a worker and an enclave splitting `graph` with `opts`, and connect to it.
    pub fn new(
        graph: &tessera_model::Graph,
        semantics: &Semantics,
        opts: &AsymOptions,
    ) -> Result<Self, SchemeError> {
        let worker = serve_asym_worker_tcp(
            TcpListener::bind("127.0.0.1:0").map_err(io("binding the worker port"))?,
            ChannelOptions::default(),
        )?;
        let stream = TcpStream::connect(worker.addr()).map_err(io("connecting to the worker"))?;
        let _ = stream.set_nodelay(true);
        let backend = AsymBackend::start(
            graph,
            opts,
            semantics.frac_bits(),
            stream,
            ChannelOptions::default(),
        )
        .map_err(|e| SchemeError::Unsupported(e.to_string()))?;
        let (server, client) = crate::embedded::start(
            graph,
            semantics,
            tessera_runtime::cost::SGX1,
            std::env::temp_dir().join("tessera-sim-enclave"),
            Backend(Some(Arc::new(backend))),
        )?;
        Ok(Self {
            client,
            _enclave: server,
            _worker: worker,
            macs: stats(graph).macs,
        })
    }
}

impl Scheme for Asym {
    fn name(&self) -> &'static str {
        "asym"
    }
    fn protects(&self) -> &'static str {
        "data up to the residual's share of its energy (float scheme)"
    }
    fn exact(&self) -> bool {
        false
    }
    fn infer(&mut self, input: &Tensor) -> Result<Inference, SchemeError> {
        let counters = self.client.counters();
        let before = counters.snapshot();
        let t0 = Instant::now();
        let out = self.client.infer(input)?;
        let latency = t0.elapsed();
        let after = counters.snapshot();
        let off = out.offload.clone().unwrap_or_default();
        let cost = Cost {
            untrusted_ns: off.worker_ns,
            trusted_macs: off.trusted_macs,
            total_macs: self.macs,
            ..Cost::default()
        }
        .with_links(vec![
            crate::embedded::client_link(before, after),
            crate::embedded::worker_link(&off, 0),
        ]);
        Ok(crate::embedded::inference(out, latency, cost))
    }
}
