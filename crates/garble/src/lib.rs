//! tessera's arithmetic garbling engine: the core of the `gc` scheme (DESIGN §2.1, after Dash).
//!
//! Values travel as wire labels mod small primes (one wire per CRT residue). Addition and
//! multiplication by a public constant are free label arithmetic mod p; everything else goes
//! through **projection gates** mod p → mod q, garbled tables of p − 1 ciphertexts.
//!
//! What exists so far:
//! - [`modulus`]: prime moduli and label sizes (⌊128 / log2 q⌋ digits); composite moduli refused.
//! - [`label`]: labels, the offsets Δ_q, the garbling seed, constant-time decoding.
//! - [`hash`]: the tweakable correlation-robust hash on fixed-key AES, batched.
//! - [`gate`]: the projection gate with row reduction, the [`Garbler`] and the [`Evaluator`];
//!   rows are one-time pads in Z_{q^n} on the labels' 16-byte compressed blocks (the block
//!   arithmetic — pads, modular add/sub — is in the private `block` module, the conversion between
//!   digits and blocks in the private `pack` module).
//! - [`cost`]: ciphertext, byte, hash-call and AES-block counters.
//! - [`crt`]: CRT encoding of signed integers over the first k primes ([`CrtBasis`]).
//! - [`tensor`]: [`LabelTensor`], many labels of one modulus label-major; free arithmetic and
//!   public-weight matrix products over labels (a GEMM).
//! - [`batch`]: projection gates over a whole [`LabelTensor`] at once ([`ProjectionBatch`]),
//!   batched AES and rayon-parallel.
//! - [`output`]: the garbler's output check ([`OutputDecoder`]): 16-byte digests of every valid
//!   output label, constant-time decoding, any other label rejected.
//! - [`store`]: garbled material on disk — a versioned, checksummed stream written and read one
//!   bounded chunk at a time ([`StreamWriter`], [`StreamReader`]); truncation or damage is an
//!   error.
//! - [`network`]: whole quantized CNNs compiled from a model graph ([`NetworkCircuit`]), garbled
//!   into a stream ([`garble`]), evaluated from it ([`evaluate`]) and decoded ([`decode`]); its
//!   leakage (the weights) is stated there.
//! - [`gadget`]: circuits written once against the [`Backend`] trait and run on the plaintext
//!   oracle, the garbler, the evaluator and a cost counter; the exact sign of a CRT value
//!   (prime-only mixed-radix conversion, 194 ciphertexts at k = 8) and ReLU (449 at k = 8);
//!   rescale by 2^l by l halvings ([`gadget::rescale_pow2`], 1,608 at k = 8, l = 8) or in one
//!   step ([`gadget::rescale_pow2_onestep`], 645); the max of two values;
//!   the layer backends ([`gadget::LayerGarbleBackend`], [`gadget::LayerEvalBackend`]) run the same
//!   gadgets over whole [`LabelTensor`]s, one batched multi-core projection per gate of the gadget.
//!
//! # Threat model
//!
//! - **The garbler is trusted**: it runs in the enclave (TEE), knows the model, the input and
//!   every secret of the garbling — the seed, the offsets Δ_q and all zero-labels. These never
//!   leave it. Secrets are zeroized on drop ([`Delta`], [`Seed`]) or explicitly (zero-labels).
//! - **The evaluator is the untrusted worker** (the GPU host), assumed *semi-honest* for privacy:
//!   it receives the garbled tables, the public AES key and one label per input wire, and
//!   evaluates. It learns, by design: the circuit's shape (gate count, moduli, which wires feed
//!   which gates — hence the network architecture and public weights), the sizes of everything,
//!   and the colour digits of the labels it holds, which are uniformly distributed and
//!   independent of the values. It must learn nothing about the values on the wires (inputs,
//!   activations, garbled biases) beyond that: each wire's label is A₀ + x·Δ_q with A₀ uniform
//!   and Δ_q unknown to it, and each table row it cannot open is masked by a hash of a label it
//!   does not hold (a pad within 2^−128 of uniform on the row's group).
//! - **A malicious evaluator** can deviate arbitrarily; garbling does not keep its result
//!   correct, but it cannot forge a valid label for a value it did not compute (it would have to
//!   guess Δ_q). The garbler decodes returned labels with [`label::decode`], which fails on any
//!   label that is not A₀ + x·Δ_q, so a cheat is detected, not accepted; [`OutputDecoder`] does the
//!   same against 16-byte digests of every valid output label, holding no label or Δ.
//! - **Assumptions**: AES-128 behaves as a random permutation under a public key, and the
//!   construction in [`hash`] is correlation robust for the arithmetic correlations
//!   A + k·Δ_p (stated there). Moduli are prime so that k·Δ_p is uniform for every k ≠ 0; the
//!   composite-modulus break of Dash/fancy-garbling cannot occur ([`GarbleError::CompositeModulus`]).
//!   Every (gate, row) pair has its own tweak, so a label feeding several gates never reuses a
//!   pad. Side channels of the evaluator's own machine are out of scope; on the garbler side,
//!   decoding compares labels in constant time.
//! - **What leaks** to the evaluator beyond the above: nothing about values, under these
//!   assumptions; but the garbled material itself is single-use — garbling the same circuit with
//!   the same seed twice, or evaluating one garbling on two inputs, reveals the difference of the
//!   inputs (x − x')·Δ and with it Δ. One garbling serves exactly one inference.

