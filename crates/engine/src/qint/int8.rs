//! Conv and dense layers of v2 by the exact 8-bit GEMM ([`crate::gemm_i8`]) where a layer
//! allows it: every weight fits i8, the input's proven interval `[lo, hi]` holds 0 and spans at
//! most 256 integers (so `x − lo` is a u8 and a padded 0 is `−lo`), and no sum leaves i32. Then
//! `Σ w·x = Σ w·(x − lo) + lo·Σ w` exactly, and the requantization reads the i32 sums
//! directly; other layers take the general path ([`crate::quant::accumulate`]). The integers
//! are the same either way (`tests/qint.rs` runs both against the oracle).
//!
//! Depthwise convolutions (one input and one output channel per group) take a direct loop
//! instead ([`depthwise`]): a GEMM of one row per group costs more than its few MACs.

use super::ops::requantize_rows;
use super::{IntLinear, ValueQuant};
use crate::EngineError;
use crate::gemm_i8::{Kernel, PackedA, fits_i32};
use crate::window::{conv_geometry, depthwise_plane, im2col_fill};
use rayon::prelude::*;
use tessera_model::ir::Op;
use tessera_model::tensor::Tensor;

/// Rows of `len` elements per parallel task: enough work per task that small layers do not
/// pay more in thread wake-ups than they gain.
pub(super) fn min_rows(len: usize) -> usize {
    ((1 << 14) / len.max(1)).max(1)
}

/// Output channels per group below which the per-group GEMM costs more than it saves
/// (depthwise convolutions take the general path).
const MIN_ROWS: usize = 8;

/// A layer's weights packed for the 8-bit GEMM: one packed matrix per group, Σw per output
/// channel, and the largest |w|.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Weights8 {
    groups: Vec<PackedA>,
    sums: Vec<i64>,
    amax: u32,
}

/// Packs `w` (`rows` output channels in `groups` groups) when every weight fits i8 and the
/// groups are wide enough to gain from the GEMM.
pub(super) fn weights_i8(w: &[i64], rows: usize, groups: usize) -> Option<Weights8> {
    let w8 = w
        .iter()
        .map(|&v| i8::try_from(v).ok())
        .collect::<Option<Vec<i8>>>()?;
    let (groups, rows) = (groups.max(1), rows.max(1));
    let (k, per) = (w.len() / rows, rows / groups);
    if per < MIN_ROWS {
        return None;
    }
    let kernel = Kernel::best();
    Some(Weights8 {
        groups: w8
            .chunks(per * k.max(1))
            .map(|g| PackedA::new(kernel, g, per, k))
            .collect(),
        sums: w.chunks(k.max(1)).map(|r| r.iter().sum()).collect(),
        amax: w8
            .iter()
            .map(|v| u32::from(v.unsigned_abs()))
            .max()
            .unwrap_or(0),
    })
}

/// The layer's output, `clamp(rq(Σ w·x + b_c; m_c, n), lo, hi)`, or `None` when it does not
/// meet the 8-bit conditions (module docs).
pub(super) fn linear_u8(
    op: &Op,
    l: &IntLinear,
    xq: ValueQuant,
    x: &Tensor<i64>,
    out_shape: &[usize],
) -> Option<Result<Vec<i64>, EngineError>> {
    let w8 = l.w8.as_ref()?;
    let lo = xq.lo;
    if lo > 0 || xq.hi < 0 || xq.hi - lo > 255 {
        return None;
    }
    let n_out: usize = out_shape.iter().product();
    let mut y = vec![0i64; n_out];
    // Scratch buffers kept by the thread between layers and runs.
    crate::with_scratch(&SCRATCH, |Scratch { xu, col, sums }| {
        layer_u8(op, l, w8, lo, x, out_shape, &mut y, xu, col, sums)
    })?
    .map(|()| y)
    .into()
}

