//! Reads one endpoint's dataplane from the kernel (netlink only).
//!
//! Cost does not grow with the number of endpoints on the node: the host
//! link is looked up by name and each container address gets one route
//! lookup (`RTM_F_FIB_MATCH`). Nothing here dumps the node's links or
//! routes (a route dump walks the whole table even when the kernel filters
//! what it sends back); the resync's inventory does, and sweeps routes of
//! ours that no endpoint wants.

use super::model::*;
use super::plan::MAIN_TABLE;
use crate::nl::Conn;
use crate::nl::{
    dump_addresses, dump_addresses_of, neighbour_destination, own_address, request, NlError,
};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, InfoKind, LinkAttribute, LinkExtentMask, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
    RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// Failures while reading the kernel.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Looking a link up by name failed (other than "no such device").
    #[error("cannot read link {name} in the {side:?} namespace")]
    Link {
        /// Interface name.
        name: String,
        /// Which namespace.
        side: Side,
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// Asking the node for its id of the container's namespace failed.
    #[error("cannot read the node's id for the namespace of pid {pid}")]
    Nsid {
        /// The container's pid.
        pid: u32,
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// Reading routes failed.
    #[error("cannot read routes ({what}) in the {side:?} namespace")]
    Routes {
        /// Which routes.
        what: String,
        /// Which namespace.
        side: Side,
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// Reading the host link's addresses failed.
    #[error("cannot read the addresses of {ifname} in the node namespace")]
    HostAddresses {
        /// Interface name.
        ifname: String,
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// Reading the container's addresses failed.
    #[error("cannot read the addresses of {ifname} in the container namespace")]
    Addresses {
        /// Interface name.
        ifname: String,
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// Reading the host link's neighbour entries failed.
    #[error("cannot read the neighbours of {ifname} in the node namespace")]
    HostNeighbours {
        /// Interface name.
        ifname: String,
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// Reading the container's neighbour table failed.
    #[error("cannot read the neighbours of {ifname} in the container namespace")]
    Neighbours {
        /// Interface name.
        ifname: String,
        /// The netlink error.
        #[source]
        source: NlError,
    },
}

/// What one link message says, in our terms: everything of a link the
/// planner looks at, and nothing else (not its carrier, counters or
/// MTU). Two messages about a link with equal facts differ in nothing
/// that could change a plan; a kernel event with the facts an endpoint's
/// last reconcile read back needs no second look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_IFALIAS` (ours: [`crate::OWNER_ALIAS`]).
    pub alias: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// A veth.
    pub is_veth: bool,
    /// Hardware address.
    pub mac: Option<Vec<u8>>,
    /// A veth's peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// The id, in the link's namespace, of its peer's namespace.
    pub peer_netnsid: Option<i32>,
    /// The per-interface sysctls the dataplane sets, as the link reports them.
    pub sysctls: BTreeMap<Sysctl, i32>,
}

/// The facts of one link message.
pub(crate) fn link_facts(msg: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        index: msg.header.index,
        name: String::new(),
        alias: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        is_veth: false,
        mac: None,
        peer_index: None,
        peer_netnsid: None,
        sysctls: BTreeMap::new(),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => f.name = n.clone(),
            LinkAttribute::IfAlias(a) => f.alias = Some(a.clone()),
            LinkAttribute::Address(m) => f.mac = Some(m.clone()),
            LinkAttribute::Link(i) => f.peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(i) => f.peer_netnsid = Some(*i),
            LinkAttribute::LinkInfo(infos) => {
                f.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::AfSpecUnspec(specs) => {
                for s in specs {
                    match s {
                        AfSpecUnspec::Inet(v) => {
                            for c in v {
                                if let AfSpecInet::DevConf(c) = c {
                                    f.sysctls.insert(Sysctl::Ipv4Forwarding, c.forwarding);
                                    f.sysctls.insert(Sysctl::ProxyArp, c.proxy_arp);
                                }
                            }
                        }
                        AfSpecUnspec::Inet6(v) => {
                            for c in v {
                                if let AfSpecInet6::DevConf(c) = c {
                                    f.sysctls.insert(Sysctl::Ipv6Forwarding, c.forwarding);
                                    f.sysctls.insert(Sysctl::AddrGenMode, c.addr_gen_mode);
                                    f.sysctls
                                        .insert(Sysctl::Ipv6ForceForwarding, c.force_forwarding);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // A veth whose peer is in the same namespace reports no netns id.
    if !f.is_veth {
        f.peer_index = None;
        f.peer_netnsid = None;
    }
    f
}

/// Looks a link up by index (one request, no dump). `None`: no such link.
pub(crate) async fn link_by_index(h: &Conn, index: u32) -> Result<Option<LinkFacts>, NlError> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(skip_stats());
    match request(h, RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST).await {
        Ok(answers) => Ok(answers.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_facts(l)),
            _ => None,
        })),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Looks a link up by name (one request, no dump). `None`: no such link.
pub(crate) async fn link_by_name(
    h: &Conn,
    name: &str,
    side: Side,
) -> Result<Option<LinkFacts>, ObserveError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(skip_stats());
    match request(h, RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST).await {
        Ok(answers) => Ok(answers.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_facts(l)),
            _ => None,
        })),
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
        Err(source) => Err(ObserveError::Link {
            name: name.to_string(),
            side,
            source,
        }),
    }
}

/// Asks the kernel to leave a link's counters out of its answer (link,
/// IPv6 and ICMPv6 statistics: most of each message, and none of them read
/// here), which makes a dump of a full node much cheaper to fill and parse.
pub(crate) fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

/// The node's id for the namespace `ns` (`None`: it has none).
pub(crate) async fn nsid_of(h: &Conn, ns: &File, pid: u32) -> Result<Option<i32>, ObserveError> {
    let mut msg = NsidMessage::default();
    msg.attributes
        .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    let answers = request(h, RouteNetlinkMessage::GetNsId(msg), NLM_F_REQUEST)
        .await
        .map_err(|source| ObserveError::Nsid { pid, source })?;
    for m in answers {
        if let RouteNetlinkMessage::NewNsId(n) = m {
            for a in n.attributes {
                if let NsidAttribute::Id(id) = a {
                    return Ok((id >= 0).then_some(id));
                }
            }
        }
    }
    Ok(None)
}

/// One route, in our terms.
#[derive(Clone, Debug)]
pub(crate) struct RouteFacts {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub table: u32,
    pub protocol: u8,
    pub oif: Option<u32>,
    /// RTA_GATEWAY, or RTA_VIA when it names an IP address.
    pub gateway: Option<IpAddr>,
    /// RTA_PRIORITY (the metric); IPv4 omits it when it is 0.
    pub priority: Option<u32>,
    /// The route type (unicast, blackhole, ...).
    pub kind: RouteType,
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

pub(crate) fn route_facts(m: &RouteMessage) -> Option<RouteFacts> {
    let unspecified = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut f = RouteFacts {
        dst: unspecified,
        prefix_len: m.header.destination_prefix_length,
        table: m.header.table as u32,
        protocol: u8::from(m.header.protocol),
        oif: None,
        gateway: None,
        priority: None,
        kind: m.header.kind,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => f.dst = route_addr(d)?,
            RouteAttribute::Gateway(g) => f.gateway = route_addr(g),
            RouteAttribute::Via(RouteVia::Inet(v)) => f.gateway = Some(IpAddr::V4(*v)),
            RouteAttribute::Via(RouteVia::Inet6(v)) => f.gateway = Some(IpAddr::V6(*v)),
            RouteAttribute::Priority(p) => f.priority = Some(*p),
            RouteAttribute::Oif(i) => f.oif = Some(*i),
            RouteAttribute::Table(t) => f.table = *t,
            _ => {}
        }
    }
    Some(f)
}

fn family_of(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// Dumps the main table's routes of one family, filtered by the kernel
/// (strict checking) by protocol and output interface where given.
pub(crate) async fn dump_routes(
    h: &Conn,
    v6: bool,
    protocol: Option<u8>,
    oif: Option<u32>,
) -> Result<Vec<RouteFacts>, NlError> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(v6);
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    if let Some(p) = protocol {
        msg.header.protocol = RouteProtocol::from(p);
    }
    if let Some(i) = oif {
        msg.attributes.push(RouteAttribute::Oif(i));
    }
    let answers = request(
        h,
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .await?;
    Ok(answers
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => route_facts(r),
            _ => None,
        })
        // Belt and braces, should a kernel ignore part of the filter.
        .filter(|r| protocol.is_none_or(|p| r.protocol == p))
        .filter(|r| oif.is_none_or(|i| r.oif == Some(i)))
        .filter(|r| r.table == MAIN_TABLE)
        .collect())
}

/// The routing entry the kernel would use for `addr` (`RTM_F_FIB_MATCH`),
/// if it is a host route for exactly that address.
pub(crate) async fn host_route_for(h: &Conn, addr: IpAddr) -> Result<Option<RouteFacts>, NlError> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(addr.is_ipv6());
    msg.header.destination_prefix_length = full_prefix(addr);
    msg.header.flags = RouteFlags::FibMatch;
    msg.attributes
        .push(RouteAttribute::Destination(addr.into()));
    match request(h, RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST).await {
        Ok(answers) => Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_facts(r),
                _ => None,
            })
            .find(|r| r.dst == addr && r.prefix_len == full_prefix(addr))),
        Err(e)
            if matches!(
                e.errno(),
                Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) | Some(libc::ESRCH)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn to_host_route(r: RouteFacts) -> HostRoute {
    HostRoute {
        dst: r.dst,
        prefix_len: r.prefix_len,
        table: r.table,
        protocol: r.protocol,
        oif: r.oif,
    }
}

/// The IPv6 addresses of host link `index` (one dump the kernel filters
/// by interface).
pub(crate) async fn host_addresses(
    node: &Conn,
    index: u32,
    name: &str,
) -> Result<Vec<HostAddress>, ObserveError> {
    let answers = dump_addresses_of(node, AddressFamily::Inet6, index)
        .await
        .map_err(|source| ObserveError::HostAddresses {
            ifname: name.to_string(),
            source,
        })?;
    Ok(answers
        .iter()
        .filter_map(|a| match own_address(a)? {
            IpAddr::V6(addr) => Some(HostAddress {
                addr,
                prefix_len: a.header.prefix_len,
            }),
            IpAddr::V4(_) => None,
        })
        .collect())
}

/// What [`observe_node`] found.
pub(crate) struct NodeSide {
    pub link: Option<HostLink>,
    /// The host link's facts as read (see [`super::Links`]).
    pub facts: Option<LinkFacts>,
    pub addresses: Vec<HostAddress>,
    pub neighbours: Vec<HostNeighbour>,
    pub nsid: Option<i32>,
    pub routes: Vec<HostRoute>,
}

/// Observes the node side: the host link, its IPv6 addresses and
/// neighbour entries for the container's addresses, the node's id
/// for the container's namespace (when the host link exists), and the
/// routes that matter to this endpoint.
pub(crate) async fn observe_node(
    node: &Conn,
    host_name: &str,
    container_ns: &File,
    spec: &EndpointSpec,
) -> Result<NodeSide, ObserveError> {
    // The namespace id only matters to a pair that exists (`is_pair`).
    // Not asked otherwise: the kernel answers "none" for a namespace
    // without one only after walking every id the node has given out.
    let (link, addresses, neighbours, nsid) =
        match link_by_name(node, host_name, Side::Node).await? {
            None => (None, vec![], vec![], None),
            Some(l) => {
                let (addrs, neighbours, nsid) = futures::join!(
                    host_addresses(node, l.index, host_name),
                    host_neighbours(node, l.index, spec),
                    nsid_of(node, container_ns, spec.netns.pid)
                );
                let neighbours = neighbours.map_err(|source| ObserveError::HostNeighbours {
                    ifname: host_name.to_string(),
                    source,
                })?;
                (Some(l), addrs?, neighbours, nsid?)
            }
        };
    let mut routes: Vec<HostRoute> = Vec::new();
    let lookups = futures::future::join_all(spec.addresses().map(|a| host_route_for(node, a)));
    for (r, addr) in lookups.await.into_iter().zip(spec.addresses()) {
        let r = r.map_err(|source| ObserveError::Routes {
            what: format!("lookup of {addr}"),
            side: Side::Node,
            source,
        })?;
        routes.extend(r.map(to_host_route));
    }
    let facts = link.clone();
    let host = link.map(|l| HostLink {
        index: l.index,
        is_veth: l.is_veth,
        mac: l.mac,
        up: l.up,
        marked: l.alias.as_deref() == Some(crate::OWNER_ALIAS),
        peer_index: l.peer_index,
        peer_netnsid: l.peer_netnsid,
        sysctls: l.sysctls,
    });
    Ok(NodeSide {
        link: host,
        facts,
        addresses,
        neighbours,
        nsid,
        routes,
    })
}

async fn container_addresses(h: &Conn, eth0: u32) -> Result<Vec<(IpAddr, u8)>, NlError> {
    Ok(dump_addresses(h, eth0)
        .await?
        .iter()
        .filter_map(|a| Some((own_address(a)?, a.header.prefix_len)))
        // Link-local IPv6 is the kernel's, not part of the dataplane.
        .filter(|(ip, _)| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect())
}

/// The answers about the neighbour entry for `ip` on interface `index`: a
/// get of exactly that entry (kernels ≥ 5.0). A dump would walk the
/// kernel's neighbour table, which is one table for every namespace of the
/// host (several entries per container), filtering as it goes: it grew
/// with the node. Older kernels (no such get) fall back to the dump.
async fn neighbour_answers(
    h: &Conn,
    index: u32,
    ip: IpAddr,
) -> Result<Vec<RouteNetlinkMessage>, NlError> {
    let fam = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let mut msg = NeighbourMessage::default();
    msg.header.family = fam;
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(ip.into()));
    match request(h, RouteNetlinkMessage::GetNeighbour(msg), NLM_F_REQUEST).await {
        Ok(answers) => return Ok(answers),
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(vec![]),
        Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) => {}
        Err(e) => return Err(e),
    }
    let mut msg = NeighbourMessage::default();
    msg.header.family = fam;
    msg.attributes.push(NeighbourAttribute::IfIndex(index));
    request(
        h,
        RouteNetlinkMessage::GetNeighbour(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .await
}

/// A permanent neighbour entry, as a neighbour message shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PermanentNeighbour {
    /// The interface it is on.
    pub index: u32,
    /// Its address.
    pub ip: IpAddr,
    /// The link-layer address it resolves to.
    pub lladdr: Vec<u8>,
}

/// The entry a neighbour message is about, if it is a permanent one with
/// an address and a link-layer address.
pub(crate) fn permanent_neighbour(n: &NeighbourMessage) -> Option<PermanentNeighbour> {
    if n.header.state != NeighbourState::Permanent {
        return None;
    }
    let lladdr = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
        _ => None,
    })?;
    Some(PermanentNeighbour {
        index: n.header.ifindex,
        ip: neighbour_destination(n)?,
        lladdr,
    })
}

