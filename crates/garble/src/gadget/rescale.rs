//! Rescaling by 2^l (round half up) with one base extension and a column sum.
//!
//! [`rescale_pow2_onestep`] computes the same integer rule as [`super::rescale_pow2`],
//! y = ⌊(x + 2^(l−1)) / 2^l⌋ for signed x (x itself for l = 0), in far fewer ciphertexts: the
//! halving gadget pays a full base extension for every one of the l bits, this one pays a single
//! mixed-radix conversion and then adds up the low bits of the value column by column.
//!
//! # The circuit
//!
//! Residue wires mod 2, 3, …, p_k; M is their product and h = M/2 (odd, the product of the odd
//! primes). All wires of the circuit have prime moduli.
//!
//! 1. **Shift into [0, M).** Let s be the smallest multiple of 2^l with s + 2^(l−1) ≥ h. Add the
//!    public constant 2^(l−1) + s to every residue (free): v = x + 2^(l−1) + s. Under the
//!    precondition below, v ∈ [0, M), so the residues determine v as an integer, and because s
//!    is a multiple of 2^l, ⌊(x + 2^(l−1)) / 2^l⌋ = ⌊v / 2^l⌋ − s/2^l.
//! 2. **Peel off bit 0.** The mod-2 wire is a₀ = v mod 2. One mixed-radix step with radix 2
//!    (one 1-ciphertext projection of a₀ into every odd prime) turns the odd wires into the
//!    residues of v′ = (v − a₀)/2 ∈ [0, h). For l ≥ 1, ⌊v / 2^l⌋ = ⌊v′ / 2^(l−1)⌋; write
//!    L = l − 1 and z = ⌊v′ / 2^L⌋.
//! 3. **Mixed radix.** Prime-only mixed-radix conversion of v′ over the odd radices in
//!    ascending order r₁, …, r_n = 3, 5, …, p_k (the step of [`super::sign`]) gives digit wires
//!    aᵢ mod rᵢ with v′ = Σ aᵢ·wᵢ exactly, w₁ = 1, wᵢ₊₁ = wᵢ·rᵢ. Ascending radices make the
//!    conversion cheapest and give the small digits the small weights.
//! 4. **Column sum of the low l bits.** With cᵢ = aᵢ·wᵢ mod 2^l (a function of one digit),
//!    T = Σ cᵢ ≡ v′ (mod 2^l). T is added up in columns of g ∈ {1, 2, 3} bits, lowest first. For
//!    the column of bits [b, b + g), every digit whose chunk φᵢ(a) = ⌊cᵢ(a)/2^b⌋ mod 2^g is not
//!    identically 0 is projected into a prime P above the largest possible column sum (the sum
//!    of the chunks' maxima plus the largest incoming carry); the projections and the incoming
//!    carry wire are added (free) into the column sum σ < P, an exact integer. Its low g bits
//!    are bits [b, b + g) of T and ⌊σ/2^g⌋ is projected into the next column's modulus as its
//!    carry (standard multi-operand addition: Σᵢ (cᵢ mod 2^b) = carry·2^b + (T mod 2^b) by
//!    induction over the columns). The column widths are chosen by a small dynamic program over
//!    (bit position, largest carry) that counts ciphertexts exactly as the circuit spends them;
//!    special cases: a column nobody touches is 0, a column with one digit and no carry reads
//!    that digit wire directly, and a top column of width 1 is summed mod 2 (only its parity is
//!    needed).
//! 5. **Divide.** The bits of t = v′ mod 2^L leave each column either as mod-2 wires, each
//!    lifted into every odd prime p as bit·2^j mod p (1 ciphertext per prime), or — when it is
//!    cheaper — as one wire mod q (the smallest prime ≥ 2^m for the column's m bits: 5 for two
//!    bits, 11 for three) lifted into every odd prime but q, where it is a free multiple.
//!    Summing gives t mod p, and zₚ = (v′ₚ − t)·(2^L)⁻¹ mod p is free and exact (v′ − t is a
//!    multiple of 2^L). The mod-2 residue of z is bit L of v′, i.e. bit L of T (T ≡ v′ mod
//!    2^(L+1)), projected out of the top column. Finally s/2^l is subtracted from every residue
//!    (free).
//!
//! # Precondition
//!
//! Not checkable on garbled wires; a violation gives a wrong value, never a panic. With s as
//! above and d = s + 2^(l−1) − M/2 ∈ [0, 2^l), the input must satisfy
//!
//! ```text
//! −M/2 ≤ x ≤ M/2 − 1 − d        (l ≥ 1; the whole range [−M/2, M/2) for l = 0)
//! ```
//!
//! ([`rescale_pow2_onestep_max`] returns the top.) It is tight: x = M/2 − d gives v = M, which
//! wraps to 0. For l = 1, d = 0 (the whole range); for l ≥ 2, 1 ≤ d < 2^l, so the top can lie up
//! to 2^l − 1 below M/2 − 1 — a little lower or higher than the halving gadget's
//! M/2 − 2 − 2^(l−1) depending on M mod 2^l. For l = 8: at k = 7, d = 105 and the top is
//! 255,149 (halving: 255,125); at k = 8, d = 203, top 4,849,641 (halving: 4,849,715); at k = 9,
//! d = 61, top 111,546,373 (halving: 111,546,305). When 2^l comes close to M the window still
//! holds M values but the top can drop below 0 (as the halving gadget's does).
//!
//! # Cost
//!
//! (k − 1) + Σᵢ (rᵢ − 1)(n − i) ciphertexts for steps 2–3 (82 / 133 / 202 at k = 7 / 8 / 9),
//! plus the columns: for each column, Σ (rᵢ − 1) over the digits it reads, P − 1 for each
//! projection out of its sum (the carry, the top bit, each mod-2 bit or the one mod-q digit),
//! and 1 per lifted bit per odd prime (or q − 1 per odd prime for a mod-q digit). Counted with
//! [`CostBackend`] (asserted in the tests, and equal to what the real garbler produces):
//!
//! | k | l = 1 | l = 2 | l = 5 | l = 8 | l = 12 | halving, l = 5 | halving, l = 8 |
//! |---|------:|------:|------:|------:|-------:|---------------:|---------------:|
//! | 7 |   132 |   174 |   344 |   470 |    630 |            660 |          1,056 |
//! | 8 |   201 |   252 |   451 |   646 |    857 |          1,005 |          1,608 |
//! | 9 |   292 |   356 |   596 |   842 |  1,142 |          1,460 |          2,336 |
//!
//! Column sums only use full-strength primes ([`Modulus::full_strength`]: offsets of at least
//! 120 bits, like every other wire), so 31, 37, 41, 43 are never chosen even where they would
//! save a few ciphertexts. For l = 8 the columns are bits (0–1, 2–3, 4–5, 6–7) with
//! P = 19, 23, 17, 13 at k = 7 and P = 23, 29, 23, 17 at k = 8, and (0–1, 2–4, 5–7) with
//! P = 29, 53, 47 at k = 9. For l = 1 the
//! circuit is the halving gadget's single halving (same count). Over every supported basis and
//! scale (k ≤ 14, 2^(l−1) ≤ M/2) it is strictly cheaper for k ≥ 5 and l ≥ 2, never dearer for
//! k ≤ 4 except k = 3, l = 2 (22 against 20).

