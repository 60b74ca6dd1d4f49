//! Room for another connection under a tenant's cap (`limits.max_connections_per_key`),
//! checked where a connection is asked for and again where it is stored.

use super::{Broker, BrokerError};
use crate::store::ApiKeyRecord;

/// A turn at adding a connection for a capped key, held from the room check until the
/// connection is stored: checks made at once would each pass before any was stored, and a
/// burst would overshoot the cap by its size. `None` for a key without a cap.
pub type RoomTurn<'a> = Option<tokio::sync::MutexGuard<'a, ()>>;

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
    /// started before the key reached the cap stop there); within one process, the checks
    /// take turns with the stores they guard. A cap of 0: no cap.
    pub async fn connection_room(
        &self,
        key: &ApiKeyRecord,
        provider: &str,
        account: &str,
    ) -> Result<RoomTurn<'_>, BrokerError> {
        let max = self.max_connections_per_key;
        if max == 0 || key.accounts.is_none() {
            return Ok(None);
        }
        let turn = self.connection_adds.lock().await;
        let all = self.store.list_connections().await?;
        if all
            .iter()
            .any(|c| c.provider == provider && c.account == account)
        {
            return Ok(Some(turn));
        }
        let held = all
            .iter()
            .filter(|c| {
                crate::apikeys::may_use_provider(key, &c.provider)
                    && crate::apikeys::may_use_account(key, &c.account)
            })
            .count();
        if held < max {
            return Ok(Some(turn));
        }
        Err(BrokerError::TooManyConnections { held, max })
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
        if self.max_connections_per_key == 0 {
            return Ok(None);
        }
        let counted = match self.store.list_keys().await {
            Ok(keys) => match keys.iter().find(|k| k.id == key_id) {
                Some(key) => self.connection_room(key, provider, account).await,
                None => Ok(None),
            },
            Err(e) => Err(e.into()),
        };
        match counted {
            Err(BrokerError::TooManyConnections { .. }) | Ok(_) => counted,
            Err(e) => {
                log::warn!("connect {provider}/{account}: the connections of the API key that started it could not be counted ({e}); going on");
                Ok(None)
            }
        }
    }
}
