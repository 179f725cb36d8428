//! The gc scheme scaled out: garbled material in an object store ([`tessera_objstore`]),
//! evaluation requests dispatched to any number of workers through NATS JetStream
//! ([`tessera_queue`]).
//!
//! ```text
//! enclave                          store (S3 or a directory)         workers (any number)
//!   setup ─────────────────────▶  gc/<ns>/setup
//!   garble slot s (streamed) ──▶  gc/<ns>/<s>.gc
//!   request {ns, s, labels} ──▶  stream TESSERA_GC_EVAL ──(one worker)──▶ read gc/<ns>/<s>.gc,
//!                                                                          evaluate
//!   check, decode  ◀──────────── stream TESSERA_GC_OUT_<ns> ◀── result {ns, s, labels|error}
//!   delete gc/<ns>/<s>.gc                                                  then ack the request
//! ```
//!
//! **Exactly one answer per slot, kept by the enclave's bookkeeping** (not by the store): a
//! request is acknowledged only after its result is published, so a worker that dies before
//! that leaves the request to be delivered again to another worker after `ack_wait`; a worker
//! that dies after publishing, or one merely slower than `ack_wait`, makes a second result for
//! the same slot. The enclave accepts the first result of a slot it is waiting for — decoding
//! it with the output check — and refuses every later one (counted in
//! [`ClusterReport::duplicates_refused`]); a garbling's secrets are forgotten once its result
//! is accepted, and its material is then deleted from the store. Evaluating one garbling twice
//! on the same input labels shows a worker nothing new.
//!
//! **Threat model.** As for the scheme (crate documentation) with two more untrusted parties:
//! the store and the queue server. Neither receives anything secret — public circuit setup,
//! garbled material, the active input labels of a single-use garbling, output labels — and
//! whatever they damage, replace or replay is caught by the material's chunk checksums (an
//! accident) or by the output check (anything else): an error, never a wrong value. A result
//! for a slot the enclave does not wait for is dropped. They can withhold or delay work (denial
//! of service, out of scope).

use crate::GcError;
use crate::backend::{Compiled, GcOptions, check_input_range, compile};
use crate::worker::compile_public;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_garble::Seed;
use tessera_garble::network::{
    GarbleSecrets, InputLabels, NetworkCircuit, OutputLabels, decode, encode_input, evaluate,
    garble_with_progress,
};
use tessera_model::{Graph, Tensor};
use tessera_objstore::{Location, Objects, StoreError};
use tessera_queue::{Job, Queue, WorkOptions, WorkQueue};
use tessera_runtime::RuntimeError;
use tessera_runtime::cost::Footprint;
use tessera_runtime::enclave::InferBackend;
use tessera_runtime::protocol::OffloadCost;

/// The durable consumer all workers share.
pub const WORKERS: &str = "workers";

/// Stream and subject names of one deployment (`name` keeps deployments on one NATS server
/// apart): requests on `<NAME>_GC_EVAL` / `<name>.gc.eval`, each enclave's results on
/// `<NAME>_GC_OUT_<ns>` / `<name>.gc.out.<ns>`.
fn eval_stream(name: &str) -> String {
    format!("{}_GC_EVAL", name.to_ascii_uppercase())
}
fn eval_subject(name: &str) -> String {
    format!("{}.gc.eval", name.to_ascii_lowercase())
}
fn results_stream(name: &str, ns: u64) -> String {
    format!("{}_GC_OUT_{ns:016x}", name.to_ascii_uppercase())
}
fn results_subject(name: &str, ns: u64) -> String {
    format!("{}.gc.out.{ns:016x}", name.to_ascii_lowercase())
}
fn setup_key(ns: u64) -> String {
    format!("gc/{ns:016x}/setup")
}
fn material_key(ns: u64, slot: u64) -> String {
    format!("gc/{ns:016x}/{slot:016x}.gc")
}

/// Where the cluster's servers are and how long to wait.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The NATS server (`nats://host:port`).
    pub queue: String,
    /// The deployment's name (letters, digits, `_`): enclaves and workers of one deployment
    /// share it; `tessera` by default.
    pub name: String,
    /// The object store.
    pub store: Location,
    /// A request not acknowledged this long after a worker took it goes to another worker.
    pub ack_wait: Duration,
    /// How long the enclave waits for a batch's results.
    pub timeout: Duration,
}

