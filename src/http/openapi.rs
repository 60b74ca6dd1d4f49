//! The OpenAPI 3.1 description of every `/v1` route (`GET /openapi.json`, `oauthd openapi`).
//!
//! Each operation is described on its handler (`#[utoipa::path]`), answers by the types the
//! handlers serialize, errors by `Problem`, which is what `ApiError` renders. Request bodies
//! are read field by field (`JsonObject`: a stable code per bad field), so their schemas
//! below are descriptions; the fuzz tests in CI send what they allow and what they do not,
//! and fail where the handlers disagree. The router registers `/v1` operations from the
//! same descriptions (`super::v1_operations`), and a test fails when the two lists differ.

use super::{connect, connections, device, notify, proxy, states};
use crate::namespace::MAX_NAMESPACE_CHARS;
use crate::secret::SECRET_CHARS;
use actix_web::http::header;
use actix_web::HttpResponse;
use std::sync::OnceLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// An error: `application/problem+json` (RFC 9457) with a stable `code` to branch on
/// (README, "Errors"). `detail` is for people and never carries a secret.
#[derive(serde::Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:oauthd:problem:state_not_found",
    "title": "Not Found",
    "status": 404,
    "code": "state_not_found",
    "detail": "no such state (never issued, already consumed, or swept)"
}))]
pub struct Problem<'a> {
    /// `urn:oauthd:problem:` followed by the code.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: &'a str,
    /// The HTTP status, repeated.
    pub status: u16,
    /// Stable, machine-readable: what apps branch on.
    pub code: &'a str,
    /// What happened, for people.
    pub detail: &'a str,
    /// `wrong_secret`: tries left before the state is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_left: Option<u32>,
    /// `needs_reauth`: where a person connects the account again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_url: Option<&'a str>,
    /// The account a failed connect flow was for, when starting again helps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<&'a str>,
}

/// `Problem` as the descriptions name it.
pub type ProblemDoc = Problem<'static>;

/// A string schema: `pattern`, length bounds, a description.
fn text_schema(description: &str, pattern: String, min: usize, max: usize) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
}

