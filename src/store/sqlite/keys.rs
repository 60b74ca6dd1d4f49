//! `KeyStore` on SQLite. Lookups go through the read pool; changes through the writer.

use super::SqliteStore;
use crate::secret::SecretHash;
use crate::store::{ApiKeyRecord, KeyStore, StoreError};
use async_trait::async_trait;
use rusqlite::{params, ErrorCode, OptionalExtension, Row};

pub(super) const COLUMNS: &str =
    "id, name, namespaces, created_at, revoked_at, accounts, last_used_at";

/// A JSON array of patterns, or NULL.
fn patterns(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<Vec<String>>> {
    let text: Option<String> = r.get(i)?;
    text.map(|json| {
        serde_json::from_str(&json).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        })
    })
    .transpose()
}

pub(super) fn record(r: &Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        namespaces: patterns(r, 2)?,
        accounts: patterns(r, 5)?,
        created_at_ms: r.get(3)?,
        revoked_at_ms: r.get(4)?,
        last_used_at_ms: r.get(6)?,
    })
}

fn patterns_json(list: &Option<Vec<String>>) -> Result<Option<String>, StoreError> {
    list.as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::unavailable("storing an API key", e))
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn find_key(&self, key_hash: SecretHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.point_read("checking an API key", move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_keys WHERE key_hash = ?1"
            ))?
            .query_row([&key_hash.0[..]], record)
            .optional()
        })
        .await
    }

    async fn insert_key(&self, rec: ApiKeyRecord, key_hash: SecretHash) -> Result<(), StoreError> {
        let namespaces = patterns_json(&rec.namespaces)?;
        let accounts = patterns_json(&rec.accounts)?;
        self.writer
            .run("storing an API key", move |conn| {
                let inserted = conn
                    .prepare_cached(
                        "INSERT INTO api_keys (id, name, key_hash, namespaces, created_at, accounts)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        rec.id,
                        rec.name,
                        &key_hash.0[..],
                        namespaces,
                        rec.created_at_ms,
                        accounts
                    ]);
                match inserted {
                    Ok(_) => Ok(Ok(())),
                    Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                        Ok(Err(StoreError::Conflict(format!(
                            "an active API key named {:?} already exists",
                            rec.name
                        ))))
                    }
                    Err(e) => Err(e),
                }
            })
            .await?
    }

    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read("listing API keys", |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_keys ORDER BY name, created_at"
            ))?
            .query_map([], record)?
            .collect()
        })
        .await
    }

    async fn key_active(&self, id: &str, name: Option<&str>) -> Result<bool, StoreError> {
        let (id, name) = (id.to_owned(), name.map(str::to_owned));
        self.read("checking an API key", move |conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM api_keys
                   WHERE id = ?1 AND (?2 IS NULL OR name = ?2) AND revoked_at IS NULL)",
            )?
            .query_row(params![id, name], |r| r.get(0))
        })
        .await
    }

    async fn revoke_key(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.writer
            .run("revoking an API key", move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE api_keys SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                    )?
                    .execute(params![name, now_ms])?;
                Ok(n > 0)
            })
            .await
    }

    async fn note_key_used(&self, key_hash: SecretHash, at_ms: i64) -> Result<(), StoreError> {
        self.writer
            .run("recording an API key's use", move |conn| {
                conn.prepare_cached(
                    "UPDATE api_keys SET last_used_at = ?2
                     WHERE key_hash = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                )?
                .execute(params![&key_hash.0[..], at_ms])?;
                Ok(())
            })
            .await
    }
}
