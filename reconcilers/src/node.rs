//! The node's own addresses, read from the kernel: what the host profile
//! lets reach the node's containers when the operator configured none.
//!
//! Detection follows the original calico-mesos: per family, the first
//! global-scope address (lowest interface index first) that is not on `lo`,
//! a `docker*` bridge or one of the `cali*` interfaces. [`select_addresses`]
//! is the pure rule; [`detect_addresses`] is one address dump per family
//! and a name lookup per interface with a global address, in the calling
//! thread's network namespace. This module reads only; it changes nothing.

use crate::nl::{dump_addresses, own_address, Conn, NlError};
use crate::HOST_IFNAME_PREFIX;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Interface-name prefixes whose addresses are never the node's: Docker's
/// bridges (the original calico-mesos skipped `docker*`) and our own veths.
const SKIPPED_PREFIXES: [&str; 2] = ["docker", HOST_IFNAME_PREFIX];

/// One address configured on the node, as the kernel reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// The interface's index (lower = "first").
    pub ifindex: u32,
    /// The interface's name (`None` for an address that is not global,
    /// whose name is never needed, or when the link went away meanwhile).
    pub ifname: Option<String>,
    /// The address.
    pub address: IpAddr,
    /// True for scope `global` (universe).
    pub global: bool,
    /// True when IPv6 duplicate address detection failed (the address is
    /// configured but never used).
    pub dad_failed: bool,
}

/// The node's addresses by the detection rule: per family (IPv4 first) the
/// first global-scope, usable address, by interface index and then in the
/// kernel's order, that is not on `lo`, `docker*` or `cali*`. Pure.
pub fn select_addresses(candidates: &[NodeAddress]) -> Vec<IpAddr> {
    let eligible = |c: &&NodeAddress| {
        let skipped_name = match c.ifname.as_deref() {
            None => true,
            Some("lo") => true,
            Some(name) => SKIPPED_PREFIXES.iter().any(|p| name.starts_with(p)),
        };
        c.global && !c.dad_failed && !skipped_name && !c.address.is_loopback()
    };
    let mut ordered: Vec<&NodeAddress> = candidates.iter().filter(eligible).collect();
    // Stable: addresses of one interface keep the kernel's order (the
    // primary IPv4 address comes before secondaries).
    ordered.sort_by_key(|c| c.ifindex);
    let v4 = ordered.iter().find(|c| c.address.is_ipv4());
    let v6 = ordered.iter().find(|c| c.address.is_ipv6());
    v4.into_iter().chain(v6).map(|c| c.address).collect()
}

/// Every address configured in the calling thread's network namespace,
/// with its interface's name where it matters: one address dump per
/// family, then one lookup by index for each interface that has a global
/// address. Not a link dump: on a node of 1,000 containers that was 1,000
/// host veths (each with its counters and a namespace-id walk), 10–20 ms,
/// and the plugin detects the addresses on every request it answers itself.
pub async fn list_addresses() -> Result<Vec<NodeAddress>, NlError> {
    let conn = Conn::current()?;
    let mut addresses: Vec<NodeAddress> = dump_addresses(&conn, 0)
        .await?
        .iter()
        .filter_map(node_address)
        .collect();
    let mut names: BTreeMap<u32, Option<String>> = BTreeMap::new();
    for a in addresses.iter().filter(|a| a.global) {
        if let std::collections::btree_map::Entry::Vacant(e) = names.entry(a.ifindex) {
            let link = crate::endpoint::observe::link_by_index(&conn, a.ifindex).await?;
            e.insert(link.map(|l| l.name));
        }
    }
    for a in &mut addresses {
        a.ifname = names.get(&a.ifindex).cloned().flatten();
    }
    Ok(addresses)
}

/// The node's addresses by [`select_addresses`], read from the calling
/// thread's network namespace (empty when it has none that qualify).
pub async fn detect_addresses() -> Result<Vec<IpAddr>, NlError> {
    Ok(select_addresses(&list_addresses().await?))
}

fn node_address(a: &AddressMessage) -> Option<NodeAddress> {
    let ip = own_address(a)?;
    // The 32-bit IFA_FLAGS attribute, when present, supersedes the header's.
    let dad_failed = a
        .attributes
        .iter()
        .find_map(|attr| match attr {
            AddressAttribute::Flags(f) => Some(f.contains(AddressFlags::Dadfailed)),
            _ => None,
        })
        .unwrap_or_else(|| a.header.flags.contains(AddressHeaderFlags::Dadfailed));
    Some(NodeAddress {
        ifindex: a.header.index,
        ifname: None,
        address: ip,
        global: a.header.scope == AddressScope::Universe,
        dad_failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ifindex: u32, ifname: &str, address: &str) -> NodeAddress {
        NodeAddress {
            ifindex,
            ifname: Some(ifname.to_string()),
            address: address.parse().unwrap(),
            global: true,
            dad_failed: false,
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn selection_table() {
        let link_local = NodeAddress {
            global: false,
            ..addr(2, "eth0", "fe80::1")
        };
        let failed = NodeAddress {
            dad_failed: true,
            ..addr(2, "eth0", "2001:db8:f::9")
        };
        let unnamed = NodeAddress {
            ifname: None,
            ..addr(1, "x", "198.19.0.9")
        };
        let cases: Vec<(&str, Vec<NodeAddress>, Vec<IpAddr>)> = vec![
            ("nothing at all", vec![], vec![]),
            (
                "only loopback",
                vec![
                    NodeAddress {
                        global: false,
                        ..addr(1, "lo", "127.0.0.1")
                    },
                    NodeAddress {
                        global: false,
                        ..addr(1, "lo", "::1")
                    },
                ],
                vec![],
            ),
            (
                "a global address on lo is still skipped",
                vec![addr(1, "lo", "198.19.0.7"), addr(2, "eth0", "198.19.0.1")],
                ips(&["198.19.0.1"]),
            ),
            (
                "one of each family, IPv4 first whatever the input order",
                vec![
                    addr(2, "eth0", "2001:db8:f::1"),
                    addr(2, "eth0", "198.19.0.1"),
                ],
                ips(&["198.19.0.1", "2001:db8:f::1"]),
            ),
            (
                "lowest interface index wins, then the kernel's order",
                vec![
                    addr(5, "eth1", "198.19.0.50"),
                    addr(3, "eth0", "198.19.0.1"),
                    addr(3, "eth0", "198.19.0.2"),
                ],
                ips(&["198.19.0.1"]),
            ),
            (
                "docker bridges and our veths are skipped",
                vec![
                    addr(2, "docker0", "198.19.0.60"),
                    addr(3, "docker_gwbridge", "198.19.0.61"),
                    addr(4, "cali0123456789a", "198.19.0.62"),
                    addr(9, "eth0", "198.19.0.1"),
                ],
                ips(&["198.19.0.1"]),
            ),
            (
                "link-local and failed-DAD IPv6 are skipped",
                vec![link_local, failed, addr(3, "eth1", "2001:db8:f::2")],
                ips(&["2001:db8:f::2"]),
            ),
            (
                "an interface missing from the link dump is skipped",
                vec![unnamed, addr(4, "eth0", "198.19.0.1")],
                ips(&["198.19.0.1"]),
            ),
            (
                "only IPv6",
                vec![addr(2, "eth0", "2001:db8:f::1")],
                ips(&["2001:db8:f::1"]),
            ),
        ];
        for (name, candidates, want) in cases {
            assert_eq!(select_addresses(&candidates), want, "case: {name}");
        }
    }
}
