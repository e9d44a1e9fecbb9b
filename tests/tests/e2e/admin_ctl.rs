//! `weir ctl` and the JSON admin API it speaks, through the real binary:
//! status, routes, plugins, upstreams and cache as tables and as JSON; a
//! reload refused with its reason while the old config keeps serving; an
//! endpoint drained and resumed; and an admin listener that requires TLS
//! 1.3 and a client certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use weir_tests::{admin_section, client, respond, tagger_plugin, TestProxy, Upstream, ADMIN_TOKEN};

use crate::tls::{cert_table, write, Ca};

struct Ctl {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Run `weir ctl ARGS` against `admin` with the test token.
async fn ctl(admin: &str, args: &[&str]) -> Ctl {
    ctl_with(admin, Some(ADMIN_TOKEN), args).await
}

async fn ctl_with(admin: &str, token: Option<&str>, args: &[&str]) -> Ctl {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir-e2e"));
    command
        .arg("ctl")
        .args(["--admin", admin])
        .args(args)
        .env_remove("WEIR_ADMIN_TOKEN")
        .env_remove("WEIR_ADMIN_URL");
    if let Some(token) = token {
        command.env("WEIR_ADMIN_TOKEN", token);
    }
    let output = command.output().await.expect("run weir ctl");
    Ctl {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json(out: &Ctl) -> serde_json::Value {
    assert!(out.ok, "weir ctl failed:\n{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// An upstream answering with its own name in `x-served-by`.
async fn named(name: &'static str) -> Upstream {
    Upstream::serve(move |_| async move {
        let mut response = respond(200, name);
        response
            .headers_mut()
            .insert("x-served-by", http::HeaderValue::from_static(name));
        response
    })
    .await
}

fn config(a: &Upstream, b: &Upstream, extra: &str) -> String {
    format!(
        "default_upstream = \"pool\"\nchain = [\"tag\"]\n{}\n\
         [upstreams.pool]\nendpoints = [\"{}\", \"{}\"]\n\
         [cache]\ncapacity_bytes = 65536\n\
         [[routes]]\nname = \"api\"\nprefix = \"/api\"\nchain = []\n\
         {extra}{}",
        tagger_plugin("tag", "t", ""),
        a.addr,
        b.addr,
        admin_section(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_shows_status_routes_plugins_upstreams_and_cache() {
    let (a, b) = (named("a").await, named("b").await);
    let proxy = TestProxy::start(&config(&a, &b, "")).await;
    let admin = proxy.admin_url("");
    client().get(proxy.url("/x")).send().await.unwrap();

    let status = json(&ctl(&admin, &["--json", "status"]).await);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["routes"], 1);
    assert_eq!(status["plugins"], 1);
    assert_eq!(status["upstreams"], serde_json::json!(["pool"]));
    let table = ctl(&admin, &["status"]).await;
    assert!(
        table.ok && table.stdout.contains("uptime_seconds: "),
        "{}",
        table.stdout
    );

    let routes = json(&ctl(&admin, &["--json", "routes"]).await);
    let names: Vec<_> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [serde_json::Value::Null, "api".into()]);
    assert_eq!(routes["routes"][0]["plugins"], serde_json::json!(["tag"]));
    let table = ctl(&admin, &["routes"]).await;
    let fallback = table.stdout.lines().nth(1).unwrap_or_default();
    assert!(
        fallback.starts_with("(fallback)") && fallback.contains("tag"),
        "{}",
        table.stdout
    );

    let plugins = json(&ctl(&admin, &["--json", "plugins"]).await);
    let tag = &plugins["plugins"][0];
    assert_eq!(tag["name"], "tag");
    assert_eq!(tag["contract"], "weir:plugin@0.2.0");
    assert_eq!(tag["routes"], serde_json::json!([null]));
    let table = ctl(&admin, &["plugins"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("tag ") && l.contains("weir:plugin@0.2.0")),
        "{}",
        table.stdout
    );

    let upstreams = json(&ctl(&admin, &["--json", "upstreams"]).await);
    let endpoints = upstreams["upstreams"][0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert!(endpoints
        .iter()
        .all(|e| e["state"] == "up" && e["healthy"] == true));
    let table = ctl(&admin, &["upstreams"]).await;
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);

    let cache = json(&ctl(&admin, &["--json", "cache"]).await);
    assert_eq!(cache["enabled"], true);
    assert_eq!(cache["capacity_bytes"], 65536);
    let purge = ctl(&admin, &["cache", "purge", "--key", "http://nothing.test/"]).await;
    assert!(
        purge.ok && purge.stdout.contains("purged 0"),
        "{}",
        purge.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_without_the_token_is_refused() {
    let (a, b) = (named("a").await, named("b").await);
    let proxy = TestProxy::start(&config(&a, &b, "")).await;
    let out = ctl_with(&proxy.admin_url(""), None, &["status"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("401") && out.stderr.contains("admin token required"),
        "{}",
        out.stderr
    );
    let out = ctl_with(&proxy.admin_url(""), Some("wrong"), &["reload"]).await;
    assert!(!out.ok && out.stderr.contains("401"), "{}", out.stderr);
}

async fn served_by(proxy: &TestProxy, requests: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for i in 0..requests {
        let response = client()
            .get(proxy.url(&format!("/api/{i}")))
            .send()
            .await
            .unwrap();
        seen.push(
            response.headers()["x-served-by"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drained_endpoint_takes_no_new_requests_until_resumed() {
    let (a, b) = (named("a").await, named("b").await);
    let proxy = TestProxy::start(&config(&a, &b, "")).await;
    let admin = proxy.admin_url("");
    let endpoint = a.addr.to_string();

    let drained = ctl(&admin, &["drain", "pool", &endpoint]).await;
    assert!(
        drained.ok && drained.stdout.contains("draining"),
        "{}",
        drained.stderr
    );
    assert!(served_by(&proxy, 8).await.iter().all(|s| s == "b"));
    let upstreams = json(&ctl(&admin, &["--json", "upstreams"]).await);
    let state: Vec<_> = upstreams["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["state"].clone(),
            )
        })
        .collect();
    assert!(
        state.contains(&(endpoint.clone(), "draining".into())),
        "{state:?}"
    );
    let scrape = weir_tests::scrape(&proxy.admin_url("/metrics")).await;
    assert!(
        scrape.contains(&format!(
            "weir_upstream_endpoint_healthy{{upstream=\"pool\",endpoint=\"{endpoint}\"}} 0"
        )),
        "{scrape}"
    );

    let resumed = ctl(&admin, &["drain", "pool", &endpoint, "--undo"]).await;
    assert!(
        resumed.ok && resumed.stdout.contains("resumed"),
        "{}",
        resumed.stderr
    );
    let seen = served_by(&proxy, 8).await;
    assert!(
        seen.iter().any(|s| s == "a") && seen.iter().any(|s| s == "b"),
        "{seen:?}"
    );

    let unknown = ctl(&admin, &["drain", "pool", "10.9.9.9:1"]).await;
    assert!(
        !unknown.ok && unknown.stderr.contains("has no endpoint"),
        "{}",
        unknown.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_reload_prints_the_refusal_and_the_old_config_keeps_serving() {
    let (a, b) = (named("a").await, named("b").await);
    // Only `weir ctl` reloads here: the file watcher is off.
    let config = |extra: &str| format!("{}[runtime]\nreload_check_ms = 0\n", config(&a, &b, extra));
    let proxy = TestProxy::start(&config("")).await;
    let admin = proxy.admin_url("");

    proxy.rewrite(&config(
        "[[routes]]\nname = \"broken\"\nprefix = \"no-slash\"\n",
    ));
    let refused = ctl(&admin, &["reload"]).await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("422") && refused.stderr.contains("routes[1]"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains("still serving the previous configuration"),
        "{}",
        refused.stderr
    );
    let response = client().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-weir-chain"], "t");

    proxy.rewrite(&config("[[routes]]\nname = \"more\"\nprefix = \"/more\"\n"));
    let reloaded = ctl(&admin, &["reload"]).await;
    assert!(
        reloaded.ok && reloaded.stdout.contains("reloaded"),
        "{}",
        reloaded.stderr
    );
    let status = json(&ctl(&admin, &["--json", "status"]).await);
    assert_eq!(status["routes"], 2);
    assert_eq!(status["reloads"]["failure"], 1, "{status:#}");
    assert_eq!(status["reloads"]["success"], 1, "{status:#}");
}

/// A TLS 1.2-only client with a valid client certificate.
async fn tls12_handshake(
    ca: &Ca,
    identity: &(String, String),
    addr: SocketAddr,
) -> std::io::Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(identity.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mtls_admin_listener_needs_a_client_certificate_and_tls_1_3() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Ca::new("Weir Admin CA");
    let clients = Ca::new("Weir Operators CA");
    let strangers = Ca::new("Someone Else");
    let server = servers.leaf("admin", &["localhost"], false);
    let operator = clients.leaf("ops", &["ops.example.test"], true);
    let stranger = strangers.leaf("ops", &["ops.example.test"], true);
    let client_ca = write(dir.path(), "clients.pem", &clients.pem);
    let tls = format!(
        "[admin.tls]\ncertificates = [{}]\nclient_ca = {:?}\n",
        cert_table(dir.path(), "admin", &server),
        client_ca.display().to_string()
    );
    let (a, b) = (named("a").await, named("b").await);
    let proxy = TestProxy::start(&format!("{}{tls}", config(&a, &b, ""))).await;
    let admin_addr = proxy.admin.unwrap();
    let admin = format!("https://127.0.0.1:{}", admin_addr.port());
    let ca = write(dir.path(), "servers.pem", &servers.pem);
    let ca = ca.to_str().unwrap();
    let files = |name: &str, pair: &(String, String)| {
        let cert = write(dir.path(), &format!("{name}.crt"), &pair.0);
        let key = write(dir.path(), &format!("{name}.key"), &pair.1);
        (cert.display().to_string(), key.display().to_string())
    };
    let (cert, key) = files("operator", &operator);
    let (bad_cert, bad_key) = files("stranger", &stranger);
    let base = ["--ca", ca, "--server-name", "localhost"];

    let without = ctl(&admin, &[&base[..], &["status"]].concat()).await;
    assert!(!without.ok, "{}", without.stdout);
    assert!(
        without.stderr.contains("admin listener"),
        "{}",
        without.stderr
    );

    let untrusted = ctl(
        &admin,
        &[
            &base[..],
            &["--cert", &bad_cert, "--key", &bad_key, "status"],
        ]
        .concat(),
    )
    .await;
    assert!(!untrusted.ok, "{}", untrusted.stdout);

    let with = ctl(
        &admin,
        &[
            &base[..],
            &["--cert", &cert, "--key", &key, "--json", "status"],
        ]
        .concat(),
    )
    .await;
    let status = json(&with);
    assert_eq!(status["admin_tls"], true);

    let plain = ctl(
        &format!("http://127.0.0.1:{}", admin_addr.port()),
        &["status"],
    )
    .await;
    assert!(!plain.ok, "{}", plain.stdout);

    assert!(
        tls12_handshake(&servers, &operator, admin_addr)
            .await
            .is_err(),
        "a TLS 1.2 handshake was accepted"
    );
    assert_eq!(
        client().get(proxy.url("/x")).send().await.unwrap().status(),
        200
    );
}
