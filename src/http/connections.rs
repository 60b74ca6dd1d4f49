//! `/v1/connections`: metadata, fresh access tokens, disconnect. API key required; a key
//! limited to namespaces reaches provider P only with a pattern matching `provider:P`.

use super::auth::Caller;
use super::body::JsonObject;
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::broker::{Disconnected, Imported, ImportedTokens};
use crate::clock::rfc3339;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use std::time::Duration;

/// Default for `min_ttl`: a token with less than a minute left is refreshed first.
const DEFAULT_MIN_TTL: u64 = 60;
const MAX_MIN_TTL: u64 = 24 * 3600;

fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `GET /v1/connections`
pub async fn list(app: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let visible: Vec<_> = app
        .broker
        .connections()
        .await?
        .into_iter()
        .filter(|c| caller.may_use_provider(&c.provider) && caller.may_use_account(&c.account))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "connections": visible })))
}

/// `GET /v1/connections/{provider}/{account}`
pub async fn show(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (provider, account) = path.into_inner();
    // No configured-provider check: a connection whose provider left the config is still
    // shown (status provider_missing) and can be deleted.
    caller.require_connection(&provider, &account)?;
    Ok(HttpResponse::Ok().json(app.broker.connection(&provider, &account).await?))
}

/// `GET /v1/connections/{provider}/{account}/token?min_ttl=SECONDS`
pub async fn token(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (provider, account) = path.into_inner();
    caller.require_provider(&app, &provider)?;
    caller.require_account(&account)?;
    let min_ttl = match query_param(&req, "min_ttl") {
        None => DEFAULT_MIN_TTL,
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= MAX_MIN_TTL)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_min_ttl",
                    format!("min_ttl is a whole number of seconds from 0 to {MAX_MIN_TTL}"),
                )
            })?,
    };
    let t = app
        .broker
        .access_token(&provider, &account, Duration::from_secs(min_ttl))
        .await?;
    Ok(no_store(HttpResponse::Ok()).json(json!({
        "access_token": t.access_token.as_str(),
        "token_type": t.token_type,
        "expires_at": t.expires_at_ms.map(rfc3339),
        "scope": t.scope,
    })))
}

/// `PUT /v1/connections/{provider}/{account}` `{"access_token", "refresh_token"?,
/// "expires_at"? | "expires_in"?, "scope"?, "token_type"?}`: 201 new, 200 replaced; the
/// answer is the connection's metadata, never a token.
pub async fn import(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (provider, account) = path.into_inner();
    caller.require_provider(&app, &provider)?;
    caller.require_account(&account)?;
    let tokens = ImportedTokens::from_json(body.into_map())?;
    let status = match app
        .broker
        .import_tokens(&provider, &account, tokens)
        .await?
    {
        Imported::Created => HttpResponse::Created(),
        Imported::Replaced => HttpResponse::Ok(),
    };
    let view = app.broker.connection(&provider, &account).await?;
    Ok(no_store(status).json(view))
}

/// `DELETE /v1/connections/{provider}/{account}[?force=true]`: revoke, then delete.
/// `204`, or `200` with what was not revoked (forced, or the provider left the config).
pub async fn delete(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (provider, account) = path.into_inner();
    caller.require_connection(&provider, &account)?;
    let outcome = app
        .broker
        .disconnect(&provider, &account, force_param(&req))
        .await?;
    Ok(disconnected_response(&provider, outcome))
}

/// `?force=true` (or `1`): delete even when the provider cannot be reached to revoke.
pub(super) fn force_param(req: &HttpRequest) -> bool {
    query_param(req, "force").is_some_and(|v| v == "true" || v == "1")
}

/// The answer to a disconnect, for the API and the page alike.
pub(super) fn disconnected_response(provider: &str, outcome: Disconnected) -> HttpResponse {
    match outcome {
        Disconnected::Revoked => HttpResponse::NoContent().finish(),
        other => HttpResponse::Ok().json(json!({
            "deleted": true,
            "revoked": false,
            "reason": match other {
                Disconnected::ProviderMissing => "provider_missing",
                _ => "revocation_failed",
            },
            "detail": other.describe(provider),
        })),
    }
}
