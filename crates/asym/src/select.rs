//! Rank selection by a global target: per-layer ranks that meet a trusted share `S` with the
//! least residual energy (`--trusted-share S`), or a residual energy `E` with the least trusted
//! work (`--energy E`).
//!
//! Each layer's residual energy as a function of its rank, `e_l(k)`, is estimated on sample
//! inputs ([`spectra`]: the mean over the samples of the sketch's spectrum). For an energy
//! bound `E`, every layer takes the cheapest of its options that meet it — a rank `k` with
//! `e_l(k) ≤ E`, at the enclave cost of [`crate::LinearLayer::trusted_macs`], or the layer kept
//! whole (energy 0, its full multiply-adds) — so small late layers whose fold and
//! decomposition outgrow them stay whole, and the others split at the lowest rank `E` allows.
//! The network's trusted share falls as `E` grows; for a share target the selection takes the
//! smallest `E` whose share meets it, which minimises the largest per-layer residual energy.
//! The energies are estimates on the calibration samples; each run reports the energies it
//! actually left, per layer.

use crate::AsymError;
use crate::decompose::energy_curve;
use crate::plan::{AsymOptions, EnclaveReason, LinearKind, Placement, Plan, RankRule};
use serde::Serialize;
use tessera_model::{Graph, Tensor};

/// Largest rank the calibration offers a layer (higher ones keep the layer whole instead).
pub const MAX_SELECTED_RANK: usize = 128;

/// A layer's estimated residual energy per rank.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSpectrum {
    /// Node name.
    pub layer: String,
    /// `None` when the layer must stay whole (the head, a grouped conv, a one-row matrix).
    /// Otherwise `e(k)` for `k = 0 ..` (entry 0 is 1).
    pub curve: Option<Vec<f64>>,
}

/// A global target for [`select`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// At most this fraction of the network's multiply-adds in the enclave.
    TrustedShare(f64),
    /// At most this residual energy `‖R‖²/‖X‖²` per split layer.
    Energy(f64),
}

/// One layer's choice.
#[derive(Clone, Debug, Serialize)]
pub struct LayerChoice {
    /// Node name.
    pub layer: String,
    /// Kept rank; 0 = whole in the enclave.
    pub rank: usize,
    /// Estimated residual energy at that rank (0 when whole).
    pub energy: f64,
    /// Enclave multiply-adds per pass at that choice.
    pub trusted_macs: u64,
    /// The layer's unsplit multiply-adds per pass.
    pub macs: u64,
}

/// The selected ranks and what they cost.
#[derive(Clone, Debug, Serialize)]
pub struct Selection {
    /// The target asked for.
    pub target: String,
    /// Per linear layer, in execution order.
    pub layers: Vec<LayerChoice>,
    /// The network's estimated trusted share of the multiply-adds.
    pub trusted_share: f64,
    /// The largest estimated per-layer residual energy.
    pub max_energy: f64,
}

impl Selection {
    /// The rank rule that runs this selection.
    pub fn rule(&self) -> RankRule {
        RankRule::PerLayer(self.layers.iter().map(|l| l.rank).collect())
    }
}

fn forced_whole(p: &Placement) -> bool {
    matches!(
        p,
        Placement::Enclave(EnclaveReason::Head | EnclaveReason::Grouped | EnclaveReason::FullRank)
    )
}

/// Estimate every linear layer's residual energy per rank on `inputs` (each shaped as the
/// graph's input, batch included), under `opts`' basis.
pub fn spectra(
    graph: &Graph,
    inputs: &[Tensor],
    opts: &AsymOptions,
) -> Result<Vec<LayerSpectrum>, AsymError> {
    if inputs.is_empty() {
        return Err(AsymError::Input(
            "rank selection needs at least one sample input to calibrate on".into(),
        ));
    }
    let plan = Plan::new(
        graph,
        &AsymOptions {
            rank: RankRule::Fixed(1),
            skip_unprofitable: false,
            ..opts.clone()
        },
    )?;
    let mut sums: Vec<Option<(Vec<f64>, usize)>> = plan
        .layers()
        .iter()
        .map(|l| (!forced_whole(&l.placement)).then(|| (Vec::new(), 0)))
        .collect();
    for (si, x) in inputs.iter().enumerate() {
        let mut seen: Vec<Option<Tensor>> = vec![None; graph.values.len()];
        tessera_engine::float::run_f32_observe(graph, std::slice::from_ref(x), &mut |id, t| {
            if let Some(s) = seen.get_mut(id) {
                *s = Some(t.clone());
            }
        })?;
        for (l, acc) in plan.layers().iter().zip(sums.iter_mut()) {
            let Some((sum, count)) = acc else { continue };
            let input = graph
                .nodes
                .get(l.node)
                .and_then(|n| n.inputs.first())
                .and_then(|&v| seen.get(v).cloned().flatten())
                .ok_or_else(|| AsymError::Protocol(format!("no input seen for '{}'", l.name)))?;
            let (rows, cols) = l.matrix();
            let per = rows * cols;
            let data = input.data();
            if data.len() != per * l.matrices() {
                return Err(AsymError::Shape(format!(
                    "'{}': {} input values, {} matrices of {rows}×{cols} expected",
                    l.name,
                    data.len(),
                    l.matrices()
                )));
            }
            // A batch conv basis reads the batch `[N, C, H·W]` as N side-by-side blocks.
            let (blocks, bcols) = match l.kind {
                LinearKind::Conv(s) if l.shared_basis => (l.batch, s.hw()),
                _ => (1, cols),
            };
            let kmax = rows.min(cols).saturating_sub(1).min(MAX_SELECTED_RANK);
            for (b, m) in data.chunks_exact(per.max(1)).enumerate() {
                let c = energy_curve(
                    m,
                    blocks,
                    rows,
                    bcols,
                    kmax,
                    &opts.decomp,
                    0x51ec_7000 ^ ((si as u64) << 20) ^ b as u64,
                )?;
                if sum.len() < c.len() {
                    sum.resize(c.len(), 0.0);
                }
                // A shorter curve (a lower-rank sketch) is exact beyond its end.
                let last = c.last().copied().unwrap_or(0.0);
                for (i, v) in sum.iter_mut().enumerate() {
                    *v += c.get(i).copied().unwrap_or(last);
                }
                *count += 1;
            }
        }
    }
    Ok(plan
        .layers()
        .iter()
        .zip(sums)
        .map(|(l, acc)| LayerSpectrum {
            layer: l.name.clone(),
            curve: acc.map(|(sum, n)| sum.iter().map(|v| v / n.max(1) as f64).collect()),
        })
        .collect())
}

