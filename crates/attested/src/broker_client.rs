//! The client side of the broker protocol ([`crate::broker`]): stakeholders and host agents
//! connect, check the broker's evidence and the receipts of what it accepted.

use std::collections::BTreeMap;
use std::net::TcpStream;

use subtle::ConstantTimeEq;
use tessera_runtime::{Channel, ChannelOptions, Role, RuntimeError};

use crate::broker::{KeyKind, Reply, Request, deposit_context, receipt_nonce};
use crate::error::{AttestedError, random};
use crate::policy::{AcceptedJob, JobSpec, StakeholderPolicy};
use crate::signed::{Action, BrokerId, StakeholderKey};
use crate::wrap::wrap;

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

    /// Verifies the broker's evidence against `policy` (measurement, simulated consent) and
    /// returns the identity it attests.
    pub fn verify_broker(
        &mut self,
        policy: &StakeholderPolicy,
    ) -> Result<(BrokerId, bool), AttestedError> {
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

    /// Verifies the broker against `policy`, signs the action `make` builds for it with `key`
    /// for `policy`'s stakeholder at `revision`, sends it and checks the receipt.
    pub fn send_signed(
        &mut self,
        policy: &StakeholderPolicy,
        key: &StakeholderKey,
        revision: u64,
        make: impl FnOnce(&BrokerId) -> Result<Action, AttestedError>,
    ) -> Result<String, AttestedError> {
        let (id, _) = self.verify_broker(policy)?;
        let signed = key.sign(policy.stakeholder, revision, make(&id)?, &id);
        match self.call(&Request::Stakeholder(signed.clone()))? {
            Reply::Accepted { message, receipt } => {
                let nonce = receipt_nonce(&signed.digest(&id));
                let (rid, _) = verify_broker_evidence(&receipt, &id.public_key, &nonce, policy)
                    .map_err(|e| {
                        AttestedError::BrokerEvidence(format!(
                            "the acknowledgement is not the broker's receipt for this request ({e}): treat the request as not applied"
                        ))
                    })?;
                if rid != id {
                    return Err(AttestedError::BrokerEvidence(
                        "the receipt comes from another broker than the one verified: treat the request as not applied".into(),
                    ));
                }
                Ok(message)
            }
            Reply::Rejected { reason } => Err(AttestedError::Refused(format!(
                "the broker refused: {reason}"
            ))),
            _ => Err(AttestedError::Protocol(
                "unexpected reply from the broker".into(),
            )),
        }
    }

    /// Submits `policy` (revision `revision`), signed with `key`.
    pub fn submit_policy(
        &mut self,
        policy: &StakeholderPolicy,
        key: &StakeholderKey,
        revision: u64,
    ) -> Result<String, AttestedError> {
        let json = policy.to_json();
        self.send_signed(policy, key, revision, |_| Ok(Action::SubmitPolicy { json }))
    }

    /// Withdraws `policy`'s stakeholder's policy (revision `revision`), signed with `key`.
    pub fn withdraw_policy(
        &mut self,
        policy: &StakeholderPolicy,
        key: &StakeholderKey,
        revision: u64,
    ) -> Result<String, AttestedError> {
        self.send_signed(policy, key, revision, |_| Ok(Action::WithdrawPolicy))
    }

    /// Verifies the broker against `policy`, then deposits `secret` wrapped to it for the
    /// measurement its evidence attests (revision `revision`, signed with `key`).
    pub fn deposit_key(
        &mut self,
        policy: &StakeholderPolicy,
        key: &StakeholderKey,
        revision: u64,
        kind: KeyKind,
        name: &str,
        secret: &[u8; 32],
    ) -> Result<String, AttestedError> {
        self.send_signed(policy, key, revision, |id| {
            Ok(Action::DepositKey {
                kind,
                name: name.into(),
                wrapped: wrap(
                    &id.public_key,
                    &deposit_context(kind, name, &id.measurement),
                    secret,
                )?,
            })
        })
    }

    /// Submits a job (revision `revision`), signed with `key` (the model owner's).
    pub fn submit_job(
        &mut self,
        policy: &StakeholderPolicy,
        key: &StakeholderKey,
        revision: u64,
        job: &JobSpec,
    ) -> Result<String, AttestedError> {
        let json = job.to_json();
        self.send_signed(policy, key, revision, |_| Ok(Action::SubmitJob { json }))
    }
}

/// Checks broker evidence: its claims satisfy `policy` (measurement; simulated only with
/// consent) and its report data binds `nonce` and `public_key`. Returns the attested identity
/// (the measurement from the evidence) and whether the TEE is simulated.
pub fn verify_broker_evidence(
    evidence: &[u8],
    public_key: &[u8; 32],
    nonce: &[u8; 32],
    policy: &StakeholderPolicy,
) -> Result<(BrokerId, bool), AttestedError> {
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
    let measurement: [u8; 48] = claims.measurement.as_slice().try_into().map_err(|_| {
        AttestedError::BrokerEvidence(format!(
            "the evidence's measurement has {} bytes, expected 48",
            claims.measurement.len()
        ))
    })?;
    Ok((
        BrokerId {
            measurement,
            public_key: *public_key,
        },
        claims.simulated,
    ))
}

/// Names of the stakeholders of an accepted job, for reports.
pub fn stakeholder_names(a: &AcceptedJob) -> BTreeMap<String, String> {
    a.stakeholders
        .iter()
        .map(|(k, v)| (k.key().to_string(), v.clone()))
        .collect()
}
