//! Test stores for the unit tests: one function gives a fresh, empty store
//! of either backend, so the same test body runs against both.

use super::{etcd::EtcdStore, mirror::MirroredStore, sqlite::SqliteStore, EtcdOptions, Store};
use std::sync::Arc;
use std::time::Duration;

/// How long a test store waits for its backend.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The two backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A prefix of its own on the shared test etcd.
    Etcd,
    /// The same, read through the daemon's replica of it.
    EtcdMirror,
}

/// What keeps a test store's backend alive (and removes it on drop).
pub enum Keep {
    /// The temporary directory of the SQLite file.
    Dir(tempfile::TempDir),
    /// The test etcd (stopped when its last user is done), the prefix, and
    /// whether stores on it read through a replica.
    Etcd(Arc<testsupport::etcd::Etcd>, String, bool),
}

impl Keep {
    /// Another store on the same data (another process, another node).
    pub fn reopen(&self) -> Box<dyn Store> {
        match self {
            Keep::Dir(dir) => Box::new(
                SqliteStore::open(dir.path().join("store.db").to_str().unwrap(), TIMEOUT).unwrap(),
            ),
            Keep::Etcd(etcd, prefix, mirrored) => open_etcd(etcd, prefix, *mirrored),
        }
    }
}

/// A fresh, empty store of `kind`, and what keeps it alive.
pub fn fresh(kind: Kind) -> (Keep, Box<dyn Store>) {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.db");
            let store = SqliteStore::open(path.to_str().unwrap(), TIMEOUT).unwrap();
            (Keep::Dir(dir), Box::new(store))
        }
        Kind::Etcd | Kind::EtcdMirror => {
            let etcd = testsupport::etcd::shared();
            let prefix = testsupport::etcd::unique_prefix("unit");
            let mirrored = kind == Kind::EtcdMirror;
            let store = open_etcd(&etcd, &prefix, mirrored);
            (Keep::Etcd(etcd, prefix, mirrored), store)
        }
    }
}

fn open_etcd(etcd: &testsupport::etcd::Etcd, prefix: &str, mirrored: bool) -> Box<dyn Store> {
    let store = etcd_store(etcd, prefix);
    if mirrored {
        Box::new(MirroredStore::new(Arc::new(store)).expect("etcd has a change signal"))
    } else {
        Box::new(store)
    }
}

/// Another store on the same data, opened like [`fresh`] does.
pub fn fresh_like(keep: &Keep) -> Box<dyn Store> {
    keep.reopen()
}

/// An etcd store on `etcd` under `prefix`.
pub fn etcd_store(etcd: &testsupport::etcd::Etcd, prefix: &str) -> EtcdStore {
    EtcdStore::open(
        &[etcd.host_port()],
        false,
        &EtcdOptions {
            prefix: prefix.to_string(),
            ..Default::default()
        },
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("open the test etcd store: {e}"))
}

/// The backend a test module runs against, from its path: modules whose
/// name ends in `_etcd` use etcd, `_mirror` etcd through a replica, every
/// other one SQLite. This lets one test file be compiled more than once
/// (`#[path]`) and run against each.
pub fn kind_of_module(module_path: &str) -> Kind {
    if module_path.ends_with("_etcd") {
        Kind::Etcd
    } else if module_path.ends_with("_mirror") {
        Kind::EtcdMirror
    } else {
        Kind::Sqlite
    }
}
