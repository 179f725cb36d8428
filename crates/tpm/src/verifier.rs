//! The verifier a key broker runs: binds an attestation key to a trusted endorsement key, and
//! checks a quote, its nonce, its PCRs, the boot PCR values and the IMA log against policy.
//!
//! The exchange (agent ⇄ verifier):
//!
//! 1. agent → verifier: [`AgentIdentity`] (the EK's and the AK's public areas);
//! 2. verifier → agent: [`Challenge`] from [`Verifier::challenge`] — a fresh 32-byte nonce and a
//!    credential blob made to the EK for the AK's name; the verifier keeps the
//!    [`PendingAttestation`];
//! 3. agent → verifier: [`Evidence`] — it activates the credential (its TPM can only if the AK is
//!    resident beside the EK), quotes PCRs 0–10 of the SHA-256 bank with
//!    [`quote_qualifying_data`]`(nonce, binding)` as qualifying data, reads the PCR values and
//!    the IMA log, and proves it recovered the credential with [`activation_proof`];
//! 4. [`Verifier::verify`] consumes the pending attestation (a nonce is good for one answer)
//!    and returns a [`Verdict`] or a [`VerifyError`] that names the failed check.
//!
//! `binding` is whatever the broker must tie to this attestation — typically the agent's
//! ephemeral key-exchange public key: the quote then vouches that the host in this measured state
//! holds that key, and the broker releases the dataset key encrypted to it
//! ([`Verdict::binding`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::credential::{CredentialBlob, CredentialError, make_credential};
use crate::hash::HashAlg;
use crate::ima::{FileDigest, IMA_PCR, ImaError, ImaEvent, ImaLog};
use crate::policy::{EntryDecision, EntryRejection, RuntimePolicy};
use crate::tpm2::{Attest, PcrSelection, PcrValues, PublicArea, TpmError, TpmSignature};

/// The PCR bank quoted.
pub const QUOTE_BANK: HashAlg = HashAlg::Sha256;
/// The PCRs quoted: 0–9 (firmware, boot loader, kernel: measured boot) and 10 (IMA).
pub const QUOTED_PCRS: [u8; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
/// Domain separator of the quote's qualifying data.
const QUOTE_DOMAIN: &[u8] = b"tessera-tpm quote v1\0";
/// Domain separator of the activation proof.
const ACTIVATION_DOMAIN: &[u8] = b"tessera-tpm activation v1\0";

/// The selection an agent quotes: [`QUOTED_PCRS`] of [`QUOTE_BANK`].
pub fn quote_selection() -> PcrSelection {
    PcrSelection::new(QUOTE_BANK, &QUOTED_PCRS)
}

/// The qualifying data (TPMS_ATTEST extraData) of a quote answering `nonce` and binding
/// `binding`: `SHA-256("tessera-tpm quote v1\0" ‖ nonce ‖ u64be(len binding) ‖ binding)`.
pub fn quote_qualifying_data(nonce: &[u8; 32], binding: &[u8]) -> [u8; 32] {
    let len = (binding.len() as u64).to_be_bytes();
    let d = HashAlg::Sha256.digest_parts(&[QUOTE_DOMAIN, nonce, &len, binding]);
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// The proof that the agent recovered the credential:
/// `HMAC-SHA-256(credential, "tessera-tpm activation v1\0" ‖ nonce ‖ SHA-256(attest))`, where
/// `attest` is the TPMS_ATTEST of the quote it sends.
pub fn activation_proof(credential: &[u8], nonce: &[u8; 32], attest: &[u8]) -> [u8; 32] {
    let attest_hash = HashAlg::Sha256.digest(attest);
    let d = HashAlg::Sha256.hmac(credential, &[ACTIVATION_DOMAIN, nonce, &attest_hash]);
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// The digests IMA's `boot_aggregate` entry may carry given these PCR values: SHA-256 over
/// PCRs 0–7 and over PCRs 0–9 of the SHA-256 bank, and SHA-1 over the same of the SHA-1 bank
/// when present (kernels before 5.8 used the SHA-1 bank and PCRs 0–7).
pub fn boot_aggregates(pcrs: &PcrValues) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for bank in [HashAlg::Sha256, HashAlg::Sha1] {
        for last in [7u8, 9] {
            let vals: Option<Vec<&[u8]>> = (0..=last).map(|i| pcrs.get(bank, i)).collect();
            if let Some(v) = vals {
                out.push(bank.digest_parts(&v));
            }
        }
    }
    out
}

/// The agent's keys, sent before the challenge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentIdentity {
    /// The endorsement key's TPMT_PUBLIC.
    pub ek_public: Vec<u8>,
    /// The attestation key's TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
}

/// The verifier's challenge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Challenge {
    /// A fresh random nonce.
    pub nonce: [u8; 32],
    /// The credential made to the EK for the AK's name.
    pub credential: CredentialBlob,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// The quote (TPMS_ATTEST bytes as the TPM signed them).
    pub attest: Vec<u8>,
    /// Its signature (TPMT_SIGNATURE).
    pub signature: Vec<u8>,
    /// The values of the quoted PCRs, read after the quote.
    pub pcrs: PcrValues,
    /// The IMA measurement log (binary_runtime_measurements).
    pub ima_log: Vec<u8>,
    /// The bytes bound into the quote's qualifying data (see [`quote_qualifying_data`]).
    pub binding: Vec<u8>,
    /// [`activation_proof`] of the activated credential.
    pub activation_proof: [u8; 32],
}

