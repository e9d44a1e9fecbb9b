//! One request, one truth: the host canonicalises the path and authority
//! before any plugin runs, and what a plugin saw is exactly what the
//! upstream receives. Driven with raw bytes (client libraries clean paths
//! up themselves) over HTTP/1.1, absolute-form, and HTTP/2 `:path`.

use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use weir_tests::{artifacts, client, echo_json, echoed_header, raw_exchange, TestProxy, Upstream};

/// What the host makes of a path: served as this canonical path, or 400.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Serve(&'static str),
    Refuse,
}
use Expect::{Refuse, Serve};

/// Path shapes, as sent, and what the host must make of them (the default
/// `[proxy]`: merge slashes, reject ambiguous forms).
const SHAPES: &[(&str, Expect)] = &[
    ("/", Serve("/")),
    ("/a", Serve("/a")),
    ("/a/", Serve("/a/")),
    ("//a", Serve("/a")),
    ("/a//b", Serve("/a/b")),
    ("/a///b//", Serve("/a/b/")),
    ("/./a", Serve("/a")),
    ("/a/./b", Serve("/a/b")),
    ("/a/.", Serve("/a/")),
    ("/a/../b", Serve("/b")),
    ("/a/b/..", Serve("/a/")),
    ("/../a", Serve("/a")),
    ("/../../a", Serve("/a")),
    ("/a/../../b", Serve("/b")),
    ("/anything//../health", Serve("/health")),
    ("/a//../b", Serve("/b")),
    ("/a/..//b", Serve("/b")),
    ("/%2e/a", Serve("/a")),
    ("/%2e%2e/a", Serve("/a")),
    ("/x/%2E%2E/admin", Serve("/admin")),
    ("/x/.%2e/admin", Serve("/admin")),
    ("/x/%2e./admin", Serve("/admin")),
    ("/public/%2e%2e/admin/x", Serve("/admin/x")),
    ("/health/../admin", Serve("/admin")),
    ("/health/./../admin/", Serve("/admin/")),
    ("/%61dmin", Serve("/admin")),
    ("/%41dmin", Serve("/Admin")),
    ("/%61%64%6d%69%6e/x", Serve("/admin/x")),
    ("/a%7eb", Serve("/a~b")),
    ("/a%2db%5fc", Serve("/a-b_c")),
    ("/caf%c3%a9", Serve("/caf%C3%A9")),
    ("/a%20b", Serve("/a%20b")),
    ("/a%3fb", Serve("/a%3Fb")),
    ("/a%23b", Serve("/a%23b")),
    ("/100%25", Serve("/100%25")),
    ("/a..b", Serve("/a..b")),
    ("/..a/b..", Serve("/..a/b..")),
    ("/a/...", Serve("/a/...")),
    ("/a:b@c", Serve("/a:b@c")),
    ("/a!$&'()*+,=b", Serve("/a!$&'()*+,=b")),
    ("//internal/x", Serve("/internal/x")),
    ("/x/../internal/x", Serve("/internal/x")),
    ("/internal/../internal/x", Serve("/internal/x")),
    ("/a/b/c/../../d", Serve("/a/d")),
    ("/A/B", Serve("/A/B")),
    ("/health/..;/anything", Refuse),
    ("/admin;/x", Refuse),
    ("/admin;jsessionid=1/x", Refuse),
    ("/..;/admin", Refuse),
    ("/a/.;/b", Refuse),
    ("/internal;/x", Refuse),
    ("/admin%2fx", Refuse),
    ("/%2fadmin/x", Refuse),
    ("/%2Fadmin/x", Refuse),
    ("/health/..%2fanything", Refuse),
    ("/health/%2e%2e%2fadmin", Refuse),
    ("/a%2F..%2Fadmin", Refuse),
    ("/a%5cb", Refuse),
    ("/a%5C..%5Cadmin", Refuse),
    ("/x\\..\\admin/x", Refuse),
    ("/%2561dmin/x", Refuse),
    ("/%252e%252e/admin", Refuse),
    ("/a%252fb", Refuse),
    ("/a%00b", Refuse),
    ("/a%0d%0aX-Injected:%201", Refuse),
    ("/a%1fb", Refuse),
    ("/a%7f", Refuse),
    ("/a%zz", Refuse),
    ("/a%4", Refuse),
    ("/a%", Refuse),
];

