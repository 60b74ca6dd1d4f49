//! `/v1/proxy/{provider}/{account}/{path}` (any method; API key with the provider and
//! account in its scope): the request goes to the provider's `api_base_url` + path with a
//! fresh access token, the answer streams back. One refresh and one retry after a `401`.

use super::auth::Caller;
use super::problem::ApiError;
use super::AppState;
use crate::proxy::{headers, path, Outgoing, ProxyError};
use actix_web::body::SizedStream;
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{StreamExt, TryStreamExt};
use std::time::Duration;

/// The token handed to the provider has at least this long left.
const MIN_TTL: Duration = Duration::from_secs(60);

fn invalid_path(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_proxy_path", detail)
}

/// The caller's body, whole (a retry sends it again), refused past the limit.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the proxy takes request bodies of at most {limit} bytes (proxy.max_request_bytes)"
            ),
        )
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("bad_body", format!("could not read the body: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `ANY /v1/proxy/{provider}/{account}/{path…}`
pub async fn forward(
    app: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let provider = req
        .match_info()
        .get("provider")
        .unwrap_or_default()
        .to_owned();
    let account = req
        .match_info()
        .get("account")
        .unwrap_or_default()
        .to_owned();
    caller.require_provider(&app, &provider)?;
    caller.require_account(&account)?;
    let base = app.broker.provider(&provider)?.api_base.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "proxy_not_configured",
            format!("provider {provider} has no API to proxy: set api_base_url in [providers.{provider}]"),
        )
    })?;
    // The path as it arrived (still percent-encoded): what the provider will see.
    let prefix = format!("/v1/proxy/{provider}/{account}/");
    let rest =
        req.uri().path().strip_prefix(&prefix).ok_or_else(|| {
            invalid_path("provider and account must be written plainly in the path")
        })?;
    let url = path::upstream_url(&base, rest, req.uri().query())
        .map_err(|e| invalid_path(e.to_string()))?;
    let body = read_body(&req, payload, app.proxy.policy.max_request_bytes).await?;
    let forwarded: Vec<(String, Vec<u8>)> = req
        .headers()
        .iter()
        .filter(|(name, _)| headers::forwards_request(name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let out = Outgoing {
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
    Ok(stream_back(
        answer,
        req.method(),
        app.proxy.policy.max_response_bytes,
    ))
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
        }
    })
}

/// The provider's status, allowed headers and body, streamed; a body that runs past the
/// limit is cut off (the connection ends, so the caller cannot mistake it for whole).
fn stream_back(answer: reqwest::Response, method: &Method, limit: u64) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    for (name, value) in answer.headers() {
        if headers::returns_response(name.as_str()) {
            resp.append_header((name.as_str(), value.as_bytes()));
        }
    }
    let length = answer.content_length();
    if method == Method::HEAD || matches!(status.as_u16(), 204 | 304) {
        return resp.finish();
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
