//! Recovery, in test namespaces through the real binary (TESTING.md):
//! drift repaired by the daemon without any isolate call (time to repair
//! printed, never asserted), the daemon SIGKILLed during concurrent
//! isolates, a node namespace flushed as by a reboot, and containers that
//! died without cleanup collected after the grace period.

mod common;

use common::agent::{isolate, wait_until, Agent, Daemon, Launched};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;
use testsupport::{ping, require_root, Container, Node};

/// Longest any repair or convergence may take before the test fails.
const LIMIT: Duration = Duration::from_secs(20);

fn ifname_of(agent: &Agent, id: &str) -> String {
    agent.status()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["container_id"] == id)
        .map(|e| e["interface"].as_str().unwrap().to_string())
        .expect("endpoint listed")
}

/// The dataplane of `c` is complete and carries packets both ways.
fn healthy(agent: &Agent, c: &Launched, peer: &Launched) -> bool {
    let ifname = reconcilers::endpoint::host_ifname(&c.id);
    agent
        .our_routes()
        .contains(&format!("{} dev {ifname}", c.v4))
        && agent
            .our_routes()
            .contains(&format!("{} dev {ifname}", c.v6))
        && ping(&peer.container, c.v4)
        && ping(&peer.container, c.v6)
}

/// One way to break an endpoint: what it is, and doing it.
type Break<'a> = (&'a str, Box<dyn Fn() + 'a>);

/// `ip -j link show` of one link says it is up.
fn is_up(link: &serde_json::Value) -> bool {
    link[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "UP"))
}

/// For each break in turn: `c` and `peer` are healthy, the break is made,
/// `repaired` holds within `limit` (else the daemon's log is shown), and
/// they are healthy again. Prints each time to repair.
fn break_each_and_wait_for_repair(
    agent: &Agent,
    daemon: &Daemon,
    (c, peer): (&Launched, &Launched),
    breaks: &[Break],
    limit: Duration,
    repaired: impl Fn() -> bool,
) {
    for (what, break_it) in breaks {
        assert!(healthy(agent, c, peer), "healthy before: {what}");
        break_it();
        let took = wait_until(limit, &repaired).unwrap_or_else(|| {
            panic!(
                "{what}: not repaired within {limit:?}\n{}",
                daemon.log_text()
            )
        });
        println!("time to repair, {what}: {:.1} ms", took.as_secs_f64() * 1e3);
        assert!(healthy(agent, c, peer), "pings after: {what}");
    }
}

#[test]
fn drift_is_repaired_without_any_isolate() {
    if !require_root() {
        return;
    }
    let agent = Agent::new("drift", 1);
    let daemon = agent.start_daemon_with(&[("CALICO_MESOS_RESYNC_INTERVAL", "1s")]);
    // One netgroup, so policy lets the pair talk.
    let a = agent.launch(0, &["app"]);
    let b = agent.launch(1, &["app"]);
    let ifname = ifname_of(&agent, &a.id);
    let breaks: [Break; 6] = [
        (
            "delete the host-side veth",
            Box::new(|| {
                agent.node.ns.ip(&["link", "del", &ifname]);
            }),
        ),
        (
            "delete a host route",
            Box::new(|| {
                agent.node.ns.ip(&["route", "del", &format!("{}/32", a.v4)]);
            }),
        ),
        (
            "delete a container address",
            Box::new(|| {
                a.container.exec_ok(&[
                    "ip",
                    "addr",
                    "del",
                    &format!("{}/128", a.v6),
                    "dev",
                    "eth0",
                ]);
            }),
        ),
        (
            "set the host link down",
            Box::new(|| {
                agent.node.ns.ip(&["link", "set", &ifname, "down"]);
            }),
        ),
        (
            "delete the container's default route",
            Box::new(|| {
                a.container.exec_ok(&["ip", "route", "del", "default"]);
            }),
        ),
        // No event for this one: the resync finds it in its inventory.
        (
            "turn proxy ARP off on the host veth",
            Box::new(|| {
                agent.node.ns.exec_ok(&[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{ifname}.proxy_arp=0"),
                ]);
            }),
        ),
    ];
    break_each_and_wait_for_repair(&agent, &daemon, (&a, &b), &breaks, LIMIT, || {
        let host = agent.node.ns.ip_json(&["link", "show", "dev", &ifname]);
        let addrs = a.container.exec_ok(&["ip", "addr", "show", "dev", "eth0"]);
        let routes = a.container.exec_ok(&["ip", "route", "show", "default"]);
        let proxy_arp = agent
            .node
            .ns
            .sysctl(&format!("net/ipv4/conf/{ifname}/proxy_arp"));
        is_up(&host)
            && proxy_arp == "1"
            && addrs.contains(&a.v6.to_string())
            && routes.contains("169.254.1.1")
            && agent
                .our_routes()
                .contains(&format!("{} dev {ifname}", a.v4))
    });
    assert!(daemon.stop());
}

