//! `OutboxStore` on Redis: a hash per delivery (`o:<id>`), a sorted set of pending ones by
//! when they are due (`od`; a claim moves its score to the end of the lease, so a delivery
//! whose worker died is due again then), and one of all by creation (`ol`) for listings.
//!
//! A write that tells of a change adds its deliveries inside its own script (`ENQUEUE_LUA`),
//! so they exist exactly when the change does. Claims and outcomes are one script per
//! delivery: with several instances on one Redis, each attempt belongs to one of them.

use super::{int, need_int, need_text, text, Fields, RedisStore};
use crate::store::{
    ClaimRoom, DeliveryFilter, DeliveryOutcome, DeliveryRow, DeliveryStatus, NewDelivery,
    OutboxStore, Retried, StoreError,
};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

/// Lua: adds the deliveries given at ARGV[first] (a count, then 7 values each) to the
/// outbox: KEYS[kfirst] is the due set, KEYS[kfirst + 1] the log, then one hash key per
/// delivery. Returns the ARGV index after them.
pub(super) const ENQUEUE_LUA: &str = r#"
local function enqueue(kfirst, first)
  local n = tonumber(ARGV[first])
  local a = first + 1
  for j = 1, n do
    local id, created = ARGV[a], ARGV[a + 5]
    redis.call('HSET', KEYS[kfirst + 1 + j], 'id', id, 'event_id', ARGV[a + 1],
      'event_type', ARGV[a + 2], 'target', ARGV[a + 3], 'body', ARGV[a + 4],
      'created_at', created, 'deadline', ARGV[a + 6], 'status', 'pending', 'attempts', 0,
      'next_attempt_at', created)
    redis.call('ZADD', KEYS[kfirst], created, id)
    redis.call('ZADD', KEYS[kfirst + 1], created, id)
    a = a + 7
  end
  return a
end
"#;

/// KEYS: due, log, delivery hashes. ARGV: the deliveries.
static ADD: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{ENQUEUE_LUA}\nenqueue(1, 1)\nreturn 1")));

/// Deliveries one read of the log takes when looking for failed ones.
const LIST_WINDOW: u32 = 1000;

/// Windows of due ids one claim reads at most.
const CLAIM_WINDOWS: u32 = 4;

/// KEYS: due, hash. ARGV: id, now, lease ms, targets to skip…. The claimed delivery's
/// fields (flat), `{"skip"}` when its target is to be skipped (it stays due), or an empty
/// list when it is not due (another instance claimed it first) or no longer pending.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return {} end
if redis.call('HGET', KEYS[2], 'status') ~= 'pending' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {}
end
local target = redis.call('HGET', KEYS[2], 'target')
for i = 4, #ARGV do
  if ARGV[i] == target then return {'skip'} end
end
local lease_end = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'next_attempt_at', lease_end, 'last_attempt_at', ARGV[2])
redis.call('ZADD', KEYS[1], lease_end, ARGV[1])
return redis.call('HGETALL', KEYS[2])
"#,
    )
});

/// KEYS: due, hash. ARGV: id, attempt, status, next attempt ("" for none), error ("" for
/// none), now. 1 when recorded, 0 when the delivery moved on.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[2], 'status') ~= 'pending' then return 0 end
if redis.call('HGET', KEYS[2], 'attempts') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], 'status', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[5]) end
if ARGV[3] == 'pending' then
  redis.call('HSET', KEYS[2], 'next_attempt_at', ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
else
  redis.call('HDEL', KEYS[2], 'next_attempt_at')
  redis.call('HSET', KEYS[2], 'finished_at', ARGV[6])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"#,
    )
});

/// KEYS: due, hash. ARGV: id, now, deadline, again ("1": a delivered one too). Returns 1
/// when due now, 2 for one delivered and left alone, 0 for no such delivery.
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if ARGV[4] ~= '1' and redis.call('HGET', KEYS[2], 'status') == 'delivered' then return 2 end
redis.call('HSET', KEYS[2], 'status', 'pending', 'next_attempt_at', ARGV[2], 'deadline', ARGV[3])
redis.call('HDEL', KEYS[2], 'finished_at')
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"#,
    )
});

/// KEYS: log, hash. ARGV: id, finished before. Deletes a finished delivery.
static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'pending' then return 0 end
if status and tonumber(redis.call('HGET', KEYS[2], 'finished_at') or '0') >= tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// Deliveries looked at per pruning round trip.
const PRUNE_BATCH: u64 = 1000;

