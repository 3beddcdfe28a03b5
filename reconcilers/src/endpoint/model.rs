//! Plain data: what an endpoint should look like, what the kernel showed,
//! and the actions that turn one into the other. No kernel access here.

use crate::netns::NetnsRef;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host-side MAC of every endpoint veth. One fixed MAC lets the
/// container hold a permanent neighbour entry for its gateway.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// The container's IPv4 gateway: link-local, never routed, answered by the
/// permanent neighbour entry (and by proxy ARP as a fallback).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The container's IPv6 gateway: the EUI-64 link-local address of
/// [`HOST_MAC`] (`ee` with the U/L bit flipped is `ec`, `ff:fe` inserted in
/// the middle). No interface has it: the container's permanent neighbour
/// entry for it sends its IPv6 traffic to [`HOST_MAC`], and the host side
/// forwards it. The host side has no IPv6 address at all; it reaches the
/// container through a permanent neighbour entry per container address
/// ([`HostNeighbour`]).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// The container-side interface name.
pub const CONTAINER_IFNAME: &str = "eth0";

/// The loopback interface every namespace has.
pub const LOOPBACK: &str = "lo";

/// The desired dataplane of one endpoint: plain data handed in by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The Mesos container id; the host interface name is derived from it.
    pub container_id: String,
    /// The container's network namespace.
    pub netns: NetnsRef,
    /// The container's IPv4 addresses (each becomes a /32).
    pub ipv4: Vec<Ipv4Addr>,
    /// The container's IPv6 addresses (each becomes a /128).
    pub ipv6: Vec<Ipv6Addr>,
}

impl EndpointSpec {
    /// All addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(self.ipv6.iter().map(|a| IpAddr::V6(*a)))
    }
}

/// Which namespace an action or a sysctl is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The node's namespace (where the reconciler runs).
    Node,
    /// The container's namespace.
    Container,
}

/// The per-interface sysctls the endpoint dataplane sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sysctl {
    /// `net/ipv4/conf/<if>/forwarding`.
    Ipv4Forwarding,
    /// `net/ipv4/conf/<if>/proxy_arp`.
    ProxyArp,
    /// `net/ipv6/conf/<if>/forwarding`.
    Ipv6Forwarding,
    /// `net/ipv6/conf/<if>/force_forwarding` (Linux ≥ 6.17): forward IPv6
    /// arriving on this interface even when `all/forwarding` is 0.
    Ipv6ForceForwarding,
    /// `net/ipv6/conf/<if>/addr_gen_mode`; 1 (none): the kernel makes no
    /// address of its own on the link (so none there ever waits for
    /// duplicate address detection, and the host side gets no `fe80::/64`
    /// route). Set through netlink (`IFLA_INET6_ADDR_GEN_MODE`), not `/proc`.
    AddrGenMode,
}

impl Sysctl {
    /// The path under `/proc/sys` for interface `ifname`.
    pub fn path(self, ifname: &str) -> String {
        let (fam, key) = self.family_and_key();
        format!("net/{fam}/conf/{ifname}/{key}")
    }

    /// True for the `net/ipv6/conf` ones.
    pub fn is_ipv6(self) -> bool {
        self.family_and_key().0 == "ipv6"
    }

    /// The file name under `net/<family>/conf/<interface>/`.
    pub fn key(self) -> &'static str {
        self.family_and_key().1
    }

    fn family_and_key(self) -> (&'static str, &'static str) {
        match self {
            Self::Ipv4Forwarding => ("ipv4", "forwarding"),
            Self::ProxyArp => ("ipv4", "proxy_arp"),
            Self::Ipv6Forwarding => ("ipv6", "forwarding"),
            Self::Ipv6ForceForwarding => ("ipv6", "force_forwarding"),
            Self::AddrGenMode => ("ipv6", "addr_gen_mode"),
        }
    }
}

