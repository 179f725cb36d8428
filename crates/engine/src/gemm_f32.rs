//! The float engine's convolution product, `C (m×n) = A (m×k) · B (k×n) + bias`, with A a
//! layer's weights (row-major, read in place) and B its unfolded input.
//!
//! Kernels: AVX-512 F (8 rows × 48 columns per micro-tile, 24 accumulators; and for a prepared
//! model's narrow products, weights packed once in blocks of 16 rows, [`PackedA`]), chosen at
//! run time ([`FKernel::best`]) for products of the shapes they run faster ([`WIDE`],
//! [`NARROW`]), and a portable path, the blocked `matrixmultiply` product of [`crate::gemm`] (which picks
//! its own SIMD; on machines without AVX-512 it is the only path: an AVX2 + FMA micro-kernel
//! of this design measured at half its speed). Every kernel the machine has is tested
//! against the portable one and an f64 product (`tests/gemm_f32.rs`); they differ from it only
//! in the order of the f32 additions.
//!
//! A convolution hands the panel kernel its input as an [`Unfold`]: the panels are packed
//! straight from the image (runs of each output row copied per row of k), so the unfolded
//! matrix is never written; the other paths take it from `window::im2col`.
//!
//! Blocking: B is packed per block of [`NB`] columns into panels of 48 columns, each panel's
//! rows contiguous, so a micro-tile's slice of B (128 rows of k at a time) stays in L1 while
//! every row block of A passes over it; A needs no packing (each micro-tile streams its rows,
//! the last block's missing rows re-read the last real row and are not stored), and the bias
//! is the accumulators' starting value. Wide products split by column block, each task packing
//! its own block; narrow ones pack B once and split by rows. A prepared model
//! ([`crate::float::FloatModel`]) does pack A, once, for its narrow products ([`PackedA`]):
//! those are bound by reading their weights, which a sequential read per block of 16 rows
//! streams faster than 8 strided rows.

use crate::gemm::{View, sgemm};
use crate::window::Geometry;
use rayon::prelude::*;

/// Which kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FKernel {
    /// `matrixmultiply`'s blocked product (its own run-time SIMD choice).
    Portable,
    /// AVX-512 F.
    Avx512,
}

impl FKernel {
    /// The fastest kernel this CPU has.
    pub fn best() -> Self {
        *Self::available().last().unwrap_or(&FKernel::Portable)
    }

    /// Every kernel this CPU can run (the portable one first, the fastest last).
    pub fn available() -> Vec<Self> {
        let mut v = vec![FKernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(FKernel::Avx512);
            }
        }
        v
    }
}

/// Columns per panel of packed B (the AVX-512 micro-tile's width, two AVX2 micro-tiles).
const PW: usize = 48;
/// Columns per block of B (whole panels; a parallel task when the columns are split).
pub const NB: usize = 4 * PW;
/// Rows of k per slice: one micro-tile's panel slice is `KC·PW·4` bytes = 24 KiB, within L1;
/// the accumulators carry over between slices through C.
const KC: usize = 128;

/// Products at least this wide, or at most [`NARROW`], take the AVX-512 panel kernel (or, with
/// packed weights, [`gemm_packed`]: the same sums); in between (two to four panels, each task a
/// block of rows) `matrixmultiply` measured faster. A rule on the shape alone, so that a
/// product's rounding never depends on the core count. Up to 64 columns (ResNet-50's 7×7 stage,
/// the CIFAR networks' 8×8 stage) the panel kernel ran 69–80 GMAC/s against 56–64 for a
/// dot-product kernel and about 40 for `matrixmultiply`, and packed weights 93–106.
const WIDE: usize = 4 * PW;
/// See [`WIDE`].
const NARROW: usize = 64;

/// `c (m×n, row-major) = a (m×k, row-major) · b (k×n, row-major) + bias[row]` (bias 0 where
/// absent). Panics only on slices shorter than the dimensions say (callers size them).
#[allow(clippy::too_many_arguments)] // the GEMM's operands and its kernel
pub fn gemm_bias(
    kernel: FKernel,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    assert!(bias.is_none_or(|v| v.len() >= m));
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if gemm_columns(kernel, m, k, n, a, &Matrix { b, n }, bias, c) {
            return;
        }
    }
    let _ = kernel;
    portable(m, k, n, a, b, bias, c);
}

