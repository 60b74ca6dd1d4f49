//! A refresh when it is this connection's turn: in this process (one at a time, callers
//! queued behind it take its token) and across processes (the refresh lease, taken over
//! only once its holder had time to save what its provider answered).

use super::flight::{Doing, Turn};
use super::refresh_policy::{backing_off_until, BACKOFF_MAX_MS};
use super::refresh_save::SAVE_FAILING;
use super::tokens::{AccessToken, Ask, WAIT_FOR_OTHER};
use super::{Broker, BrokerError};
use crate::oauth::Provider;
use crate::store::{ConnectionKey, ConnectionStatus};
use std::sync::Arc;
use std::time::Duration;

/// A refresh lease taken: the generation it fences, when it ends at the latest (on the
/// monotonic clock), and how discovering the provider's endpoints went before it.
pub(super) struct Leased {
    pub(super) generation: i64,
    pub(super) until: tokio::time::Instant,
    pub(super) discovered: Result<(), String>,
    /// When the refresh lease taken over had been taken, if it ran out without being
    /// let go: the process that held it stopped before saving (killed, or its store
    /// failed), and may have spent the stored refresh token.
    pub(super) after_lost: Option<i64>,
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

impl Broker {
    pub(super) async fn refresh_single_flight(
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
            let doing = self.in_flight.doing(key);
            let then = match doing {
                Doing::Deleting => "ask again once it ends",
                _ => "its token is handed out once stored",
            };
            return Err(BrokerError::ProviderUnavailable {
                message: format!("{}; {then}", self.turn_held(doing, &provider.name)),
                retry_after_secs: 5,
            });
        };
        self.refresh_in_turn(turn, provider, key, ask, waited).await
    }

    /// What holds a connection's turn in this process, said to a caller that waited for it
    /// in vain.
    pub(super) fn turn_held(&self, doing: Doing, provider: &str) -> String {
        match doing {
            Doing::Preparing => format!(
                "a refresh of this connection is being prepared here (reading the connection from the store, or {provider}'s discovery document, takes long)"
            ),
            Doing::WaitingForOther => "a refresh of this connection here waits for another oauthd process's refresh of it, which holds its lease".into(),
            Doing::AskingProvider => format!(
                "a refresh of this connection is under way here, waiting for {provider}'s answer (up to {} s in all: provider_answer_wait_seconds)",
                self.answer_wait().as_secs()
            ),
            Doing::Saving => format!(
                "a refresh of this connection got {provider}'s answer and is saving it here (the store is slow or fails)"
            ),
            Doing::Deleting => format!(
                "a delete of this connection is under way here (it waits for a refresh of it another oauthd process runs, if any, then revokes its grant at {provider})"
            ),
        }
    }

    /// `refresh_single_flight` once `key`'s turn is had (held until this returns). The
    /// caller is answered by `answer_by` (its `provider_timeout` from when it asked), however
    /// its time went: waiting for the turn, discovering the endpoints, refreshing.
    pub(super) async fn refresh_in_turn(
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
            turn.doing(Doing::Preparing);
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
            // Someone refreshed (or connected, or imported) while we waited: that is the
            // freshest token there is, even when it has less than `min_ttl` left (the
            // provider's tokens may simply live shorter). Refreshing again would only burn
            // refresh tokens.
            let refreshed_meanwhile = row
                .last_refresh_at_ms
                .or(row.connected_at_ms)
                .is_some_and(|t| t >= asked_at);
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
                        "the connection has no refresh token (none was given by the provider, \
                         or by its import), and the access token expires in {} s, sooner than \
                         asked for (min_ttl)",
                        (left - now) / 1000
                    ));
                    return Err(self.needs_reauth(&row));
                }
            }
            // Discovered before the lease is taken (once per call, and once per process
            // when it succeeds), so that the lease covers the token request alone. A
            // discovery that fails is recorded under the lease like a failed refresh:
            // callers then wait for its backoff instead of each trying again.
            // Without a refresh token nothing is asked of the provider: the lease records
            // that the user is needed, without waiting for a provider that may be down.
            if discovered.is_none() && row.refresh_token.is_some() {
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
                    turn.doing(Doing::WaitingForOther);
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
                    turn.doing(Doing::WaitingForOther);
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
}
