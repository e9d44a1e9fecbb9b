//! The test-only `hostile` plugin: every kind of misbehaviour — a trap, an
//! endless loop, a stack overflow, a flood of host calls, a memory bomb, an
//! invalid answer, an escape attempt — is contained to its own request, per
//! `on_error`, while requests running at the same time through the same
//! plugin keep succeeding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use weir_tests::{client, config_file, hostile_plugin, respond, TestProxy, Upstream};

/// `hostile` as the only plugin in front of the upstream `up`: `extra` goes
/// into its plugin table, `config` into its config table (after `mode`).
async fn proxy_in_front(upstream_toml: &str, mode: &str, extra: &str, config: &str) -> TestProxy {
    let body = format!(
        "default_upstream = \"up\"\nchain = [\"hostile\"]\n{upstream_toml}\n{}{config}\n",
        hostile_plugin("hostile", mode, extra)
    );
    TestProxy::start(&body).await
}

async fn proxy_with(mode: &str, extra: &str) -> (TestProxy, Upstream) {
    let upstream = Upstream::echo().await;
    let proxy = proxy_in_front(&upstream.toml("up"), mode, extra, "").await;
    (proxy, upstream)
}

fn plugin_errors(proxy: &TestProxy, kind: &str) -> u64 {
    proxy.metrics().counter(
        "weir_plugin_errors_total",
        &[("plugin", "hostile"), ("kind", kind)],
    )
}

/// Send `/boom` while 20 good requests run through the same plugin; every
/// good one succeeds, and so does one sent after. Returns the bad answer.
async fn bad_request_among_good_ones(proxy: &TestProxy) -> reqwest::Response {
    let client = client();
    let bad = {
        let client = client.clone();
        let url = proxy.url("/boom");
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    let mut good = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let url = proxy.url(&format!("/fine/{i}"));
        good.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap()
        }));
    }
    for handle in good {
        assert_eq!(handle.await.unwrap().status(), 200);
    }
    let bad = bad.await.unwrap();
    // The proxy is still healthy after the failure.
    let after = client.get(proxy.url("/after")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    bad
}

/// While `bad` requests fail, good ones through the same plugin succeed.
async fn only_the_bad_request_fails(proxy: &TestProxy, expected_bad: u16) {
    let bad = bad_request_among_good_ones(proxy).await;
    assert_eq!(bad.status(), expected_bad);
}

