//! The delivery worker: claims due deliveries from the outbox (a lease, so that with
//! several instances each attempt belongs to one), sends them, and records the outcome: a
//! 2xx ends a delivery; `410 Gone` ends it as dead (the receiver says the endpoint is gone
//! for good); anything else is retried with backoff, never sooner than a `Retry-After` the
//! receiver sent, until its deadline, then it is dead. It runs beside the request handlers
//! and never holds them up.
//!
//! A target that answered `410 Gone` is recorded as gone (in the store: every instance
//! sees it). Its later deliveries end as dead without being sent while its URL is the one
//! that answered, except test events and a delivery's first attempt after a retry by hand
//! (how an operator says it is back); a 2xx from it removes the record.

use super::event::message;
use super::{Format, Notifier, Target};
use crate::store::{ClaimRoom, DeliveryOutcome, DeliveryRow, GoneTarget, OutboxStore};
use reqwest::header::CONTENT_TYPE;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest one attempt may take before it counts as failed (Standard Webhooks suggests
/// 15-30 s; a receiver that queues its work answers well within it).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a claim holds a delivery: outlives an attempt, so only a worker that died
/// leaves it to be claimed again.
const LEASE_MS: i64 = 30_000;
/// How long a stop waits for attempts under way to be answered (most are within a
/// second); those still waiting then are given back, due at once, for another instance
/// or the next start, rather than held by their claim until its lease ends.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Attempts running at once to one target (in every instance on the store together: the
/// store counts the claims not ended), and at least in all. The pool holds `PER_TARGET`
/// for every configured target (`pool_size`): a target that hangs until the timeout holds
/// its own two slots, never the others' (with a pool of sixteen, eight hanging targets
/// took it all).
const MIN_IN_FLIGHT: usize = 16;
const PER_TARGET: u32 = 2;

/// Attempts running at once for `targets` configured targets, and one for deliveries to
/// targets not configured here (which fail at once).
fn pool_size(targets: usize) -> usize {
    MIN_IN_FLIGHT.max((targets + 1) * PER_TARGET as usize)
}
/// How often the outbox is looked at without being woken (retries that fell due, events
/// another instance wrote).
const POLL: Duration = Duration::from_secs(1);
/// How often finished deliveries past `keep` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The HTTP client for deliveries: no redirects (a target that moved must be
/// reconfigured, not followed), bounded time.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(ATTEMPT_TIMEOUT)
        .user_agent(concat!("oauthd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            format!(
                "cannot build the HTTP client for notifications: {}",
                crate::oauth::with_causes(&e)
            )
        })
}

