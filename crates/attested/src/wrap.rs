//! Key wrapping to an X25519 public key: how a stakeholder hands a key to the broker enclave,
//! and how the broker releases a key to an attested host.
//!
//! `wrap(recipient, context, secret)`: a fresh ephemeral X25519 key `e`; `shared = X25519(e,
//! recipient)` (refused if all-zero, i.e. a low-order recipient key); `k = HKDF-SHA-256(salt =
//! epk ‖ recipient, ikm = shared, info = "tessera-attested wrap v1\0" ‖ context)`; the output is
//! `epk ‖ AES-256-GCM_k(nonce = 0, aad = context, secret)`. Each `k` encrypts exactly one
//! message, so the fixed nonce is safe. The `context` names what is wrapped and for which
//! attestation (job, quote hash): a wrapped key moved to another context does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use hkdf::Hkdf;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{AttestedError, random};

const INFO: &[u8] = b"tessera-attested wrap v1\0";
/// Bytes a wrap adds to the secret: ephemeral public key and GCM tag.
pub const WRAP_OVERHEAD: usize = 32 + 16;

/// An X25519 key pair. The secret is zeroized on drop.
pub struct KeyPair {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &hex::encode(self.public))
            .field("secret", &"<secret>")
            .finish()
    }
}

impl KeyPair {
    /// A fresh key pair from the operating system's random generator.
    pub fn generate() -> Result<KeyPair, AttestedError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        random(secret.as_mut())?;
        Ok(KeyPair::from_secret(secret))
    }

    /// The key pair of a stored secret.
    pub fn from_secret(secret: Zeroizing<[u8; 32]>) -> KeyPair {
        let public = MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
        KeyPair { secret, public }
    }

    /// The secret (for sealing it).
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The public key.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// Opens what [`wrap`] made for this key pair's public key with the same `context`.
    pub fn unwrap_key(
        &self,
        context: &[u8],
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, AttestedError> {
        let (epk, ct) = wrapped
            .split_first_chunk::<32>()
            .ok_or_else(|| AttestedError::KeyWrap("wrapped key truncated".into()))?;
        if ct.len() < 16 {
            return Err(AttestedError::KeyWrap("wrapped key truncated".into()));
        }
        let key = derive(&self.secret, epk, epk, &self.public, context)?;
        Aes256Gcm::new((&*key).into())
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: ct,
                    aad: context,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                AttestedError::KeyWrap(
                    "the wrapped key does not open: it was made for another recipient or context \
                     (job, quote), or it was modified"
                        .into(),
                )
            })
    }
}

/// `HKDF-SHA-256(salt = epk ‖ rpk, ikm = X25519(secret, peer), info = INFO ‖ context)`.
fn derive(
    secret: &[u8; 32],
    peer: &[u8; 32],
    epk: &[u8; 32],
    rpk: &[u8; 32],
    context: &[u8],
) -> Result<Zeroizing<[u8; 32]>, AttestedError> {
    let mut shared = MontgomeryPoint(*peer).mul_clamped(*secret).to_bytes();
    if bool::from(shared.ct_eq(&[0u8; 32])) {
        shared.zeroize();
        return Err(AttestedError::KeyWrap(
            "X25519 produced the all-zero secret: a low-order public key was offered".into(),
        ));
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(epk);
    salt[32..].copy_from_slice(rpk);
    let hk = Hkdf::<Sha256>::new(Some(&salt), &shared);
    shared.zeroize();
    let mut info = Vec::with_capacity(INFO.len() + context.len());
    info.extend_from_slice(INFO);
    info.extend_from_slice(context);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(&info, okm.as_mut())
        .map_err(|_| AttestedError::KeyWrap("HKDF expand failed".into()))?;
    Ok(okm)
}

/// Encrypts `secret` to `recipient` (an X25519 public key) under `context`.
pub fn wrap(recipient: &[u8; 32], context: &[u8], secret: &[u8]) -> Result<Vec<u8>, AttestedError> {
    let eph = KeyPair::generate()?;
    let key = derive(eph.secret(), recipient, eph.public(), recipient, context)?;
    let ct = Aes256Gcm::new((&*key).into())
        .encrypt(
            &Nonce::default(),
            Payload {
                msg: secret,
                aad: context,
            },
        )
        .map_err(|_| AttestedError::KeyWrap("AES-GCM encryption failed".into()))?;
    let mut out = Vec::with_capacity(32 + ct.len());
    out.extend_from_slice(eph.public());
    out.extend_from_slice(&ct);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trip_and_refusals() {
        let kp = KeyPair::generate().unwrap();
        let w = wrap(kp.public(), b"job-1", b"dataset key bytes").unwrap();
        assert_eq!(w.len(), 17 + WRAP_OVERHEAD);
        assert_eq!(
            kp.unwrap_key(b"job-1", &w).unwrap().as_slice(),
            b"dataset key bytes"
        );
        assert!(kp.unwrap_key(b"job-2", &w).is_err(), "other context");
        let other = KeyPair::generate().unwrap();
        assert!(other.unwrap_key(b"job-1", &w).is_err(), "other recipient");
        for i in [0, 31, 32, w.len() - 1] {
            let mut t = w.clone();
            t[i] ^= 1;
            assert!(kp.unwrap_key(b"job-1", &t).is_err(), "flipped byte {i}");
        }
        assert!(kp.unwrap_key(b"job-1", &w[..40]).is_err());
        assert!(wrap(&[0u8; 32], b"x", b"y").is_err(), "low-order key");
    }
}
