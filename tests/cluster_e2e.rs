//! A cluster of three agents on one fabric sharing a real etcd (in the
//! fabric's switch namespace), a daemon on each: containers on different
//! nodes reach each other through the fabric routes only when they share a
//! netgroup (IPv4 and IPv6), a new container on node 3 becomes reachable
//! from node 1 with no call on node 1, and removing a node takes its routes
//! away everywhere. Also: contention on etcd from all nodes, an etcd
//! outage during churn, and a daemon whose watch revision was compacted.

mod common;

use common::agent::{isolate, wait_until};
use common::cluster::Cluster;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testsupport::etcd::Etcd;
use testsupport::Container;
use testsupport::{ping_from, GATEWAY_V4};

/// How long a change on one node may take to reach the others.
const PROPAGATION: Duration = Duration::from_secs(10);

fn reaches(from: &common::agent::Launched, to: &common::agent::Launched) -> bool {
    ping_from(&from.container, from.v4, to.v4) && ping_from(&from.container, from.v6, to.v6)
}

/// `count` nodes and an etcd in the switch namespace, reachable from every
/// node at the switch's fabric address; the test pools added. Store calls
/// time out after 2 s (the outage test counts on a short timeout).
fn cluster_on_etcd(tag: &str, count: u8) -> (Cluster, Etcd) {
    cluster_on_etcd_with_timeout(tag, count, "2s")
}

/// As [`cluster_on_etcd`], with store calls timing out after `timeout`.
fn cluster_on_etcd_with_timeout(tag: &str, count: u8, timeout: &str) -> (Cluster, Etcd) {
    let fabric_probe = Cluster::new(tag, count, &[]);
    let etcd = fabric_probe.fabric.start_etcd();
    let cluster = fabric_probe.with_env(&[
        (
            "CALICO_MESOS_DATASTORE",
            &format!("etcd://{}", etcd.host_port()),
        ),
        ("CALICO_MESOS_STORE_TIMEOUT", timeout),
    ]);
    (cluster.with_pools(), etcd)
}

#[test]
fn containers_on_different_nodes_in_one_netgroup_reach_each_other() {
    if !testsupport::require_root() {
        return;
    }
    let (cluster, _etcd) = cluster_on_etcd("clus", 3);
    let daemons: Vec<_> = (1..=3).map(|x| cluster.start_daemon(x)).collect();

    let a = cluster.launch(1, 1, &["web"]);
    let b = cluster.launch(2, 2, &["web"]);
    let c = cluster.launch(2, 3, &["db"]);
    let converged = wait_until(PROPAGATION, || reaches(&a, &b) && reaches(&b, &a));
    assert!(
        converged.is_some(),
        "web on node 1 and web on node 2 never reached each other; node 1 routes {:?}, node 2 routes {:?}\n{}",
        cluster.fabric_routes(1),
        cluster.fabric_routes(2),
        daemons[0].log_text()
    );
    assert!(!reaches(&a, &c), "web on node 1 reached db on node 2");
    assert!(!reaches(&c, &a), "db on node 2 reached web on node 1");

    // A new container on node 3: nothing is asked of node 1.
    let d = cluster.launch(3, 4, &["web"]);
    let took = wait_until(PROPAGATION, || reaches(&a, &d) && reaches(&d, &a));
    assert!(
        took.is_some(),
        "node 1 never reached the new container on node 3: routes {:?}",
        cluster.fabric_routes(1)
    );

    let (ok, list, err) = cluster.cli(1, &["node", "list", "-o", "json"]);
    assert!(ok, "{err}");
    let nodes: serde_json::Value = serde_json::from_str(&list).unwrap();
    let up: Vec<bool> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["up"].as_bool().unwrap())
        .collect();
    assert_eq!(up, vec![true, true, true], "{list}");

    for (x, c) in [(1, &a), (2, &b), (2, &c), (3, &d)] {
        cluster.finish(x, c);
    }
    // Node 3 goes away for good: its daemon stops and an operator removes it.
    let (ok, _, err) = cluster.cli(1, &["node", "remove", "node-3"]);
    assert!(
        !ok && err.contains("node 'node-3' is up"),
        "removing a live node was not refused: {err}"
    );
    let mut daemons = daemons;
    let third = daemons.pop().unwrap();
    assert!(third.stop(), "node 3's daemon did not stop cleanly");
    let (ok, list, err) = cluster.cli(1, &["node", "list"]);
    assert!(ok, "{err}");
    let line = list.lines().find(|l| l.starts_with("node-3")).unwrap();
    assert!(
        line.contains("down"),
        "a stopped node is not shown down: {list}"
    );
    let (ok, out, err) = cluster.cli(1, &["node", "remove", "node-3"]);
    assert!(ok, "node remove: {err}");
    assert!(out.contains("removed node node-3"), "{out}");
    let gone = wait_until(PROPAGATION, || {
        !cluster
            .fabric_routes(1)
            .iter()
            .any(|r| r.contains("198.19.0.3") || r.contains("2001:db8:f::3"))
    });
    assert!(
        gone.is_some(),
        "node 1 kept routes via node 3: {:?}",
        cluster.fabric_routes(1)
    );
    for d in daemons {
        assert!(d.stop());
    }
}

