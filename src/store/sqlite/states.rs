//! `StateStore` on SQLite. Every write goes through the group-commit writer; reads that
//! change nothing (verify, list) go to the reader pool.

use super::live_counts::Tx;
use super::SqliteStore;
use crate::secret::{SecretHash, StateId};
use crate::store::{
    data_size, listing_position, Attempted, Found, InsertRules, Inserted, NamespaceFilter, Revoked,
    Sliding, StateRow, StateSecret, StateStore, StoreError, SubjectPage, SubjectStates, SweepCount,
    SweepStates, Taken,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};
use subtle::ConstantTimeEq;

/// `sql!("SELECT ", columns, " FROM …")`: a statement naming the columns `state_row` reads,
/// in its order, put together at compile time (hot paths look their statements up in the
/// connection's cache by text, and a `format!` per call was an allocation each time).
macro_rules! sql {
    ($($part:tt),+) => { concat!($(sql!(@part $part)),+) };
    (@part columns) => {
        "key_hash, namespace, data, created_at, expires_at, subject, \
         secret_hash, attempts_left, sliding_ttl, max_expires_at, created_by"
    };
    (@part $text:literal) => { $text };
}

/// A stored key (column 0) as a hash.
fn stored_key(r: &Row<'_>) -> rusqlite::Result<SecretHash> {
    let bytes: Vec<u8> = r.get(0)?;
    SecretHash::from_slice(&bytes).ok_or(rusqlite::Error::InvalidColumnType(
        0,
        "key_hash".into(),
        rusqlite::types::Type::Blob,
    ))
}

fn state_row(r: &Row<'_>) -> rusqlite::Result<StateRow> {
    let hash: Vec<u8> = r.get(0)?;
    let blob = |i: usize, bytes: Vec<u8>| {
        SecretHash::from_slice(&bytes).ok_or(rusqlite::Error::InvalidColumnType(
            i,
            "hash".into(),
            rusqlite::types::Type::Blob,
        ))
    };
    let secret: Option<Vec<u8>> = r.get(6)?;
    let secret = match secret {
        Some(bytes) => Some(StateSecret {
            hash: blob(6, bytes)?,
            attempts_left: r.get::<_, Option<u32>>(7)?.unwrap_or(0),
        }),
        None => None,
    };
    let sliding = match (r.get::<_, Option<i64>>(8)?, r.get::<_, Option<i64>>(9)?) {
        (Some(ttl_ms), Some(max_expires_at_ms)) => Some(Sliding {
            ttl_ms,
            max_expires_at_ms,
        }),
        _ => None,
    };
    let key_hash = blob(0, hash)?;
    Ok(StateRow {
        key_hash,
        namespace: r.get(1)?,
        data: r.get(2)?,
        created_at_ms: r.get(3)?,
        expires_at_ms: r.get(4)?,
        subject: r.get(5)?,
        secret,
        sliding,
        created_by: r.get(10)?,
    })
}

/// Every state live at `now_ms` whose namespace starts with `prefix`; with `with_data`
/// only those that hold data. Through the expiry index: a backlog of expired states is
/// not read.
pub(super) fn live_rows(
    conn: &Connection,
    prefix: &str,
    now_ms: i64,
    with_data: bool,
) -> rusqlite::Result<Vec<StateRow>> {
    conn.prepare_cached(sql!(
        "SELECT ",
        columns,
        " FROM states INDEXED BY states_expires_at
         WHERE expires_at > ?2 AND substr(namespace, 1, length(?1)) = ?1
           AND (?3 = 0 OR data IS NOT NULL)"
    ))?
    .query_map(params![prefix, now_ms, with_data], state_row)?
    .collect()
}

/// The state with this hash in this namespace, as it is.
fn select(
    conn: &Connection,
    key_hash: &SecretHash,
    ns: &str,
) -> rusqlite::Result<Option<StateRow>> {
    conn.prepare_cached(sql!(
        "SELECT ",
        columns,
        " FROM states WHERE key_hash = ?1 AND namespace = ?2"
    ))?
    .query_row(params![&key_hash.0[..], ns], state_row)
    .optional()
}

