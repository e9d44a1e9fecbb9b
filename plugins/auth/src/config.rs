//! The config table from `proxy.toml`: parsed strictly, checked once in
//! `validate-config`, turned into ready-to-use keys and hashes.

use std::collections::BTreeMap;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use weir_plugin::PathPrefix;

use crate::credentials::{parse_sha256_hex, Digest32, PasswordHash};
use crate::jwt::{self, TokenVerifier};

/// An authentication method, by the name used in config and in the
/// `auth-method` property.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    ApiKey,
    Basic,
    Jwt,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::ApiKey => "api_key",
            Method::Basic => "basic",
            Method::Jwt => "jwt",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    methods: Vec<Method>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    public_prefixes: Vec<RawPrefix>,
    identity_header: Option<String>,
    #[serde(default)]
    strip_credentials: bool,
    api_key: Option<RawApiKey>,
    basic: Option<RawBasic>,
    jwt: Option<RawJwt>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

fn default_realm() -> String {
    "weir".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    header: Option<String>,
    query: Option<String>,
    keys: Vec<RawApiKeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKeyEntry {
    sha256: String,
    user: String,
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    users: Vec<RawBasicUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicUser {
    user: String,
    password_hash: String,
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    hs256_secret: Option<String>,
    jwks: Option<Value>,
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    #[serde(default = "default_leeway")]
    leeway_s: u64,
    #[serde(default = "yes")]
    require_exp: bool,
    #[serde(default = "default_user_claim")]
    user_claim: String,
    tenant_claim: Option<String>,
    #[serde(default = "default_scopes_claim")]
    scopes_claim: String,
}

fn default_leeway() -> u64 {
    30
}
fn yes() -> bool {
    true
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_scopes_claim() -> String {
    "scope".into()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// A public prefix: `"/health"`, or `{ prefix = "/Docs", case_insensitive
/// = true }` to match it in any ASCII case.
struct RawPrefix {
    prefix: String,
    case_insensitive: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefixTable {
    prefix: String,
    #[serde(default)]
    case_insensitive: bool,
}

/// By hand rather than `#[serde(untagged)]`, whose one message for every
/// mistake ("did not match any variant") would hide a typo in a table.
impl<'de> Deserialize<'de> for RawPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PrefixVisitor;

        impl<'de> Visitor<'de> for PrefixVisitor {
            type Value = RawPrefix;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path prefix, or a table { prefix, case_insensitive }")
            }

            fn visit_str<E: de::Error>(self, prefix: &str) -> Result<RawPrefix, E> {
                Ok(RawPrefix {
                    prefix: prefix.to_owned(),
                    case_insensitive: false,
                })
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<RawPrefix, M::Error> {
                let table =
                    RawPrefixTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawPrefix {
                    prefix: table.prefix,
                    case_insensitive: table.case_insensitive,
                })
            }
        }

        deserializer.deserialize_any(PrefixVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    prefix: String,
    /// Match `prefix` in any ASCII case: for upstreams that serve `/ADMIN`
    /// as `/admin`, where a case-sensitive rule could be dodged.
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, Value>,
}

/// Who a credential names.
#[derive(Clone)]
pub struct Identity {
    pub user: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
}

impl Identity {
    /// An identity from config; `what` names the entry in errors.
    fn configured(
        what: &str,
        user: String,
        tenant: Option<String>,
        scopes: Vec<String>,
    ) -> Result<Self, String> {
        // Both may be forwarded as header values.
        let usable = |text: &str| !text.is_empty() && !text.chars().any(char::is_control);
        if !usable(&user) {
            return Err(format!(
                "{what}: user must be non-empty text without control characters"
            ));
        }
        if tenant.as_deref().is_some_and(|tenant| !usable(tenant)) {
            return Err(format!(
                "{what}: tenant must be non-empty text without control characters"
            ));
        }
        Ok(Identity {
            user,
            tenant,
            scopes,
        })
    }
}

pub struct ApiKeys {
    pub header: Option<String>,
    pub query: Option<String>,
    pub keys: Vec<(Digest32, Identity)>,
}

pub struct Jwt {
    pub verifier: TokenVerifier,
    pub user_claim: String,
    pub tenant_claim: Option<String>,
    pub scopes_claim: String,
}

/// Requirements for paths under `prefix`; every matching rule applies.
pub struct Rule {
    pub prefix: PathPrefix,
    pub scopes: Vec<String>,
    /// Claim name → required value (equal, or contained in an array).
    /// Only JWT identities carry claims.
    pub claims: BTreeMap<String, Value>,
}

/// The validated config, read through [`RawConfig`].
#[derive(Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub methods: Vec<Method>,
    pub realm: String,
    pub public_prefixes: Vec<PathPrefix>,
    pub identity_header: Option<String>,
    pub strip_credentials: bool,
    pub api_key: Option<ApiKeys>,
    pub basic: BTreeMap<String, (PasswordHash, Identity)>,
    pub jwt: Option<Jwt>,
    pub rules: Vec<Rule>,
}

/// Headers the host owns, or that carry credentials: never an identity header.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
];

/// HS256 secrets shorter than the hash output are refused (RFC 7518 §3.2).
const MIN_HS256_SECRET_BYTES: usize = 32;

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        let RawConfig {
            methods,
            realm,
            public_prefixes,
            identity_header,
            strip_credentials,
            api_key,
            basic,
            jwt,
            rules,
        } = raw;

        if methods.is_empty() {
            return Err("methods must name at least one of \"api_key\", \"basic\", \"jwt\"".into());
        }
        for (i, method) in methods.iter().enumerate() {
            if methods[..i].contains(method) {
                return Err(format!("methods lists {:?} twice", method.name()));
            }
            let configured = match method {
                Method::ApiKey => api_key.is_some(),
                Method::Basic => basic.is_some(),
                Method::Jwt => jwt.is_some(),
            };
            if !configured {
                return Err(format!(
                    "method {:?} is enabled but has no [{}] table",
                    method.name(),
                    method.name()
                ));
            }
        }
        for (present, method) in [
            (api_key.is_some(), Method::ApiKey),
            (basic.is_some(), Method::Basic),
            (jwt.is_some(), Method::Jwt),
        ] {
            if present && !methods.contains(&method) {
                return Err(format!(
                    "[{}] is configured but {:?} is not in methods",
                    method.name(),
                    method.name()
                ));
            }
        }
        if realm.is_empty()
            || !realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(format!(
                "realm {realm:?} must be printable ASCII without quotes or backslashes"
            ));
        }
        let public_prefixes = public_prefixes
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                PathPrefix::new(&raw.prefix)
                    .map(|prefix| prefix.case_insensitive(raw.case_insensitive))
                    .map_err(|e| format!("public_prefixes[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let identity_header = identity_header.map(|h| h.to_ascii_lowercase());
        if let Some(header) = &identity_header {
            check_header_name("identity_header", header)?;
        }

        let api_key = api_key.map(parse_api_keys).transpose()?;
        let basic = basic.map(parse_basic).transpose()?.unwrap_or_default();
        let jwt = jwt.map(parse_jwt).transpose()?;
        let rules = parse_rules(rules, &public_prefixes)?;

        Ok(Config {
            methods,
            realm,
            public_prefixes,
            identity_header,
            strip_credentials,
            api_key,
            basic,
            jwt,
            rules,
        })
    }
}

fn check_header_name(what: &str, name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{what}: {name:?} is not a valid header name"));
    }
    if RESERVED_HEADERS.contains(&name) {
        return Err(format!(
            "{what}: {name:?} is reserved and cannot be used here"
        ));
    }
    Ok(())
}

