//! Configuration: `proxy.toml` is parsed into [`file::FileConfig`] and then
//! validated once into [`Config`], the only form the rest of Weir reads.
//! Every error names the file, the line where known, and the key path, e.g.
//! `proxy.toml:14: plugins.auth.file: no such file plugins/auth.wasm`.

pub mod file;
mod routes;

pub use routes::RouteSpec;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::metrics::MetricsLimits;
use crate::plugin::outbound;
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
    /// Plugins in chain order: the chain of requests no route matches.
    pub chain: Vec<PluginSpec>,
    /// `[[routes]]` in match order.
    pub routes: Vec<RouteSpec>,
    pub cache: Option<CacheSettings>,
    pub admin: Option<AdminSettings>,
    pub access_log: Option<crate::access_log::Settings>,
    pub traces: Option<crate::otel::TraceSettings>,
    pub kv: KvSettings,
    /// Things worth an operator's attention that do not stop Weir
    /// (`weir check` prints them; `weir run` logs them).
    pub warnings: Vec<String>,
    /// Fixed until restart: the registry is process-wide.
    pub metrics: MetricsLimits,
}

#[derive(Debug, Clone)]
pub enum KvSettings {
    Memory(KvLimits),
    Redis(crate::kv::RedisSettings),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub capacity_bytes: u64,
    pub max_entry_bytes: usize,
    pub max_ttl: Duration,
    pub stale_keep: Duration,
    pub allow_shared_authenticated: bool,
    pub store_set_cookie: bool,
    /// The cache's own targeted field (RFC 9213), e.g. `weir-cache-control`.
    pub targeted_field: http::HeaderName,
    /// stale-if-error for responses that set none.
    pub serve_stale_on_error: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certificates: Vec<CertKey>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub reload_check: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub properties: PropertyLimits,
}

/// What the properties plugins pass down the chain may add up to, per
/// request. A plugin whose answer would cross a cap is the one that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyLimits {
    pub max_count: usize,
    /// Name plus value, for one property.
    pub max_bytes: usize,
    /// Every property of the request together.
    pub max_total_bytes: usize,
}