/// A namespace: 1 to 128 characters, a letter or digit first, then letters, digits and
/// `. _ : / -`; `connect:` and `provider:` are oauthd's own.
#[derive(serde::Deserialize)]
pub struct NamespaceName(#[allow(dead_code)] String);

impl PartialSchema for NamespaceName {
    fn schema() -> RefOr<Schema> {
        text_schema(
            "A namespace: a letter or digit, then letters, digits and `. _ : / -`; `connect:` and `provider:` are oauthd's own.",
            format!("^[A-Za-z0-9][A-Za-z0-9._:/-]{{0,{}}}$", MAX_NAMESPACE_CHARS - 1),
            1,
            MAX_NAMESPACE_CHARS,
        )
        .examples(["myapp:oauth"])
        .into()
    }
}

impl ToSchema for NamespaceName {}

/// A state value exactly as oauthd issued it: 43 characters of base64url.
#[derive(serde::Deserialize)]
pub struct StateValueText(#[allow(dead_code)] String);

impl PartialSchema for StateValueText {
    fn schema() -> RefOr<Schema> {
        text_schema(
            "A state's value exactly as create answered it.",
            format!("^[A-Za-z0-9_-]{{{SECRET_CHARS}}}$"),
            SECRET_CHARS,
            SECRET_CHARS,
        )
        .into()
    }
}

impl ToSchema for StateValueText {}

/// A state's id as create answered it (a UUID of version 8: not secret).
pub struct StateIdText;

impl PartialSchema for StateIdText {
    fn schema() -> RefOr<Schema> {
        text_schema(
            "A state's id as create answered it.",
            "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-8[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
                .into(),
            36,
            36,
        )
        .into()
    }
}

impl ToSchema for StateIdText {}

/// Whom a state belongs to: 1 to 256 characters, no control characters.
#[derive(serde::Deserialize)]
pub struct SubjectText(#[allow(dead_code)] String);

impl PartialSchema for SubjectText {
    fn schema() -> RefOr<Schema> {
        text_schema(
            "The user or tenant a state belongs to: 1 to 256 characters, no control characters.",
            r"^[^\u0000-\u001F\u007F-\u009F]+$".into(),
            1,
            super::states::MAX_SUBJECT_CHARS,
        )
        .into()
    }
}

impl ToSchema for SubjectText {}

/// An account's name at oauthd: which of a provider's accounts a connection is.
#[derive(serde::Deserialize)]
pub struct AccountName(#[allow(dead_code)] String);

impl PartialSchema for AccountName {
    fn schema() -> RefOr<Schema> {
        text_schema(
            "Which of the provider's accounts (`default` when absent): letters, digits and `. _ -`, starting with a letter or digit.",
            "^[A-Za-z0-9][A-Za-z0-9._-]*$".into(),
            1,
            64,
        )
        .into()
    }
}

impl ToSchema for AccountName {}

/// A whole number of seconds, 0 or more (any size: JSON has no 64-bit limit).
#[derive(serde::Deserialize)]
pub struct Seconds(#[allow(dead_code)] u64);

impl PartialSchema for Seconds {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .into()
    }
}

impl ToSchema for Seconds {}

/// The proxy's request body: any bytes, passed on as they are.
pub struct ProxyBody;

impl PartialSchema for ProxyBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .description(Some(
                "Any bytes: passed on to the provider's API as they are.",
            ))
            .into()
    }
}

impl ToSchema for ProxyBody {}

// Request bodies. oauthd reads them field by field (`JsonObject`); these are the
// description, which the fuzz tests hold the handlers to (see the module's comment).

/// `POST /v1/states`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"namespace": "myapp:2fa", "ttl_seconds": 300, "subject": "alice", "secret": "123456", "max_attempts": 5, "data": {"action": "login"}}))]
#[allow(dead_code)]
pub struct CreateState {
    pub namespace: NamespaceName,
    /// Lifetime in seconds: the namespace's default when absent, at most its
    /// `max_ttl_seconds` (86,400 unless the config says otherwise; the description a
    /// server serves gives the longest its config allows).
    #[schema(minimum = 1, maximum = 86400, example = 600)]
    pub ttl_seconds: Option<u64>,
    /// Anything JSON, handed back on consume and verify (at most `states.max_data_bytes`).
    #[schema(value_type = Option<Value>)]
    pub data: Option<serde_json::Value>,
    /// The user or tenant the state belongs to: listed and revoked together.
    pub subject: Option<SubjectText>,
    /// A code the user will type (2FA, email code); then consumed only by `/attempt`.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub secret: Option<String>,
    /// Wrong secrets allowed (with `secret`; the namespace's default when absent, at most
    /// its `max_attempts_ceiling`, 100 unless the config says).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Revoke every other live state of this namespace and subject in the same step.
    pub replace: Option<bool>,
    /// Each verify with `touch` moves the expiry to now + the TTL.
    pub sliding: Option<bool>,
    /// A sliding state's absolute limit, from its creation (with `sliding: true`).
    #[schema(minimum = 1)]
    pub max_lifetime_seconds: Option<u64>,
}

/// A state and its namespace: consume, revoke.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"state": "AZRQd2xYk3xw2r8n0cPzq1m2bF4sT7uV9wXyZaBcDeF", "namespace": "myapp:oauth"}))]
#[allow(dead_code)]
pub struct StateKey {
    pub state: StateValueText,
    pub namespace: NamespaceName,
}

/// `POST /v1/states/verify`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"state": "AZRQd2xYk3xw2r8n0cPzq1m2bF4sT7uV9wXyZaBcDeF", "namespace": "myapp:session", "touch": true}))]
#[allow(dead_code)]
pub struct VerifyState {
    pub state: StateValueText,
    pub namespace: NamespaceName,
    /// On a sliding state, move the expiry to now + its TTL (never past its lifetime).
    pub touch: Option<bool>,
}

/// `POST /v1/states/attempt`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"state": "AZRQd2xYk3xw2r8n0cPzq1m2bF4sT7uV9wXyZaBcDeF", "namespace": "myapp:2fa", "secret": "123456"}))]
#[allow(dead_code)]
pub struct AttemptState {
    pub state: StateValueText,
    pub namespace: NamespaceName,
    /// The code the user typed; compared in constant time. Out of range (empty, too long,
    /// a control character) it is refused as the create refuses it (`invalid_secret`), and
    /// spends no attempt.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$"
    )]
    pub secret: String,
}

