//! Stakeholder authentication: the signing keys pinned in the broker's configuration, and the
//! signed requests through which alone a stakeholder changes anything at the broker.
//!
//! # The broker configuration
//!
//! Set up once, before the stakeholders write their policies (JSON; unknown keys are errors):
//!
//! ```json
//! {
//!   "version": 1,
//!   "stakeholders": {
//!     "data_owner": {"name": "hospital-a", "key": "<64 hex digits: ed25519 public key>"},
//!     "model_owner": {"name": "lab-b", "key": "…"},
//!     "infrastructure_provider": {"name": "cloud-c", "key": "…"}
//!   }
//! }
//! ```
//!
//! All three stakeholders must be named, each with its own key (`tessera stakeholder keygen`
//! makes one). The configuration is part of the broker's measurement ([`Pinned::measured`]):
//! a broker started with other keys has another measurement, which the stakeholders' policies
//! do not list, and another sealing key, which does not open the first broker's state.
//!
//! # Signed requests
//!
//! A [`Signed`] request names the stakeholder whose slot it changes, a revision number and an
//! [`Action`]; its ed25519 signature (verified strictly, against the key the configuration pins
//! for that stakeholder) covers [`signed_bytes`]:
//!
//! ```text
//! "tessera-attested stakeholder request v1\0" ‖ broker measurement (48) ‖ broker X25519 key (32)
//! ‖ stakeholder ‖ 0 ‖ action ‖ 0 ‖ u64be revision ‖ (u32be len ‖ field)…
//! ```
//!
//! where the fields are: a policy's JSON text; nothing for a withdrawal; a deposit's key kind,
//! name and wrapped key; a job's JSON text. The broker's measurement and public key (both from
//! evidence the stakeholder verified) make a signature useless at any other broker; the
//! revision, which must exceed the one stored for the slot, makes it useless at this broker
//! once used (no replay, no rollback to an older policy or key).

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::broker::KeyKind;
use crate::error::{AttestedError, random};
use crate::policy::Stakeholder;

const REQUEST_DOMAIN: &[u8] = b"tessera-attested stakeholder request v1\0";
const CONFIG_DOMAIN: &[u8] = b"tessera-attested broker stakeholders v1\0";
const KEY_FILE_HEADER: &str = "tessera-attested stakeholder signing key v1";

/// The broker's identity as a stakeholder has verified it: what every signature binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerId {
    /// The broker enclave's measurement (from its evidence).
    pub measurement: [u8; 48],
    /// The broker's X25519 public key (bound by that evidence).
    pub public_key: [u8; 32],
}

/// One stakeholder as the configuration file names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedEntry {
    /// The stakeholder's name (for reports).
    pub name: String,
    /// Its ed25519 public key (hex, 32 bytes).
    pub key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    version: u32,
    stakeholders: BTreeMap<Stakeholder, PinnedEntry>,
}

/// The stakeholders' pinned signing keys: the broker accepts a change to a stakeholder's slot
/// only when it is signed by that stakeholder's key here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    keys: BTreeMap<Stakeholder, (String, VerifyingKey)>,
}

impl Pinned {
    /// Pins `keys` (name and key per stakeholder). All three stakeholders are required, each
    /// with a distinct, non-weak key.
    pub fn new(
        keys: BTreeMap<Stakeholder, (String, VerifyingKey)>,
        origin: &str,
    ) -> Result<Pinned, AttestedError> {
        let bad = |reason: String| AttestedError::BrokerConfig {
            origin: origin.into(),
            reason,
        };
        for who in Stakeholder::ALL {
            let Some((_, k)) = keys.get(&who) else {
                return Err(bad(format!(
                    "names no {who} (\"{}\"): every stakeholder's signing key must be pinned",
                    who.key()
                )));
            };
            if k.is_weak() {
                return Err(bad(format!(
                    "the {who}'s key is a weak (small-order) ed25519 key"
                )));
            }
        }
        let mut seen: Vec<&VerifyingKey> = Vec::new();
        for (who, (_, k)) in &keys {
            if seen.contains(&k) {
                return Err(bad(format!(
                    "the {who} shares its signing key with another stakeholder: each needs its own (`tessera stakeholder keygen`)"
                )));
            }
            seen.push(k);
        }
        Ok(Pinned { keys })
    }

