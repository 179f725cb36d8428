//! The enclave's decomposition: a per-matrix low-rank part `U·V` and the residual `R = X − U·V`.
//!
//! Method: a randomized range finder (Halko–Martinsson–Tropp) with optional subspace (power)
//! iterations, then an exact eigen-decomposition of the small Gram matrix of the sketch, so the
//! kept components come ordered by captured energy. On a wide matrix the subspace is estimated
//! on a stratified sample of its columns and the projection is exact on all of them. `U` has orthonormal columns and
//! `V = Uᵀ·X`, hence `‖R‖² = ‖X‖² − ‖V‖²` and every choice of rank keeps `U·V + R = X` up to
//! float rounding: a rough factorization costs no accuracy, it only moves work and information.
//! The products are BLAS-3 (`engine::gemm::sgemm`), the only O(s³) step is the Jacobi
//! eigen-solve of an `s × s` matrix, with `s = rank + oversampling` (a few dozen at most).

use crate::AsymError;
use rayon::prelude::*;
use tessera_engine::gemm::{View, sgemm};

/// How many components to keep for one matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankSpec {
    /// Exactly this many (fewer only when the matrix has lower rank).
    Fixed(usize),
    /// The smallest rank (at least 1) with `‖R‖²/‖X‖² ≤ threshold`, at most `max_rank`.
    Energy {
        /// Residual energy bound, e.g. 0.1.
        threshold: f32,
        /// Cap on the rank.
        max_rank: usize,
    },
}

/// Tuning of the range finder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecompOptions {
    /// Extra sketch columns beyond the wanted rank (better subspace, slightly more work).
    pub oversample: usize,
    /// Subspace iterations (each costs two more products with X; 0 is the plain range finder).
    pub power_iters: usize,
    /// Estimate the subspace on this many columns drawn from a wide matrix (one per stratum),
    /// at least the row count; 0 = on every column. `V` and `R` are always computed on every
    /// column, so the sample changes which components are kept, never the identity
    /// `U·V + R = X`; it cuts the enclave's sketching work from `O(rows·cols·s)` to
    /// `O(rows·sample·s)` on large activations (a conv input at 32×32, or a whole batch).
    pub sample_cols: usize,
}

impl Default for DecompOptions {
    fn default() -> Self {
        Self {
            oversample: 4,
            power_iters: 1,
            sample_cols: 256,
        }
    }
}

/// `X (rows × cols) = U·V + R`.
#[derive(Clone, Debug, PartialEq)]
pub struct LowRank {
    /// Rows of X.
    pub rows: usize,
    /// Columns of X.
    pub cols: usize,
    /// Kept rank k.
    pub rank: usize,
    /// `U`, `rows × k` row-major, orthonormal columns.
    pub u: Vec<f32>,
    /// `V = Uᵀ·X`, `k × cols` row-major.
    pub v: Vec<f32>,
    /// `R = X − U·V`, `rows × cols` row-major.
    pub residual: Vec<f32>,
    /// `‖R‖² / ‖X‖²` (0 for X = 0).
    pub energy: f64,
}

impl LowRank {
    /// Multiply-adds the decomposition of a `rows × cols` matrix costs at rank `k` with the given
    /// options (sketch, subspace iterations, Gram matrix, projection and residual).
    /// With column sampling the sketch runs on the sample and `V = Uᵀ·X` costs `rows·cols·k`.
    pub fn cost_macs(rows: usize, cols: usize, k: usize, opts: &DecompOptions) -> u64 {
        let sample = sampled_count(rows, cols, opts);
        let scols = sample.unwrap_or(cols);
        let full = rows.min(scols);
        let s = (k + opts.oversample).min(full) as u64;
        let (r, c, sc, k) = (rows as u64, cols as u64, scols as u64, k.min(full) as u64);
        let sketch = (2 + 2 * opts.power_iters as u64) * r * sc * s + s * s * sc + s * s * (r + sc);
        let project = if sample.is_some() { r * c * k } else { 0 };
        sketch + project + r * c * k
    }
}

