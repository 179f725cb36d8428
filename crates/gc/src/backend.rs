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
use tessera_engine::quant::{NodeWidth, static_widths};
use tessera_engine::{ExactModel, Semantics};
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
///
/// **Soundness.** Garbled wires cannot detect a CRT wrap-around: a value outside the range of k
/// primes becomes a wrong output label that is nevertheless *valid*, so the output check cannot
/// see it. The backend therefore uses a k below the sound bound (the worst case for every
/// input with |x| ≤ `input_range`) only with an explicit [`Calibration`], marks such a backend
/// ([`GcStats::calibrated`]), and refuses every input whose quantized value lies outside the
/// range k was chosen for.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// The integer semantics (power-of-two fixed point, or v2, whose saturation makes the sound
    /// k small and independent of `input_range`).
    pub semantics: Semantics,
    /// CRT primes k; `None`: the smallest sound k (or, with a calibration, the smallest k for
    /// the calibrated widths). A fixed k below that bound is refused.
    pub primes: Option<usize>,
    /// Largest |input| accepted (in real units); the sound k holds every input up to it, and
    /// the enclave refuses any input beyond it.
    pub input_range: f32,
    /// Extra bits of range when choosing k.
    pub margin_bits: u32,
    /// Opt-in: choose k from widths measured on the user's data instead of the worst case.
    /// Not sound: an input that drives a value past the calibrated range wraps undetected.
    pub calibration: Option<Calibration>,
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
            semantics: Semantics::default(),
            primes: None,
            input_range: 255.0,
            margin_bits: 0,
            calibration: None,
            pool: 2,
            overlap: true,
        }
    }
}

/// Widths measured on a user's data, for a calibrated (not sound) choice of k.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// Per-node widths (the input first), the maximum over the data
    /// (`tessera_engine::quant::merge_widths` of `IntRun::widths`).
    pub widths: Vec<NodeWidth>,
    /// Bits of range added above the measured widths.
    pub margin_bits: u32,
    /// What the widths were measured on, for reports ("mnist:500").
    pub source: String,
}

/// The label every output of a calibrated backend carries.
pub const CALIBRATED_LABEL: &str = "calibrated, not sound";

/// How k was chosen, and what range the enclave enforces on inputs.
#[derive(Clone, Debug)]
pub(crate) struct RangeChoice {
    pub(crate) primes: usize,
    /// The smallest sound k, when one exists within the basis.
    pub(crate) sound_primes: Option<usize>,
    /// Largest |quantized input| accepted.
    pub(crate) input_limit: u64,
    /// Set when k is below the sound bound: where the widths came from.
    pub(crate) calibrated: Option<String>,
}

/// The k asked for (`--gc-primes`), or `bound` when none was; below `bound` is refused.
fn fixed_or(opts: &GcOptions, bound: usize) -> Result<usize, GcError> {
    let primes = opts.primes.unwrap_or(bound);
    if primes < bound {
        return Err(GcError::UnsoundPrimes {
            primes,
            sound: bound,
        });
    }
    Ok(primes)
}

