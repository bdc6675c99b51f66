//! Time as the monitor sees it, passed in (after influxdb3's `TimeProvider`): lease renewal,
//! delivery back-off, idle-window closing and checkpoint intervals read this clock, so tests
//! move time forward instead of sleeping.

use std::time::{Duration, Instant};

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync {
    /// Wall-clock time, ms since the Unix epoch (delivery due times, point timestamps).
    fn now_ms(&self) -> i64;
    /// Monotonic time (intervals: renewal, idleness, checkpoints).
    fn instant(&self) -> Instant;
    /// Monotonic time since `earlier` (zero if `earlier` is later).
    fn since(&self, earlier: Instant) -> Duration {
        self.instant().saturating_duration_since(earlier)
    }
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
pub(crate) use manual::ManualClock;

#[cfg(test)]
mod manual {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::Clock;

    /// A clock that moves only when told to: both readings advance together (tests).
    #[derive(Debug)]
    pub(crate) struct ManualClock {
        start_ms: i64,
        base: Instant,
        advanced_ms: AtomicU64,
    }

    impl ManualClock {
        /// Starts at `start_ms` (wall clock, ms since the epoch).
        pub(crate) fn new(start_ms: i64) -> ManualClock {
            ManualClock { start_ms, base: Instant::now(), advanced_ms: AtomicU64::new(0) }
        }

        /// Moves time forward by `ms`.
        pub(crate) fn advance(&self, ms: u64) {
            self.advanced_ms.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.start_ms + self.advanced_ms.load(Ordering::SeqCst) as i64
        }

        fn instant(&self) -> Instant {
            self.base + Duration::from_millis(self.advanced_ms.load(Ordering::SeqCst))
        }
    }
}
