//! The device authorization grant (RFC 8628): starting it, and polling for the user's
//! approval.

use super::answer::{error_response, fit, lenient_token_set, names_an_error, usable, TokenSet};
use super::sent::{Sent, DESCRIPTION_MAX};
use super::{authed_post, FlowError, MAX_RESPONSE_BYTES};
use crate::oauth::provider::{ClientAuth, Provider};
use std::time::Duration;
use url::Url;
use zeroize::Zeroizing;

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
        .map_err(|e| FlowError::Transient(crate::oauth::with_causes(&e)))?;
    let status = resp.status();
    let body = crate::oauth::read_limited(resp, MAX_RESPONSE_BYTES)
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
        Err(e) => return DevicePoll::Failed(FlowError::Transient(crate::oauth::with_causes(&e))),
    };
    let status = resp.status();
    let body = match crate::oauth::read_limited(resp, MAX_RESPONSE_BYTES).await {
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
