//! `tessera selftest`: every kernel on random inputs against its CPU twin.

use crate::{CudaError, Device, cpu, soft_aes};

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    /// What ran.
    pub name: String,
    /// Whether the device result equals the CPU twin's (exactly, or within 1e-4 relative for
    /// float GEMM).
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

/// Run every kernel on `dev` with inputs from `seed` and compare with the CPU twins.
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
        let want = cpu::label_matmul_mod(&w, &x, m, k, d, p)?;
        let got = dev.label_matmul_mod(&w, &x, m, k, d, p)?;
        out.push(Check {
            name: format!("label matmul mod {p}"),
            ok: got == want,
            detail: format!("{m}×{k} · {k}×{d}"),
        });
    }
    let key: [u8; 16] = core::array::from_fn(|_| r.next() as u8);
    let data: Vec<u8> = (0..16 * 4099).map(|_| r.next() as u8).collect();
    let want = cpu::aes128_ecb(&soft_aes::expand_key(&key), &data)?;
    let got = dev.aes128_ecb(&key, &data)?;
    out.push(Check {
        name: "AES-128 ECB".into(),
        ok: got == want,
        detail: "4,099 blocks".into(),
    });
    for &(m, n, k) in &[(1usize, 1usize, 1usize), (33, 17, 65), (128, 200, 300)] {
        let a: Vec<f32> = (0..m * k)
            .map(|_| (r.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|_| (r.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let want = cpu::sgemm(&a, &b, m, n, k)?;
        let got = dev.sgemm(&a, &b, m, n, k)?;
        let worst = want
            .iter()
            .zip(&got)
            .map(|(w, g)| (w - g).abs() / w.abs().max(1.0))
            .fold(0f32, f32::max);
        out.push(Check {
            name: "float GEMM".into(),
            ok: got.len() == want.len() && worst <= 1e-4,
            detail: format!("{m}×{k} · {k}×{n}, worst relative difference {worst:.2e}"),
        });
    }
    Ok(out)
}
