//! The key broker: runs in the (here simulated) enclave, holds the dataset and model keys,
//! accepts jobs every stakeholder consents to, attests training hosts, releases keys only to an
//! attested host, and serves inference with the trained model.
//!
//! # Protocol
//!
//! One [`tessera_runtime::Channel`] per connection (hello handshake: the broker is
//! `Enclave`, stakeholders `Client`, the host agent `Worker`), then [`Request`]s, each answered
//! by one [`Reply`]:
//!
//! - `Evidence{nonce}` (any peer) → the broker's TEE evidence whose report data is
//!   `SHA-512(nonce ‖ broker X25519 public key)`: a stakeholder checks it against its policy's
//!   `enclave_measurements` before it signs anything for this broker or wraps a key to it;
//! - `Stakeholder(`[`Signed`]`)` (role `Client` only): a policy, a withdrawal, a key deposit
//!   (the key wrapped to the broker for context `"deposit\0" ‖ kind ‖ name ‖ measurement`,
//!   the measurement being the one the depositor verified in the evidence) or a job, signed by
//!   the stakeholder whose slot it changes ([`crate::signed`]) → `Accepted{message, receipt}`,
//!   where `receipt` is broker evidence for the nonce [`receipt_nonce`]`(request digest)`, or
//!   `Rejected{reason}`;
//! - the host (role `Worker` only): `AgentHello{job, identity}` → `Challenge`; `AgentEvidence`
//!   (a quote whose binding is [`host_binding`]`(job, host X25519 key)`) → after
//!   [`tessera_tpm::Verifier`] accepts it and every stakeholder's consent is re-checked,
//!   `Keys`: the dataset and model keys, each wrapped to the host key the quote vouches for,
//!   under context `"release\0" ‖ kind ‖ job ‖ quote hash`; otherwise `Rejected` with the
//!   reason.
//!
//! # What the broker accepts from whom
//!
//! The role in a peer's hello is self-declared: it decides which requests a connection may
//! send (a `Worker` connection may only attest, a `Client` connection only send signed
//! stakeholder requests), it does not authenticate anyone. Authority over the stakeholders'
//! state comes from the signatures alone:
//!
//! - Each stakeholder's ed25519 key is pinned in the broker's configuration, which its
//!   measurement covers ([`crate::signed::Pinned`]). A request for a stakeholder's slot is
//!   applied only if that key signed it, over an encoding that names this broker's measurement
//!   and X25519 key.
//! - A stakeholder changes only its own slot: its policy (the policy's `stakeholder` must be
//!   the signer) and its withdrawal; the data owner deposits dataset keys, the model owner
//!   model keys and jobs. Everything else is [`AttestedError::NotYourSlot`].
//! - Every slot (a stakeholder's policy, a key, a job) carries the revision of the request that
//!   set it; a request must carry a higher one ([`AttestedError::StaleRevision`]). A withdrawal
//!   keeps its revision, so an older policy cannot be replayed to restore a withdrawn consent.
//! - State lives in the enclave's memory; each accepted signed request is also written to the
//!   state directory (`signed/<measurement prefix>/`) and, when the broker starts, read back
//!   and verified again (signature, slot, file name), so a file edited or moved on disk is refused
//!   ([`AttestedError::StateFile`]). A deposited key is kept on disk only as its deposit:
//!   wrapped to the broker's X25519 key, which is sealed to its measurement.
//! - The release re-checks every consent and requires that no policy, the job or either key
//!   changed since the host's challenge, under the same lock that applies stakeholder
//!   requests: a withdrawal the broker accepted before the release's check stops it.
//!
//! The channel itself is not encrypted: policies and jobs are public, keys cross it only
//! wrapped, and requests are signed. A network attacker can drop a request or a reply; it
//! cannot make a stakeholder believe a request was applied, because the client checks the
//! receipt (broker evidence over the request's digest).

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use subtle::ConstantTimeEq;
use tessera_attest::sim::PlatformKey;
use tessera_runtime::enclave::{
    Enclave, EnclaveConfig, Mode, ServerHandle, serve_enclave, serve_tcp,
};
use tessera_runtime::seal::{seal, unseal, write_atomic};
use tessera_runtime::{Channel, ChannelOptions, Role, RuntimeError};
use tessera_tpm::{AgentIdentity, Challenge, PendingAttestation, Verifier, VerifyError};

use crate::dataset::{Key, decrypt_model, key_from};
use crate::error::AttestedError;
use crate::policy::{
    AcceptedJob, JobSpec, ProgramSpec, Stakeholder, StakeholderPolicy, accept_job, check_name,
};
use crate::signed::{Action, BrokerId, Pinned, Signed};
use crate::wrap::{KeyPair, wrap};

