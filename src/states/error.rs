//! What the state service refuses, and why, in the words callers are told.

use crate::store::StoreError;
use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "unknown state: never issued in this namespace, already consumed or revoked, or expired (an expired state answers 410 once, then this)"
    )]
    NotFound,
    #[error(
        "no live state to revoke: never issued in this namespace, already consumed or revoked, or expired (a revoke also removes what an expired one left, so it answers 404 from then on)"
    )]
    NothingToRevoke,
    #[error("the state has expired")]
    Expired { namespace: String },
    #[error("ttl_seconds must be between 1 and {max} for namespace {namespace} (the operator raises it with max_ttl_seconds in {table} in oauthd's config)")]
    TtlOutOfRange {
        namespace: String,
        max: u64,
        table: String,
    },
    #[error("data is {size} bytes of JSON; at most {max} are accepted")]
    DataTooLarge { size: usize, max: usize },
    #[error("namespace {namespace} already holds {max} live states (max_states in {table}); consume or let some expire first")]
    NamespaceFull {
        namespace: String,
        max: u64,
        table: String,
    },
    #[error("this subject already holds {max} live states in namespace {namespace} (max_states_per_subject in {table}); revoke some, create with replace, or wait {retry_after_secs} s for the first of them to expire")]
    SubjectFull {
        namespace: String,
        max: u64,
        table: String,
        /// Until the subject's first live state expires (at least 1).
        retry_after_secs: u64,
    },
    #[error("the store already holds {max} live states in all namespaces together (states.max_total_states{}); consume or let some expire first", room_full_too(*.room))]
    StoreFull { max: u64, room: super::Room },
    #[error("this API key's states already hold {max} live states in all namespaces together (states.max_states_per_key); consume, revoke or let some expire first")]
    KeyFull { max: u64 },
    #[error("wrong code")]
    WrongSecret { attempts_left: u32 },
    #[error("this state is guarded by a code: present it with POST /v1/states/attempt")]
    SecretRequired,
    #[error("this state has no code; consume it with POST /v1/states/consume")]
    NoSecret,
    #[error("namespace {namespace} does not allow sliding states (sliding = false in {table})")]
    SlidingNotAllowed { namespace: String, table: String },
    #[error("{}", lifetime_out_of_range(namespace, *min, *max))]
    LifetimeOutOfRange {
        namespace: String,
        min: u64,
        max: u64,
    },
    #[error(
        "namespace {namespace} allows at most {max} attempts (max_attempts_ceiling in {table})"
    )]
    TooManyAttempts {
        namespace: String,
        max: u32,
        table: String,
    },
    #[error("replace needs a subject: it revokes the subject's other states")]
    SubjectRequired,
    #[error("the system random number generator failed")]
    Entropy,
    /// The state's data could not be sealed or opened (a vault key not loaded, a row
    /// altered at rest).
    #[error("the state's data: {0}")]
    Vault(#[from] VaultError),
    /// Data in clear met before the start's look at stored data has said whether this
    /// state's may be read (`check_stored_data`): nothing is decided, nothing consumed.
    #[error("the state's data was stored by an older oauthd, and the start's look at such data has not finished: try again in a moment")]
    DataNotYetChecked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `LifetimeOutOfRange`'s text: a range, or, when the TTL alone is past the namespace's
/// longest lifetime, that the TTL is too long (no lifetime could be sent).
fn lifetime_out_of_range(namespace: &str, min: u64, max: u64) -> String {
    if min > max {
        format!("a sliding state in namespace {namespace} lives at most {max} s (max_lifetime_seconds), less than its TTL ({min} s): send a shorter ttl_seconds")
    } else {
        format!("max_lifetime_seconds must be between the TTL ({min}) and {max} for namespace {namespace}")
    }
}

impl StateError {
    /// As `StoreError::for_callers`: what is told over HTTP.
    pub fn for_callers(&self) -> String {
        match self {
            StateError::Store(e) => e.for_callers(),
            other => other.to_string(),
        }
    }
}

/// Said of a full store when the operator's room past `max_total_states` is full too.
pub(super) fn room_full_too(room: super::Room) -> &'static str {
    match room {
        super::Room::Apps => "",
        super::Room::Operator => {
            ", and the room past it kept for connect flows from oauthd's page and the CLI"
        }
    }
}
