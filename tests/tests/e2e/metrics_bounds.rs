//! What a plugin records through the `metrics` import is bounded by the
//! host and cannot break the scrape: the `hostile` plugin's `metrics-flood`
//! mode records hundreds of new series per request, a reserved `le` label,
//! a 1 MiB label value, too many labels, a malformed name, a NaN, a name
//! used as two types and a host metric's name. `/metrics`, read over the
//! admin listener, stays within `[metrics] max_series_per_plugin`, counts
//! every refusal, repeats no label, passes Prometheus' own checker, and the
//! proxy keeps serving.

use std::collections::HashSet;

use weir_tests::{client, hostile_plugin, TestProxy, Upstream};

/// `[metrics] max_series_per_plugin` in these tests.
const CAP: usize = 100;
/// What the flood records that the host keeps: a histogram (15 series),
/// a gauge, `errors_total` and `flood_kind_total`.
const FIXED_SERIES: usize = 15 + 3;
/// New `flood_total` series the plugin tries per request.
const PER_REQUEST: usize = 200;
/// Flooding requests sent.
const FLOODS: usize = 5;

async fn flooded_proxy() -> (TestProxy, Upstream) {
    let upstream = Upstream::echo().await;
    let body = format!(
        "default_upstream = \"up\"\nchain = [\"hostile\"]\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [metrics]\nmax_series_per_plugin = {CAP}\n\
         {}\n{}series_per_request = {PER_REQUEST}\n",
        upstream.toml("up"),
        // Generous: a deadline is not what this test is about.
        hostile_plugin("hostile", "metrics-flood", "timeout_ms = 5000"),
    );
    let proxy = TestProxy::start(&body).await;
    let client = client();
    for i in 0..FLOODS {
        let flood = client.get(proxy.url(&format!("/boom/{i}"))).send().await;
        assert_eq!(flood.unwrap().status(), 200, "flood {i}");
        let fine = client.get(proxy.url(&format!("/fine/{i}"))).send().await;
        assert_eq!(fine.unwrap().status(), 200, "request after flood {i}");
    }
    (proxy, upstream)
}

async fn scrape(proxy: &TestProxy) -> String {
    let response = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of the sample line that starts with `series` exactly.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

fn dropped(scrape: &str, reason: &str) -> usize {
    let series =
        format!("weir_plugin_metrics_dropped_total{{plugin=\"hostile\",reason=\"{reason}\"}}");
    let count = value(scrape, &series).unwrap_or_else(|| panic!("no {series} in:\n{scrape}"));
    count as usize
}

/// The label names of a sample line, in order; quoted values (escapes
/// included) are skipped, so `"a=\"b"` is one value.
fn label_names(line: &str) -> Vec<&str> {
    let Some(open) = line.find('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut rest = &line[open + 1..];
    while let Some(eq) = rest.find("=\"") {
        names.push(rest[..eq].trim_start_matches(','));
        let value = &rest[eq + 2..];
        let mut escaped = false;
        let end = value
            .char_indices()
            .find(|&(_, c)| {
                let closes = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            })
            .map_or(value.len(), |(i, _)| i + 1);
        rest = &value[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn a_metrics_flood_stays_within_the_cap_and_every_refusal_is_counted() {
    let (proxy, _up) = flooded_proxy().await;
    let scrape = scrape(&proxy).await;

    let plugin_lines: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("weir_custom_") && l.contains("plugin=\"hostile\""))
        .collect();
    assert_eq!(plugin_lines.len(), CAP, "{scrape}");
    let kept_floods = CAP - FIXED_SERIES;
    assert_eq!(
        plugin_lines
            .iter()
            .filter(|l| l.starts_with("weir_custom_flood_total{"))
            .count(),
        kept_floods
    );
    // Existing series keep counting once the cap is reached.
    assert_eq!(
        value(
            &scrape,
            "weir_custom_flood_latency_seconds_count{plugin=\"hostile\"}"
        ),
        Some(FLOODS as f64),
        "{scrape}"
    );

    assert_eq!(
        dropped(&scrape, "series_limit"),
        FLOODS * PER_REQUEST - kept_floods
    );
    for reason in [
        "invalid_label",
        "label_value_too_long",
        "too_many_labels",
        "invalid_name",
        "invalid_value",
        "type_conflict",
    ] {
        assert_eq!(dropped(&scrape, reason), FLOODS, "{reason}");
    }

    // `errors_total` is the plugin's own, not the host's plugin errors.
    assert_eq!(
        value(
            &scrape,
            "weir_custom_errors_total{plugin=\"hostile\",kind=\"timeout\"}"
        ),
        Some(FLOODS as f64)
    );
    assert_eq!(
        proxy.metrics().counter(
            "weir_plugin_errors_total",
            &[("plugin", "hostile"), ("kind", "timeout")]
        ),
        0
    );
    assert!(
        !scrape.contains("weir_plugin_errors_total{"),
        "no plugin call failed:\n{scrape}"
    );

    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let names = label_names(line);
        let unique: HashSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "duplicate label in {line}");
        assert!(!names.is_empty() || !line.contains('{'), "unparsed: {line}");
    }
    // The 1 MiB value was never kept: the whole scrape is a few KiB.
    assert!(scrape.len() < 32 * 1024, "{} bytes", scrape.len());

    // The proxy still serves, and scrapes again the same way.
    let client = client();
    let mut served = Vec::new();
    for i in 0..20 {
        let request = client.get(proxy.url(&format!("/after/{i}"))).send();
        served.push(tokio::spawn(request));
    }
    for request in served {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let again = self::scrape(&proxy).await;
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with("weir_custom_") && l.contains("plugin=\"hostile\""))
            .count(),
        CAP
    );
}

/// The scrape, flood and all, is what Prometheus accepts: `promtool check
/// metrics` (Debian's `prometheus`, installed by scripts/test.sh) parses it
/// (duplicate labels, a family split in two, a bad name fail) and lints it
/// (help text, counter suffixes).
#[tokio::test(flavor = "multi_thread")]
async fn the_flooded_scrape_passes_promtool() {
    let (proxy, _up) = flooded_proxy().await;
    let scrape = scrape(&proxy).await;

    weir_tests::assert_promtool_accepts(&scrape);
}
