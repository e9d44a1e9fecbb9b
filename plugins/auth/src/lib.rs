//! `auth` — authentication and scope checks at the edge.
//!
//! Each request is authenticated by the first enabled method, in the
//! configured order, that finds a credential in it; that method alone
//! decides (a bad bearer token is refused even if a good API key rides along).
//!
//! | method | credential | checked against |
//! | --- | --- | --- |
//! | `api_key` | a header and/or query parameter | SHA-256 hex digests of the keys |
//! | `basic` | `Authorization: Basic` | salted password hashes (below) |
//! | `jwt` | `Authorization: Bearer` | HS256 secret, RS256/ES256 keys from an inline JWKS by `kid`; `exp`, `nbf`, `iss`, `aud` with leeway |
//!
//! On success the request goes on with the typed properties `user` (text),
//! `tenant` (text, when known), `scopes` (texts) and `auth-method` (text:
//! `api_key`, `basic` or `jwt`); the user is forwarded in `identity_header`
//! when set, and `strip_credentials` removes the credential carriers of the
//! enabled methods (`Authorization`, the API key header and query parameter)
//! before the upstream sees them. A client-sent `identity_header` is removed
//! from every request, authenticated or public, so it cannot be forged.
//!
//! Refusals: `401` + `WWW-Authenticate` for a missing or bad credential,
//! `403` when a `[[rules]]` entry wants a scope or claim the identity lacks;
//! the body is `{"error":"…","detail":"…"}`. Paths under `public_prefixes`
//! need no credential. Prefixes match whole segments (`/health` covers
//! `/health/live`, not `/healthz`) of the normalised path (`//a/./b`,
//! `%61` spellings cannot dodge a rule).
//!
//! ```toml
//! [plugins.auth.config]
//! methods = ["jwt", "api_key", "basic"]   # tried in this order
//! realm = "weir"
//! public_prefixes = ["/health"]
//! identity_header = "x-user"
//! strip_credentials = true
//!
//! [plugins.auth.config.api_key]
//! header = "x-api-key"                    # and/or query = "api_key"
//! keys = [{ sha256 = "<hex of sha256(key)>", user = "ci", tenant = "acme", scopes = ["read"] }]
//!
//! [plugins.auth.config.basic]
//! users = [{ user = "alice", password_hash = "sha256:<salt>:<hex>", scopes = ["admin"] }]
//!
//! [plugins.auth.config.jwt]
//! hs256_secret = "at least 32 bytes of secret ........"
//! jwks = { keys = [{ kty = "EC", kid = "k1", crv = "P-256", x = "…", y = "…" }] }
//! issuer = "https://id.example"           # string or list
//! audience = ["api", "web"]               # string or list: the token must name one
//! leeway_s = 30                           # clock skew allowed on exp/nbf
//! user_claim = "sub"
//! tenant_claim = "tenant"
//! scopes_claim = "scope"                  # space-separated string or array
//!
//! [[plugins.auth.config.rules]]
//! prefix = "/admin"
//! scopes = ["admin"]
//! claims = { role = "ops" }               # JWT identities only
//! ```
//!
//! # Password hashes
//!
//! Two schemes, both pure Rust (`sha2`, `hmac`), both compared in constant
//! time:
//!
//! - `sha256:<salt>:<hex>` with `hex = sha256(salt ‖ password)`, made with
//!   `printf '%s' "$SALT$PASSWORD" | sha256sum`. One hash per request, so it
//!   costs microseconds inside a plugin deadline of milliseconds. It resists
//!   precomputed tables, not brute force: use it for long random
//!   machine-to-machine passwords, which is what Basic at an API edge
//!   usually carries.
//! - `pbkdf2-sha256:<iterations>:<salt>:<hex>` (PBKDF2-HMAC-SHA256, 32-byte
//!   output, 1 000–1 000 000 iterations) for passwords people choose. The
//!   iterations are paid on every request, inside `timeout_ms`: size the two
//!   together.
//!
//! Bcrypt and Argon2 are not offered: their cost per request is the point of
//! them and does not fit a per-request plugin deadline.

mod config;
mod credentials;
mod jwt;
mod path;
mod reply;

use std::sync::OnceLock;

use serde_json::{Map, Value};

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use config::{Config, Identity, Method};
use exports::weir::plugin::guest::Guest;
use reply::Denial;
use weir::plugin::types::{
    HeaderOp, PluginInfo, Request, RequestAction, RequestChanges, ResponseChanges, ResponseHead,
    Value as Property,
};
use weir::plugin::{clock, config as host_config, log, metrics};

