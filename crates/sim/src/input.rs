//! The simulator's inputs, all read from JSON: per-scheme costs ([`CostsFile`], [`SchemeCosts`],
//! [`PhaseCost`]), the hardware ([`Profile`]) and the load to apply ([`Deployment`]).
//!
//! Every type rejects unknown fields (a misspelt field is an error, not a silently ignored
//! value) and is validated after parsing; built-in files are found by name (see
//! [`BUILTIN_PROFILES`], [`BUILTIN_COSTS`]).

use serde::{Deserialize, Serialize};

use crate::SimError;

/// Built-in hardware profiles, by name: `(name, JSON text)`.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("cryptonite", include_str!("../profiles/cryptonite.json")),
    ("local", include_str!("../profiles/local.json")),
];

/// Built-in cost files, by name: `(name, JSON text)`.
pub const BUILTIN_COSTS: &[(&str, &str)] = &[(
    "resnet18-tinyimagenet-cryptonite",
    include_str!("../profiles/resnet18-tinyimagenet-cryptonite.json"),
)];

/// The measured cost of one phase (offline or online) of one inference.
///
/// Seconds are those of the machine (and thread count) the costs file says they describe; a
/// [`Profile`] scales them to other hardware. Every value must be finite and ≥ 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseCost {
    /// Compute seconds on the client (the data owner's device).
    pub client_s: f64,
    /// Compute seconds on the untrusted server or worker, outside any enclave.
    pub server_s: f64,
    /// Compute seconds inside the TEE (enclave), at native speed.
    #[serde(default)]
    pub trusted_s: f64,
    /// Bytes sent client → server.
    pub up_bytes: u64,
    /// Bytes sent server → client.
    pub down_bytes: u64,
    /// Sequential round trips, each paying the profile's RTT once.
    #[serde(default)]
    pub rounds: u64,
}

/// Who produces a scheme's offline material in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Producer {
    /// Client and server together, over the link (2pc: Delphi's server-garbler, client-garbler).
    Joint,
    /// The enclave alone, into the worker's bounded pool (gc).
    Enclave,
    /// Nobody: the offline phase, if any, runs inline, before each request's online phase.
    None,
}

/// The per-inference costs of one scheme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemeCosts {
    /// The scheme's name, as it appears in every [`crate::Point`].
    pub scheme: String,
    /// The per-inference offline (input-independent) phase; `null` when the scheme has none
    /// (tee, asym, lhe: their encrypted model is uploaded once, not per inference).
    pub offline: Option<PhaseCost>,
    /// The online phase: from the moment the request is served to the answer at the client.
    pub online: PhaseCost,
    /// Bytes one precomputed inference occupies on the client until it is used.
    pub client_stored_bytes: u64,
    /// Bytes one precomputed inference occupies on the server (or worker) until it is used.
    pub server_stored_bytes: u64,
    /// Who produces offline material in the background (ignored, and must be `None`, when
    /// `offline` is `null`).
    pub offline_producer: Producer,
    /// Where the numbers come from and which are derived (free text).
    #[serde(default)]
    pub source: String,
}

/// A costs file: a named list of schemes' costs for one network and data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostsFile {
    /// The file's name (network, data set, origin).
    pub name: String,
    /// Where the numbers come from (free text).
    #[serde(default)]
    pub source: String,
    /// The schemes, each with its own costs.
    pub schemes: Vec<SchemeCosts>,
}

/// A hardware profile: how fast each party computes relative to the costs' reference, and the
/// link between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// Where the numbers come from (free text).
    #[serde(default)]
    pub source: String,
    /// How many times faster the client is than the reference `client_s` describes
    /// (finite, > 0).
    pub client_speed: f64,
    /// How many times faster the server is than the reference `server_s` describes, e.g. a
    /// cores ratio (finite, > 0).
    pub server_speed: f64,
    /// Further speed-up of `server_s` from a GPU; 1.0 = none (finite, > 0; default 1).
    #[serde(default = "one")]
    pub gpu_speedup: f64,
    /// Slowdown multiplying `trusted_s` inside the TEE; 1.0 = native (finite, > 0; default 1).
    #[serde(default = "one")]
    pub tee_slowdown: f64,
    /// Client → server bandwidth, bits per second (finite, > 0).
    pub uplink_bps: f64,
    /// Server → client bandwidth, bits per second (finite, > 0).
    pub downlink_bps: f64,
    /// Round-trip time, seconds, paid once per [`PhaseCost::rounds`] (finite, ≥ 0; default 0).
    #[serde(default)]
    pub rtt_s: f64,
    /// The client's storage budget for precomputes, bytes, used when a [`Deployment`] lists no
    /// client budgets; `null` = unlimited.
    #[serde(default)]
    pub client_storage_bytes: Option<u64>,
    /// The server's storage budget for precomputes, bytes, used when a [`Deployment`] gives
    /// none; `null` = unlimited.
    #[serde(default)]
    pub server_storage_bytes: Option<u64>,
    /// The deployment (arrival rates, storage budgets) this profile's source studied, if any.
    #[serde(default)]
    pub deployment: Option<Deployment>,
}

