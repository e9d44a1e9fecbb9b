//! API keys and HTTP Basic users: stored as hashes, never as plain text.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Digest32 = [u8; 32];

/// `hex(sha256(key))`, as `printf '%s' "$KEY" | sha256sum` prints it.
pub fn parse_sha256_hex(text: &str) -> Result<Digest32, String> {
    if text.len() != 64 {
        return Err(format!(
            "{text:?} is not a SHA-256 hex digest (64 hex digits, got {} characters)",
            text.len()
        ));
    }
    let mut digest = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        digest[i] = hex_pair(pair[0], pair[1])
            .ok_or_else(|| format!("{text:?} is not a SHA-256 hex digest (non-hex digit)"))?;
    }
    Ok(digest)
}

pub fn sha256(parts: &[&[u8]]) -> Digest32 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stored password: see the crate docs for why both schemes exist.
#[derive(Clone)]
pub enum PasswordHash {
    /// `sha256:<salt>:<hex>`: `sha256(salt ‖ password)`.
    Sha256 { salt: String, digest: Digest32 },
    /// `pbkdf2-sha256:<iterations>:<salt>:<hex>`: PBKDF2-HMAC-SHA256,
    /// 32-byte output.
    Pbkdf2 {
        iterations: u32,
        salt: String,
        digest: Digest32,
    },
}

/// PBKDF2 iteration bounds: below the floor the hash is barely slowed down;
/// above the ceiling one request would outlast any sane plugin deadline.
const PBKDF2_MIN_ITERATIONS: u32 = 1_000;
const PBKDF2_MAX_ITERATIONS: u32 = 1_000_000;

impl PasswordHash {
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split(':').collect();
        let salt = |salt: &str| {
            if salt.is_empty() {
                Err("the salt is empty".to_string())
            } else {
                Ok(salt.to_string())
            }
        };
        match fields.as_slice() {
            ["sha256", s, hex] => Ok(PasswordHash::Sha256 {
                salt: salt(s)?,
                digest: parse_sha256_hex(hex)?,
            }),
            ["pbkdf2-sha256", iterations, s, hex] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("iteration count {iterations:?} is not a number"))?;
                if !(PBKDF2_MIN_ITERATIONS..=PBKDF2_MAX_ITERATIONS).contains(&iterations) {
                    return Err(format!(
                        "iteration count {iterations} is outside {PBKDF2_MIN_ITERATIONS}..={PBKDF2_MAX_ITERATIONS}"
                    ));
                }
                Ok(PasswordHash::Pbkdf2 {
                    iterations,
                    salt: salt(s)?,
                    digest: parse_sha256_hex(hex)?,
                })
            }
            _ => Err(
                "expected \"sha256:<salt>:<hex>\" or \"pbkdf2-sha256:<iterations>:<salt>:<hex>\""
                    .to_string(),
            ),
        }
    }

    pub fn matches(&self, password: &str) -> bool {
        match self {
            PasswordHash::Sha256 { salt, digest } => {
                constant_time_eq(&sha256(&[salt.as_bytes(), password.as_bytes()]), digest)
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                digest,
            } => constant_time_eq(
                &pbkdf2_sha256(password.as_bytes(), salt.as_bytes(), *iterations),
                digest,
            ),
        }
    }
}

/// PBKDF2-HMAC-SHA256 (RFC 8018) with a single 32-byte output block.
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Digest32 {
    let prf = Hmac::<Sha256>::new_from_slice(password).expect("HMAC accepts any key length");
    let mut mac = prf.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: Digest32 = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = prf.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        out.iter_mut().zip(u).for_each(|(o, b)| *o ^= b);
    }
    out
}

/// `user:password` from an `Authorization: Basic …` value, if well formed.
pub fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Percent-decode a query-string component (`+` is kept as is: API keys are
/// tokens, not form text).
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = hex_pair(*bytes.get(i + 1)?, *bytes.get(i + 2)?)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The byte two hex digits spell, if they are hex digits.
fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    Some(digit(high)? << 4 | digit(low)?)
}