/// Choose per-layer ranks for `target` on the layers of `graph` (planned with `opts`' basis),
/// from their estimated `spectra`. Errors when no choice meets a share target, saying the
/// least share the network allows.
pub fn select(
    graph: &Graph,
    spectra: &[LayerSpectrum],
    target: Target,
    opts: &AsymOptions,
) -> Result<Selection, AsymError> {
    let plan = Plan::new(
        graph,
        &AsymOptions {
            rank: RankRule::Fixed(1),
            skip_unprofitable: false,
            ..opts.clone()
        },
    )?;
    if spectra.len() != plan.layers().len() {
        return Err(AsymError::Options(format!(
            "{} layer spectra for {} linear layers",
            spectra.len(),
            plan.layers().len()
        )));
    }
    let total: u64 = plan.layers().iter().map(|l| l.macs()).sum::<u64>().max(1);
    // The cheapest choice of every layer under an energy bound.
    let choose = |e_max: f64| -> Vec<LayerChoice> {
        plan.layers()
            .iter()
            .zip(spectra)
            .map(|(l, sp)| {
                let whole = LayerChoice {
                    layer: l.name.clone(),
                    rank: 0,
                    energy: 0.0,
                    trusted_macs: l.macs(),
                    macs: l.macs(),
                };
                let Some(curve) = &sp.curve else {
                    return whole;
                };
                let Some(k) = (1..curve.len()).find(|&k| curve.get(k).is_some_and(|&e| e <= e_max))
                else {
                    return whole;
                };
                let t = l.trusted_macs(&vec![k; l.matrices()], &opts.decomp);
                if t >= l.macs() {
                    return whole;
                }
                LayerChoice {
                    layer: l.name.clone(),
                    rank: k,
                    energy: curve.get(k).copied().unwrap_or(0.0),
                    trusted_macs: t,
                    macs: l.macs(),
                }
            })
            .collect()
    };
    let share =
        |c: &[LayerChoice]| c.iter().map(|l| l.trusted_macs).sum::<u64>() as f64 / total as f64;
    let (layers, label) = match target {
        Target::Energy(e) => {
            if !(0.0..1.0).contains(&e) {
                return Err(AsymError::Options(format!(
                    "energy target {e} is not in [0, 1)"
                )));
            }
            (choose(e), format!("residual energy ≤ {e}"))
        }
        Target::TrustedShare(s) => {
            if !(s > 0.0 && s <= 1.0) {
                return Err(AsymError::Options(format!(
                    "trusted share {s} is not in (0, 1]"
                )));
            }
            // Candidate bounds: every estimated energy; the share falls as the bound grows.
            let mut cands: Vec<f64> = spectra
                .iter()
                .filter_map(|s| s.curve.as_ref())
                .flat_map(|c| c.iter().skip(1).copied())
                .chain([0.0, 1.0])
                .collect();
            cands.sort_by(f64::total_cmp);
            cands.dedup();
            let least = choose(1.0);
            if share(&least) > s {
                return Err(AsymError::Options(format!(
                    "no rank choice keeps the trusted share at {:.1}%: the least this network allows is {:.1}% (every splittable layer at rank 1, the head{} whole); ask for at least that",
                    100.0 * s,
                    100.0 * share(&least),
                    if plan.layers().len() > 1 {
                        " and the layers that must stay"
                    } else {
                        ""
                    }
                )));
            }
            let (mut lo, mut hi) = (0usize, cands.len() - 1);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if share(&choose(cands[mid])) <= s {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            (
                choose(cands[lo]),
                format!("trusted share ≤ {:.1}%", 100.0 * s),
            )
        }
    };
    Ok(Selection {
        target: label,
        trusted_share: share(&layers),
        max_energy: layers.iter().map(|l| l.energy).fold(0.0, f64::max),
        layers,
    })
}
