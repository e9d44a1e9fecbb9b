//! Configuration: `proxy.toml` is parsed into [`file::FileConfig`] and then
//! validated once into [`Config`], the only form the rest of Weir reads.
//! Every error names the file, the line where known, and the key path, e.g.
//! `proxy.toml:14: plugins.auth.file: no such file plugins/auth.wasm`.

pub mod file;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use file::{FileConfig, OnErrorFile, StrategyFile};

use crate::kv::KvLimits;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listeners: Vec<ListenerSpec>,
    pub limits: Limits,
    pub proxy: ProxySettings,
    pub runtime: RuntimeSettings,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub default_upstream: Option<String>,
    /// Plugins in chain order.
    pub chain: Vec<PluginSpec>,
    pub cache: Option<CacheSettings>,
    pub admin: Option<SocketAddr>,
    pub kv: KvSettings,
}

#[derive(Debug, Clone)]
pub enum KvSettings {
    Memory(KvLimits),
    Redis {
        url: String,
        prefix: String,
        timeout: Duration,
        max_value_bytes: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub capacity_bytes: u64,
    pub max_entry_bytes: usize,
    pub max_ttl: Duration,
    pub stale_keep: Duration,
    pub allow_shared_authenticated: bool,
    pub store_set_cookie: bool,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub certificates: Vec<CertKey>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub reload_check: Duration,
}

#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_request_body_bytes: u64,
    pub max_buffered_body_bytes: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Peers whose forwarding headers are believed (empty: nobody).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub client_ip_header: ClientIpHeader,
    pub paths: crate::canonical::PathOptions,
    pub underscores: Underscores,
    pub via_name: String,
}

impl ProxySettings {
    pub fn is_trusted(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// The header a trusted peer names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIpHeader {
    XForwardedFor,
    XRealIp,
}

/// What happens to request headers whose name contains `_` (CGI-style
/// upstreams read `X_User` as `X-User`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    Drop,
    Reject,
    Allow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSettings {
    pub cache_dir: PathBuf,
    pub max_instances: u32,
    pub max_memory_bytes: u64,
    pub reload_check: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    /// `host:port` authorities.
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub lb: LoadBalancing,
    pub max_fails: u32,
    pub eject: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub retry_budget_percent: u32,
    pub max_retry_after: Duration,
    pub health_check: Option<HealthCheck>,
    pub tls: Option<UpstreamTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    LeastOutstanding,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// What to do when a plugin fails (trap, timeout, memory cap, bad output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    Deny,
    Skip,
}

/// How instances of a plugin are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Fresh,
    Pooled { pool_size: usize, max_uses: u64 },
}

#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub file: PathBuf,
    /// The plugin's config table as JSON.
    pub config_json: String,
    pub on_error: OnError,
    pub strategy: Strategy,
    pub timeout: Duration,
    pub memory_bytes: u64,
    pub allow_hosts: Vec<String>,
}

/// A configuration problem, located as precisely as the parser allows.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path, e.g. `plugins.auth.file`; empty for whole-file errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A list of problems; `weir check` prints one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                line: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Validate config text; `path` locates relative files and errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let located = Locator {
            path,
            text,
            base: base_dir(path),
        };
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| ConfigErrors(vec![located.toml_error(String::new(), &e)]))?;
        let raw: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigErrors(vec![located.toml_error(key, e.inner())])
        })?;
        Validator {
            at: located,
            errors: Vec::new(),
        }
        .validate(raw)
    }
}

/// The folder every relative path in a config file is resolved against:
/// the file's own, made absolute. `Path::parent` of a bare `proxy.toml` is
/// the empty path, which `std::path::absolute` refuses, so that case (and
/// `./proxy.toml`) means the working directory at load time.
fn base_dir(config: &Path) -> PathBuf {
    let parent = match config.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned())
}

/// Turns byte spans into line numbers for error messages, and knows the
/// folder relative paths are resolved against.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
    base: PathBuf,
}

