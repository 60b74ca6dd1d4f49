//! `oauthd events list|retry`: what was sent to the `[[notify]]` targets, and sending a
//! failed delivery again. The running daemon does the sending.

use super::{open_store, runtime, EventsCommand, Fatal, Missing};
use crate::clock::{rfc3339, Clock};
use crate::config::Settings;
use crate::store::{DeliveryFilter, DeliveryStatus, Retried};

pub(super) fn events(settings: Settings, command: EventsCommand) -> Result<(), Fatal> {
    let store = open_store(&settings, Missing::Refuse)?;
    let notifier = super::notifier(&settings, Clock::system())?;
    runtime()?.block_on(async {
        match command {
            EventsCommand::List {
                failed,
                delivered,
                dead,
                target,
                limit,
                json,
            } => {
                let filter = match (failed, delivered, dead) {
                    (true, _, _) => DeliveryFilter::Failed,
                    (_, true, _) => DeliveryFilter::Delivered,
                    (_, _, true) => DeliveryFilter::Dead,
                    _ => DeliveryFilter::All,
                };
                let rows = store
                    .list_deliveries(filter, target.as_deref(), limit)
                    .await?;
                if json {
                    let list: Vec<_> = rows
                        .iter()
                        .map(|d| {
                            let mut v = crate::notify::delivery_json(d);
                            if let Some(fields) = v.as_object_mut() {
                                let body = serde_json::from_str(&d.body).unwrap_or_default();
                                fields.insert("body".into(), body);
                            }
                            v
                        })
                        .collect();
                    out!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(());
                }
                let mut table = Vec::with_capacity(rows.len());
                for d in &rows {
                    // A delivered one's error is an earlier attempt's, not how it stands.
                    let last_error = match (d.status, d.last_error.as_deref()) {
                        (_, None) => String::new(),
                        (DeliveryStatus::Delivered, Some(e)) => format!("earlier attempt: {e}"),
                        (_, Some(e)) => e.to_owned(),
                    };
                    table.push([
                        d.id.clone(),
                        d.event_type.to_string(),
                        d.target.clone(),
                        d.status.as_str().to_owned(),
                        d.attempts.to_string(),
                        rfc3339(d.created_at_ms),
                        last_error,
                    ]);
                }
                // No table at all when there is nothing to list (said on stderr below).
                if !table.is_empty() {
                    use super::table::{lines, Align::*};
                    let header = [
                        "ID",
                        "TYPE",
                        "TARGET",
                        "STATUS",
                        "ATTEMPTS",
                        "CREATED",
                        "LAST ERROR",
                    ];
                    for line in lines(header, &table, &[Left, Left, Left, Left, Right]) {
                        out!("{line}");
                    }
                }
                for gone in store.gone_targets().await? {
                    let here = notifier.target(&gone.target);
                    if here.is_some_and(|t| t.url_hash() == gone.url_hash) {
                        say!(
                            "Target {} answered 410 Gone at {}: nothing is sent to it until its url changes in the config, or a delivery to it retried by hand (oauthd events retry ID) or a test notification gets a 2xx.",
                            gone.target,
                            rfc3339(gone.since_ms)
                        );
                    }
                }
                if rows.is_empty() {
                    let which = match filter {
                        DeliveryFilter::All => "",
                        DeliveryFilter::Failed => " failed",
                        DeliveryFilter::Delivered => " delivered",
                        DeliveryFilter::Dead => " dead",
                        DeliveryFilter::Pending => " pending",
                    };
                    let Some(target) = target else {
                        say!("No deliveries{which}.");
                        return Ok(());
                    };
                    say!("No deliveries{which} to {target}.");
                    let names: Vec<&str> =
                        notifier.targets().iter().map(|t| t.name.as_str()).collect();
                    if !names.contains(&target.as_str()) {
                        say!(
                            "No [[notify]] target is named {target} in the config{}.",
                            if names.is_empty() {
                                String::new()
                            } else {
                                format!(" (they are: {})", names.join(", "))
                            }
                        );
                    }
                }
                Ok(())
            }
            EventsCommand::Retry {
                id: None,
                target,
                ..
            } => {
                refuse_copied(store.as_ref()).await?;
                // At most this many at once, newest first: the command says when more are
                // left, for another run.
                const AT_ONCE: u32 = 10_000;
                if let Some(t) = target.as_deref() {
                    if notifier.target(t).is_none() {
                        say!("No [[notify]] target is named {t} in the config; its dead deliveries, if any, are retried all the same.");
                    }
                }
                let dead = store
                    .list_deliveries(DeliveryFilter::Dead, target.as_deref(), AT_ONCE)
                    .await?;
                let to = target.map_or(String::new(), |t| format!(" to {t}"));
                let now = Clock::system().now_ms();
                let mut due = 0;
                for d in &dead {
                    let retried = store
                        .retry_delivery(&d.id, now, notifier.retry_deadline(), false)
                        .await?;
                    if matches!(retried, Retried::Due) {
                        due += 1;
                    }
                }
                if due == 0 {
                    say!("No dead delivery{to} to retry.");
                    return Ok(());
                }
                let (noun, verb) = if due == 1 {
                    ("delivery", "is")
                } else {
                    ("deliveries", "are")
                };
                let sends = who_sends(
                    store.as_ref(),
                    "the running oauthd sends them within a second, at most two at once per target",
                )
                .await;
                say!("{due} dead {noun}{to} {verb} due now; {sends}.");
                if dead.len() == AT_ONCE as usize {
                    say!("There may be more: run this again once these are sent.");
                }
                Ok(())
            }
            EventsCommand::Retry {
                id: Some(id),
                again,
                ..
            } => {
                refuse_copied(store.as_ref()).await?;
                let now = Clock::system().now_ms();
                match store
                    .retry_delivery(&id, now, notifier.retry_deadline(), again)
                    .await?
                {
                    Retried::Due => {
                        let sends =
                            who_sends(store.as_ref(), "the running oauthd sends it within a second")
                                .await;
                        say!("Delivery {id} is due now; {sends}.");
                        Ok(())
                    }
                    // It may have gone through since it was listed (oauthd retries by itself).
                    Retried::AlreadyDelivered => Err(Fatal(
                        format!(
                            "delivery {id} was delivered already (see `oauthd events list`); \
                             `--again` sends it once more"
                        ),
                        1,
                    )),
                    Retried::UnderWay { until_ms } => Err(Fatal(
                        format!(
                            "delivery {id} is being sent right now (its attempt may take until \
                             {}); what that attempt records stands: if it fails, retry after it",
                            rfc3339(until_ms)
                        ),
                        1,
                    )),
                    Retried::NotFound if id.starts_with("msg_") => Err(Fatal(
                        format!(
                            "{id:?} is an event's id (a receiver's webhook-id), and retry takes a \
                             delivery's (dlv_…, one per target): `oauthd events list --json` \
                             shows each delivery with its event's id"
                        ),
                        1,
                    )),
                    Retried::NotFound => Err(Fatal(
                        format!("no delivery {id:?} (see `oauthd events list`)"),
                        1,
                    )),
                }
            }
        }
    })
}

/// Who sends what a retry made due: `serving` (what the running oauthd does) while an
/// oauthd serves `store` (each tells every 20 s, `vault_keys_in_use`; or whether one does
/// could not be read), else that none does. The retry said "the running oauthd sends it"
/// with none running, and nothing was sent.
async fn who_sends(store: &dyn crate::store::Store, serving: &'static str) -> &'static str {
    match store.vault_keys_in_use(Clock::system().now_ms()).await {
        Ok(told) if told.is_empty() => {
            "but no oauthd serves this store now: it is sent once one is started on it"
        }
        _ => serving,
    }
}

/// A retry in a store `oauthd copy` copied from makes due what nothing sends: no oauthd
/// serves it. Its pending deliveries went along with the copy; dead ones did not.
async fn refuse_copied(store: &dyn crate::store::Store) -> Result<(), Fatal> {
    let Some(copied) = super::copied_away::copied(store).await else {
        return Ok(());
    };
    Err(Fatal(
        format!(
            "{} was {copied} by `oauthd copy`, and no oauthd serves it: what a retry makes due here is never sent. Its deliveries pending at the copy went along with it (retry them in the copy, with the copy's settings); its dead ones did not, and stay listed here",
            store.describe()
        ),
        2,
    ))
}