#[test]
fn allocations_from_every_node_in_parallel_are_all_distinct() {
    if !testsupport::require_root() {
        return;
    }
    // Twelve plugin processes at a time, each with its own etcd client, on
    // a machine that may run the other tests too: a generous timeout, so
    // that only a real failure fails (contention itself is retried).
    let (cluster, _etcd) = cluster_on_etcd_with_timeout("cont", 3, "15s");
    // First every plugin on etcd itself (compare-and-swap between
    // processes and nodes), then served by the nodes' daemons (each
    // commits its node's waiting allocations together).
    let mut all = allocate_in_parallel(&cluster, "plugin");
    let daemons: Vec<_> = (1..=3).map(|x| cluster.start_daemon(x)).collect();
    all.extend(allocate_in_parallel(&cluster, "served"));
    let expected = 2 * 3 * WORKERS * PER_WORKER * 2;
    assert_eq!(all.len(), expected);
    let distinct: BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), expected, "an address was handed out twice");
    assert!(
        daemons
            .iter()
            .any(|d| d.log_text().contains("allocations committed together")),
        "no daemon committed two waiting allocations together"
    );
    // The store agrees: exactly these are in use, each node has blocks.
    let (used, usage, out) = addresses_in_use(&cluster);
    assert_eq!(used, expected as u64, "{out}");
    for x in 1..=3u8 {
        assert!(
            usage["nodes"][Cluster::name(x)].as_array().is_some(),
            "node {x} claimed no block: {out}"
        );
    }
}

