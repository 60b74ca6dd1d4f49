//! One refresh at the provider under a lease: asking, saving what came back before
//! anyone gets the new access token, and recording a failure with its backoff.

use super::flight::{Doing, DoingNow, Turn};
use super::refresh_policy::backoff_ms;
use super::refresh_save::SAVE_FAILING;
use super::refresh_turn::Leased;
use super::tokens::{AccessToken, AnswerOnce};
use super::{token_aad, Broker, BrokerError};
use crate::oauth::flows::{self, FlowError};
use crate::oauth::Provider;
use crate::store::{ConnectionRow, ConnectionStatus, RefreshFailure, Told};
use std::sync::Arc;
use std::time::Duration;

/// What a refresh whose result was dropped answers: the connection changed meanwhile (an
/// import, a reconnect, a delete), and what it holds now is the answer, if anything.
pub(super) const SUPERSEDED: &str = "the connection changed while refreshing";

fn refreshed(provider: &str, result: &str) {
    crate::metrics::REFRESHES
        .with_label_values(&[provider, result])
        .inc();
}

/// How long before its lease ends a failed refresh that keeps a new refresh token stops
/// trying to store it while the store fails (a try takes up to 5 s): past the lease,
/// another process may take over and refresh with the retired one.
const KEEP_MARGIN: Duration = Duration::from_secs(6);

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

impl Broker {
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
    pub(super) async fn refresh_detached(
        self: &Arc<Self>,
        provider: &Arc<Provider>,
        row: ConnectionRow,
        lease: Leased,
        turn: Turn,
        answer_by: tokio::time::Instant,
    ) -> Result<Arc<AccessToken>, BrokerError> {
        let (this, provider) = (self.clone(), provider.clone());
        let running = self.refreshing.enter();
        turn.doing(Doing::AskingProvider);
        let doing = turn.now();
        let told = doing.clone();
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
            Err(_) if doing.get() == Doing::Saving => {
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

    /// Refreshes `row` under `lease`; `doing` is set to `Saving` once the provider answered
    /// with new tokens (what is left is saving them).
    async fn refresh_with_lease(
        self: &Arc<Self>,
        provider: &Provider,
        row: &ConnectionRow,
        lease: Leased,
        doing: &DoingNow,
    ) -> Result<Arc<AccessToken>, BrokerError> {
        let Leased {
            generation,
            until: leased_until,
            discovered,
            after_lost,
        } = lease;
        let (p, a) = (provider.name.as_str(), row.account.as_str());
        let Some(sealed_refresh) = &row.refresh_token else {
            let reason = "the access token expired and the connection has no refresh token (none was given by the provider, or by its import)";
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
                // A refresh token spent by a refresh that was never saved, or whose answer
                // never came, is the likelier cause than the user revoking access: say so.
                let lost = match after_lost {
                    Some(at) => format!(
                        " (a refresh an oauthd process began at {} was never saved: killed, or its store failed; the provider may have rotated the refresh token for it)",
                        crate::clock::rfc3339(at)
                    ),
                    None => after_unanswered(row).unwrap_or_default(),
                };
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
                    error: keeping_unanswered(row, e.to_string()),
                    asked_ms,
                    refresh_token: None,
                };
                return Err(self.record_failure(row, generation, failure).await);
            }
        };
        doing.set(Doing::Saving);
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
                let (this, row) = (self.clone(), row.clone());
                self.spawn_counted(async move {
                    if recorded {
                        let why = "refresh: its ID token names another account";
                        this.revoke_unkept(&provider, &row.key(), &tokens, why)
                            .await;
                    } else {
                        this.revoke_orphaned(&provider, &row, &tokens, false).await;
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
            self.revoke_orphaned(provider, row, &tokens, true).await;
            return Err(BrokerError::ProviderUnavailable {
                message: SUPERSEDED.into(),
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

/// Where a failed refresh's `last_error` tells what failed after a refresh that got no
/// answer.
const SINCE: &str = "; since then: ";

/// How a failed refresh's `last_error` starts when it was sent and got no whole answer:
/// oauthd's own words, before any of the provider's.
fn unanswered_start() -> String {
    FlowError::Transient(flows::NO_ANSWER.to_owned()).to_string()
}

/// `error`, a failed refresh's `last_error`, after the connection's earlier refresh that
/// got no answer, if any: what failed since (a restarting provider refusing connections)
/// says nothing of whether the provider carried that one out. A refresh that succeeds
/// clears it; one answered with `invalid_grant` tells it (`after_unanswered`).
fn keeping_unanswered(row: &ConnectionRow, error: String) -> String {
    let start = unanswered_start();
    match row.last_error.as_deref() {
        Some(last) if last.starts_with(&start) && !error.starts_with(&start) => {
            let unanswered = last.split(SINCE).next().unwrap_or(last);
            format!("{unanswered}{SINCE}{error}")
        }
        _ => error,
    }
}

/// What an `invalid_grant` likely follows when a refresh since the last that succeeded was
/// sent and got no answer (the provider stalled past `provider_answer_wait_seconds`, or the
/// connection dropped): the provider may have carried it out, and a rotating one retired
/// the refresh token it was sent for one in the answer that never came.
fn after_unanswered(row: &ConnectionRow) -> Option<String> {
    let last = row.last_error.as_deref()?;
    let why = last.strip_prefix(&unanswered_start())?;
    let why = why.split(SINCE).next().unwrap_or(why);
    // Only a wait that ran out is helped by a longer one.
    let advice = match why.contains("timed out") {
        true => "; a longer provider_answer_wait_seconds outlasts such a stall",
        false => "",
    };
    Some(format!(
        " (an earlier refresh, since the last that succeeded, was sent and got no answer: the provider may have carried it out and rotated the refresh token in the answer that never came{advice})"
    ))
}
