//! The integer semantics on the command line: `--semantics pow2|v2` with its calibration, and
//! what `inspect --semantics v2` prints per layer.

use crate::{CliError, QuantArgs, Result, parse_dataset};
use serde::Serialize;
use tessera_engine::qint::{Calibration, QintConfig};
use tessera_engine::{ExactModel, Semantics};
use tessera_model::{Graph, Tensor};

impl QuantArgs {
    /// v2's parameters, after refusing the flags that only mean something under pow2.
    fn qint_config(&self) -> Result<QintConfig> {
        if self.max_bits.is_some() {
            return Err(CliError::Usage(
                "--max-bits applies to --semantics pow2 only: under v2 every value saturates and \
                 its interval is proven (`inspect --semantics v2` prints them)"
                    .into(),
            ));
        }
        if self.gc_calibrated.is_some() {
            return Err(CliError::Usage(
                "--gc-calibrated applies to --semantics pow2 only: under v2 every activation \
                 saturates, and the sound k is already the small one"
                    .into(),
            ));
        }
        Ok(QintConfig {
            weight_bits: self.weight_bits,
            act_bits: self.act_bits,
            out_bits: self.out_bits,
            mult_bits: self.mult_bits,
            aux_mult_bits: tessera_engine::qint::DEFAULT_AUX_MULT_BITS,
        })
    }

    /// The integer semantics for `g`: for v2 this calibrates the activation scales (on
    /// --calibrate's data, or on generated inputs), which runs the float engine.
    /// `--semantics v2`, or `auto` on an int8 model or with calibration data (`--calibrate`).
    pub(crate) fn v2_for(&self, g: &Graph) -> bool {
        self.semantics == "v2"
            || (self.semantics == "auto" && (is_int8(g) || self.calibrate.is_some()))
    }

    pub(crate) fn semantics(&self, g: &Graph) -> Result<Semantics> {
        if !self.v2_for(g) {
            return Ok(Semantics::Pow2(self.config()));
        }
        if self.calibrate.is_none() && is_int8(g) {
            let calibration = Calibration::given("the model's own int8 scales");
            let s = Semantics::V2 {
                cfg: self.qint_config()?,
                calibration,
            };
            ExactModel::new(g, &s)?;
            return Ok(s);
        }
        let (xs, source) = match &self.calibrate {
            Some(spec) => {
                let d = parse_dataset(spec, &self.calibration_data)?;
                let xs: Vec<Tensor> = (0..d.count).filter_map(|i| d.image(i)).collect();
                if xs.is_empty() {
                    return Err(CliError::Usage(format!(
                        "--calibrate {spec}: the data set is empty; name a data set with images"
                    )));
                }
                let source = format!("{spec} ({} images)", xs.len());
                (xs, source)
            }
            None => {
                let r = self.calibrate_range;
                eprintln!(
                    "v2: no --calibrate given, so the activation scales come from 16 generated \
                     inputs uniform in [0, {r}]; noise drives activations far past real data and \
                     the scales are coarse — pass --calibrate DATA with inputs like yours"
                );
                let xs = tessera_engine::qint::default_calibration_inputs(g, 0.0, r, 16, 1)?;
                (xs, format!("16 generated inputs uniform in [0, {r}]"))
            }
        };
        self.semantics_on(g, &xs, &source)
    }

    /// [`Self::semantics`] with v2 calibrated on `inputs` (named `source` in reports) instead
    /// of --calibrate's data or generated inputs.
    pub(crate) fn semantics_on(
        &self,
        g: &Graph,
        inputs: &[Tensor],
        source: &str,
    ) -> Result<Semantics> {
        if !self.v2_for(g) {
            return Ok(Semantics::Pow2(self.config()));
        }
        let cfg = self.qint_config()?;
        let calibration = Calibration::from_inputs(g, inputs, source)?;
        let s = Semantics::V2 { cfg, calibration };
        // Lower once here, so that a model outside v2 is refused with the node named.
        ExactModel::new(g, &s)?;
        Ok(s)
    }
}

/// An int8 model: it quantizes to grids of its own (QuantizeLinear or a QLinear op).
pub(crate) fn is_int8(g: &Graph) -> bool {
    g.nodes
        .iter()
        .any(|n| matches!(n.op, tessera_model::ir::Op::Quantize(_)))
}

/// One node of a model lowered to the integer semantics v2, for `inspect`.
#[derive(Serialize)]
pub(crate) struct V2Layer {
    pub(crate) node: String,
    pub(crate) op: &'static str,
    /// Real value of one step of the node's output.
    pub(crate) scale: f64,
    /// The output's proven integer interval.
    pub(crate) lo: i64,
    pub(crate) hi: i64,
    pub(crate) shift: Option<u32>,
    /// Smallest and largest multiplier.
    pub(crate) mult: Option<[i64; 2]>,
    /// Largest |integer weight|.
    pub(crate) weight_max: Option<i64>,
}

pub(crate) fn v2_layers(g: &Graph, sem: &Semantics) -> Result<Vec<V2Layer>> {
    let ExactModel::V2(m) = ExactModel::new(g, sem)? else {
        return Ok(Vec::new());
    };
    let span = |v: &[i64]| {
        let lo = v.iter().copied().min()?;
        Some([lo, v.iter().copied().max()?])
    };
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Some(op) = m.op(i) else { continue };
        let Some(q) = m.value(n.output) else { continue };
        use tessera_engine::qint::IntOp;
        let (shift, mult, weight_max) = match op {
            IntOp::Linear(l) => (
                Some(l.shift),
                span(&l.mult),
                l.w.iter().map(|w| w.abs()).max(),
            ),
            IntOp::AddAct { ma, mb, shift, .. } => (Some(*shift), span(&[*ma, *mb]), None),
            IntOp::MulConst { mult, shift, .. } | IntOp::AvgPool { mult, shift } => {
                (Some(*shift), span(mult), None)
            }
            IntOp::GlobalAvgPool { mult, shift } | IntOp::Requant { mult, shift, .. } => {
                (Some(*shift), Some([*mult, *mult]), None)
            }
            // Concat: the largest shift, and the multipliers of its inputs.
            IntOp::Concat { parts, .. } => (
                parts.iter().map(|p| p.1).max(),
                span(&parts.iter().map(|p| p.0).collect::<Vec<_>>()),
                None,
            ),
            _ => (None, None, None),
        };
        out.push(V2Layer {
            node: n.name.clone(),
            op: op.kind(),
            scale: q.scale,
            lo: q.lo,
            hi: q.hi,
            shift,
            mult,
            weight_max,
        });
    }
    Ok(out)
}
