//! tessera's two-party building blocks, with no networking of their own: boolean garbled
//! circuits and oblivious transfer, for the `2pc` scheme.
//!
//! * [`block`], [`hash`]: 128-bit labels and the tweakable circular correlation-robust hash on
//!   fixed-key AES (GKWY20) that garbling and the OT extension share.
//! * [`circuit`]: the circuit representation, a builder (integer add, subtract, compare,
//!   multiplex and shift over ℓ-bit words, constant folding) and a plaintext evaluator;
//!   [`bristol`]: the Bristol Fashion reader.
//! * [`garble`]: free-XOR with half-gates (two ciphertexts per AND, XOR and NOT free); output
//!   decoding by permute bits or by the garbler's check of returned labels.
//! * [`parts`]: a large circuit laid out in independent parts, evaluated on several threads.
//! * [`stream`]: the garbled material as a stream of checksummed chunks, so circuits larger than
//!   memory garble and evaluate as streams.
//!
//! # Threat model
//!
//! Semi-honest garbler and evaluator: each follows the protocol and tries to learn from what it
//! sees. The evaluator sees one label per wire and the tables; under the hash's TCCR property
//! (see [`hash`] for the concrete bound) these reveal nothing beyond the outputs it may decode.
//! The garbler sees nothing of the evaluator's inputs (those arrive by oblivious transfer).
//! Beyond semi-honest: an evaluator that alters tables or labels cannot make the garbler accept
//! a wrong output when the garbler decodes with [`garble::OutputCheck`] (every returned label
//! must be one of its wire's two labels); a malicious garbler is out of scope (it could garble
//! another circuit), as in Delphi's and CryptoNite's models.

#![warn(missing_docs)]

pub mod aesni;
pub mod block;
pub mod bristol;
pub mod circuit;
pub mod garble;
pub mod hash;
pub mod ot;
pub mod parts;
pub mod stream;

pub use block::Block;
pub use circuit::{Builder, Circuit, Gate};

/// Everything that can go wrong in the two-party building blocks.
#[derive(Debug, thiserror::Error)]
pub enum MpcError {
    /// A malformed or inconsistent circuit.
    #[error("circuit: {0}")]
    Circuit(String),
    /// Inputs of the wrong count or width.
    #[error("input: {0}")]
    Input(String),
    /// Garbled material that is damaged, truncated or of another format.
    #[error("garbled material: {0}")]
    Stream(String),
    /// A peer returned something no honest party would (an invalid output label).
    #[error("rejected: {0}")]
    Cheating(String),
    /// A protocol message that is malformed, short or out of place.
    #[error("protocol: {0}")]
    Protocol(String),
}
