//! The sweeper: removes expired states on a schedule, in small, paced batches.
//!
//! Expiry is enforced on read, so the sweeper is about disk space and about not keeping
//! an app's data longer than needed — never about correctness, and never in a hurry. Each
//! batch is its own write job, so requests queued meanwhile commit between batches; and a
//! backlog (a million states left by apps that never finished their flows) is worked off
//! at `per_second`, so the single writer spends a bounded share of its time on it — and
//! at `min_per_second` while requests are waiting for the store, so that under load the
//! sweep yields to them and still gets done.
//!
//! A stop ends a sweep between two batches: it never waits for a backlog to be worked off
//! (a million states are most of a minute even at full pace); the next start goes on.

use super::{StateStore, StoreError, SweepCount, SweepStates};
use crate::clock::Clock;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub struct SweepPolicy {
    pub interval: Duration,
    /// How long after expiry a consume still answers 410 instead of 404.
    pub grace: Duration,
    pub batch: usize,
    /// Most expired states removed per second (`states.sweep_per_second`).
    pub per_second: u32,
    /// The pace while requests are waiting for the store (`states.sweep_min_per_second`).
    pub min_per_second: u32,
    /// Most tombstones kept (`states.max_total_states`): the oldest beyond go.
    pub max_tombstones: u64,
}

/// One full sweep: batches until a batch comes back short, or until `stop` turns true
/// (what was removed by then is counted).
pub async fn sweep_once(
    store: &dyn SweepStates,
    policy: &SweepPolicy,
    now_ms: i64,
    stop: &mut watch::Receiver<bool>,
) -> Result<SweepCount, StoreError> {
    let purge_before = now_ms.saturating_sub(policy.grace.as_millis() as i64);
    // Each batch's share of a second at the allowed pace: the floor pace while requests
    // wait for the store.
    let share = |per_second: u32| {
        Duration::from_secs_f64(policy.batch as f64 / f64::from(per_second.max(1)))
    };
    let mut total = SweepCount::default();
    loop {
        let started = tokio::time::Instant::now();
        let n = store
            .sweep_expired(now_ms, purge_before, policy.batch, policy.max_tombstones)
            .await?;
        let last = n.expired() < policy.batch && n.purged < policy.batch;
        total.add(n);
        if last || *stop.borrow() {
            return Ok(total);
        }
        let pace = if store.busy() {
            policy.min_per_second
        } else {
            policy.per_second
        };
        tokio::select! {
            _ = tokio::time::sleep_until(started + share(pace)) => {}
            // A closed channel is a stop too: nobody is left to ask for one.
            _ = stop.changed() => return Ok(total),
        }
        tokio::task::yield_now().await;
    }
}

/// Runs `sweep_once` every `policy.interval` until `stop` turns true. Failures are logged
/// and retried at the next tick: a locked or full disk must not end the sweeper.
pub async fn run(
    store: Arc<dyn StateStore>,
    policy: SweepPolicy,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(policy.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Checked before waiting as well: a sweep that a stop ended has seen the change.
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let swept = sweep_once(store.as_ref(), &policy, clock.now_ms(), &mut stop).await;
        if let Ok(n) = &swept {
            for (namespace, count) in &n.expired_by_namespace {
                crate::metrics::states_swept(namespace, *count);
            }
        }
        match swept {
            Ok(n) if n.expired() > 0 || n.purged > 0 => log::info!(
                "sweeper: removed {} expired state(s), forgot {} past the grace window",
                n.expired(),
                n.purged
            ),
            Ok(_) => log::debug!("sweeper: nothing expired"),
            Err(e) => log::warn!("sweeper: {e}; will retry in {:?}", policy.interval),
        }
    }
    log::debug!("sweeper stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// A table holding `left` expired states, removed `batch` at a time; `busy` says
    /// whether requests are waiting.
    struct Backlog {
        left: Mutex<usize>,
        batches: Mutex<usize>,
        busy: bool,
    }

    #[async_trait]
    impl SweepStates for Backlog {
        async fn sweep_expired(
            &self,
            _: i64,
            _: i64,
            batch: usize,
            _: u64,
        ) -> Result<SweepCount, StoreError> {
            let mut left = self
                .left
                .lock()
                .map_err(|_| StoreError::unavailable("test", "poisoned"))?;
            let n = batch.min(*left);
            *left -= n;
            *self
                .batches
                .lock()
                .map_err(|_| StoreError::unavailable("test", "poisoned"))? += 1;
            let mut count = SweepCount::default();
            count.expired_by_namespace.insert("ns".into(), n as u64);
            Ok(count)
        }

        fn busy(&self) -> bool {
            self.busy
        }
    }

    fn backlog(left: usize, busy: bool) -> Backlog {
        Backlog {
            left: Mutex::new(left),
            batches: Mutex::new(0),
            busy,
        }
    }

    #[tokio::test]
    async fn a_backlog_is_removed_at_the_paced_rate_not_at_once() {
        let store = backlog(1_000, false);
        // 250 a batch at 2,500 a second: each batch gets 100 ms.
        let policy = SweepPolicy {
            interval: Duration::from_secs(60),
            grace: Duration::from_secs(60),
            batch: 250,
            per_second: 2_500,
            min_per_second: 250,
            max_tombstones: 1000,
        };
        let started = std::time::Instant::now();
        let (_keep, mut stop) = watch::channel(false);
        let swept = sweep_once(&store, &policy, 0, &mut stop).await.unwrap();
        assert_eq!(swept.expired(), 1_000);
        // Five batches (the last comes back short), four pauses between them.
        assert_eq!(*store.batches.lock().unwrap(), 5);
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_stop_ends_a_sweep_between_two_batches() {
        // 100 a batch at 100 a second: the whole backlog would take 100 s.
        let policy = SweepPolicy {
            interval: Duration::from_secs(60),
            grace: Duration::from_secs(60),
            batch: 100,
            per_second: 100,
            min_per_second: 100,
            max_tombstones: 1000,
        };
        let store = backlog(10_000, false);
        let (stopping, mut stop) = watch::channel(false);
        let sweeping = sweep_once(&store, &policy, 0, &mut stop);
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = stopping.send(true);
        };
        let (swept, ()) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(sweeping, stopper)
        })
        .await
        .expect("the sweep went on after the stop");
        // The batch before the stop counts; none ran after it.
        assert_eq!(swept.unwrap().expired(), 100);
        assert_eq!(*store.batches.lock().unwrap(), 1);
        assert_eq!(*store.left.lock().unwrap(), 9_900);
    }

    #[tokio::test]
    async fn while_requests_wait_the_sweep_slows_to_its_floor() {
        let policy = SweepPolicy {
            interval: Duration::from_secs(60),
            grace: Duration::from_secs(60),
            batch: 100,
            per_second: 10_000,
            min_per_second: 1_000,
            max_tombstones: 1000,
        };
        // 500 states, 5 batches, 4 pauses: 10 ms each when idle, 100 ms each when busy.
        let (_keep, mut stop) = watch::channel(false);
        let mut took = Vec::new();
        for busy in [false, true] {
            let store = backlog(500, busy);
            let started = std::time::Instant::now();
            let swept = sweep_once(&store, &policy, 0, &mut stop).await.unwrap();
            assert_eq!(swept.expired(), 500);
            took.push(started.elapsed());
        }
        let (idle_took, busy_took) = (took[0], took[1]);
        assert!(busy_took >= Duration::from_millis(400), "{busy_took:?}");
        assert!(idle_took < Duration::from_millis(300), "{idle_took:?}");
    }
}
