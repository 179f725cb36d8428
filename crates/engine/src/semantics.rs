//! Which integer semantics a model runs under — the power-of-two fixed point of [`crate::quant`]
//! or the int8-style semantics v2 of [`crate::qint`] — behind one type, so that every scheme
//! (and every party of a scheme) is handed the same choice and reproduces the same integers.

use crate::EngineError;
use crate::qint::{Calibration, IntModel, QintConfig};
use crate::quant::{QuantConfig, QuantModel};
use serde::{Deserialize, Serialize};
use tessera_model::ir::Graph;
use tessera_model::tensor::Tensor;

/// The integer semantics and its parameters. Part of an enclave's measurement, and sent to the
/// `gc` worker (it is public wherever the weights are).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Semantics {
    /// One global scale 2^f ([`crate::quant`]).
    Pow2(QuantConfig),
    /// Per-channel weights, calibrated per-tensor activations, requantization with saturation
    /// ([`crate::qint`]).
    V2 {
        /// Bits and multiplier width.
        cfg: QintConfig,
        /// The activation ranges the scales come from.
        calibration: Calibration,
    },
}

impl Default for Semantics {
    fn default() -> Self {
        Semantics::Pow2(QuantConfig::default())
    }
}

impl Semantics {
    /// One line for reports: "pow2 f = 8" or "v2 w8a8, B = 4, calibrated on mnist:64".
    pub fn label(&self) -> String {
        match self {
            Semantics::Pow2(c) => format!("pow2 f = {}", c.frac_bits),
            Semantics::V2 { cfg, calibration } if calibration.samples == 0 => format!(
                "v2 on {} (given weights, multipliers of at least {} bits)",
                calibration.source,
                cfg.mult_bits.max(crate::qint::GIVEN_MULT_BITS)
            ),
            Semantics::V2 { cfg, calibration } => format!(
                "v2 w{}a{} (logits {} bits), B = {}, calibrated on {}",
                cfg.weight_bits, cfg.act_bits, cfg.out_bits, cfg.mult_bits, calibration.source
            ),
        }
    }

    /// The fixed-point bits of the power-of-two semantics; for v2, the default (used only by
    /// the float `asym` scheme to report its output as integers).
    pub fn frac_bits(&self) -> u32 {
        match self {
            Semantics::Pow2(c) => c.frac_bits,
            Semantics::V2 { .. } => crate::quant::DEFAULT_FRAC_BITS,
        }
    }
}

/// A graph ready to run under its [`Semantics`].
#[derive(Clone, Debug)]
pub enum ExactModel {
    /// Power-of-two fixed point.
    Pow2(QuantModel),
    /// Semantics v2.
    V2(IntModel),
}

impl ExactModel {
    /// Quantizes (lowers) `graph` under `s`; ops outside the semantics are refused by name.
    pub fn new(graph: &Graph, s: &Semantics) -> Result<Self, EngineError> {
        Ok(match s {
            Semantics::Pow2(c) => ExactModel::Pow2(QuantModel::new(graph, *c)?),
            Semantics::V2 { cfg, calibration } => {
                ExactModel::V2(IntModel::new(graph, *cfg, calibration)?)
            }
        })
    }

    /// The graph.
    pub fn graph(&self) -> &Graph {
        match self {
            ExactModel::Pow2(m) => m.graph(),
            ExactModel::V2(m) => m.graph(),
        }
    }

    /// Quantizes the (single) input.
    pub fn quantize_input(&self, x: &Tensor) -> Result<Tensor<i64>, EngineError> {
        match self {
            ExactModel::Pow2(m) => m
                .quantize_inputs(std::slice::from_ref(x))?
                .into_iter()
                .next()
                .ok_or_else(|| EngineError::Input("the model has no input".into())),
            ExactModel::V2(m) => m.quantize_input(x),
        }
    }

    /// Runs on a quantized input; the exact output integers.
    pub fn run_int(&self, x: &Tensor<i64>) -> Result<Tensor<i64>, EngineError> {
        match self {
            ExactModel::Pow2(m) => m
                .run_int(std::slice::from_ref(x))?
                .outputs
                .into_iter()
                .next()
                .ok_or_else(|| EngineError::Input("the model has no output".into())),
            ExactModel::V2(m) => m.run_int(x),
        }
    }

    /// Quantizes and runs.
    pub fn run(&self, x: &Tensor) -> Result<Tensor<i64>, EngineError> {
        self.run_int(&self.quantize_input(x)?)
    }

    /// The real value of one output step (2^−f, or v2's output scale).
    pub fn output_scale(&self) -> Result<f64, EngineError> {
        match self {
            ExactModel::Pow2(m) => Ok(2f64.powi(-(m.config().frac_bits as i32))),
            ExactModel::V2(m) => Ok(m.output_quant()?.scale),
        }
    }

    /// Output integers in real units.
    pub fn dequantize(&self, y: &Tensor<i64>) -> Result<Tensor, EngineError> {
        let s = self.output_scale()?;
        Ok(y.map(|&v| (v as f64 * s) as f32))
    }
}
