//! Policy benchmarks (issue 4), printed as Markdown for BENCHMARKS.md:
//!
//! - the size of our nftables table (rules + set elements) as endpoints
//!   grow 10 → 1,000 → 10,000 (one netgroup per 10 endpoints): rendered,
//!   pure;
//! - the time to apply one endpoint's policy change on a node with 1,000
//!   endpoints in 100 netgroups, in a throwaway network namespace: an
//!   endpoint added, an endpoint removed, a remote member joining a
//!   netgroup; handed over as the daemon does (the changed endpoint and
//!   members, to `PolicyDataplane::update`), split into the in-process
//!   part, incremental (the rendered policy updated and its delta planned)
//!   and, for comparison, from scratch (the whole spec rendered and the
//!   whole table planned, which the incremental path must equal), and the
//!   whole `update` (with the nftables transaction); and reading the table
//!   back. Each through both backends in the same run: an `nft` process
//!   per call, and one persistent libnftables context.
//!
//! Runs as root, in a test namespace only (TESTING.md). `cargo bench --bench
//! policy`; `cargo test --benches` runs a quick version. Numbers are
//! reported, never asserted. (Isolate with policy on and off is in the
//! dataplane benchmark.)

use reconcilers::policy::{
    plan, render, EndpointPolicy, LibNft, Members, NftBackend, NftOptions, PolicyDataplane,
    PolicySpec, ProfileRules, RenderedPolicy, Rule, SpecChange, Update, NFT_TIMEOUT,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};
use testsupport::Netns;

const HOST: &str = "host:bench";

fn ifname(i: usize) -> String {
    format!("cali{i:011x}")
}

fn v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xc612_0000 + i as u32 + 1) // 198.18.0.0/15
}

fn v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::from(0x2001_0db8_0001_0000_0000_0000_0000_0000u128 + i as u128 + 1)
}

/// `n` endpoints, endpoint i in netgroup `g{i % groups}` (every tenth also
/// in the next one), with the host profile; plus `remote` members of `g0`
/// on other nodes.
fn spec(n: usize, groups: usize, remote: usize) -> PolicySpec {
    let mut spec = PolicySpec::default();
    let node: IpAddr = "198.19.0.1".parse().unwrap();
    spec.profiles.insert(
        HOST.into(),
        ProfileRules {
            inbound: vec![Rule::Cidr(node.into())],
            outbound: vec![Rule::Cidr(node.into())],
        },
    );
    for g in 0..groups {
        spec.profiles.insert(
            format!("g{g}"),
            ProfileRules {
                inbound: vec![Rule::Netgroup(format!("g{g}"))],
                outbound: vec![Rule::All],
            },
        );
    }
    for i in 0..n {
        let mut netgroups = vec![format!("g{}", i % groups)];
        if i % 10 == 0 {
            netgroups.push(format!("g{}", (i + 1) % groups));
        }
        for g in &netgroups {
            let m = spec
                .netgroups
                .entry(g.clone())
                .or_insert_with(Members::default);
            m.ipv4.insert(v4(i));
            m.ipv6.insert(v6(i));
        }
        let mut profiles = vec![HOST.to_string()];
        profiles.extend(netgroups);
        spec.endpoints.insert(
            ifname(i),
            EndpointPolicy {
                ipv4: vec![v4(i)],
                ipv6: vec![v6(i)],
                profiles,
            },
        );
    }
    let g0 = spec.netgroups.entry("g0".into()).or_default();
    for r in 0..remote {
        g0.ipv4.insert(v4(100_000 + r));
    }
    spec
}

/// One change as the daemon hands it over, and its undo (the round number
/// picks which endpoint or member).
type Change<'a> = dyn Fn(&PolicySpec, usize) -> (Vec<SpecChange>, Vec<SpecChange>) + 'a;

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The member changes of endpoint `e` (both addresses) in `netgroups`.
fn members_of(e: usize, netgroups: &[String], present: bool) -> Vec<SpecChange> {
    netgroups
        .iter()
        .flat_map(|g| {
            [IpAddr::V4(v4(e)), IpAddr::V6(v6(e))].map(|addr| SpecChange::Member {
                netgroup: g.clone(),
                addr,
                present,
            })
        })
        .collect()
}

/// Medians of one change.
struct Timed {
    /// The whole `update` making the change, and undoing it.
    change: Duration,
    undo: Duration,
    /// In process, incremental: the update of the rendered policy and the
    /// plan of its delta, both directions.
    incremental: Duration,
    /// In process, from scratch: render the whole spec and plan the whole
    /// table against the last one, both directions.
    from_scratch: Duration,
}