/// Whether [`gemm_bias`] runs this kernel and shape on the panel kernel, which can take its
/// columns from any [`Columns`] ([`gemm_columns`]).
pub fn takes_panels(kernel: FKernel, k: usize, n: usize) -> bool {
    cfg!(target_arch = "x86_64") && kernel == FKernel::Avx512 && k > 0 && (n >= WIDE || n <= NARROW)
}

/// Rows of A per block of [`PackedA`] (one AVX-512 vector: row `r` of the block is lane `r`).
const PR: usize = 16;

/// A layer's weights packed once for narrow products ([`packs`]): blocks of [`PR`] rows, each
/// block's `k` columns contiguous with the block's rows side by side (`[m/16][k][16]`, rows
/// past `m` zero), so a block of the product streams its weights as one sequential read of a
/// cache line per step of k. Built when a float model is prepared
/// ([`crate::float::FloatModel`]), used by [`gemm_packed`].
#[derive(Clone, Debug)]
pub struct PackedA {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Packs the row-major `m × k` matrix `a` (`a.len() ≥ m·k`).
    pub fn new(a: &[f32], m: usize, k: usize) -> Self {
        assert!(a.len() >= m * k, "PackedA: {} values for {m}×{k}", a.len());
        let mut data = vec![0f32; m.div_ceil(PR) * k * PR];
        data.par_chunks_mut((k * PR).max(1))
            .enumerate()
            .for_each(|(blk, d)| {
                for r in 0..PR.min(m - blk * PR) {
                    let row = &a[(blk * PR + r) * k..(blk * PR + r + 1) * k];
                    for (p, &v) in row.iter().enumerate() {
                        d[p * PR + r] = v;
                    }
                }
            });
        Self { m, k, data }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Depth.
    pub fn depth(&self) -> usize {
        self.k
    }
}

/// Whether a product of `n` columns takes [`gemm_packed`] when its weights are packed: the
/// narrow products (`1 ≤ n ≤ ` [`NARROW`]) on AVX-512. Each output is the same chain of
/// fused multiply-adds over k, in the same order, from the bias, as on the panel kernel that
/// runs these shapes unpacked, so a prepared model's results equal an unprepared one's bit for
/// bit.
pub fn packs(kernel: FKernel, n: usize) -> bool {
    cfg!(target_arch = "x86_64") && kernel == FKernel::Avx512 && (1..=NARROW).contains(&n)
}

/// `c (m×n) = A (packed) · b (k×n, row-major) + bias[row]` for a shape [`packs`] accepts;
/// `false`, with nothing written, for any other (the caller runs [`gemm_bias`]). Splits by
/// blocks of 16 rows across the cores.
pub fn gemm_packed(
    kernel: FKernel,
    a: &PackedA,
    n: usize,
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> bool {
    let (m, k) = (a.m, a.k);
    assert!(b.len() >= k * n && c.len() >= m * n);
    assert!(bias.is_none_or(|v| v.len() >= m));
    if !packs(kernel, n) || k == 0 {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        c[..m * n]
            .par_chunks_mut(PR * n)
            .zip(a.data.par_chunks(k * PR))
            .enumerate()
            .for_each(|(blk, (cb, ab))| {
                let rows = cb.len() / n;
                let mut bv = [0f32; PR];
                if let Some(v) = bias {
                    bv[..rows].copy_from_slice(&v[blk * PR..blk * PR + rows]);
                }
                // SAFETY: `packs` admits `FKernel::Avx512` only, chosen where the CPU has
                // AVX-512 F; the slices have the sizes the kernel reads.
                unsafe { x86::packed_block(ab, k, b, n, &bv, cb, rows) }
            });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`gemm_bias`] with B's columns from `src` (for a convolution, its input unfolded on the
/// fly, [`Unfold`]) where the shape [`takes_panels`]; `false`, with nothing written, where it
/// does not (the caller unfolds the input and calls [`gemm_bias`]).
#[allow(clippy::too_many_arguments)] // the GEMM's operands and its kernel
pub fn gemm_columns(
    kernel: FKernel,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    src: &dyn Columns,
    bias: Option<&[f32]>,
    c: &mut [f32],
) -> bool {
    assert!(a.len() >= m * k && c.len() >= m * n);
    assert!(bias.is_none_or(|v| v.len() >= m));
    if !takes_panels(kernel, k, n) {
        return false;
    }
    if m == 0 || n == 0 {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `FKernel::Avx512` is only chosen (best/available) where the CPU has
        // AVX-512 F.
        blocked(m, k, n, a, src, bias, c, |t| unsafe { x86::avx512_tile(t) });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `matrixmultiply` with the bias written first.
fn portable(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
) {
    for (r, row) in c[..m * n].chunks_mut(n).enumerate() {
        row.fill(bias.map_or(0.0, |v| v[r]));
    }
    sgemm(
        m,
        k,
        n,
        1.0,
        View::rows(a, k),
        View::rows(b, n),
        1.0,
        &mut c[..m * n],
    );
}

/// Where the columns of B come from: a row-major matrix, or a convolution's input unfolded on
/// the fly ([`Unfold`]), so that the panels are packed straight from the image.
pub trait Columns: Sync {
    /// Writes rows `0..k` of columns `j0..j0 + w` (`w ≤ 48`) into `dst`, `k` rows of 48
    /// floats; the columns from `w` on are left as they are (zero).
    fn panel(&self, j0: usize, w: usize, dst: &mut [f32]);
}

/// A row-major k × n matrix.
struct Matrix<'a> {
    b: &'a [f32],
    n: usize,
}

impl Columns for Matrix<'_> {
    fn panel(&self, j0: usize, w: usize, dst: &mut [f32]) {
        for (p, row) in dst.chunks_exact_mut(PW).enumerate() {
            row[..w].copy_from_slice(&self.b[p * self.n + j0..p * self.n + j0 + w]);
        }
    }
}

/// The input of a convolution (`cin` channels of one image) seen as its unfolded
/// `[cin·kh·kw, oh·ow]` matrix, without writing that matrix.
pub struct Unfold<'a> {
    /// The image, `cin·h·w`.
    pub x: &'a [f32],
    /// The window.
    pub g: &'a Geometry,
}

impl Columns for Unfold<'_> {
    fn panel(&self, j0: usize, w: usize, dst: &mut [f32]) {
        let g = self.g;
        let (kh, kw) = (g.k[0], g.k[1]);
        // The output rows the panel's columns cover, as runs (oy, ox_from, ox_to, dst column).
        let mut runs = [(0usize, 0usize, 0usize, 0usize); PW];
        let mut nr = 0;
        let mut j = j0;
        while j < j0 + w && nr < PW {
            let (oy, ox) = (j / g.ow, j % g.ow);
            let to = (ox + (j0 + w - j)).min(g.ow);
            runs[nr] = (oy, ox, to, j - j0);
            nr += 1;
            j += to - ox;
        }
        let runs = &runs[..nr];
        for (p, row) in dst.chunks_exact_mut(PW).enumerate() {
            let (ci, ki, kj) = (p / (kh * kw), p / kw % kh, p % kw);
            let xc = &self.x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            let (lo, hi, first) = g.valid_columns(kj);
            row[..w].fill(0.0);
            for &(oy, from, to, at) in runs {
                let iy = (oy * g.s[0] + ki * g.d[0]) as isize - g.p[0] as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let (a, b) = (from.max(lo), to.min(hi));
                if a >= b {
                    continue;
                }
                let src = &xc[iy as usize * g.w..(iy as usize + 1) * g.w];
                let start = first + (a - lo) * g.s[1];
                let out = &mut row[at + a - from..at + b - from];
                if g.s[1] == 1 {
                    out.copy_from_slice(&src[start..start + out.len()]);
                } else {
                    for (o, &v) in out.iter_mut().zip(src[start..].iter().step_by(g.s[1])) {
                        *o = v;
                    }
                }
            }
        }
    }
}

/// Packs columns `j0..j0 + nb` of `src` (k rows) as panels `[nb/PW][k][PW]`, zero-padded to
/// whole panels.
fn pack(src: &dyn Columns, k: usize, j0: usize, nb: usize, out: &mut Vec<f32>) {
    let panels = nb.div_ceil(PW);
    out.clear();
    out.resize(panels * k * PW, 0.0);
    for (pi, panel) in out.chunks_exact_mut(k * PW).enumerate() {
        let c0 = j0 + pi * PW;
        src.panel(c0, PW.min(j0 + nb - c0), panel);
    }
}

struct SendPtr(*mut f32);
// SAFETY: the tasks sharing it write disjoint parts of C (see `blocked`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

thread_local! {
    /// The packed column block a column-parallel task builds (kept between calls).
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One kernel call: rows `0..rows` of A at `a` (row stride `lda`) over rows `p0..p1` of k of
/// one packed column block `bp` (`nb` real columns, panels of `k` rows), into C at `c` (row
/// stride `ldc`); the first slice (`p0 = 0`) starts from the bias (or 0), the others add to C.
struct Tile<'a> {
    a: &'a [f32],
    lda: usize,
    bp: &'a [f32],
    k: usize,
    p0: usize,
    p1: usize,
    nb: usize,
    rows: usize,
    bias: Option<&'a [f32]>,
    c: *mut f32,
    ldc: usize,
}

#[allow(clippy::too_many_arguments)] // the GEMM's operands and its kernel
fn blocked(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    src: &dyn Columns,
    bias: Option<&[f32]>,
    c: &mut [f32],
    kern: impl Fn(&Tile) + Sync,
) {
    let cp = SendPtr(c.as_mut_ptr());
    let threads = rayon::current_num_threads().max(1);
    // Column blocks of whole panels, at most NB wide. A wide product gets a multiple of
    // `threads` blocks (at least two per thread) with the panels spread evenly over them, so
    // that the halves the threads take hold the same number of panels (a panel costs the same
    // whether all its 48 columns are live or not): 1,024 columns (22 panels) on 2 threads run
    // as 3+4+4 | 3+4+4 panels, where blocks of 4 gave 4+4+4 | 4+4+2.
    let wide = n >= 2 * threads * PW;
    let panels = n.div_ceil(PW);
    let blocks = if wide {
        panels
            .div_ceil(NB / PW)
            .max(2 * threads)
            .div_ceil(threads)
            .saturating_mul(threads)
            .min(panels)
    } else {
        panels.div_ceil(NB / PW)
    }
    .max(1);
    // (first column, width) of each block.
    let starts: Vec<(usize, usize)> = (0..blocks)
        .map(|b| {
            let (p0, p1) = (b * panels / blocks, (b + 1) * panels / blocks);
            (p0 * PW, (p1 * PW).min(n).saturating_sub(p0 * PW))
        })
        .filter(|&(_, w)| w > 0)
        .collect();
    // A narrow product's panel (k rows of at most 48 columns) stays in L2 whole, so it runs
    // as one slice: each micro-tile then reads its 8 rows of A straight through, with the
    // kernel's prefetch running ahead of them. Such layers (ResNet-18's 512×4608·4608×16)
    // are bound by reading their weights from memory once: 29–31 GMAC/s from cold weights,
    // against 73 with the weights in cache; slicing and prefetch together moved them 5%. A
    // prepared model packs such weights ([`PackedA`]) and streams them at 20–28 GB/s instead.
    let kc = if n <= NARROW { k } else { KC };
    let run = |bp: &[f32], (j0, nb): (usize, usize), r0: usize, rows: usize| {
        let cp = &cp;
        for p0 in (0..k).step_by(kc) {
            kern(&Tile {
                a: &a[r0 * k..],
                lda: k,
                bp,
                k,
                p0,
                p1: (p0 + kc).min(k),
                nb,
                rows,
                bias: bias.map(|v| &v[r0..]),
                // Rows r0..r0 + rows < m and columns j0..j0 + nb ≤ n of C (m·n elements).
                c: cp.0.wrapping_add(r0 * n + j0),
                ldc: n,
            });
        }
    };
    let small = m * n * k < 1 << 18;
    if !small && wide {
        starts.par_iter().for_each(|&(j0, nb)| {
            crate::with_scratch(&PANEL, |bp| {
                pack(src, k, j0, nb, bp);
                run(bp, (j0, nb), 0, m);
            })
        });
        return;
    }
    let packed: Vec<Vec<f32>> = starts
        .par_iter()
        .map(|&(j0, nb)| {
            let mut bp = Vec::new();
            pack(src, k, j0, nb, &mut bp);
            bp
        })
        .collect();
    let rows_per = if small {
        m
    } else {
        (m.div_ceil(8 * threads * 2) * 8).max(8)
    };
    (0..m.div_ceil(rows_per)).into_par_iter().for_each(|t| {
        let r0 = t * rows_per;
        let rows = rows_per.min(m - r0);
        for (&block, bp) in starts.iter().zip(&packed) {
            run(bp, block, r0, rows);
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PW, Tile};
    use std::arch::x86_64::*;

    /// AVX-512: every panel of the block, 8 rows × up to 48 columns at a time (more rows on a
    /// narrow panel measured slower: the extra row pointers spill).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_tile(t: &Tile) {
        for (pi, panel) in t.bp.chunks_exact(t.k * PW).enumerate() {
            let c0 = pi * PW;
            if c0 >= t.nb {
                break;
            }
            let live = (t.nb - c0).min(PW);
            // SAFETY: forwarded from the caller.
            unsafe {
                match live.div_ceil(16) {
                    1 => avx512_micro::<8, 1>(t, panel, c0, live),
                    2 => avx512_micro::<8, 2>(t, panel, c0, live),
                    _ => avx512_micro::<8, 3>(t, panel, c0, live),
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_micro<const MR: usize, const NV: usize>(
        t: &Tile,
        panel: &[f32],
        c0: usize,
        live: usize,
    ) {
        let masks: [__mmask16; NV] = std::array::from_fn(|v| {
            let l = live.saturating_sub(16 * v).min(16);
            if l == 16 { !0 } else { (1u16 << l) - 1 }
        });
        for r0 in (0..t.rows).step_by(MR) {
            let live_rows = (t.rows - r0).min(MR);
            // Rows past the last real one re-read it (their sums are not stored).
            let arow: [*const f32; MR] = std::array::from_fn(|r| {
                t.a.as_ptr().wrapping_add((r0 + r).min(t.rows - 1) * t.lda)
            });
            let mut acc = [[_mm512_setzero_ps(); NV]; MR];
            for (r, row) in acc.iter_mut().enumerate().take(live_rows) {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = if t.p0 == 0 {
                        _mm512_set1_ps(t.bias.map_or(0.0, |b| b[r0 + r]))
                    } else {
                        // SAFETY: the masked lanes are columns c0 + 16·v + l < nb of row
                        // r0 + r < rows of C.
                        unsafe {
                            _mm512_maskz_loadu_ps(masks[v], t.c.add((r0 + r) * t.ldc + c0 + 16 * v))
                        }
                    };
                }
            }
            for p in t.p0..t.p1 {
                if p % 16 == 0 {
                    for row in &arow {
                        // A hint only: a line past the end of A is never touched.
                        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(p + 256).cast());
                    }
                }
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, slot) in bv.iter_mut().enumerate() {
                    // SAFETY: p·PW + 16·(v + 1) ≤ k·PW = panel.len() (p < k, NV ≤ 3).
                    *slot = unsafe { _mm512_loadu_ps(panel.as_ptr().add(p * PW + 16 * v)) };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: arow[r] is a real row of A (r0 + r clamped to rows − 1) and
                    // p < k = lda, so the element is inside a.
                    let a = _mm512_set1_ps(unsafe { *arow[r].add(p) });
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = _mm512_fmadd_ps(bv[v], a, *x);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate().take(live_rows) {
                for (v, x) in row.iter().enumerate() {
                    // SAFETY: as the loads above.
                    unsafe {
                        _mm512_mask_storeu_ps(t.c.add((r0 + r) * t.ldc + c0 + 16 * v), masks[v], *x)
                    };
                }
            }
        }
    }

    /// One block of [`super::PackedA`] (`ab`: k steps of 16 rows) times `b` (k × n, n ≤ 64),
    /// from the bias `bv`, into the block's `rows` rows of C (`cb`, row stride n): per group of
    /// up to 16 columns, one accumulator per column holds the 16 rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn packed_block(
        ab: &[f32],
        k: usize,
        b: &[f32],
        n: usize,
        bv: &[f32; 16],
        cb: &mut [f32],
        rows: usize,
    ) {
        let mut j = 0;
        while j < n {
            // SAFETY: forwarded; j + NJ ≤ n.
            unsafe {
                j += match n - j {
                    1 => packed_cols::<1>(ab, k, b, n, j, bv, cb, rows),
                    2 => packed_cols::<2>(ab, k, b, n, j, bv, cb, rows),
                    3 => packed_cols::<3>(ab, k, b, n, j, bv, cb, rows),
                    4 => packed_cols::<4>(ab, k, b, n, j, bv, cb, rows),
                    5 => packed_cols::<5>(ab, k, b, n, j, bv, cb, rows),
                    6 => packed_cols::<6>(ab, k, b, n, j, bv, cb, rows),
                    7 => packed_cols::<7>(ab, k, b, n, j, bv, cb, rows),
                    8 => packed_cols::<8>(ab, k, b, n, j, bv, cb, rows),
                    9 => packed_cols::<9>(ab, k, b, n, j, bv, cb, rows),
                    10 => packed_cols::<10>(ab, k, b, n, j, bv, cb, rows),
                    11 => packed_cols::<11>(ab, k, b, n, j, bv, cb, rows),
                    12 => packed_cols::<12>(ab, k, b, n, j, bv, cb, rows),
                    13 => packed_cols::<13>(ab, k, b, n, j, bv, cb, rows),
                    14 => packed_cols::<14>(ab, k, b, n, j, bv, cb, rows),
                    15 => packed_cols::<15>(ab, k, b, n, j, bv, cb, rows),
                    _ => packed_cols::<16>(ab, k, b, n, j, bv, cb, rows),
                };
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)] // the block, B, the column group and C
    unsafe fn packed_cols<const NJ: usize>(
        ab: &[f32],
        k: usize,
        b: &[f32],
        n: usize,
        j: usize,
        bv: &[f32; 16],
        cb: &mut [f32],
        rows: usize,
    ) -> usize {
        debug_assert!(ab.len() >= 16 * k && b.len() >= k * n && j + NJ <= n);
        // SAFETY: bv holds 16 floats.
        let init = unsafe { _mm512_loadu_ps(bv.as_ptr()) };
        let mut acc = [init; NJ];
        let (pa, pb) = (ab.as_ptr(), b.as_ptr());
        for p in 0..k {
            // A hint only: a line past the block is never touched.
            _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(16 * (p + 32)).cast());
            // SAFETY: 16·p + 16 ≤ 16·k ≤ ab.len(); p·n + j + v < k·n ≤ b.len().
            let a = unsafe { _mm512_loadu_ps(pa.add(16 * p)) };
            for (v, x) in acc.iter_mut().enumerate() {
                let bs = _mm512_set1_ps(unsafe { *pb.add(p * n + j + v) });
                *x = _mm512_fmadd_ps(bs, a, *x);
            }
        }
        for (v, x) in acc.iter().enumerate() {
            let mut lanes = [0f32; 16];
            // SAFETY: lanes holds 16 floats.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *x) };
            for (r, &l) in lanes.iter().enumerate().take(rows) {
                cb[r * n + j + v] = l;
            }
        }
        NJ
    }
}
