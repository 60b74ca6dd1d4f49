//! Notifications over HTTP: a test event on demand (`POST /v1/notify/test` with an API key,
//! `POST /ui/api/notify/test` from the page), and the page's view of recent deliveries.

use super::auth::Caller;
use super::body::JsonObject;
use super::openapi::ProblemDoc;
use super::problem::ApiError;
use super::ui::UiSession;
use super::{no_store, AppState};
use crate::notify::{delivery_json, TestBy, TestSent};
use crate::store::DeliveryFilter;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

/// Deliveries the page lists.
const PAGE_DELIVERIES: u32 = 50;

/// A test notification, queued.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct TestQueued<'a> {
    /// The event's id: its deliveries carry it as `webhook-id`.
    #[schema(value_type = String)]
    event_id: &'a str,
    #[schema(value_type = String, example = "notify.test")]
    #[serde(rename = "type")]
    kind: &'a str,
    /// The targets it goes to, by name.
    targets: Vec<String>,
}

/// Send a test notification
///
/// To every `[[notify]]` target. Targets are the operator's: a key limited to some
/// namespaces or accounts (a tenant's) may not ring them.
#[utoipa::path(post, path = "/v1/notify/test", tag = "notify",
    responses(
        (status = 202, description = "Queued for every target.", body = TestQueued),
        (status = 400, description = "A body that is not an empty JSON object (`unknown_field`, `malformed_json`): the test takes no options.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not JSON (`unsupported_media_type`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No API key (`missing_api_key`), an unknown or revoked one (`invalid_api_key`), or one limited by `--namespace` or `--account`: a tenant's (`notify_not_allowed`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "No `[[notify]]` target is configured (`no_notify_targets`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "One was sent less than 5 seconds ago (`too_many_tests`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn test(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    // No options: anything sent is a mistake to say, not to ignore.
    body.finish()?;
    if caller.0.namespaces.is_some() || caller.0.accounts.is_some() {
        return Err(ApiError::unauthorized(
            "notify_not_allowed",
            "only an API key without --namespace or --account limits may send a test notification",
        ));
    }
    send_test(&app, TestBy::App).await
}

/// `POST /ui/api/notify/test`: the page's button, with a budget of its own.
pub async fn ui_test(app: web::Data<AppState>, _s: UiSession) -> Result<HttpResponse, ApiError> {
    send_test(&app, TestBy::Page).await
}

async fn send_test(app: &AppState, by: TestBy) -> Result<HttpResponse, ApiError> {
    match app.notifier.send_test(app.outbox.as_ref(), by).await? {
        TestSent::Sent { event, targets } => {
            Ok(no_store(HttpResponse::Accepted()).json(TestQueued {
                event_id: &event.id,
                kind: event.kind.as_str(),
                targets,
            }))
        }
        TestSent::NoTargets => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_notify_targets",
            "no [[notify]] target is configured: add one to the config file and restart",
        )),
        TestSent::TooSoon { retry_after_secs } => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tests",
            "a test notification was sent less than 5 seconds ago",
        )
        .retry_after(retry_after_secs)),
    }
}

/// `GET /ui/api/events`: each target with its last delivery and last failure (however
/// long ago, whatever the other targets sent since), and the newest deliveries.
pub async fn ui_events(app: web::Data<AppState>, _s: UiSession) -> Result<HttpResponse, ApiError> {
    let recent = app
        .outbox
        .list_deliveries(DeliveryFilter::All, None, PAGE_DELIVERIES)
        .await?;
    let outbox = app.outbox.as_ref();
    let gone = outbox.gone_targets().await?;
    let mut targets = Vec::new();
    for t in app.notifier.targets() {
        // Gone while its URL is the one that answered 410.
        let gone_since = gone
            .iter()
            .find(|g| g.target == t.name && g.url_hash == t.url_hash())
            .map(|g| crate::clock::rfc3339(g.since_ms));
        let last = |filter| async move {
            let newest = outbox.list_deliveries(filter, Some(&t.name), 1).await?;
            Ok::<_, ApiError>(newest.first().map(delivery_json))
        };
        targets.push(json!({
            "name": t.name,
            "host": t.url.host_str(),
            "format": format!("{:?}", t.format).to_lowercase(),
            "signed": t.key.is_some(),
            "last_delivered": last(DeliveryFilter::Delivered).await?,
            "last_failure": last(DeliveryFilter::Failed).await?,
            "gone_since": gone_since,
        }));
    }
    Ok(no_store(HttpResponse::Ok()).json(json!({
        "targets": targets,
        "deliveries": recent.iter().map(delivery_json).collect::<Vec<_>>(),
        "pending": app.outbox.pending_deliveries().await?,
    })))
}
