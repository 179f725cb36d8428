//! [`LabelTensor`]: many labels of one modulus, stored structure-of-arrays (DESIGN §2.1).
//!
//! # Layout
//!
//! A tensor of `len` labels mod q keeps one flat `Vec<u8>` of `len × n` digits, n = digits(q),
//! **label-major**: the n digits of label i are bytes `i·n .. (i+1)·n`. Unlike [`Label`] (a fixed
//! 128-byte array), no byte is wasted on unused digits, and a layer's labels form an
//! `len × n` matrix, which is what makes public-weight layers a GEMM ([`LabelTensor::matmul_public`]).
//! The shape is logical only (its product is `len`).
//!
//! # Invariant
//!
//! Every digit is below q. Constructors from outside data ([`LabelTensor::from_digits`],
//! [`LabelTensor::from_labels`]) check it, and every operation keeps it, so arithmetic on a tensor
//! never sees an out-of-range digit.

use crate::GarbleError;
use crate::label::{Delta, Label};
use crate::modulus::{MAX_DIGITS, Modulus};
use rand::Rng;
use rayon::prelude::*;
use zeroize::Zeroize;

/// `len` labels mod one prime q, label-major (see the module docs).
///
/// A tensor of the garbler's zero-labels (drawn by [`LabelTensor::random`], or derived from one
/// by any operation here) is *secret*: it is overwritten when dropped, so the intermediates of
/// gadgets and layers do not stay in the enclave's freed memory. The evaluator's tensors are
/// not secret and cost nothing extra on drop. Equality ignores the flag.
#[derive(Clone)]
pub struct LabelTensor {
    modulus: Modulus,
    shape: Vec<usize>,
    digits: Vec<u8>,
    secret: bool,
}

impl PartialEq for LabelTensor {
    fn eq(&self, other: &Self) -> bool {
        self.modulus == other.modulus && self.shape == other.shape && self.digits == other.digits
    }
}

impl Eq for LabelTensor {}

impl Drop for LabelTensor {
    fn drop(&mut self) {
        if self.secret {
            wipe(&mut self.digits);
        }
    }
}