use std::collections::BTreeMap;

use super::Backend;
use super::activation::mixed_radix_step;
use super::scale::rescale_moduli;
use crate::GarbleError;
use crate::cost::GarbleCost;
use crate::crt::{MAX_CRT_PRIMES, inverse_mod_prime};
use crate::gadget::CostBackend;
use crate::modulus::{MAX_MODULUS, Modulus};

/// The widest column (bits). Wider columns never paid off in the counts (their sums need large
/// primes, and every projection out of a sum costs P − 1).
const MAX_COLUMN_BITS: u32 = 3;

/// The smallest full-strength prime modulus ≥ `at_least` ([`Modulus::full_strength`]: its
/// offset carries at least 120 bits, like every other wire of a garbling).
fn prime_at_least(at_least: u64) -> Result<Modulus, GarbleError> {
    (at_least.max(2)..=u64::from(MAX_MODULUS))
        .filter_map(|c| Modulus::new(c).ok())
        .find(|m| m.full_strength())
        .ok_or(GarbleError::UnsupportedModulus(at_least))
}

/// The public shift s: the smallest multiple of 2^l with s + 2^(l−1) ≥ h (l ≥ 1, 2^(l−1) ≤ h).
fn shift(half: u64, l: u32) -> Result<u64, GarbleError> {
    let unit = 1u64
        .checked_shl(l)
        .ok_or(GarbleError::Internal("2^l overflows"))?;
    let round = unit / 2;
    let rest = half
        .checked_sub(round)
        .ok_or(GarbleError::Internal("2^(l-1) above M/2"))?;
    rest.div_ceil(unit)
        .checked_mul(unit)
        .ok_or(GarbleError::Internal("shift overflows"))
}

/// The checked parameters of a rescale over `moduli` by 2^l, l ≥ 1: (M/2, 2^(l−1), s).
fn parameters(moduli: &[Modulus], l: u32) -> Result<(u64, u64, u64), GarbleError> {
    if moduli.len() < 2 {
        return Err(GarbleError::ResidueCount {
            expected: 2,
            got: moduli.len(),
        });
    }
    if moduli.len() > MAX_CRT_PRIMES {
        return Err(GarbleError::ResidueCount {
            expected: MAX_CRT_PRIMES,
            got: moduli.len(),
        });
    }
    let product = moduli
        .iter()
        .try_fold(1u64, |acc, m| acc.checked_mul(u64::from(m.q())))
        .ok_or(GarbleError::Internal("CRT product overflows"))?;
    let half = product / 2;
    let round = l
        .checked_sub(1)
        .and_then(|e| 1u64.checked_shl(e))
        .unwrap_or(u64::MAX);
    if round > half {
        return Err(GarbleError::CrtOutOfRange {
            x: i64::try_from(round).unwrap_or(i64::MAX),
            half,
        });
    }
    Ok((half, round, shift(half, l)?))
}

