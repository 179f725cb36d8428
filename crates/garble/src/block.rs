//! Arithmetic on compressed labels: the one-time pads of projection-table rows.
//!
//! A label mod an odd prime q compresses to the integer C = Σ dᵢ·qⁱ < q^n ([`crate::Label::to_block`]).
//! Table rows are elements of the group Z_{q^n} (integers mod q^n): a row is the compressed block
//! of an output label plus a pad, both mod q^n (see [`crate::gate`]). Working on blocks instead
//! of digit vectors means a row costs two 128-bit additions and the evaluator turns only the one
//! row it opens back into digits ([`unpack_into`]) — not every row it receives. Mod 2 the group is
//! Z_2^128 under XOR, which is digit-wise addition mod 2 on the block itself.
//!
//! - [`pad`]: the pad of a hash output, I = ⌊N·q^n / 2^256⌋ for N = h₀ + 2^128·h₁ — the hash's
//!   output mod q itself ([`crate::hash`]); within 2^−128 of uniform on Z_{q^n}.
//! - [`add_mod`] / [`sub_mod`]: addition and subtraction mod q^n without branches (the garbler
//!   runs them on secret values).
//! - [`unpack_into`]: the n digits of a block, by multiplying it with the precomputed
//!   reciprocal ⌈2^256 / q^n⌉ into a 256-bit fraction and peeling base-q^s pieces off the top,
//!   then splitting all pieces into digits in parallel 16-bit lanes. No long division.

use crate::modulus::Modulus;

/// The constants of block arithmetic mod q^n for one odd prime q (all zero for q = 2, where
/// blocks are XORed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BlockParams {
    /// q^n, below 2^128 for odd q.
    pub(crate) pow: u128,
    /// ⌈2^256 / q^n⌉ as little-endian 64-bit limbs (below 2^137, since q^n > 2^120).
    pub(crate) recip: [u64; 3],
}

/// [`BlockParams`] of a prime q ≤ 251 (usable at compile time).
pub(crate) const fn block_params(q: u64) -> BlockParams {
    if q == 2 {
        return BlockParams {
            pow: 0,
            recip: [0; 3],
        };
    }
    let mut pow: u128 = 1;
    while let Some(next) = pow.checked_mul(q as u128) {
        pow = next;
    }
    // Long division of 2^256 by pow, one bit at a time. The remainder stays below pow < 2^128;
    // the bit shifted out of it (`top`) stands for 2^128 > pow, so the subtraction is due then.
    let mut rem: u128 = 0;
    let mut quo = [0u64; 3];
    let mut i: i32 = 256;
    while i >= 0 {
        let top = rem >> 127;
        rem = (rem << 1) | if i == 256 { 1 } else { 0 };
        if top == 1 || rem >= pow {
            rem = rem.wrapping_sub(pow);
            // The quotient is below 2^137: higher bits are never set.
            if i < 192 {
                quo[(i / 64) as usize] |= 1u64 << (i % 64);
            }
        }
        i -= 1;
    }
    if rem != 0 {
        // Round up, with carry.
        let mut j = 0;
        while j < 3 {
            let (v, overflow) = quo[j].overflowing_add(1);
            quo[j] = v;
            if !overflow {
                break;
            }
            j += 1;
        }
    }
    BlockParams { pow, recip: quo }
}

/// All ones when `b` is true, zero otherwise, without a branch.
#[inline(always)]
fn mask(b: bool) -> u128 {
    0u128.wrapping_sub(u128::from(b))
}

/// (a + b) mod m for a, b < m ≤ 2^128 − 1, without branches.
#[inline(always)]
pub(crate) fn add_mod(a: u128, b: u128, m: u128) -> u128 {
    // a + b − m, adding m back when that borrowed; a + b itself may not fit 128 bits.
    let (t, borrow) = a.overflowing_sub(m - b);
    t.wrapping_add(m & mask(borrow))
}

/// (a − b) mod m for a, b < m, without branches.
#[inline(always)]
pub(crate) fn sub_mod(a: u128, b: u128, m: u128) -> u128 {
    let (t, borrow) = a.overflowing_sub(b);
    t.wrapping_add(m & mask(borrow))
}

/// The pad of hash output `h` for rows mod q: [`pad`] for odd q, h₀ itself for q = 2.
#[inline(always)]
pub(crate) fn pad_of(q: Modulus, h: [u128; 2]) -> u128 {
    if q.q() == 2 {
        h[0]
    } else {
        pad(q.block_params().pow, h)
    }
}

/// a + b in the group of rows mod q: mod q^n for odd q, XOR for q = 2.
#[inline(always)]
pub(crate) fn add_block(q: Modulus, a: u128, b: u128) -> u128 {
    if q.q() == 2 {
        a ^ b
    } else {
        add_mod(a, b, q.block_params().pow)
    }
}

/// a − b in the group of rows mod q: mod q^n for odd q, XOR for q = 2.
#[inline(always)]
pub(crate) fn sub_block(q: Modulus, a: u128, b: u128) -> u128 {
    if q.q() == 2 {
        a ^ b
    } else {
        sub_mod(a, b, q.block_params().pow)
    }
}

