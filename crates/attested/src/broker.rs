//! The key broker: runs in the (here simulated) enclave, keeps the dataset and model keys
//! sealed, accepts jobs every stakeholder consents to, attests training hosts, releases keys
//! only to an attested host, and serves inference with the trained model.
//!
//! # Protocol
//!
//! One [`tessera_runtime::Channel`] per connection (hello handshake: the broker is
//! `Enclave`, stakeholders `Client`, the host agent `Worker`), then [`Request`]s, each answered
//! by one [`Reply`]:
//!
//! - `Evidence{nonce}` → the broker's TEE evidence whose report data is
//!   `SHA-512(nonce ‖ broker X25519 public key)`: a stakeholder checks it against its policy's
//!   `enclave_measurements` before wrapping a key to that public key;
//! - `SubmitPolicy`, `DepositKey` (a key wrapped to the broker for context
//!   `"deposit\0" ‖ kind ‖ name ‖ measurement`), `SubmitJob` → `Accepted` or `Rejected{reason}`;
//! - the host: `AgentHello{job, identity}` → `Challenge`; `AgentEvidence` (a quote whose
//!   binding is [`host_binding`]`(job, host X25519 key)`) → after [`tessera_tpm::Verifier`]
//!   accepts it, `Keys`: the dataset and model keys, each wrapped to the host key the quote
//!   vouches for, under context `"release\0" ‖ kind ‖ job ‖ quote hash`; otherwise
//!   `Rejected` with the verifier's reason.
//!
//! The channel itself is not encrypted: policies and jobs are public, keys cross it only
//! wrapped. Anyone who can reach the broker may submit a policy; authenticating stakeholders
//! (signed policies) is out of scope here.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tessera_attest::sim::PlatformKey;
use tessera_runtime::enclave::{
    Enclave, EnclaveConfig, Mode, ServerHandle, serve_enclave, serve_tcp,
};
use tessera_runtime::seal::{seal, unseal, write_atomic};
use tessera_runtime::{Channel, ChannelOptions, Role, RuntimeError};
use tessera_tpm::{AgentIdentity, Challenge, PendingAttestation, Verifier, VerifyError};
use zeroize::Zeroizing;

use crate::dataset::{Key, decrypt_model, key_from};
use crate::error::{AttestedError, random};
use crate::policy::{AcceptedJob, JobSpec, Stakeholder, StakeholderPolicy, accept_job, check_name};
use crate::wrap::{KeyPair, wrap};

/// What the broker's measurement covers besides its binary.
pub const BROKER_POLICY: &[u8] = b"tessera-attested broker v1; mode sim";
const HOST_BINDING: &[u8] = b"tessera-attested host key v1\0";

/// Which key a stakeholder deposits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    /// The data owner's dataset key (named by the dataset).
    Dataset,
    /// The model owner's model key (named by the job).
    Model,
}

impl KeyKind {
    fn tag(self) -> &'static str {
        match self {
            KeyKind::Dataset => "dataset",
            KeyKind::Model => "model",
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

/// A request to the broker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// The broker's TEE evidence for a fresh nonce.
    Evidence {
        /// The requester's nonce.
        nonce: [u8; 32],
    },
    /// A stakeholder policy (JSON).
    SubmitPolicy {
        /// The policy text.
        json: String,
    },
    /// A key wrapped to the broker.
    DepositKey {
        /// Which key.
        kind: KeyKind,
        /// Dataset or job name.
        name: String,
        /// [`crate::wrap::wrap`] to the broker key under [`deposit_context`].
        wrapped: Vec<u8>,
    },
    /// A job (JSON).
    SubmitJob {
        /// The job text.
        json: String,
    },
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
    /// Done.
    Accepted {
        /// What was done.
        message: String,
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
    /// Sealed keys, policies, jobs and the simulated platform key.
    pub state_dir: PathBuf,
    /// The broker binary's bytes for the measurement; `None`: this executable.
    pub binary: Option<Vec<u8>>,
}

/// The broker. Simulated TEE: the measurement and sealing are real code paths, the protection
/// is not (it announces this on stderr when opened and in every evidence reply).
pub struct Broker {
    dir: PathBuf,
    platform: PlatformKey,
    binary: Vec<u8>,
    measurement: [u8; 48],
    seal_key: Zeroizing<[u8; 32]>,
    identity: KeyPair,
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
    /// Opens (or creates) the broker state: platform key, sealed X25519 identity.
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
        let measurement = tessera_attest::measure(&[&binary, BROKER_POLICY]);
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| AttestedError::io("creating", &cfg.state_dir, e))?;
        let platform = PlatformKey::load_or_create(&cfg.state_dir.join("platform.key"))
            .map_err(|e| AttestedError::Runtime(RuntimeError::Attestation(e.to_string())))?;
        let seal_key = platform.seal_key(&measurement);
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
        Ok(Broker {
            dir: cfg.state_dir,
            platform,
            binary,
            measurement,
            seal_key,
            identity,
            releases: Mutex::new(Vec::new()),
        })
    }

