//! Room for another connection under a tenant's cap (`limits.max_connections_per_key`),
//! checked where a connection is asked for and again where it is stored.

use super::{Broker, BrokerError};
use crate::store::ApiKeyRecord;

/// A turn at adding a connection for a capped key, held from the room check until the
/// connection is stored: checks made at once would each pass before any was stored, and a
/// burst would overshoot the cap by its size. `None` for a key without a cap.
pub type RoomTurn<'a> = Option<tokio::sync::MutexGuard<'a, ()>>;

/// How many turns there are: keys share them by their id's hash, so that one key's
/// addition waiting on a slow store holds up few others (none, mostly).
const TURNS: usize = 64;

/// The turns at adding connections, by key.
pub(super) struct Turns([tokio::sync::Mutex<()>; TURNS]);

impl Default for Turns {
    fn default() -> Self {
        Turns(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl Turns {
    fn of(&self, key_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key_id.hash(&mut hasher);
        let n = usize::try_from(hasher.finish() % TURNS as u64).unwrap_or_default();
        let [first, ..] = &self.0;
        self.0.get(n).unwrap_or(first)
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
    ) -> Result<RoomTurn<'_>, BrokerError> {
        if !self.capped(key) {
            return Ok(None);
        }
        let turn = self.connection_adds.of(&key.id).lock().await;
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
    ) -> Result<RoomTurn<'_>, BrokerError> {
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

    /// One key always gets its own turn, and keys spread over all of them: one key's
    /// addition waiting on a slow store held up every capped key's (a confirmation page
    /// waited 79 s).
    #[test]
    fn each_key_has_its_turn_and_keys_spread_over_them() {
        let turns = Turns::default();
        let first = turns.of("key-1") as *const _;
        assert_eq!(first, turns.of("key-1") as *const _);
        let mut used = std::collections::HashSet::new();
        for n in 0..1000 {
            used.insert(turns.of(&format!("key-{n}")) as *const tokio::sync::Mutex<()>);
        }
        assert_eq!(used.len(), TURNS);
    }
}
