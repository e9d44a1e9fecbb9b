//! Host and plugin metrics, rendered in the Prometheus text format on the
//! admin listener's `/metrics`.
//!
//! Plugins name their metrics at run time, which registry-based crates such
//! as `prometheus-client` cannot express (names are fixed at registration),
//! so counters live in a small registry of series keyed by name + labels;
//! three parts that never share a name:
//!
//! * host series (this file): `weir_requests_total`, `weir_upstream_*`,
//!   `weir_plugin_errors_total`, … Their names are literals in the host's
//!   code; every one starts with `weir_` and none with [`PLUGIN_PREFIX`].
//! * host histograms and gauges ([`HostMetrics`]): fixed names, so a
//!   `prometheus-client` registry, appended to the scrape;
//! * plugin series ([`plugin::PluginRegistry`]): whatever plugins record,
//!   rendered as `weir_custom_<name>{plugin="<plugin>",…}` after the name,
//!   the labels and the value were checked and the plugin's share counted
//!   against [`MetricsLimits`]. What is refused is dropped, never rewritten
//!   (a rewritten name could land on another one), and counted in the host's
//!   `weir_plugin_metrics_dropped_total{plugin,reason}`.
//!
//! Recording never waits behind a scrape. Every value is an atomic behind an
//! `Arc`; a lock guards only the map from key to series, taken shared to
//! find a series and exclusively only to add one. A scrape holds it shared
//! just long enough to copy the list of `Arc`s (a [`Snapshot`], which owns no
//! guard) and formats the text outside it.

mod host;
mod plugin;

pub use host::HostMetrics;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use plugin::{PluginRegistry, Sample};

pub use plugin::PLUGIN_PREFIX;

/// Histogram bucket upper bounds (seconds-friendly, also fine for counts).
const BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
];

/// What plugins may make the host hold in metrics. The registry is
/// process-wide (created once at start), so these are fixed until restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsLimits {
    /// Series one plugin may create, counted as Prometheus counts them: a
    /// counter or gauge is one, a histogram is one per bucket plus `+Inf`,
    /// `_sum` and `_count` (15). Samples for existing series keep updating
    /// once the cap is reached; samples that would add one are dropped.
    pub max_series_per_plugin: usize,
    /// Labels a plugin may put on one series (the host's `plugin` label is
    /// not counted).
    pub max_labels: usize,
    /// Longest label value, in bytes.
    pub max_label_value_bytes: usize,
    /// Longest metric or label name, in bytes (before the host's prefix).
    pub max_name_bytes: usize,
}

impl Default for MetricsLimits {
    fn default() -> Self {
        MetricsLimits {
            max_series_per_plugin: 1000,
            max_labels: 8,
            max_label_value_bytes: 256,
            max_name_bytes: 128,
        }
    }
}

#[derive(Clone, Default)]
pub struct Metrics {
    host: Arc<HostSeries>,
    plugins: Arc<PluginRegistry>,
    /// `weir_requests_total` by status class of requests no route
    /// matched: counted for every request, so lock-free and
    /// allocation-free.
    requests: RouteRequests,
    /// The same by route (`route` label), one set per route name.
    routes: Arc<RwLock<BTreeMap<String, RouteRequests>>>,
    /// Histograms and gauges (`prometheus-client`).
    histograms: Arc<HostMetrics>,
}

/// One route's `weir_requests_total` counters, by status class; held by
/// the route, so counting needs no lookup.
pub type RouteRequests = Arc<[AtomicU64; 5]>;

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Host-owned families rendered apart from [`HostSeries`]; `counter_add`
/// must never be handed these names, or a family would appear twice.
const REQUESTS: &str = "weir_requests_total";

/// Help text for the host's families (Prometheus tools warn without one).
const HOST_HELP: [(&str, &str); 12] = [
    (
        "weir_log_dropped_total",
        "Log lines dropped because stderr could not keep up (the queue held WEIR_LOG_QUEUE_BYTES).",
    ),
    (
        "weir_cache_requests_total",
        "Requests the response cache answered or forwarded, by result.",
    ),
    ("weir_reloads_total", "Configuration reloads, by outcome."),
    (
        "weir_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by listener.",
    ),
    (
        "weir_upstream_requests_total",
        "Requests sent to an upstream (retries included once), by final outcome.",
    ),
    (
        "weir_access_log_dropped_total",
        "Access-log lines dropped because the writer could not keep up.",
    ),
    (
        "weir_connections_refused_total",
        "Client connections refused because limits.max_connections were open.",
    ),
    (
        "weir_plugin_errors_total",
        "Plugin calls that failed, by plugin and kind.",
    ),
    (
        "weir_upstream_ejections_total",
        "Upstream endpoints ejected by passive health checks.",
    ),
    (
        "weir_upstream_retries_total",
        "Upstream requests retried, by upstream and reason.",
    ),
    (
        "weir_upstream_connection_limit_total",
        "Upstream attempts refused because their endpoint had max_connections_per_endpoint open for connect_timeout_ms.",
    ),
    (
        REQUESTS,
        "Requests served, by route (none: no route matched) and status class.",
    ),
];

