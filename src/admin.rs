//! Admin sign-in for the browser: one-time login links (printed at start until someone
//! signs in, and by `oauthd admin link`), or a fixed `OAUTHD_ADMIN_TOKEN`; then a session
//! cookie. Only hashes of links and sessions are stored.

use crate::clock::now_ms;
use crate::secret::{is_token_shaped, random_bytes, SecretHash};
use crate::store::{AdminSecretKind, AdminStore, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use url::Url;
use zeroize::Zeroizing;

pub const SESSION_COOKIE: &str = "oauthd_session";
const LOGIN_LINK_TTL_MS: i64 = 24 * 3600 * 1000;
pub const SESSION_TTL_SECS: i64 = 7 * 24 * 3600;

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

pub struct Admin {
    store: Arc<dyn AdminStore>,
    static_token: Option<Zeroizing<String>>,
}

fn new_secret() -> Result<Zeroizing<String>, StoreError> {
    random_bytes::<32>()
        .map(|b| Zeroizing::new(URL_SAFE_NO_PAD.encode(b)))
        .map_err(|_| StoreError::unavailable("making an admin secret", "no randomness"))
}

impl Admin {
    /// `OAUTHD_ADMIN_TOKEN` (or the file named by `OAUTHD_ADMIN_TOKEN_FILE`) signs in too.
    pub fn new(store: Arc<dyn AdminStore>) -> Result<Admin, String> {
        let static_token = crate::config::secret_from_env("OAUTHD_ADMIN_TOKEN")?;
        Ok(Admin {
            store,
            static_token,
        })
    }

    pub fn has_static_token(&self) -> bool {
        self.static_token.is_some()
    }

    /// A new one-time login link, valid 24 hours.
    pub async fn login_link(&self, public_url: &Url) -> Result<Url, StoreError> {
        let secret = new_secret()?;
        self.store
            .insert_admin_secret(
                SecretHash::of(&secret),
                AdminSecretKind::LoginLink,
                now_ms() + LOGIN_LINK_TTL_MS,
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

    /// Whether a login link should be printed at start: nobody can sign in otherwise.
    pub async fn needs_first_link(&self) -> Result<bool, StoreError> {
        Ok(!self.has_static_token() && !self.store.any_admin_session(now_ms()).await?)
    }

    /// Exchanges a login link's token (used up) or the admin token for a session secret.
    pub async fn sign_in(&self, presented: &str) -> Result<Option<Zeroizing<String>>, StoreError> {
        let by_static = self
            .static_token
            .as_ref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(presented.as_bytes())));
        let by_link = !by_static
            && is_token_shaped(presented)
            && self
                .store
                .take_admin_secret(
                    SecretHash::of(presented),
                    AdminSecretKind::LoginLink,
                    now_ms(),
                )
                .await?;
        if !by_static && !by_link {
            return Ok(None);
        }
        let session = new_secret()?;
        self.store
            .insert_admin_secret(
                SecretHash::of(&session),
                AdminSecretKind::Session,
                now_ms() + SESSION_TTL_SECS * 1000,
            )
            .await?;
        Ok(Some(session))
    }

    pub async fn session_valid(&self, cookie: &str) -> Result<bool, StoreError> {
        if !is_token_shaped(cookie) {
            return Ok(false);
        }
        self.store
            .admin_secret_valid(SecretHash::of(cookie), AdminSecretKind::Session, now_ms())
            .await
    }
}
