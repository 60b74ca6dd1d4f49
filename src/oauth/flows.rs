//! The protocol calls: authorization URL (PKCE S256 always), code exchange, refresh
//! (RFC 6749 §6), revocation (RFC 7009). Built on the `oauth2` crate; one shared reqwest
//! client that never follows redirects and caps what a provider may send back.

use super::provider::{ClientAuth, Endpoints, Provider};
use super::token_text::{scope_fault, token_fault, token_type_fault};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, ExtraTokenFields,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

/// Largest token response accepted from a provider.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(answer)
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
        .map_err(|e| format!("cannot set up the HTTP client for providers: {e}"))
}

/// Tokens as a provider returned them. Redacted in `Debug`.
pub struct TokenSet {
    pub access_token: Zeroizing<String>,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub refresh_token: Option<Zeroizing<String>>,
    pub scopes: Option<Vec<String>>,
    /// The OpenID ID token, when the provider sent one (not verified yet).
    pub id_token: Option<Zeroizing<String>>,
    /// Why the access token cannot be handed out, when it cannot (`fit`; it is then
    /// empty): a refresh keeps the rest of such an answer, other grants refuse it.
    pub access_fault: Option<String>,
    /// When the request that got them was sent: `expires_in` counts from the provider's
    /// answer, which can come long after (a slow provider, a refresh waited for up to a
    /// minute), and a lifetime counted from its arrival would outlast the token.
    pub asked: std::time::Instant,
}

/// The fields of a token response beyond RFC 6749's: the OpenID `id_token`.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl std::fmt::Debug for IdTokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdTokenField([redacted])")
    }
}

impl ExtraTokenFields for IdTokenField {}

type ProviderTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

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

/// Where token-endpoint requests (code exchange, refresh) go: the network in the daemon;
/// tests put a function of their own here and script the provider's answers.
pub trait TokenEndpoint: Send + Sync {
    fn send<'a>(&'a self, req: oauth2::HttpRequest) -> TokenFuture<'a>;
}

pub type TokenFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, std::io::Error>> + Send + 'a>,
>;

/// A `TokenEndpoint` as oauth2's HTTP client. (A closure would do, but the future of a
/// request made through one is not `Send` for every lifetime, so it could not run as a
/// task of its own.) Keeps the seconds a 429 or 503 answer's `Retry-After` asked for.
struct Sender<'a> {
    endpoint: &'a dyn TokenEndpoint,
    asked_to_wait: std::sync::atomic::AtomicU64,
    /// The answer's HTTP status (0 before one came).
    status: std::sync::atomic::AtomicU16,
}

/// The longest a provider's `Retry-After` is followed: ten minutes, the longest oauthd's
/// own backoff waits (a maintenance page asking for a day would keep every token of the
/// provider's from being refreshed for that long, and apps' tokens would run out).
pub const MAX_PROVIDER_WAIT_SECS: u64 = 600;

impl<'a> Sender<'a> {
    fn new(endpoint: &'a dyn TokenEndpoint) -> Self {
        Sender {
            endpoint,
            asked_to_wait: Default::default(),
            status: Default::default(),
        }
    }

    fn status(&self) -> Option<reqwest::StatusCode> {
        let code = self.status.load(std::sync::atomic::Ordering::Relaxed);
        reqwest::StatusCode::from_u16(code).ok()
    }

    /// `error`, as `Throttled` when the answer asked to wait (an `invalid_grant` stays
    /// what it is: no wait helps it).
    fn throttled(&self, error: FlowError) -> FlowError {
        let secs = self
            .asked_to_wait
            .load(std::sync::atomic::Ordering::Relaxed);
        match error {
            FlowError::InvalidGrant(_) => error,
            FlowError::Rejected { ref code, .. } if refuses_client(code) => error,
            _ if secs == 0 => error,
            other => FlowError::Throttled {
                message: other.to_string(),
                retry_after_secs: secs,
            },
        }
    }
}

/// The seconds a `Retry-After` header asks for (RFC 9110 10.2.3: a number of seconds or
/// an HTTP date), at most `MAX_PROVIDER_WAIT_SECS`; `None` without one, or for a date
/// passed.
pub fn retry_after_secs(headers: &oauth2::http::HeaderMap) -> Option<u64> {
    let value = headers
        .get(oauth2::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let secs = match value.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => u64::MAX,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            u64::try_from((at.timestamp() - chrono::Utc::now().timestamp()).max(0)).ok()?
        }
    };
    (secs > 0).then_some(secs.min(MAX_PROVIDER_WAIT_SECS))
}

