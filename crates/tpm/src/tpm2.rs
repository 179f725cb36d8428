//! TPM 2.0 structures the verifier reads, in the TPM's big-endian wire format (TPM 2.0 Library,
//! Part 2): public areas (TPMT_PUBLIC), attestation structures (TPMS_ATTEST, quotes in
//! particular), signatures (TPMT_SIGNATURE) and PCR selections; plus quote-signature
//! verification (RSASSA-PKCS1-v1_5, RSA-PSS, ECDSA on P-256/P-384) and the PCR-digest check.
//!
//! Everything here parses hostile bytes: lengths are checked before use and a malformed input is
//! a [`TpmError`] that names the structure and field.

use std::collections::BTreeMap;

use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};

use crate::hash::HashAlg;

/// TPM_GENERATED_VALUE: the first four bytes of every structure the TPM signs itself.
pub const TPM_GENERATED: u32 = 0xFF54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// TPM_ST_ATTEST_CREATION.
pub const ST_ATTEST_CREATION: u16 = 0x801A;
/// TPM_ST_ATTEST_CERTIFY.
pub const ST_ATTEST_CERTIFY: u16 = 0x8017;

const ALG_RSA: u16 = 0x0001;
const ALG_NULL: u16 = 0x0010;
const ALG_RSASSA: u16 = 0x0014;
const ALG_RSAES: u16 = 0x0015;
const ALG_RSAPSS: u16 = 0x0016;
const ALG_ECDSA: u16 = 0x0018;
const ALG_ECDAA: u16 = 0x001A;
const ALG_ECC: u16 = 0x0023;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
const ECC_NIST_P256: u16 = 0x0003;
const ECC_NIST_P384: u16 = 0x0004;

/// Errors reading TPM structures or verifying what they claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpmError {
    /// The bytes end inside a structure.
    #[error("{structure} is truncated: {field} needs {needed} bytes, {left} left")]
    Truncated {
        /// The structure being read.
        structure: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        left: usize,
    },
    /// Bytes after the end of a structure.
    #[error("{structure} has {extra} unexpected bytes after its end")]
    TrailingBytes {
        /// The structure.
        structure: &'static str,
        /// How many bytes are left over.
        extra: usize,
    },
    /// A value the format does not allow.
    #[error("{structure}: {field} {reason}")]
    Invalid {
        /// The structure.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// An algorithm this verifier does not implement.
    #[error("{what} uses algorithm 0x{id:04x}, which this verifier does not support ({supported})")]
    Unsupported {
        /// Where the algorithm appears.
        what: &'static str,
        /// The TPM_ALG_ID or TPM_ECC_CURVE.
        id: u16,
        /// What is supported instead.
        supported: &'static str,
    },
    /// A signature that does not verify.
    #[error("signature does not verify under the attestation key: {0}")]
    BadSignature(String),
    /// A structure that does not start with TPM_GENERATED_VALUE, so the TPM did not produce it.
    #[error(
        "attestation structure does not start with TPM_GENERATED_VALUE (0xff544347, got 0x{0:08x}): the TPM did not produce it"
    )]
    NotTpmGenerated(u32),
    /// An attestation of another type than expected.
    #[error("attestation structure has type 0x{got:04x}, expected 0x{expected:04x} ({what})")]
    WrongAttestType {
        /// Type found.
        got: u16,
        /// Type expected.
        expected: u16,
        /// Name of the expected type.
        what: &'static str,
    },
    /// A PCR the quote selects but whose value was not given.
    #[error(
        "PCR {pcr} of the {bank} bank is selected by the quote but its value is missing from the evidence"
    )]
    PcrValueMissing {
        /// Bank.
        bank: HashAlg,
        /// PCR index.
        pcr: u8,
    },
    /// PCR values that do not hash to the quote's PCR digest.
    #[error(
        "the PCR values given with the quote do not hash to its PCR digest (quote {quoted}, values {computed}): \
         a PCR changed after the quote or the values were altered"
    )]
    PcrDigestMismatch {
        /// Hex of the quoted digest.
        quoted: String,
        /// Hex of the digest of the given values.
        computed: String,
    },
}

