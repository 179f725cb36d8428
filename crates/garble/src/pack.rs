//! Base conversion between a label's digits and its compressed block C = Σ dᵢ·qⁱ < q^n: the
//! per-gate cost of arithmetic garbling besides AES (every hash input is packed, and the evaluator
//! unpacks every label it opens).
//!
//! - [`block_of`] packs n digits. Mod 2 the block is the bits themselves (one byte-sign mask per
//!   16 digits on x86-64). For an odd prime it forms 8-digit groups (base q⁸) and combines them by
//!   Horner's rule in u64 within parts that fit 64 bits, then across parts in u128. On x86-64 the
//!   groups come from SSE2, 16 digits per step (16-bit multiply, a multiply-add of 16-bit pairs,
//!   then a 32 × 32 → 64-bit multiply); elsewhere from the same steps in 64-bit SWAR.
//! - [`unpack_into`] is the inverse for odd q: the fraction F = C·⌈2^256 / q^n⌉ / 2^256 times q^n
//!   lies in [C, C + 1), so multiplying F by q^w and keeping the integer part peels off C's top w
//!   digits, exactly. Pieces of w digits (q^w < 2^64) come off that way, one 4-limb product each;
//!   every piece then splits in a binary tree of divisions by the constant q^(w/2), q^(w/4), … (a
//!   multiply and a shift each once q is a compile-time constant) down to leaves of t digits with
//!   q^t ≤ 256, which a 256-entry table turns into t digit bytes.
//!
//! Both are monomorphised for the full-strength primes (the only moduli the crate's circuits
//! use), so every loop bound and divisor is a constant; other primes take the generic path.
//! Neither branches on digit values or on the block (the garbler packs and unpacks secrets).

use crate::block::BlockParams;
use crate::modulus::{MAX_DIGITS, Modulus};

/// Calls `$f::<Q>($args)` for the full-strength moduli, `$other` for any other: code that runs
/// per digit gets every bound and divisor as a compile-time constant.
macro_rules! per_prime {
    ($q:expr, $f:ident ($($arg:expr),*), $other:expr) => {
        match $q {
            3 => $f::<3>($($arg),*),
            5 => $f::<5>($($arg),*),
            7 => $f::<7>($($arg),*),
            11 => $f::<11>($($arg),*),
            13 => $f::<13>($($arg),*),
            17 => $f::<17>($($arg),*),
            19 => $f::<19>($($arg),*),
            23 => $f::<23>($($arg),*),
            29 => $f::<29>($($arg),*),
            47 => $f::<47>($($arg),*),
            53 => $f::<53>($($arg),*),
            67 => $f::<67>($($arg),*),
            83 => $f::<83>($($arg),*),
            103 => $f::<103>($($arg),*),
            137 => $f::<137>($($arg),*),
            _ => $other,
        }
    };
}

/// q^e, saturating at u128::MAX (for compile-time plans).
const fn pow(q: u64, e: usize) -> u128 {
    let mut p: u128 = 1;
    let mut i = 0;
    while i < e {
        p = p.saturating_mul(q as u128);
        i += 1;
    }
    p
}

/// The digits of a label mod q (as [`Modulus::digits`], usable at compile time).
const fn digits_of(q: u64) -> usize {
    crate::modulus::digits_for(q) as usize
}

/// The little-endian u64 of 8 digit bytes.
#[inline(always)]
fn word(c: &[u8]) -> u64 {
    u64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or_default())
}

/// The compressed block Σ dᵢ·qⁱ of a label's digits (as [`crate::Label::to_block`]); `digits`
/// starts with the label's n digits, each below q. Bytes after them are ignored, but a slice that
/// runs on (the rest of a tensor, a zero-padded buffer) lets every load be a whole 16 bytes.
#[inline]
pub fn block_of(m: Modulus, digits: &[u8]) -> u128 {
    let q = m.q();
    if q == 2 {
        return pack_bits(digits);
    }
    let generic = || pack_generic(q, digits.get(..m.digits()).unwrap_or(digits));
    per_prime!(q, pack_const(digits), generic())
}

/// Copies the n digits at the front of `src` into `dst` and zeros the rest of its first
/// ⌈n / 16⌉·16 bytes, one 16-byte store per step (so that the full-width digit loops and the
/// packing that read `dst` next never straddle two stores). None when `src` is shorter than n.
#[inline]
pub(crate) fn copy_padded(src: &[u8], n: usize, dst: &mut [u8; MAX_DIGITS]) -> Option<()> {
    for (s, d) in dst.chunks_exact_mut(16).take(n.div_ceil(16)).enumerate() {
        let (lo, hi) = load16(src, 16 * s, (n - 16 * s).min(16))?;
        d.copy_from_slice(&(u128::from(lo) | u128::from(hi) << 64).to_le_bytes());
    }
    Some(())
}

