//! `OutboxStore` on SQLite: the `deliveries` table. `enqueue` is what every other write
//! that tells of a change calls inside its own transaction.

use super::SqliteStore;
use crate::store::{
    ClaimRoom, DeliveryFilter, DeliveryOutcome, DeliveryRow, DeliveryStatus, GoneTarget,
    NewDelivery, OutboxStore, Retried, StoreError,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

/// Finished deliveries one pruning job deletes at most.
const PRUNE_BATCH: i64 = 1000;

const COLUMNS: &str = "id, event_id, event_type, target, body, created_at, deadline, status,
    attempts, next_attempt_at, last_attempt_at, last_error, finished_at, attempts_before_retry";

fn row(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        target: r.get(3)?,
        body: r.get(4)?,
        created_at_ms: r.get(5)?,
        deadline_ms: r.get(6)?,
        status: r.get(7)?,
        attempts: r.get(8)?,
        next_attempt_at_ms: r.get(9)?,
        last_attempt_at_ms: r.get(10)?,
        last_error: r.get(11)?,
        finished_at_ms: r.get(12)?,
        attempts_before_retry: r.get(13)?,
    })
}

/// Adds `deliveries` to the outbox on `conn`, inside the caller's transaction: they
/// commit, or roll back, with the change they tell of.
pub(super) fn enqueue(conn: &Connection, deliveries: &[NewDelivery]) -> rusqlite::Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO deliveries (id, event_id, event_type, target, body, created_at, deadline,
            next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
    )?;
    for d in deliveries {
        insert.execute(params![
            d.id,
            d.event_id,
            d.event_type,
            d.target,
            d.body,
            d.created_at_ms,
            d.deadline_ms
        ])?;
    }
    Ok(())
}

/// The attempts under way now by target, in every process on this file (`leased`): the
/// deliveries claimed, whose claim (set with their next attempt, a lease after the claim)
/// has not ended. A claim further off than any wait (`?4`, as for what is due) was made on
/// a clock since stepped back, and holds nothing (as on Redis, where instances' clocks
/// differ by a few seconds). `?1` is now. Counted once a claim, not once a row.
const LEASED: &str = "WITH leased AS MATERIALIZED (
    SELECT target, count(*) AS n FROM deliveries
    WHERE status = 'pending' AND next_attempt_at > ?1 AND next_attempt_at <= ?1 + ?4
      AND claimed_until > ?1
    GROUP BY target)";

