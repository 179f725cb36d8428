//! The `2pc` scheme (DESIGN §2.3: Delphi, and CryptoNite's client-garbler variant): a client
//! holding the input and a server holding the model, no TEE. Linear layers run on additive
//! shares in Z_(2^ℓ) (ℓ the HE plaintext modulus's bits), preprocessed with HE; everything else
//! runs in garbled circuits that take the shares, requantize by the integer semantics v2's exact
//! rule and re-mask. Every output is bit-exact with the v2 engine.
//!
//! * [`model`]: the model cut into linear layers and segments (a DAG: residual connections);
//! * [`public`]: what the client learns of the model, and the segment circuits built from it;
//! * [`share`], [`offline`]: the server's online linear layers on shares, one layer's HE
//!   preprocessing (the client's encrypted mask, the server's flooded `Enc(W·r − s)`);
//! * [`gadget`]: requantize-and-clamp as a circuit (281 AND gates per activation at ℓ = 24);
//! * [`protocol`]: the HE offline phase, the server's model, the embedded runner;
//! * [`sg`], [`cg`]: the server-garbler (Delphi) and client-garbler (CryptoNite) variants;
//! * [`session`], [`net`]: one session's messages over any channel, and the two processes over
//!   TCP and TLS.
//!
//! # Threat model
//!
//! Semi-honest (honest-but-curious) client and server: each follows the protocol and tries to
//! learn more from what it sees. Not covered: a malicious party that deviates (it could, for
//! example, garble or evaluate a different function, or the server could answer with other
//! weights), and leakage through timing or message sizes beyond the model's public description.
//!
//! * **The client learns** the public description (input and output shapes and grids, each
//!   linear layer's geometry, each segment's program with its requantization multipliers,
//!   shifts and clamp bounds, the HE parameters), and the output. It sees `W·r − s` under HE
//!   only after the server re-randomized, flooded (40 statistical bits) and switched the
//!   ciphertexts down, so their noise does not depend on `W`; in the server-garbler variant it
//!   sees garbled tables and one label per wire; in the client-garbler variant the server's
//!   choice differences `a ⊕ b`, uniform because `b` is.
//! * **The server learns** nothing of the input: it sees HE ciphertexts under the client's key
//!   (128-bit secure by the HE standard's table, which the client checks), masked values
//!   `x − r` with `r` uniform in Z_(2^ℓ), OT messages, and in the client-garbler variant the
//!   garbled tables and the labels of the client's inputs. The output reaches the client alone:
//!   in the server-garbler variant the server sends the output wires' permute bits and never
//!   sees the output labels; in the client-garbler variant it returns the output labels, which
//!   only the client can decode.
//! * **Each preprocessing serves one inference** ([`session`]): masks, shares, garbled circuits
//!   and OT correlations are taken out of the queue by the online phase that uses them.
//! * **Integrity checks** beyond the semi-honest model: a garbler checks the output labels it
//!   gets back by hashed labels (a label that is neither of its wire's is an error), and every
//!   message's length and order is checked before use; across processes the runtime's TLS
//!   channel authenticates every message and the client pins the server's certificate.

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
pub mod store;
