//! Projection gates over a whole [`LabelTensor`]: one gate per label, all with the same φ.
//!
//! The gate construction is exactly that of [`crate::gate`] (row reduction, tweak = (gate, row)),
//! so gate i of a batch with base number b is bit-for-bit the gate a [`crate::Garbler`] would
//! garble one at a time as gate b + i. What changes is the execution:
//!
//! - **Batched AES**: the labels of a chunk of gates are compressed and hashed together, so the
//!   two AES passes of the hash run over thousands of blocks per call instead of p.
//! - **Parallel**: chunks run on rayon's pool. Each gate's tweak depends only on its index, never
//!   on the chunking or on the thread that runs it, so the output is the same for every thread
//!   count and no tweak is used twice as long as the base numbers of batches do not overlap
//!   ([`crate::Garbler::projection_batch`] reserves them from its counter).
//!
//! Tables are stored flat as compressed rows (elements of Z_{q^n}, or of Z_2^128 under XOR for
//! q = 2; see [`crate::gate`]): gate i's rows 1..p are the p − 1 blocks at offset `i · (p − 1)`.
//! The evaluator turns only the row it opens into digits.

use crate::GarbleError;
use crate::block::{add_mod, pad, sub_mod};
use crate::cost::GarbleCost;
use crate::gate::ProjectionTable;
use crate::hash::{HashScratch, Hasher, Tweak, spread_bits};
use crate::label::{Delta, Label};
use crate::modulus::{MAX_DIGITS, Modulus};
use crate::pack::{block_of, copy_padded, unpack_into};
use crate::tensor::{LabelTensor, add_digits, sub_digits};
use rayon::prelude::*;
use zeroize::Zeroize;

/// Hash calls per parallel chunk: large enough to keep AES pipelined, small enough to spread
/// over the threads and stay in cache.
const HASHES_PER_CHUNK: usize = 4096;

/// Hash calls per AES step inside a chunk: the step's inputs and hash outputs live on the stack.
const HASHES_PER_STEP: usize = 256;

/// The garbled tables of `count` projection gates φ: Z_p → Z_q numbered base, base + 1, ….
/// Public: sent to the evaluator.
#[derive(Clone, PartialEq, Eq)]
pub struct ProjectionBatch {
    base_gate: u64,
    input: Modulus,
    output: Modulus,
    count: usize,
    rows: Vec<u128>,
}

impl ProjectionBatch {
    /// A batch from its parts, checked (use this on data from a peer or a file):
    /// `count · (p − 1)` rows, each the compressed form of some label mod q (below q^n), and gate
    /// numbers that do not overflow.
    pub fn new(
        base_gate: u64,
        input: Modulus,
        output: Modulus,
        count: usize,
        rows: Vec<u128>,
    ) -> Result<Self, GarbleError> {
        let in_range = rows.iter().fold(true, |ok, &r| ok & output.holds_block(r));
        Self::with_rows_checked(base_gate, input, output, count, rows, in_range)
    }

    /// [`Self::new`] for rows whose range check already ran (as a stream reader reads them):
    /// `in_range` is its answer, and false is the same error.
    pub(crate) fn with_rows_checked(
        base_gate: u64,
        input: Modulus,
        output: Modulus,
        count: usize,
        rows: Vec<u128>,
        in_range: bool,
    ) -> Result<Self, GarbleError> {
        let expected = count
            .checked_mul(usize::from(input.q()) - 1)
            .ok_or(GarbleError::Internal("table size overflows usize"))?;
        if rows.len() != expected {
            return Err(GarbleError::TableLength {
                expected,
                got: rows.len(),
            });
        }
        if !in_range {
            return Err(GarbleError::BlockOutOfRange { q: output.q() });
        }
        end_gate(base_gate, count)?;
        Ok(Self {
            base_gate,
            input,
            output,
            count,
            rows,
        })
    }

    /// The number of the first gate.
    pub fn base_gate(&self) -> u64 {
        self.base_gate
    }

    /// The input modulus p.
    pub fn input(&self) -> Modulus {
        self.input
    }

    /// The output modulus q.
    pub fn output(&self) -> Modulus {
        self.output
    }