fn row(f: &Fields) -> Result<DeliveryRow, StoreError> {
    const CONTEXT: &str = "reading a delivery";
    Ok(DeliveryRow {
        id: need_text(CONTEXT, f, "id")?,
        event_id: need_text(CONTEXT, f, "event_id")?,
        event_type: need_text(CONTEXT, f, "event_type")?,
        target: need_text(CONTEXT, f, "target")?,
        body: need_text(CONTEXT, f, "body")?,
        created_at_ms: need_int(CONTEXT, f, "created_at")?,
        deadline_ms: need_int(CONTEXT, f, "deadline")?,
        status: DeliveryStatus::parse(&need_text(CONTEXT, f, "status")?)
            .map_err(|e| StoreError::unavailable(CONTEXT, e))?,
        attempts: u32::try_from(need_int(CONTEXT, f, "attempts")?)
            .map_err(|_| super::corrupt(CONTEXT, "attempts"))?,
        next_attempt_at_ms: int(f, "next_attempt_at"),
        last_attempt_at_ms: int(f, "last_attempt_at"),
        last_error: text(f, "last_error"),
        finished_at_ms: int(f, "finished_at"),
    })
}

/// A flat HGETALL answer (field, value, field, value…) as `Fields`.
fn fields(flat: Vec<Vec<u8>>) -> Fields {
    let mut f = Fields::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        f.insert(String::from_utf8_lossy(&k).into_owned(), v);
    }
    f
}

impl RedisStore {
    fn due_set(&self) -> String {
        self.index("od")
    }

    fn delivery_log(&self) -> String {
        self.index("ol")
    }

    fn delivery_key(&self, id: &str) -> String {
        self.key("o", id)
    }

    /// Appends what `ENQUEUE_LUA`'s `enqueue` reads: its keys after the script's own, its
    /// arguments where the script says (call it before adding later arguments).
    pub(super) fn enqueue_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        deliveries: &[NewDelivery],
    ) {
        inv.key(self.due_set()).key(self.delivery_log());
        for d in deliveries {
            inv.key(self.delivery_key(&d.id));
        }
        inv.arg(deliveries.len());
        for d in deliveries {
            inv.arg(&d.id)
                .arg(&d.event_id)
                .arg(&d.event_type)
                .arg(&d.target)
                .arg(&d.body)
                .arg(d.created_at_ms)
                .arg(d.deadline_ms);
        }
    }

    async fn delivery_ids(
        &self,
        context: &'static str,
        cmd: redis::Cmd,
    ) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn();
        self.run(context, async move { cmd.query_async(&mut c).await })
            .await
    }
}

