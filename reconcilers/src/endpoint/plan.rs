//! The pure planner: desired endpoint + observed kernel state → ordered
//! actions. No I/O; everything it needs is in its arguments.

use super::host_ifname;
use super::model::*;
use crate::ROUTE_PROTOCOL;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A route that is not ours already claims one of the container's
    /// addresses; replacing it would take over someone else's route.
    #[error("address {addr} already has a route that is not ours (protocol {protocol}, table {table}, output interface {oif:?})")]
    ForeignRoute {
        /// The container address.
        addr: IpAddr,
        /// The route's protocol.
        protocol: u8,
        /// The route's table.
        table: u32,
        /// The route's output interface index.
        oif: Option<u32>,
    },
}

/// True when `host` and `eth0` are the two ends of one veth pair, with the
/// host end's peer in the container's namespace.
pub fn is_pair(host: &HostLink, eth0: &ContainerLink, container_nsid: Option<i32>) -> bool {
    host.is_veth
        && eth0.is_veth
        && host.peer_index == Some(eth0.index)
        && eth0.peer_index == Some(host.index)
        && container_nsid.is_some()
        && host.peer_netnsid == container_nsid
}

/// The sysctls written through `/proc` on the host side.
///
/// Before them, `addr_gen_mode` none (with the alias, one netlink request,
/// while the link is down: [`Action::ConfigureHostLink`]): the kernel then
/// makes no link-local address of its own there, and the host side has no
/// IPv6 address at all. Every address on a host veth costs routes shared
/// by every other one (its local route, and with a kernel-made /64 a
/// `fe80::/64` route and an anycast `fe80::`: one list of siblings per key
/// in the IPv6 FIB, walked on every insertion), and each add walks every
/// address of the node (`addrconf_verify`): the ensure grew with the node.
/// Without an address to solicit from, the host side reaches the container
/// through a permanent neighbour entry per container IPv6 address
/// ([`HostNeighbour`]); the container reaches [`GATEWAY_V6`] through its
/// own permanent entry, so nothing ever solicits.
fn host_sysctls(spec: &EndpointSpec, force_forwarding: bool) -> Vec<(Sysctl, i32)> {
    let mut v = vec![(Sysctl::Ipv4Forwarding, 1), (Sysctl::ProxyArp, 1)];
    if !spec.ipv6.is_empty() {
        v.push((Sysctl::Ipv6Forwarding, 1));
        if force_forwarding {
            v.push((Sysctl::Ipv6ForceForwarding, 1));
        }
    }
    v
}

/// True when the host link carries our alias and has `addr_gen_mode` none
/// (what [`Action::ConfigureHostLink`] sets).
fn host_configured(link: &HostLink) -> bool {
    link.marked && link.sysctls.get(&Sysctl::AddrGenMode) == Some(&1)
}

/// The sysctls wanted on the container's eth0.
///
/// No kernel-made link-local address on eth0 (`addr_gen_mode` none, set
/// before it goes up), instead of `accept_dad=0` written through
/// `/proc/sys`: nothing on eth0 can then wait for duplicate address
/// detection (its own addresses are added with `nodad`), and it is one
/// netlink request. Writing under a fresh namespace's `/proc/sys/net`
/// costs a walk past an entry of every other namespace on the host (0.2 ms
/// on an empty node, 0.6–6 ms at 1,000 containers). The container needs no
/// link-local address of its own: it reaches its gateway through the
/// permanent neighbour entry and answers the host's solicitations from its
/// own addresses.
fn container_sysctls(spec: &EndpointSpec) -> Vec<(Sysctl, i32)> {
    if spec.ipv6.is_empty() {
        vec![]
    } else {
        vec![(Sysctl::AddrGenMode, 1)]
    }
}

