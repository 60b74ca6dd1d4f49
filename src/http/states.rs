//! `/v1/states` and `/v1/namespaces/…`: issue, consume, verify, try a code, revoke, list
//! by subject. The state travels in bodies only, never in a URL, so access logs and
//! proxies never see it.

use super::auth::Caller;
use super::body::JsonObject;
use super::openapi::{
    AttemptState, CreateState, NamespaceName, ProblemDoc, StateIdText, StateKey, SubjectText,
    VerifyState,
};
use super::problem::ApiError;
use super::{no_store, AppState};
use crate::clock::rfc3339;
use crate::config::MAX_ATTEMPTS_CEILING;
use crate::namespace::Namespace;
use crate::secret::{StateId, StateValue};
use crate::states::{ListingCursor, NewState, StateView};
use crate::store::SubjectPage;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::value::RawValue;

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

/// A subject, in a body or a path. `.` and `..` could be stored, but not listed or
/// revoked: URL parsers (fetch, browsers, most HTTP libraries) resolve them away in
/// `/subjects/{subject}/states`, escaped or not; refused in a path too, where a client
/// that sent one escaped got an empty listing of a subject no state can have.
fn subject(text: Option<String>) -> Result<Option<String>, ApiError> {
    let subject = short_text(text, "subject", "invalid_subject", MAX_SUBJECT_CHARS)?;
    if let Some(dots @ ("." | "..")) = subject.as_deref() {
        return Err(ApiError::bad_request(
            "invalid_subject",
            format!("subject {dots:?} cannot be named in a URL path (HTTP clients resolve it away), so its states could not be listed or revoked: use another"),
        ));
    }
    Ok(subject)
}

/// A state's secret (a 2FA code, a PIN), as set on create and tried by attempt: a
/// secret out of range is refused on both, never counted as a wrong try.
fn secret(text: Option<String>) -> Result<Option<String>, ApiError> {
    short_text(text, "secret", "invalid_secret", MAX_SECRET_CHARS)
}

/// A create request: the namespace and everything optional.
pub(super) fn create_request(mut body: JsonObject) -> Result<(Namespace, NewState), ApiError> {
    let ns = namespace(&mut body)?;
    let ttl_seconds = body.opt_positive_int("ttl_seconds", "invalid_ttl")?;
    let data = body.opt_verbatim("data");
    let subject = subject(body.opt_string("subject", "invalid_subject")?)?;
    let secret = secret(body.opt_string("secret", "invalid_secret")?)?;
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
/// verify is a hot path). Never the state's value.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StateInfo<'a> {
    /// Not secret: lists and revokes, never consumes.
    #[schema(format = Uuid)]
    id: String,
    #[schema(value_type = String)]
    namespace: &'a str,
    #[schema(value_type = Option<String>)]
    subject: Option<&'a str>,
    /// What create was given, as it was given (`null` when nothing).
    #[schema(value_type = Value)]
    data: &'a Option<Box<RawValue>>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
    /// States created with a `secret`: wrong codes still allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts_left: Option<u32>,
}

fn view(v: &StateView) -> StateInfo<'_> {
    StateInfo {
        id: v.id.to_string(),
        namespace: &v.namespace,
        subject: v.subject.as_deref(),
        data: &v.data,
        created_at: rfc3339(v.created_at_ms),
        expires_at: rfc3339(v.expires_at_ms),
        attempts_left: v.attempts_left,
    }
}

/// A state's `200` answer; a view held by the verify cache renders it once.
fn ok_view(v: &StateView) -> HttpResponse {
    match v.answer(|v| serde_json::to_vec(&view(v))) {
        Ok(body) => no_store(HttpResponse::Ok())
            .content_type(mime::APPLICATION_JSON)
            .body(body),
        // Answered as actix answers a body it cannot serialize.
        Err(_) => no_store(HttpResponse::Ok()).json(view(v)),
    }
}

/// `POST /v1/states`' answer: the state value, given out this once.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct StateCreated<'a> {
    /// The secret to hand on (in an OAuth `state` parameter, a link, a cookie).
    #[schema(value_type = String, min_length = 43, max_length = 43)]
    state: &'a str,
    #[schema(format = Uuid)]
    id: String,
    #[schema(value_type = String)]
    namespace: &'a str,
    #[schema(value_type = Option<String>)]
    subject: Option<&'a str>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
}

/// A subject's live state (never its value).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SubjectState<'a> {
    #[schema(format = Uuid)]
    id: String,
    #[schema(value_type = Value)]
    data: &'a Option<Box<RawValue>>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts_left: Option<u32>,
}

/// `GET /v1/namespaces/{namespace}/subjects/{subject}/states`' answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SubjectStates<'a> {
    states: Vec<SubjectState<'a>>,
    /// Present when more states follow: pass it as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Most states a page of a subject's listing holds (`limit`'s ceiling; the default page
