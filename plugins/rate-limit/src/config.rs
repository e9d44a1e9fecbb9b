//! The plugin's config: the JSON Weir hands over (`Raw*`, as written in
//! `proxy.toml`) checked once into [`Config`], whose every value is usable
//! as is at request time. Errors name the limit they are about.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ip::{IpGrouping, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX};

/// Longest limit name; names end up in headers, KV keys and JSON bodies.
const MAX_NAME_LEN: usize = 64;
/// Longest window: the host's `kv.limit` takes periods up to 100 days.
const MAX_WINDOW_SECS: u64 = 100 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    limits: Vec<RawLimit>,
    #[serde(default)]
    on_store_error: StoreErrorPolicy,
    /// Instances sharing the store, for `on_store_error = "local"`.
    fleet_size: Option<u64>,
    #[serde(default)]
    headers_on_success: bool,
    /// How `client-ip` keys group addresses, unless a limit says otherwise.
    #[serde(default = "default_ipv4_prefix")]
    ipv4_prefix: u8,
    #[serde(default = "default_ipv6_prefix")]
    ipv6_prefix: u8,
}

fn default_ipv4_prefix() -> u8 {
    DEFAULT_IPV4_PREFIX
}
fn default_ipv6_prefix() -> u8 {
    DEFAULT_IPV6_PREFIX
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    name: String,
    key: String,
    requests: u64,
    window: String,
    #[serde(default)]
    on_missing_key: MissingKey,
    #[serde(default)]
    overrides: BTreeMap<String, u64>,
    /// For `header:NAME` keys: an earlier plugin sets this header (and
    /// drops what the client sent), so its value may choose an override.
    #[serde(default)]
    trusted_header: bool,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
}

/// What to do when the KV cannot answer.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum StoreErrorPolicy {
    /// Let the request through (logged): an outage of the limiter must not
    /// become an outage of the site.
    #[default]
    Allow,
    /// Answer 503: for limits that protect something fragile.
    Deny,
    /// Decide on this instance's own limiter, at `requests / fleet_size`.
    Local,
}

impl StoreErrorPolicy {
    /// The `policy` label of `ratelimit_store_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorPolicy::Allow => "allow",
            StoreErrorPolicy::Deny => "deny",
            StoreErrorPolicy::Local => "local",
        }
    }
}

/// What to do when a request has no value for the limit's key.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum MissingKey {
    /// The limit does not apply to this request.
    #[default]
    Skip,
    /// Limit the request by its client IP instead.
    ClientIp,
}

/// Where a limit takes the value it counts per.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `client-ip`: `connection.client-ip`.
    ClientIp,
    /// `header:NAME`: the first value of a request header.
    Header(String),
    /// `property:NAME`: a text (or integer) property set by an earlier plugin.
    Property(String),
    /// `route`: the name of the matched route.
    Route,
    /// `path:N`: the first N segments of the canonical path, as the host
    /// hands it over (`path:1` keys `/api/v1/users` as `/api`).
    PathSegments(usize),
}

impl KeySource {
    fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected client-ip, header:NAME, property:NAME, route or path:N";
        match text.split_once(':') {
            None if text == "client-ip" => Ok(Self::ClientIp),
            None if text == "route" => Ok(Self::Route),
            Some(("header", name)) if is_token(name) => Ok(Self::Header(name.to_ascii_lowercase())),
            Some(("property", name)) if !name.is_empty() => Ok(Self::Property(name.to_owned())),
            Some(("path", n)) => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Self::PathSegments(n)),
                _ => Err(format!(
                    "key {text:?}: path:N needs a segment count of at least 1"
                )),
            },
            _ => Err(format!("unknown key source {text:?} ({expected})")),
        }
    }

    /// A short tag keeping the KV keys of different sources apart, so a
    /// tenant named "10.0.0.1" never shares a bucket with that IP.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::ClientIp => "ip",
            Self::Header(_) => "h",
            Self::Property(_) => "p",
            Self::Route => "r",
            Self::PathSegments(_) => "path",
        }
    }
}

