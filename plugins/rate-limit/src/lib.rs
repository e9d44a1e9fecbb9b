//! `rate-limit` — the sample Weir plugin that limits request rates per key,
//! with state in the host's KV so every instance (and, with a Redis
//! backend, every Weir) shares one count.
//!
//! ```toml
//! [plugins.ratelimit]
//! file = "plugins/rate_limit.wasm"
//! [plugins.ratelimit.config]
//! on_store_error = "allow"      # "deny" (503), or "local" (see below); default allow, logged
//! fleet_size = 3                # with "local": this Weir's share is requests / fleet_size
//! headers_on_success = true     # RateLimit headers on allowed responses too
//! ipv6_prefix = 64              # client-ip keys: IPv6 clients by network (1..=128, default 64)
//! ipv4_prefix = 32              # and IPv4 clients (1..=32, default 32: the whole address)
//!
//! [[plugins.ratelimit.config.limits]]
//! name = "burst"                # in the RateLimit headers and the 429 body
//! key = "property:tenant"       # client-ip | header:NAME | property:NAME | route | path:N
//! requests = 10
//! window = "1s"                 # whole seconds: s, m, h or d
//! on_missing_key = "client-ip"  # or "skip" (default): the limit does not apply
//! overrides = { gold = 100 }    # per key value: tenant "gold" gets 100/s
//!
//! [[plugins.ratelimit.config.limits]]
//! name = "hourly"
//! key = "client-ip"
//! requests = 1000
//! window = "1h"
//! ipv6_prefix = 48              # per limit, over the plugin's value
//!
//! [[plugins.ratelimit.config.limits]]
//! name = "partner"
//! key = "header:x-partner"      # set by an earlier plugin, which drops the client's
//! trusted_header = true         # so overrides may follow it (refused otherwise)
//! requests = 100
//! window = "1m"
//! overrides = { big = 1000 }
//! ```
//!
//! # Keys
//!
//! - `client-ip` keys IPv4 clients by address and IPv6 clients by their
//!   /64, since one IPv6 host usually holds a whole /64 and could otherwise
//!   spread over 2^64 buckets (`ipv4_prefix`, `ipv6_prefix` change that).
//!   `overrides` name addresses or networks of the limit's prefix length
//!   (`"2001:db8:1:2::/64"`; an address stands for its network). The same
//!   grouping applies to the `on_missing_key = "client-ip"` fallback.
//! - `path:N` takes the first N segments of the path as the host hands it
//!   over (canonical already: the plugin neither decodes nor folds case).
//! - An override hands a quota to whoever shows its key value, so that
//!   value must not be the client's to choose: overrides on a `header:NAME`
//!   key are refused unless the limit says `trusted_header = true` (an
//!   earlier plugin sets that header). Properties are set by plugins (such
//!   as `tenant` by auth), routes and client addresses by the host.
//!
//! Every limit that applies must allow a request. A refused request is
//! answered `429` with `Retry-After` (seconds, rounded up), the RateLimit
//! fields and `{"error":"rate_limited","limit":"<name>"}`, naming the limit
//! that asks for the longest wait; it spends nothing from the other limits.
//!
//! # Where the limits are decided
//!
//! In the host, by `kv.limit` (contract 0.2.0): one call per request for
//! all its limits, decided atomically with GCRA (one stored number per
//! key, the quota coming back continuously, exactly `requests` for a fresh
//! key, idle keys expiring). With `[kv] backend = "redis"` that call is one
//! round trip and one script on the Redis server's clock, so a fleet of
//! Weirs shares each limit exactly, however many requests race for its
//! last unit. Earlier versions of this plugin ran GCRA here on `get` and
//! `compare-and-swap`, which cost up to 8 round trips under contention and
//! then let the request through.
//!
//! # When the store fails
//!
//! `on_store_error` says what happens when the store cannot answer (Redis
//! down, say), and every such request is counted in
//! `weir_custom_ratelimit_store_errors_total{policy}` (the host counts the
//! failed calls too, in `weir_plugin_kv_errors_total`):
//! - `"allow"` (default): let the request through, logged;
//! - `"deny"`: answer 503;
//! - `"local"`: decide on this Weir's own limiter, each limit cut to its
//!   share of the fleet, `requests / fleet_size` (`fleet_size` is then
//!   required). If even that fails, 503. Each request tries the shared
//!   store first (the host fails fast for `[kv] retry_ms` after finding
//!   Redis unreachable), so sharing resumes by itself when Redis is back.
//!
//! # Headers
//!
//! The fields follow draft-ietf-httpapi-ratelimit-headers-10 (Structured
//! Field lists, one member per policy, named by the limit):
//!
//! ```text
//! RateLimit-Policy: "burst";q=10;w=1, "hourly";q=1000;w=3600
//! RateLimit: "burst";r=0;t=1, "hourly";r=990;t=36
//! ```
//!
//! `q` is the quota and `w` the window in seconds; `r` is what remains and
//! `t` the seconds until the quota is full again (on a refused policy:
//! until the next request fits, the same as `Retry-After`). With
//! `headers_on_success` the request phase computes the fields and hands
//! them to the response phase in the `ratelimit.headers` property, which
//! appends them to the upstream's response.

