//! What plugins may make the host hold in metrics, and what a scrape shows.

use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

use super::plugin::REASONS;
use super::{Labels, Metrics, MetricsLimits};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The value on the scrape line that starts with `series` (name and
/// labels, exactly as rendered).
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

fn dropped(scrape: &str, plugin: &str, reason: &str) -> f64 {
    let series =
        format!("weir_plugin_metrics_dropped_total{{plugin=\"{plugin}\",reason=\"{reason}\"}}");
    value(scrape, &series).unwrap_or_else(|| panic!("no {series} in:\n{scrape}"))
}

/// Label names of a sample line, in order.
fn label_names(line: &str) -> Vec<String> {
    let Some(open) = line.find('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut rest = &line[open + 1..];
    while let Some(eq) = rest.find("=\"") {
        names.push(rest[..eq].trim_start_matches(',').to_owned());
        // Skip the quoted value, escapes included.
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

fn assert_no_duplicate_labels(scrape: &str) {
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let names = label_names(line);
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "duplicate label in {line}");
    }
}

fn plugin_lines<'a>(scrape: &'a str, plugin: &str) -> Vec<&'a str> {
    let label = format!("plugin=\"{plugin}\"");
    scrape
        .lines()
        .filter(|l| l.starts_with("weir_custom_") && l.contains(&label))
        .collect()
}