/// A quota: `requests` per `window_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub window_secs: u64,
}

impl Quota {
    /// Refuses what the host's limiter cannot space: more than one request
    /// per nanosecond.
    fn check(self) -> Result<Self, String> {
        if self.requests == 0 {
            return Err("requests must be at least 1".into());
        }
        if self.requests > self.window_secs * 1_000_000_000 {
            return Err(format!(
                "{} requests per {}s is too fine-grained (more than one per nanosecond)",
                self.requests, self.window_secs
            ));
        }
        Ok(self)
    }
}

/// One checked limit.
#[derive(Debug)]
pub struct Limit {
    pub name: String,
    pub key: KeySource,
    pub quota: Quota,
    pub on_missing_key: MissingKey,
    /// Quotas for particular key values (e.g. tenant "gold"); for
    /// `client-ip` keys, by bucket (see [`IpGrouping::bucket`]).
    pub overrides: BTreeMap<String, Quota>,
    /// How client addresses are grouped, for `client-ip` keys and the
    /// `client-ip` fallback.
    pub ip_grouping: IpGrouping,
}

/// The checked config, read through [`RawConfig`].
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub limits: Vec<Limit>,
    pub on_store_error: StoreErrorPolicy,
    /// Instances sharing the store (1 unless `on_store_error = "local"`).
    pub fleet_size: u64,
    pub headers_on_success: bool,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        if raw.limits.is_empty() {
            return Err("limits: at least one limit is required".into());
        }
        let grouping = IpGrouping::new(raw.ipv4_prefix, raw.ipv6_prefix)?;
        let mut limits: Vec<Limit> = Vec::with_capacity(raw.limits.len());
        for (i, limit) in raw.limits.into_iter().enumerate() {
            let at = format!("limits[{i}]");
            if !is_token(&limit.name) || limit.name.len() > MAX_NAME_LEN {
                return Err(format!(
                    "{at}.name {:?} must be 1-{MAX_NAME_LEN} letters, digits, '-', '_' or '.'",
                    limit.name
                ));
            }
            if limits.iter().any(|l| l.name == limit.name) {
                return Err(format!("{at}.name {:?} is used twice", limit.name));
            }
            let at = format!("{at} ({:?})", limit.name);
            let key = KeySource::parse(&limit.key).map_err(|e| format!("{at}: {e}"))?;
            check_override_trust(&limit, &key).map_err(|e| format!("{at}: {e}"))?;
            let uses_ip =
                key == KeySource::ClientIp || limit.on_missing_key == MissingKey::ClientIp;
            if !uses_ip && (limit.ipv4_prefix.is_some() || limit.ipv6_prefix.is_some()) {
                return Err(format!(
                    "{at}: ipv4_prefix and ipv6_prefix apply only when key or on_missing_key is \"client-ip\""
                ));
            }
            let ip_grouping = IpGrouping::new(
                limit.ipv4_prefix.unwrap_or(grouping.ipv4_prefix),
                limit.ipv6_prefix.unwrap_or(grouping.ipv6_prefix),
            )
            .map_err(|e| format!("{at}: {e}"))?;
            let window_secs = parse_window(&limit.window).map_err(|e| format!("{at}: {e}"))?;
            let quota = Quota {
                requests: limit.requests,
                window_secs,
            }
            .check()
            .map_err(|e| format!("{at}: {e}"))?;
            let mut overrides = BTreeMap::new();
            for (value, requests) in limit.overrides {
                if value.is_empty() {
                    return Err(format!("{at}: overrides: a key value may not be empty"));
                }
                let quota = Quota {
                    requests,
                    window_secs,
                }
                .check()
                .map_err(|e| format!("{at}: overrides.{value}: {e}"))?;
                let bucket = match key {
                    KeySource::ClientIp => ip_grouping
                        .override_bucket(&value)
                        .map_err(|e| format!("{at}: overrides: {e}"))?,
                    _ => value,
                };
                if overrides.insert(bucket.clone(), quota).is_some() {
                    return Err(format!(
                        "{at}: overrides: two entries name the bucket {bucket:?}"
                    ));
                }
            }
            limits.push(Limit {
                name: limit.name,
                key,
                quota,
                on_missing_key: limit.on_missing_key,
                overrides,
                ip_grouping,
            });
        }
        let fleet_size = match (raw.on_store_error, raw.fleet_size) {
            (StoreErrorPolicy::Local, Some(n)) if n >= 1 => n,
            (StoreErrorPolicy::Local, _) => {
                return Err(
                    "on_store_error = \"local\" needs fleet_size, the number of instances \
                     sharing the store (at least 1): each decides at requests / fleet_size"
                        .into(),
                )
            }
            (_, Some(_)) => {
                return Err("fleet_size applies only with on_store_error = \"local\"".into())
            }
            (_, None) => 1,
        };
        Ok(Config {
            limits,
            on_store_error: raw.on_store_error,
            fleet_size,
            headers_on_success: raw.headers_on_success,
        })
    }
}

