//! Disconnecting: revoking a connection's grant at the provider (RFC 7009), then deleting
//! it, so that no token oauthd obtained is left live at the provider without a row to
//! revoke it from.
//!
//! Another oauthd process on the same store may refresh or reconnect the connection
//! meanwhile. A refresh it is running is waited for through its lease; one that starts,
//! or a reconnect made, after the row was read moves the row on, which the delete checks
//! (its generation and its sealed access token, which no other save repeats): the newer
//! tokens are revoked in turn. A refresh whose row was deleted under it revokes what it
//! got itself (`revoke_orphaned`).

use super::flight::Doing;
use super::tokens::WAIT_FOR_OTHER;
use super::{token_aad, Broker, BrokerError};
use crate::oauth::flows::{self, FlowError, TokenSet};
use crate::oauth::Provider;
use crate::store::{ConnectionKey, ConnectionRow, StoreError};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// What a disconnect that could not revoke tells the caller: the API's flag and the
/// command line's.
const FORCE_HINT: &str =
    "retry, or delete with force: `?force=true`, or `--force` on the command line";

/// How many times a disconnect revokes newer tokens that another process stored while it
/// revoked the ones it had read, before it gives up with a 503.
const ATTEMPTS: usize = 5;

/// How a disconnect went at the provider; the connection is deleted in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnected {
    /// Revoked at the provider.
    Revoked,
    /// The provider has no revocation endpoint: deleted here, the grant stays valid there.
    NotOffered,
    /// The provider could not be reached or refused, and `force` deleted it anyway.
    RevocationFailed,
    /// The provider is no longer configured: deleted locally, nothing revoked.
    ProviderMissing,
    /// Its tokens could not be opened (sealed with a vault key not loaded, or altered at
    /// rest), and `forget_unopened` deleted it: nothing revoked.
    Unopened,
}

impl Disconnected {
    /// What happened, in words, for people.
    pub fn describe(self, provider: &str) -> String {
        match self {
            Disconnected::Revoked => "revoked at the provider".into(),
            Disconnected::NotOffered => format!("provider {provider} offers no revocation: its grant stays valid there until it expires or is removed in the account's settings at {provider}"),
            Disconnected::RevocationFailed => "revocation at the provider failed; its grant may still be valid there".into(),
            Disconnected::ProviderMissing => format!("provider {provider} is not configured (not in the config given): nothing was revoked there, only oauthd's copy was deleted"),
            Disconnected::Unopened => format!("its tokens could not be opened (sealed with a vault key not loaded, or altered): nothing was revoked, and its grant stays valid at {provider} until revoked there"),
        }
    }

    /// The `revocation` field of the `connection.deleted` event.
    fn revocation(self) -> &'static str {
        match self {
            // `revoked` is documented as "revoked where the provider offers revocation":
            // a new value would change what apps already get for such providers.
            Disconnected::Revoked | Disconnected::NotOffered => "revoked",
            Disconnected::RevocationFailed | Disconnected::Unopened => "failed",
            Disconnected::ProviderMissing => "provider_missing",
        }
    }

    /// The outcome of a disconnect that revoked in more than one pass (the first starting
    /// from `Revoked`): a pass that failed is not hidden by a later one that succeeded.
    fn and(self, later: Disconnected) -> Disconnected {
        match (self, later) {
            (Disconnected::RevocationFailed | Disconnected::Unopened, _) => self,
            _ => later,
        }
    }
}

/// Tokens one disconnect has revoked already: a later pass (the row moved on, but kept
/// some of its tokens) does not send them again. Some providers answer 400 for a token
/// already revoked, which would make the disconnect fail for good.
#[derive(Default)]
pub(super) struct Revoked(Vec<Zeroizing<String>>);

impl Revoked {
    fn contains(&self, token: &str) -> bool {
        self.0.iter().any(|t| t.as_str() == token)
    }
}

