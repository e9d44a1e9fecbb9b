//! The sample `auth` plugin: API keys, HTTP Basic and JWTs (HS256, RS256,
//! ES256 from an inline JWKS) accepted and refused through the real proxy,
//! scope rules, public prefixes, identity forwarding and credential
//! stripping, and bad configs refused at load. Keys are generated and tokens
//! signed here, at test time.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use weir_tests::{client, echo_json, echoed_header, TestProxy, Upstream};

/// A test-only secret; it protects nothing.
const HS256_SECRET: &str = "weir-e2e-test-only-hs256-secret-0123456789";
const API_KEY: &str = "k_live_test_4f1c2a9e";
const BASIC_SALT: &str = "s4lt";
const BASIC_PASSWORD: &str = "correct horse battery staple";
const ISSUER: &str = "https://id.weir.test";
const AUDIENCE: &str = "weir-api";

/// Keys made once per test run: the ones the JWKS trusts, and an RSA key
/// an attacker might sign with.
struct Keys {
    rsa: rsa::RsaPrivateKey,
    ec: p256::ecdsa::SigningKey,
    rogue_rsa: rsa::RsaPrivateKey,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let mut rng = rsa::rand_core::OsRng;
    Keys {
        rsa: rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"),
        ec: p256::ecdsa::SigningKey::random(&mut rng),
        rogue_rsa: rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key"),
    }
});

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PBKDF2-HMAC-SHA256, one 32-byte block, as hex: the `pbkdf2-sha256` scheme.
fn pbkdf2_hex(password: &str, salt: &str, iterations: u32) -> String {
    let prf = Hmac::<Sha256>::new_from_slice(password.as_bytes()).expect("any key length");
    let mut u = prf
        .clone()
        .chain_update(salt.as_bytes())
        .chain_update(1u32.to_be_bytes())
        .finalize()
        .into_bytes();
    let mut out = u;
    for _ in 1..iterations {
        u = prf.clone().chain_update(u).finalize().into_bytes();
        out.iter_mut().zip(u.iter()).for_each(|(o, b)| *o ^= b);
    }
    out.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Claims every check accepts; tests override one at a time.
fn claims(scope: &str) -> Value {
    json!({
        "sub": "alice",
        "tenant": "acme",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now_s() + 300,
        "scope": scope,
    })
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn signing_input(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": alg, "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

fn hs256(secret: &str, claims: &Value) -> String {
    let input = signing_input("HS256", None, claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

fn rs256(key: &rsa::RsaPrivateKey, kid: &str, claims: &Value) -> String {
    let input = signing_input("RS256", Some(kid), claims);
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone());
    let signature = signer.sign(input.as_bytes()).to_bytes();
    format!("{input}.{}", b64url(&signature))
}

fn es256(key: &p256::ecdsa::SigningKey, kid: &str, claims: &Value) -> String {
    let input = signing_input("ES256", Some(kid), claims);
    let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64url(&signature.to_bytes()))
}

/// The JWKS as a TOML inline table: `{ keys = [{ kty = "RSA", … }, …] }`.
fn jwks_toml() -> String {
    let keys = &*KEYS;
    let point = keys.ec.verifying_key().to_encoded_point(false);
    let rsa_jwk = format!(
        "{{ kty = \"RSA\", kid = \"rsa-1\", alg = \"RS256\", use = \"sig\", n = {:?}, e = {:?} }}",
        b64url(&keys.rsa.n().to_bytes_be()),
        b64url(&keys.rsa.e().to_bytes_be()),
    );
    let ec_jwk = format!(
        "{{ kty = \"EC\", kid = \"ec-1\", crv = \"P-256\", x = {:?}, y = {:?} }}",
        b64url(point.x().expect("uncompressed")),
        b64url(point.y().expect("uncompressed")),
    );
    format!("{{ keys = [{rsa_jwk}, {ec_jwk}] }}")
}

/// The proxy config: every method enabled, `/admin` needing scope `admin`.
fn full_config(upstream: &Upstream) -> String {
    let api_key = format!(
        "{{ sha256 = {:?}, user = \"ci-bot\", tenant = \"acme\", scopes = [\"read\"] }}",
        sha256_hex(API_KEY)
    );
    let basic_hash = format!(
        "sha256:{BASIC_SALT}:{}",
        sha256_hex(&format!("{BASIC_SALT}{BASIC_PASSWORD}"))
    );
    let pbkdf2_hash = format!(
        "pbkdf2-sha256:1000:{BASIC_SALT}:{}",
        pbkdf2_hex(BASIC_PASSWORD, BASIC_SALT, 1000)
    );
    auth_config(
        upstream,
        &format!(
            r#"methods = ["jwt", "api_key", "basic"]
public_prefixes = ["/health"]
identity_header = "x-user"
strip_credentials = true
rules = [{{ prefix = "/admin", scopes = ["admin"] }}]
api_key = {{ header = "x-api-key", query = "api_key", keys = [{api_key}] }}
basic = {{ users = [{{ user = "bob", password_hash = {basic_hash:?}, scopes = ["read", "admin"] }}, {{ user = "carol", password_hash = {pbkdf2_hash:?} }}] }}

[plugins.auth.config.jwt]
hs256_secret = {HS256_SECRET:?}
jwks = {jwks}
issuer = {ISSUER:?}
audience = [{AUDIENCE:?}, "other-api"]
leeway_s = 5
tenant_claim = "tenant"
"#,
            jwks = jwks_toml()
        ),
    )
}

fn auth_config(upstream: &Upstream, plugin_config: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"auth\"]\n{}\n[plugins.auth]\nfile = {:?}\n[plugins.auth.config]\n{plugin_config}",
        upstream.toml("up"),
        weir_tests::artifacts::AUTH
    )
}

async fn start() -> (Upstream, TestProxy) {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&full_config(&upstream)).await;
    (upstream, proxy)
}

async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

async fn bearer(proxy: &TestProxy, path: &str, token: &str) -> reqwest::Response {
    get(
        proxy,
        path,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Assert a 200 whose echo shows `x-user: user` and no `Authorization`.
async fn assert_passed_as(response: reqwest::Response, user: &str) -> Value {
    assert_eq!(response.status(), 200);
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-user"), [user], "{echo}");
    assert!(echoed_header(&echo, "authorization").is_empty(), "{echo}");
    echo
}

/// Assert a 401 from the JWT method with this detail.
async fn assert_bad_token(response: reqwest::Response, detail: &str) {
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"weir\""),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body, json!({ "error": "invalid_token", "detail": detail }));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_credentials_get_401_with_a_challenge_per_method() {
    let (_upstream, proxy) = start().await;
    let response = get(&proxy, "/anything", &[]).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["content-type"], "application/json");
    let challenges: Vec<&str> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        [
            "Bearer realm=\"weir\"",
            "ApiKey realm=\"weir\"",
            "Basic realm=\"weir\", charset=\"UTF-8\""
        ]
    );
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_api_key_passes_with_identity_forwarded_and_key_stripped() {
    let (_upstream, proxy) = start().await;
    let echo = assert_passed_as(
        get(&proxy, "/anything", &[("x-api-key", API_KEY)]).await,
        "ci-bot",
    )
    .await;
    assert!(echoed_header(&echo, "x-api-key").is_empty(), "{echo}");

    // From the query string: the parameter is removed, the rest kept.
    let echo = assert_passed_as(
        get(&proxy, &format!("/anything?a=1&api_key={API_KEY}&b=2"), &[]).await,
        "ci-bot",
    )
    .await;
    assert_eq!(echo["query"], "a=1&b=2");
    let echo = assert_passed_as(
        get(&proxy, &format!("/anything?api_key={API_KEY}"), &[]).await,
        "ci-bot",
    )
    .await;
    assert_eq!(echo["query"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_api_key_is_refused() {
    let (_upstream, proxy) = start().await;
    for (path, headers) in [
        ("/anything", vec![("x-api-key", "k_live_guess")]),
        ("/anything?api_key=k_live_guess", vec![]),
    ] {
        let response = get(&proxy, path, &headers).await;
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["www-authenticate"],
            "ApiKey realm=\"weir\""
        );
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({ "error": "invalid_api_key", "detail": "unknown api key" })
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_accepts_the_right_password_and_refuses_a_wrong_one() {
    let (_upstream, proxy) = start().await;
    let basic = |user: &str, password: &str| {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    };
    let good = basic("bob", BASIC_PASSWORD);
    assert_passed_as(
        get(&proxy, "/admin/panel", &[("authorization", &good)]).await,
        "bob",
    )
    .await;

    let carol = basic("carol", BASIC_PASSWORD);
    assert_passed_as(
        get(&proxy, "/anything", &[("authorization", &carol)]).await,
        "carol",
    )
    .await;

    for wrong in [
        basic("bob", "Correct horse battery staple"),
        basic("carol", "correct horse battery stapl"),
        basic("mallory", BASIC_PASSWORD),
        "Basic !!not-base64".to_string(),
    ] {
        let response = get(&proxy, "/anything", &[("authorization", &wrong)]).await;
        assert_eq!(response.status(), 401, "{wrong}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"weir\", charset=\"UTF-8\""
        );
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "invalid_credentials");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hs256_token_passes_and_its_claims_are_checked() {
    let (_upstream, proxy) = start().await;
    let token = hs256(HS256_SECRET, &claims("read"));
    assert_passed_as(bearer(&proxy, "/anything", &token).await, "alice").await;

    let now = now_s();
    let cases = [
        (
            with(claims("read"), "exp", json!(now - 60)),
            "token expired",
        ),
        (
            with(claims("read"), "nbf", json!(now + 600)),
            "token not yet valid",
        ),
        (
            with(claims("read"), "aud", json!(["someone-else"])),
            "wrong audience",
        ),
        (
            with(claims("read"), "iss", json!("https://evil.test")),
            "wrong issuer",
        ),
    ];
    for (claims, detail) in cases {
        let token = hs256(HS256_SECRET, &claims);
        assert_bad_token(bearer(&proxy, "/anything", &token).await, detail).await;
    }
    // Within the 5 s leeway both ways, and `aud` as an array.
    let lenient = with(claims("read"), "exp", json!(now - 1));
    let lenient = with(lenient, "nbf", json!(now + 2));
    let lenient = with(lenient, "aud", json!(["x", "other-api"]));
    let token = hs256(HS256_SECRET, &lenient);
    assert_passed_as(bearer(&proxy, "/anything", &token).await, "alice").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signatures_and_unknown_keys_are_refused() {
    let (_upstream, proxy) = start().await;
    let keys = &*KEYS;
    let forged = hs256("another-secret-that-is-long-enough-000", &claims("admin"));
    assert_bad_token(bearer(&proxy, "/anything", &forged).await, "bad signature").await;

    // A payload swapped under a valid signature.
    let good = hs256(HS256_SECRET, &claims("read"));
    let upgraded = b64url(claims("admin").to_string().as_bytes());
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{upgraded}.{}", parts[0], parts[2]);
    assert_bad_token(
        bearer(&proxy, "/anything", &tampered).await,
        "bad signature",
    )
    .await;

    // Signed by a key the JWKS does not hold, under a trusted kid.
    let rogue = rs256(&keys.rogue_rsa, "rsa-1", &claims("admin"));
    assert_bad_token(bearer(&proxy, "/anything", &rogue).await, "bad signature").await;
    // An unknown kid.
    let unknown = rs256(&keys.rsa, "rsa-2", &claims("read"));
    assert_bad_token(
        bearer(&proxy, "/anything", &unknown).await,
        "unknown key id",
    )
    .await;
    // A kid naming a key of the other type.
    let crossed = es256(&keys.ec, "rsa-1", &claims("read"));
    assert_bad_token(
        bearer(&proxy, "/anything", &crossed).await,
        "key does not match algorithm",
    )
    .await;
    // `alg: none` is never accepted.
    let none = format!("{}.", signing_input("none", None, &claims("admin")));
    assert_bad_token(
        bearer(&proxy, "/anything", &none).await,
        "unsupported algorithm",
    )
    .await;
    assert_bad_token(
        bearer(&proxy, "/anything", "not.a-token").await,
        "malformed token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_and_es256_tokens_verify_against_the_jwks() {
    let (_upstream, proxy) = start().await;
    let keys = &*KEYS;
    let rs = rs256(&keys.rsa, "rsa-1", &claims("read admin"));
    assert_passed_as(bearer(&proxy, "/admin/users", &rs).await, "alice").await;
    let es = es256(&keys.ec, "ec-1", &claims("read"));
    assert_passed_as(bearer(&proxy, "/anything", &es).await, "alice").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_scope_is_403_however_the_path_is_spelled() {
    let (_upstream, proxy) = start().await;
    let reader = hs256(HS256_SECRET, &claims("read"));
    for path in [
        "/admin",
        "/admin/users",
        "//admin/x",
        "/%61dmin",
        "/x/../admin",
    ] {
        let response = bearer(&proxy, path, &reader).await;
        assert_eq!(response.status(), 403, "{path}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"weir\", error=\"insufficient_scope\", scope=\"admin\""
        );
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({ "error": "insufficient_scope", "detail": "requires scope admin" })
        );
    }
    // A segment-wise prefix: `/administrators` is not under `/admin`.
    assert_passed_as(bearer(&proxy, "/administrators", &reader).await, "alice").await;
    // The API key has only `read`.
    let response = get(&proxy, "/admin", &[("x-api-key", API_KEY)]).await;
    assert_eq!(response.status(), 403);
    let admin = hs256(HS256_SECRET, &claims("read admin"));
    assert_passed_as(bearer(&proxy, "/admin/users", &admin).await, "alice").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn public_prefixes_pass_without_credentials_and_forged_identities_are_dropped() {
    let (_upstream, proxy) = start().await;
    for path in ["/health", "/health/live"] {
        let response = get(&proxy, path, &[("x-user", "root")]).await;
        assert_eq!(response.status(), 200, "{path}");
        let echo = echo_json(&response.text().await.unwrap());
        assert!(echoed_header(&echo, "x-user").is_empty(), "{echo}");
    }
    assert_eq!(get(&proxy, "/healthz", &[]).await.status(), 401);

    // An authenticated request keeps only the identity the plugin set.
    assert_passed_as(
        get(
            &proxy,
            "/anything",
            &[
                ("x-api-key", API_KEY),
                ("x-user", "root"),
                ("x-user", "admin"),
            ],
        )
        .await,
        "ci-bot",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configs_are_refused_at_load_with_a_clear_message() {
    let upstream = Upstream::echo().await;
    let api_key = format!(
        "api_key = {{ header = \"x-api-key\", keys = [{{ sha256 = {:?}, user = \"u\" }}] }}",
        sha256_hex(API_KEY)
    );
    let cases = [
        (
            r#"methods = ["api_key"]
               api_key = { header = "x-api-key", keys = [{ sha256 = "abc123", user = "u" }] }"#
                .to_string(),
            "api_key.keys[0].sha256: \"abc123\" is not a SHA-256 hex digest",
        ),
        (
            r#"methods = ["basic"]
               basic = { users = [{ user = "bob", password_hash = "hunter2" }] }"#
                .to_string(),
            "basic.users[0].password_hash: expected \"sha256:<salt>:<hex>\"",
        ),
        (
            format!("methods = [\"api_key\", \"oauth\"]\n{api_key}"),
            "unknown variant `oauth`",
        ),
        (
            r#"methods = ["jwt"]"#.to_string(),
            "method \"jwt\" is enabled but has no [jwt] table",
        ),
        (
            r#"methods = ["jwt"]
               jwt = { jwks = { keys = [{ kty = "RSA", kid = "a", n = "AQAB", e = "AQAB" }] } }"#
                .to_string(),
            "jwt.jwks.keys[0] (kid \"a\")",
        ),
        (
            r#"methods = ["jwt"]
               jwt = { jwks = { nokeys = [] } }"#
                .to_string(),
            "jwks must be a JSON object with a \"keys\" array",
        ),
        (
            r#"methods = ["jwt"]
               jwt = { hs256_secret = "short" }"#
                .to_string(),
            "jwt.hs256_secret must be at least 32 bytes",
        ),
        (
            format!(
                "methods = [\"api_key\"]\npublic_prefixes = [\"/\"]\n\
                 rules = [{{ prefix = \"/admin\", scopes = [\"admin\"] }}]\n{api_key}"
            ),
            "rules: \"/admin\" lies under public prefix \"/\"",
        ),
    ];
    for (plugin_config, message) in cases {
        let err = match TestProxy::try_start(&auth_config(&upstream, &plugin_config)).await {
            Ok(_) => panic!("config must be refused:\n{plugin_config}"),
            Err(err) => err,
        };
        assert!(err.contains("plugin auth: config refused"), "{err}");
        assert!(err.contains(message), "expected {message:?} in:\n{err}");
    }
}

/// An upstream that answers with the identity auth forwarded, cacheable
/// for a minute as a private (non-`public`) response.
async fn whoami_upstream() -> Upstream {
    Upstream::serve(|req| async move {
        let user = req
            .headers()
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody")
            .to_owned();
        let mut response = weir_tests::respond(200, format!("user={user}"));
        response
            .headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        response
    })
    .await
}

/// The cross-user cache test: auth strips the credential before the cache
/// sees the request, yet the request still counts as authenticated, so
/// one user's response is never served to another (RFC 9111 §3.5).
#[tokio::test(flavor = "multi_thread")]
async fn a_stripped_credential_still_keeps_one_users_response_from_another() {
    let upstream = whoami_upstream().await;
    let proxy = TestProxy::start(&format!(
        "{}\n[cache]\ncapacity_bytes = 1048576\n",
        full_config(&upstream)
    ))
    .await;
    let basic = |user: &str| {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{BASIC_PASSWORD}"))
        )
    };
    let alice = hs256(HS256_SECRET, &claims("read"));
    let mallory = hs256(HS256_SECRET, &with(claims("read"), "sub", json!("mallory")));
    let pairs = [
        (
            "basic",
            ("authorization", basic("bob")),
            ("authorization", basic("carol")),
        ),
        (
            "jwt",
            ("authorization", format!("Bearer {alice}")),
            ("authorization", format!("Bearer {mallory}")),
        ),
        (
            "api key",
            ("x-api-key", API_KEY.to_string()),
            ("authorization", basic("bob")),
        ),
    ];
    for (i, (method, first, second)) in pairs.iter().enumerate() {
        let path = format!("/profile/{i}");
        let one = get(&proxy, &path, &[(first.0, &first.1)]).await;
        assert_eq!(one.status(), 200, "{method}");
        let cache_status = one.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(!cache_status.contains("stored"), "{method}: {cache_status}");
        let one = one.text().await.unwrap();
        let two = get(&proxy, &path, &[(second.0, &second.1)]).await;
        let cache_status = two.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(!cache_status.contains("hit"), "{method}: {cache_status}");
        let two = two.text().await.unwrap();
        assert_ne!(
            one, two,
            "{method}: the second user got the first's response"
        );
    }
    // Without credentials the same kind of response is shared: the cache
    // itself works here.
    let public = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 1048576\n",
        upstream.toml("up")
    ))
    .await;
    let first = client().get(public.url("/open")).send().await.unwrap();
    assert!(first.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("stored"));
    let second = client().get(public.url("/open")).send().await.unwrap();
    assert!(second.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
}