/// Plans the actions that make the kernel match `spec`, in order.
///
/// Pure: the same inputs always give the same plan, and a plan applied to
/// the state it was made from leaves nothing to do (tested by simulation).
pub fn plan(spec: &EndpointSpec, obs: &Observed) -> Result<Vec<Action>, PlanError> {
    let host = host_ifname(&spec.container_id);
    let wanted: Vec<IpAddr> = spec.addresses().collect();

    for addr in &wanted {
        if let Some(r) = obs
            .host_routes
            .iter()
            .find(|r| r.is_host_route_for(*addr) && r.protocol != ROUTE_PROTOCOL)
        {
            return Err(PlanError::ForeignRoute {
                addr: *addr,
                protocol: r.protocol,
                table: r.table,
                oif: r.oif,
            });
        }
    }

    let mut actions = Vec::new();
    let pair_ok = match (&obs.host, &obs.container.eth0) {
        (Some(h), Some(e)) => is_pair(h, e, obs.container_nsid),
        _ => false,
    };

    // State of the links after the (re)creation step, if any.
    let host_now: HostLink;
    let eth0_now: ContainerLink;
    let container_now: ContainerState;
    // The host link index the existing routes are compared with; `None`
    // when the link is (re)created and so every route must be (re)made.
    let kept_index: Option<u32>;

    if pair_ok {
        host_now = obs.host.clone().expect("pair_ok implies a host link");
        eth0_now = obs.container.eth0.clone().expect("pair_ok implies eth0");
        container_now = obs.container.clone();
        kept_index = Some(host_now.index);
    } else {
        if let Some(h) = &obs.host {
            actions.push(Action::DeleteHostLink {
                name: host.clone(),
                index: h.index,
            });
        }
        // An eth0 that is not the host link's peer would not go with it,
        // and would block the new peer's name.
        if let Some(e) = &obs.container.eth0 {
            actions.push(Action::DeleteContainerLink { index: e.index });
        }
        let container_mac = container_mac(&spec.container_id);
        actions.push(Action::CreateVeth {
            host: host.clone(),
            container_mac,
        });
        host_now = HostLink {
            index: 0,
            is_veth: true,
            mac: Some(HOST_MAC.to_vec()),
            up: false,
            marked: false,
            peer_index: None,
            peer_netnsid: None,
            sysctls: Default::default(),
        };
        eth0_now = ContainerLink {
            index: 0,
            is_veth: true,
            mac: Some(container_mac.to_vec()),
            up: false,
            peer_index: None,
            sysctls: Default::default(),
        };
        container_now = ContainerState {
            eth0: None,
            lo_up: obs.container.lo_up,
            addresses: vec![],
            routes: vec![],
            neighbours: vec![],
        };
        kept_index = None;
    }

    // Host side: MAC, alias and addr_gen_mode, sysctls (all before up), up.
    if host_now.mac.as_deref() != Some(&HOST_MAC[..]) {
        actions.push(Action::SetHostMac { host: host.clone() });
    }
    if !host_configured(&host_now) {
        actions.push(Action::ConfigureHostLink { host: host.clone() });
    }
    for (sysctl, value) in host_sysctls(spec, obs.ipv6_force_forwarding) {
        if host_now.sysctls.get(&sysctl) != Some(&value) {
            actions.push(Action::SetSysctl {
                side: Side::Node,
                ifname: host.clone(),
                sysctl,
                value,
            });
        }
    }
    // Host addresses (after `addr_gen_mode` none, so that the kernel makes
    // no other; before up): none. A link made by an older version has the
    // gateway address, or the kernel's link-local.
    if kept_index.is_some() {
        let stale: BTreeSet<&HostAddress> = obs.host_addresses.iter().collect();
        for a in stale {
            actions.push(Action::DeleteHostAddress {
                host: host.clone(),
                addr: a.addr,
                prefix_len: a.prefix_len,
            });
        }
    }
    if !host_now.up {
        actions.push(Action::SetLinkUp {
            side: Side::Node,
            ifname: host.clone(),
        });
    }

    // Container side: sysctls (before up), eth0 and lo up.
    for (sysctl, value) in container_sysctls(spec) {
        if eth0_now.sysctls.get(&sysctl) != Some(&value) {
            actions.push(Action::SetSysctl {
                side: Side::Container,
                ifname: CONTAINER_IFNAME.to_string(),
                sysctl,
                value,
            });
        }
    }
    if !eth0_now.up {
        actions.push(Action::SetLinkUp {
            side: Side::Container,
            ifname: CONTAINER_IFNAME.to_string(),
        });
    }
    if !container_now.lo_up {
        actions.push(Action::SetLinkUp {
            side: Side::Container,
            ifname: LOOPBACK.to_string(),
        });
    }

    // Container addresses: exactly the wanted ones, as host prefixes.
    let want_addrs: BTreeSet<(IpAddr, u8)> = wanted.iter().map(|a| (*a, full_prefix(*a))).collect();
    let have_addrs: BTreeSet<(IpAddr, u8)> = container_now.addresses.iter().copied().collect();
    for (addr, prefix_len) in have_addrs.difference(&want_addrs) {
        actions.push(Action::DeleteContainerAddress {
            addr: *addr,
            prefix_len: *prefix_len,
        });
    }
    for (addr, _) in want_addrs.difference(&have_addrs) {
        actions.push(Action::AddContainerAddress { addr: *addr });
    }

    // Container routes and neighbours (the gateway route before the
    // default route that uses it).
    let mut want_routes = vec![];
    let mut want_neigh = vec![];
    if !spec.ipv4.is_empty() {
        want_routes.extend([ContainerRoute::GatewayV4, ContainerRoute::DefaultV4]);
        want_neigh.push(ContainerNeighbour::GatewayV4);
    }
    if !spec.ipv6.is_empty() {
        want_routes.push(ContainerRoute::DefaultV6);
        want_neigh.push(ContainerNeighbour::GatewayV6);
    }
    for r in want_routes {
        if !container_now.routes.contains(&r) {
            actions.push(Action::ReplaceContainerRoute(r));
        }
    }
    for n in want_neigh {
        if !container_now.neighbours.contains(&n) {
            actions.push(Action::ReplaceContainerNeighbour(n));
        }
    }

    // Host neighbours: one permanent entry per address, to eth0's MAC,
    // before the route that sends traffic their way.
    if let Some(mac) = &eth0_now.mac {
        for addr in spec.addresses() {
            let want = HostNeighbour {
                addr,
                lladdr: mac.clone(),
            };
            if kept_index.is_none() || !obs.host_neighbours.contains(&want) {
                actions.push(Action::ReplaceHostNeighbour {
                    host: host.clone(),
                    neighbour: want,
                });
            }
        }
    }

    // Host routes: one of ours per address through the host link ...
    for addr in &wanted {
        let ok = kept_index.is_some_and(|idx| {
            obs.host_routes.iter().any(|r| {
                r.is_host_route_for(*addr)
                    && r.protocol == ROUTE_PROTOCOL
                    && r.table == MAIN_TABLE
                    && r.oif == Some(idx)
            })
        });
        if !ok {
            actions.push(Action::ReplaceHostRoute {
                dst: *addr,
                host: host.clone(),
            });
        }
    }
    // ... and none of ours through it for addresses it no longer has.
    if let Some(idx) = kept_index {
        let mut stale: Vec<&HostRoute> = obs
            .host_routes
            .iter()
            .filter(|r| {
                r.protocol == ROUTE_PROTOCOL
                    && r.oif == Some(idx)
                    && !wanted
                        .iter()
                        .any(|a| r.is_host_route_for(*a) && r.table == MAIN_TABLE)
            })
            .collect();
        stale.sort_by_key(|r| (r.dst, r.prefix_len, r.table));
        stale.dedup();
        for r in stale {
            actions.push(Action::DeleteHostRoute {
                dst: r.dst,
                prefix_len: r.prefix_len,
                table: r.table,
                oif: idx,
            });
        }
    }
    // Last: a plan that brings the veth's carrier up has the kernel add
    // the host link's `ff00::/8` route (its link-watch work, done by the
    // time the requests above have waited for the rtnl lock behind it).
    let carrier_up = actions.iter().any(|a| match a {
        Action::CreateVeth { .. } => true,
        Action::SetLinkUp { ifname, .. } => ifname != LOOPBACK,
        _ => false,
    });
    if carrier_up {
        actions.push(Action::DropHostMulticastRoute { host });
    }
    Ok(actions)
}

