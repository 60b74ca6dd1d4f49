//! The API keys apps present, kept by hash.

use super::*;

/// An API key as stored.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// Allowed namespace patterns; `None` means every namespace.
    pub namespaces: Option<Vec<String>>,
    /// Allowed connection account patterns; `None` means every account.
    pub accounts: Option<Vec<String>>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// When an app last presented the key, as recorded (at most once a minute); `None`
    /// for a key not used since oauthd began recording it (2026-12-05).
    pub last_used_at_ms: Option<i64>,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The key with this hash, revoked or not (`revoked_at_ms` says).
    async fn find_key(&self, key_hash: SecretHash) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Fails with `Conflict` when an active key already has this name.
    async fn insert_key(
        &self,
        record: ApiKeyRecord,
        key_hash: SecretHash,
    ) -> Result<(), StoreError>;
    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Whether the key with this id (and, when given, this name) is active: not revoked.
    /// With the name the look-up is a point read on every backend.
    async fn key_active(&self, id: &str, name: Option<&str>) -> Result<bool, StoreError>;
    /// Returns false when no active key has this name.
    async fn revoke_key(&self, name: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Records that the key with this hash was used at `at_ms`, unless a later use is
    /// recorded already. A key that is not there is left so.
    async fn note_key_used(&self, key_hash: SecretHash, at_ms: i64) -> Result<(), StoreError>;
}
