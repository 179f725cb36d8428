//! Sealed storage: data encrypted under a key that only the same enclave (same measurement) on
//! the same platform can derive — as far as the platform's [`SealingKey`] allows: in `sim`
//! mode the key comes from a file on the host's disk (no protection, and every sealed write
//! says so), in `snp` mode from the AMD secure processor, and in `tdx` mode there is none
//! (nothing is sealed; secrets stay in memory).
//!
//! File layout: magic `TSSL`, a version byte, a 12-byte random nonce, then AES-256-GCM
//! ciphertext and tag. The measurement is also bound as associated data, so a file sealed by
//! one measurement is rejected by another even if keys were ever derived carelessly. Files are
//! written to a temporary name and renamed, so a crash never leaves a half-written state.

use crate::RuntimeError;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use std::path::Path;
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"TSSL";
const VERSION: u8 = 1;
const NONCE: usize = 12;

/// Encrypt `plain` under `key`, bound to `measurement`.
pub fn seal(key: &[u8; 32], measurement: &[u8], plain: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain,
                aad: measurement,
            },
        )
        .map_err(|_| RuntimeError::Seal("encryption failed".into()))?;
    let mut out = Vec::with_capacity(5 + NONCE + ct.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypt what [`seal`] produced. Fails when the key or measurement differ or a byte changed.
pub fn unseal(
    key: &[u8; 32],
    measurement: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RuntimeError> {
    let body = sealed
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| RuntimeError::Seal("not a sealed file (bad magic)".into()))?;
    let (&version, rest) = body
        .split_first()
        .ok_or_else(|| RuntimeError::Seal("sealed file truncated".into()))?;
    if version != VERSION {
        return Err(RuntimeError::Seal(format!(
            "sealed file version {version}, this build reads version {VERSION}"
        )));
    }
    if rest.len() < NONCE + 16 {
        return Err(RuntimeError::Seal("sealed file truncated".into()));
    }
    let (nonce, ct) = rest.split_at(NONCE);
    let nonce: [u8; NONCE] = nonce
        .try_into()
        .map_err(|_| RuntimeError::Seal("sealed file truncated".into()))?;
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ct,
                aad: measurement,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| {
            RuntimeError::Seal(
                "cannot unseal: the data was sealed by an enclave with another measurement or on \
                 another platform, or it was modified"
                    .into(),
            )
        })
}

/// What every simulated enclave prints about its sealing key.
pub const SIM_SEALING_NOTE: &str =
    "simulated TEE: sealing key is on the host's disk, no protection";
/// What an SEV-SNP enclave prints about its sealing key.
pub const SNP_SEALING_NOTE: &str = "SEV-SNP: sealing key derived by the AMD secure processor (SNP_GET_DERIVED_KEY, VCEK root, guest policy and launch measurement, then the application measurement); the host cannot derive it";
/// What a TDX enclave prints about its sealing key.
pub const TDX_SEALING_NOTE: &str = "TDX: the platform gives a TD no sealing key; the TLS identity and every secret stay in this process's memory only and are lost when it stops (nothing is sealed to disk)";

/// Where an enclave's sealing key comes from, and so what sealed files are worth.
pub enum SealingKey {
    /// Derived from a software key in a file on the host's disk (`sim`): the host can read
    /// that file and so everything sealed under it. No protection.
    HostDisk(Zeroizing<[u8; 32]>),
    /// Derived by the TEE hardware for this launch measurement and application measurement
    /// (`snp`): the host cannot derive it.
    Hardware(Zeroizing<[u8; 32]>),
    /// The platform has no sealing key (`tdx`): secrets are kept in memory only.
    MemoryOnly,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealingKey::HostDisk(_) => "SealingKey::HostDisk",
            SealingKey::Hardware(_) => "SealingKey::Hardware",
            SealingKey::MemoryOnly => "SealingKey::MemoryOnly",
        })
    }
}

impl SealingKey {
    /// The key, if the platform has one.
    pub fn key(&self) -> Option<&[u8; 32]> {
        match self {
            SealingKey::HostDisk(k) | SealingKey::Hardware(k) => Some(k),
            SealingKey::MemoryOnly => None,
        }
    }

    /// Whether the host can read what is sealed under this key.
    pub fn host_can_read(&self) -> bool {
        matches!(self, SealingKey::HostDisk(_))
    }

    /// The line an enclave prints about it when it starts.
    pub fn note(&self) -> &'static str {
        match self {
            SealingKey::HostDisk(_) => SIM_SEALING_NOTE,
            SealingKey::Hardware(_) => SNP_SEALING_NOTE,
            SealingKey::MemoryOnly => TDX_SEALING_NOTE,
        }
    }

    /// Seal `plain` (bound to `measurement`) into the file `path`. With a key the host can
    /// read it prints so ([`SIM_SEALING_NOTE`]) naming the file; without a key it refuses
    /// (nothing may be persisted where there is no sealing key).
    pub fn seal_to_file(
        &self,
        measurement: &[u8],
        path: &Path,
        plain: &[u8],
    ) -> Result<(), RuntimeError> {
        let key = self.key().ok_or_else(|| {
            RuntimeError::Seal(format!(
                "not writing {}: this platform has no sealing key, so secrets stay in memory only",
                path.display()
            ))
        })?;
        if self.host_can_read() {
            eprintln!("{SIM_SEALING_NOTE}: writing {}", path.display());
        }
        write_atomic(path, &seal(key, measurement, plain)?)
    }
}

/// Write `bytes` to `path` atomically (temporary file, then rename), readable by the owner only.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let io = |e: std::io::Error| RuntimeError::Io(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = [7u8; 32];
        let s = seal(&key, b"m1", b"secret").unwrap();
        assert_eq!(unseal(&key, b"m1", &s).unwrap().as_slice(), b"secret");
        assert!(unseal(&key, b"m2", &s).is_err());
        assert!(unseal(&[8u8; 32], b"m1", &s).is_err());
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert!(unseal(&key, b"m1", &t).is_err(), "flip at {i}");
        }
        for cut in 0..s.len() {
            assert!(unseal(&key, b"m1", &s[..cut]).is_err());
        }
    }
}