    /// Parses a configuration file's text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Pinned, AttestedError> {
        let bad = |reason: String| AttestedError::BrokerConfig {
            origin: origin.into(),
            reason,
        };
        let f: ConfigFile = serde_json::from_str(text)
            .map_err(|e| bad(format!("not a broker configuration: {e}")))?;
        if f.version != 1 {
            return Err(bad(format!(
                "version {} is not supported; write \"version\": 1",
                f.version
            )));
        }
        let mut keys = BTreeMap::new();
        for (who, e) in f.stakeholders {
            let k = parse_public_key(&e.key)
                .map_err(|r| bad(format!("the {who}'s key {:?}: {r}", e.key)))?;
            keys.insert(who, (e.name, k));
        }
        Pinned::new(keys, origin)
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Pinned, AttestedError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| AttestedError::io("reading", path, e))?;
        Pinned::from_json(&text, &path.display().to_string())
    }

    /// The configuration as JSON (what [`Pinned::from_json`] reads).
    pub fn to_json(&self) -> String {
        let stakeholders: BTreeMap<Stakeholder, PinnedEntry> = self
            .keys
            .iter()
            .map(|(who, (name, k))| {
                (
                    *who,
                    PinnedEntry {
                        name: name.clone(),
                        key: hex::encode(k.as_bytes()),
                    },
                )
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "version": 1,
            "stakeholders": stakeholders,
        }))
        .unwrap_or_default()
    }

    /// The bytes the broker's measurement covers: every stakeholder's key and name, in
    /// [`Stakeholder::ALL`] order.
    pub fn measured(&self) -> Vec<u8> {
        let mut b = CONFIG_DOMAIN.to_vec();
        for who in Stakeholder::ALL {
            if let Some((name, k)) = self.keys.get(&who) {
                b.extend_from_slice(who.key().as_bytes());
                b.push(0);
                b.extend_from_slice(k.as_bytes());
                push_field(&mut b, name.as_bytes());
            }
        }
        b
    }

    /// The pinned key of `who`.
    pub fn key(&self, who: Stakeholder) -> Option<&VerifyingKey> {
        self.keys.get(&who).map(|(_, k)| k)
    }

    /// The configured name of `who`.
    pub fn name(&self, who: Stakeholder) -> Option<&str> {
        self.keys.get(&who).map(|(n, _)| n.as_str())
    }
}

fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(s.trim()).map_err(|_| "not hex".to_string())?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("{} bytes, expected 32", bytes.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// A stakeholder's signing key (ed25519; the secret is zeroized on drop).
pub struct StakeholderKey {
    key: SigningKey,
}

impl std::fmt::Debug for StakeholderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StakeholderKey({})",
            hex::encode(self.public().as_bytes())
        )
    }
}

impl StakeholderKey {
    /// A fresh key from the operating system's random generator.
    pub fn generate() -> Result<StakeholderKey, AttestedError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random(seed.as_mut())?;
        Ok(StakeholderKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The public key (what the broker configuration pins).
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Writes the key to `path` (owner-only, atomically); refuses to replace an existing file.
    pub fn save(&self, path: &Path) -> Result<(), AttestedError> {
        if path.exists() {
            return Err(AttestedError::io(
                "writing",
                path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file is already there; remove it or choose another path (a signing key is never overwritten)",
                ),
            ));
        }
        let text = Zeroizing::new(format!(
            "{KEY_FILE_HEADER}\n{}\n",
            hex::encode(self.key.to_bytes())
        ));
        tessera_runtime::seal::write_atomic(path, text.as_bytes())?;
        Ok(())
    }

    /// Reads a key written by [`StakeholderKey::save`].
    pub fn load(path: &Path) -> Result<StakeholderKey, AttestedError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| AttestedError::io("reading", path, e))?,
        );
        let bad = |r: &str| AttestedError::KeyFile {
            path: path.display().to_string(),
            reason: r.into(),
        };
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(KEY_FILE_HEADER) {
            return Err(bad(
                "not a stakeholder signing key (make one with `tessera stakeholder keygen`)",
            ));
        }
        let seed = Zeroizing::new(
            hex::decode(lines.next().unwrap_or_default().trim())
                .map_err(|_| bad("the key line is not hex"))?,
        );
        let arr: Zeroizing<[u8; 32]> = Zeroizing::new(
            seed.as_slice()
                .try_into()
                .map_err(|_| bad("the key is not 32 bytes"))?,
        );
        Ok(StakeholderKey {
            key: SigningKey::from_bytes(&arr),
        })
    }

    /// Signs `action` for `who`'s slot at revision `revision`, for the broker `broker`.
    pub fn sign(
        &self,
        who: Stakeholder,
        revision: u64,
        action: Action,
        broker: &BrokerId,
    ) -> Signed {
        let sig = self.key.sign(&signed_bytes(broker, who, revision, &action));
        Signed {
            stakeholder: who,
            revision,
            action,
            signature: sig.to_bytes().to_vec(),
        }
    }
}

