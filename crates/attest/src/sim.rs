//! The simulated TEE: a software ed25519 platform key, kept in a file with owner-only
//! permissions, signs simulated reports. **It gives no security**: anyone who can read the
//! key file (or who makes their own key, unless the verifier pins fingerprints) can forge
//! evidence, and the host sees all memory. It exists so that every protocol path can run
//! on machines without a TEE.
//!
//! Simulated report (216 bytes): `"TSIM"` ‖ version u16le (1) ‖ 0u16 ‖ measurement (48) ‖
//! report data (64) ‖ platform public key (32) ‖ ed25519 signature (64) over
//! `"tessera-sim-attestation-v1\0"` ‖ the first 152 bytes.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{AttestError, Claims, Evidence, Policy, TeeKind, ct_eq};

/// Magic and version that open a platform key file (followed by the 32-byte secret seed).
const KEY_MAGIC: [u8; 8] = *b"TSPK\x00\x01\x00\x00";
const KEY_FILE_LEN: usize = KEY_MAGIC.len() + 32;

const REPORT_MAGIC: [u8; 4] = *b"TSIM";
const REPORT_VERSION: u16 = 1;
/// Length of a simulated report.
pub const REPORT_LEN: usize = 216;
const SIGNED_LEN: usize = 152;
const SIG_CONTEXT: &[u8] = b"tessera-sim-attestation-v1\0";
const SEAL_SALT: &[u8] = b"tessera-sim-seal-v1";

/// The simulated platform's signing key. The secret is zeroized when this is dropped.
pub struct PlatformKey {
    key: SigningKey,
}

impl std::fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlatformKey({})", self.fingerprint())
    }
}

impl PlatformKey {
    /// Loads the key at `path`, or generates one from the operating system's random source
    /// and writes it there (mode 0600, created atomically: two processes racing get the
    /// same key). A key file that group or others may read is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, AttestError> {
        match Self::load(path) {
            Ok(k) => Ok(k),
            Err(AttestError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::create(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<Self, AttestError> {
        let meta = std::fs::metadata(path).map_err(|e| AttestError::io("open", path, e))?;
        if !meta.is_file() {
            return Err(key_err(path, "is not a regular file"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(key_err(
                    path,
                    &format!(
                        "its permissions {mode:03o} let other users read the secret; run chmod 600 on it (or delete it to make a new platform)"
                    ),
                ));
            }
        }
        let bytes = Zeroizing::new(crate::policy::read_capped(path, KEY_FILE_LEN as u64)?);
        if bytes.len() != KEY_FILE_LEN || bytes.get(..KEY_MAGIC.len()) != Some(&KEY_MAGIC[..]) {
            return Err(key_err(
                path,
                "is not a tessera simulated platform key (wrong length or magic); delete it to make a new one",
            ));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&bytes[KEY_MAGIC.len()..]);
        Ok(PlatformKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    fn create(path: &Path) -> Result<Self, AttestError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|e| {
            key_err(
                path,
                &format!("the operating system's random source failed: {e}"),
            )
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| AttestError::io("create", dir, e))?;
        }
        let mut content = Zeroizing::new(Vec::with_capacity(KEY_FILE_LEN));
        content.extend_from_slice(&KEY_MAGIC);
        content.extend_from_slice(&seed[..]);
        let tmp = tmp_path(path);
        write_private(&tmp, &content)?;
        // A hard link publishes the complete file atomically and fails if another process
        // published one first; then both use that one.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(PlatformKey {
                key: SigningKey::from_bytes(&seed),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(AttestError::io("create", path, e)),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs a simulated report of `measurement` and `report_data`.
    pub fn attest(&self, measurement: &[u8; 48], report_data: &[u8; 64]) -> Evidence {
        let mut r = Vec::with_capacity(REPORT_LEN);
        r.extend_from_slice(&REPORT_MAGIC);
        r.extend_from_slice(&REPORT_VERSION.to_le_bytes());
        r.extend_from_slice(&[0, 0]);
        r.extend_from_slice(measurement);
        r.extend_from_slice(report_data);
        r.extend_from_slice(&self.public_key());
        let sig = self.key.sign(&signed_message(&r));
        r.extend_from_slice(&sig.to_bytes());
        Evidence {
            kind: TeeKind::Sim,
            report: r,
            aux: Vec::new(),
        }
    }

    /// The key's fingerprint: SHA-256 of the public key, hex (64 digits).
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.public_key())
    }

    /// A sealing key for enclave state: HKDF-SHA256 with the platform secret as input key
    /// material and the measurement as info. An enclave with another measurement derives
    /// another key.
    pub fn seal_key(&self, measurement: &[u8]) -> Zeroizing<[u8; 32]> {
        let secret = Zeroizing::new(self.key.to_bytes());
        let hk = Hkdf::<Sha256>::new(Some(SEAL_SALT), &secret[..]);
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
        if hk.expand(measurement, &mut okm[..]).is_err() {
            unreachable!("HKDF-SHA256 expand of 32 bytes");
        }
        okm
    }
}

/// The fingerprint of a simulated platform public key: SHA-256, hex.
pub fn fingerprint_of(public_key: &[u8; 32]) -> String {
    hex::encode(Sha256::digest(public_key))
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_CONTEXT.len() + body.len());
    m.extend_from_slice(SIG_CONTEXT);
    m.extend_from_slice(body);
    m
}

fn key_err(path: &Path, reason: &str) -> AttestError {
    AttestError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}-{nanos}", std::process::id()));
    path.with_file_name(name)
}

fn write_private(path: &Path, content: &[u8]) -> Result<(), AttestError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| AttestError::io("create", path, e))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .map_err(|e| AttestError::io("write", path, e))
}

