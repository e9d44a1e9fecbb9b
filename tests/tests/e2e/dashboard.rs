//! The shipped Grafana dashboard and alert rules, checked by a real
//! Prometheus (Debian's `prometheus`, installed by scripts/test.sh)
//! scraping a real Weir: every dashboard expression, and the measured part
//! of every alert rule, returns data through Prometheus's HTTP API; and
//! `promtool` accepts the rules and the example config.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weir_tests::{admin_section, client, respond, tagger_plugin, TestProxy, Upstream, ADMIN_TOKEN};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `promtool <args>` must succeed.
fn promtool(args: &[&str]) {
    let output = std::process::Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool must be installed (scripts/test.sh installs Debian's prometheus)");
    assert!(
        output.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every PromQL expression of the dashboard, Grafana's `$__rate_interval`
/// given a value.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(examples().join("grafana/weir.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            exprs.push(expr.replace("$__rate_interval", "1m"));
        }
    }
    assert!(exprs.len() >= 8, "{exprs:?}");
    exprs
}

/// The measured part of every alert rule: its expression without the
/// final comparison with a threshold (the rules are written that way).
fn alert_measures() -> Vec<String> {
    let text = std::fs::read_to_string(examples().join("prometheus/alerts.yml")).unwrap();
    let measures: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr: "))
        .map(|expr| {
            let cut = [" >= ", " > ", " < ", " == "]
                .iter()
                .filter_map(|op| expr.rfind(op))
                .max()
                .unwrap_or_else(|| panic!("{expr}: no threshold comparison"));
            expr[..cut].to_owned()
        })
        .collect();
    assert!(measures.len() >= 4, "{measures:?}");
    measures
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result vector.
async fn query(prometheus: &str, expr: &str) -> Vec<Value> {
    let url = format!("http://{prometheus}/api/v1/query?query={}", encode(expr));
    let text = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{expr}: {e}: {text}"));
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_gets_data_for_every_dashboard_panel_and_alert() {
    promtool(&[
        "check",
        "rules",
        examples().join("prometheus/alerts.yml").to_str().unwrap(),
    ]);
    promtool(&[
        "check",
        "config",
        examples()
            .join("prometheus/prometheus.yml")
            .to_str()
            .unwrap(),
    ]);

    let up = Upstream::serve(|req| async move {
        let mut response = respond(200, "ok");
        if req.uri().path().starts_with("/api/cached") {
            response
                .headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
        }
        response
    })
    .await;
    let config = |extra: &str| {
        format!(
            "default_upstream = \"up\"\n{}\n[cache]\ncapacity_bytes = 1048576\n{}{}\n\
             [[routes]]\nname = \"api\"\nprefix = \"/api\"\nchain = [\"tagger\"]\n{extra}",
            up.toml("up"),
            admin_section(),
            tagger_plugin("tagger", "t", ""),
        )
    };
    let proxy = Arc::new(TestProxy::start(&config("")).await);
    // A refused reload, so the reload alert has its series.
    proxy.rewrite(&config("[[routes]]\nname = \"bad\"\nchain = [\"nope\"]\n"));
    assert!(proxy.reload().await.is_err());

    // Traffic all along: cacheable and not, one route and the fallback.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for path in ["/api/cached", "/api/live", "/other"] {
                    let _ = client().get(proxy.url(path)).send().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Prometheus, scraping the admin listener every second with the token.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, ADMIN_TOKEN).unwrap();
    let admin = proxy.admin_url("");
    let target = admin.trim_start_matches("http://").trim_end_matches('/');
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(
        &config_path,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: weir\n    authorization:\n      type: Bearer\n      credentials_file: {token:?}\n    static_configs:\n      - targets: [{target:?}]\n",
            rules = examples().join("prometheus/alerts.yml").display().to_string(),
            token = token.display().to_string(),
        ),
    )
    .unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut server = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus must be installed (scripts/test.sh installs Debian's prometheus)");

    // Enough scrapes for rate() over the last minute to have two samples.
    let mut scraped = false;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(answer) = client()
            .get(format!(
                "http://{listen}/api/v1/query?query={}",
                encode("count_over_time(up{job=\"weir\"}[1m])")
            ))
            .send()
            .await
        else {
            continue;
        };
        let Ok(text) = answer.text().await else {
            continue;
        };
        let Ok(answer) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let scrapes = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if scrapes >= 4.0 {
            scraped = true;
            break;
        }
    }
    assert!(scraped, "prometheus never scraped weir 4 times");
    let up_now = query(&listen, "up{job=\"weir\"}").await;
    assert_eq!(up_now[0]["value"][1], "1", "the scrape failed: {up_now:?}");

    for expr in dashboard_expressions()
        .iter()
        .chain(alert_measures().iter())
    {
        let result = query(&listen, expr).await;
        assert!(!result.is_empty(), "no data for {expr}");
        let numeric = result.iter().any(|sample| {
            sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| !v.is_nan())
        });
        assert!(numeric, "only NaN for {expr}: {result:?}");
    }
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    let _ = server.kill().await;
}