/// `POST /v1/connect/{provider}`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"account": "default"}))]
#[allow(dead_code)]
pub struct ConnectRequest {
    pub account: Option<AccountName>,
    /// Where the page sends the person afterwards: an address `return_to_allowlist` allows.
    pub return_to: Option<String>,
}

/// `POST /v1/device/{provider}`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"account": "living-room"}))]
#[allow(dead_code)]
pub struct DeviceRequest {
    pub account: Option<AccountName>,
}

/// `PUT /v1/connections/{provider}/{account}`: tokens an app obtained itself.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"access_token": "ya29.a0…", "refresh_token": "1//0g…", "expires_in": 3599, "scope": "openid email", "token_type": "Bearer"}))]
#[allow(dead_code)]
pub struct ImportTokens {
    #[schema(min_length = 1)]
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// RFC 3339; or `expires_in`, not both.
    pub expires_at: Option<String>,
    /// Seconds from now (more than ten years counts as ten); or `expires_at`, not both.
    pub expires_in: Option<Seconds>,
    /// Space-separated, as OAuth writes scopes.
    pub scope: Option<String>,
    #[schema(example = "Bearer")]
    pub token_type: Option<String>,
}

/// The description, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The longest TTL the serving config allows a create (`StatePolicy::longest_ttl`): the
/// description's `ttl_seconds` maximum, so that a client that checks its requests against
/// it sends what the server takes. Unset (`oauthd openapi`), the default's.
static LONGEST_TTL: OnceLock<u64> = OnceLock::new();

/// Sets the description's longest TTL from the config served; before the description is
/// first made (a server's start).
pub fn set_longest_ttl(seconds: u64) {
    let _ = LONGEST_TTL.set(seconds);
}

/// The description as JSON, for `GET /openapi.json` and `oauthd openapi`.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = serde_json::to_value(document()).unwrap_or_default();
        if let (Some(longest), Some(ttl)) = (
            LONGEST_TTL.get(),
            doc.pointer_mut("/components/schemas/CreateState/properties/ttl_seconds"),
        ) {
            ttl["maximum"] = (*longest).into();
        }
        add_rules_between_members(&mut doc);
        add_state_links(&mut doc);
        any_answer_through_the_proxy(&mut doc);
        unique_operation_ids(&mut doc);
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    })
}

