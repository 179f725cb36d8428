//! A malicious worker against the enclave's output check.
//!
//! The adversary here is a worker of its own, written only against what a real worker holds: the
//! public circuit, the garbled material, the input labels, and the documented wire formats. It
//! recomputes every CRC it breaks, rewrites garbling ids, answers for the slot it was asked
//! about and keeps tensor counts, moduli and shapes, so the structural checks of the stream
//! reader, the label parser and the enclave all pass. What stops each attack is the decoder's
//! check of every output label against the digests of the valid ones, and every test asserts
//! exactly that error: [`GarbleError::InvalidOutputLabel`]. (With that check removed, each
//! attack decodes to a value and its test fails.)

mod tamper;

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tamper::tamper_tables;
use tessera_engine::quant::QuantConfig;
use tessera_garble::network::{InputLabels, NetworkCircuit, OutputLabels, evaluate};
use tessera_garble::{GarbleError, LabelTensor};
use tessera_gc::{FromWorker, GcBackend, GcError, GcOptions, ToWorker};
use tessera_model::{Graph, ImportOptions, Tensor, builders, import_model};
use tessera_runtime::ChannelOptions;
use tessera_runtime::channel::{Channel, Role};
use tessera_runtime::enclave::{ServerHandle, serve_tcp};

/// What the adversary does with each evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// Shift every table row of the middle tables chunk by one (still an element of Z_{q^n})
    /// and fix that chunk's CRC, then evaluate honestly.
    TamperedTables,
    /// Answer with the previous request's output labels, relabelled with the current
    /// garbling's id (header CRC fixed).
    ReplayRelabelled,
    /// Evaluate the previous (kept) garbling: relabel the new input labels with its id, evaluate
    /// the old material, relabel the output with the new id.
    OldGarbling,
    /// Replace every output digit with a random digit below its modulus, keep the container.
    RandomDigits,
    /// Two enclaves, one worker: answer each with the other's output labels, relabelled.
    SwapBetweenRequests,
}

/// State shared by the adversary's connections (the swap attack pairs two of them).
#[derive(Default)]
struct Mailbox {
    waiting: Vec<(u64, Vec<u8>)>,
    swapped: HashMap<u64, Vec<u8>>,
}

struct Adversary {
    attack: Attack,
    mailbox: Arc<(Mutex<Mailbox>, Condvar)>,
    /// The worker's store: material arrives on the enclave's offline connection and is
    /// evaluated on its online one. Keyed by (namespace, slot).
    stored: Mutex<Store>,
}

/// Material by (enclave namespace, slot).
type Store = HashMap<(u64, u64), Arc<Vec<u8>>>;

/// Rewrites the garbling id of any stream (material or labels) and fixes the header CRC.
fn relabel(stream: &[u8], id: [u8; 16]) -> Vec<u8> {
    let mut s = stream.to_vec();
    s[16..32].copy_from_slice(&id);
    let crc = crc32fast::hash(&s[..40]);
    s[40..44].copy_from_slice(&crc.to_le_bytes());
    s
}

fn garbling_id(stream: &[u8]) -> [u8; 16] {
    let mut id = [0; 16];
    id.copy_from_slice(&stream[16..32]);
    id
}

fn random_digits(out: &[u8]) -> Vec<u8> {
    let mut labels = OutputLabels::from_bytes(out).unwrap();
    for t in labels.tensors_mut() {
        let m = t.modulus();
        let digits = (0..t.as_digits().len())
            .map(|_| rand::random_range(0..m.q()))
            .collect();
        *t = LabelTensor::from_digits(m, t.shape(), digits).unwrap();
    }
    labels.to_bytes().unwrap()
}

impl Adversary {
    fn serve(&self, stream: TcpStream) -> Result<(), tessera_runtime::RuntimeError> {
        let mut ch = Channel::new(stream, ChannelOptions::default())?;
        ch.handshake(Role::Worker, &[Role::Enclave])?;
        let mut circuit: Option<NetworkCircuit> = None;
        let mut open: Vec<u8> = Vec::new();
        let mut ns = 0u64;
        let mut previous: Option<(u64, Vec<u8>)> = None;
        loop {
            let msg = match ch.recv::<ToWorker>() {
                Ok(m) => m,
                Err(_) => return Ok(()),
            };
            let reply = match msg {
                ToWorker::Setup {
                    model_onnx,
                    semantics,
                    primes,
                    sign_bases,
                    namespace,
                } => {
                    ns = namespace;
                    let g = import_model(&model_onnx, &ImportOptions::default()).unwrap();
                    let m = tessera_engine::ExactModel::new(&g, &semantics).unwrap();
                    circuit = Some(
                        NetworkCircuit::compile_exact(&m, primes as usize)
                            .unwrap()
                            .with_sign_bases(&sign_bases)
                            .unwrap()
                            .public(),
                    );
                    Some(FromWorker::Ready {
                        device: "adversary".into(),
                    })
                }
                ToWorker::Material { slot, data, last } => {
                    open.extend_from_slice(&data);
                    if last {
                        let bytes = open.len() as u64;
                        let m = Arc::new(std::mem::take(&mut open));
                        self.stored.lock().unwrap().insert((ns, slot), m);
                        Some(FromWorker::Stored { slot, bytes })
                    } else {
                        None
                    }
                }
                ToWorker::Evaluate { slot, labels } => {
                    let c = circuit.as_ref().unwrap();
                    let get = |slot: u64| self.stored.lock().unwrap()[&(ns, slot)].clone();
                    let id = garbling_id(&labels);
                    let honest = |material: &[u8], labels: &[u8]| {
                        let input = InputLabels::from_bytes(labels).unwrap();
                        evaluate(c, material, &input).unwrap().to_bytes().unwrap()
                    };
                    let out = match (self.attack, &previous) {
                        (Attack::TamperedTables, _) => {
                            let mut m = get(slot).to_vec();
                            tamper_tables(&mut m);
                            honest(&m, &labels)
                        }
                        (Attack::ReplayRelabelled, Some((_, prev_out))) => relabel(prev_out, id),
                        (Attack::OldGarbling, Some((old_slot, _))) => {
                            let old = get(*old_slot);
                            let old_out = honest(&old, &relabel(&labels, garbling_id(&old)));
                            relabel(&old_out, id)
                        }
                        (Attack::RandomDigits, _) => random_digits(&honest(&get(slot), &labels)),
                        (Attack::SwapBetweenRequests, _) => {
                            let mine = honest(&get(slot), &labels);
                            relabel(&self.swap(slot, mine), id)
                        }
                        // The first request of a replaying adversary has nothing to replay.
                        (_, None) => honest(&get(slot), &labels),
                    };
                    previous = Some((slot, honest(&get(slot), &labels)));
                    Some(FromWorker::Output {
                        slot,
                        labels: out,
                        eval_ns: 0,
                    })
                }
            };
            if let Some(r) = reply {
                ch.send(&r)?;
            }
        }
    }

