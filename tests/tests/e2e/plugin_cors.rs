//! The JavaScript `cors` plugin, pooled: preflights answered at the edge,
//! CORS headers added to actual responses, and its config checked once at
//! load time. Every case runs on both builds of the same `plugin.js`:
//! QuickJS (componentize-qjs, the default engine) and SpiderMonkey
//! (componentize-js, kept selectable).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::header::HeaderMap;
use reqwest::Method;
use weir_tests::{client, echo_json, echoed_header, respond, TestProxy, Upstream};

/// Each case as a test per engine: `engines!(case, ...)` makes
/// `quickjs::case` and `spidermonkey::case`, each calling `case(file)`.
macro_rules! engines {
    ($($case:ident),* $(,)?) => {
        mod quickjs {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(weir_tests::artifacts::CORS).await;
                }
            )*
        }
        mod spidermonkey {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(weir_tests::artifacts::CORS_SPIDERMONKEY).await;
                }
            )*
        }
    };
}

engines!(
    allowed_preflight_is_answered_at_the_edge_with_204,
    preflight_from_a_wrong_origin_or_for_a_wrong_method_or_header_is_403,
    actual_requests_from_allowed_origins_get_cors_headers_on_the_way_out,
    wildcards_allow_any_origin_and_echo_the_requested_headers,
    bad_config_is_refused_at_load_with_the_plugins_message,
);

/// A proxy config with the `cors` plugin `file` (pooled) in front of
/// `upstream`.
fn cors_config(file: &str, upstream: &Upstream, plugin_config: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"cors\"]\n{}\n\
         [plugins.cors]\nfile = {file:?}\ninstances = \"pooled\"\ntimeout_ms = 2000\n\
         [plugins.cors.config]\n{plugin_config}\n",
        upstream.toml("up"),
    )
}

const APP: &str =
    "allowed_origins = [\"https://app.example.com\", \"https://admin.example.com\"]\n\
     allowed_methods = [\"GET\", \"POST\", \"PUT\"]\n\
     allowed_headers = [\"Content-Type\", \"x-api-key\"]\n\
     exposed_headers = [\"x-request-id\", \"x-total\"]\n\
     allow_credentials = true\n\
     max_age = 600\n";

/// An upstream that counts the requests reaching it.
async fn counting_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let upstream = Upstream::serve(move |_req| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { respond(200, "from upstream") }
    })
    .await;
    (upstream, hits)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ascii header"))
}

fn vary(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().expect("ascii header").split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect()
}