/// A big-endian reader over one structure.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    structure: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], structure: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            structure,
        }
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], TpmError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(TpmError::Truncated {
                structure: self.structure,
                field,
                needed: n,
                left,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, TpmError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, TpmError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, TpmError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, TpmError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A TPM2B: u16 size and that many bytes.
    pub(crate) fn tpm2b(&mut self, field: &'static str) -> Result<&'a [u8], TpmError> {
        let n = self.u16(field)? as usize;
        self.take(n, field)
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn finish(self) -> Result<(), TpmError> {
        let extra = self.bytes.len() - self.pos;
        if extra != 0 {
            return Err(TpmError::TrailingBytes {
                structure: self.structure,
                extra,
            });
        }
        Ok(())
    }

    fn hash(&mut self, field: &'static str) -> Result<HashAlg, TpmError> {
        let id = self.u16(field)?;
        HashAlg::from_tpm_id(id).ok_or(TpmError::Unsupported {
            what: field,
            id,
            supported: "sha1, sha256, sha384, sha512",
        })
    }
}

/// Appends a TPM2B (u16 big-endian size, then the bytes). Panics never: sizes above 65535 are
/// not produced by this crate (callers pass digests and names).
pub(crate) fn put_tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&bytes[..n as usize]);
}

/// TPMA_OBJECT bits.
pub mod attributes {
    /// The object cannot be duplicated: its private part never leaves this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The object's parent cannot change.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the private part (it was not imported).
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// USER role authorisation by password/HMAC is allowed.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// ADMIN role authorisation needs a policy session.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// The key only signs (or decrypts) TPM-generated data.
    pub const RESTRICTED: u32 = 1 << 16;
    /// A decryption (or storage) key.
    pub const DECRYPT: u32 = 1 << 17;
    /// A signing key.
    pub const SIGN_ENCRYPT: u32 = 1 << 18;
}

/// An elliptic curve of an ECC key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EccCurve {
    /// NIST P-256.
    NistP256,
    /// NIST P-384.
    NistP384,
}

impl EccCurve {
    fn size(self) -> usize {
        match self {
            EccCurve::NistP256 => 32,
            EccCurve::NistP384 => 48,
        }
    }
}

/// The public key of a TPM object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA.
    Rsa {
        /// Big-endian modulus.
        modulus: Vec<u8>,
        /// Public exponent (the TPM's 0 already replaced by 65537).
        exponent: u32,
    },
    /// ECC.
    Ecc {
        /// Curve.
        curve: EccCurve,
        /// Big-endian x coordinate, padded to the curve size.
        x: Vec<u8>,
        /// Big-endian y coordinate, padded to the curve size.
        y: Vec<u8>,
    },
}

/// A symmetric algorithm of a storage (parent) key, as used to protect credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymmetricDef {
    /// TPM_ALG_ID of the cipher (0x0006 AES).
    pub algorithm: u16,
    /// Key size in bits.
    pub key_bits: u16,
    /// TPM_ALG_ID of the mode (0x0043 CFB).
    pub mode: u16,
}

impl SymmetricDef {
    /// Whether this is AES in CFB mode (the only one credential protection uses in practice).
    pub fn is_aes_cfb(&self) -> bool {
        self.algorithm == ALG_AES && self.mode == ALG_CFB && matches!(self.key_bits, 128 | 256)
    }
}

/// The signing or encryption scheme of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyScheme {
    /// TPM_ALG_ID of the scheme (0x0014 RSASSA, 0x0016 RSAPSS, 0x0018 ECDSA, …).
    pub scheme: u16,
    /// Its hash, if the scheme has one this crate knows.
    pub hash: Option<HashAlg>,
}

/// A parsed TPMT_PUBLIC: the public area of a TPM key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicArea {
    raw: Vec<u8>,
    /// The name algorithm (hash of this area, the object's Name).
    pub name_alg: HashAlg,
    /// TPMA_OBJECT bits (see [`attributes`]).
    pub attributes: u32,
    /// The authorisation policy digest.
    pub auth_policy: Vec<u8>,
    /// The symmetric algorithm (for storage keys such as the EK), or `None` (TPM_ALG_NULL).
    pub symmetric: Option<SymmetricDef>,
    /// The scheme, or `None` (TPM_ALG_NULL).
    pub scheme: Option<KeyScheme>,
    /// The public key.
    pub key: PublicKey,
}

