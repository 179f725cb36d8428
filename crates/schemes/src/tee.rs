//! `tee`: the whole model runs inside the enclave; the client reaches it over an attested TLS
//! channel. With all parties local (the embedded default) the enclave runs in this process in
//! `sim` mode, on loopback TCP, with the full handshake, evidence check and TLS: the costs are
//! those of the real protocol, but a simulated TEE gives no security.

use crate::{Cost, Inference, Scheme, SchemeError};
use std::path::PathBuf;
use std::time::Instant;
use tessera_engine::Semantics;
use tessera_model::Tensor;
use tessera_model::stats::stats;
use tessera_runtime::enclave::ServerHandle;
use tessera_runtime::{AttestedClient, Profile};

/// Options of the embedded `tee` scheme.
#[derive(Clone, Debug)]
pub struct TeeOptions {
    /// Cost profile of the modeled TEE.
    pub profile: Profile,
    /// Where the simulated platform key and sealed state live; `None`: a folder under the
    /// system's temporary directory.
    pub state_dir: Option<PathBuf>,
}

impl Default for TeeOptions {
    fn default() -> Self {
        Self {
            profile: tessera_runtime::cost::SGX1,
            state_dir: None,
        }
    }
}

/// The `tee` scheme with an embedded (in-process, simulated) enclave.
pub struct Tee {
    _server: ServerHandle,
    client: AttestedClient,
    macs: u64,
}

impl Tee {
    /// Start an enclave holding `graph` and connect to it.
    pub fn new(
        graph: &tessera_model::Graph,
        semantics: &Semantics,
        opts: TeeOptions,
    ) -> Result<Self, SchemeError> {
        let state_dir = opts
            .state_dir
            .unwrap_or_else(|| std::env::temp_dir().join("tessera-sim-enclave"));
        let (server, client) = crate::embedded::start(
            graph,
            semantics,
            opts.profile,
            state_dir,
            Default::default(),
        )?;
        Ok(Self {
            _server: server,
            client,
            macs: stats(graph).macs,
        })
    }

    /// One line describing the attested enclave (says loudly when it is simulated).
    pub fn describe(&self) -> String {
        tessera_attest::describe(self.client.claims())
    }
}

impl Scheme for Tee {
    fn name(&self) -> &'static str {
        "tee"
    }
    fn protects(&self) -> &'static str {
        "data and model (simulated TEE here: no security)"
    }
    fn infer(&mut self, input: &Tensor) -> Result<Inference, SchemeError> {
        let counters = self.client.counters();
        let (s0, r0, n0) = counters.snapshot();
        let t0 = Instant::now();
        let out = self.client.infer(input)?;
        let latency = t0.elapsed();
        let (s1, r1, n1) = counters.snapshot();
        let cost = Cost {
            trusted_macs: self.macs,
            total_macs: self.macs,
            ..Cost::default()
        }
        .with_links(vec![crate::embedded::client_link(
            (s0, r0, n0),
            (s1, r1, n1),
        )]);
        Ok(crate::embedded::inference(out, latency, cost))
    }
}