/// OpenAPI wants each operation's id unique, and one handler serving several methods (the
/// proxy's) gives each the same: such an id gets its method after it (`forward_get`), as
/// client generators name their functions by it.
fn unique_operation_ids(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for operation in paths
        .values()
        .filter_map(|p| p.as_object())
        .flat_map(|p| p.values())
    {
        if let Some(id) = operation.get("operationId").and_then(|i| i.as_str()) {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    for (method, operation) in paths
        .values_mut()
        .filter_map(|p| p.as_object_mut())
        .flat_map(|p| p.iter_mut())
    {
        let shared = operation
            .get("operationId")
            .and_then(|i| i.as_str())
            .filter(|id| seen.get(*id).is_some_and(|n| *n > 1))
            .map(str::to_owned);
        if let Some(id) = shared {
            operation["operationId"] = serde_json::Value::String(format!("{id}_{method}"));
        }
    }
}

/// What JSON Schema says and the derive cannot: members that only go with another
/// (`max_lifetime_seconds` with `"sliding": true`, `max_attempts` with a `secret`,
/// `"replace": true` with a `subject`); `null` counts as absent, as the handlers read it.
fn add_rules_between_members(doc: &mut serde_json::Value) {
    let only_with = |member: &str, needs: &str, value: serde_json::Value| {
        serde_json::json!({
            "if": {"required": [member], "properties": {member: {"not": {"type": "null"}}}},
            "then": {"required": [needs], "properties": {needs: value}},
        })
    };
    if let Some(create) = doc.pointer_mut("/components/schemas/CreateState") {
        create["allOf"] = serde_json::json!([
            only_with("max_lifetime_seconds", "sliding", serde_json::json!({"const": true})),
            only_with("max_attempts", "secret", serde_json::json!({"type": "string"})),
            {
                "if": {"required": ["replace"], "properties": {"replace": {"const": true}}},
                "then": {"required": ["subject"], "properties": {"subject": {"type": "string"}}},
            },
        ]);
    }
}

/// `GET /openapi.json` (public: it holds nothing secret).
pub async fn serve(app: actix_web::web::Data<super::AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(mime::APPLICATION_JSON)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(served_below(&app.base_path))
}

/// The description as served below `base_path` (public_url's path): with a `servers`
/// entry naming it, so that a client made from the description calls `/oauthd/v1/…`, not
/// the host's `/v1/…`. At the root, as `oauthd openapi` prints it.
fn served_below(base_path: &str) -> &'static str {
    if base_path.is_empty() {
        return json();
    }
    // One base path per process.
    static BELOW: OnceLock<String> = OnceLock::new();
    BELOW.get_or_init(|| {
        let mut doc: serde_json::Value = serde_json::from_str(json()).unwrap_or_default();
        if let Some(doc) = doc.as_object_mut() {
            doc.insert(
                "servers".to_owned(),
                serde_json::json!([{
                    "url": base_path,
                    "description": "oauthd, below its public_url's path"
                }]),
            );
        }
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "oauthd",
        description = "A single-binary OAuth daemon: short-lived secrets (OAuth state, 2FA \
            challenges, reset links, sessions, codes) and a token broker for configured \
            providers. Every route takes an API key (`oauthd keys create`) as a bearer token.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0")
    ),
    paths(
        states::create,
        states::consume,
        states::verify,
        states::attempt,
        states::revoke,
        states::list_subject,
        states::revoke_subject,
        states::revoke_id,
        connections::list,
        connections::show,
        connections::token,
        connections::import,
        connections::delete,
        connect::start_api,
        device::start,
        device::status,
        notify::test,
        proxy::forward,
    ),
    components(schemas(
        Problem,
        NamespaceName,
        StateIdText,
        SubjectText,
        AccountName,
        ProxyBody,
        Seconds
    )),
    modifiers(&Common),
    security(("api_key" = [])),
    tags(
        (name = "states", description = "Short-lived secrets: issue, consume exactly once, \
            verify, try a code, revoke, list by subject."),
        (name = "connections", description = "Connected accounts: fresh access tokens, \
            metadata, import, disconnect."),
        (name = "connect", description = "Connecting an account: authorization code + PKCE, \
            device flow."),
        (name = "proxy", description = "Calls to a provider's API with the account's token."),
        (name = "notify", description = "Notifications."),
    )
)]
struct ApiDoc;

/// What every operation shares: the API key scheme, and the errors any route can give.
struct Common;

/// Errors every `/v1` operation may answer, with the codes it uses.
const COMMON: &[(&str, &str)] = &[
    (
        "401",
        "No API key (`missing_api_key`), an unknown or revoked one (`invalid_api_key`), or \
         one whose limits exclude this (`namespace_not_allowed`, `account_not_allowed`).",
    ),
    ("414", "The path and query are too long (`uri_too_long`)."),
    (
        "421",
        "Addressed (`Host`) to a name oauthd does not answer to (`host_not_allowed`): \
         localhost, IP addresses, names without a dot, `public_url`'s host and \
         `allowed_hosts` are answered.",
    ),
    (
        "429",
        "Too many requests (`rate_limited`, and per route: see the codes); `Retry-After`, \
         when present, says when to try again.",
    ),
    ("431", "The headers are too large (`headers_too_large`)."),
    (
        "503",
        "Storage is unavailable for a moment (`storage_unavailable`): retry after \
         `Retry-After`. It recovers by itself. Apart from that, a state whose data does \
         not open (sealed with a vault key this oauthd has not loaded) answers \
         `vault_error`, without `Retry-After`: it stays until the key is put back or it \
         expires; and a create answers `entropy_unavailable` when the system's random \
         number generator failed (nothing was issued).",
    ),
];

/// Errors of operations that take a JSON body.
const WITH_BODY: &[(&str, &str)] = &[
    (
        "400",
        "The body is not what the operation takes: not JSON or not an object \
         (`malformed_json`, `bad_body`), an unknown member (`unknown_field`), or a member \
         out of range (its own code, e.g. `invalid_namespace`, `invalid_ttl`).",
    ),
    (
        "408",
        "The body did not arrive whole within `[limits] body_seconds` (`body_timeout`).",
    ),
    ("413", "The body is too large (`body_too_large`)."),
    (
        "415",
        "The body is not `application/json` (`unsupported_media_type`).",
    ),
];

