//! How much of the request workers' time one plugin's calls take. A plugin
//! whose calls are each short (they never reach an epoch tick, so they
//! never yield) can still keep every worker busy when its clients keep
//! calling it, and then a plugin-free route waits in the workers' queues
//! behind it. Over `[runtime] max_plugin_cpu_percent` of the workers' time
//! in a window in which the proxy also served requests that did not call
//! it, its calls run as long runners do: off the request workers, on
//! threads that take only the CPU nothing else wants, until its share
//! has stayed below half of that for [`COME_BACK_AFTER`]. A plugin that
//! every request calls (the proxy's one route, a benchmark) has no one to
//! be fair to, and keeps (or gets back) the workers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a plugin's share is judged.
const WINDOW: Duration = Duration::from_millis(100);

/// How soon into a window a plugin over its share of the time so far is
/// judged over, without waiting for the window's end: a storm of calls
/// that starts would otherwise keep the request workers for up to a whole
/// window (beside the log flood, most of `/fast`'s slow samples came in the
/// storm's first 100 ms).
const EARLY: Duration = Duration::from_millis(20);

/// How long a plugin judged over must stay under half its limit before its
/// calls come back onto the workers. Off them, it runs on the long
/// runners' threads (one by default, on a core nothing else wants), so a
/// window in which they got little CPU reads as a plugin that wants
/// little. Judged on one window, the log flood's plugin came back now and
/// then and held the workers until judged over again: perf found its guest
/// code in 16.6 % of the process's samples on the request workers.
const COME_BACK_AFTER: Duration = Duration::from_secs(1);

/// `under_since` while the plugin is not under half its limit.
const NOT_UNDER: u64 = u64::MAX;