impl PublicArea {
    /// Parses a TPMT_PUBLIC (the whole input must be one).
    pub fn parse(bytes: &[u8]) -> Result<PublicArea, TpmError> {
        const S: &str = "TPMT_PUBLIC";
        let mut r = Reader::new(bytes, S);
        let object_type = r.u16("type")?;
        let name_alg = r.hash("nameAlg")?;
        let attributes = r.u32("objectAttributes")?;
        let auth_policy = r.tpm2b("authPolicy")?.to_vec();
        let sym_alg = r.u16("symmetric.algorithm")?;
        let symmetric = if sym_alg == ALG_NULL {
            None
        } else {
            let key_bits = r.u16("symmetric.keyBits")?;
            let mode = r.u16("symmetric.mode")?;
            Some(SymmetricDef {
                algorithm: sym_alg,
                key_bits,
                mode,
            })
        };
        let scheme_id = r.u16("scheme")?;
        let scheme = if scheme_id == ALG_NULL {
            None
        } else if object_type == ALG_RSA && scheme_id == ALG_RSAES {
            Some(KeyScheme {
                scheme: scheme_id,
                hash: None,
            })
        } else {
            let hash_id = r.u16("scheme.hashAlg")?;
            if object_type == ALG_ECC && scheme_id == ALG_ECDAA {
                r.u16("scheme.count")?;
            }
            Some(KeyScheme {
                scheme: scheme_id,
                hash: HashAlg::from_tpm_id(hash_id),
            })
        };
        let key = match object_type {
            ALG_RSA => {
                let key_bits = r.u16("keyBits")?;
                let exponent = match r.u32("exponent")? {
                    0 => 65537,
                    e => e,
                };
                let modulus = r.tpm2b("unique.rsa")?.to_vec();
                if modulus.len() * 8 != key_bits as usize {
                    return Err(TpmError::Invalid {
                        structure: S,
                        field: "unique.rsa",
                        reason: format!("has {} bits, keyBits says {key_bits}", modulus.len() * 8),
                    });
                }
                PublicKey::Rsa { modulus, exponent }
            }
            ALG_ECC => {
                let curve_id = r.u16("curveID")?;
                let curve = match curve_id {
                    ECC_NIST_P256 => EccCurve::NistP256,
                    ECC_NIST_P384 => EccCurve::NistP384,
                    id => {
                        return Err(TpmError::Unsupported {
                            what: "ECC key curve",
                            id,
                            supported: "NIST P-256, P-384",
                        });
                    }
                };
                let kdf = r.u16("kdf.scheme")?;
                if kdf != ALG_NULL {
                    r.u16("kdf.hashAlg")?;
                }
                let x = pad_coordinate(r.tpm2b("unique.ecc.x")?, curve, "unique.ecc.x")?;
                let y = pad_coordinate(r.tpm2b("unique.ecc.y")?, curve, "unique.ecc.y")?;
                PublicKey::Ecc { curve, x, y }
            }
            id => {
                return Err(TpmError::Unsupported {
                    what: "public area type",
                    id,
                    supported: "RSA, ECC",
                });
            }
        };
        let end = r.position();
        r.finish()?;
        Ok(PublicArea {
            raw: bytes[..end].to_vec(),
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            key,
        })
    }

    /// Parses a TPM2B_PUBLIC (u16 size, then a TPMT_PUBLIC).
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<PublicArea, TpmError> {
        let mut r = Reader::new(bytes, "TPM2B_PUBLIC");
        let inner = r.tpm2b("publicArea")?;
        r.finish()?;
        PublicArea::parse(inner)
    }

    /// The TPMT_PUBLIC bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The object's Name: nameAlg (u16) ‖ H_nameAlg(TPMT_PUBLIC).
    pub fn name(&self) -> Vec<u8> {
        let mut n = self.name_alg.tpm_id().to_be_bytes().to_vec();
        n.extend_from_slice(&self.name_alg.digest(&self.raw));
        n
    }

    /// Whether every bit of `mask` is set.
    pub fn has(&self, mask: u32) -> bool {
        self.attributes & mask == mask
    }

    /// Checks the attributes of an attestation key: a restricted signing key generated in and
    /// bound to its TPM (fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign, not
    /// decrypt). Only such a key signs nothing but TPM-generated structures.
    pub fn check_attestation_key(&self) -> Result<(), TpmError> {
        use attributes::*;
        let need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN_ENCRYPT;
        if !self.has(need) || self.attributes & DECRYPT != 0 {
            return Err(TpmError::Invalid {
                structure: "attestation key",
                field: "objectAttributes",
                reason: format!(
                    "0x{:08x} is not a restricted signing key bound to its TPM (needs fixedTPM, fixedParent, \
                     sensitiveDataOrigin, restricted, sign and not decrypt)",
                    self.attributes
                ),
            });
        }
        Ok(())
    }

