//! Wire labels mod a prime q, the global offsets Δ_q, and the garbling seed.
//!
//! # Representation
//!
//! A [`Label`] is its [`Modulus`] plus a fixed array of [`MAX_DIGITS`] (= 128) bytes: digit i
//! (a value in `0..q`) is byte i, for i < n = ⌊128 / log2 q⌋; bytes n.. are always zero. The fixed
//! size keeps labels allocation-free and lets the digit loops run over all 128 bytes without a
//! length-dependent bound (unused digits stay zero under every operation). It costs 130 bytes in
//! memory per label; on the wire and as hash input a label is its **compressed block**, the
//! integer Σ dᵢ·qⁱ < q^n ≤ 2^128 as 16 little-endian bytes ([`Label::to_block`]). Digit 0 is the
//! point-and-permute colour.
//!
//! # Secrets
//!
//! [`Delta`] (one offset per modulus, colour digit 1) and [`Seed`] are zeroized on drop and print
//! redacted. Labels implement [`Zeroize`] but not drop-zeroization (the evaluator handles millions
//! of them); the garbler zeroizes the zero-labels it keeps. Label equality is constant-time
//! ([`subtle`]), and so is [`decode`].

use crate::GarbleError;
use crate::modulus::{MAX_DIGITS, Modulus};
use rand::Rng;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A wire label mod a prime q: n = ⌊128 / log2 q⌋ digits mod q (see the module docs).
#[derive(Clone)]
pub struct Label {
    modulus: Modulus,
    digits: [u8; MAX_DIGITS],
}

impl Label {
    /// The all-zero label mod q.
    pub fn zero(modulus: Modulus) -> Self {
        Self {
            modulus,
            digits: [0; MAX_DIGITS],
        }
    }

    /// A label with uniformly random digits, from a CSPRNG (the garbler's ChaCha20).
    pub fn random<R: Rng + ?Sized>(modulus: Modulus, rng: &mut R) -> Self {
        let mut label = Self::zero(modulus);
        let q = modulus.q();
        for d in label.digits.iter_mut().take(modulus.digits()) {
            *d = rng.random_range(0..q);
        }
        label
    }

    /// A label from its digits. Errors unless there are exactly n digits, each below q.
    pub fn from_digits(modulus: Modulus, digits: &[u8]) -> Result<Self, GarbleError> {
        if digits.len() != modulus.digits() {
            return Err(GarbleError::DigitCount {
                q: modulus.q(),
                expected: modulus.digits(),
                got: digits.len(),
            });
        }
        if let Some(&bad) = digits.iter().find(|&&d| d >= modulus.q()) {
            return Err(GarbleError::DigitOutOfRange {
                q: modulus.q(),
                digit: bad,
            });
        }
        let mut label = Self::zero(modulus);
        label.digits[..digits.len()].copy_from_slice(digits);
        Ok(label)
    }

    /// The modulus.
    pub fn modulus(&self) -> Modulus {
        self.modulus
    }

    /// The n digits.
    pub fn digits(&self) -> &[u8] {
        &self.digits[..self.modulus.digits()]
    }

    /// The point-and-permute colour: digit 0.
    pub fn colour(&self) -> u8 {
        self.digits[0]
    }

    /// The compressed block: Σ dᵢ·qⁱ (i < n) as a 128-bit integer. Injective, since q^n ≤ 2^128.
    pub fn to_block(&self) -> u128 {
        crate::pack::block_of(self.modulus, &self.digits)
    }

    /// The label whose compressed block is `block`. Errors when `block ≥ q^n` (no such label), so
    /// it is safe on blocks received from a peer.
    pub fn from_block(modulus: Modulus, block: u128) -> Result<Self, GarbleError> {
        let mut label = Self::zero(modulus);
        if modulus.q() == 2 {
            crate::hash::spread_bits(block, &mut label.digits);
            return Ok(label);
        }
        if !modulus.holds_block(block) {
            return Err(GarbleError::BlockOutOfRange { q: modulus.q() });
        }
        crate::pack::unpack_into(modulus, block, &mut label.digits);
        Ok(label)
    }

    /// `self + other`, digit-wise mod q.
    pub fn try_add(&self, other: &Self) -> Result<Self, GarbleError> {
        self.same_modulus(other)?;
        let mut out = self.clone();
        out.add_assign_unchecked(other);
        Ok(out)
    }

    /// `self − other`, digit-wise mod q.
    pub fn try_sub(&self, other: &Self) -> Result<Self, GarbleError> {
        self.same_modulus(other)?;
        let mut out = self.clone();
        out.sub_assign_unchecked(other);
        Ok(out)
    }

    /// `−self`, digit-wise mod q.
    pub fn neg(&self) -> Self {
        let mut out = self.clone();
        // Unused digits are zero and stay zero.
        crate::tensor::neg_digits(self.modulus.q(), &mut out.digits);
        out
    }

    /// `k · self`, digit-wise mod q (k is reduced mod q first).
    pub fn mul_scalar(&self, k: u64) -> Self {
        let mut out = self.clone();
        let n = self.modulus.digits();
        if let Some(d) = out.digits.get_mut(..n) {
            crate::tensor::scale_digits(self.modulus.q(), self.modulus.reduce(k), d);
        }
        out
    }

