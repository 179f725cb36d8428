//! The offline phase of one linear layer (Delphi): the client's mask `r` goes to the server
//! encrypted; the server returns `Enc(W·r − s)` with circuit privacy (re-randomised, flooded,
//! switched down), so the client learns its share `c = W·r − s` and nothing about `W`.

use crate::share;
use rand::{CryptoRng, Rng, RngCore};
use tessera_he::linear::{PlainWeights, decrypt_output, encrypt_input, sub_plain};
use tessera_he::privacy::sanitize;
use tessera_he::{Ct, HeError, HeParams, LinearPlan, PublicKey, SecretKey};

/// Residues mod `t = 2^ℓ` as the centred integers the HE encoders take, in `(−t/2, t/2]`: the
/// residue `t/2` is `+t/2` (read as a signed ℓ-bit integer it would be `−t/2`, which the
/// encoders refuse; a uniform mask or share hits it with probability 2^−ℓ per value).
pub(crate) fn centred(v: &[u64], bits: usize) -> Vec<i64> {
    let bits = bits.clamp(1, 62);
    let (t, half) = (1u64 << bits, 1u64 << (bits - 1));
    v.iter()
        .map(|&x| {
            let x = share::reduce(x, bits);
            if x > half {
                x as i64 - t as i64
            } else {
                x as i64
            }
        })
        .collect()
}

/// The client's mask of a layer input of `n` values and its encryption in the layer's layout.
pub fn client_mask<R: RngCore + CryptoRng>(
    pk: &PublicKey,
    plan: &LinearPlan,
    n: usize,
    rng: &mut R,
) -> Result<(Vec<u64>, Vec<Ct>), HeError> {
    let bits = pk.params().plain_bits as usize;
    let r: Vec<u64> = (0..n).map(|_| share::reduce(rng.random(), bits)).collect();
    let cts = encrypt_mask(pk, plan, &r, rng)?;
    Ok((r, cts))
}

/// The encryption of the mask `r` (residues mod `t`) in the layer's layout.
pub fn encrypt_mask<R: RngCore + CryptoRng>(
    pk: &PublicKey,
    plan: &LinearPlan,
    r: &[u64],
    rng: &mut R,
) -> Result<Vec<Ct>, HeError> {
    let bits = pk.params().plain_bits as usize;
    encrypt_input(pk, plan, &centred(r, bits), rng)
}

/// The server's answer: `Enc(W·r − s)` for its fresh `s` (returned), sanitized for the client.
/// `weights` must have been encoded with a zero bias (the bias enters the server's online
/// share).
pub fn server_answer<R: RngCore + CryptoRng>(
    params: &HeParams,
    pk: &PublicKey,
    weights: &PlainWeights,
    out_len: usize,
    enc_r: &[Ct],
    rng: &mut R,
) -> Result<(Vec<u64>, Vec<Ct>), HeError> {
    let bits = params.plain_bits as usize;
    let s: Vec<u64> = (0..out_len)
        .map(|_| share::reduce(rng.random(), bits))
        .collect();
    let prods = weights.eval(params, enc_r)?;
    let masked = sub_plain(params, weights.plan(), &prods, &centred(&s, bits))?;
    let clean = masked
        .iter()
        .map(|c| sanitize(params, pk, c, rng))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((s, clean))
}

/// The client's share `c = W·r − s mod 2^ℓ` from the server's answer.
pub fn client_share(sk: &SecretKey, plan: &LinearPlan, answer: &[Ct]) -> Result<Vec<u64>, HeError> {
    let bits = sk.params().plain_bits as usize;
    // A share is any residue: the bound is the whole ring.
    let v = decrypt_output(sk, plan, answer, (1u128 << (bits - 1)) + 1)?;
    Ok(v.iter().map(|&x| share::residue(x, bits)).collect())
}
