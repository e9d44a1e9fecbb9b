//! No plugin stalls anyone else: a guest that runs long gives its thread
//! back at every epoch tick (its own deadline still applies), calls beyond
//! a plugin's `max_concurrency` wait while its calls keep finishing and are
//! refused with 503 once none has finished for `queue_timeout_ms`,
//! and the admin listener runs on a thread of its own.
//!
//! No timings are asserted: only the order in which things finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weir_tests::{admin_section, client, hostile_plugin, TestProxy, Upstream};

fn looping(upstream: &Upstream, extra: &str, sections: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"spin\"]\n{}\n{}{sections}",
        upstream.toml("up"),
        hostile_plugin("spin", "loop", extra)
    )
}

/// `path` and the admin listener's `/healthz` both answer 200.
async fn served_beside(proxy: &TestProxy, path: &str) {
    let response = client().get(proxy.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let health = client()
        .get(proxy.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "/healthz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_plugin_yields_to_other_requests_and_the_admin_listener() {
    let upstream = Upstream::echo().await;
    // Far more spinning calls than worker threads, each with a long
    // deadline: without yielding, nothing else would run until they end.
    let proxy = TestProxy::start(&looping(
        &upstream,
        "timeout_ms = 3000\nmax_concurrency = 64\ninstances = \"fresh\"",
        &admin_section(),
    ))
    .await;
    let spinning = 8;
    let finished = Arc::new(AtomicUsize::new(0));
    let mut spins = Vec::new();
    for _ in 0..spinning {
        let url = proxy.url("/boom");
        let finished = finished.clone();
        spins.push(tokio::spawn(async move {
            let status = client().get(url).send().await.unwrap().status();
            finished.fetch_add(1, Ordering::SeqCst);
            status
        }));
    }
    // Let them start.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    served_beside(&proxy, "/fast").await;
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the other requests waited for the spinning calls to end"
    );
    // The spinning calls still hit their own deadline.
    for spin in spins {
        assert_eq!(spin.await.unwrap(), 503);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_beyond_max_concurrency_wait_briefly_then_get_503() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&looping(
        &upstream,
        "timeout_ms = 1000\nmax_concurrency = 2\nqueue_timeout_ms = 50",
        "",
    ))
    .await;
    let mut calls = Vec::new();
    for _ in 0..5 {
        let url = proxy.url("/boom");
        calls.push(tokio::spawn(async move {
            let response = client().get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    let mut timed_out = 0;
    let mut refused = 0;
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 503, "{body}");
        if body.contains("plugin timed out") {
            timed_out += 1;
        } else {
            assert!(body.contains("plugin capacity exhausted"), "{body}");
            refused += 1;
        }
    }
    assert_eq!((timed_out, refused), (2, 3));
    assert_eq!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "spin"), ("kind", "overload")]
        ),
        3
    );
    // Once the slots are free again, the plugin serves.
    let ok = client().get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

/// A plugin that is busy but keeps finishing calls is not "exhausted":
/// its queue drains in order, though the last call waits far longer than
/// `queue_timeout_ms` (12 calls of 20 ms through one slot), because a slot
/// came free well within it each time. (Here every call ends at its
/// deadline: what counts is that the slot comes back.)
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_plugin_that_keeps_finishing_calls_queues_instead_of_refusing() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&looping(
        &upstream,
        "timeout_ms = 20\nmax_concurrency = 1\nqueue_timeout_ms = 200",
        "",
    ))
    .await;
    let mut calls = Vec::new();
    for _ in 0..12 {
        let url = proxy.url("/boom");
        calls.push(tokio::spawn(async move {
            let response = client().get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("plugin timed out"), "{body}");
    }
    assert_eq!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "spin"), ("kind", "overload")]
        ),
        0
    );
}

/// Whether the admin API shows the `spin` plugin as long-running.
async fn spin_is_long_running(proxy: &TestProxy) -> bool {
    let spin = proxy.plugin_status("spin").await;
    spin["long_running"]
        .as_bool()
        .unwrap_or_else(|| panic!("no long_running in {spin}"))
}

/// Linux's `SCHED_IDLE` scheduling policy.
const SCHED_IDLE: u32 = 5;

