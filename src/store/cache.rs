//! The objects under one key prefix, decoded once and kept up to date from
//! the store's changes, for the runs that need them all: the node's policy
//! (every endpoint of the cluster, for netgroup membership) and its routes
//! to other nodes.
//!
//! Listing and decoding every endpoint on each run made a policy run cost
//! O(endpoints) in store reads and JSON parsing, on the isolate path. The
//! cache reads only what changed since the revision it last saw; after a
//! compaction of the store's history, or an undecodable value, it relists.
//! The changes may arrive later than a direct read would see them (etcd's
//! come from a watch): whoever needs one object as it is now reads it and
//! [notes](PrefixCache::note) it; whoever needs everything as it is now
//! (the stray sweep) reads the store.
//!
//! A reader that must follow every change (the node's policy, kept up to
//! date incrementally) registers as a [`Follower`] and is told, on each
//! look, which keys changed since its last one and what they held then.
//!
//! Only reads the store.

use super::{decode, Change, Revision, Store, StoreError};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// The objects under `prefix` as of a store revision; see the module doc.
#[derive(Debug)]
pub struct PrefixCache<T> {
    prefix: &'static str,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    cached: Option<Cached<T>>,
    /// What changed for each [`Follower`], by its number.
    pending: Vec<Changed<T>>,
}

/// One reader of a cache's changes (see [`PrefixCache::follow`]).
#[derive(Debug)]
pub struct Follower(usize);

/// What changed under the prefix since a [`Follower`] last looked.
#[derive(Debug, Clone, PartialEq)]
pub enum Changed<T> {
    /// Anything may have: the cache (re)read everything (its first
    /// listing, or a relist after compaction).
    Everything,
    /// These keys, each with the value it had when the follower last
    /// looked (`None`: absent then). A key may be back at that value.
    Keys(HashMap<String, Option<T>>),
}

impl<T: Clone> Changed<T> {
    /// Notes that `key`, which held `before`, is changing.
    fn note(&mut self, key: &str, before: Option<&T>) {
        if let Changed::Keys(keys) = self {
            if !keys.contains_key(key) {
                keys.insert(key.to_string(), before.cloned());
            }
        }
    }
}

#[derive(Debug)]
struct Cached<T> {
    /// Every change up to this revision is in `objects`.
    revision: Revision,
    /// The objects by store key.
    objects: BTreeMap<String, T>,
    /// Each object's modification revision: a change older than what is
    /// held (an object [noted](PrefixCache::note) ahead of the changes) is
    /// not applied.
    revisions: HashMap<String, Revision>,
}

impl<T: DeserializeOwned + Clone> Cached<T> {
    /// Reads everything. The revision is read first: a change made
    /// between the two reads is in the listing and comes again from the
    /// next `changes_since`, where applying it again changes nothing.
    fn list(store: &dyn Store, prefix: &str) -> Result<Cached<T>, StoreError> {
        let revision = store.revision()?;
        let listed = store.list(prefix, None)?;
        let objects = listed
            .iter()
            .map(|kv| Ok((kv.key.clone(), decode(kv)?)))
            .collect::<Result<_, StoreError>>()?;
        let revisions = listed
            .iter()
            .map(|kv| (kv.key.clone(), kv.mod_revision))
            .collect();
        Ok(Cached {
            revision,
            objects,
            revisions,
        })
    }

    fn is_newer(&self, key: &str, revision: Revision) -> bool {
        self.revisions.get(key).is_none_or(|held| revision > *held)
    }

    /// Sets `key` to `value` (`None`: deletes it) at `revision`, telling
    /// every follower.
    fn set(&mut self, key: &str, value: Option<T>, revision: Revision, pending: &mut [Changed<T>]) {
        for p in pending.iter_mut() {
            p.note(key, self.objects.get(key));
        }
        match value {
            Some(v) => {
                self.objects.insert(key.to_string(), v);
                self.revisions.insert(key.to_string(), revision);
            }
            None => {
                self.objects.remove(key);
                self.revisions.remove(key);
            }
        }
    }

    /// Applies the store's changes since `self.revision`.
    fn refresh(
        &mut self,
        store: &dyn Store,
        prefix: &str,
        pending: &mut [Changed<T>],
    ) -> Result<(), StoreError> {
        let changes = store.changes_since(self.revision)?;
        for change in &changes.changes {
            match change {
                Change::Put(kv)
                    if kv.key.starts_with(prefix) && self.is_newer(&kv.key, kv.mod_revision) =>
                {
                    let value = decode(kv)?;
                    self.set(&kv.key, Some(value), kv.mod_revision, pending);
                }
                Change::Delete { key, revision }
                    if key.starts_with(prefix) && self.is_newer(key, *revision) =>
                {
                    self.set(key, None, *revision, pending);
                }
                _ => {}
            }
        }
        self.revision = changes.revision;
        Ok(())
    }
}

impl<T: DeserializeOwned + Clone> PrefixCache<T> {
    /// An empty cache of the objects under `prefix` (filled on first use).
    pub fn new(prefix: &'static str) -> PrefixCache<T> {
        PrefixCache {
            prefix,
            state: Mutex::new(State {
                cached: None,
                pending: Vec::new(),
            }),
        }
    }

