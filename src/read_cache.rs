//! Values read from the store, kept in memory: the hot paths' cache (access tokens for the
//! token API, live states for verify).
//!
//! A value is answered from memory while its read began within `max_age`. What this
//! process changes drops the entry (or, for a change that touches many, every entry) at
//! once, and a read that began before the drop cannot put its older value back; what
//! another process changes on the same store is seen within `max_age`. With `max_age`
//! zero nothing is held.
//!
//! Where the store watches for other processes' changes (SQLite), a value lives on past
//! `max_age` for as long as the watch has looked within `max_age` and seen nothing change
//! elsewhere since the value was read: another process's change is still seen within
//! `max_age`, and a value read once answers until this process changes it.

use crate::store::ChangeWatch;
use prometheus::IntCounter;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries held at most, by default.
const MAX_ENTRIES: usize = 10_000;
/// Drops are remembered per slot of keys (by hash), not per key: memory stays fixed, and a
/// read of another key of the slot that began before the drop only misses its put.
const DROP_SLOTS: usize = 1024;

pub struct ReadCache<K, V> {
    max_age: Duration,
    max_entries: usize,
    /// Bytes of values held at most, as `weigh` counts them.
    max_bytes: usize,
    weigh: fn(&V) -> usize,
    watch: Option<Arc<ChangeWatch>>,
    /// Hits and misses, for `/metrics`.
    counters: Option<(IntCounter, IntCounter)>,
    inner: Mutex<Inner<K, V>>,
}

/// Taken before the store is read; `put` holds the value only if nothing outranked it.
#[derive(Clone, Copy)]
pub struct ReadTicket {
    began: Instant,
    generation: u64,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Keys in the order their values were put, each with its entry's `put` number: a full
    /// cache lets go of the oldest first, one for each new value. Keys dropped or put again
    /// since stay here until they reach the front; the queue is kept under twice
    /// `max_entries` by letting go of its front.
    order: VecDeque<(K, u64)>,
    /// The `put` number of the next value held.
    puts: u64,
    /// The bytes of the values in `entries`.
    bytes: usize,
    /// When a key of each slot was last dropped: older reads of its keys cannot put their
    /// values back.
    dropped: Vec<Option<Instant>>,
    /// When everything was last dropped.
    cleared: Option<Instant>,
}

struct Entry<V> {
    value: V,
    /// When the read that found the value began.
    since: Instant,
    /// The watch's generation when that read began.
    generation: u64,
    bytes: usize,
    /// Which item of `order` stands for this value.
    put: u64,
}

impl<K, V> Inner<K, V> {
    fn slot(&self, key: &K) -> usize
    where
        K: Hash + Eq,
    {
        let hash = self.entries.hasher().hash_one(key);
        usize::try_from(hash % DROP_SLOTS as u64).unwrap_or(0)
    }

    fn remove(&mut self, key: &K) -> Option<Entry<V>>
    where
        K: Hash + Eq,
    {
        let old = self.entries.remove(key)?;
        self.bytes -= old.bytes;
        Some(old)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ReadCache<K, V> {
    pub fn new(max_age: Duration) -> Self {
        ReadCache {
            max_age,
            max_entries: MAX_ENTRIES,
            max_bytes: usize::MAX,
            weigh: |_| 0,
            watch: None,
            counters: None,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                puts: 0,
                bytes: 0,
                dropped: vec![None; DROP_SLOTS],
                cleared: None,
            }),
        }
    }

    /// Values live on while `watch` sees no change made elsewhere (see the module's text).
    pub fn watched_by(mut self, watch: Option<Arc<ChangeWatch>>) -> Self {
        self.watch = watch;
        self
    }

    /// Counts hits and misses as cache `name` in `/metrics`.
    pub fn counted(mut self, name: &str) -> Self {
        self.counters = Some(crate::metrics::cache_counters(name));
        self
    }

    /// Holds at most `max_entries` values, and values of at most `max_bytes` in all as
    /// `weigh` counts them (one larger than an eighth of that is not held).
    pub fn bounded(mut self, max_entries: usize, max_bytes: usize, weigh: fn(&V) -> usize) -> Self {
        self.max_entries = max_entries.max(4);
        self.max_bytes = max_bytes;
        self.weigh = weigh;
        self
    }

