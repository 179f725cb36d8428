//! The garbler's output check: decode returned output labels against digests of the valid ones.
//!
//! DESIGN §2.1 asks that a cheating evaluator cannot make the garbler accept a wrong output:
//! "the garbler keeps a hash of every valid output label and aborts if a returned label matches
//! none". [`OutputDecoder`] is that check.
//!
//! # What the garbler keeps
//!
//! At garbling time, for every output wire i (modulus q, zero-label A₀, offset Δ_q) and every
//! value v ∈ 0..q, the decoder stores the 16-byte digest
//!
//! ```text
//! D_i(v) = π_S(y) ⊕ y,   y = block(A₀ + v·Δ_q) ⊕ T(i, q)
//! ```
//!
//! where `block` is the compressed label ([`Label::to_block`]), π_S is AES-128 under a 128-bit
//! key S drawn fresh for each garbling (from the garbler's CSPRNG or the OS), and
//! T(i, q) = i (8 bytes LE) ‖ q ‖ a domain byte `0xD0` ‖ zeros binds the digest to the output's
//! index and modulus. This is the π(x) ⊕ x (Davies–Meyer feed-forward) shape: in the ideal-cipher
//! model it is preimage resistant even to someone who learns S, so the decoder's memory holds
//! **no label, no zero-label and no Δ**, only q digests per output, the key S and the moduli.
//! Nothing here ever leaves the garbler; the evaluator sees neither S nor a digest.
//!
//! Size: 16·q bytes per output (32 for a mod-2 wire, 368 for mod 23; one CRT value over the first
//! 8 primes costs 16·77 = 1,232 bytes), plus 16 bytes for S and one byte per output for its
//! modulus; [`OutputDecoder::bytes_kept`] reports the total.
//!
//! # Decoding
//!
//! [`OutputDecoder::decode`] hashes the returned label once and compares the digest with all q
//! stored digests in constant time, with no early exit, selecting the matching value with
//! [`subtle`]; if none matches it returns [`GarbleError::InvalidOutputLabel`]. A label that is
//! not one of the q valid labels matches a digest only by a collision of the 128-bit hash
//! (probability ≈ q·2⁻¹²⁸ per try), so a tampered table, a flipped bit, a label of another
//! garbling or a guessed label is rejected, never decoded to a wrong value. The batched form
//! [`OutputDecoder::decode_tensor`] checks every label of a [`LabelTensor`] before it reports
//! the first invalid one.

use crate::GarbleError;
use crate::label::{Delta, Label};
use crate::modulus::Modulus;
use crate::pack::block_of;
use crate::tensor::LabelTensor;
use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use rand::Rng;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroize;

/// Bytes of one digest.
pub const DIGEST_BYTES: usize = 16;

/// The domain byte of the output tweak (keeps these AES inputs apart from any other use of S).
const DOMAIN: u128 = 0xD0;

/// One output wire as the decoder keeps it: its modulus and where its q digests start.
#[derive(Clone, Copy, Debug)]
struct OutputWire {
    modulus: Modulus,
    first_digest: usize,
}

/// The garbler-side output check: q digests of the valid labels per output wire (see the module
/// docs). Outputs are numbered 0, 1, … in the order they are added.
pub struct OutputDecoder {
    aes: Aes128,
    outputs: Vec<OutputWire>,
    digests: Vec<[u8; DIGEST_BYTES]>,
}

impl OutputDecoder {
    /// A decoder whose digest key S is `key` (secret, fresh per garbling).
    pub fn new(key: [u8; 16]) -> Self {
        let mut key = key;
        let aes = Aes128::new(&Array::from(key));
        key.zeroize();
        Self {
            aes,
            outputs: Vec::new(),
            digests: Vec::new(),
        }
    }

