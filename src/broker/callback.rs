//! Finishing a browser connect flow from the provider's redirect: the rules, as a typed
//! outcome. What the browser sees (status codes, page wording) is `http/callback.rs`'s.
//!
//! Order matters and is fixed here: the state is consumed first (a replayed or foreign
//! redirect stops before anything else), then the provider's identity (`iss`) is checked,
//! then its answer is read, and only then is a code redeemed.

use super::{
    sealed_flow_secrets, state_aad, Broker, BrokerError, FlowSecrets, APP_FLOW_SUFFIX,
    CONNECT_PREFIX,
};
use crate::oauth::flows::{self, FlowError};
use crate::oauth::provider_text;
use crate::secret::StateValue;
use crate::states::StateError;
use crate::vault::VaultError;

/// The query of a redirect back from the provider. `Debug` shows neither the state nor
/// the code: both are credentials.
#[derive(Default, serde::Deserialize)]
pub struct CallbackQuery {
    /// The state oauthd issued when the flow started (RFC 6749 §4.1.2).
    pub state: Option<String>,
    /// The authorization code, on success.
    pub code: Option<String>,
    /// The provider's error code, on failure (`access_denied` when the person declined).
    pub error: Option<String>,
    /// Provider text explaining the error: shown only after `oauth::provider_text`.
    pub error_description: Option<String>,
    /// Which authorization server answered (RFC 9207).
    pub iss: Option<String>,
}

impl std::fmt::Debug for CallbackQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "[redacted]");
        f.debug_struct("CallbackQuery")
            .field("state", &redacted(&self.state))
            .field("code", &redacted(&self.code))
            .field("error", &self.error)
            .field("error_description", &self.error_description)
            .field("iss", &self.iss)
            .finish()
    }
}

/// A flow that ended with stored tokens.
#[derive(Debug)]
pub struct Connected {
    pub provider: String,
    pub account: String,
    /// Where to send the browser: allowed when the flow started and still allowed now.
    pub return_to: Option<String>,
    /// An app started the flow (the person came from the app, not oauthd's page).
    pub by_app: bool,
    /// What the person should know although it worked (`no_refresh_token`).
    pub caution: Option<String>,
    /// Who signed in at the provider, as far as it said (an ID token, userinfo): a browser
    /// signed in there already connects that account without asking.
    pub identity: crate::store::AccountIdentity,
    /// The provider's other connections that are the same account there (the browser
    /// was still signed in at the provider as it).
    pub same_account_as: Vec<String>,
    /// Who the connection was at the provider before this reconnect, when that was
    /// another account (the apps that read it now get the new one's tokens), and what
    /// became of that account's grant.
    pub replaced: Option<super::Replaced>,
}

/// Callbacks with a state oauthd does not know, said in the log: at most 5 a second (anyone
/// can send them, from many addresses).
static UNKNOWN_STATES_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more callbacks with an unknown or replayed state", 5);