    /// When the watch last confirmed and what it had counted by then (in this order: a
    /// look records its change before its confirmation).
    fn watched(&self) -> (Option<Instant>, u64) {
        match &self.watch {
            Some(watch) => {
                let confirmed = watch.confirmed_at();
                (confirmed, watch.generation())
            }
            None => (None, 0),
        }
    }

    /// What the watch has counted so far (for a ticket: its confirmation time is not
    /// needed).
    fn generation(&self) -> u64 {
        self.watch.as_ref().map_or(0, |watch| watch.generation())
    }

    /// Whether a value read as `entry` says may still be answered.
    fn fresh(&self, entry: &Entry<V>, confirmed: Option<Instant>, generation: u64) -> bool {
        if entry.generation != generation {
            return false;
        }
        let from = confirmed.map_or(entry.since, |c| c.max(entry.since));
        from.elapsed() < self.max_age
    }

    /// To take before reading the store, for `put`.
    pub fn begin_read(&self) -> ReadTicket {
        ReadTicket {
            began: Instant::now(),
            generation: self.generation(),
        }
    }

    /// The value held for `key`, if it may still be answered.
    pub fn get(&self, key: &K) -> Option<V> {
        let found = self.lookup(key);
        if let Some((hits, misses)) = &self.counters {
            if found.is_some() { hits } else { misses }.inc();
        }
        found
    }

    fn lookup(&self, key: &K) -> Option<V> {
        if self.max_age.is_zero() {
            return None;
        }
        let (confirmed, generation) = self.watched();
        let inner = self.inner.lock().ok()?;
        let entry = inner.entries.get(key)?;
        self.fresh(entry, confirmed, generation)
            .then(|| entry.value.clone())
    }

    /// Holds `value`, found by the read `ticket` began, unless the entry (or everything)
    /// was dropped or replaced after that read began, or something changed elsewhere.
    pub fn put(&self, key: &K, value: V, ticket: ReadTicket) {
        if self.max_age.is_zero() {
            return;
        }
        let bytes = (self.weigh)(&value);
        if bytes > self.max_bytes / 8 {
            return;
        }
        if ticket.generation != self.generation() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let slot = inner.slot(key);
        // A drop in the same clock tick as the read's start outranks it too.
        let outranked = |at: Option<Instant>| at.is_some_and(|at| at >= ticket.began);
        if outranked(inner.cleared)
            || inner.dropped.get(slot).is_some_and(|&at| outranked(at))
            || inner
                .entries
                .get(key)
                .is_some_and(|e| e.since > ticket.began)
        {
            return;
        }
        inner.remove(key);
        self.make_room(&mut inner, bytes);
        let put = inner.puts;
        inner.puts += 1;
        let entry = Entry {
            value,
            since: ticket.began,
            generation: ticket.generation,
            bytes,
            put,
        };
        inner.bytes += bytes;
        inner.entries.insert(key.clone(), entry);
        inner.order.push_back((key.clone(), put));
    }

    /// Lets go of the oldest values until one of `bytes` more fits: a few per put, never a
    /// pass over the whole cache while the lock is held (that pass, a quarter of 100,000
    /// verified states at a time, stalled both HTTP workers for milliseconds:
    /// bench/README.md).
    fn make_room(&self, inner: &mut Inner<K, V>, bytes: usize) {
        while inner.entries.len() >= self.max_entries
            || inner.bytes.saturating_add(bytes) > self.max_bytes
            || inner.order.len() >= self.max_entries.saturating_mul(2)
        {
            let Some((key, put)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&key).is_some_and(|e| e.put == put) {
                inner.remove(&key);
            }
        }
    }

    /// Drops what is held for `key`: it changed in this process. Reads that began before
    /// now cannot put their value back. Callers go through `forget_after`, so that the drop
    /// comes after the write on every path.
    fn forget(&self, key: &K) {
        if self.max_age.is_zero() {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            inner.remove(key);
            let slot = inner.slot(key);
            if let Some(at) = inner.dropped.get_mut(slot) {
                *at = Some(Instant::now());
            }
        }
    }

