//! One evaluator per op of the integer semantics v2 ([`eval`] dispatches on the lowered
//! [`IntOp`]); each follows the rule of its op in the module docs of [`super`], and the i128
//! oracle of `tests/qint.rs` checks each of them.

use super::run::{overflow, rq, rq_clamp, to_i64};
use super::{IntLinear, IntOp, ValueQuant};
use crate::EngineError;
use crate::quant::accumulate;
use crate::window::{pool_geometry, pool_planes};
use rayon::prelude::*;
use tessera_model::ir::Op;
use tessera_model::tensor::{
    Tensor, broadcast_shapes, broadcast_zip, concat, slice_axis, transpose,
};

fn first<'a>(ins: &[&'a Tensor<i64>]) -> Result<&'a Tensor<i64>, EngineError> {
    ins.first()
        .copied()
        .ok_or_else(|| EngineError::Internal("an op without input".into()))
}

fn missing(what: &str) -> EngineError {
    EngineError::Internal(format!("{what} without its graph op's parameters"))
}

/// Node `op`, lowered to `q`, on its inputs (`xq`: the first input's scale and interval).
pub(super) fn eval(
    op: &Op,
    q: &IntOp,
    ins: &[&Tensor<i64>],
    xq: Option<ValueQuant>,
    out_shape: &[usize],
) -> Result<Tensor<i64>, EngineError> {
    let x = first(ins)?;
    let y: Vec<i64> = match q {
        IntOp::Linear(l) => linear(op, l, x, xq, out_shape)?,
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
            add_act(x, b, [*ma, *mb], *shift, [*lo, *hi])?
        }
        IntOp::AddConst { c, neg_x } => match op {
            Op::Binary {
                constant: Some(ct), ..
            } => add_const(x, ct.shape(), c, *neg_x, out_shape)?,
            _ => return Err(missing("add-const")),
        },
        IntOp::MulConst {
            mult,
            add,
            shift,
            lo,
            hi,
        } => match op {
            Op::Binary {
                constant: Some(ct), ..
            } => mul_const(x, ct.shape(), mult, add, *shift, [*lo, *hi], out_shape)?,
            _ => return Err(missing("mul-const")),
        },
        IntOp::Relu => par_map(x.data(), |v| v.max(0)),
        IntOp::Clip { lo, hi } => par_map(x.data(), |v| v.max(*lo).min(*hi)),
        IntOp::MaxPool | IntOp::AvgPool { .. } => match op {
            Op::MaxPool(p) | Op::AvgPool(p) => pool(x, p, q, out_shape)?,
            _ => return Err(missing("a pool")),
        },
        IntOp::GlobalAvgPool { mult, shift } => global_avg_pool(x, *mult, *shift)?,
        IntOp::Pass => x.data().to_vec(),
        IntOp::Move => match op {
            Op::Transpose { perm } => transpose(x, perm)?.into_parts().1,
            Op::Slice { axis, start, end } => slice_axis(x, *axis, *start, *end)?.into_parts().1,
            _ => return Err(missing("a move")),
        },
        IntOp::Table { first, table } => lookup(x, *first, table)?,
        IntOp::Lrn { s_x, s_y, lo, hi } => match op {
            Op::Lrn {
                size,
                alpha,
                beta,
                bias,
            } => lrn_int(x, *size, [*alpha, *beta, *bias], [*s_x, *s_y], [*lo, *hi])?,
            _ => return Err(missing("lrn")),
        },
        IntOp::Requant {
            mult,
            shift,
            lo,
            hi,
        } => rq_map(x.data(), *mult, *shift, *lo, *hi)?,
        IntOp::Concat { parts, lo, hi } => match op {
            Op::Concat { axis } => concat_requantized(ins, parts, [*lo, *hi], *axis)?,
            _ => return Err(missing("concat")),
        },
    };
    Ok(Tensor::new(out_shape.to_vec(), y)?)
}

/// Conv or Dense: the 8-bit GEMM or the depthwise loop where the layer allows, else the
/// general accumulation; then `clamp(rq(acc + b_c; m_c, n), lo, hi)`.
fn linear(
    op: &Op,
    l: &IntLinear,
    x: &Tensor<i64>,
    xq: Option<ValueQuant>,
    out_shape: &[usize],
) -> Result<Vec<i64>, EngineError> {
    let fast = xq.and_then(|xq| {
        super::int8::linear_u8(op, l, xq, x, out_shape)
            .or_else(|| super::int8::depthwise(op, l, xq, x, out_shape))
    });
    if let Some(y) = fast {
        return y;
    }
    let rmax = l.row_abs.iter().copied().max().unwrap_or(0);
    let bmax = l.b.iter().map(|&v| i128::from(v).abs()).max().unwrap_or(0);
    let acc = accumulate(op, &l.w, &l.wf, rmax, bmax, x, out_shape)?;
    let n_out: usize = out_shape.iter().product();
    let rows = out_shape.get(1).copied().unwrap_or(1).max(1);
    let npos = (n_out / x.shape().first().copied().unwrap_or(1).max(1) / rows).max(1);
    requantize_planes(&acc, l, rows, npos)
}

