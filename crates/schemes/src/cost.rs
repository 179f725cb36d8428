//! The one cost report every scheme fills in, and its summary over many inferences.
//!
//! Definitions, the same for every scheme so that rows can be compared:
//! - **Online** is what runs once the input is known: `latency` from input to prediction, and
//!   the bytes and round trips of that phase on **every** link the inference uses (the client's
//!   leg to the enclave or server included), each link also listed in `links`.
//! - **Offline** is the work done for this inference before its input was known: gc's garbling,
//!   2pc's HE preprocessing, OT and garbling. Its time and bytes are their own fields, never
//!   added to `latency`. Work done once per model (lhe's encrypted upload, a worker's setup) is
//!   neither: it shows in `stored_server` when it is kept.
//! - **Stored** bytes are what one inference needs kept ahead of time, counted on the side that
//!   keeps them from that side's own traffic or files: `stored_client` on the data owner's side
//!   (the client, or the enclave that serves it), `stored_server` on the untrusted side (worker
//!   or server).
//! - **Up / down** are seen from the data owner's side (the client and its enclave): up leaves
//!   it, down arrives at it. On a link between two untrusted parties there is none.
//! - **Trusted share** is trusted-side compute time over all compute time (`trusted_ns /
//!   (trusted_ns + untrusted_ns)`), both measured on this machine, offline work included: one
//!   unit for every scheme, 0..1 by construction. Schemes without a trusted part (plain, 2pc)
//!   have none. Multiply-accumulates are kept as a second, informational measure.

use crate::Scheme;
use serde::Serialize;
use std::time::Duration;
use tessera_model::Tensor;

/// The costs one link carried during one inference, online and offline.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Link {
    /// Which parties it joins, data owner's side first (`client-enclave`, `enclave-worker`,
    /// `client-server`, `enclave-server`).
    pub name: String,
    /// Online bytes leaving the data owner's side on this link.
    pub up: u64,
    /// Online bytes arriving at the data owner's side on this link.
    pub down: u64,
    /// Online round trips on this link.
    pub rounds: u64,
    /// Offline bytes leaving the data owner's side on this link.
    pub offline_up: u64,
    /// Offline bytes arriving at the data owner's side on this link.
    pub offline_down: u64,
}

/// Costs of one inference, measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cost {
    /// Online wall time, from input to prediction.
    pub latency: Duration,
    /// Online bytes leaving the data owner's side, over every link.
    pub bytes_up: u64,
    /// Online bytes arriving at the data owner's side, over every link.
    pub bytes_down: u64,
    /// Online round trips, over every link.
    pub rounds: u64,
    /// Wall time of the offline work behind this inference (zero when the scheme has none).
    pub offline: Duration,
    /// Time this inference waited, after its input was given, for offline material that was not
    /// ready (gc's pool empty, or 2pc run without precomputation): the offline work that was not
    /// hidden. Input to prediction took `waited + latency`.
    pub waited: Duration,
    /// Offline bytes leaving the data owner's side.
    pub offline_up: u64,
    /// Offline bytes arriving at the data owner's side.
    pub offline_down: u64,
    /// Bytes kept ahead of time for this inference on the data owner's side.
    pub stored_client: u64,
    /// Bytes kept ahead of time for this inference (or for the model, lhe) on the untrusted side.
    pub stored_server: u64,
    /// Compute time on the trusted side (the enclave), offline work included, nanoseconds.
    pub trusted_ns: u64,
    /// Compute time on the untrusted side (worker, server), offline work included, nanoseconds.
    pub untrusted_ns: u64,
    /// Per-link detail of the byte and round counts.
    pub links: Vec<Link>,
    /// Multiply-accumulates run on the trusted side (informational).
    pub trusted_macs: u64,
    /// All multiply-accumulates of the inference (informational).
    pub total_macs: u64,
    /// Modeled online time with the trusted part inside a real TEE (the runtime's cost model),
    /// where the scheme has one. A model, never added to `latency`.
    pub modeled_tee: Option<Duration>,
}

impl Cost {
    /// Fill the totals from `links`.
    pub fn with_links(mut self, links: Vec<Link>) -> Self {
        self.bytes_up = links.iter().map(|l| l.up).sum();
        self.bytes_down = links.iter().map(|l| l.down).sum();
        self.rounds = links.iter().map(|l| l.rounds).sum();
        self.offline_up = links.iter().map(|l| l.offline_up).sum();
        self.offline_down = links.iter().map(|l| l.offline_down).sum();
        self.links = links;
        self
    }

    /// Trusted-side compute over all compute (0..1); `None` when nothing was measured.
    pub fn trusted_share(&self) -> Option<f64> {
        let all = self.trusted_ns.saturating_add(self.untrusted_ns);
        (all > 0).then(|| self.trusted_ns as f64 / all as f64)
    }
}

/// The result of one private inference.
#[derive(Clone, Debug)]
pub struct Inference {
    /// The model output in real units (dequantized logits or probabilities).
    pub output: Tensor,
    /// The exact integer output (the value every scheme must reproduce; `output` is it times
    /// the output scale).
    pub exact: Tensor<i64>,
    /// The real value of one step of `exact`.
    pub scale: f64,
    /// Argmax of the output.
    pub class: usize,
    /// What it cost.
    pub cost: Cost,
}

