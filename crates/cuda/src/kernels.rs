//! CUDA C sources of the worker's kernels, compiled at run time with NVRTC.
//!
//! Each kernel has a CPU twin in [`crate::cpu`] computing the same function; the equivalence
//! tests compare them on random inputs where a GPU is present. The AES kernel is written
//! byte-wise (S-box table, `xtime`) exactly as [`crate::soft_aes`] is in Rust, which is tested
//! against the `aes` crate on every machine.

/// Kernel names, in the order the module loads them.
pub const NAMES: [&str; 3] = ["label_matmul_mod", "aes128_ecb", "sgemm_tiled"];

/// Tile edge of `sgemm_tiled` (threads per block = TILE²).
pub const TILE: u32 = 16;

/// The CUDA C source of every kernel.
pub const SOURCE: &str = r#"
extern "C" __global__ void label_matmul_mod(
    const unsigned int* __restrict__ w,      // [m, k], entries already reduced mod p
    const unsigned char* __restrict__ x,     // [k, d], digits mod p
    unsigned char* __restrict__ out,         // [m, d]
    unsigned int m, unsigned int k, unsigned int d, unsigned int p)
{
    unsigned int col = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned int row = blockIdx.y;
    if (row >= m || col >= d) return;
    unsigned long long acc = 0;
    const unsigned int* wr = w + (unsigned long long)row * k;
    for (unsigned int j = 0; j < k; ++j) {
        acc += (unsigned long long)wr[j] * x[(unsigned long long)j * d + col];
    }
    out[(unsigned long long)row * d + col] = (unsigned char)(acc % p);
}

__device__ __forceinline__ unsigned char xtime(unsigned char b) {
    return (unsigned char)((b << 1) ^ ((b & 0x80) ? 0x1b : 0x00));
}

// AES-128 encryption of n blocks under expanded round keys rk[176]; sbox[256].
extern "C" __global__ void aes128_ecb(
    const unsigned char* __restrict__ rk,
    const unsigned char* __restrict__ sbox_g,
    const unsigned char* __restrict__ in,
    unsigned char* __restrict__ out,
    unsigned int n)
{
    __shared__ unsigned char sbox[256];
    __shared__ unsigned char keys[176];
    for (unsigned int i = threadIdx.x; i < 256; i += blockDim.x) sbox[i] = sbox_g[i];
    for (unsigned int i = threadIdx.x; i < 176; i += blockDim.x) keys[i] = rk[i];
    __syncthreads();
    unsigned int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n) return;
    unsigned char s[16];
    for (int i = 0; i < 16; ++i) s[i] = in[(unsigned long long)b * 16 + i] ^ keys[i];
    for (int r = 1; r <= 10; ++r) {
        unsigned char t[16];
        // SubBytes + ShiftRows: state is column-major, byte i = row (i % 4), column (i / 4).
        for (int c = 0; c < 4; ++c)
            for (int row = 0; row < 4; ++row)
                t[c * 4 + row] = sbox[s[((c + row) % 4) * 4 + row]];
        if (r != 10) {
            for (int c = 0; c < 4; ++c) {
                unsigned char a0 = t[c * 4], a1 = t[c * 4 + 1], a2 = t[c * 4 + 2], a3 = t[c * 4 + 3];
                unsigned char all = a0 ^ a1 ^ a2 ^ a3;
                t[c * 4]     = a0 ^ all ^ xtime(a0 ^ a1);
                t[c * 4 + 1] = a1 ^ all ^ xtime(a1 ^ a2);
                t[c * 4 + 2] = a2 ^ all ^ xtime(a2 ^ a3);
                t[c * 4 + 3] = a3 ^ all ^ xtime(a3 ^ a0);
            }
        }
        for (int i = 0; i < 16; ++i) s[i] = t[i] ^ keys[r * 16 + i];
    }
    for (int i = 0; i < 16; ++i) out[(unsigned long long)b * 16 + i] = s[i];
}

// C[m, n] = A[m, k] * B[k, n], row-major, shared-memory tiles of 16 x 16.
extern "C" __global__ void sgemm_tiled(
    const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
    unsigned int m, unsigned int n, unsigned int k)
{
    __shared__ float ta[16][16];
    __shared__ float tb[16][16];
    unsigned int row = blockIdx.y * 16 + threadIdx.y;
    unsigned int col = blockIdx.x * 16 + threadIdx.x;
    float acc = 0.0f;
    for (unsigned int t = 0; t < k; t += 16) {
        ta[threadIdx.y][threadIdx.x] = (row < m && t + threadIdx.x < k) ? a[(unsigned long long)row * k + t + threadIdx.x] : 0.0f;
        tb[threadIdx.y][threadIdx.x] = (col < n && t + threadIdx.y < k) ? b[(unsigned long long)(t + threadIdx.y) * n + col] : 0.0f;
        __syncthreads();
        for (int i = 0; i < 16; ++i) acc += ta[threadIdx.y][i] * tb[i][threadIdx.x];
        __syncthreads();
    }
    if (row < m && col < n) c[(unsigned long long)row * n + col] = acc;
}
"#;

/// Grid and block for `label_matmul_mod` over an `m × d` output: one block row per output row.
pub fn label_matmul_launch(m: u32, d: u32) -> ((u32, u32, u32), (u32, u32, u32)) {
    let threads = 256u32;
    ((d.div_ceil(threads).max(1), m.max(1), 1), (threads, 1, 1))
}

/// Grid and block for `aes128_ecb` over `n` blocks.
pub fn aes_launch(n: u32) -> ((u32, u32, u32), (u32, u32, u32)) {
    let threads = 256u32;
    ((n.div_ceil(threads).max(1), 1, 1), (threads, 1, 1))
}

/// Grid and block for `sgemm_tiled` over an `m × n` output.
pub fn sgemm_launch(m: u32, n: u32) -> ((u32, u32, u32), (u32, u32, u32)) {
    (
        (n.div_ceil(TILE).max(1), m.max(1).div_ceil(TILE), 1),
        (TILE, TILE, 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_in_the_source() {
        for n in NAMES {
            assert!(
                SOURCE.contains(&format!("extern \"C\" __global__ void {n}(")),
                "{n}"
            );
        }
    }

    #[test]
    fn launches_cover_their_outputs() {
        let ((gx, gy, _), (bx, _, _)) = label_matmul_launch(7, 1000);
        assert!(gx * bx >= 1000 && gy == 7);
        let ((gx, _, _), (bx, _, _)) = aes_launch(257);
        assert!(gx * bx >= 257);
        let ((gx, gy, _), (bx, by, _)) = sgemm_launch(33, 17);
        assert!(gx * bx >= 17 && gy * by >= 33);
    }
}
