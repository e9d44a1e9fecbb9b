//! The test-only `hostile` plugin: a trap, an endless loop and a memory
//! bomb each fail only their own request, per `on_error`, while requests
//! running at the same time through the same plugin keep succeeding.

use std::time::Duration;

use weir_tests::{client, hostile_plugin, TestProxy, Upstream};

async fn proxy_with(mode: &str, extra: &str) -> (TestProxy, Upstream) {
    let upstream = Upstream::echo().await;
    let config = format!(
        "default_upstream = \"up\"\nchain = [\"hostile\"]\n{}\n{}",
        upstream.toml("up"),
        hostile_plugin("hostile", mode, extra)
    );
    (TestProxy::start(&config).await, upstream)
}

/// While `bad` requests fail, good ones through the same plugin succeed.
async fn only_the_bad_request_fails(proxy: &TestProxy, expected_bad: u16) {
    let client = client();
    let bad = {
        let client = client.clone();
        let url = proxy.url("/boom");
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    let mut good = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let url = proxy.url(&format!("/fine/{i}"));
        good.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap()
        }));
    }
    for handle in good {
        assert_eq!(handle.await.unwrap().status(), 200);
    }
    let bad = bad.await.unwrap();
    assert_eq!(bad.status(), expected_bad);
    // The proxy is still healthy after the failure.
    let after = client.get(proxy.url("/after")).send().await.unwrap();
    assert_eq!(after.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn trap_with_deny_fails_only_its_request_with_500() {
    let (proxy, _up) = proxy_with("trap", "on_error = \"deny\"").await;
    only_the_bad_request_fails(&proxy, 500).await;
    let response = client().get(proxy.url("/boom")).send().await.unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "500 Internal Server Error: plugin failed\n"
    );
    assert!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "hostile"), ("kind", "trap")]
        ) >= 2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trap_with_skip_lets_the_request_through() {
    let (proxy, _up) = proxy_with("trap", "on_error = \"skip\"").await;
    only_the_bad_request_fails(&proxy, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_is_stopped_by_the_deadline() {
    let (proxy, _up) = proxy_with("loop", "on_error = \"deny\"\ntimeout_ms = 50").await;
    let started = std::time::Instant::now();
    only_the_bad_request_fails(&proxy, 503).await;
    // Not a timing assertion on performance: a bound far above the 50 ms
    // deadline only proves the loop was interrupted at all.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "hostile"), ("kind", "timeout")]
        ) >= 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_in_pooled_instance_is_discarded() {
    let (proxy, _up) = proxy_with(
        "loop",
        "on_error = \"deny\"\ntimeout_ms = 50\ninstances = \"pooled\"\npool_size = 4",
    )
    .await;
    only_the_bad_request_fails(&proxy, 503).await;
    only_the_bad_request_fails(&proxy, 503).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_hits_the_cap() {
    let (proxy, _up) = proxy_with("memory", "on_error = \"deny\"\nmemory_mb = 32").await;
    only_the_bad_request_fails(&proxy, 500).await;
    assert!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "hostile"), ("kind", "memory")]
        ) >= 1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_in_the_response_phase_is_contained_too() {
    let (proxy, _up) = proxy_with("trap", "on_error = \"deny\"").await;
    drop(proxy);
    let upstream = Upstream::echo().await;
    let config = format!(
        "default_upstream = \"up\"\nchain = [\"hostile\"]\n{}\n{}phase = \"response\"\n",
        upstream.toml("up"),
        hostile_plugin("hostile", "trap", "on_error = \"deny\"")
    );
    let proxy = TestProxy::start(&config).await;
    only_the_bad_request_fails(&proxy, 500).await;
}