/// Applies `change(i)` then its undo, `rounds` times: in process (a
/// rendered policy of its own, incremental and from scratch) and through
/// the dataplane.
fn timed_changes(
    dataplane: &PolicyDataplane,
    rt: &tokio::runtime::Runtime,
    base: &PolicySpec,
    rounds: usize,
    change: &Change<'_>,
) -> Timed {
    let mut model = RenderedPolicy::render(base.clone()).unwrap();
    let mut spec = base.clone();
    let mut last = render(&spec).unwrap();
    let (mut there, mut back) = (Vec::new(), Vec::new());
    let (mut incremental, mut from_scratch) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let (forth, undo) = change(base, i);
        for (changes, whole) in [(&forth, &mut there), (&undo, &mut back)] {
            let start = Instant::now();
            let actions = match model.update(changes).unwrap() {
                Update::Delta(delta) => delta.plan(),
                Update::Rendered => unreachable!("rendered before"),
            };
            incremental.push(start.elapsed());
            assert!(!actions.is_empty(), "the change makes actions");

            for c in changes.iter() {
                spec.apply(c);
            }
            let start = Instant::now();
            let desired = render(&spec).unwrap();
            let full = plan(&desired, Some(&last));
            from_scratch.push(start.elapsed());
            assert_eq!(actions, full, "both paths plan alike");
            last = desired;

            let start = Instant::now();
            let applied = rt.block_on(dataplane.update(changes)).unwrap();
            whole.push(start.elapsed());
            assert_eq!(applied, actions, "the dataplane takes the incremental path");
        }
    }
    Timed {
        change: median(&there),
        undo: median(&back),
        incremental: median(&incremental),
        from_scratch: median(&from_scratch),
    }
}

fn main() {
    // `cargo test --benches` runs benches without --bench: keep it quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!("| measure | result | target |");
    println!("|---|---|---|");

    // Size as the node grows (pure).
    let sizes: &[usize] = if quick {
        &[10, 100]
    } else {
        &[10, 1_000, 10_000]
    };
    for &n in sizes {
        let rs = render(&spec(n, (n / 10).max(1), 0)).unwrap();
        let (rules, elements) = (rs.rule_count(), rs.element_count());
        println!(
            "| table size at {n} endpoints in {} netgroups: rules + set elements | {rules} + {elements} = {} ({:.1} per endpoint) | linear |",
            (n / 10).max(1),
            rules + elements,
            (rules + elements) as f64 / n as f64
        );
    }

    let (n, groups, rounds) = if quick {
        (100, 10, 3)
    } else {
        (1_000, 100, 20)
    };
    daemon_side(n, groups, rounds);

    if !testsupport::require_root() {
        return;
    }
    let (n, groups, rounds) = if quick {
        (100, 10, 3)
    } else {
        (1_000, 100, 20)
    };
    let ns = Netns::new("bpolicy");
    // Built here, outside the namespace: tokio's first IO runtime makes a
    // process-wide socket pair that would otherwise pin the namespace.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for backend in ["nft process", "libnftables"] {
        ns.run(|| {
            let dataplane = PolicyDataplane::with_backend(match backend {
                "libnftables" => NftBackend::Library(
                    LibNft::open(reconcilers::policy::LIBNFTABLES, NFT_TIMEOUT)
                        .expect("libnftables loads (package libnftables1)"),
                ),
                _ => NftBackend::open(&NftOptions::process("nft")),
            });
            changes(&dataplane, backend, &rt, n, groups, rounds);
        });
    }
}

