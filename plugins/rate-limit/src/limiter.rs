//! One request against every configured limit: which bucket it falls in,
//! then one `kv.limit` call for all of them.
//!
//! The host decides every limit of the call at once, atomically (on
//! Redis, in one script on the server's clock): a request refused by one
//! limit spends nothing from the others, and concurrent requests, on this
//! Weir or any other sharing the store, never both get the last unit of a
//! quota. There is nothing to retry and nothing to lose a race against.

use weir_plugin::{kv, Request, Value};

use crate::config::{Config, KeySource, Limit, MissingKey, Quota};

/// Key values longer than this are stored as a hash, keeping KV keys small
/// whatever a client puts in a header.
const MAX_KEY_VALUE_LEN: usize = 200;

/// One limit that applies to this request, with the bucket it counts in.
pub struct Check<'a> {
    pub limit: &'a Limit,
    pub quota: Quota,
    kv_key: String,
}

/// The state of one policy, as the RateLimit header reports it.
pub struct Report {
    pub name: String,
    /// The quota enforced: the limit's, or its share of the fleet's when
    /// deciding locally.
    pub quota: Quota,
    /// Requests still allowed now.
    pub remaining: u64,
    /// Until the quota is full again; on a refused policy, until the next
    /// request fits.
    pub reset_ms: u64,
}

pub enum Outcome {
    Allowed(Vec<Report>),
    /// `limit` refused the request (the one that asks for the longest wait
    /// when several do).
    Limited {
        limit: String,
        retry_after_ms: u64,
        reports: Vec<Report>,
    },
}

/// Where the limits are decided.
#[derive(Clone, Copy)]
pub enum Store {
    /// The host's store: shared by the fleet with a Redis backend.
    Shared,
    /// This Weir's own limiter, each limit cut to its share of a fleet of
    /// this many (the `on_store_error = "local"` fallback).
    Local { fleet_size: u64 },
}

/// The limits that apply to `req`, each with its bucket and quota.
pub fn checks<'a>(config: &'a Config, req: &Request) -> Vec<Check<'a>> {
    config
        .limits
        .iter()
        .filter_map(|limit| {
            let (source, value) = match key_value(limit, req) {
                Some(value) => (&limit.key, value),
                None => match limit.on_missing_key {
                    MissingKey::Skip => return None,
                    MissingKey::ClientIp => (
                        &KeySource::ClientIp,
                        limit.ip_grouping.bucket(client_ip(req)),
                    ),
                },
            };
            // Overrides name values of the configured source, never of the
            // client-IP fallback.
            let quota = match source == &limit.key {
                true => limit.overrides.get(&value).copied(),
                false => None,
            }
            .unwrap_or(limit.quota);
            Some(Check {
                limit,
                quota,
                kv_key: format!("{}:{}:{}", limit.name, source.tag(), bounded(value)),
            })
        })
        .collect()
}

/// The client's address: `info` asks for the connection whenever a limit
/// may key on it.
fn client_ip(req: &Request) -> &str {
    req.client_ip().unwrap_or("")
}

/// The value the limit's key takes for this request, if it has one.
fn key_value(limit: &Limit, req: &Request) -> Option<String> {
    let value = match &limit.key {
        KeySource::ClientIp => Some(limit.ip_grouping.bucket(client_ip(req))),
        KeySource::Header(name) => req.header(name).map(|v| v.trim().to_owned()),
        KeySource::Property(name) => match req.property(name) {
            Some(Value::Text(text)) => Some(text.clone()),
            Some(Value::Integer(n)) => Some(n.to_string()),
            _ => None,
        },
        KeySource::Route => req.route.clone(),
        KeySource::PathSegments(n) => Some(path_segments(&req.path, *n)),
    };
    value.filter(|v| !v.is_empty())
}

