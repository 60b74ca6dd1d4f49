//! Storing what a flow obtained (the callback, the device flow, an import): the tokens
//! sealed, the ID token checked, the connection saved with its events.

use super::events::Via;
use super::{token_aad, Broker, BrokerError};
use crate::notify::Event;
use crate::oauth::flows::TokenSet;
use crate::oauth::{id_token, provider_text, Provider};
use crate::store::{
    AccountIdentity, ConnectionKey, ConnectionRow, ConnectionSave, SealedTokens, Told,
};
use std::time::Duration;

/// The longest `expires_in` taken from a provider as it is (ten years; imports clamp to it too).
pub(super) const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 365 * 86400);

/// How long a refresh waits for the provider's key set to be fetched before it asks
/// (`warm_id_token_keys`).
const WARM_WAIT: Duration = Duration::from_secs(2);

/// How long a connect looks for the provider's other connections of the same account.
const SAME_ACCOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A (re)connect ready to be stored (`Broker::prepare_connection`).
pub(super) struct Prepared {
    pub save: ConnectionSave,
    pub events: Vec<Event>,
    /// The provider's other connections that are the same account there.
    pub same: Vec<String>,
    /// The row a reconnect replaces, when it was another account at the provider: its
    /// grant is ended once the new one is stored (`Broker::end_replaced`).
    pub replaced: Option<ConnectionRow>,
}

impl Broker {
    pub(super) fn seal_tokens(
        &self,
        provider: &str,
        account: &str,
        t: &TokenSet,
        default_scopes: Option<String>,
    ) -> Result<SealedTokens, BrokerError> {
        let refresh_token = match &t.refresh_token {
            Some(r) => Some(
                self.vault
                    .seal_str(&token_aad(provider, account, "refresh_token"), r)?,
            ),
            None => None,
        };
        Ok(SealedTokens {
            scopes: t.scopes.as_ref().map(|s| s.join(" ")).or(default_scopes),
            token_type: t.token_type.clone(),
            access_token: self.vault.seal_str(
                &token_aad(provider, account, "access_token"),
                &t.access_token,
            )?,
            refresh_token,
            access_expires_at_ms: t.expires_in.map(|d| {
                // A provider may say "never" with a huge number (Java's Long.MAX_VALUE):
                // ten years at most, as for imports, so that no sum wraps around.
                let ms = d.min(MAX_EXPIRES_IN).as_millis() as i64;
                // Counted from when the tokens were asked for: the provider's answer may
                // have taken a while, and the lifetime began before it was sent.
                let waited = i64::try_from(t.asked.elapsed().as_millis()).unwrap_or(i64::MAX);
                self.clock
                    .now_ms()
                    .saturating_sub(waited)
                    .saturating_add(ms)
            }),
        })
    }

    /// Stores a (re)connect `prepare_connection` made, with its events; the row it
    /// replaced, as it was then (`save_connection`).
    pub(super) async fn store_connection(
        &self,
        save: ConnectionSave,
        events: Vec<Event>,
    ) -> Result<Option<ConnectionRow>, BrokerError> {
        // Dropped after the write (even when this call is cancelled meanwhile): reads that
        // began before it cannot put the old token back.
        let _saved = self.token_cache.forget_after(&save.key);
        let was = self
            .store
            .save_connection(save, self.clock.now_ms(), self.notifier.deliveries(&events))
            .await?;
        self.notifier.written(&events);
        Ok(was)
    }

