//! The Python `security-headers` plugin (componentize-py), pooled: headers
//! added on the way out, the upstream's own values kept unless `override`,
//! revealing headers removed, and its config checked once at load time.

use reqwest::header::HeaderMap;
use weir::plugin::bindings::types;
use weir::plugin::chain::ResponseState;
use weir::plugin::{Exchange, RequestOutcome};
use weir_tests::{client, config_file, respond, TestProxy, Upstream};

/// A proxy config with the `security_headers` plugin (pooled) in front of
/// `upstream`.
fn security_config(upstream: &Upstream, plugin_config: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"security_headers\"]\n{}\n{}",
        upstream.toml("up"),
        plugin_table(plugin_config)
    )
}

fn plugin_table(plugin_config: &str) -> String {
    format!(
        "[plugins.security_headers]\nfile = {:?}\ninstances = \"pooled\"\ntimeout_ms = 2000\n\
         [plugins.security_headers.config]\n{plugin_config}\n",
        weir_tests::artifacts::SECURITY_HEADERS
    )
}

/// An upstream that sets headers of its own on every answer.
async fn upstream_with(headers: &'static [(&'static str, &'static str)]) -> Upstream {
    Upstream::serve(move |_req| async move {
        let mut response = respond(200, "hello");
        for (name, value) in headers {
            response
                .headers_mut()
                .append(*name, http::HeaderValue::from_static(value));
        }
        response
    })
    .await
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ascii header"))
}