/// The first `n` segments of a canonical path, taken as they are (the host
/// has already decoded and resolved it; deciding again here would be a
/// second view of the path). A trailing slash is no segment: `/api/` and
/// `/api` both start with the one segment `api`, and `/` has none.
fn path_segments(path: &str, n: usize) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).take(n).collect();
    format!("/{}", segments.join("/"))
}

/// Long values become `#` + a 64-bit FNV-1a hash. Only long values can
/// collide with each other, and they come from the client anyway.
fn bounded(value: String) -> String {
    if value.len() <= MAX_KEY_VALUE_LEN {
        return value;
    }
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("#{hash:016x}")
}

fn describe(err: kv::KvError) -> String {
    match err {
        kv::KvError::Unavailable(why) => format!("kv unavailable: {why}"),
        kv::KvError::NotAnInteger => "kv: not an integer".into(),
        kv::KvError::TooLarge => "kv: too large (key, or the limiter's bucket quota)".into(),
        kv::KvError::Invalid(why) => format!("kv: invalid limit: {why}"),
    }
}

/// Decide `checks` on `store`, spending one request from each if all
/// allow. `Err` when the store failed.
pub fn run(checks: &[Check], store: Store) -> Result<Outcome, String> {
    let quotas: Vec<Quota> = checks
        .iter()
        .map(|check| match store {
            Store::Shared => check.quota,
            Store::Local { fleet_size } => Quota {
                requests: (check.quota.requests / fleet_size).max(1),
                ..check.quota
            },
        })
        .collect();
    let limits: Vec<kv::LimitCheck> = checks
        .iter()
        .zip(&quotas)
        .map(|(check, quota)| kv::LimitCheck {
            key: check.kv_key.clone(),
            rate: quota.requests,
            period_ms: quota.window_secs * 1000,
            // A fresh key may spend its whole quota at once.
            burst: quota.requests,
            cost: 1,
        })
        .collect();
    let decisions = match store {
        Store::Shared => kv::limit(&limits),
        Store::Local { .. } => kv::limit_local(&limits),
    }
    .map_err(describe)?;
    if decisions.len() != checks.len() {
        return Err(format!(
            "kv: {} decisions for {} limits",
            decisions.len(),
            checks.len()
        ));
    }
    let reports: Vec<Report> = checks
        .iter()
        .zip(&quotas)
        .zip(&decisions)
        .map(|((check, quota), decision)| Report {
            name: check.limit.name.clone(),
            quota: *quota,
            remaining: decision.remaining,
            reset_ms: decision.reset_ms,
        })
        .collect();
    let refusal = decisions
        .iter()
        .zip(&reports)
        .filter(|(decision, _)| !decision.allowed)
        .max_by_key(|(decision, _)| decision.reset_ms);
    Ok(match refusal {
        None => Outcome::Allowed(reports),
        Some((decision, report)) => Outcome::Limited {
            limit: report.name.clone(),
            retry_after_ms: decision.reset_ms,
            reports,
        },
    })
}

#[cfg(test)]
mod tests {
    use weir_plugin::testing::{self, request};

    use super::*;

