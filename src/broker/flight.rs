//! The in-process single flight: one turn at a time per connection, for a refresh or a
//! disconnect. A connection's lock lives only while a turn holds or waits for it, so the
//! map stays as small as the requests in flight, whatever names callers send. A turn owns
//! what it needs (it is `'static`): a refresh the caller stopped waiting for keeps it
//! until the provider answers. What the turn's holder is doing (`Doing`) is kept beside its
//! lock, for a caller that waited for the turn in vain to be told what held it.

use crate::store::ConnectionKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

type Lock = Arc<tokio::sync::Mutex<()>>;

/// What the holder of a connection's turn is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Doing {
    /// Reading the connection, or finding the provider's endpoints (its discovery
    /// document), before a refresh.
    Preparing = 0,
    /// Waiting for another oauthd process's refresh of the connection (its lease).
    WaitingForOther = 1,
    /// Waiting for the provider's answer to a refresh.
    AskingProvider = 2,
    /// Saving what the provider answered.
    Saving = 3,
    /// Deleting the connection, from its start (waiting for another process's refresh,
    /// revoking its grant at the provider) to its end.
    Deleting = 4,
}

impl Doing {
    fn from_u8(n: u8) -> Doing {
        match n {
            1 => Doing::WaitingForOther,
            2 => Doing::AskingProvider,
            3 => Doing::Saving,
            4 => Doing::Deleting,
            _ => Doing::Preparing,
        }
    }
}

/// A connection's lock, and what its holder is doing.
#[derive(Default, Clone)]
struct Flight {
    lock: Lock,
    doing: Arc<AtomicU8>,
}

#[derive(Default)]
pub(super) struct FlightLocks {
    locks: Mutex<HashMap<ConnectionKey, Flight>>,
}

/// A connection's turn: held until dropped.
pub(super) struct Turn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    now: DoingNow,
    locks: Arc<FlightLocks>,
    key: ConnectionKey,
}

/// Where a turn's holder says what it does, apart from the turn (a task that does not
/// hold it).
#[derive(Clone)]
pub(super) struct DoingNow(Arc<AtomicU8>);