/// The daemon's own part of a run, before the dataplane's (pure, and the
/// profiles read from a SQLite store): the changes of one endpoint from
/// `PolicyInputs` against the whole spec from scratch, at `n` endpoints of
/// which half are this node's.
fn daemon_side(n: usize, groups: usize, rounds: usize) {
    use calico_mesos::endpoint::{Endpoint, NetnsId};
    use calico_mesos::policy::profiles::{self, Profile};
    use calico_mesos::policy::{desired_policy, PolicyInputs};
    use calico_mesos::store::{sqlite::SqliteStore, Store, Txn};
    use std::collections::{BTreeMap, HashMap};

    let endpoint = |i: usize| Endpoint {
        node: if i.is_multiple_of(2) {
            "bench"
        } else {
            "other"
        }
        .to_string(),
        container_id: format!("c{i}"),
        netns: NetnsId { pid: 1, inode: 1 },
        ipv4: vec![v4(i)],
        ipv6: vec![v6(i)],
        netgroups: vec![format!("g{}", i % groups)],
        labels: Default::default(),
        holders: Default::default(),
        generation: 1,
        deletion_requested: false,
    };
    let mut all: BTreeMap<String, Endpoint> =
        (0..n).map(|i| (endpoint(i).key(), endpoint(i))).collect();
    let mut list = vec![Profile::host("bench", &["198.19.0.1".parse().unwrap()])];
    list.extend((0..groups).map(|g| Profile::netgroup(&format!("g{g}"))));
    let (mut inputs, _) = PolicyInputs::seed("bench", &all, &list);
    let (mut incremental, mut scratch) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Here and elsewhere, in turn: n + i is even on this node.
        let added = endpoint(n + i);
        let key = added.key();
        all.insert(key.clone(), added);
        for (before, now) in [(None, true), (all.get(&key).cloned(), false)] {
            if !now {
                all.remove(&key);
            }
            let changed = HashMap::from([(key.clone(), before)]);
            let start = Instant::now();
            let changes = inputs.update(&all, &changed, &list);
            incremental.push(start.elapsed());
            assert!(!changes.is_empty());
        }
        let start = Instant::now();
        let mine = all.values().filter(|e| e.node == "bench");
        let spec = desired_policy(mine, all.values().filter(|e| e.node != "bench"), &list);
        scratch.push(start.elapsed());
        assert!(!spec.endpoints.is_empty());
    }
    println!(
        "| daemon side at {n} endpoints (half on this node) in {groups} netgroups: one endpoint's changes (PolicyInputs), median (the whole spec from scratch, desired_policy) | {} ({}) | — |",
        ms(median(&incremental)),
        ms(median(&scratch))
    );
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        dir.path().join("store.db").to_str().unwrap(),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut txn = Txn::default();
    for p in &list {
        txn.put_json(p.key(), p);
    }
    store.commit(&txn).unwrap();
    let reads: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(profiles::list(&store).unwrap().len(), list.len());
            start.elapsed()
        })
        .collect();
    println!(
        "| daemon side: the {} profiles read from a SQLite store, median | {} | — |",
        list.len(),
        ms(median(&reads))
    );
}

/// The timed part, through one backend.
fn changes(
    dataplane: &PolicyDataplane,
    backend: &str,
    rt: &tokio::runtime::Runtime,
    n: usize,
    groups: usize,
    rounds: usize,
) {
    let base = spec(n, groups, 0);
    let start = Instant::now();
    rt.block_on(dataplane.ensure(&base, false)).unwrap();
    println!(
        "| {backend}: full create of the table, {n} endpoints in {groups} netgroups | {} | — |",
        ms(start.elapsed())
    );
    let reads: Vec<Duration> = (0..rounds.min(7))
        .map(|_| {
            let start = Instant::now();
            assert!(rt.block_on(dataplane.observe()).unwrap().is_some());
            start.elapsed()
        })
        .collect();
    println!(
        "| {backend}: read the table back (list + parse), median | {} | — |",
        ms(median(&reads))
    );
    let cases: [(&str, Box<Change<'_>>); 3] = [
        (
            "an endpoint added / removed again",
            Box::new(|_, i| {
                let e = n + i;
                let g = vec![format!("g{}", i % groups)];
                let policy = EndpointPolicy {
                    ipv4: vec![v4(e)],
                    ipv6: vec![v6(e)],
                    profiles: vec![HOST.into(), g[0].clone()],
                };
                let endpoint = |policy| SpecChange::Endpoint {
                    ifname: ifname(e),
                    policy,
                };
                let mut forth = vec![endpoint(Some(policy))];
                forth.extend(members_of(e, &g, true));
                let mut undo = vec![endpoint(None)];
                undo.extend(members_of(e, &g, false));
                (forth, undo)
            }),
        ),
        (
            "an endpoint removed / back again",
            Box::new(|s: &PolicySpec, i| {
                let e = (i * 37) % n;
                let policy = s.endpoints[&ifname(e)].clone();
                let g = policy.profiles[1..].to_vec();
                let endpoint = |policy| SpecChange::Endpoint {
                    ifname: ifname(e),
                    policy,
                };
                let mut forth = vec![endpoint(None)];
                forth.extend(members_of(e, &g, false));
                let mut undo = vec![endpoint(Some(policy))];
                undo.extend(members_of(e, &g, true));
                (forth, undo)
            }),
        ),
        (
            "a member on another node joins a netgroup / leaves",
            Box::new(|_, i| {
                let member = |present| SpecChange::Member {
                    netgroup: format!("g{}", i % groups),
                    addr: IpAddr::V4(v4(60_000 + i)),
                    present,
                };
                (vec![member(true)], vec![member(false)])
            }),
        ),
    ];
    for (what, change) in cases {
        let t = timed_changes(dataplane, rt, &base, rounds, &*change);
        println!(
            "| {backend}: one change at {n} endpoints in {groups} netgroups: {what}, medians of the whole update (in process: incremental; from scratch) | {} / {} ({}; {}) | ≤ 5 ms |",
            ms(t.change),
            ms(t.undo),
            ms(t.incremental),
            ms(t.from_scratch)
        );
    }
    rt.block_on(dataplane.remove()).unwrap();
}
