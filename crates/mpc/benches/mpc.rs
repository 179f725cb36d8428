//! Garbling and evaluation speed against the fixed-key AES ceiling measured in the same run;
//! the AES-128 and SHA-256 Bristol circuits per circuit.
//!
//! `cargo bench -p tessera-mpc --bench mpc` (release). One thread (the garbler and the evaluator
//! each use one core). Prints a markdown table; medians of 5.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::time::Instant;
use tessera_mpc::Block;
use tessera_mpc::circuit::Checked;
use tessera_mpc::circuit::{Circuit, Gate};
use tessera_mpc::garble::{evaluate_checked, garble_checked, garble_with};
use tessera_mpc::ot::iknp::{CotReceiver, CotSender};
use tessera_mpc::ot::{base, duplex};
use tessera_mpc::stream::{StreamReader, StreamWriter};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `n` AND gates, each on two random wires among the last 4096 (real circuits read recent
/// wires; reading uniformly over millions of labels would measure cache misses, not garbling),
/// with an XOR after every fourth, over 256 inputs.
fn and_circuit(n: usize) -> Circuit {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let inputs: Vec<u32> = (0..256).collect();
    let mut gates = Vec::with_capacity(n + n / 4);
    let mut w = 256u32;
    for i in 0..n {
        let lo = w.saturating_sub(4096);
        let a = rng.random_range(lo..w);
        let b = rng.random_range(lo..w);
        gates.push(Gate::And { a, b, out: w });
        w += 1;
        if i % 4 == 0 {
            gates.push(Gate::Xor {
                a: w - 1,
                b: a,
                out: w,
            });
            w += 1;
        }
    }
    Circuit {
        wires: w as usize,
        inputs: vec![inputs],
        outputs: vec![vec![w - 1]],
        gates,
    }
}

/// Fixed-key AES blocks per second in batches of `N`, through the hash's own path (AES-NI with
/// interleaved rounds where the CPU has it).
fn aes_rate<const N: usize>() -> f64 {
    let aes = tessera_mpc::aesni::FixedAes::new([3u8; 16]);
    let mut buf = [0u128; N];
    let total = 1 << 24;
    let t = Instant::now();
    for i in 0..total / N {
        buf[0] ^= i as u128;
        aes.encrypt(&mut buf);
    }
    std::hint::black_box(&buf);
    total as f64 / t.elapsed().as_secs_f64()
}

/// The `aes` crate in batches of 1,024 (its best case).
fn aes_crate_rate() -> f64 {
    let aes = Aes128::new(&Array::from([3u8; 16]));
    let mut buf = vec![aes::Block::default(); 1024];
    let total = 1 << 24;
    let t = Instant::now();
    for _ in 0..total / 1024 {
        aes.encrypt_blocks(&mut buf);
        buf[0][0] ^= buf[1023][1];
    }
    std::hint::black_box(&buf);
    total as f64 / t.elapsed().as_secs_f64()
}

fn time_circuit(c: &Circuit, reps: usize) -> (f64, f64, usize) {
    let c = &Checked::new(c.clone()).expect("valid");
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (mut g_ms, mut e_ms) = (Vec::new(), Vec::new());
    let mut bytes_len = 0;
    for _ in 0..reps {
        let mut w = StreamWriter::new(Vec::with_capacity(c.and_count() * 32 + 1024));
        let t = Instant::now();
        let g = garble_checked(c, &mut rng, &mut w).expect("garbles");
        g_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let bytes = w.into_inner();
        bytes_len = bytes.len();
        let labels = g
            .inputs
            .encode(0, &vec![false; c.input_bits()])
            .expect("encode");
        let t = Instant::now();
        let out = evaluate_checked(c, &labels, &mut StreamReader::new(bytes.as_slice()))
            .expect("evaluates");
        e_ms.push(t.elapsed().as_secs_f64() * 1e3);
        g.check.check(&out).expect("valid");
    }
    (median(g_ms), median(e_ms), bytes_len)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let a2 = aes_rate::<2>();
    let a4 = aes_rate::<4>();
    let a1k = aes_crate_rate();
    println!(
        "fixed-key AES, one core: {:.1} M blocks/s in pairs, {:.1} M in fours, {:.1} M in batches of 1024",
        a2 / 1e6,
        a4 / 1e6,
        a1k / 1e6
    );
    println!(
        "| circuit | ANDs | garble ms | evaluate ms | garble M AND/s | evaluate M AND/s | material | ceiling garble / evaluate |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<(String, Circuit)> =
        vec![("random local, 2^20 ANDs".into(), and_circuit(1 << 20))];
    if let Some(dir) = tessera_data::shared_data("bristol-fashion") {
        for name in ["aes_128.txt", "sha256.txt"] {
            let text = std::fs::read_to_string(dir.join(name)).expect("readable");
            rows.push((
                name.into(),
                tessera_mpc::bristol::parse(&text).expect("parses"),
            ));
        }
    }
    ot_bench();
    let big = Checked::new(and_circuit(1 << 22)).expect("valid");
    let mut rates: Vec<f64> = (0..3).map(|_| pipelined(&big)).collect();
    println!(
        "both threads, garbler → evaluator streamed on 2^22 ANDs: {:.1} M AND/s end to end (median of 3)",
        median(std::mem::take(&mut rates)) / 1e6
    );
    for (name, c) in rows {
        let (g, e, bytes) = time_circuit(&c, 5);
        let n = c.and_count() as f64;
        println!(
            "| {name} | {} | {g:.2} | {e:.2} | {:.2} | {:.2} | {:.2} MB | {:.1} / {:.1} M AND/s |",
            c.and_count(),
            n / g / 1e3,
            n / e / 1e3,
            bytes as f64 / 1e6,
            a4 / 4.0 / 1e6,
            a2 / 2.0 / 1e6
        );
    }
}

/// Base OT (128 instances) and IKNP COT extension (2^20 per call), sender and receiver on their
/// own threads over an in-memory duplex.
fn ot_bench() {
    let mut base_ms = Vec::new();
    for i in 0..5u64 {
        let (mut x, mut y) = duplex();
        let t = Instant::now();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                base::send(&mut x, &mut ChaCha20Rng::seed_from_u64(i), b"b", 128).expect("send")
            });
            let choices = vec![true; 128];
            base::receive(
                &mut y,
                &mut ChaCha20Rng::seed_from_u64(i + 9),
                b"b",
                &choices,
            )
            .expect("receive");
            h.join().expect("thread");
        });
        base_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let m = 1 << 20;
    let (mut x, mut y) = duplex();
    let reps = 5;
    let (send_ms, recv_ms, bytes) = std::thread::scope(|s| {
        let h = s.spawn(move || {
            let mut snd =
                CotSender::setup(&mut x, &mut ChaCha20Rng::seed_from_u64(1), b"c", Block(3))
                    .expect("setup");
            let mut ms = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                std::hint::black_box(snd.extend(&mut x, m).expect("extend"));
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms
        });
        let mut rcv =
            CotReceiver::setup(&mut y, &mut ChaCha20Rng::seed_from_u64(2), b"c").expect("setup");
        let choices: Vec<bool> = (0..m).map(|j| j % 3 == 0).collect();
        let before = y.sent;
        let mut ms = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            std::hint::black_box(rcv.extend(&mut y, &choices).expect("extend"));
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        (
            h.join().expect("thread"),
            ms,
            (y.sent - before) / reps as u64,
        )
    });
    let (s_ms, r_ms) = (median(send_ms), median(recv_ms));
    println!(
        "base OT, 128 instances: {:.2} ms (median of 5); COT extension of 2^20: sender {s_ms:.1} ms ({:.1} M COT/s), receiver {r_ms:.1} ms ({:.1} M COT/s), {:.1} bytes per COT on the wire",
        median(base_ms),
        m as f64 / s_ms / 1e3,
        m as f64 / r_ms / 1e3,
        bytes as f64 / m as f64
    );
}

/// An in-memory pipe: each write becomes one message.
struct ChanWriter(std::sync::mpsc::SyncSender<Vec<u8>>);

impl std::io::Write for ChanWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(b.to_vec())
            .map_err(|_| std::io::Error::other("reader gone"))?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ChanReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Garbler and evaluator on both cores at once, the material streamed between them in 1 MiB
/// pieces: the pipeline's throughput (the evaluator's labels are ones the caller fixed).
fn pipelined(c: &Checked) -> f64 {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let delta = Block(rng.random::<u128>() | 1);
    let zero: Vec<Block> = (0..c.input_bits()).map(|_| Block(rng.random())).collect();
    let labels = zero.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let t = Instant::now();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let w = std::io::BufWriter::with_capacity(1 << 20, ChanWriter(tx));
            let mut sink = StreamWriter::new(w);
            garble_with(c, delta, zero, &mut rng, &mut sink).expect("garbles");
        });
        let src = ChanReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        std::hint::black_box(
            evaluate_checked(c, &labels, &mut StreamReader::new(src)).expect("evaluates"),
        );
        h.join().expect("thread");
    });
    c.and_count() as f64 / t.elapsed().as_secs_f64()
}
