//! The background refresher: asks the broker every interval to refresh what is due, so
//! apps find fresh tokens and idle refresh tokens never die of disuse.

use super::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub async fn run(broker: Arc<Broker>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        match broker.refresh_due().await {
            Ok(0) => {}
            Ok(n) => log::info!("refresher: renewed {n} connection(s)"),
            Err(e) => log::warn!("refresher: {e}; will retry in {interval:?}"),
        }
    }
    log::debug!("refresher stopped");
}
