//! The Generic Cell Rate Algorithm behind `kv.limit`, as pure arithmetic
//! on one stored number per bucket: its *theoretical arrival time* (TAT),
//! the instant the bucket's schedule would be back to "nothing
//! outstanding".
//!
//! A limit of `rate` requests per `period` spaces requests `interval =
//! period / rate` apart (truncated to whole nanoseconds). A request costing
//! `cost` moves the schedule to `max(tat, now) + cost × interval`, and fits
//! when that lies no more than `burst × interval` ahead of `now`. So a
//! fresh bucket takes exactly `burst` requests at once, then one more every
//! `interval`, and an idle bucket is full again `burst × interval` after
//! its last request, when its stored TAT can expire.
//!
//! One crate, because three places decide: the host's in-process limiter,
//! the SDK's native stand-in for plugin unit tests, and (in Lua, the same
//! steps) the host's Redis script. Every span is kept under 2^53 ns so that
//! Lua's doubles compute it exactly too.

#![no_std]

/// Longest period: 100 days, so spans stay under [`MAX_SPAN_NS`].
pub const MAX_PERIOD_MS: u64 = 100 * 86_400_000;

/// Longest span (burst or cost times the interval) a limit may describe:
/// 2^53 ns, about 104 days, exact in a double.
pub const MAX_SPAN_NS: u64 = 1 << 53;

/// A limit checked and turned into nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Spacing of requests.
    pub interval_ns: u64,
    /// How far ahead of now the schedule may run: `burst × interval`.
    pub tolerance_ns: u64,
    /// What this request moves the schedule by: `cost × interval`.
    pub cost_ns: u64,
    burst: u64,
}

/// Why a limit was refused, for the plugin's error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    ZeroRate,
    Period,
    ZeroBurst,
    /// More requests per period than nanoseconds in it.
    TooFine,
    /// `burst` or `cost` times the interval is longer than [`MAX_SPAN_NS`].
    TooLong,
}

impl core::fmt::Display for Invalid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Invalid::ZeroRate => "rate must be at least 1",
            Invalid::Period => "period-ms must be between 1 and 100 days",
            Invalid::ZeroBurst => "burst must be at least 1",
            Invalid::TooFine => "more requests per period than nanoseconds in it",
            Invalid::TooLong => "burst or cost times the spacing is longer than 2^53 ns",
        })
    }
}

impl Params {
    pub fn new(rate: u64, period_ms: u64, burst: u64, cost: u64) -> Result<Params, Invalid> {
        if rate == 0 {
            return Err(Invalid::ZeroRate);
        }
        if period_ms == 0 || period_ms > MAX_PERIOD_MS {
            return Err(Invalid::Period);
        }
        if burst == 0 {
            return Err(Invalid::ZeroBurst);
        }
        let interval_ns = period_ms * 1_000_000 / rate;
        if interval_ns == 0 {
            return Err(Invalid::TooFine);
        }
        let span = |n: u64| {
            n.checked_mul(interval_ns)
                .filter(|&ns| ns <= MAX_SPAN_NS)
                .ok_or(Invalid::TooLong)
        };
        Ok(Params {
            interval_ns,
            tolerance_ns: span(burst)?,
            cost_ns: span(cost)?,
            burst,
        })
    }

    /// Whether this request fits a bucket whose schedule runs `ahead_ns`
    /// ahead of now.
    pub fn fits(&self, ahead_ns: u64) -> bool {
        ahead_ns.saturating_add(self.cost_ns) <= self.tolerance_ns
    }

    /// Requests that fit in what the schedule leaves free.
    fn remaining(&self, ahead_ns: u64) -> u64 {
        (self.tolerance_ns.saturating_sub(ahead_ns) / self.interval_ns).min(self.burst)
    }

    /// The decision for a request that was spent: the state after it.
    pub fn spent(&self, ahead_ns: u64) -> Decision {
        let after = ahead_ns.saturating_add(self.cost_ns);
        Decision {
            allowed: true,
            remaining: self.remaining(after),
            reset_ns: after,
        }
    }

    /// The decision of a limit that would allow the request, in a call
    /// another limit refused: nothing was spent.
    pub fn unspent(&self, ahead_ns: u64) -> Decision {
        Decision {
            allowed: true,
            remaining: self.remaining(ahead_ns),
            reset_ns: ahead_ns,
        }
    }

    /// The decision of a limit that refuses: when the request would fit.
    pub fn refused(&self, ahead_ns: u64) -> Decision {
        Decision {
            allowed: false,
            remaining: 0,
            reset_ns: ahead_ns
                .saturating_add(self.cost_ns)
                .saturating_sub(self.tolerance_ns),
        }
    }
}