    /// Checks the attributes of an endorsement key: a restricted decryption (storage) RSA key
    /// bound to its TPM, with a symmetric algorithm for credential protection.
    pub fn check_endorsement_key(&self) -> Result<(), TpmError> {
        use attributes::*;
        let need = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | DECRYPT;
        if !self.has(need) || self.attributes & SIGN_ENCRYPT != 0 {
            return Err(TpmError::Invalid {
                structure: "endorsement key",
                field: "objectAttributes",
                reason: format!(
                    "0x{:08x} is not a restricted decryption key bound to its TPM (needs fixedTPM, fixedParent, \
                     sensitiveDataOrigin, restricted, decrypt and not sign)",
                    self.attributes
                ),
            });
        }
        if !matches!(self.key, PublicKey::Rsa { .. }) {
            return Err(TpmError::Unsupported {
                what: "endorsement key",
                id: ALG_ECC,
                supported: "RSA endorsement keys (credential activation to ECC EKs is not implemented)",
            });
        }
        if !self.symmetric.is_some_and(|s| s.is_aes_cfb()) {
            return Err(TpmError::Invalid {
                structure: "endorsement key",
                field: "symmetric",
                reason: "must be AES-128-CFB or AES-256-CFB".into(),
            });
        }
        Ok(())
    }

    /// Verifies `signature` over `message` (the signed bytes, hashed here with the signature's
    /// hash) under this key.
    pub fn verify(&self, message: &[u8], signature: &TpmSignature) -> Result<(), TpmError> {
        if let Some(s) = self.scheme
            && (s.scheme != signature.scheme.alg_id()
                || s.hash.is_some_and(|h| h != signature.hash))
        {
            return Err(TpmError::BadSignature(format!(
                "signature scheme 0x{:04x}/{} differs from the key's scheme 0x{:04x}/{}",
                signature.scheme.alg_id(),
                signature.hash,
                s.scheme,
                s.hash.map(|h| h.name()).unwrap_or("?")
            )));
        }
        let digest = signature.hash.digest(message);
        match (&self.key, &signature.scheme) {
            (
                PublicKey::Rsa { modulus, exponent },
                SignatureScheme::RsaSsa { sig } | SignatureScheme::RsaPss { sig },
            ) => {
                let key =
                    RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(*exponent))
                        .map_err(|e| TpmError::BadSignature(format!("unusable RSA key: {e}")))?;
                let pss = matches!(signature.scheme, SignatureScheme::RsaPss { .. });
                let res = match (signature.hash, pss) {
                    (HashAlg::Sha1, false) => {
                        key.verify(Pkcs1v15Sign::new::<sha1::Sha1>(), &digest, sig)
                    }
                    (HashAlg::Sha256, false) => {
                        key.verify(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, sig)
                    }
                    (HashAlg::Sha384, false) => {
                        key.verify(Pkcs1v15Sign::new::<sha2::Sha384>(), &digest, sig)
                    }
                    (HashAlg::Sha512, false) => {
                        key.verify(Pkcs1v15Sign::new::<sha2::Sha512>(), &digest, sig)
                    }
                    (HashAlg::Sha1, true) => key.verify(Pss::new::<sha1::Sha1>(), &digest, sig),
                    (HashAlg::Sha256, true) => key.verify(Pss::new::<sha2::Sha256>(), &digest, sig),
                    (HashAlg::Sha384, true) => key.verify(Pss::new::<sha2::Sha384>(), &digest, sig),
                    (HashAlg::Sha512, true) => key.verify(Pss::new::<sha2::Sha512>(), &digest, sig),
                };
                res.map_err(|e| {
                    TpmError::BadSignature(format!(
                        "RSA {}: {e}",
                        if pss { "PSS" } else { "PKCS#1 v1.5" }
                    ))
                })
            }
            (PublicKey::Ecc { curve, x, y }, SignatureScheme::Ecdsa { r, s }) => {
                verify_ecdsa(*curve, x, y, r, s, &digest)
            }
            _ => Err(TpmError::BadSignature(
                "the signature's algorithm does not match the key type".into(),
            )),
        }
    }
}

fn pad_coordinate(v: &[u8], curve: EccCurve, field: &'static str) -> Result<Vec<u8>, TpmError> {
    let n = curve.size();
    if v.len() > n {
        return Err(TpmError::Invalid {
            structure: "TPMT_PUBLIC",
            field,
            reason: format!("{} bytes, more than {n}", v.len()),
        });
    }
    let mut out = vec![0; n - v.len()];
    out.extend_from_slice(v);
    Ok(out)
}

