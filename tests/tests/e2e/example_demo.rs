//! The README walkthrough, run against `examples/proxy.toml` itself (only
//! its addresses and plugin paths swapped for test ones): 401 without a key,
//! cache miss then hit with one, routing to the second upstream, 429 over
//! the limit.

use std::net::SocketAddr;

use weir_tests::{artifacts, client, config_file, TestProxy};

async fn named_echo(name: &str) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let name = name.to_owned();
    tokio::spawn(async move {
        weir::echo::serve_named(listener, &name, async move {
            let _ = stopped.await;
        })
        .await;
    });
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_walkthrough_against_the_example_config() {
    let (main, _stop_main) = named_echo("main").await;
    let (v2, _stop_v2) = named_echo("v2").await;
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/proxy.toml"
    ))
    .unwrap();
    let mut text = example
        .replace("127.0.0.1:9000", &main.to_string())
        .replace("127.0.0.1:9001", &v2.to_string())
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace(
            "\"admin.token\"",
            &format!(
                "{:?}",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/admin.token")
            ),
        )
        // TestProxy adds its own listener on port 0.
        .replace("[[listeners]]\naddress = \"127.0.0.1:8080\"\n", "");
    for (name, file) in artifacts::ALL {
        let relative = format!("\"../plugins/{}.wasm\"", name.replace('-', "_"));
        text = text.replace(&relative, &format!("{file:?}"));
    }
    // The config must still be valid after the swap (same checks as weir).
    let (_dir, path) = config_file(&text);
    weir::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));

    let proxy = TestProxy::start(&text).await;
    let key = ("x-api-key", "demo-key");

    let response = client().get(proxy.url("/anything")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    // The public health route runs no plugin: no key, no rate limit.
    for _ in 0..6 {
        let health = client().get(proxy.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert!(health.headers().get("cache-status").is_none());
    }

    let get = |path: &str| client().get(proxy.url(path)).header(key.0, key.1).send();
    let first = get("/doc?max_age=60").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-status"], "weir; fwd=miss; stored");
    assert_eq!(first.headers()["x-echo-upstream"], "main");
    let second = get("/doc?max_age=60").await.unwrap();
    assert!(second.headers()["cache-status"]
        .to_str()
        .unwrap()
        .starts_with("weir; hit"));

    let routed = get("/v2/hello").await.unwrap();
    assert_eq!(routed.headers()["x-echo-upstream"], "v2");
    let echo: serde_json::Value = serde_json::from_str(&routed.text().await.unwrap()).unwrap();
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["headers"]["x-user"][0], "demo");
    assert!(
        echo["headers"].get("x-api-key").is_none(),
        "credential stripped"
    );

    // 3 requests so far counted against the tenant's 5 per 10 s.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get("/x").await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);

    // The admin calls, with the example's token.
    let token = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/admin.token"
    ))
    .unwrap();
    let metrics = client()
        .get(proxy.admin_url("/metrics"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let purge = client()
        .post(proxy.admin_url(&format!("/cache/purge?prefix={}/doc", proxy.addr)))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    let unauthorized = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
}