/// Drift inside a container's namespace makes no event in the node's: the
/// daemon hears it on its one event socket, tagged with the container's
/// namespace id. Drift of the host side is heard in the node's namespace,
/// among the daemon's own changes' echoes and link events that change
/// nothing it manages (which it skips). The resync is an hour away, so
/// only the event can repair each within the wait.
#[test]
fn drift_is_repaired_by_its_event_alone() {
    if !require_root() {
        return;
    }
    const EVENT_LIMIT: Duration = Duration::from_secs(10);
    let agent = Agent::new("evdrift", 1);
    let daemon = agent.start_daemon_with(&[("CALICO_MESOS_RESYNC_INTERVAL", "1h")]);
    let a = agent.launch(0, &["app"]);
    let b = agent.launch(1, &["app"]);
    let ifname = ifname_of(&agent, &a.id);
    let v4 = format!("{}/32", a.v4);
    let v6 = a.v6.to_string();
    let gateway_v6 = reconcilers::endpoint::GATEWAY_V6.to_string();
    let breaks: [Break; 9] = [
        // The host side has no IPv6 address to solicit from: without this
        // permanent entry nothing reaches the container over IPv6.
        (
            "delete the host's neighbour entry of the container's IPv6 address",
            Box::new(|| {
                agent
                    .node
                    .ns
                    .ip(&["-6", "neigh", "del", &v6, "dev", &ifname]);
            }),
        ),
        (
            "delete the container's IPv6 gateway neighbour",
            Box::new(|| {
                a.container
                    .exec_ok(&["ip", "-6", "neigh", "del", &gateway_v6, "dev", "eth0"]);
            }),
        ),
        (
            "delete the container's IPv4 address",
            Box::new(|| {
                a.container
                    .exec_ok(&["ip", "addr", "del", &v4, "dev", "eth0"]);
            }),
        ),
        (
            "delete the container's default route",
            Box::new(|| {
                a.container.exec_ok(&["ip", "route", "del", "default"]);
            }),
        ),
        (
            "set the container's eth0 down",
            Box::new(|| {
                a.container.exec_ok(&["ip", "link", "set", "eth0", "down"]);
            }),
        ),
        (
            "set the host link down",
            Box::new(|| {
                agent.node.ns.ip(&["link", "set", &ifname, "down"]);
            }),
        ),
        // The kernel reports this one as its own change (port id 0), like
        // the carrier coming up: only the alias in it tells them apart.
        (
            "change the host link's alias",
            Box::new(|| {
                agent
                    .node
                    .ns
                    .ip(&["link", "set", &ifname, "alias", "someone-else"]);
            }),
        ),
        (
            "delete a host route",
            Box::new(|| {
                agent.node.ns.ip(&["route", "del", &v4]);
            }),
        ),
        (
            "delete the host-side veth",
            Box::new(|| {
                agent.node.ns.ip(&["link", "del", &ifname]);
            }),
        ),
    ];
    // The resync is an hour away: only an event can repair within the wait.
    break_each_and_wait_for_repair(&agent, &daemon, (&a, &b), &breaks, EVENT_LIMIT, || {
        let eth0 = a.container.ip_json(&["link", "show", "dev", "eth0"]);
        let host = agent.node.ns.ip_json(&["link", "show", "dev", &ifname]);
        let addrs = a.container.exec_ok(&["ip", "addr", "show", "dev", "eth0"]);
        let routes = a.container.exec_ok(&["ip", "route", "show", "default"]);
        let host_neighbours = agent.node.ns.ip(&["-6", "neigh", "show", "dev", &ifname]);
        let gateway_neighbours = a
            .container
            .exec_ok(&["ip", "-6", "neigh", "show", "dev", "eth0"]);
        let permanent = |table: &str, addr: &str| {
            table
                .lines()
                .any(|l| l.starts_with(&format!("{addr} ")) && l.contains("PERMANENT"))
        };
        is_up(&eth0)
            && is_up(&host)
            && host[0]["ifalias"] == "calico-mesos"
            && permanent(&host_neighbours, &v6)
            && permanent(&gateway_neighbours, &gateway_v6)
            && addrs.contains(&v4)
            && routes.contains("169.254.1.1")
            && agent
                .our_routes()
                .contains(&format!("{} dev {ifname}", a.v4))
    });
    assert!(daemon.stop());
}

