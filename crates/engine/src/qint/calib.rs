//! Calibration: the real range of every activation over sample inputs, from which v2 takes its
//! per-tensor scales.

use crate::EngineError;
use crate::float::FloatModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use tessera_model::ir::Graph;
use tessera_model::tensor::Tensor;

/// The smallest and largest real value of every graph value over the calibration inputs, by
/// value name (names survive an ONNX export and re-import, value ids need not: the enclave and
/// the `gc` worker load the model from its export).
///
/// It is public information in every scheme that reveals the weights (the `gc` worker compiles
/// its circuit from it); it reveals per-tensor extremes of the calibration data, nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `[min, max]` per value name.
    pub ranges: std::collections::BTreeMap<String, [f32; 2]>,
    /// How many inputs were seen.
    pub samples: usize,
    /// Where the inputs came from (for reports), e.g. "mnist:64" or "generated uniform [0, 255] ×16".
    pub source: String,
}

impl Calibration {
    /// Runs the float engine over `inputs` (one tensor per sample, the model's single input)
    /// and records every value's range.
    pub fn from_inputs(
        graph: &Graph,
        inputs: &[Tensor],
        source: impl Into<String>,
    ) -> Result<Self, EngineError> {
        if inputs.is_empty() {
            return Err(EngineError::Input(
                "calibration needs at least one input".into(),
            ));
        }
        let mut ranges: Vec<Option<[f32; 2]>> = vec![None; graph.values.len()];
        let mut bad: Option<usize> = None;
        let model = FloatModel::new(graph)?;
        for x in inputs {
            model.run_observe(std::slice::from_ref(x), &mut |v, t| {
                let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
                for &e in t.data() {
                    if !e.is_finite() {
                        bad = bad.or(Some(v));
                    }
                    lo = lo.min(e);
                    hi = hi.max(e);
                }
                if let Some(r) = ranges.get_mut(v) {
                    *r = Some(match *r {
                        Some([a, b]) => [a.min(lo), b.max(hi)],
                        None => [lo, hi],
                    });
                }
            })?;
        }
        if let Some(v) = bad {
            let name = graph.values.get(v).map_or("?", |i| i.name.as_str());
            return Err(EngineError::Input(format!(
                "calibration: value '{name}' is not finite on a calibration input"
            )));
        }
        let ranges = ranges
            .into_iter()
            .enumerate()
            .filter_map(|(v, r)| Some((graph.values.get(v)?.name.clone(), r?)))
            .collect();
        Ok(Self {
            ranges,
            samples: inputs.len(),
            source: source.into(),
        })
    }

    /// No calibration data: every scale must come from the model's own grids (an int8 model).
    pub fn given(source: impl Into<String>) -> Self {
        Self {
            ranges: Default::default(),
            samples: 0,
            source: source.into(),
        }
    }

    /// The calibrated `[min, max]` of value `v` of `graph`.
    pub fn range(&self, graph: &Graph, v: usize) -> Option<(f32, f32)> {
        let name = &graph.values.get(v)?.name;
        self.ranges.get(name).map(|&[a, b]| (a, b))
    }

    /// Every value the integer graph computes (the input and each node's output) has a range.
    pub(super) fn check(&self, graph: &Graph) -> Result<(), EngineError> {
        let needed = graph
            .inputs
            .iter()
            .copied()
            .chain(graph.nodes.iter().map(|n| n.output));
        for v in needed {
            if self.range(graph, v).is_none() {
                let name = graph.values.get(v).map_or("?", |i| i.name.as_str());
                return Err(EngineError::Input(format!(
                    "the calibration has no range for value '{name}': it was made for another model"
                )));
            }
        }
        Ok(())
    }
}

/// The documented default when no calibration data is given: `n` inputs drawn uniformly from
/// `[lo, hi]`, seeded (ChaCha20, `seed`), so every party derives the same scales. Real data
/// gives finer scales: generated inputs excite every channel, so ranges come out wider than on
/// natural images, which costs resolution but never correctness.
pub fn default_calibration_inputs(
    graph: &Graph,
    lo: f32,
    hi: f32,
    n: usize,
    seed: u64,
) -> Result<Vec<Tensor>, EngineError> {
    let &input = graph
        .inputs
        .first()
        .ok_or_else(|| EngineError::Input("the model has no input".into()))?;
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return Err(EngineError::Input(format!(
            "calibration input range [{lo}, {hi}] is not an interval"
        )));
    }
    let shape = graph.shape(input).to_vec();
    let len: usize = shape.iter().product();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n.max(1))
        .map(|_| {
            let d = (0..len)
                .map(|_| lo + (hi - lo) * rng.random::<f32>())
                .collect();
            Ok(Tensor::new(shape.clone(), d)?)
        })
        .collect()
}
