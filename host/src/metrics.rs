//! Host and plugin metrics, rendered in the Prometheus text format on the
//! admin listener's `/metrics`.
//!
//! Plugins name their metrics at run time, which registry-based crates such
//! as `prometheus-client` cannot express (names are fixed at registration),
//! so this is a small map of series keyed by name + sorted labels.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Histogram bucket upper bounds (seconds-friendly, also fine for counts).
const BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0,
];

#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Series>>,
    /// `weir_requests_total` by status class: counted for every request,
    /// so lock-free and allocation-free.
    requests: Arc<[AtomicU64; 5]>,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

type Labels = Vec<(String, String)>;

#[derive(Default)]
struct Series {
    counters: BTreeMap<(String, Labels), u64>,
    gauges: BTreeMap<(String, Labels), f64>,
    histograms: BTreeMap<(String, Labels), Histogram>,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Metric names and label names must match `[a-zA-Z_][a-zA-Z0-9_]*`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn plugin_labels(plugin: &str, labels: Labels) -> Labels {
    let mut out: Labels = labels
        .into_iter()
        .map(|(k, v)| (sanitize(&k), v))
        .filter(|(k, _)| k != "plugin")
        .collect();
    out.push(("plugin".into(), plugin.to_owned()));
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Series) -> R) -> R {
        let mut series = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut series)
    }

    /// Count one served request by its status.
    pub fn request_served(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Add to a host counter.
    pub fn counter_add(&self, name: &str, labels: &[(&str, &str)], delta: u64) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.with(|s| *s.counters.entry((name.to_owned(), labels)).or_default() += delta);
    }

    pub fn plugin_counter_add(&self, plugin: &str, name: &str, labels: Labels, delta: u64) {
        let key = (
            format!("weir_plugin_{}", sanitize(name)),
            plugin_labels(plugin, labels),
        );
        self.with(|s| *s.counters.entry(key).or_default() += delta);
    }

    pub fn plugin_gauge_set(&self, plugin: &str, name: &str, labels: Labels, value: f64) {
        let key = (
            format!("weir_plugin_{}", sanitize(name)),
            plugin_labels(plugin, labels),
        );
        self.with(|s| s.gauges.insert(key, value));
    }

    pub fn plugin_histogram_observe(&self, plugin: &str, name: &str, labels: Labels, value: f64) {
        let key = (
            format!("weir_plugin_{}", sanitize(name)),
            plugin_labels(plugin, labels),
        );
        self.with(|s| {
            let histogram = s.histograms.entry(key).or_default();
            for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
                if value <= bound {
                    *bucket += 1;
                }
            }
            histogram.count += 1;
            histogram.sum += value;
        });
    }

    /// Current value of a host counter (for tests and `weir` itself).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.with(|s| {
            s.counters
                .get(&(name.to_owned(), labels))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Render every series in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (class, count) in STATUS_CLASSES.iter().zip(self.requests.iter()) {
            let _ = writeln!(
                out,
                "weir_requests_total{{status=\"{class}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        self.with(|s| {
            for ((name, labels), value) in &s.counters {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
            for ((name, labels), value) in &s.gauges {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
            for ((name, labels), h) in &s.histograms {
                for (count, bound) in h.buckets.iter().zip(BUCKETS) {
                    let le = bound.to_string();
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        render_labels(labels, Some(&le))
                    );
                }
                let all = render_labels(labels, Some("+Inf"));
                let plain = render_labels(labels, None);
                let _ = writeln!(out, "{name}_bucket{all} {}", h.count);
                let _ = writeln!(out, "{name}_sum{plain} {}", h.sum);
                let _ = writeln!(out, "{name}_count{plain} {}", h.count);
            }
        });
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
