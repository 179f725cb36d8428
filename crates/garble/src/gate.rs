//! The projection gate mod p → mod q, and the garbler and evaluator that drive it.
//!
//! # Projection gate
//!
//! For a public function φ: Z_p → Z_q, an input wire with zero-label A₀ (mod p) and offset Δ_p,
//! and the output offset Δ_q, the garbler hashes each of the p input labels Aₓ = A₀ + x·Δ_p under
//! the tweak (gate, r) where r = colour(Aₓ) = colour(A₀) + x mod p is the row:
//!
//! ```text
//! row r (x = r − colour(A₀)):   ct_r = block(C₀ + φ(x)·Δ_q) + pad(H(Aₓ, (gate, r)))     (mod q^n)
//! ```
//!
//! where block(L) is the compressed block of label L (Σ dᵢ·qⁱ < q^n) and pad(h) the integer
//! ⌊h·q^n / 2^256⌋ of the hash output h (`block::pad`). A row is thus a one-time pad in
//! the group Z_{q^n}; mod 2 the group is Z_2^128 under XOR and the pad is the hash's first block.
//! The pad of a hash input the evaluator cannot compute is within 2^−128 of uniform on the group
//! (the same bound as the hash's own expansion), so every row it cannot open hides its label.
//! Working on blocks lets the evaluator unpack only the row it opens, and the wire carries each
//! row as its 16-byte block unchanged.
//!
//! **Row reduction**: the output zero-label C₀ is not sampled but chosen so that ct₀ = 0, i.e.
//! block(C₀ + φ(x*)·Δ_q) = −pad(H(A_{x*}, (gate, 0))) with x* = −colour(A₀); row 0 is then not sent,
//! and the table holds the p − 1 rows 1..p (16 bytes each on the wire). C₀ is pseudorandom
//! because the pad is.
//!
//! The evaluator holding Aₓ reads its colour r and unpacks C₀ + φ(x)·Δ_q from
//! ct_r − pad(H(Aₓ, (gate, r))) (ct₀ = 0): one hash call, no knowledge of x.
//!
//! Every gate gets a fresh number from the [`Garbler`], so (gate, row) — the hash tweak — is
//! never reused in a garbling, even when one wire feeds many gates.

use crate::GarbleError;
use crate::batch::ProjectionBatch;
use crate::block::{add_block, pad_of, sub_block};
use crate::cost::GarbleCost;
use crate::hash::{Hasher, Tweak};
use crate::label::{Delta, Label, Seed};
use crate::modulus::Modulus;
use crate::tensor::LabelTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;
use zeroize::Zeroize;

/// The garbled table of one projection gate: public, sent to the evaluator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionTable {
    gate: u64,
    input: Modulus,
    output: Modulus,
    /// Rows 1..p (row 0 is implicit zero); each an element of Z_{q^n} (Z_2^128 for q = 2), held
    /// as the label mod `output` whose compressed block it is.
    rows: Vec<Label>,
}

impl ProjectionTable {
    /// A table from its parts, checked: p − 1 rows, each mod `output`. Use this on tables
    /// received from elsewhere.
    pub fn new(
        gate: u64,
        input: Modulus,
        output: Modulus,
        rows: Vec<Label>,
    ) -> Result<Self, GarbleError> {
        let expected = usize::from(input.q()) - 1;
        if rows.len() != expected {
            return Err(GarbleError::TableLength {
                expected,
                got: rows.len(),
            });
        }
        if let Some(bad) = rows.iter().find(|r| r.modulus() != output) {
            return Err(GarbleError::ModulusMismatch {
                expected: output.q(),
                got: bad.modulus().q(),
            });
        }
        Ok(Self {
            gate,
            input,
            output,
            rows,
        })
    }

    /// The gate's number (the first half of its hash tweaks).
    pub fn gate(&self) -> u64 {
        self.gate
    }

    /// The input modulus p.
    pub fn input(&self) -> Modulus {
        self.input
    }

