//! Linear-layer kernels for both sides: convolution forward, input gradient and weight gradient
//! (im2col + `sgemm`, samples in parallel with rayon, GEMMs split further across cores), dense
//! forward and backward, and the pooling/ReLU backward passes the trainer needs.

use rayon::prelude::*;
use tessera_engine::gemm::{View, sgemm};
use tessera_engine::window::{Geometry, im2col};

/// Shape of one convolution: input `[c, h, w]` → output `[co, oh, ow]` per sample, groups = 1.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub co: usize,
    /// Window geometry.
    pub g: Geometry,
}

impl ConvShape {
    /// `kh·kw`.
    pub fn kk(&self) -> usize {
        self.g.k[0] * self.g.k[1]
    }
    /// Input plane size `h·w`.
    pub fn hw(&self) -> usize {
        self.g.h * self.g.w
    }
    /// Output plane size `oh·ow`.
    pub fn ohw(&self) -> usize {
        self.g.oh * self.g.ow
    }
    /// The same window over `c` other input channels.
    pub fn with_channels(&self, c: usize) -> Self {
        Self { c, ..*self }
    }
}

/// im2col of one sample into `col`, or the input itself for a pointwise window.
fn columns<'a>(x: &'a [f32], s: &ConvShape, col: &'a mut Vec<f32>) -> &'a [f32] {
    if s.g.is_pointwise() {
        x
    } else {
        im2col(x, s.c, &s.g, col);
        col
    }
}

/// `out[n] = W·im2col(x[n]) (+ bias)` for every sample; `w` is `co × c·kk`. `weight_of(n)`
/// may give each sample its own weight (the enclave's folded low-rank weights).
pub fn conv_forward<'w>(
    x: &[f32],
    n: usize,
    s: &ConvShape,
    weight_of: impl Fn(usize) -> &'w [f32] + Sync,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    conv_gemm(x, n, s, weight_of, bias, false, out);
}

/// `out[n] += W·im2col(x[n])` for every sample with one weight `w` (`co × c·kk`): the enclave
/// adds its low-rank part onto the worker's output in place.
pub fn conv_accumulate(x: &[f32], n: usize, s: &ConvShape, w: &[f32], out: &mut [f32]) {
    conv_gemm(x, n, s, |_| w, None, true, out);
}

/// The per-sample im2col + GEMM both of the above run: `out = W·cols (+ bias)`, or with
/// `accumulate` `out += W·cols`.
fn conv_gemm<'w>(
    x: &[f32],
    n: usize,
    s: &ConvShape,
    weight_of: impl Fn(usize) -> &'w [f32] + Sync,
    bias: Option<&[f32]>,
    accumulate: bool,
    out: &mut [f32],
) {
    let (xin, xo) = (s.c * s.hw(), s.co * s.ohw());
    let kk = s.c * s.kk();
    let npos = s.ohw();
    out[..n * xo]
        .par_chunks_mut(xo.max(1))
        .enumerate()
        .for_each_init(Vec::new, |col, (b, o)| {
            let cols = columns(&x[b * xin..(b + 1) * xin], s, col);
            let mut beta = if accumulate { 1.0 } else { 0.0 };
            if let (Some(bias), false) = (bias, accumulate) {
                for (row, &bv) in o.chunks_mut(npos.max(1)).zip(bias) {
                    row.fill(bv);
                }
                beta = 1.0;
            }
            sgemm(
                s.co,
                kk,
                npos,
                1.0,
                View::rows(weight_of(b), kk),
                View::rows(cols, npos),
                beta,
                o,
            );
        });
}

/// Scatter-add columns `[c·kh·kw, oh·ow]` back into an image `[c, h, w]` (the adjoint of im2col).
pub fn col2im_add(col: &[f32], c: usize, g: &Geometry, dx: &mut [f32]) {
    let (kh, kw) = (g.k[0], g.k[1]);
    let n = g.oh * g.ow;
    for ch in 0..c {
        let xc = &mut dx[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = ((ch * kh + ki) * kw + kj) * n;
                let src = &col[row..row + n];
                for oy in 0..g.oh {
                    let iy = (oy * g.s[0] + ki * g.d[0]) as isize - g.p[0] as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let drow = &mut xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for ox in 0..g.ow {
                        let ix = (ox * g.s[1] + kj * g.d[1]) as isize - g.p[1] as isize;
                        if ix >= 0 && (ix as usize) < g.w {
                            drow[ix as usize] += src[oy * g.ow + ox];
                        }
                    }
                }
            }
        }
    }
}

/// Input gradient: `dx[n] = col2im(Wᵀ·dy[n])`; `w` is `co × c·kk`.
pub fn conv_input_grad(dy: &[f32], n: usize, s: &ConvShape, w: &[f32], dx: &mut [f32]) {
    let (xin, xo) = (s.c * s.hw(), s.co * s.ohw());
    let kk = s.c * s.kk();
    let npos = s.ohw();
    dx[..n * xin]
        .par_chunks_mut(xin.max(1))
        .enumerate()
        .for_each_init(Vec::new, |dcol: &mut Vec<f32>, (b, d)| {
            let g = &dy[b * xo..(b + 1) * xo];
            if s.g.is_pointwise() {
                sgemm(
                    kk,
                    s.co,
                    npos,
                    1.0,
                    View::transposed(w, kk),
                    View::rows(g, npos),
                    0.0,
                    d,
                );
                return;
            }
            dcol.clear();
            dcol.resize(kk * npos, 0.0);
            sgemm(
                kk,
                s.co,
                npos,
                1.0,
                View::transposed(w, kk),
                View::rows(g, npos),
                0.0,
                dcol,
            );
            d.fill(0.0);
            col2im_add(dcol, s.c, &s.g, d);
        });
}

