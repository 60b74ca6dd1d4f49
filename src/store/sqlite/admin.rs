//! `AdminStore` on SQLite.

use super::SqliteStore;
use crate::secret::SecretHash;
use crate::store::{AdminSecretKind, AdminStore, StoreError};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl AdminStore for SqliteStore {
    async fn insert_admin_secret(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.writer
            .run("storing an admin secret", move |conn| {
                conn.prepare_cached(
                    "INSERT INTO admin_secrets (secret_hash, kind, expires_at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![&hash.0[..], kind.as_str(), expires_at_ms])
                .map(|_| ())
            })
            .await
    }

    async fn take_admin_secret(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.writer
            .run("using an admin login link", move |conn| {
                let expires: Option<i64> = conn
                    .prepare_cached(
                        "DELETE FROM admin_secrets WHERE secret_hash = ?1 AND kind = ?2
                         RETURNING expires_at",
                    )?
                    .query_row(params![&hash.0[..], kind.as_str()], |r| r.get(0))
                    .optional()?;
                Ok(expires.is_some_and(|e| e > now_ms))
            })
            .await
    }

    async fn admin_secret_valid(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.read("checking an admin session", move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM admin_secrets WHERE secret_hash = ?1 AND kind = ?2 AND expires_at > ?3",
            )?
            .query_row(params![&hash.0[..], kind.as_str(), now_ms], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
        })
        .await
    }

    async fn any_admin_session(&self, now_ms: i64) -> Result<bool, StoreError> {
        self.read("checking for admin sessions", move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM admin_secrets WHERE kind = 'session' AND expires_at > ?1 LIMIT 1",
            )?
            .query_row([now_ms], |_| Ok(()))
            .optional()
            .map(|found| found.is_some())
        })
        .await
    }
}