fn problem_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

/// Whether the operation takes a JSON body (the proxy's is anything, passed on as it is).
fn takes_json(op: &Operation) -> bool {
    op.request_body
        .as_ref()
        .is_some_and(|b| b.content.contains_key("application/json"))
}

/// An operation's own description of `status` that leaves out `code`, which every route
/// may answer with it, gets `words` after it.
fn also(op: &mut Operation, status: &str, code: &str, words: &str) {
    if let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) {
        if !response.description.contains(code) {
            response.description.push_str(words);
        }
    }
}

fn add_errors(op: &mut Operation, query_checked: bool) {
    // Before the common ones are added: they name these.
    also(
        op,
        "429",
        "`rate_limited`",
        " Or too many requests from this client (`rate_limited`), with `Retry-After`.",
    );
    if query_checked {
        also(
            op,
            "400",
            "`unknown_parameter`",
            " Or a query parameter the operation does not take (`unknown_parameter`).",
        );
    }
    let takes_body = takes_json(op);
    let more = if takes_body { WITH_BODY } else { &[] };
    for (status, description) in COMMON.iter().chain(more) {
        op.responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| problem_response(description));
    }
    if !takes_body {
        // A query parameter the route does not take is refused, not ignored.
        op.responses
            .responses
            .entry("400".to_owned())
            .or_insert_with(|| {
                problem_response("A query parameter the operation does not take (`unknown_parameter`) or a path segment out of range.")
            });
    }
}

/// The proxy passes on the provider's answers, whatever their status and media type:
/// every answer it describes may also be one of those (and HEAD's have no body).
fn any_answer_through_the_proxy(doc: &mut serde_json::Value) {
    let Some(item) = doc
        .pointer_mut("/paths/~1v1~1proxy~1{provider}~1{account}~1{path}")
        .and_then(|i| i.as_object_mut())
    else {
        return;
    };
    for (method, operation) in item.iter_mut() {
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(|r| r.as_object_mut())
        else {
            continue;
        };
        for response in responses.values_mut().filter_map(|r| r.as_object_mut()) {
            if method == "head" {
                // An answer to HEAD has no body, and need not say what it would be.
                response.remove("content");
            } else if let Some(content) = response
                .entry("content")
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
            {
                content.insert("*/*".into(), serde_json::json!({}));
            }
        }
    }
}

