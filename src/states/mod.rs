//! The state service: TTL policy, issuing and consuming states.
//!
//! Owns the rules (which TTL a namespace gets, when a state counts as expired, what a
//! namespace mismatch does); the store only keeps rows, the HTTP layer only translates.

use crate::clock::Clock;
use crate::metrics;
use crate::namespace::Namespace;
use crate::read_cache::{ForgetAfter, ReadCache};
use crate::secret::{SecretHash, StateId, StateValue};
use crate::state_data;
use crate::store::{
    ApiKeyRecord, Attempted, Found, InsertRules, Inserted, NamespaceFilter, Revoked, Sliding,
    StateRow, StateSecret, StateStore, StoreError, SubjectPage, Taken,
};
use crate::vault::{VaultError, VaultHandle};
use bytes::Bytes;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use zeroize::Zeroizing;

mod error;
mod listing;
mod policy;
mod stored_data;

pub use error::StateError;
pub use listing::{ListingCursor, SubjectListing};
pub use policy::{ttl_text, StatePolicy, TtlRule};
pub use stored_data::{data_keys, fullness_note, stored_data, StoredData};

/// Touches of states that do not slide, said in the log: at most one line a minute.
static TOUCHES_THAT_DO_NOT_SLIDE: crate::logging::Budget =
    crate::logging::Budget::per_minute("more touches of states that do not slide", 1);

#[derive(Debug)]
pub struct IssuedState {
    pub state: StateValue,
    pub namespace: Namespace,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

impl IssuedState {
    pub fn id(&self) -> StateId {
        StateId::of(&self.state.hash())
    }
}

/// A JSON value's text, compact (no whitespace between tokens), as a state keeps its
/// data: an app's members in the order it sent them and its numbers as it wrote them
/// (`1E2`, integers past 64 bits), which a parsed value would sort and round.
pub struct JsonText(Zeroizing<String>);

impl JsonText {
    /// The text of `value` (members sorted by name).
    pub fn of(value: &serde_json::Value) -> JsonText {
        JsonText(Zeroizing::new(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `raw` (checked JSON) without the whitespace between its tokens.
    pub fn compact(raw: &serde_json::value::RawValue) -> JsonText {
        let raw = raw.get();
        let mut text = String::with_capacity(raw.len());
        let (mut in_string, mut escaped) = (false, false);
        for c in raw.chars() {
            if in_string {
                text.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
                in_string = c == '"';
                text.push(c);
            }
        }
        JsonText(Zeroizing::new(text))
    }
}

/// What a create asks for beyond the namespace (the state API's optional fields).
/// `Debug` never shows the code.
#[derive(Default)]
pub struct NewState {
    pub ttl_seconds: Option<u64>,
    /// Compact JSON text, kept and answered as it is (`JsonText`).
    pub data: Option<JsonText>,
    pub subject: Option<String>,
    /// A code the user will type, and how many tries it allows.
    pub secret: Option<(String, Option<u32>)>,
    /// Revoke the subject's other live states of the namespace in the same step.
    pub replace: bool,
    /// `Some(max_lifetime_seconds)` for a sliding state (`None` inside: the namespace's).
    pub sliding: Option<Option<u64>>,
}

impl std::fmt::Debug for NewState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewState")
            .field("ttl_seconds", &self.ttl_seconds)
            .field("subject", &self.subject)
            .field(
                "secret",
                &self.secret.as_ref().map(|(_, n)| ("[redacted]", n)),
            )
            .field("replace", &self.replace)
            .field("sliding", &self.sliding)
            .finish_non_exhaustive()
    }
}

/// A state as apps see it (never its value): what consume, verify and listing answer.
#[derive(Debug)]
pub struct StateView {
    pub id: StateId,
    pub namespace: String,
    pub subject: Option<String>,
    /// The data as stored: checked to be JSON, answered as it is (never parsed into a tree
    /// only to be written out again).
    pub data: Option<Box<serde_json::value::RawValue>>,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// Wrong codes left, for a state guarded by one.
    pub attempts_left: Option<u32>,
    /// Roughly what it holds in memory, in bytes (its parsed data, its names and its
    /// answer).
    pub size: usize,
    /// The body of its `200` answer, rendered the first time one is asked for: a view the
    /// verify cache holds answers every later verify with the same bytes.
    answer: OnceLock<Bytes>,
}

/// What an answer adds to its data's text: names, the id, two timestamps (and their
/// escaping, at most).
const ANSWER_OVERHEAD: usize = 256;

impl StateView {
    fn of(row: StateRow) -> Result<StateView, StateError> {
        let text_len = row.data.as_ref().map_or(0, String::len);
        let data = match row.data {
            None => None,
            Some(text) => Some(
                serde_json::value::RawValue::from_string(text)
                    .map_err(|e| StoreError::unavailable("reading a state's data", e))?,
            ),
        };
        let names = row.namespace.len() + row.subject.as_ref().map_or(0, String::len);
        // The view with its data's text, then its answer: the names again (twice, for
        // escaping) and the same text.
        let size = 128 + names + text_len + ANSWER_OVERHEAD + 2 * names + text_len;
        Ok(StateView {
            id: StateId::of(&row.key_hash),
            namespace: row.namespace,
            subject: row.subject,
            data,
            created_at_ms: row.created_at_ms,
            expires_at_ms: row.expires_at_ms,
            attempts_left: row.secret.map(|s| s.attempts_left),
            size,
            answer: OnceLock::new(),
        })
    }

