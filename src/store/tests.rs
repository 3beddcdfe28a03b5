//! The store's contract, checked against both backends: every test below
//! runs on a SQLite file, on a real etcd, and on that etcd read through
//! the daemon's replica (`sqlite::`, `etcd::` and `mirror::` in the test
//! names).

use super::testing::{self, Kind};
use super::*;
use std::time::Instant;

/// How long a test waits for something that happens in the background
/// (a lease expiring, another writer's change arriving).
const WAIT: Duration = Duration::from_secs(15);

fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    let mut txn = Txn::default();
    txn.put(key, value.as_bytes().to_vec());
    match store.commit(&txn).unwrap() {
        Commit::Done(r) => r,
        Commit::Conflict => panic!("unguarded put of {key} conflicted"),
    }
}

fn delete(store: &dyn Store, key: &str) -> Revision {
    let mut txn = Txn::default();
    txn.delete(key);
    match store.commit(&txn).unwrap() {
        Commit::Done(r) => r,
        Commit::Conflict => panic!("unguarded delete of {key} conflicted"),
    }
}

fn value(store: &dyn Store, key: &str) -> Option<String> {
    store
        .get(key)
        .unwrap()
        .map(|kv| String::from_utf8(kv.value).unwrap())
}

/// `changes_since` as (key, Some(value) | None for a delete), oldest first.
fn summary(changes: &Changes) -> Vec<(String, Option<String>)> {
    changes
        .changes
        .iter()
        .map(|c| match c {
            Change::Put(kv) => (
                kv.key.clone(),
                Some(String::from_utf8(kv.value.clone()).unwrap()),
            ),
            Change::Delete { key, .. } => (key.clone(), None),
        })
        .collect()
}

/// Poll `check` until it holds, at most [`WAIT`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reads_lists_and_limits(kind: Kind) {
    let (_keep, s) = testing::fresh(kind);
    let s = s.as_ref();
    assert_eq!(s.get("a/1").unwrap(), None);
    assert!(s.list("", None).unwrap().is_empty());
    let r1 = put(s, "a/1", "one");
    put(s, "a/3", "three");
    put(s, "a/2", "two");
    put(s, "b/1", "bee");
    put(s, "a", "not under a/");
    let kv = s.get("a/1").unwrap().unwrap();
    assert_eq!((kv.key.as_str(), kv.value.as_slice()), ("a/1", &b"one"[..]));
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r1));
    let keys = |kvs: Vec<KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(keys(s.list("a/", None).unwrap()), ["a/1", "a/2", "a/3"]);
    assert_eq!(keys(s.list("a/", Some(2)).unwrap()), ["a/1", "a/2"]);
    assert!(s.list("a/", Some(0)).unwrap().is_empty());
    assert_eq!(s.list("", None).unwrap().len(), 5);
    assert_eq!(s.list_keys("a/").unwrap(), ["a/1", "a/2", "a/3"]);
    assert_eq!(s.list_keys("c/").unwrap(), Vec::<String>::new());
    // An update keeps the creation revision and moves the modification one.
    let r2 = put(s, "a/1", "uno");
    let kv = s.get("a/1").unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
    assert_eq!(value(s, "a/1").as_deref(), Some("uno"));
}

