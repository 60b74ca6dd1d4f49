//! `DeviceFlowStore` on Redis: one hash per flow that expires `grace` after the flow does
//! (so its outcome stays readable), a set of pending ids, and a per-flow claim key taken
//! with `SET NX PX` so that exactly one instance sends each poll.

use super::connections::SAVE_LUA;
use super::outbox::ENQUEUE_LUA;
use super::{need_int, need_text, text, Changes, Fields, RedisStore, APPLY_LUA};
use crate::store::{
    ClaimedPoll, DeviceFlowRow, DeviceFlowStatus, DeviceFlowStore, DevicePollOutcome, NewDelivery,
    PollRecorded, StoreError,
};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

/// KEYS: flow, claim. ARGV: now, claim ms, the claim's token. Returns the flow's fields, or
/// nil.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return false end
if tonumber(redis.call('HGET', KEYS[1], 'next_poll_at')) > tonumber(ARGV[1]) then return false end
if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'updated', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"#,
    )
});

/// KEYS: pending set. ARGV: flow key prefix, starter, now. How many of the starter's
/// flows are pending and unexpired.
const COUNT_LUA: &str = r#"
local function pending_of(set, prefix, starter, now)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    local f = redis.call('HMGET', prefix .. id, 'started_by', 'status', 'expires_at')
    if f[1] == starter and f[2] == 'pending' and tonumber(f[3] or 0) > tonumber(now) then
      n = n + 1
    end
  end
  return n
end
"#;

static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COUNT_LUA}\nreturn pending_of(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"
    ))
});

/// KEYS: flow, pending set. ARGV: flow key prefix, starter, now, most pending, id, keep ms,
/// fields… (ARGV[7]). Stores the flow unless its starter has too many pending: 1 or 0.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{COUNT_LUA}\n{APPLY_LUA}\n{}",
        r#"
if pending_of(KEYS[2], ARGV[1], ARGV[2], ARGV[3]) >= tonumber(ARGV[4]) then return 0 end
apply(KEYS[1], 7)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
"#
    ))
});

/// KEYS: flow. ARGV: old sealed code, new one. Replaces it only if still pending and old.
static RESEAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
if redis.call('HGET', KEYS[1], 'device_code') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'device_code', ARGV[2])
return 1
"#,
    )
});

/// Lua: whether a poll's outcome may be recorded on flow KEYS[1] by the holder of claim
/// ARGV[3] ("" for none; `ANYONE` whoever holds one): the flow is pending, and nobody else
/// holds a live claim.
const FREE_LUA: &str = r#"
local function free_to_record()
  if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return false end
  local held = redis.call('GET', KEYS[2])
  return (not held) or held == ARGV[3] or ARGV[3] == '*'
end
"#;

/// The claim a `DevicePollOutcome::Withdrawn` records with: any (a claim is a uuid).
const ANYONE: &str = "*";

/// KEYS: flow, claim, pending set, then the outbox's. ARGV: id, finished ("1"/"0"), claim,
/// the deliveries (from ARGV[4]), changes…. 1 when recorded.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{APPLY_LUA}\n{ENQUEUE_LUA}\n{FREE_LUA}\n{}",
        r#"
if not free_to_record() then return 0 end
apply(KEYS[1], enqueue(4, 4))
if ARGV[2] == '1' then redis.call('SREM', KEYS[3], ARGV[1]) end
redis.call('DEL', KEYS[2])
return 1
"#
    ))
});

/// KEYS: flow, claim, pending set, conn, lease, connection index, then the outbox's. ARGV:
/// id, "1", claim (unused: tokens in hand end the flow whoever polls it), member, now, the
/// deliveries (from ARGV[6]), the flow's changes, the connection's. 1 when recorded.
static FINISH_CONNECTED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{APPLY_LUA}\n{ENQUEUE_LUA}\n{SAVE_LUA}\n{}",
        r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return false end
local after = apply(KEYS[1], enqueue(7, 6))
local was = redis.call('HGETALL', KEYS[4])
save_connection(KEYS[4], KEYS[5], KEYS[6], ARGV[4], ARGV[5], after)
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
return was
"#
    ))
});

