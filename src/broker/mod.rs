//! The broker: runs the client side of OAuth for configured providers and keeps the
//! resulting tokens sealed.
//!
//! Connect flow: a state in the state store (namespace `connect:<provider>:<account>`,
//! the policy's TTL, 60 minutes by default) carries the sealed PKCE verifier; the callback
//! consumes it *before* the code is redeemed, so a replayed callback never reaches the
//! token endpoint.

mod device;
pub mod refresher;
mod tokens;

pub use device::{DeviceStart, DeviceStatus};
pub use tokens::{AccessToken, ConnectionView};

use crate::namespace::Namespace;
use crate::oauth::flows::{self, FlowError};
use crate::oauth::provider::{check_name, Endpoints};
use crate::oauth::Provider;
use crate::secret::StateValue;
use crate::states::{StateError, StateService};
use crate::store::StoreError;
use crate::vault::{VaultError, VaultHandle};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use url::Url;
use zeroize::Zeroizing;

pub const DEFAULT_ACCOUNT: &str = "default";

/// What the broker keeps: connections and device flows.
pub use crate::store::BrokerStore;

/// One async mutex per (provider, account): the in-process single flight.
type FlightLocks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no provider named {0:?} is configured")]
    UnknownProvider(String),
    #[error("{0}")]
    InvalidAccount(String),
    #[error("return_to {0:?} is not on the configured return_to allowlist")]
    ReturnToNotAllowed(String),
    #[error("no connection {provider}/{account}")]
    ConnectionNotFound { provider: String, account: String },
    #[error("the connection {provider}/{account} needs to be connected again: {reason}")]
    NeedsReauth {
        provider: String,
        account: String,
        reason: String,
        reconnect_url: String,
    },
    #[error("{message}")]
    ProviderUnavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("the provider refused: {0}")]
    ProviderRejected(String),
    #[error("provider {0} has no device authorization endpoint")]
    DeviceFlowUnsupported(String),
    #[error("no device flow {0}")]
    DeviceFlowNotFound(String),
    #[error("the token vault: {0}")]
    Vault(#[from] VaultError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `/v1/connect` hands back.
pub struct ConnectStart {
    pub authorize_url: Url,
    pub expires_at_ms: i64,
}

/// The query of a redirect back from the provider.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

/// How a callback ended, for the page the browser sees.
#[derive(Debug)]
pub enum CallbackOutcome {
    Connected {
        provider: String,
        account: String,
        return_to: Option<String>,
    },
    /// The state's TTL passed while the user was at the provider.
    Expired { provider: String, account: String },
    /// The user declined at the provider.
    Denied {
        provider: String,
        account: String,
        description: String,
    },
    /// Anything else: status, a short title and what happened.
    Failed {
        status: u16,
        title: &'static str,
        detail: String,
        retry: Option<(String, String)>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FlowSecrets {
    verifier: String,
    return_to: Option<String>,
}

pub struct Broker {
    providers: BTreeMap<String, Arc<Provider>>,
    states: Arc<StateService>,
    store: Arc<dyn BrokerStore>,
    vault: Arc<VaultHandle>,
    http: reqwest::Client,
    public_url: Url,
    return_to_allowlist: Vec<String>,
    /// How long a refresh holds the cross-process lease: outlives the provider request.
    lease_ms: i64,
    /// One refresh per connection at a time inside this process.
    in_flight: FlightLocks,
}

impl Broker {
    pub fn new(
        providers: Vec<Arc<Provider>>,
        states: Arc<StateService>,
        store: Arc<dyn BrokerStore>,
        vault: Arc<VaultHandle>,
        public_url: Url,
        return_to_allowlist: Vec<String>,
        provider_timeout: std::time::Duration,
    ) -> Broker {
        Broker {
            providers: providers.into_iter().map(|p| (p.name.clone(), p)).collect(),
            states,
            store,
            vault,
            http: flows::http_client(provider_timeout),
            lease_ms: 2 * provider_timeout.as_millis() as i64 + 5_000,
            public_url,
            return_to_allowlist,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    pub fn provider(&self, name: &str) -> Result<&Arc<Provider>, BrokerError> {
        self.providers
            .get(name)
            .ok_or_else(|| BrokerError::UnknownProvider(name.chars().take(64).collect()))
    }

    /// `{public_url}/callback/{provider}`: what to register at the provider.
    pub fn redirect_uri(&self, provider: &str) -> Url {
        redirect_uri(&self.public_url, provider)
    }

    /// Where a person reconnects an account: the page, with that provider and account
    /// picked (one click on Connect; no flow starts by merely opening a link).
    pub fn reconnect_url(&self, provider: &str, account: &str) -> String {
        let mut url = self.public_url.clone();
        url.set_path(&format!("{}/", base_path(&self.public_url)));
        url.query_pairs_mut()
            .append_pair("reconnect", provider)
            .append_pair("account", account);
        url.to_string()
    }

    /// Whether the provider offers the device flow (discovering its endpoints if needed).
    pub async fn supports_device_flow(&self, provider: &str) -> bool {
        match self.providers.get(provider) {
            Some(p) => p
                .endpoints(&self.http)
                .await
                .is_ok_and(|e| e.device_authorization.is_some()),
            None => false,
        }
    }

    fn account(account: Option<&str>) -> Result<String, BrokerError> {
        let account = account.unwrap_or(DEFAULT_ACCOUNT);
        check_name("account", account).map_err(BrokerError::InvalidAccount)?;
        Ok(account.to_owned())
    }

    fn check_return_to(&self, return_to: Option<&str>) -> Result<(), BrokerError> {
        match return_to {
            None => Ok(()),
            Some(r)
                if self
                    .return_to_allowlist
                    .iter()
                    .any(|p| r.starts_with(p.as_str())) =>
            {
                Ok(())
            }
            Some(r) => Err(BrokerError::ReturnToNotAllowed(
                r.chars().take(200).collect(),
            )),
        }
    }

    async fn endpoints<'a>(&self, provider: &'a Provider) -> Result<&'a Endpoints, BrokerError> {
        provider
            .endpoints(&self.http)
            .await
            .map_err(|e| BrokerError::ProviderUnavailable {
                message: e.to_string(),
                retry_after_secs: 5,
            })
    }

    /// Starts an authorization-code flow: returns where to send the user's browser.
    pub async fn start_connect(
        &self,
        provider_name: &str,
        account: Option<&str>,
        return_to: Option<&str>,
    ) -> Result<ConnectStart, BrokerError> {
        let provider = self.provider(provider_name)?;
        let account = Self::account(account)?;
        self.check_return_to(return_to)?;
        let endpoints = self.endpoints(provider).await?;
        let namespace = flow_namespace(provider_name, &account)?;
        // The state value goes into the URL, and the verifier made with the URL goes into
        // the state's data: make the value first, then issue it with its data.
        let state = StateValue::generate().map_err(|_| BrokerError::ProviderUnavailable {
            message: "the system random number generator failed".into(),
            retry_after_secs: 1,
        })?;
        let request = flows::authorize_url(
            provider,
            endpoints,
            &self.redirect_uri(provider_name),
            state.expose(),
        )
        .map_err(flow_error)?;
        let secrets = FlowSecrets {
            verifier: request.pkce_verifier.to_string(),
            return_to: return_to.map(str::to_owned),
        };
        let plain = Zeroizing::new(serde_json::to_vec(&secrets).unwrap_or_default());
        let sealed = self.vault.seal(&state_aad(namespace.as_str()), &plain)?;
        let issued = self
            .states
            .issue_value(
                state,
                namespace,
                None,
                Some(serde_json::json!({ "sealed": STANDARD.encode(sealed) })),
            )
            .await?;
        log::info!(
            "connect {provider_name}/{account}: flow started, state {}",
            issued.state
        );
        Ok(ConnectStart {
            authorize_url: request.url,
            expires_at_ms: issued.expires_at_ms,
        })
    }

    /// Finishes a flow from the provider's redirect. Never panics, never redeems a code
    /// whose state is unknown, used, expired or for another provider.
    pub async fn finish_callback(&self, provider_name: &str, q: CallbackQuery) -> CallbackOutcome {
        let failed = |status: u16, title: &'static str, detail: String| CallbackOutcome::Failed {
            status,
            title,
            detail,
            retry: None,
        };
        let provider = match self.provider(provider_name) {
            Ok(p) => p,
            Err(e) => return failed(404, "Unknown provider", e.to_string()),
        };
        let Some(state) = q.state.as_deref().and_then(StateValue::parse) else {
            return failed(
                400,
                "Unknown sign-in",
                "This link carries no valid state. Start connecting again from oauthd.".into(),
            );
        };
        let prefix = format!("connect:{provider_name}:");
        let consumed = match self.states.consume_any(&state).await {
            Ok(c) => c,
            Err(StateError::Expired { namespace }) => {
                return match namespace.strip_prefix(&prefix) {
                    Some(account) => CallbackOutcome::Expired {
                        provider: provider_name.to_owned(),
                        account: account.to_owned(),
                    },
                    None => failed(
                        400,
                        "Unknown sign-in",
                        "This sign-in was not started for this provider.".into(),
                    ),
                };
            }
            Err(StateError::NotFound) => {
                log::warn!("callback {provider_name}: unknown or replayed state {state}");
                return failed(
                    400,
                    "Unknown sign-in",
                    "This sign-in link was already used or was never issued by oauthd. Start connecting again.".into(),
                );
            }
            Err(e) => return failed(503, "Storage unavailable", e.to_string()),
        };
        let account = consumed.namespace.strip_prefix(&prefix).map(str::to_owned);
        let outcome = if account.is_some() { "ok" } else { "mismatch" };
        crate::metrics::state_consumed(Some(&consumed.namespace), outcome);
        let Some(account) = account else {
            log::warn!(
                "callback {provider_name}: state {state} belongs to {}",
                consumed.namespace
            );
            return failed(
                400,
                "Unknown sign-in",
                "This sign-in was not started for this provider.".into(),
            );
        };
        let retry = Some((provider_name.to_owned(), account.clone()));
        let secrets = match self.open_flow_secrets(&consumed.namespace, consumed.data.as_ref()) {
            Ok(s) => s,
            Err(e) => return failed(500, "Cannot read the sign-in", e.to_string()),
        };
        let endpoints = match self.endpoints(provider).await {
            Ok(e) => e,
            Err(e) => {
                return CallbackOutcome::Failed {
                    status: 503,
                    title: "Provider unreachable",
                    detail: e.to_string(),
                    retry,
                }
            }
        };
        // RFC 9207: the `iss` parameter defends against mix-up attacks.
        match (&q.iss, &endpoints.issuer) {
            (Some(iss), Some(expected))
                if iss.trim_end_matches('/') != expected.trim_end_matches('/') =>
            {
                log::warn!("callback {provider_name}: iss {iss:?} is not the provider's issuer {expected:?}");
                return CallbackOutcome::Failed {
                    status: 400,
                    title: "Wrong issuer",
                    detail: "The answer came from a different authorization server than the one this sign-in was started with. Nothing was stored.".into(),
                    retry,
                };
            }
            (None, Some(_)) if endpoints.iss_parameter_supported => {
                return CallbackOutcome::Failed {
                    status: 400,
                    title: "Missing issuer",
                    detail: "The provider promised to identify itself (iss) on every answer, and this answer did not. Nothing was stored.".into(),
                    retry,
                };
            }
            _ => {}
        }
        if let Some(error) = q.error.as_deref() {
            let description: String = q
                .error_description
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            if error == "access_denied" {
                log::info!("callback {provider_name}/{account}: access denied by the user");
                return CallbackOutcome::Denied {
                    provider: provider_name.to_owned(),
                    account,
                    description,
                };
            }
            let error: String = error.chars().take(64).collect();
            return CallbackOutcome::Failed {
                status: 400,
                title: "The provider reported an error",
                detail: format!("{error}: {description}"),
                retry,
            };
        }
        let Some(code) = q
            .code
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 4096)
        else {
            return CallbackOutcome::Failed {
                status: 400,
                title: "No authorization code",
                detail: "The provider's answer carried neither a code nor an error.".into(),
                retry,
            };
        };
        let redirect = self.redirect_uri(provider_name);
        let tokens = match flows::exchange_code(
            &self.http,
            provider,
            endpoints,
            &redirect,
            code,
            &secrets.verifier,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                log::warn!("callback {provider_name}/{account}: code exchange failed: {e}");
                return CallbackOutcome::Failed {
                    status: 502,
                    title: "The provider did not hand out tokens",
                    detail: e.to_string(),
                    retry,
                };
            }
        };
        if let Err(e) = self.store_tokens(provider, &account, &tokens).await {
            return failed(503, "Could not store the connection", e.to_string());
        }
        log::info!("connect {provider_name}/{account}: connected");
        CallbackOutcome::Connected {
            provider: provider_name.to_owned(),
            account,
            return_to: secrets.return_to,
        }
    }

    fn open_flow_secrets(
        &self,
        namespace: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<FlowSecrets, BrokerError> {
        let sealed = data
            .and_then(|d| d.get("sealed"))
            .and_then(|s| s.as_str())
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or(VaultError::Corrupt)?;
        let plain = self.vault.open(&state_aad(namespace), &sealed)?;
        serde_json::from_slice(&plain).map_err(|_| BrokerError::Vault(VaultError::Corrupt))
    }
}

fn flow_error(e: FlowError) -> BrokerError {
    match e {
        FlowError::Transient(message) => BrokerError::ProviderUnavailable {
            message,
            retry_after_secs: 5,
        },
        other => BrokerError::ProviderRejected(other.to_string()),
    }
}

fn flow_namespace(provider: &str, account: &str) -> Result<Namespace, BrokerError> {
    Namespace::parse(&format!("connect:{provider}:{account}"))
        .map_err(|e| BrokerError::InvalidAccount(e.to_string()))
}

fn state_aad(namespace: &str) -> String {
    format!("state:{namespace}:flow")
}

fn base_path(public_url: &Url) -> &str {
    public_url.path().trim_end_matches('/')
}

pub fn redirect_uri(public_url: &Url, provider: &str) -> Url {
    let mut url = public_url.clone();
    url.set_path(&format!("{}/callback/{provider}", base_path(public_url)));
    url.set_query(None);
    url
}

/// AAD of a sealed token field: binds it to its connection and field.
fn token_aad(provider: &str, account: &str, field: &str) -> String {
    format!("connection:{provider}/{account}:{field}")
}