/// Conv or Dense from accumulators computed elsewhere (bias included, `[N, C, …]` order):
/// `clamp(rq(acc; m_c, n), lo, hi)` per output channel `c` — the requantization of [`linear`]
/// without its own accumulation (the `lhe` scheme's server computes `Σ w·x + b` on ciphertexts).
pub(super) fn requantize_accumulators(
    l: &IntLinear,
    acc: &Tensor<i64>,
    out_shape: &[usize],
) -> Result<Vec<i64>, EngineError> {
    if acc.shape() != out_shape {
        return Err(EngineError::Input(format!(
            "accumulators of shape {:?} for a layer whose output is {out_shape:?}",
            acc.shape()
        )));
    }
    let n_out: usize = out_shape.iter().product();
    let rows = out_shape.get(1).copied().unwrap_or(1).max(1);
    let npos = (n_out / out_shape.first().copied().unwrap_or(1).max(1) / rows).max(1);
    let mut out = vec![0i64; n_out];
    let amax = acc
        .data()
        .iter()
        .map(|v| v.unsigned_abs())
        .max()
        .unwrap_or(0);
    requantize_rows(acc.data(), &mut out, npos, l, u128::from(amax), |p| {
        (p % rows, 0)
    })?;
    Ok(out)
}

/// `clamp(rq(a·ma + b·mb; 1, n), lo, hi)` with broadcasting; in i64 and in parallel for a
/// residual connection (same shapes) where `|a·ma| + |b·mb| + 2^(n−1)` provably fits.
fn add_act(
    x: &Tensor<i64>,
    b: &Tensor<i64>,
    [ma, mb]: [i64; 2],
    shift: u32,
    [lo, hi]: [i64; 2],
) -> Result<Vec<i64>, EngineError> {
    let add = |p: i64, r: i64| {
        let v = i128::from(p) * i128::from(ma) + i128::from(r) * i128::from(mb);
        rq_clamp(v, 1, shift, lo, hi)
    };
    let reach = |t: &Tensor<i64>, m: i64| {
        u128::from(t.data().iter().map(|v| v.unsigned_abs()).max().unwrap_or(0))
            * u128::from(m.unsigned_abs())
    };
    let small = reach(x, ma) + reach(b, mb) + (1u128 << shift.saturating_sub(1).min(100))
        < (1u128 << 62)
        && shift < 62;
    if x.shape() == b.shape() && small {
        let h = if shift == 0 { 0 } else { 1i64 << (shift - 1) };
        let mut out = vec![0i64; x.len()];
        out.par_chunks_mut(PAR_CHUNK)
            .zip(
                x.data()
                    .par_chunks(PAR_CHUNK)
                    .zip(b.data().par_chunks(PAR_CHUNK)),
            )
            .for_each(|(o, (p, r))| {
                for (y, (&p, &r)) in o.iter_mut().zip(p.iter().zip(r)) {
                    *y = ((p * ma + r * mb + h) >> shift).clamp(lo, hi);
                }
            });
        Ok(out)
    } else {
        let s = broadcast_shapes(x.shape(), b.shape())?;
        broadcast_zip((x.data(), x.shape()), (b.data(), b.shape()), &s, add)
    }
}

/// `c[j] ± x` or `x + c[j]` (broadcast), no saturation.
fn add_const(
    x: &Tensor<i64>,
    c_shape: &[usize],
    c: &[i64],
    neg_x: bool,
    out_shape: &[usize],
) -> Result<Vec<i64>, EngineError> {
    broadcast_zip((x.data(), x.shape()), (c, c_shape), out_shape, |a, k| {
        let (a, k) = (i128::from(a), i128::from(k));
        to_i64(if neg_x { k - a } else { k + a }, "an added constant")
    })
}

