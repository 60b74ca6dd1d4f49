//! Access tokens kept in memory between reads of the store: the token API's hot path.
//!
//! Without it every token call reads the connection (a hop to the blocking pool for
//! SQLite, a round trip for Redis) and opens the sealed token. With it a call within
//! `max_age` of the last read answers from memory. What this process changes (a refresh,
//! a reconnect, a delete) replaces or drops the entry at once (a call that read the row
//! just before the change may still put the old token back, for at most `max_age`); what
//! another process changes on the same store is seen within `max_age`
//! (`token_cache_seconds`, default 1; 0 reads the store on every call). Tokens held here are zeroized when dropped and never
//! leave the process except in an answer.

use super::tokens::AccessToken;
use crate::store::ConnectionKey;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// More entries than this means something is off; start over rather than grow.
const MAX_ENTRIES: usize = 10_000;

pub(super) struct TokenCache {
    max_age: Duration,
    entries: Mutex<HashMap<ConnectionKey, Entry>>,
}

struct Entry {
    token: AccessToken,
    /// Half the token's lifetime as the provider gave it, when known: `min_ttl` is capped
    /// by it, as for a token read from the store.
    half_life_ms: Option<i64>,
    read_at: Instant,
}

impl TokenCache {
    pub(super) fn new(max_age: Duration) -> Self {
        TokenCache {
            max_age,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The token held for `key` when it was read within `max_age`, with its half-life.
    pub(super) fn get(&self, key: &ConnectionKey) -> Option<(AccessToken, Option<i64>)> {
        if self.max_age.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(key)?;
        (entry.read_at.elapsed() < self.max_age).then(|| (entry.token.clone(), entry.half_life_ms))
    }

    /// Holds `token` as what the store says for `key` now.
    pub(super) fn put(&self, key: &ConnectionKey, token: &AccessToken, half_life_ms: Option<i64>) {
        if self.max_age.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            entries.clear();
        }
        entries.insert(
            key.clone(),
            Entry {
                token: token.clone(),
                half_life_ms,
                read_at: Instant::now(),
            },
        );
    }

    /// Drops what is held for `key`: it changed (or is changing) in this process.
    pub(super) fn forget(&self, key: &ConnectionKey) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }
}