/// What the verifier requires of a host.
#[derive(Debug, Clone)]
pub struct AttestationPolicy {
    /// Endorsement keys of TPMs the infrastructure provider vouches for.
    pub trusted_eks: Vec<PublicArea>,
    /// Allowed values of boot PCRs (SHA-256 bank, index 0–9). A PCR listed must hold one of its
    /// values; a PCR not listed may hold any value (it is still quoted).
    pub boot_pcrs: BTreeMap<u8, Vec<Vec<u8>>>,
    /// IMA allow-lists; every entry of the log must be accepted by every one of them (one per
    /// stakeholder, say). At least one is required.
    pub allow_lists: Vec<RuntimePolicy>,
    /// The template-hash algorithm of the IMA logs (SHA-1 for the kernel's export).
    pub ima_template_hash_alg: HashAlg,
    /// How long a challenge stays valid.
    pub nonce_lifetime: Duration,
    /// Whether log entries measured after the quote (beyond the point where the log replays to
    /// the quoted PCR 10) are tolerated; they are not attested either way. Off by default.
    pub allow_unquoted_tail: bool,
}

impl AttestationPolicy {
    /// A policy trusting one EK with one allow-list, no boot-PCR constraints, SHA-1 template
    /// hashes, a 60-second nonce lifetime and no unquoted log tail.
    pub fn new(trusted_ek: PublicArea, allow_list: RuntimePolicy) -> AttestationPolicy {
        AttestationPolicy {
            trusted_eks: vec![trusted_ek],
            boot_pcrs: BTreeMap::new(),
            ima_template_hash_alg: allow_list.log_hash_alg(),
            allow_lists: vec![allow_list],
            nonce_lifetime: Duration::from_secs(60),
            allow_unquoted_tail: false,
        }
    }
}