    /// A new reader of the changes: its first
    /// [`with_changes`](Self::with_changes) is told
    /// [`Changed::Everything`].
    pub fn follow(&self) -> Follower {
        let mut state = self.state.lock().expect("prefix cache lock");
        state.pending.push(Changed::Everything);
        Follower(state.pending.len() - 1)
    }

    /// Brings the cache up to the store's latest revision and runs `f`
    /// over every object under the prefix, by key.
    pub fn with_current<R>(
        &self,
        store: &dyn Store,
        f: impl FnOnce(&BTreeMap<String, T>) -> R,
    ) -> Result<R, StoreError> {
        let mut state = self.state.lock().expect("prefix cache lock");
        let objects = self.current(store, &mut state)?;
        Ok(f(objects))
    }

    /// As [`with_current`](Self::with_current), and tells `f` what changed
    /// since `follower`'s last call (from then on, it is told only what
    /// changes after this one). Nothing is taken when the store fails.
    pub fn with_changes<R>(
        &self,
        store: &dyn Store,
        follower: &Follower,
        f: impl FnOnce(&BTreeMap<String, T>, Changed<T>) -> R,
    ) -> Result<R, StoreError> {
        let mut state = self.state.lock().expect("prefix cache lock");
        self.current(store, &mut state)?;
        let changed = std::mem::replace(
            &mut state.pending[follower.0],
            Changed::Keys(HashMap::new()),
        );
        let objects = &state.cached.as_ref().expect("just read").objects;
        Ok(f(objects, changed))
    }

