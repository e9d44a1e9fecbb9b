//! The sample `router` plugin: ordered rules by host, path prefix, path
//! pattern, method and header; rewrites, redirects, fixed answers, the
//! fallthrough, and its config checked once at load time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weir_tests::{client, raw_exchange, respond, tagger_plugin, TestProxy, Upstream};

/// An upstream answering with JSON naming itself and what it saw: path,
/// query and the `x-route` and `x-weir-chain` headers. Counts its hits.
async fn named_upstream(name: &'static str) -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let upstream = Upstream::serve(move |req| {
        counter.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let seen = serde_json::json!({
            "upstream": name,
            "path": req.uri().path(),
            "query": req.uri().query(),
            "route": header("x-route"),
            "chain": header("x-weir-chain"),
        });
        async move { respond(200, seen.to_string()) }
    })
    .await;
    (upstream, hits)
}

/// Two upstreams, `a` and `b`, and a proxy whose chain is `chain`, with the
/// router's config table (TOML, inside `[plugins.router.config]`) and any
/// extra plugin tables.
struct Setup {
    proxy: TestProxy,
    hits_a: Arc<AtomicUsize>,
    hits_b: Arc<AtomicUsize>,
    _upstreams: (Upstream, Upstream),
}

fn config_toml(a: &Upstream, b: &Upstream, chain: &str, router: &str, extra: &str) -> String {
    format!(
        "chain = {chain}\n{}\n{}\n[plugins.router]\nfile = {:?}\n[plugins.router.config]\n{router}\n{extra}",
        a.toml("a"),
        b.toml("b"),
        weir_tests::artifacts::ROUTER,
    )
}

async fn setup(router: &str) -> Setup {
    setup_chain("[\"router\"]", router, "").await
}

async fn setup_chain(chain: &str, router: &str, extra: &str) -> Setup {
    let (a, hits_a) = named_upstream("a").await;
    let (b, hits_b) = named_upstream("b").await;
    let proxy = TestProxy::start(&config_toml(&a, &b, chain, router, extra)).await;
    Setup {
        proxy,
        hits_a,
        hits_b,
        _upstreams: (a, b),
    }
}

/// Send `request` and return the upstream's view of it.
async fn seen(request: reqwest::RequestBuilder) -> serde_json::Value {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not upstream JSON ({e}): {text}"))
}

const MATCHING_RULES: &str = r#"
default_upstream = "a"
route_header = "x-route"

[[plugins.router.config.rules]]
name = "exact-host"
host = "API.example.com"
upstream = "b"

[[plugins.router.config.rules]]
name = "wildcard-host"
host = "*.shop.example.com"
upstream = "b"

[[plugins.router.config.rules]]
name = "prefix"
path_prefix = "/b"
upstream = "b"

[[plugins.router.config.rules]]
name = "pattern"
path_pattern = "/users/{id}/orders/*"
upstream = "b"

[[plugins.router.config.rules]]
name = "method"
methods = ["delete", "PUT"]
upstream = "b"

[[plugins.router.config.rules]]
name = "header-equals"
headers = [{ name = "X-Canary", equals = "1" }]
upstream = "b"

