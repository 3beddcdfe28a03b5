//! Pure tests of the endpoint planner ([`plan()`]): no kernel, no root.
//!
//! Two tiers. A table of named cases pins the exact action list (order
//! included) for each kind of drift. A small model of the kernel then
//! applies plans to arbitrary observed states, and a property test checks
//! that every plan is accepted by that model step by step and leaves nothing
//! to do, and that planning is deterministic.

use super::*;
use crate::ROUTE_PROTOCOL;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// ---------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------

const CID: &str = "3c1c1a1e-6f0b-4f6b-9c1e-plan-tests";
/// The host link's index in the node namespace.
const HOST_IDX: u32 = 7;
/// Another link in the node namespace (another endpoint's, say).
const OTHER_IDX: u32 = 9;
/// The container's eth0 index.
const ETH0_IDX: u32 = 2;
/// The node's id for the container's namespace.
const NSID: i32 = 0;
/// The MAC the kernel chose for the container's eth0.
const ETH0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Some other route protocol (`static`): not ours.
const FOREIGN_PROTOCOL: u8 = 4;
const OTHER_TABLE: u32 = 100;

fn host() -> String {
    host_ifname(CID)
}

fn v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

fn v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n)
}

fn ip4(n: u8) -> IpAddr {
    IpAddr::V4(v4(n))
}

fn ip6(n: u16) -> IpAddr {
    IpAddr::V6(v6(n))
}

fn spec(ipv4: &[u8], ipv6: &[u16]) -> EndpointSpec {
    EndpointSpec {
        container_id: CID.to_string(),
        netns: crate::netns::NetnsRef {
            pid: 4242,
            inode: 4026532000,
        },
        ipv4: ipv4.iter().map(|n| v4(*n)).collect(),
        ipv6: ipv6.iter().map(|n| v6(*n)).collect(),
    }
}

/// A route in the node namespace.
fn route(dst: IpAddr, prefix_len: u8, table: u32, protocol: u8, oif: Option<u32>) -> HostRoute {
    HostRoute {
        dst,
        prefix_len,
        table,
        protocol,
        oif,
    }
}

/// One of our host routes (main table) for `dst` through `oif`.
fn our_route(dst: IpAddr, oif: u32) -> HostRoute {
    route(dst, full_prefix(dst), MAIN_TABLE, ROUTE_PROTOCOL, Some(oif))
}

/// The endpoint exactly as `s` wants it, on a kernel with or without
/// `force_forwarding`. Written out here, not derived from the planner.
fn converged(s: &EndpointSpec, force_forwarding: bool) -> Observed {
    let v6 = !s.ipv6.is_empty();
    let mut host_sysctls: BTreeMap<Sysctl, i32> = [
        (Sysctl::AddrGenMode, 1),
        (Sysctl::Ipv4Forwarding, 1),
        (Sysctl::ProxyArp, 1),
    ]
    .into();
    let mut eth0_sysctls = BTreeMap::new();
    let host_neighbours = s
        .addresses()
        .map(|addr| HostNeighbour {
            addr,
            lladdr: ETH0_MAC.to_vec(),
        })
        .collect();
    if v6 {
        host_sysctls.insert(Sysctl::Ipv6Forwarding, 1);
        if force_forwarding {
            host_sysctls.insert(Sysctl::Ipv6ForceForwarding, 1);
        }
        eth0_sysctls.insert(Sysctl::AddrGenMode, 1);
    }
    let mut routes = vec![];
    let mut neighbours = vec![];
    if !s.ipv4.is_empty() {
        routes.extend([ContainerRoute::GatewayV4, ContainerRoute::DefaultV4]);
        neighbours.push(ContainerNeighbour::GatewayV4);
    }
    if v6 {
        routes.push(ContainerRoute::DefaultV6);
        neighbours.push(ContainerNeighbour::GatewayV6);
    }
    Observed {
        host: Some(HostLink {
            index: HOST_IDX,
            is_veth: true,
            mac: Some(HOST_MAC.to_vec()),
            up: true,
            marked: true,
            peer_index: Some(ETH0_IDX),
            peer_netnsid: Some(NSID),
            sysctls: host_sysctls,
        }),
        host_addresses: vec![],
        host_neighbours,
        host_routes: s.addresses().map(|a| our_route(a, HOST_IDX)).collect(),
        container_nsid: Some(NSID),
        container: ContainerState {
            eth0: Some(ContainerLink {
                index: ETH0_IDX,
                is_veth: true,
                mac: Some(ETH0_MAC.to_vec()),
                up: true,
                peer_index: Some(HOST_IDX),
                sysctls: eth0_sysctls,
            }),
            lo_up: true,
            addresses: s.addresses().map(|a| (a, full_prefix(a))).collect(),
            routes,
            neighbours,
        },
        ipv6_force_forwarding: force_forwarding,
    }
}

/// A brand-new container namespace: only `lo`, down.
fn nothing(force_forwarding: bool) -> Observed {
    Observed {
        ipv6_force_forwarding: force_forwarding,
        ..Observed::default()
    }
}

/// `converged(s, ff)` changed by `f`.
fn with(s: &EndpointSpec, ff: bool, f: impl FnOnce(&mut Observed)) -> Observed {
    let mut o = converged(s, ff);
    f(&mut o);
    o
}

fn host_link(o: &mut Observed) -> &mut HostLink {
    o.host.as_mut().expect("a host link")
}

fn eth0(o: &mut Observed) -> &mut ContainerLink {
    o.container.eth0.as_mut().expect("an eth0")
}

// Actions, short.

fn create() -> Action {
    Action::CreateVeth {
        host: host(),
        container_mac: container_mac(CID),
    }
}
fn set_mac() -> Action {
    Action::SetHostMac { host: host() }
}
fn node_sysctl(sysctl: Sysctl, value: i32) -> Action {
    Action::SetSysctl {
        side: Side::Node,
        ifname: host(),
        sysctl,
        value,
    }
}
fn eth0_sysctl(sysctl: Sysctl, value: i32) -> Action {
    Action::SetSysctl {
        side: Side::Container,
        ifname: CONTAINER_IFNAME.to_string(),
        sysctl,
        value,
    }
}
fn configure() -> Action {
    Action::ConfigureHostLink { host: host() }
}
/// The host's neighbour entry for `addr`, to `mac`.
fn h_neigh(addr: impl Into<IpAddr>, mac: &[u8]) -> Action {
    Action::ReplaceHostNeighbour {
        host: host(),
        neighbour: HostNeighbour {
            addr: addr.into(),
            lladdr: mac.to_vec(),
        },
    }
}
/// The host's neighbour entry for `addr` to a new `eth0`'s MAC.
fn h_neigh_new(addr: impl Into<IpAddr>) -> Action {
    h_neigh(addr, &container_mac(CID))
}
fn del_host_addr(addr: Ipv6Addr, prefix_len: u8) -> Action {
    Action::DeleteHostAddress {
        host: host(),
        addr,
        prefix_len,
    }
}
/// An IPv6 address on the host link.
fn host_addr(addr: Ipv6Addr, prefix_len: u8) -> HostAddress {
    HostAddress { addr, prefix_len }
}
/// The link-local address the kernel makes itself when `addr_gen_mode` is
/// not none (on links of an older version): with its `fe80::/64` route.
fn kernel_link_local() -> HostAddress {
    host_addr(GATEWAY_V6, 64)
}
/// The gateway address the previous version put on the host link.
fn old_gateway() -> HostAddress {
    host_addr(GATEWAY_V6, 128)
}
fn up_host() -> Action {
    Action::SetLinkUp {
        side: Side::Node,
        ifname: host(),
    }
}
fn up_eth0() -> Action {
    Action::SetLinkUp {
        side: Side::Container,
        ifname: CONTAINER_IFNAME.to_string(),
    }
}
fn up_lo() -> Action {
    Action::SetLinkUp {
        side: Side::Container,
        ifname: "lo".to_string(),
    }
}
fn drop_mcast() -> Action {
    Action::DropHostMulticastRoute { host: host() }
}
fn add_addr(addr: IpAddr) -> Action {
    Action::AddContainerAddress { addr }
}
fn del_addr(addr: IpAddr, prefix_len: u8) -> Action {
    Action::DeleteContainerAddress { addr, prefix_len }
}
fn c_route(r: ContainerRoute) -> Action {
    Action::ReplaceContainerRoute(r)
}
fn c_neigh(n: ContainerNeighbour) -> Action {
    Action::ReplaceContainerNeighbour(n)
}
fn host_route(dst: IpAddr) -> Action {
    Action::ReplaceHostRoute { dst, host: host() }
}
fn del_route(dst: IpAddr, prefix_len: u8, table: u32, oif: u32) -> Action {
    Action::DeleteHostRoute {
        dst,
        prefix_len,
        table,
        oif,
    }
}
fn del_host(index: u32) -> Action {
    Action::DeleteHostLink {
        name: host(),
        index,
    }
}
fn del_eth0(index: u32) -> Action {
    Action::DeleteContainerLink { index }
}

