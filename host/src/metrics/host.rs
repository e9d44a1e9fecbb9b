//! The host's own histograms and gauges, in a `prometheus-client`
//! registry: their names are fixed, so the crate's typed families fit.
//! Label sets are bounded by configuration (routes, upstreams, plugins,
//! listeners), never by requests. Per-request recording goes through
//! handles resolved once (a route holds its histogram), so it costs an
//! observation, not a family lookup.
//!
//! Counters stay in the registry of [`super::Metrics`], which renders the
//! classic text format; histograms and gauges read the same in both
//! formats, so this registry's OpenMetrics output is appended to it
//! without its `# EOF`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Empty: no route matched.
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub upstream: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginPhaseLabel {
    pub plugin: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
    /// `pending` until the connection's first request, then `http1` or
    /// `h2`.
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.5 ms to ~16 s, doubling: a proxy's latencies, from a cache hit to a
/// slow upstream.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Plugin calls: 10 µs to ~160 ms.
fn plugin_latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 2.0, 15))
}

pub struct HostMetrics {
    registry: Registry,
    request_duration: Histograms<RouteLabel>,
    upstream_duration: Histograms<UpstreamLabel>,
    plugin_duration: Histograms<PluginPhaseLabel>,
    connections: Family<ListenerLabel, Gauge>,
    /// Entries and weighted bytes of the response cache, set at scrape.
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    /// Unix time of the last successful (re)load.
    pub last_reload_success: Gauge,
    /// Per plugin, set at scrape: warm pooled instances, calls running.
    pub plugin_pool_idle: Family<PluginLabel, Gauge>,
    pub plugin_in_flight: Family<PluginLabel, Gauge>,
    /// Per upstream endpoint, set at scrape: 1 when requests may go there.
    endpoint_healthy: Family<EndpointLabel, Gauge>,
    /// Route names with a request histogram.
    routes: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Default for HostMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let request_duration: Histograms<RouteLabel> = Family::new_with_constructor(latency);
        registry.register(
            "weir_request_duration_seconds",
            "Time from a request's arrival to its response head, by route.",
            request_duration.clone(),
        );
        let upstream_duration: Histograms<UpstreamLabel> = Family::new_with_constructor(latency);
        registry.register(
            "weir_upstream_request_duration_seconds",
            "Time an upstream took to answer with a response head (retries included).",
            upstream_duration.clone(),
        );
        let plugin_duration: Histograms<PluginPhaseLabel> =
            Family::new_with_constructor(plugin_latency);
        registry.register(
            "weir_plugin_call_duration_seconds",
            "Time of one plugin call, by plugin and phase.",
            plugin_duration.clone(),
        );
        let connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "weir_connections_active",
            "Client connections open, by listener and protocol (pending before the first request).",
            connections.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "weir_cache_entries",
            "URLs in the response cache.",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "weir_cache_bytes",
            "Bytes the response cache holds (bodies and headers).",
            cache_bytes.clone(),
        );
        let last_reload_success = Gauge::default();
        registry.register(
            "weir_last_reload_success_timestamp_seconds",
            "When the configuration last loaded successfully (Unix time).",
            last_reload_success.clone(),
        );
        let plugin_pool_idle = Family::<PluginLabel, Gauge>::default();
        registry.register(
            "weir_plugin_pool_idle_instances",
            "Warm instances waiting in a plugin's pool.",
            plugin_pool_idle.clone(),
        );
        let plugin_in_flight = Family::<PluginLabel, Gauge>::default();
        registry.register(
            "weir_plugin_calls_in_flight",
            "Calls of a plugin running now (max_concurrency slots taken).",
            plugin_in_flight.clone(),
        );
        let endpoint_healthy = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "weir_upstream_endpoint_healthy",
            "1 when an endpoint takes requests; 0 when ejected, down or draining.",
            endpoint_healthy.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("weir_build_info", "The running build.", build);
        HostMetrics {
            registry,
            request_duration,
            upstream_duration,
            plugin_duration,
            connections,
            cache_entries,
            cache_bytes,
            last_reload_success,
            plugin_pool_idle,
            plugin_in_flight,
            endpoint_healthy,
            routes: Default::default(),
        }
    }
}

impl HostMetrics {
    /// The request-duration histogram of a route (`None`: no route).
    pub fn request_duration(&self, route: Option<&str>) -> Histogram {
        if let Some(route) = route {
            self.routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(route.to_owned());
        }
        self.request_duration.get_or_create_owned(&RouteLabel {
            route: route.unwrap_or_default().to_owned(),
        })
    }

    pub fn upstream_duration(&self, upstream: &str) -> Histogram {
        self.upstream_duration.get_or_create_owned(&UpstreamLabel {
            upstream: upstream.to_owned(),
        })
    }

    pub fn plugin_duration(&self, plugin: &str, phase: &str) -> Histogram {
        self.plugin_duration.get_or_create_owned(&PluginPhaseLabel {
            plugin: plugin.to_owned(),
            phase: phase.to_owned(),
        })
    }

    pub fn connections(&self, listener: &str, protocol: &'static str) -> Gauge {
        self.connections.get_or_create_owned(&ListenerLabel {
            listener: listener.to_owned(),
            protocol,
        })
    }

    /// Forget the request histograms of routes a reload removed, so the
    /// `route` label stays bounded by the routes configured.
    pub fn keep_routes(&self, names: &std::collections::HashSet<&str>) {
        let mut known = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.retain(|route| {
            let keep = names.contains(route.as_str());
            if !keep {
                self.request_duration.remove(&RouteLabel {
                    route: route.clone(),
                });
            }
            keep
        });
    }

    /// Set the per-plugin gauges, summed by plugin name, replacing the
    /// last scrape's (a plugin a reload removed disappears).
    pub fn set_plugin_gauges(&self, plugins: &[(String, usize, usize)]) {
        self.plugin_pool_idle.clear();
        self.plugin_in_flight.clear();
        for (plugin, idle, in_flight) in plugins {
            let label = PluginLabel {
                plugin: plugin.clone(),
            };
            self.plugin_pool_idle
                .get_or_create(&label)
                .inc_by(i64::try_from(*idle).unwrap_or(i64::MAX));
            self.plugin_in_flight
                .get_or_create(&label)
                .inc_by(i64::try_from(*in_flight).unwrap_or(i64::MAX));
        }
    }

    /// Set each endpoint's health gauge, replacing the last scrape's (an
    /// endpoint a reload removed disappears).
    pub fn set_endpoint_health(&self, upstreams: &[crate::upstream::UpstreamStatus]) {
        self.endpoint_healthy.clear();
        for upstream in upstreams {
            for endpoint in &upstream.endpoints {
                let label = EndpointLabel {
                    upstream: upstream.name.clone(),
                    endpoint: endpoint.address.clone(),
                };
                let taking = endpoint.healthy && endpoint.state != "draining";
                self.endpoint_healthy
                    .get_or_create(&label)
                    .set(i64::from(taking));
            }
        }
    }

    /// Append this registry in the text format (without `# EOF`).
    pub fn render(&self, out: &mut String) {
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.registry);
    }
}