/// The scheduling policy (field 41 of `/proc/<tid>/stat`) of each of this
/// process's `weir-long-runner` threads, whichever test's proxy they serve.
fn long_runner_policies() -> Vec<u32> {
    let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    let mut policies = Vec::new();
    for task in tasks.flatten() {
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `tid (comm) state ...`, comm cut to 15 bytes.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if head.ends_with("(weir-long-runne") {
            policies.extend(
                rest.split_whitespace()
                    .nth(41 - 3)
                    .and_then(|field| field.parse::<u32>().ok()),
            );
        }
    }
    policies
}

/// A plugin whose calls keep running past an epoch tick becomes
/// long-running: its calls wait for a turn before they start, instead of
/// each running its first slice beside all the others. It still serves
/// its quick calls, and the first of them that ends before a tick makes
/// it an ordinary plugin again.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_whose_calls_keep_running_long_waits_for_a_turn_before_it_starts() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&looping(
        &upstream,
        "timeout_ms = 20
instances = \"fresh\"",
        &format!(
            "{}\n[runtime]\nmax_long_running_calls = 1\n",
            admin_section()
        ),
    ))
    .await;
    assert!(!spin_is_long_running(&proxy).await);
    for _ in 0..4 {
        let boom = client().get(proxy.url("/boom")).send().await.unwrap();
        assert_eq!(boom.status(), 503);
    }
    assert!(spin_is_long_running(&proxy).await);
    // Their threads run only on a core nothing else wants.
    let policies = long_runner_policies();
    assert!(!policies.is_empty(), "no weir-long-runner threads");
    assert!(
        policies.iter().all(|&policy| policy == SCHED_IDLE),
        "long-runner scheduling policies {policies:?}, not SCHED_IDLE ({SCHED_IDLE})"
    );
    // Long-running calls at once, all through the one turn: each still
    // ends at its own deadline, whether running or waiting for its turn.
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let url = proxy.url("/boom");
            tokio::spawn(async move {
                let response = client().get(url).send().await.unwrap();
                (response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("plugin timed out"), "{body}");
    }
    // A quick call waits for its turn too, then is served; ending before a
    // tick, it clears the plugin's streak.
    let mut quick = 0;
    while spin_is_long_running(&proxy).await {
        let fine = client().get(proxy.url("/fine")).send().await.unwrap();
        assert_eq!(fine.status(), 200);
        quick += 1;
        assert!(quick < 20, "quick calls never cleared the streak");
    }
    assert_eq!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "spin"), ("kind", "overload")]
        ),
        0
    );
}

/// The `noisy` plugin's `over_cpu_share` and `long_running`, from the
/// admin API.
async fn share_flags(proxy: &TestProxy) -> (bool, bool) {
    let status = proxy.plugin_status("noisy").await;
    let flag = |name: &str| {
        status[name]
            .as_bool()
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (flag("over_cpu_share"), flag("long_running"))
}

/// A plugin whose calls each end well within a tick (so none of them ever
/// yields or counts as long-running) can still keep every request worker
/// busy when its clients keep calling it. While the proxy serves nothing
/// else, it keeps the workers: there is no one to be fair to. Once other
/// requests come in, past `max_plugin_cpu_percent` of the workers' time
/// its calls run as long runners do, off the workers, while everyone else
/// is served; once it takes under half of that, it is an ordinary plugin
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_taking_more_than_its_share_of_the_workers_runs_off_them() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n\
         [[routes]]\nname = \"storm\"\nprefix = \"/boom\"\nchain = [\"noisy\"]\n\
         [[routes]]\nname = \"fast\"\nprefix = \"/\"\nchain = []\n\
         {}count = 20\nsize = 4000\ntrigger_prefix = \"/boom/flood\"\n{}\n\
         [runtime]\nmax_plugin_cpu_percent = 10\n",
        upstream.toml("up"),
        hostile_plugin(
            "noisy",
            "log-flood",
            "log_lines_per_second = 100000\nlog_burst = 100000\ntimeout_ms = 5000\n\
             instances = \"pooled\"\nmax_concurrency = 64"
        ),
        admin_section()
    ))
    .await;
    assert_eq!(share_flags(&proxy).await, (false, false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Clients calling `path` back to back until `stop`.
    let callers = |path: &str, count: usize| -> Vec<tokio::task::JoinHandle<usize>> {
        (0..count)
            .map(|_| {
                let url = proxy.url(path);
                let stop = stop.clone();
                tokio::spawn(async move {
                    let client = client();
                    let mut served = 0;
                    while !stop.load(Ordering::SeqCst) && served < 20_000 {
                        let response = client.get(&url).send().await.unwrap();
                        assert_eq!(response.status(), 200);
                        served += 1;
                    }
                    served
                })
            })
            .collect()
    };
    // Four clients flooding it, nothing else: for five windows, it keeps
    // the workers (each call is short, so its streak never grows either).
    let mut clients = callers("/boom/flood", 4);
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(share_flags(&proxy).await, (false, false));
    }
    // A client of the plugin-free route beside them: now it is over.
    clients.extend(callers("/fast", 1));
    let mut polls = 0;
    while share_flags(&proxy).await != (true, true) {
        polls += 1;
        assert!(polls < 300, "never judged over its share");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Everyone else is served beside it: its own quick calls (they wait
    // for a long-running turn), and the admin listener.
    served_beside(&proxy, "/boom/fine").await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        assert!(client.await.unwrap() > 0);
    }
    // Quiet: with no one else served (and its calls under half its share
    // for a second, were anyone), it is an ordinary plugin again.
    let mut quiet = 0;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let fine = client().get(proxy.url("/boom/fine")).send().await.unwrap();
        assert_eq!(fine.status(), 200);
        if share_flags(&proxy).await == (false, false) {
            break;
        }
        quiet += 1;
        assert!(quiet < 20, "never judged under half its share again");
    }
}

