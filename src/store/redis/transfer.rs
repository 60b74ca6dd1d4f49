//! `TransferStore` on Redis: the active keys by their names' map, states by SCAN, and a
//! connection written whole in one script.

use super::{Changes, RedisStore, APPLY_LUA};
use crate::secret::SecretHash;
use crate::store::{ApiKeyRecord, ConnectionRow, StateRow, StoreError, TransferStore};
use async_trait::async_trait;
use redis::Script;
use std::collections::HashMap;
use std::sync::LazyLock;

/// KEYS: conn, index. ARGV: member, changes…. 0 when the connection is there already.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{APPLY_LUA}\n{}",
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
apply(KEYS[1], 2)
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"#
    ))
});

/// A connection's fields as the other scripts write them, none left out.
fn fields(row: ConnectionRow) -> Changes {
    let mut ch = Changes::default();
    ch.put("provider", row.provider)
        .put("account", row.account)
        .put("status", row.status.as_str())
        .opt("scopes", row.scopes)
        .put("token_type", row.token_type)
        .put("access_token", row.access_token)
        .opt("refresh_token", row.refresh_token)
        .opt_num("access_expires_at", row.access_expires_at_ms)
        .num("created", row.created_at_ms)
        .num("updated", row.updated_at_ms)
        .opt_num("last_refresh_at", row.last_refresh_at_ms)
        .opt("last_error", row.last_error)
        .num("failures", row.failures)
        .opt_num("retry_at", row.retry_at_ms)
        .num("generation", row.generation)
        .opt("account_sub", row.identity.sub)
        .opt("account_email", row.identity.email)
        .opt("account_name", row.identity.name)
        .opt_num("connected_at", row.connected_at_ms)
        .opt_num("failing_since", row.failing_since_ms)
        .num("failing_notified", row.told.stored());
    ch
}

#[async_trait]
impl TransferStore for RedisStore {
    async fn keys_to_copy(&self) -> Result<Vec<(ApiKeyRecord, SecretHash)>, StoreError> {
        const CONTEXT: &str = "reading API keys to copy";
        let names = self.index("kn");
        let mut c = self.conn();
        let active: HashMap<String, String> = self
            .run(CONTEXT, async move {
                redis::cmd("HGETALL").arg(names).query_async(&mut c).await
            })
            .await?;
        let mut keys = Vec::with_capacity(active.len());
        for hex in active.into_values() {
            let hash = SecretHash::from_hex(&hex).ok_or_else(|| super::corrupt(CONTEXT, "kn"))?;
            // Revoked since the map was read: not copied.
            if let Some(f) = self.record(CONTEXT, self.key("k", &hex)).await? {
                keys.push((super::keys::record(&f)?, hash));
            }
        }
        keys.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(keys)
    }

    async fn states_to_copy(&self, now_ms: i64) -> Result<Vec<StateRow>, StoreError> {
        self.live_rows("reading states to copy", now_ms, |_| true)
            .await
    }

    async fn copied_to(&self) -> Result<Option<String>, StoreError> {
        let key = self.index("copied_to");
        let mut c = self.conn();
        self.run("reading where the store was copied to", async move {
            redis::cmd("GET").arg(key).query_async(&mut c).await
        })
        .await
    }

    async fn note_copied_to(&self, note: Option<String>) -> Result<(), StoreError> {
        let key = self.index("copied_to");
        let mut c = self.conn();
        self.run("noting where the store was copied to", async move {
            match note {
                Some(note) => {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(note)
                        .query_async(&mut c)
                        .await
                }
                None => redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await,
            }
        })
        .await
    }

    async fn put_connection(&self, row: ConnectionRow) -> Result<(), StoreError> {
        let (conn, _, member) = self.conn_keys(&row.provider, &row.account);
        let shown = member.clone();
        let mut inv = PUT.prepare_invoke();
        inv.key(conn).key(self.index("cs")).arg(member);
        fields(row).to_args(&mut inv);
        let mut c = self.conn();
        let put: i64 = self
            .run("copying a connection", async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        if put == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "connection {shown} is there already"
            )))
        }
    }
}
