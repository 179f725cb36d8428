//! The broker takes orders only from the stakeholders' pinned keys, for each stakeholder's own
//! slot, with rising revisions, and each request only from the role that may send it; a
//! release re-checks every consent; a stakeholder believes only the broker's receipts. swtpm
//! is the training host's TPM.
//!
//! Each adversary gets past every earlier check (it connects with the role it needs, its
//! requests parse, are fresh and, where it could obtain one, carry a valid signature), so the
//! check a test names is what stops it; each test asserts that error variant and then shows
//! the genuine host still receives the ORIGINAL keys.
//!
//! Without swtpm these tests print why they skip, unless `CI` is set, where they fail.

mod common;
use common::{Scratch, have_swtpm};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;

use tessera_attested::broker::{
    Broker, BrokerClient, BrokerConfig, HostSession, KeyKind, Reply, Request, deposit_context,
    host_binding, release_context, serve_broker,
};
use tessera_attested::flow::make_policy;
use tessera_attested::signed::{Action, BrokerId, Pinned, Signed, StakeholderKey};
use tessera_attested::wrap::{KeyPair, wrap};
use tessera_attested::{
    AttestedError, HostImage, JobSpec, MeasuredHost, Network, Output, Stakeholder,
    StakeholderPolicy, Swtpm, TrainSpec,
};
use tessera_runtime::Role;
use tessera_tpm::Challenge;

const JOB: &str = "glyphs-mlp";
const DATASET: &str = "glyphs";

