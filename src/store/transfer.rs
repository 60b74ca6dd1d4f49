//! What `oauthd copy` reads from one store and writes into another, as it is stored: API
//! keys by their hash, connections with their sealed tokens, live states with their sealed
//! data. Nothing is opened or sealed on the way, so the vault key goes along unchanged.

use super::*;

#[async_trait]
pub trait TransferStore: Send + Sync {
    /// Every active API key, with the hash it is found by.
    async fn keys_to_copy(&self) -> Result<Vec<(ApiKeyRecord, SecretHash)>, StoreError>;
    /// Every state live at `now_ms`, as stored.
    async fn states_to_copy(&self, now_ms: i64) -> Result<Vec<StateRow>, StoreError>;
    /// Stores `row` as it is (its generation, status, errors and identity too), without
    /// its refresh lease; `Conflict` when the connection exists.
    async fn put_connection(&self, row: ConnectionRow) -> Result<(), StoreError>;
    /// What `oauthd copy` noted in the store it copied from (where to, and when), which a
    /// start on this store refuses; `None` when it holds none.
    async fn copied_to(&self) -> Result<Option<String>, StoreError>;
    /// Notes `note` (`None`: takes it out).
    async fn note_copied_to(&self, note: Option<String>) -> Result<(), StoreError>;
}