/// The largest x that [`rescale_pow2_onestep`] over the first k CRT primes admits: M/2 − 1 − d
/// (module docs), M/2 − 1 for l = 0. Errors as the gadget does (k < 2, 2^(l−1) > M/2).
pub fn rescale_pow2_onestep_max(k: usize, l: u32) -> Result<i64, GarbleError> {
    let moduli = Modulus::first_primes(k)?;
    let (half, round, s) = parameters(&moduli, l.max(1))?;
    if l == 0 {
        return i64::try_from(half - 1).map_err(|_| GarbleError::Internal("CRT range overflows"));
    }
    // top = M − 1 − s − 2^(l−1) ∈ [−M/2 − 1, M/2 − 1]: s + 2^(l−1) ∈ [M/2, M/2 + 2^l) and
    // 2^l ≤ M. (It is negative only for 2^l close to M.)
    let top = i128::from(2 * half) - 1 - i128::from(s) - i128::from(round);
    i64::try_from(top).map_err(|_| GarbleError::Internal("rescale top overflows"))
}

/// How a column's sum σ is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColumnSum {
    /// No digit touches the column and no carry comes in: σ = 0.
    Zero,
    /// One digit and no carry: σ = that digit's chunk, read from the digit wire itself.
    Digit(usize),
    /// The chunks and the carry, added mod a prime above the largest possible σ.
    Prime(Modulus),
    /// The top column of width 1: only σ mod 2 is needed, so it is summed mod 2.
    Parity,
}

/// How the column's bits below L leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LowBits {
    /// One mod-2 wire per bit, each lifted into every odd prime (1 ciphertext each).
    Bits,
    /// One wire mod q holding all of them, lifted into every odd prime but q.
    Packed(Modulus),
}

/// One column of the sum: bits [start, start + width) of T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Column {
    start: u32,
    width: u32,
    sum: ColumnSum,
    /// Whether ⌊σ/2^width⌋ goes on to the next column.
    carry: bool,
    low: LowBits,
}

/// The planner's answer for the bits from some position on: the ciphertexts they cost, their
/// first column and the largest carry that column passes on; `None` where nothing fits.
type Choice = Option<(u64, Column, u64)>;

/// What the planner knows: the digits' radices and weights, l, and the odd primes.
struct Planner<'a> {
    radices: &'a [u64],
    weights: &'a [u64],
    l: u32,
    odd: &'a [u64],
    memo: BTreeMap<(u32, u64), Choice>,
}

impl Planner<'_> {
    /// φᵢ(a) for the column [b, b + g): bits [b, b + g) of cᵢ(a) = a·wᵢ mod 2^l.
    fn chunk(&self, i: usize, a: u64, b: u32, g: u32) -> u64 {
        let w = self.weights.get(i).copied().unwrap_or(0);
        let c = (u128::from(a) * u128::from(w)) & ((1u128 << self.l) - 1);
        ((c >> b) & ((1u128 << g) - 1)) as u64
    }

    /// The digits the column [b, b + g) reads (φᵢ not identically 0), with φᵢ's maximum.
    fn terms(&self, b: u32, g: u32) -> Vec<(usize, u64)> {
        self.radices
            .iter()
            .enumerate()
            .filter_map(|(i, &r)| {
                let top = (0..r).map(|a| self.chunk(i, a, b, g)).max().unwrap_or(0);
                (top > 0).then_some((i, top))
            })
            .collect()
    }

    /// Ciphertexts to get a column's bits out of a sum wire mod R (`r1` = R − 1): the top bit
    /// if the column holds bit L, and its `m` bits below L in the cheaper of the two forms.
    fn outputs(&self, r1: u64, m: u32, top: bool) -> Result<(u64, LowBits), GarbleError> {
        let mut cost = if top { r1 } else { 0 };
        let mut low = LowBits::Bits;
        if m > 0 {
            let n = self.odd.len() as u64;
            let bits = u64::from(m) * (r1 + n);
            let mut best = bits;
            if m >= 2 {
                let q = prime_at_least(1u64 << m)?;
                let qv = u64::from(q.q());
                let others = self.odd.iter().filter(|&&p| p != qv).count() as u64;
                let packed = r1 + (qv - 1) * others;
                if packed < best {
                    best = packed;
                    low = LowBits::Packed(q);
                }
            }
            cost += best;
        }
        Ok((cost, low))
    }

    /// The cheapest way to sum bits [b, l) given an incoming carry of at most `cmax` (0: no
    /// carry wire): (ciphertexts, first column, largest carry it passes on).
    fn best(&mut self, b: u32, cmax: u64) -> Result<Choice, GarbleError> {
        if let Some(hit) = self.memo.get(&(b, cmax)) {
            return Ok(*hit);
        }
        let top_bit = self.l - 1;
        let mut best: Choice = None;
        for g in 1..=MAX_COLUMN_BITS.min(self.l - b) {
            let terms = self.terms(b, g);
            let reads: u64 = terms
                .iter()
                .map(|&(i, _)| self.radices.get(i).map_or(0, |r| r - 1))
                .sum();
            let smax = terms.iter().map(|&(_, t)| t).sum::<u64>() + cmax;
            let inputs = terms.len() + usize::from(cmax > 0);
            let last = b + g == self.l;
            let m = top_bit.min(b + g).saturating_sub(b);
            let mut column = Column {
                start: b,
                width: g,
                sum: ColumnSum::Zero,
                carry: false,
                low: LowBits::Bits,
            };
            let mut next = 0;
            let cost = if inputs == 0 {
                0
            } else if last && g == 1 {
                column.sum = ColumnSum::Parity;
                reads
            } else {
                let (r1, own) = match (terms.as_slice(), cmax) {
                    ([(i, _)], 0) => {
                        column.sum = ColumnSum::Digit(*i);
                        let r = self
                            .radices
                            .get(*i)
                            .ok_or(GarbleError::Internal("digit index"))?;
                        (r - 1, 0)
                    }
                    _ => {
                        let Ok(p) = prime_at_least(smax + 1) else {
                            continue;
                        };
                        column.sum = ColumnSum::Prime(p);
                        (u64::from(p.q()) - 1, reads)
                    }
                };
                let mut cost = own;
                if matches!(column.sum, ColumnSum::Prime(_)) && !last && smax >> g > 0 {
                    column.carry = true;
                    next = smax >> g;
                    cost += r1;
                }
                let (out, low) = self.outputs(r1, m, last)?;
                column.low = low;
                cost + out
            };
            let Some((rest, _, _)) = self.rest(b + g, next)? else {
                continue;
            };
            if best.is_none_or(|(c, _, _)| cost + rest < c) {
                best = Some((cost + rest, column, next));
            }
        }
        self.memo.insert((b, cmax), best);
        Ok(best)
    }

    /// [`Self::best`], with the empty tail costing nothing.
    fn rest(&mut self, b: u32, cmax: u64) -> Result<Choice, GarbleError> {
        if b >= self.l {
            let end = Column {
                start: b,
                width: 0,
                sum: ColumnSum::Zero,
                carry: false,
                low: LowBits::Bits,
            };
            return Ok(Some((0, end, 0)));
        }
        self.best(b, cmax)
    }

    /// The cheapest columns for bits [0, l), lowest first.
    fn plan(&mut self) -> Result<Vec<Column>, GarbleError> {
        let mut columns = Vec::new();
        let (mut b, mut cmax) = (0, 0);
        while b < self.l {
            let (_, column, next) = self
                .best(b, cmax)?
                .ok_or(GarbleError::Internal("no column plan fits the moduli"))?;
            columns.push(column);
            b += column.width;
            cmax = next;
        }
        Ok(columns)
    }
}

