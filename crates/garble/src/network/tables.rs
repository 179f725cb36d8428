//! The gather tables and weight matrices of the linear and pooling layers, shared by the
//! circuits of both integer semantics.

use tessera_engine::window::conv_geometry;
use tessera_engine::window::pool_geometry;

use super::{GarbleError, NONE, StepOp, block_diagonal, to_u32, unsupported, window_table};

/// The free label GEMM of a 2-D convolution over NCHW with integer `weights` in the weight
/// tensor's layout: an im2col gather table and the weight matrix (block-diagonal for grouped and
/// depthwise convolutions). Returns the step, the output positions per plane and C_out.
pub(super) fn conv_step(
    c: &tessera_model::ir::Conv,
    in_shape: &[usize],
    out_shape: &[usize],
    weights: Vec<i64>,
    name: &str,
) -> Result<(StepOp, usize, usize), GarbleError> {
    let ws = c.weight.shape();
    if in_shape.len() != 4 || out_shape.len() != 4 || ws.len() != 4 {
        return Err(unsupported(name, "a convolution that is not 2-D over NCHW"));
    }
    let geo = conv_geometry(c, in_shape, out_shape);
    let (images, ci, co) = (in_shape[0], in_shape[1], out_shape[1]);
    let groups = c.groups;
    if groups == 0
        || !ci.is_multiple_of(groups)
        || !co.is_multiple_of(groups)
        || ws[0] != co
        || ws[1] != ci / groups
    {
        return Err(unsupported(
            name,
            "weight shape does not match the channels and groups",
        ));
    }
    let plane = window_table(&geo, ci, name)?;
    // window_table is [window, ci·npos]; im2col wants [ci·window, npos].
    let (window, npos) = (geo.k[0] * geo.k[1], geo.oh * geo.ow);
    let kk = ci * window;
    let mut gather = vec![NONE; kk * npos];
    for (c_in, rows) in gather.chunks_exact_mut(window * npos).enumerate() {
        for (t, row) in rows.chunks_exact_mut(npos).enumerate() {
            let src = plane
                .get(t * ci * npos + c_in * npos..t * ci * npos + (c_in + 1) * npos)
                .ok_or(GarbleError::Internal("conv table"))?;
            row.copy_from_slice(src);
        }
    }
    // A grouped (or depthwise) convolution is the dense one whose weight matrix is
    // block-diagonal: output channel o reads only its group's input channels, every
    // other weight is zero. Exact, since zeros add nothing; the free label GEMM does
    // `groups` times the work of a per-group product.
    let weights = if groups == 1 {
        weights
    } else {
        block_diagonal(&weights, co, ci, groups, window, name)?
    };
    Ok((
        StepOp::Linear {
            weights,
            rows: co,
            kk,
            npos,
            images,
            in_image: ci * geo.h * geo.w,
            gather: Some(gather),
        },
        npos,
        co,
    ))
}

/// The candidate table of a max pool (`[window, out_len]`; a padded position takes the window's
/// first in-range one, since max is idempotent).
pub(super) fn max_pool_table(
    p: &tessera_model::ir::Pool,
    in_shape: &[usize],
    out_shape: &[usize],
    out_len: usize,
    name: &str,
) -> Result<(Vec<u32>, usize), GarbleError> {
    if in_shape.len() != 4 || out_shape.len() != 4 {
        return Err(unsupported(name, "pooling that is not 2-D over NCHW"));
    }
    let geo = pool_geometry(p, in_shape, out_shape);
    let window = geo.k[0] * geo.k[1];
    let mut idx = window_table(&geo, in_shape[0] * in_shape[1], name)?;
    for i in 0..out_len {
        let first = (0..window)
            .filter_map(|t| idx.get(t * out_len + i).copied())
            .find(|&v| v != NONE)
            .ok_or_else(|| unsupported(name, "a pooling window with no input"))?;
        for t in 0..window {
            if let Some(v) = idx.get_mut(t * out_len + i)
                && *v == NONE
            {
                *v = first;
            }
        }
    }
    Ok((idx, window))
}

/// The sum table of global average pooling over NCHW: `[H·W, N·C]`.
pub(super) fn global_pool_table(
    in_shape: &[usize],
    name: &str,
) -> Result<(Vec<u32>, usize), GarbleError> {
    if in_shape.len() != 4 {
        return Err(unsupported(name, "global pooling that is not over NCHW"));
    }
    let hw = in_shape[2] * in_shape[3];
    let planes = in_shape[0] * in_shape[1];
    let mut idx = vec![0u32; hw * planes];
    for t in 0..hw {
        for pl in 0..planes {
            if let Some(v) = idx.get_mut(t * planes + pl) {
                *v = to_u32(pl * hw + t, name)?;
            }
        }
    }
    Ok((idx, hw))
}
