//! `StateStore` on Redis: one Lua script per change (create, take, try a code, touch,
//! revoke), so each is atomic; Redis TTLs instead of a sweeper.
//!
//! Besides the state (`s:<hash>`) and its tombstone (`g:<hash>`), a state has an entry in
//! its namespace's live set (`n:<namespace>`, hash -> expiry, for the cap), and when it has
//! them, in its subject's set (`u:<namespace>\0<subject>`, hash -> expiry, for listing and
//! revoking by subject: never a scan) and an identifier key (`i:<id>` -> hash).

use super::receipt::Receipt;
use super::{hex, RedisStore};
use crate::secret::{SecretHash, StateId};
use crate::store::{
    listing_position, Attempted, Found, InsertRules, Inserted, NamespaceFilter, Revoked, Sliding,
    StateRow, StateSecret, StateStore, StoreError, SubjectPage, SubjectStates, SweepCount,
    SweepStates, Taken,
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
    /// The state's identifier (names its `i:` key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<String>,
    /// Subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    /// The code's keyed hash (hex) and the tries left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<u32>,
    /// Sliding: TTL and latest expiry, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<i64>,
    /// The id of the API key that created it (names its `sk:` set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
}

impl Stored {
    fn from_row(row: StateRow) -> Stored {
        Stored {
            i: Some(StateId::of(&row.key_hash).to_string()),
            n: row.namespace,
            d: row.data,
            c: row.created_at_ms,
            e: row.expires_at_ms,
            u: row.subject,
            h: row.secret.map(|s| hex(&s.hash)),
            a: row.secret.map(|s| s.attempts_left),
            t: row.sliding.map(|s| s.ttl_ms),
            m: row.sliding.map(|s| s.max_expires_at_ms),
            k: row.created_by,
        }
    }

    fn into_row(self, key_hash: SecretHash) -> StateRow {
        let secret = self
            .h
            .as_deref()
            .and_then(SecretHash::from_hex)
            .map(|hash| StateSecret {
                hash,
                attempts_left: self.a.unwrap_or(0),
            });
        let sliding = match (self.t, self.m) {
            (Some(ttl_ms), Some(max_expires_at_ms)) => Some(Sliding {
                ttl_ms,
                max_expires_at_ms,
            }),
            _ => None,
        };
        StateRow {
            key_hash,
            namespace: self.n,
            data: self.d,
            created_at_ms: self.c,
            expires_at_ms: self.e,
            subject: self.u,
            secret,
            sliding,
            created_by: self.k,
        }
    }
}

impl RedisStore {
    /// Every state live at `now_ms` that `wanted` keeps, by SCAN: for the CLI and the
    /// start, never a request's hot path.
    pub(super) async fn live_rows(
        &self,
        context: &'static str,
        now_ms: i64,
        wanted: impl Fn(&StateRow) -> bool,
    ) -> Result<Vec<StateRow>, StoreError> {
        let keys = self.scan_keys(context, self.key("s", "")).await?;
        let state_key = self.key("s", "");
        let mut rows = Vec::new();
        // A batch of records at a time: only the wanted ones are kept.
        for batch in keys.chunks(1000) {
            let values = self.mget(context, batch).await?;
            rows.extend(batch.iter().zip(values).filter_map(|(key, v)| {
                let hash = SecretHash::from_hex(key.strip_prefix(&state_key)?)?;
                let row = serde_json::from_slice::<Stored>(&v?).ok()?.into_row(hash);
                (row.expires_at_ms > now_ms && wanted(&row)).then_some(row)
            }));
        }
        Ok(rows)
    }
}

fn parse_row(
    context: &'static str,
    key_hash: SecretHash,
    v: &[u8],
) -> Result<StateRow, StoreError> {
    serde_json::from_slice::<Stored>(v)
        .map(|s| s.into_row(key_hash))
        .map_err(|_| super::corrupt(context, "state"))
}

