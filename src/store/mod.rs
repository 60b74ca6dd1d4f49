//! Storage: the traits the services use, and their backends.
//!
//! Owns SQL and Redis. Knows nothing of HTTP or OAuth; never sees a secret in
//! clear text, only its SHA-256. Every error says what was being done.

pub mod change_watch;
pub mod outbox;
#[cfg(feature = "redis")]
pub mod redis;
pub mod sqlite;
pub mod sweeper;
pub mod target;

use crate::secret::SecretHash;
use async_trait::async_trait;
pub use change_watch::ChangeWatch;
pub use outbox::{
    ClaimRoom, DeliveryFilter, DeliveryOutcome, DeliveryRow, DeliveryStatus, GoneTarget,
    NewDelivery, OutboxStore, Retried,
};
use std::sync::Arc;

/// A storage fault. All of them are the operator's problem, not the client's: the HTTP
/// layer answers 503 and the next request tries again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: the database is locked by another process or connection")]
    Busy { context: &'static str },
    #[error("{context}: the disk is full")]
    Full { context: &'static str },
    #[error("{context}: the database is read-only")]
    ReadOnly { context: &'static str },
    /// A file of the database was deleted or replaced under oauthd: writes would be lost.
    #[error("{context}: the database file, or its -wal or -shm file, was deleted or replaced while oauthd had it open (what it wrote now would be lost); oauthd's log says what to do")]
    Moved { context: &'static str },
    /// SQLite found the file damaged (SQLITE_CORRUPT): no retry mends it.
    #[error("{context}: the database is damaged")]
    Damaged { context: &'static str },
    #[error("{context}: Redis is out of memory (maxmemory reached) and refuses writes")]
    OutOfMemory { context: &'static str },
    /// The store's server did not answer: `why` is for the log (an I/O error, a timeout).
    #[error("{context}: Redis is unreachable ({why})")]
    Unreachable { context: &'static str, why: String },
    #[error("{context}: {message}")]
    Unavailable {
        context: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    pub fn unavailable(context: &'static str, message: impl ToString) -> Self {
        StoreError::Unavailable {
            context,
            message: message.to_string(),
        }
    }

    /// What is told to whoever called over HTTP, who may not be the operator: the fixed
    /// texts (locked, full, read-only, out of memory, unreachable) as they are; an
    /// unexpected fault's own message, which may name a file, an address or a setting,
    /// only in oauthd's log.
    pub fn for_callers(&self) -> String {
        match self {
            StoreError::Unavailable { context, message } => {
                log_unavailable(context, message);
                format!("{context}: the storage did not answer; oauthd's log says why")
            }
            StoreError::Damaged { context } => {
                DAMAGE_LOGGED.error(format_args!(
                    "{context}: the database is damaged (SQLite: database disk image is malformed); oauthd cannot mend it: stop oauthd, then restore the last copy (`oauthd restore`) or save what SQLite still reads (`sqlite3 DB .recover`); /readyz answers 503 until then"
                ));
                format!("{context}: the database is damaged; oauthd's log says what to do")
            }
            StoreError::Unreachable { context, why } => {
                log_unavailable(context, &format!("Redis is unreachable ({why})"));
                format!("{context}: Redis is unreachable; oauthd's log says why")
            }
            other => other.to_string(),
        }
    }
}

/// Storage faults said in the log: at most 5 a second (`logging::Budget`).
pub(crate) static FAULTS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more storage faults", 5);

/// A damaged database said in the log: once a minute, at ERROR.
static DAMAGE_LOGGED: crate::logging::Budget =
    crate::logging::Budget::per_minute("more requests that met the damaged database", 1);

/// Logs a fault's message for `for_callers`, within `FAULTS_LOGGED`.
fn log_unavailable(context: &str, message: &str) {
    FAULTS_LOGGED.warn(format_args!("{context}: {message}"));
}

/// A state row as stored: the hash of the value, never the value.
#[derive(Debug, Clone)]
pub struct StateRow {
    pub key_hash: SecretHash,
    pub namespace: String,
    /// The app's JSON, serialized; `None` when the app stored none.
    pub data: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// Whom the state belongs to (a user, a tenant), for listing and revoking by subject.
    pub subject: Option<String>,
    /// The keyed hash of a code the user must present to consume the state.
    pub secret: Option<StateSecret>,
    /// Set when a verify with `touch` may push the expiry out.
    pub sliding: Option<Sliding>,
}

/// A user code guarding a state: its keyed hash and the tries left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSecret {
    pub hash: SecretHash,
    pub attempts_left: u32,
}

/// How far a sliding state's expiry may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    /// Each touch sets the expiry to now plus this.
    pub ttl_ms: i64,
    /// Never later than this (created at plus the longest lifetime).
    pub max_expires_at_ms: i64,
}

/// What a read (or a keyed change) of one state found, without consuming it.
#[derive(Debug)]
pub enum Found {
    /// The row as stored; it may have expired (the caller judges with its clock).
    Row(StateRow),
    /// Only the tombstone of an expired state is left.
    ExpiredTombstone {
        namespace: String,
        expired_at_ms: Option<i64>,
    },
    Missing,
}

/// What a take found is what it took: the same three outcomes.
impl From<Found> for Taken {
    fn from(found: Found) -> Taken {
        match found {
            Found::Row(row) => Taken::Row(row),
            Found::ExpiredTombstone {
                namespace,
                expired_at_ms,
            } => Taken::ExpiredTombstone {
                namespace,
                expired_at_ms,
            },
            Found::Missing => Taken::Missing,
        }
    }
}

/// What one try of a state's code did.
#[derive(Debug)]
pub enum Attempted {
    /// The code matched: the state is consumed and here.
    Matched(StateRow),
    /// The code did not match; the state stays with this many tries left, or is deleted
    /// when none are left (then later attempts find nothing).
    Wrong {
        attempts_left: u32,
    },
    /// The state has no code: consume it instead. Left untouched.
    NoSecret,
    /// The state had expired (now deleted) or only its tombstone was left.
    Expired {
        namespace: String,
        expired_at_ms: Option<i64>,
    },
    Missing,
}

/// What an atomic take (delete-and-return) of a state found.
#[derive(Debug)]
pub enum Taken {
    /// The row, now deleted. It may have expired: the service checks `expires_at_ms`.
    Row(StateRow),
    /// The sweeper had already moved the expired state aside; only its namespace (and,
    /// where the backend keeps it, when it expired) is left.
    ExpiredTombstone {
        namespace: String,
        expired_at_ms: Option<i64>,
    },
    /// Never issued, already consumed, or expired longer ago than the grace window.
    Missing,
    /// The state is guarded by a code (see `attempt_state`); it was left untouched.
    SecretRequired,
}

/// Which namespaces a take may match. A state of any other namespace is left untouched
/// and reported missing: whoever presents it under the wrong flow can neither burn it
/// nor learn that it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceFilter {
    /// Exactly this namespace (the state API).
    Exact(String),
    /// Any namespace starting with this text (a provider's connect flows).
    Prefix(String),
}

impl NamespaceFilter {
    pub fn matches(&self, namespace: &str) -> bool {
        match self {
            NamespaceFilter::Exact(ns) => namespace == ns,
            NamespaceFilter::Prefix(p) => namespace.starts_with(p.as_str()),
        }
    }

    /// The text compared, and whether it is a prefix.
    pub fn parts(&self) -> (&str, bool) {
        match self {
            NamespaceFilter::Exact(ns) => (ns, false),
            NamespaceFilter::Prefix(p) => (p, true),
        }
    }
}

/// What one sweep batch removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepCount {
    /// Expired states whose data was deleted (a tombstone stays for the grace window), by
    /// namespace.
    pub expired_by_namespace: std::collections::BTreeMap<String, u64>,
    /// States forgotten for good: tombstones older than the grace window, and expired
    /// states swept only after it (they get no tombstone).
    pub purged: usize,
}

impl SweepCount {
    /// Expired states whose data was deleted, in all namespaces.
    pub fn expired(&self) -> usize {
        self.expired_by_namespace.values().sum::<u64>() as usize
    }

    /// Adds another batch's counts to these.
    pub fn add(&mut self, other: SweepCount) {
        self.purged += other.purged;
        for (namespace, n) in other.expired_by_namespace {
            *self.expired_by_namespace.entry(namespace).or_default() += n;
        }
    }
}

/// The rules an insert must keep, decided by the state service: both backends apply the
/// same ones (`tests/it/store_contract.rs` holds them to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsertRules {
    /// Most live states the namespace may hold. A state is live until it expires, whether
    /// or not anything has removed it yet: an expired state never counts.
    pub max_live: u64,
    /// The time "live" is judged at.
    pub now_ms: i64,
    /// Until when a take of the state, once expired, must still find at least a tombstone
    /// (answered 410 rather than 404): its expiry plus the grace window.
    pub keep_until_ms: i64,
    /// Delete every other state of the same namespace and subject in the same step.
    pub replace_subject: bool,
    /// Most live states the row's subject may hold in its namespace (after a replace
    /// there is only the new one).
    pub max_per_subject: u64,
    /// Most live states all namespaces together may hold (connect flows included).
    pub max_total: u64,
    /// Most tombstones of expired states the store keeps: past it, the oldest go first
    /// (their states answer 404 instead of 410), so that states made to expire at once
    /// cannot grow the store through their tombstones.
    pub max_tombstones: u64,
}

/// Where a page of a subject's states starts and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectPage {
    /// Only states after this one in the order of creation: its creation time and the
    /// first 16 bytes of its stored key.
    pub after: Option<(i64, [u8; 16])>,
    pub max_rows: usize,
    /// Stored data (sealed, as it is in the store) a page holds at most, beyond its first
    /// state: bounds what one listing holds in memory.
    pub max_data_bytes: usize,
}

impl Default for SubjectPage {
    /// The first page: 1000 states, 1 MiB of data.
    fn default() -> Self {
        SubjectPage {
            after: None,
            max_rows: 1000,
            max_data_bytes: 1024 * 1024,
        }
    }
}

impl SubjectPage {
    /// Whether a state created at `created_at_ms` under `key` comes after `after`.
    pub fn follows(&self, created_at_ms: i64, key: &SecretHash) -> bool {
        match self.after {
            None => true,
            Some((at, prefix)) => (created_at_ms, &key.0[..16]) > (at, &prefix[..]),
        }
    }

    /// Takes `items` in order until the page is full, each holding `size` bytes of data;
    /// true with them when one was left out (more follow).
    pub fn take<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        size: impl Fn(&T) -> usize,
    ) -> (Vec<T>, bool) {
        let mut taken = Vec::new();
        let mut bytes = 0usize;
        for item in items {
            let n = size(&item);
            if taken.len() >= self.max_rows
                || (!taken.is_empty() && bytes.saturating_add(n) > self.max_data_bytes)
            {
                return (taken, true);
            }
            bytes = bytes.saturating_add(n);
            taken.push(item);
        }
        (taken, false)
    }
}

