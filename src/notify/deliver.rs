//! The delivery worker: claims due deliveries from the outbox (a lease, so that with
//! several instances each attempt belongs to one), sends them, and records the outcome: a
//! 2xx ends a delivery; anything else is retried with backoff until its deadline, then it
//! is dead. It runs beside the request handlers and never holds them up.

use super::event::message;
use super::{Format, Notifier, Target};
use crate::store::{ClaimRoom, DeliveryOutcome, DeliveryRow, OutboxStore};
use reqwest::header::CONTENT_TYPE;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Longest one attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claim holds a delivery: outlives an attempt, so only a worker that died
/// leaves it to be claimed again.
const LEASE_MS: i64 = 30_000;
/// Attempts running at once, and at once to one target: a target that hangs until the
/// timeout holds two slots, never the others' deliveries.
const MAX_IN_FLIGHT: usize = 16;
const PER_TARGET: u32 = 2;
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
        .map_err(|e| format!("cannot build the HTTP client for notifications: {e}"))
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
    while !*stop.borrow() {
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(std::time::Instant::now());
            let before = notifier.now_ms() - super::millis(notifier.policy().keep);
            if let Err(e) = store.prune_deliveries(before).await {
                log::warn!("notifications: pruning old deliveries: {e}");
            }
        }
        let room = MAX_IN_FLIGHT.saturating_sub(running.len());
        if room > 0 {
            let room = ClaimRoom {
                limit: room as u32,
                per_target: PER_TARGET,
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
                    for d in batch {
                        *busy.entry(d.target.clone()).or_default() += 1;
                        let (store, notifier, http) =
                            (store.clone(), notifier.clone(), http.clone());
                        running.spawn(async move {
                            let target = d.target.clone();
                            attempt(store.as_ref(), &notifier, &http, d).await;
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
    // Attempts still running are dropped: their claims end (or, on SQLite, are released at
    // the next start) and they are sent again.
    running.shutdown().await;
}

/// Sends one delivery and records how it went.
async fn attempt(
    store: &dyn OutboxStore,
    notifier: &Notifier,
    http: &reqwest::Client,
    d: DeliveryRow,
) {
    // A target this process does not have (a config being rolled out, a renamed target)
    // is retried like a failing one: another instance, or this one restarted, may have it.
    let sent = match notifier.target(&d.target) {
        None => Err(format!("no target named {:?} is configured here", d.target)),
        Some(target) => send(http, &target, &d, notifier.now_ms()).await,
    };
    let outcome = match sent {
        Ok(()) => DeliveryOutcome::Delivered,
        Err(error) => {
            let now = notifier.now_ms();
            if now >= d.deadline_ms {
                DeliveryOutcome::Dead { error }
            } else {
                let wait = backoff_ms(notifier.policy(), d.attempts);
                DeliveryOutcome::Retry {
                    at_ms: now.saturating_add(wait).min(d.deadline_ms),
                    error,
                }
            }
        }
    };
    let result = match &outcome {
        DeliveryOutcome::Delivered => "delivered",
        DeliveryOutcome::Retry { .. } => "failed",
        DeliveryOutcome::Dead { .. } => "dead",
    };
    match &outcome {
        DeliveryOutcome::Delivered => log::info!(
            "notification {} ({}) delivered to {} (attempt {})",
            d.event_id,
            d.event_type,
            d.target,
            d.attempts
        ),
        DeliveryOutcome::Retry { at_ms, error } => log::warn!(
            "notification {} ({}) to {}: {error}; retrying in {} s",
            d.event_id,
            d.event_type,
            d.target,
            (at_ms - notifier.now_ms()).max(0) / 1000
        ),
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

/// One POST to the target. The error says what happened without the URL (which may hold
/// a topic name or a token).
async fn send(
    http: &reqwest::Client,
    target: &Target,
    d: &DeliveryRow,
    now_ms: i64,
) -> Result<(), String> {
    let timestamp = now_ms / 1000;
    let (content_type, body) = match target.format {
        Format::Json => ("application/json", d.body.clone()),
        Format::Text | Format::Gotify => {
            let m = message(&d.body).ok_or("the stored event cannot be read")?;
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
        .map_err(|e| describe(&e.without_url()))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
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
}