/// What to say of a connection made with `tokens` when the provider gave no refresh token
/// although the access token expires: it works until then, and then needs the person
/// again, which nobody expects of a connection just made ("Connected", then `needs_reauth`
/// an hour later). Most providers give one only when asked, and a misspelled scope
/// (`offline-access`) asks for nothing. With the scopes the provider did not grant.
pub fn no_refresh_token(
    provider: &crate::oauth::Provider,
    tokens: &flows::TokenSet,
    by_device: bool,
) -> Option<String> {
    if tokens.refresh_token.is_some() {
        return None;
    }
    let expires_in = tokens.expires_in?;
    let minutes = expires_in.as_secs().div_ceil(60);
    let asks_offline = provider.scopes.iter().any(|s| s == "offline_access");
    let asks_consent = provider
        .authorize_params
        .iter()
        .any(|(k, v)| k == "prompt" && v.split(' ').any(|p| p == "consent"));
    // OpenID Connect Core 11: offline_access is ignored without prompt=consent, which
    // only the authorization request carries (the device flow sends no authorize_params).
    let ask = match (asks_offline, asks_consent || by_device) {
        (true, false) => format!(
            "offline_access is among the scopes asked for, but an OpenID provider grants it \
             only when the person is asked to consent: add authorize_params = \
             {{ prompt = \"consent\" }} to [providers.{}]",
            provider.name
        ),
        (true, true) => "offline_access is among the scopes asked for, and was not granted: \
             see the provider's documentation for what it needs (some allow it only to \
             clients registered for it)"
            .to_owned(),
        (false, _) => "Most providers give one only when asked: for an OpenID provider, \
              offline_access in the provider's scopes; see the provider's documentation"
            .to_owned(),
    };
    let mut said = format!(
        "the provider gave no refresh token: this connection works until its access token \
         expires (in about {minutes} min), then needs connecting again. {ask}"
    );
    let not_granted: Vec<&str> = match &tokens.scopes {
        Some(granted) => provider
            .scopes
            .iter()
            .filter(|s| !granted.contains(s))
            .map(String::as_str)
            .collect(),
        None => Vec::new(),
    };
    if !not_granted.is_empty() {
        said.push_str(&format!(
            " (it did not grant {} of the scopes asked for)",
            not_granted.join(", ")
        ));
    }
    Some(said)
}

/// Why a callback stored nothing. Variants that carry `account` happened after the state
/// was consumed: the person can start that account's flow again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackError {
    UnknownProvider,
    /// The redirect carried no state of the shape oauthd issues.
    NoState,
    /// Used already, never issued, or issued for another provider.
    UnknownState,
    /// The state's TTL passed while the person was at the provider.
    Expired {
        account: String,
    },
    /// The store did not answer while taking the state (retry later).
    Storage(String),
    /// The tokens came back but could not be stored.
    NotStored(String),
    /// The flow's sealed secrets could not be opened (wrong vault key, damaged row).
    FlowUnreadable(String),
    ProviderUnreachable {
        account: String,
        message: String,
    },
    Issuer {
        account: String,
        problem: IssuerProblem,
    },
    /// The person declined at the provider.
    Denied {
        account: String,
        description: String,
    },
    /// The provider answered with another error.
    ProviderError {
        account: String,
        error: String,
        description: String,
    },
    NoCode {
        account: String,
    },
    /// The provider refused oauthd's client id or secret: only the operator can fix that,
    /// so there is nothing to retry.
    ClientRefused {
        code: String,
        description: String,
    },
    ExchangeFailed {
        account: String,
        message: String,
    },
    IdToken {
        account: String,
        message: String,
    },
    /// A pasted text that is not an address (paste-back).
    PasteUnreadable,
    /// A pasted address that is not the redirect URI registered for this provider.
    PasteElsewhere {
        expected: String,
    },
    /// A pasted address that ends another flow than the one a terminal started: left as
    /// it is, for where it was started.
    PasteOtherFlow,
    /// An app started the flow, and this browser did not confirm it on oauthd's page.
    NotConfirmedHere {
        account: String,
    },
    /// The operator pasted the address of a flow an app started: only the browser that
    /// confirmed it may finish it.
    AppFlowPasted {
        account: String,
    },
    /// The API key that started an app's flow was revoked (or deleted) since.
    StarterRevoked {
        account: String,
    },
    /// The API key that started an app's flow reaches `limits.max_connections_per_key`
    /// connections, and this account is not one of them.
    TooManyConnections {
        account: String,
        held: usize,
        max: usize,
    },
    /// A flow started on oauthd's page came back to a browser not signed in to oauthd:
    /// put back, for the operator's browser to finish.
    NotSignedIn {
        account: String,
    },
    /// A paste-back provider's sign-in presented at oauthd's callback, which is not the
    /// address its sign-ins come back to: nothing was touched.
    PasteOnly {
        redirect_uri: String,
    },
    /// What went wrong with a flow an app started: starting again is the app's to do,
    /// never the operator's page's (it would skip the confirmation).
    ByApp(Box<CallbackError>),
}