#[tokio::test(flavor = "multi_thread")]
async fn trap_with_deny_fails_only_its_request_with_500() {
    let (proxy, _up) = proxy_with("trap", "on_error = \"deny\"").await;
    only_the_bad_request_fails(&proxy, 500).await;
    let response = client().get(proxy.url("/boom")).send().await.unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "500 Internal Server Error: plugin failed\n"
    );
    assert!(plugin_errors(&proxy, "trap") >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn trap_with_skip_lets_the_request_through() {
    let (proxy, _up) = proxy_with("trap", "on_error = \"skip\"").await;
    only_the_bad_request_fails(&proxy, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_is_stopped_by_the_deadline() {
    let (proxy, _up) = proxy_with("loop", "on_error = \"deny\"\ntimeout_ms = 50").await;
    let started = std::time::Instant::now();
    only_the_bad_request_fails(&proxy, 503).await;
    // Not a timing assertion on performance: a bound far above the 50 ms
    // deadline only proves the loop was interrupted at all.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(plugin_errors(&proxy, "timeout") >= 1);
}

/// The epoch ticker sleeps when no plugin call has run for a while; the
/// next call must wake it, or a looping guest would never be interrupted
/// (the wall-clock fallback cannot preempt wasm that never yields). Were
/// that broken, the looping call would hold a runtime thread for good:
/// the request below times out, and the test process then hangs on
/// shutdown rather than ending cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_after_an_idle_spell_is_still_stopped() {
    let (proxy, _up) = proxy_with("loop", "on_error = \"deny\"\ntimeout_ms = 50").await;
    // Well past the ticker's 100 idle ticks: it is parked now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        client().get(proxy.url("/boom")).send(),
    )
    .await
    .expect("the loop was never interrupted: the ticker stayed asleep")
    .expect("request");
    assert_eq!(answer.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn endless_loop_in_pooled_instance_is_discarded() {
    let (proxy, _up) = proxy_with(
        "loop",
        "on_error = \"deny\"\ntimeout_ms = 50\ninstances = \"pooled\"\npool_size = 4",
    )
    .await;
    only_the_bad_request_fails(&proxy, 503).await;
    only_the_bad_request_fails(&proxy, 503).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bomb_hits_the_cap() {
    let (proxy, _up) = proxy_with("memory", "on_error = \"deny\"\nmemory_mb = 32").await;
    only_the_bad_request_fails(&proxy, 500).await;
    assert!(plugin_errors(&proxy, "memory") >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_in_the_response_phase_is_contained_too() {
    let (proxy, _up) = proxy_with("trap", "on_error = \"deny\"").await;
    drop(proxy);
    let upstream = Upstream::echo().await;
    let config = format!(
        "default_upstream = \"up\"\nchain = [\"hostile\"]\n{}\n{}phase = \"response\"\n",
        upstream.toml("up"),
        hostile_plugin("hostile", "trap", "on_error = \"deny\"")
    );
    let proxy = TestProxy::start(&config).await;
    only_the_bad_request_fails(&proxy, 500).await;
}

/// Frames on the wasm stack hit the engine's stack limit; frames in Rust's
/// shadow stack in linear memory run below address 0, out of bounds.
#[tokio::test(flavor = "multi_thread")]
async fn stack_overflow_traps_only_its_request() {
    for stack in ["wasm", "linear-memory"] {
        let upstream = Upstream::echo().await;
        let config = format!("stack = {stack:?}");
        let proxy = proxy_in_front(
            &upstream.toml("up"),
            "stack-overflow",
            "on_error = \"deny\"",
            &config,
        )
        .await;
        only_the_bad_request_fails(&proxy, 500).await;
        assert!(plugin_errors(&proxy, "trap") >= 1, "{stack}");
    }
}

/// The guest calls `log` and `clock` forever. Each host call returns at
/// once; the epoch check the guest runs between calls ends the loop.
#[tokio::test(flavor = "multi_thread")]
async fn host_call_flood_is_stopped_by_the_deadline() {
    let (proxy, _up) = proxy_with("host-call-flood", "on_error = \"deny\"\ntimeout_ms = 50").await;
    let started = std::time::Instant::now();
    only_the_bad_request_fails(&proxy, 503).await;
    // A bound far above the deadline: proves only that it was interrupted.
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(plugin_errors(&proxy, "timeout") >= 1);
}

// ----- Invalid answers ------------------------------------------------------

/// An upstream that records the headers of every request it receives and
/// answers `200 upstream ok`.
async fn recording_upstream() -> (Upstream, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let upstream = Upstream::serve(move |req| {
        record.lock().unwrap().push(req.headers().clone());
        async { respond(200, "upstream ok") }
    })
    .await;
    (upstream, seen)
}

/// Nothing a rejected answer tried to set is in `headers`: no injected
/// header, no header named by the plugin, no framing header it forged.
fn assert_untouched(headers: &HeaderMap, body_len: Option<usize>, whose: &str) {
    for name in ["x-injected", "x-hostile", "x-bad name"] {
        assert!(
            !headers.contains_key(name),
            "{whose} got {name}: {headers:?}"
        );
    }
    assert!(
        !headers.contains_key("transfer-encoding"),
        "{whose}: {headers:?}"
    );
    assert_ne!(
        headers.get("host").map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "{whose}: {headers:?}"
    );
    let length = headers
        .get("content-length")
        .map(|v| v.to_str().unwrap().to_owned());
    match body_len {
        Some(len) => assert!(
            length.is_none() || length == Some(len.to_string()),
            "{whose}: content-length {length:?} for {len} bytes"
        ),
        None => assert_eq!(length, None, "{whose}: a GET got a content-length"),
    }
}

/// `mode` (with `config` lines) answers something the host must reject, in
/// both phases. With `deny` the bad request fails with 500 and counts as
/// `bad_output`; with `skip` it goes through unchanged. In every case the
/// rejected change reaches neither the upstream nor the client.
async fn invalid_answer_is_rejected(mode: &str, config: &str) {
    for phase in ["request", "response"] {
        let config = format!("{config}\nphase = {phase:?}");
        let (upstream, seen) = recording_upstream().await;

        let proxy =
            proxy_in_front(&upstream.toml("up"), mode, "on_error = \"deny\"", &config).await;
        let bad = bad_request_among_good_ones(&proxy).await;
        assert_eq!(bad.status(), 500, "{mode} in the {phase} phase");
        let headers = bad.headers().clone();
        let body = bad.bytes().await.unwrap();
        assert_untouched(&headers, Some(body.len()), "client");
        assert_eq!(&body[..], b"500 Internal Server Error: plugin failed\n");
        assert!(plugin_errors(&proxy, "bad_output") >= 1, "{mode} {phase}");
        drop(proxy);

        let proxy =
            proxy_in_front(&upstream.toml("up"), mode, "on_error = \"skip\"", &config).await;
        let response = client().get(proxy.url("/boom")).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{mode} in the {phase} phase, skipped"
        );
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        assert_eq!(&body[..], b"upstream ok");
        assert_untouched(&headers, Some(body.len()), "client");
        assert!(plugin_errors(&proxy, "bad_output") >= 1, "{mode} {phase}");

        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty());
        for request in seen.iter() {
            assert_untouched(request, None, "upstream");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_header_name_is_rejected() {
    invalid_answer_is_rejected("bad-header-name", "").await;
}

/// `x-hostile: ok\r\nx-injected: 1` must not split into two headers.
#[tokio::test(flavor = "multi_thread")]
async fn header_value_with_crlf_cannot_inject_a_header() {
    invalid_answer_is_rejected("bad-header-value", "").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_headers_are_the_hosts() {
    for header in ["content-length", "transfer-encoding", "host"] {
        invalid_answer_is_rejected("forbidden-header", &format!("header = {header:?}")).await;
    }
}

/// A local 99 in the request phase, a 1000 in the response phase.
#[tokio::test(flavor = "multi_thread")]
async fn status_outside_200_to_599_is_rejected() {
    invalid_answer_is_rejected("bad-status", "").await;
}

/// A plugin that turns a response into a 204 or a 304 gets one without
/// content (RFC 9110 §6.4.1), over HTTP/1.1 (raw, so a stray body would
/// show) and h2.
#[tokio::test(flavor = "multi_thread")]
async fn a_status_changed_to_204_or_304_loses_its_content() {
    let upstream = Upstream::serve(|_req| async { respond(200, "a body that must go") }).await;
    for status in [204, 304] {
        let proxy = proxy_in_front(
            &upstream.toml("up"),
            "set-status",
            "",
            &format!("phase = \"response\"\nstatus = {status}"),
        )
        .await;
        let raw = weir_tests::raw_exchange(
            proxy.all_addrs()[0],
            b"GET /boom HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (head, body) = raw.split_once("\r\n\r\n").expect("a whole head");
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{raw}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length: 1"),
            "{raw}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{raw}"
        );
        assert_eq!(body, "", "{raw}");
        let h2 = weir_tests::h2c_client()
            .get(proxy.url("/boom"))
            .send()
            .await
            .unwrap();
        assert_eq!(h2.status().as_u16(), status);
        assert!(h2.bytes().await.unwrap().is_empty());
        // Other paths keep their status and body.
        let other = client().get(proxy.url("/fine")).send().await.unwrap();
        assert_eq!(other.text().await.unwrap(), "a body that must go");
    }
}

// ----- Escape attempts ------------------------------------------------------

/// What the escape attempt reported, after checking it was denied.
async fn escape_is_denied(proxy: &TestProxy) -> String {
    let bad = bad_request_among_good_ones(proxy).await;
    assert_eq!(bad.status(), 200);
    let result = bad
        .headers()
        .get("x-hostile-result")
        .expect("the plugin reports what happened")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(result.starts_with("denied: "), "{result}");
    assert!(!result.contains("LEAK"), "{result}");
    assert_eq!(plugin_errors(proxy, "trap"), 0, "a denial must not trap");
    result
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_out_of_reach() {
    for phase in ["request", "response"] {
        let upstream = Upstream::echo().await;
        let config = format!("phase = {phase:?}");
        let proxy = proxy_in_front(&upstream.toml("up"), "read-file", "", &config).await;
        let result = escape_is_denied(&proxy).await;
        assert!(result.contains("read /etc/passwd: "), "{result}");
        assert!(!result.contains("root:"), "{result}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_is_empty() {
    for phase in ["request", "response"] {
        let upstream = Upstream::echo().await;
        let config = format!("phase = {phase:?}");
        let proxy = proxy_in_front(&upstream.toml("up"), "read-env", "", &config).await;
        let result = escape_is_denied(&proxy).await;
        assert!(result.contains("HOME: "), "{result}");
        assert!(result.contains("0 variables"), "{result}");
    }
}

/// An HTTP/1 upstream that counts the TCP connections it accepts.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    service_fn(|_req| async { Ok::<_, Infallible>(respond(200, "upstream ok")) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, connections, server)
}

/// The plugin dials the proxy's own upstream (TCP, UDP) and resolves a
/// name. It answers locally, so the proxy never contacts the upstream for
/// that request: any connection the upstream sees would be the plugin's.
#[tokio::test(flavor = "multi_thread")]
async fn sockets_are_out_of_reach() {
    let (addr, connections, server) = counting_upstream().await;
    let upstream_toml = format!("[upstreams.up]\nendpoints = [\"{addr}\"]\n");
    let config = format!("address = \"{addr}\"");
    let proxy = proxy_in_front(&upstream_toml, "open-socket", "", &config).await;

    let response = client().get(proxy.url("/boom")).send().await.unwrap();
    let result = response.headers()["x-hostile-result"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(result.starts_with("denied: "), "{result}");
    assert!(result.contains(&format!("tcp {addr}: ")), "{result}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "{result}");

    // The counter works: a good request does reach the upstream.
    let response = client().get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "upstream ok");
    assert_eq!(connections.load(Ordering::SeqCst), 1);

    escape_is_denied(&proxy).await;
    server.abort();
}

// ----- Oversized answers ----------------------------------------------------

/// A plugin's local response is bounded by its memory cap, not by the host:
/// with room for it, a 50 MiB body is served whole; without, the plugin
/// runs out of memory building it.
#[tokio::test(flavor = "multi_thread")]
async fn huge_local_body_is_bounded_by_the_memory_cap() {
    // A generous deadline: copying 50 MiB out of the guest in a debug build
    // takes longer than the default 100 ms.
    let (proxy, _up) = proxy_with(
        "huge-response",
        "on_error = \"deny\"\nmemory_mb = 128\ntimeout_ms = 10000",
    )
    .await;
    let bad = bad_request_among_good_ones(&proxy).await;
    assert_eq!(bad.status(), 200);
    let body = bad.bytes().await.unwrap();
    assert_eq!(body.len(), 50 << 20);
    assert!(body.iter().all(|b| *b == b'x'));
    drop(proxy);

    let (proxy, _up) = proxy_with(
        "huge-response",
        "on_error = \"deny\"\nmemory_mb = 32\ntimeout_ms = 10000",
    )
    .await;
    only_the_bad_request_fails(&proxy, 500).await;
    assert!(plugin_errors(&proxy, "memory") >= 1);
}

/// 100 000 headers, in a local response or as response changes: rejected
/// like any other invalid answer (more than 32 768 would make
/// `http::HeaderMap` panic, so the host caps plugin header lists).
#[tokio::test(flavor = "multi_thread")]
async fn huge_header_list_is_a_bad_answer() {
    for phase in ["request", "response"] {
        let upstream = Upstream::echo().await;
        let config = format!("huge = \"headers\"\nphase = {phase:?}");
        // Building 100,000 headers takes the guest a while on a loaded
        // machine: a generous deadline, so the answer (not the clock) is
        // what gets judged.
        let proxy = proxy_in_front(
            &upstream.toml("up"),
            "huge-response",
            "on_error = \"deny\"\ntimeout_ms = 2000",
            &config,
        )
        .await;
        only_the_bad_request_fails(&proxy, 500).await;
        assert!(plugin_errors(&proxy, "bad_output") >= 1, "{phase}");
    }
}

// ----- What a trap looks like in the log ------------------------------------

/// What the process logs until `marker` has been seen and half a second
/// has passed without another line (logs reach stderr from a thread of
/// their own, so a line can trail its request).
async fn read_log_after(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    marker: &str,
) -> String {
    let mut log = String::new();
    let mut seen = false;
    loop {
        let wait = Duration::from_millis(if seen { 500 } else { 10_000 });
        match tokio::time::timeout(wait, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                seen |= line.contains(marker);
                log.push_str(&line);
                log.push('\n');
            }
            _ => return log,
        }
    }
}

/// The real `weir` binary in front of an echo upstream, its one plugin
/// trapping on every call (the upstream and config directory must outlive it).
async fn trapping_weir() -> (Upstream, tempfile::TempDir, weir_tests::WeirProcess) {
    let upstream = Upstream::echo().await;
    let (dir, path) = config_file(&format!(
        "default_upstream = \"up\"\nchain = [\"hostile\"]\n{}\n{}",
        upstream.toml("up"),
        hostile_plugin("hostile", "trap", "")
    ));
    let weir = weir_tests::run_weir_binary(env!("CARGO_BIN_EXE_weir-e2e"), &path).await;
    (upstream, dir, weir)
}

/// Run the real `weir` binary, trap the plugin, and read the warning: it
/// names the plugin and carries wasmtime's backtrace with the plugin's own
/// function names (release builds keep the name section).
#[tokio::test(flavor = "multi_thread")]
async fn trap_is_logged_with_the_plugin_name_and_a_backtrace() {
    let (_upstream, _dir, weir) = trapping_weir().await;
    let weir_tests::WeirProcess {
        mut child,
        address,
        log: mut lines,
        ..
    } = weir;

    let response = client()
        .get(format!("http://{address}/boom"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let log = read_log_after(&mut lines, "plugin call failed").await;
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let warning = log
        .split_once("plugin call failed")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(warning.starts_with(" plugin=hostile "), "{warning}");
    assert!(warning.contains("plugin hostile: trapped"), "{warning}");
    assert!(warning.contains("wasm backtrace:"), "{warning}");
    assert!(
        warning.contains("hostile.wasm!hostile::run_away"),
        "{warning}"
    );
    assert!(warning.contains("on-request"), "{warning}");
    assert!(
        warning.contains("wasm `unreachable` instruction executed"),
        "{warning}"
    );
}

/// A plugin that fails every call cannot flood the log: its warnings come
/// at most once a second, each saying how many were left out since the
/// one before, so that every failure is accounted for.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_failing_every_call_gets_a_warning_a_second_not_one_a_request() {
    const BURST: usize = 40;
    let (_upstream, _dir, weir) = trapping_weir().await;
    let weir_tests::WeirProcess {
        mut child,
        address,
        log: mut lines,
        ..
    } = weir;

    let boom = |id: String| {
        let request = client()
            .get(format!("http://{address}/boom"))
            .header("x-request-id", id);
        async move { request.send().await.unwrap().status() }
    };
    let started = std::time::Instant::now();
    for n in 0..BURST {
        assert_eq!(boom(format!("burst-{n}")).await, 500);
    }
    let burst_took = started.elapsed();
    // A second later the next failure is logged again, with the count.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(boom("after-a-second".into()).await, 500);
    let log = read_log_after(&mut lines, "request=\"after-a-second\"").await;
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("plugin call failed"))
        .collect();
    let most = burst_took.as_secs() as usize + 2;
    assert!(
        (2..=most).contains(&warnings.len()),
        "{} warnings for {} failures in {burst_took:?}:\n{log}",
        warnings.len(),
        BURST + 1
    );
    let left_out: usize = warnings
        .iter()
        .map(|line| {
            let (_, rest) = line
                .split_once("left_out=")
                .expect("a count on every warning");
            rest.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(warnings.len() + left_out, BURST + 1, "{log}");
}