/// Chooses k (see [`GcOptions`]): sound unless a calibration is given and k falls below the
/// sound bound; a fixed k below the applicable bound is an error.
fn choose_range(
    probe: &NetworkCircuit,
    model: &ExactModel,
    opts: &GcOptions,
) -> Result<RangeChoice, GcError> {
    let quant = match model {
        ExactModel::Pow2(q) => q,
        ExactModel::V2(m) => {
            if opts.calibration.is_some() {
                return Err(GcError::Protocol(
                    "a calibrated CRT range applies to the power-of-two semantics only; under v2 \
                     every activation saturates and the sound k is already the small one"
                        .into(),
                ));
            }
            // Every input saturates into the input interval, so the bound holds for all inputs.
            let limit = m.input_quant()?.max_abs();
            let bound = probe
                .sound_primes_with_margin(limit, opts.margin_bits)
                .map_err(crate::no_sound_range)?;
            return Ok(RangeChoice {
                primes: fixed_or(opts, bound)?,
                sound_primes: Some(bound),
                input_limit: u64::try_from(limit).unwrap_or(u64::MAX),
                calibrated: None,
            });
        }
    };
    let sound = static_widths(quant, opts.input_range)?;
    let sound_limit = sound.first().map_or(0, |w| w.out_max);
    let sound_primes = probe.primes_needed(&sound, opts.margin_bits).ok();
    let Some(cal) = &opts.calibration else {
        let bound = match sound_primes {
            Some(b) => b,
            None => {
                return Err(probe
                    .primes_needed(&sound, opts.margin_bits)
                    .map_or_else(crate::no_sound_range, |_| {
                        GcError::Protocol("no sound CRT range".into())
                    }));
            }
        };
        return Ok(RangeChoice {
            primes: fixed_or(opts, bound)?,
            sound_primes,
            input_limit: u64::try_from(sound_limit).unwrap_or(u64::MAX),
            calibrated: None,
        });
    };
    let cal_bound = probe.primes_needed(&cal.widths, cal.margin_bits)?;
    let primes = fixed_or(opts, cal_bound)?;
    let is_sound = sound_primes.is_some_and(|b| primes >= b);
    // Inputs beyond what the calibration saw (or beyond the stated range) are refused too.
    let seen = cal.widths.first().map_or(0, |w| w.out_max);
    let limit = if is_sound {
        sound_limit
    } else {
        seen.min(sound_limit)
    };
    Ok(RangeChoice {
        primes,
        sound_primes,
        input_limit: u64::try_from(limit).unwrap_or(u64::MAX),
        calibrated: (!is_sound).then(|| cal.source.clone()),
    })
}

