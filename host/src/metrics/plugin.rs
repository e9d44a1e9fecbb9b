//! The plugins' half of the metrics: what the `metrics` import records,
//! checked against [`MetricsLimits`] and kept per plugin.
//!
//! A plugin metric `name` renders as `weir_custom_<name>`, labelled
//! `plugin="<plugin>"` plus the plugin's own labels. The host never names
//! a metric of its own `weir_custom_…` (its names are `&'static str`
//! literals, checked by a debug assertion in
//! [`super::Metrics::counter_add`]), so no plugin can write into a host
//! series, and the `plugin` label is the host's alone, so no plugin can
//! pass for another.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{
    escape_into, family, read, saturating_add, write, write_f64, write_labels, Labels,
    MetricsLimits, BUCKETS,
};

/// What every plugin metric's name starts with, and no host metric's does.
pub const PLUGIN_PREFIX: &str = "weir_custom_";

/// The host's count of what it refused, by plugin and [`Reason`].
pub(super) const DROPPED: &str = "weir_plugin_metrics_dropped_total";

/// One call of the `metrics` import.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sample {
    Counter(u64),
    Gauge(f64),
    Histogram(f64),
}

impl Sample {
    fn kind(self) -> Kind {
        match self {
            Sample::Counter(_) => Kind::Counter,
            Sample::Gauge(_) => Kind::Gauge,
            Sample::Histogram(_) => Kind::Histogram,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// Series one of this kind adds, as Prometheus counts them (and as
    /// they weigh on a scrape): a histogram renders a line per bucket,
    /// `+Inf`, `_sum` and `_count`.
    fn weight(self) -> usize {
        match self {
            Kind::Counter | Kind::Gauge => 1,
            Kind::Histogram => BUCKETS.len() + 3,
        }
    }

    /// Every name a family of this kind puts in a scrape. A histogram's
    /// `foo_count` is the same line as a counter named `foo_count`, so the
    /// two families cannot both exist.
    fn names(self, name: &str) -> Vec<String> {
        match self {
            Kind::Counter | Kind::Gauge => vec![name.to_owned()],
            Kind::Histogram => vec![
                name.to_owned(),
                format!("{name}_bucket"),
                format!("{name}_sum"),
                format!("{name}_count"),
            ],
        }
    }
}

/// Why a sample was refused: the `reason` label of
/// `weir_plugin_metrics_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The metric name is not `[a-zA-Z_][a-zA-Z0-9_]*` or is too long.
    InvalidName,
    /// A label name is malformed, too long, reserved (`le`, `quantile`,
    /// `plugin`, `__…`) or given twice.
    InvalidLabel,
    LabelValueTooLong,
    TooManyLabels,
    /// The sample would add a series past the plugin's cap.
    SeriesLimit,
    /// The name is already used with another type (by this plugin or
    /// another: one name is one family in the scrape), or it clashes with a
    /// histogram's `_bucket`/`_sum`/`_count` lines.
    TypeConflict,
    /// NaN or ±Inf for a gauge or a histogram.
    InvalidValue,
}

/// Every reason, in declaration order: `reason as usize` indexes
/// [`PluginSeries::dropped`].
pub(super) const REASONS: [Reason; 7] = [
    Reason::InvalidName,
    Reason::InvalidLabel,
    Reason::LabelValueTooLong,
    Reason::TooManyLabels,
    Reason::SeriesLimit,
    Reason::TypeConflict,
    Reason::InvalidValue,
];

impl Reason {
    pub(super) fn label(self) -> &'static str {
        match self {
            Reason::InvalidName => "invalid_name",
            Reason::InvalidLabel => "invalid_label",
            Reason::LabelValueTooLong => "label_value_too_long",
            Reason::TooManyLabels => "too_many_labels",
            Reason::SeriesLimit => "series_limit",
            Reason::TypeConflict => "type_conflict",
            Reason::InvalidValue => "invalid_value",
        }
    }
}

/// Every plugin's series. Plugins are keyed by their configured name, so a
/// reloaded plugin keeps its series; a plugin removed from the config keeps
/// them until restart (bounded by the names ever configured).
#[derive(Default)]
pub struct PluginRegistry {
    limits: MetricsLimits,
    plugins: RwLock<HashMap<String, Arc<PluginSeries>>>,
    /// Read to refuse a conflicting new series, written only to add one;
    /// never taken by a scrape.
    families: RwLock<Families>,
}