mod config;
mod ip;
mod limiter;

use serde_json::json;
use weir_plugin::{log, metrics, Action, Info, Plugin, Request, ResponseChanges, ResponseHead};

use config::{Config, KeySource, MissingKey, StoreErrorPolicy};
use limiter::{Outcome, Report, Store};

/// The property carrying `[RateLimit-Policy, RateLimit]` from the request
/// phase to the response phase.
const HEADERS_PROPERTY: &str = "ratelimit.headers";

/// `RateLimit-Policy`: each policy's quota and window.
fn policy_field(reports: &[Report]) -> String {
    let members: Vec<String> = reports
        .iter()
        .map(|r| {
            format!(
                "\"{}\";q={};w={}",
                r.name, r.quota.requests, r.quota.window_secs
            )
        })
        .collect();
    members.join(", ")
}

/// `RateLimit`: each policy's remaining quota and reset time.
fn ratelimit_field(reports: &[Report]) -> String {
    let members: Vec<String> = reports
        .iter()
        .map(|r| {
            format!(
                "\"{}\";r={};t={}",
                r.name,
                r.remaining,
                ceil_secs(r.reset_ms)
            )
        })
        .collect();
    members.join(", ")
}

/// Whole seconds, rounded up: a client told to wait 0 s would retry at once.
fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

fn too_many_requests(limit: &str, retry_after_ms: u64, reports: &[Report]) -> Action {
    Action::respond(429)
        .header("retry-after", ceil_secs(retry_after_ms).to_string())
        .header("ratelimit-policy", policy_field(reports))
        .header("ratelimit", ratelimit_field(reports))
        .json(&json!({ "error": "rate_limited", "limit": limit }))
        .into()
}

struct RateLimit;

impl Plugin for RateLimit {
    type Config = Config;

    /// Given only what the limits key on: their headers, the connection
    /// when a limit may key on the client's address; properties always
    /// (keys, and the response phase's own `RateLimit` fields).
    fn info(config: &Config) -> Info {
        let headers = config.limits.iter().filter_map(|limit| match &limit.key {
            KeySource::Header(name) => Some(name.clone()),
            _ => None,
        });
        let client_ip = config.limits.iter().any(|limit| {
            limit.key == KeySource::ClientIp || limit.on_missing_key == MissingKey::ClientIp
        });
        Info::request_phase()
            .with_response_phase(config.headers_on_success)
            .request_headers(headers)
            .response_headers(std::iter::empty::<String>())
            .connection(client_ip)
    }