/// Overwrites `bytes` with zeros by volatile writes the compiler may not remove, eight bytes at
/// a time (the `zeroize` crate writes one byte per volatile store, which costs garbling time on
/// the megabytes of labels a layer holds).
pub(crate) fn wipe(bytes: &mut [u8]) {
    // SAFETY: every bit pattern is a valid u64, and `align_to_mut` hands back three disjoint
    // slices that together cover `bytes` exactly.
    let (head, words, tail) = unsafe { bytes.align_to_mut::<u64>() };
    for w in words.iter_mut() {
        // SAFETY: `w` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(w, 0) };
    }
    for b in head.iter_mut().chain(tail.iter_mut()) {
        // SAFETY: as above, for one byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// The number of elements of `shape`, or an error when the product overflows.
fn shape_len(shape: &[usize]) -> Result<usize, GarbleError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or(GarbleError::Internal("tensor shape overflows usize"))
}

impl LabelTensor {
    /// All-zero labels mod q of the given shape.
    pub fn zeros(modulus: Modulus, shape: &[usize]) -> Result<Self, GarbleError> {
        let len = shape_len(shape)?;
        let bytes = len
            .checked_mul(modulus.digits())
            .ok_or(GarbleError::Internal("tensor size overflows usize"))?;
        Ok(Self {
            modulus,
            shape: shape.to_vec(),
            digits: vec![0; bytes],
            secret: false,
        })
    }

    /// Marks the tensor as the garbler's (overwritten on drop; see the type's docs).
    pub fn into_secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Whether the tensor is overwritten on drop.
    pub fn is_secret(&self) -> bool {
        self.secret
    }

    /// Labels with uniform random digits (the garbler's zero-labels). Draws the digits in the same
    /// order as `len` calls of [`Label::random`], so a tensor and a loop of single labels from the
    /// same CSPRNG state agree.
    pub fn random<R: Rng + ?Sized>(
        modulus: Modulus,
        shape: &[usize],
        rng: &mut R,
    ) -> Result<Self, GarbleError> {
        let mut t = Self::zeros(modulus, shape)?.into_secret();
        let q = modulus.q();
        for d in &mut t.digits {
            *d = rng.random_range(0..q);
        }
        Ok(t)
    }

    /// A tensor that takes over `digits` computed by this crate's own kernels (already reduced
    /// mod q; only their count is checked), secret when `secret`. On a wrong count the digits
    /// are wiped and an error returned.
    pub(crate) fn from_kernel(
        modulus: Modulus,
        shape: &[usize],
        mut digits: Vec<u8>,
        secret: bool,
    ) -> Result<Self, GarbleError> {
        let expected = shape_len(shape)?
            .checked_mul(modulus.digits())
            .ok_or(GarbleError::Internal("tensor size overflows usize"))?;
        if digits.len() != expected {
            if secret {
                wipe(&mut digits);
            }
            return Err(GarbleError::Internal("linear kernel length"));
        }
        debug_assert!(digits.iter().all(|&d| d < modulus.q()));
        Ok(Self {
            modulus,
            shape: shape.to_vec(),
            digits,
            secret,
        })
    }

    /// A tensor from its flat digits (label-major). Checked: `len × n` digits, each below q; safe
    /// on data from a peer or a file.
    pub fn from_digits(
        modulus: Modulus,
        shape: &[usize],
        digits: Vec<u8>,
    ) -> Result<Self, GarbleError> {
        let len = shape_len(shape)?;
        let expected = len
            .checked_mul(modulus.digits())
            .ok_or(GarbleError::Internal("tensor size overflows usize"))?;
        if digits.len() != expected {
            return Err(GarbleError::DigitCount {
                q: modulus.q(),
                expected,
                got: digits.len(),
            });
        }
        check_digits(modulus, &digits)?;
        Ok(Self {
            modulus,
            shape: shape.to_vec(),
            digits,
            secret: false,
        })
    }

    /// A tensor holding `labels` in order. Errors unless every label is mod q and there are
    /// exactly as many labels as the shape has elements.
    pub fn from_labels(
        modulus: Modulus,
        shape: &[usize],
        labels: &[Label],
    ) -> Result<Self, GarbleError> {
        let len = shape_len(shape)?;
        if labels.len() != len {
            return Err(GarbleError::ShapeMismatch {
                expected: len,
                got: labels.len(),
            });
        }
        let mut t = Self::zeros(modulus, shape)?;
        let n = modulus.digits();
        for (dst, label) in t.digits.chunks_exact_mut(n).zip(labels) {
            if label.modulus() != modulus {
                return Err(GarbleError::ModulusMismatch {
                    expected: modulus.q(),
                    got: label.modulus().q(),
                });
            }
            dst.copy_from_slice(label.digits());
        }
        Ok(t)
    }

    /// The modulus q.
    pub fn modulus(&self) -> Modulus {
        self.modulus
    }

    /// The logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.digits.len() / self.modulus.digits()
    }

    /// Whether the tensor holds no label.
    pub fn is_empty(&self) -> bool {
        self.digits.is_empty()
    }

    /// The flat digits, label-major (`len × digits(q)` bytes).
    pub fn as_digits(&self) -> &[u8] {
        &self.digits
    }

    /// The digits of label `i`, if there is one.
    pub fn label_digits(&self, i: usize) -> Option<&[u8]> {
        self.digits.chunks_exact(self.modulus.digits()).nth(i)
    }

    /// Label `i` as a [`Label`], if there is one.
    pub fn label(&self, i: usize) -> Option<Label> {
        let d = self.label_digits(i)?;
        Label::from_digits(self.modulus, d).ok()
    }

    /// All labels, in order.
    pub fn to_labels(&self) -> Vec<Label> {
        (0..self.len()).filter_map(|i| self.label(i)).collect()
    }

    /// The same labels under another shape with the same number of elements.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self, GarbleError> {
        let len = shape_len(shape)?;
        if len != self.len() {
            return Err(GarbleError::ShapeMismatch {
                expected: self.len(),
                got: len,
            });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    pub(crate) fn digits_mut(&mut self) -> &mut [u8] {
        &mut self.digits
    }

    fn check_same(&self, other: &Self) -> Result<(), GarbleError> {
        if self.modulus != other.modulus {
            return Err(GarbleError::ModulusMismatch {
                expected: self.modulus.q(),
                got: other.modulus.q(),
            });
        }
        if self.len() != other.len() {
            return Err(GarbleError::ShapeMismatch {
                expected: self.len(),
                got: other.len(),
            });
        }
        Ok(())
    }

    /// `self + other`, label by label (free). The result has `self`'s shape.
    pub fn try_add(&self, other: &Self) -> Result<Self, GarbleError> {
        self.check_same(other)?;
        let mut out = self.clone();
        out.secret |= other.secret;
        let q = self.modulus.q();
        in_pieces2(&mut out.digits, &other.digits, |a, b| add_digits(q, a, b));
        Ok(out)
    }

    /// `self − other`, label by label (free).
    pub fn try_sub(&self, other: &Self) -> Result<Self, GarbleError> {
        self.check_same(other)?;
        let mut out = self.clone();
        out.secret |= other.secret;
        let q = self.modulus.q();
        in_pieces2(&mut out.digits, &other.digits, |a, b| sub_digits(q, a, b));
        Ok(out)
    }

    /// `−self` (free).
    pub fn neg(&self) -> Self {
        let mut out = self.clone();
        let q = self.modulus.q();
        in_pieces(&mut out.digits, |a| neg_digits(q, a));
        out
    }

    /// `self ← k · self + other` for a public constant k (reduced mod q; free), in one pass
    /// over cache-sized pieces and without a copy.
    pub fn mul_scalar_add_assign(&mut self, k: i64, other: &Self) -> Result<(), GarbleError> {
        self.check_same(other)?;
        let q = self.modulus.q();
        let k = reduce_i64(k, q);
        self.secret |= other.secret;
        in_pieces2(&mut self.digits, &other.digits, |d, o| {
            scale_digits(q, k, d);
            add_digits(q, d, o);
        });
        Ok(())
    }

    /// `k · self` for a public constant k (reduced mod q; free).
    pub fn mul_scalar(&self, k: i64) -> Self {
        let q = self.modulus.q();
        let k = reduce_i64(k, q);
        let mut out = self.clone();
        in_pieces(&mut out.digits, |a| scale_digits(q, k, a));
        out
    }

    /// Garbler side: label i += kᵢ·Δ_q (a public constant per label, e.g. a bias, encoded into
    /// the zero-labels). `k` must hold one constant per label.
    pub fn add_delta_times(&mut self, delta: &Delta, k: &[i64]) -> Result<(), GarbleError> {
        if delta.modulus() != self.modulus {
            return Err(GarbleError::ModulusMismatch {
                expected: self.modulus.q(),
                got: delta.modulus().q(),
            });
        }
        if k.len() != self.len() {
            return Err(GarbleError::ShapeMismatch {
                expected: self.len(),
                got: k.len(),
            });
        }
        let q = self.modulus.q();
        let n = self.modulus.digits();
        let delta = &delta.as_label().digits()[..n];
        for (label, &ki) in self.digits.chunks_exact_mut(n).zip(k) {
            let ki = u16::from(reduce_i64(ki, q));
            for (d, &e) in label.iter_mut().zip(delta) {
                // d + k·e < q + (q − 1)² < 2^16.
                *d = ((u16::from(*d) + ki * u16::from(e)) % u16::from(q)) as u8;
            }
        }
        Ok(())
    }

    /// `W · x` for public integer weights W (`rows × x.len()`, row-major): output label r is
    /// Σ_j W(r, j)·x_j mod q, digit by digit, a `rows`-label tensor of shape `[rows]`. With
    /// x = A + v·Δ this is (W·A) + (W·v)·Δ: a dense or (im2col'd) conv layer over labels is free.
    ///
    /// # Exactness bound
    ///
    /// Weights are reduced to w ∈ [0, q) first (exact: everything is mod q). Each digit product is
    /// then at most (q − 1)², and the sums are kept in `u32` accumulators, reduced mod q once at
    /// the end. The accumulator stays below 2^32 as long as a row has at most
    /// ⌊(2^32 − 1 − q) / (q − 1)²⌋ non-zero weights — about 8.8 million for q = 23 and 68,000 for
    /// q = 251; rows longer than that are reduced mod q every that many terms, so the result is
    /// exact for every length.
    pub fn matmul_public(
        weights: &[i64],
        rows: usize,
        x: &LabelTensor,
    ) -> Result<LabelTensor, GarbleError> {
        let n_in = x.len();
        let expected = rows
            .checked_mul(n_in)
            .ok_or(GarbleError::Internal("weight matrix size overflows usize"))?;
        if weights.len() != expected {
            return Err(GarbleError::ShapeMismatch {
                expected,
                got: weights.len(),
            });
        }
        let m = x.modulus;
        let q8 = m.q();
        let n = m.digits();
        let mut out = LabelTensor::zeros(m, &[rows])?;
        out.secret = x.secret;
        if n_in == 0 || rows == 0 {
            return Ok(out);
        }
        let w: Vec<u16> = weights
            .iter()
            .map(|&k| u16::from(reduce_i64(k, q8)))
            .collect();
        let q16 = u16::from(q8);
        out.digits
            .par_chunks_mut(n)
            .zip(w.par_chunks(n_in))
            .for_each(|(o, wr)| {
                let mut acc = [0u16; MAX_DIGITS];
                let pairs = wr.iter().copied().zip(x.digits.chunks_exact(n));
                dot_rows(q16, pairs, acc.get_mut(..n).unwrap_or(&mut []), o);
            });
        Ok(out)
    }
}

impl Zeroize for LabelTensor {
    /// Zeros every digit (the tensor keeps its shape: all-zero labels).
    fn zeroize(&mut self) {
        wipe(&mut self.digits);
    }
}

impl std::fmt::Debug for LabelTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelTensor")
            .field("q", &self.modulus.q())
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// Errors unless every digit is below q. A branch-free maximum first (it vectorizes), the
/// offending digit looked up only on failure.
pub(crate) fn check_digits(modulus: Modulus, digits: &[u8]) -> Result<(), GarbleError> {
    let max = digits.iter().fold(0u8, |m, &d| m.max(d));
    if max < modulus.q() {
        return Ok(());
    }
    let bad = digits
        .iter()
        .copied()
        .find(|&d| d >= modulus.q())
        .unwrap_or(max);
    Err(GarbleError::DigitOutOfRange {
        q: modulus.q(),
        digit: bad,
    })
}

/// k mod q in [0, q).
/// Digits per piece of the digit-wise loops ([`in_pieces`]): cache-sized, and large enough
/// that handing a piece to another core costs far less than the piece.
const PIECE: usize = 1 << 14;

/// `f` over `a` in [`PIECE`]-digit pieces, on every core when there are several pieces.
pub(crate) fn in_pieces(a: &mut [u8], f: impl Fn(&mut [u8]) + Sync) {
    if a.len() <= PIECE {
        f(a);
    } else {
        a.par_chunks_mut(PIECE).for_each(&f);
    }
}

/// `f` over matching [`PIECE`]-digit pieces of `a` and `b`, on every core when there are
/// several.
pub(crate) fn in_pieces2(a: &mut [u8], b: &[u8], f: impl Fn(&mut [u8], &[u8]) + Sync) {
    if a.len() <= PIECE {
        f(a, b);
    } else {
        a.par_chunks_mut(PIECE)
            .zip(b.par_chunks(PIECE))
            .for_each(|(x, y)| f(x, y));
    }
}

pub(crate) fn reduce_i64(k: i64, q: u8) -> u8 {
    // The Euclidean remainder is in [0, q), q ≤ 251.
    k.rem_euclid(i64::from(q)) as u8
}

/// Applies `f` to the pairs of `a` and `b` in whole 16-byte steps (one SSE2 operation each, and
/// one 16-byte store, which the packing that often reads these digits next can forward from),
/// then to the tail.
#[inline(always)]
fn by_sixteen(a: &mut [u8], b: &[u8], f: impl Fn(&mut u8, u8)) {
    let mut ca = a.chunks_exact_mut(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        if let (Ok(x), Ok(y)) = (<&mut [u8; 16]>::try_from(x), <&[u8; 16]>::try_from(y)) {
            for (d, &e) in x.iter_mut().zip(y) {
                f(d, e);
            }
        }
    }
    for (d, &e) in ca.into_remainder().iter_mut().zip(cb.remainder()) {
        f(d, e);
    }
}

/// `a += b` digit-wise mod q (digits below q).
///
/// For q ≤ 128 (every full-strength prime but 137) the sum of two digits fits a byte, and
/// min(t, t − q) in wrapping byte arithmetic is t mod q (t − q wraps above t exactly when t < q):
/// three byte operations per lane, sixteen lanes per SSE2 instruction. Larger q widen to u16.
pub(crate) fn add_digits(q: u8, a: &mut [u8], b: &[u8]) {
    if q <= 128 {
        let add = |d: &mut u8, e: u8| {
            let t = d.wrapping_add(e);
            *d = t.min(t.wrapping_sub(q));
        };
        by_sixteen(a, b, add);
        return;
    }
    let q = u16::from(q);
    for (d, &e) in a.iter_mut().zip(b) {
        let t = u16::from(*d) + u16::from(e);
        *d = (t - q * u16::from(t >= q)) as u8;
    }
}

/// How many digit products a 16-bit accumulator takes before it must be reduced mod q: each
/// product of two digits is at most (q − 1)², and a reduced accumulator is below q, so
/// (q − 1) + terms·(q − 1)² ≤ 2^16 − 1 (at least 1 for every q ≤ 251). 16-bit lanes let every
/// x86-64 multiply and add eight digits per instruction.
pub(crate) fn max_terms16(q: u16) -> usize {
    let sq = u32::from(q - 1) * u32::from(q - 1);
    ((u32::from(u16::MAX) - u32::from(q - 1)) / sq.max(1)).max(1) as usize
}

/// out = Σ w·row mod q over the (weight, row) pairs with w ≠ 0 (weights and digits below q ≤ 251),
/// accumulated exactly in the 16-bit lanes `acc` (all zero on entry, as long as `out`): four
/// products per pass over the accumulators (one load and store per lane for four multiply-adds,
/// eight lanes per SSE2 instruction), reduced mod q before they could overflow
/// ([`max_terms16`] products on top of a reduced value) and once at the end.
///
/// On x86-64 CPUs with AVX2 the same code is compiled a second time for AVX2 (sixteen lanes per
/// instruction) and picked at run time.
pub(crate) fn dot_rows<'a>(
    q: u16,
    pairs: impl Iterator<Item = (u16, &'a [u8])>,
    acc: &mut [u16],
    out: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Rows of a few labels (a dense layer, `matmul_public`) would spend most of their time
        // in the two-row kernel's tail: they stay on the one-row kernel.
        if q <= 128 && out.len() >= 128 {
            // SAFETY: the CPU supports AVX2, checked just above; nothing else is required.
            unsafe { dot_pairs_avx2(q, pairs, acc, out) };
        } else {
            // SAFETY: as above.
            unsafe { dot_rows_avx2(q, pairs, acc, out) };
        }
        return;
    }
    dot_rows_impl(q, pairs, acc, out);
}