/// True when the node side of an endpoint is as `spec` wants it, judged
/// from a node-wide inventory: its host veth (MAC, up, sysctls), a route
/// of ours through it and a permanent neighbour entry on it for every
/// address (whose MAC is not judged: the inventory does not know the
/// container's). The container side is not seen
/// here. Pure: the resync uses it to find drift that made no event.
pub fn host_side_matches(
    spec: &EndpointSpec,
    link: Option<&HostLink>,
    has_route: impl Fn(IpAddr, u32) -> bool,
    has_neighbour: impl Fn(IpAddr, u32) -> bool,
    force_forwarding: bool,
) -> bool {
    let Some(link) = link else {
        return false;
    };
    link.is_veth
        && link.up
        && link.mac.as_deref() == Some(&HOST_MAC[..])
        && host_configured(link)
        && host_sysctls(spec, force_forwarding)
            .iter()
            .all(|(sysctl, value)| link.sysctls.get(sysctl) == Some(value))
        && spec.addresses().all(|a| has_route(a, link.index))
        && spec.addresses().all(|a| has_neighbour(a, link.index))
}

#[cfg(test)]
mod host_side_tests {
    use super::*;
    use crate::netns::NetnsRef;
    use std::net::Ipv4Addr;

    fn spec() -> EndpointSpec {
        EndpointSpec {
            container_id: "c".into(),
            netns: NetnsRef { pid: 1, inode: 2 },
            ipv4: vec![Ipv4Addr::new(198, 18, 0, 1)],
            ipv6: vec![],
        }
    }

