//! tessera's homomorphic-encryption layer: the linear layers of the integer semantics computed on
//! BFV ciphertexts, for the `lhe` scheme (encrypted model × encrypted data on an untrusted server)
//! and the `2pc` scheme's offline phase (the server's plaintext model × the client's encrypted
//! mask). No networking: the schemes move the bytes [`wire`] writes.
//!
//! * [`params`]: the documented rule that picks the BFV parameters (ring degree `N`, plaintext
//!   modulus `t = 2^ℓ`, ciphertext modulus `q`) from the layers' proven integer ranges, at
//!   ≥ 128-bit security by the HE standard's tables, refusing a layer that does not fit by name.
//! * [`keys`]: key generation, encryption of integer polynomials, decryption to centred integers.
//! * [`layout`]: the coefficient (Cheetah-style) encodings of conv (any stride, padding,
//!   dilation and groups), dense and average pooling — no rotations, no Galois keys.
//! * [`linear`]: evaluation on ciphertexts in both forms, ciphertext × plaintext and
//!   ciphertext × ciphertext (degree-2 results, decrypted without relinearization), plus
//!   residual adds with integer multipliers; decoding checks every accumulator against its
//!   proven bound.
//! * [`privacy`]: circuit privacy for results that leave the evaluator (re-randomisation, noise
//!   flooding of a stated number of bits, modulus switching).
//! * [`wire`]: versioned, length-checked serialization of parameters, keys and ciphertexts.
//!
//! The arithmetic (NTT, RNS, basis extension, scaling) is the `fhe` crate's (`fhe-math`); this
//! crate only lays integers out in polynomials and sequences the library's operations.
//!
//! # Exactness
//!
//! Every accumulator the integer semantics computes is an exact integer `a` with a proven bound
//! `|a| ≤ A` (Σ|w|·max|x| + |b|). The plaintext modulus is `t = 2^ℓ > 2A`, so `a mod t`
//! determines `a`; a decoded value outside `[−A, A]` can only come from a decryption failure or
//! a tampered ciphertext and is an error ([`HeError::OutOfRange`]), never a result.

#![warn(missing_docs)]

pub mod keys;
pub mod layout;
pub mod linear;
pub mod params;
pub mod privacy;
pub mod wire;

pub use keys::{Ct, KeyPair, PublicKey, SecretKey};
pub use layout::{ConvPlan, ConvShape, DensePlan, LinearPlan};
pub use linear::{EncryptedWeights, PlainWeights};
pub use params::{HeParams, LayerNeed, Product};

/// Everything that can go wrong in the HE layer.
#[derive(Debug, thiserror::Error)]
pub enum HeError {
    /// No parameter set at ≥ 128-bit security holds a layer's range and noise.
    #[error(
        "layer '{layer}' does not fit BFV at 128-bit security: {detail}; lower the integer range (fewer activation or weight bits) or split the layer"
    )]
    DoesNotFit {
        /// The layer's name.
        layer: String,
        /// What was too large.
        detail: String,
    },
    /// A layer shape the encodings cannot lay out.
    #[error("layer shape not supported by the coefficient encoding: {0}")]
    Shape(String),
    /// Inputs of the wrong count, size, parameters or level.
    #[error("bad operand: {0}")]
    Operand(String),
    /// A decoded accumulator outside its proven bound: a decryption failure (noise beyond the
    /// parameters) or a ciphertext that was tampered with. The value is never used.
    #[error(
        "decrypted value {value} at output {index} is outside the proven bound ±{bound}: the ciphertext is corrupt, was computed on other data or keys, or its noise overflowed"
    )]
    OutOfRange {
        /// Position in the decoded output.
        index: usize,
        /// The decoded (centred) value.
        value: i64,
        /// The proven bound.
        bound: u128,
    },
    /// Malformed, truncated or mismatched serialized bytes.
    #[error("malformed {what}: {detail}")]
    Wire {
        /// What was being read.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// An error from the `fhe` library.
    #[error("BFV library: {0}")]
    Fhe(#[from] fhe::Error),
    /// An error from the `fhe-math` library.
    #[error("BFV arithmetic: {0}")]
    Math(#[from] fhe_math::Error),
}