/// [`dot_rows`] for q ≤ 128 on AVX2, two input rows per instruction: the digit bytes of two rows
/// are interleaved and multiplied by the byte pair (w₀, w₁) with one unsigned × signed byte
/// multiply-add (`vpmaddubsw`), which gives w₀·d₀ + w₁·d₁ in each 16-bit lane: 32 digit products
/// per instruction. As in [`dot_rows_impl`], four rows go into the accumulators per pass over
/// them, each row read in order.
///
/// Exactness: weights and digits are below q ≤ 128, so both fit the signed and unsigned bytes the
/// instruction takes and a pair sum is at most 2·127² < 2^15 (it never saturates); two pair sums
/// and a reduced accumulator stay within [`max_terms16`] (which is 4 at q = 127), and the
/// accumulators are reduced mod q before more products could overflow them. Unpacking bytes
/// works within each 128-bit half, so in each 32-column chunk the first 16 accumulators hold
/// columns 0–7 and 16–23, the next 16 columns 8–15 and 24–31; packing them back to bytes
/// restores the order. Columns after the last whole chunk take the portable [`mac_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_pairs_avx2<'a>(
    q: u16,
    pairs: impl Iterator<Item = (u16, &'a [u8])>,
    acc: &mut [u16],
    out: &mut [u8],
) {
    use std::arch::x86_64::{__m256i, _mm256_packus_epi16, _mm256_storeu_si256};
    let len = out.len().min(acc.len());
    let whole = len / 32 * 32;
    in_passes(q, pairs, |pass| match pass {
        Pass::Mac(rows) => mac_quad_avx2(acc, rows, whole, len),
        Pass::Reduce => reduce_acc_avx2(q, acc, len),
    });
    let chunks = acc.get(..whole).unwrap_or(&[]).chunks_exact(32);
    for (a, o) in chunks.zip(out.chunks_exact_mut(32)) {
        let (a_lo, a_hi) = a.split_at(16);
        let bytes = _mm256_packus_epi16(
            reduce16_avx2(load256(a_lo), q),
            reduce16_avx2(load256(a_hi), q),
        );
        // SAFETY: `o` holds the 32 bytes written.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast::<__m256i>(), bytes) };
    }
    let tail = acc.get(whole..len).unwrap_or(&[]);
    for (d, a) in out
        .get_mut(whole..len)
        .unwrap_or(&mut [])
        .iter_mut()
        .zip(tail)
    {
        // The remainder is below q ≤ 128.
        *d = reduce16(*a, q) as u8;
    }
}