/// One plugin's series and refusals.
struct PluginSeries {
    name: Arc<str>,
    table: RwLock<Table>,
    dropped: [AtomicU64; REASONS.len()],
}

#[derive(Default)]
struct Table {
    series: HashMap<Arc<SeriesKey>, Arc<Cells>>,
    /// Sum of the series' [`Kind::weight`]s, held to the plugin's cap.
    weight: usize,
}

/// A series of one plugin: its metric name (without the prefix) and its
/// labels, sorted by name, without the host's `plugin` label.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    name: String,
    labels: Labels,
}

enum Cells {
    Counter(AtomicU64),
    /// The `f64`'s bits.
    Gauge(AtomicU64),
    Histogram(Histogram),
}

/// Counts per bucket, not cumulative: an observation is one increment, and
/// a scrape adds them up. The last bucket is `+Inf`'s own.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// The `f64` sum's bits.
    sum: AtomicU64,
}

/// The type of every family plugins created, and every name their lines
/// use, across all plugins: a scrape holds one family per name.
#[derive(Default)]
struct Families {
    kinds: HashMap<String, Kind>,
    names: HashSet<String>,
}

impl Families {
    /// Whether a family `name` of `kind` cannot exist beside the others.
    /// Claims are never released, so a conflict seen once stays one.
    fn conflicts(&self, name: &str, kind: Kind) -> bool {
        match self.kinds.get(name) {
            Some(&existing) => existing != kind,
            None => kind.names(name).iter().any(|n| self.names.contains(n)),
        }
    }

    fn claim(&mut self, name: &str, kind: Kind) -> Result<(), Reason> {
        if self.conflicts(name, kind) {
            return Err(Reason::TypeConflict);
        }
        if !self.kinds.contains_key(name) {
            self.names.extend(kind.names(name));
            self.kinds.insert(name.to_owned(), kind);
        }
        Ok(())
    }
}

impl PluginRegistry {
    pub fn new(limits: MetricsLimits) -> PluginRegistry {
        PluginRegistry {
            limits,
            ..PluginRegistry::default()
        }
    }

    /// Record one sample of `plugin`'s, or drop and count it.
    pub(super) fn record(&self, plugin: &str, name: String, labels: Labels, sample: Sample) {
        let series = self.plugin(plugin);
        let labels = match self.check(&name, labels, sample) {
            Ok(labels) => labels,
            Err(reason) => return series.refused(reason, &name),
        };
        if let Err((reason, key)) = series.record(SeriesKey { name, labels }, sample, self) {
            series.refused(reason, &key.name);
        }
    }

    fn plugin(&self, plugin: &str) -> Arc<PluginSeries> {
        if let Some(series) = read(&self.plugins).get(plugin) {
            return series.clone();
        }
        write(&self.plugins)
            .entry(plugin.to_owned())
            .or_insert_with(|| {
                Arc::new(PluginSeries {
                    name: plugin.into(),
                    table: RwLock::default(),
                    dropped: Default::default(),
                })
            })
            .clone()
    }

    /// The value, the name and the labels, in that order (cheapest first);
    /// the labels come back sorted, as a series' key holds them.
    fn check(&self, name: &str, mut labels: Labels, sample: Sample) -> Result<Labels, Reason> {
        let finite = match sample {
            Sample::Counter(_) => true,
            Sample::Gauge(v) | Sample::Histogram(v) => v.is_finite(),
        };
        if !finite {
            return Err(Reason::InvalidValue);
        }
        if !valid_name(name, self.limits.max_name_bytes) {
            return Err(Reason::InvalidName);
        }
        // Prometheus treats an empty label value as no label at all: keep
        // the one spelling, or `{a=""}` and `{}` would be two lines of one
        // series.
        labels.retain(|(_, value)| !value.is_empty());
        if labels.len() > self.limits.max_labels {
            return Err(Reason::TooManyLabels);
        }
        for (label, value) in &labels {
            if !valid_name(label, self.limits.max_name_bytes) || reserved_label(label) {
                return Err(Reason::InvalidLabel);
            }
            if value.len() > self.limits.max_label_value_bytes {
                return Err(Reason::LabelValueTooLong);
            }
        }
        labels.sort_unstable();
        if labels.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err(Reason::InvalidLabel);
        }
        Ok(labels)
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let plugins: Vec<Arc<PluginSeries>> = read(&self.plugins).values().cloned().collect();
        let mut rows = Vec::new();
        for plugin in &plugins {
            let table = read(&plugin.table);
            rows.extend(table.series.iter().map(|(key, cells)| Row {
                plugin: plugin.name.clone(),
                key: key.clone(),
                cells: cells.clone(),
            }));
        }
        Snapshot { plugins, rows }
    }
}