/// A stderr nobody reads (a full pipe) must not stall requests that log:
/// lines are dropped instead, once the queue holds `WEIR_LOG_QUEUE_BYTES`,
/// and counted; a plugin's lines only up to three quarters of it, so that
/// Weir's own lines are kept. With synchronous writes the first request to
/// log into the full pipe would block for good; with a queue bounded in
/// lines only, the 32 MB below would all have been held.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_stderr_does_not_stall_requests_and_its_queue_is_bounded_in_bytes() {
    let upstream = Upstream::echo().await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_address = admin.local_addr().unwrap();
    drop(admin);
    let (_dir, path) = weir_tests::config_file(&format!(
        "default_upstream = \"up\"\nchain = [\"noisy\"]\n{}\n{}count = 200\nsize = 4000\ntrigger_prefix = \"/\"\n{}",
        upstream.toml("up"),
        hostile_plugin(
            "noisy",
            "log-flood",
            "log_lines_per_second = 100000\nlog_burst = 100000\ntimeout_ms = 5000"
        ),
        admin_section().replace("127.0.0.1:0", &admin_address.to_string()),
    ));
    // The log is read until Weir listens, then never again.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"));
    command
        .args(["run", "--config"])
        .arg(&path)
        .env("WEIR_LOG_QUEUE_BYTES", (1 << 20).to_string());
    let mut weir = weir_tests::spawn_weir(command).await;
    let client = client();
    // 40 requests x 200 lines x 4 KB: 32 MB into a 64 KB pipe.
    for i in 0..40 {
        let response = client
            .get(format!("http://{}/{i}", weir.address))
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} stalled: {e}"));
        assert_eq!(response.status(), 200);
    }
    // Of the plugin's 8,000 lines (and the host's "served" line per
    // request), the pipe and the 1 MiB queue hold a few hundred.
    let metrics = weir_tests::scrape(&format!("http://{admin_address}/metrics")).await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("weir_log_dropped_total "))
        .unwrap_or_else(|| panic!("no weir_log_dropped_total in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(
        (7_000.0..=8_000.0).contains(&dropped),
        "dropped {dropped} of the plugin's 8,000 lines"
    );
    // Plugin lines stop at three quarters of the queue: Weir's own line
    // for each request was kept, behind the plugin's, and is read now.
    let mut served = 0;
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = weir.log.next_line().await.expect("read log") {
            if line.contains(" served ") || line.ends_with(" served") {
                served += 1;
                if served == 40 {
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok() && served == 40,
        "{served} of Weir's 40 \"served\" lines read"
    );
    drop(weir);
}

/// A cacheable 4 MiB response, streamed in 64 KiB chunks a few
/// milliseconds apart (so that a second client arrives while it fills):
/// with `Content-Length` when `sized`, chunked otherwise. Counts its
/// requests.
async fn big_cacheable(sized: bool) -> (Upstream, Arc<AtomicUsize>) {
    use futures_util::StreamExt;
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let upstream = Upstream::serve(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
            let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
            tokio::spawn(async move {
                for _ in 0..BIG / chunk.len() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                }
            });
            let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|bytes| Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes)));
            let mut response =
                http::Response::new(weir::body::boxed(http_body_util::StreamBody::new(frames)));
            let headers = response.headers_mut();
            headers.insert("cache-control", "max-age=60".parse().unwrap());
            if sized {
                headers.insert("content-length", BIG.into());
            }
            response
        }
    })
    .await;
    (upstream, count)
}

