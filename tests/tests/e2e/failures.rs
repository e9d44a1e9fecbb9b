//! Upstream failures and client input limits: each gets a clear status and
//! a short body naming the failure class, never internals.

use std::time::Duration;

use weir_tests::{client, raw_exchange, refused_addr, respond, TestProxy, Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502() {
    let dead = refused_addr().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"down\"\n[upstreams.down]\nendpoints = [\"{dead}\"]\n"
    ))
    .await;
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert_eq!(body, "502 Bad Gateway: upstream connect failed\n");
    assert!(
        !body.contains(&dead.to_string()),
        "leaks the endpoint: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504() {
    let upstream = Upstream::serve(|_req| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        respond(200, "too late")
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"slow\"\n{}response_timeout_ms = 200\n",
        upstream.toml("slow")
    ))
    .await;
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.text().await.unwrap(),
        "504 Gateway Timeout: upstream timed out\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_5xx_passes_through() {
    let upstream = Upstream::serve(|_req| async move { respond(503, "upstream says no") }).await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}",
        upstream.toml("up")
    ))
    .await;
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.text().await.unwrap(), "upstream says no");
}

#[tokio::test(flavor = "multi_thread")]
async fn declared_body_over_limit_is_413() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[limits]\nmax_request_body_bytes = 1024\n",
        upstream.toml("up")
    ))
    .await;
    let response = client()
        .post(proxy.url("/"))
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let small = client()
        .post(proxy.url("/"))
        .body(vec![0u8; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_request_line_is_400_and_oversized_head_is_431() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[limits]\nmax_header_bytes = 8192\n",
        upstream.toml("up")
    ))
    .await;
    let answer = raw_exchange(proxy.addr, b"GARBAGE\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw_exchange(proxy.addr, huge.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // The proxy still serves everyone else.
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_content_length_is_refused() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}",
        upstream.toml("up")
    ))
    .await;
    let answer = raw_exchange(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}
