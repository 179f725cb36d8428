//! Integer semantics v2: per-channel weight scales, per-tensor activation scales, one exact
//! requantization rule and saturation after every requantization — the integer-only inference
//! of int8 deployments, written so that the `gc` scheme can reproduce it with free label
//! arithmetic, one rescale and one clamp per layer.
//!
//! # Values
//!
//! Every activation tensor `v` has a real **scale** `s_v > 0` and a proven integer **interval**
//! `[lo_v, hi_v]`: an integer `q` in it stands for the real number `s_v · q` (the zero point is
//! folded into the interval: an unsigned int8 tensor with zero point `z` is the interval
//! `[−z, 255 − z]`). Every integer any op produces lies in its output's interval, for every input;
//! this is what lets the `gc` scheme bound its CRT range without looking at data.
//!
//! * An activation of `b` bits ([`QintConfig::act_bits`]) is **unsigned** — `[0, 2^b − 1]` — when
//!   every consumer is a ReLU (or a Clip whose lower bound is ≥ 0) or the calibrated minimum is
//!   ≥ 0, and **signed** — `[−(2^(b−1) − 1), 2^(b−1) − 1]` (symmetric) — otherwise. The graph's
//!   output uses [`QintConfig::out_bits`] instead of `b`.
//! * Its scale is `max|v| / qmax` over the calibration data ([`Calibration`]), `qmax` the top
//!   of the interval (a tensor that is 0 on all calibration data gets scale 1).
//! * Intervals depend only on the weights' shapes, the op parameters and the calibration —
//!   never on a bias or an added constant — so every party derives the same ones.
//!
//! # Rounding and requantization (the one rule)
//!
//! * **Quantize** a real `v` at scale `s`: `round_half_away_from_zero(v / s)`, computed in f64.
//! * **Requantize** an integer `a` with an integer multiplier `m` and a shift `n ≥ 0`:
//!   `rq(a; m, n) = ⌊(a·m + 2^(n−1)) / 2^n⌋` (`a·m` for `n = 0`): round to nearest, ties toward
//!   +∞, floor division on negatives, computed exactly in i128.
//! * **Saturate**: `clamp(x, lo, hi)`.
//!
//! A conv or dense layer's multipliers have at most `B` bits ([`QintConfig::mult_bits`]):
//! `|m| ≤ 2^B − 1`, and the shift `n` is one per layer, the largest that keeps every multiplier
//! of the layer within `B` bits. Element-wise requantizations (residual Add/Sub, Mul by a
//! constant, average pools) use [`QintConfig::aux_mult_bits`] in place of `B`. A small `B` keeps the `gc` scheme's CRT range small (the accumulator is multiplied by `m`
//! before the shift); a large one makes the multiplier more precise. Where a ratio does not fit
//! even at `n = 0`, the output's scale is raised until it does (coarser, never wrong).
//!
//! # Operations
//!
//! * **Input**: `clamp(quantize(x, s_in), lo_in, hi_in)` — inputs saturate like every activation.
//! * **Conv / Dense** (per output channel `c`): with `r_c = s_w*_c · s_x / s_y`, where
//!   `s_w*_c = max|W_c| / (2^(b_w−1) − 1)` is the ideal per-channel weight scale, the layer's shift
//!   `n` is the largest with `⌈r_c · 2^n⌉ ≤ 2^B − 1` for every channel, the multiplier
//!   `m_c = ⌈r_c · 2^n⌉` (at least 1), and the channel's weight scale is **exactly**
//!   `s_w,c = m_c · s_y / (s_x · 2^n)`, so the requantization adds no error of its own:
//!   weights `w = quantize(W_c, s_w,c)` (|w| ≤ 2^(b_w−1) − 1, by the ceiling), bias
//!   `b = quantize(B_c, s_x · s_w,c)` in the accumulator's scale,
//!   `acc = Σ w·x + b` exactly, `y = clamp(rq(acc; m_c, n), lo_y, hi_y)`.
//! * **Add / Sub of two activations** (with broadcasting; residual connections):
//!   `y = clamp(rq(a·m_a ± b·m_b; 1, n), lo_y, hi_y)` with `m_a = round(s_a/s_y · 2^n)`,
//!   `m_b = round(s_b/s_y · 2^n)` and one `n`.
//! * **Mul by a constant** `c` (Div by `c` is Mul by `1/c`), per broadcast element `j`:
//!   `y = clamp(rq(x·m_j, n), lo_y, hi_y)` with `m_j = round(c_j · s_x/s_y · 2^n)`.
//! * **Add / Sub of a constant** `c`: `y = x ± quantize(c, s_x)` (or `quantize(c, s_x) − x`), at the
//!   input's scale, no saturation; its interval is unbounded until the next saturating op, so
//!   that no interval depends on an added constant (the `gc` worker never learns them).
//! * **Affine chains**: two or more consecutive element-wise ops with constants (Mul, Div by a
//!   constant, Add, Sub), at least one of them a Mul or Div, where each output is read by the
//!   next op alone, is no graph output and has no given grid, every output has the chain's
//!   shape and every constant the last op's shape or one element — an unfolded batch
//!   normalisation, a scale layer, an input normalisation. The chain is one real affine map
//!   `x·M_j + A_j` (composed in f64, per element `j` of the last constant) and is requantized
//!   once, at its last op, to that op's output grid:
//!   `y = clamp(rq(x·m_j + a_j; 1, n), lo_y, hi_y)` with `m_j = round(M_j · s_x/s_y · 2^n)`
//!   (element-wise multiplier bits) and `a_j = round(A_j · 2^n / s_y)`, clamped to
//!   `±(|m_j|·max|x| + 2^n·(max(|lo_y|, |hi_y|) + 1))` (a larger `|a_j|` saturates every output
//!   the same way, so the clamp changes no result and the pre-shift sum keeps a bound that no
//!   constant's value moves). The earlier ops of the chain move their input on unchanged.
//!   Which ops form a chain depends on the graph's structure alone.
//! * **ReLU**: `max(x, 0)`. **Clip(min, max)**: `clamp(x, quantize(min, s_x), quantize(max, s_x))`
//!   (ReLU6 is Clip(0, 6)). **MaxPool**: maximum over the in-range window positions. All three
//!   keep the input's scale.
//! * **AveragePool**: per output position `p`, the sum over its in-range positions, then
//!   `rq(sum; m_p, n)` with `m_p = round(2^n / d_p)`, `d_p` the divisor (in-range positions, or
//!   the positions inside the padded input with `count_include_pad`); **GlobalAveragePool** the
//!   same with `d = H·W`. The input's scale; no saturation (the interval is computed).
//! * **Reshape / Flatten**: unchanged. **Transpose / Slice**: the integers moved, the input's
//!   scale. **Softmax** (final layer only): left to the client, as in [`crate::quant`]; the
//!   output is the logits at the output's scale.
//! * **Values read by one Concat only** (no graph output, no given grid) take the Concat
//!   output's scale and interval (following chains of concatenations), so they are rounded once,
//!   where they are produced, and the Concat moves them unchanged.
//! * **Concat**: each input requantized to the output's scale, `clamp(rq(x_i; m_i, n_i), lo, hi)`
//!   with `m_i / 2^(n_i) ≈ s_i / s_y` (element-wise multiplier bits; `(1, 0)` where the scales
//!   are equal), then concatenated. The output's scale is the given one (below), else the
//!   calibrated one, else — when every input has the same scale and interval — the inputs'.
//!
//! * **Sigmoid / Tanh**: a table, one output integer per integer of the (saturated, at most
//!   65,536 wide) input interval: `clamp(round(f(s_x·x) / s_y), lo, hi)` with the output on a
//!   fixed grid — Sigmoid unsigned `[0, 2^b − 1]`, `s_y = 1/(2^b − 1)`; Tanh signed
//!   `[−(2^(b−1) − 1), 2^(b−1) − 1]`, `s_y = 1/(2^(b−1) − 1)` (or the model's own grid).
//! * **LRN** (across channels, the float engine's window): evaluated in f64 on the integers,
//!   `clamp(round(s_x·x_c / (bias + α/size · Σ (s_x·x_c')²)^β / s_y), lo, hi)`, the output
//!   scale calibrated. The sum of squares is exact; `exp`, `tanh` and `powf` are the platform's,
//!   so the parties agree bit for bit when they run the same build (plain and tee do).
//!
//! Pad and products of two activations are refused here with the node named.
//!
//! # int8 models: grids and weights given by the model
//!
//! An int8 ONNX model (QDQ or QOperator, imported by `tessera_model`) carries its own
//! quantization, and v2 takes it as given instead of calibrating:
//!
//! * A [`tessera_model::ir::Op::Quantize`] node's output is on its grid: scale `s`, interval
//!   `[qmin − z, qmax − z]` (the integer `q − z`). So is the value it quantizes when nothing else
//!   reads that value (followed back through Reshape, Transpose, ReLU, MaxPool and Clip, which
//!   commute with quantization): the layer that produces it
//!   requantizes straight to the grid, and the Quantize node is then a clamp (`Clip`). A
//!   Quantize whose input has another scale is **Requant**: `clamp(rq(x; m, n), lo, hi)` with
//!   `m / 2^n ≈ s_x / s` (element-wise multiplier bits). A GlobalAveragePool whose output is
//!   on a given grid divides and rescales in one multiplier, `m / 2^n ≈ s_x / (H·W·s)`.
//! * A Conv or Dense with weight scales ([`tessera_model::ir::Conv::weight_scales`]) uses the
//!   integers `w = W / s_w,c` as given and the bias rounded at the accumulator's scale
//!   `s_x·s_w,c` (for a QLinearConv, exactly its int32 bias); the multiplier cannot be absorbed
//!   by the weight scale, so `m_c / 2^n ≈ s_x·s_w,c / s_y` with at least [`GIVEN_MULT_BITS`]
//!   bits (one shift per layer, as always). A channel whose multiplier rounds to 0 (batch-norm
//!   folding leaves weight scales 10^-15 of the layer's largest) is accepted only where its real
//!   output rounds to 0 for every input in the intervals.
//! * Inputs are quantized as everywhere in v2 (ties away from zero).
//!
//! onnxruntime's int8 kernels requantize in float32 with ties to even; v2 uses the integer rule
//! above. On the zoo's ShuffleNet-v2 int8 the logits are at most 2 output steps from today's
//! onnxruntime (`tests/int8_models.rs`).
//!
//! # The independent oracle
//!
//! `tests/qint.rs` recomputes every op from the lowered constants ([`IntModel::op`]) with naive
//! i128 loops and checks [`IntModel::run_int`] against it on random layers and inputs.

