//! The sample `rate-limit` plugin: GCRA limits per key kept in the host KV,
//! 429 with `Retry-After` and the RateLimit fields, several named limits,
//! per-value overrides, and its config checked once at load time.

use std::time::Duration;

use futures_util::future::join_all;
use weir_tests::{client, TestProxy, Upstream};

/// A config with the echo upstream and the plugin as `ratelimit`.
/// `instances` is the plugin table's instance settings, `settings` the
/// top-level keys of its config table, `limits` its `[[limits]]` (see
/// [`limit`]).
fn proxy_config(upstream: &Upstream, instances: &str, settings: &str, limits: &[String]) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"ratelimit\"]\n{}\n[plugins.ratelimit]\nfile = {:?}\n{instances}\n[plugins.ratelimit.config]\n{settings}\n{}",
        upstream.toml("up"),
        weir_tests::artifacts::RATE_LIMIT,
        limits.join("\n"),
    )
}

/// One `[[limits]]` entry.
fn limit(name: &str, key: &str, requests: u64, window: &str, extra: &str) -> String {
    format!(
        "[[plugins.ratelimit.config.limits]]\nname = {name:?}\nkey = {key:?}\nrequests = {requests}\nwindow = {window:?}\n{extra}\n"
    )
}

const FRESH: &str = "instances = \"fresh\"";

/// GET `path` with extra request headers.
async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

async fn statuses(proxy: &TestProxy, path: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(get(proxy, path, headers).await.status().as_u16());
    }
    statuses
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii header")
}