/// The config, parsed once per instance (pooled instances reuse it).
fn current_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    // `validate-config` accepted this text at load time, so failing here
    // means the host broke its promise.
    CONFIG.get_or_init(|| {
        Config::parse(&host_config::get())
            .unwrap_or_else(|e| panic!("config changed under us: {e}"))
    })
}

/// An authenticated request: who, how, and (for JWTs) the claims.
struct Authenticated {
    method: Method,
    identity: Identity,
    claims: Option<Map<String, Value>>,
}

struct Auth;

impl Guest for Auth {
    fn validate_config(config: String) -> Result<PluginInfo, String> {
        Config::parse(&config)?;
        Ok(PluginInfo {
            on_request: true,
            on_response: false,
            request_body: false,
            response_body: false,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let config = current_config();
        let mut headers = Vec::new();
        if let Some(name) = &config.identity_header {
            headers.push(HeaderOp::Remove(name.clone()));
        }

        let path = path::normalize(&req.path);
        if config.public_prefixes.iter().any(|p| path::under(&path, p)) {
            count("public", None);
            return RequestAction::Continue(changes(headers, vec![], None));
        }

        let auth = match authenticate(config, &req).and_then(|auth| {
            authorize(config, &path, &auth)?;
            Ok(auth)
        }) {
            Ok(auth) => auth,
            Err(denial) => {
                let method = match &denial {
                    Denial::Invalid { method, .. } | Denial::MissingScope { method, .. } => {
                        Some(*method)
                    }
                    _ => None,
                };
                count(denial.kind(), method);
                log::log(
                    log::Level::Info,
                    &format!("denied {} {}: {}", req.method, req.path, denial.kind()),
                );
                return RequestAction::Respond(reply::deny(config, &denial));
            }
        };
        count("ok", Some(auth.method));

        let Identity {
            user,
            tenant,
            scopes,
        } = auth.identity;
        if let Some(name) = &config.identity_header {
            headers.push(HeaderOp::Set((name.clone(), user.clone())));
        }
        let mut query = None;
        if config.strip_credentials {
            strip_credentials(config, &req, &mut headers, &mut query);
        }
        let mut properties = vec![
            ("user".to_string(), Property::Text(user)),
            ("scopes".to_string(), Property::Texts(scopes)),
            (
                "auth-method".to_string(),
                Property::Text(auth.method.name().to_string()),
            ),
        ];
        if let Some(tenant) = tenant {
            properties.push(("tenant".to_string(), Property::Text(tenant)));
        }
        RequestAction::Continue(changes(headers, properties, query))
    }

    fn on_response(_req: Request, _resp: ResponseHead) -> ResponseChanges {
        ResponseChanges {
            status: None,
            headers: vec![],
            body: None,
        }
    }
}

export!(Auth);

fn changes(
    headers: Vec<HeaderOp>,
    properties: Vec<(String, Property)>,
    query: Option<String>,
) -> RequestChanges {
    RequestChanges {
        method: None,
        path: None,
        query,
        headers,
        upstream: None,
        properties,
        cache: None,
        body: None,
    }
}

fn count(result: &str, method: Option<Method>) {
    let method = method.map_or("none", Method::name);
    metrics::counter_add(
        "auth_requests_total",
        &[
            ("result".to_string(), result.to_string()),
            ("method".to_string(), method.to_string()),
        ],
        1,
    );
}

/// The first enabled method that finds its credential decides.
fn authenticate(config: &Config, req: &Request) -> Result<Authenticated, Denial> {
    for &method in &config.methods {
        let outcome = match method {
            Method::ApiKey => api_key(config, req),
            Method::Basic => basic(config, req),
            Method::Jwt => bearer(config, req),
        };
        if let Some(outcome) = outcome {
            return outcome.map_err(|detail| Denial::Invalid { method, detail });
        }
    }
    Err(Denial::Missing)
}

type Outcome = Option<Result<Authenticated, &'static str>>;

fn api_key(config: &Config, req: &Request) -> Outcome {
    let keys = config.api_key.as_ref()?;
    let from_header = keys.header.as_ref().and_then(|name| header(req, name));
    let presented = match from_header {
        Some(value) => value.trim().to_string(),
        None => {
            let param = keys.query.as_deref()?;
            let raw = query_pairs(req.query.as_deref())
                .find(|(name, _)| *name == param)?
                .1;
            match credentials::percent_decode(raw) {
                Some(value) => value,
                None => return Some(Err("malformed api key")),
            }
        }
    };
    let digest = credentials::sha256(&[presented.as_bytes()]);
    // Compare against every key so the time taken says nothing about which
    // (or whether one) matched.
    let mut found = None;
    for (known, identity) in &keys.keys {
        if credentials::constant_time_eq(known, &digest) {
            found = Some(identity);
        }
    }
    Some(
        found
            .map(|identity| Authenticated {
                method: Method::ApiKey,
                identity: identity.clone(),
                claims: None,
            })
            .ok_or("unknown api key"),
    )
}

fn basic(config: &Config, req: &Request) -> Outcome {
    if config.basic.is_empty() {
        return None;
    }
    let encoded = authorization(req, "basic")?;
    let Some((user, password)) = credentials::decode_basic(encoded) else {
        return Some(Err("malformed credentials"));
    };
    Some(match config.basic.get(&user) {
        Some((hash, identity)) if hash.matches(&password) => Ok(Authenticated {
            method: Method::Basic,
            identity: identity.clone(),
            claims: None,
        }),
        _ => Err("wrong user or password"),
    })
}

fn bearer(config: &Config, req: &Request) -> Outcome {
    let jwt = config.jwt.as_ref()?;
    let token = authorization(req, "bearer")?;
    let claims = match jwt.verifier.verify(token, clock::now_ms()) {
        Ok(claims) => claims,
        Err(reason) => return Some(Err(reason)),
    };
    let text_claim = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|text| is_header_safe(text))
            .map(str::to_string)
    };
    let Some(user) = text_claim(&jwt.user_claim) else {
        return Some(Err("token has no valid subject"));
    };
    let tenant = jwt.tenant_claim.as_deref().and_then(text_claim);
    let scopes = match claims.get(&jwt.scopes_claim) {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![],
    };
    Some(Ok(Authenticated {
        method: Method::Jwt,
        identity: Identity {
            user,
            tenant,
            scopes,
        },
        claims: Some(claims),
    }))
}