#![warn(missing_docs)]

pub mod batch;
pub(crate) mod block;
pub mod circuit;
pub mod cost;
pub mod crt;
pub mod gadget;
pub mod gate;
pub mod hash;
pub mod label;
pub mod modulus;
pub mod network;
pub mod output;
pub(crate) mod pack;

/// The base-conversion kernels, exposed for the crate's benchmarks only (not a stable API).
#[doc(hidden)]
pub mod bench_support {
    pub use crate::pack::{block_of, unpack_into};

    /// The public-weight dot-product kernel of the linear layers (`tensor::dot_rows`): out =
    /// Σ w·row mod q, with weights and digits below q and `acc` (16-bit, as long as `out`) all
    /// zero on entry.
    pub fn dot_rows<'a>(
        m: crate::Modulus,
        pairs: impl Iterator<Item = (u16, &'a [u8])>,
        acc: &mut [u16],
        out: &mut [u8],
    ) {
        crate::tensor::dot_rows(u16::from(m.q()), pairs, acc, out);
    }
}
pub mod store;
pub mod tensor;
#[cfg(test)]
mod zero_divisor;

pub use batch::ProjectionBatch;
pub use cost::GarbleCost;
pub use crt::CrtBasis;
pub use gadget::{Backend, CostBackend, EvalBackend, GarbleBackend, PlainBackend, PlainWire};
pub use gate::{Evaluator, Garbler, ProjectionTable};
pub use hash::{Hasher, Tweak};
pub use label::{Delta, Label, Seed};
pub use modulus::Modulus;
pub use network::{
    GarbleSecrets, InputLabels, LayerCost, NetworkCircuit, OutputKey, OutputLabels, decode,
    encode_input, evaluate, garble, garble_with_progress,
};
pub use output::OutputDecoder;
pub use store::{
    Chunk, LabelPart, MaterialKind, StreamHeader, StreamReader, StreamTotals, StreamWriter,
};
pub use tensor::LabelTensor;