    fn on_request(config: &Config, req: &Request) -> Action {
        let checks = limiter::checks(config, req);
        if checks.is_empty() {
            return Action::next().into();
        }
        let outcome = match limiter::run(&checks, Store::Shared) {
            Ok(outcome) => outcome,
            Err(why) => match store_error(config, &why) {
                Some(fallback) => match limiter::run(&checks, fallback) {
                    Ok(outcome) => outcome,
                    Err(local) => {
                        log::warn(format!(
                            "{why}; the local limiter failed too ({local}); refusing"
                        ));
                        return unavailable();
                    }
                },
                None if config.on_store_error == StoreErrorPolicy::Deny => return unavailable(),
                None => return Action::next().into(),
            },
        };
        match outcome {
            Outcome::Allowed(reports) if config.headers_on_success => {
                let fields = vec![policy_field(&reports), ratelimit_field(&reports)];
                Action::next().set_property(HEADERS_PROPERTY, fields).into()
            }
            Outcome::Allowed(_) => Action::next().into(),
            Outcome::Limited {
                limit,
                retry_after_ms,
                reports,
            } => {
                metrics::counter_add(
                    "ratelimit_limited_total",
                    &[("limit".into(), limit.clone())],
                    1,
                );
                log::debug(format!("limit {limit} refused the request"));
                too_many_requests(&limit, retry_after_ms, &reports)
            }
        }
    }

    fn on_response(_: &Config, resp: &ResponseHead) -> ResponseChanges {
        match resp.property_texts(HEADERS_PROPERTY) {
            Some([policy, ratelimit]) => ResponseChanges::new()
                .append_header("ratelimit-policy", policy)
                .append_header("ratelimit", ratelimit),
            // Skipped by every limit, or refused (then this phase does not run).
            _ => ResponseChanges::new(),
        }
    }
}

/// Count and log a store failure; the fallback store, when the policy has
/// one.
fn store_error(config: &Config, why: &str) -> Option<Store> {
    let policy = config.on_store_error;
    metrics::counter_add(
        "ratelimit_store_errors_total",
        &[("policy".into(), policy.as_str().into())],
        1,
    );
    match policy {
        StoreErrorPolicy::Allow => {
            log::warn(format!("{why}; allowing the request unlimited"));
            None
        }
        StoreErrorPolicy::Deny => {
            log::warn(format!("{why}; refusing the request"));
            None
        }
        StoreErrorPolicy::Local => {
            log::warn(format!("{why}; deciding on this instance's share"));
            Some(Store::Local {
                fleet_size: config.fleet_size,
            })
        }
    }
}

fn unavailable() -> Action {
    Action::respond(503)
        .json(&json!({ "error": "rate_limit_unavailable" }))
        .into()
}

weir_plugin::export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{self, request};
    use weir_plugin::{Action, Plugin, Request};

    use super::RateLimit;

    const CONFIG: &str = r#"{
        "headers_on_success": true,
        "limits": [{"name": "burst", "key": "client-ip", "requests": 2, "window": "10s"}]
    }"#;

    fn status(config: &super::Config, req: &Request) -> u16 {
        match RateLimit::on_request(config, req) {
            Action::Continue(_) => 200,
            Action::Respond(response) => response.status,
        }
    }

    #[test]
    fn keeps_the_contract() {
        testing::clear_kv();
        let requests = [request("GET", "/").build(), request("GET", "/").build()];
        testing::check_conformance::<RateLimit>(CONFIG, &requests);
    }

    #[test]
    fn refuses_past_the_quota_until_it_refills() {
        testing::clear_kv();
        testing::set_now_ms(Some(1_000_000));
        let config = testing::config::<RateLimit>(CONFIG);
        let alice = request("GET", "/").client_ip("203.0.113.1").build();
        let bob = request("GET", "/").client_ip("203.0.113.2").build();
        assert_eq!(status(&config, &alice), 200);
        assert_eq!(status(&config, &alice), 200);
        assert_eq!(status(&config, &alice), 429);
        assert_eq!(status(&config, &bob), 200, "keys are separate");
        // One request comes back every window / requests = 5 s.
        testing::set_now_ms(Some(1_005_000));
        assert_eq!(status(&config, &alice), 200);
        assert_eq!(status(&config, &alice), 429);
        testing::set_now_ms(None);
    }

    #[test]
    fn hands_the_headers_to_the_response_phase() {
        testing::clear_kv();
        let config = testing::config::<RateLimit>(CONFIG);
        let Action::Continue(changes) =
            RateLimit::on_request(&config, &request("GET", "/").build())
        else {
            panic!("the first request is allowed");
        };
        let info = RateLimit::info(&config);
        let req = request("GET", "/").build();
        let head = testing::response_as_seen(&info, &req, 200, changes.properties);
        let changes = RateLimit::on_response(&config, &head);
        assert_eq!(changes.headers.len(), 2);
    }
}