mod calib;
mod int8;
mod lower;
mod ops;
mod run;

pub use calib::{Calibration, default_calibration_inputs};
pub use lower::{GIVEN_MULT_BITS, lower_multipliers};
pub use run::{LinearHook, rq};

use serde::{Deserialize, Serialize};
use tessera_model::ir::Graph;

/// Parameters of the integer semantics v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QintConfig {
    /// Weight bits `b_w` (signed, symmetric per output channel); 2..=16, default 8.
    pub weight_bits: u32,
    /// Activation bits `b`; 2..=16, default 8.
    pub act_bits: u32,
    /// Bits of the graph's output (the logits); 2..=24, default 16.
    pub out_bits: u32,
    /// Multiplier bits `B` of the conv and dense requantizations; 1..=24, default
    /// [`DEFAULT_MULT_BITS`].
    pub mult_bits: u32,
    /// Multiplier bits of the element-wise requantizations (residual Add/Sub, Mul by a
    /// constant, average pools); 1..=24, default [`DEFAULT_AUX_MULT_BITS`].
    pub aux_mult_bits: u32,
}

/// Default multiplier bits of the element-wise requantizations: they scale 8-bit activations
/// (or a pooling window's sum), far below a linear layer's accumulator, so a fine multiplier
/// costs the `gc` CRT range nothing, while a coarse one ruins residual networks (a residual
/// Add's two ratios rounded to 1 or 2 bits).
pub const DEFAULT_AUX_MULT_BITS: u32 = 12;

