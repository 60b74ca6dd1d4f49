//! `ConnectionStore` on Redis: one hash per connection (tokens sealed exactly as in
//! SQLite), a sorted set as the index, and the refresh lease as its own key taken with
//! `SET NX PX`. Every token write checks the fencing generation inside the same script,
//! so a refresher whose lease ran out cannot overwrite what a newer one stored.

use super::outbox::ENQUEUE_LUA;
use super::{int, need_int, need_text, text, Changes, Fields, RedisStore, APPLY_LUA};
use crate::store::{
    AccountIdentity, ConnectionCount, ConnectionKey, ConnectionRow, ConnectionSave,
    ConnectionStatus, ConnectionStore, NewDelivery, RefreshFailure, SealedTokens, StoreError, Told,
};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

fn script(body: &str) -> Script {
    Script::new(&format!("{APPLY_LUA}\n{ENQUEUE_LUA}\n{body}"))
}

/// Lua (after `APPLY_LUA`): stores a (re)connect, the `Changes` from ARGV[first], in hash
/// `conn`: the generation moves on and the refresh lease goes. Returns the ARGV index after
/// the changes. A new hash starts at the generation `first_generation` gives (`now`, a
/// string of digits, with three zeros: exact, where Lua's numbers would not be; a lone
/// "0" stays one, as Redis reads no integer with leading zeros).
pub(super) const SAVE_LUA: &str = r#"
local function save_connection(conn, lease, index, member, now, first)
  if redis.call('EXISTS', conn) == 0 then
    local generation = now == '0' and '0' or now .. '000'
    redis.call('HSET', conn, 'created', now, 'generation', generation, 'failures', 0)
  end
  local after = apply(conn, first)
  redis.call('HINCRBY', conn, 'generation', 1)
  redis.call('DEL', lease)
  redis.call('ZADD', index, 0, member)
  return after
end
"#;

/// KEYS: conn, lease, index, then the outbox's. ARGV: member, now, the deliveries (from
/// ARGV[3]), changes…. Returns the connection as it was (HGETALL; empty: a new one).
static SAVE: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{SAVE_LUA}\n{}",
        "local was = redis.call('HGETALL', KEYS[1])
save_connection(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], enqueue(4, 3))
return was"
    ))
});

/// The connection a save replaced, from its HGETALL before the save (`None`: empty,
/// a new connection). The save is made by then: a row that does not read back is said,
/// and taken as none (its grant, if another account's, is then not revoked).
pub(super) fn was(flat: Vec<Vec<u8>>) -> Option<ConnectionRow> {
    if flat.is_empty() {
        return None;
    }
    row(&super::flat_fields(flat))
        .inspect_err(|e| {
            log::warn!("saving a connection: the one it replaced could not be read ({e}): its grant is not revoked, if it was another account's")
        })
        .ok()
}

/// KEYS: conn, lease. ARGV: now, lease ms, the generation the caller read, the call's
/// name (the lease key's value, for `RELEASE_UNANSWERED`). Returns the new generation, or
/// nil (leased, or changed since the caller read it).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
if tonumber(redis.call('HGET', KEYS[1], 'generation') or '0') ~= tonumber(ARGV[3]) then return false end
local g = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', tonumber(ARGV[1]) + tonumber(ARGV[2]))
redis.call('HDEL', KEYS[1], 'takeover_noted')
return g
"#,
    )
});

/// KEYS: conn, lease. ARGV: the name of an `ACQUIRE` call that got no answer. Lets go of
/// the lease that call took, if it did and still holds it: 1 then, else 0.
static RELEASE_UNANSWERED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('HINCRBY', KEYS[1], 'generation', 1)
return 1
"#,
    )
});

/// KEYS: conn, lease. ARGV: now, generation, the lease's end the caller read. 1 when the
/// lease of that generation, ended then, ran out unreleased and the takeover was noted.
static NOTE_TAKEOVER: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[2] then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '') ~= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'takeover_noted', ARGV[1])
return 1
"#,
    )
});

