//! A small discrete-event simulator of a private-inference deployment under load, after the
//! system model of CryptoNite (Garimella et al., "Characterizing and Optimizing End-to-End
//! Systems for Private Inference", ASPLOS 2023, and its artifact simulator). It answers: with
//! these per-inference costs, this hardware and these storage budgets, what latency does a
//! user see at arrival rate λ?
//!
//! # Inputs
//!
//! * [`CostsFile`] / [`SchemeCosts`]: per scheme, an optional offline [`PhaseCost`], an online
//!   one, the bytes one stored precompute occupies on each side, and its [`Producer`].
//! * [`Profile`]: speed factors, link, RTT, optional storage budgets (see
//!   [`Profile::phase_seconds`] for the time formula).
//! * [`Deployment`]: arrival rates, client budgets, server budget, requests, warm-up, seed.
//!
//! Built-in files (embedded, loadable by name or by path from `crates/sim/profiles/`):
//! profile `cryptonite` and costs `resnet18-tinyimagenet-cryptonite`.
//!
//! # The model (the code's contract)
//!
//! 1. **Arrivals**: Poisson at rate λ (exponential inter-arrival times, first arrival after one
//!    such gap); the system starts empty at time 0 with no stored precompute.
//! 2. **Phase times**: deterministic, from [`Profile::phase_seconds`]: the sum of
//!    `client_s/client_speed`, `server_s/(server_speed·gpu_speedup)`,
//!    `trusted_s·tee_slowdown`, `up_bytes·8/uplink_bps`, `down_bytes·8/downlink_bps` and
//!    `rounds·rtt_s`. Each phase is one sequential block: the parties' compute and the
//!    transfers do not overlap (as in the CryptoNite simulator, which chains every step of a
//!    phase).
//! 3. **Online server**: one, FIFO, one request at a time. A request's latency runs from its
//!    arrival to the end of its online phase.
//! 4. **Schemes without an offline phase** (`offline: null`): a plain FIFO queue of online
//!    phases (M/D/1).
//! 5. **Capacity**: `K = min(client_budget / client_stored_bytes,
//!    server_budget / server_stored_bytes)` (integer division; a side with no budget or a zero
//!    size does not limit).
//! 6. **Inline offline**: when `K = 0` (one precompute does not fit in both budgets), or the
//!    producer is [`Producer::None`], every request runs its offline phase and then its online
//!    phase back to back on the online server (M/D/1 with `offline + online`). This is
//!    CryptoNite's "everything online" case.
//! 7. **Background worker** (`K ≥ 1`, producer `Joint` or `Enclave`): one worker produces
//!    precomputes one at a time, starting the next as soon as the previous is done and
//!    `stored + 1 ≤ K` (the one in progress holds its slot on both sides); it idles while all
//!    `K` slots are full and restarts the instant one is taken. Stored precomputes are used
//!    oldest first.
//! 8. **Taking a precompute**: a request takes one when it *reaches the online server* (FIFO
//!    order, so request `j` takes precompute `j`). If one is stored it is a *hit* and only the
//!    online phase runs. If none is stored, the worker is necessarily busy with one, and **that
//!    in-progress precompute is handed over**: the request holds the online server, waits for
//!    it to finish, takes it and runs its online phase. This is CryptoNite's behaviour (its
//!    online process blocks on the storage container until the worker's `put`); the request
//!    never starts an offline phase of its own while storage allows one precompute.
//! 9. **No contention**: the worker and the online server are independent resources; the
//!    worker's compute and transfers do not slow the online phase, nor the reverse (CryptoNite's
//!    simulator runs them as independent processes with no shared link or CPU). This is
//!    optimistic for `Joint` producers, whose offline traffic really shares the link; `Joint`
//!    and `Enclave` therefore behave identically here.
//! 10. **Statistics** over the requests after `warmup`: mean, p50 and p95 (nearest rank) of the
//!     latency; the hit fraction; the online server's utilisation (busy time, including inline
//!     offline phases and handover waits, over the window from the first measured arrival to
//!     the last departure); the offered load of the bottleneck (`λ·online`,
//!     `λ·(offline+online)` inline, `λ·max(offline, online)` with a worker).
//! 11. **Stability**: a point is unstable when the load is ≥ 1 or when more than
//!     `max(100, measured/10)` requests are still waiting for the server at the last arrival
//!     (the queue grew without bound within the horizon). An unstable point reports `stable:
//!     false` and `null` mean and percentiles, never a finite mean.
//!
//! Differences from the CryptoNite artifact, all deliberate: it simulates a fixed horizon
//! (24 h) averaged over 30–50 runs, we a number of requests with a warm-up; its worker polls
//! storage once a second, ours restarts at once (≤ 1 s per ~2,000 s precompute); it starts a
//! precompute when the free space is strictly greater than one precompute, we when it is
//! greater or equal.
//!
//! # Implementation
//!
//! The dynamics above reduce to exact recurrences evaluated in arrival order (see [`queue`]),
//! equivalent to an event loop over a priority queue but with no event list to get wrong. Three
//! ChaCha8 streams of one seed drive arrivals, online times and offline times (the latter two
//! only with [`queue::Dist::Exponential`]), so a seed gives the same result on every platform
//! and every scheme of a sweep sees the same arrivals.

#![warn(missing_docs)]

mod error;
mod input;
pub mod queue;
mod sim;

pub use error::SimError;
pub use input::{
    BUILTIN_COSTS, BUILTIN_PROFILES, CostsFile, Deployment, PhaseCost, Producer, Profile,
    SchemeCosts, load_costs,
};
pub use queue::Run;
pub use sim::{Point, model_for, precomputes_fit, simulate, sweep};
