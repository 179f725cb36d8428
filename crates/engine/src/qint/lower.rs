//! Lowering a float graph and its calibration to the integer constants of v2 (module docs of
//! [`super`] give the rules).

use super::{Calibration, IntLinear, IntModel, IntOp, QintConfig, ValueQuant};
use crate::EngineError;
use crate::window::{pool_geometry, pool_plane};
use tessera_model::ir::{BinOp, Graph, Op};
use tessera_model::tensor::Tensor;

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

impl IntModel {
    /// Lowers `graph` to the integer semantics v2 with the scales of `calib` (see the module
    /// docs). Rejects ops outside the semantics with the node named.
    pub fn new(graph: &Graph, cfg: QintConfig, calib: &Calibration) -> Result<Self, EngineError> {
        graph.validate()?;
        cfg.check()?;
        calib.check(graph)?;
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
        let fresh = |v: usize| -> Result<ValueQuant, EngineError> {
            let (lo_f, hi_f) = calib.range(graph, v).ok_or_else(|| {
                EngineError::Internal(format!("value {v} has no calibration range"))
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
        let mut values: Vec<Option<ValueQuant>> = vec![None; nv];
        for &i in &graph.inputs {
            if let Some(v) = values.get_mut(i) {
                *v = Some(fresh(i)?);
            }
        }
        let mut ops = Vec::with_capacity(graph.nodes.len());
        for n in &graph.nodes {
            let name = n.name.as_str();
            let inq = |k: usize| -> Result<ValueQuant, EngineError> {
                n.inputs
                    .get(k)
                    .and_then(|&i| values.get(i).copied().flatten())
                    .ok_or_else(|| unsupported(name, "reads a value the integer graph lacks"))
            };
            let x = inq(0)?;
            let (op, out) = match &n.op {
                Op::Conv(tessera_model::ir::Conv { weight, bias, .. })
                | Op::Dense(tessera_model::ir::Dense { weight, bias }) => {
                    let rows = weight.shape().first().copied().unwrap_or(0);
                    let out = fresh(n.output)?;
                    lower_linear(weight, bias.as_ref(), rows, x, out, cfg, name)?
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
                    let (shift, mult) =
                        lower_multipliers(&[1.0 / hw.max(1) as f64], cfg.aux_mult_bits, false)
                            .ok_or_else(|| unsupported(name, "pooling multiplier does not fit"))?;
                    let m = mult.first().copied().unwrap_or(1);
                    let v = i128::try_from(hw).unwrap_or(i128::MAX);
                    let lo = super::run::rq_i128(i128::from(x.lo) * v, m, shift);
                    let hi = super::run::rq_i128(i128::from(x.hi) * v, m, shift);
                    (
                        IntOp::GlobalAvgPool { mult: m, shift },
                        ValueQuant { lo, hi, ..x },
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

/// Conv/Dense lowering: per-channel multipliers with the exact weight scale (module docs).
fn lower_linear(
    weight: &Tensor,
    bias: Option<&Tensor>,
    rows: usize,
    x: ValueQuant,
    out: ValueQuant,
    cfg: QintConfig,
    name: &str,
) -> Result<(IntOp, ValueQuant), EngineError> {
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
    let wf = w.iter().map(|&v| v as f64).collect();
    Ok((
        IntOp::Linear(IntLinear {
            w,
            b,
            mult,
            shift,
            lo: out.lo,
            hi: out.hi,
            row_abs,
            wf,
        }),
        ValueQuant { scale: s_y, ..out },
    ))
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