/// How many attempts run now for the target of the row `d`: those leased in the store, or
/// more as this process counts them (`?2`, JSON: an attempt that outlived its lease).
const RUNNING: &str = "max(
    coalesce((SELECT b.value FROM json_each(?2) b WHERE b.key = d.target), 0),
    coalesce((SELECT l.n FROM leased l WHERE l.target = d.target), 0))";

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn add_deliveries(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        self.writer
            .run_atomic("adding events to the outbox", move |conn| {
                enqueue(conn, &deliveries)
            })
            .await
    }

    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        room: &ClaimRoom,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let busy = serde_json::to_string(&room.busy)
            .map_err(|e| StoreError::unavailable("claiming deliveries", e))?;
        let (limit, per_target, longest) = (room.limit, room.per_target, room.longest_wait());
        let busy_now = busy.clone();
        // Looked for on a reader first: the worker asks every second, and most times
        // nothing is due, which needs no write transaction.
        let any_due = self
            .point_read("looking for due deliveries", move |conn| {
                conn.prepare_cached(&format!(
                    "{LEASED} SELECT EXISTS (SELECT 1 FROM deliveries d
                                    WHERE status = 'pending'
                                      AND (next_attempt_at <= ?1 OR next_attempt_at > ?1 + ?4)
                                      AND {RUNNING} < ?3)"
                ))?
                .query_row(params![now_ms, busy_now, per_target, longest], |r| {
                    r.get::<_, bool>(0)
                })
            })
            .await?;
        if !any_due {
            return Ok(Vec::new());
        }
        // Each target's due deliveries are numbered oldest first, after those it runs:
        // only the ones within `per_target` may be claimed.
        self.writer
            .run("claiming deliveries", move |conn| {
                conn.prepare_cached(&format!(
                    "{LEASED} UPDATE deliveries SET attempts = attempts + 1,
                        next_attempt_at = ?1 + ?5, claimed_until = ?1 + ?5, last_attempt_at = ?1
                     WHERE id IN (
                       SELECT id FROM (
                         SELECT id, next_attempt_at,
                           row_number() OVER (PARTITION BY target
                                              ORDER BY next_attempt_at, id)
                           + {RUNNING} AS nth
                         FROM deliveries d
                         WHERE status = 'pending'
                           AND (next_attempt_at <= ?1 OR next_attempt_at > ?1 + ?4))
                       WHERE nth <= ?3
                       ORDER BY next_attempt_at LIMIT ?6)
                     RETURNING {COLUMNS}"
                ))?
                .query_map(
                    params![now_ms, busy, per_target, longest, lease_ms, limit],
                    row,
                )?
                .collect()
            })
            .await
    }

    async fn finish_delivery(
        &self,
        id: &str,
        attempt: u32,
        outcome: DeliveryOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let (status, next, error) = outcome.parts();
        let finished = (status != DeliveryStatus::Pending).then_some(now_ms);
        self.writer
            .run("recording a delivery", move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE deliveries SET status = ?3, next_attempt_at = ?4,
                            last_error = coalesce(?5, last_error), finished_at = ?6,
                            claimed_until = NULL
                         WHERE id = ?1 AND attempts = ?2 AND status = 'pending'",
                    )?
                    .execute(params![id, attempt, status, next, error, finished])?;
                Ok(n == 1)
            })
            .await
    }

    async fn list_deliveries(
        &self,
        filter: DeliveryFilter,
        target: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let shows = match filter {
            DeliveryFilter::All => "1",
            DeliveryFilter::Failed => {
                "status = 'dead' OR (status = 'pending' AND last_error IS NOT NULL)"
            }
            DeliveryFilter::Delivered => "status = 'delivered'",
            DeliveryFilter::Dead => "status = 'dead'",
            DeliveryFilter::Pending => "status = 'pending'",
        };
        // One target's newest come from `deliveries_by_target`, however long ago it had one.
        let of_target = if target.is_some() {
            "target = ?2 AND"
        } else {
            "?2 IS NULL AND"
        };
        let target = target.map(str::to_owned);
        self.read("listing deliveries", move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE {of_target} ({shows})
                 ORDER BY created_at DESC, id DESC LIMIT ?1"
            ))?
            .query_map(params![limit, target], row)?
            .collect()
        })
        .await
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now_ms: i64,
        deadline_ms: i64,
        again: bool,
    ) -> Result<Retried, StoreError> {
        let id = id.to_owned();
        self.writer
            .run("retrying a delivery", move |conn| {
                let found: Option<(String, Option<i64>)> = conn
                    .prepare_cached("SELECT status, claimed_until FROM deliveries WHERE id = ?1")?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                match found {
                    None => return Ok(Retried::NotFound),
                    Some((status, _)) if status == "delivered" && !again => {
                        return Ok(Retried::AlreadyDelivered)
                    }
                    Some((status, Some(until_ms))) if status == "pending" && until_ms > now_ms => {
                        return Ok(Retried::UnderWay { until_ms })
                    }
                    Some(_) => {}
                }
                conn.prepare_cached(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2,
                        deadline = ?3, finished_at = NULL, claimed_until = NULL,
                        attempts_before_retry = attempts
                     WHERE id = ?1",
                )?
                .execute(params![id, now_ms, deadline_ms])?;
                Ok(Retried::Due)
            })
            .await
    }

    async fn release_claims(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.writer
            .run("releasing unfinished deliveries", move |conn| {
                // Another oauthd serving this file may be sending them now: theirs to
                // finish, or their claims' leases to end.
                if super::serving::others_may_serve(conn)? {
                    let claimed: i64 = conn
                        .prepare_cached(
                            "SELECT count(*) FROM deliveries
                             WHERE status = 'pending' AND claimed_until IS NOT NULL",
                        )?
                        .query_row([], |r| r.get(0))?;
                    if claimed > 0 {
                        log::info!(
                            "notifications: {claimed} delivery attempt(s) claimed and not finished are left to their claims' end (30 s at most): another oauthd may serve this database, and be sending them"
                        );
                    }
                    return Ok(0);
                }
                let n = conn
                    .prepare_cached(
                        "UPDATE deliveries SET next_attempt_at = ?1, claimed_until = NULL
                         WHERE status = 'pending' AND claimed_until IS NOT NULL",
                    )?
                    .execute(params![now_ms])?;
                Ok(n as u64)
            })
            .await
    }

    async fn pending_deliveries(&self) -> Result<u64, StoreError> {
        self.read("counting pending deliveries", |conn| {
            conn.prepare_cached("SELECT count(*) FROM deliveries WHERE status = 'pending'")?
                .query_row([], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|n| n.max(0) as u64)
    }

    async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        // In batches, each a job of its own: one DELETE of a backlog (a lowered
        // `keep_days`, a flood of events, the first start after a long stop) held the
        // writer, and every write waiting on it, for seconds. A delivery finishes after
        // it was created, so the oldest by creation come first (`deliveries_created`).
        let mut pruned = 0;
        loop {
            let n = self
                .writer
                .run("pruning finished deliveries", move |conn| {
                    let n = conn
                        .prepare_cached(
                            "DELETE FROM deliveries WHERE rowid IN (
                                 SELECT rowid FROM deliveries
                                 WHERE created_at < ?1 AND status != 'pending'
                                     AND finished_at < ?1
                                 ORDER BY created_at LIMIT ?2)",
                        )?
                        .execute(params![before_ms, PRUNE_BATCH])?;
                    Ok(n as u64)
                })
                .await?;
            pruned += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(pruned);
            }
        }
    }

    async fn set_target_gone(&self, gone: GoneTarget) -> Result<(), StoreError> {
        self.writer
            .run("recording a target gone", move |conn| {
                conn.prepare_cached(
                    "INSERT INTO gone_targets (target, url_hash, since) VALUES (?1, ?2, ?3)
                     ON CONFLICT (target) DO UPDATE SET url_hash = ?2, since = ?3",
                )?
                .execute(params![gone.target, gone.url_hash, gone.since_ms])?;
                Ok(())
            })
            .await
    }

    async fn clear_target_gone(&self, target: &str) -> Result<bool, StoreError> {
        let target = target.to_owned();
        self.writer
            .run("forgetting a target gone", move |conn| {
                let n = conn
                    .prepare_cached("DELETE FROM gone_targets WHERE target = ?1")?
                    .execute(params![target])?;
                Ok(n > 0)
            })
            .await
    }

    async fn gone_targets(&self) -> Result<Vec<GoneTarget>, StoreError> {
        self.read("reading the targets gone", |conn| {
            conn.prepare_cached("SELECT target, url_hash, since FROM gone_targets ORDER BY target")?
                .query_map([], |r| {
                    Ok(GoneTarget {
                        target: r.get(0)?,
                        url_hash: r.get(1)?,
                        since_ms: r.get(2)?,
                    })
                })?
                .collect()
        })
        .await
    }
}