#[test]
fn a_plugin_label_named_le_is_refused_and_no_line_repeats_a_label() {
    let metrics = Metrics::default();
    for reserved in ["le", "quantile", "plugin", "__name__"] {
        metrics.plugin_histogram_observe("p", "latency".into(), labels(&[(reserved, "7")]), 0.2);
        metrics.plugin_counter_add("p", "hits".into(), labels(&[(reserved, "7")]), 1);
    }
    // Twice the same label name is refused too, not merged.
    metrics.plugin_counter_add("p", "hits".into(), labels(&[("a", "1"), ("a", "2")]), 1);
    metrics.plugin_histogram_observe("p", "latency".into(), labels(&[("route", "/")]), 0.2);
    let scrape = metrics.render();

    assert_no_duplicate_labels(&scrape);
    assert_eq!(dropped(&scrape, "p", "invalid_label"), 9.0);
    assert!(!scrape.contains("weir_custom_hits"), "{scrape}");
    assert_eq!(
        value(
            &scrape,
            "weir_custom_latency_bucket{plugin=\"p\",route=\"/\",le=\"0.5\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        plugin_lines(&scrape, "p").len(),
        15,
        "one histogram: 12 buckets, +Inf, _sum, _count\n{scrape}"
    );
}

#[test]
fn a_plugin_metric_named_like_a_host_one_stays_in_the_plugin_namespace() {
    let metrics = Metrics::default();
    metrics.counter_add(
        "weir_plugin_errors_total",
        &[("plugin", "p"), ("kind", "timeout")],
        1,
    );
    metrics.plugin_counter_add(
        "p",
        "errors_total".into(),
        labels(&[("kind", "timeout")]),
        100,
    );
    // The prefix spelled out is only a longer plugin name, not a way in.
    metrics.plugin_counter_add(
        "p",
        "weir_plugin_errors_total".into(),
        labels(&[("kind", "timeout")]),
        100,
    );
    assert_eq!(
        metrics.counter(
            "weir_plugin_errors_total",
            &[("plugin", "p"), ("kind", "timeout")]
        ),
        1
    );
    let scrape = metrics.render();
    assert_eq!(
        value(
            &scrape,
            "weir_plugin_errors_total{plugin=\"p\",kind=\"timeout\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            "weir_custom_errors_total{plugin=\"p\",kind=\"timeout\"}"
        ),
        Some(100.0),
        "{scrape}"
    );
    assert_eq!(
        value(
            &scrape,
            "weir_custom_weir_plugin_errors_total{plugin=\"p\",kind=\"timeout\"}"
        ),
        Some(100.0),
        "{scrape}"
    );
    // Every family is declared once.
    let types: Vec<&str> = scrape.lines().filter(|l| l.starts_with("# TYPE")).collect();
    let unique: HashSet<&&str> = types.iter().collect();
    assert_eq!(unique.len(), types.len(), "{scrape}");
}

#[test]
fn the_series_cap_keeps_existing_series_and_counts_what_it_drops() {
    let metrics = Metrics::new(MetricsLimits {
        max_series_per_plugin: 20,
        ..MetricsLimits::default()
    });
    // A histogram weighs 15, so 5 counters fit beside it.
    metrics.plugin_histogram_observe("p", "latency".into(), Vec::new(), 0.01);
    for i in 0..100 {
        let id = i.to_string();
        metrics.plugin_counter_add("p", "hits_total".into(), labels(&[("id", &id)]), 1);
    }
    // Existing series still update; another plugin has its own budget.
    metrics.plugin_counter_add("p", "hits_total".into(), labels(&[("id", "0")]), 41);
    metrics.plugin_histogram_observe("p", "latency".into(), Vec::new(), 0.01);
    metrics.plugin_counter_add("q", "hits_total".into(), labels(&[("id", "0")]), 1);
    let scrape = metrics.render();

    assert_eq!(plugin_lines(&scrape, "p").len(), 20, "{scrape}");
    assert_eq!(dropped(&scrape, "p", "series_limit"), 95.0);
    assert_eq!(dropped(&scrape, "q", "series_limit"), 0.0);
    assert_eq!(
        value(&scrape, "weir_custom_hits_total{plugin=\"p\",id=\"0\"}"),
        Some(42.0)
    );
    assert_eq!(
        value(&scrape, "weir_custom_latency_count{plugin=\"p\"}"),
        Some(2.0)
    );
    assert_eq!(
        value(&scrape, "weir_custom_hits_total{plugin=\"q\",id=\"0\"}"),
        Some(1.0)
    );
}

#[test]
fn names_labels_and_values_out_of_bounds_are_refused_and_counted() {
    let metrics = Metrics::new(MetricsLimits {
        max_labels: 2,
        max_label_value_bytes: 8,
        max_name_bytes: 16,
        ..MetricsLimits::default()
    });
    let p = |name: &str, pairs: &[(&str, &str)]| {
        metrics.plugin_counter_add("p", name.into(), labels(pairs), 1);
    };
    for bad in [
        "",
        "9lives",
        "with-dash",
        "dotted.name",
        "ünïcode",
        "a_name_of_17_byte",
    ] {
        p(bad, &[]);
    }
    p("ok", &[("bad-label", "v")]);
    p("ok", &[("", "v")]);
    p("ok", &[("a_label_of_17_byt", "v")]);
    p("ok", &[("a", "123456789")]);
    p("ok", &[("a", "1"), ("b", "2"), ("c", "3")]);
    // An empty value is no label to Prometheus, so it does not count.
    p("ok", &[("a", "1"), ("b", "2"), ("c", "")]);
    p("ok", &[("a", "12345678"), ("b", "")]);
    let scrape = metrics.render();

    assert_eq!(dropped(&scrape, "p", "invalid_name"), 6.0);
    assert_eq!(dropped(&scrape, "p", "invalid_label"), 3.0);
    assert_eq!(dropped(&scrape, "p", "label_value_too_long"), 1.0);
    assert_eq!(dropped(&scrape, "p", "too_many_labels"), 1.0);
    assert_eq!(plugin_lines(&scrape, "p").len(), 2, "{scrape}");
    assert_eq!(
        value(&scrape, "weir_custom_ok{plugin=\"p\",a=\"12345678\"}"),
        Some(1.0)
    );
}

#[test]
fn a_name_is_one_type_across_plugins_and_histogram_suffixes() {
    let metrics = Metrics::default();
    metrics.plugin_counter_add("p", "jobs".into(), Vec::new(), 1);
    metrics.plugin_gauge_set("p", "jobs".into(), Vec::new(), 1.0);
    metrics.plugin_gauge_set("p", "jobs".into(), labels(&[("queue", "a")]), 1.0);
    metrics.plugin_histogram_observe("q", "jobs".into(), Vec::new(), 1.0);
    // `wait_count` would be a line of histogram `wait`, and the other way.
    metrics.plugin_histogram_observe("p", "wait".into(), Vec::new(), 1.0);
    metrics.plugin_gauge_set("q", "wait_count".into(), Vec::new(), 1.0);
    metrics.plugin_counter_add("q", "size_bucket".into(), Vec::new(), 1);
    metrics.plugin_histogram_observe("p", "size".into(), Vec::new(), 1.0);
    let scrape = metrics.render();

    assert_eq!(dropped(&scrape, "p", "type_conflict"), 3.0);
    assert_eq!(dropped(&scrape, "q", "type_conflict"), 2.0);
    assert_eq!(scrape.matches("# TYPE weir_custom_jobs counter").count(), 1);
    assert!(!scrape.contains("weir_custom_wait_count{plugin=\"q\"}"));
    assert!(!scrape.contains("weir_custom_size_bucket{plugin=\"p\""));
}

#[test]
fn counters_saturate_instead_of_wrapping() {
    let metrics = Metrics::default();
    metrics.plugin_counter_add("p", "big_total".into(), Vec::new(), u64::MAX);
    metrics.plugin_counter_add("p", "big_total".into(), Vec::new(), 2);
    metrics.counter_add("weir_upstream_retries_total", &[], u64::MAX);
    metrics.counter_add("weir_upstream_retries_total", &[], 2);
    let scrape = metrics.render();
    assert!(
        scrape.contains(&format!(
            "weir_custom_big_total{{plugin=\"p\"}} {}",
            u64::MAX
        )),
        "{scrape}"
    );
    assert_eq!(
        metrics.counter("weir_upstream_retries_total", &[]),
        u64::MAX
    );
}

#[test]
fn nan_and_infinities_are_refused_finite_values_kept() {
    let metrics = Metrics::default();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        metrics.plugin_gauge_set("p", "temp".into(), Vec::new(), bad);
        metrics.plugin_histogram_observe("p", "latency".into(), Vec::new(), bad);
    }
    metrics.plugin_gauge_set("p", "temp".into(), Vec::new(), -1e300);
    metrics.plugin_histogram_observe("p", "latency".into(), Vec::new(), 1e300);
    metrics.plugin_histogram_observe("p", "latency".into(), Vec::new(), 1e300);
    let scrape = metrics.render();

    assert_eq!(dropped(&scrape, "p", "invalid_value"), 6.0);
    assert_eq!(
        value(&scrape, "weir_custom_temp{plugin=\"p\"}"),
        Some(-1e300)
    );
    // Above the last bound: only `+Inf` counts it.
    assert_eq!(
        value(
            &scrape,
            "weir_custom_latency_bucket{plugin=\"p\",le=\"60\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &scrape,
            "weir_custom_latency_bucket{plugin=\"p\",le=\"+Inf\"}"
        ),
        Some(2.0)
    );
    assert!(
        scrape.contains("weir_custom_latency_sum{plugin=\"p\"} 2e300"),
        "{scrape}"
    );
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::default();
    metrics.plugin_counter_add(
        "p\"q",
        "hits_total".into(),
        labels(&[("path", "a\\b\"c\nd")]),
        1,
    );
    let scrape = metrics.render();
    assert!(
        scrape.contains(r#"weir_custom_hits_total{plugin="p\"q",path="a\\b\"c\nd"} 1"#),
        "{scrape}"
    );
    assert_no_duplicate_labels(&scrape);
}

#[test]
fn reasons_index_their_counters() {
    for (i, reason) in REASONS.iter().enumerate() {
        assert_eq!(*reason as usize, i, "{}", reason.label());
    }
}

/// A snapshot owns no lock guard (it is `'static`, which a guard
/// borrowing the registry cannot be), so while one is alive and being
/// rendered, plugins record into existing series and add new ones.
#[test]
fn recording_does_not_wait_for_a_scrape() {
    fn owns_no_guard<T: Send + 'static>(_: &T) {}

    let metrics = Metrics::default();
    for i in 0..500 {
        let id = i.to_string();
        metrics.plugin_counter_add("p", "hits_total".into(), labels(&[("id", &id)]), 1);
    }
    let snapshot = metrics.snapshot();
    owns_no_guard(&snapshot);

    // Record from another thread, into old series and new ones, while the
    // snapshot is held; a lock held by it would stall this thread for good,
    // which the timeout turns into a failure rather than a hung test.
    let (done, finished) = mpsc::channel();
    let recorder = metrics.clone();
    std::thread::spawn(move || {
        for i in 0..500 {
            recorder.plugin_counter_add("p", "hits_total".into(), labels(&[("id", "0")]), 1);
            recorder.plugin_gauge_set("p", "g".into(), labels(&[("n", &i.to_string())]), 1.0);
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(60))
        .expect("recording finished while a snapshot was held");

    // The snapshot lists the series of its time, with the values of now.
    let scrape = snapshot.render();
    assert_eq!(
        value(&scrape, "weir_custom_hits_total{plugin=\"p\",id=\"0\"}"),
        Some(501.0)
    );
    assert!(!scrape.contains("weir_custom_g{"));
    assert_eq!(metrics.render().matches("weir_custom_g{").count(), 500);
}
