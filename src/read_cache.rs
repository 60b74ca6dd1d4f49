//! Values read from the store, kept in memory for a short while: the hot paths' cache
//! (access tokens for the token API, live states for verify).
//!
//! A value is answered from memory while its read began within `max_age`. What this
//! process changes drops the entry (or, for a change that touches many, every entry) at
//! once, and a read that began before the drop cannot put its older value back; what
//! another process changes on the same store is seen within `max_age`. With `max_age`
//! zero nothing is held.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// More entries than this means something is off; start over rather than grow.
const MAX_ENTRIES: usize = 10_000;

pub struct ReadCache<K, V> {
    max_age: Duration,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// When everything was last dropped: older reads cannot put their values back.
    cleared: Option<Instant>,
}

struct Entry<V> {
    /// `None`: dropped at `since` (the value changed in this process).
    value: Option<V>,
    /// When the read that found the value began (or when it was dropped).
    since: Instant,
}

impl<K: Hash + Eq + Clone, V: Clone> ReadCache<K, V> {
    pub fn new(max_age: Duration) -> Self {
        ReadCache {
            max_age,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                cleared: None,
            }),
        }
    }

    /// The value held for `key` when its read began within `max_age`.
    pub fn get(&self, key: &K) -> Option<V> {
        if self.max_age.is_zero() {
            return None;
        }
        let inner = self.inner.lock().ok()?;
        let entry = inner.entries.get(key)?;
        let value = entry.value.as_ref()?;
        (entry.since.elapsed() < self.max_age).then(|| value.clone())
    }

    /// Holds `value`, found by a read of the store that began at `read_began`, unless the
    /// entry (or everything) was dropped or replaced after that read began.
    pub fn put(&self, key: &K, value: V, read_began: Instant) {
        if self.max_age.is_zero() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.cleared.is_some_and(|c| c > read_began)
            || inner.entries.get(key).is_some_and(|e| e.since > read_began)
        {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES && !inner.entries.contains_key(key) {
            // The drops go too: no read older than this may put a value back.
            inner.entries.clear();
            inner.cleared = Some(Instant::now());
            return;
        }
        let entry = Entry {
            value: Some(value),
            since: read_began,
        };
        inner.entries.insert(key.clone(), entry);
    }

    /// Drops what is held for `key`: it changed in this process. Reads that began before
    /// now cannot put their value back.
    pub fn forget(&self, key: &K) {
        if self.max_age.is_zero() {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            let dropped = Entry {
                value: None,
                since: Instant::now(),
            };
            inner.entries.insert(key.clone(), dropped);
        }
    }

    /// Drops everything (a change that may touch any entry, e.g. revoking by subject).
    pub fn forget_all(&self) {
        if self.max_age.is_zero() {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            inner.entries.clear();
            inner.cleared = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_began_before_a_drop_cannot_put_its_value_back() {
        let cache = ReadCache::new(Duration::from_secs(60));
        let read_began = Instant::now();
        cache.put(&"k", "old", read_began);
        assert_eq!(cache.get(&"k"), Some("old"));
        cache.forget(&"k");
        assert_eq!(cache.get(&"k"), None);
        // The racing call finishes its read of the old row only now.
        cache.put(&"k", "old", read_began);
        assert_eq!(cache.get(&"k"), None, "a stale read outranked the drop");
        // A read that began after the drop is held.
        cache.put(&"k", "new", Instant::now());
        assert_eq!(cache.get(&"k"), Some("new"));
    }

    #[test]
    fn forget_all_outranks_every_older_read() {
        let cache = ReadCache::new(Duration::from_secs(60));
        let read_began = Instant::now();
        cache.put(&"a", 1, read_began);
        cache.forget_all();
        assert_eq!(cache.get(&"a"), None);
        cache.put(&"b", 2, read_began);
        assert_eq!(cache.get(&"b"), None);
        cache.put(&"b", 3, Instant::now());
        assert_eq!(cache.get(&"b"), Some(3));
    }

    #[test]
    fn starting_over_when_full_keeps_older_reads_out() {
        let cache = ReadCache::new(Duration::from_secs(60));
        let read_began = Instant::now();
        cache.forget(&0);
        for k in 1..MAX_ENTRIES {
            cache.put(&k, k, Instant::now());
        }
        // Full: this put starts over, and the drop of key 0 must outlive that.
        cache.put(&MAX_ENTRIES, 0, Instant::now());
        cache.put(&0, 0, read_began);
        assert_eq!(cache.get(&0), None, "a read older than the drop came back");
    }

    #[test]
    fn zero_holds_nothing() {
        let cache = ReadCache::new(Duration::ZERO);
        cache.put(&"k", 1, Instant::now());
        assert_eq!(cache.get(&"k"), None);
    }
}