    /// The number of gates.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch has no gate.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The rows, given back (a stream reader reuses the array for the next chunk).
    pub(crate) fn into_rows(self) -> Vec<u128> {
        self.rows
    }

    /// All rows, flat (see the module docs).
    pub fn as_blocks(&self) -> &[u128] {
        &self.rows
    }

    /// Gate i as a single [`ProjectionTable`], if there is one.
    pub fn table(&self, i: usize) -> Option<ProjectionTable> {
        let per_gate = usize::from(self.input.q()) - 1;
        let rows = self.rows.chunks_exact(per_gate).nth(i)?;
        let labels: Option<Vec<Label>> = rows
            .iter()
            .map(|&r| Label::from_block(self.output, r).ok())
            .collect();
        let gate = self.base_gate.checked_add(u64::try_from(i).ok()?)?;
        ProjectionTable::new(gate, self.input, self.output, labels?).ok()
    }
}

impl std::fmt::Debug for ProjectionBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionBatch")
            .field("base_gate", &self.base_gate)
            .field("p", &self.input.q())
            .field("q", &self.output.q())
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// base + count, checked: the gate numbers base..base + count must all exist.
pub(crate) fn end_gate(base: u64, count: usize) -> Result<u64, GarbleError> {
    u64::try_from(count)
        .ok()
        .and_then(|c| base.checked_add(c))
        .ok_or(GarbleError::GatesExhausted)
}

fn gate_number(base: u64, i: usize) -> Result<u64, GarbleError> {
    end_gate(base, i)
}