    /// The output modulus q.
    pub fn output(&self) -> Modulus {
        self.output
    }

    /// The p − 1 ciphertexts, rows 1..p.
    pub fn rows(&self) -> &[Label] {
        &self.rows
    }
}

/// Checks φ: exactly p values, each below q.
pub(crate) fn check_phi(p: Modulus, q: Modulus, phi: &[u8]) -> Result<(), GarbleError> {
    if phi.len() != usize::from(p.q()) {
        return Err(GarbleError::ProjectionLength {
            expected: usize::from(p.q()),
            got: phi.len(),
        });
    }
    if let Some((x, &v)) = phi.iter().enumerate().find(|&(_, &v)| v >= q.q()) {
        return Err(GarbleError::ProjectionValue {
            x,
            value: u16::from(v),
            q: q.q(),
        });
    }
    Ok(())
}

/// Garbles a projection gate (see the module docs): returns the table and the output
/// zero-label C₀. `phi[x]` is φ(x) for x ∈ 0..p. `gate` must be unique in the garbling — use
/// [`Garbler::projection`], which numbers gates itself, unless you number them yourself.
pub fn garble_projection(
    hasher: &Hasher,
    gate: u64,
    a0: &Label,
    delta_p: &Delta,
    delta_q: &Delta,
    phi: &[u8],
    cost: &mut GarbleCost,
) -> Result<(ProjectionTable, Label), GarbleError> {
    let p = a0.modulus();
    let q = delta_q.modulus();
    if delta_p.modulus() != p {
        return Err(GarbleError::ModulusMismatch {
            expected: p.q(),
            got: delta_p.modulus().q(),
        });
    }
    check_phi(p, q, phi)?;

    // The p input labels in order of x, and their rows (colours).
    let mut labels = Vec::with_capacity(phi.len());
    let mut a = a0.clone();
    for x in 0..phi.len() {
        if x > 0 {
            // Moduli checked above.
            a.add_assign_unchecked(delta_p.as_label());
        }
        labels.push(a.clone());
    }
    a.zeroize();
    let items: Vec<(u128, u128)> = labels
        .iter()
        .map(|l| {
            let row = u32::from(l.colour());
            (l.to_block(), Tweak { gate, row }.block(p, q))
        })
        .collect();
    let mut hashes = vec![[0u128; 2]; items.len()];
    hasher.hash_raw(&items, q, &mut hashes, cost);
    let mut pads: Vec<u128> = hashes.iter().map(|&h| pad_of(q, h)).collect();
    hashes.zeroize();

    // Row reduction: block(C₀ + φ(x*)·Δ_q) = −pad(x*).
    let x_star = usize::from(p.reduce(u64::from(p.q()) - u64::from(a0.colour())));
    let (pad0, phi0) = pads
        .get(x_star)
        .zip(phi.get(x_star))
        .ok_or(GarbleError::Internal("row 0 is missing"))?;
    let mut top = Label::from_block(q, sub_block(q, 0, *pad0))?;
    let c0 = top.try_sub(&delta_q.times(u64::from(*phi0)));
    top.zeroize();
    let c0 = c0?;

    let mut rows = vec![Label::zero(q); phi.len() - 1];
    for ((label, pad), &v) in labels.iter().zip(&pads).zip(phi) {
        let r = usize::from(label.colour());
        if r == 0 {
            continue;
        }
        let ct = add_block(q, delta_q.encode(&c0, u64::from(v))?.to_block(), *pad);
        let slot = rows
            .get_mut(r - 1)
            .ok_or(GarbleError::Internal("row out of range"))?;
        *slot = Label::from_block(q, ct)?;
    }
    for l in &mut labels {
        l.zeroize();
    }
    pads.zeroize();
    cost.add_table(rows.len() as u64);
    Ok((ProjectionTable::new(gate, p, q, rows)?, c0))
}