/// Where a callback's address came from.
#[derive(Debug, Clone, Copy)]
pub enum Browser<'a> {
    /// A browser at oauthd's callback: the flow's cookie when it has one (an app's flow),
    /// and whether it is signed in to oauthd (a flow started on oauthd's page).
    Cookie {
        flow: Option<&'a str>,
        signed_in: bool,
    },
    /// The signed-in operator pasted it (paste-back): the operator's own flows only.
    Pasted,
}

impl CallbackError {
    /// A paste that touched no flow of the operator's (not an address, another address,
    /// no or an unknown state, an app's flow): the flow it was meant for is still open for
    /// the right one.
    pub fn leaves_flow_open(&self) -> bool {
        use CallbackError::*;
        matches!(
            self,
            PasteUnreadable
                | PasteElsewhere { .. }
                | PasteOtherFlow
                | NoState
                | UnknownState
                | AppFlowPasted { .. }
                | NotSignedIn { .. }
                | PasteOnly { .. }
        )
    }

    /// The error itself, and whether the flow was an app's (and so the person in front
    /// of the page was sent by an app).
    pub fn unwrapped(&self) -> (&CallbackError, bool) {
        match self {
            CallbackError::ByApp(inner) => (inner, true),
            CallbackError::NotConfirmedHere { .. } => (self, true),
            other => (other, false),
        }
    }

    /// The account whose flow may be started again, when starting again can help.
    pub fn retry_account(&self) -> Option<&str> {
        use CallbackError::*;
        match self {
            ProviderUnreachable { account, .. }
            | Issuer { account, .. }
            | ProviderError { account, .. }
            | NoCode { account }
            | ExchangeFailed { account, .. }
            | IdToken { account, .. } => Some(account),
            _ => None,
        }
    }
}

/// What is wrong with the authorization server's identification (RFC 9207).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerProblem {
    /// `iss` names another server than the one the flow was started with (a mix-up).
    Wrong,
    /// The server promised `iss` on every answer and this one has none.
    Missing,
}

/// RFC 9207 §2.4: an `iss` that is present must be the expected issuer (a trailing slash
/// aside); a missing one is refused only when the server promised to send it.
pub fn check_issuer(
    presented: Option<&str>,
    expected: Option<&str>,
    promised: bool,
) -> Result<(), IssuerProblem> {
    match (presented, expected) {
        (Some(iss), Some(expected))
            if iss.trim_end_matches('/') != expected.trim_end_matches('/') =>
        {
            Err(IssuerProblem::Wrong)
        }
        (None, Some(_)) if promised => Err(IssuerProblem::Missing),
        _ => Ok(()),
    }
}

/// What the provider's redirect says, read from its error parameters and code.
#[derive(Debug, PartialEq, Eq)]
pub enum ProviderAnswer<'a> {
    Code(&'a str),
    /// `error=access_denied`: the person said no.
    Denied {
        description: String,
    },
    Error {
        error: String,
        description: String,
    },
    NoCode,
}

/// Longest code redeemed; a longer one is not a code.
const MAX_CODE_BYTES: usize = 4096;

/// RFC 6749 §4.1.2: an `error` wins over a `code`; provider text is made safe to show.
pub fn read_answer(q: &CallbackQuery) -> ProviderAnswer<'_> {
    if let Some(error) = q.error.as_deref() {
        let description = provider_text(q.error_description.as_deref().unwrap_or(""), 300);
        if error == "access_denied" {
            return ProviderAnswer::Denied { description };
        }
        return ProviderAnswer::Error {
            error: provider_text(error, 64),
            description,
        };
    }
    match q.code.as_deref() {
        Some(c) if !c.is_empty() && c.len() <= MAX_CODE_BYTES => ProviderAnswer::Code(c),
        _ => ProviderAnswer::NoCode,
    }
}

/// Longest pasted address read; a provider's redirect is far shorter.
const MAX_PASTE_BYTES: usize = 16 * 1024;

