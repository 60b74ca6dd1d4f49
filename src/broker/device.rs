//! Device authorization grant (RFC 8628): start, poll server-side, report status.
//!
//! Each flow is a sealed row (`device_flows`) that survives restarts. One task per
//! pending flow polls the token endpoint: at the provider's `interval` (5 s when it gives
//! none), 5 s slower after every `slow_down`, twice as slow (up to a minute) after a poll
//! that failed on the way (a timeout, a 5xx or 429: RFC 8628 section 3.5 asks clients to
//! back off, and a provider that is hammered may block the operator's client_id), and
//! never again after the first success —
//! a strict provider revokes the tokens it just issued if the device code is used twice.
//! Every poll is claimed in the database first, so two processes never poll one flow
//! at the same time.

use super::device_end::Ended;
use super::events::Via;
use super::{Broker, BrokerError, ConnectionView};
use crate::clock::rfc3339;
use crate::oauth::flows::{self, DevicePoll, FlowError};
use crate::oauth::provider::check_name;
use crate::store::{
    ClaimedPoll, ConnectionRow, DeviceFlowRow, DeviceFlowStatus, DevicePollOutcome, PollRecorded,
};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_INTERVAL_MS: i64 = 5_000;
const SLOW_DOWN_MS: i64 = 5_000;
/// The longest a failing poll's backoff stretches the interval to (a provider's own
/// interval, or `slow_down`s, may be longer still).
const MAX_BACKOFF_MS: i64 = 60_000;

/// The wait after `failures` polls in a row that failed on the way: the interval (at
/// least a second, whatever the provider said) doubled for each, up to `MAX_BACKOFF_MS`
/// (a provider's own longer interval is never shortened).
fn backed_off(interval_ms: i64, failures: u32) -> i64 {
    let doubled = interval_ms
        .max(1_000)
        .saturating_mul(1_i64 << failures.min(16));
    interval_ms.max(doubled.min(MAX_BACKOFF_MS))
}

/// The longest a poll of a flow polled every `interval_ms` waits for the next: its
/// interval or backoff, with the slack clocks of instances sharing a store may differ by.
fn longest_wait(interval_ms: i64) -> i64 {
    interval_ms
        .max(MAX_BACKOFF_MS)
        .saturating_add(crate::clock::CLOCK_SLACK_MS)
}

/// What an app (or the CLI) shows the user, and polls with.
pub struct DeviceStart {
    pub id: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_at_ms: i64,
    pub interval_secs: u64,
}

/// A device flow's status for `GET /v1/device/{provider}/{id}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceStatus {
    /// pending | connected | denied | expired | failed
    pub status: DeviceFlowStatus,
    /// The account the flow connects.
    pub account: String,
    /// The code to enter at `verification_uri` while the flow is pending; empty once it
    /// ended (oauthd keeps it no longer).
    pub user_code: String,
    pub verification_uri: String,
    /// Given by the provider, while the flow is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    pub expires_at: String,
    pub interval: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Why a flow ended without connecting, a stable code (`denied`: `access_denied`;
    /// `expired`: `expired_token`; `failed`: `too_many_connections`, `api_key_revoked`,
    /// `provider_rejected`, `provider_unavailable`, `id_token_invalid`, `vault_error`,
    /// `storage_unavailable` or `connection_deleted`); absent while pending and once
    /// connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionView>,
}

/// AAD of a sealed device code: binds it to its flow.
pub(crate) fn device_aad(id: &str) -> String {
    format!("device:{id}:device_code")
}

