//! End to end through the real binary, in test namespaces (TESTING.md):
//! containers launched through net-modules' allocate → isolate, the kernel
//! read back, real pings both families, release → cleanup leaving nothing.
//! Once with no daemon (the plugin reconciles inline) and once with one.

mod common;

use common::agent::{isolate, Agent, Launched};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::IpAddr;
use testsupport::{ping, require_root};

fn end_to_end(tag: &str, with_daemon: bool) {
    let agent = Agent::new(tag, 1);
    let daemon = with_daemon.then(|| agent.start_daemon());
    // All share `web`, so every pair may talk (who may not is the policy
    // tests' business, tests/policy_e2e.rs).
    let groups: [&[&str]; 5] = [
        &["web"],
        &["web"],
        &["web", "db"],
        &["db", "web"],
        &["web", "public"],
    ];
    let launched: Vec<Launched> = groups
        .iter()
        .enumerate()
        .map(|(n, g)| agent.launch(n, g))
        .collect();

    // The kernel, read back: one link and two routes of ours per container.
    let status = agent.status();
    assert_eq!(status["daemon_running"], with_daemon, "{status}");
    let (ok, table, _) = agent.cli(&["status"]);
    assert!(
        ok && table.contains("Ready") && table.contains(&launched[3].v4.to_string()),
        "{table}"
    );
    let mut want_links = BTreeSet::new();
    let mut want_routes = BTreeSet::new();
    for (c, row) in launched.iter().zip(status["endpoints"].as_array().unwrap()) {
        assert_eq!(row["container_id"], c.id.as_str());
        assert_eq!(row["phase"], "Ready", "{row}");
        let ifname = row["interface"].as_str().unwrap().to_string();
        want_routes.insert(format!("{} dev {ifname}", c.v4));
        want_routes.insert(format!("{} dev {ifname}", c.v6));
        let link = &agent.node.ns.ip_json(&["link", "show", "dev", &ifname])[0];
        assert_eq!(link["address"], "ee:ee:ee:ee:ee:ee");
        assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        want_links.insert(ifname);
        let addrs = c
            .container
            .ip_json(&["addr", "show", "dev", "eth0", "scope", "global"]);
        let got: BTreeSet<String> = addrs[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            // `ip -j` leaves an empty object for each address it filtered out.
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect();
        assert_eq!(
            got,
            BTreeSet::from([format!("{}/32", c.v4), format!("{}/128", c.v6)])
        );
        assert_eq!(row["mac"].as_str().unwrap().len(), 17, "{row}");
    }
    assert_eq!(agent.host_links(), want_links);
    assert_eq!(agent.our_routes(), want_routes);

    // Real packets: container <-> container, node <-> container, both families.
    let first = &launched[0];
    for c in &launched[1..] {
        for (a, b) in [(first, c), (c, first)] {
            assert!(ping(&a.container, b.v4), "{} -> {} (IPv4)", a.id, b.id);
            assert!(ping(&a.container, b.v6), "{} -> {} (IPv6)", a.id, b.id);
        }
    }
    for c in &launched {
        assert!(ping(&agent.node.ns, c.v4), "node -> {} (IPv4)", c.id);
        assert!(ping(&agent.node.ns, c.v6), "node -> {} (IPv6)", c.id);
        assert!(
            ping(&c.container, IpAddr::V4(agent.node.v4)),
            "{} -> node (IPv4)",
            c.id
        );
        assert!(
            ping(&c.container, IpAddr::V6(agent.node.v6)),
            "{} -> node (IPv6)",
            c.id
        );
    }

    // A repeated isolate changes nothing; other addresses are refused.
    let before = agent
        .node
        .ns
        .ip_json(&["link", "show", "dev", want_links.first().unwrap()]);
    for c in &launched {
        agent.plugin_ok(&isolate(&c.id, c.container.pid(), c.v4, c.v6, groups[0]));
    }
    let c = &launched[0];
    let refused = agent.plugin(&isolate(
        &c.id,
        c.container.pid(),
        launched[1].v4,
        c.v6,
        &[],
    ));
    assert_eq!(
        refused.error(),
        Some("This container has already been configured with Calico Networking.")
    );
    assert_eq!(
        agent
            .node
            .ns
            .ip_json(&["link", "show", "dev", want_links.first().unwrap()]),
        before
    );

    // release → cleanup, as net-modules does: nothing left anywhere.
    for c in &launched {
        agent.finish(c);
        assert_eq!(
            c.container
                .ip_json(&["link", "show"])
                .as_array()
                .unwrap()
                .len(),
            1,
            "only lo left in {}",
            c.id
        );
    }
    assert!(agent.host_links().is_empty(), "{:?}", agent.host_links());
    assert!(agent.our_routes().is_empty(), "{:?}", agent.our_routes());
    assert!(
        agent.policy_entries().is_empty(),
        "{:?}",
        agent.policy_entries()
    );
    assert_eq!(agent.store.used(), 0);
    let dump = agent.store.dump();
    assert!(!dump.contains("\"endpoint/"), "{dump}");
    assert!(!dump.contains("\"status/"), "{dump}");
    // Cleanup again: unknown containers succeed.
    agent.plugin_ok(&json!({"command": "cleanup", "args": {"hostname": "agent", "container_id": launched[0].id}}));
    if let Some(d) = daemon {
        assert!(d.stop(), "the daemon stops cleanly on SIGTERM");
    }
}

#[test]
fn five_containers_without_a_daemon() {
    if !require_root() {
        return;
    }
    end_to_end("e2einl", false);
}

#[test]
fn five_containers_with_the_daemon() {
    if !require_root() {
        return;
    }
    end_to_end("e2edmn", true);
}

#[test]
fn isolate_of_a_process_that_does_not_exist_changes_nothing() {
    if !require_root() {
        return;
    }
    let agent = Agent::new("e2enop", 1);
    let mut c = testsupport::Container::new(&agent.node.ns);
    let pid = c.pid();
    c.kill();
    let before = agent.store.dump();
    let reply = agent.plugin(&isolate(
        "gone",
        pid,
        "198.18.0.1".parse().unwrap(),
        "2001:db8:1::1".parse().unwrap(),
        &[],
    ));
    let error = reply.error().expect("an error");
    assert!(
        error.starts_with("Cannot isolate container 'gone': process"),
        "{error}"
    );
    assert_eq!(agent.store.dump(), before);
    assert!(agent.host_links().is_empty());
}

#[test]
fn isolate_of_a_process_in_the_node_namespace_is_refused() {
    if !require_root() {
        return;
    }
    let agent = Agent::new("e2enode", 1);
    // A process of the node itself, not of a container.
    let mut node_process = std::process::Command::new("ip")
        .args(["netns", "exec", agent.node.ns.name(), "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = node_process.id();
    let in_node = common::agent::wait_until(std::time::Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    assert!(in_node.is_some());
    let before = agent.store.dump();
    let reply = agent.plugin(&isolate(
        "host",
        pid,
        "198.18.0.1".parse().unwrap(),
        "2001:db8:1::1".parse().unwrap(),
        &[],
    ));
    let _ = node_process.kill();
    let _ = node_process.wait();
    let error = reply.error().expect("an error");
    assert!(error.contains("node's own network namespace"), "{error}");
    assert_eq!(agent.store.dump(), before);
    // The node's own eth0 is untouched.
    assert!(ping(&agent.node.ns, IpAddr::V4(testsupport::GATEWAY_V4)));
}

/// Runs one request like `Agent::plugin`, with extra environment; returns
/// the reply (its stderr has the plugin's logs).
fn plugin_with(agent: &Agent, env: &[(&str, &str)], request: &serde_json::Value) -> common::Reply {
    let mut cmd = agent.command();
    cmd.envs(env.iter().copied());
    let out = common::run(cmd, request.to_string().as_bytes());
    common::check_answer(&out).unwrap_or_else(|e| panic!("{e}\nrequest: {request}"))
}

#[test]
fn the_daemon_answers_plugins_configured_like_it_and_leaves_the_others_to_themselves() {
    if !require_root() {
        return;
    }
    let agent = Agent::new("e2esrv", 1);
    let daemon = agent.start_daemon_with(&[("CALICO_MESOS_LOG_LEVEL", "debug")]);
    let debug = [("CALICO_MESOS_LOG_LEVEL", "debug")];
    let answered_here = "answering it here";

    // Allocates and isolates container `c` with `env`; true when both
    // were answered by the plugin process itself.
    let launch = |env: &[(&str, &str)], c: &str| {
        let container = testsupport::Container::new(&agent.node.ns);
        let allocate = json!({"command": "allocate", "args": {
            "hostname": "agent", "uid": format!("task-{c}"), "num_ipv4": 1, "num_ipv6": 1}});
        let reply = plugin_with(&agent, env, &allocate);
        assert!(reply.is_ok(), "{}", reply.answer);
        let (v4, v6) = (reply.addrs("ipv4")[0], reply.addrs("ipv6")[0]);
        let isolated = plugin_with(&agent, env, &isolate(c, container.pid(), v4, v6, &["web"]));
        assert!(isolated.is_ok(), "{}", isolated.answer);
        let here = [reply, isolated].map(|r| r.stderr.contains(answered_here));
        assert_eq!(here[0], here[1], "allocate and isolate alike");
        (container, v4, v6, here[0])
    };
    let served =
        |d: &common::agent::Daemon| d.log_text().matches("answered a plugin's request").count();

    // Configured like the daemon: the daemon answers allocate and isolate.
    let (a, a4, a6, here) = launch(&debug, "c-a");
    assert!(!here);
    assert_eq!(served(&daemon), 2, "{}", daemon.log_text());

    // Configured for another store (another etcd prefix): the plugin
    // answers itself, and the daemon still reconciles when kicked.
    let other = [
        ("CALICO_MESOS_LOG_LEVEL", "debug"),
        ("CALICO_MESOS_ETCD_PREFIX", "/other/"),
    ];
    let (b, b4, b6, here) = launch(&other, "c-b");
    assert!(here);
    assert_eq!(served(&daemon), 2, "{}", daemon.log_text());

    // Both work alike.
    for (from, to) in [(&a, b4), (&a, b6), (&b, a4), (&b, a6)] {
        assert!(ping(from, to), "no ping to {to}");
    }
    // A validation error is answered by the plugin before anything else.
    let reply = plugin_with(&agent, &debug, &json!({"command": "allocate", "args": {}}));
    assert_eq!(reply.error(), Some("Missing uid"));
    assert_eq!(served(&daemon), 2);

    for (id, uid) in [("c-a", "task-c-a"), ("c-b", "task-c-b")] {
        agent.plugin_ok(&json!({"command": "release", "args": {"uid": uid}}));
        agent.plugin_ok(
            &json!({"command": "cleanup", "args": {"hostname": "agent", "container_id": id}}),
        );
    }
    assert!(agent.host_links().is_empty());
    assert!(agent.our_routes().is_empty());
    assert!(daemon.stop(), "the daemon stops cleanly on SIGTERM");
}