/// Mod 2: digit i is bit i.
#[inline(always)]
fn pack_bits(digits: &[u8]) -> u128 {
    #[cfg(target_arch = "x86_64")]
    if digits.len() >= 128 {
        use std::arch::x86_64::{_mm_movemask_epi8, _mm_set_epi64x, _mm_slli_epi16};
        let mut r = 0u128;
        for (i, c) in digits.chunks_exact(16).take(8).enumerate() {
            let (lo, hi) = c.split_at(8);
            // SAFETY: SSE2 is part of the x86-64 baseline, and these intrinsics only move
            // values between registers (no memory access). Shifting each 0/1 byte left by 7
            // puts the digit in the byte's sign bit, which the mask collects.
            let m = unsafe {
                let x = _mm_set_epi64x(word(hi) as i64, word(lo) as i64);
                _mm_movemask_epi8(_mm_slli_epi16::<7>(x))
            };
            r |= u128::from(m as u16) << (16 * i);
        }
        return r;
    }
    // With v = Σ bᵢ·2^(8i) (bᵢ ∈ {0, 1}), the product v·0x0102040810204080 puts bᵢ at bit 56 + i
    // and nothing else in the top byte (all partial products land on distinct bit positions, so
    // there are no carries).
    let pack = |v: u64| (v & 0x0101_0101_0101_0101).wrapping_mul(0x0102_0408_1020_4080) >> 56;
    let mut r = 0u128;
    for (j, c) in digits.get(..128).unwrap_or(digits).chunks(8).enumerate() {
        let mut b = [0u8; 8];
        for (t, &d) in b.iter_mut().zip(c) {
            *t = d;
        }
        r |= u128::from(pack(u64::from_le_bytes(b))) << (8 * j);
    }
    r
}

/// One 8-digit group (base q⁸) from its little-endian bytes, in 64-bit SWAR: pairs of bytes
/// become 16-bit lanes d₀ + q·d₁, pairs of those 32-bit lanes (·q²), then one u64 (·q⁴). Even for
/// bytes up to 255 no lane overflows (255·251 + 255 < 2^16, (2^16 − 1)·251² + 2^16 − 1 < 2^32,
/// (2^32 − 1)·251⁴ + 2^32 − 1 < 2^64).
#[inline(always)]
fn group_swar(q: u64, v: u64) -> u64 {
    let (q2, q4) = (q * q, q * q * q * q);
    let v = (v & 0x00ff_00ff_00ff_00ff) + ((v >> 8) & 0x00ff_00ff_00ff_00ff) * q;
    let v = (v & 0x0000_ffff_0000_ffff) + ((v >> 16) & 0x0000_ffff_0000_ffff) * q2;
    (v & 0xffff_ffff) + (v >> 32) * q4
}

/// The 8-digit groups of `digits` (zero-padded to whole groups), least significant first; returns
/// the number of groups.
#[inline(always)]
fn groups_swar(q: u64, digits: &[u8], groups: &mut [u64; 16]) -> usize {
    let mut count = 0;
    for (g, c) in groups.iter_mut().zip(digits.chunks(8)) {
        let mut b = [0u8; 8];
        for (t, &d) in b.iter_mut().zip(c) {
            *t = d;
        }
        *g = group_swar(q, u64::from_le_bytes(b));
        count += 1;
    }
    count
}

/// For q⁸ = `q8`: the most 8-digit groups g whose value range q^(8g) stays below 2^64, and
/// q^(8g).
const fn part_shape(q8: u64) -> (usize, u64) {
    let mut per_part = 1;
    let mut pow = q8;
    while let Some(next) = pow.checked_mul(q8) {
        pow = next;
        per_part += 1;
    }
    (per_part, pow)
}

/// Combines 8-digit groups (values below q⁸ = `q8`, least significant first) into the block:
/// Horner's rule in u64 within parts of as many groups as fit, then in u128 across parts.
#[inline(always)]
fn combine_groups(q8: u64, (per_part, part_pow): (usize, u64), groups: &[u64]) -> u128 {
    // Top down: the value so far is hi·q8^c + lo, with the last c < per_part groups in lo.
    let (mut hi, mut lo, mut pow, mut c) = (0u128, 0u64, 1u64, 0usize);
    for &g in groups.iter().rev() {
        lo = lo.wrapping_mul(q8).wrapping_add(g);
        pow = pow.wrapping_mul(q8);
        c += 1;
        if c == per_part {
            hi = hi
                .wrapping_mul(u128::from(part_pow))
                .wrapping_add(u128::from(lo));
            (lo, pow, c) = (0, 1, 0);
        }
    }
    hi.wrapping_mul(u128::from(pow))
        .wrapping_add(u128::from(lo))
}