impl<'c> oauth2::AsyncHttpClient<'c> for Sender<'_> {
    type Error = std::io::Error;
    type Future = TokenFuture<'c>;

    fn call(&'c self, request: oauth2::HttpRequest) -> TokenFuture<'c> {
        Box::pin(async move {
            let mut answer = self.endpoint.send(request).await?;
            let status = answer.status().as_u16();
            self.status
                .store(status, std::sync::atomic::Ordering::Relaxed);
            if matches!(status, 429 | 503) {
                if let Some(secs) = retry_after_secs(answer.headers()) {
                    self.asked_to_wait
                        .store(secs, std::sync::atomic::Ordering::Relaxed);
                }
            }
            // An answer is read by what its body holds, whatever it is labelled: `oauth2`
            // refuses a 200 not labelled JSON, and providers have sent token answers as
            // text/plain or text/javascript. Refused, a refresh's answer lost the refresh
            // token a rotating provider had just retired the old one for.
            answer
                .headers_mut()
                .remove(oauth2::http::header::CONTENT_TYPE);
            Ok(answer)
        })
    }
}

/// The network, through the shared client (no redirects, a size cap on answers).
pub struct Network(pub reqwest::Client);

impl TokenEndpoint for Network {
    fn send<'a>(&'a self, req: oauth2::HttpRequest) -> TokenFuture<'a> {
        Box::pin(send(&self.0, req))
    }
}

/// Sends one request for the `oauth2` crate, through the shared client, with a size cap.
async fn send(
    http: &reqwest::Client,
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

/// What a request to a provider sent that must not come back in an error: the client
/// secret and the grant (a code and its verifier, a refresh token, a device code).
struct Sent<'a>(Vec<&'a str>, Option<String>);

/// What an HTTP Basic `Authorization` header carries for the client (base64 of the
/// form-encoded id and secret), when it has a secret.
fn basic_credentials(provider: &Provider) -> Option<String> {
    use base64::Engine;
    let secret = provider.client_secret.as_ref()?;
    let pair = format!(
        "{}:{}",
        form_encode(&provider.client_id),
        form_encode(secret)
    );
    Some(base64::engine::general_purpose::STANDARD.encode(pair))
}

impl<'a> Sent<'a> {
    fn new(provider: &'a Provider, grant: &[&'a str]) -> Sent<'a> {
        let secret = provider.client_secret.iter().map(|s| s.as_str());
        Sent(
            secret.chain(grant.iter().copied()).collect(),
            basic_credentials(provider),
        )
    }

    /// What was sent, long enough to be told apart from the letters of a text.
    fn secrets(&self) -> impl Iterator<Item = &str> {
        // Shorter values are any text's letters (and no secret at all).
        let basic = self.1.iter().map(String::as_str);
        self.0
            .iter()
            .copied()
            .chain(basic)
            .filter(|s| s.len() >= SHORTEST_SECRET)
    }

    /// A provider's error text, bounded and safe to log (`provider_text`), with what was
    /// sent taken out (as sent, and form-encoded): some servers echo it ("Invalid refresh
    /// token: <value>"), and this text is logged, stored with the connection and shown
    /// to apps and on the page. A text that still holds it in another form (encoded
    /// otherwise, cut, split by other characters) is not kept at all (`echoes`).
    fn text(&self, text: &str, max: usize) -> String {
        // Only what is kept is looked through, before control characters are written
        // out (their escapes would part a secret's characters).
        let kept = kept(&self.strip(text), max);
        if self.echoes(&kept) {
            return WITHHELD.to_owned();
        }
        super::provider_text(&kept, max)
    }

    /// `text` with what was sent, as sent and form-encoded, said as `[redacted]`.
    fn strip(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets() {
            for form in [secret.to_string(), form_encode(secret)] {
                if text.contains(&form) {
                    text = text.replace(&form, "[redacted]");
                }
            }
        }
        text
    }

    /// Whether `text` holds a run of `ECHO_RUN` letters and digits of something sent
    /// (all of it, if shorter), read case-blind and past any other characters, after
    /// percent- and JSON-unescaping, or of its base64 or hex. A short secret counts
    /// whole (a client secret of 7 characters came back in full); its encodings only
    /// from `ECHO_RUN` on (shorter, they are any text's letters).
    fn echoes(&self, text: &str) -> bool {
        let mut runs = std::collections::HashSet::new();
        let mut lengths = std::collections::BTreeSet::new();
        for secret in self.secrets() {
            for (nth, form) in echo::forms(secret).iter().enumerate() {
                let plain = echo::plain(form.as_bytes());
                let least = if nth == 0 { SHORTEST_SECRET } else { ECHO_RUN };
                if plain.len() < least {
                    continue;
                }
                let run = plain.len().min(ECHO_RUN);
                lengths.insert(run);
                runs.extend(plain.windows(run).map(<[u8]>::to_vec));
            }
        }
        let plain = echo::plain(text.as_bytes());
        lengths
            .iter()
            .any(|&run| plain.windows(run).any(|w| runs.contains(w)))
    }
}