/// Per-sample weight gradient `dW[n] = dy[n]·im2col(x[n])ᵀ` (`co × c·kk`), combined over the
/// batch by `fold(acc, n, dW[n])` into per-thread accumulators of length `acc_len`, then summed.
pub fn conv_weight_grad_with(
    x: &[f32],
    dy: &[f32],
    n: usize,
    s: &ConvShape,
    acc_len: usize,
    fold: impl Fn(&mut [f32], usize, &[f32]) + Sync,
) -> Vec<f32> {
    let (xin, xo) = (s.c * s.hw(), s.co * s.ohw());
    let kk = s.c * s.kk();
    let npos = s.ohw();
    (0..n)
        .into_par_iter()
        .fold(
            || (vec![0f32; acc_len], Vec::new(), vec![0f32; s.co * kk]),
            |(mut acc, mut col, mut dw), b| {
                let cols = columns(&x[b * xin..(b + 1) * xin], s, &mut col);
                sgemm(
                    s.co,
                    npos,
                    kk,
                    1.0,
                    View::rows(&dy[b * xo..(b + 1) * xo], npos),
                    View::transposed(cols, npos),
                    0.0,
                    &mut dw,
                );
                fold(&mut acc, b, &dw);
                (acc, col, dw)
            },
        )
        .map(|(acc, _, _)| acc)
        .reduce(
            || vec![0f32; acc_len],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
}

/// Summed weight gradient `Σₙ dy[n]·im2col(x[n])ᵀ` (`co × c·kk`).
pub fn conv_weight_grad(x: &[f32], dy: &[f32], n: usize, s: &ConvShape) -> Vec<f32> {
    conv_weight_grad_with(x, dy, n, s, s.co * s.c * s.kk(), |acc, _, dw| {
        for (a, d) in acc.iter_mut().zip(dw) {
            *a += d;
        }
    })
}

/// Bias gradient of a conv: `Σ` of `dy` over samples and positions, per output channel.
pub fn conv_bias_grad(dy: &[f32], n: usize, co: usize, npos: usize) -> Vec<f32> {
    let mut db = vec![0f32; co];
    for b in 0..n {
        for (c, d) in db.iter_mut().enumerate() {
            let at = (b * co + c) * npos;
            *d += dy[at..at + npos].iter().sum::<f32>();
        }
    }
    db
}

/// Dense forward `y = x·Wᵀ (+ b)`: `x` is `n × k`, `w` is `m × k`.
pub fn dense_forward(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; n * m];
    if let Some(b) = bias {
        for row in out.chunks_mut(m.max(1)) {
            row.copy_from_slice(b);
        }
    }
    sgemm(
        n,
        k,
        m,
        1.0,
        View::rows(x, k),
        View::transposed(w, k),
        if bias.is_some() { 1.0 } else { 0.0 },
        &mut out,
    );
    out
}

/// Dense gradients: `(dW = dyᵀ·x, db = Σ dy, dx = dy·W when wanted)`.
pub fn dense_backward(
    x: &[f32],
    dy: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    want_dx: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let mut dw = vec![0f32; m * k];
    sgemm(
        m,
        n,
        k,
        1.0,
        View::transposed(dy, m),
        View::rows(x, k),
        0.0,
        &mut dw,
    );
    let mut db = vec![0f32; m];
    for row in dy.chunks(m.max(1)) {
        for (a, v) in db.iter_mut().zip(row) {
            *a += v;
        }
    }
    let dx = want_dx.then(|| {
        let mut dx = vec![0f32; n * k];
        sgemm(
            n,
            m,
            k,
            1.0,
            View::rows(dy, m),
            View::rows(w, k),
            0.0,
            &mut dx,
        );
        dx
    });
    (dw, db, dx)
}

/// Max-pool backward: each output's gradient goes to the first maximal valid input of its window.
pub fn maxpool_backward(x: &[f32], dy: &[f32], planes: usize, g: &Geometry) -> Vec<f32> {
    let (pin, pout) = (g.h * g.w, g.oh * g.ow);
    let mut dx = vec![0f32; planes * pin];
    dx.par_chunks_mut(pin.max(1))
        .enumerate()
        .for_each(|(pl, d)| {
            let xs = &x[pl * pin..(pl + 1) * pin];
            let gs = &dy[pl * pout..(pl + 1) * pout];
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut best: Option<(usize, f32)> = None;
                    for ki in 0..g.k[0] {
                        let iy = (oy * g.s[0] + ki * g.d[0]) as isize - g.p[0] as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        for kj in 0..g.k[1] {
                            let ix = (ox * g.s[1] + kj * g.d[1]) as isize - g.p[1] as isize;
                            if ix < 0 || ix >= g.w as isize {
                                continue;
                            }
                            let at = iy as usize * g.w + ix as usize;
                            if best.is_none_or(|(_, v)| xs[at] > v) {
                                best = Some((at, xs[at]));
                            }
                        }
                    }
                    if let Some((at, _)) = best {
                        d[at] += gs[oy * g.ow + ox];
                    }
                }
            }
        });
    dx
}