/// Delivers until `stop` turns true. With no target configured it runs all the same:
/// deliveries left from a config that had targets are retried until their deadline, then
/// dead (like those of any target missing here), and finished ones are pruned, so the
/// outbox and its pending count do not stand still.
pub async fn run(
    store: Arc<dyn OutboxStore>,
    notifier: Arc<Notifier>,
    http: reqwest::Client,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    match store.release_claims(notifier.now_ms()).await {
        Ok(0) => {}
        Ok(n) => log::info!(
            "notifications: {n} delivery attempt(s) a previous run left unfinished are due now"
        ),
        Err(e) => log::warn!("notifications: {e}"),
    }
    let mut last_prune: Option<std::time::Instant> = None;
    let mut failing = false;
    let mut running: tokio::task::JoinSet<String> = tokio::task::JoinSet::new();
    let mut busy: HashMap<String, u32> = HashMap::new();
    // The attempts under way, by delivery id (with their attempt's number): what a stop
    // gives back if they are not done by then.
    let under_way: Arc<std::sync::Mutex<HashMap<String, u32>>> = Arc::default();
    let pool = pool_size(notifier.targets().len());
    while !*stop.borrow() {
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            let before = notifier.now_ms() - super::millis(notifier.policy().keep);
            if let Err(e) = store.prune_deliveries(before).await {
                log::warn!("notifications: pruning old deliveries: {e}");
            }
        }
        let room = pool.saturating_sub(running.len());
        if room > 0 {
            let room = ClaimRoom {
                limit: room as u32,
                per_target: PER_TARGET,
                longest_wait_ms: Some(longest_wait(notifier.policy())),
                busy: busy
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(t, n)| (t.clone(), *n))
                    .collect(),
            };
            let claimed = store
                .claim_deliveries(notifier.now_ms(), LEASE_MS, &room)
                .await;
            match claimed {
                Ok(batch) => {
                    if failing {
                        log::info!("notifications: the outbox answers again");
                        failing = false;
                    }
                    let gone = if batch.is_empty() {
                        Vec::new()
                    } else {
                        // Unread, no target counts as gone: deliveries are sent, as before
                        // any answered 410.
                        store.gone_targets().await.unwrap_or_else(|e| {
                            log::warn!("notifications: {e}");
                            Vec::new()
                        })
                    };
                    for d in batch {
                        *busy.entry(d.target.clone()).or_default() += 1;
                        let gone = gone.iter().find(|g| g.target == d.target).cloned();
                        let (store, notifier, http, under_way) = (
                            store.clone(),
                            notifier.clone(),
                            http.clone(),
                            under_way.clone(),
                        );
                        running.spawn(async move {
                            let (target, id) = (d.target.clone(), d.id.clone());
                            set(&under_way, |u| u.insert(id.clone(), d.attempts));
                            attempt(store.as_ref(), &notifier, &http, d, gone).await;
                            set(&under_way, |u| u.remove(&id));
                            target
                        });
                    }
                }
                Err(e) => {
                    if !failing {
                        log::warn!("notifications: {e}; trying again every {POLL:?}");
                        failing = true;
                    }
                }
            }
        }
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(target) = done {
                    if let Some(n) = busy.get_mut(&target) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            _ = notifier.woken() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => {}
        }
        // A task that panicked gave no target back: recount from what still runs.
        if running.is_empty() {
            busy.clear();
        }
    }
    // Attempts under way get a moment to be answered; those still waiting are dropped and
    // given back, due now: sent again by another instance, or this one's next start, not
    // only once their claim's lease ends.
    let grace = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(grace);
    while !running.is_empty() {
        tokio::select! {
            _ = &mut grace => break,
            _ = running.join_next() => {}
        }
    }
    running.shutdown().await;
    let left: Vec<(String, u32)> = set(&under_way, |u| u.drain().collect());
    for (id, attempt) in left {
        let outcome = DeliveryOutcome::Retry {
            at_ms: notifier.now_ms(),
            error: "oauthd stopped before the target answered; sent again".to_owned(),
        };
        match store.finish_delivery(&id, attempt, outcome, notifier.now_ms()).await {
            Ok(true) => log::info!(
                "notifications: delivery {id} was under way as oauthd stopped: it is due again now"
            ),
            // Its outcome was recorded after all, or it moved on (claimed again elsewhere).
            Ok(false) => {}
            Err(e) => log::warn!(
                "notifications: delivery {id} was under way as oauthd stopped, and could not be given back ({e}): it is sent again once its claim ends"
            ),
        }
    }
}

/// `change` applied to the attempts under way (a poisoned lock is taken as it is: the map
/// only says what to give back at a stop).
fn set<T>(
    under_way: &std::sync::Mutex<HashMap<String, u32>>,
    change: impl FnOnce(&mut HashMap<String, u32>) -> T,
) -> T {
    let mut map = under_way
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    change(&mut map)
}

/// Whether `d` is sent to a target recorded as gone: a test event, or the first attempt
/// after a retry by hand (the operator says the target is back).
fn sent_though_gone(d: &DeliveryRow) -> bool {
    d.event_type == super::EventType::NotifyTest.as_str()
        || (d.attempts_before_retry > 0 && d.attempts == d.attempts_before_retry + 1)
}

