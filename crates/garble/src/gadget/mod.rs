//! Gadgets: circuits written once against a small [`Backend`] trait and run on several backends.
//!
//! A gadget is a generic function `fn f<B: Backend>(b: &mut B, wires…) -> Result<B::Wire, _>`.
//! It only uses the backend's operations — the free ones (add, sub, multiply by a public
//! constant, add a public constant, all mod the wire's prime) and the projection gate
//! φ: Z_p → Z_q — so the same definition is:
//!
//! - [`PlainBackend`]: wires are plain residues; the oracle every other backend is tested against.
//! - [`GarbleBackend`]: wires are zero-labels; projections are garbled by the [`Garbler`], and
//!   the tables are collected in gate order.
//! - [`EvalBackend`]: wires are the evaluator's labels; projections consume the tables in the
//!   same order with the [`Evaluator`].
//! - [`CostBackend`]: wires are just moduli; projections count p − 1 ciphertexts each (row
//!   reduction), so a gadget's size is known without garbling.
//! - [`LayerGarbleBackend`] and [`LayerEvalBackend`] ([`layer`]): wires are [`crate::LabelTensor`]s,
//!   one residue of a whole layer of values, so each projection is one batched, multi-core
//!   [`crate::ProjectionBatch`].
//!
//! Because garbler and evaluator run the same definition, they agree on gate order by
//! construction; the evaluator still checks each table against the gate it expects (moduli)
//! and reports missing or left-over tables as errors, since the tables come from a peer.
//!
//! The gadgets themselves are in [`activation`] (the exact sign of a CRT-encoded value, ReLU with
//! the sign over all or only the first primes, and the clamp to an interval),
//! [`scale`] (rescaling by 2^l with round half up by l halvings, and the max of two values) and
//! [`rescale`] (the same rescale with one base extension and a column sum, far fewer
//! ciphertexts).

/// The free operations every backend over [`crate::LabelTensor`] wires shares, garbler and
/// evaluator alike (labels add, subtract and scale digit by digit): expands inside its
/// `impl Backend` to `Wire`, `modulus_of`, `add`, `sub`, `mul_const` and
/// `mul_const_add_assign`.
macro_rules! label_tensor_free_ops {
    () => {
        type Wire = $crate::tensor::LabelTensor;

        fn modulus_of(&self, w: &$crate::tensor::LabelTensor) -> $crate::modulus::Modulus {
            w.modulus()
        }

        fn add(
            &mut self,
            a: &$crate::tensor::LabelTensor,
            b: &$crate::tensor::LabelTensor,
        ) -> Result<$crate::tensor::LabelTensor, $crate::GarbleError> {
            a.try_add(b)
        }

        fn sub(
            &mut self,
            a: &$crate::tensor::LabelTensor,
            b: &$crate::tensor::LabelTensor,
        ) -> Result<$crate::tensor::LabelTensor, $crate::GarbleError> {
            a.try_sub(b)
        }

        fn mul_const(
            &mut self,
            a: &$crate::tensor::LabelTensor,
            k: u64,
        ) -> Result<$crate::tensor::LabelTensor, $crate::GarbleError> {
            Ok(a.mul_scalar(i64::from(a.modulus().reduce(k))))
        }

        fn mul_const_add_assign(
            &mut self,
            a: &mut $crate::tensor::LabelTensor,
            k: u64,
            c: &$crate::tensor::LabelTensor,
        ) -> Result<(), $crate::GarbleError> {
            a.mul_scalar_add_assign(i64::from(a.modulus().reduce(k)), c)
        }
    };
}
pub(crate) use label_tensor_free_ops;

pub mod activation;
pub mod layer;
pub mod rescale;
pub mod scale;
#[cfg(test)]
mod test_support;

pub use activation::{clamp, mul_bit, relu, relu_cost, relu_narrow, sign, sign_cost};
pub use layer::{BatchSink, LayerEvalBackend, LayerGarbleBackend};
pub use rescale::{rescale_pow2_onestep, rescale_pow2_onestep_cost, rescale_pow2_onestep_max};
pub use scale::{max2, max2_cost, rescale_pow2, rescale_pow2_cost};

