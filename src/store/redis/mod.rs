//! The Redis backend (cargo feature `redis`): several oauthd instances share one Redis and
//! behave as one.
//!
//! Every multi-step change is one Lua script, so Redis runs it atomically; values that
//! must expire carry a Redis TTL, so there is nothing to sweep and no `KEYS`/`SCAN` on any
//! request path. Key layout, all under the configured prefix `P` (default `oauthd:`):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P s:<hash>` | string | a live state (JSON), TTL = its lifetime |
//! | `P g:<hash>` | string | the state's namespace, TTL = lifetime + grace: answers 410 after expiry |
//! | `P k:<hash>` | hash | an API key record; `P kn` name → hash of the active key; `P ks` all (zset) |
//! | `P c:<provider>/<account>` | hash | a connection, tokens sealed as in SQLite; `P cs` the index (zset) |
//! | `P cl:<provider>/<account>` | string | the refresh lease (`SET NX PX`), value = the taking call's name (`RELEASE_UNANSWERED`), then the fencing generation once held on |
//! | `P d:<id>` | hash | a device flow; `P dp` pending ids (set); `P dl:<id>` the poll claim |
//! | `P a:<kind>:<hash>` | string | an admin login link or session, TTL = its lifetime |
//! | `P rc:<call>` | string | the answer (JSON) of a state script that wrote, TTL 15 s: read back by a call whose answer was lost (`receipt`) |
//! | `P probe` | string | written by `/readyz` (TTL 1 s): Redis that refuses writes is not ready |
//! | `P o:<id>` | hash | an event's delivery to one target; `P od:<target>` its target's pending ones by due time, `P odt` the targets with pending ones (set), `P odc:<target>` its attempts under way by the end of their claim (zset; expires a second after the last), `P ol` all by creation (zset) |
//!
//! Only SHA-256 hashes of secrets and sealed tokens are stored, as in SQLite.
//!
//! The store runs its own small Tokio runtime (one thread), like the SQLite writer thread:
//! the Redis connection's driver lives there, whatever runtime calls the store.

mod admin;
mod clock;
mod connections;
mod device;
mod keys;
mod link;
mod outbox;
mod receipt;
mod states;
mod transfer;

use super::target::RedisTarget;
use super::StoreError;
use crate::secret::SecretHash;
use link::{Link, CONNECT_TIMEOUT, OP_TIMEOUT};
use redis::aio::ConnectionManager;
use redis::RedisResult;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

pub struct RedisStore {
    runtime: Option<tokio::runtime::Runtime>,
    conn: Link,
    prefix: String,
    /// How long an expired state still answers 410 rather than 404.
    grace_ms: i64,
    display: String,
    /// Redis' clock, for the deadlines of state scripts.
    clock: std::sync::Arc<clock::RedisClock>,
    /// Names each state script's call, for its receipt (`receipt`).
    calls: CallNames,
}

/// A name for each call of this process: random per process, then a count.
struct CallNames {
    process: String,
    count: std::sync::atomic::AtomicU64,
}

impl CallNames {
    fn new() -> Result<CallNames, getrandom::Error> {
        let process: [u8; 12] = crate::secret::random_bytes()?;
        Ok(CallNames {
            process: process.iter().map(|b| format!("{b:02x}")).collect(),
            count: Default::default(),
        })
    }

    fn next(&self) -> String {
        let n = self
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}", self.process)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Never blocks: the store may be dropped on an async thread.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A record read with HGETALL.
type Fields = HashMap<String, Vec<u8>>;

/// A flat HGETALL answer (field, value, field, value…) as `Fields`.
fn flat_fields(flat: Vec<Vec<u8>>) -> Fields {
    let mut f = Fields::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        f.insert(String::from_utf8_lossy(&k).into_owned(), v);
    }
    f
}

/// `text` as a Redis glob pattern that matches only itself: `*`, `?`, `[`, `]` and `\`
/// escaped.
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The records of a listing that read, each other one skipped with a warning: a record
/// written by hand or by another version (Redis has no schema version to refuse it by)
/// must not stop oauthd's start, or every refresh, at the listing.
fn readable<T>(
    what: &str,
    records: &[Fields],
    read: impl Fn(&Fields) -> Result<T, StoreError>,
) -> Vec<T> {
    records
        .iter()
        .filter_map(|f| match read(f) {
            Ok(r) => Some(r),
            Err(e) => {
                let name = ["id", "provider", "account"]
                    .iter()
                    .filter_map(|k| f.get(*k))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                log::warn!("skipping {what} {name:?} that cannot be read: {e}");
                None
            }
        })
        .collect()
}

