//! Detecting the node's own addresses against the real kernel, inside a
//! test node namespace (TESTING.md): the agent address is found, and
//! `docker*` bridges, `cali*` veths and `lo` are passed over.

use reconcilers::node::detect_addresses;
use std::net::IpAddr;
use testsupport::{require_root, Node};

/// Detects in the node namespace. The runtime is built outside it: tokio's
/// first IO runtime makes a process-wide socket pair, which would
/// otherwise pin the node namespace.
fn detect(node: &Node) -> Vec<IpAddr> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    node.ns
        .run(move || rt.block_on(detect_addresses()))
        .expect("detect the node's addresses")
}

#[test]
fn detects_the_agent_address_and_skips_bridges_veths_and_lo() {
    if !require_root() {
        return;
    }
    let node = Node::new("nodeaddr", 1);
    assert_eq!(
        detect(&node),
        vec![IpAddr::V4(node.v4), IpAddr::V6(node.v6)],
        "a node with one agent address"
    );

    // Interfaces that must never count, made before eth1 so that their
    // indexes are lower than its.
    node.ns.ip(&["link", "add", "docker0", "type", "bridge"]);
    node.ns
        .ip(&["addr", "add", "198.19.0.201/32", "dev", "docker0"]);
    node.ns.ip(&[
        "addr",
        "add",
        "2001:db8:f::201/128",
        "dev",
        "docker0",
        "nodad",
    ]);
    node.ns.ip(&["link", "set", "docker0", "up"]);
    node.ns.ip(&[
        "link",
        "add",
        "cali0123456789a",
        "type",
        "veth",
        "peer",
        "name",
        "cali0123456789b",
    ]);
    node.ns
        .ip(&["addr", "add", "198.19.0.202/32", "dev", "cali0123456789a"]);
    node.ns.ip(&["addr", "add", "198.19.0.203/32", "dev", "lo"]);
    node.ns.ip(&[
        "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
    ]);
    node.ns
        .ip(&["addr", "add", "198.19.0.210/32", "dev", "eth1"]);
    node.ns
        .ip(&["addr", "add", "2001:db8:f::210/128", "dev", "eth1", "nodad"]);
    node.ns.ip(&["link", "set", "eth1", "up"]);

    assert_eq!(
        detect(&node),
        vec![IpAddr::V4(node.v4), IpAddr::V6(node.v6)],
        "eth0 comes first"
    );

    // Without eth0's addresses, the next qualifying interface is eth1,
    // although docker0 and the cali veth have lower indexes.
    node.ns
        .ip(&["addr", "flush", "dev", "eth0", "scope", "global"]);
    assert_eq!(
        detect(&node),
        vec![
            "198.19.0.210".parse::<IpAddr>().unwrap(),
            "2001:db8:f::210".parse().unwrap()
        ],
    );

    // Nothing qualifies: an empty answer, not an error.
    node.ns.ip(&["link", "del", "eth1"]);
    assert_eq!(detect(&node), Vec::<IpAddr>::new());
}
