//! Admin sign-in for the browser: one-time login links (printed at start until someone
//! signs in, and by `oauthd admin link`), or a fixed `OAUTHD_ADMIN_TOKEN`; then a session
//! cookie. Only hashes of links and sessions are stored.

use crate::clock::Clock;
use crate::secret::{is_token_shaped, random_bytes, SecretHash, SecretText};
use crate::store::{AdminSecretKind, AdminStore, SecretUse, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use url::Url;
use zeroize::Zeroizing;

pub const SESSION_COOKIE: &str = "oauthd_session";
const LOGIN_LINK_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a browser session lasts unless `admin_session_hours` says otherwise.
pub const DEFAULT_SESSION_HOURS: u64 = 7 * 24;

/// The CSRF token of a session: derived, so nothing more is stored.
pub fn csrf_token(session: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"oauthd csrf\0")
        .chain_update(session.as_bytes())
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `presented` is `expected`, in time that depends on neither's content nor
/// length: both are hashed to 32 bytes first, and the digests compared in constant time.
pub fn secret_matches(expected: &str, presented: &str) -> bool {
    SecretHash::of(expected)
        .0
        .ct_eq(&SecretHash::of(presented).0)
        .into()
}

/// A browser session as `oauthd admin sessions list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    /// The first 16 hex digits of the session's hash: enough to revoke it, useless to sign in.
    pub id: String,
    pub expires_at: String,
}

const SESSION_ID_CHARS: usize = 16;

/// The id `oauthd admin sessions list` shows for a session (by its stored hash): what the
/// log names a sign-in by, so that a session it did not expect can be revoked.
pub fn session_id(session: &str) -> String {
    id_of(&SecretHash::of(session))
}

fn id_of(hash: &SecretHash) -> String {
    hash.to_hex()[..SESSION_ID_CHARS].to_owned()
}

/// Who makes a login link. A start's ends the links earlier starts printed (a crash loop
/// leaves one live, not one per start); `oauthd admin link`'s ends every earlier one. A
/// start does not end the command's: one made while oauthd was stopped still works once it
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkBy {
    Start,
    Command,
}

/// The kinds of login links, by who makes them.
const LINKS: [AdminSecretKind; 2] = [AdminSecretKind::LoginLink, AdminSecretKind::StartLink];

/// How a sign-in was presented: a login link's token (link page), or the sign-in form,
/// where the fixed admin token is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInWith {
    LoginLink,
    Form,
}

pub struct Admin {
    store: Arc<dyn AdminStore>,
    static_token: Option<SecretText>,
    session_ttl_ms: i64,
    clock: Clock,
}

fn new_secret() -> Result<Zeroizing<String>, StoreError> {
    random_bytes::<32>()
        .map(|b| Zeroizing::new(URL_SAFE_NO_PAD.encode(b)))
        .map_err(|_| StoreError::unavailable("making an admin secret", "no randomness"))
}

impl Admin {
    /// `static_token` (`OAUTHD_ADMIN_TOKEN`, from the settings) signs in too.
    pub fn new(
        store: Arc<dyn AdminStore>,
        session_hours: u64,
        static_token: Option<SecretText>,
        clock: Clock,
    ) -> Admin {
        Admin {
            store,
            static_token,
            clock,
            session_ttl_ms: i64::try_from(session_hours.saturating_mul(3_600_000))
                .unwrap_or(i64::MAX),
        }
    }

    /// How long a session lasts, in seconds (the cookie's Max-Age).
    pub fn session_ttl_secs(&self) -> i64 {
        self.session_ttl_ms / 1000
    }

    pub fn has_static_token(&self) -> bool {
        self.static_token.is_some()
    }

    /// Whether `presented` is the fixed admin token.
    pub fn is_static_token(&self, presented: &str) -> bool {
        self.static_token
            .as_ref()
            .is_some_and(|t| secret_matches(t.expose(), presented))
    }

    /// A new one-time login link, valid 24 hours; the links it ends (`LinkBy`) stop
    /// working.
    pub async fn login_link(&self, public_url: &Url, by: LinkBy) -> Result<Url, StoreError> {
        let secret = new_secret()?;
        let (kind, ends): (_, &[AdminSecretKind]) = match by {
            LinkBy::Start => (AdminSecretKind::StartLink, &[AdminSecretKind::StartLink]),
            LinkBy::Command => (AdminSecretKind::LoginLink, &LINKS),
        };
        self.store
            .replace_login_link(
                SecretHash::of(&secret),
                kind,
                ends,
                self.clock.now_ms() + LOGIN_LINK_TTL_MS,
            )
            .await?;
        let mut url = public_url.clone();
        url.set_path(&format!(
            "{}/admin/login",
            public_url.path().trim_end_matches('/')
        ));
        url.query_pairs_mut().append_pair("token", &secret);
        Ok(url)
    }

