//! Criterion benchmarks of the host's own per-request work around the
//! plugins, without sockets:
//!
//! * `cache hit`: `ResponseCache::forward` for a request the cache answers
//!   (on a current-thread runtime) — the bypass check, the policy request,
//!   the primary key, the lookup (asserted to be a fresh hit) and the
//!   `Cache-Status` header. The entry is stored beforehand through the same
//!   call, as a miss whose fill task reads the JSON `bench/run.py`'s origin
//!   serves.
//! * `route match`: `route::Router::find` over 1,000 routes (10 hosts × 100
//!   prefixes) for a request matching one near the end, and for one that
//!   matches none.
//! * `headers to WIT`: `convert::headers_to_wit` on a 10-header browser
//!   request, as every plugin call pays for the request head (and each
//!   response-phase call again for the response head).
//! * `header ops from WIT`: a plugin's answer coming back — `check_header_ops`
//!   then `apply_header_ops` onto a copy of the request headers (set, append,
//!   two removes), as the chain applies a `continue` with header changes.
//! * `header list from WIT`: `check_header_list` on a local response's
//!   headers, as the chain builds a plugin's `respond` answer (a 401 here).
//! * `plugin counter-add`: a plugin's `counter-add` with two labels into a
//!   series it already has (checks, sort, shared-lock lookup, saturating
//!   add), the host side of the `metrics` import; the name and labels are
//!   built outside the timing, as wasmtime hands them over owned.
//! * `record a request`: the route's `weir_requests_total` class counter
//!   and its `weir_request_duration_seconds` observation, as every request
//!   pays.
//! * `metrics render`: a scrape of one plugin at the default cap (1000
//!   counter series), which runs while plugins keep recording.
//!
//! Run: `cargo bench -p weir-tests --bench hot_paths`

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{request, response};
use http_body_util::BodyExt;
use weir::cache::{Directives, Facts, ResponseCache};
use weir::config::CacheSettings;
use weir::metrics::Metrics;
use weir::plugin::bindings::types::{self, HeaderOp};
use weir::plugin::convert;

const AUTHORITY: &str = "bench.local";
const CACHED_BODY: &str = r#"{"cached":true}"#;
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// A browser-like API request: ten headers, one of them a bearer token.
fn browser_request(path: &str) -> request::Parts {
    let (head, ()) = http::Request::builder()
        .uri(path)
        .header("host", AUTHORITY)
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("accept", "application/json, text/plain, */*")
        .header("accept-language", "en-GB,en;q=0.9")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header(
            "authorization",
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJiZW5jaCIsInRlbmFudCI6ImFjbWUifQ.c2lnbmF0dXJlLW9mLXRoZS1iZW5jaC10b2tlbg",
        )
        .header("cookie", "session=8f14e45fceea167a5a36dedd4bea2543; theme=dark")
        .header("referer", "https://app.example.com/dashboard")
        .header("x-request-id", "01J9Z3Q4V8R6N2K7M5T1W0XBCD")
        .header("x-forwarded-for", "203.0.113.7")
        .body(())
        .expect("request")
        .into_parts();
    head
}

/// The cache as `[cache]` configures it by default (run.py sets only the
/// capacity, to this same 64 MiB).
fn settings() -> CacheSettings {
    CacheSettings {
        capacity_bytes: 64 << 20,
        max_entry_bytes: 8 << 20,
        max_ttl: Duration::from_secs(24 * 3600),
        stale_keep: Duration::from_secs(600),
        allow_shared_authenticated: false,
        store_set_cookie: false,
        targeted_field: HeaderName::from_static("weir-cache-control"),
        serve_stale_on_error: Duration::ZERO,
    }
}

/// The request the cache answers: run.py's `/cache.json`, without
/// credentials (a shared cache does not store answers to `Authorization`).
fn cacheable_request() -> request::Parts {
    let mut head = browser_request("/cache.json");
    head.headers.remove(http::header::AUTHORIZATION);
    head
}

/// What the cache knows of the benchmark's request beyond its head.
fn facts() -> Facts<'static> {
    Facts {
        scheme: "http",
        authority: AUTHORITY,
        credentialed: false,
        directives: Directives::default(),
    }
}