fn verify_ecdsa(
    curve: EccCurve,
    x: &[u8],
    y: &[u8],
    r: &[u8],
    s: &[u8],
    digest: &[u8],
) -> Result<(), TpmError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let bad = |e: String| TpmError::BadSignature(format!("ECDSA: {e}"));
    let n = curve.size();
    if r.len() > n || s.len() > n {
        return Err(bad("r or s longer than the curve order".into()));
    }
    let pad = |v: &[u8]| {
        let mut o = vec![0u8; n - v.len()];
        o.extend_from_slice(v);
        o
    };
    let (r, s) = (pad(r), pad(s));
    match curve {
        EccCurve::NistP256 => {
            let (mut fx, mut fy) = (p256::FieldBytes::default(), p256::FieldBytes::default());
            fx.copy_from_slice(x);
            fy.copy_from_slice(y);
            let point = p256::EncodedPoint::from_affine_coordinates(&fx, &fy, false);
            let vk = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|e| bad(e.to_string()))?;
            let (mut fr, mut fs) = (p256::FieldBytes::default(), p256::FieldBytes::default());
            fr.copy_from_slice(&r);
            fs.copy_from_slice(&s);
            let sig =
                p256::ecdsa::Signature::from_scalars(fr, fs).map_err(|e| bad(e.to_string()))?;
            vk.verify_prehash(digest, &sig)
                .map_err(|e| bad(e.to_string()))
        }
        EccCurve::NistP384 => {
            let (mut fx, mut fy) = (p384::FieldBytes::default(), p384::FieldBytes::default());
            fx.copy_from_slice(x);
            fy.copy_from_slice(y);
            let point = p384::EncodedPoint::from_affine_coordinates(&fx, &fy, false);
            let vk = p384::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|e| bad(e.to_string()))?;
            let (mut fr, mut fs) = (p384::FieldBytes::default(), p384::FieldBytes::default());
            fr.copy_from_slice(&r);
            fs.copy_from_slice(&s);
            let sig =
                p384::ecdsa::Signature::from_scalars(fr, fs).map_err(|e| bad(e.to_string()))?;
            vk.verify_prehash(digest, &sig)
                .map_err(|e| bad(e.to_string()))
        }
    }
}

/// The algorithm-specific part of a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureScheme {
    /// RSASSA-PKCS1-v1_5.
    RsaSsa {
        /// Signature bytes.
        sig: Vec<u8>,
    },
    /// RSASSA-PSS (salt length = hash length, as TPMs use).
    RsaPss {
        /// Signature bytes.
        sig: Vec<u8>,
    },
    /// ECDSA.
    Ecdsa {
        /// r, big-endian.
        r: Vec<u8>,
        /// s, big-endian.
        s: Vec<u8>,
    },
}

impl SignatureScheme {
    fn alg_id(&self) -> u16 {
        match self {
            SignatureScheme::RsaSsa { .. } => ALG_RSASSA,
            SignatureScheme::RsaPss { .. } => ALG_RSAPSS,
            SignatureScheme::Ecdsa { .. } => ALG_ECDSA,
        }
    }
}

/// A parsed TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmSignature {
    /// The hash the signer used.
    pub hash: HashAlg,
    /// Scheme and signature values.
    pub scheme: SignatureScheme,
}

impl TpmSignature {
    /// Parses a TPMT_SIGNATURE (RSASSA, RSAPSS or ECDSA).
    pub fn parse(bytes: &[u8]) -> Result<TpmSignature, TpmError> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let alg = r.u16("sigAlg")?;
        let hash = match alg {
            ALG_RSASSA | ALG_RSAPSS | ALG_ECDSA => r.hash("hash")?,
            id => {
                return Err(TpmError::Unsupported {
                    what: "signature",
                    id,
                    supported: "RSASSA, RSAPSS, ECDSA",
                });
            }
        };
        let scheme = match alg {
            ALG_RSASSA => SignatureScheme::RsaSsa {
                sig: r.tpm2b("sig")?.to_vec(),
            },
            ALG_RSAPSS => SignatureScheme::RsaPss {
                sig: r.tpm2b("sig")?.to_vec(),
            },
            _ => {
                let rr = r.tpm2b("signatureR")?.to_vec();
                let ss = r.tpm2b("signatureS")?.to_vec();
                SignatureScheme::Ecdsa { r: rr, s: ss }
            }
        };
        r.finish()?;
        Ok(TpmSignature { hash, scheme })
    }
}