/// Why a host was refused. Each message names the check that failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The policy cannot accept anything.
    #[error("attestation policy is unusable: {0}")]
    Policy(String),
    /// The agent's EK or AK public area is malformed or has the wrong attributes.
    #[error("agent identity rejected: {0}")]
    Identity(TpmError),
    /// The EK is not one the infrastructure provider vouches for.
    #[error(
        "endorsement key {name} is not trusted by the policy: this TPM is not one the infrastructure provider vouches for"
    )]
    UntrustedEk {
        /// Hex of the EK's Name.
        name: String,
    },
    /// Making the credential failed.
    #[error("credential activation challenge: {0}")]
    Credential(#[from] CredentialError),
    /// The operating system's random generator failed.
    #[error("random nonce: {0}")]
    Random(String),
    /// The challenge is older than the policy's nonce lifetime.
    #[error(
        "stale nonce: the challenge was issued {age_ms} ms ago, longer than the {lifetime_ms} ms it is valid; request a new challenge"
    )]
    NonceExpired {
        /// Age of the challenge.
        age_ms: u128,
        /// The policy's lifetime.
        lifetime_ms: u128,
    },
    /// The evidence bytes are malformed.
    #[error("malformed evidence: {0}")]
    MalformedEvidence(TpmError),
    /// The quote's signature does not verify under the AK.
    #[error("quote signature check failed: {0}")]
    QuoteSignature(TpmError),
    /// The quote does not carry this challenge's nonce (and binding).
    #[error(
        "nonce check failed: the quote's qualifying data is not this challenge's nonce and binding — a stale or \
         replayed quote, or a binding other than the one quoted"
    )]
    NonceMismatch,
    /// The agent did not recover the credential: the AK is not in the TPM of the trusted EK.
    #[error(
        "credential activation failed: the agent did not recover the credential made to the trusted EK, so the \
         quoting key is not bound to that endorsement key (not resident in the same TPM)"
    )]
    AkNotBoundToEk,
    /// The quote does not cover the required PCRs.
    #[error(
        "PCR selection check failed: the quote does not cover PCRs {missing:?} of the {bank} bank"
    )]
    PcrSelection {
        /// Bank.
        bank: HashAlg,
        /// Missing PCRs.
        missing: Vec<u8>,
    },
    /// The PCR values do not match the quote's digest.
    #[error("PCR digest check failed: {0} (e.g. PCR 10 extended after the quote)")]
    PcrDigest(TpmError),
    /// A boot PCR holds a value the policy does not allow.
    #[error(
        "boot PCR check failed: PCR {pcr} holds {value}, which the policy does not allow; the host booted other firmware, boot loader or kernel"
    )]
    BootPcr {
        /// PCR index.
        pcr: u8,
        /// Hex of its value.
        value: String,
    },
    /// The IMA log cannot be parsed.
    #[error("IMA log check failed: {0}")]
    ImaLog(ImaError),
    /// An IMA log entry was altered.
    #[error("IMA log check failed: {0}")]
    TamperedLogEntry(ImaError),
    /// An IMA entry extends a PCR other than 10 and so is not covered by the replay.
    #[error(
        "IMA log check failed: entry {index} ({path}) extends PCR {pcr}, not PCR 10; only PCR 10 entries can be verified"
    )]
    EntryOutsidePcr10 {
        /// Entry index.
        index: usize,
        /// Path.
        path: String,
        /// Its PCR.
        pcr: u32,
    },
    /// The IMA log does not replay to the quoted PCR 10.
    #[error(
        "IMA replay check failed: the log ({entries} entries, replaying to {replayed}) does not replay to the quoted \
         PCR 10 ({quoted}) at any point; entries are missing, added or reordered"
    )]
    ImaReplay {
        /// Entries in the log.
        entries: usize,
        /// Hex of the full replay.
        replayed: String,
        /// Hex of the quoted PCR 10.
        quoted: String,
    },
    /// Entries beyond the quoted state (measured after the quote).
    #[error(
        "IMA replay check failed: the log replays to the quoted PCR 10 after {quoted} entries, but {extra} more follow \
         (PCR 10 extended after the quote); attest again"
    )]
    UnquotedEntries {
        /// Entries covered by the quote.
        quoted: usize,
        /// Entries after.
        extra: usize,
    },
    /// An entry an allow-list does not accept.
    #[error(
        "IMA allow-list check failed: entry {index} rejected by allow-list {allow_list}: {reason}"
    )]
    EntryNotAllowed {
        /// Entry index.
        index: usize,
        /// Which allow-list (index into [`AttestationPolicy::allow_lists`]).
        allow_list: usize,
        /// Why.
        reason: EntryRejection,
    },
}

/// A successful attestation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Name of the trusted EK.
    pub ek_name: Vec<u8>,
    /// Name of the AK that signed the quote.
    pub ak_name: Vec<u8>,
    /// The quoted PCR values.
    pub pcrs: PcrValues,
    /// The bytes the quote binds (e.g. the agent's key-exchange public key).
    pub binding: Vec<u8>,
    /// SHA-256 of the quote (TPMS_ATTEST): an identifier to bind a channel or a key release to.
    pub quote_hash: [u8; 32],
    /// IMA entries covered by the quote and accepted.
    pub ima_entries: usize,
    /// Of those, how many were accepted only because their path is excluded by some allow-list.
    pub ima_excluded: usize,
    /// The files those entries measured, in log order: path as logged and file digest (a
    /// relying party checks that what a job runs was measured, and with which digest).
    pub ima_files: Vec<(Vec<u8>, FileDigest)>,
    /// Entries after the quoted state (only non-zero with `allow_unquoted_tail`); not attested.
    pub ima_unquoted: usize,
    /// TPM clock at the quote (ms), reset and restart counts.
    pub clock: (u64, u32, u32),
}

/// A challenge the verifier issued and is waiting for the answer to. Single use: [`Verifier::verify`]
/// consumes it, so one nonce accepts one answer.
pub struct PendingAttestation {
    nonce: [u8; 32],
    credential: Zeroizing<[u8; 32]>,
    ek_name: Vec<u8>,
    ak: PublicArea,
    issued: Instant,
}