/// `clamp(rq(x·m[j], n), lo, hi)` (broadcast).
fn mul_const(
    x: &Tensor<i64>,
    c_shape: &[usize],
    mult: &[i64],
    add: &[i64],
    shift: u32,
    [lo, hi]: [i64; 2],
    out_shape: &[usize],
) -> Result<Vec<i64>, EngineError> {
    if add.is_empty() {
        return broadcast_zip((x.data(), x.shape()), (mult, c_shape), out_shape, |v, m| {
            rq_clamp(i128::from(v), m, shift, lo, hi)
        });
    }
    if add.len() != mult.len() {
        return Err(EngineError::Internal(
            "a fused constant per multiplier".into(),
        ));
    }
    let pairs: Vec<(i64, i64)> = mult.iter().copied().zip(add.iter().copied()).collect();
    broadcast_zip(
        (x.data(), x.shape()),
        (&pairs, c_shape),
        out_shape,
        |v, (m, a)| {
            let v = i128::from(v) * i128::from(m) + i128::from(a);
            rq_clamp(v, 1, shift, lo, hi)
        },
    )
}

/// Max pooling (the maximum over in-range positions) or average pooling (the window sum in
/// i128, then `rq(sum; m_p, n)` per output position).
fn pool(
    x: &Tensor<i64>,
    p: &tessera_model::ir::Pool,
    q: &IntOp,
    out_shape: &[usize],
) -> Result<Vec<i64>, EngineError> {
    let g = pool_geometry(p, x.shape(), out_shape);
    let n_out: usize = out_shape.iter().product();
    let pout = g.oh * g.ow;
    let mut out = vec![0i64; n_out];
    match q {
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
        _ => pool_planes(x.data(), &g, i64::MIN, i64::max, |a, _, _| a, &mut out),
    }
    Ok(out)
}

/// The plane sum in i128, then `rq(sum; mult, shift)`.
fn global_avg_pool(x: &Tensor<i64>, mult: i64, shift: u32) -> Result<Vec<i64>, EngineError> {
    let hw = x.shape().get(2).copied().unwrap_or(1) * x.shape().get(3).copied().unwrap_or(1);
    x.data()
        .chunks(hw.max(1))
        .map(|c| {
            let s: i128 = c.iter().map(|&v| i128::from(v)).sum();
            let v = rq(s, mult, shift).ok_or_else(|| overflow("a pooling sum"))?;
            to_i64(v, "a pooled value")
        })
        .collect()
}

/// `table[x − first]` (Sigmoid, Tanh).
fn lookup(x: &Tensor<i64>, first: i64, table: &[i64]) -> Result<Vec<i64>, EngineError> {
    x.data()
        .iter()
        .map(|&v| {
            usize::try_from(v - first)
                .ok()
                .and_then(|i| table.get(i).copied())
                .ok_or_else(|| {
                    EngineError::Internal(format!("{v} is outside the table's interval"))
                })
        })
        .collect()
}

/// Each input requantized to the output's scale and saturated, then concatenated.
fn concat_requantized(
    ins: &[&Tensor<i64>],
    parts: &[(i64, u32)],
    [lo, hi]: [i64; 2],
    axis: usize,
) -> Result<Vec<i64>, EngineError> {
    if parts.len() != ins.len() {
        return Err(EngineError::Internal(
            "one requantization per concatenated input".into(),
        ));
    }
    let scaled = ins
        .iter()
        .zip(parts)
        .map(|(t, &(m, n))| {
            Ok(Tensor::new(
                t.shape().to_vec(),
                rq_map(t.data(), m, n, lo, hi)?,
            )?)
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    let refs: Vec<&Tensor<i64>> = scaled.iter().collect();
    Ok(concat(&refs, axis)?.into_parts().1)
}

/// `clamp(rq(acc + b_c; m_c, n), lo, hi)` over output planes of `npos` positions (channel
/// `c` = plane mod `rows`), in parallel ([`requantize_rows`]).
fn requantize_planes(
    acc: &[i64],
    l: &IntLinear,
    rows: usize,
    npos: usize,
) -> Result<Vec<i64>, EngineError> {
    let mut out = vec![0i64; acc.len()];
    let amax = acc.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    requantize_rows(acc, &mut out, npos, l, u128::from(amax), |p| {
        let c = p % rows.max(1);
        (c, i128::from(l.b.get(c).copied().unwrap_or(0)))
    })?;
    Ok(out)
}

/// `dst[p][j] = clamp(rq(src[p][j] + corr; m_c, n), lo, hi)` over planes `p` of `npos` values,
/// where `chan(p)` gives the plane's channel `c` and its correction (the bias, and for the 8-bit
/// GEMM `lo·Σw`), in parallel. `amax` bounds |src|. Where `amax + |corr|` and
/// `(amax + |corr|)·|m_c| + 2^(n−1)` provably fit i64 the arithmetic runs in i64, else in i128:
/// the same integers either way.
pub(super) fn requantize_rows<T: Copy + Into<i64> + Sync>(
    src: &[T],
    dst: &mut [i64],
    npos: usize,
    l: &IntLinear,
    amax: u128,
    chan: impl Fn(usize) -> (usize, i128) + Sync,
) -> Result<(), EngineError> {
    let (n, lo, hi) = (l.shift, l.lo, l.hi);
    let limit = 1u128 << 62;
    dst.par_chunks_mut(npos.max(1))
        .zip(src.par_chunks(npos.max(1)))
        .with_min_len(super::int8::min_rows(npos))
        .enumerate()
        .try_for_each(|(p, (d, s))| {
            let (c, corr) = chan(p);
            let m = l.mult.get(c).copied().unwrap_or(1);
            let half = if n == 0 { 0 } else { 1u128 << (n - 1).min(100) };
            let reach = amax.saturating_add(corr.unsigned_abs());
            let small = n < 62
                && reach < limit
                && reach.saturating_mul(u128::from(m.unsigned_abs())) + half < limit;
            match i64::try_from(corr) {
                Ok(k) if small => rq_small(d, s, [k, m, half as i64], n, [lo, hi]),
                _ => {
                    for (o, &v) in d.iter_mut().zip(s) {
                        *o = rq_clamp(i128::from(v.into()) + corr, m, n, lo, hi)?;
                    }
                }
            }
            Ok(())
        })
}

/// `d[i] = clamp(((s[i] + k)·m + h) >> n, lo, hi)` where every intermediate provably fits i64
/// ([`requantize_rows`]' check). The same loop is compiled a second time for AVX-512 (F, DQ,
/// VL: 64-bit lane multiplies), picked at run time; integer arithmetic, so both give the same
/// values.
fn rq_small<T: Copy + Into<i64>>(
    d: &mut [i64],
    s: &[T],
    [k, m, h]: [i64; 3],
    n: u32,
    [lo, hi]: [i64; 2],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { rq_small_avx512(d, s, [k, m, h], n, [lo, hi]) };
            return;
        }
    }
    rq_small_loop(d, s, [k, m, h], n, [lo, hi]);
}