[[plugins.router.config.rules]]
name = "header-present"
headers = [{ name = "x-tenant" }]
upstream = "b"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_condition_routes_to_its_upstream() {
    let s = setup(MATCHING_RULES).await;
    let http = client();
    let url = |path: &str| s.proxy.url(path);

    let cases = [
        // Host: case-insensitive, port ignored; wildcard at any depth.
        (
            http.get(url("/x")).header("host", "api.EXAMPLE.com:8443"),
            "exact-host",
        ),
        (
            http.get(url("/x")).header("host", "eu.shop.example.com"),
            "wildcard-host",
        ),
        (
            http.get(url("/x")).header("host", "a.b.shop.example.com"),
            "wildcard-host",
        ),
        // Path prefix, whole segments only.
        (http.get(url("/b")), "prefix"),
        (http.get(url("/b/deeper?x=1")), "prefix"),
        // Segment pattern.
        (http.get(url("/users/42/orders/7")), "pattern"),
        // Method list, written in any case in the config.
        (http.delete(url("/x")), "method"),
        (http.put(url("/x")), "method"),
        // Header conditions: equals, and present with any value.
        (http.get(url("/x")).header("x-canary", "1"), "header-equals"),
        (
            http.get(url("/x")).header("x-tenant", "acme"),
            "header-present",
        ),
    ];
    for (request, route) in cases {
        let seen = seen(request).await;
        assert_eq!(seen["upstream"], "b", "{route}: {seen}");
        assert_eq!(seen["route"], route, "{seen}");
    }

    // Near misses fall through to the default upstream, with no route.
    let misses = [
        http.get(url("/x")).header("host", "shop.example.com"),
        http.get(url("/x"))
            .header("host", "api.example.com.evil.net"),
        http.get(url("/bee")),
        http.get(url("/users/42/orders")),
        http.get(url("/users/42/orders/7/items")),
        http.post(url("/x")),
        http.get(url("/x")).header("x-canary", "2"),
    ];
    for request in misses {
        let seen = seen(request).await;
        assert_eq!(seen["upstream"], "a", "{seen}");
        assert_eq!(seen["route"], serde_json::Value::Null, "{seen}");
    }
    assert_eq!(s.hits_a.load(Ordering::SeqCst), 7);
    assert_eq!(s.hits_b.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_matching_rule_wins_and_all_its_conditions_must_hold() {
    let s = setup(
        r#"
route_header = "x-route"

[[plugins.router.config.rules]]
name = "api-writes"
host = "api.example.com"
path_prefix = "/api"
methods = ["POST"]
headers = [{ name = "x-tenant" }]
upstream = "b"

[[plugins.router.config.rules]]
name = "api"
path_prefix = "/api"
upstream = "a"

[[plugins.router.config.rules]]
name = "shadowed"
path_prefix = "/api/never"
upstream = "b"
"#,
    )
    .await;
    let http = client();
    let write = || {
        http.post(s.proxy.url("/api/items"))
            .header("host", "api.example.com")
            .header("x-tenant", "acme")
    };
    let seen_write = seen(write()).await;
    assert_eq!(seen_write["upstream"], "b");
    assert_eq!(seen_write["route"], "api-writes");

    // Drop any one condition and the next rule takes it.
    let without_tenant = http
        .post(s.proxy.url("/api/items"))
        .header("host", "api.example.com");
    let as_get = http
        .get(s.proxy.url("/api/items"))
        .header("host", "api.example.com")
        .header("x-tenant", "acme");
    for request in [without_tenant, as_get, http.get(s.proxy.url("/api/never"))] {
        let seen = seen(request).await;
        assert_eq!(seen["upstream"], "a", "{seen}");
        assert_eq!(seen["route"], "api", "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_rewrites_reach_the_upstream_with_the_query_intact() {
    let s = setup(
        r#"
[[plugins.router.config.rules]]
name = "strip"
path_prefix = "/svc-b"
upstream = "b"
rewrite = { strip_prefix = "/svc-b" }

[[plugins.router.config.rules]]
name = "replace"
path_prefix = "/api/v1"
upstream = "a"
rewrite = { replace_prefix = "/api/v1", with = "/v1" }
"#,
    )
    .await;
    let http = client();

    let stripped = seen(http.get(s.proxy.url("/svc-b/items/3?sort=asc&x=%20y"))).await;
    assert_eq!(stripped["upstream"], "b");
    assert_eq!(stripped["path"], "/items/3");
    assert_eq!(stripped["query"], "sort=asc&x=%20y");

    let bare = seen(http.get(s.proxy.url("/svc-b"))).await;
    assert_eq!(bare["path"], "/");
    assert_eq!(bare["query"], serde_json::Value::Null);

    let replaced = seen(http.get(s.proxy.url("/api/v1/users?page=2"))).await;
    assert_eq!(replaced["upstream"], "a");
    assert_eq!(replaced["path"], "/v1/users");
    assert_eq!(replaced["query"], "page=2");
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_answer_with_the_templated_location_and_never_reach_an_upstream() {
    let s = setup(
        r#"
default_upstream = "a"

[[plugins.router.config.rules]]
name = "moved"
path_prefix = "/old-docs"
redirect = { status = 308, location = "https://docs.example.com/v2{rest}{query}" }

[[plugins.router.config.rules]]
name = "to-https"
headers = [{ name = "x-force-https" }]
redirect = { status = 301, location = "https://{host}{path}" }
"#,
    )
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .no_proxy()
        .build()
        .unwrap();
    let location =
        |response: &reqwest::Response| response.headers()["location"].to_str().unwrap().to_owned();

    let moved = http
        .get(s.proxy.url("/old-docs/guide/intro?lang=en"))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 308);
    assert_eq!(
        location(&moved),
        "https://docs.example.com/v2/guide/intro?lang=en"
    );

    let bare = http.get(s.proxy.url("/old-docs")).send().await.unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(location(&bare), "https://docs.example.com/v2");

    let https = http
        .get(s.proxy.url("/a/b?dropped=1"))
        .header("host", "Shop.Example.com:8080")
        .header("x-force-https", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(https.status(), 301);
    assert_eq!(location(&https), "https://shop.example.com/a/b");

    assert_eq!(s.hits_a.load(Ordering::SeqCst), 0);
    assert_eq!(s.hits_b.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn fixed_answers_block_paths_and_encodings_do_not_dodge_them() {
    let s = setup(
        r#"
default_upstream = "a"

[[plugins.router.config.rules]]
name = "blocked"
path_pattern = "/internal/**"
respond = { status = 404, body = '{"error":"not found"}', content_type = "application/json" }

[[plugins.router.config.rules]]
name = "gone"
path_prefix = "/legacy"
respond = { status = 410, body = "gone" }
"#,
    )
    .await;
    let http = client();

    let blocked = http
        .get(s.proxy.url("/internal/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(blocked.status(), 404);
    assert_eq!(blocked.headers()["content-type"], "application/json");
    assert_eq!(blocked.text().await.unwrap(), r#"{"error":"not found"}"#);

    let gone = http.get(s.proxy.url("/legacy/x")).send().await.unwrap();
    assert_eq!(gone.status(), 410);
    assert_eq!(gone.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(gone.text().await.unwrap(), "gone");

    // Raw requests, because client libraries normalize these themselves.
    for sneaky in ["/public/%2e%2e/internal/x", "/%69nternal/x", "/./internal"] {
        let answer = raw_exchange(
            s.proxy.addr,
            format!("GET {sneaky} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{sneaky}: {answer}");
    }
    assert_eq!(s.hits_a.load(Ordering::SeqCst), 0);

    // The host canonicalises a path that only looks odd before the router
    // matches it, and forwards that same path.
    let answer = raw_exchange(
        s.proxy.addr,
        b"GET /internal/../docs/%7euser?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""path":"/docs/~user""#), "{answer}");
    assert!(answer.contains(r#""query":"q=1""#), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unmatched_requests_go_to_the_default_upstream_or_get_404() {
    let rule = r#"
[[plugins.router.config.rules]]
name = "b-only"
path_prefix = "/b"
upstream = "b"
"#;
    let with_default = setup(&format!(
        "default_upstream = \"a\"\nroute_header = \"x-route\"\n{rule}"
    ))
    .await;
    // A client cannot claim a route on the fallthrough.
    let seen_default = seen(
        client()
            .get(with_default.proxy.url("/elsewhere?k=v"))
            .header("x-route", "b-only"),
    )
    .await;
    assert_eq!(seen_default["upstream"], "a");
    assert_eq!(seen_default["path"], "/elsewhere");
    assert_eq!(seen_default["query"], "k=v");
    assert_eq!(seen_default["route"], serde_json::Value::Null);

    let without_default = setup(rule).await;
    let response = client()
        .get(without_default.proxy.url("/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), r#"{"error":"no route"}"#);
    assert_eq!(without_default.hits_a.load(Ordering::SeqCst), 0);
    assert_eq!(without_default.hits_b.load(Ordering::SeqCst), 0);
    // The rule itself still routes.
    let routed = seen(client().get(without_default.proxy.url("/b/1"))).await;
    assert_eq!(routed["upstream"], "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_plugin_runs_after_the_router_and_its_choice_sticks() {
    let s = setup_chain(
        "[\"router\", \"t\"]",
        r#"
route_header = "x-route"

[[plugins.router.config.rules]]
name = "api"
path_prefix = "/api"
upstream = "b"
"#,
        &tagger_plugin("t", "after-router", ""),
    )
    .await;
    let seen = seen(client().get(s.proxy.url("/api/x"))).await;
    assert_eq!(seen["upstream"], "b");
    assert_eq!(seen["route"], "api");
    assert_eq!(seen["chain"], "after-router");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_refused_at_load_with_a_clear_message() {
    let (a, _) = named_upstream("a").await;
    let (b, _) = named_upstream("b").await;
    let rule = |body: &str| format!("[[plugins.router.config.rules]]\nname = \"r\"\n{body}\n");
    let cases = [
        (rule(""), "rules[0] (\"r\"): no action"),
        (
            rule("upstream = \"a\"\nredirect = { status = 308, location = \"/x\" }"),
            "more than one action",
        ),
        (
            rule("upstream = \"a\"\npath_pattern = \"/users/{id/orders\""),
            "path_pattern \"/users/{id/orders\"",
        ),
        (
            rule("upstream = \"a\"\npath_pattern = \"/a/**/b\""),
            "'**' may only be the last segment",
        ),
        (
            rule("redirect = { status = 200, location = \"https://x/\" }"),
            "redirect status 200 is not a redirect",
        ),
        (
            rule("redirect = { status = 308, location = \"https://x{nope}\" }"),
            "unknown placeholder {nope}",
        ),
        (
            rule("upstream = \"a\"\nrewrite = { strip_prefix = \"api\" }"),
            "rewrite.strip_prefix \"api\" must start with '/'",
        ),
        (
            rule("upstream = \"a\"\nrewrite = { replace_prefix = \"/api\", with = \"v1\" }"),
            "rewrite.with \"v1\" must start with '/'",
        ),
        (
            rule("upstream = \"a\"\nhots = \"x\""),
            "unknown field `hots`",
        ),
        (
            "default_upstream = \"a\"\nroute_header = \"content-length\"".to_owned(),
            "route_header: \"content-length\" is managed by the host",
        ),
        (String::new(), "no rules and no default_upstream"),
    ];
    for (router, expected) in cases {
        let config = config_toml(&a, &b, "[\"router\"]", &router, "");
        let err = match TestProxy::try_start(&config).await {
            Ok(_) => panic!("config must be refused:\n{router}"),
            Err(err) => err,
        };
        assert!(err.contains("plugin router: config refused"), "{err}");
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}
