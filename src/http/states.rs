//! `/v1/states`: issue and consume states. The state travels in bodies only, never in a
//! URL, so access logs and proxies never see it.

use super::auth::Caller;
use super::body::JsonObject;
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::clock::rfc3339;
use crate::namespace::Namespace;
use crate::secret::StateValue;
use actix_web::{web, HttpResponse};
use serde_json::json;

fn namespace(body: &mut JsonObject) -> Result<Namespace, ApiError> {
    let text = body.string("namespace", "invalid_namespace")?;
    let ns = Namespace::parse(&text)
        .map_err(|e| ApiError::bad_request("invalid_namespace", e.to_string()))?;
    if ns.is_reserved() {
        return Err(ApiError::bad_request(
            "reserved_namespace",
            format!(
                "namespaces starting with {} are oauthd's own; pick another",
                crate::namespace::RESERVED_PREFIXES.join(" or ")
            ),
        ));
    }
    Ok(ns)
}

/// A create request's fields: namespace, TTL, data.
type CreateRequest = (Namespace, Option<u64>, Option<serde_json::Value>);

pub(super) fn create_request(mut body: JsonObject) -> Result<CreateRequest, ApiError> {
    let ns = namespace(&mut body)?;
    let ttl = body.opt_positive_int("ttl_seconds", "invalid_ttl")?;
    let data = body.opt_any("data");
    body.finish()?;
    Ok((ns, ttl, data))
}

pub(super) fn consume_request(mut body: JsonObject) -> Result<(StateValue, Namespace), ApiError> {
    let state = body.string("state", "invalid_state")?;
    let ns = namespace(&mut body)?;
    body.finish()?;
    let state = StateValue::parse(&state).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_state",
            "state must be the 43-character value oauthd issued",
        )
    })?;
    Ok((state, ns))
}

/// `POST /v1/states` `{"namespace", "ttl_seconds"?, "data"?}` -> 201.
pub async fn create(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (ns, ttl, data) = create_request(body)?;
    caller.require_namespace(&ns)?;
    let issued = app.states.issue(ns, ttl, data).await?;
    Ok(no_store(HttpResponse::Created()).json(json!({
        "state": issued.state.expose(),
        "namespace": issued.namespace.as_str(),
        "created_at": rfc3339(issued.created_at_ms),
        "expires_at": rfc3339(issued.expires_at_ms),
    })))
}

/// `POST /v1/states/consume` `{"state", "namespace"}` -> 200 once, then 404.
pub async fn consume(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (state, ns) = consume_request(body)?;
    caller.require_namespace(&ns)?;
    let consumed = app.states.consume(&state, &ns).await?;
    Ok(no_store(HttpResponse::Ok()).json(json!({
        "namespace": consumed.namespace,
        "data": consumed.data,
        "created_at": rfc3339(consumed.created_at_ms),
        "expires_at": rfc3339(consumed.expires_at_ms),
    })))
}
