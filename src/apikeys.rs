//! API keys: how apps authenticate to oauthd.
//!
//! A key is shown once at creation and stored only as SHA-256: the key is 256 random
//! bits, so a fast hash is enough (no password hashing needed). A key may be limited to
//! namespace patterns.

use crate::clock::Clock;
use crate::namespace::{
    check_pattern, key_pattern_reaches, stops_short_of, Namespace, CONNECT_PREFIX,
    PROVIDER_SCOPE_PREFIX,
};
use crate::oauth::provider::check_name as check_account_name;
use crate::secret::{ApiKey, SecretHash};
use crate::store::{ApiKeyRecord, KeyStore, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const MAX_KEY_NAME_CHARS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a key name is 1 to {MAX_KEY_NAME_CHARS} letters, digits, '.', '_' or '-', not starting with '-' (a command naming it would take it for an option)")]
    BadName,
    #[error("namespace pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("account pattern {pattern:?}: {reason}")]
    BadAccountPattern { pattern: String, reason: String },
    #[error("the system random number generator failed")]
    Entropy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyError {
    /// The name or a pattern given is not valid (and never will be).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            KeyError::BadName | KeyError::BadPattern { .. } | KeyError::BadAccountPattern { .. }
        )
    }
}

fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_KEY_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('-');
    ok.then_some(()).ok_or(KeyError::BadName)
}

/// What a pattern with `*` elsewhere than at its end is told.
const STAR_LAST: &str =
    "`*` may only end a pattern (`*`, or a prefix and `*`: `oauth:*`, `acme-*`), as one `*`";

/// Whether `pattern` holds a `*` before its last character.
fn star_inside(pattern: &str) -> bool {
    pattern.strip_suffix('*').unwrap_or(pattern).contains('*')
}

/// Checks an account pattern: `*`, `prefix*`, or an account name.
fn check_account_pattern(pattern: &str) -> Result<(), KeyError> {
    let bad = |reason: String| KeyError::BadAccountPattern {
        pattern: pattern.to_owned(),
        reason,
    };
    if star_inside(pattern) {
        return Err(bad(STAR_LAST.to_owned()));
    }
    match pattern.strip_suffix('*') {
        Some("") => Ok(()),
        // A prefix is the start of an account name: the same characters.
        Some(prefix) => check_account_name("account prefix", prefix).map_err(bad),
        None => check_account_name("account", pattern).map_err(bad),
    }
}

/// What a key may reach: namespace patterns and connection account patterns (empty: all).
#[derive(Debug, Default, Clone)]
pub struct KeyScope {
    pub namespaces: Vec<String>,
    pub accounts: Vec<String>,
}

/// Creates a key and returns it with its record; the key itself is never stored.
pub async fn create(
    store: &dyn KeyStore,
    name: &str,
    scope: KeyScope,
    now_ms: i64,
) -> Result<(ApiKey, ApiKeyRecord), KeyError> {
    check_name(name)?;
    let KeyScope {
        mut namespaces,
        mut accounts,
    } = scope;
    // A pattern given twice is one limit, kept and shown once.
    for patterns in [&mut namespaces, &mut accounts] {
        let mut seen = std::collections::HashSet::new();
        patterns.retain(|p| seen.insert(p.clone()));
    }
    for pattern in &namespaces {
        if star_inside(pattern) {
            return Err(KeyError::BadPattern {
                pattern: pattern.clone(),
                reason: STAR_LAST.to_owned(),
            });
        }
        check_pattern(pattern).map_err(|e| KeyError::BadPattern {
            pattern: pattern.clone(),
            reason: e.to_string(),
        })?;
        // `provider:` alone names the provider "", which no provider is.
        if pattern == PROVIDER_SCOPE_PREFIX {
            return Err(KeyError::BadPattern {
                pattern: pattern.clone(),
                reason: format!(
                    "it names no provider: '{PROVIDER_SCOPE_PREFIX}P' for provider P, or '{PROVIDER_SCOPE_PREFIX}*' for every one"
                ),
            });
        }
        // It would reach nothing: every use of the key would be refused.
        if pattern.starts_with(CONNECT_PREFIX) {
            return Err(KeyError::BadPattern {
                pattern: pattern.clone(),
                reason: format!(
                    "namespaces under {CONNECT_PREFIX} are oauthd's own sign-in flows, which no API key uses; a key reaches provider P (its tokens and connect flows) through '*', '{PROVIDER_SCOPE_PREFIX}*' or '{PROVIDER_SCOPE_PREFIX}P'"
                ),
            });
        }
    }
    for pattern in &accounts {
        check_account_pattern(pattern)?;
    }
    let key = ApiKey::generate().map_err(|_| KeyError::Entropy)?;
    let record = ApiKeyRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        namespaces: (!namespaces.is_empty()).then_some(namespaces),
        accounts: (!accounts.is_empty()).then_some(accounts),
        created_at_ms: now_ms,
        revoked_at_ms: None,
        last_used_at_ms: None,
    };
    store.insert_key(record.clone(), key.hash()).await?;
    Ok((key, record))
}

