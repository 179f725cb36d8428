//! BFV parameters chosen by one documented rule from the layers' proven integer ranges.
//!
//! # The rule
//!
//! Inputs: for every linear layer a [`LayerNeed`] — its accumulator bound `A` (Σ|w|·max|x| + |b|,
//! proven by the integer semantics), the largest input and weight magnitudes `X` and `W`, the
//! number `K` of weights in one kernel polynomial, the number of products `P` summed into one
//! output ciphertext, and whether the weights are plaintext ([`Product::Plain`], the `2pc`
//! offline phase) or encrypted ([`Product::Encrypted`], `lhe`: one multiplicative level).
//!
//! 1. **Plaintext modulus** `t = 2^ℓ` with `2^(ℓ−1) > max A`: every accumulator is exact as a
//!    centred residue mod `t`. A power of two lets the `2pc` shares live in `Z_(2^ℓ)`.
//! 2. **Noise** (∞-norm bounds, in bits; σ² = 10 is the library's error and secret variance,
//!    coefficients of a centred binomial sample are at most 20 in magnitude):
//!    * fresh public-key encryption: `B = 100·√(2N)` (the phase noise `e·u + e₁ + e₂·s` has
//!      standard deviation `10·√(2N)`; 10 standard deviations);
//!    * ciphertext × plaintext (centred weights): `P·K·W·(B + t)` — worst case: every product
//!      sums at most `K` noise terms scaled by `W`, and the lifted message `m ∈ [0, t)` times the
//!      weights adds at most `(q mod t)·K·W < t·K·W`;
//!    * ciphertext × ciphertext: `P·t·N·B·2^6` — the BFV tensor-and-scale growth
//!      `t·(‖I₁‖·v₂ + ‖I₂‖·v₁)` with `‖I‖ ≈ √N·20` per ciphertext, taken with an extra `√N·2`
//!      for headroom; `tests/he.rs` measures the noise of worst-case layers and checks it stays
//!      below this estimate.
//!    * circuit privacy ([`ParamOptions::flood`]): the flooding noise is `2^λ` times the bound
//!      above (`λ` = [`ParamOptions::stat_bits`], statistical distance ≤ `N·2^(−λ)` per
//!      ciphertext), and the result is switched down to the first modulus `q₀`.
//! 3. **Ciphertext modulus**: `log q ≥ ℓ + 1 + log₂(noise) + 4` (`q > 2t·noise` with 16×
//!    headroom). Results are switched down to the first prime `q₀` before they leave the
//!    evaluator (half the bytes, a fraction of the decryption), so `q₀` holds the switch's
//!    rounding noise: `ℓ + 1 + log₂(29·N) + 3` bits ([`switched_noise_bits`]: 10 standard
//!    deviations of `r₂·s²` for a degree-2 result), or with flooding `ℓ + log₂(100·√N) + 4`
//!    bits (degree-1 results). Primes of at most 60 bits, each `≡ 1 mod 2N`.
//! 4. **Ring degree**: the smallest `N ∈ {2048, …, 32768}` whose `log q` is within the HE
//!    standard's 128-bit classical bound ([`max_log_q`]), and at least the degree the layers'
//!    layouts ask for ([`ParamOptions::min_degree`]). If none fits, the layer that needs the
//!    most is named ([`HeError::DoesNotFit`]).

use crate::HeError;
use fhe::bfv::{BfvParameters, BfvParametersBuilder};
use std::sync::Arc;

/// The ring degrees the rule considers.
pub const DEGREES: [usize; 5] = [2048, 4096, 8192, 16384, 32768];

/// Largest `log₂ q` at 128-bit classical security for ring degree `n`: the HE standard's table
/// (homomorphicencryption.org, 2018), the smaller of its ternary-secret and error-distribution
/// (σ = 3.2) columns: 54, 109, 218, 438, 880 bits for `N` = 2048 … 32768.
pub fn max_log_q(n: usize) -> Option<u32> {
    match n {
        1024 => Some(27),
        2048 => Some(54),
        4096 => Some(109),
        8192 => Some(218),
        16384 => Some(438),
        32768 => Some(880),
        _ => None,
    }
}

/// How the weights enter the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// Ciphertext × plaintext (the weights are the evaluator's own).
    Plain,
    /// Ciphertext × ciphertext (the weights arrive encrypted): one multiplicative level.
    Encrypted,
}

/// What one linear layer needs from the parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerNeed {
    /// The layer's name (named in errors).
    pub name: String,
    /// Proven bound on every accumulator, `max |Σ w·x + b|`.
    pub acc_bound: u128,
    /// Largest input magnitude.
    pub x_bound: u128,
    /// Largest weight magnitude.
    pub w_bound: u128,
    /// Nonzero weights in one kernel polynomial.
    pub terms: usize,
    /// Products summed into one output ciphertext.
    pub products: usize,
    /// Plain or encrypted weights.
    pub product: Product,
}

