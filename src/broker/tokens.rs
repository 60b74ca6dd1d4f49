//! Handing out access tokens, refreshed when they must be: `refresh_turn` decides whose
//! turn a refresh is (in this process, and across processes by the lease), `refresh_call`
//! makes it at the provider, saves it and backs off when it fails.
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

use super::refresh_policy::{
    due_for_refresh, half_life_ms, lasts, obtained_at, obtained_before_step,
};
use super::{token_aad, Broker, BrokerError};
use crate::oauth::provider::check_name;
use crate::read_cache::ReadTicket;
use crate::store::{ConnectionKey, ConnectionRow, ConnectionStatus};
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
pub(super) struct Ask<'a> {
    pub(super) min_ttl: Duration,
    pub(super) force: bool,
    pub(super) rejected: Option<&'a str>,
    pub(super) asked_at: i64,
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

    pub(super) fn needs_reauth(&self, row: &ConnectionRow) -> BrokerError {
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
    pub(super) fn usable(
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
        match self.refresh_single_flight(&provider, &key, ask).await {
            // Replaced while refreshing (an import, a reconnect): what it holds now is the
            // answer, when it lasts; else the refresh's 503 and its Retry-After.
            Err(BrokerError::ProviderUnavailable { message, .. })
                if message == super::refresh_call::SUPERSEDED =>
            {
                let ticket = self.token_cache.begin_read();
                let row = self.row(&key).await?;
                match self.usable(&row, min_ttl, ticket)? {
                    Some(token) => Ok(token),
                    None => Err(BrokerError::ProviderUnavailable {
                        message,
                        retry_after_secs: 1,
                    }),
                }
            }
            answered => answered,
        }
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
    pub(super) fn tried_since_start(&self, key: &ConnectionKey) -> bool {
        self.tried_since_start
            .lock()
            .map(|tried| tried.contains(key))
            .unwrap_or(true)
    }

    /// Notes that this process took a lease to refresh `key`: backoffs are waited out from
    /// now on, its own (`record_failure`) and other processes' alike.
    pub(super) fn mark_tried(&self, key: &ConnectionKey) {
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
}