/// What follows `CreateVeth` for `spec(&[1], &[])` when `lo` is already up.
fn fresh_v4_after_create() -> Vec<Action> {
    vec![
        configure(),
        node_sysctl(Sysctl::Ipv4Forwarding, 1),
        node_sysctl(Sysctl::ProxyArp, 1),
        up_host(),
        up_eth0(),
        add_addr(ip4(1)),
        c_route(ContainerRoute::GatewayV4),
        c_route(ContainerRoute::DefaultV4),
        c_neigh(ContainerNeighbour::GatewayV4),
        h_neigh_new(v4(1)),
        host_route(ip4(1)),
        drop_mcast(),
    ]
}

fn then(mut first: Vec<Action>, rest: Vec<Action>) -> Vec<Action> {
    first.extend(rest);
    first
}

// ---------------------------------------------------------------------------
// Table tests
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    spec: EndpointSpec,
    observed: Observed,
    expected: Result<Vec<Action>, PlanError>,
    /// False for an observation torn by a concurrent change (the two ends
    /// read at different moments): the kernel model cannot replay it.
    consistent: bool,
}

fn case(
    name: &'static str,
    spec: EndpointSpec,
    observed: Observed,
    expected: Result<Vec<Action>, PlanError>,
) -> Case {
    Case {
        name,
        spec,
        observed,
        expected,
        consistent: true,
    }
}

/// A case whose observation was torn by a concurrent change.
fn torn(
    name: &'static str,
    spec: EndpointSpec,
    observed: Observed,
    expected: Result<Vec<Action>, PlanError>,
) -> Case {
    Case {
        consistent: false,
        ..case(name, spec, observed, expected)
    }
}

