//! Says in the log when the wall clock steps (NTP fixing a clock that ran ahead or behind,
//! a virtual machine restored from a snapshot, a clock set by hand): what oauthd stored was
//! counted on the clock before the step, and the operator should know why states, tokens
//! and retries behave as they then do. And when it differs from the clock of a store
//! instances on other hosts share (Redis): each instance judges the times the others
//! stored by its own clock.

use crate::clock::Clock;
use crate::store::Store;
use std::cell::Cell;
use std::sync::Arc;
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

/// How often this host's clock is compared with a shared store's.
const AGAINST_STORE_EVERY: Duration = Duration::from_secs(30);
/// A reading of the store's clock that took longer is not used: it may be off by half.
const READ_WITHIN: Duration = Duration::from_millis(500);
/// How often a difference is said again while it lasts (unless it changes by
/// `SAID_FROM_MS`).
const SAY_AGAIN_AFTER: Duration = Duration::from_secs(3600);

/// How far this host's clock is ahead of the store's (negative: behind), in ms: `None` for
/// a store on this host's clock, one not reached, or a reading too slow to tell.
pub async fn ahead_of_store(store: &dyn Store, clock: &Clock) -> Option<i64> {
    let sent = Instant::now();
    let ours = clock.now_ms();
    let theirs = store.clock_ms().await.ok()??;
    let round = sent.elapsed();
    (round <= READ_WITHIN).then(|| {
        let half = i64::try_from(round.as_millis() / 2).unwrap_or(0);
        ours.saturating_add(half).saturating_sub(theirs)
    })
}

/// What the log says of this host's clock against `store`'s; `None` within
/// `SAID_FROM_MS`.
pub fn said_against_store(ahead_ms: i64, store: &str) -> Option<String> {
    if ahead_ms.abs() < SAID_FROM_MS {
        return None;
    }
    let secs = ahead_ms.abs() / 1000;
    let (way, here) = if ahead_ms > 0 {
        (
            "ahead of",
            "this oauthd refreshes tokens the others stored that much early and ends their states that much early (404 before the TTL an app asked for); an instance behind it hands out tokens past their expiry",
        )
    } else {
        (
            "behind",
            "this oauthd hands out tokens the others stored up to that much past the expiry the provider gave, and keeps their states that much past their TTL",
        )
    };
    Some(format!(
        "this host's clock is {secs} s {way} the clock of {store}, which oauthd instances on other hosts share: each judges the times the others stored (tokens' expiry, states' TTLs) by its own clock, so {here}. Set every host's clock right, Redis' too (NTP: systemd-timesyncd or chrony)"
    ))
}

/// What to say of the clocks after a look found this host's `ahead_ms` of the store's,
/// the last difference said (and when) being `last`.
#[derive(Debug, PartialEq)]
enum Against {
    Quiet,
    Differs,
    AgreesAgain,
}

fn against(last: Option<(i64, Instant)>, ahead_ms: i64, now: Instant) -> Against {
    let off = ahead_ms.abs() >= SAID_FROM_MS;
    match last {
        None if off => Against::Differs,
        None => Against::Quiet,
        // A second inside the mark, so that a difference about at it is not said over and
        // over, now differing and now agreeing.
        Some(_) if ahead_ms.abs() < SAID_FROM_MS - 1_000 => Against::AgreesAgain,
        Some(_) if !off => Against::Quiet,
        Some((said, at))
            if (ahead_ms - said).abs() >= SAID_FROM_MS
                || now.duration_since(at) >= SAY_AGAIN_AFTER =>
        {
            Against::Differs
        }
        Some(_) => Against::Quiet,
    }
}

/// Compares this host's clock with a shared store's every `AGAINST_STORE_EVERY` (the
/// first at once): a difference is said at WARN when found, again when it changes by
/// `SAID_FROM_MS` or an hour later, and its end at INFO.
pub struct StoreClockWatch {
    store: Arc<dyn Store>,
    clock: Clock,
    said: Cell<Option<(i64, Instant)>>,
}

impl StoreClockWatch {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> StoreClockWatch {
        StoreClockWatch {
            store,
            clock,
            said: Cell::new(None),
        }
    }

    /// A store on this host's clock (SQLite) has none to compare: each look is a no-op.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        crate::broker::refresher::every(AGAINST_STORE_EVERY, stop, || async {
            let Some(ahead) = ahead_of_store(self.store.as_ref(), &self.clock).await else {
                return;
            };
            let now = Instant::now();
            match against(self.said.get(), ahead, now) {
                Against::Quiet => {}
                Against::Differs => {
                    if let Some(text) = said_against_store(ahead, &self.store.describe()) {
                        log::warn!("{text}");
                    }
                    self.said.set(Some((ahead, now)));
                }
                Against::AgreesAgain => {
                    log::info!(
                        "this host's clock agrees with the clock of {} again (within {} ms)",
                        self.store.describe(),
                        ahead.abs()
                    );
                    self.said.set(None);
                }
            }
        })
        .await;
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

    #[test]
    fn a_difference_with_the_stores_clock_is_said_when_found_changed_or_an_hour_on() {
        let t = Instant::now();
        let minute = Duration::from_secs(60);
        assert_eq!(against(None, 4_999, t), Against::Quiet);
        assert_eq!(against(None, -5_000, t), Against::Differs);
        assert_eq!(
            against(Some((-5_000, t)), -9_000, t + minute),
            Against::Quiet
        );
        assert_eq!(
            against(Some((-5_000, t)), -10_000, t + minute),
            Against::Differs
        );
        assert_eq!(
            against(Some((-5_000, t)), -5_000, t + SAY_AGAIN_AFTER),
            Against::Differs
        );
        assert_eq!(
            against(Some((-5_000, t)), 300, t + minute),
            Against::AgreesAgain
        );
        assert_eq!(against(Some((5_000, t)), 4_999, t + minute), Against::Quiet);
        assert_eq!(
            against(Some((5_000, t)), 3_999, t + minute),
            Against::AgreesAgain
        );
        assert_eq!(said_against_store(4_999, "Redis"), None);
        let behind = said_against_store(-120_400, "Redis at x").unwrap_or_default();
        assert!(
            behind.contains("120 s behind the clock of Redis at x"),
            "{behind}"
        );
        assert!(behind.contains("past the expiry"), "{behind}");
        let ahead = said_against_store(7_000, "Redis at x").unwrap_or_default();
        assert!(
            ahead.contains("7 s ahead of the clock of Redis at x"),
            "{ahead}"
        );
    }
}
