//! Handing out access tokens: single-flight refresh, the cross-process lease and backoff.
//!
//! The refresh rules, each guarding against a failure seen in the field:
//! - one refresh per connection at a time: in-process callers queue on a mutex and find
//!   the fresh token when it is their turn; another oauthd process on the same database
//!   is kept out by a lease whose generation fences late writers;
//! - the new tokens are committed before anyone gets the new access token;
//! - a refresh response without `refresh_token` keeps the stored one;
//! - `invalid_grant` is final: the connection needs reauth and is not retried;
//! - other failures back off exponentially (5 s doubling, at most 10 minutes);
//! - `min_ttl` is capped at half the provider's token lifetime, so no caller can make
//!   every request a refresh.

use super::flight::Turn;
use super::refresh_policy::{
    backing_off_until, backoff_ms, due_for_refresh, half_life_ms, lasts, obtained_at,
    obtained_before_step, BACKOFF_MAX_MS,
};
use super::refresh_save::SAVE_FAILING;
use super::{token_aad, Broker, BrokerError};
use crate::oauth::flows::{self, FlowError};
use crate::oauth::provider::check_name;
use crate::oauth::Provider;
use crate::read_cache::ReadTicket;
use crate::store::{ConnectionKey, ConnectionRow, ConnectionStatus, RefreshFailure, Told};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// How long a caller waits for a refresh another process is running.
pub(super) const WAIT_FOR_OTHER: Duration = Duration::from_secs(20);
/// A token the provider's API refuses this soon after oauthd refreshed it is not
/// refreshed again (see `access_token_instead_of`): at most one such refresh per
/// connection in this time, however often an endpoint answers 401.
const REJECTED_MIN_AGE_MS: i64 = 10 * 60_000;

/// An access token for an app, shared (`Arc`) by the cache and the calls it answers.
/// Redacted in `Debug`; zeroized when dropped.
pub struct AccessToken {
    pub access_token: Zeroizing<String>,
    pub token_type: String,
    pub expires_at_ms: Option<i64>,
    pub scope: Option<String>,
    /// Its answer to an app, once written.
    pub answer: AnswerOnce,
}

/// A token's answer as the token API writes it, kept with the token for as long as the
/// token is cached: the same token is not written out as JSON again for every call (it
/// was a tenth of a call's instructions). The bytes are zeroed when the last copy of them
/// is dropped (`secret::wiped_json`), as the token is.
#[derive(Default)]
pub struct AnswerOnce(std::sync::OnceLock<bytes::Bytes>);

impl AnswerOnce {
    /// The answer, written by `write` the first time.
    pub fn get_or_write<E>(
        &self,
        write: impl FnOnce() -> Result<bytes::Bytes, E>,
    ) -> Result<bytes::Bytes, E> {
        if let Some(written) = self.0.get() {
            return Ok(written.clone());
        }
        let written = write()?;
        Ok(self.0.get_or_init(|| written).clone())
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token_type", &self.token_type)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// What a refresh is asked for: a token with `min_ttl` left (`force`: a new one however
/// long the stored one has), other than `rejected`, unless one was stored since
/// `asked_at` (taken before waiting for the connection's turn, so that callers queued
/// behind a refresh take its token instead of refreshing again one after the other).
struct Ask<'a> {
    min_ttl: Duration,
    force: bool,
    rejected: Option<&'a str>,
    asked_at: i64,
}

/// A refresh lease taken: the generation it fences, when it ends at the latest (on the
/// monotonic clock), and how discovering the provider's endpoints went before it.
struct Leased {
    generation: i64,
    until: tokio::time::Instant,
    discovered: Result<(), String>,
    /// When the refresh lease taken over had been taken, if it ran out without being
    /// let go: the process that held it stopped before saving (killed, or its store
    /// failed), and may have spent the stored refresh token.
    after_lost: Option<i64>,
}

/// How long a refresh waits, after noting that it takes over a lease that ran out
/// unreleased (a write the store took), before it does: the lease's holder, if its process
/// still runs, tries to save what its provider answered every 200 ms, and lands first.
/// Longer than a Redis command's timeout (3 s) with a try after it: a holder whose save
/// waited on a connection that stalled has had another.
const TAKEOVER_GRACE: Duration = Duration::from_secs(10);

/// The most `Retry-After` a caller told of another process's lease hears (seconds).
const LEASE_RETRY_AFTER_MAX: u64 = 10;

/// How often a refresh waiting out `TAKEOVER_GRACE` looks whether the holder has saved.
const TAKEOVER_LOOK: Duration = Duration::from_millis(200);

fn refreshed(provider: &str, result: &str) {
    crate::metrics::REFRESHES
        .with_label_values(&[provider, result])
        .inc();
}

/// How long before its lease ends a failed refresh that keeps a new refresh token stops
/// trying to store it while the store fails (a try takes up to 5 s): past the lease,
/// another process may take over and refresh with the retired one.
const KEEP_MARGIN: Duration = Duration::from_secs(6);

/// The answer of a lease taken apart from its caller (`Broker::take_lease`). Dropped
/// unread (the caller gone after the answer came, before it was read), a lease it holds is
/// let go.
struct LeaseAnswer {
    told: tokio::sync::oneshot::Receiver<Result<Option<i64>, crate::store::StoreError>>,
    store: Arc<dyn super::BrokerStore>,
    key: ConnectionKey,
}

impl Drop for LeaseAnswer {
    fn drop(&mut self) {
        if let Ok(Ok(Some(generation))) = self.told.try_recv() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(let_go(self.store.clone(), self.key.clone(), generation));
            }
        }
    }
}

