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
//! `/health/live`, not `/healthz`) of the path as the host hands it over:
//! canonical already (the host resolves `//a/./b` and `%61` spellings, or
//! refuses them, before any plugin runs), and exactly what the upstream
//! gets, so the plugin matches it as it is and never normalises it itself.
//! A prefix must be written canonically, or the config is refused. Matching
//! is case-sensitive unless a rule or a public prefix says
//! `case_insensitive = true` (for upstreams that treat `/ADMIN` as
//! `/admin`: there a case-sensitive rule could be dodged).
//!
//! ```toml
//! [plugins.auth.config]
//! methods = ["jwt", "api_key", "basic"]   # tried in this order
//! realm = "weir"
//! public_prefixes = ["/health", { prefix = "/Docs", case_insensitive = true }]
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
//! case_insensitive = true                 # default false
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
mod reply;

use serde_json::{Map, Value};
use weir_plugin::{clock, log, metrics, Action, Changes, Info, Plugin, Request};

use config::{Config, Identity, Method};
use reply::Denial;

/// An authenticated request: who, how, and (for JWTs) the claims.
struct Authenticated {
    method: Method,
    identity: Identity,
    claims: Option<Map<String, Value>>,
}

struct Auth;

impl Plugin for Auth {
    type Config = Config;

    /// Reads only the credential headers, no connection fact, no property.
    fn info(config: &Config) -> Info {
        let api_key = config.api_key.as_ref().and_then(|keys| keys.header.clone());
        Info::request_phase()
            .request_headers(std::iter::once("authorization".to_owned()).chain(api_key))
            .connection(false)
            .properties(false)
    }

    fn on_request(config: &Config, req: &Request) -> Action {
        let mut changes = Action::next();
        if let Some(name) = &config.identity_header {
            changes = changes.remove_header(name);
        }

        if config.public_prefixes.iter().any(|p| p.matches(&req.path)) {
            count("public", None);
            return changes.into();
        }

        let auth = match authenticate(config, req).and_then(|auth| {
            authorize(config, &req.path, &auth)?;
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
                log::info(format!(
                    "denied {} {}: {}",
                    req.method,
                    req.path,
                    denial.kind()
                ));
                return reply::deny(config, &denial).into();
            }
        };
        count("ok", Some(auth.method));

        let Identity {
            user,
            tenant,
            scopes,
        } = auth.identity;
        if let Some(name) = &config.identity_header {
            changes = changes.set_header(name, &user);
        }
        if config.strip_credentials {
            changes = strip_credentials(config, req, changes);
        }
        changes = changes
            .set_property("user", user)
            .set_property("scopes", scopes)
            .set_property("auth-method", auth.method.name());
        if let Some(tenant) = tenant {
            changes = changes.set_property("tenant", tenant);
        }
        changes.into()
    }
}

