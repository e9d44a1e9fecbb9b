//! Config error messages: each names the file, the line where the parser
//! knows it, the key path, and what was expected.

use std::path::Path;

use super::{Config, KvSettings};
use crate::kv::KvLimits;

fn errors(text: &str) -> Vec<String> {
    match Config::parse(Path::new("/etc/weir/proxy.toml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:0\"\n";

#[test]
fn a_typo_names_the_key_path_and_line() {
    let errs = errors(&format!(
        "{LISTENER}[upstreams.api]\nendpoints = [\"127.0.0.1:80\"]\nresponse_timout_ms = 5\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "/etc/weir/proxy.toml:5: upstreams.api.response_timout_ms: unknown field `response_timout_ms`"
        ),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("expected one of"), "{}", errs[0]);
}

#[test]
fn broken_toml_is_located() {
    let errs = errors("[[listeners]\naddress = 1\n");
    assert!(
        errs[0].starts_with("/etc/weir/proxy.toml:1:"),
        "{}",
        errs[0]
    );
}

#[test]
fn a_wrong_type_names_the_key() {
    let errs = errors(&format!("{LISTENER}[limits]\nmax_headers = \"many\"\n"));
    assert!(errs[0].contains("limits.max_headers"), "{}", errs[0]);
    assert!(errs[0].contains(":4:"), "{}", errs[0]);
}

#[test]
fn every_semantic_problem_is_reported_with_its_key() {
    let errs = errors(
        "default_upstream = \"nope\"\nchain = [\"ghost\", \"ghost\"]\n\
         [[listeners]]\naddress = \"localhost:80\"\n\
         [upstreams.up]\nendpoints = [\"host-without-port\", \"user@h:1\"]\n",
    );
    let all = errs.join("\n");
    for expected in [
        "proxy.toml:4: listeners[0].address: \"localhost:80\" is not an IP:PORT address",
        "proxy.toml:6: upstreams.up.endpoints[0]: \"host-without-port\" has no port",
        "upstreams.up.endpoints[1]: \"user@h:1\"",
        "proxy.toml:1: default_upstream: unknown upstream \"nope\" (configured: up)",
        "proxy.toml:2: chain[0]: unknown plugin \"ghost\" (configured: none)",
        "chain[1]: plugin \"ghost\" appears twice in the chain",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn a_missing_plugin_file_is_named_relative_to_the_config() {
    let errs = errors(&format!(
        "chain = [\"auth\"]\n{LISTENER}[plugins.auth]\nfile = \"plugins/auth.wasm\"\n"
    ));
    assert_eq!(
        errs[0],
        "/etc/weir/proxy.toml:5: plugins.auth.file: no such file /etc/weir/plugins/auth.wasm"
    );
}

#[test]
fn a_valid_minimal_config_gets_defaults() {
    let config = Config::parse(
        Path::new("/srv/proxy.toml"),
        &format!("default_upstream = \"up\"\n{LISTENER}[upstreams.up]\nendpoints = [\"10.0.0.1:8080\"]\n"),
    )
    .unwrap();
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(config.default_upstream.as_deref(), Some("up"));
    let up = &config.upstreams["up"];
    assert_eq!(up.retries, 2);
    assert_eq!(up.max_fails, 3);
    assert_eq!(up.max_connections_per_endpoint, 1024);
    assert!(config.cache.is_none());
    assert!(config.chain.is_empty());
    assert_eq!(config.runtime.max_plugin_cpu_percent, 50);
}

#[test]
fn numbers_out_of_range_name_their_key_and_range() {
    let errs = errors(&format!(
        "{LISTENER}[limits]\nheader_read_timeout_ms = 0\nmax_connections = 0\n\
         [upstreams.api]\nendpoints = [\"127.0.0.1:80\"]\nretries = 1000\n\
         max_connections_per_endpoint = 0\n[runtime]\nmax_plugin_cpu_percent = 0\n"
    ));
    let all = errs.join("\n");
    assert!(
        all.contains("limits.header_read_timeout_ms: 0 is out of range: expected 1 to 600000"),
        "{all}"
    );
    assert!(
        all.contains("limits.max_connections: 0 is out of range"),
        "{all}"
    );
    assert!(
        all.contains("upstreams.api.retries: 1000 is out of range: expected 0 to 10"),
        "{all}"
    );
    assert!(
        all.contains(
            "upstreams.api.max_connections_per_endpoint: 0 is out of range: expected 1 to 1000000"
        ),
        "{all}"
    );
    assert!(
        all.contains("runtime.max_plugin_cpu_percent: 0 is out of range: expected 1 to 100"),
        "{all}"
    );
}

#[test]
fn names_are_plain() {
    let errs = errors(&format!(
        "{LISTENER}[upstreams.\"Api/x\"]\nendpoints = [\"127.0.0.1:80\"]\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("upstreams.Api/x") && e.contains("1 to 64 of a-z")),
        "{errs:?}"
    );
    assert!(super::check_name("auth-v2_1").is_ok());
    for bad in ["", "A", "a/b", "a b", "a\nb", &"x".repeat(65)] {
        assert!(super::check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_remote_admin_listener_needs_a_token() {
    let errs = errors(&format!("{LISTENER}[admin]\naddress = \"0.0.0.0:9901\"\n"));
    assert!(
        errs.iter()
            .any(|e| e.contains("admin.token_file: required") && e.contains("not on loopback")),
        "{errs:?}"
    );
}

#[test]
fn admin_tls_names_each_missing_file() {
    let errs = errors(&format!(
        "{LISTENER}[admin]\naddress = \"127.0.0.1:9901\"\n[admin.tls]\n\
         certificates = [{{ cert = \"nope.pem\", key = \"nope.key\" }}]\nclient_ca = \"ca.pem\"\n"
    ));
    for key in [
        "admin.tls.certificates[0].cert",
        "admin.tls.certificates[0].key",
        "admin.tls.client_ca",
    ] {
        assert!(errs.iter().any(|e| e.contains(key)), "{key}: {errs:?}");
    }
    let errs = errors(&format!(
        "{LISTENER}[admin]\naddress = \"127.0.0.1:9901\"\n[admin.tls]\ncertificates = []\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("admin.tls.certificates") && e.contains("at least one")),
        "{errs:?}"
    );
}

#[test]
fn metrics_limits_default_and_refuse_zero_with_their_line() {
    let config = Config::parse(Path::new("/srv/proxy.toml"), LISTENER).unwrap();
    assert_eq!(config.metrics, crate::metrics::MetricsLimits::default());

    let config = Config::parse(
        Path::new("/srv/proxy.toml"),
        &format!("{LISTENER}[metrics]\nmax_series_per_plugin = 50\n"),
    )
    .unwrap();
    assert_eq!(config.metrics.max_series_per_plugin, 50);
    assert_eq!(config.metrics.max_labels, 8);

    let errs = errors(&format!(
        "{LISTENER}[metrics]\nmax_labels = 0\nmax_label_value_bytes = 0\n"
    ));
    assert_eq!(
        errs,
        [
            "/etc/weir/proxy.toml:4: metrics.max_labels: must be greater than 0",
            "/etc/weir/proxy.toml:5: metrics.max_label_value_bytes: must be greater than 0",
        ]
    );
    let errs = errors(&format!("{LISTENER}[metrics]\nmax_series = 10\n"));
    assert!(
        errs[0].starts_with("/etc/weir/proxy.toml:4: metrics.max_series: unknown field"),
        "{}",
        errs[0]
    );
}

#[test]
fn kv_limits_default_and_shares_follow_the_whole() {
    let parse = |kv: &str| Config::parse(Path::new("/srv/proxy.toml"), &format!("{LISTENER}{kv}"));
    let config = parse("").unwrap();
    assert!(matches!(config.kv, KvSettings::Memory(limits) if limits == KvLimits::default()));
    let config = parse("[kv]\nbackend = \"memory\"\nmax_bytes = 1048576\n").unwrap();
    let KvSettings::Memory(limits) = config.kv else {
        panic!("memory backend")
    };
    assert_eq!(limits.plugin_max_bytes, 262_144);
    assert_eq!(limits.plugin_max_entries, 100_000);
}

#[test]
fn kv_limits_are_checked_with_their_key() {
    let errs = errors(&format!(
        "{LISTENER}[kv]\nbackend = \"memory\"\nmax_bytes = 0\nmax_value_bytes = 0\nmax_entries = 10\nplugin_max_entries = 11\n"
    ));
    let all = errs.join("\n");
    for expected in [
        "kv.max_bytes: must be greater than 0",
        "kv.max_value_bytes: must be greater than 0",
        "kv.plugin_max_entries: 11 exceeds kv.max_entries (10)",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    // Redis bounds its own memory: sizing the store there is a typo.
    let errs = errors(&format!(
        "{LISTENER}[kv]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1\"\nmax_bytes = 1\n"
    ));
    assert!(errs[0].contains("unknown field `max_bytes`"), "{}", errs[0]);
    let errs = errors(&format!(
        "{LISTENER}[kv]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1\"\nmax_value_bytes = 0\n"
    ));
    assert!(
        errs[0].contains("kv.max_value_bytes: must be greater than 0"),
        "{}",
        errs[0]
    );
}

#[test]
fn traces_are_off_by_default_and_bad_settings_are_named() {
    let config = Config::parse(Path::new("/srv/proxy.toml"), LISTENER).unwrap();
    assert!(config.traces.is_none());

    let config = Config::parse(
        Path::new("/srv/proxy.toml"),
        &format!("{LISTENER}[traces]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\n"),
    )
    .unwrap();
    let traces = config.traces.expect("traces on");
    assert_eq!(traces.service_name, "weir");
    assert_eq!(traces.sample, 1.0);
    assert_eq!(traces.max_queue_spans, 4096);

    let errs = errors(&format!(
        "{LISTENER}[traces]\nendpoint = \"https://collector:4318/v1/traces\"\n\
         sample = 1.5\nmax_batch_spans = 9000\n"
    ));
    for key in ["traces.endpoint", "traces.sample", "traces.max_batch_spans"] {
        assert!(errs.iter().any(|e| e.contains(key)), "{key}: {errs:?}");
    }
    assert!(
        errs.iter()
            .any(|e| e.contains("proxy.toml:4: traces.endpoint")),
        "{errs:?}"
    );
}

#[test]
fn a_via_name_that_via_cannot_carry_is_refused() {
    let errs = errors(&format!("{LISTENER}[proxy]\nvia_name = \"edge proxy\"\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("proxy.via_name: \"edge proxy\" is not a pseudonym"),
        "{}",
        errs[0]
    );
    let ok = format!("{LISTENER}[proxy]\nvia_name = \"edge-1.example:8443\"\n");
    let config = Config::parse(Path::new("/etc/weir/proxy.toml"), &ok).expect("accepted");
    assert_eq!(config.proxy.via.name(), "edge-1.example:8443");
}
