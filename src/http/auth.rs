//! `Authorization: Bearer <API key>` on every `/v1` route.

use super::problem::ApiError;
use super::AppState;
use crate::apikeys;
use crate::namespace::Namespace;
use crate::store::ApiKeyRecord;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

/// The app calling, identified by its API key.
pub struct Caller(pub std::sync::Arc<ApiKeyRecord>);

impl Caller {
    /// 401 unless the key may use `ns` (keys can be limited to namespace patterns).
    pub fn require_namespace(&self, ns: &Namespace) -> Result<(), ApiError> {
        if apikeys::may_use(&self.0, ns) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "namespace_not_allowed",
                format!("this API key may not use namespace {ns}"),
            ))
        }
    }
}

impl Caller {
    /// Whether the key may reach connections of `provider` (namespace `provider:<name>`).
    pub fn may_use_provider(&self, provider: &str) -> bool {
        apikeys::may_use_provider(&self.0, provider)
    }

    /// 404 for a name no provider can have, then 401 when the key may not use `provider`
    /// (configured or not: a key limited to other providers learns nothing of which are),
    /// else 404 for one that is not configured.
    pub fn require_provider(&self, app: &AppState, provider: &str) -> Result<(), ApiError> {
        self.require_provider_scope(provider)?;
        app.broker.provider(provider)?;
        Ok(())
    }

    /// Whether the key may reach connections of `account` (keys made with `--account`).
    pub fn may_use_account(&self, account: &str) -> bool {
        apikeys::may_use_account(&self.0, account)
    }

    /// 401 when the key is limited to other accounts.
    pub fn require_account(&self, account: &str) -> Result<(), ApiError> {
        if self.may_use_account(account) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "account_not_allowed",
                format!("this API key may not reach account {account:?}"),
            ))
        }
    }

    /// Provider and account scope together: what every route naming a connection checks.
    pub fn require_connection(&self, provider: &str, account: &str) -> Result<(), ApiError> {
        self.require_provider_scope(provider)?;
        self.require_account(account)
    }

    /// 401 when the key may not use `provider`, configured or not; 404 for a name no
    /// provider can have (it tells a key limited to others nothing of which are configured,
    /// and blames no key for a typing error).
    pub fn require_provider_scope(&self, provider: &str) -> Result<(), ApiError> {
        if crate::oauth::provider::check_name("provider", provider).is_err() {
            let shown = provider.chars().take(64).collect();
            return Err(crate::broker::BrokerError::UnknownProvider(shown).into());
        }
        if self.may_use_provider(provider) {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "namespace_not_allowed",
                format!(
                    "this API key may not use provider {provider}: a key reaches it through \
                     the namespace pattern '*', 'provider:*' or 'provider:{provider}'"
                ),
            ))
        }
    }
}

/// The API key the request carries, in a copy zeroed when dropped (the future that checks
/// it outlives the request's borrow); else `401 missing_api_key`, saying what is wrong
/// with the header: none, two (which one a proxy in front reads is not known), another
/// scheme than `Bearer`, or no key after it.
fn bearer(req: &HttpRequest) -> Result<zeroize::Zeroizing<String>, ApiError> {
    const HOW: &str =
        "send an API key as Authorization: Bearer <key> (create one with `oauthd keys create`)";
    let missing = |what: &str| ApiError::unauthorized("missing_api_key", format!("{what}{HOW}"));
    let mut headers = req.headers().get_all(header::AUTHORIZATION);
    let Some(value) = headers.next() else {
        return Err(missing(""));
    };
    if headers.next().is_some() {
        return Err(missing(
            "the request has more than one Authorization header (a client and a proxy each adding one?): send one; ",
        ));
    }
    let value = value.to_str().unwrap_or_default();
    // A tab after the scheme, as some hand-written clients send it, separates it too.
    let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing(
            "the Authorization header is not of the Bearer scheme (an API key is not sent as Basic credentials, nor alone): ",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(missing(
            "the Authorization header holds no key after Bearer: ",
        ));
    }
    Ok(zeroize::Zeroizing::new(token.to_owned()))
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let ip = state
            .as_ref()
            .and_then(|s| super::ratelimit::client_ip(req, &s.trusted_proxies));
        Box::pin(async move {
            let token = token?;
            let state = state.ok_or_else(|| {
                ApiError::new(
                    actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "application state missing",
                )
            })?;
            // A valid key is never refused because of other requests' failures: on a
            // homelab every app calls from 127.0.0.1, and one app's wrong key must not lock
            // out the others. The failure budget answers wrong keys only (with 429 past it).
            if let Some(record) = state.key_cache.cached(&token) {
                return Ok(Caller(record));
            }
            let found = state.key_cache.authenticate(&state.keys, &token).await?;
            if let crate::apikeys::Presented::Revoked { name } = &found {
                REVOKED_KEYS_LOGGED.warn(format_args!(
                    "the revoked API key {name:?} was presented{} (refused as unknown): an app still uses it",
                    ip.map(|ip| format!(" by {ip}")).unwrap_or_default()
                ));
            }
            match found {
                crate::apikeys::Presented::Active(record) => Ok(Caller(record)),
                _ => {
                    if let Some(ip) = ip {
                        state
                            .failed_auth_limit
                            .hit(ip)
                            .map_err(super::ratelimit::too_many_refused_keys)?;
                    }
                    let mut detail = "the API key is unknown or revoked".to_owned();
                    // Only for what looks like oauthd's key: other tokens are refused
                    // without reading the store, and stay so.
                    if token.starts_with(crate::secret::API_KEY_PREFIX)
                        && state.key_cache.store_has_no_keys(state.keys.as_ref()).await
                    {
                        detail.push_str("; this oauthd's store holds no active API key at all: ");
                        detail.push_str(state.no_keys_hint);
                    }
                    Err(ApiError::unauthorized("invalid_api_key", detail))
                }
            }
        })
    }
}

/// Revoked keys presented, said in the log: at most 5 lines a second.
static REVOKED_KEYS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more revoked API keys presented", 5);