/// Fractional bits of the integer semantics the inference enclave runs a trained model in.
pub const INFERENCE_FRAC_BITS: u32 = 12;

/// What the broker's measurement covers besides its binary and the pinned stakeholder keys.
pub const BROKER_POLICY: &[u8] =
    b"tessera-attested broker v2; mode sim; signed stakeholder requests";
const HOST_BINDING: &[u8] = b"tessera-attested host key v1\0";
const RECEIPT: &[u8] = b"tessera-attested receipt v1\0";

/// Which key a stakeholder deposits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyKind {
    /// The data owner's dataset key (named by the dataset).
    Dataset,
    /// The model owner's model key (named by the job).
    Model,
}

impl KeyKind {
    /// The name in wrap contexts and file names.
    pub fn tag(self) -> &'static str {
        match self {
            KeyKind::Dataset => "dataset",
            KeyKind::Model => "model",
        }
    }

    /// The only stakeholder who may deposit this kind of key.
    pub fn owner(self) -> Stakeholder {
        match self {
            KeyKind::Dataset => Stakeholder::DataOwner,
            KeyKind::Model => Stakeholder::ModelOwner,
        }
    }
}

/// The wrap context of a key deposited with the broker.
pub fn deposit_context(kind: KeyKind, name: &str, measurement: &[u8; 48]) -> Vec<u8> {
    let mut c = b"deposit\0".to_vec();
    c.extend_from_slice(kind.tag().as_bytes());
    c.push(0);
    c.extend_from_slice(name.as_bytes());
    c.push(0);
    c.extend_from_slice(measurement);
    c
}

/// The wrap context of a key released to an attested host.
pub fn release_context(kind: KeyKind, job: &str, quote_hash: &[u8; 32]) -> Vec<u8> {
    let mut c = b"release\0".to_vec();
    c.extend_from_slice(kind.tag().as_bytes());
    c.push(0);
    c.extend_from_slice(job.as_bytes());
    c.push(0);
    c.extend_from_slice(quote_hash);
    c
}

/// The bytes a host binds into its quote: `"tessera-attested host key v1\0" ‖ u16be(len job)
/// ‖ job ‖ X25519 public key`.
pub fn host_binding(job: &str, host_key: &[u8; 32]) -> Vec<u8> {
    let mut b = HOST_BINDING.to_vec();
    b.extend_from_slice(&(job.len().min(u16::MAX as usize) as u16).to_be_bytes());
    b.extend_from_slice(job.as_bytes());
    b.extend_from_slice(host_key);
    b
}

/// The nonce of the evidence that acknowledges a signed request with digest `digest`
/// ([`Signed::digest`]): `SHA-256("tessera-attested receipt v1\0" ‖ digest)`.
pub fn receipt_nonce(digest: &[u8; 32]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(RECEIPT);
    h.update(digest);
    h.finalize().into()
}

/// A request to the broker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// The broker's TEE evidence for a fresh nonce.
    Evidence {
        /// The requester's nonce.
        nonce: [u8; 32],
    },
    /// A stakeholder's signed request.
    Stakeholder(Signed),
    /// A host asks to run a job.
    AgentHello {
        /// The job.
        job: String,
        /// Its TPM keys.
        identity: AgentIdentity,
    },
    /// The host's answer to the challenge.
    AgentEvidence {
        /// Quote, PCRs, IMA log.
        evidence: tessera_tpm::Evidence,
    },
}

impl Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Evidence { .. } => "Evidence",
            Request::Stakeholder(_) => "signed stakeholder",
            Request::AgentHello { .. } => "AgentHello",
            Request::AgentEvidence { .. } => "AgentEvidence",
        }
    }
}

/// The broker's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// TEE evidence and the key it binds.
    Evidence {
        /// Encoded [`tessera_attest::Evidence`].
        evidence: Vec<u8>,
        /// The broker's X25519 public key.
        public_key: [u8; 32],
        /// Whether the TEE is simulated (no security).
        simulated: bool,
    },
    /// A signed request was applied.
    Accepted {
        /// What was done.
        message: String,
        /// Broker evidence for [`receipt_nonce`] of the request's digest.
        receipt: Vec<u8>,
    },
    /// Refused.
    Rejected {
        /// Why.
        reason: String,
    },
    /// The attestation challenge for a host.
    Challenge {
        /// Nonce and credential.
        challenge: Challenge,
        /// The job the host attests for (a program job's files must be measured before the
        /// quote).
        job: JobSpec,
    },
    /// Keys released to an attested host.
    Keys {
        /// The job to run.
        job: JobSpec,
        /// SHA-256 of the accepted quote (part of the wrap context).
        quote_hash: [u8; 32],
        /// The dataset key, wrapped to the host key.
        dataset_key: Vec<u8>,
        /// The model key, wrapped to the host key.
        model_key: Vec<u8>,
    },
}

