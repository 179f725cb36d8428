//! Multiplication in GF(2^128) (modulus x^128 + x^7 + x^2 + x + 1) for the KOS consistency check:
//! carry-less products accumulated unreduced (reduction is linear, so it is done once per sum),
//! with PCLMULQDQ where the CPU has it (detected at run time) and a portable twin that the
//! tests check it against.

/// An unreduced 256-bit carry-less product (low, high).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wide(pub u128, pub u128);

impl std::ops::BitXorAssign for Wide {
    fn bitxor_assign(&mut self, o: Wide) {
        self.0 ^= o.0;
        self.1 ^= o.1;
    }
}

/// 64 × 64 → 128 carry-less product, portable.
fn clmul64(a: u64, b: u64) -> u128 {
    let mut r = 0u128;
    for i in 0..64 {
        let m = ((b >> i) & 1) as u128;
        r ^= (u128::from(a) << i) & m.wrapping_neg();
    }
    r
}

/// 128 × 128 → 256 carry-less product, portable.
pub fn mul_wide_portable(a: u128, b: u128) -> Wide {
    let (a0, a1) = (a as u64, (a >> 64) as u64);
    let (b0, b1) = (b as u64, (b >> 64) as u64);
    let lo = clmul64(a0, b0);
    let hi = clmul64(a1, b1);
    let mid = clmul64(a0, b1) ^ clmul64(a1, b0);
    Wide(lo ^ (mid << 64), hi ^ (mid >> 64))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse2")]
fn mul_wide_clmul(a: u128, b: u128) -> Wide {
    use std::arch::x86_64::{
        __m128i, _mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_set_epi64x, _mm_srli_si128,
    };
    let va = _mm_set_epi64x((a >> 64) as i64, a as i64);
    let vb = _mm_set_epi64x((b >> 64) as i64, b as i64);
    let lo = _mm_clmulepi64_si128(va, vb, 0x00);
    let hi = _mm_clmulepi64_si128(va, vb, 0x11);
    let m1 = _mm_clmulepi64_si128(va, vb, 0x10);
    let m2 = _mm_clmulepi64_si128(va, vb, 0x01);
    let get = |v: __m128i| -> u128 {
        let l = _mm_cvtsi128_si64(v) as u64;
        let h = _mm_cvtsi128_si64(_mm_srli_si128(v, 8)) as u64;
        u128::from(l) | (u128::from(h) << 64)
    };
    let (lo, hi, mid) = (get(lo), get(hi), get(m1) ^ get(m2));
    Wide(lo ^ (mid << 64), hi ^ (mid >> 64))
}

/// 128 × 128 → 256 carry-less product on the fastest path this CPU has.
pub fn mul_wide(a: u128, b: u128) -> Wide {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("pclmulqdq") {
            // SAFETY: the CPU has PCLMULQDQ (checked just above); SSE2 is part of x86-64.
            return unsafe { mul_wide_clmul(a, b) };
        }
    }
    mul_wide_portable(a, b)
}

/// Reduce a 256-bit value modulo x^128 + x^7 + x^2 + x + 1.
pub fn reduce(w: Wide) -> u128 {
    let Wide(mut lo, hi) = w;
    // x^128 ≡ x^7 + x^2 + x + 1: fold the high half in twice.
    let fold = |h: u128| -> (u128, u128) {
        let l = h ^ (h << 1) ^ (h << 2) ^ (h << 7);
        let over = (h >> 127) ^ (h >> 126) ^ (h >> 121);
        (l, over)
    };
    let (l1, over) = fold(hi);
    lo ^= l1;
    let (l2, _) = fold(over);
    lo ^ l2
}

/// `a·b` in GF(2^128).
pub fn mul(a: u128, b: u128) -> u128 {
    reduce(mul_wide(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_path_agrees_and_the_field_laws_hold() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        for _ in 0..200 {
            let (a, b, c): (u128, u128, u128) = (rng.random(), rng.random(), rng.random());
            assert_eq!(mul_wide(a, b), mul_wide_portable(a, b));
            assert_eq!(mul(a, b), mul(b, a));
            assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
            assert_eq!(mul(mul(a, b), c), mul(a, mul(b, c)));
            assert_eq!(mul(a, 1), a);
        }
        // x · x^127 = x^128 = x^7 + x^2 + x + 1.
        assert_eq!(mul(2, 1 << 127), 0x87);
    }
}