/// Whether the Redis at `target`, whose URL names no user, answers a client that gives no
/// password. (With a user named, its password is what is wrong, whatever the default user
/// needs.)
async fn answers_without_password(target: &RedisTarget) -> bool {
    use redis::IntoConnectionInfo;
    let Ok(info) = target.url().into_connection_info() else {
        return false;
    };
    if info.redis_settings().username().is_some() {
        return false;
    }
    let db = info.redis_settings().db();
    let info = info.set_redis_settings(redis::RedisConnectionInfo::default().set_db(db));
    let Ok(client) = redis::Client::open(info) else {
        return false;
    };
    let asked = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, asked).await,
        Ok(Ok(_))
    )
}

/// Whether Redis without TLS answers a `PING` at the target's address (1 s at most).
async fn answers_in_plain(target: &RedisTarget) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(url) = url::Url::parse(target.url()) else {
        return false;
    };
    let (Some(host), port) = (url.host_str(), url.port().unwrap_or(6379)) else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let asked = async {
        let mut conn = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        conn.write_all(b"PING\r\n").await?;
        let mut first = [0u8; 1];
        conn.read_exact(&mut first).await?;
        std::io::Result::Ok(first[0])
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), asked).await,
        Ok(Ok(b'+' | b'-'))
    )
}

/// Why opening the store at `display` failed, and whether it is the configuration's fault
/// (exit 2: starting again as it is will not help) rather than Redis not answering now.
fn open_failure(display: &str, prefix: &str, e: &redis::RedisError) -> (String, bool) {
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") {
        return (format!("Redis at {display}: {WRONG_PASSWORD}"), true);
    }
    if e.code() == Some("NOAUTH") {
        return (
            format!("Redis at {display} asks for a password and none was given: set OAUTHD_REDIS_PASSWORD (or OAUTHD_REDIS_PASSWORD_FILE), or put it in the store's URL"),
            true,
        );
    }
    if text.contains("unknown command") {
        return (
            format!("Redis at {display} does not know a command oauthd needs ({text}): a `rename-command` in its config hides it; oauthd runs reads, writes, scripts, SCAN, INFO and TIME"),
            true,
        );
    }
    // redis-rs says a refused SELECT (a database other than 0) in its own words, with the
    // server's "no permissions" inside.
    if e.code() == Some("NOPERM") || text.contains("NoPerm") || text.contains("no permissions") {
        return (
            format!("Redis at {display}: the user may not run a command oauthd needs ({text}). oauthd runs reads, writes, scripts, SCAN, INFO and TIME on its keys, and SELECT for a database other than 0: an ACL like `~{prefix}* +@read +@write +@keyspace +@scripting +info +time +select`"),
            true,
        );
    }
    if text.contains("DB index is out of range") {
        return (
            format!("Redis at {display} has no such database: the number after the port must be below the server's `databases` setting (16 unless changed)"),
            true,
        );
    }
    // Something answered, in another protocol: an HTTP server, a database.
    if e.kind() == redis::ErrorKind::Parse {
        return (
            format!("{display} answered, but not as Redis does: is that Redis's address and port, or another service's?"),
            true,
        );
    }
    // A TLS listener drops what does not start a TLS handshake.
    let hint = if display.starts_with("redis://")
        && e.is_connection_dropped()
        && !e.is_connection_refusal()
    {
        " (if that port is Redis's TLS listener, tls-port, the URL is rediss://)"
    } else {
        ""
    };
    (format!("cannot reach Redis at {display}: {e}{hint}"), false)
}

/// Why the store could not be opened.
#[derive(Debug)]
pub struct OpenFailed {
    pub message: String,
    /// The configuration's fault (a wrong password, not Redis at that address, a server
    /// too old): starting again as it is will not help.
    pub configuration: bool,
}

impl std::fmt::Display for OpenFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl RedisStore {
    /// Connects (failing fast when Redis cannot be reached) and checks the server version.
    pub fn open(target: &RedisTarget, grace: Duration) -> Result<RedisStore, OpenFailed> {
        Self::connect(target, grace).map_err(|(message, configuration)| OpenFailed {
            message,
            configuration,
        })
    }