/// Figures of the backend, for reports.
#[derive(Clone, Debug, Default)]
pub struct GcStats {
    /// CRT primes k.
    pub primes: usize,
    /// The smallest sound k for the stated input range (`None`: beyond the basis).
    pub sound_primes: Option<usize>,
    /// Set when k is below the sound bound (a calibrated backend): what it was calibrated on.
    /// Every output of such a backend is "calibrated, not sound".
    pub calibrated: Option<String>,
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
    kept: u64,
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
    range: RangeChoice,
    quant: ExactModel,
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
    semantics: &Semantics,
    primes: usize,
    sign_bases: &[u8],
    namespace: u64,
) -> Result<String, GcError> {
    ch.handshake(Role::Enclave, &[Role::Worker])?;
    ch.send(&ToWorker::Setup {
        model_onnx: model_onnx.to_vec(),
        semantics: semantics.clone(),
        primes: primes as u32,
        sign_bases: sign_bases.to_vec(),
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
    let counters = ch.counters();
    let (sent0, _, _) = counters.snapshot();
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
    // What the worker must keep is what the enclave sent it for this slot, counted on the
    // enclave's side of the channel (the worker's own figure is not used).
    let (sent1, _, _) = counters.snapshot();
    match ch.recv::<FromWorker>()? {
        FromWorker::Stored { slot: s, .. } if s == slot => Ok(Ready {
            slot,
            kept: secrets.bytes_kept() as u64,
            secrets,
            garble_ns,
            stored: sent1.saturating_sub(sent0),
        }),
        _ => Err(GcError::Protocol(
            "the worker did not confirm storing the garbling".into(),
        )),
    }
}

/// What the enclave derives from the model before it garbles: the integer model, k and the
/// input limit, the circuit with its sign bases, and the public model the worker compiles.
pub(crate) struct Compiled {
    pub(crate) quant: ExactModel,
    pub(crate) range: RangeChoice,
    pub(crate) circuit: NetworkCircuit,
    pub(crate) sign_bases: Vec<u8>,
    pub(crate) public: Vec<u8>,
}

/// Compile `graph` for the enclave: choose k (see [`GcOptions`]) and, under v2, the sign bases.
pub(crate) fn compile(graph: &Graph, opts: &GcOptions) -> Result<Compiled, GcError> {
    let quant = ExactModel::new(graph, &opts.semantics)?;
    let probe = NetworkCircuit::compile_exact(&quant, 2)?;
    let range = choose_range(&probe, &quant, opts)?;
    let circuit = probe.with_primes(range.primes)?;
    // Under v2 every sign gadget runs over just enough primes for the values it resolves
    // (sound for every input, like k); pow2 keeps every sign over all k.
    let sign_bases = match &quant {
        ExactModel::V2(_) => circuit.sign_bases(u128::from(range.input_limit))?,
        ExactModel::Pow2(_) => Vec::new(),
    };
    let circuit = circuit.with_sign_bases(&sign_bases)?;
    let public = export_model(&public_model(graph))?;
    Ok(Compiled {
        quant,
        range,
        circuit,
        sign_bases,
        public,
    })
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
        let Compiled {
            quant,
            range,
            circuit,
            sign_bases,
            public,
        } = compile(graph, opts)?;
        let primes = range.primes;
        let mut off = Channel::new(offline, channel)?;
        let mut on = Channel::new(online, channel)?;
        let namespace: u64 = rand::random();
        let device = setup(
            &mut off,
            &public,
            &opts.semantics,
            primes,
            &sign_bases,
            namespace,
        )?;
        setup(
            &mut on,
            &public,
            &opts.semantics,
            primes,
            &sign_bases,
            namespace,
        )?;
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
                            p.kept = ready.kept;
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
            range,
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
            primes: self.range.primes,
            sound_primes: self.range.sound_primes,
            calibrated: self.range.calibrated.clone(),
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

    /// One inference with the scheme's own error type (the [`InferBackend`] impl flattens it
    /// into a runtime error for the client): the exact integer output at scale 2^f and its
    /// offload cost. Refuses an input outside the range k was chosen for before spending a
    /// garbling; any output label that is not valid is an error, never a value.
    pub fn infer_checked(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), GcError> {
        let r = self.infer_once(input);
        if let Ok(mut p) = self.shared.pool.lock() {
            p.in_flight = p.in_flight.saturating_sub(1);
        }
        self.shared.changed.notify_all();
        r
    }

    fn infer_once(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), GcError> {
        let x = self.quant.quantize_input(input)?;
        // Before a garbling is spent: every value must lie in the range k was chosen for, or it
        // could wrap in CRT and come back as a valid but wrong output.
        check_input_range(&x, self.range.input_limit)?;
        let ready = self.take_ready()?;
        let Ready {
            slot: ready_slot,
            secrets,
            garble_ns,
            stored,
            ..
        } = ready;
        let (labels, key) = encode_input(secrets, &x)?;
        let labels = labels.to_bytes()?;
        let mut ch = self
            .online
            .lock()
            .map_err(|_| GcError::Protocol("online channel lock poisoned".into()))?;
        let counters = ch.counters();
        let (s0, r0, n0) = counters.snapshot();
        ch.send(&ToWorker::Evaluate {
            slot: ready_slot,
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
        if slot != ready_slot {
            return Err(GcError::Protocol(format!(
                "the worker answered for garbling {slot}, not {ready_slot}"
            )));
        }
        let out = OutputLabels::from_bytes(&out)?;
        let y = decode(&key, &out)?;
        Ok((
            y,
            OffloadCost {
                scheme: "gc".into(),
                bytes_to_worker: s1 - s0,
                bytes_from_worker: r1 - r0,
                rounds: n1 - n0,
                stored_bytes: stored,
                offline_ns: garble_ns,
                worker_ns: eval_ns,
                enclave_bytes_kept: key.bytes_kept() as u64,
                trusted_macs: 0,
            },
        ))
    }
}

/// Errors unless every value of `x` has |v| ≤ `limit`. The comparison is made on every value
/// (no early exit), so its time does not depend on where an outlier sits.
pub(crate) fn check_input_range(x: &Tensor<i64>, limit: u64) -> Result<(), GcError> {
    let widest = x.data().iter().fold(0u64, |m, v| m.max(v.unsigned_abs()));
    if widest > limit {
        return Err(GcError::InputOutOfRange { widest, limit });
    }
    Ok(())
}

impl InferBackend for GcBackend {
    fn scheme(&self) -> &'static str {
        "gc"
    }
    fn infer(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), RuntimeError> {
        self.infer_checked(input).map_err(RuntimeError::from)
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
