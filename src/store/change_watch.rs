//! Changes made to the store by other processes (the CLI, another oauthd on the same
//! file), as one process sees them: what lets the hot paths' caches keep a value past
//! their age bound while nobody else writes, and still see another process's change
//! within that bound.
//!
//! The store looks every `LOOK_EVERY` (SQLite: its writer compares `PRAGMA
//! data_version`, which moves only for commits made by other connections, and every
//! change this process makes goes through that connection). Each look records when it
//! was taken and whether something had changed since the one before; a change bumps the
//! generation, and a cache drops every value read under an older generation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the store looks for other processes' changes.
pub const LOOK_EVERY: Duration = Duration::from_millis(250);

pub struct ChangeWatch {
    /// What `confirmed` counts from.
    base: Instant,
    /// Bumped by each look that found a change made elsewhere.
    generation: AtomicU64,
    /// Nanoseconds after `base` at which the last look began, plus one (0: none yet):
    /// every change made elsewhere before that moment is counted in `generation`.
    confirmed: AtomicU64,
}

impl Default for ChangeWatch {
    fn default() -> Self {
        ChangeWatch {
            base: Instant::now(),
            generation: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
        }
    }
}

impl ChangeWatch {
    /// Changes made elsewhere seen so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The moment up to which every change made elsewhere is counted in `generation`
    /// (read this before `generation`: a look records its change first).
    pub fn confirmed_at(&self) -> Option<Instant> {
        match self.confirmed.load(Ordering::SeqCst) {
            0 => None,
            n => self.base.checked_add(Duration::from_nanos(n - 1)),
        }
    }

    /// This process changed the store for a caller that was gone by the time the change
    /// committed (a request cancelled while it waited): nobody is left to drop what the
    /// caches hold of it, so everything goes, as for a change made elsewhere.
    pub fn changed_unseen(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A look that began at `began` found that something changed elsewhere since the
    /// previous look (`changed`), or that nothing did.
    pub fn record(&self, began: Instant, changed: bool) {
        if changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        let nanos = began.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.confirmed.fetch_max(nanos + 1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_confirms_up_to_its_start_and_a_change_bumps_the_generation() {
        let watch = ChangeWatch::default();
        assert_eq!(watch.confirmed_at(), None);
        let began = Instant::now();
        watch.record(began, false);
        assert_eq!(watch.generation(), 0);
        let confirmed = watch.confirmed_at().expect("confirmed");
        assert!(confirmed <= began && began.duration_since(confirmed) < Duration::from_micros(1));
        watch.record(Instant::now(), true);
        assert_eq!(watch.generation(), 1);
        // An older look finishing late does not move the confirmation back.
        let later = watch.confirmed_at().expect("confirmed");
        watch.record(began, false);
        assert_eq!(watch.confirmed_at(), Some(later));
    }
}