/// The size of a row's stored data.
pub fn data_size(row: &StateRow) -> usize {
    row.data.as_ref().map_or(0, String::len)
}

/// A page of a subject's states.
#[derive(Debug, Clone, Default)]
pub struct SubjectStates {
    pub rows: Vec<StateRow>,
    /// Where the next page starts (`SubjectPage::after`), when more states follow. Not
    /// always the last of `rows`: a state the page chose may be gone by the time it is
    /// read.
    pub next: Option<(i64, [u8; 16])>,
}

/// A state's place in the order of a subject's listing (`SubjectPage::after`).
pub fn listing_position(created_at_ms: i64, key: &SecretHash) -> (i64, [u8; 16]) {
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&key.0[..16]);
    (created_at_ms, prefix)
}

/// What a revoke removed: how many of the states were live, and the key of every state
/// it removed (live or expired), for the caches that hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    pub live: u64,
    pub keys: Vec<SecretHash>,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Stored; with `replace_subject`, the keys of the subject's states it removed.
    Stored { replaced: Vec<SecretHash> },
    /// Refused: the namespace holds `max_live` live states.
    NamespaceFull,
    /// Refused: the subject holds `max_per_subject` live states in the namespace.
    SubjectFull,
    /// Refused: all namespaces together hold `max_total` live states.
    StoreFull,
}

