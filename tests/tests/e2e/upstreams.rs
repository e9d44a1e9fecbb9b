//! Upstream pools: load balancing, passive and active health, retries
//! where safe, and `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_tests::{client, respond, TestProxy, Upstream};

/// An upstream that counts requests and answers `name`.
async fn named(name: &'static str, delay: Duration) -> (Upstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let upstream = Upstream::serve(move |req| {
        let health = req.uri().path() == "/health";
        if !health {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            if !health {
                tokio::time::sleep(delay).await;
            }
            respond(200, name)
        }
    })
    .await;
    (upstream, count)
}

fn pool(endpoints: &[&Upstream], extra: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    format!(
        "default_upstream = \"pool\"\n[upstreams.pool]\nendpoints = [{}]\n{extra}\n",
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_requests_evenly() {
    let (a, a_count) = named("a", Duration::ZERO).await;
    let (b, b_count) = named("b", Duration::ZERO).await;
    let proxy = TestProxy::start(&pool(&[&a, &b], "")).await;
    for _ in 0..10 {
        let response = client().get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(a_count.load(Ordering::SeqCst), 5);
    assert_eq!(b_count.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn least_outstanding_avoids_the_busy_endpoint() {
    let (slow, slow_count) = named("slow", Duration::from_millis(800)).await;
    let (fast, fast_count) = named("fast", Duration::ZERO).await;
    let proxy = TestProxy::start(&pool(&[&slow, &fast], "lb = \"least_outstanding\"")).await;
    let client = client();
    let mut requests = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        let url = proxy.url("/");
        requests.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert!(
        slow_count.load(Ordering::SeqCst) <= 2,
        "slow got {slow_count:?}"
    );
    assert!(
        fast_count.load(Ordering::SeqCst) >= 8,
        "fast got {fast_count:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_endpoint_is_ejected_and_traffic_moves_to_the_other() {
    let (a, _) = named("a", Duration::ZERO).await;
    let (b, b_count) = named("b", Duration::ZERO).await;
    let proxy = TestProxy::start(&pool(&[&a, &b], "max_fails = 2\neject_ms = 60000")).await;
    for _ in 0..4 {
        assert_eq!(
            client().get(proxy.url("/")).send().await.unwrap().status(),
            200
        );
    }
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        let response = client().get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "b");
    }
    let metrics = proxy.metrics();
    assert_eq!(
        metrics.counter("weir_upstream_ejections_total", &[("upstream", "pool")]),
        1
    );
    // Once ejected, the dead endpoint is not tried any more: only the
    // failures before ejection cost a retry.
    let retries = metrics.counter(
        "weir_upstream_retries_total",
        &[("upstream", "pool"), ("reason", "connect")],
    );
    assert!(retries <= 2, "{retries} connect retries");
    assert_eq!(b_count.load(Ordering::SeqCst), 22);
}

/// An upstream answering 503 (with an optional Retry-After) to every
/// request, counting them.
async fn unavailable(retry_after: Option<&'static str>) -> (Upstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let upstream = Upstream::serve(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut response = respond(503, "busy");
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", after.parse().unwrap());
            }
            response
        }
    })
    .await;
    (upstream, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_requests_are_retried_but_a_post_never_is() {
    let (upstream, count) = unavailable(None).await;
    let proxy = TestProxy::start(&pool(&[&upstream], "retries = 2\nmax_fails = 100")).await;
    let response = client()
        .post(proxy.url("/order"))
        .body("one order")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(count.load(Ordering::SeqCst), 1, "a POST was repeated");

    let response = client().get(proxy.url("/page")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.text().await.unwrap(), "busy");
    assert_eq!(count.load(Ordering::SeqCst), 1 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_honoured_or_passed_back_when_too_long() {
    // A short Retry-After is waited for before retrying.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let upstream = Upstream::serve(move |_req| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                let mut response = respond(503, "later");
                response
                    .headers_mut()
                    .insert("retry-after", "1".parse().unwrap());
                response
            } else {
                respond(200, "now")
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&pool(&[&upstream], "max_fails = 100")).await;
    let started = Instant::now();
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A long one goes back to the client untouched, without retrying.
    let (upstream, count) = unavailable(Some("120")).await;
    let proxy = TestProxy::start(&pool(&[&upstream], "max_fails = 100")).await;
    let response = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "120");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn active_health_check_takes_a_failing_endpoint_out() {
    let sick_count = Arc::new(AtomicUsize::new(0));
    let seen = sick_count.clone();
    let sick = Upstream::serve(move |req| {
        let health = req.uri().path() == "/health";
        if !health {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        async move {
            if health {
                respond(500, "sick")
            } else {
                respond(200, "sick")
            }
        }
    })
    .await;
    let (well, _) = named("well", Duration::ZERO).await;
    let proxy = TestProxy::start(&pool(
        &[&sick, &well],
        "[upstreams.pool.health_check]\npath = \"/health\"\ninterval_ms = 50\ntimeout_ms = 500",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..10 {
        let response = client().get(proxy.url("/")).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "well");
    }
    assert_eq!(sick_count.load(Ordering::SeqCst), 0);
}

/// A raw keep-alive upstream that counts the connections it accepts and
/// answers every request on them; with `close_after`, it closes each
/// connection that long after its first answer (an origin's keep-alive
/// timeout expiring while the proxy holds the connection idle).
async fn counting_upstream(close_after: Option<Duration>) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    // Every test request is a small GET: one read is one request.
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    if let Some(after) = close_after {
                        tokio::time::sleep(after).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn single_endpoint(addr: &str) -> String {
    format!("default_upstream = \"up\"\n[upstreams.up]\nendpoints = [\"{addr}\"]\nretries = 0\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (addr, accepted) = counting_upstream(None).await;
    let proxy = TestProxy::start(&single_endpoint(&addr)).await;
    let client = client();
    for _ in 0..20 {
        let response = client.get(proxy.url("/")).send().await.expect("request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.expect("body"), "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "20 sequential requests should share one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connection_closed_by_the_upstream_is_not_reused() {
    let (addr, accepted) = counting_upstream(Some(Duration::from_millis(50))).await;
    let proxy = TestProxy::start(&single_endpoint(&addr)).await;
    let client = client();
    for round in 0..3 {
        let response = client.get(proxy.url("/")).send().await.expect("request");
        assert_eq!(response.status(), 200, "round {round}");
        assert_eq!(response.text().await.expect("body"), "ok");
        // Let the upstream close the connection the proxy now holds idle.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one fresh connection per round"
    );
}

/// An idle connection the upstream closes (its keep-alive timeout) is
/// closed on the proxy's side too, without waiting for a request to find
/// it: it no longer counts as open (nor holds a place under
/// `max_connections_per_endpoint`).
#[tokio::test(flavor = "multi_thread")]
async fn idle_connection_closed_by_the_upstream_is_let_go_without_a_request() {
    // Closed after the sweeper's first look (a second after the answer),
    // so the one before it sees the connection kept.
    let (addr, accepted) = counting_upstream(Some(Duration::from_millis(1500))).await;
    let proxy = TestProxy::start(&format!(
        "{}{}",
        single_endpoint(&addr),
        weir_tests::admin_section()
    ))
    .await;
    let response = client().get(proxy.url("/")).send().await.expect("request");
    assert_eq!(response.text().await.expect("body"), "ok");
    let connections = || async {
        proxy.admin_api("upstreams").await["upstreams"][0]["endpoints"][0]["connections"]
            .as_u64()
            .expect("connections")
    };
    assert_eq!(connections().await, 1, "kept idle");
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connections().await, 0, "closed once the upstream closed it");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A raw upstream that answers each request once its gate lets one
/// through, counting the connections it accepted, those still open (the
/// proxy has not closed them) and the requests it received.
struct GatedUpstream {
    addr: String,
    gate: Arc<tokio::sync::Semaphore>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
}

impl GatedUpstream {
    async fn start() -> GatedUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let upstream = GatedUpstream {
            addr: listener.local_addr().expect("addr").to_string(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            accepted: Arc::default(),
            open: Arc::default(),
            received: Arc::default(),
        };
        let (gate, accepted, open, received) = (
            upstream.gate.clone(),
            upstream.accepted.clone(),
            upstream.open.clone(),
            upstream.received.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (gate, open, received) = (gate.clone(), open.clone(), received.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    // Every test request is a small GET: one read is one request.
                    while let Ok(1..) = stream.read(&mut buf).await {
                        received.fetch_add(1, Ordering::SeqCst);
                        gate.acquire().await.expect("gate").forget();
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        upstream
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// `count` requests through `proxy` at once, all held here until every
    /// one has arrived (each on a connection of its own), then answered.
    async fn burst(&self, proxy: &TestProxy, count: usize) {
        let expected = self.received.load(Ordering::SeqCst) + count;
        let requests: Vec<_> = (0..count)
            .map(|_| {
                let url = proxy.url("/");
                tokio::spawn(async move {
                    let response = client().get(url).send().await.expect("request");
                    (response.status(), response.text().await.expect("body"))
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.received.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.gate.add_permits(count);
        for request in requests {
            let (status, body) = request.await.expect("request task");
            assert_eq!((status.as_u16(), body.as_str()), (200, "ok"));
        }
    }
}

/// Connections beyond `max_idle_per_endpoint` are not closed as a burst
/// hands them back, only once they have stayed idle a while: the next
/// burst reuses them instead of opening as many again, and the surplus
/// closes even when no request follows.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_s_connections_serve_the_next_burst_and_the_surplus_closes_once_idle() {
    let upstream = GatedUpstream::start().await;
    let proxy = TestProxy::start(&format!(
        "{}max_idle_per_endpoint = 1\n",
        single_endpoint(&upstream.addr)
    ))
    .await;
    upstream.burst(&proxy, 4).await;
    assert_eq!(upstream.accepted(), 4, "one connection each");
    upstream.burst(&proxy, 4).await;
    assert_eq!(
        upstream.accepted(),
        4,
        "the second burst reuses the first one's connections"
    );
    assert_eq!(upstream.open(), 4, "the surplus is kept a while");
    // No request comes: the three beyond max_idle close once idle long
    // enough, the one within it stays.
    let deadline = Instant::now() + Duration::from_secs(15);
    while upstream.open() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.open(), 1, "max_idle_per_endpoint kept");
    upstream.burst(&proxy, 1).await;
    assert_eq!(
        upstream.accepted(),
        4,
        "the kept connection serves the next request"
    );
}

/// An upstream whose requests wait for `gate` (one permit per request let
/// through), recording the most it held at once.
async fn gated(gate: Arc<tokio::sync::Semaphore>) -> (Upstream, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let upstream = Upstream::serve(move |_req| {
        let (gate, now, most) = (gate.clone(), now.clone(), most.clone());
        async move {
            let holding = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(holding, Ordering::SeqCst);
            gate.acquire().await.unwrap().forget();
            now.fetch_sub(1, Ordering::SeqCst);
            respond(200, "ok")
        }
    })
    .await;
    (upstream, seen)
}

/// `max_connections_per_endpoint` caps what one endpoint is sent at once:
/// requests beyond it wait for a connection to come back and are then
/// served over it, never over a connection more.
#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_connection_cap_wait_for_a_connection() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (upstream, most) = gated(gate.clone()).await;
    let proxy = TestProxy::start(&pool(
        &[&upstream],
        "max_connections_per_endpoint = 2\nconnect_timeout_ms = 10000\nresponse_timeout_ms = 20000",
    ))
    .await;
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = proxy.url("/");
            tokio::spawn(async move { client().get(url).send().await.unwrap().status() })
        })
        .collect();
    // Let all six reach the proxy, then the upstream answer them one by one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(6);
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(most.load(Ordering::SeqCst), 2, "more than the cap at once");
    assert_eq!(
        proxy.metrics().counter(
            "weir_upstream_connection_limit_total",
            &[("upstream", "pool")]
        ),
        0
    );
}

/// At the cap, a request that no connection frees up for within
/// `connect_timeout_ms` gets a 503 naming the failure class, counted; the
/// endpoint is not ejected for it, and serves once a connection is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_no_connection_frees_up_for_gets_503() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (upstream, _most) = gated(gate.clone()).await;
    let proxy = TestProxy::start(&pool(
        &[&upstream],
        "max_connections_per_endpoint = 1\nconnect_timeout_ms = 200\nretries = 0\nmax_fails = 1",
    ))
    .await;
    let url = proxy.url("/held");
    let held = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.text().await.unwrap(),
        "503 Service Unavailable: upstream connections exhausted\n"
    );
    assert_eq!(
        proxy.metrics().counter(
            "weir_upstream_connection_limit_total",
            &[("upstream", "pool")]
        ),
        1
    );
    // Busy is not broken: with max_fails = 1 a failure would have ejected
    // the endpoint.
    assert_eq!(
        proxy
            .metrics()
            .counter("weir_upstream_ejections_total", &[("upstream", "pool")]),
        0
    );
    gate.add_permits(2);
    assert_eq!(held.await.unwrap(), 200);
    // Served over the connection the first request gave back.
    let served = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(served.status(), 200);
}
