//! The sweeper: removes expired states on a schedule, in bounded batches.
//!
//! Expiry is enforced on read, so the sweeper is about disk space and about not keeping
//! an app's data longer than needed — never about correctness. Each batch is its own
//! write job: requests queued meanwhile commit between batches instead of waiting for
//! the whole sweep.

use super::{StateStore, StoreError, SweepCount};
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
}

/// One full sweep: batches until a batch comes back short.
pub async fn sweep_once(
    store: &dyn StateStore,
    policy: &SweepPolicy,
    now_ms: i64,
) -> Result<SweepCount, StoreError> {
    let purge_before = now_ms.saturating_sub(policy.grace.as_millis() as i64);
    let mut total = SweepCount::default();
    loop {
        let n = store
            .sweep_expired(now_ms, purge_before, policy.batch)
            .await?;
        let last = n.expired() < policy.batch && n.purged < policy.batch;
        total.add(n);
        if last {
            return Ok(total);
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
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let swept = sweep_once(store.as_ref(), &policy, clock.now_ms()).await;
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