/// Removing expired states: all the sweeper needs of a store.
#[async_trait]
pub trait SweepStates: Send + Sync {
    /// Removes at most `batch` expired states (keeping tombstones while fewer than
    /// `max_tombstones` are kept) and at most `batch` tombstones older than
    /// `purge_before_ms`, or the oldest beyond `max_tombstones`.
    async fn sweep_expired(
        &self,
        now_ms: i64,
        purge_before_ms: i64,
        batch: usize,
        max_tombstones: u64,
    ) -> Result<SweepCount, StoreError>;

    /// Whether requests are waiting for the store right now (the sweeper then slows to
    /// its floor pace and lets them go first). Stores without a queue say no.
    fn busy(&self) -> bool {
        false
    }
}

#[async_trait]
pub trait StateStore: SweepStates {
    /// Where the store watches for other processes' changes: the verify cache then keeps
    /// states while nobody else writes.
    fn change_watch(&self) -> Option<Arc<ChangeWatch>> {
        None
    }
    /// Stores a new state unless its namespace already holds `rules.max_live` live states,
    /// its subject `rules.max_per_subject`, or all namespaces together `rules.max_total`.
    /// Acknowledged only once durable.
    async fn insert_state(&self, row: StateRow, rules: InsertRules)
        -> Result<Inserted, StoreError>;
    /// Deletes the state and returns what was there, in one atomic step: two concurrent
    /// takes of one state never both see the row. A state (or tombstone) whose namespace
    /// `filter` does not match stays as it is and counts as `Missing`.
    async fn take_state(
        &self,
        key_hash: SecretHash,
        filter: &NamespaceFilter,
    ) -> Result<Taken, StoreError>;
    /// The state, without changing anything. A state of a namespace other than `namespace`
    /// counts as `Missing`.
    async fn read_state(&self, key_hash: SecretHash, namespace: &str) -> Result<Found, StoreError>;
    /// Pushes a live sliding state's expiry to `now_ms` plus its TTL, never earlier than it
    /// is and never past its `max_expires_at_ms`, and returns the row as it is afterwards
    /// (its tombstone, if it expires later, lasts `grace_ms` past the new expiry). A state
    /// that is not sliding, or has expired, is returned unchanged.
    async fn touch_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Found, StoreError>;
    /// One try of a state's code, in one atomic step: concurrent tries are counted one by
    /// one and at most one matching try consumes the state. `candidate` is compared with
    /// the stored hash in constant time.
    async fn attempt_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        candidate: SecretHash,
        now_ms: i64,
    ) -> Result<Attempted, StoreError>;
    /// Deletes the state (and any tombstone). True when a live state was there.
    async fn revoke_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Deletes the state with this identifier.
    async fn revoke_state_id(
        &self,
        namespace: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Revoked, StoreError>;
    /// A page of the live states of one subject in a namespace (an index lookup), in the
    /// order they were created: those after `page.after`, at most `page.max_rows`, and no
    /// more than `page.max_data_bytes` of stored data beyond the first.
    async fn subject_states(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
        page: SubjectPage,
    ) -> Result<SubjectStates, StoreError>;
    /// Deletes every state of one subject in a namespace.
    async fn revoke_subject(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Revoked, StoreError>;
    /// The live states of all namespaces together, as the store's cap counts them
    /// (`states.max_total_states`; on SQLite expired states the sweeper has not reached
    /// yet count too).
    async fn live_states_total(&self, now_ms: i64) -> Result<u64, StoreError>;
    /// Every state live at `now_ms` that holds data and whose namespace starts with
    /// `prefix` (for maintenance such as `oauthd rekey --prune` and the vault check at
    /// start, never a request: it reads every live state).
    async fn states_with_data(
        &self,
        prefix: &str,
        now_ms: i64,
    ) -> Result<Vec<StateRow>, StoreError>;
    /// The first `chars` characters of the data of every state live at `now_ms`, each
    /// distinct one with how many states' data starts so (maintenance, as above; only the
    /// prefixes are held, never the data).
    async fn state_data_prefixes(
        &self,
        now_ms: i64,
        chars: usize,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// Whether the store answers reads and writes.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// An API key as stored.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// Allowed namespace patterns; `None` means every namespace.
    pub namespaces: Option<Vec<String>>,
    /// Allowed connection account patterns; `None` means every account.
    pub accounts: Option<Vec<String>>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    /// When an app last presented the key, as recorded (at most once a minute); `None`
    /// for a key not used since oauthd began recording it (2026-12-05).
    pub last_used_at_ms: Option<i64>,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The key with this hash, revoked or not (`revoked_at_ms` says).
    async fn find_key(&self, key_hash: SecretHash) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Fails with `Conflict` when an active key already has this name.
    async fn insert_key(
        &self,
        record: ApiKeyRecord,
        key_hash: SecretHash,
    ) -> Result<(), StoreError>;
    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Whether the key with this id (and, when given, this name) is active: not revoked.
    /// With the name the look-up is a point read on every backend.
    async fn key_active(&self, id: &str, name: Option<&str>) -> Result<bool, StoreError>;
    /// Returns false when no active key has this name.
    async fn revoke_key(&self, name: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Records that the key with this hash was used at `at_ms`, unless a later use is
    /// recorded already. A key that is not there is left so.
    async fn note_key_used(&self, key_hash: SecretHash, at_ms: i64) -> Result<(), StoreError>;
}

/// The generation a new connection row starts at: the time it is made, in ms, times 1,000.
/// A row deleted and made again never comes back to a generation that a process which
/// leased the old one may still hold (that would take 1,000 leases a millisecond), so its
/// save is refused instead of writing the old grant's tokens over the new account's. Below
/// 2^53 until the year 2255: Redis's scripts hold it exactly.
pub fn first_generation(now_ms: i64) -> i64 {
    now_ms.saturating_mul(1000)
}

/// A connection as stored: tokens sealed, never in clear.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    pub provider: String,
    pub account: String,
    pub status: ConnectionStatus,
    pub scopes: Option<String>,
    pub token_type: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub access_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_refresh_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub failures: i64,
    pub retry_at_ms: Option<i64>,
    pub lease_until_ms: Option<i64>,
    /// The fence of every token write: a lease and each write move it on by one. A new
    /// row starts at `first_generation`.
    pub generation: i64,
    /// Which provider account this is, from the last verified ID token.
    pub identity: AccountIdentity,
    /// When the tokens last came from a (re)connect (unknown for rows older than 0.2).
    pub connected_at_ms: Option<i64>,
    /// Since when refreshes have failed without a success in between.
    pub failing_since_ms: Option<i64>,
    /// What the operator was told of this connection's trouble that nothing has proven
    /// over since.
    pub told: Told,
}

/// What the operator was told of a connection's trouble that nothing has proven over since
/// (a refresh that succeeded, or a connect in a browser or by the device flow): each is
/// told once, and `connection.recovered` says when it is over. Imported tokens with a
/// refresh token prove nothing and carry it on. A set of flags, stored as its number (0 to
/// 3; older oauthds wrote 0 and 1 as whether `refresh_failing` was sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Told(u8);

impl Told {
    pub const NOTHING: Told = Told(0);
    /// `connection.refresh_failing` was sent for this run of failures.
    pub const FAILING: Told = Told(1);
    /// `connection.needs_reauth` was sent.
    pub const NEEDS_REAUTH: Told = Told(2);

    pub fn from_stored(n: i64) -> Told {
        Told(u8::try_from(n.clamp(0, 3)).unwrap_or(0))
    }

    pub fn stored(self) -> i64 {
        i64::from(self.0)
    }

    /// This and `other` told.
    pub fn with(self, other: Told) -> Told {
        Told(self.0 | other.0)
    }

    pub fn failing(self) -> bool {
        self.0 & Told::FAILING.0 != 0
    }

    pub fn needs_reauth(self) -> bool {
        self.0 & Told::NEEDS_REAUTH.0 != 0
    }

    pub fn is_nothing(self) -> bool {
        self.0 == 0
    }
}

impl ConnectionRow {
    pub fn key(&self) -> ConnectionKey {
        ConnectionKey::new(&self.provider, &self.account)
    }
}

/// Which account at the provider a connection is: claims of a verified ID token. Not
/// secret; each field is absent when the provider did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AccountIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl AccountIdentity {
    pub fn is_empty(&self) -> bool {
        self.sub.is_none() && self.email.is_none() && self.name.is_none()
    }
}

/// Connections of one provider in one status (`ConnectionStore::count_connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionCount {
    pub provider: String,
    pub status: ConnectionStatus,
    /// Refreshes of these connections are failing (`failures` above 0).
    pub failing: bool,
    pub count: u64,
}