/// What every worker compiles its public circuit from (written once per enclave namespace).
#[derive(Serialize, Deserialize)]
struct Setup {
    #[serde(with = "serde_bytes")]
    model_onnx: Vec<u8>,
    semantics: tessera_engine::Semantics,
    primes: u32,
    sign_bases: Vec<u8>,
}

/// Enclave → a worker.
#[derive(Serialize, Deserialize)]
struct EvalRequest {
    namespace: u64,
    slot: u64,
    #[serde(with = "serde_bytes")]
    labels: Vec<u8>,
}

/// A worker → the enclave.
#[derive(Serialize, Deserialize)]
struct EvalResult {
    namespace: u64,
    slot: u64,
    outcome: Result<Vec<u8>, String>,
    eval_ns: u64,
    worker: String,
}

/// Figures of an enclave's cluster use.
#[derive(Clone, Debug, Default)]
pub struct ClusterReport {
    /// Garblings written to the store.
    pub garbled: u64,
    /// Material bytes written per garbling (the last one).
    pub material_bytes: u64,
    /// Results accepted (one per inference answered).
    pub answered: u64,
    /// Results refused because their slot was already answered.
    pub duplicates_refused: u64,
    /// Results dropped as malformed or for a slot the enclave does not wait for.
    pub foreign_dropped: u64,
    /// Which worker answered each accepted result, by name: count.
    pub by_worker: HashMap<String, u64>,
}

struct Prepared {
    slot: u64,
    secrets: GarbleSecrets,
    garble_ns: u64,
    material: u64,
}

/// One inference's answer: the exact output and its cost, or why there is none.
pub type Answer = Result<(Tensor<i64>, OffloadCost), GcError>;

/// What the enclave remembers of a published request.
struct Waiting {
    index: usize,
    key: tessera_garble::network::OutputKey,
    cost: OffloadCost,
}

/// What garbling needs — the circuit, the store, the namespace, the slot counter — shared with
/// a background garbler.
struct Garbler {
    compiled: Compiled,
    store: Objects,
    namespace: u64,
    next_slot: AtomicU64,
}

impl Garbler {
    /// Garble one inference into the store (visible once complete).
    fn garble_one(&self) -> Result<Prepared, GcError> {
        let slot = self.next_slot.fetch_add(1, Ordering::SeqCst) + 1;
        let key = material_key(self.namespace, slot);
        let t0 = Instant::now();
        let mut w = self.store.writer(&key).map_err(store_err)?;
        let secrets =
            garble_with_progress(&self.compiled.circuit, &Seed::from_os(), &mut w, |_, _| {})?;
        let material = w.finish().map_err(store_err)?;
        Ok(Prepared {
            slot,
            secrets,
            garble_ns: t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
            material,
        })
    }
}

/// The enclave's side of a scaled-out gc deployment.
pub struct ClusterEnclave {
    g: Arc<Garbler>,
    queue: Queue,
    results: WorkQueue,
    name: String,
    ready: VecDeque<Prepared>,
    answered: HashSet<u64>,
    timeout: Duration,
    report: ClusterReport,
}

impl std::fmt::Debug for ClusterEnclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterEnclave({:016x})", self.g.namespace)
    }
}

impl ClusterEnclave {
    /// Compile `graph` (k and sign bases chosen as [`crate::GcBackend`] does), connect to the
    /// queue and the store, and write the setup every worker reads.
    pub fn start(graph: &Graph, opts: &GcOptions, c: &ClusterOptions) -> Result<Self, GcError> {
        check_name(&c.name)?;
        let compiled = compile(graph, opts)?;
        let store = Objects::open(&c.store).map_err(store_err)?;
        let queue = Queue::connect(&c.queue).map_err(queue_err)?;
        let namespace: u64 = rand::random();
        let wopts = WorkOptions {
            ack_wait: c.ack_wait,
            max_deliver: 5,
        };
        // The request stream exists before any request is published (workers may start later).
        queue
            .work_queue(
                &eval_stream(&c.name),
                &eval_subject(&c.name),
                WORKERS,
                &wopts,
            )
            .map_err(queue_err)?;
        let results = queue
            .work_queue(
                &results_stream(&c.name, namespace),
                &results_subject(&c.name, namespace),
                "enclave",
                &wopts,
            )
            .map_err(queue_err)?;
        let setup = Setup {
            model_onnx: compiled.public.clone(),
            semantics: opts.semantics.clone(),
            primes: compiled.range.primes as u32,
            sign_bases: compiled.sign_bases.clone(),
        };
        let bytes = postcard::to_allocvec(&setup)
            .map_err(|e| GcError::Protocol(format!("encoding the setup: {e}")))?;
        store
            .put(&setup_key(namespace), &bytes)
            .map_err(store_err)?;
        Ok(Self {
            g: Arc::new(Garbler {
                compiled,
                store,
                namespace,
                next_slot: AtomicU64::new(0),
            }),
            queue,
            results,
            name: c.name.clone(),
            ready: VecDeque::new(),
            answered: HashSet::new(),
            timeout: c.timeout,
            report: ClusterReport::default(),
        })
    }

