//! JWT bearer tokens (RFC 7519) signed with HS256, RS256 or ES256 (RFC 7518).
//!
//! Keys come from the config only: an HS256 secret and a JWKS document
//! written inline. The algorithm a token names must fit the key it selects,
//! so an RSA public key can never be used as an HMAC secret ("alg
//! confusion"), and `none` is never accepted.

use std::collections::BTreeMap;

use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// Base64url as JWTs and JWKs use it; padding tolerated, as some issuers
/// pad their JWKS.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// RSA keys shorter than this are refused (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// A verification key selected by `kid`.
pub enum PublicKey {
    Rs256(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Es256(p256::ecdsa::VerifyingKey),
}

/// One entry of a JWKS, as much of RFC 7517 as we use.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parse a JWKS given inline: a JSON object with `keys`, or a string
/// holding one. Every key must be usable and have a unique `kid`.
pub fn parse_jwks(jwks: &Value) -> Result<BTreeMap<String, PublicKey>, String> {
    let parsed;
    let jwks = match jwks {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("jwks is not JSON: {e}"))?;
            &parsed
        }
        other => other,
    };
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("jwks must be a JSON object with a \"keys\" array")?;
    if keys.is_empty() {
        return Err("jwks has no keys".into());
    }
    let mut by_kid = BTreeMap::new();
    for (i, key) in keys.iter().enumerate() {
        let raw: RawJwk =
            serde_json::from_value(key.clone()).map_err(|e| format!("jwks.keys[{i}]: {e}"))?;
        let kid = raw
            .kid
            .clone()
            .filter(|kid| !kid.is_empty())
            .ok_or_else(|| format!("jwks.keys[{i}]: every key needs a \"kid\""))?;
        let key = parse_jwk(&raw).map_err(|e| format!("jwks.keys[{i}] (kid {kid:?}): {e}"))?;
        if by_kid.insert(kid.clone(), key).is_some() {
            return Err(format!("jwks: kid {kid:?} appears twice"));
        }
    }
    Ok(by_kid)
}

fn parse_jwk(raw: &RawJwk) -> Result<PublicKey, String> {
    if let Some(use_) = raw.use_.as_deref().filter(|u| *u != "sig") {
        return Err(format!(
            "\"use\" is {use_:?}, only \"sig\" keys verify tokens"
        ));
    }
    let member = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let text = value
            .as_deref()
            .ok_or_else(|| format!("missing \"{name}\""))?;
        B64URL
            .decode(text)
            .map_err(|_| format!("\"{name}\" is not base64url"))
    };
    let expect_alg = |alg: &str| match raw.alg.as_deref() {
        Some(other) if other != alg => Err(format!(
            "\"alg\" {other:?} is not supported for kty {:?} (only {alg})",
            raw.kty
        )),
        _ => Ok(()),
    };
    match raw.kty.as_str() {
        "RSA" => {
            expect_alg("RS256")?;
            let n = BigUint::from_bytes_be(&member(&raw.n, "n")?);
            let e = BigUint::from_bytes_be(&member(&raw.e, "e")?);
            let key = RsaPublicKey::new(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            if key.size() * 8 < MIN_RSA_BITS {
                return Err(format!(
                    "RSA key of {} bits is shorter than {MIN_RSA_BITS}",
                    key.size() * 8
                ));
            }
            Ok(PublicKey::Rs256(rsa::pkcs1v15::VerifyingKey::new(key)))
        }
        "EC" => {
            expect_alg("ES256")?;
            if raw.crv.as_deref() != Some("P-256") {
                return Err(format!(
                    "curve {:?} is not supported (only P-256)",
                    raw.crv.as_deref().unwrap_or("")
                ));
            }
            let x = member(&raw.x, "x")?;
            let y = member(&raw.y, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes each".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                x.as_slice().into(),
                y.as_slice().into(),
                false,
            );
            p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map(PublicKey::Es256)
                .map_err(|_| "the point is not on P-256".into())
        }
        other => Err(format!("kty {other:?} is not supported (RSA or EC)")),
    }
}

/// What verification needs from the config.
pub struct TokenVerifier {
    pub hs256_secret: Option<Vec<u8>>,
    pub keys: BTreeMap<String, PublicKey>,
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub leeway_s: u64,
    pub require_exp: bool,
}

/// Why a token was refused. The text goes to the client, so it names the
/// failed check and nothing more.
pub type Reason = &'static str;

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

impl TokenVerifier {
    /// Check signature and registered claims; the claims on success.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Map<String, Value>, Reason> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed token");
        };
        let header: Header = decode_json(header_b64).ok_or("malformed token")?;
        if header.crit.is_some() {
            return Err("unsupported critical header");
        }
        let signature = general_purpose::URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| "malformed token")?;
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        self.check_signature(&header, signed.as_bytes(), &signature)?;

        let claims: Map<String, Value> = decode_json(payload_b64).ok_or("malformed token")?;
        self.check_claims(&claims, now_ms / 1000)?;
        Ok(claims)
    }

    fn check_signature(
        &self,
        header: &Header,
        signed: &[u8],
        signature: &[u8],
    ) -> Result<(), Reason> {
        match header.alg.as_str() {
            "HS256" => {
                let secret = self
                    .hs256_secret
                    .as_deref()
                    .ok_or("unsupported algorithm")?;
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
                mac.update(signed);
                mac.verify_slice(signature).map_err(|_| "bad signature")
            }
            "RS256" | "ES256" => {
                let kid = header.kid.as_deref().ok_or("token has no key id")?;
                match (
                    header.alg.as_str(),
                    self.keys.get(kid).ok_or("unknown key id")?,
                ) {
                    ("RS256", PublicKey::Rs256(key)) => {
                        let signature = rsa::pkcs1v15::Signature::try_from(signature)
                            .map_err(|_| "bad signature")?;
                        key.verify(signed, &signature).map_err(|_| "bad signature")
                    }
                    ("ES256", PublicKey::Es256(key)) => {
                        // JWS carries ECDSA signatures as fixed r ‖ s, not DER.
                        let signature = p256::ecdsa::Signature::from_slice(signature)
                            .map_err(|_| "bad signature")?;
                        key.verify(signed, &signature).map_err(|_| "bad signature")
                    }
                    _ => Err("key does not match algorithm"),
                }
            }
            _ => Err("unsupported algorithm"),
        }
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), Reason> {
        let leeway = self.leeway_s as f64;
        let now = now as f64;
        match claims.get("exp") {
            Some(exp) => {
                let exp = exp.as_f64().ok_or("invalid exp claim")?;
                if now >= exp + leeway {
                    return Err("token expired");
                }
            }
            None if self.require_exp => return Err("token has no expiry"),
            None => {}
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or("invalid nbf claim")?;
            if now + leeway < nbf {
                return Err("token not yet valid");
            }
        }
        if !self.issuers.is_empty() {
            let iss = claims.get("iss").and_then(Value::as_str);
            if !iss.is_some_and(|iss| self.issuers.iter().any(|ok| ok == iss)) {
                return Err("wrong issuer");
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |aud: &Value| {
                aud.as_str()
                    .is_some_and(|aud| self.audiences.iter().any(|ok| ok == aud))
            };
            let ok = match claims.get("aud") {
                Some(Value::Array(auds)) => auds.iter().any(accepted),
                Some(aud) => accepted(aud),
                None => false,
            };
            if !ok {
                return Err("wrong audience");
            }
        }
        Ok(())
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}