impl Locator<'_> {
    fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&self, span: Option<Range<usize>>, key: String, message: String) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            line: span.map(|s| self.line_of(s)),
            key,
            message,
        }
    }

    fn toml_error(&self, key: String, err: &toml::de::Error) -> ConfigError {
        self.error(err.span(), key, err.message().trim_end().to_owned())
    }

    fn base_dir(&self) -> &Path {
        &self.base
    }
}

struct Validator<'a> {
    at: Locator<'a>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn fail(&mut self, span: Option<Range<usize>>, key: impl Into<String>, message: String) {
        let err = self.at.error(span, key.into(), message);
        self.errors.push(err);
    }

    fn validate(mut self, raw: FileConfig) -> Result<Config, ConfigErrors> {
        if raw.listeners.is_empty() {
            self.fail(
                None,
                "listeners",
                "at least one [[listeners]] is required".into(),
            );
        }
        let mut listeners = Vec::new();
        for (i, listener) in raw.listeners.iter().enumerate() {
            let tls = listener.tls.as_ref().map(|tls| self.listener_tls(i, tls));
            match listener.address.get_ref().parse::<SocketAddr>() {
                Ok(address) => listeners.push(ListenerSpec { address, tls }),
                Err(_) => self.fail(
                    Some(listener.address.span()),
                    format!("listeners[{i}].address"),
                    format!(
                        "{:?} is not an IP:PORT address (e.g. \"127.0.0.1:8080\")",
                        listener.address.get_ref()
                    ),
                ),
            }
        }

        let admin = raw.admin.as_ref().and_then(|admin| {
            match admin.address.get_ref().parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.fail(
                        Some(admin.address.span()),
                        "admin.address",
                        format!("{:?} is not an IP:PORT address", admin.address.get_ref()),
                    );
                    None
                }
            }
        });
        let upstreams = self.upstreams(&raw);
        let default_upstream = raw.default_upstream.as_ref().map(|name| {
            self.check_upstream_ref(name, "default_upstream", &upstreams);
            name.get_ref().clone()
        });
        let chain = self.chain(&raw);

        // wasmtime's cache wants an absolute directory; so do log lines.
        let base = self.at.base_dir().to_owned();
        let limits = &raw.limits;
        let config = Config {
            path: self.at.path.to_owned(),
            listeners,
            limits: Limits {
                max_header_bytes: limits.max_header_bytes,
                max_headers: limits.max_headers,
                max_request_body_bytes: limits.max_request_body_bytes,
                max_buffered_body_bytes: limits.max_buffered_body_bytes,
                header_read_timeout: Duration::from_millis(limits.header_read_timeout_ms),
                shutdown_grace: Duration::from_millis(limits.shutdown_grace_ms),
                max_connections: limits.max_connections.max(1),
                h2_max_concurrent_streams: limits.h2_max_concurrent_streams.max(1),
                h2_max_pending_reset_streams: limits.h2_max_pending_reset_streams,
            },
            proxy: self.proxy(&raw.proxy),
            runtime: RuntimeSettings {
                cache_dir: base.join(&raw.runtime.cache_dir),
                max_instances: raw.runtime.max_instances,
                max_memory_bytes: raw.runtime.max_memory_mb << 20,
                reload_check: (raw.runtime.reload_check_ms > 0)
                    .then(|| Duration::from_millis(raw.runtime.reload_check_ms)),
            },
            upstreams,
            default_upstream,
            chain,
            cache: raw.cache.as_ref().map(|c| CacheSettings {
                capacity_bytes: c.capacity_bytes,
                max_entry_bytes: c.max_entry_bytes,
                max_ttl: Duration::from_secs(c.max_ttl_seconds),
                stale_keep: Duration::from_secs(c.stale_keep_seconds),
                allow_shared_authenticated: c.allow_shared_authenticated,
                store_set_cookie: c.store_set_cookie,
            }),
            admin,
            kv: self.kv(&raw.kv),
        };
        if let KvSettings::Redis { url, .. } = &config.kv {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://"))
            {
                self.fail(None, "kv.url", format!("{url:?} is not a redis:// URL"));
            }
        }
        if limits.max_header_bytes < 1024 {
            self.fail(
                None,
                "limits.max_header_bytes",
                "must be at least 1024".into(),
            );
        }
        for spec in &config.chain {
            if spec.memory_bytes > config.runtime.max_memory_bytes {
                self.fail(
                    None,
                    format!("plugins.{}.memory_mb", spec.name),
                    format!(
                        "{} MiB exceeds runtime.max_memory_mb ({} MiB)",
                        spec.memory_bytes >> 20,
                        raw.runtime.max_memory_mb
                    ),
                );
            }
        }
        if self.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    fn upstreams(&mut self, raw: &FileConfig) -> BTreeMap<String, UpstreamSpec> {
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in &raw.upstreams {
            if let Some(check) = &upstream.health_check {
                if !check.path.starts_with('/') {
                    self.fail(
                        None,
                        format!("upstreams.{name}.health_check.path"),
                        format!("{:?} must start with '/'", check.path),
                    );
                }
            }
            if upstream.endpoints.is_empty() {
                self.fail(
                    None,
                    format!("upstreams.{name}.endpoints"),
                    "at least one endpoint is required".into(),
                );
            }
            for (i, endpoint) in upstream.endpoints.iter().enumerate() {
                if let Err(why) = check_authority(endpoint.get_ref()) {
                    self.fail(
                        Some(endpoint.span()),
                        format!("upstreams.{name}.endpoints[{i}]"),
                        why,
                    );
                }
            }
            upstreams.insert(
                name.clone(),
                UpstreamSpec {
                    name: name.clone(),
                    endpoints: upstream
                        .endpoints
                        .iter()
                        .map(|e| e.get_ref().clone())
                        .collect(),
                    connect_timeout: Duration::from_millis(upstream.connect_timeout_ms),
                    response_timeout: Duration::from_millis(upstream.response_timeout_ms),
                    idle_timeout: Duration::from_millis(upstream.idle_timeout_ms.max(1)),
                    max_idle_per_endpoint: upstream.max_idle_per_endpoint,
                    lb: match upstream.lb {
                        file::LbFile::RoundRobin => LoadBalancing::RoundRobin,
                        file::LbFile::LeastOutstanding => LoadBalancing::LeastOutstanding,
                    },
                    max_fails: upstream.max_fails.max(1),
                    eject: Duration::from_millis(upstream.eject_ms),
                    retries: upstream.retries,
                    retry_backoff: Duration::from_millis(upstream.retry_backoff_ms),
                    retry_budget_percent: upstream.retry_budget_percent,
                    max_retry_after: Duration::from_millis(upstream.max_retry_after_ms),
                    tls: upstream.tls.as_ref().map(|tls| UpstreamTls {
                        ca: tls
                            .ca
                            .as_ref()
                            .map(|p| self.existing_file(p, format!("upstreams.{name}.tls.ca"))),
                        server_name: tls.server_name.clone(),
                        client_cert: tls.client_cert.as_ref().map(|p| {
                            self.existing_file(p, format!("upstreams.{name}.tls.client_cert"))
                        }),
                        client_key: tls.client_key.as_ref().map(|p| {
                            self.existing_file(p, format!("upstreams.{name}.tls.client_key"))
                        }),
                    }),
                    health_check: upstream.health_check.as_ref().map(|h| HealthCheck {
                        path: h.path.clone(),
                        interval: Duration::from_millis(h.interval_ms.max(10)),
                        timeout: Duration::from_millis(h.timeout_ms.max(1)),
                    }),
                },
            );
        }
        upstreams
    }

    fn listener_tls(&mut self, index: usize, tls: &file::ListenerTlsFile) -> ListenerTls {
        if tls.certificates.is_empty() {
            self.fail(
                None,
                format!("listeners[{index}].tls.certificates"),
                "at least one { cert, key } pair is required".into(),
            );
        }
        let certificates = tls
            .certificates
            .iter()
            .enumerate()
            .map(|(j, pair)| CertKey {
                cert: self.existing_file(
                    &pair.cert,
                    format!("listeners[{index}].tls.certificates[{j}].cert"),
                ),
                key: self.existing_file(
                    &pair.key,
                    format!("listeners[{index}].tls.certificates[{j}].key"),
                ),
            })
            .collect();
        ListenerTls {
            certificates,
            client_ca: tls
                .client_ca
                .as_ref()
                .map(|p| self.existing_file(p, format!("listeners[{index}].tls.client_ca"))),
            client_auth: match tls.client_auth {
                file::ClientAuthFile::Required => ClientAuth::Required,
                file::ClientAuthFile::Optional => ClientAuth::Optional,
            },
            reload_check: Duration::from_millis(tls.reload_check_ms),
        }
    }

    fn proxy(&mut self, raw: &file::ProxyFile) -> ProxySettings {
        if let Some(old) = &raw.trust_forwarded_headers {
            self.fail(
                Some(old.span()),
                "proxy.trust_forwarded_headers",
                "replaced by proxy.trusted_proxies: list the balancers' addresses or CIDRs \
                 (e.g. [\"10.0.0.0/8\"]) whose X-Forwarded-* headers Weir may believe"
                    .into(),
            );
        }
        let mut trusted_proxies = Vec::new();
        for (i, entry) in raw.trusted_proxies.iter().enumerate() {
            let text = entry.get_ref();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => self.fail(
                    Some(entry.span()),
                    format!("proxy.trusted_proxies[{i}]"),
                    format!("{text:?} is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        ProxySettings {
            trusted_proxies,
            client_ip_header: match raw.client_ip_header {
                file::ClientIpHeaderFile::XForwardedFor => ClientIpHeader::XForwardedFor,
                file::ClientIpHeaderFile::XRealIp => ClientIpHeader::XRealIp,
            },
            paths: crate::canonical::PathOptions {
                merge_slashes: raw.merge_slashes,
                ambiguous: match raw.ambiguous_paths {
                    file::AmbiguousFile::Reject => crate::canonical::Ambiguous::Reject,
                    file::AmbiguousFile::Keep => crate::canonical::Ambiguous::Keep,
                    file::AmbiguousFile::Redirect => crate::canonical::Ambiguous::Redirect,
                },
            },
            underscores: match raw.headers_with_underscores {
                file::UnderscoresFile::Drop => Underscores::Drop,
                file::UnderscoresFile::Reject => Underscores::Reject,
                file::UnderscoresFile::Allow => Underscores::Allow,
            },
            via_name: raw.via_name.clone(),
        }
    }

    /// Resolve a path relative to the config file; report it if missing.
    fn existing_file(&mut self, path: &str, key: String) -> PathBuf {
        let resolved = self.at.base_dir().join(path);
        if !resolved.is_file() {
            self.fail(None, key, format!("no such file {}", resolved.display()));
        }
        resolved
    }

    fn check_upstream_ref(
        &mut self,
        name: &Spanned<String>,
        key: &str,
        upstreams: &BTreeMap<String, UpstreamSpec>,
    ) {
        if !upstreams.contains_key(name.get_ref()) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            self.fail(
                Some(name.span()),
                key,
                format!(
                    "unknown upstream {:?} (configured: {})",
                    name.get_ref(),
                    list_or_none(&known)
                ),
            );
        }
    }

    /// `[kv]`: every size must be positive, and a plugin's share may not
    /// exceed the whole (it would no longer protect the other plugins).
    fn kv(&mut self, raw: &file::KvFile) -> KvSettings {
        match raw {
            file::KvFile::Memory {
                max_bytes,
                max_entries,
                plugin_max_bytes,
                plugin_max_entries,
                max_value_bytes,
            } => {
                let limits = KvLimits {
                    max_bytes: *max_bytes,
                    max_entries: *max_entries,
                    plugin_max_bytes: plugin_max_bytes.unwrap_or((max_bytes / 4).max(1)),
                    plugin_max_entries: plugin_max_entries.unwrap_or((max_entries / 10).max(1)),
                    max_value_bytes: *max_value_bytes,
                };
                for (key, value) in [
                    ("max_bytes", limits.max_bytes),
                    ("max_entries", limits.max_entries),
                    ("plugin_max_bytes", limits.plugin_max_bytes),
                    ("plugin_max_entries", limits.plugin_max_entries),
                    ("max_value_bytes", limits.max_value_bytes as u64),
                ] {
                    if value == 0 {
                        self.fail(None, format!("kv.{key}"), "must be greater than 0".into());
                    }
                }
                for (share, part, whole, all) in [
                    (
                        "plugin_max_bytes",
                        limits.plugin_max_bytes,
                        "max_bytes",
                        limits.max_bytes,
                    ),
                    (
                        "plugin_max_entries",
                        limits.plugin_max_entries,
                        "max_entries",
                        limits.max_entries,
                    ),
                ] {
                    // A zero whole is reported above; comparing with it
                    // would only repeat that.
                    if all > 0 && part > all {
                        self.fail(
                            None,
                            format!("kv.{share}"),
                            format!("{part} exceeds kv.{whole} ({all})"),
                        );
                    }
                }
                KvSettings::Memory(limits)
            }
            file::KvFile::Redis {
                url,
                prefix,
                timeout_ms,
                max_value_bytes,
            } => {
                if *max_value_bytes == 0 {
                    self.fail(None, "kv.max_value_bytes", "must be greater than 0".into());
                }
                KvSettings::Redis {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    timeout: Duration::from_millis(*timeout_ms),
                    max_value_bytes: *max_value_bytes,
                }
            }
        }
    }

    fn chain(&mut self, raw: &FileConfig) -> Vec<PluginSpec> {
        let mut seen = HashSet::new();
        let mut chain = Vec::new();
        for (i, entry) in raw.chain.iter().enumerate() {
            let name = entry.get_ref();
            if !seen.insert(name.clone()) {
                self.fail(
                    Some(entry.span()),
                    format!("chain[{i}]"),
                    format!("plugin {name:?} appears twice in the chain"),
                );
                continue;
            }
            let Some(plugin) = raw.plugins.get(name) else {
                let known: Vec<&str> = raw.plugins.keys().map(String::as_str).collect();
                self.fail(
                    Some(entry.span()),
                    format!("chain[{i}]"),
                    format!(
                        "unknown plugin {name:?} (configured: {})",
                        list_or_none(&known)
                    ),
                );
                continue;
            };
            if let Some(spec) = self.plugin(name, plugin) {
                chain.push(spec);
            }
        }
        chain
    }

    fn plugin(&mut self, name: &str, plugin: &file::PluginFile) -> Option<PluginSpec> {
        let file = self.at.base_dir().join(plugin.file.get_ref());
        if !file.is_file() {
            self.fail(
                Some(plugin.file.span()),
                format!("plugins.{name}.file"),
                format!("no such file {}", file.display()),
            );
            return None;
        }
        let config_json = match serde_json::to_string(&plugin.config) {
            Ok(json) => json,
            Err(e) => {
                self.fail(
                    None,
                    format!("plugins.{name}.config"),
                    format!("cannot be expressed as JSON: {e}"),
                );
                return None;
            }
        };
        if plugin.timeout_ms == 0 {
            self.fail(
                None,
                format!("plugins.{name}.timeout_ms"),
                "must be greater than 0".into(),
            );
        }
        Some(PluginSpec {
            name: name.to_owned(),
            file,
            config_json,
            on_error: match plugin.on_error {
                OnErrorFile::Deny => OnError::Deny,
                OnErrorFile::Skip => OnError::Skip,
            },
            strategy: match plugin.instances {
                StrategyFile::Fresh => Strategy::Fresh,
                StrategyFile::Pooled => Strategy::Pooled {
                    pool_size: plugin.pool_size,
                    max_uses: plugin.max_uses.max(1),
                },
            },
            timeout: Duration::from_millis(plugin.timeout_ms),
            memory_bytes: plugin.memory_mb << 20,
            allow_hosts: plugin.allow_hosts.clone(),
        })
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Check a `host:port` endpoint.
fn check_authority(endpoint: &str) -> Result<(), String> {
    let authority: http::uri::Authority = endpoint
        .parse()
        .map_err(|_| format!("{endpoint:?} is not a host:port endpoint"))?;
    if authority.port_u16().is_none() {
        return Err(format!(
            "{endpoint:?} has no port (write e.g. \"{}:80\")",
            authority.host()
        ));
    }
    if endpoint.contains('@') {
        return Err(format!("{endpoint:?} must not contain credentials"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