/// A key release, as the broker records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Release {
    /// Job.
    pub job: String,
    /// The host's EK Name (hex).
    pub ek_name: String,
    /// The AK Name (hex).
    pub ak_name: String,
    /// SHA-256 of the quote (hex).
    pub quote_hash: String,
    /// IMA entries checked against every allow-list.
    pub ima_entries: usize,
    /// Of those, accepted by an exclude rule.
    pub ima_excluded: usize,
    /// The host key the keys were wrapped to (hex).
    pub host_key: String,
}

/// How to open a broker.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Signed state, the sealed broker key and the simulated platform key.
    pub state_dir: PathBuf,
    /// The broker binary's bytes for the measurement; `None`: this executable.
    pub binary: Option<Vec<u8>>,
    /// The stakeholders' pinned signing keys (part of the measurement).
    pub stakeholders: Pinned,
}

/// One slot's value and the revision of the signed request that set it.
struct Entry<T> {
    revision: u64,
    value: T,
}

/// The broker's state (in enclave memory).
#[derive(Default)]
struct State {
    /// `None`: withdrawn.
    policies: BTreeMap<Stakeholder, Entry<Option<StakeholderPolicy>>>,
    keys: BTreeMap<(KeyKind, String), Entry<Key>>,
    jobs: BTreeMap<String, Entry<JobSpec>>,
}

/// A checked signed request, ready to apply.
enum Change {
    Policy(Stakeholder, Option<StakeholderPolicy>),
    Key(KeyKind, String, Key),
    Job(JobSpec),
}

impl Change {
    fn file(&self) -> String {
        match self {
            Change::Policy(who, _) => format!("policy-{}.json", who.key()),
            Change::Key(kind, name, _) => format!("key-{}-{name}.json", kind.tag()),
            Change::Job(j) => format!("job-{}.json", j.id),
        }
    }
}

/// The revisions of everything a job's release depends on, in a fixed order.
type Snapshot = Vec<(String, u64)>;

impl State {
    fn snapshot(&self, job: &JobSpec) -> Snapshot {
        let mut v: Snapshot = Stakeholder::ALL
            .into_iter()
            .map(|who| {
                (
                    format!("the {who}'s policy"),
                    self.policies.get(&who).map_or(0, |e| e.revision),
                )
            })
            .collect();
        v.push((
            format!("job {:?}", job.id),
            self.jobs.get(&job.id).map_or(0, |e| e.revision),
        ));
        for (kind, name) in [(KeyKind::Dataset, &job.dataset), (KeyKind::Model, &job.id)] {
            v.push((
                format!("the {} key of {name:?}", kind.tag()),
                self.keys
                    .get(&(kind, name.clone()))
                    .map_or(0, |e| e.revision),
            ));
        }
        v
    }

    fn key(&self, kind: KeyKind, name: &str) -> Result<Key, AttestedError> {
        match self.keys.get(&(kind, name.to_string())) {
            Some(e) => Ok(e.value.clone()),
            None => {
                let who = match kind {
                    KeyKind::Dataset => "data owner must upload the dataset key",
                    KeyKind::Model => "model owner must deposit the model key",
                };
                Err(AttestedError::NotFound(format!(
                    "the broker holds no {} key for {name:?}: the {who}",
                    kind.tag()
                )))
            }
        }
    }

    fn job(&self, id: &str) -> Result<&JobSpec, AttestedError> {
        self.jobs.get(id).map(|e| &e.value).ok_or_else(|| {
            AttestedError::NotFound(format!(
                "no job {id:?} was submitted to this broker: submit it first"
            ))
        })
    }
}

fn fresh(current: Option<u64>, revision: u64, what: &str) -> Result<(), AttestedError> {
    match current {
        Some(current) if revision <= current => Err(AttestedError::StaleRevision {
            what: what.into(),
            revision,
            current,
        }),
        _ => Ok(()),
    }
}

fn role_name(role: Role) -> String {
    match role {
        Role::Client => "stakeholder (Client)".into(),
        Role::Worker => "host agent (Worker)".into(),
        r => format!("{r:?}"),
    }
}

