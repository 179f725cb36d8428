//! What the client of `2pc` knows of the model: the architecture, not the weights.
//!
//! The server sends a [`PublicModel`] when a session opens: the input's shape and grid, each
//! linear layer's geometry, its requantization constants (per-channel multipliers, shift,
//! clamp) and the ops up to the next linear layer, the output's shape and scale, and the HE
//! parameters. Both parties build the segment circuits and the HE layouts from it with the same
//! code ([`Public::new`]), so they agree gate for gate. The weights and biases never leave the
//! server; the requantization constants are public (they shape the circuits the client
//! evaluates or garbles), which is what Delphi assumes of its fixed-point scales too.
//!
//! A public model comes from a peer, so [`PublicModel::validate`] bounds every size before a
//! circuit is built, and the client checks that the HE parameters are 128-bit secure
//! ([`HeParams::explicit`]): its masks are encrypted under them.

use crate::model::Shape;
use crate::protocol::TwoPcError;
use serde::{Deserialize, Serialize};
use tessera_engine::qint::ValueQuant;
use tessera_he::{HeParams, LinearPlan};
use tessera_mpc::MpcError;
use tessera_mpc::circuit::{Builder, Checked, Word};

/// Version of the public description.
pub const PUBLIC_VERSION: u16 = 1;

/// Most values one layer may have on either side (a bound on what a peer can make us build).
pub const MAX_VALUES: usize = 1 << 22;

/// Most linear layers.
pub const MAX_LAYERS: usize = 4096;

/// One linear layer without its weights: its geometry and the masked value it reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicLinear {
    /// The layer's name in the model.
    pub name: String,
    /// Its geometry.
    pub shape: Shape,
    /// The masked value it reads (0: the model's input).
    pub input: usize,
}

/// One step of a segment's program. Every step makes one slot (a list of signed words; `Write`
/// and `Output` make an empty one), and `src` names an earlier step's slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SegOp {
    /// Linear layer `layer`'s accumulators, reconstructed from the two shares, requantized per
    /// output channel and clamped: `clamp(rq(acc; mult[ch], shift), lo, hi)`.
    Linear {
        /// The layer (one of the segment's `linears`).
        layer: usize,
        /// Multiplier per output channel.
        mult: Vec<i64>,
        /// Shift.
        shift: u32,
        /// Saturation bounds.
        lo: i64,
        /// Saturation bounds.
        hi: i64,
    },
    /// Masked value `value` reconstructed (`y + r`) as `bits`-bit signed integers.
    Read {
        /// The value (one of the segment's `reads`).
        value: usize,
        /// Its width.
        bits: u32,
    },
    /// `clamp(x, lo, hi)` (ReLU: `lo = 0`, `hi = i64::MAX`).
    Clamp {
        /// Operand.
        src: usize,
        /// Bounds.
        lo: i64,
        /// Bounds.
        hi: i64,
    },
    /// The maximum over each output's window (input indices).
    MaxPool {
        /// Operand.
        src: usize,
        /// Per output, its window's input indices.
        windows: Vec<Vec<usize>>,
    },
    /// Each window's sum, then `rq(sum; mult[p], shift)` with `p` the output's position in its
    /// plane (`mult` has one entry per position), as `bits`-bit integers.
    AvgPool {
        /// Operand.
        src: usize,
        /// Per output, its window's input indices.
        windows: Vec<Vec<usize>>,
        /// Multiplier per plane position.
        mult: Vec<i64>,
        /// Shift.
        shift: u32,
        /// Width of the result.
        bits: u32,
    },
    /// `clamp(rq(a·ma + b·mb; 1, shift), lo, hi)` element by element (a residual add).
    Add {
        /// Operands.
        a: usize,
        /// Operands.
        b: usize,
        /// Multipliers.
        ma: i64,
        /// Multipliers.
        mb: i64,
        /// Shift.
        shift: u32,
        /// Bounds.
        lo: i64,
        /// Bounds.
        hi: i64,
    },
    /// The same values (a reshape).
    Pass {
        /// Operand.
        src: usize,
    },
    /// Hand `src` on as masked value `value` (`x − r`, for the server).
    Write {
        /// Operand.
        src: usize,
        /// The value (one of the segment's `writes`, in order).
        value: usize,
    },
    /// The model's output (last segment only; for the client alone).
    Output {
        /// Operand.
        src: usize,
    },
}