/// Garbles one projection gate φ per label of `a0` (zero-labels mod p), numbered
/// `base_gate + i`: returns the tables and the output zero-labels (mod `delta_q`'s modulus,
/// shape of `a0`). The caller must not reuse the numbers base_gate..base_gate + len in this
/// garbling — use [`crate::Garbler::projection_batch`].
pub fn garble_projection_batch(
    hasher: &Hasher,
    base_gate: u64,
    a0: &LabelTensor,
    delta_p: &Delta,
    delta_q: &Delta,
    phi: &[u8],
    cost: &mut GarbleCost,
) -> Result<(ProjectionBatch, LabelTensor), GarbleError> {
    let p = a0.modulus();
    let q = delta_q.modulus();
    if delta_p.modulus() != p {
        return Err(GarbleError::ModulusMismatch {
            expected: p.q(),
            got: delta_p.modulus().q(),
        });
    }
    crate::gate::check_phi(p, q, phi)?;
    let count = a0.len();
    end_gate(base_gate, count)?;
    let (pq, np, nq) = (usize::from(p.q()), p.digits(), q.digits());
    // Digit loops inside a gate run over whole 16-byte steps of zero-padded buffers.
    let (wp, wq) = (padded_width(np), padded_width(nq));

    // φ(x)·Δ_q for every x, once per layer, each zero-padded to wq digits.
    let mut phi_delta = vec![0u8; pq * wq];
    for (dst, &v) in phi_delta.chunks_exact_mut(wq).zip(phi) {
        let d = delta_q.times(u64::from(v));
        dst.copy_from_slice(d.padded_digits().get(..wq).unwrap_or(&[]));
    }
    let dp = delta_p
        .as_label()
        .padded_digits()
        .get(..wp)
        .ok_or(GarbleError::Internal("label width"))?;
    // The same, compressed (used when q = 2, where adding labels is XOR of blocks).
    let mut phi_blocks: Vec<u128> = phi_delta.chunks_exact(wq).map(|d| block_of(q, d)).collect();

    // For each x, the first x' with φ(x') = φ(x): rows whose output labels coincide share one
    // packing (a projection into a small modulus has at most q distinct output labels).
    let first_same: Vec<usize> = phi
        .iter()
        .enumerate()
        .map(|(x, v)| phi.iter().position(|w| w == v).unwrap_or(x))
        .collect();

    let mut rows = vec![0u128; count * (pq - 1)];
    let mut c0s = LabelTensor::zeros(q, a0.shape())?.into_secret();
    let chunk = (HASHES_PER_CHUNK / pq).max(1);
    // Gates per AES step: their p hashes each fit the step's stack buffers.
    let step = (HASHES_PER_STEP / pq).max(1);
    let costs: Result<Vec<GarbleCost>, GarbleError> = a0
        .as_digits()
        .par_chunks(chunk * np)
        .zip(rows.par_chunks_mut(chunk * (pq - 1)))
        .zip(c0s.digits_mut().par_chunks_mut(chunk * nq))
        .enumerate()
        .map(|(ci, ((a_chunk, rows_chunk), c0_chunk))| {
            let mut cost = GarbleCost::default();
            let mut aes_scratch = HashScratch::new();
            let mut items = [(0u128, 0u128); HASHES_PER_STEP];
            let mut hs = [[0u128; 2]; HASHES_PER_STEP];
            let mut label = [0u8; MAX_DIGITS];
            let mut scratch = [0u8; 2 * MAX_DIGITS];
            let mut blocks = [0u128; 256];
            let steps = a_chunk
                .chunks(step * np)
                .zip(rows_chunk.chunks_mut(step * (pq - 1)))
                .zip(c0_chunk.chunks_mut(step * nq));
            for (si, ((a_step, rows_step), c0_step)) in steps.enumerate() {
                // All p labels A₀ + x·Δ_p of every gate of the step, compressed, with tweaks.
                let first = ci * chunk + si * step;
                let gates = a_step.chunks_exact(np);
                let used = gates.len() * pq;
                for (k, (a, its)) in gates.zip(items.chunks_exact_mut(pq)).enumerate() {
                    let gate = gate_number(base_gate, first + k)?;
                    copy_padded(a, np, &mut label).ok_or(GarbleError::Internal("label width"))?;
                    for (x, item) in its.iter_mut().enumerate() {
                        if x > 0 {
                            let l = label
                                .get_mut(..wp)
                                .ok_or(GarbleError::Internal("label width"))?;
                            add_digits(p.q(), l, dp);
                        }
                        let row = u32::from(label[0]);
                        *item = (block_of(p, &label), Tweak { gate, row }.block(p, q));
                    }
                }
                let (items, hs) = (items.get(..used), hs.get_mut(..used));
                let (items, hs) = items.zip(hs).ok_or(GarbleError::Internal("step size"))?;
                hasher.hash_raw_with(&mut aes_scratch, items, q, hs, &mut cost);
                let tables = rows_step
                    .chunks_exact_mut(pq - 1)
                    .zip(c0_step.chunks_exact_mut(nq));
                for ((a, hk), (tab, c0)) in
                    a_step.chunks_exact(np).zip(hs.chunks_exact(pq)).zip(tables)
                {
                    let colour = usize::from(a.first().copied().unwrap_or(0));
                    let inputs = RowInputs {
                        phi_delta: &phi_delta,
                        phi_blocks: &phi_blocks,
                        first: &first_same,
                    };
                    garble_rows(q, colour, hk, &inputs, &mut blocks, &mut scratch, tab, c0)?;
                    cost.add_table(pq as u64 - 1);
                }
            }
            label.zeroize();
            scratch.zeroize();
            blocks.zeroize();
            items.zeroize();
            hs.zeroize();
            Ok(cost)
        })
        .collect();
    for c in costs? {
        *cost += c;
    }
    phi_delta.zeroize();
    phi_blocks.zeroize();
    // Built here, so every digit is below q: no need to scan 16·(p − 1) bytes per gate again.
    let batch = ProjectionBatch {
        base_gate,
        input: p,
        output: q,
        count,
        rows,
    };
    Ok((batch, c0s))
}