/// Deletes the state `row` (it is known to be there).
fn delete(tx: &Tx, row: &StateRow) -> rusqlite::Result<()> {
    let deleted = tx
        .prepare_cached("DELETE FROM states WHERE key_hash = ?1")?
        .execute([&row.key_hash.0[..]])?;
    tx.states_changed(&row.namespace, row.created_by.as_deref(), -(deleted as i64));
    Ok(())
}

/// Takes the tombstone of an expired state of a matching namespace, if one is left.
fn take_tombstone(
    conn: &Tx,
    key_hash: &SecretHash,
    ns: &str,
    prefix: bool,
) -> rusqlite::Result<Option<(String, i64)>> {
    let taken = conn
        .prepare_cached(
            "DELETE FROM expired_states WHERE key_hash = ?1 AND (namespace = ?2
               OR (?3 AND substr(namespace, 1, length(?2)) = ?2))
             RETURNING namespace, expired_at",
        )?
        .query_row(params![&key_hash.0[..], ns, prefix], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if taken.is_some() {
        conn.tombstones_changed(-1);
    }
    Ok(taken)
}

/// The state whose identifier is `id`, in `ns`.
fn select_by_id(conn: &Connection, ns: &str, id: &StateId) -> rusqlite::Result<Option<StateRow>> {
    let (low, high) = id.hash_range();
    let rows: Vec<StateRow> = conn
        .prepare_cached(sql!(
            "SELECT ",
            columns,
            " FROM states
             WHERE key_hash BETWEEN ?1 AND ?2 AND namespace = ?3"
        ))?
        .query_map(params![&low[..], &high[..], ns], state_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .find(|row| StateId::of(&row.key_hash) == *id))
}