#[test]
fn daemon_killed_during_concurrent_isolates_converges() {
    if !require_root() {
        return;
    }
    const N: usize = 50;
    let agent = Agent::new("crash", 1);
    let mut daemon = agent.start_daemon();
    // Allocate first (fast), then isolate all at once and kill the daemon
    // while they run.
    let mut pending = Vec::new();
    for n in 0..N {
        let container = Container::new(&agent.node.ns);
        let reply = agent.plugin_ok(&serde_json::json!({"command": "allocate", "args": {
            "hostname": "agent", "uid": format!("task-{n}"), "num_ipv4": 1, "num_ipv6": 1}}));
        pending.push(Launched {
            id: format!("container-{n}"),
            uid: format!("task-{n}"),
            v4: reply.addrs("ipv4")[0],
            v6: reply.addrs("ipv6")[0],
            container,
        });
    }
    let running: Vec<_> = pending
        .iter()
        .map(|c| agent.plugin_spawn(&isolate(&c.id, c.container.pid(), c.v4, c.v6, &["app"])))
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    daemon.kill();
    // Each isolate ends (answered by the daemon, inline after it died, or
    // with an error): none hangs.
    let failed: Vec<String> = running
        .into_iter()
        .filter_map(|r| match common::check_answer(&r.finish()) {
            Ok(reply) => reply.error().map(String::from),
            Err(e) => Some(e),
        })
        .collect();
    println!(
        "{} of {N} isolates answered success across the crash; failures: {failed:?}",
        N - failed.len()
    );

    let daemon = agent.start_daemon();
    let converged = wait_until(LIMIT, || {
        let status = agent.status();
        let rows = status["endpoints"].as_array().unwrap();
        rows.len() == N && rows.iter().all(|r| r["phase"] == "Ready")
    });
    assert!(
        converged.is_some(),
        "not all Ready: {}\n{}",
        agent.status(),
        daemon.log_text()
    );
    // Every endpoint carries packets; no leak and nothing twice.
    for c in &pending {
        assert!(ping(&agent.node.ns, c.v4), "node -> {}", c.id);
    }
    // Policy converged too (the kill falls between intent and policy for
    // some of them): members of one netgroup reach each other.
    assert!(ping(&pending[0].container, pending[N - 1].v6));
    assert!(ping(&pending[N - 1].container, pending[0].v4));
    assert_eq!(agent.host_links().len(), N);
    assert_eq!(agent.our_routes().len(), 2 * N);
    let addrs: BTreeSet<IpAddr> = pending.iter().flat_map(|c| [c.v4, c.v6]).collect();
    assert_eq!(addrs.len(), 2 * N, "an address was handed out twice");
    assert_eq!(agent.store.used(), 2 * N as u64);
    for c in &pending {
        agent.finish(c);
    }
    assert!(agent.host_links().is_empty());
    assert!(agent.our_routes().is_empty());
    assert_eq!(agent.store.used(), 0);
    assert!(daemon.stop());
}

