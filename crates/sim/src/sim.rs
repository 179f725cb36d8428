//! From costs, hardware and budgets to a [`Model`], and from a model to a [`Point`].

use serde::{Deserialize, Serialize};

use crate::queue::{Dist, Model, Precompute, Run, run_model};
use crate::{Deployment, Producer, Profile, SchemeCosts, SimError};

/// The result of one (scheme, storage budget, arrival rate) simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The scheme's name.
    pub scheme: String,
    /// Arrival rate, requests per second.
    pub lambda: f64,
    /// Client storage budget, bytes; `null` = unlimited.
    pub client_storage: Option<u64>,
    /// Server storage budget, bytes; `null` = unlimited.
    pub server_storage: Option<u64>,
    /// Mean latency (queueing + any wait for a precompute + service), s; `null` when unstable.
    pub mean_s: Option<f64>,
    /// Median latency, s; `null` when unstable.
    pub p50_s: Option<f64>,
    /// 95th-percentile latency, s; `null` when unstable.
    pub p95_s: Option<f64>,
    /// Fraction of requests that found a stored precompute when served; `null` for schemes
    /// without an offline phase.
    pub hit_fraction: Option<f64>,
    /// Fraction of the measured window the online server was occupied.
    pub utilisation: f64,
    /// Offered load of the bottleneck resource (see [`crate::queue::Stats::load`]).
    pub load: f64,
    /// Whether the point is stable (`load < 1` and no unbounded backlog within the horizon).
    pub stable: bool,
    /// How many precomputes fit in both budgets at once (0: every request runs its offline
    /// phase inline; `null`: the scheme has no offline phase).
    pub precomputes_fit: Option<u64>,
    /// Online-phase seconds on this hardware.
    pub online_s: f64,
    /// Offline-phase seconds on this hardware (0 when there is none).
    pub offline_s: f64,
    /// Requests measured (after warm-up).
    pub measured: usize,
}

/// How many precomputes fit in both budgets at once (`None` budget or a zero per-inference
/// size on a side: that side does not limit).
pub fn precomputes_fit(
    costs: &SchemeCosts,
    client_storage: Option<u64>,
    server_storage: Option<u64>,
) -> u64 {
    let side = |budget: Option<u64>, size: u64| match budget {
        Some(budget) if size > 0 => budget / size,
        _ => u64::MAX,
    };
    side(client_storage, costs.client_stored_bytes)
        .min(side(server_storage, costs.server_stored_bytes))
}

/// The queue a scheme forms on `profile` with these budgets (deterministic phase times).
pub fn model_for(
    costs: &SchemeCosts,
    profile: &Profile,
    client_storage: Option<u64>,
    server_storage: Option<u64>,
) -> Model {
    let online_s = profile.phase_seconds(&costs.online);
    let offline_s = costs
        .offline
        .as_ref()
        .map_or(0.0, |o| profile.phase_seconds(o));
    let precompute = match (&costs.offline, costs.offline_producer) {
        (None, _) => Precompute::NotNeeded,
        (Some(_), Producer::None) => Precompute::Inline,
        (Some(_), Producer::Joint | Producer::Enclave) => {
            match precomputes_fit(costs, client_storage, server_storage) {
                0 => Precompute::Inline,
                capacity => Precompute::Stored { capacity },
            }
        }
    };
    Model {
        online_s,
        offline_s,
        precompute,
        dist: Dist::Deterministic,
    }
}

/// Simulates one scheme on one profile with the given budgets (`None` = the profile's budget,
/// or unlimited when the profile has none) at arrival rate `lambda`.
pub fn simulate(
    costs: &SchemeCosts,
    profile: &Profile,
    client_storage: Option<u64>,
    server_storage: Option<u64>,
    lambda: f64,
    run: &Run,
) -> Result<Point, SimError> {
    profile.validate(&format!("profile `{}`", profile.name))?;
    costs.validate("costs given in code")?;
    let client_storage = client_storage.or(profile.client_storage_bytes);
    let server_storage = server_storage.or(profile.server_storage_bytes);
    let model = model_for(costs, profile, client_storage, server_storage);
    let stats = run_model(&model, lambda, run)?;
    Ok(Point {
        scheme: costs.scheme.clone(),
        lambda,
        client_storage,
        server_storage,
        mean_s: stats.mean_s,
        p50_s: stats.p50_s,
        p95_s: stats.p95_s,
        hit_fraction: stats.hit_fraction,
        utilisation: stats.utilisation,
        load: stats.load,
        stable: stats.stable,
        precomputes_fit: match model.precompute {
            Precompute::NotNeeded => None,
            Precompute::Inline => Some(0),
            Precompute::Stored { capacity } => Some(capacity),
        },
        online_s: model.online_s,
        offline_s: model.offline_s,
        measured: stats.measured,
    })
}

/// Simulates every scheme × client budget × arrival rate of `deployment` (in that nesting
/// order), all with the deployment's seed, so every point sees the same arrivals.
pub fn sweep(
    schemes: &[SchemeCosts],
    profile: &Profile,
    deployment: &Deployment,
) -> Result<Vec<Point>, SimError> {
    deployment.validate("deployment given in code")?;
    let budgets: Vec<Option<u64>> = if deployment.client_storage_bytes.is_empty() {
        vec![profile.client_storage_bytes]
    } else {
        deployment
            .client_storage_bytes
            .iter()
            .copied()
            .map(Some)
            .collect()
    };
    let run = Run {
        requests: deployment.requests,
        warmup: deployment.warmup,
        seed: deployment.seed,
    };
    let mut points =
        Vec::with_capacity(schemes.len() * budgets.len() * deployment.arrival_rates.len());
    for costs in schemes {
        for &budget in &budgets {
            for &lambda in &deployment.arrival_rates {
                points.push(simulate(
                    costs,
                    profile,
                    budget,
                    deployment.server_storage_bytes,
                    lambda,
                    &run,
                )?);
            }
        }
    }
    Ok(points)
}