/// Verified keys kept in memory, so a request costs no database read.
///
/// An entry is trusted for `max_age`, then checked against the database again: a key
/// revoked from the CLI (another process) stops working within `max_age`. With
/// `max_age` zero every request reads the database. Only keys found active are cached,
/// so a key created a moment ago works at once. Measured: the per-request lookup halved
/// the state API's throughput (bench/README.md).
pub struct KeyCache {
    max_age: Duration,
    entries: Mutex<HashMap<SecretHash, (Arc<ApiKeyRecord>, Instant)>>,
    /// When an active key was last seen (`since_born`): the store holds one, and is not asked again
    /// (see `store_has_no_keys`) until `KEYLESS_RECHECK` later.
    keys_seen: AtomicU64,
    /// What `keys_seen` counts from: milliseconds after this, plus one (0: never).
    born: Instant,
    /// What a key's recorded last use is stamped with.
    clock: Clock,
}

/// How often a key's last use is recorded, at most (per key and process): `keys list`
/// says when a key was last used to within this, and a busy key costs one write a minute.
pub const USE_RECORDED_EVERY_MS: i64 = 60_000;

/// How long an active key once seen vouches that the store holds keys: a store that lost
/// them (a Redis without persistence, restarted) is told apart within this long, and a
/// flood of wrong keys lists the keys at most once in it.
const KEYLESS_RECHECK: Duration = Duration::from_secs(10);

/// More entries than this means something is off; start over rather than grow.
const MAX_CACHED_KEYS: usize = 10_000;

impl KeyCache {
    pub fn new(max_age: Duration, clock: Clock) -> Self {
        KeyCache {
            max_age,
            entries: Mutex::new(HashMap::new()),
            keys_seen: AtomicU64::new(0),
            born: Instant::now(),
            clock,
        }
    }

    /// Whether the store holds no active key at all: a key refused there was most likely
    /// made for another database (a relative or mistyped `--db` starts a new, empty one).
    /// Read from the store only when no active key was seen in the last
    /// `KEYLESS_RECHECK`.
    pub async fn store_has_no_keys(&self, store: &dyn KeyStore) -> bool {
        let seen = self.keys_seen.load(Ordering::Relaxed);
        let seen_lately =
            seen > 0 && self.since_born() < seen.saturating_add(KEYLESS_RECHECK.as_millis() as u64);
        if seen_lately {
            return false;
        }
        match store.list_keys().await {
            Ok(keys) if keys.iter().all(|k| k.revoked_at_ms.is_some()) => true,
            Ok(_) => {
                self.saw_a_key();
                false
            }
            Err(_) => false,
        }
    }

    fn saw_a_key(&self) {
        self.keys_seen.store(self.since_born(), Ordering::Relaxed);
    }

