//! Verification keys: parsed once in `new` (from a secret, a PEM public key
//! or a JWK) into ready-to-use verifiers, so a request only runs the
//! signature check itself.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use rsa::pkcs1v15::Signature as Pkcs1Signature;
use rsa::pss::Signature as PssSignature;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

use crate::alg::{Alg, AlgSet};

/// The smallest RSA modulus accepted (RFC 7518 §3.3).
const MIN_RSA_BITS: u32 = 2048;

/// One verification key.
pub(crate) struct Key {
    /// The `kid` tokens name to select this key.
    pub(crate) kid: Option<String>,
    /// The algorithms this key may verify; a token with another `alg` is
    /// never checked against it.
    pub(crate) algs: AlgSet,
    material: Material,
}

enum Material {
    /// Keyed HMAC states, cloned per verification (saves re-hashing the key).
    Hmac(Box<HmacKeys>),
    Rsa(Box<RsaVerifiers>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

struct HmacKeys {
    hs256: Hmac<Sha256>,
    hs384: Hmac<Sha384>,
    hs512: Hmac<Sha512>,
}

/// One ready verifier per allowed RSA algorithm.
struct RsaVerifiers {
    rs256: Option<rsa::pkcs1v15::VerifyingKey<Sha256>>,
    rs384: Option<rsa::pkcs1v15::VerifyingKey<Sha384>>,
    rs512: Option<rsa::pkcs1v15::VerifyingKey<Sha512>>,
    ps256: Option<rsa::pss::VerifyingKey<Sha256>>,
    ps384: Option<rsa::pss::VerifyingKey<Sha384>>,
    ps512: Option<rsa::pss::VerifyingKey<Sha512>>,
}

impl Key {
    /// Whether `signature` is a valid `alg` signature of `message` by this
    /// key. The caller has checked `self.algs.contains(alg)`.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        if !self.algs.contains(alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Hmac(k), Alg::Hs256) => mac_ok(&k.hs256, message, signature),
            (Material::Hmac(k), Alg::Hs384) => mac_ok(&k.hs384, message, signature),
            (Material::Hmac(k), Alg::Hs512) => mac_ok(&k.hs512, message, signature),
            (Material::Rsa(v), _) => v.verify(alg, message, signature),
            (Material::P256(k), Alg::Es256) => {
                p256::ecdsa::Signature::from_slice(signature).is_ok_and(|s| k.verify(message, &s).is_ok())
            }
            (Material::P384(k), Alg::Es384) => {
                p384::ecdsa::Signature::from_slice(signature).is_ok_and(|s| k.verify(message, &s).is_ok())
            }
            _ => false,
        }
    }

    /// A key from an HMAC secret. `algs` (if given) must fit the secret's length.
    pub(crate) fn hmac(kid: Option<String>, secret: &[u8], algs: Option<AlgSet>) -> Result<Key, String> {
        let mut fitting = AlgSet::default();
        for a in AlgSet::HMAC.iter().filter(|a| secret.len() >= a.min_secret_len()) {
            fitting.insert(a);
        }
        let algs = match algs {
            Some(algs) => {
                check_family(algs, AlgSet::HMAC, "an HMAC secret")?;
                if let Some(a) = algs.iter().find(|a| !fitting.contains(*a)) {
                    return Err(format!(
                        "{a} needs a secret of at least {} bytes, this one has {}",
                        a.min_secret_len(),
                        secret.len()
                    ));
                }
                algs
            }
            None if fitting.is_empty() => {
                return Err(format!(
                    "an HMAC secret needs at least 32 bytes (RFC 7518 §3.2), this one has {}",
                    secret.len()
                ));
            }
            None => fitting,
        };
        let keyed = || "HMAC accepts keys of any length".to_owned();
        Ok(Key {
            kid,
            algs,
            material: Material::Hmac(Box::new(HmacKeys {
                hs256: Hmac::new_from_slice(secret).map_err(|_| keyed())?,
                hs384: Hmac::new_from_slice(secret).map_err(|_| keyed())?,
                hs512: Hmac::new_from_slice(secret).map_err(|_| keyed())?,
            })),
        })
    }

