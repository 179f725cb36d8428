//! Stakeholder policies and training jobs, and the rule that joins them: a job is accepted only
//! when the data owner, the model owner and the infrastructure provider have each submitted a
//! policy that lists the job, and all three hold at once.
//!
//! A stakeholder policy (JSON; unknown keys are errors, so a misspelt key cannot weaken it):
//!
//! ```json
//! {
//!   "version": 1,
//!   "stakeholder": "data_owner",
//!   "name": "hospital-a",
//!   "jobs": ["mnist-mlp"],
//!   "enclave_measurements": ["<96 hex digits: the broker enclave's measurement>"],
//!   "allow_simulated_enclave": false,
//!   "boot_pcrs": {"0": ["<64 hex digits>"], "7": ["…"]},
//!   "ima_allow_list": { "meta": {"version": 1}, "digests": {"/usr/bin/python3": ["…"]}, "excludes": [] },
//!   "trusted_eks": ["<hex of an endorsement key's TPMT_PUBLIC>"],
//!   "outputs": {"trained_model": ["model_owner"], "predictions": ["data_owner"]}
//! }
//! ```
//!
//! `ima_allow_list` is a Keylime runtime policy, inline. `trusted_eks` is required of the
//! infrastructure provider (it vouches for its hosts' TPMs); another stakeholder may list EKs
//! too, which narrows the set. Boot PCR constraints combine by intersection: a PCR that several
//! stakeholders constrain must hold a value all of them allow. Every IMA entry must pass every
//! stakeholder's allow-list. Every output the job names must go to a recipient every policy
//! allows for it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_engine::train::TrainConfig;
use tessera_tpm::{AttestationPolicy, HashAlg, PublicArea, RuntimePolicy};

use crate::error::AttestedError;

/// The three stakeholders of a training job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stakeholder {
    /// Owns the training data; receives predictions.
    DataOwner,
    /// Owns the model (architecture, training code); receives the trained model.
    ModelOwner,
    /// Runs the training hosts; vouches for their TPMs.
    InfrastructureProvider,
}

impl Stakeholder {
    /// All three, in a fixed order.
    pub const ALL: [Stakeholder; 3] = [
        Stakeholder::DataOwner,
        Stakeholder::ModelOwner,
        Stakeholder::InfrastructureProvider,
    ];

    /// The name used in JSON and file names (`data_owner`, …).
    pub fn key(self) -> &'static str {
        match self {
            Stakeholder::DataOwner => "data_owner",
            Stakeholder::ModelOwner => "model_owner",
            Stakeholder::InfrastructureProvider => "infrastructure_provider",
        }
    }

    /// Parses [`Stakeholder::key`] (also accepts `-` for `_`).
    pub fn parse(s: &str) -> Option<Stakeholder> {
        let s = s.replace('-', "_");
        Stakeholder::ALL.into_iter().find(|r| r.key() == s)
    }
}

impl std::fmt::Display for Stakeholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stakeholder::DataOwner => "data owner",
            Stakeholder::ModelOwner => "model owner",
            Stakeholder::InfrastructureProvider => "infrastructure provider",
        })
    }
}

/// What a job produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// The trained model (ONNX), encrypted under the model key.
    TrainedModel,
    /// Predictions of the trained model, served by the inference enclave.
    Predictions,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::TrainedModel => "trained model",
            Output::Predictions => "predictions",
        })
    }
}

/// One stakeholder's policy. See the module documentation for the JSON form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StakeholderPolicy {
    /// Format version: 1.
    pub version: u32,
    /// Whose policy this is.
    pub stakeholder: Stakeholder,
    /// The stakeholder's name (for reports).
    pub name: String,
    /// The jobs this stakeholder consents to.
    pub jobs: Vec<String>,
    /// Broker enclave measurements (hex, 48 bytes) this stakeholder trusts with its keys.
    pub enclave_measurements: Vec<String>,
    /// Whether a simulated enclave (no hardware protection) is acceptable. Default false.
    #[serde(default)]
    pub allow_simulated_enclave: bool,
    /// Allowed SHA-256 boot PCR values (PCRs 0–9) of training hosts, hex.
    #[serde(default)]
    pub boot_pcrs: BTreeMap<u8, Vec<String>>,
    /// The IMA allow-list, a Keylime runtime policy (JSON object).
    pub ima_allow_list: serde_json::Value,
    /// Trusted endorsement keys (hex TPMT_PUBLIC). Required of the infrastructure provider.
    #[serde(default)]
    pub trusted_eks: Vec<String>,
    /// Who may receive each output.
    pub outputs: BTreeMap<Output, Vec<Stakeholder>>,
}