/// The query of a pasted address, when it is the redirect URI `expected` (scheme, host,
/// port and path; the query is the provider's answer). A parameter given twice makes the
/// address unreadable, as it does on the callback route.
pub fn read_pasted(pasted: &str, expected: &url::Url) -> Result<CallbackQuery, CallbackError> {
    let text = pasted.trim();
    if text.is_empty() || text.len() > MAX_PASTE_BYTES {
        return Err(CallbackError::PasteUnreadable);
    }
    let url = url::Url::parse(text).map_err(|_| CallbackError::PasteUnreadable)?;
    let same_place = url.scheme() == expected.scheme()
        && url.host() == expected.host()
        && url.port_or_known_default() == expected.port_or_known_default()
        && url.path() == expected.path();
    if !same_place {
        return Err(CallbackError::PasteElsewhere {
            expected: expected.to_string(),
        });
    }
    let mut q = CallbackQuery::default();
    for (name, value) in url.query_pairs() {
        let slot = match name.as_ref() {
            "state" => &mut q.state,
            "code" => &mut q.code,
            "error" => &mut q.error,
            "error_description" => &mut q.error_description,
            "iss" => &mut q.iss,
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(CallbackError::PasteUnreadable);
        }
    }
    Ok(q)
}

impl Broker {
    /// Finishes a flow from the address the person's browser ended on, pasted back
    /// (paste-back): the same rules as the callback, once the address is the provider's
    /// registered redirect URI.
    ///
    /// `only`: the flow a terminal's `connect --paste` started, the only one it finishes
    /// (another terminal's address pasted there connected that one's account, and the
    /// command said so as if it were its own).
    pub async fn finish_pasted(
        self: &std::sync::Arc<Self>,
        provider_name: &str,
        pasted: &str,
        only: Option<&super::ConnectStart>,
    ) -> Result<Connected, CallbackError> {
        let provider = self
            .provider(provider_name)
            .map_err(|_| CallbackError::UnknownProvider)?;
        let expected = super::redirect_uri(&self.public_url, provider);
        let query = read_pasted(pasted, &expected)?;
        if let (Some(start), Some(state)) = (only, query.state.as_deref()) {
            if state != start.flow.0.expose() {
                return Err(CallbackError::PasteOtherFlow);
            }
        }
        match self
            .finish_callback(provider_name, query, Browser::Pasted)
            .await?
        {
            super::Finished::Connected(connected) => Ok(connected),
            // An app's flow pasted is refused before it could be held.
            super::Finished::Held(held) => Err(CallbackError::AppFlowPasted {
                account: held.account,
            }),
        }
    }

