//! Keys, encryption of integer polynomials, decryption to centred integers.
//!
//! The secret key never leaves the party that generated it (the enclave in `lhe`, the client in
//! `2pc`); the library zeroizes its coefficients on drop. Integers are placed in plaintext
//! coefficients as residues mod `t = 2^ℓ` and read back centred in `(−t/2, t/2]`.

use crate::{HeError, HeParams};
use fhe::bfv::{Ciphertext, Encoding, Plaintext};
use fhe_math::rns::ScalingFactor;
use fhe_math::rq::scaler::Scaler;
use fhe_math::rq::traits::TryConvertFrom;
use fhe_math::rq::{Context, Poly, Representation};
use fhe_traits::{FheDecoder, FheDecrypter, FheEncoder, FheEncrypter};
use num_bigint::BigUint;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

/// A BFV ciphertext of degree 1 (fresh) or 2 (a ciphertext × ciphertext product, decrypted
/// without relinearization).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ct(pub(crate) Ciphertext);

impl Ct {
    /// Number of polynomials (2 fresh, 3 after a ciphertext × ciphertext product).
    pub fn parts(&self) -> usize {
        self.0.len()
    }

    /// The library's ciphertext.
    pub fn inner(&self) -> &Ciphertext {
        &self.0
    }
}

/// The secret key (zeroized on drop by the library), with `s` and `s²` in NTT form at every
/// level for decryption (zeroized on drop).
pub struct SecretKey {
    pub(crate) sk: fhe::bfv::SecretKey,
    pub(crate) params: HeParams,
    levels: Vec<LevelKey>,
}

/// `s`, `s²` and the `t/q` scaler at one level.
struct LevelKey {
    s: Zeroizing<Poly>,
    s2: Zeroizing<Poly>,
    scaler: Scaler,
    q0: u64,
}

impl SecretKey {
    fn new(sk: fhe::bfv::SecretKey, params: &HeParams) -> Result<Self, HeError> {
        use fhe_traits::Serialize;
        use prost::Message;
        let bytes = Zeroizing::new(sk.to_bytes());
        let proto = fhe::proto::bfv::SecretKey::decode(bytes.as_slice())
            .map_err(|e| HeError::Operand(format!("secret key did not round-trip: {e}")))?;
        let coeffs = Zeroizing::new(proto.coeffs);
        let bfv = params.bfv();
        let plain_ctx = Context::new_arc(&bfv.moduli()[..1], bfv.degree())?;
        let t = BigUint::from(params.plaintext());
        let mut levels = Vec::with_capacity(bfv.max_level() + 1);
        for level in 0..=bfv.max_level() {
            let ctx = bfv.context_at_level(level)?;
            let mut s = Zeroizing::new(Poly::try_convert_from(
                coeffs.as_slice(),
                ctx,
                false,
                Representation::PowerBasis,
            )?);
            s.change_representation(Representation::Ntt);
            let s2 = Zeroizing::new(&*s * &*s);
            let scaler = Scaler::new(ctx, &plain_ctx, ScalingFactor::new(&t, ctx.modulus()))?;
            levels.push(LevelKey {
                s,
                s2,
                scaler,
                q0: bfv.moduli()[0],
            });
        }
        Ok(Self {
            sk,
            params: params.clone(),
            levels,
        })
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// The public (encryption) key.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub(crate) pk: fhe::bfv::PublicKey,
    pub(crate) params: HeParams,
}

/// A fresh key pair.
#[derive(Debug)]
pub struct KeyPair {
    /// Secret key.
    pub secret: SecretKey,
    /// Public key.
    pub public: PublicKey,
}

impl KeyPair {
    /// Generate a key pair for `params`.
    pub fn generate<R: RngCore + CryptoRng>(params: &HeParams, rng: &mut R) -> Self {
        let sk = fhe::bfv::SecretKey::random(params.bfv(), rng);
        let pk = fhe::bfv::PublicKey::new(&sk, rng);
        let public = PublicKey {
            pk,
            params: params.clone(),
        };
        // Building the per-level decryption keys uses only contexts these parameters already
        // built; it cannot fail for parameters that exist.
        let secret = match SecretKey::new(sk.clone(), params) {
            Ok(s) => s,
            Err(_) => SecretKey {
                sk,
                params: params.clone(),
                levels: Vec::new(),
            },
        };
        Self { secret, public }
    }
}

/// Residues mod `t` of centred integers (a value outside `(−t/2, t/2]` is an error: it would
/// wrap).
pub(crate) fn to_residues(params: &HeParams, coeffs: &[i64]) -> Result<Vec<u64>, HeError> {
    let t = params.plaintext();
    let half = (t / 2) as i128;
    coeffs
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = i128::from(v);
            if v <= -half || v > half {
                return Err(HeError::Operand(format!(
                    "coefficient {i} = {v} does not fit the plaintext modulus 2^{}",
                    params.plain_bits
                )));
            }
            Ok(v.rem_euclid(i128::from(t)) as u64)
        })
        .collect()
}

/// Centred value of a residue mod `t`.
pub(crate) fn centred(t: u64, v: u64) -> i64 {
    if v > t / 2 {
        -((t - v) as i64)
    } else {
        v as i64
    }
}

impl PublicKey {
    /// The parameters the key belongs to.
    pub fn params(&self) -> &HeParams {
        &self.params
    }

