//! Connect flows that apps start: confirmed in the person's browser, finished only there.
//!
//! An app that holds an API key could otherwise start a flow for an account of its own
//! and get anyone's grant with one link: providers that remember a consent send the
//! browser straight back, and the tokens would land in the app's account. So the address
//! an app gets leads to oauthd's page first. That page names the app's key, the provider
//! and the account; continuing from it (a same-origin form) gives the browser a cookie
//! for this flow alone and sends it on to the provider. The callback then finishes the
//! flow only for a browser that presents that cookie. Flows the operator starts (the page,
//! the CLI) go to the provider at once, as before.

use super::{flow_namespace, Broker, CallbackError, FlowSecrets};
use crate::secret::{random_bytes, StateValue};
use crate::states::{Room, StateError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use zeroize::Zeroizing;

/// Who starts a connect flow.
#[derive(Debug, Clone, Copy)]
pub enum FlowStarter<'a> {
    /// The operator, with the CLI: the browser goes to the provider at once.
    Operator,
    /// The operator, signed in on oauthd's page: the browser goes to the provider at
    /// once, and only a browser signed in to oauthd finishes the flow.
    Page,
    /// An app, with the API key of this id and name: the browser confirms on oauthd's
    /// page first, and neither that page nor the callback goes on once the key is revoked.
    App { key_id: &'a str, key_name: &'a str },
}

/// What an app's flow keeps sealed beside its verifier.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct AppSecrets {
    /// The id of the API key that started the flow: the flow ends when it is revoked.
    /// (Empty in a flow an older version started.)
    #[serde(default)]
    key_id: String,
    /// The name of the API key that started the flow, shown on the confirmation page.
    key_name: String,
    /// The provider's authorization address, handed out once the browser confirms.
    provider_url: String,
    /// The value of the browser's cookie for this flow.
    browser: String,
    /// The state that the first press of the page's button consumes (in
    /// `ticket_namespace`, with no data, expiring with the flow): only one browser ever gets
    /// the cookie. (Empty in a flow an older version started: its button may be pressed
    /// again.)
    #[serde(default)]
    ticket: String,
}

/// What a room check that refused says at a callback: the cap, or a store that failed.
pub(super) fn no_room(e: super::BrokerError, account: &str) -> CallbackError {
    match e {
        super::BrokerError::TooManyConnections { held, max } => CallbackError::TooManyConnections {
            account: account.to_owned(),
            held,
            max,
        },
        e => CallbackError::Storage(e.for_callers()),
    }
}

impl AppSecrets {
    /// The id of the API key that started the flow (empty in a flow an older version
    /// started).
    pub(super) fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The name of the API key that started the flow.
    pub(super) fn key_name(&self) -> &str {
        &self.key_name
    }

    pub(super) fn new(
        key_id: &str,
        key_name: &str,
        provider_url: &str,
    ) -> Result<Self, getrandom::Error> {
        Ok(AppSecrets {
            key_id: key_id.to_owned(),
            key_name: key_name.to_owned(),
            provider_url: provider_url.to_owned(),
            browser: URL_SAFE_NO_PAD.encode(random_bytes::<32>()?),
            ticket: StateValue::generate()?.expose().to_owned(),
        })
    }

    /// The state whose consumption is the button's first press.
    pub(super) fn ticket(&self) -> Option<StateValue> {
        StateValue::parse(&self.ticket)
    }

    /// Whether `presented` is this flow's cookie value (in constant time).
    pub(super) fn confirmed_by(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| crate::admin::secret_matches(&self.browser, p))
    }
}

/// What pressing the confirmation page's button did.
pub enum Continued {
    /// The first press: this browser gets the flow's cookie and goes on to the provider.
    First(AppFlow),
    /// The flow was continued before, in this browser (the back button) or another: no
    /// cookie is handed out again.
    Again(AppFlow),
}

/// An app's flow waiting for the browser to confirm it.
pub struct AppFlow {
    pub account: String,
    /// The name of the API key that started it.
    pub key_name: String,
    /// Where to send the browser once it confirmed.
    pub provider_url: Zeroizing<String>,
    /// The value of the cookie that lets this browser finish the flow.
    pub browser: Zeroizing<String>,
    /// Seconds until the flow expires (at least 1).
    pub expires_in_secs: i64,
    /// What the first press consumes (`None`: a flow an older version started).
    ticket: Option<StateValue>,
}

/// The state that remembers which browser pressed first: made from the flow's state and
/// the browser's mark (never the mark itself, which the browser chose: no browser can make
/// it name another state).
fn marker(flow: &StateValue, mark: Option<&StateValue>) -> Option<StateValue> {
    let mark = mark?;
    let digest = crate::secret::SecretHash::of(&format!(
        "oauthd confirmed by\0{}\0{}",
        flow.expose(),
        mark.expose()
    ));
    StateValue::parse(&URL_SAFE_NO_PAD.encode(digest.0))
}