/// One garbled circuit and one online round: the linear layers whose accumulators it takes, the
/// masked values it reads and writes, and its program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicSegment {
    /// Linear layers whose shares are inputs (server: `a`, client: `c`).
    pub linears: Vec<usize>,
    /// Masked values read (server: `y`, client: `r`).
    pub reads: Vec<usize>,
    /// Masked values written, in the order of the `Write` steps (client: the fresh mask `r`).
    pub writes: Vec<usize>,
    /// The program.
    pub ops: Vec<SegOp>,
}

/// The model as the client sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicModel {
    /// [`PUBLIC_VERSION`].
    pub version: u16,
    /// The input tensor's shape.
    pub input_shape: Vec<usize>,
    /// The input's grid (the client quantizes its input on it).
    pub input: ValueQuant,
    /// The output tensor's shape.
    pub output_shape: Vec<usize>,
    /// The real value of one output step.
    pub output_scale: f64,
    /// Width of the output integers in the last circuit.
    pub out_bits: usize,
    /// The HE parameters in their wire form (`tessera_he::wire::write_params`): the client
    /// rebuilds them and checks their security before it encrypts anything under them.
    pub he: Vec<u8>,
    /// Length of every masked value (value 0 is the first linear layer's input).
    pub values: Vec<usize>,
    /// Linear layers in order.
    pub layers: Vec<PublicLinear>,
    /// Segments in online order.
    pub segments: Vec<PublicSegment>,
}

fn bad(what: impl Into<String>) -> TwoPcError {
    TwoPcError::Protocol(format!("the server's model description: {}", what.into()))
}

/// A linear layer's geometry is possible and bounded.
fn check_shape(l: &PublicLinear) -> Result<(), TwoPcError> {
    let ok = match &l.shape {
        Shape::Conv(s) => {
            s.c_in > 0
                && s.c_out > 0
                && s.groups > 0
                && s.k.iter().chain(&s.stride).chain(&s.dil).all(|&v| v > 0)
                && s.c_in.checked_mul(s.h).and_then(|v| v.checked_mul(s.w)) <= Some(MAX_VALUES)
                && s.c_out <= MAX_VALUES
                && s.c_in.is_multiple_of(s.groups)
                && s.c_out.is_multiple_of(s.groups)
                && s.pads.iter().all(|&p| p < 1 << 16)
                && s.k.iter().chain(&s.dil).all(|&v| v < 1 << 16)
                && {
                    let (hp, wp) = s.padded();
                    let (kh, kw) = s.extent();
                    kh <= hp && kw <= wp && {
                        let (oh, ow) = s.out_hw();
                        s.c_out.checked_mul(oh).and_then(|v| v.checked_mul(ow)) <= Some(MAX_VALUES)
                    }
                }
        }
        Shape::Dense { k, m } => *k > 0 && *m > 0 && *k <= MAX_VALUES && *m <= MAX_VALUES,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "layer '{}' has an impossible geometry",
            l.name
        )))
    }
}

fn checked_len(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_VALUES)
}

