//! The Redis KV backend with a real `redis-server`: Weir instances share
//! one rate limit exactly (three of them, 30 requests in flight, one or
//! two limits per request), a Redis outage is reported to the plugin as
//! `unavailable` (its `on_store_error` decides, and is counted) instead of
//! failing Weir, sharing resumes when Redis comes back, values over
//! `max_value_bytes` are refused before they reach Redis, and each
//! plugin's keys live in a namespace of their own.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use weir_tests::{client, echo_json, echoed_header, hostile_plugin, TestProxy, Upstream};

/// A `redis-server` on a free port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        Redis::start_on(weir_tests::refused_addr().await.port()).await
    }

    /// On a given port: a restart, as an operator's would be.
    async fn start_on(port: u16) -> Redis {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it from apt)");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Redis { child, port };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on port {port}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(upstream: &Upstream, redis_port: u16, on_store_error: &str) -> String {
    format!(
        r#"default_upstream = "up"
chain = ["ratelimit"]
{}
[kv]
backend = "redis"
url = "redis://127.0.0.1:{redis_port}"
prefix = "weir-test:"
timeout_ms = 200

[plugins.ratelimit]
file = {:?}
timeout_ms = 1000
[plugins.ratelimit.config]
on_store_error = "{on_store_error}"
[[plugins.ratelimit.config.limits]]
name = "fleet"
key = "header:x-tenant"
requests = 3
window = "30s"
"#,
        upstream.toml("up"),
        weir_tests::artifacts::RATE_LIMIT
    )
}