/// The namespace of an app's flow's confirmation ticket: `connect:<provider>/ok:<account>`.
/// Not under the provider's flows' `connect:<provider>:` (a callback never looks there, and
/// the scrape counts tickets apart from flows); never longer than the flow's own namespace
/// (`…:<account>/app`), so a flow that can be started can have its ticket.
pub(super) fn ticket_namespace(
    provider: &str,
    account: &str,
) -> Result<crate::namespace::Namespace, crate::namespace::NamespaceError> {
    crate::namespace::Namespace::parse(&format!("{}{provider}/ok:{account}", super::CONNECT_PREFIX))
}

impl Broker {
    /// Where browsers and apps reach oauthd (`public_url`).
    pub fn public_url(&self) -> &url::Url {
        &self.public_url
    }

    /// Where browsers reach oauthd: `scheme://host[:port]`, as an `Origin` header says it.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    /// The address an app's flow hands out: oauthd's confirmation page.
    pub(super) fn confirm_url(&self, provider: &str, account: &str, state: &str) -> url::Url {
        let mut url = self.public_url.clone();
        url.set_path(&format!(
            "{}/connect/{provider}/confirm",
            super::base_path(&self.public_url)
        ));
        url.query_pairs_mut()
            .clear()
            .append_pair("account", account)
            .append_pair("state", state);
        url
    }

    /// The app's flow that `state` names, when it is live; reads it without using it up.
    /// A flow the operator started has nothing to confirm and reads as unknown.
    pub async fn app_flow(
        &self,
        provider_name: &str,
        account: &str,
        state: &StateValue,
    ) -> Result<AppFlow, CallbackError> {
        self.provider(provider_name)
            .map_err(|_| CallbackError::UnknownProvider)?;
        let namespace = flow_namespace(provider_name, account, true)
            .map_err(|_| CallbackError::UnknownState)?;
        let view = match self.states.verify(state, &namespace, false).await {
            Ok(view) => view,
            Err(StateError::NotFound) => return Err(CallbackError::UnknownState),
            Err(StateError::Expired { .. }) => {
                return Err(CallbackError::Expired {
                    account: account.to_owned(),
                })
            }
            Err(StateError::Vault(e)) => return Err(CallbackError::FlowUnreadable(e.to_string())),
            Err(e) => return Err(CallbackError::Storage(e.for_callers())),
        };
        let secrets: FlowSecrets = self
            .open_flow_secrets(namespace.as_str(), view.parsed_data().as_ref())
            .map_err(|e| CallbackError::FlowUnreadable(e.to_string()))?;
        let app = secrets.app.ok_or(CallbackError::UnknownState)?;
        self.check_starter(&app, provider_name, account).await?;
        Ok(AppFlow {
            account: account.to_owned(),
            ticket: app.ticket(),
            key_name: app.key_name,
            provider_url: Zeroizing::new(app.provider_url),
            browser: Zeroizing::new(app.browser),
            expires_in_secs: (view.expires_at_ms - self.clock.now_ms()).max(0) / 1000 + 1,
        })
    }

    /// Issues an app's flow's confirmation ticket, to expire with the flow (whatever TTL
    /// rules the ticket's namespace has). A flow whose ticket could not be issued is
    /// revoked: it could never be confirmed.
    pub(super) async fn issue_ticket(
        &self,
        app: &AppSecrets,
        provider: &str,
        account: &str,
        flow: &crate::states::IssuedState,
    ) -> Result<(), super::BrokerError> {
        let Some(ticket) = app.ticket() else {
            return Ok(());
        };
        let issued = match ticket_namespace(provider, account) {
            Ok(at) => self
                .states
                .issue_until(ticket, at, flow.expires_at_ms, None, Room::Apps)
                .await
                .map(|_| ())
                .map_err(super::BrokerError::from),
            Err(e) => Err(super::BrokerError::InvalidAccount(e.to_string())),
        };
        if issued.is_err() {
            if let Err(e) = self.states.revoke(&flow.state, &flow.namespace).await {
                log::warn!("connect {provider}/{account}: a flow without its confirmation ticket could not be revoked ({e}); it expires unconfirmed");
            }
        }
        issued
    }

