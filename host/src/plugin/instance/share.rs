//! How much of the request workers' time one plugin's calls take. A plugin
//! whose calls are each short (they never reach an epoch tick, so they
//! never yield) can still keep every worker busy when its clients keep
//! calling it, and then a plugin-free route waits in the workers' queues
//! behind it. Over `[runtime] max_plugin_cpu_percent` of the workers' time
//! in a window in which the proxy also served requests that did not call
//! it, its calls run as long runners do: off the request workers, on
//! threads that take only the CPU nothing else wants, until its share
//! falls below half of that. A plugin that every request calls (the
//! proxy's one route, a benchmark) has no one to be fair to, and keeps
//! (or gets back) the workers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a plugin's share is judged.
const WINDOW: Duration = Duration::from_millis(100);

/// `served_before` until the first window is judged: the proxy's count
/// then includes everything served before the plugin was loaded.
const NOT_YET: u64 = u64::MAX;

/// Time a plugin's calls ran on threads, judged once per [`WINDOW`].
pub(super) struct CpuShare {
    /// The plugin's name, for the log line when its judgement changes.
    plugin: String,
    /// Busy ns allowed per [`WINDOW`] (0: never judged over).
    limit_ns: u64,
    origin: Instant,
    /// When the current window began, in ns since `origin`.
    window_start: AtomicU64,
    /// What the plugin's calls ran in the current window.
    busy_ns: AtomicU64,
    /// Its request-phase calls in the current window.
    requests: AtomicU64,
    /// The proxy's requests served when the window began.
    served_before: AtomicU64,
    over: AtomicBool,
}

impl CpuShare {
    /// At most `percent` of `workers` threads' time; 100 % or more is no
    /// limit (a plugin can take no more than all of them).
    pub(super) fn new(plugin: &str, percent: u32, workers: usize) -> CpuShare {
        let limit_ns = if percent >= 100 {
            0
        } else {
            let window = WINDOW.as_nanos() as u64;
            window.saturating_mul(workers.max(1) as u64) * u64::from(percent) / 100
        };
        CpuShare {
            plugin: plugin.to_owned(),
            limit_ns,
            origin: Instant::now(),
            window_start: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            served_before: AtomicU64::new(NOT_YET),
            over: AtomicBool::new(false),
        }
    }

    /// Whether the last window judged the plugin over its share.
    pub(super) fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// A call of the plugin kept a thread `busy` (its polls, not its
    /// waits); `request` if it was a request-phase call. The first call
    /// after a window ends judges it, reading the proxy's count of
    /// requests served from `served`.
    pub(super) fn add(&self, busy: Duration, request: bool, served: impl FnOnce() -> u64) {
        if self.limit_ns == 0 {
            return;
        }
        self.add_at(busy, request, self.origin.elapsed(), served);
    }

    /// [`CpuShare::add`] at `now` (since `origin`).
    fn add_at(&self, busy: Duration, request: bool, now: Duration, served: impl FnOnce() -> u64) {
        let busy = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(busy, Ordering::Relaxed);
        self.requests
            .fetch_add(u64::from(request), Ordering::Relaxed);
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
        let own = self.requests.swap(0, Ordering::Relaxed);
        let served = served();
        let served_before = self.served_before.swap(served, Ordering::Relaxed);
        // Requests that did not call this plugin (a removed route's count
        // going away reads as none).
        let others = match served_before {
            NOT_YET => 0,
            before => served.saturating_sub(before).saturating_sub(own),
        };
        // A window that ran long (the plugin had no calls for a while)
        // allows for its whole length.
        let limit = u128::from(self.limit_ns) * u128::from(elapsed) / u128::from(window);
        // With no one else served, there is no one to be fair to. Half
        // the limit to come back: moved off the workers, a plugin can take
        // at most the long runners' threads, which may be just under the
        // limit; judged on the same line, it would move back and forth
        // every window.
        let over = others > 0
            && if self.over() {
                u128::from(busy) * 2 > limit
            } else {
                u128::from(busy) > limit
            };
        if over != self.over() {
            tracing::info!(
                plugin = %self.plugin,
                busy_ms = busy / 1_000_000,
                window_ms = elapsed / 1_000_000,
                others,
                over,
                "plugin calls' share of the request workers' time judged: \
                 over moves them off the workers"
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
        // 50 % of 2 workers: 100 ms of calls per 100 ms window. The proxy
        // had served 1,000 requests when the plugin was loaded, and serves
        // 10 a window besides the plugin's own call.
        let share = CpuShare::new("p", 50, 2);
        let served = |window: u64| move || 1_000 + window * 11;
        share.add_at(ms(150), true, ms(100), served(1));
        assert!(
            !share.over(),
            "the first window only reads the proxy's count"
        );
        share.add_at(ms(150), true, ms(110), served(1));
        assert!(!share.over(), "judged before its window ended");
        share.add_at(ms(0), false, ms(200), served(2));
        assert!(
            share.over(),
            "150 ms of calls in a 100 ms window of two workers at 50 %"
        );
        // Under the limit, but not under half of it: still over.
        share.add_at(ms(60), true, ms(300), served(3));
        assert!(share.over(), "came back at 60 % of its limit");
        // A window of 300 ms allows 300 ms: 100 ms is under half.
        share.add_at(ms(100), true, ms(600), served(4));
        assert!(!share.over(), "still over at a third of its limit");
        share.add_at(ms(101), true, ms(700), served(5));
        assert!(share.over(), "101 ms of calls in 100 ms");
    }

    #[test]
    fn a_plugin_every_request_calls_is_never_judged_over() {
        let share = CpuShare::new("p", 50, 1);
        let mut served = 0;
        for window in 1..=5 {
            // Ten requests a window, each calling the plugin, nothing else.
            for call in 0..10 {
                served += 1;
                share.add_at(ms(10), true, ms(window * 100 + call), || served);
            }
            assert!(!share.over(), "window {window}: no one else was served");
        }
        // One request that did not call it: now it is over.
        served += 1;
        share.add_at(ms(10), true, ms(600), || served + 1);
        assert!(share.over());
        // Over, but the others are gone: it is back on the workers.
        share.add_at(ms(100), true, ms(700), || served + 2);
        assert!(!share.over(), "over while no one else was served");
    }

    #[test]
    fn a_hundred_percent_is_no_limit() {
        assert_eq!(CpuShare::new("p", 100, 2).limit_ns, 0, "never judged");
        assert_eq!(CpuShare::new("p", 50, 2).limit_ns, 100_000_000);
    }
}
