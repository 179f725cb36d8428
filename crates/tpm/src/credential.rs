//! Credential protection (TPM 2.0 Library, Part 1, "Credential Protection"), done in software by
//! a verifier that has no TPM: TPM2_MakeCredential for an RSA endorsement key.
//!
//! The verifier picks a secret *credential* and encrypts it so that only the TPM that holds the
//! EK's private key, and only when the object named `object_name` (the attestation key) is
//! loaded in that same TPM, can recover it with TPM2_ActivateCredential:
//!
//! 1. a random *seed* (as long as the EK's name-algorithm digest) is encrypted to the EK with
//!    RSA-OAEP (the EK's name algorithm, label `"IDENTITY\0"`): the *encrypted secret*;
//! 2. `symKey = KDFa(nameAlg, seed, "STORAGE", objectName, ∅, EK symmetric key bits)`, and the
//!    credential as a TPM2B_DIGEST is encrypted with AES-CFB under it (zero IV);
//! 3. `hmacKey = KDFa(nameAlg, seed, "INTEGRITY", ∅, ∅, digest bits)`, and
//!    `outerHMAC = HMAC(hmacKey, encIdentity ‖ objectName)`;
//! 4. the *credential blob* (TPM2B_ID_OBJECT contents) is `outerHMAC` as a TPM2B_DIGEST
//!    followed by `encIdentity`.
//!
//! The TPM checks the HMAC over the AK's name before decrypting, so the credential comes back
//! only if the AK with exactly that public area is resident in the EK's TPM.

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use rsa::{BigUint, Oaep, RsaPublicKey};
use zeroize::{Zeroize, Zeroizing};

use crate::hash::HashAlg;
use crate::tpm2::{PublicArea, PublicKey, TpmError, put_tpm2b};

/// The OAEP label for credential seeds.
const IDENTITY_LABEL: &str = "IDENTITY\0";

/// The output of MakeCredential: what the agent passes to TPM2_ActivateCredential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CredentialBlob {
    /// The TPM2B_ID_OBJECT contents (without its u16 size): outer HMAC and encrypted credential.
    pub id_object: Vec<u8>,
    /// The TPM2B_ENCRYPTED_SECRET contents (without its u16 size): the seed, RSA-OAEP encrypted
    /// to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// Errors making a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The EK cannot protect credentials.
    #[error("cannot make a credential for this endorsement key: {0}")]
    UnsuitableEk(#[from] TpmError),
    /// The credential is empty or longer than the EK's name-algorithm digest.
    #[error(
        "credential of {len} bytes: it must be 1 to {max} bytes (the EK's name-algorithm digest size)"
    )]
    CredentialSize {
        /// Given length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// The operating system's random generator or RSA encryption failed.
    #[error("making the credential failed: {0}")]
    Crypto(String),
}

/// KDFa (TPM 2.0 Part 1, 11.4.10.2, SP 800-108 counter mode with HMAC): `bits` of key material
/// from `key`, a label (its terminating NUL is included, as the TPM does), and two contexts.
pub fn kdfa(
    hash: HashAlg,
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    let bytes = (bits as usize).div_ceil(8);
    let mut label_z = label.as_bytes().to_vec();
    if label_z.last() != Some(&0) {
        label_z.push(0);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + hash.size()));
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let block = Zeroizing::new(hash.hmac(
            key,
            &[
                &counter.to_be_bytes(),
                &label_z,
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        ));
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(bytes);
    if !bits.is_multiple_of(8)
        && let Some(first) = out.first_mut()
    {
        *first &= (1u8 << (bits % 8)) - 1;
    }
    out
}