/// Default multiplier bits of conv and dense layers: 3, the widest that keeps CIFAR F-small and
/// F at k = 9 CRT primes in the `gc` scheme (B = 4 needs 10); channels whose largest weight is
/// a tenth of the layer's still get about 90 weight levels. On the networks measured (mnist-8 on
/// MNIST, seeded CIFAR and ResNet nets) B = 1…8 changed the float agreement by under 0.05
/// points and the logit error by under one point; BENCHMARKS.md "integer semantics v2" has the
/// figures.
pub const DEFAULT_MULT_BITS: u32 = 3;

impl Default for QintConfig {
    fn default() -> Self {
        Self {
            weight_bits: 8,
            act_bits: 8,
            out_bits: 16,
            mult_bits: DEFAULT_MULT_BITS,
            aux_mult_bits: DEFAULT_AUX_MULT_BITS,
        }
    }
}

impl QintConfig {
    fn check(&self) -> Result<(), crate::EngineError> {
        let bad = |what: &str, v: u32, lo: u32, hi: u32| {
            Err(crate::EngineError::Input(format!(
                "{what} = {v} is outside {lo}..={hi}"
            )))
        };
        if !(2..=16).contains(&self.weight_bits) {
            return bad("weight bits", self.weight_bits, 2, 16);
        }
        if !(2..=16).contains(&self.act_bits) {
            return bad("activation bits", self.act_bits, 2, 16);
        }
        if !(2..=24).contains(&self.out_bits) {
            return bad("output bits", self.out_bits, 2, 24);
        }
        if !(1..=24).contains(&self.mult_bits) {
            return bad("multiplier bits", self.mult_bits, 1, 24);
        }
        if !(1..=24).contains(&self.aux_mult_bits) {
            return bad("element-wise multiplier bits", self.aux_mult_bits, 1, 24);
        }
        Ok(())
    }
}