impl std::fmt::Debug for PendingAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAttestation")
            .field("nonce", &hex::encode(self.nonce))
            .field("credential", &"<secret>")
            .field("ak_name", &hex::encode(self.ak.name()))
            .finish()
    }
}

impl PendingAttestation {
    /// The challenge's nonce.
    pub fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }

    /// The Name of the AK being attested.
    pub fn ak_name(&self) -> Vec<u8> {
        self.ak.name()
    }
}

/// Verifies hosts against an [`AttestationPolicy`].
#[derive(Debug, Clone)]
pub struct Verifier {
    policy: AttestationPolicy,
}

impl Verifier {
    /// A verifier for `policy` (at least one trusted EK and one allow-list).
    pub fn new(policy: AttestationPolicy) -> Result<Verifier, VerifyError> {
        if policy.trusted_eks.is_empty() {
            return Err(VerifyError::Policy(
                "no trusted endorsement key: add the EKs of the hosts' TPMs".into(),
            ));
        }
        if policy.allow_lists.is_empty() {
            return Err(VerifyError::Policy(
                "no IMA allow-list: add at least one runtime policy".into(),
            ));
        }
        for (pcr, values) in &policy.boot_pcrs {
            if *pcr > 9 || values.iter().any(|v| v.len() != QUOTE_BANK.size()) {
                return Err(VerifyError::Policy(format!(
                    "boot PCR {pcr}: only PCRs 0–9 of the SHA-256 bank (32-byte values) can be constrained"
                )));
            }
        }
        Ok(Verifier { policy })
    }

    /// The policy.
    pub fn policy(&self) -> &AttestationPolicy {
        &self.policy
    }

