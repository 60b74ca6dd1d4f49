//! `/v1/connections`: metadata, fresh access tokens, disconnect. API key required; a key
//! limited to namespaces reaches provider P only with a pattern matching `provider:P`.

use super::auth::Caller;
use super::body::JsonObject;
use super::openapi::{ImportTokens, ProblemDoc};
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::broker::{ConnectionView, Disconnected, Imported, ImportedTokens, Replacing};
use crate::clock::rfc3339;
use actix_web::{web, HttpRequest, HttpResponse};
use std::time::Duration;

/// Default for `min_ttl`: a token with less than a minute left is refreshed first.
const DEFAULT_MIN_TTL: u64 = 60;
const MAX_MIN_TTL: u64 = 24 * 3600;

fn query_param(req: &HttpRequest, name: &str) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `GET /v1/connections`' answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ConnectionList {
    connections: Vec<ConnectionView>,
}

/// A fresh access token.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct AccessToken<'a> {
    /// Valid for at least `min_ttl` seconds from now (when the provider says how long).
    #[schema(value_type = String)]
    access_token: &'a str,
    #[schema(value_type = String, example = "Bearer")]
    token_type: &'a str,
    /// `null` when the provider did not say.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[schema(value_type = Option<String>)]
    scope: Option<&'a str>,
}

/// A deleted connection whose grant was not revoked at the provider.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct NotRevoked {
    /// Always true: the connection is gone from oauthd.
    deleted: bool,
    /// Always false.
    revoked: bool,
    /// `provider_missing` (the provider left the config) or `revocation_failed` (forced).
    #[schema(example = "revocation_failed")]
    reason: &'static str,
    detail: String,
}

/// `{provider}` and `{account}` in a connection's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // described; the handlers read the path with `web::Path`
pub struct PathProviderAccount {
    /// A provider's name in the config.
    #[param(example = "spotify")]
    provider: String,
    /// Which of the provider's accounts (`default` unless connected under another name).
    #[param(example = "default")]
    account: String,
}

/// List connections
///
/// The ones the key may see: its provider and account limits filter the list.
#[utoipa::path(get, path = "/v1/connections", tag = "connections",
    responses((status = 200, description = "Every connection this key may use; never a token.", body = ConnectionList)))]
pub async fn list(app: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let visible: Vec<_> = app
        .broker
        .connections()
        .await?
        .into_iter()
        .filter(|c| caller.may_use_provider(&c.provider) && caller.may_use_account(&c.account))
        .collect();
    Ok(HttpResponse::Ok().json(ConnectionList {
        connections: visible,
    }))
}