#[async_trait]
impl SweepStates for SqliteStore {
    async fn sweep_expired(
        &self,
        now_ms: i64,
        purge_before_ms: i64,
        batch: usize,
        max_tombstones: u64,
    ) -> Result<SweepCount, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let max_tombstones = i64::try_from(max_tombstones).unwrap_or(i64::MAX);
        self.writer
            .run_atomic("sweeping expired states", move |conn| {
                // Move expired states aside: keep hash and namespace for the grace window,
                // drop the data now.
                let moved = conn
                    .prepare_cached(
                        "DELETE FROM states WHERE key_hash IN
                         (SELECT key_hash FROM states WHERE expires_at <= ?1
                          ORDER BY expires_at LIMIT ?2)
                         RETURNING key_hash, namespace, expires_at, created_by",
                    )?
                    .query_map(params![now_ms, batch], expired_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let retired = retire(conn, &moved, purge_before_ms, max_tombstones)?;
                // Tombstones past the grace window go, and the oldest beyond the most
                // kept (a lowered setting, or another process's writes).
                let mut purged = conn
                    .prepare_cached(
                        "DELETE FROM expired_states WHERE key_hash IN
                         (SELECT key_hash FROM expired_states WHERE expired_at < ?1
                          ORDER BY expired_at LIMIT ?2)",
                    )?
                    .execute(params![purge_before_ms, batch])?;
                conn.tombstones_changed(-(purged as i64));
                purged += trim_tombstones(conn, max_tombstones, batch)?;
                let purged = purged + retired.forgotten;
                let expired_by_namespace = retired.by_namespace;
                // So do the counts of namespaces left without live states.
                conn.forget_emptied_namespaces(usize::try_from(batch).unwrap_or(usize::MAX))?;
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

    /// Writes are waiting: requests come first.
    fn busy(&self) -> bool {
        self.writer.queued() > 0
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    fn change_watch(&self) -> Option<std::sync::Arc<crate::store::ChangeWatch>> {
        Some(self.watch.clone())
    }

    async fn insert_state(
        &self,
        row: StateRow,
        rules: InsertRules,
    ) -> Result<Inserted, StoreError> {
        let max_per_subject = i64::try_from(rules.max_per_subject).unwrap_or(i64::MAX);
        let work = move |conn: &Tx| {
            if let (Some(subject), false) = (&row.subject, rules.replace_subject) {
                let (live, next_expiry_ms): (i64, Option<i64>) = conn
                    .prepare_cached(
                        "SELECT count(*), min(expires_at) FROM states INDEXED BY states_subject
                         WHERE namespace = ?1 AND subject = ?2 AND expires_at > ?3",
                    )?
                    .query_row(params![row.namespace, subject, rules.now_ms], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                if live >= max_per_subject {
                    return Ok(Inserted::SubjectFull {
                        next_expiry_ms: next_expiry_ms.unwrap_or(rules.now_ms),
                    });
                }
            }
            let mut replaced = Vec::new();
            // A replace that the caps then refuse leaves the subject's states as they were.
            let undo = rules.replace_subject.then(|| conn.snapshot());
            if undo.is_some() {
                conn.execute_batch("SAVEPOINT replacing")?;
                let removed: Vec<(SecretHash, Option<String>)> = conn
                    .prepare_cached(
                        "DELETE FROM states INDEXED BY states_subject
                         WHERE namespace = ?1 AND subject = ?2 RETURNING key_hash, created_by",
                    )?
                    .query_map(params![row.namespace, row.subject], |r| {
                        Ok((stored_key(r)?, r.get(1)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                for (_, by) in &removed {
                    conn.states_changed(&row.namespace, by.as_deref(), -1);
                }
                replaced = removed.into_iter().map(|(key, _)| key).collect();
            }
            if let Some(refused) = refusal(conn, &row, &rules)? {
                if let Some(before) = undo {
                    conn.restore(before);
                    conn.execute_batch("ROLLBACK TO replacing; RELEASE replacing")?;
                }
                return Ok(refused);
            }
            if undo.is_some() {
                conn.execute_batch("RELEASE replacing")?;
            }
            conn.prepare_cached(
                "INSERT INTO states (key_hash, namespace, data, created_at, expires_at,
                   subject, secret_hash, attempts_left, sliding_ttl, max_expires_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                &row.key_hash.0[..],
                row.namespace,
                row.data,
                row.created_at_ms,
                row.expires_at_ms,
                row.subject,
                row.secret.map(|s| s.hash.0.to_vec()),
                row.secret.map(|s| s.attempts_left),
                row.sliding.map(|s| s.ttl_ms),
                row.sliding.map(|s| s.max_expires_at_ms),
                row.created_by,
            ])?;
            conn.states_changed(&row.namespace, row.created_by.as_deref(), 1);
            Ok(Inserted::Stored { replaced })
        };
        if rules.replace_subject {
            self.writer.run_atomic("storing a state", work).await
        } else {
            self.writer.run("storing a state", work).await
        }
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
                // Read, then delete, in the writer's transaction: no other write comes
                // between them, and readers see neither until both commit. Only a row of
                // the namespace asked for, without a code, is touched. (A DELETE with
                // RETURNING would build a temporary table for its one row each time.)
                let row = conn
                    .prepare_cached(sql!(
                        "SELECT ",
                        columns,
                        " FROM states WHERE key_hash = ?1 AND (namespace = ?2
                           OR (?3 AND substr(namespace, 1, length(?2)) = ?2))
                           AND secret_hash IS NULL"
                    ))?
                    .query_row(params![&key_hash.0[..], ns, prefix], state_row)
                    .optional()?;
                if let Some(row) = row {
                    delete(conn, &row)?;
                    return Ok(Taken::Row(row));
                }
                // A prefix (a provider's connect flows) never names a code-guarded state.
                let guarded = if prefix {
                    None
                } else {
                    select(conn, &key_hash, &ns)?
                };
                if let Some(guarded) = guarded {
                    return Ok(Taken::SecretRequired {
                        namespace: guarded.namespace,
                        expires_at_ms: guarded.expires_at_ms,
                    });
                }
                Ok(match take_tombstone(conn, &key_hash, &ns, prefix)? {
                    Some((namespace, expired_at)) => Taken::ExpiredTombstone {
                        namespace,
                        expired_at_ms: Some(expired_at),
                    },
                    None => Taken::Missing,
                })
            })
            .await
    }

    async fn read_state(&self, key_hash: SecretHash, namespace: &str) -> Result<Found, StoreError> {
        let ns = namespace.to_owned();
        self.point_read("reading a state", move |conn| found(conn, &key_hash, &ns))
            .await
    }

    async fn touch_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
        _grace_ms: i64,
    ) -> Result<Found, StoreError> {
        // The sweeper gives a tombstone its grace from `expires_at` when it moves the row,
        // so a later expiry needs nothing more here.
        let ns = namespace.to_owned();
        self.writer
            .run("extending a state", move |conn| {
                let row = conn
                    .prepare_cached(sql!(
                        "UPDATE states
                         SET expires_at = max(expires_at, min(?3 + sliding_ttl, max_expires_at))
                         WHERE key_hash = ?1 AND namespace = ?2 AND sliding_ttl IS NOT NULL
                           AND expires_at > ?3
                         RETURNING ",
                        columns,
                        ""
                    ))?
                    .query_row(params![&key_hash.0[..], ns, now_ms], state_row)
                    .optional()?;
                match row {
                    Some(row) => Ok(Found::Row(row)),
                    None => found(conn, &key_hash, &ns),
                }
            })
            .await
    }

    async fn attempt_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        candidate: SecretHash,
        now_ms: i64,
    ) -> Result<Attempted, StoreError> {
        let ns = namespace.to_owned();
        self.writer
            .run_atomic("trying a state's code", move |conn| {
                let Some(row) = select(conn, &key_hash, &ns)? else {
                    return Ok(match take_tombstone(conn, &key_hash, &ns, false)? {
                        Some((namespace, at)) => Attempted::Expired {
                            namespace,
                            expired_at_ms: Some(at),
                        },
                        None => Attempted::Missing,
                    });
                };
                if row.expires_at_ms <= now_ms {
                    delete(conn, &row)?;
                    return Ok(Attempted::Expired {
                        namespace: row.namespace,
                        expired_at_ms: Some(row.expires_at_ms),
                    });
                }
                let Some(secret) = row.secret else {
                    return Ok(Attempted::NoSecret);
                };
                if bool::from(secret.hash.0.ct_eq(&candidate.0)) {
                    delete(conn, &row)?;
                    return Ok(Attempted::Matched(row));
                }
                let attempts_left = secret.attempts_left.saturating_sub(1);
                if attempts_left == 0 {
                    delete(conn, &row)?;
                } else {
                    conn.prepare_cached(
                        "UPDATE states SET attempts_left = ?2 WHERE key_hash = ?1",
                    )?
                    .execute(params![&key_hash.0[..], attempts_left])?;
                }
                Ok(Attempted::Wrong { attempts_left })
            })
            .await
    }

    async fn revoke_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let ns = namespace.to_owned();
        self.writer
            .run_atomic("revoking a state", move |conn| {
                let deleted: Option<(i64, Option<String>)> = conn
                    .prepare_cached(
                        "DELETE FROM states WHERE key_hash = ?1 AND namespace = ?2
                         RETURNING expires_at, created_by",
                    )?
                    .query_row(params![&key_hash.0[..], ns], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((_, by)) = &deleted {
                    conn.states_changed(&ns, by.as_deref(), -1);
                }
                let expires_at = deleted.map(|(at, _)| at);
                take_tombstone(conn, &key_hash, &ns, false)?;
                Ok(expires_at.is_some_and(|at| at > now_ms))
            })
            .await
    }

    async fn revoke_state_id(
        &self,
        namespace: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Revoked, StoreError> {
        let Some(id) = StateId::parse(id) else {
            return Ok(Revoked::default());
        };
        let ns = namespace.to_owned();
        self.writer
            .run("revoking a state", move |conn| {
                let Some(row) = select_by_id(conn, &ns, &id)? else {
                    return Ok(Revoked::default());
                };
                delete(conn, &row)?;
                Ok(Revoked {
                    live: u64::from(row.expires_at_ms > now_ms),
                    keys: vec![row.key_hash],
                })
            })
            .await
    }

    async fn subject_states(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
        page: SubjectPage,
    ) -> Result<SubjectStates, StoreError> {
        let (ns, subject) = (namespace.to_owned(), subject.to_owned());
        // The index holds (namespace, subject, created_at) and, as every index of a table
        // without rowid, the key: it gives the rows in order from the page's start on,
        // and they are read one by one until the page is full.
        let (after_at, after_key) = match page.after {
            None => (i64::MIN, Vec::new()),
            Some((at, prefix)) => {
                let mut key = [0xff; 32];
                key[..16].copy_from_slice(&prefix);
                (at, key.to_vec())
            }
        };
        self.read("listing a subject's states", move |conn| {
            let mut stmt = conn.prepare_cached(sql!(
                "SELECT ",
                columns,
                " FROM states INDEXED BY states_subject
                 WHERE namespace = ?1 AND subject = ?2 AND expires_at > ?3
                   AND (created_at, key_hash) > (?4, ?5)
                 ORDER BY created_at, key_hash"
            ))?;
            let rows =
                stmt.query_map(params![ns, subject, now_ms, after_at, after_key], state_row)?;
            let mut failed = None;
            let rows = rows.map_while(|r| r.map_err(|e| failed = Some(e)).ok());
            let (rows, more) = page.take(rows, data_size);
            let next = rows
                .last()
                .filter(|_| more)
                .map(|r| listing_position(r.created_at_ms, &r.key_hash));
            match failed {
                Some(e) => Err(e),
                None => Ok(SubjectStates { rows, next }),
            }
        })
        .await
    }

    async fn revoke_subject(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Revoked, StoreError> {
        let (ns, subject) = (namespace.to_owned(), subject.to_owned());
        // Atomic: the rows are deleted before RETURNING hands them over, so an error while
        // reading them must undo the deletes, which were not counted.
        self.writer
            .run_atomic("revoking a subject's states", move |conn| {
                let removed: Vec<(SecretHash, i64, Option<String>)> = conn
                    .prepare_cached(
                        "DELETE FROM states INDEXED BY states_subject WHERE namespace = ?1 AND subject = ?2
                         RETURNING key_hash, expires_at, created_by",
                    )?
                    .query_map(params![ns, subject], |r| {
                        Ok((stored_key(r)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                for (_, _, by) in &removed {
                    conn.states_changed(&ns, by.as_deref(), -1);
                }
                Ok(Revoked {
                    live: removed.iter().filter(|(_, at, _)| *at > now_ms).count() as u64,
                    keys: removed.into_iter().map(|(key, _, _)| key).collect(),
                })
            })
            .await
    }

    async fn live_states_total(&self, _now_ms: i64) -> Result<u64, StoreError> {
        self.read("counting the store's states", |conn| {
            super::live_counts::stored_total(conn).map(|n| u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn states_with_data(
        &self,
        prefix: &str,
        now_ms: i64,
    ) -> Result<Vec<StateRow>, StoreError> {
        let prefix = prefix.to_owned();
        self.read("reading states by namespace", move |conn| {
            live_rows(conn, &prefix, now_ms, true)
        })
        .await
    }

    async fn state_data_prefixes(
        &self,
        now_ms: i64,
        chars: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let chars = i64::try_from(chars).unwrap_or(i64::MAX);
        self.read("reading states' data", move |conn| {
            conn.prepare_cached(
                "SELECT substr(data, 1, ?2), count(*) FROM states INDEXED BY states_expires_at
                 WHERE expires_at > ?1 AND data IS NOT NULL GROUP BY 1",
            )?
            .query_map(params![now_ms, chars], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)?.try_into().unwrap_or(0)))
            })?
            .collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if super::DAMAGED.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Damaged {
                context: "checking the database",
            });
        }
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

/// The state (or its tombstone) of this namespace, changing nothing.
fn found(conn: &Connection, key_hash: &SecretHash, ns: &str) -> rusqlite::Result<Found> {
    if let Some(row) = select(conn, key_hash, ns)? {
        return Ok(Found::Row(row));
    }
    let tombstone: Option<i64> = conn
        .prepare_cached(
            "SELECT expired_at FROM expired_states WHERE key_hash = ?1 AND namespace = ?2",
        )?
        .query_row(params![&key_hash.0[..], ns], |r| r.get(0))
        .optional()?;
    Ok(match tombstone {
        Some(at) => Found::ExpiredTombstone {
            namespace: ns.to_owned(),
            expired_at_ms: Some(at),
        },
        None => Found::Missing,
    })
}

/// Why `row` may not be stored now, if the caps say so: the key that creates it, its
/// namespace or the store is full. The single writer makes the check and the insert one
/// step. The counts include expired states the sweeper has not reached yet, and those must
/// not count: at the cap, the key's or the namespace's that expired first (`Retire`) are
/// set aside, then it looks again; at the store's cap, those that expired first. The key
/// is looked at first: a key at its cap is refused before any namespace's or the store's
/// expired states are set aside, work a replace's refusal would undo for the next request
/// to do again.
fn refusal(conn: &Tx, row: &StateRow, rules: &InsertRules) -> rusqlite::Result<Option<Inserted>> {
    let max_live = i64::try_from(rules.max_live).unwrap_or(i64::MAX);
    let max_total = i64::try_from(rules.max_total).unwrap_or(i64::MAX);
    let grace = rules.keep_until_ms.saturating_sub(row.expires_at_ms).max(0);
    let purge_before = rules.now_ms.saturating_sub(grace);
    if let Some(by) = row.created_by.as_deref() {
        let max_per_key = i64::try_from(rules.max_per_key).unwrap_or(i64::MAX);
        if max_per_key < max_total
            && conn.key_live_states(by)? >= max_per_key
            && (retire_expired(conn, Retire::OfKey(by), rules, purge_before)? == 0
                || conn.key_live_states(by)? >= max_per_key)
        {
            return Ok(Some(Inserted::KeyFull));
        }
    }
    let ns = Retire::OfNamespace(row.namespace.as_str());
    if conn.live_states(&row.namespace)? >= max_live
        && (retire_expired(conn, ns, rules, purge_before)? == 0
            || conn.live_states(&row.namespace)? >= max_live)
    {
        return Ok(Some(Inserted::NamespaceFull));
    }
    if conn.all_live_states()? >= max_total
        && (retire_expired(conn, Retire::First, rules, purge_before)? == 0
            || conn.all_live_states()? >= max_total)
    {
        return Ok(Some(Inserted::StoreFull));
    }
    Ok(None)
}

/// An expired state's key, namespace, expiry and creator, as a delete returns them.
type ExpiredRow = (Vec<u8>, String, i64, Option<String>);

fn expired_row(r: &rusqlite::Row) -> rusqlite::Result<ExpiredRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// What moving expired states aside did.
struct Retired {
    by_namespace: std::collections::BTreeMap<String, u64>,
    /// Tombstones not kept: of states already past their grace window, and the oldest
    /// dropped for room.
    forgotten: usize,
}

/// Counts deleted expired states out of their namespaces and keeps a tombstone of each
/// (hash and namespace, never the data) for the grace window; past `max_tombstones`, the
/// oldest tombstones go. One already past its grace window (a backlog left while oauthd
/// was down, or swept late) gets none: it answers 404 either way, and a tombstone written
/// only to be purged in the same batch would triple the batch's writes.
fn retire(
    conn: &Tx,
    rows: &[ExpiredRow],
    purge_before_ms: i64,
    max_tombstones: i64,
) -> rusqlite::Result<Retired> {
    let mut keep = conn.prepare_cached(
        "INSERT OR IGNORE INTO expired_states (key_hash, namespace, expired_at)
         VALUES (?1, ?2, ?3)",
    )?;
    let mut retired = Retired {
        by_namespace: std::collections::BTreeMap::new(),
        forgotten: 0,
    };
    let mut kept = 0;
    // By namespace and creating key: one change of the counts for each.
    let mut counted_out: std::collections::BTreeMap<(&str, Option<&str>), i64> =
        std::collections::BTreeMap::new();
    for (key_hash, namespace, expired_at, by) in rows {
        if *expired_at >= purge_before_ms {
            kept += keep.execute(params![key_hash, namespace, expired_at])?;
        } else {
            retired.forgotten += 1;
        }
        *retired.by_namespace.entry(namespace.clone()).or_default() += 1;
        *counted_out.entry((namespace, by.as_deref())).or_default() += 1;
    }
    conn.tombstones_changed(kept as i64);
    retired.forgotten += trim_tombstones(conn, max_tombstones, kept as i64)?;
    for ((namespace, by), moved) in counted_out {
        conn.states_changed(namespace, by, -moved);
    }
    Ok(retired)
}

/// Deletes the oldest tombstones beyond `max_tombstones`, at most `limit` of them, so
/// that states made to expire at once cannot grow the file through their tombstones
/// (theirs answer 404 instead of 410). Returns how many went.
fn trim_tombstones(conn: &Tx, max_tombstones: i64, limit: i64) -> rusqlite::Result<usize> {
    let excess = (conn.tombstones()? - max_tombstones).clamp(0, limit.max(0));
    if excess == 0 {
        return Ok(0);
    }
    let dropped = conn
        .prepare_cached(
            "DELETE FROM expired_states WHERE key_hash IN
             (SELECT key_hash FROM expired_states ORDER BY expired_at LIMIT ?1)",
        )?
        .execute([excess])?;
    conn.tombstones_changed(-(dropped as i64));
    Ok(dropped)
}

/// Expired states one insert at a cap moves aside at most.
const RETIRE_AT_ONCE: i64 = 1000;

/// Which expired states an insert at a cap moves aside.
#[derive(Debug, Clone, Copy)]
enum Retire<'a> {
    /// The `RETIRE_AT_ONCE` of a namespace's that expired first.
    OfNamespace(&'a str),
    /// The `RETIRE_AT_ONCE` of an API key's that expired first.
    OfKey(&'a str),
    /// The `RETIRE_AT_ONCE` that expired first.
    First,
}

/// Moves expired states aside as the sweeper does (tombstones keep the 410 answer for
/// the grace window), all or nothing, as `which` says. Returns how many moved.
fn retire_expired(
    conn: &Tx,
    which: Retire<'_>,
    rules: &InsertRules,
    purge_before_ms: i64,
) -> rusqlite::Result<usize> {
    conn.execute_batch("SAVEPOINT retire_expired")?;
    let before = conn.snapshot();
    let max_tombstones = i64::try_from(rules.max_tombstones).unwrap_or(i64::MAX);
    let moved = (|| {
        let rows: Vec<ExpiredRow> = match which {
            Retire::OfNamespace(ns) => conn
                .prepare_cached(
                    "DELETE FROM states WHERE key_hash IN
                     (SELECT key_hash FROM states INDEXED BY states_namespace_expires
                      WHERE namespace = ?2 AND expires_at <= ?1
                      ORDER BY expires_at LIMIT ?3)
                     RETURNING key_hash, namespace, expires_at, created_by",
                )?
                .query_map(params![rules.now_ms, ns, RETIRE_AT_ONCE], expired_row)?
                .collect::<rusqlite::Result<_>>()?,
            Retire::OfKey(by) => conn
                .prepare_cached(
                    "DELETE FROM states WHERE key_hash IN
                     (SELECT key_hash FROM states
                      WHERE created_by = ?2 AND expires_at <= ?1
                      ORDER BY expires_at LIMIT ?3)
                     RETURNING key_hash, namespace, expires_at, created_by",
                )?
                .query_map(params![rules.now_ms, by, RETIRE_AT_ONCE], expired_row)?
                .collect::<rusqlite::Result<_>>()?,
            Retire::First => conn
                .prepare_cached(
                    "DELETE FROM states WHERE key_hash IN
                     (SELECT key_hash FROM states WHERE expires_at <= ?1
                      ORDER BY expires_at LIMIT ?2)
                     RETURNING key_hash, namespace, expires_at, created_by",
                )?
                .query_map(params![rules.now_ms, RETIRE_AT_ONCE], expired_row)?
                .collect::<rusqlite::Result<_>>()?,
        };
        retire(conn, &rows, purge_before_ms, max_tombstones)?;
        conn.execute_batch("RELEASE retire_expired")?;
        Ok(rows.len())
    })();
    if moved.is_err() {
        conn.restore(before);
        let _ = conn.execute_batch("ROLLBACK TO retire_expired; RELEASE retire_expired");
    }
    moved
}
