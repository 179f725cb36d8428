//! Exact 8-bit GEMM, `C (i32, m×n) = A (i8, m×k) · B (u8, k×n)`, for the integer semantics v2
//! (weights of at most 8 bits, activations offset into `[0, 255]`).
//!
//! Three kernels, one result: AVX-512 VNNI (`vpdpbusd`: four u8×i8 products summed into each
//! i32 lane), AVX2 (u8 and i8 widened to i16, `vpmaddwd`: two exact products per i32 lane —
//! `vpmaddubsw` would saturate at 8-bit weights), and a portable loop. [`Kernel::best`] picks
//! at run time; every kernel the machine has is tested against the portable one
//! (`tests/gemm_i8.rs`). Exact as long as no sum leaves i32: the caller checks
//! `k · 255 · max|a| < 2^31` ([`fits_i32`]).
//!
//! Blocking: A (a layer's weights) is packed once in blocks of micro-tile rows (8 for VNNI, 4
//! for AVX2); B is packed per block of 256 columns; the kernel walks one micro-tile's columns
//! at a time over every row block, a slice of 64 groups of k at a time, so the B panel it
//! reads stays in L1. Wide products (many columns) split by column block, each task packing
//! its own block of B; narrow ones pack B once and split by rows.

use rayon::prelude::*;

/// Which kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust loops, on every machine.
    Portable,
    /// AVX2 with 16-bit products.
    Avx2,
    /// AVX-512 with VNNI dot products.
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU has.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Kernel::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run (the portable one first).
    pub fn available() -> Vec<Self> {
        let mut v = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                v.push(Kernel::Avx512Vnni);
            }
        }
        v
    }
}

/// Every sum of `k` products of a u8 and an i8 of magnitude ≤ `amax` fits i32.
pub fn fits_i32(k: usize, amax: u32) -> bool {
    (k as u128) * 255 * u128::from(amax) < (1u128 << 31)
}

/// Columns per cache block of B (and per parallel task when the columns are split).
const NB: usize = 256;

/// Groups of k (4 for VNNI, 2 for AVX2) per cache block: a block of B's panel for one
/// micro-tile's columns stays in L1 while every row block of A passes over it.
const KC: usize = 64;

/// `C = A · B` with `a` row-major m×k, `b` row-major k×n, `c` row-major m×n (overwritten).
/// Panics only on slices shorter than the dimensions say (callers size them).
pub fn gemm_u8i8(kernel: Kernel, m: usize, n: usize, k: usize, a: &[i8], b: &[u8], c: &mut [i32]) {
    PackedA::new(kernel, a, m, k).gemm(n, b, c);
}

/// A's rows packed once for a kernel (a layer's weights, reused for every input).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedA {
    kernel: Kernel,
    m: usize,
    k: usize,
    kg: usize,
    packed: Vec<i32>,
    raw: Vec<i8>,
}

/// Rows per micro-tile of each kernel (A is packed in blocks of this many rows).
fn micro_rows(kernel: Kernel) -> usize {
    match kernel {
        Kernel::Portable => 1,
        Kernel::Avx2 => 4,
        Kernel::Avx512Vnni => 8,
    }
}

impl PackedA {
    /// Packs `a` (row-major m×k) for `kernel`.
    pub fn new(kernel: Kernel, a: &[i8], m: usize, k: usize) -> Self {
        assert!(a.len() >= m * k);
        #[cfg(not(target_arch = "x86_64"))]
        let kernel = Kernel::Portable;
        let g = match kernel {
            Kernel::Portable => 0,
            Kernel::Avx2 => 2,
            Kernel::Avx512Vnni => 4,
        };
        let (packed, kg) = if g == 0 {
            (Vec::new(), 0)
        } else {
            pack_a(a, m, k, g, micro_rows(kernel))
        };
        let raw = if g == 0 {
            a[..m * k].to_vec()
        } else {
            Vec::new()
        };
        Self {
            kernel,
            m,
            k,
            kg,
            packed,
            raw,
        }
    }

