//! Linear layers on ciphertexts: ciphertext × plaintext weights (the evaluator's own model) and
//! ciphertext × ciphertext (a model that arrives encrypted), residual adds, and decoding.
//!
//! Ciphertext × ciphertext follows the library's BFV multiplication step by step — extend both
//! operands to the product basis, tensor, scale by `t/q` — but extends each input and each
//! weight ciphertext once per layer (not once per product) and sums a whole output's products
//! before the one scaling, which also rounds once. The result has three polynomials; its owner
//! decrypts with `s` and `s²`, so no relinearization key exists.

use crate::keys::to_residues;
use crate::layout::LinearPlan;
use crate::{Ct, HeError, HeParams, PublicKey, SecretKey};
use fhe::bfv::{Ciphertext, Encoding, Plaintext};
use fhe_math::rns::ScalingFactor;
use fhe_math::rq::scaler::Scaler;
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Context, Poly, Representation};
use fhe_math::zq::primes::generate_prime;
use fhe_traits::FheEncoder;
use num_bigint::BigUint;
use rand::{CryptoRng, RngCore};
use std::sync::Arc;

/// Check that `cts` are `want` ciphertexts of `parts` polynomials at level 0 under `params`.
fn check_cts(
    params: &HeParams,
    cts: &[Ct],
    want: usize,
    parts: usize,
    what: &str,
) -> Result<(), HeError> {
    if cts.len() != want {
        return Err(HeError::Operand(format!(
            "{} {what} ciphertexts, the layout needs {want}",
            cts.len()
        )));
    }
    for (i, ct) in cts.iter().enumerate() {
        let level = params.level_of(ct)?;
        if level != 0 || ct.parts() != parts {
            return Err(HeError::Operand(format!(
                "{what} ciphertext {i} has {} polynomials at level {level}; expected {parts} at level 0",
                ct.parts()
            )));
        }
    }
    Ok(())
}

/// A centred integer polynomial in the ciphertext ring (NTT-Shoup form, ready to multiply).
fn ring_poly(params: &HeParams, coeffs: &[i64]) -> Result<Poly, HeError> {
    let ctx = params.bfv().context_at_level(0)?;
    let mut p = Poly::try_convert_from(coeffs, ctx, false, Representation::PowerBasis)?;
    p.change_representation(Representation::NttShoup);
    Ok(p)
}

/// The plaintext `Δ·b` of a centred bias polynomial (added, never multiplied).
fn bias_plaintext(params: &HeParams, coeffs: &[i64]) -> Result<Plaintext, HeError> {
    let v = to_residues(params, coeffs)?;
    Ok(Plaintext::try_encode(
        v.as_slice(),
        Encoding::poly(),
        params.bfv(),
    )?)
}

/// A layer's plaintext weights, encoded once (the evaluator's own model).
#[derive(Debug)]
pub struct PlainWeights {
    plan: LinearPlan,
    w: Vec<Poly>,
    b: Vec<Plaintext>,
}

impl PlainWeights {
    /// Encode `w` and `b` by `plan`.
    pub fn new(params: &HeParams, plan: LinearPlan, w: &[i64], b: &[i64]) -> Result<Self, HeError> {
        let w = plan
            .encode_weights(w)?
            .iter()
            .map(|p| ring_poly(params, p))
            .collect::<Result<_, _>>()?;
        let b = plan
            .encode_bias(b)?
            .iter()
            .map(|p| bias_plaintext(params, p))
            .collect::<Result<_, _>>()?;
        Ok(Self { plan, w, b })
    }

    /// The layout.
    pub fn plan(&self) -> &LinearPlan {
        &self.plan
    }

    /// `Σ input·w + b` per output: ciphertext × plaintext.
    pub fn eval(&self, params: &HeParams, inputs: &[Ct]) -> Result<Vec<Ct>, HeError> {
        check_cts(params, inputs, self.plan.n_inputs(), 2, "input")?;
        let ctx = params.bfv().context_at_level(0)?;
        (0..self.plan.n_outputs())
            .map(|out| {
                let mut c = [
                    Poly::zero(ctx, Representation::Ntt),
                    Poly::zero(ctx, Representation::Ntt),
                ];
                for (i, j) in self.plan.products(out) {
                    for (acc, ci) in c.iter_mut().zip(inputs[i].0.iter()) {
                        *acc += &(ci * &self.w[j]);
                    }
                }
                let mut ct = Ciphertext::new(c.to_vec(), params.bfv())?;
                ct += &self.b[self.plan.bias_of(out)];
                Ok(Ct(ct))
            })
            .collect()
    }
}

