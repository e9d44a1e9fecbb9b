//! TLS with rustls: listener configs (TLS 1.2/1.3 only, ALPN h2 and
//! http/1.1, several certificates chosen by SNI, optional or required client
//! certificates), certificate reload without restart, the TLS facts handed
//! to plugins, and client configs for HTTPS upstreams.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

use crate::config::{ClientAuth, ListenerTls, UpstreamTls};
use crate::plugin::bindings::types::TlsInfo;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Rustls(String),
}

fn file_error(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no usable private key: {e}")))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The DNS names a certificate is for (its SAN dNSNames, else its CN).
fn names_of(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        for cn in parsed.subject().iter_common_name() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.to_ascii_lowercase());
            }
        }
    }
    names
}

/// Picks the certificate for the SNI name: exact name, then `*.suffix`,
/// then the first certificate configured.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(key.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// Which TLS versions a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 and 1.2: the data listeners, for every client out there.
    Tls12And13,
    /// TLS 1.3 only: the admin listener, whose clients are ours.
    Tls13,
}

impl Versions {
    fn list(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Versions::Tls12And13 => &BOTH,
            Versions::Tls13 => &ONLY_13,
        }
    }
}

/// Build a listener's rustls config from its files.
pub fn server_config(
    spec: &ListenerTls,
    versions: Versions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut resolver: Option<SniResolver> = None;
    for pair in &spec.certificates {
        let chain = load_certs(&pair.cert)?;
        let key = load_key(&pair.key)?;
        let names = names_of(&chain[0]);
        let certified = Arc::new(
            CertifiedKey::from_der(chain, key, &provider)
                .map_err(|e| file_error(&pair.key, format!("key does not match: {e}")))?,
        );
        let resolver = resolver.get_or_insert_with(|| SniResolver {
            default: certified.clone(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        });
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => resolver
                    .wildcard
                    .insert(parent.to_owned(), certified.clone()),
                None => resolver.exact.insert(name, certified.clone()),
            };
        }
    }
    let resolver = resolver.ok_or_else(|| TlsError::Rustls("no certificate configured".into()))?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions.list())
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &spec.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match spec.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            }
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener's TLS config, swapped when its files change on disk.
pub struct ReloadingConfig {
    current: ArcSwap<ServerConfig>,
    spec: ListenerTls,
    versions: Versions,
}

impl ReloadingConfig {
    pub fn new(spec: ListenerTls, versions: Versions) -> Result<Arc<ReloadingConfig>, TlsError> {
        let config = server_config(&spec, versions)?;
        Ok(Arc::new(ReloadingConfig {
            current: ArcSwap::new(config),
            spec,
            versions,
        }))
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    fn newest_change(&self) -> Option<SystemTime> {
        let mut files: Vec<&Path> = Vec::new();
        for pair in &self.spec.certificates {
            files.push(&pair.cert);
            files.push(&pair.key);
        }
        if let Some(ca) = &self.spec.client_ca {
            files.push(ca);
        }
        files
            .into_iter()
            .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .max()
    }

    /// [`Self::watch`] until the stop flag is raised.
    pub async fn watch_until(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        tokio::select! {
            () = self.watch() => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
    }

    /// Poll the files; rebuild and swap when they change. A broken new file
    /// is refused with a log line and the previous config keeps serving.
    /// Reading and parsing the files runs on a blocking thread, never on a
    /// request worker.
    pub async fn watch(self: Arc<Self>) {
        let mut ticker =
            tokio::time::interval(self.spec.reload_check.max(Duration::from_millis(10)));
        let mut seen = {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.newest_change())
                .await
                .ok()
                .flatten()
        };
        loop {
            ticker.tick().await;
            let this = self.clone();
            let checked = tokio::task::spawn_blocking(move || this.reload_if_changed(seen)).await;
            if let Ok(newest) = checked {
                seen = newest;
            }
        }
    }

    /// Rebuild the config if a file changed since `seen`; returns the
    /// newest change time now.
    fn reload_if_changed(&self, seen: Option<SystemTime>) -> Option<SystemTime> {
        let changed = self.newest_change();
        if changed == seen {
            return seen;
        }
        match server_config(&self.spec, self.versions) {
            Ok(config) => {
                self.current.store(config);
                tracing::info!("TLS certificates reloaded");
            }
            Err(err) => {
                tracing::error!(error = %err, "TLS reload refused; keeping the previous certificates")
            }
        }
        changed
    }
}

/// The TLS facts of an accepted connection, for plugins.
pub fn tls_info(conn: &ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut info = TlsInfo {
        version,
        sni: conn.server_name().map(str::to_owned),
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        client_cert_subject: None,
        client_cert_sans: Vec::new(),
    };
    if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) {
            info.client_cert_subject = Some(parsed.subject().to_string());
            if let Ok(Some(san)) = parsed.subject_alternative_name() {
                info.client_cert_sans = san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|name| {
                        use x509_parser::extensions::GeneralName;
                        match name {
                            GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                            GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
                            GeneralName::URI(u) => Some(format!("URI:{u}")),
                            GeneralName::IPAddress(bytes) => {
                                ip_text(bytes).map(|ip| format!("IP:{ip}"))
                            }
                            _ => None,
                        }
                    })
                    .collect();
            }
        }
    }
    info
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => {
            let octets: [u8; 4] = bytes.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(octets).to_string())
        }
        16 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(octets).to_string())
        }
        _ => None,
    }
}

/// The client config for HTTPS upstreams: a configured CA or the system
/// roots, and an optional client certificate (upstream mTLS).
pub fn client_config(spec: &UpstreamTls) -> Result<ClientConfig, TlsError> {
    let roots = match &spec.ca {
        Some(ca) => load_roots(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    // ALPN (`http/1.1`) is set by the upstream connector that uses it.
    let config = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| file_error(key, format!("client key does not match: {e}")))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}