/// The first `max` characters of `text`: what a provider's text keeps of it.
fn kept(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// How much of an OAuth error's code and description is kept.
const CODE_MAX: usize = 64;
const DESCRIPTION_MAX: usize = 300;

/// Said instead of a provider's text that still holds what oauthd sent it.
const WITHHELD: &str =
    "[not kept: the provider's text held a secret oauthd sent it, encoded or cut]";

/// How long a run of a secret's letters and digits `Sent::echoes` looks for: a random
/// secret's run of 8 is in no provider's own words (one chance in about 10^12 for each
/// pair of places), and a provider that echoes a secret cut short ("refresh token
/// e0RvQk1x... unknown") gives at least that much of it. (12 let cuts of 8 to 11 through.)
const ECHO_RUN: usize = 8;

/// The shortest value sent that is looked for in a provider's text, as sent and whole.
const SHORTEST_SECRET: usize = 4;

/// The forms a secret may come back in, and texts reduced to what those forms share.
mod echo {
    use base64::Engine;

    /// The secret, its hex, and its base64 at each of the three alignments it can have
    /// inside a longer encoded value (the characters its neighbours share left out).
    pub fn forms(secret: &str) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
        let mut forms = vec![secret.to_owned(), hex];
        for (lead, skip) in [(0usize, 0usize), (1, 2), (2, 3)] {
            let mut bytes = vec![0u8; lead];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = b64.encode(&bytes);
            let end = encoded.len().saturating_sub(2);
            forms.push(encoded.get(skip..end).unwrap_or_default().to_owned());
        }
        forms
    }

    /// `text`'s ASCII letters (lower-cased) and digits only, after percent escapes
    /// (twice, for a value encoded twice) and JSON's `\uXXXX` are undone.
    pub fn plain(text: &[u8]) -> Vec<u8> {
        let once = unescape(text, b'%', 2);
        let twice = unescape(&once, b'%', 2);
        unicode_escapes(&twice)
            .into_iter()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_lowercase())
            .collect()
    }

    /// `mark` followed by `digits` hex digits, read as the byte they name.
    fn unescape(text: &[u8], mark: u8, digits: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while let Some(&b) = text.get(i) {
            let hex = text.get(i + 1..i + 1 + digits);
            match hex.and_then(hex_value) {
                Some(v) if b == mark => {
                    out.push(u8::try_from(v).unwrap_or(b'?'));
                    i += 1 + digits;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    /// JSON's `\uXXXX`: the ASCII ones as their byte, the others left out.
    fn unicode_escapes(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while let Some(&b) = text.get(i) {
            let escaped = b == b'\\' && text.get(i + 1) == Some(&b'u');
            match text.get(i + 2..i + 6).and_then(hex_value) {
                Some(v) if escaped => {
                    if let Ok(ascii) = u8::try_from(v) {
                        out.push(ascii);
                    }
                    i += 6;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn hex_value(digits: &[u8]) -> Option<u32> {
        let text = std::str::from_utf8(digits).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(text, 16).ok()
    }
}

fn classify<E: std::error::Error>(
    err: RequestTokenError<E, oauth2::basic::BasicErrorResponse>,
    sent: &Sent<'_>,
) -> FlowError {
    match err {
        RequestTokenError::ServerResponse(r) => provider_error(
            r.error().as_ref(),
            r.error_description().map(String::as_str),
            sent,
        ),
        RequestTokenError::Request(e) => FlowError::Transient(super::with_causes(&e)),
        RequestTokenError::Parse(e, body) => {
            // GitHub answers errors with 200: what names an error is that error.
            if names_an_error(&body) {
                return error_response(reqwest::StatusCode::BAD_REQUEST, &body, sent);
            }
            // The parser's text quotes the value it met, which can be what was sent.
            FlowError::Transient(format!(
                "malformed token response: the token endpoint answered something that is not a token response (a mistyped token_url answers its 404 page so): {}",
                sent.text(&e.to_string(), DESCRIPTION_MAX)
            ))
        }
        RequestTokenError::Other(e) => FlowError::Transient(e),
    }
}

/// A token endpoint's answer: the tokens, or why not. An answer the standard parser
/// refuses is read as providers write them (`lenient_token_set`) before it is given up:
/// a refresh's answer lost over the shape of one field would lose the refresh token a
/// rotating provider has just retired the old one for.
///
/// Only a 2xx answer holds tokens: `oauth2` hands any other status whose body is no OAuth
/// error over as unparsed, and a 500 or 401 whose body looked like tokens was taken as a
/// refresh that worked (storing a refresh token of that body's in place of a good one).
fn answered<E: std::error::Error>(
    response: Result<ProviderTokenResponse, RequestTokenError<E, BasicErrorResponse>>,
    status: Option<reqwest::StatusCode>,
    sent: &Sent<'_>,
    asked: std::time::Instant,
) -> Result<TokenSet, FlowError> {
    match response {
        Ok(r) => Ok(fit(token_set(&r, asked))),
        Err(RequestTokenError::Parse(_, body)) if status.is_some_and(|s| !s.is_success()) => {
            let status = status.unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
            Err(error_response(status, &body, sent))
        }
        Err(RequestTokenError::Parse(e, body)) => match lenient_token_set(&body, asked) {
            Ok(tokens) if !names_an_error(&body) => Ok(fit(tokens)),
            _ => Err(classify::<E>(RequestTokenError::Parse(e, body), sent)),
        },
        Err(e) => Err(classify(e, sent)),
    }
}

/// A token answer as it is kept: a provider's slips that harm nothing are mended, and an
/// access token unfit to hand out is said in `access_fault` (the rest of the answer still
/// counts: a refresh keeps the new refresh token a rotating provider has just retired the
/// old one for). Tokens lose surrounding whitespace (a line break after one); an empty
/// `refresh_token` is none sent (the stored one is kept, as for an answer without one); a
/// `token_type` that is no HTTP token is taken as Bearer (what the proxy sends anyway);
/// scopes are words apart by any whitespace, less any holding a control character. A
/// refresh token goes only into form bodies, so any text is fit; an answer with no access
/// token at all keeps none.
fn fit(mut tokens: TokenSet) -> TokenSet {
    let trimmed = |t: &Zeroizing<String>| {
        let inner = t.trim_matches(|c: char| c.is_ascii_whitespace());
        (inner.len() != t.len()).then(|| Zeroizing::new(inner.to_owned()))
    };
    if let Some(t) = trimmed(&tokens.access_token) {
        tokens.access_token = t;
    }
    if let Some(t) = tokens.refresh_token.as_ref().and_then(trimmed) {
        tokens.refresh_token = Some(t);
    }
    if tokens.refresh_token.as_ref().is_some_and(|t| t.is_empty()) {
        tokens.refresh_token = None;
    }
    let token_type = tokens.token_type.trim();
    tokens.token_type = if token_type_fault(token_type).is_none() {
        token_type.to_owned()
    } else {
        "Bearer".to_owned()
    };
    tokens.scopes = tokens.scopes.take().map(|scopes| {
        scopes
            .iter()
            .flat_map(|s| s.split_whitespace())
            .filter(|w| scope_fault(w).is_none())
            .map(str::to_owned)
            .collect()
    });
    if tokens.access_token.is_empty() {
        // No access token is no token answer: nothing in it is kept, its refresh token
        // included (a broken answer's is as likely junk as a rotated one).
        tokens.refresh_token = None;
    }
    if let Some(fault) = token_fault("access_token", &tokens.access_token) {
        // Never handed out or stored as it is.
        tokens.access_token = Zeroizing::new(String::new());
        tokens.access_fault = Some(format!("malformed token response: {fault}"));
    }
    tokens
}

/// Tokens whose access token may be handed out, or why not.
pub fn usable(tokens: TokenSet) -> Result<TokenSet, FlowError> {
    match &tokens.access_fault {
        None => Ok(tokens),
        Some(fault) => Err(FlowError::Transient(fault.clone())),
    }
}

/// A token response with its fields as some providers write them: `expires_in` as text
/// (`"3600"`, Azure AD's v1 endpoints) or with a fraction, `scope` as a list, no
/// `token_type` (taken as Bearer). An `expires_in` that is no number of seconds is taken
/// as not said. Takes every answer the standard parser takes; refuses one without an
/// `access_token`.
fn lenient_token_set(
    body: &[u8],
    asked: std::time::Instant,
) -> Result<TokenSet, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Loose {
        access_token: String,
        #[serde(default)]
        token_type: Option<String>,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
        #[serde(default)]
        refresh_token: Option<String>,
        #[serde(default)]
        scope: Option<serde_json::Value>,
        #[serde(default)]
        id_token: Option<String>,
    }
    let loose: Loose = serde_json::from_slice(body)?;
    let seconds = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| whole(n.as_f64()?)),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| whole(s.parse().ok()?))
        }
        _ => None,
    };
    let scopes = loose.scope.and_then(|v| match v {
        serde_json::Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    });
    Ok(TokenSet {
        access_token: Zeroizing::new(loose.access_token),
        token_type: match loose.token_type {
            Some(t) if !t.eq_ignore_ascii_case("bearer") => t,
            _ => "Bearer".to_owned(),
        },
        expires_in: lifetime(
            loose
                .expires_in
                .as_ref()
                .and_then(seconds)
                .map(Duration::from_secs),
        ),
        refresh_token: loose.refresh_token.map(Zeroizing::new),
        scopes,
        id_token: loose.id_token.map(Zeroizing::new),
        access_fault: None,
        asked,
    })
}

/// Seconds given with a fraction, as whole ones; `None` for a negative or no number.
fn whole(seconds: f64) -> Option<u64> {
    // `as` saturates: an enormous lifetime is years, as one given whole is.
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

/// A lifetime of 0 is taken as not said: a token that lasts no time would be refreshed
/// at every call (some providers send 0 for "does not expire").
fn lifetime(expires_in: Option<Duration>) -> Option<Duration> {
    expires_in.filter(|d| !d.is_zero())
}

fn token_set(r: &ProviderTokenResponse, asked: std::time::Instant) -> TokenSet {
    TokenSet {
        access_token: Zeroizing::new(r.access_token().secret().clone()),
        token_type: match r.token_type() {
            oauth2::basic::BasicTokenType::Bearer => "Bearer".to_owned(),
            other => other.as_ref().to_owned(),
        },
        expires_in: lifetime(r.expires_in()),
        refresh_token: r
            .refresh_token()
            .map(|t| Zeroizing::new(t.secret().clone())),
        scopes: r
            .scopes()
            .map(|s| s.iter().map(|x| x.to_string()).collect()),
        id_token: r.extra_fields().id_token.clone().map(Zeroizing::new),
        access_fault: None,
        asked,
    }
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
        Some("invalid_token") if bad_request => Ok(()),
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
fn authed_post(
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

/// What a device authorization request (RFC 8628 §3.2) returned, normalised.
pub struct DeviceAuthorization {
    pub device_code: Zeroizing<String>,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Option<Duration>,
}

/// Reads a field under its RFC name or the spellings providers use instead
/// (camelCase from Tidal, `verification_url` from Google).
fn field<'a>(v: &'a serde_json::Value, names: &[&str]) -> Option<&'a serde_json::Value> {
    names
        .iter()
        .find_map(|n| v.get(*n))
        .filter(|x| !x.is_null())
}

fn with_scheme(uri: String) -> String {
    if uri.starts_with("https://") || uri.starts_with("http://") {
        uri
    } else {
        // Tidal answers "link.tidal.com/ABCDE": a URL a person cannot click.
        format!("https://{uri}")
    }
}

/// Parses a device authorization response in any of the shapes seen from providers.
pub fn parse_device_authorization(body: &[u8]) -> Result<DeviceAuthorization, FlowError> {
    let bad =
        |m: &str| FlowError::Transient(format!("malformed device authorization response: {m}"));
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    let text = |names: &[&str]| field(&v, names).and_then(|x| x.as_str()).map(str::to_owned);
    let seconds = |names: &[&str]| {
        field(&v, names).and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok()))
    };
    let device_code = text(&["device_code", "deviceCode"]).ok_or_else(|| bad("no device_code"))?;
    let user_code = text(&["user_code", "userCode"]).ok_or_else(|| bad("no user_code"))?;
    let verification_uri = text(&[
        "verification_uri",
        "verificationUri",
        "verification_url",
        "verificationUrl",
    ])
    .ok_or_else(|| bad("no verification_uri"))?;
    let expires_in = seconds(&["expires_in", "expiresIn"]).ok_or_else(|| bad("no expires_in"))?;
    Ok(DeviceAuthorization {
        device_code: Zeroizing::new(device_code),
        user_code,
        verification_uri: with_scheme(verification_uri),
        verification_uri_complete: text(&["verification_uri_complete", "verificationUriComplete"])
            .map(with_scheme),
        expires_in: Duration::from_secs(expires_in.clamp(1, 24 * 3600)),
        interval: seconds(&["interval"]).map(|s| Duration::from_secs(s.clamp(1, 600))),
    })
}

/// Starts a device authorization grant (RFC 8628 §3.1).
pub async fn device_authorize(
    http: &reqwest::Client,
    provider: &Provider,
    url: &Url,
) -> Result<DeviceAuthorization, FlowError> {
    let scope = provider.scopes.join(" ");
    let mut params = vec![];
    if !scope.is_empty() {
        params.push(("scope", scope.as_str()));
    }
    if provider.client_auth == ClientAuth::Basic {
        params.push(("client_id", provider.client_id.as_str()));
    }
    let resp = authed_post(http, provider, url, &params)
        .send()
        .await
        .map_err(|e| FlowError::Transient(super::with_causes(&e)))?;
    let status = resp.status();
    let body = super::read_limited(resp, MAX_RESPONSE_BYTES)
        .await
        .map_err(FlowError::Transient)?;
    if !status.is_success() {
        return Err(error_response(status, &body, &Sent::new(provider, &[])));
    }
    parse_device_authorization(&body)
}

/// One poll of the token endpoint for a device code (RFC 8628 §3.4–3.5).
pub enum DevicePoll {
    /// `authorization_pending`: ask again after the interval.
    Pending,
    /// `slow_down`: ask again after the interval plus 5 seconds, from now on.
    SlowDown,
    Done(TokenSet),
    Denied(String),
    Expired,
    Failed(FlowError),
}

/// Whether a token endpoint's answer is an OAuth error (`{"error": "..."}`), whatever its
/// status: GitHub sends its errors (`authorization_pending`, `bad_refresh_token`, ...) with
/// 200.
fn names_an_error(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Answer>(body).is_ok_and(|a| a.error.is_some_and(|e| e.is_string()))
}

fn error_response(status: reqwest::StatusCode, body: &[u8], sent: &Sent<'_>) -> FlowError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
    match code {
        "" if status.is_server_error() || status.as_u16() == 429 => {
            FlowError::Transient(format!("HTTP {status}"))
        }
        "" => FlowError::Transient(format!("HTTP {status} without an OAuth error")),
        code => provider_error(
            code,
            v.get("error_description").and_then(|e| e.as_str()),
            sent,
        ),
    }
}

/// An OAuth error's code and description as a provider sent them, each without what was
/// sent (`Sent::text`). A secret split between the two (its start in the code, the rest
/// in the description) is looked for in both together: then neither is kept but a code
/// oauthd acts on.
fn provider_error(code: &str, description: Option<&str>, sent: &Sent<'_>) -> FlowError {
    let raw = description.unwrap_or("no description");
    let (code_left, raw_left) = (sent.strip(code), sent.strip(raw));
    // What was sent as it was, but across the two: not found in either alone.
    let across = sent.strip(&format!("{code}{raw}")) != format!("{code_left}{raw_left}");
    let apart = kept(&code_left, CODE_MAX) + &kept(&raw_left, DESCRIPTION_MAX);
    if across || sent.echoes(&apart) {
        let known = matches!(
            code,
            "invalid_grant" | "bad_refresh_token" | "bad_verification_code" | "invalid_client"
        );
        let code = if known { code } else { "not_kept" };
        return rejected(code, WITHHELD.to_owned(), sent);
    }
    rejected(code, sent.text(raw, DESCRIPTION_MAX), sent)
}

/// What an `invalid_client` error adds to the provider's words, on every path but the
/// check that already says it.
const CLIENT_ADVICE: &str = "; the provider does not accept oauthd's client: check the \
    provider's client_id and client_secret in the config (`oauthd check` tries them)";

/// A token endpoint's OAuth error, by its code.
fn rejected(code: &str, description: String, sent: &Sent<'_>) -> FlowError {
    match code {
        // GitHub's names for a refresh token or a code that is no good (RFC 6749's
        // invalid_grant).
        "invalid_grant" | "bad_refresh_token" | "bad_verification_code" => {
            FlowError::InvalidGrant(description)
        }
        // Said on every path (a refresh, a device flow, a revocation), not only on the
        // callback's page: the fix is the client's id and secret in oauthd's config.
        "invalid_client" => FlowError::Rejected {
            code: "invalid_client".into(),
            description: format!("{description}{CLIENT_ADVICE}"),
        },
        other => FlowError::Rejected {
            code: sent.text(other, CODE_MAX),
            description,
        },
    }
}

/// Asks the token endpoint once whether the user approved the device code.
pub async fn device_poll(
    http: &reqwest::Client,
    provider: &Provider,
    token_url: &Url,
    device_code: &str,
) -> DevicePoll {
    let mut params = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", device_code),
    ];
    if provider.client_auth == ClientAuth::Basic {
        params.push(("client_id", provider.client_id.as_str()));
    }
    let asked = std::time::Instant::now();
    let resp = match authed_post(http, provider, token_url, &params).send().await {
        Ok(r) => r,
        Err(e) => return DevicePoll::Failed(FlowError::Transient(super::with_causes(&e))),
    };
    let status = resp.status();
    let body = match super::read_limited(resp, MAX_RESPONSE_BYTES).await {
        Ok(b) => b,
        Err(e) => return DevicePoll::Failed(FlowError::Transient(e)),
    };
    let sent = Sent::new(provider, &[device_code]);
    if status.is_success() && !names_an_error(&body) {
        // An answer whose access token is unfit ends the flow: the device code is spent.
        return match lenient_token_set(&body, asked).map(fit).map(usable) {
            Ok(Ok(tokens)) => DevicePoll::Done(tokens),
            Ok(Err(unfit)) => DevicePoll::Failed(FlowError::Rejected {
                code: "malformed_token_response".into(),
                description: unfit.to_string(),
            }),
            Err(e) => DevicePoll::Failed(FlowError::Transient(format!(
                "malformed token response: the token endpoint answered HTTP {status} with something that is not a token response: {}",
                sent.text(&e.to_string(), DESCRIPTION_MAX)
            ))),
        };
    }
    let status = if status.is_success() {
        reqwest::StatusCode::BAD_REQUEST
    } else {
        status
    };
    match error_response(status, &body, &sent) {
        FlowError::Rejected { code, description } => match code.as_str() {
            "authorization_pending" => DevicePoll::Pending,
            "slow_down" => DevicePoll::SlowDown,
            // Microsoft's name for the user declining.
            "access_denied" | "authorization_declined" => DevicePoll::Denied(description),
            "expired_token" => DevicePoll::Expired,
            _ => DevicePoll::Failed(FlowError::Rejected { code, description }),
        },
        other => DevicePoll::Failed(other),
    }
}

