//! What a token endpoint's answer means: the tokens (read as providers write them, and
//! mended where a slip harms nothing), or the error, said without what was sent.

use super::sent::{kept, Sent, CODE_MAX, DESCRIPTION_MAX, WITHHELD};
use super::FlowError;
use crate::oauth::token_text::{scope_fault, token_fault, token_type_fault};
use oauth2::basic::{BasicErrorResponse, BasicTokenType};
use oauth2::{ExtraTokenFields, RequestTokenError, StandardTokenResponse, TokenResponse};
use std::time::Duration;
use zeroize::Zeroizing;

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

pub(super) type ProviderTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

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

/// `status`: the answer's, when one came.
fn classify<E: std::error::Error>(
    err: RequestTokenError<E, oauth2::basic::BasicErrorResponse>,
    status: Option<reqwest::StatusCode>,
    sent: &Sent<'_>,
) -> FlowError {
    match err {
        RequestTokenError::ServerResponse(r) => answered_error(
            status,
            r.error().as_ref(),
            r.error_description().map(String::as_str),
            sent,
        ),
        RequestTokenError::Request(e) => FlowError::Transient(crate::oauth::with_causes(&e)),
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
pub(super) fn answered<E: std::error::Error>(
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
            _ => Err(classify::<E>(
                RequestTokenError::Parse(e, body),
                status,
                sent,
            )),
        },
        Err(e) => Err(classify(e, status, sent)),
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
pub(super) fn fit(mut tokens: TokenSet) -> TokenSet {
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
pub(super) fn lenient_token_set(
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

/// Whether a token endpoint's answer is an OAuth error (`{"error": "..."}`), whatever its
/// status: GitHub sends its errors (`authorization_pending`, `bad_refresh_token`, ...) with
/// 200.
pub(super) fn names_an_error(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Answer>(body).is_ok_and(|a| a.error.is_some_and(|e| e.is_string()))
}

pub(super) fn error_response(
    status: reqwest::StatusCode,
    body: &[u8],
    sent: &Sent<'_>,
) -> FlowError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
    match code {
        "" if temporary(Some(status), code) => FlowError::Transient(format!("HTTP {status}")),
        "" => FlowError::Transient(format!("HTTP {status} without an OAuth error")),
        code => answered_error(
            Some(status),
            code,
            v.get("error_description").and_then(|e| e.as_str()),
            sent,
        ),
    }
}

/// Whether an OAuth error answered with `status` is the provider's trouble, not a
/// refusal: RFC 6749's codes for it, or a 5xx or 429 (a device flow given up over a
/// `503 {"error":"temporarily_unavailable"}` threw a person's approval away) unless its
/// code is one a flow acts on: a `429 slow_down` slows the polling down (RFC 8628 3.5),
/// a declined or expired device code ends the flow, a dead grant or a refused client is
/// said as such, whatever the status.
fn temporary(status: Option<reqwest::StatusCode>, code: &str) -> bool {
    const ACTED_ON: &[&str] = &[
        "authorization_pending",
        "slow_down",
        "access_denied",
        "authorization_declined",
        "expired_token",
        "invalid_grant",
        "bad_refresh_token",
        "bad_verification_code",
        "invalid_client",
    ];
    matches!(code, "temporarily_unavailable" | "server_error")
        || (status.is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
            && !ACTED_ON.contains(&code))
}

/// An OAuth error answered with `status` (`None`: not known): `FlowError::Transient`
/// when it is `temporary`, with the provider's words as `provider_error` keeps them,
/// else what `provider_error` makes of it.
fn answered_error(
    status: Option<reqwest::StatusCode>,
    code: &str,
    description: Option<&str>,
    sent: &Sent<'_>,
) -> FlowError {
    let error = provider_error(code, description, sent);
    if !temporary(status, code) {
        return error;
    }
    let status = status.map_or_else(|| "an error".to_owned(), |s| format!("HTTP {s}"));
    FlowError::Transient(match error {
        FlowError::Rejected { code, description } => format!("{status} ({code}): {description}"),
        FlowError::InvalidGrant(description) => format!("{status} (invalid_grant): {description}"),
        other => format!("{status}: {other}"),
    })
}

/// An OAuth error's code and description as a provider sent them, each without what was
/// sent (`Sent::text`). A secret split between the two (its start in the code, the rest
/// in the description) is looked for in both together: then neither is kept but a code
/// oauthd acts on.
pub(super) fn provider_error(code: &str, description: Option<&str>, sent: &Sent<'_>) -> FlowError {
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
pub(super) const CLIENT_ADVICE: &str = "; the provider does not accept oauthd's client: check the \
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

#[cfg(test)]
mod tests {
    use super::super::sent::tests::provider_with_secret;
    use super::*;
    use reqwest::StatusCode;

    /// A 5xx or 429 is the provider's trouble unless its body names an error a flow acts
    /// on, and so are RFC 6749's codes for it; any other error is a refusal, kept as the
    /// provider said it, and the secrets sent stay out of either.
    #[test]
    fn a_providers_trouble_is_temporary_whatever_its_body_names() {
        let provider = provider_with_secret("the-client-secret");
        let sent = Sent::new(&provider, &["the-device-code"]);
        let body = |code: &str| {
            serde_json::json!({"error": code, "error_description": "try later, the-device-code"})
                .to_string()
        };
        for (status, code) in [
            (503, "temporarily_unavailable"),
            (500, "server_error"),
            (502, "upstream_down"),
            (429, "rate_limit_exceeded"),
            (400, "temporarily_unavailable"),
            (400, "server_error"),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            let error = error_response(status, body(code).as_bytes(), &sent);
            let FlowError::Transient(said) = &error else {
                panic!("{status} {code}: {error:?}");
            };
            assert!(
                said.starts_with(&format!("HTTP {status} ({code}): try later")),
                "{said}"
            );
            assert!(!said.contains("the-device-code"), "{said}");
        }
        // What a flow acts on, whatever the status: a 429 slow_down still slows down.
        for (status, code) in [
            (400, "invalid_client"),
            (401, "invalid_client"),
            (500, "invalid_client"),
            (400, "slow_down"),
            (429, "slow_down"),
            (503, "access_denied"),
            (500, "expired_token"),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            let error = error_response(status, body(code).as_bytes(), &sent);
            assert!(
                matches!(&error, FlowError::Rejected { code: c, .. } if c == code),
                "{status} {code}: {error:?}"
            );
        }
        for status in [StatusCode::BAD_REQUEST, StatusCode::SERVICE_UNAVAILABLE] {
            let error = error_response(status, body("invalid_grant").as_bytes(), &sent);
            assert!(matches!(error, FlowError::InvalidGrant(_)), "{error:?}");
        }
    }
}
