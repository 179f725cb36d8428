//! Gadgets over whole layers: backends whose wire is a [`LabelTensor`] (one residue of many
//! values), so every projection of a gadget becomes one [`ProjectionBatch`] — batched AES over
//! all values and spread over every core — while the gadget itself is the same generic function.
//!
//! Gate numbers come from the one [`Garbler`] in order, exactly as for single wires, so no tweak
//! repeats; the evaluator consumes the batches in the same order and checks each against the
//! gate it expects (moduli and size), since the batches come from a peer.

use super::{Backend, checked_phi, same_modulus};
use crate::GarbleError;
use crate::batch::ProjectionBatch;
use crate::gate::{Evaluator, Garbler};
use crate::modulus::Modulus;
use crate::tensor::LabelTensor;

/// Where a layer garbler puts each projection batch, in gate order: kept in memory (a `Vec`) or
/// written to a stream of garbled material (the network garbler).
pub trait BatchSink {
    /// Take the next batch.
    fn put(&mut self, batch: ProjectionBatch) -> Result<(), GarbleError>;
}

impl BatchSink for Vec<ProjectionBatch> {
    fn put(&mut self, batch: ProjectionBatch) -> Result<(), GarbleError> {
        self.push(batch);
        Ok(())
    }
}

/// Garbles gadgets layer-wise: wires are tensors of zero-labels; tables go to the sink `S`.
#[derive(Debug)]
pub struct LayerGarbleBackend<S = Vec<ProjectionBatch>> {
    pub(crate) garbler: Garbler,
    pub(crate) sink: S,
}

impl LayerGarbleBackend {
    /// A backend over a fresh or ongoing garbling, keeping the tables in memory.
    pub fn new(garbler: Garbler) -> Self {
        Self::with_sink(garbler, Vec::new())
    }

    /// The garbler and the batches of tables, in gate order.
    pub fn into_parts(self) -> (Garbler, Vec<ProjectionBatch>) {
        (self.garbler, self.sink)
    }
}

impl<S> LayerGarbleBackend<S> {
    /// A backend that hands every batch of tables to `sink`.
    pub fn with_sink(garbler: Garbler, sink: S) -> Self {
        Self { garbler, sink }
    }

    /// The garbler (to draw input tensors, encode and decode).
    pub fn garbler_mut(&mut self) -> &mut Garbler {
        &mut self.garbler
    }

    /// The garbler and the sink.
    pub fn into_inner(self) -> (Garbler, S) {
        (self.garbler, self.sink)
    }
}

impl<S: BatchSink> Backend for LayerGarbleBackend<S> {
    crate::gadget::label_tensor_free_ops!();

    /// The zero-labels move by −k·Δ (the evaluator's labels stay).
    fn add_const(&mut self, a: &LabelTensor, k: u64) -> Result<LabelTensor, GarbleError> {
        let minus_k = -i64::from(a.modulus().reduce(k));
        let delta = self.garbler.delta(a.modulus()).clone();
        let mut out = a.clone();
        out.add_delta_times(&delta, &vec![minus_k; a.len()])?;
        Ok(out)
    }

    fn project(
        &mut self,
        a: &LabelTensor,
        q: Modulus,
        phi: &[u16],
    ) -> Result<LabelTensor, GarbleError> {
        let phi = checked_phi(a.modulus(), q, phi)?;
        let (batch, c0) = self.garbler.projection_batch(a, q, &phi)?;
        self.sink.put(batch)?;
        Ok(c0)
    }
}

/// Evaluates gadgets layer-wise: wires are tensors of the evaluator's labels.
#[derive(Debug)]
pub struct LayerEvalBackend {
    evaluator: Evaluator,
    batches: Vec<ProjectionBatch>,
    next: usize,
}

impl LayerEvalBackend {
    /// A backend evaluating `batches` (from the garbler, in gate order).
    pub fn new(evaluator: Evaluator, batches: Vec<ProjectionBatch>) -> Self {
        Self {
            evaluator,
            batches,
            next: 0,
        }
    }

    /// The evaluator (for its cost counters).
    pub fn evaluator(&self) -> &Evaluator {
        &self.evaluator
    }

