//! The background refresher: asks the broker every interval to refresh what is due, so
//! apps find fresh tokens and idle refresh tokens never die of disuse.

use super::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub async fn run(broker: Arc<Broker>, interval: Duration, stop: watch::Receiver<bool>) {
    let stopping = stop.clone();
    every(interval, stop, || async {
        match broker.refresh_due(&|| *stopping.borrow()).await {
            Ok(0) => {}
            Ok(n) => log::info!("refresher: renewed {n} connection(s)"),
            Err(e) => log::warn!("refresher: {e}; will retry in {interval:?}"),
        }
    })
    .await;
    log::debug!("refresher stopped");
}

/// Runs `tick` every `interval` (the first right away) until `stop` changes; a slow tick
/// delays the next one instead of piling them up.
pub async fn every<F, Fut>(interval: Duration, mut stop: watch::Receiver<bool>, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        tick().await;
    }
}
