//! Additive shares in Z_(2^ℓ) and the linear layers on them.
//!
//! A linear layer's accumulator `acc = W·x + b` is split between the parties: offline the client
//! picks a mask `r` for the layer's input and learns `c = W·r − s mod 2^ℓ` through the HE layer
//! (the server's random `s` hides `W·r`); online the server receives `y = x − r mod 2^ℓ` and
//! computes `a = W·y + b + s mod 2^ℓ`. Then `a + c ≡ W·x + b (mod 2^ℓ)`, and since
//! `2^(ℓ−1)` exceeds the accumulator's proven bound the sum read as a signed ℓ-bit value *is*
//! `acc`. Arithmetic mod 2^ℓ is wrapping u64 arithmetic masked to ℓ bits (mod 2^64 is a ring
//! homomorphism onto mod 2^ℓ).

use tessera_he::layout::ConvShape;

/// `v mod 2^ℓ`.
#[inline]
pub fn reduce(v: u64, bits: usize) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

/// A signed integer as its residue mod 2^ℓ.
#[inline]
pub fn residue(v: i64, bits: usize) -> u64 {
    reduce(v as u64, bits)
}

/// The client's first online message: its quantized input `x` minus the mask `r0` of the model
/// input, mod 2^ℓ. Errors when the input does not have the model input's length.
pub fn masked_input(
    x: &[i64],
    r0: &[u64],
    bits: usize,
) -> Result<Vec<u64>, crate::protocol::TwoPcError> {
    if x.len() != r0.len() {
        return Err(crate::protocol::TwoPcError::Input(format!(
            "{} input values for a model input of {}",
            x.len(),
            r0.len()
        )));
    }
    Ok(x.iter()
        .zip(r0)
        .map(|(&v, &r)| reduce(residue(v, bits).wrapping_sub(r), bits))
        .collect())
}

/// A residue mod 2^ℓ read as a signed ℓ-bit integer.
#[inline]
pub fn signed(v: u64, bits: usize) -> i64 {
    let v = reduce(v, bits);
    if bits < 64 && v >> (bits - 1) & 1 == 1 {
        (v | !((1u64 << bits) - 1)) as i64
    } else {
        v as i64
    }
}

/// `W·y + b` of a conv over residues `y` (`[c_in, h, w]`), mod 2^ℓ: `[c_out, oh, ow]`.
pub fn conv(s: &ConvShape, y: &[u64], w: &[i64], b: &[i64], bits: usize) -> Vec<u64> {
    let (oh, ow) = s.out_hw();
    let cg = s.c_in / s.groups;
    let og = s.c_out / s.groups;
    let mut out = Vec::with_capacity(s.c_out * oh * ow);
    for o in 0..s.c_out {
        let g = o / og;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b.get(o).copied().unwrap_or(0) as u64;
                for ci in 0..cg {
                    let c = g * cg + ci;
                    for l in 0..s.k[0] {
                        let iy = (oy * s.stride[0] + l * s.dil[0]) as isize - s.pads[0] as isize;
                        if iy < 0 || iy >= s.h as isize {
                            continue;
                        }
                        for m in 0..s.k[1] {
                            let ix =
                                (ox * s.stride[1] + m * s.dil[1]) as isize - s.pads[1] as isize;
                            if ix < 0 || ix >= s.w as isize {
                                continue;
                            }
                            let wv = w[((o * cg + ci) * s.k[0] + l) * s.k[1] + m] as u64;
                            let yv = y[(c * s.h + iy as usize) * s.w + ix as usize];
                            acc = acc.wrapping_add(wv.wrapping_mul(yv));
                        }
                    }
                }
                out.push(reduce(acc, bits));
            }
        }
    }
    out
}

/// `W·y + b` of a dense layer (`W`: `[m, k]`) over residues, mod 2^ℓ.
pub fn dense(k: usize, m: usize, y: &[u64], w: &[i64], b: &[i64], bits: usize) -> Vec<u64> {
    (0..m)
        .map(|r| {
            let acc = (0..k).fold(b.get(r).copied().unwrap_or(0) as u64, |acc, j| {
                acc.wrapping_add((w[r * k + j] as u64).wrapping_mul(y[j]))
            });
            reduce(acc, bits)
        })
        .collect()
}