impl StakeholderPolicy {
    /// Parses a policy from JSON text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<StakeholderPolicy, AttestedError> {
        let p: StakeholderPolicy =
            serde_json::from_str(text).map_err(|e| AttestedError::PolicyFile {
                origin: origin.into(),
                reason: format!("not a stakeholder policy: {e}"),
            })?;
        if p.version != 1 {
            return Err(AttestedError::PolicyFile {
                origin: origin.into(),
                reason: format!(
                    "version {} is not supported; write \"version\": 1",
                    p.version
                ),
            });
        }
        Ok(p)
    }

    /// The policy as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    fn allow_list(&self) -> Result<RuntimePolicy, AttestedError> {
        if self.ima_allow_list.is_null() {
            return Err(self.conflict_any("names no IMA allow-list (ima_allow_list)"));
        }
        RuntimePolicy::from_keylime_json(&self.ima_allow_list.to_string())
            .map_err(|e| self.conflict_any(&format!("its IMA allow-list is unusable: {e}")))
    }

    fn conflict_any(&self, reason: &str) -> AttestedError {
        AttestedError::PolicyFile {
            origin: format!("of the {} ({})", self.stakeholder, self.name),
            reason: reason.into(),
        }
    }
}

/// The network a job trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Dense ReLU layers of `hidden` widths (the engine's MLP trainer).
    #[default]
    Mlp,
    /// conv 16 5×5, pool, conv 32 5×5, pool, dense 128, dense (see
    /// [`tessera_model::builders::trainable`]).
    Cnn,
    /// 3×3 convs 32, 32, pool, 64, 64, pool, 128, global average pool, dense.
    Vgg,
    /// conv 32, a residual block, pool, conv 64, a residual block, global average pool, dense.
    Resnet,
}

impl Network {
    /// Whether this is the dense network.
    pub fn is_mlp(&self) -> bool {
        *self == Network::Mlp
    }

    /// The name [`tessera_model::builders::trainable`] takes.
    pub fn name(&self) -> &'static str {
        match self {
            Network::Mlp => "mlp",
            Network::Cnn => "cnn",
            Network::Vgg => "vgg",
            Network::Resnet => "resnet",
        }
    }
}

fn one() -> usize {
    1
}

/// Training settings of a job (the fields of [`TrainConfig`], and the network).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// The network: `mlp` (the default) or a convolutional `cnn`, `vgg` or `resnet` over the
    /// dataset's `[1, C, H, W]` images, trained with the conv trainer tessera's `asym` and
    /// `tee` training share.
    #[serde(default)]
    pub network: Network,
    /// vgg and resnet: every channel count multiplied by this.
    #[serde(default = "one")]
    pub width: usize,
    /// Hidden layer widths (mlp only; empty for a convolutional network).
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Convolutional networks: each training image moved by up to this many pixels in each
    /// direction (zero fill), drawn afresh every time it is seen (data augmentation; 0: off).
    #[serde(default)]
    pub shift: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Learning rate.
    pub lr: f32,
    /// Convolutional networks: the learning rate falls linearly, epoch by epoch, from `lr` to
    /// this in the last epoch (absent: constant).
    #[serde(default)]
    pub lr_final: Option<f32>,
    /// Momentum.
    #[serde(default = "default_momentum")]
    pub momentum: f32,
    /// Scale applied to inputs before the first layer (1/255 for pixels).
    #[serde(default = "default_scale")]
    pub input_scale: f32,
    /// Seed of initialisation and shuffling.
    #[serde(default)]
    pub seed: u64,
}

fn default_momentum() -> f32 {
    0.9
}
fn default_scale() -> f32 {
    1.0
}