    /// Drops what is held for `key` when the guard goes: taken before a write that changes
    /// the key's value, it drops after the write even when the caller is cancelled while
    /// waiting for the store, or returns early with an error.
    pub fn forget_after(&self, key: &K) -> ForgetAfter<'_, K, V> {
        ForgetAfter {
            cache: self,
            key: Some(key.clone()),
            armed: true,
        }
    }

    /// Like `forget_after`, for a write that may change any entry.
    pub fn forget_all_after(&self) -> ForgetAfter<'_, K, V> {
        ForgetAfter {
            cache: self,
            key: None,
            armed: true,
        }
    }

    /// Drops everything (a change that may touch any entry, e.g. revoking by subject). The
    /// values are let go of after the lock is released: freeing a full cache (100,000
    /// states) takes milliseconds, which every other reader would wait out.
    fn forget_all(&self) {
        if self.max_age.is_zero() {
            return;
        }
        let held = match self.inner.lock() {
            Ok(mut inner) => {
                inner.bytes = 0;
                inner.cleared = Some(Instant::now());
                Some((
                    std::mem::take(&mut inner.entries),
                    std::mem::take(&mut inner.order),
                ))
            }
            Err(_) => None,
        };
        drop(held);
    }
}

/// Drops a key (or everything) from a `ReadCache` when it goes out of scope.
pub struct ForgetAfter<'a, K: Hash + Eq + Clone, V: Clone> {
    cache: &'a ReadCache<K, V>,
    /// `None`: everything.
    key: Option<K>,
    /// False once the write is known to have changed nothing.
    armed: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> ForgetAfter<'_, K, V> {
    /// The write has ended and said what it changed: only `keys` go (none, when it changed
    /// nothing); what else is held stays.
    pub fn changed_only(mut self, keys: &[K]) {
        self.armed = false;
        for key in keys {
            self.cache.forget(key);
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Drop for ForgetAfter<'_, K, V> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match &self.key {
            Some(key) => self.cache.forget(key),
            None => self.cache.forget_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_read_that_began_before_a_drop_cannot_put_its_value_back() {
        let cache = ReadCache::new(MINUTE);
        let ticket = cache.begin_read();
        cache.put(&"k", "old", ticket);
        assert_eq!(cache.get(&"k"), Some("old"));
        cache.forget(&"k");
        assert_eq!(cache.get(&"k"), None);
        // The racing call finishes its read of the old row only now.
        cache.put(&"k", "old", ticket);
        assert_eq!(cache.get(&"k"), None, "a stale read outranked the drop");
        // A read that began after the drop is held.
        cache.put(&"k", "new", cache.begin_read());
        assert_eq!(cache.get(&"k"), Some("new"));
    }

    #[test]
    fn forget_all_outranks_every_older_read() {
        let cache = ReadCache::new(MINUTE);
        let ticket = cache.begin_read();
        cache.put(&"a", 1, ticket);
        cache.forget_all();
        assert_eq!(cache.get(&"a"), None);
        cache.put(&"b", 2, ticket);
        assert_eq!(cache.get(&"b"), None);
        cache.put(&"b", 3, cache.begin_read());
        assert_eq!(cache.get(&"b"), Some(3));
    }

    #[test]
    fn a_full_cache_makes_room_and_still_keeps_older_reads_out() {
        let cache = ReadCache::new(MINUTE).bounded(100, usize::MAX, |_| 0);
        let ticket = cache.begin_read();
        cache.forget(&0);
        for k in 1..1000 {
            cache.put(&k, k, cache.begin_read());
            assert!(cache.inner.lock().expect("lock").entries.len() <= 100);
        }
        // The newest value is held: room is made, not everything thrown away.
        assert_eq!(cache.get(&999), Some(999));
        cache.put(&0, 0, ticket);
        assert_eq!(cache.get(&0), None, "a read older than the drop came back");
    }

    #[test]
    fn a_full_cache_lets_go_of_its_oldest_value_one_for_each_new_one() {
        let cache = ReadCache::new(MINUTE).bounded(100, usize::MAX, |_| 0);
        for k in 0..100 {
            cache.put(&k, k, cache.begin_read());
        }
        // Put again: now the newest, not the oldest.
        cache.put(&0, 0, cache.begin_read());
        cache.put(&100, 100, cache.begin_read());
        cache.put(&101, 101, cache.begin_read());
        assert_eq!(cache.inner.lock().expect("lock").entries.len(), 100);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.get(&2), None);
        for k in [0, 3, 50, 99, 100, 101] {
            assert_eq!(cache.get(&k), Some(k), "{k} was let go");
        }
    }

    #[test]
    fn the_order_of_puts_stays_bounded_while_values_come_and_go() {
        let cache = ReadCache::new(MINUTE).bounded(100, usize::MAX, |_| 0);
        for k in 0..10_000 {
            cache.put(&k, k, cache.begin_read());
            if k % 2 == 0 {
                cache.forget(&k);
            } else {
                cache.put(&k, k, cache.begin_read());
            }
            let inner = cache.inner.lock().expect("lock");
            assert!(inner.order.len() <= 200, "{}", inner.order.len());
            assert!(inner.entries.len() <= 100);
        }
        assert_eq!(cache.get(&9_999), Some(9_999));
    }

    #[test]
    fn values_are_bounded_by_their_bytes() {
        let cache = ReadCache::new(MINUTE).bounded(1000, 800, |v: &Vec<u8>| v.len());
        let big = "big".to_owned();
        cache.put(&big, vec![0; 101], cache.begin_read());
        assert_eq!(cache.get(&big), None, "larger than an eighth of the budget");
        for k in 0..100 {
            cache.put(&k.to_string(), vec![0; 100], cache.begin_read());
            assert!(cache.inner.lock().expect("lock").bytes <= 800);
        }
        let inner = cache.inner.lock().expect("lock");
        let counted: usize = inner.entries.values().map(|e| e.bytes).sum();
        assert_eq!(inner.bytes, counted);
        assert!(inner.entries.contains_key("99"));
    }

    #[test]
    fn forget_after_drops_when_the_guard_goes_and_outranks_reads_begun_before() {
        let cache = ReadCache::new(MINUTE);
        cache.put(&"k", 1, cache.begin_read());
        let ticket = {
            let _writing = cache.forget_after(&"k");
            // A read racing the write (it began while the write was under way).
            let ticket = cache.begin_read();
            assert_eq!(cache.get(&"k"), Some(1), "dropped only when the guard goes");
            ticket
        };
        assert_eq!(cache.get(&"k"), None);
        cache.put(&"k", 1, ticket);
        assert_eq!(
            cache.get(&"k"),
            None,
            "a read from before the drop came back"
        );
        cache.put(&"other", 2, cache.begin_read());
        drop(cache.forget_all_after());
        assert_eq!(cache.get(&"other"), None);
    }

    #[test]
    fn zero_holds_nothing() {
        let cache = ReadCache::new(Duration::ZERO);
        cache.put(&"k", 1, cache.begin_read());
        assert_eq!(cache.get(&"k"), None);
    }

    #[test]
    fn unwatched_values_answer_for_max_age() {
        let cache = ReadCache::new(Duration::from_millis(100));
        cache.put(&"k", 1, cache.begin_read());
        assert_eq!(cache.get(&"k"), Some(1));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(cache.get(&"k"), None);
    }

    #[test]
    fn watched_values_live_while_nothing_changes_elsewhere() {
        let watch = Arc::new(ChangeWatch::default());
        let cache = ReadCache::new(Duration::from_millis(100)).watched_by(Some(watch.clone()));
        cache.put(&"k", 1, cache.begin_read());
        std::thread::sleep(Duration::from_millis(200));
        // The watch has not looked for longer than max_age: as if unwatched.
        assert_eq!(cache.get(&"k"), None);
        watch.record(Instant::now(), false);
        assert_eq!(
            cache.get(&"k"),
            Some(1),
            "nothing changed elsewhere since the read"
        );
        // A change made elsewhere drops what was read before it was seen...
        let ticket = cache.begin_read();
        watch.record(Instant::now(), true);
        assert_eq!(cache.get(&"k"), None);
        // ...and what was being read while it was seen.
        cache.put(&"k", 2, ticket);
        assert_eq!(cache.get(&"k"), None);
        cache.put(&"k", 3, cache.begin_read());
        assert_eq!(cache.get(&"k"), Some(3));
    }
}
