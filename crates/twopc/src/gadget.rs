//! The non-linear step of `2pc` as a boolean circuit: from the two additive shares of a linear
//! layer's accumulator to the next layer's masked input, exactly as the integer semantics v2
//! computes it.
//!
//! For one activation with the layer's public multiplier `m`, shift `n` and clamp `[lo, hi]`:
//!
//! 1. `acc = a + c mod 2^ℓ` (the server's and the client's share), read as a signed ℓ-bit value
//!    — exact because the parameters make `2^(ℓ−1)` exceed every accumulator's proven bound;
//! 2. `q = ⌊(acc·m + 2^(n−1)) / 2^n⌋` — `rq` of v2 (`tessera_engine::qint::rq`): the product by
//!    the public `m` as shifted adds of `acc` (one per set bit of `|m|`, negated for `m < 0`),
//!    the rounding constant folded in, the shift free;
//! 3. `y = clamp(q, lo, hi)` (ReLU is the clamp with `lo = 0`);
//! 4. `out = y − r mod 2^ℓ'` with the client's mask `r` of the next layer's input.
//!
//! AND gates: ℓ (the sum) + about `popcount(m)·w` (the product, `w` the product's width) + w
//! (rounding) + 2w (the two comparisons) + 2·ℓ' (the two selections) + ℓ' (the mask).

use tessera_mpc::MpcError;
use tessera_mpc::circuit::{Bit, Builder, Circuit, Word};

/// The public constants of one requantize-and-clamp step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requant {
    /// Share width ℓ (the HE plaintext modulus is 2^ℓ).
    pub share_bits: usize,
    /// Multiplier `m`.
    pub mult: i64,
    /// Shift `n`.
    pub shift: u32,
    /// Clamp bounds.
    pub lo: i64,
    /// Clamp bounds.
    pub hi: i64,
    /// Width of the output share (the next layer's mask ring, 2^ℓ').
    pub out_bits: usize,
}

/// Bits of `|v|`.
pub fn bits_for(v: i128) -> usize {
    (129 - v.unsigned_abs().leading_zeros()) as usize
}

/// Sign-extend `w` to `width` bits (or cut it to them).
pub fn extend(w: &Word, width: usize) -> Word {
    let sign = w.last().copied().unwrap_or(Bit::Const(false));
    (0..width)
        .map(|i| w.get(i).copied().unwrap_or(sign))
        .collect()
}

/// Add the step's gates to `b`: shares `a` (ℓ bits) and `c` (ℓ bits), mask `r` (ℓ' bits) →
/// the masked output (ℓ' bits).
pub fn requant_clamp(
    b: &mut Builder,
    q: &Requant,
    a: &Word,
    c: &Word,
    r: &Word,
) -> Result<Word, MpcError> {
    if r.len() != q.out_bits || q.out_bits < 2 || q.out_bits > 62 {
        return Err(MpcError::Circuit(
            "mask width does not match the step".into(),
        ));
    }
    let y = requant_value(b, q, a, c)?;
    let y = extend(&y, q.out_bits);
    Ok(b.sub(&y, r))
}

/// Steps 1–3: the clamped value `clamp(rq(a + c; m, n), lo, hi)` as a signed word just wide
/// enough for `[lo, hi]`.
pub fn requant_value(b: &mut Builder, q: &Requant, a: &Word, c: &Word) -> Result<Word, MpcError> {
    if q.share_bits < 2 || q.share_bits > 62 || q.shift > 62 || q.lo > q.hi {
        return Err(MpcError::Circuit(format!(
            "unsupported requantization {q:?}"
        )));
    }
    if a.len() != q.share_bits || c.len() != q.share_bits {
        return Err(MpcError::Circuit(
            "share width does not match the step".into(),
        ));
    }
    let acc = b.add(a, c);
    let v = mul_rq(b, &acc, q.mult, q.shift);
    Ok(clamp_to(b, &v, q.lo, q.hi))
}

/// `⌊(x·m + 2^(n−1)) / 2^n⌋` (v2's `rq`) of the signed word `x`: the product by the public `m`
/// as shifted adds (one per set bit of `|m|`, negated for `m < 0`), the rounding constant
/// added, the shift free. The result is as wide as the product.
pub fn mul_rq(b: &mut Builder, x: &Word, m: i64, shift: u32) -> Word {
    // The product's width: |x| < 2^(len−1), |m| < 2^bits(m), plus the rounding carry.
    let w = x.len() + bits_for(i128::from(m)) + 2;
    let x = extend(x, w);
    let mut prod = b.constant(0, w);
    let mag = m.unsigned_abs();
    for k in 0..64 {
        if (mag >> k) & 1 == 1 {
            let shifted = b.shl(&x, k);
            prod = b.add(&prod, &shifted);
        }
    }
    if m < 0 {
        let zero = b.constant(0, w);
        prod = b.sub(&zero, &prod);
    }
    let half = if shift == 0 { 0 } else { 1i128 << (shift - 1) };
    let rounding = b.constant(half, w);
    let sum = b.add(&prod, &rounding);
    b.shr(&sum, shift as usize, true)
}

/// `clamp(x, lo, hi)` of the signed word `x`, as a signed word just wide enough for `[lo, hi]`.
pub fn clamp_to(b: &mut Builder, x: &Word, lo: i64, hi: i64) -> Word {
    let w = x.len();
    let lo_w = b.constant(i128::from(lo), w);
    let hi_w = b.constant(i128::from(hi), w);
    let below = b.lt_signed(x, &lo_w);
    let above = b.lt_signed(&hi_w, x);
    let y = b.mux_word(below, &lo_w, x);
    let y = b.mux_word(above, &hi_w, &y);
    // [lo, hi] fits this many signed bits; the value is in it after the clamp.
    let vb = (bits_for(i128::from(lo)).max(bits_for(i128::from(hi))) + 1).min(w);
    y.into_iter().take(vb).collect()
}

/// The low `bits` bits of `x` sign-extended or cut to exactly `bits`: exact when the value is
/// known to fit `bits` signed bits.
pub fn fit(x: &Word, bits: usize) -> Word {
    extend(x, bits).into_iter().take(bits).collect()
}

/// A circuit of `n` independent steps with the same constants: inputs (server shares, client
/// shares, client masks), one output group per step.
pub fn layer_circuit(q: &Requant, n: usize) -> Result<Circuit, MpcError> {
    let mut b = Builder::new();
    let a: Vec<Word> = (0..n).map(|_| b.input(q.share_bits)).collect();
    let c: Vec<Word> = (0..n).map(|_| b.input(q.share_bits)).collect();
    let r: Vec<Word> = (0..n).map(|_| b.input(q.out_bits)).collect();
    for i in 0..n {
        let o = requant_clamp(&mut b, q, &a[i], &c[i], &r[i])?;
        b.output(&o);
    }
    b.finish()
}
