//! The protocol calls: authorization URL (PKCE S256 always), code exchange, refresh
//! (RFC 6749 §6), revocation (RFC 7009). Built on the `oauth2` crate; one shared reqwest
//! client that never follows redirects and caps what a provider may send back.
//!
//! Beside this file: `sender` (how requests reach a token endpoint), `answer` (what a
//! token endpoint's answer means), `sent` (what was sent, kept out of providers' texts)
//! and `device_grant` (RFC 8628).

use super::provider::{ClientAuth, Endpoints, Provider};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, Scope, StandardRevocableToken, TokenUrl,
};
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

mod answer;
mod device_grant;
mod sender;
mod sent;

use answer::{answered, ProviderTokenResponse, CLIENT_ADVICE};
pub use answer::{usable, IdTokenField, TokenSet};
pub use device_grant::{
    device_authorize, device_poll, parse_device_authorization, DeviceAuthorization, DevicePoll,
};
use sender::Sender;
pub use sender::{
    retry_after_secs, Network, TokenEndpoint, TokenFuture, MAX_PROVIDER_WAIT_SECS, NO_ANSWER,
};
use sent::{form_encode, Sent, CODE_MAX};

/// Largest token response accepted from a provider.
pub(super) const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The HTTP client for talking to providers; `timeout` bounds each whole request. It never
/// follows redirects. Failing to build it (no TLS roots, say) is a start-up error: a default
/// client would follow redirects and wait forever.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    http_client_waiting(timeout, timeout)
}

/// `http_client` whose requests, once connected, may take `answer` in all: a refresh's
/// answer carries the refresh token a rotating provider has just issued in place of the
/// stored one, and given up on, the connection is lost to a slow provider.
pub fn http_client_waiting(timeout: Duration, answer: Duration) -> Result<reqwest::Client, String> {
    // Shorter than `answer`: a connection never made is said as such, not as a request
    // that got no answer (`NO_ANSWER`). (With `answer` above 6.7 s, as by default, the
    // 5 s rule decides.)
    let connect = timeout
        .min(Duration::from_secs(5))
        .min(answer.mul_f64(0.75));
    build_client(connect, answer)
}

/// The providers' client: `connect` to connect, `total` for a whole request.
fn build_client(connect: Duration, total: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect)
        .timeout(total)
        // A connection per request. A pooled connection is driven by a task on the runtime
        // of the call that opened it (an HTTP worker's, or the refresher's): a later call
        // on another worker failed with "error sending request" once that worker stopped
        // (at SIGTERM, while a refresh the provider was already answering went on). A
        // failed refresh keeps the refresh token a rotating provider may have just
        // retired. Provider calls are rare (a refresh an hour per connection), so the
        // handshakes cost nothing measurable.
        .pool_max_idle_per_host(0)
        .user_agent(concat!("oauthd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            format!(
                "cannot set up the HTTP client for providers: {}",
                crate::oauth::with_causes(&e)
            )
        })
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FlowError {
    /// The grant is dead (revoked, expired, used twice): only a new consent helps.
    #[error("the provider refused the grant (invalid_grant): {0}")]
    InvalidGrant(String),
    /// The provider refused for another reason (misconfigured client, bad scope…).
    #[error("the provider refused the request ({code}): {description}")]
    Rejected { code: String, description: String },
    /// Network trouble, timeouts, 5xx, garbage: worth trying again later.
    #[error("the provider could not be reached or answered badly: {0}")]
    Transient(String),
    /// The provider answered 429 or 503 with a `Retry-After`: not to be asked again
    /// before then (at most `MAX_PROVIDER_WAIT_SECS`).
    #[error("the provider asked to be called again in {retry_after_secs} s: {message}")]
    Throttled {
        message: String,
        retry_after_secs: u64,
    },
}

/// What the browser is sent to, and what the callback needs to finish.
pub struct AuthorizeRequest {
    pub url: Url,
    pub pkce_verifier: Zeroizing<String>,
    pub nonce: Option<String>,
}

/// A client whose token responses keep the `id_token`; endpoints are set below.
type BaseClient = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

