//! Free-XOR garbling with half-gates (Zahur, Rosulek and Evans, Eurocrypt 2015).
//!
//! The garbler draws a global offset Δ with lsb 1 and one public hash key per circuit. Every wire
//! `w` has a 0-label `W⁰` and the 1-label `W⁰ ⊕ Δ`; the lsb of a label is its permute bit. XOR is
//! `W⁰_out = W⁰_a ⊕ W⁰_b`, INV is `W⁰_out = W⁰_a ⊕ Δ` (the evaluator's label passes through), both
//! free. AND gate number `j` (counting ANDs only) uses tweaks `2j` and `2j + 1` of the hash
//! [`crate::hash::Tccr`] — each once per garbling — and two table rows:
//!
//! ```text
//! garbler (p_a = lsb W⁰_a, p_b = lsb W⁰_b):
//!   T_G = H(W⁰_a, 2j) ⊕ H(W¹_a, 2j) ⊕ p_b·Δ        W⁰_G = H(W⁰_a, 2j) ⊕ p_a·T_G
//!   T_E = H(W⁰_b, 2j+1) ⊕ H(W¹_b, 2j+1) ⊕ W⁰_a     W⁰_E = H(W⁰_b, 2j+1) ⊕ p_b·(T_E ⊕ W⁰_a)
//!   W⁰_out = W⁰_G ⊕ W⁰_E, table (T_G, T_E)
//! evaluator (s_a = lsb W_a, s_b = lsb W_b):
//!   W_out = H(W_a, 2j) ⊕ s_a·T_G ⊕ H(W_b, 2j+1) ⊕ s_b·(T_E ⊕ W_a)
//! ```
//!
//! A constant gate's active label is sent in the material (the evaluator learns only that it is
//! the wire's label; the value is public anyway).
//!
//! Outputs are decoded one of two ways: by **permute bits** ([`OutputDecoding::bits`], the lsb of
//! each output's 0-label) where the evaluator may learn the output, or by the garbler **checking**
//! the labels the evaluator returns ([`OutputCheck`]): a label that is neither the 0- nor the
//! 1-label of its wire is refused, so an evaluator that tampers with tables or labels produces
//! an error, not a wrong value (except with probability 2^−127 per output).
//!
//! The tables are written to and read from a [`crate::stream`] of checksummed chunks as the
//! gates are garbled and evaluated, so neither side holds more than a chunk of them.

use crate::MpcError;
use crate::block::Block;
use crate::circuit::{Checked, Circuit, Gate};
use crate::hash::{MAX_GATES_PER_KEY, Tccr};
use crate::stream::{TableSink, TableSource};
use rand::{CryptoRng, Rng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The garbler's secrets for one circuit: Δ and every input's 0-label.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct InputEncoding {
    delta: Block,
    zero: Vec<Block>,
}

impl std::fmt::Debug for InputEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InputEncoding({} inputs)", self.zero.len())
    }
}

impl InputEncoding {
    /// The global offset Δ (for the oblivious transfer of the evaluator's input labels: its
    /// correlated OT uses Δ as the sender's offset).
    pub fn delta(&self) -> Block {
        self.delta
    }

    /// The 0-label of input bit `i` (inputs in the circuit's input-group order).
    pub fn zero_label(&self, i: usize) -> Option<Block> {
        self.zero.get(i).copied()
    }

    /// The active labels of input bits `range` for values `bits` (the garbler's own inputs).
    pub fn encode(&self, first: usize, bits: &[bool]) -> Result<Vec<Block>, MpcError> {
        bits.iter()
            .enumerate()
            .map(|(k, &b)| {
                self.zero
                    .get(first + k)
                    .map(|&z| z ^ self.delta.and_bit(b))
                    .ok_or_else(|| {
                        MpcError::Input(format!("input bit {} does not exist", first + k))
                    })
            })
            .collect()
    }
}

/// Decoding by permute bits: output bit = lsb(label) ⊕ d.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDecoding {
    /// The lsb of each output's 0-label, in output-group order.
    pub bits: Vec<bool>,
}