/// Evaluates every gate of `tables` on the matching label of `a`: label i of the result is
/// C₀ᵢ + φ(xᵢ)·Δ_q for aᵢ = A₀ᵢ + xᵢ·Δ_p. Errors when the moduli or the counts differ.
pub fn evaluate_projection_batch(
    hasher: &Hasher,
    tables: &ProjectionBatch,
    a: &LabelTensor,
    cost: &mut GarbleCost,
) -> Result<LabelTensor, GarbleError> {
    let (p, q) = (tables.input, tables.output);
    if a.modulus() != p {
        return Err(GarbleError::ModulusMismatch {
            expected: p.q(),
            got: a.modulus().q(),
        });
    }
    if a.len() != tables.count {
        return Err(GarbleError::ShapeMismatch {
            expected: tables.count,
            got: a.len(),
        });
    }
    let (pq, np, nq) = (usize::from(p.q()), p.digits(), q.digits());
    let pow = q.block_params().pow;
    let base_gate = tables.base_gate;
    let mut out = LabelTensor::zeros(q, a.shape())?;
    let chunk = HASHES_PER_CHUNK;
    let costs: Result<Vec<GarbleCost>, GarbleError> = a
        .as_digits()
        .par_chunks(chunk * np)
        .zip(tables.rows.par_chunks(chunk * (pq - 1)))
        .zip(out.digits_mut().par_chunks_mut(chunk * nq))
        .enumerate()
        .map(|(ci, ((a_chunk, tab_chunk), out_chunk))| {
            let mut cost = GarbleCost::default();
            let mut aes_scratch = HashScratch::new();
            let mut items = [(0u128, 0u128); HASHES_PER_STEP];
            let mut hs = [[0u128; 2]; HASHES_PER_STEP];
            let steps = a_chunk
                .chunks(HASHES_PER_STEP * np)
                .zip(tab_chunk.chunks(HASHES_PER_STEP * (pq - 1)))
                .zip(out_chunk.chunks_mut(HASHES_PER_STEP * nq));
            for (si, ((a_step, tab_step), out_step)) in steps.enumerate() {
                let first = ci * chunk + si * HASHES_PER_STEP;
                let labels = a_step.chunks_exact(np);
                let used = labels.len();
                for (k, item) in items.iter_mut().take(used).enumerate() {
                    // The label and the rest of the step after it: packing then reads whole
                    // 16-byte steps wherever the step runs on.
                    let l = a_step.get(k * np..).unwrap_or(&[]);
                    let row = u32::from(l.first().copied().unwrap_or(0));
                    // The one row this gate opens, fetched into cache while the step hashes
                    // (rows are read once, at random: otherwise a cache miss per gate).
                    if let Some(ct) = (row as usize)
                        .checked_sub(1)
                        .and_then(|i| tab_step.get(k * (pq - 1) + i))
                    {
                        prefetch(ct);
                    }
                    let gate = gate_number(base_gate, first + k)?;
                    *item = (block_of(p, l), Tweak { gate, row }.block(p, q));
                }
                let (items, hs) = (items.get(..used), hs.get_mut(..used));
                let (items, hs) = items.zip(hs).ok_or(GarbleError::Internal("step size"))?;
                hasher.hash_raw_with(&mut aes_scratch, items, q, hs, &mut cost);
                let gates = a_step
                    .chunks_exact(np)
                    .zip(hs.iter())
                    .zip(tab_step.chunks_exact(pq - 1))
                    .enumerate();
                for (k, ((l, h), tab)) in gates {
                    // The output label's slot and the rest of the step after it (written next):
                    // unpacking then goes straight into the tensor.
                    let o = out_step
                        .get_mut(k * nq..)
                        .ok_or(GarbleError::Internal("output width"))?;
                    // The result is ct_r − pad(H(a, (gate, r))), with ct₀ = 0.
                    let r = usize::from(l.first().copied().unwrap_or(0));
                    let ct = match r.checked_sub(1) {
                        None => 0,
                        Some(i) => *tab
                            .get(i)
                            .ok_or(GarbleError::Internal("colour out of range"))?,
                    };
                    if q.q() == 2 {
                        spread_bits(h[0] ^ ct, o.get_mut(..nq).unwrap_or(&mut []));
                    } else {
                        unpack_into(q, sub_mod(ct, pad(pow, *h), pow), o);
                    }
                    cost.gates += 1;
                }
            }
            items.zeroize();
            hs.zeroize();
            Ok(cost)
        })
        .collect();
    for c in costs? {
        *cost += c;
    }
    Ok(out)
}