/// Options of the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamOptions {
    /// Flood the results for circuit privacy (on for `2pc`).
    pub flood: bool,
    /// Statistical security of the flooding, in bits.
    pub stat_bits: u32,
    /// The smallest ring degree the layouts may use.
    pub min_degree: usize,
}

impl Default for ParamOptions {
    fn default() -> Self {
        Self {
            flood: false,
            stat_bits: 40,
            min_degree: 2048,
        }
    }
}

/// Chosen BFV parameters and the figures the rule derived them from.
#[derive(Clone, Debug)]
pub struct HeParams {
    pub(crate) bfv: Arc<BfvParameters>,
    /// `ℓ` with `t = 2^ℓ`.
    pub plain_bits: u32,
    /// Bits of the estimated noise bound after the deepest layer (before flooding).
    pub noise_bits: u32,
    /// Bits of the flooding noise, when circuit privacy is on.
    pub flood_bits: Option<u32>,
    /// Sizes in bits of the ciphertext primes.
    pub moduli_bits: Vec<usize>,
    /// The largest accumulator bound over the layers.
    pub acc_bound: u128,
}

fn log2_ceil_f(v: f64) -> u32 {
    v.max(1.0).log2().ceil() as u32
}

/// `log₂` of the fresh encryption noise bound `100·√(2N)`.
pub fn fresh_noise_bits(n: usize) -> u32 {
    log2_ceil_f(100.0 * (2.0 * n as f64).sqrt())
}

/// `log₂` of the rounding noise a degree-2 ciphertext picks up when switched down to the first
/// prime: 10 standard deviations of `r₂·s²`, `10·N·σ²/√12 ≈ 29·N`.
pub fn switched_noise_bits(n: usize) -> u32 {
    log2_ceil_f(29.0 * n as f64)
}

/// Estimated noise bits of one layer's results (rule step 2).
pub fn layer_noise_bits(need: &LayerNeed, n: usize, plain_bits: u32) -> u32 {
    let b = 100.0 * (2.0 * n as f64).sqrt();
    let t = 2f64.powi(plain_bits as i32);
    let p = need.products.max(1) as f64;
    let v = match need.product {
        Product::Plain => p * need.terms.max(1) as f64 * (need.w_bound.max(1) as f64) * (b + t),
        Product::Encrypted => p * t * n as f64 * b * 64.0,
    };
    log2_ceil_f(v)
}

/// Prime sizes summing to at least `total` bits, each of at most 60 bits and at least `min`
/// (every prime must exceed the plaintext modulus), the first of `first` bits where asked and
/// the rest can form primes of their own.
fn split_moduli(total: u32, first: Option<u32>, min: u32) -> Vec<usize> {
    let min = min.clamp(20, 60);
    let mut sizes = Vec::new();
    let mut rest = total;
    if let Some(f) = first.map(|f| f.clamp(min, 60))
        && total >= f + min
    {
        sizes.push(f as usize);
        rest -= f;
    }
    if rest > 0 || sizes.is_empty() {
        let k = rest.div_ceil(60).max(1);
        let base = rest / k;
        let extra = rest % k;
        for i in 0..k {
            sizes.push((base + u32::from(i < extra)).max(min) as usize);
        }
    }
    sizes
}

impl HeParams {
    /// Apply the rule to `needs` (one parameter set, one key, for every layer).
    pub fn choose(needs: &[LayerNeed], opts: ParamOptions) -> Result<Self, HeError> {
        let acc_bound = needs.iter().map(|n| n.acc_bound).max().unwrap_or(1).max(1);
        let plain_bits = 129 - (2 * acc_bound).leading_zeros();
        if plain_bits > 60 {
            let worst = needs.iter().max_by_key(|n| n.acc_bound);
            return Err(HeError::DoesNotFit {
                layer: worst.map(|n| n.name.clone()).unwrap_or_default(),
                detail: format!(
                    "its accumulators reach ±{acc_bound}, over the 60-bit plaintext modulus"
                ),
            });
        }
        let mut last = String::new();
        for &n in DEGREES.iter().filter(|&&n| n >= opts.min_degree) {
            let Some(limit) = max_log_q(n) else { continue };
            let (noise_bits, worst) = needs
                .iter()
                .map(|nd| (layer_noise_bits(nd, n, plain_bits), nd.name.as_str()))
                .max()
                .unwrap_or((fresh_noise_bits(n), ""));
            // Every prime exceeds the plaintext modulus (and is at least 20 bits).
            let min_prime = (plain_bits + 2).max(20);
            let (total, first, flood_bits) = if opts.flood {
                let flood = noise_bits + opts.stat_bits;
                let q0 = plain_bits + log2_ceil_f(100.0 * (n as f64).sqrt()) + 4;
                // q ≥ 4·t·flood so the switched flood noise is ≤ q₀/(4t).
                let total = (plain_bits + flood + 4).max(q0 + min_prime);
                (total, Some(q0), Some(flood))
            } else {
                // The first prime holds a switched-down degree-2 result: its rounding noise
                // (dominated by r₂·s², standard deviation N·σ²/√12) below 10 standard deviations.
                let q0 = plain_bits + 1 + switched_noise_bits(n) + 3;
                // At least one more prime beside q₀, so results can always be switched down to it.
                let total = (plain_bits + 1 + noise_bits + 4).max(q0 + min_prime);
                (total, Some(q0), None)
            };
            let sizes = split_moduli(total, first, min_prime);
            let bits: usize = sizes.iter().sum();
            if bits as u32 > limit {
                last = format!(
                    "it needs a {bits}-bit ciphertext modulus (t = 2^{plain_bits}, noise 2^{noise_bits}), over {limit} bits at N = {n} ('{worst}' needs the most)"
                );
                continue;
            }
            let bfv = BfvParametersBuilder::new()
                .set_degree(n)
                .set_plaintext_modulus(1u64 << plain_bits)
                .set_moduli_sizes(&sizes)
                .build_arc()?;
            return Ok(Self {
                bfv,
                plain_bits,
                noise_bits,
                flood_bits,
                moduli_bits: sizes,
                acc_bound,
            });
        }
        let worst = needs
            .iter()
            .max_by_key(|nd| layer_noise_bits(nd, 32768, plain_bits))
            .map(|n| n.name.clone())
            .unwrap_or_default();
        Err(HeError::DoesNotFit {
            layer: worst,
            detail: if last.is_empty() {
                format!("no ring degree ≥ {} is available", opts.min_degree)
            } else {
                last
            },
        })
    }

