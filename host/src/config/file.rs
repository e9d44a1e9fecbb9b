//! The `proxy.toml` file format, exactly as written by operators.
//!
//! Every table denies unknown keys, so a typo is an error naming the key, not
//! a silently ignored setting. Defaults exist only for optional settings; the
//! validated, internal form is [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[[listeners]]`: where to accept client connections.
    pub listeners: Vec<ListenerFile>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub proxy: ProxyFile,
    #[serde(default)]
    pub runtime: RuntimeFile,
    /// `[cache]`: the response cache; absent means no caching.
    pub cache: Option<CacheFile>,
    /// `[admin]`: metrics and cache purge, on a separate listener.
    pub admin: Option<AdminFile>,
    /// `[access_log]`: one line per request; absent means none.
    pub access_log: Option<AccessLogFile>,
    /// `[traces]`: OpenTelemetry spans over OTLP/HTTP; absent means none.
    pub traces: Option<TracesFile>,
    /// `[metrics]`: what plugins' metrics may make the host hold.
    #[serde(default)]
    pub metrics: MetricsFile,
    /// `[kv]`: the store behind the plugins' `kv` import.
    #[serde(default)]
    pub kv: KvFile,
    /// `[upstreams.NAME]`: named upstream pools.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    /// The upstream used when no plugin chose one.
    pub default_upstream: Option<Spanned<String>>,
    /// `[plugins.NAME]`: every plugin that may appear in the chain.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginFile>,
    /// Plugin names in request-phase order: the chain of requests no
    /// route matches, and of routes that name none.
    #[serde(default)]
    pub chain: Vec<Spanned<String>>,
    /// `[[routes]]`: tried in order; the first that matches serves.
    #[serde(default)]
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// A file (relative to the config file), or `"stdout"`.
    pub path: Spanned<String>,
    #[serde(default)]
    pub format: AccessLogFormatFile,
    /// JSON fields to write, in order; absent: all of them.
    pub fields: Option<Vec<Spanned<String>>>,
    /// The share of 1xx–3xx requests logged, 0–1; 4xx and 5xx always are.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Lines queued for the writer before new ones are dropped.
    #[serde(default = "default_buffer_lines")]
    pub buffer_lines: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesFile {
    /// The OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: Spanned<String>,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of new traces recorded, 0–1. A request whose
    /// `traceparent` says sampled (or not) follows its parent.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Spans queued for export before new ones are dropped.
    #[serde(default = "default_max_queue_spans")]
    pub max_queue_spans: usize,
    /// Spans per export request.
    #[serde(default = "default_max_batch_spans")]
    pub max_batch_spans: usize,
    /// How long a batch may wait before it is sent.
    #[serde(default = "default_batch_delay_ms")]
    pub batch_delay_ms: u64,
    /// One export request's time limit.
    #[serde(default = "default_export_timeout_ms")]
    pub export_timeout_ms: u64,
}

fn default_service_name() -> String {
    "weir".into()
}

fn default_max_queue_spans() -> usize {
    4096
}

fn default_max_batch_spans() -> usize {
    512
}

fn default_batch_delay_ms() -> u64 {
    1000
}

fn default_export_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormatFile {
    #[default]
    Json,
    Combined,
}

fn default_sample() -> f64 {
    1.0
}

fn default_buffer_lines() -> usize {
    8192
}

