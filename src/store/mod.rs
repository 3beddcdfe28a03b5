//! The desired-state store: a key-value space with revisions and
//! compare-and-swap transactions, the shape etcd v3 has.
//!
//! Everything above this module (IPAM, endpoints, profiles) is written once
//! against the [`Store`] trait; a backend only has to provide ordered keys,
//! a global revision that grows with every write, multi-key transactions
//! guarded by per-key modification revisions, and "what changed since
//! revision R". This module owns the trait and the typed-object helpers; it
//! must not know about Mesos or the kernel.

pub mod keys;
pub mod sqlite;

use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// A store revision. It grows by one with every committed transaction that
/// changes something; 0 means "before anything was written".
pub type Revision = i64;

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key, e.g. `block/198.18.0.0-26`.
    pub key: String,
    /// The value bytes (JSON for every object the project stores).
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key.
    pub create_revision: Revision,
    /// Revision of the transaction that last changed the key.
    pub mod_revision: Revision,
}

/// A guard of a transaction: the key must still be at this modification
/// revision (0: the key must not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The guarded key.
    pub key: String,
    /// The modification revision the key must have (0 = absent).
    pub mod_revision: Revision,
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Delete a key (deleting an absent key is not an error).
    Delete {
        /// The key.
        key: String,
    },
}

/// A multi-key transaction: every compare must hold, then every op is
/// applied atomically under one new revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Guards checked before anything is written.
    pub compares: Vec<Compare>,
    /// Writes applied when all guards hold.
    pub ops: Vec<Op>,
}

impl Txn {
    /// Guard `key` to still be at `mod_revision` (0 = absent).
    pub fn compare(&mut self, key: impl Into<String>, mod_revision: Revision) {
        self.compares.push(Compare {
            key: key.into(),
            mod_revision,
        });
    }

    /// Put a typed object as JSON.
    pub fn put_json<T: Serialize>(&mut self, key: impl Into<String>, value: &T) {
        self.ops.push(Op::Put {
            key: key.into(),
            value: serde_json::to_vec(value).expect("stored objects always serialise"),
        });
    }

    /// Put raw bytes.
    pub fn put(&mut self, key: impl Into<String>, value: Vec<u8>) {
        self.ops.push(Op::Put {
            key: key.into(),
            value,
        });
    }

    /// Delete a key.
    pub fn delete(&mut self, key: impl Into<String>) {
        self.ops.push(Op::Delete { key: key.into() });
    }

    /// True when the transaction writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The outcome of [`Store::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Every guard held; the writes are durable at this revision.
    Done(Revision),
    /// A guard did not hold; nothing was written. Re-read and try again.
    Conflict,
}

/// One change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was created or changed; this is its current value.
    Put(KeyValue),
    /// The key was deleted at this revision.
    Delete {
        /// The deleted key.
        key: String,
        /// Revision of the deleting transaction.
        revision: Revision,
    },
}

/// Everything that changed after a revision, up to `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The store's revision when the changes were read.
    pub revision: Revision,
    /// The changes, oldest first; at most one per key (its latest state).
    pub changes: Vec<Change>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The datastore could not be reached or used.
    #[error("Failed to communicate with the datastore at '{location}' ({reason}). {hint}")]
    Unavailable {
        /// Where the store is (URL or path).
        location: String,
        /// What went wrong, from the backend.
        reason: String,
        /// How to point the agent at another store.
        hint: &'static str,
    },
    /// The datastore URL is not one we understand.
    #[error("unsupported datastore '{0}': use sqlite:///path/to/store.db")]
    BadUrl(String),
    /// A watcher asked for changes older than what the store still keeps.
    #[error("revision {requested} has been compacted (oldest kept: {compacted}); relist")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The newest revision that is no longer available.
        compacted: Revision,
    },
    /// A stored value is not what its key says it is.
    #[error("stored value at '{key}' is corrupt: {source}")]
    Corrupt {
        /// The key whose value failed to decode.
        key: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// The desired-state store every entry point writes intent to.
pub trait Store: Send + Sync {
    /// Read one key.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Read every key that starts with `prefix`, in key order, at most `limit`.
    fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<KeyValue>, StoreError>;
    /// Read only the keys that start with `prefix`, in key order.
    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Apply a transaction atomically if its guards hold.
    fn commit(&self, txn: &Txn) -> Result<Commit, StoreError>;
    /// The current revision.
    fn revision(&self) -> Result<Revision, StoreError>;
    /// What changed after `revision` (exclusive).
    fn changes_since(&self, revision: Revision) -> Result<Changes, StoreError>;
    /// Where the store is, for messages (a URL, never a secret).
    fn location(&self) -> String;
}

/// Open the store a datastore URL names.
pub fn open(url: &str, timeout: Duration) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.to_string()));
        }
        return Ok(Box::new(sqlite::SqliteStore::open(path, timeout)?));
    }
    Err(StoreError::BadUrl(url.to_string()))
}

/// Decode a stored JSON value, naming the key on failure.
pub fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, StoreError> {
    serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
        key: kv.key.clone(),
        source,
    })
}

/// A typed object read from the store, with the revision to guard a write on.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The decoded object.
    pub value: T,
    /// Its modification revision (0 when it does not exist yet).
    pub mod_revision: Revision,
}

/// Read and decode one object.
pub fn get_json<T: DeserializeOwned>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<Versioned<T>>, StoreError> {
    store
        .get(key)?
        .map(|kv| {
            Ok(Versioned {
                value: decode(&kv)?,
                mod_revision: kv.mod_revision,
            })
        })
        .transpose()
}

/// Read and decode every object under a prefix.
pub fn list_json<T: DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<Versioned<T>>, StoreError> {
    store
        .list(prefix, None)?
        .iter()
        .map(|kv| {
            Ok(Versioned {
                value: decode(kv)?,
                mod_revision: kv.mod_revision,
            })
        })
        .collect()
}