impl Default for PropertyLimits {
    fn default() -> Self {
        PropertyLimits {
            max_count: 64,
            max_bytes: 64 << 10,
            max_total_bytes: 256 << 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Peers whose forwarding headers are believed (empty: nobody).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub client_ip_header: ClientIpHeader,
    pub paths: crate::canonical::PathOptions,
    pub underscores: Underscores,
    /// This hop's `Via` entry, from `proxy.via_name`.
    pub via: crate::headers::Via,
}

impl ProxySettings {
    pub fn is_trusted(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// The admin listener.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub address: SocketAddr,
    /// The bearer token, when configured.
    pub token: Option<String>,
    /// `Host` names accepted besides the listener's address and loopback.
    pub allowed_hosts: Vec<String>,
    pub max_connections: usize,
    /// TLS 1.3 (and client certificates, when a CA is given).
    pub tls: Option<ListenerTls>,
}

impl fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminSettings")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("allowed_hosts", &self.allowed_hosts)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls)
            .finish()
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
    /// Calls past their first epoch tick executing at once.
    pub max_long_running_calls: usize,
    /// Share of the request workers' time one plugin's calls may take
    /// before they run off the workers (100: no limit).
    pub max_plugin_cpu_percent: u32,
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
    /// Open connections per endpoint, idle and busy.
    pub max_connections_per_endpoint: usize,
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
    pub logs: LogLimits,
    /// `http-client` bounds: destinations, concurrency, deadline, size.
    pub outbound: outbound::Settings,
    /// Calls running at once; more wait up to `queue_timeout`, then 503.
    pub max_concurrency: usize,
    pub queue_timeout: Duration,
}

/// How much one plugin may log: each message is cut at `max_bytes` (with a
/// marker), and lines beyond the token bucket (`per_second`, bursts of
/// `burst`) are dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_bytes: usize,
    pub per_second: u32,
    pub burst: u32,
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
    /// Every distinct plugin instance set this config needs: one per
    /// plugin and effective config, over the top-level chain and every
    /// route's, in first-use order.
    pub fn plugin_specs(&self) -> Vec<&PluginSpec> {
        let mut seen = HashSet::new();
        self.chain
            .iter()
            .chain(self.routes.iter().flat_map(|route| &route.chain))
            .filter(|spec| seen.insert((spec.name.as_str(), spec.config_json.as_str())))
            .collect()
    }

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
            warnings: Vec::new(),
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
    warnings: Vec<String>,
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

        let admin = raw.admin.as_ref().and_then(|admin| self.admin(admin));
        let access_log = raw.access_log.as_ref().map(|log| self.access_log(log));
        let traces = raw.traces.as_ref().map(|traces| self.traces(traces));
        let upstreams = self.upstreams(&raw);
        let default_upstream = raw.default_upstream.as_ref().map(|name| {
            self.check_upstream_ref(name, "default_upstream", &upstreams);
            name.get_ref().clone()
        });
        let mut base = routes::BaseSpecs::new();
        let chain = self.plugin_list("chain", &raw.chain, &raw, &mut base);
        let routes = self.routes(&raw, &mut base, &chain, &upstreams);
        self.check_ranges(&raw);
        let metrics = self.metrics(&raw.metrics);

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
                properties: PropertyLimits {
                    max_count: limits.max_properties,
                    max_bytes: limits.max_property_bytes,
                    max_total_bytes: limits.max_properties_bytes,
                },
            },
            proxy: self.proxy(&raw.proxy),
            runtime: RuntimeSettings {
                cache_dir: base.join(&raw.runtime.cache_dir),
                max_instances: raw.runtime.max_instances,
                max_memory_bytes: raw.runtime.max_memory_mb << 20,
                reload_check: (raw.runtime.reload_check_ms > 0)
                    .then(|| Duration::from_millis(raw.runtime.reload_check_ms)),
                max_long_running_calls: raw.runtime.max_long_running_calls.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map_or(1, |n| n.get().saturating_sub(1))
                        .max(1)
                }),
                max_plugin_cpu_percent: raw.runtime.max_plugin_cpu_percent,
            },
            upstreams,
            default_upstream,
            chain,
            routes,
            cache: raw.cache.as_ref().map(|c| CacheSettings {
                capacity_bytes: c.capacity_bytes,
                max_entry_bytes: c.max_entry_bytes,
                max_ttl: Duration::from_secs(c.max_ttl_seconds),
                stale_keep: Duration::from_secs(c.stale_keep_seconds),
                allow_shared_authenticated: c.allow_shared_authenticated,
                store_set_cookie: c.store_set_cookie,
                serve_stale_on_error: Duration::from_secs(c.serve_stale_on_error_seconds),
                targeted_field: match http::HeaderName::from_bytes(c.targeted_field.as_bytes()) {
                    Ok(name) => name,
                    Err(_) => {
                        self.fail(
                            None,
                            "cache.targeted_field",
                            format!("{:?} is not a header name", c.targeted_field),
                        );
                        http::HeaderName::from_static("weir-cache-control")
                    }
                },
            }),
            admin,
            access_log,
            traces,
            warnings: Vec::new(),
            metrics,
            kv: self.kv(&raw.kv),
        };
        if let KvSettings::Redis(crate::kv::RedisSettings { url, .. }) = &config.kv {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://"))
            {
                self.fail(None, "kv.url", format!("{url:?} is not a redis:// URL"));
            }
        }
        let mut checked = HashSet::new();
        for spec in config.plugin_specs() {
            if !checked.insert(&spec.name) {
                continue;
            }
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
            Ok(Config {
                warnings: self.warnings,
                ..config
            })
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
                    max_connections_per_endpoint: upstream.max_connections_per_endpoint,
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
        self.tls_files(&format!("listeners[{index}].tls"), tls)
    }

    /// A TLS listener's files, each checked to exist; `at` names the table.
    fn tls_files(&mut self, at: &str, tls: &file::ListenerTlsFile) -> ListenerTls {
        if tls.certificates.is_empty() {
            self.fail(
                None,
                format!("{at}.certificates"),
                "at least one { cert, key } pair is required".into(),
            );
        }
        let certificates = tls
            .certificates
            .iter()
            .enumerate()
            .map(|(j, pair)| CertKey {
                cert: self.existing_file(&pair.cert, format!("{at}.certificates[{j}].cert")),
                key: self.existing_file(&pair.key, format!("{at}.certificates[{j}].key")),
            })
            .collect();
        ListenerTls {
            certificates,
            client_ca: tls
                .client_ca
                .as_ref()
                .map(|p| self.existing_file(p, format!("{at}.client_ca"))),
            client_auth: match tls.client_auth {
                file::ClientAuthFile::Required => ClientAuth::Required,
                file::ClientAuthFile::Optional => ClientAuth::Optional,
            },
            reload_check: Duration::from_millis(tls.reload_check_ms),
        }
    }

    fn admin(&mut self, raw: &file::AdminFile) -> Option<AdminSettings> {
        let Ok(address) = raw.address.get_ref().parse::<SocketAddr>() else {
            self.fail(
                Some(raw.address.span()),
                "admin.address",
                format!("{:?} is not an IP:PORT address", raw.address.get_ref()),
            );
            return None;
        };
        let token = match &raw.token_file {
            Some(file) => {
                let path = self.at.base_dir().join(file.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
                    Ok(_) => {
                        self.fail(
                            Some(file.span()),
                            "admin.token_file",
                            format!("{} is empty", path.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.fail(
                            Some(file.span()),
                            "admin.token_file",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            None => std::env::var("WEIR_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().to_owned()),
        };
        if token.is_none() && !address.ip().is_loopback() && raw.token_file.is_none() {
            self.fail(
                Some(raw.address.span()),
                "admin.token_file",
                format!(
                    "required: the admin listener {address} is not on loopback \
                     (or set WEIR_ADMIN_TOKEN)"
                ),
            );
        }
        if token.is_none() {
            self.warnings.push(format!(
                "admin: no token (admin.token_file or WEIR_ADMIN_TOKEN): /metrics is open to \
                 anyone who reaches {address}, and cache purges are refused"
            ));
        }
        if raw.max_connections == 0 || raw.max_connections > 10_000 {
            self.fail(
                None,
                "admin.max_connections",
                format!(
                    "{} is out of range: expected 1 to 10000",
                    raw.max_connections
                ),
            );
        }
        Some(AdminSettings {
            address,
            token,
            allowed_hosts: raw
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            max_connections: raw.max_connections.max(1),
            tls: raw.tls.as_ref().map(|tls| self.tls_files("admin.tls", tls)),
        })
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
        let via = crate::headers::Via::new(&raw.via_name).unwrap_or_else(|err| {
            self.fail(None, "proxy.via_name", err.to_string());
            crate::headers::Via::new("weir").expect("a token")
        });
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
            via,
        }
    }

    /// `[metrics]`: absent keys take the defaults; 0 would refuse every
    /// plugin metric, which is what leaving the import unused does already.
    fn metrics(&mut self, raw: &file::MetricsFile) -> MetricsLimits {
        let defaults = MetricsLimits::default();
        let mut take = |value: &Option<Spanned<usize>>, key: &str, default: usize| match value {
            Some(value) if *value.get_ref() == 0 => {
                self.fail(
                    Some(value.span()),
                    format!("metrics.{key}"),
                    "must be greater than 0".into(),
                );
                default
            }
            Some(value) => *value.get_ref(),
            None => default,
        };
        MetricsLimits {
            max_series_per_plugin: take(
                &raw.max_series_per_plugin,
                "max_series_per_plugin",
                defaults.max_series_per_plugin,
            ),
            max_labels: take(&raw.max_labels, "max_labels", defaults.max_labels),
            max_label_value_bytes: take(
                &raw.max_label_value_bytes,
                "max_label_value_bytes",
                defaults.max_label_value_bytes,
            ),
            max_name_bytes: take(
                &raw.max_name_bytes,
                "max_name_bytes",
                defaults.max_name_bytes,
            ),
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

    fn traces(&mut self, raw: &file::TracesFile) -> crate::otel::TraceSettings {
        let endpoint = raw.endpoint.get_ref();
        match endpoint.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {}
            _ => self.fail(
                Some(raw.endpoint.span()),
                "traces.endpoint",
                format!(
                    "{endpoint:?} is not an http:// URL (e.g. http://127.0.0.1:4318/v1/traces; \
                     for TLS, export through a local collector)"
                ),
            ),
        }
        if !(0.0..=1.0).contains(&raw.sample) {
            self.fail(
                None,
                "traces.sample",
                format!("{} is outside 0..=1", raw.sample),
            );
        }
        if !(1..=1 << 20).contains(&raw.max_queue_spans) {
            self.fail(
                None,
                "traces.max_queue_spans",
                format!("{} is outside 1..=1048576", raw.max_queue_spans),
            );
        }
        if raw.max_batch_spans == 0 || raw.max_batch_spans > raw.max_queue_spans {
            self.fail(
                None,
                "traces.max_batch_spans",
                format!(
                    "{} is outside 1..=max_queue_spans ({})",
                    raw.max_batch_spans, raw.max_queue_spans
                ),
            );
        }
        if raw.export_timeout_ms == 0 || raw.batch_delay_ms == 0 {
            self.fail(
                None,
                "traces",
                "batch_delay_ms and export_timeout_ms must be above 0".into(),
            );
        }
        crate::otel::TraceSettings {
            endpoint: endpoint.clone(),
            service_name: raw.service_name.clone(),
            sample: raw.sample,
            max_queue_spans: raw.max_queue_spans,
            max_batch_spans: raw.max_batch_spans,
            batch_delay: Duration::from_millis(raw.batch_delay_ms),
            export_timeout: Duration::from_millis(raw.export_timeout_ms),
        }
    }

    fn access_log(&mut self, raw: &file::AccessLogFile) -> crate::access_log::Settings {
        use crate::access_log::{Field, Format, Settings, Target};
        let target = match raw.path.get_ref().as_str() {
            "stdout" => Target::Stdout,
            path => Target::File(self.at.base_dir().join(path)),
        };
        let fields = match &raw.fields {
            None => Field::ALL.to_vec(),
            Some(names) => {
                let mut fields = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    match Field::parse(name.get_ref()) {
                        Some(field) => fields.push(field),
                        None => {
                            let known: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
                            self.fail(
                                Some(name.span()),
                                format!("access_log.fields[{i}]"),
                                format!(
                                    "unknown field {:?} (known: {})",
                                    name.get_ref(),
                                    known.join(", ")
                                ),
                            );
                        }
                    }
                }
                fields
            }
        };
        if !(0.0..=1.0).contains(&raw.sample) {
            self.fail(
                None,
                "access_log.sample",
                format!("{} is outside 0..=1", raw.sample),
            );
        }
        if !(1..=1 << 20).contains(&raw.buffer_lines) {
            self.fail(
                None,
                "access_log.buffer_lines",
                format!("{} is outside 1..=1048576", raw.buffer_lines),
            );
        }
        Settings {
            target,
            format: match raw.format {
                file::AccessLogFormatFile::Json => Format::Json,
                file::AccessLogFormatFile::Combined => Format::Combined,
            },
            fields,
            sample: raw.sample,
            buffer_lines: raw.buffer_lines,
        }
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
                limiter_max_keys,
                limiter_plugin_max_keys,
            } => {
                let limiter = self.limiter(*limiter_max_keys, *limiter_plugin_max_keys);
                let limits = KvLimits {
                    max_bytes: *max_bytes,
                    max_entries: *max_entries,
                    plugin_max_bytes: plugin_max_bytes.unwrap_or((max_bytes / 4).max(1)),
                    plugin_max_entries: plugin_max_entries.unwrap_or((max_entries / 10).max(1)),
                    max_value_bytes: *max_value_bytes,
                    limiter,
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
                retry_ms,
                max_value_bytes,
                limiter_max_keys,
                limiter_plugin_max_keys,
            } => {
                if *max_value_bytes == 0 {
                    self.fail(None, "kv.max_value_bytes", "must be greater than 0".into());
                }
                KvSettings::Redis(crate::kv::RedisSettings {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    timeout: Duration::from_millis(*timeout_ms),
                    retry: Duration::from_millis(*retry_ms),
                    max_value_bytes: *max_value_bytes,
                    limiter: self.limiter(*limiter_max_keys, *limiter_plugin_max_keys),
                })
            }
        }
    }

    /// The bounds of `kv.limit`'s buckets, kept in process by either
    /// backend (all of them for memory, `kv.limit-local`'s for Redis).
    fn limiter(&mut self, max_keys: u64, plugin_max_keys: Option<u64>) -> crate::kv::LimiterLimits {
        let limits = crate::kv::LimiterLimits {
            max_keys,
            plugin_max_keys: plugin_max_keys.unwrap_or((max_keys / 2).max(1)),
        };
        for (key, value) in [
            ("limiter_max_keys", limits.max_keys),
            ("limiter_plugin_max_keys", limits.plugin_max_keys),
        ] {
            if value == 0 {
                self.fail(None, format!("kv.{key}"), "must be greater than 0".into());
            }
        }
        if max_keys > 0 && limits.plugin_max_keys > max_keys {
            self.fail(
                None,
                "kv.limiter_plugin_max_keys",
                format!(
                    "{} exceeds kv.limiter_max_keys ({max_keys})",
                    limits.plugin_max_keys
                ),
            );
        }
        limits
    }

    fn plugin(&mut self, name: &str, plugin: &file::PluginFile) -> Option<PluginSpec> {
        // Before the file check, so a missing file does not hide these.
        let outbound = self.outbound(name, plugin);
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
            logs: LogLimits {
                max_bytes: plugin.max_log_bytes,
                per_second: plugin.log_lines_per_second,
                burst: plugin.log_burst,
            },
            outbound,
            max_concurrency: plugin.max_concurrency.max(1),
            queue_timeout: Duration::from_millis(plugin.queue_timeout_ms),
        })
    }

    /// A plugin's `http-client` keys; a key left out takes the default
    /// of [`outbound::Settings`].
    fn outbound(&mut self, name: &str, plugin: &file::PluginFile) -> outbound::Settings {
        let defaults = outbound::Settings::default();
        let mut allow = Vec::new();
        for (i, entry) in plugin.allow_hosts.iter().enumerate() {
            match outbound::AllowEntry::parse(entry.get_ref()) {
                Ok(entry) => allow.push(entry),
                Err(why) => self.fail(
                    Some(entry.span()),
                    format!("plugins.{name}.allow_hosts[{i}]"),
                    why,
                ),
            }
        }
        let key = |k: &str| format!("plugins.{name}.{k}");
        let max_concurrency = self.in_range(
            plugin.max_outbound_concurrency.as_ref(),
            key("max_outbound_concurrency"),
            outbound::CONCURRENCY_RANGE,
        );
        let timeout_ms = self.in_range(
            plugin.outbound_timeout_ms.as_ref(),
            key("outbound_timeout_ms"),
            outbound::TIMEOUT_MS_RANGE,
        );
        let max_response_bytes = self.in_range(
            plugin.max_outbound_response_bytes.as_ref(),
            key("max_outbound_response_bytes"),
            outbound::RESPONSE_BYTES_RANGE,
        );
        outbound::Settings {
            allow,
            max_concurrency: max_concurrency.unwrap_or(defaults.max_concurrency),
            timeout: timeout_ms.map_or(defaults.timeout, Duration::from_millis),
            max_response_bytes: max_response_bytes.unwrap_or(defaults.max_response_bytes),
            ca: plugin
                .outbound_ca
                .as_ref()
                .map(|p| self.existing_file(p, key("outbound_ca"))),
        }
    }

    /// An optional number, reported when outside `range`.
    fn in_range<T: PartialOrd + Copy + fmt::Display>(
        &mut self,
        value: Option<&Spanned<T>>,
        key: String,
        range: RangeInclusive<T>,
    ) -> Option<T> {
        let spanned = value?;
        let value = *spanned.get_ref();
        if range.contains(&value) {
            return Some(value);
        }
        self.fail(
            Some(spanned.span()),
            key,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        );
        None
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

mod ranges;
pub use ranges::check_name;

#[cfg(test)]
mod tests;