/// A TPML_PCR_SELECTION: which PCRs of which banks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PcrSelection {
    /// Banks in order, each with its selected PCR indices in ascending order.
    pub banks: Vec<(HashAlg, Vec<u8>)>,
}

impl PcrSelection {
    /// A selection of `pcrs` in one bank.
    pub fn new(bank: HashAlg, pcrs: &[u8]) -> PcrSelection {
        let mut p = pcrs.to_vec();
        p.sort_unstable();
        p.dedup();
        PcrSelection {
            banks: vec![(bank, p)],
        }
    }

    /// Whether `pcr` of `bank` is selected.
    pub fn contains(&self, bank: HashAlg, pcr: u8) -> bool {
        self.banks
            .iter()
            .any(|(b, p)| *b == bank && p.contains(&pcr))
    }

    fn parse(r: &mut Reader<'_>) -> Result<PcrSelection, TpmError> {
        let count = r.u32("pcrSelect.count")?;
        if count > 16 {
            return Err(TpmError::Invalid {
                structure: "TPML_PCR_SELECTION",
                field: "count",
                reason: format!("{count} banks, more than 16"),
            });
        }
        let mut banks = Vec::new();
        for _ in 0..count {
            let bank = r.hash("pcrSelect.hash")?;
            let size = r.u8("pcrSelect.sizeofSelect")? as usize;
            if size > 32 {
                return Err(TpmError::Invalid {
                    structure: "TPML_PCR_SELECTION",
                    field: "sizeofSelect",
                    reason: format!("{size} bytes, more than 32"),
                });
            }
            let bits = r.take(size, "pcrSelect.pcrSelect")?;
            let mut pcrs = Vec::new();
            for (i, byte) in bits.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) != 0 {
                        pcrs.push((i * 8 + bit) as u8);
                    }
                }
            }
            banks.push((bank, pcrs));
        }
        Ok(PcrSelection { banks })
    }
}

/// PCR values by bank and index.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PcrValues {
    /// bank → PCR index → value.
    pub banks: BTreeMap<HashAlg, BTreeMap<u8, Vec<u8>>>,
}

impl PcrValues {
    /// Sets one value.
    pub fn insert(&mut self, bank: HashAlg, pcr: u8, value: Vec<u8>) {
        self.banks.entry(bank).or_default().insert(pcr, value);
    }

    /// One value, if present.
    pub fn get(&self, bank: HashAlg, pcr: u8) -> Option<&[u8]> {
        self.banks
            .get(&bank)
            .and_then(|b| b.get(&pcr))
            .map(Vec::as_slice)
    }

    /// The digest a quote over `selection` carries for these values: `H(value ‖ value ‖ …)` in
    /// selection order, with `hash` (the quote signature's hash).
    pub fn digest(&self, selection: &PcrSelection, hash: HashAlg) -> Result<Vec<u8>, TpmError> {
        let mut parts: Vec<&[u8]> = Vec::new();
        for (bank, pcrs) in &selection.banks {
            for pcr in pcrs {
                let v = self.get(*bank, *pcr).ok_or(TpmError::PcrValueMissing {
                    bank: *bank,
                    pcr: *pcr,
                })?;
                if v.len() != bank.size() {
                    return Err(TpmError::Invalid {
                        structure: "PCR values",
                        field: "value",
                        reason: format!(
                            "PCR {pcr} of the {bank} bank has {} bytes, not {}",
                            v.len(),
                            bank.size()
                        ),
                    });
                }
                parts.push(v);
            }
        }
        Ok(hash.digest_parts(&parts))
    }
}

/// The type-specific part of an attestation structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// TPMS_QUOTE_INFO.
    Quote {
        /// The PCRs quoted.
        selection: PcrSelection,
        /// Hash of their values.
        pcr_digest: Vec<u8>,
    },
    /// TPMS_CREATION_INFO (TPM2_CertifyCreation).
    Creation {
        /// Name of the object.
        object_name: Vec<u8>,
        /// Its creation hash.
        creation_hash: Vec<u8>,
    },
    /// TPMS_CERTIFY_INFO (TPM2_Certify).
    Certify {
        /// Name of the certified object.
        name: Vec<u8>,
        /// Its qualified name.
        qualified_name: Vec<u8>,
    },
    /// Another type, not interpreted.
    Other {
        /// TPMI_ST_ATTEST.
        attest_type: u16,
    },
}

