//! `DeviceFlowStore` on SQLite.

use super::connections::upsert;
use super::outbox::enqueue;
use super::SqliteStore;
use crate::store::{
    ClaimedPoll, DeviceFlowRow, DeviceFlowStore, DevicePollOutcome, NewDelivery, PollRecorded,
    StoreError,
};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

const COLUMNS: &str = "id, provider, account, device_code, user_code, verification_uri,
    verification_uri_complete, interval_ms, expires_at, status, detail, next_poll_at, created_at,
    started_by, error";

fn row(r: &Row<'_>) -> rusqlite::Result<DeviceFlowRow> {
    Ok(DeviceFlowRow {
        id: r.get(0)?,
        provider: r.get(1)?,
        account: r.get(2)?,
        device_code: r.get(3)?,
        user_code: r.get(4)?,
        verification_uri: r.get(5)?,
        verification_uri_complete: r.get(6)?,
        interval_ms: r.get(7)?,
        expires_at_ms: r.get(8)?,
        status: r.get(9)?,
        detail: r.get(10)?,
        next_poll_at_ms: r.get(11)?,
        created_at_ms: r.get(12)?,
        started_by: r.get(13)?,
        error: r.get(14)?,
    })
}

#[async_trait]
impl DeviceFlowStore for SqliteStore {
    async fn insert_device_flow(
        &self,
        f: DeviceFlowRow,
        max_pending: u32,
    ) -> Result<bool, StoreError> {
        self.writer
            .run("storing a device flow", move |conn| {
                // The single writer makes the count and the insert one step.
                conn.prepare_cached(&format!(
                    "INSERT INTO device_flows ({COLUMNS}, updated_at)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?16, ?13
                     WHERE (SELECT count(*) FROM device_flows WHERE started_by = ?14
                            AND status = 'pending' AND expires_at > ?13) < ?15"
                ))?
                .execute(params![
                    f.id,
                    f.provider,
                    f.account,
                    f.device_code,
                    f.user_code,
                    f.verification_uri,
                    f.verification_uri_complete,
                    f.interval_ms,
                    f.expires_at_ms,
                    f.status,
                    f.detail,
                    f.next_poll_at_ms,
                    f.created_at_ms,
                    f.started_by,
                    max_pending,
                    f.error
                ])
                .map(|n| n == 1)
            })
            .await
    }

    async fn pending_device_flows_of(
        &self,
        started_by: &str,
        now_ms: i64,
    ) -> Result<u32, StoreError> {
        let started_by = started_by.to_owned();
        self.read("counting device flows", move |conn| {
            conn.prepare_cached(
                "SELECT count(*) FROM device_flows WHERE started_by = ?1
                 AND status = 'pending' AND expires_at > ?2",
            )?
            .query_row(params![started_by, now_ms], |r| r.get(0))
        })
        .await
    }

    async fn get_device_flow(&self, id: &str) -> Result<Option<DeviceFlowRow>, StoreError> {
        let id = id.to_owned();
        self.read("reading a device flow", move |conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM device_flows WHERE id = ?1"))?
                .query_row([id], row)
                .optional()
        })
        .await
    }

    async fn pending_device_flows(&self) -> Result<Vec<DeviceFlowRow>, StoreError> {
        self.read("listing device flows", |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM device_flows WHERE status = 'pending'"
            ))?
            .query_map([], row)?
            .collect()
        })
        .await
    }

    async fn claim_device_poll(
        &self,
        id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedPoll>, StoreError> {
        let id = id.to_owned();
        // The claim is the lease's end: a later claim can only be taken once this one has
        // run out, so its end is later still and no two claims of a flow share one.
        let until = now_ms.saturating_add(lease_ms.max(1));
        self.writer
            .run("claiming a device poll", move |conn| {
                conn.prepare_cached(&format!(
                    "UPDATE device_flows SET lease_until = ?3, updated_at = ?2
                     WHERE id = ?1 AND status = 'pending' AND next_poll_at <= ?2
                       AND (lease_until IS NULL OR lease_until <= ?2)
                     RETURNING {COLUMNS}"
                ))?
                .query_row(params![id, now_ms, until], row)
                .optional()
            })
            .await
            .map(|flow| {
                flow.map(|flow| ClaimedPoll {
                    flow,
                    claim: until.to_string(),
                })
            })
    }

    async fn finish_device_poll(
        &self,
        id: &str,
        claim: Option<&str>,
        outcome: DevicePollOutcome,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<PollRecorded, StoreError> {
        let id = id.to_owned();
        // A claim that is not a number is nobody's: it fences like none.
        let claim: Option<i64> = claim.and_then(|c| c.parse().ok());
        self.writer
            .run_atomic("recording a device poll", move |conn| {
                // Free to record: nobody else holds a live claim on the flow.
                const UNCLAIMED: &str = "id = ?1 AND status = 'pending'
                    AND (lease_until IS NULL OR lease_until <= ?2 OR lease_until = ?3)";
                // Ended (`anyone`: whoever holds a claim, `Withdrawn`).
                let end = |status: crate::store::DeviceFlowStatus,
                           error: &str,
                           detail: &str,
                           anyone: bool| {
                    conn.prepare_cached(&format!(
                        "UPDATE device_flows SET status = ?4, detail = ?5, error = ?6,
                            lease_until = NULL,
                            updated_at = ?2, device_code = x'',
                            user_code = '', verification_uri_complete = NULL
                         WHERE (?7 AND id = ?1 AND status = 'pending') OR ({UNCLAIMED})"
                    ))?
                    .execute(params![id, now_ms, claim, status, detail, error, anyone])
                };
                let n = match &outcome {
                    DevicePollOutcome::Pending {
                        interval_ms,
                        delay_ms,
                    } => conn
                        .prepare_cached(&format!(
                            "UPDATE device_flows SET interval_ms = ?4, next_poll_at = ?2 + ?5,
                                lease_until = NULL, updated_at = ?2
                             WHERE {UNCLAIMED}"
                        ))?
                        .execute(params![id, now_ms, claim, interval_ms, delay_ms]),
                    DevicePollOutcome::Finished {
                        status,
                        error,
                        detail,
                    } => end(*status, error, detail, false),
                    DevicePollOutcome::Withdrawn { error, detail } => {
                        end(crate::store::DeviceFlowStatus::Failed, error, detail, true)
                    }
                    DevicePollOutcome::Connected { detail, .. } => conn
                        .prepare_cached(
                            "UPDATE device_flows SET status = 'connected', detail = ?3,
                                lease_until = NULL, updated_at = ?2, device_code = x'',
                                user_code = '', verification_uri_complete = NULL
                             WHERE id = ?1 AND status = 'pending'",
                        )?
                        .execute(params![id, now_ms, detail]),
                }?;
                if n != 1 {
                    return Ok(PollRecorded::No);
                }
                let was = match &outcome {
                    DevicePollOutcome::Connected { save, .. } => upsert(conn, save, now_ms)?,
                    _ => None,
                };
                enqueue(conn, &events)?;
                Ok(PollRecorded::Yes(was.map(Box::new)))
            })
            .await
    }

    async fn reseal_device_code(
        &self,
        id: &str,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer
            .run("re-sealing a device code", move |conn| {
                conn.prepare_cached(
                    "UPDATE device_flows SET device_code = ?3
                     WHERE id = ?1 AND status = 'pending' AND device_code = ?2",
                )?
                .execute(params![id, old, new])
                .map(|n| n == 1)
            })
            .await
    }
}