#[tokio::test(flavor = "multi_thread")]
async fn allows_exactly_n_then_429s_with_retry_after_and_ratelimit_fields_then_recovers() {
    let upstream = Upstream::echo().await;
    // 3 per 2 s: the fourth request must come within 667 ms of the first,
    // which leaves a slow machine room.
    let config = proxy_config(
        &upstream,
        FRESH,
        "",
        &[limit("burst", "client-ip", 3, "2s", "")],
    );
    let proxy = TestProxy::start(&config).await;

    for _ in 0..3 {
        let allowed = get(&proxy, "/anything", &[]).await;
        assert_eq!(allowed.status(), 200);
        assert!(
            allowed.headers().get("ratelimit").is_none(),
            "headers_on_success is off"
        );
    }
    let refused = get(&proxy, "/anything", &[]).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "ratelimit-policy"), r#""burst";q=3;w=2"#);
    assert_eq!(header(&refused, "ratelimit"), r#""burst";r=0;t=1"#);
    assert_eq!(header(&refused, "content-type"), "application/json");
    assert_eq!(
        refused.text().await.unwrap(),
        r#"{"error":"rate_limited","limit":"burst"}"#
    );

    // One window later the key has its whole quota back.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        statuses(&proxy, "/anything", &[], 4).await,
        [200, 200, 200, 429]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn header_keys_are_limited_apart_and_overrides_get_a_larger_quota() {
    let upstream = Upstream::echo().await;
    let config = proxy_config(
        &upstream,
        FRESH,
        "",
        &[limit(
            "per-tenant",
            "header:x-tenant",
            2,
            "1m",
            // The header is marked as set by a trusted plugin: without the
            // mark a client could name its own quota, and load refuses it.
            "overrides = { gold = 5 }\ntrusted_header = true",
        )],
    );
    let proxy = TestProxy::start(&config).await;

    let tenant_a = [("x-tenant", "a")];
    let tenant_b = [("x-tenant", "b")];
    let gold = [("x-tenant", "gold")];
    assert_eq!(statuses(&proxy, "/", &tenant_a, 3).await, [200, 200, 429]);
    assert_eq!(statuses(&proxy, "/", &tenant_b, 3).await, [200, 200, 429]);
    assert_eq!(
        statuses(&proxy, "/", &gold, 6).await,
        [200, 200, 200, 200, 200, 429]
    );
    let refused = get(&proxy, "/", &gold).await;
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        r#""per-tenant";q=5;w=60"#
    );
    // No x-tenant header: the limit does not apply (on_missing_key = "skip").
    assert_eq!(statuses(&proxy, "/", &[], 4).await, [200; 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_can_fall_back_to_the_client_ip() {
    let upstream = Upstream::echo().await;
    let config = proxy_config(
        &upstream,
        FRESH,
        "",
        &[limit(
            "per-user",
            "header:x-user",
            2,
            "1m",
            "on_missing_key = \"client-ip\"",
        )],
    );
    let proxy = TestProxy::start(&config).await;

    assert_eq!(statuses(&proxy, "/", &[], 3).await, [200, 200, 429]);
    // A named user has a bucket of their own, apart from the IP's.
    assert_eq!(
        statuses(&proxy, "/", &[("x-user", "ann")], 3).await,
        [200, 200, 429]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn path_prefix_keys_count_each_prefix_apart() {
    let upstream = Upstream::echo().await;
    let config = proxy_config(
        &upstream,
        FRESH,
        "",
        &[limit("per-api", "path:1", 1, "1m", "")],
    );
    let proxy = TestProxy::start(&config).await;

    assert_eq!(get(&proxy, "/orders/1", &[]).await.status(), 200);
    assert_eq!(get(&proxy, "/orders/2", &[]).await.status(), 429);
    assert_eq!(get(&proxy, "/users/1", &[]).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stricter_of_several_limits_trips_and_is_named() {
    let upstream = Upstream::echo().await;
    let config = proxy_config(
        &upstream,
        FRESH,
        "",
        &[
            limit("hourly", "client-ip", 5, "1h", ""),
            limit("burst", "client-ip", 2, "1m", ""),
        ],
    );
    let proxy = TestProxy::start(&config).await;

    assert_eq!(statuses(&proxy, "/", &[], 2).await, [200, 200]);
    for _ in 0..3 {
        let refused = get(&proxy, "/", &[]).await;
        assert_eq!(refused.status(), 429);
        assert_eq!(header(&refused, "retry-after"), "30");
        assert_eq!(
            header(&refused, "ratelimit-policy"),
            r#""hourly";q=5;w=3600, "burst";q=2;w=60"#
        );
        // Refused requests spend nothing from the limit that allowed them:
        // "hourly" stays at 3 remaining.
        assert_eq!(
            header(&refused, "ratelimit"),
            r#""hourly";r=3;t=1440, "burst";r=0;t=30"#
        );
        assert_eq!(
            refused.text().await.unwrap(),
            r#"{"error":"rate_limited","limit":"burst"}"#
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_on_success_reach_allowed_responses() {
    let upstream = Upstream::echo().await;
    let config = proxy_config(
        &upstream,
        FRESH,
        "headers_on_success = true",
        &[limit("burst", "client-ip", 3, "1m", "")],
    );
    let proxy = TestProxy::start(&config).await;

    for remaining in [2, 1, 0] {
        let allowed = get(&proxy, "/anything", &[]).await;
        assert_eq!(allowed.status(), 200);
        assert_eq!(header(&allowed, "ratelimit-policy"), r#""burst";q=3;w=60"#);
        let reset = 20 * (3 - remaining);
        assert_eq!(
            header(&allowed, "ratelimit"),
            format!(r#""burst";r={remaining};t={reset}"#)
        );
    }
    assert_eq!(get(&proxy, "/anything", &[]).await.status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_instances_share_one_count_through_the_kv() {
    let upstream = Upstream::echo().await;
    // Small pool, instances retired after two calls: any count kept in an
    // instance would be lost or split, so the limit holds only if it lives
    // in the KV. The requests race, so the compare-and-swap is exercised too.
    let config = proxy_config(
        &upstream,
        "instances = \"pooled\"\npool_size = 3\nmax_uses = 2",
        "",
        &[limit("burst", "client-ip", 4, "1m", "")],
    );
    let proxy = TestProxy::start(&config).await;

    let answers = join_all((0..12).map(|_| get(&proxy, "/", &[]))).await;
    let allowed = answers.iter().filter(|r| r.status() == 200).count();
    let refused = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!((allowed, refused), (4, 8));
    assert_eq!(statuses(&proxy, "/", &[], 2).await, [429, 429]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_refused_at_load_with_a_clear_message() {
    let upstream = Upstream::echo().await;
    let cases = [
        (
            limit("burst", "client-ip", 0, "1s", ""),
            r#"limits[0] ("burst"): requests must be at least 1"#,
        ),
        (
            limit("burst", "cookie:session", 3, "1s", ""),
            r#"limits[0] ("burst"): unknown key source "cookie:session""#,
        ),
        (
            limit("burst", "client-ip", 3, "1 hour", ""),
            r#"limits[0] ("burst"): window "1 hour" must be a whole number with a unit"#,
        ),
        (
            limit("burst", "client-ip", 3, "1s", "overrides = { gold = 0 }"),
            r#"limits[0] ("burst"): overrides.gold: requests must be at least 1"#,
        ),
        (
            limit("burst", "client-ip", 3, "1s", "burst = 5"),
            "unknown field `burst`",
        ),
    ];
    for (bad, expected) in cases {
        let config = proxy_config(&upstream, FRESH, "", &[bad]);
        let err = match TestProxy::try_start(&config).await {
            Ok(_) => panic!("config must be refused: {expected}"),
            Err(err) => err,
        };
        assert!(err.contains("plugin ratelimit: config refused"), "{err}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }

    let none = proxy_config(&upstream, FRESH, "limits = []", &[]);
    let err = TestProxy::try_start(&none).await.err().expect("refused");
    assert!(err.contains("at least one limit is required"), "{err}");
}
