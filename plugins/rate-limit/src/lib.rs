//! `rate-limit` — the sample Weir plugin that limits request rates per key,
//! with state in the host's KV so every instance (and, with a Redis
//! backend, every Weir) shares one count.
//!
//! ```toml
//! [plugins.ratelimit]
//! file = "plugins/rate_limit.wasm"
//! [plugins.ratelimit.config]
//! on_store_error = "allow"      # or "deny" (503) when the KV fails; default allow, logged
//! headers_on_success = true     # RateLimit headers on allowed responses too
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
//! ```
//!
//! Every limit that applies must allow a request. A refused request is
//! answered `429` with `Retry-After` (seconds, rounded up), the RateLimit
//! fields and `{"error":"rate_limited","limit":"<name>"}`, naming the limit
//! that asks for the longest wait; it spends nothing from the other limits.
//!
//! # Why GCRA
//!
//! Each key is one stored number, its *theoretical arrival time* (see
//! [`gcra`]), expiring by TTL once the key is idle. That makes it:
//! - **cheap**: one `get` and one `compare-and-swap` of a few bytes per key
//!   and request, where a sliding log stores every request and sliding
//!   window counters need two keys;
//! - **smooth**: the quota comes back continuously (one request every
//!   `window / requests`), so there is no fixed-window edge where a client
//!   gets twice its quota across a boundary;
//! - **exact at N**: a fresh key gets exactly `requests` at once, never one
//!   more (the config refuses quotas too fine for nanoseconds to keep so);
//! - **portable**: it needs only an atomic compare-and-swap, which every
//!   store has (Redis with `WATCH`/`MULTI` or a short Lua script), so the
//!   in-memory KV of one Weir and a Redis shared by a fleet behave the same.
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
mod gcra;
mod limiter;

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
});

use exports::weir::plugin::guest::Guest;
use weir::plugin::types::{
    HeaderOp, PluginInfo, Request, RequestAction, RequestChanges, Response, ResponseChanges,
    ResponseHead, Value,
};
use weir::plugin::{clock, config as host_config, log, metrics};

use config::{Config, StoreErrorPolicy};
use limiter::{Outcome, Report};

/// The property carrying `[RateLimit-Policy, RateLimit]` from the request
/// phase to the response phase.
const HEADERS_PROPERTY: &str = "ratelimit.headers";

impl Config {
    /// The config of the running instance. `validate-config` accepted it at
    /// load time, so a failure here means the host broke its promise.
    fn current() -> Self {
        Self::parse(&host_config::get()).unwrap_or_else(|e| panic!("config changed under us: {e}"))
    }
}

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
                r.status.remaining,
                gcra::ceil_secs(r.status.reset_ns)
            )
        })
        .collect();
    members.join(", ")
}

fn proceed(properties: Vec<(String, Value)>) -> RequestAction {
    RequestAction::Continue(RequestChanges {
        method: None,
        path: None,
        query: None,
        headers: vec![],
        upstream: None,
        properties,
        cache: None,
        body: None,
    })
}

fn too_many_requests(limit: &str, retry_after_ns: u64, reports: &[Report]) -> RequestAction {
    RequestAction::Respond(Response {
        status: 429,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            (
                "retry-after".into(),
                gcra::ceil_secs(retry_after_ns).to_string(),
            ),
            ("ratelimit-policy".into(), policy_field(reports)),
            ("ratelimit".into(), ratelimit_field(reports)),
        ],
        // `limit` is a checked token: nothing in it needs escaping.
        body: format!(r#"{{"error":"rate_limited","limit":"{limit}"}}"#).into_bytes(),
    })
}

struct RateLimit;

impl Guest for RateLimit {
    fn validate_config(config: String) -> Result<PluginInfo, String> {
        let config = Config::parse(&config)?;
        Ok(PluginInfo {
            on_request: true,
            on_response: config.headers_on_success,
            request_body: false,
            response_body: false,
        })
    }

    fn on_request(req: Request) -> RequestAction {
        let config = Config::current();
        let checks = limiter::checks(&config, &req);
        if checks.is_empty() {
            return proceed(vec![]);
        }
        let now_ns = clock::now_ms().saturating_mul(1_000_000);
        match limiter::run(&checks, now_ns) {
            Ok(Outcome::Allowed(reports)) if config.headers_on_success => proceed(vec![(
                HEADERS_PROPERTY.into(),
                Value::Texts(vec![policy_field(&reports), ratelimit_field(&reports)]),
            )]),
            Ok(Outcome::Allowed(_)) => proceed(vec![]),
            Ok(Outcome::Limited {
                limit,
                retry_after_ns,
                reports,
            }) => {
                metrics::counter_add(
                    "ratelimit_limited_total",
                    &[("limit".into(), limit.clone())],
                    1,
                );
                log::log(
                    log::Level::Debug,
                    &format!("limit {limit} refused the request"),
                );
                too_many_requests(&limit, retry_after_ns, &reports)
            }
            Err(why) => {
                metrics::counter_add("ratelimit_store_errors_total", &[], 1);
                match config.on_store_error {
                    StoreErrorPolicy::Allow => {
                        log::log(
                            log::Level::Warn,
                            &format!("{why}; allowing the request unlimited"),
                        );
                        proceed(vec![])
                    }
                    StoreErrorPolicy::Deny => {
                        log::log(log::Level::Warn, &format!("{why}; refusing the request"));
                        RequestAction::Respond(Response {
                            status: 503,
                            headers: vec![("content-type".into(), "application/json".into())],
                            body: br#"{"error":"rate_limit_unavailable"}"#.to_vec(),
                        })
                    }
                }
            }
        }
    }

    fn on_response(req: Request, _resp: ResponseHead) -> ResponseChanges {
        let fields = req
            .properties
            .iter()
            .find_map(|(name, value)| match (name.as_str(), value) {
                (HEADERS_PROPERTY, Value::Texts(fields)) => Some(fields.as_slice()),
                _ => None,
            });
        let headers = match fields {
            Some([policy, ratelimit]) => vec![
                HeaderOp::Append(("ratelimit-policy".into(), policy.clone())),
                HeaderOp::Append(("ratelimit".into(), ratelimit.clone())),
            ],
            // Skipped by every limit, or refused (then this phase does not run).
            _ => vec![],
        };
        ResponseChanges {
            status: None,
            headers,
            body: None,
        }
    }
}

export!(RateLimit);
