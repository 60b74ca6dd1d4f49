//! `/v1/proxy/{provider}/{account}/{path}` (any method; API key with the provider and
//! account in its scope): the request goes to the provider's `api_base_url` + path with a
//! fresh access token, the answer streams back. One refresh and one retry after a `401`.

use super::auth::Caller;
use super::openapi::{ProblemDoc, ProxyBody};
use super::problem::ApiError;
use super::AppState;
use crate::proxy::{headers, path, Outgoing, ProxyError};
use actix_web::body::{MessageBody, SizedStream};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::TryStreamExt;
use std::time::Duration;

/// An answer up to this size (by its `Content-Length`) is read whole and sent in one
/// piece; a larger one, or one of unknown size, streams.
const WHOLE_ANSWER_BYTES: u64 = 64 * 1024;

/// The token handed to the provider has at least this long left.
const MIN_TTL: Duration = Duration::from_secs(60);

fn invalid_path(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_proxy_path", detail)
}

/// The caller's body, whole (a retry sends it again): refused past the limit, when the
/// shared budget for bodies in memory is spent, or when it takes longer than the proxy's
/// timeout to arrive.
async fn read_body<'a>(
    req: &HttpRequest,
    payload: web::Payload,
    proxy: &'a crate::proxy::Proxy,
    room: &mut crate::proxy::BodyRoom<'a>,
) -> Result<bytes::Bytes, ApiError> {
    let timeout = proxy.policy.timeout;
    tokio::time::timeout(timeout, read_body_within(req, payload, proxy, room))
        .await
        .unwrap_or_else(|_| {
            Err(super::body::body_timeout(format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            )))
        })
}

async fn read_body_within<'a>(
    req: &HttpRequest,
    mut payload: web::Payload,
    proxy: &'a crate::proxy::Proxy,
    room: &mut crate::proxy::BodyRoom<'a>,
) -> Result<bytes::Bytes, ApiError> {
    let limit = proxy.policy.max_request_bytes;
    let busy = |why: crate::proxy::NoRoom| {
        let detail = match why {
            crate::proxy::NoRoom::KeyShare => {
                "this API key's requests hold as much of the proxy's room for request bodies \
                 as one key may (half of it, less while other keys hold some); retry once some of \
                 them have ended"
            }
            crate::proxy::NoRoom::Budget => {
                "the proxy holds as many request bodies in memory as it may; retry shortly"
            }
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "proxy_busy", detail).retry_after(1)
    };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the proxy takes request bodies of at most {limit} bytes (proxy.max_request_bytes)"
            ),
        )
    };
    let body = super::body::read_limited(
        &mut payload,
        super::body::declared_length(req),
        limit,
        too_large,
        |n| proxy.claim(room, n).map_err(busy),
    )
    .await?;
    Ok(body.into())
}

/// The proxy's endpoint label in the HTTP metrics: its routes are a prefix, for which
/// actix has no pattern.
pub async fn label(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    super::request_metrics::set_endpoint(&req, ENDPOINT);
    next.call(req).await
}

/// The proxy's path, as the OpenAPI description spells it.
const ENDPOINT: &str = "/v1/proxy/{provider}/{account}/{path}";

/// Where the proxy's routes start.
pub const PREFIX: &str = "/v1/proxy/";

/// RFC 9209's header: which answers to a proxied call are the API's, and which oauthd's.
const PROXY_STATUS: &str = "proxy-status";

/// An answer to a proxied call that oauthd gave itself (a refused key, no such
/// connection, `needs_reauth`, the API unreachable) says so in `Proxy-Status` (RFC 9209),
/// with its problem's code: a caller tells oauthd's 404 or 409 from the API's, whose
/// answers say the status oauthd received instead.
pub fn mark_own<B>(resp: &mut actix_web::HttpResponse<B>) {
    if resp.headers().contains_key(PROXY_STATUS) {
        return;
    }
    let code = resp
        .extensions()
        .get::<super::problem::ProblemCode>()
        .map_or("unknown", |c| c.0);
    // RFC 9209's error types; every other answer oauthd made without the API's.
    let error = match code {
        "upstream_unavailable" => "destination_unavailable",
        "upstream_timeout" => "http_response_timeout",
        "upstream_too_large" => "http_response_content_size",
        "upstream_upgraded" => "http_protocol_error",
        _ => "proxy_internal_response",
    };
    let value = format!("oauthd; error={error}; details=\"{code}\"");
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&value) {
        resp.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(PROXY_STATUS),
            value,
        );
    }
}

