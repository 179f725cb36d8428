//! The enclave's decomposition: a per-matrix low-rank part `U·V` and the residual `R = X − U·V`.
//!
//! Method: a randomized range finder (Halko–Martinsson–Tropp) with optional subspace (power)
//! iterations, then an exact eigen-decomposition of the small Gram matrix of the sketch, so the
//! kept components come ordered by captured energy. `U` has orthonormal columns and
//! `V = Uᵀ·X`, hence `‖R‖² = ‖X‖² − ‖V‖²` and every choice of rank keeps `U·V + R = X` up to
//! float rounding: a rough factorization costs no accuracy, it only moves work and information.
//! The products are BLAS-3 (`engine::gemm::sgemm`), the only O(s³) step is the Jacobi
//! eigen-solve of an `s × s` matrix, with `s = rank + oversampling` (a few dozen at most).

use crate::AsymError;
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
}

impl Default for DecompOptions {
    fn default() -> Self {
        Self {
            oversample: 4,
            power_iters: 1,
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
    pub fn cost_macs(rows: usize, cols: usize, k: usize, opts: &DecompOptions) -> u64 {
        let full = rows.min(cols);
        let s = (k + opts.oversample).min(full) as u64;
        let (r, c, k) = (rows as u64, cols as u64, k.min(full) as u64);
        (2 + 2 * opts.power_iters as u64) * r * c * s + s * s * c + k * s * (r + c) + r * c * k
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

/// Decompose `x` (`rows × cols`, row-major): keep `spec` components, return `U`, `V`, `R`.
/// `seed` fixes the random sketch. Errors on a size mismatch or a non-finite element.
pub fn decompose(
    x: &[f32],
    rows: usize,
    cols: usize,
    spec: RankSpec,
    opts: &DecompOptions,
    seed: u64,
) -> Result<LowRank, AsymError> {
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| AsymError::Shape(format!("matrix {rows}×{cols} is too large")))?;
    if x.len() != n {
        return Err(AsymError::Shape(format!(
            "decompose: {} values for a {rows}×{cols} matrix",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(AsymError::Input(format!(
            "element {i} of the layer input is not finite"
        )));
    }
    let total: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let (want, threshold) = match spec {
        RankSpec::Fixed(k) => (k, None),
        RankSpec::Energy {
            threshold,
            max_rank,
        } => (max_rank.max(1), Some(f64::from(threshold))),
    };
    let kmax = want.min(rows.min(cols));
    if total == 0.0 || kmax == 0 {
        return Ok(LowRank {
            rows,
            cols,
            rank: 0,
            u: Vec::new(),
            v: Vec::new(),
            residual: x.to_vec(),
            energy: if total == 0.0 { 0.0 } else { 1.0 },
        });
    }
    let s = (kmax + opts.oversample).min(rows.min(cols));
    // Sketch: Yᵀ (s × rows) = Ωᵀ (s × cols) · Xᵀ.
    let mut rng = SplitMix::new(seed);
    let omega_t: Vec<f32> = (0..s * cols).map(|_| rng.sym()).collect();
    let mut yt = vec![0f32; s * rows];
    sgemm(
        s,
        cols,
        rows,
        1.0,
        View::rows(&omega_t, cols),
        View::transposed(x, cols),
        0.0,
        &mut yt,
    );
    let mut q = orthonormalize(&mut yt, s, rows);
    let mut b = vec![0f32; s * cols];
    for _ in 0..opts.power_iters {
        // Bᵀ-side: B = Qᵀ·X (q × cols), then Yᵀ = B·Xᵀ (q × rows).
        sgemm(
            q,
            rows,
            cols,
            1.0,
            View::rows(&yt, rows),
            View::rows(x, cols),
            0.0,
            &mut b,
        );
        let mut y2 = vec![0f32; q * rows];
        sgemm(
            q,
            cols,
            rows,
            1.0,
            View::rows(&b, cols),
            View::transposed(x, cols),
            0.0,
            &mut y2,
        );
        q = orthonormalize(&mut y2, q, rows);
        yt = y2;
    }
    // B = Qᵀ·X (q × cols).
    b.resize(q * cols, 0.0);
    sgemm(
        q,
        rows,
        cols,
        1.0,
        View::rows(&yt, rows),
        View::rows(x, cols),
        0.0,
        &mut b,
    );
    // Gram of B (q × q) in f64, eigen-decomposed: B·Bᵀ = E·Λ·Eᵀ.
    let mut gram = vec![0f64; q * q];
    for i in 0..q {
        let bi = &b[i * cols..(i + 1) * cols];
        for j in i..q {
            let bj = &b[j * cols..(j + 1) * cols];
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
    let kcap = kmax.min(q);
    let k = match threshold {
        None => kcap,
        Some(t) => {
            let mut kept = 0f64;
            let mut k = kcap;
            for (i, &l) in lambda.iter().enumerate().take(kcap) {
                kept += l.max(0.0);
                if (total - kept) / total <= t {
                    k = i + 1;
                    break;
                }
            }
            k.max(1)
        }
    };
    // Eₖᵀ (k × q), then Uᵀ = Eₖᵀ·Qᵀ (k × rows) and V = Eₖᵀ·B (k × cols).
    let mut ekt = vec![0f32; k * q];
    for j in 0..k {
        for i in 0..q {
            ekt[j * q + i] = evec[i * q + j] as f32;
        }
    }
    let mut ut = vec![0f32; k * rows];
    sgemm(
        k,
        q,
        rows,
        1.0,
        View::rows(&ekt, q),
        View::rows(&yt, rows),
        0.0,
        &mut ut,
    );
    let mut v = vec![0f32; k * cols];
    sgemm(
        k,
        q,
        cols,
        1.0,
        View::rows(&ekt, q),
        View::rows(&b, cols),
        0.0,
        &mut v,
    );
    let mut u = vec![0f32; rows * k];
    for j in 0..k {
        for i in 0..rows {
            u[i * k + j] = ut[j * rows + i];
        }
    }
    let mut residual = x.to_vec();
    sgemm(
        rows,
        k,
        cols,
        -1.0,
        View::rows(&u, k),
        View::rows(&v, cols),
        1.0,
        &mut residual,
    );
    let rr: f64 = residual.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    Ok(LowRank {
        rows,
        cols,
        rank: k,
        u,
        v,
        residual,
        energy: rr / total,
    })
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
