//! The TPM-side agent (`tessera agent`): talks to the host's TPM through `tss-esapi`, creates
//! the endorsement key and an attestation key, activates the verifier's credential and answers
//! its nonce with a quote over PCRs 0–10 of the SHA-256 bank plus the IMA log.
//!
//! The TPM is reached through a TCTI given explicitly, or from the environment
//! (`TPM2TOOLS_TCTI`, `TCTI`, `TEST_TCTI`), or else the software TPM at [`DEFAULT_TCTI`]. No
//! resource manager is assumed: the agent keeps exactly two transient objects loaded (EK and
//! AK), flushes every session it starts, and flushes both keys when dropped.

use std::path::PathBuf;
use std::str::FromStr;

use tss_esapi::abstraction::{ak, ek};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PcrHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, DigestValues, EncryptedSecret, IdObject, PcrSelectionListBuilder, PcrSlot,
    SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, Error as TssError};
use zeroize::Zeroizing;

use crate::credential::CredentialBlob;
use crate::hash::HashAlg;
use crate::tpm2::{Attest, PcrSelection, PcrValues, PublicArea, TpmError, TpmSignature};
use crate::verifier::{
    AgentIdentity, Challenge, Evidence, activation_proof, quote_qualifying_data, quote_selection,
};

/// The TCTI used when none is given and the environment names none: swtpm on loopback.
pub const DEFAULT_TCTI: &str = "swtpm:host=127.0.0.1,port=2321";
/// Where the kernel exports the IMA measurement log.
pub const KERNEL_IMA_LOG: &str = "/sys/kernel/security/ima/binary_runtime_measurements";
/// How often [`Agent::respond`] retries when a PCR or the log changes while it quotes.
const RESPOND_ATTEMPTS: usize = 5;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The TCTI string is not valid.
    #[error(
        "TCTI {tcti:?} is not valid ({source}); use e.g. \"swtpm:host=127.0.0.1,port=2321\" or \"device:/dev/tpmrm0\""
    )]
    Tcti {
        /// The TCTI string.
        tcti: String,
        /// The TSS error.
        source: TssError,
    },
    /// A TPM command failed.
    #[error(
        "TPM {step} failed: {source}; is the TPM (or swtpm) running and reachable through the TCTI?"
    )]
    Tpm {
        /// What the agent was doing.
        step: &'static str,
        /// The TSS error.
        source: TssError,
    },
    /// The TPM returned a structure this crate cannot read.
    #[error("TPM {step} returned an unreadable structure: {source}")]
    Format {
        /// What the agent was doing.
        step: &'static str,
        /// The parse error.
        source: TpmError,
    },
    /// The IMA log cannot be read.
    #[error(
        "cannot read the IMA log {path}: {source}; is securityfs mounted and IMA enabled, or give the log as a file"
    )]
    ImaLog {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TPM or the TSS answered something impossible.
    #[error("TPM {step}: {what}")]
    Unexpected {
        /// What the agent was doing.
        step: &'static str,
        /// What was wrong.
        what: &'static str,
    },
    /// PCRs or the log kept changing while quoting.
    #[error(
        "PCRs or the IMA log changed during every one of {0} quote attempts; the host is measuring too fast to attest"
    )]
    Unstable(usize),
}

fn tpm(step: &'static str) -> impl FnOnce(TssError) -> AgentError {
    move |source| AgentError::Tpm { step, source }
}

fn format(step: &'static str) -> impl FnOnce(TpmError) -> AgentError {
    move |source| AgentError::Format { step, source }
}

/// Where the agent reads the IMA log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImaSource {
    /// The kernel's log, [`KERNEL_IMA_LOG`].
    Kernel,
    /// A file holding a binary log.
    File(PathBuf),
    /// Bytes held in memory (tests, demos with a synthetic log).
    Bytes(Vec<u8>),
}

