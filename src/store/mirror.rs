//! A replica of the whole store in the daemon's memory, kept current by the
//! store's own change feed (etcd's watch), that answers reads locally and
//! writes through.
//!
//! On etcd every read is a network round trip (about a millisecond here),
//! and an allocation or an isolate made five to ten of them in a row. The
//! daemon already follows every change of the store through the watch, so
//! it can answer its reads from a replica: an allocation then costs one
//! round trip (its transaction), a served isolate two (intent and status).
//!
//! What a read through the replica sees: every change the watch has
//! delivered, and every write made through this replica (applied at its
//! revision as soon as it committed). It can miss another writer's change
//! for as long as the watch takes to deliver it, so it is not a
//! linearizable read; nothing written depends on that, because every
//! write that depends on a read is guarded by the revisions it read (the
//! store's compare-and-swap): a stale read only makes a transaction
//! conflict. After a conflict the keys it guarded are read again from the
//! store, so the retry sees them as they are now.
//!
//! When the change feed cannot be read (an outage), reads answer from the
//! replica as last seen and writes fail as they would without it; the
//! dataplane is never torn down for lack of the store. A compacted history
//! makes the replica relist everything.
//!
//! Only for stores with a change signal (etcd): SQLite reads are local
//! already.

use super::{Change, Changes, Commit, KeyValue, Op, Revision, Store, StoreError, Txn};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// A store whose reads are answered from a replica; see the module doc.
pub struct MirroredStore {
    inner: Arc<dyn Store>,
    /// The newest revision the change feed has delivered.
    delivered: watch::Receiver<Revision>,
    /// `None` until the first read, and after a relist failed.
    replica: Mutex<Option<Replica>>,
}