fn parse_api_keys(raw: RawApiKey) -> Result<ApiKeys, String> {
    if raw.header.is_none() && raw.query.is_none() {
        return Err("api_key: set header, query, or both".into());
    }
    let header = raw.header.map(|h| h.to_ascii_lowercase());
    if let Some(header) = &header {
        check_header_name("api_key.header", header)?;
    }
    if raw.query.as_deref() == Some("") {
        return Err("api_key.query must not be empty".into());
    }
    if raw.keys.is_empty() {
        return Err("api_key.keys is empty".into());
    }
    let mut keys: Vec<(Digest32, Identity)> = Vec::new();
    for (i, entry) in raw.keys.into_iter().enumerate() {
        let what = format!("api_key.keys[{i}]");
        let digest = parse_sha256_hex(&entry.sha256.to_ascii_lowercase())
            .map_err(|e| format!("{what}.sha256: {e}"))?;
        if keys.iter().any(|(known, _)| *known == digest) {
            return Err(format!("{what}.sha256: the same key is listed twice"));
        }
        let identity = Identity::configured(&what, entry.user, entry.tenant, entry.scopes)?;
        keys.push((digest, identity));
    }
    Ok(ApiKeys {
        header,
        query: raw.query,
        keys,
    })
}

fn parse_basic(raw: RawBasic) -> Result<BTreeMap<String, (PasswordHash, Identity)>, String> {
    if raw.users.is_empty() {
        return Err("basic.users is empty".into());
    }
    let mut users = BTreeMap::new();
    for (i, entry) in raw.users.into_iter().enumerate() {
        let what = format!("basic.users[{i}]");
        if entry.user.contains(':') {
            return Err(format!("{what}: a Basic user name cannot contain ':'"));
        }
        let hash = PasswordHash::parse(&entry.password_hash)
            .map_err(|e| format!("{what}.password_hash: {e}"))?;
        let name = entry.user.clone();
        let identity = Identity::configured(&what, entry.user, entry.tenant, entry.scopes)?;
        if users.insert(name.clone(), (hash, identity)).is_some() {
            return Err(format!("{what}: user {name:?} is listed twice"));
        }
    }
    Ok(users)
}

