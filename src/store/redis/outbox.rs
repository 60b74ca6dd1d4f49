//! `OutboxStore` on Redis: a hash per delivery (`o:<id>`), a sorted set per target of its
//! pending ones by when they are due (`od:<target>`; a claim moves its score to the end of
//! the lease, so a delivery whose worker died is due again then), the set of targets that
//! have pending ones (`odt`), and sorted sets by creation for listings: of all deliveries
//! (`ol`) and of each target's (`ol:<target>`). The targets that answered `410 Gone` are
//! a hash (`og`: target -> its URL's hash and since when).
//!
//! Due sets are per target so that a claim reads only the targets with room: a target that
//! hangs, with thousands of deliveries due, is never read past to find another's. (Before,
//! one due set `od` held every target's; what an earlier version left there is moved over
//! by the first claims.)
//!
//! A write that tells of a change adds its deliveries inside its own script (`ENQUEUE_LUA`),
//! so they exist exactly when the change does. Claims and outcomes are one script per
//! delivery: with several instances on one Redis, each attempt belongs to one of them.

use super::{int, need_int, need_text, text, Fields, RedisStore};
use crate::store::{
    ClaimRoom, DeliveryFilter, DeliveryOutcome, DeliveryRow, DeliveryStatus, GoneTarget,
    NewDelivery, OutboxStore, Retried, StoreError,
};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

/// Lua: `due_of(root, target)`, the due set of `target`, and `targets_of(root)`, the set of
/// targets with one, named after the due sets' common root (`P od`); then `enqueue`, which
/// adds the deliveries given at ARGV[first] (a count, then 7 values each) to the outbox:
/// KEYS[kfirst] is the due sets' root, KEYS[kfirst + 1] the log (which names the targets'
/// logs too), then one hash key per delivery. Returns the ARGV index after them.
pub(super) const ENQUEUE_LUA: &str = r#"
local function due_of(root, target) return root .. ':' .. target end
local function targets_of(root) return root .. 't' end
local function claims_of(root, target) return root .. 'c:' .. target end
local function enqueue(kfirst, first)
  local n = tonumber(ARGV[first])
  local a = first + 1
  for j = 1, n do
    local id, target, created = ARGV[a], ARGV[a + 3], ARGV[a + 5]
    redis.call('HSET', KEYS[kfirst + 1 + j], 'id', id, 'event_id', ARGV[a + 1],
      'event_type', ARGV[a + 2], 'target', target, 'body', ARGV[a + 4],
      'created_at', created, 'deadline', ARGV[a + 6], 'status', 'pending', 'attempts', 0,
      'next_attempt_at', created)
    redis.call('ZADD', due_of(KEYS[kfirst], target), created, id)
    redis.call('SADD', targets_of(KEYS[kfirst]), target)
    redis.call('ZADD', KEYS[kfirst + 1], created, id)
    redis.call('ZADD', KEYS[kfirst + 1] .. ':' .. target, created, id)
    a = a + 7
  end
  return a
end
"#;

/// An outbox script: `ENQUEUE_LUA`'s helpers, then `body`.
fn script(body: &str) -> Script {
    Script::new(&format!("{ENQUEUE_LUA}\n{body}"))
}

/// KEYS: due root, log, delivery hashes. ARGV: the deliveries.
static ADD: LazyLock<Script> = LazyLock::new(|| script("enqueue(1, 1)\nreturn 1"));

/// Deliveries one read of the log takes when looking for failed ones.
const LIST_WINDOW: u32 = 1000;

/// Deliveries an earlier version left in its one due set, moved per claim.
const LEGACY_BATCH: u32 = 1000;

/// KEYS: due root, hash. ARGV: id, now, lease ms, the target whose due set the id was read
/// from, the longest wait, how many attempts may run at once for the target ("" for no
/// bound). The claimed delivery's fields (flat), an empty list when it is not due (another
/// instance claimed it first), no longer pending, or its target runs as many attempts as
/// it may (in all instances: each claim is in the target's claims, `odc:<target>`, until
/// its attempt ends or its lease does), or `{'unreadable'}` when its record is
/// not a hash or its attempts not a whole number (`HINCRBY` would fail; nothing changed:
/// `BURY` ends it). An id whose delivery is gone
/// (its hash deleted by hand or evicted) leaves the due set: it would stand at its front,
/// taking the target's room in every claim.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local target = ARGV[4]
local due_set = due_of(KEYS[1], target)
local due = redis.call('ZSCORE', due_set, ARGV[1])
if not due then return {} end
-- Due by the clock, or set further off than any wait (on a clock since stepped back).
local off = tonumber(due) - tonumber(ARGV[2])
if off > 0 and off <= tonumber(ARGV[5]) then return {} end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'hash' and kind ~= 'none' then return {'unreadable'} end
if redis.call('HGET', KEYS[2], 'status') ~= 'pending' then
  redis.call('ZREM', due_set, ARGV[1])
  if redis.call('ZCARD', due_set) == 0 then redis.call('SREM', targets_of(KEYS[1]), target) end
  return {}