impl OutputDecoding {
    /// Decode output labels.
    pub fn decode(&self, labels: &[Block]) -> Result<Vec<bool>, MpcError> {
        if labels.len() != self.bits.len() {
            return Err(MpcError::Input(format!(
                "{} output labels for {} outputs",
                labels.len(),
                self.bits.len()
            )));
        }
        Ok(labels
            .iter()
            .zip(&self.bits)
            .map(|(l, &d)| l.lsb() ^ d)
            .collect())
    }
}

/// The garbler's check of returned output labels, by **hashed labels**: for output `i` it keeps
/// only `H_k(W⁰_i, i)` and `H_k(W¹_i, i)` under a secret key `k` of its own (not Δ, not the
/// labels), and a returned label must hash to one of the two. So the garbler can forget Δ and
/// every label once it has garbled, and an evaluator that returns anything else is caught
/// (except with probability 2^−127 per output).
pub struct OutputCheck {
    key: [u8; 16],
    hash: Tccr,
    digests: Vec<[Block; 2]>,
}

/// The output check's tweaks carry the top bit: a domain of their own, apart from the AND
/// gates' `2j`, `2j + 1` (and under a key of its own).
const CHECK_TWEAK: u128 = 1 << 127;

impl Drop for OutputCheck {
    fn drop(&mut self) {
        self.key.zeroize();
        self.digests.zeroize();
    }
}

impl OutputCheck {
    fn new(key: [u8; 16], zero: &[Block], delta: Block) -> Self {
        let hash = Tccr::new(key);
        let digests = zero
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let t = CHECK_TWEAK | i as u128;
                [hash.hash(z, t), hash.hash(z ^ delta, t)]
            })
            .collect();
        Self { key, hash, digests }
    }

    /// The check as bytes, to keep between an offline and an online phase: its key, then two
    /// digests per output (16 + 32·n bytes). Secret: whoever has it can tell the output labels.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + 32 * self.digests.len());
        v.extend_from_slice(&self.key);
        for [a, b] in &self.digests {
            v.extend_from_slice(&a.to_bytes());
            v.extend_from_slice(&b.to_bytes());
        }
        v
    }

    /// Read what [`OutputCheck::to_bytes`] wrote.
    pub fn from_bytes(b: &[u8]) -> Result<Self, MpcError> {
        let (key, rest) = b
            .split_first_chunk::<16>()
            .ok_or_else(|| MpcError::Input("an output check shorter than its key".into()))?;
        if !rest.len().is_multiple_of(32) {
            return Err(MpcError::Input(format!(
                "an output check of {} bytes is not a key and whole digest pairs",
                b.len()
            )));
        }
        let block = |c: &[u8]| {
            let mut a = [0u8; 16];
            a.copy_from_slice(c);
            Block::from_bytes(a)
        };
        let digests = rest
            .chunks_exact(32)
            .map(|c| [block(&c[..16]), block(&c[16..])])
            .collect();
        Ok(Self {
            key: *key,
            hash: Tccr::new(*key),
            digests,
        })
    }

    /// Outputs it checks.
    pub fn outputs(&self) -> usize {
        self.digests.len()
    }

    /// Decode and check labels the evaluator returned.
    pub fn check(&self, labels: &[Block]) -> Result<Vec<bool>, MpcError> {
        if labels.len() != self.digests.len() {
            return Err(MpcError::Input(format!(
                "{} output labels for {} outputs",
                labels.len(),
                self.digests.len()
            )));
        }
        labels
            .iter()
            .zip(&self.digests)
            .enumerate()
            .map(|(i, (l, [d0, d1]))| {
                let h = self.hash.hash(*l, CHECK_TWEAK | i as u128).0.to_le_bytes();
                let is0 = h.ct_eq(&d0.0.to_le_bytes());
                let is1 = h.ct_eq(&d1.0.to_le_bytes());
                if bool::from(is0 | is1) {
                    Ok(bool::from(is1))
                } else {
                    Err(MpcError::Cheating(format!(
                        "output label {i} is neither of its wire's labels"
                    )))
                }
            })
            .collect()
    }
}

