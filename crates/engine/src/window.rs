//! Sliding-window helpers shared by the float and integer engines: im2col and pooling.

use rayon::prelude::*;
use tessera_model::ir::{Conv, Pool};

/// Geometry of a 2-D window over one NCHW image.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel (h, w).
    pub k: [usize; 2],
    /// Strides.
    pub s: [usize; 2],
    /// Pads (top, left, bottom, right).
    pub p: [usize; 4],
    /// Dilations.
    pub d: [usize; 2],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Geometry {
    /// For kernel column `kj`: the output columns `lo..hi` whose input column
    /// `ix = ox·s + kj·d − p` lies inside the row, and the input column of `lo`.
    pub fn valid_columns(&self, kj: usize) -> (usize, usize, usize) {
        let off = (kj * self.d[1]) as isize - self.p[1] as isize;
        let s1 = self.s[1] as isize;
        let lo = if off >= 0 { 0 } else { ((-off) + s1 - 1) / s1 } as usize;
        let hi = if (self.w as isize) <= off {
            0
        } else {
            (((self.w as isize - off) + s1 - 1) / s1).min(self.ow as isize) as usize
        };
        let first = (lo as isize * s1 + off).max(0) as usize;
        (lo, hi, first)
    }

    /// True when the window is a plain 1×1, stride-1, unpadded pass (im2col is the identity).
    pub fn is_pointwise(&self) -> bool {
        self.k == [1, 1] && self.s == [1, 1] && self.p == [0; 4]
    }
}

/// Unfold `cin` channels of one image (`x`: `cin·h·w`) into columns `[cin·kh·kw, oh·ow]`;
/// padded positions read `T::default()` (zero).
///
/// The buffer has `cin·kh·kw·oh·ow` elements, which a hostile model can make terabytes: the
/// import budget (`tessera_model::limits`) charges it to the node before any engine runs, and
/// a graph built in code should pass `tessera_model::limits::check_graph` first.
pub fn im2col<T: Copy + Default + Send + Sync>(
    x: &[T],
    cin: usize,
    g: &Geometry,
    out: &mut Vec<T>,
) {
    im2col_fill(x, cin, g, out, T::default());
}

/// [`im2col`] with padded positions set to `pad` (the value that stands for 0 when the
/// elements are offset, as in the 8-bit GEMM's `x − lo`).
pub fn im2col_fill<T: Copy + Default + Send + Sync>(
    x: &[T],
    cin: usize,
    g: &Geometry,
    out: &mut Vec<T>,
    pad: T,
) {
    let (kh, kw) = (g.k[0], g.k[1]);
    let n = g.oh * g.ow;
    // Only the length is set here (a reused buffer keeps its stale values): the tasks below
    // write every element, the padding included, so no sequential pass zeroes the buffer first.
    out.resize(cin * kh * kw * n, pad);
    if n == 0 || kh * kw == 0 {
        return;
    }
    // One task per input channel (its kh·kw rows), in parallel.
    out.par_chunks_mut(kh * kw * n)
        .with_min_len(((1 << 14) / (kh * kw * n)).max(1))
        .enumerate()
        .for_each(|(c, rows)| {
            let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for (r, dst) in rows.chunks_mut(n).enumerate() {
                let (ki, kj) = (r / kw, r % kw);
                let (ox_lo, ox_hi, first) = g.valid_columns(kj);
                for oy in 0..g.oh {
                    let iy = (oy * g.s[0] + ki * g.d[0]) as isize - g.p[0] as isize;
                    let row = &mut dst[oy * g.ow..(oy + 1) * g.ow];
                    if iy < 0 || iy >= g.h as isize || ox_lo >= ox_hi {
                        row.fill(pad);
                        continue;
                    }
                    row[..ox_lo].fill(pad);
                    row[ox_hi..].fill(pad);
                    let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let drow = &mut row[ox_lo..ox_hi];
                    if g.s[1] == 1 {
                        drow.copy_from_slice(&src[first..first + drow.len()]);
                    } else {
                        for (d, &v) in drow.iter_mut().zip(src[first..].iter().step_by(g.s[1])) {
                            *d = v;
                        }
                    }
                }
            }
        });
}

/// One plane of a depthwise convolution: `out = bias + Σ_taps w[tap]·x[tap]` over the in-range
/// taps, accumulated tap by tap over contiguous output rows (the compiler vectorizes the
/// stride-1 case). Shared by the float engine and v2's integer path.
pub fn depthwise_plane<T>(xc: &[T], w: &[T], bias: T, g: &Geometry, out: &mut [T])
where
    T: Copy + Default + PartialEq + std::ops::Mul<Output = T> + std::ops::AddAssign,
{
    let (kh, kw) = (g.k[0], g.k[1]);
    out.fill(bias);
    for ki in 0..kh {
        for kj in 0..kw {
            let wv = w[ki * kw + kj];
            let (ox_lo, ox_hi, first) = g.valid_columns(kj);
            if wv == T::default() || ox_lo >= ox_hi {
                continue;
            }
            for oy in 0..g.oh {
                let iy = (oy * g.s[0] + ki * g.d[0]) as isize - g.p[0] as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                let dst = &mut out[oy * g.ow + ox_lo..oy * g.ow + ox_hi];
                if g.s[1] == 1 {
                    for (a, &v) in dst.iter_mut().zip(&src[first..]) {
                        *a += wv * v;
                    }
                } else {
                    for (a, &v) in dst.iter_mut().zip(src[first..].iter().step_by(g.s[1])) {
                        *a += wv * v;
                    }
                }
            }
        }
    }
}

