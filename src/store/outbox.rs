//! The outbox: events waiting to be delivered to notification targets, written in the
//! same transaction as the change they tell of, then claimed, sent and finished by a
//! delivery worker. The store knows nothing of what an event says: a body, a type and a
//! target name.

use super::StoreError;
use async_trait::async_trait;
use std::collections::BTreeMap;

/// What one claim may take: at most `limit` deliveries, and for each target only as many
/// as keep its attempts running at once within `per_target`: a target that hangs never
/// holds all of the worker's room. The attempts a target runs are those whose claim, in
/// the store, has not ended (every instance's), or those this worker runs (`busy`) when
/// they are more (an attempt that outlived its lease).
#[derive(Debug, Clone)]
pub struct ClaimRoom {
    pub limit: u32,
    pub per_target: u32,
    /// Attempts running now, by target.
    pub busy: BTreeMap<String, u32>,
    /// The furthest off a next attempt is ever set (`retry_max`, a claim's lease): one
    /// further off than that was set on a clock since stepped back, and is due now.
    /// `None`: only what is due by the clock.
    pub longest_wait_ms: Option<i64>,
}

/// What `ClaimRoom::longest_wait_ms` `None` stands for in a comparison: 10,000 years.
pub const NO_LONGEST_WAIT_MS: i64 = 10_000 * 365 * 24 * 3600 * 1000;

impl ClaimRoom {
    /// Up to `limit`, none running, no bound per target.
    pub fn up_to(limit: u32) -> ClaimRoom {
        ClaimRoom {
            limit,
            per_target: u32::MAX,
            busy: BTreeMap::new(),
            longest_wait_ms: None,
        }
    }

    /// `longest_wait_ms`, or a wait no clock step reaches.
    pub fn longest_wait(&self) -> i64 {
        self.longest_wait_ms.unwrap_or(NO_LONGEST_WAIT_MS)
    }

    /// How many more of `target`'s deliveries may be claimed.
    pub fn left_for(&self, target: &str) -> u32 {
        self.per_target
            .saturating_sub(self.busy.get(target).copied().unwrap_or(0))
    }
}

/// One event for one target, as the broker hands it to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// Unique per event and target.
    pub id: String,
    /// The event's id (`webhook-id`): the same for every target and every retry.
    pub event_id: String,
    pub event_type: String,
    pub target: String,
    /// The event as JSON.
    pub body: String,
    pub created_at_ms: i64,
    /// Retried until then, then dead.
    pub deadline_ms: i64,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its first or next attempt (or being attempted now).
    Pending,
    /// A 2xx answer ended it.
    Delivered,
    /// Given up on: past its deadline, or its target is gone.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Result<DeliveryStatus, super::UnknownValue> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "dead" => Ok(DeliveryStatus::Dead),
            other => Err(super::UnknownValue::new("delivery status", other)),
        }
    }
}

/// What a retry by hand did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// The delivery is pending and due now.
    Due,
    /// It was delivered already, and sending it again was not asked for: unchanged.
    AlreadyDelivered,
    /// An attempt is under way (its claim lasts until `until_ms`): unchanged, so that what
    /// that attempt records is not mistaken for the retry's outcome, and the delivery not
    /// sent twice at once.
    UnderWay { until_ms: i64 },
    /// No delivery has this id.
    NotFound,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub target: String,
    pub body: String,
    pub created_at_ms: i64,
    pub deadline_ms: i64,
    pub status: DeliveryStatus,
    /// Attempts started so far; a claim counts one, and finishing needs the same count
    /// (a worker whose claim ran out cannot overwrite a newer attempt's outcome).
    pub attempts: u32,
    /// When a pending delivery is due, or when a running attempt's claim ends.
    pub next_attempt_at_ms: Option<i64>,
    pub last_attempt_at_ms: Option<i64>,
    /// What the last failed attempt got ("HTTP 500", "connection refused").
    pub last_error: Option<String>,
    pub finished_at_ms: Option<i64>,
    /// How many attempts there were when it was last retried by hand (0: never): the
    /// backoff counts only the attempts since.
    pub attempts_before_retry: u32,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Try again at this time.
    Retry {
        at_ms: i64,
        error: String,
    },
    Dead {
        error: String,
    },
}