/// Evaluates a projection gate on the input label `a`: returns C₀ + φ(x)·Δ_q for a = A₀ + x·Δ_p.
pub fn evaluate_projection(
    hasher: &Hasher,
    table: &ProjectionTable,
    a: &Label,
    cost: &mut GarbleCost,
) -> Result<Label, GarbleError> {
    if a.modulus() != table.input {
        return Err(GarbleError::ModulusMismatch {
            expected: table.input.q(),
            got: a.modulus().q(),
        });
    }
    let r = a.colour();
    let q = table.output;
    let tweak = Tweak {
        gate: table.gate,
        row: u32::from(r),
    };
    let mut h = [[0u128; 2]];
    hasher.hash_raw(
        &[(a.to_block(), tweak.block(a.modulus(), q))],
        q,
        &mut h,
        cost,
    );
    let [h] = h;
    cost.gates += 1;
    let ct = match usize::from(r).checked_sub(1) {
        None => 0,
        Some(i) => table
            .rows
            .get(i)
            .ok_or(GarbleError::TableLength {
                expected: usize::from(table.input.q()) - 1,
                got: table.rows.len(),
            })?
            .to_block(),
    };
    Label::from_block(q, sub_block(q, ct, pad_of(q, h)))
}

/// One garbling: the seeded CSPRNG, one offset per modulus, the public hash key and the gate
/// counter. Runs on the trusted side (the enclave).
pub struct Garbler {
    rng: ChaCha20Rng,
    hasher: Hasher,
    deltas: BTreeMap<u8, Delta>,
    next_gate: u64,
    cost: GarbleCost,
}

impl Drop for Garbler {
    /// The CSPRNG's state holds the seed (it is the ChaCha key) and keystream not yet used:
    /// overwrite it with the state of an all-zero key, by a volatile write the compiler may not
    /// drop. The offsets Δ zeroize themselves.
    fn drop(&mut self) {
        let blank = ChaCha20Rng::from_seed([0u8; 32]);
        // SAFETY: `self.rng` is a valid, aligned, initialised field; writing a fresh value over
        // it by `write_volatile` runs no destructor of the old value (ChaCha20Rng has none:
        // it is plain data), and the field is valid again afterwards.
        unsafe { std::ptr::write_volatile(&mut self.rng, blank) };
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Garbler {
    /// A garbling seeded by `seed` (deterministic given the seed and the call sequence). The
    /// public AES key of the hash is the first 16 bytes drawn from the CSPRNG.
    pub fn new(seed: &Seed) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed.0);
        let key: [u8; 16] = rng.random();
        Self {
            rng,
            hasher: Hasher::new(key),
            deltas: BTreeMap::new(),
            next_gate: 0,
            cost: GarbleCost::default(),
        }
    }

    /// The public AES key the evaluator needs.
    pub fn hash_key(&self) -> [u8; 16] {
        self.hasher.key()
    }

    /// The hasher (for tests and gadgets that number gates themselves).
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// What this garbling has cost so far.
    pub fn cost(&self) -> GarbleCost {
        self.cost
    }

    /// The offset Δ_q, drawn on first use.
    pub fn delta(&mut self, q: Modulus) -> &Delta {
        let rng = &mut self.rng;
        self.deltas
            .entry(q.q())
            .or_insert_with(|| Delta::random(q, rng))
    }

    /// A fresh input wire mod q: its zero-label.
    pub fn input_wire(&mut self, q: Modulus) -> Label {
        Label::random(q, &mut self.rng)
    }

    /// The label of value `x` on a wire with zero-label `zero`.
    pub fn encode(&mut self, zero: &Label, x: u64) -> Result<Label, GarbleError> {
        self.delta(zero.modulus()).encode(zero, x)
    }

    /// Decodes an output label in constant time; errors on a label that is no valid label of
    /// the wire (what a cheating evaluator returns).
    pub fn decode(&mut self, zero: &Label, label: &Label) -> Result<u8, GarbleError> {
        let delta = self.delta(zero.modulus()).clone();
        crate::label::decode(label, zero, &delta)
    }