/// acc += Σ w·row over up to four (weight, row) pairs for the first `len` columns: the
/// `whole` columns of 32-digit chunks in [`dot_pairs_avx2`]'s lane order, the rest in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn mac_quad_avx2<'a>(acc: &mut [u16], rows: &[(u16, &'a [u8])], whole: usize, len: usize) {
    use std::arch::x86_64::{
        _mm256_add_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16, _mm256_unpackhi_epi8,
        _mm256_unpacklo_epi8,
    };
    // Missing rows (a last pass of fewer than four) get weight 0 and the first row to read.
    let fill = (0, rows.first().map_or(&[][..], |r| r.1));
    let row = |i: usize| rows.get(i).copied().unwrap_or(fill);
    let ((w0, r0), (w1, r1), (w2, r2), (w3, r3)) = (row(0), row(1), row(2), row(3));
    let wa = _mm256_set1_epi16((w1 << 8 | w0) as i16);
    let wb = _mm256_set1_epi16((w3 << 8 | w2) as i16);
    let head = |r: &'a [u8]| r.get(..whole).unwrap_or(&[]).chunks_exact(32);
    let rows = head(r0).zip(head(r1)).zip(head(r2).zip(head(r3)));
    let lanes = acc.get_mut(..whole).unwrap_or(&mut []).chunks_exact_mut(32);
    for (a, ((c0, c1), (c2, c3))) in lanes.zip(rows) {
        let (x0, x1, x2, x3) = (load256(c0), load256(c1), load256(c2), load256(c3));
        let lo = _mm256_add_epi16(
            _mm256_maddubs_epi16(_mm256_unpacklo_epi8(x0, x1), wa),
            _mm256_maddubs_epi16(_mm256_unpacklo_epi8(x2, x3), wb),
        );
        let hi = _mm256_add_epi16(
            _mm256_maddubs_epi16(_mm256_unpackhi_epi8(x0, x1), wa),
            _mm256_maddubs_epi16(_mm256_unpackhi_epi8(x2, x3), wb),
        );
        let (a_lo, a_hi) = a.split_at_mut(16);
        store16(a_lo, _mm256_add_epi16(load256(a_lo), lo));
        store16(a_hi, _mm256_add_epi16(load256(a_hi), hi));
    }
    if whole < len {
        let tail = [0, 1, 2, 3].map(|i| {
            let (w, r) = row(i);
            (w, r.get(whole..).unwrap_or(&[]))
        });
        mac_rows(acc.get_mut(whole..len).unwrap_or(&mut []), &tail);
    }
}