impl MirroredStore {
    /// A replica of `inner`, or `None` when `inner` has no change signal
    /// to follow (its reads are then as cheap as a replica's).
    pub fn new(inner: Arc<dyn Store>) -> Option<MirroredStore> {
        let delivered = inner.change_signal()?;
        Some(MirroredStore {
            inner,
            delivered,
            replica: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Replica>> {
        self.replica.lock().expect("replica lock")
    }

    /// Runs `read` on the replica brought up to what the feed delivered,
    /// listing the store first when there is no replica yet (or the
    /// history it follows was compacted). The listing runs without the
    /// lock held.
    fn read<R>(&self, read: impl Fn(&Replica) -> R) -> Result<R, StoreError> {
        for _ in 0..3 {
            {
                let mut held = self.lock();
                if let Some(replica) = held.as_mut() {
                    match self.catch_up(replica) {
                        Ok(()) => return Ok(read(replica)),
                        Err(StoreError::Compacted { .. }) => *held = None,
                        Err(e) => {
                            // The replica as last seen: the feed is down.
                            tracing::debug!(error = %e, "the store's changes cannot be read; answering from the replica as last seen");
                            return Ok(read(replica));
                        }
                    }
                }
            }
            let mut listed = Replica::list(self.inner.as_ref())?;
            // Starts the store's feed from there if nothing follows it yet.
            if let Ok(changes) = self.inner.changes_since(listed.revision) {
                listed.apply_changes(&changes);
            }
            let mut held = self.lock();
            if held.is_none() {
                *held = Some(listed);
            }
        }
        // Compacted again and again while relisting: read the store.
        Err(StoreError::Unavailable {
            backend: super::Backend::Etcd,
            location: self.inner.location(),
            reason: "the store's history was compacted while the replica relisted".into(),
        })
    }

    /// Applies what the feed delivered since the replica's revision (a
    /// local read of the watch's log on etcd).
    fn catch_up(&self, replica: &mut Replica) -> Result<(), StoreError> {
        if *self.delivered.borrow() <= replica.revision {
            return Ok(());
        }
        // What the feed holds now: during an outage, waiting for it to
        // reconnect would stall every read (the replica's lock is held).
        let changes = self.inner.changes_delivered_since(replica.revision)?;
        replica.apply_changes(&changes);
        Ok(())
    }

    /// After a lease write, whose revision the store does not return: the
    /// replica waits for the feed to deliver this store's own writes (the
    /// store bounds that wait), so they are read back at once.
    fn follow_own_write(&self) {
        if let Some(replica) = self.lock().as_mut() {
            match self.inner.changes_since(replica.revision) {
                Ok(changes) => replica.apply_changes(&changes),
                Err(e) => {
                    tracing::debug!(error = %e, "the replica did not see its own lease write yet")
                }
            }
        }
    }

    /// After a conflict: reads every key the transaction guarded from the
    /// store, so that the retry's reads see what beat it.
    fn reread_guarded(&self, txn: &Txn) -> Result<(), StoreError> {
        for compare in &txn.compares {
            let now = self.inner.get(&compare.key)?;
            if let Some(replica) = self.lock().as_mut() {
                replica.install(&compare.key, now);
            }
        }
        Ok(())
    }
}

impl Store for MirroredStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.read(|r| r.keys.get(key).cloned())
    }

    fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<KeyValue>, StoreError> {
        self.read(|r| {
            r.under(prefix)
                .take(limit.unwrap_or(usize::MAX))
                .cloned()
                .collect()
        })
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.read(|r| r.under(prefix).map(|kv| kv.key.clone()).collect())
    }

    fn commit(&self, txn: &Txn) -> Result<Commit, StoreError> {
        let outcome = self.inner.commit(txn)?;
        match outcome {
            Commit::Done(revision) => {
                if let Some(replica) = self.lock().as_mut() {
                    replica.apply_txn(txn, revision);
                }
            }
            Commit::Conflict => self.reread_guarded(txn)?,
        }
        Ok(outcome)
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision()
    }

    fn changes_since(&self, revision: Revision) -> Result<Changes, StoreError> {
        self.inner.changes_since(revision)
    }

    fn changes_delivered_since(&self, revision: Revision) -> Result<Changes, StoreError> {
        self.inner.changes_delivered_since(revision)
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn change_signal(&self) -> Option<watch::Receiver<Revision>> {
        self.inner.change_signal()
    }

    fn put_leased(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.inner.put_leased(key, value, ttl)?;
        self.follow_own_write();
        Ok(())
    }

    fn revoke_lease(&self, key: &str) -> Result<(), StoreError> {
        self.inner.revoke_lease(key)?;
        self.follow_own_write();
        Ok(())
    }
}

/// The replicated keys. Pure: it only applies what it is given.
#[derive(Debug, Default)]
struct Replica {
    /// Every change up to this revision is applied.
    revision: Revision,
    keys: BTreeMap<String, KeyValue>,
    /// Keys deleted after `revision`, and when: an older change of theirs
    /// that arrives late must not bring them back.
    deleted: HashMap<String, Revision>,
}

impl Replica {
    /// Lists the whole store. The revision is read first: a change made
    /// between the two reads is in the listing and comes again from the
    /// feed, where it is recognised as not newer.
    fn list(store: &dyn Store) -> Result<Replica, StoreError> {
        let revision = store.revision()?;
        let keys = store
            .list("", None)?
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        Ok(Replica {
            revision,
            keys,
            deleted: HashMap::new(),
        })
    }

    /// The keys under `prefix`, in key order.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.keys
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv)
    }

    /// Whether a change of `key` made at `revision` is newer than what is
    /// held for it.
    fn is_newer(&self, key: &str, revision: Revision) -> bool {
        let held = self.keys.get(key).map_or(0, |kv| kv.mod_revision);
        let gone = self.deleted.get(key).copied().unwrap_or(0);
        revision > held.max(gone)
    }

    fn put(&mut self, kv: KeyValue) {
        if self.is_newer(&kv.key, kv.mod_revision) {
            self.deleted.remove(&kv.key);
            self.keys.insert(kv.key.clone(), kv);
        }
    }

    fn delete(&mut self, key: &str, revision: Revision) {
        if self.is_newer(key, revision) {
            self.keys.remove(key);
            self.deleted.insert(key.to_string(), revision);
        }
    }

