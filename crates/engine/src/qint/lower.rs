//! Lowering a float graph and its calibration to the integer constants of v2 (module docs of
//! [`super`] give the rules).

use super::{Calibration, IntLinear, IntModel, IntOp, QintConfig, ValueQuant};
use crate::EngineError;
use crate::window::{pool_geometry, pool_plane};
use tessera_model::ir::{BinOp, Graph, Op, QParam};
use tessera_model::tensor::Tensor;

/// Multiplier bits (at least) of a layer whose integer weights an int8 model gives: the weight
/// scale cannot absorb the multiplier's rounding, so the ratio `s_x·s_w,c/s_y` is approximated
/// finely (one step in 2^16 of the largest channel's ratio).
pub const GIVEN_MULT_BITS: u32 = 16;

/// Largest shift a layer may use (keeps `a·m + 2^(n−1)` far inside i128 and the gc gadgets small).
const MAX_SHIFT: u32 = 40;

/// `round_half_away_from_zero(v)` as i64, or an error naming `what`.
fn round_i64(v: f64, what: &str) -> Result<i64, EngineError> {
    let r = v.round();
    if !r.is_finite() || r.abs() >= 2f64.powi(62) {
        return Err(EngineError::Overflow(format!(
            "{what}: {v} does not fit 62 bits; the scales of this layer are degenerate"
        )));
    }
    Ok(r as i64)
}

/// For ratios `r_j` (real, any sign), the shift `n` and multipliers `m_j` of the v2 rule:
/// the largest `n ≤ 40` with `|conv(r_j · 2^n)| ≤ 2^B − 1` for all `j`, where `conv` is ⌈·⌉ of the
/// magnitude when `ceil` (weights: the exact weight scale absorbs the rounding) and round half
/// away from zero otherwise. Returns `None` when even `n = 0` does not fit (the caller then
/// coarsens the output scale).
pub fn lower_multipliers(ratios: &[f64], mult_bits: u32, ceil: bool) -> Option<(u32, Vec<i64>)> {
    let top = ((1u64 << mult_bits) - 1) as f64;
    let conv = |r: f64, n: u32| {
        let x = r.abs() * 2f64.powi(n as i32);
        let m = if ceil { x.ceil() } else { x.round() };
        m.copysign(r)
    };
    let fits = |n: u32| ratios.iter().all(|&r| conv(r, n).abs() <= top);
    if !ratios.iter().all(|r| r.is_finite()) || !fits(0) {
        return None;
    }
    let mut n = 0;
    while n < MAX_SHIFT && fits(n + 1) {
        n += 1;
    }
    Some((n, ratios.iter().map(|&r| conv(r, n) as i64).collect()))
}

/// The multipliers for `ratios` against an output scale `s_y` that may be raised: returns the
/// (possibly larger) output scale, the shift and the multipliers. Ratios are `x / s_y`.
fn fit_output(
    numerators: &[f64],
    s_y: f64,
    mult_bits: u32,
    ceil: bool,
    node: &str,
) -> Result<(f64, u32, Vec<i64>), EngineError> {
    let mut s = s_y;
    for _ in 0..64 {
        let ratios: Vec<f64> = numerators.iter().map(|&x| x / s).collect();
        if let Some((n, m)) = lower_multipliers(&ratios, mult_bits, ceil) {
            return Ok((s, n, m));
        }
        s *= 2.0;
    }
    Err(EngineError::Unsupported {
        node: node.to_string(),
        detail: "no output scale makes the requantization multipliers fit; the layer's constants are not finite".into(),
    })
}

fn unsupported(node: &str, detail: impl Into<String>) -> EngineError {
    EngineError::Unsupported {
        node: node.to_string(),
        detail: detail.into(),
    }
}

/// The interval of a `bits`-bit activation, unsigned or signed symmetric.
fn act_interval(bits: u32, unsigned: bool) -> (i64, i64) {
    if unsigned {
        (0, (1i64 << bits) - 1)
    } else {
        let h = (1i64 << (bits - 1)) - 1;
        (-h, h)
    }
}