/// The little-endian 64-bit limbs of a 128-bit value.
#[inline(always)]
fn limbs(x: u128) -> [u64; 2] {
    [x as u64, (x >> 64) as u64]
}

/// The pad of hash output (h₀, h₁) mod q^n = `pow`: ⌊(h₀ + 2^128·h₁)·pow / 2^256⌋, which is below
/// `pow` and within pow / 2^256 ≤ 2^−128 of uniform on [0, pow) when the hash output is uniform.
#[inline(always)]
pub(crate) fn pad(pow: u128, h: [u128; 2]) -> u128 {
    let n = [
        h[0] as u64,
        (h[0] >> 64) as u64,
        h[1] as u64,
        (h[1] >> 64) as u64,
    ];
    let m = limbs(pow);
    // Schoolbook product, 6 limbs; only limbs 4 and 5 are kept, but the lower ones carry into
    // them.
    let mut acc = [0u64; 6];
    for (i, &ni) in n.iter().enumerate() {
        let mut carry = 0u64;
        for (j, &mj) in m.iter().enumerate() {
            let slot = &mut acc[i + j];
            let t = u128::from(ni) * u128::from(mj) + u128::from(*slot) + u128::from(carry);
            *slot = t as u64;
            carry = (t >> 64) as u64;
        }
        acc[i + 2] = carry;
    }
    u128::from(acc[4]) | (u128::from(acc[5]) << 64)
}

/// How [`unpack_into`] cuts n digits mod q into pieces of at most 16 bits.
#[derive(Clone, Copy)]
pub(crate) struct Split {
    q: u16,
    n: usize,
    /// Digits per piece: the largest s with q^s ≤ 2^16.
    s: usize,
    /// q^s.
    pow: u64,
    /// Pieces: ⌈n / s⌉ ≤ [`MAX_PIECES`].
    count: usize,
    /// Digits of the last (least significant) piece, and q to that power.
    last_s: usize,
    last_pow: u64,
}

/// The most pieces any odd prime q ≤ 251 needs (12, at q = 41).
const MAX_PIECES: usize = 16;

/// The most digits per piece: 10, at q = 3.
const MAX_SPLIT: usize = 10;

/// [`Split`] of an odd prime q ≤ 251 (usable at compile time).
pub(crate) const fn split_for(q: u64) -> Split {
    let mut n = 0usize;
    let mut pow: u128 = 1;
    while let Some(next) = pow.checked_mul(q as u128) {
        pow = next;
        n += 1;
    }
    let mut s = 0usize;
    let mut piece = 1u64;
    while piece * q <= 1 << 16 {
        piece *= q;
        s += 1;
    }
    let count = n.div_ceil(s);
    let last_s = n - (count - 1) * s;
    let mut last_pow = 1u64;
    let mut i = 0;
    while i < last_s {
        last_pow *= q;
        i += 1;
    }
    Split {
        q: q as u16,
        n,
        s,
        pow: piece,
        count,
        last_s,
        last_pow,
    }
}

/// Writes the n base-q digits of `c` < q^n (odd q; the caller has checked the range) to the
/// first n bytes of `dst`, least significant first — the inverse of the compression.
pub(crate) fn unpack_into(m: Modulus, c: u128, dst: &mut [u8]) {
    let params = m.block_params();
    match m.q() {
        3 => unpack_const::<3>(params, c, dst),
        5 => unpack_const::<5>(params, c, dst),
        7 => unpack_const::<7>(params, c, dst),
        11 => unpack_const::<11>(params, c, dst),
        13 => unpack_const::<13>(params, c, dst),
        17 => unpack_const::<17>(params, c, dst),
        19 => unpack_const::<19>(params, c, dst),
        23 => unpack_const::<23>(params, c, dst),
        q => unpack_odd(split_for(u64::from(q)), params, c, dst),
    }
}

fn unpack_const<const Q: u64>(params: BlockParams, c: u128, dst: &mut [u8]) {
    unpack_odd(const { split_for(Q) }, params, c, dst);
}