/// A small deterministic generator (SplitMix64) for sketches and noise: no dependency, and the
/// same seed gives the same sketch on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        (2.0 * self.unit() - 1.0) as f32
    }
    /// Standard normal (Box–Muller).
    pub fn gauss(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The columns the subspace is estimated on, gathered as a `rows × s` matrix from `x` given as
/// `blocks` side-by-side blocks (`[blocks, rows, cols]`): `None` when that is every column of a
/// single block (use `x` itself); every column when the matrix is narrow; otherwise one column
/// drawn at random from each of `s` equal strata of the `blocks·cols` columns.
fn sample_columns(
    x: &[f32],
    blocks: usize,
    rows: usize,
    cols: usize,
    opts: &DecompOptions,
    seed: u64,
) -> Option<Vec<f32>> {
    let total = blocks * cols;
    let picks: Vec<usize> = match sampled_count(rows, total, opts) {
        Some(want) => {
            let mut rng = SplitMix::new(seed ^ 0x5a5a_5a5a_a5a5_a5a5);
            (0..want)
                .map(|j| {
                    let lo = j * total / want;
                    let hi = ((j + 1) * total / want).max(lo + 1);
                    lo + (rng.next_u64() % (hi - lo) as u64) as usize
                })
                .collect()
        }
        None if blocks <= 1 => return None,
        None => (0..total).collect(),
    };
    let s = picks.len();
    let mut xs = vec![0f32; rows * s];
    for (j, &g) in picks.iter().enumerate() {
        let (blk, p) = (g / cols.max(1), g % cols.max(1));
        for i in 0..rows {
            if let (Some(d), Some(&v)) = (xs.get_mut(i * s + j), x.get((blk * rows + i) * cols + p))
            {
                *d = v;
            }
        }
    }
    Some(xs)
}

/// How many columns the subspace is estimated on, when fewer than all (see [`sample_columns`]).
fn sampled_count(rows: usize, cols: usize, opts: &DecompOptions) -> Option<usize> {
    if opts.sample_cols == 0 {
        return None;
    }
    let want = opts.sample_cols.max(rows);
    (cols > 2 * want).then_some(want)
}

/// The candidate components of a sketch: `Uᵀ` (`q × rows`, orthonormal rows ordered by the
/// energy they capture in `xs`), those energies, and `B = Qᵀ·xs` with its eigenvectors (for
/// the exact projection when `xs` is the whole matrix).
struct Components {
    q: usize,
    ut: Vec<f32>,
    lambda: Vec<f64>,
    /// `Eᵀ·B` (`q × scols`): the projections of `xs` on the components.
    proj: Vec<f32>,
}

fn components(
    xs: &[f32],
    rows: usize,
    scols: usize,
    s: usize,
    opts: &DecompOptions,
    seed: u64,
) -> Components {
    // Sketch: Yᵀ (s × rows) = Ωᵀ (s × scols) · Xᵀ.
    let mut rng = SplitMix::new(seed);
    let omega_t: Vec<f32> = (0..s * scols).map(|_| rng.sym()).collect();
    let mut yt = vec![0f32; s * rows];
    sgemm(
        s,
        scols,
        rows,
        1.0,
        View::rows(&omega_t, scols),
        View::transposed(xs, scols),
        0.0,
        &mut yt,
    );
    let mut q = orthonormalize(&mut yt, s, rows);
    let mut b = vec![0f32; s * scols];
    for _ in 0..opts.power_iters {
        // B = Qᵀ·X (q × cols), then Yᵀ = B·Xᵀ (q × rows).
        sgemm(
            q,
            rows,
            scols,
            1.0,
            View::rows(&yt, rows),
            View::rows(xs, scols),
            0.0,
            &mut b,
        );
        let mut y2 = vec![0f32; q * rows];
        sgemm(
            q,
            scols,
            rows,
            1.0,
            View::rows(&b, scols),
            View::transposed(xs, scols),
            0.0,
            &mut y2,
        );
        q = orthonormalize(&mut y2, q, rows);
        yt = y2;
    }
    // B = Qᵀ·X (q × cols).
    b.resize(q * scols, 0.0);
    sgemm(
        q,
        rows,
        scols,
        1.0,
        View::rows(&yt, rows),
        View::rows(xs, scols),
        0.0,
        &mut b,
    );
    // Gram of B (q × q) in f64, eigen-decomposed: B·Bᵀ = E·Λ·Eᵀ.
    let mut gram = vec![0f64; q * q];
    for i in 0..q {
        let bi = &b[i * scols..(i + 1) * scols];
        for j in i..q {
            let bj = &b[j * scols..(j + 1) * scols];
            let d: f64 = bi
                .iter()
                .zip(bj)
                .map(|(&a, &c)| f64::from(a) * f64::from(c))
                .sum();
            gram[i * q + j] = d;
            gram[j * q + i] = d;
        }
    }
    let (lambda, evec) = sym_eigen(&mut gram, q);
    // Eᵀ (q × q), then Uᵀ = Eᵀ·Qᵀ (q × rows) and Eᵀ·B (q × scols).
    let mut et = vec![0f32; q * q];
    for j in 0..q {
        for i in 0..q {
            et[j * q + i] = evec[i * q + j] as f32;
        }
    }
    let mut ut = vec![0f32; q * rows];
    sgemm(
        q,
        q,
        rows,
        1.0,
        View::rows(&et, q),
        View::rows(&yt, rows),
        0.0,
        &mut ut,
    );
    let mut proj = vec![0f32; q * scols];
    sgemm(
        q,
        q,
        scols,
        1.0,
        View::rows(&et, q),
        View::rows(&b, scols),
        0.0,
        &mut proj,
    );
    Components {
        q,
        ut,
        lambda,
        proj,
    }
}

/// Decompose `x` (`rows × cols`, row-major): keep `spec` components, return `U`, `V`, `R`.
/// `seed` fixes the random sketch. Errors on a size mismatch or a non-finite element.
///
/// The subspace is estimated on a sample of the columns when the matrix is wide
/// ([`DecompOptions::sample_cols`]); `V = Uᵀ·X` and the residual are then computed on every
/// column, so `U·V + R = X` holds whatever the sample, and the energy rule is checked on the
/// exact `‖R‖²/‖X‖²`: components are added (and the sketch widened) until it holds or the rank
/// cap is reached.
pub fn decompose(
    x: &[f32],
    rows: usize,
    cols: usize,
    spec: RankSpec,
    opts: &DecompOptions,
    seed: u64,
) -> Result<LowRank, AsymError> {
    decompose_blocks(x, 1, rows, cols, spec, opts, seed)
}

/// [`decompose`] of the matrix `[X₀ | X₁ | … ]` (`rows × blocks·cols`) whose blocks are laid out
/// one after the other in `x` (`[blocks, rows, cols]`, e.g. a batch `[N, C, H·W]` decomposed
/// with one basis for the batch). `V` comes back as `[blocks, k, cols]` and `R` as
/// `[blocks, rows, cols]`, the layout of the input: nothing is transposed.
pub fn decompose_blocks(
    x: &[f32],
    blocks: usize,
    rows: usize,
    cols: usize,
    spec: RankSpec,
    opts: &DecompOptions,
    seed: u64,
) -> Result<LowRank, AsymError> {
    let n = blocks
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| AsymError::Shape(format!("matrix {rows}×{blocks}·{cols} is too large")))?;
    if x.len() != n {
        return Err(AsymError::Shape(format!(
            "decompose: {} values for a {rows}×{} matrix",
            x.len(),
            blocks * cols
        )));
    }
    let total: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    if !total.is_finite() {
        let i = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(AsymError::Input(format!(
            "element {i} of the layer input is not finite"
        )));
    }
    let (want, threshold) = match spec {
        RankSpec::Fixed(k) => (k, None),
        RankSpec::Energy {
            threshold,
            max_rank,
        } => (max_rank.max(1), Some(f64::from(threshold))),
    };
    let all_cols = blocks * cols;
    let kmax = want.min(rows.min(all_cols));
    if total == 0.0 || kmax == 0 {
        return Ok(LowRank {
            rows,
            cols: all_cols,
            rank: 0,
            u: Vec::new(),
            v: Vec::new(),
            residual: x.to_vec(),
            energy: if total == 0.0 { 0.0 } else { 1.0 },
        });
    }
    let sampled = sample_columns(x, blocks, rows, cols, opts, seed);
    let (xs, scols) = match &sampled {
        Some(v) => (v.as_slice(), v.len() / rows.max(1)),
        None => (x, cols),
    };
    // Only a whole single block gives the sketch's own projections on every column.
    let exact_proj = sampled.is_none();
    let full = rows.min(scols);
    // The energy rule starts from a narrow sketch and widens it only when needed.
    let mut s = match threshold {
        None => kmax + opts.oversample,
        Some(_) => kmax.min(8) + opts.oversample,
    }
    .min(full);
    let mut attempt = 0u64;
    loop {
        let c = components(xs, rows, scols, s, opts, seed.wrapping_add(attempt));
        let kcap = kmax.min(c.q);
        // V = Uᵀ·X for the first `m` components, `[blocks, m, cols]`.
        let project = |m: usize| -> Vec<f32> {
            if exact_proj {
                return c.proj[..m * cols].to_vec();
            }
            let mut v = vec![0f32; blocks * m * cols];
            v.par_chunks_mut((m * cols).max(1))
                .zip(x.par_chunks((rows * cols).max(1)))
                .for_each(|(vb, xb)| {
                    sgemm(
                        m,
                        rows,
                        cols,
                        1.0,
                        View::rows(&c.ut[..m * rows], rows),
                        View::rows(xb, cols),
                        0.0,
                        vb,
                    );
                });
            v
        };
        let (k, v) = match threshold {
            None => (kcap, project(kcap)),
            Some(t) => {
                // Every candidate's exact energy (U is orthonormal: ‖V‖² adds up per row),
                // then the smallest rank that meets the threshold.
                let vq = project(kcap);
                let mut per = vec![0f64; kcap];
                for vb in vq.chunks((kcap * cols).max(1)) {
                    for (j, row) in vb.chunks(cols.max(1)).enumerate() {
                        if let Some(e) = per.get_mut(j) {
                            *e += row
                                .iter()
                                .map(|&a| f64::from(a) * f64::from(a))
                                .sum::<f64>();
                        }
                    }
                }
                let mut kept = 0f64;
                let mut k = None;
                for (j, e) in per.iter().enumerate() {
                    kept += e;
                    if (total - kept) / total <= t {
                        k = Some(j + 1);
                        break;
                    }
                }
                match k {
                    Some(k) => (k, keep_rows(&vq, blocks, kcap, k, cols)),
                    None if kcap < kmax && s < full => {
                        s = (2 * s).min(full);
                        attempt += 1;
                        continue;
                    }
                    None if kcap < kmax
                        && opts.sample_cols != 0
                        && sampled_count(rows, all_cols, opts).is_some() =>
                    {
                        // The sample misses a direction the threshold needs: use every column.
                        let all = DecompOptions {
                            sample_cols: 0,
                            ..*opts
                        };
                        return decompose_blocks(x, blocks, rows, cols, spec, &all, seed);
                    }
                    None => (kcap, vq),
                }
            }
        };
        let mut u = vec![0f32; rows * k];
        for j in 0..k {
            for i in 0..rows {
                u[i * k + j] = c.ut[j * rows + i];
            }
        }
        let mut residual = x.to_vec();
        let rr: f64 = residual
            .par_chunks_mut((rows * cols).max(1))
            .zip(v.par_chunks((k * cols).max(1)))
            .map(|(rb, vb)| {
                if k > 0 {
                    sgemm(
                        rows,
                        k,
                        cols,
                        -1.0,
                        View::rows(&u, k),
                        View::rows(vb, cols),
                        1.0,
                        rb,
                    );
                }
                rb.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>()
            })
            .sum();
        return Ok(LowRank {
            rows,
            cols: all_cols,
            rank: k,
            u,
            v,
            residual,
            energy: rr / total,
        });
    }
}

