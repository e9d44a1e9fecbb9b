//! Every number in `proxy.toml` has a documented range, checked once at
//! load (and by `weir check`) with its key path. A timeout of
//! 18446744073709551615 ms, a pool of 0 or a memory cap above the runtime's
//! is an operator's typo; caught here, it never becomes a proxy that
//! refuses every request at run time. The table in README.md's config
//! section lists the same ranges.

use std::fmt::Display;
use std::ops::RangeInclusive;

use super::file::FileConfig;
use super::Validator;

/// Ten minutes: the longest wait any timeout may configure.
const MAX_TIMEOUT_MS: u64 = 600_000;
/// One hour: the longest interval (reload checks, ejection, grace).
const MAX_INTERVAL_MS: u64 = 3_600_000;

/// Names an operator gives plugins and upstreams: they end up in metric
/// labels, log fields and KV namespaces, so they stay plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid name: use 1 to 64 of a-z, 0-9, _ and -",
            name.escape_debug().to_string()
        ))
    }
}

impl Validator<'_> {
    fn range<T: PartialOrd + Display + Copy>(
        &mut self,
        key: impl Into<String>,
        value: T,
        range: RangeInclusive<T>,
    ) {
        if !range.contains(&value) {
            self.fail(
                None,
                key,
                format!(
                    "{value} is out of range: expected {} to {}",
                    range.start(),
                    range.end()
                ),
            );
        }
    }

    /// Check every numeric setting against its range, and every name.
    pub(super) fn check_ranges(&mut self, raw: &FileConfig) {
        let l = &raw.limits;
        self.range(
            "limits.max_header_bytes",
            l.max_header_bytes,
            1024..=1 << 20,
        );
        self.range("limits.max_headers", l.max_headers, 1..=10_000);
        self.range(
            "limits.max_request_body_bytes",
            l.max_request_body_bytes,
            0..=1 << 40,
        );
        self.range(
            "limits.max_buffered_body_bytes",
            l.max_buffered_body_bytes,
            0..=1 << 30,
        );
        self.range(
            "limits.header_read_timeout_ms",
            l.header_read_timeout_ms,
            1..=MAX_TIMEOUT_MS,
        );
        self.range(
            "limits.shutdown_grace_ms",
            l.shutdown_grace_ms,
            0..=MAX_INTERVAL_MS,
        );
        self.range("limits.max_connections", l.max_connections, 1..=1_000_000);
        self.range(
            "limits.h2_max_concurrent_streams",
            l.h2_max_concurrent_streams,
            1..=10_000,
        );
        self.range(
            "limits.h2_max_pending_reset_streams",
            l.h2_max_pending_reset_streams,
            0..=10_000,
        );
        self.range("limits.max_properties", l.max_properties, 1..=10_000);
        self.range(
            "limits.max_property_bytes",
            l.max_property_bytes,
            1..=16 << 20,
        );
        self.range(
            "limits.max_properties_bytes",
            l.max_properties_bytes,
            1..=64 << 20,
        );

        let r = &raw.runtime;
        self.range("runtime.max_instances", r.max_instances, 1..=100_000);
        self.range("runtime.max_memory_mb", r.max_memory_mb, 1..=4096);
        self.range(
            "runtime.reload_check_ms",
            r.reload_check_ms,
            0..=MAX_INTERVAL_MS,
        );

        for (name, up) in &raw.upstreams {
            if let Err(message) = check_name(name) {
                self.fail(None, format!("upstreams.{name}"), message);
            }
            let at = |key: &str| format!("upstreams.{name}.{key}");
            self.range(
                at("connect_timeout_ms"),
                up.connect_timeout_ms,
                1..=MAX_TIMEOUT_MS,
            );
            self.range(
                at("response_timeout_ms"),
                up.response_timeout_ms,
                1..=MAX_TIMEOUT_MS,
            );
            self.range(
                at("idle_timeout_ms"),
                up.idle_timeout_ms,
                1..=MAX_INTERVAL_MS,
            );
            self.range(
                at("max_idle_per_endpoint"),
                up.max_idle_per_endpoint,
                0..=10_000,
            );
            self.range(
                at("max_connections_per_endpoint"),
                up.max_connections_per_endpoint,
                1..=1_000_000,
            );
            self.range(at("max_fails"), up.max_fails, 0..=1_000);
            self.range(at("eject_ms"), up.eject_ms, 1..=MAX_INTERVAL_MS);
            self.range(at("retries"), up.retries, 0..=10);
            self.range(at("retry_backoff_ms"), up.retry_backoff_ms, 0..=60_000);
            self.range(at("retry_budget_percent"), up.retry_budget_percent, 0..=100);
            self.range(
                at("max_retry_after_ms"),
                up.max_retry_after_ms,
                0..=MAX_TIMEOUT_MS,
            );
            if let Some(hc) = &up.health_check {
                self.range(
                    at("health_check.interval_ms"),
                    hc.interval_ms,
                    10..=MAX_INTERVAL_MS,
                );
                self.range(
                    at("health_check.timeout_ms"),
                    hc.timeout_ms,
                    1..=MAX_TIMEOUT_MS,
                );
            }
        }

        for (name, plugin) in &raw.plugins {
            if let Err(message) = check_name(name) {
                self.fail(Some(plugin.file.span()), format!("plugins.{name}"), message);
            }
            let at = |key: &str| format!("plugins.{name}.{key}");
            self.range(at("timeout_ms"), plugin.timeout_ms, 1..=60_000);
            // Above runtime.max_memory_mb is reported by validate(), naming both.
            self.range(at("memory_mb"), plugin.memory_mb, 1..=4096);
            self.range(at("pool_size"), plugin.pool_size, 1..=10_000);
            self.range(at("max_uses"), plugin.max_uses, 1..=u64::from(u32::MAX));
            self.range(at("max_log_bytes"), plugin.max_log_bytes, 64..=1 << 20);
            self.range(
                at("log_lines_per_second"),
                plugin.log_lines_per_second,
                1..=100_000,
            );
            self.range(at("log_burst"), plugin.log_burst, 1..=1_000_000);
            self.range(at("max_concurrency"), plugin.max_concurrency, 1..=10_000);
            self.range(
                at("queue_timeout_ms"),
                plugin.queue_timeout_ms,
                0..=MAX_TIMEOUT_MS,
            );
        }

        if let Some(calls) = raw.runtime.max_long_running_calls {
            self.range("runtime.max_long_running_calls", calls, 1..=4096);
        }
        self.range(
            "runtime.max_plugin_cpu_percent",
            raw.runtime.max_plugin_cpu_percent,
            1..=100,
        );
        if let Some(cache) = &raw.cache {
            self.range("cache.capacity_bytes", cache.capacity_bytes, 1..=1 << 40);
            self.range("cache.max_entry_bytes", cache.max_entry_bytes, 1..=1 << 30);
            self.range(
                "cache.max_ttl_seconds",
                cache.max_ttl_seconds,
                1..=365 * 24 * 3600,
            );
            self.range(
                "cache.serve_stale_on_error_seconds",
                cache.serve_stale_on_error_seconds,
                0..=7 * 24 * 3600,
            );
        }
    }
}
