//! `oauthd events list|retry`: what was sent to the `[[notify]]` targets, and sending a
//! failed delivery again. The running daemon does the sending.

use super::{open_store, runtime, EventsCommand, Fatal, Missing};
use crate::clock::{rfc3339, Clock};
use crate::config::Settings;
use crate::store::{DeliveryFilter, DeliveryStatus};

pub(super) fn events(settings: Settings, command: EventsCommand) -> Result<(), Fatal> {
    let store = open_store(&settings, Missing::Refuse)?;
    let notifier = super::notifier(&settings, Clock::system())?;
    runtime()?.block_on(async {
        match command {
            EventsCommand::List {
                failed,
                limit,
                json,
            } => {
                let filter = if failed {
                    DeliveryFilter::Failed
                } else {
                    DeliveryFilter::All
                };
                let rows = store.list_deliveries(filter, limit).await?;
                if json {
                    let list: Vec<_> = rows
                        .iter()
                        .map(|d| {
                            serde_json::json!({
                                "id": d.id,
                                "event_id": d.event_id,
                                "type": d.event_type,
                                "target": d.target,
                                "status": d.status.as_str(),
                                "attempts": d.attempts,
                                "last_error": d.last_error,
                                "created_at": rfc3339(d.created_at_ms),
                                "next_attempt_at": (d.status == DeliveryStatus::Pending)
                                    .then_some(d.next_attempt_at_ms)
                                    .flatten()
                                    .map(rfc3339),
                                "finished_at": d.finished_at_ms.map(rfc3339),
                                "body": serde_json::from_str::<serde_json::Value>(&d.body).ok(),
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(());
                }
                println!(
                    "{:<36} {:<27} {:<16} {:<9} {:>8} {:<25} LAST ERROR",
                    "ID", "TYPE", "TARGET", "STATUS", "ATTEMPTS", "CREATED"
                );
                for d in &rows {
                    println!(
                        "{:<36} {:<27} {:<16} {:<9} {:>8} {:<25} {}",
                        d.id,
                        d.event_type,
                        d.target,
                        d.status.as_str(),
                        d.attempts,
                        rfc3339(d.created_at_ms),
                        d.last_error.as_deref().unwrap_or("")
                    );
                }
                if rows.is_empty() {
                    eprintln!("No deliveries{}.", if failed { " failed" } else { "" });
                }
                Ok(())
            }
            EventsCommand::Retry { id } => {
                let now = Clock::system().now_ms();
                if store
                    .retry_delivery(&id, now, notifier.retry_deadline())
                    .await?
                {
                    eprintln!(
                        "Delivery {id} is due now; the running oauthd sends it within a second."
                    );
                    Ok(())
                } else {
                    Err(Fatal(
                        format!("no delivery {id:?} (see `oauthd events list`)"),
                        1,
                    ))
                }
            }
        }
    })
}
