//! Access tokens kept in memory between reads of the store: the token API's hot path.
//!
//! Without it every token call reads the connection (a hop to the blocking pool for
//! SQLite, a round trip for Redis) and opens the sealed token. With it a call within
//! `max_age` of the last read answers from memory. What this process changes (a refresh,
//! a reconnect, a delete) replaces or drops the entry at once, and a read that began
//! before the drop cannot put its older token back; what another process changes on the
//! same store is seen within `max_age` (`token_cache_seconds`, default 1; 0 reads the
//! store on every call). Tokens held here are zeroized when dropped and never leave the
//! process except in an answer.

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
    /// `None`: dropped at `since` (the connection changed in this process).
    token: Option<AccessToken>,
    /// Half the token's lifetime as the provider gave it, when known: `min_ttl` is capped
    /// by it, as for a token read from the store.
    half_life_ms: Option<i64>,
    /// When the read that found the token began (or when it was dropped).
    since: Instant,
}

impl TokenCache {
    pub(super) fn new(max_age: Duration) -> Self {
        TokenCache {
            max_age,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The token held for `key` when its read began within `max_age`, with its half-life.
    pub(super) fn get(&self, key: &ConnectionKey) -> Option<(AccessToken, Option<i64>)> {
        if self.max_age.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(key)?;
        let token = entry.token.as_ref()?;
        (entry.since.elapsed() < self.max_age).then(|| (token.clone(), entry.half_life_ms))
    }

    /// Holds `token`, found by a read of the store that began at `read_began`, unless the
    /// entry was dropped or replaced after that read began.
    pub(super) fn put(
        &self,
        key: &ConnectionKey,
        token: &AccessToken,
        half_life_ms: Option<i64>,
        read_began: Instant,
    ) {
        if self.max_age.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.get(key).is_some_and(|e| e.since > read_began) {
            return;
        }
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            entries.clear();
        }
        let entry = Entry {
            token: Some(token.clone()),
            half_life_ms,
            since: read_began,
        };
        entries.insert(key.clone(), entry);
    }

    /// Drops what is held for `key`: it changed in this process. Reads that began before
    /// now cannot put their token back.
    pub(super) fn forget(&self, key: &ConnectionKey) {
        if self.max_age.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            let dropped = Entry {
                token: None,
                half_life_ms: None,
                since: Instant::now(),
            };
            entries.insert(key.clone(), dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn token(text: &str) -> AccessToken {
        AccessToken {
            access_token: Zeroizing::new(text.to_owned()),
            token_type: "Bearer".into(),
            expires_at_ms: None,
            scope: None,
        }
    }

    #[test]
    fn a_read_that_began_before_a_drop_cannot_put_its_token_back() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let key = ConnectionKey::new("p", "a");
        let read_began = Instant::now();
        cache.put(&key, &token("old"), None, read_began);
        assert_eq!(
            cache.get(&key).map(|(t, _)| t.access_token.to_string()),
            Some("old".into())
        );
        cache.forget(&key);
        assert!(cache.get(&key).is_none());
        // The racing call finishes its read of the old row only now.
        cache.put(&key, &token("old"), None, read_began);
        assert!(cache.get(&key).is_none(), "a stale read outranked the drop");
        // A read that began after the drop is held.
        cache.put(&key, &token("new"), None, Instant::now());
        assert_eq!(
            cache.get(&key).map(|(t, _)| t.access_token.to_string()),
            Some("new".into())
        );
    }

    #[test]
    fn zero_holds_nothing() {
        let cache = TokenCache::new(Duration::ZERO);
        let key = ConnectionKey::new("p", "a");
        cache.put(&key, &token("t"), None, Instant::now());
        assert!(cache.get(&key).is_none());
    }
}
