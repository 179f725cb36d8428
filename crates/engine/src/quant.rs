//! tessera's exact integer semantics — the contract every private scheme reproduces bit for bit.
//!
//! # Fixed-point format
//!
//! One parameter, the number of fractional bits `f` ([`QuantConfig::frac_bits`]). Every
//! activation is an integer `a` standing for the real number `a / 2^f`.
//!
//! * **Quantize** a real `v` to scale `2^s`: `q_s(v) = round_half_away_from_zero(v · 2^s)`,
//!   computed in f64 from the f32 value (exact: the product is a power-of-two scaling).
//! * **Input**: `x = q_f(input)`.
//! * **Rescale** of an integer `a` by the divisor `d ≥ 1` ([`rescale_div`]):
//!   `⌊(a + ⌊d/2⌋) / d⌋` — round to nearest, ties toward +∞, floor division on negatives.
//!   For `d = 2^f` this is `(a + 2^(f-1)) >> f` with an arithmetic shift ([`rescale`]).
//!
//! # Operations
//!
//! * **Conv / Dense** with weights `W` and bias `b`: weights `q_f(W)`, bias `q_{2f}(b)`;
//!   accumulator `acc = Σ q_f(W)·x + q_{2f}(b)` in exact integer arithmetic;
//!   output `rescale(acc, f)`.
//! * **Add / Sub of a constant** `c`: `x ± q_f(c)` (or `q_f(c) − x`).
//! * **Mul by a constant** `c`: `rescale(x · q_f(c), f)`; **Div by** `c` is Mul by `1/c`.
//! * **Add / Sub of two activations**: `a ± b` (same scale, exact).
//! * **ReLU**: `max(x, 0)`. **MaxPool**: maximum over the window's in-range positions
//!   (padding never wins).
//! * **AveragePool**: sum over the in-range positions, then `rescale_div(sum, count)`, where
//!   `count` is the number of in-range positions, or, with `count_include_pad`, of positions
//!   inside the padded input. **GlobalAveragePool**: `rescale_div(sum, H·W)`.
//! * **Reshape / Flatten**: unchanged values.
//! * **Softmax** (final layer only): not part of the integer computation. The integer output is
//!   the pre-softmax logits at scale `2^f`; a client applies softmax to the dequantized logits.
//!   Argmax is unchanged by softmax.
//! * Products of two activations (general MatMul/Gemm, Mul/Div of two variables) and Constant
//!   nodes feeding them are outside the semantics and rejected when the model is quantized.
//!
//! # Widths
//!
//! All arithmetic is exact in i64; a product that could leave i64 is detected before it runs.
//! [`IntRun::widths`] reports, per node, the largest signed bit width reached by the output and
//! by the accumulator before rescaling; [`QuantConfig::max_bits`] makes any larger value an
//! error (the CRT encoding of the `gc` scheme needs a known range). [`static_widths`] gives
//! worst-case widths from an input range without running data.

use crate::EngineError;
use crate::gemm::{View, dgemm, igemm};
use crate::window::{conv_geometry, im2col, pool_geometry, pool_planes};
use serde::{Deserialize, Serialize};
use tessera_model::ir::{BinOp, Graph, Op};
use tessera_model::tensor::{Tensor, broadcast_shapes, broadcast_zip};

/// Default fractional bits. On mnist-8 over the 10,000 MNIST test images, float/quantized top-1
/// agreement is 99.87% at f = 5, 99.92% at f = 6, 99.96% at f = 7 and 99.98% at f = 8, with the
/// widest accumulator at 25, 27, 29 and 31 signed bits. f = 8 keeps a margin for models with
/// smaller weights; a scheme that needs narrow integers (gc's CRT range) can pass a smaller f.
pub const DEFAULT_FRAC_BITS: u32 = 8;

/// Why both integer semantics refuse a product of two activations.
pub(crate) const PRODUCT_OF_ACTIVATIONS: &str = "a product of two activations is not in the integer semantics (only constant weights are); the float engine runs it";