async fn preflight(
    proxy: &TestProxy,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> reqwest::Response {
    let mut request = client()
        .request(Method::OPTIONS, proxy.url("/api/items"))
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(headers) = headers {
        request = request.header("access-control-request-headers", headers);
    }
    request.send().await.unwrap()
}

async fn allowed_preflight_is_answered_at_the_edge_with_204(file: &str) {
    let (upstream, hits) = counting_upstream().await;
    let proxy = TestProxy::start(&cors_config(file, &upstream, APP)).await;

    let response = preflight(
        &proxy,
        "https://app.example.com",
        "PUT",
        Some("content-type, X-Api-Key"),
    )
    .await;
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(
        header(headers, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        header(headers, "access-control-allow-methods"),
        Some("GET, POST, PUT")
    );
    assert_eq!(
        header(headers, "access-control-allow-headers"),
        Some("Content-Type, x-api-key")
    );
    assert_eq!(
        header(headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(header(headers, "access-control-max-age"), Some("600"));
    assert!(vary(headers).contains(&"origin".to_owned()), "{headers:?}");
    assert!(response.bytes().await.unwrap().is_empty());
    assert_eq!(hits.load(Ordering::SeqCst), 0, "upstream saw the preflight");
}

async fn preflight_from_a_wrong_origin_or_for_a_wrong_method_or_header_is_403(file: &str) {
    let (upstream, hits) = counting_upstream().await;
    let proxy = TestProxy::start(&cors_config(file, &upstream, APP)).await;

    let cases = [
        (
            "https://evil.example.com",
            "GET",
            None,
            "origin not allowed",
        ),
        // Origins match exactly: no prefix, no other scheme or port.
        ("http://app.example.com", "GET", None, "origin not allowed"),
        (
            "https://app.example.com:8443",
            "GET",
            None,
            "origin not allowed",
        ),
        (
            "https://app.example.com",
            "DELETE",
            None,
            "method not allowed",
        ),
        (
            "https://admin.example.com",
            "POST",
            Some("content-type, x-secret"),
            "header not allowed: x-secret",
        ),
    ];
    for (origin, method, headers, reason) in cases {
        let response = preflight(&proxy, origin, method, headers).await;
        assert_eq!(response.status(), 403, "{origin} {method}");
        assert_eq!(
            header(response.headers(), "content-type"),
            Some("application/json")
        );
        assert_eq!(
            header(response.headers(), "access-control-allow-origin"),
            None
        );
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], reason, "{origin} {method}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "upstream saw a preflight");
}

async fn actual_requests_from_allowed_origins_get_cors_headers_on_the_way_out(file: &str) {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&cors_config(file, &upstream, APP)).await;

    // Many requests: the pooled instances answer the same every time.
    for _ in 0..20 {
        let response = client()
            .post(proxy.url("/api/items"))
            .header("origin", "https://admin.example.com")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some("https://admin.example.com")
        );
        assert_eq!(
            header(&headers, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            header(&headers, "access-control-expose-headers"),
            Some("x-request-id, x-total")
        );
        assert_eq!(vary(&headers), ["origin"]);
        // The request itself went upstream untouched.
        let echo = echo_json(&response.text().await.unwrap());
        assert_eq!(echo["method"], "POST");
        assert_eq!(
            echoed_header(&echo, "origin"),
            ["https://admin.example.com"]
        );
    }

    // A foreign origin and a same-origin request (no Origin) get the
    // answer, but no permission; caches are still told it varies by Origin.
    for origin in [Some("https://evil.example.com"), None] {
        let mut request = client().get(proxy.url("/api/items"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), None);
        assert_eq!(header(headers, "access-control-allow-credentials"), None);
        assert_eq!(vary(headers), ["origin"]);
    }

    // OPTIONS without Access-Control-Request-Method is not a preflight.
    let response = client()
        .request(Method::OPTIONS, proxy.url("/api/items"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echo["method"], "OPTIONS");
}

async fn wildcards_allow_any_origin_and_echo_the_requested_headers(file: &str) {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&cors_config(
        file,
        &upstream,
        "allowed_origins = [\"*\"]\nallowed_headers = [\"*\"]",
    ))
    .await;

    let response = preflight(
        &proxy,
        "https://anyone.example",
        "POST",
        Some("X-One, x-two"),
    )
    .await;
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(headers, "access-control-allow-methods"),
        Some("GET, HEAD, POST")
    );
    assert_eq!(
        header(headers, "access-control-allow-headers"),
        Some("x-one, x-two")
    );
    assert_eq!(header(headers, "access-control-allow-credentials"), None);
    assert_eq!(header(headers, "access-control-max-age"), None);

    // The default methods do not include PUT.
    let response = preflight(&proxy, "https://anyone.example", "PUT", None).await;
    assert_eq!(response.status(), 403);

    let response = client()
        .get(proxy.url("/"))
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(headers, "access-control-expose-headers"), None);
    // "*" does not depend on the Origin: no Vary.
    assert!(vary(headers).is_empty(), "{headers:?}");
}

async fn bad_config_is_refused_at_load_with_the_plugins_message(file: &str) {
    let upstream = Upstream::echo().await;
    let cases = [
        (
            "allowed_origins = [\"*\"]\nallow_credentials = true",
            "cannot be combined with allow_credentials",
        ),
        (
            "allowed_origins = [\"https://app.example.com/\"]",
            "is not an origin",
        ),
        ("allowed_origins = []", "at least one origin"),
        (
            "allowed_origins = [\"https://a.example\"]\nallowed_methods = [\"GET POST\"]",
            "is not a method name",
        ),
        (
            "allowed_origins = [\"https://a.example\"]\nmax_age = -1",
            "max_age",
        ),
        (
            "allowed_origins = [\"https://a.example\"]\nallow_origins = [\"x\"]",
            "unknown field `allow_origins`",
        ),
        ("allow_credentials = false", "allowed_origins: missing"),
    ];
    for (plugin_config, message) in cases {
        let err = match TestProxy::try_start(&cors_config(file, &upstream, plugin_config)).await {
            Ok(_) => panic!("config must be refused: {plugin_config}"),
            Err(err) => err,
        };
        assert!(err.contains("plugin cors: config refused"), "{err}");
        assert!(err.contains(message), "{plugin_config}: {err}");
    }
}