/// [`block_of`] for any odd q ≤ 251.
fn pack_generic(q: u8, digits: &[u8]) -> u128 {
    let q = u64::from(q);
    let mut groups = [0u64; 16];
    let count = groups_swar(q, digits, &mut groups);
    let q8 = q.pow(8);
    combine_groups(q8, part_shape(q8), groups.get(..count).unwrap_or(&[]))
}

/// [`block_of`] for the odd prime Q ≤ 181 (so that q² fits a signed 16-bit lane).
#[inline(always)]
fn pack_const<const Q: u64>(digits: &[u8]) -> u128 {
    let ng = const { digits_of(Q).div_ceil(8) };
    let mut groups = [0u64; 16];
    #[cfg(target_arch = "x86_64")]
    {
        const { assert!(Q <= 181 && digits_of(Q) >= 16) };
        if !groups_sse2::<Q>(digits, &mut groups) {
            return pack_generic(Q as u8, digits);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    groups_swar(Q, digits.get(..digits_of(Q)).unwrap_or(digits), &mut groups);
    combine_tree::<Q>(&mut groups, ng)
}

/// The doublings of [`combine_tree`]: how many times pairs of values can be merged in u64
/// (q^(2w) < 2^64, starting from w = 8 digits), and the digits per value after them.
const fn tree_shape(q: u64) -> (usize, usize) {
    let (mut levels, mut width) = (0, 8);
    while pow(q, 2 * width) < 1 << 64 {
        levels += 1;
        width *= 2;
    }
    (levels, width)
}

/// Combines the `ng` 8-digit groups into the block with a short dependency chain: adjacent pairs
/// merge in u64 (v₂ᵢ + v₂ᵢ₊₁·q^w) while q^(2w) fits, then the few values left are combined by
/// Horner's rule in u128 (a 64 × 64 or 128 × 64-bit product each).
#[inline(always)]
fn combine_tree<const Q: u64>(vals: &mut [u64; 16], ng: usize) -> u128 {
    let levels = const { tree_shape(Q).0 };
    const { assert!(pow(Q, tree_shape(Q).1) < 1 << 64) };
    let mut count = ng;
    let mut width = 8;
    for _ in 0..levels {
        let mul = pow(Q, width) as u64;
        let half = count / 2;
        for i in 0..half {
            let (a, b) = (
                vals.get(2 * i).copied().unwrap_or(0),
                vals.get(2 * i + 1).copied().unwrap_or(0),
            );
            if let Some(v) = vals.get_mut(i) {
                *v = a.wrapping_add(b.wrapping_mul(mul));
            }
        }
        if count % 2 == 1 {
            let last = vals.get(count - 1).copied().unwrap_or(0);
            if let Some(v) = vals.get_mut(half) {
                *v = last;
            }
        }
        count = count.div_ceil(2);
        width *= 2;
    }
    let mul = const { pow(Q, tree_shape(Q).1) as u64 };
    vals.iter().take(count).rev().fold(0u128, |acc, &v| {
        acc.wrapping_mul(u128::from(mul))
            .wrapping_add(u128::from(v))
    })
}

/// The `keep` ≤ 16 digits from `digits[at..]` as the (low, high) words of 16 bytes, zeros after
/// them. Loads 16 bytes at `at` and masks when the slice has them (callers pass slices that run
/// on past the label where they can, so that every load is one aligned-size read); otherwise loads
/// the 16 bytes ending at `at + keep` and shifts the overlap out.
#[inline(always)]
fn load16(digits: &[u8], at: usize, keep: usize) -> Option<(u64, u64)> {
    let as_u128 = |c: &[u8]| {
        let (lo, hi) = c.split_at(8);
        u128::from(word(lo)) | u128::from(word(hi)) << 64
    };
    let v = match digits.get(at..at + 16) {
        Some(c) => as_u128(c) & u128::MAX.checked_shr(8 * (16 - keep) as u32).unwrap_or(0),
        None => as_u128(digits.get((at + keep).checked_sub(16)?..at + keep)?)
            .checked_shr(8 * (16 - keep) as u32)
            .unwrap_or(0),
    };
    Some((v as u64, (v >> 64) as u64))
}

/// The 8-digit groups of Q's n digits with SSE2, 16 digits per step (Q ≤ 181, n ≥ 16). Reads the
/// digits in place: false when there are fewer than n.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn groups_sse2<const Q: u64>(digits: &[u8], groups: &mut [u64; 16]) -> bool {
    use std::arch::x86_64::{
        _mm_add_epi16, _mm_add_epi64, _mm_and_si128, _mm_cvtsi128_si64, _mm_madd_epi16,
        _mm_mul_epu32, _mm_mullo_epi16, _mm_set_epi64x, _mm_set1_epi16, _mm_set1_epi32,
        _mm_set1_epi64x, _mm_srli_epi16, _mm_srli_epi64, _mm_unpackhi_epi64,
    };
    let n = const { digits_of(Q) };
    let steps = const { digits_of(Q).div_ceil(16) };
    for (s, out) in groups.chunks_exact_mut(2).take(steps).enumerate() {
        let Some((lo, hi)) = load16(digits, 16 * s, (n - 16 * s).min(16)) else {
            return false;
        };
        // SAFETY: SSE2 is part of the x86-64 baseline, and these intrinsics only compute on
        // registers (no memory access). Lanes cannot overflow for digits below Q ≤ 181: a
        // 16-bit pair is below Q² ≤ 32,761 (a non-negative i16 for the signed multiply-add), a
        // 32-bit quadruple below Q⁴ < 2^31, and a 64-bit group below Q⁸ < 2^64.
        let (g0, g1) = unsafe {
            let x = _mm_set_epi64x(hi as i64, lo as i64);
            let even = _mm_and_si128(x, _mm_set1_epi16(0x00ff));
            let odd = _mm_srli_epi16::<8>(x);
            let pairs = _mm_add_epi16(even, _mm_mullo_epi16(odd, _mm_set1_epi16(Q as i16)));
            let quads = _mm_madd_epi16(pairs, _mm_set1_epi32(((Q * Q) << 16 | 1) as i32));
            let low = _mm_and_si128(quads, _mm_set1_epi64x(0xffff_ffff));
            let high = _mm_mul_epu32(
                _mm_srli_epi64::<32>(quads),
                _mm_set1_epi64x((Q * Q * Q * Q) as i64),
            );
            let v = _mm_add_epi64(low, high);
            (
                _mm_cvtsi128_si64(v) as u64,
                _mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)) as u64,
            )
        };
        if let [a, b] = out {
            (*a, *b) = (g0, g1);
        }
    }
    true
}