/// Sends one delivery and records how it went. `gone`: the record of its target's
/// `410 Gone`, if it has one.
async fn attempt(
    store: &dyn OutboxStore,
    notifier: &Notifier,
    http: &reqwest::Client,
    d: DeliveryRow,
    gone: Option<GoneTarget>,
) {
    // A target this process does not have (a config being rolled out, a renamed target)
    // is retried like a failing one: another instance, or this one restarted, may have it.
    let target = notifier.target(&d.target);
    let url_hash = target.as_ref().map(|t| t.url_hash());
    let gone_here = gone
        .as_ref()
        .filter(|g| Some(&g.url_hash) == url_hash.as_ref());
    let sent = match (&target, gone_here) {
        (None, _) => Err(Failed::because(format!(
            "no target named {:?} is configured here (removed or renamed in the config? \
             another oauthd on this database may have it)",
            d.target
        ))),
        (Some(_), Some(g)) if !sent_though_gone(&d) => Err(Failed {
            error: format!(
                "not sent: the target answered 410 Gone at {} and counts as gone until its url changes in the config, or a delivery to it retried by hand (oauthd events retry) or a test notification gets a 2xx",
                crate::clock::rfc3339(g.since_ms)
            ),
            gone: true,
            retry_after_ms: None,
        }),
        (Some(target), _) => send(http, target, &d, notifier.now_ms()).await,
    };
    match (&sent, &url_hash) {
        // It answered 410 just now: recorded, so its next deliveries are not sent.
        (Err(Failed { gone: true, .. }), Some(hash))
            if gone_here.is_none() || sent_though_gone(&d) =>
        {
            let record = GoneTarget {
                target: d.target.clone(),
                url_hash: hash.clone(),
                since_ms: notifier.now_ms(),
            };
            match store.set_target_gone(record).await {
                Ok(()) => log::error!(
                    "notifications: target {} answered 410 Gone: its deliveries are not sent until its url changes in the config, or one retried by hand (oauthd events retry) or a test notification gets a 2xx",
                    d.target
                ),
                Err(e) => log::warn!("notifications: recording that {} is gone: {e}", d.target),
            }
        }
        // It answers again (its url changed, or it came back): no longer gone.
        (Ok(()), _) if gone.is_some() => {
            if let Err(e) = store.clear_target_gone(&d.target).await {
                log::warn!("notifications: {e}");
            }
        }
        _ => {}
    }
    let outcome = match sent {
        Ok(()) => DeliveryOutcome::Delivered,
        Err(Failed {
            error, gone: true, ..
        }) => DeliveryOutcome::Dead { error },
        Err(Failed {
            error,
            retry_after_ms,
            ..
        }) => {
            let now = notifier.now_ms();
            // Attempts since the last retry by hand: that retry starts the backoff afresh.
            let failed = d.attempts.saturating_sub(d.attempts_before_retry);
            let policy = notifier.policy();
            let wait = next_wait(policy, failed, retry_after_ms, jitter());
            // Honoured up to `retry_max`, as by `next_wait`.
            let asked = retry_after_ms.map(|a| a.clamp(0, super::millis(policy.retry_max)));
            retry_or_end(now, d.deadline_ms, wait, asked, error)
        }
    };
    let result = match &outcome {
        DeliveryOutcome::Delivered => "delivered",
        DeliveryOutcome::Retry { .. } => "failed",
        DeliveryOutcome::Dead { .. } => "dead",
    };
    match &outcome {
        DeliveryOutcome::Delivered => log::info!(
            "notification {} ({}) delivered to {} (attempt {}, delivery {})",
            d.event_id,
            d.event_type,
            d.target,
            d.attempts,
            d.id
        ),
        DeliveryOutcome::Retry { at_ms, error } => {
            // Sending it now cannot help a target that is not configured.
            let advice = match &target {
                Some(_) => format!("oauthd events retry {} sends it now", d.id),
                None => format!(
                    "put the target back in the config to have it sent; past {} it counts as dead",
                    crate::clock::rfc3339(d.deadline_ms)
                ),
            };
            log::warn!(
                "notification {} ({}) to {}: {error}; retrying in {} s (delivery {}: {advice})",
                d.event_id,
                d.event_type,
                d.target,
                (at_ms - notifier.now_ms()).max(0) / 1000,
                d.id,
            )
        }
        DeliveryOutcome::Dead { error } => log::error!(
            "notification {} ({}) to {}: {error}; given up after {} attempts (oauthd events retry {})",
            d.event_id,
            d.event_type,
            d.target,
            d.attempts,
            d.id
        ),
    }
    crate::metrics::DELIVERIES
        .with_label_values(&[d.target.as_str(), result])
        .inc();
    match store
        .finish_delivery(&d.id, d.attempts, outcome, notifier.now_ms())
        .await
    {
        Ok(true) => {}
        Ok(false) => log::info!(
            "notification {} to {}: claimed again meanwhile (its claim ran out); outcome not recorded",
            d.event_id,
            d.target
        ),
        // The claim runs out and the delivery is attempted again: at least once.
        Err(e) => log::warn!("notification {} to {}: {e}", d.event_id, d.target),
    }
}

