//! Time, from the host. Built natively (tests), the wall clock is the
//! system's unless a test pinned it with [`crate::testing::set_now_ms`].

#[cfg(target_arch = "wasm32")]
pub use crate::bindings::weir::plugin::clock::{monotonic_ns, now_ms};

#[cfg(not(target_arch = "wasm32"))]
pub use native::{monotonic_ns, now_ms};

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native {
    use std::cell::Cell;
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    thread_local! {
        /// Set by `testing::set_now_ms`; per thread, as tests run in parallel.
        pub(crate) static PINNED_MS: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// Wall-clock time, milliseconds since the Unix epoch.
    pub fn now_ms() -> u64 {
        PINNED_MS.with(Cell::get).unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    }

    /// Monotonic time in nanoseconds.
    pub fn monotonic_ns() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}