/// Pool one channel plane: for each output position, fold the valid input values with `step`,
/// then `finish(acc, valid_count, padded_count)`.
pub fn pool_plane<T: Copy, A: Copy, O>(
    x: &[T],
    g: &Geometry,
    init: A,
    step: impl Fn(A, T) -> A,
    finish: impl Fn(A, usize, usize) -> O,
    out: &mut [O],
) {
    // Per output column: the window columns inside the input (a range, as the window moves
    // right by whole steps) and how many lie inside the padded input; the same per row. The
    // window is then visited in the same order as a check per position would, without one.
    let span = |o: usize, axis: usize, len: usize, pad_end: usize| {
        let (k, s, d, p) = (g.k[axis], g.s[axis], g.d[axis], g.p[axis] as isize);
        let pos = |t: usize| (o * s + t * d) as isize - p;
        let mut inside = (0..k).filter(|&t| pos(t) >= 0 && (pos(t) as usize) < len);
        let (lo, hi) = match (inside.next(), inside.next_back()) {
            (Some(a), None) => (a, a + 1),
            (Some(a), Some(b)) => (a, b + 1),
            _ => (0, 0),
        };
        let padded = (0..k)
            .filter(|&t| pos(t) >= -p && pos(t) < (len + pad_end) as isize)
            .count();
        (lo, hi, padded)
    };
    let cols: Vec<(usize, usize, usize)> = (0..g.ow).map(|ox| span(ox, 1, g.w, g.p[3])).collect();
    for oy in 0..g.oh {
        let (ky0, ky1, py) = span(oy, 0, g.h, g.p[2]);
        for (ox, &(kx0, kx1, px)) in cols.iter().enumerate() {
            let mut acc = init;
            for ki in ky0..ky1 {
                let row = (oy * g.s[0] + ki * g.d[0]) - g.p[0];
                let base = row * g.w;
                for kj in kx0..kx1 {
                    let ix = (ox * g.s[1] + kj * g.d[1]) - g.p[1];
                    acc = step(acc, x[base + ix]);
                }
            }
            let valid = (ky1 - ky0) * (kx1 - kx0);
            out[oy * g.ow + ox] = finish(acc, valid, py * px);
        }
    }
}

/// [`pool_plane`] over every channel plane of `x` (planes of `g.h·g.w` values, each giving
/// `g.oh·g.ow` outputs in `out`), the planes in parallel: the pooling loop of every engine.
pub fn pool_planes<T, A, O>(
    x: &[T],
    g: &Geometry,
    init: A,
    step: impl Fn(A, T) -> A + Sync,
    finish: impl Fn(A, usize, usize) -> O + Sync,
    out: &mut [O],
) where
    T: Copy + Sync,
    A: Copy + Send + Sync,
    O: Send,
{
    let (pin, pout) = (g.h * g.w, g.oh * g.ow);
    out.par_chunks_mut(pout.max(1))
        .enumerate()
        .for_each(|(pl, o)| {
            if let Some(xs) = x.get(pl * pin..(pl + 1) * pin) {
                pool_plane(xs, g, init, &step, &finish, o);
            }
        });
}

/// Geometry of a pool over an input of `in_shape` (NCHW) producing `out_shape`.
pub fn pool_geometry(p: &Pool, in_shape: &[usize], out_shape: &[usize]) -> Geometry {
    Geometry {
        h: in_shape[2],
        w: in_shape[3],
        k: p.kernel,
        s: p.strides,
        p: p.pads,
        d: p.dilations,
        oh: out_shape[2],
        ow: out_shape[3],
    }
}

/// Geometry of a conv over `in_shape` producing `out_shape`.
pub fn conv_geometry(c: &Conv, in_shape: &[usize], out_shape: &[usize]) -> Geometry {
    let ws = c.weight.shape();
    Geometry {
        h: in_shape[2],
        w: in_shape[3],
        k: [ws[2], ws[3]],
        s: c.strides,
        p: c.pads,
        d: c.dilations,
        oh: out_shape[2],
        ow: out_shape[3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The unfolded matrix by its definition: row (c, ki, kj), column (oy, ox) holds
    /// x[c, oy·s + ki·d − p_top, ox·s + kj·d − p_left], or `pad` outside the image.
    fn unfold(x: &[i32], cin: usize, g: &Geometry, pad: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for c in 0..cin {
            for ki in 0..g.k[0] {
                for kj in 0..g.k[1] {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let iy = (oy * g.s[0] + ki * g.d[0]) as isize - g.p[0] as isize;
                            let ix = (ox * g.s[1] + kj * g.d[1]) as isize - g.p[1] as isize;
                            let inside =
                                (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix);
                            out.push(if inside {
                                x[c * g.h * g.w + iy as usize * g.w + ix as usize]
                            } else {
                                pad
                            });
                        }
                    }
                }
            }
        }
        out
    }

    proptest! {
        /// Every element is written, padding included: a reused buffer full of stale values
        /// (longer or shorter than needed) gives the same matrix as the definition.
        #[test]
        fn im2col_writes_every_element_of_a_reused_buffer(
            cin in 1usize..4, h in 1usize..9, w in 1usize..9, k in 1usize..4, s in 1usize..3,
            d in 1usize..3, p in 0usize..3, stale in 0usize..400,
        ) {
            let span = (k - 1) * d + 1;
            prop_assume!(h + 2 * p >= span && w + 2 * p >= span);
            let (oh, ow) = ((h + 2 * p - span) / s + 1, (w + 2 * p - span) / s + 1);
            let g = Geometry { h, w, k: [k, k], s: [s, s], p: [p; 4], d: [d, d], oh, ow };
            let x: Vec<i32> = (0..cin * h * w).map(|i| i as i32 + 1).collect();
            let mut out = vec![-7; stale];
            im2col_fill(&x, cin, &g, &mut out, -1);
            prop_assert_eq!(out, unfold(&x, cin, &g, -1));
        }
    }
}
