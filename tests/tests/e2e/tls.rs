//! TLS termination with rustls: ALPN (h2 and http/1.1), certificates chosen
//! by SNI, mTLS required and optional with the client certificate's subject
//! and SANs reaching plugins, certificate reload without restart, and HTTPS
//! upstreams with upstream mTLS. Every certificate is generated here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use weir_tests::{artifacts, echo_json, echoed_header, respond, TestProxy, Upstream};

/// A test certificate authority.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate (PEM cert, PEM key) for `names`.
    pub(crate) fn leaf(&self, common_name: &str, names: &[&str], client: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Weir Tests");
        if client {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
                .subject_alt_names
                .push(SanType::Rfc822Name("ops@example.test".try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A reqwest client trusting `ca`, optionally presenting a client cert,
/// resolving every test name to `addr`.
fn tls_client(ca: &Ca, identity: Option<&(String, String)>, addr: SocketAddr) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut client = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .no_proxy();
    for name in [
        "localhost",
        "a.test",
        "b.test",
        "new.test",
        "old.test",
        "x.wild.test",
    ] {
        client = client.resolve(name, addr);
    }
    client.build().unwrap()
}

/// Config with a TLS listener; TestProxy's plain listener comes after it,
/// so the TLS one is the first address.
fn tls_proxy_config(upstream: &Upstream, tls: &str) -> String {
    format!(
        "default_upstream = \"up\"\nchain = [\"inspector\"]\n{}\n[plugins.inspector]\nfile = {:?}\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n{tls}\n",
        upstream.toml("up"),
        artifacts::INSPECTOR
    )
}

async fn start_tls(upstream: &Upstream, tls: &str) -> (TestProxy, SocketAddr) {
    let proxy = TestProxy::start(&tls_proxy_config(upstream, tls)).await;
    let addr = proxy.all_addrs()[0];
    (proxy, addr)
}

pub(crate) fn cert_table(dir: &Path, name: &str, pair: &(String, String)) -> String {
    let cert = write(dir, &format!("{name}.pem"), &pair.0);
    let key = write(dir, &format!("{name}.key"), &pair.1);
    format!(
        "{{ cert = {:?}, key = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn https_listener_negotiates_h2_and_http1_and_tells_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Weir Test CA");
    let server = ca.leaf("localhost", &["localhost"], false);
    let upstream = Upstream::echo().await;
    let (_proxy, addr) = start_tls(
        &upstream,
        &format!(
            "[listeners.tls]\ncertificates = [{}]\n",
            cert_table(dir.path(), "server", &server)
        ),
    )
    .await;
    let client = tls_client(&ca, None, addr);
    let response = client
        .get(format!("https://localhost:{}/secure", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-forwarded-proto"), ["https"]);
    assert_eq!(echoed_header(&echo, "x-inspect-scheme"), ["https"]);
    assert_eq!(echoed_header(&echo, "x-inspect-tls-version"), ["TLSv1.3"]);
    assert_eq!(echoed_header(&echo, "x-inspect-sni"), ["localhost"]);
    assert_eq!(echoed_header(&echo, "x-inspect-alpn"), ["h2"]);
    assert_eq!(echoed_header(&echo, "x-inspect-client-subject"), [""]);

    let http1 = reqwest::Client::builder()
        .use_preconfigured_tls({
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                .unwrap();
            let mut config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            config
        })
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let response = http1
        .get(format!("https://localhost:{}/one", addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_11);
    let echo = echo_json(&response.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-inspect-alpn"), ["http/1.1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_chosen_by_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Weir Test CA");
    let a = ca.leaf("a.test", &["a.test"], false);
    let b = ca.leaf("b.test", &["b.test", "*.wild.test"], false);
    let upstream = Upstream::echo().await;
    let (_proxy, addr) = start_tls(
        &upstream,
        &format!(
            "[listeners.tls]\ncertificates = [{}, {}]\n",
            cert_table(dir.path(), "a", &a),
            cert_table(dir.path(), "b", &b)
        ),
    )
    .await;
    let client = tls_client(&ca, None, addr);
    // Each name verifies only if the certificate for that name was served.
    for name in ["a.test", "b.test", "x.wild.test"] {
        let response = client
            .get(format!("https://{name}:{}/", addr.port()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let echo = echo_json(&response.text().await.unwrap());
        assert_eq!(echoed_header(&echo, "x-inspect-sni"), [name]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_required_refuses_anonymous_clients_and_passes_the_subject() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Weir Test CA");
    let clients = Ca::new("Weir Client CA");
    let server = ca.leaf("localhost", &["localhost"], false);
    let client_cert = clients.leaf("job-runner", &["runner.internal"], true);
    let client_ca = write(dir.path(), "clients.pem", &clients.pem);
    let upstream = Upstream::echo().await;
    let (_proxy, addr) = start_tls(
        &upstream,
        &format!(
            "[listeners.tls]\ncertificates = [{}]\nclient_ca = {:?}\nclient_auth = \"required\"\n",
            cert_table(dir.path(), "server", &server),
            client_ca.display().to_string()
        ),
    )
    .await;
    let url = format!("https://localhost:{}/jobs", addr.port());

    let anonymous = tls_client(&ca, None, addr).get(&url).send().await;
    assert!(anonymous.is_err(), "a client without a certificate got in");

    // A certificate from another CA is refused too.
    let stranger = ca.leaf("mallory", &["mallory.test"], true);
    let refused = tls_client(&ca, Some(&stranger), addr)
        .get(&url)
        .send()
        .await;
    assert!(refused.is_err(), "a certificate from an unknown CA got in");

    let response = tls_client(&ca, Some(&client_cert), addr)
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo = echo_json(&response.text().await.unwrap());
    let subject = echoed_header(&echo, "x-inspect-client-subject");
    assert!(subject[0].contains("CN=job-runner"), "{subject:?}");
    assert!(subject[0].contains("O=Weir Tests"), "{subject:?}");
    assert_eq!(
        echoed_header(&echo, "x-inspect-client-sans"),
        ["DNS:runner.internal,email:ops@example.test"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mtls_optional_lets_anonymous_clients_in_without_a_subject() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Weir Test CA");
    let server = ca.leaf("localhost", &["localhost"], false);
    let client_cert = ca.leaf("someone", &["someone.test"], true);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let upstream = Upstream::echo().await;
    let (_proxy, addr) = start_tls(
        &upstream,
        &format!(
            "[listeners.tls]\ncertificates = [{}]\nclient_ca = {:?}\nclient_auth = \"optional\"\n",
            cert_table(dir.path(), "server", &server),
            ca_file.display().to_string()
        ),
    )
    .await;
    let url = format!("https://localhost:{}/", addr.port());
    let anonymous = tls_client(&ca, None, addr).get(&url).send().await.unwrap();
    let echo = echo_json(&anonymous.text().await.unwrap());
    assert_eq!(echoed_header(&echo, "x-inspect-client-subject"), [""]);
    let known = tls_client(&ca, Some(&client_cert), addr)
        .get(&url)
        .send()
        .await
        .unwrap();
    let echo = echo_json(&known.text().await.unwrap());
    assert!(echoed_header(&echo, "x-inspect-client-subject")[0].contains("CN=someone"));
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_reload_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Weir Test CA");
    let old = ca.leaf("old.test", &["old.test"], false);
    let upstream = Upstream::echo().await;
    let table = cert_table(dir.path(), "server", &old);
    let (_proxy, addr) = start_tls(
        &upstream,
        &format!("[listeners.tls]\ncertificates = [{table}]\nreload_check_ms = 50\n"),
    )
    .await;
    let url = |name: &str| format!("https://{name}:{}/", addr.port());
    assert!(tls_client(&ca, None, addr)
        .get(url("old.test"))
        .send()
        .await
        .is_ok());
    assert!(tls_client(&ca, None, addr)
        .get(url("new.test"))
        .send()
        .await
        .is_err());

    // A broken replacement is refused; the old certificate keeps serving.
    write(dir.path(), "server.pem", "not a certificate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tls_client(&ca, None, addr)
        .get(url("old.test"))
        .send()
        .await
        .is_ok());

    let new = ca.leaf("new.test", &["new.test"], false);
    write(dir.path(), "server.key", &new.1);
    write(dir.path(), "server.pem", &new.0);
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tls_client(&ca, None, addr)
            .get(url("new.test"))
            .send()
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new certificate was never served");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_upstream_mtls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Upstream CA");
    let (server_cert, server_key) = ca.leaf("upstream.test", &["upstream.test"], false);
    let proxy_identity = ca.leaf("weir-proxy", &["weir.internal"], true);

    // A real TLS upstream that requires a client certificate from `ca`.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let mut server_config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server_cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server_key.as_bytes()).unwrap(),
        )
        .unwrap();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let subject = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.len())
                    .unwrap_or(0);
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(respond(
                        200,
                        format!("tls upstream, client certs: {subject}"),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let cert_file = write(dir.path(), "proxy.pem", &proxy_identity.0);
    let key_file = write(dir.path(), "proxy.key", &proxy_identity.1);
    let proxy = TestProxy::start(&format!(
        "default_upstream = \"secure\"\n[upstreams.secure]\nendpoints = [\"{upstream_addr}\"]\n[upstreams.secure.tls]\nca = {:?}\nserver_name = \"upstream.test\"\nclient_cert = {:?}\nclient_key = {:?}\n",
        ca_file.display().to_string(),
        cert_file.display().to_string(),
        key_file.display().to_string()
    ))
    .await;
    let response = weir_tests::client()
        .get(proxy.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "tls upstream, client certs: 1"
    );

    // Without the CA, the upstream's certificate is not trusted: 502.
    let untrusting = TestProxy::start(&format!(
        "default_upstream = \"secure\"\n[upstreams.secure]\nendpoints = [\"{upstream_addr}\"]\nretries = 0\n[upstreams.secure.tls]\nserver_name = \"upstream.test\"\n"
    ))
    .await;
    let response = weir_tests::client()
        .get(untrusting.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
}