/// The grids an int8 model gives (module docs): every Quantize node's output, and the value it
/// quantizes when nothing else reads that value — followed back through Reshape, Transpose,
/// ReLU, MaxPool and Clip — so that the producing layer requantizes straight to the grid.
fn given_grids(graph: &Graph) -> Vec<Option<QParam>> {
    let nv = graph.values.len();
    let counts = graph.consumer_counts();
    let mut producer = vec![None; nv];
    for (k, n) in graph.nodes.iter().enumerate() {
        if let Some(p) = producer.get_mut(n.output) {
            *p = Some(k);
        }
    }
    let mut given = vec![None; nv];
    for n in &graph.nodes {
        let Op::Quantize(q) = &n.op else { continue };
        if let Some(g) = given.get_mut(n.output) {
            *g = Some(*q);
        }
        let mut v = n.inputs.first().copied();
        while let Some(x) = v {
            if counts.get(x) != Some(&1) || given.get(x).copied().flatten().is_some() {
                break;
            }
            if let Some(g) = given.get_mut(x) {
                *g = Some(*q);
            }
            v = match producer
                .get(x)
                .copied()
                .flatten()
                .and_then(|k| graph.nodes.get(k))
            {
                // Quantizing commutes with data movement and with the monotone ops that keep
                // 0 (ReLU, max pooling, a clip: their bounds round on the same grid), so the
                // grid moves back through them to the layer (a QDQ model's Conv → Relu → Q).
                Some(p)
                    if matches!(
                        p.op,
                        Op::Reshape
                            | Op::Transpose { .. }
                            | Op::Relu
                            | Op::MaxPool(_)
                            | Op::Clip { .. }
                    ) =>
                {
                    p.inputs.first().copied()
                }
                _ => None,
            };
        }
    }
    given
}

