//! The one place where errors become HTTP: `application/problem+json` (RFC 9457) with a
//! stable `code` that apps can branch on. Details never carry a secret.

use super::openapi::Problem;
use crate::broker::{BrokerError, CallbackError};
use crate::states::StateError;
use crate::store::StoreError;
use crate::vault::VaultError;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use std::fmt;

/// The code of a problem answer, kept with the answer for what looks at it after
/// (`proxy::mark_own`).
#[derive(Debug, Clone, Copy)]
pub struct ProblemCode(pub &'static str);

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, documented machine-readable code (README, "Errors").
    pub code: &'static str,
    pub detail: String,
    retry_after: Option<u64>,
    challenge: Option<&'static str>,
    /// What few problems carry (boxed: errors travel in every handler's `Result`).
    more: Option<Box<More>>,
}

/// More members of the problem object (RFC 9457 §3.2), as `Problem` names them, and the
/// `Allow` header of a 405 (RFC 9110 §15.5.6).
#[derive(Debug, Default)]
struct More {
    attempts_left: Option<u32>,
    reconnect_url: Option<String>,
    account: Option<String>,
    allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
            challenge: None,
            more: None,
        }
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Default::default)
    }

    /// `wrong_secret`: tries left.
    pub fn attempts_left(mut self, n: u32) -> Self {
        self.more().attempts_left = Some(n);
        self
    }

    /// `needs_reauth`: where a person connects the account again.
    pub fn reconnect_url(mut self, url: impl Into<String>) -> Self {
        self.more().reconnect_url = Some(url.into());
        self
    }

    /// The account a failed connect flow was for.
    pub fn account(mut self, account: impl Into<String>) -> Self {
        self.more().account = Some(account.into());
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401 with the `WWW-Authenticate` challenge RFC 9110 asks for.
    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, detail);
        e.challenge = Some(
            if matches!(
                code,
                "namespace_not_allowed" | "account_not_allowed" | "notify_not_allowed"
            ) {
                r#"Bearer realm="oauthd", error="insufficient_scope""#
            } else {
                r#"Bearer realm="oauthd""#
            },
        );
        e
    }

    pub fn not_found_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// 405, naming the methods the resource takes (`allow`: "GET, POST").
    pub fn method_not_allowed(allow: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not accept that method",
        );
        e.more().allow = Some(allow.into());
        e
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

/// 5xx answers said in the log: at most 5 a second (an outage answers every request so).
static SERVER_ERRORS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more 5xx answers", 5);

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_server_error() {
            SERVER_ERRORS_LOGGED.warn(format_args!("{self}"));
        }
        let none = More::default();
        let more = self.more.as_deref().unwrap_or(&none);
        let body = Problem {
            kind: format!("urn:oauthd:problem:{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
            attempts_left: more.attempts_left,
            reconnect_url: more.reconnect_url.as_deref(),
            account: more.account.as_deref(),
        };
        let mut resp = HttpResponse::build(self.status);
        resp.content_type("application/problem+json")
            .insert_header((header::CACHE_CONTROL, "no-store"));
        if let Some(seconds) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let Some(allow) = &more.allow {
            resp.insert_header((header::ALLOW, allow.as_str()));
        }
        if let Some(challenge) = self.challenge {
            resp.insert_header((header::WWW_AUTHENTICATE, challenge));
        }
        let mut resp = resp.body(serde_json::to_string(&body).unwrap_or_default());
        resp.extensions_mut().insert(ProblemCode(self.code));
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Conflict(detail) = e {
            return ApiError::new(StatusCode::CONFLICT, "conflict", detail);
        }
        crate::metrics::STORAGE_ERRORS.inc();
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            e.for_callers(),
        )
        .retry_after(1)
    }
}

/// The system's random number generator failed: nothing was issued, whatever was being made.
fn entropy_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "entropy_unavailable",
        "the system random number generator failed; nothing was issued",
    )
    .retry_after(1)
}