type ConfiguredClient = oauth2::Client<
    BasicErrorResponse,
    ProviderTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn client(provider: &Provider, endpoints: &Endpoints, redirect: Option<&Url>) -> ConfiguredClient {
    let mut c = BaseClient::new(ClientId::new(provider.client_id.clone()))
        .set_auth_uri(AuthUrl::from_url(endpoints.authorization.clone()))
        .set_token_uri(TokenUrl::from_url(endpoints.token.clone()))
        .set_auth_type(match provider.client_auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Post | ClientAuth::None => AuthType::RequestBody,
        });
    if provider.client_auth != ClientAuth::None {
        if let Some(secret) = &provider.client_secret {
            c = c.set_client_secret(ClientSecret::new(secret.to_string()));
        }
    }
    if let Some(r) = redirect {
        c = c.set_redirect_uri(RedirectUrl::from_url(r.clone()));
    }
    c
}

/// The authorization URL for `state`, with a fresh PKCE verifier (S256) and, for OpenID
/// scopes, a nonce; fails only when the system's random number generator does.
pub fn authorize_url(
    provider: &Provider,
    endpoints: &Endpoints,
    redirect: &Url,
    state: &str,
) -> Result<AuthorizeRequest, getrandom::Error> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = provider
        .scopes
        .iter()
        .any(|s| s == "openid")
        .then(|| crate::secret::random_bytes::<16>().map(|b| URL_SAFE_NO_PAD.encode(b)))
        .transpose()?;
    let c = client(provider, endpoints, Some(redirect));
    let state = state.to_owned();
    let mut req = c
        .authorize_url(move || CsrfToken::new(state))
        .add_scopes(provider.scopes.iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge);
    if let Some(n) = &nonce {
        req = req.add_extra_param("nonce", n.clone());
    }
    for (k, v) in &provider.authorize_params {
        req = req.add_extra_param(k.clone(), v.clone());
    }
    let (url, _) = req.url();
    Ok(AuthorizeRequest {
        url,
        pkce_verifier: Zeroizing::new(verifier.secret().clone()),
        nonce,
    })
}

pub async fn exchange_code(
    http: &dyn TokenEndpoint,
    provider: &Provider,
    endpoints: &Endpoints,
    redirect: &Url,
    code: &str,
    pkce_verifier: &str,
) -> Result<TokenSet, FlowError> {
    let asked = std::time::Instant::now();
    let sender = Sender::new(http);
    let resp = client(provider, endpoints, Some(redirect))
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
        .request_async(&sender)
        .await;
    let sent = Sent::new(provider, &[code, pkce_verifier]);
    answered(resp, sender.status(), &sent, asked)
        .map_err(|e| sender.throttled(e))
        .and_then(usable)
}

/// Whether a provider accepts oauthd's client credentials, found out before any user is
/// sent there: a token request for a made-up code is refused as `invalid_grant` when the
/// client id and secret are right, and as `invalid_client` when they are not (RFC 6749
/// §5.2; GitHub: `bad_verification_code` and `incorrect_client_credentials`, with 200).
/// Providers that answer otherwise cannot be told apart: `Unknown`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum ClientCheck {
    Accepted(String),
    Refused(String),
    Unknown(String),
}

/// Whether a token endpoint's error code says it refused oauthd's client id or secret
/// (GitHub's `incorrect_client_credentials` beside RFC 6749's).
pub fn refuses_client(code: &str) -> bool {
    matches!(
        code,
        "invalid_client" | "unauthorized_client" | "incorrect_client_credentials"
    )
}

pub async fn check_client(
    http: &dyn TokenEndpoint,
    provider: &Provider,
    endpoints: &Endpoints,
    redirect: &Url,
) -> ClientCheck {
    // Letters no provider's words hold: a text echoing them is withheld (`Sent::echoes`),
    // and one holding a word of theirs would be too ("credentials").
    let made_up = "Qz7vK2xw9RmT4pLj8NcY3hFd";
    let verifier = "Vb6Gt1ZsK8qW3nRx5JmP0cYh7LdF2kTa9XwE4uQi6Ro";
    match exchange_code(http, provider, endpoints, redirect, made_up, verifier).await {
        Err(FlowError::InvalidGrant(_)) => ClientCheck::Accepted(
            "a made-up code was refused as invalid_grant, so the client id and secret were accepted".into(),
        ),
        Err(FlowError::Rejected { code, description }) if refuses_client(&code) => {
            let description = description
                .strip_suffix(CLIENT_ADVICE)
                .unwrap_or(&description);
            ClientCheck::Refused(format!(
                "the provider refused the client id or secret ({code}: {description}): check client_id and client_secret (or client_secret_file)"
            ))
        }
        Err(FlowError::Rejected { code, .. }) => ClientCheck::Unknown(format!(
            "the provider answered {code}, which does not tell whether the credentials are right"
        )),
        Err(FlowError::Transient(e)) => ClientCheck::Unknown(e),
        Err(throttled @ FlowError::Throttled { .. }) => ClientCheck::Unknown(throttled.to_string()),
        Ok(_) => ClientCheck::Unknown("the provider accepted a made-up code".into()),
    }
}