impl DeliveryOutcome {
    /// What it records: the status, when it is due again, and the error to keep.
    pub fn parts(self) -> (DeliveryStatus, Option<i64>, Option<String>) {
        match self {
            DeliveryOutcome::Delivered => (DeliveryStatus::Delivered, None, None),
            DeliveryOutcome::Retry { at_ms, error } => {
                (DeliveryStatus::Pending, Some(at_ms), Some(error))
            }
            DeliveryOutcome::Dead { error } => (DeliveryStatus::Dead, None, Some(error)),
        }
    }
}

/// A target that answered `410 Gone`: deliveries to it stop while its URL is the one that
/// answered (`url_hash`, so a changed URL in the config starts them again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneTarget {
    pub target: String,
    /// SHA-256 of the URL, hex (the URL may hold a token: it is not stored).
    pub url_hash: String,
    pub since_ms: i64,
}

/// Which deliveries a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFilter {
    All,
    /// Dead ones, and pending ones that failed at least once.
    Failed,
    /// Delivered ones.
    Delivered,
    /// Dead ones only (`events retry --dead`).
    Dead,
    /// Pending ones only (what `oauthd copy` carries).
    Pending,
}

impl DeliveryFilter {
    /// Whether a delivery in `status`, with `last_error`, is one this filter shows.
    pub fn shows(self, status: DeliveryStatus, last_error: Option<&str>) -> bool {
        match self {
            DeliveryFilter::All => true,
            DeliveryFilter::Failed => {
                status == DeliveryStatus::Dead
                    || (status == DeliveryStatus::Pending && last_error.is_some())
            }
            DeliveryFilter::Delivered => status == DeliveryStatus::Delivered,
            DeliveryFilter::Dead => status == DeliveryStatus::Dead,
            DeliveryFilter::Pending => status == DeliveryStatus::Pending,
        }
    }
}

#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Adds deliveries not tied to another change (a test event).
    async fn add_deliveries(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError>;
    /// Claims due pending deliveries for `lease_ms`, as many as `room` leaves: each counts
    /// an attempt and is due again when the lease ends, so a worker that dies mid-attempt
    /// leaves it to another. Oldest due first, past the ones of targets without room.
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        room: &ClaimRoom,
    ) -> Result<Vec<DeliveryRow>, StoreError>;
    /// Records how the attempt numbered `attempt` ended; false (nothing written) when the
    /// delivery moved on meanwhile (claimed again after the lease ran out, retried by hand).
    async fn finish_delivery(
        &self,
        id: &str,
        attempt: u32,
        outcome: DeliveryOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Newest first (by creation), only `target`'s when given.
    async fn list_deliveries(
        &self,
        filter: DeliveryFilter,
        target: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError>;
    /// Makes a delivery pending and due now, with a new deadline, its backoff started
    /// afresh (`attempts_before_retry` = the attempts so far). One delivered already
    /// is left alone unless `again` (the receiver has it: sending it again is asked for);
    /// one with an attempt under way (claimed, the claim not over at `now_ms`) is left
    /// alone: that attempt's outcome is recorded as it comes.
    async fn retry_delivery(
        &self,
        id: &str,
        now_ms: i64,
        deadline_ms: i64,
        again: bool,
    ) -> Result<Retried, StoreError>;
    /// At start, on SQLite: deliveries a previous run claimed and never finished (killed
    /// mid-attempt) are due now rather than when their claim would end; only while no
    /// other `oauthd serve` may serve the file, whose attempts under way they could be
    /// (they were sent twice, and counted no more in their target's room). On Redis the
    /// claims may be other instances' live ones: nothing changes, and a dead instance's
    /// claims end with their lease.
    async fn release_claims(&self, now_ms: i64) -> Result<u64, StoreError>;
    /// How many deliveries are pending.
    async fn pending_deliveries(&self) -> Result<u64, StoreError>;
    /// Deletes delivered and dead deliveries that finished before `before_ms`; returns how
    /// many.
    async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Records that `gone.target` answered `410 Gone` at its URL (over an earlier record).
    async fn set_target_gone(&self, gone: GoneTarget) -> Result<(), StoreError>;
    /// Forgets that `target` answered `410 Gone`; whether it had.
    async fn clear_target_gone(&self, target: &str) -> Result<bool, StoreError>;
    /// The targets that answered `410 Gone`.
    async fn gone_targets(&self) -> Result<Vec<GoneTarget>, StoreError>;
}
