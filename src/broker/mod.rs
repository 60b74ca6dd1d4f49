//! The broker: runs the client side of OAuth for configured providers and keeps the
//! resulting tokens sealed.
//!
//! Connect flow: a state in the state store (namespace `connect:<provider>:<account>`,
//! the policy's TTL, 60 minutes by default) carries the sealed PKCE verifier; the callback
//! consumes it *before* the code is redeemed, so a replayed callback never reaches the
//! token endpoint.

mod background;
mod callback;
mod callback_words;
mod confirm;
mod device;
mod device_end;
mod disconnect;
mod events;
mod flight;
mod grant;
mod held;
mod import;
mod refresh_call;
mod refresh_policy;
mod refresh_save;
mod refresh_turn;
pub mod refresher;
mod replaced;
pub mod return_to;
mod room;
mod tokens;
mod views;

pub use callback::{Browser, CallbackError, CallbackQuery, Connected, IssuerProblem};
pub use confirm::{AppFlow, Continued, FlowStarter};
pub(crate) use device::device_aad;
pub use device::{watch_device_flows, DeviceStart, DeviceStatus};
pub use disconnect::Disconnected;
pub use held::{Finished, Held};
pub use replaced::{Replaced, ReplacedGrant};
pub use room::RoomTurn;
pub use tokens::AccessToken;
pub use views::{ConnectionView, ViewStatus};

use crate::clock::Clock;
use crate::namespace::Namespace;
use crate::notify::Notifier;
use crate::oauth::flows::{self, FlowError};
use crate::oauth::provider::{check_name, Endpoints};
use crate::oauth::Provider;
use crate::read_cache::ReadCache;
use crate::secret::StateValue;
use crate::states::{StateError, StateService};
use crate::store::{ConnectionKey, StoreError};
use crate::vault::{VaultError, VaultHandle};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use url::Url;
use zeroize::Zeroizing;

pub const DEFAULT_ACCOUNT: &str = "default";
pub use crate::namespace::CONNECT_PREFIX;
pub use import::{Imported, ImportedTokens, Replacing, MAX_IMPORT_BODY_BYTES};

/// What the broker keeps: connections and device flows.
pub use crate::store::BrokerStore;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("no provider named {0:?} is configured")]
    UnknownProvider(String),
    #[error("{0}")]
    InvalidAccount(String),
    #[error("{0}")]
    InvalidImport(String),
    #[error(transparent)]
    ReturnToNotAllowed(#[from] return_to::ReturnToError),
    #[error("no connection {provider}/{account}")]
    ConnectionNotFound { provider: String, account: String },
    #[error("the connection {provider}/{account} needs to be connected again: {reason}")]
    NeedsReauth {
        provider: String,
        account: String,
        reason: String,
        reconnect_url: String,
    },
    #[error("{provider}/{account} has no refresh token: only connecting it again renews its access token")]
    NoRefreshToken { provider: String, account: String },
    #[error("{message}")]
    ProviderUnavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("the provider refused: {0}")]
    ProviderRejected(String),
    #[error("provider {0} sends browsers back to a paste-back address (redirect_uri), which only oauthd's operator can finish: connect it on oauthd's page or with `oauthd connect`")]
    PasteBackOnly(String),
    #[error("provider {0} has no device authorization endpoint")]
    DeviceFlowUnsupported(String),
    #[error("provider {0}'s device flow is the operator's only (device_flow_for_apps = false): connect through POST /v1/connect/{0}, or ask the operator")]
    DeviceFlowNotForApps(String),
    #[error("no device flow {0}")]
    DeviceFlowNotFound(String),
    #[error("{max} device flows started by this caller are still pending (limits.max_device_flows_per_key); finish or let some expire first")]
    TooManyDeviceFlows { max: u32 },
    #[error("this API key reaches {held} connections, its most (limits.max_connections_per_key = {max}): delete some, or reconnect one it has, before connecting another account")]
    TooManyConnections { held: usize, max: usize },
    #[error("{0}")]
    IdToken(String),
    #[error("the token vault: {0}")]
    Vault(#[from] VaultError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrokerError {
    /// As `StoreError::for_callers`: what is told over HTTP.
    pub fn for_callers(&self) -> String {
        match self {
            BrokerError::Store(e) => e.for_callers(),
            BrokerError::State(e) => e.for_callers(),
            other => other.to_string(),
        }
    }
}