    /// Milliseconds since this cache was made, plus one (so that 0 means never).
    fn since_born(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// The key's record when it was verified recently, without touching the database.
    pub fn cached(&self, presented: &str) -> Option<Arc<ApiKeyRecord>> {
        self.fresh(&SecretHash::of(presented))
    }

    fn fresh(&self, hash: &SecretHash) -> Option<Arc<ApiKeyRecord>> {
        let entries = self.entries.lock().ok()?;
        let (record, checked) = entries.get(hash)?;
        (checked.elapsed() < self.max_age).then(|| record.clone())
    }

    /// Keeps what a read that began at `began` found. The answer counts from when the read
    /// began, not from when it came back: a key revoked while the read was on its way is
    /// refused within `max_age` of its revocation however slow the store was, and an older
    /// read that comes back last cannot make a newer answer last longer.
    fn remember(&self, hash: SecretHash, record: Option<&Arc<ApiKeyRecord>>, began: Instant) {
        if self.max_age.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            match record {
                Some(r) => {
                    if entries.get(&hash).is_some_and(|(_, at)| *at > began) {
                        return;
                    }
                    if entries.len() >= MAX_CACHED_KEYS {
                        entries.clear();
                    }
                    entries.insert(hash, (r.clone(), began));
                }
                None => {
                    entries.remove(&hash);
                }
            }
        }
    }

    /// Looks the presented key up in the database (callers try `cached` first) and
    /// remembers the answer: an active key is cached, a missing or revoked one forgotten.
    /// An active key's use is recorded in the store when the last one recorded is a
    /// minute old or more: in a task of its own, so the request does not wait for it
    /// (every key in use comes here at least once per `max_age`).
    pub async fn authenticate(
        &self,
        store: &Arc<dyn KeyStore>,
        presented: &str,
    ) -> Result<Presented, StoreError> {
        // Every key oauthd issues has the prefix: anything else is refused without a lookup.
        if !presented.starts_with(crate::secret::API_KEY_PREFIX) {
            return Ok(Presented::Unknown);
        }
        let hash = SecretHash::of(presented);
        let began = Instant::now();
        let found = match store.find_key(hash).await? {
            Some(r) if r.revoked_at_ms.is_some() => Presented::Revoked { name: r.name },
            Some(r) => Presented::Active(Arc::new(r)),
            None => Presented::Unknown,
        };
        let active = match &found {
            Presented::Active(r) => {
                self.saw_a_key();
                self.note_use(store, r, hash);
                Some(r)
            }
            _ => None,
        };
        self.remember(hash, active, began);
        Ok(found)
    }

    fn note_use(&self, store: &Arc<dyn KeyStore>, record: &ApiKeyRecord, hash: SecretHash) {
        let now = self.clock.now_ms();
        if record
            .last_used_at_ms
            .is_some_and(|at| now.saturating_sub(at) < USE_RECORDED_EVERY_MS)
        {
            return;
        }
        let store = store.clone();
        tokio::spawn(async move {
            // A store that cannot write now is tried again at the key's next miss.
            if let Err(e) = store.note_key_used(hash, now).await {
                log::debug!("recording an API key's use: {e}");
            }
        });
    }
}

/// What a key presented turned out to be.
pub enum Presented {
    Active(Arc<ApiKeyRecord>),
    /// A key revoked since: refused as an unknown one is, and named in the log (an app
    /// still using it after a rotation).
    Revoked {
        name: String,
    },
    Unknown,
}

/// Whether the key may reach connections of this account (keys limited with `--account`).
pub fn may_use_account(record: &ApiKeyRecord, account: &str) -> bool {
    match &record.accounts {
        None => true,
        Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => account.starts_with(prefix),
            None => p == account,
        }),
    }
}

/// Whether the key may reach connections of `provider` (namespace `provider:<name>`).
pub fn may_use_provider(record: &ApiKeyRecord, provider: &str) -> bool {
    // A key for every namespace needs only the name's shape checked: no namespace
    // written out on each call of the token API.
    if record.namespaces.is_none() {
        return crate::namespace::parts_are_valid(&[PROVIDER_SCOPE_PREFIX, provider]);
    }
    Namespace::parse(&format!("{PROVIDER_SCOPE_PREFIX}{provider}"))
        .is_ok_and(|ns| may_use(record, &ns))
}

