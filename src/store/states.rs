//! The state store's rows, rules and traits: short-lived secrets kept by hash, taken once.

use super::*;

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
    /// The id of the API key that created it, whose live states count against
    /// `InsertRules::max_per_key`; `None` for oauthd's own states.
    pub created_by: Option<String>,
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
    /// The state is guarded by a code (see `attempt_state`); it was left untouched. With its
    /// namespace and expiry: one past its TTL, not swept yet, is expired to a consume.
    SecretRequired {
        namespace: String,
        expires_at_ms: i64,
    },
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
    /// Most live states the API key that creates the row (`StateRow::created_by`) may
    /// hold in all namespaces together (a key whose namespaces are patterns can make up
    /// namespaces, each with a cap of its own). Not checked for a row no key created, nor
    /// when it is not below `max_total` (the store's cap says it then).
    pub max_per_key: u64,
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
    /// Refused: the subject holds `max_per_subject` live states in the namespace, the
    /// first of which expires at `next_expiry_ms`.
    SubjectFull { next_expiry_ms: i64 },
    /// Refused: all namespaces together hold `max_total` live states.
    StoreFull,
    /// Refused: the API key that creates it holds `max_per_key` live states.
    KeyFull,
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