    /// Constant-time equality (modulus and all digits).
    pub fn ct_eq(&self, other: &Self) -> Choice {
        self.modulus.q().ct_eq(&other.modulus.q()) & self.digits[..].ct_eq(&other.digits[..])
    }

    pub(crate) fn same_modulus(&self, other: &Self) -> Result<(), GarbleError> {
        if self.modulus == other.modulus {
            Ok(())
        } else {
            Err(GarbleError::ModulusMismatch {
                expected: self.modulus.q(),
                got: other.modulus.q(),
            })
        }
    }

    /// `self += other`; the caller has checked the moduli agree.
    pub(crate) fn add_assign_unchecked(&mut self, other: &Self) {
        crate::tensor::add_digits(self.modulus.q(), &mut self.digits, &other.digits);
    }

    /// `self −= other`; the caller has checked the moduli agree.
    pub(crate) fn sub_assign_unchecked(&mut self, other: &Self) {
        crate::tensor::sub_digits(self.modulus.q(), &mut self.digits, &other.digits);
    }

    /// All [`MAX_DIGITS`] digit bytes: the n digits, then zeros.
    pub(crate) fn padded_digits(&self) -> &[u8; MAX_DIGITS] {
        &self.digits
    }

    pub(crate) fn digits_mut(&mut self) -> &mut [u8; MAX_DIGITS] {
        &mut self.digits
    }
}

impl PartialEq for Label {
    /// Constant-time, see [`Label::ct_eq`].
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other).into()
    }
}

impl Eq for Label {}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Label")
            .field("q", &self.modulus.q())
            .finish_non_exhaustive()
    }
}

impl Zeroize for Label {
    fn zeroize(&mut self) {
        self.digits.zeroize();
    }
}

/// The global offset Δ_q of one modulus: a random label whose colour digit is 1, so the labels
/// A + x·Δ_q of the q values of a wire have q distinct colours. Secret; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Delta(Label);

impl Delta {
    /// A fresh offset: random digits, colour digit 1.
    pub fn random<R: Rng + ?Sized>(modulus: Modulus, rng: &mut R) -> Self {
        let mut label = Label::random(modulus, rng);
        label.digits[0] = 1;
        Self(label)
    }

    /// The modulus.
    pub fn modulus(&self) -> Modulus {
        self.0.modulus
    }

    /// `x · Δ`.
    pub fn times(&self, x: u64) -> Label {
        self.0.mul_scalar(x)
    }

    /// The label of value `x` on a wire whose zero-label is `zero`: `zero + x·Δ`.
    pub fn encode(&self, zero: &Label, x: u64) -> Result<Label, GarbleError> {
        zero.same_modulus(&self.0)?;
        let mut out = self.times(x);
        out.add_assign_unchecked(zero);
        Ok(out)
    }

    /// The offset as a label (for tests and gadget code inside the crate).
    pub(crate) fn as_label(&self) -> &Label {
        &self.0
    }
}

impl std::fmt::Debug for Delta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Delta(q = {}, <redacted>)", self.0.modulus.q())
    }
}

/// The 256-bit seed of one garbling's ChaCha20 CSPRNG. Secret; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Seed(pub(crate) [u8; 32]);

impl Seed {
    /// A seed from 32 secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh seed from the operating system's CSPRNG.
    pub fn from_os() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes);
        Self(bytes)
    }
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(<redacted>)")
    }
}

