//! The test-only `inspector` plugin shows what typed facts a plugin gets:
//! connection info, request id, and the properties earlier plugins set —
//! here `auth`'s identity and `router`'s route.

use weir_tests::{artifacts, client, echo_json, echoed_header, TestProxy, Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn connection_facts_and_request_id_reach_plugins() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"up\"\nchain = [\"inspector\"]\n{}\n[plugins.inspector]\nfile = {:?}\n",
        upstream.toml("up"),
        artifacts::INSPECTOR
    ))
    .await;
    let response = client()
        .get(proxy.url("/facts"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    let echo = echo_json(&response.text().await.unwrap());
    let client_addr = &echoed_header(&echo, "x-inspect-client")[0];
    assert!(client_addr.starts_with("127.0.0.1:"), "{client_addr}");
    assert_eq!(
        echoed_header(&echo, "x-inspect-local"),
        [proxy.addr.to_string()]
    );
    assert_eq!(echoed_header(&echo, "x-inspect-http-version"), ["1.1"]);
    assert_eq!(echoed_header(&echo, "x-inspect-scheme"), ["http"]);
    assert_eq!(echoed_header(&echo, "x-inspect-request-id"), ["req-42"]);
    assert!(echoed_header(&echo, "x-inspect-tls-version").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_from_auth_and_router_reach_later_plugins() {
    let upstream = Upstream::echo().await;
    let key_hash = "c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"; // demo-key
    let proxy = TestProxy::start(&format!(
        r#"chain = ["auth", "router", "inspector"]
{}
[plugins.auth]
file = {:?}
[plugins.auth.config]
methods = ["api_key"]
api_key = {{ header = "x-api-key", keys = [{{ sha256 = "{key_hash}", user = "ada", tenant = "acme", scopes = ["read", "write"] }}] }}
[plugins.router]
file = {:?}
[plugins.router.config]
[[plugins.router.config.rules]]
name = "everything"
path_prefix = "/"
upstream = "up"
[plugins.inspector]
file = {:?}
"#,
        upstream.toml("up"),
        artifacts::AUTH,
        artifacts::ROUTER,
        artifacts::INSPECTOR
    ))
    .await;
    let response = client()
        .get(proxy.url("/x"))
        .header("x-api-key", "demo-key")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_json(&response.text().await.unwrap());
    let properties = &echoed_header(&echo, "x-inspect-properties")[0];
    for expected in [
        "user=ada",
        "tenant=acme",
        "scopes=read|write",
        "auth-method=api_key",
        "route=everything",
    ] {
        assert!(
            properties.split(';').any(|p| p == expected),
            "{expected} missing from {properties}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_config_key_is_refused() {
    let upstream = Upstream::echo().await;
    let err = TestProxy::try_start(&format!(
        "default_upstream = \"up\"\nchain = [\"inspector\"]\n{}\n[plugins.inspector]\nfile = {:?}\n[plugins.inspector.config]\nx = 1\n",
        upstream.toml("up"),
        artifacts::INSPECTOR
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.contains("unknown field `x`"), "{err}");
}

/// `tagger` (it sets the `chain` property) in front of an inspector that
/// declares `interest` as its config.
fn declaring(upstream: &Upstream, interest: &str) -> String {
    format!(
        r#"default_upstream = "up"
chain = ["tagger", "inspector"]
{}
[plugins.tagger]
file = {:?}
[plugins.tagger.config]
tag = "t"
[plugins.inspector]
file = {:?}
[plugins.inspector.config]
{interest}
"#,
        upstream.toml("up"),
        artifacts::TAGGER,
        artifacts::INSPECTOR
    )
}

/// Contract 0.2.0: a plugin is given the headers it named (in the order
/// named), and the connection and properties only when it asked; what it
/// was not given is still forwarded untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_is_given_only_what_it_declared() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&declaring(
        &upstream,
        "headers = [\"X-B\", \"x-a\", \"x-absent\"]\nconnection = false\nproperties = false\n\
         response = true\nresponse_headers = [\"content-type\"]",
    ))
    .await;
    let response = client()
        .get(proxy.url("/declared"))
        .header("x-a", "1")
        .header("x-b", "2")
        .header("x-b", "3")
        .header("x-c", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The response phase saw only content-type of the echo's headers, and
    // no properties although tagger set one.
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("x-inspect-response-headers").as_deref(),
        Some("content-type")
    );
    assert_eq!(header("x-inspect-response-properties").as_deref(), Some(""));
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-inspect-headers"), ["x-b,x-b,x-a"]);
    assert!(echoed_header(&echo, "x-inspect-client").is_empty());
    assert!(echoed_header(&echo, "x-inspect-http-version").is_empty());
    assert_eq!(echoed_header(&echo, "x-inspect-properties"), [""]);
    // Everything else still reaches the upstream.
    assert_eq!(echoed_header(&echo, "x-c"), ["4"]);
    assert_eq!(echoed_header(&echo, "x-weir-chain"), ["t"]);
}

/// The response phase is not sent the request again: it gets the request
/// id and the properties the request phase left, which is how a plugin
/// hands itself request facts.
#[tokio::test(flavor = "multi_thread")]
async fn the_response_phase_gets_the_request_id_and_properties() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::start(&declaring(&upstream, "response = true")).await;
    let response = client()
        .get(proxy.url("/later"))
        .header("x-request-id", "req-7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("x-inspect-response-request-id"), "req-7");
    assert_eq!(header("x-inspect-response-properties"), "chain=t");
    // Every header, by default: the echo's content-type among them.
    let names = header("x-inspect-response-headers");
    assert!(names.split(',').any(|n| n == "content-type"), "{names}");
}

/// A declaration the host cannot honour refuses the plugin at load, with
/// the plugin and the reason named.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_interest_declaration_is_refused_at_load() {
    let upstream = Upstream::echo().await;
    let too_many: Vec<String> = (0..65).map(|i| format!("\"x-h{i}\"")).collect();
    for (interest, reason) in [
        (
            "headers = [\"bad header\"]",
            "invalid header name \"bad header\"",
        ),
        (
            &format!("headers = [{}]", too_many.join(",")) as &str,
            "65 header names (at most 64)",
        ),
    ] {
        let err = match TestProxy::try_start(&declaring(&upstream, interest)).await {
            Ok(_) => panic!("{interest}: accepted"),
            Err(err) => err,
        };
        assert!(err.contains("inspector"), "{err}");
        assert!(err.contains(reason), "{err}");
    }
}
