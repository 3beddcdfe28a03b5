//! Plugin processes SIGKILLed at random moments, hundreds of times, while
//! others run: afterwards the store still opens and serves, its IPAM records
//! agree (no address held twice, blocks and handles match), and every
//! address whose answer a caller did read is still held under its uid.

mod common;

use common::{allocate, check_answer, release_ips, release_uid, Rng, TestStore};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const THREADS: u64 = 4;
const ATTEMPTS_PER_THREAD: u64 = 150;
/// The whole storm stops after this long, however far it got.
const BUDGET: Duration = Duration::from_secs(40);

/// What the callers learned, from the answers they did read.
#[derive(Default)]
struct Outcomes {
    /// uid → addresses its finished allocation answered.
    given: BTreeMap<String, BTreeSet<IpAddr>>,
    /// uids a release (by uid or of their addresses) was started for.
    release_started: BTreeSet<String>,
    /// uids whose release by uid answered success.
    released: BTreeSet<String>,
    /// Addresses whose release by address answered success, with their uid.
    ips_released: BTreeMap<IpAddr, String>,
    finished: usize,
    killed: usize,
}

/// One attempt: an allocation (mostly) or a release of something a finished
/// allocation got, killed after a random delay.
fn attempt(
    store: &TestStore,
    rng: &mut Rng,
    thread: u64,
    n: u64,
    typical: Duration,
    out: &Mutex<Outcomes>,
) {
    let node = ["agent-a", "agent-b"][(thread % 2) as usize];
    let pick_given = |rng: &mut Rng| {
        let out = out.lock().unwrap();
        let uids: Vec<&String> = out
            .given
            .keys()
            .filter(|u| !out.release_started.contains(*u))
            .collect();
        (!uids.is_empty()).then(|| {
            let uid = uids[rng.below(uids.len() as u64) as usize].clone();
            (
                uid.clone(),
                out.given[&uid].iter().copied().collect::<Vec<_>>(),
            )
        })
    };
    enum Op {
        Allocate(String),
        ReleaseUid(String),
        ReleaseIps(String, Vec<IpAddr>),
    }
    let op = match rng.below(10) {
        0 => pick_given(rng).map(|(uid, _)| Op::ReleaseUid(uid)),
        1 => pick_given(rng).map(|(uid, ips)| Op::ReleaseIps(uid, ips)),
        _ => None,
    }
    .unwrap_or_else(|| Op::Allocate(format!("c{thread}-{n}")));
    let request = match &op {
        Op::Allocate(uid) => {
            let (v4, v6) = [(1, 0), (1, 1), (2, 1), (0, 2)][rng.below(4) as usize];
            allocate(uid, v4, v6)
        }
        Op::ReleaseUid(uid) => {
            out.lock().unwrap().release_started.insert(uid.clone());
            release_uid(uid)
        }
        Op::ReleaseIps(uid, ips) => {
            let mut o = out.lock().unwrap();
            o.release_started.insert(uid.clone());
            release_ips(ips)
        }
    };

    // Kill anywhere from before the process starts reading to after it ends.
    let delay = typical.mul_f64(rng.below(1500) as f64 / 1000.0);
    let mut running = store.spawn_on(node, request.to_string().as_bytes());
    std::thread::sleep(delay);
    running.kill();
    let output = running.finish();

    let mut out = out.lock().unwrap();
    let answer = if output.status.code().is_none() {
        out.killed += 1;
        // Killed just after writing its whole answer: net-modules ignores
        // the exit status, so that answer counts as read.
        match output
            .stdout
            .strip_suffix(b"\n")
            .map(serde_json::from_slice::<Value>)
        {
            Some(Ok(answer)) if answer["error"].is_null() => answer,
            _ => return,
        }
    } else {
        let reply = check_answer(&output).unwrap_or_else(|e| panic!("{e}\nrequest: {request}"));
        assert!(reply.is_ok(), "{request}: {}", reply.answer);
        out.finished += 1;
        reply.answer
    };
    match op {
        Op::Allocate(uid) => {
            let addrs = ["ipv4", "ipv6"]
                .iter()
                .flat_map(|f| answer[f].as_array().cloned().unwrap_or_default())
                .map(|a| a.as_str().and_then(|s| s.parse().ok()).expect("an address"))
                .collect();
            out.given.insert(uid, addrs);
        }
        Op::ReleaseUid(uid) => {
            out.released.insert(uid);
        }
        Op::ReleaseIps(uid, ips) => {
            out.ips_released
                .extend(ips.into_iter().map(|ip| (ip, uid.clone())));
        }
    }
}