/// A hint to bring `x` into cache (nothing on other architectures).
#[inline(always)]
fn prefetch(x: &u128) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is only a hint: it never faults
    // and changes no memory; the address comes from a live reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(x).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// The table rows and output zero-label of one gate from its p hashes `hk` (in order of x) and
/// the input zero-label's colour. Row reduction: with x* = −colour, the block of C₀ + φ(x*)·Δ_q
/// is −pad(H(A_{x*}, row 0)), so ct₀ = 0 and C₀ follows; row r = colour + x ≠ 0 is
/// block(C₀ + φ(x)·Δ_q) + pad(H(Aₓ, (gate, r))) mod q^n. Mod 2 every step is an XOR of
/// compressed blocks, spread into digits only for C₀.
/// The per-layer inputs of [`garble_rows`]: φ(x)·Δ_q for every x (digits and, for q = 2,
/// blocks), and for every x the first x' with φ(x') = φ(x).
struct RowInputs<'a> {
    phi_delta: &'a [u8],
    phi_blocks: &'a [u128],
    first: &'a [usize],
}

/// `blocks` and `label` are the caller's scratch (it zeroizes them once it is done with all gates).
#[allow(clippy::too_many_arguments)]
fn garble_rows(
    q: Modulus,
    colour: usize,
    hk: &[[u128; 2]],
    inputs: &RowInputs<'_>,
    blocks: &mut [u128],
    label: &mut [u8; 2 * MAX_DIGITS],
    tab: &mut [u128],
    c0: &mut [u8],
) -> Result<(), GarbleError> {
    let (phi_delta, phi_blocks) = (inputs.phi_delta, inputs.phi_blocks);
    let (pq, nq) = (hk.len(), q.digits());
    let x_star = row_of(0, pq.saturating_sub(colour), pq);
    let missing = || GarbleError::Internal("row 0 is missing");
    if q.q() == 2 {
        let (h0, pd0) = hk
            .get(x_star)
            .zip(phi_blocks.get(x_star))
            .ok_or_else(missing)?;
        let c0b = h0[0] ^ pd0;
        spread_bits(c0b, c0);
        for ((x, h), pd) in hk.iter().enumerate().zip(phi_blocks) {
            let r = row_of(colour, x, pq);
            if let Some(slot) = r.checked_sub(1).and_then(|i| tab.get_mut(i)) {
                *slot = h[0] ^ c0b ^ pd;
            }
        }
        return Ok(());
    }
    let pow = q.block_params().pow;
    let w = padded_width(nq);
    let h0 = hk.get(x_star).ok_or_else(missing)?;
    let pd0 = phi_delta.chunks_exact(w).nth(x_star).ok_or_else(missing)?;
    let top = sub_mod(0, pad(pow, *h0), pow);
    // C₀ in the zero-padded scratch `c0w`, then copied out.
    let (c0w, out) = label.split_at_mut(MAX_DIGITS);
    c0w.fill(0);
    unpack_into(q, top, c0w);
    let (c0w, out) = c0w
        .get_mut(..w)
        .zip(out.get_mut(..w))
        .ok_or(GarbleError::Internal("label width"))?;
    sub_digits(q.q(), c0w, pd0);
    c0.copy_from_slice(c0w.get(..nq).ok_or(GarbleError::Internal("label width"))?);
    // blocks[x] = block(C₀ + φ(x)·Δ_q), filled in order of x; x* (row 0) is `top` itself.
    *blocks.get_mut(x_star).ok_or_else(missing)? = top;
    for ((x, h), pd) in hk.iter().enumerate().zip(phi_delta.chunks_exact(w)) {
        let r = row_of(colour, x, pq);
        let Some(slot) = r.checked_sub(1).and_then(|i| tab.get_mut(i)) else {
            continue;
        };
        // The first x' with the same φ value is x* or came earlier in this loop.
        let same = inputs.first.get(x).copied().unwrap_or(x);
        let block = match blocks.get(same) {
            Some(&b) if same != x => b,
            _ => {
                out.copy_from_slice(c0w);
                add_digits(q.q(), out, pd);
                let b = block_of(q, out);
                *blocks
                    .get_mut(x)
                    .ok_or(GarbleError::Internal("row cache"))? = b;
                b
            }
        };
        *slot = add_mod(block, pad(pow, *h), pow);
    }
    Ok(())
}

