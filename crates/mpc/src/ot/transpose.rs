//! The IKNP matrix transpose: 128 rows of `m` bits (one per base OT) to `m` blocks of 128 bits
//! (one per extended OT). Block `j`'s bit `i` is bit `j` of row `i` (bit `j` of a row is bit
//! `j mod 8` of its byte `j / 8`).
//!
//! Two paths, the same output: SSE2 (`movemask` collects one bit of 16 rows at a time; every
//! x86-64 CPU has SSE2) and a portable one (8×8 bit-matrix transposes in a u64), which the tests
//! check the SIMD path against.

/// Transpose `rows` (128 rows of `m / 8` bytes each, row-major; `m` a multiple of 8) into the
/// first `m` blocks of `out` (resized to `m`).
pub fn transpose(rows: &[u8], m: usize, out: &mut Vec<Block>) {
    #[cfg(target_arch = "x86_64")]
    {
        transpose_sse2(rows, m, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        transpose_portable(rows, m, out)
    }
}

use crate::block::Block;

fn check(rows: &[u8], m: usize) -> usize {
    let rb = m / 8;
    debug_assert!(m.is_multiple_of(8) && rows.len() >= 128 * rb);
    rb
}

#[inline(always)]
fn transpose8(mut x: u64) -> u64 {
    let t = (x ^ (x >> 7)) & 0x00AA_00AA_00AA_00AA;
    x ^= t ^ (t << 7);
    let t = (x ^ (x >> 14)) & 0x0000_CCCC_0000_CCCC;
    x ^= t ^ (t << 14);
    let t = (x ^ (x >> 28)) & 0x0000_0000_F0F0_F0F0;
    x ^= t ^ (t << 28);
    x
}

/// The portable path.
pub fn transpose_portable(rows: &[u8], m: usize, out: &mut Vec<Block>) {
    let rb = check(rows, m);
    out.clear();
    out.resize(m, Block::ZERO);
    for c in 0..rb {
        for g in 0..16 {
            let mut x = 0u64;
            for k in 0..8 {
                x |= u64::from(rows[(8 * g + k) * rb + c]) << (8 * k);
            }
            let y = transpose8(x);
            for k in 0..8 {
                out[8 * c + k].0 |= u128::from((y >> (8 * k)) as u8) << (8 * g);
            }
        }
    }
}

/// The SSE2 path: tiles of 16 rows × 16 column bytes are loaded whole, transposed in registers
/// (four rounds of byte interleaving — each round rotates the 8-bit (row, byte) index by one,
/// so four swap them), and each column byte's 16 row bits come out of `movemask`, eight times
/// (one per bit of the byte).
#[cfg(target_arch = "x86_64")]
pub fn transpose_sse2(rows: &[u8], m: usize, out: &mut Vec<Block>) {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_movemask_epi8, _mm_slli_epi64, _mm_unpackhi_epi8,
        _mm_unpacklo_epi8,
    };
    let rb = check(rows, m);
    out.clear();
    out.resize(m, Block::ZERO);
    let whole = rb / 16 * 16;
    for c0 in (0..whole).step_by(16) {
        for h in 0..8 {
            // SAFETY: SSE2 is part of x86-64. Each load reads 16 bytes of row 16h + k starting
            // at column byte c0, inside the row because c0 + 16 ≤ rb and
            // rows.len() ≥ 128·rb (`check`).
            unsafe {
                let mut v: [__m128i; 16] = std::array::from_fn(|k| {
                    _mm_loadu_si128(rows.as_ptr().add((16 * h + k) * rb + c0).cast())
                });
                for _ in 0..4 {
                    let old = v;
                    for i in 0..8 {
                        v[2 * i] = _mm_unpacklo_epi8(old[i], old[i + 8]);
                        v[2 * i + 1] = _mm_unpackhi_epi8(old[i], old[i + 8]);
                    }
                }
                for (k, mut col) in v.into_iter().enumerate() {
                    let c = c0 + k;
                    for s in 0..8 {
                        // After shifting left by s, each byte's top bit is its bit 7 − s; its
                        // 16 rows are bits 16h..16h + 16 of block 8c + 7 − s, i.e. (x86-64 is
                        // little-endian) u16 number h of that block.
                        let bits = _mm_movemask_epi8(col) as u16;
                        let j = 8 * c + 7 - s;
                        if let Some(b) = out.get_mut(j) {
                            let p = (b as *mut Block).cast::<u16>();
                            p.add(h).write(bits);
                        }
                        col = _mm_slli_epi64(col, 1);
                    }
                }
            }
        }
    }
    // Column bytes past the last whole tile: gathered byte by byte.
    let mut col = [0u8; 16];
    for c in whole..rb {
        for h in 0..8 {
            for (k, b) in col.iter_mut().enumerate() {
                *b = rows[(16 * h + k) * rb + c];
            }
            // SAFETY: SSE2 is part of x86-64; the load reads the 16 bytes of `col`.
            unsafe {
                let mut v: __m128i = _mm_loadu_si128(col.as_ptr().cast());
                for s in 0..8 {
                    let bits = _mm_movemask_epi8(v) as u16;
                    out[8 * c + 7 - s].0 |= u128::from(bits) << (16 * h);
                    v = _mm_slli_epi64(v, 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_path_agrees_with_the_definition() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        for m in [8, 128, 1024, 136, 256 + 24] {
            let rows: Vec<u8> = (0..128 * m / 8).map(|_| rng.random()).collect();
            let mut p = Vec::new();
            transpose_portable(&rows, m, &mut p);
            for j in 0..m {
                for i in 0..128 {
                    let want = (rows[i * m / 8 + j / 8] >> (j % 8)) & 1;
                    assert_eq!((p[j].0 >> i) as u8 & 1, want, "portable m {m} ({i}, {j})");
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                let mut q = Vec::new();
                transpose_sse2(&rows, m, &mut q);
                assert_eq!(q, p, "sse2 m {m}");
            }
        }
    }
}