/// A refused sample: why, and its key back (for the log line).
type Refusal = (Reason, SeriesKey);

impl PluginSeries {
    /// Every refusal is decided under shared locks (the cap only grows
    /// tighter, family claims are never released), so a plugin flooding
    /// new series past its cap never takes a lock exclusively: only the
    /// series that will be added do, at most the cap's worth.
    fn record(
        &self,
        key: SeriesKey,
        sample: Sample,
        registry: &PluginRegistry,
    ) -> Result<(), Refusal> {
        let kind = sample.kind();
        {
            let table = read(&self.table);
            match table.series.get(&key) {
                Some(cells) if cells.record(sample) => return Ok(()),
                Some(_) => return Err((Reason::TypeConflict, key)),
                None if table.weight + kind.weight() > registry.limits.max_series_per_plugin => {
                    return Err((Reason::SeriesLimit, key));
                }
                None => {}
            }
        }
        if read(&registry.families).conflicts(&key.name, kind) {
            return Err((Reason::TypeConflict, key));
        }
        self.add(key, sample, registry)
    }

    /// The slow path: a new series, if the cap and the families still
    /// allow once the table is held exclusively.
    fn add(
        &self,
        key: SeriesKey,
        sample: Sample,
        registry: &PluginRegistry,
    ) -> Result<(), Refusal> {
        let mut table = write(&self.table);
        let kind = sample.kind();
        // Another call may have added it since the shared lookup.
        if let Some(cells) = table.series.get(&key) {
            return if cells.record(sample) {
                Ok(())
            } else {
                Err((Reason::TypeConflict, key))
            };
        }
        let weight = table.weight + kind.weight();
        if weight > registry.limits.max_series_per_plugin {
            return Err((Reason::SeriesLimit, key));
        }
        let claimed = write(&registry.families).claim(&key.name, kind);
        if let Err(reason) = claimed {
            return Err((reason, key));
        }
        let cells = Arc::new(Cells::new(kind));
        cells.record(sample);
        table.series.insert(Arc::new(key), cells);
        table.weight = weight;
        Ok(())
    }

    fn refused(&self, reason: Reason, name: &str) {
        // One refusal is one increment: 2^64 of them will not come.
        let before = self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
        // Once per plugin and reason: a plugin refused on every call must
        // not flood the log; the counter keeps the tally.
        if before == 0 {
            let shown: String = name.chars().take(64).collect();
            tracing::warn!(
                plugin = %self.name,
                metric = ?shown,
                reason = reason.label(),
                "plugin metric refused; later ones are only counted in {DROPPED}"
            );
        }
    }
}