/// Every accumulator of the first `len` mod q (the lane order does not matter).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn reduce_acc_avx2(q: u16, acc: &mut [u16], len: usize) {
    let whole = len / 16 * 16;
    for a in acc.get_mut(..whole).unwrap_or(&mut []).chunks_exact_mut(16) {
        store16(a, reduce16_avx2(load256(a), q));
    }
    for a in acc.get_mut(whole..len).unwrap_or(&mut []) {
        *a = reduce16(*a, q);
    }
}

/// The first 32 bytes of `s` (32 digits or 16 accumulators; zeros if it is shorter).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn load256<T>(s: &[T]) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_setzero_si256};
    let n = const {
        assert!(matches!(std::mem::size_of::<T>(), 1 | 2));
        32 / std::mem::size_of::<T>()
    };
    match s.get(..n) {
        // SAFETY: the slice holds the 32 bytes read (unaligned loads are allowed).
        Some(b) => unsafe { _mm256_loadu_si256(b.as_ptr().cast::<__m256i>()) },
        None => _mm256_setzero_si256(),
    }
}

/// Writes 16 lanes to the front of `a` (nothing if it is shorter).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn store16(a: &mut [u16], v: std::arch::x86_64::__m256i) {
    use std::arch::x86_64::{__m256i, _mm256_storeu_si256};
    if let Some(b) = a.get_mut(..16) {
        // SAFETY: the slice holds the 16 lanes written.
        unsafe { _mm256_storeu_si256(b.as_mut_ptr().cast::<__m256i>(), v) };
    }
}

/// Sixteen 16-bit lanes mod q ≤ 128 (any lane value): t = ⌊a·⌊2^16/q⌋ / 2^16⌋ is ⌊a/q⌋ or one
/// less (the error a·(1/q − ⌊2^16/q⌋/2^16) is below a/2^16 < 1), so r = a − t·q is below 2q and
/// one min(r, r − q) (wrapping, unsigned) finishes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn reduce16_avx2(a: std::arch::x86_64::__m256i, q: u16) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::{
        _mm256_min_epu16, _mm256_mulhi_epu16, _mm256_mullo_epi16, _mm256_set1_epi16,
        _mm256_sub_epi16,
    };
    let qv = _mm256_set1_epi16(q as i16);
    let t = _mm256_mulhi_epu16(a, _mm256_set1_epi16((65_536 / u32::from(q)) as u16 as i16));
    let r = _mm256_sub_epi16(a, _mm256_mullo_epi16(t, qv));
    _mm256_min_epu16(r, _mm256_sub_epi16(r, qv))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_rows_avx2<'a>(
    q: u16,
    pairs: impl Iterator<Item = (u16, &'a [u8])>,
    acc: &mut [u16],
    out: &mut [u8],
) {
    dot_rows_impl(q, pairs, acc, out);
}

#[inline(always)]
fn dot_rows_impl<'a>(
    q: u16,
    pairs: impl Iterator<Item = (u16, &'a [u8])>,
    acc: &mut [u16],
    out: &mut [u8],
) {
    in_passes(q, pairs, |pass| match pass {
        Pass::Mac(rows) => mac_rows(acc, rows),
        Pass::Reduce => acc.iter_mut().for_each(|a| *a = reduce16(*a, q)),
    });
    for (d, a) in out.iter_mut().zip(acc.iter()) {
        // The remainder is below q ≤ 251.
        *d = reduce16(*a, q) as u8;
    }
}