fn cases() -> Vec<Case> {
    let s4 = spec(&[1], &[]);
    let s6 = spec(&[], &[1]);
    let sd = spec(&[1, 2], &[1]);

    vec![
        // --- nothing there yet -------------------------------------------
        case(
            "nothing exists, IPv4 only: full creation in order",
            s4.clone(),
            nothing(false),
            Ok(vec![
                create(),
                configure(),
        node_sysctl(Sysctl::Ipv4Forwarding, 1),
                node_sysctl(Sysctl::ProxyArp, 1),
                up_host(),
                up_eth0(),
                up_lo(),
                add_addr(ip4(1)),
                c_route(ContainerRoute::GatewayV4),
                c_route(ContainerRoute::DefaultV4),
                c_neigh(ContainerNeighbour::GatewayV4),
                h_neigh_new(v4(1)),
                host_route(ip4(1)),
                drop_mcast(),
            ]),
        ),
        case(
            "nothing exists, IPv4 only on a kernel with force_forwarding: no IPv6 sysctl",
            s4.clone(),
            nothing(true),
            Ok(vec![
                create(),
                configure(),
        node_sysctl(Sysctl::Ipv4Forwarding, 1),
                node_sysctl(Sysctl::ProxyArp, 1),
                up_host(),
                up_eth0(),
                up_lo(),
                add_addr(ip4(1)),
                c_route(ContainerRoute::GatewayV4),
                c_route(ContainerRoute::DefaultV4),
                c_neigh(ContainerNeighbour::GatewayV4),
                h_neigh_new(v4(1)),
                host_route(ip4(1)),
                drop_mcast(),
            ]),
        ),
        case(
            "nothing exists, IPv6 only, kernel without force_forwarding",
            s6.clone(),
            nothing(false),
            Ok(vec![
                create(),
                configure(),
        node_sysctl(Sysctl::Ipv4Forwarding, 1),
                node_sysctl(Sysctl::ProxyArp, 1),
                node_sysctl(Sysctl::Ipv6Forwarding, 1),
                up_host(),
                eth0_sysctl(Sysctl::AddrGenMode, 1),
                up_eth0(),
                up_lo(),
                add_addr(ip6(1)),
                c_route(ContainerRoute::DefaultV6),
                c_neigh(ContainerNeighbour::GatewayV6),
                h_neigh_new(v6(1)),
                host_route(ip6(1)),
                drop_mcast(),
            ]),
        ),
        case(
            "nothing exists, dual stack, kernel with force_forwarding",
            sd.clone(),
            nothing(true),
            Ok(vec![
                create(),
                configure(),
        node_sysctl(Sysctl::Ipv4Forwarding, 1),
                node_sysctl(Sysctl::ProxyArp, 1),
                node_sysctl(Sysctl::Ipv6Forwarding, 1),
                node_sysctl(Sysctl::Ipv6ForceForwarding, 1),
                up_host(),
                eth0_sysctl(Sysctl::AddrGenMode, 1),
                up_eth0(),
                up_lo(),
                add_addr(ip4(1)),
                add_addr(ip4(2)),
                add_addr(ip6(1)),
                c_route(ContainerRoute::GatewayV4),
                c_route(ContainerRoute::DefaultV4),
                c_route(ContainerRoute::DefaultV6),
                c_neigh(ContainerNeighbour::GatewayV4),
                c_neigh(ContainerNeighbour::GatewayV6),
                h_neigh_new(v4(1)),
                h_neigh_new(v4(2)),
                h_neigh_new(v6(1)),
                host_route(ip4(1)),
                host_route(ip4(2)),
                host_route(ip6(1)),
                drop_mcast(),
            ]),
        ),
        case(
            "nothing exists, dual stack, kernel without force_forwarding",
            spec(&[1], &[1]),
            nothing(false),
            Ok(vec![
                create(),
                configure(),
        node_sysctl(Sysctl::Ipv4Forwarding, 1),
                node_sysctl(Sysctl::ProxyArp, 1),
                node_sysctl(Sysctl::Ipv6Forwarding, 1),
                up_host(),
                eth0_sysctl(Sysctl::AddrGenMode, 1),
                up_eth0(),
                up_lo(),
                add_addr(ip4(1)),
                add_addr(ip6(1)),
                c_route(ContainerRoute::GatewayV4),
                c_route(ContainerRoute::DefaultV4),
                c_route(ContainerRoute::DefaultV6),
                c_neigh(ContainerNeighbour::GatewayV4),
                c_neigh(ContainerNeighbour::GatewayV6),
                h_neigh_new(v4(1)),
                h_neigh_new(v6(1)),
                host_route(ip4(1)),
                host_route(ip6(1)),
                drop_mcast(),
            ]),
        ),
        case(
            "nothing exists but lo is already up: lo left alone",
            s4.clone(),
            Observed {
                container: ContainerState {
                    lo_up: true,
                    ..Default::default()
                },
                ..nothing(false)
            },
            Ok(then(vec![create()], fresh_v4_after_create())),
        ),
        case(
            "addresses are added sorted, host routes follow the spec's order",
            spec(&[3, 1], &[]),
            Observed {
                container: ContainerState {
                    lo_up: true,
                    ..Default::default()
                },
                ..nothing(false)
            },
            Ok(vec![
                create(),
                configure(),
        node_sysctl(Sysctl::Ipv4Forwarding, 1),
                node_sysctl(Sysctl::ProxyArp, 1),
                up_host(),
                up_eth0(),
                add_addr(ip4(1)),
                add_addr(ip4(3)),
                c_route(ContainerRoute::GatewayV4),
                c_route(ContainerRoute::DefaultV4),
                c_neigh(ContainerNeighbour::GatewayV4),
                h_neigh_new(v4(3)),
                h_neigh_new(v4(1)),
                host_route(ip4(3)),
                host_route(ip4(1)),
                drop_mcast(),
            ]),
        ),
        // --- already right ----------------------------------------------
        case(
            "IPv4 only, everything correct",
            s4.clone(),
            converged(&s4, false),
            Ok(vec![]),
        ),
        case(
            "IPv6 only, everything correct (force_forwarding kernel)",
            s6.clone(),
            converged(&s6, true),
            Ok(vec![]),
        ),
        case(
            "dual stack, everything correct",
            sd.clone(),
            converged(&sd, false),
            Ok(vec![]),
        ),
        case(
            "dual stack, everything correct (force_forwarding kernel)",
            sd.clone(),
            converged(&sd, true),
            Ok(vec![]),
        ),
        case(
            "IPv4 only on a force_forwarding kernel: IPv6 sysctls not wanted",
            s4.clone(),
            converged(&s4, true),
            Ok(vec![]),
        ),
        case(
            "IPv4 only: IPv6 sysctls at kernel defaults are left alone",
            s4.clone(),
            with(&s4, true, |o| {
                for (k, v) in [
                    (Sysctl::Ipv6Forwarding, 0),
                    (Sysctl::Ipv6ForceForwarding, 0),
                ] {
                    host_link(o).sysctls.insert(k, v);
                }
                eth0(o).sysctls.insert(Sysctl::AddrGenMode, 0);
            }),
            Ok(vec![]),
        ),
        case(
            "a route of someone else for a wider prefix is no conflict",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes.push(route(
                    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)),
                    24,
                    MAIN_TABLE,
                    FOREIGN_PROTOCOL,
                    Some(OTHER_IDX),
                ))
            }),
            Ok(vec![]),
        ),
        case(
            "a route of someone else through our link, for another address, is left alone",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes.push(route(
                    ip4(9),
                    32,
                    MAIN_TABLE,
                    FOREIGN_PROTOCOL,
                    Some(HOST_IDX),
                ))
            }),
            Ok(vec![]),
        ),
        case(
            "our route for another address through another link is not this endpoint's",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes.push(our_route(ip4(9), OTHER_IDX))
            }),
            Ok(vec![]),
        ),
        // --- one thing drifted --------------------------------------------
        case(
            "host link down",
            s4.clone(),
            with(&s4, false, |o| host_link(o).up = false),
            Ok(vec![up_host(), drop_mcast()]),
        ),
        case(
            "container eth0 down",
            s4.clone(),
            with(&s4, false, |o| eth0(o).up = false),
            Ok(vec![up_eth0(), drop_mcast()]),
        ),
        case(
            "lo down",
            s4.clone(),
            with(&s4, false, |o| o.container.lo_up = false),
            Ok(vec![up_lo()]),
        ),
        case(
            "wrong host MAC",
            s4.clone(),
            with(&s4, false, |o| {
                host_link(o).mac = Some(vec![2, 0, 0, 0, 0, 9])
            }),
            Ok(vec![set_mac()]),
        ),
        case(
            "host MAC not reported",
            s4.clone(),
            with(&s4, false, |o| host_link(o).mac = None),
            Ok(vec![set_mac()]),
        ),
        case(
            "our alias gone from the host link: set again",
            s4.clone(),
            with(&s4, false, |o| host_link(o).marked = false),
            Ok(vec![configure()]),
        ),
        case(
            "host down without our alias: alias before up, one request with the mode",
            sd.clone(),
            with(&sd, true, |o| {
                let h = host_link(o);
                h.up = false;
                h.marked = false;
            }),
            Ok(vec![configure(), up_host(), drop_mcast()]),
        ),
        case(
            "proxy ARP off",
            s4.clone(),
            with(&s4, false, |o| {
                host_link(o).sysctls.insert(Sysctl::ProxyArp, 0);
            }),
            Ok(vec![node_sysctl(Sysctl::ProxyArp, 1)]),
        ),
        case(
            "the kernel's own addresses back on at the up host link, dual stack",
            sd.clone(),
            with(&sd, false, |o| {
                host_link(o).sysctls.insert(Sysctl::AddrGenMode, 0);
            }),
            Ok(vec![configure()]),
        ),
        case(
            "the kernel's own addresses back on at the up host link, IPv4 only",
            s4.clone(),
            with(&s4, false, |o| {
                host_link(o).sysctls.remove(&Sysctl::AddrGenMode);
            }),
            Ok(vec![configure()]),
        ),
        case(
            "the host's neighbour entry for the container's IPv6 address missing",
            sd.clone(),
            with(&sd, false, |o| o.host_neighbours.retain(|n| n.addr.is_ipv4())),
            Ok(vec![h_neigh(v6(1), &ETH0_MAC)]),
        ),
        case(
            "the host's neighbour entry for a container IPv4 address missing (an ARP entry the kernel learnt is not one)",
            sd.clone(),
            with(&sd, false, |o| o.host_neighbours.retain(|n| n.addr != ip4(2))),
            Ok(vec![h_neigh(v4(2), &ETH0_MAC)]),
        ),
        case(
            "host link down and its neighbour entries flushed, as the kernel does: up, then the entries",
            s6.clone(),
            with(&s6, true, |o| {
                host_link(o).up = false;
                o.host_neighbours.clear();
            }),
            Ok(vec![up_host(), h_neigh(v6(1), &ETH0_MAC), drop_mcast()]),
        ),
        case(
            "eth0 got another MAC: the host's entry follows it",
            s6.clone(),
            with(&s6, false, |o| {
                eth0(o).mac = Some(vec![2, 0, 0, 0, 0, 0x77]);
            }),
            Ok(vec![h_neigh(v6(1), &[2, 0, 0, 0, 0, 0x77])]),
        ),
        case(
            "the host's entry points to another MAC: replaced",
            s6.clone(),
            with(&s6, false, |o| {
                o.host_neighbours[0].lladdr = vec![2, 0, 0, 0, 0, 0x77];
            }),
            Ok(vec![h_neigh(v6(1), &ETH0_MAC)]),
        ),
        case(
            "a host link of the previous version (the gateway address, no neighbour entries): the address goes, the entries come",
            sd.clone(),
            with(&sd, false, |o| {
                o.host_addresses = vec![old_gateway()];
                o.host_neighbours.clear();
            }),
            Ok(vec![
                del_host_addr(GATEWAY_V6, 128),
                h_neigh(v4(1), &ETH0_MAC),
                h_neigh(v4(2), &ETH0_MAC),
                h_neigh(v6(1), &ETH0_MAC),
            ]),
        ),
        case(
            "a host link of an older version (the kernel's link-local and fe80::/64): mode, then the address goes",
            sd.clone(),
            with(&sd, false, |o| {
                host_link(o).sysctls.insert(Sysctl::AddrGenMode, 0);
                o.host_addresses = vec![kernel_link_local()];
            }),
            Ok(vec![configure(), del_host_addr(GATEWAY_V6, 64)]),
        ),
        case(
            "an IPv4-only host link of an older version: the kernel's link-local deleted",
            s4.clone(),
            with(&s4, false, |o| {
                host_link(o).sysctls.insert(Sysctl::AddrGenMode, 0);
                o.host_addresses = vec![kernel_link_local()];
            }),
            Ok(vec![
                configure(),
                del_host_addr(GATEWAY_V6, 64),
            ]),
        ),
        case(
            "the endpoint lost its IPv6 addresses: their entries are not looked at (only the spec's are read)",
            s4.clone(),
            with(&sd, false, |o| {
                o.host_routes.retain(|r| r.dst.is_ipv4());
                o.container.addresses.retain(|a| a.0.is_ipv4());
                o.container.routes.retain(|r| *r != ContainerRoute::DefaultV6);
                o.container.neighbours.retain(|n| *n != ContainerNeighbour::GatewayV6);
                o.container.addresses.retain(|a| a.0 != ip4(2));
                o.host_routes.retain(|r| r.dst != ip4(2));
            }),
            Ok(vec![]),
        ),
        case(
            "extra IPv6 addresses on the host link are deleted, in order",
            sd.clone(),
            with(&sd, false, |o| {
                o.host_addresses.push(host_addr(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1), 64));
                o.host_addresses.insert(0, host_addr(v6(7), 128));
            }),
            Ok(vec![
                del_host_addr(v6(7), 128),
                del_host_addr(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1), 64),
            ]),
        ),
        case(
            "the kernel's own addresses back on at the up eth0, IPv6 only",
            s6.clone(),
            with(&s6, false, |o| {
                eth0(o).sysctls.insert(Sysctl::AddrGenMode, 0);
            }),
            Ok(vec![eth0_sysctl(Sysctl::AddrGenMode, 1)]),
        ),
        case(
            "the kernel gained force_forwarding: only that sysctl",
            sd.clone(),
            with(&sd, false, |o| o.ipv6_force_forwarding = true),
            Ok(vec![node_sysctl(Sysctl::Ipv6ForceForwarding, 1)]),
        ),
        case(
            "host down with the kernel's own addresses on, dual stack: mode before up",
            sd.clone(),
            with(&sd, false, |o| {
                let h = host_link(o);
                h.up = false;
                h.sysctls.insert(Sysctl::AddrGenMode, 0);
            }),
            Ok(vec![configure(), up_host(), drop_mcast()]),
        ),
        case(
            "eth0 down with its own addresses on, dual stack: mode before up",
            sd.clone(),
            with(&sd, false, |o| {
                let e = eth0(o);
                e.up = false;
                e.sysctls.remove(&Sysctl::AddrGenMode);
            }),
            Ok(vec![
                eth0_sysctl(Sysctl::AddrGenMode, 1),
                up_eth0(),
                drop_mcast(),
            ]),
        ),
        case(
            "a container address missing",
            sd.clone(),
            with(&sd, false, |o| {
                o.container.addresses.retain(|a| a.0 != ip6(1))
            }),
            Ok(vec![add_addr(ip6(1))]),
        ),
        case(
            "an extra container address",
            s4.clone(),
            with(&s4, false, |o| o.container.addresses.push((ip4(9), 32))),
            Ok(vec![del_addr(ip4(9), 32)]),
        ),
        case(
            "an extra container address with a network prefix",
            sd.clone(),
            with(&sd, false, |o| o.container.addresses.push((ip6(9), 64))),
            Ok(vec![del_addr(ip6(9), 64)]),
        ),
        case(
            "a wanted address with a network prefix: deleted before the /32 is added",
            s4.clone(),
            with(&s4, false, |o| o.container.addresses = vec![(ip4(1), 24)]),
            Ok(vec![del_addr(ip4(1), 24), add_addr(ip4(1))]),
        ),
        case(
            "the IPv4 gateway route missing",
            s4.clone(),
            with(&s4, false, |o| {
                o.container
                    .routes
                    .retain(|r| *r != ContainerRoute::GatewayV4)
            }),
            Ok(vec![c_route(ContainerRoute::GatewayV4)]),
        ),
        case(
            "both IPv4 container routes missing: gateway route first",
            sd.clone(),
            with(&sd, false, |o| {
                o.container.routes = vec![ContainerRoute::DefaultV6];
            }),
            Ok(vec![
                c_route(ContainerRoute::GatewayV4),
                c_route(ContainerRoute::DefaultV4),
            ]),
        ),
        case(
            "the IPv6 neighbour entry missing",
            sd.clone(),
            with(&sd, false, |o| {
                o.container.neighbours = vec![ContainerNeighbour::GatewayV4];
            }),
            Ok(vec![c_neigh(ContainerNeighbour::GatewayV6)]),
        ),
        // --- node routes ----------------------------------------------------
        case(
            "a host route of ours missing",
            sd.clone(),
            with(&sd, false, |o| o.host_routes.retain(|r| r.dst != ip4(2))),
            Ok(vec![host_route(ip4(2))]),
        ),
        case(
            "our route pointing at the wrong link: replaced",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes = vec![our_route(ip4(1), OTHER_IDX)]
            }),
            Ok(vec![host_route(ip4(1))]),
        ),
        case(
            "our route without an output interface: replaced",
            s6.clone(),
            with(&s6, false, |o| {
                o.host_routes = vec![route(ip6(1), 128, MAIN_TABLE, ROUTE_PROTOCOL, None)]
            }),
            Ok(vec![host_route(ip6(1))]),
        ),
        case(
            "our route for a wanted address in another table: main one made, other deleted",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes = vec![route(
                    ip4(1),
                    32,
                    OTHER_TABLE,
                    ROUTE_PROTOCOL,
                    Some(HOST_IDX),
                )]
            }),
            Ok(vec![
                host_route(ip4(1)),
                del_route(ip4(1), 32, OTHER_TABLE, HOST_IDX),
            ]),
        ),
        case(
            "a stale route of ours through our link: deleted",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes.push(our_route(ip4(9), HOST_IDX))
            }),
            Ok(vec![del_route(ip4(9), 32, MAIN_TABLE, HOST_IDX)]),
        ),
        case(
            "stale routes of ours: sorted, each deleted once",
            sd.clone(),
            with(&sd, false, |o| {
                o.host_routes.extend([
                    our_route(ip6(9), HOST_IDX),
                    our_route(ip4(9), HOST_IDX),
                    route(ip4(1), 24, MAIN_TABLE, ROUTE_PROTOCOL, Some(HOST_IDX)),
                    our_route(ip4(9), HOST_IDX),
                ])
            }),
            Ok(vec![
                del_route(ip4(1), 24, MAIN_TABLE, HOST_IDX),
                del_route(ip4(9), 32, MAIN_TABLE, HOST_IDX),
                del_route(ip6(9), 128, MAIN_TABLE, HOST_IDX),
            ]),
        ),
        case(
            "a foreign route for a container address: refused",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes = vec![route(
                    ip4(1),
                    32,
                    MAIN_TABLE,
                    FOREIGN_PROTOCOL,
                    Some(OTHER_IDX),
                )]
            }),
            Err(PlanError::ForeignRoute {
                addr: ip4(1),
                protocol: FOREIGN_PROTOCOL,
                table: MAIN_TABLE,
                oif: Some(OTHER_IDX),
            }),
        ),
        case(
            "a foreign route in another table (the node holds the address): refused",
            sd.clone(),
            with(&sd, false, |o| {
                o.host_routes
                    .push(route(ip6(1), 128, 255, 2, Some(OTHER_IDX)))
            }),
            Err(PlanError::ForeignRoute {
                addr: ip6(1),
                protocol: 2,
                table: 255,
                oif: Some(OTHER_IDX),
            }),
        ),
        case(
            "a foreign route through our own link is still not ours: refused",
            s4.clone(),
            with(&s4, false, |o| {
                o.host_routes = vec![route(ip4(1), 32, MAIN_TABLE, 3, Some(HOST_IDX))]
            }),
            Err(PlanError::ForeignRoute {
                addr: ip4(1),
                protocol: 3,
                table: MAIN_TABLE,
                oif: Some(HOST_IDX),
            }),
        ),
        case(
            "a foreign route refuses the plan even when nothing exists",
            s4.clone(),
            Observed {
                host_routes: vec![route(ip4(1), 32, MAIN_TABLE, FOREIGN_PROTOCOL, None)],
                ..nothing(false)
            },
            Err(PlanError::ForeignRoute {
                addr: ip4(1),
                protocol: FOREIGN_PROTOCOL,
                table: MAIN_TABLE,
                oif: None,
            }),
        ),
        // --- wrong links: delete and recreate -------------------------------
        case(
            "something foreign with our name (not a veth), no eth0: deleted, veth created",
            s4.clone(),
            with(&s4, false, |o| {
                let h = host_link(o);
                h.is_veth = false;
                h.peer_index = None;
                h.peer_netnsid = None;
                o.container.eth0 = None;
                o.container.addresses.clear();
                o.container.routes.clear();
                o.container.neighbours.clear();
            }),
            Ok(then(
                vec![del_host(HOST_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "something foreign with our name, and an eth0: both deleted, veth created",
            s4.clone(),
            with(&s4, false, |o| {
                let h = host_link(o);
                h.is_veth = false;
                h.peer_index = None;
                h.peer_netnsid = None;
            }),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "our veth's peer has another index: both deleted, recreated",
            s4.clone(),
            with(&s4, false, |o| host_link(o).peer_index = Some(3)),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "our veth's peer is in another namespace: both deleted, recreated",
            s4.clone(),
            with(&s4, false, |o| host_link(o).peer_netnsid = Some(NSID + 1)),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "the node has no id for the container's namespace: not our peer",
            s4.clone(),
            with(&s4, false, |o| {
                o.container_nsid = None;
                host_link(o).peer_netnsid = None;
            }),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "eth0 is a veth whose peer is not our link: both deleted, recreated",
            s4.clone(),
            with(&s4, false, |o| {
                host_link(o).peer_index = Some(3);
                eth0(o).peer_index = Some(8);
            }),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "eth0 is not a veth: both deleted, recreated",
            s4.clone(),
            with(&s4, false, |o| {
                let e = eth0(o);
                e.is_veth = false;
                e.peer_index = None;
                host_link(o).peer_index = Some(3);
            }),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        torn(
            "torn read: our veth names eth0, but eth0 names another peer",
            s4.clone(),
            with(&s4, false, |o| eth0(o).peer_index = Some(8)),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        torn(
            "torn read: our veth names eth0, but eth0 is not a veth",
            s4.clone(),
            with(&s4, false, |o| {
                let e = eth0(o);
                e.is_veth = false;
                e.peer_index = None;
            }),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "an eth0 but no host link: eth0 deleted, recreated",
            s4.clone(),
            with(&s4, false, |o| {
                o.host = None;
                o.host_routes.clear();
            }),
            Ok(then(
                vec![del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "a host link but no eth0: host link deleted, recreated",
            s4.clone(),
            with(&s4, false, |o| {
                host_link(o).peer_index = Some(3);
                o.container.eth0 = None;
                o.container.addresses.clear();
                o.container.routes.clear();
                o.container.neighbours.clear();
            }),
            Ok(then(
                vec![del_host(HOST_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "recreation: routes of ours through the old link go with it, none deleted one by one",
            s4.clone(),
            with(&s4, false, |o| {
                host_link(o).peer_index = Some(3);
                o.host_routes.push(our_route(ip4(9), HOST_IDX));
            }),
            Ok(then(
                vec![del_host(HOST_IDX), del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
        case(
            "recreation: a wanted route of ours elsewhere is replaced too",
            s4.clone(),
            with(&s4, false, |o| {
                o.host = None;
                o.host_routes = vec![our_route(ip4(1), OTHER_IDX)];
            }),
            Ok(then(
                vec![del_eth0(ETH0_IDX), create()],
                fresh_v4_after_create(),
            )),
        ),
    ]
}

#[test]
fn table() {
    let cases = cases();
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for c in &cases {
        assert!(names.insert(c.name), "two cases named {:?}", c.name);
        let got = plan(&c.spec, &c.observed);
        if got != c.expected {
            let lines = |r: &Result<Vec<Action>, PlanError>| match r {
                Ok(actions) => actions
                    .iter()
                    .map(|a| format!("\n    {a}"))
                    .collect::<String>(),
                Err(e) => format!("\n    error: {e}"),
            };
            failures.push(format!(
                "case {:?}\n  expected:{}\n  got:{}",
                c.name,
                lines(&c.expected),
                lines(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every table case that plans also converges in the kernel model: the
/// expected lists are not just what the planner says, they work.
#[test]
fn table_plans_converge_in_the_model() {
    for c in cases().into_iter().filter(|c| c.consistent) {
        if let Ok(actions) = &c.expected {
            let after = simulate(&c.observed, actions, &c.spec);
            assert_eq!(
                plan(&c.spec, &after),
                Ok(vec![]),
                "case {:?} left work to do",
                c.name
            );
        }
    }
}

#[test]
fn simulated_creation_is_converged() {
    let s = spec(&[1, 2], &[1, 2]);
    for ff in [false, true] {
        let actions = plan(&s, &nothing(ff)).unwrap();
        let after = simulate(&nothing(ff), &actions, &s);
        assert_eq!(plan(&s, &after), Ok(vec![]));
        // The model and the hand-written converged state agree, apart from
        // the indexes and the namespace id the kernel picked, and eth0's
        // MAC (the one we give a new eth0).
        let mut want = converged(&s, ff);
        let mac = container_mac(CID).to_vec();
        eth0(&mut want).mac = Some(mac.clone());
        for n in &mut want.host_neighbours {
            n.lladdr = mac.clone();
        }
        let h = host_link(&mut want);
        h.index = after.host.as_ref().unwrap().index;
        h.peer_index = Some(after.container.eth0.as_ref().unwrap().index);
        h.peer_netnsid = after.container_nsid;
        let e = eth0(&mut want);
        e.index = after.container.eth0.as_ref().unwrap().index;
        e.peer_index = Some(after.host.as_ref().unwrap().index);
        want.container_nsid = after.container_nsid;
        for r in &mut want.host_routes {
            r.oif = Some(after.host.as_ref().unwrap().index);
        }
        assert_eq!(after, want);
    }
}

// ---------------------------------------------------------------------------
// The kernel model
// ---------------------------------------------------------------------------

/// A very small kernel: one host link under our name, the container's `eth0`
/// and `lo`, node routes keyed like the kernel's FIB. It refuses what the
/// kernel would refuse (with the errno the kernel would give), so a plan in
/// the wrong order fails here.
struct Kernel {
    state: Observed,
    host_name: String,
    wants_ipv6: bool,
    next_node_index: u32,
    next_container_index: u32,
}

impl Kernel {
    fn new(obs: &Observed, spec: &EndpointSpec) -> Self {
        Kernel {
            state: obs.clone(),
            host_name: host_ifname(&spec.container_id),
            wants_ipv6: !spec.ipv6.is_empty(),
            next_node_index: 1000,
            next_container_index: 1000,
        }
    }

    /// The kernel's truth: the host link's peer is the container's eth0.
    fn paired(&self) -> bool {
        match (&self.state.host, &self.state.container.eth0) {
            (Some(h), Some(e)) => {
                h.is_veth
                    && e.is_veth
                    && h.peer_index == Some(e.index)
                    && h.peer_netnsid.is_some()
                    && h.peer_netnsid == self.state.container_nsid
            }
            _ => false,
        }
    }

    fn host_by_name(&mut self, name: &str) -> Result<&mut HostLink, String> {
        if name != self.host_name {
            return Err(format!("{name}: not the endpoint's host link"));
        }
        self.state
            .host
            .as_mut()
            .ok_or_else(|| format!("ENODEV: no link {name}"))
    }

    fn eth0_by_name(&mut self, name: &str) -> Result<&mut ContainerLink, String> {
        if name != CONTAINER_IFNAME {
            return Err(format!("{name}: not the container's {CONTAINER_IFNAME}"));
        }
        self.state
            .container
            .eth0
            .as_mut()
            .ok_or_else(|| "ENODEV: no eth0 in the container".to_string())
    }

    fn drop_host(&mut self) {
        if let Some(h) = self.state.host.take() {
            self.state.host_routes.retain(|r| r.oif != Some(h.index));
        }
        self.state.host_addresses.clear();
        self.state.host_neighbours.clear();
    }

    /// True when the host link is ready (up, with carrier: both ends up).
    fn is_ready(&self) -> bool {
        self.paired()
            && self.state.host.as_ref().is_some_and(|h| h.up)
            && self.state.container.eth0.as_ref().is_some_and(|e| e.up)
    }

    /// The kernel's own step when the host link becomes ready: unless its
    /// `addr_gen_mode` is none, it makes its EUI-64 link-local address
    /// (with `fe80::/64`).
    fn link_ready(&mut self, was_ready: bool) {
        let Some(h) = self.state.host.as_ref() else {
            return;
        };
        if self.is_ready()
            && !was_ready
            && h.sysctls.get(&Sysctl::AddrGenMode) != Some(&1)
            && !self
                .state
                .host_addresses
                .iter()
                .any(|a| a.addr == GATEWAY_V6)
        {
            self.state.host_addresses.push(kernel_link_local());
        }
    }

    fn drop_eth0(&mut self) {
        let c = &mut self.state.container;
        c.eth0 = None;
        c.addresses.clear();
        c.routes.clear();
        c.neighbours.clear();
    }

    fn apply(&mut self, a: &Action) -> Result<(), String> {
        match a {
            Action::DeleteHostLink { name, index } => {
                let h = self.host_by_name(name)?;
                if h.index != *index {
                    return Err(format!("ENODEV: {name} has index {}", h.index));
                }
                if self.paired() {
                    self.drop_eth0();
                }
                self.drop_host();
            }
            Action::DeleteContainerLink { index } => {
                let e = self.eth0_by_name(CONTAINER_IFNAME)?;
                if e.index != *index {
                    return Err(format!("ENODEV: eth0 has index {}", e.index));
                }
                if self.paired() {
                    self.drop_host();
                }
                self.drop_eth0();
            }
            Action::CreateVeth {
                host,
                container_mac,
            } => {
                if *host != self.host_name {
                    return Err(format!("{host}: not the endpoint's name"));
                }
                if self.state.host.is_some() {
                    return Err(format!("EEXIST: {host} exists"));
                }
                if self.state.container.eth0.is_some() {
                    return Err("EEXIST: eth0 exists in the container".into());
                }
                let (hi, ei) = (self.next_node_index, self.next_container_index);
                self.next_node_index += 1;
                self.next_container_index += 1;
                // The kernel gives the container's namespace an id if the
                // node had none for it.
                let nsid = *self.state.container_nsid.get_or_insert(42);
                self.state.host = Some(HostLink {
                    index: hi,
                    is_veth: true,
                    mac: Some(HOST_MAC.to_vec()),
                    up: false,
                    marked: false,
                    peer_index: Some(ei),
                    peer_netnsid: Some(nsid),
                    sysctls: BTreeMap::new(),
                });
                self.state.container.eth0 = Some(ContainerLink {
                    index: ei,
                    is_veth: true,
                    mac: Some(container_mac.to_vec()),
                    up: false,
                    peer_index: Some(hi),
                    sysctls: BTreeMap::new(),
                });
            }
            Action::SetHostMac { host } => {
                self.host_by_name(host)?.mac = Some(HOST_MAC.to_vec());
            }
            Action::ConfigureHostLink { host } => {
                let h = self.host_by_name(host)?;
                h.marked = true;
                h.sysctls.insert(Sysctl::AddrGenMode, 1);
            }
            Action::SetSysctl {
                side,
                ifname,
                sysctl,
                value,
            } => {
                let map = match side {
                    Side::Node => &mut self.host_by_name(ifname)?.sysctls,
                    Side::Container => &mut self.eth0_by_name(ifname)?.sysctls,
                };
                map.insert(*sysctl, *value);
            }
            Action::DeleteHostAddress {
                host,
                addr,
                prefix_len,
            } => {
                self.host_by_name(host)?;
                let before = self.state.host_addresses.len();
                self.state
                    .host_addresses
                    .retain(|a| (a.addr, a.prefix_len) != (*addr, *prefix_len));
                if self.state.host_addresses.len() == before {
                    return Err(format!("EADDRNOTAVAIL: {addr}/{prefix_len} on {host}"));
                }
            }
            Action::SetLinkUp { side, ifname } => {
                let was_ready = self.is_ready();
                let wants_ipv6 = self.wants_ipv6;
                let (up, sysctls) = match (side, ifname.as_str()) {
                    (Side::Container, "lo") => {
                        self.state.container.lo_up = true;
                        return Ok(());
                    }
                    (Side::Node, _) => {
                        let h = self.host_by_name(ifname)?;
                        (&mut h.up, &h.sysctls)
                    }
                    (Side::Container, _) => {
                        let e = self.eth0_by_name(ifname)?;
                        (&mut e.up, &e.sysctls)
                    }
                };
                // Not a kernel error, the planner's promise: a link whose
                // IPv6 addresses matter goes up with DAD already off, or
                // with no address of the kernel's own that could wait on it.
                let dad_off = sysctls.get(&Sysctl::AddrGenMode) == Some(&1);
                if wants_ipv6 && !*up && !dad_off {
                    return Err(format!("{ifname} ({side}) brought up with DAD on"));
                }
                *up = true;
                self.link_ready(was_ready);
            }
            Action::DeleteContainerAddress { addr, prefix_len } => {
                self.eth0_by_name(CONTAINER_IFNAME)?;
                let c = &mut self.state.container;
                let before = c.addresses.len();
                c.addresses.retain(|x| *x != (*addr, *prefix_len));
                if c.addresses.len() == before {
                    return Err(format!("EADDRNOTAVAIL: {addr}/{prefix_len}"));
                }
            }
            Action::AddContainerAddress { addr } => {
                self.eth0_by_name(CONTAINER_IFNAME)?;
                let p = full_prefix(*addr);
                let c = &mut self.state.container;
                // IPv4 addresses are keyed by address and prefix, IPv6 by
                // address alone.
                let clash = c
                    .addresses
                    .iter()
                    .any(|(a, l)| a == addr && (addr.is_ipv6() || *l == p));
                if clash {
                    return Err(format!("EEXIST: {addr} already on eth0"));
                }
                c.addresses.push((*addr, p));
            }
            Action::ReplaceContainerRoute(r) => {
                if !self.eth0_by_name(CONTAINER_IFNAME)?.up {
                    return Err(format!("ENETDOWN: route {r:?} on a down eth0"));
                }
                let c = &mut self.state.container;
                if *r == ContainerRoute::DefaultV4 && !c.routes.contains(&ContainerRoute::GatewayV4)
                {
                    return Err("ENETUNREACH: no route to the gateway".into());
                }
                if !c.routes.contains(r) {
                    c.routes.push(*r);
                }
            }
            Action::ReplaceContainerNeighbour(n) => {
                self.eth0_by_name(CONTAINER_IFNAME)?;
                let c = &mut self.state.container;
                if !c.neighbours.contains(n) {
                    c.neighbours.push(*n);
                }
            }
            Action::ReplaceHostNeighbour { host, neighbour } => {
                self.host_by_name(host)?;
                // Keyed by address (on the one link).
                self.state
                    .host_neighbours
                    .retain(|n| n.addr != neighbour.addr);
                self.state.host_neighbours.push(neighbour.clone());
            }
            Action::ReplaceHostRoute { dst, host } => {
                let h = self.host_by_name(host)?;
                if dst.is_ipv4() && !h.up {
                    return Err(format!("ENETDOWN: route {dst} via a down {host}"));
                }
                let oif = h.index;
                let p = full_prefix(*dst);
                self.state
                    .host_routes
                    .retain(|r| !(r.dst == *dst && r.prefix_len == p && r.table == MAIN_TABLE));
                self.state.host_routes.push(our_route(*dst, oif));
            }
            Action::DeleteHostRoute {
                dst,
                prefix_len,
                table,
                oif,
            } => {
                // An observation may list one FIB entry twice; it is one
                // route, and goes at once.
                let rs = &mut self.state.host_routes;
                let before = rs.len();
                rs.retain(|r| {
                    !(r.dst == *dst
                        && r.prefix_len == *prefix_len
                        && r.table == *table
                        && r.oif == Some(*oif)
                        && r.protocol == ROUTE_PROTOCOL)
                });
                if rs.len() == before {
                    return Err(format!("ESRCH: no route {dst}/{prefix_len}"));
                }
            }
            // The kernel's own route is not observed; gone already is done.
            Action::DropHostMulticastRoute { host } => {
                self.host_by_name(host)?;
            }
        }
        Ok(())
    }
}

/// The state after `actions`, applied one by one as the kernel would.
/// Panics (failing the test) on an action the kernel would refuse.
fn simulate(obs: &Observed, actions: &[Action], spec: &EndpointSpec) -> Observed {
    let mut k = Kernel::new(obs, spec);
    for (i, a) in actions.iter().enumerate() {
        if let Err(e) = k.apply(a) {
            panic!("the kernel refuses action {i} `{a}`: {e}\nplan: {actions:#?}\nfrom: {obs:#?}");
        }
    }
    k.state
}

#[test]
fn the_model_refuses_a_plan_in_the_wrong_order() {
    let s = spec(&[1], &[1]);
    let mut actions = plan(&s, &nothing(false)).unwrap();
    // Bring eth0 up before turning DAD off.
    let up = actions.iter().position(|a| *a == up_eth0()).unwrap();
    let dad = actions
        .iter()
        .position(|a| *a == eth0_sysctl(Sysctl::AddrGenMode, 1))
        .unwrap();
    actions.swap(up, dad);
    let mut k = Kernel::new(&nothing(false), &s);
    let refused = actions.iter().any(|a| k.apply(a).is_err());
    assert!(refused, "the model must catch DAD turned off after up");

    // A default route before its gateway route.
    let s = spec(&[1], &[]);
    let mut actions = plan(&s, &nothing(false)).unwrap();
    let gw = actions
        .iter()
        .position(|a| *a == c_route(ContainerRoute::GatewayV4))
        .unwrap();
    actions.swap(gw, gw + 1);
    let mut k = Kernel::new(&nothing(false), &s);
    assert!(actions.iter().any(|a| k.apply(a).is_err()));
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// The addresses specs and observed states draw from: few, so that routes
/// and container addresses often hit a wanted address.
fn pool_v4() -> Vec<IpAddr> {
    (1..=5).map(ip4).collect()
}

fn pool_v6() -> Vec<IpAddr> {
    (1..=5).map(ip6).collect()
}

fn pool() -> Vec<IpAddr> {
    pool_v4().into_iter().chain(pool_v6()).collect()
}

fn arb_spec() -> impl Strategy<Value = EndpointSpec> {
    (
        prop::sample::subsequence((1..=5u8).collect::<Vec<_>>(), 0..=3),
        prop::sample::subsequence((1..=5u16).collect::<Vec<_>>(), 0..=3),
        any::<bool>(),
    )
        .prop_filter("at least one address", |(a, b, _)| {
            !a.is_empty() || !b.is_empty()
        })
        .prop_map(|(a, b, reversed)| {
            let mut s = spec(&a, &b);
            if reversed {
                // The spec's order is the caller's; not always sorted.
                s.ipv4.reverse();
                s.ipv6.reverse();
            }
            s
        })
}

fn arb_sysctls() -> impl Strategy<Value = BTreeMap<Sysctl, i32>> {
    prop::collection::btree_map(
        prop::sample::select(vec![
            Sysctl::Ipv4Forwarding,
            Sysctl::ProxyArp,
            Sysctl::Ipv6Forwarding,
            Sysctl::Ipv6ForceForwarding,
            Sysctl::AddrGenMode,
        ]),
        0..=2i32,
        0..=5,
    )
}

fn arb_mac() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        3 => Just(Some(HOST_MAC.to_vec())),
        1 => Just(Some(vec![2, 0, 0, 0, 0, 9])),
        1 => Just(None),
    ]
}

fn arb_host() -> impl Strategy<Value = Option<HostLink>> {
    prop::option::weighted(
        0.8,
        (
            prop::bool::weighted(0.85),
            arb_mac(),
            any::<bool>(),
            prop::bool::weighted(0.8),
            prop::sample::select(vec![Some(ETH0_IDX), Some(3), None]),
            prop::sample::select(vec![Some(NSID), Some(NSID + 1), None]),
            arb_sysctls(),
        )
            .prop_map(
                |(is_veth, mac, up, marked, peer_index, peer_netnsid, sysctls)| HostLink {
                    index: HOST_IDX,
                    is_veth,
                    mac,
                    up,
                    marked,
                    peer_index,
                    peer_netnsid,
                    sysctls,
                },
            ),
    )
}

fn arb_eth0() -> impl Strategy<Value = Option<ContainerLink>> {
    prop::option::weighted(
        0.8,
        (
            prop::bool::weighted(0.85),
            any::<bool>(),
            prop::sample::select(vec![Some(HOST_IDX), Some(8), None]),
            arb_sysctls(),
        )
            .prop_map(|(is_veth, up, peer_index, sysctls)| ContainerLink {
                index: ETH0_IDX,
                is_veth,
                mac: Some(ETH0_MAC.to_vec()),
                up,
                peer_index,
                sysctls,
            }),
    )
}

/// Container addresses: one prefix per address (as IPv6 forces), host or
/// network prefix.
fn arb_addresses() -> impl Strategy<Value = Vec<(IpAddr, u8)>> {
    prop::collection::btree_map(prop::sample::select(pool()), any::<bool>(), 0..=6).prop_map(|m| {
        m.into_iter()
            .map(|(a, host_prefix)| {
                let p = match (a, host_prefix) {
                    (_, true) => full_prefix(a),
                    (IpAddr::V4(_), false) => 24,
                    (IpAddr::V6(_), false) => 64,
                };
                (a, p)
            })
            .collect()
    })
}

/// Node routes, keyed (destination, prefix, table) as in a FIB.
fn arb_host_routes() -> impl Strategy<Value = Vec<HostRoute>> {
    let key = (
        prop::sample::select(pool()),
        prop::bool::weighted(0.8),
        prop::sample::select(vec![MAIN_TABLE, MAIN_TABLE, OTHER_TABLE]),
    );
    let value = (
        prop_oneof![12 => Just(ROUTE_PROTOCOL), 1 => Just(FOREIGN_PROTOCOL)],
        prop::sample::select(vec![Some(HOST_IDX), Some(HOST_IDX), Some(OTHER_IDX), None]),
    );
    prop::collection::btree_map(key, value, 0..=6).prop_map(|m| {
        m.into_iter()
            .map(|((dst, host_prefix, table), (protocol, oif))| {
                let prefix_len = match (dst, host_prefix) {
                    (_, true) => full_prefix(dst),
                    (IpAddr::V4(_), false) => 24,
                    (IpAddr::V6(_), false) => 64,
                };
                route(dst, prefix_len, table, protocol, oif)
            })
            .collect()
    })
}

/// Host IPv6 addresses (all unwanted): the previous version's gateway,
/// the kernel's of an older version, someone else's; one prefix per
/// address (IPv6 keys by address alone).
fn arb_host_addresses() -> impl Strategy<Value = Vec<HostAddress>> {
    prop::sample::subsequence(
        vec![
            old_gateway(),
            kernel_link_local(),
            host_addr(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1), 64),
            host_addr(v6(7), 128),
        ],
        0..=3,
    )
    .prop_map(|mut v| {
        let mut seen = BTreeSet::new();
        v.retain(|a| seen.insert(a.addr));
        v
    })
}

/// The host's neighbour entries for some pool addresses: to eth0's MAC, to
/// another; one per address.
fn arb_host_neighbours() -> impl Strategy<Value = Vec<HostNeighbour>> {
    prop::collection::vec(
        (
            1..=5u16,
            prop::sample::select(vec![ETH0_MAC.to_vec(), vec![2, 0, 0, 0, 0, 0x77]]),
        ),
        0..=3,
    )
    .prop_map(|v| {
        let mut seen = BTreeSet::new();
        v.into_iter()
            .filter(|(n, _)| seen.insert(*n))
            .map(|(n, lladdr)| HostNeighbour {
                addr: IpAddr::V6(v6(n)),
                lladdr,
            })
            .collect()
    })
}

fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        (arb_host(), arb_host_addresses(), arb_host_neighbours()),
        arb_host_routes(),
        prop::sample::select(vec![Some(NSID), Some(NSID + 1), None]),
        arb_eth0(),
        any::<bool>(),
        arb_addresses(),
        prop::sample::subsequence(
            vec![
                ContainerRoute::GatewayV4,
                ContainerRoute::DefaultV4,
                ContainerRoute::DefaultV6,
            ],
            0..=3,
        ),
        prop::sample::subsequence(
            vec![ContainerNeighbour::GatewayV4, ContainerNeighbour::GatewayV6],
            0..=2,
        ),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                (host, host_addresses, host_neighbours),
                host_routes,
                nsid,
                eth0,
                lo_up,
                addresses,
                routes,
                neighbours,
                ff,
                pair,
            )| {
                let mut o = Observed {
                    host,
                    host_addresses,
                    host_neighbours,
                    host_routes,
                    container_nsid: nsid,
                    container: ContainerState {
                        eth0,
                        lo_up,
                        addresses,
                        routes,
                        neighbours,
                    },
                    ipv6_force_forwarding: ff,
                };
                make_consistent(&mut o, pair);
                o
            },
        )
}

/// Turns a random state into one a kernel could show: no peer facts on a
/// link that is not a veth, both ends agree on a pairing (made one with
/// `pair` when both are veths), nothing on an absent eth0, and no route
/// through an absent host link.
fn make_consistent(o: &mut Observed, pair: bool) {
    if let Some(h) = o.host.as_mut().filter(|h| !h.is_veth) {
        h.peer_index = None;
        h.peer_netnsid = None;
    }
    if let Some(e) = o.container.eth0.as_mut().filter(|e| !e.is_veth) {
        e.peer_index = None;
    }
    match (o.host.as_mut(), o.container.eth0.as_mut()) {
        (Some(h), Some(e)) if h.is_veth && e.is_veth => {
            if pair {
                let nsid = *o.container_nsid.get_or_insert(NSID);
                h.peer_index = Some(e.index);
                h.peer_netnsid = Some(nsid);
                e.peer_index = Some(h.index);
            } else if h.peer_index == Some(e.index)
                && h.peer_netnsid.is_some()
                && h.peer_netnsid == o.container_nsid
            {
                // The host end names eth0 as its peer, so eth0 is.
                e.peer_index = Some(h.index);
            }
        }
        // With no veth eth0 in the container, the host end's peer is
        // somewhere else.
        (Some(h), _) if h.peer_index == Some(ETH0_IDX) && h.peer_netnsid == o.container_nsid => {
            h.peer_index = Some(3);
        }
        _ => {}
    }
    if o.container.eth0.is_none() {
        o.container.addresses.clear();
        o.container.routes.clear();
        o.container.neighbours.clear();
    }
    if o.host.is_none() {
        o.host_addresses.clear();
        o.host_neighbours.clear();
        // A route of ours through a link that is not there is one through
        // another link.
        for r in o.host_routes.iter_mut().filter(|r| r.oif == Some(HOST_IDX)) {
            r.oif = Some(OTHER_IDX);
        }
    }
    // Re-keying may have made two routes share a FIB key: keep the first.
    let mut seen = BTreeSet::new();
    o.host_routes
        .retain(|r| seen.insert((r.dst, r.prefix_len, r.table)));
}

/// One way a converged endpoint can drift (or have been half made).
#[derive(Clone, Debug)]
enum Drift {
    HostDown,
    HostUnmarked,
    Eth0Down,
    LoDown,
    HostMac(Option<Vec<u8>>),
    DropHostAddresses,
    HostAddress(HostAddress),
    DropHostNeighbours,
    HostNeighbourMac(Vec<u8>),
    Eth0Mac(Vec<u8>),
    HostSysctl(Sysctl, Option<i32>),
    Eth0Sysctl(Sysctl, Option<i32>),
    DropAddress(prop::sample::Index),
    ExtraAddress(IpAddr, bool),
    DropContainerRoute(ContainerRoute),
    DropNeighbour(ContainerNeighbour),
    DropHostRoute(prop::sample::Index),
    HostRouteOif(prop::sample::Index, Option<u32>),
    HostRouteTable(prop::sample::Index),
    StaleRoute(IpAddr, bool, u32),
    ForeignRoute(IpAddr),
    HostPeerIndex,
    HostPeerNsid(Option<i32>),
    NoNsid,
    HostNotVeth,
    Eth0NotVeth,
    HostGone,
    Eth0Gone,
    ForceForwarding(bool),
}

fn arb_drift() -> impl Strategy<Value = Drift> {
    let sysctl = prop::sample::select(vec![
        Sysctl::Ipv4Forwarding,
        Sysctl::ProxyArp,
        Sysctl::Ipv6Forwarding,
        Sysctl::Ipv6ForceForwarding,
        Sysctl::AddrGenMode,
    ]);
    let value = prop::option::of(0..=1i32);
    let addr = prop::sample::select(pool());
    prop_oneof![
        Just(Drift::HostDown),
        Just(Drift::HostUnmarked),
        Just(Drift::Eth0Down),
        Just(Drift::LoDown),
        prop::sample::select(vec![None, Some(vec![2, 0, 0, 0, 0, 9])]).prop_map(Drift::HostMac),
        Just(Drift::DropHostAddresses),
        arb_host_addresses()
            .prop_filter("one address", |v| !v.is_empty())
            .prop_map(|v| Drift::HostAddress(v[0])),
        Just(Drift::DropHostNeighbours),
        prop::sample::select(vec![vec![2, 0, 0, 0, 0, 0x77], vec![]])
            .prop_map(Drift::HostNeighbourMac),
        prop::sample::select(vec![vec![2, 0, 0, 0, 0, 0x78], container_mac(CID).to_vec()])
            .prop_map(Drift::Eth0Mac),
        (sysctl.clone(), value.clone()).prop_map(|(k, v)| Drift::HostSysctl(k, v)),
        (sysctl, value).prop_map(|(k, v)| Drift::Eth0Sysctl(k, v)),
        any::<prop::sample::Index>().prop_map(Drift::DropAddress),
        (addr.clone(), any::<bool>()).prop_map(|(a, h)| Drift::ExtraAddress(a, h)),
        prop::sample::select(vec![
            ContainerRoute::GatewayV4,
            ContainerRoute::DefaultV4,
            ContainerRoute::DefaultV6
        ])
        .prop_map(Drift::DropContainerRoute),
        prop::sample::select(vec![
            ContainerNeighbour::GatewayV4,
            ContainerNeighbour::GatewayV6
        ])
        .prop_map(Drift::DropNeighbour),
        any::<prop::sample::Index>().prop_map(Drift::DropHostRoute),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![Some(OTHER_IDX), None])
        )
            .prop_map(|(i, oif)| Drift::HostRouteOif(i, oif)),
        any::<prop::sample::Index>().prop_map(Drift::HostRouteTable),
        (
            addr.clone(),
            any::<bool>(),
            prop::sample::select(vec![MAIN_TABLE, OTHER_TABLE])
        )
            .prop_map(|(a, h, t)| Drift::StaleRoute(a, h, t)),
        addr.prop_map(Drift::ForeignRoute),
        Just(Drift::HostPeerIndex),
        prop::sample::select(vec![Some(NSID + 1), None]).prop_map(Drift::HostPeerNsid),
        Just(Drift::NoNsid),
        Just(Drift::HostNotVeth),
        Just(Drift::Eth0NotVeth),
        Just(Drift::HostGone),
        Just(Drift::Eth0Gone),
        any::<bool>().prop_map(Drift::ForceForwarding),
    ]
}

fn network_prefix(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 64,
    }
}

fn set_or_remove(m: &mut BTreeMap<Sysctl, i32>, k: Sysctl, v: Option<i32>) {
    match v {
        Some(v) => m.insert(k, v),
        None => m.remove(&k),
    };
}

/// Adds `r`, replacing the route with the same FIB key (as `ip route
/// replace` would).
fn put_route(o: &mut Observed, r: HostRoute) {
    o.host_routes
        .retain(|x| (x.dst, x.prefix_len, x.table) != (r.dst, r.prefix_len, r.table));
    o.host_routes.push(r);
}

fn apply_drift(o: &mut Observed, d: &Drift) {
    let c = &mut o.container;
    match d {
        Drift::HostDown => o.host.iter_mut().for_each(|h| h.up = false),
        Drift::HostUnmarked => o.host.iter_mut().for_each(|h| h.marked = false),
        Drift::Eth0Down => c.eth0.iter_mut().for_each(|e| e.up = false),
        Drift::LoDown => c.lo_up = false,
        Drift::HostMac(m) => o.host.iter_mut().for_each(|h| h.mac = m.clone()),
        Drift::DropHostAddresses => o.host_addresses.clear(),
        Drift::HostAddress(a) => {
            // One prefix per address, as IPv6 has it.
            o.host_addresses.retain(|x| x.addr != a.addr);
            o.host_addresses.push(*a);
        }
        Drift::DropHostNeighbours => o.host_neighbours.clear(),
        Drift::HostNeighbourMac(m) => o
            .host_neighbours
            .iter_mut()
            .for_each(|n| n.lladdr = m.clone()),
        Drift::Eth0Mac(m) => c.eth0.iter_mut().for_each(|e| e.mac = Some(m.clone())),
        Drift::HostSysctl(k, v) => o
            .host
            .iter_mut()
            .for_each(|h| set_or_remove(&mut h.sysctls, *k, *v)),
        Drift::Eth0Sysctl(k, v) => c
            .eth0
            .iter_mut()
            .for_each(|e| set_or_remove(&mut e.sysctls, *k, *v)),
        Drift::DropAddress(i) if !c.addresses.is_empty() => {
            c.addresses.remove(i.index(c.addresses.len()));
        }
        Drift::ExtraAddress(a, host_prefix) => {
            let p = if *host_prefix {
                full_prefix(*a)
            } else {
                network_prefix(*a)
            };
            // One prefix per address, as IPv6 has it.
            c.addresses.retain(|x| x.0 != *a);
            c.addresses.push((*a, p));
        }
        Drift::DropContainerRoute(r) => c.routes.retain(|x| x != r),
        Drift::DropNeighbour(n) => c.neighbours.retain(|x| x != n),
        Drift::DropHostRoute(i) if !o.host_routes.is_empty() => {
            o.host_routes.remove(i.index(o.host_routes.len()));
        }
        Drift::HostRouteOif(i, oif) if !o.host_routes.is_empty() => {
            let n = o.host_routes.len();
            o.host_routes[i.index(n)].oif = *oif;
        }
        Drift::HostRouteTable(i) if !o.host_routes.is_empty() => {
            let n = o.host_routes.len();
            o.host_routes[i.index(n)].table = OTHER_TABLE;
        }
        Drift::StaleRoute(a, host_prefix, table) => {
            let p = if *host_prefix {
                full_prefix(*a)
            } else {
                network_prefix(*a)
            };
            put_route(o, route(*a, p, *table, ROUTE_PROTOCOL, Some(HOST_IDX)));
        }
        Drift::ForeignRoute(a) => put_route(
            o,
            route(
                *a,
                full_prefix(*a),
                MAIN_TABLE,
                FOREIGN_PROTOCOL,
                Some(OTHER_IDX),
            ),
        ),
        Drift::HostPeerIndex => o.host.iter_mut().for_each(|h| h.peer_index = Some(3)),
        Drift::HostPeerNsid(n) => o.host.iter_mut().for_each(|h| h.peer_netnsid = *n),
        Drift::NoNsid => o.container_nsid = None,
        Drift::HostNotVeth => o.host.iter_mut().for_each(|h| h.is_veth = false),
        Drift::Eth0NotVeth => c.eth0.iter_mut().for_each(|e| e.is_veth = false),
        Drift::HostGone => {
            o.host = None;
            o.host_routes.retain(|r| r.oif != Some(HOST_IDX));
        }
        Drift::Eth0Gone => c.eth0 = None,
        Drift::ForceForwarding(ff) => o.ipv6_force_forwarding = *ff,
        Drift::DropAddress(_)
        | Drift::DropHostRoute(_)
        | Drift::HostRouteOif(..)
        | Drift::HostRouteTable(_) => {}
    }
}

/// A spec and a state close to it: converged, then a few drifts.
fn arb_spec_and_near_state() -> impl Strategy<Value = (EndpointSpec, Observed)> {
    (
        arb_spec(),
        any::<bool>(),
        prop::collection::vec(arb_drift(), 0..=4),
    )
        .prop_map(|(s, ff, drifts)| {
            let mut o = converged(&s, ff);
            for d in &drifts {
                apply_drift(&mut o, d);
            }
            // Keep the state one a kernel could show (a link gone or not a
            // veth is no longer anyone's peer).
            let paired = matches!((&o.host, &o.container.eth0), (Some(h), Some(e))
                if h.is_veth && e.is_veth && h.peer_index == Some(e.index)
                    && h.peer_netnsid.is_some() && h.peer_netnsid == o.container_nsid);
            make_consistent(&mut o, paired);
            (s, o)
        })
}

/// The properties every (spec, state) pair must have.
fn check_plan(s: &EndpointSpec, o: &Observed) -> Result<(), TestCaseError> {
    let first = plan(s, o);
    prop_assert_eq!(&first, &plan(&s.clone(), &o.clone()), "not deterministic");
    match first {
        Ok(actions) => {
            prop_assert!(!has_foreign_route(s, o), "planned over a foreign route");
            // Every step is one the kernel accepts (else `simulate` panics),
            // and afterwards nothing is left to do.
            let after = simulate(o, &actions, s);
            prop_assert_eq!(plan(s, &after), Ok(vec![]), "plan was {:#?}", actions);
            let mut seen = Vec::new();
            for a in &actions {
                prop_assert!(!seen.contains(&a), "{} twice in {:#?}", a, actions);
                seen.push(a);
            }
        }
        Err(PlanError::ForeignRoute { addr, protocol, .. }) => {
            prop_assert!(s.addresses().any(|a| a == addr));
            prop_assert_ne!(protocol, ROUTE_PROTOCOL);
            prop_assert!(has_foreign_route(s, o));
        }
    }
    Ok(())
}

/// Written independently of the planner: a route that is not ours claims a
/// wanted address.
fn has_foreign_route(s: &EndpointSpec, o: &Observed) -> bool {
    s.addresses().any(|a| {
        o.host_routes
            .iter()
            .any(|r| r.dst == a && r.prefix_len == full_prefix(a) && r.protocol != ROUTE_PROTOCOL)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Arbitrary states: a plan is accepted step by step by the kernel
    /// model and leaves nothing to do; refusals are for foreign routes only.
    #[test]
    fn a_plan_converges(s in arb_spec(), o in arb_observed()) {
        check_plan(&s, &o)?;
    }

    /// The same for states a few drifts away from converged, where most
    /// plans keep the links and repair details.
    #[test]
    fn a_repair_converges((s, o) in arb_spec_and_near_state()) {
        check_plan(&s, &o)?;
    }

    /// Same inputs, same plan.
    #[test]
    fn planning_is_deterministic(s in arb_spec(), o in arb_observed()) {
        let first = plan(&s, &o);
        prop_assert_eq!(&first, &plan(&s.clone(), &o.clone()));
        prop_assert_eq!(&first, &plan(&s, &o));
    }

    /// A converged endpoint stays converged whatever the kernel's
    /// force_forwarding support, as long as the sysctls match it.
    #[test]
    fn converged_needs_nothing(s in arb_spec(), ff in any::<bool>()) {
        prop_assert_eq!(plan(&s, &converged(&s, ff)), Ok(vec![]));
    }
}