/// A parsed TPMS_ATTEST: what a TPM signs with an attestation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    raw: Vec<u8>,
    /// TPMI_ST_ATTEST.
    pub attest_type: u16,
    /// Qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data (the verifier's nonce, or a hash of it).
    pub extra_data: Vec<u8>,
    /// TPM clock (ms).
    pub clock: u64,
    /// Resets since the clock was set.
    pub reset_count: u32,
    /// Restarts since the last reset.
    pub restart_count: u32,
    /// Whether the clock value is safe (never rolled back).
    pub safe: bool,
    /// Firmware version.
    pub firmware_version: u64,
    /// The type-specific part.
    pub attested: Attested,
}

impl Attest {
    /// Parses a TPMS_ATTEST (the whole input must be one).
    pub fn parse(bytes: &[u8]) -> Result<Attest, TpmError> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED {
            return Err(TpmError::NotTpmGenerated(magic));
        }
        let attest_type = r.u16("type")?;
        let qualified_signer = r.tpm2b("qualifiedSigner")?.to_vec();
        let extra_data = r.tpm2b("extraData")?.to_vec();
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe = r.u8("clockInfo.safe")? != 0;
        let firmware_version = r.u64("firmwareVersion")?;
        let attested = match attest_type {
            ST_ATTEST_QUOTE => {
                let selection = PcrSelection::parse(&mut r)?;
                let pcr_digest = r.tpm2b("pcrDigest")?.to_vec();
                Attested::Quote {
                    selection,
                    pcr_digest,
                }
            }
            ST_ATTEST_CREATION => Attested::Creation {
                object_name: r.tpm2b("objectName")?.to_vec(),
                creation_hash: r.tpm2b("creationHash")?.to_vec(),
            },
            ST_ATTEST_CERTIFY => Attested::Certify {
                name: r.tpm2b("name")?.to_vec(),
                qualified_name: r.tpm2b("qualifiedName")?.to_vec(),
            },
            other => {
                let rest = bytes.len() - r.position();
                r.take(rest, "attested")?;
                Attested::Other { attest_type: other }
            }
        };
        r.finish()?;
        Ok(Attest {
            raw: bytes.to_vec(),
            attest_type,
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            attested,
        })
    }

    /// The signed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Verifies the attestation key's signature over these bytes.
    pub fn verify_signature(
        &self,
        key: &PublicArea,
        signature: &TpmSignature,
    ) -> Result<(), TpmError> {
        key.verify(&self.raw, signature)
    }

    /// The quote's PCR selection and digest, or an error if this is not a quote.
    pub fn quote(&self) -> Result<(&PcrSelection, &[u8]), TpmError> {
        match &self.attested {
            Attested::Quote {
                selection,
                pcr_digest,
            } => Ok((selection, pcr_digest)),
            _ => Err(TpmError::WrongAttestType {
                got: self.attest_type,
                expected: ST_ATTEST_QUOTE,
                what: "a quote",
            }),
        }
    }

    /// Checks that `values` hash (with `hash`, the signature's) to the quote's PCR digest.
    pub fn check_pcr_digest(&self, values: &PcrValues, hash: HashAlg) -> Result<(), TpmError> {
        let (selection, quoted) = self.quote()?;
        let computed = values.digest(selection, hash)?;
        if computed != quoted {
            return Err(TpmError::PcrDigestMismatch {
                quoted: hex::encode(quoted),
                computed: hex::encode(computed),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_structures_are_errors() {
        assert!(matches!(
            Attest::parse(&[0xFF, 0x54]),
            Err(TpmError::Truncated { .. })
        ));
        assert!(matches!(
            Attest::parse(&[0, 0, 0, 0]),
            Err(TpmError::NotTpmGenerated(0))
        ));
        assert!(PublicArea::parse(&[0, 1, 0, 0x0b]).is_err());
        assert!(TpmSignature::parse(&[0, 0x14, 0, 0x0b, 0, 4, 1]).is_err());
        assert!(matches!(
            TpmSignature::parse(&[0, 0x05]),
            Err(TpmError::Unsupported { .. })
        ));
    }

    fn public_area(object_type: u16, params: &[u8], unique: &[&[u8]]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&object_type.to_be_bytes());
        t.extend_from_slice(&0x000Bu16.to_be_bytes());
        t.extend_from_slice(&0x0005_0072u32.to_be_bytes());
        put_tpm2b(&mut t, &[]);
        t.extend_from_slice(params);
        for u in unique {
            put_tpm2b(&mut t, u);
        }
        t
    }

    fn signature(alg: u16, hash: HashAlg, parts: &[&[u8]]) -> TpmSignature {
        let mut s = Vec::new();
        s.extend_from_slice(&alg.to_be_bytes());
        s.extend_from_slice(&hash.tpm_id().to_be_bytes());
        for p in parts {
            put_tpm2b(&mut s, p);
        }
        TpmSignature::parse(&s).unwrap()
    }

    #[test]
    fn rsa_pss_signatures_verify() {
        use rsa::traits::PublicKeyParts;
        let sk = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let mut params = vec![0x00, 0x10, 0x00, 0x16, 0x00, 0x0B]; // no symmetric, RSAPSS-SHA256
        params.extend_from_slice(&2048u16.to_be_bytes());
        params.extend_from_slice(&0u32.to_be_bytes());
        let key =
            PublicArea::parse(&public_area(ALG_RSA, &params, &[&sk.n().to_bytes_be()])).unwrap();
        key.check_attestation_key().unwrap();
        let msg = b"a TPMS_ATTEST";
        let digest = HashAlg::Sha256.digest(msg);
        let sig = sk
            .sign_with_rng(
                &mut rsa::rand_core::OsRng,
                Pss::new::<sha2::Sha256>(),
                &digest,
            )
            .unwrap();
        key.verify(msg, &signature(ALG_RSAPSS, HashAlg::Sha256, &[&sig]))
            .unwrap();
        assert!(
            key.verify(b"another", &signature(ALG_RSAPSS, HashAlg::Sha256, &[&sig]))
                .is_err()
        );
        // The key's scheme is PSS: a PKCS#1 v1.5 signature is refused even if it is valid.
        let v15 = sk
            .sign(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
            .unwrap();
        assert!(
            key.verify(msg, &signature(ALG_RSASSA, HashAlg::Sha256, &[&v15]))
                .is_err()
        );
    }

    #[test]
    fn ecdsa_signatures_verify() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        let msg = b"a TPMS_ATTEST";
        // P-256 with SHA-256.
        let sk = p256::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
        let point = sk.verifying_key().to_encoded_point(false);
        let params = [0x00, 0x10, 0x00, 0x18, 0x00, 0x0B, 0x00, 0x03, 0x00, 0x10];
        let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
        let key = PublicArea::parse(&public_area(ALG_ECC, &params, &[&x, &y])).unwrap();
        let sig: p256::ecdsa::Signature = sk.sign_prehash(&HashAlg::Sha256.digest(msg)).unwrap();
        let (r, s) = sig.split_bytes();
        key.verify(msg, &signature(ALG_ECDSA, HashAlg::Sha256, &[&r, &s]))
            .unwrap();
        assert!(
            key.verify(b"x", &signature(ALG_ECDSA, HashAlg::Sha256, &[&r, &s]))
                .is_err()
        );
        // P-384 with SHA-384.
        let sk = p384::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
        let point = sk.verifying_key().to_encoded_point(false);
        let params = [0x00, 0x10, 0x00, 0x18, 0x00, 0x0C, 0x00, 0x04, 0x00, 0x10];
        let (x, y) = (point.x().unwrap().to_vec(), point.y().unwrap().to_vec());
        let key = PublicArea::parse(&public_area(ALG_ECC, &params, &[&x, &y])).unwrap();
        let sig: p384::ecdsa::Signature = sk.sign_prehash(&HashAlg::Sha384.digest(msg)).unwrap();
        let (r, s) = sig.split_bytes();
        key.verify(msg, &signature(ALG_ECDSA, HashAlg::Sha384, &[&r, &s]))
            .unwrap();
        // An invalid point is an error, not a panic.
        let bad =
            PublicArea::parse(&public_area(ALG_ECC, &params, &[&[1u8; 48], &[2u8; 48]])).unwrap();
        assert!(
            bad.verify(msg, &signature(ALG_ECDSA, HashAlg::Sha384, &[&r, &s]))
                .is_err()
        );
    }

    #[test]
    fn pcr_selection_bits() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&0x000Bu16.to_be_bytes());
        bytes.push(3);
        bytes.extend_from_slice(&[0xFF, 0x07, 0x00]);
        let mut r = Reader::new(&bytes, "t");
        let s = PcrSelection::parse(&mut r).unwrap();
        assert_eq!(
            s,
            PcrSelection::new(HashAlg::Sha256, &(0..=10).collect::<Vec<_>>())
        );
    }
}