impl ImaSource {
    /// Reads the log bytes.
    pub fn read(&self) -> Result<Vec<u8>, AgentError> {
        let path = match self {
            ImaSource::Bytes(b) => return Ok(b.clone()),
            ImaSource::Kernel => PathBuf::from(KERNEL_IMA_LOG),
            ImaSource::File(p) => p.clone(),
        };
        std::fs::read(&path).map_err(|source| AgentError::ImaLog { path, source })
    }
}

fn hashing(alg: HashAlg) -> HashingAlgorithm {
    match alg {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

fn slot(pcr: u8) -> Result<PcrSlot, AgentError> {
    if pcr > 23 {
        return Err(AgentError::Format {
            step: "PCR selection",
            source: TpmError::Invalid {
                structure: "PCR selection",
                field: "index",
                reason: format!("PCR {pcr} > 23"),
            },
        });
    }
    PcrSlot::try_from(1u32 << pcr).map_err(tpm("PCR selection"))
}

/// A connection to the TPM with its EK and AK loaded.
pub struct Agent {
    ctx: Context,
    ek: Option<KeyHandle>,
    ak: Option<KeyHandle>,
    ek_public: PublicArea,
    ak_public: PublicArea,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("ek_name", &hex::encode(self.ek_public.name()))
            .field("ak_name", &hex::encode(self.ak_public.name()))
            .finish()
    }
}

impl Agent {
    /// Connects to the TPM (`tcti`, or the environment's, or [`DEFAULT_TCTI`]), creates the
    /// RSA-2048 endorsement key from the TCG default template and a fresh RSA-2048
    /// RSASSA-SHA-256 attestation key under it, and keeps both loaded.
    pub fn connect(tcti: Option<&str>) -> Result<Agent, AgentError> {
        let conf = match tcti {
            Some(s) => TctiNameConf::from_str(s).map_err(|source| AgentError::Tcti {
                tcti: s.to_owned(),
                source,
            })?,
            None => match TctiNameConf::from_environment_variable() {
                Ok(c) => c,
                Err(_) => {
                    TctiNameConf::from_str(DEFAULT_TCTI).map_err(|source| AgentError::Tcti {
                        tcti: DEFAULT_TCTI.to_owned(),
                        source,
                    })?
                }
            },
        };
        let mut ctx = Context::new(conf).map_err(tpm("connect"))?;
        let ek = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Rsa, None)
            .map_err(tpm("create EK"))?;
        let ak = match create_ak(&mut ctx, ek) {
            Ok(ak) => ak,
            Err(e) => {
                let _ = ctx.flush_context(ObjectHandle::from(ek));
                return Err(e);
            }
        };
        let publics = read_public(&mut ctx, ek, "read EK public")
            .and_then(|e| Ok((e, read_public(&mut ctx, ak, "read AK public")?)));
        match publics {
            Ok((ek_public, ak_public)) => Ok(Agent {
                ctx,
                ek: Some(ek),
                ak: Some(ak),
                ek_public,
                ak_public,
            }),
            Err(e) => {
                let _ = ctx.flush_context(ObjectHandle::from(ak));
                let _ = ctx.flush_context(ObjectHandle::from(ek));
                Err(e)
            }
        }
    }

    fn keys(&self) -> Result<(KeyHandle, KeyHandle), AgentError> {
        match (self.ek, self.ak) {
            (Some(ek), Some(ak)) => Ok((ek, ak)),
            _ => Err(AgentError::Unexpected {
                step: "use keys",
                what: "the EK or AK is not loaded",
            }),
        }
    }

    /// The endorsement key's public area.
    pub fn ek_public(&self) -> &PublicArea {
        &self.ek_public
    }

    /// The attestation key's public area.
    pub fn ak_public(&self) -> &PublicArea {
        &self.ak_public
    }

    /// What the agent sends the verifier first.
    pub fn identity(&self) -> AgentIdentity {
        AgentIdentity {
            ek_public: self.ek_public.as_bytes().to_vec(),
            ak_public: self.ak_public.as_bytes().to_vec(),
        }
    }

    /// TPM2_ActivateCredential: recovers the credential the verifier made for this EK and AK.
    pub fn activate_credential(
        &mut self,
        blob: &CredentialBlob,
    ) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        const STEP: &str = "activate credential";
        let (ek, ak) = self.keys()?;
        let id_object = IdObject::try_from(blob.id_object.clone()).map_err(tpm(STEP))?;
        let secret = EncryptedSecret::try_from(blob.encrypted_secret.clone()).map_err(tpm(STEP))?;
        let hmac = self.start_session(SessionType::Hmac)?;
        let policy = match self.start_session(SessionType::Policy) {
            Ok(p) => p,
            Err(e) => {
                self.flush_session(hmac);
                return Err(e);
            }
        };
        let result = (|| {
            let policy_session = PolicySession::try_from(policy).map_err(tpm(STEP))?;
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.policy_secret(
                        policy_session,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(tpm("policy secret (endorsement)"))?;
            self.ctx
                .execute_with_sessions((Some(hmac), Some(policy), None), |ctx| {
                    ctx.activate_credential(ak, ek, id_object, secret)
                })
                .map_err(tpm(STEP))
        })();
        self.flush_session(hmac);
        self.flush_session(policy);
        let digest: Digest = result?;
        Ok(Zeroizing::new(digest.value().to_vec()))
    }

    fn start_session(&mut self, kind: SessionType) -> Result<AuthSession, AgentError> {
        let s = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(tpm("start session"))?
            .ok_or(AgentError::Unexpected {
                step: "start session",
                what: "the TPM returned no session",
            })?;
        if kind == SessionType::Hmac {
            let (attrs, mask) = SessionAttributesBuilder::new()
                .with_decrypt(true)
                .with_encrypt(true)
                .build();
            if let Err(e) = self.ctx.tr_sess_set_attributes(s, attrs, mask) {
                self.flush_session(s);
                return Err(AgentError::Tpm {
                    step: "start session",
                    source: e,
                });
            }
        }
        Ok(s)
    }

    fn flush_session(&mut self, s: AuthSession) {
        // A failed flush leaves a session slot used until the TPM restarts; nothing more to do.
        let _ = self
            .ctx
            .flush_context(ObjectHandle::from(SessionHandle::from(s)));
    }

    /// Quotes `selection` with the AK and `qualifying_data` as extraData. Returns the
    /// TPMS_ATTEST and TPMT_SIGNATURE bytes.
    pub fn quote(
        &mut self,
        qualifying_data: &[u8],
        selection: &PcrSelection,
    ) -> Result<(Vec<u8>, Vec<u8>), AgentError> {
        const STEP: &str = "quote";
        let (_, ak) = self.keys()?;
        let list = selection_list(selection)?;
        let data = Data::try_from(qualifying_data.to_vec()).map_err(tpm(STEP))?;
        let (attest, signature) = self
            .ctx
            .execute_with_nullauth_session(|ctx| ctx.quote(ak, data, SignatureScheme::Null, list))
            .map_err(tpm(STEP))?;
        Ok((
            attest.marshall().map_err(tpm(STEP))?,
            signature.marshall().map_err(tpm(STEP))?,
        ))
    }

    /// Reads the PCRs of `selection`.
    pub fn read_pcrs(&mut self, selection: &PcrSelection) -> Result<PcrValues, AgentError> {
        const STEP: &str = "PCR read";
        let mut out = PcrValues::default();
        for (bank, pcrs) in &selection.banks {
            // TPM2_PCR_Read returns at most 8 values per call: read one PCR at a time.
            for pcr in pcrs {
                let list = PcrSelectionListBuilder::new()
                    .with_selection(hashing(*bank), &[slot(*pcr)?])
                    .build()
                    .map_err(tpm(STEP))?;
                let (_, _, digests) = self
                    .ctx
                    .execute_without_session(|ctx| ctx.pcr_read(list))
                    .map_err(tpm(STEP))?;
                let value = digests.value().first().ok_or(AgentError::Unexpected {
                    step: STEP,
                    what: "the TPM returned no value (bank not allocated?)",
                })?;
                out.insert(*bank, *pcr, value.value().to_vec());
            }
        }
        Ok(out)
    }

    /// Extends PCR `pcr` with one digest per bank (TPM2_PCR_Extend; banks the TPM has not
    /// allocated are ignored by the TPM). Used to build a synthetic IMA state on a software TPM.
    pub fn extend_pcr(
        &mut self,
        pcr: u8,
        digests: &[(HashAlg, Vec<u8>)],
    ) -> Result<(), AgentError> {
        const STEP: &str = "PCR extend";
        let handle = PcrHandle::try_from(tss_esapi::tss2_esys::ESYS_TR_PCR0 + u32::from(pcr))
            .map_err(tpm(STEP))?;
        let mut values = DigestValues::new();
        for (alg, d) in digests {
            values.set(
                hashing(*alg),
                Digest::try_from(d.clone()).map_err(tpm(STEP))?,
            );
        }
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.pcr_extend(handle, values)
            })
            .map_err(tpm(STEP))
    }

    /// Answers a challenge: activates the credential, quotes [`quote_selection`] with
    /// [`quote_qualifying_data`]`(nonce, binding)`, reads those PCRs and the IMA log, and retries
    /// (up to 5 times) while a PCR or the log changed between the quote and the reads.
    pub fn respond(
        &mut self,
        challenge: &Challenge,
        binding: &[u8],
        ima: &ImaSource,
    ) -> Result<Evidence, AgentError> {
        let credential = self.activate_credential(&challenge.credential)?;
        let qualifying = quote_qualifying_data(&challenge.nonce, binding);
        let selection = quote_selection();
        for _ in 0..RESPOND_ATTEMPTS {
            let log_before = ima.read()?;
            let (attest, signature) = self.quote(&qualifying, &selection)?;
            let pcrs = self.read_pcrs(&selection)?;
            let log_after = ima.read()?;
            let parsed = Attest::parse(&attest).map_err(format("quote"))?;
            let hash = TpmSignature::parse(&signature)
                .map_err(format("quote"))?
                .hash;
            if log_before == log_after && parsed.check_pcr_digest(&pcrs, hash).is_ok() {
                let activation_proof = activation_proof(&credential, &challenge.nonce, &attest);
                return Ok(Evidence {
                    attest,
                    signature,
                    pcrs,
                    ima_log: log_after,
                    binding: binding.to_vec(),
                    activation_proof,
                });
            }
        }
        Err(AgentError::Unstable(RESPOND_ATTEMPTS))
    }
}