fn row(f: &Fields) -> Result<DeviceFlowRow, StoreError> {
    const CONTEXT: &str = "reading a device flow";
    Ok(DeviceFlowRow {
        id: need_text(CONTEXT, f, "id")?,
        provider: need_text(CONTEXT, f, "provider")?,
        account: need_text(CONTEXT, f, "account")?,
        device_code: f
            .get("device_code")
            .cloned()
            .ok_or_else(|| super::corrupt(CONTEXT, "device_code"))?,
        user_code: need_text(CONTEXT, f, "user_code")?,
        verification_uri: need_text(CONTEXT, f, "verification_uri")?,
        verification_uri_complete: text(f, "verification_uri_complete"),
        interval_ms: need_int(CONTEXT, f, "interval_ms")?,
        expires_at_ms: need_int(CONTEXT, f, "expires_at")?,
        status: DeviceFlowStatus::parse(&need_text(CONTEXT, f, "status")?)
            .map_err(|e| StoreError::unavailable(CONTEXT, e))?,
        detail: text(f, "detail"),
        error: text(f, "error"),
        next_poll_at_ms: need_int(CONTEXT, f, "next_poll_at")?,
        created_at_ms: need_int(CONTEXT, f, "created")?,
        started_by: text(f, "started_by").unwrap_or_default(),
    })
}

impl RedisStore {
    /// The records of the pending flows, read or not (ids of flows Redis expired are
    /// tidied away).
    async fn pending_flow_records(&self) -> Result<Vec<Fields>, StoreError> {
        let (pending, prefix) = (self.index("dp"), self.key("d", ""));
        let mut c = self.conn();
        let rows: Vec<Fields> = self
            .run("listing device flows", async move {
                let ids: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(&pending)
                    .query_async(&mut c)
                    .await?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("HGETALL").arg(format!("{prefix}{id}"));
                }
                let rows: Vec<Fields> = pipe.query_async(&mut c).await?;
                // Flows that expired in Redis leave their id behind: tidy it up.
                let gone: Vec<&String> = ids
                    .iter()
                    .zip(&rows)
                    .filter(|(_, f)| f.is_empty())
                    .map(|(id, _)| id)
                    .collect();
                if !gone.is_empty() {
                    redis::cmd("SREM")
                        .arg(&pending)
                        .arg(gone)
                        .query_async::<()>(&mut c)
                        .await?;
                }
                Ok(rows)
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter(|f| f.get("status").is_some_and(|s| s == b"pending"))
            .collect())
    }
}