/// The active keys limited to some accounts (`--account`: a tenant's app) that may read
/// this connection's tokens, by name. A grant the operator connects under such an account
/// goes to them: the page asks before it does (an app can create the account itself, by an
/// import, and make oauthd send the operator a reconnect link to it).
pub fn account_limited_readers(
    keys: &[ApiKeyRecord],
    provider: &str,
    account: &str,
) -> Vec<String> {
    keys.iter()
        .filter(|k| k.revoked_at_ms.is_none() && k.accounts.is_some())
        .filter(|k| may_use_provider(k, provider) && may_use_account(k, account))
        .map(|k| k.name.clone())
        .collect()
}

/// Whether the key may use this namespace.
pub fn may_use(record: &ApiKeyRecord, ns: &Namespace) -> bool {
    match &record.namespaces {
        None => true,
        Some(patterns) => patterns.iter().any(|p| key_pattern_reaches(p, ns)),
    }
}

/// Whether the key reaches any provider's connections: every namespace, or a pattern
/// `*` or `provider:…`. A key for states alone has no accounts to speak of.
pub fn reaches_connections(record: &ApiKeyRecord) -> bool {
    record.namespaces.as_ref().is_none_or(|patterns| {
        patterns
            .iter()
            .any(|p| p == "*" || p.starts_with(PROVIDER_SCOPE_PREFIX))
    })
}

/// What to tell the operator about a key limited to namespace patterns that stop short
/// of `provider:` (`p*`, `provider*`) and reach no provider otherwise: such a pattern does
/// not reach any provider's tokens (before 2026-12-03 it did). `None` for other keys.
pub fn provider_scope_note(record: &ApiKeyRecord) -> Option<String> {
    let patterns = record.namespaces.as_ref()?;
    let reaches_some = reaches_connections(record);
    let short: Vec<&str> = patterns
        .iter()
        .filter(|p| stops_short_of(p, PROVIDER_SCOPE_PREFIX))
        .map(String::as_str)
        .collect();
    if reaches_some || short.is_empty() {
        return None;
    }
    Some(format!(
        "{} does not reach any provider's tokens: a key reaches provider P through '*', \
         '{PROVIDER_SCOPE_PREFIX}*' or '{PROVIDER_SCOPE_PREFIX}P' (make a key with --namespace \
         '{PROVIDER_SCOPE_PREFIX}*' too if the app reads tokens)",
        short.join(", ")
    ))
}

