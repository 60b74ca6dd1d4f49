//! Device flows (RFC 8628) in progress: their rows, polls and the trait.

use super::*;

/// Where a device flow stands. Only `Pending` ever changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceFlowStatus {
    Pending,
    Connected,
    Denied,
    Expired,
    Failed,
}

impl std::fmt::Display for DeviceFlowStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl DeviceFlowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceFlowStatus::Pending => "pending",
            DeviceFlowStatus::Connected => "connected",
            DeviceFlowStatus::Denied => "denied",
            DeviceFlowStatus::Expired => "expired",
            DeviceFlowStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<DeviceFlowStatus, UnknownValue> {
        [
            DeviceFlowStatus::Pending,
            DeviceFlowStatus::Connected,
            DeviceFlowStatus::Denied,
            DeviceFlowStatus::Expired,
            DeviceFlowStatus::Failed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| UnknownValue::new("device flow status", s))
    }
}

/// A device authorization grant in progress (RFC 8628), as stored.
#[derive(Debug, Clone)]
pub struct DeviceFlowRow {
    pub id: String,
    pub provider: String,
    pub account: String,
    /// Sealed.
    pub device_code: Vec<u8>,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub interval_ms: i64,
    pub expires_at_ms: i64,
    pub status: DeviceFlowStatus,
    pub detail: Option<String>,
    /// Why it ended without connecting, as a stable code the broker chose; `None` while
    /// pending, once connected, and for flows stored before the store kept it.
    pub error: Option<String>,
    pub next_poll_at_ms: i64,
    pub created_at_ms: i64,
    /// Who started it: "key:<API key id>", "admin" (the page) or "cli".
    pub started_by: String,
}

/// How one poll ended, to record on the flow.
#[derive(Debug, Clone)]
pub enum DevicePollOutcome {
    /// Keep polling (authorization_pending, slow_down, a transient fault): at
    /// `interval_ms` (what apps see), the next poll `delay_ms` from now.
    Pending { interval_ms: i64, delay_ms: i64 },
    /// Final without tokens: denied, expired or failed, with a stable code and a detail.
    Finished {
        status: DeviceFlowStatus,
        error: String,
        detail: String,
    },
    /// Ended from outside as `failed` (its connection deleted), whoever polls it: a poll
    /// under way that comes back with tokens finds it ended, and stores nothing.
    Withdrawn { error: String, detail: String },
    /// The provider issued tokens: the connection is saved as `save_connection` saves it
    /// and the flow finished `connected`, with `detail`, in one write. The device code has
    /// been redeemed, so a flow left pending after a crash would be polled with it again.
    Connected {
        save: Box<ConnectionSave>,
        detail: String,
    },
}

/// What `finish_device_poll` did.
#[derive(Debug)]
pub enum PollRecorded {
    /// Not recorded: the flow was no longer pending, or another process holds its claim.
    No,
    /// Recorded. For `Connected`, the connection row its tokens replaced, as it was then
    /// (see `save_connection`).
    Yes(Option<Box<ConnectionRow>>),
}

impl PollRecorded {
    pub fn recorded(&self) -> bool {
        matches!(self, PollRecorded::Yes(_))
    }
}

/// A device poll claimed by one process: the flow as claimed, and the claim that fences
/// what is recorded for it (`finish_device_poll`).
#[derive(Debug, Clone)]
pub struct ClaimedPoll {
    pub flow: DeviceFlowRow,
    /// Opaque; different for every claim of a flow.
    pub claim: String,
}

#[async_trait]
pub trait DeviceFlowStore: Send + Sync {
    /// Stores a new flow unless its starter already has `max_pending` pending, unexpired
    /// flows (returns false then).
    async fn insert_device_flow(
        &self,
        row: DeviceFlowRow,
        max_pending: u32,
    ) -> Result<bool, StoreError>;
    /// How many pending, unexpired flows this starter has.
    async fn pending_device_flows_of(
        &self,
        started_by: &str,
        now_ms: i64,
    ) -> Result<u32, StoreError>;
    async fn get_device_flow(&self, id: &str) -> Result<Option<DeviceFlowRow>, StoreError>;
    /// The pending flows that read (as `list_connections`, one that does not is skipped).
    async fn pending_device_flows(&self) -> Result<Vec<DeviceFlowRow>, StoreError>;
    /// The pending flows, or an error if one does not read (as `list_all_connections`).
    async fn all_pending_device_flows(&self) -> Result<Vec<DeviceFlowRow>, StoreError> {
        self.pending_device_flows().await
    }
    /// Claims the next poll of a pending flow when it is due and nobody else is polling
    /// it, for `lease_ms`; returns the flow as claimed. Exactly one process wins each poll.
    async fn claim_device_poll(
        &self,
        id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedPoll>, StoreError>;
    /// Replaces a pending flow's sealed device code only if it is still `old` (compare
    /// and set, for `oauthd rekey`). Returns whether it replaced it.
    async fn reseal_device_code(
        &self,
        id: &str,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError>;
    /// Records a poll's outcome on a pending flow and releases the claim; returns whether
    /// it recorded it. `claim` is the caller's (`None`: it holds none, as when a flow is
    /// found expired). An outcome never overrides another process's live claim (a poll that
    /// ran past its lease must not free the flow under the next poller), except
    /// `Connected`: tokens in hand end the flow whoever polls it. A finished flow's device
    /// code is erased: it is never sent again, so nothing sealed is left in the row.
    /// `events` are added to the outbox in the same transaction.
    async fn finish_device_poll(
        &self,
        id: &str,
        claim: Option<&str>,
        outcome: DevicePollOutcome,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<PollRecorded, StoreError>;
}