impl Broker {
    /// Starts a device flow and the task that polls for it. `started_by` names who asked
    /// ("key:<id>", "admin", "cli"): each may have at most `max_device_flows_per_key`
    /// flows pending, so no caller can start unbounded polling.
    pub async fn start_device(
        self: &Arc<Self>,
        provider_name: &str,
        account: Option<&str>,
        started_by: &str,
    ) -> Result<DeviceStart, BrokerError> {
        let provider = self.provider(provider_name)?.clone();
        // An app's flow (started with its key, `key:<id>`): the person enters a code on a
        // page that names no app, so the operator may keep the device flow to themselves.
        if started_by.starts_with("key:") && !provider.device_flow_for_apps {
            return Err(BrokerError::DeviceFlowNotForApps(provider_name.to_owned()));
        }
        let account = account.unwrap_or(super::DEFAULT_ACCOUNT).to_owned();
        check_name("account", &account).map_err(BrokerError::InvalidAccount)?;
        let max = self.max_device_flows;
        // Checked before the provider is asked for a code, and again when the flow is
        // stored (concurrent starts).
        if self
            .store
            .pending_device_flows_of(started_by, self.clock.now_ms())
            .await?
            >= max
        {
            return Err(BrokerError::TooManyDeviceFlows { max });
        }
        let endpoints = self.endpoints(&provider).await?;
        let url = endpoints
            .device_authorization
            .clone()
            .ok_or_else(|| BrokerError::DeviceFlowUnsupported(provider_name.to_owned()))?;
        let auth = flows::device_authorize(&self.http, &provider, &url)
            .await
            .map_err(super::flow_error)?;
        let id = uuid::Uuid::new_v4().to_string();
        let now = self.clock.now_ms();
        let interval_ms = auth
            .interval
            .map_or(DEFAULT_INTERVAL_MS, |d| d.as_millis() as i64);
        let row = DeviceFlowRow {
            id: id.clone(),
            provider: provider_name.to_owned(),
            account: account.clone(),
            device_code: self.vault.seal_str(&device_aad(&id), &auth.device_code)?,
            user_code: auth.user_code.clone(),
            verification_uri: auth.verification_uri.clone(),
            verification_uri_complete: auth.verification_uri_complete.clone(),
            interval_ms,
            expires_at_ms: now + auth.expires_in.as_millis() as i64,
            status: DeviceFlowStatus::Pending,
            detail: None,
            error: None,
            next_poll_at_ms: now + interval_ms,
            created_at_ms: now,
            started_by: started_by.to_owned(),
        };
        let start = DeviceStart {
            id: id.clone(),
            user_code: row.user_code.clone(),
            verification_uri: row.verification_uri.clone(),
            verification_uri_complete: row.verification_uri_complete.clone(),
            expires_at_ms: row.expires_at_ms,
            interval_secs: (interval_ms / 1000) as u64,
        };
        if !self.store.insert_device_flow(row, max).await? {
            return Err(BrokerError::TooManyDeviceFlows { max });
        }
        log::info!("device {provider_name}/{account}: flow {id} started");
        if self.claim_driver(&id) {
            self.spawn_driver(id);
        }
        Ok(start)
    }