/// Shared by every script: ARGV[1] is the key prefix, ARGV[2] the state's hash (hex).
/// `drop` deletes a state and everything naming it. State scripts call Redis through
/// `call` (`receipt::PRELUDE`), which notes whether they wrote.
const LIB: &str = r#"
local P, H = ARGV[1], ARGV[2]
local function live_set(ns) return P .. 'n:' .. ns end
local function subject_set(ns, u) return P .. 'u:' .. ns .. '\0' .. u end
-- The live states one API key created, by expiry (states.max_states_per_key).
local function key_set(k) return P .. 'sk:' .. k end
-- Every state of every namespace, by expiry, until its grace window ends: the store's
-- live states and its tombstones are counted here. A member names the state's hash and,
-- after a '/', its identifier, so that a tombstone dropped for room takes its id key along.
local ALL = P .. 'all'
local function member(h, id)
  if id and id ~= '' then return h .. '/' .. id end
  return h
end
local function drop(h, s)
  call('DEL', P .. 's:' .. h, P .. 'g:' .. h)
  call('ZREM', ALL, member(h, s['i']))
  call('ZREM', live_set(s['n']), h)
  if s['u'] then call('ZREM', subject_set(s['n'], s['u']), h) end
  if s['k'] then call('ZREM', key_set(s['k']), h) end
  if s['i'] then call('DEL', P .. 'i:' .. s['i']) end
end
local function keep_at_least(key, ms)
  if call('PTTL', key) < ms then call('PEXPIRE', key, ms) end
end
-- Takes out the members of the sorted set `key` scored up to `upto` (a ZCOUNT bound,
-- '(' for below), the first TRIM of them: an insert after a quiet hour in which a million
-- states expired takes out a thousand, not a million at once (Redis runs one script at a
-- time, and every other client waits for it). Each insert takes out more than it adds,
-- so a backlog drains.
local TRIM = 1000
local function trim(key, upto)
  local n = call('ZCOUNT', key, '-inf', upto)
  if n > 0 then call('ZREMRANGEBYRANK', key, 0, math.min(n, TRIM) - 1) end
end
"#;

/// `command` on the members of the sorted set `key` scored after `now_ms` (states by
/// expiry: the live ones).
fn after_now(command: &str, key: String, now_ms: i64) -> redis::Cmd {
    let mut cmd = redis::cmd(command);
    cmd.arg(key).arg(format!("({now_ms}")).arg("+inf");
    cmd
}

/// A state script: the deadline's check (`clock::FENCE_LUA`) first, then the receipt's
/// `call` (`receipt::PRELUDE`), the shared functions, and `body`, whose answer is kept as
/// the call's receipt when it wrote something (`receipt`).
fn script(body: &str) -> Script {
    Script::new(&format!(
        "{}{}{}{LIB}{}",
        super::clock::NOW_LUA,
        super::clock::FENCE_LUA,
        super::receipt::PRELUDE,
        super::receipt::with_receipt(body)
    ))
}

/// KEYS: state, tombstone. ARGV: P, hash, namespace, "p" when the namespace is a prefix.
/// Takes the state (with everything naming it), or else the tombstone, only when its
/// namespace matches and it has no code: `{"row", json}`, `{"gone", namespace}`,
/// `{"secret", namespace, expires at}` or `{}` (a state of another namespace is left as
/// it is).
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local function ours(ns)
  if ARGV[4] == 'p' then return string.sub(ns, 1, #ARGV[3]) == ARGV[3] end
  return ns == ARGV[3]
end
local v = call('GET', KEYS[1])
if v then
  local s = cjson.decode(v)
  if not ours(s['n']) then return {} end
  if s['h'] then return {'secret', s['n'], string.format('%d', s['e'])} end
  drop(H, s)
  return {'row', v}
end
local ns = call('GET', KEYS[2])
if ns and ours(ns) then
  call('DEL', KEYS[2])
  return {'gone', ns}
end
return {}
"#,
    )
});