fn guards_and_conflicts(kind: Kind) {
    let (_keep, s) = testing::fresh(kind);
    let s = s.as_ref();
    // Absent-key guard: create only if missing.
    let mut create = Txn::default();
    create.compare("k", 0);
    create.put("k", b"1".to_vec());
    let Commit::Done(r1) = s.commit(&create).unwrap() else {
        panic!("creating an absent key conflicted")
    };
    assert_eq!(s.commit(&create).unwrap(), Commit::Conflict, "k exists now");
    assert_eq!(value(s, "k").as_deref(), Some("1"));
    // Guard on the current modification revision.
    let mut update = Txn::default();
    update.compare("k", r1);
    update.put("k", b"2".to_vec());
    update.put("other", b"x".to_vec());
    let Commit::Done(r2) = s.commit(&update).unwrap() else {
        panic!("a guard on the current revision conflicted")
    };
    assert!(r2 > r1);
    // The same guard is stale now: nothing of the txn is written.
    // (etcd's revision is global, other tests move it: compare contents.)
    let before = s.list("", None).unwrap();
    let mut stale = Txn::default();
    stale.compare("other", s.get("other").unwrap().unwrap().mod_revision);
    stale.compare("k", r1);
    stale.put("k", b"3".to_vec());
    stale.delete("other");
    stale.put("new", b"n".to_vec());
    assert_eq!(s.commit(&stale).unwrap(), Commit::Conflict);
    assert_eq!(value(s, "k").as_deref(), Some("2"));
    assert_eq!(value(s, "other").as_deref(), Some("x"));
    assert_eq!(value(s, "new"), None);
    assert_eq!(
        s.list("", None).unwrap(),
        before,
        "a conflict writes nothing"
    );
    // Deleting an absent key is no error; a guard on a deleted key is 0.
    delete(s, "never-there");
    delete(s, "k");
    let mut recreate = Txn::default();
    recreate.compare("k", 0);
    recreate.put("k", b"again".to_vec());
    assert!(matches!(s.commit(&recreate).unwrap(), Commit::Done(_)));
    let kv = s.get("k").unwrap().unwrap();
    assert_eq!(
        kv.create_revision, kv.mod_revision,
        "a re-created key is new"
    );
    // A key put twice in one txn ends with the last value.
    let mut twice = Txn::default();
    twice.put("t", b"first".to_vec());
    twice.delete("t");
    twice.put("t", b"last".to_vec());
    assert!(matches!(s.commit(&twice).unwrap(), Commit::Done(_)));
    assert_eq!(value(s, "t").as_deref(), Some("last"));
    // An empty txn writes nothing.
    let before = s.list("", None).unwrap();
    assert!(matches!(
        s.commit(&Txn::default()).unwrap(),
        Commit::Done(_)
    ));
    assert_eq!(s.list("", None).unwrap(), before);
}

fn revisions_grow(kind: Kind) {
    let (_keep, s) = testing::fresh(kind);
    let s = s.as_ref();
    let mut last = s.revision().unwrap();
    for i in 0..10 {
        let r = put(s, &format!("k{}", i % 3), &i.to_string());
        assert!(r > last, "{r} after {last}");
        assert!(s.revision().unwrap() >= r);
        last = r;
    }
}

fn changes_since_gives_each_keys_latest_state(kind: Kind) {
    let (_keep, s) = testing::fresh(kind);
    let s = s.as_ref();
    put(s, "before", "0");
    let r0 = s.revision().unwrap();
    let mut txn = Txn::default();
    txn.put("x", b"1".to_vec());
    txn.put("y", b"1".to_vec());
    s.commit(&txn).unwrap();
    delete(s, "x");
    put(s, "z", "1");
    let r4 = put(s, "y", "2");
    put(s, "x", "3"); // re-created
    put(s, "q", "1");
    let r7 = delete(s, "q");
    delete(s, "absent");
    let all = s.changes_since(r0).unwrap();
    assert!(all.revision >= r7, "{} < {r7}", all.revision);
    let some = |v: &str| Some(v.to_string());
    assert_eq!(
        summary(&all),
        [
            ("z".to_string(), some("1")),
            ("y".to_string(), some("2")),
            ("x".to_string(), some("3")),
            ("q".to_string(), None),
        ]
    );
    if let Change::Delete { revision, .. } = &all.changes[3] {
        assert_eq!(*revision, r7);
    }
    assert_eq!(
        summary(&s.changes_since(r4).unwrap()),
        [("x".to_string(), some("3")), ("q".to_string(), None)]
    );
    let now = s.changes_since(all.revision).unwrap();
    assert!(now.changes.is_empty(), "{now:?}");
    assert!(now.revision >= all.revision);
}

fn another_writers_changes_arrive(kind: Kind) {
    let (keep, s) = testing::fresh(kind);
    let other = keep.reopen();
    let mut from = s.revision().unwrap();
    let first = s.changes_since(from).unwrap();
    from = first.revision;
    let signal = s.change_signal();
    put(other.as_ref(), "from-elsewhere", "hi");
    if let Some(mut signal) = signal {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(WAIT, signal.changed())
                .await
                .expect("the change signal moved")
                .unwrap();
        });
    }
    eventually("the other writer's change is seen", || {
        let c = s.changes_since(from).unwrap();
        summary(&c) == [("from-elsewhere".to_string(), Some("hi".to_string()))]
    });
}