    /// Garbles a projection gate φ: Z_p → Z_q on the wire with zero-label `a0`; returns the
    /// table and the output wire's zero-label.
    pub fn projection(
        &mut self,
        a0: &Label,
        q: Modulus,
        phi: &[u8],
    ) -> Result<(ProjectionTable, Label), GarbleError> {
        let gate = self.next_gate;
        self.next_gate = gate.checked_add(1).ok_or(GarbleError::GatesExhausted)?;
        let delta_p = self.delta(a0.modulus()).clone();
        let delta_q = self.delta(q).clone();
        garble_projection(
            &self.hasher,
            gate,
            a0,
            &delta_p,
            &delta_q,
            phi,
            &mut self.cost,
        )
    }
}

impl Garbler {
    /// Fresh input wires mod q of the given shape: their zero-labels (the same CSPRNG draws as
    /// that many calls of [`Garbler::input_wire`]).
    pub fn input_tensor(
        &mut self,
        q: Modulus,
        shape: &[usize],
    ) -> Result<LabelTensor, GarbleError> {
        LabelTensor::random(q, shape, &mut self.rng)
    }

    /// The labels of `values` on wires whose zero-labels are `zero` (one value per label).
    pub fn encode_tensor(
        &mut self,
        zero: &LabelTensor,
        values: &[i64],
    ) -> Result<LabelTensor, GarbleError> {
        let mut out = zero.clone();
        let delta = self.delta(zero.modulus()).clone();
        out.add_delta_times(&delta, values)?;
        Ok(out)
    }

    /// Reserves `count` consecutive gate numbers; returns the first.
    fn reserve_gates(&mut self, count: usize) -> Result<u64, GarbleError> {
        let base = self.next_gate;
        self.next_gate = crate::batch::end_gate(base, count)?;
        Ok(base)
    }

    /// Garbles φ: Z_p → Z_q on every wire of `a0` at once (see [`crate::batch`]): gate i is
    /// exactly what [`Garbler::projection`] would garble for label i, numbered from this
    /// garbler's counter. Returns the tables and the output zero-labels.
    pub fn projection_batch(
        &mut self,
        a0: &LabelTensor,
        q: Modulus,
        phi: &[u8],
    ) -> Result<(ProjectionBatch, LabelTensor), GarbleError> {
        check_phi(a0.modulus(), q, phi)?;
        let delta_p = self.delta(a0.modulus()).clone();
        let delta_q = self.delta(q).clone();
        let base = self.reserve_gates(a0.len())?;
        crate::batch::garble_projection_batch(
            &self.hasher,
            base,
            a0,
            &delta_p,
            &delta_q,
            phi,
            &mut self.cost,
        )
    }
}

impl std::fmt::Debug for Garbler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Garbler")
            .field("next_gate", &self.next_gate)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// The untrusted side: evaluates garbled tables with the garbling's public hash key.
#[derive(Debug)]
pub struct Evaluator {
    hasher: Hasher,
    cost: GarbleCost,
}

impl Evaluator {
    /// An evaluator for the garbling whose public hash key is `key`.
    pub fn new(key: [u8; 16]) -> Self {
        Self {
            hasher: Hasher::new(key),
            cost: GarbleCost::default(),
        }
    }

    /// Evaluates one projection gate.
    pub fn projection(&mut self, table: &ProjectionTable, a: &Label) -> Result<Label, GarbleError> {
        evaluate_projection(&self.hasher, table, a, &mut self.cost)
    }

    /// Evaluates a batch of projection gates, one per label of `a`.
    pub fn projection_batch(
        &mut self,
        tables: &ProjectionBatch,
        a: &LabelTensor,
    ) -> Result<LabelTensor, GarbleError> {
        crate::batch::evaluate_projection_batch(&self.hasher, tables, a, &mut self.cost)
    }

