//! Criterion benchmarks of the plugins written in other languages, each with
//! warm (pooled) instances as they are meant to run: the JavaScript `cors`
//! plugin answering a preflight and decorating an actual response, built
//! with QuickJS (the default engine) and with SpiderMonkey, and the
//! Python `security-headers` plugin decorating a response, with its request
//! phase (HSTS on https only) and without (HSTS on every scheme); and, to
//! show what isolating requests costs these guests, on a fresh instance per
//! call. Each iteration includes building the WIT values, the call, and
//! applying the changes — what a request pays. Compare with `plugin_call`
//! (Rust `tagger`).
//!
//! Run: `cargo bench -p weir-tests --bench foreign_plugins`

use criterion::{criterion_group, criterion_main, Criterion};
use weir::plugin::bindings::types;
use weir::plugin::chain::ResponseState;
use weir::plugin::{Exchange, RequestOutcome};
use weir::proxy::Generation;
use weir_tests::{artifacts, config_file};

fn exchange(method: &str, headers: &[(&str, &str)]) -> Exchange {
    let mut builder = http::Request::builder()
        .method(method)
        .uri("/bench/path?q=1")
        .header("host", "bench.local")
        .header("user-agent", "criterion")
        .header("accept", "*/*");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let (head, ()) = builder.body(()).expect("request").into_parts();
    Exchange {
        id: "bench".into(),
        route: None,
        scheme: "https",
        authority: "bench.local".into(),
        head,
        connection: types::ConnectionInfo {
            client_ip: "127.0.0.1".into(),
            client_port: 40000,
            local_ip: "127.0.0.1".into(),
            local_port: 8443,
            http_version: types::HttpVersion::Http11,
            tls: None,
        },
        properties: Vec::new(),
        upstream: None,
        cache: None,
        hops: 0,
        body: None,
        credentialed: false,
        runs: None,
    }
}

fn upstream_response() -> ResponseState {
    let (head, ()) = http::Response::builder()
        .header("content-type", "application/json")
        .header("server", "bench-upstream")
        .body(())
        .expect("response")
        .into_parts();
    ResponseState { head, body: None }
}

/// Load a one-plugin chain: `file` pooled, with `config` as its table.
fn load(
    rt: &tokio::runtime::Runtime,
    file: &str,
    config: &str,
) -> (Generation, weir::Weir, tempfile::TempDir) {
    load_as(rt, file, config, "pooled")
}

/// Load a one-plugin chain: `file` with `instances = strategy`.
fn load_as(
    rt: &tokio::runtime::Runtime,
    file: &str,
    config: &str,
    strategy: &str,
) -> (Generation, weir::Weir, tempfile::TempDir) {
    let body = format!(
        "chain = [\"p\"]\n[upstreams.up]\nendpoints = [\"127.0.0.1:9\"]\n\
         [plugins.p]\nfile = {file:?}\ninstances = {strategy:?}\ntimeout_ms = 1000\n\
         [plugins.p.config]\n{config}\n"
    );
    let (dir, path) = config_file(&body);
    let config = weir::Config::load(&path).expect("config");
    let weir = weir::Weir::new(&config).expect("runtime");
    let generation = rt.block_on(weir.load(config)).expect("plugins load");
    (generation, weir, dir)
}

const CORS_CONFIG: &str = "allowed_origins = [\"https://app.example.com\"]\n\
     allowed_methods = [\"GET\", \"POST\", \"PUT\"]\n\
     allowed_headers = [\"content-type\"]\n\
     exposed_headers = [\"x-total\"]\n\
     allow_credentials = true\nmax_age = 600\n";

const SECURITY_CONFIG: &str = "hsts_include_subdomains = true\n\
     content_security_policy = \"default-src 'self'\"\n\
     remove_headers = [\"server\"]\n";

/// A request through `generation`'s chain, both phases, as the proxy runs
/// it; the response must come back with `expect` set.
async fn both_phases(
    generation: &Generation,
    mut ex: Exchange,
    expect: &str,
) -> (Exchange, ResponseState) {
    let chain = &generation.fallback.chain;
    let outcome = chain.request_phase(&mut ex).await;
    assert!(matches!(outcome, Ok(RequestOutcome::Continue)));
    let mut resp = upstream_response();
    chain
        .response_phase(&ex, 1, &mut resp)
        .await
        .expect("response phase");
    assert!(resp.head.headers.contains_key(expect), "{expect} missing");
    (ex, resp)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let actual = || exchange("GET", &[("origin", "https://app.example.com")]);

    // The same plugin.js on each engine: QuickJS (componentize-qjs, the
    // default) and SpiderMonkey (componentize-js).
    for (engine, file) in [
        ("QuickJS", artifacts::CORS),
        ("SpiderMonkey", artifacts::CORS_SPIDERMONKEY),
    ] {
        let (cors, _weir, _dir) = load(&rt, file, CORS_CONFIG);
        c.bench_function(&format!("cors (JS, {engine}) preflight, pooled"), |b| {
            b.to_async(&rt).iter(|| async {
                let mut ex = exchange(
                    "OPTIONS",
                    &[
                        ("origin", "https://app.example.com"),
                        ("access-control-request-method", "PUT"),
                    ],
                );
                let outcome = cors.fallback.chain.request_phase(&mut ex).await;
                assert!(matches!(outcome, Ok(RequestOutcome::Respond { .. })));
                ex
            })
        });
        c.bench_function(
            &format!("cors (JS, {engine}) actual request, both phases, pooled"),
            |b| {
                b.to_async(&rt)
                    .iter(|| both_phases(&cors, actual(), "access-control-allow-origin"))
            },
        );
        // A new instance for each call: what isolating requests from each
        // other costs a JavaScript plugin today.
        let (cors_fresh, _weir, _dir) = load_as(&rt, file, CORS_CONFIG, "fresh");
        c.bench_function(
            &format!("cors (JS, {engine}) actual request, both phases, fresh"),
            |b| {
                b.to_async(&rt)
                    .iter(|| both_phases(&cors_fresh, actual(), "access-control-allow-origin"))
            },
        );
    }

    // HSTS over https only (the default): the plugin has a request phase
    // that tells its response phase the scheme.
    let hsts = "strict-transport-security";
    let (security, _weir, _dir) = load(&rt, artifacts::SECURITY_HEADERS, SECURITY_CONFIG);
    c.bench_function("security-headers (Python) both phases, pooled", |b| {
        b.to_async(&rt)
            .iter(|| both_phases(&security, exchange("GET", &[]), hsts))
    });
    // HSTS whatever the scheme: no request phase, one call per request.
    let config = format!("{SECURITY_CONFIG}hsts_on_http = true\n");
    let (security, _weir, _dir) = load(&rt, artifacts::SECURITY_HEADERS, &config);
    c.bench_function(
        "security-headers (Python) response phase only, pooled",
        |b| {
            b.to_async(&rt)
                .iter(|| both_phases(&security, exchange("GET", &[]), hsts))
        },
    );
    let (security_fresh, _weir, _dir) = load_as(&rt, artifacts::SECURITY_HEADERS, &config, "fresh");
    c.bench_function(
        "security-headers (Python) response phase only, fresh",
        |b| {
            b.to_async(&rt)
                .iter(|| both_phases(&security_fresh, exchange("GET", &[]), hsts))
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