    /// `open`'s work; an error's text, and whether it is the configuration's (waiting
    /// will not help).
    fn connect(target: &RedisTarget, grace: Duration) -> Result<RedisStore, (String, bool)> {
        let transient = |message: String| (message, false);
        let display = target.display();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("oauthd-redis")
            .enable_all()
            .build()
            .map_err(|e| transient(format!("store {display}: {e}")))?;
        let client = redis::Client::open(target.url())
            .map_err(|e| (format!("store {display}: {e}"), true))?;
        let conn = runtime
            .block_on(async {
                tokio::time::timeout(
                    OP_TIMEOUT,
                    ConnectionManager::new_with_config(client.clone(), link::config()),
                )
                .await
            })
            .map_err(|_| {
                // TLS asked of a port that speaks plain Redis ends in silence, not in an
                // error that says so: told only where plain Redis answers there.
                let hint = if target.url().starts_with("rediss://")
                    && runtime.block_on(answers_in_plain(target))
                {
                    " (a rediss:// URL speaks TLS, and what answers at that port is Redis without it: give the URL as redis://, or the port of its TLS listener, tls-port)"
                } else {
                    ""
                };
                transient(format!("cannot reach Redis at {display}: no answer{hint}"))
            })?
            .map_err(|e| {
                // Redis refuses a password when it has none, and the client library keeps
                // its words to itself: asked again without one.
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    && runtime.block_on(answers_without_password(target))
                {
                    return (
                        format!("Redis at {display} has no password, and oauthd was given one: unset OAUTHD_REDIS_PASSWORD (and OAUTHD_REDIS_PASSWORD_FILE) and take it out of the store's URL, or give Redis a password (requirepass)"),
                        true,
                    );
                }
                open_failure(&display, &target.prefix, &e)
            })?;
        let calls = CallNames::new().map_err(|e| transient(format!("store {display}: {e}")))?;
        let store = RedisStore {
            runtime: Some(runtime),
            conn: Link::new(client, conn),
            prefix: target.prefix.clone(),
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            display,
            clock: Default::default(),
            calls,
        };
        let info = store
            .block_on_info_raw("server")
            .map_err(|e| open_failure(&store.display, &store.prefix, &e))?;
        let version = info_field(&info, "redis_version").unwrap_or_default();
        if !version_at_least(&version, (6, 2)) {
            return Err((
                format!(
                    "Redis at {} is version {version}; oauthd needs 6.2 or newer (GETDEL, SET … GET)",
                    store.display
                ),
                true,
            ));
        }
        // The commands an ACL may leave out, each run once now: a user without one stops
        // the start, said as a configuration error, not the first time it is needed.
        let mut eval = redis::cmd("EVAL");
        eval.arg("return 1").arg(0);
        let mut scan = redis::cmd("SCAN");
        scan.arg(0)
            .arg("MATCH")
            .arg(format!("{}*", store.prefix))
            .arg("COUNT")
            .arg(1);
        let mut exists = redis::cmd("EXISTS");
        exists.arg(format!("{}probe", store.prefix));
        for probe in [redis::cmd("TIME"), eval, scan, exists] {
            store
                .block_on_query::<redis::Value>(probe)
                .map_err(|e| open_failure(&store.display, &store.prefix, &e))?;
        }
        Ok(store)
    }

    /// `INFO section`, with Redis' own error.
    fn block_on_info_raw(&self, section: &'static str) -> Result<String, redis::RedisError> {
        let mut info = redis::cmd("INFO");
        info.arg(section);
        self.block_on_query(info)
    }

