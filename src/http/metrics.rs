//! `GET /metrics`: Prometheus text. Open, or behind `OAUTHD_METRICS_TOKEN` as a bearer token.

use super::problem::ApiError;
use super::AppState;
use crate::metrics;
use crate::store::StoreError;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

pub async fn metrics(app: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    // Each scrape reads the store (the connections' counts, the outbox). Open, it has a
    // budget per address of its own, apart from the callback's and the sign-in's (which
    // the scraper's address may share), so that they cannot make scrapes fail. The token
    // is the operator's choice, so wrong ones have a budget of their own per client, past
    // which none of its tries is checked (`SecretTry::of_client`: charged to the client
    // alone, or anyone could keep the scraper out); a scrape with the right one is the
    // operator's and counts on no budget (past that client's wrong ones, though, no token
    // of its is checked until the minute is over).
    match &app.metrics_token {
        None => app.budget_hit(&app.metrics_limit, &req)?,
        Some(_) => super::refuse_cross_site(&req)?,
    }
    if let Some(token) = &app.metrics_token {
        let attempt = super::ratelimit::SecretTry::of_client(
            &app.failed_metrics_limit,
            &req,
            &app.trusted_proxies,
        );
        if let Some(secs) = attempt.blocked() {
            return Err(super::ratelimit::too_many(secs));
        }
        if let Err(refused) = check_token(token.expose(), &req) {
            attempt.refused();
            return Err(refused);
        }
    }
    // What /readyz checks, as a gauge: the scrape answers while the store does not, and
    // says so (a lock another process holds, a database deleted or moved, left the
    // gauges of a read-only or full disk at 0).
    let ready = app.store.ping().await;
    metrics::STORAGE_READY.set(i64::from(ready.is_ok()));
    // Connections by status, counted now by the store (SQLite reads no token for it),
    // also while writes are refused (a lock, a full disk: deliveries pile up then); as
    // the last scrape counted them when the store does not answer (it would hold the
    // scrape for each of its timeouts).
    let reads = ready.as_ref().err().is_none_or(StoreError::reads_answer);
    if let Some(Ok(counts)) = match reads {
        true => Some(app.broker.connection_counts().await),
        false => None,
    } {
        metrics::CONNECTIONS.reset();
        for (provider, status, count) in counts {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            metrics::CONNECTIONS
                .with_label_values(&[provider.as_str(), status])
                .add(count);
        }
    }
    if let Some(Ok(pending)) = match reads {
        true => Some(app.outbox.pending_deliveries().await),
        false => None,
    } {
        metrics::OUTBOX_PENDING.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(metrics::render()))
}

/// The metrics token as a bearer token, or 401.
fn check_token(token: &str, req: &HttpRequest) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::admin::secret_matches(token, presented) {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "invalid_metrics_token",
            "send the metrics token as Authorization: Bearer <token>",
        ))
    }
}
