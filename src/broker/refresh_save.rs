//! Saving what a refresh brought when the store fails: tried again until it lands, the
//! lease is taken over, or oauthd stops, with the connection's callers told meanwhile.

use super::Broker;
use crate::store::{ConnectionKey, ConnectionRow, SealedTokens, StoreError};
use std::time::Duration;

/// What callers of a connection are told while its refresh here has the provider's
/// answer and has not managed to save it.
pub(super) const SAVE_FAILING: &str = "the provider answered the refresh, and saving its new tokens has not succeeded yet (the store fails); oauthd goes on trying, and hands the new token out once it is saved";

/// How long a save may take before its connection's callers are told it fails: a save
/// takes milliseconds when the store is well.
const SAVE_SLOW: Duration = Duration::from_secs(1);

/// Takes `key` out of `Broker::saves_failing` when its save ends, however it ends.
struct SaveFailing<'a> {
    keys: &'a std::sync::Mutex<std::collections::HashSet<ConnectionKey>>,
    key: ConnectionKey,
}

impl Drop for SaveFailing<'_> {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(&self.key);
        }
    }
}

impl Broker {
    /// Saves what a refresh brought, trying again on a storage fault (a lock another
    /// process holds past the busy timeout, a Redis failover, a Redis at `maxmemory`): the
    /// provider may already have retired the refresh token the store still holds
    /// (rotation), so a result given up here would leave the connection to the user to
    /// connect again. Tried past the lease too: the save lands only while the connection's
    /// generation is the lease's, so once another process takes the lease over (with the
    /// store working again) the save is refused rather than overwriting its tokens; until
    /// then, nobody else can have refreshed. Given up only when oauthd stops (as its stop
    /// ends, said at ERROR: the connection is likely lost). A try that failed may have
    /// landed all the same (its answer lost): a later try that finds the generation moved
    /// on looks whether the stored token is ours.
    pub(super) async fn save_refreshed_while_leased(
        &self,
        row: &ConnectionRow,
        generation: i64,
        sealed: SealedTokens,
        deliveries: Vec<crate::store::NewDelivery>,
        mut leased_until: tokio::time::Instant,
    ) -> Result<bool, StoreError> {
        let key = row.key();
        let _failing = SaveFailing {
            keys: &self.saves_failing,
            key: key.clone(),
        };
        let mut wait = Duration::from_millis(100);
        let mut failed_before = false;
        let lease = self.lease();
        let mut last_said: Option<tokio::time::Instant> = None;
        loop {
            let now = self.clock.now_ms();
            let mut save = self.store.save_refreshed(
                &key,
                generation,
                sealed.clone(),
                now,
                deliveries.clone(),
            );
            // A try still waiting after `SAVE_SLOW` (a lock, a stalled Redis) counts as
            // failing for callers from then on.
            let tried = tokio::select! {
                tried = &mut save => tried,
                () = tokio::time::sleep(SAVE_SLOW) => {
                    self.note_save_failing(&key);
                    save.await
                }
            };
            // A try can take a while (SQLite's busy timeout is 5 s): given up in time for
            // the ERROR to be said before the stop ends.
            let at_stop = self
                .stop_deadline
                .get()
                .is_some_and(|d| tokio::time::Instant::now() + wait + Duration::from_secs(6) >= *d);
            match tried {
                Ok(false) if failed_before => {
                    let stored = self.store.get_connection(&key).await?;
                    let ours = stored.is_some_and(|c| c.access_token == sealed.access_token);
                    if !ours {
                        // Said before "superseded": this process's save may well have
                        // landed, and been what the process that took over refreshed from.
                        log::info!(
                            "refresh {key}: the connection moved on while its save was tried again: a try that failed may have landed before another process took the lease over (which then refreshed from what it saved), or none did"
                        );
                    }
                    return Ok(ours);
                }
                Err(e) if at_stop => {
                    log::error!(
                        "refresh {key}: the provider answered with new tokens, and saving them failed until oauthd stopped ({e}): a provider that rotates refresh tokens has retired the stored one, and the account must then be connected again"
                    );
                    return Err(e);
                }
                Err(e) => {
                    // The lease held on with a write smaller than the save, which may land
                    // where the save does not: other processes wait instead of refreshing
                    // with the refresh token the provider has just retired.
                    let started = tokio::time::Instant::now();
                    if let Ok(true) = self
                        .store
                        .extend_refresh_lease(&key, generation, self.clock.now_ms(), self.lease_ms)
                        .await
                    {
                        leased_until = started + lease;
                    }
                    let past_lease = tokio::time::Instant::now() >= leased_until;
                    // Said at the first failure, then once a minute.
                    if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        let past = if past_lease {
                            " (past the lease: the new tokens are kept until they can be saved)"
                        } else {
                            ""
                        };
                        log::warn!(
                            "refresh {key}: saving the new tokens failed ({e}); trying again{past}"
                        );
                        last_said = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(wait).await;
                    // Past the lease another process may take it over as soon as the store
                    // takes writes again: tried often then, to land first.
                    wait = if past_lease {
                        Duration::from_millis(200)
                    } else {
                        (wait * 2).min(Duration::from_secs(2))
                    };
                    self.note_save_failing(&key);
                    failed_before = true;
                }
                other => return other,
            }
        }
    }

    /// Notes that `key`'s save is failing, until `SaveFailing` takes it out.
    fn note_save_failing(&self, key: &ConnectionKey) {
        if let Ok(mut failing) = self.saves_failing.lock() {
            failing.insert(key.clone());
        }
    }
}
