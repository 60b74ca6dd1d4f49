//! Starting a connect flow from an app: `POST /v1/connect/{provider}` (API key). The
//! page starts flows through `/ui/api` (see ui.rs).

use super::auth::Caller;
use super::body::JsonObject;
use super::openapi::{ConnectRequest, ProblemDoc};
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::broker::FlowStarter;
use crate::clock::rfc3339;
use actix_web::{web, HttpResponse};

/// A started connect flow.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ConnectStarted<'a> {
    /// Send the person here, in the browser they will finish in: oauthd's page that names
    /// this API key, the provider and the account, and leads on to the provider's consent
    /// page. Only the browser that continued from it can finish the flow.
    #[schema(value_type = String)]
    authorize_url: &'a str,
    /// The flow must finish by then.
    #[schema(format = DateTime)]
    expires_at: String,
    /// Where the provider sends the person back: register it at the provider as it is.
    #[schema(value_type = String)]
    redirect_uri: &'a str,
}

/// Start connecting an account
///
/// `{"account"?, "return_to"?}` -> 201 with the address to send the person to
/// (authorization code + PKCE): oauthd's page that asks them to confirm, then the
/// provider's. The flow finishes only in the browser that confirmed it.
#[utoipa::path(post, path = "/v1/connect/{provider}", tag = "connect",
    params(("provider" = String, Path, description = "A provider's name in the config.")),
    request_body = Option<ConnectRequest>,
    responses(
        (status = 201, description = "Started.", body = ConnectStarted),
        (status = 400, description = "A bad account name (`invalid_account`), a `return_to` the config does not allow (`return_to_not_allowed`), or a provider with a paste-back `redirect_uri`, whose flows only the operator can finish (`paste_back_provider`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such provider in the config (`unknown_provider`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many connect and device flow starts, imports and disconnects by this key in the last minute (`rate_limited`, `limits.connection_changes_per_minute`), with `Retry-After`; or, for an account it has no connection to, a key limited to accounts reaches `limits.max_connections_per_key` connections (`too_many_connections`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn start_api(
    app: web::Data<AppState>,
    caller: Caller,
    provider: web::Path<String>,
    mut body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let account = body.opt_string("account", "invalid_account")?;
    let return_to = body.opt_string("return_to", "return_to_not_allowed")?;
    body.finish()?;
    app.may_start_flow(&caller, &provider, account.as_deref())
        .await?;
    let started = app
        .broker
        .start_connect(
            &provider,
            account.as_deref(),
            return_to.as_deref(),
            FlowStarter::App {
                key_id: &caller.0.id,
                key_name: &caller.0.name,
            },
        )
        .await?;
    let redirect_uri = app.broker.redirect_uri(&provider);
    Ok(no_store(HttpResponse::Created()).json(ConnectStarted {
        authorize_url: started.authorize_url.as_str(),
        expires_at: rfc3339(started.expires_at_ms),
        redirect_uri: redirect_uri.as_str(),
    }))
}
