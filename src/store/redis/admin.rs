//! `AdminStore` on Redis: each login link or session is a key holding its expiry, with a
//! Redis TTL to match.

use super::{hex, RedisStore};
use crate::secret::SecretHash;
use crate::store::{AdminSecretKind, AdminStore, SecretUse, StoreError};
use async_trait::async_trait;

impl RedisStore {
    fn admin_key(&self, hash: &SecretHash, kind: AdminSecretKind) -> String {
        self.key("a", &format!("{}:{}", kind.as_str(), hex(hash)))
    }

    /// What every key of this kind starts with.
    fn admin_prefix(&self, kind: AdminSecretKind) -> String {
        self.key("a", &format!("{}:", kind.as_str()))
    }

    async fn admin_get(
        &self,
        context: &'static str,
        cmd: &'static str,
        key: String,
    ) -> Result<Option<i64>, StoreError> {
        let mut c = self.conn();
        self.run(context, async move {
            redis::cmd(cmd).arg(key).query_async(&mut c).await
        })
        .await
    }
}

#[async_trait]
impl AdminStore for RedisStore {
    async fn insert_admin_secret(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let key = self.admin_key(&hash, kind);
        let mut c = self.conn();
        // Expiry is absolute (`PXAT`): the store never needs to know what time it is.
        self.run("storing an admin secret", async move {
            redis::cmd("SET")
                .arg(key)
                .arg(expires_at_ms)
                .arg("PXAT")
                .arg(expires_at_ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn replace_login_link(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        ends: &[AdminSecretKind],
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        self.end_login_links(ends).await?;
        self.insert_admin_secret(hash, kind, expires_at_ms).await
    }

    async fn end_login_links(&self, ends: &[AdminSecretKind]) -> Result<(), StoreError> {
        const CONTEXT: &str = "ending login links";
        // Every earlier link, whichever oauthd made it, is found by a scan: making a link
        // is rare (a start, `oauthd admin link`, a sign-in with one).
        let mut before = Vec::new();
        for ended in ends {
            before.extend(self.scan_keys(CONTEXT, self.admin_prefix(*ended)).await?);
        }
        if before.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        self.run(CONTEXT, async move {
            redis::cmd("DEL")
                .arg(before)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn use_admin_secret(
        &self,
        (hash, kind): (SecretHash, AdminSecretKind),
        how: SecretUse,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let cmd = match how {
            SecretUse::Check => "GET",
            SecretUse::Take => "GETDEL",
        };
        let key = self.admin_key(&hash, kind);
        let expires = self.admin_get("using an admin secret", cmd, key).await?;
        Ok(expires.is_some_and(|e| e > now_ms))
    }

    /// Asked once at start: a scan of the sessions, as SQLite reads its rows (a marker
    /// kept beside them outlived a session signed out, and a start then printed no link).
    async fn any_admin_session(&self, now_ms: i64) -> Result<bool, StoreError> {
        Ok(!self.list_admin_sessions(now_ms).await?.is_empty())
    }

    async fn list_admin_sessions(&self, now_ms: i64) -> Result<Vec<(SecretHash, i64)>, StoreError> {
        const CONTEXT: &str = "listing admin sessions";
        let prefix = self.admin_prefix(AdminSecretKind::Session);
        let keys = self.scan_keys(CONTEXT, prefix.clone()).await?;
        let expiries = self.mget(CONTEXT, &keys).await?;
        let mut out: Vec<(SecretHash, i64)> = keys
            .iter()
            .zip(expiries)
            .filter_map(|(key, expires)| {
                let hash = SecretHash::from_hex(key.strip_prefix(&prefix)?)?;
                let expires: i64 = std::str::from_utf8(&expires?).ok()?.parse().ok()?;
                (expires > now_ms).then_some((hash, expires))
            })
            .collect();
        out.sort_by_key(|(_, e)| *e);
        Ok(out)
    }

    async fn delete_admin_sessions(
        &self,
        hashes: Option<Vec<SecretHash>>,
    ) -> Result<usize, StoreError> {
        const CONTEXT: &str = "revoking admin sessions";
        let keys = match hashes {
            Some(list) => list
                .iter()
                .map(|h| self.admin_key(h, AdminSecretKind::Session))
                .collect(),
            None => {
                let prefix = self.admin_prefix(AdminSecretKind::Session);
                self.scan_keys(CONTEXT, prefix).await?
            }
        };
        if keys.is_empty() {
            return Ok(0);
        }
        let n = keys.len();
        let mut c = self.conn();
        let removed: usize = self
            .run(CONTEXT, async move {
                redis::cmd("DEL").arg(&keys).query_async(&mut c).await
            })
            .await?;
        Ok(removed.min(n))
    }
}
