//! The host response cache: RFC 9111 semantics, Vary, revalidation,
//! coalescing, Cache-Status (RFC 9211), and the admin purge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir_tests::{client, respond, TestProxy, Upstream};

/// An upstream that counts its requests and answers with the given headers
/// and a body naming the request number.
async fn counting(
    headers: &'static [(&'static str, &'static str)],
) -> (Upstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let upstream = Upstream::serve(move |req| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let lang = req
                .headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let mut response = respond(200, format!("response {n} {lang}"));
            for (name, value) in headers {
                response.headers_mut().insert(*name, value.parse().unwrap());
            }
            response
        }
    })
    .await;
    (upstream, count)
}

async fn cached_proxy(upstream: &Upstream, extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 1048576\n{}{extra}",
        upstream.toml("up"),
        weir_tests::admin_section()
    ))
    .await
}

async fn get(proxy: &TestProxy, path: &str) -> (String, String) {
    let response = client().get(proxy.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_response_is_stored_then_served_as_a_hit() {
    let (upstream, count) = counting(&[("cache-control", "max-age=60")]).await;
    let proxy = cached_proxy(&upstream, "").await;
    let (status, body) = get(&proxy, "/doc?x=1").await;
    assert_eq!(status, "weir; fwd=miss; stored");
    assert_eq!(body, "response 1 ");
    let response = client().get(proxy.url("/doc?x=1")).send().await.unwrap();
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(status.starts_with("weir; hit"), "{status}");
    assert!(response.headers().contains_key("age"));
    assert_eq!(response.text().await.unwrap(), "response 1 ");
    // A different query is a different key.
    let (status, _) = get(&proxy, "/doc?x=2").await;
    assert_eq!(status, "weir; fwd=miss; stored");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn uncacheable_responses_are_not_stored() {
    for headers in [
        &[("cache-control", "no-store")][..],
        &[("cache-control", "private, max-age=60")][..],
        &[("cache-control", "max-age=60"), ("set-cookie", "session=1")][..],
        &[][..],
    ] {
        let (upstream, count) = counting(headers).await;
        let proxy = cached_proxy(&upstream, "").await;
        for _ in 0..2 {
            let (status, _) = get(&proxy, "/nope").await;
            assert_eq!(status, "weir; fwd=miss", "{headers:?}");
        }
        assert_eq!(count.load(Ordering::SeqCst), 2, "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_requests_are_not_shared_unless_public() {
    let (upstream, count) = counting(&[("cache-control", "max-age=60")]).await;
    let proxy = cached_proxy(&upstream, "").await;
    for _ in 0..2 {
        let response = client()
            .get(proxy.url("/me"))
            .header("authorization", "Bearer x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["cache-status"], "weir; fwd=miss");
    }
    assert_eq!(count.load(Ordering::SeqCst), 2);

    let (upstream, count) = counting(&[("cache-control", "public, max-age=60")]).await;
    let proxy = cached_proxy(&upstream, "").await;
    for _ in 0..2 {
        client()
            .get(proxy.url("/pub"))
            .header("authorization", "Bearer x")
            .send()
            .await
            .unwrap();
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn vary_keeps_one_variant_per_header_value() {
    let (upstream, count) =
        counting(&[("cache-control", "max-age=60"), ("vary", "accept-language")]).await;
    let proxy = cached_proxy(&upstream, "").await;
    let fetch = |lang: &'static str| {
        let url = proxy.url("/greeting");
        async move {
            let response = client()
                .get(url)
                .header("accept-language", lang)
                .send()
                .await
                .unwrap();
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            (status, response.text().await.unwrap())
        }
    };
    assert_eq!(fetch("en").await.0, "weir; fwd=miss; stored");
    assert_eq!(fetch("fr").await.0, "weir; fwd=miss; stored");
    let (status, body) = fetch("en").await;
    assert!(status.starts_with("weir; hit"), "{status}");
    assert_eq!(body, "response 1 en");
    let (status, body) = fetch("fr").await;
    assert!(status.starts_with("weir; hit"), "{status}");
    assert_eq!(body, "response 2 fr");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_entry_is_revalidated_with_its_etag() {
    let count = Arc::new(AtomicUsize::new(0));
    let conditional = Arc::new(AtomicUsize::new(0));
    let (seen, seen_conditional) = (count.clone(), conditional.clone());
    let upstream = Upstream::serve(move |req| {
        seen.fetch_add(1, Ordering::SeqCst);
        let matches = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        if matches {
            seen_conditional.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            let mut response = if matches {
                respond(304, "")
            } else {
                respond(200, "the body")
            };
            let headers = response.headers_mut();
            headers.insert("cache-control", "max-age=1".parse().unwrap());
            headers.insert("etag", "\"v1\"".parse().unwrap());
            response
        }
    })
    .await;
    let proxy = cached_proxy(&upstream, "").await;
    assert_eq!(get(&proxy, "/r").await.0, "weir; fwd=miss; stored");
    assert!(get(&proxy, "/r").await.0.starts_with("weir; hit"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = get(&proxy, "/r").await;
    assert_eq!(status, "weir; fwd=stale; fwd-status=304");
    assert_eq!(body, "the body");
    assert_eq!(conditional.load(Ordering::SeqCst), 1);
    // Refreshed: fresh again without asking the upstream.
    assert!(get(&proxy, "/r").await.0.starts_with("weir; hit"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_make_one_upstream_request() {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let upstream = Upstream::serve(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut response = respond(200, "shared");
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
            response
        }
    })
    .await;
    let proxy = cached_proxy(&upstream, "").await;
    let client = client();
    let mut requests = Vec::new();
    for _ in 0..100 {
        let client = client.clone();
        let url = proxy.url("/popular");
        requests.push(tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), "shared");
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn head_is_answered_from_the_get_entry_and_post_bypasses() {
    let (upstream, count) = counting(&[("cache-control", "max-age=60")]).await;
    let proxy = cached_proxy(&upstream, "").await;
    get(&proxy, "/thing").await;
    let head = client().head(proxy.url("/thing")).send().await.unwrap();
    assert!(head.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("weir; hit"));
    let post = client().post(proxy.url("/thing")).send().await.unwrap();
    assert_eq!(post.headers()["cache-status"], "weir; fwd=method");
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_purges_by_key_and_by_prefix() {
    let (upstream, count) = counting(&[("cache-control", "max-age=60")]).await;
    let proxy = cached_proxy(&upstream, "").await;
    let host = proxy.addr.to_string();
    for path in ["/a/1", "/a/2", "/b/1"] {
        get(&proxy, path).await;
    }
    let purge = client()
        .post(proxy.admin_url(&format!("/cache/purge?key={host}/a/1")))
        .bearer_auth(weir_tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.text().await.unwrap(), "purged 1\n");
    assert_eq!(get(&proxy, "/a/1").await.0, "weir; fwd=miss; stored");
    assert!(get(&proxy, "/a/2").await.0.starts_with("weir; hit"));

    let purge = client()
        .post(proxy.admin_url(&format!("/cache/purge?prefix={host}/a/")))
        .bearer_auth(weir_tests::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    assert_eq!(get(&proxy, "/a/2").await.0, "weir; fwd=miss; stored");
    assert!(get(&proxy, "/b/1").await.0.starts_with("weir; hit"));
    assert_eq!(count.load(Ordering::SeqCst), 5);

    let metrics = weir_tests::scrape(&proxy.admin_url("/metrics")).await;
    assert!(
        metrics.contains("weir_requests_total{status=\"2xx\"}"),
        "{metrics}"
    );
}