pub type Labels = Vec<(String, String)>;

type HostKey = (String, Labels);

/// The host's own counters. Few (bounded by upstreams × plugins × kinds)
/// and written on rare events; the map is locked like the plugins' so that
/// a scrape never stalls the request that counts a retry.
#[derive(Default)]
struct HostSeries {
    counters: RwLock<HashMap<Arc<HostKey>, Arc<AtomicU64>>>,
}

impl Metrics {
    pub fn new(limits: MetricsLimits) -> Metrics {
        let metrics = Metrics {
            plugins: Arc::new(PluginRegistry::new(limits)),
            ..Metrics::default()
        };
        // The log queue counts for the whole process, from before any
        // registry exists; every registry shows that count.
        write(&metrics.host.counters).insert(
            Arc::new((crate::log_queue::DROPPED.to_owned(), Labels::default())),
            crate::log_queue::dropped_lines(),
        );
        metrics
    }

    /// The counters of the route named `route` (`None`: requests no
    /// route matched). A route keeps its series across reloads; series of
    /// routes a reload removed are dropped by [`Metrics::keep_routes`].
    pub fn route_requests(&self, route: Option<&str>) -> RouteRequests {
        let Some(name) = route else {
            return self.requests.clone();
        };
        if let Some(found) = read(&self.routes).get(name) {
            return found.clone();
        }
        write(&self.routes)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Requests served so far, every route together (it can go down: a
    /// reload that removes a route drops its counts).
    pub fn requests_served(&self) -> u64 {
        let sum = |counters: &RouteRequests| -> u64 {
            counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
        };
        sum(&self.requests) + read(&self.routes).values().map(sum).sum::<u64>()
    }

    /// Forget the series of routes not in `names` (after a reload), so
    /// the `route` label stays bounded by the routes configured.
    pub fn keep_routes(&self, names: &HashSet<&str>) {
        write(&self.routes).retain(|name, _| names.contains(name.as_str()));
        self.histograms.keep_routes(names);
    }

    /// A configuration loaded (at start or on reload): now.
    pub fn note_load(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.histograms
            .last_reload_success
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The host's histograms and gauges.
    pub fn host(&self) -> &HostMetrics {
        &self.histograms
    }

    /// A host counter's handle, for a caller that counts it often: the
    /// same series [`Metrics::counter_add`] adds to, found once.
    pub fn counter_handle(&self, name: &'static str, labels: &[(&str, &str)]) -> Arc<AtomicU64> {
        let key: HostKey = (name.to_owned(), owned(labels));
        if let Some(found) = read(&self.host.counters).get(&key) {
            return found.clone();
        }
        write(&self.host.counters)
            .entry(Arc::new(key))
            .or_default()
            .clone()
    }

    /// Count one served request by its route and status.
    pub fn request_served(counters: &RouteRequests, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        counters[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Add to a host counter. `name` is a literal of the host's (never a
    /// plugin's), so it cannot reach into the plugins' namespace.
    pub fn counter_add(&self, name: &'static str, labels: &[(&str, &str)], delta: u64) {
        debug_assert!(
            name.starts_with("weir_")
                && !name.starts_with(PLUGIN_PREFIX)
                && name != REQUESTS
                && name != plugin::DROPPED,
            "{name} is not a host counter name"
        );
        let key: HostKey = (name.to_owned(), owned(labels));
        let found = read(&self.host.counters).get(&key).cloned();
        let counter = match found {
            Some(counter) => counter,
            None => write(&self.host.counters)
                .entry(Arc::new(key))
                .or_default()
                .clone(),
        };
        saturating_add(&counter, delta);
    }

    /// A plugin's `counter-add`. Counters saturate at `u64::MAX` rather than
    /// wrap: a counter that goes down reads as a restart to Prometheus.
    pub fn plugin_counter_add(&self, plugin: &str, name: String, labels: Labels, delta: u64) {
        self.plugins
            .record(plugin, name, labels, Sample::Counter(delta));
    }

    /// A plugin's `gauge-set`: any finite value.
    pub fn plugin_gauge_set(&self, plugin: &str, name: String, labels: Labels, value: f64) {
        self.plugins
            .record(plugin, name, labels, Sample::Gauge(value));
    }

    /// A plugin's `histogram-observe`: any finite value.
    pub fn plugin_histogram_observe(&self, plugin: &str, name: String, labels: Labels, value: f64) {
        self.plugins
            .record(plugin, name, labels, Sample::Histogram(value));
    }

    /// Current value of a host counter (for tests and `weir` itself).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key: HostKey = (name.to_owned(), owned(labels));
        read(&self.host.counters)
            .get(&key)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// Every series of one host counter, with its labels and value.
    pub fn counters_named(&self, name: &str) -> Vec<(Labels, u64)> {
        let mut found: Vec<(Labels, u64)> = read(&self.host.counters)
            .iter()
            .filter(|(key, _)| key.0 == name)
            .map(|(key, counter)| (key.1.clone(), counter.load(Ordering::Relaxed)))
            .collect();
        found.sort();
        found
    }

    /// Render every series in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = self.snapshot().render();
        self.histograms.render(&mut out);
        out
    }

    /// The list of every series, taken under the maps' locks (shared, and
    /// only to clone `Arc`s), so that formatting holds none.
    fn snapshot(&self) -> Snapshot {
        let mut host: Vec<_> = read(&self.host.counters)
            .iter()
            .map(|(key, counter)| (key.clone(), counter.clone()))
            .collect();
        host.sort_by(|a, b| a.0.cmp(&b.0));
        let routes = read(&self.routes)
            .iter()
            .map(|(name, counters)| (name.clone(), counters.clone()))
            .collect();
        Snapshot {
            requests: self.requests.clone(),
            routes,
            host,
            plugins: self.plugins.snapshot(),
        }
    }
}

/// What a scrape renders: every series as it was listed when the snapshot
/// was taken, with the values read (atomically, one by one) at render time.
struct Snapshot {
    requests: RouteRequests,
    routes: Vec<(String, RouteRequests)>,
    host: Vec<(Arc<HostKey>, Arc<AtomicU64>)>,
    plugins: plugin::Snapshot,
}

impl Snapshot {
    fn render(self) -> String {
        let mut out = String::with_capacity(4096 + self.plugins.len() * 128);
        family(&mut out, REQUESTS, host_help(REQUESTS), "counter");
        for (class, count) in STATUS_CLASSES.iter().zip(self.requests.iter()) {
            let _ = writeln!(
                out,
                "{REQUESTS}{{status=\"{class}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        // Route names are checked at load ([a-z0-9_-]): no escaping needed.
        for (route, counters) in &self.routes {
            for (class, count) in STATUS_CLASSES.iter().zip(counters.iter()) {
                let _ = writeln!(
                    out,
                    "{REQUESTS}{{route=\"{route}\",status=\"{class}\"}} {}",
                    count.load(Ordering::Relaxed)
                );
            }
        }
        let mut current = "";
        for (key, value) in &self.host {
            let (name, labels) = &**key;
            if name != current {
                family(&mut out, name, host_help(name), "counter");
                current = name;
            }
            out.push_str(name);
            write_labels(&mut out, None, labels, None);
            let _ = writeln!(out, " {}", value.load(Ordering::Relaxed));
        }
        self.plugins.render(&mut out);
        out
    }
}

fn host_help(name: &str) -> &'static str {
    HOST_HELP
        .iter()
        .find(|(known, _)| *known == name)
        .map_or("Counted by Weir.", |(_, help)| help)
}

/// The `# HELP` and `# TYPE` lines that open a family: every sample of it
/// must follow, before the next family opens.
fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{plugin="p",k="v",le="0.5"}`, or nothing when there are no labels.
fn write_labels(out: &mut String, plugin: Option<&str>, labels: &Labels, le: Option<&str>) {
    let pairs = plugin
        .map(|p| ("plugin", p))
        .into_iter()
        .chain(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .chain(le.map(|le| ("le", le)));
    let mut first = true;
    for (name, value) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        escape_into(out, value);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// Label values escape `\`, `"` and newline; nothing else is special.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as the text format spells it. `{:?}` switches to exponent
/// notation for very large or small values, where `{}` writes every digit.
fn write_f64(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{value:?}");
    }
}

fn saturating_add(counter: &AtomicU64, delta: u64) {
    // `fetch_add` would wrap; the closure never refuses, so this cannot fail.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(delta))
    });
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The maps hold no invariant a panicking holder could break half-way (an
/// insert is one call), so a poisoned lock is still good to use.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