    /// A key from a PEM public key: RSA (SPKI `PUBLIC KEY` or PKCS#1 `RSA
    /// PUBLIC KEY`), or EC P-256 / P-384 (SPKI).
    pub(crate) fn pem(kid: Option<String>, pem: &str, algs: Option<AlgSet>) -> Result<Key, String> {
        use p256::pkcs8::DecodePublicKey as _;
        use rsa::pkcs1::DecodeRsaPublicKey as _;

        let pem = pem.trim();
        let label = pem.lines().next().unwrap_or_default().trim();
        if label.contains("PRIVATE KEY") {
            return Err("`pem` must be a public key, not a private key".into());
        }
        if label.contains("CERTIFICATE") {
            return Err("`pem` must be a public key; extract it from the certificate with \
                        `openssl x509 -pubkey -noout -in cert.pem`"
                .into());
        }
        if label == "-----BEGIN RSA PUBLIC KEY-----" {
            let key = rsa::PublicKey::from_pkcs1_pem(pem).map_err(|e| format!("invalid RSA public key: {e}"))?;
            return Key::rsa(kid, key, algs);
        }
        if label != "-----BEGIN PUBLIC KEY-----" {
            return Err("`pem` must start with `-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----`".into());
        }
        if let Ok(key) = rsa::PublicKey::from_public_key_pem(pem) {
            return Key::rsa(kid, key, algs);
        }
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Key::ec(kid, Material::P256(key), AlgSet::P256, "a P-256 key", algs);
        }
        if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Key::ec(kid, Material::P384(key), AlgSet::P384, "a P-384 key", algs);
        }
        Err("unsupported or malformed public key (expected RSA of at least 2048 bits, EC P-256 or EC P-384)".into())
    }

    fn rsa(kid: Option<String>, key: rsa::PublicKey, algs: Option<AlgSet>) -> Result<Key, String> {
        let bits = key.n().bit_width_vartime();
        if bits < MIN_RSA_BITS {
            return Err(format!("RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"));
        }
        let algs = match algs {
            Some(algs) => {
                check_family(algs, AlgSet::RSA, "an RSA key")?;
                algs
            }
            None => AlgSet::RSA,
        };
        let v = RsaVerifiers {
            rs256: algs.contains(Alg::Rs256).then(|| rsa::pkcs1v15::VerifyingKey::new(key.clone())),
            rs384: algs.contains(Alg::Rs384).then(|| rsa::pkcs1v15::VerifyingKey::new(key.clone())),
            rs512: algs.contains(Alg::Rs512).then(|| rsa::pkcs1v15::VerifyingKey::new(key.clone())),
            // RFC 7518 §3.5: the salt is as long as the hash.
            ps256: algs.contains(Alg::Ps256).then(|| rsa::pss::VerifyingKey::new(key.clone())),
            ps384: algs.contains(Alg::Ps384).then(|| rsa::pss::VerifyingKey::new(key.clone())),
            ps512: algs.contains(Alg::Ps512).then(|| rsa::pss::VerifyingKey::new(key)),
        };
        Ok(Key { kid, algs, material: Material::Rsa(Box::new(v)) })
    }

    fn ec(
        kid: Option<String>,
        material: Material,
        family: AlgSet,
        what: &str,
        algs: Option<AlgSet>,
    ) -> Result<Key, String> {
        if let Some(algs) = algs {
            check_family(algs, family, what)?;
        }
        Ok(Key { kid, algs: family, material })
    }

    /// A key from one JWK (RFC 7517) of a JWKS document. `Ok(None)`: a key
    /// this plugin has no use for (`use: enc`, an encryption `alg`, another
    /// key type), skipped.
    pub(crate) fn jwk(jwk: &Value) -> Result<Option<Key>, String> {
        let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
        let text = |name: &str| -> Result<Option<&str>, String> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("member `{name}` must be a string")),
            }
        };
        let required = |name: &str| -> Result<Vec<u8>, String> {
            let value = text(name)?.ok_or_else(|| format!("member `{name}` is required"))?;
            URL_SAFE_NO_PAD.decode(value).map_err(|_| format!("member `{name}` is not base64url"))
        };
        let kty = text("kty")?.ok_or("member `kty` is required")?;
        if text("use")?.is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let algs = match text("alg")? {
            None => None,
            Some(name) => match Alg::parse(name) {
                Some(a) => Some(AlgSet::of(&[a])),
                None => return Ok(None),
            },
        };
        let kid = text("kid")?.map(str::to_owned);
        match kty {
            "oct" => Key::hmac(kid, &required("k")?, algs).map(Some),
            "RSA" => {
                let n = required("n")?;
                let e = required("e")?;
                let bits = |b: &[u8]| u32::try_from(b.len() * 8).map_err(|_| "member too long".to_owned());
                let n_int = rsa::BoxedUint::from_be_slice(&n, bits(&n)?).map_err(|_| "member `n` is invalid")?;
                let e_int = rsa::BoxedUint::from_be_slice(&e, bits(&e)?).map_err(|_| "member `e` is invalid")?;
                let key = rsa::PublicKey::new(n_int, e_int).map_err(|e| format!("invalid RSA key: {e}"))?;
                Key::rsa(kid, key, algs).map(Some)
            }
            "EC" => {
                let crv = text("crv")?.ok_or("member `crv` is required")?;
                let (x, y) = (required("x")?, required("y")?);
                let point = |size: usize| -> Result<Vec<u8>, String> {
                    if x.len() != size || y.len() != size {
                        return Err(format!("members `x` and `y` of a {crv} key must be {size} bytes"));
                    }
                    Ok([&[4u8][..], &x, &y].concat())
                };
                match crv {
                    "P-256" => {
                        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point(32)?)
                            .map_err(|_| "not a point on P-256".to_owned())?;
                        Key::ec(kid, Material::P256(key), AlgSet::P256, "a P-256 key", algs).map(Some)
                    }
                    "P-384" => {
                        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point(48)?)
                            .map_err(|_| "not a point on P-384".to_owned())?;
                        Key::ec(kid, Material::P384(key), AlgSet::P384, "a P-384 key", algs).map(Some)
                    }
                    other => Err(format!("unsupported curve `{other}` (expected P-256 or P-384)")),
                }
            }
            _ => Ok(None),
        }
    }
}