/// The bench never serves stale: a background revalidation that fails.
fn no_background() -> weir::cache::Revalidator {
    Arc::new(|_| Box::pin(async { None }))
}

/// The origin's answer to the cacheable request.
fn origin_answer() -> (response::Parts, weir::body::Body) {
    let (parts, ()) = http::Response::builder()
        .header("server", "nginx")
        .header("content-type", "application/json")
        .header("content-length", CACHED_BODY.len().to_string())
        .header("cache-control", "public, max-age=3600")
        .body(())
        .expect("response")
        .into_parts();
    (parts, weir::body::full(CACHED_BODY))
}

/// Store the entry through the path the proxy uses: a miss forwarded, the
/// response read into the cache by its fill task.
fn store(rt: &tokio::runtime::Runtime, cache: &Arc<ResponseCache>, head: &request::Parts) {
    let (parts, body) = rt
        .block_on(
            cache.forward(&facts(), head.clone(), no_background(), |_, _| async {
                Ok::<_, Infallible>(origin_answer())
            }),
        )
        .expect("forwarded");
    assert_eq!(parts.headers[CACHE_STATUS], "weir; fwd=miss; stored");
    let streamed = rt
        .block_on(body.collect())
        .expect("body streams")
        .to_bytes();
    assert_eq!(streamed, CACHED_BODY);
    // The fill task stores it: wait until a lookup hits.
    for _ in 0..1000 {
        if cache_hit(rt, cache, head).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the entry was never stored");
}

/// `ResponseCache::forward` for a request the cache answers: the bypass
/// check, the policy request, the primary key, the lookup and the
/// `Cache-Status` header. `None` if it was not a hit.
fn cache_hit(
    rt: &tokio::runtime::Runtime,
    cache: &Arc<ResponseCache>,
    head: &request::Parts,
) -> Option<(response::Parts, weir::body::Body)> {
    let mut forwarded = false;
    let answer = rt
        .block_on(
            cache.forward(&facts(), head.clone(), no_background(), |_, _| {
                forwarded = true;
                async { Ok::<_, Infallible>(origin_answer()) }
            }),
        )
        .expect("answered");
    (!forwarded).then_some(answer)
}

/// What a plugin such as auth hands back with `continue`: identity headers
/// set, a chain marker appended, credentials stripped.
fn header_ops() -> Vec<HeaderOp> {
    vec![
        HeaderOp::Set(("x-user".into(), "bench".into())),
        HeaderOp::Append(("x-weir-chain".into(), "auth".into())),
        HeaderOp::Remove("authorization".into()),
        HeaderOp::Remove("cookie".into()),
    ]
}

/// Check a plugin's header operations, then apply them to a copy of the
/// request headers (a rejected answer must change nothing).
fn apply_answer(headers: &HeaderMap, ops: Vec<HeaderOp>) -> HeaderMap {
    let ops = convert::check_header_ops(ops).expect("valid ops");
    let mut applied = headers.clone();
    convert::apply_header_ops(&mut applied, ops).expect("ops apply");
    applied
}

/// A plugin's local `401` answer.
fn local_response_headers() -> types::Headers {
    [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        (
            "www-authenticate",
            "Bearer realm=\"weir\", error=\"invalid_token\"",
        ),
        ("x-weir-denied-by", "auth"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect()
}

fn bench_cache(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cache = Arc::new(ResponseCache::new(settings()));
    let head = cacheable_request();
    store(&rt, &cache, &head);
    let (parts, body) = cache_hit(&rt, &cache, &head).expect("a hit");
    assert!(parts.headers[CACHE_STATUS]
        .to_str()
        .is_ok_and(|status| status.starts_with("weir; hit")));
    let bytes = rt.block_on(body.collect()).expect("body").to_bytes();
    assert_eq!(bytes, CACHED_BODY);

    c.bench_function(
        "cache hit (key, policy request, lookup, Cache-Status)",
        |b| b.iter(|| cache_hit(&rt, &cache, &head)),
    );
}

/// 1,000 routes: 10 hosts with 100 path prefixes each, matched for a
/// request near the end of the table (host 9, prefix 73), as the proxy
/// does for every request once `[[routes]]` is configured.
fn bench_routes(c: &mut Criterion) {
    use weir::route::{HostMatch, Match, PathMatch, Request, Router};
    let mut routes = Vec::new();
    for host in 0..10 {
        for prefix in 0..100 {
            let matcher = Match {
                hosts: vec![HostMatch::parse(&format!("api{host}.example.com")).expect("host")],
                path: PathMatch::prefix(&format!("/svc{prefix}")).expect("prefix"),
                ..Match::default()
            };
            routes.push((matcher, host * 100 + prefix));
        }
    }
    let router = Router::new(routes);
    let headers = browser_request("/").headers;
    let method = http::Method::GET;
    let request = Request {
        authority: "api9.example.com",
        path: "/svc73/items/42",
        query: Some("page=2"),
        method: &method,
        headers: &headers,
    };
    assert_eq!(router.find(&request), Some(&973));
    let miss = Request {
        path: "/nothing/here",
        ..request
    };
    assert_eq!(router.find(&miss), None);
    c.bench_function("route match, 1000 routes (host, then prefix)", |b| {
        b.iter(|| router.find(std::hint::black_box(&request)))
    });
    c.bench_function("route match, 1000 routes, no route matches", |b| {
        b.iter(|| router.find(std::hint::black_box(&miss)))
    });
}

fn bench_headers(c: &mut Criterion) {
    let headers = browser_request("/api/items?page=2").headers;
    assert_eq!(headers.len(), 10);

    c.bench_function("headers to WIT, 10 request headers", |b| {
        b.iter(|| convert::headers_to_wit(&headers))
    });

    let applied = apply_answer(&headers, header_ops());
    assert_eq!(
        applied.get("x-user"),
        Some(&HeaderValue::from_static("bench"))
    );
    assert!(!applied.contains_key("authorization"));

    c.bench_function("header ops from WIT, check + apply 4 ops", |b| {
        b.iter_batched(
            header_ops,
            |ops| apply_answer(&headers, ops),
            BatchSize::SmallInput,
        )
    });

    c.bench_function("header list from WIT, local response of 4 headers", |b| {
        b.iter_batched(
            local_response_headers,
            |list| convert::check_header_list(list).expect("valid headers"),
            BatchSize::SmallInput,
        )
    });
}

/// A plugin's labels, owned as they arrive from the guest.
fn plugin_labels(route: &str) -> Vec<(String, String)> {
    vec![
        ("route".to_owned(), route.to_owned()),
        ("result".to_owned(), "allowed".to_owned()),
    ]
}

fn bench_metrics(c: &mut Criterion) {
    let metrics = Metrics::default();
    // What the proxy records for every request: its route's status-class
    // counter and its latency histogram, through handles the route holds.
    let requests = metrics.route_requests(Some("api"));
    let duration = metrics.host().request_duration(Some("api"));
    c.bench_function(
        "record a request (route counter + latency histogram)",
        |b| {
            b.iter(|| {
                Metrics::request_served(&requests, std::hint::black_box(200));
                duration.observe(std::hint::black_box(0.0042));
            })
        },
    );

    for i in 0..1000 {
        let route = format!("/r/{i}");
        metrics.plugin_counter_add("bench", "hits_total".into(), plugin_labels(&route), 1);
    }
    let scrape = metrics.render();
    assert_eq!(scrape.matches("weir_custom_hits_total{").count(), 1000);

    c.bench_function("plugin counter-add, existing series, 2 labels", |b| {
        b.iter_batched(
            || ("hits_total".to_owned(), plugin_labels("/r/7")),
            |(name, labels)| metrics.plugin_counter_add("bench", name, labels, 1),
            BatchSize::SmallInput,
        )
    });

    c.bench_function("metrics render, 1000 plugin series", |b| {
        b.iter(|| metrics.render())
    });
}

criterion_group!(
    benches,
    bench_cache,
    bench_routes,
    bench_headers,
    bench_metrics
);
criterion_main!(benches);