/// Buffers one thread reuses across layers: the offset input, its im2col and the i32 sums.
#[derive(Default)]
struct Scratch {
    xu: Vec<u8>,
    col: Vec<u8>,
    sums: Vec<i32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// [`linear_u8`]'s body over the thread's scratch buffers; `None` when the layer does not
/// meet the 8-bit conditions after all.
#[allow(clippy::too_many_arguments)] // the layer, its operands and the three scratch buffers
fn layer_u8(
    op: &Op,
    l: &IntLinear,
    w8: &Weights8,
    lo: i64,
    x: &Tensor<i64>,
    out_shape: &[usize],
    y: &mut [i64],
    xu: &mut Vec<u8>,
    col: &mut Vec<u8>,
    sums: &mut Vec<i32>,
) -> Option<Result<(), EngineError>> {
    // In [0, 255]: run_int checked x against [lo, hi].
    let off = |v: i64| (v - lo) as u8;
    match op {
        Op::Conv(c) => {
            let (nb, ci) = (*x.shape().first()?, *x.shape().get(1)?);
            let co = *out_shape.get(1)?;
            let g = conv_geometry(c, x.shape(), out_shape);
            let (cig, cog) = (ci / c.groups, co / c.groups);
            let kk = cig * g.k[0] * g.k[1];
            if !fits_i32(kk, w8.amax) || w8.groups.len() != c.groups {
                return None;
            }
            let npos = g.oh * g.ow;
            xu.clear();
            xu.resize(x.len(), 0);
            xu.par_chunks_mut(1 << 14)
                .zip(x.data().par_chunks(1 << 14))
                .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(u, &v)| *u = off(v)));
            sums.clear();
            sums.resize(cog * npos, 0i32);
            for b in 0..nb {
                for (gr, pa) in w8.groups.iter().enumerate() {
                    let xin =
                        &xu[(b * ci + gr * cig) * g.h * g.w..(b * ci + (gr + 1) * cig) * g.h * g.w];
                    let colv: &[u8] = if g.is_pointwise() {
                        xin
                    } else {
                        im2col_fill(xin, cig, &g, col, off(0));
                        col
                    };
                    pa.gemm(npos, colv, sums);
                    let first = gr * cog;
                    let dst = &mut y[(b * co + first) * npos..(b * co + first + cog) * npos];
                    if let Err(e) = requantize(sums, l, lo, first, npos, dst) {
                        return Some(Err(e));
                    }
                }
            }
        }
        Op::Dense(_) => {
            let (nb, k) = (*x.shape().first()?, *x.shape().get(1)?);
            let m = *out_shape.get(1)?;
            let pa = w8.groups.first()?;
            if !fits_i32(k, w8.amax) || pa.rows() != m {
                return None;
            }
            // B = xᵀ (k × batch); the sums come out m × batch.
            let mut xt = vec![0u8; k * nb];
            for (j, row) in x.data().chunks(k.max(1)).enumerate() {
                for (p, &v) in row.iter().enumerate() {
                    xt[p * nb + j] = off(v);
                }
            }
            sums.clear();
            sums.resize(m * nb, 0i32);
            pa.gemm(nb, &xt, sums);
            let mut t = vec![0i64; m * nb];
            if let Err(e) = requantize(sums, l, lo, 0, nb, &mut t) {
                return Some(Err(e));
            }
            for (r, row) in t.chunks(nb.max(1)).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    y[j * m + r] = v;
                }
            }
        }
        _ => return None,
    }
    Some(Ok(()))
}

/// `dst[r][j] = clamp(rq(sums[r][j] + lo·Σw_c + b_c; m_c, n), lo, hi)` for channels
/// `c = first + r` ([`super::ops::requantize_rows`]; the sums are i32).
fn requantize(
    sums: &[i32],
    l: &IntLinear,
    lo: i64,
    first: usize,
    npos: usize,
    dst: &mut [i64],
) -> Result<(), EngineError> {
    let w8 =
        l.w8.as_ref()
            .ok_or_else(|| EngineError::Internal("no 8-bit weights".into()))?;
    requantize_rows(sums, dst, npos, l, 1u128 << 31, |r| {
        let c = first + r;
        let corr = i128::from(lo) * i128::from(w8.sums.get(c).copied().unwrap_or(0))
            + i128::from(l.b.get(c).copied().unwrap_or(0));
        (c, corr)
    })
}

/// A depthwise convolution's output, `clamp(rq(Σ w·x + b_c; m_c, n), lo, hi)`, by a direct
/// loop per channel (in parallel) in i64, or `None` when the layer is not depthwise or its
/// sums could leave i64 (from Σ|w|, the input's proven interval and the bias).
pub(super) fn depthwise(
    op: &Op,
    l: &IntLinear,
    xq: ValueQuant,
    x: &Tensor<i64>,
    out_shape: &[usize],
) -> Option<Result<Vec<i64>, EngineError>> {
    let Op::Conv(c) = op else { return None };
    let (nb, ci) = (*x.shape().first()?, *x.shape().get(1)?);
    let co = *out_shape.get(1)?;
    if c.groups != ci || co != ci {
        return None;
    }
    let reach = l.row_abs.iter().copied().max().unwrap_or(0)
        * i128::from(xq.max_abs().min(u128::from(u64::MAX)) as u64)
        + l.b.iter().map(|v| i128::from(*v).abs()).max().unwrap_or(0);
    let top = l
        .mult
        .iter()
        .map(|m| i128::from(*m).abs())
        .max()
        .unwrap_or(0);
    if l.shift >= 62 || reach.checked_mul(top)? + (1i128 << l.shift) >= 1i128 << 62 {
        return None;
    }
    let g = conv_geometry(c, x.shape(), out_shape);
    let (kh, kw) = (g.k[0], g.k[1]);
    let npos = g.oh * g.ow;
    let half = if l.shift == 0 {
        0
    } else {
        1i64 << (l.shift - 1)
    };
    let mut y = vec![0i64; nb * co * npos];
    y.par_chunks_mut(npos.max(1))
        .zip(x.data().par_chunks((g.h * g.w).max(1)))
        .with_min_len(min_rows(g.h * g.w * kh * kw))
        .enumerate()
        .for_each(|(plane, (out, xc))| {
            let ch = plane % co;
            let w = &l.w[ch * kh * kw..(ch + 1) * kh * kw];
            let (b, m) = (
                l.b.get(ch).copied().unwrap_or(0),
                l.mult.get(ch).copied().unwrap_or(1),
            );
            depthwise_plane(xc, w, b, &g, out);
            for a in out.iter_mut() {
                *a = ((*a * m + half) >> l.shift).clamp(l.lo, l.hi);
            }
        });
    Some(Ok(y))
}
