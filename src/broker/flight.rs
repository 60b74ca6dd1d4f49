//! The in-process single flight: one turn at a time per connection, for a refresh or a
//! disconnect. A connection's lock lives only while a turn holds or waits for it, so the
//! map stays as small as the requests in flight, whatever names callers send. A turn owns
//! what it needs (it is `'static`): a refresh the caller stopped waiting for keeps it
//! until the provider answers.

use crate::store::ConnectionKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

type Lock = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(super) struct FlightLocks {
    locks: Mutex<HashMap<ConnectionKey, Lock>>,
}

/// A connection's turn: held until dropped.
pub(super) struct Turn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: Arc<FlightLocks>,
    key: ConnectionKey,
}

impl FlightLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<ConnectionKey, Lock>> {
        // The map holds no invariant a panic elsewhere could break.
        self.locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for `key`'s turn. The lock is taken from the map only under the map's mutex,
    /// so a lock nobody else holds a copy of is one nobody waits for.
    pub(super) async fn turn(self: &Arc<Self>, key: &ConnectionKey) -> Turn {
        let lock = self.map().entry(key.clone()).or_default().clone();
        // Built before the wait: a caller that gives up waiting (a cancelled request) still
        // removes the lock it no longer waits for (the wait, made later, is dropped first,
        // and with it the lock's copy it holds; the test below checks the map is empty).
        let mut turn = Turn {
            guard: None,
            locks: self.clone(),
            key: key.clone(),
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
    }

    /// `key`'s turn if nobody holds it or waits for it now; `None` otherwise.
    pub(super) fn try_turn(self: &Arc<Self>, key: &ConnectionKey) -> Option<Turn> {
        let lock = self.map().entry(key.clone()).or_default().clone();
        // As in `turn`: built first, so that a lock taken for nothing leaves the map.
        let mut turn = Turn {
            guard: None,
            locks: self.clone(),
            key: key.clone(),
        };
        turn.guard = Some(lock.try_lock_owned().ok()?);
        Some(turn)
    }

    /// Connections with a turn held or waited for.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
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