async fn status(proxy: &TestProxy, tenant: &str) -> u16 {
    client()
        .get(proxy.url("/"))
        .header("x-tenant", tenant)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_one_limit_through_redis() {
    let redis = Redis::start().await;
    let upstream = Upstream::echo().await;
    let first = TestProxy::start(&config(&upstream, redis.port, "allow")).await;
    let second = TestProxy::start(&config(&upstream, redis.port, "allow")).await;
    let mut allowed = 0;
    for i in 0..8 {
        let proxy = if i % 2 == 0 { &first } else { &second };
        match status(proxy, "acme").await {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        allowed, 3,
        "the fleet-wide limit of 3 must hold across both"
    );
    // Another tenant has its own budget, on either instance.
    assert_eq!(status(&second, "other").await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_reaches_the_plugin_as_unavailable() {
    let mut redis = Redis::start().await;
    let upstream = Upstream::echo().await;
    let allow = TestProxy::start(&config(&upstream, redis.port, "allow")).await;
    let deny = TestProxy::start(&config(&upstream, redis.port, "deny")).await;
    assert_eq!(status(&allow, "t").await, 200);
    redis.stop();
    // Fail open: the request is served without a limit.
    assert_eq!(status(&allow, "t").await, 200);
    // Fail closed: the plugin answers 503 itself.
    assert_eq!(status(&deny, "t").await, 503);
}

/// Every key in the Redis on `port`, sorted.
fn redis_keys(port: u16) -> Vec<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--scan"])
        .output()
        .expect("redis-cli comes with redis-server");
    let mut keys: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_refuses_large_values_and_keeps_plugins_apart() {
    let redis = Redis::start().await;
    let upstream = Upstream::echo().await;
    let flood = |name: &str, value_bytes: usize| {
        format!(
            "{}trigger_prefix = \"/{name}\"\ncount = 3\nvalue_bytes = {value_bytes}\n",
            hostile_plugin(name, "kv-flood", "")
        )
    };
    // `a` with key `b/k` and a plugin `a/b` with key `k` were both `a/b/k`
    // when keys were `plugin/key`. Plugin names can no longer hold a `/`,
    // and keys are length-prefixed besides: `a` and `a_b` stay apart.
    let claim = |name: &str, key: &str| {
        format!(
            "{}trigger_prefix = \"/claim\"\nkey = {key:?}\nvalue = {name:?}\n",
            hostile_plugin(&format!("{name:?}"), "kv-claim", "")
        )
    };
    let body = format!(
        r#"default_upstream = "up"
chain = ["big", "small", "a", "a_b"]
{}
[kv]
backend = "redis"
url = "redis://127.0.0.1:{}"
prefix = "weir-test:"
max_value_bytes = 1024

{}{}{}{}"#,
        upstream.toml("up"),
        redis.port,
        flood("big", 2048),
        flood("small", 512),
        claim("a", "b/k"),
        claim("a_b", "k"),
    );
    let proxy = TestProxy::start(&body).await;
    let report = |path: &'static str| {
        let proxy = &proxy;
        async move {
            let response = client().get(proxy.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-hostile-result"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(report("/big").await, "set=0 too-large=3 other=0");
    assert_eq!(report("/small").await, "set=3 too-large=0 other=0");
    assert_eq!(
        proxy.metrics().counter(
            "weir_plugin_kv_refused_total",
            &[("plugin", "big"), ("reason", "value_bytes")],
        ),
        3
    );

    let claims = || async {
        let response = client().get(proxy.url("/claim")).send().await.unwrap();
        echoed_header(&echo_json(&response.text().await.unwrap()), "x-hostile-kv")
    };
    assert_eq!(claims().await, ["a saw nothing", "a_b saw nothing"]);
    assert_eq!(claims().await, ["a saw a", "a_b saw a_b"]);
    let keys = redis_keys(redis.port);
    assert!(keys.contains(&"weir-test:1:a/b/k".to_owned()), "{keys:?}");
    assert!(keys.contains(&"weir-test:3:a_b/k".to_owned()), "{keys:?}");
    // The configured prefix, then the namespace; nothing of `big` got in.
    let small = keys
        .iter()
        .filter(|k| k.starts_with("weir-test:5:small/flood-"))
        .count();
    assert_eq!(small, 3, "{keys:?}");
    assert!(
        keys.iter().all(|k| !k.starts_with("weir-test:3:big/")),
        "{keys:?}"
    );
}

/// A rate-limit chain on Redis: `limits` are `[[...limits]]` tables,
/// `extra` more plugin config (after `on_store_error`).
fn fleet_config(upstream: &Upstream, redis_port: u16, extra: &str, limits: &str) -> String {
    format!(
        r#"default_upstream = "up"
chain = ["ratelimit"]
{}
[kv]
backend = "redis"
url = "redis://127.0.0.1:{redis_port}"
prefix = "weir-fleet:"
timeout_ms = 200
retry_ms = 300

[plugins.ratelimit]
file = {:?}
timeout_ms = 2000
[plugins.ratelimit.config]
headers_on_success = true
{extra}
{limits}"#,
        upstream.toml("up"),
        weir_tests::artifacts::RATE_LIMIT
    )
}

/// Send `total` requests round-robin over `proxies`, `in_flight` at a time;
/// the statuses, and how long the run took.
async fn storm(
    proxies: &[&TestProxy],
    total: usize,
    in_flight: usize,
    headers: &[(&str, &str)],
) -> (Vec<u16>, Duration) {
    let client = client();
    let started = Instant::now();
    let statuses = stream::iter(0..total)
        .map(|i| {
            let mut request = client.get(proxies[i % proxies.len()].url("/"));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<u16>>()
        .await;
    (statuses, started.elapsed())
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// The sum of the samples of a scrape whose series starts with `series`
/// (a whole `name{labels}`, or `name{` for every series of a family).
fn scraped(proxy: &TestProxy, series: &str) -> u64 {
    proxy
        .metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What a quota of `requests` per `window` lets through in `elapsed`: the
/// burst, plus one per interval.
fn permitted(requests: u64, window: Duration, elapsed: Duration) -> u64 {
    let interval = window.as_nanos() / u128::from(requests);
    requests + (elapsed.as_nanos().div_ceil(interval)) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_hold_one_limit_exactly_under_contention() {
    let redis = Redis::start().await;
    let upstream = Upstream::echo().await;
    let limits = r#"[[plugins.ratelimit.config.limits]]
name = "fleet"
key = "header:x-tenant"
requests = 200
window = "1h"
"#;
    let config = fleet_config(&upstream, redis.port, "", limits);
    let proxies = [
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
    ];
    let all: Vec<&TestProxy> = proxies.iter().collect();
    let (statuses, elapsed) = storm(&all, 600, 30, &[("x-tenant", "acme")]).await;
    let allowed = count(&statuses, 200) as u64;
    assert_eq!(count(&statuses, 429) as u64, 600 - allowed, "{statuses:?}");
    // One request comes back every 18 s: a run shorter than that allows
    // exactly 200, and never more than the rate permits.
    let most = permitted(200, Duration::from_secs(3600), elapsed);
    assert!(
        (200..=most).contains(&allowed),
        "allowed {allowed} of 600 in {elapsed:?}; the rate permits 200..={most}"
    );
    for proxy in &proxies {
        assert_eq!(
            scraped(proxy, "weir_custom_ratelimit_store_errors_total{"),
            0,
            "no store errors, so nothing was let through unlimited"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_limits_on_one_request_spend_together_across_the_fleet() {
    let redis = Redis::start().await;
    let upstream = Upstream::echo().await;
    let limits = r#"[[plugins.ratelimit.config.limits]]
name = "tenant"
key = "header:x-tenant"
requests = 100
window = "1h"

[[plugins.ratelimit.config.limits]]
name = "user"
key = "header:x-user"
requests = 300
window = "1h"
"#;
    let config = fleet_config(&upstream, redis.port, "", limits);
    let proxies = [
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
        TestProxy::start(&config).await,
    ];
    let all: Vec<&TestProxy> = proxies.iter().collect();
    let headers = [("x-tenant", "acme"), ("x-user", "ann")];
    let (statuses, elapsed) = storm(&all, 600, 30, &headers).await;
    let allowed = count(&statuses, 200) as u64;
    let most = permitted(100, Duration::from_secs(3600), elapsed);
    assert!(
        (100..=most).contains(&allowed),
        "allowed {allowed} in {elapsed:?}; the tenant limit permits 100..={most}"
    );
    // The refused requests spent nothing of the user's limit: a request of
    // another tenant sees exactly what the allowed ones used.
    let response = client()
        .get(proxies[0].url("/"))
        .header("x-tenant", "other")
        .header("x-user", "ann")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ratelimit = response.headers()["ratelimit"].to_str().unwrap().to_owned();
    let user_remaining = 300 - allowed - 1;
    assert!(
        ratelimit.contains(&format!("\"user\";r={user_remaining};")),
        "{ratelimit} (allowed {allowed})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_gets_each_policy_and_is_counted_then_sharing_resumes() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let upstream = Upstream::echo().await;
    let limits = r#"[[plugins.ratelimit.config.limits]]
name = "fleet"
key = "header:x-tenant"
requests = 30
window = "1h"
"#;
    let with = |policy: &str| {
        let extra = match policy {
            "local" => "on_store_error = \"local\"\nfleet_size = 3".to_owned(),
            other => format!("on_store_error = \"{other}\""),
        };
        fleet_config(&upstream, port, &extra, limits)
    };
    let allow = TestProxy::start(&with("allow")).await;
    let deny = TestProxy::start(&with("deny")).await;
    let local = TestProxy::start(&with("local")).await;
    let local_too = TestProxy::start(&with("local")).await;
    let tenant = [("x-tenant", "acme")];
    // Shared while Redis is up: 12 requests spend 12 of the fleet's 30.
    let fleet = [&allow, &deny, &local, &local_too];
    let (statuses, _) = storm(&fleet, 12, 4, &tenant).await;
    assert_eq!(count(&statuses, 200), 12, "{statuses:?}");

    redis.stop();
    let (statuses, _) = storm(&[&allow], 20, 4, &tenant).await;
    assert_eq!(count(&statuses, 200), 20, "allow: unlimited, {statuses:?}");
    let (statuses, _) = storm(&[&deny], 5, 4, &tenant).await;
    assert_eq!(count(&statuses, 503), 5, "deny: refused, {statuses:?}");
    // local: each instance decides on its own share, 30 / 3 = 10.
    for proxy in [&local, &local_too] {
        let (statuses, _) = storm(&[proxy], 15, 4, &tenant).await;
        assert_eq!(count(&statuses, 200), 10, "local: its share, {statuses:?}");
        assert_eq!(count(&statuses, 429), 5, "{statuses:?}");
    }
    for (proxy, policy, errors) in [
        (&allow, "allow", 20),
        (&deny, "deny", 5),
        (&local, "local", 15),
    ] {
        let series = format!(
            "weir_custom_ratelimit_store_errors_total{{plugin=\"ratelimit\",policy=\"{policy}\"}}"
        );
        assert_eq!(scraped(proxy, &series), errors, "{policy}");
        assert!(
            proxy.metrics().counter(
                "weir_plugin_kv_errors_total",
                &[("plugin", "ratelimit"), ("error", "unavailable")],
            ) >= errors,
            "{policy}: the host counts the failed calls too"
        );
    }

    // Back, on the same port (empty: it keeps nothing on disk): once each
    // instance has reconnected, they share one quota again.
    let _redis = Redis::start_on(port).await;
    for proxy in [&local, &local_too, &allow] {
        wait_until_shared(proxy).await;
    }
    let (statuses, _) = storm(&[&local, &local_too, &allow], 45, 3, &tenant).await;
    assert_eq!(
        count(&statuses, 200),
        30,
        "one fleet-wide quota of 30 again, without a restart: {statuses:?}"
    );
}

/// Probe `proxy` (a fresh tenant each time) until a request is decided
/// without a store error: its KV has reconnected.
async fn wait_until_shared(proxy: &TestProxy) {
    for attempt in 0..100 {
        let errors = || scraped(proxy, "weir_custom_ratelimit_store_errors_total{");
        let before = errors();
        let status = client()
            .get(proxy.url("/"))
            .header("x-tenant", format!("probe-{attempt}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        if errors() == before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the proxy never reached Redis again");
}
