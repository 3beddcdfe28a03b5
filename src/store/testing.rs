//! Test stores for the unit tests: one function gives a fresh, empty store
//! of either backend, so the same test body runs against both.

use super::{etcd::EtcdStore, sqlite::SqliteStore, EtcdOptions, Store};
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
}

/// What keeps a test store's backend alive (and removes it on drop).
pub enum Keep {
    /// The temporary directory of the SQLite file.
    Dir(tempfile::TempDir),
    /// The test etcd (stopped when its last user is done) and the prefix.
    Etcd(Arc<testsupport::etcd::Etcd>, String),
}

impl Keep {
    /// Another store on the same data (another process, another node).
    pub fn reopen(&self) -> Box<dyn Store> {
        match self {
            Keep::Dir(dir) => Box::new(
                SqliteStore::open(dir.path().join("store.db").to_str().unwrap(), TIMEOUT).unwrap(),
            ),
            Keep::Etcd(etcd, prefix) => Box::new(etcd_store(etcd, prefix)),
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
        Kind::Etcd => {
            let etcd = testsupport::etcd::shared();
            let prefix = testsupport::etcd::unique_prefix("unit");
            let store = etcd_store(&etcd, &prefix);
            (Keep::Etcd(etcd, prefix), Box::new(store))
        }
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
/// name ends in `_etcd` use etcd, every other one SQLite. This lets one
/// test file be compiled twice (`#[path]`) and run against both.
pub fn kind_of_module(module_path: &str) -> Kind {
    if module_path.ends_with("_etcd") {
        Kind::Etcd
    } else {
        Kind::Sqlite
    }
}