/// Aggregated costs of a scheme over many inferences (medians, each field on its own).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scheme name (with its caveat, if any).
    pub scheme: String,
    /// What it hides from the untrusted side.
    pub protects: String,
    /// Inferences run.
    pub inferences: usize,
    /// Correct top-1 predictions, when labels were known.
    pub correct: Option<usize>,
    /// Inferences whose exact integer output equals the plain reference bit for bit.
    pub exact_matches: usize,
    /// Whether the scheme computes the integer semantics (false: float, like `asym`).
    pub exact_semantics: bool,
    /// Median online latency in milliseconds.
    pub latency_ms_median: f64,
    /// Median online bytes up per inference.
    pub bytes_up: u64,
    /// Median online bytes down per inference.
    pub bytes_down: u64,
    /// Median online rounds per inference.
    pub rounds: u64,
    /// Median offline time per inference, milliseconds (0: no offline phase).
    pub offline_ms_median: f64,
    /// Median time an inference waited for offline material, milliseconds.
    pub waited_ms_median: f64,
    /// Median offline bytes up per inference.
    pub offline_up: u64,
    /// Median offline bytes down per inference.
    pub offline_down: u64,
    /// Median bytes stored per inference on the data owner's side.
    pub stored_client: u64,
    /// Median bytes stored per inference (or for the model) on the untrusted side.
    pub stored_server: u64,
    /// Trusted-side compute time over all compute time (0..1), summed over the inferences;
    /// `None` where the scheme has no trusted part.
    pub trusted_share: Option<f64>,
    /// Median modeled TEE time in milliseconds, where the scheme has a trusted part.
    pub modeled_tee_ms_median: Option<f64>,
    /// Per-link medians (by link name, in the order the scheme reports them).
    pub links: Vec<Link>,
}

/// Median of a list (upper median; 0 for empty).
pub fn median<T: Copy + PartialOrd + Default>(v: &mut [T]) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn med<T: Copy + PartialOrd + Default>(runs: &[Inference], f: impl Fn(&Cost) -> T) -> T {
    let mut v: Vec<T> = runs.iter().map(|r| f(&r.cost)).collect();
    median(&mut v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Summarise a scheme's inferences. `has_trusted_part`: whether the scheme has a trusted side
/// at all (plain and 2pc do not), so that a share of 0 is not shown for them.
pub fn summarize(
    scheme: &dyn Scheme,
    runs: &[Inference],
    labels: Option<&[u8]>,
    reference: &[Tensor<i64>],
    has_trusted_part: bool,
) -> Summary {
    let (t, u) = runs.iter().fold((0u64, 0u64), |(t, u), r| {
        (
            t.saturating_add(r.cost.trusted_ns),
            u.saturating_add(r.cost.untrusted_ns),
        )
    });
    let mut modeled: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.cost.modeled_tee.map(ms))
        .collect();
    let names: Vec<String> = runs
        .first()
        .map(|r| r.cost.links.iter().map(|l| l.name.clone()).collect())
        .unwrap_or_default();
    let links = names
        .into_iter()
        .map(|name| {
            let pick = |f: fn(&Link) -> u64| {
                med(runs, |c| {
                    c.links.iter().find(|l| l.name == name).map_or(0, f)
                })
            };
            Link {
                up: pick(|l| l.up),
                down: pick(|l| l.down),
                rounds: pick(|l| l.rounds),
                offline_up: pick(|l| l.offline_up),
                offline_down: pick(|l| l.offline_down),
                name,
            }
        })
        .collect();
    Summary {
        scheme: match scheme.caveat() {
            Some(c) => format!("{} ({c})", scheme.name()),
            None => scheme.name().into(),
        },
        protects: scheme.protects().into(),
        inferences: runs.len(),
        correct: labels.map(|l| {
            runs.iter()
                .zip(l)
                .filter(|(r, y)| r.class == usize::from(**y))
                .count()
        }),
        exact_matches: runs
            .iter()
            .zip(reference)
            .filter(|(r, e)| r.exact.data() == e.data())
            .count(),
        exact_semantics: scheme.exact(),
        latency_ms_median: med(runs, |c| ms(c.latency)),
        bytes_up: med(runs, |c| c.bytes_up),
        bytes_down: med(runs, |c| c.bytes_down),
        rounds: med(runs, |c| c.rounds),
        offline_ms_median: med(runs, |c| ms(c.offline)),
        waited_ms_median: med(runs, |c| ms(c.waited)),
        offline_up: med(runs, |c| c.offline_up),
        offline_down: med(runs, |c| c.offline_down),
        stored_client: med(runs, |c| c.stored_client),
        stored_server: med(runs, |c| c.stored_server),
        trusted_share: if has_trusted_part && t.saturating_add(u) > 0 {
            Some(t as f64 / t.saturating_add(u) as f64)
        } else {
            None
        },
        modeled_tee_ms_median: if modeled.is_empty() {
            None
        } else {
            Some(median(&mut modeled))
        },
        links,
    }
}
