//! Applies a plan: one netlink request (or one sysctl write) per action,
//! in order. Thin on purpose: every decision was made by the planner.

use super::model::*;
use super::observe::{link_by_name, link_facts};
use super::plan::MAIN_TABLE;
use crate::netns::{NetnsError, NsVisitor};
use crate::nl::Conn;
use crate::nl::{request, NlError};
use crate::ROUTE_PROTOCOL;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// Why an action could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A netlink request failed.
    #[error("{action}")]
    Netlink {
        /// The action, described.
        action: String,
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// A sysctl could not be written.
    #[error("{action}")]
    Sysctl {
        /// The action, described.
        action: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The container namespace's worker thread failed.
    #[error("{action}")]
    Namespace {
        /// The action, described.
        action: String,
        /// The namespace error.
        #[source]
        source: NetnsError,
    },
    /// A link the plan relies on is not there (someone deleted it meanwhile).
    #[error("{action}: link {name} not found")]
    MissingLink {
        /// The action, described.
        action: String,
        /// The link's name.
        name: String,
    },
    /// The action needs the container's namespace, which was not given.
    #[error("{action}: needs the container's namespace")]
    NoContainer {
        /// The action, described.
        action: String,
    },
}

/// The container's namespace, as the applier reaches it.
pub(crate) struct ContainerSide<'a> {
    /// A connection inside it.
    pub handle: &'a Conn,
    /// The thread that visits it (for sysctls).
    pub visitor: &'a NsVisitor,
    /// How errors name it.
    pub label: &'a str,
    /// The namespace file (for creating the veth peer straight inside it).
    pub ns: &'a File,
}

/// The node's `/proc/sys/net/ipv4/conf` and `/proc/sys/net/ipv6/conf`,
/// opened once: a sysctl is then written relative to them. A full path
/// would make the kernel walk `/proc/sys/net` afresh each time, and the
/// lookup of its per-namespace directories compares against an entry left
/// by every namespace that ever looked (one per container): the writes
/// grew from 0.02 to 0.6 ms at 1,000 containers.
#[derive(Debug)]
pub(crate) struct NodeSysctls {
    v4: File,
    /// `None` on a kernel without IPv6 (then only IPv6 writes fail).
    v6: Option<File>,
}

impl NodeSysctls {
    /// Opens both directories in the calling thread's namespace.
    pub fn open() -> std::io::Result<NodeSysctls> {
        Ok(NodeSysctls {
            v4: File::open("/proc/sys/net/ipv4/conf")?,
            v6: File::open("/proc/sys/net/ipv6/conf").ok(),
        })
    }

    /// Writes `value` to `sysctl` of interface `ifname`.
    pub fn write(&self, ifname: &str, sysctl: Sysctl, value: &str) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::fd::FromRawFd;
        let dir = if sysctl.is_ipv6() {
            self.v6
                .as_ref()
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOENT))?
        } else {
            &self.v4
        };
        if ifname.contains('/') || ifname.starts_with('.') {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let rel = std::ffi::CString::new(format!("{ifname}/{}", sysctl.key()))
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `dir` is an open directory and `rel` a NUL-terminated
        // relative path; the returned descriptor is owned by `file` below.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                rel.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(value.as_bytes())
    }
}

/// Executes actions against the node namespace (the caller's) and, when
/// given, the container's; link indexes are looked up by name once and
/// remembered.
pub(crate) struct Applier<'a> {
    node: &'a Conn,
    home: &'a File,
    sysctls: &'a NodeSysctls,
    container: Option<ContainerSide<'a>>,
    host_index: Option<u32>,
    eth0_index: Option<u32>,
}

const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

impl<'a> Applier<'a> {
    /// An applier for the node namespace and, optionally, a container's.
    pub fn new(
        node: &'a Conn,
        home: &'a File,
        sysctls: &'a NodeSysctls,
        container: Option<ContainerSide<'a>>,
    ) -> Self {
        Applier {
            node,
            home,
            sysctls,
            container,
            host_index: None,
            eth0_index: None,
        }
    }

    /// Applies `actions` in order; stops at the first failure.
    pub async fn apply_all(&mut self, actions: &[Action]) -> Result<(), ApplyError> {
        for a in actions {
            let started = std::time::Instant::now();
            self.apply(a).await?;
            tracing::trace!(action = %a, took_us = started.elapsed().as_micros() as u64, "applied");
        }
        Ok(())
    }