/// The permanent entry for `ip` on interface `index`, if there is one.
async fn permanent_neighbour_of(
    h: &Conn,
    index: u32,
    ip: IpAddr,
) -> Result<Option<PermanentNeighbour>, NlError> {
    Ok(neighbour_answers(h, index, ip)
        .await?
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => permanent_neighbour(n),
            _ => None,
        })
        .find(|n| n.index == index && n.ip == ip))
}

/// Every permanent IPv4 and IPv6 neighbour entry of the namespace `h` is
/// in, as (address, interface): one dump per family, for the resync's
/// inventory.
pub(crate) async fn permanent_neighbours(h: &Conn) -> Result<Vec<(IpAddr, u32)>, NlError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        let answers = request(
            h,
            RouteNetlinkMessage::GetNeighbour(msg),
            NLM_F_REQUEST | NLM_F_DUMP,
        )
        .await?;
        out.extend(answers.iter().filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => permanent_neighbour(n).map(|n| (n.ip, n.index)),
            _ => None,
        }));
    }
    Ok(out)
}

async fn container_neighbours(h: &Conn, eth0: u32) -> Result<Vec<ContainerNeighbour>, NlError> {
    let mut out = Vec::new();
    for which in [ContainerNeighbour::GatewayV4, ContainerNeighbour::GatewayV6] {
        let found = permanent_neighbour_of(h, eth0, which.ip()).await?;
        if found.is_some_and(|n| n.lladdr == HOST_MAC) {
            out.push(which);
        }
    }
    Ok(out)
}