/// Show a connection
///
/// Its metadata; never a token.
#[utoipa::path(get, path = "/v1/connections/{provider}/{account}", tag = "connections",
    params(PathProviderAccount),
    responses(
        (status = 200, description = "The connection.", body = ConnectionView),
        (status = 400, description = "A name no account can have (`invalid_account`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such connection (`connection_not_found`), or a provider name no provider can have (`unknown_provider`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
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

/// Get a fresh access token
///
/// `?min_ttl=SECONDS` (default 60): refreshed first when it has less left; concurrent
/// callers share one refresh.
#[utoipa::path(get, path = "/v1/connections/{provider}/{account}/token", tag = "connections",
    params(
        PathProviderAccount,
        ("min_ttl" = Option<u64>, Query, minimum = 0, maximum = 86400, description = "Seconds the token must still be valid for (default 60)."),
    ),
    responses(
        (status = 200, description = "A token valid for at least `min_ttl`.", body = AccessToken),
        (status = 400, description = "`min_ttl` is not 0 to 86400 (`invalid_min_ttl`), an unknown query parameter (`unknown_parameter`), or a name no account can have (`invalid_account`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such provider in the config (`unknown_provider`) or connection (`connection_not_found`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The grant is gone (`needs_reauth`): an app starts a new connect flow for the account; `reconnect_url` is the operator's page, behind its sign-in. Also for a connection the provider gave no refresh token whose token has less than `min_ttl` left (the detail says so; a smaller `min_ttl` still gets it until it expires).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The refresh's new ID token does not verify (`id_token_invalid`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The provider or storage is unavailable (`provider_unavailable`, `storage_unavailable`, `vault_error`): retry after `Retry-After`. A refusal other than `invalid_grant` (e.g. `invalid_client`) is retried with backoff too, and answers `provider_unavailable` with the provider's error in the detail.", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
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
    // Written once per token while it is cached; zeroed when the last copy is dropped, as
    // the token it carries is.
    let body = t
        .answer
        .get_or_write(|| {
            crate::secret::wiped_json(&AccessToken {
                access_token: t.access_token.as_str(),
                token_type: &t.token_type,
                expires_at: t.expires_at_ms.map(rfc3339),
                scope: t.scope.as_deref(),
            })
        })
        .map_err(|e| {
            ApiError::new(
                actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the answer could not be written: {e}"),
            )
        })?;
    Ok(no_store(HttpResponse::Ok())
        .content_type(actix_web::http::header::ContentType::json())
        .body(body))
}

/// Import tokens
///
/// `{"access_token", "refresh_token"?, "expires_at"? | "expires_in"?, "scope"?,
/// "token_type"?}`: 201 new, 200 replaced; sealed and kept alive as if oauthd had obtained
/// them. The answer is the connection's metadata, never a token.
#[utoipa::path(put, path = "/v1/connections/{provider}/{account}", tag = "connections",
    params(PathProviderAccount), request_body = ImportTokens,
    responses(
        (status = 201, description = "Imported: a new connection.", body = ConnectionView),
        (status = 200, description = "Imported: the connection's tokens were replaced.", body = ConnectionView),
        (status = 400, description = "The tokens are not what import takes (`invalid_tokens`), or the account name (`invalid_account`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such provider in the config (`unknown_provider`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many connect and device flow starts, imports and disconnects by this key in the last minute (`rate_limited`, `limits.connection_changes_per_minute`), with `Retry-After`; or, for an account it has no connection to, a key limited to accounts reaches `limits.max_connections_per_key` connections (`too_many_connections`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn import(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (provider, account) = path.into_inner();
    caller.require_provider(&app, &provider)?;
    caller.require_account(&account)?;
    app.connection_change_hit(&caller)?;
    let tokens = ImportedTokens::from_json(body.into_map())?;
    let _turn = app.connection_room(&caller, &provider, &account).await?;
    let status = match app
        .broker
        .import_tokens(&provider, &account, tokens, Replacing::Any)
        .await?
    {
        Imported::Created => HttpResponse::Created(),
        // `Kept` is not answered to a PUT, which replaces any.
        Imported::Replaced | Imported::Kept { .. } => HttpResponse::Ok(),
    };
    let view = app.broker.connection(&provider, &account).await?;
    Ok(no_store(status).json(view))
}

/// Disconnect
///
/// Revokes the grant at the provider, then deletes the connection: `204`, or `200` with
/// what was not revoked (`?force=true` when the provider cannot be reached, or the
/// provider left the config).
#[utoipa::path(delete, path = "/v1/connections/{provider}/{account}", tag = "connections",
    params(
        PathProviderAccount,
        ("force" = Option<bool>, Query, description = "Delete even when the provider cannot be reached to revoke."),
    ),
    responses(
        (status = 204, description = "Revoked and deleted."),
        (status = 400, description = "`force` is not `true` or `false` (`invalid_force`), an unknown query parameter (`unknown_parameter`), or a name no account can have (`invalid_account`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 200, description = "Deleted, not revoked.", body = NotRevoked),
        (status = 404, description = "No such connection (`connection_not_found`), or a provider name no provider can have (`unknown_provider`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many connect and device flow starts, imports and disconnects by this key in the last minute (`rate_limited`, `limits.connection_changes_per_minute`), with `Retry-After`.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The provider refused the revocation (`provider_rejected`): nothing deleted; `?force=true` deletes anyway.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "The provider cannot be reached to revoke, or another oauthd process sharing the store is refreshing the connection (`provider_unavailable`, with `Retry-After`): nothing deleted.", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (provider, account) = path.into_inner();
    caller.require_connection(&provider, &account)?;
    app.connection_change_hit(&caller)?;
    let outcome = app
        .broker
        .disconnect(&provider, &account, force_param(&req)?)
        .await?;
    Ok(disconnected_response(&provider, outcome))
}

/// `?force=true` (or `1`): delete even when the provider cannot be reached to revoke;
/// `false`, `0` or none: do not. Anything else is refused, not read as `false`.
pub(super) fn force_param(req: &HttpRequest) -> Result<bool, ApiError> {
    match query_param(req, "force").as_deref() {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "invalid_force",
            "force is true or false (or 1 or 0)",
        )),
    }
}

/// The answer to a disconnect, for the API and the page alike.
pub(super) fn disconnected_response(provider: &str, outcome: Disconnected) -> HttpResponse {
    match outcome {
        // "Revokes at the provider where it can": 204 also where it cannot.
        Disconnected::Revoked | Disconnected::NotOffered => HttpResponse::NoContent().finish(),
        other => HttpResponse::Ok().json(NotRevoked {
            deleted: true,
            revoked: false,
            reason: match other {
                Disconnected::ProviderMissing => "provider_missing",
                _ => "revocation_failed",
            },
            detail: other.describe(provider),
        }),
    }
}
