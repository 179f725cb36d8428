//! `tessera selftest`: every kernel of a device against references that share no code with it.
//!
//! The references are written here, apart from the kernels and their CPU twins ([`crate::cpu`],
//! which is the device for `--device cpu`):
//!
//! * label matmul mod p: a scalar loop that reduces after every multiply-add (the kernels
//!   reduce once per output);
//! * AES-128: the FIPS-197 known-answer vectors (appendices B and C.1), and the RustCrypto
//!   `aes` crate on random blocks (the kernels use the byte-wise form of [`crate::soft_aes`]);
//! * float GEMM: integer-valued operands, for which every product and partial sum is exact in
//!   f32, against an i64 loop (the result must be equal, not close), and random operands
//!   against an f64 loop within 1e-4 relative.

use crate::{CudaError, Device};
use aes::cipher::{BlockCipherEncrypt, KeyInit};

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    /// What ran.
    pub name: String,
    /// Whether the device result equals the reference (exactly, or within 1e-4 relative for
    /// float GEMM on random operands).
    pub ok: bool,
    /// Detail (sizes, worst difference).
    pub detail: String,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `Σ_j w[i][j]·x[j][c] mod p`, reducing after every step.
pub fn reference_label_matmul(
    w: &[u32],
    x: &[u8],
    m: usize,
    k: usize,
    d: usize,
    p: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(m * d);
    for i in 0..m {
        for c in 0..d {
            let mut acc: u32 = 0;
            for j in 0..k {
                let prod = (w[i * k + j] % p) * (u32::from(x[j * d + c]) % p) % p;
                acc = (acc + prod) % p;
            }
            out.push(acc as u8);
        }
    }
    out
}

/// FIPS-197 known-answer vectors: (key, plaintext, ciphertext).
pub const FIPS197_VECTORS: [([u8; 16], [u8; 16], [u8; 16]); 2] = [
    // Appendix B (the cipher example).
    (
        [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ],
        [
            0x32, 0x43, 0xf6, 0xa8, 0x88, 0x5a, 0x30, 0x8d, 0x31, 0x31, 0x98, 0xa2, 0xe0, 0x37,
            0x07, 0x34,
        ],
        [
            0x39, 0x25, 0x84, 0x1d, 0x02, 0xdc, 0x09, 0xfb, 0xdc, 0x11, 0x85, 0x97, 0x19, 0x6a,
            0x0b, 0x32,
        ],
    ),
    // Appendix C.1 (AES-128).
    (
        [
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
            0x0e, 0x0f,
        ],
        [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ],
        [
            0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
            0xc5, 0x5a,
        ],
    ),
];

/// AES-128 ECB by the RustCrypto `aes` crate.
pub fn reference_aes128_ecb(key: &[u8; 16], data: &[u8]) -> Vec<u8> {
    let c = aes::Aes128::new(&(*key).into());
    let mut out = Vec::with_capacity(data.len());
    for b in data.chunks_exact(16) {
        let mut blk = [0u8; 16];
        blk.copy_from_slice(b);
        let mut blk = aes::Block::from(blk);
        c.encrypt_block(&mut blk);
        out.extend_from_slice(blk.as_slice());
    }
    out
}

/// `a·b` over integers.
pub fn reference_gemm_i64(a: &[i64], b: &[i64], m: usize, n: usize, k: usize) -> Vec<i64> {
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for t in 0..k {
            for j in 0..n {
                c[i * n + j] += a[i * k + t] * b[t * n + j];
            }
        }
    }
    c
}

/// Run every kernel on `dev` with inputs from `seed` and compare with the references.
pub fn run(dev: &Device, seed: u64) -> Result<Vec<Check>, CudaError> {
    let mut r = Rng(seed | 1);
    let mut out = Vec::new();
    for &(p, m, k, d) in &[
        (2u32, 3usize, 5usize, 128usize),
        (7, 16, 300, 36 * 45),
        (251, 4, 1000, 16),
    ] {
        let w: Vec<u32> = (0..m * k)
            .map(|_| (r.next() % u64::from(p)) as u32)
            .collect();
        let x: Vec<u8> = (0..k * d)
            .map(|_| (r.next() % u64::from(p)) as u8)
            .collect();
        let want = reference_label_matmul(&w, &x, m, k, d, p);
        let got = dev.label_matmul_mod(&w, &x, m, k, d, p)?;
        out.push(Check {
            name: format!("label matmul mod {p}"),
            ok: got == want,
            detail: format!("{m}×{k} · {k}×{d}, against a step-by-step scalar loop"),
        });
    }
    let kat_ok = FIPS197_VECTORS
        .iter()
        .map(|(key, pt, ct)| dev.aes128_ecb(key, pt).map(|got| got == ct))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .all(|ok| ok);
    out.push(Check {
        name: "AES-128 FIPS-197 vectors".into(),
        ok: kat_ok,
        detail: "appendices B and C.1".into(),
    });
    let key: [u8; 16] = core::array::from_fn(|_| r.next() as u8);
    let data: Vec<u8> = (0..16 * 4099).map(|_| r.next() as u8).collect();
    let want = reference_aes128_ecb(&key, &data);
    let got = dev.aes128_ecb(&key, &data)?;
    out.push(Check {
        name: "AES-128 ECB".into(),
        ok: got == want,
        detail: "4,099 random blocks, against the `aes` crate".into(),
    });
    for &(m, n, k) in &[(1usize, 1usize, 1usize), (33, 17, 65), (128, 200, 300)] {
        // Integers in −8..=8: every product and partial sum (≤ 64·300 < 2^24) is exact in f32.
        let ai: Vec<i64> = (0..m * k).map(|_| (r.next() % 17) as i64 - 8).collect();
        let bi: Vec<i64> = (0..k * n).map(|_| (r.next() % 17) as i64 - 8).collect();
        let want = reference_gemm_i64(&ai, &bi, m, n, k);
        let af: Vec<f32> = ai.iter().map(|&v| v as f32).collect();
        let bf: Vec<f32> = bi.iter().map(|&v| v as f32).collect();
        let got = dev.sgemm(&af, &bf, m, n, k)?;
        let exact = got.len() == want.len() && got.iter().zip(&want).all(|(&g, &w)| g == w as f32);
        out.push(Check {
            name: "float GEMM (exact integers)".into(),
            ok: exact,
            detail: format!("{m}×{k} · {k}×{n}, against an i64 loop"),
        });
        let a: Vec<f32> = (0..m * k)
            .map(|_| (r.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|_| (r.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let got = dev.sgemm(&a, &b, m, n, k)?;
        let mut worst = if got.len() == m * n {
            0f64
        } else {
            f64::INFINITY
        };
        for i in 0..m {
            for j in 0..n {
                let w: f64 = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(b[t * n + j]))
                    .sum();
                let g = got.get(i * n + j).map_or(f64::NAN, |&g| f64::from(g));
                let rel = (w - g).abs() / w.abs().max(1.0);
                worst = if rel.is_nan() {
                    f64::INFINITY
                } else {
                    worst.max(rel)
                };
            }
        }
        out.push(Check {
            name: "float GEMM".into(),
            ok: worst <= 1e-4,
            detail: format!(
                "{m}×{k} · {k}×{n}, against an f64 loop, worst relative difference {worst:.2e}"
            ),
        });
    }
    Ok(out)
}