fn job() -> JobSpec {
    JobSpec {
        id: JOB.into(),
        dataset: DATASET.into(),
        train: TrainSpec {
            network: Network::Mlp,
            width: 1,
            hidden: vec![8],
            shift: 0,
            epochs: 1,
            batch: 16,
            lr: 0.05,
            lr_final: None,
            momentum: 0.9,
            input_scale: 1.0,
            seed: 1,
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

/// A broker with all three policies, both keys and the job accepted (revision 1 each), and a
/// measured host whose attestation satisfies them.
struct Fixture {
    broker: Arc<Broker>,
    host: MeasuredHost,
    keys: BTreeMap<Stakeholder, StakeholderKey>,
    policies: BTreeMap<Stakeholder, StakeholderPolicy>,
    config: BrokerConfig,
    dataset_key: [u8; 32],
    model_key: [u8; 32],
    // Dropped last: swtpm, then the directory.
    _tpm: Swtpm,
    _scratch: Scratch,
}

fn policy_action(p: &StakeholderPolicy) -> Action {
    Action::SubmitPolicy { json: p.to_json() }
}

impl Fixture {
    fn new(name: &str) -> Option<Fixture> {
        if !have_swtpm() {
            return None;
        }
        let scratch = Scratch::new(name);
        std::fs::create_dir_all(&scratch.0).unwrap();
        let tpm = Swtpm::start(&scratch.0).unwrap();
        let image = HostImage::training_host();
        let host = MeasuredHost::boot(&tpm.tcti(), &image).unwrap();
        let names = [
            (Stakeholder::DataOwner, "hospital-a"),
            (Stakeholder::ModelOwner, "lab-b"),
            (Stakeholder::InfrastructureProvider, "cloud-c"),
        ];
        let keys: BTreeMap<_, _> = names
            .iter()
            .map(|(who, _)| (*who, StakeholderKey::generate().unwrap()))
            .collect();
        let pinned = Pinned::new(
            names
                .iter()
                .map(|(who, n)| (*who, (n.to_string(), keys[who].public())))
                .collect(),
            "test",
        )
        .unwrap();
        let config = BrokerConfig {
            state_dir: scratch.0.join("broker"),
            binary: Some(b"tessera-attested auth test broker".to_vec()),
            stakeholders: pinned,
        };
        let broker = Arc::new(Broker::open(config.clone()).unwrap());
        let allow = image.allow_list().unwrap();
        let ek = hex::encode(host.agent.ek_public().as_bytes());
        let policies: BTreeMap<_, _> = names
            .iter()
            .map(|(who, n)| {
                let p = make_policy(
                    *who,
                    n,
                    JOB,
                    broker.measurement(),
                    &host.boot_pcrs,
                    &allow,
                    std::slice::from_ref(&ek),
                )
                .unwrap();
                (*who, p)
            })
            .collect();
        let f = Fixture {
            broker,
            host,
            keys,
            policies,
            config,
            dataset_key: [0x11; 32],
            model_key: [0x22; 32],
            _tpm: tpm,
            _scratch: scratch,
        };
        for who in Stakeholder::ALL {
            let a = policy_action(&f.policies[&who]);
            f.stakeholder(f.sign(who, 1, a)).unwrap();
        }
        let d = f.deposit(KeyKind::Dataset, DATASET, &f.dataset_key.clone());
        f.stakeholder(f.sign(Stakeholder::DataOwner, 1, d)).unwrap();
        let m = f.deposit(KeyKind::Model, JOB, &f.model_key.clone());
        f.stakeholder(f.sign(Stakeholder::ModelOwner, 1, m))
            .unwrap();
        let j = Action::SubmitJob {
            json: job().to_json(),
        };
        f.stakeholder(f.sign(Stakeholder::ModelOwner, 1, j))
            .unwrap();
        Some(f)
    }

    fn id(&self) -> BrokerId {
        self.broker.id()
    }

    /// `who`'s genuine signature on `action` at `revision`, for this broker.
    fn sign(&self, who: Stakeholder, revision: u64, action: Action) -> Signed {
        self.keys[&who].sign(who, revision, action, &self.id())
    }

    /// A key deposit wrapped to this broker, as a depositor that verified it would make it.
    fn deposit(&self, kind: KeyKind, name: &str, key: &[u8; 32]) -> Action {
        let id = self.id();
        Action::DepositKey {
            kind,
            name: name.into(),
            wrapped: wrap(
                &id.public_key,
                &deposit_context(kind, name, &id.measurement),
                key,
            )
            .unwrap(),
        }
    }

    /// Sends a signed request from a peer with `role`.
    fn send(&self, role: Role, signed: Signed) -> Result<String, AttestedError> {
        match self
            .broker
            .dispatch(role, Request::Stakeholder(signed), &mut None)?
        {
            Reply::Accepted { message, .. } => Ok(message),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Sends a signed request as a stakeholder (role `Client`).
    fn stakeholder(&self, signed: Signed) -> Result<String, AttestedError> {
        self.send(Role::Client, signed)
    }

    /// The host's `AgentHello`.
    fn challenge(&mut self) -> Result<(Challenge, Option<HostSession>), AttestedError> {
        let mut session = None;
        let reply = self.broker.dispatch(
            Role::Worker,
            Request::AgentHello {
                job: JOB.into(),
                identity: self.host.agent.identity(),
            },
            &mut session,
        )?;
        match reply {
            Reply::Challenge { challenge, .. } => Ok((challenge, session)),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// The host's answer to `challenge`; the keys it receives, unwrapped.
    fn finish(
        &mut self,
        challenge: &Challenge,
        mut session: Option<HostSession>,
    ) -> Result<([u8; 32], [u8; 32]), AttestedError> {
        let hk = KeyPair::generate()?;
        let ima = self.host.ima();
        let evidence = self
            .host
            .agent
            .respond(challenge, &host_binding(JOB, hk.public()), &ima)?;
        match self.broker.dispatch(
            Role::Worker,
            Request::AgentEvidence { evidence },
            &mut session,
        )? {
            Reply::Keys {
                quote_hash,
                dataset_key,
                model_key,
                ..
            } => {
                let d = hk.unwrap_key(
                    &release_context(KeyKind::Dataset, JOB, &quote_hash),
                    &dataset_key,
                )?;
                let m = hk.unwrap_key(
                    &release_context(KeyKind::Model, JOB, &quote_hash),
                    &model_key,
                )?;
                Ok((
                    d.as_slice().try_into().unwrap(),
                    m.as_slice().try_into().unwrap(),
                ))
            }
            other => panic!("expected keys, got {other:?}"),
        }
    }

    /// The genuine host attests and receives exactly the keys the owners deposited.
    fn assert_original_keys_released(&mut self) {
        let (c, s) = self.challenge().expect("the genuine host is challenged");
        let (d, m) = self
            .finish(&c, s)
            .expect("the genuine host receives the keys");
        assert_eq!(d, self.dataset_key, "the ORIGINAL dataset key is released");
        assert_eq!(m, self.model_key, "the ORIGINAL model key is released");
    }

    fn stored_policy(&self, who: Stakeholder) -> Option<StakeholderPolicy> {
        self.broker
            .policies()
            .unwrap()
            .into_iter()
            .find(|p| p.stakeholder == who)
    }
}

/// The host's own policy for the provider slot: it trusts only the host's choice of EK (here
/// no EK of a real TPM, just bytes the host picked) and consents to the job.
fn hostile_provider_policy(f: &Fixture) -> StakeholderPolicy {
    let mut p = f.policies[&Stakeholder::InfrastructureProvider].clone();
    p.name = "the host".into();
    p.trusted_eks = vec![hex::encode(b"an EK the host controls")];
    p
}

#[test]
fn host_role_peer_cannot_submit_policies_or_deposit_keys() {
    let Some(mut f) = Fixture::new("role") else {
        return;
    };
    // Requests with genuine signatures (the host relays the stakeholders' traffic and could
    // have held these back), fresh revisions, and valid content: only the role stops them.
    let captured_policy = f.sign(
        Stakeholder::InfrastructureProvider,
        2,
        policy_action(&hostile_provider_policy(&f)),
    );
    let e = f.send(Role::Worker, captured_policy).unwrap_err();
    assert!(
        matches!(&e, AttestedError::WrongRole { request, .. } if *request == "signed stakeholder"),
        "{e:?}"
    );
    let attacker_key = [0x66u8; 32];
    let d = f.deposit(KeyKind::Dataset, DATASET, &attacker_key);
    let captured_deposit = f.sign(Stakeholder::DataOwner, 2, d);
    let e = f.send(Role::Worker, captured_deposit).unwrap_err();
    assert!(matches!(e, AttestedError::WrongRole { .. }), "{e:?}");
    let w = f.sign(Stakeholder::DataOwner, 3, Action::WithdrawPolicy);
    let e = f.send(Role::Worker, w).unwrap_err();
    assert!(matches!(e, AttestedError::WrongRole { .. }), "{e:?}");
    // Nor does a stakeholder connection attest as a host.
    let e = f
        .broker
        .dispatch(
            Role::Client,
            Request::AgentHello {
                job: JOB.into(),
                identity: f.host.agent.identity(),
            },
            &mut None,
        )
        .unwrap_err();
    assert!(
        matches!(&e, AttestedError::WrongRole { request, .. } if *request == "AgentHello"),
        "{e:?}"
    );

    // Over TCP the role is the one the peer declared in its hello.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = serve_broker(f.broker.clone(), listener).unwrap();
    let mut host = BrokerClient::connect(&addr, true).unwrap();
    let again = f.sign(
        Stakeholder::InfrastructureProvider,
        4,
        policy_action(&hostile_provider_policy(&f)),
    );
    match host.call(&Request::Stakeholder(again)).unwrap() {
        Reply::Rejected { reason } => assert!(
            reason.contains("a host agent (Worker) peer may not send signed stakeholder requests"),
            "{reason}"
        ),
        other => panic!("the host's policy was not refused: {other:?}"),
    }
    drop(host);
    drop(server);

    assert_eq!(
        f.stored_policy(Stakeholder::InfrastructureProvider)
            .as_ref(),
        Some(&f.policies[&Stakeholder::InfrastructureProvider]),
        "the provider's policy is unchanged"
    );
    f.assert_original_keys_released();
}

#[test]
fn forged_stakeholder_signatures_are_refused() {
    let Some(mut f) = Fixture::new("forged") else {
        return;
    };
    // The host connects as a stakeholder and signs with a key of its own.
    let own = StakeholderKey::generate().unwrap();
    let id = f.id();
    let forged = own.sign(
        Stakeholder::InfrastructureProvider,
        99,
        policy_action(&hostile_provider_policy(&f)),
        &id,
    );
    let e = f.stakeholder(forged).unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::BadSignature {
                stakeholder: Stakeholder::InfrastructureProvider,
                ..
            }
        ),
        "{e:?}"
    );
    // Overwriting the dataset key with one the host knows.
    let d = f.deposit(KeyKind::Dataset, DATASET, &[0x66; 32]);
    let e = f
        .stakeholder(own.sign(Stakeholder::DataOwner, 99, d.clone(), &id))
        .unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::BadSignature {
                stakeholder: Stakeholder::DataOwner,
                ..
            }
        ),
        "{e:?}"
    );
    // Another stakeholder's genuine key is not the data owner's.
    let e = f
        .stakeholder(f.keys[&Stakeholder::ModelOwner].sign(Stakeholder::DataOwner, 99, d, &id))
        .unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::BadSignature {
                stakeholder: Stakeholder::DataOwner,
                ..
            }
        ),
        "{e:?}"
    );
    // A genuine signature made for another broker (another measurement) does not transfer.
    let other = BrokerId {
        measurement: [0x5a; 48],
        ..id
    };
    let elsewhere = f.keys[&Stakeholder::InfrastructureProvider].sign(
        Stakeholder::InfrastructureProvider,
        99,
        policy_action(&hostile_provider_policy(&f)),
        &other,
    );
    let e = f.stakeholder(elsewhere).unwrap_err();
    assert!(matches!(e, AttestedError::BadSignature { .. }), "{e:?}");
    // A signature moved onto other content does not verify either.
    let mut moved = f.sign(
        Stakeholder::InfrastructureProvider,
        99,
        policy_action(&f.policies[&Stakeholder::InfrastructureProvider]),
    );
    moved.action = policy_action(&hostile_provider_policy(&f));
    let e = f.stakeholder(moved).unwrap_err();
    assert!(matches!(e, AttestedError::BadSignature { .. }), "{e:?}");

    assert_eq!(
        f.stored_policy(Stakeholder::InfrastructureProvider)
            .as_ref(),
        Some(&f.policies[&Stakeholder::InfrastructureProvider])
    );
    f.assert_original_keys_released();
}

#[test]
fn same_or_lower_revisions_are_refused() {
    let Some(mut f) = Fixture::new("revision") else {
        return;
    };
    let provider = Stakeholder::InfrastructureProvider;
    let mut no_jobs = f.policies[&provider].clone();
    no_jobs.jobs.clear();
    for rev in [1, 0] {
        let e = f
            .stakeholder(f.sign(provider, rev, policy_action(&no_jobs)))
            .unwrap_err();
        assert!(
            matches!(e, AttestedError::StaleRevision { revision, current: 1, .. } if revision == rev),
            "{e:?}"
        );
    }
    // Keys and jobs too.
    let d = f.deposit(KeyKind::Dataset, DATASET, &[0x33; 32]);
    let e = f
        .stakeholder(f.sign(Stakeholder::DataOwner, 1, d))
        .unwrap_err();
    assert!(
        matches!(e, AttestedError::StaleRevision { current: 1, .. }),
        "{e:?}"
    );
    let mut other_job = job();
    other_job.dataset = "another-dataset".into();
    let e = f
        .stakeholder(f.sign(
            Stakeholder::ModelOwner,
            1,
            Action::SubmitJob {
                json: other_job.to_json(),
            },
        ))
        .unwrap_err();
    assert!(
        matches!(e, AttestedError::StaleRevision { current: 1, .. }),
        "{e:?}"
    );
    f.assert_original_keys_released();

    // A withdrawal keeps its revision: replaying the consenting policy it replaced is refused.
    let original = f.sign(provider, 1, policy_action(&f.policies[&provider]));
    f.stakeholder(f.sign(provider, 2, Action::WithdrawPolicy))
        .unwrap();
    let e = f.stakeholder(original).unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::StaleRevision {
                revision: 1,
                current: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let e = f.challenge().unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::MissingConsent {
                stakeholder: Stakeholder::InfrastructureProvider,
                ..
            }
        ),
        "{e:?}"
    );
    // The provider consents again with a higher revision.
    let p = policy_action(&f.policies[&provider]);
    f.stakeholder(f.sign(provider, 3, p)).unwrap();
    f.assert_original_keys_released();
}