/// AES in CFB mode with full-block feedback and a zero IV, as the TPM uses for credentials.
/// `decrypt` selects the direction.
pub(crate) fn aes_cfb(key: &[u8], data: &mut [u8], decrypt: bool) -> Result<(), CredentialError> {
    enum Cipher {
        A128(Box<aes::Aes128>),
        A256(Box<aes::Aes256>),
    }
    let cipher = match key.len() {
        16 => Cipher::A128(Box::new(
            aes::Aes128::new_from_slice(key).map_err(|e| CredentialError::Crypto(e.to_string()))?,
        )),
        32 => Cipher::A256(Box::new(
            aes::Aes256::new_from_slice(key).map_err(|e| CredentialError::Crypto(e.to_string()))?,
        )),
        n => return Err(CredentialError::Crypto(format!("AES key of {n} bytes"))),
    };
    let mut iv = Zeroizing::new([0u8; 16]);
    for chunk in data.chunks_mut(16) {
        let mut block = Array::from(*iv);
        match &cipher {
            Cipher::A128(c) => c.encrypt_block(&mut block),
            Cipher::A256(c) => c.encrypt_block(&mut block),
        }
        let mut next = [0u8; 16];
        for (i, b) in chunk.iter_mut().enumerate() {
            let c = if decrypt { *b } else { *b ^ block[i] };
            *b ^= block[i];
            next[i] = c;
        }
        *iv = next;
        block.as_mut_slice().zeroize();
    }
    Ok(())
}

