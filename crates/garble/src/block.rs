//! Arithmetic on compressed labels: the one-time pads of projection-table rows.
//!
//! A label mod an odd prime q compresses to the integer C = Σ dᵢ·qⁱ < q^n ([`crate::Label::to_block`]).
//! Table rows are elements of the group Z_{q^n} (integers mod q^n): a row is the compressed block
//! of an output label plus a pad, both mod q^n (see [`crate::gate`]). Working on blocks instead
//! of digit vectors means a row costs two 128-bit additions and the evaluator turns only the one
//! row it opens back into digits ([`crate::pack::unpack_into`]) — not every row it receives. Mod 2 the group is
//! Z_2^128 under XOR, which is digit-wise addition mod 2 on the block itself.
//!
//! - [`pad`]: the pad of a hash output, I = ⌊N·q^n / 2^256⌋ for N = h₀ + 2^128·h₁ — the hash's
//!   output mod q itself ([`crate::hash`]); within 2^−128 of uniform on Z_{q^n}.
//! - [`add_mod`] / [`sub_mod`]: addition and subtraction mod q^n without branches (the garbler
//!   runs them on secret values).
//! - [`BlockParams`]: q^n and the reciprocal ⌈2^256 / q^n⌉ that [`crate::pack`] unpacks with.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::Label;
    use proptest::prelude::*;

    use crate::modulus::testing::{m, odd_primes};

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

    proptest! {
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