/// What `/v1/connect` hands back.
pub struct ConnectStart {
    pub authorize_url: Url,
    pub expires_at_ms: i64,
    /// The flow's state, to ask later whether it is still open (`flow_open`); never shown.
    pub flow: (StateValue, Namespace),
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FlowSecrets {
    verifier: String,
    return_to: Option<String>,
    /// The OpenID nonce sent with the request; the ID token must carry it back.
    #[serde(default)]
    nonce: Option<String>,
    /// Set when an app started the flow: the browser confirms on oauthd's page first, and
    /// only that browser may finish it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app: Option<confirm::AppSecrets>,
    /// Set when the operator started the flow on oauthd's page: only a browser signed in
    /// to oauthd finishes it at the callback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    page: bool,
}

/// The broker's settings from the config: where browsers reach oauthd, where they may be
/// sent afterwards, how long providers may take, how many device flows a caller may run.
pub struct BrokerSettings {
    pub public_url: Url,
    pub return_to_allowlist: Vec<Url>,
    pub provider_timeout: std::time::Duration,
    /// How long a refresh or a device poll waits for the provider's answer once it was
    /// sent (`provider_answer_wait_seconds`; callers are answered 503 after
    /// `provider_timeout` meanwhile). Raised to `provider_timeout` when below it.
    pub provider_answer_wait: std::time::Duration,
    pub max_device_flows: u32,
    /// Connections a key limited to accounts may have (`limits.max_connections_per_key`;
    /// 0: no cap).
    pub max_connections_per_key: u32,
    /// What time it is (the states service is given the same clock).
    pub clock: Clock,
    /// How long a token read from the store answers from memory (`token_cache_seconds`).
    pub token_cache: std::time::Duration,
    /// Who hears about connections needing the user, and the like.
    pub notifier: Arc<Notifier>,
}

pub struct Broker {
    providers: BTreeMap<String, Arc<Provider>>,
    states: Arc<StateService>,
    store: Arc<dyn BrokerStore>,
    vault: Arc<VaultHandle>,
    http: reqwest::Client,
    /// `http` waiting `answer_wait` for an answer: for device polls.
    waiting_http: reqwest::Client,
    /// Where code exchanges are sent (the network, unless a test says).
    token_endpoint: Arc<dyn flows::TokenEndpoint>,
    /// Where refreshes are sent: the network with `answer_wait` for the answer.
    refresh_endpoint: Arc<dyn flows::TokenEndpoint>,
    /// How long a caller waits for a refresh before it is answered 503 (the refresh goes
    /// on, and stores what the provider answers): `provider_timeout`.
    caller_wait: std::time::Duration,
    /// How long a refresh or a device poll waits for the provider's answer once it was
    /// sent (`provider_answer_wait_seconds`, at least `caller_wait`).
    answer_wait: std::time::Duration,
    public_url: Url,
    return_to_allowlist: Vec<Url>,
    /// How long a refresh holds its cross-process lease and a device poll its claim:
    /// outlives the provider's answer (`answer_wait`) and the save after it.
    lease_ms: i64,
    /// One refresh per connection at a time inside this process.
    in_flight: Arc<flight::FlightLocks>,
    /// Pending device flows one caller may have (`limits.max_device_flows_per_key`).
    max_device_flows: u32,
    /// `limits.max_connections_per_key` (0: no cap).
    max_connections_per_key: usize,
    /// Held from a capped key's room check until the connection it makes room for is
    /// stored (`connection_room`).
    connection_adds: room::Turns,
    /// Device flows this process polls now.
    device_drivers: Mutex<std::collections::HashSet<String>>,
    /// Set when oauthd stops: device drivers start no further poll, the background
    /// refresher no further refresh.
    stopping: tokio::sync::watch::Sender<bool>,
    /// The runtime device drivers and leased refreshes run on when set (the daemon's own,
    /// not the HTTP worker that started them: a worker's runtime ends with it, and its
    /// tasks with it).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Leased refreshes running now (the stop waits for them).
    refreshing: background::Refreshing,
    /// Until when the stop waits for leased refreshes and device polls under way (set by
    /// the first stop).
    stop_deadline: std::sync::OnceLock<tokio::time::Instant>,
    /// Whether a `stop_background` under way says its progress (one says it, the others
    /// wait quietly), and whether how the stop ended was said (by the first to end).
    stop_voice: std::sync::atomic::AtomicBool,
    stop_summed: std::sync::atomic::AtomicBool,
    /// Whether each provider accepted the client credentials, and when that was asked.
    client_checks: Mutex<HashMap<String, (std::time::Instant, flows::ClientCheck)>>,
    clock: Clock,
    /// Connections this process took a refresh lease for since its start: a backoff is
    /// waited out only for these, so that the first try after a restart goes ahead
    /// (`refresh_in_turn`).
    tried_since_start: Mutex<std::collections::HashSet<ConnectionKey>>,
    /// Connections whose refresh here has the provider's answer and has failed to save it
    /// (the store fails): their callers are told so at once, not after waiting their turn.
    saves_failing: Mutex<std::collections::HashSet<ConnectionKey>>,
    /// Tokens read from the store within `token_cache_seconds`, with half their lifetime
    /// (`min_ttl` is capped by it) and when they were obtained (a clock stepped back since
    /// makes the token's expiry worthless): the token API's hot path. Zeroized
    /// when dropped; they leave the process only in an answer.
    token_cache: ReadCache<ConnectionKey, (Arc<AccessToken>, Option<i64>, i64)>,
    notifier: Arc<Notifier>,
}

/// What a look at a flow's state found: `true` while the flow is open, `false` once its
/// state is gone (taken by a callback, or expired).
fn while_open<T>(looked: Result<T, StateError>) -> Result<bool, BrokerError> {
    match looked {
        Ok(_) => Ok(true),
        Err(StateError::NotFound | StateError::Expired { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Broker {
    pub fn new(
        providers: Vec<Arc<Provider>>,
        states: Arc<StateService>,
        store: Arc<dyn BrokerStore>,
        vault: Arc<VaultHandle>,
        settings: BrokerSettings,
    ) -> Result<Broker, String> {
        let timeout = settings.provider_timeout;
        let http = flows::http_client(timeout)?;
        let answer_wait = settings.provider_answer_wait.max(timeout);
        let waiting_http = flows::http_client_waiting(timeout, answer_wait)?;
        let token_cache = ReadCache::new(settings.token_cache)
            .watched_by(store.change_watch())
            .counted("token");
        Ok(Broker {
            token_endpoint: Arc::new(flows::Network(http.clone())),
            refresh_endpoint: Arc::new(flows::Network(waiting_http.clone())),
            waiting_http,
            caller_wait: timeout,
            answer_wait,
            providers: providers.into_iter().map(|p| (p.name.clone(), p)).collect(),
            states,
            store,
            vault,
            http,
            lease_ms: (answer_wait + timeout).as_millis() as i64 + 5_000,
            public_url: settings.public_url,
            return_to_allowlist: settings.return_to_allowlist,
            in_flight: Arc::default(),
            max_device_flows: settings.max_device_flows,
            max_connections_per_key: usize::try_from(settings.max_connections_per_key)
                .unwrap_or(usize::MAX),
            connection_adds: Default::default(),
            device_drivers: Mutex::new(Default::default()),
            stopping: tokio::sync::watch::Sender::new(false),
            runtime: std::sync::OnceLock::new(),
            refreshing: background::Refreshing::default(),
            stop_deadline: std::sync::OnceLock::new(),
            stop_voice: std::sync::atomic::AtomicBool::new(false),
            stop_summed: std::sync::atomic::AtomicBool::new(false),
            client_checks: Mutex::new(HashMap::new()),
            tried_since_start: Mutex::default(),
            saves_failing: Mutex::default(),
            clock: settings.clock,
            token_cache,
            notifier: settings.notifier,
        })
    }

    /// Sends code exchanges and refreshes to `endpoint` instead of the network (tests
    /// script a provider's token endpoint this way, and count its calls).
    pub fn with_token_endpoint(mut self, endpoint: Arc<dyn flows::TokenEndpoint>) -> Self {
        self.token_endpoint = endpoint.clone();
        self.refresh_endpoint = endpoint;
        self
    }

    /// How long a refresh or a device poll waits for the provider's answer.
    fn answer_wait(&self) -> std::time::Duration {
        self.answer_wait
    }

    /// How long a refresh's lease and a device poll's claim last.
    fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.lease_ms).unwrap_or(0))
    }

    /// The longest a stop waits for what is under way with providers (`stop_background`):
    /// a lease's length, and a moment for the one being taken as the stop began.
    pub fn longest_stop(&self) -> std::time::Duration {
        self.lease() + std::time::Duration::from_secs(1)
    }

    /// The ids of the vault keys this process opens with, the one it seals with first.
    pub fn vault_key_ids(&self) -> Vec<String> {
        self.vault.key_ids()
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    pub fn provider(&self, name: &str) -> Result<&Arc<Provider>, BrokerError> {
        self.providers
            .get(name)
            .ok_or_else(|| BrokerError::UnknownProvider(name.chars().take(64).collect()))
    }

    /// What to register at the provider: `{public_url}/callback/{provider}`, or the
    /// loopback address of a paste-back provider.
    pub fn redirect_uri(&self, provider: &str) -> Url {
        match self.providers.get(provider) {
            Some(p) => redirect_uri(&self.public_url, p),
            None => callback_uri(&self.public_url, provider),
        }
    }

    /// Whether `provider`'s redirect URI is oauthd's own callback (no paste-back URI).
    pub fn callback_answers(&self, provider: &str) -> bool {
        self.providers
            .get(provider)
            .is_none_or(|p| p.paste_redirect.is_none())
    }

    /// Whether the flow `start` began is still open: its state not yet taken by a
    /// callback (of any oauthd on this store) nor expired.
    pub async fn flow_open(&self, start: &ConnectStart) -> Result<bool, BrokerError> {
        let (state, namespace) = &start.flow;
        while_open(self.states.verify(state, namespace, false).await)
    }

    /// Ends the flow `start` began, unfinished: its state is taken, so that no browser
    /// finishes it later (a flow started from the terminal is tied to none). `Ok(false)`
    /// when it was no longer open.
    pub async fn abandon_flow(&self, start: &ConnectStart) -> Result<bool, BrokerError> {
        let (state, namespace) = &start.flow;
        while_open(self.states.consume(state, namespace).await)
    }

    /// Whether `provider`/`account` got its tokens from a (re)connect at or after
    /// `since_ms`.
    pub async fn connected_since(
        &self,
        provider: &str,
        account: &str,
        since_ms: i64,
    ) -> Result<bool, BrokerError> {
        let row = self
            .store
            .get_connection(&ConnectionKey::new(provider, account))
            .await?;
        Ok(row
            .and_then(|r| r.connected_at_ms)
            .is_some_and(|at| at >= since_ms))
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

    /// How long a browser connect flow for this provider and account stays open, in
    /// words ("60 minutes"); `app`: a flow an app started.
    pub fn flow_ttl_text(&self, provider: &str, account: &str, app: bool) -> String {
        let policy = self.states.policy();
        match flow_namespace(provider, account, app) {
            Ok(ns) => policy.default_ttl_text(&ns),
            Err(_) => crate::states::ttl_text(policy.base.default_ttl.as_secs()),
        }
    }

    /// Whether the provider accepts oauthd's client id and secret, asked at most every
    /// ten minutes (the page shows it on the provider's card).
    pub async fn client_check(&self, provider: &str) -> Option<flows::ClientCheck> {
        const FRESH: std::time::Duration = std::time::Duration::from_secs(600);
        let p = self.providers.get(provider)?;
        if let Some((at, check)) = self.client_checks.lock().ok()?.get(provider) {
            if at.elapsed() < FRESH {
                return Some(check.clone());
            }
        }
        let check = match self.endpoints(p).await {
            Ok(endpoints) => {
                flows::check_client(
                    self.token_endpoint.as_ref(),
                    p,
                    endpoints,
                    &self.redirect_uri(provider),
                )
                .await
            }
            Err(e) => flows::ClientCheck::Unknown(e.to_string()),
        };
        if let Ok(mut checks) = self.client_checks.lock() {
            checks.insert(
                provider.to_owned(),
                (std::time::Instant::now(), check.clone()),
            );
        }
        Some(check)
    }

    /// Looks up every provider's endpoints once, at start, and says in the log which could
    /// not be found: a mistyped `issuer` otherwise shows only as a connect flow or a
    /// refresh answering 503, to be tried again, for good.
    pub async fn discover_at_start(&self) {
        for p in self.providers.values() {
            if let Err(e) = self.endpoints(p).await {
                log::warn!(
                    "provider {}: its endpoints could not be found at start ({e}); its connect flows and refreshes answer 503 until they are: if this lasts, check its issuer (`oauthd check` says more)",
                    p.name
                );
            }
        }
    }

    /// Whether the provider offers the device flow (discovering its endpoints if needed).
    pub async fn supports_device_flow(&self, provider: &str) -> bool {
        match self.providers.get(provider) {
            Some(p) => self
                .endpoints(p)
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

    /// The normalised `return_to`, when one was given and the allowlist permits it.
    fn check_return_to(&self, return_to: Option<&str>) -> Result<Option<String>, BrokerError> {
        match return_to {
            None => Ok(None),
            Some(r) => Ok(Some(
                return_to::check(r, &self.return_to_allowlist)?.to_string(),
            )),
        }
    }

    /// The provider's endpoints, once found (at start, else on use; within one `provider_timeout`:
    /// its two metadata addresses are asked at once).
    async fn endpoints<'a>(&self, provider: &'a Provider) -> Result<&'a Endpoints, BrokerError> {
        provider
            .endpoints(&self.http)
            .await
            .map_err(|e| BrokerError::ProviderUnavailable {
                message: e.to_string(),
                retry_after_secs: 5,
            })
    }

    /// Starts an authorization-code flow: returns where to send the user's browser. An
    /// app's flow sends it to oauthd's confirmation page first (see `confirm.rs`).
    pub async fn start_connect(
        &self,
        provider_name: &str,
        account: Option<&str>,
        return_to: Option<&str>,
        starter: FlowStarter<'_>,
    ) -> Result<ConnectStart, BrokerError> {
        let provider = self.provider(provider_name)?;
        let account = Self::account(account)?;
        let return_to = self.check_return_to(return_to)?;
        let app_started = matches!(starter, FlowStarter::App { .. });
        if provider.paste_redirect.is_some() && app_started {
            return Err(BrokerError::PasteBackOnly(provider_name.to_owned()));
        }
        let namespace = flow_namespace(provider_name, &account, app_started)?;
        let endpoints = self.endpoints(provider).await?;
        let no_random = |_| BrokerError::Vault(VaultError::Entropy);
        // The state value goes into the URL, and the verifier made with the URL goes into
        // the state's data: make the value first, then issue it with its data.
        let state = StateValue::generate().map_err(no_random)?;
        let request = flows::authorize_url(
            provider,
            endpoints,
            &self.redirect_uri(provider_name),
            state.expose(),
        )
        .map_err(no_random)?;
        let app = match starter {
            FlowStarter::Operator | FlowStarter::Page => None,
            FlowStarter::App { key_id, key_name } => Some(
                confirm::AppSecrets::new(key_id, key_name, request.url.as_str())
                    .map_err(no_random)?,
            ),
        };
        let confirm_url = app
            .as_ref()
            .map(|_| self.confirm_url(provider_name, &account, state.expose()));
        let secrets = FlowSecrets {
            verifier: request.pkce_verifier.to_string(),
            return_to,
            nonce: request.nonce.clone(),
            app,
            page: matches!(starter, FlowStarter::Page),
        };
        // Never seal an empty value in its place: a flow that cannot keep its verifier fails.
        let plain = Zeroizing::new(
            serde_json::to_vec(&secrets).map_err(|_| BrokerError::Vault(VaultError::Corrupt))?,
        );
        let sealed = self.vault.seal(&state_aad(namespace.as_str()), &plain)?;
        let flow = (state.clone(), namespace.clone());
        // An app's flows count with its states: the room past the cap is the operator's.
        let room = match starter {
            FlowStarter::App { .. } => crate::states::Room::Apps,
            FlowStarter::Operator | FlowStarter::Page => crate::states::Room::Operator,
        };
        let issued = self
            .states
            .issue_value(
                state,
                namespace,
                None,
                Some(crate::states::JsonText::of(
                    &serde_json::json!({ "sealed": STANDARD.encode(sealed) }),
                )),
                room,
            )
            .await?;
        if let Some(app) = &secrets.app {
            self.issue_ticket(app, provider_name, &account, &issued)
                .await?;
        }
        match starter {
            FlowStarter::Operator | FlowStarter::Page => log::info!(
                "connect {provider_name}/{account}: flow started, state {}",
                issued.state
            ),
            FlowStarter::App { key_name, .. } => log::info!(
                "connect {provider_name}/{account}: flow started by API key {key_name:?}, state {}; waits for the browser to confirm",
                issued.state
            ),
        }
        Ok(ConnectStart {
            authorize_url: confirm_url.unwrap_or(request.url),
            expires_at_ms: issued.expires_at_ms,
            flow,
        })
    }
}

/// The sealed secrets in a connect flow's state data (`{"sealed": "<base64>"}`).
pub fn sealed_flow_secrets(data: &serde_json::Value) -> Option<Vec<u8>> {
    data.get("sealed")
        .and_then(|s| s.as_str())
        .and_then(|s| STANDARD.decode(s).ok())
}

fn flow_error(e: FlowError) -> BrokerError {
    match e {
        FlowError::Transient(message) => BrokerError::ProviderUnavailable {
            message,
            retry_after_secs: 5,
        },
        throttled @ FlowError::Throttled {
            retry_after_secs, ..
        } => BrokerError::ProviderUnavailable {
            message: throttled.to_string(),
            retry_after_secs,
        },
        other => BrokerError::ProviderRejected(other.to_string()),
    }
}

/// Ends the namespace of a flow an app started: `connect:<provider>:<account>/app` (no
/// account name holds a `/`). The callback tells from it, even once the flow expired,
/// that starting again is the app's to do.
const APP_FLOW_SUFFIX: &str = "/app";

/// A connect flow's namespace: `connect:<provider>:<account>`, with `APP_FLOW_SUFFIX`
/// when an app starts it.
fn flow_namespace(provider: &str, account: &str, app: bool) -> Result<Namespace, BrokerError> {
    let suffix = if app { APP_FLOW_SUFFIX } else { "" };
    let text = format!("{CONNECT_PREFIX}{provider}:{account}{suffix}");
    Namespace::parse(&text).map_err(|e| match e {
        crate::namespace::NamespaceError::TooLong => BrokerError::InvalidAccount(format!(
            "provider {provider:?} and account {account:?} are too long together: a connect flow keeps them in one namespace ({CONNECT_PREFIX}<provider>:<account>{suffix}) of at most {} characters",
            crate::namespace::MAX_NAMESPACE_CHARS
        )),
        e => BrokerError::InvalidAccount(e.to_string()),
    })
}

fn state_aad(namespace: &str) -> String {
    format!("state:{namespace}:flow")
}

fn base_path(public_url: &Url) -> &str {
    public_url.path().trim_end_matches('/')
}

/// Where the provider sends the browser back for `provider`: its paste-back address when
/// it has one, else oauthd's callback.
pub fn redirect_uri(public_url: &Url, provider: &Provider) -> Url {
    match &provider.paste_redirect {
        Some(url) => url.clone(),
        None => callback_uri(public_url, &provider.name),
    }
}

fn callback_uri(public_url: &Url, provider: &str) -> Url {
    let mut url = public_url.clone();
    url.set_path(&format!("{}/callback/{provider}", base_path(public_url)));
    url.set_query(None);
    url
}

/// AAD of a sealed token field: binds it to its connection and field.
pub(crate) fn token_aad(provider: &str, account: &str, field: &str) -> String {
    format!("connection:{provider}/{account}:{field}")
}
