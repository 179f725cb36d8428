//! # tessera-tpm: host attestation with a TPM 2.0 and Linux IMA
//!
//! The `attested` scheme (Perun) trains on an ordinary GPU host and releases the dataset key to
//! it only after the host proves, with its TPM, what it booted and what it has run since. This
//! crate holds that proof's machinery:
//!
//! - [`ima`]: the IMA measurement log — binary (`binary_runtime_measurements`) and ASCII
//!   formats, templates `ima`, `ima-ng`, `ima-sig` (and `ima-buf`, `ima-modsig`, custom
//!   formats), SHA-1/256/384/512 template hashes, template-hash checks, and replay into PCR 10 of
//!   any bank, with violation entries extended as all-ones;
//! - [`policy`]: the IMA allow-list, read from Keylime's runtime-policy JSON;
//! - [`tpm2`]: TPM structures (public areas and Names, TPMS_ATTEST quotes, signatures, PCR
//!   selections) and quote verification (RSASSA, RSA-PSS, ECDSA P-256/P-384; SHA-1 to SHA-512);
//! - [`credential`]: TPM2_MakeCredential in software (KDFa, AES-CFB, HMAC, RSA-OAEP to the EK),
//!   so a verifier without a TPM can bind an attestation key to an endorsement key;
//! - [`verifier`]: the checks a key broker runs, returning a [`Verdict`] or a [`VerifyError`]
//!   that names the failed check;
//! - [`agent`] (feature `agent`, on by default; needs Debian `libtss2-dev`): the host side,
//!   through `tss-esapi`.
//!
//! One attestation, both sides in one process (in `tessera` the two halves run in the agent and
//! in the broker, and the four messages cross a channel; all four are `serde` types):
//!
//! ```no_run
//! # #[cfg(feature = "agent")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tessera_tpm::{Agent, AttestationPolicy, ImaSource, RuntimePolicy, Verifier};
//!
//! let mut agent = Agent::connect(None)?; // TCTI from the environment, or swtpm on 2321
//! let allow = RuntimePolicy::from_keylime_json(&std::fs::read_to_string("runtime-policy.json")?)?;
//! let verifier = Verifier::new(AttestationPolicy::new(agent.ek_public().clone(), allow))?;
//!
//! let identity = agent.identity(); //                               agent → broker
//! let (challenge, pending) = verifier.challenge(&identity)?; //     broker → agent
//! let evidence = agent.respond(&challenge, b"agent's key-exchange public key", &ImaSource::Kernel)?;
//! let verdict = verifier.verify(pending, &evidence)?; //            agent → broker
//! // Release the dataset key to `verdict.binding`, the key the quote vouches for.
//! # let _ = verdict;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "agent"))]
//! # fn main() {}
//! ```
//!
//! ## Threat model of host attestation
//!
//! **Trusted**: the TPM (its endorsement key never leaves it, and it signs quotes only with keys
//! it holds); the infrastructure provider's statement of which EKs belong to its hosts
//! ([`AttestationPolicy::trusted_eks`]); the stakeholders' policies (boot PCR values, IMA
//! allow-lists); the verifier's code and its random numbers; and the host's *measured* boot chain
//! and kernel up to the point where IMA measures — firmware, boot loader and kernel are judged
//! by their PCR 0–9 values, and a kernel whose values are allowed is trusted to measure every
//! file its IMA policy covers before running it.
//!
//! **Hostile**: the network, the agent process, the host's user space and root, and every byte
//! the agent sends — the public areas, the quote, the PCR values it claims, the IMA log. So:
//!
//! - The AK is accepted only if it is a restricted signing key with fixedTPM, fixedParent and
//!   sensitiveDataOrigin, *and* the agent recovers a fresh credential made in software to the
//!   trusted EK for exactly that AK's Name. The TPM releases it only when that AK is resident in
//!   the same TPM as the EK, so a software key or a key of another TPM cannot stand in
//!   ([`VerifyError::AkNotBoundToEk`]). The proof of recovery is an HMAC keyed by the credential
//!   over the nonce and the quote; the credential itself never crosses the wire back and is
//!   zeroized after use.
//! - A quote is accepted only under that AK's signature, with the TPM_GENERATED magic (a
//!   restricted key cannot sign a forged TPMS_ATTEST), and with qualifying data equal to
//!   `SHA-256(domain ‖ nonce ‖ binding)` for this challenge's fresh 32-byte nonce: an old quote is
//!   refused ([`VerifyError::NonceMismatch`]); a pending challenge is consumed by its first answer
//!   and expires ([`VerifyError::NonceExpired`]). The binding (e.g. the agent's key-exchange
//!   public key) ties the key release to this quote.
//! - Claimed PCR values count only if they hash to the quote's PCR digest
//!   ([`VerifyError::PcrDigest`]); a PCR extended after the quote shows up here. The log counts
//!   only if every entry's template hash is the hash of its data
//!   ([`VerifyError::TamperedLogEntry`]) and the entries replay exactly to the quoted PCR 10
//!   ([`VerifyError::ImaReplay`]); entries after the quoted state are refused by default
//!   ([`VerifyError::UnquotedEntries`]). Only then is each entry checked against every allow-list
//!   ([`VerifyError::EntryNotAllowed`]).
//! - Every parser takes hostile bytes: lengths are checked before use, nothing panics, errors
//!   are typed and say which structure, field or entry was wrong. Comparisons of secrets (the
//!   activation proof, the qualifying data) are constant-time.
//!
//! **Not covered**: the EK certificate chain (the policy pins EK public areas instead of
//! checking a manufacturer's certificate); the TCG boot event log (boot PCRs are compared with
//! allowed values, not replayed from an event log); IMA appraisal signatures (`ima-sig`
//! signatures are parsed but not verified: files must be listed by digest); what happens after
//! the quote (a host can be compromised a second later — attest again before each release);
//! physical attacks on the TPM bus, and a malicious kernel whose PCR values a stakeholder
//! allowed; kernels before 5.8 that extended non-SHA-1 banks with padded SHA-1 template hashes.
#![warn(missing_docs)]

#[cfg(feature = "agent")]
pub mod agent;
pub mod credential;
pub mod hash;
pub mod ima;
pub mod policy;
pub mod tpm2;
pub mod verifier;

#[cfg(feature = "agent")]
pub use agent::{Agent, AgentError, DEFAULT_TCTI, ImaSource, KERNEL_IMA_LOG};
pub use credential::{CredentialBlob, CredentialError, make_credential};
pub use hash::HashAlg;
pub use ima::{FileDigest, IMA_PCR, ImaEntry, ImaError, ImaEvent, ImaLog};
pub use policy::{EntryDecision, EntryRejection, PolicyError, RuntimePolicy};
pub use tpm2::{Attest, PcrSelection, PcrValues, PublicArea, TpmError, TpmSignature};
pub use verifier::{
    AgentIdentity, AttestationPolicy, Challenge, Evidence, PendingAttestation, Verdict, Verifier,
    VerifyError, activation_proof, boot_aggregates, quote_qualifying_data, quote_selection,
};
