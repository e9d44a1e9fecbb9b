//! Criterion benchmarks of the plugin hot path: one `tagger` call through the
//! chain with a fresh instance per call and with a reused (pooled) instance,
//! and a 3-plugin chain. Each iteration includes building the WIT request,
//! the call, and applying the plugin's changes — what a request pays.
//!
//! Run: `cargo bench -p weir-tests --bench plugin_call`

use criterion::{criterion_group, criterion_main, Criterion};
use weir::plugin::bindings::types;
use weir::plugin::{Exchange, RequestOutcome};
use weir::proxy::Generation;
use weir_tests::{config_file, tagger_plugin};

fn exchange() -> Exchange {
    let (head, ()) = http::Request::builder()
        .uri("/bench/path?q=1")
        .header("host", "bench.local")
        .header("user-agent", "criterion")
        .header("accept", "*/*")
        .body(())
        .expect("request")
        .into_parts();
    Exchange {
        id: "bench".into(),
        route: None,
        scheme: "http",
        authority: "bench.local".into(),
        head,
        connection: types::ConnectionInfo {
            client_ip: "127.0.0.1".into(),
            client_port: 40000,
            local_ip: "127.0.0.1".into(),
            local_port: 8080,
            http_version: types::HttpVersion::Http11,
            tls: None,
        },
        properties: Vec::new(),
        upstream: None,
        cache: None,
        body: None,
    }
}

fn load(rt: &tokio::runtime::Runtime, body: &str) -> (Generation, weir::Weir, tempfile::TempDir) {
    let (dir, path) = config_file(body);
    let config = weir::Config::load(&path).expect("config");
    let weir = weir::Weir::new(&config).expect("runtime");
    let generation = rt.block_on(weir.load(config)).expect("plugins load");
    (generation, weir, dir)
}

fn chain_of(names: &[&str], instances: &str) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    let mut body = format!(
        "chain = [{}]\n[upstreams.up]\nendpoints = [\"127.0.0.1:9\"]\n",
        list.join(", ")
    );
    for name in names {
        body.push_str(&tagger_plugin(name, name, ""));
        body.push_str(&format!("[plugins.{name}.x]\n"));
    }
    // Put `instances` in each plugin table (before its config subtable).
    body = body.replace("[plugins.", "\n[plugins.");
    for name in names {
        body = body.replace(
            &format!("\n[plugins.{name}]\n"),
            &format!("\n[plugins.{name}]\ninstances = {instances:?}\n"),
        );
        body = body.replace(&format!("\n[plugins.{name}.x]\n"), "\n");
    }
    body
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cases = [
        ("tagger call, fresh instance", chain_of(&["a"], "fresh")),
        ("tagger call, pooled instance", chain_of(&["a"], "pooled")),
        ("3-plugin chain, fresh", chain_of(&["a", "b", "c"], "fresh")),
        (
            "3-plugin chain, pooled",
            chain_of(&["a", "b", "c"], "pooled"),
        ),
    ];
    for (name, body) in cases {
        let (generation, _weir, _dir) = load(&rt, &body);
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut ex = exchange();
                let outcome = generation.chain.request_phase(&mut ex).await;
                assert!(matches!(outcome, Ok(RequestOutcome::Continue)));
                ex
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
