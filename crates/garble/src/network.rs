//! Whole quantized networks as garbled circuits: compile a [`Graph`] under the engine's integer
//! semantics ([`tessera_engine::quant`]) into a [`NetworkCircuit`], [`garble`] it into a stream
//! of garbled material, [`encode_input`], [`evaluate`] the stream on the untrusted side, and
//! [`decode`] the returned output labels — bit for bit what `QuantModel::run_int` computes.
//!
//! # Circuit
//!
//! Every activation tensor is carried as k [`LabelTensor`]s, its residues over the first k CRT primes
//! (one CRT wire per element and prime). The steps, per graph node:
//!
//! | node | steps | cost |
//! |---|---|---|
//! | Conv (any stride, padding, dilation, groups; grouped and depthwise as a block-diagonal weight matrix) | im2col gather of labels + a digit GEMM with the public weights q_f(W) mod p, garbled bias q_2f(b), rescale by 2^f | free, free, one rescale |
//! | Dense | digit GEMM with q_f(W) mod p, garbled bias, rescale by 2^f | free, free, one rescale |
//! | Add/Sub of a constant | garbled constant q_f(c) (per element, broadcast) | free |
//! | Mul/Div by a constant | public q_f(c) (or q_f(1/c)) mod p, rescale by 2^f | free, one rescale |
//! | Add/Sub of two activations | label add/sub (with broadcast) | free |
//! | ReLU | exact sign + bit × residue ([`crate::gadget::relu`]) | one ReLU |
//! | MaxPool | a tree of [`crate::gadget::max2`] over the in-range window positions | (window − 1) ReLUs |
//! | AveragePool / GlobalAveragePool | window sum, rescale by 2^l — only when every divisor is the same power of two 2^l | free, one rescale |
//! | Reshape / Flatten / final Softmax | nothing (the engine leaves Softmax to the client) | free |
//!
//! Anything else (products of two activations, a divisor that is not a
//! power of two, …) is refused at compile time with [`GarbleError::Unsupported`] naming the node.
//!
//! **Rescale.** Each rescale by 2^l uses whichever of the two exact gadgets costs fewer
//! ciphertexts at the circuit's k and l ([`rescale_gadget`]): the one-step gadget
//! ([`crate::gadget::rescale_pow2_onestep`], one base extension and a column sum) for every
//! l ≥ 2 at k ≥ 5, l floor-halvings ([`crate::gadget::rescale_pow2`]) otherwise. The choice
//! depends only on (k, l), so garbler and evaluator make the same one.
//!
//! **Pooling first.** A MaxPool whose input comes straight from a ReLU, a clamp or a rescale (and feeds
//! nothing else) is moved before them: all are monotone non-decreasing, so
//! max(relu(rescale(a)), relu(rescale(b))) = relu(rescale(max(a, b))) exactly, and a 2×2 pool
//! then costs 3 max2 on the accumulators plus one rescale and one ReLU per *pooled* value instead
//! of four of each. The price is range: the max2 compares accumulators, so the CRT range must
//! hold twice the widest accumulator (one more bit) — [`NetworkCircuit::primes_needed`] accounts
//! for it. [`NetworkCircuit::compile_with`] can switch it off.
//!
//! # Choosing k (the number of CRT primes)
//!
//! Garbled wires are unchecked: a value outside the CRT range silently wraps. The circuit is
//! exact when, with h = M/2 (M the product of the k primes): every rescale input x satisfies
//! |x| + max(2^(l−1) + 2, 2^l) ≤ h (which implies both rescale gadgets' preconditions, whichever
//! runs), every ReLU input |x| < h,
//! every max2 pair |a − b| ≤ 2·max|x| < h, and the output |y| < h.
//! [`NetworkCircuit::primes_needed`] takes per-node widths — worst-case ones from
//! `tessera_engine::quant::static_widths` (sound for every input in the given range, often
//! pessimistic for deep nets) or measured ones from `IntRun::widths` over a data set (exact for
//! those inputs; add `margin_bits` for unseen ones) — propagates them through the steps and
//! returns the smallest k ≥ 2 that satisfies all of the above, shifted left by `margin_bits`.
//! The CRT range is the only thing k changes: the gadgets' sizes grow about quadratically in k
//! (ReLU 316 / 449 / 608 ciphertexts at k = 7 / 8 / 9).
//!
//! # Threat model of network garbling (DESIGN §2.1)
//!
//! - The **garbler** (the enclave) is trusted. It compiles the circuit from the model, garbles it
//!   from a fresh [`Seed`] per inference and keeps [`GarbleSecrets`]: the seed (to re-derive the
//!   input zero-labels and the offsets Δ when the input arrives) and the [`OutputDecoder`]
//!   (digests of the valid output labels, no label and no Δ). Nothing else of the garbling stays
//!   in memory: the tables of each projection batch are written to the stream and dropped, so a
//!   garbling larger than RAM (or the EPC) never sits in memory.
//! - The **evaluator** (the worker) holds the public circuit ([`NetworkCircuit::public`]), the
//!   garbled stream and the input labels, and returns output labels. **What it learns by
//!   design**: the architecture (every layer's shape, k, the gate sequence) and the **weights**:
//!   the free linear layers multiply labels by q_f(W) mod each prime, and from the k residues the
//!   worker recovers q_f(W) exactly. Public Mul/Div constants likewise. Protecting the weights is
//!   out of scope here; this is the scheme's leakage and must be stated wherever it is used.
//!   **What stays hidden** (against a semi-honest worker, under the assumptions of the crate's
//!   threat model): the input, every activation, the biases and added constants (they are
//!   garbled: the worker receives labels A_c + c·Δ of fresh zero-labels A_c, streamed with the
//!   tables, and learns nothing of c), and the output.
//! - A **malicious** worker may alter the stream, the labels or the evaluation. Structural damage
//!   (truncation, checksum, gate numbering, moduli, counts) is reported as an error while
//!   evaluating; any other deviation produces labels that are not valid output labels, and
//!   [`decode`] rejects every such label with [`GarbleError::InvalidOutputLabel`] — a wrong
//!   value is never decoded (up to a 2^−128-ish forgery chance per label). Labels of another
//!   garbling are refused by their garbling id, and would fail the digests anyway.
//! - **Single use**: one garbling serves one input. Evaluating a garbling on two inputs reveals
//!   their difference times Δ, hence Δ and everything. [`encode_input`] therefore takes the
//!   [`GarbleSecrets`] by value and returns only an [`OutputKey`] (the output digests, no seed,
//!   no Δ): a second encoding under the same garbling does not compile.

mod prefetch;
mod qint;
mod tables;

use tables::{conv_step, global_pool_table, max_pool_table};

use std::io::{BufReader, BufWriter, Read, Write};

use rayon::prelude::*;
use tessera_engine::QuantConfig;
use tessera_engine::quant::{NodeWidth, quantize};
use tessera_engine::window::{Geometry, pool_geometry};
use tessera_model::ir::{BinOp, Graph, Op};
use tessera_model::tensor::{Tensor, broadcast_index_map};
use zeroize::Zeroize;

use crate::GarbleError;
use crate::ProjectionBatch;
use crate::cost::{CIPHERTEXT_BYTES, GarbleCost};
use crate::crt::{CrtBasis, MAX_CRT_PRIMES};
use crate::gadget::{
    Backend, BatchSink, LayerGarbleBackend, checked_phi, clamp, max2, relu_narrow, rescale_pow2,
};
use crate::gadget::{rescale_pow2_cost, rescale_pow2_onestep, rescale_pow2_onestep_cost};
use crate::gate::{Evaluator, Garbler};
use crate::label::Seed;
use crate::modulus::Modulus;
use crate::output::OutputDecoder;
use crate::store::{Chunk, MaterialKind, StreamHeader, StreamReader, StreamWriter};
#[cfg(test)]
use crate::tensor::reduce16;
use crate::tensor::{LabelTensor, dot_rows, scale_digits};

/// An index meaning "outside the input" (a padded position) in a gather table.
const NONE: u32 = u32::MAX;

/// What one step computes; wires are whole tensors, one per CRT prime.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StepOp {
    /// out[b, r, pos] = Σ_j w[r, j]·x[b, gather[j, pos]] (a conv), or Σ_j w[r, j]·x[b, j] (dense,
    /// `gather` None, `npos` 1). Public weights, free.
    Linear {
        weights: Vec<i64>,
        rows: usize,
        kk: usize,
        npos: usize,
        images: usize,
        in_image: usize,
        gather: Option<Vec<u32>>,
    },
    /// out[i] = x[i] + c[map[i]] with c known to the garbler only (garbled constant; `None` in the
    /// public circuit). `count` is c's length.
    AddSecret {
        consts: Option<Vec<i64>>,
        count: usize,
        map: Vec<u32>,
    },
    /// out[i] = x[i] · c[map[i]] for public c.
    MulPublic { consts: Vec<i64>, map: Vec<u32> },
    /// out = −x.
    Neg,
    /// out[i] = x[idx[i]] (a broadcast).
    Gather { idx: Vec<u32> },
    /// Rescale by 2^bits, round half up.
    Rescale { bits: u32 },
    /// max(x, 0); the sign over the first `sign_primes` primes (0: all k), enough when
    /// |x| < their product / 2 ([`NetworkCircuit::sign_bases`]).
    Relu { sign_primes: u8 },
    /// clamp(x, lo, hi) = lo + relu(x − lo) − relu(x − hi) (two ReLUs), signs as for `Relu`.
    Clamp { lo: i64, hi: i64, sign_primes: u8 },
    /// out[i] = max_t x[idx[t, i]] over `window` candidates (padding replaced by an in-range one).
    MaxPool { idx: Vec<u32>, window: usize },
    /// out[i] = Σ_t x[idx[t, i]] (NONE adds nothing).
    SumPool { idx: Vec<u32>, window: usize },
    /// out = x + other.
    Add,
    /// out = x − other.
    Sub,
}

impl StepOp {
    fn name(&self) -> &'static str {
        match self {
            StepOp::Linear { .. } => "linear",
            StepOp::AddSecret { .. } => "add-garbled-constant",
            StepOp::MulPublic { .. } => "mul-constant",
            StepOp::Neg => "neg",
            StepOp::Gather { .. } => "broadcast",
            StepOp::Rescale { .. } => "rescale",
            StepOp::Relu { .. } => "relu",
            StepOp::Clamp { .. } => "clamp",
            StepOp::MaxPool { .. } => "maxpool",
            StepOp::SumPool { .. } => "sumpool",
            StepOp::Add => "add",
            StepOp::Sub => "sub",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    /// The graph node this step belongs to.
    node: usize,
    input: usize,
    other: Option<usize>,
    output: usize,
    /// Elements of the output.
    len: usize,
    op: StepOp,
}

/// A quantized network compiled into a circuit over CRT residue tensors (see the module docs).
///
/// The same value serves the garbler ([`garble`], which needs the garbled constants) and, via
/// [`NetworkCircuit::public`], the evaluator ([`evaluate`]), which must not see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkCircuit {
    name: String,
    node_names: Vec<String>,
    frac_bits: u32,
    primes: usize,
    steps: Vec<Step>,
    slots: usize,
    input: usize,
    output: usize,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    /// Per slot, the index of the last step that reads it (usize::MAX: never freed).
    last_use: Vec<usize>,
}