/// What a stakeholder asks of the broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Store a new revision of the signer's policy (JSON text).
    SubmitPolicy {
        /// The policy.
        json: String,
    },
    /// Withdraw the signer's policy, and with it its consent to every job.
    WithdrawPolicy,
    /// Deposit a key: the dataset key (data owner) or a job's model key (model owner).
    DepositKey {
        /// Which key.
        kind: KeyKind,
        /// Dataset or job name.
        name: String,
        /// [`crate::wrap::wrap`] to the broker's key under [`crate::broker::deposit_context`].
        wrapped: Vec<u8>,
    },
    /// Submit a job (JSON text; the model owner's).
    SubmitJob {
        /// The job.
        json: String,
    },
}

impl Action {
    /// A short name for messages.
    pub fn tag(&self) -> &'static str {
        match self {
            Action::SubmitPolicy { .. } => "policy",
            Action::WithdrawPolicy => "withdraw",
            Action::DepositKey { .. } => "deposit",
            Action::SubmitJob { .. } => "job",
        }
    }
}

/// A stakeholder's signed request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed {
    /// Whose slot it changes (and whose pinned key must verify the signature).
    pub stakeholder: Stakeholder,
    /// Must exceed the revision stored for the slot.
    pub revision: u64,
    /// What to do.
    pub action: Action,
    /// ed25519 over [`signed_bytes`] (64 bytes).
    pub signature: Vec<u8>,
}

impl Signed {
    /// Checks the signature against `who`'s key in `pinned`, for the broker `broker`. Fails
    /// with [`AttestedError::BadSignature`].
    pub fn verify(&self, pinned: &Pinned, broker: &BrokerId) -> Result<(), AttestedError> {
        let bad = |reason: &str| AttestedError::BadSignature {
            stakeholder: self.stakeholder,
            reason: reason.into(),
        };
        let key = pinned
            .key(self.stakeholder)
            .ok_or_else(|| bad("the broker configuration pins no key for it"))?;
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| bad("the signature is not 64 bytes"))?;
        let msg = signed_bytes(broker, self.stakeholder, self.revision, &self.action);
        key.verify_strict(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| {
                bad("the signature does not verify against the key the broker configuration pins for it (forged, or signed for another broker)")
            })
    }

    /// The digest an acceptance receipt binds (see [`crate::broker::receipt_nonce`]).
    pub fn digest(&self, broker: &BrokerId) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(signed_bytes(
            broker,
            self.stakeholder,
            self.revision,
            &self.action,
        ));
        h.update(&self.signature);
        h.finalize().into()
    }
}

fn push_field(b: &mut Vec<u8>, f: &[u8]) {
    b.extend_from_slice(&(f.len().min(u32::MAX as usize) as u32).to_be_bytes());
    b.extend_from_slice(f);
}

/// The bytes a stakeholder signs (see the module documentation).
pub fn signed_bytes(
    broker: &BrokerId,
    who: Stakeholder,
    revision: u64,
    action: &Action,
) -> Vec<u8> {
    let mut b = REQUEST_DOMAIN.to_vec();
    b.extend_from_slice(&broker.measurement);
    b.extend_from_slice(&broker.public_key);
    b.extend_from_slice(who.key().as_bytes());
    b.push(0);
    b.extend_from_slice(action.tag().as_bytes());
    b.push(0);
    b.extend_from_slice(&revision.to_be_bytes());
    match action {
        Action::SubmitPolicy { json } | Action::SubmitJob { json } => {
            push_field(&mut b, json.as_bytes())
        }
        Action::WithdrawPolicy => {}
        Action::DepositKey {
            kind,
            name,
            wrapped,
        } => {
            push_field(&mut b, kind.tag().as_bytes());
            push_field(&mut b, name.as_bytes());
            push_field(&mut b, wrapped);
        }
    }
    b
}

/// A default revision: the current time in milliseconds since the Unix epoch (so successive
/// submissions from one stakeholder increase without it keeping a counter). Pass an explicit
/// revision where the clock cannot be trusted to move forward.
pub fn revision_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
