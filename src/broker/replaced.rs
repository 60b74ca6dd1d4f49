//! A reconnect that made a connection another account at the provider than it was (a
//! browser, or a device, signed in there as someone else): the apps that read the
//! connection get the new account's tokens from then on, and the grant of the account it
//! was has no row left to be revoked from. Once the new tokens are stored, that grant is
//! revoked (RFC 7009), unless another connection may share it: one that is that account
//! too, or one whose account there is unknown (imported, or connected before oauthd kept
//! it). Connections that became that account while it was revoked, and the connection
//! itself (a provider may count both accounts as one person), are refreshed then, so that
//! a grant the revocation ended is said at once.

use super::{Broker, ConnectionKey};
use crate::store::{AccountIdentity, ConnectionRow, ConnectionStatus};
use std::sync::Arc;
use std::time::Duration;

/// How long a serving oauthd's reconnect waits for the revocation before it answers the
/// page: a slower provider's goes on in the background, and the log says how it went.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

/// Who a connection was before a reconnect made it another account, and what became of
/// that account's grant.
#[derive(Debug)]
pub struct Replaced {
    pub was: AccountIdentity,
    pub grant: ReplacedGrant,
}

/// What became of the grant of the account a reconnect replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplacedGrant {
    /// Revoked at the provider.
    Revoked,
    /// Kept: these connections (of the provider, or of a table configured as the same
    /// client there) are that account too.
    Shared(Vec<String>),
    /// Kept: this many connections of the same client, whose account at the provider is
    /// unknown, may share it.
    Unknown(usize),
    /// The provider has no revocation endpoint: the grant stays valid there.
    NotOffered,
    /// Still being revoked when the page was answered: the log says how it went.
    Pending,
    /// Not revoked, for this reason: the grant may stay valid there.
    Failed(String),
}

impl ReplacedGrant {
    /// What became of it, for people: "its grant …". `name_others`: whether the
    /// connections that share it may be named (not to a person an app sent, whose key may
    /// reach only some accounts).
    pub fn describe(&self, provider: &str, name_others: bool) -> String {
        let remove = format!("remove oauthd's access in that account's settings at {provider}");
        match self {
            ReplacedGrant::Revoked => format!("its grant was revoked at {provider}"),
            ReplacedGrant::Shared(others) => {
                let (who, verb) = match others.as_slice() {
                    [one] if name_others => (one.clone(), "is"),
                    _ if name_others => (others.join(", "), "are"),
                    [_] => ("another connection".to_owned(), "is"),
                    _ => (format!("{} other connections", others.len()), "are"),
                };
                format!("its grant was kept, since {who} {verb} that account at {provider} too: at most providers they share one grant (one that gives each sign-in a grant of its own keeps the one it was, unused, until it expires)")
            }
            ReplacedGrant::Unknown(n) => format!(
                "its grant was kept, since {n} connection(s) of {provider} whose account there is unknown (imported, or connected before oauthd kept it) may share it; if none is that account, {remove}"
            ),
            ReplacedGrant::NotOffered => format!(
                "{provider} offers no revocation, so its grant stays valid there: {remove}"
            ),
            ReplacedGrant::Pending => format!(
                "its grant is being revoked at {provider}, which is slow to answer{}",
                if name_others {
                    " (oauthd's log says how it went)"
                } else {
                    ""
                }
            ),
            ReplacedGrant::Failed(why) => {
                format!("its grant could not be revoked ({why}) and may stay valid: {remove}")
            }
        }
    }
}

impl Broker {
    /// Once a reconnect of `old`'s connection to another account (`now`) is stored: the
    /// change said in the log at once (`how`: "connect", "device"; a terminal command
    /// shows the line too), and the old grant revoked where nothing may share it. A serving
    /// oauthd waits `REVOKE_WAIT` at most for it; a terminal command until it is done.
    pub(super) async fn end_replaced(
        self: &Arc<Self>,
        how: &'static str,
        old: ConnectionRow,
        now: &AccountIdentity,
    ) -> Replaced {
        let key = old.key();
        log::warn!(
            "{how} {key}: it was {} at {}, and is now {}: apps that read {key} get the new account's tokens",
            who(&old.identity),
            key.provider,
            who(now)
        );
        let was = old.identity.clone();
        let this = self.clone();
        let revoking = async move {
            let grant = this.revoke_replaced(&old).await;
            let said = grant.describe(&key.provider, true);
            // A WARN as the change itself: a terminal command shows it.
            log::warn!("{how} {key}: the account it was: {said}");
            if grant == ReplacedGrant::Revoked {
                // Not waited for by the page: it said what became of the grant.
                let checker = this.clone();
                let checking = async move { checker.check_after_revoking(&old).await };
                if this.serving() {
                    this.spawn_counted(checking);
                } else {
                    checking.await;
                }
            }
            grant
        };
        let grant = if self.serving() {
            // Counted: a stop waits for it.
            let task = self.spawn_counted(revoking);
            match tokio::time::timeout(REVOKE_WAIT, task).await {
                Ok(Ok(grant)) => grant,
                Ok(Err(e)) => ReplacedGrant::Failed(format!("the revocation did not finish: {e}")),
                Err(_) => ReplacedGrant::Pending,
            }
        } else {
            revoking.await
        };
        Replaced { was, grant }
    }