    /// Applies the feed's changes; the replica is then complete up to
    /// their revision.
    fn apply_changes(&mut self, changes: &Changes) {
        for change in &changes.changes {
            match change {
                Change::Put(kv) => self.put(kv.clone()),
                Change::Delete { key, revision } => self.delete(key, *revision),
            }
        }
        self.revision = self.revision.max(changes.revision);
        let complete = self.revision;
        self.deleted.retain(|_, at| *at > complete);
    }

    /// Applies a transaction committed at `revision`. A key written twice
    /// in it ends as its last op left it (as in the store).
    fn apply_txn(&mut self, txn: &Txn, revision: Revision) {
        let key_of = |op: &Op| match op {
            Op::Put { key, .. } | Op::Delete { key } => key.clone(),
        };
        let last: HashMap<String, &Op> = txn.ops.iter().map(|op| (key_of(op), op)).collect();
        for op in last.into_values() {
            match op {
                Op::Put { key, value } => {
                    let create_revision =
                        self.keys.get(key).map_or(revision, |kv| kv.create_revision);
                    self.put(KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: revision,
                    });
                }
                Op::Delete { key } => self.delete(key, revision),
            }
        }
    }

    /// Installs `key` as just read from the store (`None`: absent).
    fn install(&mut self, key: &str, now: Option<KeyValue>) {
        match now {
            Some(kv) => self.put(kv),
            None => {
                // Deleted at some revision after the one held.
                if let Some(held) = self.keys.remove(key) {
                    self.deleted.insert(key.to_string(), held.mod_revision);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, create: Revision, modified: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: modified,
        }
    }

    fn value(r: &Replica, key: &str) -> Option<String> {
        r.keys
            .get(key)
            .map(|kv| String::from_utf8(kv.value.clone()).unwrap())
    }

    fn changes(revision: Revision, changes: Vec<Change>) -> Changes {
        Changes { revision, changes }
    }

    /// Runs `f` on a thread of its own; its result, or a panic naming
    /// `what` when it takes longer than `limit` (a stall is a failure).
    fn within<R: Send + 'static>(
        what: &str,
        limit: Duration,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
    }

    fn put(store: &dyn Store, key: &str, value: &str) -> Result<Commit, StoreError> {
        let mut txn = Txn::default();
        txn.put(key, value.as_bytes().to_vec());
        store.commit(&txn)
    }

    fn read(store: &dyn Store, key: &str) -> Option<String> {
        store
            .get(key)
            .unwrap()
            .map(|kv| String::from_utf8(kv.value).unwrap())
    }

    #[test]
    fn a_stalled_etcd_leaves_reads_answered_and_writes_failing_until_it_resumes() {
        use super::super::testing::{etcd_store, TIMEOUT};
        // An etcd of its own: frozen below, which the shared one must not be.
        let etcd = testsupport::etcd::Etcd::start();
        let prefix = testsupport::etcd::unique_prefix("stall");
        let mirror: Arc<dyn Store> = Arc::new(
            MirroredStore::new(Arc::new(etcd_store(&etcd, &prefix))).expect("a change signal"),
        );
        let other = etcd_store(&etcd, &prefix);
        put(mirror.as_ref(), "a", "1").unwrap();
        assert_eq!(read(mirror.as_ref(), "a").as_deref(), Some("1"));

        // On a failure below, dropping `etcd` kills it, frozen or not.
        etcd.signal(libc::SIGSTOP);
        let m = mirror.clone();
        let seen = within("a read during the stall", TIMEOUT, move || {
            read(m.as_ref(), "a")
        });
        assert_eq!(seen.as_deref(), Some("1"), "the replica as last seen");
        let m = mirror.clone();
        let written = within("a write during the stall", TIMEOUT * 3, move || {
            put(m.as_ref(), "b", "2")
        });
        assert!(
            matches!(written, Err(StoreError::Unavailable { .. })),
            "a write to a stalled etcd: {written:?}"
        );
        etcd.signal(libc::SIGCONT);

        // Resumed: another writer's change reaches the replica through the
        // feed, and the replica's own writes go through again.
        put(&other, "c", "3").unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT * 2;
        while read(mirror.as_ref(), "c").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the replica never saw the write made after the stall"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        put(mirror.as_ref(), "b", "2").unwrap();
        assert_eq!(read(mirror.as_ref(), "b").as_deref(), Some("2"));
    }

    #[test]
    fn own_writes_are_seen_at_once_and_the_feed_does_not_undo_them() {
        let mut r = Replica {
            revision: 10,
            ..Default::default()
        };
        r.put(kv("a", "old", 5, 5));
        let mut txn = Txn::default();
        txn.put("a", b"mine".to_vec());
        txn.put("b", b"new".to_vec());
        txn.delete("gone");
        r.apply_txn(&txn, 12);
        assert_eq!(value(&r, "a").as_deref(), Some("mine"));
        assert_eq!(
            r.keys["a"].create_revision, 5,
            "an update keeps its creation"
        );
        assert_eq!(r.keys["b"].create_revision, 12);
        // The feed then delivers an older change of `a` and our own write.
        r.apply_changes(&changes(
            12,
            vec![
                Change::Put(kv("a", "someone's", 5, 11)),
                Change::Put(kv("b", "new", 12, 12)),
            ],
        ));
        assert_eq!(value(&r, "a").as_deref(), Some("mine"));
        assert_eq!(r.revision, 12);
    }

    #[test]
    fn a_key_written_twice_in_one_txn_ends_as_its_last_op_left_it() {
        let mut r = Replica::default();
        let mut txn = Txn::default();
        txn.put("t", b"first".to_vec());
        txn.delete("t");
        txn.put("t", b"last".to_vec());
        txn.put("u", b"u".to_vec());
        txn.delete("u");
        r.apply_txn(&txn, 4);
        assert_eq!(value(&r, "t").as_deref(), Some("last"));
        assert_eq!(value(&r, "u"), None);
    }

    #[test]
    fn a_deleted_key_is_not_brought_back_by_a_late_older_put() {
        let mut r = Replica::default();
        r.put(kv("k", "v1", 3, 3));
        let mut txn = Txn::default();
        txn.delete("k");
        r.apply_txn(&txn, 9);
        r.apply_changes(&changes(8, vec![Change::Put(kv("k", "v2", 3, 7))]));
        assert_eq!(value(&r, "k"), None);
        // Once the replica is complete past the delete, the tombstone goes,
        // and a newer put brings the key back.
        r.apply_changes(&changes(
            9,
            vec![Change::Delete {
                key: "k".into(),
                revision: 9,
            }],
        ));
        assert!(r.deleted.is_empty());
        r.apply_changes(&changes(10, vec![Change::Put(kv("k", "v3", 10, 10))]));
        assert_eq!(value(&r, "k").as_deref(), Some("v3"));
    }

    #[test]
    fn a_reread_after_a_conflict_replaces_a_stale_key_and_removes_a_deleted_one() {
        let mut r = Replica::default();
        r.put(kv("stale", "old", 2, 2));
        r.put(kv("deleted", "x", 2, 4));
        r.install("stale", Some(kv("stale", "current", 2, 6)));
        r.install("deleted", None);
        r.install("never", None);
        assert_eq!(value(&r, "stale").as_deref(), Some("current"));
        assert_eq!(value(&r, "deleted"), None);
        // The delete comes through the feed later: nothing changes.
        r.apply_changes(&changes(
            7,
            vec![Change::Delete {
                key: "deleted".into(),
                revision: 7,
            }],
        ));
        assert_eq!(value(&r, "deleted"), None);
        assert_eq!(value(&r, "stale").as_deref(), Some("current"));
    }

    #[test]
    fn lists_under_a_prefix_in_key_order() {
        let mut r = Replica::default();
        for (k, rev) in [("a/2", 1), ("a", 2), ("a/1", 3), ("b/1", 4), ("a/3", 5)] {
            r.put(kv(k, k, rev, rev));
        }
        let keys: Vec<&str> = r.under("a/").map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["a/1", "a/2", "a/3"]);
        assert_eq!(r.under("").count(), 5);
        assert_eq!(r.under("c/").count(), 0);
    }
}
