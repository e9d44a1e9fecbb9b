//! The `cache-policy` plugin narrows the host cache per route: bypass, TTL
//! cap, extra key parts, shared authenticated responses where allowed.

use std::time::Duration;

use weir_tests::{client, respond, TestProxy, Upstream};

async fn proxy(upstream: &Upstream, cache_section: &str) -> TestProxy {
    TestProxy::start(&format!(
        r#"default_upstream = "up"
chain = ["cache"]
{}
[cache]
{cache_section}

[plugins.cache]
file = {:?}
[[plugins.cache.config.rules]]
prefix = "/private"
bypass = true
[[plugins.cache.config.rules]]
prefix = "/short"
ttl_cap = 1
[[plugins.cache.config.rules]]
prefix = "/tenant"
key_headers = ["x-tenant"]
[[plugins.cache.config.rules]]
prefix = "/shared"
share_authenticated = true
"#,
        upstream.toml("up"),
        weir_tests::artifacts::CACHE_POLICY
    ))
    .await
}

async fn cacheable_upstream() -> Upstream {
    Upstream::serve(|req| async move {
        let tenant = req
            .headers()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let mut response = respond(200, format!("for {tenant}"));
        response
            .headers_mut()
            .insert("cache-control", "max-age=300".parse().unwrap());
        response
    })
    .await
}

async fn status_of(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut request = client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn bypass_prefix_never_touches_the_cache() {
    let upstream = cacheable_upstream().await;
    let proxy = proxy(&upstream, "").await;
    for _ in 0..2 {
        assert_eq!(
            status_of(&proxy, "/private/x", &[]).await.0,
            "weir; fwd=bypass"
        );
    }
    status_of(&proxy, "/public", &[]).await;
    assert!(status_of(&proxy, "/public", &[])
        .await
        .0
        .starts_with("weir; hit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_cap_shortens_the_lifetime() {
    let upstream = cacheable_upstream().await;
    let proxy = proxy(&upstream, "").await;
    status_of(&proxy, "/short", &[]).await;
    assert!(status_of(&proxy, "/short", &[])
        .await
        .0
        .starts_with("weir; hit"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // No validators: past the cap it is a plain miss.
    assert_eq!(
        status_of(&proxy, "/short", &[]).await.0,
        "weir; fwd=miss; stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extra_key_parts_separate_tenants() {
    let upstream = cacheable_upstream().await;
    let proxy = proxy(&upstream, "").await;
    let a = [("x-tenant", "a")];
    let b = [("x-tenant", "b")];
    assert_eq!(status_of(&proxy, "/tenant/home", &a).await.1, "for a");
    assert_eq!(status_of(&proxy, "/tenant/home", &b).await.1, "for b");
    let (status, body) = status_of(&proxy, "/tenant/home", &a).await;
    assert!(status.starts_with("weir; hit"), "{status}");
    assert_eq!(body, "for a");
}

#[tokio::test(flavor = "multi_thread")]
async fn authenticated_sharing_needs_the_operators_consent() {
    let upstream = cacheable_upstream().await;
    let auth = [("authorization", "Bearer t")];
    let refused = proxy(&upstream, "").await;
    status_of(&refused, "/shared/x", &auth).await;
    assert_eq!(
        status_of(&refused, "/shared/x", &auth).await.0,
        "weir; fwd=miss"
    );

    let allowed = proxy(&upstream, "allow_shared_authenticated = true").await;
    status_of(&allowed, "/shared/x", &auth).await;
    assert!(status_of(&allowed, "/shared/x", &auth)
        .await
        .0
        .starts_with("weir; hit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rules_are_refused_at_load() {
    let upstream = cacheable_upstream().await;
    let err = TestProxy::try_start(&format!(
        "default_upstream = \"up\"\nchain = [\"cache\"]\n{}\n[plugins.cache]\nfile = {:?}\n[[plugins.cache.config.rules]]\nprefix = \"api\"\n",
        upstream.toml("up"),
        weir_tests::artifacts::CACHE_POLICY
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.contains("must start with '/'"), "{err}");
}
