//! `KeyStore` on Redis: one hash per key (by the key's SHA-256), a name → hash map of the
//! active keys (names are unique among them) and a sorted set of every key for listing.

use super::{hex, int, need_int, need_text, text, Fields, RedisStore};
use crate::secret::SecretHash;
use crate::store::{ApiKeyRecord, KeyStore, StoreError};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

/// KEYS: record, names, all. ARGV: hash, id, name, created, namespaces, accounts ("" for
/// none).
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'name', ARGV[3], 'created', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'namespaces', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'accounts', ARGV[6]) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"#,
    )
});

/// KEYS: record. ARGV: when used. A record that is not there is not made.
static NOTE_USED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local was = tonumber(redis.call('HGET', KEYS[1], 'used'))
if was and was >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'used', ARGV[1])
return 1
"#,
    )
});

/// KEYS: names. ARGV: name, now, record key prefix.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local h = redis.call('HGET', KEYS[1], ARGV[1])
if not h then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', ARGV[3] .. h, 'revoked', ARGV[2])
return 1
"#,
    )
});

pub(super) fn record(f: &Fields) -> Result<ApiKeyRecord, StoreError> {
    const CONTEXT: &str = "reading an API key";
    let patterns = |field: &str| -> Result<Option<Vec<String>>, StoreError> {
        text(f, field)
            .map(|json| {
                serde_json::from_str(&json).map_err(|_| super::corrupt(CONTEXT, "patterns"))
            })
            .transpose()
    };
    Ok(ApiKeyRecord {
        id: need_text(CONTEXT, f, "id")?,
        name: need_text(CONTEXT, f, "name")?,
        namespaces: patterns("namespaces")?,
        accounts: patterns("accounts")?,
        created_at_ms: need_int(CONTEXT, f, "created")?,
        revoked_at_ms: int(f, "revoked"),
        last_used_at_ms: int(f, "used"),
    })
}

#[async_trait]
impl KeyStore for RedisStore {
    async fn find_key(&self, key_hash: SecretHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        let key = self.key("k", &hex(&key_hash));
        let Some(f) = self.record("checking an API key", key).await? else {
            return Ok(None);
        };
        record(&f).map(Some)
    }

    async fn insert_key(&self, rec: ApiKeyRecord, key_hash: SecretHash) -> Result<(), StoreError> {
        const CONTEXT: &str = "storing an API key";
        let id = hex(&key_hash);
        let json = |list: &Option<Vec<String>>| match list {
            Some(list) => {
                serde_json::to_string(list).map_err(|e| StoreError::unavailable(CONTEXT, e))
            }
            None => Ok(String::new()),
        };
        let (namespaces, accounts) = (json(&rec.namespaces)?, json(&rec.accounts)?);
        let (key, names, all) = (self.key("k", &id), self.index("kn"), self.index("ks"));
        let (rid, name, created) = (rec.id.clone(), rec.name.clone(), rec.created_at_ms);
        let mut c = self.conn();
        let inserted: i64 = self
            .run(CONTEXT, async move {
                INSERT
                    .key(key)
                    .key(names)
                    .key(all)
                    .arg(id)
                    .arg(rid)
                    .arg(name)
                    .arg(created)
                    .arg(namespaces)
                    .arg(accounts)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if inserted == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "an active API key named {:?} already exists",
                rec.name
            )))
        }
    }

    async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = self
            .indexed_records("listing API keys", self.index("ks"), self.key("k", ""), &[])
            .await?;
        let mut keys = rows.iter().map(record).collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| (&a.name, a.created_at_ms).cmp(&(&b.name, b.created_at_ms)));
        Ok(keys)
    }

    async fn key_active(&self, id: &str, name: Option<&str>) -> Result<bool, StoreError> {
        const CONTEXT: &str = "checking an API key";
        let Some(name) = name else {
            // Records are kept by the key's hash: without the name, every one is read.
            let keys = self.list_keys().await?;
            return Ok(keys.iter().any(|k| k.id == id && k.revoked_at_ms.is_none()));
        };
        // The active keys by name, then that key's record: two point reads.
        let (names, name) = (self.index("kn"), name.to_owned());
        let mut c = self.conn();
        let hash: Option<String> = self
            .run(CONTEXT, async move {
                redis::cmd("HGET")
                    .arg(names)
                    .arg(name)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let Some(hash) = hash else { return Ok(false) };
        let Some(f) = self.record(CONTEXT, self.key("k", &hash)).await? else {
            return Ok(false);
        };
        Ok(!f.contains_key("revoked") && text(&f, "id").as_deref() == Some(id))
    }

    async fn revoke_key(&self, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let (names, prefix, name) = (self.index("kn"), self.key("k", ""), name.to_owned());
        let mut c = self.conn();
        let n: i64 = self
            .run("revoking an API key", async move {
                REVOKE
                    .key(names)
                    .arg(name)
                    .arg(now_ms)
                    .arg(prefix)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn note_key_used(&self, key_hash: SecretHash, at_ms: i64) -> Result<(), StoreError> {
        let key = self.key("k", &hex(&key_hash));
        let mut c = self.conn();
        let _: i64 = self
            .run("recording an API key's use", async move {
                NOTE_USED.key(key).arg(at_ms).invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }
}
