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
use tessera_runtime::RuntimeError;
use tessera_runtime::channel::{Channel, ChannelOptions, Role};
use tessera_runtime::enclave::{ServerHandle, serve_tcp};

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Where garbled material is stored (one file per garbling, deleted after use).
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
    circuit: Option<NetworkCircuit>,
    namespace: u64,
    idle: bool,
    writing: Option<(u64, std::io::BufWriter<std::fs::File>, PathBuf, u64)>,
}

impl Session<'_> {
    fn path(&self, slot: u64, part: bool) -> PathBuf {
        self.opts.store.join(format!(
            "{:016x}-{slot:016x}.{}",
            self.namespace,
            if part { "part" } else { "gc" }
        ))
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
                if self.writing.is_none() {
                    std::fs::create_dir_all(&self.opts.store)
                        .map_err(|e| store_err(&self.opts.store, e))?;
                    let p = self.path(slot, true);
                    let f = std::fs::File::create(&p).map_err(|e| store_err(&p, e))?;
                    self.writing = Some((slot, std::io::BufWriter::new(f), p, 0));
                }
                let Some((_, w, p, n)) = self.writing.as_mut() else {
                    return Err(GcError::Protocol("no garbling open".into()));
                };
                w.write_all(&data).map_err(|e| store_err(p, e))?;
                *n += data.len() as u64;
                if !last {
                    return Ok(None);
                }
                let Some((slot, w, p, n)) = self.writing.take() else {
                    return Err(GcError::Protocol("no garbling open".into()));
                };
                let f = w.into_inner().map_err(|e| store_err(&p, e.error()))?;
                f.sync_all().map_err(|e| store_err(&p, e))?;
                let done = self.path(slot, false);
                std::fs::rename(&p, &done).map_err(|e| store_err(&done, e))?;
                Ok(Some(FromWorker::Stored { slot, bytes: n }))
            }
            ToWorker::Evaluate { slot, labels } => {
                let circuit = self
                    .circuit
                    .as_ref()
                    .ok_or_else(|| GcError::Protocol("evaluate before setup".into()))?;
                let t0 = Instant::now();
                let path = self.path(slot, false);
                let input = InputLabels::from_bytes(&labels)?;
                // Streamed from disk: the material never has to fit in memory.
                let f = std::fs::File::open(&path).map_err(|e| store_err(&path, e))?;
                let out = evaluate(circuit, f, &input)?;
                let bytes = out.to_bytes()?;
                let _ = std::fs::remove_file(&path);
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
    let mut s = Session {
        opts,
        circuit: None,
        namespace: 0,
        idle: false,
        writing: None,
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
        match r {
            Ok(Some(reply)) => ch.send(&reply)?,
            Ok(None) => {}
            Err(e) => {
                ch.send_error(&e.to_string());
                break Err(e);
            }
        }
    };
    if let Some((_, _, p, _)) = s.writing.take() {
        let _ = std::fs::remove_file(p);
    }
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