use crate::GarbleError;
use crate::cost::GarbleCost;
use crate::gate::{Evaluator, Garbler, ProjectionTable};
use crate::label::Label;
use crate::modulus::Modulus;

/// The operations a gadget may use. Every wire has a prime modulus; binary operations need
/// equal moduli.
pub trait Backend {
    /// What this backend carries on a wire.
    type Wire: Clone;

    /// The modulus of a wire.
    fn modulus_of(&self, w: &Self::Wire) -> Modulus;

    /// a + b (same modulus). Free.
    fn add(&mut self, a: &Self::Wire, b: &Self::Wire) -> Result<Self::Wire, GarbleError>;

    /// a − b (same modulus). Free.
    fn sub(&mut self, a: &Self::Wire, b: &Self::Wire) -> Result<Self::Wire, GarbleError>;

    /// k · a for a public k (reduced mod the wire's prime). Free.
    fn mul_const(&mut self, a: &Self::Wire, k: u64) -> Result<Self::Wire, GarbleError>;

    /// a + k for a public k (reduced mod the wire's prime). Free.
    fn add_const(&mut self, a: &Self::Wire, k: u64) -> Result<Self::Wire, GarbleError>;

    /// a ← k·a + c for a public k (same modulus): [`Backend::mul_const`] then [`Backend::add`],
    /// in place where a backend can do it in one pass. Free.
    fn mul_const_add_assign(
        &mut self,
        a: &mut Self::Wire,
        k: u64,
        c: &Self::Wire,
    ) -> Result<(), GarbleError> {
        let scaled = self.mul_const(a, k)?;
        *a = self.add(&scaled, c)?;
        Ok(())
    }

    /// The projection gate: φ(a) mod q, where `phi[x]` = φ(x) for x ∈ 0..p (p − 1 ciphertexts).
    fn project(
        &mut self,
        a: &Self::Wire,
        q: Modulus,
        phi: &[u16],
    ) -> Result<Self::Wire, GarbleError>;
}

/// Checks φ against p and q and narrows it to the gate's `u8` form.
pub(crate) fn checked_phi(p: Modulus, q: Modulus, phi: &[u16]) -> Result<Vec<u8>, GarbleError> {
    if phi.len() != usize::from(p.q()) {
        return Err(GarbleError::ProjectionLength {
            expected: usize::from(p.q()),
            got: phi.len(),
        });
    }
    phi.iter()
        .enumerate()
        .map(|(x, &v)| match u8::try_from(v) {
            Ok(b) if b < q.q() => Ok(b),
            _ => Err(GarbleError::ProjectionValue {
                x,
                value: v,
                q: q.q(),
            }),
        })
        .collect()
}

fn same_modulus(a: Modulus, b: Modulus) -> Result<(), GarbleError> {
    if a == b {
        Ok(())
    } else {
        Err(GarbleError::ModulusMismatch {
            expected: a.q(),
            got: b.q(),
        })
    }
}

/// A plaintext wire: a residue and its modulus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainWire {
    modulus: Modulus,
    value: u8,
}

impl PlainWire {
    /// The wire carrying `value mod q`.
    pub fn new(modulus: Modulus, value: u64) -> Self {
        Self {
            modulus,
            value: modulus.reduce(value),
        }
    }

    /// The residue, in `0..q`.
    pub fn value(self) -> u8 {
        self.value
    }

    /// The modulus.
    pub fn modulus(self) -> Modulus {
        self.modulus
    }
}

/// The plaintext backend: computes on residues directly. The oracle.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainBackend;

impl Backend for PlainBackend {
    type Wire = PlainWire;

    fn modulus_of(&self, w: &PlainWire) -> Modulus {
        w.modulus
    }

    fn add(&mut self, a: &PlainWire, b: &PlainWire) -> Result<PlainWire, GarbleError> {
        same_modulus(a.modulus, b.modulus)?;
        Ok(PlainWire::new(
            a.modulus,
            u64::from(a.value) + u64::from(b.value),
        ))
    }