/// `others_before` until the first window is judged: the proxy's count
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
    /// Requests served on routes whose chain has the plugin, counted
    /// where the proxy counts every request served, just before it: the
    /// proxy's count less this one is the requests served that did not
    /// come through the plugin, give or take those between the two
    /// counts at that instant (at most one per request worker).
    through: AtomicU64,
    /// That difference when the window began.
    others_before: AtomicU64,
    /// The request workers (the most requests between the two counts).
    workers: u64,
    over: AtomicBool,
    /// While over: since when (ns since `origin`) every window has been
    /// under half the limit, or [`NOT_UNDER`].
    under_since: AtomicU64,
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
            through: AtomicU64::new(0),
            others_before: AtomicU64::new(NOT_YET),
            workers: workers.max(1) as u64,
            over: AtomicBool::new(false),
            under_since: AtomicU64::new(NOT_UNDER),
        }
    }

    /// Whether the last window judged the plugin over its share.
    pub(super) fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// A request on a route whose chain has the plugin was served (called
    /// just before the proxy counts it).
    pub(super) fn served_through(&self) {
        if self.limit_ns != 0 {
            self.through.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call of the plugin kept a thread `busy` (its polls, not its
    /// waits). The first call after a window ends judges it, reading the
    /// proxy's count of requests served from `served`.
    pub(super) fn add(&self, busy: Duration, served: impl FnOnce() -> u64) {
        if self.limit_ns == 0 {
            return;
        }
        self.add_at(busy, self.origin.elapsed(), served);
    }

    /// [`CpuShare::add`] at `now` (since `origin`).
    fn add_at(&self, busy: Duration, now: Duration, served: impl FnOnce() -> u64) {
        let busy = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        let so_far = self
            .busy_ns
            .fetch_add(busy, Ordering::Relaxed)
            .saturating_add(busy);
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let start = self.window_start.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(start);
        let window = WINDOW.as_nanos() as u64;
        let due = elapsed >= window;
        let early = !due
            && !self.over()
            && elapsed >= EARLY.as_nanos() as u64
            && u128::from(so_far) * u128::from(window)
                > u128::from(self.limit_ns) * u128::from(elapsed);
        if !due && !early {
            return;
        }
        // Both totals, not counts per window: a request counted through
        // the plugin in one window and by the proxy in the next would
        // otherwise read as someone else's. A removed route's count going
        // away reads as none.
        let others_total = served().saturating_sub(self.through.load(Ordering::Relaxed));
        let others_in = |before: u64| match before {
            NOT_YET => 0,
            before => others_total.saturating_sub(before),
        };
        // Judged early only once others have been served in it: a window
        // cut short with too few of them to tell would be judged under,
        // and at a quiet other route's pace every window would be.
        if early && others_in(self.others_before.load(Ordering::Relaxed)) <= self.workers {
            return;
        }
        if self
            .window_start
            .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let busy = self.busy_ns.swap(0, Ordering::Relaxed);
        let others = others_in(self.others_before.swap(others_total, Ordering::Relaxed));
        // A window that ran long (the plugin had no calls for a while)
        // allows for its whole length.
        let limit = u128::from(self.limit_ns) * u128::from(elapsed) / u128::from(window);
        // With no one else served (beyond what the two counts can differ
        // by), there is no one to be fair to. Half the limit, for a while,
        // to come back: moved off the workers, a plugin can take at most
        // the long runners' threads, which may be just under the limit;
        // judged on the same line, it would move back and forth every
        // window.
        let over = others > self.workers
            && if self.over() {
                !self.under_half_long_enough(u128::from(busy) * 2 <= limit, start, now)
            } else {
                u128::from(busy) > limit
            };
        if !over || !self.over() {
            self.under_since.store(NOT_UNDER, Ordering::Relaxed);
        }
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

    /// For a plugin judged over: whether the window from `start` to `now`
    /// was `under` half its limit, and every window since
    /// [`COME_BACK_AFTER`] ago was too.
    fn under_half_long_enough(&self, under: bool, start: u64, now: u64) -> bool {
        if !under {
            self.under_since.store(NOT_UNDER, Ordering::Relaxed);
            return false;
        }
        let since = match self.under_since.load(Ordering::Relaxed) {
            NOT_UNDER => {
                self.under_since.store(start, Ordering::Relaxed);
                start
            }
            since => since,
        };
        now.saturating_sub(since) >= COME_BACK_AFTER.as_nanos() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Tell `share` of requests served through it until it has `total`.
    fn through(share: &CpuShare, total: u64) {
        while share.through.load(Ordering::Relaxed) < total {
            share.served_through();
        }
    }

    #[test]
    fn a_plugin_over_its_share_is_judged_so_until_it_takes_under_half_of_it_for_a_second() {
        // 50 % of 2 workers: 100 ms of calls per 100 ms window. The proxy
        // had served 1,000 requests when the plugin was loaded, and serves
        // 11 a window, one of them through the plugin.
        let share = CpuShare::new("p", 50, 2);
        let served = |window: u64| move || 1_000 + window * 11;
        through(&share, 1);
        share.add_at(ms(150), ms(100), served(1));
        assert!(
            !share.over(),
            "the first window only reads the proxy's count"
        );
        share.add_at(ms(150), ms(110), served(1));
        assert!(!share.over(), "judged before its window ended");
        through(&share, 2);
        share.add_at(ms(0), ms(200), served(2));
        assert!(
            share.over(),
            "150 ms of calls in a 100 ms window of two workers at 50 %"
        );
        // Under the limit, but not under half of it: still over.
        through(&share, 3);
        share.add_at(ms(60), ms(300), served(3));
        assert!(share.over(), "came back at 60 % of its limit");
        // A window of 300 ms allows 300 ms: 100 ms is under half, but not
        // for a second yet.
        through(&share, 4);
        share.add_at(ms(100), ms(600), served(4));
        assert!(share.over(), "came back after 300 ms under half");
        // Over half again in one window: the second starts again.
        through(&share, 5);
        share.add_at(ms(51), ms(700), served(5));
        through(&share, 6);
        share.add_at(ms(0), ms(1_600), served(6));
        assert!(share.over(), "came back after 900 ms under half");
        through(&share, 7);
        share.add_at(ms(0), ms(1_700), served(7));
        assert!(!share.over(), "still over after 1 s under half");
        through(&share, 8);
        share.add_at(ms(101), ms(1_800), served(8));
        assert!(share.over(), "101 ms of calls in 100 ms");
    }

    #[test]
    fn a_plugin_past_its_share_early_in_a_window_is_judged_over_then_and_comes_back_only_after_a_second_under_half(
    ) {
        // 50 % of 2 workers: 1 ms of calls per ms. Ten other requests
        // served every 10 ms.
        let share = CpuShare::new("p", 50, 2);
        let served = |at_ms: u64| move || at_ms;
        share.add_at(ms(0), ms(100), served(100));
        assert!(
            !share.over(),
            "the first window only reads the proxy's count"
        );
        share.add_at(ms(12), ms(110), served(110));
        assert!(
            !share.over(),
            "12 ms of calls 10 ms into the window: too soon to judge"
        );
        share.add_at(ms(10), ms(125), served(125));
        assert!(
            !share.over(),
            "22 ms of calls 25 ms into the window: under its share so far"
        );
        share.add_at(ms(25), ms(145), served(145));
        assert!(
            share.over(),
            "47 ms of calls 45 ms into the window: over, not waiting for its end"
        );
        // No calls since: back on the workers only after a second.
        share.add_at(ms(0), ms(200), served(200));
        assert!(share.over(), "55 ms into the window, over until its end");
        share.add_at(ms(0), ms(245), served(245));
        assert!(share.over(), "100 ms under half its share");
        share.add_at(ms(0), ms(1_145), served(1_145));
        assert!(!share.over(), "a second under half its share");
    }

    #[test]
    fn a_window_is_judged_early_only_once_others_were_served_in_it() {
        // 50 % of 2 workers. Other requests at 50 a second, one every
        // 20 ms: too few in 20 ms to tell, three by 60 ms.
        let share = CpuShare::new("p", 50, 2);
        let served = |at_ms: u64| move || at_ms / 20;
        share.add_at(ms(0), ms(100), served(100));
        share.add_at(ms(50), ms(125), served(125));
        assert!(!share.over(), "past its share 25 ms in, one other served");
        share.add_at(ms(40), ms(145), served(145));
        assert!(!share.over(), "past its share 45 ms in, two others served");
        share.add_at(ms(30), ms(165), served(165));
        assert!(
            share.over(),
            "120 ms of calls 65 ms in, three others served: over"
        );
    }

    #[test]
    fn a_plugin_every_request_calls_is_never_judged_over() {
        let share = CpuShare::new("p", 50, 1);
        let mut served = 0;
        for window in 1..=5 {
            // Ten requests a window, each calling the plugin, nothing else.
            for call in 0..10 {
                share.add_at(ms(10), ms(window * 100 + call), || served);
                share.served_through();
                served += 1;
            }
            assert!(!share.over(), "window {window}: no one else was served");
        }
        // Two requests that did not call it (more than the one request
        // worker can hold between the two counts): now it is over.
        served += 2;
        share.add_at(ms(10), ms(600), || served);
        assert!(share.over());
        // Over, but the others are gone: it is back on the workers.
        share.add_at(ms(100), ms(700), || served);
        assert!(!share.over(), "over while no one else was served");
    }

    #[test]
    fn a_request_counted_in_one_window_through_the_plugin_and_in_the_next_by_the_proxy_is_its_own()
    {
        let share = CpuShare::new("p", 50, 2);
        let mut served = 0;
        share.add_at(ms(0), ms(100), || served);
        // Four requests through the plugin, two of them not yet counted by
        // the proxy when the window is judged...
        through(&share, 4);
        served += 2;
        share.add_at(ms(150), ms(200), || served);
        assert!(!share.over(), "no one else was served");
        // ... and counted in the next: still no one else's.
        served += 2;
        share.add_at(ms(150), ms(300), || served);
        assert!(!share.over(), "its own requests read as someone else's");
    }

    #[test]
    fn a_hundred_percent_is_no_limit() {
        assert_eq!(CpuShare::new("p", 100, 2).limit_ns, 0, "never judged");
        assert_eq!(CpuShare::new("p", 50, 2).limit_ns, 100_000_000);
    }
}