/// What garbling a circuit leaves the garbler.
#[derive(Debug)]
pub struct Garbled {
    /// The input labels.
    pub inputs: InputEncoding,
    /// Decoding by permute bits.
    pub decoding: OutputDecoding,
    /// Decoding with the output check.
    pub check: OutputCheck,
    /// The public hash key (also in the stream's header).
    pub hash_key: [u8; 16],
}

impl std::fmt::Debug for OutputCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputCheck({} outputs)", self.digests.len())
    }
}

/// Garble `c` with fresh Δ, labels and hash key from `rng`, writing the tables to `sink`.
pub fn garble<R: RngCore + CryptoRng, S: TableSink>(
    c: &Circuit,
    rng: &mut R,
    sink: &mut S,
) -> Result<Garbled, MpcError> {
    c.validate()?;
    garble_unchecked(c, rng, sink)
}

/// [`garble`] for a circuit validated once ([`Checked`]).
pub fn garble_checked<R: RngCore + CryptoRng, S: TableSink>(
    c: &Checked,
    rng: &mut R,
    sink: &mut S,
) -> Result<Garbled, MpcError> {
    garble_unchecked(c, rng, sink)
}

/// The garbling of a validated circuit (every wire index in range and defined before use).
fn garble_unchecked<R: RngCore + CryptoRng, S: TableSink>(
    c: &Circuit,
    rng: &mut R,
    sink: &mut S,
) -> Result<Garbled, MpcError> {
    if c.and_count() as u64 > MAX_GATES_PER_KEY {
        return Err(MpcError::Circuit(format!(
            "{} AND gates is over the {} one hash key and Δ may garble",
            c.and_count(),
            MAX_GATES_PER_KEY
        )));
    }
    let mut hash_key = [0u8; 16];
    rng.fill_bytes(&mut hash_key);
    let mut check_key = [0u8; 16];
    rng.fill_bytes(&mut check_key);
    let delta = Block(rng.random::<u128>() | 1);
    let zero_inputs: Vec<Block> = (0..c.input_bits()).map(|_| Block(rng.random())).collect();
    garble_core(c, delta, zero_inputs, hash_key, check_key, rng, sink)
}

/// [`garble_checked`] with Δ and the inputs' 0-labels chosen by the caller — for example the
/// sender's blocks `q_j` of a correlated OT whose offset is `delta`, so that the evaluator's OT
/// outputs are its input labels. Δ must have lsb 1. One Δ may serve the several circuits of one
/// session (as one COT session serves them all): each circuit gets a fresh hash key from `rng`,
/// so no (key, tweak) pair repeats, and the bound of [`crate::hash`] then counts the session's
/// AND gates together. Input labels must not be reused across circuits.
pub fn garble_with<R: RngCore + CryptoRng, S: TableSink>(
    c: &Checked,
    delta: Block,
    zero_inputs: Vec<Block>,
    rng: &mut R,
    sink: &mut S,
) -> Result<Garbled, MpcError> {
    if !delta.lsb() {
        return Err(MpcError::Input(
            "Δ must have its lsb set (point-and-permute)".into(),
        ));
    }
    if zero_inputs.len() != c.input_bits() {
        return Err(MpcError::Input(format!(
            "{} input labels for {} input bits",
            zero_inputs.len(),
            c.input_bits()
        )));
    }
    if c.and_count() as u64 > MAX_GATES_PER_KEY {
        return Err(MpcError::Circuit(format!(
            "{} AND gates is over the {} one hash key and Δ may garble",
            c.and_count(),
            MAX_GATES_PER_KEY
        )));
    }
    let mut hash_key = [0u8; 16];
    rng.fill_bytes(&mut hash_key);
    let mut check_key = [0u8; 16];
    rng.fill_bytes(&mut check_key);
    garble_core(c, delta, zero_inputs, hash_key, check_key, rng, sink)
}

