//! Connected accounts: their rows, what a write of them carries, and the trait.

use super::*;

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

    /// Whether both say which account they are (`sub`), and they are not the same one.
    pub fn another_than(&self, other: &AccountIdentity) -> bool {
        matches!((&self.sub, &other.sub), (Some(a), Some(b)) if a != b)
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

/// A failed refresh, as recorded on its connection.
#[derive(Debug, Clone)]
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
    /// A new refresh token (sealed) the failed refresh's answer brought, kept in place of
    /// the stored one: a rotating provider retired that one when it answered.
    pub refresh_token: Option<Vec<u8>>,
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
    /// The accounts of `provider`'s active connections whose account at the provider is
    /// `sub` (as when one browser signed in at the provider connects several), sorted:
    /// they share a grant at many providers. Reads no tokens where the store can filter
    /// by itself.
    async fn accounts_signed_in_as(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Vec<String>, StoreError>;
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
    ///
    /// Returns the row it replaced, as it was at that moment (`None`: a new connection):
    /// what the caller read before may be older (a refresh saved since, in this process or
    /// another), and only this row's grant is the one the save leaves behind.
    async fn save_connection(
        &self,
        save: ConnectionSave,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<Option<ConnectionRow>, StoreError>;
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
    /// Lets go of the refresh lease of `generation`, writing nothing else: one taken for
    /// a caller gone before it learned it had it (nobody refreshes with it, and it would
    /// hold off every refresh of the connection until it ran out). False when the row
    /// moved on.
    async fn release_refresh_lease(
        &self,
        key: &ConnectionKey,
        generation: i64,
    ) -> Result<bool, StoreError>;
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

/// A (re)connect to store: what `save_connection` takes.
#[derive(Debug, Clone)]
pub struct ConnectionSave {
    pub key: ConnectionKey,
    pub tokens: SealedTokens,
    pub identity: AccountIdentity,
    /// `Told::NOTHING` for a connect; what the replaced row had been told, for an import.
    pub told: Told,
    /// Whether the tokens are a provider's answer of now (a connect), whose expiry counts
    /// the lifetime it gave them from about now: `last_refresh_at` is then set. Tokens an
    /// app imports come with an unknown part of their lifetime spent; read as a lifetime,
    /// the time they have left would hold callers' `min_ttl` to half of it
    /// (`refresh_policy::half_life_ms`), and a token with seconds left was handed out to a
    /// call asking for a minute. Their `last_refresh_at` stays unset until a refresh.
    pub from_provider: bool,
}