impl DoingNow {
    pub(super) fn set(&self, doing: Doing) {
        self.0.store(doing as u8, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> Doing {
        Doing::from_u8(self.0.load(Ordering::Relaxed))
    }
}

impl FlightLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<ConnectionKey, Flight>> {
        // The map holds no invariant a panic elsewhere could break.
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for `key`'s turn. The lock is taken from the map only under the map's mutex,
    /// so a lock nobody else holds a copy of is one nobody waits for.
    pub(super) async fn turn(self: &Arc<Self>, key: &ConnectionKey) -> Turn {
        let (lock, mut turn) = self.unheld(key);
        // Built before the wait: a caller that gives up waiting (a cancelled request) still
        // removes the lock it no longer waits for (the wait, made later, is dropped first,
        // and with it the lock's copy it holds; the test below checks the map is empty).
        turn.guard = Some(lock.lock_owned().await);
        turn.doing(Doing::Preparing);
        turn
    }

    /// `key`'s lock, and a turn of it not held yet.
    fn unheld(self: &Arc<Self>, key: &ConnectionKey) -> (Lock, Turn) {
        let Flight { lock, doing } = self.map().entry(key.clone()).or_default().clone();
        let turn = Turn {
            guard: None,
            now: DoingNow(doing),
            locks: self.clone(),
            key: key.clone(),
        };
        (lock, turn)
    }

    /// What the holder of `key`'s turn is doing (`Preparing` when nobody holds it).
    pub(super) fn doing(&self, key: &ConnectionKey) -> Doing {
        let doing = self.map().get(key).map(|f| f.doing.load(Ordering::Relaxed));
        doing.map_or(Doing::Preparing, Doing::from_u8)
    }

    /// `key`'s turn if nobody holds it or waits for it now; `None` otherwise.
    pub(super) fn try_turn(self: &Arc<Self>, key: &ConnectionKey) -> Option<Turn> {
        // As in `turn`: built first, so that a lock taken for nothing leaves the map.
        let (lock, mut turn) = self.unheld(key);
        turn.guard = Some(lock.try_lock_owned().ok()?);
        turn.doing(Doing::Preparing);
        Some(turn)
    }

    /// Connections with a turn held or waited for.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Turn {
    /// Says what the turn's holder does now.
    pub(super) fn doing(&self, doing: Doing) {
        self.now.set(doing);
    }

    /// Where a task that does not hold the turn says what its holder does.
    pub(super) fn now(&self) -> DoingNow {
        self.now.clone()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Not what the next holder does, in the moment before it says (a wait given up
        // held nothing, and says nothing).
        if let Some(guard) = self.guard.take() {
            self.now.set(Doing::Preparing);
            drop(guard);
        }
        let mut map = self.locks.map();
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::strong_count(&f.lock) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn locks_live_only_while_a_turn_is_held_or_waited_for() {
        let locks = Arc::new(FlightLocks::default());
        for account in ["a", "b", "nobody"] {
            drop(locks.turn(&ConnectionKey::new("p", account)).await);
        }
        assert_eq!(locks.len(), 0);

        let key = ConnectionKey::new("p", "a");
        let first = locks.turn(&key).await;
        let mut waiting = Box::pin(locks.turn(&key));
        // The second turn waits while the first is held.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err()
        );
        drop(first);
        assert_eq!(locks.len(), 1, "removed while a turn waited for it");
        let second = waiting.await;
        assert_eq!(locks.len(), 1);
        drop(second);
        assert_eq!(locks.len(), 0);

        // A wait given up on (a cancelled request) leaves nothing behind either: given up
        // while the lock is held, or after it was handed to the waiter, which is dropped
        // before it took its turn.
        let held = locks.turn(&key).await;
        let given_up = tokio::time::timeout(Duration::from_millis(10), locks.turn(&key)).await;
        assert!(given_up.is_err());
        drop(held);
        assert_eq!(locks.len(), 0);
        let held = locks.turn(&key).await;
        let mut waiting = Box::pin(locks.turn(&key));
        assert!(
            tokio::time::timeout(Duration::from_millis(10), waiting.as_mut())
                .await
                .is_err()
        );
        drop(held);
        drop(waiting);
        assert_eq!(locks.len(), 0);
        let again = tokio::time::timeout(Duration::from_millis(100), locks.turn(&key)).await;
        assert!(again.is_ok(), "the lock was left held");
    }

    #[tokio::test]
    async fn what_a_turns_holder_does_is_read_by_those_that_wait_for_it() {
        let locks = Arc::new(FlightLocks::default());
        let key = ConnectionKey::new("p", "a");
        assert_eq!(locks.doing(&key), Doing::Preparing);
        let held = locks.turn(&key).await;
        let waiting = tokio::spawn({
            let (locks, key) = (locks.clone(), key.clone());
            async move { locks.turn(&key).await.now().get() }
        });
        held.doing(Doing::AskingProvider);
        assert_eq!(locks.doing(&key), Doing::AskingProvider);
        // Said by a task that does not hold the turn.
        held.now().set(Doing::Saving);
        assert_eq!(locks.doing(&key), Doing::Saving);
        // A wait given up leaves what the holder does as it is.
        let given_up = tokio::time::timeout(Duration::from_millis(10), locks.turn(&key)).await;
        assert!(given_up.is_err());
        assert_eq!(locks.doing(&key), Doing::Saving);
        // The next holder starts afresh, and so does what is read meanwhile.
        drop(held);
        assert_eq!(locks.doing(&key), Doing::Preparing);
        assert_eq!(waiting.await.unwrap(), Doing::Preparing);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn a_turn_tried_is_had_only_when_free_and_leaves_nothing_behind() {
        let locks = Arc::new(FlightLocks::default());
        let key = ConnectionKey::new("p", "a");
        let held = locks.turn(&key).await;
        assert!(locks.try_turn(&key).is_none(), "had while held");
        assert_eq!(locks.len(), 1);
        drop(held);
        assert_eq!(locks.len(), 0);
        let tried = locks.try_turn(&key);
        assert!(tried.is_some(), "not had while free");
        assert!(locks.try_turn(&key).is_none(), "had twice");
        drop(tried);
        assert_eq!(locks.len(), 0);
    }
}
