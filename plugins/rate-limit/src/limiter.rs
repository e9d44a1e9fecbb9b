//! One request against every configured limit: which bucket it falls in,
//! then GCRA on the host KV with `get` + `compare-and-swap`.
//!
//! All limits are *read* first and decided together, so a request refused
//! by one limit spends nothing from the others. Only an allowed request
//! writes, each key with a compare-and-swap from the value it read; a lost
//! swap (another request got there first) re-reads and decides again, a
//! bounded number of times.

use weir_plugin::{kv, Request, Value};

use crate::config::{Config, KeySource, Limit, MissingKey, Quota};
use crate::gcra::{self, Decision, Status};

/// Lost swaps tolerated per key before the store counts as failing: under
/// that much contention on one key, waiting longer would only add latency.
const MAX_CAS_ATTEMPTS: usize = 8;

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
    pub quota: Quota,
    pub status: Status,
}

pub enum Outcome {
    Allowed(Vec<Report>),
    /// `limit` refused the request (the one that asks for the longest wait
    /// when several do).
    Limited {
        limit: String,
        retry_after_ns: u64,
        reports: Vec<Report>,
    },
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
                        limit.ip_grouping.bucket(req.client_ip()),
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

/// The value the limit's key takes for this request, if it has one.
fn key_value(limit: &Limit, req: &Request) -> Option<String> {
    let value = match &limit.key {
        KeySource::ClientIp => Some(limit.ip_grouping.bucket(req.client_ip())),
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

/// A stored TAT. Anything unreadable counts as a fresh key; the swap from
/// the bytes actually read then replaces it.
fn parse_tat(stored: &Option<Vec<u8>>) -> Option<u64> {
    stored
        .as_deref()
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
}

fn describe(err: kv::KvError) -> String {
    match err {
        kv::KvError::Unavailable(why) => format!("kv unavailable: {why}"),
        kv::KvError::NotAnInteger => "kv: not an integer".into(),
        kv::KvError::TooLarge => "kv: too large (key, value, or the plugin's quota)".into(),
    }
}

fn report(check: &Check, status: Status) -> Report {
    Report {
        name: check.limit.name.clone(),
        quota: check.quota,
        status,
    }
}

/// Decide `checks` at `now_ns` and spend one request from each if all
/// allow. `Err` when the KV failed or contention outlasted the retries.
pub fn run(checks: &[Check], now_ns: u64) -> Result<Outcome, String> {
    let mut stored = Vec::with_capacity(checks.len());
    for check in checks {
        stored.push(kv::get(&check.kv_key).map_err(describe)?);
    }
    let decisions: Vec<Decision> = checks
        .iter()
        .zip(&stored)
        .map(|(check, stored)| gcra::decide(parse_tat(stored), now_ns, check.quota))
        .collect();

    let refusal = decisions
        .iter()
        .enumerate()
        .filter_map(|(i, decision)| match decision {
            Decision::Deny { retry_after_ns, .. } => Some((i, *retry_after_ns)),
            Decision::Allow { .. } => None,
        })
        .max_by_key(|(_, retry_after_ns)| *retry_after_ns);
    if let Some((refused, retry_after_ns)) = refusal {
        let reports = checks
            .iter()
            .zip(&stored)
            .zip(&decisions)
            .map(|((check, stored), decision)| match decision {
                Decision::Deny { status, .. } => report(check, *status),
                Decision::Allow { .. } => {
                    report(check, gcra::peek(parse_tat(stored), now_ns, check.quota))
                }
            })
            .collect();
        return Ok(Outcome::Limited {
            limit: checks[refused].limit.name.clone(),
            retry_after_ns,
            reports,
        });
    }

    let mut reports = Vec::with_capacity(checks.len());
    for (i, check) in checks.iter().enumerate() {
        match spend(check, stored[i].take(), decisions[i], now_ns)? {
            Decision::Allow { status, .. } => reports.push(report(check, status)),
            Decision::Deny {
                retry_after_ns,
                status,
            } => {
                // Lost a race for the last request of this key: refused
                // after all. Limits already spent stay spent.
                reports.push(report(check, status));
                for (check, stored) in checks[i + 1..].iter().zip(&stored[i + 1..]) {
                    let status = gcra::peek(parse_tat(stored), now_ns, check.quota);
                    reports.push(report(check, status));
                }
                return Ok(Outcome::Limited {
                    limit: check.limit.name.clone(),
                    retry_after_ns,
                    reports,
                });
            }
        }
    }
    Ok(Outcome::Allowed(reports))
}

/// Store the decision with a compare-and-swap from `stored`, re-reading and
/// re-deciding when another request changed the key in between. Returns
/// the decision that held.
fn spend(
    check: &Check,
    mut stored: Option<Vec<u8>>,
    mut decision: Decision,
    now_ns: u64,
) -> Result<Decision, String> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Decision::Allow { new_tat, .. } = decision else {
            return Ok(decision);
        };
        // The key expires when its schedule has caught up with the clock:
        // an idle key costs no storage.
        let ttl_ms = (new_tat - now_ns).div_ceil(1_000_000);
        let swapped = kv::compare_and_swap(
            &check.kv_key,
            stored.as_deref(),
            new_tat.to_string().as_bytes(),
            Some(ttl_ms),
        )
        .map_err(describe)?;
        if swapped {
            return Ok(decision);
        }
        stored = kv::get(&check.kv_key).map_err(describe)?;
        decision = gcra::decide(parse_tat(&stored), now_ns, check.quota);
    }
    Err(format!(
        "limit {}: gave up after {MAX_CAS_ATTEMPTS} contended compare-and-swap attempts",
        check.limit.name
    ))
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
