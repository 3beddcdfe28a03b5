//! One async lock per key, made when first asked for and forgotten when
//! nobody holds or waits for it. The daemon reconciles an endpoint either
//! from its runner or directly for a request it serves; this keeps the two
//! from running one endpoint at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The locks, by key.
#[derive(Debug)]
pub struct KeyLocks<K> {
    locks: Mutex<HashMap<K, Arc<AsyncMutex<()>>>>,
}

impl<K> Default for KeyLocks<K> {
    fn default() -> Self {
        KeyLocks {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

/// Holds one key's lock until dropped.
#[derive(Debug)]
pub struct KeyGuard<'a, K: Eq + Hash + Clone> {
    locks: &'a KeyLocks<K>,
    key: K,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> KeyLocks<K> {
    /// Waits until nobody else holds `key`'s lock, and takes it.
    pub async fn lock(&self, key: K) -> KeyGuard<'_, K> {
        let lock = self
            .locks
            .lock()
            .expect("key locks")
            .entry(key.clone())
            .or_default()
            .clone();
        KeyGuard {
            locks: self,
            key,
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyGuard<'_, K> {
    fn drop(&mut self) {
        let mut locks = self.locks.locks.lock().expect("key locks");
        drop(self.guard.take());
        // Nobody else holds or waits for it: only the map has it now. A
        // waiter clones the lock under this same map lock, so none can
        // appear between the check and the removal.
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How many keys have a lock now (held, or waited for).
    fn kept<K>(locks: &KeyLocks<K>) -> usize {
        locks.locks.lock().unwrap().len()
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_is_held_once_at_a_time_and_others_are_free() {
        let locks = Arc::new(KeyLocks::<String>::default());
        let first = locks.lock("a".to_string()).await;
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _second = locks.lock("a".to_string()).await;
                tokio::time::Instant::now()
            }
        });
        // Another key is not held up by "a".
        drop(locks.lock("b".to_string()).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "the second holder of a waits");
        let released = tokio::time::Instant::now();
        drop(first);
        let taken = waiting.await.unwrap();
        assert!(taken >= released);
        assert_eq!(kept(&locks), 0, "no lock is kept for keys nobody holds");
    }

    #[tokio::test]
    async fn a_lock_someone_waits_for_is_kept_when_its_holder_lets_go() {
        let locks = Arc::new(KeyLocks::<u32>::default());
        let first = locks.lock(1).await;
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move { drop(locks.lock(1).await) }
        });
        while locks
            .locks
            .lock()
            .unwrap()
            .get(&1)
            .is_none_or(|l| Arc::strong_count(l) < 3)
        {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert_eq!(kept(&locks), 1, "the waiter's lock stays");
        waiter.await.unwrap();
        assert_eq!(kept(&locks), 0);
    }
}
