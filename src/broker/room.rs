//! Room for another connection under a tenant's cap (`limits.max_connections_per_key`),
//! checked where a connection is asked for and again where it is stored.

use super::{Broker, BrokerError};
use crate::store::ApiKeyRecord;
use std::sync::Arc;
use tokio::sync::Mutex;

/// What becomes of the tokens of a flow refused where it stores (its key reached its cap
/// meanwhile). Not revoked: a provider that revokes a whole grant (Google per user and
/// client; the test provider per browser sign-in) would end the grant of any connection
/// of the same account at the provider, stored or being stored by another key's flow at
/// that moment, which no check made before the revocation can rule out. Dropped, they are
/// in nobody's hands.
pub(super) const REFUSED_TOKENS: &str = "nothing stored; the tokens the provider handed out for it are kept nowhere and not revoked (a revocation may end the grant of another connection of the same account at the provider)";

/// A turn at adding a connection for a capped key, held from the room check until the
/// connection is stored: checks made at once would each pass before any was stored, and a
/// burst would overshoot the cap by its size. `None` for a key without a cap.
pub type RoomTurn = Option<tokio::sync::OwnedMutexGuard<()>>;

/// The turns at adding connections, one per set of account patterns: keys of one scope
/// (a tenant's old and new key while it rotates them) count the same connections, and
/// took turns of their own let both pass a cap of 1 (11 of 15 pairs stored 2); other
/// keys' additions waiting on a slow store hold up none of theirs (keys that shared one
/// of a few turns by their id's hash did: an import waited 40 s for another tenant's
/// device flow). One entry per scope of a capped key that added a connection since the
/// start, a few bytes each; only keys made with the CLI have one.
#[derive(Default)]
pub(super) struct Turns(std::sync::Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>);

impl Turns {
    fn of(&self, scope: &str) -> Arc<Mutex<()>> {
        let mut turns = match self.0.lock() {
            Ok(turns) => turns,
            Err(poisoned) => poisoned.into_inner(),
        };
        turns.entry(scope.to_owned()).or_default().clone()
    }
}

impl Broker {
    /// `Err(TooManyConnections)` when `key`, limited to accounts (a tenant's, made with
    /// `--account`), reaches `limits.max_connections_per_key` connections and
    /// `provider`/`account` is not one of them: a tenant's imports (made-up tokens, each a
    /// connection refreshed under the operator's client id and said by event when it
    /// fails) and connect and device flows for new accounts stop there, where the rate
    /// budget only slows them. A key without account limits is the operator's own app's,
    /// which reaches (and may delete) every connection: not capped, or one app serving
    /// many users would stop at the cap. Reconnecting or replacing a connection the key
    /// has is never refused. Checked when a flow starts and again when it connects (flows
    /// started before the key reached the cap stop there). A cap of 0: no cap.
    ///
    /// Holds the key's turn until the returned guard is dropped: for a caller that stores
    /// the connection then. One that only asks uses `has_room`.
    pub async fn connection_room(
        &self,
        key: &ApiKeyRecord,
        provider: &str,
        account: &str,
    ) -> Result<RoomTurn, BrokerError> {
        if !self.capped(key) {
            return Ok(None);
        }
        let mut patterns = key.accounts.clone().unwrap_or_default();
        patterns.sort();
        let scope = patterns.join("\n");
        let turn = self.connection_adds.of(&scope).lock_owned().await;
        self.count_room(key, provider, account).await?;
        Ok(Some(turn))
    }

    /// `connection_room` for a caller that stores nothing now (a flow's start, its
    /// confirmation page): no turn taken, nor waited for.
    pub async fn has_room(
        &self,
        key: &ApiKeyRecord,
        provider: &str,
        account: &str,
    ) -> Result<(), BrokerError> {
        match self.capped(key) {
            true => self.count_room(key, provider, account).await,
            false => Ok(()),
        }
    }

    fn capped(&self, key: &ApiKeyRecord) -> bool {
        self.max_connections_per_key > 0 && key.accounts.is_some()
    }

    async fn count_room(
        &self,
        key: &ApiKeyRecord,
        provider: &str,
        account: &str,
    ) -> Result<(), BrokerError> {
        let max = self.max_connections_per_key;
        let all = self.store.list_connections().await?;
        if all
            .iter()
            .any(|c| c.provider == provider && c.account == account)
        {
            return Ok(());
        }
        let held = all
            .iter()
            .filter(|c| {
                crate::apikeys::may_use_provider(key, &c.provider)
                    && crate::apikeys::may_use_account(key, &c.account)
            })
            .count();
        match held < max {
            true => Ok(()),
            false => Err(BrokerError::TooManyConnections { held, max }),
        }
    }

    /// `connection_room` for the key of id `key_id`, which started a flow that connects
    /// now: `Err` only for `TooManyConnections`. A store that cannot say does not cost
    /// the person's approval (the provider may have handed out tokens already): the
    /// flow goes on, and the log says so. A key that is gone has no room to check
    /// (whether it may still connect is `check_starter`'s and the device poll's to say).
    pub(super) async fn starter_room(
        &self,
        key_id: &str,
        provider: &str,
        account: &str,
    ) -> Result<RoomTurn, BrokerError> {
        let counted = match self.starter_key(key_id).await {
            Ok(Some(key)) => self.connection_room(&key, provider, account).await,
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match counted {
            Err(BrokerError::TooManyConnections { .. }) | Ok(_) => counted,
            Err(e) => {
                log::warn!("connect {provider}/{account}: the connections of the API key that started it could not be counted ({e}); going on");
                Ok(None)
            }
        }
    }

    /// `has_room` for the key of id `key_id`, which started a flow not connecting yet.
    pub(super) async fn starter_has_room(
        &self,
        key_id: &str,
        provider: &str,
        account: &str,
    ) -> Result<(), BrokerError> {
        match self.starter_key(key_id).await? {
            Some(key) => self.has_room(&key, provider, account).await,
            None => Ok(()),
        }
    }

    /// The key of id `key_id` when a cap applies at all.
    async fn starter_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, BrokerError> {
        if self.max_connections_per_key == 0 {
            return Ok(None);
        }
        let keys = self.store.list_keys().await?;
        Ok(keys.into_iter().find(|k| k.id == key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key always gets its own turn, and no other key shares it: keys that shared one
    /// of 64 turns by their id's hash waited for each other (an import, 40 s).
    #[test]
    fn each_key_has_a_turn_of_its_own() {
        let turns = Turns::default();
        assert!(Arc::ptr_eq(&turns.of("key-1"), &turns.of("key-1")));
        let all: Vec<_> = (0..1000).map(|n| turns.of(&format!("key-{n}"))).collect();
        for (n, turn) in all.iter().enumerate() {
            assert!(all
                .iter()
                .skip(n + 1)
                .all(|other| !Arc::ptr_eq(turn, other)));
        }
    }
}
