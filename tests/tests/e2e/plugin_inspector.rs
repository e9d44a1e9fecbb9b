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
async fn configuration_is_refused() {
    let upstream = Upstream::echo().await;
    let err = TestProxy::try_start(&format!(
        "default_upstream = \"up\"\nchain = [\"inspector\"]\n{}\n[plugins.inspector]\nfile = {:?}\n[plugins.inspector.config]\nx = 1\n",
        upstream.toml("up"),
        artifacts::INSPECTOR
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.contains("inspector takes no configuration"), "{err}");
}