    /// A decoder with a key drawn from `rng` (a CSPRNG: the garbler's or the OS's).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let mut key: [u8; 16] = rng.random();
        let out = Self::new(key);
        key.zeroize();
        out
    }

    /// Number of output wires registered.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// Whether no output wire is registered.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// The modulus of output `index`, if there is one.
    pub fn modulus(&self, index: usize) -> Option<Modulus> {
        self.outputs.get(index).map(|o| o.modulus)
    }

    /// Bytes of data the decoder keeps: 16 per digest (q per output), 16 for the key S and one
    /// per output for its modulus (allocation overhead and the AES key schedule not counted).
    pub fn bytes_kept(&self) -> usize {
        self.digests.len() * DIGEST_BYTES + 16 + self.outputs.len()
    }

    /// The digest of the compressed label `block` as output `index` mod `q`.
    fn digest(&self, index: usize, q: Modulus, block: u128) -> [u8; DIGEST_BYTES] {
        // usize → u64 is lossless on every supported target (≤ 64-bit pointers).
        let tweak = u128::from(index as u64) | (u128::from(q.q()) << 64) | (DOMAIN << 72);
        let mut y = block ^ tweak;
        let mut b = Array::from(y.to_le_bytes());
        self.aes.encrypt_block(&mut b);
        let out = (u128::from_le_bytes(b.0) ^ y).to_le_bytes();
        y.zeroize();
        b.0.zeroize();
        out
    }

    /// Registers an output wire with zero-label `zero` (the garbler's A₀) and offset `delta`:
    /// stores the digests of its q valid labels A₀ + v·Δ and returns its index. The labels are
    /// computed in a scratch label that is zeroized afterwards.
    pub fn push(&mut self, zero: &Label, delta: &Delta) -> Result<usize, GarbleError> {
        if zero.modulus() != delta.modulus() {
            return Err(GarbleError::ModulusMismatch {
                expected: delta.modulus().q(),
                got: zero.modulus().q(),
            });
        }
        let modulus = zero.modulus();
        let index = self.outputs.len();
        let first_digest = self.digests.len();
        let step = delta.times(1);
        let mut label = zero.clone();
        for _ in 0..modulus.q() {
            let mut block = label.to_block();
            let d = self.digest(index, modulus, block);
            self.digests.push(d);
            block.zeroize();
            label.add_assign_unchecked(&step);
        }
        label.zeroize();
        let mut step = step;
        step.zeroize();
        self.outputs.push(OutputWire {
            modulus,
            first_digest,
        });
        Ok(index)
    }

    /// Registers every label of `zeros` as an output wire (in order), with offset `delta`;
    /// returns the range of their indices.
    pub fn push_tensor(
        &mut self,
        zeros: &LabelTensor,
        delta: &Delta,
    ) -> Result<std::ops::Range<usize>, GarbleError> {
        let start = self.outputs.len();
        for i in 0..zeros.len() {
            let mut zero = zeros
                .label(i)
                .ok_or(GarbleError::Internal("tensor label index"))?;
            let pushed = self.push(&zero, delta);
            zero.zeroize();
            pushed?;
        }
        Ok(start..self.outputs.len())
    }

    /// The value v of the label `label` returned for output `index`: the v whose digest matches,
    /// found in constant time over all q candidates. Errors with
    /// [`GarbleError::InvalidOutputLabel`] when none matches, [`GarbleError::UnknownOutput`] for
    /// an index never registered and [`GarbleError::ModulusMismatch`] for a label of the wrong
    /// modulus.
    pub fn decode(&self, index: usize, label: &Label) -> Result<u8, GarbleError> {
        let wire = self.wire(index, label.modulus())?;
        self.decode_block(index, wire, label.to_block())
    }

    /// [`OutputDecoder::decode`] of a returned compressed block (as received from the
    /// evaluator). A block that is no label mod q at all is an invalid output label too.
    pub fn decode_block_of(&self, index: usize, block: u128) -> Result<u8, GarbleError> {
        let wire = *self.outputs.get(index).ok_or(GarbleError::UnknownOutput {
            index,
            outputs: self.outputs.len(),
        })?;
        if Label::from_block(wire.modulus, block).is_err() {
            return Err(GarbleError::InvalidOutputLabel { index });
        }
        self.decode_block(index, wire, block)
    }

    /// Decodes every label of `labels` as the outputs `first`, `first + 1`, …: all labels are
    /// checked (no early exit) before the first invalid one, if any, is reported.
    pub fn decode_tensor(
        &self,
        first: usize,
        labels: &LabelTensor,
    ) -> Result<Vec<u8>, GarbleError> {
        let q = labels.modulus();
        let end = first
            .checked_add(labels.len())
            .ok_or(GarbleError::UnknownOutput {
                index: usize::MAX,
                outputs: self.outputs.len(),
            })?;
        if end > self.outputs.len() {
            return Err(GarbleError::UnknownOutput {
                index: end - 1,
                outputs: self.outputs.len(),
            });
        }
        let mut values = Vec::with_capacity(labels.len());
        let mut first_bad = None;
        for i in 0..labels.len() {
            let digits = labels
                .label_digits(i)
                .ok_or(GarbleError::Internal("tensor label index"))?;
            let index = first + i;
            let wire = self.wire(index, q)?;
            match self.decode_block(index, wire, block_of(q, digits)) {
                Ok(v) => values.push(v),
                Err(e) => {
                    values.push(0);
                    first_bad.get_or_insert(e);
                }
            }
        }
        match first_bad {
            Some(e) => Err(e),
            None => Ok(values),
        }
    }

    /// Output `index`, checked to exist and to have modulus `q`.
    fn wire(&self, index: usize, q: Modulus) -> Result<OutputWire, GarbleError> {
        let wire = *self.outputs.get(index).ok_or(GarbleError::UnknownOutput {
            index,
            outputs: self.outputs.len(),
        })?;
        if wire.modulus != q {
            return Err(GarbleError::ModulusMismatch {
                expected: wire.modulus.q(),
                got: q.q(),
            });
        }
        Ok(wire)
    }

    /// The constant-time comparison against all q digests of `wire`.
    fn decode_block(&self, index: usize, wire: OutputWire, block: u128) -> Result<u8, GarbleError> {
        let q = wire.modulus.q();
        let digests = self
            .digests
            .get(wire.first_digest..wire.first_digest + usize::from(q))
            .ok_or(GarbleError::Internal("output digests"))?;
        let d = self.digest(index, wire.modulus, block);
        let mut found = Choice::from(0);
        let mut value = 0u8;
        for (v, stored) in (0u8..).zip(digests) {
            let hit = stored[..].ct_eq(&d[..]);
            value.conditional_assign(&v, hit);
            found |= hit;
        }
        if bool::from(found) {
            Ok(value)
        } else {
            Err(GarbleError::InvalidOutputLabel { index })
        }
    }
}

