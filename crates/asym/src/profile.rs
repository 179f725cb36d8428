//! How low-rank a network's activations really are: for every layer the split can take, the
//! rank its input needs to leave at most a fraction τ of its energy in the residual
//! (`‖R‖²/‖X‖² ≤ τ`), measured on sample inputs, and the trusted share of the multiply-adds
//! that rank costs. Run on a trained network and on the same architecture with random weights
//! to see the difference AsymML's rank bound depends on.

use crate::AsymError;
use crate::decompose::{RankSpec, decompose};
use crate::plan::{AsymOptions, Placement, Plan, RankRule};
use serde::Serialize;
use tessera_model::{Graph, Tensor};

/// One linear layer's ranks at each threshold.
#[derive(Clone, Debug, Serialize)]
pub struct LayerProfile {
    /// Node name.
    pub layer: String,
    /// `split`, or why the layer stays whole in the enclave.
    pub placement: String,
    /// Largest possible rank (`min(channels, positions)` for a conv input).
    pub full_rank: usize,
    /// Per threshold: the median over the sample inputs of the rank needed (the full rank for
    /// a layer kept whole).
    pub ranks: Vec<usize>,
    /// Per threshold: the layer's trusted multiply-adds at that rank over its unsplit ones.
    pub trusted_share: Vec<f64>,
    /// The layer's unsplit multiply-adds per inference.
    pub macs: u64,
}

/// The profile of a network.
#[derive(Clone, Debug, Serialize)]
pub struct RankProfile {
    /// The energy thresholds τ.
    pub thresholds: Vec<f32>,
    /// Sample inputs measured.
    pub samples: usize,
    /// Per layer.
    pub layers: Vec<LayerProfile>,
    /// Per threshold: the whole network's trusted share of the multiply-adds with every split
    /// layer at its median rank.
    pub trusted_share: Vec<f64>,
}

/// Measures `graph` (batch 1) on `inputs` at each threshold of `thresholds` (each in (0, 1)).
pub fn rank_profile(
    graph: &Graph,
    inputs: &[Tensor],
    thresholds: &[f32],
    opts: &AsymOptions,
) -> Result<RankProfile, AsymError> {
    if inputs.is_empty() {
        return Err(AsymError::Input("no sample inputs to profile on".into()));
    }
    if let Some(t) = thresholds.iter().find(|t| !(**t > 0.0 && **t < 1.0)) {
        return Err(AsymError::Options(format!(
            "energy threshold {t} is not in (0, 1)"
        )));
    }
    let plan = Plan::new(
        graph,
        &AsymOptions {
            rank: RankRule::Energy {
                threshold: thresholds.first().copied().unwrap_or(0.1),
                max_rank: usize::MAX,
            },
            skip_unprofitable: false,
            ..opts.clone()
        },
    )?;
    // Per layer, per threshold, the ranks over the samples.
    let mut ranks: Vec<Vec<Vec<usize>>> =
        vec![vec![Vec::with_capacity(inputs.len()); thresholds.len()]; plan.layers().len()];
    for x in inputs {
        let mut seen: Vec<Option<Tensor>> = vec![None; graph.values.len()];
        tessera_engine::float::run_f32_observe(graph, std::slice::from_ref(x), &mut |id, t| {
            if let Some(s) = seen.get_mut(id) {
                *s = Some(t.clone());
            }
        })?;
        for (l, per) in plan.layers().iter().zip(ranks.iter_mut()) {
            let Placement::Split(_) = l.placement else {
                continue;
            };
            let input = graph
                .nodes
                .get(l.node)
                .and_then(|n| n.inputs.first())
                .and_then(|&v| seen.get(v).cloned().flatten())
                .ok_or_else(|| AsymError::Protocol(format!("no input seen for '{}'", l.name)))?;
            let (rows, cols) = l.matrix();
            if input.len() != rows * cols {
                return Err(AsymError::Shape(format!(
                    "'{}': profiled at batch 1 only ({} values, {rows}×{cols} expected)",
                    l.name,
                    input.len()
                )));
            }
            for (&t, r) in thresholds.iter().zip(per.iter_mut()) {
                let low = decompose(
                    input.data(),
                    rows,
                    cols,
                    RankSpec::Energy {
                        threshold: t,
                        max_rank: rows.min(cols),
                    },
                    &plan.opts.decomp,
                    0x9e37_79b9,
                )?;
                r.push(low.rank);
            }
        }
    }
    let mut layers = Vec::with_capacity(plan.layers().len());
    let mut net = vec![(0u64, 0u64); thresholds.len()];
    for (l, per) in plan.layers().iter().zip(ranks) {
        let (rows, cols) = l.matrix();
        let full = rows.min(cols);
        let macs = l.macs();
        let mut lr = Vec::with_capacity(thresholds.len());
        let mut ls = Vec::with_capacity(thresholds.len());
        for (k, mut rs) in per.into_iter().enumerate() {
            let (rank, trusted) = if rs.is_empty() {
                (full, macs)
            } else {
                rs.sort_unstable();
                let r = rs.get(rs.len() / 2).copied().unwrap_or(full);
                (r, l.split_macs(r, &plan.opts.decomp).0.min(macs))
            };
            lr.push(rank);
            ls.push(trusted as f64 / macs.max(1) as f64);
            if let Some(n) = net.get_mut(k) {
                n.0 += trusted;
                n.1 += macs;
            }
        }
        layers.push(LayerProfile {
            layer: l.name.clone(),
            placement: crate::enclave::placement_name(&l.placement).into(),
            full_rank: full,
            ranks: lr,
            trusted_share: ls,
            macs,
        });
    }
    Ok(RankProfile {
        thresholds: thresholds.to_vec(),
        samples: inputs.len(),
        layers,
        trusted_share: net
            .iter()
            .map(|&(t, a)| t as f64 / a.max(1) as f64)
            .collect(),
    })
}