impl ConnectionCount {
    /// Counts connections given as (provider, status, failing).
    pub fn tally(rows: impl Iterator<Item = (String, ConnectionStatus, bool)>) -> Vec<Self> {
        let mut counts: Vec<ConnectionCount> = Vec::new();
        for (provider, status, failing) in rows {
            match counts
                .iter_mut()
                .find(|c| c.provider == provider && c.status == status && c.failing == failing)
            {
                Some(c) => c.count += 1,
                None => counts.push(ConnectionCount {
                    provider,
                    status,
                    failing,
                    count: 1,
                }),
            }
        }
        counts
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionStatus {
    Active,
    /// The grant is gone (invalid_grant): only the user can fix it, by connecting again.
    NeedsReauth,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::Active => "active",
            ConnectionStatus::NeedsReauth => "needs_reauth",
        }
    }

    /// A stored status. Anything else is a damaged row, not an active connection.
    pub fn parse(s: &str) -> Result<ConnectionStatus, UnknownValue> {
        match s {
            "active" => Ok(ConnectionStatus::Active),
            "needs_reauth" => Ok(ConnectionStatus::NeedsReauth),
            other => Err(UnknownValue::new("connection status", other)),
        }
    }
}

/// A stored value oauthd does not know: a damaged row, or one written by a newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} in the store")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

