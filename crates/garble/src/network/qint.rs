//! Compiling a network lowered to the integer semantics v2 ([`tessera_engine::qint`]) into a
//! circuit, and the sound CRT range of such a circuit from its own constants.
//!
//! | v2 op | steps | cost |
//! |---|---|---|
//! | Conv / Dense | label GEMM with the public integer weights, garbled bias, public per-channel multiplier m_c, rescale by 2^n, clamp to the output interval | free, free, free, one rescale, one clamp |
//! | Add / Sub of two activations | public multipliers m_a, m_b, add, rescale by 2^n, clamp | free, one rescale, one clamp |
//! | Mul by a constant | public multiplier per element, rescale, clamp | free, one rescale, one clamp |
//! | Add / Sub of a constant | garbled constant | free |
//! | ReLU / Clip | nothing when the input's proven interval already lies inside; else a ReLU or a clamp | free, or a ReLU / a clamp |
//! | MaxPool | a max2 tree | (window − 1) max2 |
//! | AveragePool / GlobalAveragePool | window sum, public multiplier per position, rescale | free, one rescale |
//! | Reshape / Softmax | nothing | free |
//!
//! The multiplications by m are free label arithmetic; they widen the CRT range by the
//! multiplier's bits before the shift. Because every activation is saturated, each accumulator
//! is bounded per output channel by `(Σ_j |w_cj| · max|x| + |b_c|) · m_c`, independently of
//! depth: [`NetworkCircuit::sound_primes`] computes these bounds over the circuit's own steps and
//! returns the smallest k that holds every one of them.
//!
//! A clamp is two exact signs and one bit × residue product per residue (see `network::clamp`).
//! Each sign (of a ReLU or a clamp) runs over only the first j ≤ k primes whose range holds the
//! values it resolves — after a rescale they are far smaller than the accumulators that set k —
//! as [`NetworkCircuit::sign_bases`] computes from the same bounds; the garbler and the evaluator
//! must apply the same list ([`NetworkCircuit::with_sign_bases`]).

use tessera_engine::qint::{IntModel, IntOp};
use tessera_model::ir::Op;
use tessera_model::tensor::{Tensor, broadcast_index_map, concat, numel, slice_axis, transpose};

use super::{
    Compiler, GarbleError, NetworkCircuit, NodeIo, StepOp, clamp_bound, conv_step,
    global_pool_table, map_u32, max_pool_table, primes_holding, set, slot_value, to_u32,
    unsupported,
};
use crate::crt::MAX_CRT_PRIMES;