impl std::fmt::Debug for OutputDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputDecoder")
            .field("outputs", &self.outputs.len())
            .field("bytes_kept", &self.bytes_kept())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use crate::modulus::testing::m;

    #[test]
    fn every_valid_label_decodes_and_others_do_not() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let mut dec = OutputDecoder::random(&mut rng);
        let mut wires = Vec::new();
        for q in [2, 3, 5, 7, 11, 13, 17, 19, 23, 251] {
            let zero = Label::random(m(q), &mut rng);
            let delta = Delta::random(m(q), &mut rng);
            let i = dec.push(&zero, &delta).expect("push");
            wires.push((i, zero, delta));
        }
        let total: usize = [2, 3, 5, 7, 11, 13, 17, 19, 23, 251].iter().sum();
        assert_eq!(dec.bytes_kept(), 16 * total + 16 + 10);
        for (i, zero, delta) in &wires {
            let q = zero.modulus().q();
            for v in 0..q {
                let l = delta.encode(zero, u64::from(v)).expect("encode");
                assert_eq!(dec.decode(*i, &l), Ok(v));
                assert_eq!(dec.decode_block_of(*i, l.to_block()), Ok(v));
                // The same label is not valid for another output.
                let other = (*i + 1) % wires.len();
                assert!(dec.decode(other, &l).is_err());
            }
            let junk = Label::random(zero.modulus(), &mut rng);
            assert_eq!(
                dec.decode(*i, &junk),
                Err(GarbleError::InvalidOutputLabel { index: *i })
            );
        }
        assert!(matches!(
            dec.decode(99, &wires[0].1),
            Err(GarbleError::UnknownOutput { index: 99, .. })
        ));
        // Out-of-range blocks are invalid labels, not panics.
        assert_eq!(
            dec.decode_block_of(1, u128::MAX),
            Err(GarbleError::InvalidOutputLabel { index: 1 })
        );
    }

    #[test]
    fn tensor_form_equals_single_form() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let q = m(13);
        let delta = Delta::random(q, &mut rng);
        let zeros = LabelTensor::random(q, &[4, 5], &mut rng).expect("tensor");
        let mut dec = OutputDecoder::random(&mut rng);
        let range = dec.push_tensor(&zeros, &delta).expect("push");
        assert_eq!(range, 0..20);
        let values: Vec<i64> = (0..20).map(|i| (i * 7) % 13).collect();
        let mut labels = zeros.clone();
        labels.add_delta_times(&delta, &values).expect("encode");
        let got = dec.decode_tensor(0, &labels).expect("valid");
        let want: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        assert_eq!(got, want);
        // One bad label anywhere fails the batch with its index.
        let mut bad = labels.to_labels();
        bad[7] = Label::random(q, &mut rng);
        let bad = LabelTensor::from_labels(q, &[20], &bad).expect("tensor");
        assert_eq!(
            dec.decode_tensor(0, &bad),
            Err(GarbleError::InvalidOutputLabel { index: 7 })
        );
        assert!(matches!(
            dec.decode_tensor(5, &labels),
            Err(GarbleError::UnknownOutput { .. })
        ));
    }
}