    /// The enclave's namespace (its keys in the store, its result stream).
    pub fn namespace(&self) -> u64 {
        self.g.namespace
    }

    /// CRT primes k.
    pub fn primes(&self) -> usize {
        self.g.compiled.range.primes
    }

    /// The figures so far.
    pub fn report(&self) -> &ClusterReport {
        &self.report
    }

    /// The store key of a ready garbling's material (tests damage it through this).
    pub fn material_key(&self, slot: u64) -> String {
        material_key(self.g.namespace, slot)
    }

    /// Slots garbled and not yet used, oldest first.
    pub fn ready_slots(&self) -> Vec<u64> {
        self.ready.iter().map(|r| r.slot).collect()
    }

    /// Garble `n` more inferences into the store, ahead of their requests.
    pub fn garble(&mut self, n: usize) -> Result<(), GcError> {
        for _ in 0..n {
            let p = self.g.garble_one()?;
            self.add_ready(p);
        }
        Ok(())
    }

    fn add_ready(&mut self, p: Prepared) {
        self.report.material_bytes = p.material;
        self.report.garbled += 1;
        self.ready.push_back(p);
    }

    /// Infer a batch: one garbling per input (garbled now if none is ready), all requests
    /// published at once so the workers share them, results collected as they come. The exact
    /// integer outputs, in input order; an input out of range, a worker's error or a result
    /// that fails the output check is that input's error.
    pub fn infer_batch(&mut self, inputs: &[Tensor]) -> Vec<Result<Tensor<i64>, GcError>> {
        self.infer_batch_with_costs(inputs)
            .into_iter()
            .map(|r| r.map(|(y, _)| y))
            .collect()
    }