#[test]
fn a_stakeholder_cannot_replace_another_stakeholders_policy_or_keys() {
    let Some(mut f) = Fixture::new("slot") else {
        return;
    };
    // The model owner signs, with its own pinned key and for its own slot, a policy that says
    // it is the infrastructure provider's.
    let e = f
        .stakeholder(f.sign(
            Stakeholder::ModelOwner,
            2,
            policy_action(&hostile_provider_policy(&f)),
        ))
        .unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::NotYourSlot {
                signer: Stakeholder::ModelOwner,
                owner: Stakeholder::InfrastructureProvider,
                ..
            }
        ),
        "{e:?}"
    );
    // The data owner may not deposit the model key, nor submit jobs.
    let m = f.deposit(KeyKind::Model, JOB, &[0x44; 32]);
    let e = f
        .stakeholder(f.sign(Stakeholder::DataOwner, 2, m))
        .unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::NotYourSlot {
                signer: Stakeholder::DataOwner,
                owner: Stakeholder::ModelOwner,
                ..
            }
        ),
        "{e:?}"
    );
    let e = f
        .stakeholder(f.sign(
            Stakeholder::DataOwner,
            2,
            Action::SubmitJob {
                json: job().to_json(),
            },
        ))
        .unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::NotYourSlot {
                signer: Stakeholder::DataOwner,
                owner: Stakeholder::ModelOwner,
                ..
            }
        ),
        "{e:?}"
    );
    for who in Stakeholder::ALL {
        assert_eq!(
            f.stored_policy(who).as_ref(),
            Some(&f.policies[&who]),
            "the {who}'s policy is unchanged"
        );
    }
    f.assert_original_keys_released();
}