/// A layer's weights encrypted under the key holder's public key (the model owner's upload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptedWeights {
    /// Weight ciphertexts (`plan.n_weights()`).
    pub w: Vec<Ct>,
    /// Bias ciphertexts (`plan.n_biases()`).
    pub b: Vec<Ct>,
}

impl EncryptedWeights {
    /// Encrypt `w` and `b` by `plan` under `pk`.
    pub fn encrypt<R: RngCore + CryptoRng>(
        pk: &PublicKey,
        plan: &LinearPlan,
        w: &[i64],
        b: &[i64],
        rng: &mut R,
    ) -> Result<Self, HeError> {
        let w = plan
            .encode_weights(w)?
            .iter()
            .map(|p| pk.encrypt(p, rng))
            .collect::<Result<_, _>>()?;
        let b = plan
            .encode_bias(b)?
            .iter()
            .map(|p| pk.encrypt(p, rng))
            .collect::<Result<_, _>>()?;
        Ok(Self { w, b })
    }

    /// Extend every weight ciphertext to the product basis once, for repeated evaluation.
    pub fn prepare(&self, params: &HeParams, plan: LinearPlan) -> Result<PreparedWeights, HeError> {
        check_cts(params, &self.w, plan.n_weights(), 2, "weight")?;
        check_cts(params, &self.b, plan.n_biases(), 2, "bias")?;
        let tensor = Tensorer::new(params, plan.max_products())?;
        let w = self
            .w
            .iter()
            .map(|ct| tensor.extend(ct))
            .collect::<Result<_, _>>()?;
        Ok(PreparedWeights {
            plan,
            tensor,
            w,
            b: self.b.clone(),
        })
    }
}

/// The product basis and the two scalers of a ciphertext × ciphertext product.
#[derive(Debug)]
struct Tensorer {
    up: Scaler,
    down: Scaler,
}

impl Tensorer {
    fn new(params: &HeParams, products: usize) -> Result<Self, HeError> {
        let base = params.bfv().context_at_level(0)?;
        let n = params.degree();
        // The exact tensor of a sum of `products` pairs has coefficients below
        // products·N·(q/2)²; the extension primes make the product basis exceed twice that.
        let need = params.log_q()
            + 2
            + (64 - (n as u64 * products.max(1) as u64).leading_zeros() as usize);
        let mut basis = base.moduli().to_vec();
        let mut upper = 1u64 << 62;
        let mut extra = 0;
        while extra < need {
            let p = generate_prime(62, 2 * n as u64, upper)
                .ok_or_else(|| HeError::Operand("no prime left for the product basis".into()))?;
            upper = p;
            if !basis.contains(&p) {
                basis.push(p);
                extra += 61;
            }
        }
        let mul = Arc::new(Context::new(&basis, n)?);
        let up = Scaler::new(base, &mul, ScalingFactor::one())?;
        let t = BigUint::from(params.plaintext());
        let down = Scaler::new(&mul, base, ScalingFactor::new(&t, base.modulus()))?;
        Ok(Self { up, down })
    }

    fn extend(&self, ct: &Ct) -> Result<[Poly; 2], HeError> {
        let mut c = ct.0.iter().map(|p| {
            let mut q = p.clone();
            q.change_representation(Representation::Ntt);
            q.scale(&self.up)
        });
        match (c.next(), c.next()) {
            (Some(a), Some(b)) => Ok([a?, b?]),
            _ => Err(HeError::Operand(
                "a ciphertext with fewer than two polynomials".into(),
            )),
        }
    }
}

/// Encrypted weights extended to the product basis (the server's cache of an uploaded model).
#[derive(Debug)]
pub struct PreparedWeights {
    plan: LinearPlan,
    tensor: Tensorer,
    w: Vec<[Poly; 2]>,
    b: Vec<Ct>,
}

impl PreparedWeights {
    /// The layout.
    pub fn plan(&self) -> &LinearPlan {
        &self.plan
    }

    /// `Σ input·w + b` per output: ciphertext × ciphertext, three polynomials per result.
    pub fn eval(&self, params: &HeParams, inputs: &[Ct]) -> Result<Vec<Ct>, HeError> {
        check_cts(params, inputs, self.plan.n_inputs(), 2, "input")?;
        let x = inputs
            .iter()
            .map(|ct| self.tensor.extend(ct))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = x.first().or(self.w.first()) else {
            return Err(HeError::Operand("a layer without inputs".into()));
        };
        let mctx = first[0].ctx().clone();
        (0..self.plan.n_outputs())
            .map(|out| {
                let mut c: [Poly; 3] =
                    std::array::from_fn(|_| Poly::zero(&mctx, Representation::Ntt));
                for (i, j) in self.plan.products(out) {
                    let (a, b) = (&x[i], &self.w[j]);
                    c[0] += &(&a[0] * &b[0]);
                    c[1] += &(&a[0] * &b[1]);
                    c[1] += &(&a[1] * &b[0]);
                    c[2] += &(&a[1] * &b[1]);
                }
                let mut parts = Vec::with_capacity(3);
                for mut ci in c {
                    ci.change_representation(Representation::PowerBasis);
                    let mut d = ci.scale(&self.tensor.down)?;
                    d.change_representation(Representation::Ntt);
                    parts.push(d);
                }
                let bias = &self.b[self.plan.bias_of(out)].0;
                for (p, q) in parts.iter_mut().zip(bias.iter()) {
                    *p += q;
                }
                Ok(Ct(Ciphertext::new(parts, params.bfv())?))
            })
            .collect()
    }
}