/// Writes the n base-q digits of `c` < q^n (odd q; the caller has checked the range) to the
/// first n bytes of `dst`, least significant first — the inverse of [`block_of`]. When `dst` runs
/// on past the n digits, up to [`UNPACK_BUF`] − n bytes after them may be overwritten with zeros
/// (that lets the digits go straight to `dst`; callers pass longer slices only where the bytes
/// after the label are written later or must be zero anyway).
#[inline]
pub fn unpack_into(m: Modulus, c: u128, dst: &mut [u8]) {
    let params = m.block_params();
    per_prime!(
        m.q(),
        unpack_const(c, dst),
        unpack_generic(m.q(), m.digits(), params, c, dst)
    )
}

/// How [`unpack_const`] cuts the digits of one odd q (see the module docs).
struct Plan {
    /// Digits per label.
    n: usize,
    /// Digits per leaf: the largest t with q^t ≤ 256.
    t: usize,
    /// Digits per piece: the largest w with q^w < 2^64.
    w: usize,
    /// Pieces: ⌈n / w⌉ ≤ [`MAX_PIECES`] (2 or 3 for the full-strength primes).
    pieces: usize,
    /// Digits of the top piece (1..=w).
    top: usize,
}

/// The most pieces of 64 bits a 128-bit block splits into.
const MAX_PIECES: usize = 4;

/// The most leaves in one piece (64 one-digit leaves would be q = 2, which never unpacks).
const MAX_LEAVES: usize = 64;

const fn plan(q: u64) -> Plan {
    let n = digits_of(q);
    let mut t = 1;
    while pow(q, t + 1) <= 256 {
        t += 1;
    }
    let mut w = 1;
    while pow(q, w + 1) < 1 << 64 {
        w += 1;
    }
    let pieces = n.div_ceil(w);
    Plan {
        n,
        t,
        w,
        pieces,
        top: n - (pieces - 1) * w,
    }
}

/// The digits of a piece's first (most significant) leaf: the leftover of width mod t, or t.
const fn first_leaf(width: usize, t: usize) -> usize {
    if width.is_multiple_of(t) {
        t
    } else {
        width % t
    }
}