/// A sealed value that does not open, as callers are told it.
const VAULT_FOR_CALLERS: &str = "sealed with a vault key this oauthd has not loaded, or \
    altered at rest, so it cannot be opened; oauthd's log says which, and what its operator \
    can do";

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        let detail = e.to_string();
        match e {
            StateError::NotFound | StateError::NothingToRevoke => {
                ApiError::new(StatusCode::NOT_FOUND, "state_not_found", detail)
            }
            StateError::Expired { .. } => ApiError::new(StatusCode::GONE, "state_expired", detail),
            StateError::TtlOutOfRange { .. } => ApiError::bad_request("invalid_ttl", detail),
            StateError::DataTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "data_too_large", detail)
            }
            StateError::NamespaceFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_states", detail)
                    .retry_after(60)
            }
            StateError::StoreFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "store_full", detail).retry_after(60)
            }
            StateError::KeyFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_key_states", detail)
                    .retry_after(60)
            }
            StateError::SubjectFull {
                retry_after_secs, ..
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subject_states",
                detail,
            )
            .retry_after(retry_after_secs),
            StateError::WrongSecret { attempts_left } => {
                ApiError::new(StatusCode::FORBIDDEN, "wrong_secret", detail)
                    .attempts_left(attempts_left)
            }
            StateError::SecretRequired => {
                ApiError::new(StatusCode::FORBIDDEN, "secret_required", detail)
            }
            StateError::NoSecret => ApiError::new(StatusCode::CONFLICT, "no_secret", detail),
            StateError::SlidingNotAllowed { .. } => {
                ApiError::bad_request("sliding_not_allowed", detail)
            }
            StateError::LifetimeOutOfRange { .. } => {
                ApiError::bad_request("invalid_max_lifetime", detail)
            }
            StateError::TooManyAttempts { .. } => {
                ApiError::bad_request("invalid_max_attempts", detail)
            }
            StateError::SubjectRequired => ApiError::bad_request("subject_required", detail),
            StateError::Entropy | StateError::Vault(VaultError::Entropy) => entropy_unavailable(),
            // What to do is the operator's (the log says it): an app is told what
            // happened, not to put keys back into files.
            StateError::Vault(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "vault_error",
                format!("the state's data: {VAULT_FOR_CALLERS}"),
            ),
            StateError::Store(e) => e.into(),
            StateError::DataNotYetChecked => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                detail,
            )
            .retry_after(1),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let detail = e.to_string();
        match e {
            BrokerError::UnknownProvider(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_provider", detail)
            }
            BrokerError::InvalidAccount(_) => ApiError::bad_request("invalid_account", detail),
            BrokerError::InvalidImport(_) => ApiError::bad_request("invalid_tokens", detail),
            BrokerError::DeviceFlowNotForApps(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "device_flow_not_allowed", detail)
            }
            BrokerError::TooManyConnections { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                detail,
            ),
            BrokerError::TooManyDeviceFlows { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_device_flows",
                detail,
            )
            .retry_after(60),
            BrokerError::ReturnToNotAllowed(_) => {
                ApiError::bad_request("return_to_not_allowed", detail)
            }
            BrokerError::ConnectionNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "connection_not_found", detail)
            }
            BrokerError::NeedsReauth { reconnect_url, .. } => {
                ApiError::new(StatusCode::CONFLICT, "needs_reauth", detail)
                    .reconnect_url(reconnect_url)
            }
            BrokerError::ProviderUnavailable {
                retry_after_secs, ..
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                detail,
            )
            .retry_after(retry_after_secs),
            BrokerError::ProviderRejected(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "provider_rejected", detail)
            }
            BrokerError::NoRefreshToken { .. } => {
                ApiError::new(StatusCode::CONFLICT, "no_refresh_token", detail)
            }
            BrokerError::IdToken(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "id_token_invalid", detail)
            }
            BrokerError::DeviceFlowUnsupported(_) => {
                ApiError::bad_request("device_flow_unsupported", detail)
            }
            BrokerError::PasteBackOnly(_) => ApiError::bad_request("paste_back_provider", detail),
            BrokerError::DeviceFlowNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "device_flow_not_found", detail)
            }
            BrokerError::Vault(VaultError::Entropy) => entropy_unavailable(),
            BrokerError::Vault(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "vault_error",
                VAULT_FOR_CALLERS,
            ),
            BrokerError::State(e) => e.into(),
            BrokerError::Store(e) => e.into(),
        }
    }
}

/// The HTTP status of a callback that stored nothing (its page's, and the paste-back
/// API's problem's).
pub fn callback_status(e: &CallbackError) -> u16 {
    use CallbackError::*;
    match e {
        UnknownProvider => 404,
        Expired { .. } => 410,
        FlowUnreadable(_) => 500,
        Storage(_) | NotStored(_) | ProviderUnreachable { .. } => 503,
        ClientRefused { .. } | ExchangeFailed { .. } | IdToken { .. } => 502,
        Denied { .. } | NotSignedIn { .. } | StarterRevoked { .. } | NotConfirmedHere { .. } => 403,
        TooManyConnections { .. } => 429,
        ByApp(inner) => match **inner {
            NoState | UnknownState => 400,
            _ => callback_status(inner),
        },
        NoState
        | UnknownState
        | Issuer { .. }
        | ProviderError { .. }
        | NoCode { .. }
        | PasteUnreadable
        | PasteOnly { .. }
        | AppFlowPasted { .. }
        | PasteElsewhere { .. }
        | PasteOtherFlow => 400,
    }
}

