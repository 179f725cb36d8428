//! The CPU twins of the kernels: what `Device::Cpu` computes. They are checked, like the GPU
//! kernels, against the independent references in [`crate::selftest`].

use crate::CudaError;

/// `out[i][c] = Σ_j w[i][j]·x[j][c] mod p` for `w: m × k` (entries < p) and `x: k × d` digits.
pub fn label_matmul_mod(
    w: &[u32],
    x: &[u8],
    m: usize,
    k: usize,
    d: usize,
    p: u32,
) -> Result<Vec<u8>, CudaError> {
    crate::check_label_matmul(w, x, m, k, d, p)?;
    let mut out = vec![0u8; m * d];
    for (row, o) in w.chunks_exact(k.max(1)).zip(out.chunks_exact_mut(d.max(1))) {
        let mut acc = vec![0u64; d];
        for (&wj, xr) in row.iter().zip(x.chunks_exact(d.max(1))) {
            for (a, &v) in acc.iter_mut().zip(xr) {
                *a += u64::from(wj) * u64::from(v);
            }
        }
        for (oc, a) in o.iter_mut().zip(acc) {
            *oc = (a % u64::from(p)) as u8;
        }
    }
    Ok(out)
}

/// AES-128 of every 16-byte block of `data` under the round keys `rk`.
pub fn aes128_ecb(rk: &[u8; 176], data: &[u8]) -> Result<Vec<u8>, CudaError> {
    if !data.len().is_multiple_of(16) {
        return Err(CudaError::Shape(format!(
            "AES input of {} bytes is not a whole number of 16-byte blocks",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(data.len());
    for b in data.chunks_exact(16) {
        let mut blk = [0u8; 16];
        blk.copy_from_slice(b);
        out.extend_from_slice(&crate::soft_aes::encrypt(rk, &blk));
    }
    Ok(out)
}

/// `c = a·b` for row-major `a: m × k`, `b: k × n` (f64 accumulation per output, then f32).
pub fn sgemm(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>, CudaError> {
    crate::check_gemm(a, b, m, n, k)?;
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for t in 0..k {
                acc += f64::from(a[i * k + t]) * f64::from(b[t * n + j]);
            }
            c[i * n + j] = acc as f32;
        }
    }
    Ok(c)
}