/// One `[[routes]]` entry. Every match key given must hold; none given
/// matches every request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Spanned<String>,
    /// Host names (`api.example.com`, or `*.example.com` for any name
    /// below it), compared without the port.
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// The canonical path, exactly.
    pub path: Option<Spanned<String>>,
    /// A canonical path prefix, on segment boundaries: `/api` matches
    /// `/api` and `/api/v1`, not `/apix`.
    pub prefix: Option<Spanned<String>>,
    /// A path pattern: `{name}` matches one segment, a final `{*name}`
    /// the rest (`/users/{id}/posts`).
    pub pattern: Option<Spanned<String>>,
    /// Request methods (`GET` admits `HEAD` too).
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Request headers that must have these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters that must have these values.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// The route's plugin chain; absent: the top-level `chain`.
    pub chain: Option<Vec<Spanned<String>>>,
    /// Its upstream, unless a plugin picks one; absent: `default_upstream`.
    pub upstream: Option<Spanned<String>>,
    /// Per-plugin config overrides, merged over `[plugins.NAME.config]`.
    #[serde(default)]
    pub plugins: BTreeMap<String, toml::Table>,
    /// Whether the response cache serves this route (default: yes, when
    /// `[cache]` is configured).
    #[serde(default = "default_true")]
    pub cache: bool,
    /// Overrides `limits.max_request_body_bytes` for this route.
    pub max_request_body_bytes: Option<u64>,
    /// How long the upstream may take to answer this route's requests
    /// (overrides the upstream's `response_timeout_ms`).
    pub response_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// `IP:PORT`, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub address: Spanned<String>,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTlsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsFile {
    /// PEM certificate chains and keys; the first is the default, the
    /// others are chosen by SNI from their subject alternative names.
    pub certificates: Vec<CertKeyFile>,
    /// PEM bundle of CAs whose client certificates are accepted (mTLS).
    pub client_ca: Option<String>,
    #[serde(default)]
    pub client_auth: ClientAuthFile,
    /// How often the files are checked for changes (reload without restart).
    #[serde(default = "default_reload_check_ms")]
    pub reload_check_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertKeyFile {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthFile {
    /// A verified client certificate is required to connect.
    #[default]
    Required,
    /// Clients may present one; plugins see whether they did.
    Optional,
}

fn default_reload_check_ms() -> u64 {
    5_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// PEM CA bundle to verify the upstream; default: the system roots.
    pub ca: Option<String>,
    /// Name to send as SNI and verify the certificate for; default: the
    /// endpoint's host.
    pub server_name: Option<String>,
    /// Client certificate and key for upstream mTLS.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Largest request head (request line + headers) in bytes; larger → 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more → 431.
    pub max_headers: usize,
    /// Largest request body in bytes; larger → 413. Streamed, never held.
    pub max_request_body_bytes: u64,
    /// Largest body buffered for a plugin that asked to see it.
    pub max_buffered_body_bytes: usize,
    /// Time allowed for a client to send the request head (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Time allowed for in-flight requests to finish on shutdown.
    pub shutdown_grace_ms: u64,
    /// Most client connections at once, all listeners together; beyond it
    /// a new connection gets `503` and is closed.
    pub max_connections: usize,
    /// HTTP/2: most concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: most streams a client may reset before they are accepted
    /// (the "rapid reset" attack guard); the connection is closed beyond it.
    pub h2_max_pending_reset_streams: usize,
    /// Most properties plugins may set on one request.
    pub max_properties: usize,
    /// Largest single property (name + value), in bytes.
    pub max_property_bytes: usize,
    /// Largest total of a request's properties, in bytes.
    pub max_properties_bytes: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_body_bytes: 1 << 30,
            max_buffered_body_bytes: 1 << 20,
            header_read_timeout_ms: 10_000,
            shutdown_grace_ms: 30_000,
            max_connections: 10_000,
            h2_max_concurrent_streams: 256,
            h2_max_pending_reset_streams: 20,
            max_properties: 64,
            max_property_bytes: 64 << 10,
            max_properties_bytes: 256 << 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyFile {
    /// Peers (CIDRs, or single addresses) whose forwarding headers are
    /// believed: the client address is read from `client_ip_header` through
    /// them, and their `X-Forwarded-*`/`Forwarded` are kept. Empty (the
    /// default) trusts nobody: at the edge, client-sent values are removed.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Where a trusted peer says who the client is.
    pub client_ip_header: ClientIpHeaderFile,
    /// Merge runs of `/` in request paths.
    pub merge_slashes: bool,
    /// What to do with an ambiguous path (`%2F`, `%5C`, `\`, `;`, `%25XX`).
    pub ambiguous_paths: AmbiguousFile,
    /// Request header names containing `_`.
    pub headers_with_underscores: UnderscoresFile,
    /// The pseudonym Weir adds to `Via`.
    pub via_name: String,
    /// Replaced by `trusted_proxies`; kept only to say so.
    pub trust_forwarded_headers: Option<Spanned<bool>>,
}

impl Default for ProxyFile {
    fn default() -> Self {
        ProxyFile {
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeaderFile::XForwardedFor,
            merge_slashes: true,
            ambiguous_paths: AmbiguousFile::Reject,
            headers_with_underscores: UnderscoresFile::Drop,
            via_name: "weir".into(),
            trust_forwarded_headers: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeaderFile {
    XForwardedFor,
    XRealIp,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmbiguousFile {
    Reject,
    Keep,
    Redirect,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderscoresFile {
    Drop,
    Reject,
    Allow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeFile {
    /// Where compiled plugins are cached (relative to the config file).
    pub cache_dir: String,
    /// Most plugin instances alive at once, all plugins together.
    pub max_instances: u32,
    /// Largest linear memory any plugin may be given, in MiB.
    pub max_memory_mb: u64,
    /// How often `proxy.toml` and the chain's plugin files are checked for
    /// changes (then reloaded); 0 turns the watcher off (SIGHUP still works).
    pub reload_check_ms: u64,
    /// Plugin calls that have run past one epoch tick (1 ms) allowed to
    /// execute at once, all plugins together; the others wait their turn
    /// off the workers. Absent: one less than the CPUs (at least 1), so a
    /// worker is always left for requests.
    pub max_long_running_calls: Option<usize>,
    /// Percent of the request workers' time one plugin's calls may take
    /// (over 100 ms, or over the time so far from 20 ms into those 100 ms,
    /// while the proxy serves requests that do not call it); past it, they
    /// run as long runners do, off the workers, until they have taken under
    /// half of it for a second. 100: no limit.
    pub max_plugin_cpu_percent: u32,
}

impl Default for RuntimeFile {
    fn default() -> Self {
        RuntimeFile {
            cache_dir: ".weir/cache".into(),
            max_instances: 1000,
            max_memory_mb: 256,
            reload_check_ms: 2_000,
            max_long_running_calls: None,
            max_plugin_cpu_percent: 50,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// `host:port` endpoints.
    pub endpoints: Vec<Spanned<String>>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time from sending the request to receiving the response head.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Longest pause allowed inside a response body; the client
    /// connection is aborted beyond it (the head has already been sent).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// Connections open to one endpoint at once, idle and busy together
    /// (nginx's `max_conns`). A request that would need one more waits up
    /// to `connect_timeout_ms` for one to come free, then gets 503.
    #[serde(default = "default_max_connections_per_endpoint")]
    pub max_connections_per_endpoint: usize,
    #[serde(default)]
    pub lb: LbFile,
    /// Passive health: consecutive failures (connect errors, timeouts,
    /// 502/503/504) that eject an endpoint.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long an ejected endpoint sits out; doubles on each repeated
    /// ejection (up to 8×) and resets after a success.
    #[serde(default = "default_eject_ms")]
    pub eject_ms: u64,
    /// Extra attempts for a request. Connect failures move to the next
    /// endpoint for any method; 502/503/504 and timeouts are retried only
    /// for idempotent methods. Never for a streamed body already sent.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First retry delay; doubles each attempt, with full jitter.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Retries allowed, as a percentage of requests (a retry storm guard).
    #[serde(default = "default_retry_budget_percent")]
    pub retry_budget_percent: u32,
    /// A `Retry-After` longer than this is not waited for: the answer goes
    /// back to the client instead.
    #[serde(default = "default_max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    /// Active health checking (optional).
    pub health_check: Option<HealthCheckFile>,
    /// Speak HTTPS to the endpoints.
    pub tls: Option<UpstreamTlsFile>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbFile {
    #[default]
    RoundRobin,
    LeastOutstanding,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_health_path() -> String {
    "/health".into()
}
fn default_health_interval_ms() -> u64 {
    5_000
}
fn default_health_timeout_ms() -> u64 {
    1_000
}
fn default_max_fails() -> u32 {
    3
}
fn default_eject_ms() -> u64 {
    10_000
}
fn default_retries() -> u32 {
    2
}
fn default_retry_backoff_ms() -> u64 {
    25
}
fn default_retry_budget_percent() -> u32 {
    20
}
fn default_max_retry_after_ms() -> u64 {
    2_000
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_response_timeout_ms() -> u64 {
    30_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_idle() -> usize {
    64
}
fn default_max_connections_per_endpoint() -> usize {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    /// Path to the component, relative to the config file.
    pub file: Spanned<String>,
    /// The plugin's own config table, handed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub on_error: OnErrorFile,
    #[serde(default)]
    pub instances: StrategyFile,
    /// Pooled: most idle warm instances kept.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Pooled: an instance is retired after this many calls.
    #[serde(default = "default_max_uses")]
    pub max_uses: u64,
    /// Wall time allowed for one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear memory cap per instance, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Where `http-client` may call: `host`, `host:port`,
    /// `http://host[:port]` or `https://host[:port]`; without a port only
    /// the scheme's default port (see `plugin::outbound`).
    #[serde(default)]
    pub allow_hosts: Vec<Spanned<String>>,
    /// `http-client` calls in flight at once, all instances together.
    pub max_outbound_concurrency: Option<Spanned<usize>>,
    /// The longest one `http-client` call may take, in milliseconds.
    pub outbound_timeout_ms: Option<Spanned<u64>>,
    /// The largest `http-client` response body, in bytes.
    pub max_outbound_response_bytes: Option<Spanned<usize>>,
    /// PEM CA bundle for https callouts; default: the system roots.
    pub outbound_ca: Option<String>,
    /// Longest log message, in bytes; longer ones are cut with a marker.
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: usize,
    /// Log lines per second (token bucket); beyond it lines are dropped
    /// and counted.
    #[serde(default = "default_log_lines_per_second")]
    pub log_lines_per_second: u32,
    /// Log lines allowed in one burst.
    #[serde(default = "default_log_burst")]
    pub log_burst: u32,
    /// Calls of this plugin running at once, all requests together.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// How long a call beyond `max_concurrency` waits before it is
    /// refused with 503.
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
}

fn default_max_concurrency() -> usize {
    32
}
fn default_queue_timeout_ms() -> u64 {
    100
}

fn default_max_log_bytes() -> usize {
    4096
}
fn default_log_lines_per_second() -> u32 {
    100
}
fn default_log_burst() -> u32 {
    200
}

fn default_pool_size() -> usize {
    64
}
fn default_max_uses() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    100
}
fn default_memory_mb() -> u64 {
    64
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnErrorFile {
    /// Fail the request (500, or 503 when the plugin timed out).
    #[default]
    Deny,
    /// Go on as if the plugin had answered "continue, no changes".
    Skip,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyFile {
    /// A new instance for every call: full isolation, ~µs for Rust/C guests.
    #[default]
    Fresh,
    /// Warm instances reused across requests, recycled after `max_uses`
    /// calls or any failure. For heavy guests (JS, Python).
    Pooled,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheFile {
    /// Total size of cached responses (bodies + headers), in bytes.
    pub capacity_bytes: u64,
    /// Largest single response stored; larger ones stream uncached.
    pub max_entry_bytes: usize,
    /// Upper bound on any response's freshness lifetime, in seconds.
    pub max_ttl_seconds: u64,
    /// How long a stale response with validators is kept for revalidation.
    pub stale_keep_seconds: u64,
    /// Let plugins mark responses to authenticated requests as shareable.
    pub allow_shared_authenticated: bool,
    /// Store responses carrying `Set-Cookie` (off: they are per-user).
    pub store_set_cookie: bool,
    /// This cache's own targeted Cache-Control field (RFC 9213): it wins
    /// over `CDN-Cache-Control`, which wins over `Cache-Control`; neither
    /// is forwarded to clients.
    pub targeted_field: String,
    /// Serve a stale response for this long past its freshness when the
    /// upstream fails (5xx, unreachable) and the response set no
    /// `stale-if-error` of its own (nginx `proxy_cache_use_stale`); 0: off.
    pub serve_stale_on_error_seconds: u64,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            capacity_bytes: 64 << 20,
            max_entry_bytes: 8 << 20,
            max_ttl_seconds: 24 * 3600,
            stale_keep_seconds: 600,
            allow_shared_authenticated: false,
            store_set_cookie: false,
            targeted_field: "weir-cache-control".into(),
            serve_stale_on_error_seconds: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `IP:PORT` of the admin listener. Keep it on loopback or a private net.
    pub address: Spanned<String>,
    /// A file holding the bearer token every endpoint but `/healthz` and
    /// `/readyz` requires (relative to the config file). `WEIR_ADMIN_TOKEN`
    /// in the environment is used when this is absent. Required when the
    /// address is not loopback; without one, cache purges are refused.
    pub token_file: Option<Spanned<String>>,
    /// Host names (besides the listener's own address, `localhost` and
    /// loopback literals) requests may carry in `Host`: a DNS-rebinding
    /// guard.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Most admin connections at once.
    #[serde(default = "default_admin_connections")]
    pub max_connections: usize,
    /// Serve the admin endpoints over TLS 1.3 only; with `client_ca`, a
    /// client certificate is required (mTLS) unless `client_auth =
    /// "optional"`. The token is still checked.
    pub tls: Option<ListenerTlsFile>,
}

fn default_admin_connections() -> usize {
    64
}

/// Every key is optional; an absent one takes
/// [`crate::metrics::MetricsLimits::default`]'s value. Spanned, so that a
/// refused value is reported with its line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsFile {
    /// Series one plugin may create (a histogram counts 15).
    pub max_series_per_plugin: Option<Spanned<usize>>,
    /// Labels a plugin may put on one series.
    pub max_labels: Option<Spanned<usize>>,
    /// Longest label value, in bytes.
    pub max_label_value_bytes: Option<Spanned<usize>>,
    /// Longest metric or label name, in bytes.
    pub max_name_bytes: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "lowercase")]
pub enum KvFile {
    /// In-process: one instance only. Sizes count keys, values and the
    /// store's per-entry overhead (see `crate::kv::KvLimits`).
    Memory {
        /// The whole store, in bytes.
        #[serde(default = "default_kv_max_bytes")]
        max_bytes: u64,
        /// The whole store, in entries.
        #[serde(default = "default_kv_max_entries")]
        max_entries: u64,
        /// One plugin's share; absent: a quarter of `max_bytes`.
        plugin_max_bytes: Option<u64>,
        /// One plugin's share; absent: a tenth of `max_entries`.
        plugin_max_entries: Option<u64>,
        /// Largest value a plugin may store.
        #[serde(default = "default_kv_max_value_bytes")]
        max_value_bytes: usize,
        /// `kv.limit`'s buckets, all plugins together.
        #[serde(default = "default_limiter_max_keys")]
        limiter_max_keys: u64,
        /// One plugin's share; absent: half of `limiter_max_keys`.
        limiter_plugin_max_keys: Option<u64>,
    },
    /// Shared by every instance pointing at the same Redis, which bounds
    /// its own memory (`maxmemory`).
    Redis {
        url: String,
        #[serde(default = "default_kv_prefix")]
        prefix: String,
        #[serde(default = "default_kv_timeout_ms")]
        timeout_ms: u64,
        /// How long calls fail at once once Redis was found unreachable.
        #[serde(default = "default_kv_retry_ms")]
        retry_ms: u64,
        /// Largest value a plugin may store.
        #[serde(default = "default_kv_max_value_bytes")]
        max_value_bytes: usize,
        /// `kv.limit-local`'s in-process buckets, as for memory.
        #[serde(default = "default_limiter_max_keys")]
        limiter_max_keys: u64,
        limiter_plugin_max_keys: Option<u64>,
    },
}

fn default_limiter_max_keys() -> u64 {
    crate::kv::LimiterLimits::default().max_keys
}
fn default_kv_retry_ms() -> u64 {
    1000
}

impl Default for KvFile {
    fn default() -> Self {
        KvFile::Memory {
            max_bytes: default_kv_max_bytes(),
            max_entries: default_kv_max_entries(),
            plugin_max_bytes: None,
            plugin_max_entries: None,
            max_value_bytes: default_kv_max_value_bytes(),
            limiter_max_keys: default_limiter_max_keys(),
            limiter_plugin_max_keys: None,
        }
    }
}

fn default_kv_prefix() -> String {
    "weir:".into()
}
fn default_kv_timeout_ms() -> u64 {
    250
}
fn default_kv_max_bytes() -> u64 {
    crate::kv::KvLimits::default().max_bytes
}
fn default_kv_max_entries() -> u64 {
    crate::kv::KvLimits::default().max_entries
}
fn default_kv_max_value_bytes() -> usize {
    crate::kv::KvLimits::default().max_value_bytes
}

fn default_true() -> bool {
    true
}