    /// Runs `cmd` on the store's runtime, with Redis' own error.
    fn block_on_query<T: redis::FromRedisValue + Send + 'static>(
        &self,
        cmd: redis::Cmd,
    ) -> Result<T, redis::RedisError> {
        let Some(rt) = self.runtime.as_ref() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "store closed",
            )));
        };
        let mut c = self.conn();
        rt.block_on(async move { cmd.query_async::<T>(&mut c).await })
    }

    /// Runs one Redis exchange on the store's runtime, bounded by `OP_TIMEOUT`.
    async fn run<T, F>(&self, context: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = RedisResult<T>> + Send + 'static,
    {
        self.run_within(context, OP_TIMEOUT, f).await
    }

    /// Runs `f` on the store's runtime, bounded by `limit`.
    async fn run_within<T, F>(
        &self,
        context: &'static str,
        limit: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let rt = self
            .runtime
            .as_ref()
            .ok_or_else(|| StoreError::unavailable(context, "store closed"))?;
        match rt.spawn(tokio::time::timeout(limit, f)).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => {
                self.conn.after(&e, rt);
                Err(classify(context, &e))
            }
            Ok(Err(_)) => Err(no_answer(context)),
            Err(e) => Err(StoreError::unavailable(context, e)),
        }
    }

    /// One record (HGETALL), or `None` when the key does not exist.
    async fn record(
        &self,
        context: &'static str,
        key: String,
    ) -> Result<Option<Fields>, StoreError> {
        let mut c = self.conn();
        let f: Fields = self
            .run(context, async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok((!f.is_empty()).then_some(f))
    }

    /// Every record named in the sorted set `index` (members are key suffixes after
    /// `prefix`), in one pipeline; records that vanished meanwhile are skipped. With
    /// `only` not empty, just those fields of each record (`HMGET`), so that a count does
    /// not read what it does not need (a connection's tokens).
    async fn indexed_records(
        &self,
        context: &'static str,
        index: String,
        prefix: String,
        only: &'static [&'static str],
    ) -> Result<Vec<Fields>, StoreError> {
        self.indexed_records_within(context, index, prefix, None, only)
            .await
    }

    /// `indexed_records` of the members that start with `within` (all when `None`): the
    /// index's scores are all 0, so its members sort by their bytes and `ZRANGEBYLEX`
    /// reads just that run of them.
    async fn indexed_records_within(
        &self,
        context: &'static str,
        index: String,
        prefix: String,
        within: Option<String>,
        only: &'static [&'static str],
    ) -> Result<Vec<Fields>, StoreError> {
        let mut c = self.conn();
        let rows: Vec<Fields> = self
            .run(context, async move {
                let members: Vec<String> = match &within {
                    // 0xff is in no UTF-8 text: every member starting with `start` sorts
                    // before `start` followed by it.
                    Some(start) => {
                        let mut end = b"(".to_vec();
                        end.extend_from_slice(start.as_bytes());
                        end.push(0xff);
                        redis::cmd("ZRANGEBYLEX")
                            .arg(&index)
                            .arg(format!("[{start}"))
                            .arg(end)
                            .query_async(&mut c)
                            .await?
                    }
                    None => {
                        redis::cmd("ZRANGE")
                            .arg(&index)
                            .arg(0)
                            .arg(-1)
                            .query_async(&mut c)
                            .await?
                    }
                };
                if members.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                if only.is_empty() {
                    for m in &members {
                        pipe.cmd("HGETALL").arg(format!("{prefix}{m}"));
                    }
                    return pipe.query_async(&mut c).await;
                }
                for m in &members {
                    pipe.cmd("HMGET").arg(format!("{prefix}{m}")).arg(only);
                }
                let values: Vec<Vec<Option<Vec<u8>>>> = pipe.query_async(&mut c).await?;
                Ok(values
                    .into_iter()
                    .map(|v| {
                        only.iter()
                            .zip(v)
                            .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
                            .collect()
                    })
                    .collect())
            })
            .await?;
        Ok(rows.into_iter().filter(|f| !f.is_empty()).collect())
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.get()
    }

    /// Every key that starts with `prefix`, by SCAN: for the CLI and the start, never a
    /// request's hot path. Each round trip has its own time limit, not the whole walk: a
    /// Redis shared with other deployments may hold millions of keys, a few seconds' walk.
    /// The prefix (`redis_prefix` may hold `*`, `?`, `[`) is matched as it is written.
    async fn scan_keys(
        &self,
        context: &'static str,
        prefix: String,
    ) -> Result<Vec<String>, StoreError> {
        let pattern = glob_literal(&prefix) + "*";
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let mut c = self.conn();
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .run(context, async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            out.extend(keys.into_iter().filter(|k| k.starts_with(&prefix)));
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// The values of `keys` (`None` where a key is gone), fetched 1,000 at a time.
    async fn mget(
        &self,
        context: &'static str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(1000) {
            let batch = batch.to_vec();
            let mut c = self.conn();
            let found: Vec<Option<Vec<u8>>> = self
                .run(context, async move {
                    redis::cmd("MGET").arg(&batch).query_async(&mut c).await
                })
                .await?;
            out.extend(found);
        }
        Ok(out)
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn index(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[async_trait::async_trait]
impl super::Store for RedisStore {
    fn describe(&self) -> String {
        format!("Redis {} (key prefix {:?})", self.display, self.prefix)
    }

    async fn warnings(&self) -> Result<Vec<String>, StoreError> {
        let mut c = self.conn();
        let (persistence, memory) = self
            .run("reading Redis INFO", async move {
                // One section per INFO: Redis 6.2 takes no more.
                redis::pipe()
                    .cmd("INFO")
                    .arg("persistence")
                    .cmd("INFO")
                    .arg("memory")
                    .query_async::<(String, String)>(&mut c)
                    .await
            })
            .await?;
        // CONFIG may be renamed or refused to this user (managed Redis): then nothing is
        // known of the sync policy and nothing is said.
        let mut c = self.conn();
        let fsync = self
            .run("reading Redis CONFIG", async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("appendfsync")
                    .query_async::<Vec<String>>(&mut c)
                    .await
            })
            .await
            .ok()
            .and_then(|pair| pair.get(1).cloned());
        Ok(persistence_warning(&persistence, fsync.as_deref())
            .into_iter()
            .chain(eviction_warning(&memory))
            .collect())
    }

    async fn clock_ms(&self) -> Result<Option<i64>, StoreError> {
        let mut c = self.conn();
        let (secs, micros): (i64, i64) = self
            .run("reading Redis' clock", async move {
                redis::cmd("TIME").query_async(&mut c).await
            })
            .await?;
        Ok(Some(
            secs.saturating_mul(1000).saturating_add(micros / 1000),
        ))
    }

    // One hash, field per instance: `<until_ms> <since_ms> <key id>...`; notes past their
    // time are dropped in the same script. Instances on other machines share it, so the
    // times are Redis's own (`TIME`), not each host's: one whose clock runs a minute ahead
    // would otherwise take every other's note for ended.
    // Kept as `<prefix>store_id`, with no expiry (`SET NX`, then read).
    async fn store_id(&self, candidate: &str) -> Result<String, StoreError> {
        let key = self.index("store_id");
        let candidate = candidate.to_owned();
        let mut c = self.conn();
        self.run("reading the store's id", async move {
            let held: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut c).await?;
            match held {
                Some(id) => Ok(id),
                None => {
                    let (id,): (String,) = redis::pipe()
                        .cmd("SET")
                        .arg(&key)
                        .arg(&candidate)
                        .arg("NX")
                        .ignore()
                        .cmd("GET")
                        .arg(&key)
                        .query_async(&mut c)
                        .await?;
                    Ok(id)
                }
            }
        })
        .await
    }

    async fn note_vault_keys(
        &self,
        note: super::VaultKeysNote,
        _now_ms: i64,
    ) -> Result<i64, StoreError> {
        let hash = self.index("vault");
        let mut c = self.conn();
        self.run("telling which vault keys this oauthd uses", async move {
            NOTE_VAULT_KEYS
                .key(hash)
                .arg(&note.instance)
                .arg(u64::try_from(note.holds.as_millis()).unwrap_or(u64::MAX))
                .arg(note.since_ms.unwrap_or(0))
                .arg(note.words())
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
    }

    async fn vault_keys_in_use(
        &self,
        _now_ms: i64,
    ) -> Result<Vec<super::VaultKeysInUse>, StoreError> {
        let hash = self.index("vault");
        let mut c = self.conn();
        let ((secs, micros), told): ((i64, i64), HashMap<String, String>) = self
            .run("reading which vault keys other oauthds use", async move {
                redis::pipe()
                    .cmd("TIME")
                    .cmd("HGETALL")
                    .arg(hash)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let now_ms = secs.saturating_mul(1000).saturating_add(micros / 1000);
        Ok(told
            .into_iter()
            .filter_map(|(instance, text)| super::VaultKeysInUse::from_text(&instance, &text))
            .filter(|t| t.until_ms >= now_ms)
            .collect())
    }

    async fn forget_vault_keys(&self, instance: &str) -> Result<(), StoreError> {
        let hash = self.index("vault");
        let instance = instance.to_owned();
        let mut c = self.conn();
        self.run("forgetting which vault keys this oauthd used", async move {
            redis::cmd("HDEL")
                .arg(hash)
                .arg(instance)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn integrity(&self) -> Result<String, String> {
        let mut c = self.conn();
        let info = self
            .run("reading Redis INFO", async move {
                redis::cmd("INFO").query_async::<String>(&mut c).await
            })
            .await
            .map_err(|e| e.to_string())?;
        let version = info_field(&info, "redis_version").unwrap_or_default();
        Ok(format!("Redis {} answers, version {version}", self.display))
    }
}

/// Records an instance's vault keys (`ARGV[4]`, space-separated) under its name
/// (`ARGV[1]`) in the hash `KEYS[1]`, holding for `ARGV[2]` ms from Redis's `TIME`, since
/// `ARGV[3]` (0: since now, or just after the latest other note that holds when that is
/// later, as `first_told` has it; a note whose stamp is no number, or one past what Lua's
/// numbers hold exactly, is passed over for that, and kept while it holds), and drops the notes that ended before now, in one step: none
/// renewed meanwhile is lost. Returns the since it recorded.
static NOTE_VAULT_KEYS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = tonumber(ARGV[3])
local first = since == nil or since <= 0
if first then since = now end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local untl = tonumber(string.match(all[i + 1], '^(%d+) '))
  local theirs = tonumber(string.match(all[i + 1], '^%d+ (%d+)'))
  if untl == nil or untl < now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif first and all[i] ~= ARGV[1] and theirs ~= nil and theirs >= since
    and theirs < 9007199254740991 then
    since = theirs + 1
  end
end
redis.call('HSET', KEYS[1], ARGV[1],
  string.format('%d %d %s', now + tonumber(ARGV[2]), since, ARGV[4]))
return since
",
    )
});

/// Tokens live in Redis: without the append-only file a Redis restart loses up to the
/// last snapshot interval (or everything, with no snapshots either). With it, Redis syncs
/// the file once a second unless told otherwise: its process may crash without loss (what
/// it answered is written), its machine may not.
fn persistence_warning(info: &str, appendfsync: Option<&str>) -> Option<String> {
    if info_field(info, "aof_enabled").as_deref() != Some("1") {
        return Some(
            "Redis runs without the append-only file (appendonly no): a Redis restart can lose \
             everything oauthd keeps there since the last snapshot, or all of it without \
             snapshots: API keys (every app is then refused with 401 until its key is made again), \
             connected accounts, states and flows in progress. Enable it with `CONFIG SET \
             appendonly yes` and `appendonly yes` in redis.conf"
                .to_owned(),
        );
    }
    match appendfsync {
        Some(policy) if !policy.eq_ignore_ascii_case("always") => Some(format!(
            "Redis syncs its append-only file {} (appendfsync {policy}): a power loss or a crash \
             of its machine can lose what oauthd was told was stored (a refresh token a provider \
             has just rotated, a state consumed a moment before, which can then be consumed \
             again). `appendfsync always` in redis.conf syncs before Redis answers, as oauthd's \
             SQLite store does",
            if policy.eq_ignore_ascii_case("no") {
                "only when the system flushes it"
            } else {
                "once a second"
            }
        )),
        _ => None,
    }
}

/// A Redis that evicts keys at `maxmemory` takes oauthd's at random: keys with a TTL first
/// (a state's id index, a namespace's count, a refresh lease), under `allkeys-*` API keys
/// and connections too. Only `noeviction` refuses the write instead (a 503 oauthd
/// answers and recovers from).
fn eviction_warning(info: &str) -> Option<String> {
    let policy = info_field(info, "maxmemory_policy")?;
    // Without a limit (`maxmemory 0`) nothing is evicted, whatever the policy says.
    let limited = info_field(info, "maxmemory").is_some_and(|m| m != "0");
    if policy == "noeviction" || !limited {
        return None;
    }
    Some(format!(
        "Redis evicts keys when it reaches maxmemory (maxmemory-policy {policy}): it would drop \
         oauthd's keys, so caps stop counting, revoked sessions stay valid, two instances can \
         refresh the same token at once and, under allkeys-*, API keys and connected accounts \
         disappear. Set `maxmemory-policy noeviction` (oauthd then answers 503 at maxmemory \
         and recovers), or give oauthd a Redis of its own"
    ))
}

/// Whether `INFO memory` says Redis refuses writes at `maxmemory` (`noeviction`) and is
/// within 1 % of it (at least 128 KiB, at most 4 MiB): where a small write lands and a
/// larger one does not (and `used_memory` moves by tens of KiB with the clients' buffers
/// alone). Counted as Redis counts it: without what it leaves out of `maxmemory`
/// (`mem_not_counted_for_evict`: replicas' and the AOF's buffers).
fn near_maxmemory(info: &str) -> bool {
    let number = |name| info_field(info, name).and_then(|v| v.parse::<u64>().ok());
    let (Some(used), Some(max)) = (number("used_memory"), number("maxmemory")) else {
        return false;
    };
    let counted = used.saturating_sub(number("mem_not_counted_for_evict").unwrap_or(0));
    let margin = (max / 100).clamp(128 * 1024, 4 * 1024 * 1024);
    let refuses = info_field(info, "maxmemory_policy").is_some_and(|p| p == "noeviction");
    refuses && max > 0 && counted.saturating_add(margin) > max
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    })
}

fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

const WRONG_PASSWORD: &str = "refused the password (or user): check OAUTHD_REDIS_PASSWORD \
     (OAUTHD_REDIS_PASSWORD_FILE) or the store's URL";

/// A call Redis did not answer within `OP_TIMEOUT`.
fn no_answer(context: &'static str) -> StoreError {
    classify(context, &timed_out())
}

/// What a call Redis did not answer within `OP_TIMEOUT` failed with.
fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} s", OP_TIMEOUT.as_secs()),
    ))
}