/// KEYS: conn, lease. ARGV: now, lease ms, generation. 1 when the lease of that
/// generation was held longer, 0 when the connection moved on (or is gone).
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', tonumber(ARGV[1]) + tonumber(ARGV[2]))
return 1
"#,
    )
});

/// KEYS: conn, lease, then the outbox's. ARGV: generation, failure flag ("1" counts a
/// failure), the deliveries (from ARGV[3]), changes….
static FENCED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'generation') ~= ARGV[1] then return 0 end
apply(KEYS[1], enqueue(3, 3))
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HSETNX', KEYS[1], 'failing_since', redis.call('HGET', KEYS[1], 'updated'))
end
redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('DEL', KEYS[2])
return 1
"#,
    )
});

/// KEYS: conn, lease, index, then the outbox's. ARGV: member, the generation and the
/// sealed access token the caller read, the deliveries (ARGV[4]). Returns 1 when it
/// deleted the connection.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local g = redis.call('HGET', KEYS[1], 'generation')
if g and (tonumber(g) ~= tonumber(ARGV[2])
          or redis.call('HGET', KEYS[1], 'access_token') ~= ARGV[3]) then
  return 0
end
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
if existed == 0 then return 0 end
enqueue(4, 4)
return 1
"#,
    )
});

/// KEYS: conn. ARGV: old access, old refresh, old has refresh ("1"/"0"), new access,
/// new refresh, new has refresh.
static RESEAL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local at = redis.call('HGET', KEYS[1], 'access_token')
if not at or at ~= ARGV[1] then return 0 end
local rt = redis.call('HGET', KEYS[1], 'refresh_token')
if ARGV[3] == '1' then
  if rt ~= ARGV[2] then return 0 end
elseif rt then
  return 0
end
redis.call('HSET', KEYS[1], 'access_token', ARGV[4])
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'refresh_token', ARGV[5])
else
  redis.call('HDEL', KEYS[1], 'refresh_token')
end
return 1
"#,
    )
});

fn row(f: &Fields) -> Result<ConnectionRow, StoreError> {
    const CONTEXT: &str = "reading a connection";
    Ok(ConnectionRow {
        provider: need_text(CONTEXT, f, "provider")?,
        account: need_text(CONTEXT, f, "account")?,
        status: ConnectionStatus::parse(&need_text(CONTEXT, f, "status")?)
            .map_err(|e| StoreError::unavailable(CONTEXT, e))?,
        scopes: text(f, "scopes"),
        token_type: need_text(CONTEXT, f, "token_type")?,
        access_token: f
            .get("access_token")
            .cloned()
            .ok_or_else(|| super::corrupt(CONTEXT, "access_token"))?,
        refresh_token: f.get("refresh_token").cloned(),
        access_expires_at_ms: int(f, "access_expires_at"),
        created_at_ms: need_int(CONTEXT, f, "created")?,
        updated_at_ms: need_int(CONTEXT, f, "updated")?,
        last_refresh_at_ms: int(f, "last_refresh_at"),
        last_error: text(f, "last_error"),
        failures: int(f, "failures").unwrap_or(0),
        retry_at_ms: int(f, "retry_at"),
        lease_until_ms: int(f, "lease_until"),
        generation: need_int(CONTEXT, f, "generation")?,
        identity: AccountIdentity {
            sub: text(f, "account_sub"),
            email: text(f, "account_email"),
            name: text(f, "account_name"),
        },
        connected_at_ms: int(f, "connected_at"),
        failing_since_ms: int(f, "failing_since"),
        told: Told::from_stored(int(f, "failing_notified").unwrap_or(0)),
    })
}

/// The token fields of a save. `keep_missing`: a refresh that returned no refresh token
/// (or no scopes) keeps the stored one instead of clearing it.
/// The keys `SAVE_LUA` writes, and the connection's member in the index.
pub(super) struct SaveKeys {
    pub conn: String,
    pub lease: String,
    pub index: String,
    pub member: String,
}