    /// The broker enclave's measurement (what stakeholder policies list).
    pub fn measurement(&self) -> &[u8; 48] {
        &self.measurement
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

    fn path(&self, sub: &str, file: &str) -> PathBuf {
        self.dir.join(sub).join(file)
    }

    /// Stores a stakeholder's policy (replacing that stakeholder's previous one) after checking
    /// that it parses and trusts this broker.
    pub fn submit_policy(&self, policy: &StakeholderPolicy) -> Result<(), AttestedError> {
        let m = hex::encode(self.measurement);
        if !policy
            .enclave_measurements
            .iter()
            .any(|x| x.trim().eq_ignore_ascii_case(&m))
        {
            return Err(AttestedError::PolicyFile {
                origin: format!("of the {} ({})", policy.stakeholder, policy.name),
                reason: format!(
                    "does not list this broker's measurement {m} in enclave_measurements"
                ),
            });
        }
        let text = policy.to_json();
        // Round trip: what is stored must be readable.
        StakeholderPolicy::from_json(&text, "submitted policy")?;
        write_atomic(
            &self.path("policies", &format!("{}.json", policy.stakeholder.key())),
            text.as_bytes(),
        )?;
        Ok(())
    }

    /// The stored policies.
    pub fn policies(&self) -> Result<Vec<StakeholderPolicy>, AttestedError> {
        let mut out = Vec::new();
        for who in Stakeholder::ALL {
            let p = self.path("policies", &format!("{}.json", who.key()));
            if p.exists() {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| AttestedError::io("reading", &p, e))?;
                out.push(StakeholderPolicy::from_json(
                    &text,
                    &p.display().to_string(),
                )?);
            }
        }
        Ok(out)
    }

