//! Starting a connect flow from an app: `POST /v1/connect/{provider}` (API key). The
//! page starts flows through `/ui/api` (see ui.rs).

use super::auth::Caller;
use super::body::JsonObject;
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::clock::rfc3339;
use actix_web::{web, HttpResponse};
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
    caller.require_account(account.as_deref().unwrap_or(crate::broker::DEFAULT_ACCOUNT))?;
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
