//! The outbound rules without a plugin: how allow-list entries and hosts
//! are read, how addresses are classified, which `[plugins.NAME]` keys are
//! refused, and what the client refuses before (and without) connecting.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

fn host(text: &str) -> Host {
    parse_host(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn entry(text: &str) -> AllowEntry {
    AllowEntry::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn a_bare_host_allows_only_each_schemes_default_port() {
    let bare = entry("api.example.com");
    let name = host("api.example.com");
    assert!(bare.allows(Scheme::Http, &name, 80));
    assert!(bare.allows(Scheme::Https, &name, 443));
    for port in [8080, 9901, 443] {
        assert!(!bare.allows(Scheme::Http, &name, port), "http:{port}");
    }
    assert!(!bare.allows(Scheme::Https, &name, 80));
    assert!(!bare.allows(Scheme::Http, &host("other.example.com"), 80));
}

#[test]
fn a_port_allows_both_schemes_on_that_port_only() {
    let with_port = entry("api.example.com:8443");
    let name = host("api.example.com");
    assert!(with_port.allows(Scheme::Http, &name, 8443));
    assert!(with_port.allows(Scheme::Https, &name, 8443));
    assert!(!with_port.allows(Scheme::Https, &name, 443));
}

#[test]
fn a_scheme_restricts_the_entry_to_it() {
    let https = entry("https://api.example.com");
    let name = host("api.example.com");
    assert!(https.allows(Scheme::Https, &name, 443));
    assert!(!https.allows(Scheme::Http, &name, 443));
    assert!(!https.allows(Scheme::Http, &name, 80));
    let http = entry("HTTP://10.0.0.5:8080");
    assert_eq!(http.scheme, Some(Scheme::Http));
    assert!(http.allows(Scheme::Http, &Host::Ip(ip("10.0.0.5")), 8080));
    assert_eq!(http.to_string(), "http://10.0.0.5:8080");
}

#[test]
fn names_are_case_insensitive_and_ipv6_is_bracketed() {
    assert_eq!(entry("API.Example.COM").host, host("api.example.com"));
    let v6 = entry("[2001:db8::1]:443");
    assert_eq!(v6.host, Host::Ip(ip("2001:db8::1")));
    assert_eq!(v6.port, Some(443));
    assert_eq!(entry("[::1]").to_string(), "[::1]");
}

#[test]
fn bad_entries_say_what_to_write() {
    for (text, expected) in [
        ("127.1", "write 127.0.0.1"),
        ("2130706433:8080", "write 127.0.0.1"),
        ("0x7f.1", "write 127.0.0.1"),
        ("0177.0.0.1", "write 127.0.0.1"),
        ("127.0.0.1.", "write 127.0.0.1"),
        ("[::ffff:127.0.0.1]:80", "write 127.0.0.1"),
        ("[::127.0.0.1]", "write 127.0.0.1"),
        ("[0:0:0:0:0:0:0:1]", "write [::1]"),
        ("[::1", "unclosed"),
        ("::1", "brackets"),
        ("*.example.com", "wildcards"),
        ("example.com/path", "without a path"),
        ("user@example.com", "credentials"),
        ("ftp://example.com", "not supported"),
        ("example.com:0", "1-65535"),
        ("example.com:70000", "1-65535"),
        ("example.com:+80", "1-65535"),
        ("example.com:", "1-65535"),
        ("exa mple.com", "not a host name"),
        ("a..b", "not a host name"),
        ("", "not a host name"),
        ("1.2.3.4.5", "not a valid IPv4"),
        ("256.0.0.1", "not a valid IPv4"),
        ("0.0.0.0:80", "not a destination"),
        ("[::]", "not a destination"),
        ("224.0.0.1", "not a destination"),
        ("255.255.255.255", "not a destination"),
    ] {
        match AllowEntry::parse(text) {
            Ok(parsed) => panic!("{text:?} accepted as {parsed}"),
            Err(why) => assert!(why.contains(expected), "{text:?}: {why}"),
        }
    }
}

#[test]
fn every_legacy_spelling_of_loopback_is_read_as_127_0_0_1() {
    for spelling in [
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "0x7F.0.0.1",
        "0177.0.0.1",
        "017700000001",
        "127.0.0.1.",
        "127.000.000.001",
    ] {
        match parse_host(spelling) {
            Err(HostError::NonCanonical { canonical, .. }) => {
                assert_eq!(canonical, Host::Ip(ip("127.0.0.1")), "{spelling}")
            }
            other => panic!("{spelling}: {other:?}"),
        }
    }
    assert_eq!(host("127.0.0.1"), Host::Ip(ip("127.0.0.1")));
}

#[test]
fn ipv6_spellings_of_ipv4_are_refused_and_v6_must_be_canonical() {
    for spelling in ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]"] {
        match parse_host(spelling) {
            Err(HostError::EmbedsV4 { v4, .. }) => {
                assert_eq!(v4, Ipv4Addr::LOCALHOST, "{spelling}")
            }
            other => panic!("{spelling}: {other:?}"),
        }
    }
    assert!(matches!(
        parse_host("[::0:1]"),
        Err(HostError::NonCanonical { .. })
    ));
    assert!(matches!(
        parse_host("[::1%lo]"),
        Err(HostError::Invalid { .. })
    ));
    assert_eq!(host("[::1]"), Host::Ip(ip("::1")));
}

#[test]
fn names_that_are_not_numbers_stay_names() {
    assert_eq!(host("1.example"), Host::Name("1.example".into()));
    assert_eq!(host("0x7f.example"), Host::Name("0x7f.example".into()));
    assert_eq!(
        host("auth_svc.internal"),
        Host::Name("auth_svc.internal".into())
    );
    assert!(matches!(
        parse_host("example.123"),
        Err(HostError::Invalid { .. })
    ));
}

#[test]
fn loopback_private_link_local_and_cgnat_are_not_public() {
    for (text, class) in [
        ("127.0.0.1", Class::Loopback),
        ("127.255.0.9", Class::Loopback),
        ("::1", Class::Loopback),
        ("10.1.2.3", Class::Private),
        ("172.16.0.1", Class::Private),
        ("172.31.255.255", Class::Private),
        ("192.168.1.1", Class::Private),
        ("fc00::1", Class::Private),
        ("fd12:3456::1", Class::Private),
        ("fec0::1", Class::Private),
        ("169.254.169.254", Class::LinkLocal),
        ("fe80::1", Class::LinkLocal),
        ("0.0.0.0", Class::Unspecified),
        ("0.1.2.3", Class::Unspecified),
        ("::", Class::Unspecified),
        ("100.64.0.1", Class::SharedNat),
        ("100.127.255.255", Class::SharedNat),
        ("224.0.0.1", Class::NotUnicast),
        ("255.255.255.255", Class::NotUnicast),
        ("ff02::1", Class::NotUnicast),
    ] {
        assert_eq!(classify(ip(text)), class, "{text}");
    }
}

#[test]
fn ipv6_forms_of_ipv4_are_judged_as_the_ipv4_address() {
    for (text, class) in [
        ("::ffff:127.0.0.1", Class::Loopback),
        ("::ffff:10.0.0.1", Class::Private),
        ("::ffff:169.254.169.254", Class::LinkLocal),
        ("::ffff:100.64.1.1", Class::SharedNat),
        ("::ffff:0.0.0.0", Class::Unspecified),
        ("::127.0.0.1", Class::Loopback),
        ("64:ff9b::10.0.0.1", Class::Private),
        ("64:ff9b::127.0.0.1", Class::Loopback),
        ("::ffff:8.8.8.8", Class::Public),
    ] {
        assert_eq!(classify(ip(text)), class, "{text}");
    }
}

#[test]
fn public_addresses_are_public() {
    for text in [
        "8.8.8.8",
        "1.1.1.1",
        "172.15.255.255",
        "172.32.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "169.253.0.1",
        "2606:4700::1111",
        "2001:db8::1",
    ] {
        assert_eq!(classify(ip(text)), Class::Public, "{text}");
    }
}

#[test]
fn own_listeners_match_by_address_and_wildcard_binds_by_local_address() {
    let own = OwnListeners::default();
    let proxy: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let admin: SocketAddr = "0.0.0.0:9901".parse().unwrap();
    own.set(vec![proxy, admin]);
    assert!(own.contains(proxy));
    assert!(own.contains("[::ffff:127.0.0.1]:8080".parse().unwrap()));
    assert!(!own.contains("127.0.0.1:8081".parse().unwrap()));
    assert!(!own.contains("10.9.9.9:8080".parse().unwrap()));
    // 0.0.0.0 is reached through any address of this machine...
    assert!(own.contains("127.0.0.1:9901".parse().unwrap()));
    // ...but not through another machine's.
    assert!(!own.contains("192.0.2.1:9901".parse().unwrap()));
}

#[test]
fn hop_header_is_read_removed_and_bounded() {
    let mut headers = HeaderMap::new();
    assert_eq!(take_hops(&mut headers).unwrap(), 0);
    headers.insert(HOP_HEADER, HeaderValue::from_static("2"));
    assert_eq!(take_hops(&mut headers).unwrap(), 2);
    assert!(!headers.contains_key(HOP_HEADER), "removed");
    headers.insert(HOP_HEADER, HeaderValue::from_static("1, 3"));
    assert_eq!(take_hops(&mut headers).unwrap(), 3);
    headers.insert(HOP_HEADER, HeaderValue::from_static("4"));
    assert!(matches!(
        take_hops(&mut headers),
        Err(ProxyError::LoopDetected { hops: 4, .. })
    ));
    for bad in ["x", "-1", "", "99999999999999999999999"] {
        headers.insert(HOP_HEADER, HeaderValue::from_static(bad));
        assert!(
            matches!(take_hops(&mut headers), Err(ProxyError::BadRequest(_))),
            "{bad:?}"
        );
    }
}

/// `[plugins.p]` with these extra keys; the plugin file need not exist
/// for the outbound keys to be checked.
fn config_errors(extra: &str) -> String {
    let text = format!(
        "chain = [\"p\"]\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[plugins.p]\nfile = \"p.wasm\"\n{extra}\n"
    );
    match crate::config::Config::parse(Path::new("/etc/weir/proxy.toml"), &text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn config_errors_name_the_entry_and_its_line() {
    let errors = config_errors(
        "allow_hosts = [\n  \"api.example.com\",\n  \"127.1:8080\",\n  \"*.example.com\",\n]",
    );
    assert!(
        errors.contains(
            "proxy.toml:8: plugins.p.allow_hosts[1]: \"127.1\" is a non-canonical spelling"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("proxy.toml:9: plugins.p.allow_hosts[2]:"),
        "{errors}"
    );
    assert!(!errors.contains("allow_hosts[0]"), "{errors}");
}

#[test]
fn config_ranges_are_checked() {
    let errors = config_errors(
        "max_outbound_concurrency = 0\noutbound_timeout_ms = 600000\nmax_outbound_response_bytes = 0\noutbound_ca = \"missing-ca.pem\"",
    );
    for expected in [
        "plugins.p.max_outbound_concurrency: 0 is outside 1..=1024",
        "plugins.p.outbound_timeout_ms: 600000 is outside 1..=60000",
        "plugins.p.max_outbound_response_bytes: 0 is outside 1..=67108864",
        "plugins.p.outbound_ca: no such file /etc/weir/missing-ca.pem",
    ] {
        assert!(errors.contains(expected), "{expected}\n{errors}");
    }
}

fn client(allow: &[&str], max_concurrency: usize) -> (Client, Metrics) {
    let metrics = Metrics::default();
    let settings = Settings {
        allow: allow.iter().map(|e| entry(e)).collect(),
        max_concurrency,
        timeout: Duration::from_secs(5),
        ..Settings::default()
    };
    let client = Client::new("p", &settings, OwnListeners::default(), metrics.clone())
        .expect("client without TLS");
    (client, metrics)
}

fn get(url: &str) -> OutboundRequest {
    OutboundRequest {
        method: "GET".into(),
        url: url.into(),
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: None,
    }
}

fn refused(metrics: &Metrics, reason: &str) -> u64 {
    metrics.counter(
        "weir_plugin_outbound_refused_total",
        &[("plugin", "p"), ("reason", reason)],
    )
}

fn not_allowed(result: Result<OutboundResponse, FetchError>) -> String {
    match result {
        Err(FetchError::NotAllowed(why)) => why,
        Err(other) => panic!("expected not-allowed, got {other:?}"),
        Ok(response) => panic!("expected not-allowed, got {}", response.status),
    }
}

#[tokio::test]
async fn refusals_happen_before_connecting_and_are_counted() {
    let (client, metrics) = client(&["http://localhost:1", "http://127.0.0.1:1"], 4);
    let why = not_allowed(client.fetch(get("http://127.0.0.1:2/"), 0).await);
    assert!(
        why.contains("http://127.0.0.1:2 is not in allow_hosts"),
        "{why}"
    );
    let why = not_allowed(client.fetch(get("http://localhost:1/"), 0).await);
    assert!(why.contains("loopback"), "{why}");
    for spelling in ["127.1", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]"] {
        let why = not_allowed(client.fetch(get(&format!("http://{spelling}:1/")), 0).await);
        assert!(why.contains("127.0.0.1"), "{spelling}: {why}");
    }
    let why = not_allowed(client.fetch(get("http://[::1]:1/"), 0).await);
    assert!(why.contains("not in allow_hosts"), "{why}");
    let why = not_allowed(client.fetch(get("https://127.0.0.1:1/"), 0).await);
    assert!(why.contains("https://127.0.0.1:1 is not"), "{why}");
    let why = not_allowed(client.fetch(get("http://127.0.0.1:1/"), MAX_HOPS).await);
    assert!(why.contains("callouts deep"), "{why}");
    assert_eq!(refused(&metrics, "not_listed"), 3);
    assert_eq!(refused(&metrics, "address"), 5);
    assert_eq!(refused(&metrics, "hop_limit"), 1);
}

#[tokio::test]
async fn malformed_requests_are_invalid_not_refused() {
    let (client, metrics) = client(&["127.0.0.1:1"], 4);
    for url in [
        "ftp://127.0.0.1:1/",
        "/relative",
        "http://user@127.0.0.1:1/",
        "http://exa%6dple.com/",
    ] {
        match client.fetch(get(url), 0).await {
            Err(FetchError::InvalidRequest(_)) => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    let mut connect = get("http://127.0.0.1:1/");
    connect.method = "CONNECT".into();
    assert!(matches!(
        client.fetch(connect, 0).await,
        Err(FetchError::InvalidRequest(_))
    ));
    assert_eq!(refused(&metrics, "not_listed"), 0);
}

#[tokio::test]
async fn calls_beyond_the_concurrency_cap_fail_at_once() {
    // A destination that accepts and never answers holds the one permit.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, metrics) = client(&[&addr.to_string()], 1);
    let client = std::sync::Arc::new(client);
    let holder = {
        let client = client.clone();
        tokio::spawn(async move { client.fetch(get(&format!("http://{addr}/slow")), 0).await })
    };
    let _accepted = listener.accept().await.unwrap();
    let why = not_allowed(client.fetch(get(&format!("http://{addr}/")), 0).await);
    assert!(why.contains("max_outbound_concurrency"), "{why}");
    assert_eq!(refused(&metrics, "concurrency"), 1);
    holder.abort();
}

#[test]
fn callouts_carry_the_next_hop_and_host_owned_headers() {
    let target = Target::parse("http://127.0.0.1:8080/a?b=c").ok().unwrap();
    let mut req = get("http://127.0.0.1:8080/a?b=c");
    req.headers = vec![
        ("weir-hop".into(), "0".into()),
        ("host".into(), "admin.internal".into()),
        ("content-length".into(), "999".into()),
        ("transfer-encoding".into(), "chunked".into()),
        ("x-kept".into(), "yes".into()),
    ];
    let request = build_request(req, &target, 2).ok().unwrap();
    let headers = request.headers();
    assert_eq!(headers["weir-hop"], "2");
    assert_eq!(headers["host"], "127.0.0.1:8080");
    assert_eq!(headers["x-kept"], "yes");
    assert!(!headers.contains_key("content-length"));
    assert!(!headers.contains_key("transfer-encoding"));
    assert_eq!(request.uri(), "/a?b=c");
}

#[test]
fn every_resolved_address_is_checked() {
    let (client, _) = client(&["api.example.com"], 4);
    let addrs =
        |list: &[&str]| -> Vec<SocketAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
    let checked = |list: &[&str]| match client.check_resolved("api.example.com", &addrs(list)) {
        Ok(()) => None,
        Err(Failure::Refused(Refusal::Address, why)) => Some(why),
        Err(_) => panic!("not an address refusal"),
    };
    assert_eq!(
        checked(&["93.184.215.14:443", "[2606:2800:21f::1]:443"]),
        None
    );
    for list in [
        &["127.0.0.1:443"][..],
        &["93.184.215.14:443", "10.0.0.7:443"],
        &["[::ffff:169.254.169.254]:80"],
        &["[fd00::1]:443"],
        &["100.64.0.9:443"],
    ] {
        let why = checked(list).unwrap_or_else(|| panic!("{list:?} accepted"));
        assert!(why.contains("only an allow_hosts entry naming"), "{why}");
    }
    assert!(checked(&["[::ffff:127.0.0.1]:80"])
        .unwrap()
        .contains("(\"127.0.0.1\")"));
    // A name that resolves to one of Weir's own listeners, public or not.
    client.own.set(vec!["203.0.113.7:8080".parse().unwrap()]);
    let why = checked(&["203.0.113.7:8080"]).expect("own listener refused");
    assert!(why.contains("Weir's own listeners"), "{why}");
    assert_eq!(checked(&["203.0.113.7:8081"]), None);
}