    /// Hands `mine` to the other connection and returns its output (both wait for each other).
    fn swap(&self, slot: u64, mine: Vec<u8>) -> Vec<u8> {
        let (lock, cv) = &*self.mailbox;
        let mut m = lock.lock().unwrap();
        if let Some((other_slot, theirs)) = m.waiting.pop() {
            m.swapped.insert(other_slot, mine);
            cv.notify_all();
            return theirs;
        }
        m.waiting.push((slot, mine));
        let (mut m, _) = cv
            .wait_timeout_while(m, Duration::from_secs(60), |m| {
                !m.swapped.contains_key(&slot)
            })
            .unwrap();
        m.swapped.remove(&slot).expect("the other request arrived")
    }
}

fn adversary(attack: Attack) -> ServerHandle {
    let a = Arc::new(Adversary {
        attack,
        mailbox: Arc::default(),
        stored: Mutex::default(),
    });
    serve_tcp(TcpListener::bind("127.0.0.1:0").unwrap(), 8, move |s| {
        a.serve(s)
    })
    .unwrap()
}

fn opts() -> GcOptions {
    GcOptions {
        semantics: tessera_engine::Semantics::Pow2(QuantConfig {
            frac_bits: 4,
            max_bits: None,
        }),
        input_range: 1.0,
        pool: 2,
        ..GcOptions::default()
    }
}

fn backend(g: &Graph, w: &ServerHandle) -> GcBackend {
    let off = TcpStream::connect(w.addr()).unwrap();
    let on = TcpStream::connect(w.addr()).unwrap();
    GcBackend::start(g, &opts(), off, on, ChannelOptions::default()).unwrap()
}

fn input(seed: u64) -> Tensor {
    let n = 28 * 28;
    let data = (0..n)
        .map(|i| ((i as u64 * 7919 + seed * 104_729) % 1000) as f32 / 1000.0)
        .collect();
    Tensor::new(vec![1, 1, 28, 28], data).unwrap()
}

fn assert_invalid_label(r: Result<(Tensor<i64>, impl std::fmt::Debug), GcError>, what: &str) {
    match r {
        Err(GcError::Garble(GarbleError::InvalidOutputLabel { .. })) => {}
        other => panic!("{what}: expected InvalidOutputLabel, got {other:?}"),
    }
}

/// Runs two requests against one adversary; the second (or, for attacks that need no history,
/// both) must be refused by the output check.
fn attacked(attack: Attack) {
    let g = builders::dash_a(2).unwrap();
    let w = adversary(attack);
    let b = backend(&g, &w);
    let first = b.infer_checked(&input(1));
    let needs_history = matches!(attack, Attack::ReplayRelabelled | Attack::OldGarbling);
    if needs_history {
        assert!(
            first.is_ok(),
            "{attack:?}: the honest first request failed: {first:?}"
        );
    } else {
        assert_invalid_label(first, &format!("{attack:?}, request 1"));
    }
    assert_invalid_label(
        b.infer_checked(&input(2)),
        &format!("{attack:?}, request 2"),
    );
}

#[test]
fn tampered_tables_with_fixed_checksums_are_caught_by_the_output_check() {
    attacked(Attack::TamperedTables);
}

#[test]
fn a_replayed_and_relabelled_output_is_caught_by_the_output_check() {
    attacked(Attack::ReplayRelabelled);
}

#[test]
fn evaluating_an_older_garbling_is_caught_by_the_output_check() {
    attacked(Attack::OldGarbling);
}

#[test]
fn random_output_digits_are_caught_by_the_output_check() {
    attacked(Attack::RandomDigits);
}

#[test]
fn output_labels_swapped_between_two_requests_are_caught_by_the_output_check() {
    let g = builders::dash_a(3).unwrap();
    let w = adversary(Attack::SwapBetweenRequests);
    let a = backend(&g, &w);
    let b = backend(&g, &w);
    std::thread::scope(|s| {
        let ra = s.spawn(|| a.infer_checked(&input(3)));
        let rb = s.spawn(|| b.infer_checked(&input(4)));
        assert_invalid_label(ra.join().unwrap(), "swap, enclave A");
        assert_invalid_label(rb.join().unwrap(), "swap, enclave B");
    });
}