impl UnknownValue {
    fn new(kind: &'static str, value: &str) -> Self {
        UnknownValue {
            kind,
            value: value.chars().take(64).collect(),
        }
    }
}

/// Which connection: a provider and the account name oauthd keeps it under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionKey {
    pub provider: String,
    pub account: String,
}

impl ConnectionKey {
    pub fn new(provider: impl Into<String>, account: impl Into<String>) -> Self {
        ConnectionKey {
            provider: provider.into(),
            account: account.into(),
        }
    }
}

impl std::fmt::Display for ConnectionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.account)
    }
}

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

/// A failed refresh, as recorded on its connection.
#[derive(Debug, Clone, Copy)]
pub struct RefreshFailure<'a> {
    /// `NeedsReauth` when only the user can fix it.
    pub status: ConnectionStatus,
    pub error: &'a str,
    /// No automatic attempt before this (backoff); `None` for no retry at all.
    pub retry_at_ms: Option<i64>,
    pub now_ms: i64,
    /// What the operator has been told once this failure's events are written, stored as
    /// it is: the caller holds the lease over the row it read, and adds to what that row
    /// had been told.
    pub told: Told,
}

/// Sealed tokens to store after a code exchange or a refresh.
#[derive(Debug, Clone)]
pub struct SealedTokens {
    pub scopes: Option<String>,
    pub token_type: String,
    pub access_token: Vec<u8>,
    /// `None` keeps the stored refresh token (a refresh response may omit it).
    pub refresh_token: Option<Vec<u8>>,
    pub access_expires_at_ms: Option<i64>,
}