#[async_trait]
impl OutboxStore for RedisStore {
    async fn add_deliveries(&self, deliveries: Vec<NewDelivery>) -> Result<(), StoreError> {
        let mut inv = ADD.prepare_invoke();
        self.enqueue_args(&mut inv, &deliveries);
        let mut c = self.conn();
        self.run("adding events to the outbox", async move {
            inv.invoke_async::<()>(&mut c).await
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        room: &ClaimRoom,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let limit = room.limit as usize;
        let mut room = room.clone();
        let full = |room: &ClaimRoom| -> Vec<String> {
            room.busy
                .keys()
                .filter(|t| room.left_for(t) == 0)
                .cloned()
                .collect()
        };
        let mut skip = full(&room);
        let mut claimed = Vec::new();
        // Due ids in windows, oldest first: a window may hold only deliveries of targets
        // without room, and then the next one is looked at (bounded: a claim reads at
        // most CLAIM_WINDOWS of them). Claimed ids leave the due range and skipped ones
        // stay, so the next window starts after the skipped ones alone.
        let window = room.limit.saturating_mul(4).max(16);
        let mut stayed: u32 = 0;
        for _ in 0..CLAIM_WINDOWS {
            let mut due = redis::cmd("ZRANGE");
            due.arg(self.due_set())
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(stayed)
                .arg(window);
            let ids = self.delivery_ids("claiming deliveries", due).await?;
            let last_window = ids.len() < window as usize;
            for id in ids {
                if claimed.len() >= limit {
                    return Ok(claimed);
                }
                let mut inv = CLAIM.prepare_invoke();
                inv.key(self.due_set())
                    .key(self.delivery_key(&id))
                    .arg(id)
                    .arg(now_ms)
                    .arg(lease_ms);
                for t in &skip {
                    inv.arg(t);
                }
                let mut c = self.conn();
                let flat: Vec<Vec<u8>> = self
                    .run("claiming a delivery", async move {
                        inv.invoke_async(&mut c).await
                    })
                    .await?;
                match flat.as_slice() {
                    [] => {}
                    [skipped] if skipped.as_slice() == b"skip" => stayed += 1,
                    _ => {
                        let claim = row(&fields(flat))?;
                        *room.busy.entry(claim.target.clone()).or_default() += 1;
                        skip = full(&room);
                        claimed.push(claim);
                    }
                }
            }
            if last_window || claimed.len() >= limit {
                break;
            }
        }
        Ok(claimed)
    }

    async fn finish_delivery(
        &self,
        id: &str,
        attempt: u32,
        outcome: DeliveryOutcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (status, next, error) = outcome.parts();
        let (next, error) = (
            next.map(|t| t.to_string()).unwrap_or_default(),
            error.unwrap_or_default(),
        );
        let (due, key, id) = (self.due_set(), self.delivery_key(id), id.to_owned());
        let mut c = self.conn();
        let n: i64 = self
            .run("recording a delivery", async move {
                FINISH
                    .key(due)
                    .key(key)
                    .arg(id)
                    .arg(attempt)
                    .arg(status.as_str())
                    .arg(next)
                    .arg(error)
                    .arg(now_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn list_deliveries(
        &self,
        filter: DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        // The log is read newest first in windows, until `limit` rows are found or the
        // log ends: failed ones may be older than any window of fixed size.
        let window = match filter {
            DeliveryFilter::All => limit.max(1),
            DeliveryFilter::Failed => limit.max(LIST_WINDOW),
        };
        let mut out = Vec::new();
        // Deliveries added meanwhile move the older ones down the log: a window may start
        // with ids the last one had.
        let mut seen = std::collections::HashSet::new();
        let mut from: i64 = 0;
        loop {
            let mut newest = redis::cmd("ZRANGE");
            newest
                .arg(self.delivery_log())
                .arg(from)
                .arg(from + i64::from(window) - 1)
                .arg("REV");
            let ids = self.delivery_ids("listing deliveries", newest).await?;
            let read = ids.len();
            from += read as i64;
            if ids.is_empty() {
                return Ok(out);
            }
            let keys: Vec<String> = ids
                .into_iter()
                .filter(|id| seen.insert(id.clone()))
                .map(|id| self.delivery_key(&id))
                .collect();
            let mut c = self.conn();
            let records: Vec<Fields> = self
                .run("listing deliveries", async move {
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("HGETALL").arg(k);
                    }
                    pipe.query_async(&mut c).await
                })
                .await?;
            for f in records.iter().filter(|f| !f.is_empty()) {
                let d = row(f)?;
                let failed = d.status == DeliveryStatus::Dead
                    || (d.status == DeliveryStatus::Pending && d.last_error.is_some());
                if filter == DeliveryFilter::All || failed {
                    out.push(d);
                }
                if out.len() >= limit as usize {
                    return Ok(out);
                }
            }
            if read < window as usize {
                return Ok(out);
            }
        }
    }

    async fn retry_delivery(
        &self,
        id: &str,
        now_ms: i64,
        deadline_ms: i64,
        again: bool,
    ) -> Result<Retried, StoreError> {
        let (due, key, id) = (self.due_set(), self.delivery_key(id), id.to_owned());
        let mut c = self.conn();
        let n: i64 = self
            .run("retrying a delivery", async move {
                RETRY
                    .key(due)
                    .key(key)
                    .arg(id)
                    .arg(now_ms)
                    .arg(deadline_ms)
                    .arg(if again { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match n {
            1 => Retried::Due,
            2 => Retried::AlreadyDelivered,
            _ => Retried::NotFound,
        })
    }

    async fn release_claims(&self, _now_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn pending_deliveries(&self) -> Result<u64, StoreError> {
        let due = self.due_set();
        let mut c = self.conn();
        self.run("counting pending deliveries", async move {
            redis::cmd("ZCARD").arg(due).query_async(&mut c).await
        })
        .await
    }

    async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        // A delivery finishes after it was created: only those created before the cutoff
        // can have finished before it. Batches of 1,000, oldest first, until a batch
        // deletes nothing (what is left is pending or finished too recently).
        let mut pruned = 0;
        let mut offset: u64 = 0;
        loop {
            let mut old = redis::cmd("ZRANGE");
            old.arg(self.delivery_log())
                .arg("-inf")
                .arg(format!("({before_ms}"))
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(offset)
                .arg(PRUNE_BATCH);
            let ids = self.delivery_ids("pruning deliveries", old).await?;
            let seen = ids.len() as u64;
            let mut deleted = 0;
            for id in ids {
                let (log, key) = (self.delivery_log(), self.delivery_key(&id));
                let mut c = self.conn();
                let n: i64 = self
                    .run("pruning a delivery", async move {
                        PRUNE
                            .key(log)
                            .key(key)
                            .arg(id)
                            .arg(before_ms)
                            .invoke_async(&mut c)
                            .await
                    })
                    .await?;
                deleted += n.max(0) as u64;
            }
            pruned += deleted;
            // The ones kept stay in the log: look past them next time.
            offset += seen - deleted;
            if seen < PRUNE_BATCH {
                return Ok(pruned);
            }
        }
    }
}