const BIG: usize = 4 * 1024 * 1024;

/// Send a GET and read only the response head; the caller then reads the
/// body when it likes. The receive buffer is kept small so that a client
/// that stops reading really stops the bytes.
async fn stalled_reader(proxy: &TestProxy, path: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = proxy.all_addrs()[0];
    let mut stream = socket.connect(addr).await.unwrap();
    // The same authority as `proxy.url`, so the same cache key.
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head");
        seen.extend_from_slice(&buf[..n]);
    }
    (stream, seen)
}

/// Read the rest of a stalled reader's response; returns its body length.
async fn drain(mut stream: tokio::net::TcpStream, seen: Vec<u8>) -> (String, usize) {
    use tokio::io::AsyncReadExt;
    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
    let mut body = seen[end..].to_vec();
    let chunked = head.contains("transfer-encoding: chunked");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let done = if chunked {
            body.ends_with(b"\r\n0\r\n\r\n")
        } else {
            body.len() >= BIG
        };
        if done {
            break;
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the slow reader's response stalled")
            .unwrap();
        assert!(n > 0, "closed early after {} bytes", body.len());
        body.extend_from_slice(&buf[..n]);
    }
    let length = if chunked {
        // Count the data bytes, not the chunk framing.
        body.iter().filter(|&&b| b == b'x').count()
    } else {
        body.len()
    };
    (head, length)
}

async fn cached(upstream: &Upstream) -> TestProxy {
    TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 67108864\nmax_entry_bytes = 16777216\n{}",
        upstream.toml("up"),
        admin_section()
    ))
    .await
}

/// A second client of a filling response is not paced by the first: it
/// streams from the entry as the upstream fills it, while the first client
/// has read nothing of the body.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_does_not_hold_back_a_second_client_of_a_sized_response() {
    let (upstream, count) = big_cacheable(true).await;
    let proxy = cached(&upstream).await;
    let (slow, seen) = stalled_reader(&proxy, "/big").await;
    let second = client().get(proxy.url("/big")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let status = second.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = second.bytes().await.unwrap();
    assert_eq!(body.len(), BIG);
    assert_eq!(status, "weir; fwd=miss; collapsed");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // The slow reader still gets all of it, at its own pace.
    let (head, length) = drain(slow, seen).await;
    assert!(head.contains("fwd=miss; stored"), "{head}");
    assert_eq!(length, BIG);
    // And a third client hits what was stored.
    let third = client().get(proxy.url("/big")).send().await.unwrap();
    assert!(third.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("weir; hit"));
    assert_eq!(third.bytes().await.unwrap().len(), BIG);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

/// Of a chunked response (length unknown until it ends) the second client
/// waits for the fill, which runs at the upstream's pace: it is served
/// while the first client still has not read the body.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_does_not_hold_back_a_second_client_of_a_chunked_response() {
    let (upstream, count) = big_cacheable(false).await;
    let proxy = cached(&upstream).await;
    let (slow, seen) = stalled_reader(&proxy, "/big").await;
    let second = client().get(proxy.url("/big")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(second.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("weir; hit"));
    assert_eq!(second.bytes().await.unwrap().len(), BIG);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let (_, length) = drain(slow, seen).await;
    assert_eq!(length, BIG);
}

/// A response too large for the cache still reaches its (slow) client
/// whole, and is not stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_chunked_response_streams_whole_and_is_not_stored() {
    let (upstream, count) = big_cacheable(false).await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 67108864\nmax_entry_bytes = 1048576\n",
        upstream.toml("up"),
    ))
    .await;
    let (slow, seen) = stalled_reader(&proxy, "/big").await;
    let (_, length) = drain(slow, seen).await;
    assert_eq!(length, BIG);
    let again = client().get(proxy.url("/big")).send().await.unwrap();
    assert_eq!(again.bytes().await.unwrap().len(), BIG);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}