/// Errors of garbling and evaluation. Everything that can come from a peer or a file is checked
/// and reported with one of these, never a panic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GarbleError {
    /// A modulus outside 2..=251.
    #[error("modulus {0} is not supported: a wire modulus must be a prime in 2..=251")]
    UnsupportedModulus(u64),
    /// A composite modulus for a Δ-carrying wire (DESIGN §2.1, known break).
    #[error(
        "modulus {q} is composite ({factor} divides it): a wire that carries an offset Δ must have \
         a prime modulus, or ({factor}·Δ) has too few values and leaks Δ"
    )]
    CompositeModulus {
        /// The modulus.
        q: u64,
        /// Its smallest prime factor.
        factor: u64,
    },
    /// More primes requested than the supported moduli hold.
    #[error("{requested} primes requested, only {available} are supported")]
    TooManyPrimes {
        /// Requested.
        requested: usize,
        /// Available.
        available: usize,
    },
    /// Two labels (or a label and a table) of different moduli.
    #[error("modulus mismatch: expected {expected}, got {got}")]
    ModulusMismatch {
        /// Expected modulus.
        expected: u8,
        /// Given modulus.
        got: u8,
    },
    /// A digit vector of the wrong length.
    #[error("a label mod {q} has {expected} digits, got {got}")]
    DigitCount {
        /// Modulus.
        q: u8,
        /// Digits a label has.
        expected: usize,
        /// Digits given.
        got: usize,
    },
    /// A digit not below q.
    #[error("digit {digit} is out of range mod {q}")]
    DigitOutOfRange {
        /// Modulus.
        q: u8,
        /// The digit.
        digit: u8,
    },
    /// A compressed block that is no label mod q (≥ q^n).
    #[error("a 128-bit block is out of range for a label mod {q}")]
    BlockOutOfRange {
        /// Modulus.
        q: u8,
    },
    /// A projection φ with the wrong number of values.
    #[error("a projection from mod {expected} needs {expected} values, got {got}")]
    ProjectionLength {
        /// p.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// A projection value not below the output modulus.
    #[error("projection value φ({x}) = {value} is out of range mod {q}")]
    ProjectionValue {
        /// The input.
        x: usize,
        /// The value.
        value: u16,
        /// The output modulus.
        q: u8,
    },
    /// A garbled table with the wrong number of rows.
    #[error("garbled table has {got} rows, expected {expected}")]
    TableLength {
        /// p − 1.
        expected: usize,
        /// Rows given.
        got: usize,
    },
    /// A label that is not a valid label of its wire (decoding failed).
    #[error("label mod {q} is not a valid label of this wire")]
    InvalidLabel {
        /// Modulus.
        q: u8,
    },
    /// A signed value outside the CRT range [−M/2, M/2).
    #[error("{x} is outside the CRT range [-{half}, {half})")]
    CrtOutOfRange {
        /// The value.
        x: i64,
        /// M/2.
        half: u64,
    },
    /// The wrong number of CRT residues (or residue wires).
    #[error("expected {expected} residues, got {got}")]
    ResidueCount {
        /// Residues the basis has.
        expected: usize,
        /// Residues given.
        got: usize,
    },
    /// A tensor (or a list of constants, weights or tables) with the wrong number of elements.
    #[error("expected {expected} elements, got {got}")]
    ShapeMismatch {
        /// Elements expected.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// The evaluator ran out of garbled tables: the garbled material is shorter than the circuit.
    #[error("the garbled material holds no table for projection gate {0}")]
    TablesExhausted(usize),
    /// Garbled tables left over after the circuit: the material does not match the circuit.
    #[error("{0} garbled tables were not used by the circuit")]
    TablesLeftOver(usize),
    /// The 2^64 gate numbers of one garbling are used up.
    #[error("gate numbers exhausted")]
    GatesExhausted,
    /// A returned output label that matches none of the valid labels of its output wire.
    #[error("returned label for output {index} matches no valid output label")]
    InvalidOutputLabel {
        /// The output's index in the decoder.
        index: usize,
    },
    /// An output index the decoder does not hold.
    #[error("output {index} does not exist (the decoder holds {outputs})")]
    UnknownOutput {
        /// The index asked for.
        index: usize,
        /// Outputs registered.
        outputs: usize,
    },
    /// Reading or writing garbled material failed in the operating system (disk full, permission,
    /// …); the message is the system's.
    #[error("I/O error on garbled material: {0}")]
    StreamIo(String),
    /// A file that is not garbled material of a version this build reads.
    #[error("{0}")]
    StreamFormat(String),
    /// Garbled material that ends early: the file was cut short (an interrupted copy or write).
    #[error("garbled material is truncated: {0}; copy or garble it again")]
    StreamTruncated(String),
    /// Garbled material whose bytes are damaged or inconsistent (a checksum or a field is wrong).
    #[error("garbled material is corrupt: {0}; copy or garble it again")]
    StreamCorrupt(String),
    /// A chunk longer than the reader (or writer) accepts.
    #[error(
        "a chunk of garbled material holds {len} bytes, above the limit of {max}: the file is \
         corrupt, or was written with a larger chunk size (raise the reader's limit)"
    )]
    ChunkTooLarge {
        /// The chunk's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A graph node the network circuit cannot garble.
    #[error("node {node}: {detail}")]
    Unsupported {
        /// The node's name.
        node: String,
        /// What is not supported, and why.
        detail: String,
    },
    /// Garbling needs the circuit's garbled constants (biases), but this is the evaluator's
    /// public form of the circuit.
    #[error(
        "this circuit has no constants (it is the evaluator's public form): garble the circuit \
         compiled from the model"
    )]
    MissingConstants,
    /// Labels or material of another garbling.
    #[error(
        "labels and garbled material belong to different garblings (a garbling serves exactly one \
         inference: garble again)"
    )]
    GarblingMismatch,
    /// A broken internal invariant (a bug, reported instead of a panic).
    #[error("internal error: {0}")]
    Internal(&'static str),
}
