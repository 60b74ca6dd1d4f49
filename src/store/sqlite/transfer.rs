//! `TransferStore` on SQLite: rows read through the pool, connections written through the
//! writer with every column as given.

use super::SqliteStore;
use crate::secret::SecretHash;
use crate::store::{ApiKeyRecord, ConnectionRow, StateRow, StoreError, TransferStore};
use async_trait::async_trait;
use rusqlite::{params, ErrorCode, OptionalExtension};

#[async_trait]
impl TransferStore for SqliteStore {
    async fn keys_to_copy(&self) -> Result<Vec<(ApiKeyRecord, SecretHash)>, StoreError> {
        self.read("reading API keys to copy", |conn| {
            conn.prepare_cached(&format!(
                "SELECT {}, key_hash FROM api_keys WHERE revoked_at IS NULL ORDER BY name",
                super::keys::COLUMNS
            ))?
            .query_map([], |r| {
                let hash: Vec<u8> = r.get(7)?;
                let hash =
                    SecretHash::from_slice(&hash).ok_or(rusqlite::Error::InvalidColumnType(
                        7,
                        "key_hash".into(),
                        rusqlite::types::Type::Blob,
                    ))?;
                Ok((super::keys::record(r)?, hash))
            })?
            .collect()
        })
        .await
    }

    async fn states_to_copy(&self, now_ms: i64) -> Result<Vec<StateRow>, StoreError> {
        self.read("reading states to copy", move |conn| {
            super::states::live_rows(conn, "", now_ms, false)
        })
        .await
    }

    // Kept in `meta` as `copied_to`.
    async fn copied_to(&self) -> Result<Option<String>, StoreError> {
        self.read("reading where the store was copied to", |conn| {
            conn.prepare_cached("SELECT value FROM meta WHERE name = 'copied_to'")?
                .query_row([], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn note_copied_to(&self, note: Option<String>) -> Result<(), StoreError> {
        self.writer
            .run("noting where the store was copied to", move |conn| {
                match note {
                    Some(note) => conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO meta (name, value) VALUES ('copied_to', ?1)",
                        )?
                        .execute([note]),
                    None => conn
                        .prepare_cached("DELETE FROM meta WHERE name = 'copied_to'")?
                        .execute([]),
                }
                .map(drop)
            })
            .await
    }

    async fn put_connection(&self, row: ConnectionRow) -> Result<(), StoreError> {
        self.writer
            .run("copying a connection", move |conn| {
                let put = conn
                    .prepare_cached(&format!(
                        "INSERT INTO connections ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                         ?10, ?11, ?12, ?13, ?14, NULL, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
                        super::connections::COLUMNS
                    ))?
                    .execute(params![
                        row.provider,
                        row.account,
                        row.status.as_str(),
                        row.scopes,
                        row.token_type,
                        row.access_token,
                        row.refresh_token,
                        row.access_expires_at_ms,
                        row.created_at_ms,
                        row.updated_at_ms,
                        row.last_refresh_at_ms,
                        row.last_error,
                        row.failures,
                        row.retry_at_ms,
                        row.generation,
                        row.identity.sub,
                        row.identity.email,
                        row.identity.name,
                        row.connected_at_ms,
                        row.failing_since_ms,
                        row.told.stored()
                    ]);
                match put {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                        Ok(Err(StoreError::Conflict(format!(
                            "connection {}/{} is there already",
                            row.provider, row.account
                        ))))
                    }
                    Err(e) => Err(e),
                }
            })
            .await?
    }
}