    /// Puts a flow taken where it may not finish back as it was (its value, data and
    /// expiry): an app's flow that a paste took (the browser that confirmed it still
    /// finishes it), or one started on the page that came to a browser not signed in. A
    /// callback only learns, by taking it, whose flow it is.
    async fn put_back(&self, state: &StateValue, taken: &crate::states::StateView) -> bool {
        let data = taken.data.as_deref().map(crate::states::JsonText::compact);
        // Exactly as it was: a put back never makes a flow live longer.
        let put = match crate::namespace::Namespace::parse(&taken.namespace) {
            Ok(ns) => self
                .states
                // Counted before it was taken: never refused for room.
                .issue_until(
                    state.clone(),
                    ns,
                    taken.expires_at_ms,
                    data,
                    crate::states::Room::Operator,
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match put {
            Ok(()) => true,
            Err(e) => {
                log::warn!("a flow taken by this callback could not be put back: {e}");
                false
            }
        }
    }

    /// Finishes a flow from the provider's redirect. Never redeems a code whose state is
    /// unknown, used, expired or for another provider, nor the code of an app's flow that
    /// came back to a browser that did not confirm it.
    pub async fn finish_callback(
        self: &std::sync::Arc<Self>,
        provider_name: &str,
        q: CallbackQuery,
        browser: Browser<'_>,
    ) -> Result<super::Finished, CallbackError> {
        let provider = self
            .provider(provider_name)
            .map_err(|_| CallbackError::UnknownProvider)?;
        // A paste-back provider sends the browser to its own address, never here: an
        // address presented here could only finish the operator's flow without the
        // operator's sign-in, which the paste asks for.
        if let (Browser::Cookie { .. }, Some(paste)) = (browser, &provider.paste_redirect) {
            if !same_place(paste, &super::callback_uri(&self.public_url, provider_name)) {
                return Err(CallbackError::PasteOnly {
                    redirect_uri: paste.to_string(),
                });
            }
        }
        let state = q
            .state
            .as_deref()
            .and_then(StateValue::parse)
            .ok_or(CallbackError::NoState)?;
        // Only a state of this provider's connect flows is touched: an app's state, or
        // another provider's flow, presented here stays as it is and reads as unknown.
        let prefix = format!("{CONNECT_PREFIX}{provider_name}:");
        // The account, and whether an app started the flow.
        let flow_of = |namespace: &str| {
            let rest = namespace.strip_prefix(&prefix).unwrap_or_default();
            match rest.strip_suffix(APP_FLOW_SUFFIX) {
                Some(account) => (account.to_owned(), true),
                None => (rest.to_owned(), false),
            }
        };
        let by_app = |e: CallbackError, app: bool| {
            if app {
                CallbackError::ByApp(Box::new(e))
            } else {
                e
            }
        };
        let consumed = match self.states.consume_prefixed(&state, &prefix).await {
            Ok(c) => c,
            Err(StateError::Expired { namespace }) => {
                let (account, app) = flow_of(&namespace);
                return Err(by_app(CallbackError::Expired { account }, app));
            }
            Err(StateError::NotFound) => {
                UNKNOWN_STATES_LOGGED.warn(format_args!(
                    "callback {provider_name}: unknown or replayed state {state}"
                ));
                return Err(CallbackError::UnknownState);
            }
            Err(StateError::Vault(e)) => return Err(CallbackError::FlowUnreadable(e.to_string())),
            Err(e) => return Err(CallbackError::Storage(e.for_callers())),
        };
        let (account, by_namespace) = flow_of(&consumed.namespace);
        let secrets = self
            .open_flow_secrets(&consumed.namespace, consumed.parsed_data().as_ref())
            .map_err(|e| by_app(CallbackError::FlowUnreadable(e.to_string()), by_namespace))?;
        // Either says so: the namespace (which outlives the flow's data) or the data.
        let app = by_namespace || secrets.app.is_some();
        if app {
            let confirmed = match (&secrets.app, browser) {
                (Some(flow), Browser::Cookie { flow: cookie, .. }) => flow.confirmed_by(cookie),
                (_, Browser::Pasted) => {
                    log::warn!("paste {provider_name}/{account}: the address of a flow an app started; nothing stored");
                    let _ = self.put_back(&state, &consumed).await;
                    return Err(CallbackError::AppFlowPasted { account });
                }
                (None, _) => false,
            };
            if !confirmed {
                log::warn!("callback {provider_name}/{account}: a flow an app started came back to a browser that did not confirm it; nothing stored");
                return Err(CallbackError::NotConfirmedHere { account });
            }
            if let Some(flow) = &secrets.app {
                let checked = match self.check_starter(flow, provider_name, &account).await {
                    // The store failed after the state was taken: put back, the flow is
                    // used up no more than a store failing before would have left it (the
                    // page says to reload); else it is used up, and said as not stored.
                    Err(CallbackError::Storage(message)) => {
                        if self.put_back(&state, &consumed).await {
                            Err(CallbackError::Storage(message))
                        } else {
                            Err(CallbackError::NotStored(message))
                        }
                    }
                    other => other,
                };
                checked.map_err(|e| by_app(e, true))?;
            }
        }
        if secrets.page
            && matches!(
                browser,
                Browser::Cookie {
                    signed_in: false,
                    ..
                }
            )
        {
            UNSIGNED_CALLBACKS_LOGGED.warn(format_args!("callback {provider_name}/{account}: a flow started on oauthd's page came back to a browser not signed in to oauthd; put back, nothing stored"));
            if !self.put_back(&state, &consumed).await {
                return Err(CallbackError::NotStored(
                    "the sign-in could not be kept open: start connecting again".into(),
                ));
            }
            return Err(CallbackError::NotSignedIn { account });
        }
        // An app's flow that came back with a code waits for the person's press on the
        // page this browser gets (`held.rs`): the flow's cookie may have been set by a page
        // of the app's on oauthd's host.
        if app {
            if let ProviderAnswer::Code(code) = read_answer(&q) {
                let code = code.to_owned();
                return self
                    .hold(
                        provider_name,
                        &q,
                        code,
                        account,
                        secrets,
                        consumed.expires_at_ms,
                    )
                    .await
                    .map(super::Finished::Held)
                    .map_err(|e| by_app(e, true));
            }
        }
        let connected = self
            .redeem(provider, q, account, secrets)
            .await
            .map_err(|e| by_app(e, app))?;
        Ok(super::Finished::Connected(Connected {
            by_app: app,
            ..connected
        }))
    }

    /// The rest of a callback, once the flow is used up and may be finished here: the
    /// provider's identity, its answer, the code's exchange, the tokens stored.
    pub(super) async fn redeem(
        self: &std::sync::Arc<Self>,
        provider: &crate::oauth::Provider,
        q: CallbackQuery,
        account: String,
        secrets: FlowSecrets,
    ) -> Result<Connected, CallbackError> {
        let provider_name = provider.name.as_str();
        let endpoints =
            self.endpoints(provider)
                .await
                .map_err(|e| CallbackError::ProviderUnreachable {
                    account: account.clone(),
                    message: e.to_string(),
                })?;
        if let Err(problem) = check_issuer(
            q.iss.as_deref(),
            endpoints.issuer.as_deref(),
            endpoints.iss_parameter_supported,
        ) {
            log::warn!("callback {provider_name}/{account}: issuer check failed ({problem:?}), presented {:?}", q.iss);
            return Err(CallbackError::Issuer { account, problem });
        }
        let code = match read_answer(&q) {
            ProviderAnswer::Code(code) => code,
            ProviderAnswer::Denied { description } => {
                log::info!("callback {provider_name}/{account}: access denied by the user");
                return Err(CallbackError::Denied {
                    account,
                    description,
                });
            }
            ProviderAnswer::Error { error, description } => {
                log::warn!(
                    "callback {provider_name}/{account}: the provider reported {error}: {description}"
                );
                return Err(CallbackError::ProviderError {
                    account,
                    error,
                    description,
                });
            }
            ProviderAnswer::NoCode => return Err(CallbackError::NoCode { account }),
        };
        let redirect = self.redirect_uri(provider_name);
        let tokens =
            flows::exchange_code(self.token_endpoint.as_ref(), provider, endpoints, &redirect, code, &secrets.verifier)
                .await
                .map_err(|e| match e {
                    FlowError::Rejected { code, description } if flows::refuses_client(&code) => {
                        log::warn!("callback {provider_name}/{account}: the provider refused oauthd's client credentials ({code}: {description})");
                        CallbackError::ClientRefused { code, description }
                    }
                    e => {
                        log::warn!("callback {provider_name}/{account}: code exchange failed: {e}");
                        CallbackError::ExchangeFailed {
                            account: account.clone(),
                            message: e.to_string(),
                        }
                    }
                })?;
        let starter = secrets.app.as_ref().map(|app| app.key_id().to_owned());
        let stored = async {
            let nonce = secrets.nonce.as_deref();
            let prepared = self
                .prepare_connection(
                    provider,
                    &account,
                    &tokens,
                    nonce,
                    super::events::Via::Connect,
                )
                .await?;
            let super::grant::Prepared {
                save, events, same, ..
            } = prepared;
            let identity = save.identity.clone();
            // Checked again where it is stored, in turn with the key's other additions:
            // flows its key started before it reached its cap stop here.
            let _turn = match &starter {
                Some(key_id) => self.starter_room(key_id, provider_name, &account).await?,
                None => None,
            };
            // The row the save replaced, as it was then: the one read before may be older
            // (a refresh saved meanwhile, whose rotated token only it holds).
            let was = self.store_connection(save, events).await?;
            let replaced = was.filter(|row| row.identity.another_than(&identity));
            Ok::<_, BrokerError>((identity, same, replaced))
        };
        let (identity, same_account_as, replaced) = match stored.await {
            Ok(stored) => stored,
            Err(BrokerError::IdToken(message)) => {
                log::warn!("callback {provider_name}/{account}: {message}; nothing stored");
                return Err(CallbackError::IdToken { account, message });
            }
            Err(BrokerError::TooManyConnections { held, max }) => {
                log::warn!("callback {provider_name}/{account}: the API key that started this flow reaches {held} connections, its most ({max}); {}", super::room::REFUSED_TOKENS);
                return Err(CallbackError::TooManyConnections { account, held, max });
            }
            Err(e) => return Err(CallbackError::NotStored(e.for_callers())),
        };
        log::info!("connect {provider_name}/{account}: connected");
        let replaced = match replaced {
            Some(old) => Some(self.end_replaced("connect", old, &identity).await),
            None => None,
        };
        if !same_account_as.is_empty() {
            log::info!(
                "connect {provider_name}/{account}: the same account at {provider_name} as {}",
                same_account_as.join(", ")
            );
        }
        let caution = no_refresh_token(provider, &tokens, false);
        if let Some(caution) = &caution {
            log::warn!("connect {provider_name}/{account}: {caution}");
        }
        // Checked again: the allowlist may have changed since the flow started.
        let return_to = self
            .check_return_to(secrets.return_to.as_deref())
            .unwrap_or_else(|e| {
                log::warn!("callback {provider_name}/{account}: {e}; showing the page instead");
                None
            });
        Ok(Connected {
            provider: provider_name.to_owned(),
            account,
            return_to,
            by_app: false,
            caution,
            identity,
            same_account_as,
            replaced,
        })
    }

    /// A flow's sealed secrets, opened. What fails is said in the log (at most a line a
    /// second): the person at the page is told only that the sign-in cannot be read.
    pub(super) fn open_flow_secrets(
        &self,
        namespace: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<FlowSecrets, BrokerError> {
        self.open_sealed(namespace, data)
    }

    /// What a connect flow's state (or a held flow's) keeps sealed, opened.
    pub(super) fn open_sealed<T: serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
        data: Option<&serde_json::Value>,
    ) -> Result<T, BrokerError> {
        let opened = data
            .and_then(sealed_flow_secrets)
            .ok_or(VaultError::Corrupt)
            .and_then(|sealed| self.vault.open(&state_aad(namespace), &sealed))
            .and_then(|plain| serde_json::from_slice(&plain).map_err(|_| VaultError::Corrupt));
        opened.map_err(|e| {
            UNREADABLE_FLOWS_LOGGED.error(format_args!(
                "a connect flow in {namespace}: its sealed secrets cannot be opened: {e}"
            ));
            BrokerError::Vault(e)
        })
    }
}

/// Whether two addresses lead to the same place: the same scheme, port and path, and the
/// same host, or both this machine's loopback (a provider that refuses `localhost` is
/// given `127.0.0.1` for oauthd's own callback at `localhost`).
fn same_place(a: &url::Url, b: &url::Url) -> bool {
    let loopback = crate::local_url::is_loopback;
    a.scheme() == b.scheme()
        && a.port_or_known_default() == b.port_or_known_default()
        && a.path() == b.path()
        && (a
            .host_str()
            .zip(b.host_str())
            .is_some_and(|(x, y)| x.eq_ignore_ascii_case(y))
            || (loopback(a) && loopback(b)))
}

/// Page flows that came back to a browser not signed in, said in the log: at most 5 lines
/// a second (whoever holds such a flow's address may send it again and again).
static UNSIGNED_CALLBACKS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more page flows at a browser not signed in", 5);

/// Flows whose secrets do not open, said in the log: at most a line a second.
static UNREADABLE_FLOWS_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more connect flows that cannot be read", 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_address_is_the_same_place_by_any_of_its_names() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let own = u("http://localhost:6288/callback/spotify");
        assert!(same_place(
            &u("http://127.0.0.1:6288/callback/spotify"),
            &own
        ));
        assert!(same_place(&u("http://[::1]:6288/callback/spotify"), &own));
        assert!(same_place(
            &u("http://LOCALHOST:6288/callback/spotify"),
            &own
        ));
        assert!(!same_place(
            &u("http://127.0.0.1:8888/callback/spotify"),
            &own
        ));
        assert!(!same_place(&u("http://127.0.0.1:6288/callback"), &own));
        assert!(!same_place(
            &u("https://127.0.0.1:6288/callback/spotify"),
            &own
        ));
        let public = u("https://auth.example/callback/p");
        assert!(same_place(&u("https://Auth.Example/callback/p"), &public));
        assert!(!same_place(&u("https://127.0.0.1/callback/p"), &public));
    }