fn unsupported(node: &str, detail: impl Into<String>) -> GarbleError {
    GarbleError::Unsupported {
        node: node.to_string(),
        detail: detail.into(),
    }
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s))
}

fn to_u32(x: usize, node: &str) -> Result<u32, GarbleError> {
    u32::try_from(x)
        .ok()
        .filter(|&v| v != NONE)
        .ok_or_else(|| unsupported(node, "a tensor with 2^32 or more elements"))
}

/// The index table of a window over NCHW planes: `[window, planes·oh·ow]`, entry = input element
/// (plane·h·w + iy·w + ix), or [`NONE`] outside the input.
fn window_table(g: &Geometry, planes: usize, node: &str) -> Result<Vec<u32>, GarbleError> {
    let window = g.k[0] * g.k[1];
    let (pin, pout) = (g.h * g.w, g.oh * g.ow);
    let total = planes * pout;
    let mut idx = vec![NONE; window * total];
    for ki in 0..g.k[0] {
        for kj in 0..g.k[1] {
            let t = ki * g.k[1] + kj;
            for pl in 0..planes {
                for oy in 0..g.oh {
                    let iy = (oy * g.s[0] + ki * g.d[0]).checked_sub(g.p[0]);
                    for ox in 0..g.ow {
                        let ix = (ox * g.s[1] + kj * g.d[1]).checked_sub(g.p[1]);
                        if let (Some(iy), Some(ix)) = (iy, ix)
                            && iy < g.h
                            && ix < g.w
                        {
                            let o = t * total + pl * pout + oy * g.ow + ox;
                            if let Some(slot) = idx.get_mut(o) {
                                *slot = to_u32(pl * pin + iy * g.w + ix, node)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(idx)
}

fn quantize_all(v: &[f32], s: u32, node: &str) -> Result<Vec<i64>, GarbleError> {
    v.iter()
        .map(|&x| quantize(x, s).map_err(|e| unsupported(node, e.to_string())))
        .collect()
}

/// The `[co, ci·window]` weight matrix of a convolution with `groups` groups from its
/// `[co, ci/groups, window]` weights: output channel o of group o / (co/groups) keeps its
/// weights on that group's input channels, zeros elsewhere.
fn block_diagonal(
    w: &[i64],
    co: usize,
    ci: usize,
    groups: usize,
    window: usize,
    node: &str,
) -> Result<Vec<i64>, GarbleError> {
    let (cig, cog) = (ci / groups, co / groups);
    let row = ci
        .checked_mul(window)
        .ok_or_else(|| unsupported(node, "weight matrix size overflows"))?;
    let len = co
        .checked_mul(row)
        .ok_or_else(|| unsupported(node, "weight matrix size overflows"))?;
    let mut out = vec![0i64; len];
    let per_row = cig * window;
    for (o, dst) in out.chunks_exact_mut(row).enumerate() {
        let first = (o / cog) * per_row;
        let src = w
            .get(o * per_row..(o + 1) * per_row)
            .ok_or_else(|| unsupported(node, "weight tensor is shorter than its shape"))?;
        dst.get_mut(first..first + per_row)
            .ok_or(GarbleError::Internal("group columns"))?
            .copy_from_slice(src);
    }
    Ok(out)
}

fn map_u32(m: Vec<usize>, node: &str) -> Result<Vec<u32>, GarbleError> {
    m.into_iter().map(|i| to_u32(i, node)).collect()
}

/// Builds the steps of a circuit.
struct Compiler<'g> {
    graph: &'g Graph,
    steps: Vec<Step>,
    slot_len: Vec<usize>,
    slot_of: Vec<usize>,
}

/// The slot holding graph value `v`, or an error naming `node` if it is not computed yet.
fn slot_value(slot_of: &[usize], v: usize, node: &str) -> Result<usize, GarbleError> {
    slot_of
        .get(v)
        .copied()
        .filter(|&s| s != usize::MAX)
        .ok_or_else(|| unsupported(node, "reads a value that is not computed before it"))
}

/// See [`Compiler::node_io`].
struct NodeIo<'g> {
    n: &'g tessera_model::ir::Node,
    in_value: usize,
    x: usize,
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
    out_len: usize,
}

impl<'g> Compiler<'g> {
    fn new_slot(&mut self, len: usize) -> usize {
        self.slot_len.push(len);
        self.slot_len.len() - 1
    }

    fn push(&mut self, node: usize, input: usize, op: StepOp, len: usize) -> usize {
        let output = self.new_slot(len);
        self.steps.push(Step {
            node,
            input,
            other: None,
            output,
            len,
            op,
        });
        output
    }

    /// `slot` broadcast to `out_shape` (a gather step) unless it already has that shape.
    fn broadcast(
        &mut self,
        node: usize,
        slot: usize,
        shape: &[usize],
        out_shape: &[usize],
        name: &str,
    ) -> Result<usize, GarbleError> {
        if shape == out_shape {
            return Ok(slot);
        }
        let idx = map_u32(broadcast_index_map(shape, out_shape), name)?;
        let len = idx.len();
        Ok(self.push(node, slot, StepOp::Gather { idx }, len))
    }

    /// The two operands of binary node `ni`, each broadcast to `out_shape` (x is the first).
    fn operands(
        &mut self,
        ni: usize,
        x: usize,
        in_shape: &[usize],
        out_shape: &[usize],
    ) -> Result<(usize, usize), GarbleError> {
        let g = self.graph;
        let n = g.nodes.get(ni).ok_or(GarbleError::Internal("node index"))?;
        let name = n.name.as_str();
        let other_value = *n
            .inputs
            .get(1)
            .ok_or_else(|| unsupported(name, "a binary op with one input"))?;
        let y = slot_value(&self.slot_of, other_value, name)?;
        let other_shape = g.shape(other_value).to_vec();
        let xb = self.broadcast(ni, x, in_shape, out_shape, name)?;
        let yb = self.broadcast(ni, y, &other_shape, out_shape, name)?;
        Ok((xb, yb))
    }

    /// A step over two slots (`Add` or `Sub`); returns its output slot.
    fn push_pair(&mut self, node: usize, a: usize, b: usize, op: StepOp, len: usize) -> usize {
        let output = self.new_slot(len);
        self.steps.push(Step {
            node,
            input: a,
            other: Some(b),
            output,
            len,
            op,
        });
        output
    }

    /// What every node's compilation starts from: the node, its first input's value, slot and
    /// shape, and its output's shape and length (an empty output is refused).
    fn node_io(&self, ni: usize) -> Result<NodeIo<'g>, GarbleError> {
        let g = self.graph;
        let n = g.nodes.get(ni).ok_or(GarbleError::Internal("node index"))?;
        let name = n.name.as_str();
        let in_value = *n
            .inputs
            .first()
            .ok_or_else(|| unsupported(name, "a node without a variable input"))?;
        let x = slot_value(&self.slot_of, in_value, name)?;
        let out_shape = g.shape(n.output).to_vec();
        let out_len = numel(&out_shape).ok_or_else(|| unsupported(name, "shape overflows"))?;
        if out_len == 0 {
            return Err(unsupported(name, "an empty tensor"));
        }
        Ok(NodeIo {
            n,
            in_value,
            x,
            in_shape: g.shape(in_value).to_vec(),
            out_shape,
            out_len,
        })
    }

    fn node(&mut self, ni: usize, frac_bits: u32) -> Result<usize, GarbleError> {
        let NodeIo {
            n,
            x,
            in_shape,
            out_shape,
            out_len,
            ..
        } = self.node_io(ni)?;
        let name = n.name.as_str();
        let f = frac_bits;
        let slot = match &n.op {
            Op::Conv(c) => {
                let weights = quantize_all(c.weight.data(), f, name)?;
                let (linear, npos, co) = conv_step(c, &in_shape, &out_shape, weights, name)?;
                let acc = self.push(ni, x, linear, out_len);
                let acc = match &c.bias {
                    Some(b) => {
                        let consts = quantize_all(b.data(), 2 * f, name)?;
                        let map = (0..out_len)
                            .map(|i| to_u32((i / npos.max(1)) % co.max(1), name))
                            .collect::<Result<_, _>>()?;
                        self.push(
                            ni,
                            acc,
                            StepOp::AddSecret {
                                count: consts.len(),
                                consts: Some(consts),
                                map,
                            },
                            out_len,
                        )
                    }
                    None => acc,
                };
                self.push(ni, acc, StepOp::Rescale { bits: f }, out_len)
            }
            Op::Dense(d) => {
                let ws = d.weight.shape();
                if in_shape.len() != 2 || ws.len() != 2 || ws[1] != in_shape[1] {
                    return Err(unsupported(name, "a dense layer whose input is not [N, K]"));
                }
                let (images, k, m) = (in_shape[0], in_shape[1], ws[0]);
                let weights = quantize_all(d.weight.data(), f, name)?;
                let acc = self.push(
                    ni,
                    x,
                    StepOp::Linear {
                        weights,
                        rows: m,
                        kk: k,
                        npos: 1,
                        images,
                        in_image: k,
                        gather: None,
                    },
                    out_len,
                );
                let acc = match &d.bias {
                    Some(b) => {
                        let consts = quantize_all(b.data(), 2 * f, name)?;
                        let map = (0..out_len)
                            .map(|i| to_u32(i % m.max(1), name))
                            .collect::<Result<_, _>>()?;
                        self.push(
                            ni,
                            acc,
                            StepOp::AddSecret {
                                count: consts.len(),
                                consts: Some(consts),
                                map,
                            },
                            out_len,
                        )
                    }
                    None => acc,
                };
                self.push(ni, acc, StepOp::Rescale { bits: f }, out_len)
            }
            Op::Binary {
                op,
                constant: Some(c),
                constant_first,
            } => {
                let xb = self.broadcast(ni, x, &in_shape, &out_shape, name)?;
                let map = map_u32(broadcast_index_map(c.shape(), &out_shape), name)?;
                match (op, constant_first) {
                    (BinOp::Add | BinOp::Sub, _) => {
                        let mut consts = quantize_all(c.data(), f, name)?;
                        let base = match (op, constant_first) {
                            (BinOp::Sub, false) => {
                                consts.iter_mut().for_each(|v| *v = -*v);
                                xb
                            }
                            (BinOp::Sub, true) => self.push(ni, xb, StepOp::Neg, out_len),
                            _ => xb,
                        };
                        self.push(
                            ni,
                            base,
                            StepOp::AddSecret {
                                count: consts.len(),
                                consts: Some(consts),
                                map,
                            },
                            out_len,
                        )
                    }
                    (BinOp::Mul, _) | (BinOp::Div, false) => {
                        let consts = if *op == BinOp::Mul {
                            quantize_all(c.data(), f, name)?
                        } else {
                            let inv: Vec<f32> = c.data().iter().map(|&v| 1.0 / v).collect();
                            quantize_all(&inv, f, name)?
                        };
                        let prod = self.push(ni, xb, StepOp::MulPublic { consts, map }, out_len);
                        self.push(ni, prod, StepOp::Rescale { bits: f }, out_len)
                    }
                    (BinOp::Div, true) => {
                        return Err(unsupported(name, "division by an activation"));
                    }
                }
            }
            Op::Binary {
                op: op @ (BinOp::Add | BinOp::Sub),
                constant: None,
                ..
            } => {
                let (xb, yb) = self.operands(ni, x, &in_shape, &out_shape)?;
                let step = if *op == BinOp::Add {
                    StepOp::Add
                } else {
                    StepOp::Sub
                };
                self.push_pair(ni, xb, yb, step, out_len)
            }
            Op::Relu => self.push(ni, x, StepOp::Relu { sign_primes: 0 }, out_len),
            Op::MaxPool(p) => {
                let (idx, window) = max_pool_table(p, &in_shape, &out_shape, out_len, name)?;
                self.push(ni, x, StepOp::MaxPool { idx, window }, out_len)
            }
            Op::AvgPool(p) => {
                if in_shape.len() != 4 || out_shape.len() != 4 {
                    return Err(unsupported(name, "pooling that is not 2-D over NCHW"));
                }
                let geo = pool_geometry(p, &in_shape, &out_shape);
                let window = geo.k[0] * geo.k[1];
                let idx = window_table(&geo, in_shape[0] * in_shape[1], name)?;
                // The engine's divisor per output: in-range positions, or positions inside the
                // padded input with count_include_pad.
                let mut divisors = std::collections::BTreeSet::new();
                let mut probe = vec![0usize; geo.oh * geo.ow];
                tessera_engine::window::pool_plane(
                    &vec![0u8; geo.h * geo.w],
                    &geo,
                    (),
                    |a, _| a,
                    |_, valid, padded| if p.count_include_pad { padded } else { valid },
                    &mut probe,
                );
                divisors.extend(probe);
                let bits = match divisors.iter().collect::<Vec<_>>().as_slice() {
                    [d] if d.is_power_of_two() => d.trailing_zeros(),
                    _ => {
                        return Err(unsupported(
                            name,
                            format!(
                                "average pooling divides by {divisors:?}; only one power-of-two divisor is garbled"
                            ),
                        ));
                    }
                };
                let sum = self.push(ni, x, StepOp::SumPool { idx, window }, out_len);
                self.push(ni, sum, StepOp::Rescale { bits }, out_len)
            }
            Op::GlobalAvgPool => {
                let (idx, hw) = global_pool_table(&in_shape, name)?;
                if !hw.is_power_of_two() {
                    return Err(unsupported(
                        name,
                        format!("global average pooling divides by {hw}, not a power of two"),
                    ));
                }
                let sum = self.push(ni, x, StepOp::SumPool { idx, window: hw }, out_len);
                self.push(
                    ni,
                    sum,
                    StepOp::Rescale {
                        bits: hw.trailing_zeros(),
                    },
                    out_len,
                )
            }
            Op::Reshape | Op::Softmax { .. } => x,
            other => {
                return Err(unsupported(
                    name,
                    format!(
                        "{} is not in the garbled integer semantics (only constant weights are)",
                        other.kind()
                    ),
                ));
            }
        };
        Ok(slot)
    }
}

/// Rescales the residue wires `x` (over the first k CRT primes) by 2^l, round half up, with the
/// exact gadget that costs fewer ciphertexts at this (k, l): the one-step gadget or l halvings
/// (the halvings on a tie). Deterministic in (k, l), so both sides of a garbling agree.
pub fn rescale_gadget<B: Backend>(
    b: &mut B,
    x: &[B::Wire],
    l: u32,
) -> Result<Vec<B::Wire>, GarbleError> {
    let k = x.len();
    let onestep = rescale_pow2_onestep_cost(k, l).map(|c| c.ciphertexts);
    let halving = rescale_pow2_cost(k, l).map(|c| c.ciphertexts);
    match (onestep, halving) {
        (Ok(o), Ok(h)) if o < h => rescale_pow2_onestep(b, x, l),
        _ => rescale_pow2(b, x, l),
    }
}

/// The fewest of the first `max` CRT primes (at least 2) whose range holds every signed value
/// of magnitude ≤ `need` (need ≤ M/2), or the error naming how far the largest falls short.
fn primes_holding(need: u128, max: usize) -> Result<usize, GarbleError> {
    let mut product = 1u128;
    for (i, m) in Modulus::first_primes(max)?.iter().enumerate() {
        product *= u128::from(m.q());
        if i >= 1 && need <= product / 2 {
            return Ok(i + 1);
        }
    }
    Err(GarbleError::CrtOutOfRange {
        x: i64::try_from(need).unwrap_or(i64::MAX),
        half: u64::try_from(product / 2).unwrap_or(u64::MAX),
    })
}

/// The largest magnitude a clamp to `[lo, hi]` outputs.
fn clamp_bound(lo: i64, hi: i64) -> u128 {
    u128::from(lo.unsigned_abs()).max(u128::from(hi.unsigned_abs()))
}

impl NetworkCircuit {
    /// Compiles `graph` at `cfg.frac_bits` fractional bits over the first `primes` CRT primes,
    /// quantizing the constants exactly as `tessera_engine::quant` does; pooling is moved before
    /// ReLU and rescale where exact (module docs). Errors with [`GarbleError::Unsupported`]
    /// naming the first node outside the supported set.
    pub fn compile(graph: &Graph, cfg: QuantConfig, primes: usize) -> Result<Self, GarbleError> {
        Self::compile_with(graph, cfg, primes, true)
    }

    /// [`Self::compile`], choosing whether max pooling moves before ReLU and rescale.
    pub fn compile_with(
        graph: &Graph,
        cfg: QuantConfig,
        primes: usize,
        pool_first: bool,
    ) -> Result<Self, GarbleError> {
        Self::compile_nodes(graph, cfg.frac_bits, primes, pool_first, |c, ni| {
            c.node(ni, cfg.frac_bits)
        })
    }

    /// The compile driver both semantics share: checks the graph and k, walks the nodes in
    /// order with `node` (which pushes a node's steps and returns its output slot), then moves
    /// pools first where asked and records the last use of every slot.
    fn compile_nodes(
        graph: &Graph,
        frac_bits: u32,
        primes: usize,
        pool_first: bool,
        mut node: impl FnMut(&mut Compiler<'_>, usize) -> Result<usize, GarbleError>,
    ) -> Result<Self, GarbleError> {
        graph
            .validate()
            .map_err(|e| unsupported(&graph.name, e.to_string()))?;
        CrtBasis::first_primes(primes)?;
        if primes < 2 {
            return Err(GarbleError::ResidueCount {
                expected: 2,
                got: primes,
            });
        }
        let (input, output) = match (graph.inputs.as_slice(), graph.outputs.as_slice()) {
            ([i], [o]) => (*i, *o),
            _ => {
                return Err(unsupported(
                    &graph.name,
                    "a network with more than one input or output",
                ));
            }
        };
        let input_shape = graph.shape(input).to_vec();
        let in_len = numel(&input_shape).unwrap_or(0);
        if in_len == 0 {
            return Err(unsupported(&graph.name, "an empty input"));
        }
        let mut c = Compiler {
            graph,
            steps: Vec::new(),
            slot_len: Vec::new(),
            slot_of: vec![usize::MAX; graph.values.len()],
        };
        let in_slot = c.new_slot(in_len);
        if let Some(s) = c.slot_of.get_mut(input) {
            *s = in_slot;
        }
        for (ni, n) in graph.nodes.iter().enumerate() {
            let slot = node(&mut c, ni)?;
            if let Some(s) = c.slot_of.get_mut(n.output) {
                *s = slot;
            }
        }
        let out_slot = c
            .slot_of
            .get(output)
            .copied()
            .filter(|&s| s != usize::MAX)
            .ok_or_else(|| unsupported(&graph.name, "the output is never computed"))?;
        let slots = c.slot_len.len();
        let mut steps = c.steps;
        if pool_first {
            pool_before_monotone(&mut steps, slots, out_slot);
        }
        let last_use = last_uses(&steps, slots, out_slot);
        Ok(Self {
            name: graph.name.clone(),
            node_names: graph.nodes.iter().map(|n| n.name.clone()).collect(),
            frac_bits,
            primes,
            steps,
            slots,
            input: in_slot,
            output: out_slot,
            input_shape,
            output_shape: graph.shape(output).to_vec(),
            last_use,
        })
    }

    /// The same circuit over `primes` CRT primes.
    pub fn with_primes(mut self, primes: usize) -> Result<Self, GarbleError> {
        CrtBasis::first_primes(primes)?;
        if primes < 2 {
            return Err(GarbleError::ResidueCount {
                expected: 2,
                got: primes,
            });
        }
        self.primes = primes;
        Ok(self)
    }

    /// What the evaluator may hold: the circuit without the garbled constants (biases and added
    /// constants). Weights and public multipliers stay — see the module docs on leakage.
    pub fn public(&self) -> Self {
        let mut out = self.clone();
        for s in &mut out.steps {
            if let StepOp::AddSecret { consts, .. } = &mut s.op
                && let Some(c) = consts.as_mut()
            {
                c.zeroize();
                *consts = None;
            }
        }
        out
    }

    /// Whether this circuit holds its garbled constants (it can be garbled).
    pub fn has_constants(&self) -> bool {
        self.steps
            .iter()
            .all(|s| !matches!(s.op, StepOp::AddSecret { consts: None, .. }))
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of CRT primes k.
    pub fn primes(&self) -> usize {
        self.primes
    }

    /// Fractional bits f.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// Shape of the input tensor.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Shape of the output tensor (the logits at scale 2^f).
    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    fn input_len(&self) -> usize {
        numel(&self.input_shape).unwrap_or(0)
    }

    fn output_len(&self) -> usize {
        numel(&self.output_shape).unwrap_or(0)
    }

    fn basis(&self) -> Result<CrtBasis, GarbleError> {
        CrtBasis::first_primes(self.primes)
    }

    /// The smallest k (2 ≤ k ≤ [`MAX_CRT_PRIMES`]) for which every gadget of this circuit is in
    /// range, given per-node widths of the graph it was compiled from (`static_widths`, or the
    /// `widths` of integer runs merged with `merge_widths`: the input pseudo-node first, then one
    /// per node), with every bound shifted left by `margin_bits`. See the module docs.
    pub fn primes_needed(
        &self,
        widths: &[NodeWidth],
        margin_bits: u32,
    ) -> Result<usize, GarbleError> {
        if widths.len() != self.node_names.len() + 1 {
            return Err(GarbleError::ShapeMismatch {
                expected: self.node_names.len() + 1,
                got: widths.len(),
            });
        }
        let node_w = |node: usize| widths.get(node + 1).ok_or(GarbleError::Internal("widths"));
        let mut mag = vec![0u128; self.slots];
        let first = widths.first().ok_or(GarbleError::Internal("widths"))?;
        set(&mut mag, self.input, first.out_max);
        let mut need = 0u128;
        for s in &self.steps {
            let m_in = mag.get(s.input).copied().unwrap_or(0);
            let w = node_w(s.node)?;
            let m_out = match &s.op {
                StepOp::Linear { .. } | StepOp::MulPublic { .. } | StepOp::SumPool { .. } => {
                    w.acc_max
                }
                StepOp::AddSecret { .. } => w.acc_max.max(w.out_max),
                StepOp::Add | StepOp::Sub => w.out_max,
                StepOp::Neg | StepOp::Gather { .. } => m_in,
                StepOp::Rescale { bits } => {
                    if *bits == 0 {
                        m_in
                    } else {
                        // Both rescale gadgets' preconditions: |x| + 2^(l−1) + 2 ≤ h for the
                        // halvings, |x| + 2^l ≤ h for the one-step gadget.
                        let half = 1u128 << (bits - 1);
                        let room = half.saturating_add(2).max(1u128 << bits);
                        need = need.max(m_in.saturating_add(room));
                        m_in.saturating_add(half) >> bits
                    }
                }
                StepOp::Relu { .. } => {
                    need = need.max(m_in.saturating_add(1));
                    m_in
                }
                StepOp::Clamp { lo, hi, .. } => {
                    let b = clamp_bound(*lo, *hi);
                    need = need.max(m_in.saturating_add(b).saturating_add(1));
                    b
                }
                StepOp::MaxPool { .. } => {
                    need = need.max(m_in.saturating_mul(2).saturating_add(1));
                    m_in
                }
            };
            set(&mut mag, s.output, m_out);
        }
        need = need.max(mag.get(self.output).copied().unwrap_or(0).saturating_add(1));
        let need = need
            .checked_shl(margin_bits)
            .filter(|v| v >> margin_bits == need);
        primes_holding(need.unwrap_or(u128::MAX), MAX_CRT_PRIMES)
    }

    /// Runs the circuit on `b`, calling `after(step)` after each step.
    fn run<B: NetBackend>(
        &self,
        b: &mut B,
        input: Vec<B::Wire>,
        mut after: impl FnMut(usize, &mut B),
    ) -> Result<Vec<B::Wire>, GarbleError> {
        let moduli = Modulus::first_primes(self.primes)?;
        if input.len() != self.primes {
            return Err(GarbleError::ResidueCount {
                expected: self.primes,
                got: input.len(),
            });
        }
        let mut vals: Vec<Option<Vec<B::Wire>>> = vec![None; self.slots];
        set(&mut vals, self.input, Some(input));
        for (si, s) in self.steps.iter().enumerate() {
            let x = vals
                .get(s.input)
                .and_then(Option::as_ref)
                .ok_or(GarbleError::Internal("a step's input is missing"))?;
            let y: Vec<B::Wire> = match &s.op {
                StepOp::Linear {
                    weights,
                    rows,
                    kk,
                    npos,
                    images,
                    in_image,
                    gather,
                } => x
                    .iter()
                    .map(|w| {
                        b.linear(w, s.len, &|q, n, d| {
                            let wq: Vec<u32> = weights
                                .par_iter()
                                .map(|&v| u32::from(reduce(v, q)))
                                .collect();
                            linear_kernel(
                                q,
                                n,
                                &wq,
                                *rows,
                                *kk,
                                *npos,
                                *images,
                                *in_image,
                                gather.as_deref(),
                                d,
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
                StepOp::AddSecret { consts, count, map } => x
                    .iter()
                    .zip(&moduli)
                    .map(|(w, m)| {
                        let c: Option<Vec<u8>> = consts
                            .as_ref()
                            .map(|c| c.iter().map(|&v| reduce(v, m.q())).collect());
                        b.add_secret(w, c.as_deref(), *count, map)
                    })
                    .collect::<Result<_, _>>()?,
                StepOp::MulPublic { consts, map } => x
                    .iter()
                    .map(|w| {
                        b.linear(w, s.len, &|q, n, d| {
                            let c: Vec<u16> =
                                consts.iter().map(|&v| u16::from(reduce(v, q))).collect();
                            mul_kernel(q, n, &c, map, d)
                        })
                    })
                    .collect::<Result<_, _>>()?,
                StepOp::Neg => x
                    .iter()
                    .map(|w| {
                        let p = u64::from(b.modulus_of(w).q());
                        b.mul_const(w, p - 1)
                    })
                    .collect::<Result<_, _>>()?,
                StepOp::Gather { idx } => x
                    .iter()
                    .map(|w| b.linear(w, s.len, &|_, n, d| gather_digits(n, d, idx)))
                    .collect::<Result<_, _>>()?,
                StepOp::Rescale { bits } => rescale_gadget(b, x, *bits)?,
                StepOp::Relu { sign_primes } => relu_narrow(b, x, *sign_primes)?,
                StepOp::Clamp {
                    lo,
                    hi,
                    sign_primes,
                } => clamp(b, x, *lo, *hi, *sign_primes)?,
                StepOp::MaxPool { idx, window } => {
                    let mut cands: Vec<Vec<B::Wire>> = (0..*window)
                        .map(|t| {
                            let part = idx
                                .get(t * s.len..(t + 1) * s.len)
                                .ok_or(GarbleError::Internal("pool table"))?;
                            x.iter()
                                .map(|w| b.linear(w, s.len, &|_, n, d| gather_digits(n, d, part)))
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .collect::<Result<_, _>>()?;
                    // A balanced tree: pairs of candidates, level by level.
                    while cands.len() > 1 {
                        let mut next = Vec::with_capacity(cands.len().div_ceil(2));
                        let mut it = cands.into_iter();
                        while let Some(a) = it.next() {
                            match it.next() {
                                Some(c) => next.push(max2(b, &a, &c)?),
                                None => next.push(a),
                            }
                        }
                        cands = next;
                    }
                    cands
                        .pop()
                        .ok_or(GarbleError::Internal("an empty pooling window"))?
                }
                StepOp::SumPool { idx, window } => x
                    .iter()
                    .map(|w| {
                        b.linear(w, s.len, &|q, n, d| {
                            sum_kernel(q, n, d, idx, *window, s.len)
                        })
                    })
                    .collect::<Result<_, _>>()?,
                StepOp::Add | StepOp::Sub => {
                    let y = s
                        .other
                        .and_then(|o| vals.get(o))
                        .and_then(Option::as_ref)
                        .ok_or(GarbleError::Internal("a step's second input is missing"))?;
                    x.iter()
                        .zip(y)
                        .map(|(a, c)| {
                            if s.op == StepOp::Add {
                                b.add(a, c)
                            } else {
                                b.sub(a, c)
                            }
                        })
                        .collect::<Result<_, _>>()?
                }
            };
            set(&mut vals, s.output, Some(y));
            for slot in [Some(s.input), s.other].into_iter().flatten() {
                if self.last_use.get(slot) == Some(&si)
                    && let Some(v) = vals.get_mut(slot).and_then(Option::take)
                {
                    v.into_iter().for_each(|w| b.discard(w));
                }
            }
            after(si, b);
        }
        vals.get_mut(self.output)
            .and_then(Option::take)
            .ok_or(GarbleError::Internal("the output was not computed"))
    }

    /// The plaintext oracle: runs the circuit on residues (no garbling) and decodes. Equal to
    /// `QuantModel::run_int` when k is large enough ([`Self::primes_needed`]).
    pub fn run_plain(&self, input: &Tensor<i64>) -> Result<Tensor<i64>, GarbleError> {
        let basis = self.basis()?;
        let residues = self.residues(&basis, input)?;
        let wires = basis
            .moduli()
            .iter()
            .zip(residues)
            .map(|(&m, v)| PlainTensor { m, v })
            .collect();
        let out = self.run(&mut PlainTensors, wires, |_, _| {})?;
        let n = self.output_len();
        let values = (0..n)
            .map(|i| {
                let r: Vec<u8> = out
                    .iter()
                    .map(|t| t.v.get(i).copied().unwrap_or(0))
                    .collect();
                basis.decode(&r)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Tensor::new(self.output_shape.clone(), values).map_err(|_| GarbleError::ShapeMismatch {
            expected: n,
            got: 0,
        })
    }

    /// The residues of `input` per prime, checked against the input shape and the CRT range.
    fn residues(&self, basis: &CrtBasis, input: &Tensor<i64>) -> Result<Vec<Vec<u8>>, GarbleError> {
        if input.shape() != self.input_shape.as_slice() {
            return Err(GarbleError::ShapeMismatch {
                expected: self.input_len(),
                got: input.len(),
            });
        }
        let k = basis.len();
        let mut out = vec![Vec::with_capacity(input.len()); k];
        for &x in input.data() {
            for (o, r) in out.iter_mut().zip(basis.encode(x)?) {
                o.push(r);
            }
        }
        Ok(out)
    }

    /// Garbled size per graph node (nodes without gates or garbled constants are left out), from
    /// the cost backend — no garbling runs.
    pub fn layer_costs(&self) -> Result<Vec<LayerCost>, GarbleError> {
        let moduli = Modulus::first_primes(self.primes)?;
        let len = self.input_len();
        let input = moduli.iter().map(|&m| CostTensor { m, len }).collect();
        let mut c = CostTensors::default();
        let mut out: Vec<LayerCost> = Vec::new();
        let mut last = GarbleCost::default();
        let mut last_labels = 0u64;
        self.run(&mut c, input, |si, c| {
            let Some(step) = self.steps.get(si) else {
                return;
            };
            let mut d = c.cost;
            d.gates -= last.gates;
            d.ciphertexts -= last.ciphertexts;
            d.bytes -= last.bytes;
            let labels = c.label_bytes - last_labels;
            last = c.cost;
            last_labels = c.label_bytes;
            if d.gates == 0 && labels == 0 {
                return;
            }
            let node = self.node_names.get(step.node).cloned().unwrap_or_default();
            match out.last_mut() {
                Some(l) if l.node == node => {
                    l.gates += d.gates;
                    l.ciphertexts += d.ciphertexts;
                    l.bytes += d.bytes + labels;
                    if !l.steps.contains(&step.op.name()) {
                        l.steps.push(step.op.name());
                    }
                }
                _ => out.push(LayerCost {
                    node,
                    steps: vec![step.op.name()],
                    gates: d.gates,
                    ciphertexts: d.ciphertexts,
                    bytes: d.bytes + labels,
                }),
            }
        })?;
        Ok(out)
    }

    /// The whole garbled size (sum of [`Self::layer_costs`]).
    pub fn cost(&self) -> Result<LayerCost, GarbleError> {
        let mut total = LayerCost {
            node: self.name.clone(),
            steps: Vec::new(),
            gates: 0,
            ciphertexts: 0,
            bytes: 0,
        };
        for l in self.layer_costs()? {
            total.gates += l.gates;
            total.ciphertexts += l.ciphertexts;
            total.bytes += l.bytes;
        }
        Ok(total)
    }
}

fn set<T>(v: &mut [T], i: usize, x: T) {
    if let Some(s) = v.get_mut(i) {
        *s = x;
    }
}

/// How many steps read each slot (the output counts as one more read).
fn use_counts(steps: &[Step], slots: usize, output: usize) -> Vec<usize> {
    let mut uses = vec![0usize; slots];
    for s in steps {
        for slot in [Some(s.input), s.other].into_iter().flatten() {
            if let Some(u) = uses.get_mut(slot) {
                *u += 1;
            }
        }
    }
    if let Some(u) = uses.get_mut(output) {
        *u += 1;
    }
    uses
}

fn last_uses(steps: &[Step], slots: usize, output: usize) -> Vec<usize> {
    let mut last = vec![usize::MAX; slots];
    for (i, s) in steps.iter().enumerate() {
        for slot in [Some(s.input), s.other].into_iter().flatten() {
            set(&mut last, slot, i);
        }
    }
    set(&mut last, output, usize::MAX);
    last
}

/// Moves every MaxPool before the ReLUs and rescales that feed only it (module docs).
fn pool_before_monotone(steps: &mut [Step], slots: usize, output: usize) {
    let uses = use_counts(steps, slots, output);
    for i in 0..steps.len() {
        let mut j = i;
        while j > 0 {
            let (head, tail) = steps.split_at_mut(j);
            let (Some(prev), Some(pool)) = (head.last_mut(), tail.first_mut()) else {
                break;
            };
            let monotone = matches!(
                prev.op,
                StepOp::Relu { .. } | StepOp::Rescale { .. } | StepOp::Clamp { .. }
            );
            if !matches!(pool.op, StepOp::MaxPool { .. })
                || !monotone
                || prev.output != pool.input
                || uses.get(prev.output) != Some(&1)
            {
                break;
            }
            // prev: a → b, pool: b → c   ⇒   pool: a → b, prev: b → c.
            let (a, b, c) = (prev.input, prev.output, pool.output);
            std::mem::swap(prev, pool);
            let (pool, prev) = (&mut *prev, &mut *pool);
            pool.input = a;
            pool.output = b;
            prev.input = b;
            prev.output = c;
            prev.len = pool.len;
            j -= 1;
        }
    }
}

/// `v mod q` in 0..q.
fn reduce(v: i64, q: u8) -> u8 {
    // The remainder is below q ≤ 251.
    v.rem_euclid(i64::from(q)) as u8
}

/// Digits of `n`-digit labels gathered by `idx` (NONE → all-zero digits, a padded zero).
fn gather_digits(n: usize, src: &[u8], idx: &[u32]) -> Result<Vec<u8>, GarbleError> {
    let mut out = vec![0u8; idx.len() * n];
    out.par_chunks_mut(n * 1024)
        .zip(idx.par_chunks(1024))
        .try_for_each(|(o, ix)| gather_into(n, src, ix, o))?;
    Ok(out)
}

/// Writes the `n`-digit labels of `src` that `idx` names into `dst`, one after the other
/// (NONE → all-zero digits).
fn gather_into(n: usize, src: &[u8], idx: &[u32], dst: &mut [u8]) -> Result<(), GarbleError> {
    for (d, &i) in dst.chunks_exact_mut(n).zip(idx) {
        if i == NONE {
            d.fill(0);
        } else {
            let s = (i as usize) * n;
            let from = src
                .get(s..s + n)
                .ok_or(GarbleError::Internal("gather index out of range"))?;
            d.copy_from_slice(from);
        }
    }
    Ok(())
}

/// Width of one block of the linear kernel's output row, in digits.
const BLOCK: usize = 4096;

/// out[r, ·] = Σ_j w[r·kk + j] · col[j, ·] mod q over `width`-digit rows, in blocks of 16-bit
/// accumulators ([`dot_rows`]).
fn gemm_rows(q: u8, w: &[u16], kk: usize, col: &[u8], width: usize, out: &mut [u8]) {
    let q16 = u16::from(q);
    out.par_chunks_mut(width)
        .zip(w.par_chunks(kk))
        .for_each(|(o, wr)| {
            o.par_chunks_mut(BLOCK).enumerate().for_each(|(bi, ob)| {
                let (start, len) = (bi * BLOCK, ob.len());
                let mut acc = [0u16; BLOCK];
                let acc = &mut acc[..len];
                let rows = wr
                    .iter()
                    .zip(col.chunks_exact(width))
                    // Weights are below q (checked by the caller), as dot_rows needs.
                    .filter_map(|(&wj, row)| Some((wj, row.get(start..start + len)?)));
                dot_rows(q16, rows, acc, ob);
            });
        });
}

/// A conv (with a gather table) or dense layer over `n`-digit labels (see [`StepOp::Linear`]).
#[allow(clippy::too_many_arguments)]
fn linear_kernel(
    q: u8,
    n: usize,
    w: &[u32],
    rows: usize,
    kk: usize,
    npos: usize,
    images: usize,
    in_image: usize,
    gather: Option<&[u32]>,
    x: &[u8],
) -> Result<Vec<u8>, GarbleError> {
    let width = npos * n;
    let mut out = vec![0u8; images * rows * width];
    if w.len() != rows * kk || x.len() != images * in_image * n {
        return Err(GarbleError::Internal("linear layer sizes"));
    }
    // The accumulators' overflow bound needs every weight below q: check once here rather than
    // reduce every weight at every use.
    if w.iter().any(|&v| v >= u32::from(q)) {
        return Err(GarbleError::Internal(
            "linear layer weight not reduced mod q",
        ));
    }
    let w: Vec<u16> = w.iter().map(|&v| v as u16).collect();
    let w = w.as_slice();
    for (img, o) in x
        .chunks_exact(in_image * n)
        .zip(out.chunks_exact_mut(rows * width))
    {
        match gather {
            Some(idx) => conv_rows(q, w, kk, idx, npos, n, img, o)?,
            None => gemm_rows(q, w, kk, img, width, o),
        }
    }
    Ok(out)
}

/// Bytes of the gathered columns [`conv_rows`] keeps at a time (about an L2 cache).
const PANEL_BYTES: usize = 1 << 19;

/// A conv's `out[r, pos] = Σ_j w[r·kk + j] · img[idx[j·npos + pos]]` over `n`-digit labels, one
/// panel of positions at a time: the panel's `kk` gathered rows stay in cache while every output
/// row reads them, where gathering the whole `[kk, npos]` im2col first would write and read
/// back kk times the layer's input. The panel is wiped after use (on the garbler's side it
/// holds zero-labels).
#[allow(clippy::too_many_arguments)]
fn conv_rows(
    q: u8,
    w: &[u16],
    kk: usize,
    idx: &[u32],
    npos: usize,
    n: usize,
    img: &[u8],
    out: &mut [u8],
) -> Result<(), GarbleError> {
    let width = npos * n;
    if idx.len() != kk * npos || out.len() != w.len() / kk.max(1) * width || n == 0 {
        return Err(GarbleError::Internal("conv layer sizes"));
    }
    // Positions per panel: a whole number of labels, at most one accumulator block wide.
    let per_panel = (PANEL_BYTES / (kk.max(1) * n)).clamp(1, (BLOCK / n).max(1));
    let mut panel = vec![0u8; kk * per_panel * n];
    let q16 = u16::from(q);
    let mut result = Ok(());
    for p0 in (0..npos).step_by(per_panel) {
        let np = per_panel.min(npos - p0);
        let bw = np * n;
        let Some(cols) = panel.get_mut(..kk * bw) else {
            result = Err(GarbleError::Internal("conv panel"));
            break;
        };
        result = cols
            .par_chunks_mut(bw)
            .zip(idx.par_chunks(npos))
            .try_for_each(|(dst, ix)| {
                let ix = ix
                    .get(p0..p0 + np)
                    .ok_or(GarbleError::Internal("gather table"))?;
                gather_into(n, img, ix, dst)
            });
        if result.is_err() {
            break;
        }
        let cols = &*cols;
        out.par_chunks_mut(width)
            .zip(w.par_chunks(kk))
            .for_each(|(o, wr)| {
                if let Some(ob) = o.get_mut(p0 * n..p0 * n + bw) {
                    let mut acc = [0u16; BLOCK];
                    let acc = &mut acc[..bw];
                    // Weights are below q (checked by the caller), as dot_rows needs.
                    dot_rows(q16, wr.iter().copied().zip(cols.chunks_exact(bw)), acc, ob);
                }
            });
    }
    crate::tensor::wipe(&mut panel);
    result
}

/// out[i] = c[map[i]] · x[i] over `n`-digit labels (every c below q), in pieces on every core.
fn mul_kernel(q: u8, n: usize, c: &[u16], map: &[u32], x: &[u8]) -> Result<Vec<u8>, GarbleError> {
    if map.len().checked_mul(n) != Some(x.len())
        || map.iter().any(|&mi| mi as usize >= c.len())
        || c.iter().any(|&k| k >= u16::from(q))
    {
        return Err(GarbleError::Internal("constant multiplication sizes"));
    }
    let mut out = x.to_vec();
    let per = (1 << 14) / n.max(1) + 1;
    out.par_chunks_mut(per * n)
        .zip(map.par_chunks(per))
        .for_each(|(o, m)| {
            for (dst, &mi) in o.chunks_exact_mut(n).zip(m) {
                // In range and below q: both checked above.
                let k = c.get(mi as usize).copied().unwrap_or(0) as u8;
                scale_digits(q, k, dst);
            }
        });
    Ok(out)
}

/// out[i] = Σ_t x[idx[t·len + i]] over `n`-digit labels (NONE adds nothing).
fn sum_kernel(
    q: u8,
    n: usize,
    x: &[u8],
    idx: &[u32],
    window: usize,
    len: usize,
) -> Result<Vec<u8>, GarbleError> {
    let mut acc = vec![0u32; len * n];
    for t in 0..window {
        let part = idx
            .get(t * len..(t + 1) * len)
            .ok_or(GarbleError::Internal("pool table"))?;
        let g = gather_digits(n, x, part)?;
        for (a, &d) in acc.iter_mut().zip(&g) {
            *a += u32::from(d);
        }
    }
    Ok(acc.iter().map(|&a| (a % u32::from(q)) as u8).collect())
}

/// A free linear map on flat digits: (q, digits per label, digits) → the output's digits.
type Kernel<'a> = dyn Fn(u8, usize, &[u8]) -> Result<Vec<u8>, GarbleError> + Sync + 'a;

/// A [`Backend`] over whole residue tensors, with the free tensor operations a network needs.
trait NetBackend: Backend {
    /// A free linear map given as a kernel on the flat digits (q, digits per label, digits) that
    /// returns `out_len` labels' digits.
    fn linear(
        &mut self,
        x: &Self::Wire,
        out_len: usize,
        kernel: &Kernel<'_>,
    ) -> Result<Self::Wire, GarbleError>;

    /// x[i] + c[map[i]] for constants known to the garbler only (`None` on the evaluator's side;
    /// `count` constants).
    fn add_secret(
        &mut self,
        x: &Self::Wire,
        consts: Option<&[u8]>,
        count: usize,
        map: &[u32],
    ) -> Result<Self::Wire, GarbleError>;

    /// A wire that is no longer needed.
    fn discard(&mut self, _w: Self::Wire) {}
}

/// A plaintext residue tensor mod one prime.
#[derive(Clone, Debug)]
struct PlainTensor {
    m: Modulus,
    v: Vec<u8>,
}

/// The plaintext oracle over tensors.
struct PlainTensors;

impl PlainTensors {
    fn same(a: &PlainTensor, b: &PlainTensor) -> Result<u16, GarbleError> {
        if a.m != b.m || a.v.len() != b.v.len() {
            return Err(GarbleError::ModulusMismatch {
                expected: a.m.q(),
                got: b.m.q(),
            });
        }
        Ok(u16::from(a.m.q()))
    }

    fn map(a: &PlainTensor, f: impl Fn(u16) -> u16) -> PlainTensor {
        let q = u16::from(a.m.q());
        PlainTensor {
            m: a.m,
            v: a.v.iter().map(|&x| (f(u16::from(x)) % q) as u8).collect(),
        }
    }
}

impl Backend for PlainTensors {
    type Wire = PlainTensor;

    fn modulus_of(&self, w: &PlainTensor) -> Modulus {
        w.m
    }

    fn add(&mut self, a: &PlainTensor, b: &PlainTensor) -> Result<PlainTensor, GarbleError> {
        let q = Self::same(a, b)?;
        Ok(PlainTensor {
            m: a.m,
            v: a.v
                .iter()
                .zip(&b.v)
                .map(|(&x, &y)| ((u16::from(x) + u16::from(y)) % q) as u8)
                .collect(),
        })
    }

    fn sub(&mut self, a: &PlainTensor, b: &PlainTensor) -> Result<PlainTensor, GarbleError> {
        let q = Self::same(a, b)?;
        Ok(PlainTensor {
            m: a.m,
            v: a.v
                .iter()
                .zip(&b.v)
                .map(|(&x, &y)| ((u16::from(x) + q - u16::from(y)) % q) as u8)
                .collect(),
        })
    }

    fn mul_const(&mut self, a: &PlainTensor, k: u64) -> Result<PlainTensor, GarbleError> {
        let k = u16::from(a.m.reduce(k));
        Ok(Self::map(a, |x| x * k))
    }

    fn add_const(&mut self, a: &PlainTensor, k: u64) -> Result<PlainTensor, GarbleError> {
        let k = u16::from(a.m.reduce(k));
        Ok(Self::map(a, |x| x + k))
    }

    fn project(
        &mut self,
        a: &PlainTensor,
        q: Modulus,
        phi: &[u16],
    ) -> Result<PlainTensor, GarbleError> {
        let phi = checked_phi(a.m, q, phi)?;
        Ok(PlainTensor {
            m: q,
            v: a.v
                .iter()
                .map(|&x| phi.get(usize::from(x)).copied().unwrap_or(0))
                .collect(),
        })
    }
}

impl NetBackend for PlainTensors {
    fn linear(
        &mut self,
        x: &PlainTensor,
        out_len: usize,
        kernel: &Kernel<'_>,
    ) -> Result<PlainTensor, GarbleError> {
        let v = kernel(x.m.q(), 1, &x.v)?;
        if v.len() != out_len {
            return Err(GarbleError::Internal("linear kernel length"));
        }
        Ok(PlainTensor { m: x.m, v })
    }

    fn add_secret(
        &mut self,
        x: &PlainTensor,
        consts: Option<&[u8]>,
        _count: usize,
        map: &[u32],
    ) -> Result<PlainTensor, GarbleError> {
        let c = consts.ok_or(GarbleError::MissingConstants)?;
        let q = u16::from(x.m.q());
        let v =
            x.v.iter()
                .zip(map)
                .map(|(&a, &mi)| {
                    let k = c.get(mi as usize).copied().unwrap_or(0);
                    ((u16::from(a) + u16::from(k)) % q) as u8
                })
                .collect();
        Ok(PlainTensor { m: x.m, v })
    }
}

/// A tensor as the cost backend sees it: its modulus and length.
#[derive(Clone, Copy, Debug)]
struct CostTensor {
    m: Modulus,
    len: usize,
}

/// Counts ciphertexts and bytes per step, garbling nothing.
#[derive(Default)]
struct CostTensors {
    cost: GarbleCost,
    label_bytes: u64,
}

impl Backend for CostTensors {
    type Wire = CostTensor;

    fn modulus_of(&self, w: &CostTensor) -> Modulus {
        w.m
    }

    fn add(&mut self, a: &CostTensor, _b: &CostTensor) -> Result<CostTensor, GarbleError> {
        Ok(*a)
    }

    fn sub(&mut self, a: &CostTensor, _b: &CostTensor) -> Result<CostTensor, GarbleError> {
        Ok(*a)
    }

    fn mul_const(&mut self, a: &CostTensor, _k: u64) -> Result<CostTensor, GarbleError> {
        Ok(*a)
    }

    fn add_const(&mut self, a: &CostTensor, _k: u64) -> Result<CostTensor, GarbleError> {
        Ok(*a)
    }

    fn project(
        &mut self,
        a: &CostTensor,
        q: Modulus,
        phi: &[u16],
    ) -> Result<CostTensor, GarbleError> {
        checked_phi(a.m, q, phi)?;
        let gates = a.len as u64;
        let rows = gates * (u64::from(a.m.q()) - 1);
        self.cost.gates += gates;
        self.cost.ciphertexts += rows;
        self.cost.bytes += rows * CIPHERTEXT_BYTES;
        Ok(CostTensor { m: q, len: a.len })
    }
}

impl NetBackend for CostTensors {
    fn linear(
        &mut self,
        x: &CostTensor,
        out_len: usize,
        _kernel: &Kernel<'_>,
    ) -> Result<CostTensor, GarbleError> {
        Ok(CostTensor {
            m: x.m,
            len: out_len,
        })
    }

    fn add_secret(
        &mut self,
        x: &CostTensor,
        _consts: Option<&[u8]>,
        count: usize,
        _map: &[u32],
    ) -> Result<CostTensor, GarbleError> {
        self.label_bytes += count as u64 * CIPHERTEXT_BYTES;
        Ok(*x)
    }
}

/// The garbled size of one graph node ([`NetworkCircuit::layer_costs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerCost {
    /// The node's name.
    pub node: String,
    /// The kinds of circuit steps it became (e.g. `["linear", "add-garbled-constant", "rescale"]`).
    pub steps: Vec<&'static str>,
    /// Projection gates.
    pub gates: u64,
    /// Ciphertexts (table rows, p − 1 per gate).
    pub ciphertexts: u64,
    /// Bytes of garbled material: 16 per ciphertext plus 16 per garbled-constant label (chunk
    /// framing not counted).
    pub bytes: u64,
}

/// Applies `f` to the digits of a label tensor, which must return `out_len` labels' digits.
fn label_linear(
    x: &LabelTensor,
    out_len: usize,
    kernel: &Kernel<'_>,
) -> Result<LabelTensor, GarbleError> {
    let m = x.modulus();
    let d = kernel(m.q(), m.digits(), x.as_digits())?;
    LabelTensor::from_kernel(m, &[out_len], d, x.is_secret())
}

/// The garbler over a stream: each projection batch is written and dropped at once.
type StreamGarbler<W> = LayerGarbleBackend<StreamWriter<W>>;

impl<W: Write> BatchSink for StreamWriter<W> {
    fn put(&mut self, batch: ProjectionBatch) -> Result<(), GarbleError> {
        self.write_batch(&batch)
    }
}

impl<W: Write> NetBackend for StreamGarbler<W> {
    fn linear(
        &mut self,
        x: &LabelTensor,
        out_len: usize,
        kernel: &Kernel<'_>,
    ) -> Result<LabelTensor, GarbleError> {
        label_linear(x, out_len, kernel)
    }

    /// Fresh zero-labels A_c for the constants; the evaluator gets A_c + c·Δ in the stream.
    fn add_secret(
        &mut self,
        x: &LabelTensor,
        consts: Option<&[u8]>,
        count: usize,
        map: &[u32],
    ) -> Result<LabelTensor, GarbleError> {
        let c = consts.ok_or(GarbleError::MissingConstants)?;
        if c.len() != count {
            return Err(GarbleError::ShapeMismatch {
                expected: count,
                got: c.len(),
            });
        }
        let m = x.modulus();
        let mut zeros = self.garbler.input_tensor(m, &[count])?;
        let values: Vec<i64> = c.iter().map(|&v| i64::from(v)).collect();
        let labels = self.garbler.encode_tensor(&zeros, &values)?;
        self.sink.write_labels(&labels)?;
        let mut spread = label_linear(&zeros, map.len(), &|_, n, d| gather_digits(n, d, map))?;
        let out = x.try_add(&spread);
        zeros.zeroize();
        spread.zeroize();
        out
    }

    fn discard(&mut self, mut w: LabelTensor) {
        w.zeroize();
    }
}

/// The evaluator over a stream: reads each projection batch (possibly in several chunks) when
/// the circuit reaches it, checking its moduli, size and gate numbers.
struct StreamEval<'f> {
    evaluator: Evaluator,
    reader: &'f mut prefetch::Feed,
    next_gate: u64,
}

impl StreamEval<'_> {
    fn next_tables(&mut self) -> Result<crate::ProjectionBatch, GarbleError> {
        match self.reader.next_chunk()? {
            Some(Chunk::Tables(b)) => Ok(b),
            Some(Chunk::Labels(_)) => Err(GarbleError::StreamCorrupt(
                "found garbled constants where the circuit expects tables (the material belongs to another circuit)".into(),
            )),
            None => Err(GarbleError::TablesExhausted(
                usize::try_from(self.next_gate).unwrap_or(usize::MAX),
            )),
        }
    }
}

impl Backend for StreamEval<'_> {
    crate::gadget::label_tensor_free_ops!();

    fn add_const(&mut self, a: &LabelTensor, _k: u64) -> Result<LabelTensor, GarbleError> {
        Ok(a.clone())
    }

    fn project(
        &mut self,
        a: &LabelTensor,
        q: Modulus,
        phi: &[u16],
    ) -> Result<LabelTensor, GarbleError> {
        checked_phi(a.modulus(), q, phi)?;
        let total = a.len();
        let (n_in, n_out) = (a.modulus().digits(), q.digits());
        let mut out: Option<LabelTensor> = None;
        let mut done = 0usize;
        while done < total {
            let batch = self.next_tables()?;
            let len = batch.len();
            if batch.input() != a.modulus() || batch.output() != q {
                return Err(GarbleError::StreamCorrupt(format!(
                    "tables map mod {} → mod {}, the circuit expects mod {} → mod {}",
                    batch.input().q(),
                    batch.output().q(),
                    a.modulus().q(),
                    q.q()
                )));
            }
            if batch.base_gate() != self.next_gate || len == 0 || len > total - done {
                return Err(GarbleError::StreamCorrupt(format!(
                    "tables for gates {}..+{len}, the circuit expects gate {} with {} left",
                    batch.base_gate(),
                    self.next_gate,
                    total - done
                )));
            }
            if len == total {
                let r = self.evaluator.projection_batch(&batch, a)?;
                self.reader.recycle(batch.into_rows());
                self.next_gate += len as u64;
                return Ok(r);
            }
            let part = a
                .as_digits()
                .get(done * n_in..(done + len) * n_in)
                .ok_or(GarbleError::Internal("batch slice"))?;
            let slice = LabelTensor::from_digits(a.modulus(), &[len], part.to_vec())?;
            let r = self.evaluator.projection_batch(&batch, &slice)?;
            self.reader.recycle(batch.into_rows());
            let o = match &mut out {
                Some(o) => o,
                None => out.insert(LabelTensor::zeros(q, &[total])?),
            };
            o.digits_mut()
                .get_mut(done * n_out..(done + len) * n_out)
                .ok_or(GarbleError::Internal("batch slice"))?
                .copy_from_slice(r.as_digits());
            done += len;
            self.next_gate += len as u64;
        }
        match out {
            Some(o) => Ok(o),
            None => LabelTensor::zeros(q, &[0]),
        }
    }
}

impl NetBackend for StreamEval<'_> {
    fn linear(
        &mut self,
        x: &LabelTensor,
        out_len: usize,
        kernel: &Kernel<'_>,
    ) -> Result<LabelTensor, GarbleError> {
        label_linear(x, out_len, kernel)
    }

    fn add_secret(
        &mut self,
        x: &LabelTensor,
        _consts: Option<&[u8]>,
        count: usize,
        map: &[u32],
    ) -> Result<LabelTensor, GarbleError> {
        let labels = match self.reader.next_chunk()? {
            Some(Chunk::Labels(part)) if part.first == 0 && part.is_last() => part.labels,
            Some(Chunk::Labels(part)) if part.first == 0 => {
                let mut digits = part.labels.as_digits().to_vec();
                let m = part.labels.modulus();
                loop {
                    match self.reader.next_chunk()? {
                        Some(Chunk::Labels(p)) if p.labels.modulus() == m => {
                            digits.extend_from_slice(p.labels.as_digits());
                            if p.is_last() {
                                break;
                            }
                        }
                        _ => {
                            return Err(GarbleError::StreamCorrupt(
                                "a tensor of garbled constants is cut off".into(),
                            ));
                        }
                    }
                }
                LabelTensor::from_digits(m, &[digits.len() / m.digits().max(1)], digits)?
            }
            _ => {
                return Err(GarbleError::StreamCorrupt(
                    "expected garbled constants here (the material belongs to another circuit)"
                        .into(),
                ));
            }
        };
        if labels.modulus() != x.modulus() || labels.len() != count {
            return Err(GarbleError::StreamCorrupt(format!(
                "garbled constants: {} labels mod {}, the circuit expects {count} mod {}",
                labels.len(),
                labels.modulus().q(),
                x.modulus().q()
            )));
        }
        let spread = label_linear(&labels, map.len(), &|_, n, d| gather_digits(n, d, map))?;
        x.try_add(&spread)
    }
}

/// What the garbler keeps of one garbling: enough to encode the input and decode the output,
/// nothing more (see the module docs). Zeroized on drop (the seed; the decoder holds only
/// digests and its own key). Single use: encode one input, decode one output, drop.
pub struct GarbleSecrets {
    seed: Seed,
    garbling_id: [u8; 16],
    decoder: OutputDecoder,
    primes: usize,
    input_shape: Vec<usize>,
    output_shape: Vec<usize>,
    material_bytes: u64,
    cost: GarbleCost,
}

impl std::fmt::Debug for GarbleSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbleSecrets")
            .field("primes", &self.primes)
            .field("material_bytes", &self.material_bytes)
            .finish_non_exhaustive()
    }
}

/// What the garbler keeps of one garbling once its input is encoded: the output check and the
/// output shape, nothing that could encode another input (no seed, no Δ, no label).
pub struct OutputKey {
    garbling_id: [u8; 16],
    decoder: OutputDecoder,
    primes: usize,
    output_shape: Vec<usize>,
}

impl std::fmt::Debug for OutputKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputKey")
            .field("primes", &self.primes)
            .field("output_shape", &self.output_shape)
            .finish_non_exhaustive()
    }
}

impl OutputKey {
    /// The public id of the garbling whose outputs this key decodes.
    pub fn garbling_id(&self) -> [u8; 16] {
        self.garbling_id
    }

    /// Bytes this key keeps in memory (about: the decoder's digests and the shape).
    pub fn bytes_kept(&self) -> usize {
        16 + self.decoder.bytes_kept() + 8 * self.output_shape.len()
    }
}

impl GarbleSecrets {
    /// The public id of the garbling (its hash key), as in the stream header and the labels.
    pub fn garbling_id(&self) -> [u8; 16] {
        self.garbling_id
    }

    /// Bytes of garbled material written (the whole stream, headers and checksums included).
    pub fn material_bytes(&self) -> u64 {
        self.material_bytes
    }

    /// What garbling cost (gates, ciphertexts, hash calls).
    pub fn cost(&self) -> GarbleCost {
        self.cost
    }

    /// Bytes these secrets keep in memory (about: the seed, the decoder's digests, shapes).
    pub fn bytes_kept(&self) -> usize {
        32 + 16 + self.decoder.bytes_kept() + 8 * (self.input_shape.len() + self.output_shape.len())
    }
}

/// The first draws of a garbling: the hash key, one input zero-label tensor per prime, then the
/// offsets Δ in prime order — shared by [`garble`] and [`encode_input`] so both see the same
/// labels.
fn start(
    seed: &Seed,
    primes: usize,
    len: usize,
) -> Result<(Garbler, Vec<LabelTensor>), GarbleError> {
    let mut g = Garbler::new(seed);
    let moduli = Modulus::first_primes(primes)?;
    let zeros = moduli
        .iter()
        .map(|&m| g.input_tensor(m, &[len]))
        .collect::<Result<Vec<_>, _>>()?;
    for &m in &moduli {
        g.delta(m);
    }
    Ok((g, zeros))
}

/// Counts bytes written through it.
struct Counting<W: Write> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Garbles `circuit` (which must hold its constants: not [`NetworkCircuit::public`]) from `seed`
/// — a fresh seed per inference — streaming the garbled material to `writer` one projection
/// batch at a time ([`crate::store`] format, garbling id = the public hash key). Returns the
/// secrets the garbler keeps.
pub fn garble(
    circuit: &NetworkCircuit,
    seed: &Seed,
    writer: impl Write,
) -> Result<GarbleSecrets, GarbleError> {
    garble_with_progress(circuit, seed, writer, |_, _| {})
}

/// [`garble`], calling `progress(done, total)` after each of the circuit's steps.
pub fn garble_with_progress(
    circuit: &NetworkCircuit,
    seed: &Seed,
    writer: impl Write,
    mut progress: impl FnMut(usize, usize),
) -> Result<GarbleSecrets, GarbleError> {
    if !circuit.has_constants() {
        return Err(GarbleError::MissingConstants);
    }
    let (garbler, zeros) = start(seed, circuit.primes, circuit.input_len())?;
    let garbling_id = garbler.hash_key();
    let header = StreamHeader {
        kind: MaterialKind::Evaluation,
        garbling_id,
        first_gate: 0,
    };
    let counting = Counting {
        inner: writer,
        bytes: 0,
    };
    let writer = StreamWriter::new(BufWriter::with_capacity(1 << 20, counting), &header)?;
    let mut b = StreamGarbler::with_sink(garbler, writer);
    let total = circuit.steps.len();
    let out = circuit.run(&mut b, zeros, |i, _| progress(i + 1, total))?;
    let (mut garbler, writer) = b.into_inner();
    let buf = writer.finish()?;
    let counting = buf
        .into_inner()
        .map_err(|e| GarbleError::StreamIo(e.error().to_string()))?;
    let mut decoder = OutputDecoder::random(&mut rand::rng());
    for mut z in out {
        let delta = garbler.delta(z.modulus()).clone();
        decoder.push_tensor(&z, &delta)?;
        z.zeroize();
    }
    Ok(GarbleSecrets {
        seed: seed.clone(),
        garbling_id,
        decoder,
        primes: circuit.primes,
        input_shape: circuit.input_shape.clone(),
        output_shape: circuit.output_shape.clone(),
        material_bytes: counting.bytes,
        cost: garbler.cost(),
    })
}

/// Labels of a garbling, one tensor per CRT prime: what crosses between garbler and evaluator
/// online. Serialized as a [`crate::store`] labels stream carrying the garbling id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LabelSet {
    garbling_id: [u8; 16],
    tensors: Vec<LabelTensor>,
}

impl LabelSet {
    fn to_bytes(&self) -> Result<Vec<u8>, GarbleError> {
        let header = StreamHeader {
            kind: MaterialKind::Labels,
            garbling_id: self.garbling_id,
            first_gate: 0,
        };
        let mut w = StreamWriter::new(Vec::new(), &header)?;
        for t in &self.tensors {
            w.write_labels(t)?;
        }
        w.finish()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, GarbleError> {
        let mut r = StreamReader::new(bytes)?;
        if r.header().kind != MaterialKind::Labels {
            return Err(GarbleError::StreamFormat(
                "expected a labels stream, found garbled tables".into(),
            ));
        }
        let garbling_id = r.header().garbling_id;
        let mut tensors = Vec::new();
        let mut open: Option<(Modulus, Vec<u8>)> = None;
        while let Some(chunk) = r.next_chunk()? {
            let Chunk::Labels(part) = chunk else {
                return Err(GarbleError::StreamFormat(
                    "tables in a labels stream".into(),
                ));
            };
            let m = part.labels.modulus();
            let last = part.is_last();
            let (_, digits) = open.get_or_insert_with(|| (m, Vec::new()));
            digits.extend_from_slice(part.labels.as_digits());
            if last && let Some((m, d)) = open.take() {
                let len = d.len() / m.digits().max(1);
                tensors.push(LabelTensor::from_digits(m, &[len], d)?);
            }
        }
        if open.is_some() {
            return Err(GarbleError::StreamTruncated(
                "a label tensor is cut off".into(),
            ));
        }
        Ok(Self {
            garbling_id,
            tensors,
        })
    }

    /// Checks the id and that there is one tensor of `len` labels per prime, in order.
    fn check(&self, id: [u8; 16], primes: usize, len: usize) -> Result<(), GarbleError> {
        if self.garbling_id != id {
            return Err(GarbleError::GarblingMismatch);
        }
        if self.tensors.len() != primes {
            return Err(GarbleError::ResidueCount {
                expected: primes,
                got: self.tensors.len(),
            });
        }
        for (t, m) in self.tensors.iter().zip(Modulus::first_primes(primes)?) {
            if t.modulus() != m {
                return Err(GarbleError::ModulusMismatch {
                    expected: m.q(),
                    got: t.modulus().q(),
                });
            }
            if t.len() != len {
                return Err(GarbleError::ShapeMismatch {
                    expected: len,
                    got: t.len(),
                });
            }
        }
        Ok(())
    }
}

/// The input labels of one inference (one label per element and prime): sent by the garbler to
/// the evaluator in one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputLabels(LabelSet);

/// The output labels the evaluator returns (one per logit and prime), in one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputLabels(LabelSet);

impl InputLabels {
    /// The wire form (a checksummed labels stream, [`crate::store`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, GarbleError> {
        self.0.to_bytes()
    }

    /// Parses the wire form; every check of [`crate::store`] applies.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GarbleError> {
        LabelSet::from_bytes(bytes).map(Self)
    }

    /// The garbling these labels belong to.
    pub fn garbling_id(&self) -> [u8; 16] {
        self.0.garbling_id
    }
}

impl OutputLabels {
    /// The wire form (a checksummed labels stream, [`crate::store`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>, GarbleError> {
        self.0.to_bytes()
    }

    /// Parses the wire form; every check of [`crate::store`] applies.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, GarbleError> {
        LabelSet::from_bytes(bytes).map(Self)
    }

    /// The garbling these labels claim to belong to.
    pub fn garbling_id(&self) -> [u8; 16] {
        self.0.garbling_id
    }

    /// The labels, one tensor per prime (for tests and tampering experiments).
    pub fn tensors_mut(&mut self) -> &mut [LabelTensor] {
        &mut self.0.tensors
    }
}

/// The labels of `input` (integers at scale 2^f, the network's input shape) for the garbling of
/// `secrets`, and the [`OutputKey`] that decodes its outputs. Errors on a wrong shape or a value
/// outside the CRT range. **Once per garbling**: labels of two inputs under one garbling reveal
/// Δ, so the secrets are consumed (and zeroized) here, on success and on error alike.
pub fn encode_input(
    secrets: GarbleSecrets,
    input: &Tensor<i64>,
) -> Result<(InputLabels, OutputKey), GarbleError> {
    if input.shape() != secrets.input_shape.as_slice() {
        return Err(GarbleError::ShapeMismatch {
            expected: numel(&secrets.input_shape).unwrap_or(0),
            got: input.len(),
        });
    }
    let basis = CrtBasis::first_primes(secrets.primes)?;
    let len = input.len();
    let mut residues = vec![Vec::with_capacity(len); secrets.primes];
    let mut bad = None;
    for &x in input.data() {
        match basis.encode(x) {
            Ok(mut r) => {
                for (o, &d) in residues.iter_mut().zip(&r) {
                    o.push(i64::from(d));
                }
                r.zeroize();
            }
            Err(e) => {
                bad = Some(e);
                break;
            }
        }
    }
    if let Some(e) = bad {
        residues.iter_mut().for_each(|r| r.zeroize());
        return Err(e);
    }
    let (mut g, zeros) = match start(&secrets.seed, secrets.primes, len) {
        Ok(v) => v,
        Err(e) => {
            residues.iter_mut().for_each(|r| r.zeroize());
            return Err(e);
        }
    };
    let tensors = zeros
        .into_iter()
        .zip(&residues)
        .map(|(mut z, v)| {
            let l = g.encode_tensor(&z, v);
            z.zeroize();
            l
        })
        .collect::<Result<Vec<_>, _>>();
    residues.iter_mut().for_each(|r| r.zeroize());
    drop(g);
    let tensors = tensors?;
    let GarbleSecrets {
        garbling_id,
        decoder,
        primes,
        output_shape,
        ..
    } = secrets;
    Ok((
        InputLabels(LabelSet {
            garbling_id,
            tensors,
        }),
        OutputKey {
            garbling_id,
            decoder,
            primes,
            output_shape,
        },
    ))
}

/// The evaluator: runs the public `circuit` over the garbled material read from `reader` (as
/// [`garble`] wrote it) on `input`, and returns the output labels. Needs nothing secret. Errors
/// on material or labels of another garbling or circuit, truncated or damaged material, missing
/// or left-over tables.
pub fn evaluate(
    circuit: &NetworkCircuit,
    reader: impl Read + Send,
    input: &InputLabels,
) -> Result<OutputLabels, GarbleError> {
    let reader = StreamReader::new(BufReader::with_capacity(1 << 20, reader))?;
    let header = reader.header().clone();
    if header.kind != MaterialKind::Evaluation {
        return Err(GarbleError::StreamFormat(
            "expected garbled tables, found a labels stream".into(),
        ));
    }
    input
        .0
        .check(header.garbling_id, circuit.primes, circuit.input_len())?;
    // The material is read and checked by a second thread, ahead of the evaluation.
    let out = prefetch::with_feed(reader, |feed| {
        let mut b = StreamEval {
            evaluator: Evaluator::new(header.garbling_id),
            reader: feed,
            next_gate: header.first_gate,
        };
        let out = circuit.run(&mut b, input.0.tensors.clone(), |_, _| {})?;
        match b.reader.next_chunk()? {
            None => Ok(out),
            Some(_) => Err(GarbleError::StreamCorrupt(
                "garbled material continues after the circuit's last gate".into(),
            )),
        }
    })?;
    Ok(OutputLabels(LabelSet {
        garbling_id: header.garbling_id,
        tensors: out,
    }))
}

/// The garbler's decoding of the evaluator's output labels: every label is checked against the
/// digests of the valid ones; any invalid label (or labels of another garbling, or of the wrong
/// count or moduli) is an error, never a value. Returns the logits at scale 2^f.
pub fn decode(secrets: &OutputKey, output: &OutputLabels) -> Result<Tensor<i64>, GarbleError> {
    let len = numel(&secrets.output_shape).unwrap_or(0);
    output.0.check(secrets.garbling_id, secrets.primes, len)?;
    let basis = CrtBasis::first_primes(secrets.primes)?;
    let mut residues: Vec<Vec<u8>> = Vec::with_capacity(secrets.primes);
    let mut first_bad = None;
    for (r, t) in output.0.tensors.iter().enumerate() {
        match secrets.decoder.decode_tensor(r * len, t) {
            Ok(v) => residues.push(v),
            Err(e) => {
                first_bad.get_or_insert(e);
                residues.push(vec![0; len]);
            }
        }
    }
    if let Some(e) = first_bad {
        return Err(e);
    }
    let values = (0..len)
        .map(|i| {
            let r: Vec<u8> = residues
                .iter()
                .map(|v| v.get(i).copied().unwrap_or(0))
                .collect();
            basis.decode(&r)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::new(secrets.output_shape.clone(), values).map_err(|_| GarbleError::ShapeMismatch {
        expected: len,
        got: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn reduce16_is_the_remainder_for_every_value() {
        for q in [2u16, 3, 5, 23, 67, 137, 251] {
            for a in 0..=u16::MAX {
                assert_eq!(reduce16(a, q), a % q, "{a} mod {q}");
            }
        }
    }

    /// The 16-bit kernel against a wide reference, with enough terms to need several
    /// reductions, for small and large moduli, odd widths and zero weights.
    #[test]
    fn gemm_rows_matches_a_wide_reference() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for (q, kk, width, rows) in [
            (2u8, 70_000usize, 3usize, 2usize),
            (3, 300, 1_500, 3),
            (23, 400, 2_100, 2),
            (67, 50, 77, 5),
            (251, 9, 4_097, 2),
        ] {
            let w: Vec<u16> = (0..rows * kk)
                .map(|i| {
                    if i % 7 == 0 {
                        0
                    } else {
                        rng.random_range(0..u16::from(q))
                    }
                })
                .collect();
            let col: Vec<u8> = (0..kk * width).map(|_| rng.random_range(0..q)).collect();
            let mut out = vec![0u8; rows * width];
            gemm_rows(q, &w, kk, &col, width, &mut out);
            for r in 0..rows {
                for i in (0..width).step_by(width / 7 + 1) {
                    let want = (0..kk).fold(0u64, |acc, j| {
                        (acc + u64::from(w[r * kk + j]) * u64::from(col[j * width + i]))
                            % u64::from(q)
                    });
                    assert_eq!(
                        u64::from(out[r * width + i]),
                        want,
                        "q = {q}, row {r}, digit {i}"
                    );
                }
            }
        }
    }
}
