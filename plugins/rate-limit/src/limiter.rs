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
            let (source, value) = match key_value(&limit.key, req) {
                Some(value) => (&limit.key, value),
                None => match limit.on_missing_key {
                    MissingKey::Skip => return None,
                    MissingKey::ClientIp => (&KeySource::ClientIp, client_ip(req)),
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

fn client_ip(req: &Request) -> String {
    req.client_ip().to_owned()
}

/// The value `source` takes for this request, if it has one.
fn key_value(source: &KeySource, req: &Request) -> Option<String> {
    let value = match source {
        KeySource::ClientIp => Some(client_ip(req)),
        KeySource::Header(name) => req.header(name).map(|v| v.trim().to_owned()),
        KeySource::Property(name) => match req.property(name) {
            Some(Value::Text(text)) => Some(text.clone()),
            Some(Value::Integer(n)) => Some(n.to_string()),
            _ => None,
        },
        KeySource::Route => req.route.clone(),
        KeySource::PathSegments(n) => Some(
            req.path
                .split('/')
                .skip(1)
                .take(*n)
                .fold(String::new(), |prefix, segment| prefix + "/" + segment),
        ),
    };
    value.filter(|v| !v.is_empty())
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
        kv::KvError::TooLarge => "kv: key or value too large".into(),
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