    /// What a (re)connect with tokens `t` stores, the other connections that are the same
    /// account at the provider, the account it replaces, and the events that tell of it:
    /// the ID token checked first (signature, issuer, audience, expiry and, when one was
    /// sent, the nonce; one that does not verify stores nothing), the tokens sealed.
    pub(super) async fn prepare_connection(
        &self,
        provider: &Provider,
        account: &str,
        t: &TokenSet,
        nonce: Option<&str>,
        via: Via,
    ) -> Result<Prepared, BrokerError> {
        let identity = self.verify_id_token(provider, t, nonce).await?;
        // No scope in the response means the requested ones were granted (RFC 6749 §5.1).
        let requested = (!provider.scopes.is_empty()).then(|| provider.scopes.join(" "));
        let tokens = self.seal_tokens(&provider.name, account, t, requested)?;
        let key = ConnectionKey::new(&provider.name, account);
        let before = self.store.get_connection(&key).await?;
        // A browser still signed in at the provider connects that account again, whatever
        // the name it is connected under: the event names the others it is. The lookup
        // reads only the provider's connections, and no tokens; the connect waits a second
        // at most for it, and never fails for it.
        let same: Vec<String> = match identity.sub.as_deref() {
            Some(sub) => {
                let found = self.store.accounts_signed_in_as(&provider.name, sub);
                match tokio::time::timeout(SAME_ACCOUNT_WAIT, found).await {
                    Ok(Ok(accounts)) => accounts
                        .into_iter()
                        .filter(|a| a.as_str() != account)
                        .collect(),
                    Ok(Err(e)) => {
                        log::warn!("connect {key}: could not look for connections of the same account ({e})");
                        Vec::new()
                    }
                    Err(_) => {
                        log::warn!("connect {key}: looking for connections of the same account took over {} s; not told", SAME_ACCOUNT_WAIT.as_secs());
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        // A reconnect by a browser signed in at the provider as someone else hands the
        // connection, and the apps that read it, to that account: said everywhere.
        let replaced = before
            .as_ref()
            .filter(|row| row.identity.another_than(&identity))
            .cloned();
        let events = self.connected_events(
            &key,
            before.as_ref(),
            via,
            (&identity, &same, replaced.as_ref().map(|row| &row.identity)),
        );
        let save = ConnectionSave {
            key,
            tokens,
            identity,
            told: Told::NOTHING,
            from_provider: true,
        };
        Ok(Prepared {
            save,
            events,
            same,
            replaced,
        })
    }

    /// The account an ID token names, when the answer carried one and the provider has an
    /// issuer to check it against (an explicitly configured provider without `issuer` has
    /// no trust anchor for ID tokens: the token is then ignored).
    /// Whether a refresh's answer says the grant is now another account's (OpenID Core
    /// 12.2: an ID token in it must name the account the connection was made for): the
    /// reason, when its ID token verifies and names another `sub` than the stored one. An
    /// ID token that does not verify says nothing and is passed over (providers send the
    /// first one again, long expired), as is one for a connection stored without a `sub`.
    pub(super) async fn refreshed_for_another(
        &self,
        provider: &Provider,
        row: &ConnectionRow,
        t: &TokenSet,
        keys_at_hand: bool,
    ) -> Option<String> {
        t.id_token.as_ref()?;
        if !keys_at_hand {
            return None;
        }
        let stored = row.identity.sub.as_deref()?;
        match self.verify_id_token(provider, t, None).await {
            Ok(AccountIdentity { sub: Some(sub), .. }) if sub != stored => Some(format!(
                "the provider's refresh answer holds an ID token for another account (sub {}; connected as {}): its tokens were not kept",
                provider_text(&sub, 255),
                provider_text(stored, 255)
            )),
            Ok(_) => None,
            Err(e) => {
                log::debug!(
                    "refresh {}/{}: the ID token in the answer was passed over ({e})",
                    row.provider,
                    row.account
                );
                None
            }
        }
    }

    /// Before a refresh whose answer's ID token will be checked (`refreshed_for_another`:
    /// the connection's account is known), the provider's keys fetched now if they are
    /// due: else the check fetches them after the answer, while the answer, with the
    /// refresh token a rotating provider issued in it, waits to be saved (a stop or a kill
    /// meanwhile loses it). At most `WARM_WAIT`. Whether the keys are at hand: keys that
    /// did not come are not asked for again after the answer, whose ID token is then
    /// passed over, as one that does not verify is (`refreshed_for_another`).
    pub(super) async fn warm_id_token_keys(
        &self,
        provider: &Provider,
        endpoints: &crate::oauth::provider::Endpoints,
        row: &ConnectionRow,
    ) -> bool {
        let (Some(_), Some(url)) = (&row.identity.sub, &endpoints.jwks) else {
            return true;
        };
        let warm = provider
            .jwks
            .warm(&self.http, url, self.clock.now_ms(), WARM_WAIT);
        // The lock may be held by another caller's fetch: that is waited for no longer.
        let ready = tokio::time::timeout(WARM_WAIT, warm).await.unwrap_or(false);
        if !ready {
            log::debug!(
                "refresh {}/{}: the provider's key set is not at hand; an ID token in the answer is passed over",
                row.provider,
                row.account
            );
        }
        ready
    }

    async fn verify_id_token(
        &self,
        provider: &Provider,
        t: &TokenSet,
        nonce: Option<&str>,
    ) -> Result<AccountIdentity, BrokerError> {
        let Some(token) = t.id_token.as_deref() else {
            return Ok(AccountIdentity::default());
        };
        let endpoints = self.endpoints(provider).await?;
        let Some(issuer) = endpoints.issuer.as_deref() else {
            log::debug!(
                "{}: an ID token came back, but no issuer is configured to verify it; ignored",
                provider.name
            );
            return Ok(AccountIdentity::default());
        };
        let expected = id_token::Expected {
            issuer,
            client_id: &provider.client_id,
            nonce,
            now_ms: self.clock.now_ms(),
        };
        let verified = id_token::verify(
            &self.http,
            &provider.jwks,
            endpoints.jwks.as_ref(),
            token,
            &expected,
        )
        .await
        .map_err(|e| BrokerError::IdToken(e.to_string()))?;
        Ok(AccountIdentity {
            sub: Some(verified.sub),
            email: verified.email,
            name: verified.name,
        })
    }
}