/// Lets go of the lease of `generation`, taken for a caller gone before it learned it had it.
async fn let_go(store: Arc<dyn super::BrokerStore>, key: ConnectionKey, generation: i64) {
    match store.release_refresh_lease(&key, generation).await {
        Ok(_) => log::info!("refresh {key}: the call that took the refresh lease was gone; let go"),
        Err(e) => log::warn!("refresh {key}: the call that took the refresh lease was gone, and letting go of it failed ({e}); it runs out by itself"),
    }
}

/// Why a refresh failed, as far as what happens next is concerned.
enum Failure {
    /// The grant is gone: only the user can fix it, by connecting again.
    Reauth(String),
    /// Worth another try after a backoff, and not before the provider asked.
    Transient {
        error: String,
        asked_ms: i64,
        /// A new refresh token the answer brought (sealed), kept all the same, and the
        /// lease's end, until which its save is tried again while the store fails.
        refresh_token: Option<(Vec<u8>, tokio::time::Instant)>,
    },
}

/// Sealed tokens that do not open, said in the log (the caller is told only that it
/// happened): at most one line a second.
static UNOPENED_TOKENS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more tokens that cannot be opened", 1);

/// Tokens stored before this clock stepped back, said in the log: at most 5 a
/// minute.
static OBTAINED_BEFORE_STEP_LOGGED: crate::logging::Budget =
    crate::logging::Budget::per_minute("more tokens stored before the clock stepped back", 5);

fn said_obtained_before_step(row: &ConnectionRow, now: i64) {
    let written = obtained_at(row);
    OBTAINED_BEFORE_STEP_LOGGED.warn(format_args!(
        "connection {}/{}: its token was stored at {}, {} s ahead of this machine's clock, which was stepped back since (NTP fixing a clock that ran ahead, a restored snapshot): its expiry says nothing of the time left, so it is refreshed rather than handed out",
        row.provider,
        row.account,
        crate::clock::rfc3339(written),
        written.saturating_sub(now) / 1000
    ));
}

impl Broker {
    /// The latest time a connection's token was stored at, when it lies ahead of this
    /// clock: noted on the clock as a step back (`Clock::stepped_back`), so that those
    /// tokens are refreshed rather than trusted. For a store no other machine writes to
    /// (a SQLite file), where no other instance's clock explains it.
    pub async fn note_tokens_stored_ahead(&self) -> Result<Option<i64>, BrokerError> {
        let now = self.clock.now_ms();
        let newest = self
            .store
            .list_all_connections()
            .await?
            .iter()
            .map(obtained_at)
            .max()
            .filter(|&at| crate::clock::is_ahead(at, now));
        if newest.is_some() {
            self.clock.note_stepped_back();
        }
        Ok(newest)
    }

    pub(super) async fn row(&self, key: &ConnectionKey) -> Result<ConnectionRow, BrokerError> {
        // No connection has a name `check_name` refuses: such a name in a path is a bad
        // request (as on `PUT`), not one more connection that is not there.
        check_name("account", &key.account).map_err(BrokerError::InvalidAccount)?;
        self.store
            .get_connection(key)
            .await?
            .ok_or_else(|| BrokerError::ConnectionNotFound {
                provider: key.provider.clone(),
                account: key.account.clone(),
            })
    }

    fn needs_reauth(&self, row: &ConnectionRow) -> BrokerError {
        BrokerError::NeedsReauth {
            provider: row.provider.clone(),
            account: row.account.clone(),
            reason: row
                .last_error
                .clone()
                .unwrap_or_else(|| "the grant is no longer valid".into()),
            reconnect_url: self.reconnect_url(&row.provider, &row.account),
        }
    }

    /// The stored access token, if it has at least `min_ttl` left.
    fn usable(
        &self,
        row: &ConnectionRow,
        min_ttl: Duration,
        ticket: ReadTicket,
    ) -> Result<Option<Arc<AccessToken>>, BrokerError> {
        if row.status == ConnectionStatus::NeedsReauth {
            return Err(self.needs_reauth(row));
        }
        let now = self.clock.now_ms();
        if !lasts(row.access_expires_at_ms, half_life_ms(row), min_ttl, now) {
            return Ok(None);
        }
        if row.refresh_token.is_some() && obtained_before_step(row, now, self.clock.stepped_back())
        {
            said_obtained_before_step(row, now);
            return Ok(None);
        }
        let aad = token_aad(&row.provider, &row.account, "access_token");
        let token = Arc::new(AccessToken {
            access_token: self
                .vault
                .open_str(&aad, &row.access_token)
                .inspect_err(|e| {
                    UNOPENED_TOKENS_LOGGED.error(format_args!(
                        "connection {}/{}: its access token cannot be opened: {e}",
                        row.provider, row.account
                    ))
                })?,
            token_type: row.token_type.clone(),
            expires_at_ms: row.access_expires_at_ms,
            scope: row.scopes.clone(),
            answer: AnswerOnce::default(),
        });
        let written = obtained_at(row);
        self.token_cache.put(
            &row.key(),
            (token.clone(), half_life_ms(row), written),
            ticket,
        );
        Ok(Some(token))
    }