/// The broker. Simulated TEE: the measurement and sealing are real code paths, the protection
/// is not (it announces this on stderr when opened and in every evidence reply).
pub struct Broker {
    dir: PathBuf,
    platform: PlatformKey,
    binary: Vec<u8>,
    measurement: [u8; 48],
    identity: KeyPair,
    pinned: Pinned,
    state: Mutex<State>,
    releases: Mutex<Vec<Release>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("dir", &self.dir)
            .field("measurement", &hex::encode(self.measurement))
            .field("simulated", &true)
            .finish()
    }
}

impl Broker {
    /// The measurement of a broker with `binary` and `stakeholders` pinned.
    pub fn measure(binary: &[u8], stakeholders: &Pinned) -> [u8; 48] {
        tessera_attest::measure(&[binary, BROKER_POLICY, &stakeholders.measured()])
    }

    /// Opens (or creates) the broker state: platform key, sealed X25519 identity, and the
    /// signed requests applied so far (each verified again).
    pub fn open(cfg: BrokerConfig) -> Result<Broker, AttestedError> {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "tessera broker: {}",
            tessera_runtime::enclave::SIMULATED_WARNING
        );
        let binary = match cfg.binary {
            Some(b) => b,
            None => tessera_runtime::enclave::own_binary()?,
        };
        let measurement = Broker::measure(&binary, &cfg.stakeholders);
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| AttestedError::io("creating", &cfg.state_dir, e))?;
        let platform = PlatformKey::load_or_create(&cfg.state_dir.join("platform.key"))
            .map_err(|e| AttestedError::Runtime(RuntimeError::Attestation(e.to_string())))?;
        let seal_key = platform.seal_key(&measurement);
        let _ = writeln!(
            std::io::stderr(),
            "tessera broker: simulated TEE: the broker's identity key, which unwraps every \
             deposited stakeholder key, is sealed under {} on the host's disk: whoever can read \
             that folder can read the keys (no protection)",
            cfg.state_dir.join("platform.key").display()
        );
        let id_path = cfg
            .state_dir
            .join("sealed")
            .join(format!("broker-{}.x25519", hex::encode(&measurement[..16])));
        let identity = if id_path.exists() {
            let bytes =
                std::fs::read(&id_path).map_err(|e| AttestedError::io("reading", &id_path, e))?;
            let plain = unseal(&seal_key, &measurement, &bytes)?;
            KeyPair::from_secret(key_from(&plain)?)
        } else {
            let kp = KeyPair::generate()?;
            write_atomic(&id_path, &seal(&seal_key, &measurement, kp.secret())?)?;
            kp
        };
        let broker = Broker {
            dir: cfg.state_dir,
            platform,
            binary,
            measurement,
            identity,
            pinned: cfg.stakeholders,
            state: Mutex::new(State::default()),
            releases: Mutex::new(Vec::new()),
        };
        broker.load_state()?;
        Ok(broker)
    }

    fn signed_dir(&self) -> PathBuf {
        self.dir
            .join("signed")
            .join(hex::encode(&self.measurement[..16]))
    }

    /// Reads back and re-verifies every stored signed request.
    fn load_state(&self) -> Result<(), AttestedError> {
        let dir = self.signed_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(AttestedError::io("reading", &dir, e)),
        };
        let mut files = Vec::new();
        for e in entries {
            let e = e.map_err(|e| AttestedError::io("reading", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                files.push((name, e.path()));
            }
        }
        // Policies first, then keys, then jobs (file names sort that way: j < k < p, so sort
        // by kind explicitly).
        files.sort_by_key(|(n, _)| {
            (
                ["policy-", "key-", "job-"]
                    .iter()
                    .position(|p| n.starts_with(p)),
                n.clone(),
            )
        });
        let mut st = self.lock()?;
        for (name, path) in files {
            let bad = |reason: String| AttestedError::StateFile {
                path: path.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| AttestedError::io("reading", &path, e))?;
            let req: Signed = serde_json::from_str(&text)
                .map_err(|e| bad(format!("not a signed request: {e}")))?;
            let change = self
                .check(&st, &req, false)
                .map_err(|e| bad(format!("refused on reading it back ({e}); remove it, and have the stakeholder submit again")))?;
            if change.file() != name {
                return Err(bad(format!(
                    "holds the request for {}, not for this file: the state directory was tampered with",
                    change.file()
                )));
            }
            Self::commit(&mut st, req.revision, change);
        }
        Ok(())
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, AttestedError> {
        self.state.lock().map_err(|_| {
            AttestedError::Refused(
                "the broker's state is unusable after a failure in another request; restart the broker".into(),
            )
        })
    }

    /// The broker enclave's measurement (what stakeholder policies list).
    pub fn measurement(&self) -> &[u8; 48] {
        &self.measurement
    }

    /// The identity stakeholders sign for: measurement and X25519 key.
    pub fn id(&self) -> BrokerId {
        BrokerId {
            measurement: self.measurement,
            public_key: *self.identity.public(),
        }
    }

    /// The pinned stakeholder keys.
    pub fn stakeholders(&self) -> &Pinned {
        &self.pinned
    }

    /// Always true here: the broker's TEE is simulated.
    pub fn simulated(&self) -> bool {
        true
    }

    /// The broker's X25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        self.identity.public()
    }

    /// The simulated platform key's fingerprint.
    pub fn platform_fingerprint(&self) -> String {
        self.platform.fingerprint()
    }

    /// Evidence binding `nonce` and the broker's public key.
    pub fn evidence(&self, nonce: &[u8; 32]) -> Vec<u8> {
        let rd = tessera_attest::report_data(nonce, self.identity.public());
        self.platform.attest(&self.measurement, &rd).encode()
    }

    fn trusts_me(&self, policy: &StakeholderPolicy) -> Result<(), AttestedError> {
        let m = hex::encode(self.measurement);
        if policy
            .enclave_measurements
            .iter()
            .any(|x| x.trim().eq_ignore_ascii_case(&m))
        {
            Ok(())
        } else {
            Err(AttestedError::PolicyFile {
                origin: format!("of the {} ({})", policy.stakeholder, policy.name),
                reason: format!(
                    "does not list this broker's measurement {m} in enclave_measurements"
                ),
            })
        }
    }

    /// Checks a signed request against the state: signature by the slot's stakeholder, the
    /// slot is the signer's, the revision is higher, the content is valid (`live`: also that a
    /// job is acceptable now).
    fn check(&self, st: &State, req: &Signed, live: bool) -> Result<Change, AttestedError> {
        req.verify(&self.pinned, &self.id())?;
        let who = req.stakeholder;
        match &req.action {
            Action::SubmitPolicy { json } => {
                let p = StakeholderPolicy::from_json(json, "submitted policy")?;
                if p.stakeholder != who {
                    return Err(AttestedError::NotYourSlot {
                        signer: who,
                        owner: p.stakeholder,
                        what: format!("the {}'s policy", p.stakeholder),
                    });
                }
                fresh(
                    st.policies.get(&who).map(|e| e.revision),
                    req.revision,
                    &format!("the {who}'s policy"),
                )?;
                self.trusts_me(&p)?;
                // Round trip: what is stored must read back.
                StakeholderPolicy::from_json(&p.to_json(), "submitted policy")?;
                Ok(Change::Policy(who, Some(p)))
            }
            Action::WithdrawPolicy => {
                fresh(
                    st.policies.get(&who).map(|e| e.revision),
                    req.revision,
                    &format!("the {who}'s policy"),
                )?;
                Ok(Change::Policy(who, None))
            }
            Action::DepositKey {
                kind,
                name,
                wrapped,
            } => {
                check_name("key name", name)?;
                if kind.owner() != who {
                    return Err(AttestedError::NotYourSlot {
                        signer: who,
                        owner: kind.owner(),
                        what: format!("the {} key of {name:?}", kind.tag()),
                    });
                }
                fresh(
                    st.keys.get(&(*kind, name.clone())).map(|e| e.revision),
                    req.revision,
                    &format!("the {} key of {name:?}", kind.tag()),
                )?;
                let ctx = deposit_context(*kind, name, &self.measurement);
                let key = key_from(&self.identity.unwrap_key(&ctx, wrapped)?)?;
                Ok(Change::Key(*kind, name.clone(), key))
            }
            Action::SubmitJob { json } => {
                let j = JobSpec::from_json(json, "submitted job")?;
                if who != Stakeholder::ModelOwner {
                    return Err(AttestedError::NotYourSlot {
                        signer: who,
                        owner: Stakeholder::ModelOwner,
                        what: format!("job {:?}", j.id),
                    });
                }
                fresh(
                    st.jobs.get(&j.id).map(|e| e.revision),
                    req.revision,
                    &format!("job {:?}", j.id),
                )?;
                if live {
                    self.accept(st, &j)?;
                    st.key(KeyKind::Dataset, &j.dataset)?;
                    st.key(KeyKind::Model, &j.id)?;
                }
                Ok(Change::Job(j))
            }
        }
    }

    fn commit(st: &mut State, revision: u64, change: Change) {
        match change {
            Change::Policy(who, p) => {
                st.policies.insert(who, Entry { revision, value: p });
            }
            Change::Key(kind, name, key) => {
                st.keys.insert(
                    (kind, name),
                    Entry {
                        revision,
                        value: key,
                    },
                );
            }
            Change::Job(j) => {
                st.jobs.insert(j.id.clone(), Entry { revision, value: j });
            }
        }
    }

    /// Applies a stakeholder's signed request (see the module documentation for the rules);
    /// returns what was done. Nothing changes unless every check passes.
    pub fn apply_signed(&self, req: &Signed) -> Result<String, AttestedError> {
        let mut st = self.lock()?;
        let change = self.check(&st, req, true)?;
        let who = req.stakeholder;
        let rev = req.revision;
        let message = match &change {
            Change::Policy(_, Some(p)) => {
                format!("policy of the {who} ({}) stored at revision {rev}", p.name)
            }
            Change::Policy(_, None) => {
                format!("the {who} withdrew its policy at revision {rev}: it consents to no job")
            }
            Change::Key(kind, name, _) => {
                format!("{} key for {name:?} sealed at revision {rev}", kind.tag())
            }
            Change::Job(j) => {
                let a = self.accept(&st, j)?;
                format!(
                    "job {:?} accepted by {} (revision {rev})",
                    j.id,
                    a.stakeholders
                        .iter()
                        .map(|(k, v)| format!("the {k} ({v})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        };
        let text = serde_json::to_string(req)
            .map_err(|e| AttestedError::Protocol(format!("encoding a signed request: {e}")))?;
        write_atomic(&self.signed_dir().join(change.file()), text.as_bytes())?;
        Self::commit(&mut st, rev, change);
        Ok(message)
    }

    /// The current policies (withdrawn ones left out).
    pub fn policies(&self) -> Result<Vec<StakeholderPolicy>, AttestedError> {
        let st = self.lock()?;
        Ok(st
            .policies
            .values()
            .filter_map(|e| e.value.clone())
            .collect())
    }

    /// Joins the current policies for `job`; a withdrawn policy is a missing consent.
    fn accept(&self, st: &State, job: &JobSpec) -> Result<AcceptedJob, AttestedError> {
        for who in Stakeholder::ALL {
            if let Some(Entry {
                revision,
                value: None,
            }) = st.policies.get(&who)
            {
                return Err(AttestedError::MissingConsent {
                    job: job.id.clone(),
                    stakeholder: who,
                    reason: format!("the {who} withdrew its policy (revision {revision})"),
                });
            }
        }
        let policies: Vec<StakeholderPolicy> = st
            .policies
            .values()
            .filter_map(|e| e.value.clone())
            .collect();
        accept_job(job, &policies, &self.measurement, self.simulated())
    }

    /// A submitted job, re-checked against the policies as they are now (a withdrawn consent
    /// stops it).
    pub fn accepted_job(&self, id: &str) -> Result<AcceptedJob, AttestedError> {
        check_name("job id", id)?;
        let st = self.lock()?;
        let job = st.job(id)?.clone();
        self.accept(&st, &job)
    }

    /// Key releases so far (this process).
    pub fn releases(&self) -> Vec<Release> {
        self.releases.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Issues a host challenge for `job`.
    pub fn challenge(
        &self,
        job: &str,
        identity: &AgentIdentity,
    ) -> Result<(Challenge, HostSession), AttestedError> {
        check_name("job id", job)?;
        let (accepted, snapshot) = {
            let st = self.lock()?;
            let j = st.job(job)?.clone();
            let accepted = self.accept(&st, &j)?;
            st.key(KeyKind::Dataset, &j.dataset)?;
            st.key(KeyKind::Model, &j.id)?;
            let snapshot = st.snapshot(&j);
            (accepted, snapshot)
        };
        let verifier = Verifier::new(accepted.attestation.clone())?;
        let (challenge, pending) = verifier.challenge(identity)?;
        Ok((
            challenge,
            HostSession {
                accepted,
                snapshot,
                verifier,
                pending,
            },
        ))
    }

    /// Verifies the host's evidence, re-checks every stakeholder's consent and that nothing
    /// changed since the challenge, and only then wraps both keys to the host key its quote
    /// binds.
    pub fn release(
        &self,
        session: HostSession,
        evidence: &tessera_tpm::Evidence,
    ) -> Result<Reply, AttestedError> {
        let HostSession {
            accepted,
            snapshot,
            verifier,
            pending,
        } = session;
        let verdict = match verifier.verify(pending, evidence) {
            Ok(v) => v,
            // Name whose allow-list refused the entry (the allow-lists are in the order of
            // `accepted.stakeholders`).
            Err(VerifyError::EntryNotAllowed {
                index,
                allow_list,
                reason,
            }) => {
                return Err(match accepted.stakeholders.iter().nth(allow_list) {
                    Some((who, name)) => AttestedError::NotAllowed {
                        index,
                        stakeholder: *who,
                        name: name.clone(),
                        reason,
                    },
                    None => AttestedError::Attestation(VerifyError::EntryNotAllowed {
                        index,
                        allow_list,
                        reason,
                    }),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let job_id = &accepted.job.id;
        let prefix = host_binding(job_id, &[0u8; 32]);
        let bind = verdict.binding.as_slice();
        let host_key: [u8; 32] = match (
            bind.len() == prefix.len(),
            bind.split_at_checked(prefix.len() - 32),
        ) {
            (true, Some((head, key))) if bool::from(head.ct_eq(&prefix[..prefix.len() - 32])) => {
                key.try_into()
                    .map_err(|_| AttestedError::Protocol("host key binding malformed".into()))?
            }
            _ => {
                return Err(AttestedError::Protocol(format!(
                    "the quote's binding is not a host key for job {job_id:?}: no key released"
                )));
            }
        };
        // From here to the wraps, no stakeholder request can be applied: a withdrawal is
        // either seen here or comes after the keys left.
        let st = self.lock()?;
        let job = st.job(job_id)?.clone();
        self.accept(&st, &job)?;
        for (then, now) in snapshot.iter().zip(st.snapshot(&job)) {
            if then.1 != now.1 {
                return Err(AttestedError::ChangedSinceChallenge { what: now.0 });
            }
        }
        if let Some(program) = &job.program {
            check_program_measured(program, &verdict.ima_files)?;
        }
        let dk = st.key(KeyKind::Dataset, &job.dataset)?;
        let mk = st.key(KeyKind::Model, &job.id)?;
        let dataset_key = wrap(
            &host_key,
            &release_context(KeyKind::Dataset, &job.id, &verdict.quote_hash),
            dk.as_ref(),
        )?;
        let model_key = wrap(
            &host_key,
            &release_context(KeyKind::Model, &job.id, &verdict.quote_hash),
            mk.as_ref(),
        )?;
        drop(st);
        let rec = Release {
            job: job.id.clone(),
            ek_name: hex::encode(&verdict.ek_name),
            ak_name: hex::encode(&verdict.ak_name),
            quote_hash: hex::encode(verdict.quote_hash),
            ima_entries: verdict.ima_entries,
            ima_excluded: verdict.ima_excluded,
            host_key: hex::encode(host_key),
        };
        if let Ok(mut r) = self.releases.lock() {
            r.push(rec);
        }
        Ok(Reply::Keys {
            job,
            quote_hash: verdict.quote_hash,
            dataset_key,
            model_key,
        })
    }

    /// Answers one request from a peer that declared `role` (`session`: the pending host
    /// attestation of this connection). Each request is accepted only from the role that may
    /// send it ([`AttestedError::WrongRole`]).
    pub fn dispatch(
        &self,
        role: Role,
        req: Request,
        session: &mut Option<HostSession>,
    ) -> Result<Reply, AttestedError> {
        let wrong = |req: &Request, allowed: &'static str| AttestedError::WrongRole {
            request: req.name(),
            role: role_name(role),
            allowed,
        };
        match req {
            Request::Evidence { nonce } => Ok(Reply::Evidence {
                evidence: self.evidence(&nonce),
                public_key: *self.public_key(),
                simulated: self.simulated(),
            }),
            Request::Stakeholder(_) if role != Role::Client => Err(wrong(
                &req,
                "stakeholders, connected as Client, with signed requests",
            )),
            Request::Stakeholder(signed) => {
                let message = self.apply_signed(&signed)?;
                let receipt = self.evidence(&receipt_nonce(&signed.digest(&self.id())));
                Ok(Reply::Accepted { message, receipt })
            }
            Request::AgentHello { .. } | Request::AgentEvidence { .. } if role != Role::Worker => {
                Err(wrong(&req, "the host agent, connected as Worker"))
            }
            Request::AgentHello { job, identity } => {
                self.challenge(&job, &identity).map(|(challenge, s)| {
                    let job = s.accepted.job.clone();
                    *session = Some(s);
                    Reply::Challenge { challenge, job }
                })
            }
            Request::AgentEvidence { evidence } => match session.take() {
                Some(s) => self.release(s, &evidence),
                None => Err(AttestedError::Protocol(
                    "evidence without a pending challenge: send AgentHello first".into(),
                )),
            },
        }
    }

    /// [`Broker::dispatch`], with an error answered as `Rejected{reason}`.
    pub fn handle(&self, role: Role, req: Request, session: &mut Option<HostSession>) -> Reply {
        self.dispatch(role, req, session)
            .unwrap_or_else(|e| Reply::Rejected {
                reason: e.to_string(),
            })
    }

    /// Serves one connection until the peer closes.
    pub fn serve(&self, raw: TcpStream) -> Result<(), AttestedError> {
        let mut ch = Channel::new(raw, ChannelOptions::default())?;
        let role = ch.handshake(Role::Enclave, &[Role::Client, Role::Worker])?;
        let mut session = None;
        loop {
            let req = match ch.recv::<Request>() {
                Ok(r) => r,
                Err(RuntimeError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let reply = self.handle(role, req, &mut session);
            ch.send(&reply)?;
        }
    }

    /// Decrypts the trained model of `job` (the deposited model key) inside the broker and
    /// starts the `tee` inference enclave with it on `listener`.
    pub fn start_inference(
        &self,
        job: &str,
        encrypted_model: &[u8],
        listener: TcpListener,
    ) -> Result<InferenceService, AttestedError> {
        let accepted = self.accepted_job(job)?;
        let mk = self.lock()?.key(KeyKind::Model, job)?;
        let onnx = decrypt_model(&mk, job, encrypted_model)?;
        let enclave = Enclave::start(EnclaveConfig {
            mode: Mode::Sim,
            // The same simulated platform (key file) as the broker.
            state_dir: self.dir.clone(),
            model_onnx: onnx.to_vec(),
            // 12 fractional bits: at the default 8, a trained CNN's dense weights (|w| ≈ 0.03)
            // are quantized in steps of 0.004 and the held-out accuracy drops measurably.
            semantics: tessera_engine::semantics::Semantics::Pow2(
                tessera_engine::quant::QuantConfig {
                    frac_bits: INFERENCE_FRAC_BITS,
                    max_bits: None,
                },
            ),
            profile: tessera_runtime::cost::SGX1,
            binary: Some(self.binary.clone()),
            channel: ChannelOptions::default(),
            backend: Default::default(),
            limits: tessera_model::ImportLimits::default(),
        })?;
        let measurement = *enclave.measurement();
        let server = serve_enclave(enclave, listener, 16)?;
        Ok(InferenceService {
            job: accepted.job.id,
            measurement,
            server,
        })
    }
}

/// A host attestation in progress on one connection.
pub struct HostSession {
    accepted: AcceptedJob,
    snapshot: Snapshot,
    verifier: Verifier,
    pending: PendingAttestation,
}

impl std::fmt::Debug for HostSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSession")
            .field("job", &self.accepted.job.id)
            .field("pending", &self.pending)
            .finish()
    }
}

/// The inference enclave serving a trained model.
pub struct InferenceService {
    /// The job.
    pub job: String,
    /// The inference enclave's measurement (binary, trained model, enclave policy).
    pub measurement: [u8; 48],
    /// The TCP server (dropping it stops accepting).
    pub server: ServerHandle,
}

/// Serves `broker` on `listener`, a thread per connection.
pub fn serve_broker(
    broker: Arc<Broker>,
    listener: TcpListener,
) -> Result<ServerHandle, AttestedError> {
    Ok(serve_tcp(listener, 32, move |s| {
        broker
            .serve(s)
            .map_err(|e| RuntimeError::Protocol(e.to_string()))
    })?)
}

pub use crate::broker_client::{BrokerClient, stakeholder_names, verify_broker_evidence};

/// Every file of a program job must be in the quoted IMA log, measured with SHA-256 and the
/// job's digest; the last measurement of a path counts (a file changed after it was first
/// measured is measured again).
pub fn check_program_measured(
    program: &ProgramSpec,
    files: &[(Vec<u8>, tessera_tpm::FileDigest)],
) -> Result<(), AttestedError> {
    for (path, want) in program.digests() {
        let last = files
            .iter()
            .rev()
            .find(|(p, _)| p.as_slice() == path.as_bytes());
        let reason = match last {
            None => {
                "is not in the quoted IMA log (it was not measured before the quote)".to_string()
            }
            Some((_, d)) if d.algorithm != "sha256" => format!(
                "was measured with {}, not sha256: set the host's IMA hash to sha256",
                d.algorithm
            ),
            Some((_, d)) if d.value != want => format!(
                "was measured with SHA-256 {}, not the job's {}",
                hex::encode(&d.value),
                hex::encode(&want)
            ),
            Some(_) => continue,
        };
        return Err(AttestedError::ProgramNotMeasured {
            path: path.to_string(),
            reason,
        });
    }
    Ok(())
}