/// Largest magnitude an f64 holds exactly for every integer up to it.
const F64_EXACT: i128 = 1 << 53;

/// Fixed-point parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// Fractional bits `f`.
    pub frac_bits: u32,
    /// If set, any value or accumulator needing more signed bits is an error.
    pub max_bits: Option<u32>,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            frac_bits: DEFAULT_FRAC_BITS,
            max_bits: None,
        }
    }
}

/// `round_half_away_from_zero(v · 2^s)` as i64, or an error when out of range.
pub fn quantize(v: f32, s: u32) -> Result<i64, EngineError> {
    let x = (f64::from(v) * (2f64).powi(s as i32)).round();
    if !x.is_finite() || x.abs() >= 2f64.powi(62) {
        return Err(EngineError::Overflow(format!(
            "value {v} does not fit at scale 2^{s}; lower the fractional bits"
        )));
    }
    Ok(x as i64)
}

/// `⌊(a + 2^(f−1)) / 2^f⌋` (arithmetic shift); identity for `f = 0`.
///
/// Exact for every `a`: the rounding add runs in i128, so it cannot wrap near `i64::MAX`, and
/// the result fits i64 (for `f ≥ 1`, |result| ≤ (2^63 + 2^(f−1)) / 2^f ≤ 2^62 + 1/2). For
/// `f > 64` the result is 0 for every i64, as it is at `f = 65`, so `f` is clamped there.
#[inline]
pub fn rescale(a: i64, f: u32) -> i64 {
    if f == 0 {
        return a;
    }
    let f = f.min(65);
    // Lossless: see above.
    ((i128::from(a) + (1i128 << (f - 1))) >> f) as i64
}

/// `⌊(a + ⌊d/2⌋) / d⌋` for `d ≥ 1` (a `d` below 1 is taken as 1).
///
/// Exact for every `a`: the rounding add runs in i128, and the quotient fits i64 (for `d = 1`
/// it is `a`; for `d ≥ 2`, |quotient| ≤ (2^63 + d/2) / d < 2^63).
#[inline]
pub fn rescale_div(a: i64, d: i64) -> i64 {
    let d = i128::from(d.max(1));
    // Lossless: see above.
    (i128::from(a) + d / 2).div_euclid(d) as i64
}

/// Signed two's-complement bit width needed for magnitude `m` (0 → 1 bit, 1 → 2, 255 → 9).
pub fn signed_bits(m: u128) -> u32 {
    129 - m.leading_zeros()
}

/// A linear layer's quantized constants.
#[derive(Clone, Debug)]
struct QLinear {
    /// q_f(W), row-major `[rows, k]`.
    w: Vec<i64>,
    /// The same as f64 (exact), for the fast path.
    wf: Vec<f64>,
    /// q_{2f}(b), one per row.
    b: Vec<i64>,
    /// max over rows of Σ|w|, and max |b|, for the exactness check.
    row_abs_max: i128,
    bias_abs_max: i128,
}

impl QLinear {
    fn new(w: &Tensor, b: Option<&Tensor>, rows: usize, f: u32) -> Result<Self, EngineError> {
        let wq: Vec<i64> = w
            .data()
            .iter()
            .map(|&v| quantize(v, f))
            .collect::<Result<_, _>>()?;
        let bq: Vec<i64> = match b {
            Some(b) => b
                .data()
                .iter()
                .map(|&v| quantize(v, 2 * f))
                .collect::<Result<_, _>>()?,
            None => vec![0; rows],
        };
        let k = wq.len() / rows.max(1);
        let row_abs_max = wq
            .chunks(k.max(1))
            .map(|r| r.iter().map(|&v| i128::from(v).abs()).sum::<i128>())
            .max()
            .unwrap_or(0);
        let bias_abs_max = bq.iter().map(|&v| i128::from(v).abs()).max().unwrap_or(0);
        Ok(Self {
            wf: wq.iter().map(|&v| v as f64).collect(),
            w: wq,
            b: bq,
            row_abs_max,
            bias_abs_max,
        })
    }
    /// Worst-case |acc| for inputs of magnitude ≤ xmax.
    fn acc_bound(&self, xmax: i128) -> i128 {
        self.row_abs_max
            .saturating_mul(xmax)
            .saturating_add(self.bias_abs_max)
    }
}