    /// [`Self::infer_batch`] with each inference's cost: request and result bytes through the
    /// queue, one round, the material it stored, its garbling time and the worker's time.
    pub fn infer_batch_with_costs(&mut self, inputs: &[Tensor]) -> Vec<Answer> {
        let mut out: Vec<Option<Answer>> = (0..inputs.len()).map(|_| None).collect();
        let mut waiting: HashMap<u64, Waiting> = HashMap::new();
        for (i, x) in inputs.iter().enumerate() {
            match self.request(x) {
                Ok((slot, key, cost)) => {
                    waiting.insert(
                        slot,
                        Waiting {
                            index: i,
                            key,
                            cost,
                        },
                    );
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let deadline = Instant::now() + self.timeout;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let job = match self.results.next(left.min(Duration::from_secs(1))) {
                Ok(Some(j)) => j,
                Ok(None) => continue,
                Err(e) => {
                    let msg = format!("work queue: {e}");
                    for (_, w) in waiting.drain() {
                        out[w.index] = Some(Err(GcError::Protocol(msg.clone())));
                    }
                    break;
                }
            };
            let result_bytes = job.payload().len() as u64;
            let parsed = postcard::from_bytes::<EvalResult>(job.payload()).ok();
            // A result is taken off the stream whatever it is: the enclave keeps the record.
            let _ = job.ack();
            let Some(r) = parsed.filter(|r| r.namespace == self.g.namespace) else {
                self.report.foreign_dropped += 1;
                continue;
            };
            let Some(Waiting {
                index: i,
                key,
                mut cost,
            }) = waiting.remove(&r.slot)
            else {
                if self.answered.contains(&r.slot) {
                    self.report.duplicates_refused += 1;
                } else {
                    self.report.foreign_dropped += 1;
                }
                continue;
            };
            self.answered.insert(r.slot);
            *self.report.by_worker.entry(r.worker.clone()).or_default() += 1;
            self.report.answered += 1;
            cost.bytes_from_worker = result_bytes;
            cost.worker_ns = r.eval_ns;
            let res = match r.outcome {
                Ok(labels) => OutputLabels::from_bytes(&labels)
                    .and_then(|l| decode(&key, &l))
                    .map(|y| (y, cost))
                    .map_err(GcError::from),
                Err(e) => Err(GcError::Protocol(format!(
                    "worker {} could not evaluate garbling {}: {e}",
                    r.worker, r.slot
                ))),
            };
            // Single use: the material goes whatever the outcome.
            let _ = self.g.store.delete(&material_key(self.g.namespace, r.slot));
            out[i] = Some(res);
        }
        for (slot, w) in waiting {
            // Never answered: refuse a late answer too.
            self.answered.insert(slot);
            out[w.index] = Some(Err(GcError::Protocol(format!(
                "no worker answered garbling {slot} within {:?} (are workers running on {}?)",
                self.timeout,
                self.queue.url()
            ))));
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(GcError::Protocol("no result".into()))))
            .collect()
    }

    /// One inference ([`Self::infer_batch`] of one).
    pub fn infer(&mut self, input: &Tensor) -> Result<Tensor<i64>, GcError> {
        self.infer_batch(std::slice::from_ref(input))
            .pop()
            .unwrap_or_else(|| Err(GcError::Protocol("no result".into())))
    }

    /// Encode `x` under a ready garbling and publish its request; returns the slot and the
    /// output key.
    fn request(
        &mut self,
        x: &Tensor,
    ) -> Result<(u64, tessera_garble::network::OutputKey, OffloadCost), GcError> {
        let q = self.g.compiled.quant.quantize_input(x)?;
        check_input_range(&q, self.g.compiled.range.input_limit)?;
        if self.ready.is_empty() {
            self.garble(1)?;
        }
        let Prepared {
            slot,
            secrets,
            garble_ns,
            material,
        } = self
            .ready
            .pop_front()
            .ok_or_else(|| GcError::Protocol("no garbling ready".into()))?;
        let (labels, key) = encode_input(secrets, &q)?;
        let req = EvalRequest {
            namespace: self.g.namespace,
            slot,
            labels: labels.to_bytes()?,
        };
        let bytes = postcard::to_allocvec(&req)
            .map_err(|e| GcError::Protocol(format!("encoding a request: {e}")))?;
        let cost = OffloadCost {
            scheme: "gc".into(),
            bytes_to_worker: bytes.len() as u64,
            rounds: 1,
            stored_bytes: material,
            offline_ns: garble_ns,
            enclave_bytes_kept: key.bytes_kept() as u64,
            ..OffloadCost::default()
        };
        self.queue
            .publish(&eval_subject(&self.name), bytes)
            .map_err(queue_err)?;
        Ok((slot, key, cost))
    }

    /// Delete the enclave's setup, unused material and result stream.
    pub fn close(self) -> Result<(), GcError> {
        for p in &self.ready {
            let _ = self.g.store.delete(&material_key(self.g.namespace, p.slot));
        }
        let _ = self.g.store.delete(&setup_key(self.g.namespace));
        self.queue
            .delete_stream(&results_stream(&self.name, self.g.namespace))
            .map_err(queue_err)
    }
}

/// A [`ClusterEnclave`] serving an enclave's clients: inferences one at a time per enclave
/// (the requests of several enclaves share the workers), while a background thread keeps
/// `pool` garblings ready in the store (it holds the enclave's lock only to add one).
pub struct ClusterBackend {
    inner: Arc<Mutex<ClusterEnclave>>,
    stop: Arc<AtomicBool>,
    refill: Mutex<Option<std::thread::JoinHandle<()>>>,
    footprint: Footprint,
}

fn lock(m: &Mutex<ClusterEnclave>) -> std::sync::MutexGuard<'_, ClusterEnclave> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterBackend {
    /// Start the enclave side, garble `pool` inferences ahead, and keep that many ready.
    pub fn start(
        graph: &Graph,
        opts: &GcOptions,
        c: &ClusterOptions,
        pool: usize,
    ) -> Result<Self, GcError> {
        let pool = pool.max(1);
        let mut e = ClusterEnclave::start(graph, opts, c)?;
        e.garble(pool)?;
        let f = Footprint::of(graph);
        let primes = e.primes() as u64;
        let g = e.g.clone();
        let inner = Arc::new(Mutex::new(e));
        let stop = Arc::new(AtomicBool::new(false));
        let refill = {
            let (inner, stop) = (inner.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tessera-gc-cluster-garbler".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if lock(&inner).ready.len() >= pool {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        match g.garble_one() {
                            Ok(p) => lock(&inner).add_ready(p),
                            Err(e) => {
                                eprintln!("gc cluster: garbling ahead failed: {e}; retrying");
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        }
                    }
                })
                .map_err(|e| GcError::Protocol(format!("starting the garbling thread: {e}")))?
        };
        Ok(Self {
            inner,
            stop,
            refill: Mutex::new(Some(refill)),
            footprint: Footprint {
                weight_bytes: f.weight_bytes,
                activation_bytes: f.activation_bytes / 8 * 16 * primes,
            },
        })
    }

    /// The figures so far.
    pub fn report(&self) -> ClusterReport {
        lock(&self.inner).report().clone()
    }
}