    /// An access token with at least `min_ttl` of life, refreshing first when needed.
    pub async fn access_token(
        self: &Arc<Self>,
        provider_name: &str,
        account: &str,
        min_ttl: Duration,
    ) -> Result<Arc<AccessToken>, BrokerError> {
        let provider = self.provider(provider_name)?.clone();
        let key = ConnectionKey::new(provider_name, account);
        // The hot path: a token read from the store within `token_cache_seconds`.
        if let Some((token, half_life, written)) = self.token_cache.get(&key) {
            let now = self.clock.now_ms();
            if lasts(token.expires_at_ms, half_life, min_ttl, now)
                && !(self.clock.stepped_back() && crate::clock::is_ahead(written, now))
            {
                return Ok(token);
            }
        }
        let ticket = self.token_cache.begin_read();
        let row = self.row(&key).await?;
        if let Some(token) = self.usable(&row, min_ttl, ticket)? {
            return Ok(token);
        }
        let ask = Ask {
            min_ttl,
            force: false,
            rejected: None,
            asked_at: self.clock.now_ms(),
        };
        self.refresh_single_flight(&provider, &key, ask).await
    }

    /// Refreshes `key` now, whatever its token has left (unless something refreshed it
    /// meanwhile): how a connection learns whether its grant still holds. A connection
    /// without a refresh token is left alone.
    pub(super) async fn refresh_now(
        self: &Arc<Self>,
        key: &ConnectionKey,
    ) -> Result<(), BrokerError> {
        let provider = self.provider(&key.provider)?.clone();
        if self.row(key).await?.refresh_token.is_none() {
            return Ok(());
        }
        let ask = Ask {
            min_ttl: Duration::ZERO,
            force: true,
            rejected: None,
            asked_at: self.clock.now_ms(),
        };
        self.refresh_single_flight(&provider, key, ask)
            .await
            .map(|_| ())
    }

    /// `oauthd connections refresh`: a refresh now, the backoff of earlier failures not
    /// waited out (a terminal command is a process of its own, which tries once), as an
    /// operator asks once the provider is back. The connection as it is afterwards; a
    /// refusal says why. A connection that needs its owner, or has no refresh token, is
    /// left as it is and said so.
    pub async fn refresh_by_hand(
        self: &Arc<Self>,
        provider: &str,
        account: &str,
    ) -> Result<super::views::ConnectionView, BrokerError> {
        self.provider(provider)?;
        let key = ConnectionKey::new(provider, account);
        let row = self.row(&key).await?;
        if row.status == ConnectionStatus::NeedsReauth {
            return Err(self.needs_reauth(&row));
        }
        if row.refresh_token.is_none() {
            return Err(BrokerError::NoRefreshToken {
                provider: key.provider,
                account: key.account,
            });
        }
        self.refresh_now(&key).await?;
        self.connection(provider, account).await
    }

    /// Whether this process has asked the provider to refresh `key` since its start (a
    /// backoff recorded before that is tried once, `refresh_in_turn`).
    fn tried_since_start(&self, key: &ConnectionKey) -> bool {
        self.tried_since_start
            .lock()
            .map(|tried| tried.contains(key))
            .unwrap_or(true)
    }

    /// Notes that this process took a lease to refresh `key`: backoffs are waited out from
    /// now on, its own (`record_failure`) and other processes' alike.
    fn mark_tried(&self, key: &ConnectionKey) {
        if let Ok(mut tried) = self.tried_since_start.lock() {
            // Bounded: an entry per connection this process refreshed and did not delete
            // (`forget_tried`); one another process deleted stays until the next start.
            tried.insert(key.clone());
        }
    }

    /// A connection deleted here: an app that imports, refreshes and deletes connection
    /// after connection does not grow the set until the next restart.
    pub(super) fn forget_tried(&self, key: &ConnectionKey) {
        if let Ok(mut tried) = self.tried_since_start.lock() {
            tried.remove(key);
        }
    }

    /// Another access token than `rejected`, which the provider's API just refused (the
    /// proxy's `401`): the stored one when a refresh (here, or in another process) already
    /// replaced it, else a refresh now, once for every caller holding the same rejected
    /// token (they queue on the single-flight). `None` when oauthd refreshed the rejected
    /// token less than `REJECTED_MIN_AGE_MS` ago: that `401` is not about an old token, and
    /// refreshing on every such answer would burn refresh tokens for nothing. `None` too
    /// for a token that has not expired and cannot be refreshed (the provider gave no
    /// refresh token): a `401` on one request (a missing scope, an endpoint for other
    /// kinds of token) says nothing of the grant, and taking it for a dead one would put
    /// the connection in `needs_reauth` for every app, at one request of any key.
    pub async fn access_token_instead_of(
        self: &Arc<Self>,
        provider_name: &str,
        account: &str,
        rejected: &AccessToken,
    ) -> Result<Option<Arc<AccessToken>>, BrokerError> {
        let provider = self.provider(provider_name)?.clone();
        let key = ConnectionKey::new(provider_name, account);
        let ticket = self.token_cache.begin_read();
        let row = self.row(&key).await?;
        if let Some(current) = self.usable(&row, Duration::ZERO, ticket)? {
            if current.access_token.as_str() != rejected.access_token.as_str() {
                return Ok(Some(current));
            }
            // Only a token oauthd refreshed itself is known to be new; one from a connect
            // or an import (which also set last_refresh_at) may be older than it looks,
            // and gets its one refresh.
            let now = self.clock.now_ms();
            // A refresh "later" than now (a clock stepped back since) is not recent.
            let refreshed_recently = row.last_refresh_at_ms.is_some_and(|t| {
                (0..REJECTED_MIN_AGE_MS).contains(&now.saturating_sub(t))
                    && row.connected_at_ms.is_none_or(|c| t > c)
            });
            if refreshed_recently || row.refresh_token.is_none() {
                return Ok(None);
            }
        }
        let ask = Ask {
            min_ttl: Duration::ZERO,
            force: false,
            rejected: Some(rejected.access_token.as_str()),
            asked_at: self.clock.now_ms(),
        };
        self.refresh_single_flight(&provider, &key, ask)
            .await
            .map(Some)
    }

