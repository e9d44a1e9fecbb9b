//! `[[routes]]`: per-route chains, upstreams and plugin config, matched on
//! the canonical request (host, path, method, headers, query), first match
//! wins; `request.route` reaches plugins; `weir check` names bad references
//! by key path and warns about shadowed routes; a reload swaps the whole
//! table.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use weir_tests::{artifacts, client, config_file, TestProxy, Upstream};

const API_KEY: &str = "route-test-key";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `auth` (API keys only), `ratelimit` and `inspector`, and the upstreams
/// `up` and `other`; `routes` follows.
fn plugins_and_upstreams(up: &Upstream, other: &Upstream) -> String {
    format!(
        r#"default_upstream = "up"
{up}
{other}
[plugins.auth]
file = {auth:?}
[plugins.auth.config]
methods = ["api_key"]
identity_header = "x-user"
api_key = {{ header = "x-api-key", keys = [{{ sha256 = {hash:?}, user = "ci-bot" }}] }}

[plugins.ratelimit]
file = {ratelimit:?}
instances = "fresh"
[[plugins.ratelimit.config.limits]]
name = "per-route"
key = "route"
requests = 100
window = "60s"

[plugins.inspector]
file = {inspector:?}
"#,
        up = up.toml("up"),
        other = other.toml("other"),
        auth = artifacts::AUTH,
        ratelimit = artifacts::RATE_LIMIT,
        inspector = artifacts::INSPECTOR,
        hash = sha256_hex(API_KEY),
    )
}

/// An upstream that says which one it is, with the echo of the request.
async fn named_upstream(name: &'static str) -> Upstream {
    Upstream::serve(move |req| async move {
        let mut response = weir_tests::respond(200, format!("{name} {}", req.uri().path()));
        response
            .headers_mut()
            .insert("x-upstream", name.parse().unwrap());
        for (header, value) in req.headers() {
            if header.as_str().starts_with("x-inspect-") || header == "x-user" {
                response.headers_mut().insert(header.clone(), value.clone());
            }
        }
        response
    })
    .await
}