/// KEYS: state, tombstone. ARGV: P, hash, value, ttl ms, namespace, tombstone ttl ms,
/// now, expires at, most live states, id, subject ("" for none), "1" to replace the
/// subject's other states, most live states of the subject, most live states of all
/// namespaces, most tombstones, grace ms, the creating API key's id ("" for none), its
/// most live states. Returns `{"1", replaced hashes...}`, or `{"-2", when the subject's
/// first live state expires}` when the subject is full, `{"-4"}` when the key is (a cap
/// below the store's), `{"-1"}` when the namespace is, `{"-3"}` when the store is, checked
/// in that order as on SQLite (`{"0"}`: the value exists). The first
/// write is the state's SET, so a Redis at maxmemory refuses the script (OOM) before it
/// changes anything.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local ttl, ns, now, expires = tonumber(ARGV[4]), ARGV[5], ARGV[7], ARGV[8]
local subject, live = ARGV[11], live_set(ARGV[5])
local sub = subject ~= '' and subject_set(ns, subject) or nil
local freed = 0
if sub and ARGV[12] == '1' then freed = call('ZCOUNT', sub, '(' .. now, '+inf') end
if sub and ARGV[12] ~= '1' and call('ZCOUNT', sub, '(' .. now, '+inf') >= tonumber(ARGV[13]) then
  local first = call('ZRANGEBYSCORE', sub, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  return {'-2', string.format('%d', tonumber(first[2] or now))}
end
local by = ARGV[17] ~= '' and key_set(ARGV[17]) or nil
-- A key's cap below the store's (at or past it, the store's says it first).
if by and tonumber(ARGV[18]) < tonumber(ARGV[14]) then
  local held = call('ZCOUNT', by, '(' .. now, '+inf')
  -- A replace frees the subject's states this key created.
  if held >= tonumber(ARGV[18]) and sub and ARGV[12] == '1' then
    for _, h in ipairs(call('ZRANGEBYSCORE', sub, '(' .. now, '+inf')) do
      if call('ZSCORE', by, h) then held = held - 1 end
    end
  end
  if held >= tonumber(ARGV[18]) then return {'-4'} end
end
if call('ZCOUNT', live, '(' .. now, '+inf') - freed >= tonumber(ARGV[9]) then return {'-1'} end
local all_live = call('ZCOUNT', ALL, '(' .. now, '+inf')
if all_live - freed >= tonumber(ARGV[14]) then return {'-3'} end
if not call('SET', KEYS[1], ARGV[3], 'NX', 'PX', ttl) then return {'0'} end
local answer = {'1'}
if sub and ARGV[12] == '1' then
  for _, h in ipairs(call('ZRANGE', sub, 0, -1)) do
    local v = call('GET', P .. 's:' .. h)
    if v then
      local s = cjson.decode(v)
      if s['n'] == ns and s['u'] == subject then
        drop(h, s)
        table.insert(answer, h)
      end
    end
  end
  call('DEL', sub)
end
call('SET', KEYS[2], ns, 'PX', ARGV[6])
call('SET', P .. 'i:' .. ARGV[10], H, 'PX', ARGV[6])
call('ZADD', live, expires, H)
trim(live, now)
keep_at_least(live, ttl)
local max_tombstones, grace = tonumber(ARGV[15]), tonumber(ARGV[16])
trim(ALL, '(' .. string.format('%d', tonumber(now) - grace))
call('ZADD', ALL, expires, member(H, ARGV[10]))
-- Past the most tombstones kept, the oldest expired states' go (a few per insert).
local over = call('ZCARD', ALL) - (all_live - freed + 1) - max_tombstones
if over > 0 then
  over = math.min(over, 100)
  for _, m in ipairs(call('ZRANGE', ALL, 0, over - 1)) do
    local h, id = string.match(m, '^([^/]*)/?(.*)$')
    call('DEL', P .. 'g:' .. h)
    if id ~= '' then call('DEL', P .. 'i:' .. id) end
  end
  call('ZREMRANGEBYRANK', ALL, 0, over - 1)
end
if sub then
  call('ZADD', sub, expires, H)
  trim(sub, now)
  keep_at_least(sub, ttl)
end
if by then
  call('ZADD', by, expires, H)
  trim(by, now)
  keep_at_least(by, ttl)
end
return answer
"#,
    )
});

/// KEYS: state, tombstone. ARGV: P, hash, namespace, candidate code hash (hex), now.
/// `{"row", json}` (matched, taken), `{"wrong", left}`, `{"nosecret"}`,
/// `{"expired", namespace, expired at}`, `{"gone", namespace}` or `{}`. The comparison
/// reads every byte whatever it finds.
static ATTEMPT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v = call('GET', KEYS[1])
if not v then
  local ns = call('GET', KEYS[2])
  if ns and ns == ARGV[3] then
    call('DEL', KEYS[2])
    return {'gone', ns}
  end
  return {}
end
local s = cjson.decode(v)
if s['n'] ~= ARGV[3] then return {} end
if s['e'] <= tonumber(ARGV[5]) then
  drop(H, s)
  return {'expired', s['n'], string.format('%d', s['e'])}
