//! `/v1/device/{provider}`: the device authorization grant for apps (API key).

use super::auth::Caller;
use super::body::JsonObject;
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::broker::DeviceStart;
use crate::clock::rfc3339;
use crate::store::DeviceFlowStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

/// `POST /v1/device/{provider}` `{"account"?}` -> 201 with the code to show the user.
pub async fn start(
    app: web::Data<AppState>,
    caller: Caller,
    provider: web::Path<String>,
    mut body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let account = body.opt_string("account", "invalid_account")?;
    body.finish()?;
    caller.require_provider(&app, &provider)?;
    caller.require_account(account.as_deref().unwrap_or(crate::broker::DEFAULT_ACCOUNT))?;
    let started = app
        .broker
        .start_device(
            &provider,
            account.as_deref(),
            &format!("key:{}", caller.0.id),
        )
        .await?;
    Ok(no_store(HttpResponse::Created()).json(started_json(&started)))
}

/// The 201 body of a started device flow (API and page alike).
pub(super) fn started_json(started: &DeviceStart) -> serde_json::Value {
    let mut out = json!({
        "id": started.id,
        "user_code": started.user_code,
        "verification_uri": started.verification_uri,
        "expires_at": rfc3339(started.expires_at_ms),
        "interval": started.interval_secs,
    });
    if let (Some(complete), Some(obj)) = (&started.verification_uri_complete, out.as_object_mut()) {
        obj.insert("verification_uri_complete".into(), complete.as_str().into());
    }
    out
}

/// `GET /v1/device/{provider}/{id}`: 202 pending, 200 connected, 403 denied, 410 expired,
/// 502 failed.
pub async fn status(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, id) = path.into_inner();
    caller.require_provider(&app, &provider)?;
    let status = app.broker.device_status(&provider, &id).await?;
    // Another tenant's flow is as unknown as one that never existed (its account is not
    // named, and the id's existence is not confirmed).
    if !caller.may_use_account(&status.account) {
        return Err(
            crate::broker::BrokerError::DeviceFlowNotFound(id.chars().take(64).collect()).into(),
        );
    }
    let code = match status.status {
        DeviceFlowStatus::Pending => StatusCode::ACCEPTED,
        DeviceFlowStatus::Connected => StatusCode::OK,
        DeviceFlowStatus::Denied => StatusCode::FORBIDDEN,
        DeviceFlowStatus::Expired => StatusCode::GONE,
        DeviceFlowStatus::Failed => StatusCode::BAD_GATEWAY,
    };
    Ok(no_store(HttpResponse::build(code)).json(status))
}