/// Whether a claim can be forwarded as a header value as it is.
fn is_header_safe(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_control())
}

/// Every rule whose prefix covers the path must be satisfied.
fn authorize(config: &Config, path: &str, auth: &Authenticated) -> Result<(), Denial> {
    for rule in config.rules.iter().filter(|r| path::under(path, &r.prefix)) {
        if let Some(scope) = rule
            .scopes
            .iter()
            .find(|scope| !auth.identity.scopes.contains(scope))
        {
            return Err(Denial::MissingScope {
                method: auth.method,
                scope: scope.clone(),
            });
        }
        for (name, wanted) in &rule.claims {
            let held = auth.claims.as_ref().and_then(|claims| claims.get(name));
            let ok = match held {
                Some(Value::Array(values)) => values.contains(wanted),
                Some(value) => value == wanted,
                None => false,
            };
            if !ok {
                return Err(Denial::MissingClaim {
                    claim: name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Remove the credential carriers of every enabled method, so the upstream
/// never sees a secret meant for the edge.
fn strip_credentials(
    config: &Config,
    req: &Request,
    headers: &mut Vec<HeaderOp>,
    query: &mut Option<String>,
) {
    if !config.basic.is_empty() || config.jwt.is_some() {
        headers.push(HeaderOp::Remove("authorization".to_string()));
    }
    let Some(keys) = &config.api_key else { return };
    if let Some(name) = &keys.header {
        headers.push(HeaderOp::Remove(name.clone()));
    }
    if let (Some(param), Some(original)) = (&keys.query, &req.query) {
        let kept: Vec<&str> = original
            .split('&')
            .filter(|pair| pair.split_once('=').map_or(*pair, |(name, _)| name) != param)
            .collect();
        if kept.len() != original.split('&').count() {
            // The empty string removes the query altogether.
            *query = Some(kept.join("&"));
        }
    }
}

/// The first value of a header.
fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The credentials of the first `Authorization` header using `scheme`.
fn authorization<'a>(req: &'a Request, scheme: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .filter(|(name, _)| name == "authorization")
        .find_map(|(_, value)| {
            let (found, rest) = value.trim().split_once(' ')?;
            found.eq_ignore_ascii_case(scheme).then(|| rest.trim())
        })
}

fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}