end
if not string.match(redis.call('HGET', KEYS[2], 'attempts') or '', '^%d+$') then
  return {'unreadable'}
end
local claims = claims_of(KEYS[1], target)
-- Ended, or set further off than any wait (ARGV[5]: a lease or retry_max, and the slack
-- instances' clocks may differ by) on a clock since stepped back: held by none. (Not
-- further off than a lease: another host's clock a few seconds ahead sets its claims so.)
redis.call('ZREMRANGEBYSCORE', claims, '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', claims, '(' .. (tonumber(ARGV[2]) + tonumber(ARGV[5])), '+inf')
if ARGV[6] ~= '' and redis.call('ZCARD', claims) >= tonumber(ARGV[6]) then return {} end
local lease_end = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('ZADD', claims, lease_end, ARGV[1])
-- Gone a second after the last lease ends, whatever becomes of its target.
redis.call('PEXPIRE', claims, tonumber(ARGV[3]) + 1000)
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[2], 'next_attempt_at', lease_end, 'last_attempt_at', ARGV[2],
  'claimed_until', lease_end)
redis.call('ZADD', due_set, lease_end, ARGV[1])
return redis.call('HGETALL', KEYS[2])
"#,
    )
});

/// KEYS: due root, hash, log. ARGV: id, the target whose due set the id was read from,
/// error, now. Ends a delivery whose record cannot be read (a field missing or not a number:
/// written by hand, or by another version) as dead, out of its due set: claimed again
/// every lease, it would fail each claim that reaches it.
static BURY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local due_set = due_of(KEYS[1], ARGV[2])
redis.call('ZREM', due_set, ARGV[1])
redis.call('ZREM', claims_of(KEYS[1], ARGV[2]), ARGV[1])
if redis.call('ZCARD', due_set) == 0 then redis.call('SREM', targets_of(KEYS[1]), ARGV[2]) end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'hash' then
  -- Not a delivery (written by hand): left alone, out of the listings.
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[3] .. ':' .. ARGV[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[2], 'status', 'dead', 'last_error', ARGV[3], 'finished_at', ARGV[4])
redis.call('HDEL', KEYS[2], 'claimed_until', 'next_attempt_at')
return 1
"#,
    )
});

/// KEYS: due root, hash. ARGV: id, attempt, status, next attempt ("" for none), error (""
/// for none), now. 1 when recorded, 0 when the delivery moved on.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[2], 'status') ~= 'pending' then return 0 end
if redis.call('HGET', KEYS[2], 'attempts') ~= ARGV[2] then return 0 end
local target = redis.call('HGET', KEYS[2], 'target')
local due_set = due_of(KEYS[1], target)
redis.call('ZREM', claims_of(KEYS[1], target), ARGV[1])
redis.call('HSET', KEYS[2], 'status', ARGV[3])
redis.call('HDEL', KEYS[2], 'claimed_until')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[5]) end
if ARGV[3] == 'pending' then
  redis.call('HSET', KEYS[2], 'next_attempt_at', ARGV[4])
  redis.call('ZADD', due_set, ARGV[4], ARGV[1])
else
  redis.call('HDEL', KEYS[2], 'next_attempt_at')
  redis.call('HSET', KEYS[2], 'finished_at', ARGV[6])
  redis.call('ZREM', due_set, ARGV[1])
  if redis.call('ZCARD', due_set) == 0 then redis.call('SREM', targets_of(KEYS[1]), target) end
end
return 1
"#,
    )
});

/// KEYS: due root, hash. ARGV: id, now, deadline, again ("1": a delivered one too).
/// Returns {1} when due now, {2} for one delivered and left alone, {3, claim's end} for one
/// an attempt is under way for (left alone), {0} for no such delivery.
static RETRY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
local status = redis.call('HGET', KEYS[2], 'status')
if ARGV[4] ~= '1' and status == 'delivered' then return {2} end
local claimed = tonumber(redis.call('HGET', KEYS[2], 'claimed_until') or '0')
if status == 'pending' and claimed > tonumber(ARGV[2]) then return {3, claimed} end
local target = redis.call('HGET', KEYS[2], 'target')
redis.call('HSET', KEYS[2], 'status', 'pending', 'next_attempt_at', ARGV[2], 'deadline', ARGV[3],
  'attempts_before_retry', redis.call('HGET', KEYS[2], 'attempts'))
