//! Retry pacing: exponential backoff with full jitter, `Retry-After`, and a
//! budget so retries cannot multiply load during an outage.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::config::UpstreamSpec;

/// Retry tokens, in thousandths: each request deposits
/// `budget_percent × 10`, each retry costs 1000; capped so a quiet period
/// cannot bank an unbounded burst.
pub struct Budget {
    tokens: AtomicI64,
    deposit: i64,
}

const TOKEN: i64 = 1000;
const MAX_TOKENS: i64 = 10 * TOKEN;

impl Budget {
    pub fn new(percent: u32) -> Budget {
        Budget {
            tokens: AtomicI64::new(MAX_TOKENS),
            deposit: i64::from(percent) * 10,
        }
    }

    pub fn deposit(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.deposit).min(MAX_TOKENS))
            });
    }

    pub fn try_spend(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= TOKEN).then_some(t - TOKEN)
            })
            .is_ok()
    }
}

/// `retry_backoff × 2^attempt`, with full jitter (uniform in [0, that]).
pub fn backoff(spec: &UpstreamSpec, attempt: u32) -> Duration {
    let ceiling = spec.retry_backoff.saturating_mul(1 << attempt.min(6));
    let millis = ceiling.as_millis() as u64;
    if millis == 0 {
        return Duration::ZERO;
    }
    let random = RandomState::new().hash_one(attempt);
    Duration::from_millis(random % (millis + 1))
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}