impl RsaVerifiers {
    fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        match alg {
            Alg::Rs256 => signed::<_, Pkcs1Signature>(self.rs256.as_ref(), message, signature),
            Alg::Rs384 => signed::<_, Pkcs1Signature>(self.rs384.as_ref(), message, signature),
            Alg::Rs512 => signed::<_, Pkcs1Signature>(self.rs512.as_ref(), message, signature),
            Alg::Ps256 => signed::<_, PssSignature>(self.ps256.as_ref(), message, signature),
            Alg::Ps384 => signed::<_, PssSignature>(self.ps384.as_ref(), message, signature),
            Alg::Ps512 => signed::<_, PssSignature>(self.ps512.as_ref(), message, signature),
            _ => false,
        }
    }
}

/// Whether `verifier` (if any) accepts `signature` over `message`.
fn signed<V, S>(verifier: Option<&V>, message: &[u8], signature: &[u8]) -> bool
where
    V: Verifier<S>,
    S: for<'a> TryFrom<&'a [u8]>,
{
    verifier.is_some_and(|v| S::try_from(signature).is_ok_and(|s| v.verify(message, &s).is_ok()))
}

/// HMAC verification; the tag comparison is constant-time (`verify_slice`).
fn mac_ok<M: Mac + Clone>(keyed: &M, message: &[u8], tag: &[u8]) -> bool {
    let mut mac = keyed.clone();
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

fn check_family(algs: AlgSet, family: AlgSet, what: &str) -> Result<(), String> {
    if algs.is_empty() {
        return Err("`algs` must not be empty".into());
    }
    match algs.iter().find(|a| !family.contains(*a)) {
        Some(a) => Err(format!("{a} cannot be used with {what} (it allows {family})")),
        None => Ok(()),
    }
}

/// The keys of a JWKS document (a JSON string, or the document itself).
/// Keys this plugin has no use for are skipped. A malformed key is an error
/// naming it; when `lenient` (a document fetched from an identity
/// provider, where one odd key must not cost the others) it is skipped
/// instead and its error returned beside the keys.
pub(crate) fn jwks(doc: Value, lenient: bool) -> Result<(Vec<Key>, Vec<String>), String> {
    let doc = match doc {
        Value::String(text) => serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?,
        other => other,
    };
    let Some(Value::Array(jwks)) = doc.get("keys") else {
        return Err("a JWKS document is an object with a `keys` array".into());
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in jwks.iter().enumerate() {
        let name = jwk.get("kid").and_then(Value::as_str).map(|k| format!(" (kid `{k}`)")).unwrap_or_default();
        match Key::jwk(jwk) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(e) if lenient => skipped.push(format!("keys[{i}]{name}: {e}")),
            Err(e) => return Err(format!("keys[{i}]{name}: {e}")),
        }
    }
    Ok((keys, skipped))
}

/// Decode a base64 secret: standard or URL-safe alphabet, padded or not.
pub(crate) fn decode_base64_secret(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| "`secret_base64` is not valid base64".to_owned())
}
