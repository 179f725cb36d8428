//! Running a lowered [`IntModel`] on integers.

use super::ops::{eval, outside, requantize_accumulators};
use super::{IntModel, IntOp, ValueQuant};
use crate::EngineError;
use tessera_model::tensor::Tensor;

/// The v2 requantization `⌊(a·m + 2^(n−1)) / 2^n⌋` (`a·m` for `n = 0`), exact in i128; `None`
/// when `a·m` leaves i128.
pub fn rq(a: i128, m: i64, n: u32) -> Option<i128> {
    let p = a.checked_mul(i128::from(m))?;
    if n == 0 {
        return Some(p);
    }
    let n = n.min(126);
    Some(p.checked_add(1i128 << (n - 1))? >> n)
}

/// [`rq`] saturated into i64 (interval arithmetic only).
pub(super) fn rq_i128(a: i128, m: i64, n: u32) -> i64 {
    let v = rq(a, m, n).unwrap_or(if (a < 0) == (m < 0) {
        i128::MAX
    } else {
        i128::MIN
    });
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

pub(super) fn overflow(what: &str) -> EngineError {
    EngineError::Overflow(format!("{what} leaves the 64-bit range"))
}

/// `clamp(rq(a; m, n), lo, hi)`.
pub(super) fn rq_clamp(a: i128, m: i64, n: u32, lo: i64, hi: i64) -> Result<i64, EngineError> {
    let v = rq(a, m, n).ok_or_else(|| overflow("a requantization product"))?;
    // Clamped into [lo, hi] ⊂ i64, so the cast is lossless.
    Ok(v.clamp(i128::from(lo), i128::from(hi)) as i64)
}

pub(super) fn to_i64(v: i128, what: &str) -> Result<i64, EngineError> {
    i64::try_from(v).map_err(|_| overflow(what))
}

/// Supplies a linear layer's accumulators: `(node, input, output shape)` → `Σ w·x + b` in the
/// output shape, or `None` to let the engine compute them ([`IntModel::run_split`]).
pub type LinearHook<'a> =
    dyn FnMut(usize, &Tensor<i64>, &[usize]) -> Result<Option<Tensor<i64>>, EngineError> + 'a;

impl IntModel {
    /// Quantizes a float input: `clamp(round_half_away_from_zero(x / s_in), lo_in, hi_in)`.
    /// A non-finite element is an error.
    pub fn quantize_input(&self, x: &Tensor) -> Result<Tensor<i64>, EngineError> {
        crate::float::check_inputs(&self.graph, std::slice::from_ref(x))?;
        let q = self.input_quant()?;
        let d = x
            .data()
            .iter()
            .map(|&v| q.quantize(v))
            .collect::<Result<Vec<_>, _>>()?;
        let shape = self
            .graph
            .inputs
            .first()
            .map_or(&[][..], |&i| self.graph.shape(i));
        Ok(Tensor::new(shape.to_vec(), d)?)
    }

    /// The real values of an output: each integer times the output's scale.
    pub fn dequantize_output(&self, y: &Tensor<i64>) -> Result<Tensor, EngineError> {
        let s = self.output_quant()?.scale;
        Ok(y.map(|&v| (v as f64 * s) as f32))
    }

    /// Quantizes and runs; returns the output integers (logits at the output's scale).
    pub fn run(&self, x: &Tensor) -> Result<Tensor<i64>, EngineError> {
        let q = self.quantize_input(x)?;
        self.run_int(&q)
    }

    /// Runs on an already-quantized input, which must lie in the input's interval.
    pub fn run_int(&self, x: &Tensor<i64>) -> Result<Tensor<i64>, EngineError> {
        crate::on_pool(|| self.run_split(x, &mut |_, _, _| Ok(None)))
    }

    /// [`IntModel::run_int`] with the accumulators of conv and dense layers supplied by
    /// `linear(node, input, output_shape)` where it returns `Some` (`Σ w·x + b` per output, bias
    /// included, in the layer's output shape): the engine then requantizes and clamps them by the
    /// layer's rule and goes on. Where it returns `None` the engine computes the layer itself.
    /// The `lhe` scheme's enclave computes every other op here and the linear layers on an
    /// untrusted server.
    pub fn run_split(
        &self,
        x: &Tensor<i64>,
        linear: &mut LinearHook<'_>,
    ) -> Result<Tensor<i64>, EngineError> {
        let g = &self.graph;
        let (&input, &output) = match (g.inputs.as_slice(), g.outputs.as_slice()) {
            ([i], [o]) => (i, o),
            _ => {
                return Err(EngineError::Input(
                    "the integer semantics v2 runs models with one input and one output".into(),
                ));
            }
        };
        if x.shape() != g.shape(input) {
            return Err(EngineError::Input(format!(
                "input must have shape {:?}, got {:?}",
                g.shape(input),
                x.shape()
            )));
        }
        let iq = self.input_quant()?;
        if let Some(v) = x.data().iter().find(|&&v| v < iq.lo || v > iq.hi) {
            return Err(EngineError::Input(format!(
                "input integer {v} is outside the input's interval [{}, {}]",
                iq.lo, iq.hi
            )));
        }
        let last = g.last_uses();
        let mut vals: Vec<Option<Tensor<i64>>> = vec![None; g.values.len()];
        if let Some(v) = vals.get_mut(input) {
            *v = Some(x.clone());
        }
        for (k, (n, op)) in g.nodes.iter().zip(&self.ops).enumerate() {
            // An op that leaves every integer of its (proven) input interval unchanged — a
            // ReLU of a non-negative value, a clip that the interval already satisfies, a
            // reshape — passes its input's buffer on when nothing else reads it.
            let xq = n.inputs.first().and_then(|&i| self.value(i)).copied();
            let identity = match (op, xq) {
                (IntOp::Pass, _) => true,
                (IntOp::Relu, Some(q)) => q.lo >= 0,
                (IntOp::Clip { lo, hi }, Some(q)) => q.lo >= *lo && q.hi <= *hi,
                _ => false,
            };
            if let (true, &[i]) = (identity, n.inputs.as_slice())
                && last.get(i) == Some(&k)
                && let Some(t) = vals.get_mut(i).and_then(Option::take)
            {
                let y = t.reshape(g.shape(n.output).to_vec())?;
                if let Some(v) = vals.get_mut(n.output) {
                    *v = Some(y);
                }
                continue;
            }
            let ins: Vec<&Tensor<i64>> = n
                .inputs
                .iter()
                .map(|&i| {
                    vals.get(i)
                        .and_then(Option::as_ref)
                        .ok_or_else(|| EngineError::Internal(format!("value {i} missing")))
                })
                .collect::<Result<_, _>>()?;
            let out_shape = g.shape(n.output).to_vec();
            let supplied = match (op, ins.first()) {
                (IntOp::Linear(l), Some(x)) => linear(k, x, &out_shape)
                    .and_then(|acc| {
                        acc.map(|a| {
                            requantize_accumulators(l, &a, &out_shape)
                                .and_then(|y| Ok(Tensor::new(out_shape.clone(), y)?))
                        })
                        .transpose()
                    })
                    .map_err(|e| e.at(&n.name))?,
                _ => None,
            };
            let y = match supplied {
                Some(y) => y,
                None => eval(&n.op, op, &ins, xq, &out_shape).map_err(|e| e.at(&n.name))?,
            };
            // Ops that saturate to exactly the output's interval hold it by construction; the
            // others are checked (in parallel).
            if let Some(q) = self.value(n.output)
                && !op.saturates_to(q)
                && let Some(v) = outside(y.data(), q)
            {
                return Err(EngineError::Internal(format!(
                    "node '{}' produced {v} outside its proven interval [{}, {}]",
                    n.name, q.lo, q.hi
                )));
            }
            if let Some(v) = vals.get_mut(n.output) {
                *v = Some(y);
            }
            for &i in &n.inputs {
                if last.get(i) == Some(&k)
                    && let Some(v) = vals.get_mut(i)
                {
                    *v = None;
                }
            }
        }
        vals.get_mut(output)
            .and_then(Option::take)
            .ok_or_else(|| EngineError::Internal("output missing".into()))
    }
}

impl ValueQuant {
    /// `clamp(round_half_away_from_zero(v / scale), lo, hi)`: how an input is quantized (by
    /// the engine, and by an `lhe` data owner encrypting its own input). A non-finite value is
    /// an error.
    pub fn quantize(&self, v: f32) -> Result<i64, EngineError> {
        if !v.is_finite() {
            return Err(EngineError::Input(format!("input value {v} is not finite")));
        }
        let r = (f64::from(v) / self.scale).round();
        Ok(r.clamp(self.lo as f64, self.hi as f64) as i64)
    }

    /// The real value of integer `q`.
    pub fn real(&self, q: i64) -> f64 {
        q as f64 * self.scale
    }
}
