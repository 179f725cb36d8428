//! The model owner: attests the enclave, checks that its public key is the evidence's, encrypts
//! every linear layer's integer weights and biases under it, and uploads them to the server.

use crate::client::open_session;
use crate::messages::{OwnerToServer, ServerToOwner};
use crate::{LheError, LheModel};
use tessera_engine::Semantics;
use tessera_he::linear::EncryptedWeights;
use tessera_he::wire::write_cts;
use tessera_model::Graph;
use tessera_runtime::channel::{Channel, ChannelOptions, IDLE_DEADLINE, Role};
use tessera_runtime::{AttestedClient, Transport};

/// What an upload did.
#[derive(Clone, Debug)]
pub struct UploadReport {
    /// Layers uploaded.
    pub layers: usize,
    /// Ciphertexts uploaded.
    pub ciphertexts: usize,
    /// Bytes sent to the server.
    pub bytes_sent: u64,
    /// Bytes the server stored.
    pub bytes_stored: u64,
    /// Time spent encrypting, ns.
    pub encrypt_ns: u64,
}

/// Encrypt `graph`'s weights for the attested `enclave` and upload them to the server over
/// `server`. `progress(i, n)` is called after each layer.
pub fn upload<T: Transport + 'static>(
    enclave: &mut AttestedClient,
    graph: &Graph,
    semantics: &Semantics,
    server: T,
    opts: ChannelOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<UploadReport, LheError> {
    let opened = open_session(enclave)?;
    let model = LheModel::with_params(graph, semantics, opened.params.clone())?;
    let mine = model.public_setup(&opened.info.public_key);
    if mine != opened.info.setup || model.commitment()? != opened.info.model {
        return Err(LheError::Protocol(
            "the enclave runs another model or layout than the one being uploaded (check the model and --semantics)".into(),
        ));
    }
    let mut ch = Channel::new(server, opts)?;
    ch.handshake(Role::Owner, &[Role::Worker])?;
    ch.set_deadline(Some(IDLE_DEADLINE))?;
    let n = model.layers.len();
    ch.send(&OwnerToServer::Begin {
        setup: mine.fingerprint(),
        layers: n as u32,
    })?;
    let mut rng = rand::rng();
    let mut encrypt_ns = 0u64;
    let mut ciphertexts = 0;
    for (i, plan) in model.plans.iter().enumerate() {
        let (w, b) = model.weights(i)?;
        let t0 = std::time::Instant::now();
        let enc = EncryptedWeights::encrypt(&opened.public, plan, w, b, &mut rng)?;
        let (wb, bb) = (
            write_cts(&opened.params, &enc.w)?,
            write_cts(&opened.params, &enc.b)?,
        );
        encrypt_ns += t0.elapsed().as_nanos() as u64;
        ciphertexts += enc.w.len() + enc.b.len();
        ch.send(&OwnerToServer::Layer {
            index: i as u32,
            w: wb,
            b: bb,
        })?;
        progress(i + 1, n);
    }
    ch.send(&OwnerToServer::Commit)?;
    let bytes_stored = match ch.recv::<ServerToOwner>()? {
        ServerToOwner::Stored { bytes } => bytes,
    };
    Ok(UploadReport {
        layers: n,
        ciphertexts,
        bytes_sent: ch.counters().snapshot().0,
        bytes_stored,
        encrypt_ns,
    })
}
