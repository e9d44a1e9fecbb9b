//! The admin listener: a bearer token on everything but the health
//! probes, a Host check against DNS rebinding, purges only with a token.

use weir_tests::{admin_section, client, raw_exchange, TestProxy, Upstream, ADMIN_TOKEN};

async fn proxy_with(admin: &str) -> (Upstream, TestProxy) {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 65536\n{admin}",
        upstream.toml("up")
    ))
    .await;
    (upstream, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_but_health_needs_the_token() {
    let (_upstream, proxy) = proxy_with(&admin_section()).await;
    for path in ["/healthz", "/readyz"] {
        let response = client().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let none = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.headers()["www-authenticate"],
        "Bearer realm=\"weir-admin\""
    );
    for wrong in [
        "",
        "weir-e2e-admin-token-012345678",
        "weir-e2e-admin-token-0123456789x",
    ] {
        let response = client()
            .get(proxy.admin_url("/metrics"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{wrong:?}");
    }
    let purge = client()
        .post(proxy.admin_url("/cache/purge?prefix="))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 401);
    let right = client()
        .get(proxy.admin_url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let purge = client()
        .post(proxy.admin_url("/cache/purge?prefix="))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_host_is_refused_even_with_the_token() {
    let (_upstream, proxy) = proxy_with(&admin_section()).await;
    let admin = proxy.admin.expect("admin listener");
    for (host, status) in [
        ("evil.example", "421"),
        ("evil.example:9901", "421"),
        ("localhost", "200"),
        (&admin.to_string(), "200"),
        ("127.0.0.1", "200"),
    ] {
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_exchange(admin, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{host}: {answer}"
        );
    }
    // Health probes come from anywhere (load balancers use IPs).
    let answer = raw_exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: 10.1.2.3\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_purges_are_refused_and_metrics_stay_on_loopback() {
    let (_upstream, proxy) = proxy_with("[admin]\naddress = \"127.0.0.1:0\"\n").await;
    let purge = client()
        .post(proxy.admin_url("/cache/purge?prefix="))
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 403);
    assert!(purge.text().await.unwrap().contains("token_file"));
    let metrics = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_cannot_hold_the_admin_listener() {
    let (_upstream, proxy) = proxy_with(&format!(
        "{}max_connections = 2\n[limits]\nheader_read_timeout_ms = 300\n",
        admin_section()
    ))
    .await;
    let admin = proxy.admin.expect("admin listener");
    // Two connections that never finish their head fill the cap…
    let mut idle = Vec::new();
    for _ in 0..2 {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        idle.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // …a third is closed at once…
    let answer = raw_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(answer, "", "a connection over the cap was served");
    // …and once the head timeout frees them, the listener serves again.
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let answer = raw_exchange(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
}