impl IntModel {
    /// Lowers `graph` to the integer semantics v2 with the scales of `calib` (see the module
    /// docs). Rejects ops outside the semantics with the node named.
    pub fn new(graph: &Graph, cfg: QintConfig, calib: &Calibration) -> Result<Self, EngineError> {
        graph.validate()?;
        cfg.check()?;
        let given = given_grids(graph);
        if given.iter().all(Option::is_none) {
            calib.check(graph)?;
        }
        let nv = graph.values.len();
        // Consumers of every value, for the unsigned-after-ReLU rule.
        let mut relu_only = vec![true; nv];
        let mut used = vec![false; nv];
        for n in &graph.nodes {
            let reluish = match &n.op {
                Op::Relu => true,
                Op::Clip { min, .. } => *min >= 0.0,
                _ => false,
            };
            for &i in &n.inputs {
                if let Some(u) = used.get_mut(i) {
                    *u = true;
                }
                if !reluish && let Some(r) = relu_only.get_mut(i) {
                    *r = false;
                }
            }
        }
        let outputs: Vec<usize> = graph.outputs.clone();
        // The value whose requantization is the graph output: follow Softmax/Reshape back.
        let mut out_src = vec![false; nv];
        for &o in &outputs {
            let mut v = o;
            loop {
                if let Some(s) = out_src.get_mut(v) {
                    *s = true;
                }
                match graph.nodes.iter().find(|n| n.output == v) {
                    Some(n) if matches!(n.op, Op::Softmax { .. } | Op::Reshape) => {
                        match n.inputs.first() {
                            Some(&i) => v = i,
                            None => break,
                        }
                    }
                    _ => break,
                }
            }
        }
        // The fresh quantization of value v: its scale and saturating interval.
        let into_concat = concat_grids(graph, &given);
        let fresh = |v: usize| -> Result<ValueQuant, EngineError> {
            let v = into_concat.get(v).copied().flatten().unwrap_or(v);
            if let Some(q) = given.get(v).copied().flatten() {
                let (lo, hi) = q.interval();
                return Ok(ValueQuant {
                    scale: f64::from(q.scale),
                    lo,
                    hi,
                });
            }
            let (lo_f, hi_f) = calib.range(graph, v).ok_or_else(|| {
                let name = graph.values.get(v).map_or("?", |i| i.name.as_str());
                EngineError::Input(format!(
                    "value '{name}' has neither a grid from the model nor a calibration range; \
                     calibrate the model (--calibrate) or give it QuantizeLinear nodes"
                ))
            })?;
            let is_out = out_src.get(v).copied().unwrap_or(false);
            let bits = if is_out { cfg.out_bits } else { cfg.act_bits };
            let unsigned = (!is_out
                && relu_only.get(v).copied().unwrap_or(false)
                && used.get(v).copied().unwrap_or(false))
                || lo_f >= 0.0;
            let (lo, hi) = act_interval(bits, unsigned);
            let top = if unsigned {
                f64::from(hi_f.max(0.0))
            } else {
                f64::from(lo_f.abs().max(hi_f.abs()))
            };
            let scale = if top > 0.0 && top.is_finite() {
                top / hi as f64
            } else {
                1.0
            };
            Ok(ValueQuant { scale, lo, hi })
        };
        let fused = fused_affines(graph, &given);
        let mut values: Vec<Option<ValueQuant>> = vec![None; nv];
        for &i in &graph.inputs {
            if let Some(v) = values.get_mut(i) {
                *v = Some(fresh(i)?);
            }
        }
        let mut ops = Vec::with_capacity(graph.nodes.len());
        for (ni, n) in graph.nodes.iter().enumerate() {
            let name = n.name.as_str();
            let inq = |k: usize| -> Result<ValueQuant, EngineError> {
                n.inputs
                    .get(k)
                    .and_then(|&i| values.get(i).copied().flatten())
                    .ok_or_else(|| unsupported(name, "reads a value the integer graph lacks"))
            };
            let x = inq(0)?;
            let (op, out) = match &n.op {
                Op::Conv(tessera_model::ir::Conv {
                    weight,
                    bias,
                    weight_scales,
                    ..
                })
                | Op::Dense(tessera_model::ir::Dense {
                    weight,
                    bias,
                    weight_scales,
                }) => {
                    let rows = weight.shape().first().copied().unwrap_or(0);
                    let out = fresh(n.output)?;
                    let groups = match &n.op {
                        Op::Conv(c) => c.groups,
                        _ => 1,
                    };
                    let l = Layer {
                        weight,
                        bias: bias.as_ref(),
                        rows,
                        groups,
                        x,
                        out,
                        name,
                    };
                    match weight_scales {
                        Some(ws) => lower_given(&l, ws, cfg)?,
                        None => lower_linear(&l, cfg)?,
                    }
                }
                Op::Quantize(q) => {
                    let (lo, hi) = q.interval();
                    let o = ValueQuant {
                        scale: f64::from(q.scale),
                        lo,
                        hi,
                    };
                    if o.scale == x.scale {
                        let iv = ValueQuant {
                            lo: x.lo.clamp(lo, hi),
                            hi: x.hi.clamp(lo, hi),
                            ..o
                        };
                        (IntOp::Clip { lo, hi }, iv)
                    } else {
                        let (shift, m) =
                            lower_multipliers(&[x.scale / o.scale], cfg.aux_mult_bits, false)
                                .ok_or_else(|| {
                                    unsupported(name, "the requantization multiplier does not fit")
                                })?;
                        let mult = m.first().copied().unwrap_or(1);
                        (
                            IntOp::Requant {
                                mult,
                                shift,
                                lo,
                                hi,
                            },
                            o,
                        )
                    }
                }
                Op::Concat { .. } => {
                    let ins = (0..n.inputs.len())
                        .map(inq)
                        .collect::<Result<Vec<_>, _>>()?;
                    // The given or calibrated grid; else the inputs' common one.
                    let o = match fresh(n.output) {
                        Ok(o) => o,
                        Err(e) => match ins.split_first() {
                            Some((f, rest)) if rest.iter().all(|q| q == f) => *f,
                            _ => return Err(e),
                        },
                    };
                    let parts = ins
                        .iter()
                        .map(|q| {
                            if q.scale == o.scale {
                                return Ok((1, 0));
                            }
                            lower_multipliers(&[q.scale / o.scale], cfg.aux_mult_bits, false)
                                .and_then(|(n, m)| Some((*m.first()?, n)))
                                .ok_or_else(|| {
                                    unsupported(name, "a concatenation multiplier does not fit")
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    (
                        IntOp::Concat {
                            parts,
                            lo: o.lo,
                            hi: o.hi,
                        },
                        o,
                    )
                }
                Op::Transpose { .. } | Op::Slice { .. } => (IntOp::Move, x),
                Op::Sigmoid | Op::Tanh => {
                    let sig = matches!(n.op, Op::Sigmoid);
                    lower_table(sig, x, given.get(n.output).copied().flatten(), cfg, name)?
                }
                Op::Lrn { .. } => {
                    let o = fresh(n.output)?;
                    (
                        IntOp::Lrn {
                            s_x: x.scale,
                            s_y: o.scale,
                            lo: o.lo,
                            hi: o.hi,
                        },
                        o,
                    )
                }
                Op::Binary {
                    op: op @ (BinOp::Add | BinOp::Sub),
                    constant: None,
                    ..
                } => {
                    let y = inq(1)?;
                    let o = fresh(n.output)?;
                    let (s, shift, m) =
                        fit_output(&[x.scale, y.scale], o.scale, cfg.aux_mult_bits, false, name)?;
                    let (Some(&ma), Some(&mb_v)) = (m.first(), m.get(1)) else {
                        return Err(EngineError::Internal("two multipliers".into()));
                    };
                    let mb = if *op == BinOp::Sub { -mb_v } else { mb_v };
                    (
                        IntOp::AddAct {
                            ma,
                            mb,
                            shift,
                            lo: o.lo,
                            hi: o.hi,
                        },
                        ValueQuant { scale: s, ..o },
                    )
                }
                Op::Binary {
                    op,
                    constant: Some(c),
                    constant_first,
                } => match (op, constant_first) {
                    _ if fused.get(ni).copied().flatten() == Some(Fused::Pass) => (IntOp::Pass, x),
                    _ if let Some(Fused::Last(first)) = fused.get(ni).copied().flatten() => {
                        let o = fresh(n.output)?;
                        let (mm, aa) = affine_chain(graph, first, ni);
                        let nums: Vec<f64> = mm.iter().map(|v| v * x.scale).collect();
                        let (s, shift, mult) =
                            fit_output(&nums, o.scale, cfg.aux_mult_bits, false, name)?;
                        let add = fused_constant(&aa, &mult, shift, s, x, o);
                        (
                            IntOp::MulConst {
                                mult,
                                add,
                                shift,
                                lo: o.lo,
                                hi: o.hi,
                            },
                            ValueQuant { scale: s, ..o },
                        )
                    }
                    (BinOp::Add | BinOp::Sub, _) => {
                        let sign = if *op == BinOp::Sub && !constant_first {
                            -1.0
                        } else {
                            1.0
                        };
                        let cq = c
                            .data()
                            .iter()
                            .map(|&v| round_i64(sign * f64::from(v) / x.scale, name))
                            .collect::<Result<Vec<_>, _>>()?;
                        let neg_x = *op == BinOp::Sub && *constant_first;
                        // The interval may not depend on the constant: the `gc` worker holds
                        // the model with added constants zeroed, and compiles its circuit
                        // (which ReLUs and clips it elides) from the same intervals as the
                        // enclave. So it is open until the next saturation.
                        (
                            IntOp::AddConst { c: cq, neg_x },
                            ValueQuant {
                                scale: x.scale,
                                lo: i64::MIN,
                                hi: i64::MAX,
                            },
                        )
                    }
                    (BinOp::Mul | BinOp::Div, false) | (BinOp::Mul, true) => {
                        let o = fresh(n.output)?;
                        let nums: Vec<f64> = c
                            .data()
                            .iter()
                            .map(|&v| {
                                let v = f64::from(v);
                                if *op == BinOp::Div { 1.0 / v } else { v }
                            })
                            .map(|v| v * x.scale)
                            .collect();
                        let (s, shift, mult) =
                            fit_output(&nums, o.scale, cfg.aux_mult_bits, false, name)?;
                        (
                            IntOp::MulConst {
                                mult,
                                add: Vec::new(),
                                shift,
                                lo: o.lo,
                                hi: o.hi,
                            },
                            ValueQuant { scale: s, ..o },
                        )
                    }
                    (BinOp::Div, true) => {
                        return Err(unsupported(
                            name,
                            "division by an activation is not in the integer semantics",
                        ));
                    }
                },
                Op::Relu => (
                    IntOp::Relu,
                    ValueQuant {
                        lo: x.lo.max(0),
                        hi: x.hi.max(0),
                        ..x
                    },
                ),
                Op::Clip { min, max } => {
                    let a = round_i64(f64::from(*min) / x.scale, name)?;
                    let b = round_i64(f64::from(*max) / x.scale, name)?;
                    if a > b {
                        return Err(unsupported(
                            name,
                            "a Clip whose minimum exceeds its maximum",
                        ));
                    }
                    let lo = x.lo.max(a).min(b);
                    let hi = x.hi.min(b).max(a);
                    (IntOp::Clip { lo: a, hi: b }, ValueQuant { lo, hi, ..x })
                }
                Op::MaxPool(_) => (IntOp::MaxPool, x),
                Op::AvgPool(p) => {
                    let in_shape = n.inputs.first().map(|&i| graph.shape(i)).unwrap_or(&[]);
                    let out_shape = graph.shape(n.output);
                    if in_shape.len() != 4 || out_shape.len() != 4 {
                        return Err(unsupported(name, "pooling that is not 2-D over NCHW"));
                    }
                    let g = pool_geometry(p, in_shape, out_shape);
                    // (in-range positions, divisor) per output position of one plane.
                    let mut counts = vec![(0usize, 1usize); g.oh * g.ow];
                    let include = p.count_include_pad;
                    pool_plane(
                        &vec![0u8; g.h * g.w],
                        &g,
                        (),
                        |a, _| a,
                        |_, valid, padded| (valid, (if include { padded } else { valid }).max(1)),
                        &mut counts,
                    );
                    let ratios: Vec<f64> = counts.iter().map(|&(_, d)| 1.0 / d as f64).collect();
                    let (shift, mult) = lower_multipliers(&ratios, cfg.aux_mult_bits, false)
                        .ok_or_else(|| {
                            unsupported(name, "average pooling multipliers do not fit")
                        })?;
                    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
                    for (&(valid, _), &m) in counts.iter().zip(&mult) {
                        let v = i128::try_from(valid).unwrap_or(i128::MAX);
                        let a = super::run::rq_i128(i128::from(x.lo) * v, m, shift);
                        let b = super::run::rq_i128(i128::from(x.hi) * v, m, shift);
                        lo = lo.min(a.min(b));
                        hi = hi.max(a.max(b));
                    }
                    (IntOp::AvgPool { mult, shift }, ValueQuant { lo, hi, ..x })
                }
                Op::GlobalAvgPool => {
                    let in_shape = n.inputs.first().map(|&i| graph.shape(i)).unwrap_or(&[]);
                    let hw = in_shape.get(2).copied().unwrap_or(1)
                        * in_shape.get(3).copied().unwrap_or(1);
                    // The input's scale, or straight to the grid an int8 model gives.
                    let s_y = given
                        .get(n.output)
                        .copied()
                        .flatten()
                        .map_or(x.scale, |q| f64::from(q.scale));
                    let ratio = x.scale / s_y / hw.max(1) as f64;
                    let (shift, mult) = lower_multipliers(&[ratio], cfg.aux_mult_bits, false)
                        .ok_or_else(|| unsupported(name, "pooling multiplier does not fit"))?;
                    let m = mult.first().copied().unwrap_or(1);
                    let v = i128::try_from(hw).unwrap_or(i128::MAX);
                    let lo = super::run::rq_i128(i128::from(x.lo) * v, m, shift);
                    let hi = super::run::rq_i128(i128::from(x.hi) * v, m, shift);
                    (
                        IntOp::GlobalAvgPool { mult: m, shift },
                        ValueQuant {
                            scale: s_y,
                            lo: lo.min(hi),
                            hi: hi.max(lo),
                        },
                    )
                }
                Op::Reshape | Op::Softmax { .. } => (IntOp::Pass, x),
                Op::Binary {
                    op: BinOp::Mul | BinOp::Div,
                    constant: None,
                    ..
                }
                | Op::MatMul
                | Op::Gemm(_) => {
                    return Err(unsupported(name, crate::quant::PRODUCT_OF_ACTIVATIONS));
                }
                other => {
                    return Err(unsupported(
                        name,
                        format!(
                            "op {} is not in the integer semantics yet; the float engine runs it",
                            other.kind()
                        ),
                    ));
                }
            };
            if let Some(v) = values.get_mut(n.output) {
                *v = Some(out);
            }
            ops.push(op);
        }
        Ok(Self {
            graph: graph.clone(),
            cfg,
            values,
            ops,
        })
    }
}

/// Widest input interval a Sigmoid/Tanh table covers.
const MAX_TABLE: i64 = 1 << 16;

/// Sigmoid (`sig`) or Tanh as a table over the input's interval (module docs), on the model's
/// grid when it gives one.
fn lower_table(
    sig: bool,
    x: ValueQuant,
    given: Option<QParam>,
    cfg: QintConfig,
    name: &str,
) -> Result<(IntOp, ValueQuant), EngineError> {
    if x.lo == i64::MIN || x.hi == i64::MAX || x.hi - x.lo >= MAX_TABLE {
        return Err(unsupported(
            name,
            format!(
                "{} of an input whose interval [{}, {}] is not saturated to at most {MAX_TABLE} integers; \
                 saturate it first (a Clip, or a layer before it)",
                if sig { "Sigmoid" } else { "Tanh" },
                x.lo,
                x.hi
            ),
        ));
    }
    let o = match given {
        Some(q) => {
            let (lo, hi) = q.interval();
            ValueQuant {
                scale: f64::from(q.scale),
                lo,
                hi,
            }
        }
        None => {
            let (lo, hi) = act_interval(cfg.act_bits, sig);
            ValueQuant {
                scale: 1.0 / hi as f64,
                lo,
                hi,
            }
        }
    };
    let f = |v: f64| {
        if sig {
            1.0 / (1.0 + (-v).exp())
        } else {
            v.tanh()
        }
    };
    let table = (x.lo..=x.hi)
        .map(|q| {
            let r = (f(q as f64 * x.scale) / o.scale).round();
            (r.clamp(o.lo as f64, o.hi as f64)) as i64
        })
        .collect();
    Ok((IntOp::Table { first: x.lo, table }, o))
}

/// For every value whose only reader is a Concat (and that is no graph output and has no given
/// grid), the Concat's output, following chains of concatenations: such a value is quantized
/// straight on the concatenation's grid, so that the Concat moves it unchanged instead of
/// rounding it a second time.
fn concat_grids(graph: &Graph, given: &[Option<QParam>]) -> Vec<Option<usize>> {
    let readers = reader_counts(graph);
    let mut into = vec![None; graph.values.len()];
    for n in &graph.nodes {
        if !matches!(n.op, Op::Concat { .. }) || given.get(n.output).copied().flatten().is_some() {
            continue;
        }
        for &i in &n.inputs {
            if readers.get(i).copied() == Some(1)
                && !graph.outputs.contains(&i)
                && given.get(i).copied().flatten().is_none()
                && let Some(t) = into.get_mut(i)
            {
                *t = Some(n.output);
            }
        }
    }
    // Chains: a Concat's output read by another Concat takes that one's grid (acyclic, so
    // at most as many steps as values).
    for v in 0..into.len() {
        let mut t = into.get(v).copied().flatten();
        let mut steps = 0;
        while let Some(u) = t
            && let Some(next) = into.get(u).copied().flatten()
            && steps < into.len()
        {
            t = Some(next);
            steps += 1;
        }
        if let Some(slot) = into.get_mut(v) {
            *slot = t;
        }
    }
    into
}

/// How many node inputs read each value.
fn reader_counts(graph: &Graph) -> Vec<usize> {
    let mut readers = vec![0usize; graph.values.len()];
    for n in &graph.nodes {
        for &i in &n.inputs {
            if let Some(r) = readers.get_mut(i) {
                *r += 1;
            }
        }
    }
    readers
}

/// A node's part in a fused affine chain: consecutive Mul/Div/Add/Sub by constants (a batch
/// normalisation, a scale layer, an input normalisation) requantized once, as `x·M + A`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fused {
    /// Not the chain's last node: moves its input on unchanged (`Pass`).
    Pass,
    /// The chain's last node; the chain starts at this node index.
    Last(usize),
}

/// Whether node `n` can join an affine chain: an element-wise op with a constant, other than
/// a division of a constant by the activation.
fn affine_link(n: &tessera_model::ir::Node) -> Option<(&Tensor, BinOp, bool)> {
    match &n.op {
        Op::Binary {
            op,
            constant: Some(c),
            constant_first,
        } if !(*op == BinOp::Div && *constant_first) => Some((c, *op, *constant_first)),
        _ => None,
    }
}

/// Finds the affine chains: runs of two or more [`affine_link`]s, at least one of them a Mul or
/// Div, where each link's output is read by the next link alone, is no graph output and has no
/// given grid, every output has the chain's shape and every constant has the last link's shape
/// or one element. Depends on the graph's structure alone (never on a constant's value), so the
/// `gc` worker, which holds the model with added constants zeroed, fuses the same chains.
fn fused_affines(graph: &Graph, given: &[Option<QParam>]) -> Vec<Option<Fused>> {
    let readers = reader_counts(graph);
    let producer: std::collections::HashMap<usize, usize> = graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.output, i))
        .collect();
    // start[i]: where the chain through node i begins.
    let mut start: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    let mut next: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        if affine_link(n).is_none() {
            continue;
        }
        let s = n
            .inputs
            .first()
            .and_then(|&v| {
                let &p = producer.get(&v)?;
                let ok = readers.get(v).copied() == Some(1)
                    && !graph.outputs.contains(&v)
                    && given.get(v).copied().flatten().is_none()
                    && graph.shape(v) == graph.shape(n.output)
                    && affine_link(graph.nodes.get(p)?).is_some();
                ok.then_some(p)
            })
            .and_then(|p| {
                let st = start.get(p).copied().flatten()?;
                if let Some(x) = next.get_mut(p) {
                    *x = Some(i);
                }
                Some(st)
            });
        if let Some(x) = start.get_mut(i) {
            *x = Some(s.unwrap_or(i));
        }
    }
    let mut fused = vec![None; graph.nodes.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        let (Some(st), None) = (
            start.get(i).copied().flatten(),
            next.get(i).copied().flatten(),
        ) else {
            continue;
        };
        if st == i {
            continue;
        }
        let Some((last_c, ..)) = affine_link(n) else {
            continue;
        };
        // The links from st to i.
        let mut links = vec![st];
        while let Some(&l) = links.last()
            && let Some(nx) = next.get(l).copied().flatten()
        {
            links.push(nx);
        }
        let fits = links.iter().all(|&l| {
            graph
                .nodes
                .get(l)
                .and_then(affine_link)
                .is_some_and(|(c, ..)| c.shape() == last_c.shape() || c.len() == 1)
        });
        let scales = links.iter().any(|&l| {
            graph
                .nodes
                .get(l)
                .and_then(affine_link)
                .is_some_and(|(_, op, _)| matches!(op, BinOp::Mul | BinOp::Div))
        });
        if !fits || !scales {
            continue;
        }
        for &l in &links {
            if let Some(f) = fused.get_mut(l) {
                *f = Some(if l == i { Fused::Last(st) } else { Fused::Pass });
            }
        }
    }
    fused
}

