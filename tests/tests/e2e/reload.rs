//! Reload: a changed `proxy.toml` or plugin is compiled and validated aside,
//! then swapped in atomically; in-flight requests finish on the old chain;
//! a broken new config is refused and the old one keeps serving.

use std::time::Duration;

use weir_tests::{client, respond, tagger_plugin, TestProxy, Upstream};

fn config(upstream: &Upstream, tag: &str, extra: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"t\"]\n{}\n{}",
        upstream.toml("up"),
        tagger_plugin("t", tag, extra)
    )
}

async fn tag_of(proxy: &TestProxy, path: &str) -> String {
    let response = client().get(proxy.url(path)).send().await.unwrap();
    response.headers()["x-weir-chain"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_swaps_the_chain_and_in_flight_requests_finish_on_the_old_one() {
    let upstream = Upstream::serve(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        respond(200, "ok")
    })
    .await;
    let proxy = TestProxy::start(&config(&upstream, "one", "")).await;
    assert_eq!(tag_of(&proxy, "/").await, "one");

    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.rewrite(&config(&upstream, "two", ""));
    proxy.reload().await.unwrap();
    assert_eq!(tag_of(&proxy, "/").await, "two");

    let old = in_flight.await.unwrap();
    assert_eq!(old.status(), 200);
    // Its request phase ran on the old chain, and so does its response phase.
    assert_eq!(old.headers()["x-weir-chain"], "one");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_config_or_plugin_config_is_refused_and_the_old_one_serves() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&config(&upstream, "one", "")).await;

    proxy.rewrite("this is = = not toml");
    let err = proxy.reload().await.unwrap_err();
    assert!(err.contains("proxy.toml:1"), "{err}");
    assert_eq!(tag_of(&proxy, "/").await, "one");

    proxy.rewrite(&config(&upstream, "one", "deny_prefixes = [\"no-slash\"]"));
    let err = proxy.reload().await.unwrap_err();
    assert!(err.contains("plugin t: config refused"), "{err}");
    assert_eq!(tag_of(&proxy, "/").await, "one");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&config(&upstream, "one", "")).await;
    // File modification times can be coarse: make sure the rewrite is newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    proxy.rewrite(&config(&upstream, "two", ""));
    let mut seen = String::new();
    for _ in 0..100 {
        seen = tag_of(&proxy, "/").await;
        if seen == "two" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "two", "the watcher never reloaded");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_real_binary() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    // The file watcher is off: only the signal can reload.
    let write = |tag: &str| {
        let runtime = weir_tests::runtime_section()
            .replace("[runtime]\n", "[runtime]\nreload_check_ms = 0\n");
        std::fs::write(
            &path,
            format!(
                "{}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n{runtime}",
                config(&upstream, tag, "")
            ),
        )
        .unwrap();
    };
    write("one");
    let weir_tests::WeirProcess {
        mut child,
        address,
        log: mut lines,
        ..
    } = weir_tests::run_weir_binary(env!("CARGO_BIN_EXE_weir-e2e"), &path).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{address}/");
    let tag = |url: String| async move {
        let response = client().get(url).send().await.unwrap();
        response.headers()["x-weir-chain"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(tag(url.clone()).await, "one");

    write("two");
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut seen = String::new();
    for _ in 0..100 {
        seen = tag(url.clone()).await;
        if seen == "two" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "two");
    let _ = child.kill().await;
}