/// The host's permanent neighbour entries on host link `index` for the
/// container's addresses (one get each).
async fn host_neighbours(
    node: &Conn,
    index: u32,
    spec: &EndpointSpec,
) -> Result<Vec<HostNeighbour>, NlError> {
    let gets = spec
        .addresses()
        .map(|a| permanent_neighbour_of(node, index, a));
    let mut out = Vec::new();
    for found in futures::future::join_all(gets).await {
        if let Some(PermanentNeighbour { ip, lladdr, .. }) = found? {
            out.push(HostNeighbour { addr: ip, lladdr });
        }
    }
    Ok(out)
}

async fn container_routes(h: &Conn, eth0: u32) -> Result<Vec<ContainerRoute>, NlError> {
    let (v4, v6) = futures::join!(
        dump_routes(h, false, None, Some(eth0)),
        dump_routes(h, true, None, Some(eth0))
    );
    let mut out = Vec::new();
    for r in v4?.into_iter().chain(v6?) {
        let which = match (r.dst, r.prefix_len, r.gateway) {
            (IpAddr::V4(d), 32, None) if d == GATEWAY_V4 => ContainerRoute::GatewayV4,
            (IpAddr::V4(_), 0, Some(IpAddr::V4(g))) if g == GATEWAY_V4 => ContainerRoute::DefaultV4,
            (IpAddr::V6(_), 0, Some(IpAddr::V6(g))) if g == GATEWAY_V6 => ContainerRoute::DefaultV6,
            _ => continue,
        };
        if r.oif == Some(eth0) && !out.contains(&which) {
            out.push(which);
        }
    }
    Ok(out)
}