    /// Errors unless every batch was used: call after the circuit.
    pub fn finish(&self) -> Result<(), GarbleError> {
        match self.batches.len().saturating_sub(self.next) {
            0 => Ok(()),
            left => Err(GarbleError::TablesLeftOver(left)),
        }
    }
}

impl Backend for LayerEvalBackend {
    crate::gadget::label_tensor_free_ops!();

    fn add_const(&mut self, a: &LabelTensor, _k: u64) -> Result<LabelTensor, GarbleError> {
        Ok(a.clone())
    }

    fn project(
        &mut self,
        a: &LabelTensor,
        q: Modulus,
        phi: &[u16],
    ) -> Result<LabelTensor, GarbleError> {
        checked_phi(a.modulus(), q, phi)?;
        let batch = self
            .batches
            .get(self.next)
            .ok_or(GarbleError::TablesExhausted(self.next))?;
        same_modulus(q, batch.output())?;
        same_modulus(batch.input(), a.modulus())?;
        let out = self.evaluator.projection_batch(batch, a)?;
        self.next += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crt::CrtBasis;
    use crate::gadget::{PlainBackend, PlainWire, relu, rescale_pow2};
    use crate::label::Seed;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    /// ReLU and a rescale over a layer of 300 values: garbled layer-wise, evaluated, decoded,
    /// equal to the plaintext oracle value by value, every batch used.
    #[test]
    fn layer_gadgets_equal_the_plaintext_oracle() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for k in [7usize, 8] {
            let basis = CrtBasis::first_primes(k).expect("basis");
            let half = basis.max_value() / 4;
            let xs: Vec<i64> = (0..300).map(|_| rng.random_range(-half..half)).collect();
            let mut g = LayerGarbleBackend::new(Garbler::new(&Seed::from_bytes([k as u8; 32])));
            let zeros: Vec<LabelTensor> = basis
                .moduli()
                .iter()
                .map(|&m| g.garbler_mut().input_tensor(m, &[xs.len()]).expect("shape"))
                .collect();
            let r0 = relu(&mut g, &zeros).expect("garble");
            let s0 = rescale_pow2(&mut g, &r0, 3).expect("garble");
            // The garbler's wires, and so every gadget intermediate derived from them, are
            // overwritten when dropped.
            assert!(
                zeros
                    .iter()
                    .chain(&r0)
                    .chain(&s0)
                    .all(LabelTensor::is_secret)
            );
            let (mut garbler, batches) = g.into_parts();
            let residues: Vec<Vec<u8>> = xs
                .iter()
                .map(|&x| basis.encode(x).expect("in range"))
                .collect();
            let labels: Vec<LabelTensor> = zeros
                .iter()
                .enumerate()
                .map(|(i, z)| {
                    let v: Vec<i64> = residues.iter().map(|r| i64::from(r[i])).collect();
                    garbler.encode_tensor(z, &v).expect("encode")
                })
                .collect();
            let mut e = LayerEvalBackend::new(Evaluator::new(garbler.hash_key()), batches);
            let r = relu(&mut e, &labels).expect("evaluate");
            let s = rescale_pow2(&mut e, &r, 3).expect("evaluate");
            e.finish().expect("every batch used");
            for (j, &x) in xs.iter().enumerate() {
                let got: Vec<u8> = s0
                    .iter()
                    .zip(&s)
                    .map(|(z, l)| {
                        let (z, l) = (z.label(j).expect("in"), l.label(j).expect("in"));
                        garbler.decode(&z, &l).expect("valid label")
                    })
                    .collect();
                let plain: Vec<PlainWire> = basis
                    .moduli()
                    .iter()
                    .zip(&residues[j])
                    .map(|(&m, &r)| PlainWire::new(m, u64::from(r)))
                    .collect();
                let pr = relu(&mut PlainBackend, &plain).expect("plain");
                let ps = rescale_pow2(&mut PlainBackend, &pr, 3).expect("plain");
                let want: Vec<u8> = ps.iter().map(|w| w.value()).collect();
                assert_eq!(got, want, "k = {k}, x = {x}");
            }
        }
    }
}
