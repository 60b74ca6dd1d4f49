//! `ConnectionStore` on SQLite. Reads through the pool, writes through the writer.

use super::outbox::enqueue;
use super::SqliteStore;
use crate::store::{
    AccountIdentity, ConnectionCount, ConnectionKey, ConnectionRow, ConnectionSave,
    ConnectionStore, NewDelivery, RefreshFailure, SealedTokens, StoreError, Told,
};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

pub(super) const COLUMNS: &str =
    "provider, account, status, scopes, token_type, access_token, refresh_token,
    access_expires_at, created_at, updated_at, last_refresh_at, last_error, failures, retry_at,
    lease_until, generation, account_sub, account_email, account_name, connected_at,
    failing_since, failing_notified";

pub(super) fn row(r: &Row<'_>) -> rusqlite::Result<ConnectionRow> {
    Ok(ConnectionRow {
        provider: r.get(0)?,
        account: r.get(1)?,
        status: r.get(2)?,
        scopes: r.get(3)?,
        token_type: r.get(4)?,
        access_token: r.get(5)?,
        refresh_token: r.get(6)?,
        access_expires_at_ms: r.get(7)?,
        created_at_ms: r.get(8)?,
        updated_at_ms: r.get(9)?,
        last_refresh_at_ms: r.get(10)?,
        last_error: r.get(11)?,
        failures: r.get(12)?,
        retry_at_ms: r.get(13)?,
        lease_until_ms: r.get(14)?,
        generation: r.get(15)?,
        identity: AccountIdentity {
            sub: r.get(16)?,
            email: r.get(17)?,
            name: r.get(18)?,
        },
        connected_at_ms: r.get(19)?,
        failing_since_ms: r.get(20)?,
        told: Told::from_stored(r.get(21)?),
    })
}

/// Stores the tokens of a (re)connect (`ConnectionStore::save_connection`), inside the
/// caller's transaction.
pub(super) fn upsert(
    conn: &rusqlite::Connection,
    save: &ConnectionSave,
    now_ms: i64,
) -> rusqlite::Result<Option<ConnectionRow>> {
    let (t, identity) = (&save.tokens, &save.identity);
    let was = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM connections WHERE provider = ?1 AND account = ?2"
        ))?
        .query_row(params![save.key.provider, save.key.account], row)
        .optional()?;
    conn.prepare_cached(
        "INSERT INTO connections (provider, account, status, scopes, token_type,
            access_token, refresh_token, access_expires_at, created_at, updated_at,
            last_refresh_at, account_sub, account_email, account_name, connected_at,
            generation, failing_notified)
         VALUES (?1, ?2, 'active', ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?14, ?9, ?10, ?11, ?8, ?12, ?13)
         ON CONFLICT (provider, account) DO UPDATE SET
            status = 'active', scopes = ?3, token_type = ?4, access_token = ?5,
            refresh_token = ?6, access_expires_at = ?7, updated_at = ?8,
            last_refresh_at = ?14, last_error = NULL, failures = 0, retry_at = NULL,
            lease_until = NULL, generation = generation + 1, account_sub = ?9,
            account_email = ?10, account_name = ?11, connected_at = ?8,
            failing_since = NULL, failing_notified = ?13",
    )?
    .execute(params![
        save.key.provider,
        save.key.account,
        t.scopes,
        t.token_type,
        t.access_token,
        t.refresh_token,
        t.access_expires_at_ms,
        now_ms,
        identity.sub,
        identity.email,
        identity.name,
        crate::store::first_generation(now_ms),
        save.told.stored(),
        save.from_provider.then_some(now_ms)
    ])?;
    Ok(was)
}

#[async_trait]
impl ConnectionStore for SqliteStore {
    fn change_watch(&self) -> Option<std::sync::Arc<crate::store::ChangeWatch>> {
        Some(self.watch.clone())
    }