    /// Withdraws a stakeholder's policy (and so its consent to every job).
    pub fn withdraw_policy(&self, who: Stakeholder) -> Result<(), AttestedError> {
        let p = self.path("policies", &format!("{}.json", who.key()));
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AttestedError::io("removing", &p, e)),
        }
    }

    /// Unwraps a deposited key and stores it sealed to this enclave.
    pub fn deposit_key(
        &self,
        kind: KeyKind,
        name: &str,
        wrapped: &[u8],
    ) -> Result<(), AttestedError> {
        check_name("key name", name)?;
        let ctx = deposit_context(kind, name, &self.measurement);
        let key = key_from(&self.identity.unwrap_key(&ctx, wrapped)?)?;
        let sealed = seal(&self.seal_key, &self.measurement, key.as_ref())?;
        write_atomic(
            &self.path("keys", &format!("{}-{name}.sealed", kind.tag())),
            &sealed,
        )?;
        Ok(())
    }

    fn sealed_key(&self, kind: KeyKind, name: &str) -> Result<Key, AttestedError> {
        let p = self.path("keys", &format!("{}-{name}.sealed", kind.tag()));
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let who = match kind {
                    KeyKind::Dataset => "data owner must upload the dataset key",
                    KeyKind::Model => "model owner must deposit the model key",
                };
                return Err(AttestedError::NotFound(format!(
                    "the broker holds no {} key for {name:?}: the {who}",
                    kind.tag()
                )));
            }
            Err(e) => return Err(AttestedError::io("reading", &p, e)),
        };
        key_from(&unseal(&self.seal_key, &self.measurement, &bytes)?)
    }

    /// Accepts a job when every stakeholder's policy holds and both keys are deposited.
    pub fn submit_job(&self, job: &JobSpec) -> Result<AcceptedJob, AttestedError> {
        let accepted = accept_job(job, &self.policies()?, &self.measurement, self.simulated())?;
        self.sealed_key(KeyKind::Dataset, &job.dataset)?;
        self.sealed_key(KeyKind::Model, &job.id)?;
        write_atomic(
            &self.path("jobs", &format!("{}.json", job.id)),
            job.to_json().as_bytes(),
        )?;
        Ok(accepted)
    }

    /// A submitted job, re-checked against the policies as they are now (a withdrawn consent
    /// stops it).
    pub fn accepted_job(&self, id: &str) -> Result<AcceptedJob, AttestedError> {
        check_name("job id", id)?;
        let p = self.path("jobs", &format!("{id}.json"));
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AttestedError::NotFound(format!(
                    "no job {id:?} was submitted to this broker: submit it first"
                )));
            }
            Err(e) => return Err(AttestedError::io("reading", &p, e)),
        };
        let job = JobSpec::from_json(&text, &p.display().to_string())?;
        accept_job(&job, &self.policies()?, &self.measurement, self.simulated())
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
        let accepted = self.accepted_job(job)?;
        let verifier = Verifier::new(accepted.attestation.clone())?;
        let (challenge, pending) = verifier.challenge(identity)?;
        Ok((
            challenge,
            HostSession {
                accepted,
                verifier,
                pending,
            },
        ))
    }

    /// Verifies the host's evidence and, only if every check passes, wraps both keys to the
    /// host key its quote binds.
    pub fn release(
        &self,
        session: HostSession,
        evidence: &tessera_tpm::Evidence,
    ) -> Result<Reply, AttestedError> {
        let HostSession {
            accepted,
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
        let job = &accepted.job;
        let prefix = host_binding(&job.id, &[0u8; 32]);
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
                    "the quote's binding is not a host key for job {:?}: no key released",
                    job.id
                )));
            }
        };
        let dk = self.sealed_key(KeyKind::Dataset, &job.dataset)?;
        let mk = self.sealed_key(KeyKind::Model, &job.id)?;
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
            job: job.clone(),
            quote_hash: verdict.quote_hash,
            dataset_key,
            model_key,
        })
    }

    /// Answers one request (`session`: the pending host attestation of this connection).
    pub fn handle(&self, req: Request, session: &mut Option<HostSession>) -> Reply {
        let result = match req {
            Request::Evidence { nonce } => Ok(Reply::Evidence {
                evidence: self.evidence(&nonce),
                public_key: *self.public_key(),
                simulated: self.simulated(),
            }),
            Request::SubmitPolicy { json } => {
                StakeholderPolicy::from_json(&json, "submitted policy").and_then(|p| {
                    self.submit_policy(&p)?;
                    Ok(Reply::Accepted {
                        message: format!("policy of the {} ({}) stored", p.stakeholder, p.name),
                    })
                })
            }
            Request::DepositKey {
                kind,
                name,
                wrapped,
            } => self
                .deposit_key(kind, &name, &wrapped)
                .map(|()| Reply::Accepted {
                    message: format!("{} key for {name:?} sealed", kind.tag()),
                }),
            Request::SubmitJob { json } => {
                JobSpec::from_json(&json, "submitted job").and_then(|j| {
                    let a = self.submit_job(&j)?;
                    Ok(Reply::Accepted {
                        message: format!(
                            "job {:?} accepted by {}",
                            j.id,
                            a.stakeholders
                                .iter()
                                .map(|(k, v)| format!("the {k} ({v})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
                })
            }
            Request::AgentHello { job, identity } => {
                self.challenge(&job, &identity).map(|(challenge, s)| {
                    *session = Some(s);
                    Reply::Challenge { challenge }
                })
            }
            Request::AgentEvidence { evidence } => match session.take() {
                Some(s) => self.release(s, &evidence),
                None => Err(AttestedError::Protocol(
                    "evidence without a pending challenge: send AgentHello first".into(),
                )),
            },
        };
        result.unwrap_or_else(|e| Reply::Rejected {
            reason: e.to_string(),
        })
    }

    /// Serves one connection until the peer closes.
    pub fn serve(&self, raw: TcpStream) -> Result<(), AttestedError> {
        let mut ch = Channel::new(raw, ChannelOptions::default())?;
        ch.handshake(Role::Enclave, &[Role::Client, Role::Worker])?;
        let mut session = None;
        loop {
            let req = match ch.recv::<Request>() {
                Ok(r) => r,
                Err(RuntimeError::Closed(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let reply = self.handle(req, &mut session);
            ch.send(&reply)?;
        }
    }

    /// Decrypts the trained model of `job` (sealed model key) inside the broker and starts the
    /// `tee` inference enclave with it on `listener`.
    pub fn start_inference(
        &self,
        job: &str,
        encrypted_model: &[u8],
        listener: TcpListener,
    ) -> Result<InferenceService, AttestedError> {
        let accepted = self.accepted_job(job)?;
        let mk = self.sealed_key(KeyKind::Model, job)?;
        let onnx = decrypt_model(&mk, job, encrypted_model)?;
        let enclave = Enclave::start(EnclaveConfig {
            mode: Mode::Sim,
            // The same simulated platform (key file) as the broker.
            state_dir: self.dir.clone(),
            model_onnx: onnx.to_vec(),
            quant: Default::default(),
            profile: tessera_runtime::cost::SGX1,
            binary: Some(self.binary.clone()),
            channel: ChannelOptions::default(),
            backend: Default::default(),
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

/// A connection to a broker, for stakeholders and host agents.
pub struct BrokerClient {
    ch: Channel,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerClient")
    }
}

impl BrokerClient {
    /// Connects as a stakeholder (`host = false`) or a host agent (`host = true`).
    pub fn connect(addr: &str, host: bool) -> Result<BrokerClient, AttestedError> {
        let s = TcpStream::connect(addr).map_err(|e| {
            AttestedError::Runtime(RuntimeError::Io(format!(
                "connecting to the broker at {addr}: {e}; is `tessera broker serve` running?"
            )))
        })?;
        let _ = s.set_nodelay(true);
        let mut ch = Channel::new(s, ChannelOptions::default())?;
        ch.handshake(
            if host { Role::Worker } else { Role::Client },
            &[Role::Enclave],
        )?;
        Ok(BrokerClient { ch })
    }

    /// Sends one request and returns the reply (a `Rejected` reply is returned as is).
    pub fn call(&mut self, req: &Request) -> Result<Reply, AttestedError> {
        self.ch.send(req)?;
        Ok(self.ch.recv::<Reply>()?)
    }

    fn expect_ok(&mut self, req: &Request) -> Result<String, AttestedError> {
        match self.call(req)? {
            Reply::Accepted { message } => Ok(message),
            Reply::Rejected { reason } => Err(AttestedError::Refused(format!(
                "the broker refused: {reason}"
            ))),
            _ => Err(AttestedError::Protocol(
                "unexpected reply from the broker".into(),
            )),
        }
    }

    /// Verifies the broker's evidence against `policy` (measurement, simulated consent) and
    /// returns the public key it binds.
    pub fn verify_broker(
        &mut self,
        policy: &StakeholderPolicy,
    ) -> Result<([u8; 32], bool), AttestedError> {
        let mut nonce = [0u8; 32];
        random(&mut nonce)?;
        let (evidence, public_key) = match self.call(&Request::Evidence { nonce })? {
            Reply::Evidence {
                evidence,
                public_key,
                ..
            } => (evidence, public_key),
            _ => {
                return Err(AttestedError::Protocol(
                    "expected the broker's evidence".into(),
                ));
            }
        };
        verify_broker_evidence(&evidence, &public_key, &nonce, policy)
    }

    /// Submits a stakeholder policy.
    pub fn submit_policy(&mut self, policy: &StakeholderPolicy) -> Result<String, AttestedError> {
        self.expect_ok(&Request::SubmitPolicy {
            json: policy.to_json(),
        })
    }

    /// Verifies the broker against `policy`, then deposits `key` wrapped to it.
    pub fn deposit_key(
        &mut self,
        policy: &StakeholderPolicy,
        kind: KeyKind,
        name: &str,
        key: &[u8; 32],
    ) -> Result<String, AttestedError> {
        let (pk, _) = self.verify_broker(policy)?;
        let m = policy
            .enclave_measurements
            .iter()
            .filter_map(|m| hex::decode(m.trim()).ok())
            .find_map(|m| <[u8; 48]>::try_from(m).ok())
            .ok_or_else(|| AttestedError::PolicyFile {
                origin: policy.name.clone(),
                reason: "no 48-byte enclave measurement".into(),
            })?;
        let wrapped = wrap(&pk, &deposit_context(kind, name, &m), key)?;
        self.expect_ok(&Request::DepositKey {
            kind,
            name: name.into(),
            wrapped,
        })
    }

    /// Submits a job.
    pub fn submit_job(&mut self, job: &JobSpec) -> Result<String, AttestedError> {
        self.expect_ok(&Request::SubmitJob {
            json: job.to_json(),
        })
    }
}

/// Checks broker evidence: its claims satisfy `policy` (measurement; simulated only with
/// consent) and its report data binds `nonce` and `public_key`. Returns the key and whether the
/// TEE is simulated.
pub fn verify_broker_evidence(
    evidence: &[u8],
    public_key: &[u8; 32],
    nonce: &[u8; 32],
    policy: &StakeholderPolicy,
) -> Result<([u8; 32], bool), AttestedError> {
    let mut p = tessera_attest::Policy::simulated_dev();
    p.allow_simulated = policy.allow_simulated_enclave;
    p.measurements = policy.enclave_measurements.clone();
    let ev = tessera_attest::Evidence::decode(evidence)
        .map_err(|e| AttestedError::BrokerEvidence(e.to_string()))?;
    let claims = tessera_attest::verify(&ev, &p, std::time::SystemTime::now())
        .map_err(|e| AttestedError::BrokerEvidence(e.to_string()))?;
    let want = tessera_attest::report_data(nonce, public_key);
    if !bool::from(claims.report_data.ct_eq(&want)) {
        return Err(AttestedError::BrokerEvidence(
            "the evidence does not bind this nonce and the offered key: replayed, or the key was substituted".into(),
        ));
    }
    Ok((*public_key, claims.simulated))
}

/// Names of the stakeholders of an accepted job, for reports.
pub fn stakeholder_names(a: &AcceptedJob) -> BTreeMap<String, String> {
    a.stakeholders
        .iter()
        .map(|(k, v)| (k.key().to_string(), v.clone()))
        .collect()
}
