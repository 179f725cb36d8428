//! # tessera-attested: the `attested` scheme (Perun)
//!
//! Training runs in plaintext on a fast, ordinary host — but only a host whose TPM proves, to a
//! key broker running in an enclave, that it booted allowed firmware and kernel and has run
//! only allowed files since. Inference with the trained model then runs in the enclave (`tee`).
//!
//! ## Parties and flow
//!
//! 1. The **data owner**, the **model owner** and the **infrastructure provider** each submit a
//!    [`StakeholderPolicy`] to the broker: trusted broker measurements, allowed boot PCRs, an
//!    IMA allow-list (Keylime runtime-policy JSON), trusted TPM endorsement keys (the provider),
//!    the jobs consented to, and who may receive the trained model and the predictions.
//! 2. The data owner encrypts its dataset ([`dataset`]: AES-256-GCM chunks whose associated
//!    data authenticates the shape, label count, chunk index and chunk count) into the untrusted
//!    store, checks the broker's evidence against its policy, and deposits the dataset key
//!    wrapped to the broker's key ([`wrap`]); the model owner deposits a model key the same way
//!    and submits a [`JobSpec`]. The broker seals both keys to its measurement
//!    (`tessera_runtime::seal`) and accepts the job only if every stakeholder's policy is present,
//!    lists the job and holds ([`policy::accept_job`]).
//! 3. The host agent ([`host::run_host_job`]) connects; the broker issues a
//!    [`tessera_tpm::Verifier`] challenge built from the joined policies; the agent answers with
//!    a quote over PCRs 0–10 and the IMA log, binding a fresh X25519 host key into the quote
//!    ([`broker::host_binding`]). Only if the verifier accepts does the broker wrap the dataset
//!    and model keys to that key, under a context that names the job and the quote hash.
//! 4. The host decrypts the dataset in memory, trains ([`tessera_engine::train::train_mlp`], all
//!    CPU cores), and stores the ONNX model encrypted under the model key. The model owner
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
//! (the `tessera_tpm` threat model). Each stakeholder trusts its own policy.
//!
//! **Hostile**: the network, the untrusted store (it holds the encrypted dataset and model),
//! the host agent process and every byte it sends, any host whose measured software is not on
//! every allow-list, and other stakeholders' attempts to change the job after consent.
//!
//! What holds:
//! - Keys leave the broker only wrapped to an X25519 key that a quote accepted by the joined
//!   policies binds, under a context naming the job and that quote's hash: a key released to
//!   one attestation cannot be opened by another host key, replayed into another job, or
//!   obtained by a host that quoted a bad state (unknown file, tampered log, stale nonce, AK
//!   not bound to a trusted EK, PCR 10 moved after the quote — each refused with its reason).
//! - A job runs only with all three stakeholders' consent, re-checked at release time (a
//!   withdrawn policy stops later releases), and only if each policy trusts this broker's
//!   measurement; keys are deposited only after the depositor verified the broker's evidence
//!   binds the key it wraps to.
//! - The encrypted dataset's chunks cannot be modified, reordered, dropped, added or moved
//!   between datasets, nor its header (shape, labels, counts) changed, without the host's
//!   decryption failing and naming the chunk; decrypted data lives only in zeroizing memory.
//! - Secrets (keys, X25519 secrets, decrypted data) are zeroized when dropped; comparisons of
//!   secret-dependent values are constant-time.
//!
//! Not covered: a host compromised after its quote (plaintext training data is exposed to
//! software the kernel did not measure, e.g. a kernel exploit — attest again per release);
//! GPU firmware; side channels of a real TEE; authentication of stakeholders when they submit
//! policies (anyone reaching the broker may submit one; a production broker would require signed
//! policies); and the simulated enclave itself, which protects nothing.
#![warn(missing_docs)]

pub mod broker;
pub mod dataset;
pub mod error;
pub mod flow;
pub mod host;
pub mod policy;
pub mod swtpm;
pub mod wrap;

pub use broker::{Broker, BrokerClient, BrokerConfig, KeyKind, Release, serve_broker};
pub use dataset::{PlainDataset, decrypt_dataset, decrypt_model, encrypt_dataset, encrypt_model};
pub use error::AttestedError;
pub use flow::{FlowData, FlowOptions, Report, demo_flow, demo_flow_with, run_flow};
pub use host::{HostOutcome, run_host_job};
pub use policy::{
    AcceptedJob, JobSpec, Output, Stakeholder, StakeholderPolicy, TrainSpec, accept_job,
};
pub use swtpm::{HostImage, MeasuredHost, Swtpm, swtpm_installed};
