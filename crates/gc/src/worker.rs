//! The worker: stores garbled material and evaluates it on request.

use crate::GcError;
use crate::messages::{FromWorker, ToWorker};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tessera_engine::ExactModel;
use tessera_garble::network::{InputLabels, NetworkCircuit, evaluate};
use tessera_model::{ImportOptions, import_model};
use tessera_objstore::{Location, ObjectWriter, Objects};
use tessera_runtime::RuntimeError;
use tessera_runtime::channel::{Channel, ChannelOptions, Role};
use tessera_runtime::enclave::{ServerHandle, serve_tcp};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Where garbled material is stored (one object per garbling in this directory, through
    /// [`tessera_objstore`]: written in parts, synced and visible only once complete; deleted
    /// after use).
    pub store: PathBuf,
    /// Channel limits.
    pub channel: ChannelOptions,
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> GcError {
    GcError::Store {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

struct Session<'a> {
    opts: &'a WorkerOptions,
    objects: Objects,
    circuit: Option<NetworkCircuit>,
    namespace: u64,
    idle: bool,
    writing: Option<(u64, ObjectWriter)>,
    /// Material opened for evaluation, deleted once the answer is sent (single use).
    spent: Option<String>,
}

impl Session<'_> {
    fn key(&self, slot: u64) -> String {
        format!("{:016x}-{slot:016x}.gc", self.namespace)
    }

    fn handle(&mut self, msg: ToWorker) -> Result<Option<FromWorker>, GcError> {
        match msg {
            ToWorker::Setup {
                model_onnx,
                semantics,
                primes,
                sign_bases,
                namespace,
            } => {
                self.namespace = namespace;
                self.circuit = Some(compile_public(
                    &model_onnx,
                    &semantics,
                    primes,
                    &sign_bases,
                )?);
                // Set up: the enclave may stay silent for long between garblings.
                self.idle = true;
                Ok(Some(FromWorker::Ready {
                    device: format!(
                        "cpu ({} threads)",
                        std::thread::available_parallelism().map_or(1, |n| n.get())
                    ),
                }))
            }
            ToWorker::Material { slot, data, last } => {
                if self.writing.as_ref().is_some_and(|w| w.0 != slot) {
                    return Err(GcError::Protocol(
                        "material of a new garbling before the previous one was complete".into(),
                    ));
                }
                let key = self.key(slot);
                if self.writing.is_none() {
                    let w = self
                        .objects
                        .writer(&key)
                        .map_err(|e| store_err(&self.opts.store, e))?;
                    self.writing = Some((slot, w));
                }
                let Some((_, w)) = self.writing.as_mut() else {
                    return Err(GcError::Protocol("no garbling open".into()));
                };
                w.write_all(&data)
                    .map_err(|e| store_err(&self.opts.store, e))?;
                if !last {
                    return Ok(None);
                }
                let Some((slot, w)) = self.writing.take() else {
                    return Err(GcError::Protocol("no garbling open".into()));
                };
                // Complete, synced, and only now visible under its key.
                let bytes = w.finish().map_err(|e| store_err(&self.opts.store, e))?;
                Ok(Some(FromWorker::Stored { slot, bytes }))
            }
            ToWorker::Evaluate { slot, labels } => {
                let circuit = self
                    .circuit
                    .as_ref()
                    .ok_or_else(|| GcError::Protocol("evaluate before setup".into()))?;
                let t0 = Instant::now();
                let key = self.key(slot);
                let input = InputLabels::from_bytes(&labels)?;
                // Streamed from the store: the material never has to fit in memory.
                let r = self
                    .objects
                    .reader(&key)
                    .map_err(|e| store_err(&self.opts.store, e))?;
                // Single use, whatever the outcome. Deleting gigabytes takes the file system
                // hundreds of milliseconds, so it runs after the answer has been sent (and before
                // the next request is read).
                self.spent = Some(key);
                let out = evaluate(circuit, r, &input)?;
                let bytes = out.to_bytes()?;
                Ok(Some(FromWorker::Output {
                    slot,
                    labels: bytes,
                    eval_ns: t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
                }))
            }
        }
    }
}

/// The public circuit a worker evaluates, compiled from what the enclave sent: the public model
/// (ONNX), the integer semantics, k and the sign bases.
pub(crate) fn compile_public(
    model_onnx: &[u8],
    semantics: &tessera_engine::Semantics,
    primes: u32,
    sign_bases: &[u8],
) -> Result<NetworkCircuit, GcError> {
    let g = import_model(model_onnx, &ImportOptions::default())?;
    let m = ExactModel::new(&g, semantics)?;
    Ok(NetworkCircuit::compile_exact(&m, primes as usize)?
        .with_sign_bases(sign_bases)?
        .public())
}

/// Serve one enclave connection until it closes.
pub fn serve_worker(ch: &mut Channel, opts: &WorkerOptions) -> Result<(), GcError> {
    ch.handshake(Role::Worker, &[Role::Enclave])?;
    let objects = Objects::open(&Location::Local(opts.store.clone()))
        .map_err(|e| store_err(&opts.store, e))?;
    let mut s = Session {
        opts,
        objects,
        circuit: None,
        namespace: 0,
        idle: false,
        writing: None,
        spent: None,
    };
    let result = loop {
        let msg = match ch.recv::<ToWorker>() {
            Ok(m) => m,
            Err(RuntimeError::Closed(_)) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        let r = s.handle(msg);
        if std::mem::take(&mut s.idle) {
            ch.set_deadline(Some(tessera_runtime::channel::IDLE_DEADLINE))?;
        }
        let answered = match r {
            Ok(Some(reply)) => ch.send(&reply).map_err(GcError::from),
            Ok(None) => Ok(()),
            Err(e) => {
                ch.send_error(&e.to_string());
                Err(e)
            }
        };
        if let Some(key) = s.spent.take() {
            let _ = s.objects.delete(&key);
        }
        if let Err(e) = answered {
            break Err(e);
        }
    };
    // An unfinished garbling is aborted: nothing of it stays.
    drop(s.writing.take());
    result
}

/// Serve enclaves on `listener`, each connection in its own thread.
pub fn serve_worker_tcp(
    listener: TcpListener,
    opts: WorkerOptions,
) -> Result<ServerHandle, RuntimeError> {
    serve_tcp(listener, 64, move |stream| {
        let mut ch = Channel::new(stream, opts.channel)?;
        serve_worker(&mut ch, &opts).map_err(RuntimeError::from)
    })
}