/// The host-side link found under the endpoint's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    /// Its interface index in the node namespace.
    pub index: u32,
    /// Whether it is a veth (anything else under our name is replaced).
    pub is_veth: bool,
    /// Its MAC address.
    pub mac: Option<Vec<u8>>,
    /// Administratively up.
    pub up: bool,
    /// Carries our alias ([`crate::OWNER_ALIAS`]): how the resync tells
    /// our links from anyone else's `cali*` links.
    pub marked: bool,
    /// The veth peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// The id, in the node namespace, of the namespace the peer is in.
    pub peer_netnsid: Option<i32>,
    /// The sysctls the kernel reported for it.
    pub sysctls: BTreeMap<Sysctl, i32>,
}

/// An IPv6 address on the host link: none is wanted there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostAddress {
    /// The address.
    pub addr: Ipv6Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// A permanent neighbour entry on the host link for one container address,
/// to `eth0`'s MAC. IPv6: how the host side, which has no IPv6 address to
/// solicit from, reaches the container at all. IPv4: so that the node
/// never relies on an ARP entry it learnt, which would keep an old MAC
/// for half a minute after `eth0`'s changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostNeighbour {
    /// The container's address.
    pub addr: IpAddr,
    /// The MAC it resolves to (the container's `eth0`).
    pub lladdr: Vec<u8>,
}

/// The container-side link named [`CONTAINER_IFNAME`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLink {
    /// Its interface index in the container namespace.
    pub index: u32,
    /// Whether it is a veth.
    pub is_veth: bool,
    /// Its MAC address (random, chosen by the kernel).
    pub mac: Option<Vec<u8>>,
    /// Administratively up.
    pub up: bool,
    /// The veth peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// The sysctls the kernel reported for it.
    pub sysctls: BTreeMap<Sysctl, i32>,
}

/// A route in the node namespace that matters to this endpoint: one of
/// ours through its host link, or any route for exactly one of its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoute {
    /// Destination address.
    pub dst: IpAddr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Routing table.
    pub table: u32,
    /// Route protocol (ours is [`crate::ROUTE_PROTOCOL`]).
    pub protocol: u8,
    /// Output interface, if any.
    pub oif: Option<u32>,
}

impl HostRoute {
    /// A host route (/32 or /128) for `addr`.
    pub fn is_host_route_for(&self, addr: IpAddr) -> bool {
        self.dst == addr && self.prefix_len == full_prefix(addr)
    }
}

/// The routes inside the container that the dataplane consists of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerRoute {
    /// `169.254.1.1 dev eth0 scope link`.
    GatewayV4,
    /// `default via 169.254.1.1 dev eth0`.
    DefaultV4,
    /// `default via fe80::ecee:eeff:feee:eeee dev eth0`.
    DefaultV6,
}

/// The permanent neighbour entries inside the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerNeighbour {
    /// `169.254.1.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT` on eth0.
    GatewayV4,
    /// `fe80::ecee:eeff:feee:eeee lladdr ee:ee:ee:ee:ee:ee PERMANENT` on eth0.
    GatewayV6,
}

impl ContainerNeighbour {
    /// The neighbour's address.
    pub fn ip(self) -> IpAddr {
        match self {
            Self::GatewayV4 => IpAddr::V4(GATEWAY_V4),
            Self::GatewayV6 => IpAddr::V6(GATEWAY_V6),
        }
    }
}

/// What the container's namespace showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    /// `eth0`, if present.
    pub eth0: Option<ContainerLink>,
    /// Whether `lo` is up.
    pub lo_up: bool,
    /// Addresses on eth0 (address, prefix length), link-local IPv6 excluded.
    pub addresses: Vec<(IpAddr, u8)>,
    /// The dataplane routes present (exactly as desired: right gateway,
    /// right interface); anything else is not listed.
    pub routes: Vec<ContainerRoute>,
    /// The dataplane neighbour entries present (permanent, right MAC).
    pub neighbours: Vec<ContainerNeighbour>,
}