/// The chain ending at node `last` (module docs, "affine chains"): the combined `x·M_j + A_j`
/// per element `j` of the last link's constant, in f64.
fn affine_chain(graph: &Graph, first: usize, last: usize) -> (Vec<f64>, Vec<f64>) {
    let len = graph
        .nodes
        .get(last)
        .and_then(affine_link)
        .map_or(1, |(c, ..)| c.len());
    let (mut m, mut a) = (vec![1f64; len], vec![0f64; len]);
    for n in graph.nodes.get(first..=last).unwrap_or(&[]) {
        let Some((c, op, constant_first)) = affine_link(n) else {
            continue;
        };
        for (j, (mj, aj)) in m.iter_mut().zip(a.iter_mut()).enumerate() {
            let cj = f64::from(
                c.data()
                    .get(if c.len() == 1 { 0 } else { j })
                    .copied()
                    .unwrap_or(0.0),
            );
            match (op, constant_first) {
                (BinOp::Mul, _) => {
                    *mj *= cj;
                    *aj *= cj;
                }
                (BinOp::Div, _) => {
                    *mj /= cj;
                    *aj /= cj;
                }
                (BinOp::Add, _) => *aj += cj,
                (BinOp::Sub, false) => *aj -= cj,
                (BinOp::Sub, true) => {
                    *mj = -*mj;
                    *aj = cj - *aj;
                }
            }
        }
    }
    (m, a)
}