    async fn get_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionRow>, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (p, a) = (provider.to_owned(), account.to_owned());
        self.point_read("reading a connection", move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM connections WHERE provider = ?1 AND account = ?2"
            ))?
            .query_row(params![p, a], row)
            .optional()
        })
        .await
    }

    async fn list_connections(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        self.read("listing connections", |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM connections ORDER BY provider, account"
            ))?
            .query_map([], row)?
            .collect()
        })
        .await
    }

    async fn accounts_signed_in_as(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (provider, sub) = (provider.to_owned(), sub.to_owned());
        self.read("looking for connections of one account", move |conn| {
            // The primary key's first column bounds the walk to the provider's rows; no
            // token is read.
            conn.prepare_cached(
                "SELECT account FROM connections
                 WHERE provider = ?1 AND account_sub = ?2 AND status = ?3 ORDER BY account",
            )?
            .query_map(
                params![
                    provider,
                    sub,
                    crate::store::ConnectionStatus::Active.as_str()
                ],
                |r| r.get(0),
            )?
            .collect()
        })
        .await
    }

    async fn count_connections(&self) -> Result<Vec<ConnectionCount>, StoreError> {
        self.read("counting connections", |conn| {
            conn.prepare_cached(
                "SELECT provider, status, failures > 0, count(*) FROM connections
                 GROUP BY provider, status, failures > 0",
            )?
            .query_map([], |r| {
                Ok(ConnectionCount {
                    provider: r.get(0)?,
                    status: r.get(1)?,
                    failing: r.get(2)?,
                    count: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })?
            .collect()
        })
        .await
    }

    async fn save_connection(
        &self,
        save: ConnectionSave,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<Option<ConnectionRow>, StoreError> {
        self.writer
            .run_atomic("saving a connection", move |conn| {
                let was = upsert(conn, &save, now_ms)?;
                enqueue(conn, &events)?;
                Ok(was)
            })
            .await
    }

    async fn acquire_refresh_lease(
        &self,
        key: &ConnectionKey,
        seen_generation: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (p, a) = (provider.to_owned(), account.to_owned());
        self.writer
            .run("taking a refresh lease", move |conn| {
                conn.prepare_cached(
                    "UPDATE connections SET lease_until = ?3 + ?4, generation = generation + 1,
                       takeover_noted_at = NULL
                     WHERE provider = ?1 AND account = ?2 AND generation = ?5
                       AND (lease_until IS NULL OR lease_until <= ?3)
                     RETURNING generation",
                )?
                .query_row(params![p, a, now_ms, lease_ms, seen_generation], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await
    }

    async fn release_refresh_lease(
        &self,
        key: &ConnectionKey,
        generation: i64,
    ) -> Result<bool, StoreError> {
        let (p, a) = (key.provider.clone(), key.account.clone());
        self.writer
            .run("letting go of a refresh lease", move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE connections SET lease_until = NULL, generation = generation + 1
                         WHERE provider = ?1 AND account = ?2 AND generation = ?3",
                    )?
                    .execute(params![p, a, generation])?;
                Ok(n == 1)
            })
            .await
    }

    async fn note_lease_takeover(
        &self,
        key: &ConnectionKey,
        generation: i64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (p, a) = (key.provider.clone(), key.account.clone());
        self.writer
            .run("noting a refresh lease to take over", move |conn| {
                conn.prepare_cached(
                    "UPDATE connections SET takeover_noted_at = ?5
                     WHERE provider = ?1 AND account = ?2 AND generation = ?3
                       AND lease_until = ?4 AND lease_until <= ?5",
                )?
                .execute(params![p, a, generation, lease_until_ms, now_ms])
                .map(|n| n == 1)
            })
            .await
    }

    async fn extend_refresh_lease(
        &self,
        key: &ConnectionKey,
        generation: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let (p, a) = (key.provider.clone(), key.account.clone());
        self.writer
            .run("holding a refresh lease", move |conn| {
                conn.prepare_cached(
                    "UPDATE connections SET lease_until = ?3 + ?4
                     WHERE provider = ?1 AND account = ?2 AND generation = ?5",
                )?
                .execute(params![p, a, now_ms, lease_ms, generation])
                .map(|n| n == 1)
            })
            .await
    }

    async fn save_refreshed(
        &self,
        key: &ConnectionKey,
        generation: i64,
        t: SealedTokens,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (p, a) = (provider.to_owned(), account.to_owned());
        self.writer
            .run_atomic("saving refreshed tokens", move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE connections SET status = 'active',
                            scopes = coalesce(?4, scopes), token_type = ?5, access_token = ?6,
                            refresh_token = coalesce(?7, refresh_token), access_expires_at = ?8,
                            updated_at = ?9, last_refresh_at = ?9, last_error = NULL,
                            failures = 0, retry_at = NULL, lease_until = NULL,
                            generation = generation + 1, failing_since = NULL,
                            failing_notified = 0
                         WHERE provider = ?1 AND account = ?2 AND generation = ?3",
                    )?
                    .execute(params![
                        p,
                        a,
                        generation,
                        t.scopes,
                        t.token_type,
                        t.access_token,
                        t.refresh_token,
                        t.access_expires_at_ms,
                        now_ms
                    ])?;
                if n == 1 {
                    enqueue(conn, &events)?;
                }
                Ok(n == 1)
            })
            .await
    }

    async fn save_refresh_failure(
        &self,
        key: &ConnectionKey,
        generation: i64,
        f: RefreshFailure<'_>,
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (p, a, e) = (provider.to_owned(), account.to_owned(), f.error.to_owned());
        let (status, retry_at_ms, now_ms, told, refresh_token) = (
            f.status,
            f.retry_at_ms,
            f.now_ms,
            f.told.stored(),
            f.refresh_token,
        );
        self.writer
            .run_atomic("recording a failed refresh", move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE connections SET status = ?4, last_error = ?5,
                            failures = failures + 1, retry_at = ?6, updated_at = ?7,
                            lease_until = NULL, generation = generation + 1,
                            failing_since = coalesce(failing_since, ?7),
                            failing_notified = ?8,
                            refresh_token = coalesce(?9, refresh_token)
                         WHERE provider = ?1 AND account = ?2 AND generation = ?3",
                    )?
                    .execute(params![
                        p,
                        a,
                        generation,
                        status.as_str(),
                        e,
                        retry_at_ms,
                        now_ms,
                        told,
                        refresh_token
                    ])?;
                if n == 1 {
                    enqueue(conn, &events)?;
                }
                Ok(n == 1)
            })
            .await
    }

    async fn reseal_connection(
        &self,
        key: &ConnectionKey,
        old: (Vec<u8>, Option<Vec<u8>>),
        new: (Vec<u8>, Option<Vec<u8>>),
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (p, a) = (provider.to_owned(), account.to_owned());
        self.writer
            .run("re-sealing a connection", move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE connections SET access_token = ?5, refresh_token = ?6
                         WHERE provider = ?1 AND account = ?2
                           AND access_token = ?3 AND refresh_token IS ?4",
                    )?
                    .execute(params![p, a, old.0, old.1, new.0, new.1])?;
                Ok(n == 1)
            })
            .await
    }

    async fn delete_connection(
        &self,
        key: &ConnectionKey,
        generation: i64,
        access_token: &[u8],
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (p, a, t) = (
            provider.to_owned(),
            account.to_owned(),
            access_token.to_vec(),
        );
        self.writer
            .run_atomic("deleting a connection", move |conn| {
                let n = conn
                    .prepare_cached(
                        "DELETE FROM connections WHERE provider = ?1 AND account = ?2
                           AND generation = ?3 AND access_token = ?4",
                    )?
                    .execute(params![p, a, generation, t])?;
                if n > 0 {
                    enqueue(conn, &events)?;
                }
                Ok(n > 0)
            })
            .await
    }
}
