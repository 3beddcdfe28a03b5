//! The helpers themselves: a node reaches its gateway and nothing else,
//! containers get namespaces of their own, and everything is cleaned up.

use std::net::IpAddr;
use testsupport::{ping, require_root, Container, Netns, Node, GATEWAY_V4, GATEWAY_V6};

fn netns_list() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .filter(|n| n.contains(&format!("-{}-", std::process::id())))
        .collect();
    v.sort();
    v
}

#[test]
fn node_reaches_gateway_and_cleans_up() {
    if !require_root() {
        return;
    }
    let names;
    {
        let node = Node::new("topo", 7);
        names = vec![node.ns.name().to_string(), node.gateway.name().to_string()];
        assert!(ping(&node.ns, IpAddr::V4(GATEWAY_V4)));
        assert!(ping(&node.ns, IpAddr::V6(GATEWAY_V6)));
        // The gateway does not forward: the node's default route ends there.
        assert!(!ping(&node.ns, "198.19.0.99".parse().unwrap()));
        let c = Container::new(&node.ns);
        assert_ne!(c.inode(), node.ns.inode());
        let links = c.ip_json(&["link", "show"]);
        assert_eq!(
            links.as_array().unwrap().len(),
            1,
            "a fresh namespace has only lo: {links}"
        );
        // Runs in-process code inside the node namespace.
        let ino = node
            .ns
            .run(|| testsupport::netns_inode("/proc/thread-self/ns/net").unwrap());
        assert_eq!(ino, node.ns.inode());
    }
    let left = netns_list();
    for n in names {
        assert!(!left.contains(&n), "{n} left behind");
    }
}

#[test]
fn guard_cleans_up_on_panic() {
    if !require_root() {
        return;
    }
    let name = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let ns = Netns::new("panic");
        *name.lock().unwrap() = ns.name().to_string();
        let _c = Container::new(&ns);
        panic!("deliberate");
    });
    assert!(r.is_err());
    let name = name.into_inner().unwrap();
    assert!(
        !netns_list().contains(&name),
        "{name} left behind after a panic"
    );
}
