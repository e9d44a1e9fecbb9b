//! The plugin's config: the JSON Weir hands over (`Raw*`, as written in
//! `proxy.toml`) checked once into [`Config`], whose every value is usable
//! as is at request time. Errors name the limit they are about.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Longest limit name; names end up in headers, KV keys and JSON bodies.
const MAX_NAME_LEN: usize = 64;
/// Longest window: a year keeps every nanosecond sum far from overflow.
const MAX_WINDOW_SECS: u64 = 366 * 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    limits: Vec<RawLimit>,
    #[serde(default)]
    on_store_error: StoreErrorPolicy,
    #[serde(default)]
    headers_on_success: bool,
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
    /// `path:N`: the first N segments of the path (`path:1` keys
    /// `/api/v1/users` as `/api`).
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

/// A quota: `requests` per `window_secs`, with the GCRA constants derived
/// from it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub window_secs: u64,
}

impl Quota {
    pub fn window_ns(&self) -> u64 {
        self.window_secs * 1_000_000_000
    }

    /// The GCRA emission interval: one request's share of the window.
    pub fn interval_ns(&self) -> u64 {
        self.window_ns() / self.requests
    }

    /// Refuses quotas the nanosecond clock cannot count exactly: with
    /// `requests * (requests + 1) <= window_ns` the truncated interval still
    /// allows exactly `requests`, never one more.
    fn check(self) -> Result<Self, String> {
        if self.requests == 0 {
            return Err("requests must be at least 1".into());
        }
        let exact = self
            .requests
            .checked_mul(self.requests + 1)
            .is_some_and(|n| n <= self.window_ns());
        if !exact {
            return Err(format!(
                "{} requests per {}s is too fine-grained; use a longer window",
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
    /// Quotas for particular key values (e.g. tenant "gold").
    pub overrides: BTreeMap<String, Quota>,
}

/// The checked config, read through [`RawConfig`].
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub limits: Vec<Limit>,
    pub on_store_error: StoreErrorPolicy,
    pub headers_on_success: bool,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        if raw.limits.is_empty() {
            return Err("limits: at least one limit is required".into());
        }
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
                overrides.insert(value, quota);
            }
            limits.push(Limit {
                name: limit.name,
                key,
                quota,
                on_missing_key: limit.on_missing_key,
                overrides,
            });
        }
        Ok(Config {
            limits,
            on_store_error: raw.on_store_error,
            headers_on_success: raw.headers_on_success,
        })
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
        return Err(format!("window {text:?} must be between 1s and 366d"));
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
            r#""key":"header:X-Tenant","requests":10,"window":"1h","on_missing_key":"client-ip","overrides":{"gold":100}"#,
        )
        .unwrap();
        let limit = &config.limits[0];
        assert_eq!(limit.key, KeySource::Header("x-tenant".into()));
        assert_eq!(limit.quota.window_secs, 3600);
        assert_eq!(limit.overrides["gold"].requests, 100);
        assert_eq!(limit.on_missing_key, MissingKey::ClientIp);
        assert_eq!(config.on_store_error, StoreErrorPolicy::Allow);
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
                "between 1s and 366d",
            ),
            (
                r#""key":"route","requests":100000,"window":"1s""#,
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
