//! `GET /metrics`: Prometheus text. Open, or behind `OAUTHD_METRICS_TOKEN` as a bearer token.

use super::problem::ApiError;
use super::AppState;
use crate::broker::ViewStatus;
use crate::metrics;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

pub async fn metrics(app: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &app.metrics_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::admin::secret_matches(token.expose(), presented) {
            return Err(ApiError::unauthorized(
                "invalid_metrics_token",
                "send the metrics token as Authorization: Bearer <token>",
            ));
        }
    }
    // Connections by status, counted now.
    metrics::CONNECTIONS.reset();
    for c in app.broker.connections().await? {
        let status = if c.status == ViewStatus::Active && c.failures > 0 {
            "refresh_failing"
        } else {
            c.status.as_str()
        };
        metrics::CONNECTIONS
            .with_label_values(&[c.provider.as_str(), status])
            .inc();
    }
    let pending = app.outbox.pending_deliveries().await?;
    metrics::OUTBOX_PENDING.set(i64::try_from(pending).unwrap_or(i64::MAX));
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(metrics::render()))
}
