//! `StateStore` on SQLite. Every write goes through the group-commit writer.

use super::SqliteStore;
use crate::secret::SecretHash;
use crate::store::{
    InsertRules, NamespaceFilter, StateRow, StateStore, StoreError, SweepCount, Taken,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

#[async_trait]
impl StateStore for SqliteStore {
    async fn insert_state(&self, row: StateRow, rules: InsertRules) -> Result<bool, StoreError> {
        let max_live = i64::try_from(rules.max_live).unwrap_or(i64::MAX);
        self.writer
            .run("storing a state", move |conn| {
                // The count is kept by triggers (sql/0004); the single writer makes the
                // check and the insert one step.
                let mut insert = conn.prepare_cached(
                    "INSERT INTO states (key_hash, namespace, data, created_at, expires_at)
                     SELECT ?1, ?2, ?3, ?4, ?5
                     WHERE coalesce((SELECT live FROM namespace_counts WHERE namespace = ?2), 0) < ?6",
                )?;
                let args = params![
                    &row.key_hash.0[..],
                    row.namespace,
                    row.data,
                    row.created_at_ms,
                    row.expires_at_ms,
                    max_live
                ];
                if insert.execute(args)? == 1 {
                    return Ok(true);
                }
                // The count includes expired states the sweeper has not reached yet, and
                // those must not count: set this namespace's aside now, then look again.
                if retire_expired(conn, &row.namespace, rules.now_ms)? == 0 {
                    return Ok(false);
                }
                Ok(insert.execute(args)? == 1)
            })
            .await
    }

    async fn take_state(
        &self,
        key_hash: SecretHash,
        filter: &NamespaceFilter,
    ) -> Result<Taken, StoreError> {
        let (ns, prefix) = filter.parts();
        let (ns, prefix) = (ns.to_owned(), prefix);
        self.writer
            .run("consuming a state", move |conn| {
                // One statement: the row is gone for everyone else the moment we see it,
                // and only a row of the namespace asked for is touched at all.
                let row = conn
                    .prepare_cached(
                        "DELETE FROM states WHERE key_hash = ?1 AND (namespace = ?2
                           OR (?3 AND substr(namespace, 1, length(?2)) = ?2))
                         RETURNING namespace, data, created_at, expires_at",
                    )?
                    .query_row(params![&key_hash.0[..], ns, prefix], |r| {
                        Ok(StateRow {
                            key_hash,
                            namespace: r.get(0)?,
                            data: r.get(1)?,
                            created_at_ms: r.get(2)?,
                            expires_at_ms: r.get(3)?,
                        })
                    })
                    .optional()?;
                if let Some(row) = row {
                    return Ok(Taken::Row(row));
                }
                let tombstone: Option<(String, i64)> = conn
                    .prepare_cached(
                        "DELETE FROM expired_states WHERE key_hash = ?1 AND (namespace = ?2
                           OR (?3 AND substr(namespace, 1, length(?2)) = ?2))
                         RETURNING namespace, expired_at",
                    )?
                    .query_row(params![&key_hash.0[..], ns, prefix], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                Ok(match tombstone {
                    Some((namespace, expired_at)) => Taken::ExpiredTombstone {
                        namespace,
                        expired_at_ms: Some(expired_at),
                    },
                    None => Taken::Missing,
                })
            })
            .await
    }

    async fn sweep_expired(
        &self,
        now_ms: i64,
        purge_before_ms: i64,
        batch: usize,
    ) -> Result<SweepCount, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        self.writer
            .run_atomic("sweeping expired states", move |conn| {
                // Move expired states aside: keep hash and namespace for the grace window,
                // drop the data now.
                let moved: Vec<(Vec<u8>, String, i64)> = conn
                    .prepare_cached(
                        "DELETE FROM states WHERE key_hash IN
                         (SELECT key_hash FROM states WHERE expires_at <= ?1
                          ORDER BY expires_at LIMIT ?2)
                         RETURNING key_hash, namespace, expires_at",
                    )?
                    .query_map(params![now_ms, batch], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut keep = conn.prepare_cached(
                    "INSERT OR REPLACE INTO expired_states (key_hash, namespace, expired_at)
                     VALUES (?1, ?2, ?3)",
                )?;
                let mut expired_by_namespace = std::collections::BTreeMap::new();
                for (key_hash, namespace, expired_at) in &moved {
                    keep.execute(params![key_hash, namespace, expired_at])?;
                    *expired_by_namespace.entry(namespace.clone()).or_default() += 1;
                }
                let purged = conn
                    .prepare_cached(
                        "DELETE FROM expired_states WHERE key_hash IN
                         (SELECT key_hash FROM expired_states WHERE expired_at < ?1
                          ORDER BY expired_at LIMIT ?2)",
                    )?
                    .execute(params![purge_before_ms, batch])?;
                // Finished or abandoned device flows and stale admin secrets go too.
                conn.prepare_cached("DELETE FROM device_flows WHERE expires_at < ?1")?
                    .execute([purge_before_ms])?;
                conn.prepare_cached("DELETE FROM admin_secrets WHERE expires_at < ?1")?
                    .execute([now_ms])?;
                Ok(SweepCount {
                    expired_by_namespace,
                    purged,
                })
            })
            .await
    }

    async fn state_data_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_owned();
        self.read("reading states by namespace", move |conn| {
            conn.prepare_cached(
                "SELECT data FROM states
                 WHERE substr(namespace, 1, length(?1)) = ?1 AND data IS NOT NULL",
            )?
            .query_map([prefix], |r| r.get(0))?
            .collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read("checking the database", |conn| {
            conn.query_row(
                "SELECT count(*) FROM (SELECT 1 FROM states LIMIT 1)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|_| ())
        })
        .await?;
        self.writer
            .check_writable("checking the database is writable")
            .await
    }
}

/// Moves one namespace's expired states aside as the sweeper does (tombstones keep the
/// 410 answer for the grace window), all or nothing. Returns how many moved.
fn retire_expired(conn: &Connection, namespace: &str, now_ms: i64) -> rusqlite::Result<usize> {
    conn.execute_batch("SAVEPOINT retire_expired")?;
    let moved = (|| {
        let mut keep = conn.prepare_cached(
            "INSERT OR REPLACE INTO expired_states (key_hash, namespace, expired_at)
             VALUES (?1, ?2, ?3)",
        )?;
        let rows: Vec<(Vec<u8>, i64)> = conn
            .prepare_cached(
                "DELETE FROM states WHERE expires_at <= ?1 AND namespace = ?2
                 RETURNING key_hash, expires_at",
            )?
            .query_map(params![now_ms, namespace], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (key_hash, expired_at) in &rows {
            keep.execute(params![key_hash, namespace, expired_at])?;
        }
        Ok(rows.len())
    })();
    match moved {
        Ok(n) => conn.execute_batch("RELEASE retire_expired").map(|()| n),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO retire_expired; RELEASE retire_expired");
            Err(e)
        }
    }
}
