//! `StateStore` on Redis: `SET … NX PX` to create, one script to take (GETDEL semantics
//! plus the 410 tombstone), Redis TTLs instead of a sweeper.

use super::{hex, RedisStore};
use crate::secret::SecretHash;
use crate::store::{
    InsertRules, NamespaceFilter, StateRow, StateStore, StoreError, SweepCount, Taken,
};
use async_trait::async_trait;
use redis::Script;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

#[derive(Serialize, Deserialize)]
struct Stored {
    n: String,
    d: Option<String>,
    c: i64,
    e: i64,
}

/// KEYS: state, tombstone. ARGV: namespace-set key prefix, hash, namespace, "p" when the
/// namespace is a prefix. Takes the state (and drops its tombstone and its entry in the
/// namespace's live set), or else the tombstone, only when its namespace matches:
/// `{"row", json}`, `{"gone", namespace}` or `{}` (a state of another namespace is left
/// as it is).
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local function ours(ns)
  if ARGV[4] == 'p' then return string.sub(ns, 1, #ARGV[3]) == ARGV[3] end
  return ns == ARGV[3]
end
local v = redis.call('GET', KEYS[1])
if v then
  if not ours(cjson.decode(v)['n']) then return {} end
  redis.call('DEL', KEYS[1])
  local ns = redis.call('GETDEL', KEYS[2])
  if ns then redis.call('ZREM', ARGV[1] .. ns, ARGV[2]) end
  return {'row', v}
end
local ns = redis.call('GET', KEYS[2])
if ns and ours(ns) then
  redis.call('DEL', KEYS[2])
  return {'gone', ns}
end
return {}
"#,
    )
});

/// The first write is the state's SET, so a Redis at maxmemory refuses the script (OOM)
/// before it changes anything. KEYS: state, tombstone, the namespace's live set (hash -> expiry). ARGV: value, ttl ms,
/// namespace, tombstone ttl ms, hash, now, expires at, most live states. Returns 1, or -1
/// when the namespace is full (0: the value exists).
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[6], '+inf') >= tonumber(ARGV[8]) then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
if redis.call('PTTL', KEYS[3]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
end
return 1
"#,
    )
});

#[async_trait]
impl StateStore for RedisStore {
    async fn insert_state(&self, row: StateRow, rules: InsertRules) -> Result<bool, StoreError> {
        const CONTEXT: &str = "storing a state";
        let id = hex(&row.key_hash);
        let (key, tomb) = (self.key("s", &id), self.key("g", &id));
        let live = self.key("n", &row.namespace);
        let now = rules.now_ms;
        let (expires, ttl) = (row.expires_at_ms, (row.expires_at_ms - now).max(1));
        // At least a millisecond past the state itself, so a tombstone outlives its state.
        let tomb_ttl = (rules.keep_until_ms - now).max(ttl.saturating_add(1));
        let value = serde_json::to_string(&Stored {
            n: row.namespace.clone(),
            d: row.data,
            c: row.created_at_ms,
            e: row.expires_at_ms,
        })
        .map_err(|e| StoreError::unavailable(CONTEXT, e))?;
        let ns = row.namespace;
        let mut c = self.conn();
        let stored: i64 = self
            .run(CONTEXT, async move {
                INSERT
                    .key(key)
                    .key(tomb)
                    .key(live)
                    .arg(value)
                    .arg(ttl)
                    .arg(ns)
                    .arg(tomb_ttl)
                    .arg(id)
                    .arg(now)
                    .arg(expires)
                    .arg(rules.max_live)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match stored {
            1 => Ok(true),
            -1 => Ok(false),
            _ => Err(StoreError::unavailable(
                CONTEXT,
                "a state with this value already exists",
            )),
        }
    }

    async fn take_state(
        &self,
        key_hash: SecretHash,
        filter: &NamespaceFilter,
    ) -> Result<Taken, StoreError> {
        const CONTEXT: &str = "consuming a state";
        let (ns, prefix) = filter.parts();
        let (ns, mode) = (ns.to_owned(), if prefix { "p" } else { "=" });
        let id = hex(&key_hash);
        let (key, tomb, live) = (self.key("s", &id), self.key("g", &id), self.key("n", ""));
        let mut c = self.conn();
        let reply: Vec<Vec<u8>> = self
            .run(CONTEXT, async move {
                TAKE.key(key)
                    .key(tomb)
                    .arg(live)
                    .arg(id)
                    .arg(ns)
                    .arg(mode)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match reply.as_slice() {
            [kind, v] if kind == b"row" => {
                let s: Stored =
                    serde_json::from_slice(v).map_err(|_| super::corrupt(CONTEXT, "state"))?;
                Ok(Taken::Row(StateRow {
                    key_hash,
                    namespace: s.n,
                    data: s.d,
                    created_at_ms: s.c,
                    expires_at_ms: s.e,
                }))
            }
            [kind, ns] if kind == b"gone" => Ok(Taken::ExpiredTombstone {
                expired_at_ms: None,
                namespace: String::from_utf8_lossy(ns).into_owned(),
            }),
            _ => Ok(Taken::Missing),
        }
    }

    /// Redis expires states and tombstones by itself; there is nothing to sweep.
    async fn sweep_expired(
        &self,
        _now_ms: i64,
        _purge_before_ms: i64,
        _batch: usize,
    ) -> Result<SweepCount, StoreError> {
        Ok(SweepCount::default())
    }

    /// Walks the state keys with SCAN: only maintenance asks, never a request.
    async fn state_data_with_prefix(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        const CONTEXT: &str = "reading states by namespace";
        let keys = self.scan_keys(CONTEXT, self.key("s", "*")).await?;
        let values = self.mget(CONTEXT, &keys).await?;
        Ok(values
            .iter()
            .flatten()
            .filter_map(|v| serde_json::from_slice::<Stored>(v).ok())
            .filter(|s| s.n.starts_with(prefix))
            .filter_map(|s| s.d)
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        self.run("checking Redis", async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(|_| ())
    }
}
