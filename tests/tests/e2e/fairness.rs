//! No plugin stalls anyone else: a guest that runs long gives its thread
//! back at every epoch tick (its own deadline still applies), calls beyond
//! a plugin's `max_concurrency` wait briefly and are then refused with 503,
//! and the admin listener runs on a thread of its own.
//!
//! No timings are asserted: only the order in which things finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weir_tests::{admin_section, client, hostile_plugin, TestProxy, Upstream};

fn looping(upstream: &Upstream, extra: &str, sections: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"spin\"]\n{}\n{}{sections}",
        upstream.toml("up"),
        hostile_plugin("spin", "loop", extra)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_plugin_yields_to_other_requests_and_the_admin_listener() {
    let upstream = Upstream::echo().await;
    // Far more spinning calls than worker threads, each with a long
    // deadline: without yielding, nothing else would run until they end.
    let proxy = TestProxy::start(&looping(
        &upstream,
        "timeout_ms = 3000\nmax_concurrency = 64\ninstances = \"fresh\"",
        &admin_section(),
    ))
    .await;
    let spinning = 8;
    let finished = Arc::new(AtomicUsize::new(0));
    let mut spins = Vec::new();
    for _ in 0..spinning {
        let url = proxy.url("/boom");
        let finished = finished.clone();
        spins.push(tokio::spawn(async move {
            let status = client().get(url).send().await.unwrap().status();
            finished.fetch_add(1, Ordering::SeqCst);
            status
        }));
    }
    // Let them start.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let fast = client().get(proxy.url("/fast")).send().await.unwrap();
    assert_eq!(fast.status(), 200);
    let health = client()
        .get(proxy.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the other requests waited for the spinning calls to end"
    );
    // The spinning calls still hit their own deadline.
    for spin in spins {
        assert_eq!(spin.await.unwrap(), 503);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_beyond_max_concurrency_wait_briefly_then_get_503() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&looping(
        &upstream,
        "timeout_ms = 1000\nmax_concurrency = 2\nqueue_timeout_ms = 50",
        "",
    ))
    .await;
    let mut calls = Vec::new();
    for _ in 0..5 {
        let url = proxy.url("/boom");
        calls.push(tokio::spawn(async move {
            let response = client().get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    let mut timed_out = 0;
    let mut refused = 0;
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 503, "{body}");
        if body.contains("plugin timed out") {
            timed_out += 1;
        } else {
            assert!(body.contains("plugin capacity exhausted"), "{body}");
            refused += 1;
        }
    }
    assert_eq!((timed_out, refused), (2, 3));
    assert_eq!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "spin"), ("kind", "overload")]
        ),
        3
    );
    // Once the slots are free again, the plugin serves.
    let ok = client().get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

/// A stderr nobody reads (a full pipe) must not stall requests that log:
/// lines are dropped instead. With synchronous writes the first request to
/// log into the full pipe would block for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_stderr_does_not_stall_requests() {
    let upstream = Upstream::echo().await;
    let (_dir, path) = weir_tests::config_file(&format!(
        "default_upstream = \"up\"\nchain = [\"noisy\"]\n{}\n{}count = 200\nsize = 4000\ntrigger_prefix = \"/\"\n",
        upstream.toml("up"),
        hostile_plugin(
            "noisy",
            "log-flood",
            "log_lines_per_second = 100000\nlog_burst = 100000\ntimeout_ms = 5000"
        )
    ));
    // The log is read until Weir listens, then never again.
    let weir = weir_tests::run_weir_binary(env!("CARGO_BIN_EXE_weir-e2e"), &path).await;
    let client = client();
    // 40 requests x 200 lines x 4 KB: 32 MB into a 64 KB pipe.
    for i in 0..40 {
        let response = client
            .get(format!("http://{}/{i}", weir.address))
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} stalled: {e}"));
        assert_eq!(response.status(), 200);
    }
    drop(weir);
}
