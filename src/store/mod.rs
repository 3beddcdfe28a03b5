//! The desired-state store: a key-value space with revisions and
//! compare-and-swap transactions, the shape etcd v3 has.
//!
//! Everything above this module (IPAM, endpoints, profiles) is written once
//! against the [`Store`] trait; a backend only has to provide ordered keys,
//! a global revision that grows with every write, multi-key transactions
//! guarded by per-key modification revisions, and "what changed since
//! revision R". This module owns the trait and the typed-object helpers; it
//! must not know about Mesos or the kernel.

pub mod cache;
pub mod etcd;
pub mod keys;
pub mod mirror;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use serde::{de::DeserializeOwned, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// A store revision. It grows with every committed transaction that changes
/// something (by one in SQLite; etcd's global revision may also jump for
/// writes outside our prefix); 0 means "before anything was written".
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

/// Which kind of datastore an error is about: it decides the operator text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite,
    /// An etcd v3 cluster.
    Etcd,
}

/// The hint of an unreachable SQLite store.
const SQLITE_HINT: &str = "Ensure the file and its directory are readable and writable by the mesos-agent process or change CALICO_MESOS_DATASTORE.";

/// The operator text of [`StoreError::Unavailable`]: for etcd exactly the
/// text of PROTOCOL.md ("When the store cannot be reached").
fn unavailable_text(backend: &Backend, location: &str, reason: &str) -> String {
    match backend {
        Backend::Sqlite => format!(
            "Failed to communicate with the datastore at '{location}' ({reason}). {SQLITE_HINT}"
        ),
        Backend::Etcd => format!(
            "Failed to communicate with etcd at '{location}'. Ensure that it is up and running or change ETCD_ENDPOINTS (or ETCD_AUTHORITY) for the mesos-agent process."
        ),
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The datastore could not be reached or used within the timeout.
    #[error("{}", unavailable_text(.backend, .location, .reason))]
    Unavailable {
        /// Which kind of store.
        backend: Backend,
        /// Where the store is (a path or the endpoints; never credentials).
        location: String,
        /// What went wrong, from the backend (logged; for etcd not part of
        /// the operator text, which PROTOCOL.md fixes).
        reason: String,
    },
    /// The datastore answered but refused the request (authentication,
    /// permissions, a request etcd considers invalid).
    #[error("etcd at '{location}' refused the request: {reason} (check etcd_username, etcd_password and the user's permissions on the key prefix)")]
    Refused {
        /// The endpoints.
        location: String,
        /// etcd's answer.
        reason: String,
    },
    /// The datastore URL is not one we understand.
    #[error("unsupported datastore '{url}': {reason} (use sqlite:///path/to/store.db, etcd://host:2379[,host:2379] or etcds://host:2379)")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A datastore setting is unusable (a missing certificate file, TLS
    /// without a CA, a user without a password).
    #[error("bad value for {key}: {message}")]
    BadConfig {
        /// The configuration key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
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
///
/// The methods are synchronous and may be called from plain threads and
/// from inside a tokio runtime alike; every call answers within the
/// store's timeout.
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
    /// Like [`Store::changes_since`], but never waits: what the store's
    /// change feed has delivered so far. For a reader that applies its own
    /// writes itself (the daemon's replica), which must not stall during an
    /// outage. Stores without a feed of their own answer `changes_since`.
    fn changes_delivered_since(&self, revision: Revision) -> Result<Changes, StoreError> {
        self.changes_since(revision)
    }
    /// Where the store is, for messages (a URL, never a secret).
    fn location(&self) -> String;
    /// A signal that moves (to the newest revision seen) whenever the store
    /// learns of a change, so a watcher can call [`Store::changes_since`]
    /// at once instead of waiting for its next poll. `None`: the store has
    /// no push notification (poll it).
    fn change_signal(&self) -> Option<tokio::sync::watch::Receiver<Revision>> {
        None
    }
    /// Keep `key` = `value` present while the caller renews it: the first
    /// call writes it under a new lease of `ttl`; each later call from the
    /// same Store renews the lease (and rewrites the value only if it
    /// changed, so renewals do not create revisions); the store deletes the
    /// key when `ttl` passes without a renewal (the process died or lost
    /// the store).
    fn put_leased(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;
    /// Delete a leased key now and stop its lease (idempotent).
    fn revoke_lease(&self, key: &str) -> Result<(), StoreError>;
}

/// A boxed store is a store (so `&Box<dyn Store>` passes as `&dyn Store`).
impl<S: Store + ?Sized> Store for Box<S> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        (**self).get(key)
    }
    fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<KeyValue>, StoreError> {
        (**self).list(prefix, limit)
    }
    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        (**self).list_keys(prefix)
    }
    fn commit(&self, txn: &Txn) -> Result<Commit, StoreError> {
        (**self).commit(txn)
    }
    fn revision(&self) -> Result<Revision, StoreError> {
        (**self).revision()
    }
    fn changes_since(&self, revision: Revision) -> Result<Changes, StoreError> {
        (**self).changes_since(revision)
    }
    fn changes_delivered_since(&self, revision: Revision) -> Result<Changes, StoreError> {
        (**self).changes_delivered_since(revision)
    }
    fn location(&self) -> String {
        (**self).location()
    }
    fn change_signal(&self) -> Option<tokio::sync::watch::Receiver<Revision>> {
        (**self).change_signal()
    }
    fn put_leased(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        (**self).put_leased(key, value, ttl)
    }
    fn revoke_lease(&self, key: &str) -> Result<(), StoreError> {
        (**self).revoke_lease(key)
    }
}

/// The default key prefix of the etcd backend.
pub const DEFAULT_ETCD_PREFIX: &str = "/calico-mesos/v1/";