/// The modulus a column's sum lives in (the target of the previous column's carry).
fn sum_modulus(column: &Column, digit_moduli: &[Modulus], two: Modulus) -> Option<Modulus> {
    match column.sum {
        ColumnSum::Zero => None,
        ColumnSum::Digit(i) => digit_moduli.get(i).copied(),
        ColumnSum::Prime(p) => Some(p),
        ColumnSum::Parity => Some(two),
    }
}

/// φ as a table of `u16`: `f(x)` for x ∈ 0..p, reduced mod q.
fn table(p: Modulus, q: Modulus, f: impl Fn(u64) -> u64) -> Vec<u16> {
    let qv = u64::from(q.q());
    (0..u64::from(p.q())).map(|x| (f(x) % qv) as u16).collect()
}

fn add_to<B: Backend>(b: &mut B, acc: &mut Option<B::Wire>, w: B::Wire) -> Result<(), GarbleError> {
    *acc = Some(match acc.take() {
        None => w,
        Some(a) => b.add(&a, &w)?,
    });
    Ok(())
}

/// The residue wires of ⌊(x + 2^(l−1)) / 2^l⌋ (x itself for l = 0) — round half up, exact for
/// signed x — with one base extension and a column sum (module docs). `residues` are the wires
/// of x mod 2, 3, …, p_k (k ≥ 2), and x must satisfy −M/2 ≤ x ≤
/// [`rescale_pow2_onestep_max`]`(k, l)`. Errors unless 2^(l−1) ≤ M/2.
pub fn rescale_pow2_onestep<B: Backend>(
    b: &mut B,
    residues: &[B::Wire],
    l: u32,
) -> Result<Vec<B::Wire>, GarbleError> {
    let moduli = rescale_moduli(b, residues)?;
    if l == 0 {
        return Ok(residues.to_vec());
    }
    let (_, round, s) = parameters(&moduli, l)?;
    let (two, odd_moduli) = moduli
        .split_first()
        .ok_or(GarbleError::Internal("no mod-2 modulus"))?;
    let odd: Vec<u64> = odd_moduli.iter().map(|m| u64::from(m.q())).collect();
    let offset = round
        .checked_add(s)
        .ok_or(GarbleError::Internal("offset overflows"))?;

    // v = x + 2^(l−1) + s ∈ [0, M); then bit 0 off: v′ = (v − a₀)/2 on the odd wires.
    let mut wires = residues
        .iter()
        .map(|w| b.add_const(w, offset))
        .collect::<Result<Vec<_>, _>>()?;
    let a0 = mixed_radix_step(b, &mut wires, 0)?;
    let v_odd: Vec<B::Wire> = wires.iter().skip(1).cloned().collect();
    let mut digits = Vec::with_capacity(odd.len());
    for i in 1..wires.len() {
        digits.push(mixed_radix_step(b, &mut wires, i)?);
    }
    let mut weights = Vec::with_capacity(odd.len());
    let mut w = 1u64;
    for r in &odd {
        weights.push(w);
        w = w.saturating_mul(*r);
    }

    let mut planner = Planner {
        radices: &odd,
        weights: &weights,
        l,
        odd: &odd,
        memo: BTreeMap::new(),
    };
    let columns = planner.plan()?;
    let planner = &planner;

    let top_bit = l - 1;
    let digit_mods = digit_moduli(b, &digits);
    let mut low: Vec<Option<B::Wire>> = vec![None; odd.len()];
    let mut top: Option<B::Wire> = None;
    let mut carry: Option<B::Wire> = None;
    for (n, column) in columns.iter().enumerate() {
        let (start, width) = (column.start, column.width);
        let chunk = move |i: usize, a: u64| planner.chunk(i, a, start, width);
        // The digits whose chunk is not identically 0, exactly as the plan counted them.
        let reads = planner
            .terms(start, width)
            .into_iter()
            .map(|(i, _)| {
                digits
                    .get(i)
                    .map(|d| (i, d))
                    .ok_or(GarbleError::Internal("digit index"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The sum wire and σ as a function of its value.
        let (sum_wire, sigma): (B::Wire, Box<dyn Fn(u64) -> u64>) = match column.sum {
            ColumnSum::Zero => {
                if column.start + column.width > top_bit {
                    top = Some(b.sub(&a0, &a0)?);
                }
                continue;
            }
            ColumnSum::Parity => {
                let mut acc = carry.take();
                for (i, d) in &reads {
                    let phi = table(b.modulus_of(d), *two, |a| chunk(*i, a));
                    let bit = b.project(d, *two, &phi)?;
                    add_to(b, &mut acc, bit)?;
                }
                top = Some(acc.ok_or(GarbleError::Internal("empty parity column"))?);
                continue;
            }
            ColumnSum::Digit(i) => {
                let d = digits
                    .get(i)
                    .ok_or(GarbleError::Internal("digit index"))?
                    .clone();
                (d, Box::new(move |a| chunk(i, a)))
            }
            ColumnSum::Prime(p) => {
                let mut acc = carry.take();
                for (i, d) in &reads {
                    let phi = table(b.modulus_of(d), p, |a| chunk(*i, a));
                    let part = b.project(d, p, &phi)?;
                    add_to(b, &mut acc, part)?;
                }
                let sum = acc.ok_or(GarbleError::Internal("empty column"))?;
                (sum, Box::new(|x| x))
            }
        };
        let src = b.modulus_of(&sum_wire);
        if column.carry {
            let next = columns
                .get(n + 1)
                .and_then(|c| sum_modulus(c, &digit_mods, *two))
                .ok_or(GarbleError::Internal("carry into no column"))?;
            let phi = table(src, next, |x| sigma(x) >> width);
            carry = Some(b.project(&sum_wire, next, &phi)?);
        }
        let m = top_bit.min(start + width).saturating_sub(start);
        if m > 0 {
            match column.low {
                LowBits::Bits => {
                    for j in 0..m {
                        let phi = table(src, *two, |x| (sigma(x) >> j) & 1);
                        let bit = b.project(&sum_wire, *two, &phi)?;
                        for (acc, (p, pm)) in low.iter_mut().zip(odd.iter().zip(odd_moduli)) {
                            let weight = pow2_mod(start + j, *p);
                            let lifted = b.project(&bit, *pm, &[0, weight as u16])?;
                            add_to(b, acc, lifted)?;
                        }
                    }
                }
                LowBits::Packed(q) => {
                    let mask = (1u64 << m) - 1;
                    let packed = b.project(&sum_wire, q, &table(src, q, |x| sigma(x) & mask))?;
                    for (acc, (p, pm)) in low.iter_mut().zip(odd.iter().zip(odd_moduli)) {
                        let weight = pow2_mod(start, *p);
                        let part = if *pm == q {
                            b.mul_const(&packed, weight)?
                        } else {
                            b.project(&packed, *pm, &table(q, *pm, |y| y * weight))?
                        };
                        add_to(b, acc, part)?;
                    }
                }
            }
        }
        if start + width > top_bit {
            let phi = table(src, *two, |x| (sigma(x) >> (top_bit - start)) & 1);
            top = Some(b.project(&sum_wire, *two, &phi)?);
        }
    }

    // z = ⌊v′ / 2^L⌋: zₚ = (v′ₚ − t)·(2^L)⁻¹, z mod 2 = bit L; then subtract s/2^l.
    let whole = s >> l;
    let z2 = top.ok_or(GarbleError::Internal("no top bit"))?;
    let mut out = Vec::with_capacity(moduli.len());
    out.push(b.add_const(&z2, whole % 2)?);
    for ((v, t), p) in v_odd.iter().zip(low).zip(&odd) {
        let diff = match t {
            Some(t) => b.sub(v, &t)?,
            None => v.clone(),
        };
        let inv = inverse_mod_prime(pow2_mod(top_bit, *p), *p)
            .ok_or(GarbleError::Internal("2 is not invertible"))?;
        let z = b.mul_const(&diff, inv)?;
        out.push(b.add_const(&z, (p - whole % p) % p)?);
    }
    Ok(out)
}

fn digit_moduli<B: Backend>(b: &B, digits: &[B::Wire]) -> Vec<Modulus> {
    digits.iter().map(|d| b.modulus_of(d)).collect()
}

/// 2^e mod p.
fn pow2_mod(e: u32, p: u64) -> u64 {
    (0..e).fold(1 % p, |acc, _| acc * 2 % p)
}

/// The garbled size of [`rescale_pow2_onestep`] over the first k CRT primes.
pub fn rescale_pow2_onestep_cost(k: usize, l: u32) -> Result<GarbleCost, GarbleError> {
    let mut c = CostBackend::default();
    rescale_pow2_onestep(&mut c, &Modulus::first_primes(k)?, l)?;
    Ok(c.cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crt::CrtBasis;
    use crate::gadget::test_support::{
        basis, check_rescale_input_errors, garbled, plain_decode, plain_wires, reference_rescale,
    };
    use crate::gadget::{GarbleBackend, PlainBackend, rescale_pow2, rescale_pow2_cost};
    use crate::gate::Garbler;
    use crate::label::Seed;
    use proptest::prelude::*;

    /// The top of the precondition, computed independently of the gadget's own helper: the
    /// window of M values starting at −s − 2^(l−1) (s a multiple of 2^l) that starts closest
    /// below −M/2.
    fn onestep_max(b: &CrtBasis, l: u32) -> i64 {
        if l == 0 {
            return b.max_value();
        }
        let m = i64::try_from(b.product()).expect("fits");
        let (unit, round) = (1i64 << l, 1i64 << (l - 1));
        // The bottom x_min ≡ −2^(l−1) (mod 2^l) is the largest such value ≤ −M/2.
        let x_min = -m / 2 - (round - m / 2).rem_euclid(unit);
        x_min + m - 1
    }

    /// The odd primes of the first-k basis (the mixed radices after 2) and the weights of their
    /// digits: 1, p₂, p₂p₃, ….
    fn odd_radices(k: usize) -> (Vec<u64>, Vec<u64>) {
        let primes: Vec<u64> = Modulus::first_primes(k)
            .expect("primes")
            .iter()
            .skip(1)
            .map(|m| u64::from(m.q()))
            .collect();
        let mut weights = vec![1u64];
        for r in &primes[..primes.len() - 1] {
            weights.push(weights[weights.len() - 1] * r);
        }
        (primes, weights)
    }

    /// The largest l the gadget accepts over the basis: 2^(l−1) ≤ M/2.
    fn max_l(b: &CrtBasis) -> u32 {
        (0..64)
            .take_while(|&l| l == 0 || (1u64 << (l - 1)) <= b.product() / 2)
            .last()
            .expect("l = 0")
    }

    fn plain_onestep(b: &CrtBasis, x: i64, l: u32) -> i64 {
        let out = rescale_pow2_onestep(&mut PlainBackend, &plain_wires(b, x), l).expect("rescale");
        assert_eq!(out.len(), b.len());
        plain_decode(b, &out)
    }

    /// Garbles the one-step rescale over the basis, evaluates it on x, decodes (the shared
    /// helper also checks that the stored tables hold as many rows as the garbler counted).
    fn garbled_onestep(b: &CrtBasis, x: i64, l: u32, seed: [u8; 32]) -> i64 {
        garbled(
            b,
            &[x],
            seed,
            &|g, w| rescale_pow2_onestep(g, &w[0], l).expect("garble"),
            &|e, w| rescale_pow2_onestep(e, &w[0], l).expect("evaluate"),
        )
    }

    #[test]
    fn the_public_top_is_the_independent_one() {
        for k in 2..=MAX_CRT_PRIMES {
            let b = basis(k);
            for l in 0..=max_l(&b) {
                assert_eq!(
                    rescale_pow2_onestep_max(k, l).expect("top"),
                    onestep_max(&b, l),
                    "k = {k}, l = {l}"
                );
            }
        }
        // The worked examples of the module docs.
        assert_eq!(rescale_pow2_onestep_max(7, 8), Ok(255_149));
        assert_eq!(basis(7).max_value() - 1 - 128, 255_125);
        assert_eq!(rescale_pow2_onestep_max(8, 8), Ok(4_849_641));
        assert_eq!(basis(8).max_value() - 1 - 128, 4_849_715);
        assert_eq!(rescale_pow2_onestep_max(9, 8), Ok(111_546_373));
        assert_eq!(basis(9).max_value() - 1 - 128, 111_546_305);
        assert_eq!(rescale_pow2_onestep_max(7, 1), Ok(basis(7).max_value()));
    }

    #[test]
    fn onestep_is_exact_on_whole_small_bases() {
        for k in 2..=4 {
            let b = basis(k);
            for l in 0..=max_l(&b) {
                for x in b.min_value()..=onestep_max(&b, l) {
                    assert_eq!(
                        plain_onestep(&b, x, l),
                        reference_rescale(x, l),
                        "k = {k}, l = {l}, x = {x}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_precondition_is_tight() {
        // For l ≥ 2 the top lies below M/2 − 1, and one past it wraps: the result is wrong.
        for k in 2..=6 {
            let b = basis(k);
            for l in 2..=max_l(&b) {
                let top = onestep_max(&b, l);
                assert!(top < b.max_value(), "k = {k}, l = {l}");
                assert_eq!(plain_onestep(&b, top, l), reference_rescale(top, l));
                let x = top + 1;
                assert_ne!(
                    plain_onestep(&b, x, l),
                    reference_rescale(x, l),
                    "k = {k}, l = {l}"
                );
            }
            // l = 1 (and l = 0) take the whole range.
            for l in [0, 1] {
                assert_eq!(onestep_max(&b, l), b.max_value());
                let x = b.max_value();
                assert_eq!(plain_onestep(&b, x, l), reference_rescale(x, l));
            }
        }
    }

    /// (k, l, x) over the precondition, k = 2..=9, l = 0..=12 where 2^(l−1) ≤ M/2.
    fn onestep_case() -> impl Strategy<Value = (usize, u32, i64)> {
        (2usize..=9)
            .prop_flat_map(|k| (Just(k), 0u32..=max_l(&basis(k)).min(12)))
            .prop_flat_map(|(k, l)| {
                let b = basis(k);
                (Just(k), Just(l), b.min_value()..=onestep_max(&b, l))
            })
    }

    proptest! {
        #[test]
        fn onestep_matches_the_integer_rule((k, l, x) in onestep_case()) {
            prop_assert_eq!(plain_onestep(&basis(k), x, l), reference_rescale(x, l));
        }

        #[test]
        fn onestep_agrees_with_the_halving_gadget((k, l, x) in onestep_case()) {
            // Where both preconditions hold, both gadgets give the same residues.
            let b = basis(k);
            let round = if l == 0 { 0 } else { 1i64 << (l - 1) };
            prop_assume!(l == 0 || x <= b.max_value() - 1 - round);
            let w = plain_wires(&b, x);
            let one = rescale_pow2_onestep(&mut PlainBackend, &w, l).expect("one-step");
            let halving = rescale_pow2(&mut PlainBackend, &w, l).expect("halving");
            prop_assert_eq!(one, halving);
        }

        #[test]
        fn onestep_is_exact_on_large_bases_and_wide_scales(
            (k, l) in (7usize..=MAX_CRT_PRIMES).prop_flat_map(|k| (Just(k), 0u32..=max_l(&basis(k)))),
            frac in 0.0f64..1.0,
        ) {
            // Wide scales (l ≥ 17) reach the columns whose low bits leave as separate bits.
            let b = basis(k);
            let lo = b.min_value();
            let hi = onestep_max(&b, l);
            let x = lo + ((hi - lo) as f64 * frac) as i64;
            prop_assert_eq!(plain_onestep(&b, x, l), reference_rescale(x, l));
            prop_assert_eq!(plain_onestep(&b, hi, l), reference_rescale(hi, l));
            prop_assert_eq!(plain_onestep(&b, lo, l), reference_rescale(lo, l));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn garbled_onestep_matches_the_integer_rule(
            (k, l, x) in onestep_case(),
            seed: [u8; 32],
        ) {
            prop_assert_eq!(garbled_onestep(&basis(k), x, l, seed), reference_rescale(x, l));
        }
    }

    #[test]
    fn the_plans_use_every_kind_of_column() {
        // Between them, the supported bases and scales exercise every path of the circuit.
        let (mut digit, mut parity, mut prime, mut bits, mut packed) = (0, 0, 0, 0, 0);
        for k in 2..=MAX_CRT_PRIMES {
            let (primes, weights) = odd_radices(k);
            for l in 1..=max_l(&basis(k)) {
                let mut planner = Planner {
                    radices: &primes,
                    weights: &weights,
                    l,
                    odd: &primes,
                    memo: BTreeMap::new(),
                };
                for c in planner.plan().expect("plan") {
                    match c.sum {
                        ColumnSum::Digit(_) => digit += 1,
                        ColumnSum::Parity => parity += 1,
                        ColumnSum::Prime(_) => prime += 1,
                        ColumnSum::Zero => {}
                    }
                    let m = (l - 1).min(c.start + c.width).saturating_sub(c.start);
                    match c.low {
                        LowBits::Bits if m >= 2 => bits += 1,
                        LowBits::Packed(_) => packed += 1,
                        LowBits::Bits => {}
                    }
                }
            }
        }
        assert!(digit > 0 && parity > 0 && prime > 0 && bits > 0 && packed > 0);
    }

    #[test]
    fn garbled_onestep_at_the_edges() {
        for k in 7..=9 {
            let b = basis(k);
            // The widest scale admitted (18 at k = 7) uses columns of every output kind.
            for l in [1, 2, 5, 8, 12, max_l(&b).min(20)] {
                let top = onestep_max(&b, l);
                for x in [
                    b.min_value(),
                    b.min_value() + 1,
                    -17,
                    -16,
                    -1,
                    0,
                    1,
                    16,
                    top - 1,
                    top,
                ] {
                    assert_eq!(
                        garbled_onestep(&b, x, l, [l as u8; 32]),
                        reference_rescale(x, l),
                        "k = {k}, l = {l}, x = {x}"
                    );
                }
            }
        }
    }

    #[test]
    fn ciphertext_counts() {
        let want = [
            // k, l = 1, 2, 5, 8, 12
            (7, [132, 174, 344, 470, 630]),
            (8, [201, 252, 451, 646, 857]),
            (9, [292, 356, 596, 842, 1142]),
        ];
        for (k, counts) in want {
            for (l, want) in [1u32, 2, 5, 8, 12].into_iter().zip(counts) {
                let c = rescale_pow2_onestep_cost(k, l).expect("cost");
                assert_eq!(c.ciphertexts, want, "k = {k}, l = {l}");
                assert_eq!(c.bytes, 16 * c.ciphertexts);
                let halving = rescale_pow2_cost(k, l).expect("cost").ciphertexts;
                assert!(c.ciphertexts <= halving, "k = {k}, l = {l}");
                if l >= 2 {
                    assert!(c.ciphertexts < halving, "k = {k}, l = {l}");
                }
            }
            assert_eq!(
                rescale_pow2_onestep_cost(k, 0).expect("cost").ciphertexts,
                0
            );
            // l = 1 is one halving, the same circuit size.
            assert_eq!(
                rescale_pow2_onestep_cost(k, 1).expect("cost").ciphertexts,
                rescale_pow2_cost(k, 1).expect("cost").ciphertexts
            );
        }
        let l5: Vec<u64> = (7..=9)
            .map(|k| rescale_pow2_onestep_cost(k, 5).expect("cost").ciphertexts)
            .collect();
        let l8: Vec<u64> = (7..=9)
            .map(|k| rescale_pow2_onestep_cost(k, 8).expect("cost").ciphertexts)
            .collect();
        assert_eq!(l5, [344, 451, 596]);
        assert_eq!(l8, [470, 646, 842]);
        // Against the halving gadget's 660 / 1,005 / 1,460 and 1,056 / 1,608 / 2,336.
        for (k, (a, b)) in (7..=9).zip(l5.iter().zip(&l8)) {
            assert!(*a < rescale_pow2_cost(k, 5).expect("cost").ciphertexts);
            assert!(*b < rescale_pow2_cost(k, 8).expect("cost").ciphertexts);
        }
    }

    #[test]
    fn every_supported_basis_and_scale_has_a_plan() {
        for k in 2..=MAX_CRT_PRIMES {
            let b = basis(k);
            for l in 0..=max_l(&b) {
                let one = rescale_pow2_onestep_cost(k, l).expect("cost").ciphertexts;
                let halving = rescale_pow2_cost(k, l).expect("cost").ciphertexts;
                if (k, l) == (3, 2) {
                    // The one tiny case where the columns cost more than two halvings.
                    assert_eq!((one, halving), (22, 20));
                } else if k >= 5 && l >= 2 {
                    assert!(one < halving, "k = {k}, l = {l}");
                } else {
                    assert!(one <= halving, "k = {k}, l = {l}");
                }
            }
        }
    }

    #[test]
    fn the_column_plans_of_the_docs() {
        let plan = |k: usize, l: u32| -> Vec<(u32, u32, u8)> {
            let (primes, weights) = odd_radices(k);
            let mut planner = Planner {
                radices: &primes,
                weights: &weights,
                l,
                odd: &primes,
                memo: BTreeMap::new(),
            };
            planner
                .plan()
                .expect("plan")
                .iter()
                .map(|c| match c.sum {
                    ColumnSum::Prime(p) => (c.start, c.width, p.q()),
                    other => panic!("unexpected column sum {other:?}"),
                })
                .collect()
        };
        assert_eq!(plan(7, 8), [(0, 2, 19), (2, 2, 23), (4, 2, 17), (6, 2, 13)]);
        assert_eq!(plan(8, 8), [(0, 2, 23), (2, 2, 29), (4, 2, 23), (6, 2, 17)]);
        assert_eq!(plan(9, 8), [(0, 2, 29), (2, 3, 53), (5, 3, 47)]);
    }

    #[test]
    fn the_real_garbler_produces_what_the_cost_backend_counts() {
        for k in 7..=9 {
            let b = basis(k);
            for l in [5, 8] {
                let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes([3; 32])));
                let zeros: Vec<_> = b
                    .moduli()
                    .iter()
                    .map(|&m| g.garbler_mut().input_wire(m))
                    .collect();
                rescale_pow2_onestep(&mut g, &zeros, l).expect("garble");
                let got = g.garbler_mut().cost();
                let want = rescale_pow2_onestep_cost(k, l).expect("cost");
                assert_eq!(got.ciphertexts, want.ciphertexts, "k = {k}, l = {l}");
                assert_eq!(got.gates, want.gates, "k = {k}, l = {l}");
                let stored: usize = g.tables().iter().map(|t| t.rows().len()).sum();
                assert_eq!(stored as u64, want.ciphertexts);
            }
        }
    }

    #[test]
    fn wrong_inputs_are_errors() {
        check_rescale_input_errors(rescale_pow2_onestep::<PlainBackend>);
        assert!(matches!(
            rescale_pow2_onestep_cost(16, 3),
            Err(GarbleError::ResidueCount { got: 16, .. })
        ));
        assert!(matches!(
            rescale_pow2_onestep_max(16, 3),
            Err(GarbleError::ResidueCount { got: 16, .. })
        ));
        assert!(matches!(
            rescale_pow2_onestep_cost(1, 3),
            Err(GarbleError::ResidueCount { .. })
        ));
        assert!(matches!(
            rescale_pow2_onestep_max(1, 3),
            Err(GarbleError::ResidueCount { .. })
        ));
        assert!(matches!(
            rescale_pow2_onestep_max(7, 20),
            Err(GarbleError::CrtOutOfRange { .. })
        ));
    }
}