impl TrainSpec {
    /// The trainer's configuration, after checking the values are sane.
    pub fn config(&self) -> Result<TrainConfig, AttestedError> {
        let bad = |r: &str| AttestedError::PolicyFile {
            origin: "job training settings".into(),
            reason: r.into(),
        };
        if self.hidden.len() > 16 || self.hidden.iter().any(|&h| h == 0 || h > 65_536) {
            return Err(bad("hidden: at most 16 layers of 1 to 65536 units"));
        }
        if !self.network.is_mlp() && !self.hidden.is_empty() {
            return Err(bad(
                "hidden applies to the mlp network only: leave it out of a cnn, vgg or resnet job",
            ));
        }
        let widens = matches!(self.network, Network::Vgg | Network::Resnet);
        if self.width == 0 || self.width > 16 || (self.width > 1 && !widens) {
            return Err(bad(
                "width must be 1 to 16, and 1 for the mlp and cnn networks (it widens vgg and resnet)",
            ));
        }
        if let Some(f) = self.lr_final
            && (!f.is_finite() || f <= 0.0 || self.network.is_mlp())
        {
            return Err(bad(
                "lr_final must be positive and finite, and is for cnn, vgg and resnet jobs",
            ));
        }
        if self.shift > 8 || (self.shift > 0 && self.network.is_mlp()) {
            return Err(bad(
                "shift must be 0 to 8 pixels, and 0 for the mlp network (it shifts images)",
            ));
        }
        if self.epochs == 0 || self.epochs > 10_000 {
            return Err(bad("epochs must be 1 to 10000"));
        }
        if self.batch == 0 || self.batch > 65_536 {
            return Err(bad("batch must be 1 to 65536"));
        }
        let fine = |v: f32| v.is_finite() && v >= 0.0;
        if !fine(self.lr) || self.lr == 0.0 || !fine(self.momentum) || self.momentum >= 1.0 {
            return Err(bad("lr must be positive and momentum in [0, 1)"));
        }
        if !self.input_scale.is_finite() || self.input_scale == 0.0 {
            return Err(bad("input_scale must be finite and non-zero"));
        }
        Ok(TrainConfig {
            hidden: self.hidden.clone(),
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            momentum: self.momentum,
            input_scale: self.input_scale,
            seed: self.seed,
        })
    }
}

/// Most files a program job may list.
pub const MAX_PROGRAM_FILES: usize = 64;

/// An external training program the model owner supplies: what the host runs instead of
/// tessera's own trainers. Every listed file must appear in the IMA log the host's quote covers
/// with exactly the listed SHA-256 (the broker checks it before releasing any key), and, as
/// every measured file, in every stakeholder's allow-list. The interface the program sees is
/// described in [`crate::program`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// The command: an absolute path to the executable, then its arguments (e.g.
    /// `["/usr/bin/python3", "/opt/job/train.py"]`).
    pub command: Vec<String>,
    /// Every file the program consists of (the executable, scripts, modules it loads) by
    /// absolute path, with its SHA-256 in hex.
    pub files: BTreeMap<String, String>,
    /// Seconds the program may run before it is killed (default one hour).
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    3600
}

impl ProgramSpec {
    /// Checks the command and the file list.
    pub fn validate(&self, job: &str) -> Result<(), AttestedError> {
        let bad = |r: String| AttestedError::PolicyFile {
            origin: format!("job {job}, program"),
            reason: r,
        };
        let Some(exe) = self.command.first() else {
            return Err(bad(
                "the command is empty: give the executable's path first".into(),
            ));
        };
        if self.command.len() > 64
            || self
                .command
                .iter()
                .any(|a| a.len() > 4096 || a.contains('\0'))
        {
            return Err(bad(
                "at most 64 arguments of at most 4096 bytes, without NUL".into(),
            ));
        }
        if self.files.is_empty() || self.files.len() > MAX_PROGRAM_FILES {
            return Err(bad(format!("list 1 to {MAX_PROGRAM_FILES} files")));
        }
        for (path, digest) in &self.files {
            if !path.starts_with('/') || path.contains('\0') || path.split('/').any(|c| c == "..") {
                return Err(bad(format!(
                    "{path:?} is not an absolute path without '..'"
                )));
            }
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "the digest of {path} is not 64 hex digits (SHA-256)"
                )));
            }
        }
        if !self.files.contains_key(exe) {
            return Err(bad(format!(
                "the executable {exe} is not among the listed files: list it with its SHA-256"
            )));
        }
        // A script named on the command line is code the program runs: it must be measured too.
        if let Some(arg) = self
            .command
            .iter()
            .skip(1)
            .find(|a| a.starts_with('/') && !self.files.contains_key(a.as_str()))
        {
            return Err(bad(format!(
                "the argument {arg} is a path that is not among the listed files: list it with \
                 its SHA-256 (data reaches the program through its environment, not paths)"
            )));
        }
        if self.timeout_s == 0 || self.timeout_s > 7 * 86_400 {
            return Err(bad("timeout_s must be 1 s to 7 days".into()));
        }
        Ok(())
    }

    /// The listed digests as bytes, by path.
    pub fn digests(&self) -> Vec<(&str, Vec<u8>)> {
        self.files
            .iter()
            .map(|(p, d)| (p.as_str(), hex::decode(d).unwrap_or_default()))
            .collect()
    }
}

