//! Many plugin processes at once against one store, as an agent starting
//! many tasks does: no address is ever handed out twice, the usage report
//! counts exactly what was handed out, and releasing some uids frees exactly
//! their addresses.

mod common;

use common::{allocate, release_ips, release_uid, Cidr, Reply, TestStore, V4_POOL, V6_POOL};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

const THREADS: usize = 8;
const PER_THREAD: usize = 128;
/// What allocation `i` asks for: IPv4 only, IPv6 only, both, and some with
/// two addresses of a family.
const KINDS: [(u32, u32); 6] = [(1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 1)];

/// Two agents share the store (as two nodes share etcd), so blocks are also
/// claimed concurrently.
fn node_of(thread: usize) -> &'static str {
    if thread.is_multiple_of(2) {
        "agent-a"
    } else {
        "agent-b"
    }
}

/// Run `work(thread, i)` for `count` items on each of [`THREADS`] threads.
fn in_parallel<T: Send>(count: usize, work: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (work, results) = (&work, &results);
            scope.spawn(move || {
                for i in 0..count {
                    let result = work(thread, i);
                    results.lock().unwrap().push(result);
                }
            });
        }
    });
    results.into_inner().unwrap()
}

/// uid → the addresses its allocation answered.
type Given = BTreeMap<String, BTreeSet<IpAddr>>;

fn check_held_exactly(store: &TestStore, given: &Given) {
    let state = store.state();
    state
        .check_consistency()
        .unwrap_or_else(|e| panic!("store inconsistent:\n{e}"));
    let handles = state.handles();
    let wanted: Given = given
        .iter()
        .filter(|(_, addrs)| !addrs.is_empty())
        .map(|(uid, addrs)| (uid.clone(), addrs.clone()))
        .collect();
    for (uid, addrs) in &wanted {
        assert_eq!(handles.get(uid), Some(addrs), "handle of {uid}");
    }
    let extra: Vec<&String> = handles
        .keys()
        .filter(|u| !wanted.contains_key(*u))
        .collect();
    assert!(extra.is_empty(), "unexpected handles {extra:?}");
    let total: usize = wanted.values().map(BTreeSet::len).sum();
    assert_eq!(store.used() as usize, total, "ipam show used count");
}

#[test]
fn parallel_allocations_never_share_an_address() {
    let store = TestStore::with_pools();
    let (v4, v6) = (Cidr::parse(V4_POOL).unwrap(), Cidr::parse(V6_POOL).unwrap());

    // 1. 8 × 128 allocations at once.
    let replies: Vec<(String, (u32, u32), Reply)> = in_parallel(PER_THREAD, |thread, i| {
        let uid = format!("t{thread}-{i}");
        let kind = KINDS[(thread + i) % KINDS.len()];
        let reply = store.send_on(node_of(thread), &allocate(&uid, kind.0, kind.1));
        (uid, kind, reply)
    });
    assert_eq!(replies.len(), THREADS * PER_THREAD);
    let mut given = Given::new();
    let mut seen: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (uid, (n4, n6), reply) in &replies {
        assert!(reply.is_ok(), "allocate {uid}: {}", reply.answer);
        let (ipv4, ipv6) = (reply.addrs("ipv4"), reply.addrs("ipv6"));
        assert_eq!(
            (ipv4.len(), ipv6.len()),
            (*n4 as usize, *n6 as usize),
            "{uid}"
        );
        assert!(ipv4.iter().all(|a| v4.contains(*a)), "{uid}: {ipv4:?}");
        assert!(ipv6.iter().all(|a| v6.contains(*a)), "{uid}: {ipv6:?}");
        for addr in ipv4.iter().chain(&ipv6) {
            if let Some(other) = seen.insert(*addr, uid.clone()) {
                panic!("{addr} was handed to both {other} and {uid}");
            }
        }
        given.insert(uid.clone(), ipv4.into_iter().chain(ipv6).collect());
    }
    let total: usize = given.values().map(BTreeSet::len).sum();
    eprintln!("{} allocations, {total} distinct addresses", replies.len());
    check_held_exactly(&store, &given);

    // 2. Release every third uid, in parallel.
    let uids: Vec<String> = given.keys().cloned().collect();
    let to_release: Vec<&String> = uids.iter().step_by(3).collect();
    let chunk = to_release.len().div_ceil(THREADS);
    let released = in_parallel(chunk, |thread, i| {
        let uid = to_release.get(thread * chunk + i)?;
        let reply = store.send(&release_uid(uid));
        assert!(reply.is_ok(), "release {uid}: {}", reply.answer);
        Some((*uid).clone())
    });
    let released: BTreeSet<String> = released.into_iter().flatten().collect();
    assert_eq!(released.len(), to_release.len());
    let freed: usize = released.iter().map(|u| given[u].len()).sum();
    for uid in &released {
        given.remove(uid);
    }
    let still: usize = given.values().map(BTreeSet::len).sum();
    assert_eq!(still, total - freed);
    check_held_exactly(&store, &given);

    // 3. Allocations racing with releases by address (whose addresses may
    // be handed out again at once).
    let by_ips: Vec<(String, Vec<IpAddr>)> = given
        .iter()
        .skip(1)
        .step_by(5)
        .take(THREADS * 16)
        .map(|(uid, addrs)| (uid.clone(), addrs.iter().copied().collect()))
        .collect();
    let mixed = in_parallel(32, |thread, i| {
        if i % 2 == 0 {
            let (uid, ips) = by_ips.get(thread * 16 + i / 2)?;
            let reply = store.send(&release_ips(ips));
            assert!(reply.is_ok(), "release {ips:?}: {}", reply.answer);
            Some((uid.clone(), None))
        } else {
            let uid = format!("r{thread}-{i}");
            let kind = KINDS[i % KINDS.len()];
            let reply = store.send_on(node_of(thread + 1), &allocate(&uid, kind.0, kind.1));
            assert!(reply.is_ok(), "allocate {uid}: {}", reply.answer);
            Some((uid, Some(reply.all_addrs())))
        }
    });
    for (uid, addrs) in mixed.into_iter().flatten() {
        match addrs {
            None => drop(given.remove(&uid)),
            Some(addrs) => drop(given.insert(uid, addrs.into_iter().collect())),
        }
    }
    let mut owner: BTreeMap<IpAddr, &String> = BTreeMap::new();
    for (uid, addrs) in &given {
        for addr in addrs {
            if let Some(other) = owner.insert(*addr, uid) {
                panic!("{addr} is held for both {other} and {uid}");
            }
        }
    }
    check_held_exactly(&store, &given);
}
