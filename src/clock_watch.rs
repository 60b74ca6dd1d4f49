//! Says in the log when the wall clock steps (NTP fixing a clock that ran ahead or behind,
//! a virtual machine restored from a snapshot, a clock set by hand): what oauthd stored was
//! counted on the clock before the step, and the operator should know why states, tokens
//! and retries behave as they then do.

use crate::clock::Clock;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the wall clock is compared with the monotonic one.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// A step smaller than this is a clock being slewed, or a slow look: not said.
const SAID_FROM_MS: i64 = 5_000;

/// How far the wall clock moved beyond the monotonic clock between two looks: positive
/// forward, negative back; `None` within `SAID_FROM_MS`.
pub fn step_ms(wall_before: i64, wall_now: i64, elapsed: Duration) -> Option<i64> {
    let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
    let step = wall_now
        .saturating_sub(wall_before)
        .saturating_sub(elapsed_ms);
    (step.abs() >= SAID_FROM_MS).then_some(step)
}

/// What the log says of a step.
pub fn said(step: i64, now_ms: i64) -> String {
    let secs = step.abs() / 1000;
    if step < 0 {
        format!(
            "the system clock stepped back by {secs} s (it now reads {}): times oauthd stored before the step lie that much further ahead. States live that much longer than their TTL; connections written ahead of the clock are refreshed rather than trusted, and retries set further off than any wait are tried now. Keep the clock right before oauthd starts (NTP at boot: systemd-timesyncd's time-sync.target)",
            crate::clock::rfc3339(now_ms)
        )
    } else {
        format!(
            "the system clock stepped forward by {secs} s (it now reads {}): states made before the step expired that much early, and tokens are refreshed for the time the clock says",
            crate::clock::rfc3339(now_ms)
        )
    }
}

/// The clock's reading when the watch began: a step after it is said, also one made
/// before the watch's task first ran.
pub struct ClockWatch {
    clock: Clock,
    before: std::cell::Cell<(i64, Instant)>,
}

impl ClockWatch {
    pub fn new(clock: Clock) -> ClockWatch {
        let before = std::cell::Cell::new((clock.now_ms(), Instant::now()));
        ClockWatch { clock, before }
    }

    /// Looks every second until `stop`; says each step at WARN.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        crate::broker::refresher::every(LOOK_EVERY, stop, || {
            let now = (self.clock.now_ms(), Instant::now());
            let (wall, at) = self.before.replace(now);
            if let Some(step) = step_ms(wall, now.0, now.1.duration_since(at)) {
                if step < 0 {
                    self.clock.note_stepped_back();
                }
                log::warn!("{}", said(step, now.0));
            }
            std::future::ready(())
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_the_wall_clocks_move_beyond_the_monotonic_ones() {
        let second = Duration::from_secs(1);
        assert_eq!(step_ms(10_000, 11_000, second), None);
        assert_eq!(step_ms(10_000, 11_400, second), None, "a slow look");
        assert_eq!(
            step_ms(10_000, 11_000 - 259_200_000, second),
            Some(-259_200_000)
        );
        assert_eq!(step_ms(10_000, 11_000 + 7_200_000, second), Some(7_200_000));
        assert!(said(-259_200_000, 0).contains("stepped back by 259200 s"));
        assert!(said(7_200_000, 0).contains("stepped forward by 7200 s"));
    }
}
