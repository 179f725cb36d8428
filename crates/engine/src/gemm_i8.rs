//! Exact 8-bit GEMM, `C (i32, m×n) = A (i8, m×k) · B (u8, k×n)`, for the integer semantics v2
//! (weights of at most 8 bits, activations offset into `[0, 255]`).
//!
//! Three kernels, one result: AVX-512 VNNI (`vpdpbusd`: four u8×i8 products summed into each
//! i32 lane), AVX2 (u8 and i8 widened to i16, `vpmaddwd`: two exact products per i32 lane —
//! `vpmaddubsw` would saturate at 8-bit weights), and a portable loop. [`Kernel::best`] picks
//! at run time; every kernel the machine has is tested against the portable one
//! (`tests/gemm_i8.rs`). Exact as long as no sum leaves i32: the caller checks
//! `k · 255 · max|a| < 2^31` ([`fits_i32`]).

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

/// Columns per parallel task (and per cache block of B).
const NB: usize = 256;

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
            pack_a(a, m, k, g)
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
        match self.kernel {
            Kernel::Portable => portable(m, n, k, &self.raw, b, c),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => self.blocked(n, b, c, 4, pack_quads, |t, c| {
                // SAFETY: `Kernel::Avx512Vnni` is only chosen (best/available) where the CPU
                // has AVX-512 F and VNNI; the tile's buffers are sized by `blocked`.
                unsafe { x86::vnni_tile(t, c) }
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => self.blocked(n, b, c, 2, pack_pairs, |t, c| {
                // SAFETY: `Kernel::Avx2` is only chosen where the CPU has AVX2.
                unsafe { x86::avx2_tile(t, c) }
            }),
            #[cfg(not(target_arch = "x86_64"))]
            _ => portable(m, n, k, &self.raw, b, c),
        }
    }
}

fn portable(m: usize, n: usize, k: usize, a: &[i8], b: &[u8], c: &mut [i32]) {
    if k == 0 {
        c[..m * n].fill(0);
        return;
    }
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
        // The group's (up to) four rows, each read in order.
        let rows: Vec<&[u8]> = (4 * g..(4 * g + 4).min(k))
            .map(|p| &b[p * n + j0..p * n + j0 + nb])
            .collect();
        for (r, row) in rows.iter().enumerate() {
            for (d, &v) in dst.chunks_exact_mut(4).zip(row.iter()) {
                d[r] = v;
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
        let rows: Vec<&[u8]> = (2 * g..(2 * g + 2).min(k))
            .map(|p| &b[p * n + j0..p * n + j0 + nb])
            .collect();
        for (r, row) in rows.iter().enumerate() {
            for (d, &v) in dst.chunks_exact_mut(4).zip(row.iter()) {
                d[2 * r] = v;
            }
        }
    }
}

/// A's rows as one i32 per (row, group of `g` k): the `g` weights' bytes (VNNI: four i8;
/// AVX2: two i16), zero-padded to whole groups and to a multiple of 4 rows.
fn pack_a(a: &[i8], m: usize, k: usize, g: usize) -> (Vec<i32>, usize) {
    let kg = k.div_ceil(g);
    let mp = m.div_ceil(4) * 4;
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
            out[r * kg + q] = i32::from_le_bytes(bytes);
        }
    }
    (out, kg)
}

impl PackedA {
    /// Shared driver: B packed once (blocks of `NB` columns, in parallel), then in parallel
    /// over blocks of rows, the kernel over every column block, writing straight into `c`.
    fn blocked(
        &self,
        n: usize,
        b: &[u8],
        c: &mut [i32],
        g: usize,
        pack: Pack,
        kern: impl Fn(&Tile, &mut [i32]) + Sync,
    ) {
        let (m, k, kg, ap) = (self.m, self.k, self.kg, &self.packed);
        let lanes = if g == 4 { 16 } else { 8 };
        let starts: Vec<usize> = (0..n).step_by(NB).collect();
        let packed: Vec<Vec<u8>> = starts
            .par_iter()
            .map(|&j0| {
                let mut bp = Vec::new();
                pack(b, n, k, j0, NB.min(n - j0), &mut bp);
                bp
            })
            .collect();
        // Rows per task: two tasks per core where the rows allow, whole 4-row blocks.
        // (A small product runs as one task: waking threads would cost more.)
        let rows_per = if m * n * k < 1 << 20 {
            m.div_ceil(4) * 4
        } else {
            (m.div_ceil(4 * rayon::current_num_threads().max(1) * 2) * 4).max(4)
        };
        c[..m * n]
            .par_chunks_mut(rows_per * n)
            .enumerate()
            .for_each(|(t, crows)| {
                let r_first = t * rows_per;
                let rows = crows.len() / n;
                for (&j0, bp) in starts.iter().zip(&packed) {
                    let nb = NB.min(n - j0);
                    let tile = Tile {
                        ap: &ap[r_first * kg..],
                        bp,
                        kg,
                        w: nb.div_ceil(lanes) * lanes,
                        nb,
                        rows,
                        ldc: n,
                        j0,
                    };
                    kern(&tile, crows);
                }
            });
    }
}