/// Maps a Redis error to the storage error the HTTP layer turns into a 503.
fn classify(context: &'static str, e: &redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        return StoreError::Unreachable {
            context,
            why: e.to_string(),
        };
    }
    match e.code() {
        Some("OOM") => StoreError::OutOfMemory { context },
        Some("LATE") => StoreError::unavailable(
            context,
            "Redis ran the request only past its deadline (it was stalled or busy), and changed nothing",
        ),
        Some("EARLY") => StoreError::unavailable(
            context,
            "Redis' clock went back while oauthd read it, twice in a row; nothing was changed",
        ),
        Some("READONLY") => StoreError::ReadOnly { context },
        Some("MISCONF") => StoreError::NotSaving { context },
        Some("NOAUTH") => StoreError::PasswordRefused {
            context,
            why: "Redis asks for a password and none was given: set OAUTHD_REDIS_PASSWORD (or \
                  OAUTHD_REDIS_PASSWORD_FILE) where oauthd runs (the daemon's environment, and \
                  each command's), or put it in the store's URL"
                .into(),
        },
        _ if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") => {
            StoreError::PasswordRefused {
                context,
                why: format!("Redis {WRONG_PASSWORD}"),
            }
        }
        _ => StoreError::unavailable(context, e),
    }
}

pub(super) fn hex(hash: &SecretHash) -> String {
    hash.to_hex()
}

