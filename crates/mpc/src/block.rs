//! 128-bit blocks: wire labels, table rows, hash inputs and outputs.

use zeroize::Zeroize;

/// A 128-bit block. Bit 0 (the least significant) of a label is its permute (colour) bit.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Zeroize)]
#[repr(transparent)]
pub struct Block(pub u128);

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({:032x})", self.0)
    }
}

impl Block {
    /// The zero block.
    pub const ZERO: Block = Block(0);

    /// The permute bit.
    #[inline(always)]
    pub fn lsb(self) -> bool {
        self.0 & 1 == 1
    }

    /// `self` if `bit`, else zero, without a branch on `bit`.
    #[inline(always)]
    pub fn and_bit(self, bit: bool) -> Block {
        Block(self.0 & (u128::from(bit)).wrapping_neg())
    }

    /// Little-endian bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// From little-endian bytes.
    pub fn from_bytes(b: [u8; 16]) -> Block {
        Block(u128::from_le_bytes(b))
    }
}

impl std::ops::BitXor for Block {
    type Output = Block;
    #[inline(always)]
    fn bitxor(self, rhs: Block) -> Block {
        Block(self.0 ^ rhs.0)
    }
}

impl std::ops::BitXorAssign for Block {
    #[inline(always)]
    fn bitxor_assign(&mut self, rhs: Block) {
        self.0 ^= rhs.0;
    }
}