/// Observes the container side through a connection inside its namespace;
/// also returns eth0's facts as read (see [`super::Links`]).
pub(crate) async fn observe_container(
    ctr: &Conn,
) -> Result<(ContainerState, Option<LinkFacts>), ObserveError> {
    let (eth0, lo) = futures::join!(
        link_by_name(ctr, CONTAINER_IFNAME, Side::Container),
        link_by_name(ctr, LOOPBACK, Side::Container)
    );
    let (eth0, lo) = (eth0?, lo?);
    let facts = eth0.clone();
    let mut state = ContainerState {
        lo_up: lo.is_some_and(|l| l.up),
        ..Default::default()
    };
    if let Some(e) = eth0 {
        let (addrs, routes, neigh) = futures::join!(
            container_addresses(ctr, e.index),
            container_routes(ctr, e.index),
            container_neighbours(ctr, e.index)
        );
        state.addresses = addrs.map_err(|source| ObserveError::Addresses {
            ifname: CONTAINER_IFNAME.into(),
            source,
        })?;
        state.routes = routes.map_err(|source| ObserveError::Routes {
            what: format!("through {CONTAINER_IFNAME}"),
            side: Side::Container,
            source,
        })?;
        state.neighbours = neigh.map_err(|source| ObserveError::Neighbours {
            ifname: CONTAINER_IFNAME.into(),
            source,
        })?;
        state.eth0 = Some(ContainerLink {
            index: e.index,
            is_veth: e.is_veth,
            mac: e.mac,
            up: e.up,
            peer_index: e.peer_index,
            sysctls: e.sysctls,
        });
    }
    Ok((state, facts))
}
