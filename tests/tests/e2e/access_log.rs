//! `[access_log]`: one JSON (or combined) line per request, written after
//! its response, for successes, refusals and plugin failures alike; a
//! stalled writer drops lines (counted) instead of blocking requests;
//! SIGUSR1 reopens the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use weir_tests::{client, config_file, hostile_plugin, respond, TestProxy, Upstream};

/// Wait until `path` holds at least `n` lines; return them.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "fewer than {n} lines in {}:\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
}

fn log_section(path: &Path, extra: &str) -> String {
    format!(
        "[access_log]\npath = {:?}\n{extra}\n",
        path.display().to_string()
    )
}

async fn upstream() -> Upstream {
    Upstream::serve(|req| async move {
        match req.uri().path() {
            "/missing" => respond(404, "no such thing"),
            _ => {
                let mut response = respond(200, "twelve bytes");
                response
                    .headers_mut()
                    .insert("cache-control", "max-age=60".parse().unwrap());
                response
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_json_line_per_request_for_successes_refusals_and_plugin_failures() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let up = upstream().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 1048576\n{}\n\
         [[routes]]\nname = \"api\"\nprefix = \"/\"\nchain = [\"hostile\"]\n{}",
        up.toml("up"),
        log_section(&log, ""),
        hostile_plugin("hostile", "trap", "")
    ))
    .await;
    let ok = client()
        .post(proxy.url("/x/../doc?q=1"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(ok.text().await.unwrap(), "twelve bytes");
    assert_eq!(
        client()
            .get(proxy.url("/missing"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client()
            .get(proxy.url("/boom"))
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    // Refused at admission, before any route: still one line.
    let bad = weir_tests::raw_exchange(
        proxy.all_addrs()[0],
        b"GET /a/%2e%2e%2fetc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

    let lines = lines(&log, 4).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let entries: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    // Lines are written as responses finish: find them by status.
    let by_status = |status: u64| {
        entries
            .iter()
            .find(|e| e["status"] == status)
            .unwrap_or_else(|| panic!("no {status} line in {entries:#?}"))
    };
    let ok = by_status(200);
    assert_eq!(ok["request_id"], id.as_str());
    assert_eq!(ok["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/doc", "the canonical path");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes_in"], 5);
    assert_eq!(ok["bytes_out"], 12);
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["upstream"], "up");
    assert_eq!(ok["endpoint"], up.addr.to_string());
    assert_eq!(ok["cache"], "fwd=method");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["total_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    assert!(ok["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ok["plugins"][0]["plugin"], "hostile");
    assert_eq!(ok["plugins"][0]["decision"], "continue");

    assert_eq!(by_status(404)["cache"], "fwd=miss");
    let failed = by_status(500);
    assert_eq!(failed["status"], 500);
    assert_eq!(failed["plugins"][0]["decision"], "error:deny");
    assert_eq!(failed["upstream"], Value::Null);
    let refused = by_status(400);
    assert_eq!(refused["status"], 400);
    assert_eq!(refused["route"], Value::Null);
    assert_eq!(refused["path"], "/a/%2e%2e%2fetc", "as the client sent it");
}

#[tokio::test(flavor = "multi_thread")]
async fn combined_format_and_sampling_keep_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("combined.log");
    let up = upstream().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n{}",
        up.toml("up"),
        log_section(&log, "format = \"combined\"\nsample = 0.0")
    ))
    .await;
    for _ in 0..5 {
        client().get(proxy.url("/fine")).send().await.unwrap();
    }
    client()
        .get(proxy.url("/missing"))
        .header("user-agent", "probe/1.0")
        .send()
        .await
        .unwrap();
    // A client's fields are cut at 1 KiB: a line stays a few KiB, so
    // `buffer_lines` bounds the queue's bytes too.
    let long = "a".repeat(10_000);
    client()
        .get(proxy.url("/missing"))
        .header("user-agent", &long)
        .header("referer", &long)
        .send()
        .await
        .unwrap();
    let lines = lines(&log, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines_again = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(lines_again.lines().count(), 2, "{lines_again}");
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
    assert!(
        lines[0].ends_with("\"GET /missing HTTP/1.1\" 404 13 \"-\" \"probe/1.0\""),
        "{}",
        lines[0]
    );
    let cut = format!("\"{}…\"", &long[..1024]);
    assert!(
        lines[1].ends_with(&format!("404 13 {cut} {cut}")),
        "{}",
        lines[1]
    );
    assert!(lines[1].len() < 2 * 1024 + 200, "{}", lines[1].len());
}

#[test]
fn bad_access_log_settings_are_refused() {
    let (_dir, path) = config_file(
        "[access_log]\npath = \"stdout\"\nfields = [\"status\", \"statsu\"]\nsample = 2.0\n",
    );
    let err = weir::Config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("access_log.fields[1]: unknown field \"statsu\""),
        "{err}"
    );
    assert!(err.contains("access_log.sample"), "{err}");
}

/// A FIFO nobody reads: the writer thread blocks on it once the pipe is
/// full, the queue fills, and new lines are dropped and counted while
/// requests go on being served.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_writer_drops_lines_and_counts_them_without_blocking_requests() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stuck.log");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Open the reading end (without reading), so the writer's open does
    // not wait for a reader.
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::File::open(reader_path).unwrap());
    let up = upstream().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n{}{}",
        up.toml("up"),
        log_section(&fifo, "buffer_lines = 16"),
        ""
    ))
    .await;
    let _reader = reader.join().unwrap();
    // ~600 bytes a line: the 64 KiB pipe and 16 queued lines hold a few
    // hundred; the rest must be dropped.
    let long = format!("/{}", "p".repeat(400));
    let client = client();
    for _ in 0..600 {
        let response =
            tokio::time::timeout(Duration::from_secs(10), client.get(proxy.url(&long)).send())
                .await
                .expect("a request waited on the access log")
                .unwrap();
        assert_eq!(response.status(), 200);
    }
    let metrics = proxy.metrics().render();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_access_log_dropped_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in\n{metrics}"));
    assert!(dropped >= 100, "dropped {dropped}");
}

/// logrotate's way: move the file, send SIGUSR1, and the next lines go to
/// a new file at the configured path.
#[tokio::test(flavor = "multi_thread")]
async fn sigusr1_reopens_the_file_for_logrotate() {
    let dir = tempfile::tempdir().unwrap();
    let log: PathBuf = dir.path().join("access.log");
    let up = upstream().await;
    let (_config_dir, config) = config_file(&format!(
        "default_upstream = \"up\"\n{}\n{}",
        up.toml("up"),
        log_section(&log, "")
    ));
    let weir = weir_tests::run_weir_binary(env!("CARGO_BIN_EXE_weir-e2e"), &config).await;
    let get = |path: &'static str| {
        let url = format!("http://{}{path}", weir.address);
        async move { client().get(url).send().await.unwrap().status() }
    };
    assert_eq!(get("/before").await, 200);
    lines(&log, 1).await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let pid = weir.child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    // The writer checks for a reopen at least every 200 ms.
    let mut reopened = false;
    for _ in 0..100 {
        assert_eq!(get("/after").await, 200);
        if log.exists() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "no new file after SIGUSR1");
    // The reopened file gets the lines of requests from now on.
    assert_eq!(get("/after").await, 200);
    let fresh = lines(&log, 1).await;
    assert!(fresh.iter().all(|l| l.contains("\"/after\"")), "{fresh:#?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("\"/before\""), "{old}");
}