/// How many addresses the store counts as in use, with `ipam show`'s JSON
/// (parsed and as text).
fn addresses_in_use(cluster: &Cluster) -> (u64, Value, String) {
    let (ok, out, err) = cluster.cli(1, &["ipam", "show", "-o", "json"]);
    assert!(ok, "{err}");
    let usage: Value = serde_json::from_str(&out).unwrap();
    let used = usage["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["used"].as_u64().unwrap())
        .sum();
    (used, usage, out)
}

/// Plugin processes at a time on each node.
const WORKERS: usize = 4;
/// Allocations (one IPv4 and one IPv6 each) per worker.
const PER_WORKER: usize = 63;

/// [`WORKERS`] plugin processes at a time on every node, each allocating
/// [`PER_WORKER`] times; every address handed out.
fn allocate_in_parallel(cluster: &Cluster, tag: &str) -> Vec<std::net::IpAddr> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (1..=3u8)
            .flat_map(|x| (0..WORKERS).map(move |w| (x, w)))
            .map(|(x, w)| {
                s.spawn(move || {
                    let mut got = Vec::new();
                    for i in 0..PER_WORKER {
                        let reply = cluster.plugin_ok(
                            x,
                            &json!({"command": "allocate", "args": {"hostname": "agent",
                                "uid": format!("{tag}-n{x}-w{w}-{i}"), "num_ipv4": 1, "num_ipv6": 1}}),
                        );
                        got.extend(reply.addrs("ipv4"));
                        got.extend(reply.addrs("ipv6"));
                    }
                    got
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    })
}

/// One plugin call's answer and how long it took.
fn timed(cluster: &Cluster, x: u8, request: &Value) -> (common::Reply, Duration) {
    let start = Instant::now();
    let reply = cluster.plugin(x, request);
    (reply, start.elapsed())
}

#[test]
fn an_etcd_outage_keeps_the_dataplane_and_every_node_converges_after() {
    if !testsupport::require_root() {
        return;
    }
    let (cluster, mut etcd) = cluster_on_etcd("outg", 3);
    let cluster = cluster.with_env(&[("CALICO_MESOS_ISOLATE_TIMEOUT", "5s")]);
    let daemons: Vec<_> = (1..=3).map(|x| cluster.start_daemon(x)).collect();
    let a = cluster.launch(1, 1, &["web"]);
    let b = cluster.launch(2, 2, &["web"]);
    assert!(wait_until(PROPAGATION, || reaches(&a, &b) && reaches(&b, &a)).is_some());

    let stop = AtomicBool::new(false);
    let (attempts, pings) = std::thread::scope(|s| {
        // Churn on node 3: launch and finish containers, whatever answers.
        let churn = s.spawn(|| {
            let mut attempts = Vec::new();
            let mut n = 100;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let container = Container::new(&cluster.node(3).ns);
                let (uid, id) = (format!("task-{n}"), format!("container-{n}"));
                let (reply, took) = timed(
                    &cluster,
                    3,
                    &json!({"command": "allocate", "args": {"hostname": "agent", "uid": uid,
                        "num_ipv4": 1, "num_ipv6": 1, "netgroups": ["web"]}}),
                );
                let mut answers = vec![(reply.answer.clone(), took)];
                let ips = if reply.is_ok() {
                    let (v4, v6) = (reply.addrs("ipv4")[0], reply.addrs("ipv6")[0]);
                    let (r, took) = timed(
                        &cluster,
                        3,
                        &isolate(&id, container.pid(), v4, v6, &["web"]),
                    );
                    answers.push((r.answer.clone(), took));
                    vec![v4, v6]
                } else {
                    Vec::new()
                };
                attempts.push((container, id, ips, answers));
            }
            attempts
        });
        // Meanwhile: etcd goes away for 20 s; the containers keep talking.
        std::thread::sleep(Duration::from_secs(2));
        etcd.stop();
        let mut pings = Vec::new();
        let outage = Instant::now();
        while outage.elapsed() < Duration::from_secs(20) {
            pings.push(reaches(&a, &b) && reaches(&b, &a));
            std::thread::sleep(Duration::from_millis(500));
        }
        etcd.restart();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::SeqCst);
        (churn.join().expect("churn"), pings)
    });
    assert!(
        pings.iter().all(|p| *p),
        "containers stopped reaching each other during the outage: {pings:?}"
    );
    let mut failures = 0;
    for (_, _, _, answers) in &attempts {
        for (answer, took) in answers {
            assert!(
                *took < Duration::from_secs(12),
                "an answer took {took:?} during the outage: {answer}"
            );
            if let Some(error) = answer["error"].as_str() {
                failures += 1;
                assert!(
                    error.contains(&format!(
                        "Failed to communicate with etcd at 'http://{GATEWAY_V4}:2379'"
                    )),
                    "unexpected error during the outage: {error}"
                );
            }
        }
    }
    assert!(failures > 0, "no request failed: the outage did not happen");

    // After the outage: every churned container can be finished, nothing
    // leaks, and a new container on node 3 is reached from node 1.
    for (_, id, ips, _) in &attempts {
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        cluster.plugin_ok(3, &json!({"command": "release", "args": {"ips": ips}}));
        cluster.plugin_ok(
            3,
            &json!({"command": "cleanup", "args": {"hostname": "agent", "container_id": id}}),
        );
    }
    drop(attempts);
    let d = cluster.launch(3, 9999, &["web"]);
    assert!(
        wait_until(PROPAGATION, || reaches(&a, &d) && reaches(&d, &a)).is_some(),
        "node 1 never reached a container launched on node 3 after the outage"
    );
    let (used, _, out) = addresses_in_use(&cluster);
    assert_eq!(
        used, 6,
        "addresses leaked (a, b and d hold two each): {out}"
    );
    for x in 1..=3u8 {
        let links = cluster
            .node(x)
            .ns
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("cali")))
            .count();
        let want = 1; // a on node 1, b on node 2, d on node 3
        assert!(
            wait_until(PROPAGATION, || {
                cluster
                    .node(x)
                    .ns
                    .ip_json(&["link", "show"])
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with("cali")))
                    .count()
                    == want
            })
            .is_some(),
            "node {x} has {links} cali links, want {want}"
        );
    }
    for d in daemons {
        assert!(d.stop());
    }
}

#[test]
fn a_daemon_whose_watch_revision_was_compacted_relists_and_converges() {
    if !testsupport::require_root() {
        return;
    }
    let (cluster, mut etcd) = cluster_on_etcd("cmpct", 2);
    let first = cluster.start_daemon(1);
    let _second = cluster.start_daemon(2);
    let a = cluster.launch(1, 1, &["web"]);
    let b = cluster.launch(2, 2, &["web"]);
    assert!(wait_until(PROPAGATION, || reaches(&a, &b)).is_some());
    // Freeze node 1's daemon, cut its watch, change what its policy
    // depends on, and compact the history past its revision.
    first.signal(libc::SIGSTOP);
    etcd.restart();
    let c = cluster.launch(2, 3, &["web"]);
    etcd.compact(etcd.revision());
    first.signal(libc::SIGCONT);
    assert!(
        wait_until(PROPAGATION, || reaches(&a, &c) && reaches(&c, &a)).is_some(),
        "node 1 never let the new member in after the compaction:\n{}",
        first.log_text()
    );
    assert!(
        first.log_text().contains("compacted"),
        "node 1's daemon did not notice the compaction:\n{}",
        first.log_text()
    );
}