    fn sub(&mut self, a: &PlainWire, b: &PlainWire) -> Result<PlainWire, GarbleError> {
        same_modulus(a.modulus, b.modulus)?;
        let q = u64::from(a.modulus.q());
        Ok(PlainWire::new(
            a.modulus,
            u64::from(a.value) + q - u64::from(b.value),
        ))
    }

    fn mul_const(&mut self, a: &PlainWire, k: u64) -> Result<PlainWire, GarbleError> {
        let k = u64::from(a.modulus.reduce(k));
        Ok(PlainWire::new(a.modulus, u64::from(a.value) * k))
    }

    fn add_const(&mut self, a: &PlainWire, k: u64) -> Result<PlainWire, GarbleError> {
        let k = u64::from(a.modulus.reduce(k));
        Ok(PlainWire::new(a.modulus, u64::from(a.value) + k))
    }

    fn project(
        &mut self,
        a: &PlainWire,
        q: Modulus,
        phi: &[u16],
    ) -> Result<PlainWire, GarbleError> {
        let phi = checked_phi(a.modulus, q, phi)?;
        let v = phi
            .get(usize::from(a.value))
            .ok_or(GarbleError::Internal("plain value out of range"))?;
        Ok(PlainWire::new(q, u64::from(*v)))
    }
}

/// The cost backend: wires are moduli; each projection from mod p records p − 1 ciphertexts.
#[derive(Clone, Copy, Debug, Default)]
pub struct CostBackend {
    /// Gates, ciphertexts and bytes so far (hash calls are not counted here).
    pub cost: GarbleCost,
}

impl Backend for CostBackend {
    type Wire = Modulus;

    fn modulus_of(&self, w: &Modulus) -> Modulus {
        *w
    }

    fn add(&mut self, a: &Modulus, b: &Modulus) -> Result<Modulus, GarbleError> {
        same_modulus(*a, *b)?;
        Ok(*a)
    }

    fn sub(&mut self, a: &Modulus, b: &Modulus) -> Result<Modulus, GarbleError> {
        same_modulus(*a, *b)?;
        Ok(*a)
    }

    fn mul_const(&mut self, a: &Modulus, _k: u64) -> Result<Modulus, GarbleError> {
        Ok(*a)
    }

    fn add_const(&mut self, a: &Modulus, _k: u64) -> Result<Modulus, GarbleError> {
        Ok(*a)
    }

    fn project(&mut self, a: &Modulus, q: Modulus, phi: &[u16]) -> Result<Modulus, GarbleError> {
        checked_phi(*a, q, phi)?;
        self.cost.add_table(u64::from(a.q()) - 1);
        Ok(q)
    }
}

/// The garbling backend (trusted side): wires are zero-labels A₀ (the label of value x is
/// A₀ + x·Δ_q); projections are garbled and their tables collected in gate order.
#[derive(Debug)]
pub struct GarbleBackend {
    garbler: Garbler,
    tables: Vec<ProjectionTable>,
}

impl GarbleBackend {
    /// A backend over a fresh or ongoing garbling.
    pub fn new(garbler: Garbler) -> Self {
        Self {
            garbler,
            tables: Vec::new(),
        }
    }

    /// The garbler (to draw input wires, encode and decode).
    pub fn garbler_mut(&mut self) -> &mut Garbler {
        &mut self.garbler
    }

    /// The tables garbled so far, in gate order.
    pub fn tables(&self) -> &[ProjectionTable] {
        &self.tables
    }

    /// The garbler and the tables.
    pub fn into_parts(self) -> (Garbler, Vec<ProjectionTable>) {
        (self.garbler, self.tables)
    }
}

impl Backend for GarbleBackend {
    type Wire = Label;

    fn modulus_of(&self, w: &Label) -> Modulus {
        w.modulus()
    }

    fn add(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        a.try_add(b)
    }

