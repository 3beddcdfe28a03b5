//! The embedded SQLite backend of [`Store`]: one file, WAL journal, shared
//! safely by every plugin process and the daemon of one agent.
//!
//! Writers serialise on SQLite's write lock (`BEGIN IMMEDIATE`, waiting up
//! to the configured timeout); a transaction is all or nothing, so a process
//! killed at any moment leaves the file consistent. Deletions leave
//! tombstones so watchers can ask what changed since a revision; old
//! tombstones are compacted away like etcd's history.

use super::{keys, Change, Changes, Commit, KeyValue, Op, Revision, Store, StoreError, Txn};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Schema version stored in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
/// How many revisions of deletions are kept for watchers.
const TOMBSTONE_HISTORY: Revision = 100_000;
/// A WAL checkpoint runs when the revision is a multiple of this.
const CHECKPOINT_EVERY: Revision = 16;
/// Compaction runs when the revision is a multiple of this.
const COMPACT_EVERY: Revision = 1024;
const HINT: &str = "Ensure the file and its directory are readable and writable by the mesos-agent process or change CALICO_MESOS_DATASTORE.";

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Open (creating if needed, mode 0600 in a 0700 directory) the store file.
    pub fn open(path: &str, timeout: Duration) -> Result<Self, StoreError> {
        let path = PathBuf::from(path);
        let fail = |reason: String| unavailable(&path, reason);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
        let conn = Connection::open(&path).map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(timeout)
            .map_err(|e| fail(e.to_string()))?;
        // Every plugin process is short-lived and usually the last one to
        // close the file: without this each would checkpoint and delete the
        // WAL on exit (four fsyncs per request). SQLite's automatic
        // checkpoints still keep the WAL small.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(|e| fail(e.to_string()))?;
        let store = SqliteStore {
            path,
            conn: Mutex::new(conn),
        };
        store.init_schema()?;
        Ok(store)
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().expect("store mutex poisoned");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        // WAL is a property of the file, but synchronous is per connection.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA mmap_size = 268435456;")
            .map_err(|e| self.err(e))?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > SCHEMA_VERSION {
            return Err(unavailable(
                &self.path,
                format!("store schema {version} is newer than this binary understands ({SCHEMA_VERSION})"),
            ));
        }
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(|e| self.err(e))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY,
                 value BLOB NOT NULL,
                 create_rev INTEGER NOT NULL,
                 mod_rev INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS kv_mod_rev ON kv(mod_rev);
             CREATE TABLE IF NOT EXISTS tombstone (key TEXT NOT NULL, rev INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS tombstone_rev ON tombstone(rev);
             CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);",
        )
        .map_err(|e| self.err(e))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        unavailable(&self.path, e.to_string())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store mutex poisoned")
    }
}

fn unavailable(path: &Path, reason: String) -> StoreError {
    StoreError::Unavailable {
        location: format!("sqlite://{}", path.display()),
        reason,
        hint: HINT,
    }
}

fn row_to_kv(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
    })
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<Revision> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