    /// Its data parsed, for a reader that needs the members (answers send the text).
    pub fn parsed_data(&self) -> Option<serde_json::Value> {
        self.data
            .as_deref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// The body of its `200` answer: rendered by `render` the first time, the same bytes
    /// after.
    pub fn answer<E>(
        &self,
        render: impl FnOnce(&StateView) -> Result<Vec<u8>, E>,
    ) -> Result<Bytes, E> {
        if let Some(body) = self.answer.get() {
            return Ok(body.clone());
        }
        // Shrunk to its length: the cache weighs the text, not the buffer that grew to it.
        let body = Bytes::from(render(self)?.into_boxed_slice());
        Ok(self.answer.get_or_init(|| body).clone())
    }
}

/// Live states verify holds at most (sessions: each is verified on every request).
/// The most data one of oauthd's own states (a connect flow's sealed secrets: a PKCE
/// verifier, a nonce, a `return_to` of at most 2 KiB, the starting key's name) carries.
const OWN_DATA_MAX: usize = 16 * 1024;

/// Which budget of live states a create draws on: the apps' (`max_total_states`: the
/// state API, and the flows apps start), or the operator's, which has room past it
/// (`own_reserve`: the flows started on oauthd's page and by the CLI, and states put back
/// as they were), so that apps that filled the store do not stop the operator connecting
/// accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    Apps,
    Operator,
}

/// `states.max_states_per_key` when unset: 100,000 (as a namespace's `max_states`), or
/// `max_total_states` when that is lower. At the defaults one key that fills its share
/// leaves 150,000 of the store's 250,000 to the others.
pub fn default_max_states_per_key(max_total_states: u64) -> u64 {
    max_total_states.min(100_000)
}

/// What a new state draws on: the room of live states, the most data it may hold, and the
/// API key whose live states it counts against (`None`: oauthd's own).
#[derive(Clone, Copy)]
struct Draw<'a> {
    room: Room,
    max_data: usize,
    by: Option<&'a ApiKeyRecord>,
}

impl Draw<'_> {
    /// One of oauthd's own states: its data held to `OWN_DATA_MAX`, counted against no key.
    fn own(room: Room) -> Self {
        Draw {
            room,
            max_data: OWN_DATA_MAX,
            by: None,
        }
    }
}

/// The room the operator's states have past `max_total_states`: 1 %, at least 100.
pub fn own_reserve(max_total_states: u64) -> u64 {
    (max_total_states / 100).max(100)
}

const VERIFY_CACHE_ENTRIES: usize = 100_000;
/// What they may hold in memory at most, in bytes (their data's text counted twice: the
/// view's and its answer's).
const VERIFY_CACHE_BYTES: usize = 64 * 1024 * 1024;

pub struct StateService {
    store: Arc<dyn StateStore>,
    policy: StatePolicy,
    clock: Clock,
    /// Seals each state's data at rest.
    vault: Arc<VaultHandle>,
    /// When a state's data last failed to open, as logged.
    open_failure_logged: OncePerSecond,
    /// When a create was last refused for a full namespace or store, as logged (a flood
    /// of refused creates must not flood the log too).
    full_logged: OncePerSecond,
    /// Live states verify has read within `verify_cache`, by hash: the session hot path.
    seen: ReadCache<SecretHash, Arc<StateView>>,
    /// The states whose data, stored in clear (by an oauthd from before data was sealed),
    /// is read as it is: those `check_stored_data` found at the start, and those a
    /// consume took out of the store before that look was done (the look may have missed
    /// them: see `taken_view`). Data in clear in any other state is refused as altered:
    /// someone who can write the database could otherwise make any state answer data of
    /// their choosing.
    read_in_clear: std::sync::RwLock<std::collections::HashSet<SecretHash>>,
    /// Set once `check_stored_data` has run (whatever it found): until then data in clear
    /// is neither read nor refused as altered.
    stored_data_checked: std::sync::atomic::AtomicBool,
}