/// Verifies a simulated report: layout, the signature against the embedded platform key,
/// and the policy's key pinning. (Whether simulated evidence is allowed at all is checked
/// before this, by [`Policy::check_kind`].)
pub(crate) fn verify_report(
    report: &[u8],
    aux: &[u8],
    policy: &Policy,
) -> Result<Claims, AttestError> {
    let kind = TeeKind::Sim;
    if !aux.is_empty() {
        return Err(AttestError::malformed(
            kind,
            format!(
                "simulated evidence carries no aux data, but {} bytes came with it",
                aux.len()
            ),
        ));
    }
    if report.len() != REPORT_LEN {
        return Err(AttestError::malformed(
            kind,
            format!(
                "a simulated report has {REPORT_LEN} bytes, this one {}",
                report.len()
            ),
        ));
    }
    let (body, sig) = report.split_at(SIGNED_LEN);
    if body.get(..4) != Some(&REPORT_MAGIC[..]) {
        return Err(AttestError::malformed(
            kind,
            "header: wrong magic (expected \"TSIM\")",
        ));
    }
    let version = u16::from_le_bytes([body[4], body[5]]);
    if version != REPORT_VERSION {
        return Err(AttestError::malformed(
            kind,
            format!("header: report version {version}, this build reads {REPORT_VERSION}"),
        ));
    }
    if body[6..8] != [0, 0] {
        return Err(AttestError::malformed(
            kind,
            "header: reserved bytes are not zero",
        ));
    }
    let mut measurement = [0u8; 48];
    measurement.copy_from_slice(&body[8..56]);
    let mut rd = [0u8; 64];
    rd.copy_from_slice(&body[56..120]);
    let mut pk = [0u8; 32];
    pk.copy_from_slice(&body[120..152]);
    let vk = VerifyingKey::from_bytes(&pk).map_err(|e| AttestError::Signature {
        kind,
        what: format!("the embedded platform public key is not a valid ed25519 key: {e}"),
    })?;
    let sig = Signature::from_slice(sig).map_err(|e| AttestError::Signature {
        kind,
        what: format!("malformed signature: {e}"),
    })?;
    vk.verify_strict(&signed_message(body), &sig)
        .map_err(|_| AttestError::Signature {
            kind,
            what: "the simulated report signature does not verify against its embedded platform key (header, measurement, report data, key or signature altered)".into(),
        })?;
    let fingerprint = fingerprint_of(&pk);
    if !policy.sim_platform_keys.is_empty()
        && !policy.sim_platform_keys.iter().any(|k| {
            ct_eq(
                k.trim().to_ascii_lowercase().as_bytes(),
                fingerprint.as_bytes(),
            )
        })
    {
        return Err(AttestError::PlatformKeyNotPinned { fingerprint });
    }
    Ok(Claims {
        kind,
        measurement: measurement.to_vec(),
        report_data: rd,
        tcb_status: "Simulated".into(),
        advisories: Vec::new(),
        simulated: true,
        platform: fingerprint,
        rtmrs: Vec::new(),
    })
}
