//! The enclave's side: a pool of garblings prepared ahead of time, and one online round trip
//! per inference.

use crate::messages::{FromWorker, ToWorker};
use crate::{GcError, public_model};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tessera_engine::quant::{QuantConfig, QuantModel, static_widths};
use tessera_garble::Seed;
use tessera_garble::network::{
    GarbleSecrets, NetworkCircuit, OutputLabels, decode, encode_input, garble_with_progress,
};
use tessera_model::export::export_model;
use tessera_model::{Graph, Tensor};
use tessera_runtime::channel::{Channel, Role};
use tessera_runtime::cost::Footprint;
use tessera_runtime::enclave::InferBackend;
use tessera_runtime::protocol::OffloadCost;
use tessera_runtime::{RuntimeError, Transport};

/// Options of the enclave's gc backend.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Fixed-point parameters.
    pub quant: QuantConfig,
    /// CRT primes k; `None`: the smallest k that holds every worst-case width for inputs with
    /// |x| ≤ `input_range` (plus `margin_bits`).
    pub primes: Option<usize>,
    /// Largest |input| assumed when choosing k.
    pub input_range: f32,
    /// Extra bits of range when choosing k.
    pub margin_bits: u32,
    /// Garblings kept ready on the worker.
    pub pool: usize,
    /// Garble the next inference while one is being evaluated (the deployment default: the
    /// enclave and the worker are different machines). Off for benchmarks on one machine, so
    /// that online time is not shared with garbling.
    pub overlap: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            quant: QuantConfig::default(),
            primes: None,
            input_range: 255.0,
            margin_bits: 0,
            pool: 2,
            overlap: true,
        }
    }
}

/// Figures of the backend, for reports.
#[derive(Clone, Debug, Default)]
pub struct GcStats {
    /// CRT primes k.
    pub primes: usize,
    /// Garbled material per inference, bytes.
    pub material_bytes: u64,
    /// Bytes the enclave keeps per ready garbling.
    pub kept_bytes: u64,
    /// Median garbling time so far.
    pub garble_ms: f64,
    /// What the worker computes on.
    pub worker_device: String,
}

struct Ready {
    slot: u64,
    secrets: GarbleSecrets,
    garble_ns: u64,
    stored: u64,
}

struct Pool {
    ready: VecDeque<Ready>,
    in_flight: usize,
    error: Option<String>,
    garble_ns: Vec<u64>,
    material: u64,
    kept: u64,
}

struct Shared {
    pool: Mutex<Pool>,
    changed: Condvar,
    stop: AtomicBool,
    /// Progress of the garbling under way: steps done, steps in all, garblings finished.
    steps_done: AtomicUsize,
    steps_total: AtomicUsize,
    garbled: AtomicUsize,
}

/// Progress of the background garbler, for a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GarbleProgress {
    /// Circuit steps done in the garbling under way.
    pub steps_done: usize,
    /// Steps of one garbling.
    pub steps_total: usize,
    /// Garblings finished so far.
    pub garbled: usize,
}

/// The gc scheme's enclave side. See the crate documentation.
pub struct GcBackend {
    circuit_primes: usize,
    quant: QuantModel,
    online: Mutex<Channel>,
    shared: Arc<Shared>,
    refill: Mutex<Option<JoinHandle<()>>>,
    device: String,
    footprint: Footprint,
}

/// A `Write` that sends garbled material to the worker in pieces.
struct MaterialSink<'a> {
    ch: &'a mut Channel,
    slot: u64,
    buf: Vec<u8>,
}

const PIECE: usize = 4 << 20;