impl PublicModel {
    /// Check every size, index and order before anything is built from it: each linear layer
    /// is taken by exactly one segment, after the value it reads exists; each masked value but
    /// the input is written by exactly one segment before anything reads it; the last segment
    /// alone has the output. Slot lengths are checked as the circuits are built.
    pub fn validate(&self) -> Result<(), TwoPcError> {
        if self.version != PUBLIC_VERSION {
            return Err(bad(format!(
                "version {} (this build reads {PUBLIC_VERSION})",
                self.version
            )));
        }
        if self.layers.is_empty()
            || self.layers.len() > MAX_LAYERS
            || self.segments.is_empty()
            || self.segments.len() > 2 * MAX_LAYERS
            || self.values.is_empty()
            || self.values.len() > 2 * MAX_LAYERS
        {
            return Err(bad(format!(
                "{} linear layers, {} segments, {} masked values",
                self.layers.len(),
                self.segments.len(),
                self.values.len()
            )));
        }
        let q = &self.input;
        if !(q.scale.is_finite() && q.scale > 0.0) || q.lo > q.hi {
            return Err(bad("the input grid is not a positive scale over lo ≤ hi"));
        }
        if !(self.output_scale.is_finite() && self.output_scale > 0.0) {
            return Err(bad("the output scale is not positive"));
        }
        if !(2..=62).contains(&self.out_bits) {
            return Err(bad(format!("{}-bit outputs", self.out_bits)));
        }
        let n_in = checked_len(&self.input_shape).ok_or_else(|| bad("input too large"))?;
        checked_len(&self.output_shape).ok_or_else(|| bad("output too large"))?;
        if self.values.iter().any(|&n| n == 0 || n > MAX_VALUES) || self.values[0] != n_in {
            return Err(bad(
                "a masked value's length is 0, too large, or not the input's",
            ));
        }
        for l in &self.layers {
            check_shape(l)?;
            if self.values.get(l.input) != Some(&l.shape.inputs()) {
                return Err(bad(format!(
                    "layer '{}' reads value {} of another length",
                    l.name, l.input
                )));
            }
        }
        // Order: written[v] = segment that writes v; taken[l] = segment that takes layer l.
        let mut written: Vec<Option<usize>> = vec![None; self.values.len()];
        written[0] = Some(0);
        let mut taken: Vec<Option<usize>> = vec![None; self.layers.len()];
        let last = self.segments.len() - 1;
        for (j, seg) in self.segments.iter().enumerate() {
            let ready = |v: usize, written: &[Option<usize>]| matches!(written.get(v), Some(Some(w)) if v == 0 || *w < j);
            for &l in &seg.linears {
                let layer = self.layers.get(l).ok_or_else(|| bad("no such layer"))?;
                if taken[l].replace(j).is_some() || !ready(layer.input, &written) {
                    return Err(bad(format!(
                        "layer '{}' is taken twice or before its input exists",
                        layer.name
                    )));
                }
            }
            for &v in &seg.reads {
                if !ready(v, &written) {
                    return Err(bad(format!("segment {j} reads value {v} before it exists")));
                }
            }
            let writes: Vec<usize> = seg
                .ops
                .iter()
                .filter_map(|o| match o {
                    SegOp::Write { value, .. } => Some(*value),
                    _ => None,
                })
                .collect();
            if writes != seg.writes {
                return Err(bad(format!("segment {j}'s writes do not match its steps")));
            }
            for &v in &seg.writes {
                match written.get_mut(v) {
                    Some(w @ None) if v != 0 => *w = Some(j),
                    _ => return Err(bad(format!("value {v} is written twice or does not exist"))),
                }
            }
            let outputs = seg
                .ops
                .iter()
                .filter(|o| matches!(o, SegOp::Output { .. }))
                .count();
            if outputs != usize::from(j == last) || (j == last && !seg.writes.is_empty()) {
                return Err(bad(
                    "only the last segment has the output, once, and no writes",
                ));
            }
        }
        if taken.iter().any(Option::is_none) || written.iter().any(Option::is_none) {
            return Err(bad("a linear layer or a masked value is never used"));
        }
        Ok(())
    }

    /// The input quantized on its grid, in the model's layout.
    pub fn quantize(&self, x: &[f32], shape: &[usize]) -> Result<Vec<i64>, TwoPcError> {
        if shape != self.input_shape.as_slice() {
            return Err(TwoPcError::Input(format!(
                "the input has shape {shape:?}; the model takes {:?}",
                self.input_shape
            )));
        }
        x.iter()
            .map(|&v| {
                if !v.is_finite() {
                    return Err(TwoPcError::Input(format!("input value {v} is not finite")));
                }
                let r = (f64::from(v) / self.input.scale).round();
                Ok(r.clamp(self.input.lo as f64, self.input.hi as f64) as i64)
            })
            .collect()
    }
}

fn circuit_err(j: usize, what: impl std::fmt::Display) -> MpcError {
    MpcError::Circuit(format!("segment {j}: {what}"))
}

/// Allocate `n` inputs of `bits` each.
fn inputs(b: &mut Builder, n: usize, bits: usize) -> Vec<Word> {
    (0..n).map(|_| b.input(bits)).collect()
}

