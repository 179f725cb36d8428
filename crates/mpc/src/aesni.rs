//! Fixed-key AES-128 for the hash's small batches (2 and 4 blocks per AND gate): AES-NI with the
//! blocks' rounds interleaved, where the CPU has it (detected at run time). The `aes` crate's
//! backend is tuned for long batches and pays a set-up per call that dominates at 2 blocks; the
//! crate remains the portable path and the reference the tests compare against.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};

/// AES-128 under one fixed key.
#[derive(Clone)]
pub enum FixedAes {
    /// AES-NI with the 11 expanded round keys.
    #[cfg(target_arch = "x86_64")]
    Ni([u128; 11]),
    /// The `aes` crate.
    Soft(Box<Aes128>),
}

impl FixedAes {
    /// The cipher under `key`, on AES-NI when the CPU has it.
    pub fn new(key: [u8; 16]) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("sse2")
            {
                // SAFETY: the CPU has AES-NI and SSE2 (checked just above).
                return FixedAes::Ni(unsafe { expand(key) });
            }
        }
        Self::soft(key)
    }

    /// The portable path (the `aes` crate), whatever the CPU.
    pub fn soft(key: [u8; 16]) -> Self {
        FixedAes::Soft(Box::new(Aes128::new(&Array::from(key))))
    }

    /// Encrypt `N` blocks (little-endian u128s) in place.
    #[inline(always)]
    pub fn encrypt<const N: usize>(&self, blocks: &mut [u128; N]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: this variant exists only when AES-NI and SSE2 were detected.
            FixedAes::Ni(rk) => unsafe { encrypt_ni(rk, blocks) },
            FixedAes::Soft(aes) => {
                let mut buf: [aes::Block; N] =
                    std::array::from_fn(|i| Array::from(blocks[i].to_le_bytes()));
                aes.encrypt_blocks(&mut buf);
                for (b, e) in blocks.iter_mut().zip(buf) {
                    *b = u128::from_le_bytes(e.0);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,sse2")]
fn expand(key: [u8; 16]) -> [u128; 11] {
    use std::arch::x86_64::*;
    #[inline]
    #[target_feature(enable = "sse2")]
    fn step(k: __m128i, g: __m128i) -> __m128i {
        let g = _mm_shuffle_epi32(g, 0xff);
        let mut k = k;
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
        _mm_xor_si128(k, g)
    }
    let mut out = [0u128; 11];
    // SAFETY: unaligned loads and stores of 16 bytes within `key` and `out`.
    unsafe {
        let mut k = _mm_loadu_si128(key.as_ptr().cast());
        _mm_storeu_si128(out.as_mut_ptr().cast(), k);
        macro_rules! round {
            ($i:expr, $rcon:expr) => {
                k = step(k, _mm_aeskeygenassist_si128(k, $rcon));
                _mm_storeu_si128(out.as_mut_ptr().add($i).cast(), k);
            };
        }
        round!(1, 0x01);
        round!(2, 0x02);
        round!(3, 0x04);
        round!(4, 0x08);
        round!(5, 0x10);
        round!(6, 0x20);
        round!(7, 0x40);
        round!(8, 0x80);
        round!(9, 0x1b);
        round!(10, 0x36);
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,sse2")]
fn encrypt_ni<const N: usize>(rk: &[u128; 11], blocks: &mut [u128; N]) {
    use std::arch::x86_64::*;
    // SAFETY: unaligned 16-byte loads and stores within `rk` and `blocks`.
    unsafe {
        let key = |i: usize| _mm_loadu_si128(rk.as_ptr().add(i).cast());
        let mut s: [__m128i; N] = std::array::from_fn(|j| {
            _mm_xor_si128(_mm_loadu_si128(blocks.as_ptr().add(j).cast()), key(0))
        });
        for r in 1..10 {
            let k = key(r);
            for v in s.iter_mut() {
                *v = _mm_aesenc_si128(*v, k);
            }
        }
        let k = key(10);
        for (j, v) in s.iter().enumerate() {
            _mm_storeu_si128(
                blocks.as_mut_ptr().add(j).cast(),
                _mm_aesenclast_si128(*v, k),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_path_is_aes_128() {
        // FIPS-197 Appendix C.1.
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let pt: [u8; 16] = core::array::from_fn(|i| (i as u8) * 0x11);
        let want = 0x5ac5_b470_80b7_cdd8_3004_7b6a_d8e0_c469u128;
        for aes in [FixedAes::new(key), FixedAes::soft(key)] {
            let mut b = [u128::from_le_bytes(pt)];
            aes.encrypt(&mut b);
            assert_eq!(b[0], want);
        }
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        for _ in 0..50 {
            let k: [u8; 16] = rng.random();
            let mut a: [u128; 4] = rng.random();
            let mut b = a;
            FixedAes::new(k).encrypt(&mut a);
            FixedAes::soft(k).encrypt(&mut b);
            assert_eq!(a, b);
        }
    }
}