impl Drop for ClusterBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let h = self.refill.lock().ok().and_then(|mut r| r.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

impl InferBackend for ClusterBackend {
    fn scheme(&self) -> &'static str {
        "gc"
    }

    fn infer(&self, input: &Tensor) -> Result<(Tensor<i64>, OffloadCost), RuntimeError> {
        lock(&self.inner)
            .infer_batch_with_costs(std::slice::from_ref(input))
            .pop()
            .unwrap_or_else(|| Err(GcError::Protocol("no result".into())))
            .map_err(RuntimeError::from)
    }

    fn footprint(&self) -> Footprint {
        self.footprint
    }
}

fn check_name(name: &str) -> Result<(), GcError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(GcError::Protocol(format!(
            "deployment name '{name}': 1 to 64 letters, digits or '_'"
        )));
    }
    Ok(())
}

fn store_err(e: StoreError) -> GcError {
    GcError::Store {
        path: "object store".into(),
        reason: e.to_string(),
    }
}

fn queue_err(e: tessera_queue::QueueError) -> GcError {
    GcError::Protocol(format!("work queue: {e}"))
}

/// Figures of a worker's run.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    /// Requests evaluated and answered.
    pub evaluated: u64,
    /// Requests answered with an error (material missing or damaged).
    pub failed: u64,
    /// Requests given back for a transient store error.
    pub returned: u64,
    /// Malformed requests dropped.
    pub malformed: u64,
    /// Requests this worker got on a second or later delivery (another worker had let them go).
    pub redelivered: u64,
}

/// What a worker did with one delivered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Evaluated (or found unevaluable) and answered on the enclave's result stream: acknowledge
    /// the request now.
    Answered,
    /// The store was unreachable: give the request back for later (`nak`).
    Returned,
    /// Not a request: acknowledge it so it goes away.
    Malformed,
}

/// One worker's connections and compiled circuits.
pub struct ClusterWorker {
    deployment: String,
    name: String,
    store: Objects,
    queue: Queue,
    requests: WorkQueue,
    circuits: HashMap<u64, NetworkCircuit>,
    report: WorkerReport,
}

impl ClusterWorker {
    /// Connect to the store and the queue (creating the request stream if missing).
    pub fn connect(c: &ClusterOptions, name: &str) -> Result<Self, GcError> {
        check_name(&c.name)?;
        let store = Objects::open(&c.store).map_err(store_err)?;
        let queue = Queue::connect(&c.queue).map_err(queue_err)?;
        let requests = queue
            .work_queue(
                &eval_stream(&c.name),
                &eval_subject(&c.name),
                WORKERS,
                &WorkOptions {
                    ack_wait: c.ack_wait,
                    max_deliver: 5,
                },
            )
            .map_err(queue_err)?;
        Ok(Self {
            deployment: c.name.clone(),
            name: name.into(),
            store,
            queue,
            requests,
            circuits: HashMap::new(),
            report: WorkerReport::default(),
        })
    }

    /// The next request, waiting up to `wait`.
    pub fn next_job(&self, wait: Duration) -> Result<Option<Job>, GcError> {
        self.requests.next(wait).map_err(queue_err)
    }

