//! The sample `tagger` plugin: headers in and out, denied prefixes, and its
//! config checked once at load time.

use weir_tests::{client, echo_json, echoed_header, tagger_plugin, TestProxy, Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn adds_configured_headers_both_ways_and_denies_prefixes() {
    let upstream = Upstream::echo().await;
    let config = format!(
        "default_upstream = \"up\"\nchain = [\"tagger\"]\n{}\n{}",
        upstream.toml("up"),
        tagger_plugin(
            "tagger",
            "edge",
            "request_headers = { x-env = \"prod\" }\nresponse_headers = { x-served-by = \"weir\" }\ndeny_prefixes = [\"/admin\"]",
        )
    );
    let proxy = TestProxy::start(&config).await;

    let response = client().get(proxy.url("/anything")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-served-by"], "weir");
    assert_eq!(response.headers()["x-weir-chain"], "edge");
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-env"), ["prod"]);

    let denied = client()
        .get(proxy.url("/admin/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_refused_at_load_with_the_plugins_message() {
    let upstream = Upstream::echo().await;
    let config = format!(
        "default_upstream = \"up\"\nchain = [\"tagger\"]\n{}\n{}",
        upstream.toml("up"),
        tagger_plugin("tagger", "edge", "deny_prefixes = [\"admin\"]")
    );
    let err = match TestProxy::try_start(&config).await {
        Ok(_) => panic!("a bad plugin config must be refused"),
        Err(err) => err,
    };
    assert!(err.contains("plugin tagger: config refused"), "{err}");
    assert!(err.contains("must start with '/'"), "{err}");
}

/// What the binary registers with `engine::on_compiled` (mimalloc's
/// collect) runs once a plugin is compiled, on the compiling thread and
/// on every thread of rayon's pool, where cranelift compiled in parallel.
#[tokio::test(flavor = "multi_thread")]
async fn the_compile_hook_runs_on_the_compiling_threads_after_each_compilation() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RAN: AtomicUsize = AtomicUsize::new(0);
    weir::plugin::engine::on_compiled(|| {
        RAN.fetch_add(1, Ordering::SeqCst);
    });
    let (_dir, path) = weir_tests::config_file(&format!(
        "chain = [\"tag\"]\n[upstreams.up]\nendpoints = [\"127.0.0.1:9\"]\n{}",
        tagger_plugin("tag", "t", "")
    ));
    let config = weir::Config::load(&path).expect("config");
    let weir = weir::Weir::new(&config).expect("runtime");
    weir.load(config).await.expect("plugins load");
    // The blocking thread, then at least one rayon thread.
    assert!(
        RAN.load(Ordering::SeqCst) >= 2,
        "{}",
        RAN.load(Ordering::SeqCst)
    );
}