/// Whether every fraction [`unpack_const`] forms for q stays exact: in units of the last place of
/// the digits it still holds, a fraction may run ahead of the true value by less than 1 (it is
/// never behind: every rounding is upwards). The excess starts below q^(2n) / 2^256 for what is
/// left of F (the error of the reciprocal, times c) and below q^(2·width) / 2^128 for a piece
/// converted from its integer value; rounding a fraction up to 128 bits adds at most
/// q^w / 2^128 and, after the first leaf, rounding up to 64 bits adds at most
/// q^(width − first) / 2^64. (Bounds in f64, with a 1% margin.)
const fn plan_is_exact(q: u64) -> bool {
    let p = plan(q);
    (lowest_from_fraction(q) || upper_excess(q, p.w, p.t) < 0.99)
        && upper_excess(q, p.w, p.t) < 0.99
        && (p.top <= p.t || upper_excess(q, p.top, p.t) < 0.99)
}

/// Whether the lowest piece can be read off what is left of F (rounded up to 128 bits) rather than
/// peeled to an integer and converted back: only when F's own excess leaves room for the
/// rounding (not for q = 11, whose q^n lies within 2^−0.002 of 2^128).
const fn lowest_from_fraction(q: u64) -> bool {
    let p = plan(q);
    let two64 = 18_446_744_073_709_551_616.0;
    let two128 = two64 * two64;
    let lowest = if p.pieces == 1 { p.top } else { p.w };
    let excess = powf(q, 2 * p.n) / (two128 * two128)
        + powf(q, lowest) / two128
        + powf(q, lowest - first_leaf(lowest, p.t)) / two64;
    excess < 0.99
}

/// q^e in f64 (for the bounds of [`plan_is_exact`]).
const fn powf(q: u64, e: usize) -> f64 {
    let mut x = 1.0;
    let mut i = 0;
    while i < e {
        x *= q as f64;
        i += 1;
    }
    x
}

/// The excess bound of a piece of `width` digits converted from its integer value.
const fn upper_excess(q: u64, width: usize, t: usize) -> f64 {
    let two64 = 18_446_744_073_709_551_616.0;
    powf(q, 2 * width) / (two64 * two64) + powf(q, width - first_leaf(width, t)) / two64
}

/// ⌈2^128 / q^width⌉ as (low, high) limbs, for q^width < 2^64 (never a power of two: q is odd).
const fn recip128(q: u64, width: usize) -> (u64, u64) {
    let r = u128::MAX / pow(q, width) + 1;
    (r as u64, (r >> 64) as u64)
}

/// For every v < 256: the u64 whose byte i is base-q digit i of v, for the t low digits (the
/// leaves of [`unpack_const`]).
const fn leaf_table(q: u64, t: usize) -> [u64; 256] {
    let mut tab = [0u64; 256];
    let mut v = 0;
    while v < 256 {
        let mut x = v as u64;
        let mut word = 0u64;
        let mut i = 0;
        while i < t {
            word |= (x % q) << (8 * i);
            x /= q;
            i += 1;
        }
        tab[v] = word;
        v += 1;
    }
    tab
}

/// F = c·R mod 2^256 as four little-endian limbs (R = ⌈2^256 / q^n⌉ < 2^137; the fifth limb of
/// the product is zero for c < q^n).
#[inline(always)]
fn fraction(c: u128, r: [u64; 3]) -> [u64; 4] {
    let (c0, c1) = (u128::from(c as u64), u128::from((c >> 64) as u64));
    let [r0, r1, r2] = r.map(u128::from);
    let (a0, a1, a2) = (c0 * r0, c0 * r1, c0 * r2);
    let (b0, b1, b2) = (c1 * r0, c1 * r1, c1 * r2);
    let lo = |x: u128| u128::from(x as u64);
    let s1 = (a0 >> 64) + lo(a1) + lo(b0);
    let s2 = (s1 >> 64) + (a1 >> 64) + lo(a2) + (b0 >> 64) + lo(b1);
    let s3 = (s2 >> 64) + (a2 >> 64) + (b1 >> 64) + lo(b2);
    [a0 as u64, s1 as u64, s2 as u64, s3 as u64]
}

/// F·m: keeps the low four limbs in `f` and returns the carry out (the integer part).
#[inline(always)]
fn peel(f: &mut [u64; 4], m: u64) -> u64 {
    let mut carry = 0u64;
    for limb in f.iter_mut() {
        let t = u128::from(*limb) * u128::from(m) + u128::from(carry);
        *limb = t as u64;
        carry = (t >> 64) as u64;
    }
    carry
}