    /// Handle one delivered request: read its garbling from the store as a stream, evaluate
    /// it and publish the result (or the reason there is none) to its enclave. The caller
    /// then acknowledges it ([`Handled::Answered`], [`Handled::Malformed`]) or gives it back
    /// ([`Handled::Returned`]); a worker that dies in between leaves it to be redelivered.
    pub fn answer(&mut self, job: &Job) -> Result<Handled, GcError> {
        let Ok(req) = postcard::from_bytes::<EvalRequest>(job.payload()) else {
            self.report.malformed += 1;
            return Ok(Handled::Malformed);
        };
        if job.delivered() > 1 {
            self.report.redelivered += 1;
        }
        let t0 = Instant::now();
        let outcome = match evaluate_request(&self.store, &mut self.circuits, &req) {
            Ok(labels) => Ok(labels),
            Err(Transient(e)) => {
                eprintln!(
                    "gc worker {}: {e}; garbling {} goes back to the queue",
                    self.name, req.slot
                );
                self.report.returned += 1;
                return Ok(Handled::Returned);
            }
            Err(Permanent(e)) => Err(e),
        };
        if outcome.is_ok() {
            self.report.evaluated += 1;
        } else {
            self.report.failed += 1;
        }
        let result = EvalResult {
            namespace: req.namespace,
            slot: req.slot,
            outcome,
            eval_ns: t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64,
            worker: self.name.clone(),
        };
        let bytes = postcard::to_allocvec(&result)
            .map_err(|e| GcError::Protocol(format!("encoding a result: {e}")))?;
        self.queue
            .publish(&results_subject(&self.deployment, req.namespace), bytes)
            .map_err(queue_err)?;
        Ok(Handled::Answered)
    }

    /// The figures so far.
    pub fn report(&self) -> &WorkerReport {
        &self.report
    }
}

/// A worker of the cluster: takes requests from the shared queue until `stop` is set (or
/// `max_jobs` requests were answered), answers each ([`ClusterWorker::answer`]), then
/// acknowledges it.
pub fn run_cluster_worker(
    c: &ClusterOptions,
    name: &str,
    stop: &AtomicBool,
    max_jobs: Option<u64>,
) -> Result<WorkerReport, GcError> {
    let mut w = ClusterWorker::connect(c, name)?;
    while !stop.load(Ordering::SeqCst)
        && max_jobs.is_none_or(|m| w.report.evaluated + w.report.failed < m)
    {
        let Some(job) = w.next_job(Duration::from_millis(500))? else {
            continue;
        };
        match w.answer(&job)? {
            Handled::Answered | Handled::Malformed => job.ack().map_err(queue_err)?,
            Handled::Returned => {
                let _ = job.nak();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    Ok(w.report)
}

enum Failure {
    /// Try again later (the store is unreachable).
    Transient(String),
    /// Answer with this error (material missing or damaged, a bad request).
    Permanent(String),
}
use Failure::{Permanent, Transient};

fn evaluate_request(
    store: &Objects,
    circuits: &mut HashMap<u64, NetworkCircuit>,
    req: &EvalRequest,
) -> Result<Vec<u8>, Failure> {
    let classify = |e: StoreError| match e {
        StoreError::NotFound(..) | StoreError::Key(..) | StoreError::Short(..) => {
            Permanent(e.to_string())
        }
        e => Transient(e.to_string()),
    };
    let circuit = match circuits.entry(req.namespace) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let bytes = store.get(&setup_key(req.namespace)).map_err(classify)?;
            let s: Setup = postcard::from_bytes(&bytes)
                .map_err(|e| Permanent(format!("a malformed setup: {e}")))?;
            v.insert(
                compile_public(&s.model_onnx, &s.semantics, s.primes, &s.sign_bases)
                    .map_err(|e| Permanent(e.to_string()))?,
            )
        }
    };
    let input = InputLabels::from_bytes(&req.labels).map_err(|e| Permanent(e.to_string()))?;
    // Opening the reader asks the store for the object's size: an unreachable store is
    // transient (the request goes back to the queue); an error once the stream is under way is
    // reported as the evaluation's error.
    let reader = store
        .reader(&material_key(req.namespace, req.slot))
        .map_err(classify)?;
    let out = evaluate(circuit, reader, &input).map_err(|e| Permanent(e.to_string()))?;
    out.to_bytes().map_err(|e| Permanent(e.to_string()))
}