/// `refreshed`: whether the tokens are a provider's answer of now (`last_refresh_at`;
/// see `ConnectionSave::from_provider`).
fn token_changes(
    t: SealedTokens,
    now_ms: i64,
    (keep_missing, refreshed): (bool, bool),
    told: Told,
) -> Changes {
    let mut ch = Changes::default();
    ch.put("status", ConnectionStatus::Active.as_str())
        .put("token_type", t.token_type)
        .put("access_token", t.access_token)
        .opt_num("access_expires_at", t.access_expires_at_ms)
        .num("updated", now_ms)
        .opt_num("last_refresh_at", refreshed.then_some(now_ms))
        .num("failures", 0)
        .opt("last_error", None::<Vec<u8>>)
        .opt_num("retry_at", None)
        .opt_num("failing_since", None)
        .opt_num(
            "failing_notified",
            (!told.is_nothing()).then(|| told.stored()),
        );
    match (t.scopes, keep_missing) {
        (Some(s), _) => ch.put("scopes", s),
        (None, false) => ch.opt("scopes", None::<Vec<u8>>),
        (None, true) => &mut ch,
    };
    match (t.refresh_token, keep_missing) {
        (Some(r), _) => ch.put("refresh_token", r),
        (None, false) => ch.opt("refresh_token", None::<Vec<u8>>),
        (None, true) => &mut ch,
    };
    ch
}

/// Connections in the order every listing gives them: by provider, then account.
fn sorted(mut rows: Vec<ConnectionRow>) -> Vec<ConnectionRow> {
    rows.sort_by(|a, b| (&a.provider, &a.account).cmp(&(&b.provider, &b.account)));
    rows
}

impl RedisStore {
    /// Every connection's record, read or not.
    async fn connection_records(&self) -> Result<Vec<Fields>, StoreError> {
        self.indexed_records(
            "listing connections",
            self.index("cs"),
            self.key("c", ""),
            &[],
        )
        .await
    }

    pub(super) fn conn_keys(&self, provider: &str, account: &str) -> (String, String, String) {
        let member = format!("{provider}/{account}");
        (self.key("c", &member), self.key("cl", &member), member)
    }

    /// The keys and changes `SAVE_LUA` takes for `save`.
    pub(super) fn connection_save(&self, save: ConnectionSave, now_ms: i64) -> (SaveKeys, Changes) {
        let (provider, account) = (save.key.provider.as_str(), save.key.account.as_str());
        let (conn, lease, member) = self.conn_keys(provider, account);
        let mut changes =
            token_changes(save.tokens, now_ms, (false, save.from_provider), save.told);
        changes
            .put("provider", provider)
            .put("account", account)
            .opt_num("lease_until", None)
            .opt("account_sub", save.identity.sub)
            .opt("account_email", save.identity.email)
            .opt("account_name", save.identity.name)
            .num("connected_at", now_ms);
        let keys = SaveKeys {
            conn,
            lease,
            index: self.index("cs"),
            member,
        };
        (keys, changes)
    }

    /// Runs FENCED: writes `changes` only while `generation` holds the connection.
    async fn fenced(
        &self,
        context: &'static str,
        (provider, account): (&str, &str),
        generation: i64,
        failure: bool,
        (changes, events): (Changes, Vec<NewDelivery>),
    ) -> Result<bool, StoreError> {
        let (key, lease, _) = self.conn_keys(provider, account);
        let mut inv = FENCED.prepare_invoke();
        inv.key(key)
            .key(lease)
            .arg(generation)
            .arg(if failure { "1" } else { "0" });
        self.enqueue_args(&mut inv, &events);
        changes.to_args(&mut inv);
        let mut c = self.conn();
        let n: i64 = self
            .run(context, async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(n == 1)
    }
}

impl RedisStore {
    /// After a lease script that got no answer (Redis stalled past the call's deadline,
    /// the connection dropped): it may have run all the same and taken the lease for
    /// nobody, holding off every refresh of the connection, in every instance, until the
    /// lease ran out (`provider_answer_wait_seconds` + `provider_timeout_seconds` + 5 s). Once Redis answers, that call's lease (the lease
    /// key's value names the call) is let go, tried every second for as long as the lease
    /// would have lasted.
    fn let_go_unanswered(&self, conn: String, lease: String, call: String, lease_ms: i64) {
        let Some(rt) = self.runtime.as_ref() else {
            return;
        };
        let link = self.conn();
        let tries = (lease_ms / 1000).clamp(1, 1_000);
        rt.spawn(async move {
            for _ in 0..tries {
                let mut c = link.clone();
                let mut release = RELEASE_UNANSWERED.prepare_invoke();
                release.key(&conn).key(&lease).arg(&call);
                let asked = release.invoke_async::<i64>(&mut c);
                match tokio::time::timeout(super::OP_TIMEOUT, asked).await {
                    Ok(Ok(1)) => {
                        log::info!("a refresh lease taken while Redis did not answer was let go (no refresh was made with it)");
                        return;
                    }
                    Ok(Ok(_)) => return,
                    _ => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                }
            }
        });
    }
}

#[async_trait]
impl ConnectionStore for RedisStore {
    async fn get_connection(
        &self,
        key: &ConnectionKey,
    ) -> Result<Option<ConnectionRow>, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (key, _, _) = self.conn_keys(provider, account);
        self.record("reading a connection", key)
            .await?
            .map(|f| row(&f))
            .transpose()
    }