impl Write for MaterialSink<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIECE {
            let data = std::mem::take(&mut self.buf);
            self.ch
                .send(&ToWorker::Material {
                    slot: self.slot,
                    data,
                    last: false,
                })
                .map_err(std::io::Error::other)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn setup(
    ch: &mut Channel,
    model_onnx: &[u8],
    frac_bits: u32,
    primes: usize,
    namespace: u64,
) -> Result<String, GcError> {
    ch.handshake(Role::Enclave, &[Role::Worker])?;
    ch.send(&ToWorker::Setup {
        model_onnx: model_onnx.to_vec(),
        frac_bits,
        primes: primes as u32,
        namespace,
    })?;
    let ready = ch.recv::<FromWorker>()?;
    // Garbling and evaluating a large network can take long; the pool can sit idle.
    ch.set_deadline(Some(tessera_runtime::channel::IDLE_DEADLINE))?;
    match ready {
        FromWorker::Ready { device } => Ok(device),
        _ => Err(GcError::Protocol(
            "the worker did not confirm the setup".into(),
        )),
    }
}

/// Garble one inference's circuit into the worker's store.
fn prepare(
    circuit: &NetworkCircuit,
    ch: &mut Channel,
    slot: u64,
    sh: &Shared,
) -> Result<Ready, GcError> {
    let t0 = Instant::now();
    let mut sink = MaterialSink {
        ch,
        slot,
        buf: Vec::with_capacity(PIECE),
    };
    let secrets = garble_with_progress(circuit, &Seed::from_os(), &mut sink, |done, total| {
        sh.steps_done.store(done, Ordering::Relaxed);
        sh.steps_total.store(total, Ordering::Relaxed);
    })?;
    let data = std::mem::take(&mut sink.buf);
    ch.send(&ToWorker::Material {
        slot,
        data,
        last: true,
    })?;
    let garble_ns = t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    match ch.recv::<FromWorker>()? {
        FromWorker::Stored { slot: s, bytes } if s == slot => Ok(Ready {
            slot,
            secrets,
            garble_ns,
            stored: bytes,
        }),
        _ => Err(GcError::Protocol(
            "the worker did not confirm storing the garbling".into(),
        )),
    }
}

impl GcBackend {
    /// Compile `graph`, connect to the worker twice (offline: material; online: evaluation),
    /// and start keeping `opts.pool` garblings ready.
    pub fn start<T: Transport + 'static>(
        graph: &Graph,
        opts: &GcOptions,
        offline: T,
        online: T,
        channel: tessera_runtime::ChannelOptions,
    ) -> Result<Self, GcError> {
        let quant = QuantModel::new(graph, opts.quant)?;
        let probe = NetworkCircuit::compile(graph, opts.quant, 2)?;
        let primes = match opts.primes {
            Some(k) => k,
            None => {
                let widths = static_widths(&quant, opts.input_range)?;
                probe.primes_needed(&widths, opts.margin_bits)?
            }
        };
        let circuit = probe.with_primes(primes)?;
        let public = export_model(&public_model(graph))?;
        let mut off = Channel::new(offline, channel)?;
        let mut on = Channel::new(online, channel)?;
        let namespace: u64 = rand::random();
        let device = setup(&mut off, &public, opts.quant.frac_bits, primes, namespace)?;
        setup(&mut on, &public, opts.quant.frac_bits, primes, namespace)?;
        let shared = Arc::new(Shared {
            pool: Mutex::new(Pool {
                ready: VecDeque::new(),
                in_flight: 0,
                error: None,
                garble_ns: Vec::new(),
                material: 0,
                kept: 0,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            steps_done: AtomicUsize::new(0),
            steps_total: AtomicUsize::new(0),
            garbled: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        let target = opts.pool.max(1);
        let overlap = opts.overlap;
        let refill = std::thread::Builder::new()
            .name("tessera-gc-garbler".into())
            .spawn(move || {
                let mut slot = 0u64;
                loop {
                    {
                        let Ok(mut p) = sh.pool.lock() else { return };
                        while (p.ready.len() >= target || (!overlap && p.in_flight > 0))
                            && !sh.stop.load(Ordering::SeqCst)
                        {
                            p = match sh.changed.wait(p) {
                                Ok(p) => p,
                                Err(_) => return,
                            };
                        }
                    }
                    if sh.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    slot += 1;
                    let r = prepare(&circuit, &mut off, slot, &sh);
                    sh.garbled
                        .fetch_add(usize::from(r.is_ok()), Ordering::Relaxed);
                    let Ok(mut p) = sh.pool.lock() else { return };
                    match r {
                        Ok(ready) => {
                            p.garble_ns.push(ready.garble_ns);
                            p.material = ready.stored;
                            p.kept = ready.secrets.bytes_kept() as u64;
                            p.ready.push_back(ready);
                        }
                        Err(e) => {
                            p.error = Some(e.to_string());
                            sh.changed.notify_all();
                            return;
                        }
                    }
                    sh.changed.notify_all();
                }
            })
            .map_err(|e| GcError::Protocol(format!("starting the garbling thread: {e}")))?;
        let footprint = Footprint {
            weight_bytes: Footprint::of(graph).weight_bytes,
            // Garbling streams one projection batch at a time; the enclave holds about one
            // layer's labels (k tensors of 16-byte compressed labels for the widest layer).
            activation_bytes: Footprint::of(graph).activation_bytes / 8 * 16 * primes as u64,
        };
        Ok(Self {
            circuit_primes: primes,
            quant,
            online: Mutex::new(on),
            shared,
            refill: Mutex::new(Some(refill)),
            device,
            footprint,
        })
    }

    /// Current figures.
    pub fn stats(&self) -> GcStats {
        let (garble_ms, material, kept) = match self.shared.pool.lock() {
            Ok(p) => {
                let mut v: Vec<f64> = p.garble_ns.iter().map(|&n| n as f64 / 1e6).collect();
                v.sort_by(f64::total_cmp);
                (
                    v.get(v.len() / 2).copied().unwrap_or(0.0),
                    p.material,
                    p.kept,
                )
            }
            Err(_) => (0.0, 0, 0),
        };
        GcStats {
            primes: self.circuit_primes,
            material_bytes: material,
            kept_bytes: kept,
            garble_ms,
            worker_device: self.device.clone(),
        }
    }

    /// Progress of the background garbler.
    pub fn progress(&self) -> GarbleProgress {
        GarbleProgress {
            steps_done: self.shared.steps_done.load(Ordering::Relaxed),
            steps_total: self.shared.steps_total.load(Ordering::Relaxed),
            garbled: self.shared.garbled.load(Ordering::Relaxed),
        }
    }

    /// Wait up to `timeout` until the pool holds a garbling (for benchmarks that separate
    /// offline from online time).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), GcError> {
        let p = self
            .shared
            .pool
            .lock()
            .map_err(|_| GcError::Protocol("pool lock poisoned".into()))?;
        let (p, _) = self
            .shared
            .changed
            .wait_timeout_while(p, timeout, |p| p.ready.is_empty() && p.error.is_none())
            .map_err(|_| GcError::Protocol("pool lock poisoned".into()))?;
        match &p.error {
            Some(e) => Err(GcError::Protocol(format!("garbling failed: {e}"))),
            None => Ok(()),
        }
    }

    fn take_ready(&self) -> Result<Ready, GcError> {
        let p = self
            .shared
            .pool
            .lock()
            .map_err(|_| GcError::Protocol("pool lock poisoned".into()))?;
        let mut p = self
            .shared
            .changed
            .wait_while(p, |p| p.ready.is_empty() && p.error.is_none())
            .map_err(|_| GcError::Protocol("pool lock poisoned".into()))?;
        let r = p.ready.pop_front();
        if r.is_some() {
            p.in_flight += 1;
        }
        self.shared.changed.notify_all();
        match (r, &p.error) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(GcError::Protocol(format!("garbling failed: {e}"))),
            (None, None) => Err(GcError::Protocol("no garbling ready".into())),
        }
    }

    fn infer_gc(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), GcError> {
        let r = self.infer_once(input);
        if let Ok(mut p) = self.shared.pool.lock() {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
        self.shared.changed.notify_all();
        r
    }

    fn infer_once(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), GcError> {
        let x = self
            .quant
            .quantize_inputs(std::slice::from_ref(input))?
            .into_iter()
            .next()
            .ok_or_else(|| GcError::Protocol("no input".into()))?;
        let ready = self.take_ready()?;
        let labels = encode_input(&ready.secrets, &x)?.to_bytes()?;
        let mut ch = self
            .online
            .lock()
            .map_err(|_| GcError::Protocol("online channel lock poisoned".into()))?;
        let counters = ch.counters();
        let (s0, r0, n0) = counters.snapshot();
        ch.send(&ToWorker::Evaluate {
            slot: ready.slot,
            labels,
        })?;
        let (slot, out, eval_ns) = match ch.recv::<FromWorker>()? {
            FromWorker::Output {
                slot,
                labels,
                eval_ns,
            } => (slot, labels, eval_ns),
            _ => return Err(GcError::Protocol("expected output labels".into())),
        };
        let (s1, r1, n1) = counters.snapshot();
        drop(ch);
        if slot != ready.slot {
            return Err(GcError::Protocol(format!(
                "the worker answered for garbling {slot}, not {}",
                ready.slot
            )));
        }
        let out = OutputLabels::from_bytes(&out)?;
        let y = decode(&ready.secrets, &out)?;
        Ok((
            y,
            OffloadCost {
                scheme: "gc".into(),
                bytes_to_worker: s1 - s0,
                bytes_from_worker: r1 - r0,
                rounds: n1 - n0,
                stored_bytes: ready.stored,
                offline_ns: ready.garble_ns,
                worker_ns: eval_ns,
                enclave_bytes_kept: ready.secrets.bytes_kept() as u64,
                trusted_macs: 0,
            },
        ))
    }
}

impl InferBackend for GcBackend {
    fn scheme(&self) -> &'static str {
        "gc"
    }
    fn infer(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), RuntimeError> {
        self.infer_gc(input).map_err(RuntimeError::from)
    }
    fn footprint(&self) -> Footprint {
        self.footprint
    }
}

impl GcBackend {
    /// Stop garbling ahead (waits for a garbling under way to finish). Inferences after this
    /// use only the garblings already ready.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let handle = self.refill.lock().ok().and_then(|mut r| r.take());
        if let Some(j) = handle {
            let _ = j.join();
        }
    }
}

impl Drop for GcBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}