/// A training job as the model owner submits it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Job name (letters, digits, `.`, `_`, `-`; at most 64).
    pub id: String,
    /// The dataset (name under which the data owner deposited its key and stored the data).
    pub dataset: String,
    /// Training settings.
    pub train: TrainSpec,
    /// Who receives each output.
    pub outputs: BTreeMap<Output, Stakeholder>,
    /// An external program to run instead of tessera's trainers (its `train` settings are
    /// handed to it); absent: tessera trains the `train.network`.
    #[serde(default)]
    pub program: Option<ProgramSpec>,
}

/// Checks a name used in file names and key contexts.
pub fn check_name(what: &str, name: &str) -> Result<(), AttestedError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(AttestedError::PolicyFile {
            origin: what.into(),
            reason: format!(
                "name {name:?} must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
            ),
        })
    }
}

impl JobSpec {
    /// Parses a job from JSON text.
    pub fn from_json(text: &str, origin: &str) -> Result<JobSpec, AttestedError> {
        let j: JobSpec = serde_json::from_str(text).map_err(|e| AttestedError::PolicyFile {
            origin: origin.into(),
            reason: format!("not a job: {e}"),
        })?;
        j.validate()?;
        Ok(j)
    }

    /// Checks names, training settings, and that both outputs have a recipient.
    pub fn validate(&self) -> Result<(), AttestedError> {
        check_name("job id", &self.id)?;
        check_name("dataset name", &self.dataset)?;
        self.train.config()?;
        if let Some(p) = &self.program {
            p.validate(&self.id)?;
        }
        for o in [Output::TrainedModel, Output::Predictions] {
            if !self.outputs.contains_key(&o) {
                return Err(AttestedError::PolicyFile {
                    origin: format!("job {}", self.id),
                    reason: format!("names no recipient for the {o}"),
                });
            }
        }
        Ok(())
    }