async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_routes_with_different_chains_one_authenticated_one_public() {
    let (up, other) = (named_upstream("up").await, named_upstream("other").await);
    let proxy = TestProxy::start(&format!(
        r#"{}
[[routes]]
name = "health"
path = "/healthz"
chain = []
upstream = "other"

[[routes]]
name = "api"
prefix = "/api"
chain = ["auth", "inspector"]
"#,
        plugins_and_upstreams(&up, &other)
    ))
    .await;
    // Public: no credentials needed, its own upstream.
    let health = get(&proxy, "/healthz", &[]).await;
    assert_eq!(health.status(), 200);
    assert_eq!(header(&health, "x-upstream"), "other");
    // The API route runs auth.
    assert_eq!(get(&proxy, "/api/items", &[]).await.status(), 401);
    let ok = get(&proxy, "/api/items", &[("x-api-key", API_KEY)]).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(header(&ok, "x-upstream"), "up");
    assert_eq!(header(&ok, "x-user"), "ci-bot");
    // The route is the host's, on the canonical path: a dot-segment or an
    // escaped letter cannot walk around it.
    for sneaky in ["/x/../api/items", "/%61pi/items", "//api/items"] {
        let response = get(&proxy, sneaky, &[]).await;
        assert_eq!(response.status(), 401, "{sneaky} escaped the api route");
    }
    // Neither: the top-level chain (empty) and default_upstream.
    let rest = get(&proxy, "/other", &[]).await;
    assert_eq!(rest.status(), 200);
    assert_eq!(header(&rest, "x-upstream"), "up");
    // The route label on the request counter, bounded by the routes.
    let metrics = proxy.metrics().render();
    assert!(
        metrics.contains("weir_requests_total{route=\"api\",status=\"4xx\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_requests_total{route=\"health\",status=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_requests_total{status=\"2xx\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_sees_the_route_and_rate_limits_by_it_with_per_route_config() {
    let (up, other) = (named_upstream("up").await, named_upstream("other").await);
    let proxy = TestProxy::start(&format!(
        r#"{}
[[routes]]
name = "strict"
prefix = "/strict"
chain = ["ratelimit", "inspector"]
[routes.plugins.ratelimit]
limits = [{{ name = "per-route", key = "route", requests = 2, window = "60s" }}]

[[routes]]
name = "loose"
prefix = "/loose"
chain = ["ratelimit", "inspector"]
[routes.plugins.ratelimit]
limits = [{{ name = "per-route", key = "route", requests = 5, window = "60s" }}]
"#,
        plugins_and_upstreams(&up, &other)
    ))
    .await;
    let first = get(&proxy, "/strict/a", &[]).await;
    assert_eq!(header(&first, "x-inspect-route"), "strict");
    let mut strict = vec![first.status().as_u16()];
    let mut loose = Vec::new();
    for _ in 0..5 {
        strict.push(get(&proxy, "/strict/b", &[]).await.status().as_u16());
        let response = get(&proxy, "/loose/c", &[]).await;
        if response.status() == 200 {
            assert_eq!(header(&response, "x-inspect-route"), "loose");
        }
        loose.push(response.status().as_u16());
    }
    loose.push(get(&proxy, "/loose/d", &[]).await.status().as_u16());
    assert_eq!(strict, [200, 200, 429, 429, 429, 429]);
    assert_eq!(loose, [200, 200, 200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_match_by_host_wildcard_method_header_and_query() {
    let (up, other) = (named_upstream("up").await, named_upstream("other").await);
    let proxy = TestProxy::start(&format!(
        r#"{}
[[routes]]
name = "tenants"
hosts = ["*.tenants.test"]
chain = ["inspector"]
upstream = "other"

[[routes]]
name = "writes"
methods = ["POST", "PUT"]
chain = ["inspector"]
upstream = "other"

[[routes]]
name = "canary"
headers = {{ "x-canary" = "yes" }}
chain = ["inspector"]
upstream = "other"

[[routes]]
name = "debug"
prefix = "/q"
query = {{ debug = "1" }}
chain = ["inspector"]
upstream = "other"
"#,
        plugins_and_upstreams(&up, &other)
    ))
    .await;
    let addr = proxy.all_addrs()[0];
    let raw = |host: &str, method: &str, extra: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let route_of = |answer: String| {
        answer
            .lines()
            .find_map(|line| line.strip_prefix("x-inspect-route: ").map(str::to_owned))
            .unwrap_or_default()
    };
    let cases = [
        (raw("a.tenants.test", "GET", "", "/"), "tenants"),
        (raw("a.b.tenants.test:8080", "GET", "", "/"), "tenants"),
        (raw("tenants.test", "GET", "", "/"), ""),
        (raw("x.test", "POST", "", "/"), "writes"),
        (raw("x.test", "DELETE", "", "/"), ""),
        (raw("x.test", "GET", "X-Canary: yes\r\n", "/"), "canary"),
        (raw("x.test", "GET", "X-Canary: no\r\n", "/"), ""),
        (raw("x.test", "GET", "", "/q?a=b&debug=1"), "debug"),
        (raw("x.test", "GET", "", "/q?debug=0"), ""),
    ];
    for (request, expected) in cases {
        let answer = weir_tests::raw_exchange(addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{request}: {answer}");
        assert_eq!(route_of(answer.clone()), expected, "{request}: {answer}");
    }
}

#[test]
fn unknown_plugins_and_upstreams_in_routes_are_refused_by_key_path() {
    let body = format!(
        r#"default_upstream = "up"
[upstreams.up]
endpoints = ["127.0.0.1:1"]
[plugins.auth]
file = {auth:?}

[[routes]]
name = "a"
prefix = "/a"

[[routes]]
name = "b"
prefix = "/b"
chain = ["auth", "auht"]
upstream = "nowhere"
[routes.plugins.inspector]
x = 1

[[routes]]
name = "c"
prefix = "/c/../d"
"#,
        auth = artifacts::AUTH
    );
    let (_dir, path) = config_file(&body);
    let err = weir::config::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("routes[1].chain[1]: unknown plugin \"auht\""),
        "{err}"
    );
    assert!(
        err.contains("routes[1].upstream: unknown upstream \"nowhere\""),
        "{err}"
    );
    assert!(
        err.contains(
            "routes[1].plugins.inspector: plugin \"inspector\" is not in this route's chain"
        ),
        "{err}"
    );
    assert!(err.contains("routes[2].prefix"), "{err}");
}

#[test]
fn weir_check_warns_about_a_shadowed_route() {
    let body = r#"default_upstream = "up"
[upstreams.up]
endpoints = ["127.0.0.1:1"]

[[routes]]
name = "everything-api"
prefix = "/api"

[[routes]]
name = "users"
hosts = ["api.example.com"]
path = "/api/users"
methods = ["GET"]

[[routes]]
name = "other"
prefix = "/other"
"#;
    let (_dir, path) = config_file(body);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "warning: routes[1] (\"users\") is never used: routes[0] (\"everything-api\") matches every request it would"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("routes[2]"), "{stderr}");
    assert!(stdout.contains("ok (0 plugins, 3 routes)"), "{stdout}");
}

/// Requests keep flowing while the route table is rewritten and reloaded:
/// every one of them is answered 200 by the old table or the new.
#[tokio::test(flavor = "multi_thread")]
async fn reloading_a_changed_route_table_under_load_fails_no_request() {
    let (up, other) = (named_upstream("up").await, named_upstream("other").await);
    let base = plugins_and_upstreams(&up, &other);
    let table = |upstream: &str| {
        format!(
            "{base}\n[[routes]]\nname = \"moving\"\nprefix = \"/m\"\nchain = [\"inspector\"]\nupstream = \"{upstream}\"\n"
        )
    };
    let proxy = Arc::new(TestProxy::start(&table("up")).await);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (proxy, stop, served) = (proxy.clone(), stop.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let response = get(&proxy, "/m/x", &[]).await;
                assert_eq!(response.status(), 200);
                assert_eq!(header(&response, "x-inspect-route"), "moving");
                seen.push(header(&response, "x-upstream"));
                served.fetch_add(1, Ordering::SeqCst);
            }
            seen
        }));
    }
    for upstream in ["other", "up", "other"] {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        proxy.rewrite(&table(upstream));
        proxy.reload().await.expect("reload");
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let mut upstreams = Vec::new();
    for task in load {
        upstreams.extend(task.await.expect("no request failed"));
    }
    assert!(served.load(Ordering::SeqCst) > 0);
    assert!(upstreams.iter().any(|u| u == "up"));
    assert!(upstreams.iter().any(|u| u == "other"));
    // After the last reload, the new table serves.
    let last = get(&proxy, "/m/y", &[]).await;
    assert_eq!(header(&last, "x-upstream"), "other");
}

/// The per-route limits: a route's own body limit, cache switch and
/// upstream timeout.
#[tokio::test(flavor = "multi_thread")]
async fn per_route_body_limit_cache_switch_and_timeout() {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let up = Upstream::serve(move |req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if req.uri().path().starts_with("/slow") {
                tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            }
            let mut response = weir_tests::respond(200, "cacheable");
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            response
        }
    })
    .await;
    let proxy = TestProxy::start(&format!(
        r#"default_upstream = "up"
{}
[cache]
capacity_bytes = 1048576

[[routes]]
name = "uploads"
prefix = "/upload"
max_request_body_bytes = 10

[[routes]]
name = "live"
prefix = "/live"
cache = false

[[routes]]
name = "slow"
prefix = "/slow"
response_timeout_ms = 200
"#,
        up.toml("up")
    ))
    .await;
    let big = client()
        .post(proxy.url("/upload"))
        .body("x".repeat(11))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let small = client()
        .post(proxy.url("/upload"))
        .body("x".repeat(10))
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    // Elsewhere the global limit applies.
    let elsewhere = client()
        .post(proxy.url("/elsewhere"))
        .body("x".repeat(11))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200);

    let before = hits.load(Ordering::SeqCst);
    for _ in 0..2 {
        let response = get(&proxy, "/live/a", &[]).await;
        assert!(response.headers().get("cache-status").is_none());
    }
    assert_eq!(hits.load(Ordering::SeqCst), before + 2);
    for _ in 0..2 {
        get(&proxy, "/cached/a", &[]).await;
    }
    assert_eq!(hits.load(Ordering::SeqCst), before + 3);

    assert_eq!(get(&proxy, "/slow/a", &[]).await.status(), 504);
}
