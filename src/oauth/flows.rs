//! The protocol calls: authorization URL (PKCE S256 always), code exchange, refresh
//! (RFC 6749 §6), revocation (RFC 7009). Built on the `oauth2` crate; one shared reqwest
//! client that never follows redirects and caps what a provider may send back.

use super::provider::{ClientAuth, Endpoints, Provider};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

/// Largest token response accepted from a provider.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The HTTP client for talking to providers; `timeout` bounds each whole request.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("oauthd/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Tokens as a provider returned them. Redacted in `Debug`.
pub struct TokenSet {
    pub access_token: Zeroizing<String>,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub refresh_token: Option<Zeroizing<String>>,
    pub scopes: Option<Vec<String>>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
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
}

/// What the browser is sent to, and what the callback needs to finish.
pub struct AuthorizeRequest {
    pub url: Url,
    pub pkce_verifier: Zeroizing<String>,
    pub nonce: Option<String>,
}

type ConfiguredClient = BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn client(provider: &Provider, endpoints: &Endpoints, redirect: Option<&Url>) -> ConfiguredClient {
    let mut c = BasicClient::new(ClientId::new(provider.client_id.clone()))
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
/// scopes, a nonce.
pub fn authorize_url(
    provider: &Provider,
    endpoints: &Endpoints,
    redirect: &Url,
    state: &str,
) -> Result<AuthorizeRequest, FlowError> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = provider
        .scopes
        .iter()
        .any(|s| s == "openid")
        .then(|| crate::secret::random_bytes::<16>().map(|b| URL_SAFE_NO_PAD.encode(b)))
        .transpose()
        .map_err(|_| FlowError::Transient("the system random number generator failed".into()))?;
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

/// Sends one request for the `oauth2` crate, through the shared client, with a size cap.
async fn send(
    http: reqwest::Client,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, std::io::Error> {
    let (parts, body) = req.into_parts();
    let resp = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = super::read_limited(resp, MAX_RESPONSE_BYTES)
        .await
        .map_err(std::io::Error::other)?;
    let mut out = oauth2::http::Response::builder().status(status);
    if let Some(h) = out.headers_mut() {
        *h = headers;
    }
    out.body(body).map_err(std::io::Error::other)
}

fn classify<E: std::error::Error>(
    err: RequestTokenError<E, oauth2::basic::BasicErrorResponse>,
) -> FlowError {
    match err {
        RequestTokenError::ServerResponse(r) => {
            let description = r
                .error_description()
                .cloned()
                .unwrap_or_else(|| "no description".into());
            match r.error() {
                BasicErrorResponseType::InvalidGrant => FlowError::InvalidGrant(description),
                other => FlowError::Rejected {
                    code: other.to_string(),
                    description,
                },
            }
        }
        RequestTokenError::Request(e) => FlowError::Transient(e.to_string()),
        RequestTokenError::Parse(e, _) => {
            FlowError::Transient(format!("malformed token response: {e}"))
        }
        RequestTokenError::Other(e) => FlowError::Transient(e),
    }
}

fn token_set(r: &oauth2::basic::BasicTokenResponse) -> TokenSet {
    TokenSet {
        access_token: Zeroizing::new(r.access_token().secret().clone()),
        token_type: match r.token_type() {
            oauth2::basic::BasicTokenType::Bearer => "Bearer".to_owned(),
            other => other.as_ref().to_owned(),
        },
        expires_in: r.expires_in(),
        refresh_token: r
            .refresh_token()
            .map(|t| Zeroizing::new(t.secret().clone())),
        scopes: r
            .scopes()
            .map(|s| s.iter().map(|x| x.to_string()).collect()),
    }
}

pub async fn exchange_code(
    http: &reqwest::Client,
    provider: &Provider,
    endpoints: &Endpoints,
    redirect: &Url,
    code: &str,
    pkce_verifier: &str,
) -> Result<TokenSet, FlowError> {
    let http = http.clone();
    let resp = client(provider, endpoints, Some(redirect))
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_owned()))
        .request_async(&move |req| send(http.clone(), req))
        .await
        .map_err(classify)?;
    Ok(token_set(&resp))
}

pub async fn refresh(
    http: &reqwest::Client,
    provider: &Provider,
    endpoints: &Endpoints,
    refresh_token: &str,
) -> Result<TokenSet, FlowError> {
    let http = http.clone();
    let token = RefreshToken::new(refresh_token.to_owned());
    let resp = client(provider, endpoints, None)
        .exchange_refresh_token(&token)
        .request_async(&move |req| send(http.clone(), req))
        .await
        .map_err(classify)?;
    Ok(token_set(&resp))
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
    let mut form = vec![("token", token), ("token_type_hint", hint)];
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
    let resp = req
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| FlowError::Transient(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status.as_u16() == 429 {
        Err(FlowError::Transient(format!(
            "revocation answered HTTP {status}"
        )))
    } else {
        Err(FlowError::Rejected {
            code: format!("http_{}", status.as_u16()),
            description: "the revocation endpoint refused the request".into(),
        })
    }
}

/// RFC 6749 §2.3.1: client credentials in HTTP Basic are form-urlencoded first.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
