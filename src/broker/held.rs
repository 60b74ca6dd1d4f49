//! An app's connect flow, back from the provider, waits for the person to press "Connect"
//! on oauthd's page in the browser it came back to, before its code is redeemed.
//!
//! The flow's cookie (`confirm.rs`) shows only that some client pressed "Continue" on the
//! confirmation page: an app can press it from its own server and then set that cookie in
//! another person's browser from a page of its own on oauthd's host name (browsers keep
//! cookies apart by host, not by port; under plain http, sibling hosts may set them too).
//! That person, still signed in at a provider that remembers a consent, would come back
//! here and have their account connected under the app's name without ever seeing
//! oauthd's page. So the callback of an app's flow keeps the code in a state of its own,
//! whose value is written only into the page it answers with; the press that finishes the
//! flow carries it. No other page can read it, and the app never sees it.

use super::callback::{CallbackError, CallbackQuery, Connected};
use super::{state_aad, Broker, FlowSecrets, CONNECT_PREFIX};
use crate::secret::StateValue;
use crate::states::StateError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

/// What a held flow keeps, sealed: the provider's answer and the flow's secrets.
#[derive(serde::Serialize, serde::Deserialize)]
struct HeldFlow {
    code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    secrets: FlowSecrets,
}

/// An app's flow waiting for the press: what its page names, and the value the press
/// carries back.
pub struct Held {
    pub provider: String,
    pub account: String,
    /// The name of the API key that started the flow.
    pub key_name: String,
    pub value: StateValue,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("provider", &self.provider)
            .field("account", &self.account)
            .field("key_name", &self.key_name)
            .field("value", &"[redacted]")
            .finish()
    }
}

/// How a callback ended when nothing failed.
#[derive(Debug)]
pub enum Finished {
    Connected(Connected),
    /// An app's flow, waiting for the press on the page (`Broker::finish_held`).
    Held(Held),
}

/// The namespace of a held flow: `connect:<provider>/fin:<account>`, never under the
/// provider's flows' `connect:<provider>:` (a callback never looks there), and never
/// longer than the flow's own (`…:<account>/app`).
fn held_namespace(
    provider: &str,
    account: &str,
) -> Result<crate::namespace::Namespace, crate::namespace::NamespaceError> {
    crate::namespace::Namespace::parse(&format!("{CONNECT_PREFIX}{provider}/fin:{account}"))
}

impl Broker {
    /// Keeps an app's flow whose provider answered with a code until the person presses
    /// "Connect" in this browser. The flow itself is used up.
    pub(super) async fn hold(
        &self,
        provider: &str,
        q: &CallbackQuery,
        code: String,
        account: String,
        secrets: FlowSecrets,
        expires_at_ms: i64,
    ) -> Result<Held, CallbackError> {
        let not_kept = |e: String| CallbackError::NotStored(e);
        let namespace = held_namespace(provider, &account).map_err(|e| not_kept(e.to_string()))?;
        let key_name = secrets
            .app
            .as_ref()
            .map(|app| app.key_name().to_owned())
            .unwrap_or_default();
        let value = StateValue::generate().map_err(|e| not_kept(e.to_string()))?;
        let held = HeldFlow {
            code,
            iss: q.iss.clone(),
            secrets,
        };
        let plain = Zeroizing::new(serde_json::to_vec(&held).map_err(|e| not_kept(e.to_string()))?);
        let sealed = self
            .vault
            .seal(&state_aad(namespace.as_str()), &plain)
            .map_err(|e| not_kept(e.to_string()))?;
        self.states
            // Ends when the flow would have: the app was told so (`expires_at`). The
            // provider's code expires on its own clock, often sooner.
            .issue_until(
                value.clone(),
                namespace,
                expires_at_ms,
                Some(crate::states::JsonText::of(
                    &serde_json::json!({ "sealed": STANDARD.encode(sealed) }),
                )),
                // The flow it takes the place of was counted with the app's states.
                crate::states::Room::Operator,
            )
            .await
            .map_err(|e| match e {
                StateError::Expired { .. } => CallbackError::Expired {
                    account: account.clone(),
                },
                e => not_kept(e.to_string()),
            })?;
        log::info!(
            "connect {provider}/{account}: back from the provider; waits for the person to press Connect"
        );
        Ok(Held {
            provider: provider.to_owned(),
            account,
            key_name,
            value,
        })
    }

    /// The press of "Connect" on a held flow's page, with the value the page held: redeems
    /// the code as the callback would have, once only.
    pub async fn finish_held(
        self: &std::sync::Arc<Self>,
        provider_name: &str,
        value: &StateValue,
    ) -> Result<Connected, CallbackError> {
        let by_app = |e: CallbackError| CallbackError::ByApp(Box::new(e));
        let provider = self
            .provider(provider_name)
            .map_err(|_| CallbackError::UnknownProvider)?;
        let prefix = format!("{CONNECT_PREFIX}{provider_name}/fin:");
        let taken = match self.states.consume_prefixed(value, &prefix).await {
            Ok(taken) => taken,
            Err(StateError::Expired { namespace }) => {
                let account = namespace.strip_prefix(&prefix).unwrap_or_default();
                return Err(by_app(CallbackError::Expired {
                    account: account.to_owned(),
                }));
            }
            Err(StateError::NotFound) => return Err(by_app(CallbackError::UnknownState)),
            Err(StateError::Vault(e)) => {
                return Err(by_app(CallbackError::FlowUnreadable(e.to_string())))
            }
            Err(e) => return Err(by_app(CallbackError::Storage(e.for_callers()))),
        };
        let account = taken
            .namespace
            .strip_prefix(&prefix)
            .unwrap_or_default()
            .to_owned();
        let held: HeldFlow = self
            .open_sealed(&taken.namespace, taken.parsed_data().as_ref())
            .map_err(|e| by_app(CallbackError::FlowUnreadable(e.to_string())))?;
        // The key may have been revoked, or reached its cap, while the page waited.
        if let Some(app) = &held.secrets.app {
            self.check_starter(app, provider_name, &account)
                .await
                .map_err(by_app)?;
        }
        let q = CallbackQuery {
            code: Some(held.code),
            iss: held.iss,
            ..CallbackQuery::default()
        };
        let connected = self
            .redeem(provider, q, account, held.secrets)
            .await
            .map_err(by_app)?;
        Ok(Connected {
            by_app: true,
            ..connected
        })
    }
}

/// A held flow's namespace is its own: the callback never takes one, and it fits wherever
/// its flow's did.
#[cfg(test)]
mod tests {
    #[test]
    fn a_held_flow_is_kept_apart_from_the_callbacks_flows() {
        let held = super::held_namespace("spotify", "alice").unwrap();
        assert_eq!(held.as_str(), "connect:spotify/fin:alice");
        assert!(!held.as_str().starts_with("connect:spotify:"));
        let flow = super::super::flow_namespace("spotify", "alice", true).unwrap();
        assert!(held.as_str().len() <= flow.as_str().len());
    }
}
