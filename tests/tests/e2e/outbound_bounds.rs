//! Plugins' outbound HTTP (`http-client.fetch`) is bounded by the host:
//! only listed `host:port` destinations (a bare host means its default port
//! only), no loopback under another spelling or by name, no redirects
//! followed, HTTPS verified, a per-plugin concurrency cap, and a hop limit
//! that stops a plugin calling Weir itself. Driven through the test-only
//! `hostile` plugin's `fetch` mode, which reports each call's outcome in
//! `x-hostile-result`. Everything runs on 127.0.0.1, so allowed test
//! destinations are listed by literal IP, the documented escape hatch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_tests::{admin_section, client, hostile_plugin, respond, TestProxy, Upstream};

const RESULT: &str = "x-hostile-result";

/// An upstream that counts its requests and keeps the last one's headers.
struct Recording {
    upstream: Upstream,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<http::HeaderMap>>,
}

async fn recording(status: u16, delay: Duration, location: Option<String>) -> Recording {
    let hits = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(http::HeaderMap::new()));
    let upstream = {
        let (hits, last) = (hits.clone(), last.clone());
        Upstream::serve(move |req| {
            hits.fetch_add(1, Ordering::SeqCst);
            *last.lock().unwrap() = req.headers().clone();
            let location = location.clone();
            async move {
                tokio::time::sleep(delay).await;
                let mut response = respond(status, "from the destination");
                if let Some(location) = location {
                    response
                        .headers_mut()
                        .insert("location", location.parse().unwrap());
                }
                response
            }
        })
        .await
    };
    Recording {
        upstream,
        hits,
        last,
    }
}

/// A proxy whose only plugin is `hostile` in `fetch` mode: `keys` go into
/// its plugin table, `url` is its default destination.
fn fetching(keys: &str, url: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"hostile\"]\n[upstreams.up]\nendpoints = [\"127.0.0.1:9\"]\n{}url = {url:?}\n",
        hostile_plugin("hostile", "fetch", &format!("timeout_ms = 5000\n{keys}"))
    )
}

