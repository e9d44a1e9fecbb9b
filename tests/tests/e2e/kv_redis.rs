//! The Redis KV backend with a real `redis-server`: two Weir instances
//! share one rate limit, a Redis outage is reported to the plugin as
//! `unavailable` (its `on_store_error` decides) instead of failing Weir,
//! values over `max_value_bytes` are refused before they reach Redis, and
//! each plugin's keys live in a namespace of their own.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_tests::{client, echo_json, echoed_header, hostile_plugin, TestProxy, Upstream};

/// A `redis-server` on a free port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        let port = weir_tests::refused_addr().await.port();
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