/// The value x ∈ Z_q with `label == zero + x·Δ`, found in constant time (every candidate is
/// compared, with no early exit). Errors when no value matches: the label is not a valid label
/// of this wire (a cheating or faulty evaluator).
pub fn decode(label: &Label, zero: &Label, delta: &Delta) -> Result<u8, GarbleError> {
    zero.same_modulus(label)?;
    zero.same_modulus(delta.as_label())?;
    let mut candidate = zero.clone();
    let mut found = Choice::from(0);
    let mut value = 0u8;
    for x in 0..zero.modulus().q() {
        let hit = candidate.ct_eq(label);
        value.conditional_assign(&x, hit);
        found |= hit;
        candidate.add_assign_unchecked(delta.as_label());
    }
    candidate.zeroize();
    if bool::from(found) {
        Ok(value)
    } else {
        Err(GarbleError::InvalidLabel {
            q: zero.modulus().q(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn modulus() -> impl Strategy<Value = Modulus> {
        prop::sample::select(vec![2u64, 3, 5, 7, 11, 13, 17, 19, 23, 251])
            .prop_map(|q| Modulus::new(q).expect("prime"))
    }

    proptest! {
        #[test]
        fn arithmetic_is_digitwise_mod_q(m in modulus(), seed: u64, k: u64) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let a = Label::random(m, &mut rng);
            let b = Label::random(m, &mut rng);
            let q = u64::from(m.q());
            let sum = a.try_add(&b).expect("same modulus");
            let diff = a.try_sub(&b).expect("same modulus");
            let neg = a.neg();
            let scaled = a.mul_scalar(k);
            for i in 0..m.digits() {
                let (x, y) = (u64::from(a.digits()[i]), u64::from(b.digits()[i]));
                prop_assert_eq!(u64::from(sum.digits()[i]), (x + y) % q);
                prop_assert_eq!(u64::from(diff.digits()[i]), (x + q - y) % q);
                prop_assert_eq!(u64::from(neg.digits()[i]), (q - x) % q);
                prop_assert_eq!(u64::from(scaled.digits()[i]), ((k % q) * x) % q);
            }
            // Unused digits stay zero.
            for l in [&sum, &diff, &neg, &scaled] {
                prop_assert!(l.digits.iter().skip(m.digits()).all(|&d| d == 0));
            }
            prop_assert_eq!(sum.try_sub(&b).expect("same modulus"), a.clone());
            prop_assert_eq!(a.try_add(&neg).expect("same modulus"), Label::zero(m));
        }

        #[test]
        fn compression_round_trips(m in modulus(), seed: u64) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let a = Label::random(m, &mut rng);
            let back = Label::from_block(m, a.to_block()).expect("in range");
            prop_assert_eq!(back, a);
        }

        #[test]
        fn decode_finds_every_value(m in modulus(), seed: u64) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let zero = Label::random(m, &mut rng);
            let delta = Delta::random(m, &mut rng);
            for x in 0..m.q() {
                let l = delta.encode(&zero, u64::from(x)).expect("same modulus");
                prop_assert_eq!(decode(&l, &zero, &delta).expect("valid"), x);
                prop_assert_eq!(
                    u16::from(l.colour()),
                    (u16::from(zero.colour()) + u16::from(x)) % u16::from(m.q())
                );
            }
            // A random label is (overwhelmingly) invalid.
            let junk = Label::random(m, &mut rng);
            prop_assert!(decode(&junk, &zero, &delta).is_err());
        }
    }

    #[test]
    fn out_of_range_blocks_and_digits_are_errors() {
        let m3 = Modulus::new(3).expect("prime");
        // 3^80 is the first value with no label; u128::MAX is far above it.
        assert!(matches!(
            Label::from_block(m3, u128::MAX),
            Err(GarbleError::BlockOutOfRange { q: 3 })
        ));
        for q in [3u64, 5, 7, 11, 13, 17, 19, 23, 251] {
            let m = Modulus::new(q).expect("prime");
            let top = u128::from(q).pow(m.digits() as u32);
            assert!(Label::from_block(m, top - 1).is_ok(), "q = {q}");
            assert!(Label::from_block(m, top).is_err(), "q = {q}");
        }
        // Every block is a valid label mod 2.
        let m2 = Modulus::new(2).expect("prime");
        assert_eq!(
            Label::from_block(m2, u128::MAX).expect("valid").to_block(),
            u128::MAX
        );
        assert!(matches!(
            Label::from_digits(m3, &[0; 79]),
            Err(GarbleError::DigitCount { .. })
        ));
        assert!(matches!(
            Label::from_digits(m3, &[3; 80]),
            Err(GarbleError::DigitOutOfRange { q: 3, digit: 3 })
        ));
        let m5 = Modulus::new(5).expect("prime");
        assert!(matches!(
            Label::zero(m3).try_add(&Label::zero(m5)),
            Err(GarbleError::ModulusMismatch {
                expected: 3,
                got: 5
            })
        ));
    }

    #[test]
    fn delta_has_colour_one_and_secrets_print_redacted() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for q in [2, 3, 23] {
            let m = Modulus::new(q).expect("prime");
            let d = Delta::random(m, &mut rng);
            assert_eq!(d.as_label().colour(), 1);
            assert!(format!("{d:?}").contains("redacted"));
        }
        assert_eq!(
            format!("{:?}", Seed::from_bytes([9; 32])),
            "Seed(<redacted>)"
        );
    }

    #[test]
    fn decompression_matches_one_digit_at_a_time() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        for q in [3u64, 5, 7, 11, 13, 17, 19, 23, 29, 41, 251] {
            let m = Modulus::new(q).expect("prime");
            let pow = (0..m.digits()).fold(1u128, |acc, _| acc * u128::from(q));
            for _ in 0..50 {
                let block = rng.random::<u128>() % pow;
                let label = Label::from_block(m, block).expect("in range");
                // Reference: divide by q once per digit.
                let mut rest = block;
                for (i, &d) in label.digits.iter().enumerate() {
                    if i >= m.digits() {
                        assert_eq!(d, 0);
                        continue;
                    }
                    assert_eq!(u128::from(d), rest % u128::from(q), "q = {q}, digit {i}");
                    rest /= u128::from(q);
                }
                assert_eq!(rest, 0);
            }
            assert!(matches!(
                Label::from_block(m, pow),
                Err(GarbleError::BlockOutOfRange { .. })
            ));
        }
    }

    #[test]
    fn delta_zeroizes() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let mut d = Delta::random(Modulus::new(17).expect("prime"), &mut rng);
        d.zeroize();
        assert!(d.as_label().digits.iter().all(|&x| x == 0));
    }
}
