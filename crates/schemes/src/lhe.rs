//! `lhe` (LHE + TEE, three parties): every party local — the untrusted server on loopback TCP
//! storing the encrypted model under the system's temporary directory, a simulated enclave that
//! holds the HE secret key and drives the server, the model owner's upload through its own
//! attested connection, and the data owner's session.

use crate::{Cost, Inference, Link, Scheme, SchemeError};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_engine::{Semantics, argmax};
use tessera_lhe::client::DataOwner;
use tessera_lhe::enclave::LheBackend;
use tessera_lhe::owner::{UploadReport, upload};
use tessera_lhe::server::{ServerOptions, serve_server};
use tessera_model::stats::stats;
use tessera_model::{Graph, Tensor};
use tessera_runtime::cost::{Footprint, model_request};
use tessera_runtime::enclave::{Backend, ServerHandle};
use tessera_runtime::{ChannelOptions, Profile};

use crate::embedded::io;

fn lhe_err(e: tessera_lhe::LheError) -> SchemeError {
    match e {
        tessera_lhe::LheError::Unsupported(s) => SchemeError::Unsupported(s),
        e => SchemeError::Runtime(e.into()),
    }
}

/// The server's folder, removed when the scheme is dropped.
struct StoreDir(std::path::PathBuf);

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `lhe` scheme with every party in this process.
pub struct Lhe {
    data_owner: DataOwner,
    _enclave: ServerHandle,
    backend: Arc<LheBackend>,
    _server: ServerHandle,
    _store: StoreDir,
    upload: UploadReport,
    macs: u64,
    linear_macs: u64,
    profile: Profile,
    footprint: Footprint,
    last: Option<tessera_lhe::LheResult>,
}

impl Lhe {
    /// Start the server, the enclave (key generation, link to the server), upload the model as
    /// its owner, and open the data owner's session.
    pub fn new(graph: &Graph, semantics: &Semantics) -> Result<Self, SchemeError> {
        let store = std::env::temp_dir().join(format!(
            "tessera-lhe-store-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let server = serve_server(
            TcpListener::bind("127.0.0.1:0").map_err(io("binding the server port"))?,
            ServerOptions::new(store.clone()),
        )
        .map_err(lhe_err)?;
        let store = StoreDir(store);
        let connect = || {
            let s =
                TcpStream::connect(server.addr()).map_err(io("connecting to the lhe server"))?;
            let _ = s.set_nodelay(true);
            Ok::<_, SchemeError>(s)
        };
        let backend = LheBackend::new(graph, semantics).map_err(lhe_err)?;
        backend
            .drive(connect()?, ChannelOptions::default())
            .map_err(lhe_err)?;
        let profile = tessera_runtime::cost::SGX1;
        let (enclave, mut client) = crate::embedded::start(
            graph,
            semantics,
            profile,
            std::env::temp_dir().join("tessera-sim-enclave"),
            Backend(Some(backend.clone())),
        )?;
        let measurement = client.claims().measurement.clone();
        let mut owner = crate::embedded::connect(enclave.addr(), &measurement)?;
        let report = upload(
            &mut owner,
            graph,
            semantics,
            connect()?,
            ChannelOptions::default(),
            &mut |_, _| {},
        )
        .map_err(lhe_err)?;
        let data_owner = DataOwner::connect(&mut client, connect()?, ChannelOptions::default())
            .map_err(lhe_err)?;
        let st = stats(graph);
        let linear_macs = backend
            .model()
            .layers
            .iter()
            .filter_map(|l| st.layers.get(l.node).map(|s| s.macs))
            .sum();
        Ok(Self {
            data_owner,
            _enclave: enclave,
            backend,
            _server: server,
            _store: store,
            upload: report,
            macs: st.macs,
            linear_macs,
            profile,
            footprint: Footprint::of(graph),
            last: None,
        })
    }

    /// The model owner's upload (ciphertexts, bytes sent and stored, encryption time).
    pub fn upload(&self) -> &UploadReport {
        &self.upload
    }

    /// The last inference's detail as the enclave reported it (server and enclave time, HE
    /// operation counts, per-layer costs).
    pub fn last_detail(&self) -> Option<&tessera_lhe::LheResult> {
        self.last.as_ref()
    }

    /// The HE parameters, in words.
    pub fn params(&self) -> String {
        self.backend.model().params.describe()
    }
}

impl Scheme for Lhe {
    fn name(&self) -> &'static str {
        "lhe"
    }
    fn protects(&self) -> &'static str {
        "data, activations and weights from the server (HE); the enclave holds the key"
    }
    fn infer(&mut self, input: &Tensor) -> Result<Inference, SchemeError> {
        let t0 = Instant::now();
        let (r, c) = self.data_owner.infer(input).map_err(lhe_err)?;
        let latency = t0.elapsed();
        let exact = Tensor::new(r.shape.clone(), r.exact.clone())
            .map_err(|e| SchemeError::Unsupported(e.to_string()))?;
        let output = exact.map(|&v| (v as f64 * r.scale) as f32);
        let class = argmax(output.data());
        let enclave = Duration::from_nanos(r.enclave_ns);
        let tee = model_request(&self.profile, &self.footprint, enclave, 2 + 2 * r.rounds);
        let cost = Cost {
            latency,
            // The encrypted model, uploaded once and kept by the server.
            stored_server: self.upload.bytes_stored,
            trusted_ns: r.enclave_ns,
            untrusted_ns: r.server_ns,
            trusted_macs: self.macs.saturating_sub(self.linear_macs),
            total_macs: self.macs,
            modeled_tee: Some(
                latency.saturating_sub(enclave) + Duration::from_nanos(tee.modeled_ns),
            ),
            ..Cost::default()
        }
        .with_links(vec![
            Link {
                name: "client-server".into(),
                up: c.bytes_up,
                down: c.bytes_down,
                rounds: 1,
                ..Link::default()
            },
            Link {
                name: "enclave-server".into(),
                up: r.bytes_to_server,
                down: r.bytes_from_server,
                rounds: r.rounds,
                ..Link::default()
            },
        ]);
        let scale = r.scale;
        self.last = Some(r);
        Ok(Inference {
            output,
            exact,
            scale,
            class,
            cost,
        })
    }
}