#[test]
fn consent_withdrawn_between_challenge_and_release_releases_no_key() {
    let Some(mut f) = Fixture::new("withdraw") else {
        return;
    };
    let provider = Stakeholder::InfrastructureProvider;
    let (c, s) = f.challenge().unwrap();
    f.stakeholder(f.sign(provider, 2, Action::WithdrawPolicy))
        .unwrap();
    let e = f.finish(&c, s).unwrap_err();
    assert!(
        matches!(
            e,
            AttestedError::MissingConsent {
                stakeholder: Stakeholder::InfrastructureProvider,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(f.broker.releases().is_empty(), "no key left the broker");

    // A policy changed (not withdrawn) inside the window also stops the release.
    let p = policy_action(&f.policies[&provider]);
    f.stakeholder(f.sign(provider, 3, p)).unwrap();
    let (c, s) = f.challenge().unwrap();
    let mut narrower = f.policies[&provider].clone();
    narrower.name = "cloud-c (revised)".into();
    f.stakeholder(f.sign(provider, 4, policy_action(&narrower)))
        .unwrap();
    let e = f.finish(&c, s).unwrap_err();
    assert!(
        matches!(&e, AttestedError::ChangedSinceChallenge { what } if what.contains("infrastructure provider")),
        "{e:?}"
    );
    assert!(f.broker.releases().is_empty(), "no key left the broker");

    // Attesting again under the current policies works.
    f.assert_original_keys_released();
    assert_eq!(f.broker.releases().len(), 1);
}

#[test]
fn stored_state_is_verified_when_the_broker_restarts() {
    let Some(mut f) = Fixture::new("restart") else {
        return;
    };
    // Find the provider's stored policy request.
    let dir = f.config.state_dir.join("signed");
    let sub = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = sub.join("policy-infrastructure_provider.json");
    let genuine = std::fs::read_to_string(&file).unwrap();

    // Unchanged: a restarted broker has the same state and releases the same keys.
    f.broker = Arc::new(Broker::open(f.config.clone()).unwrap());
    f.assert_original_keys_released();

    // Whoever controls the disk edits the stored policy: the restart is refused.
    let mut req: Signed = serde_json::from_str(&genuine).unwrap();
    req.action = policy_action(&hostile_provider_policy(&f));
    std::fs::write(&file, serde_json::to_string(&req).unwrap()).unwrap();
    let e = Broker::open(f.config.clone()).unwrap_err();
    assert!(
        matches!(&e, AttestedError::StateFile { reason, .. } if reason.contains("is not signed by the infrastructure provider")),
        "{e:?}"
    );
    // Or moves a genuine request to another slot's file.
    std::fs::write(&file, &genuine).unwrap();
    let moved = sub.join("policy-data_owner.json");
    let data_owner = std::fs::read_to_string(&moved).unwrap();
    std::fs::write(&moved, &genuine).unwrap();
    let e = Broker::open(f.config.clone()).unwrap_err();
    assert!(
        matches!(&e, AttestedError::StateFile { reason, .. } if reason.contains("not for this file")),
        "{e:?}"
    );
    std::fs::write(&moved, data_owner).unwrap();
    f.broker = Arc::new(Broker::open(f.config.clone()).unwrap());
    f.assert_original_keys_released();
}

#[test]
fn a_faked_acknowledgement_is_not_taken_for_the_brokers() {
    let Some(f) = Fixture::new("receipt") else {
        return;
    };
    use tessera_runtime::{Channel, ChannelOptions};
    // The real broker, and a network attacker in front of it that answers stakeholder
    // requests itself (dropping them) with `Accepted` and the broker's genuine evidence for
    // a nonce of its own choosing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let broker_addr = listener.local_addr().unwrap().to_string();
    let _server = serve_broker(f.broker.clone(), listener).unwrap();
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let front_addr = front.local_addr().unwrap().to_string();
    let mitm = std::thread::spawn(move || {
        let (s, _) = front.accept().unwrap();
        let mut victim = Channel::new(s, ChannelOptions::default()).unwrap();
        victim.handshake(Role::Enclave, &[Role::Client]).unwrap();
        let mut real = BrokerClient::connect(&broker_addr, false).unwrap();
        let mut dropped = 0;
        while let Ok(req) = victim.recv::<Request>() {
            let reply = match req {
                Request::Stakeholder(_) => {
                    dropped += 1;
                    let Reply::Evidence { evidence, .. } =
                        real.call(&Request::Evidence { nonce: [7; 32] }).unwrap()
                    else {
                        panic!("no evidence");
                    };
                    Reply::Accepted {
                        message: "the infrastructure provider withdrew its policy".into(),
                        receipt: evidence,
                    }
                }
                other => real.call(&other).unwrap(),
            };
            victim.send(&reply).unwrap();
        }
        dropped
    });
    let provider = Stakeholder::InfrastructureProvider;
    let mut c = BrokerClient::connect(&front_addr, false).unwrap();
    let e = c
        .withdraw_policy(&f.policies[&provider], &f.keys[&provider], 2)
        .unwrap_err();
    assert!(
        matches!(&e, AttestedError::BrokerEvidence(r) if r.contains("not the broker's receipt for this request")),
        "{e:?}"
    );
    drop(c);
    assert_eq!(
        mitm.join().unwrap(),
        1,
        "the attacker dropped the withdrawal"
    );
    // The withdrawal did not happen, and the stakeholder was told so.
    assert_eq!(
        f.stored_policy(provider).as_ref(),
        Some(&f.policies[&provider])
    );
}
