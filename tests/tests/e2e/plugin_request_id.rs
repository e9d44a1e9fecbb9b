//! The C sample plugin `request-id` (plugins/c/request-id): a request
//! without a sane id gets one, the id goes down the chain as the property
//! `request-id` (made visible by the `inspector` plugin) and back to the
//! client in the response phase.

use weir_tests::{artifacts, client, echo_json, echoed_header, TestProxy, Upstream};

/// `request_id` (with `config`, a TOML inline table body) then `inspector`.
async fn proxy(upstream: &Upstream, config: &str) -> Result<TestProxy, String> {
    TestProxy::try_start(&format!(
        "default_upstream = \"up\"\nchain = [\"request_id\", \"inspector\"]\n{}\n\
         [plugins.request_id]\nfile = {:?}\nconfig = {{ {config} }}\n\
         [plugins.inspector]\nfile = {:?}\n",
        upstream.toml("up"),
        artifacts::REQUEST_ID,
        artifacts::INSPECTOR
    ))
    .await
}

/// What one request shows: the id header the upstream got, the
/// `request-id` property the next plugin saw, the host's request id, and
/// the id header of the answer.
struct Seen {
    upstream: Vec<String>,
    property: Option<String>,
    host_id: String,
    answer: Option<String>,
}

async fn send(proxy: &TestProxy, header: &str, sent: Option<&str>) -> Seen {
    let mut request = client().get(proxy.url("/ids"));
    if let Some(value) = sent {
        request = request.header(header, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer = response
        .headers()
        .get(header)
        .map(|v| v.to_str().unwrap().to_owned());
    let echo = echo_json(&response.text().await.unwrap());
    let properties = echoed_header(&echo, "x-inspect-properties")
        .pop()
        .unwrap_or_default();
    let property = properties
        .split(';')
        .find_map(|p| p.strip_prefix("request-id="))
        .map(str::to_owned);
    Seen {
        upstream: echoed_header(&echo, header),
        property,
        host_id: echoed_header(&echo, "x-inspect-request-id")[0].clone(),
        answer,
    }
}

fn is_sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_an_id_gets_the_hosts() {
    let upstream = Upstream::echo().await;
    let proxy = proxy(&upstream, "").await.unwrap();
    let first = send(&proxy, "x-request-id", None).await;
    assert!(is_sane(&first.host_id), "{}", first.host_id);
    assert_eq!(first.upstream, std::slice::from_ref(&first.host_id));
    assert_eq!(first.property.as_deref(), Some(first.host_id.as_str()));
    assert_eq!(first.answer.as_deref(), Some(first.host_id.as_str()));
    let second = send(&proxy, "x-request-id", None).await;
    assert_ne!(first.host_id, second.host_id, "ids are unique");
    assert_eq!(second.property.as_deref(), Some(second.host_id.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sane_id_is_kept() {
    let upstream = Upstream::echo().await;
    let proxy = proxy(&upstream, "").await.unwrap();
    let seen = send(&proxy, "x-request-id", Some("req-7.a:b_c")).await;
    assert_eq!(seen.upstream, ["req-7.a:b_c"]);
    assert_eq!(seen.property.as_deref(), Some("req-7.a:b_c"));
    assert_eq!(seen.answer.as_deref(), Some("req-7.a:b_c"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_insane_id_is_replaced() {
    let upstream = Upstream::echo().await;
    let proxy = proxy(&upstream, "").await.unwrap();
    let too_long = "a".repeat(129);
    for insane in ["two words", "semi;colon", "\u{7f}x", too_long.as_str()] {
        let Ok(value) = http::HeaderValue::from_str(insane) else {
            continue;
        };
        let value = value.to_str().unwrap_or("bytes").to_owned();
        let seen = send(&proxy, "x-request-id", Some(&value)).await;
        // Without the plugin the upstream would get the client's value.
        assert_eq!(seen.upstream.len(), 1, "{insane:?}: {:?}", seen.upstream);
        let id = &seen.upstream[0];
        assert_ne!(id, insane);
        assert!(is_sane(id), "{id}");
        assert_eq!(seen.property.as_deref(), Some(id.as_str()));
        assert_eq!(seen.answer.as_deref(), Some(id.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_header_carries_the_id_both_ways() {
    let upstream = Upstream::echo().await;
    // Upper case in config is fine: header names are matched lower-case.
    let proxy = proxy(&upstream, "header = \"X-Trace-Id\"").await.unwrap();

    let seen = send(&proxy, "x-trace-id", None).await;
    assert_eq!(seen.upstream, std::slice::from_ref(&seen.host_id));
    assert_eq!(seen.property.as_deref(), Some(seen.host_id.as_str()));
    // The host does not know x-trace-id: the response phase added it.
    assert_eq!(seen.answer.as_deref(), Some(seen.host_id.as_str()));

    let seen = send(&proxy, "x-trace-id", Some("trace.42")).await;
    assert_eq!(seen.upstream, ["trace.42"]);
    assert_eq!(seen.property.as_deref(), Some("trace.42"));
    assert_eq!(seen.answer.as_deref(), Some("trace.42"));
    assert_ne!(seen.host_id, "trace.42", "the host id stays its own");

    let seen = send(&proxy, "x-trace-id", Some("not sane!")).await;
    assert_eq!(seen.upstream, std::slice::from_ref(&seen.host_id));
    assert_eq!(seen.answer.as_deref(), Some(seen.host_id.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_refused_at_load() {
    let upstream = Upstream::echo().await;
    for (config, expected) in [
        (
            "headr = \"x-id\"",
            "unknown field `headr`, expected `header`",
        ),
        ("header = \"x id\"", "\"x id\" is not a header name"),
        ("header = \"\"", "\"\" is not a header name"),
        ("header = 7", "header: must be a header name"),
        (
            "header = \"Content-Length\"",
            "frames the message and belongs to the proxy",
        ),
    ] {
        let err = proxy(&upstream, config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{config} was accepted"));
        assert!(err.contains("request_id"), "{err}");
        assert!(err.contains(expected), "{config}: {err}");
    }
}

/// Contract versions side by side in one chain: the C `request_id` is a
/// `weir:plugin@0.1.0` component (its response phase is still sent the
/// whole request), `tagger` and `inspector` are 0.2.0 (theirs is not; they
/// get the request id and properties). Each phase of each does its work.
#[tokio::test(flavor = "multi_thread")]
async fn a_0_1_0_plugin_serves_in_one_chain_with_0_2_0_plugins() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\nchain = [\"request_id\", \"tagger\", \"inspector\"]\n{}\n\
         [plugins.request_id]\nfile = {:?}\n\
         [plugins.tagger]\nfile = {:?}\nconfig = {{ tag = \"t\", response_headers = {{ x-tagged = \"yes\" }} }}\n\
         [plugins.inspector]\nfile = {:?}\nconfig = {{ response = true }}\n",
        upstream.toml("up"),
        artifacts::REQUEST_ID,
        artifacts::TAGGER,
        artifacts::INSPECTOR
    ))
    .await;
    let response = client()
        .get(proxy.url("/mixed"))
        .header("x-request-id", "mixed-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    // 0.1.0 response phase: the id it read from the request it was sent.
    assert_eq!(header("x-request-id"), "mixed-1");
    // 0.2.0 response phases.
    assert_eq!(header("x-tagged"), "yes");
    assert_eq!(header("x-inspect-response-request-id"), "mixed-1");
    let properties = header("x-inspect-response-properties");
    assert!(properties.contains("request-id=mixed-1"), "{properties}");
    assert!(properties.contains("chain=t"), "{properties}");
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-weir-chain"), ["t"]);
}