/// The wait before the next attempt after `attempts` failed ones: `retry_min` doubled each
/// time, at most `retry_max`.
fn backoff_ms(policy: super::EventsPolicy, attempts: u32) -> i64 {
    let min = super::millis(policy.retry_min).max(1);
    let max = super::millis(policy.retry_max).max(min);
    let doublings = attempts.saturating_sub(1).min(30);
    min.saturating_mul(1 << doublings).min(max)
}

/// The wait before the next attempt: the backoff shortened by up to a quarter at random
/// (`jitter` in 0..=1), so that deliveries that failed together (a receiver that was down)
/// do not all come back in the same second; never sooner than the receiver's
/// `Retry-After`, which is honoured up to `retry_max`.
/// The furthest off a next attempt is set (`retry_max`, or a claim's lease), with the
/// slack clocks of instances sharing a store may differ by: one further off was set on a
/// clock since stepped back, and the claim takes it as due.
fn longest_wait(policy: super::EventsPolicy) -> i64 {
    super::millis(policy.retry_max)
        .max(LEASE_MS)
        .saturating_add(crate::clock::CLOCK_SLACK_MS)
}

/// What follows a failed attempt `wait` ms from `now`: the next one, at the deadline at
/// the latest, or the end (dead) when the deadline has come, or when the receiver's
/// `Retry-After` (`retry_after_ms`, as honoured: up to `retry_max`) asks for a wait past
/// it: an attempt sooner than it asked would only be refused again (and a `429` may count
/// it against the sender).
fn retry_or_end(
    now: i64,
    deadline: i64,
    wait: i64,
    retry_after_ms: Option<i64>,
    error: String,
) -> DeliveryOutcome {
    if now >= deadline {
        return DeliveryOutcome::Dead { error };
    }
    let at_ms = now.saturating_add(wait);
    match retry_after_ms {
        Some(asked) if now.saturating_add(asked) > deadline => DeliveryOutcome::Dead {
            error: format!(
                "{error}; its Retry-After asks for a wait past the end of the delivery's retry window ({}: events.retry_for_seconds)",
                crate::clock::rfc3339(deadline)
            ),
        },
        _ => DeliveryOutcome::Retry {
            at_ms: at_ms.min(deadline),
            error,
        },
    }
}

fn next_wait(
    policy: super::EventsPolicy,
    attempts: u32,
    retry_after_ms: Option<i64>,
    jitter: f64,
) -> i64 {
    let wait = backoff_ms(policy, attempts);
    let spread = (wait as f64 * jitter.clamp(0.0, 1.0) / 4.0) as i64;
    let asked = retry_after_ms
        .unwrap_or(0)
        .clamp(0, super::millis(policy.retry_max));
    (wait - spread).max(asked)
}

/// A random number in 0..=1 for `next_wait` (0, no jitter, should the OS refuse bytes).
fn jitter() -> f64 {
    crate::secret::random_bytes::<2>()
        .map(|b| f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX))
        .unwrap_or(0.0)
}

/// How an attempt failed.
#[derive(Debug, PartialEq)]
struct Failed {
    /// What happened, without the URL.
    error: String,
    /// The receiver answered `410 Gone`: its endpoint is gone for good, and retrying it
    /// would only be refused again.
    gone: bool,
    /// The receiver's `Retry-After`, as milliseconds from now.
    retry_after_ms: Option<i64>,
}

impl Failed {
    fn because(error: String) -> Failed {
        Failed {
            error,
            gone: false,
            retry_after_ms: None,
        }
    }
}

