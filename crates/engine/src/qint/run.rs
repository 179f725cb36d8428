//! Running a lowered [`IntModel`] on integers.

use super::{IntModel, IntOp, ValueQuant};
use crate::EngineError;
use crate::quant::accumulate;
use crate::window::{pool_geometry, pool_planes};
use rayon::prelude::*;
use tessera_model::ir::Op;
use tessera_model::tensor::{
    Tensor, broadcast_index_map, broadcast_shapes, concat, slice_axis, transpose,
};

/// The v2 requantization `⌊(a·m + 2^(n−1)) / 2^n⌋` (`a·m` for `n = 0`), exact in i128; `None`
/// when `a·m` leaves i128.
pub fn rq(a: i128, m: i64, n: u32) -> Option<i128> {
    let p = a.checked_mul(i128::from(m))?;
    if n == 0 {
        return Some(p);
    }
    let n = n.min(126);
    Some(p.checked_add(1i128 << (n - 1))? >> n)
}

/// [`rq`] saturated into i64 (interval arithmetic only).
pub(super) fn rq_i128(a: i128, m: i64, n: u32) -> i64 {
    let v = rq(a, m, n).unwrap_or(if (a < 0) == (m < 0) {
        i128::MAX
    } else {
        i128::MIN
    });
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

fn overflow(what: &str) -> EngineError {
    EngineError::Overflow(format!("{what} leaves the 64-bit range"))
}

/// `clamp(rq(a; m, n), lo, hi)`.
pub(super) fn rq_clamp(a: i128, m: i64, n: u32, lo: i64, hi: i64) -> Result<i64, EngineError> {
    let v = rq(a, m, n).ok_or_else(|| overflow("a requantization product"))?;
    // Clamped into [lo, hi] ⊂ i64, so the cast is lossless.
    Ok(v.clamp(i128::from(lo), i128::from(hi)) as i64)
}

fn to_i64(v: i128, what: &str) -> Result<i64, EngineError> {
    i64::try_from(v).map_err(|_| overflow(what))
}

impl IntModel {
    /// Quantizes a float input: `clamp(round_half_away_from_zero(x / s_in), lo_in, hi_in)`.
    /// A non-finite element is an error.
    pub fn quantize_input(&self, x: &Tensor) -> Result<Tensor<i64>, EngineError> {
        crate::float::check_inputs(&self.graph, std::slice::from_ref(x))?;
        let q = self.input_quant()?;
        let d = x
            .data()
            .iter()
            .map(|&v| {
                if !v.is_finite() {
                    return Err(EngineError::Input(format!("input value {v} is not finite")));
                }
                let r = (f64::from(v) / q.scale).round();
                Ok(r.clamp(q.lo as f64, q.hi as f64) as i64)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shape = self
            .graph
            .inputs
            .first()
            .map_or(&[][..], |&i| self.graph.shape(i));
        Ok(Tensor::new(shape.to_vec(), d)?)
    }

    /// The real values of an output: each integer times the output's scale.
    pub fn dequantize_output(&self, y: &Tensor<i64>) -> Result<Tensor, EngineError> {
        let s = self.output_quant()?.scale;
        Ok(y.map(|&v| (v as f64 * s) as f32))
    }

    /// Quantizes and runs; returns the output integers (logits at the output's scale).
    pub fn run(&self, x: &Tensor) -> Result<Tensor<i64>, EngineError> {
        let q = self.quantize_input(x)?;
        self.run_int(&q)
    }

    /// Runs on an already-quantized input, which must lie in the input's interval.
    pub fn run_int(&self, x: &Tensor<i64>) -> Result<Tensor<i64>, EngineError> {
        let g = &self.graph;
        let (&input, &output) = match (g.inputs.as_slice(), g.outputs.as_slice()) {
            ([i], [o]) => (i, o),
            _ => {
                return Err(EngineError::Input(
                    "the integer semantics v2 runs models with one input and one output".into(),
                ));
            }
        };
        if x.shape() != g.shape(input) {
            return Err(EngineError::Input(format!(
                "input must have shape {:?}, got {:?}",
                g.shape(input),
                x.shape()
            )));
        }
        let iq = self.input_quant()?;
        if let Some(v) = x.data().iter().find(|&&v| v < iq.lo || v > iq.hi) {
            return Err(EngineError::Input(format!(
                "input integer {v} is outside the input's interval [{}, {}]",
                iq.lo, iq.hi
            )));
        }
        let last = g.last_uses();
        let mut vals: Vec<Option<Tensor<i64>>> = vec![None; g.values.len()];
        if let Some(v) = vals.get_mut(input) {
            *v = Some(x.clone());
        }
        for (k, (n, op)) in g.nodes.iter().zip(&self.ops).enumerate() {
            // An op that leaves every integer of its (proven) input interval unchanged — a
            // ReLU of a non-negative value, a clip that the interval already satisfies, a
            // reshape — passes its input's buffer on when nothing else reads it.
            let xq = n.inputs.first().and_then(|&i| self.value(i)).copied();
            let identity = match (op, xq) {
                (IntOp::Pass, _) => true,
                (IntOp::Relu, Some(q)) => q.lo >= 0,
                (IntOp::Clip { lo, hi }, Some(q)) => q.lo >= *lo && q.hi <= *hi,
                _ => false,
            };
            if let (true, &[i]) = (identity, n.inputs.as_slice())
                && last.get(i) == Some(&k)
                && let Some(t) = vals.get_mut(i).and_then(Option::take)
            {
                let y = t.reshape(g.shape(n.output).to_vec())?;
                if let Some(v) = vals.get_mut(n.output) {
                    *v = Some(y);
                }
                continue;
            }
            let ins: Vec<&Tensor<i64>> = n
                .inputs
                .iter()
                .map(|&i| {
                    vals.get(i)
                        .and_then(Option::as_ref)
                        .ok_or_else(|| EngineError::Internal(format!("value {i} missing")))
                })
                .collect::<Result<_, _>>()?;
            let out_shape = g.shape(n.output).to_vec();
            let y = eval(&n.op, op, &ins, xq, &out_shape).map_err(|e| e.at(&n.name))?;
            // Ops that saturate to exactly the output's interval hold it by construction; the
            // others are checked (in parallel).
            if let Some(q) = self.value(n.output)
                && !op.saturates_to(q)
                && let Some(v) = outside(y.data(), q)
            {
                return Err(EngineError::Internal(format!(
                    "node '{}' produced {v} outside its proven interval [{}, {}]",
                    n.name, q.lo, q.hi
                )));
            }
            if let Some(v) = vals.get_mut(n.output) {
                *v = Some(y);
            }
            for &i in &n.inputs {
                if last.get(i) == Some(&k)
                    && let Some(v) = vals.get_mut(i)
                {
                    *v = None;
                }
            }
        }
        vals.get_mut(output)
            .and_then(Option::take)
            .ok_or_else(|| EngineError::Internal("output missing".into()))
    }
}

/// `clamp(rq(acc + b_c; m_c, n), lo, hi)` over output planes of `npos` positions (channel
/// `c` = plane mod `rows`), in parallel. Where `(|acc| + |b_c|)·|m_c| + 2^(n−1)` provably fits
/// i64 (from the channel's Σ|w|, the input interval being checked by the caller, and the bias)
/// the product is taken in i64; the arithmetic is the same either way.
fn requantize_planes(
    acc: &[i64],
    l: &super::IntLinear,
    rows: usize,
    npos: usize,
) -> Result<Vec<i64>, EngineError> {
    let mut out = vec![0i64; acc.len()];
    let amax = acc.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    out.par_chunks_mut(npos)
        .zip(acc.par_chunks(npos))
        .with_min_len(super::int8::min_rows(npos))
        .enumerate()
        .try_for_each(|(p, (o, a))| {
            let r = p % rows;
            let (b, m) = (
                l.b.get(r).copied().unwrap_or(0),
                l.mult.get(r).copied().unwrap_or(1),
            );
            let reach = u128::from(amax) + u128::from(b.unsigned_abs());
            let half = if l.shift == 0 {
                0
            } else {
                1u128 << (l.shift - 1)
            };
            let fits = reach * u128::from(m.unsigned_abs()) + half < (1u128 << 62) && l.shift < 62;
            if fits {
                let (h, n) = (half as i64, l.shift);
                for (y, &v) in o.iter_mut().zip(a) {
                    let q = ((v + b) * m + h) >> n;
                    *y = q.clamp(l.lo, l.hi);
                }
                Ok::<(), EngineError>(())
            } else {
                for (y, &v) in o.iter_mut().zip(a) {
                    *y = rq_clamp(i128::from(v) + i128::from(b), m, l.shift, l.lo, l.hi)?;
                }
                Ok(())
            }
        })?;
    Ok(out)
}

/// LRN on integers (the module docs' rule; the float engine's channel window).
fn lrn_int(
    x: &Tensor<i64>,
    size: usize,
    [alpha, beta, bias]: [f32; 3],
    [s_x, s_y]: [f64; 2],
    [lo, hi]: [i64; 2],
) -> Result<Vec<i64>, EngineError> {
    let s = x.shape();
    let (Some(&n), Some(&c)) = (s.first(), s.get(1)) else {
        return Err(EngineError::Input(format!(
            "LRN over a tensor of shape {s:?}"
        )));
    };
    if size == 0 {
        return Err(EngineError::Input("LRN of size 0".into()));
    }
    let inner: usize = s.get(2..).map_or(1, |r| r.iter().product());
    let (before, after) = ((size - 1) / 2, (size - 1).div_ceil(2));
    let (alpha, beta, bias) = (f64::from(alpha), f64::from(beta), f64::from(bias));
    let d = x.data();
    let mut out = vec![0i64; d.len()];
    out.par_chunks_mut(c * inner)
        .zip(d.par_chunks(c * inner))
        .with_min_len(super::int8::min_rows(c * inner * size))
        .take(n)
        .for_each(|(o, xb)| {
            for ch in 0..c {
                let (from, to) = (ch.saturating_sub(before), (ch + after).min(c - 1));
                for i in 0..inner {
                    let sq: i128 = (from..=to)
                        .map(|cc| i128::from(xb[cc * inner + i]).pow(2))
                        .sum();
                    let v = xb[ch * inner + i] as f64 * s_x;
                    let den = (bias + alpha / size as f64 * sq as f64 * s_x * s_x).powf(beta);
                    let q = (v / den / s_y).round();
                    o[ch * inner + i] = if q.is_nan() {
                        0
                    } else {
                        q.clamp(lo as f64, hi as f64) as i64
                    };
                }
            }
        });
    Ok(out)
}

/// `clamp(rq(x; m, n), lo, hi)` of every element: in i64 and in parallel where
/// `max|x|·|m| + 2^(n−1)` fits (the same arithmetic), in i128 otherwise.
fn rq_map(x: &[i64], m: i64, n: u32, lo: i64, hi: i64) -> Result<Vec<i64>, EngineError> {
    let top = x.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let half = if n == 0 { 0 } else { 1u128 << (n - 1).min(100) };
    if n < 62 && u128::from(top) * u128::from(m.unsigned_abs()) + half < 1u128 << 62 {
        let h = half as i64;
        return Ok(par_map(x, |v| ((v * m + h) >> n).clamp(lo, hi)));
    }
    x.iter()
        .map(|&v| rq_clamp(i128::from(v), m, n, lo, hi))
        .collect()
}

/// Elements per parallel task of the element-wise loops.
const PAR_CHUNK: usize = 1 << 14;

/// `f` over `x`, in parallel chunks.
fn par_map(x: &[i64], f: impl Fn(i64) -> i64 + Sync) -> Vec<i64> {
    if x.len() <= PAR_CHUNK {
        return x.iter().map(|&v| f(v)).collect();
    }
    let mut out = vec![0i64; x.len()];
    out.par_chunks_mut(PAR_CHUNK)
        .zip(x.par_chunks(PAR_CHUNK))
        .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(y, &v)| *y = f(v)));
    out
}

/// The first element outside `q`'s interval, searched in parallel.
fn outside(y: &[i64], q: &ValueQuant) -> Option<i64> {
    if y.len() <= PAR_CHUNK {
        return y.iter().copied().find(|&v| v < q.lo || v > q.hi);
    }
    y.par_chunks(PAR_CHUNK)
        .find_map_first(|c| c.iter().copied().find(|&v| v < q.lo || v > q.hi))
}

fn first<'a>(ins: &[&'a Tensor<i64>]) -> Result<&'a Tensor<i64>, EngineError> {
    ins.first()
        .copied()
        .ok_or_else(|| EngineError::Internal("an op without input".into()))
}