    /// Checks the agent's identity (EK trusted, AK a restricted signing key) and issues a
    /// challenge: a fresh nonce and a credential only the TPM holding that EK, with that AK
    /// loaded, can recover.
    pub fn challenge(
        &self,
        identity: &AgentIdentity,
    ) -> Result<(Challenge, PendingAttestation), VerifyError> {
        let ek = PublicArea::parse(&identity.ek_public).map_err(VerifyError::Identity)?;
        let ek_name = ek.name();
        if !self.policy.trusted_eks.iter().any(|t| t.name() == ek_name) {
            return Err(VerifyError::UntrustedEk {
                name: hex::encode(&ek_name),
            });
        }
        ek.check_endorsement_key().map_err(VerifyError::Identity)?;
        let ak = PublicArea::parse(&identity.ak_public).map_err(VerifyError::Identity)?;
        ak.check_attestation_key().map_err(VerifyError::Identity)?;

        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| VerifyError::Random(e.to_string()))?;
        let mut credential = Zeroizing::new([0u8; 32]);
        getrandom::fill(credential.as_mut()).map_err(|e| VerifyError::Random(e.to_string()))?;
        let blob = make_credential(&ek, &ak.name(), credential.as_ref())?;
        Ok((
            Challenge {
                nonce,
                credential: blob,
            },
            PendingAttestation {
                nonce,
                credential,
                ek_name,
                ak,
                issued: Instant::now(),
            },
        ))
    }

    /// Checks the evidence answering `pending`, in this order: nonce age, quote structure and
    /// signature (under the AK), nonce and binding (qualifying data), credential activation (AK
    /// bound to the EK), PCR selection, PCR digest, boot PCRs, IMA log (structure, template
    /// hashes, replay to the quoted PCR 10), and every entry against every allow-list.
    pub fn verify(
        &self,
        pending: PendingAttestation,
        evidence: &Evidence,
    ) -> Result<Verdict, VerifyError> {
        let age = pending.issued.elapsed();
        if age > self.policy.nonce_lifetime {
            return Err(VerifyError::NonceExpired {
                age_ms: age.as_millis(),
                lifetime_ms: self.policy.nonce_lifetime.as_millis(),
            });
        }

        let attest = Attest::parse(&evidence.attest).map_err(VerifyError::MalformedEvidence)?;
        let signature =
            TpmSignature::parse(&evidence.signature).map_err(VerifyError::MalformedEvidence)?;
        attest
            .verify_signature(&pending.ak, &signature)
            .map_err(VerifyError::QuoteSignature)?;
        let (selection, _) = attest.quote().map_err(VerifyError::MalformedEvidence)?;

        let expected = quote_qualifying_data(&pending.nonce, &evidence.binding);
        if !bool::from(attest.extra_data.as_slice().ct_eq(&expected)) {
            return Err(VerifyError::NonceMismatch);
        }

        let proof = activation_proof(
            pending.credential.as_ref(),
            &pending.nonce,
            &evidence.attest,
        );
        if !bool::from(proof.ct_eq(&evidence.activation_proof)) {
            return Err(VerifyError::AkNotBoundToEk);
        }

        let missing: Vec<u8> = QUOTED_PCRS
            .iter()
            .copied()
            .filter(|p| !selection.contains(QUOTE_BANK, *p))
            .collect();
        if !missing.is_empty() {
            return Err(VerifyError::PcrSelection {
                bank: QUOTE_BANK,
                missing,
            });
        }
        attest
            .check_pcr_digest(&evidence.pcrs, signature.hash)
            .map_err(|e| match e {
                TpmError::PcrDigestMismatch { .. } => VerifyError::PcrDigest(e),
                other => VerifyError::MalformedEvidence(other),
            })?;
        // Only the quoted values are kept from here on.
        let mut quoted = PcrValues::default();
        for (bank, pcrs) in &selection.banks {
            for p in pcrs {
                if let Some(v) = evidence.pcrs.get(*bank, *p) {
                    quoted.insert(*bank, *p, v.to_vec());
                }
            }
        }

        for (pcr, allowed) in &self.policy.boot_pcrs {
            let value = quoted.get(QUOTE_BANK, *pcr).unwrap_or_default();
            if !allowed.iter().any(|a| a.as_slice() == value) {
                return Err(VerifyError::BootPcr {
                    pcr: *pcr,
                    value: hex::encode(value),
                });
            }
        }

        let log = ImaLog::parse(&evidence.ima_log, self.policy.ima_template_hash_alg)
            .map_err(VerifyError::ImaLog)?;
        log.check_template_hashes()
            .map_err(VerifyError::TamperedLogEntry)?;
        for (index, e) in log.entries().iter().enumerate() {
            if e.pcr != IMA_PCR {
                return Err(VerifyError::EntryOutsidePcr10 {
                    index,
                    path: e.display_path(),
                    pcr: e.pcr,
                });
            }
        }
        let quoted_pcr10 = quoted
            .get(QUOTE_BANK, IMA_PCR as u8)
            .unwrap_or_default()
            .to_vec();
        let covered = log
            .replay_to(IMA_PCR, QUOTE_BANK, &quoted_pcr10)
            .ok_or_else(|| VerifyError::ImaReplay {
                entries: log.entries().len(),
                replayed: hex::encode(log.replay(IMA_PCR, QUOTE_BANK)),
                quoted: hex::encode(&quoted_pcr10),
            })?;
        let extra = log.entries().len() - covered;
        if extra > 0 && !self.policy.allow_unquoted_tail {
            return Err(VerifyError::UnquotedEntries {
                quoted: covered,
                extra,
            });
        }

        let aggregates = boot_aggregates(&quoted);
        let mut excluded = 0;
        for (index, entry) in log.entries().iter().take(covered).enumerate() {
            let mut was_excluded = false;
            for (allow_list, policy) in self.policy.allow_lists.iter().enumerate() {
                match policy.check_entry(entry, &aggregates) {
                    Ok(EntryDecision::Excluded) => was_excluded = true,
                    Ok(_) => {}
                    Err(reason) => {
                        return Err(VerifyError::EntryNotAllowed {
                            index,
                            allow_list,
                            reason,
                        });
                    }
                }
            }
            excluded += usize::from(was_excluded);
        }

        let mut quote_hash = [0u8; 32];
        quote_hash.copy_from_slice(&HashAlg::Sha256.digest(&evidence.attest));
        Ok(Verdict {
            ek_name: pending.ek_name.clone(),
            ak_name: pending.ak.name(),
            pcrs: quoted,
            binding: evidence.binding.clone(),
            quote_hash,
            ima_entries: covered,
            ima_excluded: excluded,
            ima_files: log
                .entries()
                .iter()
                .take(covered)
                .filter_map(|e| match &e.event {
                    ImaEvent::File { digest, path, .. } => Some((path.clone(), digest.clone())),
                    _ => None,
                })
                .collect(),
            ima_unquoted: extra,
            clock: (attest.clock, attest.reset_count, attest.restart_count),
        })
    }
}
