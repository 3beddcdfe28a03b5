//! [`Fabric`]: several simulated agents ("nodes") on one L2 segment, the
//! topology the fabric routes between nodes are made for (TESTING.md rule 2).

use crate::etcd::Etcd;
use crate::netns::Netns;
use crate::node::{GATEWAY_V4, GATEWAY_V6};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One node of a [`Fabric`].
#[derive(Debug)]
pub struct FabricNode {
    /// The node namespace: run the product in here.
    pub ns: Netns,
    /// The node's fabric (agent) address on `eth0`, IPv4: 198.19.0.x/24.
    pub v4: Ipv4Addr,
    /// The node's fabric (agent) address on `eth0`, IPv6: 2001:db8:f::x/64.
    pub v6: Ipv6Addr,
}

impl FabricNode {
    /// Both fabric addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(self.v4), IpAddr::V6(self.v6)]
    }
}

/// Nodes 1..=n, each a namespace whose `eth0` is a veth into a bridge in
/// a "switch" namespace made by the test. Node x has 198.19.0.x/24 and
/// 2001:db8:f::x/64 (no duplicate address detection anywhere) and default
/// routes via the switch's own addresses ([`GATEWAY_V4`], [`GATEWAY_V6`]
/// on the bridge), like a real agent; the switch forwards nothing further.
///
/// Forwarding in the nodes is left as the kernel made it (off): a test
/// that routes through a node turns it on there. Every namespace is
/// deleted on drop (the nodes first, then the switch).
#[derive(Debug)]
pub struct Fabric {
    /// The nodes, node x at index x - 1.
    pub nodes: Vec<FabricNode>,
    /// The switch namespace holding the bridge `br0`.
    pub switch: Netns,
}

impl Fabric {
    /// Builds `count` (1..=253) nodes on one segment; `tag` names the test.
    pub fn new(tag: &str, count: u8) -> Fabric {
        assert!(
            (1..=253).contains(&count),
            "node count {count} outside 1..=253"
        );
        let short: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(6)
            .collect();
        let switch = Netns::new(&format!("{short}sw"));
        let mut fabric = Fabric {
            nodes: Vec::new(),
            switch,
        };
        let sw = &fabric.switch;
        sw.ip(&["link", "add", "name", "br0", "type", "bridge"]);
        // No MLD querier on this segment: flood multicast (neighbour
        // discovery) instead of relying on snooping.
        sw.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        sw.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.br0.accept_dad=0"]);
        sw.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        sw.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]);
        sw.ip(&["addr", "add", &format!("{GATEWAY_V4}/24"), "dev", "br0"]);
        sw.ip(&[
            "addr",
            "add",
            &format!("{GATEWAY_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        sw.ip(&["link", "set", "br0", "up"]);
        for x in 1..=count {
            let ns = Netns::new(&format!("{short}n{x}"));
            let v4 = Ipv4Addr::new(198, 19, 0, x);
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, x as u16);
            let port = format!("p{x}");
            // Created inside the node, peer placed straight into the
            // switch: the root namespace never sees either end.
            ns.ip(&[
                "link",
                "add",
                "name",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                fabric.switch.name(),
            ]);
            fabric.nodes.push(FabricNode { ns, v4, v6 });
            let node = fabric.nodes.last().expect("just pushed");
            let sw = &fabric.switch;
            sw.exec_ok(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{port}.disable_ipv6=1"),
            ]);
            sw.ip(&["link", "set", &port, "master", "br0"]);
            sw.ip(&["link", "set", &port, "up"]);
            node.ns
                .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"]);
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
        }
        fabric
    }

    /// Node number `x` (1-based).
    pub fn node(&self, x: u8) -> &FabricNode {
        &self.nodes[x as usize - 1]
    }

    /// Turns IPv4 and IPv6 forwarding on in every node, as a Calico host
    /// needs: a container's packet to another node passes through both
    /// nodes. (The switch keeps forwarding off.)
    pub fn enable_forwarding(&self) {
        for node in &self.nodes {
            node.ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            node.ns
                .exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        }
    }

    /// Starts an etcd inside the switch namespace, listening on
    /// [`GATEWAY_V4`]`:2379`, which every node reaches over the fabric (as
    /// agents reach their cluster's etcd). Drop it before the fabric.
    pub fn start_etcd(&self) -> Etcd {
        Etcd::builder()
            .netns(self.switch.name(), GATEWAY_V4.into())
            .start()
    }
}