#[inline(always)]
fn rq_small_loop<T: Copy + Into<i64>>(
    d: &mut [i64],
    s: &[T],
    [k, m, h]: [i64; 3],
    n: u32,
    [lo, hi]: [i64; 2],
) {
    for (o, &v) in d.iter_mut().zip(s) {
        *o = (((v.into() + k) * m + h) >> n).clamp(lo, hi);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn rq_small_avx512<T: Copy + Into<i64>>(
    d: &mut [i64],
    s: &[T],
    kmh: [i64; 3],
    n: u32,
    bounds: [i64; 2],
) {
    rq_small_loop(d, s, kmh, n, bounds);
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
    // (An empty tensor has nothing to normalise; chunks of 0 would panic.)
    if d.is_empty() {
        return Ok(out);
    }
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
pub(super) fn outside(y: &[i64], q: &ValueQuant) -> Option<i64> {
    if y.len() <= PAR_CHUNK {
        return y.iter().copied().find(|&v| v < q.lo || v > q.hi);
    }
    y.par_chunks(PAR_CHUNK)
        .find_map_first(|c| c.iter().copied().find(|&v| v < q.lo || v > q.hi))
}

#[cfg(test)]
mod tests {
    use super::{rq_small, rq_small_loop};

    /// The requantization loop the CPU runs (AVX-512 where it has it) against the portable
    /// loop and the rule itself, on sums of both signs, ties, and values past both bounds.
    #[test]
    fn requantization_paths_agree() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let sums: Vec<i32> = (0..4099)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match i % 7 {
                    0 => 0,
                    1 => -(1 << 20),
                    2 => 1 << 20,
                    _ => (s % (1 << 22)) as i32 - (1 << 21),
                }
            })
            .collect();
        for (k, m, n, lo, hi) in [
            (0, 1, 0, -128, 127),
            (37, 5, 3, 0, 255),
            (-1000, -7, 9, -127, 127),
            (5, 3, 1, i64::MIN, i64::MAX),
        ] {
            let h = if n == 0 { 0 } else { 1i64 << (n - 1) };
            let mut got = vec![0i64; sums.len()];
            rq_small(&mut got, &sums, [k, m, h], n, [lo, hi]);
            let mut portable = vec![0i64; sums.len()];
            rq_small_loop(&mut portable, &sums, [k, m, h], n, [lo, hi]);
            assert_eq!(got, portable);
            for (&v, &g) in sums.iter().zip(&got) {
                let want = ((i128::from(v) + i128::from(k)) * i128::from(m) + i128::from(h))
                    .div_euclid(1i128 << n);
                assert_eq!(i128::from(g), want.clamp(i128::from(lo), i128::from(hi)));
            }
        }
    }
}
