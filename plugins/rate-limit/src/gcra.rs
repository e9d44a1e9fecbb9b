//! The Generic Cell Rate Algorithm, as pure arithmetic on one stored
//! number per key: the *theoretical arrival time* (TAT), the instant at
//! which the key's schedule would be back to "no requests outstanding".
//!
//! A quota of `requests` per `window` spaces requests `interval = window /
//! requests` apart. A request at `now` advances the schedule to
//! `max(tat, now) + interval`; it is allowed when that new TAT lies no more
//! than one window ahead of `now`. So a fresh key takes exactly `requests`
//! at once, then one more every `interval`, and an idle key is back at its
//! full quota one window after its last request. Everything here is in
//! nanoseconds (see [`Quota::check`](crate::config::Quota) for why the
//! truncated interval stays exact).

use crate::config::Quota;

/// What one request would do to a key, computed from its stored TAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: store `new_tat`. `status` is the state *after* this request.
    Allow { new_tat: u64, status: Status },
    /// Over quota: store nothing; the next request fits in `retry_after_ns`.
    Deny { retry_after_ns: u64, status: Status },
}

/// What the RateLimit header reports for one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Requests that would still be allowed right now.
    pub remaining: u64,
    /// Nanoseconds until the quota is full again (on a denial: until the
    /// next request fits, which is what a client waits for).
    pub reset_ns: u64,
}

/// How far the key's schedule runs ahead of `now` (0 for a fresh key).
fn ahead_ns(tat: Option<u64>, now: u64) -> u64 {
    tat.unwrap_or(now).saturating_sub(now)
}

/// Requests that fit in the part of the window the schedule leaves free.
fn remaining(quota: Quota, ahead: u64) -> u64 {
    (quota.window_ns().saturating_sub(ahead) / quota.interval_ns()).min(quota.requests)
}

/// The state of a key without spending anything.
pub fn peek(tat: Option<u64>, now: u64, quota: Quota) -> Status {
    let ahead = ahead_ns(tat, now);
    Status {
        remaining: remaining(quota, ahead),
        reset_ns: ahead,
    }
}

/// Whether one more request fits.
pub fn decide(tat: Option<u64>, now: u64, quota: Quota) -> Decision {
    let ahead = ahead_ns(tat, now) + quota.interval_ns();
    if ahead > quota.window_ns() {
        let retry_after_ns = ahead - quota.window_ns();
        return Decision::Deny {
            retry_after_ns,
            status: Status {
                remaining: 0,
                reset_ns: retry_after_ns,
            },
        };
    }
    Decision::Allow {
        new_tat: now + ahead,
        status: Status {
            remaining: remaining(quota, ahead),
            reset_ns: ahead,
        },
    }
}

/// Whole seconds, rounded up: a client told to wait 0 s would retry at once.
pub fn ceil_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_PER_SECOND: Quota = Quota {
        requests: 3,
        window_secs: 1,
    };

    /// Spend requests at one instant until one is denied.
    fn burst(mut tat: Option<u64>, now: u64, quota: Quota) -> (u64, Option<u64>) {
        let mut allowed = 0;
        loop {
            match decide(tat, now, quota) {
                Decision::Allow { new_tat, .. } => {
                    allowed += 1;
                    tat = Some(new_tat);
                }
                Decision::Deny { .. } => return (allowed, tat),
            }
        }
    }

    #[test]
    fn a_fresh_key_takes_exactly_its_quota_at_once() {
        for requests in [1, 3, 7, 10, 1000, 31_622] {
            let quota = Quota {
                requests,
                window_secs: 1,
            };
            assert_eq!(burst(None, 5_000, quota).0, requests, "{requests}/s");
        }
    }

    #[test]
    fn the_quota_is_full_again_one_window_later() {
        let now = 1_000_000_000_000;
        let (_, tat) = burst(None, now, THREE_PER_SECOND);
        assert_eq!(burst(tat, now + 1_000_000_000, THREE_PER_SECOND).0, 3);
        // Halfway through, one interval's worth has come back.
        assert_eq!(burst(tat, now + 400_000_000, THREE_PER_SECOND).0, 1);
    }

    #[test]
    fn statuses_count_down_and_denials_say_when_to_retry() {
        let now = 10_000_000_000;
        let mut tat = None;
        for expected in [2, 1, 0] {
            match decide(tat, now, THREE_PER_SECOND) {
                Decision::Allow { new_tat, status } => {
                    assert_eq!(status.remaining, expected);
                    tat = Some(new_tat);
                }
                denied => panic!("{denied:?}"),
            }
        }
        match decide(tat, now, THREE_PER_SECOND) {
            Decision::Deny { retry_after_ns, .. } => {
                assert_eq!(ceil_secs(retry_after_ns), 1);
                assert!(retry_after_ns <= 333_333_333);
            }
            allowed => panic!("{allowed:?}"),
        }
        assert_eq!(peek(None, now, THREE_PER_SECOND).remaining, 3);
    }
}
