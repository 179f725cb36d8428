//! The `2pc` scheme (DESIGN §2.3: Delphi, and CryptoNite's client-garbler variant) — building
//! blocks so far, the scheme itself is in progress:
//!
//! * [`share`]: additive shares of the accumulators in Z_(2^ℓ), ℓ the HE plaintext modulus's
//!   bits, and the server's online linear layers on them (wrapping arithmetic);
//! * [`offline`]: one linear layer's preprocessing — the client's encrypted mask, the server's
//!   `Enc(W·r − s)` with circuit privacy, the client's share;
//! * [`gadget`]: the non-linear step as a boolean circuit — reconstruct from the two shares,
//!   requantize by the integer semantics v2's exact rule, clamp (ReLU), re-mask for the next
//!   layer.
//!
//! # Threat model (of the protocol being built)
//!
//! A semi-honest client holding the input and a semi-honest server holding the model, no TEE.
//! The server sees the client's masked inputs `x − r` (uniform in Z_(2^ℓ)) and the HE
//! ciphertexts of `r`; the client sees `W·r − s` (uniform, for the server's fresh `s`) through
//! ciphertexts whose noise is flooded, and the garbled circuits' labels. Each mask and each
//! garbled circuit serves one inference only.

#![warn(missing_docs)]

pub mod cg;
pub mod gadget;
pub mod model;
pub mod net;
pub mod offline;
pub mod protocol;
pub mod public;
pub mod session;
pub mod sg;
pub mod share;