/// One kernel call: rows `0..rows` of `ap` (packed A, `kg` groups per row, padded to whole
/// 4-row blocks) times one packed column block `bp` (`w` padded columns, `nb` real ones),
/// written into `c` (row stride `ldc`) at columns `j0..j0 + nb`.
struct Tile<'a> {
    ap: &'a [i32],
    bp: &'a [u8],
    kg: usize,
    w: usize,
    nb: usize,
    rows: usize,
    ldc: usize,
    j0: usize,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Tile;
    use std::arch::x86_64::*;

    /// VNNI: 4 rows × up to 64 columns per step, four u8×i8 products per i32 lane.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn vnni_tile(t: &Tile, c: &mut [i32]) {
        let (kg, w) = (t.kg, t.w);
        for r0 in (0..t.rows).step_by(4) {
            let mut j = 0;
            while j < w {
                let vecs = ((w - j) / 16).min(4);
                let mut acc = [[_mm512_setzero_si512(); 4]; 4];
                for q in 0..kg {
                    let mut bv = [_mm512_setzero_si512(); 4];
                    for (v, slot) in bv.iter_mut().enumerate().take(vecs) {
                        let at = (q * w + j + 16 * v) * 4;
                        // SAFETY: at + 64 ≤ bp.len() = kg·w·4: j + 16·(v + 1) ≤ w, q < kg.
                        *slot = unsafe { _mm512_loadu_si512(t.bp.as_ptr().add(at).cast()) };
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        // Packed A has whole 4-row blocks, so r0 + r is inside it.
                        let a = _mm512_set1_epi32(t.ap[(r0 + r) * kg + q]);
                        for (v, x) in row.iter_mut().enumerate().take(vecs) {
                            *x = _mm512_dpbusd_epi32(*x, bv[v], a);
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate().take(t.rows - r0) {
                    for (v, x) in row.iter().enumerate().take(vecs) {
                        let col = j + 16 * v;
                        if col >= t.nb {
                            break;
                        }
                        let live = (t.nb - col).min(16);
                        let mask: __mmask16 = if live == 16 { !0 } else { (1u16 << live) - 1 };
                        let at = (r0 + r) * t.ldc + t.j0 + col;
                        // SAFETY: the masked lanes are columns j0 + col .. j0 + col + live ≤
                        // j0 + nb ≤ ldc of row r0 + r < rows, all inside c.
                        unsafe {
                            _mm512_mask_storeu_epi32(c.as_mut_ptr().add(at).cast(), mask, *x)
                        };
                    }
                }
                j += 16 * vecs;
            }
        }
    }

    /// AVX2: 4 rows × up to 24 columns per step, two exact i16 products per i32 lane.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2_tile(t: &Tile, c: &mut [i32]) {
        let (kg, w) = (t.kg, t.w);
        for r0 in (0..t.rows).step_by(4) {
            let mut j = 0;
            while j < w {
                let vecs = ((w - j) / 8).min(3);
                let mut acc = [[_mm256_setzero_si256(); 3]; 4];
                for q in 0..kg {
                    let mut bv = [_mm256_setzero_si256(); 3];
                    for (v, slot) in bv.iter_mut().enumerate().take(vecs) {
                        let at = (q * w + j + 8 * v) * 4;
                        // SAFETY: at + 32 ≤ bp.len() = kg·w·4: j + 8·(v + 1) ≤ w, q < kg.
                        *slot = unsafe { _mm256_loadu_si256(t.bp.as_ptr().add(at).cast()) };
                    }
                    for (r, row) in acc.iter_mut().enumerate() {
                        let a = _mm256_set1_epi32(t.ap[(r0 + r) * kg + q]);
                        for (v, x) in row.iter_mut().enumerate().take(vecs) {
                            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(bv[v], a));
                        }
                    }
                }
                for (r, row) in acc.iter().enumerate().take(t.rows - r0) {
                    for (v, x) in row.iter().enumerate().take(vecs) {
                        let col = j + 8 * v;
                        if col >= t.nb {
                            break;
                        }
                        let live = (t.nb - col).min(8);
                        let mut lanes = [0i32; 8];
                        // SAFETY: lanes holds 8 i32.
                        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *x) };
                        let at = (r0 + r) * t.ldc + t.j0 + col;
                        c[at..at + live].copy_from_slice(&lanes[..live]);
                    }
                }
                j += 8 * vecs;
            }
        }
    }
}
