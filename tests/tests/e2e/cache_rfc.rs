//! The response cache against the parts of RFC 9111 and its companions a
//! shared cache must honour, one test per behaviour, each named after its
//! section. The upstream counts its requests and answers with whatever
//! status and headers the request asks for (`x-reply-status`,
//! `x-reply: name=value|name=value`), so each test states its response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weir_tests::{client, respond, TestProxy, Upstream};

struct Origin {
    upstream: Upstream,
    seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>>,
}

impl Origin {
    async fn start() -> Origin {
        let seen: Arc<Mutex<Vec<(String, http::HeaderMap)>>> = Arc::default();
        let log = seen.clone();
        let upstream = Upstream::serve(move |req| {
            let log = log.clone();
            async move {
                let target = req.uri().path_and_query().unwrap().to_string();
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push((format!("{} {target}", req.method()), req.headers().clone()));
                    log.len()
                };
                let status = req
                    .headers()
                    .get("x-reply-status")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(200);
                let mut response = respond(status, format!("body {n}"));
                if let Some(reply) = req.headers().get("x-reply").and_then(|v| v.to_str().ok()) {
                    for pair in reply.split('|').filter(|p| !p.is_empty()) {
                        let (name, value) = pair.split_once('=').unwrap();
                        response.headers_mut().append(
                            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                            value.parse().unwrap(),
                        );
                    }
                }
                response
            }
        })
        .await;
        Origin { upstream, seen }
    }

    /// How many requests reached the origin for `method target`.
    fn count(&self, request: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(seen, _)| seen == request)
            .count()
    }

    fn last_headers(&self) -> http::HeaderMap {
        self.seen.lock().unwrap().last().unwrap().1.clone()
    }

    async fn proxy(&self, cache: &str) -> TestProxy {
        TestProxy::start(&format!(
            "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 1048576\n{cache}\n",
            self.upstream.toml("up")
        ))
        .await
    }
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn send(proxy: &TestProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = client().request(method.parse().unwrap(), proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: response.text().await.unwrap(),
    }
}

async fn get(proxy: &TestProxy, path: &str, reply: &str) -> Reply {
    send(proxy, "GET", path, &[("x-reply", reply)]).await
}