    /// Encrypt a polynomial given by its (at most `N`) centred integer coefficients.
    pub fn encrypt<R: RngCore + CryptoRng>(
        &self,
        coeffs: &[i64],
        rng: &mut R,
    ) -> Result<Ct, HeError> {
        let n = self.params.degree();
        if coeffs.len() > n {
            return Err(HeError::Operand(format!(
                "{} coefficients do not fit a ring of degree {n}",
                coeffs.len()
            )));
        }
        let v = Zeroizing::new(to_residues(&self.params, coeffs)?);
        let pt = Plaintext::try_encode(v.as_slice(), Encoding::poly(), self.params.bfv())?;
        Ok(Ct(self.pk.try_encrypt(&pt, rng)?))
    }

    /// Encrypt zero (for re-randomisation).
    pub(crate) fn encrypt_zero<R: RngCore + CryptoRng>(&self, rng: &mut R) -> Result<Ct, HeError> {
        self.encrypt(&[], rng)
    }
}

impl SecretKey {
    /// The parameters the key belongs to.
    pub fn params(&self) -> &HeParams {
        &self.params
    }

    /// Decrypt to the `N` centred coefficients: the phase `c₀ + c₁·s (+ c₂·s²)` with `s` and
    /// `s²` kept in NTT form per level, scaled by `t/q` with the library's scaler (rounded), and
    /// read centred mod `t`. Ciphertexts of more than three polynomials go through the
    /// library's general decryption.
    pub fn decrypt(&self, ct: &Ct) -> Result<Zeroizing<Vec<i64>>, HeError> {
        let level = self.params.level_of(ct)?;
        let t = self.params.plaintext();
        let Some(k) = self.levels.get(level).filter(|_| ct.parts() <= 3) else {
            let pt = self.sk.try_decrypt(&ct.0)?;
            let v = Zeroizing::new(Vec::<u64>::try_decode(&pt, Encoding::poly_at_level(level))?);
            return Ok(Zeroizing::new(v.iter().map(|&r| centred(t, r)).collect()));
        };
        let mut parts = ct.0.iter();
        let Some(c0) = parts.next() else {
            return Err(HeError::Operand("an empty ciphertext".into()));
        };
        let mut phase = Zeroizing::new(c0.clone());
        phase.change_representation(Representation::Ntt);
        for (c, key) in parts.zip([&k.s, &k.s2]) {
            let mut c = c.clone();
            c.change_representation(Representation::Ntt);
            c *= key.as_ref();
            *phase += &c;
        }
        phase.change_representation(Representation::PowerBasis);
        let d = Zeroizing::new(phase.scale(&k.scaler)?);
        let v = Zeroizing::new(Vec::<u64>::from(d.as_ref()));
        let (q0, ti) = (i128::from(k.q0), i128::from(t));
        Ok(Zeroizing::new(
            v.iter()
                .map(|&r| {
                    // round(t·phase/q) in (−t, t), held mod q₀: centre it, then mod t.
                    let r = i128::from(r);
                    let r = if r > q0 / 2 { r - q0 } else { r };
                    centred(t, r.rem_euclid(ti) as u64)
                })
                .collect(),
        ))
    }

    /// The noise of every coefficient, `phase − (q/t)·m` with the phase centred mod `q`, as f64
    /// (variable time; for the circuit-privacy tests and parameter studies, never on a path
    /// that answers a peer).
    pub fn noise_coefficients(&self, ct: &Ct) -> Result<Vec<f64>, HeError> {
        use fhe_traits::Serialize;
        use num_traits::ToPrimitive;
        use prost::Message;
        let m = self.decrypt(ct)?;
        let bytes = Zeroizing::new(self.sk.to_bytes());
        let proto = fhe::proto::bfv::SecretKey::decode(bytes.as_slice())
            .map_err(|e| HeError::Operand(format!("secret key did not round-trip: {e}")))?;
        let coeffs = Zeroizing::new(proto.coeffs);
        let first =
            ct.0.first()
                .ok_or_else(|| HeError::Operand("an empty ciphertext".into()))?;
        let ctx = first.ctx();
        let mut s = Zeroizing::new(Poly::try_convert_from(
            coeffs.as_slice(),
            ctx,
            false,
            Representation::PowerBasis,
        )?);
        s.change_representation(Representation::Ntt);
        let mut si = s.clone();
        let mut phase = first.clone();
        phase.change_representation(Representation::Ntt);
        for c in ct.0.iter().skip(1) {
            let mut c = c.clone();
            c.change_representation(Representation::Ntt);
            phase += &(&c * si.as_ref());
            *si = &*si * s.as_ref();
        }
        phase.change_representation(Representation::PowerBasis);
        let q = ctx.modulus().clone();
        let qf = q.to_f64().unwrap_or(f64::MAX);
        let half = &q >> 1;
        let t = self.params.plaintext() as f64;
        Ok(Vec::<BigUint>::from(&phase)
            .iter()
            .zip(m.iter())
            .map(|(v, &mi)| {
                let centred = if *v > half {
                    -(&q - v).to_f64().unwrap_or(f64::MAX)
                } else {
                    v.to_f64().unwrap_or(f64::MAX)
                };
                let d = centred - qf * mi as f64 / t;
                // The phase is only known mod q: take the representative nearest zero.
                d - (d / qf).round() * qf
            })
            .collect())
    }

    /// Bits of noise in `ct` (variable time in the noise: for tests and parameter checks only).
    pub fn noise_bits(&self, ct: &Ct) -> Result<usize, HeError> {
        // SAFETY (the library's caveat): the time depends on the noise, which is why this is
        // never called on a path that answers a peer.
        Ok(unsafe { self.sk.measure_noise(&ct.0)? })
    }
}