/// An affine chain's added constants at the pre-shift scale `s_y / 2^n`: `round(A_j·2^n/s_y)`,
/// each clamped to `±(|m_j|·max|x| + 2^n·(max(|lo|, |hi|) + 1))`, past which it saturates the
/// output anyway, so that the pre-shift sum has a bound that depends on no constant's value.
fn fused_constant(
    a: &[f64],
    mult: &[i64],
    shift: u32,
    s_y: f64,
    x: ValueQuant,
    o: ValueQuant,
) -> Vec<i64> {
    let scale = 2f64.powi(shift as i32) / s_y;
    let xmax = x.lo.unsigned_abs().max(x.hi.unsigned_abs()) as f64;
    let omax = o.lo.unsigned_abs().max(o.hi.unsigned_abs()) as f64 + 1.0;
    mult.iter()
        .zip(a)
        .map(|(&m, &aj)| {
            let v = (aj * scale).round();
            let cap = (m.unsigned_abs() as f64).mul_add(xmax, 2f64.powi(shift as i32) * omax);
            let cap = cap.min(AFFINE_CAP);
            let v = if v.is_nan() { 0.0 } else { v.clamp(-cap, cap) };
            v as i64
        })
        .collect()
}

/// The largest fused constant (2^62): far past any saturation of a realistic step, and with
/// `x·m` still inside i128.
const AFFINE_CAP: f64 = 4.611_686_018_427_388e18;

