//! The queueing core: one FIFO online server and, where a scheme has stored precomputes, one
//! background precompute worker, driven by Poisson arrivals (or a given arrival sequence).
//!
//! The system's events (arrival, service start, precompute done, precompute taken, departure)
//! happen in an order fixed by FIFO service and one-at-a-time production, so the event loop
//! collapses to exact recurrences evaluated request by request (Lindley's recursion, extended
//! by the worker):
//!
//! * service start `S_j = max(A_j, D_{j-1})`;
//! * precompute `j` starts at `max(P_{j-1}, C_{j-K})` (the worker is free and a slot is free:
//!   `C_{j-K}` is when the precompute `K` places earlier was taken; 0 for `j < K`) and is done
//!   at `P_j` = start + offline time;
//! * request `j` takes precompute `j` (oldest first) at `C_j = max(S_j, P_j)`; it *found* one
//!   when `P_j ≤ S_j`; it departs at `D_j = C_j + online time`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::SimError;

/// How service times are drawn around their mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dist {
    /// Every phase takes exactly its mean (the cost model's times).
    Deterministic,
    /// Exponentially distributed with the given mean (for M/M/1 checks).
    Exponential,
}

/// How a request gets the offline material it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precompute {
    /// The scheme has no per-inference offline phase: a plain FIFO queue of online phases.
    NotNeeded,
    /// No precompute can be stored: each request runs offline then online, back to back, on
    /// the online server.
    Inline,
    /// A background worker keeps up to `capacity` precomputes stored (≥ 1); a request takes
    /// the oldest, or waits for the worker's in-progress one (it is handed over).
    Stored {
        /// How many precomputes fit in both sides' budgets at once.
        capacity: u64,
    },
}

/// One queue to simulate: mean phase times and how precomputes are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// Mean online-phase seconds.
    pub online_s: f64,
    /// Mean offline-phase seconds (unused under [`Precompute::NotNeeded`]).
    pub offline_s: f64,
    /// How precomputes are obtained.
    pub precompute: Precompute,
    /// How service times are drawn.
    pub dist: Dist,
}

/// How many requests to simulate and with which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Requests simulated, warm-up included (> `warmup`).
    pub requests: usize,
    /// Leading requests left out of the statistics.
    pub warmup: usize,
    /// Seed of the random streams (arrivals, online times, offline times: one ChaCha8 stream
    /// each, so the arrivals do not depend on the scheme).
    pub seed: u64,
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Arrival time, s.
    pub arrival_s: f64,
    /// Time it reached the online server, s.
    pub start_s: f64,
    /// Time its answer reached the client, s.
    pub depart_s: f64,
    /// Whether a stored precompute was waiting when it reached the server (`None` when the
    /// scheme needs none).
    pub hit: Option<bool>,
}

/// Statistics over the measured (post-warm-up) requests of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Mean latency (arrival to answer), s; `None` when unstable.
    pub mean_s: Option<f64>,
    /// Median latency, s; `None` when unstable.
    pub p50_s: Option<f64>,
    /// 95th-percentile latency, s; `None` when unstable.
    pub p95_s: Option<f64>,
    /// Fraction of requests that found a stored precompute; `None` when none is needed.
    pub hit_fraction: Option<f64>,
    /// Fraction of the measured window the online server was occupied (serving, running an
    /// inline offline phase, or holding a request that waits for the worker's handover).
    pub utilisation: f64,
    /// Offered load of the bottleneck: `λ·online` ([`Precompute::NotNeeded`]),
    /// `λ·(offline+online)` ([`Precompute::Inline`]), `λ·max(offline, online)`
    /// ([`Precompute::Stored`]), with mean times.
    pub load: f64,
    /// Requests still waiting for the server when the last one arrived.
    pub backlog: usize,
    /// `load < 1` and the backlog did not grow without bound (see [`grew`]).
    pub stable: bool,
    /// Requests measured.
    pub measured: usize,
}

/// Whether the backlog at the end of the arrivals shows a queue growing without bound: more
/// than `max(100, measured/10)` requests still waiting. A stable queue's backlog is a
/// stationary quantity that does not scale with the horizon; an overloaded one grows linearly.
pub fn grew(backlog: usize, measured: usize) -> bool {
    backlog > (measured / 10).max(100)
}