#[test]
fn reboot_rebuilds_live_containers_and_collects_dead_ones() {
    if !require_root() {
        return;
    }
    let mut agent = Agent::new("reboot", 1);
    let launched: Vec<Launched> = (0..4).map(|n| agent.launch(n, &[])).collect();
    // "Reboot": the node namespace and everything in it go; the
    // containers live on (with only lo left).
    agent.node = Node::new("reboot", 1);
    // The kernel tears the old namespace's veths down in the background.
    let pids: Vec<u32> = launched.iter().map(|c| c.container.pid()).collect();
    testsupport::wait_no_eth0(&pids, Duration::from_secs(30));
    for c in &launched {
        assert_eq!(
            c.container
                .ip_json(&["link", "show"])
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
    let (ok, out, err) = agent.cli(&["reconcile", "--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("4 endpoint(s): 4 ready (4 would change)"),
        "{out}"
    );
    assert!(agent.host_links().is_empty(), "a dry run changes nothing");
    let (ok, out, err) = agent.cli(&["reconcile"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("4 endpoint(s): 4 ready (4 changed)"), "{out}");
    for c in &launched {
        assert!(ping(&agent.node.ns, c.v4), "node -> {} after reboot", c.id);
        assert!(
            ping(&c.container, IpAddr::V6(agent.node.v6)),
            "{} -> node after reboot",
            c.id
        );
    }
    let (ok, out, _) = agent.cli(&["reconcile"]);
    assert!(
        ok && out.contains("4 ready (0 changed)"),
        "a second pass changes nothing: {out}"
    );

    // Strays: a veth of ours no endpoint accounts for and a route of ours
    // for a foreign address through an endpoint's veth are removed; a
    // `cali*` veth of someone else (no alias of ours) is left alone.
    let ns = &agent.node.ns;
    ns.ip(&[
        "link",
        "add",
        "calistray000001",
        "type",
        "veth",
        "peer",
        "name",
        "straypeer1",
    ]);
    ns.ip(&["link", "set", "calistray000001", "alias", "calico-mesos"]);
    ns.ip(&[
        "link",
        "add",
        "califoreign0001",
        "type",
        "veth",
        "peer",
        "name",
        "straypeer2",
    ]);
    let ifname = reconcilers::endpoint::host_ifname(&launched[0].id);
    ns.ip(&[
        "route",
        "add",
        "198.18.99.99/32",
        "dev",
        &ifname,
        "proto",
        "81",
    ]);
    let (ok, out, err) = agent.cli(&["reconcile"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 stray link(s) or route(s)"), "{out}");
    assert!(out.contains("delete link calistray000001"), "{out}");
    assert!(out.contains("delete route 198.18.99.99/32"), "{out}");
    let links = agent.host_links();
    assert!(!links.contains("calistray000001"), "{links:?}");
    assert!(
        links.contains("califoreign0001"),
        "someone else's link stays: {links:?}"
    );
    assert!(!agent
        .our_routes()
        .iter()
        .any(|r| r.starts_with("198.18.99.99")));
    ns.ip(&["link", "del", "califoreign0001"]);

    // Two containers die and no cleanup ever comes (the agent restarted).
    let mut launched = launched;
    let dead: Vec<Launched> = launched.drain(2..).collect();
    let dead_addrs: Vec<IpAddr> = dead.iter().flat_map(|c| [c.v4, c.v6]).collect();
    for mut c in dead {
        c.container.kill();
    }
    let grace = [("CALICO_MESOS_ORPHAN_GRACE", "1s")];
    let reconcile = |agent: &Agent| {
        let mut cmd = agent.command();
        cmd.arg("reconcile").envs(grace);
        let out = common::run(cmd, b"");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = reconcile(&agent);
    assert!(out.contains("2 orphaned"), "{out}");
    assert_eq!(
        agent.store.used(),
        8,
        "addresses are kept during the grace period"
    );
    std::thread::sleep(Duration::from_millis(1100));
    let out = reconcile(&agent);
    assert!(out.contains("2 removed"), "{out}");
    assert_eq!(agent.store.used(), 4);
    assert_eq!(agent.host_links().len(), 2);
    // The freed addresses are handed out again.
    let reply = agent.plugin_ok(&serde_json::json!({"command": "reserve", "args": {
        "hostname": "agent", "uid": "again", "ipv4_addrs": [dead_addrs[0].to_string()]}}));
    assert!(reply.is_ok());

    // An allocation whose isolate never comes (the agent restarted between
    // the two), and the reservation above, never isolated either: their
    // addresses are released once no endpoint has used them for
    // leak_grace, and the live containers' stay.
    agent.plugin_ok(&serde_json::json!({"command": "allocate", "args": {
        "hostname": "agent", "uid": "never-isolated", "num_ipv4": 1, "num_ipv6": 1}}));
    assert_eq!(agent.store.used(), 7);
    let collect = |agent: &Agent, leak_grace: &str| {
        let mut cmd = agent.command();
        cmd.arg("reconcile")
            .envs(grace)
            .env("CALICO_MESOS_LEAK_GRACE", leak_grace);
        let out = common::run(cmd, b"");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = collect(&agent, "10m");
    assert!(out.contains("0 leaked allocation(s) released"), "{out}");
    assert_eq!(agent.store.used(), 7, "kept during leak_grace");
    std::thread::sleep(Duration::from_millis(1100));
    let out = collect(&agent, "1s");
    assert!(out.contains("2 leaked allocation(s) released"), "{out}");
    assert!(out.contains("leaked: uid never-isolated ("), "{out}");
    assert!(out.contains("leaked: uid again ("), "{out}");
    assert_eq!(agent.store.used(), 4, "the live containers' addresses stay");
    for c in &launched {
        assert!(
            ping(&agent.node.ns, c.v4),
            "node -> {} after the collection",
            c.id
        );
    }
    for c in &launched {
        agent.finish(c);
    }
}
