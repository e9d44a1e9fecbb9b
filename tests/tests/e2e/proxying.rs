//! Plain proxying: what passes through unchanged, what the proxy adds and
//! removes, streaming, and HTTP/2.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use weir_tests::{
    client, echo_json, echoed_header, h2c_client, raw_exchange, respond, TestProxy, Upstream,
};

fn no_plugins(upstream: &Upstream) -> String {
    format!("default_upstream = \"up\"\n{}", upstream.toml("up"))
}

#[tokio::test(flavor = "multi_thread")]
async fn get_passes_through_with_forwarding_headers() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&no_plugins(&upstream)).await;

    let response = client()
        .get(proxy.url("/some/path?a=1&b=two"))
        .header("x-custom", "kept")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["via"], "1.1 weir");
    assert!(response.headers().contains_key("x-request-id"));
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/some/path");
    assert_eq!(echo["query"], "a=1&b=two");
    assert_eq!(echoed_header(&echo, "x-custom"), ["kept"]);
    // At the edge, a client-sent X-Forwarded-For is replaced, not trusted.
    assert_eq!(echoed_header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        [proxy.addr.to_string()]
    );
    assert_eq!(echoed_header(&echo, "host"), [proxy.addr.to_string()]);
    assert_eq!(echoed_header(&echo, "via"), ["1.1 weir"]);
    assert_eq!(echoed_header(&echo, "x-request-id").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_forwarded_for_is_appended() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "{}\n[proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        no_plugins(&upstream)
    ))
    .await;
    let response = client()
        .get(proxy.url("/"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn post_body_passes_through() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&no_plugins(&upstream)).await;
    let response = client()
        .post(proxy.url("/submit"))
        .header("content-type", "application/json")
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_bytes"], 17);
    assert_eq!(echoed_header(&echo, "content-type"), ["application/json"]);
    assert_eq!(echoed_header(&echo, "content-length"), ["17"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let upstream = Upstream::serve(|req| async move {
        // What reached the upstream comes back in a header, and the
        // upstream adds hop-by-hop headers of its own to its response.
        let seen: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        let mut response = respond(200, "ok");
        let headers = response.headers_mut();
        headers.insert("x-seen", seen.join(",").parse().unwrap());
        headers.insert("connection", "x-upstream-secret".parse().unwrap());
        headers.insert("x-upstream-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("proxy-authenticate", "Basic".parse().unwrap());
        response
    })
    .await;
    let proxy = TestProxy::start(&no_plugins(&upstream)).await;

    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close, x-client-secret\r\n\
         X-Client-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
         Upgrade: websocket\r\nTE: gzip\r\nX-Kept: yes\r\n\r\n",
        proxy.addr
    );
    let answer = raw_exchange(proxy.addr, request.as_bytes())
        .await
        .to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    let seen_line = answer
        .lines()
        .find(|l| l.starts_with("x-seen:"))
        .unwrap_or_else(|| panic!("no x-seen in {answer}"));
    for gone in [
        "x-client-secret",
        "keep-alive",
        "proxy-authorization",
        "upgrade",
        "te",
    ] {
        assert!(
            !seen_line.split([':', ',', ' ']).any(|h| h == gone),
            "{gone} reached the upstream: {seen_line}"
        );
    }
    assert!(seen_line.contains("x-kept"), "{seen_line}");
    assert!(!answer.contains("x-upstream-secret"), "{answer}");
    assert!(!answer.contains("keep-alive"), "{answer}");
    assert!(!answer.contains("proxy-authenticate"), "{answer}");
}

const TWENTY_MB: usize = 20 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn twenty_megabytes_stream_both_ways() {
    // The upstream counts what it receives and answers with 20 MB, sent in
    // chunks so nothing requires the whole body in one piece.
    let upstream = Upstream::serve(|req| async move {
        let mut received = 0usize;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                received += data.len();
            }
        }
        let chunk = Bytes::from(vec![b'w'; 64 * 1024]);
        let chunks = TWENTY_MB / chunk.len();
        let stream = futures_stream(chunk, chunks);
        let mut response = http::Response::new(stream);
        response
            .headers_mut()
            .insert("x-received", received.to_string().parse().unwrap());
        response
    })
    .await;
    let proxy = TestProxy::start(&no_plugins(&upstream)).await;

    let upload = vec![b'u'; TWENTY_MB];
    let response = client()
        .post(proxy.url("/upload"))
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-received"],
        TWENTY_MB.to_string().as_str()
    );
    let downloaded = response.bytes().await.unwrap();
    assert_eq!(downloaded.len(), TWENTY_MB);
    assert!(downloaded.iter().all(|&b| b == b'w'));
}

/// A streaming body of `count` copies of `chunk`.
fn futures_stream(chunk: Bytes, count: usize) -> weir_tests::Body {
    use futures_util::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for _ in 0..count {
            if tx.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|bytes| Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes)));
    weir::body::boxed(http_body_util::StreamBody::new(frames))
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_client_is_served() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&no_plugins(&upstream)).await;
    let response = h2c_client()
        .get(proxy.url("/over/h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["via"], "2 weir");
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echo["path"], "/over/h2");
    // The upstream is spoken to in HTTP/1.1 with a Host header.
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echoed_header(&echo, "host"), [proxy.addr.to_string()]);
    assert_eq!(echoed_header(&echo, "via"), ["2 weir"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_request_finishes_on_shutdown() {
    let upstream = Upstream::serve(|_req| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        respond(200, "finished")
    })
    .await;
    let proxy = TestProxy::start(&no_plugins(&upstream)).await;
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = proxy.addr;
    proxy.stop().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    // And the listener is closed afterwards.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