fn check_time(arg: &'static str, value: f64) -> Result<(), SimError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(SimError::InvalidArgument {
            arg,
            problem: format!("is {value}; pass a finite number of seconds, 0 or more"),
        })
    }
}

fn stream(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// A draw with mean `mean`: `mean` itself, or `−mean·ln(1−u)` with `u` uniform in [0, 1).
fn draw(rng: &mut ChaCha8Rng, dist: Dist, mean: f64) -> f64 {
    match dist {
        Dist::Deterministic => mean,
        Dist::Exponential => {
            let u: f64 = rng.random();
            -mean * (1.0 - u).ln()
        }
    }
}

/// Runs `model` on the given nondecreasing arrival times; `seed` drives random service times.
pub fn replay(arrivals: &[f64], model: &Model, seed: u64) -> Result<Vec<Outcome>, SimError> {
    check_time("model.online_s", model.online_s)?;
    check_time("model.offline_s", model.offline_s)?;
    if let Precompute::Stored { capacity: 0 } = model.precompute {
        return Err(SimError::InvalidArgument {
            arg: "model.precompute",
            problem: "Stored needs a capacity of at least 1; use Inline when none fits".into(),
        });
    }
    let mut online_rng = stream(seed, 1);
    let mut offline_rng = stream(seed, 2);
    let mut outcomes = Vec::with_capacity(arrivals.len());
    // Times each precompute was taken (Stored only), and when the worker last finished.
    let mut taken: Vec<f64> = Vec::new();
    let mut worker_done = 0.0_f64;
    let mut last_depart = 0.0_f64;
    let mut last_arrival = 0.0_f64;
    for (j, &arrival) in arrivals.iter().enumerate() {
        if !(arrival.is_finite() && arrival >= last_arrival) {
            return Err(SimError::InvalidArgument {
                arg: "arrivals",
                problem: format!(
                    "arrival {j} is {arrival}; arrival times must be finite and nondecreasing"
                ),
            });
        }
        last_arrival = arrival;
        let start = arrival.max(last_depart);
        let (depart, hit) = match model.precompute {
            Precompute::NotNeeded => (
                start + draw(&mut online_rng, model.dist, model.online_s),
                None,
            ),
            Precompute::Inline => {
                let offline = draw(&mut offline_rng, model.dist, model.offline_s);
                let online = draw(&mut online_rng, model.dist, model.online_s);
                (start + offline + online, Some(false))
            }
            Precompute::Stored { capacity } => {
                // The slot precompute j fills was freed when precompute j − capacity was taken.
                let slot_free = (j as u64)
                    .checked_sub(capacity)
                    .and_then(|k| usize::try_from(k).ok())
                    .and_then(|k| taken.get(k).copied())
                    .unwrap_or(0.0);
                let ready = worker_done.max(slot_free)
                    + draw(&mut offline_rng, model.dist, model.offline_s);
                worker_done = ready;
                let take = start.max(ready);
                taken.push(take);
                let online = draw(&mut online_rng, model.dist, model.online_s);
                (take + online, Some(ready <= start))
            }
        };
        last_depart = depart;
        outcomes.push(Outcome {
            arrival_s: arrival,
            start_s: start,
            depart_s: depart,
            hit,
        });
    }
    Ok(outcomes)
}

/// Simulates `run.requests` Poisson arrivals at rate `lambda` (per second) through `model`
/// and returns the statistics of the requests after the warm-up.
pub fn run_model(model: &Model, lambda: f64, run: &Run) -> Result<Stats, SimError> {
    if !(lambda.is_finite() && lambda > 0.0) {
        return Err(SimError::InvalidArgument {
            arg: "lambda",
            problem: format!("is {lambda}; pass a finite arrival rate > 0 (requests/s)"),
        });
    }
    if run.requests <= run.warmup {
        return Err(SimError::InvalidArgument {
            arg: "run.requests",
            problem: format!(
                "is {} with warmup {}; simulate more requests than are left out",
                run.requests, run.warmup
            ),
        });
    }
    let mut arrival_rng = stream(run.seed, 0);
    let mut now = 0.0;
    let arrivals: Vec<f64> = (0..run.requests)
        .map(|_| {
            now += draw(&mut arrival_rng, Dist::Exponential, 1.0 / lambda);
            now
        })
        .collect();
    let outcomes = replay(&arrivals, model, run.seed)?;
    Ok(summarize(
        model,
        lambda,
        outcomes.get(run.warmup..).unwrap_or(&[]),
    ))
}

/// The statistics of `measured` (see [`Stats`]).
pub fn summarize(model: &Model, lambda: f64, measured: &[Outcome]) -> Stats {
    let load = lambda
        * match model.precompute {
            Precompute::NotNeeded => model.online_s,
            Precompute::Inline => model.offline_s + model.online_s,
            Precompute::Stored { .. } => model.offline_s.max(model.online_s),
        };
    let n = measured.len();
    let last_arrival = measured.last().map_or(0.0, |o| o.arrival_s);
    let backlog = measured.iter().filter(|o| o.start_s > last_arrival).count();
    let stable = load < 1.0 && !grew(backlog, n);
    let hit_fraction = match model.precompute {
        Precompute::NotNeeded => None,
        _ if n == 0 => Some(0.0),
        _ => Some(measured.iter().filter(|o| o.hit == Some(true)).count() as f64 / n as f64),
    };
    let busy: f64 = measured.iter().map(|o| o.depart_s - o.start_s).sum();
    let window = match (measured.first(), measured.last()) {
        (Some(first), Some(last)) => last.depart_s - first.arrival_s,
        _ => 0.0,
    };
    let utilisation = if window > 0.0 {
        (busy / window).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (mean_s, p50_s, p95_s) = if stable && n > 0 {
        let mut latencies: Vec<f64> = measured.iter().map(|o| o.depart_s - o.arrival_s).collect();
        latencies.sort_by(f64::total_cmp);
        let mean = latencies.iter().sum::<f64>() / n as f64;
        (
            Some(mean),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.95),
        )
    } else {
        (None, None, None)
    };
    Stats {
        mean_s,
        p50_s,
        p95_s,
        hit_fraction,
        utilisation,
        load,
        backlog,
        stable,
        measured: n,
    }
}

/// Nearest-rank percentile of sorted values: the `⌈q·n⌉`-th smallest.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_trace_by_hand() {
        // One slot, offline 5 s, online 1 s, arrivals at 0, 1, 2.
        let model = Model {
            online_s: 1.0,
            offline_s: 5.0,
            precompute: Precompute::Stored { capacity: 1 },
            dist: Dist::Deterministic,
        };
        let out = replay(&[0.0, 1.0, 2.0], &model, 0).unwrap();
        let departs: Vec<f64> = out.iter().map(|o| o.depart_s).collect();
        // P0 = 5 → D0 = 6; P1 = max(5, C0 = 5) + 5 = 10 → D1 = 11; P2 = 15 → D2 = 16.
        assert_eq!(departs, vec![6.0, 11.0, 16.0]);
        assert!(out.iter().all(|o| o.hit == Some(false)));
        // A late arrival finds the stored precompute; the slot stays full until taken.
        let out = replay(&[20.0, 21.0], &model, 0).unwrap();
        assert_eq!(out[0].hit, Some(true));
        assert_eq!(out[0].depart_s, 21.0);
        // Precompute 1 starts when precompute 0 is taken (20) and is ready at 25.
        assert_eq!(out[1].start_s, 21.0);
        assert_eq!(out[1].depart_s, 26.0);
        assert_eq!(out[1].hit, Some(false));
    }

    #[test]
    fn percentile_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.0));
        assert_eq!(percentile(&v, 0.95), Some(4.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn rejects_bad_arguments() {
        let model = Model {
            online_s: 1.0,
            offline_s: 0.0,
            precompute: Precompute::NotNeeded,
            dist: Dist::Deterministic,
        };
        let run = Run {
            requests: 10,
            warmup: 0,
            seed: 1,
        };
        assert!(run_model(&model, 0.0, &run).is_err());
        assert!(run_model(&model, f64::NAN, &run).is_err());
        let short = Run { warmup: 10, ..run };
        assert!(run_model(&model, 0.5, &short).is_err());
        assert!(replay(&[1.0, 0.5], &model, 0).is_err());
        let zero = Model {
            precompute: Precompute::Stored { capacity: 0 },
            ..model
        };
        assert!(replay(&[1.0], &zero, 0).is_err());
    }
}
