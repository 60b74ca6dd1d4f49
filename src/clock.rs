//! Time, as a value services are given: wall-clock milliseconds in the form oauthd stores,
//! and RFC 3339 in the form it shows.
//!
//! Nothing reads the system time except through a [`Clock`]: the server and each CLI
//! command make one system clock and hand it to the services they build; tests hand in a
//! manual one and move it, so TTLs, grace windows, backoff and keep-alive are tested
//! without waiting. Stores never read a clock: they are given times as arguments.

use chrono::{DateTime, SecondsFormat, Utc};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where "now" comes from. Cheap to clone; clones of a manual clock move together, and
/// clones of any clock share whether it was seen to step back.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source, Arc<AtomicBool>);

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    /// The time, and how far each read moves it on.
    Manual(Arc<AtomicI64>, i64),
}

impl Clock {
    /// The machine's wall clock.
    pub fn system() -> Clock {
        Clock(Source::System, Arc::default())
    }

    /// A clock that stands at `start_ms` until moved with [`Clock::advance`].
    pub fn manual(start_ms: i64) -> Clock {
        Clock::ticking(start_ms, Duration::ZERO)
    }

    /// A manual clock that also moves `step` forward each time it is read, as a real
    /// clock does between two reads: for tests where which of two reads came first
    /// matters.
    pub fn ticking(start_ms: i64, step: Duration) -> Clock {
        let step = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
        Clock(
            Source::Manual(Arc::new(AtomicI64::new(start_ms)), step),
            Arc::default(),
        )
    }

    /// Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => Utc::now().timestamp_millis(),
            Source::Manual(t, 0) => t.load(Ordering::SeqCst),
            Source::Manual(t, step) => t.fetch_add(*step, Ordering::SeqCst),
        }
    }

    /// Steps a manual clock (and every clone of it) back, as NTP steps a clock that ran
    /// ahead, and notes it (`stepped_back`). The system clock: returns false and changes
    /// nothing.
    pub fn step_back(&self, by: Duration) -> bool {
        let moved = self.shift(-millis(by));
        if moved {
            self.note_stepped_back();
        }
        moved
    }

    /// Notes that this clock went back (`clock_watch` saw it, or the data was found written
    /// ahead of it at the start): times stored before may lie ahead of it.
    pub fn note_stepped_back(&self) {
        self.1.store(true, Ordering::Relaxed);
    }

    /// Whether this clock was seen to go back since the process began.
    pub fn stepped_back(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }

    /// Moves a manual clock (and every clone of it) forward. The system clock moves by
    /// itself: returns false and changes nothing.
    pub fn advance(&self, by: Duration) -> bool {
        self.shift(millis(by))
    }

    /// Moves a manual clock by `ms`; false for the system clock.
    fn shift(&self, ms: i64) -> bool {
        match &self.0 {
            Source::System => false,
            Source::Manual(t, _) => {
                t.fetch_add(ms, Ordering::SeqCst);
                true
            }
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How far ahead of this process's clock a stored time may be before it is taken for one
/// written before the clock was stepped back (NTP fixing a clock that ran ahead, a virtual
/// machine restored from a snapshot). The clocks of instances sharing a store differ by
/// less.
pub const CLOCK_SLACK_MS: i64 = 60_000;

/// Whether a stored time `at_ms` lies more than `CLOCK_SLACK_MS` ahead of `now_ms`.
pub fn is_ahead(at_ms: i64, now_ms: i64) -> bool {
    at_ms > now_ms.saturating_add(CLOCK_SLACK_MS)
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2026-11-21T08:35:59.123Z`.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Whole seconds from `now_ms` until `at_ms`, rounded up and at least 1: a `Retry-After`.
pub fn seconds_until(now_ms: i64, at_ms: i64) -> u64 {
    u64::try_from(at_ms.saturating_sub(now_ms))
        .unwrap_or(0)
        .div_ceil(1000)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_until_rounds_up_and_is_at_least_one() {
        assert_eq!(seconds_until(1_000, 1_001), 1);
        assert_eq!(seconds_until(1_000, 3_000), 2);
        assert_eq!(seconds_until(1_000, 3_001), 3);
        assert_eq!(seconds_until(5_000, 1_000), 1);
        assert_eq!(seconds_until(i64::MIN, i64::MAX), 9_223_372_036_854_776);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_clones_with_it() {
        let clock = Clock::manual(1_000);
        let twin = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        assert!(twin.advance(Duration::from_secs(90)));
        assert_eq!(clock.now_ms(), 91_000);
        assert!(!Clock::system().advance(Duration::from_secs(1)));
        let ticking = Clock::ticking(1_000, Duration::from_millis(1));
        assert_eq!(ticking.now_ms(), 1_000);
        assert_eq!(ticking.now_ms(), 1_001);
        ticking.advance(Duration::from_secs(1));
        assert_eq!(ticking.now_ms(), 2_002);
    }
}