impl Cells {
    fn new(kind: Kind) -> Cells {
        match kind {
            Kind::Counter => Cells::Counter(AtomicU64::new(0)),
            Kind::Gauge => Cells::Gauge(AtomicU64::new(0f64.to_bits())),
            Kind::Histogram => Cells::Histogram(Histogram::default()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Cells::Counter(_) => Kind::Counter,
            Cells::Gauge(_) => Kind::Gauge,
            Cells::Histogram(_) => Kind::Histogram,
        }
    }

    /// Apply a sample; false if it is of another type than the series.
    fn record(&self, sample: Sample) -> bool {
        match (self, sample) {
            (Cells::Counter(count), Sample::Counter(delta)) => saturating_add(count, delta),
            (Cells::Gauge(bits), Sample::Gauge(value)) => {
                bits.store(value.to_bits(), Ordering::Relaxed);
            }
            (Cells::Histogram(h), Sample::Histogram(value)) => {
                let bucket = BUCKETS
                    .iter()
                    .position(|bound| value <= *bound)
                    .unwrap_or(BUCKETS.len());
                // One increment per observation: 2^64 of them will not come.
                h.buckets[bucket].fetch_add(1, Ordering::Relaxed);
                let _ = h
                    .sum
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                        Some((f64::from_bits(sum) + value).to_bits())
                    });
            }
            _ => return false,
        }
        true
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, at most `max` bytes: what Prometheus accepts
/// for a label name, and for a metric name without the colons it keeps for
/// recording rules.
fn valid_name(name: &str, max: usize) -> bool {
    let mut bytes = name.bytes();
    name.len() <= max
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Labels the host or Prometheus gives a meaning: `le` (histogram
/// buckets), `quantile` (summaries), `plugin` (the host's), `__…`
/// (Prometheus-internal). A duplicate label name makes Prometheus reject
/// the whole scrape, so these are refused, not renamed.
fn reserved_label(name: &str) -> bool {
    matches!(name, "le" | "quantile" | "plugin") || name.starts_with("__")
}

/// Every plugin series as listed when the snapshot was taken. Owns `Arc`s
/// only: no lock guard, so a recording plugin never waits on its render.
pub(super) struct Snapshot {
    plugins: Vec<Arc<PluginSeries>>,
    rows: Vec<Row>,
}

struct Row {
    plugin: Arc<str>,
    key: Arc<SeriesKey>,
    cells: Arc<Cells>,
}

impl Snapshot {
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(super) fn render(mut self, out: &mut String) {
        self.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        if !self.plugins.is_empty() {
            family(
                out,
                DROPPED,
                "Plugin metric samples refused, by plugin and reason.",
                "counter",
            );
        }
        for plugin in &self.plugins {
            for (reason, count) in REASONS.iter().zip(&plugin.dropped) {
                out.push_str(DROPPED);
                out.push_str("{plugin=\"");
                escape_into(out, &plugin.name);
                let _ = writeln!(
                    out,
                    "\",reason=\"{}\"}} {}",
                    reason.label(),
                    count.load(Ordering::Relaxed)
                );
            }
        }

        // A family's lines must be contiguous: sort by name first.
        self.rows.sort_by(|a, b| {
            (&a.key.name, &a.plugin, &a.key.labels).cmp(&(&b.key.name, &b.plugin, &b.key.labels))
        });
        let mut current: Option<&str> = None;
        for row in &self.rows {
            let name = row.key.name.as_str();
            if current != Some(name) {
                let full = format!("{PLUGIN_PREFIX}{name}");
                family(
                    out,
                    &full,
                    "Recorded by a plugin through the metrics import.",
                    row.cells.kind().type_name(),
                );
                current = Some(name);
            }
            row.render(out);
        }
    }
}

impl Row {
    fn render(&self, out: &mut String) {
        let name = &self.key.name;
        let plugin = Some(&*self.plugin);
        let labels = &self.key.labels;
        match &*self.cells {
            Cells::Counter(count) => {
                let _ = write!(out, "{PLUGIN_PREFIX}{name}");
                write_labels(out, plugin, labels, None);
                let _ = writeln!(out, " {}", count.load(Ordering::Relaxed));
            }
            Cells::Gauge(bits) => {
                let _ = write!(out, "{PLUGIN_PREFIX}{name}");
                write_labels(out, plugin, labels, None);
                out.push(' ');
                write_f64(out, f64::from_bits(bits.load(Ordering::Relaxed)));
                out.push('\n');
            }
            Cells::Histogram(h) => {
                // Read each bucket once, so `+Inf` and `_count` agree with
                // the buckets even while observations arrive.
                let mut total: u64 = 0;
                let mut bound_text = String::new();
                for (i, cell) in h.buckets.iter().enumerate() {
                    total = total.saturating_add(cell.load(Ordering::Relaxed));
                    bound_text.clear();
                    match BUCKETS.get(i) {
                        Some(bound) => {
                            let _ = write!(bound_text, "{bound}");
                        }
                        None => bound_text.push_str("+Inf"),
                    }
                    let _ = write!(out, "{PLUGIN_PREFIX}{name}_bucket");
                    write_labels(out, plugin, labels, Some(&bound_text));
                    let _ = writeln!(out, " {total}");
                }
                let _ = write!(out, "{PLUGIN_PREFIX}{name}_sum");
                write_labels(out, plugin, labels, None);
                out.push(' ');
                write_f64(out, f64::from_bits(h.sum.load(Ordering::Relaxed)));
                out.push('\n');
                let _ = write!(out, "{PLUGIN_PREFIX}{name}_count");
                write_labels(out, plugin, labels, None);
                let _ = writeln!(out, " {total}");
            }
        }
    }
}