redis.call('HDEL', KEYS[2], 'finished_at')
redis.call('ZADD', due_of(KEYS[1], target), ARGV[2], ARGV[1])
redis.call('SADD', targets_of(KEYS[1]), target)
redis.call('HDEL', KEYS[2], 'claimed_until')
return {1}
"#,
    )
});

/// KEYS: due root (whose own sorted set is an earlier version's one due set). ARGV: P, how
/// many to move. Moves that many of the old set's deliveries to their target's due set, at
/// the same due time; returns how many are left there.
static MOVE_LEGACY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local old = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
for i = 1, #old, 2 do
  local id, due = old[i], old[i + 1]
  local target = redis.pcall('HGET', ARGV[1] .. 'o:' .. id, 'target')
  if type(target) == 'string' then
    redis.call('ZADD', due_of(KEYS[1], target), due, id)
    redis.call('SADD', targets_of(KEYS[1]), target)
  end
  redis.call('ZREM', KEYS[1], id)
end
return redis.call('ZCARD', KEYS[1])
"#,
    )
});

/// KEYS: log, hash. ARGV: id, finished before. Deletes a finished delivery.
static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'hash' then
  -- Gone, or not a delivery (written by hand): only its place in the log is ours to drop.
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'pending' then return 0 end
-- A finished_at that is no number (written by hand) counts as long ago.
if status and (tonumber(redis.call('HGET', KEYS[2], 'finished_at') or '') or 0) >= tonumber(ARGV[2]) then
  return 0
end
local target = redis.call('HGET', KEYS[2], 'target')
if target then redis.call('ZREM', KEYS[1] .. ':' .. target, ARGV[1]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"#,
    )
});

/// KEYS: log, how far its targets' logs are filled (`olf`: the score and id last done).
/// ARGV: P, how many to add. Adds that many of the log's deliveries past that point to
/// their target's log; returns 1 while more are left. Run at every claim, for good: an
/// earlier version still running beside this one (a rolling upgrade) logs its deliveries
/// in the log only. (Those this version adds are in their target's log already; adding
/// them again changes nothing.)
static FILL_TARGET_LOGS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local at = redis.call('GET', KEYS[2])
local from = 0
if at then
  local score, id = string.match(at, '^(%S+) (%S+)$')
  local rank = id and redis.call('ZRANK', KEYS[1], id)
  if rank then
    from = rank + 1
  elseif score then
    from = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. score)
  end
end
local n = tonumber(ARGV[2])
local ids = redis.call('ZRANGE', KEYS[1], from, from + n - 1, 'WITHSCORES')
for i = 1, #ids, 2 do
  local target = redis.pcall('HGET', ARGV[1] .. 'o:' .. ids[i], 'target')
  if type(target) == 'string' then redis.call('ZADD', KEYS[1] .. ':' .. target, ids[i + 1], ids[i]) end
end
if #ids > 0 then redis.call('SET', KEYS[2], ids[#ids] .. ' ' .. ids[#ids - 1]) end
if #ids < 2 * n then return 0 end
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
        // Absent on deliveries never retried by hand (and on those of earlier versions);
        // it only sets the backoff, so a bad value counts as none rather than failing
        // every claim of the delivery.
        attempts_before_retry: int(f, "attempts_before_retry")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
    })
}

impl RedisStore {
    /// The root the due sets are named after (`due_of` in `ENQUEUE_LUA`); its own key is
    /// an earlier version's one due set.
    fn due_root(&self) -> String {
        self.index("od")
    }

    fn due_set(&self, target: &str) -> String {
        format!("{}:{target}", self.due_root())
    }

    fn due_targets(&self) -> String {
        format!("{}t", self.due_root())
    }

    /// The targets with pending deliveries (`odt`).
    async fn targets_due(&self, context: &'static str) -> Result<Vec<String>, StoreError> {
        let key = self.due_targets();
        let mut c = self.conn();
        self.run(context, async move {
            redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await
        })
        .await
    }

