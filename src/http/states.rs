//! `/v1/states` and `/v1/namespaces/…`: issue, consume, verify, try a code, revoke, list
//! by subject. The state travels in bodies only, never in a URL, so access logs and
//! proxies never see it.

use super::auth::Caller;
use super::body::JsonObject;
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::clock::rfc3339;
use crate::config::MAX_ATTEMPTS_CEILING;
use crate::namespace::Namespace;
use crate::secret::{StateId, StateValue};
use crate::states::{NewState, StateView};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

/// Longest `subject`, in characters.
pub const MAX_SUBJECT_CHARS: usize = 256;
/// Longest `secret` (a code a person types), in characters.
pub const MAX_SECRET_CHARS: usize = 128;

fn checked_namespace(text: &str) -> Result<Namespace, ApiError> {
    let ns = Namespace::parse(text)
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

fn namespace(body: &mut JsonObject) -> Result<Namespace, ApiError> {
    checked_namespace(&body.string("namespace", "invalid_namespace")?)
}

/// Text a person or an app chose: `1..=max` characters, no control characters.
fn short_text(
    value: Option<String>,
    name: &str,
    code: &'static str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        Some(t) if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) => {
            Err(ApiError::bad_request(
                code,
                format!("{name} must be 1 to {max} characters, without control characters"),
            ))
        }
        other => Ok(other),
    }
}

fn subject(text: Option<String>) -> Result<Option<String>, ApiError> {
    short_text(text, "subject", "invalid_subject", MAX_SUBJECT_CHARS)
}

/// A create request: the namespace and everything optional.
pub(super) fn create_request(mut body: JsonObject) -> Result<(Namespace, NewState), ApiError> {
    let ns = namespace(&mut body)?;
    let ttl_seconds = body.opt_positive_int("ttl_seconds", "invalid_ttl")?;
    let data = body.opt_any("data");
    let subject = subject(body.opt_string("subject", "invalid_subject")?)?;
    let secret = short_text(
        body.opt_string("secret", "invalid_secret")?,
        "secret",
        "invalid_secret",
        MAX_SECRET_CHARS,
    )?;
    let max_attempts = body.opt_positive_int("max_attempts", "invalid_max_attempts")?;
    let replace = body
        .opt_bool("replace", "invalid_replace")?
        .unwrap_or(false);
    let sliding = body
        .opt_bool("sliding", "invalid_sliding")?
        .unwrap_or(false);
    let lifetime = body.opt_positive_int("max_lifetime_seconds", "invalid_max_lifetime")?;
    body.finish()?;
    let max_attempts = match (max_attempts, &secret) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "invalid_max_attempts",
                "max_attempts counts wrong secrets: send it with a secret",
            ))
        }
        (Some(n), Some(_)) => Some(
            u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_ATTEMPTS_CEILING)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_max_attempts",
                        format!("max_attempts must be between 1 and {MAX_ATTEMPTS_CEILING}"),
                    )
                })?,
        ),
    };
    if lifetime.is_some() && !sliding {
        return Err(ApiError::bad_request(
            "invalid_max_lifetime",
            "max_lifetime_seconds bounds a sliding state: send it with \"sliding\": true",
        ));
    }
    Ok((
        ns,
        NewState {
            ttl_seconds,
            data,
            subject,
            secret: secret.map(|s| (s, max_attempts)),
            replace,
            sliding: sliding.then_some(lifetime),
        },
    ))
}

/// The state and namespace every keyed operation starts with.
fn keyed(body: &mut JsonObject) -> Result<(StateValue, Namespace), ApiError> {
    let state = body.string("state", "invalid_state")?;
    let ns = namespace(body)?;
    let state = StateValue::parse(&state).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_state",
            "state must be the 43-character value oauthd issued",
        )
    })?;
    Ok((state, ns))
}

pub(super) fn consume_request(mut body: JsonObject) -> Result<(StateValue, Namespace), ApiError> {
    let keyed = keyed(&mut body)?;
    body.finish()?;
    Ok(keyed)
}

/// A keyed request: checks the body, then that the key may use the namespace.
fn keyed_request<T>(
    caller: &Caller,
    mut body: JsonObject,
    more: impl FnOnce(&mut JsonObject) -> Result<T, ApiError>,
) -> Result<(StateValue, Namespace, T), ApiError> {
    let (state, ns) = keyed(&mut body)?;
    let extra = more(&mut body)?;
    body.finish()?;
    caller.require_namespace(&ns)?;
    Ok((state, ns, extra))
}

/// A state as consume, verify and attempt answer it (serialized straight from the view:
/// verify is a hot path).
#[derive(serde::Serialize)]
struct ViewBody<'a> {
    id: String,
    namespace: &'a str,
    subject: Option<&'a str>,
    data: &'a Option<Value>,
    created_at: String,
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts_left: Option<u32>,
}