fn eval(
    op: &Op,
    q: &IntOp,
    ins: &[&Tensor<i64>],
    xq: Option<ValueQuant>,
    out_shape: &[usize],
) -> Result<Tensor<i64>, EngineError> {
    let x = first(ins)?;
    let n_out: usize = out_shape.iter().product();
    let y: Vec<i64> = match q {
        IntOp::Linear(l) => {
            let fast = xq.and_then(|xq| {
                super::int8::linear_u8(op, l, xq, x, out_shape)
                    .or_else(|| super::int8::depthwise(op, l, xq, x, out_shape))
            });
            if let Some(y) = fast {
                return Ok(Tensor::new(out_shape.to_vec(), y?)?);
            }
            let rmax = l.row_abs.iter().copied().max().unwrap_or(0);
            let bmax = l.b.iter().map(|&v| i128::from(v).abs()).max().unwrap_or(0);
            let acc = accumulate(op, &l.w, &l.wf, rmax, bmax, x, out_shape)?;
            let rows = out_shape.get(1).copied().unwrap_or(1).max(1);
            let npos = (n_out / x.shape().first().copied().unwrap_or(1).max(1) / rows).max(1);
            requantize_planes(&acc, l, rows, npos)?
        }
        IntOp::AddAct {
            ma,
            mb,
            shift,
            lo,
            hi,
        } => {
            let b = ins
                .get(1)
                .ok_or_else(|| EngineError::Internal("add without a second input".into()))?;
            let add = |p: i64, r: i64| {
                let v = i128::from(p) * i128::from(*ma) + i128::from(r) * i128::from(*mb);
                rq_clamp(v, 1, *shift, *lo, *hi)
            };
            // Where |p·ma| + |r·mb| + 2^(n−1) provably fits i64 (from the largest magnitudes
            // present), the same arithmetic in i64.
            let reach = |t: &Tensor<i64>, m: i64| {
                u128::from(t.data().iter().map(|v| v.unsigned_abs()).max().unwrap_or(0))
                    * u128::from(m.unsigned_abs())
            };
            let small = reach(x, *ma) + reach(b, *mb) + (1u128 << shift.saturating_sub(1).min(100))
                < (1u128 << 62)
                && *shift < 62;
            if x.shape() == b.shape() && small {
                // A residual connection: element by element, in i64, in parallel.
                let h = if *shift == 0 { 0 } else { 1i64 << (shift - 1) };
                let (ma, mb, n, lo, hi) = (*ma, *mb, *shift, *lo, *hi);
                let mut out = vec![0i64; x.len()];
                out.par_chunks_mut(PAR_CHUNK)
                    .zip(
                        x.data()
                            .par_chunks(PAR_CHUNK)
                            .zip(b.data().par_chunks(PAR_CHUNK)),
                    )
                    .for_each(|(o, (p, r))| {
                        for (y, (&p, &r)) in o.iter_mut().zip(p.iter().zip(r)) {
                            *y = ((p * ma + r * mb + h) >> n).clamp(lo, hi);
                        }
                    });
                out
            } else if x.shape() == b.shape() {
                x.data()
                    .iter()
                    .zip(b.data())
                    .map(|(&p, &r)| add(p, r))
                    .collect::<Result<_, _>>()?
            } else {
                let s = broadcast_shapes(x.shape(), b.shape())?;
                let ia = broadcast_index_map(x.shape(), &s);
                let ib = broadcast_index_map(b.shape(), &s);
                ia.iter()
                    .zip(&ib)
                    .map(|(&i, &j)| add(x.data()[i], b.data()[j]))
                    .collect::<Result<_, _>>()?
            }
        }
        IntOp::AddConst { c, neg_x } => {
            let Op::Binary {
                constant: Some(ct), ..
            } = op
            else {
                return Err(EngineError::Internal(
                    "add-const without its constant".into(),
                ));
            };
            let xi = broadcast_index_map(x.shape(), out_shape);
            let ci = broadcast_index_map(ct.shape(), out_shape);
            xi.iter()
                .zip(&ci)
                .map(|(&i, &j)| {
                    let (a, k) = (i128::from(x.data()[i]), i128::from(c[j]));
                    to_i64(if *neg_x { k - a } else { k + a }, "an added constant")
                })
                .collect::<Result<_, _>>()?
        }
        IntOp::MulConst {
            mult,
            shift,
            lo,
            hi,
        } => {
            let Op::Binary {
                constant: Some(ct), ..
            } = op
            else {
                return Err(EngineError::Internal(
                    "mul-const without its constant".into(),
                ));
            };
            let xi = broadcast_index_map(x.shape(), out_shape);
            let ci = broadcast_index_map(ct.shape(), out_shape);
            xi.iter()
                .zip(&ci)
                .map(|(&i, &j)| rq_clamp(i128::from(x.data()[i]), mult[j], *shift, *lo, *hi))
                .collect::<Result<_, _>>()?
        }
        IntOp::Relu => par_map(x.data(), |v| v.max(0)),
        IntOp::Clip { lo, hi } => par_map(x.data(), |v| v.max(*lo).min(*hi)),
        IntOp::MaxPool | IntOp::AvgPool { .. } => {
            let (Op::MaxPool(p) | Op::AvgPool(p)) = op else {
                return Err(EngineError::Internal("pool op without its window".into()));
            };
            let g = pool_geometry(p, x.shape(), out_shape);
            let pout = g.oh * g.ow;
            let mut out = vec![0i64; n_out];
            match q {
                IntOp::MaxPool => {
                    pool_planes(x.data(), &g, i64::MIN, i64::max, |a, _, _| a, &mut out);
                }
                IntOp::AvgPool { mult, shift } => {
                    // Sums in i128: no window of i64 values leaves it.
                    let mut sums = vec![0i128; n_out];
                    let add = |a: i128, v: i64| a + i128::from(v);
                    pool_planes(x.data(), &g, 0i128, add, |a, _, _| a, &mut sums);
                    for (i, (o, s)) in out.iter_mut().zip(&sums).enumerate() {
                        let m = mult.get(i % pout.max(1)).copied().unwrap_or(1);
                        let v = rq(*s, m, *shift).ok_or_else(|| overflow("a pooling sum"))?;
                        *o = to_i64(v, "a pooled value")?;
                    }
                }
                _ => {}
            }
            out
        }
        IntOp::GlobalAvgPool { mult, shift } => {
            let hw =
                x.shape().get(2).copied().unwrap_or(1) * x.shape().get(3).copied().unwrap_or(1);
            x.data()
                .chunks(hw.max(1))
                .map(|c| {
                    let s: i128 = c.iter().map(|&v| i128::from(v)).sum();
                    let v = rq(s, *mult, *shift).ok_or_else(|| overflow("a pooling sum"))?;
                    to_i64(v, "a pooled value")
                })
                .collect::<Result<_, _>>()?
        }
        IntOp::Pass => x.data().to_vec(),
        IntOp::Move => match op {
            Op::Transpose { perm } => transpose(x, perm)?.into_parts().1,
            Op::Slice { axis, start, end } => slice_axis(x, *axis, *start, *end)?.into_parts().1,
            other => {
                return Err(EngineError::Internal(format!(
                    "{} does not move integers",
                    other.kind()
                )));
            }
        },
        IntOp::Table { first, table } => x
            .data()
            .iter()
            .map(|&v| {
                usize::try_from(v - first)
                    .ok()
                    .and_then(|i| table.get(i).copied())
                    .ok_or_else(|| {
                        EngineError::Internal(format!("{v} is outside the table's interval"))
                    })
            })
            .collect::<Result<_, _>>()?,
        IntOp::Lrn { s_x, s_y, lo, hi } => {
            let Op::Lrn {
                size,
                alpha,
                beta,
                bias,
            } = op
            else {
                return Err(EngineError::Internal("lrn without its parameters".into()));
            };
            lrn_int(x, *size, [*alpha, *beta, *bias], [*s_x, *s_y], [*lo, *hi])?
        }
        IntOp::Requant {
            mult,
            shift,
            lo,
            hi,
        } => rq_map(x.data(), *mult, *shift, *lo, *hi)?,
        IntOp::Concat { parts, lo, hi } => {
            let Op::Concat { axis } = op else {
                return Err(EngineError::Internal("concat without its axis".into()));
            };
            if parts.len() != ins.len() {
                return Err(EngineError::Internal(
                    "one requantization per concatenated input".into(),
                ));
            }
            let scaled = ins
                .iter()
                .zip(parts)
                .map(|(t, &(m, n))| {
                    let d = rq_map(t.data(), m, n, *lo, *hi)?;
                    Ok(Tensor::new(t.shape().to_vec(), d)?)
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            let refs: Vec<&Tensor<i64>> = scaled.iter().collect();
            concat(&refs, *axis)?.into_parts().1
        }
    };
    Ok(Tensor::new(out_shape.to_vec(), y)?)
}

impl ValueQuant {
    /// The real value of integer `q`.
    pub fn real(&self, q: i64) -> f64 {
        q as f64 * self.scale
    }
}