/// What to tell the operator about a key that names providers (`provider:P`) the config
/// does not have: a typo the app only finds out about as `401 namespace_not_allowed`.
/// `None` when every named provider is configured, or none is (no config given).
pub fn unknown_provider_note(record: &ApiKeyRecord, configured: &[&str]) -> Option<String> {
    if configured.is_empty() {
        return None;
    }
    let unknown: Vec<&str> = record
        .namespaces
        .as_ref()?
        .iter()
        .filter_map(|p| p.strip_prefix(PROVIDER_SCOPE_PREFIX))
        .filter(|name| !name.contains('*') && !configured.contains(name))
        .collect();
    if unknown.is_empty() {
        return None;
    }
    Some(format!(
        "no provider named {} is configured (configured: {}); the key reaches no tokens \
         through that pattern",
        unknown.join(", "),
        configured.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ApiKeyRecord, KeyStore, StoreError};
    use async_trait::async_trait;

    #[test]
    fn a_key_name_never_starts_with_a_dash() {
        for name in ["app", "app-1", "1.app_x", "_app", ".app"] {
            assert!(check_name(name).is_ok(), "{name}");
        }
        for name in ["-app", "--help", "-V", "", "app key", "ä"] {
            assert!(check_name(name).is_err(), "{name}");
        }
    }

    #[test]
    fn a_star_anywhere_but_at_the_end_is_said_to_belong_there() {
        for pattern in ["oauth:*:x", "a*b", "a**", "*x"] {
            assert!(star_inside(pattern), "{pattern}");
            assert!(check_account_pattern(pattern)
                .unwrap_err()
                .to_string()
                .contains("`*` may only end a pattern"));
        }
        for pattern in ["*", "oauth:*", "acme-*", "alice"] {
            assert!(!star_inside(pattern), "{pattern}");
        }
    }

    fn record() -> ApiKeyRecord {
        ApiKeyRecord {
            id: "id".into(),
            name: "app".into(),
            namespaces: None,
            accounts: None,
            created_at_ms: 0,
            revoked_at_ms: None,
            last_used_at_ms: None,
        }
    }

    /// A key store whose one key is active and whose reads take `delay`; it keeps the
    /// uses recorded.
    #[derive(Default)]
    struct Slow {
        delay: Duration,
        used: Mutex<Vec<i64>>,
    }

    #[async_trait]
    impl KeyStore for Slow {
        async fn find_key(
            &self,
            _key_hash: SecretHash,
        ) -> Result<Option<ApiKeyRecord>, StoreError> {
            tokio::time::sleep(self.delay).await;
            let last_used_at_ms = self.used.lock().unwrap().last().copied();
            Ok(Some(ApiKeyRecord {
                last_used_at_ms,
                ..record()
            }))
        }
        async fn insert_key(&self, _: ApiKeyRecord, _: SecretHash) -> Result<(), StoreError> {
            Ok(())
        }
        async fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
            Ok(vec![])
        }
        async fn key_active(&self, _: &str, _: Option<&str>) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn revoke_key(&self, _: &str, _: i64) -> Result<bool, StoreError> {
            Ok(false)
        }
        async fn note_key_used(&self, _: SecretHash, at_ms: i64) -> Result<(), StoreError> {
            self.used.lock().unwrap().push(at_ms);
            Ok(())
        }
    }

    /// The uses `store` recorded, once the tasks recording them have run.
    async fn uses(store: &Slow) -> Vec<i64> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.used.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_key_in_use_is_recorded_as_used_once_a_minute() {
        let key = format!("{}example", crate::secret::API_KEY_PREFIX);
        let clock = Clock::manual(1_000_000);
        // Nothing cached: every request reads the store, as with `api_key_cache_seconds = 0`.
        let cache = KeyCache::new(Duration::ZERO, clock.clone());
        let slow = Arc::new(Slow::default());
        let store: Arc<dyn KeyStore> = slow.clone();
        cache.authenticate(&store, &key).await.unwrap();
        assert_eq!(uses(&slow).await, [1_000_000], "the first use");
        clock.advance(Duration::from_secs(59));
        cache.authenticate(&store, &key).await.unwrap();
        assert_eq!(
            uses(&slow).await,
            [1_000_000],
            "not again within the minute"
        );
        clock.advance(Duration::from_secs(1));
        cache.authenticate(&store, &key).await.unwrap();
        assert_eq!(uses(&slow).await, [1_000_000, 1_060_000], "a minute later");
    }

    #[tokio::test]
    async fn a_verified_key_counts_from_when_its_read_began() {
        let key = format!("{}example", crate::secret::API_KEY_PREFIX);
        let cache = KeyCache::new(Duration::from_millis(400), Clock::manual(0));
        let store: Arc<dyn KeyStore> = Arc::new(Slow {
            delay: Duration::from_millis(300),
            ..Slow::default()
        });
        let started = Instant::now();
        assert!(matches!(
            cache.authenticate(&store, &key).await.unwrap(),
            Presented::Active(_)
        ));
        assert!(cache.cached(&key).is_some(), "held after the read");
        // 450 ms after the read began (150 after it came back): a revoke made while it
        // was on its way must be honoured by now.
        tokio::time::sleep(Duration::from_millis(450).saturating_sub(started.elapsed())).await;
        assert!(
            cache.cached(&key).is_none(),
            "held past max_age from the read's start"
        );
    }

    #[test]
    fn an_older_read_does_not_outlast_a_newer_one() {
        let cache = KeyCache::new(Duration::from_secs(60), Clock::manual(0));
        let hash = SecretHash::of("k");
        let record = Arc::new(record());
        let older = Instant::now();
        let newer = older + Duration::from_millis(5);
        cache.remember(hash, Some(&record), newer);
        cache.remember(hash, Some(&record), older);
        let at = cache.entries.lock().unwrap().get(&hash).map(|(_, at)| *at);
        assert_eq!(at, Some(newer));
    }
}
