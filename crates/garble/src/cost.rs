//! What garbling and evaluation cost, counted as they run.

use std::ops::AddAssign;

/// Counters that garbling (and evaluation) increment. Bytes count the wire form: each
/// ciphertext is one label mod q, sent as its 16-byte compressed block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GarbleCost {
    /// Gates garbled (or evaluated).
    pub gates: u64,
    /// Ciphertexts (table rows) produced.
    pub ciphertexts: u64,
    /// Bytes of garbled material produced (16 per ciphertext).
    pub bytes: u64,
    /// Calls of the tweakable hash H(label, tweak).
    pub hash_calls: u64,
    /// AES block encryptions behind those calls.
    pub aes_blocks: u64,
}

/// Bytes of one ciphertext on the wire: a label's compressed block.
pub const CIPHERTEXT_BYTES: u64 = 16;

impl GarbleCost {
    /// Records `rows` ciphertexts of one gate.
    pub(crate) fn add_table(&mut self, rows: u64) {
        self.gates += 1;
        self.ciphertexts += rows;
        self.bytes += rows * CIPHERTEXT_BYTES;
    }
}

impl AddAssign for GarbleCost {
    fn add_assign(&mut self, rhs: Self) {
        self.gates += rhs.gates;
        self.ciphertexts += rhs.ciphertexts;
        self.bytes += rhs.bytes;
        self.hash_calls += rhs.hash_calls;
        self.aes_blocks += rhs.aes_blocks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_up() {
        let mut a = GarbleCost::default();
        a.add_table(4);
        let mut b = a;
        b.hash_calls = 5;
        b.aes_blocks = 15;
        a += b;
        assert_eq!(
            a,
            GarbleCost {
                gates: 2,
                ciphertexts: 8,
                bytes: 128,
                hash_calls: 5,
                aes_blocks: 15
            }
        );
    }
}
