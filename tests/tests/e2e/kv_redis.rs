//! The Redis KV backend with a real `redis-server`: two Weir instances
//! share one rate limit, and a Redis outage is reported to the plugin as
//! `unavailable` (its `on_store_error` decides) instead of failing Weir.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_tests::{client, TestProxy, Upstream};

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