/// A secret (a password): compared and cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings of the etcd backend (ignored by SQLite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// CA bundle that signs the servers' certificates (required by etcds://).
    pub ca_cert_file: Option<PathBuf>,
    /// Client certificate, for etcd's client certificate authentication.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// etcd user (etcd's own authentication).
    pub username: Option<String>,
    /// The user's password.
    pub password: Option<Secret>,
    /// Every key of ours lives under this prefix (ends with `/`).
    pub prefix: String,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            ca_cert_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            prefix: DEFAULT_ETCD_PREFIX.to_string(),
        }
    }
}

/// Everything [`open`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The datastore URL: `sqlite:///path`, `etcd://host:port[,host:port]`
    /// or `etcds://host:port[,...]`.
    pub datastore: String,
    /// How long one call may wait for the store (connecting included).
    pub timeout: Duration,
    /// etcd settings.
    pub etcd: EtcdOptions,
}

impl StoreOptions {
    /// Options for `datastore` with `timeout` and default etcd settings.
    pub fn new(datastore: impl Into<String>, timeout: Duration) -> Self {
        StoreOptions {
            datastore: datastore.into(),
            timeout,
            etcd: EtcdOptions::default(),
        }
    }
}

/// A parsed datastore URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    /// `sqlite:///path`.
    Sqlite(PathBuf),
    /// `etcd://` (plain, `tls` false) or `etcds://` (TLS): `host:port` each.
    Etcd {
        /// The endpoints, `host:port` (port defaults to 2379).
        endpoints: Vec<String>,
        /// Whether the endpoints speak TLS.
        tls: bool,
    },
}

impl Datastore {
    /// Parse a datastore URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Datastore, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("no file path"));
            }
            return Ok(Datastore::Sqlite(PathBuf::from(path)));
        }
        let (rest, tls) = if let Some(rest) = url.strip_prefix("etcds://") {
            (rest, true)
        } else if let Some(rest) = url.strip_prefix("etcd://") {
            (rest, false)
        } else {
            return Err(bad("unknown scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut endpoints = Vec::new();
        for item in rest.split(',') {
            endpoints.push(host_port(item.trim()).map_err(|reason| bad(&reason))?);
        }
        Ok(Datastore::Etcd { endpoints, tls })
    }

    /// The URL form of `ETCD_ENDPOINTS` (`http://h:p,https://h:p` — one
    /// scheme for all) or of the legacy `ETCD_AUTHORITY` (`host:port`).
    pub fn from_etcd_env(
        endpoints: Option<&str>,
        authority: Option<&str>,
    ) -> Option<Result<String, (&'static str, String)>> {
        if let Some(list) = endpoints.filter(|v| !v.trim().is_empty()) {
            let mut tls = None;
            let mut hosts = Vec::new();
            for item in list.split(',').map(str::trim) {
                let (rest, this_tls) = if let Some(rest) = item.strip_prefix("https://") {
                    (rest, true)
                } else if let Some(rest) = item.strip_prefix("http://") {
                    (rest, false)
                } else {
                    return Some(Err((
                        "ETCD_ENDPOINTS",
                        format!("'{item}' is not an http:// or https:// URL"),
                    )));
                };
                if tls.is_some_and(|t| t != this_tls) {
                    return Some(Err((
                        "ETCD_ENDPOINTS",
                        "mixes http:// and https:// endpoints".to_string(),
                    )));
                }
                tls = Some(this_tls);
                match host_port(rest.strip_suffix('/').unwrap_or(rest)) {
                    Ok(hp) => hosts.push(hp),
                    Err(reason) => return Some(Err(("ETCD_ENDPOINTS", reason))),
                }
            }
            let scheme = if tls == Some(true) { "etcds" } else { "etcd" };
            return Some(Ok(format!("{scheme}://{}", hosts.join(","))));
        }
        let authority = authority.map(str::trim).filter(|v| !v.is_empty())?;
        Some(match host_port(authority) {
            Ok(hp) => Ok(format!("etcd://{hp}")),
            Err(reason) => Err(("ETCD_AUTHORITY", reason)),
        })
    }
}

/// Check one `host[:port]` (IPv6 in brackets), adding the default port.
fn host_port(item: &str) -> Result<String, String> {
    if item.is_empty() {
        return Err("an empty endpoint".into());
    }
    if item.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("'{item}' is not host:port"));
    }
    let (host, port) = match item.rsplit_once(':') {
        Some((host, port))
            if !host.ends_with(':') && (!host.starts_with('[') || host.ends_with(']')) =>
        {
            (host, Some(port))
        }
        _ => (item, None),
    };
    if host.is_empty() || (host.starts_with('[') != host.ends_with(']')) {
        return Err(format!("'{item}' has no host"));
    }
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "'{item}': write an IPv6 address in brackets, [addr]:port"
        ));
    }
    match port {
        None => Ok(format!("{host}:2379")),
        Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(format!("{host}:{p}")),
        Some(p) => Err(format!("'{item}' has a bad port '{p}'")),
    }
}

/// Open the store `options` name.
pub fn open(options: &StoreOptions) -> Result<Box<dyn Store>, StoreError> {
    match Datastore::parse(&options.datastore)? {
        Datastore::Sqlite(path) => Ok(Box::new(sqlite::SqliteStore::open(
            path.to_str().ok_or_else(|| StoreError::BadUrl {
                url: options.datastore.clone(),
                reason: "the path is not UTF-8".into(),
            })?,
            options.timeout,
        )?)),
        Datastore::Etcd { endpoints, tls } => Ok(Box::new(etcd::EtcdStore::open(
            &endpoints,
            tls,
            &options.etcd,
            options.timeout,
        )?)),
    }
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