/// Everything observed for one endpoint: the input of [`super::plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The link under the endpoint's host interface name, if any.
    pub host: Option<HostLink>,
    /// The host link's IPv6 addresses (empty when there is no host link).
    pub host_addresses: Vec<HostAddress>,
    /// The permanent neighbour entries on the host link for the
    /// container's IPv6 addresses (empty when there is no host link).
    pub host_neighbours: Vec<HostNeighbour>,
    /// Relevant routes in the node namespace (see [`HostRoute`]).
    pub host_routes: Vec<HostRoute>,
    /// The id the node namespace has for the container's namespace
    /// (`None` when it has none yet).
    pub container_nsid: Option<i32>,
    /// The container side.
    pub container: ContainerState,
    /// Whether this kernel has the per-interface IPv6 `force_forwarding`.
    pub ipv6_force_forwarding: bool,
}

/// One step of a plan. Links are named, not indexed, where the plan itself
/// creates them: the executor resolves names to indexes as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete the link under our host name (stale, foreign kind or wrong
    /// peer); the kernel deletes its peer and routes with it.
    DeleteHostLink {
        /// Interface name.
        name: String,
        /// Interface index.
        index: u32,
    },
    /// Delete a container `eth0` that is not the peer of our host link.
    DeleteContainerLink {
        /// Interface index in the container namespace.
        index: u32,
    },
    /// Create the veth pair with its peer placed straight into the
    /// container's namespace as `eth0` (one request); the host side gets
    /// [`HOST_MAC`], read back and set again if the kernel ignored it.
    CreateVeth {
        /// Host-side name.
        host: String,
        /// The MAC `eth0` is given ([`container_mac`]), so that the plan
        /// knows what the host's neighbour entries point to.
        container_mac: [u8; 6],
    },
    /// Mark the host link as ours ([`crate::OWNER_ALIAS`]) and set its
    /// [`Sysctl::AddrGenMode`] to none, in one request, planned before it
    /// goes up: a change to a link that is down notifies no one, while
    /// one to an up link without carrier makes the kernel walk the whole
    /// IPv6 routing table (`rt6_sync_down_dev`).
    ConfigureHostLink {
        /// Host-side name.
        host: String,
    },
    /// Set the host side's MAC to [`HOST_MAC`].
    SetHostMac {
        /// Host-side name.
        host: String,
    },
    /// Write a per-interface sysctl.
    SetSysctl {
        /// Which namespace.
        side: Side,
        /// Interface name.
        ifname: String,
        /// Which sysctl.
        sysctl: Sysctl,
        /// The value.
        value: i32,
    },
    /// Remove an IPv6 address from the host link (the gateway address or
    /// the kernel's link-local of a link made by an older version, or
    /// anyone's): the host side has none.
    DeleteHostAddress {
        /// Host-side name.
        host: String,
        /// The address.
        addr: Ipv6Addr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// Set a link administratively up.
    SetLinkUp {
        /// Which namespace.
        side: Side,
        /// Interface name.
        ifname: String,
    },
    /// Remove an address from the container's eth0.
    DeleteContainerAddress {
        /// The address.
        addr: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// Add an address to the container's eth0 as /32 or /128 (IPv6 without
    /// duplicate address detection).
    AddContainerAddress {
        /// The address.
        addr: IpAddr,
    },
    /// Add or replace a route inside the container.
    ReplaceContainerRoute(ContainerRoute),
    /// Add or replace a permanent neighbour entry inside the container.
    ReplaceContainerNeighbour(ContainerNeighbour),
    /// Add or replace the permanent neighbour entry on the host link for a
    /// container IPv6 address.
    ReplaceHostNeighbour {
        /// Host-side name.
        host: String,
        /// The entry.
        neighbour: HostNeighbour,
    },
    /// Add or replace the host route (/32 or /128, our protocol, main table)
    /// for a container address via the host link.
    ReplaceHostRoute {
        /// The container address.
        dst: IpAddr,
        /// Host-side interface name.
        host: String,
    },
    /// Delete one of our routes through the host link whose address the
    /// endpoint no longer has.
    DeleteHostRoute {
        /// Destination.
        dst: IpAddr,
        /// Prefix length.
        prefix_len: u8,
        /// Table.
        table: u32,
        /// Output interface index.
        oif: u32,
    },
    /// Delete the `ff00::/8` route the kernel adds to the host link's
    /// local table when the link becomes ready for IPv6 (its carrier
    /// comes up). A thousand host links make a thousand of them, which the
    /// kernel walks when the next link becomes ready; the node never sends
    /// multicast through a container's veth. Gone already is done.
    DropHostMulticastRoute {
        /// Host-side interface name.
        host: String,
    },
}

/// The MAC a new `eth0` of `container_id` gets: the first six bytes of
/// the SHA-256 of the id, made a locally administered unicast address.
/// Never [`HOST_MAC`].
pub fn container_mac(container_id: &str) -> [u8; 6] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(container_id.as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    if mac == HOST_MAC {
        mac[5] ^= 1;
    }
    mac
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The prefix length of a host route for `addr`: 32 or 128.
pub fn full_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Node => "node",
            Side::Container => "container",
        })
    }
}

