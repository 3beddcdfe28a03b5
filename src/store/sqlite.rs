//! The embedded SQLite backend of [`Store`]: one file, WAL journal, shared
//! safely by every plugin process and the daemon of one agent.
//!
//! Writers serialise on SQLite's write lock (`BEGIN IMMEDIATE`, waiting up
//! to the configured timeout); a transaction is all or nothing, so a process
//! killed at any moment leaves the file consistent. Deletions leave
//! tombstones so watchers can ask what changed since a revision; old
//! tombstones are compacted away like etcd's history.
//!
//! Leases ([`Store::put_leased`]) are a `lease` table of expiry times:
//! reads treat a leased key whose expiry passed as absent, and the next
//! write transaction (any commit, `put_leased`, `revoke_lease`, or a
//! `changes_since` that finds one) deletes it with a tombstone, so
//! watchers see the deletion.

use super::{
    keys, Backend, Change, Changes, Commit, KeyValue, Op, Revision, Store, StoreError, Txn,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Schema version stored in `PRAGMA user_version`: 2 added the `lease`
/// table (a version-1 file is upgraded in place on open).
const SCHEMA_VERSION: i64 = 2;
/// How many revisions of deletions are kept for watchers.
const TOMBSTONE_HISTORY: Revision = 100_000;
/// A WAL checkpoint runs when the revision is a multiple of this.
const CHECKPOINT_EVERY: Revision = 16;
/// Compaction runs when the revision is a multiple of this.
const COMPACT_EVERY: Revision = 1024;

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
             CREATE TABLE IF NOT EXISTS lease (
                 key TEXT PRIMARY KEY,
                 expires_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS lease_expires ON lease(expires_ms);
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

    /// Forget the deletions at or before `revision`: a later
    /// `changes_since` from before it answers [`StoreError::Compacted`]
    /// (what the periodic compaction does, on demand).
    pub fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        compact_to(&tx, revision).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Run `write` in a write transaction at the next revision, after the
    /// expired leased keys are deleted. `write` answers `None` to roll back
    /// (a guard did not hold), or whether it changed a key: the revision is
    /// taken only then (or when an expired key was deleted); other writes
    /// (a lease renewal) are committed under the current revision.
    fn write<T>(
        &self,
        write: impl FnOnce(&Transaction<'_>, Revision) -> rusqlite::Result<Option<(bool, T)>>,
    ) -> Result<Option<(Revision, T)>, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let current = meta(&tx, "revision").map_err(|e| self.err(e))?;
        let revision = current + 1;
        let purged = purge_expired(&tx, revision).map_err(|e| self.err(e))?;
        // `None`: give up and roll back (a guard did not hold).
        let Some((wrote, out)) = write(&tx, revision).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        if !wrote && purged == 0 {
            tx.commit().map_err(|e| self.err(e))?;
            return Ok(Some((current, out)));
        }
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")
            .and_then(|mut s| s.execute([revision]))
            .map_err(|e| self.err(e))?;
        if revision % COMPACT_EVERY == 0 && revision > TOMBSTONE_HISTORY {
            compact_to(&tx, revision - TOMBSTONE_HISTORY).map_err(|e| self.err(e))?;
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
        Ok(Some((revision, out)))
    }
}

fn unavailable(path: &Path, reason: String) -> StoreError {
    StoreError::Unavailable {
        backend: Backend::Sqlite,
        location: format!("sqlite://{}", path.display()),
        reason,
    }
}

/// Unix time in milliseconds, the clock of lease expiry.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Delete the tombstones at or before `compacted` and remember it.
fn compact_to(tx: &Transaction<'_>, compacted: Revision) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM tombstone WHERE rev <= ?1", [compacted])?;
    tx.execute(
        "UPDATE meta SET value = MAX(value, ?1) WHERE name = 'compacted'",
        [compacted],
    )?;
    Ok(())
}

/// Delete every leased key whose lease expired, leaving tombstones at
/// `revision`; answers how many keys went.
fn purge_expired(tx: &Transaction<'_>, revision: Revision) -> rusqlite::Result<usize> {
    let now = now_ms();
    let expired: Vec<String> = tx
        .prepare_cached("SELECT key FROM lease WHERE expires_ms <= ?1")?
        .query_map([now], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut purged = 0;
    for key in &expired {
        tx.prepare_cached("DELETE FROM lease WHERE key = ?1")?
            .execute([key])?;
        purged += delete_key(tx, key, revision)?;
    }
    Ok(purged)
}

/// Delete `key` (and its lease) with a tombstone at `revision`; answers 1
/// when it existed.
fn delete_key(tx: &Transaction<'_>, key: &str, revision: Revision) -> rusqlite::Result<usize> {
    tx.prepare_cached("DELETE FROM lease WHERE key = ?1")?
        .execute([key])?;
    let deleted = tx
        .prepare_cached("DELETE FROM kv WHERE key = ?1")?
        .execute([key])?;
    if deleted > 0 {
        tx.prepare_cached("INSERT INTO tombstone (key, rev) VALUES (?1, ?2)")?
            .execute(params![key, revision])?;
    }
    Ok(deleted)
}

/// Create or replace `key` at `revision`.
fn put_key(
    tx: &Transaction<'_>,
    key: &str,
    value: &[u8],
    revision: Revision,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev",
    )?
    .execute(params![key, value, revision])?;
    Ok(())
}

/// The condition that hides leased keys whose lease expired; parameter
/// `?{now}` is the current time ([`now_ms`]).
fn live(now: usize) -> String {
    format!("NOT EXISTS (SELECT 1 FROM lease l WHERE l.key = kv.key AND l.expires_ms <= ?{now})")
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
            .prepare_cached(&format!(
                "SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?1 AND {}",
                live(2)
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_row(params![key, now_ms()], row_to_kv)
            .optional()
            .map_err(|e| self.err(e))
    }

    fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<KeyValue>, StoreError> {
        let conn = self.conn();
        // No LIMIT clause: a bound LIMIT makes SQLite plan the statement
        // again on every run (it plans with the value), about 15 us per
        // call for what is otherwise a 2 us read. Rows are read lazily,
        // so taking the first `limit` reads no more than those.
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT key, value, create_rev, mod_rev FROM kv
                 WHERE key >= ?1 AND key < ?2 AND {} ORDER BY key",
                live(3)
            ))
            .map_err(|e| self.err(e))?;
        let end = keys::prefix_end(prefix);
        let rows = stmt
            .query_map(params![prefix, end, now_ms()], row_to_kv)
            .map_err(|e| self.err(e))?;
        rows.take(limit.unwrap_or(usize::MAX))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT key FROM kv WHERE key >= ?1 AND key < ?2 AND {} ORDER BY key",
                live(3)
            ))
            .map_err(|e| self.err(e))?;
        let end = keys::prefix_end(prefix);
        let rows = stmt
            .query_map(params![prefix, end, now_ms()], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn commit(&self, txn: &Txn) -> Result<Commit, StoreError> {
        let done = self.write(|tx, revision| {
            {
                let mut current = tx.prepare_cached("SELECT mod_rev FROM kv WHERE key = ?1")?;
                for guard in &txn.compares {
                    let rev: Revision = current
                        .query_row([&guard.key], |r| r.get(0))
                        .optional()?
                        .unwrap_or(0);
                    if rev != guard.mod_revision {
                        return Ok(None);
                    }
                }
            }
            for op in &txn.ops {
                match op {
                    // A plain put detaches the key from its lease, as in etcd.
                    Op::Put { key, value } => {
                        tx.prepare_cached("DELETE FROM lease WHERE key = ?1")?
                            .execute([key])?;
                        put_key(tx, key, value, revision)?;
                    }
                    Op::Delete { key } => {
                        delete_key(tx, key, revision)?;
                    }
                }
            }
            Ok(Some((!txn.is_empty(), ())))
        })?;
        Ok(match done {
            Some((revision, ())) => Commit::Done(revision),
            None => Commit::Conflict,
        })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        meta(&self.conn(), "revision").map_err(|e| self.err(e))
    }

    fn changes_since(&self, since: Revision) -> Result<Changes, StoreError> {
        // Expired leased keys are deleted first, so the answer shows them gone.
        let expired = self
            .conn()
            .prepare_cached("SELECT 1 FROM lease WHERE expires_ms <= ?1 LIMIT 1")
            .and_then(|mut s| s.exists([now_ms()]))
            .map_err(|e| self.err(e))?;
        if expired {
            self.write(|_, _| Ok(Some((false, ()))))?;
        }
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

    fn put_leased(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let expires = now_ms().saturating_add(ttl.as_millis() as i64);
        self.write(|tx, revision| {
            let current: Option<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT value FROM kv WHERE key = ?1
                     AND EXISTS (SELECT 1 FROM lease l WHERE l.key = kv.key)",
                )?
                .query_row([key], |r| r.get(0))
                .optional()?;
            tx.prepare_cached(
                "INSERT INTO lease (key, expires_ms) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET expires_ms = excluded.expires_ms",
            )?
            .execute(params![key, expires])?;
            if current.as_deref() == Some(value) {
                return Ok(Some((false, ()))); // a renewal: no new revision
            }
            put_key(tx, key, value, revision)?;
            Ok(Some((true, ())))
        })?;
        Ok(())
    }

    fn revoke_lease(&self, key: &str) -> Result<(), StoreError> {
        self.write(|tx, revision| Ok(Some((delete_key(tx, key, revision)? > 0, ()))))?;
        Ok(())
    }
}