fn corrupt(context: &'static str, field: &str) -> StoreError {
    StoreError::unavailable(
        context,
        format!("malformed record in Redis (field {field})"),
    )
}

fn text(f: &Fields, name: &str) -> Option<String> {
    f.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn int(f: &Fields, name: &str) -> Option<i64> {
    f.get(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}

fn need_text(context: &'static str, f: &Fields, name: &str) -> Result<String, StoreError> {
    text(f, name).ok_or_else(|| corrupt(context, name))
}

fn need_int(context: &'static str, f: &Fields, name: &str) -> Result<i64, StoreError> {
    int(f, name).ok_or_else(|| corrupt(context, name))
}

/// Field/value pairs to HSET and field names to HDEL, built from optional values.
#[derive(Default)]
struct Changes {
    set: Vec<(&'static str, Vec<u8>)>,
    del: Vec<&'static str>,
}

impl Changes {
    fn put(&mut self, field: &'static str, value: impl Into<Vec<u8>>) -> &mut Self {
        self.set.push((field, value.into()));
        self
    }

    fn num(&mut self, field: &'static str, value: i64) -> &mut Self {
        self.put(field, value.to_string())
    }

    fn opt(&mut self, field: &'static str, value: Option<impl Into<Vec<u8>>>) -> &mut Self {
        match value {
            Some(v) => self.put(field, v),
            None => {
                self.del.push(field);
                self
            }
        }
    }

    fn opt_num(&mut self, field: &'static str, value: Option<i64>) -> &mut Self {
        self.opt(field, value.map(|v| v.to_string()))
    }

    /// Appends `nset, f1, v1, …, fn, vn, ndel, del1, del2, …` for the scripts' `apply`
    /// helper.
    fn to_args(&self, inv: &mut redis::ScriptInvocation<'_>) {
        inv.arg(self.set.len());
        for (f, v) in &self.set {
            inv.arg(*f).arg(v.as_slice());
        }
        inv.arg(self.del.len());
        for f in &self.del {
            inv.arg(*f);
        }
    }
}

/// Lua: applies the `Changes` arguments starting at ARGV[first] to hash `key`; returns the
/// ARGV index after them.
const APPLY_LUA: &str = r#"
local function apply(key, first)
  local n = tonumber(ARGV[first])
  local i = first + 1
  for _ = 1, n do
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  local d = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, d do
    redis.call('HDEL', key, ARGV[i])
    i = i + 1
  end
  return i
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_not_answered_says_how_long_it_waited() {
        assert_eq!(
            no_answer("consuming a state").to_string(),
            "consuming a state: Redis is unreachable (no answer within 3 s)"
        );
    }

    #[test]
    fn near_maxmemory_is_a_few_kib_short_of_it_with_noeviction() {
        let info = |used: u64, max: u64, policy: &str| {
            format!("# Memory\r\nused_memory:{used}\r\nused_memory_human:1M\r\nmaxmemory:{max}\r\nmaxmemory_human:1M\r\nmaxmemory_policy:{policy}\r\n")
        };
        assert!(near_maxmemory(&info(1_336_432, 1_366_352, "noeviction")));
        assert!(!near_maxmemory(&info(1_000_000, 2_000_000, "noeviction")));
        assert!(!near_maxmemory(&info(1_336_432, 1_366_352, "allkeys-lru")));
        assert!(!near_maxmemory(&info(1_336_432, 0, "noeviction")));
        // What Redis leaves out (a replica's buffers) is left out here too.
        let buffered =
            info(2_000_000, 1_600_000, "noeviction") + "mem_not_counted_for_evict:1280000\r\n";
        assert!(!near_maxmemory(&buffered));
        // A large Redis is near at 4 MiB short, not 1 % (hundreds of MB).
        let gib = 1024 * 1024 * 1024;
        assert!(!near_maxmemory(&info(60 * gib, 64 * gib, "noeviction")));
        assert!(near_maxmemory(&info(
            64 * gib - 1024 * 1024,
            64 * gib,
            "noeviction"
        )));
    }

    #[test]
    fn reads_info_fields_and_versions() {
        let info = "# Server\r\nredis_version:7.0.15\r\naof_enabled:0\r\n";
        assert_eq!(info_field(info, "redis_version").as_deref(), Some("7.0.15"));
        assert!(version_at_least("7.0.15", (6, 2)));
        assert!(version_at_least("6.2.0", (6, 2)));
        assert!(!version_at_least("6.0.16", (6, 2)));
        assert!(persistence_warning(info, Some("always")).is_some());
        assert!(persistence_warning("aof_enabled:1\r\n", Some("always")).is_none());
        assert!(persistence_warning("aof_enabled:1\r\n", None).is_none());
        let everysec = persistence_warning("aof_enabled:1\r\n", Some("everysec")).unwrap();
        assert!(everysec.contains("once a second"), "{everysec}");
        assert!(everysec.contains("appendfsync always"), "{everysec}");
        let never = persistence_warning("aof_enabled:1\r\n", Some("no")).unwrap();
        assert!(never.contains("when the system flushes"), "{never}");
        assert!(eviction_warning("maxmemory:100\r\nmaxmemory_policy:noeviction\r\n").is_none());
        assert!(eviction_warning("used_memory:1\r\n").is_none());
        assert!(eviction_warning("maxmemory:0\r\nmaxmemory_policy:allkeys-lru\r\n").is_none());
        let lru = eviction_warning(
            "# Memory\r\nmaxmemory:1073741824\r\nmaxmemory_policy:volatile-lru\r\n",
        )
        .unwrap();
        assert!(lru.contains("maxmemory-policy volatile-lru"), "{lru}");
        assert!(lru.contains("noeviction"), "{lru}");
    }
}