/// A conv or dense layer to lower.
struct Layer<'a> {
    weight: &'a Tensor,
    bias: Option<&'a Tensor>,
    rows: usize,
    groups: usize,
    x: ValueQuant,
    out: ValueQuant,
    name: &'a str,
}

/// Conv/Dense lowering: per-channel multipliers with the exact weight scale (module docs).
fn lower_linear(l: &Layer, cfg: QintConfig) -> Result<(IntOp, ValueQuant), EngineError> {
    let Layer {
        weight,
        bias,
        rows,
        groups,
        x,
        out,
        name,
    } = *l;
    let data = weight.data();
    if rows == 0 || data.len() % rows != 0 {
        return Err(unsupported(
            name,
            "weights that do not split into output channels",
        ));
    }
    let k = data.len() / rows;
    let qw = f64::from((1u32 << (cfg.weight_bits - 1)) - 1);
    // Ideal per-channel weight scale times s_x: the numerator of r_c = s_w*_c · s_x / s_y.
    let nums: Vec<f64> = data
        .chunks(k.max(1))
        .map(|r| {
            let m = r.iter().fold(0f64, |a, &v| a.max(f64::from(v).abs()));
            // An all-zero channel borrows the smallest scale that still multiplies by ≥ 1.
            m / qw * x.scale
        })
        .collect();
    let (s_y, shift, mut mult) = fit_output(&nums, out.scale, cfg.mult_bits, true, name)?;
    for m in &mut mult {
        *m = (*m).max(1);
    }
    let u = s_y / 2f64.powi(shift as i32) / x.scale; // s_w,c = m_c · u
    let mut w = Vec::with_capacity(data.len());
    let mut row_abs = Vec::with_capacity(rows);
    for (r, &m) in data.chunks(k.max(1)).zip(&mult) {
        let s_w = m as f64 * u;
        let mut sum = 0i128;
        for &v in r {
            let q = round_i64(f64::from(v) / s_w, name)?;
            if q.unsigned_abs() > qw as u64 {
                return Err(EngineError::Internal(format!(
                    "node '{name}': weight {q} leaves {} bits",
                    cfg.weight_bits
                )));
            }
            sum += i128::from(q).abs();
            w.push(q);
        }
        row_abs.push(sum);
    }
    let b = match bias {
        Some(b) => {
            if b.len() != rows {
                return Err(unsupported(
                    name,
                    "a bias that does not match the output channels",
                ));
            }
            b.data()
                .iter()
                .zip(&mult)
                .map(|(&v, &m)| round_i64(f64::from(v) / (x.scale * m as f64 * u), name))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => vec![0; rows],
    };
    let l = IntLinear::new(w, b, mult, shift, (out.lo, out.hi), row_abs, groups);
    Ok((IntOp::Linear(l), ValueQuant { scale: s_y, ..out }))
}

/// Conv/Dense lowering of an int8 model's layer: the integers `weight / s_w,c` as given, the
/// bias rounded at the accumulator's scale `s_x·s_w,c`, and multipliers of at least
/// [`GIVEN_MULT_BITS`] bits approximating `s_x·s_w,c / s_y`.
fn lower_given(
    l: &Layer,
    scales: &[f32],
    cfg: QintConfig,
) -> Result<(IntOp, ValueQuant), EngineError> {
    let Layer {
        weight,
        bias,
        rows,
        groups,
        x,
        out,
        name,
    } = *l;
    let data = weight.data();
    if rows == 0 || data.len() % rows != 0 || (scales.len() != 1 && scales.len() != rows) {
        return Err(unsupported(
            name,
            "weights or weight scales that do not split into output channels",
        ));
    }
    let k = data.len() / rows;
    let scale = |r: usize| f64::from(scales.get(r).or(scales.first()).copied().unwrap_or(1.0));
    let mut w = Vec::with_capacity(data.len());
    let mut row_abs = Vec::with_capacity(rows);
    for (r, row) in data.chunks(k.max(1)).enumerate() {
        let s = scale(r);
        let mut sum = 0i128;
        for &v in row {
            let e = f64::from(v) / s;
            let q = round_i64(e, name)?;
            if (e - q as f64).abs() > 1e-3 || q.unsigned_abs() > 1 << 16 {
                return Err(unsupported(
                    name,
                    format!("weight {v} is not a small integer multiple of its scale {s}"),
                ));
            }
            sum += i128::from(q).abs();
            w.push(q);
        }
        row_abs.push(sum);
    }
    let b = match bias {
        Some(b) if b.len() == rows => b
            .data()
            .iter()
            .enumerate()
            .map(|(r, &v)| round_i64(f64::from(v) / (x.scale * scale(r)), name))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(unsupported(
                name,
                "a bias that does not match the output channels",
            ));
        }
        None => vec![0; rows],
    };
    let nums: Vec<f64> = (0..rows).map(|r| x.scale * scale(r)).collect();
    let bits = cfg.mult_bits.max(GIVEN_MULT_BITS);
    let (s_y, shift, mult) = fit_output(&nums, out.scale, bits, false, name)?;
    // A multiplier that rounds to 0 (a channel whose weight scale is ~1e-15 of the layer's
    // largest: batch-norm folding leaves such dead channels) is exact only where the channel's
    // real output rounds to 0 for every input.
    for (r, &m) in mult.iter().enumerate() {
        if m >= 1 {
            continue;
        }
        let reach = row_abs.get(r).copied().unwrap_or(0) as f64 * x.max_abs() as f64
            + b.get(r).map_or(0.0, |v| v.unsigned_abs() as f64);
        if reach * nums.get(r).copied().unwrap_or(0.0) / s_y >= 0.5 {
            return Err(unsupported(
                name,
                format!(
                    "output channel {r}'s requantization ratio rounds to 0 at this layer's shift \
                     but its output need not; its weight scale is too far below the layer's largest"
                ),
            ));
        }
    }
    let l = IntLinear::new(w, b, mult, shift, (out.lo, out.hi), row_abs, groups);
    Ok((IntOp::Linear(l), ValueQuant { scale: s_y, ..out }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_take_the_largest_shift() {
        let (n, m) = lower_multipliers(&[0.3, 0.01], 8, true).expect("fits");
        // 0.3 · 2^9 = 153.6 → 154 ≤ 255; 2^10 would give 308.
        assert_eq!(n, 9);
        assert_eq!(m, vec![154, 6]);
        let (n, m) = lower_multipliers(&[0.25], 1, false).expect("fits");
        assert_eq!((n, m), (2, vec![1]));
        assert!(lower_multipliers(&[3.0], 1, false).is_none());
        assert!(lower_multipliers(&[f64::NAN], 8, false).is_none());
        let (n, m) = lower_multipliers(&[-0.5], 4, false).expect("fits");
        assert_eq!((n, m), (4, vec![-8]));
    }

    #[test]
    fn intervals() {
        assert_eq!(act_interval(8, true), (0, 255));
        assert_eq!(act_interval(8, false), (-127, 127));
        assert_eq!(act_interval(16, false), (-32767, 32767));
    }
}