impl Compiler<'_> {
    /// `x · m[map[i]]` when some multiplier is not 1, then a rescale by 2^shift when shift > 0.
    fn requant(
        &mut self,
        ni: usize,
        x: usize,
        mult: Vec<i64>,
        map: Vec<u32>,
        shift: u32,
        len: usize,
    ) -> usize {
        let x = if mult.iter().all(|&m| m == 1) {
            x
        } else {
            self.push(ni, x, StepOp::MulPublic { consts: mult, map }, len)
        };
        if shift == 0 {
            x
        } else {
            self.push(ni, x, StepOp::Rescale { bits: shift }, len)
        }
    }

    /// A clamp to [lo, hi] unless the proven interval of the input already lies inside.
    fn clamp_to(
        &mut self,
        ni: usize,
        x: usize,
        within: (i64, i64),
        lo: i64,
        hi: i64,
        len: usize,
    ) -> usize {
        if within.0 >= lo && within.1 <= hi {
            x
        } else {
            self.push(
                ni,
                x,
                StepOp::Clamp {
                    lo,
                    hi,
                    sign_primes: 0,
                },
                len,
            )
        }
    }

    /// Concat: each input requantized and clamped to the output's grid, gathered into its
    /// place with the other places multiplied by a public 0, and the pieces added — all free
    /// label arithmetic but the requantizations and clamps.
    fn concat_node(
        &mut self,
        m: &IntModel,
        ni: usize,
        axis: usize,
        parts: &[(i64, u32)],
        (lo, hi): (i64, i64),
        out_len: usize,
    ) -> Result<usize, GarbleError> {
        let g = self.graph;
        let n = g.nodes.get(ni).ok_or(GarbleError::Internal("node index"))?;
        let name = n.name.as_str();
        if parts.len() != n.inputs.len() {
            return Err(GarbleError::Internal("one requantization per concat input"));
        }
        // Tag every output position with (input, index in that input).
        let tags = n
            .inputs
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let shape = g.shape(v);
                let len = numel(shape).map_err(|e| unsupported(name, e.to_string()))?;
                Tensor::new(shape.to_vec(), (0..len).map(|j| (i, j)).collect())
                    .map_err(|e| unsupported(name, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&Tensor<(usize, usize)>> = tags.iter().collect();
        let placed = concat(&refs, axis)
            .map_err(|e| unsupported(name, e.to_string()))?
            .into_parts()
            .1;
        let mut sum: Option<usize> = None;
        for (i, (&v, &(mult, shift))) in n.inputs.iter().zip(parts).enumerate() {
            let slot = slot_value(&self.slot_of, v, name)?;
            let len = numel(g.shape(v)).map_err(|e| unsupported(name, e.to_string()))?;
            let iv = m
                .value(v)
                .map(|q| (q.lo, q.hi))
                .ok_or(GarbleError::Internal("input interval"))?;
            let y = if (mult, shift) == (1, 0) {
                self.clamp_to(ni, slot, iv, lo, hi, len)
            } else {
                let r = self.requant(ni, slot, vec![mult], vec![0u32; len], shift, len);
                self.clamp_to(ni, r, (i64::MIN, i64::MAX), lo, hi, len)
            };
            let idx = placed
                .iter()
                .map(|&(k, j)| to_u32(if k == i { j } else { 0 }, name))
                .collect::<Result<Vec<_>, _>>()?;
            let mask = placed
                .iter()
                .map(|&(k, _)| u32::from(k != i))
                .collect::<Vec<_>>();
            let spread = self.push(ni, y, StepOp::Gather { idx }, out_len);
            let own = self.push(
                ni,
                spread,
                StepOp::MulPublic {
                    consts: vec![1, 0],
                    map: mask,
                },
                out_len,
            );
            sum = Some(match sum {
                None => own,
                Some(acc) => self.push_pair(ni, acc, own, StepOp::Add, out_len),
            });
        }
        sum.ok_or_else(|| unsupported(name, "a concatenation of nothing"))
    }

    fn qint_node(&mut self, m: &IntModel, ni: usize) -> Result<usize, GarbleError> {
        let NodeIo {
            n,
            in_value,
            x,
            in_shape,
            out_shape,
            out_len,
        } = self.node_io(ni)?;
        let name = n.name.as_str();
        let op = m.op(ni).ok_or(GarbleError::Internal("lowered op"))?;
        let interval = |v: usize| m.value(v).map(|q| (q.lo, q.hi));
        let in_iv = interval(in_value).ok_or(GarbleError::Internal("input interval"))?;
        // A value's interval before saturation is unknown to the compiler: always clamp.
        let open = (i64::MIN, i64::MAX);
        let slot = match (&n.op, op) {
            (Op::Conv(_) | Op::Dense(_), IntOp::Linear(l)) => {
                let (linear, npos, rows) = match &n.op {
                    Op::Conv(c) => conv_step(c, &in_shape, &out_shape, l.w.clone(), name)?,
                    _ => {
                        let ws = match &n.op {
                            Op::Dense(d) => d.weight.shape().to_vec(),
                            _ => Vec::new(),
                        };
                        if in_shape.len() != 2 || ws.len() != 2 || ws.get(1) != in_shape.get(1) {
                            return Err(unsupported(
                                name,
                                "a dense layer whose input is not [N, K]",
                            ));
                        }
                        let (images, k, rows) = (in_shape[0], in_shape[1], ws[0]);
                        (
                            StepOp::Linear {
                                weights: l.w.clone(),
                                rows,
                                kk: k,
                                npos: 1,
                                images,
                                in_image: k,
                                gather: None,
                            },
                            1,
                            rows,
                        )
                    }
                };
                let acc = self.push(ni, x, linear, out_len);
                let map: Vec<u32> = (0..out_len)
                    .map(|i| to_u32((i / npos.max(1)) % rows.max(1), name))
                    .collect::<Result<_, _>>()?;
                let acc = self.push(
                    ni,
                    acc,
                    StepOp::AddSecret {
                        count: l.b.len(),
                        consts: Some(l.b.clone()),
                        map: map.clone(),
                    },
                    out_len,
                );
                let y = self.requant(ni, acc, l.mult.clone(), map, l.shift, out_len);
                self.clamp_to(ni, y, open, l.lo, l.hi, out_len)
            }
            (
                Op::Binary { constant: None, .. },
                IntOp::AddAct {
                    ma,
                    mb,
                    shift,
                    lo,
                    hi,
                },
            ) => {
                let (xb, yb) = self.operands(ni, x, &in_shape, &out_shape)?;
                let zeros = vec![0u32; out_len];
                let xm = self.requant(ni, xb, vec![*ma], zeros.clone(), 0, out_len);
                let ym = self.requant(ni, yb, vec![*mb], zeros, 0, out_len);
                let sum = self.push_pair(ni, xm, ym, StepOp::Add, out_len);
                let r = self.requant(ni, sum, vec![1], Vec::new(), *shift, out_len);
                self.clamp_to(ni, r, open, *lo, *hi, out_len)
            }
            (
                Op::Binary {
                    constant: Some(c), ..
                },
                IntOp::AddConst { c: cq, neg_x },
            ) => {
                let xb = self.broadcast(ni, x, &in_shape, &out_shape, name)?;
                let map = map_u32(broadcast_index_map(c.shape(), &out_shape), name)?;
                let base = if *neg_x {
                    self.push(ni, xb, StepOp::Neg, out_len)
                } else {
                    xb
                };
                self.push(
                    ni,
                    base,
                    StepOp::AddSecret {
                        count: cq.len(),
                        consts: Some(cq.clone()),
                        map,
                    },
                    out_len,
                )
            }
            (
                Op::Binary {
                    constant: Some(c), ..
                },
                IntOp::MulConst {
                    mult,
                    add,
                    shift,
                    lo,
                    hi,
                },
            ) => {
                let xb = self.broadcast(ni, x, &in_shape, &out_shape, name)?;
                let map = map_u32(broadcast_index_map(c.shape(), &out_shape), name)?;
                let mut y = self.push(
                    ni,
                    xb,
                    StepOp::MulPublic {
                        consts: mult.clone(),
                        map: map.clone(),
                    },
                    out_len,
                );
                if !add.is_empty() {
                    // A fused affine step: the added constant is garbled, before the shift.
                    y = self.push(
                        ni,
                        y,
                        StepOp::AddSecret {
                            count: add.len(),
                            consts: Some(add.clone()),
                            map,
                        },
                        out_len,
                    );
                }
                let y = self.requant(ni, y, vec![1], Vec::new(), *shift, out_len);
                self.clamp_to(ni, y, open, *lo, *hi, out_len)
            }
            (_, IntOp::Relu) => {
                if in_iv.0 >= 0 {
                    x
                } else {
                    self.push(ni, x, StepOp::Relu { sign_primes: 0 }, out_len)
                }
            }
            (_, IntOp::Clip { lo, hi }) => self.clamp_to(ni, x, in_iv, *lo, *hi, out_len),
            (Op::MaxPool(p), IntOp::MaxPool) => {
                let (idx, window) = max_pool_table(p, &in_shape, &out_shape, out_len, name)?;
                self.push(ni, x, StepOp::MaxPool { idx, window }, out_len)
            }
            (Op::AvgPool(p), IntOp::AvgPool { mult, shift }) => {
                if in_shape.len() != 4 || out_shape.len() != 4 {
                    return Err(unsupported(name, "pooling that is not 2-D over NCHW"));
                }
                let geo = tessera_engine::window::pool_geometry(p, &in_shape, &out_shape);
                let window = geo.k[0] * geo.k[1];
                let idx = super::window_table(&geo, in_shape[0] * in_shape[1], name)?;
                let plane = (geo.oh * geo.ow).max(1);
                if mult.len() != plane {
                    return Err(GarbleError::Internal("one multiplier per pooled position"));
                }
                let sum = self.push(ni, x, StepOp::SumPool { idx, window }, out_len);
                let map = (0..out_len)
                    .map(|i| to_u32(i % plane, name))
                    .collect::<Result<_, _>>()?;
                self.requant(ni, sum, mult.clone(), map, *shift, out_len)
            }
            (Op::GlobalAvgPool, IntOp::GlobalAvgPool { mult, shift }) => {
                let (idx, hw) = global_pool_table(&in_shape, name)?;
                let sum = self.push(ni, x, StepOp::SumPool { idx, window: hw }, out_len);
                let zeros = vec![0u32; out_len];
                self.requant(ni, sum, vec![*mult], zeros, *shift, out_len)
            }
            (_, IntOp::Pass) => x,
            // Transpose and Slice move wires: a gather, free.
            (Op::Transpose { .. } | Op::Slice { .. }, IntOp::Move) => {
                let n_in = numel(&in_shape).map_err(|e| unsupported(name, e.to_string()))?;
                let ids = Tensor::new(in_shape.clone(), (0..n_in).collect())
                    .map_err(|e| unsupported(name, e.to_string()))?;
                let moved = match &n.op {
                    Op::Transpose { perm } => transpose(&ids, perm),
                    Op::Slice { axis, start, end } => slice_axis(&ids, *axis, *start, *end),
                    _ => return Err(GarbleError::Internal("a move op")),
                }
                .map_err(|e| unsupported(name, e.to_string()))?;
                let idx = map_u32(moved.into_parts().1, name)?;
                self.push(ni, x, StepOp::Gather { idx }, out_len)
            }
            (Op::Concat { axis }, IntOp::Concat { parts, lo, hi }) => {
                self.concat_node(m, ni, *axis, parts, (*lo, *hi), out_len)?
            }
            // An int8 model's Quantize to a grid of another scale.
            (
                Op::Quantize(_),
                IntOp::Requant {
                    mult,
                    shift,
                    lo,
                    hi,
                },
            ) => {
                let y = self.requant(ni, x, vec![*mult], vec![0u32; out_len], *shift, out_len);
                self.clamp_to(ni, y, open, *lo, *hi, out_len)
            }
            (other, _) => {
                return Err(unsupported(
                    name,
                    format!(
                        "{} has no garbled form in the integer semantics v2",
                        other.kind()
                    ),
                ));
            }
        };
        Ok(slot)
    }
}

impl NetworkCircuit {
    /// Compiles a network lowered to the integer semantics v2 over the first `primes` CRT
    /// primes (module docs of `network::qint`); bit for bit what [`IntModel::run_int`] computes
    /// when k is at least [`Self::sound_primes`]. Max pooling is moved before rescales and ReLUs
    /// where exact.
    pub fn compile_qint(m: &IntModel, primes: usize) -> Result<Self, GarbleError> {
        Self::compile_nodes(m.graph(), 0, primes, true, |c, ni| c.qint_node(m, ni))
    }

    /// [`Self::compile_qint`] at the sound k with every sign over the primes it needs
    /// ([`Self::sound_primes`], [`Self::sign_bases`]): the circuit the `gc` enclave garbles.
    pub fn compile_qint_sound(m: &IntModel) -> Result<Self, GarbleError> {
        let limit = m
            .input_quant()
            .map_err(|e| unsupported(&m.graph().name, e.to_string()))?;
        let c = Self::compile_qint(m, 2)?;
        let k = c.sound_primes(limit.max_abs())?;
        let c = c.with_primes(k)?;
        let bases = c.sign_bases(limit.max_abs())?;
        c.with_sign_bases(&bases)
    }

    /// The largest magnitude every gadget of this circuit must hold for inputs with
    /// |x| ≤ `input_max` (module docs of `network::qint`), from the circuit's own weights,
    /// garbled constants and multipliers, per element. Needs the constants (the garbler's circuit,
    /// not [`Self::public`]).
    pub fn sound_bound(&self, input_max: u128) -> Result<u128, GarbleError> {
        Ok(self.bounds(input_max)?.0)
    }

    /// [`Self::sound_bound`], and per step the largest magnitude its sign gadgets must resolve
    /// (0 for steps without one).
    fn bounds(&self, input_max: u128) -> Result<(u128, Vec<u128>), GarbleError> {
        let mut signs = vec![0u128; self.steps.len()];
        let mut mag: Vec<Vec<u128>> = vec![Vec::new(); self.slots];
        if let Some(v) = mag.get_mut(self.input) {
            *v = vec![input_max; self.input_len()];
        }
        let mut need = 0u128;
        let get = |mag: &Vec<Vec<u128>>, s: usize| -> Result<Vec<u128>, GarbleError> {
            mag.get(s)
                .cloned()
                .ok_or(GarbleError::Internal("a step's input bound is missing"))
        };
        let at = |v: &[u128], i: usize| v.get(i).copied().unwrap_or(u128::MAX);
        for (si, s) in self.steps.iter().enumerate() {
            let x = get(&mag, s.input)?;
            let xmax = x.iter().copied().max().unwrap_or(0);
            let y: Vec<u128> = match &s.op {
                StepOp::Linear {
                    weights,
                    rows,
                    kk,
                    npos,
                    ..
                } => {
                    let row_abs: Vec<u128> = weights
                        .chunks((*kk).max(1))
                        .map(|r| r.iter().map(|&w| u128::from(w.unsigned_abs())).sum())
                        .collect();
                    (0..s.len)
                        .map(|i| {
                            at(&row_abs, (i / (*npos).max(1)) % (*rows).max(1)).saturating_mul(xmax)
                        })
                        .collect()
                }
                StepOp::AddSecret { consts, map, .. } => {
                    let c = consts.as_ref().ok_or_else(|| {
                        unsupported(&self.name, "the sound range needs the garbled constants")
                    })?;
                    (0..s.len)
                        .map(|i| {
                            let j = map.get(i).copied().unwrap_or(0) as usize;
                            let cj = c.get(j).map_or(u128::MAX, |v| u128::from(v.unsigned_abs()));
                            at(&x, i).saturating_add(cj)
                        })
                        .collect()
                }
                StepOp::MulPublic { consts, map } => (0..s.len)
                    .map(|i| {
                        let j = map.get(i).copied().unwrap_or(0) as usize;
                        let cj = consts
                            .get(j)
                            .map_or(u128::MAX, |v| u128::from(v.unsigned_abs()));
                        at(&x, i).saturating_mul(cj)
                    })
                    .collect(),
                StepOp::Neg => x,
                StepOp::Gather { idx } => idx.iter().map(|&j| at(&x, j as usize)).collect(),
                StepOp::Rescale { bits } => {
                    if *bits == 0 {
                        x
                    } else {
                        let half = 1u128 << (bits - 1);
                        let room = half.saturating_add(2).max(1u128 << bits);
                        need = need.max(xmax.saturating_add(room));
                        x.iter().map(|&v| v.saturating_add(half) >> bits).collect()
                    }
                }
                StepOp::Relu { .. } => {
                    need = need.max(xmax.saturating_add(1));
                    set(&mut signs, si, xmax.saturating_add(1));
                    x
                }
                StepOp::Clamp { lo, hi, .. } => {
                    let b = clamp_bound(*lo, *hi);
                    let m = xmax.saturating_add(b).saturating_add(1);
                    need = need.max(m);
                    set(&mut signs, si, m);
                    vec![b; s.len]
                }
                StepOp::MaxPool { idx, window } => {
                    need = need.max(xmax.saturating_mul(2).saturating_add(1));
                    (0..s.len)
                        .map(|i| {
                            (0..*window)
                                .map(|t| {
                                    at(&x, idx.get(t * s.len + i).copied().unwrap_or(0) as usize)
                                })
                                .max()
                                .unwrap_or(0)
                        })
                        .collect()
                }
                StepOp::SumPool { idx, window } => (0..s.len)
                    .map(|i| {
                        (0..*window)
                            .filter_map(|t| idx.get(t * s.len + i).copied())
                            .filter(|&j| j != super::NONE)
                            .fold(0u128, |a, j| a.saturating_add(at(&x, j as usize)))
                    })
                    .collect(),
                StepOp::Add | StepOp::Sub => {
                    let o = s
                        .other
                        .ok_or(GarbleError::Internal("a step's second input is missing"))?;
                    let y = get(&mag, o)?;
                    x.iter()
                        .zip(&y)
                        .map(|(a, b)| a.saturating_add(*b))
                        .collect()
                }
            };
            if let Some(v) = mag.get_mut(s.output) {
                *v = y;
            }
        }
        let out = mag
            .get(self.output)
            .map(|v| v.iter().copied().max().unwrap_or(0))
            .unwrap_or(u128::MAX);
        Ok((need.max(out.saturating_add(1)), signs))
    }

    /// Per step, the fewest CRT primes whose range holds what its sign gadgets must resolve for
    /// inputs with |x| ≤ `input_max` (0 for steps without a sign gadget): after a rescale, values
    /// are far smaller than the accumulators that set k, and a sign over j < k primes costs about
    /// (j / k)² of one over all k. Needs the garbled constants, like [`Self::sound_bound`]; the
    /// evaluator receives the result and applies it with [`Self::with_sign_bases`].
    pub fn sign_bases(&self, input_max: u128) -> Result<Vec<u8>, GarbleError> {
        let (_, signs) = self.bounds(input_max)?;
        signs
            .iter()
            .map(|&need| match need {
                0 => Ok(0),
                need => {
                    primes_holding(need, self.primes).map(|j| u8::try_from(j).unwrap_or(u8::MAX))
                }
            })
            .collect()
    }

    /// The same circuit with the signs of its ReLU and clamp steps over the given number of
    /// primes per step ([`Self::sign_bases`]; an empty list keeps every sign over all k). A list
    /// of the wrong length, a count above k or below 2 on a sign step is an error.
    pub fn with_sign_bases(mut self, bases: &[u8]) -> Result<Self, GarbleError> {
        if bases.is_empty() {
            return Ok(self);
        }
        if bases.len() != self.steps.len() {
            return Err(GarbleError::ShapeMismatch {
                expected: self.steps.len(),
                got: bases.len(),
            });
        }
        let primes = self.primes;
        for (s, &j) in self.steps.iter_mut().zip(bases) {
            let slot = match &mut s.op {
                StepOp::Relu { sign_primes } | StepOp::Clamp { sign_primes, .. } => sign_primes,
                _ if j == 0 => continue,
                _ => {
                    return Err(GarbleError::Internal(
                        "a sign basis for a step without a sign",
                    ));
                }
            };
            if j != 0 && (j < 2 || usize::from(j) > primes) {
                return Err(GarbleError::ResidueCount {
                    expected: primes,
                    got: usize::from(j),
                });
            }
            *slot = j;
        }
        Ok(self)
    }

    /// The smallest k whose CRT range holds [`Self::sound_bound`] for inputs with
    /// |x| ≤ `input_max` (for a v2 circuit, the input interval's largest magnitude): sound for
    /// every input, by construction of the saturating semantics.
    pub fn sound_primes(&self, input_max: u128) -> Result<usize, GarbleError> {
        self.sound_primes_with_margin(input_max, 0)
    }

    /// [`Self::sound_primes`] for the bound shifted left by `margin_bits`.
    pub fn sound_primes_with_margin(
        &self,
        input_max: u128,
        margin_bits: u32,
    ) -> Result<usize, GarbleError> {
        let need = self.sound_bound(input_max)?;
        let wide = need
            .checked_shl(margin_bits)
            .filter(|v| v >> margin_bits == need)
            .unwrap_or(u128::MAX);
        primes_holding(wide, MAX_CRT_PRIMES)
    }
}

impl NetworkCircuit {
    /// Compiles a model under whichever integer semantics it was quantized with.
    pub fn compile_exact(
        m: &tessera_engine::ExactModel,
        primes: usize,
    ) -> Result<Self, GarbleError> {
        match m {
            tessera_engine::ExactModel::Pow2(q) => Self::compile(q.graph(), q.config(), primes),
            tessera_engine::ExactModel::V2(q) => Self::compile_qint(q, primes),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::crt::CrtBasis;
    use crate::gadget::{PlainBackend, PlainWire};
    use crate::gadget::{clamp, relu_narrow};
    use proptest::prelude::*;

    fn wires(b: &CrtBasis, x: i64) -> Vec<PlainWire> {
        let r = b.encode(x).expect("in range");
        b.moduli()
            .iter()
            .zip(r)
            .map(|(&m, v)| PlainWire::new(m, u64::from(v)))
            .collect()
    }

    fn value(b: &CrtBasis, w: &[PlainWire]) -> i64 {
        b.decode(&w.iter().map(|p| p.value()).collect::<Vec<_>>())
            .expect("decodes")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        /// The clamp gadget and the narrow ReLU against plain arithmetic, with the signs over
        /// the fewest primes whose range holds what they resolve.
        #[test]
        fn clamp_and_narrow_relu_are_exact(
            k in 6usize..=9,
            x in -5000i64..5000,
            lo in -300i64..=0,
            width in 0i64..600,
        ) {
            let b = CrtBasis::first_primes(k).expect("basis");
            let hi = lo + width;
            let need = u128::from(x.unsigned_abs() + lo.unsigned_abs().max(hi.unsigned_abs()) + 1);
            let mut product = 1u128;
            let mut j = 0;
            for (i, m) in b.moduli().iter().enumerate() {
                product *= u128::from(m.q());
                if i >= 1 && need <= product / 2 {
                    j = i + 1;
                    break;
                }
            }
            prop_assume!(j != 0);
            let w = wires(&b, x);
            let y = clamp(&mut PlainBackend, &w, lo, hi, j as u8).expect("clamps");
            prop_assert_eq!(value(&b, &y), x.clamp(lo, hi));
            let r = relu_narrow(&mut PlainBackend, &w, j as u8).expect("relu");
            prop_assert_eq!(value(&b, &r), x.max(0));
        }
    }
}
