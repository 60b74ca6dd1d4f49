//! How requests reach a token endpoint: the network in the daemon, a script in tests; and
//! the wait a provider's `Retry-After` asks for.

use super::{refuses_client, FlowError, MAX_RESPONSE_BYTES};

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
pub(super) struct Sender<'a> {
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
    pub(super) fn new(endpoint: &'a dyn TokenEndpoint) -> Self {
        Sender {
            endpoint,
            asked_to_wait: Default::default(),
            status: Default::default(),
        }
    }

    pub(super) fn status(&self) -> Option<reqwest::StatusCode> {
        let code = self.status.load(std::sync::atomic::Ordering::Relaxed);
        reqwest::StatusCode::from_u16(code).ok()
    }

    /// `error`, as `Throttled` when the answer asked to wait (an `invalid_grant` stays
    /// what it is: no wait helps it).
    pub(super) fn throttled(&self, error: FlowError) -> FlowError {
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

/// What a token request's error starts with when the request may have reached the
/// provider (a connection was made) and no whole answer came back: a refresh the provider
/// carried out all the same spent the refresh token it was sent.
pub const NO_ANSWER: &str = "no answer came to the request sent";

/// `NO_ANSWER` and why, as the I/O error oauth2's client passes on.
fn unanswered(why: &str) -> std::io::Error {
    std::io::Error::other(format!("{NO_ANSWER} ({why})"))
}

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
        .map_err(|e| match e.is_connect() {
            true => std::io::Error::other(crate::oauth::with_causes(&e)),
            false => unanswered(&crate::oauth::with_causes(&e)),
        })?;
    let status = resp.status();
    let headers = resp.headers().clone();
    // A success whose body does not come whole was carried out all the same (a refresh's
    // spent the refresh token sent); an error answer was not.
    let body = crate::oauth::read_body(resp, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| match (status.is_success(), e) {
            (true, crate::oauth::BodyError::Cut(why)) => {
                unanswered(&format!("its answer was cut off: {why}"))
            }
            (true, e) => unanswered(&format!("its answer could not be read: {e}")),
            (false, e) => std::io::Error::other(e.to_string()),
        })?;
    let mut out = oauth2::http::Response::builder().status(status);
    if let Some(h) = out.headers_mut() {
        *h = headers;
    }
    out.body(body).map_err(std::io::Error::other)
}