    /// Starts polling for every pending flow nobody in this process polls yet: after a
    /// restart, and for flows another process started and left (the CLI's `connect
    /// --device` stopped with Ctrl-C): the daemon owns polling, whoever started the flow.
    /// Flows of providers this process does not know are left alone for a process that
    /// does (several may share one database). Returns how many it took on.
    pub async fn adopt_device_flows(self: &Arc<Self>) -> Result<usize, BrokerError> {
        let pending = self.store.pending_device_flows().await?;
        let mut adopted = 0;
        for flow in pending {
            if !self.providers.contains_key(&flow.provider) || !self.claim_driver(&flow.id) {
                continue;
            }
            log::info!(
                "device {}/{}: resuming flow {} (nobody here polled it yet)",
                flow.provider,
                flow.account,
                flow.id
            );
            self.spawn_driver(flow.id);
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Whether a stop has waited for device polls as long as it will.
    fn past_stop_deadline(&self) -> bool {
        self.stop_deadline
            .get()
            .is_some_and(|d| tokio::time::Instant::now() >= *d)
    }

    fn spawn_driver(self: &Arc<Self>, id: String) {
        drop(self.spawn_background(self.clone().drive_device_flow(id)));
    }

    /// Marks this process as polling `id`; false when it already does.
    fn claim_driver(&self, id: &str) -> bool {
        self.device_drivers
            .lock()
            .map(|mut d| d.insert(id.to_owned()))
            .unwrap_or(false)
    }

    pub async fn device_status(
        &self,
        provider: &str,
        id: &str,
    ) -> Result<DeviceStatus, BrokerError> {
        let flow = self
            .store
            .get_device_flow(id)
            .await?
            .filter(|f| f.provider == provider)
            .ok_or_else(|| BrokerError::DeviceFlowNotFound(id.chars().take(64).collect()))?;
        let mut status = flow.status;
        // Past its expiry with no poller left to say so (e.g. oauthd was down).
        if status == DeviceFlowStatus::Pending && self.clock.now_ms() >= flow.expires_at_ms {
            status = DeviceFlowStatus::Expired;
        }
        let mut detail = flow.detail;
        let connection = if status == DeviceFlowStatus::Connected {
            // Deleted (or disconnected) since: the flow still connected it, and says so.
            match self.connection(&flow.provider, &flow.account).await {
                Ok(view) => Some(view),
                Err(BrokerError::ConnectionNotFound { .. }) => {
                    detail = Some(format!(
                        "connected {}/{}, which has been deleted since",
                        flow.provider, flow.account
                    ));
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        // The code the person types is said while the flow waits, not once it ended (the
        // store clears it then; an expiry found here has no write of its own).
        let waiting = status == DeviceFlowStatus::Pending;
        Ok(DeviceStatus {
            status,
            account: flow.account.clone(),
            user_code: if waiting {
                flow.user_code
            } else {
                String::new()
            },
            verification_uri: flow.verification_uri,
            verification_uri_complete: flow.verification_uri_complete.filter(|_| waiting),
            expires_at: rfc3339(flow.expires_at_ms),
            interval: (flow.interval_ms / 1000) as u64,
            detail,
            error: Ended::code_of(status, flow.error),
            connection,
        })
    }

    /// Polls one flow until it ends, or until oauthd stops. Safe to run in several
    /// processes at once.
    async fn drive_device_flow(self: Arc<Self>, id: String) {
        self.poll_until_done(&id).await;
        if let Ok(mut d) = self.device_drivers.lock() {
            d.remove(&id);
        }
    }

    /// Stops between polls once oauthd stops: a poll under way is never cut off
    /// (`stop_background` waits for it), since the provider may have redeemed the code
    /// already, and its tokens must be stored.
    async fn poll_until_done(self: &std::sync::Arc<Self>, id: &str) {
        let id = id.to_owned();
        let mut stop = self.stopping.subscribe();
        // Polls in a row that failed on the way (timeouts, 5xx, 429): each doubles the
        // wait, the first that gets through ends the backoff.
        let mut failures = 0;
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            let flow = match self.store.get_device_flow(&id).await {
                Ok(Some(f)) if f.status == DeviceFlowStatus::Pending => f,
                Ok(_) => return,
                Err(e) => {
                    log::warn!("device flow {id}: {e}; retrying");
                    pause(&mut stop, Duration::from_secs(1)).await;
                    continue;
                }
            };
            if !self.providers.contains_key(&flow.provider) {
                log::info!(
                    "device flow {id}: provider {} is not configured here; leaving the flow to a process that has it",
                    flow.provider
                );
                return;
            }
            let now = self.clock.now_ms();
            if now >= flow.expires_at_ms {
                self.finish_device(
                    &flow,
                    None,
                    Ended::Expired,
                    "the code expired before it was approved".into(),
                )
                .await;
                return;
            }
            let due_at = flow.next_poll_at_ms.min(flow.expires_at_ms);
            // Further off than any wait a poll sets: counted on a clock since stepped
            // back (NTP fixing a clock that ran ahead). Due now, claimed as at that time.
            let stepped_back = due_at - now > longest_wait(flow.interval_ms);
            if due_at > now && !stepped_back {
                pause(&mut stop, Duration::from_millis((due_at - now) as u64)).await;
                continue;
            }
            let claim_at = if stepped_back { due_at } else { now };
            match self
                .store
                .claim_device_poll(&id, claim_at, self.lease_ms)
                .await
            {
                Ok(Some(claimed)) => {
                    if self.poll_device_once(claimed, &mut failures).await {
                        return;
                    }
                }
                // Another process polls it now, or it is not due: look again shortly.
                Ok(None) => pause(&mut stop, Duration::from_millis(500)).await,
                Err(e) => {
                    log::warn!("device flow {id}: {e}; retrying");
                    pause(&mut stop, Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One poll of a claimed flow, `failures` polls in a row after failing on the way;
    /// returns true when the flow has ended.
    async fn poll_device_once(self: &Arc<Self>, claimed: ClaimedPoll, failures: &mut u32) -> bool {
        let ClaimedPoll { flow, claim } = claimed;
        let claim = Some(claim.as_str());
        let (id, p, a) = (
            flow.id.as_str(),
            flow.provider.as_str(),
            flow.account.as_str(),
        );
        // The same rule as when adopting flows: a provider this process does not know is
        // another process's to poll, never a reason to fail the flow.
        let Ok(provider) = self.provider(p).map(Arc::clone) else {
            log::info!("device flow {id}: provider {p} is not configured here; leaving it");
            return true;
        };
        // A flow an app started ends with its key: nothing is polled or stored once the
        // key is revoked, nor while that cannot be told (the poll waits as after a
        // failed one).
        let starter = match flow.started_by.strip_prefix("key:") {
            Some(key_id) => self.store.key_active(key_id, None).await,
            None => Ok(true),
        };
        if let Ok(false) = starter {
            log::warn!("device flow {id}: the API key that started it was revoked");
            self.finish_device(
                &flow,
                claim,
                Ended::KeyRevoked,
                "the API key that started this flow was revoked".into(),
            )
            .await;
            return true;
        }
        let device_code = match self.vault.open_str(&device_aad(id), &flow.device_code) {
            Ok(c) => c,
            Err(e) => {
                self.finish_device(&flow, claim, Ended::Vault, e.to_string())
                    .await;
                return true;
            }
        };
        let result = match (starter, self.endpoints(&provider).await) {
            (Err(e), _) => DevicePoll::Failed(FlowError::Transient(format!(
                "looking up the API key that started it: {e}"
            ))),
            (Ok(_), Ok(endpoints)) => {
                flows::device_poll(
                    &self.waiting_http,
                    &provider,
                    &endpoints.token,
                    &device_code,
                )
                .await
            }
            (Ok(_), Err(e)) => DevicePoll::Failed(FlowError::Transient(e.to_string())),
        };
        // The interval apps see stays the provider's (with its slow_downs); a backoff only
        // delays the next poll.
        let keep_polling = |interval_ms: i64| DevicePollOutcome::Pending {
            interval_ms,
            delay_ms: interval_ms,
        };
        if *failures > 0 && matches!(result, DevicePoll::Pending | DevicePoll::SlowDown) {
            log::info!(
                "device {p}/{a}: the token endpoint answers again; polling every {} s",
                flow.interval_ms / 1000
            );
            *failures = 0;
        }
        let outcome = match result {
            DevicePoll::Pending => keep_polling(flow.interval_ms),
            DevicePoll::SlowDown => {
                log::info!(
                    "device {p}/{a}: slow_down; polling every {} s",
                    (flow.interval_ms + SLOW_DOWN_MS) / 1000
                );
                keep_polling(flow.interval_ms + SLOW_DOWN_MS)
            }
            DevicePoll::Failed(FlowError::Transient(e)) => {
                *failures = failures.saturating_add(1);
                let delay_ms = backed_off(flow.interval_ms, *failures);
                log::warn!(
                    "device {p}/{a}: poll failed ({e}); trying again in {} s",
                    delay_ms / 1000
                );
                DevicePollOutcome::Pending {
                    interval_ms: flow.interval_ms,
                    delay_ms,
                }
            }
            DevicePoll::Done(tokens) => {
                // The first success ends polling whatever happens next.
                self.connect_device(&flow, claim, &provider, &tokens).await;
                return true;
            }
            DevicePoll::Denied(d) => {
                self.finish_device(
                    &flow,
                    claim,
                    Ended::Denied,
                    format!("access was declined: {d}"),
                )
                .await;
                return true;
            }
            DevicePoll::Expired => {
                self.finish_device(
                    &flow,
                    claim,
                    Ended::Expired,
                    "the code expired before it was approved".into(),
                )
                .await;
                return true;
            }
            DevicePoll::Failed(e) => {
                self.finish_device(&flow, claim, Ended::of_poll(&e), e.to_string())
                    .await;
                return true;
            }
        };
        match self
            .store
            .finish_device_poll(id, claim, outcome, self.clock.now_ms(), Vec::new())
            .await
        {
            Ok(PollRecorded::Yes(_)) => {}
            // The poll outlived its claim and another process polls the flow now; the
            // next look at the flow finds out how it stands.
            Ok(PollRecorded::No) => log::info!("device flow {id}: another process polls it now"),
            Err(e) => log::warn!("device flow {id}: {e}"),
        }
        false
    }

    /// Stores the tokens a poll got and finishes the flow `connected`, in one write.
    async fn connect_device(
        self: &Arc<Self>,
        flow: &DeviceFlowRow,
        claim: Option<&str>,
        provider: &crate::oauth::Provider,
        tokens: &flows::TokenSet,
    ) {
        let (p, a) = (flow.provider.as_str(), flow.account.as_str());
        let (save, mut events, replaced) = match self
            .prepare_connection(provider, a, tokens, None, Via::Device)
            .await
        {
            Ok(prepared) => (prepared.save, prepared.events, prepared.replaced),
            Err(e) => {
                let detail = format!(
                    "tokens were issued but could not be stored: {}",
                    e.for_callers()
                );
                log::warn!("device {p}/{a}: {detail}");
                self.finish_device(flow, claim, Ended::of_keeping(&e), detail)
                    .await;
                return;
            }
        };
        // Checked again where it is stored, in turn with the key's other additions: flows
        // its key started before it reached its cap stop here.
        let _turn = match flow.started_by.strip_prefix("key:") {
            Some(key_id) => match self.starter_room(key_id, p, a).await {
                Ok(turn) => turn,
                Err(e) => {
                    log::warn!("device {p}/{a}: {}", super::room::REFUSED_TOKENS);
                    self.finish_device(flow, claim, Ended::of_keeping(&e), e.to_string())
                        .await;
                    return;
                }
            },
            None => None,
        };
        let detail = connected_detail(flow, replaced.as_ref(), &save.identity);
        events.push(self.device_event(flow, DeviceFlowStatus::Connected, None, &detail));
        // As for every (re)connect: reads that began before the write cannot put the old
        // token back.
        let _saved = self.token_cache.forget_after(&save.key);
        let (key, identity) = (save.key.clone(), save.identity.clone());
        let outcome = DevicePollOutcome::Connected {
            save: Box::new(save),
            detail,
        };
        match self.record_final(flow, claim, outcome, &events).await {
            Recorded::Yes(was) => {
                log::info!("device {p}/{a}: connected");
                // The row the save replaced, as it was then: the one read before may be
                // older (a refresh saved meanwhile, whose rotated token only it holds).
                let was = match was {
                    Some(was) => was.map(|row| *row),
                    None => replaced,
                };
                if let Some(old) = was.filter(|row| row.identity.another_than(&identity)) {
                    self.end_replaced("device", old, &identity).await;
                }
                if let Some(caution) = super::callback::no_refresh_token(provider, tokens, true) {
                    log::warn!("device {p}/{a}: {caution}");
                }
            }
            // After this poll outlived its claim (a process stalled past the lease): the
            // flow was found expired, or failed when another process polled the spent
            // code, and the user was told so. Or its connection was deleted meanwhile
            // (`end_device_flows_of`).
            Recorded::Refused(status) => {
                log::error!(
                    "device {p}/{a}: tokens came for flow {} after it had ended ({}); they were not stored: connect again",
                    flow.id,
                    status.map_or("gone".into(), |s| s.to_string())
                );
                // Kept nowhere: revoked, as far as the provider can be reached (a flow its
                // delete ended asked that nothing be connected). Not when another poll
                // stored tokens of this grant.
                if status != Some(DeviceFlowStatus::Connected) {
                    self.revoke_unkept(provider, &key, tokens, "device: the flow had ended")
                        .await;
                }
            }
            Recorded::Failed => log::error!(
                "device {p}/{a}: tokens came for flow {} and could not be stored: connect again",
                flow.id
            ),
        }
    }

    /// Ends the pending device flows of `key`, whose connection was just deleted:
    /// approved afterwards, one would bring the connection back. Ended whoever polls it
    /// (`DevicePollOutcome::Withdrawn`): a poll under way that comes back with tokens
    /// stores nothing and revokes them (`connect_device`). Nothing is waited for.
    pub(super) async fn end_device_flows_of(&self, key: &crate::store::ConnectionKey) {
        let flows = match self.store.pending_device_flows().await {
            Ok(flows) => flows,
            Err(e) => {
                log::warn!("disconnect {key}: could not look for its device flows waiting for approval ({e}): one approved later connects it again");
                return;
            }
        };
        let detail = format!(
            "the connection {key} was deleted while this flow waited for approval: start a new flow to connect it again"
        );
        let ended = Ended::ConnectionDeleted;
        for flow in flows
            .iter()
            .filter(|f| f.provider == key.provider && f.account == key.account)
        {
            let events = [self.device_event(flow, ended.status(), Some(ended.code()), &detail)];
            let outcome = DevicePollOutcome::Withdrawn {
                error: ended.code().to_owned(),
                detail: detail.clone(),
            };
            match self.record_final(flow, None, outcome, &events).await {
                Recorded::Yes(_) => log::info!("device flow {} ({key}): ended: {detail}", flow.id),
                // Ended meanwhile by its own poll.
                Recorded::Refused(Some(DeviceFlowStatus::Connected)) => log::warn!(
                    "disconnect {key}: device flow {} connected it again as it was deleted (approved just before)",
                    flow.id
                ),
                Recorded::Refused(_) => {}
                Recorded::Failed => log::warn!(
                    "disconnect {key}: device flow {} could not be ended: approved later, it connects {key} again",
                    flow.id
                ),
            }
        }
    }

    async fn finish_device(
        &self,
        flow: &DeviceFlowRow,
        claim: Option<&str>,
        ended: Ended,
        detail: String,
    ) {
        let status = ended.status();
        let events = [self.device_event(flow, status, Some(ended.code()), &detail)];
        // Why, as the API answers it: the operator should not need to ask the API.
        let said = format!(
            "device flow {} ({}/{}): {status}: {detail}",
            flow.id, flow.provider, flow.account
        );
        let outcome = DevicePollOutcome::Finished {
            status,
            error: ended.code().to_owned(),
            detail,
        };
        if let Recorded::Yes(_) = self.record_final(flow, claim, outcome, &events).await {
            if status == DeviceFlowStatus::Failed {
                log::warn!("{said}");
            } else {
                log::info!("{said}");
            }
        }
    }

    /// Records how a flow ended, with its events. A store that fails is tried again, for
    /// as long as a claim's lease lasts or until the stop's deadline: an outcome lost now
    /// would leave the flow to be polled again, with a device code that may have been
    /// redeemed.
    async fn record_final(
        &self,
        flow: &DeviceFlowRow,
        claim: Option<&str>,
        outcome: DevicePollOutcome,
        events: &[crate::notify::Event],
    ) -> Recorded {
        let id = flow.id.as_str();
        let ends_as = match &outcome {
            DevicePollOutcome::Finished { status, .. } => Some(*status),
            DevicePollOutcome::Withdrawn { .. } => Some(DeviceFlowStatus::Failed),
            DevicePollOutcome::Connected { .. } => Some(DeviceFlowStatus::Connected),
            DevicePollOutcome::Pending { .. } => None,
        };
        let deliveries = self.notifier.deliveries(events);
        let give_up = tokio::time::Instant::now() + self.lease();
        let mut failed = false;
        loop {
            let now = self.clock.now_ms();
            match self
                .store
                .finish_device_poll(id, claim, outcome.clone(), now, deliveries.clone())
                .await
            {
                Ok(PollRecorded::Yes(was)) => {
                    self.notifier.written(events);
                    return Recorded::Yes(Some(was));
                }
                Ok(PollRecorded::No) => {
                    let status = self.store.get_device_flow(id).await.ok().flatten();
                    let status = status.map(|f| f.status);
                    // A try that failed may have written before its answer was lost.
                    if failed && status.is_some() && status == ends_as {
                        self.notifier.written(events);
                        return Recorded::Yes(None);
                    }
                    log::info!("device flow {id}: not recorded; another process ended or polls it");
                    return Recorded::Refused(status);
                }
                Err(e) if tokio::time::Instant::now() < give_up && !self.past_stop_deadline() => {
                    log::warn!("device flow {id}: could not record how it ended ({e}); trying again in 1 s");
                    failed = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    log::error!("device flow {id}: could not record how it ended: {e}");
                    return Recorded::Failed;
                }
            }
        }
    }
}

/// A connected flow's detail, as its status says it (the page, an app): "connected", and
/// for a reconnect that made the connection another account at the provider than it was,
/// that the apps that read it get the new account's tokens (the account it was is not
/// named to an app, whose key may not reach it).
fn connected_detail(
    flow: &DeviceFlowRow,
    replaced: Option<&ConnectionRow>,
    now: &crate::store::AccountIdentity,
) -> String {
    let Some(old) = replaced.filter(|old| old.identity.another_than(now)) else {
        return "connected".into();
    };
    let (p, a) = (&flow.provider, &flow.account);
    let was = if flow.started_by.starts_with("key:") {
        String::new()
    } else {
        format!(" (it was {})", super::replaced::who(&old.identity))
    };
    format!(
        "connected as another account at {p} than it was{was}: the apps that read {p}/{a} get this account's tokens from now on. The grant of the account it was is revoked at {p} unless another connection is that account (oauthd's log says how it went)"
    )
}

/// How recording a device flow's end went.
enum Recorded {
    /// Recorded; for tokens, the connection row they replaced as the store said it
    /// (`None`: not known, a try whose answer was lost recorded it).
    Yes(Option<Option<Box<ConnectionRow>>>),
    /// Not pending any more, or polled by another process now: the flow's status then.
    Refused(Option<DeviceFlowStatus>),
    /// The store kept failing.
    Failed,
}

/// Sleeps for `wait`, or until oauthd stops.
async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>, wait: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = stop.changed() => {}
    }
}

/// Looks for pending device flows nobody here polls, every `interval`, until `stop`.
pub async fn watch_device_flows(
    broker: Arc<Broker>,
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    super::refresher::every(interval, stop, || async {
        if let Err(e) = broker.adopt_device_flows().await {
            log::warn!("device flows: {e}; will look again in {interval:?}");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failed_poll_doubles_the_wait_up_to_a_minute() {
        assert_eq!(backed_off(1_000, 1), 2_000);
        // A provider that says 0 still gets a growing wait.
        assert_eq!(backed_off(0, 1), 2_000);
        assert_eq!(backed_off(0, 2), 4_000);
        assert_eq!(backed_off(1_000, 3), 8_000);
        assert_eq!(backed_off(5_000, 4), 60_000);
        assert_eq!(backed_off(40_000, 1), 60_000);
        assert_eq!(backed_off(1_000, u32::MAX), 60_000);
        // A provider's own longer interval is never shortened.
        assert_eq!(backed_off(90_000, 2), 90_000);
        assert_eq!(backed_off(i64::MAX, 1), i64::MAX);
    }
}