    fn sub(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        a.try_sub(b)
    }

    fn mul_const(&mut self, a: &Label, k: u64) -> Result<Label, GarbleError> {
        Ok(a.mul_scalar(k))
    }

    /// The value grows by k while the evaluator's label stays, so the zero-label moves by −k·Δ.
    fn add_const(&mut self, a: &Label, k: u64) -> Result<Label, GarbleError> {
        let shift = self.garbler.delta(a.modulus()).times(k);
        a.try_sub(&shift)
    }

    fn project(&mut self, a: &Label, q: Modulus, phi: &[u16]) -> Result<Label, GarbleError> {
        let phi = checked_phi(a.modulus(), q, phi)?;
        let (table, c0) = self.garbler.projection(a, q, &phi)?;
        self.tables.push(table);
        Ok(c0)
    }
}

/// The evaluation backend (untrusted side): wires are the labels it holds; projections consume
/// the garbled tables in order.
#[derive(Debug)]
pub struct EvalBackend {
    evaluator: Evaluator,
    tables: Vec<ProjectionTable>,
    next: usize,
}

impl EvalBackend {
    /// A backend evaluating `tables` (from the garbler, in gate order) with `evaluator`.
    pub fn new(evaluator: Evaluator, tables: Vec<ProjectionTable>) -> Self {
        Self {
            evaluator,
            tables,
            next: 0,
        }
    }

    /// The evaluator (for its cost counters).
    pub fn evaluator(&self) -> &Evaluator {
        &self.evaluator
    }

    /// Errors unless every table was used: call after the circuit.
    pub fn finish(&self) -> Result<(), GarbleError> {
        let left = self.tables.len().saturating_sub(self.next);
        if left == 0 {
            Ok(())
        } else {
            Err(GarbleError::TablesLeftOver(left))
        }
    }
}

impl Backend for EvalBackend {
    type Wire = Label;

    fn modulus_of(&self, w: &Label) -> Modulus {
        w.modulus()
    }

    fn add(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        a.try_add(b)
    }

    fn sub(&mut self, a: &Label, b: &Label) -> Result<Label, GarbleError> {
        a.try_sub(b)
    }

    fn mul_const(&mut self, a: &Label, k: u64) -> Result<Label, GarbleError> {
        Ok(a.mul_scalar(k))
    }

    /// The label of x + k is the label of x (the garbler moved the zero-label instead).
    fn add_const(&mut self, a: &Label, _k: u64) -> Result<Label, GarbleError> {
        Ok(a.clone())
    }