end
if not s['h'] then return {'nosecret'} end
local a, b = s['h'], ARGV[4]
local diff = (#a == #b) and 0 or 1
for i = 1, math.min(#a, #b) do
  diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i)))
end
if diff == 0 then
  drop(H, s)
  return {'row', v}
end
local left = (s['a'] or 1) - 1
if left <= 0 then
  drop(H, s)
  return {'wrong', '0'}
end
s['a'] = left
call('SET', KEYS[1], cjson.encode(s), 'KEEPTTL')
return {'wrong', string.format('%d', left)}
"#,
    )
});

/// KEYS: state, tombstone. ARGV: P, hash, namespace, now, grace ms. Moves a live sliding
/// state's expiry to now + its TTL (never back, never past its latest expiry) together
/// with everything that expires with it. `{"row", json}`, `{"gone", namespace}` or `{}`.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now, grace = tonumber(ARGV[4]), tonumber(ARGV[5])
local v = call('GET', KEYS[1])
if v then
  local s = cjson.decode(v)
  if s['n'] ~= ARGV[3] then return {} end
  if s['t'] and s['e'] > now then
    local e = math.max(s['e'], math.min(now + s['t'], s['m']))
    if e > s['e'] then
      s['e'] = e
      v = cjson.encode(s)
      local ttl = string.format('%d', e - now)
      local keep = string.format('%d', e - now + grace)
      call('SET', KEYS[1], v, 'PX', ttl)
      call('SET', KEYS[2], s['n'], 'PX', keep)
      if s['i'] then call('PEXPIRE', P .. 'i:' .. s['i'], keep) end
      call('ZADD', live_set(s['n']), string.format('%d', e), H)
      keep_at_least(live_set(s['n']), e - now)
      call('ZADD', ALL, string.format('%d', e), member(H, s['i']))
      if s['u'] then
        call('ZADD', subject_set(s['n'], s['u']), string.format('%d', e), H)
        keep_at_least(subject_set(s['n'], s['u']), e - now)
      end
      if s['k'] then
        call('ZADD', key_set(s['k']), string.format('%d', e), H)
        keep_at_least(key_set(s['k']), e - now)
      end
    end
  end
  return {'row', v}
end
local ns = call('GET', KEYS[2])
if ns and ns == ARGV[3] then return {'gone', ns} end
return {}
"#,
    )
});

/// ARGV: P, hash or "" (then ARGV[5] is an identifier to look up), namespace, now, id.
/// Deletes the state and its tombstone; returns `{"1", hash}` when a live state was there,
/// `{"0", hash}` when an expired one, `{"0"}` when none.
static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local h = H
if h == '' then
  h = call('GET', P .. 'i:' .. ARGV[5])
  if not h then return {'0'} end
end
local v = call('GET', P .. 's:' .. h)
if not v then
  if call('GET', P .. 'g:' .. h) == ARGV[3] then call('DEL', P .. 'g:' .. h) end
  return {'0'}
end
local s = cjson.decode(v)
if s['n'] ~= ARGV[3] then return {'0'} end
drop(h, s)
if s['e'] > tonumber(ARGV[4]) then return {'1', h} end
return {'0', h}
"#,
    )
});

/// ARGV: P, "", namespace, subject, now. Deletes every state of the subject; returns
/// `{how many were live, the removed hashes...}`.
static REVOKE_SUBJECT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local sub, n, removed = subject_set(ARGV[3], ARGV[4]), 0, {}
for _, h in ipairs(call('ZRANGE', sub, 0, -1)) do
  local v = call('GET', P .. 's:' .. h)
  if v then
    local s = cjson.decode(v)
    if s['n'] == ARGV[3] and s['u'] == ARGV[4] then
      drop(h, s)
      table.insert(removed, h)
      if s['e'] > tonumber(ARGV[5]) then n = n + 1 end
    end
  end
end
call('DEL', sub)
table.insert(removed, 1, tostring(n))
return removed
"#,
    )
});

/// A script's answer: `{kind, fields...}` as byte strings.
type Reply = Vec<Vec<u8>>;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn number(context: &'static str, bytes: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| super::corrupt(context, "number"))
}