/// Call a provider's API with the account's token
///
/// The request goes to the provider's `api_base_url` + `{path}` (which may hold `/`; the
/// query is passed on) with a fresh access token in place of any `Authorization`; the
/// answer streams back. On a `401` from the API, one refresh and one retry. Redirects are
/// handed back, never followed: a `Location` inside `api_base_url` as this route's path
/// for it, any other made absolute. `Proxy-Status` (RFC 9209) says whose answer it is:
/// the API's (`oauthd; received-status=…`) or oauthd's own (`oauthd; error=…;
/// details="<code>"`).
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/v1/proxy/{provider}/{account}/{path}", tag = "proxy",
    params(
        ("provider" = String, Path, description = "A provider's name in the config, with an `api_base_url`."),
        ("account" = String, Path, description = "The connection's account."),
        ("path" = String, Path, description = "The API's path below `api_base_url`, sent as it is: it may hold `/` (not `%2F`, which reaches the API encoded), never `..` or an escape out of the base."),
    ),
    request_body(content = ProxyBody, content_type = "*/*", description = "Passed on as it is (at most `proxy.max_request_bytes`)."),
    responses(
        (status = "default", description = "The provider's answer, with its status, as it is (`Cache-Control: no-store`)."),
        (status = 400, description = "A path that could leave the API's base (`invalid_proxy_path`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such provider (`unknown_provider`), no `api_base_url` for it (`proxy_not_configured`), or no such connection (`connection_not_found`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 408, description = "The request body did not arrive in time (`body_timeout`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The grant is gone (`needs_reauth`): an app starts a new connect flow for the account; `reconnect_url` is the operator's page, behind its sign-in.", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, description = "The request body is larger than `proxy.max_request_bytes` (`body_too_large`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 502, description = "The API's answer is larger than `proxy.max_response_bytes` (`upstream_too_large`), switches protocols (`upstream_upgraded`: a `101`, never asked for), or it cannot be reached (`upstream_unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Too many request bodies in memory at once (`proxy_busy`), or the provider cannot refresh the token now (`provider_unavailable`).", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 504, description = "The API did not answer within `proxy.timeout_seconds` (`upstream_timeout`).", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn forward(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if !crate::proxy::METHODS.contains(&req.method().as_str()) {
        return Err(ApiError::method_not_allowed(
            crate::proxy::METHODS.join(", "),
        ));
    }
    // `/v1/proxy/{provider}/{account}/{rest}`, as it arrived (still percent-encoded):
    // `rest` is what the provider will see. Provider and account names need no decoding
    // (letters, digits, `. _ -`); one written encoded is unknown.
    let mut parts = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or_default()
        .splitn(3, '/');
    let (Some(provider), Some(account), Some(rest)) = (parts.next(), parts.next(), parts.next())
    else {
        // `/v1/proxy/spotify/default` alone: what is missing is the API's path.
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: a proxied call names the provider, the account and the path \
             of the provider's API after them: /v1/proxy/{provider}/{account}/{path}",
        ));
    };
    let (provider, account) = (provider.to_owned(), account.to_owned());
    caller.require_provider(&app, &provider)?;
    caller.require_account(&account)?;
    let configured = app.broker.provider(&provider)?;
    let extra_headers = configured.proxy_headers.clone();
    let base = configured.api_base.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "proxy_not_configured",
            format!("provider {provider} has no API to proxy: set api_base_url in [providers.{provider}]"),
        )
    })?;
    let url = path::upstream_url(&base, rest, req.uri().query()).map_err(|e| {
        // Where, without repeating the path (the caller's own, and a query may follow).
        match path::refused_segment(rest) {
            Some(n) => invalid_path(format!(
                "segment {n} of the API's path (after the account): {e}"
            )),
            None => invalid_path(e.to_string()),
        }
    })?;
    let mut room = app.proxy.body_room(&caller.0.id);
    let body = read_body(&req, payload, &app.proxy, &mut room).await?;
    let hop_by_hop = headers::connection_options(
        req.headers()
            .get_all(actix_web::http::header::CONNECTION)
            .map(|v| v.as_bytes()),
    );
    let forwarded: Vec<(String, Vec<u8>)> = req
        .headers()
        .iter()
        .filter(|(name, _)| headers::forwards_request(name.as_str(), &extra_headers))
        .filter(|(name, _)| !hop_by_hop.iter().any(|h| h == name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let out = Outgoing {
        provider: &provider,
        account: &account,
        method: req.method().as_str(),
        url: &url,
        headers: &forwarded,
        body,
    };
    let token = app
        .broker
        .access_token(&provider, &account, MIN_TTL)
        .await?;
    let mut answer = send(&app, &provider, &out, &token).await?;
    if answer.status() == reqwest::StatusCode::UNAUTHORIZED {
        if let Some(fresh) = app
            .broker
            .access_token_instead_of(&provider, &account, &token)
            .await?
        {
            answer = send(&app, &provider, &out, &fresh).await?;
        }
    }
    crate::metrics::proxied(&provider, answer.status().as_u16());
    // The body is sent: its room in the budget is free again while the answer streams.
    drop(out);
    drop(room);
    let limit = app.proxy.policy.max_response_bytes;
    let prefix = format!("{}/v1/proxy/{provider}/{account}/", app.base_path);
    let called = called_as(&req);
    let own = path::RedirectBase {
        base: &base,
        proxy_prefix: &prefix,
        oauthd: app.broker.public_url(),
        called: &called,
    };
    if answer
        .content_length()
        .is_some_and(|n| n <= WHOLE_ANSWER_BYTES)
    {
        let silence = app.proxy.policy.read_timeout;
        return answer_whole(answer, req.method(), &own, silence).await;
    }
    Ok(stream_back(answer, req.method(), limit, &own))
}

async fn send(
    app: &AppState,
    provider: &str,
    out: &Outgoing<'_>,
    token: &crate::broker::AccessToken,
) -> Result<reqwest::Response, ApiError> {
    app.proxy.send(out, token).await.map_err(|e| {
        crate::metrics::proxied(provider, 0);
        let detail = e.to_string();
        match e {
            ProxyError::Timeout(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", detail)
            }
            ProxyError::Unreachable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", detail)
                    .retry_after(5)
            }
            ProxyError::TooLarge(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_too_large", detail)
            }
            ProxyError::Upgraded => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_upgraded", detail)
            }
        }
    })
}

/// The names the caller may have reached oauthd by: its `Host` (the request line's for an
/// absolute-form target) and what a proxy in front passed on (`X-Forwarded-Host`,
/// `Forwarded: host=`). Trusted or not: each only keeps more redirects from the caller.
fn called_as(req: &HttpRequest) -> Vec<path::CalledAs> {
    let headers = req.headers();
    let text = |name: &str| {
        headers
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let forwarded = text("forwarded");
    let named = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .into_iter()
        .chain(text("host"))
        .chain(text("x-forwarded-host"))
        .chain(forwarded.iter().flat_map(|element| {
            element.split(';').filter_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.eq_ignore_ascii_case("host")
                    .then(|| value.trim_matches('"'))
            })
        }));
    // The first few (the caller's own Host among them): a long list costs no more.
    let mut called: Vec<path::CalledAs> =
        named.take(16).filter_map(path::CalledAs::parse).collect();
    called.dedup();
    called
}

/// A small answer, read whole: one write to the caller instead of headers, then body
/// (`silence`: the read timeout it may fail with).
async fn answer_whole(
    answer: reqwest::Response,
    method: &Method,
    own: &path::RedirectBase<'_>,
    silence: std::time::Duration,
) -> Result<HttpResponse, ApiError> {
    let mut resp = answer_head(&answer, own);
    let status = answer.status().as_u16();
    if method == Method::HEAD || matches!(status, 204 | 304) {
        return Ok(without_body(resp, method, &answer));
    }
    let body = answer.bytes().await.map_err(|e| {
        let detail = if e.is_timeout() {
            format!(
                "the provider's answer went silent for {} s before its end (proxy.read_timeout_seconds)",
                silence.as_secs()
            )
        } else {
            "the provider's answer broke off".to_owned()
        };
        ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", detail).retry_after(5)
    })?;
    Ok(resp.body(body))
}

/// An answer without a body: a `204` or `304`, or the answer to `HEAD`, which keeps the
/// `Content-Length` the provider gave (how a client learns a file's size before fetching
/// it; it was `0`, as for an empty answer).
fn without_body(
    mut resp: actix_web::HttpResponseBuilder,
    method: &Method,
    answer: &reqwest::Response,
) -> HttpResponse {
    // One length, and one an HTTP client takes (Go's refuse past 2^63 - 1); several that
    // differ, or none that parses, leave it out.
    let mut lengths = answer
        .headers()
        .get_all(reqwest::header::CONTENT_LENGTH)
        .iter()
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()));
    let length = match (lengths.next(), lengths.next()) {
        (Some(Some(n)), None) if i64::try_from(n).is_ok() => Some(n),
        _ => None,
    }
    .filter(|_| method == Method::HEAD);
    match length {
        // Sent as the length of a body that is never written: an answer to HEAD has none.
        Some(n) => resp.body(SizedStream::new(
            n,
            futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>(),
        )),
        None => resp.finish(),
    }
}

/// The status and allowed headers of the provider's answer, with the proxy's own. A
/// `Location` and a `Link` are read against the address that answered
/// (`path::redirect_location`, `path::link_targets`).
fn answer_head(
    answer: &reqwest::Response,
    own: &path::RedirectBase<'_>,
) -> actix_web::HttpResponseBuilder {
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    let hop_by_hop = headers::connection_options(
        answer
            .headers()
            .get_all(reqwest::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    for (name, value) in answer.headers() {
        if hop_by_hop.iter().any(|h| h == name.as_str()) {
            continue;
        }
        // Addresses are read against the address that answered: never one of oauthd's.
        let read = match *name {
            reqwest::header::LOCATION => Some(path::redirect_location as fn(_, _, _) -> _),
            reqwest::header::LINK => Some(path::link_targets as fn(_, _, _) -> _),
            _ => None,
        };
        if let Some(read) = read {
            let value = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|text| read(answer.url(), text, own));
            if let Some(value) = value {
                resp.append_header((name.as_str(), value));
            }
        } else if headers::returns_response(name.as_str()) {
            resp.append_header((name.as_str(), value.as_bytes()));
        }
    }
    // The answer is served from oauthd's origin, to a caller holding a key: never
    // rendered as a page there, never kept by a cache in between. And said to be the
    // API's (`mark_own`).
    resp.insert_header((
        PROXY_STATUS,
        format!("oauthd; received-status={}", answer.status().as_u16()),
    ))
    .insert_header(("x-content-type-options", "nosniff"))
    .insert_header(("content-security-policy", "sandbox; default-src 'none'"))
    .insert_header(("cache-control", "no-store"));
    resp
}

/// The provider's status, allowed headers and body, streamed; a body that runs past the
/// limit is cut off (the connection ends, so the caller cannot mistake it for whole).
fn stream_back(
    answer: reqwest::Response,
    method: &Method,
    limit: u64,
    own: &path::RedirectBase<'_>,
) -> HttpResponse {
    let mut resp = answer_head(&answer, own);
    let status = answer.status().as_u16();
    let length = answer.content_length();
    if method == Method::HEAD || matches!(status, 204 | 304) {
        return without_body(resp, method, &answer);
    }
    let mut seen: u64 = 0;
    let body = answer
        .bytes_stream()
        .map_err(|e| std::io::Error::other(format!("the provider's answer broke off: {e}")))
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let result = if seen > limit {
                Err(std::io::Error::other(
                    "the provider's answer is over proxy.max_response_bytes",
                ))
            } else {
                Ok(chunk)
            };
            std::future::ready(result)
        });
    match length {
        Some(n) => resp.body(SizedStream::new(n, body)),
        None => resp.streaming(body),
    }
}
