//! # tessera-attested: the `attested` scheme (Perun)
//!
//! Training runs in plaintext on a fast, ordinary host — but only a host whose TPM proves, to a
//! key broker running in an enclave, that it booted allowed firmware and kernel and has run
//! only allowed files since. Inference with the trained model then runs in the enclave (`tee`).
//!
//! ## Parties and flow
//!
//! 0. The broker is set up with a configuration that pins each stakeholder's ed25519 signing
//!    key ([`signed::Pinned`]); its measurement covers that configuration. Every change a
//!    stakeholder makes below is a [`signed::Signed`] request for its own slot, with a revision
//!    higher than the stored one, signed for this broker's measurement and key.
//! 1. The **data owner**, the **model owner** and the **infrastructure provider** each submit a
//!    [`StakeholderPolicy`] to the broker: trusted broker measurements, allowed boot PCRs, an
//!    IMA allow-list (Keylime runtime-policy JSON), trusted TPM endorsement keys (the provider),
//!    the jobs consented to, and who may receive the trained model and the predictions.
//! 2. The data owner encrypts its dataset ([`dataset`]: AES-256-GCM chunks whose associated
//!    data authenticates the shape, label count, chunk index and chunk count) into the untrusted
//!    store, checks the broker's evidence against its policy, and deposits the dataset key
//!    wrapped to the broker's key ([`wrap`]); the model owner deposits a model key the same way
//!    and submits a [`JobSpec`]. The broker keeps both keys in enclave memory (on disk only as
//!    the signed deposits, wrapped to its X25519 key, which is sealed to its measurement) and
//!    accepts the job only if every stakeholder's policy is present, lists the job and holds
//!    ([`policy::accept_job`]).
//! 3. The host agent ([`host::run_host_job`]) connects; the broker issues a
//!    [`tessera_tpm::Verifier`] challenge built from the joined policies; the agent answers with
//!    a quote over PCRs 0–10 and the IMA log, binding a fresh X25519 host key into the quote
//!    ([`broker::host_binding`]). Only if the verifier accepts, every stakeholder still consents
//!    and nothing changed since the challenge does the broker wrap the dataset and model keys
//!    to that key, under a context that names the job and the quote hash.
//! 4. The host decrypts the dataset in memory, trains — an MLP with
//!    [`tessera_engine::train::train_mlp`], a `cnn`/`vgg`/`resnet` with the conv trainer
//!    `asym` and `tee` share, all CPU cores; or, for a job that names a [`ProgramSpec`], the
//!    model owner's own program, handed the data through in-memory files ([`program`]) — and
//!    stores the ONNX model encrypted under the model key. The model owner
//!    decrypts it with its key; the broker decrypts it inside the enclave and starts the `tee`
//!    inference enclave, which the data owner queries over attested TLS for its predictions.
//!
//! [`flow::run_flow`] runs all of it in one process (swtpm as the host's TPM); [`demo_flow`] is
//! the demo. **The enclave here is simulated** (`tessera_attest::sim`): it announces itself
//! as insecure on stderr, in its evidence and in every report; a policy must set
//! `allow_simulated_enclave` to accept it.
//!
//! ## Threat model
//!
//! **Trusted**: the broker enclave's code as measured and its TEE (simulated here: then
//! nothing, see above); each host's TPM and the infrastructure provider's list of their EKs;
//! the host's measured boot chain and kernel as far as the stakeholders allowed their PCR
//! values — a kernel with allowed values is trusted to measure every file before running it
//! (the `tessera_tpm` threat model). Each stakeholder trusts its own policy and keeps its own
//! signing key secret; whoever sets up the broker writes the stakeholders' true public keys
//! into its configuration (each stakeholder checks this by computing the measurement it puts
//! in its policy from that configuration, e.g. `tessera broker measurement --config`).
//!
//! **Hostile**: the network, the untrusted store (it holds the encrypted dataset and model),
//! the broker's state directory (an enclave's disk is the host's), the host agent process and
//! every byte it sends, any host whose measured software is not on every allow-list, and each
//! stakeholder towards the others' slots.
//!
//! What holds:
//! - Only a stakeholder changes its own state at the broker: a policy, a withdrawal, a key
//!   deposit or a job is applied only if it is signed (ed25519, strict verification) by the key
//!   the broker's configuration pins for the slot it changes, over an encoding that names this
//!   broker's measurement and X25519 key and a revision higher than the stored one. So the host
//!   (or anyone on the network) cannot install a policy that trusts its own EK or overwrite a
//!   deposited key (refused: [`AttestedError::BadSignature`]); a stakeholder cannot change
//!   another's policy or deposit the other's kind of key, even with a valid signature of its
//!   own ([`AttestedError::NotYourSlot`]); a signed request cannot be replayed, nor an older
//!   policy or key restored, at this broker ([`AttestedError::StaleRevision`]; a withdrawal
//!   keeps its revision), nor used at another broker. Requests are accepted only from the role
//!   that may send them ([`AttestedError::WrongRole`]: a host agent connection only attests, a
//!   stakeholder connection only sends signed requests); the role is self-declared, so this
//!   routes requests, and the signatures are what authorise them.
//! - A stakeholder knows its request was applied only from the receipt: broker evidence over
//!   the request's digest, checked by [`broker::BrokerClient`].
//! - Keys leave the broker only wrapped to an X25519 key that a quote accepted by the joined
//!   policies binds, under a context naming the job and that quote's hash: a key released to
//!   one attestation cannot be opened by another host key, replayed into another job, or
//!   obtained by a host that quoted a bad state (unknown file, tampered log, stale nonce, AK
//!   not bound to a trusted EK, PCR 10 moved after the quote — each refused with its reason).
//! - A job runs only with all three stakeholders' consent, re-checked at release time under the
//!   lock that applies stakeholder requests: a withdrawal the broker accepted before the release
//!   stops it ([`AttestedError::MissingConsent`]), and so does any change of a policy, the job
//!   or a key since the host's challenge ([`AttestedError::ChangedSinceChallenge`]); a
//!   withdrawal after the keys were wrapped does not recall them. A job runs only if each
//!   policy trusts this broker's measurement; keys are deposited only after the depositor
//!   verified the broker's evidence, wrapped for the public key and the measurement that
//!   evidence attests.
//! - The broker's state lives in enclave memory. Its copy on disk (the signed requests) is
//!   verified again when the broker starts: an edited or moved file stops the start
//!   ([`AttestedError::StateFile`]).
//! - The encrypted dataset's chunks cannot be modified, reordered, dropped, added or moved
//!   between datasets, nor its header (shape, labels, counts) changed, without the host's
//!   decryption failing and naming the chunk; decrypted data lives only in zeroizing memory.
//! - A program job's keys are released only if every file the job lists (the executable, the
//!   scripts) appears in the quoted IMA log, last measured with SHA-256 and exactly the job's
//!   digest ([`broker::check_program_measured`], [`AttestedError::ProgramNotMeasured`]), on top
//!   of every measured file being on every allow-list: a host that runs a changed script is
//!   refused by the allow-lists, and one that runs another allow-listed version than the job's
//!   by the job check. The agent reads (on an IMA host: measures) the files before quoting.
//!   The program sees the plaintext data, as any allowed host software does; the agent hands
//!   it over in memory (memfd) and overwrites it with zeros when the program ends.
//! - Secrets (keys, X25519 secrets, decrypted data) are zeroized when dropped; comparisons of
//!   secret-dependent values are constant-time.
//!
//! Not covered: a file replaced between its measurement and its execution by software that is
//! itself allowed (an allowed program that rewrites another's script); a program that is
//! allowed and then leaks the data (the allow-lists vouch for what the program does); code a
//! program loads that its job does not list (every path on its command line must be listed; a
//! module it imports that the job does not list is read after the quote, so no check at the
//! release covers it: list every module); a host
//! compromised after its quote (plaintext training data is exposed to
//! software the kernel did not measure, e.g. a kernel exploit — attest again per release);
//! GPU firmware; side channels of a real TEE; rollback of the broker's state directory across a
//! restart (whoever controls the disk can put back an older signed file, e.g. the policy a
//! stakeholder later withdrew, and restart the broker: a real deployment needs a TEE monotonic
//! counter); a stakeholder's lost signing key (there is no rotation: set up a new broker);
//! within its own slot, the model owner chooses which of the data owner's datasets its job
//! names (the data owner's policy consents to job names); and the simulated enclave itself,
//! which protects nothing.
#![warn(missing_docs)]

pub mod broker;
mod broker_client;
mod conv_job;
pub mod dataset;
pub mod error;
pub mod flow;
pub mod host;
pub mod policy;
pub mod program;
pub mod signed;
pub mod swtpm;
pub mod wrap;

pub use broker::{Broker, BrokerClient, BrokerConfig, KeyKind, Release, serve_broker};
pub use dataset::{PlainDataset, decrypt_dataset, decrypt_model, encrypt_dataset, encrypt_model};
pub use error::AttestedError;
pub use flow::{FlowData, FlowOptions, Report, demo_flow, demo_flow_with, run_flow};
pub use host::{Host, HostOutcome, KernelHost, run_host_job};
pub use policy::{
    AcceptedJob, JobSpec, Network, Output, ProgramSpec, Stakeholder, StakeholderPolicy, TrainSpec,
    accept_job,
};
pub use signed::{Action, BrokerId, Pinned, Signed, StakeholderKey, revision_now};
pub use swtpm::{HostImage, MeasuredHost, Swtpm, swtpm_installed};