/// The leaves of a piece of `width` digits from its 128-bit fraction (hi, lo), most significant
/// first: the first leaf with a 128-bit product, then the fraction rounded up to 64 bits and one
/// 64 × 64-bit product per leaf.
#[inline(always)]
fn leaves_of<const Q: u64>(g_hi: u64, g_lo: u64, width: usize, leaves: &mut [u8; MAX_LEAVES]) {
    let t = const { plan(Q).t };
    let first = first_leaf(width, t);
    let m1 = pow(Q, first) as u64;
    let p0 = u128::from(g_lo) * u128::from(m1);
    let p1 = u128::from(g_hi) * u128::from(m1) + (p0 >> 64);
    let mut g = (p1 as u64).wrapping_add(u64::from(p0 as u64 != 0));
    let mt = const { pow(Q, plan(Q).t) as u64 };
    let (head, rest) = leaves.split_at_mut(1);
    if let Some(l) = head.first_mut() {
        *l = (p1 >> 64) as u8;
    }
    for l in rest.iter_mut().take((width - first) / t) {
        let p = u128::from(g) * u128::from(mt);
        *l = (p >> 64) as u8;
        g = p as u64;
    }
}

/// Bytes of [`unpack_const`]'s staging buffer: the pieces' digits plus one word of slack.
const UNPACK_BUF: usize = 160;