/// Garble a validated circuit under Δ with these input 0-labels and keys.
fn garble_core<R: RngCore + CryptoRng, S: TableSink>(
    c: &Circuit,
    delta: Block,
    zero_inputs: Vec<Block>,
    hash_key: [u8; 16],
    check_key: [u8; 16],
    rng: &mut R,
    sink: &mut S,
) -> Result<Garbled, MpcError> {
    let hash = Tccr::new(hash_key);
    let mut labels = vec![Block::ZERO; c.wires];
    for (&w, &l) in c.inputs.iter().flatten().zip(&zero_inputs) {
        labels[w as usize] = l;
    }
    sink.begin(hash_key)?;
    let mut j: u128 = 0;
    for g in &c.gates {
        match *g {
            Gate::Xor { a, b, out } => {
                labels[out as usize] = labels[a as usize] ^ labels[b as usize]
            }
            Gate::Inv { a, out } => labels[out as usize] = labels[a as usize] ^ delta,
            Gate::Const { value, out } => {
                let l = Block(rng.random());
                labels[out as usize] = l;
                sink.constant(l ^ delta.and_bit(value))?;
            }
            Gate::And { a, b, out } => {
                let (a0, b0) = (labels[a as usize], labels[b as usize]);
                let (pa, pb) = (a0.lsb(), b0.lsb());
                let mut h = [Block::ZERO; 4];
                hash.hash_n(
                    &[a0, a0 ^ delta, b0, b0 ^ delta],
                    &[2 * j, 2 * j, 2 * j + 1, 2 * j + 1],
                    &mut h,
                );
                let tg = h[0] ^ h[1] ^ delta.and_bit(pb);
                let wg = h[0] ^ tg.and_bit(pa);
                let te = h[2] ^ h[3] ^ a0;
                let we = h[2] ^ (te ^ a0).and_bit(pb);
                labels[out as usize] = wg ^ we;
                sink.and_table(tg, te)?;
                j += 1;
            }
        }
    }
    sink.finish()?;
    let out_zero: Vec<Block> = c
        .outputs
        .iter()
        .flatten()
        .map(|&w| labels[w as usize])
        .collect();
    labels.zeroize();
    Ok(Garbled {
        inputs: InputEncoding {
            delta,
            zero: zero_inputs,
        },
        decoding: OutputDecoding {
            bits: out_zero.iter().map(|l| l.lsb()).collect(),
        },
        check: OutputCheck::new(check_key, &out_zero, delta),
        hash_key,
    })
}

/// Evaluate `c` on the active input labels (input-group order), reading tables from `source`;
/// returns the active output labels (output-group order).
pub fn evaluate<S: TableSource>(
    c: &Circuit,
    inputs: &[Block],
    source: &mut S,
) -> Result<Vec<Block>, MpcError> {
    c.validate()?;
    evaluate_unchecked(c, inputs, source)
}

/// [`evaluate`] for a circuit validated once ([`Checked`]).
pub fn evaluate_checked<S: TableSource>(
    c: &Checked,
    inputs: &[Block],
    source: &mut S,
) -> Result<Vec<Block>, MpcError> {
    evaluate_unchecked(c, inputs, source)
}

/// The evaluation of a validated circuit.
fn evaluate_unchecked<S: TableSource>(
    c: &Circuit,
    inputs: &[Block],
    source: &mut S,
) -> Result<Vec<Block>, MpcError> {
    let mut labels = input_labels(c, inputs)?;
    let hash = Tccr::new(source.begin()?);
    eval_gates(&c.gates, &mut labels, 0, 0, &hash, source)?;
    source.finish()?;
    Ok(output_labels(c, &labels))
}

/// The evaluator's label array with the active input labels (input-group order) in place, after
/// checking their count.
pub(crate) fn input_labels(c: &Circuit, inputs: &[Block]) -> Result<Vec<Block>, MpcError> {
    if inputs.len() != c.input_bits() {
        return Err(MpcError::Input(format!(
            "{} input labels for {} input bits",
            inputs.len(),
            c.input_bits()
        )));
    }
    let mut labels = vec![Block::ZERO; c.wires];
    for (&w, &l) in c.inputs.iter().flatten().zip(inputs) {
        labels[w as usize] = l;
    }
    Ok(labels)
}