fn view(v: &StateView) -> ViewBody<'_> {
    ViewBody {
        id: v.id.to_string(),
        namespace: &v.namespace,
        subject: v.subject.as_deref(),
        data: &v.data,
        created_at: rfc3339(v.created_at_ms),
        expires_at: rfc3339(v.expires_at_ms),
        attempts_left: v.attempts_left,
    }
}

fn ok_view(v: &StateView) -> HttpResponse {
    no_store(HttpResponse::Ok()).json(view(v))
}

/// `POST /v1/states` `{"namespace", "ttl_seconds"?, "data"?, "subject"?, "secret"?,
/// "max_attempts"?, "replace"?, "sliding"?, "max_lifetime_seconds"?}` -> 201.
pub async fn create(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (ns, request) = create_request(body)?;
    caller.require_namespace(&ns)?;
    let subject = request.subject.clone();
    let issued = app.states.create(ns, request).await?;
    Ok(no_store(HttpResponse::Created()).json(json!({
        "state": issued.state.expose(),
        "id": issued.id().to_string(),
        "namespace": issued.namespace.as_str(),
        "subject": subject,
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
    Ok(ok_view(&app.states.consume(&state, &ns).await?))
}

/// `POST /v1/states/verify` `{"state", "namespace", "touch"?}` -> 200, the state stays.
pub async fn verify(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (state, ns, touch) =
        keyed_request(&caller, body, |b| b.opt_bool("touch", "invalid_touch"))?;
    let v = app
        .states
        .verify(&state, &ns, touch.unwrap_or(false))
        .await?;
    Ok(ok_view(&v))
}

/// `POST /v1/states/attempt` `{"state", "namespace", "secret"}` -> 200 and consumed, or
/// 403 `wrong_secret` with `attempts_left`.
pub async fn attempt(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (state, ns, secret) =
        keyed_request(&caller, body, |b| b.string("secret", "invalid_secret"))?;
    Ok(ok_view(&app.states.attempt(&state, &ns, &secret).await?))
}

/// `POST /v1/states/revoke` `{"state", "namespace"}` -> 204, or 404.
pub async fn revoke(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (state, ns, ()) = keyed_request(&caller, body, |_| Ok(()))?;
    app.states.revoke(&state, &ns).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The path segment at `index` (0 = "v1"), decoded exactly once: the router leaves some
/// escapes (`%2F`) in place, and a subject may hold any character.
fn segment(req: &HttpRequest, index: usize) -> Result<String, ApiError> {
    let raw = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .nth(index);
    raw.and_then(|s| percent_encoding::percent_decode_str(s).decode_utf8().ok())
        .map(|s| s.into_owned())
        .ok_or_else(|| ApiError::bad_request("invalid_path", "a path segment is not UTF-8"))
}

/// `/v1/namespaces/{namespace}/…`: the namespace, checked against the key.
fn path_namespace(req: &HttpRequest, caller: &Caller) -> Result<Namespace, ApiError> {
    let ns = checked_namespace(&segment(req, 2)?)?;
    caller.require_namespace(&ns)?;
    Ok(ns)
}

/// `/v1/namespaces/{namespace}/subjects/{subject}/states`: namespace and subject.
fn subject_path(req: &HttpRequest, caller: &Caller) -> Result<(Namespace, String), ApiError> {
    let ns = path_namespace(req, caller)?;
    let subject = subject(Some(segment(req, 4)?))?.unwrap_or_default();
    Ok((ns, subject))
}

/// `GET /v1/namespaces/{namespace}/subjects/{subject}/states` -> the live states (never
/// their values).
pub async fn list_subject(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (ns, subject) = subject_path(&req, &caller)?;
    let states: Vec<Value> = app
        .states
        .subject_states(&ns, &subject)
        .await?
        .iter()
        .map(|v| {
            // The path already says namespace and subject.
            let mut out = json!(view(v));
            if let Some(map) = out.as_object_mut() {
                map.remove("namespace");
                map.remove("subject");
            }
            out
        })
        .collect();
    Ok(no_store(HttpResponse::Ok()).json(json!({ "states": states })))
}

/// `DELETE /v1/namespaces/{namespace}/subjects/{subject}/states` -> `{"revoked": N}`.
pub async fn revoke_subject(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (ns, subject) = subject_path(&req, &caller)?;
    let revoked = app.states.revoke_subject(&ns, &subject).await?;
    Ok(HttpResponse::Ok().json(json!({ "revoked": revoked })))
}

/// `DELETE /v1/namespaces/{namespace}/states/{id}` -> 204, or 404.
pub async fn revoke_id(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let ns = path_namespace(&req, &caller)?;
    let id = StateId::parse(&segment(&req, 4)?).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_id",
            "id must be a state's id as create answered it",
        )
    })?;
    app.states.revoke_id(&ns, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