#[derive(Clone, Debug)]
enum QOp {
    Linear(QLinear),
    AddConst(Vec<i64>),
    MulConst(Vec<i64>),
    Plain,
}

/// A graph with its constants quantized, ready to run in the integer semantics.
#[derive(Clone, Debug)]
pub struct QuantModel {
    graph: Graph,
    cfg: QuantConfig,
    ops: Vec<QOp>,
}

/// Per-node widths observed in a run (or bounded statically).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct NodeWidth {
    /// Node name.
    pub name: String,
    /// Op kind.
    pub op: String,
    /// Largest |output|.
    pub out_max: u128,
    /// Largest |accumulator| before rescaling (linear layers, Mul, pools), else = out_max.
    pub acc_max: u128,
}

impl NodeWidth {
    /// Signed bits of the output.
    pub fn out_bits(&self) -> u32 {
        signed_bits(self.out_max)
    }
    /// Signed bits of the accumulator.
    pub fn acc_bits(&self) -> u32 {
        signed_bits(self.acc_max)
    }
    fn merge(&mut self, o: &NodeWidth) {
        self.out_max = self.out_max.max(o.out_max);
        self.acc_max = self.acc_max.max(o.acc_max);
    }
}

/// Result of one integer run.
#[derive(Clone, Debug)]
pub struct IntRun {
    /// Outputs (pre-softmax logits for a final Softmax), at scale 2^f.
    pub outputs: Vec<Tensor<i64>>,
    /// Input widths first (as a pseudo-node "input"), then one entry per node.
    pub widths: Vec<NodeWidth>,
}

/// Merge width tables of several runs (elementwise maximum).
pub fn merge_widths(acc: &mut Vec<NodeWidth>, other: &[NodeWidth]) {
    if acc.is_empty() {
        *acc = other.to_vec();
        return;
    }
    for (a, o) in acc.iter_mut().zip(other) {
        a.merge(o);
    }
}

fn max_abs(v: &[i64]) -> u128 {
    v.iter()
        .map(|&x| u128::from(x.unsigned_abs()))
        .max()
        .unwrap_or(0)
}