/// A `{number, hashes...}` answer: the number, and the hashes (hex) as keys.
fn counted_keys(
    context: &'static str,
    reply: &Reply,
) -> Result<(i64, Vec<SecretHash>), StoreError> {
    let (first, rest) = reply
        .split_first()
        .ok_or_else(|| super::corrupt(context, "answer"))?;
    let keys = rest
        .iter()
        .map(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(SecretHash::from_hex)
                .ok_or_else(|| super::corrupt(context, "hash"))
        })
        .collect::<Result<_, _>>()?;
    Ok((number(context, first)?, keys))
}

/// A `{"row", json}` / `{"gone", namespace}` / `{}` answer as `Found`.
fn found(context: &'static str, key_hash: SecretHash, reply: &Reply) -> Result<Found, StoreError> {
    Ok(match reply.as_slice() {
        [kind, v] if kind == b"row" => Found::Row(parse_row(context, key_hash, v)?),
        [kind, ns] if kind == b"gone" => Found::ExpiredTombstone {
            namespace: text(ns),
            expired_at_ms: None,
        },
        _ => Found::Missing,
    })
}

impl RedisStore {
    /// Runs one of the state scripts with the state's two keys and `P, hash, args...`. A
    /// call whose answer does not come back (none within `OP_TIMEOUT`, or the connection
    /// broke after the script was sent) reads the script's receipt: the answer it lost, or
    /// that nothing was changed (then it answers 503, and a retry finds all as it was).
    async fn state_script(
        &self,
        context: &'static str,
        script: &'static Script,
        key_hash: Option<&SecretHash>,
        args: Vec<String>,
    ) -> Result<Reply, StoreError> {
        let id = key_hash.map(hex).unwrap_or_default();
        let call = Call {
            script,
            keys: [self.key("s", &id), self.key("g", &id)],
            args: [vec![self.index(""), id], args].concat(),
            receipt: self.key("rc", &self.calls.next()),
            clock: self.clock.clone(),
            began: tokio::time::Instant::now(),
        };
        let mut c = self.conn();
        // Each step has its own time (the call `OP_TIMEOUT`, the receipt's read
        // `READ_FOR`): one limit for both would end the read before it began when this
        // process resumes from a pause past it, with Redis' answer waiting unread. This
        // one only stops a step that outlives its own limit.
        let limit = (super::OP_TIMEOUT + super::receipt::READ_FOR) * 4;
        self.run_within(context, limit, async move {
            let mut sent = None;
            let lost = match tokio::time::timeout(super::OP_TIMEOUT, call.ask(&mut c, &mut sent))
                .await
            {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => e,
                Ok(Err(e)) => return Err(e),
                Err(_) => super::timed_out(),
            };
            // Not sent: nothing ran.
            let Some(deadline) = sent else {
                return Err(lost);
            };
            let due = call.began + super::clock::FENCE;
            match super::receipt::read(&mut c, &call.receipt, deadline, due).await {
                Receipt::Ran(reply) => {
                    log::info!(
                        "{context}: Redis' answer did not come back ({lost}); the script's receipt says what it did"
                    );
                    Ok(reply)
                }
                Receipt::NotRun => Err(lost),
                Receipt::Unknown(why) => {
                    UNSURE_LOGGED.warn(format_args!(
                        "{context}: Redis' answer did not come back ({lost}), and its receipt could not be read ({why}): the change may or may not have been made"
                    ));
                    Err(lost)
                }
            }
        })
        .await
    }
}

/// Calls whose change is not known: a Redis that stays stalled fails them all at once.
static UNSURE_LOGGED: crate::logging::Budget =
    crate::logging::Budget::new("more state changes not known to be made or not", 5);

/// One call of a state script.
struct Call {
    script: &'static Script,
    keys: [String; 2],
    args: Vec<String>,
    /// The receipt's key (`receipt`).
    receipt: String,
    clock: std::sync::Arc<super::clock::RedisClock>,
    began: tokio::time::Instant,
}

