//! Token import: tokens an app already holds (in its own table, from before oauthd)
//! handed over without asking every user to sign in again. Stored exactly as tokens from
//! a flow: sealed, refreshed and kept alive from then on; a refresh token the provider
//! rejects ends as `needs_reauth` like any other.

use super::{Broker, BrokerError};
use crate::oauth::flows::TokenSet;
use crate::oauth::token_text::{scope_fault, token_fault, token_type_fault};
use crate::store::{AccountIdentity, ConnectionKey, ConnectionSave, ConnectionStatus, Told};
use chrono::DateTime;
use serde_json::{Map, Value};
use std::time::Duration;
use zeroize::Zeroizing;

/// Longest token accepted, in bytes (JWT access tokens with many claims run to a few KB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The largest import body: two tokens at their longest, each escaped at most to twice
/// its length (visible ASCII: only `"` and `\` are escaped), and room for the rest.
pub const MAX_IMPORT_BODY_BYTES: usize = 4 * MAX_TOKEN_BYTES + 4 * 1024;
/// The fields an import object may carry besides the ones a caller reads itself.
pub const IMPORT_FIELDS: [&str; 6] = [
    "access_token",
    "refresh_token",
    "expires_at",
    "expires_in",
    "scope",
    "token_type",
];

/// When the imported access token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportExpiry {
    Unknown,
    AtMs(i64),
    In(Duration),
}

/// Tokens to import. Zeroized when dropped; `Debug` never shows them.
pub struct ImportedTokens {
    access_token: Zeroizing<String>,
    refresh_token: Option<Zeroizing<String>>,
    expiry: ImportExpiry,
    scope: Option<String>,
    token_type: String,
}

impl std::fmt::Debug for ImportedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedTokens")
            .field("expiry", &self.expiry)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether the import made a new connection or replaced one, or kept the one there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    Created,
    Replaced,
    /// Kept (`Replacing::Imported`): its tokens came from the provider through oauthd, a
    /// connect or a refresh, at this time (`None`: a refresh of it is under way).
    Kept {
        since_ms: Option<i64>,
    },
}

/// Which connection an import replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacing {
    /// Any (`PUT`, `import --replace`).
    Any,
    /// Only one whose tokens are still the ones imported, that needs reauth, or that has
    /// no refresh token: one whose refresh token oauthd got from the provider since (a
    /// connect, a refresh), or is getting now, is kept. Imported again, older tokens would
    /// replay a refresh token the provider may have rotated out since, which ends the whole
    /// grant at providers that rotate them.
    Imported,
}

fn bad(message: impl Into<String>) -> BrokerError {
    BrokerError::InvalidImport(message.into())
}

/// A string field; the message names the field, never its value.
fn string_field(map: &mut Map<String, Value>, name: &str) -> Result<Option<String>, BrokerError> {
    match map.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(bad(format!("{name} must not be empty"))),
        Some(Value::String(s)) if s.len() > MAX_TOKEN_BYTES => Err(bad(format!(
            "{name} is longer than {MAX_TOKEN_BYTES} bytes"
        ))),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{name} must be a string"))),
    }
}