    async fn revoke_replaced(&self, old: &ConnectionRow) -> ReplacedGrant {
        let Some(provider) = self.providers.get(&old.provider).cloned() else {
            return ReplacedGrant::Failed("its provider is not configured".into());
        };
        let kept = async {
            let same = self.same_account(old).await?;
            if !same.is_empty() {
                let names = same.iter().map(ConnectionKey::to_string).collect();
                return Ok(Some(ReplacedGrant::Shared(names)));
            }
            let unknown = self.unknown_accounts(old).await?;
            Ok::<_, crate::store::StoreError>(
                (unknown > 0).then_some(ReplacedGrant::Unknown(unknown)),
            )
        };
        match kept.await {
            Ok(Some(kept)) => return kept,
            Ok(None) => {}
            Err(e) => {
                return ReplacedGrant::Failed(format!(
                    "whether other connections are that account could not be told: {}",
                    e.for_callers()
                ))
            }
        }
        let tokens = match self.open_tokens(old) {
            Ok(tokens) => tokens,
            Err(e) => {
                log::warn!(
                    "{}: the tokens of the account it was could not be opened: {e}",
                    old.key()
                );
                return ReplacedGrant::Failed(
                    "its tokens could not be opened with the vault key loaded".into(),
                );
            }
        };
        match self
            .revoke_tokens(&provider, tokens, &mut Default::default())
            .await
        {
            Ok(()) => match self.endpoints(&provider).await {
                Ok(endpoints) if endpoints.revocation.is_none() => ReplacedGrant::NotOffered,
                _ => ReplacedGrant::Revoked,
            },
            Err(e) => ReplacedGrant::Failed(e.for_callers()),
        }
    }

    /// How many other active connections of `old`'s client (its table, and the tables
    /// configured as the same client) say nothing of their account at the provider.
    async fn unknown_accounts(
        &self,
        old: &ConnectionRow,
    ) -> Result<usize, crate::store::StoreError> {
        let tables = self.same_client_tables(&old.provider);
        Ok(self
            .store
            .list_connections()
            .await?
            .iter()
            .filter(|row| {
                row.identity.sub.is_none()
                    && row.status != ConnectionStatus::NeedsReauth
                    && tables.contains(&row.provider.as_str())
                    && (row.provider != old.provider || row.account != old.account)
            })
            .count())
    }

    /// After the grant `old` held was revoked: the connections that are its account now
    /// (made so while it was revoked, this one included), and this one whatever its
    /// account (a provider may count both as one person, whose one grant the revocation
    /// ended), refreshed, so that one whose grant ended is `needs_reauth` (and said) at
    /// once rather than at its next refresh.
    async fn check_after_revoking(self: &Arc<Self>, old: &ConnectionRow) {
        let mut keys = vec![old.key()];
        let sub = old.identity.sub.as_deref().unwrap_or_default();
        match self.signed_in_as(&old.provider, sub).await {
            Ok(same) => keys.extend(same.into_iter().filter(|k| *k != old.key())),
            Err(e) => log::warn!(
                "{}: could not look for connections of the account whose grant was revoked ({e})",
                old.key()
            ),
        }
        for key in keys {
            if let Err(e) = self.refresh_now(&key).await {
                log::warn!(
                    "after revoking the grant {} replaced: {key}: {e}",
                    old.key()
                );
            }
        }
    }
}

/// An account at a provider in a log line: its email, or name, and its id there, quoted
/// (a name is its user's choice, control characters and all).
pub(super) fn who(identity: &AccountIdentity) -> String {
    let sub = identity.sub.as_deref().unwrap_or("?");
    match identity.email.as_deref().or(identity.name.as_deref()) {
        Some(shown) if shown != sub => format!("{shown:?} (id {sub:?})"),
        _ => format!("id {sub:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::ReplacedGrant;

    #[test]
    fn the_connections_sharing_a_kept_grant_are_named_only_when_they_may_be() {
        let one = ReplacedGrant::Shared(vec!["peer/alice".into()]);
        let two = ReplacedGrant::Shared(vec!["peer/alice".into(), "peer/ann".into()]);
        assert!(one
            .describe("peer", true)
            .contains("since peer/alice is that account"));
        assert!(two
            .describe("peer", true)
            .contains("since peer/alice, peer/ann are that account"));
        assert!(one
            .describe("peer", false)
            .contains("since another connection is"));
        assert!(two
            .describe("peer", false)
            .contains("since 2 other connections are"));
    }
}
