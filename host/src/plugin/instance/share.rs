//! How much of the request workers' time one plugin's calls take. A plugin
//! whose calls are each short (they never reach an epoch tick, so they
//! never yield) can still keep every worker busy when its clients keep
//! calling it, and then a plugin-free route waits in the workers' queues
//! behind it. Over `[runtime] max_plugin_cpu_percent` of the workers' time
//! in a window, its calls run as long runners do: off the request workers,
//! on threads that take only the CPU nothing else wants, until its share
//! falls below half of that.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a plugin's share is judged.
const WINDOW: Duration = Duration::from_millis(100);

/// Time a plugin's calls ran on threads, judged once per [`WINDOW`].
pub(super) struct CpuShare {
    /// Busy ns allowed per [`WINDOW`] (0: never judged over).
    limit_ns: u64,
    origin: Instant,
    /// When the current window began, in ns since `origin`.
    window_start: AtomicU64,
    /// What the plugin's calls ran in the current window.
    busy_ns: AtomicU64,
    over: AtomicBool,
}

impl CpuShare {
    /// At most `percent` of `workers` threads' time; 100 % or more is no
    /// limit (a plugin can take no more than all of them).
    pub(super) fn new(percent: u32, workers: usize) -> CpuShare {
        let limit_ns = if percent >= 100 {
            0
        } else {
            let window = WINDOW.as_nanos() as u64;
            window.saturating_mul(workers.max(1) as u64) * u64::from(percent) / 100
        };
        CpuShare {
            limit_ns,
            origin: Instant::now(),
            window_start: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            over: AtomicBool::new(false),
        }
    }

    /// Whether the last window judged the plugin over its share.
    pub(super) fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// A call of the plugin ran `ran` on its threads (its polls, not its
    /// waits). The first call after a window ends judges it.
    pub(super) fn add(&self, ran: Duration) {
        if self.limit_ns == 0 {
            return;
        }
        self.add_at(ran, self.origin.elapsed());
    }

    /// [`CpuShare::add`] at `now` (since `origin`).
    fn add_at(&self, ran: Duration, now: Duration) {
        let ran = u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ran, Ordering::Relaxed);
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let start = self.window_start.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(start);
        let window = WINDOW.as_nanos() as u64;
        if elapsed < window
            || self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let busy = self.busy_ns.swap(0, Ordering::Relaxed);
        // A window that ran long (the plugin had no calls for a while)
        // allows for its whole length.
        let limit = u128::from(self.limit_ns) * u128::from(elapsed) / u128::from(window);
        // Half the limit to come back: moved off the workers, a plugin
        // can take at most the long runners' threads, which may be just
        // under the limit; judged on the same line, it would move back
        // and forth every window.
        let over = if self.over() {
            u128::from(busy) * 2 > limit
        } else {
            u128::from(busy) > limit
        };
        if over != self.over() {
            tracing::info!(
                busy_ms = busy / 1_000_000,
                window_ms = elapsed / 1_000_000,
                over,
                "plugin calls' share of the request workers' time judged"
            );
        }
        self.over.store(over, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_plugin_over_its_share_is_judged_so_until_it_takes_under_half_of_it() {
        // 50 % of 2 workers: 100 ms of calls per 100 ms window.
        let share = CpuShare::new(50, 2);
        share.add_at(ms(150), ms(10));
        assert!(!share.over(), "judged before its window ended");
        share.add_at(ms(0), ms(100));
        assert!(
            share.over(),
            "150 ms of calls in a 100 ms window of two workers at 50 %"
        );
        // Under the limit, but not under half of it: still over.
        share.add_at(ms(60), ms(200));
        assert!(share.over(), "came back at 60 % of its limit");
        // A window of 300 ms allows 300 ms: 100 ms is under half.
        share.add_at(ms(100), ms(500));
        assert!(!share.over(), "still over at a third of its limit");
        share.add_at(ms(101), ms(600));
        assert!(share.over(), "101 ms of calls in 100 ms");
    }

    #[test]
    fn a_hundred_percent_is_no_limit() {
        assert_eq!(CpuShare::new(100, 2).limit_ns, 0, "never judged");
        assert_eq!(CpuShare::new(50, 2).limit_ns, 100_000_000);
    }
}