/// n rounded up to whole 16-byte steps (at most [`MAX_DIGITS`]).
fn padded_width(n: usize) -> usize {
    n.next_multiple_of(16).min(MAX_DIGITS)
}

/// The row of input x for a zero-label of colour `colour` < p: (colour + x) mod p, for x < p.
#[inline(always)]
fn row_of(colour: usize, x: usize, p: usize) -> usize {
    let r = colour + x;
    r - p * usize::from(r >= p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Evaluator, Garbler, Seed};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use std::collections::HashSet;

    const SMALL_PRIMES: [u64; 9] = [2, 3, 5, 7, 11, 13, 17, 19, 23];

    use crate::modulus::testing::m;

    fn prime() -> impl Strategy<Value = Modulus> {
        prop::sample::select(SMALL_PRIMES.to_vec()).prop_map(m)
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    /// A batch garbles exactly the gates a one-at-a-time garbler produces from the same seed,
    /// for every thread count, and evaluates to the same labels, which decode to φ(x).
    fn check_batch_equals_singles(
        p: Modulus,
        q: Modulus,
        seed: [u8; 32],
        count: usize,
        threads: usize,
    ) -> Result<(), TestCaseError> {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let phi: Vec<u8> = (0..p.q()).map(|_| rng.random_range(0..q.q())).collect();
        let xs: Vec<i64> = (0..count)
            .map(|_| rng.random_range(0..i64::from(p.q())))
            .collect();

        // One at a time.
        let mut g1 = Garbler::new(&Seed::from_bytes(seed));
        let warm = g1.input_wire(p);
        g1.projection(&warm, q, &phi).expect("garble");
        let zeros: Vec<Label> = (0..count).map(|_| g1.input_wire(p)).collect();
        let singles: Vec<(ProjectionTable, Label)> = zeros
            .iter()
            .map(|z| g1.projection(z, q, &phi).expect("garble"))
            .collect();

        // Batched, on a pool of `threads` threads.
        let mut g2 = Garbler::new(&Seed::from_bytes(seed));
        let warm2 = g2.input_wire(p);
        g2.projection(&warm2, q, &phi).expect("garble");
        let a0 = g2.input_tensor(p, &[count]).expect("shape");
        prop_assert_eq!(&a0.to_labels(), &zeros);
        let (tables, c0) = pool(threads)
            .install(|| g2.projection_batch(&a0, q, &phi))
            .expect("garble");
        prop_assert_eq!(tables.len(), count);
        prop_assert_eq!(tables.base_gate(), 1);
        prop_assert_eq!(g1.cost(), g2.cost());
        for (i, (t, c)) in singles.iter().enumerate() {
            prop_assert_eq!(&tables.table(i).expect("gate"), t);
            prop_assert_eq!(&c0.label(i).expect("label"), c);
        }

        // Evaluation: batch = singles, and decodes to φ(x).
        let x = g2.encode_tensor(&a0, &xs).expect("encode");
        let mut e1 = Evaluator::new(g1.hash_key());
        let mut e2 = Evaluator::new(g2.hash_key());
        let out = pool(threads)
            .install(|| e2.projection_batch(&tables, &x))
            .expect("evaluate");
        for (i, (t, c)) in singles.iter().enumerate() {
            let xi = x.label(i).expect("label");
            let one = e1.projection(t, &xi).expect("evaluate");
            let got = out.label(i).expect("label");
            prop_assert_eq!(&got, &one);
            let want = phi[usize::try_from(xs[i]).expect("small")];
            prop_assert_eq!(g2.decode(c, &got).expect("valid"), want);
        }
        prop_assert_eq!(e1.cost(), e2.cost());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn batch_equals_one_at_a_time(
            p in prime(),
            q in prime(),
            seed: [u8; 32],
            count in 0usize..300,
            threads in 1usize..4,
        ) {
            check_batch_equals_singles(p, q, seed, count, threads)?;
        }
    }

    /// Every (p, q) pair of the CRT primes, the q = 2 fast path included, on 1 and 2 threads.
    #[test]
    fn batch_equals_one_at_a_time_for_every_prime_pair() {
        for (i, &p) in SMALL_PRIMES.iter().enumerate() {
            for (j, &q) in SMALL_PRIMES.iter().enumerate() {
                let seed = [(i * 9 + j) as u8; 32];
                check_batch_equals_singles(m(p), m(q), seed, 40, 1 + (i + j) % 2)
                    .expect("batch = singles");
            }
        }
    }

    /// Three batches and single gates interleaved, fan-out included: no tweak is used twice by
    /// the garbler, the evaluator hashes only pairs the garbler hashed, and 1 or 2 threads give
    /// the same bytes.
    #[test]
    fn no_tweak_is_reused_across_batches_and_singles() {
        let run = |threads: usize| {
            pool(threads).install(|| {
                let mut g = Garbler::new(&Seed::from_bytes([7; 32]));
                let a0 = g.input_tensor(m(5), &[1000]).expect("shape");
                let (t1, c1) = g.projection_batch(&a0, m(3), &[0, 1, 2, 0, 1]).expect("g");
                // The same wires again (fan-out), then a single gate, then a chained batch.
                let (t2, _) = g.projection_batch(&a0, m(2), &[0, 1, 0, 1, 1]).expect("g");
                let one = a0.label(3).expect("label");
                let (t3, _) = g.projection(&one, m(7), &[0, 1, 2, 3, 4]).expect("g");
                let (t4, _) = g.projection_batch(&c1, m(5), &[4, 0, 2]).expect("g");
                (g, vec![t1, t2, t4], t3)
            })
        };
        let (g, batches, single) = run(2);
        let (_, batches1, single1) = run(1);
        assert_eq!(batches, batches1);
        assert_eq!(single, single1);
        assert_eq!(
            batches.iter().map(|b| b.base_gate()).collect::<Vec<_>>(),
            [0, 1000, 2001]
        );
        assert_eq!(single.gate(), 2000);
        let log = g.hasher().log.lock().expect("log").clone();
        assert_eq!(log.len() as u64, g.cost().hash_calls);
        let tweaks: HashSet<_> = log.iter().map(|&(_, _, t)| t).collect();
        assert_eq!(tweaks.len(), log.len(), "a tweak was used twice");
        assert_eq!(g.cost().gates, 3001);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut g = Garbler::new(&Seed::from_bytes([1; 32]));
        let a0 = g.input_tensor(m(5), &[4]).expect("shape");
        assert!(matches!(
            g.projection_batch(&a0, m(3), &[0, 1, 2]),
            Err(GarbleError::ProjectionLength { .. })
        ));
        let (tables, _) = g.projection_batch(&a0, m(3), &[0, 1, 2, 0, 1]).expect("g");
        let mut e = Evaluator::new(g.hash_key());
        let wrong = g.input_tensor(m(7), &[4]).expect("shape");
        assert!(matches!(
            e.projection_batch(&tables, &wrong),
            Err(GarbleError::ModulusMismatch { .. })
        ));
        let short = g.input_tensor(m(5), &[3]).expect("shape");
        assert!(matches!(
            e.projection_batch(&tables, &short),
            Err(GarbleError::ShapeMismatch {
                expected: 4,
                got: 3
            })
        ));
        // Tables from a peer are checked.
        let rows = tables.as_blocks().to_vec();
        assert!(ProjectionBatch::new(0, m(5), m(3), 4, rows.clone()).is_ok());
        assert!(matches!(
            ProjectionBatch::new(0, m(5), m(3), 5, rows.clone()),
            Err(GarbleError::TableLength { .. })
        ));
        let mut bad = rows.clone();
        bad[9] = 3u128.pow(80);
        assert!(matches!(
            ProjectionBatch::new(0, m(5), m(3), 4, bad),
            Err(GarbleError::BlockOutOfRange { q: 3 })
        ));
        assert!(matches!(
            ProjectionBatch::new(u64::MAX - 2, m(5), m(3), 4, rows),
            Err(GarbleError::GatesExhausted)
        ));
        assert!(tables.table(4).is_none());
    }
}