/// One step of [`in_passes`].
enum Pass<'p, 'a> {
    /// Add these (weight, row) products to the accumulators.
    Mac(&'p [(u16, &'a [u8])]),
    /// Reduce the accumulators mod q.
    Reduce,
}

/// Hands the (weight, row) pairs with w ≠ 0 to `step` in passes of up to four (fewer only at the
/// end, or where [`max_terms16`] < 4), and asks for a reduction mod q whenever four more products
/// could take an accumulator past what 16 bits hold: the overflow bookkeeping of both
/// dot-product kernels.
#[inline(always)]
fn in_passes<'a>(
    q: u16,
    pairs: impl Iterator<Item = (u16, &'a [u8])>,
    mut step: impl FnMut(Pass<'_, 'a>),
) {
    let max_terms = max_terms16(q);
    let mut terms = 0usize;
    let mut pending: [(u16, &[u8]); 4] = [(0, &[]); 4];
    let mut k = 0;
    for item in pairs.filter(|&(w, _)| w != 0) {
        if let Some(slot) = pending.get_mut(k) {
            *slot = item;
        }
        k += 1;
        if k < 4 && terms + k < max_terms {
            continue;
        }
        step(Pass::Mac(pending.get(..k).unwrap_or(&[])));
        terms += k;
        k = 0;
        if terms + 4 > max_terms {
            step(Pass::Reduce);
            terms = 0;
        }
    }
    if k > 0 {
        step(Pass::Mac(pending.get(..k).unwrap_or(&[])));
    }
}

/// acc += Σ w·row over up to four (weight, row) pairs in one pass. Four products only come
/// together when [`max_terms16`] ≥ 4, i.e. 4·(q − 1)² < 2^16, so no partial sum overflows.
#[inline(always)]
fn mac_rows(acc: &mut [u16], pairs: &[(u16, &[u8])]) {
    match pairs {
        [(w0, r0), (w1, r1), (w2, r2), (w3, r3)] => {
            let rows = r0.iter().zip(r1.iter()).zip(r2.iter().zip(r3.iter()));
            for (a, ((&d0, &d1), (&d2, &d3))) in acc.iter_mut().zip(rows) {
                let s = w0 * u16::from(d0) + w1 * u16::from(d1);
                let t = w2 * u16::from(d2) + w3 * u16::from(d3);
                *a = a.wrapping_add(s + t);
            }
        }
        _ => {
            for (w, r) in pairs {
                for (a, &d) in acc.iter_mut().zip(r.iter()) {
                    *a = a.wrapping_add(w * u16::from(d));
                }
            }
        }
    }
}

/// a mod q for any 16-bit a and 2 ≤ q ≤ 251, by subtracting q·2^k for k = 15, …, 0 where it
/// fits: no division, and the loop vectorises over a row of accumulators.
#[inline(always)]
pub(crate) fn reduce16(a: u16, q: u16) -> u16 {
    let mut a = u32::from(a);
    let q = u32::from(q);
    for k in (0..16).rev() {
        let t = q << k;
        // t > a for every t ≥ 2^16, so those steps subtract nothing.
        a -= t * u32::from(a >= t);
    }
    a as u16
}

/// `a = k·a` digit-wise mod q (digits and k below q).
///
/// For q ≤ 128, in 16-bit lanes that vectorise: the product x = k·d < 2^14, t = ⌊x·⌊2^16/q⌋ / 2^16⌋
/// is ⌊x/q⌋ or one less (the error x·(1/q − ⌊2^16/q⌋/2^16) is below x/2^16 < 1), so r = x − t·q is
/// below 2q and one min(r, r − q) in bytes finishes the reduction. Larger q use a table of the
/// q possible products (one load per digit).
pub(crate) fn scale_digits(q: u8, k: u8, a: &mut [u8]) {
    if q <= 128 {
        let (q16, k16) = (u16::from(q), u16::from(k));
        let m = (1u32 << 16) / u32::from(q16);
        for d in a.iter_mut() {
            let x = k16 * u16::from(*d);
            let t = ((u32::from(x) * m) >> 16) as u16;
            let r = (x - t * q16) as u8;
            *d = r.min(r.wrapping_sub(q));
        }
        return;
    }
    let mut table = [0u8; 256];
    for (d, t) in (0u16..).zip(table.iter_mut().take(usize::from(q))) {
        // d, k < q ≤ 251: the product is below 2^16 and the remainder below q.
        *t = ((d * u16::from(k)) % u16::from(q)) as u8;
    }
    for d in a.iter_mut() {
        *d = table[usize::from(*d)];
    }
}

/// `a −= b` digit-wise mod q (digits below q).
///
/// For q ≤ 128: with t = a − b wrapping, t + q wrapping is below t exactly when a < b (then it is
/// a − b + q), so min(t, t + q) is the difference mod q.
pub(crate) fn sub_digits(q: u8, a: &mut [u8], b: &[u8]) {
    if q <= 128 {
        let sub = |d: &mut u8, e: u8| {
            let t = d.wrapping_sub(e);
            *d = t.min(t.wrapping_add(q));
        };
        by_sixteen(a, b, sub);
        return;
    }
    let q = u16::from(q);
    for (d, &e) in a.iter_mut().zip(b) {
        let t = u16::from(*d) + q - u16::from(e);
        *d = (t - q * u16::from(t >= q)) as u8;
    }
}