    fn config(json: &str) -> Config {
        testing::parse(json).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The KV key and quota of the one limit in `config` for `req`.
    fn bucket(config: &Config, req: &Request) -> Option<(String, u64)> {
        let checks = checks(config, req);
        checks
            .first()
            .map(|check| (check.kv_key.clone(), check.quota.requests))
    }

    #[test]
    fn path_keys_are_the_first_segments_as_given() {
        let config =
            config(r#"{"limits":[{"name":"p","key":"path:2","requests":1,"window":"1s"}]}"#);
        let key = |path: &str| bucket(&config, &request("GET", path).build()).unwrap().0;
        assert_eq!(key("/api/v1/users"), "p:path:/api/v1");
        assert_eq!(key("/api/v1"), "p:path:/api/v1");
        assert_eq!(key("/api/v1/"), "p:path:/api/v1");
        assert_eq!(key("/api/"), "p:path:/api");
        assert_eq!(key("/"), "p:path:/");
        // No decoding or case folding of its own: the host owns the path.
        assert_eq!(key("/API/v1/x"), "p:path:/API/v1");
        assert_eq!(key("/a%2Fb/c/d"), "p:path:/a%2Fb/c");
    }

    #[test]
    fn client_ip_keys_group_ipv6_by_slash_64() {
        let config =
            config(r#"{"limits":[{"name":"ip","key":"client-ip","requests":1,"window":"1s"}]}"#);
        let key = |ip: &str| {
            bucket(&config, &request("GET", "/").client_ip(ip).build())
                .unwrap()
                .0
        };
        assert_eq!(key("2001:db8:1:2::1"), "ip:ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:dead:beef::7"), "ip:ip:2001:db8:1:2::/64");
        assert_eq!(key("203.0.113.7"), "ip:ip:203.0.113.7");
    }

    #[test]
    fn prefix_lengths_come_from_the_plugin_or_the_limit() {
        let config = config(
            r#"{"ipv6_prefix": 48, "ipv4_prefix": 24, "limits":[
                {"name":"a","key":"client-ip","requests":1,"window":"1s"},
                {"name":"b","key":"client-ip","requests":1,"window":"1s","ipv6_prefix":128,"ipv4_prefix":32},
                {"name":"c","key":"header:x-user","requests":1,"window":"1s",
                 "on_missing_key":"client-ip","ipv6_prefix":56}
            ]}"#,
        );
        let keys = |ip: &str| -> Vec<String> {
            checks(&config, &request("GET", "/").client_ip(ip).build())
                .into_iter()
                .map(|check| check.kv_key)
                .collect()
        };
        assert_eq!(
            keys("2001:db8:1:2::1"),
            [
                "a:ip:2001:db8:1::/48",
                "b:ip:2001:db8:1:2::1",
                "c:ip:2001:db8:1::/56"
            ]
        );
        assert_eq!(
            keys("203.0.113.7"),
            [
                "a:ip:203.0.113.0/24",
                "b:ip:203.0.113.7",
                "c:ip:203.0.113.0/24"
            ]
        );
    }

    #[test]
    fn client_ip_overrides_name_the_bucket() {
        let config = config(
            r#"{"limits":[{"name":"ip","key":"client-ip","requests":1,"window":"1s",
                "overrides":{"2001:db8:1:2::9":5,"198.51.100.0/32":7}}]}"#,
        );
        let quota = |ip: &str| {
            bucket(&config, &request("GET", "/").client_ip(ip).build())
                .unwrap()
                .1
        };
        assert_eq!(quota("2001:db8:1:2:aaaa::1"), 5);
        assert_eq!(quota("2001:db8:1:3::1"), 1);
        assert_eq!(quota("198.51.100.0"), 7);
    }

    #[test]
    fn overrides_follow_trusted_values_only() {
        let config = config(
            r#"{"limits":[
                {"name":"t","key":"property:tenant","requests":1,"window":"1s","overrides":{"gold":9}},
                {"name":"h","key":"header:x-tenant","requests":1,"window":"1s","overrides":{"gold":9},
                 "trusted_header":true}
            ]}"#,
        );
        let req = request("GET", "/")
            .property("tenant", "gold")
            .header("x-tenant", "gold")
            .build();
        let quotas: Vec<u64> = checks(&config, &req)
            .iter()
            .map(|c| c.quota.requests)
            .collect();
        assert_eq!(quotas, [9, 9]);
        // The client-ip fallback never picks an override.
        let config = config_with_fallback();
        let req = request("GET", "/").client_ip("10.0.0.1").build();
        assert_eq!(bucket(&config, &req), Some(("f:ip:10.0.0.1".into(), 1)));
    }

    fn config_with_fallback() -> Config {
        config(
            r#"{"limits":[{"name":"f","key":"property:tenant","requests":1,"window":"1s",
                "on_missing_key":"client-ip","overrides":{"10.0.0.1":9}}]}"#,
        )
    }
}
