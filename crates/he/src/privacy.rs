//! Circuit privacy: a result that leaves the evaluator towards the key holder must reveal the
//! plaintext it encrypts and nothing about how it was computed (in `2pc`, the server's weights).
//!
//! # Threat model
//!
//! The key holder is semi-honest: it generated its keys honestly and decrypts what it receives.
//! A ciphertext × plaintext result carries, besides `Δ·m`, a noise `v` that depends on the
//! weights (`v = Σ w·e` over the input noises), and polynomials `(c₀, c₁)` whose distribution
//! depends on them too. [`sanitize`]
//!
//! 1. adds a fresh public-key encryption of zero (re-randomisation: `(c₀, c₁)` become
//!    distributed as a fresh ciphertext's, up to the phase);
//! 2. adds to `c₀` a flooding noise uniform in `[−2^F, 2^F]` with `F = noise_bits + λ`, where
//!    `noise_bits` bounds `|v|` by the parameter rule ([`crate::params`]) — the statistical
//!    distance between the results for any two weight sets with the same outputs is at most
//!    `N·2^(−λ)` (λ = 40 by default);
//! 3. switches the modulus down to the first prime `q₀` (smaller to send; a deterministic
//!    function of the flooded ciphertext, so it keeps the guarantee).
//!
//! The guarantee needs the bound on `|v|` to hold: `tests/he.rs` measures worst-case layers
//! against it. A malicious key holder (bad keys, crafted inputs) is outside this model.

use crate::{Ct, HeError, HeParams, PublicKey};
use fhe::bfv::Ciphertext;
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Poly, Representation};
use num_bigint::BigUint;
use rand::{CryptoRng, Rng, RngCore};

/// Re-randomise, flood and switch down one degree-1 result (see the module docs).
pub fn sanitize<R: RngCore + CryptoRng>(
    params: &HeParams,
    pk: &PublicKey,
    ct: &Ct,
    rng: &mut R,
) -> Result<Ct, HeError> {
    let flood = params.flood_bits.ok_or_else(|| {
        HeError::Operand(
            "these parameters were chosen without flooding room (ParamOptions::flood)".into(),
        )
    })?;
    if params.level_of(ct)? != 0 || ct.parts() != 2 {
        return Err(HeError::Operand(
            "only a fresh-degree result at the full modulus can be sanitized".into(),
        ));
    }
    let zero = pk.encrypt_zero(rng)?;
    let ctx = params.bfv().context_at_level(0)?;
    let q = ctx.modulus().clone();
    let bound = 1u128 << flood.min(126);
    let coeffs: Vec<BigUint> = (0..params.degree())
        .map(|_| {
            let v = rng.random_range(0..=2 * bound);
            if v >= bound {
                BigUint::from(v - bound)
            } else {
                &q - BigUint::from(bound - v)
            }
        })
        .collect();
    let mut e = Poly::try_convert_from(coeffs.as_slice(), ctx, false, Representation::PowerBasis)?;
    e.change_representation(Representation::Ntt);
    let mut parts: Vec<Poly> = ct.0.iter().zip(zero.0.iter()).map(|(a, b)| a + b).collect();
    if let Some(c0) = parts.first_mut() {
        *c0 += &e;
    }
    let mut out = Ciphertext::new(parts, params.bfv())?;
    out.switch_to_level(params.bfv().max_level())?;
    Ok(Ct(out))
}