/// Segment `j`'s circuit. Inputs: the server's (for each linear layer taken its shares `a`,
/// then for each value read its `y`), then the client's (shares `c`, the masks `r` of the values
/// read, the fresh masks of the values written), ℓ bits each. Outputs: each written value as
/// `x − r` (ℓ bits each), or in the last segment the model's output as signed `out_bits`-bit
/// integers.
pub fn segment_circuit(
    m: &PublicModel,
    j: usize,
    share_bits: usize,
    out_bits: usize,
) -> Result<Checked, MpcError> {
    use crate::gadget::{Requant, bits_for, clamp_to, extend, fit, mul_rq, requant_value};
    let seg = m
        .segments
        .get(j)
        .ok_or_else(|| circuit_err(j, "no such segment"))?;
    let lin_len = |l: &usize| -> Result<usize, MpcError> {
        m.layers
            .get(*l)
            .map(|x| x.shape.outputs().0)
            .ok_or_else(|| circuit_err(j, "no such layer"))
    };
    let val_len = |v: &usize| -> Result<usize, MpcError> {
        m.values
            .get(*v)
            .copied()
            .ok_or_else(|| circuit_err(j, "no such value"))
    };
    let mut b = Builder::new();
    let a: Vec<Vec<Word>> = seg
        .linears
        .iter()
        .map(|l| Ok(inputs(&mut b, lin_len(l)?, share_bits)))
        .collect::<Result<_, MpcError>>()?;
    let y: Vec<Vec<Word>> = seg
        .reads
        .iter()
        .map(|v| Ok(inputs(&mut b, val_len(v)?, share_bits)))
        .collect::<Result<_, MpcError>>()?;
    let c: Vec<Vec<Word>> = seg
        .linears
        .iter()
        .map(|l| Ok(inputs(&mut b, lin_len(l)?, share_bits)))
        .collect::<Result<_, MpcError>>()?;
    let r: Vec<Vec<Word>> = seg
        .reads
        .iter()
        .map(|v| Ok(inputs(&mut b, val_len(v)?, share_bits)))
        .collect::<Result<_, MpcError>>()?;
    let rw: Vec<Vec<Word>> = seg
        .writes
        .iter()
        .map(|v| Ok(inputs(&mut b, val_len(v)?, share_bits)))
        .collect::<Result<_, MpcError>>()?;
    let mut slots: Vec<Vec<Word>> = Vec::with_capacity(seg.ops.len());
    let mut n_writes = 0;
    let window_sum = |b: &mut Builder, x: &[Word], win: &[usize]| -> Result<Word, MpcError> {
        let w = x.first().map_or(1, Vec::len) + bits_for(win.len() as i128) + 1;
        let mut sum = b.constant(0, w);
        for &i in win {
            let v = x
                .get(i)
                .ok_or_else(|| circuit_err(j, "a window reads outside its input"))?;
            sum = b.add(&sum, &extend(v, w));
        }
        Ok(sum)
    };
    for (k, op) in seg.ops.iter().enumerate() {
        let slot = |s: &usize| -> Result<&Vec<Word>, MpcError> {
            slots
                .get(*s)
                .filter(|_| *s < k)
                .ok_or_else(|| circuit_err(j, format!("step {k} reads a later or missing step")))
        };
        let out: Vec<Word> = match op {
            SegOp::Linear {
                layer,
                mult,
                shift,
                lo,
                hi,
            } => {
                let at = seg
                    .linears
                    .iter()
                    .position(|l| l == layer)
                    .ok_or_else(|| circuit_err(j, "a layer it does not take"))?;
                let shape = &m
                    .layers
                    .get(*layer)
                    .ok_or_else(|| circuit_err(j, "no such layer"))?
                    .shape;
                let (n, channels) = shape.outputs();
                if mult.len() != channels
                    || mult.iter().any(|v| v.unsigned_abs() >= 1 << 32)
                    || *shift > 62
                    || lo > hi
                {
                    return Err(circuit_err(j, "requantization constants out of range"));
                }
                let per = (n / channels.max(1)).max(1);
                (0..n)
                    .map(|i| {
                        let q = Requant {
                            share_bits,
                            mult: mult[(i / per).min(channels - 1)],
                            shift: *shift,
                            lo: *lo,
                            hi: *hi,
                            out_bits: share_bits,
                        };
                        requant_value(&mut b, &q, &a[at][i], &c[at][i])
                    })
                    .collect::<Result<_, _>>()?
            }
            SegOp::Read { value, bits } => {
                let at = seg
                    .reads
                    .iter()
                    .position(|v| v == value)
                    .ok_or_else(|| circuit_err(j, "a value it does not read"))?;
                let bits = *bits as usize;
                if !(2..=share_bits).contains(&bits) {
                    return Err(circuit_err(j, format!("a {bits}-bit value")));
                }
                // The value fits `bits` signed bits, so the low bits of y + r mod 2^ℓ are it.
                y[at]
                    .iter()
                    .zip(&r[at])
                    .map(|(yv, rv)| {
                        let lo_y: Word = yv.iter().take(bits).copied().collect();
                        let lo_r: Word = rv.iter().take(bits).copied().collect();
                        b.add(&lo_y, &lo_r)
                    })
                    .collect()
            }
            SegOp::Clamp { src, lo, hi } => {
                let x = slot(src)?.clone();
                if lo > hi {
                    return Err(circuit_err(j, "a clamp with lo > hi"));
                }
                x.iter()
                    .map(|v| {
                        let w = v.len();
                        let mut v = v.clone();
                        if i128::from(*lo) > -(1i128 << (w - 1)) {
                            let lo_w = b.constant(i128::from(*lo), w);
                            let below = b.lt_signed(&v, &lo_w);
                            v = b.mux_word(below, &lo_w, &v);
                        }
                        if *hi < i64::MAX && i128::from(*hi) < (1i128 << (w - 1)) {
                            let hi_w = b.constant(i128::from(*hi), w);
                            let above = b.lt_signed(&hi_w, &v);
                            v = b.mux_word(above, &hi_w, &v);
                        }
                        v
                    })
                    .collect()
            }
            SegOp::MaxPool { src, windows } => {
                let x = slot(src)?.clone();
                let bad_win = || circuit_err(j, "a max pool window reads outside its input");
                windows
                    .iter()
                    .map(|win| {
                        let (first, rest) = win.split_first().ok_or_else(bad_win)?;
                        let mut mx = x.get(*first).ok_or_else(bad_win)?.clone();
                        for idx in rest {
                            let v = x.get(*idx).ok_or_else(bad_win)?;
                            let lt = b.lt_signed(&mx, v);
                            mx = b.mux_word(lt, v, &mx);
                        }
                        Ok(mx)
                    })
                    .collect::<Result<_, MpcError>>()?
            }
            SegOp::AvgPool {
                src,
                windows,
                mult,
                shift,
                bits,
            } => {
                let x = slot(src)?.clone();
                if mult.is_empty()
                    || mult.iter().any(|v| v.unsigned_abs() >= 1 << 32)
                    || *shift > 62
                    || !(2..=62).contains(bits)
                {
                    return Err(circuit_err(j, "pooling constants out of range"));
                }
                windows
                    .iter()
                    .enumerate()
                    .map(|(o, win)| {
                        if win.is_empty() {
                            return Err(circuit_err(j, "an empty pooling window"));
                        }
                        let sum = window_sum(&mut b, &x, win)?;
                        let v = mul_rq(&mut b, &sum, mult[o % mult.len()], *shift);
                        Ok(fit(&v, *bits as usize))
                    })
                    .collect::<Result<_, MpcError>>()?
            }
            SegOp::Add {
                a: sa,
                b: sb,
                ma,
                mb,
                shift,
                lo,
                hi,
            } => {
                let (xa, xb) = (slot(sa)?.clone(), slot(sb)?.clone());
                if xa.len() != xb.len()
                    || ma.unsigned_abs() >= 1 << 32
                    || mb.unsigned_abs() >= 1 << 32
                    || *shift > 62
                    || lo > hi
                {
                    return Err(circuit_err(
                        j,
                        "an add of unequal operands or constants out of range",
                    ));
                }
                xa.iter()
                    .zip(&xb)
                    .map(|(p, q)| {
                        // rq(p·ma + q·mb; 1, n) = ⌊(p·ma + q·mb + 2^(n−1)) / 2^n⌋.
                        let pa = mul_rq(&mut b, p, *ma, 0);
                        let qb = mul_rq(&mut b, q, *mb, 0);
                        let w = pa.len().max(qb.len()) + 1;
                        let s = b.add(&extend(&pa, w), &extend(&qb, w));
                        let v = mul_rq(&mut b, &s, 1, *shift);
                        clamp_to(&mut b, &v, *lo, *hi)
                    })
                    .collect()
            }
            SegOp::Pass { src } => slot(src)?.clone(),
            SegOp::Write { src, value } => {
                let x = slot(src)?.clone();
                let mask = rw
                    .get(n_writes)
                    .filter(|_| seg.writes.get(n_writes) == Some(value))
                    .ok_or_else(|| circuit_err(j, "writes out of order"))?;
                n_writes += 1;
                if x.len() != mask.len() {
                    return Err(circuit_err(
                        j,
                        format!("writes {} values to a value of {}", x.len(), mask.len()),
                    ));
                }
                for (v, rv) in x.iter().zip(mask) {
                    let masked = b.sub(&extend(v, share_bits), rv);
                    b.output(&masked);
                }
                Vec::new()
            }
            SegOp::Output { src } => {
                let x = slot(src)?.clone();
                let n_out = m.output_shape.iter().product::<usize>();
                if x.len() != n_out {
                    return Err(circuit_err(j, "the output has the wrong length"));
                }
                for v in &x {
                    b.output(&extend(v, out_bits));
                }
                Vec::new()
            }
        };
        slots.push(out);
    }
    Checked::new(b.finish()?)
}