    /// Rows m.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// `c (m×n) = A · b (k×n)`.
    pub fn gemm(&self, n: usize, b: &[u8], c: &mut [i32]) {
        let (m, k) = (self.m, self.k);
        assert!(b.len() >= k * n && c.len() >= m * n);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            c[..m * n].fill(0);
            return;
        }
        match self.kernel {
            Kernel::Portable => portable(m, n, k, &self.raw, b, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => self.blocked(n, b, c, 16, pack_quads, |t| {
                // SAFETY: `Kernel::Avx512Vnni` is only chosen (best/available) where the CPU
                // has AVX-512 F and VNNI; `blocked` sizes the tile inside A, B and C.
                unsafe { x86::vnni_tile(t) }
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => self.blocked(n, b, c, 8, pack_pairs, |t| {
                // SAFETY: `Kernel::Avx2` is only chosen where the CPU has AVX2.
                unsafe { x86::avx2_tile(t) }
            }),
            #[cfg(not(target_arch = "x86_64"))]
            _ => portable(m, n, k, &self.raw, b, c),
        }
    }
}

fn portable(m: usize, n: usize, k: usize, a: &[i8], b: &[u8], c: &mut [i32]) {
    c[..m * n]
        .par_chunks_mut(n)
        .zip(a.par_chunks(k.max(1)))
        .for_each(|(crow, arow)| {
            crow.iter_mut().for_each(|v| *v = 0);
            for (p, &w) in arow.iter().enumerate().take(k) {
                if w == 0 {
                    continue;
                }
                let w = i32::from(w);
                let brow = &b[p * n..p * n + n];
                for (o, &x) in crow.iter_mut().zip(brow) {
                    *o += w * i32::from(x);
                }
            }
        });
}

/// B's columns `j0..j0+nb` packed for a kernel taking `g` consecutive k per lane group.
type Pack = fn(b: &[u8], n: usize, k: usize, j0: usize, nb: usize, out: &mut Vec<u8>);

/// `[k/4][nb16][4]` bytes (VNNI): lane j of group p holds B[4p..4p+4][j0 + j].
fn pack_quads(b: &[u8], n: usize, k: usize, j0: usize, nb: usize, out: &mut Vec<u8>) {
    let (kg, w) = (k.div_ceil(4), nb.div_ceil(16) * 16);
    out.clear();
    out.resize(kg * w * 4, 0);
    for (g, dst) in out.chunks_exact_mut(w * 4).enumerate() {
        let p = 4 * g;
        let row = |r: usize| (p + r < k).then(|| &b[(p + r) * n + j0..(p + r) * n + j0 + nb]);
        match (row(0), row(1), row(2), row(3)) {
            (Some(r0), Some(r1), Some(r2), Some(r3)) => {
                for (j, d) in dst.chunks_exact_mut(4).take(nb).enumerate() {
                    d.copy_from_slice(&[r0[j], r1[j], r2[j], r3[j]]);
                }
            }
            rows => {
                for (r, row) in [rows.0, rows.1, rows.2, rows.3].into_iter().enumerate() {
                    let Some(row) = row else { break };
                    for (d, &v) in dst.chunks_exact_mut(4).zip(row.iter()) {
                        d[r] = v;
                    }
                }
            }
        }
    }
}

/// `[k/2][nb8][2]` u16 as bytes (AVX2): lane j of group p holds B[2p..2p+2][j0 + j] widened.
fn pack_pairs(b: &[u8], n: usize, k: usize, j0: usize, nb: usize, out: &mut Vec<u8>) {
    let (kg, w) = (k.div_ceil(2), nb.div_ceil(8) * 8);
    out.clear();
    out.resize(kg * w * 4, 0);
    for (g, dst) in out.chunks_exact_mut(w * 4).enumerate() {
        for p in (2 * g..(2 * g + 2).min(k)).map(|p| p - 2 * g) {
            let row = &b[(2 * g + p) * n + j0..(2 * g + p) * n + j0 + nb];
            for (d, &v) in dst.chunks_exact_mut(4).zip(row.iter()) {
                d[2 * p] = v;
            }
        }
    }
}

/// A's rows as one i32 per (row, group of `g` k): the `g` weights' bytes (VNNI: four i8;
/// AVX2: two i16), zero-padded to whole groups and to whole blocks of `mr` rows, laid out
/// block by block as `[m/mr][kg][mr]` (a micro-tile reads its rows' weights for one group of
/// k from one place).
fn pack_a(a: &[i8], m: usize, k: usize, g: usize, mr: usize) -> (Vec<i32>, usize) {
    let kg = k.div_ceil(g);
    let mp = m.div_ceil(mr) * mr;
    let mut out = vec![0i32; mp * kg];
    for r in 0..m {
        for q in 0..kg {
            let mut bytes = [0u8; 4];
            for t in 0..g {
                let p = q * g + t;
                if p < k {
                    let w = a[r * k + p];
                    if g == 4 {
                        bytes[t] = w as u8;
                    } else {
                        let h = i16::from(w).to_le_bytes();
                        bytes[2 * t] = h[0];
                        bytes[2 * t + 1] = h[1];
                    }
                }
            }
            out[(r / mr) * kg * mr + q * mr + r % mr] = i32::from_le_bytes(bytes);
        }
    }
    (out, kg)
}

struct SendPtr(*mut i32);
// SAFETY: the tasks sharing it write disjoint parts of C (see `blocked`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

thread_local! {
    /// The packed column block a column-parallel task builds (kept between calls).
    static PANEL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl PackedA {
    /// Shared driver. Many columns (at least two blocks of `NB` per thread): the tasks are
    /// column blocks, each packing its own block of B and running every row over it. Few
    /// columns: B is packed once (blocks in parallel) and the tasks are blocks of rows. Either
    /// way the kernel runs one `KC` slice of k at a time, accumulating into C after the first.
    fn blocked(
        &self,
        n: usize,
        b: &[u8],
        c: &mut [i32],
        lanes: usize,
        pack: Pack,
        kern: impl Fn(&Tile) + Sync,
    ) {
        let (m, k, kg, ap) = (self.m, self.k, self.kg, &self.packed);
        let mr = micro_rows(self.kernel);
        let cp = SendPtr(c.as_mut_ptr());
        let threads = rayon::current_num_threads().max(1);
        let starts: Vec<usize> = (0..n).step_by(NB).collect();
        // Every k slice of rows `r0..r0 + rows` over one packed column block.
        let run = |bp: &[u8], j0: usize, r0: usize, rows: usize| {
            let cp = &cp;
            let nb = NB.min(n - j0);
            for q0 in (0..kg).step_by(KC) {
                kern(&Tile {
                    ap: &ap[r0 * kg..],
                    bp,
                    kg,
                    q0,
                    q1: (q0 + KC).min(kg),
                    w: nb.div_ceil(lanes) * lanes,
                    nb,
                    rows,
                    // SAFETY (for the kernels): rows r0..r0 + rows < m and columns
                    // j0..j0 + nb ≤ n of C, which holds m·n.
                    c: cp.0.wrapping_add(r0 * n + j0),
                    ldc: n,
                });
            }
        };
        let small = m * n * k < 1 << 20;
        if !small && starts.len() >= 2 * threads {
            starts.par_iter().for_each(|&j0| {
                crate::with_scratch(&PANEL, |bp| {
                    pack(b, n, k, j0, NB.min(n - j0), bp);
                    run(bp, j0, 0, m);
                })
            });
            return;
        }
        let packed: Vec<Vec<u8>> = starts
            .par_iter()
            .map(|&j0| {
                let mut bp = Vec::new();
                pack(b, n, k, j0, NB.min(n - j0), &mut bp);
                bp
            })
            .collect();
        // Rows per task: two tasks per core where the rows allow, whole micro-tile blocks.
        // (A small product runs as one task: waking threads would cost more.)
        let rows_per = if small {
            m.div_ceil(mr) * mr
        } else {
            (m.div_ceil(mr * threads * 2) * mr).max(mr)
        };
        (0..m.div_ceil(rows_per)).into_par_iter().for_each(|t| {
            let r0 = t * rows_per;
            let rows = rows_per.min(m - r0);
            for (&j0, bp) in starts.iter().zip(&packed) {
                run(bp, j0, r0, rows);
            }
        });
    }
}

/// One kernel call: rows `0..rows` of `ap` (packed A from the tile's first row, whole blocks
/// of micro-tile rows, `kg` groups each) over groups `q0..q1` of one packed column block `bp`
/// (`w` padded columns, `nb` real ones), written into C at `c` (row stride `ldc`); the first
/// slice (`q0 = 0`) overwrites C, the others add to it.
struct Tile<'a> {
    ap: &'a [i32],
    bp: &'a [u8],
    kg: usize,
    q0: usize,
    q1: usize,
    w: usize,
    nb: usize,
    rows: usize,
    c: *mut i32,
    ldc: usize,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Tile;
    use std::arch::x86_64::*;

    /// VNNI: 8 rows × up to 48 columns per micro-tile (24 accumulators), four u8×i8 products
    /// per i32 lane; the columns outermost so that one panel of B serves every row block.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn vnni_tile(t: &Tile) {
        let mut j = 0;
        while j < t.w {
            // SAFETY: forwarded from the caller; j < w and the lanes used are inside w.
            unsafe {
                j += match (t.w - j) / 16 {
                    1 => vnni_micro::<1>(t, j),
                    2 => vnni_micro::<2>(t, j),
                    _ => vnni_micro::<3>(t, j),
                };
            }
        }
    }

    /// Columns `j..j + 16·NV` of the tile for every row block; returns the columns done.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_micro<const NV: usize>(t: &Tile, j: usize) -> usize {
        const MR: usize = 8;
        let (kg, w) = (t.kg, t.w);
        let masks: [__mmask16; NV] = std::array::from_fn(|v| {
            let col = j + 16 * v;
            let live = t.nb.saturating_sub(col).min(16);
            if live == 16 { !0 } else { (1u16 << live) - 1 }
        });
        for r0 in (0..t.rows).step_by(MR) {
            let live_rows = (t.rows - r0).min(MR);
            let mut acc = [[_mm512_setzero_si512(); NV]; MR];
            if t.q0 > 0 {
                for (r, row) in acc.iter_mut().enumerate().take(live_rows) {
                    for (v, x) in row.iter_mut().enumerate() {
                        // SAFETY: masked lanes are columns inside nb of row r0 + r < rows.
                        *x = unsafe {
                            _mm512_maskz_loadu_epi32(
                                masks[v],
                                t.c.add((r0 + r) * t.ldc + j + 16 * v).cast(),
                            )
                        };
                    }
                }
            }
            // Packed A: block r0 / MR, groups in order, MR rows per group.
            let ab = t.ap.as_ptr().wrapping_add(r0 * kg);
            for q in t.q0..t.q1 {
                let mut bv = [_mm512_setzero_si512(); NV];
                for (v, slot) in bv.iter_mut().enumerate() {
                    // SAFETY: (q·w + j + 16·(v + 1))·4 ≤ kg·w·4 = bp.len(): q < kg,
                    // j + 16·NV ≤ w.
                    *slot = unsafe {
                        _mm512_loadu_si512(t.bp.as_ptr().add((q * w + j + 16 * v) * 4).cast())
                    };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: A is padded to whole MR-row blocks: r0 / MR·MR·kg + q·MR + r is
                    // inside the packed rows the tile covers.
                    let a = _mm512_set1_epi32(unsafe { *ab.add(q * MR + r) });
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = _mm512_dpbusd_epi32(*x, bv[v], a);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate().take(live_rows) {
                for (v, x) in row.iter().enumerate() {
                    if masks[v] == 0 {
                        break;
                    }
                    // SAFETY: as the loads above.
                    unsafe {
                        _mm512_mask_storeu_epi32(
                            t.c.add((r0 + r) * t.ldc + j + 16 * v).cast(),
                            masks[v],
                            *x,
                        )
                    };
                }
            }
        }
        16 * NV
    }

    /// AVX2: 4 rows × up to 24 columns per micro-tile, two exact i16 products per i32 lane.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_tile(t: &Tile) {
        const MR: usize = 4;
        let (kg, w) = (t.kg, t.w);
        let mut j = 0;
        while j < w {
            let vecs = ((w - j) / 8).min(3);
            for r0 in (0..t.rows).step_by(MR) {
                let live_rows = (t.rows - r0).min(MR);
                let mut acc = [[_mm256_setzero_si256(); 3]; MR];
                let live = |v: usize| t.nb.saturating_sub(j + 8 * v).min(8);
                if t.q0 > 0 {
                    for (r, row) in acc.iter_mut().enumerate().take(live_rows) {
                        for (v, x) in row.iter_mut().enumerate().take(vecs) {
                            let mut lanes = [0i32; 8];
                            let at = (r0 + r) * t.ldc + j + 8 * v;
                            for (l, slot) in lanes.iter_mut().enumerate().take(live(v)) {
                                // SAFETY: column j + 8·v + l < nb of row r0 + r < rows.
                                *slot = unsafe { *t.c.add(at + l) };
                            }
                            // SAFETY: lanes holds 8 i32.
                            *x = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) };
                        }
                    }
                }
                let ab = t.ap.as_ptr().wrapping_add(r0 * kg);
                for q in t.q0..t.q1 {
                    let mut bv = [_mm256_setzero_si256(); 3];
                    for (v, slot) in bv.iter_mut().enumerate().take(vecs) {
                        let at = (q * w + j + 8 * v) * 4;
                        // SAFETY: at + 32 ≤ bp.len() = kg·w·4: j + 8·(v + 1) ≤ w, q < kg.
                        *slot = unsafe { _mm256_loadu_si256(t.bp.as_ptr().add(at).cast()) };
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        // SAFETY: A is padded to whole MR-row blocks.
                        let a = _mm256_set1_epi32(unsafe { *ab.add(q * MR + r) });
                        for (v, x) in row.iter_mut().enumerate().take(vecs) {
                            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(bv[v], a));
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate().take(live_rows) {
                    for (v, x) in row.iter().enumerate().take(vecs) {
                        let mut lanes = [0i32; 8];
                        // SAFETY: lanes holds 8 i32.
                        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *x) };
                        let at = (r0 + r) * t.ldc + j + 8 * v;
                        for (l, &val) in lanes.iter().enumerate().take(live(v)) {
                            // SAFETY: column j + 8·v + l < nb of row r0 + r < rows.
                            unsafe { *t.c.add(at + l) = val };
                        }
                    }
                }
            }
            j += 8 * vecs;
        }
    }
}