    /// Refreshes whatever is due: tokens close to expiry, and refresh tokens that would
    /// die of idleness (the provider's `refresh_idle_expiry`). Returns how many were
    /// refreshed; failures are recorded on the connection and logged. Once `stopping`
    /// says so, no further connection is begun (a stop waits only for the one under way,
    /// not for a round that may take a provider's timeout per connection).
    pub async fn refresh_due(
        self: &Arc<Self>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<usize, BrokerError> {
        let now = self.clock.now_ms();
        let mut refreshed = 0;
        for row in self.store.list_connections().await? {
            // Told by the caller, or by the stop that now waits for this round's refresh
            // under way (and would wait for every further one).
            if stopping() || self.stopping() {
                break;
            }
            let Ok(provider) = self.provider(&row.provider).map(Arc::clone) else {
                continue;
            };
            if !due_for_refresh(
                &row,
                provider.quirks.refresh_idle_expiry,
                now,
                self.clock.stepped_back(),
            ) {
                continue;
            }
            // A connection something in this process is on already (a token call's
            // refresh, or a disconnect waiting for a provider) is left for the next round:
            // waiting for it would hold up every connection after it.
            let key = row.key();
            let Some(turn) = self.in_flight.try_turn(&key) else {
                log::debug!(
                    "background refresh {}/{}: busy, left for the next round",
                    row.provider,
                    row.account
                );
                continue;
            };
            // Forced (a refresh token kept alive need not be close to expiry), unless
            // something refreshed it since the round began.
            let ask = Ask {
                min_ttl: Duration::ZERO,
                force: true,
                rejected: None,
                asked_at: now,
            };
            let answer_by = tokio::time::Instant::now() + self.caller_wait;
            match self
                .refresh_in_turn(turn, &provider, &key, ask, answer_by)
                .await
            {
                Ok(_) => refreshed += 1,
                // The provider's refusals and failures are logged where they are recorded
                // (once each, with the backoff), and another process's lease is routine.
                Err(
                    e @ (BrokerError::ProviderUnavailable { .. } | BrokerError::NeedsReauth { .. }),
                ) => {
                    log::debug!("background refresh {}/{}: {e}", row.provider, row.account)
                }
                Err(e) => log::warn!("background refresh {}/{}: {e}", row.provider, row.account),
            }
        }
        Ok(refreshed)
    }

    async fn refresh_single_flight(
        self: &Arc<Self>,
        provider: &Arc<Provider>,
        key: &ConnectionKey,
        ask: Ask<'_>,
    ) -> Result<Arc<AccessToken>, BrokerError> {
        // A refresh of the connection under way (its caller answered already, while the
        // provider is slow) is waited for as long as a caller waits for its own; one whose
        // save fails (the store does) is said as soon as it is known: waiting for the
        // turn would end the same way, later.
        let waited = tokio::time::Instant::now() + self.caller_wait;
        let turn = self.in_flight.turn(key);
        tokio::pin!(turn);
        let turn = loop {
            if self
                .saves_failing
                .lock()
                .is_ok_and(|failing| failing.contains(key))
            {
                return Err(BrokerError::ProviderUnavailable {
                    message: SAVE_FAILING.into(),
                    retry_after_secs: 5,
                });
            }
            let left = waited.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break None;
            }
            tokio::select! {
                turn = &mut turn => break Some(turn),
                () = tokio::time::sleep(left.min(TAKEOVER_LOOK)) => {}
            }
        };
        let Some(turn) = turn else {
            return Err(BrokerError::ProviderUnavailable {
                message: format!(
                    "a refresh of this connection is under way here (waiting for the provider's answer, up to {} s, for another oauthd process's refresh, or to save what the provider answered); its token is handed out once stored",
                    self.answer_wait().as_secs()
                ),
                retry_after_secs: 5,
            });
        };
        self.refresh_in_turn(turn, provider, key, ask, waited).await
    }