    /// The job as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A job every stakeholder's policy accepts, with the host attestation policy they jointly
/// require.
#[derive(Clone, Debug)]
pub struct AcceptedJob {
    /// The job.
    pub job: JobSpec,
    /// What the training host must prove (trusted EKs, boot PCRs, every allow-list: one per
    /// stakeholder, in the order of [`AcceptedJob::stakeholders`]).
    pub attestation: AttestationPolicy,
    /// The stakeholders' names, by role (in [`Stakeholder::ALL`] order).
    pub stakeholders: BTreeMap<Stakeholder, String>,
}

fn conflict(job: &JobSpec, who: Stakeholder, reason: String) -> AttestedError {
    AttestedError::PolicyConflict {
        job: job.id.clone(),
        stakeholder: who,
        reason,
    }
}

fn parse_hex(
    what: &str,
    who: Stakeholder,
    s: &str,
    len: Option<usize>,
) -> Result<Vec<u8>, AttestedError> {
    let v = hex::decode(s.trim()).map_err(|_| AttestedError::PolicyFile {
        origin: format!("of the {who}"),
        reason: format!("{what} {s:?} is not hex"),
    })?;
    if let Some(n) = len
        && v.len() != n
    {
        return Err(AttestedError::PolicyFile {
            origin: format!("of the {who}"),
            reason: format!("{what} {s:?} has {} bytes, expected {n}", v.len()),
        });
    }
    Ok(v)
}

/// Joins the stakeholders' policies for `job` run by a broker with `broker_measurement`
/// (`simulated`: its TEE is simulated). Fails with [`AttestedError::MissingConsent`] naming
/// the stakeholder whose policy is absent or does not list the job, or with
/// [`AttestedError::PolicyConflict`] naming the stakeholder whose policy cannot hold.
pub fn accept_job(
    job: &JobSpec,
    policies: &[StakeholderPolicy],
    broker_measurement: &[u8; 48],
    simulated: bool,
) -> Result<AcceptedJob, AttestedError> {
    job.validate()?;
    let mut by_role: BTreeMap<Stakeholder, &StakeholderPolicy> = BTreeMap::new();
    for p in policies {
        if by_role.insert(p.stakeholder, p).is_some() {
            return Err(conflict(
                job,
                p.stakeholder,
                "two policies were submitted for the same stakeholder; keep one".into(),
            ));
        }
    }
    let mut ordered = Vec::with_capacity(3);
    for who in Stakeholder::ALL {
        let Some(p) = by_role.get(&who) else {
            return Err(AttestedError::MissingConsent {
                job: job.id.clone(),
                stakeholder: who,
                reason: format!("no {who} policy was submitted"),
            });
        };
        if !p.jobs.iter().any(|j| j == &job.id) {
            return Err(AttestedError::MissingConsent {
                job: job.id.clone(),
                stakeholder: who,
                reason: format!("the policy of {} does not list this job", p.name),
            });
        }
        ordered.push(*p);
    }

    let measurement = hex::encode(broker_measurement);
    for p in &ordered {
        if !p
            .enclave_measurements
            .iter()
            .any(|m| m.trim().eq_ignore_ascii_case(&measurement))
        {
            return Err(conflict(
                job,
                p.stakeholder,
                format!(
                    "the broker enclave's measurement {measurement} is not among its enclave_measurements"
                ),
            ));
        }
        if simulated && !p.allow_simulated_enclave {
            return Err(conflict(
                job,
                p.stakeholder,
                "the broker enclave is SIMULATED (no hardware protection) and the policy does not set allow_simulated_enclave".into(),
            ));
        }
        for (output, recipient) in &job.outputs {
            let allowed = p.outputs.get(output).map(Vec::as_slice).unwrap_or_default();
            if !allowed.contains(recipient) {
                return Err(conflict(
                    job,
                    p.stakeholder,
                    format!(
                        "the job sends the {output} to the {recipient}, which this policy does not allow"
                    ),
                ));
            }
        }
    }

    // Trusted EKs: the infrastructure provider's list, narrowed by any other's.
    let mut eks: Option<Vec<PublicArea>> = None;
    for p in &ordered {
        if p.trusted_eks.is_empty() {
            if p.stakeholder == Stakeholder::InfrastructureProvider {
                return Err(conflict(
                    job,
                    p.stakeholder,
                    "names no trusted endorsement key (trusted_eks): the infrastructure provider must vouch for its hosts' TPMs".into(),
                ));
            }
            continue;
        }
        let mut mine = Vec::new();
        for s in &p.trusted_eks {
            let bytes = parse_hex("trusted EK", p.stakeholder, s, None)?;
            let ek = PublicArea::parse(&bytes).map_err(|e| AttestedError::PolicyFile {
                origin: format!("of the {}", p.stakeholder),
                reason: format!("trusted EK is not a TPMT_PUBLIC: {e}"),
            })?;
            mine.push(ek);
        }
        eks = Some(match eks {
            None => mine,
            Some(prev) => prev
                .into_iter()
                .filter(|e| mine.iter().any(|m| m.name() == e.name()))
                .collect(),
        });
        if eks.as_ref().is_some_and(Vec::is_empty) {
            return Err(conflict(
                job,
                p.stakeholder,
                "no endorsement key is trusted by both this policy and the others".into(),
            ));
        }
    }
    let trusted_eks = eks.unwrap_or_default();

    // Boot PCRs: intersection per PCR.
    let mut boot: BTreeMap<u8, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for p in &ordered {
        for (pcr, values) in &p.boot_pcrs {
            if *pcr > 9 {
                return Err(AttestedError::PolicyFile {
                    origin: format!("of the {}", p.stakeholder),
                    reason: format!(
                        "boot PCR {pcr}: only PCRs 0–9 can be constrained (PCR 10 is IMA's)"
                    ),
                });
            }
            let mine: BTreeSet<Vec<u8>> = values
                .iter()
                .map(|v| parse_hex(&format!("PCR {pcr} value"), p.stakeholder, v, Some(32)))
                .collect::<Result<_, _>>()?;
            let joined: BTreeSet<Vec<u8>> = match boot.get(pcr) {
                None => mine,
                Some(prev) => prev.intersection(&mine).cloned().collect(),
            };
            if joined.is_empty() {
                return Err(conflict(
                    job,
                    p.stakeholder,
                    format!(
                        "boot PCR {pcr}: no value is allowed by both this policy and the others"
                    ),
                ));
            }
            boot.insert(*pcr, joined);
        }
    }

    let mut allow_lists = Vec::with_capacity(3);
    for p in &ordered {
        allow_lists.push(p.allow_list()?);
    }
    let alg: HashAlg = allow_lists
        .first()
        .map(RuntimePolicy::log_hash_alg)
        .unwrap_or(HashAlg::Sha1);
    for (p, l) in ordered.iter().zip(&allow_lists) {
        if l.log_hash_alg() != alg {
            return Err(conflict(
                job,
                p.stakeholder,
                format!(
                    "its allow-list is for {} IMA template hashes, the others' for {alg}",
                    l.log_hash_alg()
                ),
            ));
        }
    }

    Ok(AcceptedJob {
        job: job.clone(),
        attestation: AttestationPolicy {
            trusted_eks,
            boot_pcrs: boot
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            allow_lists,
            ima_template_hash_alg: alg,
            nonce_lifetime: Duration::from_secs(60),
            allow_unquoted_tail: false,
        },
        stakeholders: ordered
            .iter()
            .map(|p| (p.stakeholder, p.name.clone()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobSpec {
        JobSpec {
            id: "j".into(),
            dataset: "d".into(),
            train: TrainSpec {
                network: Network::Mlp,
                width: 1,
                hidden: vec![4],
                shift: 0,
                epochs: 1,
                batch: 8,
                lr: 0.1,
                lr_final: None,
                momentum: 0.9,
                input_scale: 1.0,
                seed: 0,
            },
            program: None,
            outputs: [
                (Output::TrainedModel, Stakeholder::ModelOwner),
                (Output::Predictions, Stakeholder::DataOwner),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn pol(who: Stakeholder, m: &[u8; 48]) -> StakeholderPolicy {
        StakeholderPolicy {
            version: 1,
            stakeholder: who,
            name: who.key().into(),
            jobs: vec!["j".into()],
            enclave_measurements: vec![hex::encode(m)],
            allow_simulated_enclave: true,
            boot_pcrs: BTreeMap::new(),
            ima_allow_list: serde_json::Value::Null,
            trusted_eks: Vec::new(),
            outputs: [
                (Output::TrainedModel, vec![Stakeholder::ModelOwner]),
                (Output::Predictions, vec![Stakeholder::DataOwner]),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn all(m: &[u8; 48]) -> Vec<StakeholderPolicy> {
        Stakeholder::ALL.into_iter().map(|w| pol(w, m)).collect()
    }

    fn rejected_by(r: Result<AcceptedJob, AttestedError>, who: Stakeholder, words: &str) {
        match r {
            Err(AttestedError::PolicyConflict {
                stakeholder,
                reason,
                ..
            }) => {
                assert_eq!(stakeholder, who, "{reason}");
                assert!(reason.contains(words), "{reason}");
            }
            other => panic!("expected a conflict of the {who}: {other:?}"),
        }
    }

    #[test]
    fn conflicts_name_the_stakeholder() {
        let m = [1u8; 48];
        // Another broker measurement.
        let mut ps = all(&m);
        ps[1].enclave_measurements = vec![hex::encode([2u8; 48])];
        rejected_by(
            accept_job(&job(), &ps, &m, true),
            Stakeholder::ModelOwner,
            "measurement",
        );
        // No consent to a simulated enclave.
        let mut ps = all(&m);
        ps[2].allow_simulated_enclave = false;
        rejected_by(
            accept_job(&job(), &ps, &m, true),
            Stakeholder::InfrastructureProvider,
            "SIMULATED",
        );
        // The data owner does not let the model owner have predictions.
        let mut j = job();
        j.outputs
            .insert(Output::Predictions, Stakeholder::ModelOwner);
        rejected_by(
            accept_job(&j, &all(&m), &m, true),
            Stakeholder::DataOwner,
            "predictions",
        );
        // The infrastructure provider names no EK.
        rejected_by(
            accept_job(&job(), &all(&m), &m, true),
            Stakeholder::InfrastructureProvider,
            "trusted endorsement key",
        );
        // Two policies of one stakeholder.
        let mut ps = all(&m);
        ps.push(pol(Stakeholder::DataOwner, &m));
        rejected_by(
            accept_job(&job(), &ps, &m, true),
            Stakeholder::DataOwner,
            "two policies",
        );
    }

    #[test]
    fn job_names_and_settings_checked() {
        let mut j = job();
        j.id = "../etc".into();
        assert!(j.validate().is_err());
        let mut j = job();
        j.train.epochs = 0;
        assert!(j.validate().is_err());
        let mut j = job();
        j.outputs.remove(&Output::Predictions);
        assert!(j.validate().is_err());
        assert!(JobSpec::from_json(&job().to_json(), "t").is_ok());
        assert!(JobSpec::from_json(r#"{"id":"j","dataset":"d","extra":1}"#, "t").is_err());
    }

    /// A job file without the network fields (written before CNN jobs) is an MLP job; the
    /// convolutional settings are refused where they do not apply.
    #[test]
    fn network_settings_checked() {
        let old = r#"{"id":"j","dataset":"d","train":{"hidden":[4],"epochs":1,"batch":8,"lr":0.1},
            "outputs":{"trained_model":"model_owner","predictions":"data_owner"}}"#;
        match JobSpec::from_json(old, "t") {
            Ok(j) => assert_eq!(
                (j.train.network, j.train.width, j.train.shift),
                (Network::Mlp, 1, 0)
            ),
            Err(e) => panic!("{e}"),
        }
        let expect = |j: JobSpec, words: &str| {
            let e = j.validate().map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
        };
        let mut j = job();
        j.train.network = Network::Cnn;
        expect(j.clone(), "hidden applies to the mlp network only");
        j.train.hidden.clear();
        assert!(j.validate().is_ok());
        j.train.width = 2;
        expect(
            j.clone(),
            "width must be 1 to 16, and 1 for the mlp and cnn",
        );
        j.train.network = Network::Vgg;
        assert!(j.validate().is_ok());
        j.train.shift = 9;
        expect(j, "shift must be 0 to 8");
        let mut j = job();
        j.train.shift = 1;
        expect(j, "shift must be 0 to 8");
        let mut j = job();
        j.train.lr_final = Some(0.001);
        expect(
            j.clone(),
            "lr_final must be positive and finite, and is for cnn",
        );
        j.train.network = Network::Cnn;
        j.train.hidden.clear();
        assert!(j.validate().is_ok());
        j.train.lr_final = Some(f32::NAN);
        expect(j, "lr_final must be positive");
    }

    /// A program job lists every file it runs with a SHA-256; anything else is refused with
    /// what to list or change.
    #[test]
    fn program_settings_checked() {
        let digest = "ab".repeat(32);
        let good = ProgramSpec {
            command: vec![
                "/usr/bin/python3".into(),
                "/opt/job/train.py".into(),
                "-q".into(),
            ],
            files: [
                ("/usr/bin/python3".to_string(), digest.clone()),
                ("/opt/job/train.py".to_string(), digest.clone()),
            ]
            .into_iter()
            .collect(),
            timeout_s: 60,
        };
        assert!(good.validate("j").is_ok());
        let refused = |p: ProgramSpec, words: &str| {
            let e = p.validate("j").map(|_| ()).unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
        };
        let mut p = good.clone();
        p.command.clear();
        refused(p, "the command is empty");
        let mut p = good.clone();
        p.command[0] = "/usr/bin/python3.11".into();
        refused(
            p,
            "the executable /usr/bin/python3.11 is not among the listed files",
        );
        let mut p = good.clone();
        p.command.push("/opt/job/helper.py".into());
        refused(
            p,
            "the argument /opt/job/helper.py is a path that is not among the listed",
        );
        let mut p = good.clone();
        p.files.insert("opt/rel.py".into(), digest.clone());
        refused(p, "is not an absolute path");
        let mut p = good.clone();
        p.files.insert("/opt/../etc/x".into(), digest.clone());
        refused(p, "is not an absolute path without '..'");
        let mut p = good.clone();
        p.files.insert("/opt/job/train.py".into(), "xyz".into());
        refused(p, "is not 64 hex digits");
        let mut p = good.clone();
        p.timeout_s = 0;
        refused(p, "timeout_s must be 1 s to 7 days");
        let mut j = job();
        j.program = Some(good);
        assert!(JobSpec::from_json(&j.to_json(), "t").is_ok());
    }
}