/// The scale and proven interval of one activation tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueQuant {
    /// Real value of one integer step.
    pub scale: f64,
    /// Smallest integer the tensor can hold.
    pub lo: i64,
    /// Largest integer the tensor can hold.
    pub hi: i64,
}

impl ValueQuant {
    /// Largest magnitude in the interval.
    pub fn max_abs(&self) -> u128 {
        u128::from(self.lo.unsigned_abs()).max(u128::from(self.hi.unsigned_abs()))
    }
}

/// A conv or dense layer's lowered constants.
#[derive(Clone, Debug, PartialEq)]
pub struct IntLinear {
    /// Integer weights in the weight tensor's layout (`[C_out, C_in/groups, kh, kw]` or `[M, K]`).
    pub w: Vec<i64>,
    /// Integer bias per output channel, in the accumulator's scale.
    pub b: Vec<i64>,
    /// Multiplier per output channel (≥ 1; 0 only in an int8 model's channel whose real output
    /// rounds to 0 for every input).
    pub mult: Vec<i64>,
    /// The layer's shift n.
    pub shift: u32,
    /// Saturation bounds.
    pub lo: i64,
    /// Saturation bounds.
    pub hi: i64,
    /// Σ|w| per output channel.
    pub row_abs: Vec<i128>,
    wf: Vec<f64>,
    /// The weights packed for the 8-bit GEMM, where they fit it.
    w8: Option<int8::Weights8>,
}