    /// `refresh_single_flight` once `key`'s turn is had (held until this returns). The
    /// caller is answered by `answer_by` (its `provider_timeout` from when it asked), however
    /// its time went: waiting for the turn, discovering the endpoints, refreshing.
    async fn refresh_in_turn(
        self: &Arc<Self>,
        turn: Turn,
        provider: &Arc<Provider>,
        key: &ConnectionKey,
        ask: Ask<'_>,
        answer_by: tokio::time::Instant,
    ) -> Result<Arc<AccessToken>, BrokerError> {
        let Ask {
            min_ttl,
            force,
            rejected,
            asked_at,
        } = ask;
        // How long to wait for another process is real waiting, not a time rule: measured
        // on the monotonic clock. (A lease that ran out is taken over within it, after
        // `TAKEOVER_GRACE`; one still held is waited for until `answer_by` at most.)
        let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER;
        let mut discovered: Option<Result<(), String>> = None;
        // The lease that ran out unreleased whose takeover this call noted (generation,
        // end), and when.
        let mut noted: Option<((i64, i64), tokio::time::Instant)> = None;
        // A caller that waited for another process's refresh (up to `WAIT_FOR_OTHER`) and
        // then refreshes itself is given `caller_wait` for that refresh, as before the wait.
        let mut waited_for_other = false;
        loop {
            let ticket = self.token_cache.begin_read();
            let row = match self.row(key).await {
                Ok(row) => row,
                // A read failing while the takeover's grace runs (the store that made the
                // lease run out still flapping) is one look fewer, not the end of the wait.
                Err(_)
                    if noted.is_some_and(|(_, at)| at.elapsed() < TAKEOVER_GRACE)
                        && tokio::time::Instant::now() + TAKEOVER_LOOK < deadline
                        && !self.stopping() =>
                {
                    self.sleep_unless_stopping(TAKEOVER_LOOK).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Someone refreshed while we waited: that is the freshest token there is, even
            // when it has less than `min_ttl` left (the provider's tokens may simply live
            // shorter). Refreshing again would only burn refresh tokens.
            let refreshed_meanwhile = row.last_refresh_at_ms.is_some_and(|t| t >= asked_at);
            let wanted = if refreshed_meanwhile {
                Duration::ZERO
            } else {
                min_ttl
            };
            if row.status == ConnectionStatus::NeedsReauth {
                return Err(self.needs_reauth(&row));
            }
            if !force || refreshed_meanwhile {
                if let Some(token) = self.usable(&row, wanted, ticket)? {
                    // A token the provider refused is only good for refreshing, unless a
                    // refresh just gave it back (some providers return a still-valid
                    // token): refreshing again would not change it.
                    if refreshed_meanwhile
                        || rejected.is_none_or(|r| r != token.access_token.as_str())
                    {
                        return Ok(token);
                    }
                }
            }
            let now = self.clock.now_ms();
            // A backoff is not waited out until this process has tried the connection
            // itself: a restart is how an operator applies a fixed client secret or token
            // URL, and then expects the next call to try (one try per connection and start,
            // counted when the lease is taken, so that a call that ends before, waiting for
            // another process, spends none; a failure then backs off again). Counted, not
            // found by comparing times: a clock stepped back would make every failure look
            // older than the start.
            let backing_off = backing_off_until(&row, now, self.clock.stepped_back()).is_some()
                && self.tried_since_start(key);
            if let Some(retry_at) = row.retry_at_ms.filter(|_| backing_off) {
                let wait = crate::clock::seconds_until(now, retry_at);
                return Err(BrokerError::ProviderUnavailable {
                    message: format!(
                        "refreshing {key} failed recently ({}); no refresh is tried before \
                         {wait} s from now (each failure doubles the wait, up to {} minutes; \
                         `oauthd connections refresh {} {}` tries at once, and so does a \
                         restart, which a fixed client secret or token URL needs)",
                        row.last_error.as_deref().unwrap_or("unknown error"),
                        BACKOFF_MAX_MS / 60_000,
                        key.provider,
                        key.account
                    ),
                    retry_after_secs: wait,
                });
            }
            // Without a refresh token only the user can renew the grant, but the access
            // token still works until it expires: a caller asking for more time than it has
            // left is told to connect again, and the connection stays active (no failure
            // recorded) for callers content with less. A token the provider refused, or
            // one past its expiry, does need the user: recorded under the lease below.
            if row.refresh_token.is_none() && rejected.is_none() {
                if let Some(left) = row.access_expires_at_ms.filter(|e| *e > now) {
                    let mut row = row.clone();
                    row.last_error = Some(format!(
                        "the provider gave no refresh token, and the access token expires in \
                         {} s, sooner than asked for (min_ttl)",
                        (left - now) / 1000
                    ));
                    return Err(self.needs_reauth(&row));
                }
            }
            // Discovered before the lease is taken (once per call, and once per process
            // when it succeeds), so that the lease covers the token request alone. A
            // discovery that fails is recorded under the lease like a failed refresh:
            // callers then wait for its backoff instead of each trying again.
            if discovered.is_none() {
                let found = self.endpoints(provider).await;
                discovered = Some(found.map(|_| ()).map_err(|e| e.to_string()));
            }
            // A stop waits for refreshes under way until their leases end, counted from
            // when it began: none begins after that (the caller retries after the start).
            if self.stopping() {
                return Err(BrokerError::ProviderUnavailable {
                    message: "oauthd is stopping; the refresh is made after its next start".into(),
                    retry_after_secs: 1,
                });
            }
            let now = self.clock.now_ms();
            // A lease that ran out without being let go may belong to a process still
            // trying to save what its provider answered while the store failed (every
            // 200 ms past its lease): taken over only `TAKEOVER_GRACE` after a write of
            // ours noted it, so that the holder has had that long with a store taking
            // writes to land first, rather than raced by a refresh that would send the
            // refresh token the provider has just retired (which revokes the grant).
            if let Some(until) = row.lease_until_ms.filter(|until| *until <= now) {
                let lease = (row.generation, until);
                let wait = match noted {
                    Some((seen, at)) if seen == lease => {
                        TAKEOVER_GRACE.saturating_sub(at.elapsed())
                    }
                    _ => {
                        let fresh = self
                            .store
                            .note_lease_takeover(key, row.generation, until, now)
                            .await?;
                        noted = fresh.then(|| (lease, tokio::time::Instant::now()));
                        if fresh {
                            TAKEOVER_GRACE
                        } else {
                            Duration::from_millis(100)
                        }
                    }
                };
                // Waited out in short naps, each followed by a fresh read: a holder that
                // saves meanwhile lets go of its lease, and its token is handed out then,
                // not when the grace is over (other callers wait for this turn meanwhile).
                if !wait.is_zero() {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Err(BrokerError::ProviderUnavailable {
                            message: "another oauthd process's refresh of this connection ended without being let go; it is given a moment to save what its provider answered before this one takes over".into(),
                            retry_after_secs: wait.as_secs().max(1),
                        });
                    }
                    self.sleep_unless_stopping(wait.min(TAKEOVER_LOOK).min(left))
                        .await;
                    waited_for_other = true;
                    continue;
                }
            }
            // The lease's end, taken before the store starts it: the refresh never counts
            // on more of it than it has.
            let leased_until = tokio::time::Instant::now() + self.lease();
            match self.take_lease(key, row.generation, now).await? {
                Some(generation) => {
                    self.mark_tried(key);
                    let lease = Leased {
                        generation,
                        until: leased_until,
                        discovered: discovered.clone().unwrap_or(Ok(())),
                        after_lost: row.lease_until_ms.map(|until| until - self.lease_ms),
                    };
                    let answer_by = if waited_for_other {
                        tokio::time::Instant::now() + self.caller_wait
                    } else {
                        answer_by
                    };
                    return self
                        .refresh_detached(provider, row, lease, turn, answer_by)
                        .await;
                }
                // Another process is refreshing, or refreshed since `row` was read: look
                // again (bounded), never refresh with the refresh token read before.
                // Not past `answer_by`: a caller waiting for a lease another process holds
                // was answered after 20 s whatever its provider_timeout (and a killed
                // holder's lease runs on for the lease's length).
                None if tokio::time::Instant::now() < deadline.min(answer_by) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    waited_for_other = true;
                }
                None => {
                    let until = row.lease_until_ms.filter(|u| *u > now);
                    let message = match until {
                        Some(until) => format!(
                            "another oauthd process is refreshing this connection (its lease ends at {}; one killed while refreshing holds it until then)",
                            crate::clock::rfc3339(until)
                        ),
                        None => "another oauthd process is refreshing this connection".into(),
                    };
                    // A live holder lets go as soon as it saved; a killed one's lease runs
                    // on: asked again every second, each call would wait all over again.
                    let retry_after_secs = until.map_or(1, |until| {
                        crate::clock::seconds_until(now, until).clamp(1, LEASE_RETRY_AFTER_MAX)
                    });
                    return Err(BrokerError::ProviderUnavailable {
                        message,
                        retry_after_secs,
                    });
                }
            }
        }
    }