fn one() -> f64 {
    1.0
}

/// The load to apply and how long to simulate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Poisson arrival rates to sweep, requests per second (each finite, > 0; at least one).
    pub arrival_rates: Vec<f64>,
    /// Client storage budgets to sweep, bytes; empty = the profile's budget (or unlimited).
    #[serde(default)]
    pub client_storage_bytes: Vec<u64>,
    /// The server's storage budget, bytes; `null` = the profile's budget (or unlimited).
    #[serde(default)]
    pub server_storage_bytes: Option<u64>,
    /// Requests simulated per point, warm-up included (> `warmup`).
    pub requests: usize,
    /// Seed of the random streams; every point of a sweep uses the same seed (common random
    /// numbers, so schemes are compared on the same arrivals).
    pub seed: u64,
    /// Leading requests left out of the statistics (the system starts empty).
    #[serde(default)]
    pub warmup: usize,
}

/// Finds `arg` among `builtins` (by exact name, optionally with `.json`, when `arg` has no path
/// separator), else reads it as a path. Returns a label for messages and the text.
fn resolve(arg: &str, builtins: &[(&str, &str)]) -> Result<(String, String), SimError> {
    if !arg.contains('/') && !arg.contains('\\') {
        let bare = arg.strip_suffix(".json").unwrap_or(arg);
        if let Some((name, text)) = builtins.iter().find(|(name, _)| *name == bare) {
            return Ok((format!("built-in `{name}`"), (*text).to_owned()));
        }
    }
    match std::fs::read_to_string(arg) {
        Ok(text) => Ok((arg.to_owned(), text)),
        Err(source) => Err(SimError::Io {
            path: arg.to_owned(),
            source,
            builtins: if builtins.is_empty() {
                "none for this kind of file".to_owned()
            } else {
                builtins
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    what: &'static str,
) -> Result<T, SimError> {
    serde_json::from_str(text).map_err(|source| SimError::Json {
        file: file.to_owned(),
        what,
        source,
    })
}

impl Profile {
    /// Loads a profile by built-in name (see [`BUILTIN_PROFILES`]) or from a JSON file, and
    /// validates it.
    pub fn load(path_or_name: &str) -> Result<Self, SimError> {
        let (file, text) = resolve(path_or_name, BUILTIN_PROFILES)?;
        Self::from_json(&text, &file)
    }

    /// Parses and validates a profile; `file` names the source in error messages.
    pub fn from_json(text: &str, file: &str) -> Result<Self, SimError> {
        let profile: Self = parse(text, file, "Profile")?;
        profile.validate(file)?;
        Ok(profile)
    }

    /// Checks every factor is finite and > 0 (the RTT finite and ≥ 0), and the embedded
    /// deployment, if any.
    pub fn validate(&self, file: &str) -> Result<(), SimError> {
        let positive: [(&'static str, f64); 6] = [
            ("client_speed", self.client_speed),
            ("server_speed", self.server_speed),
            ("gpu_speedup", self.gpu_speedup),
            ("tee_slowdown", self.tee_slowdown),
            ("uplink_bps", self.uplink_bps),
            ("downlink_bps", self.downlink_bps),
        ];
        for (field, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(SimError::InvalidProfile {
                    file: file.to_owned(),
                    field,
                    value: value.to_string(),
                    rule: "it must be a finite number greater than 0",
                });
            }
        }
        if !(self.rtt_s.is_finite() && self.rtt_s >= 0.0) {
            return Err(SimError::InvalidProfile {
                file: file.to_owned(),
                field: "rtt_s",
                value: self.rtt_s.to_string(),
                rule: "it must be a finite number of seconds, 0 or more",
            });
        }
        if let Some(deployment) = &self.deployment {
            deployment.validate(file)?;
        }
        Ok(())
    }

    /// Seconds one phase takes on this hardware: the sum of `client_s/client_speed`,
    /// `server_s/(server_speed·gpu_speedup)`, `trusted_s·tee_slowdown`,
    /// `up_bytes·8/uplink_bps`, `down_bytes·8/downlink_bps` and `rounds·rtt_s`.
    pub fn phase_seconds(&self, cost: &PhaseCost) -> f64 {
        cost.client_s / self.client_speed
            + cost.server_s / (self.server_speed * self.gpu_speedup)
            + cost.trusted_s * self.tee_slowdown
            + cost.up_bytes as f64 * 8.0 / self.uplink_bps
            + cost.down_bytes as f64 * 8.0 / self.downlink_bps
            + cost.rounds as f64 * self.rtt_s
    }
}

impl CostsFile {
    /// Loads a costs file by built-in name (see [`BUILTIN_COSTS`]) or path, and validates it.
    /// A bare JSON array of [`SchemeCosts`] is accepted too (named after the file).
    pub fn load(path_or_name: &str) -> Result<Self, SimError> {
        let (file, text) = resolve(path_or_name, BUILTIN_COSTS)?;
        Self::from_json(&text, &file)
    }

    /// Parses and validates a costs file (object form or bare array); `file` names the source
    /// in error messages.
    pub fn from_json(text: &str, file: &str) -> Result<Self, SimError> {
        let is_array = text.trim_start().starts_with('[');
        let costs = if is_array {
            Self {
                name: file.to_owned(),
                source: String::new(),
                schemes: parse(text, file, "CostsFile")?,
            }
        } else {
            parse(text, file, "CostsFile")?
        };
        for scheme in &costs.schemes {
            scheme.validate(file)?;
        }
        Ok(costs)
    }

    /// The scheme named `scheme`, if present.
    pub fn scheme(&self, scheme: &str) -> Option<&SchemeCosts> {
        self.schemes.iter().find(|s| s.scheme == scheme)
    }
}

/// Loads a list of schemes' costs by built-in name or path (see [`CostsFile::load`]).
pub fn load_costs(path_or_name: &str) -> Result<Vec<SchemeCosts>, SimError> {
    Ok(CostsFile::load(path_or_name)?.schemes)
}

impl SchemeCosts {
    /// Checks every time is finite and ≥ 0 and the producer matches the offline phase.
    pub fn validate(&self, file: &str) -> Result<(), SimError> {
        let invalid = |field: String, problem: String| SimError::InvalidCosts {
            file: file.to_owned(),
            scheme: self.scheme.clone(),
            field,
            problem,
        };
        let phases = [
            ("online", Some(&self.online)),
            ("offline", self.offline.as_ref()),
        ];
        for (phase, cost) in phases {
            let Some(cost) = cost else { continue };
            for (name, value) in [
                ("client_s", cost.client_s),
                ("server_s", cost.server_s),
                ("trusted_s", cost.trusted_s),
            ] {
                if !(value.is_finite() && value >= 0.0) {
                    return Err(invalid(
                        format!("{phase}.{name}"),
                        format!("is {value}; it must be a finite number of seconds, 0 or more"),
                    ));
                }
            }
        }
        if self.offline.is_none() && self.offline_producer != Producer::None {
            return Err(invalid(
                "offline_producer".to_owned(),
                format!(
                    "is {:?} but `offline` is null; set it to \"None\" or give the offline phase",
                    self.offline_producer
                ),
            ));
        }
        Ok(())
    }
}

impl Deployment {
    /// Loads a deployment from a JSON file and validates it.
    pub fn load(path: &str) -> Result<Self, SimError> {
        let (file, text) = resolve(path, &[])?;
        Self::from_json(&text, &file)
    }

    /// Parses and validates a deployment; `file` names the source in error messages.
    pub fn from_json(text: &str, file: &str) -> Result<Self, SimError> {
        let deployment: Self = parse(text, file, "Deployment")?;
        deployment.validate(file)?;
        Ok(deployment)
    }

    /// Checks the rates are finite and > 0 and that warm-up leaves requests to measure.
    pub fn validate(&self, file: &str) -> Result<(), SimError> {
        let invalid = |field: &'static str, problem: String| SimError::InvalidDeployment {
            file: file.to_owned(),
            field,
            problem,
        };
        if self.arrival_rates.is_empty() {
            return Err(invalid(
                "arrival_rates",
                "is empty; list at least one rate".into(),
            ));
        }
        if let Some(rate) = self
            .arrival_rates
            .iter()
            .find(|r| !(r.is_finite() && **r > 0.0))
        {
            return Err(invalid(
                "arrival_rates",
                format!("contains {rate}; every rate must be a finite number > 0 (requests/s)"),
            ));
        }
        if self.requests <= self.warmup {
            return Err(invalid(
                "requests",
                format!(
                    "is {} but warmup is {}; simulate more requests than are left out",
                    self.requests, self.warmup
                ),
            ));
        }
        Ok(())
    }
}