#[async_trait]
impl DeviceFlowStore for RedisStore {
    async fn insert_device_flow(
        &self,
        d: DeviceFlowRow,
        max_pending: u32,
    ) -> Result<bool, StoreError> {
        let (key, pending, prefix) = (self.key("d", &d.id), self.index("dp"), self.key("d", ""));
        let keep_ms = (d.expires_at_ms - d.created_at_ms)
            .max(1)
            .saturating_add(self.grace_ms);
        let (id, starter, now) = (d.id.clone(), d.started_by.clone(), d.created_at_ms);
        let mut ch = Changes::default();
        ch.put("id", d.id.as_str())
            .put("provider", d.provider)
            .put("account", d.account)
            .put("device_code", d.device_code)
            .put("user_code", d.user_code)
            .put("verification_uri", d.verification_uri)
            .opt("verification_uri_complete", d.verification_uri_complete)
            .num("interval_ms", d.interval_ms)
            .num("expires_at", d.expires_at_ms)
            .put("status", d.status.as_str())
            .opt("detail", d.detail)
            .opt("error", d.error)
            .num("next_poll_at", d.next_poll_at_ms)
            .num("created", d.created_at_ms)
            .num("updated", d.created_at_ms)
            .put("started_by", d.started_by);
        let mut c = self.conn();
        let stored: i64 = self
            .run("storing a device flow", async move {
                let mut inv = INSERT.prepare_invoke();
                inv.key(key)
                    .key(pending)
                    .arg(prefix)
                    .arg(starter)
                    .arg(now)
                    .arg(max_pending)
                    .arg(id)
                    .arg(keep_ms);
                ch.to_args(&mut inv);
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(stored == 1)
    }

    async fn pending_device_flows_of(
        &self,
        started_by: &str,
        now_ms: i64,
    ) -> Result<u32, StoreError> {
        let (pending, prefix) = (self.index("dp"), self.key("d", ""));
        let starter = started_by.to_owned();
        let mut c = self.conn();
        self.run("counting device flows", async move {
            COUNT
                .key(pending)
                .arg(prefix)
                .arg(starter)
                .arg(now_ms)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    async fn get_device_flow(&self, id: &str) -> Result<Option<DeviceFlowRow>, StoreError> {
        self.record("reading a device flow", self.key("d", id))
            .await?
            .map(|f| row(&f))
            .transpose()
    }

    async fn pending_device_flows(&self) -> Result<Vec<DeviceFlowRow>, StoreError> {
        let pending = self.pending_flow_records().await?;
        Ok(super::readable("a device flow", &pending, row))
    }

    async fn all_pending_device_flows(&self) -> Result<Vec<DeviceFlowRow>, StoreError> {
        let pending = self.pending_flow_records().await?;
        pending.iter().map(row).collect()
    }

    async fn claim_device_poll(
        &self,
        id: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<ClaimedPoll>, StoreError> {
        let (key, claim_key) = (self.key("d", id), self.key("dl", id));
        let claim = uuid::Uuid::new_v4().simple().to_string();
        let token = claim.clone();
        let mut c = self.conn();
        let flat: Option<Vec<Vec<u8>>> = self
            .run("claiming a device poll", async move {
                CLAIM
                    .key(key)
                    .key(claim_key)
                    .arg(now_ms)
                    .arg(lease_ms.max(1))
                    .arg(token)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        flat.map(|flat| {
            row(&super::flat_fields(flat)).map(|flow| ClaimedPoll {
                flow,
                claim: claim.clone(),
            })
        })
        .transpose()
    }

    async fn finish_device_poll(
        &self,
        id: &str,
        claim: Option<&str>,
        outcome: DevicePollOutcome,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<PollRecorded, StoreError> {
        let (key, claim_key, pending) = (self.key("d", id), self.key("dl", id), self.index("dp"));
        let mut claim = claim.unwrap_or_default().to_owned();
        let mut ch = Changes::default();
        ch.num("updated", now_ms);
        let finish = |ch: &mut Changes, status: DeviceFlowStatus, detail: String| {
            // What the person typed at the provider is of no use once the flow ended: not
            // kept while the row waits to be purged.
            ch.put("status", status.as_str())
                .put("detail", detail)
                .put("device_code", Vec::<u8>::new())
                .put("user_code", "")
                .opt("verification_uri_complete", None::<String>);
        };
        let (script, ended, save) = match outcome {
            DevicePollOutcome::Pending {
                interval_ms,
                delay_ms,
            } => {
                ch.num("interval_ms", interval_ms)
                    .num("next_poll_at", now_ms.saturating_add(delay_ms));
                (&*FINISH, "0", None)
            }
            DevicePollOutcome::Finished {
                status,
                error,
                detail,
            } => {
                finish(&mut ch, status, detail);
                ch.put("error", error);
                (&*FINISH, "1", None)
            }
            DevicePollOutcome::Withdrawn { error, detail } => {
                finish(&mut ch, DeviceFlowStatus::Failed, detail);
                ch.put("error", error);
                ANYONE.clone_into(&mut claim);
                (&*FINISH, "1", None)
            }
            DevicePollOutcome::Connected { save, detail } => {
                finish(&mut ch, DeviceFlowStatus::Connected, detail);
                (&*FINISH_CONNECTED, "1", Some(*save))
            }
        };
        let connection = save.map(|save| self.connection_save(save, now_ms));
        let mut inv = script.prepare_invoke();
        inv.key(key).key(claim_key).key(pending);
        inv.arg(id).arg(ended).arg(claim);
        if let Some((keys, _)) = &connection {
            inv.key(&keys.conn).key(&keys.lease).key(&keys.index);
            inv.arg(&keys.member).arg(now_ms);
        }
        self.enqueue_args(&mut inv, &events);
        ch.to_args(&mut inv);
        if let Some((_, changes)) = &connection {
            changes.to_args(&mut inv);
        }
        let mut c = self.conn();
        if connection.is_none() {
            let recorded: i64 = self
                .run("recording a device poll", async move {
                    inv.invoke_async(&mut c).await
                })
                .await?;
            return Ok(match recorded {
                1 => PollRecorded::Yes(None),
                _ => PollRecorded::No,
            });
        }
        let was: Option<Vec<Vec<u8>>> = self
            .run("recording a device poll", async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(match was {
            None => PollRecorded::No,
            Some(was) => PollRecorded::Yes(super::connections::was(was).map(Box::new)),
        })
    }

    async fn reseal_device_code(
        &self,
        id: &str,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let key = self.key("d", id);
        let mut c = self.conn();
        let n: i64 = self
            .run("re-sealing a device code", async move {
                RESEAL.key(key).arg(old).arg(new).invoke_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
    }
}