/// [`unpack_into`] for the odd prime Q.
#[inline(always)]
fn unpack_const<const Q: u64>(c: u128, dst: &mut [u8]) {
    const { assert!(plan_is_exact(Q) && plan(Q).pieces <= MAX_PIECES) };
    let p = const { &plan(Q) };
    let tab = const { &leaf_table(Q, plan(Q).t) };
    let recip = const { crate::block::block_params(Q).recip };
    let (top_mul, w_mul) = const { (pow(Q, plan(Q).top) as u64, pow(Q, plan(Q).w) as u64) };
    let (r_top, r_w) = const { (recip128(Q, plan(Q).top), recip128(Q, plan(Q).w)) };
    let width = |j: usize| if j + 1 == p.pieces { p.top } else { p.w };
    let mut f = fraction(c, recip);
    // leaves[j]: piece j (from the least significant), most significant leaf first.
    let mut leaves = [[0u8; MAX_LEAVES]; MAX_PIECES];
    let from_f = const { lowest_from_fraction(Q) };
    // Pieces peeled to integers, from the top: all but the lowest when that one comes from F.
    let first_peeled = usize::from(from_f);
    for j in (first_peeled..p.pieces).rev() {
        let Some(lv) = leaves.get_mut(j) else {
            continue;
        };
        let top = j + 1 == p.pieces;
        let v = peel(&mut f, if top { top_mul } else { w_mul });
        if top && p.top <= p.t {
            // A top piece no wider than a leaf is its own leaf.
            lv[0] = v as u8;
            continue;
        }
        let (r0, r1) = if top { r_top } else { r_w };
        let a = u128::from(v) * u128::from(r0);
        let g_hi = ((a >> 64) as u64).wrapping_add(v.wrapping_mul(r1));
        leaves_of::<Q>(g_hi, a as u64, width(j), lv);
    }
    if from_f {
        // The lowest piece's fraction is what is left of F, rounded up to 128 bits.
        let (g_lo, carry) = f[2].overflowing_add(u64::from(f[0] | f[1] != 0));
        leaves_of::<Q>(
            f[3].wrapping_add(u64::from(carry)),
            g_lo,
            width(0),
            &mut leaves[0],
        );
    }
    // Leaves go out least significant first. One-digit leaves are the digits; wider ones become
    // 8-byte words from the table, each overwriting the spare (zero) bytes of the one before,
    // straight into `dst` when it has room for the last word's spare bytes.
    let room = const { plan(Q).pieces * plan(Q).w + 8 };
    const { assert!(plan(Q).pieces * plan(Q).w + 8 <= UNPACK_BUF) };
    let mut buf = [0u8; UNPACK_BUF];
    let direct = p.t == 1 || dst.len() >= room;
    let out: &mut [u8] = if direct { &mut *dst } else { &mut buf };
    for (j, lv) in leaves.iter().enumerate().take(p.pieces) {
        let count = 1 + (width(j) - first_leaf(width(j), p.t)) / p.t;
        let ordered = lv.iter().take(count).rev();
        if p.t == 1 {
            if let Some(o) = out.get_mut(j * p.w..j * p.w + count) {
                for (d, &l) in o.iter_mut().zip(ordered) {
                    *d = l;
                }
            }
            continue;
        }
        for (k, &l) in ordered.enumerate() {
            let at = j * p.w + k * p.t;
            if let (Some(o), Some(word)) = (out.get_mut(at..at + 8), tab.get(usize::from(l))) {
                o.copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    if !direct && let (Some(d), Some(s)) = (dst.get_mut(..p.n), buf.get(..p.n)) {
        d.copy_from_slice(s);
    }
}

/// How [`unpack_generic`] cuts n digits mod q into pieces of at most 16 bits.
#[derive(Clone, Copy)]
struct Split {
    q: u16,
    n: usize,
    /// Digits per piece: the largest s with q^s ≤ 2^16.
    s: usize,
    /// q^s.
    pow: u64,
    /// Pieces: ⌈n / s⌉ ≤ [`MAX_PIECES16`].
    count: usize,
    /// Digits of the last (least significant) piece, and q to that power.
    last_s: usize,
    last_pow: u64,
}

/// The most 16-bit pieces any odd prime q ≤ 251 needs (12, at q = 41).
const MAX_PIECES16: usize = 16;

/// The most digits per piece: 10, at q = 3.
const MAX_SPLIT: usize = 10;

/// [`Split`] of an odd prime q ≤ 251 with n digits.
fn split_for(q: u64, n: usize) -> Split {
    let mut s = 0usize;
    let mut piece = 1u64;
    while piece * q <= 1 << 16 {
        piece *= q;
        s += 1;
    }
    let count = n.div_ceil(s);
    let last_s = n - (count - 1) * s;
    Split {
        q: q as u16,
        n,
        s,
        pow: piece,
        count,
        last_s,
        last_pow: q.pow(last_s as u32),
    }
}

/// [`unpack_into`] for any odd q: peels base-q^s pieces of at most 16 bits off F (two at a time
/// where q^(2s) ≤ 2^32), then splits all pieces into digits in parallel 16-bit lanes.
fn unpack_generic(q: u8, n: usize, params: BlockParams, c: u128, dst: &mut [u8]) {
    let sp = split_for(u64::from(q), n);
    let mut f = fraction(c, params.recip);
    let mut lanes = [0u16; MAX_PIECES16];
    let mut j = 0;
    while j < sp.count {
        let pair = j + 1 < sp.count;
        let (next_pow, mul) = if !pair {
            (1, sp.last_pow)
        } else if j + 2 == sp.count {
            (sp.last_pow, sp.pow * sp.last_pow)
        } else {
            (sp.pow, sp.pow * sp.pow)
        };
        let carry = peel(&mut f, mul);
        if pair {
            if let Some(l) = lanes.get_mut(j) {
                *l = (carry / next_pow) as u16;
            }
            if let Some(l) = lanes.get_mut(j + 1) {
                *l = (carry % next_pow) as u16;
            }
            j += 2;
        } else {
            if let Some(l) = lanes.get_mut(j) {
                *l = carry as u16;
            }
            j += 1;
        }
    }
    let mut split = [[0u8; MAX_PIECES16]; MAX_SPLIT];
    for row in split.iter_mut().take(sp.s) {
        for (d, lane) in row.iter_mut().zip(lanes.iter_mut()) {
            let quo = *lane / sp.q;
            *d = (*lane - quo * sp.q) as u8;
            *lane = quo;
        }
    }
    // Piece j < count − 1 holds digits n − (j + 1)·s .. n − j·s; the last one digits 0..last_s.
    for j in 0..sp.count {
        let (start, len) = if j + 1 == sp.count {
            (0, sp.last_s)
        } else {
            (sp.n - (j + 1) * sp.s, sp.s)
        };
        if let Some(out) = dst.get_mut(start..start + len) {
            for (o, row) in out.iter_mut().zip(&split) {
                *o = row.get(j).copied().unwrap_or(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::Label;
    use proptest::prelude::*;

    use crate::modulus::testing::{m, odd_primes};

    /// The definition: Horner's rule in u128.
    fn horner(q: u64, digits: &[u8]) -> u128 {
        digits
            .iter()
            .rev()
            .fold(0u128, |acc, &d| acc * u128::from(q) + u128::from(d))
    }

    #[test]
    fn plans_cover_every_digit_of_every_odd_prime() {
        for q in odd_primes() {
            let p = plan(q);
            assert_eq!(p.n, m(q).digits(), "q = {q}");
            assert!(
                p.pieces <= 16 && p.pieces * p.w + 8 <= UNPACK_BUF && p.top >= 1 && p.top <= p.w,
                "q = {q}"
            );
            assert!(pow(q, p.t) <= 256 && pow(q, p.w) < 1 << 64, "q = {q}");
        }
    }

    #[test]
    fn pieces_fit_the_lanes_for_every_odd_prime() {
        for q in odd_primes() {
            let p = split_for(q, m(q).digits());
            assert!(p.count <= MAX_PIECES16 && p.s <= MAX_SPLIT, "q = {q}");
            assert!(
                p.pow <= 1 << 16 && p.last_s >= 1 && p.last_s <= p.s,
                "q = {q}"
            );
            assert_eq!((p.count - 1) * p.s + p.last_s, m(q).digits(), "q = {q}");
        }
    }

    #[test]
    fn both_paths_agree_with_the_definition_at_the_edges() {
        for q in std::iter::once(2).chain(odd_primes()) {
            let md = m(q);
            let n = md.digits();
            let top = (q - 1) as u8;
            for digits in [
                vec![0u8; n],
                vec![top; n],
                (0..n).map(|i| (i as u64 % q) as u8).collect(),
            ] {
                let c = horner(q, &digits);
                assert_eq!(block_of(md, &digits), c, "q = {q}");
                if q != 2 {
                    assert_eq!(pack_generic(md.q(), &digits), c, "q = {q}");
                    let (mut a, mut b) = ([0u8; 128], [0u8; 128]);
                    unpack_into(md, c, &mut a);
                    unpack_generic(md.q(), n, md.block_params(), c, &mut b);
                    assert_eq!(&a[..n], &digits[..], "q = {q}");
                    assert_eq!(&b[..n], &digits[..], "q = {q}");
                }
            }
        }
    }

    #[test]
    fn unpack_is_exact_at_every_piece_and_leaf_boundary() {
        // Blocks next to q^e for every e (all-(q − 1) runs below, a lone 1 above) and the top of
        // the range, where the fractions' excess is largest.
        for q in odd_primes() {
            let md = m(q);
            let (n, top) = (md.digits(), md.block_params().pow);
            let mut cs: Vec<u128> = (0..n as u32)
                .flat_map(|e| {
                    let b = u128::from(q).pow(e);
                    [b - 1, b, b + 1, top - b]
                })
                .collect();
            cs.extend((1..=64).map(|k| top - k));
            for c in cs {
                let mut d = [0u8; 128];
                unpack_into(md, c, &mut d);
                assert_eq!(horner(q, &d[..n]), c, "q = {q}, c = {c}");
                assert!(d[..n].iter().all(|&x| u64::from(x) < q), "q = {q}, c = {c}");
            }
        }
    }

    #[test]
    fn unpack_writes_the_n_digits_and_at_most_zeros_after_them() {
        for q in odd_primes() {
            let md = m(q);
            let n = md.digits();
            let c = md.block_params().pow - 1;
            for len in [n, n + 7, 128, UNPACK_BUF + 8] {
                let mut d = vec![0xAAu8; len + 8];
                unpack_into(md, c, &mut d[..len]);
                assert!(d[..n].iter().all(|&x| x == md.q() - 1), "q = {q}");
                assert!(d[n..len].iter().all(|&x| x == 0 || x == 0xAA), "q = {q}");
                assert!(d[len..].iter().all(|&x| x == 0xAA), "q = {q}");
            }
        }
    }

    proptest! {
        #[test]
        fn pack_is_horner_and_unpack_inverts_it(qi in 0usize..54, seed: [u8; 32]) {
            use rand::{Rng, SeedableRng};
            let q = std::iter::once(2).chain(odd_primes()).nth(qi).expect("prime");
            let md = m(q);
            let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
            let digits: Vec<u8> = (0..md.digits()).map(|_| rng.random_range(0..md.q())).collect();
            let c = horner(q, &digits);
            prop_assert_eq!(block_of(md, &digits), c);
            prop_assert_eq!(Label::from_digits(md, &digits).expect("valid").to_block(), c);
            if q != 2 {
                prop_assert_eq!(pack_generic(md.q(), &digits), c);
                let (mut a, mut b) = ([0u8; 128], [0u8; 128]);
                unpack_into(md, c, &mut a);
                unpack_generic(md.q(), md.digits(), md.block_params(), c, &mut b);
                prop_assert_eq!(&a[..md.digits()], &digits[..]);
                prop_assert_eq!(&b[..md.digits()], &digits[..]);
            }
        }

        #[test]
        fn unpack_inverts_any_block_in_range(qi in 0usize..53, c: u128) {
            let q = odd_primes()[qi];
            let md = m(q);
            let c = c % md.block_params().pow;
            let mut d = [0u8; 128];
            unpack_into(md, c, &mut d);
            prop_assert!(d[..md.digits()].iter().all(|&x| x < md.q()));
            prop_assert_eq!(horner(q, &d[..md.digits()]), c);
        }
    }
}