    /// Parameters given explicitly (ring degree, `ℓ`, prime sizes): what a peer's serialized
    /// parameters rebuild. The security bound is checked here too.
    pub fn explicit(
        degree: usize,
        plain_bits: u32,
        moduli_bits: &[usize],
    ) -> Result<Self, HeError> {
        let limit = max_log_q(degree).ok_or_else(|| {
            HeError::Operand(format!("ring degree {degree} is not one of 1024 … 32768"))
        })?;
        let bits: usize = moduli_bits.iter().sum();
        if bits as u32 > limit || moduli_bits.is_empty() {
            return Err(HeError::Operand(format!(
                "a {bits}-bit ciphertext modulus at N = {degree} is not 128-bit secure (at most {limit} bits)"
            )));
        }
        if !(2..=60).contains(&plain_bits) {
            return Err(HeError::Operand(format!(
                "plaintext modulus 2^{plain_bits} is outside 2^2 … 2^60"
            )));
        }
        if let Some(b) = moduli_bits
            .iter()
            .find(|&&b| b < plain_bits as usize + 2 || b > 62)
        {
            return Err(HeError::Operand(format!(
                "a {b}-bit prime cannot carry the plaintext modulus 2^{plain_bits} (each prime needs {} to 62 bits)",
                plain_bits + 2
            )));
        }
        let bfv = BfvParametersBuilder::new()
            .set_degree(degree)
            .set_plaintext_modulus(1u64 << plain_bits)
            .set_moduli_sizes(moduli_bits)
            .build_arc()?;
        Ok(Self {
            bfv,
            plain_bits,
            noise_bits: 0,
            flood_bits: None,
            moduli_bits: moduli_bits.to_vec(),
            acc_bound: (1u128 << (plain_bits - 1)) - 1,
        })
    }

    /// Ring degree `N`.
    pub fn degree(&self) -> usize {
        self.bfv.degree()
    }

    /// Plaintext modulus `t`.
    pub fn plaintext(&self) -> u64 {
        self.bfv.plaintext()
    }

    /// Bits of the ciphertext modulus.
    pub fn log_q(&self) -> usize {
        self.moduli_bits.iter().sum()
    }

    /// The library's parameter object.
    pub fn bfv(&self) -> &Arc<BfvParameters> {
        &self.bfv
    }

    /// The level of `ct` under these parameters, checking that every polynomial lives in the
    /// same one of their contexts (the library's arithmetic would panic otherwise).
    pub fn level_of(&self, ct: &crate::Ct) -> Result<usize, HeError> {
        let c = &ct.0;
        let first = c
            .first()
            .ok_or_else(|| HeError::Operand("an empty ciphertext".into()))?;
        let level = self.bfv.level_of_context(first.ctx()).map_err(|_| {
            HeError::Operand("the ciphertext was made under other parameters".into())
        })?;
        if c.iter().any(|p| p.ctx() != first.ctx()) {
            return Err(HeError::Operand("the ciphertext mixes moduli".into()));
        }
        Ok(level)
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "BFV N = {}, t = 2^{}, log q = {} ({:?}), noise ≤ 2^{}{}, 128-bit (HE standard)",
            self.degree(),
            self.plain_bits,
            self.log_q(),
            self.moduli_bits,
            self.noise_bits,
            self.flood_bits
                .map(|f| format!(", flooded to 2^{f}"))
                .unwrap_or_default()
        )
    }
}