impl Broker {
    /// Revokes the connection's tokens at the provider (RFC 7009) where it has a
    /// revocation endpoint, then deletes the connection. A provider that cannot be
    /// reached keeps the connection (503) unless `force` is set. A connection whose
    /// provider is no longer configured is deleted here only: there is nothing to revoke
    /// with, and the answer says so.
    pub async fn disconnect(
        self: &Arc<Self>,
        provider_name: &str,
        account: &str,
        force: bool,
    ) -> Result<Disconnected, BrokerError> {
        self.disconnect_as(provider_name, account, force, false)
            .await
    }

    /// Whether the connection's tokens open with the vault key loaded; when they do not,
    /// the ids of the keys they name (sealed with), each once.
    pub async fn tokens_open(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Result<(), Vec<String>>, BrokerError> {
        let row = self.row(&ConnectionKey::new(provider, account)).await?;
        if self.open_tokens(&row).is_ok() {
            return Ok(Ok(()));
        }
        let mut ids: Vec<String> = std::iter::once(&row.access_token)
            .chain(row.refresh_token.as_ref())
            .filter_map(|sealed| crate::vault::sealed_key_id(sealed))
            .collect();
        ids.sort();
        ids.dedup();
        Ok(Err(ids))
    }

    /// Deletes a connection whose tokens the vault key cannot open (sealed with a key lost
    /// for good): nothing can be revoked, only oauthd's copy goes (`Unopened`). Tokens that
    /// open (a key loaded meanwhile) are revoked as a forced `disconnect` does.
    pub async fn forget_unopened(
        self: &Arc<Self>,
        provider: &str,
        account: &str,
    ) -> Result<Disconnected, BrokerError> {
        self.disconnect_as(provider, account, true, true).await
    }

    async fn disconnect_as(
        self: &Arc<Self>,
        provider_name: &str,
        account: &str,
        force: bool,
        lost_key: bool,
    ) -> Result<Disconnected, BrokerError> {
        let key = ConnectionKey::new(provider_name, account);
        // A refresh of this connection on its way in this process ends first, so that what
        // is revoked is what the provider issued last. The turn is held through the waits
        // below: this process's own refreshes of the connection queue behind the delete.
        // One waiting for a slow provider's answer is waited for as long as another
        // process's (forced: deleted meanwhile, and that refresh revokes what it gets).
        let _turn = match tokio::time::timeout(WAIT_FOR_OTHER, self.in_flight.turn(&key)).await {
            Ok(turn) => {
                turn.doing(Doing::Deleting);
                Some(turn)
            }
            Err(_) if force => None,
            Err(_) => {
                let held = self.turn_held(self.in_flight.doing(&key), provider_name);
                return Err(BrokerError::ProviderUnavailable {
                    message: format!("{held}; {FORCE_HINT}"),
                    retry_after_secs: 5,
                });
            }
        };
        let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHER;
        let mut row = self.row(&key).await?;
        let mut revoked = Revoked::default();
        let mut outcome = Disconnected::Revoked;
        let mut attempts = 0;
        loop {
            let now = self.clock.now_ms();
            if let Some(until) = row.lease_until_ms.filter(|until| *until > now) {
                if tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    row = self.row(&key).await?;
                    continue;
                }
                if !force {
                    return Err(BrokerError::ProviderUnavailable {
                        message: format!(
                            "another oauthd process is refreshing this connection; {FORCE_HINT}"
                        ),
                        retry_after_secs: crate::clock::seconds_until(now, until),
                    });
                }
                // Forced: deleted under the lease; that refresh revokes what it gets.
            }
            let pass = self
                .revoke_for_disconnect(&row, force, lost_key, &mut revoked)
                .await?;
            outcome = outcome.and(pass);
            let events = vec![self.deleted_event(&key, outcome.revocation())];
            let deleting = self.token_cache.forget_after(&key);
            let deleted = self
                .store
                .delete_connection(
                    &key,
                    row.generation,
                    &row.access_token,
                    self.notifier.deliveries(&events),
                )
                .await?;
            drop(deleting);
            if deleted {
                self.notifier.written(&events);
                self.forget_tried(&key);
            }
            // Not deleted: another process deleted it meanwhile, or refreshed or
            // reconnected it after `row` was read; the newer tokens are revoked in turn.
            let newer = if deleted {
                None
            } else {
                self.store.get_connection(&key).await?
            };
            match newer {
                None => {
                    log::info!(
                        "disconnect {provider_name}/{account}: deleted ({})",
                        outcome.describe(provider_name)
                    );
                    self.end_device_flows_of(&key).await;
                    if outcome == Disconnected::Revoked {
                        self.check_same_account(&row).await;
                    }
                    return Ok(outcome);
                }
                Some(_) if attempts + 1 >= ATTEMPTS => {
                    return Err(BrokerError::ProviderUnavailable {
                        message:
                            "the connection kept changing while it was being disconnected; retry"
                                .into(),
                        retry_after_secs: 1,
                    })
                }
                Some(newer) => {
                    row = newer;
                    attempts += 1;
                }
            }
        }
    }

