//! Matrix products for the engines: `matrixmultiply`'s blocked f32/f64 kernels, split across
//! threads with rayon along the larger output dimension, and an exact i64 fallback.

use rayon::prelude::*;

/// Work (m·n·k) below which a product runs on one thread.
const PAR_THRESHOLD: usize = 1 << 17;

/// A row-major or transposed view of a matrix: element (i, j) at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    /// Data.
    pub data: &'a [T],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// Row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

macro_rules! par_gemm {
    ($name:ident, $ty:ty, $kernel:path) => {
        /// `C (m×n, row-major) = alpha·A·B + beta·C` for `A` m×k and `B` k×n views.
        ///
        /// Panics only on internal misuse (views shorter than their shapes); callers size them.
        #[allow(clippy::too_many_arguments)] // the BLAS gemm signature
        pub fn $name(
            m: usize,
            k: usize,
            n: usize,
            alpha: $ty,
            a: View<$ty>,
            b: View<$ty>,
            beta: $ty,
            c: &mut [$ty],
        ) {
            assert!(c.len() >= m * n, "gemm: output too small");
            if m == 0 || n == 0 {
                return;
            }
            if k > 0 {
                let last_a = (m - 1) * a.rs + (k - 1) * a.cs;
                let last_b = (k - 1) * b.rs + (n - 1) * b.cs;
                assert!(
                    last_a < a.data.len() && last_b < b.data.len(),
                    "gemm: operand too small"
                );
            }
            let threads = rayon::current_num_threads();
            let work = m.saturating_mul(n).saturating_mul(k.max(1));
            let parts = if work < PAR_THRESHOLD || threads < 2 {
                1
            } else {
                threads * 2
            };
            let cp = SendPtr(c.as_mut_ptr());
            let run = |i0: usize, i1: usize, j0: usize, j1: usize| {
                let cp = &cp;
                // SAFETY: bounds were checked above; each call writes a disjoint block of C
                // (rows i0..i1 × columns j0..j1) and only reads A and B.
                unsafe {
                    $kernel(
                        i1 - i0,
                        k,
                        j1 - j0,
                        alpha,
                        a.data.as_ptr().add(i0 * a.rs),
                        a.rs as isize,
                        a.cs as isize,
                        b.data.as_ptr().add(j0 * b.cs),
                        b.rs as isize,
                        b.cs as isize,
                        beta,
                        cp.0.add(i0 * n + j0),
                        n as isize,
                        1,
                    )
                }
            };
            if parts == 1 {
                run(0, m, 0, n);
            } else if m >= n {
                let step = m.div_ceil(parts);
                (0..m.div_ceil(step))
                    .into_par_iter()
                    .for_each(|t| run(t * step, ((t + 1) * step).min(m), 0, n));
            } else {
                let step = n.div_ceil(parts).max(16);
                (0..n.div_ceil(step))
                    .into_par_iter()
                    .for_each(|t| run(0, m, t * step, ((t + 1) * step).min(n)));
            }
        }
    };
}

par_gemm!(sgemm, f32, matrixmultiply::sgemm);
par_gemm!(dgemm, f64, matrixmultiply::dgemm);

/// Exact `C = A·B` over i64 with wrapping-free accumulation (callers check the bound first).
/// `a` is m×k row-major, `b` k×n row-major.
pub fn igemm(m: usize, k: usize, n: usize, a: &[i64], b: &[i64], c: &mut [i64]) {
    c[..m * n]
        .par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            row.fill(0);
            for p in 0..k {
                let av = a[i * k + p];
                if av == 0 {
                    continue;
                }
                let br = &b[p * n..(p + 1) * n];
                for (cv, &bv) in row.iter_mut().zip(br) {
                    *cv += av * bv;
                }
            }
        });
}