/// `outs − v` for output values `v` placed at the layout's target coefficients (the 2pc
/// server's mask `s`); the other coefficients are left as they are.
pub fn sub_plain(
    params: &HeParams,
    plan: &LinearPlan,
    outs: &[Ct],
    v: &[i64],
) -> Result<Vec<Ct>, HeError> {
    let polys = plan.encode_output(v)?;
    if polys.len() != outs.len() {
        return Err(HeError::Operand(format!(
            "{} ciphertexts for a layout with {} outputs",
            outs.len(),
            polys.len()
        )));
    }
    outs.iter()
        .zip(&polys)
        .map(|(ct, p)| {
            if params.level_of(ct)? != 0 || ct.parts() != 2 {
                return Err(HeError::Operand(
                    "masking needs a degree-1 result at the full modulus".into(),
                ));
            }
            let mut c = ct.0.clone();
            c -= &bias_plaintext(params, p)?;
            Ok(Ct(c))
        })
        .collect()
}

/// Switch results down to the last level, the first prime only (the rule sizes it to hold the
/// rounding noise of a degree-2 result): fewer bytes to send and a cheaper decryption. A no-op
/// where the parameters have one prime.
pub fn switch_down(params: &HeParams, cts: &mut [Ct]) -> Result<(), HeError> {
    let last = params.bfv().max_level();
    for ct in cts {
        params.level_of(ct)?;
        ct.0.switch_to_level(last)?;
    }
    Ok(())
}

/// Encrypt a layer's input by its layout.
pub fn encrypt_input<R: RngCore + CryptoRng>(
    pk: &PublicKey,
    plan: &LinearPlan,
    x: &[i64],
    rng: &mut R,
) -> Result<Vec<Ct>, HeError> {
    plan.encode_input(x)?
        .iter()
        .map(|p| pk.encrypt(p, rng))
        .collect()
}

/// Decrypt a layer's outputs and read its accumulators, each checked against `bound`.
pub fn decrypt_output(
    sk: &SecretKey,
    plan: &LinearPlan,
    outs: &[Ct],
    bound: u128,
) -> Result<Vec<i64>, HeError> {
    let dec = outs
        .iter()
        .map(|ct| sk.decrypt(ct))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&[i64]> = dec.iter().map(|d| d.as_slice()).collect();
    let acc = plan.decode(&refs)?;
    if let Some((index, &value)) = acc
        .iter()
        .enumerate()
        .find(|(_, v)| u128::from(v.unsigned_abs()) > bound)
    {
        return Err(HeError::OutOfRange {
            index,
            value,
            bound,
        });
    }
    Ok(acc)
}

/// `a·ma + b·mb`, ciphertext by ciphertext (a residual add with its integer multipliers; the
/// layouts of `a` and `b` must be the same).
pub fn add_scaled(
    params: &HeParams,
    a: &[Ct],
    ma: i64,
    b: &[Ct],
    mb: i64,
) -> Result<Vec<Ct>, HeError> {
    if a.len() != b.len() {
        return Err(HeError::Operand(format!(
            "adding {} ciphertexts to {}",
            a.len(),
            b.len()
        )));
    }
    let scale = |p: &Poly, m: i64| {
        let q = p * &BigUint::from(m.unsigned_abs());
        if m < 0 { -&q } else { q }
    };
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let (lx, ly) = (params.level_of(x)?, params.level_of(y)?);
            if lx != ly || x.parts() != y.parts() {
                return Err(HeError::Operand(
                    "adding ciphertexts of different shapes or levels".into(),
                ));
            }
            let parts =
                x.0.iter()
                    .zip(y.0.iter())
                    .map(|(p, q)| {
                        let mut s = scale(p, ma);
                        s += &scale(q, mb);
                        s
                    })
                    .collect();
            Ok(Ct(Ciphertext::new(parts, params.bfv())?))
        })
        .collect()
}
