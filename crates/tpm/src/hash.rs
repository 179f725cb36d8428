//! The four hash algorithms a TPM PCR bank or an IMA log uses, with their TPM identifiers.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// A hash algorithm of a PCR bank, an IMA template hash or a TPM signature scheme.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    /// SHA-1 (TPM_ALG_SHA1, 0x0004), 20 bytes.
    Sha1,
    /// SHA-256 (TPM_ALG_SHA256, 0x000B), 32 bytes.
    Sha256,
    /// SHA-384 (TPM_ALG_SHA384, 0x000C), 48 bytes.
    Sha384,
    /// SHA-512 (TPM_ALG_SHA512, 0x000D), 64 bytes.
    Sha512,
}

impl HashAlg {
    /// All four, shortest first.
    pub const ALL: [HashAlg; 4] = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ];

    /// The TPM 2.0 algorithm identifier (TPM_ALG_ID).
    pub fn tpm_id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
            HashAlg::Sha384 => 0x000C,
            HashAlg::Sha512 => 0x000D,
        }
    }

    /// The algorithm with this TPM_ALG_ID, if it is one of the four.
    pub fn from_tpm_id(id: u16) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.tpm_id() == id)
    }

    /// Digest length in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The name Linux IMA and Keylime use: `sha1`, `sha256`, `sha384`, `sha512`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Hash of one byte string.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        self.digest_parts(&[data])
    }

    /// Hash of the concatenation of `parts`.
    pub fn digest_parts(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<Sha1>(parts),
            HashAlg::Sha256 => run::<Sha256>(parts),
            HashAlg::Sha384 => run::<Sha384>(parts),
            HashAlg::Sha512 => run::<Sha512>(parts),
        }
    }

    /// HMAC keyed with `key` over the concatenation of `parts`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC accepts keys of any length, so this cannot fail.
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            HashAlg::Sha1 => run::<Hmac<Sha1>>(key, parts),
            HashAlg::Sha256 => run::<Hmac<Sha256>>(key, parts),
            HashAlg::Sha384 => run::<Hmac<Sha384>>(key, parts),
            HashAlg::Sha512 => run::<Hmac<Sha512>>(key, parts),
        }
    }

    /// The value a PCR of this bank holds after a reset: all zeros.
    pub fn zero_pcr(self) -> Vec<u8> {
        vec![0; self.size()]
    }

    /// PCR extend: `H(old ‖ digest)`.
    pub fn extend(self, old: &[u8], digest: &[u8]) -> Vec<u8> {
        self.digest_parts(&[old, digest])
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlg {
    type Err = UnknownHashAlg;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlg::ALL
            .into_iter()
            .find(|a| {
                a.name().eq_ignore_ascii_case(s)
                    || a.name().replace("sha", "sha-").eq_ignore_ascii_case(s)
            })
            .ok_or_else(|| UnknownHashAlg(s.to_owned()))
    }
}

/// A hash algorithm name that is not one of sha1, sha256, sha384, sha512.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash algorithm {0:?}: use sha1, sha256, sha384 or sha512")]
pub struct UnknownHashAlg(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_sizes() {
        for a in HashAlg::ALL {
            assert_eq!(HashAlg::from_tpm_id(a.tpm_id()), Some(a));
            assert_eq!(a.name().parse::<HashAlg>().ok(), Some(a));
            assert_eq!(a.digest(b"abc").len(), a.size());
            assert_eq!(a.hmac(b"k", &[b"abc"]).len(), a.size());
        }
        assert_eq!("SHA-256".parse::<HashAlg>().ok(), Some(HashAlg::Sha256));
        assert!("md5".parse::<HashAlg>().is_err());
        assert_eq!(
            hex::encode(HashAlg::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