impl std::fmt::Display for Action {
    /// One line an operator can read, e.g. "add route 198.18.0.5/32 dev cali0123456789a".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::DeleteHostLink { name, index } => {
                write!(f, "delete link {name} (index {index})")
            }
            Action::DeleteContainerLink { index } => {
                write!(
                    f,
                    "delete the container's {CONTAINER_IFNAME} (index {index})"
                )
            }
            Action::CreateVeth {
                host,
                container_mac,
            } => {
                write!(
                    f,
                    "create veth {host} with peer {CONTAINER_IFNAME} (address {}) in the container",
                    format_mac(container_mac)
                )
            }
            Action::SetHostMac { host } => write!(f, "set {host} address ee:ee:ee:ee:ee:ee"),
            Action::ConfigureHostLink { host } => write!(
                f,
                "set {host} alias {} addrgenmode none",
                crate::OWNER_ALIAS
            ),
            Action::SetSysctl {
                side,
                ifname,
                sysctl,
                value,
            } => write!(f, "set {} = {value} ({side})", sysctl.path(ifname)),
            Action::DeleteHostAddress {
                host,
                addr,
                prefix_len,
            } => write!(f, "delete address {addr}/{prefix_len} from {host}"),
            Action::SetLinkUp { side, ifname } => write!(f, "set {ifname} up ({side})"),
            Action::DeleteContainerAddress { addr, prefix_len } => {
                write!(
                    f,
                    "delete address {addr}/{prefix_len} from the container's {CONTAINER_IFNAME}"
                )
            }
            Action::AddContainerAddress { addr } => write!(
                f,
                "add address {addr}/{} to the container's {CONTAINER_IFNAME}",
                full_prefix(*addr)
            ),
            Action::ReplaceContainerRoute(r) => match r {
                ContainerRoute::GatewayV4 => {
                    write!(f, "add container route {GATEWAY_V4} dev {CONTAINER_IFNAME}")
                }
                ContainerRoute::DefaultV4 => {
                    write!(f, "add container route default via {GATEWAY_V4}")
                }
                ContainerRoute::DefaultV6 => {
                    write!(f, "add container route default via {GATEWAY_V6}")
                }
            },
            Action::ReplaceContainerNeighbour(n) => {
                write!(
                    f,
                    "add container neighbour {} lladdr ee:ee:ee:ee:ee:ee permanent",
                    n.ip()
                )
            }
            Action::ReplaceHostNeighbour { host, neighbour } => write!(
                f,
                "add neighbour {} lladdr {} permanent dev {host}",
                neighbour.addr,
                format_mac(&neighbour.lladdr)
            ),
            Action::ReplaceHostRoute { dst, host } => {
                write!(f, "add route {dst}/{} dev {host}", full_prefix(*dst))
            }
            Action::DeleteHostRoute {
                dst,
                prefix_len,
                table,
                oif,
            } => write!(
                f,
                "delete route {dst}/{prefix_len} table {table} (interface index {oif})"
            ),
            Action::DropHostMulticastRoute { host } => {
                write!(
                    f,
                    "delete route ff00::/8 table local dev {host} (the kernel's)"
                )
            }
        }
    }
}