/// The active output labels (output-group order) from an evaluated label array.
pub(crate) fn output_labels(c: &Circuit, labels: &[Block]) -> Vec<Block> {
    c.outputs
        .iter()
        .flatten()
        .map(|&w| labels[w as usize])
        .collect()
}

/// Evaluate `gates`, whose wires are slots `base..base + labels.len()`, the first AND gate
/// being AND number `first_and` of the circuit; tables come from `source`. The one evaluation
/// loop, for the whole circuit ([`evaluate`]) and for each part of it
/// ([`crate::parts::evaluate_parallel`]).
pub(crate) fn eval_gates<S: TableSource>(
    gates: &[Gate],
    labels: &mut [Block],
    base: u32,
    first_and: u64,
    hash: &Tccr,
    source: &mut S,
) -> Result<(), MpcError> {
    let at = |w: u32| (w - base) as usize;
    let mut j = u128::from(first_and);
    for g in gates {
        match *g {
            Gate::Xor { a, b, out } => labels[at(out)] = labels[at(a)] ^ labels[at(b)],
            Gate::Inv { a, out } => labels[at(out)] = labels[at(a)],
            Gate::Const { out, .. } => labels[at(out)] = source.constant()?,
            Gate::And { a, b, out } => {
                let (wa, wb) = (labels[at(a)], labels[at(b)]);
                let (tg, te) = source.and_table()?;
                let mut h = [Block::ZERO; 2];
                hash.hash_n(&[wa, wb], &[2 * j, 2 * j + 1], &mut h);
                labels[at(out)] = h[0] ^ tg.and_bit(wa.lsb()) ^ h[1] ^ (te ^ wa).and_bit(wb.lsb());
                j += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::Builder;
    use crate::stream::{StreamReader, StreamWriter};
    use rand::SeedableRng;

    /// Each AND gate `j` hashes tweaks 2j and 2j + 1 — the garbler each twice (its two input
    /// labels), the evaluator each once — and no other tweak occurs.
    #[test]
    fn every_tweak_is_used_once_per_party() {
        let mut b = Builder::new();
        let x = b.input(16);
        let y = b.input(16);
        let s = b.add(&x, &y);
        let lt = b.lt_signed(&x, &s);
        let m = b.mux_word(lt, &x, &y);
        b.output(&m);
        let c = b.finish().expect("circuit");
        let ands = c.and_count() as u128;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let mut w = StreamWriter::new(Vec::new());
        crate::hash::TWEAKS.with(|t| t.borrow_mut().clear());
        let g = garble(&c, &mut rng, &mut w).expect("garble");
        let all: Vec<u128> = crate::hash::TWEAKS.with(|t| t.borrow_mut().drain(..).collect());
        let (check, garbler): (Vec<u128>, Vec<u128>) =
            all.into_iter().partition(|t| t & CHECK_TWEAK != 0);
        assert_eq!(
            check.len(),
            2 * c.outputs.iter().map(Vec::len).sum::<usize>()
        );
        let labels = g.inputs.encode(0, &[false; 32]).expect("encode");
        let bytes = w.into_inner();
        evaluate(&c, &labels, &mut StreamReader::new(bytes.as_slice())).expect("evaluate");
        let evaluator: Vec<u128> = crate::hash::TWEAKS.with(|t| t.borrow_mut().drain(..).collect());
        let mut g_sorted = garbler.clone();
        g_sorted.sort_unstable();
        let want_g: Vec<u128> = (0..2 * ands).flat_map(|t| [t, t]).collect();
        assert_eq!(g_sorted, want_g);
        let mut e_sorted = evaluator.clone();
        e_sorted.sort_unstable();
        assert_eq!(e_sorted, (0..2 * ands).collect::<Vec<_>>());
    }
}