weir_plugin::export_plugin!(Auth);

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
    let from_header = keys.header.as_ref().and_then(|name| req.header(name));
    let presented = match from_header {
        Some(value) => value.trim().to_string(),
        None => {
            let param = keys.query.as_deref()?;
            let raw = req.query_param(param)?;
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
    for rule in config.rules.iter().filter(|r| r.prefix.matches(path)) {
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
fn strip_credentials(config: &Config, req: &Request, mut changes: Changes) -> Changes {
    if !config.basic.is_empty() || config.jwt.is_some() {
        changes = changes.remove_header("authorization");
    }
    let Some(keys) = &config.api_key else {
        return changes;
    };
    if let Some(name) = &keys.header {
        changes = changes.remove_header(name);
    }
    if let (Some(param), Some(original)) = (&keys.query, &req.query) {
        let kept: Vec<&str> = original
            .split('&')
            .filter(|pair| pair.split_once('=').map_or(*pair, |(name, _)| name) != param)
            .collect();
        if kept.len() != original.split('&').count() {
            // The empty string removes the query altogether.
            changes = changes.query(kept.join("&"));
        }
    }
    changes
}

/// The credentials of the first `Authorization` header using `scheme`.
fn authorization<'a>(req: &'a Request, scheme: &str) -> Option<&'a str> {
    req.headers("authorization").find_map(|value| {
        let (found, rest) = value.trim().split_once(' ')?;
        found.eq_ignore_ascii_case(scheme).then(|| rest.trim())
    })
}

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{self, request};
    use weir_plugin::{Action, Plugin, Request, Value};

    use super::Auth;

    /// One API key, "sesame", accepted in a header or the query.
    const CONFIG: &str = r#"{
        "methods": ["api_key"],
        "public_prefixes": ["/health"],
        "identity_header": "x-user",
        "strip_credentials": true,
        "api_key": {
            "header": "x-api-key",
            "query": "api_key",
            "keys": [{"sha256": "d0c04f4b1951e4aeaaec8223ed2039e542f3aae805a6fa7f6d794e5afff5d272",
                      "user": "ci", "tenant": "acme", "scopes": ["read"]}]
        },
        "rules": [{"prefix": "/admin", "scopes": ["admin"]}]
    }"#;

    fn answer(req: Request) -> Action {
        Auth::on_request(&testing::config::<Auth>(CONFIG), &req)
    }

    fn status(req: Request) -> u16 {
        match answer(req) {
            Action::Continue(_) => 200,
            Action::Respond(response) => response.status,
        }
    }

    #[test]
    fn keeps_the_contract() {
        let requests = [
            request("GET", "/health").build(),
            request("GET", "/data").build(),
            request("GET", "/data")
                .header("x-api-key", "sesame")
                .build(),
            request("GET", "/data?api_key=sesame&x=1").build(),
            request("GET", "/admin")
                .header("x-api-key", "sesame")
                .build(),
        ];
        testing::check_conformance::<Auth>(CONFIG, &requests);
    }

    #[test]
    fn statuses_follow_the_credential_and_the_rules() {
        assert_eq!(status(request("GET", "/health/live").build()), 200);
        assert_eq!(status(request("GET", "/data").build()), 401);
        let wrong = request("GET", "/data").header("x-api-key", "nope").build();
        assert_eq!(status(wrong), 401);
        let admin = request("GET", "/admin")
            .header("x-api-key", "sesame")
            .build();
        assert_eq!(status(admin), 403);
    }

    #[test]
    fn a_good_key_becomes_properties_and_is_stripped() {
        let Action::Continue(changes) = answer(request("GET", "/data?api_key=sesame&x=1").build())
        else {
            panic!("the key is good");
        };
        assert_eq!(changes.query.as_deref(), Some("x=1"));
        let user = changes.properties.iter().find(|(name, _)| name == "user");
        assert_eq!(user, Some(&("user".to_string(), Value::Text("ci".into()))));
    }

    #[test]
    fn refusals_are_json_with_a_challenge() {
        let Action::Respond(response) = answer(request("GET", "/data").build()) else {
            panic!("no credential");
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("www-authenticate"), Some("ApiKey realm=\"weir\""));
        assert_eq!(header("cache-control"), Some("no-store"));
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"], "unauthorized");
    }

    #[test]
    fn prefixes_match_whole_segments_of_the_path_as_given() {
        let key = |path: &str| request("GET", path).header("x-api-key", "sesame").build();
        assert_eq!(status(request("GET", "/health").build()), 200);
        assert_eq!(status(request("GET", "/healthz").build()), 401);
        assert_eq!(status(key("/admin/users")), 403);
        assert_eq!(status(key("/administrator")), 200, "not under /admin");
        // Case-sensitive by default: `/ADMIN` is another path (and the
        // host, not this plugin, decides what `/%61dmin` is).
        assert_eq!(status(key("/ADMIN")), 200);
        assert_eq!(status(request("GET", "/HEALTH").build()), 401);
    }

    #[test]
    fn rules_and_public_prefixes_may_ignore_case() {
        let config = testing::config::<Auth>(
            r#"{
            "methods": ["api_key"],
            "public_prefixes": ["/health", {"prefix": "/Docs", "case_insensitive": true}],
            "api_key": {"header": "x-api-key",
                "keys": [{"sha256": "d0c04f4b1951e4aeaaec8223ed2039e542f3aae805a6fa7f6d794e5afff5d272",
                          "user": "ci", "scopes": ["read"]}]},
            "rules": [{"prefix": "/admin", "case_insensitive": true, "scopes": ["admin"]}]
        }"#,
        );
        let status = |req: Request| match Auth::on_request(&config, &req) {
            Action::Continue(_) => 200,
            Action::Respond(response) => response.status,
        };
        let key = |path: &str| request("GET", path).header("x-api-key", "sesame").build();
        for path in ["/admin", "/ADMIN/x", "/Admin"] {
            assert_eq!(status(key(path)), 403, "{path}");
        }
        assert_eq!(status(key("/ADMINISTRATOR")), 200);
        assert_eq!(status(request("GET", "/docs/intro").build()), 200);
        assert_eq!(status(request("GET", "/DOCS").build()), 200);
        assert_eq!(status(request("GET", "/HEALTH").build()), 401);
    }

    #[test]
    fn prefixes_that_could_never_match_are_refused() {
        let refused = |extra: &str| {
            testing::check_config_rejected::<Auth>(&format!(
                r#"{{"methods":["basic"],"basic":{{"users":[{{"user":"a",
                "password_hash":"sha256:s:d0c04f4b1951e4aeaaec8223ed2039e542f3aae805a6fa7f6d794e5afff5d272"}}]}},
                {extra}}}"#
            ))
        };
        let message = refused(r#""public_prefixes":["health"]"#);
        assert!(
            message.contains("public_prefixes[0]: \"health\" must start with '/'"),
            "{message}"
        );
        let message = refused(r#""public_prefixes":[{"prefix":"/a//b"}]"#);
        assert!(
            message.contains("public_prefixes[0]: \"/a//b\" is not a canonical path"),
            "{message}"
        );
        let message = refused(r#""public_prefixes":[{"prefix":"/a","case":true}]"#);
        assert!(message.contains("unknown field `case`"), "{message}");
        let message = refused(r#""rules":[{"prefix":"/%61dmin","scopes":["x"]}]"#);
        assert!(
            message.contains("rules[0].prefix: \"/%61dmin\""),
            "{message}"
        );
        // A case-insensitive public prefix shadows a rule in any case...
        let message = refused(
            r#""public_prefixes":[{"prefix":"/Admin","case_insensitive":true}],
            "rules":[{"prefix":"/admin/x","scopes":["x"]}]"#,
        );
        assert!(
            message.contains("lies under public prefix \"/Admin\""),
            "{message}"
        );
        // ...but a case-insensitive rule still guards `/ADMIN/x`, which a
        // case-sensitive public `/admin` leaves alone.
        testing::config::<Auth>(
            r#"{"methods":["basic"],"basic":{"users":[{"user":"a",
            "password_hash":"sha256:s:d0c04f4b1951e4aeaaec8223ed2039e542f3aae805a6fa7f6d794e5afff5d272"}]},
            "public_prefixes":["/admin"],
            "rules":[{"prefix":"/admin/x","case_insensitive":true,"scopes":["x"]}]}"#,
        );
    }

    #[test]
    fn unknown_keys_are_refused_at_any_depth() {
        let message = testing::check_config_rejected::<Auth>(
            r#"{"methods":["basic"],"basic":{"users":[],"extra":1}}"#,
        );
        assert!(message.contains("unknown field `extra`"), "{message}");
    }
}