/// An override is a bigger (or smaller) quota chosen by the key's value, so
/// that value must not be the client's to choose. Headers are, unless the
/// config vouches that an earlier plugin sets this one; properties are set
/// by plugins, routes and client addresses by the host, and a path only
/// picks the resource the request is for.
fn check_override_trust(limit: &RawLimit, key: &KeySource) -> Result<(), String> {
    match key {
        KeySource::Header(name) if !limit.overrides.is_empty() && !limit.trusted_header => {
            Err(format!(
                "overrides keyed on \"header:{name}\" would let any client pick its own quota \
                 by sending {name}: <value>; key the limit on a property set by a trusted plugin \
                 (e.g. \"property:tenant\" from auth), or set trusted_header = true if an earlier \
                 plugin in the chain sets {name} and drops the value the client sent"
            ))
        }
        KeySource::Header(_) => Ok(()),
        _ if limit.trusted_header => Err("trusted_header applies only to header:NAME keys".into()),
        _ => Ok(()),
    }
}

/// `"30s"`, `"15m"`, `"1h"`, `"1d"`: whole seconds, because the RateLimit
/// headers count windows in seconds.
fn parse_window(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "window {text:?} must be a whole number with a unit s, m, h or d (e.g. \"1s\", \"1h\")"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = count.checked_mul(unit_secs).ok_or_else(bad)?;
    if secs == 0 || secs > MAX_WINDOW_SECS {
        return Err(format!("window {text:?} must be between 1s and 100d"));
    }
    Ok(secs)
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use weir_plugin::testing::parse;

    use super::*;

    fn limit(fields: &str) -> Result<Config, String> {
        parse(&format!(r#"{{"limits":[{{"name":"burst",{fields}}}]}}"#))
    }

    #[test]
    fn a_full_limit_parses() {
        let config = limit(
            r#""key":"header:X-Tenant","requests":10,"window":"1h","on_missing_key":"client-ip","overrides":{"gold":100},"trusted_header":true"#,
        )
        .unwrap();
        let limit = &config.limits[0];
        assert_eq!(limit.key, KeySource::Header("x-tenant".into()));
        assert_eq!(limit.quota.window_secs, 3600);
        assert_eq!(limit.overrides["gold"].requests, 100);
        assert_eq!(limit.on_missing_key, MissingKey::ClientIp);
        assert_eq!(config.on_store_error, StoreErrorPolicy::Allow);
        assert_eq!(limit.ip_grouping, IpGrouping::default());
        assert_eq!(limit.ip_grouping.ipv6_prefix, 64);
        assert_eq!(limit.ip_grouping.ipv4_prefix, 32);
    }

    #[test]
    fn overrides_on_a_client_sent_header_are_refused() {
        let err =
            limit(r#""key":"header:x-tenant","requests":1,"window":"1s","overrides":{"gold":5}"#)
                .unwrap_err();
        assert!(err.contains("limits[0] (\"burst\")"), "{err}");
        assert!(
            err.contains(
                "overrides keyed on \"header:x-tenant\" would let any client pick its own quota"
            ),
            "{err}"
        );
        assert!(err.contains("trusted_header = true"), "{err}");
        // A header key without overrides, or a property key with them, is fine.
        limit(r#""key":"header:x-tenant","requests":1,"window":"1s""#).unwrap();
        limit(r#""key":"property:tenant","requests":1,"window":"1s","overrides":{"gold":5}"#)
            .unwrap();
        let err =
            limit(r#""key":"property:tenant","requests":1,"window":"1s","trusted_header":true"#)
                .unwrap_err();
        assert!(
            err.contains("trusted_header applies only to header:NAME keys"),
            "{err}"
        );
    }

    #[test]
    fn ip_prefixes_are_checked() {
        let cases = [
            (
                r#""key":"client-ip","requests":1,"window":"1s","ipv6_prefix":0"#,
                "ipv6_prefix 0 must be 1..=128",
            ),
            (
                r#""key":"client-ip","requests":1,"window":"1s","ipv6_prefix":129"#,
                "ipv6_prefix 129",
            ),
            (
                r#""key":"client-ip","requests":1,"window":"1s","ipv4_prefix":33"#,
                "ipv4_prefix 33 must be 1..=32",
            ),
            (
                r#""key":"route","requests":1,"window":"1s","ipv6_prefix":48"#,
                "apply only when key or on_missing_key",
            ),
            (
                r#""key":"client-ip","requests":1,"window":"1s","overrides":{"gold":5}"#,
                "\"gold\" is not an IP address",
            ),
            (
                r#""key":"client-ip","requests":1,"window":"1s","overrides":{"2001:db8::/48":5}"#,
                "keyed by /64",
            ),
            (
                r#""key":"client-ip","requests":1,"window":"1s","overrides":{"2001:db8::1":5,"2001:db8::2":6}"#,
                "two entries name the bucket \"2001:db8::/64\"",
            ),
        ];
        for (fields, expected) in cases {
            let err = limit(fields).unwrap_err();
            assert!(err.contains("limits[0] (\"burst\")"), "{err}");
            assert!(err.contains(expected), "{fields}: {err}");
        }
        let err = parse::<Config>(
            r#"{"ipv6_prefix":200,"limits":[{"name":"a","key":"client-ip","requests":1,"window":"1s"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("ipv6_prefix 200 must be 1..=128"), "{err}");
        let err = parse::<Config>(
            r#"{"ipv6_prefix":0,"limits":[{"name":"a","key":"client-ip","requests":1,"window":"1s"}]}"#,
        )
        .unwrap_err();
        assert!(err.contains("ipv6_prefix 0 must be 1..=128"), "{err}");
    }

    #[test]
    fn bad_limits_are_refused_naming_the_limit() {
        let cases = [
            (
                r#""key":"client-ip","requests":0,"window":"1s""#,
                "requests must be at least 1",
            ),
            (
                r#""key":"cookie:sid","requests":1,"window":"1s""#,
                "unknown key source \"cookie:sid\"",
            ),
            (r#""key":"path:0","requests":1,"window":"1s""#, "path:N"),
            (
                r#""key":"route","requests":1,"window":"1.5s""#,
                "window \"1.5s\"",
            ),
            (
                r#""key":"route","requests":1,"window":"0s""#,
                "between 1s and 100d",
            ),
            (
                r#""key":"route","requests":2000000000,"window":"1s""#,
                "too fine-grained",
            ),
            (
                r#""key":"route","requests":1,"window":"1s","overrides":{"gold":0}"#,
                "overrides.gold",
            ),
        ];
        for (fields, expected) in cases {
            let err = limit(fields).unwrap_err();
            assert!(err.contains("limits[0] (\"burst\")"), "{err}");
            assert!(err.contains(expected), "{fields}: {err}");
        }
        assert!(parse::<Config>(r#"{"limits":[]}"#)
            .unwrap_err()
            .contains("at least one"));
    }
}