impl IntLinear {
    /// A lowered layer: its integer weights (in `groups` groups of output channels), biases,
    /// multipliers, shift, saturation bounds and Σ|w| per channel; packs the 8-bit GEMM's
    /// operand where the weights fit it.
    pub(super) fn new(
        w: Vec<i64>,
        b: Vec<i64>,
        mult: Vec<i64>,
        shift: u32,
        (lo, hi): (i64, i64),
        row_abs: Vec<i128>,
        groups: usize,
    ) -> Self {
        let wf = w.iter().map(|&v| v as f64).collect();
        let w8 = int8::weights_i8(&w, row_abs.len(), groups);
        Self {
            w,
            b,
            mult,
            shift,
            lo,
            hi,
            row_abs,
            wf,
            w8,
        }
    }
}

/// What one node computes in the integer semantics (see the module docs for each rule).
#[derive(Clone, Debug, PartialEq)]
pub enum IntOp {
    /// Conv or Dense: `clamp(rq(Σ w·x + b; m_c, n), lo, hi)`.
    Linear(IntLinear),
    /// `clamp(rq(a·ma ± b·mb; 1, n), lo, hi)` over two activations (broadcast).
    AddAct {
        /// Multiplier of the first input.
        ma: i64,
        /// Multiplier of the second input (negated for Sub).
        mb: i64,
        /// Shift.
        shift: u32,
        /// Saturation bounds.
        lo: i64,
        /// Saturation bounds.
        hi: i64,
    },
    /// `c[j] ± x` or `x + c[j]` (broadcast), no saturation.
    AddConst {
        /// The constant at the input's scale (already negated for `x − c`).
        c: Vec<i64>,
        /// `c − x` instead of `x + c`.
        neg_x: bool,
    },
    /// `clamp(rq(x·m[j] + a[j], n), lo, hi)` (broadcast; `a` empty: no added constant).
    MulConst {
        /// Multiplier per constant element.
        mult: Vec<i64>,
        /// The fused added constant per constant element, at the pre-shift scale (empty, or as
        /// long as `mult`).
        add: Vec<i64>,
        /// Shift.
        shift: u32,
        /// Saturation bounds.
        lo: i64,
        /// Saturation bounds.
        hi: i64,
    },
    /// `max(x, 0)`.
    Relu,
    /// `clamp(x, lo, hi)`.
    Clip {
        /// Lower bound.
        lo: i64,
        /// Upper bound.
        hi: i64,
    },
    /// Maximum over the window's in-range positions.
    MaxPool,
    /// Window sum, then `rq(sum; mult[p], shift)` with one multiplier per output position of a
    /// plane (row-major `oh × ow`).
    AvgPool {
        /// Multiplier per output position.
        mult: Vec<i64>,
        /// Shift.
        shift: u32,
    },
    /// Plane sum, then `rq(sum; mult, shift)`.
    GlobalAvgPool {
        /// Multiplier.
        mult: i64,
        /// Shift.
        shift: u32,
    },
    /// Values unchanged (Reshape, Flatten, final Softmax).
    Pass,
    /// The graph op moves integers without changing them (Transpose, Slice).
    Move,
    /// `clamp(rq(x; mult, shift), lo, hi)`: an int8 model's Quantize to a grid of another scale.
    Requant {
        /// Multiplier.
        mult: i64,
        /// Shift.
        shift: u32,
        /// Saturation bounds (the grid's interval).
        lo: i64,
        /// Saturation bounds.
        hi: i64,
    },
    /// `table[x − first]`: Sigmoid or Tanh of a saturated input, one entry per integer of its
    /// interval.
    Table {
        /// The smallest input integer (`table[0]` is its image).
        first: i64,
        /// The output integer of every input integer.
        table: Vec<i64>,
    },
    /// Local response normalisation across channels, evaluated in f64 on the integers:
    /// `clamp(round(s_x·x_c / (bias + α/size · Σ (s_x·x_c')²)^β / s_y), lo, hi)`.
    Lrn {
        /// Input scale.
        s_x: f64,
        /// Output scale.
        s_y: f64,
        /// Saturation bounds.
        lo: i64,
        /// Saturation bounds.
        hi: i64,
    },
    /// Each input `i` requantized, `clamp(rq(x_i; mult_i, shift_i), lo, hi)`, then concatenated
    /// along the graph op's axis.
    Concat {
        /// `(multiplier, shift)` per input (`(1, 0)` where the input has the output's scale).
        parts: Vec<(i64, u32)>,
        /// Saturation bounds.
        lo: i64,
        /// Saturation bounds.
        hi: i64,
    },
}