    /// Moves what an earlier version left in its one due set to the targets' due sets
    /// (a batch per call, so that no claim waits for a big backlog to move).
    async fn move_legacy_due(&self) -> Result<(), StoreError> {
        let (root, prefix) = (self.due_root(), self.prefix.clone());
        let mut c = self.conn();
        let left: i64 = self
            .run("claiming deliveries", async move {
                let mut exists = redis::cmd("EXISTS");
                let found: i64 = exists.arg(&root).query_async(&mut c).await?;
                if found == 0 {
                    return Ok(0);
                }
                MOVE_LEGACY
                    .key(root)
                    .arg(prefix)
                    .arg(LEGACY_BATCH)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if left > 0 {
            log::info!("notifications: {left} due deliveries of an earlier version still to move");
        }
        Ok(())
    }

    /// Ends a claimed delivery whose record cannot be read (`BURY`), and says so.
    async fn bury(
        &self,
        id: &str,
        target: &str,
        why: &StoreError,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        log::warn!(
            "notifications: delivery {id} for {target} cannot be read ({why}); it is marked dead"
        );
        let mut inv = BURY.prepare_invoke();
        inv.key(self.due_root())
            .key(self.delivery_key(id))
            .key(self.delivery_log())
            .arg(id)
            .arg(target)
            .arg(format!("the stored delivery cannot be read: {why}"))
            .arg(now_ms);
        let mut c = self.conn();
        self.run("ending an unreadable delivery", async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await?;
        Ok(())
    }

    fn delivery_log(&self) -> String {
        self.index("ol")
    }

    /// `target`'s log: the log's name, `:`, the target's (as `ENQUEUE_LUA` names it).
    fn target_log(&self, target: &str) -> String {
        format!("{}:{target}", self.delivery_log())
    }

    /// Adds what an earlier version logged only in the log to the targets' logs (a batch
    /// per call, as `move_legacy_due`; at each claim, since such a version may still run).
    async fn fill_target_logs(&self) -> Result<(), StoreError> {
        let (log, filled, prefix) = (self.delivery_log(), self.index("olf"), self.prefix.clone());
        let mut c = self.conn();
        self.run("filling the targets' delivery logs", async move {
            FILL_TARGET_LOGS
                .key(log)
                .key(filled)
                .arg(prefix)
                .arg(LEGACY_BATCH)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await?;
        Ok(())
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
        inv.key(self.due_root()).key(self.delivery_log());
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
        self.move_legacy_due().await?;
        self.fill_target_logs().await?;
        let mut targets = self.targets_due("claiming deliveries").await?;
        targets.retain(|t| room.left_for(t) > 0);
        targets.sort();
        if targets.is_empty() || room.limit == 0 {
            return Ok(Vec::new());
        }
        // The oldest due of each target with room, as many as it has room for; then the
        // oldest of them all, up to the limit.
        let keys: Vec<(String, u32)> = targets
            .iter()
            .map(|t| (self.due_set(t), room.left_for(t).min(room.limit)))
            .collect();
        let longest = room.longest_wait();
        let mut c = self.conn();
        // Each target's due ones, then those set further off than any wait (on a clock
        // since stepped back): two ranges a target.
        let due: Vec<Vec<(String, f64)>> = self
            .run("claiming deliveries", async move {
                let mut pipe = redis::pipe();
                for (key, n) in &keys {
                    for (from, to) in [
                        ("-inf".to_owned(), now_ms.to_string()),
                        (
                            format!("({}", now_ms.saturating_add(longest)),
                            "+inf".to_owned(),
                        ),
                    ] {
                        pipe.cmd("ZRANGE")
                            .arg(key)
                            .arg(from)
                            .arg(to)
                            .arg("BYSCORE")
                            .arg("LIMIT")
                            .arg(0)
                            .arg(*n)
                            .arg("WITHSCORES");
                    }
                }
                pipe.query_async(&mut c).await
            })
            .await?;
        let per_target = due.chunks(2).map(|pair| pair.concat());
        let mut due: Vec<(String, f64, &str)> = per_target
            .zip(&targets)
            .flat_map(|(ids, target)| {
                ids.into_iter()
                    .map(move |(id, at)| (id, at, target.as_str()))
            })
            .collect();
        due.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        let mut claimed = Vec::new();
        for (id, _, target) in due {
            if claimed.len() >= room.limit as usize {
                break;
            }
            let mut inv = CLAIM.prepare_invoke();
            inv.key(self.due_root())
                .key(self.delivery_key(&id))
                .arg(&id)
                .arg(now_ms)
                .arg(lease_ms)
                .arg(target)
                .arg(longest)
                .arg(if room.per_target == u32::MAX {
                    String::new()
                } else {
                    room.per_target.to_string()
                });
            let mut c = self.conn();
            let flat = self
                .run("claiming a delivery", async move {
                    inv.invoke_async::<Vec<Vec<u8>>>(&mut c).await
                })
                .await;
            let taken = match flat {
                Ok(flat) if flat.is_empty() => Ok(None),
                Ok(flat) if flat == [b"unreadable".to_vec()] => {
                    let why = super::corrupt("claiming a delivery", "attempts, or not a hash");
                    // A failure here is the claim's: what it took already is still sent.
                    self.bury(&id, target, &why, now_ms).await.map(|()| None)
                }
                Ok(flat) => match row(&super::flat_fields(flat)) {
                    Ok(d) => Ok(Some(d)),
                    Err(e) => self.bury(&id, target, &e, now_ms).await.map(|()| None),
                },
                Err(e) => Err(e),
            };
            match taken {
                Ok(Some(d)) => claimed.push(d),
                Ok(None) => {}
                // What is claimed already is sent: dropped here, it would wait for its
                // lease to end, one attempt counted for nothing.
                Err(e) if !claimed.is_empty() => {
                    log::warn!("notifications: claiming delivery {id}: {e}");
                    break;
                }
                Err(e) => return Err(e),
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
        let (due, key, id) = (self.due_root(), self.delivery_key(id), id.to_owned());
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
        target: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        // The log is read newest first in windows, until `limit` rows are found or the
        // log ends: the ones asked for may be older than any window of fixed size.
        let window = match filter {
            DeliveryFilter::All => limit.max(1),
            // Each window is one pipelined read: bounded, however many are asked for (a
            // copy asks for every pending one), so that none outlasts a command's time.
            DeliveryFilter::Failed
            | DeliveryFilter::Delivered
            | DeliveryFilter::Dead
            | DeliveryFilter::Pending => limit.clamp(LIST_WINDOW, 5 * LIST_WINDOW),
        };
        let log = match target {
            Some(t) => self.target_log(t),
            None => self.delivery_log(),
        };
        let mut out = Vec::new();
        // Deliveries added meanwhile move the older ones down the log: a window may start
        // with ids the last one had.
        let mut seen = std::collections::HashSet::new();
        let mut from: i64 = 0;
        loop {
            let mut newest = redis::cmd("ZRANGE");
            newest
                .arg(&log)
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
                // One record that cannot be read (`bury` logs it) does not hide the rest.
                let Ok(d) = row(f) else {
                    continue;
                };
                if filter.shows(d.status, d.last_error.as_deref()) {
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
        let (due, key, id) = (self.due_root(), self.delivery_key(id), id.to_owned());
        let mut c = self.conn();
        let answer: Vec<i64> = self
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
        Ok(match answer.as_slice() {
            [1] => Retried::Due,
            [2] => Retried::AlreadyDelivered,
            [3, until_ms] => Retried::UnderWay {
                until_ms: *until_ms,
            },
            _ => Retried::NotFound,
        })
    }

    async fn release_claims(&self, _now_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn pending_deliveries(&self) -> Result<u64, StoreError> {
        let root = self.due_root();
        let targets = self.targets_due("counting pending deliveries").await?;
        let keys: Vec<String> = targets.iter().map(|t| self.due_set(t)).collect();
        let mut c = self.conn();
        self.run("counting pending deliveries", async move {
            let mut pipe = redis::pipe();
            pipe.cmd("ZCARD").arg(&root);
            for key in &keys {
                pipe.cmd("ZCARD").arg(key);
            }
            let counts: Vec<u64> = pipe.query_async(&mut c).await?;
            Ok(counts.into_iter().sum())
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

    async fn set_target_gone(&self, gone: GoneTarget) -> Result<(), StoreError> {
        let key = self.index("og");
        let value = format!("{} {}", gone.url_hash, gone.since_ms);
        let mut c = self.conn();
        self.run("recording a target gone", async move {
            redis::cmd("HSET")
                .arg(key)
                .arg(gone.target)
                .arg(value)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn clear_target_gone(&self, target: &str) -> Result<bool, StoreError> {
        let (key, target) = (self.index("og"), target.to_owned());
        let mut c = self.conn();
        let n: i64 = self
            .run("forgetting a target gone", async move {
                redis::cmd("HDEL")
                    .arg(key)
                    .arg(target)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(n > 0)
    }

    async fn gone_targets(&self) -> Result<Vec<GoneTarget>, StoreError> {
        let key = self.index("og");
        let mut c = self.conn();
        let all: std::collections::BTreeMap<String, String> = self
            .run("reading the targets gone", async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut c).await
            })
            .await?;
        // A value that does not read (written by hand) counts as no record.
        Ok(all
            .into_iter()
            .filter_map(|(target, value)| {
                let (url_hash, since) = value.split_once(' ')?;
                Some(GoneTarget {
                    target,
                    url_hash: url_hash.to_owned(),
                    since_ms: since.parse().ok()?,
                })
            })
            .collect())
    }
}