    fn good_link() -> HostLink {
        HostLink {
            index: 7,
            is_veth: true,
            mac: Some(HOST_MAC.to_vec()),
            up: true,
            marked: true,
            peer_index: Some(2),
            peer_netnsid: Some(0),
            sysctls: [
                (Sysctl::AddrGenMode, 1),
                (Sysctl::Ipv4Forwarding, 1),
                (Sysctl::ProxyArp, 1),
            ]
            .into(),
        }
    }

    #[test]
    fn node_side_drift_is_seen_in_an_inventory() {
        let s = spec();
        let route = |dst: IpAddr, oif: u32| dst == IpAddr::V4(s.ipv4[0]) && oif == 7;
        let any_neighbour = |_: IpAddr, _: u32| true;
        assert!(host_side_matches(
            &s,
            Some(&good_link()),
            route,
            any_neighbour,
            false
        ));
        assert!(
            !host_side_matches(&s, None, route, any_neighbour, false),
            "link missing"
        );
        assert!(
            !host_side_matches(&s, Some(&good_link()), |_, _| false, any_neighbour, false),
            "route missing"
        );
        let mut l = good_link();
        l.sysctls.insert(Sysctl::ProxyArp, 0);
        assert!(
            !host_side_matches(&s, Some(&l), route, any_neighbour, false),
            "proxy_arp off"
        );
        let mut l = good_link();
        l.sysctls.insert(Sysctl::AddrGenMode, 0);
        assert!(
            !host_side_matches(&s, Some(&l), route, any_neighbour, false),
            "the kernel's own link-local addresses back on"
        );
        let mut l = good_link();
        l.marked = false;
        assert!(
            !host_side_matches(&s, Some(&l), route, any_neighbour, false),
            "alias"
        );
        let mut l = good_link();
        l.up = false;
        assert!(
            !host_side_matches(&s, Some(&l), route, any_neighbour, false),
            "down"
        );
        let mut l = good_link();
        l.mac = Some(vec![2, 0, 0, 0, 0, 1]);
        assert!(
            !host_side_matches(&s, Some(&l), route, any_neighbour, false),
            "MAC"
        );
        let mut l = good_link();
        l.index = 8;
        assert!(
            !host_side_matches(&s, Some(&l), route, any_neighbour, false),
            "route via another link"
        );
        let mut s6 = spec();
        s6.ipv6 = vec!["2001:db8::1".parse().unwrap()];
        let route6 = |_: IpAddr, oif: u32| oif == 7;
        let neigh = |a: IpAddr, oif: u32| {
            (a == IpAddr::V6(s6.ipv6[0]) || a == IpAddr::V4(s6.ipv4[0])) && oif == 7
        };
        let mut l = good_link();
        l.sysctls.insert(Sysctl::Ipv6Forwarding, 1);
        assert!(host_side_matches(&s6, Some(&l), route6, neigh, false));
        assert!(
            !host_side_matches(
                &s6,
                Some(&l),
                route6,
                |a, oif| a.is_ipv4() && neigh(a, oif),
                false
            ),
            "the host's neighbour entry for the container's IPv6 address is gone"
        );
        assert!(
            !host_side_matches(
                &s6,
                Some(&l),
                route6,
                |a, oif| a.is_ipv6() && neigh(a, oif),
                false
            ),
            "the host's neighbour entry for the container's IPv4 address is gone"
        );
    }
}