/// From a created state to what can follow it (OpenAPI links: clients and fuzzers follow
/// them from the 201's `state`, `namespace`, `id` and `subject`). Written as JSON: the
/// library's link type names its members in snake case, which no reader understands.
fn add_state_links(doc: &mut serde_json::Value) {
    use serde_json::json;
    let keyed = json!({
        "state": "$response.body#/state",
        "namespace": "$response.body#/namespace",
    });
    let subject = json!({
        "namespace": "$response.body#/namespace",
        "subject": "$response.body#/subject",
    });
    let mut links = serde_json::Map::new();
    for (name, operation) in [
        ("Consume", "consume"),
        ("Verify", "verify"),
        ("Revoke", "revoke"),
    ] {
        links.insert(
            name.into(),
            json!({
                "operationId": operation,
                "requestBody": keyed,
                // Both members or neither: the state alone is unknown in another namespace.
                "x-schemathesis": {"merge_body": false},
                "description": format!("{name} the state just created."),
            }),
        );
    }
    links.insert(
        "RevokeById".into(),
        json!({
            "operationId": "revoke_id",
            "parameters": {"namespace": "$response.body#/namespace", "id": "$response.body#/id"},
            "description": "Revoke the state just created by its id.",
        }),
    );
    for (name, operation, what) in [
        ("ListSubject", "list_subject", "List"),
        ("RevokeSubject", "revoke_subject", "Revoke"),
    ] {
        links.insert(
            name.into(),
            json!({
                "operationId": operation,
                "parameters": subject,
                "description": format!("{what} the states of the subject the state was created for (when it was created with a `subject`: the answer's is `null` otherwise)."),
            }),
        );
    }
    if let Some(created) = doc.pointer_mut("/paths/~1v1~1states/post/responses/201") {
        created["links"] = links.into();
    }
}

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from `oauthd keys create` (`oauthd_…`)."))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            // The proxy's query is the provider's, passed on as it is.
            let query_checked = !path.starts_with(super::proxy::PREFIX);
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_errors(op, query_checked);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn operations(item: &utoipa::openapi::PathItem) -> Vec<(&'static str, &Operation)> {
        [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ]
        .into_iter()
        .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
        .collect()
    }

    #[test]
    fn every_v1_route_is_described_and_every_description_is_routed() {
        let described: BTreeSet<(String, String)> = document()
            .paths
            .paths
            .iter()
            .flat_map(|(path, item)| {
                operations(item)
                    .into_iter()
                    .map(move |(m, _)| (m.to_owned(), path.clone()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> = super::super::v1_operations()
            .iter()
            .flat_map(|op| {
                op.methods
                    .iter()
                    .map(move |m| (m.to_string(), op.path.clone()))
            })
            .collect();
        let undescribed: Vec<_> = routed.difference(&described).collect();
        let unrouted: Vec<_> = described.difference(&routed).collect();
        assert!(
            undescribed.is_empty() && unrouted.is_empty(),
            "routed without a description (add it to ApiDoc's paths): {undescribed:?}; \
             described without a route (add it to v1_operations): {unrouted:?}"
        );
        assert!(routed.len() >= 22, "{routed:?}");
    }

    /// A route added beside the described ones, under `/v1`, is never reached: the `/v1`
    /// scope answers every path below it, and takes its routes only from descriptions.
    #[actix_web::test]
    async fn a_v1_route_registered_without_a_description_is_unreachable() {
        use actix_web::{test, web, App};
        let app = test::init_service(
            App::new()
                .service(super::super::v1_scope())
                .route("/v1/extra", web::get().to(|| async { "reached" })),
        )
        .await;
        let req = test::TestRequest::get().uri("/v1/extra").to_request();
        let resp = test::call_service(&app, req).await;
        assert_eq!(resp.status(), 404);
        let body = test::read_body(resp).await;
        assert!(
            String::from_utf8_lossy(&body).contains("\"not_found\""),
            "{body:?}"
        );
    }

    /// Every code in the README's error tables is named in the description (but the
    /// router's own: a path or method that no operation has).
    #[test]
    fn every_error_code_the_readme_lists_is_described() {
        let readme = include_str!("../../README.md");
        let json = json();
        let mut missing = Vec::new();
        for row in readme.lines().filter(|l| {
            l.len() > 6 && l.starts_with("| ") && l.as_bytes()[2..5].iter().all(u8::is_ascii_digit)
        }) {
            let codes = row.split('|').nth(2).unwrap_or_default();
            for code in codes.split('`').skip(1).step_by(2) {
                if !["not_found", "method_not_allowed"].contains(&code)
                    && !json.contains(&format!("`{code}`"))
                {
                    missing.push(code.to_owned());
                }
            }
        }
        assert!(missing.is_empty(), "not in the description: {missing:?}");
    }

    #[test]
    fn every_operation_has_a_summary_a_success_and_its_errors() {
        let doc = document();
        assert!(doc.openapi == utoipa::openapi::OpenApiVersion::Version31);
        for (path, item) in &doc.paths.paths {
            assert!(path.starts_with("/v1/"), "{path}");
            for (method, op) in operations(item) {
                let name = format!("{method} {path}");
                assert!(
                    op.summary.as_deref().is_some_and(|s| !s.is_empty()),
                    "{name}: no summary (the handler's doc comment's first line)"
                );
                let statuses: Vec<&String> = op.responses.responses.keys().collect();
                assert!(
                    statuses
                        .iter()
                        .any(|s| s.starts_with('2') || s.as_str() == "default"),
                    "{name}: no success answer in {statuses:?}"
                );
                for status in ["401", "429", "503"] {
                    assert!(
                        op.responses.responses.contains_key(status),
                        "{name}: no {status}"
                    );
                }
                if takes_json(op) {
                    for status in ["400", "408", "413", "415"] {
                        assert!(
                            op.responses.responses.contains_key(status),
                            "{name}: no {status}"
                        );
                    }
                }
            }
        }
        let json = json();
        assert!(json.contains(r#""api_key""#) && json.contains("bearer"));
    }
}