    fn current<'s>(
        &self,
        store: &dyn Store,
        state: &'s mut State<T>,
    ) -> Result<&'s BTreeMap<String, T>, StoreError> {
        let State { cached, pending } = state;
        let current = match cached.take() {
            None => Self::relist(store, self.prefix, pending)?,
            Some(mut c) => match c.refresh(store, self.prefix, pending) {
                Ok(()) => c,
                // History we have not seen is gone, or a value we cannot
                // read was half applied: start again from a full listing.
                Err(StoreError::Compacted { .. } | StoreError::Corrupt { .. }) => {
                    Self::relist(store, self.prefix, pending)?
                }
                // The store did not answer; nothing was applied.
                Err(e) => {
                    *cached = Some(c);
                    return Err(e);
                }
            },
        };
        Ok(&cached.insert(current).objects)
    }

    fn relist(
        store: &dyn Store,
        prefix: &str,
        pending: &mut [Changed<T>],
    ) -> Result<Cached<T>, StoreError> {
        let listed = Cached::list(store, prefix)?;
        pending.fill(Changed::Everything);
        Ok(listed)
    }

    /// Records `value` as `key`'s state at `mod_revision`, read from the
    /// store itself, unless the cache already holds a newer one. The
    /// store's changes may reach the cache later than a direct read (etcd's
    /// are served from a watch), so a caller about to act on an object it
    /// has just read notes it first: the next [`with_current`] includes it
    /// (an isolate's own endpoint must be in the policy that makes it Ready).
    /// Nothing is noted before the first listing, which reads it anyway.
    ///
    /// [`with_current`]: PrefixCache::with_current
    pub fn note(&self, key: &str, value: T, mod_revision: Revision) {
        let mut state = self.state.lock().expect("prefix cache lock");
        let State { cached, pending } = &mut *state;
        if let Some(cached) = cached.as_mut() {
            if cached.is_newer(key, mod_revision) {
                cached.set(key, Some(value), mod_revision, pending);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Endpoint, NetnsId};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{keys, Txn};
    use std::time::Duration;

    fn ep(node: &str, id: &str) -> Endpoint {
        Endpoint {
            node: node.into(),
            container_id: id.into(),
            netns: NetnsId { pid: 1, inode: 1 },
            ipv4: vec![],
            ipv6: vec![],
            netgroups: vec!["g".into()],
            labels: Default::default(),
            holders: Default::default(),
            generation: 1,
            deletion_requested: false,
        }
    }

    /// A fresh SQLite store (and the directory it lives in, removed on drop).
    fn sqlite() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(path.to_str().unwrap(), Duration::from_secs(5)).unwrap();
        (dir, store)
    }

    fn put(store: &dyn Store, e: &Endpoint) {
        let mut txn = Txn::default();
        txn.put_json(keys::endpoint(&e.node, &e.container_id), e);
        store.commit(&txn).unwrap();
    }

    fn ids(cache: &PrefixCache<Endpoint>, store: &dyn Store) -> Vec<String> {
        cache
            .with_current(store, |all| {
                all.values()
                    .map(|e| format!("{}/{}", e.node, e.container_id))
                    .collect()
            })
            .unwrap()
    }

    #[test]
    fn follows_puts_and_deletes_and_relists_after_compaction() {
        let (_dir, store) = sqlite();
        let cache = PrefixCache::<Endpoint>::new(keys::ENDPOINTS);
        assert!(ids(&cache, &store).is_empty());

        put(&store, &ep("a", "1"));
        put(&store, &ep("b", "2"));
        assert_eq!(ids(&cache, &store), ["a/1", "b/2"]);

        let mut changed = ep("a", "1");
        changed.netgroups = vec!["other".into()];
        put(&store, &changed);
        let mut txn = Txn::default();
        txn.delete(keys::endpoint("b", "2"));
        store.commit(&txn).unwrap();
        let netgroups = cache
            .with_current(&store, |all| {
                all.values()
                    .map(|e| e.netgroups.clone())
                    .collect::<Vec<_>>()
            })
            .unwrap();
        assert_eq!(netgroups, [vec!["other".to_string()]]);

        // Another key's changes are ignored; history compacted past what
        // the cache saw makes it relist.
        let mut txn = Txn::default();
        txn.put("profile/x".to_string(), b"{}".to_vec());
        store.commit(&txn).unwrap();
        put(&store, &ep("c", "3"));
        let mut txn = Txn::default();
        txn.delete(keys::endpoint("a", "1"));
        store.commit(&txn).unwrap();
        store.compact(store.revision().unwrap()).unwrap();
        assert_eq!(ids(&cache, &store), ["c/3"]);
    }

    #[test]
    fn a_noted_object_is_seen_and_older_changes_do_not_undo_it() {
        let (_dir, store) = sqlite();
        let cache = PrefixCache::<Endpoint>::new(keys::ENDPOINTS);
        put(&store, &ep("a", "1"));
        assert_eq!(ids(&cache, &store), ["a/1"]);
        // As a watch that lags would: the store moved on (generation 2
        // written at some revision), the cache is told of generation 3.
        let mut second = ep("a", "1");
        second.generation = 2;
        put(&store, &second);
        let key = keys::endpoint("a", "1");
        let mut third = ep("a", "1");
        third.generation = 3;
        cache.note(&key, third, store.revision().unwrap() + 1);
        let generation = |cache: &PrefixCache<Endpoint>| {
            cache
                .with_current(&store, |all| all[&key].generation)
                .unwrap()
        };
        assert_eq!(generation(&cache), 3, "the older change is not applied");
        // A newer change is (the other key takes the revision noted).
        put(&store, &ep("a", "2"));
        let mut fourth = ep("a", "1");
        fourth.generation = 4;
        put(&store, &fourth);
        assert_eq!(generation(&cache), 4);
        let mut txn = Txn::default();
        txn.delete(key.clone());
        store.commit(&txn).unwrap();
        assert_eq!(ids(&cache, &store), ["a/2"]);
    }

    #[test]
    fn an_undecodable_endpoint_is_an_error_until_it_is_mended() {
        let (_dir, store) = sqlite();
        let cache = PrefixCache::<Endpoint>::new(keys::ENDPOINTS);
        put(&store, &ep("a", "1"));
        assert_eq!(ids(&cache, &store), ["a/1"]);
        let mut txn = Txn::default();
        txn.put(keys::endpoint("a", "2"), b"not json".to_vec());
        store.commit(&txn).unwrap();
        let err = cache.with_current(&store, |_| ()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        put(&store, &ep("a", "2"));
        assert_eq!(ids(&cache, &store), ["a/1", "a/2"]);
    }

    #[test]
    fn a_follower_is_told_each_changed_key_with_its_value_before() {
        let (_dir, store) = sqlite();
        let cache = PrefixCache::<Endpoint>::new(keys::ENDPOINTS);
        let follower = cache.follow();
        let changed = |cache: &PrefixCache<Endpoint>| {
            cache
                .with_changes(&store, &follower, |_, changed| match changed {
                    Changed::Everything => None,
                    Changed::Keys(keys) => Some(
                        keys.into_iter()
                            .map(|(k, v)| (k, v.map(|e| e.generation)))
                            .collect::<BTreeMap<_, _>>(),
                    ),
                })
                .unwrap()
        };
        put(&store, &ep("a", "1"));
        assert_eq!(changed(&cache), None, "the first look is everything");
        assert_eq!(changed(&cache), Some(BTreeMap::new()));
        // Changes seen by another reader of the cache still reach it, with
        // the value before the first of them.
        let mut second = ep("a", "1");
        second.generation = 2;
        put(&store, &second);
        put(&store, &ep("b", "2"));
        assert_eq!(ids(&cache, &store), ["a/1", "b/2"]);
        let mut third = ep("a", "1");
        third.generation = 3;
        let key = keys::endpoint("a", "1");
        cache.note(&key, third, store.revision().unwrap() + 1);
        let mut txn = Txn::default();
        txn.delete(keys::endpoint("b", "2"));
        store.commit(&txn).unwrap();
        assert_eq!(
            changed(&cache),
            Some(BTreeMap::from([
                (key.clone(), Some(1)),
                (keys::endpoint("b", "2"), None)
            ]))
        );
        // A relist is everything again.
        put(&store, &ep("c", "3"));
        store.compact(store.revision().unwrap()).unwrap();
        assert_eq!(changed(&cache), None);
    }
}