/// The first `k` of `m` rows of every block of `v` (`[blocks, m, cols]` → `[blocks, k, cols]`).
fn keep_rows(v: &[f32], blocks: usize, m: usize, k: usize, cols: usize) -> Vec<f32> {
    if k == m {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(blocks * k * cols);
    for vb in v.chunks((m * cols).max(1)) {
        out.extend_from_slice(vb.get(..k * cols).unwrap_or(vb));
    }
    out
}

/// The residual energy `‖R‖²/‖X‖²` the best rank-`k` basis leaves, for `k = 0, 1, …` up to
/// `max_k` (or the sketch's rank), estimated from the eigenvalues of a sketch of `x` (on sampled
/// columns for a wide matrix, one extra subspace iteration): what [`crate::select`] chooses
/// ranks from. Entry 0 is 1 (0 for a zero matrix).
pub fn energy_curve(
    x: &[f32],
    blocks: usize,
    rows: usize,
    cols: usize,
    max_k: usize,
    opts: &DecompOptions,
    seed: u64,
) -> Result<Vec<f64>, AsymError> {
    if blocks.checked_mul(rows).and_then(|v| v.checked_mul(cols)) != Some(x.len()) {
        return Err(AsymError::Shape(format!(
            "energy curve: {} values for a {rows}×{blocks}·{cols} matrix",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(AsymError::Input(format!(
            "element {i} of the layer input is not finite"
        )));
    }
    let sampled = sample_columns(x, blocks, rows, cols, opts, seed);
    let (xs, scols) = match &sampled {
        Some(v) => (v.as_slice(), v.len() / rows.max(1)),
        None => (x, cols),
    };
    let full = rows.min(scols);
    let stotal: f64 = xs.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    if stotal == 0.0 || full == 0 {
        return Ok(vec![0.0; max_k.min(rows.min(blocks * cols)) + 1]);
    }
    let s = (max_k + opts.oversample).min(full);
    let tuned = DecompOptions {
        power_iters: opts.power_iters + 1,
        ..*opts
    };
    let c = components(xs, rows, scols, s, &tuned, seed);
    let mut curve = Vec::with_capacity(max_k.min(c.q) + 1);
    let mut kept = 0f64;
    curve.push(1.0);
    for &l in c.lambda.iter().take(max_k.min(c.q)) {
        kept += l.max(0.0);
        curve.push(((stotal - kept) / stotal).max(0.0));
    }
    Ok(curve)
}

/// Orthonormalize the first `m` rows (length `len`) of `a` in place by modified Gram–Schmidt,
/// twice for stability; rows that vanish are dropped. Returns the number of rows kept (packed
/// at the front).
fn orthonormalize(a: &mut [f32], m: usize, len: usize) -> usize {
    let mut kept = 0usize;
    for i in 0..m {
        let mut row: Vec<f64> = a[i * len..(i + 1) * len]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let norm0 = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm0 == 0.0 {
            continue;
        }
        for _ in 0..2 {
            for j in 0..kept {
                let qj = &a[j * len..(j + 1) * len];
                let d: f64 = row.iter().zip(qj).map(|(r, &q)| r * f64::from(q)).sum();
                for (r, &q) in row.iter_mut().zip(qj) {
                    *r -= d * f64::from(q);
                }
            }
        }
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm <= 1e-6 * norm0 {
            continue;
        }
        for (dst, r) in a[kept * len..(kept + 1) * len].iter_mut().zip(&row) {
            *dst = (r / norm) as f32;
        }
        kept += 1;
    }
    kept
}

/// Eigen-decomposition of a symmetric `n × n` matrix (cyclic Jacobi). Returns eigenvalues in
/// descending order and the eigenvectors as the columns of an `n × n` row-major matrix.
fn sym_eigen(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..60 {
        let mut off = 0f64;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off <= 1e-30 * scale || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = if theta == 0.0 {
                    1.0
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let lambda = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vs = vec![0f64; n * n];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vs[k * n + new] = v[k * n + old];
        }
    }
    (lambda, vs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_low_rank_matrix_is_captured() {
        // X = a·bᵀ + c·dᵀ (rank 2), 6 × 9.
        let (r, c) = (6, 9);
        let mut x = vec![0f32; r * c];
        for i in 0..r {
            for j in 0..c {
                x[i * c + j] = (i as f32 + 1.0) * (j as f32 - 3.0) + ((i * j) % 3) as f32;
            }
        }
        let lr = decompose(&x, r, c, RankSpec::Fixed(3), &DecompOptions::default(), 7).unwrap();
        assert!(lr.energy < 1e-10, "energy {}", lr.energy);
        let e = decompose(
            &x,
            r,
            c,
            RankSpec::Energy {
                threshold: 0.1,
                max_rank: 8,
            },
            &DecompOptions::default(),
            7,
        )
        .unwrap();
        assert!(e.rank >= 1 && e.energy <= 0.1);
    }

    #[test]
    fn eigen_of_diagonal_and_rotation() {
        let mut a = vec![2.0, 1.0, 1.0, 2.0];
        let (l, v) = sym_eigen(&mut a, 2);
        assert!((l[0] - 3.0).abs() < 1e-12 && (l[1] - 1.0).abs() < 1e-12);
        assert!((v[0].abs() - v[2].abs()).abs() < 1e-12);
    }
}