impl StateService {
    pub fn new(
        store: Arc<dyn StateStore>,
        policy: StatePolicy,
        clock: Clock,
        vault: Arc<VaultHandle>,
    ) -> Self {
        StateService {
            seen: ReadCache::new(policy.verify_cache)
                .watched_by(store.change_watch())
                .counted("verify")
                .bounded(VERIFY_CACHE_ENTRIES, VERIFY_CACHE_BYTES, |view| view.size),
            store,
            policy,
            clock,
            vault,
            open_failure_logged: OncePerSecond::default(),
            full_logged: OncePerSecond::default(),
            read_in_clear: std::sync::RwLock::default(),
            stored_data_checked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn policy(&self) -> &StatePolicy {
        &self.policy
    }

    /// The vault keys live states' data names that this vault has not loaded, each with
    /// how many states name it: those states answer `vault_error` until the key is back.
    /// Also counts live states whose data was stored in clear, and from then on reads
    /// the data of those states (`read_in_clear`), and of no others.
    pub async fn check_stored_data(&self) -> Result<StoredData, StoreError> {
        // A look that fails for a moment (a read meeting the start's other work) is tried
        // again, for about 6 s: meanwhile data in clear is neither read nor refused. One
        // that still fails leaves it refused, as before any look.
        let mut wait = std::time::Duration::from_millis(200);
        let mut found = self.look_at_stored_data().await;
        for _ in 0..5 {
            if found.is_ok() {
                break;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
            found = self.look_at_stored_data().await;
        }
        self.stored_data_checked
            .store(true, std::sync::atomic::Ordering::Release);
        found
    }

    async fn look_at_stored_data(&self) -> Result<StoredData, StoreError> {
        let known = self.vault.key_ids();
        let now = self.clock.now_ms();
        let mut found = stored_data(self.store.as_ref(), now).await?;
        found.keys.retain(|id, _| !known.contains(id));
        if found.in_clear > 0 {
            // Rare (data stored before 2026-12-03, still live): every state with data read.
            let in_clear: std::collections::HashSet<SecretHash> = self
                .store
                .states_with_data("", now)
                .await?
                .into_iter()
                .filter(|row| {
                    row.data
                        .as_deref()
                        .is_some_and(|d| !state_data::is_sealed(d))
                })
                .map(|row| row.key_hash)
                .collect();
            // Added to, not replaced: a consume may have added one the look missed.
            if let Ok(mut held) = self.read_in_clear.write() {
                held.extend(in_clear);
            }
        }
        Ok(found)
    }

    fn grace_ms(&self) -> i64 {
        i64::try_from(self.policy.expired_grace.as_millis()).unwrap_or(i64::MAX)
    }

    /// Issues one of oauthd's own states (the broker's flows). `ttl_seconds` defaults to
    /// the namespace's rule. Its data is held to `OWN_DATA_MAX`, not to `max_data_bytes`,
    /// the state API's limit for apps: a limit set low for an app's codes must not refuse
    /// a connect flow's sealed secrets.
    pub async fn issue(
        &self,
        namespace: Namespace,
        ttl_seconds: Option<u64>,
        data: Option<JsonText>,
    ) -> Result<IssuedState, StateError> {
        let state = StateValue::generate().map_err(|_| StateError::Entropy)?;
        self.issue_value(state, namespace, ttl_seconds, data, Room::Operator)
            .await
    }

    /// `issue` for a state value the caller generated (it needed the value before the
    /// data), drawing on `room`.
    pub async fn issue_value(
        &self,
        state: StateValue,
        namespace: Namespace,
        ttl_seconds: Option<u64>,
        data: Option<JsonText>,
        room: Room,
    ) -> Result<IssuedState, StateError> {
        let request = NewState {
            ttl_seconds,
            data,
            ..NewState::default()
        };
        self.store_new(state, namespace, request, Draw::own(room), None)
            .await
    }

    /// Issues one of oauthd's own states to expire exactly at `expires_at_ms`: a state put
    /// back as it was, or one that must live exactly as long as another (an app flow's
    /// confirmation ticket). No TTL rule is applied: the time is one a rule allowed already.
    /// `Expired` when that time has passed.
    pub async fn issue_until(
        &self,
        state: StateValue,
        namespace: Namespace,
        expires_at_ms: i64,
        data: Option<JsonText>,
        room: Room,
    ) -> Result<IssuedState, StateError> {
        let request = NewState {
            data,
            ..NewState::default()
        };
        self.store_new(
            state,
            namespace,
            request,
            Draw::own(room),
            Some(expires_at_ms),
        )
        .await
    }

    /// Issues an app's state with any of the state API's options (subject, code, replace,
    /// sliding) for the API key `by`, whose live states count against
    /// `max_states_per_key`; its data is at most `max_data_bytes`.
    pub async fn create(
        &self,
        namespace: Namespace,
        request: NewState,
        by: &ApiKeyRecord,
    ) -> Result<IssuedState, StateError> {
        let state = StateValue::generate().map_err(|_| StateError::Entropy)?;
        let draw = Draw {
            room: Room::Apps,
            max_data: self.policy.max_data_bytes,
            by: Some(by),
        };
        self.store_new(state, namespace, request, draw, None).await
    }

    async fn store_new(
        &self,
        state: StateValue,
        namespace: Namespace,
        request: NewState,
        draw: Draw<'_>,
        until: Option<i64>,
    ) -> Result<IssuedState, StateError> {
        let Draw { room, max_data, by } = draw;
        let max_total = match room {
            Room::Apps => self.policy.max_total_states,
            Room::Operator => self
                .policy
                .max_total_states
                .saturating_add(own_reserve(self.policy.max_total_states)),
        };
        let rule = self.policy.rule_for(&namespace);
        let created_at_ms = self.clock.now_ms();
        let ttl = match (until, request.ttl_seconds) {
            (Some(until), _) => match u64::try_from(until.saturating_sub(created_at_ms)) {
                Ok(left) if left > 0 => Duration::from_millis(left),
                _ => {
                    return Err(StateError::Expired {
                        namespace: namespace.to_string(),
                    })
                }
            },
            (None, None) => rule.default_ttl,
            (None, Some(s)) if s >= 1 && s <= rule.max_ttl.as_secs() => Duration::from_secs(s),
            (None, Some(_)) => {
                return Err(StateError::TtlOutOfRange {
                    namespace: namespace.to_string(),
                    max: rule.max_ttl.as_secs(),
                    table: self.policy.ttl_table_for(&namespace),
                })
            }
        };
        let key_hash = state.hash();
        let data = match request.data {
            None => None,
            Some(JsonText(text)) if text.as_str() == "null" => None,
            Some(JsonText(text)) => {
                if text.len() > max_data {
                    return Err(StateError::DataTooLarge {
                        size: text.len(),
                        max: max_data,
                    });
                }
                let owner = state_data::Owner {
                    key_hash: &key_hash,
                    namespace: namespace.as_str(),
                    subject: request.subject.as_deref(),
                };
                let sealed =
                    state_data::seal(&*self.vault, &owner, &text).map_err(|e| match e {
                        VaultError::Entropy => StateError::Entropy,
                        e => StateError::Vault(e),
                    })?;
                Some(sealed)
            }
        };
        if request.replace && request.subject.is_none() {
            return Err(StateError::SubjectRequired);
        }
        let expires_at_ms =
            until.unwrap_or_else(|| created_at_ms.saturating_add(ttl.as_millis() as i64));
        let sliding = match request.sliding {
            None => None,
            Some(_) if !rule.sliding => {
                return Err(StateError::SlidingNotAllowed {
                    namespace: namespace.to_string(),
                    table: self.policy.table_for(&namespace),
                })
            }
            Some(lifetime) => {
                let max = rule.max_lifetime.as_secs();
                let lifetime = lifetime.unwrap_or(max);
                if lifetime < ttl.as_secs() || lifetime > max {
                    return Err(StateError::LifetimeOutOfRange {
                        namespace: namespace.to_string(),
                        min: ttl.as_secs(),
                        max,
                    });
                }
                Some(Sliding {
                    ttl_ms: ttl.as_millis() as i64,
                    max_expires_at_ms: created_at_ms
                        .saturating_add((lifetime as i64).saturating_mul(1000)),
                })
            }
        };
        if let Some((_, Some(asked))) = &request.secret {
            if *asked > rule.attempts_ceiling {
                return Err(StateError::TooManyAttempts {
                    namespace: namespace.to_string(),
                    max: rule.attempts_ceiling,
                    table: self.policy.table_for(&namespace),
                });
            }
        }
        let secret = request.secret.map(|(code, attempts)| StateSecret {
            hash: state.code_hash(&code),
            attempts_left: attempts.unwrap_or(rule.max_attempts),
        });
        let replacing = request.replace.then(|| self.seen.forget_all_after());
        let stored = self
            .store
            .insert_state(
                StateRow {
                    key_hash,
                    namespace: namespace.to_string(),
                    data,
                    created_at_ms,
                    expires_at_ms,
                    subject: request.subject,
                    secret,
                    sliding,
                    created_by: by.map(|key| key.id.clone()),
                },
                InsertRules {
                    max_live: rule.max_states,
                    now_ms: created_at_ms,
                    keep_until_ms: expires_at_ms.saturating_add(self.grace_ms()),
                    replace_subject: request.replace,
                    max_per_subject: rule.max_per_subject,
                    max_total,
                    max_tombstones: self.policy.max_total_states,
                    max_per_key: self.policy.max_states_per_key,
                },
            )
            .await;
        // The subject's other states may be gone even when the answer was an error (a Redis
        // timeout after the script ran): then whatever verify held goes. Otherwise the store
        // said which states it replaced, and only those go.
        if let (Some(replacing), Ok(Inserted::Stored { replaced })) = (replacing, &stored) {
            replacing.changed_only(replaced);
        }
        match stored? {
            Inserted::Stored { .. } => {}
            Inserted::NamespaceFull => {
                if self.full_logged.take_turn(created_at_ms) {
                    log::warn!(
                        "namespace {namespace} is full ({} live states): create refused",
                        rule.max_states
                    );
                }
                return Err(StateError::NamespaceFull {
                    namespace: namespace.to_string(),
                    max: rule.max_states,
                    table: self.policy.table_for(&namespace),
                });
            }
            Inserted::SubjectFull { next_expiry_ms } => {
                return Err(StateError::SubjectFull {
                    namespace: namespace.to_string(),
                    max: rule.max_per_subject,
                    table: self.policy.table_for(&namespace),
                    retry_after_secs: crate::clock::seconds_until(created_at_ms, next_expiry_ms),
                })
            }
            Inserted::StoreFull => {
                let max = self.policy.max_total_states;
                if self.full_logged.take_turn(created_at_ms) {
                    log::warn!(
                        "the store is full ({max} live states in all namespaces, \
                         states.max_total_states{}): create in {namespace} refused",
                        error::room_full_too(room)
                    );
                }
                return Err(StateError::StoreFull { max, room });
            }
            Inserted::KeyFull => {
                let max = self.policy.max_states_per_key;
                if self.full_logged.take_turn(created_at_ms) {
                    log::warn!(
                        "API key {} holds its most live states ({max}, \
                         states.max_states_per_key): create in {namespace} refused",
                        by.map_or("?", |key| key.name.as_str())
                    );
                }
                return Err(StateError::KeyFull { max });
            }
        }
        metrics::state_created(namespace.as_str());
        log::debug!(
            "state {state} issued in {namespace}, ttl {}s",
            ttl.as_secs()
        );
        Ok(IssuedState {
            state,
            namespace,
            created_at_ms,
            expires_at_ms,
        })
    }

    /// Consumes a state of `namespace` exactly once.
    ///
    /// Only a state of that namespace is touched: one presented under another namespace
    /// stays as it is and answers `NotFound`, exactly like a state that never existed, so
    /// a caller that may not use a namespace can neither burn its states nor learn that
    /// they exist. (Up to 0.1 a mismatch burned the state and answered 409.) An expired
    /// state is gone afterwards, whatever the outcome.
    pub async fn consume(
        &self,
        state: &StateValue,
        namespace: &Namespace,
    ) -> Result<StateView, StateError> {
        let filter = NamespaceFilter::Exact(namespace.to_string());
        let consumed = self.take(state, &filter).await?;
        metrics::state_consumed(Some(&consumed.namespace), "ok");
        log::debug!("state {state} consumed in {namespace}");
        Ok(consumed)
    }

    /// Consumes a state whose namespace starts with `prefix` (the broker's callback knows
    /// the provider, not the account); states of other namespaces are untouched.
    pub async fn consume_prefixed(
        &self,
        state: &StateValue,
        prefix: &str,
    ) -> Result<StateView, StateError> {
        let consumed = self
            .take(state, &NamespaceFilter::Prefix(prefix.to_owned()))
            .await?;
        metrics::state_consumed(Some(&consumed.namespace), "ok");
        Ok(consumed)
    }

    /// Takes the state; records the outcomes decided here (unknown, expired). An unknown
    /// state is counted under the namespace it was presented for.
    async fn take(
        &self,
        state: &StateValue,
        filter: &NamespaceFilter,
    ) -> Result<StateView, StateError> {
        let now = self.clock.now_ms();
        let unknown = || {
            log::debug!("state {state}: unknown");
            let presented = match filter {
                NamespaceFilter::Exact(ns) => Some(ns.as_str()),
                NamespaceFilter::Prefix(_) => None,
            };
            metrics::unknown_state_consumed(presented);
            StateError::NotFound
        };
        let expired = |namespace: String, expired_at: Option<i64>| match self
            .expired_error(now, namespace, expired_at)
        {
            StateError::Expired { namespace } => {
                log::debug!("state {state}: expired");
                metrics::state_consumed(Some(&namespace), "expired");
                StateError::Expired { namespace }
            }
            _ => unknown(),
        };
        // Dropped after the write (even when this call is cancelled meanwhile): a verify
        // that read before it cannot put the state back.
        let consumed = self.seen.forget_after(&state.hash());
        let checked = self.data_checked();
        let taken = on_either_key(
            state,
            |t| matches!(t, Ok(Taken::Missing)),
            |key| self.store.take_state(key, filter),
        )
        .await;
        drop(consumed);
        let row = match taken? {
            Taken::Missing => return Err(unknown()),
            Taken::SecretRequired {
                namespace,
                expires_at_ms,
            } if expires_at_ms <= now => {
                // Gone as any expired state a consume finds is: 410 once, then 404.
                for key in [state.hash(), state.legacy_hash()] {
                    if let Err(e) = self.store.revoke_state(key, &namespace, now).await {
                        log::warn!("state {state}: expired, and could not be deleted now ({e}); the sweeper deletes it");
                    }
                }
                return Err(expired(namespace, Some(expires_at_ms)));
            }
            Taken::SecretRequired { .. } => return Err(StateError::SecretRequired),
            Taken::ExpiredTombstone {
                namespace,
                expired_at_ms,
            } => return Err(expired(namespace, expired_at_ms)),
            Taken::Row(row) => row,
        };
        if row.expires_at_ms <= now {
            return Err(expired(row.namespace, Some(row.expires_at_ms)));
        }
        self.taken_view(row, now, checked).await
    }

    /// Whether `check_stored_data` has run.
    fn data_checked(&self) -> bool {
        self.stored_data_checked
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The row with its data opened.
    fn view(&self, row: StateRow) -> Result<StateView, StateError> {
        let data = self.opened_data(&row, self.data_checked())?;
        StateView::of(StateRow { data, ..row })
    }

    /// A row a consume took, with its data opened; `checked`: whether `check_stored_data`
    /// had run before it was taken. Data that does not open (a vault key not loaded, a
    /// row altered at rest, data in clear taken before that look was done) answers an
    /// error and puts the row back as it was, so the state still works once the right
    /// key is back, or the look is done.
    async fn taken_view(
        &self,
        row: StateRow,
        now: i64,
        checked: bool,
    ) -> Result<StateView, StateError> {
        let data = match self.opened_data(&row, checked) {
            Ok(data) => data,
            Err(e) => {
                if matches!(e, StateError::DataNotYetChecked) {
                    // Out of the store while the look read it, which then counted it
                    // neither as in clear nor as anything else: it was there before the
                    // look was done, as those it found were, and is read as they are.
                    if let Ok(mut held) = self.read_in_clear.write() {
                        held.insert(row.key_hash);
                    }
                }
                let rules = InsertRules {
                    max_live: u64::MAX,
                    now_ms: now,
                    keep_until_ms: row.expires_at_ms.saturating_add(self.grace_ms()),
                    replace_subject: false,
                    max_per_subject: u64::MAX,
                    max_total: u64::MAX,
                    max_tombstones: self.policy.max_total_states,
                    max_per_key: u64::MAX,
                };
                let id = StateId::of(&row.key_hash);
                if let Err(put) = self.store.insert_state(row, rules).await {
                    log::error!(
                        "state id {id}: could not be put back after its data failed to open: {put}"
                    );
                }
                return Err(e);
            }
        };
        StateView::of(StateRow { data, ..row })
    }

    /// A row's stored data opened (`None`: it has none); `checked`: whether
    /// `check_stored_data` had run when the row was read.
    fn opened_data(&self, row: &StateRow, checked: bool) -> Result<Option<String>, StateError> {
        let Some(stored) = row.data.as_deref() else {
            return Ok(None);
        };
        let owner = state_data::Owner {
            key_hash: &row.key_hash,
            namespace: &row.namespace,
            subject: row.subject.as_deref(),
        };
        let sealed = state_data::is_sealed(stored);
        if !sealed && !checked {
            return Err(StateError::DataNotYetChecked);
        }
        let in_clear = !sealed
            && self
                .read_in_clear
                .read()
                .is_ok_and(|held| held.contains(&row.key_hash));
        state_data::open(&*self.vault, &owner, stored, in_clear)
            .map(Some)
            .map_err(|e| {
                // At most a line a second: every request for such a state fails alike.
                if self.open_failure_logged.take_turn(self.clock.now_ms()) {
                    log::error!(
                        "state id {} in {}: its data cannot be opened: {e}",
                        StateId::of(&row.key_hash),
                        row.namespace
                    );
                }
                StateError::Vault(e)
            })
    }

    /// An expired state's answer: 410 within the grace window, else as unknown (404):
    /// past expiry plus the grace window a state is as unknown as one never issued,
    /// whether or not the backend has forgotten it yet.
    fn expired_error(&self, now: i64, namespace: String, expired_at: Option<i64>) -> StateError {
        if expired_at.is_some_and(|at| at.saturating_add(self.grace_ms()) <= now) {
            StateError::NotFound
        } else {
            StateError::Expired { namespace }
        }
    }

    /// Reads a state without consuming it; with `touch`, a sliding state's expiry moves
    /// to now + its TTL (never past its lifetime). Only a touch writes.
    pub async fn verify(
        &self,
        state: &StateValue,
        namespace: &Namespace,
        touch: bool,
    ) -> Result<Arc<StateView>, StateError> {
        let now = self.clock.now_ms();
        let hash = state.hash();
        // The hot path: a live state read within `verify_cache_seconds`.
        if !touch {
            if let Some(seen) = self.seen.get(&hash) {
                if seen.namespace == namespace.as_str() && seen.expires_at_ms > now {
                    return Ok(seen);
                }
            }
        }
        let ticket = self.seen.begin_read();
        let mut found = Found::Missing;
        // Held in memory only when found under its own key: every change drops what it
        // holds by the stored key, and a state made before 2026-12-01 is stored under its
        // legacy one (a revoke by id or subject would not find it here).
        let mut found_under = hash;
        for key in [hash, state.legacy_hash()] {
            found_under = key;
            found = if touch {
                let _touched = self.seen.forget_after(&hash);
                self.store
                    .touch_state(key, namespace.as_str(), now, self.grace_ms())
                    .await?
            } else {
                self.store.read_state(key, namespace.as_str()).await?
            };
            if !matches!(found, Found::Missing) {
                break;
            }
        }
        match found {
            Found::Row(row) if row.expires_at_ms > now => {
                if touch && row.sliding.is_none() {
                    // Answered as any verify (a touch of every state an app holds is fine),
                    // but an app that forgot `sliding` at its create would find its users
                    // signed out at the TTL: said where its developer looks.
                    TOUCHES_THAT_DO_NOT_SLIDE.warn(format_args!(
                        "a touch of a state in namespace {} that was created without \"sliding\": true: its expiry does not move (create it with \"sliding\": true for a session that lives while it is used)",
                        row.namespace
                    ));
                }
                let view = Arc::new(self.view(row)?);
                if !touch && found_under == hash {
                    self.seen.put(&hash, view.clone(), ticket);
                }
                Ok(view)
            }
            Found::Row(row) => Err(self.expired_error(now, row.namespace, Some(row.expires_at_ms))),
            Found::ExpiredTombstone {
                namespace,
                expired_at_ms,
            } => Err(self.expired_error(now, namespace, expired_at_ms)),
            Found::Missing => Err(StateError::NotFound),
        }
    }

    /// One try of the code guarding a state: a match consumes it; a miss costs one of its
    /// attempts, and the last one deletes it.
    pub async fn attempt(
        &self,
        state: &StateValue,
        namespace: &Namespace,
        code: &str,
    ) -> Result<StateView, StateError> {
        let now = self.clock.now_ms();
        let ns = namespace.as_str();
        // A state whose data does not open (its vault key not loaded, or data in clear
        // before the start's look at stored data is done) is not tried: a right code
        // would answer 503 and put the state back, telling the caller the code was right
        // without consuming it. Its 503 comes first, and no attempt is spent.
        let found = on_either_key(
            state,
            |f| matches!(f, Ok(Found::Missing)),
            |key| self.store.read_state(key, ns),
        )
        .await?;
        let checked = self.data_checked();
        if let Found::Row(row) = &found {
            // An expired one is said expired by the attempt, whatever its data.
            if row.expires_at_ms > now {
                if let Err(e @ (StateError::Vault(_) | StateError::DataNotYetChecked)) =
                    self.opened_data(row, checked)
                {
                    return Err(e);
                }
            }
        }
        let tried = self.seen.forget_after(&state.hash());
        let candidate = state.code_hash(code);
        let attempted = on_either_key(
            state,
            |a| matches!(a, Ok(Attempted::Missing)),
            |key| self.store.attempt_state(key, ns, candidate, now),
        )
        .await;
        drop(tried);
        let attempted = attempted?;
        let outcome = match attempted {
            Attempted::Matched(row) => {
                let view = self.taken_view(row, now, checked).await?;
                metrics::state_consumed(Some(ns), "ok");
                return Ok(view);
            }
            Attempted::Wrong { attempts_left } => {
                log::debug!("state {state}: wrong code, {attempts_left} attempts left");
                StateError::WrongSecret { attempts_left }
            }
            Attempted::NoSecret => StateError::NoSecret,
            Attempted::Expired {
                namespace,
                expired_at_ms,
            } => self.expired_error(now, namespace, expired_at_ms),
            Attempted::Missing => StateError::NotFound,
        };
        match outcome {
            StateError::Expired { .. } => metrics::state_consumed(Some(ns), "expired"),
            StateError::NotFound => metrics::unknown_state_consumed(Some(ns)),
            _ => {}
        }
        Err(outcome)
    }

    /// Revokes one state (and its tombstone): it answers 404 from now on.
    pub async fn revoke(
        &self,
        state: &StateValue,
        namespace: &Namespace,
    ) -> Result<(), StateError> {
        let now = self.clock.now_ms();
        let _revoked = self.seen.forget_after(&state.hash());
        let revoked = on_either_key(
            state,
            |r| matches!(r, Ok(false)),
            |key| self.store.revoke_state(key, namespace.as_str(), now),
        )
        .await;
        found_or_not(revoked?)
    }

    /// Revokes the state with this identifier.
    pub async fn revoke_id(&self, namespace: &Namespace, id: &StateId) -> Result<(), StateError> {
        let now = self.clock.now_ms();
        let id = id.to_string();
        // Verify keeps states by hash, and the id does not say which: the store says what it
        // removed. Everything goes only when it could not say (an error, a cancelled call).
        let revoking = self.seen.forget_all_after();
        let revoked = self
            .store
            .revoke_state_id(namespace.as_str(), &id, now)
            .await;
        let revoked = forget_revoked(revoking, revoked)?;
        found_or_not(revoked.live > 0)
    }

    /// A page of the live states of `subject` in `namespace`, in the order they were
    /// created, and where the next page starts when more follow.
    pub async fn subject_states(
        &self,
        namespace: &Namespace,
        subject: &str,
        page: SubjectPage,
    ) -> Result<SubjectListing, StateError> {
        let now = self.clock.now_ms();
        let found = self
            .store
            .subject_states(namespace.as_str(), subject, now, page)
            .await?;
        let next = found.next.map(ListingCursor::at);
        let states = found
            .rows
            .into_iter()
            .map(|row| self.view(row))
            .collect::<Result<_, _>>()?;
        Ok(SubjectListing { states, next })
    }

    /// Revokes every state of `subject` in `namespace`; returns how many were live.
    pub async fn revoke_subject(
        &self,
        namespace: &Namespace,
        subject: &str,
    ) -> Result<u64, StateError> {
        let now = self.clock.now_ms();
        let revoking = self.seen.forget_all_after();
        let revoked = self
            .store
            .revoke_subject(namespace.as_str(), subject, now)
            .await;
        Ok(forget_revoked(revoking, revoked)?.live)
    }
}

/// `op` on the state's stored key, and again on its legacy key (the value's plain SHA-256,
/// which states made before 2026-12-01 are stored under) when the first finds nothing.
async fn on_either_key<T, Fut>(
    state: &StateValue,
    missing: impl Fn(&T) -> bool,
    op: impl Fn(SecretHash) -> Fut,
) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let first = op(state.hash()).await;
    if missing(&first) {
        op(state.legacy_hash()).await
    } else {
        first
    }
}

/// A turn at most once a second (for a log line every failing request would repeat).
#[derive(Default)]
struct OncePerSecond(AtomicI64);

impl OncePerSecond {
    fn take_turn(&self, now_ms: i64) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        // A clock stepped back gives a turn too, rather than none until it catches up.
        (last == 0 || now_ms < last || now_ms.saturating_sub(last) >= 1000)
            && self
                .0
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Drops from verify's memory what a revoke removed; everything, through `revoking`, when
/// the store could not say what that was.
fn forget_revoked(
    revoking: ForgetAfter<'_, SecretHash, Arc<StateView>>,
    revoked: Result<Revoked, StoreError>,
) -> Result<Revoked, StoreError> {
    if let Ok(r) = &revoked {
        revoking.changed_only(&r.keys);
    }
    revoked
}

/// A revoke's answer: nothing live to revoke is `NothingToRevoke` (a `404` as for an
/// unknown state, said without the `410` a consume would have given an expired one).
fn found_or_not(found: bool) -> Result<(), StateError> {
    if found {
        Ok(())
    } else {
        Err(StateError::NothingToRevoke)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_views_answer_is_rendered_once_and_weighed_with_the_view() {
        // As oauthd stores data: compact, and answered as stored.
        let data = r#"{"device":"phone"}"#;
        let row = |data: &str| StateRow {
            key_hash: SecretHash::of("x"),
            namespace: "sessions".into(),
            data: Some(data.into()),
            created_at_ms: 0,
            expires_at_ms: 1,
            subject: Some("alice".into()),
            secret: None,
            sliding: None,
            created_by: None,
        };
        // Stored text that is not JSON (a file edited by hand) is a storage fault, not an
        // answer.
        assert!(StateView::of(row(r#"{"device":"#)).is_err());
        let view = StateView::of(row(data)).expect("view");
        assert_eq!(
            view.parsed_data(),
            Some(serde_json::json!({"device": "phone"}))
        );
        let renders = std::cell::Cell::new(0);
        let render = |v: &StateView| {
            renders.set(renders.get() + 1);
            serde_json::to_vec(&v.data)
        };
        let first = view.answer(render).expect("answer");
        let second = view.answer(render).expect("answer");
        assert_eq!(
            (renders.get(), &first[..]),
            (1, br#"{"device":"phone"}"#.as_slice())
        );
        assert_eq!(first, second);
        assert!(view.size >= ANSWER_OVERHEAD + data.len() + 2 * "sessionsalice".len());
    }
}