/// What one limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed now.
    pub remaining: u64,
    /// Until the bucket is full again, or (refused) until the request fits.
    pub reset_ns: u64,
}

/// How far a stored TAT runs ahead of `now_ns` (0 for a fresh or expired
/// bucket).
pub fn ahead(tat_ns: Option<u64>, now_ns: u64) -> u64 {
    tat_ns.unwrap_or(now_ns).saturating_sub(now_ns)
}

/// Decide a whole call: every limit must fit for any to spend. Writes each
/// limit's decision into `decisions` (same order as `limits`, each with
/// the bucket's `ahead_ns`) and returns whether the request was allowed,
/// in which case each bucket's new TAT is `now + decision.reset_ns`.
pub fn decide_all(limits: &[(Params, u64)], decisions: &mut [Decision]) -> bool {
    let allowed = limits.iter().all(|(params, ahead)| params.fits(*ahead));
    for ((params, ahead), decision) in limits.iter().zip(decisions.iter_mut()) {
        *decision = match (allowed, params.fits(*ahead)) {
            (true, _) => params.spent(*ahead),
            (false, true) => params.unspent(*ahead),
            (false, false) => params.refused(*ahead),
        };
    }
    allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spend single requests at one instant until one is refused.
    fn burst(params: Params, mut ahead_ns: u64) -> u64 {
        let mut allowed = 0;
        while params.fits(ahead_ns) {
            ahead_ns = params.spent(ahead_ns).reset_ns;
            allowed += 1;
        }
        allowed
    }

    #[test]
    fn a_fresh_bucket_takes_exactly_its_burst() {
        for (rate, period_ms) in [
            (1, 1000),
            (3, 1000),
            (7, 1000),
            (1000, 1000),
            (31_622, 1000),
        ] {
            let params = Params::new(rate, period_ms, rate, 1).unwrap();
            assert_eq!(burst(params, 0), rate, "{rate} per {period_ms} ms");
        }
        let params = Params::new(100, 60_000, 5, 1).unwrap();
        assert_eq!(burst(params, 0), 5, "burst below the rate");
    }

    #[test]
    fn refills_one_interval_at_a_time() {
        let params = Params::new(3, 1000, 3, 1).unwrap();
        let mut ahead_ns = 0;
        for expected in [2, 1, 0] {
            let decision = params.spent(ahead_ns);
            assert_eq!(decision.remaining, expected);
            ahead_ns = decision.reset_ns;
        }
        let refused = params.refused(ahead_ns);
        assert!(!refused.allowed);
        assert_eq!(refused.reset_ns, params.interval_ns);
        // One interval later exactly one more fits.
        assert_eq!(burst(params, ahead_ns - params.interval_ns), 1);
        assert_eq!(params.unspent(0).remaining, 3);
    }

    #[test]
    fn one_refusal_spends_nothing_anywhere() {
        let loose = Params::new(10, 1000, 10, 1).unwrap();
        let tight = Params::new(1, 1000, 1, 1).unwrap();
        let mut decisions = [Decision {
            allowed: false,
            remaining: 0,
            reset_ns: 0,
        }; 2];
        assert!(decide_all(&[(loose, 0), (tight, 0)], &mut decisions));
        let (loose_ahead, tight_ahead) = (decisions[0].reset_ns, decisions[1].reset_ns);
        assert!(!decide_all(
            &[(loose, loose_ahead), (tight, tight_ahead)],
            &mut decisions
        ));
        assert!(decisions[0].allowed && !decisions[1].allowed);
        assert_eq!(decisions[0].reset_ns, loose_ahead, "unspent");
        assert_eq!(decisions[0].remaining, 9);
    }

    #[test]
    fn refuses_what_the_arithmetic_cannot_hold() {
        assert_eq!(Params::new(0, 1000, 1, 1), Err(Invalid::ZeroRate));
        assert_eq!(Params::new(1, 0, 1, 1), Err(Invalid::Period));
        assert_eq!(
            Params::new(1, MAX_PERIOD_MS + 1, 1, 1),
            Err(Invalid::Period)
        );
        assert_eq!(Params::new(1, 1000, 0, 1), Err(Invalid::ZeroBurst));
        assert_eq!(Params::new(2_000_000, 1, 1, 1), Err(Invalid::TooFine));
        assert_eq!(Params::new(1, MAX_PERIOD_MS, 2, 1), Err(Invalid::TooLong));
        assert_eq!(Params::new(1, 1000, 1, u64::MAX), Err(Invalid::TooLong));
        assert!(
            Params::new(1, 1000, 1, 0).unwrap().fits(1_000_000_000),
            "cost 0 reads"
        );
    }
}