/// Refreshes with `refresh_token`. `access_token`, the one it replaces, is not sent, but
/// the provider knows it: an error text that holds it loses it too.
pub async fn refresh(
    http: &dyn TokenEndpoint,
    provider: &Provider,
    endpoints: &Endpoints,
    refresh_token: &str,
    access_token: Option<&str>,
) -> Result<TokenSet, FlowError> {
    let token = RefreshToken::new(refresh_token.to_owned());
    let asked = std::time::Instant::now();
    let sender = Sender::new(http);
    let resp = client(provider, endpoints, None)
        .exchange_refresh_token(&token)
        .request_async(&sender)
        .await;
    let held: Vec<&str> = [Some(refresh_token), access_token]
        .into_iter()
        .flatten()
        .collect();
    answered(resp, sender.status(), &Sent::new(provider, &held), asked)
        .map_err(|e| sender.throttled(e))
}

/// RFC 7009 revocation, as one form POST (the `oauth2` crate insists on https revocation
/// URLs, which rules out providers on loopback).
pub async fn revoke(
    http: &reqwest::Client,
    provider: &Provider,
    url: &Url,
    token: &str,
    hint: &str,
) -> Result<(), FlowError> {
    let resp = authed_post(
        http,
        provider,
        url,
        &[("token", token), ("token_type_hint", hint)],
    )
    .send()
    .await
    .map_err(|e| FlowError::Transient(super::with_causes(&e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(FlowError::Transient(format!(
            "revocation answered HTTP {status}"
        )));
    }
    // RFC 7009 answers 200 for a token no longer valid, but Google (and others) answer
    // `400 invalid_token`: as after the refresh token's revocation ended the grant, and
    // with it the access token revoked next. Either way the token is dead, which is what
    // revoking it was for. `unsupported_token_type` for an access token: the provider
    // does not revoke those, and it lapses at its expiry (a refresh token it does not
    // revoke leaves the grant alive: refused).
    let body = super::read_limited(resp, 16 * 1024)
        .await
        .unwrap_or_default();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
    let bad_request = status == reqwest::StatusCode::BAD_REQUEST;
    match code.as_deref() {
        // Only as 400 (RFC 6749 5.2's status): a 401 invalid_token refuses the caller.
        // `invalid_grant`: a provider's word for a token revoked before (a retried delete
        // sends the refresh token a first try revoked).
        Some("invalid_token" | "invalid_grant") if bad_request => Ok(()),
        Some("unsupported_token_type") if bad_request && hint == "access_token" => Ok(()),
        _ => Err(FlowError::Rejected {
            code: format!("http_{}", status.as_u16()),
            description: match code {
                Some(code) => format!(
                    "the revocation endpoint refused the request ({})",
                    Sent::new(provider, &[token]).text(&code, CODE_MAX)
                ),
                None => "the revocation endpoint refused the request".into(),
            },
        }),
    }
}

/// A form POST to a provider endpoint with the client authenticated as configured.
pub(super) fn authed_post(
    http: &reqwest::Client,
    provider: &Provider,
    url: &Url,
    params: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut form: Vec<(&str, &str)> = params.to_vec();
    let mut req = http.post(url.clone());
    match provider.client_auth {
        ClientAuth::Basic => {
            req = req.basic_auth(
                form_encode(&provider.client_id),
                provider.client_secret.as_ref().map(|s| form_encode(s)),
            );
        }
        ClientAuth::Post | ClientAuth::None => {
            form.push(("client_id", &provider.client_id));
            if provider.client_auth == ClientAuth::Post {
                if let Some(s) = &provider.client_secret {
                    form.push(("client_secret", s));
                }
            }
        }
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    req.header(
        reqwest::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded",
    )
    .header(reqwest::header::ACCEPT, "application/json")
    .body(body)
}