impl ImportedTokens {
    /// Reads an import object: `access_token`, and optionally `refresh_token`,
    /// `expires_at` (RFC 3339) or `expires_in` (seconds), `scope`, `token_type`. Unknown
    /// fields are refused; no message repeats a value.
    pub fn from_json(mut map: Map<String, Value>) -> Result<ImportedTokens, BrokerError> {
        let access_token = string_field(&mut map, "access_token")?
            .ok_or_else(|| bad("access_token is required"))?;
        // Empty, as an app's table holds "" where it has none (and a provider's answer
        // that carries one is read): none.
        if map
            .get("refresh_token")
            .is_some_and(|v| v.as_str() == Some(""))
        {
            map.remove("refresh_token");
        }
        let refresh_token = string_field(&mut map, "refresh_token")?;
        let expires_at = string_field(&mut map, "expires_at")?;
        let expires_in = match map.remove("expires_in") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                crate::numbers::whole_number(&n)
                    .or_else(|| beyond_any_lifetime(&n))
                    .ok_or_else(|| bad("expires_in must be a whole number of seconds"))?,
            ),
            // As providers write it at times (and oauthd reads it from them): "3600".
            // Read as the same number written without quotes would be.
            Some(Value::String(s)) => Some(
                serde_json::from_str::<serde_json::Number>(s.trim())
                    .ok()
                    .as_ref()
                    .and_then(|n| {
                        crate::numbers::whole_number(n).or_else(|| beyond_any_lifetime(n))
                    })
                    .ok_or_else(|| bad("expires_in must be a whole number of seconds"))?,
            ),
            Some(_) => return Err(bad("expires_in must be a number of seconds")),
        };
        let scope = string_field(&mut map, "scope")?;
        // The rules a provider's access token is held to (`token_text`); a refresh token
        // too, stricter than a provider's (which goes only into form bodies, so any text
        // is taken): an import is typed or pasted, and a stray line break is a mistake.
        for (name, value) in [
            ("access_token", Some(&access_token)),
            ("refresh_token", refresh_token.as_ref()),
        ] {
            if let Some(fault) = value.and_then(|v| token_fault(name, v)) {
                return Err(bad(fault));
            }
        }
        if let Some(fault) = scope.as_deref().and_then(scope_fault) {
            return Err(bad(fault));
        }
        let token_type = string_field(&mut map, "token_type")?.unwrap_or_else(|| "Bearer".into());
        if let Some(fault) = token_type_fault(&token_type) {
            return Err(bad(fault));
        }
        if let Some(field) = map.keys().next() {
            let shown: String = field.chars().take(64).collect();
            return Err(bad(format!(
                "unknown field {shown:?}; an import has {}",
                IMPORT_FIELDS.join(", ")
            )));
        }
        let expiry = match (expires_at, expires_in) {
            (Some(_), Some(_)) => return Err(bad("send expires_at or expires_in, not both")),
            (Some(at), None) => ImportExpiry::AtMs(
                DateTime::parse_from_rfc3339(&at)
                    .map_err(|_| bad("expires_at must be an RFC 3339 time"))?
                    .timestamp_millis(),
            ),
            (None, Some(secs)) => ImportExpiry::In(Duration::from_secs(secs)),
            (None, None) => ImportExpiry::Unknown,
        };
        Ok(ImportedTokens {
            access_token: Zeroizing::new(access_token),
            refresh_token: refresh_token.map(Zeroizing::new),
            expiry,
            scope,
            token_type,
        })
    }
}

/// A whole number of seconds too large to be held exactly (`1e20`): longer than any
/// lifetime oauthd keeps, which is what it is taken as.
fn beyond_any_lifetime(n: &serde_json::Number) -> Option<u64> {
    n.as_f64()
        .filter(|f| *f > 1e15 && f.is_finite() && f.fract() == 0.0)
        .map(|_| u64::MAX)
}