/// holds as many, and at most 1 MiB of stored data beyond its first state, which bounds
/// what one listing holds in memory however large the states' data).
const LIST_LIMIT: usize = 1000;

/// `?limit=` and `?after=` of a subject's listing.
fn listing_page(req: &HttpRequest) -> Result<SubjectPage, ApiError> {
    let mut limit = LIST_LIMIT;
    let mut after = None;
    // Each is given once at most: twice is refused before (`limits::query_refusal`).
    for (name, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match name.as_ref() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            format!("limit is a number of states from 1 to {LIST_LIMIT}"),
                        )
                    })?;
            }
            "after" => {
                after = Some(ListingCursor::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_after",
                        "after is the `next` of an earlier page, as it was given",
                    )
                })?);
            }
            _ => {}
        }
    }
    Ok(SubjectPage {
        after: after.map(ListingCursor::position),
        max_rows: limit,
        ..SubjectPage::default()
    })
}

/// How many states a "sign out everywhere" revoked.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Revoked {
    revoked: u64,
}

/// Issue a state
///
/// `{"namespace", "ttl_seconds"?, "data"?, "subject"?, "secret"?, "max_attempts"?,
/// "replace"?, "sliding"?, "max_lifetime_seconds"?}` -> 201 with the state's value.
#[utoipa::path(post, path = "/v1/states", tag = "states", request_body = CreateState,
    responses(
        (status = 201, description = "Issued: the value is given out this once.", body = StateCreated),
        (status = 400, description = "A member out of range: `invalid_namespace`, `reserved_namespace`, `invalid_ttl`, `invalid_subject`, `invalid_secret`, `invalid_max_attempts` (also past the namespace's `max_attempts_ceiling`), `invalid_replace`, `invalid_sliding`, `invalid_max_lifetime`, `sliding_not_allowed` (the namespace's policy), `subject_required` (`replace` without a subject); or the body itself: `malformed_json`, `bad_body`, `unknown_field`.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "`data` is larger than `states.max_data_bytes` (`data_too_large`), or the body too large (`body_too_large`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "The namespace holds its maximum of live states (`too_many_states`), the subject (`too_many_subject_states`), all namespaces together (`store_full`), or the states this API key created (`too_many_key_states`, `states.max_states_per_key`). For the subject, `Retry-After` is when its first live state expires.", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn create(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (ns, request) = create_request(body)?;
    caller.require_namespace(&ns)?;
    let subject = request.subject.clone();
    let issued = app.states.create(ns, request, &caller.0).await?;
    Ok(no_store(HttpResponse::Created()).json(StateCreated {
        state: issued.state.expose(),
        id: issued.id().to_string(),
        namespace: issued.namespace.as_str(),
        subject: subject.as_deref(),
        created_at: rfc3339(issued.created_at_ms),
        expires_at: rfc3339(issued.expires_at_ms),
    }))
}

/// Consume a state
///
/// `{"state", "namespace"}` -> 200 once, then 404.
#[utoipa::path(post, path = "/v1/states/consume", tag = "states", request_body = StateKey,
    responses(
        (status = 200, description = "Consumed: this state is gone.", body = StateInfo),
        (status = 400, description = "A member out of range: `invalid_state`, `invalid_namespace`, `reserved_namespace`; or the body itself: `malformed_json`, `bad_body`, `unknown_field`.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Created with a `secret`: only `/v1/states/attempt` consumes it (`secret_required`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such state in this namespace: never issued, consumed, revoked or swept (`state_not_found`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "Expired, within the grace window after its expiry (`state_expired`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn consume(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (state, ns) = consume_request(body)?;
    caller.require_namespace(&ns)?;
    Ok(ok_view(&app.states.consume(&state, &ns).await?))
}

/// Verify a state without consuming it
///
/// `{"state", "namespace", "touch"?}` -> 200, the state stays.
#[utoipa::path(post, path = "/v1/states/verify", tag = "states", request_body = VerifyState,
    responses(
        (status = 200, description = "Live; with `touch` on a sliding state, its new expiry.", body = StateInfo),
        (status = 400, description = "A member out of range: `invalid_state`, `invalid_namespace`, `reserved_namespace`, `invalid_touch`; or the body itself: `malformed_json`, `bad_body`, `unknown_field`.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such state in this namespace: never issued, consumed, revoked or swept (`state_not_found`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "Expired, within the grace window after its expiry (`state_expired`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
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

/// Try a state's secret
///
/// `{"state", "namespace", "secret"}` -> 200 and consumed, or 403 `wrong_secret` with
/// `attempts_left`; the try that uses up the last deletes the state.
#[utoipa::path(post, path = "/v1/states/attempt", tag = "states", request_body = AttemptState,
    responses(
        (status = 200, description = "The secret matched: the state is consumed.", body = StateInfo),
        (status = 400, description = "A member out of range: `invalid_state`, `invalid_namespace`, `reserved_namespace`, `invalid_secret`; or the body itself: `malformed_json`, `bad_body`, `unknown_field`.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Wrong secret (`wrong_secret`, with `attempts_left`; at 0 the state is gone).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The state was created without a secret (`no_secret`): consume it.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such state in this namespace: never issued, consumed, revoked or swept (`state_not_found`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 410, description = "Expired, within the grace window after its expiry (`state_expired`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn attempt(
    app: web::Data<AppState>,
    caller: Caller,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    let (state, ns, secret) = keyed_request(&caller, body, |b| {
        let tried = secret(Some(b.string("secret", "invalid_secret")?))?;
        Ok(tried.unwrap_or_default())
    })?;
    Ok(ok_view(&app.states.attempt(&state, &ns, &secret).await?))
}

/// Revoke a state
///
/// `{"state", "namespace"}` -> 204, or 404.
#[utoipa::path(post, path = "/v1/states/revoke", tag = "states", request_body = StateKey,
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, description = "A member out of range: `invalid_state`, `invalid_namespace`, `reserved_namespace`; or the body itself: `malformed_json`, `bad_body`, `unknown_field`.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such state in this namespace: never issued, consumed, revoked or swept (`state_not_found`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
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

/// List a subject's live states
///
/// Never their values: ids to revoke one ("sign out that device"). In pages: at most
/// `limit` states (default and most 1000) and 1 MiB of stored data beyond the first; when
/// more follow, `next` says where, to pass as `after`.
#[utoipa::path(get, path = "/v1/namespaces/{namespace}/subjects/{subject}/states", tag = "states",
    params(
        ("namespace" = NamespaceName, Path, description = "The states' namespace."),
        ("subject" = SubjectText, Path, description = "The user or tenant (percent-encoded)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Most states in the page (default 1000)."),
        ("after" = Option<String>, Query, description = "The `next` of the page before, as it was given."),
    ),
    responses(
        (status = 200, description = "The live states, oldest first; `next` when more follow.", body = SubjectStates),
        (status = 400, description = "A path segment out of range: `invalid_namespace`, `reserved_namespace`, `invalid_subject`, `invalid_path` (not UTF-8); `limit` not 1 to 1000 (`invalid_limit`), `after` not a `next` (`invalid_after`), or an unknown query parameter (`unknown_parameter`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn list_subject(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (ns, subject) = subject_path(&req, &caller)?;
    let page = listing_page(&req)?;
    let live = app.states.subject_states(&ns, &subject, page).await?;
    // The path already says namespace and subject.
    let states = live
        .states
        .iter()
        .map(|v| SubjectState {
            id: v.id.to_string(),
            data: &v.data,
            created_at: rfc3339(v.created_at_ms),
            expires_at: rfc3339(v.expires_at_ms),
            attempts_left: v.attempts_left,
        })
        .collect();
    let next = live.next.map(|cursor| cursor.to_string());
    Ok(no_store(HttpResponse::Ok()).json(SubjectStates { states, next }))
}

/// Revoke all of a subject's states
///
/// "Sign out everywhere": `{"revoked": N}`.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/subjects/{subject}/states", tag = "states",
    params(
        ("namespace" = NamespaceName, Path, description = "The states' namespace."),
        ("subject" = SubjectText, Path, description = "The user or tenant (percent-encoded)."),
    ),
    responses(
        (status = 200, description = "How many were revoked.", body = Revoked),
        (status = 400, description = "A path segment out of range: `invalid_namespace`, `reserved_namespace`, `invalid_subject`, `invalid_path` (not UTF-8).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn revoke_subject(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (ns, subject) = subject_path(&req, &caller)?;
    let revoked = app.states.revoke_subject(&ns, &subject).await?;
    Ok(HttpResponse::Ok().json(Revoked { revoked }))
}

/// Revoke a state by its id
///
/// "Sign out that device": 204, or 404.
#[utoipa::path(delete, path = "/v1/namespaces/{namespace}/states/{id}", tag = "states",
    params(
        ("namespace" = NamespaceName, Path, description = "The state's namespace."),
        ("id" = StateIdText, Path, description = "The id create answered."),
    ),
    responses(
        (status = 204, description = "Revoked."),
        (status = 400, description = "A path segment out of range: `invalid_namespace`, `reserved_namespace`, `invalid_id`, `invalid_path` (not UTF-8).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such state in this namespace: never issued, consumed, revoked or swept (`state_not_found`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
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