    /// Takes the refresh lease for the row read at `seen` (`Store::acquire_refresh_lease`),
    /// apart from the caller: a caller gone meanwhile (an app that hung up, a call cut
    /// short) would leave a lease taken that nobody refreshes with, holding off every
    /// refresh of the connection, in every process, until it ran out (the lease's length). One
    /// taken for nobody is let go.
    async fn take_lease(
        &self,
        key: &ConnectionKey,
        seen: i64,
        now: i64,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        let (store, key, lease_ms) = (self.store.clone(), key.clone(), self.lease_ms);
        let (tell, told) = tokio::sync::oneshot::channel();
        let mut answer = LeaseAnswer {
            told,
            store: store.clone(),
            key: key.clone(),
        };
        tokio::spawn(async move {
            let taken = store.acquire_refresh_lease(&key, seen, now, lease_ms).await;
            if let Err(Ok(Some(generation))) = tell.send(taken) {
                let_go(store, key, generation).await;
            }
        });
        (&mut answer.told).await.unwrap_or_else(|_| {
            Err(crate::store::StoreError::unavailable(
                "taking a refresh lease",
                "the task taking it ended",
            ))
        })
    }

    /// `refresh_with_lease` as a task of its own, on the daemon's runtime, waited for. Once
    /// the lease is taken the provider may be asked at any moment, and what it answers
    /// must be stored whatever becomes of the caller: a client that resets its connection
    /// (actix then drops the request's future), or a stop that drops requests still
    /// running past its grace. A rotating provider has retired the stored refresh token
    /// by then; dropping its answer would leave the account to be connected again. The
    /// stop waits for these tasks (`stop_background`).
    ///
    /// The task holds the connection's turn (`turn`) until it ends: in this process, the
    /// next caller waits for its answer, the background refresher passes the connection,
    /// and a disconnect waits, instead of each finding the lease taken as if by another
    /// process.
    async fn refresh_detached(
        self: &Arc<Self>,
        provider: &Arc<Provider>,
        row: ConnectionRow,
        lease: Leased,
        turn: Turn,
        answer_by: tokio::time::Instant,
    ) -> Result<Arc<AccessToken>, BrokerError> {
        let (this, provider) = (self.clone(), provider.clone());
        let running = self.refreshing.enter();
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let told = answered.clone();
        let refresh = async move {
            let _running = running;
            let _turn = turn;
            this.refresh_with_lease(&provider, &row, lease, &told).await
        };
        // The caller is answered after `caller_wait`; the refresh goes on until the
        // provider answers (or `answer_wait` passes) and stores what it answers.
        match tokio::time::timeout_at(answer_by, self.spawn_background(refresh)).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                log::error!("a refresh ended before it finished: {e}");
                Err(BrokerError::ProviderUnavailable {
                    message: "the refresh ended before it finished".into(),
                    retry_after_secs: 1,
                })
            }
            Err(_) if answered.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(BrokerError::ProviderUnavailable {
                    message: SAVE_FAILING.into(),
                    retry_after_secs: 5,
                })
            }
            Err(_) => Err(BrokerError::ProviderUnavailable {
                message: format!(
                    "the provider has not answered the refresh in the {} s a call waits (provider_timeout_seconds, from when it asked); oauthd goes on waiting for its answer (up to {} s in all) and stores the new token then",
                    self.caller_wait.as_secs(),
                    self.answer_wait().as_secs()
                ),
                retry_after_secs: 5,
            }),
        }
    }

    /// Refreshes `row` under `lease`; `answered` is set once the provider answered with
    /// new tokens (what is left is saving them).
    async fn refresh_with_lease(
        self: &Arc<Self>,
        provider: &Provider,
        row: &ConnectionRow,
        lease: Leased,
        answered: &std::sync::atomic::AtomicBool,
    ) -> Result<Arc<AccessToken>, BrokerError> {
        let Leased {
            generation,
            until: leased_until,
            discovered,
            after_lost,
        } = lease;
        let (p, a) = (provider.name.as_str(), row.account.as_str());
        let Some(sealed_refresh) = &row.refresh_token else {
            let reason = "the access token expired and the provider gave no refresh token";
            return Err(self
                .record_failure(row, generation, Failure::Reauth(reason.into()))
                .await);
        };
        let refresh_token = self
            .vault
            .open_str(&token_aad(p, a, "refresh_token"), sealed_refresh)?;
        // Only for keeping it out of the provider's error texts: one that does not open
        // does not stop the refresh.
        let access_token = self
            .vault
            .open_str(&token_aad(p, a, "access_token"), &row.access_token)
            .ok();
        let endpoints = match discovered {
            Ok(()) => self.endpoints(provider).await,
            Err(e) => Err(BrokerError::ProviderUnavailable {
                message: e,
                retry_after_secs: 5,
            }),
        };
        // Whether the keys an ID token in the answer is checked against are at hand.
        let mut keys_at_hand = true;
        let result = match endpoints {
            Ok(endpoints) => {
                keys_at_hand = self.warm_id_token_keys(provider, endpoints, row).await;
                flows::refresh(
                    self.refresh_endpoint.as_ref(),
                    provider,
                    endpoints,
                    &refresh_token,
                    access_token.as_ref().map(|t| t.as_str()),
                )
                .await
            }
            Err(e) => Err(FlowError::Transient(e.to_string())),
        };
        let tokens = match result {
            Ok(tokens) => tokens,
            Err(FlowError::InvalidGrant(reason)) => {
                // A refresh token spent by a refresh that was never saved is the likelier
                // cause than the user revoking access: say so.
                let lost = after_lost.map_or_else(String::new, |at| {
                    format!(
                        " (a refresh an oauthd process began at {} was never saved: killed, or its store failed; the provider may have rotated the refresh token for it)",
                        crate::clock::rfc3339(at)
                    )
                });
                log::warn!("refresh {p}/{a}: invalid_grant ({reason}){lost}; the account must be connected again");
                refreshed(p, "needs_reauth");
                let failure = Failure::Reauth(format!("invalid_grant: {reason}{lost}"));
                return Err(self.record_failure(row, generation, failure).await);
            }
            Err(e) => {
                refreshed(p, "failed");
                let asked_ms = match &e {
                    FlowError::Throttled {
                        retry_after_secs, ..
                    } => *retry_after_secs as i64 * 1000,
                    _ => 0,
                };
                let failure = Failure::Transient {
                    error: e.to_string(),
                    asked_ms,
                    refresh_token: None,
                };
                return Err(self.record_failure(row, generation, failure).await);
            }
        };
        answered.store(true, std::sync::atomic::Ordering::SeqCst);
        // Before anything of the answer is kept (its refresh token included): an answer
        // for another account keeps nothing.
        if let Some(reason) = self
            .refreshed_for_another(provider, row, &tokens, keys_at_hand)
            .await
        {
            log::warn!("refresh {p}/{a}: {reason}; the account must be connected again");
            refreshed(p, "needs_reauth");
            let (failed, recorded) = self
                .record_failure_saved(row, generation, Failure::Reauth(reason))
                .await;
            // Kept nowhere, they are revoked (in the background: the caller is answered
            // now), unless the row moved on meanwhile: a newer row may share the grant,
            // which revoking would end.
            if let Some(provider) = self.providers.get(p).cloned() {
                let (this, key) = (self.clone(), row.key());
                self.spawn_counted(async move {
                    if recorded {
                        let why = "refresh: its ID token names another account";
                        this.revoke_unkept(&provider, &key, &tokens, why).await;
                    } else {
                        this.revoke_orphaned(&provider, &key, &tokens).await;
                    }
                });
            }
            return Err(failed);
        }
        if let Some(fault) = &tokens.access_fault {
            // The access token is not handed out; a new refresh token in the answer is
            // kept (a rotating provider retired the stored one), for the next try.
            refreshed(p, "failed");
            let refresh_token = match &tokens.refresh_token {
                Some(r) => Some((
                    self.vault.seal_str(&token_aad(p, a, "refresh_token"), r)?,
                    leased_until,
                )),
                None => None,
            };
            let failure = Failure::Transient {
                error: FlowError::Transient(fault.clone()).to_string(),
                asked_ms: 0,
                refresh_token,
            };
            return Err(self.record_failure(row, generation, failure).await);
        }
        let sealed = self.seal_tokens(p, a, &tokens, None)?;
        let expires_at_ms = sealed.access_expires_at_ms;
        let scope = sealed.scopes.clone().or_else(|| row.scopes.clone());
        // Committed before anyone sees the new token. What was read before the commit is
        // dropped after it (even when this call is cancelled meanwhile), so a read that
        // began before the commit cannot put the old token back. The new one is not held
        // from here: only a read that begins after the commit may put it, so that a
        // delete, reconnect or import committed right after this refresh (by this process,
        // whose drop may come before this line, or by another) is never hidden by it.
        let events = self.refreshed_events(row, expires_at_ms);
        let saving = self.token_cache.forget_after(&row.key());
        let deliveries = self.notifier.deliveries(&events);
        let saved = self
            .save_refreshed_while_leased(row, generation, sealed, deliveries, leased_until)
            .await;
        drop(saving);
        if !saved? {
            log::warn!(
                "refresh {p}/{a}: superseded by a newer connection or lease; result dropped"
            );
            self.revoke_orphaned(provider, &row.key(), &tokens).await;
            return Err(BrokerError::ProviderUnavailable {
                message: "the connection changed while refreshing".into(),
                retry_after_secs: 1,
            });
        }
        self.notifier.written(&events);
        log::info!("refresh {p}/{a}: ok");
        refreshed(p, "ok");
        Ok(Arc::new(AccessToken {
            access_token: tokens.access_token,
            token_type: tokens.token_type,
            expires_at_ms,
            scope,
            answer: AnswerOnce::default(),
        }))
    }

    /// Records a failed refresh on the connection (releasing the lease) and returns the
    /// error the caller gets: `NeedsReauth` when only the user can fix it, else
    /// `ProviderUnavailable` with the backoff as Retry-After.
    async fn record_failure(
        &self,
        row: &ConnectionRow,
        generation: i64,
        failure: Failure,
    ) -> BrokerError {
        self.record_failure_saved(row, generation, failure).await.0
    }

    /// `record_failure`, and whether the failure was stored (false: the store failed, or
    /// the row moved on). A failure that keeps a new refresh token is tried again while
    /// the store fails, until `KEEP_MARGIN` before its lease ends.
    async fn record_failure_saved(
        &self,
        row: &ConnectionRow,
        generation: i64,
        failure: Failure,
    ) -> (BrokerError, bool) {
        // Dropped once the failure is stored: a read before that would hide needs_reauth.
        let _failed = self.token_cache.forget_after(&row.key());
        let now = self.clock.now_ms();
        let (status, error, retry_at_ms) = match &failure {
            Failure::Reauth(reason) => (ConnectionStatus::NeedsReauth, reason.as_str(), None),
            Failure::Transient {
                error: e, asked_ms, ..
            } => {
                let wait = backoff_ms(row.failures).max(*asked_ms);
                log::warn!(
                    "refresh {}/{}: {e}; the next try waits {} s at least (for a call that needs a new token, or the background refresher)",
                    row.provider,
                    row.account,
                    wait / 1000
                );
                (ConnectionStatus::Active, e.as_str(), Some(now + wait))
            }
        };
        let events: Vec<_> = match &failure {
            // Tokens imported over a connection the user was told needs them, whose refresh
            // the provider refuses in turn: told once. (Imported without a refresh token,
            // their expiry is news.)
            Failure::Reauth(_) if row.told.needs_reauth() && row.refresh_token.is_some() => {
                log::info!(
                    "connection {}/{} still needs the user: connection.needs_reauth was sent before and nothing has worked since (tokens imported over it), so it is not sent again",
                    row.provider,
                    row.account
                );
                None
            }
            Failure::Reauth(reason) => Some(self.needs_reauth_event(row, reason)),
            Failure::Transient { error, .. } => self.failing_event(row, error, now, retry_at_ms),
        }
        .into_iter()
        .collect();
        let told = match &failure {
            Failure::Reauth(_) => row.told.with(Told::NEEDS_REAUTH),
            Failure::Transient { .. } if !events.is_empty() => row.told.with(Told::FAILING),
            Failure::Transient { .. } => row.told,
        };
        let (refresh_token, keep_until) = match &failure {
            Failure::Transient {
                refresh_token: Some((sealed, lease_ends)),
                ..
            } => (Some(sealed.clone()), lease_ends.checked_sub(KEEP_MARGIN)),
            _ => (None, None),
        };
        let mut recorded;
        loop {
            recorded = self
                .store
                .save_refresh_failure(
                    &row.key(),
                    generation,
                    RefreshFailure {
                        status,
                        error,
                        retry_at_ms,
                        now_ms: now,
                        told,
                        refresh_token: refresh_token.clone(),
                    },
                    self.notifier.deliveries(&events),
                )
                .await;
            // A failure that keeps a new refresh token is tried again while the store
            // fails and the lease holds (lost, the next refresh would send the refresh
            // token a rotating provider retired), unless oauthd is stopping.
            let again = keep_until.is_some_and(|until| tokio::time::Instant::now() < until);
            if recorded.is_ok() || !again || self.stopping() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let lost = |why: &dyn std::fmt::Display| {
            if refresh_token.is_some() {
                log::error!("refresh {}/{}: the new refresh token its answer brought could not be stored ({why}): the next refresh sends the one before, which a rotating provider has retired", row.provider, row.account);
            }
        };
        let stored = match recorded {
            Err(e) => {
                lost(&e);
                return (e.into(), false);
            }
            Ok(true) => {
                self.notifier.written(&events);
                true
            }
            Ok(false) => {
                lost(&"the connection moved on meanwhile");
                false
            }
        };
        let error = match failure {
            Failure::Reauth(reason) => {
                let mut row = row.clone();
                row.last_error = Some(reason);
                self.needs_reauth(&row)
            }
            Failure::Transient { error, .. } => BrokerError::ProviderUnavailable {
                message: format!(
                    "refreshing {}/{} failed: {error}",
                    row.provider, row.account
                ),
                retry_after_secs: (retry_at_ms.unwrap_or(now) - now).max(0) as u64 / 1000,
            },
        };
        (error, stored)
    }
}
