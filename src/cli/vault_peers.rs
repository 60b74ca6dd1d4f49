//! Serving instances on one store tell each other which vault keys they use. One started
//! with a key another cannot open would split the data between them: what it seals (a
//! state's data, tokens) would not open in the other, and the other's not in it. So a
//! start, and a command that seals, is refused while another instance seals with a key
//! it does not have.

use super::{runtime, Fatal};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::store::{Store, VaultKeysInUse};
use crate::vault::VaultHandle;
use std::sync::Arc;
use std::time::Duration;

/// How often a serving instance tells its keys again (a key file changed meanwhile shows
/// by then), and how long each telling holds: an instance killed without forgetting its
/// keys stops counting after `HOLDS_FOR`.
const TELL_EVERY: Duration = Duration::from_secs(20);
const HOLDS_FOR: Duration = Duration::from_secs(60);

/// Refuses when another serving instance seals with a key `vault` (loaded from `from`)
/// does not have; warns when another cannot open the key `vault` seals with.
pub(super) fn check(
    vault: &VaultHandle,
    from: &str,
    store: &Arc<dyn Store>,
    clock: &Clock,
) -> Result<(), Fatal> {
    let ours = vault.key_ids();
    let others = runtime()?.block_on(store.vault_keys_in_use(clock.now_ms()))?;
    for other in &others {
        let Some(theirs) = other.keys.first() else {
            continue;
        };
        if !ours.contains(theirs) {
            return Err(Fatal(
                format!(
                    "another oauthd serving this store (it said so within the last {}s) seals with vault key {theirs}, which the key loaded from {from} does not have (it has {}): what each sealed would not open in the other (states answering 503 vault_error, tokens that cannot be read). Give every instance, and every command, the same key (the same key file, or a copy of it); an oauthd stopped without saying so stops counting within {}s",
                    HOLDS_FOR.as_secs(),
                    ours.join(", "),
                    HOLDS_FOR.as_secs()
                ),
                2,
            ));
        }
        if let Some(current) = ours.first().filter(|c| !other.keys.contains(c)) {
            log::warn!(
                "another oauthd serving this store does not have vault key {current}, which this one seals with (it has {}): what this one seals will not open there until its key file lists {current} too (the first line seals, every line opens)",
                other.keys.join(", ")
            );
        }
    }
    Ok(())
}

/// Tells the other instances this one's vault keys.
pub(super) struct Teller {
    instance: String,
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    clock: Clock,
    failing: bool,
}

impl Teller {
    pub(super) fn new(store: Arc<dyn Store>, broker: Arc<Broker>, clock: Clock) -> Teller {
        Teller {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            store,
            broker,
            clock,
            failing: false,
        }
    }

    /// Tells once (at start: before the first request, so that an instance started
    /// right after this one hears of it).
    pub(super) async fn tell(&mut self) {
        let now = self.clock.now_ms();
        let note = VaultKeysInUse {
            instance: self.instance.clone(),
            keys: self.broker.vault_key_ids(),
            until_ms: now.saturating_add(HOLDS_FOR.as_millis() as i64),
        };
        match self.store.note_vault_keys(note, now).await {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                log::warn!("could not tell other instances which vault keys this one uses: {e}");
            }
            Err(_) => {}
        }
    }

    /// Tells again every `TELL_EVERY` until `stop`, then takes it back.
    pub(super) async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                _ = tokio::time::sleep(TELL_EVERY) => {}
            }
            self.tell().await;
        }
        if let Err(e) = self.store.forget_vault_keys(&self.instance).await {
            log::debug!("could not take back which vault keys this oauthd used: {e}");
        }
    }
}