/// RFC 6749 §2.3.1: client credentials in HTTP Basic are form-urlencoded first.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::ProviderConfig;

    fn echoing_provider() -> Provider {
        let config = ProviderConfig {
            authorization_url: Some("https://provider.test/authorize".into()),
            token_url: Some("https://provider.test/token".into()),
            client_id: Some("client".into()),
            client_secret: Some("s3cret/with+signs~\"q\\x".into()),
            ..Default::default()
        };
        Provider::from_config("p", &config).unwrap()
    }

    /// A provider's text that holds what was sent in another form than as sent or
    /// form-encoded (each of these reached the log, the store, events and apps) is not
    /// kept; its own words are, and a secret's known code still counts.
    #[test]
    fn a_providers_text_holding_a_secret_encoded_or_cut_is_not_kept() {
        use base64::Engine;
        let provider = echoing_provider();
        let refresh = "rt-Zx9_Qw7.Lm3-Pk8~Vb2/Nc5+Hd1=";
        let access = "at-Gh4Jk6Lm8Np0Qr2St4Uv6Wx8";
        let sent = Sent::new(&provider, &[refresh, access]);
        let secret = provider.client_secret.as_deref().unwrap().to_owned();
        let every_byte: String = refresh.bytes().map(|b| format!("%{b:02X}")).collect();
        let lower_hex: String = refresh.bytes().map(|b| format!("%{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(refresh);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(refresh);
        let zero_width: String = refresh.chars().flat_map(|c| [c, '\u{200b}']).collect();
        let json_escaped = serde_json::to_string(&secret).unwrap();
        let unicode_escaped: String = refresh
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        for echoed in [
            every_byte,
            lower_hex,
            refresh.replace('~', "%7E").replace('/', "%2F"),
            b64.clone(),
            b64url,
            b64.to_uppercase(),
            format!("xx{}", &b64[4..]),
            refresh[..refresh.len() - 3].to_owned(),
            refresh.to_uppercase(),
            zero_width,
            json_escaped.clone(),
            unicode_escaped,
            format!("{secret:?}"),
            access.to_lowercase(),
            base64::engine::general_purpose::STANDARD.encode(&secret),
            refresh.bytes().map(|b| format!("{b:02x}")).collect(),
        ] {
            let text = sent.text(&format!("bad token {echoed} given"), 300);
            assert_eq!(text, WITHHELD, "{echoed}");
        }
        // The access token a refresh replaces, as it is: taken out as what was sent is.
        assert_eq!(
            sent.text(&format!("token {access} expired"), 300),
            "token [redacted] expired"
        );
        // Split between the code and the description.
        let (head, tail) = refresh.split_at(14);
        match provider_error(head, Some(tail), &sent) {
            FlowError::Rejected { code, description } => {
                assert_eq!(
                    (code.as_str(), description.as_str()),
                    ("not_kept", WITHHELD)
                );
            }
            other => panic!("{other:?}"),
        }
        match provider_error(
            "invalid_grant",
            Some(&format!("token {}", &refresh[2..])),
            &sent,
        ) {
            FlowError::InvalidGrant(description) => assert_eq!(description, WITHHELD),
            other => panic!("{other:?}"),
        }
        // A long explanation keeps its code and its first 300 characters.
        let long = format!(
            "AADSTS700082: The refresh token has expired. {}",
            "Trace ID: 0f1e2d3c. ".repeat(30)
        );
        match provider_error("invalid_request", Some(&long), &sent) {
            FlowError::Rejected { code, description } => {
                assert_eq!(code, "invalid_request");
                assert!(description.starts_with("AADSTS700082"), "{description}");
            }
            other => panic!("{other:?}"),
        }
        // The provider's own words stay.
        for words in [
            "The refresh token is invalid, expired or revoked",
            "Invalid client secret provided for client 'client'",
            "AADSTS70008: The provided authorization code or refresh token has expired due to inactivity. Trace ID: 4f2b9c1e-7d3a-4e8b-9c5f-2a1b3c4d5e6f",
        ] {
            assert_eq!(sent.text(words, 300), words);
        }
    }

    #[test]
    fn a_providers_error_text_loses_what_was_sent_as_sent_and_form_encoded() {
        let config = ProviderConfig {
            authorization_url: Some("https://provider.test/authorize".into()),
            token_url: Some("https://provider.test/token".into()),
            client_id: Some("client".into()),
            client_secret: Some("s3cret/with+signs".into()),
            ..Default::default()
        };
        let provider = Provider::from_config("p", &config).unwrap();
        let sent = Sent::new(&provider, &["device-code-0123", "abc"]);
        let basic = basic_credentials(&provider).unwrap();
        let text = sent.text(
            &format!("code device-code-0123 from client s3cret%2Fwith%2Bsigns (s3cret/with+signs) is abc; Basic {basic}"),
            300,
        );
        assert_eq!(
            text,
            "code [redacted] from client [redacted] ([redacted]) is abc; Basic [redacted]"
        );
    }

    /// A secret cut short in a provider's text (its first 8 to 11 characters came back
    /// whole), and a short client secret echoed whole (7 characters), are not kept: the
    /// first reached the log, the store, events and apps, the second as it was.
    #[test]
    fn a_secret_cut_short_or_a_short_one_is_not_kept() {
        let config = ProviderConfig {
            authorization_url: Some("https://provider.test/authorize".into()),
            token_url: Some("https://provider.test/token".into()),
            client_id: Some("client".into()),
            client_secret: Some("Sh0rt7x".into()),
            ..Default::default()
        };
        let provider = Provider::from_config("p", &config).unwrap();
        let refresh = "e0RvQk1xqo-0mL-0B5Tz9Wv3Ys7Ua1";
        let sent = Sent::new(&provider, &[refresh]);
        for cut in [8, 9, 11] {
            let text = sent.text(
                &format!("refresh token {}... unknown", &refresh[..cut]),
                300,
            );
            assert_eq!(text, WITHHELD, "{cut}");
        }
        // 9 of its letters and digits, parted by dashes.
        let text = sent.text("refresh token xqo-0mL-0B5 unknown", 300);
        assert_eq!(text, WITHHELD);
        let text = sent.text("client secret Sh0rt7x does not match", 300);
        assert_eq!(text, "client secret [redacted] does not match");
        let text = sent.text("client secret S-h-0-r-t-7-x does not match", 300);
        assert_eq!(text, WITHHELD);
        // The provider's own words stay.
        let words = "The refresh token is invalid, expired or revoked (client 'client')";
        assert_eq!(sent.text(words, 300), words);
    }
}
