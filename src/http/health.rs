//! Liveness and readiness, open without auth.

use super::problem::ApiError;
use super::AppState;
use actix_web::{web, HttpResponse};
use serde_json::json;

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: the storage answers.
pub async fn readyz(app: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    app.store.ping().await?;
    Ok(HttpResponse::Ok().json(json!({"status": "ready"})))
}