    /// Whether a login link still works, without using it up (a link preview may look).
    pub async fn login_link_valid(&self, presented: &str) -> Result<bool, StoreError> {
        Ok(self.link_kind(presented).await?.is_some())
    }

    /// The kind of live login link `presented` is, if it is one.
    async fn link_kind(&self, presented: &str) -> Result<Option<AdminSecretKind>, StoreError> {
        for kind in LINKS {
            if self.use_secret(presented, kind, SecretUse::Check).await? {
                return Ok(Some(kind));
            }
        }
        Ok(None)
    }

    /// Whether `presented` is an unexpired secret of this kind (taken when `how` says).
    async fn use_secret(
        &self,
        presented: &str,
        kind: AdminSecretKind,
        how: SecretUse,
    ) -> Result<bool, StoreError> {
        if !is_token_shaped(presented) {
            return Ok(false);
        }
        let secret = (SecretHash::of(presented), kind);
        self.store
            .use_admin_secret(secret, how, self.clock.now_ms())
            .await
    }

    /// Whether a login link should be printed at start: nobody can sign in otherwise.
    pub async fn needs_first_link(&self) -> Result<bool, StoreError> {
        Ok(!self.has_static_token() && !self.store.any_admin_session(self.clock.now_ms()).await?)
    }

    /// Exchanges a login link's token (used up) or, from the sign-in form only, the admin
    /// token for a session secret.
    pub async fn sign_in(
        &self,
        presented: &str,
        with: SignInWith,
    ) -> Result<Option<Zeroizing<String>>, StoreError> {
        let by_static = with == SignInWith::Form && self.is_static_token(presented);
        // Looked up with a read first: a wrong link (most are, from a guesser) costs no
        // write.
        let by_link = !by_static
            && match self.link_kind(presented).await? {
                Some(kind) => self.use_secret(presented, kind, SecretUse::Take).await?,
                None => false,
            };
        if !by_static && !by_link {
            return Ok(None);
        }
        let session = new_secret()?;
        self.store
            .insert_admin_secret(
                SecretHash::of(&session),
                AdminSecretKind::Session,
                self.clock.now_ms().saturating_add(self.session_ttl_ms),
            )
            .await?;
        // Signed in: the links printed before (a start's in the journal, the command's)
        // need not live on. One that fails to end still ends within its 24 hours.
        if by_link {
            if let Err(e) = self.store.end_login_links(&LINKS).await {
                log::warn!("signed in with a login link; the other links could not be ended ({e}): they work until they expire");
            }
        }
        Ok(Some(session))
    }

    pub async fn session_valid(&self, cookie: &str) -> Result<bool, StoreError> {
        self.use_secret(cookie, AdminSecretKind::Session, SecretUse::Check)
            .await
    }

    /// Ends a session: deleted server-side, so the cookie is worthless even if kept.
    pub async fn sign_out(&self, cookie: &str) -> Result<bool, StoreError> {
        self.use_secret(cookie, AdminSecretKind::Session, SecretUse::Take)
            .await
    }

    /// Live sessions, soonest expiry first.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, StoreError> {
        Ok(self
            .store
            .list_admin_sessions(self.clock.now_ms())
            .await?
            .into_iter()
            .map(|(hash, expires)| SessionInfo {
                id: id_of(&hash),
                expires_at: crate::clock::rfc3339(expires),
            })
            .collect())
    }

    /// Revokes the sessions whose id starts with `id` (every session with `None`);
    /// returns how many ended. An id must name exactly one session.
    pub async fn revoke_sessions(&self, id: Option<&str>) -> Result<usize, RevokeError> {
        let Some(id) = id else {
            return Ok(self.store.delete_admin_sessions(None).await?);
        };
        let id = id.to_ascii_lowercase();
        if id.len() < 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RevokeError::BadId);
        }
        let matching: Vec<SecretHash> = self
            .store
            .list_admin_sessions(self.clock.now_ms())
            .await?
            .into_iter()
            .map(|(hash, _)| hash)
            .filter(|hash| hash.to_hex().starts_with(&id))
            .collect();
        match matching.len() {
            0 => Err(RevokeError::NotFound),
            1 => Ok(self.store.delete_admin_sessions(Some(matching)).await?),
            n => Err(RevokeError::Ambiguous(n)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("a session id is at least 4 hex digits, as `oauthd admin sessions list` prints it")]
    BadId,
    #[error("no live session has that id (see `oauthd admin sessions list`)")]
    NotFound,
    #[error("{0} sessions start with that id; give more digits")]
    Ambiguous(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::secret_matches;

    #[test]
    fn secrets_match_by_digest_whatever_their_length() {
        assert!(secret_matches(
            "admin-token-0123456789",
            "admin-token-0123456789"
        ));
        assert!(!secret_matches(
            "admin-token-0123456789",
            "admin-token-012345678"
        ));
        assert!(!secret_matches("admin-token-0123456789", ""));
        assert!(!secret_matches(
            "a",
            "admin-token-0123456789-and-much-longer"
        ));
    }
}