/// A raw HTTP/1.1 exchange: status, and the body once unchunked.
async fn raw_get(addr: SocketAddr, target: &str, host: &str, extra: &str) -> (u16, String) {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    let answer = raw_exchange(addr, request.as_bytes()).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            unchunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

fn inspected(echo: &serde_json::Value, fact: &str) -> String {
    echoed_header(echo, &format!("x-inspect-{fact}")).join(",")
}

fn inspector_only(upstream: &Upstream, proxy_section: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"inspector\"]\n{}\n[plugins.inspector]\nfile = {:?}\n{proxy_section}",
        upstream.toml("up"),
        artifacts::INSPECTOR
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_path_shape_is_canonical_and_the_plugin_sees_what_the_upstream_gets() {
    assert!(SHAPES.len() >= 60, "{} shapes", SHAPES.len());
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&inspector_only(&upstream, "")).await;
    let host = proxy.addr.to_string();
    for &(raw, expect) in SHAPES {
        let (status, body) = raw_get(proxy.addr, raw, &host, "").await;
        match expect {
            Serve(canonical) => {
                assert_eq!(status, 200, "{raw:?}: {body}");
                let echo = echo_json(&body);
                assert_eq!(echo["path"], canonical, "{raw:?}: upstream path");
                assert_eq!(inspected(&echo, "path"), canonical, "{raw:?}: plugin path");
            }
            Refuse => {
                assert_eq!(status, 400, "{raw:?} was not refused: {body}");
                assert!(!body.contains(raw), "{raw:?}: the refusal echoes the path");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_query_is_forwarded_untouched() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&inspector_only(&upstream, "")).await;
    let (status, body) = raw_get(
        proxy.addr,
        "/a/../b?x=1/../y&%2F",
        &proxy.addr.to_string(),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo = echo_json(&body);
    assert_eq!(echo["path"], "/b");
    assert_eq!(echo["query"], "x=1/../y&%2F");
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// auth (everything but `/health` needs a key; `/admin` needs scope
/// `admin`), then router (`/internal/**` answered 404), then the inspector.
fn guarded(upstream: &Upstream) -> String {
    format!(
        r#"default_upstream = "up"
chain = ["auth", "router", "inspector"]
{up}
[plugins.inspector]
file = {inspector:?}

[plugins.auth]
file = {auth:?}
[plugins.auth.config]
methods = ["api_key"]
public_prefixes = ["/health"]
identity_header = "x-user"
strip_credentials = true
rules = [{{ prefix = "/admin", scopes = ["admin"] }}]
api_key = {{ header = "x-api-key", keys = [{{ sha256 = {reader:?}, user = "reader", scopes = ["read"] }}] }}

[plugins.router]
file = {router:?}
[plugins.router.config]
default_upstream = "up"
[[plugins.router.config.rules]]
name = "blocked"
path_pattern = "/internal/**"
respond = {{ status = 404, body = "not found" }}
"#,
        up = upstream.toml("up"),
        inspector = artifacts::INSPECTOR,
        auth = artifacts::AUTH,
        router = artifacts::ROUTER,
        reader = sha256_hex("reader-key"),
    )
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// Every shape, plus its upper-case and prefix-dodging variants, against
/// policies: nothing reaches the upstream beyond what the policies allow,
/// and whatever passes reached it with the path the plugins judged.
#[tokio::test(flavor = "multi_thread")]
async fn no_path_shape_walks_around_auth_scopes_or_a_router_deny_rule() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&guarded(&upstream)).await;
    let host = proxy.addr.to_string();
    let mut targets: Vec<String> = SHAPES.iter().map(|(raw, _)| raw.to_string()).collect();
    for base in ["/admin/x", "/internal/x"] {
        for prefix in [
            "",
            "/",
            "//",
            "/health/..",
            "/health//..",
            "/x/%2e%2e",
            "/health/%2e%2e/",
        ] {
            targets.push(format!("{prefix}{base}"));
        }
    }
    let mut passed = 0;
    for target in &targets {
        for key in [None, Some("reader-key")] {
            let extra = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
            let (status, body) = raw_get(proxy.addr, target, &host, &extra).await;
            if status != 200 {
                assert!(
                    [400, 401, 403, 404].contains(&status),
                    "{target:?} key={key:?}: {status} {body}"
                );
                continue;
            }
            passed += 1;
            let echo = echo_json(&body);
            let path = echo["path"].as_str().expect("echoed path").to_owned();
            assert_eq!(inspected(&echo, "path"), path, "{target:?}");
            match key {
                None => assert!(
                    under(&path, "/health"),
                    "{target:?} reached {path} without a key"
                ),
                Some(_) => {
                    assert!(
                        !under(&path, "/admin"),
                        "{target:?} reached {path} without the scope"
                    );
                    assert!(
                        !under(&path, "/internal"),
                        "{target:?} passed the deny rule to {path}"
                    );
                }
            }
        }
    }
    // The table is not all refusals: the policies let the rest through.
    assert!(passed >= 30, "only {passed} requests passed");
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_takes_its_authority_over_host() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&inspector_only(&upstream, "")).await;
    let (status, body) = raw_get(
        proxy.addr,
        "http://Other.Example:80/a/../b",
        "a.example",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo = echo_json(&body);
    assert_eq!(inspected(&echo, "authority"), "other.example");
    assert_eq!(inspected(&echo, "host-header"), "other.example");
    assert_eq!(echoed_header(&echo, "host"), ["other.example"]);
    assert_eq!(echo["path"], "/b");
    assert_eq!(inspected(&echo, "path"), "/b");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_authority_is_validated_and_normalised() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&inspector_only(&upstream, "")).await;
    for (host, expect) in [
        ("API.Example.COM", Some("api.example.com")),
        ("api.example.com:80", Some("api.example.com")),
        ("api.example.com:8080", Some("api.example.com:8080")),
        ("[::1]:8080", Some("[::1]:8080")),
        ("10.1.2.3", Some("10.1.2.3")),
        ("a.example/evil", None),
        ("user@a.example", None),
        ("a.example:99999", None),
        ("a.example:", None),
        ("a%2eexample", None),
        ("", None),
    ] {
        let (status, body) = raw_get(proxy.addr, "/", host, "").await;
        match expect {
            Some(normalised) => {
                assert_eq!(status, 200, "{host:?}: {body}");
                let echo = echo_json(&body);
                assert_eq!(inspected(&echo, "authority"), normalised, "{host:?}");
                assert_eq!(echoed_header(&echo, "host"), [normalised], "{host:?}");
            }
            None => assert_eq!(status, 400, "{host:?} accepted: {body}"),
        }
    }
    let twice =
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(proxy.addr, twice).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// HTTP/2 carries the path in `:path`, with no client-side cleaning: send
/// it with the h2 crate as written.
async fn h2_get(addr: SocketAddr, path: &str, host: Option<&str>) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut request = http::Request::builder().uri(format!("http://{addr}{path}"));
    if let Some(host) = host {
        request = request.header("host", host);
    }
    let (response, _) = h2
        .send_request(request.body(()).expect("request"), true)
        .expect("send");
    let response = response.await.expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_paths_get_the_same_canonical_view() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&inspector_only(&upstream, "")).await;
    let (status, body) = h2_get(proxy.addr, "/x//..//health/./%61", None).await;
    assert_eq!(status, 200, "{body}");
    let echo = echo_json(&body);
    assert_eq!(echo["path"], "/health/a");
    assert_eq!(inspected(&echo, "path"), "/health/a");
    assert_eq!(inspected(&echo, "http-version"), "2");
    for refused in ["/admin%2fx", "/health/..;/admin", "/%2561"] {
        let (status, body) = h2_get(proxy.addr, refused, None).await;
        assert_eq!(status, 400, "{refused:?}: {body}");
    }
    // A Host naming another authority than :authority is malformed.
    let (status, _) = h2_get(proxy.addr, "/", Some("elsewhere.example")).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_paths_can_be_kept_or_redirected_instead() {
    let upstream = Upstream::echo().await;
    let keep = TestProxy::start(&inspector_only(
        &upstream,
        "[proxy]\nambiguous_paths = \"keep\"\nmerge_slashes = false\n",
    ))
    .await;
    let (status, body) = raw_get(keep.addr, "/a%2fb//c/./d", &keep.addr.to_string(), "").await;
    assert_eq!(status, 200, "{body}");
    let echo = echo_json(&body);
    assert_eq!(echo["path"], "/a%2Fb//c/d");
    assert_eq!(inspected(&echo, "path"), "/a%2Fb//c/d");
    // Controls are refused whatever the action.
    let (status, _) = raw_get(keep.addr, "/a%00", &keep.addr.to_string(), "").await;
    assert_eq!(status, 400);

    let redirect = TestProxy::start(&inspector_only(
        &upstream,
        "[proxy]\nambiguous_paths = \"redirect\"\n",
    ))
    .await;
    let request = format!(
        "GET /health/..;/admin%2fx?q=1 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        redirect.addr
    );
    let answer = raw_exchange(redirect.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nlocation: /admin/x?q=1\r\n"),
        "{answer}"
    );
}

/// From a peer that is not a trusted proxy, no forwarding or identity
/// claim reaches a plugin or the upstream; underscore twins of headers are
/// dropped.
#[tokio::test(flavor = "multi_thread")]
async fn client_sent_forwarding_and_identity_headers_are_removed() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&inspector_only(&upstream, "")).await;
    let claims = [
        ("forwarded", "for=203.0.113.7;proto=https"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "admin.example"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-real-ip", "203.0.113.7"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-client-cert", "forged"),
        ("x-forwarded-client-cert", "By=spiffe://forged"),
        ("x-ssl-client-dn", "CN=admin"),
        ("x-ssl-client-verify", "SUCCESS"),
        ("x_user", "admin"),
    ];
    let mut request = client().get(proxy.url("/"));
    for (name, value) in claims {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_json(&response.text().await.unwrap());
    for (name, _) in claims {
        let seen = echoed_header(&echo, name);
        match name {
            // Set afresh by Weir, from what it knows.
            "x-forwarded-for" => assert_eq!(seen, ["127.0.0.1"]),
            "x-forwarded-proto" => assert_eq!(seen, ["http"]),
            "x-forwarded-host" => assert_eq!(seen, [proxy.addr.to_string()]),
            _ => assert!(seen.is_empty(), "{name} reached the upstream: {seen:?}"),
        }
    }
    assert!(inspected(&echo, "client").starts_with("127.0.0.1:"));

    let reject = TestProxy::start(&inspector_only(
        &upstream,
        "[proxy]\nheaders_with_underscores = \"reject\"\n",
    ))
    .await;
    let response = client()
        .get(reject.url("/"))
        .header("x_user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let allow = TestProxy::start(&inspector_only(
        &upstream,
        "[proxy]\nheaders_with_underscores = \"allow\"\n",
    ))
    .await;
    let response = client()
        .get(allow.url("/"))
        .header("x_user", "admin")
        .send()
        .await
        .unwrap();
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x_user"), ["admin"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxy_names_the_client_and_keeps_its_headers() {
    let upstream = Upstream::echo().await;
    let one_hop = TestProxy::start(&inspector_only(
        &upstream,
        "[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    ))
    .await;
    let response = client()
        .get(one_hop.url("/"))
        .header("x-forwarded-for", "198.51.100.1, 10.9.9.9")
        .header("x-forwarded-proto", "https")
        .header("x-real-ip", "10.9.9.9")
        .send()
        .await
        .unwrap();
    let echo = echo_json(&response.text().await.unwrap());
    // 10.9.9.9 is the nearest hop Weir does not trust: that is the client.
    assert_eq!(inspected(&echo, "client"), "10.9.9.9:0");
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for"),
        ["198.51.100.1, 10.9.9.9, 127.0.0.1"]
    );
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), ["https"]);
    assert_eq!(echoed_header(&echo, "x-real-ip"), ["10.9.9.9"]);

    let two_hops = TestProxy::start(&inspector_only(
        &upstream,
        "[proxy]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
    ))
    .await;
    let response = client()
        .get(two_hops.url("/"))
        .header("x-forwarded-for", "198.51.100.1, 10.9.9.9")
        .send()
        .await
        .unwrap();
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(inspected(&echo, "client"), "198.51.100.1:0");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_trust_switch_is_refused_with_its_replacement_named() {
    let upstream = Upstream::echo().await;
    let err = match TestProxy::try_start(&inspector_only(
        &upstream,
        "[proxy]\ntrust_forwarded_headers = true\n",
    ))
    .await
    {
        Ok(_) => panic!("the removed key was accepted"),
        Err(err) => err,
    };
    assert!(err.contains("proxy.trust_forwarded_headers"), "{err}");
    assert!(err.contains("trusted_proxies"), "{err}");
}

/// A path a plugin sets is canonicalised like the client's, and an
/// ambiguous one fails the plugin's call; the next plugin and the upstream
/// see the same canonical path.
#[tokio::test(flavor = "multi_thread")]
async fn a_path_a_plugin_sets_is_canonicalised_or_refused() {
    let upstream = Upstream::echo().await;
    let config = |path: &str| {
        format!(
            "default_upstream = \"up\"\nchain = [\"rewrite\", \"inspector\"]\n{}\n[plugins.inspector]\nfile = {:?}\n\
             [plugins.rewrite]\nfile = {:?}\n[plugins.rewrite.config]\nmode = \"set-path\"\ntrigger_prefix = \"/\"\npath = {path:?}\n",
            upstream.toml("up"),
            artifacts::INSPECTOR,
            artifacts::HOSTILE,
        )
    };
    let proxy = TestProxy::start(&config("/a/./b//c/../%7ed")).await;
    let response = client().get(proxy.url("/anything")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echo["path"], "/a/b/~d");
    assert_eq!(inspected(&echo, "path"), "/a/b/~d");

    for ambiguous in ["/admin%2fx", "/x/..;/admin", "/a\\b"] {
        let proxy = TestProxy::start(&config(ambiguous)).await;
        let response = client().get(proxy.url("/anything")).send().await.unwrap();
        assert_eq!(response.status(), 500, "{ambiguous:?}");
    }
}