/// A `Retry-After` value (RFC 9110: delay seconds, or an HTTP date) as milliseconds from
/// `now_ms`; a date in the past is 0, anything else unreadable `None`.
fn retry_after_ms(value: &str, now_ms: i64) -> Option<i64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = value.parse().unwrap_or(i64::MAX);
        return Some(secs.saturating_mul(1000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(at.timestamp_millis().saturating_sub(now_ms).max(0))
}

/// One POST to the target. The error says what happened without the URL (which may hold
/// a topic name or a token).
async fn send(
    http: &reqwest::Client,
    target: &Target,
    d: &DeliveryRow,
    now_ms: i64,
) -> Result<(), Failed> {
    let timestamp = now_ms / 1000;
    let (content_type, body) = match target.format {
        Format::Json => ("application/json", d.body.clone()),
        Format::Text | Format::Gotify => {
            let m = message(&d.body)
                .ok_or_else(|| Failed::because("the stored event cannot be read".into()))?;
            match target.format {
                Format::Gotify => (
                    "application/json",
                    serde_json::json!({
                        "title": m.title,
                        "message": m.text,
                        "priority": if m.urgent { 8 } else { 4 },
                    })
                    .to_string(),
                ),
                _ => ("text/plain; charset=utf-8", m.text),
            }
        }
    };
    let mut req = http
        .post(target.url.clone())
        .header(CONTENT_TYPE, content_type)
        .header("webhook-id", &d.event_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(key) = &target.key {
        req = req.header("webhook-signature", key.sign(&d.event_id, timestamp, &body));
    }
    if target.format == Format::Text {
        if let Some(m) = message(&d.body) {
            req = req.header("Title", header_text(&m.title));
            if m.urgent {
                req = req.header("Priority", "high");
            }
            if let Some(link) = m.link {
                req = req.header("Click", header_text(&link));
            }
        }
    }
    let resp = req
        .body(body)
        .send()
        .await
        .map_err(|e| Failed::because(describe(&e.without_url())))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let gone = status == reqwest::StatusCode::GONE;
    Err(Failed {
        error: if gone {
            "HTTP 410 (the receiver says this endpoint is gone: not retried)".to_owned()
        } else {
            format!("HTTP {}", status.as_u16())
        },
        gone,
        retry_after_ms: resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after_ms(v, now_ms)),
    })
}

/// A header value from free text: visible ASCII only (anything else would make the request
/// unsendable, and every retry fail the same way).
fn header_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if e.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let policy = super::super::EventsPolicy {
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(60),
            ..Default::default()
        };
        let waits: Vec<i64> = (1..=6).map(|n| backoff_ms(policy, n)).collect();
        assert_eq!(waits, vec![5_000, 10_000, 20_000, 40_000, 60_000, 60_000]);
        assert_eq!(backoff_ms(policy, u32::MAX), 60_000);
    }

    #[test]
    fn the_wait_is_jittered_down_and_never_shorter_than_retry_after() {
        let policy = super::super::EventsPolicy {
            retry_min: Duration::from_secs(4),
            retry_max: Duration::from_secs(60),
            ..Default::default()
        };
        // Shortened by up to a quarter, never lengthened.
        assert_eq!(next_wait(policy, 1, None, 0.0), 4_000);
        assert_eq!(next_wait(policy, 1, None, 1.0), 3_000);
        assert_eq!(next_wait(policy, 2, None, 0.5), 7_000);
        // The receiver's Retry-After wins when longer, up to retry_max.
        assert_eq!(next_wait(policy, 1, Some(30_000), 1.0), 30_000);
        assert_eq!(next_wait(policy, 1, Some(1_000), 0.0), 4_000);
        assert_eq!(next_wait(policy, 1, Some(86_400_000), 0.0), 60_000);
        let j = jitter();
        assert!((0.0..=1.0).contains(&j), "{j}");
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        // 2026-12-03T19:00:00Z
        let now = 1_796_324_400_000;
        assert_eq!(retry_after_ms("120", now), Some(120_000));
        assert_eq!(retry_after_ms(" 0 ", now), Some(0));
        assert_eq!(
            retry_after_ms("Thu, 03 Dec 2026 19:00:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Thu, 03 Dec 2026 18:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(
            retry_after_ms("99999999999999999999999", now),
            Some(i64::MAX)
        );
        assert_eq!(retry_after_ms("-5", now), None);
        assert_eq!(retry_after_ms("soon", now), None);
        assert_eq!(retry_after_ms("", now), None);
    }
}
