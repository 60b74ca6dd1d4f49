//! A reconnect that made a connection another account at the provider than it was (a
//! browser, or a device, signed in there as someone else): the apps that read the
//! connection get the new account's tokens from then on, and the grant of the account it
//! was has no row left to be revoked from. Once the new tokens are stored, that grant is
//! revoked (RFC 7009), unless another connection is that account too: at most providers
//! they share it, and revoking would end theirs.

use super::Broker;
use crate::oauth::Provider;
use crate::store::{AccountIdentity, ConnectionKey, ConnectionRow};

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
    /// The provider has no revocation endpoint: the grant stays valid there.
    NotOffered,
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
                format!("its grant was kept, since {who} {verb} that account at {provider} too")
            }
            ReplacedGrant::NotOffered => {
                format!("{provider} offers no revocation, so its grant stays valid there: {remove}")
            }
            ReplacedGrant::Failed(why) => {
                format!("its grant could not be revoked ({why}) and may stay valid: {remove}")
            }
        }
    }
}

impl Broker {
    /// Once a reconnect of `old`'s connection to another account (`now`) is stored: the
    /// old grant revoked where nothing else shares it, and the change said in the log
    /// (`how`: "connect", "device"), whose line a terminal command shows too.
    pub(super) async fn end_replaced(
        &self,
        provider: &Provider,
        how: &str,
        old: ConnectionRow,
        now: &AccountIdentity,
    ) -> Replaced {
        let grant = self.revoke_replaced(provider, &old).await;
        let key = old.key();
        log::warn!(
            "{how} {key}: it was {} at {}, and is now {}: apps that read {key} get the new account's tokens; the account it was: {}",
            who(&old.identity),
            key.provider,
            who(now),
            grant.describe(&key.provider, true)
        );
        Replaced {
            was: old.identity,
            grant,
        }
    }

    async fn revoke_replaced(&self, provider: &Provider, old: &ConnectionRow) -> ReplacedGrant {
        match self.same_account(old).await {
            Ok(same) if !same.is_empty() => {
                return ReplacedGrant::Shared(same.iter().map(ConnectionKey::to_string).collect())
            }
            Ok(_) => {}
            Err(e) => {
                return ReplacedGrant::Failed(format!(
                    "whether other connections are that account could not be told: {e}"
                ))
            }
        }
        let tokens = match self.open_tokens(old) {
            Ok(tokens) => tokens,
            Err(e) => return ReplacedGrant::Failed(format!("its tokens could not be opened: {e}")),
        };
        match self
            .revoke_tokens(provider, tokens, &mut Default::default())
            .await
        {
            Ok(()) => match self.endpoints(provider).await {
                Ok(endpoints) if endpoints.revocation.is_none() => ReplacedGrant::NotOffered,
                _ => ReplacedGrant::Revoked,
            },
            Err(e) => ReplacedGrant::Failed(e.to_string()),
        }
    }
}

/// An account at a provider in a log line: its email, or name, and its id there, quoted
/// (a name is its user's choice, control characters and all).
fn who(identity: &AccountIdentity) -> String {
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