fn parse_jwt(raw: RawJwt) -> Result<Jwt, String> {
    let hs256_secret = match raw.hs256_secret {
        Some(secret) if secret.len() < MIN_HS256_SECRET_BYTES => {
            return Err(format!(
                "jwt.hs256_secret must be at least {MIN_HS256_SECRET_BYTES} bytes"
            ))
        }
        secret => secret.map(String::into_bytes),
    };
    let keys = match &raw.jwks {
        Some(jwks) => jwt::parse_jwks(jwks).map_err(|e| format!("jwt.{e}"))?,
        None => BTreeMap::new(),
    };
    if hs256_secret.is_none() && keys.is_empty() {
        return Err("jwt: set hs256_secret, jwks, or both".into());
    }
    let issuers = raw.issuer.map(OneOrMany::into_vec).unwrap_or_default();
    let audiences = raw.audience.map(OneOrMany::into_vec).unwrap_or_default();
    if issuers.iter().chain(&audiences).any(String::is_empty) {
        return Err("jwt: issuer and audience values must not be empty".into());
    }
    if raw.leeway_s > 3600 {
        return Err("jwt.leeway_s must be at most 3600".into());
    }
    Ok(Jwt {
        verifier: TokenVerifier {
            hs256_secret,
            keys,
            issuers,
            audiences,
            leeway_s: raw.leeway_s,
            require_exp: raw.require_exp,
        },
        user_claim: raw.user_claim,
        tenant_claim: raw.tenant_claim,
        scopes_claim: raw.scopes_claim,
    })
}

fn parse_rules(raw: Vec<RawRule>, public_prefixes: &[PathPrefix]) -> Result<Vec<Rule>, String> {
    raw.into_iter()
        .enumerate()
        .map(|(i, rule)| {
            let prefix = PathPrefix::new(&rule.prefix)
                .map_err(|e| format!("rules[{i}].prefix: {e}"))?
                .case_insensitive(rule.case_insensitive);
            if rule.scopes.is_empty() && rule.claims.is_empty() {
                return Err(format!("rules: {:?} requires neither scopes nor claims", rule.prefix));
            }
            if let Some(bad) = rule.scopes.iter().find(|s| !is_scope_token(s)) {
                return Err(format!(
                    "rules: {:?}: scope {bad:?} must be printable ASCII without spaces, quotes or backslashes",
                    rule.prefix
                ));
            }
            if let Some(public) = public_prefixes
                .iter()
                .find(|public| public.covers(&prefix))
            {
                return Err(format!(
                    "rules: {:?} lies under public prefix {:?} and could never apply",
                    rule.prefix,
                    public.as_str()
                ));
            }
            Ok(Rule {
                prefix,
                scopes: rule.scopes,
                claims: rule.claims,
            })
        })
        .collect()
}

/// RFC 6749 §3.3 `scope-token`: it goes into `WWW-Authenticate` verbatim.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}
