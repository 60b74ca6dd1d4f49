//! Starting a connect flow: `POST /v1/connect/{provider}` for apps (API key),
//! `GET /connect/{provider}?account=NAME` for a signed-in admin's browser.

use super::admin::AdminSession;
use super::auth::Caller;
use super::body::JsonObject;
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::clock::rfc3339;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

/// `POST /v1/connect/{provider}` `{"account"?, "return_to"?}` -> 201.
pub async fn start_api(
    app: web::Data<AppState>,
    caller: Caller,
    provider: web::Path<String>,
    mut body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let account = body.opt_string("account", "invalid_account")?;
    let return_to = body.opt_string("return_to", "return_to_not_allowed")?;
    body.finish()?;
    caller.require_provider(&app, &provider)?;
    let started = app
        .broker
        .start_connect(&provider, account.as_deref(), return_to.as_deref())
        .await?;
    Ok(no_store(HttpResponse::Created()).json(json!({
        "authorize_url": started.authorize_url.as_str(),
        "expires_at": rfc3339(started.expires_at_ms),
        "redirect_uri": app.broker.redirect_uri(&provider).as_str(),
    })))
}

/// `GET /connect/{provider}?account=NAME` -> 302 to the provider.
pub async fn start_browser(
    app: web::Data<AppState>,
    _admin: AdminSession,
    provider: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let started = app
        .broker
        .start_connect(&provider, get("account"), get("return_to"))
        .await?;
    Ok(no_store(HttpResponse::Found())
        .insert_header((header::LOCATION, started.authorize_url.as_str()))
        .finish())
}