/// [`unpack_into`] for one odd q. With F = c·⌈2^256 / q^n⌉ (below 2^256 for c < q^n), the
/// fraction F / 2^256 times q^n lies in [c, c + 1), so peeling base-q^s pieces off F from the top
/// (each the integer part of the fraction times q^s, the fraction keeping the rest) yields exactly
/// c's base-q^s digits, most significant first. All pieces then split into base-q digits at once.
#[inline(always)]
fn unpack_odd(sp: Split, params: BlockParams, c: u128, dst: &mut [u8]) {
    let [c0, c1] = limbs(c);
    let r = params.recip;
    // F = c·R, 5 limbs; the top one is zero for c < q^n and is dropped.
    let mut f = [0u64; 4];
    let mut top = 0u64;
    for (i, &ci) in [c0, c1].iter().enumerate() {
        let mut carry = 0u64;
        for (j, &rj) in r.iter().enumerate() {
            let k = i + j;
            let cur = f.get(k).copied().unwrap_or(top);
            let t = u128::from(ci) * u128::from(rj) + u128::from(cur) + u128::from(carry);
            match f.get_mut(k) {
                Some(slot) => *slot = t as u64,
                None => top = t as u64,
            }
            carry = (t >> 64) as u64;
        }
        match f.get_mut(i + 3) {
            Some(slot) => *slot = carry,
            None => top = carry,
        }
    }
    // Peel two pieces at a time where there are two left (q^(2s) ≤ 2^32): half the multi-limb
    // products, and one division by a constant to separate the pair.
    let mut lanes = [0u16; MAX_PIECES];
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
        let mut carry = 0u64;
        for limb in f.iter_mut() {
            // limb·mul + carry < 2^64·2^32: exact in u128; the new carry is below mul ≤ 2^32.
            let t = u128::from(*limb) * u128::from(mul) + u128::from(carry);
            *limb = t as u64;
            carry = (t >> 64) as u64;
        }
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
    let mut split = [[0u8; MAX_PIECES]; MAX_SPLIT];
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

    fn m(q: u64) -> Modulus {
        Modulus::new(q).expect("prime")
    }

    fn odd_primes() -> Vec<u64> {
        (3..=251u64).filter(|&q| Modulus::new(q).is_ok()).collect()
    }

    #[test]
    fn reciprocals_are_the_ceiling_of_two_to_the_256_over_q_to_the_n() {
        for q in odd_primes() {
            let p = block_params(q);
            // R·Q ∈ [2^256, 2^256 + Q): check with 5-limb arithmetic.
            let qm = limbs(p.pow);
            let mut acc = [0u64; 5];
            for (i, &ri) in p.recip.iter().enumerate() {
                let mut carry = 0u64;
                for (j, &mj) in qm.iter().enumerate() {
                    if let Some(slot) = acc.get_mut(i + j) {
                        let t =
                            u128::from(ri) * u128::from(mj) + u128::from(*slot) + u128::from(carry);
                        *slot = t as u64;
                        carry = (t >> 64) as u64;
                    }
                }
                if let Some(slot) = acc.get_mut(i + 2) {
                    *slot = carry;
                }
            }
            assert_eq!(acc[4], 1, "q = {q}");
            let low = u128::from(acc[0]) | (u128::from(acc[1]) << 64);
            assert_eq!((acc[2], acc[3]), (0, 0), "q = {q}");
            assert!(low < p.pow, "q = {q}");
        }
    }

    #[test]
    fn pieces_fit_the_lanes_for_every_odd_prime() {
        for q in odd_primes() {
            let p = split_for(q);
            assert!(p.count <= MAX_PIECES && p.s <= MAX_SPLIT, "q = {q}");
            assert!(
                p.pow <= 1 << 16 && p.last_s >= 1 && p.last_s <= p.s,
                "q = {q}"
            );
            assert_eq!((p.count - 1) * p.s + p.last_s, m(q).digits(), "q = {q}");
        }
    }

    #[test]
    fn unpack_inverts_the_compression_at_the_edges() {
        for q in odd_primes() {
            let md = m(q);
            let pow = md.block_params().pow;
            for c in [0, 1, q as u128 - 1, q as u128, pow / 2, pow - 2, pow - 1] {
                let label = Label::from_block(md, c).expect("in range");
                assert_eq!(label.to_block(), c, "q = {q}");
                let mut d = [0u8; 128];
                unpack_into(md, c, &mut d);
                assert_eq!(&d[..md.digits()], label.digits(), "q = {q}, c = {c}");
            }
        }
    }

    proptest! {
        #[test]
        fn unpack_inverts_the_compression(qi in 0usize..53, c: u128) {
            let q = odd_primes()[qi];
            let md = m(q);
            let c = c % md.block_params().pow;
            let mut d = [0u8; 128];
            unpack_into(md, c, &mut d);
            let label = Label::from_digits(md, &d[..md.digits()]).expect("digits below q");
            prop_assert_eq!(label.to_block(), c);
        }

        #[test]
        fn pads_are_below_the_modulus_and_are_the_hash_output(qi in 0usize..53, h0: u128, h1: u128) {
            let q = odd_primes()[qi];
            let md = m(q);
            let p = pad(md.block_params().pow, [h0, h1]);
            prop_assert!(p < md.block_params().pow);
            let mut e = [0u8; 128];
            crate::hash::expand_into(md, [h0, h1], &mut e);
            let label = Label::from_digits(md, &e[..md.digits()]).expect("digits below q");
            prop_assert_eq!(label.to_block(), p);
        }

        #[test]
        fn modular_arithmetic_matches_wide_arithmetic(a: u128, b: u128, qi in 0usize..53) {
            let pow = block_params(odd_primes()[qi]).pow;
            let (a, b) = (a % pow, b % pow);
            let wide = |x: u128, y: u128, sub: bool| -> u128 {
                // In u128 with pow < 2^128: use the borrow-free forms.
                if sub { if x >= y { x - y } else { pow - (y - x) } }
                else if x >= pow - y { x - (pow - y) } else { x + y }
            };
            prop_assert_eq!(add_mod(a, b, pow), wide(a, b, false));
            prop_assert_eq!(sub_mod(a, b, pow), wide(a, b, true));
        }
    }
}