impl Call {
    /// Sends the script, with its receipt's key and its deadline (noted in `sent` before
    /// each try goes out), and waits for its answer.
    async fn ask(
        &self,
        c: &mut redis::aio::ConnectionManager,
        sent: &mut Option<i64>,
    ) -> redis::RedisResult<Reply> {
        let mut tries = 0;
        loop {
            tries += 1;
            let deadline = self.clock.deadline(c, self.began).await?;
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(&self.keys[..])
                .arg(&self.args[..])
                .arg(&self.receipt)
                .arg(deadline);
            *sent = Some(deadline);
            let answered: redis::RedisResult<Reply> = invocation.invoke_async(c).await;
            let Err(e) = &answered else {
                return answered;
            };
            // A reading of Redis' clock that no longer holds: the clock stepped (back:
            // `EARLY`; ahead: `LATE` for a call that was not slow), or the connection
            // broke (a restart, a failover to a host with another clock). Nothing was
            // changed by a script that answered either: it is asked once more, on a
            // fresh reading.
            let stepped = e.code() == Some("EARLY")
                || (e.code() == Some("LATE") && self.began.elapsed() < super::clock::FENCE / 2);
            if stepped || e.code() == Some("LATE") || e.is_io_error() || e.is_connection_dropped() {
                self.clock.forget();
            }
            if !(stepped && tries < 2) {
                return answered;
            }
        }
    }
}

#[async_trait]
impl SweepStates for RedisStore {
    /// Redis expires states and tombstones by itself; there is nothing to sweep.
    async fn sweep_expired(
        &self,
        _now_ms: i64,
        _purge_before_ms: i64,
        _batch: usize,
        _max_tombstones: u64,
    ) -> Result<SweepCount, StoreError> {
        Ok(SweepCount::default())
    }
}

#[async_trait]
impl StateStore for RedisStore {
    async fn insert_state(
        &self,
        row: StateRow,
        rules: InsertRules,
    ) -> Result<Inserted, StoreError> {
        const CONTEXT: &str = "storing a state";
        let now = rules.now_ms;
        let (expires, ttl) = (row.expires_at_ms, (row.expires_at_ms - now).max(1));
        // At least a millisecond past the state itself, so a tombstone outlives its state.
        let tomb_ttl = (rules.keep_until_ms - now).max(ttl.saturating_add(1));
        let key_hash = row.key_hash;
        let ns = row.namespace.clone();
        let subject = row.subject.clone().unwrap_or_default();
        let by = row.created_by.clone().unwrap_or_default();
        let stored = Stored::from_row(row);
        let id = stored.i.clone().unwrap_or_default();
        let value =
            serde_json::to_string(&stored).map_err(|e| StoreError::unavailable(CONTEXT, e))?;
        let replace = if rules.replace_subject { "1" } else { "0" };
        let answer: Reply = self
            .state_script(
                CONTEXT,
                &INSERT,
                Some(&key_hash),
                vec![
                    value,
                    ttl.to_string(),
                    ns,
                    tomb_ttl.to_string(),
                    now.to_string(),
                    expires.to_string(),
                    rules.max_live.to_string(),
                    id,
                    subject,
                    replace.to_owned(),
                    rules.max_per_subject.to_string(),
                    rules.max_total.to_string(),
                    rules.max_tombstones.to_string(),
                    (rules.keep_until_ms - expires).max(0).to_string(),
                    by,
                    rules.max_per_key.to_string(),
                ],
            )
            .await?;
        if let [code, next_expiry] = answer.as_slice() {
            if code == b"-2" {
                return Ok(Inserted::SubjectFull {
                    next_expiry_ms: number(CONTEXT, next_expiry)?,
                });
            }
        }
        let (code, replaced) = counted_keys(CONTEXT, &answer)?;
        match code {
            1 => Ok(Inserted::Stored { replaced }),
            -1 => Ok(Inserted::NamespaceFull),
            -3 => Ok(Inserted::StoreFull),
            -4 => Ok(Inserted::KeyFull),
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
        let mode = if prefix { "p" } else { "=" };
        let reply: Reply = self
            .state_script(
                CONTEXT,
                &TAKE,
                Some(&key_hash),
                vec![ns.to_owned(), mode.to_owned()],
            )
            .await?;
        Ok(match reply.as_slice() {
            [kind, namespace, expires] if kind == b"secret" => Taken::SecretRequired {
                namespace: text(namespace),
                // Unread, it is no expiry: the code is asked for, as before.
                expires_at_ms: text(expires).parse().unwrap_or(i64::MAX),
            },
            _ => found(CONTEXT, key_hash, &reply)?.into(),
        })
    }

    async fn read_state(&self, key_hash: SecretHash, namespace: &str) -> Result<Found, StoreError> {
        let id = hex(&key_hash);
        let keys = [self.key("s", &id), self.key("g", &id)];
        const CONTEXT: &str = "reading a state";
        let values = self.mget(CONTEXT, &keys).await?;
        let ours = |ns: &str| ns == namespace;
        match values.as_slice() {
            [Some(v), _] => {
                let row = parse_row(CONTEXT, key_hash, v)?;
                Ok(if ours(&row.namespace) {
                    Found::Row(row)
                } else {
                    Found::Missing
                })
            }
            [None, Some(ns)] if ours(&text(ns)) => Ok(Found::ExpiredTombstone {
                namespace: text(ns),
                expired_at_ms: None,
            }),
            _ => Ok(Found::Missing),
        }
    }

    async fn touch_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Found, StoreError> {
        const CONTEXT: &str = "extending a state";
        let reply: Reply = self
            .state_script(
                CONTEXT,
                &TOUCH,
                Some(&key_hash),
                vec![
                    namespace.to_owned(),
                    now_ms.to_string(),
                    grace_ms.to_string(),
                ],
            )
            .await?;
        found(CONTEXT, key_hash, &reply)
    }

    async fn attempt_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        candidate: SecretHash,
        now_ms: i64,
    ) -> Result<Attempted, StoreError> {
        const CONTEXT: &str = "trying a state's code";
        let reply: Reply = self
            .state_script(
                CONTEXT,
                &ATTEMPT,
                Some(&key_hash),
                vec![namespace.to_owned(), hex(&candidate), now_ms.to_string()],
            )
            .await?;
        Ok(match reply.as_slice() {
            [kind, left] if kind == b"wrong" => Attempted::Wrong {
                attempts_left: u32::try_from(number(CONTEXT, left)?).unwrap_or(0),
            },
            [kind] if kind == b"nosecret" => Attempted::NoSecret,
            [kind, ns, at] if kind == b"expired" => Attempted::Expired {
                namespace: text(ns),
                expired_at_ms: Some(number(CONTEXT, at)?),
            },
            _ => match found(CONTEXT, key_hash, &reply)? {
                Found::Row(row) => Attempted::Matched(row),
                Found::ExpiredTombstone {
                    namespace,
                    expired_at_ms,
                } => Attempted::Expired {
                    namespace,
                    expired_at_ms,
                },
                Found::Missing => Attempted::Missing,
            },
        })
    }

