//! Hostile clients and broken upstreams: each gets a clear status or an
//! aborted connection, never a truncated success, and leaves no tasks
//! behind. Raw TCP where a client library would refuse to misbehave.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_tests::{client, raw_exchange, TestProxy, Upstream};

fn with_upstream(upstream: &str, extra: &str) -> String {
    format!("default_upstream = \"up\"\n[upstreams.up]\nendpoints = [\"{upstream}\"]\nretries = 0\n{extra}\n")
}

/// Live tasks on this test's runtime.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Wait (bounded) until the task count is back to `baseline`.
async fn settles_to(baseline: usize) -> bool {
    for _ in 0..100 {
        if alive_tasks() <= baseline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// An upstream speaking raw bytes: writes `head` after reading the request
/// head, then either closes (`hold` = false) or holds the socket open.
async fn raw_upstream(head: &'static [u8], hold: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(head).await;
                if hold {
                    // Stall, until the proxy gives up and closes its side:
                    // this task ending proves it did not leak the connection.
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
                // Dropping the stream closes the connection.
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_reset_mid_body_aborts_the_client_connection() {
    let upstream =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly a hundred bytes of a thousand........................................", false)
            .await;
    let proxy = TestProxy::start(&with_upstream(&upstream.to_string(), "")).await;
    let baseline = alive_tasks();
    // The proxy may have flushed the head before the body failed, or not
    // (the failure can be known before the first write): either way the
    // client must see a failure, never a truncated success.
    match client().get(proxy.url("/")).send().await {
        Ok(response) => {
            assert_eq!(response.status(), 200);
            assert!(
                response.bytes().await.is_err(),
                "a truncated body was delivered as a success"
            );
        }
        Err(err) => assert!(!err.is_status(), "unexpected error: {err}"),
    }
    assert!(
        settles_to(baseline).await,
        "tasks leaked: {} > {baseline}",
        alive_tasks()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_upstream_body_hits_the_idle_timeout() {
    let upstream = raw_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nfirst bytes, then nothing",
        true,
    )
    .await;
    let proxy = TestProxy::start(&with_upstream(
        &upstream.to_string(),
        "idle_timeout_ms = 300",
    ))
    .await;
    let baseline = alive_tasks();
    let started = Instant::now();
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert!(response.bytes().await.is_err());
    // A generous bound: the point is that it ends, not how fast.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        settles_to(baseline).await,
        "tasks leaked: {} > {baseline}",
        alive_tasks()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_upstream_response_is_502() {
    let upstream = raw_upstream(b"THIS IS NOT HTTP\r\n\r\n", false).await;
    let proxy = TestProxy::start(&with_upstream(&upstream.to_string(), "")).await;
    let baseline = alive_tasks();
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.text().await.unwrap(),
        "502 Bad Gateway: upstream sent an invalid response\n"
    );
    assert!(
        settles_to(baseline).await,
        "tasks leaked: {} > {baseline}",
        alive_tasks()
    );
}

/// A chunked body (no Content-Length to refuse up front) that grows past
/// the limit is cut off: the client gets a 413, or (when the proxy's
/// answer races the rest of the upload and the connection is closed under
/// the client's feet) an error, but never the upstream's 200, and the
/// upstream never receives more than the limit.
#[tokio::test(flavor = "multi_thread")]
async fn streamed_body_growing_past_the_limit_is_413() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let upstream = Upstream::serve(move |req| {
        let seen = seen.clone();
        async move {
            use http_body_util::BodyExt;
            let mut body = req.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    seen.fetch_add(data.len(), Ordering::SeqCst);
                }
            }
            weir_tests::respond(200, "took it all")
        }
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "{}\n[limits]\nmax_request_body_bytes = 65536\n",
        with_upstream(&upstream.addr.to_string(), "")
    ))
    .await;
    let chunks = futures_util::stream::iter(
        (0..16).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 16 * 1024]))),
    );
    let sent = client()
        .post(proxy.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match sent {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(err) => assert!(err.is_request() || err.is_body(), "{err}"),
    }
    assert!(
        received.load(Ordering::SeqCst) <= 65536,
        "the upstream got {} bytes",
        received.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_off_by_the_head_read_timeout() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "{}\n[limits]\nheader_read_timeout_ms = 300\n",
        with_upstream(&upstream.addr.to_string(), "")
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    // Keep dribbling one header byte at a time; the proxy must still hang up.
    loop {
        let mut buf = [0u8; 1024];
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if stream.write_all(b"X").await.is_err() {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "slowloris kept the connection"
        );
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_are_refused() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&with_upstream(&upstream.addr.to_string(), "")).await;
    // Content-Length and Transfer-Encoding together: hyper decodes by
    // Transfer-Encoding and drops Content-Length (RFC 9112 §6.3), so what
    // goes upstream is re-framed consistently: the upstream must see the
    // chunked body's length (0), never the smuggled Content-Length.
    let answer = raw_exchange(
        proxy.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    if !answer.starts_with("HTTP/1.1 400") {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        let echo = weir_tests::echo_json(body);
        assert_eq!(echo["body_bytes"], 0);
        assert!(
            weir_tests::echoed_header(&echo, "content-length") != ["4"],
            "{answer}"
        );
        assert!(!answer.contains("/smuggled"), "{answer}");
    }
    for request in [
        // Duplicate, conflicting Content-Length.
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"[..],
        // obs-fold (a header continued on the next line).
        &b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"[..],
        // A Transfer-Encoding that is not chunked.
        &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"[..],
    ] {
        let answer = raw_exchange(proxy.addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{} → {answer}",
            String::from_utf8_lossy(request)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_get_503() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "{}\n[limits]\nmax_connections = 2\n",
        with_upstream(&upstream.addr.to_string(), "")
    ))
    .await;
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(proxy.addr).await.unwrap(),
        TcpStream::connect(proxy.addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_settings_are_advertised_and_rapid_reset_closes_the_connection() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "{}\n[limits]\nh2_max_concurrent_streams = 64\nh2_max_pending_reset_streams = 10\n",
        with_upstream(&upstream.addr.to_string(), "")
    ))
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut h2 = h2.clone().ready().await.unwrap();
    // Open and immediately reset streams, as the rapid-reset attack does.
    let mut refused = false;
    for _ in 0..2000 {
        let request = http::Request::get(format!("http://{}/", proxy.addr))
            .body(())
            .unwrap();
        match h2.send_request(request, false) {
            Ok((_response, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), h2.clone().ready()).await {
            Ok(Ok(ready)) => h2 = ready,
            _ => {
                refused = true;
                break;
            }
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        refused || matches!(ended, Ok(Ok(Err(_)))),
        "the connection survived 2000 rapid resets"
    );
    // Everyone else is still served.
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // The stream limit is what the proxy advertises.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let h2 = h2.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/", proxy.addr))
        .body(())
        .unwrap();
    let (response, _) = h2.clone().send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(h2.current_max_send_streams(), 64);
}
