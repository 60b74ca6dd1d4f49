//! `AdminStore` on SQLite.

use super::SqliteStore;
use crate::secret::SecretHash;
use crate::store::{AdminSecretKind, AdminStore, SecretUse, StoreError};
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

    async fn replace_login_link(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        ends: &[AdminSecretKind],
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let ends: Vec<&'static str> = ends.iter().map(|k| k.as_str()).collect();
        self.writer
            .run_atomic("storing a login link", move |conn| {
                delete_links(conn, &ends)?;
                conn.prepare_cached(
                    "INSERT INTO admin_secrets (secret_hash, kind, expires_at)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![&hash.0[..], kind.as_str(), expires_at_ms])
                .map(|_| ())
            })
            .await
    }

    async fn end_login_links(&self, ends: &[AdminSecretKind]) -> Result<(), StoreError> {
        let ends: Vec<&'static str> = ends.iter().map(|k| k.as_str()).collect();
        self.writer
            .run_atomic("ending login links", move |conn| {
                delete_links(conn, &ends)?;
                Ok(())
            })
            .await
    }

    async fn use_admin_secret(
        &self,
        (hash, kind): (SecretHash, AdminSecretKind),
        how: SecretUse,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        if how == SecretUse::Check {
            return self
                .read("checking an admin session", move |conn| {
                    conn.prepare_cached(
                        "SELECT 1 FROM admin_secrets
                         WHERE secret_hash = ?1 AND kind = ?2 AND expires_at > ?3",
                    )?
                    .query_row(params![&hash.0[..], kind.as_str(), now_ms], |_| Ok(()))
                    .optional()
                    .map(|found| found.is_some())
                })
                .await;
        }
        self.writer
            .run("using an admin secret", move |conn| {
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

    async fn list_admin_sessions(&self, now_ms: i64) -> Result<Vec<(SecretHash, i64)>, StoreError> {
        self.read("listing admin sessions", move |conn| {
            conn.prepare_cached(
                "SELECT secret_hash, expires_at FROM admin_secrets
                 WHERE kind = 'session' AND expires_at > ?1 ORDER BY expires_at",
            )?
            .query_map([now_ms], |r| {
                let hash: Vec<u8> = r.get(0)?;
                Ok((hash, r.get(1)?))
            })?
            .map(|row| {
                let (hash, expires) = row?;
                Ok(SecretHash::from_slice(&hash).map(|h| (h, expires)))
            })
            .filter_map(|r: rusqlite::Result<_>| r.transpose())
            .collect()
        })
        .await
    }

    async fn delete_admin_sessions(
        &self,
        hashes: Option<Vec<SecretHash>>,
    ) -> Result<usize, StoreError> {
        self.writer
            .run("revoking admin sessions", move |conn| match &hashes {
                None => conn
                    .prepare_cached("DELETE FROM admin_secrets WHERE kind = 'session'")?
                    .execute([]),
                Some(list) => {
                    let mut stmt = conn.prepare_cached(
                        "DELETE FROM admin_secrets WHERE kind = 'session' AND secret_hash = ?1",
                    )?;
                    let mut n = 0;
                    for h in list {
                        n += stmt.execute([&h.0[..]])?;
                    }
                    Ok(n)
                }
            })
            .await
    }
}

/// Deletes every login link of these kinds (`AdminSecretKind::as_str`).
fn delete_links(conn: &rusqlite::Connection, kinds: &[&str]) -> rusqlite::Result<()> {
    for kind in kinds {
        conn.prepare_cached("DELETE FROM admin_secrets WHERE kind = ?1")?
            .execute([kind])?;
    }
    Ok(())
}