    /// `row`'s tokens opened, the refresh token first (revoking it ends the grant at most
    /// providers), then the access token.
    pub(super) fn open_tokens(
        &self,
        row: &ConnectionRow,
    ) -> Result<Vec<(zeroize::Zeroizing<String>, &'static str)>, crate::vault::VaultError> {
        let (p, a) = (&row.provider, &row.account);
        let open = |field: &'static str, sealed: &[u8]| {
            self.vault
                .open_str(&token_aad(p, a, field), sealed)
                .map(|token| (token, field))
        };
        row.refresh_token
            .iter()
            .map(|sealed| open("refresh_token", sealed))
            .chain(std::iter::once(open("access_token", &row.access_token)))
            .collect()
    }

    /// Revokes `row`'s tokens that are not in `revoked` yet; with `force` a failure is
    /// logged and the disconnect goes on. With `lost_key`, tokens that do not open are
    /// not revoked, and the disconnect goes on (`Unopened`).
    async fn revoke_for_disconnect(
        &self,
        row: &ConnectionRow,
        force: bool,
        lost_key: bool,
        revoked: &mut Revoked,
    ) -> Result<Disconnected, BrokerError> {
        let (p, a) = (&row.provider, &row.account);
        let provider = self.providers.get(&row.provider);
        if provider.is_none() && !lost_key {
            return Ok(Disconnected::ProviderMissing);
        }
        let mut tokens = match self.open_tokens(row) {
            Ok(tokens) => tokens,
            Err(e) if lost_key => {
                log::warn!("disconnect {p}/{a}: its tokens could not be opened ({e}): nothing revoked; deleted as asked (--lost-key)");
                return Ok(Disconnected::Unopened);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(provider) = provider else {
            return Ok(Disconnected::ProviderMissing);
        };
        tokens.retain(|(token, _)| !revoked.contains(token));
        let asked: Vec<&'static str> = tokens.iter().map(|(_, field)| *field).collect();
        let before = revoked.0.len();
        let result = self.revoke_tokens(provider, tokens, revoked).await;
        // Revoked before one failed (the refresh token goes first): said, since at most
        // providers that already ended the grant.
        let done = asked
            .get(..revoked.0.len() - before)
            .filter(|done| !done.is_empty())
            .map(|done| {
                format!(
                    "; the {} was revoked before (at most providers that ended the grant)",
                    done.join(" and the ").replace('_', " ")
                )
            })
            .unwrap_or_default();
        match result {
            // Known by now (revoking needed the endpoints): whether there was anywhere to
            // send the tokens to.
            Ok(()) => Ok(match self.endpoints(provider).await {
                Ok(endpoints) if endpoints.revocation.is_none() => Disconnected::NotOffered,
                _ => Disconnected::Revoked,
            }),
            Err(e) if !force => Err(match e {
                BrokerError::ProviderUnavailable {
                    message,
                    retry_after_secs,
                } => BrokerError::ProviderUnavailable {
                    message: format!("{message}: nothing was deleted{done} ({FORCE_HINT})"),
                    retry_after_secs,
                },
                BrokerError::ProviderRejected(message) => {
                    BrokerError::ProviderRejected(format!("{message}{done}"))
                }
                other => other,
            }),
            Err(e) => {
                log::warn!("disconnect {p}/{a}: the tokens could not be revoked ({e}); deleting anyway (force)");
                Ok(Disconnected::RevocationFailed)
            }
        }
    }

    /// After `row`'s tokens were revoked: its provider's other active connections that are
    /// the same account there (the same `sub`, as when one browser signed in at the
    /// provider connects several accounts) share its grant at many providers (Google's,
    /// OpenID providers'), which the revocation ended. Each is refreshed now, so that one
    /// whose grant ended is `needs_reauth` (and said, by event too) at once rather than at
    /// its next refresh, an hour on. A serving oauthd does it in the background (the stop
    /// waits for refreshes under way); a terminal command waits for it and for the
    /// refreshes it began (a provider slower than the caller's wait leaves one running),
    /// since a refresh cut short by the command's end could lose a rotated refresh token.
    async fn check_same_account(self: &Arc<Self>, row: &ConnectionRow) {
        let same: Vec<ConnectionKey> = match self.same_account(row).await {
            Ok(same) => same,
            Err(e) => {
                log::warn!(
                    "disconnect {}/{}: could not look for connections of the same account ({e})",
                    row.provider,
                    row.account
                );
                return;
            }
        };
        if same.is_empty() {
            return;
        }
        let names: Vec<String> = same.iter().map(ToString::to_string).collect();
        log::info!(
            "disconnect {}/{}: {} {} the same account at {}, whose grant the revocation may have ended: refreshing {} now to see",
            row.provider,
            row.account,
            names.join(", "),
            if same.len() == 1 { "is" } else { "are" },
            row.provider,
            if same.len() == 1 { "it" } else { "them" }
        );
        let this = self.clone();
        let check = async move {
            for key in same {
                if let Err(e) = this.refresh_now(&key).await {
                    log::warn!("after disconnecting one of the same account: {key}: {e}");
                }
            }
        };
        if self.serving() {
            self.spawn_background(check);
        } else {
            // A refresh goes on past its caller's wait (a slow provider): the command
            // waits for what it began before it ends, as a stop does.
            check.await;
            self.stop_background().await;
        }
    }

    /// The provider's other active connections signed in as the same account there as
    /// `provider`/`account`: at many providers they share its grant, which a disconnect
    /// revokes (the page and the terminal ask before). Empty for an unknown connection,
    /// and for one of a provider no longer configured, which a disconnect cannot revoke.
    pub async fn sharing_a_grant(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Vec<ConnectionKey>, BrokerError> {
        if self.provider(provider).is_err() {
            return Ok(Vec::new());
        }
        let key = ConnectionKey::new(provider, account);
        let Some(row) = self.store.get_connection(&key).await? else {
            return Ok(Vec::new());
        };
        Ok(self.same_account(&row).await?)
    }

    /// Of `row`'s provider, and of every other table configured as the same client there
    /// (`Provider::same_client_as`), the other active connections signed in as the same
    /// account there (the same `sub`, as when one browser signed in at the provider
    /// connects several accounts).
    pub(super) async fn same_account(
        &self,
        row: &ConnectionRow,
    ) -> Result<Vec<ConnectionKey>, StoreError> {
        let Some(sub) = row.identity.sub.as_deref() else {
            return Ok(Vec::new());
        };
        let own = row.key();
        let mut same = self.signed_in_as(&row.provider, sub).await?;
        same.retain(|key| *key != own);
        Ok(same)
    }

    /// The active connections of `provider`'s client (`same_client_tables`) signed in as
    /// `sub` at the provider.
    pub(super) async fn signed_in_as(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Vec<ConnectionKey>, StoreError> {
        let mut found = Vec::new();
        for table in self.same_client_tables(provider) {
            for account in self.store.accounts_signed_in_as(table, sub).await? {
                found.push(ConnectionKey::new(table, &account));
            }
        }
        Ok(found)
    }

    /// `provider`'s table, and every other table configured as the same client there
    /// (`Provider::same_client_as`): one grant at the provider, whichever table's
    /// connection holds it.
    pub(super) fn same_client_tables<'a>(&'a self, provider: &'a str) -> Vec<&'a str> {
        match self.providers.get(provider) {
            Some(ours) => self
                .providers
                .values()
                .filter(|p| p.name == provider || p.same_client_as(ours))
                .map(|p| p.name.as_str())
                .collect(),
            None => vec![provider],
        }
    }

    /// Revokes `tokens` in order where the provider has a revocation endpoint, adding each
    /// one revoked to `revoked`; stops at the first failure.
    pub(super) async fn revoke_tokens(
        &self,
        provider: &Provider,
        tokens: Vec<(Zeroizing<String>, &'static str)>,
        revoked: &mut Revoked,
    ) -> Result<(), BrokerError> {
        if tokens.is_empty() {
            return Ok(());
        }
        // Its endpoints unknown (discovery failed): nothing was revoked.
        let endpoints = self.endpoints(provider).await?;
        let Some(url) = endpoints.revocation.clone() else {
            return Ok(());
        };
        for (token, hint) in tokens {
            flows::revoke(&self.http, provider, &url, &token, hint)
                .await
                .map_err(|e| match e {
                    FlowError::Transient(message) => BrokerError::ProviderUnavailable {
                        message: format!("revocation failed: {message}"),
                        retry_after_secs: 5,
                    },
                    other => BrokerError::ProviderRejected(other.to_string()),
                })?;
            revoked.0.push(token);
        }
        Ok(())
    }

    /// A refresh found its connection deleted when it came to save what the provider gave
    /// it (a disconnect forced past its lease, or one made after the lease ran out), or
    /// reconnected as another account at the provider (`end_replaced` revokes the grant
    /// `row` was of, and the tokens this refresh got belong to it): those tokens have no
    /// row left to be revoked from, so they are revoked here, as far as the provider can be
    /// reached. Only then: a row that moved on to the same account (a reconnect) may share
    /// the grant, which revoking would end, as may another connection of the account `row`
    /// was. `of_row`: whether the tokens are of `row`'s account (not when the answer's ID
    /// token named another: the row may have become that one, whose grant they are).
    pub(super) async fn revoke_orphaned(
        &self,
        provider: &Provider,
        row: &ConnectionRow,
        tokens: &TokenSet,
        of_row: bool,
    ) {
        let key = row.key();
        let why = match self.store.get_connection(&key).await {
            Ok(None) => "refresh: the connection was deleted meanwhile",
            Ok(Some(now)) if of_row && now.identity.another_than(&row.identity) => {
                match self.same_account(row).await {
                    Ok(same) if same.is_empty() => {}
                    _ => return,
                }
                "refresh: the connection was reconnected as another account meanwhile"
            }
            Ok(Some(_)) => return,
            Err(e) => {
                log::warn!("refresh {key}: could not tell whether the connection was deleted ({e}); its new tokens were not revoked");
                return;
            }
        };
        self.revoke_unkept(provider, &key, tokens, why).await;
    }

    /// Revokes tokens a refresh got for `key` and does not keep (`why`), as far as the
    /// provider can be reached: kept nowhere, no disconnect could revoke them later.
    pub(super) async fn revoke_unkept(
        &self,
        provider: &Provider,
        key: &ConnectionKey,
        tokens: &TokenSet,
        why: &str,
    ) {
        let mut unkept = Vec::new();
        if let Some(refresh) = &tokens.refresh_token {
            unkept.push((refresh.clone(), "refresh_token"));
        }
        if !tokens.access_token.is_empty() {
            unkept.push((tokens.access_token.clone(), "access_token"));
        }
        let offered = match self.endpoints(provider).await {
            Ok(endpoints) => endpoints.revocation.is_some(),
            Err(_) => true,
        };
        match self
            .revoke_tokens(provider, unkept, &mut Revoked::default())
            .await
        {
            Ok(()) if !offered => log::warn!("{key}: {why}; the new tokens could not be revoked ({} has no revocation endpoint): they stay valid at the provider until they expire", key.provider),
            Ok(()) => log::info!("{key}: {why}; the new tokens were revoked"),
            Err(e) => log::warn!("{key}: {why}, and revoking the new tokens failed ({e}); they may stay valid at the provider until they expire"),
        }
    }
}