    /// The confirmation page's button: the flow's cookie goes to the first browser that
    /// presses it and to no other, so a confirmation address that leaked (an app's log, a
    /// shared screen) is no way to finish the flow with someone else's grant once its
    /// person continued.
    ///
    /// `mark` is the value the confirmation page gave this browser (its own cookie, read
    /// back): the browser that pressed first is remembered by it, so that its second
    /// press (a double click whose first answer it dropped, the back button) gets the
    /// cookie again, and no other browser does.
    pub async fn continue_app_flow(
        &self,
        provider_name: &str,
        account: &str,
        state: &StateValue,
        mark: Option<&StateValue>,
    ) -> Result<Continued, CallbackError> {
        let flow = self.app_flow(provider_name, account, state).await?;
        let Some(ticket) = &flow.ticket else {
            return Ok(Continued::First(flow));
        };
        let namespace =
            ticket_namespace(provider_name, account).map_err(|_| CallbackError::UnknownState)?;
        match self.states.consume(ticket, &namespace).await {
            Ok(taken) => {
                if let Some(mark) = marker(state, mark) {
                    // The flow's browser, as long as the flow lives. Without it only a
                    // second press is refused that would have worked.
                    let marked = self
                        .states
                        .issue_until(mark, namespace, taken.expires_at_ms, None, Room::Apps)
                        .await;
                    if let Err(e) = marked {
                        log::warn!("connect {provider_name}/{account}: the browser that continued could not be remembered ({e}); a second press there is refused");
                    }
                }
                Ok(Continued::First(flow))
            }
            Err(StateError::NotFound | StateError::Expired { .. }) => {
                let same_browser = match marker(state, mark) {
                    Some(mark) => match self.states.verify(&mark, &namespace, false).await {
                        Ok(_) => true,
                        Err(StateError::NotFound | StateError::Expired { .. }) => false,
                        Err(e) => return Err(CallbackError::Storage(e.for_callers())),
                    },
                    None => false,
                };
                if same_browser {
                    return Ok(Continued::First(flow));
                }
                log::warn!(
                    "connect {provider_name}/{account}: the confirmation of the flow started by API key {:?} was pressed again; no cookie handed out",
                    flow.key_name
                );
                Ok(Continued::Again(flow))
            }
            Err(e) => Err(CallbackError::Storage(e.for_callers())),
        }
    }

    /// `Err(StarterRevoked)` when the API key that started an app's flow is revoked (or
    /// gone): a revoked key's flows are confirmed nowhere and finish nowhere. And
    /// `Err(TooManyConnections)` when the key has no room left for `provider`/`account`
    /// (`connection_room`): the person is told before going to the provider.
    pub(super) async fn check_starter(
        &self,
        app: &AppSecrets,
        provider: &str,
        account: &str,
    ) -> Result<(), CallbackError> {
        let active = if app.key_id.is_empty() {
            // Sealed by an older version, which kept only the name: a key of that name.
            self.store.list_keys().await.map(|keys| {
                keys.iter()
                    .any(|k| k.name == app.key_name && k.revoked_at_ms.is_none())
            })
        } else {
            self.store
                .key_active(&app.key_id, Some(&app.key_name))
                .await
        };
        match active {
            Ok(true) => self
                .starter_has_room(&app.key_id, provider, account)
                .await
                .map_err(|e| no_room(e, account)),
            Ok(false) => {
                log::warn!(
                    "connect flow for account {account:?}: the API key {:?} that started it was revoked; the flow goes no further",
                    app.key_name
                );
                Err(CallbackError::StarterRevoked {
                    account: account.to_owned(),
                })
            }
            Err(e) => Err(CallbackError::Storage(e.for_callers())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_flows_own_cookie_value_confirms_it() {
        let app = AppSecrets::new("id", "music", "https://provider.example/authorize").unwrap();
        assert_eq!(app.browser.len(), 43);
        assert!(app.confirmed_by(Some(&app.browser.clone())));
        assert!(!app.confirmed_by(None));
        assert!(!app.confirmed_by(Some("")));
        let other = AppSecrets::new("id", "music", "https://provider.example/authorize").unwrap();
        assert!(!app.confirmed_by(Some(&other.browser)));
    }

    #[test]
    fn the_first_browser_is_remembered_per_flow_and_never_by_its_own_mark() {
        let (a, b) = (
            StateValue::generate().unwrap(),
            StateValue::generate().unwrap(),
        );
        let mark = StateValue::generate().unwrap();
        let of_a = marker(&a, Some(&mark)).expect("a state value");
        assert_ne!(of_a.expose(), mark.expose());
        assert_eq!(of_a.expose(), marker(&a, Some(&mark)).unwrap().expose());
        assert_ne!(of_a.expose(), marker(&b, Some(&mark)).unwrap().expose());
        assert!(marker(&a, None).is_none());
    }

    #[test]
    fn a_flow_sealed_without_its_keys_id_still_opens() {
        let older = r#"{"key_name":"music","provider_url":"https://p.example/a","browser":"b"}"#;
        let app: AppSecrets = serde_json::from_str(older).unwrap();
        assert_eq!((app.key_id.as_str(), app.key_name.as_str()), ("", "music"));
        // Nor its ticket: its button may be pressed again, as then.
        assert!(app.ticket().is_none());
    }

    #[test]
    fn an_apps_flow_is_told_apart_by_its_namespace_and_too_long_names_say_so() {
        let ns = super::super::flow_namespace("spotify", "alice", true).unwrap();
        assert_eq!(ns.as_str(), "connect:spotify:alice/app");
        let own = super::super::flow_namespace("spotify", "alice", false).unwrap();
        assert_eq!(own.as_str(), "connect:spotify:alice");
        let ticket = ticket_namespace("spotify", "alice").unwrap();
        assert_eq!(ticket.as_str(), "connect:spotify/ok:alice");
        assert!(ticket.as_str().len() < ns.as_str().len());
        let long = "a".repeat(60);
        let Err(super::super::BrokerError::InvalidAccount(message)) =
            super::super::flow_namespace(&long, &long, true)
        else {
            panic!("a namespace of 133 characters");
        };
        assert!(message.contains("too long together"), "{message}");
    }
}
