//! `/v1/device/{provider}`: the device authorization grant for apps (API key).

use super::auth::Caller;
use super::body::JsonObject;
use super::openapi::{DeviceRequest, ProblemDoc};
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::broker::{DeviceStart, DeviceStatus};
use crate::clock::rfc3339;
use crate::store::DeviceFlowStatus;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

/// Start a device flow
///
/// `{"account"?}` -> 201 with the code to show the person, who enters it at
/// `verification_uri` on another device; oauthd polls the provider meanwhile.
#[utoipa::path(post, path = "/v1/device/{provider}", tag = "connect",
    params(("provider" = String, Path, description = "A provider's name in the config.")),
    request_body = Option<DeviceRequest>,
    responses(
        (status = 201, description = "Started.", body = DeviceStarted),
        (status = 400, description = "The provider has no device flow (`device_flow_unsupported`), or a bad account name (`invalid_account`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The operator keeps this provider's device flow to the page and the CLI (`device_flow_not_allowed`, `device_flow_for_apps = false`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such provider in the config (`unknown_provider`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many device flows pending for this key (`too_many_device_flows`), or too many connect and device flow starts, imports and disconnects by this key in the last minute (`rate_limited`, `limits.connection_changes_per_minute`); both with `Retry-After`. Or, for an account it has no connection to, a key limited to accounts reaches `limits.max_connections_per_key` connections (`too_many_connections`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused to start one (`provider_rejected`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn start(
    app: web::Data<AppState>,
    caller: Caller,
    provider: web::Path<String>,
    mut body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let account = body.opt_string("account", "invalid_account")?;
    body.finish()?;
    app.may_start_flow(&caller, &provider, account.as_deref())
        .await?;
    let started = app
        .broker
        .start_device(
            &provider,
            account.as_deref(),
            &format!("key:{}", caller.0.id),
        )
        .await?;
    Ok(no_store(HttpResponse::Created()).json(started_body(&started)))
}

/// A started device flow (API and page alike).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DeviceStarted<'a> {
    /// Polls the flow: `GET /v1/device/{provider}/{id}`.
    #[schema(value_type = String)]
    id: &'a str,
    /// What the person enters.
    #[schema(value_type = String, example = "WDJB-MJHT")]
    user_code: &'a str,
    /// Where the person enters it.
    #[schema(value_type = String)]
    verification_uri: &'a str,
    /// The same with the code filled in, when the provider offers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    verification_uri_complete: Option<&'a str>,
    #[schema(format = DateTime)]
    expires_at: String,
    /// Seconds between polls that the provider asks for.
    interval: u64,
}

pub(super) fn started_body(started: &DeviceStart) -> DeviceStarted<'_> {
    DeviceStarted {
        id: &started.id,
        user_code: &started.user_code,
        verification_uri: &started.verification_uri,
        verification_uri_complete: started.verification_uri_complete.as_deref(),
        expires_at: rfc3339(started.expires_at_ms),
        interval: started.interval_secs,
    }
}

/// A device flow's status
///
/// 202 pending, 200 connected, 403 denied, 410 expired, 502 failed: the status code and
/// `status` say the same.
#[utoipa::path(get, path = "/v1/device/{provider}/{id}", tag = "connect",
    params(
        ("provider" = String, Path, description = "A provider's name in the config."),
        ("id" = String, Path, description = "The id the start answered."),
    ),
    responses(
        (status = 200, description = "Connected (`connection`; without it, and with a `detail` saying so, once that connection was deleted).", body = DeviceStatus),
        (status = 202, description = "Pending: the person has not finished.", body = DeviceStatus),
        (status = 403, description = "The person declined.", body = DeviceStatus),
        (status = 404, description = "No such flow (`device_flow_not_found`) or provider (`unknown_provider`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "Expired before the person finished.", body = DeviceStatus),
        (status = 502, description = "The flow failed: `error` says why as a stable code, `detail` in words.", body = DeviceStatus),
    ))]
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
