//! `AdminStore` on Redis: each login link or session is a key holding its expiry, with a
//! Redis TTL to match; `a:any-session` lives as long as the longest session.

use super::{hex, RedisStore};
use crate::secret::SecretHash;
use crate::store::{AdminSecretKind, AdminStore, StoreError};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

/// KEYS: secret, marker (or the secret again). ARGV: expires at, ttl ms, is session.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] == '1' and redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
"#,
    )
});

impl RedisStore {
    fn admin_key(&self, hash: &SecretHash, kind: AdminSecretKind) -> String {
        self.key("a", &format!("{}:{}", kind.as_str(), hex(hash)))
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
        let marker = self.key("a", "any-session");
        let ttl = (expires_at_ms - crate::clock::now_ms()).max(1);
        let session = if kind == AdminSecretKind::Session {
            "1"
        } else {
            "0"
        };
        let mut c = self.conn();
        self.run("storing an admin secret", async move {
            INSERT
                .key(key)
                .key(marker)
                .arg(expires_at_ms)
                .arg(ttl)
                .arg(session)
                .invoke_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn take_admin_secret(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.admin_key(&hash, kind);
        let expires = self
            .admin_get("using an admin login link", "GETDEL", key)
            .await?;
        Ok(expires.is_some_and(|e| e > now_ms))
    }

    async fn admin_secret_valid(
        &self,
        hash: SecretHash,
        kind: AdminSecretKind,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = self.admin_key(&hash, kind);
        let expires = self
            .admin_get("checking an admin session", "GET", key)
            .await?;
        Ok(expires.is_some_and(|e| e > now_ms))
    }

    async fn any_admin_session(&self, now_ms: i64) -> Result<bool, StoreError> {
        let key = self.key("a", "any-session");
        let expires = self
            .admin_get("checking for admin sessions", "GET", key)
            .await?;
        Ok(expires.is_some_and(|e| e > now_ms))
    }
}