impl Broker {
    /// Stores tokens an app already holds for a configured provider, sealed as if oauthd
    /// had obtained them, over the connection there as `replacing` says. Importing the
    /// same tokens again replaces them, or keeps what oauthd refreshed since (idempotent).
    pub async fn import_tokens(
        &self,
        provider: &str,
        account: &str,
        tokens: ImportedTokens,
        replacing: Replacing,
    ) -> Result<Imported, BrokerError> {
        let provider = self.provider(provider)?.name.clone();
        let account = Self::account(Some(account))?;
        let key = ConnectionKey::new(&provider, &account);
        let before = self.store.get_connection(&key).await?;
        let now = self.clock.now_ms();
        if let (Replacing::Imported, Some(b)) = (replacing, &before) {
            let live = b.status != ConnectionStatus::NeedsReauth && b.refresh_token.is_some();
            // A refresh under way saves after this import, or is fenced off by it and its
            // rotated refresh token lost.
            if live && b.lease_until_ms.is_some_and(|until| until > now) {
                return Ok(Imported::Kept { since_ms: None });
            }
            if let Some(since_ms) = b.last_refresh_at_ms.filter(|_| live) {
                return Ok(Imported::Kept {
                    since_ms: Some(since_ms),
                });
            }
        }
        // Both ways at most `MAX_EXPIRES_IN` ahead, as a provider's `expires_in` is taken.
        let longest = now.saturating_add(super::grant::MAX_EXPIRES_IN.as_millis() as i64);
        let expires_at_ms = match tokens.expiry {
            ImportExpiry::Unknown => None,
            ImportExpiry::AtMs(at) => Some(at.min(longest)),
            ImportExpiry::In(d) => {
                Some(now.saturating_add(d.min(super::grant::MAX_EXPIRES_IN).as_millis() as i64))
            }
        };
        // Stored, it would only ever answer needs_reauth: the app is told now instead.
        if tokens.refresh_token.is_none() && expires_at_ms.is_some_and(|at| at <= now) {
            return Err(bad(
                "the access token has expired and there is no refresh_token to renew it: \
                 nothing usable to import (send a refresh_token, or connect the account)",
            ));
        }
        let set = TokenSet {
            access_token: tokens.access_token,
            token_type: tokens.token_type,
            expires_in: None,
            refresh_token: tokens.refresh_token,
            scopes: tokens
                .scope
                .map(|s| s.split_whitespace().map(str::to_owned).collect()),
            id_token: None,
            access_fault: None,
            asked: std::time::Instant::now(),
        };
        let mut sealed = self.seal_tokens(&provider, &account, &set, None)?;
        sealed.access_expires_at_ms = expires_at_ms;
        let events = self.connected_events(
            &key,
            before.as_ref(),
            super::events::Via::Import,
            (&AccountIdentity::default(), &[], None),
        );
        // Dropped after the write (even when this call is cancelled meanwhile): reads that
        // began before it cannot put the old token back.
        let saving = self.token_cache.forget_after(&key);
        // Tokens an app hands in prove nothing: what the operator was told of the
        // connection's trouble stands until a refresh succeeds or the account is connected
        // again (then `recovered`), and a refusal of their refresh is not told again
        // meanwhile (the expiry of tokens without a refresh token is: that is news).
        let told = match &before {
            Some(b) if b.status == ConnectionStatus::NeedsReauth => b.told.with(Told::NEEDS_REAUTH),
            Some(b) => b.told,
            None => Told::NOTHING,
        };
        let save = ConnectionSave {
            key,
            tokens: sealed,
            identity: AccountIdentity::default(),
            told,
            from_provider: false,
        };
        self.store
            .save_connection(save, now, self.notifier.deliveries(&events))
            .await?;
        self.notifier.written(&events);
        drop(saving);
        log::info!("connection {provider}/{account}: tokens imported");
        Ok(if before.is_some() {
            Imported::Replaced
        } else {
            Imported::Created
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ImportedTokens, BrokerError> {
        match v {
            Value::Object(map) => ImportedTokens::from_json(map),
            _ => unreachable!(),
        }
    }

    #[test]
    fn an_import_object_reads_back_and_refusals_never_repeat_a_value() {
        let t = parse(
            json!({"access_token": "at", "refresh_token": "rt", "expires_in": 60,
                             "scope": "a b", "token_type": "bearer"}),
        )
        .unwrap();
        assert_eq!(t.access_token.as_str(), "at");
        assert_eq!(t.expiry, ImportExpiry::In(Duration::from_secs(60)));
        // A whole number however it is written (JSON Schema's integers, as clients send them).
        let t = parse(json!({"access_token": "at", "expires_in": 3599.0})).unwrap();
        assert_eq!(t.expiry, ImportExpiry::In(Duration::from_secs(3599)));
        let t = parse(json!({"access_token": "at", "expires_at": "2030-01-01T00:00:00Z"})).unwrap();
        assert_eq!(t.expiry, ImportExpiry::AtMs(1_893_456_000_000));
        assert_eq!(t.token_type, "Bearer");
        // An app's table holds "" where it has no refresh token: none, as in a provider's
        // answer (it was refused).
        let t = parse(json!({"access_token": "at", "refresh_token": "", "expires_in": 60}));
        assert!(t.unwrap().refresh_token.is_none());
        for bad in [
            json!({}),
            json!({"access_token": ""}),
            json!({"access_token": 5}),
            json!({"access_token": "a", "expires_in": "SECRET-VALUE"}),
            json!({"access_token": "a", "expires_at": "SECRET-VALUE"}),
            json!({"access_token": "a", "expires_in": 5, "expires_at": "2030-01-01T00:00:00Z"}),
            json!({"access_token": "a", "refresh": "SECRET-VALUE"}),
            json!({"access_token": "a", "expires_in": -1}),
            json!({"access_token": "a", "expires_in": 1.5}),
            json!({"access_token": "a", "token_type": "Bea\u{0}rer"}),
            json!({"access_token": "a", "token_type": "Bearer\r\nX-Evil: 1"}),
            json!({"access_token": "a", "token_type": ""}),
        ] {
            let e = parse(bad.clone()).unwrap_err().to_string();
            assert!(!e.contains("SECRET-VALUE"), "{bad}: {e}");
            assert!(matches!(
                parse(bad).unwrap_err(),
                BrokerError::InvalidImport(_)
            ));
        }
        assert!(
            !format!("{:?}", parse(json!({"access_token": "SECRET"})).unwrap()).contains("SECRET")
        );
    }
}