    /// What evaluation has cost so far (gates and hash calls).
    pub fn cost(&self) -> GarbleCost {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;
    use std::collections::HashSet;

    const SMALL_PRIMES: [u64; 9] = [2, 3, 5, 7, 11, 13, 17, 19, 23];

    use crate::modulus::testing::m;

    fn prime() -> impl Strategy<Value = Modulus> {
        prop::sample::select(SMALL_PRIMES.to_vec()).prop_map(m)
    }

    /// A random φ: Z_p → Z_q drawn from `rng`.
    fn random_phi(rng: &mut ChaCha20Rng, p: Modulus, q: Modulus) -> Vec<u8> {
        (0..p.q()).map(|_| rng.random_range(0..q.q())).collect()
    }

    proptest! {
        #[test]
        fn projection_computes_phi_on_every_input(p in prime(), q in prime(), seed: [u8; 32]) {
            let mut g = Garbler::new(&Seed::from_bytes(seed));
            let mut rng = ChaCha20Rng::from_seed(seed);
            let phi = random_phi(&mut rng, p, q);
            let a0 = g.input_wire(p);
            let (table, c0) = g.projection(&a0, q, &phi).expect("garble");
            prop_assert_eq!(table.rows().len(), usize::from(p.q()) - 1);
            let mut e = Evaluator::new(g.hash_key());
            let delta_q = g.delta(q).clone();
            for x in 0..p.q() {
                let a = g.encode(&a0, u64::from(x)).expect("encode");
                let out = e.projection(&table, &a).expect("evaluate");
                let fx = phi[usize::from(x)];
                prop_assert_eq!(&out, &delta_q.encode(&c0, u64::from(fx)).expect("encode"));
                prop_assert_eq!(g.decode(&c0, &out).expect("valid"), fx);
            }
            let cost = g.cost();
            prop_assert_eq!(cost.ciphertexts, u64::from(p.q()) - 1);
            prop_assert_eq!(cost.bytes, 16 * (u64::from(p.q()) - 1));
            prop_assert_eq!(cost.hash_calls, u64::from(p.q()));
            prop_assert_eq!(e.cost().hash_calls, u64::from(p.q()));
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut g = Garbler::new(&Seed::from_bytes([1; 32]));
        let a0 = g.input_wire(m(5));
        assert!(matches!(
            g.projection(&a0, m(3), &[0, 1, 2]),
            Err(GarbleError::ProjectionLength {
                expected: 5,
                got: 3
            })
        ));
        assert!(matches!(
            g.projection(&a0, m(3), &[0, 1, 2, 3, 0]),
            Err(GarbleError::ProjectionValue {
                x: 3,
                value: 3,
                q: 3
            })
        ));
        let (table, _) = g.projection(&a0, m(3), &[0, 1, 2, 0, 1]).expect("garble");
        let mut e = Evaluator::new(g.hash_key());
        // A label of the wrong modulus.
        let wrong = g.input_wire(m(7));
        assert!(matches!(
            e.projection(&table, &wrong),
            Err(GarbleError::ModulusMismatch {
                expected: 5,
                got: 7
            })
        ));
        // Tables from elsewhere are checked on construction.
        let short = table.rows()[..3].to_vec();
        assert!(matches!(
            ProjectionTable::new(0, m(5), m(3), short),
            Err(GarbleError::TableLength {
                expected: 4,
                got: 3
            })
        ));
        let mut mixed = table.rows().to_vec();
        mixed[1] = Label::zero(m(7));
        assert!(matches!(
            ProjectionTable::new(0, m(5), m(3), mixed),
            Err(GarbleError::ModulusMismatch {
                expected: 3,
                got: 7
            })
        ));
        // Decoding a label that is no label of the wire fails.
        let junk = g.input_wire(m(3));
        let c0 = g.input_wire(m(3));
        assert!(matches!(
            g.decode(&c0, &junk),
            Err(GarbleError::InvalidLabel { q: 3 })
        ));
    }

    #[test]
    fn an_evaluator_with_the_wrong_key_yields_invalid_labels() {
        let mut g = Garbler::new(&Seed::from_bytes([3; 32]));
        let a0 = g.input_wire(m(11));
        let phi: Vec<u8> = (0..11).map(|x| x % 5).collect();
        let (table, c0) = g.projection(&a0, m(5), &phi).expect("garble");
        let mut wrong = g.hash_key();
        wrong[0] ^= 1;
        let mut e = Evaluator::new(wrong);
        for x in 0..11 {
            let a = g.encode(&a0, x).expect("encode");
            let out = e.projection(&table, &a).expect("evaluate");
            assert!(matches!(
                g.decode(&c0, &out),
                Err(GarbleError::InvalidLabel { q: 5 })
            ));
        }
    }

    #[test]
    fn garbling_is_deterministic_per_seed_and_differs_across_seeds() {
        let run = |seed: u8| {
            let mut g = Garbler::new(&Seed::from_bytes([seed; 32]));
            let a0 = g.input_wire(m(7));
            let (t, c0) = g
                .projection(&a0, m(2), &[0, 1, 0, 1, 0, 1, 1])
                .expect("garble");
            (g.hash_key(), t, c0)
        };
        assert_eq!(run(1), run(1));
        let (k1, t1, _) = run(1);
        let (k2, t2, _) = run(2);
        assert_ne!(k1, k2);
        assert_ne!(t1, t2);
    }

    /// 1,000 projection gates over a circuit with fan-out (wires feed several gates, the case
    /// that broke Dash's untweaked hash): no (input label, tweak) pair is hashed twice, no tweak
    /// is used twice, and every wire still decodes to the plaintext value.
    #[test]
    fn no_label_tweak_pair_is_hashed_twice_in_1000_gates() {
        let mut g = Garbler::new(&Seed::from_bytes([42; 32]));
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let mut e = Evaluator::new(g.hash_key());
        // (zero-label, evaluator's label, plaintext value) per wire.
        let mut wires: Vec<(Label, Label, u8)> = Vec::new();
        for _ in 0..10 {
            let p = m(SMALL_PRIMES[rng.random_range(0..SMALL_PRIMES.len())]);
            let zero = g.input_wire(p);
            let x = rng.random_range(0..p.q());
            let label = g.encode(&zero, u64::from(x)).expect("encode");
            wires.push((zero, label, x));
        }
        for _ in 0..1000 {
            // Prefer recent wires but reuse old ones often: fan-out up to dozens.
            let i = rng.random_range(wires.len().saturating_sub(20)..wires.len());
            let (zero, label, x) = wires[i].clone();
            let p = zero.modulus();
            let q = m(SMALL_PRIMES[rng.random_range(0..SMALL_PRIMES.len())]);
            let phi = random_phi(&mut rng, p, q);
            let (table, c0) = g.projection(&zero, q, &phi).expect("garble");
            let out = e.projection(&table, &label).expect("evaluate");
            let fx = phi[usize::from(x)];
            assert_eq!(g.decode(&c0, &out).expect("valid"), fx);
            wires.push((c0, out, fx));
        }
        let cost = g.cost();
        assert_eq!(cost.gates, 1000);

        let log = g.hasher().log.lock().expect("log").clone();
        assert_eq!(log.len() as u64, cost.hash_calls);
        let pairs: HashSet<_> = log.iter().collect();
        assert_eq!(
            pairs.len(),
            log.len(),
            "a (label, tweak) pair was hashed twice"
        );
        let tweaks: HashSet<_> = log.iter().map(|&(_, _, t)| t).collect();
        assert_eq!(tweaks.len(), log.len(), "a tweak was used twice");
        // The evaluator hashes only pairs the garbler hashed (one per gate).
        let eval_log = e.hasher.log.lock().expect("log").clone();
        assert_eq!(eval_log.len(), 1000);
        assert!(eval_log.iter().all(|entry| pairs.contains(entry)));
    }
}