impl Store for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?1")
            .map_err(|e| self.err(e))?;
        stmt.query_row([key], row_to_kv)
            .optional()
            .map_err(|e| self.err(e))
    }

    fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<KeyValue>, StoreError> {
        let conn = self.conn();
        let limit = limit.map_or(-1, |l| l as i64);
        let mut stmt = conn
            .prepare_cached(
                "SELECT key, value, create_rev, mod_rev FROM kv
                 WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![prefix, keys::prefix_end(prefix), limit], row_to_kv)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![prefix, keys::prefix_end(prefix)], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn commit(&self, txn: &Txn) -> Result<Commit, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut current = tx
                .prepare_cached("SELECT mod_rev FROM kv WHERE key = ?1")
                .map_err(|e| self.err(e))?;
            for guard in &txn.compares {
                let rev: Revision = current
                    .query_row([&guard.key], |r| r.get(0))
                    .optional()
                    .map_err(|e| self.err(e))?
                    .unwrap_or(0);
                if rev != guard.mod_revision {
                    return Ok(Commit::Conflict); // dropping `tx` rolls back
                }
            }
        }
        let revision = meta(&tx, "revision").map_err(|e| self.err(e))?;
        if txn.is_empty() {
            return Ok(Commit::Done(revision));
        }
        let revision = revision + 1;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev",
                )
                .map_err(|e| self.err(e))?;
            let mut delete = tx
                .prepare_cached("DELETE FROM kv WHERE key = ?1")
                .map_err(|e| self.err(e))?;
            let mut tombstone = tx
                .prepare_cached("INSERT INTO tombstone (key, rev) VALUES (?1, ?2)")
                .map_err(|e| self.err(e))?;
            for op in &txn.ops {
                match op {
                    Op::Put { key, value } => {
                        put.execute(params![key, value, revision])
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Delete { key } => {
                        if delete.execute([key]).map_err(|e| self.err(e))? > 0 {
                            tombstone
                                .execute(params![key, revision])
                                .map_err(|e| self.err(e))?;
                        }
                    }
                }
            }
        }
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")
            .and_then(|mut s| s.execute([revision]))
            .map_err(|e| self.err(e))?;
        if revision % COMPACT_EVERY == 0 && revision > TOMBSTONE_HISTORY {
            let compacted = revision - TOMBSTONE_HISTORY;
            tx.execute("DELETE FROM tombstone WHERE rev <= ?1", [compacted])
                .and_then(|_| {
                    tx.execute(
                        "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
                        [compacted],
                    )
                })
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        if revision % CHECKPOINT_EVERY == 0 {
            // With short-lived processes SQLite's auto-checkpoint copies pages
            // back but the WAL is never restarted, so it grows without bound
            // and every reader gets slower. TRUNCATE resets it (waiting for
            // readers at most the busy timeout); a failure is harmless, the
            // next checkpoint retries.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        Ok(Commit::Done(revision))
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        meta(&self.conn(), "revision").map_err(|e| self.err(e))
    }

    fn changes_since(&self, since: Revision) -> Result<Changes, StoreError> {
        let mut conn = self.conn();
        // A read transaction gives one consistent snapshot of all three tables.
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let compacted = meta(&tx, "compacted").map_err(|e| self.err(e))?;
        if since < compacted {
            return Err(StoreError::Compacted {
                requested: since,
                compacted,
            });
        }
        let revision = meta(&tx, "revision").map_err(|e| self.err(e))?;
        let mut changes: Vec<(Revision, Change)> = Vec::new();
        {
            let mut puts = tx
                .prepare_cached("SELECT key, value, create_rev, mod_rev FROM kv WHERE mod_rev > ?1")
                .map_err(|e| self.err(e))?;
            for kv in puts
                .query_map([since], row_to_kv)
                .map_err(|e| self.err(e))?
            {
                let kv = kv.map_err(|e| self.err(e))?;
                changes.push((kv.mod_revision, Change::Put(kv)));
            }
            // Only deletions not followed by a re-creation: the put above wins.
            let mut deletes = tx
                .prepare_cached(
                    "SELECT t.key, MAX(t.rev) FROM tombstone t
                     WHERE t.rev > ?1 AND NOT EXISTS (SELECT 1 FROM kv WHERE kv.key = t.key)
                     GROUP BY t.key",
                )
                .map_err(|e| self.err(e))?;
            let rows = deletes
                .query_map([since], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (key, revision) = row.map_err(|e| self.err(e))?;
                changes.push((revision, Change::Delete { key, revision }));
            }
        }
        changes.sort_by_key(|(rev, _)| *rev);
        Ok(Changes {
            revision,
            changes: changes.into_iter().map(|(_, c)| c).collect(),
        })
    }

    fn location(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}