/// `GET /boom` (optionally naming the destination); the plugin's report.
async fn call(proxy: &TestProxy, url: Option<&str>) -> String {
    let mut request = client().get(proxy.url("/boom"));
    if let Some(url) = url {
        request = request.header("x-hostile-url", url);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get(RESULT)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {RESULT}"))
}

fn refused(proxy: &TestProxy, reason: &str) -> u64 {
    proxy.metrics().counter(
        "weir_plugin_outbound_refused_total",
        &[("plugin", "hostile"), ("reason", reason)],
    )
}

fn served(proxy: &TestProxy, class: &str) -> u64 {
    let wanted = format!("weir_requests_total{{status=\"{class}\"}} ");
    proxy
        .metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&wanted)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_listed_host_and_port_are_reached_and_never_loopback_by_another_name() {
    let listed = recording(200, Duration::ZERO, None).await;
    let unlisted = recording(200, Duration::ZERO, None).await;
    let a = listed.upstream.addr.port();
    let b = unlisted.upstream.addr.port();
    // "127.0.0.1" without a port means :80 only; "localhost:A" names the
    // right port, but by a name that is loopback.
    let keys = format!("allow_hosts = [\"127.0.0.1:{a}\", \"127.0.0.1\", \"localhost:{a}\"]");
    let proxy = TestProxy::start(&fetching(&keys, "http://127.0.0.1:1/")).await;

    let ok = call(&proxy, Some(&format!("http://127.0.0.1:{a}/listed"))).await;
    assert!(ok.starts_with("status=200 bytes=20"), "{ok}");
    {
        // The host's own values, not the plugin's forged ones.
        let seen = listed.last.lock().unwrap();
        assert_eq!(seen["host"], format!("127.0.0.1:{a}").as_str());
        assert_eq!(seen["weir-hop"], "1");
    }

    let port_not_listed = call(&proxy, Some(&format!("http://127.0.0.1:{b}/"))).await;
    assert!(
        port_not_listed.starts_with(&format!(
            "error=not-allowed: http://127.0.0.1:{b} is not in allow_hosts"
        )),
        "{port_not_listed}"
    );
    let by_name = call(&proxy, Some(&format!("http://localhost:{a}/"))).await;
    assert!(
        by_name.starts_with("error=not-allowed: localhost is this machine (loopback)"),
        "{by_name}"
    );
    for spelling in [
        "127.1",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "[::ffff:127.0.0.1]",
    ] {
        let report = call(&proxy, Some(&format!("http://{spelling}:{a}/"))).await;
        assert!(
            report.starts_with("error=not-allowed: ") && report.contains("write 127.0.0.1"),
            "{spelling}: {report}"
        );
    }
    // [::1] is canonical, and loopback: only listing "[::1]:A" would allow it.
    let v6 = call(&proxy, Some(&format!("http://[::1]:{a}/"))).await;
    assert!(
        v6.starts_with(&format!(
            "error=not-allowed: http://[::1]:{a} is not in allow_hosts"
        )),
        "{v6}"
    );

    assert_eq!(listed.hits.load(Ordering::SeqCst), 1);
    assert_eq!(unlisted.hits.load(Ordering::SeqCst), 0);
    assert_eq!(refused(&proxy, "not_listed"), 2);
    assert_eq!(refused(&proxy, "address"), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_allow_hosts_entries_are_refused_at_load_by_key_path() {
    let keys = "allow_hosts = [\"127.0.0.1:8080\", \"127.1:8080\", \"2130706433\", \"0x7f.1\", \"[::ffff:127.0.0.1]\", \"*.internal\"]";
    let err = match TestProxy::try_start(&fetching(keys, "http://127.0.0.1:1/")).await {
        Ok(_) => panic!("started with ambiguous allow_hosts"),
        Err(err) => err,
    };
    for i in 1..=5 {
        assert!(
            err.contains(&format!("plugins.hostile.allow_hosts[{i}]: ")),
            "[{i}]: {err}"
        );
    }
    assert!(!err.contains("allow_hosts[0]"), "{err}");
    assert!(err.contains("write 127.0.0.1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_the_admin_listener_comes_back_to_the_plugin_unfollowed() {
    // The admin address is only known once Weir runs: start, then point
    // the plugin at a destination that redirects there.
    let with_admin = |body: String| format!("{body}\n[admin]\naddress = \"127.0.0.1:0\"\n");
    let proxy = TestProxy::start(&with_admin(fetching("", "http://127.0.0.1:1/"))).await;
    let admin = proxy.admin.expect("admin listener");
    let location = format!("http://{admin}/metrics");
    let redirecting = recording(302, Duration::ZERO, Some(location.clone())).await;
    let port = redirecting.upstream.addr.port();
    proxy.rewrite(&with_admin(fetching(
        &format!(
            "allow_hosts = [\"127.0.0.1:{port}\", \"127.0.0.1:{}\"]",
            admin.port()
        ),
        &format!("http://127.0.0.1:{port}/go"),
    )));
    proxy.reload().await.unwrap();

    let report = call(&proxy, None).await;
    // Even with the admin port listed, nothing follows the 302: the plugin
    // sees it, with its Location, and the destination's own short body.
    assert_eq!(report, format!("status=302 location={location} bytes=20"));
    assert_eq!(redirecting.hits.load(Ordering::SeqCst), 1);
}

/// A call that runs past its first epoch tick holds one of the process's
/// long-running turns (`max_long_running_calls`, here 1). Waiting in a
/// callout, it must give the turn back: the callout here lands on a plugin
/// call of the same Weir that runs long too, and would otherwise wait for
/// the turn until its deadline, and fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_waiting_in_a_callout_gives_its_long_running_turn_back() {
    // Runtime settings hold from the start: the reload only points the
    // plugin at the proxy's own address.
    let spinning = |keys: &str, url: &str| {
        format!(
            "{}spin_before_ms = 30\n[runtime]\nmax_long_running_calls = 1\n",
            fetching(keys, url)
        )
    };
    let proxy = TestProxy::start(&spinning("", "http://127.0.0.1:1/")).await;
    let me = proxy.addr;
    proxy.rewrite(&spinning(
        &format!("allow_hosts = [\"{me}\"]"),
        &format!("http://{me}/boom"),
    ));
    proxy.reload().await.unwrap();
    let report = call(&proxy, None).await;
    // Hops 0, 1 and 2 each ran 30 ms, then called out; all three answered.
    assert_eq!(report.matches("status=200").count(), 3, "{report}");
    assert!(report.contains("the limit is 3"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_calling_weir_itself_is_cut_off_by_the_hop_limit() {
    let proxy = TestProxy::start(&fetching("", "http://127.0.0.1:1/")).await;
    let me = proxy.addr;
    proxy.rewrite(&fetching(
        &format!("allow_hosts = [\"{me}\"]"),
        &format!("http://{me}/boom"),
    ));
    proxy.reload().await.unwrap();

    let report = call(&proxy, None).await;
    // The client's request (hop 0) led to callouts at hops 1, 2 and 3; the
    // plugin serving hop 3 was refused before it could make a fourth.
    assert_eq!(report.matches("status=200").count(), 3, "{report}");
    assert!(
        report.ends_with("inner=[error=not-allowed: the request being served is already 3 plugin callouts deep (the limit is 3): is a plugin calling Weir itself?]]]"),
        "{report}"
    );
    assert_eq!(served(&proxy, "2xx"), 4);
    assert_eq!(refused(&proxy, "hop_limit"), 1);

    // A request arriving deeper than the limit (another Weir, a forged
    // header) is refused before any plugin runs.
    let deep = client()
        .get(proxy.url("/boom"))
        .header("weir-hop", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), 508);
    assert_eq!(
        deep.text().await.unwrap(),
        "508 Loop Detected: loop detected\n"
    );
    let garbled = client()
        .get(proxy.url("/boom"))
        .header("weir-hop", "lots")
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), 400);
    assert_eq!(served(&proxy, "2xx"), 4, "no plugin ran for either");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_beyond_the_concurrency_cap_fail_at_once_and_are_counted() {
    let slow = recording(200, Duration::from_millis(1500), None).await;
    let port = slow.upstream.addr.port();
    let proxy = TestProxy::start(&fetching(
        &format!("allow_hosts = [\"127.0.0.1:{port}\"]\nmax_outbound_concurrency = 1"),
        &format!("http://127.0.0.1:{port}/slow"),
    ))
    .await;
    let proxy = Arc::new(proxy);
    let mut calls = Vec::new();
    for _ in 0..4 {
        let proxy = proxy.clone();
        calls.push(tokio::spawn(async move { call(&proxy, None).await }));
    }
    let mut reports = Vec::new();
    for handle in calls {
        reports.push(handle.await.unwrap());
    }
    let through = reports
        .iter()
        .filter(|r| r.starts_with("status=200"))
        .count();
    let capped = reports
        .iter()
        .filter(|r| r.contains("outbound calls already in flight (max_outbound_concurrency)"))
        .count();
    assert!(through >= 1 && capped >= 1, "{reports:?}");
    assert_eq!(through + capped, 4, "{reports:?}");
    assert_eq!(slow.hits.load(Ordering::SeqCst), through);
    assert_eq!(refused(&proxy, "concurrency"), capped as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_plugin_instances_is_a_counted_503() {
    // The test runtime allows 64 instances; each call below holds one
    // while its callout waits on a slow destination.
    let slow = recording(200, Duration::from_millis(2000), None).await;
    let port = slow.upstream.addr.port();
    let proxy = Arc::new(
        TestProxy::start(&fetching(
            &format!("allow_hosts = [\"127.0.0.1:{port}\"]\nmax_outbound_concurrency = 1024"),
            &format!("http://127.0.0.1:{port}/slow"),
        ))
        .await,
    );
    let mut calls = Vec::new();
    for _ in 0..72 {
        let proxy = proxy.clone();
        calls.push(tokio::spawn(async move {
            let response = client().get(proxy.url("/boom")).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    let mut exhausted = 0;
    for handle in calls {
        let (status, body) = handle.await.unwrap();
        match (status, body.as_str()) {
            (503, "503 Service Unavailable: plugin capacity exhausted\n") => exhausted += 1,
            (200, _) => {}
            // On a machine busy enough, a call holding an instance runs
            // past its deadline: a failure, but not the one counted here.
            (503, "503 Service Unavailable: plugin timed out\n") => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(exhausted >= 1, "72 calls fit in 64 instances?");
    let counted = proxy.metrics().counter(
        "weir_plugin_errors_total",
        &[("plugin", "hostile"), ("kind", "overload")],
    );
    assert_eq!(counted, exhausted);
}

/// A test CA and a certificate for 127.0.0.1 it signed: (CA PEM, cert
/// PEM, key PEM).
fn ca_and_leaf() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Outbound Test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// An HTTPS destination on 127.0.0.1 answering 200 "secure".
async fn https_destination(cert: &str, key: &str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(respond(200, "secure"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn https_callouts_are_verified_against_the_outbound_ca() {
    let (ca, cert, key) = ca_and_leaf();
    let addr = https_destination(&cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let url = format!("https://{addr}/");
    // Two copies of the plugin: `trusting` knows the CA, `default` has
    // only the system roots.
    let plugin = |name: &str, ca_key: &str| {
        format!(
            "{}url = {url:?}\ntrigger_prefix = \"/{name}\"\n",
            hostile_plugin(
                name,
                "fetch",
                &format!("timeout_ms = 5000\nallow_hosts = [\"https://{addr}\"]\n{ca_key}")
            )
        )
    };
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\nchain = [\"trusting\", \"default\"]\n[upstreams.up]\nendpoints = [\"127.0.0.1:9\"]\n{}{}",
        plugin("trusting", &format!("outbound_ca = {:?}", ca_file.display().to_string())),
        plugin("default", "")
    ))
    .await;
    let report = |path: &'static str, url: Option<String>| {
        let proxy = &proxy;
        async move {
            let mut request = client().get(proxy.url(path));
            if let Some(url) = url {
                request = request.header("x-hostile-url", url);
            }
            let response = request.send().await.unwrap();
            response.headers()[RESULT].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(report("/trusting", None).await, "status=200 bytes=6");
    let untrusted = report("/default", None).await;
    assert!(
        untrusted.starts_with("error=connect: TLS handshake with"),
        "{untrusted}"
    );
    // The entry says https: plain http to the same host and port is not it.
    let plain = report("/trusting", Some(format!("http://{addr}/"))).await;
    assert!(
        plain.starts_with(&format!(
            "error=not-allowed: http://{addr} is not in allow_hosts"
        )),
        "{plain}"
    );
}

/// Time a call spends waiting in a callout is not time it ran: a plugin
/// whose every call waits 30 ms on the network (30 epoch ticks) is not
/// taken for a long-running one, so its calls neither queue for a turn
/// nor leave the request workers.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_waits_on_a_callout_is_not_long_running() {
    let slow = recording(200, Duration::from_millis(30), None).await;
    let port = slow.upstream.addr.port();
    let proxy = TestProxy::start(&format!(
        "{}{}",
        fetching(
            &format!("allow_hosts = [\"127.0.0.1:{port}\"]"),
            &format!("http://127.0.0.1:{port}/slow"),
        ),
        admin_section(),
    ))
    .await;
    for _ in 0..6 {
        let report = call(&proxy, None).await;
        assert!(report.starts_with("status=200"), "{report}");
    }
    let hostile = proxy.plugin_status("hostile").await;
    assert_eq!(hostile["long_running"], false, "{hostile}");
}
