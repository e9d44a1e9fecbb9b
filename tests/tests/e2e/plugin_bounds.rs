//! What a plugin makes the host hold, bounded: log lines (size, rate,
//! forged lines), properties (count, size, total, and linear cost), and
//! the refusal message `weir check` prints.

use std::time::{Duration, Instant};

use weir_tests::{
    admin_section, artifacts, client, config_file, echo_json, echoed_header, hostile_plugin,
    TestProxy, Upstream,
};

fn chain_of(upstream: &Upstream, plugins: &[&str], sections: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = {plugins:?}\n{}\n{sections}",
        upstream.toml("up")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn log_lines_are_capped_escaped_and_rate_limited() {
    let upstream = Upstream::echo().await;
    let body = chain_of(
        &upstream,
        &["noisy"],
        &format!(
            "{}count = 200\nsize = 100000\ntrigger_prefix = \"/\"\n\n{}",
            hostile_plugin(
                "noisy",
                "log-flood",
                "max_log_bytes = 256\nlog_lines_per_second = 5\nlog_burst = 10",
            ),
            admin_section()
        ),
    );
    let (_dir, path) = config_file(&body);
    let mut weir = weir_tests::run_weir_binary(env!("CARGO_BIN_EXE_weir-e2e"), &path).await;
    let mut admin = None;
    while admin.is_none() {
        let line = weir
            .log
            .next_line()
            .await
            .unwrap()
            .expect("admin address in the log");
        admin = line
            .split_once("admin listening address=")
            .and_then(|(_, a)| a.split_whitespace().next())
            .map(str::to_owned);
    }
    let admin = admin.unwrap_or_default();
    for _ in 0..5 {
        let response = client()
            .get(format!("http://{}/x", weir.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let metrics = weir_tests::scrape(&format!("http://{admin}/metrics")).await;
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("weir_plugin_log_dropped_total{plugin=\"noisy\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in\n{metrics}"));
    // 1000 lines asked for, about 10 (the burst) plus 5 a second let through.
    assert!(dropped >= 900, "dropped {dropped}");

    // Logs reach stderr from a thread of their own: read until they go
    // quiet, then stop the process.
    let mut lines = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(1), weir.log.next_line()).await
    {
        lines.push(line);
    }
    weir.child.start_kill().unwrap();
    let from_plugin: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("plugin=\"noisy\""))
        .collect();
    assert!(!from_plugin.is_empty(), "{lines:#?}");
    assert!(
        from_plugin.len() <= 40,
        "{} lines let through",
        from_plugin.len()
    );
    for line in &from_plugin {
        assert!(line.len() < 1024, "a {} byte line", line.len());
        assert!(line.contains("more bytes]"), "{line}");
        assert!(!line.contains('\u{1b}'), "raw ANSI escape in {line:?}");
    }
    // The forged line stays inside the plugin's own, escaped: no line of
    // the log starts with its timestamp.
    assert!(
        !lines.iter().any(|l| l.starts_with("2026-12-01T00:00:00Z")),
        "a forged host line: {lines:#?}"
    );
}

fn properties(upstream: &Upstream, count: u32, size: u32) -> String {
    properties_on(upstream, count, size, "/")
}

/// The setter sets `count` properties of `size` bytes on requests under
/// `trigger`; the inspector after it shows what reached it.
fn properties_on(upstream: &Upstream, count: u32, size: u32, trigger: &str) -> String {
    chain_of(
        upstream,
        &["setter", "inspector"],
        &format!(
            "[plugins.inspector]\nfile = {:?}\n{}",
            artifacts::INSPECTOR,
            hostile_plugin("setter", "properties", "")
                + &format!("count = {count}\nsize = {size}\ntrigger_prefix = {trigger:?}\n")
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_within_the_caps_pass_and_beyond_them_the_setter_fails() {
    let upstream = Upstream::echo().await;
    let within = TestProxy::start(&properties(&upstream, 10, 100)).await;
    let response = client().get(within.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_json(&response.text().await.unwrap());
    let seen = echoed_header(&echo, "x-inspect-properties").join("");
    assert_eq!(seen.matches('=').count(), 10, "{seen}");

    // Too many, one too large, too large together.
    for (count, size) in [(65, 1), (1, 70_000), (10, 30_000)] {
        let proxy = TestProxy::start(&properties(&upstream, count, size)).await;
        let response = client().get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 500, "{count} x {size} bytes");
        assert_eq!(
            proxy.metrics().counter(
                "weir_plugin_errors_total",
                &[("plugin", "setter"), ("kind", "bad_output")]
            ),
            1
        );
    }
}

/// 60,000 properties once cost the host 7.6 s of quadratic merging, after
/// the plugin's deadline, freezing everyone else. Now the answer is
/// refused before any merging, and other requests are served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_properties_is_refused_without_stalling_others() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&properties_on(&upstream, 60_000, 1, "/flood")).await;
    let flood = tokio::spawn({
        let url = proxy.url("/flood");
        async move { client().get(url).send().await.unwrap().status() }
    });
    let started = Instant::now();
    while !flood.is_finished() && started.elapsed() < Duration::from_secs(20) {
        let other = client().get(proxy.url("/ok")).send().await.unwrap();
        assert_eq!(other.status(), 200);
    }
    // Refused as a bad answer, or cut off by its deadline while it was
    // still building them: either way the setter fails, not the host.
    let status = flood.await.unwrap();
    assert!(status == 500 || status == 503, "{status}");
    let other = client().get(proxy.url("/ok")).send().await.unwrap();
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn check_prints_a_refusal_bounded_and_on_one_line() {
    let upstream = Upstream::echo().await;
    let (_dir, path) = config_file(&chain_of(
        &upstream,
        &["liar"],
        &(hostile_plugin("liar", "refuse-config", "") + "size = 1048576\n"),
    ));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("plugin liar: config refused"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.len() < 8192, "{} bytes printed", stderr.len());
    assert!(stderr.contains("more bytes]"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "raw ANSI escape in {stderr:?}");
}