fn selection_list(
    selection: &PcrSelection,
) -> Result<tss_esapi::structures::PcrSelectionList, AgentError> {
    let mut b = PcrSelectionListBuilder::new();
    for (bank, pcrs) in &selection.banks {
        let slots = pcrs
            .iter()
            .map(|p| slot(*p))
            .collect::<Result<Vec<_>, _>>()?;
        b = b.with_selection(hashing(*bank), &slots);
    }
    b.build().map_err(tpm("PCR selection"))
}

fn create_ak(ctx: &mut Context, ek: KeyHandle) -> Result<KeyHandle, AgentError> {
    let created = ak::create_ak(
        ctx,
        ek,
        HashingAlgorithm::Sha256,
        SignatureSchemeAlgorithm::RsaSsa,
        None,
        None,
    )
    .map_err(tpm("create AK"))?;
    ak::load_ak(ctx, ek, None, created.out_private, created.out_public).map_err(tpm("load AK"))
}

fn read_public(
    ctx: &mut Context,
    key: KeyHandle,
    step: &'static str,
) -> Result<PublicArea, AgentError> {
    let (public, _, _) = ctx.read_public(key).map_err(tpm(step))?;
    let bytes = public.marshall().map_err(tpm(step))?;
    PublicArea::parse(&bytes).map_err(format(step))
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Without a resource manager transient objects outlive the connection: flush them.
        for h in [self.ak.take(), self.ek.take()].into_iter().flatten() {
            let _ = self.ctx.flush_context(ObjectHandle::from(h));
        }
    }
}