    async fn list_connections(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        let rows = self.connection_records().await?;
        Ok(sorted(super::readable("a connection", &rows, row)))
    }

    async fn list_all_connections(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        let rows = self.connection_records().await?;
        Ok(sorted(rows.iter().map(row).collect::<Result<Vec<_>, _>>()?))
    }

    async fn accounts_signed_in_as(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (index, prefix) = (self.index("cs"), self.key("c", ""));
        let rows = self
            .indexed_records_within(
                "looking for connections of one account",
                index,
                prefix,
                Some(format!("{provider}/")),
                &["provider", "account", "status", "account_sub"],
            )
            .await?;
        // A record without its account (written by hand) is passed over, as a listing
        // passes over one that does not read.
        let mut accounts: Vec<String> = rows
            .iter()
            .filter(|f| {
                text(f, "status").as_deref() == Some(ConnectionStatus::Active.as_str())
                    && text(f, "provider").as_deref() == Some(provider)
                    && text(f, "account_sub").as_deref() == Some(sub)
            })
            .filter_map(|f| text(f, "account"))
            .collect();
        accounts.sort();
        Ok(accounts)
    }

    async fn count_connections(&self) -> Result<Vec<ConnectionCount>, StoreError> {
        const CONTEXT: &str = "counting connections";
        let (index, prefix) = (self.index("cs"), self.key("c", ""));
        let rows = self
            .indexed_records(CONTEXT, index, prefix, &["provider", "status", "failures"])
            .await?;
        let rows = rows
            .iter()
            .map(|f| {
                let status = ConnectionStatus::parse(&need_text(CONTEXT, f, "status")?)
                    .map_err(|e| StoreError::unavailable(CONTEXT, e))?;
                let failing = int(f, "failures").unwrap_or(0) > 0;
                Ok((need_text(CONTEXT, f, "provider")?, status, failing))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(ConnectionCount::tally(rows.into_iter()))
    }

    async fn save_connection(
        &self,
        save: ConnectionSave,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<Option<ConnectionRow>, StoreError> {
        let (keys, changes) = self.connection_save(save, now_ms);
        let mut inv = SAVE.prepare_invoke();
        inv.key(keys.conn).key(keys.lease).key(keys.index);
        inv.arg(keys.member).arg(now_ms);
        self.enqueue_args(&mut inv, &events);
        changes.to_args(&mut inv);
        let mut c = self.conn();
        let flat = self
            .run("saving a connection", async move {
                inv.invoke_async::<Vec<Vec<u8>>>(&mut c).await
            })
            .await?;
        Ok(was(flat))
    }

    async fn acquire_refresh_lease(
        &self,
        key: &ConnectionKey,
        seen_generation: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (key, lease, _) = self.conn_keys(provider, account);
        let call = self.calls.next();
        let mut c = self.conn();
        let (k, l, name) = (key.clone(), lease.clone(), call.clone());
        let taken = self
            .run("taking a refresh lease", async move {
                ACQUIRE
                    .key(k)
                    .key(l)
                    .arg(now_ms)
                    .arg(lease_ms.max(1))
                    .arg(seen_generation)
                    .arg(name)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if taken.is_err() {
            self.let_go_unanswered(key, lease, call, lease_ms);
        }
        taken
    }

    async fn release_refresh_lease(
        &self,
        key: &ConnectionKey,
        generation: i64,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let nothing = (Changes::default(), Vec::new());
        self.fenced(
            "letting go of a refresh lease",
            (provider, account),
            generation,
            false,
            nothing,
        )
        .await
    }

    async fn note_lease_takeover(
        &self,
        key: &ConnectionKey,
        generation: i64,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (key, lease, _) = self.conn_keys(provider, account);
        let mut c = self.conn();
        let noted: i64 = self
            .run("noting a refresh lease to take over", async move {
                NOTE_TAKEOVER
                    .key(key)
                    .key(lease)
                    .arg(now_ms)
                    .arg(generation)
                    .arg(lease_until_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(noted == 1)
    }

    async fn extend_refresh_lease(
        &self,
        key: &ConnectionKey,
        generation: i64,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (key, lease, _) = self.conn_keys(provider, account);
        let mut c = self.conn();
        let held: i64 = self
            .run("holding a refresh lease", async move {
                EXTEND
                    .key(key)
                    .key(lease)
                    .arg(now_ms)
                    .arg(lease_ms.max(1))
                    .arg(generation)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(held == 1)
    }

    async fn save_refreshed(
        &self,
        key: &ConnectionKey,
        generation: i64,
        t: SealedTokens,
        now_ms: i64,
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let changes = token_changes(t, now_ms, (true, true), Told::NOTHING);
        self.fenced(
            "saving refreshed tokens",
            (provider, account),
            generation,
            false,
            (changes, events),
        )
        .await
    }

    async fn save_refresh_failure(
        &self,
        key: &ConnectionKey,
        generation: i64,
        f: RefreshFailure<'_>,
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let mut changes = Changes::default();
        changes
            .put("status", f.status.as_str())
            .put("last_error", f.error)
            .opt_num("retry_at", f.retry_at_ms)
            .num("updated", f.now_ms);
        if !f.told.is_nothing() {
            changes.num("failing_notified", f.told.stored());
        }
        if let Some(refresh_token) = f.refresh_token {
            changes.put("refresh_token", refresh_token);
        }
        self.fenced(
            "recording a failed refresh",
            (provider, account),
            generation,
            true,
            (changes, events),
        )
        .await
    }

    async fn delete_connection(
        &self,
        key: &ConnectionKey,
        generation: i64,
        access_token: &[u8],
        events: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (key, lease, member) = self.conn_keys(provider, account);
        let mut inv = DELETE.prepare_invoke();
        inv.key(key)
            .key(lease)
            .key(self.index("cs"))
            .arg(member)
            .arg(generation)
            .arg(access_token);
        self.enqueue_args(&mut inv, &events);
        let mut c = self.conn();
        let deleted: i64 = self
            .run("deleting a connection", async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn reseal_connection(
        &self,
        key: &ConnectionKey,
        old: (Vec<u8>, Option<Vec<u8>>),
        new: (Vec<u8>, Option<Vec<u8>>),
    ) -> Result<bool, StoreError> {
        let (provider, account) = (key.provider.as_str(), key.account.as_str());
        let (key, _, _) = self.conn_keys(provider, account);
        let flag = |r: &Option<Vec<u8>>| if r.is_some() { "1" } else { "0" };
        let (old_has, new_has) = (flag(&old.1), flag(&new.1));
        let mut c = self.conn();
        let n: i64 = self
            .run("re-sealing a connection", async move {
                RESEAL
                    .key(key)
                    .arg(old.0)
                    .arg(old.1.unwrap_or_default())
                    .arg(old_has)
                    .arg(new.0)
                    .arg(new.1.unwrap_or_default())
                    .arg(new_has)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }
}