async fn get_headers(proxy: &TestProxy) -> HeaderMap {
    let response = client().get(proxy.url("/page")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(response.text().await.unwrap(), "hello");
    headers
}

#[tokio::test(flavor = "multi_thread")]
async fn adds_the_configured_headers_and_no_hsts_over_plain_http() {
    let upstream = upstream_with(&[]).await;
    let proxy = TestProxy::start(&security_config(
        &upstream,
        "content_security_policy = \"default-src 'self'; img-src *\"\n\
         frame_options = \"sameorigin\"\nreferrer_policy = \"no-referrer\"",
    ))
    .await;

    // Many requests: the pooled instances answer the same every time.
    for _ in 0..20 {
        let headers = get_headers(&proxy).await;
        assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
        assert_eq!(header(&headers, "x-frame-options"), Some("SAMEORIGIN"));
        assert_eq!(header(&headers, "referrer-policy"), Some("no-referrer"));
        assert_eq!(
            header(&headers, "content-security-policy"),
            Some("default-src 'self'; img-src *")
        );
        // HSTS only means something over https.
        assert_eq!(header(&headers, "strict-transport-security"), None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hsts_on_http_sends_the_configured_directives() {
    let upstream = upstream_with(&[]).await;
    let proxy = TestProxy::start(&security_config(
        &upstream,
        "hsts_on_http = true\nhsts_max_age = 600\nhsts_include_subdomains = true\n\
         content_type_options = false\nframe_options = false\nreferrer_policy = false",
    ))
    .await;
    let headers = get_headers(&proxy).await;
    assert_eq!(
        header(&headers, "strict-transport-security"),
        Some("max-age=600; includeSubDomains")
    );
    for switched_off in [
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "content-security-policy",
    ] {
        assert_eq!(header(&headers, switched_off), None, "{switched_off}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_own_values_win_unless_override() {
    const OWN: &[(&str, &str)] = &[
        ("x-frame-options", "SAMEORIGIN"),
        ("content-security-policy", "default-src https:"),
        ("strict-transport-security", "max-age=5"),
    ];
    let config = "hsts_on_http = true\ncontent_security_policy = \"default-src 'none'\"";

    let upstream = upstream_with(OWN).await;
    let proxy = TestProxy::start(&security_config(&upstream, config)).await;
    let headers = get_headers(&proxy).await;
    assert_eq!(header(&headers, "x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some("default-src https:")
    );
    assert_eq!(
        header(&headers, "strict-transport-security"),
        Some("max-age=5")
    );
    // What the upstream did not set is still added.
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    assert_eq!(
        header(&headers, "referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );

    let proxy = TestProxy::start(&security_config(
        &upstream,
        &format!("{config}\noverride = true"),
    ))
    .await;
    let headers = get_headers(&proxy).await;
    assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));
    assert_eq!(
        header(&headers, "content-security-policy"),
        Some("default-src 'none'")
    );
    assert_eq!(
        header(&headers, "strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(headers.get_all("x-frame-options").iter().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn removes_headers_that_reveal_the_upstream() {
    let upstream = upstream_with(&[
        ("server", "Apache/2.4.1 (Unix)"),
        ("x-powered-by", "PHP/5.6"),
        ("x-kept", "yes"),
    ])
    .await;

    let proxy = TestProxy::start(&security_config(&upstream, "")).await;
    let headers = get_headers(&proxy).await;
    assert_eq!(header(&headers, "server"), Some("Apache/2.4.1 (Unix)"));
    assert_eq!(header(&headers, "x-powered-by"), Some("PHP/5.6"));

    let proxy = TestProxy::start(&security_config(
        &upstream,
        "remove_headers = [\"Server\", \"x-powered-by\"]",
    ))
    .await;
    let headers = get_headers(&proxy).await;
    assert_eq!(header(&headers, "server"), None);
    assert_eq!(header(&headers, "x-powered-by"), None);
    assert_eq!(header(&headers, "x-kept"), Some("yes"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
}

/// Calls of `security_headers`' `phase` so far, from its call-time
/// histogram (no series: none).
fn calls(proxy: &TestProxy, phase: &str) -> u64 {
    let series = format!(
        "weir_plugin_call_duration_seconds_count{{plugin=\"security_headers\",phase=\"{phase}\"}} "
    );
    proxy
        .metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

/// Contract 0.2.0: the plugin asks for a request phase only when its
/// headers depend on the scheme (HSTS on https only, the default), and a
/// phase it did not ask for is never called.
#[tokio::test(flavor = "multi_thread")]
async fn has_a_request_phase_only_when_hsts_depends_on_the_scheme() {
    let upstream = upstream_with(&[]).await;
    for (config, request_calls) in [("", 2), ("hsts_on_http = true", 0), ("hsts = false", 0)] {
        let proxy = TestProxy::start(&security_config(&upstream, config)).await;
        for _ in 0..2 {
            let headers = get_headers(&proxy).await;
            assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
            let hsts = header(&headers, "strict-transport-security");
            assert_eq!(hsts.is_some(), config.contains("hsts_on_http"), "{config}");
        }
        assert_eq!(calls(&proxy, "request"), request_calls, "{config:?}");
        assert_eq!(calls(&proxy, "response"), 2, "{config:?}");
    }
}

/// The listener has no TLS yet, so an https request is driven through the
/// real chain (the same calls the proxy makes) rather than over a socket.
#[tokio::test(flavor = "multi_thread")]
async fn https_requests_get_hsts_by_default() {
    let (_dir, path) = config_file(&format!(
        "chain = [\"security_headers\"]\n[upstreams.up]\nendpoints = [\"127.0.0.1:9\"]\n{}",
        plugin_table("hsts_include_subdomains = true\nhsts_preload = true")
    ));
    let config = weir::Config::load(&path).expect("config");
    let weir = weir::Weir::new(&config).expect("runtime");
    let generation = weir.load(config).await.expect("plugins load");

    for (scheme, hsts) in [
        (
            "https",
            Some("max-age=31536000; includeSubDomains; preload"),
        ),
        ("http", None),
    ] {
        let mut ex = exchange(scheme);
        let outcome = generation.fallback.chain.request_phase(&mut ex).await;
        assert!(matches!(outcome, Ok(RequestOutcome::Continue)));
        let (head, ()) = http::Response::new(()).into_parts();
        let mut resp = ResponseState { head, body: None };
        generation
            .fallback
            .chain
            .response_phase(&ex, generation.fallback.chain.len(), &mut resp)
            .await
            .expect("response phase");
        let got = resp
            .head
            .headers
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap());
        assert_eq!(got, hsts, "{scheme}");
        assert_eq!(resp.head.headers["x-content-type-options"], "nosniff");
    }
}

fn exchange(scheme: &'static str) -> Exchange {
    let (head, ()) = http::Request::builder()
        .uri("/secure")
        .header("host", "site.example")
        .body(())
        .expect("request")
        .into_parts();
    Exchange {
        id: "hsts".into(),
        route: None,
        scheme,
        authority: "site.example".into(),
        head,
        connection: types::ConnectionInfo {
            client_ip: "127.0.0.1".into(),
            client_port: 40000,
            local_ip: "127.0.0.1".into(),
            local_port: 443,
            http_version: types::HttpVersion::Http11,
            tls: None,
        },
        properties: Vec::new(),
        upstream: None,
        cache: None,
        hops: 0,
        body: None,
        credentialed: false,
        runs: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_refused_at_load_with_the_plugins_message() {
    let upstream = upstream_with(&[]).await;
    let cases = [
        (
            "hsts_preload = true",
            "hsts_preload: needs hsts_include_subdomains",
        ),
        ("hsts_max_age = -5", "hsts_max_age"),
        ("hsts_max_age = \"1y\"", "hsts_max_age"),
        ("frame_options = \"ALLOWALL\"", "frame_options"),
        (
            "referrer_policy = \"sometimes\"",
            "unknown policy 'sometimes'",
        ),
        ("content_security_policy = \"\"", "content_security_policy"),
        ("override = \"yes\"", "override: must be true or false"),
        (
            "remove_headers = [\"content-length\"]",
            "belongs to the proxy",
        ),
        ("remove_headers = [\"bad header\"]", "is not a header name"),
        ("hsts_maxage = 10", "unknown field `hsts_maxage`"),
    ];
    for (plugin_config, message) in cases {
        let err = match TestProxy::try_start(&security_config(&upstream, plugin_config)).await {
            Ok(_) => panic!("config must be refused: {plugin_config}"),
            Err(err) => err,
        };
        assert!(
            err.contains("plugin security_headers: config refused"),
            "{err}"
        );
        assert!(err.contains(message), "{plugin_config}: {err}");
    }
}