    fn query(pairs: &[(&str, &str)]) -> CallbackQuery {
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        CallbackQuery {
            state: get("state"),
            code: get("code"),
            error: get("error"),
            error_description: get("error_description"),
            iss: get("iss"),
        }
    }

    #[test]
    fn debug_of_a_callback_query_hides_state_and_code() {
        let q = query(&[
            ("state", "the-state-value"),
            ("code", "the-code-value"),
            ("iss", "https://id.example"),
        ]);
        let shown = format!("{q:?}");
        assert!(
            !shown.contains("the-state-value") && !shown.contains("the-code-value"),
            "{shown}"
        );
        assert!(shown.contains("id.example"));
    }

    #[test]
    fn the_issuer_must_match_when_present_and_be_present_when_promised() {
        let ex = Some("https://id.example/");
        assert_eq!(check_issuer(Some("https://id.example"), ex, true), Ok(()));
        assert_eq!(check_issuer(Some("https://id.example/"), ex, false), Ok(()));
        assert_eq!(
            check_issuer(Some("https://evil.example"), ex, false),
            Err(IssuerProblem::Wrong)
        );
        assert_eq!(check_issuer(None, ex, true), Err(IssuerProblem::Missing));
        assert_eq!(check_issuer(None, ex, false), Ok(()));
        // No issuer configured (explicit endpoints): nothing to compare with.
        assert_eq!(
            check_issuer(Some("https://any.example"), None, true),
            Ok(())
        );
    }

    #[test]
    fn an_error_wins_over_a_code_and_provider_text_is_made_safe() {
        let denied = query(&[("error", "access_denied"), ("code", "c")]);
        assert_eq!(
            read_answer(&denied),
            ProviderAnswer::Denied {
                description: String::new()
            }
        );
        let other = query(&[
            ("error", "server_error"),
            ("error_description", "down\u{1b}[31m for <b>maintenance</b>"),
        ]);
        match read_answer(&other) {
            ProviderAnswer::Error { error, description } => {
                assert_eq!(error, "server_error");
                assert!(!description.contains('\u{1b}'), "{description:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            read_answer(&query(&[("code", "abc")])),
            ProviderAnswer::Code("abc")
        );
        assert_eq!(read_answer(&query(&[("code", "")])), ProviderAnswer::NoCode);
        let long = "c".repeat(MAX_CODE_BYTES + 1);
        assert_eq!(
            read_answer(&query(&[("code", &long)])),
            ProviderAnswer::NoCode
        );
        assert_eq!(read_answer(&query(&[])), ProviderAnswer::NoCode);
    }
}