    fn project(&mut self, a: &Label, q: Modulus, phi: &[u16]) -> Result<Label, GarbleError> {
        // φ is public circuit data; checking it keeps this backend's errors those of the others.
        checked_phi(a.modulus(), q, phi)?;
        let table = self
            .tables
            .get(self.next)
            .ok_or(GarbleError::TablesExhausted(self.next))?;
        same_modulus(q, table.output())?;
        same_modulus(table.input(), a.modulus())?;
        let out = self.evaluator.projection(table, a)?;
        self.next += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::Seed;

    use crate::modulus::testing::m;

    /// A small circuit using every operation, run on all four backends.
    fn mix<B: Backend>(b: &mut B, x: &B::Wire, y: &B::Wire) -> Result<B::Wire, GarbleError> {
        let s = b.add(x, y)?;
        let d = b.sub(&s, y)?;
        let t = b.mul_const(&d, 4)?;
        let u = b.add_const(&t, 9)?;
        let phi: Vec<u16> = (0..7).map(|v| (v * v) % 5).collect();
        let p = b.project(&u, m(5), &phi)?;
        let w = b.add_const(&p, 3)?;
        let phi2: Vec<u16> = (0..5).map(|v| v % 2).collect();
        b.project(&w, m(2), &phi2)
    }

    #[test]
    fn every_backend_agrees_with_the_plaintext_oracle() {
        for (x, y) in (0..7u64).flat_map(|x| (0..7u64).map(move |y| (x, y))) {
            let want = mix(
                &mut PlainBackend,
                &PlainWire::new(m(7), x),
                &PlainWire::new(m(7), y),
            )
            .expect("plain");
            let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes([5; 32])));
            let x0 = g.garbler_mut().input_wire(m(7));
            let y0 = g.garbler_mut().input_wire(m(7));
            let out0 = mix(&mut g, &x0, &y0).expect("garble");
            let (mut garbler, tables) = g.into_parts();
            let xl = garbler.encode(&x0, x).expect("encode");
            let yl = garbler.encode(&y0, y).expect("encode");
            let mut e = EvalBackend::new(Evaluator::new(garbler.hash_key()), tables);
            let out = mix(&mut e, &xl, &yl).expect("evaluate");
            e.finish().expect("all tables used");
            assert_eq!(garbler.decode(&out0, &out).expect("valid"), want.value());
            let mut c = CostBackend::default();
            mix(&mut c, &m(7), &m(7)).expect("cost");
            assert_eq!(c.cost.ciphertexts, 6 + 4);
            assert_eq!(c.cost.ciphertexts, garbler.cost().ciphertexts);
        }
    }

    #[test]
    fn evaluator_reports_missing_extra_and_mismatched_tables() {
        let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes([6; 32])));
        let x0 = g.garbler_mut().input_wire(m(7));
        let y0 = g.garbler_mut().input_wire(m(7));
        mix(&mut g, &x0, &y0).expect("garble");
        let (mut garbler, tables) = g.into_parts();
        let xl = garbler.encode(&x0, 1).expect("encode");
        let yl = garbler.encode(&y0, 2).expect("encode");
        let key = garbler.hash_key();

        let mut short = EvalBackend::new(Evaluator::new(key), tables[..1].to_vec());
        assert_eq!(
            mix(&mut short, &xl, &yl),
            Err(GarbleError::TablesExhausted(1))
        );

        let mut extra_tables = tables.clone();
        extra_tables.push(tables[0].clone());
        let mut extra = EvalBackend::new(Evaluator::new(key), extra_tables);
        mix(&mut extra, &xl, &yl).expect("evaluate");
        assert_eq!(extra.finish(), Err(GarbleError::TablesLeftOver(1)));

        let swapped = vec![tables[1].clone(), tables[0].clone()];
        let mut bad = EvalBackend::new(Evaluator::new(key), swapped);
        assert!(matches!(
            mix(&mut bad, &xl, &yl),
            Err(GarbleError::ModulusMismatch { .. })
        ));
    }

    #[test]
    fn bad_projections_are_errors_on_every_backend() {
        let long = vec![0u16; 8];
        let wide = vec![0, 0, 0, 0, 0, 0, 300];
        assert!(matches!(
            PlainBackend.project(&PlainWire::new(m(7), 0), m(5), &long),
            Err(GarbleError::ProjectionLength { .. })
        ));
        assert!(matches!(
            PlainBackend.project(&PlainWire::new(m(7), 0), m(5), &wide),
            Err(GarbleError::ProjectionValue {
                x: 6,
                value: 300,
                q: 5
            })
        ));
        assert!(matches!(
            CostBackend::default().project(&m(7), m(5), &wide),
            Err(GarbleError::ProjectionValue { .. })
        ));
        let mut g = GarbleBackend::new(Garbler::new(&Seed::from_bytes([7; 32])));
        let a = g.garbler_mut().input_wire(m(7));
        assert!(matches!(
            g.project(&a, m(5), &[0, 1, 2, 3, 4, 5, 0]),
            Err(GarbleError::ProjectionValue { x: 5, value: 5, .. })
        ));
        let b = g.garbler_mut().input_wire(m(5));
        assert!(matches!(
            g.add(&a, &b),
            Err(GarbleError::ModulusMismatch { .. })
        ));
        assert!(matches!(
            PlainBackend.sub(&PlainWire::new(m(7), 0), &PlainWire::new(m(5), 0)),
            Err(GarbleError::ModulusMismatch { .. })
        ));
    }
}
