//! Rate-limited warnings. Some failures come in floods (every request
//! while plugin capacity is exhausted, every callout of a plugin whose
//! destination is refused); each is counted in metrics, and the log gets at
//! most one line per interval saying how many were left out, so a flood
//! can neither hide in `debug` nor drown the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most one warning per site per this.
const INTERVAL: Duration = Duration::from_secs(1);

/// One call site's warning budget.
pub struct Throttle {
    started: Instant,
    /// Milliseconds since `started` (plus one, so 0 means never) of the
    /// last warning logged.
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl Throttle {
    /// `Some(n)` when a warning may be logged now, `n` being how many were
    /// left out since the previous one; `None` (and counted) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= INTERVAL.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn the_first_warning_passes_and_a_burst_is_counted() {
        let throttle = Throttle::default();
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.allow(), None);
        }
        assert_eq!(
            throttle
                .suppressed
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
    }
}