#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// Where the store watches for other processes' changes: the token cache then keeps
    /// tokens while nobody else writes.
    fn change_watch(&self) -> Option<Arc<ChangeWatch>> {
        None
    }
    async fn get_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionRow>, StoreError>;
    /// Every connection that reads; one that does not (Redis: a field written by hand or
    /// by another version) is skipped with a warning, so that it stops neither the start
    /// nor the refresher.
    async fn list_connections(&self) -> Result<Vec<ConnectionRow>, StoreError>;
    /// Every connection, or an error if one does not read: for what must see them all
    /// (rekey, pruning keys, check), where a skipped one would lose its key.
    async fn list_all_connections(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        self.list_connections().await
    }
    /// How many connections there are of each provider, status and whether their refreshes
    /// are failing: what `/metrics` shows, without reading anyone's tokens where the store
    /// can count by itself.
    async fn count_connections(&self) -> Result<Vec<ConnectionCount>, StoreError> {
        let rows = self.list_connections().await?;
        Ok(ConnectionCount::tally(
            rows.into_iter()
                .map(|r| (r.provider, r.status, r.failures > 0)),
        ))
    }
    /// Stores the tokens of a (re)connect: status active, errors cleared, the account's
    /// identity replaced, and the generation bumped so that a refresh still running for
    /// the old grant is fenced off.
    ///
    /// Every write that changes a connection also adds `events` to the outbox, in the same
    /// transaction, and only when the change itself is made.
    async fn save_connection(
        &self,
        save: ConnectionSave,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<(), StoreError>;
    /// Takes the refresh lease when nobody holds it and the connection is still at
    /// `seen_generation` (the row the caller decided on); returns the new generation.
    /// A row that changed meanwhile (another process refreshed and released the lease)
    /// answers `None`: refreshing with the refresh token read before would replay a
    /// rotated-out token, which makes strict providers revoke the whole grant.
    async fn acquire_refresh_lease(
        &self,
        key: &ConnectionKey,
        seen_generation: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// Notes, with a write, that the refresh lease of `generation` ending at
    /// `lease_until_ms` ran out without being let go, and that the caller will take it
    /// over; false when the row moved on (saved, held on, or taken over meanwhile). A
    /// store that took this write takes the holder's too: a holder still running, trying
    /// to save what its provider answered, lands within a moment of it.
    async fn note_lease_takeover(
        &self,
        key: &ConnectionKey,
        generation: i64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Holds the refresh lease of `generation` `lease_ms` more from `now_ms`, if the
    /// connection is still at that generation (nobody took the lease over); false when it
    /// is not. A small write: it lands where a save of new tokens may not (a Redis at
    /// `maxmemory`), and keeps other processes from refreshing with the refresh token the
    /// provider has just retired while the save is tried again.
    async fn extend_refresh_lease(
        &self,
        key: &ConnectionKey,
        generation: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Stores refreshed tokens and releases the lease, only if `generation` still holds
    /// it (fencing). Returns false when it no longer did: nothing was written. The
    /// generation moves on: a row read while the lease was held is stale afterwards.
    async fn save_refreshed(
        &self,
        key: &ConnectionKey,
        generation: i64,
        tokens: SealedTokens,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError>;
    /// Records a failed refresh and releases the lease, if `generation` still holds it;
    /// the generation moves on, as for `save_refreshed`.
    async fn save_refresh_failure(
        &self,
        key: &ConnectionKey,
        generation: i64,
        failure: RefreshFailure<'_>,
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError>;
    /// Deletes the connection only while it is still the row the caller revoked at the
    /// provider: at `generation` and holding the sealed `access_token` it read. A refresh,
    /// lease or reconnect since then moved it on, and its tokens would be left live at
    /// the provider with no row to revoke them from. (The token, sealed with a fresh
    /// nonce on every save, tells apart a row deleted and created again also where the
    /// generation cannot: rows made before `first_generation` started at 0.) Returns false when nothing was deleted (gone, or moved on).
    async fn delete_connection(
        &self,
        key: &ConnectionKey,
        generation: i64,
        access_token: &[u8],
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError>;
    /// Replaces a connection's sealed tokens only if they are still `old` (compare and
    /// set): a refresh that happened meanwhile wins. Returns whether it replaced them.
    async fn reseal_connection(
        &self,
        key: &ConnectionKey,
        old: (Vec<u8>, Option<Vec<u8>>),
        new: (Vec<u8>, Option<Vec<u8>>),
    ) -> Result<bool, StoreError>;
}

/// What an admin secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminSecretKind {
    /// A one-time login link: consumed on use.
    LoginLink,
    /// A browser session cookie.
    Session,
}

impl AdminSecretKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminSecretKind::LoginLink => "login_link",
            AdminSecretKind::Session => "session",
        }
    }
}

/// What using an admin secret does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretUse {
    /// Only look (a session on every request, a link preview).
    Check,
    /// Delete it in the same step (a login link is used once; signing out).
    Take,
}

#[async_trait]
pub trait AdminStore: Send + Sync {
    async fn insert_admin_secret(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Stores a new login link and ends every earlier one, in one step: only the newest
    /// works, so restarts (a crash loop prints one each time) do not pile up live sign-in
    /// credentials in the log.
    async fn replace_login_link(
        &self,
        hash: SecretHash,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Whether an unexpired secret of this kind exists; `SecretUse::Take` deletes it in
    /// the same step (one-time links, sign-out).
    async fn use_admin_secret(
        &self,
        secret: (SecretHash, AdminSecretKind),
        how: SecretUse,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Whether anyone ever signed in (an unexpired session exists).
    async fn any_admin_session(&self, now_ms: i64) -> Result<bool, StoreError>;
    /// Unexpired browser sessions, by hash and expiry, soonest expiry first.
    async fn list_admin_sessions(&self, now_ms: i64) -> Result<Vec<(SecretHash, i64)>, StoreError>;
    /// Deletes these sessions (every session with `None`); returns how many were there.
    async fn delete_admin_sessions(
        &self,
        hashes: Option<Vec<SecretHash>>,
    ) -> Result<usize, StoreError>;
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
    /// Final without tokens: denied, expired or failed, with a detail.
    Finished {
        status: DeviceFlowStatus,
        detail: String,
    },
    /// The provider issued tokens: the connection is saved as `save_connection` saves it
    /// and the flow finished `connected`, in one write. The device code has been redeemed,
    /// so a flow left pending after a crash would be polled with it again.
    Connected(Box<ConnectionSave>),
}

/// A (re)connect to store: what `save_connection` takes.
#[derive(Debug, Clone)]
pub struct ConnectionSave {
    pub key: ConnectionKey,
    pub tokens: SealedTokens,
    pub identity: AccountIdentity,
    /// `Told::NOTHING` for a connect; what the replaced row had been told, for an import.
    pub told: Told,
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
    ) -> Result<bool, StoreError>;
}

/// What the broker needs: connections, device flows, the outbox their events go to, and
/// the API keys (whether the key that started a flow is still active).
pub trait BrokerStore: ConnectionStore + DeviceFlowStore + OutboxStore + KeyStore {}
impl<T: ConnectionStore + DeviceFlowStore + OutboxStore + KeyStore> BrokerStore for T {}

/// The vault keys a serving oauthd uses, as it tells the other instances on its store:
/// one that seals with a key another cannot open splits the data between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultKeysInUse {
    /// Made up by each process at start.
    pub instance: String,
    /// The ids of the keys it opens with, the one it seals with first.
    pub keys: Vec<String>,
    /// When it first told (unix ms): of two that cannot share their data, the later gives
    /// way.
    pub since_ms: i64,
    /// Until when this holds unless told again (unix ms).
    pub until_ms: i64,
}

impl VaultKeysInUse {
    /// As stored: `<until_ms> <since_ms> <key id> <key id>...`.
    pub fn to_text(&self) -> String {
        [self.until_ms.to_string(), self.since_ms.to_string()]
            .into_iter()
            .chain(self.keys.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What `to_text` wrote, for `instance`; `None` for anything else.
    pub fn from_text(instance: &str, text: &str) -> Option<VaultKeysInUse> {
        let mut words = text.split_whitespace();
        let until_ms = words.next()?.parse().ok()?;
        let since_ms = words.next()?.parse().ok()?;
        let keys: Vec<String> = words.map(str::to_owned).collect();
        (!keys.is_empty()).then(|| VaultKeysInUse {
            instance: instance.to_owned(),
            keys,
            since_ms,
            until_ms,
        })
    }
}

/// What a serving instance tells the others of its vault keys.
#[derive(Clone, Debug)]
pub struct VaultKeysNote {
    /// Made up by each process at start.
    pub instance: String,
    /// The ids of the keys it opens with, the one it seals with first.
    pub keys: Vec<String>,
    /// When it first told, as the store recorded it then; `None` the first time, when the
    /// store stamps it.
    pub since_ms: Option<i64>,
    /// How long this holds unless told again.
    pub holds: std::time::Duration,
}

/// One backend holding everything: the SQLite file or a shared Redis.
#[async_trait]
pub trait Store: StateStore + KeyStore + AdminStore + BrokerStore {
    /// Where the data lives, for logs and reports (never a password).
    fn describe(&self) -> String;
    /// What an operator should hear about at start (say, Redis without persistence).
    async fn warnings(&self) -> Result<Vec<String>, StoreError>;
    /// A deep self-test for `oauthd check`: what was verified, or what is wrong.
    async fn integrity(&self) -> Result<String, String>;
    /// Notes that `oauthd serve` runs on this store (kept from the first time). Only a
    /// store beside which a vault key file may be made (SQLite) keeps it.
    async fn mark_served(&self, _now_ms: i64) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether `oauthd serve` has run on this store (false where it is not kept).
    async fn was_served(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// The id this store holds for itself, made `candidate` when it holds none: written
    /// once and never ending, so that an oauthd can tell a store that lost what it held (a
    /// Redis restarted empty, a `FLUSHALL`) from one it could not reach for a while, or
    /// whose notes ended early by a clock's step.
    async fn store_id(&self, candidate: &str) -> Result<String, StoreError>;
    /// Tells the other instances on this store which vault keys this one uses (over
    /// what it told before), and forgets what others told that ended before now; returns
    /// when the instance first told, as recorded. `now_ms` is this process's clock: a store
    /// that instances on other machines share (Redis) goes by its own, so that hosts whose
    /// clocks differ still see each other's notes for as long as they hold.
    async fn note_vault_keys(&self, note: VaultKeysNote, now_ms: i64) -> Result<i64, StoreError>;
    /// What serving instances told of their vault keys that still holds now (`now_ms`, or
    /// the store's own clock, as for `note_vault_keys`).
    async fn vault_keys_in_use(&self, now_ms: i64) -> Result<Vec<VaultKeysInUse>, StoreError>;
    /// Forgets what `instance` told (it stops).
    async fn forget_vault_keys(&self, instance: &str) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_statuses_read_back_and_unknown_words_are_errors_not_defaults() {
        for s in [ConnectionStatus::Active, ConnectionStatus::NeedsReauth] {
            assert_eq!(ConnectionStatus::parse(s.as_str()), Ok(s));
        }
        assert!(ConnectionStatus::parse("suspended").is_err());
        assert!(ConnectionStatus::parse("").is_err());
        for s in ["pending", "connected", "denied", "expired", "failed"] {
            assert_eq!(
                DeviceFlowStatus::parse(s).map(DeviceFlowStatus::as_str),
                Ok(s)
            );
        }
        let e = DeviceFlowStatus::parse("paused").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown device flow status \"paused\" in the store"
        );
    }
}
