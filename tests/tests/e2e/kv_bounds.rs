//! The memory KV store is bounded: a plugin flooding it with unique keys
//! gets `too-large` once it holds its quota, the refusals are counted, the
//! store stays under its configured size, and every other plugin and
//! request carries on — whether the flood comes from requests or from
//! `validate-config` at load (as `weir check` runs it).

use weir_tests::{client, echo_json, echoed_header, hostile_plugin, TestProxy, Upstream};

/// A `kv-flood` plugin `name` flooding on `trigger`: `count` sets of
/// `value_bytes` per request; `extra` goes into its config table.
fn flood(name: &str, trigger: &str, count: u32, value_bytes: usize, extra: &str) -> String {
    format!(
        "{}trigger_prefix = {trigger:?}\ncount = {count}\nvalue_bytes = {value_bytes}\n{extra}\n",
        hostile_plugin(name, "kv-flood", "")
    )
}

/// A `kv-claim` plugin `name` keeping `value` under `key`, on `/claim`.
fn claim(name: &str, key: &str, value: &str) -> String {
    format!(
        "{}trigger_prefix = \"/claim\"\nkey = {key:?}\nvalue = {value:?}\n",
        hostile_plugin(name, "kv-claim", "")
    )
}

/// One flood request's tally from `x-hostile-result`: (set, too-large).
async fn flood_once(proxy: &TestProxy, path: &str) -> (u64, u64) {
    let response = client().get(proxy.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let report = response.headers()["x-hostile-result"]
        .to_str()
        .unwrap()
        .to_owned();
    let field = |name: &str| -> u64 {
        report
            .split(' ')
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {report:?}"))
    };
    assert_eq!(field("other"), 0, "{report}");
    (field("set"), field("too-large"))
}

fn refused(proxy: &TestProxy, plugin: &str, reason: &str) -> u64 {
    proxy.metrics().counter(
        "weir_plugin_kv_refused_total",
        &[("plugin", plugin), ("reason", reason)],
    )
}

async fn claims(proxy: &TestProxy) -> Vec<String> {
    let response = client().get(proxy.url("/claim")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    echoed_header(&echo_json(&response.text().await.unwrap()), "x-hostile-kv")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_plugin_is_refused_at_its_quota_and_nothing_else_suffers() {
    let upstream = Upstream::echo().await;
    let quota = 256 << 10;
    let body = format!(
        "default_upstream = \"up\"\nchain = [\"flood\", \"victim\"]\n{}\n\
         [kv]\nbackend = \"memory\"\nmax_bytes = {}\nplugin_max_bytes = {quota}\n\n{}{}",
        upstream.toml("up"),
        4 << 20,
        flood("flood", "/flood", 100, 1000, ""),
        claim("victim", "mine", "victim"),
    );
    let proxy = TestProxy::start(&body).await;
    assert_eq!(claims(&proxy).await, ["victim saw nothing"]);

    let (mut set, mut too_large) = (0, 0);
    for _ in 0..5 {
        let (s, t) = flood_once(&proxy, "/flood").await;
        set += s;
        too_large += t;
        // Other requests are served all along.
        let fine = client().get(proxy.url("/fine")).send().await.unwrap();
        assert_eq!(fine.status(), 200);
    }
    // Each entry weighs its ~30-byte key, 1000-byte value and 512 bytes of
    // overhead: about 170 fit in 256 KiB, of the 500 attempted.
    assert!((150..=180).contains(&set), "{set} sets landed");
    assert_eq!(set + too_large, 500);
    assert_eq!(refused(&proxy, "flood", "plugin_bytes"), too_large);

    let usage = proxy.kv_usage().expect("memory backend");
    assert!(usage.plugins["flood"].bytes <= quota, "{usage:?}");
    assert!(usage.total.bytes <= 4 << 20, "{usage:?}");
    assert_eq!(usage.plugins["flood"].entries, set);
    // The other plugin's entry is still there, and it can still write.
    assert_eq!(claims(&proxy).await, ["victim saw victim"]);
    assert_eq!(refused(&proxy, "victim", "plugin_bytes"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_quota_refuses_tiny_values_too() {
    let upstream = Upstream::echo().await;
    let body = format!(
        "default_upstream = \"up\"\nchain = [\"flood\"]\n{}\n\
         [kv]\nbackend = \"memory\"\nplugin_max_entries = 50\n\n{}",
        upstream.toml("up"),
        flood("flood", "/flood", 80, 1, ""),
    );
    let proxy = TestProxy::start(&body).await;
    assert_eq!(flood_once(&proxy, "/flood").await, (50, 30));
    assert_eq!(flood_once(&proxy, "/flood").await, (0, 80));
    assert_eq!(refused(&proxy, "flood", "plugin_entries"), 110);
    assert_eq!(proxy.kv_usage().unwrap().plugins["flood"].entries, 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_stays_under_max_bytes_when_quotas_add_up_to_more() {
    let upstream = Upstream::echo().await;
    let max_bytes: u64 = 1 << 20;
    // Three plugins each allowed half the store: together they overfill
    // it, so the global bound has to evict.
    let body = format!(
        "default_upstream = \"up\"\nchain = [\"f1\", \"f2\", \"f3\"]\n{}\n\
         [kv]\nbackend = \"memory\"\nmax_bytes = {max_bytes}\nplugin_max_bytes = {}\n\n{}{}{}",
        upstream.toml("up"),
        max_bytes / 2,
        flood("f1", "/f1", 200, 2000, ""),
        flood("f2", "/f2", 200, 2000, ""),
        flood("f3", "/f3", 200, 2000, ""),
    );
    let proxy = TestProxy::start(&body).await;
    let mut set = 0;
    for path in ["/f1", "/f2", "/f3", "/f1", "/f2", "/f3"] {
        set += flood_once(&proxy, path).await.0;
    }
    let usage = proxy.kv_usage().unwrap();
    eprintln!("{set} sets landed; the store holds {usage:?}");
    assert!(usage.total.bytes <= max_bytes, "{usage:?}");
    assert!(usage.total.entries < set, "nothing was evicted: {usage:?}");
    // Evicted entries were credited back to their plugins.
    let held: u64 = usage.plugins.values().map(|h| h.bytes).sum();
    assert_eq!(held, usage.total.bytes, "{usage:?}");
    let fine = client().get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(fine.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_validate_config_is_bounded_too() {
    let upstream = Upstream::echo().await;
    let quota: u64 = 128 << 10;
    let body = format!(
        "default_upstream = \"up\"\nchain = [\"flood\"]\n{}\n\
         [kv]\nbackend = \"memory\"\nplugin_max_bytes = {quota}\n\n{}",
        upstream.toml("up"),
        flood("flood", "/flood", 1000, 1000, "flood_at_load = true"),
    );
    // Loading is what `weir check` does (the same `Weir::new` + `load`).
    let proxy = TestProxy::start(&body).await;
    let usage = proxy.kv_usage().unwrap();
    assert!(usage.plugins["flood"].bytes <= quota, "{usage:?}");
    assert!(refused(&proxy, "flood", "plugin_bytes") >= 900);
    let fine = client().get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(fine.status(), 200);
}
