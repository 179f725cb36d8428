//! What the embedded enclave schemes (`tee`, `gc`, `asym`) share: a simulated enclave on
//! loopback reached over attested TLS, and turning its answer into an [`Inference`].

use crate::{Cost, Inference, Link, SchemeError};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use tessera_engine::Semantics;
use tessera_engine::argmax;
use tessera_model::export::export_model;
use tessera_runtime::enclave::{
    Backend, Enclave, EnclaveConfig, Mode, ServerHandle, serve_enclave,
};
use tessera_runtime::{AttestedClient, ChannelOptions, EnclaveOutput, Profile, RuntimeError};

/// A loopback error with what was being done.
pub(crate) fn io(what: &str) -> impl Fn(std::io::Error) -> SchemeError + '_ {
    move |e| SchemeError::Runtime(RuntimeError::Io(format!("{what}: {e}")))
}

/// Start a simulated enclave holding `graph` (running it, or driving `backend`) and connect an
/// attested client that pins its measurement.
pub(crate) fn start(
    graph: &tessera_model::Graph,
    semantics: &Semantics,
    profile: Profile,
    state_dir: std::path::PathBuf,
    backend: Backend,
) -> Result<(ServerHandle, AttestedClient), SchemeError> {
    let model_onnx = export_model(graph).map_err(|e| SchemeError::Unsupported(e.to_string()))?;
    let enclave = Enclave::start(EnclaveConfig {
        mode: Mode::Sim,
        state_dir,
        model_onnx,
        semantics: semantics.clone(),
        profile,
        binary: None,
        channel: ChannelOptions::default(),
        backend,
        // The caller imported `graph` under the user's budget already; the enclave re-imports
        // its own export of it and must not refuse what the user allowed.
        limits: tessera_model::ImportLimits::default()
            .with_max_memory(u64::MAX)
            .with_max_macs(u64::MAX),
    })?;
    let measurement = *enclave.measurement();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding a loopback port"))?;
    let server = serve_enclave(enclave, listener, 64)?;
    let client = connect(server.addr(), &measurement)?;
    Ok((server, client))
}

/// Another attested client of the simulated enclave at `addr`, pinning its `measurement`.
pub(crate) fn connect(
    addr: std::net::SocketAddr,
    measurement: &[u8],
) -> Result<AttestedClient, SchemeError> {
    let stream = TcpStream::connect(addr).map_err(io("connecting to the enclave"))?;
    let _ = stream.set_nodelay(true);
    let mut policy = tessera_attest::Policy::simulated_dev();
    policy.measurements = vec![tessera_runtime::enclave::hex(measurement)];
    let mut client = AttestedClient::connect(stream, &policy, ChannelOptions::default())?;
    // One request now ends the connection's unauthenticated phase, whose short deadline would
    // otherwise close it while a scheme prepares (gc's first garbling of a large network).
    client.info()?;
    Ok(client)
}

/// The enclave's answer as an [`Inference`]: dequantized output, argmax, and `cost` completed
/// with the latency and the modeled TEE time (the client-side latency with the enclave's
/// measured compute replaced by its modeled time).
/// The client's leg to the enclave: counters of `client`'s channel before and after.
pub(crate) fn client_link(before: (u64, u64, u64), after: (u64, u64, u64)) -> Link {
    Link {
        name: "client-enclave".into(),
        up: after.0.saturating_sub(before.0),
        down: after.1.saturating_sub(before.1),
        rounds: after.2.saturating_sub(before.2),
        ..Link::default()
    }
}

/// The enclave's link to an untrusted worker, from what the enclave counted on it.
pub(crate) fn worker_link(off: &tessera_runtime::protocol::OffloadCost, offline_up: u64) -> Link {
    Link {
        name: "enclave-worker".into(),
        up: off.bytes_to_worker,
        down: off.bytes_from_worker,
        rounds: off.rounds,
        offline_up,
        offline_down: 0,
    }
}

pub(crate) fn inference(out: EnclaveOutput, latency: Duration, mut cost: Cost) -> Inference {
    let scale = out.scale;
    let output = out.exact.map(|&v| (v as f64 * scale) as f32);
    let class = argmax(output.data());
    cost.latency = latency;
    cost.trusted_ns = cost.trusted_ns.saturating_add(out.tee.measured_ns);
    cost.modeled_tee = Some(
        latency.saturating_sub(Duration::from_nanos(out.tee.measured_ns))
            + Duration::from_nanos(out.tee.modeled_ns),
    );
    Inference {
        output,
        scale,
        exact: out.exact,
        class,
        cost,
    }
}
