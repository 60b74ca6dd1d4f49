//! Storage: the traits the services use, and their backends.
//!
//! Owns SQL and Redis. Knows nothing of HTTP or OAuth; never sees a secret in
//! clear text, only its SHA-256. Every error says what was being done.

mod admin;
mod api_keys;
pub mod change_watch;
mod connections;
mod device;
mod error;
pub mod outbox;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sqlite;
mod states;
pub mod sweeper;
pub mod target;
mod transfer;
mod vault_notes;

use crate::secret::SecretHash;
use async_trait::async_trait;
pub use change_watch::ChangeWatch;
pub use outbox::{
    ClaimRoom, DeliveryFilter, DeliveryOutcome, DeliveryRow, DeliveryStatus, GoneTarget,
    NewDelivery, OutboxStore, Retried,
};
use std::sync::Arc;

pub use admin::*;
pub use api_keys::*;
pub use connections::*;
pub use device::*;
pub use error::*;
pub use states::*;
pub use transfer::*;
pub use vault_notes::*;

/// What the broker needs: connections, device flows, the outbox their events go to, and
/// the API keys (whether the key that started a flow is still active).
pub trait BrokerStore: ConnectionStore + DeviceFlowStore + OutboxStore + KeyStore {}
impl<T: ConnectionStore + DeviceFlowStore + OutboxStore + KeyStore> BrokerStore for T {}

/// One backend holding everything: the SQLite file or a shared Redis.
#[async_trait]
pub trait Store: StateStore + KeyStore + AdminStore + BrokerStore + TransferStore {
    /// Where the data lives, for logs and reports (never a password).
    fn describe(&self) -> String;
    /// What an operator should hear about at start (say, Redis without persistence).
    async fn warnings(&self) -> Result<Vec<String>, StoreError>;
    /// A deep self-test for `oauthd check`: what was verified, or what is wrong.
    async fn integrity(&self) -> Result<String, String>;
    /// Notes that `oauthd serve` runs on this store (kept from the first time). Only a
    /// store beside which a vault key file may be made (SQLite) keeps it.
    async fn mark_served(&self, _now_ms: i64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Notes that this `oauthd serve` stopped cleanly (SQLite: its mark, which a copy of
    /// the database file made without its -wal holds, goes).
    async fn mark_stopped(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Puts what this process wrote into the store's own file (SQLite: a checkpoint of
    /// the -wal), so that the file alone holds it: for a terminal command about to print
    /// what it made (a new key), which a kill before its end would otherwise leave only in
    /// the -wal. Nothing to do where there is no such file.
    async fn settle(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether `oauthd serve` has run on this store (false where it is not kept).
    async fn was_served(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// The id this store holds for itself, made `candidate` when it holds none: written
    /// once and never ending, so that an oauthd can tell a store that lost what it held (a
    /// Redis restarted empty, a `FLUSHALL`) from one it could not reach for a while, or
    /// whose notes ended early by a clock's step.
    async fn store_id(&self, candidate: &str) -> Result<String, StoreError>;
    /// Tells the other instances on this store which vault keys this one uses (over
    /// what it told before), and forgets what others told that ended before now; returns
    /// when the instance first told, as recorded: after every other note that holds
    /// (`first_told`). `now_ms` is this process's clock: a store
    /// that instances on other machines share (Redis) goes by its own, so that hosts whose
    /// clocks differ still see each other's notes for as long as they hold.
    async fn note_vault_keys(&self, note: VaultKeysNote, now_ms: i64) -> Result<i64, StoreError>;
    /// What serving instances told of their vault keys that still holds now (`now_ms`, or
    /// the store's own clock, as for `note_vault_keys`).
    async fn vault_keys_in_use(&self, now_ms: i64) -> Result<Vec<VaultKeysInUse>, StoreError>;
    /// Forgets what `instance` told (it stops).
    async fn forget_vault_keys(&self, instance: &str) -> Result<(), StoreError>;
    /// The store's own clock (unix ms) where instances on other hosts share the store
    /// (Redis' `TIME`); `None` where every instance runs on this host's (SQLite).
    async fn clock_ms(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_statuses_read_back_and_unknown_words_are_errors_not_defaults() {
        for s in [ConnectionStatus::Active, ConnectionStatus::NeedsReauth] {
            assert_eq!(ConnectionStatus::parse(s.as_str()), Ok(s));
        }
        assert!(ConnectionStatus::parse("suspended").is_err());
        assert!(ConnectionStatus::parse("").is_err());
        for s in ["pending", "connected", "denied", "expired", "failed"] {
            assert_eq!(
                DeviceFlowStatus::parse(s).map(DeviceFlowStatus::as_str),
                Ok(s)
            );
        }
        let e = DeviceFlowStatus::parse("paused").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown device flow status \"paused\" in the store"
        );
    }
}