/// `a = −a` digit-wise mod q (digits below q).
pub(crate) fn neg_digits(q: u8, a: &mut [u8]) {
    for d in a.iter_mut() {
        // q − d ≤ q; min(t, t − q) folds t = q to 0 (t − q wraps above t otherwise).
        let t = q.wrapping_sub(*d);
        *d = t.min(t.wrapping_sub(q));
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

    #[test]
    fn digit_add_sub_neg_and_scale_are_exact_for_every_pair_and_modulus() {
        for q in (2..=251u8).filter(|&q| Modulus::new(u64::from(q)).is_ok()) {
            let all: Vec<u8> = (0..q).collect();
            for a in 0..q {
                let (mut s, mut d, mut n) = (vec![a; all.len()], vec![a; all.len()], all.clone());
                add_digits(q, &mut s, &all);
                sub_digits(q, &mut d, &all);
                neg_digits(q, &mut n);
                let mut k = all.clone();
                scale_digits(q, a, &mut k);
                for (b, &kb) in all.iter().zip(&k) {
                    let want = u16::from(a) * u16::from(*b) % u16::from(q);
                    assert_eq!(u16::from(kb), want, "{a} * {b} mod {q}");
                }
                for (b, ((&s, &d), &n)) in all.iter().zip(s.iter().zip(&d).zip(&n)) {
                    let (a, b, qq) = (u16::from(a), u16::from(*b), u16::from(q));
                    assert_eq!(u16::from(s), (a + b) % qq, "{a} + {b} mod {q}");
                    assert_eq!(u16::from(d), (a + qq - b) % qq, "{a} - {b} mod {q}");
                    assert_eq!(u16::from(n), (qq - b) % qq, "-{b} mod {q}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn tensor_ops_equal_label_ops(m in modulus(), seed: u64, k: i64, len in 0usize..20) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let a = LabelTensor::random(m, &[len], &mut rng).expect("shape");
            let b = LabelTensor::random(m, &[len], &mut rng).expect("shape");
            let delta = Delta::random(m, &mut rng);
            let ks: Vec<i64> = (0..len).map(|_| rng.random_range(-1000i64..1000)).collect();
            let (la, lb) = (a.to_labels(), b.to_labels());
            prop_assert_eq!(la.len(), len);
            let kq = k.rem_euclid(i64::from(m.q())) as u64;
            let sum = a.try_add(&b).expect("same");
            let diff = a.try_sub(&b).expect("same");
            let neg = a.neg();
            let scaled = a.mul_scalar(k);
            let mut enc = a.clone();
            enc.add_delta_times(&delta, &ks).expect("same");
            for i in 0..len {
                prop_assert_eq!(sum.label(i).expect("in"), la[i].try_add(&lb[i]).expect("same"));
                prop_assert_eq!(diff.label(i).expect("in"), la[i].try_sub(&lb[i]).expect("same"));
                prop_assert_eq!(neg.label(i).expect("in"), la[i].neg());
                prop_assert_eq!(scaled.label(i).expect("in"), la[i].mul_scalar(kq));
                let ki = ks[i].rem_euclid(i64::from(m.q())) as u64;
                prop_assert_eq!(enc.label(i).expect("in"), delta.encode(&la[i], ki).expect("same"));
            }
            // Compression agrees with the single-label form.
            for (i, l) in la.iter().enumerate() {
                prop_assert_eq!(crate::pack::block_of(m, a.label_digits(i).expect("in")), l.to_block());
            }
            // Round trip through labels and digits.
            let back = LabelTensor::from_labels(m, &[len], &la).expect("labels");
            prop_assert_eq!(&back, &a);
            let back = LabelTensor::from_digits(m, &[len], a.as_digits().to_vec()).expect("digits");
            prop_assert_eq!(&back, &a);
        }

        #[test]
        fn matmul_equals_label_arithmetic(
            m in modulus(),
            seed: u64,
            rows in 0usize..6,
            n_in in 0usize..12,
        ) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let x = LabelTensor::random(m, &[n_in], &mut rng).expect("shape");
            let w: Vec<i64> = (0..rows * n_in)
                .map(|_| match rng.random_range(0..4) {
                    0 => 0,
                    1 => i64::MAX - rng.random_range(0..5),
                    2 => i64::MIN + rng.random_range(0..5),
                    _ => rng.random_range(-300i64..300),
                })
                .collect();
            let y = LabelTensor::matmul_public(&w, rows, &x).expect("shapes");
            prop_assert_eq!(y.len(), rows);
            let lx = x.to_labels();
            for r in 0..rows {
                let mut acc = Label::zero(m);
                for j in 0..n_in {
                    let k = w[r * n_in + j].rem_euclid(i64::from(m.q())) as u64;
                    acc = acc.try_add(&lx[j].mul_scalar(k)).expect("same");
                }
                prop_assert_eq!(y.label(r).expect("in"), acc);
            }
        }
    }

    #[test]
    fn dot_product_kernel_builds_agree() {
        // The run-time-selected build (on AVX2: the two-row kernel for q ≤ 128 and rows of 128
        // digits or more, the one-row kernel otherwise) and the portable one, on rows of whole
        // 32-digit chunks plus a tail and on short rows.
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        for q in [2u16, 3, 67, 127, 137, 251] {
            for len in [70usize, 170] {
                let rows: Vec<Vec<u8>> = (0..1_000)
                    .map(|_| (0..len).map(|_| rng.random_range(0..q) as u8).collect())
                    .collect();
                let w: Vec<u16> = (0..rows.len()).map(|_| rng.random_range(0..q)).collect();
                let pairs = || w.iter().copied().zip(rows.iter().map(Vec::as_slice));
                let (mut a1, mut a2) = (vec![0u16; len], vec![0u16; len]);
                let (mut o1, mut o2) = (vec![0u8; len], vec![0u8; len]);
                dot_rows(q, pairs(), &mut a1, &mut o1);
                dot_rows_impl(q, pairs(), &mut a2, &mut o2);
                assert_eq!(o1, o2, "q = {q}, {len} digits");
                for (i, &o) in o1.iter().enumerate() {
                    let want = pairs().fold(0u64, |s, (w, r)| s + u64::from(w) * u64::from(r[i]));
                    assert_eq!(u64::from(o), want % u64::from(q), "q = {q}");
                }
            }
        }
        // The largest digit and weight everywhere, an odd number of rows (the last pass of the
        // two-row kernel has missing rows) and rows of whole 32-digit chunks plus a tail.
        for q in [2u16, 3, 127] {
            for count in [1usize, 7, 3_001] {
                let row = vec![(q - 1) as u8; 229];
                let pairs = || std::iter::repeat_n((q - 1, row.as_slice()), count);
                let (mut acc, mut out) = ([0u16; 229], [0u8; 229]);
                dot_rows(q, pairs(), &mut acc, &mut out);
                let want = (count as u64 * u64::from(q - 1).pow(2) % u64::from(q)) as u8;
                assert!(out.iter().all(|&d| d == want), "q = {q}, {count} rows");
            }
        }
    }

    #[test]
    fn matmul_is_exact_past_the_accumulator_bound() {
        // The largest product in every term, for moduli where four products per pass do and do
        // not fit a lane: Σ (q − 1)·(q − 1) = n_in mod q, over many reductions (n_in = 150,000 is
        // past what even one u32 accumulator would hold at q = 251), and a count that leaves a
        // partial group of four at the end.
        for (q, n_in) in [
            (3u64, 150_001usize),
            (67, 20_003),
            (127, 10_001),
            (137, 10_002),
            (251, 150_000),
        ] {
            let m = Modulus::new(q).expect("prime");
            let top = (q - 1) as u8;
            let x = LabelTensor::from_digits(m, &[n_in], vec![top; n_in * m.digits()]).expect("x");
            let w = vec![-1i64; n_in];
            let y = LabelTensor::matmul_public(&w, 1, &x).expect("shapes");
            let expect = (n_in as u64 % q) as u8;
            assert!(y.as_digits().iter().all(|&d| d == expect), "q = {q}");
        }
    }

    proptest! {
        /// The in-place k·a + c equals mul_scalar then try_add, across the 16 KiB pieces it
        /// works in, and refuses a mismatched operand.
        #[test]
        fn scale_add_in_place_equals_scale_then_add(
            m in modulus(),
            len in 1usize..800,
            k in any::<i64>(),
            seed in any::<u64>(),
        ) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let n = m.digits() * len;
            let mut random = || -> LabelTensor {
                let d = (0..n).map(|_| rng.random_range(0..m.q())).collect();
                LabelTensor::from_digits(m, &[len], d).expect("digits below q")
            };
            let (a, c) = (random(), random());
            let want = a.mul_scalar(k).try_add(&c).expect("same shape");
            let mut got = a.clone();
            got.mul_scalar_add_assign(k, &c).expect("same shape");
            prop_assert_eq!(got.as_digits(), want.as_digits());
            let short = LabelTensor::zeros(m, &[len + 1]).expect("shape");
            let refused = matches!(
                got.mul_scalar_add_assign(k, &short),
                Err(GarbleError::ShapeMismatch { .. })
            );
            prop_assert!(refused, "a shorter operand was accepted");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let m3 = Modulus::new(3).expect("prime");
        let m5 = Modulus::new(5).expect("prime");
        assert!(matches!(
            LabelTensor::from_digits(m3, &[2], vec![0; 159]),
            Err(GarbleError::DigitCount { .. })
        ));
        let mut bad = vec![0; 160];
        bad[17] = 3;
        assert!(matches!(
            LabelTensor::from_digits(m3, &[2], bad),
            Err(GarbleError::DigitOutOfRange { q: 3, digit: 3 })
        ));
        let a = LabelTensor::zeros(m3, &[2, 3]).expect("shape");
        let b = LabelTensor::zeros(m5, &[2, 3]).expect("shape");
        assert!(matches!(
            a.try_add(&b),
            Err(GarbleError::ModulusMismatch { .. })
        ));
        let c = LabelTensor::zeros(m3, &[5]).expect("shape");
        assert!(matches!(
            a.try_sub(&c),
            Err(GarbleError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            LabelTensor::matmul_public(&[1, 2, 3], 2, &a),
            Err(GarbleError::ShapeMismatch { .. })
        ));
        assert!(a.clone().reshape(&[6]).is_ok());
        assert!(a.reshape(&[7]).is_err());
        assert!(matches!(
            LabelTensor::zeros(m3, &[usize::MAX, 2]),
            Err(GarbleError::Internal(_))
        ));
    }
}

#[cfg(test)]
mod wipe_tests {
    use super::wipe;

    /// Every length and every alignment of the start: the head, words and tail all end zero.
    #[test]
    fn wipe_zeroes_every_byte_at_any_alignment() {
        let mut buf = [0xA5u8; 100];
        for start in 0..9 {
            for len in 0..(100 - start) {
                buf.iter_mut().for_each(|b| *b = 0xA5);
                wipe(&mut buf[start..start + len]);
                assert!(buf[start..start + len].iter().all(|&b| b == 0));
                assert!(buf[..start].iter().all(|&b| b == 0xA5));
                assert!(buf[start + len..].iter().all(|&b| b == 0xA5));
            }
        }
    }
}