impl IntOp {
    /// The op clamps its every output to exactly `q`'s interval, so it holds `q` by
    /// construction (the engine checks the others' outputs against their proven intervals).
    pub fn saturates_to(&self, q: &ValueQuant) -> bool {
        let (lo, hi) = match self {
            IntOp::Linear(l) => (l.lo, l.hi),
            IntOp::AddAct { lo, hi, .. }
            | IntOp::MulConst { lo, hi, .. }
            | IntOp::Clip { lo, hi }
            | IntOp::Requant { lo, hi, .. }
            | IntOp::Lrn { lo, hi, .. }
            | IntOp::Concat { lo, hi, .. } => (*lo, *hi),
            _ => return false,
        };
        (lo, hi) == (q.lo, q.hi)
    }

    /// Short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            IntOp::Linear(_) => "linear",
            IntOp::AddAct { .. } => "add",
            IntOp::AddConst { .. } => "add-const",
            IntOp::MulConst { add, .. } if !add.is_empty() => "affine chain (Mul/Add by constants)",
            IntOp::MulConst { .. } => "mul-const",
            IntOp::Relu => "relu",
            IntOp::Clip { .. } => "clip",
            IntOp::MaxPool => "maxpool",
            IntOp::AvgPool { .. } => "avgpool",
            IntOp::GlobalAvgPool { .. } => "global-avgpool",
            IntOp::Pass => "pass",
            IntOp::Move => "move",
            IntOp::Requant { .. } => "requant",
            IntOp::Concat { .. } => "concat",
            IntOp::Table { .. } => "table",
            IntOp::Lrn { .. } => "lrn",
        }
    }
}

/// A graph lowered to the integer semantics v2: every node's integer constants and every value's
/// scale and interval.
#[derive(Clone, Debug)]
pub struct IntModel {
    graph: Graph,
    cfg: QintConfig,
    values: Vec<Option<ValueQuant>>,
    ops: Vec<IntOp>,
}

impl IntModel {
    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The parameters.
    pub fn config(&self) -> QintConfig {
        self.cfg
    }

    /// The lowered op of node `i`.
    pub fn op(&self, i: usize) -> Option<&IntOp> {
        self.ops.get(i)
    }

    /// Scale and interval of value `v` (None for values the integer graph never computes).
    pub fn value(&self, v: usize) -> Option<&ValueQuant> {
        self.values.get(v).and_then(Option::as_ref)
    }

    /// Scale and interval of the (single) input.
    pub fn input_quant(&self) -> Result<ValueQuant, crate::EngineError> {
        self.graph
            .inputs
            .first()
            .and_then(|&i| self.value(i))
            .copied()
            .ok_or_else(|| crate::EngineError::Internal("the model has no input".into()))
    }

    /// Scale and interval of the (single) output.
    pub fn output_quant(&self) -> Result<ValueQuant, crate::EngineError> {
        self.graph
            .outputs
            .first()
            .and_then(|&i| self.value(i))
            .copied()
            .ok_or_else(|| crate::EngineError::Internal("the model has no output".into()))
    }

    /// The same model with every bias and added constant set to zero: what a party that may
    /// learn the weights but not the biases (the `gc` worker) compiles. Scales, multipliers,
    /// shifts and intervals are unchanged.
    pub fn without_constants(&self) -> Self {
        let mut m = self.clone();
        for op in &mut m.ops {
            match op {
                IntOp::Linear(l) => l.b.iter_mut().for_each(|v| *v = 0),
                IntOp::AddConst { c, .. } | IntOp::MulConst { add: c, .. } => {
                    c.iter_mut().for_each(|v| *v = 0)
                }
                _ => {}
            }
        }
        m
    }
}