impl QuantModel {
    /// Quantize a graph's constants; rejects ops outside the integer semantics with the node name.
    pub fn new(graph: &Graph, cfg: QuantConfig) -> Result<Self, EngineError> {
        graph.validate()?;
        if cfg.frac_bits > 24 {
            return Err(EngineError::Input(format!(
                "{} fractional bits is more than the supported 24",
                cfg.frac_bits
            )));
        }
        let f = cfg.frac_bits;
        let mut ops = Vec::with_capacity(graph.nodes.len());
        for n in &graph.nodes {
            let unsupported = |d: &str| EngineError::Unsupported {
                node: n.name.clone(),
                detail: d.to_string(),
            };
            let q = match &n.op {
                Op::Conv(c) => QOp::Linear(QLinear::new(
                    &c.weight,
                    c.bias.as_ref(),
                    c.weight.shape()[0],
                    f,
                )?),
                Op::Dense(d) => QOp::Linear(QLinear::new(
                    &d.weight,
                    d.bias.as_ref(),
                    d.weight.shape()[0],
                    f,
                )?),
                Op::Binary {
                    op,
                    constant: Some(c),
                    constant_first,
                } => match (op, constant_first) {
                    (BinOp::Add | BinOp::Sub, _) => QOp::AddConst(
                        c.data()
                            .iter()
                            .map(|&v| quantize(v, f))
                            .collect::<Result<_, _>>()?,
                    ),
                    (BinOp::Mul, _) => QOp::MulConst(
                        c.data()
                            .iter()
                            .map(|&v| quantize(v, f))
                            .collect::<Result<_, _>>()?,
                    ),
                    (BinOp::Div, false) => QOp::MulConst(
                        c.data()
                            .iter()
                            .map(|&v| quantize(1.0 / v, f))
                            .collect::<Result<_, _>>()?,
                    ),
                    (BinOp::Div, true) => {
                        return Err(unsupported(
                            "division by an activation is not in the integer semantics",
                        ));
                    }
                },
                Op::Binary {
                    op: BinOp::Mul | BinOp::Div,
                    constant: None,
                    ..
                }
                | Op::MatMul
                | Op::Gemm(_) => {
                    return Err(unsupported(PRODUCT_OF_ACTIVATIONS));
                }
                Op::Constant(_) => {
                    return Err(unsupported(
                        "a free-standing constant feeds a float-only op",
                    ));
                }
                Op::Quantize(_) => {
                    return Err(unsupported(
                        "an int8 model's quantization grid is not in the power-of-two semantics; run it under --semantics v2",
                    ));
                }
                Op::Concat { .. }
                | Op::Transpose { .. }
                | Op::Slice { .. }
                | Op::Pad { .. }
                | Op::Clip { .. }
                | Op::Lrn { .. }
                | Op::Sigmoid
                | Op::Tanh => {
                    return Err(unsupported(&format!(
                        "op {} is not in the integer semantics yet; the float engine runs it",
                        n.op.kind()
                    )));
                }
                Op::Relu
                | Op::MaxPool(_)
                | Op::AvgPool(_)
                | Op::GlobalAvgPool
                | Op::Reshape
                | Op::Softmax { .. }
                | Op::Binary {
                    op: BinOp::Add | BinOp::Sub,
                    constant: None,
                    ..
                } => QOp::Plain,
            };
            ops.push(q);
        }
        Ok(Self {
            graph: graph.clone(),
            cfg,
            ops,
        })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The fixed-point parameters.
    pub fn config(&self) -> QuantConfig {
        self.cfg
    }

    /// Quantize float inputs at scale 2^f.
    pub fn quantize_inputs(&self, inputs: &[Tensor]) -> Result<Vec<Tensor<i64>>, EngineError> {
        crate::float::check_inputs(&self.graph, inputs)?;
        inputs
            .iter()
            .zip(&self.graph.inputs)
            .map(|(t, &id)| {
                let d: Vec<i64> = t
                    .data()
                    .iter()
                    .map(|&v| quantize(v, self.cfg.frac_bits))
                    .collect::<Result<_, _>>()?;
                Ok(Tensor::new(self.graph.shape(id).to_vec(), d)?)
            })
            .collect()
    }

    /// Dequantize an output (divide by 2^f).
    pub fn dequantize(&self, t: &Tensor<i64>) -> Tensor {
        let s = (2f64).powi(-(self.cfg.frac_bits as i32));
        t.map(|&v| (v as f64 * s) as f32)
    }

    /// Quantize float inputs and run.
    pub fn run(&self, inputs: &[Tensor]) -> Result<IntRun, EngineError> {
        let q = self.quantize_inputs(inputs)?;
        crate::on_pool(|| self.run_int(&q))
    }

    fn check_width(&self, node: &str, m: u128) -> Result<(), EngineError> {
        if let Some(b) = self.cfg.max_bits {
            let bits = signed_bits(m);
            if bits > b {
                return Err(EngineError::WidthExceeded {
                    node: node.to_string(),
                    bits,
                    bound: b,
                });
            }
        }
        Ok(())
    }

    /// Run on already-quantized inputs.
    pub fn run_int(&self, inputs: &[Tensor<i64>]) -> Result<IntRun, EngineError> {
        let g = &self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(EngineError::Input(format!(
                "the model takes {} inputs, {} were given",
                g.inputs.len(),
                inputs.len()
            )));
        }
        let last = g.last_uses();
        let mut vals: Vec<Option<Tensor<i64>>> = vec![None; g.values.len()];
        let mut widths = Vec::with_capacity(g.nodes.len() + 1);
        let mut in_max = 0;
        for (t, &id) in inputs.iter().zip(&g.inputs) {
            if t.shape() != g.shape(id) {
                return Err(EngineError::Input(format!(
                    "input must have shape {:?}, got {:?}",
                    g.shape(id),
                    t.shape()
                )));
            }
            in_max = in_max.max(max_abs(t.data()));
            vals[id] = Some(t.clone());
        }
        self.check_width("input", in_max)?;
        widths.push(NodeWidth {
            name: "input".into(),
            op: "Input".into(),
            out_max: in_max,
            acc_max: in_max,
        });
        for (k, (n, q)) in g.nodes.iter().zip(&self.ops).enumerate() {
            let ins: Vec<&Tensor<i64>> = n
                .inputs
                .iter()
                .map(|&i| {
                    vals[i]
                        .as_ref()
                        .ok_or_else(|| EngineError::Internal(format!("value {i} missing")))
                })
                .collect::<Result<_, _>>()?;
            let out_shape = g.shape(n.output).to_vec();
            let (y, acc_max) = self
                .eval(&n.op, q, &ins, &out_shape)
                .map_err(|e| e.at(&n.name))?;
            let out_max = max_abs(y.data());
            self.check_width(&n.name, acc_max.max(out_max))?;
            widths.push(NodeWidth {
                name: n.name.clone(),
                op: n.op.kind().into(),
                out_max,
                acc_max: acc_max.max(out_max),
            });
            vals[n.output] = Some(y);
            for &i in &n.inputs {
                if last[i] == k {
                    vals[i] = None;
                }
            }
        }
        let outputs = g
            .outputs
            .iter()
            .map(|&o| {
                vals[o]
                    .clone()
                    .ok_or_else(|| EngineError::Internal("output missing".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(IntRun { outputs, widths })
    }

    /// One node: dispatches to the evaluator of its op; returns the output and the largest
    /// magnitude an intermediate (accumulator, product, window sum) reached.
    fn eval(
        &self,
        op: &Op,
        q: &QOp,
        ins: &[&Tensor<i64>],
        out_shape: &[usize],
    ) -> Result<(Tensor<i64>, u128), EngineError> {
        let f = self.cfg.frac_bits;
        let x = *ins
            .first()
            .ok_or_else(|| EngineError::Internal("an op without input".into()))?;
        let (y, am) = match (op, q) {
            (Op::Conv(_) | Op::Dense(_), QOp::Linear(l)) => linear_pow2(op, l, x, f, out_shape)?,
            (
                Op::Binary {
                    op,
                    constant: Some(c),
                    constant_first,
                },
                QOp::AddConst(cq),
            ) => (
                add_const_pow2(x, c.shape(), cq, *op, *constant_first, out_shape)?,
                0,
            ),
            (
                Op::Binary {
                    constant: Some(c), ..
                },
                QOp::MulConst(cq),
            ) => mul_const_pow2(x, c.shape(), cq, f, out_shape)?,
            (
                Op::Binary {
                    op, constant: None, ..
                },
                _,
            ) => {
                let b = ins
                    .get(1)
                    .ok_or_else(|| EngineError::Internal("add without a second input".into()))?;
                (add_act_pow2(x, b, *op)?, 0)
            }
            (Op::Relu, _) => (x.data().iter().map(|&v| v.max(0)).collect(), 0),
            (Op::MaxPool(p) | Op::AvgPool(p), _) => {
                pool_pow2(x, p, matches!(op, Op::MaxPool(_)), out_shape)?
            }
            (Op::GlobalAvgPool, _) => global_avg_pool_pow2(x)?,
            (Op::Reshape, _) | (Op::Softmax { .. }, _) => (x.data().to_vec(), 0),
            _ => {
                return Err(EngineError::Internal(format!(
                    "op {} has no integer form",
                    op.kind()
                )));
            }
        };
        Ok((Tensor::new(out_shape.to_vec(), y)?, am))
    }
}

/// Conv or Dense at scale 2^f: exact accumulation plus the bias (at 2^2f), rescaled by f.
fn linear_pow2(
    op: &Op,
    l: &QLinear,
    x: &Tensor<i64>,
    f: u32,
    out_shape: &[usize],
) -> Result<(Vec<i64>, u128), EngineError> {
    let mut acc = accumulate(op, &l.w, &l.wf, l.row_abs_max, l.bias_abs_max, x, out_shape)?;
    let n_out: usize = out_shape.iter().product();
    let rows = out_shape.get(1).copied().unwrap_or(1).max(1);
    let npos = (n_out / x.shape().first().copied().unwrap_or(1).max(1) / rows).max(1);
    for (i, a) in acc.iter_mut().enumerate() {
        *a += l.b.get((i / npos) % rows).copied().unwrap_or(0);
    }
    let am = max_abs(&acc);
    Ok((acc.iter().map(|&a| rescale(a, f)).collect(), am))
}

/// `x ± c` or `c − x` at the input's scale (broadcast), checked.
fn add_const_pow2(
    x: &Tensor<i64>,
    c_shape: &[usize],
    cq: &[i64],
    op: BinOp,
    constant_first: bool,
    out_shape: &[usize],
) -> Result<Vec<i64>, EngineError> {
    broadcast_zip((x.data(), x.shape()), (cq, c_shape), out_shape, |a, b| {
        match (op, constant_first) {
            (BinOp::Sub, false) => a.checked_sub(b),
            (BinOp::Sub, true) => b.checked_sub(a),
            _ => a.checked_add(b),
        }
        .ok_or_else(|| EngineError::Overflow("addition overflows i64".into()))
    })
}

/// `x · c` (c at 2^f, broadcast), checked, rescaled by f.
fn mul_const_pow2(
    x: &Tensor<i64>,
    c_shape: &[usize],
    cq: &[i64],
    f: u32,
    out_shape: &[usize],
) -> Result<(Vec<i64>, u128), EngineError> {
    let prods = broadcast_zip((x.data(), x.shape()), (cq, c_shape), out_shape, |v, c| {
        v.checked_mul(c).ok_or_else(|| {
            EngineError::Overflow("product overflows i64; lower the fractional bits".into())
        })
    })?;
    let am = max_abs(&prods);
    Ok((prods.iter().map(|&p| rescale(p, f)).collect(), am))
}

/// `a ± b` of two activations at one scale (broadcast), checked.
fn add_act_pow2(a: &Tensor<i64>, b: &Tensor<i64>, op: BinOp) -> Result<Vec<i64>, EngineError> {
    let s = broadcast_shapes(a.shape(), b.shape())?;
    broadcast_zip((a.data(), a.shape()), (b.data(), b.shape()), &s, |p, r| {
        if op == BinOp::Sub {
            p.checked_sub(r)
        } else {
            p.checked_add(r)
        }
        .ok_or_else(|| EngineError::Overflow("addition overflows i64".into()))
    })
}

/// Max pooling, or average pooling with the round-half-up division of the window sum.
fn pool_pow2(
    x: &Tensor<i64>,
    p: &tessera_model::ir::Pool,
    is_max: bool,
    out_shape: &[usize],
) -> Result<(Vec<i64>, u128), EngineError> {
    let g = pool_geometry(p, x.shape(), out_shape);
    let n_out: usize = out_shape.iter().product();
    let include = p.count_include_pad;
    // The average pool's window sum is checked: a window of large activations can leave i64
    // (`None` marks the overflow and is reported below).
    let mut sums = vec![Some(0i64); n_out];
    if is_max {
        pool_planes(
            x.data(),
            &g,
            i64::MIN,
            i64::max,
            |a, _, _| Some(a),
            &mut sums,
        );
    } else {
        pool_planes(
            x.data(),
            &g,
            Some(0i64),
            |a, v| a.and_then(|a| a.checked_add(v)),
            |a, v, pd| a.map(|a| rescale_div(a, (if include { pd } else { v }).max(1) as i64)),
            &mut sums,
        );
    }
    let out = sums
        .into_iter()
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| {
            EngineError::Overflow(
                "an average-pooling window sum overflows i64; lower the fractional bits".into(),
            )
        })?;
    let am = if is_max {
        0
    } else {
        max_abs(x.data()).saturating_mul((p.kernel[0] as u128).saturating_mul(p.kernel[1] as u128))
    };
    Ok((out, am))
}

/// The plane sum, checked, divided by H·W with round half up.
fn global_avg_pool_pow2(x: &Tensor<i64>) -> Result<(Vec<i64>, u128), EngineError> {
    let hw =
        (x.shape().get(2).copied().unwrap_or(1) * x.shape().get(3).copied().unwrap_or(1)).max(1);
    let sums: Vec<i64> = x
        .data()
        .chunks(hw)
        .map(|c| {
            c.iter()
                .try_fold(0i64, |s, &v| s.checked_add(v))
                .ok_or_else(|| EngineError::Overflow("pooling sum overflows i64".into()))
        })
        .collect::<Result<_, _>>()?;
    let am = max_abs(&sums);
    Ok((
        sums.iter().map(|&s| rescale_div(s, hw as i64)).collect(),
        am,
    ))
}

/// Worst-case widths for inputs with |x| ≤ `input_max_abs` (real units), by interval arithmetic.
pub fn static_widths(qm: &QuantModel, input_max_abs: f32) -> Result<Vec<NodeWidth>, EngineError> {
    let g = &qm.graph;
    let f = qm.cfg.frac_bits;
    let mut bound = vec![0i128; g.values.len()];
    let x0 = i128::from(quantize(input_max_abs, f)?.unsigned_abs() as i64);
    for &i in &g.inputs {
        bound[i] = x0;
    }
    let mut out = vec![NodeWidth {
        name: "input".into(),
        op: "Input".into(),
        out_max: x0 as u128,
        acc_max: x0 as u128,
    }];
    let half = if f == 0 { 0 } else { 1i128 << (f - 1) };
    for (n, q) in g.nodes.iter().zip(&qm.ops) {
        let xin = n.inputs.iter().map(|&i| bound[i]).collect::<Vec<_>>();
        let x = xin.first().copied().unwrap_or(0);
        let (acc, o) = match (&n.op, q) {
            (_, QOp::Linear(l)) => {
                let a = l.acc_bound(x);
                (a, a.saturating_add(half) >> f)
            }
            (_, QOp::AddConst(c)) => {
                let v = x.saturating_add(c.iter().map(|&v| i128::from(v).abs()).max().unwrap_or(0));
                (v, v)
            }
            (_, QOp::MulConst(c)) => {
                let a = x.saturating_mul(c.iter().map(|&v| i128::from(v).abs()).max().unwrap_or(0));
                (a, a.saturating_add(half) >> f)
            }
            (Op::Binary { constant: None, .. }, _) => {
                let v = xin.iter().fold(0i128, |s, &b| s.saturating_add(b));
                (v, v)
            }
            (Op::AvgPool(p), _) => (
                x.saturating_mul((p.kernel[0] as i128).saturating_mul(p.kernel[1] as i128)),
                x,
            ),
            (Op::GlobalAvgPool, _) => {
                let s = n.inputs.first().map_or(&[][..], |&i| g.shape(i));
                let hw = (s.get(2).copied().unwrap_or(1) as i128)
                    .saturating_mul(s.get(3).copied().unwrap_or(1) as i128);
                (x.saturating_mul(hw), x)
            }
            _ => (x, x),
        };
        bound[n.output] = o;
        out.push(NodeWidth {
            name: n.name.clone(),
            op: n.op.kind().into(),
            out_max: o.max(0) as u128,
            acc_max: acc.max(o).max(0) as u128,
        });
    }
    Ok(out)
}

/// Σ_j w[r, j]·x[…] of a Conv (any groups, stride, padding, dilation) or Dense node, exactly, bias
/// left out: im2col + an f64 GEMM when `row_abs_max · max|x| + bias_abs_max` is below 2^53 (every
/// partial sum is then an integer that f64 holds exactly), an i64 GEMM when it fits i64, and an
/// overflow error otherwise. `w` is the weight tensor's layout (`[C_out, C_in/groups, kh, kw]` or
/// `[M, K]`), `wf` the same values as f64. Shared by every integer semantics of this crate.
pub(crate) fn accumulate(
    op: &Op,
    w: &[i64],
    wf: &[f64],
    row_abs_max: i128,
    bias_abs_max: i128,
    x: &Tensor<i64>,
    out_shape: &[usize],
) -> Result<Vec<i64>, EngineError> {
    let n_out: usize = out_shape.iter().product();
    let bound = row_abs_max
        .saturating_mul(max_abs(x.data()) as i128)
        .saturating_add(bias_abs_max);
    let overflow = || {
        EngineError::Overflow(
            "the accumulator could exceed 64 bits; use fewer fractional or weight bits".into(),
        )
    };
    let mut acc = vec![0i64; n_out];
    match op {
        Op::Conv(c) => {
            let (nb, ci) = (x.shape()[0], x.shape()[1]);
            let co = out_shape[1];
            let g = conv_geometry(c, x.shape(), out_shape);
            let (cig, cog) = (ci / c.groups, co / c.groups);
            let kk = cig * g.k[0] * g.k[1];
            let npos = g.oh * g.ow;
            if bound < F64_EXACT {
                let xf: Vec<f64> = x.data().iter().map(|&v| v as f64).collect();
                let mut out = vec![0f64; n_out];
                let mut col = Vec::new();
                for b in 0..nb {
                    for gr in 0..c.groups {
                        let xin = &xf[(b * ci + gr * cig) * g.h * g.w
                            ..(b * ci + (gr + 1) * cig) * g.h * g.w];
                        let colv: &[f64] = if g.is_pointwise() {
                            xin
                        } else {
                            im2col(xin, cig, &g, &mut col);
                            &col
                        };
                        let w = &wf[gr * cog * kk..(gr + 1) * cog * kk];
                        let o =
                            &mut out[(b * co + gr * cog) * npos..(b * co + (gr + 1) * cog) * npos];
                        dgemm(
                            cog,
                            kk,
                            npos,
                            1.0,
                            View::rows(w, kk),
                            View::rows(colv, npos),
                            0.0,
                            o,
                        );
                    }
                }
                for (a, v) in acc.iter_mut().zip(&out) {
                    *a = *v as i64;
                }
            } else if bound < i128::from(i64::MAX) {
                let mut col = Vec::new();
                for b in 0..nb {
                    for gr in 0..c.groups {
                        let xin = &x.data()[(b * ci + gr * cig) * g.h * g.w
                            ..(b * ci + (gr + 1) * cig) * g.h * g.w];
                        im2col(xin, cig, &g, &mut col);
                        let w = &w[gr * cog * kk..(gr + 1) * cog * kk];
                        igemm(
                            cog,
                            kk,
                            npos,
                            w,
                            &col,
                            &mut acc[(b * co + gr * cog) * npos..(b * co + (gr + 1) * cog) * npos],
                        );
                    }
                }
            } else {
                return Err(overflow());
            }
        }
        Op::Dense(_) => {
            let (nb, k) = (x.shape()[0], x.shape()[1]);
            let m = out_shape[1];
            if bound < F64_EXACT {
                let xf: Vec<f64> = x.data().iter().map(|&v| v as f64).collect();
                let mut out = vec![0f64; nb * m];
                dgemm(
                    nb,
                    k,
                    m,
                    1.0,
                    View::rows(&xf, k),
                    View::transposed(wf, k),
                    0.0,
                    &mut out,
                );
                for (a, v) in acc.iter_mut().zip(&out) {
                    *a = *v as i64;
                }
            } else if bound < i128::from(i64::MAX) {
                let mut wt = vec![0i64; k * m];
                for r in 0..m {
                    for c in 0..k {
                        wt[c * m + r] = w[r * k + c];
                    }
                }
                igemm(nb, k, m, x.data(), &wt, &mut acc);
            } else {
                return Err(overflow());
            }
        }
        _ => {
            return Err(EngineError::Internal(format!(
                "{} is not a linear layer",
                op.kind()
            )));
        }
    }
    Ok(acc)
}