/// TPM2_MakeCredential in software: protects `credential` (1 to nameAlg-digest-size bytes) for
/// the TPM holding `ek` (an RSA endorsement key) and the object named `object_name` (the
/// attestation key's Name, [`PublicArea::name`]).
pub fn make_credential(
    ek: &PublicArea,
    object_name: &[u8],
    credential: &[u8],
) -> Result<CredentialBlob, CredentialError> {
    ek.check_endorsement_key()?;
    let name_alg = ek.name_alg;
    if credential.is_empty() || credential.len() > name_alg.size() {
        return Err(CredentialError::CredentialSize {
            len: credential.len(),
            max: name_alg.size(),
        });
    }
    let (PublicKey::Rsa { modulus, exponent }, Some(sym)) = (&ek.key, ek.symmetric) else {
        return Err(CredentialError::Crypto(
            "endorsement key is not an RSA storage key".into(),
        ));
    };
    let mut seed = Zeroizing::new(vec![0u8; name_alg.size()]);
    getrandom::fill(&mut seed).map_err(|e| CredentialError::Crypto(format!("random seed: {e}")))?;

    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(*exponent))
        .map_err(|e| CredentialError::Crypto(format!("EK public key: {e}")))?;
    let padding = match name_alg {
        HashAlg::Sha1 => Oaep::new_with_label::<sha1::Sha1, _>(IDENTITY_LABEL),
        HashAlg::Sha256 => Oaep::new_with_label::<sha2::Sha256, _>(IDENTITY_LABEL),
        HashAlg::Sha384 => Oaep::new_with_label::<sha2::Sha384, _>(IDENTITY_LABEL),
        HashAlg::Sha512 => Oaep::new_with_label::<sha2::Sha512, _>(IDENTITY_LABEL),
    };
    let encrypted_secret = key
        .encrypt(&mut rsa::rand_core::OsRng, padding, &seed)
        .map_err(|e| CredentialError::Crypto(format!("RSA-OAEP to the EK: {e}")))?;

    let sym_key = kdfa(
        name_alg,
        &seed,
        "STORAGE",
        object_name,
        &[],
        u32::from(sym.key_bits),
    );
    let mut enc_identity = Zeroizing::new(Vec::with_capacity(2 + credential.len()));
    put_tpm2b(&mut enc_identity, credential);
    aes_cfb(&sym_key, &mut enc_identity, false)?;

    let hmac_key = kdfa(
        name_alg,
        &seed,
        "INTEGRITY",
        &[],
        &[],
        (name_alg.size() * 8) as u32,
    );
    let outer_hmac = name_alg.hmac(&hmac_key, &[&enc_identity, object_name]);
    let mut id_object = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    put_tpm2b(&mut id_object, &outer_hmac);
    id_object.extend_from_slice(&enc_identity);
    Ok(CredentialBlob {
        id_object,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm2::Reader;
    use rsa::RsaPrivateKey;
    use subtle::ConstantTimeEq;

    /// TPM2_ActivateCredential in software, to test the construction end to end.
    fn activate(
        ek_private: &RsaPrivateKey,
        ek: &PublicArea,
        object_name: &[u8],
        blob: &CredentialBlob,
    ) -> Option<Vec<u8>> {
        let seed = ek_private
            .decrypt(
                Oaep::new_with_label::<sha2::Sha256, _>(IDENTITY_LABEL),
                &blob.encrypted_secret,
            )
            .ok()?;
        let mut r = Reader::new(&blob.id_object, "TPM2B_ID_OBJECT");
        let hmac = r.tpm2b("integrityHMAC").ok()?.to_vec();
        let enc = blob.id_object.get(r.position()..)?.to_vec();
        let hmac_key = kdfa(
            ek.name_alg,
            &seed,
            "INTEGRITY",
            &[],
            &[],
            (ek.name_alg.size() * 8) as u32,
        );
        let expect = ek.name_alg.hmac(&hmac_key, &[&enc, object_name]);
        if !bool::from(expect.ct_eq(&hmac)) {
            return None;
        }
        let sym_key = kdfa(ek.name_alg, &seed, "STORAGE", object_name, &[], 128);
        let mut dec = enc.clone();
        aes_cfb(&sym_key, &mut dec, true).ok()?;
        let mut r = Reader::new(&dec, "TPM2B_DIGEST");
        Some(r.tpm2b("credential").ok()?.to_vec())
    }

    fn software_ek() -> (RsaPrivateKey, PublicArea) {
        use rsa::traits::PublicKeyParts;
        let sk = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let n = sk.n().to_bytes_be();
        let mut t = Vec::new();
        t.extend_from_slice(&0x0001u16.to_be_bytes()); // RSA
        t.extend_from_slice(&0x000Bu16.to_be_bytes()); // SHA-256
        t.extend_from_slice(&0x0003_00B2u32.to_be_bytes()); // the default EK's attributes
        put_tpm2b(&mut t, &[0xAA; 32]);
        t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43]); // AES-128-CFB
        t.extend_from_slice(&0x0010u16.to_be_bytes()); // scheme NULL
        t.extend_from_slice(&2048u16.to_be_bytes());
        t.extend_from_slice(&0u32.to_be_bytes());
        put_tpm2b(&mut t, &n);
        (sk, PublicArea::parse(&t).unwrap())
    }

    #[test]
    fn make_then_activate_in_software() {
        let (sk, ek) = software_ek();
        ek.check_endorsement_key().unwrap();
        let name = [0x00, 0x0B]
            .iter()
            .copied()
            .chain([7u8; 32])
            .collect::<Vec<_>>();
        let blob = make_credential(&ek, &name, b"thirty-two bytes of credential!!").unwrap();
        assert_eq!(
            activate(&sk, &ek, &name, &blob).as_deref(),
            Some(&b"thirty-two bytes of credential!!"[..])
        );
        // Another object name: the HMAC fails.
        let mut other = name.clone();
        other[5] ^= 1;
        assert_eq!(activate(&sk, &ek, &other, &blob), None);
        assert!(matches!(
            make_credential(&ek, &name, &[0; 33]),
            Err(CredentialError::CredentialSize { .. })
        ));
    }

    #[test]
    fn cfb_roundtrip_and_kdfa_length() {
        let key = [9u8; 16];
        let mut data = b"a message that is not a multiple of sixteen".to_vec();
        let orig = data.clone();
        aes_cfb(&key, &mut data, false).unwrap();
        assert_ne!(data, orig);
        aes_cfb(&key, &mut data, true).unwrap();
        assert_eq!(data, orig);
        assert_eq!(
            kdfa(HashAlg::Sha256, b"k", "STORAGE", b"u", b"", 128).len(),
            16
        );
        assert_eq!(
            kdfa(HashAlg::Sha256, b"k", "STORAGE", b"u", b"", 520).len(),
            65
        );
        assert_eq!(kdfa(HashAlg::Sha1, b"k", "X", b"", b"", 9)[0] & 0xFE, 0);
    }
}