    fn container(&self, a: &Action) -> Result<&ContainerSide<'a>, ApplyError> {
        self.container
            .as_ref()
            .ok_or_else(|| ApplyError::NoContainer {
                action: a.to_string(),
            })
    }

    async fn send(
        &self,
        h: &Conn,
        a: &Action,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), ApplyError> {
        request(h, msg, flags)
            .await
            .map(drop)
            .map_err(|source| ApplyError::Netlink {
                action: a.to_string(),
                source,
            })
    }

    /// The index of the host link or of `eth0` (`name`), looked up once.
    async fn index_of(&mut self, side: Side, name: &str, a: &Action) -> Result<u32, ApplyError> {
        let cached = match side {
            Side::Node => self.host_index,
            Side::Container => self.eth0_index,
        };
        if let Some(i) = cached {
            return Ok(i);
        }
        let h = match side {
            Side::Node => self.node,
            Side::Container => self.container(a)?.handle,
        };
        let found = link_by_name(h, name, side)
            .await
            .map_err(|e| ApplyError::MissingLink {
                action: format!("{a} ({e})"),
                name: name.to_string(),
            })?
            .ok_or_else(|| ApplyError::MissingLink {
                action: a.to_string(),
                name: name.to_string(),
            })?;
        match side {
            Side::Node => self.host_index = Some(found.index),
            Side::Container => self.eth0_index = Some(found.index),
        }
        Ok(found.index)
    }

    async fn apply(&mut self, a: &Action) -> Result<(), ApplyError> {
        match a {
            Action::DeleteHostLink { index, .. } => {
                self.host_index = None;
                super::unlink::delete_link(self.node, self.home, *index)
                    .await
                    .map_err(|source| ApplyError::Netlink {
                        action: a.to_string(),
                        source,
                    })
            }
            Action::DeleteContainerLink { index } => {
                let mut m = LinkMessage::default();
                m.header.index = *index;
                self.eth0_index = None;
                let h = self.container(a)?.handle;
                self.send(h, a, RouteNetlinkMessage::DelLink(m), CHANGE)
                    .await
            }
            Action::CreateVeth {
                host,
                container_mac,
            } => {
                let ns = self.container(a)?.ns;
                let mut peer = LinkMessage::default();
                peer.attributes
                    .push(LinkAttribute::IfName(CONTAINER_IFNAME.to_string()));
                peer.attributes
                    .push(LinkAttribute::Address(container_mac.to_vec()));
                peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(host.clone()));
                m.attributes.push(LinkAttribute::Address(HOST_MAC.to_vec()));
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Veth),
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
                ]));
                self.host_index = None;
                self.eth0_index = None;
                // NLM_F_ECHO: the kernel sends us the new link's
                // announcement (index, MAC as made), built anyway for its
                // listeners. A get of a host veth costs a walk of every
                // namespace id the node has given out (one per container:
                // the peer's IFLA_LINK_NETNSID), so the echo saves one.
                let answers = request(
                    self.node,
                    RouteNetlinkMessage::NewLink(m),
                    CREATE | NLM_F_ECHO,
                )
                .await
                .map_err(|source| ApplyError::Netlink {
                    action: a.to_string(),
                    source,
                })?;
                let echoed = answers.iter().find_map(|m| match m {
                    RouteNetlinkMessage::NewLink(l) => {
                        Some(link_facts(l)).filter(|f| f.name == *host)
                    }
                    _ => None,
                });
                let link = match echoed {
                    Some(l) => l,
                    // A kernel that does not echo (before Linux 6.2):
                    // read it back.
                    None => link_by_name(self.node, host, Side::Node)
                        .await
                        .ok()
                        .flatten()
                        .ok_or_else(|| ApplyError::MissingLink {
                            action: a.to_string(),
                            name: host.clone(),
                        })?,
                };
                // The kernel may not honour the MAC given at creation.
                self.host_index = Some(link.index);
                if link.mac.as_deref() != Some(&HOST_MAC[..]) {
                    let fix = Action::SetHostMac { host: host.clone() };
                    Box::pin(self.apply(&fix)).await?;
                }
                Ok(())
            }
            Action::SetHostMac { host } => {
                let index = self.index_of(Side::Node, host, a).await?;
                let mut m = LinkMessage::default();
                m.header.index = index;
                m.attributes.push(LinkAttribute::Address(HOST_MAC.to_vec()));
                self.send(self.node, a, RouteNetlinkMessage::SetLink(m), CHANGE)
                    .await
            }
            Action::ConfigureHostLink { host } => {
                let index = self.index_of(Side::Node, host, a).await?;
                let mut m = LinkMessage::default();
                m.header.index = index;
                m.attributes
                    .push(LinkAttribute::IfAlias(crate::OWNER_ALIAS.to_string()));
                m.attributes
                    .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                        vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                    )]));
                self.send(self.node, a, RouteNetlinkMessage::SetLink(m), CHANGE)
                    .await
            }
            Action::SetSysctl {
                side,
                ifname,
                sysctl: Sysctl::AddrGenMode,
                value,
            } => {
                let index = self.index_of(*side, ifname, a).await?;
                let mut m = LinkMessage::default();
                m.header.index = index;
                let mode = In6AddrGenMode::from(u8::try_from(*value).unwrap_or(u8::MAX));
                m.attributes
                    .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                        vec![AfSpecInet6::AddrGenMode(mode)],
                    )]));
                let h = match side {
                    Side::Node => self.node,
                    Side::Container => self.container(a)?.handle,
                };
                self.send(h, a, RouteNetlinkMessage::SetLink(m), CHANGE)
                    .await
            }
            Action::SetSysctl {
                side,
                ifname,
                sysctl,
                value,
            } => {
                let value = value.to_string();
                let res = match side {
                    // Opened in the node namespace: they stay its own.
                    Side::Node => self.sysctls.write(ifname, *sysctl, &value),
                    Side::Container => {
                        let c = self.container(a)?;
                        let path = format!("/proc/sys/{}", sysctl.path(ifname));
                        c.visitor
                            .run_in(c.ns, c.label, move || std::fs::write(&path, value))
                            .await
                            .map_err(|source| ApplyError::Namespace {
                                action: a.to_string(),
                                source,
                            })?
                    }
                };
                res.map_err(|source| ApplyError::Sysctl {
                    action: a.to_string(),
                    source,
                })
            }
            Action::DeleteHostAddress {
                host,
                addr,
                prefix_len,
            } => {
                let index = self.index_of(Side::Node, host, a).await?;
                let m = address_message(index, IpAddr::V6(*addr), *prefix_len);
                self.send(self.node, a, RouteNetlinkMessage::DelAddress(m), CHANGE)
                    .await
            }
            Action::SetLinkUp { side, ifname } => {
                let mut m = LinkMessage::default();
                if ifname == LOOPBACK {
                    // Every namespace has it: named in the request (index
                    // 0), so no lookup of its index goes first.
                    m.attributes.push(LinkAttribute::IfName(ifname.clone()));
                } else {
                    m.header.index = self.index_of(*side, ifname, a).await?;
                }
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
                let h = match side {
                    Side::Node => self.node,
                    Side::Container => self.container(a)?.handle,
                };
                self.send(h, a, RouteNetlinkMessage::SetLink(m), CHANGE)
                    .await
            }
            Action::DeleteContainerAddress { addr, prefix_len } => {
                let index = self.index_of(Side::Container, CONTAINER_IFNAME, a).await?;
                let m = address_message(index, *addr, *prefix_len);
                let h = self.container(a)?.handle;
                self.send(h, a, RouteNetlinkMessage::DelAddress(m), CHANGE)
                    .await
            }
            Action::AddContainerAddress { addr } => {
                let index = self.index_of(Side::Container, CONTAINER_IFNAME, a).await?;
                let mut m = address_message(index, *addr, full_prefix(*addr));
                if addr.is_ipv6() {
                    m.header.flags = AddressHeaderFlags::Nodad;
                }
                let h = self.container(a)?.handle;
                self.send(h, a, RouteNetlinkMessage::NewAddress(m), REPLACE)
                    .await
            }
            Action::ReplaceContainerRoute(r) => {
                let index = self.index_of(Side::Container, CONTAINER_IFNAME, a).await?;
                let m = container_route(*r, index);
                let h = self.container(a)?.handle;
                self.send(h, a, RouteNetlinkMessage::NewRoute(m), REPLACE)
                    .await
            }
            Action::ReplaceContainerNeighbour(n) => {
                let index = self.index_of(Side::Container, CONTAINER_IFNAME, a).await?;
                let m = permanent_neighbour(index, n.ip(), &HOST_MAC);
                let h = self.container(a)?.handle;
                self.send(h, a, RouteNetlinkMessage::NewNeighbour(m), REPLACE)
                    .await
            }
            Action::ReplaceHostNeighbour { host, neighbour } => {
                let index = self.index_of(Side::Node, host, a).await?;
                let m = permanent_neighbour(index, neighbour.addr, &neighbour.lladdr);
                self.send(self.node, a, RouteNetlinkMessage::NewNeighbour(m), REPLACE)
                    .await
            }
            Action::ReplaceHostRoute { dst, host } => {
                let index = self.index_of(Side::Node, host, a).await?;
                let m = host_route(*dst, full_prefix(*dst), MAIN_TABLE, index);
                self.send(self.node, a, RouteNetlinkMessage::NewRoute(m), REPLACE)
                    .await
            }
            Action::DeleteHostRoute {
                dst,
                prefix_len,
                table,
                oif,
            } => {
                let m = host_route(*dst, *prefix_len, *table, *oif);
                self.send(self.node, a, RouteNetlinkMessage::DelRoute(m), CHANGE)
                    .await
            }
            Action::DropHostMulticastRoute { host } => {
                let index = self.index_of(Side::Node, host, a).await?;
                match request(self.node, kernel_multicast_route(index), CHANGE).await {
                    // Not made (IPv6 off, or no carrier yet): nothing to drop.
                    Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
                    res => res.map(drop).map_err(|source| ApplyError::Netlink {
                        action: a.to_string(),
                        source,
                    }),
                }
            }
        }
    }
}

fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(addr);
    m.header.prefix_len = prefix_len;
    m.header.index = index;
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    m
}

/// A permanent neighbour entry: `ip` on interface `index` is `lladdr`.
fn permanent_neighbour(index: u32, ip: IpAddr, lladdr: &[u8]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(ip);
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(ip.into()));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(lladdr.to_vec()));
    m
}

fn route_header(m: &mut RouteMessage, dst: IpAddr, prefix_len: u8, table: u32, scope: RouteScope) {
    m.header.address_family = family(dst);
    m.header.destination_prefix_length = prefix_len;
    if table < 256 {
        m.header.table = table as u8;
    } else {
        m.header.table = RouteHeader::RT_TABLE_UNSPEC;
        m.attributes.push(RouteAttribute::Table(table));
    }
    m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    m.header.scope = scope;
    m.header.kind = RouteType::Unicast;
}

/// Our host route for `dst` through interface `oif`.
fn host_route(dst: IpAddr, prefix_len: u8, table: u32, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    route_header(&mut m, dst, prefix_len, table, RouteScope::Link);
    m.attributes.push(RouteAttribute::Destination(dst.into()));
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}

/// The kernel's local routing table (`RT_TABLE_LOCAL`).
const LOCAL_TABLE: u8 = 255;

/// The delete of the kernel's own `ff00::/8` route through interface
/// `oif`, in the local table: protocol 0 and no type, so it matches the
/// route whatever the kernel tagged it with.
fn kernel_multicast_route(oif: u32) -> RouteNetlinkMessage {
    let multicast = IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0));
    let mut m = RouteMessage::default();
    m.header.address_family = family(multicast);
    m.header.destination_prefix_length = 8;
    m.header.table = LOCAL_TABLE;
    m.attributes
        .push(RouteAttribute::Destination(multicast.into()));
    m.attributes.push(RouteAttribute::Oif(oif));
    RouteNetlinkMessage::DelRoute(m)
}

/// One of the container's dataplane routes through eth0 (`oif`).
fn container_route(r: ContainerRoute, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    match r {
        ContainerRoute::GatewayV4 => {
            let dst = IpAddr::V4(GATEWAY_V4);
            route_header(&mut m, dst, 32, MAIN_TABLE, RouteScope::Link);
            m.attributes.push(RouteAttribute::Destination(dst.into()));
        }
        ContainerRoute::DefaultV4 => {
            let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            route_header(&mut m, any, 0, MAIN_TABLE, RouteScope::Universe);
            m.attributes
                .push(RouteAttribute::Gateway(IpAddr::V4(GATEWAY_V4).into()));
        }
        ContainerRoute::DefaultV6 => {
            let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
            route_header(&mut m, any, 0, MAIN_TABLE, RouteScope::Universe);
            m.attributes
                .push(RouteAttribute::Gateway(IpAddr::V6(GATEWAY_V6).into()));
        }
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    m
}