fn concurrent_guarded_writers_lose_nothing(kind: Kind) {
    let (keep, s) = testing::fresh(kind);
    const THREADS: usize = 4;
    const EACH: usize = 20;
    let stores: Vec<Box<dyn Store>> = (0..THREADS)
        .map(|i| {
            if i % 2 == 0 {
                keep.reopen()
            } else {
                testing::fresh_like(&keep)
            }
        })
        .collect();
    std::thread::scope(|scope| {
        for store in &stores {
            scope.spawn(move || {
                for _ in 0..EACH {
                    loop {
                        let current = store.get("counter").unwrap();
                        let (n, rev) = current.map_or((0, 0), |kv| {
                            (
                                String::from_utf8(kv.value)
                                    .unwrap()
                                    .parse::<usize>()
                                    .unwrap(),
                                kv.mod_revision,
                            )
                        });
                        let mut txn = Txn::default();
                        txn.compare("counter", rev);
                        txn.put("counter", (n + 1).to_string().into_bytes());
                        if let Commit::Done(_) = store.commit(&txn).unwrap() {
                            break;
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        value(s.as_ref(), "counter"),
        Some((THREADS * EACH).to_string())
    );
}

fn leases_expire_renew_and_revoke(kind: Kind) {
    let (_keep, s) = testing::fresh(kind);
    let s = s.as_ref();
    let ttl = Duration::from_secs(2);
    s.put_leased("node/a", b"alive", ttl).unwrap();
    assert_eq!(value(s, "node/a").as_deref(), Some("alive"));
    // Renewals keep it past its ttl without new revisions.
    let rev = s.get("node/a").unwrap().unwrap().mod_revision;
    let until = Instant::now() + ttl + Duration::from_secs(1);
    while Instant::now() < until {
        s.put_leased("node/a", b"alive", ttl).unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    let kv = s.get("node/a").unwrap().expect("renewed key still there");
    assert_eq!(kv.mod_revision, rev, "a renewal writes no revision");
    // A changed value is written.
    s.put_leased("node/a", b"changed", ttl).unwrap();
    assert_eq!(value(s, "node/a").as_deref(), Some("changed"));
    // Without renewals it disappears, and watchers see the deletion.
    let from = s.revision().unwrap();
    eventually("the unrenewed key expires", || {
        s.get("node/a").unwrap().is_none()
    });
    assert!(s.list_keys("node/").unwrap().is_empty());
    eventually("the expiry shows as a deletion", || {
        summary(&s.changes_since(from).unwrap()) == [("node/a".to_string(), None)]
    });
    // A renewal after expiry brings it back.
    s.put_leased("node/a", b"back", ttl).unwrap();
    assert_eq!(value(s, "node/a").as_deref(), Some("back"));
    // Revoking deletes at once, and again is fine.
    s.revoke_lease("node/a").unwrap();
    assert_eq!(s.get("node/a").unwrap(), None);
    s.revoke_lease("node/a").unwrap();
    s.revoke_lease("node/never").unwrap();
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::Kind::Sqlite) } )*
        }
        mod etcd {
            $( #[test] fn $name() { super::$name(super::Kind::Etcd) } )*
        }
        mod mirror {
            $( #[test] fn $name() { super::$name(super::Kind::EtcdMirror) } )*
        }
    };
}

both_backends!(
    reads_lists_and_limits,
    guards_and_conflicts,
    revisions_grow,
    changes_since_gives_each_keys_latest_state,
    another_writers_changes_arrive,
    concurrent_guarded_writers_lose_nothing,
    leases_expire_renew_and_revoke,
);

/// Changes from before a compaction are refused with `Compacted`; later
/// ones are still served.
#[test]
fn sqlite_compacted_history_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s =
        crate::store::sqlite::SqliteStore::open(path.to_str().unwrap(), testing::TIMEOUT).unwrap();
    let r0 = s.revision().unwrap();
    put(&s, "a", "1");
    delete(&s, "a");
    let r = put(&s, "b", "1");
    s.compact(r).unwrap();
    assert!(matches!(
        s.changes_since(r0),
        Err(StoreError::Compacted { requested, .. }) if requested == r0
    ));
    assert!(s.changes_since(r).unwrap().changes.is_empty());
}

#[test]
fn etcd_compacted_history_is_refused() {
    let etcd = testsupport::etcd::Etcd::start();
    let prefix = testsupport::etcd::unique_prefix("compact");
    let s = testing::etcd_store(&etcd, &prefix);
    let r0 = s.revision().unwrap();
    put(&s, "a", "1");
    delete(&s, "a");
    let r = put(&s, "b", "1");
    put(&s, "c", "1");
    etcd.compact(r);
    // A store that starts following after the compaction cannot serve r0.
    let fresh = testing::etcd_store(&etcd, &prefix);
    assert!(
        matches!(fresh.changes_since(r0), Err(StoreError::Compacted { .. })),
        "{:?}",
        fresh.changes_since(r0)
    );
    // One that starts after it serves what followed (once its watch has
    // caught up: another writer's changes may arrive a moment later).
    let later = testing::etcd_store(&etcd, &prefix);
    eventually("the change after the compaction is served", || {
        summary(&later.changes_since(r).unwrap()) == [("c".to_string(), Some("1".to_string()))]
    });
}

/// The SQLite file of schema 1 (before leases) opens and gains leases.
#[test]
fn sqlite_schema_1_files_are_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,
                 create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX kv_mod_rev ON kv(mod_rev);
             CREATE TABLE tombstone (key TEXT NOT NULL, rev INTEGER NOT NULL);
             CREATE INDEX tombstone_rev ON tombstone(rev);
             CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('revision', 7), ('compacted', 0);
             INSERT INTO kv VALUES ('pool/x', X'7B7D', 7, 7);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let s =
        crate::store::sqlite::SqliteStore::open(path.to_str().unwrap(), testing::TIMEOUT).unwrap();
    assert_eq!(s.revision().unwrap(), 7);
    assert_eq!(value(&s, "pool/x").as_deref(), Some("{}"));
    s.put_leased("node/n", b"up", Duration::from_secs(30))
        .unwrap();
    assert_eq!(value(&s, "node/n").as_deref(), Some("up"));
}

/// An etcd nobody listens at answers PROTOCOL.md's text within the timeout.
#[test]
fn an_unreachable_etcd_answers_the_protocol_text_in_time() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there
    let options = StoreOptions {
        datastore: format!("etcd://127.0.0.1:{port}"),
        timeout: Duration::from_secs(2),
        etcd: EtcdOptions::default(),
    };
    let started = Instant::now();
    let err = open(&options)
        .and_then(|s| s.get("x").map(|_| ()))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "too slow");
    assert_eq!(
        err.to_string(),
        format!("Failed to communicate with etcd at 'http://127.0.0.1:{port}'. Ensure that it is up and running or change ETCD_ENDPOINTS (or ETCD_AUTHORITY) for the mesos-agent process.")
    );
    // A black hole (no answer at all) is bounded by the timeout too.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = StoreOptions {
        datastore: format!("etcd://{}", silent.local_addr().unwrap()),
        ..options
    };
    let started = Instant::now();
    let err = open(&options)
        .and_then(|s| s.commit(&Txn::default()).map(|_| ()))
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "too slow");
}

