//! Whole-network circuits: a dense ReLU network over CRT residue wires, on any [`Backend`].
//!
//! The integer rule is the engine's fixed-point semantics for a dense layer with f fractional
//! bits: weights are q_f(W) and biases q_2f(b) as signed integers, and each output neuron is
//!
//! ```text
//! acc = Σᵢ wᵢ·xᵢ + b,    y = ⌊(acc + 2^(f−1)) / 2^f⌋,    then max(y, 0) except on the last layer
//! ```
//!
//! Every value is carried as its k residue wires over the first k primes ([`crate::CrtBasis`]).
//! The weighted sum is free: each residue wire is multiplied by wᵢ mod p and added, prime by
//! prime. The rescale is [`rescale_pow2`] and the activation [`relu`], so a hidden neuron costs
//! one rescale by 2^f plus one ReLU, and an output neuron one rescale.
//!
//! # Biases
//!
//! Here a bias is a **public constant** added with [`Backend::add_const`] (free, and known to
//! the evaluator as part of the circuit). In Dash the biases are garbled inputs, so that the
//! evaluator does not learn them; adding a garbled bias wire instead is one free `add` per
//! residue and does not change the values, so the exactness shown with public biases carries
//! over. Weights are public circuit data either way.
//!
//! # Range
//!
//! The circuit is exact as long as every accumulator fits the CRT range with the rescale's
//! headroom: −M/2 ≤ acc ≤ M/2 − 2 − 2^(f−1) ([`rescale_pow2`]). [`DenseNetwork::acc_bound`]
//! gives a worst-case |acc| by interval arithmetic, and [`DenseNetwork::min_primes`] the
//! smallest k that satisfies it. Wires are unchecked values: a network run outside its range
//! gives wrong values, never a panic.

use crate::GarbleError;
use crate::cost::GarbleCost;
use crate::crt::MAX_CRT_PRIMES;
use crate::gadget::{Backend, CostBackend, relu, rescale_pow2};
use crate::modulus::Modulus;

/// One dense layer in integers: `weights` row-major `[outputs, inputs]` (output-major, as the
/// model IR stores them) at scale 2^f, `biases` one per output at scale 2^(2f).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenseLayer {
    inputs: usize,
    weights: Vec<i64>,
    biases: Vec<i64>,
}

impl DenseLayer {
    /// A layer with `biases.len()` outputs and `inputs` inputs; errors unless `weights` has
    /// `outputs · inputs` elements and `inputs ≥ 1`.
    pub fn new(inputs: usize, weights: Vec<i64>, biases: Vec<i64>) -> Result<Self, GarbleError> {
        let expected = biases
            .len()
            .checked_mul(inputs)
            .ok_or(GarbleError::ShapeMismatch {
                expected: usize::MAX,
                got: weights.len(),
            })?;
        if inputs == 0 || weights.len() != expected {
            return Err(GarbleError::ShapeMismatch {
                expected: expected.max(1),
                got: weights.len(),
            });
        }
        Ok(Self {
            inputs,
            weights,
            biases,
        })
    }

    /// Inputs per neuron.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Neurons.
    pub fn outputs(&self) -> usize {
        self.biases.len()
    }

    /// The weights, row-major `[outputs, inputs]`.
    pub fn weights(&self) -> &[i64] {
        &self.weights
    }

    /// The biases.
    pub fn biases(&self) -> &[i64] {
        &self.biases
    }

    /// Worst-case |acc| over the neurons for inputs with |x| ≤ `x_max`.
    fn acc_bound(&self, x_max: u128) -> u128 {
        self.weights
            .chunks(self.inputs)
            .zip(&self.biases)
            .map(|(row, &b)| {
                let s: u128 = row.iter().map(|&w| u128::from(w.unsigned_abs())).sum();
                s.saturating_mul(x_max)
                    .saturating_add(u128::from(b.unsigned_abs()))
            })
            .max()
            .unwrap_or(0)
    }
}

/// A dense ReLU network: [`DenseLayer`]s with ReLU between them (not after the last), all at
/// the same number of fractional bits f.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenseNetwork {
    layers: Vec<DenseLayer>,
    frac_bits: u32,
}