/// What both parties derive from the public model: the HE parameters and layouts, and the
/// segment circuits.
pub struct Public {
    /// The description it was built from.
    pub model: PublicModel,
    /// The HE parameters (the server's carry its flooding bound).
    pub params: HeParams,
    /// Each linear layer's HE layout.
    pub plans: Vec<LinearPlan>,
    /// Each segment's circuit.
    pub segments: Vec<Checked>,
    /// ℓ.
    pub share_bits: usize,
}

impl Public {
    /// Build from `model` (validated here); `params` are the server's own, `None` on the client,
    /// which rebuilds them from the description and checks their security.
    pub fn new(model: PublicModel, params: Option<HeParams>) -> Result<Self, TwoPcError> {
        model.validate()?;
        let params = match params {
            Some(p) => p,
            None => tessera_he::wire::read_params(&model.he)?,
        };
        let share_bits = params.plain_bits as usize;
        let plans = model
            .layers
            .iter()
            .map(|l| l.shape.plan(params.degree()))
            .collect::<Result<Vec<_>, _>>()?;
        let segments = (0..model.segments.len())
            .map(|j| segment_circuit(&model, j, share_bits, model.out_bits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            model,
            params,
            plans,
            segments,
            share_bits,
        })
    }

    /// Values in layer `l`'s output.
    pub fn layer_len(&self, l: usize) -> usize {
        self.model.layers.get(l).map_or(0, |x| x.shape.outputs().0)
    }

    /// Values in masked value `v`.
    pub fn value_len(&self, v: usize) -> usize {
        self.model.values.get(v).copied().unwrap_or(0)
    }

    /// The server's input bits of segment `j` (its shares and masked values, first among the
    /// inputs).
    pub fn server_bits(&self, j: usize) -> usize {
        self.model.segments.get(j).map_or(0, |s| {
            (s.linears.iter().map(|&l| self.layer_len(l)).sum::<usize>()
                + s.reads.iter().map(|&v| self.value_len(v)).sum::<usize>())
                * self.share_bits
        })
    }

    /// AND gates per inference.
    pub fn and_gates(&self) -> u64 {
        self.segments.iter().map(|s| s.and_count() as u64).sum()
    }

    /// Non-linear activations per inference (accumulators that go through a segment).
    pub fn activations(&self) -> u64 {
        (0..self.model.layers.len())
            .map(|l| self.layer_len(l) as u64)
            .sum()
    }
}