    async fn revoke_state(
        &self,
        key_hash: SecretHash,
        namespace: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const CONTEXT: &str = "revoking a state";
        let answer: Reply = self
            .state_script(
                CONTEXT,
                &REVOKE,
                Some(&key_hash),
                vec![namespace.to_owned(), now_ms.to_string(), String::new()],
            )
            .await?;
        Ok(counted_keys(CONTEXT, &answer)?.0 == 1)
    }

    async fn revoke_state_id(
        &self,
        namespace: &str,
        id: &str,
        now_ms: i64,
    ) -> Result<Revoked, StoreError> {
        const CONTEXT: &str = "revoking a state";
        let Some(id) = StateId::parse(id) else {
            return Ok(Revoked::default());
        };
        let answer: Reply = self
            .state_script(
                CONTEXT,
                &REVOKE,
                None,
                vec![namespace.to_owned(), now_ms.to_string(), id.to_string()],
            )
            .await?;
        let (live, keys) = counted_keys(CONTEXT, &answer)?;
        Ok(Revoked {
            live: u64::try_from(live).unwrap_or(0),
            keys,
        })
    }

    async fn subject_states(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
        page: SubjectPage,
    ) -> Result<SubjectStates, StoreError> {
        const CONTEXT: &str = "listing a subject's states";
        /// States read at once: what the first pass holds of their data at a time.
        const CHUNK: usize = 64;
        let set = self.key("u", &format!("{namespace}\0{subject}"));
        let mut c = self.conn();
        let hashes: Vec<String> = self
            .run(CONTEXT, async move {
                after_now("ZRANGEBYSCORE", set, now_ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let belongs = |row: &StateRow| {
            row.namespace == namespace
                && row.subject.as_deref() == Some(subject)
                && row.expires_at_ms > now_ms
        };
        // The set is ordered by expiry: the order of creation is in the states
        // themselves. A first pass keeps only where each state of the page's range sits
        // and how much data it holds; the page's own states are read again.
        let mut placed: Vec<(i64, SecretHash, usize)> = Vec::new();
        for chunk in hashes.chunks(CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|h| self.key("s", h)).collect();
            for (h, v) in chunk.iter().zip(self.mget(CONTEXT, &keys).await?) {
                let (Some(key_hash), Some(v)) = (SecretHash::from_hex(h), v) else {
                    continue;
                };
                let row = parse_row(CONTEXT, key_hash, &v)?;
                if belongs(&row) && page.follows(row.created_at_ms, &key_hash) {
                    let size = row.data.as_ref().map_or(0, String::len);
                    placed.push((row.created_at_ms, key_hash, size));
                }
            }
        }
        placed.sort_by(|a, b| (a.0, &a.1 .0).cmp(&(b.0, &b.1 .0)));
        let (chosen, more) = page.take(placed, |p| p.2);
        let next = chosen
            .last()
            .filter(|_| more)
            .map(|(at, key, _)| listing_position(*at, key));
        let keys: Vec<String> = chosen
            .iter()
            .map(|(_, k, _)| self.key("s", &hex(k)))
            .collect();
        let mut rows = Vec::with_capacity(chosen.len());
        for ((_, key_hash, _), v) in chosen.iter().zip(self.mget(CONTEXT, &keys).await?) {
            // Consumed or revoked between the two reads: not listed.
            let Some(v) = v else { continue };
            let row = parse_row(CONTEXT, *key_hash, &v)?;
            if belongs(&row) {
                rows.push(row);
            }
        }
        Ok(SubjectStates { rows, next })
    }

    async fn revoke_subject(
        &self,
        namespace: &str,
        subject: &str,
        now_ms: i64,
    ) -> Result<Revoked, StoreError> {
        const CONTEXT: &str = "revoking a subject's states";
        let answer: Reply = self
            .state_script(
                CONTEXT,
                &REVOKE_SUBJECT,
                None,
                vec![namespace.to_owned(), subject.to_owned(), now_ms.to_string()],
            )
            .await?;
        let (live, keys) = counted_keys(CONTEXT, &answer)?;
        Ok(Revoked {
            live: u64::try_from(live).unwrap_or(0),
            keys,
        })
    }

    /// Walks the state keys with SCAN: only maintenance asks, never a request.
    async fn live_states_total(&self, now_ms: i64) -> Result<u64, StoreError> {
        let all = self.index("all");
        let mut c = self.conn();
        self.run("counting the store's states", async move {
            after_now("ZCOUNT", all, now_ms).query_async(&mut c).await
        })
        .await
    }

    async fn states_with_data(
        &self,
        prefix: &str,
        now_ms: i64,
    ) -> Result<Vec<StateRow>, StoreError> {
        self.live_rows("reading states by namespace", now_ms, |row| {
            row.namespace.starts_with(prefix) && row.data.is_some()
        })
        .await
    }

    async fn state_data_prefixes(
        &self,
        now_ms: i64,
        chars: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        const CONTEXT: &str = "reading states' data";
        let keys = self.scan_keys(CONTEXT, self.key("s", "")).await?;
        let mut counts = std::collections::HashMap::<String, u64>::new();
        // A batch of records at a time: only the prefixes are kept.
        for batch in keys.chunks(1000) {
            for v in self.mget(CONTEXT, batch).await?.into_iter().flatten() {
                let Ok(stored) = serde_json::from_slice::<Stored>(&v) else {
                    continue;
                };
                if let (Some(data), true) = (stored.d, stored.e > now_ms) {
                    let head: String = data.chars().take(chars).collect();
                    *counts.entry(head).or_insert(0) += 1;
                }
            }
        }
        Ok(counts.into_iter().collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write, not a PING: Redis at `maxmemory` (noeviction) or a read-only replica
        // answers PING while it refuses every write.
        let mut c = self.conn();
        let probe = self.index("probe");
        let memory: String = self
            .run("checking Redis can be written", async move {
                redis::cmd("SET")
                    .arg(probe)
                    .arg("")
                    .arg("PX")
                    .arg(1000)
                    .query_async::<()>(&mut c)
                    .await?;
                redis::cmd("INFO").arg("memory").query_async(&mut c).await
            })
            .await?;
        // A small write still lands a few KiB below `maxmemory` where a state's or a
        // refresh's does not: not ready there either.
        if super::near_maxmemory(&memory) {
            return Err(StoreError::OutOfMemory {
                context: "checking Redis can be written (it is within 1 % of maxmemory, at least 128 KiB)",
            });
        }
        Ok(())
    }
}
