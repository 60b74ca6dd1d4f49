//! The operator's browser sign-ins: one-time links and sessions, kept by hash.

use super::*;

/// What an admin secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminSecretKind {
    /// A one-time login link `oauthd admin link` made: consumed on use.
    LoginLink,
    /// A one-time login link a start printed (nobody had signed in): consumed on use.
    StartLink,
    /// A browser session cookie.
    Session,
}

impl AdminSecretKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminSecretKind::LoginLink => "login_link",
            AdminSecretKind::StartLink => "start_link",
            AdminSecretKind::Session => "session",
        }
    }
}

/// What using an admin secret does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretUse {
    /// Only look (a session on every request, a link preview).
    Check,
    /// Delete it in the same step (a login link is used once; signing out).
    Take,
}

#[async_trait]
pub trait AdminStore: Send + Sync {
    async fn insert_admin_secret(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Stores a new login link of `kind` and ends every earlier one of the kinds `ends`,
    /// in one step: restarts (a crash loop prints one each time) do not pile up live
    /// sign-in credentials in the log.
    async fn replace_login_link(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        ends: &[AdminSecretKind],
        expires_at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Ends every login link of the kinds `ends` (a sign-in made with one: no link printed
    /// before needs to live on).
    async fn end_login_links(&self, ends: &[AdminSecretKind]) -> Result<(), StoreError>;
    /// Whether an unexpired secret of this kind exists; `SecretUse::Take` deletes it in
    /// the same step (one-time links, sign-out).
    async fn use_admin_secret(
        &self,
        secret: (SecretHash, AdminSecretKind),
        how: SecretUse,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Whether anyone ever signed in (an unexpired session exists).
    async fn any_admin_session(&self, now_ms: i64) -> Result<bool, StoreError>;
    /// Unexpired browser sessions, by hash and expiry, soonest expiry first.
    async fn list_admin_sessions(&self, now_ms: i64) -> Result<Vec<(SecretHash, i64)>, StoreError>;
    /// Deletes these sessions (every session with `None`); returns how many were there.
    async fn delete_admin_sessions(
        &self,
        hashes: Option<Vec<SecretHash>>,
    ) -> Result<usize, StoreError>;
}