fn cache_status(reply: &Reply) -> &str {
    reply.headers.get("cache-status").map_or("", String::as_str)
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_4_4_a_successful_unsafe_request_invalidates_the_uri_and_its_locations() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let fresh = "cache-control=max-age=600";
    for path in ["/doc", "/other", "/third"] {
        get(&proxy, path, fresh).await;
        assert!(cache_status(&get(&proxy, path, fresh).await).starts_with("weir; hit"));
    }
    // A POST to /doc naming /other (relative) and /third (same origin,
    // absolute) in Location and Content-Location.
    let base = proxy.url("");
    let reply = format!(
        "location=/other|content-location={}third",
        base.trim_end_matches('/').to_owned() + "/"
    );
    let post = send(&proxy, "POST", "/doc", &[("x-reply", &reply)]).await;
    assert_eq!(post.status, 200);
    for path in ["/doc", "/other", "/third"] {
        let again = get(&proxy, path, fresh).await;
        assert!(
            cache_status(&again).contains("fwd=miss"),
            "{path} was not invalidated: {}",
            cache_status(&again)
        );
    }
    // A failed unsafe request invalidates nothing.
    get(&proxy, "/doc", fresh).await;
    send(&proxy, "DELETE", "/doc", &[("x-reply-status", "500")]).await;
    assert!(cache_status(&get(&proxy, "/doc", fresh).await).starts_with("weir; hit"));
    // Methods whose safety is unknown count as unsafe.
    send(&proxy, "PURGEIT", "/doc", &[]).await;
    assert!(cache_status(&get(&proxy, "/doc", fresh).await).contains("fwd=miss"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_5_2_directive_names_are_case_insensitive() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    get(&proxy, "/upper", "cache-control=MAX-AGE=600").await;
    assert!(
        cache_status(&get(&proxy, "/upper", "cache-control=MAX-AGE=600").await)
            .starts_with("weir; hit")
    );
    get(&proxy, "/no-store", "cache-control=max-age=600, NO-STORE").await;
    get(&proxy, "/no-store", "cache-control=max-age=600, NO-STORE").await;
    assert_eq!(origin.count("GET /no-store"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9213_targeted_fields_take_precedence_and_are_not_forwarded() {
    let origin = Origin::start().await;
    let proxy = origin
        .proxy("targeted_field = \"acme-cache-control\"")
        .await;
    // Cache-Control says no-store; CDN-Cache-Control lets this cache store.
    let cdn = "cache-control=no-store|cdn-cache-control=max-age=600";
    let first = get(&proxy, "/cdn", cdn).await;
    assert!(!first.headers.contains_key("cdn-cache-control"));
    assert_eq!(first.headers["cache-control"], "no-store");
    let second = get(&proxy, "/cdn", cdn).await;
    assert!(cache_status(&second).starts_with("weir; hit"));
    assert_eq!(
        second.headers["cache-control"], "no-store",
        "clients see the origin's"
    );
    assert!(!second.headers.contains_key("cdn-cache-control"));
    // The operator's own field wins over CDN-Cache-Control.
    let own = "cdn-cache-control=max-age=600|acme-cache-control=no-store";
    get(&proxy, "/own", own).await;
    let again = get(&proxy, "/own", own).await;
    assert_eq!(origin.count("GET /own"), 2);
    assert!(!again.headers.contains_key("acme-cache-control"));
    // private inside a targeted field is honoured.
    let private = "cache-control=max-age=600|cdn-cache-control=private";
    get(&proxy, "/private", private).await;
    get(&proxy, "/private", private).await;
    assert_eq!(origin.count("GET /private"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_3_3_a_partial_response_is_not_stored_as_the_whole() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let partial = "cache-control=max-age=600|content-range=bytes 0-5/100";
    let reply = send(
        &proxy,
        "GET",
        "/partial",
        &[("x-reply", partial), ("x-reply-status", "206")],
    )
    .await;
    assert_eq!(reply.status, 206);
    get(&proxy, "/partial", "cache-control=max-age=600").await;
    assert_eq!(origin.count("GET /partial"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_4_3_2_a_client_conditional_is_answered_from_a_fresh_entry() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let reply = "cache-control=max-age=600|etag=\"v1\"|last-modified=Sun, 06 Nov 1994 08:49:37 GMT";
    // On a miss the conditional is not forwarded: the full response is
    // stored, and the client gets its 304.
    let first = send(
        &proxy,
        "GET",
        "/c",
        &[("x-reply", reply), ("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(first.status, 304);
    assert!(first.body.is_empty());
    assert!(!origin.last_headers().contains_key("if-none-match"));
    // The stored entry is the 200, for a client without a conditional.
    let plain = get(&proxy, "/c", reply).await;
    assert_eq!((plain.status, plain.body.as_str()), (200, "body 1"));
    assert!(cache_status(&plain).starts_with("weir; hit"));
    // A hit with a matching validator: 304, no body, its validators.
    let matching = send(
        &proxy,
        "GET",
        "/c",
        &[("x-reply", reply), ("if-none-match", "W/\"v0\", W/\"v1\"")],
    )
    .await;
    assert_eq!(matching.status, 304);
    assert_eq!(matching.headers["etag"], "\"v1\"");
    assert!(
        !matching.headers.contains_key("content-length")
            || matching.headers["content-length"] == "0"
    );
    let since = send(
        &proxy,
        "GET",
        "/c",
        &[
            ("x-reply", reply),
            ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ],
    )
    .await;
    assert_eq!(since.status, 304);
    // A validator that does not match gets the stored 200.
    let other = send(
        &proxy,
        "GET",
        "/c",
        &[("x-reply", reply), ("if-none-match", "\"v2\"")],
    )
    .await;
    assert_eq!((other.status, other.body.as_str()), (200, "body 1"));
    assert_eq!(origin.count("GET /c"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_5_2_2_4_qualified_no_cache_and_private_fields_are_never_served_from_cache() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let reply = "cache-control=max-age=600, no-cache=\"x-secret\", private=\"x-user\"|x-secret=s3|x-user=alice|x-kept=1";
    let first = get(&proxy, "/fields", reply).await;
    assert_eq!(
        first.headers["x-secret"], "s3",
        "the origin's own answer is whole"
    );
    let hit = get(&proxy, "/fields", reply).await;
    assert!(
        cache_status(&hit).starts_with("weir; hit"),
        "{}",
        cache_status(&hit)
    );
    assert!(!hit.headers.contains_key("x-secret"));
    assert!(!hit.headers.contains_key("x-user"));
    assert_eq!(hit.headers["x-kept"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_4_3_4_a_304_refreshes_the_stored_date() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let old = "cache-control=max-age=1|etag=\"v1\"|date=Sun, 06 Nov 1994 08:49:37 GMT";
    get(&proxy, "/dated", old).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Stale: revalidated, and the 304's Date replaces the stored one.
    let fresh_date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let refreshed = send(
        &proxy,
        "GET",
        "/dated",
        &[
            (
                "x-reply",
                &format!("cache-control=max-age=600|etag=\"v1\"|date={fresh_date}"),
            ),
            ("x-reply-status", "304"),
        ],
    )
    .await;
    assert_eq!(refreshed.status, 200);
    assert!(
        cache_status(&refreshed).contains("fwd-status=304"),
        "{}",
        cache_status(&refreshed)
    );
    let hit = get(&proxy, "/dated", old).await;
    assert!(cache_status(&hit).starts_with("weir; hit"));
    assert_eq!(hit.headers["date"], fresh_date);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9110_5_6_7_an_expires_with_extra_spaces_is_understood() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let reply = "expires=Thu,  01 Dec  2094 16:00:00 GMT";
    get(&proxy, "/spaced", reply).await;
    let again = get(&proxy, "/spaced", reply).await;
    assert!(
        cache_status(&again).starts_with("weir; hit"),
        "{}",
        cache_status(&again)
    );
    assert_eq!(origin.count("GET /spaced"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc5861_3_stale_while_revalidate_serves_stale_and_revalidates_once_in_the_background() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let reply = "cache-control=max-age=1, stale-while-revalidate=60|etag=\"v1\"";
    assert_eq!(get(&proxy, "/swr", reply).await.body, "body 1");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // From here on the origin answers with a long max-age, so the
    // revalidated copy cannot go stale again (and be revalidated a second
    // time) however slowly a loaded machine runs the rest of the test.
    let reply = "cache-control=max-age=60, stale-while-revalidate=60|etag=\"v1\"";
    // Several stale requests at once: each served the stale copy at once,
    // one revalidation between them.
    let mut stale = Vec::new();
    for _ in 0..5 {
        let url = proxy.url("/swr");
        stale.push(tokio::spawn(async move {
            let response = client()
                .get(url)
                .header("x-reply", reply)
                .send()
                .await
                .unwrap();
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            (status, response.text().await.unwrap())
        }));
    }
    let mut served_stale = 0;
    for request in stale {
        let (status, body) = request.await.unwrap();
        // Stale, or (once the revalidation has landed) the fresh copy.
        match body.as_str() {
            "body 1" => {
                assert!(status.contains("detail=stale-while-revalidate"), "{status}");
                served_stale += 1;
            }
            "body 2" => assert!(status.starts_with("weir; hit"), "{status}"),
            other => panic!("{other} ({status})"),
        }
    }
    assert!(served_stale >= 1);
    // The background revalidation lands; then it is a plain hit.
    let mut fresh = None;
    for _ in 0..100 {
        let reply = get(&proxy, "/swr", reply).await;
        if cache_status(&reply).starts_with("weir; hit; ttl=") {
            fresh = Some(reply);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let fresh = fresh.expect("the entry was never revalidated");
    assert_eq!(fresh.body, "body 2");
    assert_eq!(origin.count("GET /swr"), 2);
    let revalidation = origin.seen.lock().unwrap()[1].1.clone();
    assert_eq!(revalidation["if-none-match"], "\"v1\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc5861_4_stale_if_error_serves_stale_on_a_5xx_and_when_the_upstream_is_gone() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let reply = "cache-control=max-age=1, stale-if-error=60";
    assert_eq!(get(&proxy, "/sie", reply).await.body, "body 1");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let failing = send(
        &proxy,
        "GET",
        "/sie",
        &[("x-reply", reply), ("x-reply-status", "503")],
    )
    .await;
    assert_eq!((failing.status, failing.body.as_str()), (200, "body 1"));
    assert!(
        cache_status(&failing).contains("fwd-status=503; detail=stale-if-error"),
        "{}",
        cache_status(&failing)
    );
    // Without the directive a 5xx goes through to the client.
    get(&proxy, "/plain", "cache-control=max-age=1").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let plain = send(&proxy, "GET", "/plain", &[("x-reply-status", "503")]).await;
    assert_eq!(plain.status, 503);
    // The upstream gone entirely: still the stale copy.
    let Origin { upstream, .. } = origin;
    drop(upstream);
    let gone = get(&proxy, "/sie", reply).await;
    assert_eq!((gone.status, gone.body.as_str()), (200, "body 1"));
    assert!(
        cache_status(&gone).contains("detail=stale-if-error"),
        "{}",
        cache_status(&gone)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc5861_4_the_operator_default_applies_to_responses_without_stale_if_error() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("serve_stale_on_error_seconds = 60").await;
    get(&proxy, "/default", "cache-control=max-age=1").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let failing = send(&proxy, "GET", "/default", &[("x-reply-status", "502")]).await;
    assert_eq!((failing.status, failing.body.as_str()), (200, "body 1"));
    assert!(cache_status(&failing).contains("detail=stale-if-error"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9110_14_ranges_are_answered_from_a_stored_full_response() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    let reply = "cache-control=max-age=600|etag=\"r1\"|content-type=text/plain";
    assert_eq!(get(&proxy, "/r", reply).await.body, "body 1");
    let ranged = |range: &'static str| {
        let proxy = &proxy;
        async move { send(proxy, "GET", "/r", &[("x-reply", reply), ("range", range)]).await }
    };
    let one = ranged("bytes=0-3").await;
    assert_eq!((one.status, one.body.as_str()), (206, "body"));
    assert_eq!(one.headers["content-range"], "bytes 0-3/6");
    let suffix = ranged("bytes=-1").await;
    assert_eq!((suffix.status, suffix.body.as_str()), (206, "1"));
    let unsatisfiable = ranged("bytes=100-").await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.headers["content-range"], "bytes */6");
    let several = ranged("bytes=0-0, 5-5").await;
    assert_eq!(several.status, 206);
    assert!(several.headers["content-type"].starts_with("multipart/byteranges; boundary="));
    assert!(
        several.body.contains("Content-Range: bytes 0-0/6\r\n\r\nb"),
        "{}",
        several.body
    );
    assert!(
        several.body.contains("Content-Range: bytes 5-5/6\r\n\r\n1"),
        "{}",
        several.body
    );
    let invalid = ranged("bytes=4-1").await;
    assert_eq!((invalid.status, invalid.body.as_str()), (200, "body 1"));
    // If-Range with another validator: the whole response.
    let stale_validator = send(
        &proxy,
        "GET",
        "/r",
        &[
            ("x-reply", reply),
            ("range", "bytes=0-3"),
            ("if-range", "\"r0\""),
        ],
    )
    .await;
    assert_eq!(
        (stale_validator.status, stale_validator.body.as_str()),
        (200, "body 1")
    );
    assert_eq!(origin.count("GET /r"), 1, "every range came from the cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_5_1_an_age_with_trailing_garbage_still_ages_the_response() {
    let origin = Origin::start().await;
    let proxy = origin.proxy("").await;
    // 7200 seconds old already, fresh for 3600: stale on arrival, so not
    // served from the cache.
    let reply = "cache-control=max-age=3600|age=7200abc";
    get(&proxy, "/aged", reply).await;
    get(&proxy, "/aged", reply).await;
    assert_eq!(origin.count("GET /aged"), 2);
    // Within its lifetime it is a hit, its Age counted on.
    let young = "cache-control=max-age=3600|age=60xyz";
    get(&proxy, "/young", young).await;
    let hit = get(&proxy, "/young", young).await;
    assert!(cache_status(&hit).starts_with("weir; hit"));
    assert!(hit.headers["age"].parse::<u64>().unwrap() >= 60);
}

/// An upstream that sends a 103 (with caching headers of its own) before
/// its final answer, on a raw socket; counts connections.
async fn early_hints_upstream() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\
                          Cache-Control: max-age=600\r\n\r\n\
                          HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: no-store\r\n\
                          Connection: close\r\n\r\nfinal",
                    )
                    .await;
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc9111_3_an_interim_response_is_never_stored() {
    let (addr, count) = early_hints_upstream().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n[upstreams.up]\nendpoints = [\"{addr}\"]\n[cache]\ncapacity_bytes = 1048576\n"
    ))
    .await;
    for _ in 0..2 {
        let response = client().get(proxy.url("/hinted")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "final");
    }
    // The 103's max-age stored nothing: the final answer said no-store.
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
}