#[test]
fn datastore_urls() {
    let etcd = |list: &[&str], tls| Datastore::Etcd {
        endpoints: list.iter().map(|s| s.to_string()).collect(),
        tls,
    };
    assert_eq!(
        Datastore::parse("etcd://a:1,b").unwrap(),
        etcd(&["a:1", "b:2379"], false)
    );
    assert_eq!(
        Datastore::parse("etcds://[2001:db8::1]:2379/").unwrap(),
        etcd(&["[2001:db8::1]:2379"], true)
    );
    assert_eq!(
        Datastore::parse("sqlite:///x.db").unwrap(),
        Datastore::Sqlite("/x.db".into())
    );
    for bad in [
        "etcd://",
        "etcd://a:b",
        "etcd://a,,b",
        "etcd://user@a:1",
        "etcd://2001:db8::1",
        "sqlite://",
        "http://a:2379",
    ] {
        assert!(Datastore::parse(bad).is_err(), "{bad}");
    }
}

/// A replica that lost a race reads the winner's write right after the
/// conflict: the keys the transaction guarded are read again from the
/// store (the watch may deliver them as well, so this does not prove which
/// did; the replica's own tests do), and the retry goes through.
#[test]
fn mirror_conflict_rereads_the_guarded_keys() {
    let (keep, s) = testing::fresh(Kind::EtcdMirror);
    let other = keep.reopen();
    put(s.as_ref(), "k", "mine");
    for round in 0..20 {
        let read = s.get("k").unwrap().unwrap().mod_revision;
        let theirs = format!("theirs {round}");
        let won = put(other.as_ref(), "k", &theirs);
        let mut late = Txn::default();
        late.compare("k", read);
        late.put("k", b"late".to_vec());
        assert_eq!(s.commit(&late).unwrap(), Commit::Conflict, "round {round}");
        let now = s.get("k").unwrap().unwrap();
        assert_eq!((now.value, now.mod_revision), (theirs.into_bytes(), won));
        let mut retry = Txn::default();
        retry.compare("k", now.mod_revision);
        retry.put("k", b"mine again".to_vec());
        assert!(
            matches!(s.commit(&retry).unwrap(), Commit::Done(_)),
            "round {round}"
        );
        assert_eq!(value(s.as_ref(), "k").as_deref(), Some("mine again"));
    }
}