impl DenseNetwork {
    /// A network; errors unless there is at least one layer and each layer's inputs are the
    /// previous layer's outputs.
    pub fn new(layers: Vec<DenseLayer>, frac_bits: u32) -> Result<Self, GarbleError> {
        if layers.is_empty() {
            return Err(GarbleError::ShapeMismatch {
                expected: 1,
                got: 0,
            });
        }
        for pair in layers.windows(2) {
            if pair[1].inputs != pair[0].outputs() {
                return Err(GarbleError::ShapeMismatch {
                    expected: pair[0].outputs(),
                    got: pair[1].inputs,
                });
            }
        }
        Ok(Self { layers, frac_bits })
    }

    /// The layers.
    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
    }

    /// Fractional bits f.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// Inputs of the first layer.
    pub fn inputs(&self) -> usize {
        self.layers[0].inputs
    }

    /// Outputs of the last layer.
    pub fn outputs(&self) -> usize {
        self.layers[self.layers.len() - 1].outputs()
    }

    /// Worst-case |acc| over every neuron of every layer for inputs with |x| ≤ `input_max_abs`
    /// (interval arithmetic; saturates at `u128::MAX`).
    pub fn acc_bound(&self, input_max_abs: u64) -> u128 {
        let half = if self.frac_bits == 0 {
            0
        } else {
            1u128 << (self.frac_bits - 1)
        };
        let mut x = u128::from(input_max_abs);
        let mut worst = x;
        for layer in &self.layers {
            let a = layer.acc_bound(x);
            worst = worst.max(a);
            x = a.saturating_add(half) >> self.frac_bits;
        }
        worst
    }

    /// The smallest number of CRT primes k (at least 2) for which every accumulator of this
    /// network, for inputs with |x| ≤ `input_max_abs`, satisfies the rescale precondition
    /// −M/2 ≤ acc ≤ M/2 − 2 − 2^(f−1). Errors when even [`MAX_CRT_PRIMES`] is not enough.
    pub fn min_primes(&self, input_max_abs: u64) -> Result<usize, GarbleError> {
        let bound = self.acc_bound(input_max_abs);
        let half = if self.frac_bits == 0 {
            0
        } else {
            1u128 << (self.frac_bits - 1)
        };
        let need = bound.saturating_add(2).saturating_add(half);
        let moduli = Modulus::first_primes(MAX_CRT_PRIMES)?;
        let mut product = 1u128;
        for (i, m) in moduli.iter().enumerate() {
            product *= u128::from(m.q());
            if i >= 1 && need <= product / 2 {
                return Ok(i + 1);
            }
        }
        Err(GarbleError::CrtOutOfRange {
            x: i64::try_from(bound).unwrap_or(i64::MAX),
            half: u64::try_from(product / 2).unwrap_or(u64::MAX),
        })
    }

    /// Runs the network on `b`. `inputs[i]` are the k residue wires of input i (mod 2, 3, …,
    /// p_k, the same k for all); returns the residue wires of the logits (last layer, rescaled,
    /// no ReLU). Exact when the accumulators stay in range (module docs, [`Self::min_primes`]).
    pub fn run<B: Backend>(
        &self,
        b: &mut B,
        inputs: &[Vec<B::Wire>],
    ) -> Result<Vec<Vec<B::Wire>>, GarbleError> {
        if inputs.len() != self.inputs() {
            return Err(GarbleError::ShapeMismatch {
                expected: self.inputs(),
                got: inputs.len(),
            });
        }
        let k = inputs[0].len();
        let moduli = Modulus::first_primes(k)?;
        if let Some(bad) = inputs.iter().find(|x| x.len() != k) {
            return Err(GarbleError::ResidueCount {
                expected: k,
                got: bad.len(),
            });
        }
        let last = self.layers.len() - 1;
        let mut x: Vec<Vec<B::Wire>> = inputs.to_vec();
        for (index, layer) in self.layers.iter().enumerate() {
            let mut y = Vec::with_capacity(layer.outputs());
            for (row, &bias) in layer.weights.chunks(layer.inputs).zip(&layer.biases) {
                let mut acc = Vec::with_capacity(k);
                for (r, m) in moduli.iter().enumerate() {
                    let p = i64::from(m.q());
                    let mut sum: Option<B::Wire> = None;
                    for (xi, &w) in x.iter().zip(row) {
                        let w = w.rem_euclid(p).unsigned_abs();
                        // A zero weight adds nothing; skipping it is public (weights are).
                        if w == 0 && sum.is_some() {
                            continue;
                        }
                        let term = b.mul_const(&xi[r], w)?;
                        sum = Some(match sum {
                            Some(s) => b.add(&s, &term)?,
                            None => term,
                        });
                    }
                    let sum = sum.ok_or(GarbleError::Internal("a layer without inputs"))?;
                    acc.push(b.add_const(&sum, bias.rem_euclid(p).unsigned_abs())?);
                }
                let scaled = rescale_pow2(b, &acc, self.frac_bits)?;
                y.push(if index == last {
                    scaled
                } else {
                    relu(b, &scaled)?
                });
            }
            x = y;
        }
        Ok(x)
    }

    /// The garbled size of [`Self::run`] over the first k primes.
    pub fn cost(&self, k: usize) -> Result<GarbleCost, GarbleError> {
        let moduli = Modulus::first_primes(k)?;
        let inputs = vec![moduli; self.inputs()];
        let mut c = CostBackend::default();
        self.run(&mut c, &inputs)?;
        Ok(c.cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crt::CrtBasis;
    use crate::gadget::{PlainBackend, PlainWire, relu_cost, rescale_pow2_cost};

    fn plain_inputs(basis: &CrtBasis, xs: &[i64]) -> Vec<Vec<PlainWire>> {
        xs.iter()
            .map(|&x| {
                let r = basis.encode(x).expect("in range");
                basis
                    .moduli()
                    .iter()
                    .zip(r)
                    .map(|(&m, v)| PlainWire::new(m, u64::from(v)))
                    .collect()
            })
            .collect()
    }

    fn decode(basis: &CrtBasis, wires: &[Vec<PlainWire>]) -> Vec<i64> {
        wires
            .iter()
            .map(|w| {
                let r: Vec<u8> = w.iter().map(|p| p.value()).collect();
                basis.decode(&r).expect("decodes")
            })
            .collect()
    }

    #[test]
    fn a_tiny_network_matches_hand_computation() {
        // 2-2-1, f = 1: layer 1 rows (3, −2) and (−1, 1) with biases 4 and −8 (scale 2^2).
        let l1 = DenseLayer::new(2, vec![3, -2, -1, 1], vec![4, -8]).expect("shape");
        let l2 = DenseLayer::new(2, vec![2, -5], vec![-3]).expect("shape");
        let net = DenseNetwork::new(vec![l1, l2], 1).expect("chain");
        let basis = CrtBasis::first_primes(5).expect("basis");
        let x = [7, 4];
        // acc = 21 − 8 + 4 = 17 → ⌊18/2⌋ = 9; acc = −7 + 4 − 8 = −11 → ⌊−10/2⌋ = −5 → 0.
        // acc = 18 − 0 − 3 = 15 → ⌊16/2⌋ = 8.
        let out = net
            .run(&mut PlainBackend, &plain_inputs(&basis, &x))
            .expect("runs");
        assert_eq!(decode(&basis, &out), vec![8]);
        assert!(net.min_primes(7).expect("fits") <= 5);
    }

    #[test]
    fn shapes_and_ranges_are_checked() {
        assert!(DenseLayer::new(2, vec![1, 2, 3], vec![0, 0]).is_err());
        assert!(DenseLayer::new(0, vec![], vec![]).is_err());
        let a = DenseLayer::new(2, vec![1, 2], vec![0]).expect("shape");
        let b = DenseLayer::new(2, vec![1, 2], vec![0]).expect("shape");
        assert!(DenseNetwork::new(vec![a.clone(), b], 0).is_err());
        assert!(DenseNetwork::new(vec![], 0).is_err());
        let net = DenseNetwork::new(vec![a], 0).expect("one layer");
        let basis = CrtBasis::first_primes(3).expect("basis");
        assert!(
            net.run(&mut PlainBackend, &plain_inputs(&basis, &[1]))
                .is_err()
        );
        assert!(net.min_primes(u64::MAX).is_err());
    }

    #[test]
    fn cost_is_one_rescale_per_neuron_and_one_relu_per_hidden_neuron() {
        let l1 = DenseLayer::new(3, vec![1; 12], vec![0; 4]).expect("shape");
        let l2 = DenseLayer::new(4, vec![1; 8], vec![0; 2]).expect("shape");
        let net = DenseNetwork::new(vec![l1, l2], 3).expect("chain");
        let k = 7;
        let rescale = rescale_pow2_cost(k, 3).expect("cost").ciphertexts;
        let relu = relu_cost(k).expect("cost").ciphertexts;
        assert_eq!(
            net.cost(k).expect("cost").ciphertexts,
            6 * rescale + 4 * relu
        );
    }
}
