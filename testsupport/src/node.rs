//! [`Node`]: a simulated Mesos agent (TESTING.md rule 2).

use crate::netns::Netns;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The gateway's IPv4 address on the fabric (198.19.0.0/24).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);
/// The gateway's IPv6 address on the fabric (2001:db8:f::/64).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0xfe);

/// A node namespace that looks like a real agent: an "agent address"
/// (198.19.0.x/24 and 2001:db8:f::x/64) on `eth0`, a veth into a gateway
/// namespace made by the test, and default routes via that gateway.
///
/// The gateway has forwarding off, so nothing the node sends goes any
/// further. Both namespaces are deleted on drop (the node first).
#[derive(Debug)]
pub struct Node {
    /// The node namespace: run the product in here.
    pub ns: Netns,
    /// The gateway namespace at the other end of the node's `eth0`.
    pub gateway: Netns,
    /// The node's agent address, IPv4.
    pub v4: Ipv4Addr,
    /// The node's agent address, IPv6.
    pub v6: Ipv6Addr,
}

impl Node {
    /// Builds node number `x` (1..=253) of a test; `tag` names the test.
    pub fn new(tag: &str, x: u8) -> Node {
        assert!((1..=253).contains(&x), "node number {x} outside 1..=253");
        let short: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(6)
            .collect();
        // The gateway is created first and so dropped last (field order
        // below drops the node namespace first).
        let gateway = Netns::new(&format!("{short}g{x}"));
        let ns = Netns::new(&format!("{short}n{x}"));
        let v4 = Ipv4Addr::new(198, 19, 0, x);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, x as u16);
        let node = Node {
            ns,
            gateway,
            v4,
            v6,
        };
        let gw = node.gateway.name().to_string();
        // Created inside the node namespace, peer placed straight into the
        // gateway's: the root namespace never sees either end.
        node.ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", &gw,
        ]);
        for (ns, dev) in [(&node.ns, "eth0"), (&node.gateway, "up0")] {
            ns.exec_ok(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{dev}.accept_dad=0"),
            ]);
        }
        node.gateway
            .exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        node.gateway
            .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
        node.gateway
            .ip(&["addr", "add", &format!("{GATEWAY_V4}/24"), "dev", "up0"]);
        node.gateway.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            "up0",
            "nodad",
        ]);
        node.gateway.ip(&["link", "set", "up0", "up"]);
        node.ns
            .ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        node.ns
            .ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        node.ns.ip(&["link", "set", "eth0", "up"]);
        node.ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V4.to_string(),
            "dev",
            "eth0",
        ]);
        node.ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V6.to_string(),
            "dev",
            "eth0",
        ]);
        node
    }
}