/// When a callback that stored nothing may be tried again with the same address: only
/// after a storage fault, which used nothing up (the state is taken in the same write
/// that failed). Other 503s (tokens the store refused, a provider out of reach) come after
/// the state was taken: the same address can only answer `unknown_state`.
pub fn callback_retry_after(e: &CallbackError) -> Option<u64> {
    matches!(e.unwrapped().0, CallbackError::Storage(_)).then_some(5)
}

/// A connect flow finished from a pasted address that stored nothing: the callback page's
/// status and words, with a stable code, and the account when starting again can help.
pub fn callback_problem(provider: &str, e: &CallbackError) -> ApiError {
    use CallbackError::*;
    let (status, _, detail) = super::callback::wording(provider, e);
    let (e, by_app) = e.unwrapped();
    let code = match e {
        UnknownProvider => "unknown_provider",
        NoState => "no_state",
        UnknownState => "unknown_state",
        Expired { .. } => "flow_expired",
        Storage(_) | NotStored(_) => {
            crate::metrics::STORAGE_ERRORS.inc();
            "storage_unavailable"
        }
        FlowUnreadable(_) => "flow_unreadable",
        ProviderUnreachable { .. } => "provider_unavailable",
        Issuer {
            problem: crate::broker::IssuerProblem::Wrong,
            ..
        } => "wrong_issuer",
        Issuer { .. } => "missing_issuer",
        Denied { .. } => "access_denied",
        ProviderError { .. } => "provider_error",
        NoCode { .. } => "no_code",
        ClientRefused { .. } => "client_refused",
        ExchangeFailed { .. } => "exchange_failed",
        IdToken { .. } => "id_token_invalid",
        PasteUnreadable => "paste_unreadable",
        PasteElsewhere { .. } => "paste_wrong_address",
        // Never from the page's paste (it finishes any of the operator's flows).
        PasteOtherFlow => "paste_other_flow",
        AppFlowPasted { .. } => "app_flow_pasted",
        // Never from a paste (it is refused before); named all the same.
        NotConfirmedHere { .. } => "not_confirmed_here",
        StarterRevoked { .. } => "key_revoked",
        TooManyConnections { .. } => "too_many_connections",
        // Never from a paste either: a paste is signed in, and is the way they ask for.
        NotSignedIn { .. } => "flow_needs_sign_in",
        PasteOnly { .. } => "paste_only",
        ByApp(_) => "flow_failed",
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut problem = ApiError::new(status, code, detail);
    if let Some(secs) = callback_retry_after(e) {
        problem = problem.retry_after(secs);
    }
    let account = match e {
        _ if by_app => None,
        Expired { account } | Denied { account, .. } => Some(account.as_str()),
        other => other.retry_account(),
    };
    match account {
        Some(a) => problem.account(a),
        None => problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random number generator that fails is told as such wherever it failed: a
    /// connect's state value or a seal's nonce, not a key the vault lacks.
    #[test]
    fn a_failed_random_number_generator_is_one_answer() {
        for e in [
            ApiError::from(BrokerError::Vault(VaultError::Entropy)),
            ApiError::from(StateError::Entropy),
            ApiError::from(StateError::Vault(VaultError::Entropy)),
            ApiError::from(BrokerError::State(StateError::Entropy)),
        ] {
            assert_eq!(
                (e.status, e.code),
                (StatusCode::SERVICE_UNAVAILABLE, "entropy_unavailable"),
                "{e:?}"
            );
            assert!(e.detail.contains("random number generator"), "{e:?}");
        }
        let lost = ApiError::from(BrokerError::Vault(VaultError::Corrupt));
        assert_eq!(lost.code, "vault_error");
    }

    /// Only a callback that used nothing up is told to come back: the others' state is
    /// spent, and the same address can only answer `unknown_state`.
    #[test]
    fn only_a_callback_that_met_a_storage_fault_is_to_be_tried_again() {
        let storage = || CallbackError::Storage("locked".into());
        assert_eq!(callback_retry_after(&storage()), Some(5));
        assert_eq!(
            callback_retry_after(&CallbackError::ByApp(Box::new(storage()))),
            Some(5)
        );
        for spent in [
            CallbackError::NotStored("refused".into()),
            CallbackError::ProviderUnreachable {
                account: "a".into(),
                message: "refused".into(),
            },
        ] {
            assert_eq!(callback_retry_after(&spent), None, "{spent:?}");
            let problem = callback_problem("p", &spent);
            assert_eq!(
                (problem.status, problem.retry_after_secs()),
                (StatusCode::SERVICE_UNAVAILABLE, None)
            );
        }
    }
}