#[test]
fn killed_plugins_never_corrupt_the_store() {
    // Small blocks: many block claims and full/not-full transitions.
    let store = TestStore::empty();
    store.cli(&["pool", "add", common::V4_POOL, "--block-size", "28"]);
    store.cli(&["pool", "add", common::V6_POOL, "--block-size", "124"]);
    let mut rng = Rng::from_env("killed_plugins_never_corrupt_the_store");

    // How long an allocation takes here, so kills land all over it.
    let mut took: Vec<Duration> = (0..9)
        .map(|i| {
            let start = Instant::now();
            store.ok(&allocate(&format!("warmup-{i}"), 1, 1));
            start.elapsed()
        })
        .collect();
    took.sort();
    let typical = took[took.len() / 2];
    let out = Mutex::new(Outcomes::default());
    let deadline = Instant::now() + BUDGET;
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (store, out) = (&store, &out);
            let mut rng = rng.split();
            scope.spawn(move || {
                for n in 0..ATTEMPTS_PER_THREAD {
                    if Instant::now() > deadline {
                        break;
                    }
                    attempt(store, &mut rng, thread, n, typical, out);
                }
            });
        }
    });
    let out = out.into_inner().unwrap();
    eprintln!(
        "typical allocation {typical:?}: {} attempts, {} killed, {} answered",
        out.killed + out.finished,
        out.killed,
        out.finished
    );
    assert!(
        out.killed >= 50,
        "too few processes were killed to mean anything"
    );
    assert!(
        out.finished >= 20,
        "too few processes finished to mean anything"
    );

    // The store opens, and its records agree.
    let state = store.state();
    let held = state
        .check_consistency()
        .unwrap_or_else(|e| panic!("store inconsistent after the kills:\n{e}"));
    // What a finished allocation answered is still held under its uid,
    // unless a release of it was started.
    for (uid, addrs) in &out.given {
        if out.release_started.contains(uid) {
            continue;
        }
        for addr in addrs {
            assert_eq!(held.get(addr), Some(uid), "{addr} answered to {uid}");
        }
    }
    // A release that answered did release.
    let handles = state.handles();
    for uid in &out.released {
        assert!(!handles.contains_key(uid), "{uid} released but still held");
    }
    for (addr, uid) in &out.ips_released {
        assert_ne!(
            held.get(addr),
            Some(uid),
            "{addr} released but still held by {uid}"
        );
    }
    assert_eq!(store.used() as usize, held.len(), "ipam show used count");
    // Committed by a process killed before its answer was read: leaked
    // until the garbage collector finds them, but never handed out twice.
    let unanswered = held
        .values()
        .filter(|uid| !uid.starts_with("warmup-") && !out.given.contains_key(*uid))
        .count();
    eprintln!("{unanswered} addresses are held by uids whose answer was never read");

    // And it still serves: a new allocation gets addresses nobody holds.
    let reply = store.ok(&allocate("after-the-storm", 2, 2));
    for addr in reply.all_addrs() {
        assert!(!held.contains_key(&addr), "{addr} handed out again");
    }
    store.state().check_consistency().unwrap();
}

/// The first processes on a new store create its schema: killed at any
/// moment of that, the store still opens and serves afterwards.
#[test]
fn killed_while_creating_the_store() {
    let mut rng = Rng::from_env("killed_while_creating_the_store");
    let mut killed = 0;
    for round in 0..24 {
        let store = TestStore::empty();
        let delay = Duration::from_micros(rng.below(6000));
        let request = release_uid(&format!("nobody-{round}"));
        let mut first = store.spawn_on("agent-a", request.to_string().as_bytes());
        std::thread::sleep(delay);
        first.kill();
        if first.finish().status.code().is_none() {
            killed += 1;
        }
        store.cli(&["pool", "add", common::V4_POOL]);
        let reply = store.ok(&allocate("first", 1, 0));
        assert_eq!(reply.addrs("ipv4").len(), 1);
        store.state().check_consistency().unwrap();
    }
    assert!(killed > 0, "no process was killed");
}
