//! The endpoint reconciler: one container's veth pair, addresses, routes
//! and neighbour entries (DESIGN.md, "Dataplane per endpoint").
//!
//! [`EndpointDataplane::ensure`] observes (netlink, by name and filtered
//! requests only), plans ([`plan()`], pure) and applies; it then observes
//! again and fails unless nothing is left to do. [`EndpointDataplane::remove`]
//! deletes what `ensure` made and nothing else. [`EndpointDataplane::inventory`]
//! is the one full dump, for the periodic resync.

mod apply;
mod model;
mod nsid;
pub(crate) mod observe;
mod plan;
#[cfg(test)]
mod plan_tests;
mod unlink;

pub use apply::ApplyError;
pub use model::*;
pub use nsid::{HIGHEST as HIGHEST_NSID, LOWEST as LOWEST_NSID};
pub use observe::{LinkFacts, ObserveError};
pub use plan::{host_side_matches, is_pair, plan, PlanError, MAIN_TABLE};

use crate::netns::{open_container, open_current, NetnsError, NetnsRef, NsVisitor};
use crate::nl::{request, Conn, NlError};
use crate::{HOST_IFNAME_PREFIX, ROUTE_PROTOCOL};
use apply::{Applier, ContainerSide, NodeSysctls};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use sha2::{Digest, Sha256};

/// The host-side interface name of a container: `cali` and the first 11
/// hex digits of the SHA-256 of its id (15 characters, the kernel's limit;
/// never derived from user text directly).
pub fn host_ifname(container_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(container_id.as_bytes());
    // Computed for every endpoint on every policy run: no formatting
    // machinery, just the eleven nibbles.
    let mut name = String::with_capacity(15);
    name.push_str(HOST_IFNAME_PREFIX);
    for i in 0..11 {
        let byte = digest[i / 2];
        let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
        name.push(char::from(HEX[usize::from(nibble)]));
    }
    name
}

/// Why an endpoint could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The container's namespace is gone (process dead or pid reused).
    #[error("container namespace gone: {0}")]
    Gone(#[source] NetnsError),
    /// The container's namespace could not be used.
    #[error(transparent)]
    Namespace(NetnsError),
    /// A netlink connection could not be made.
    #[error(transparent)]
    Netlink(#[from] NlError),
    /// Reading the kernel failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// No safe plan exists.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An action failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The pid is in the node's own namespace: configuring it would replace
    /// the node's `eth0`. Refused, always.
    #[error("process {pid} is in the node's own network namespace, not in a container's; refusing to configure it")]
    NodeNamespace {
        /// The pid given.
        pid: u32,
    },
    /// After applying, the kernel still differs (someone changed it at the
    /// same moment, or the kernel ignored a request).
    #[error("the kernel still differs after applying: {}", describe(.remaining))]
    NotConverged {
        /// What a new plan would still do.
        remaining: Vec<Action>,
    },
}

impl EndpointError {
    /// True when the container's namespace no longer exists.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Gone(_))
    }
}

impl From<NetnsError> for EndpointError {
    fn from(e: NetnsError) -> Self {
        if e.is_gone() {
            Self::Gone(e)
        } else {
            Self::Namespace(e)
        }
    }
}

fn describe(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What [`EndpointDataplane::ensure`] did or found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured {
    /// The actions applied (or, in a dry run, that would be).
    pub actions: Vec<Action>,
    /// The host-side interface name.
    pub host_ifname: String,
    /// The container's eth0 MAC as `aa:bb:..` (unknown in a dry run that
    /// would create the pair).
    pub container_mac: Option<String>,
    /// The id the node's namespace has for the container's (`None` only
    /// in a dry run that would create the pair): how the node's one event
    /// socket ([`crate::events::Events::all_namespaces`]) names events
    /// from inside this container. Read (`RTM_GETNSID`) by the same
    /// observation that checks the pair, never assumed; the kernel gives
    /// the container's namespace one when the veth's peer is placed in it.
    pub container_nsid: Option<i32>,
    /// The endpoint's two links as the last observation read them (after
    /// the actions, when there were any).
    pub links: Links,
}

/// An endpoint's two links as one observation read them: what a watcher
/// of kernel events compares a link event with (see [`LinkFacts`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// The host side, in the node's namespace.
    pub host: Option<LinkFacts>,
    /// `eth0`, in the container's namespace.
    pub eth0: Option<LinkFacts>,
}

/// What the node has that looks like ours: for the resync, which removes
/// links and routes no endpoint accounts for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Veths whose name starts with [`HOST_IFNAME_PREFIX`] and whose alias
    /// is [`crate::OWNER_ALIAS`], by name.
    pub links: std::collections::BTreeMap<String, HostLink>,
    /// Routes with [`ROUTE_PROTOCOL`] in the main table.
    pub routes: Vec<HostRoute>,
    /// (destination, output interface) of those that are host routes.
    host_routes: std::collections::HashSet<(std::net::IpAddr, u32)>,
    /// (address, interface) of the node's permanent neighbour entries.
    neighbours: std::collections::HashSet<(std::net::IpAddr, u32)>,
}

impl Inventory {
    /// True when a host route of ours for `dst` goes through `oif`.
    pub fn has_route(&self, dst: std::net::IpAddr, oif: u32) -> bool {
        self.host_routes.contains(&(dst, oif))
    }

    /// True when interface `index` has a permanent neighbour entry for
    /// `addr`.
    pub fn has_neighbour(&self, addr: std::net::IpAddr, index: u32) -> bool {
        self.neighbours.contains(&(addr, index))
    }
}

/// The endpoint reconciler, bound to the namespace it was created in (the
/// node's). Cheap to share: one netlink connection, used concurrently.
#[derive(Debug)]
pub struct EndpointDataplane {
    node: Conn,
    /// The inode of the node's namespace: never treated as a container's.
    node_inode: u64,
    /// Whether this kernel has the per-interface IPv6 `force_forwarding`
    /// (Linux ≥ 6.17). Without it, IPv6 between containers needs the node's
    /// `net.ipv6.conf.all.forwarding=1`, which is the operator's to set.
    force_forwarding: bool,
    /// The node's namespace, home of the visitor thread.
    home: std::fs::File,
    /// The thread that enters container namespaces (made again if it
    /// ever stops).
    visitor: std::sync::Mutex<Option<std::sync::Arc<NsVisitor>>>,
    /// The node's `/proc/sys/net/{ipv4,ipv6}/conf` directories.
    sysctls: NodeSysctls,
    /// Hands new containers' namespaces their ids, downward.
    nsids: nsid::NsidGiver,
}

struct ContainerConn {
    ns: std::fs::File,
    visitor: std::sync::Arc<NsVisitor>,
    label: String,
    conn: Conn,
}

impl EndpointDataplane {
    /// Connects to the calling thread's namespace (must run in a tokio
    /// runtime). Everything on the node side happens there.
    pub fn new() -> Result<Self, NlError> {
        use std::os::unix::fs::MetadataExt;
        let node_inode = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|source| NlError::Socket { source })?
            .ino();
        let force_forwarding =
            std::path::Path::new("/proc/sys/net/ipv6/conf/all/force_forwarding").exists();
        let home = open_current().map_err(|source| NlError::Namespace { source })?;
        let visitor = NsVisitor::spawn(&home).map_err(|source| NlError::Namespace { source })?;
        let sysctls = NodeSysctls::open().map_err(|source| NlError::Socket { source })?;
        Ok(EndpointDataplane {
            node: Conn::current()?,
            node_inode,
            force_forwarding,
            home,
            visitor: std::sync::Mutex::new(Some(std::sync::Arc::new(visitor))),
            sysctls,
            nsids: nsid::NsidGiver::default(),
        })
    }

    /// The port id of the node-side netlink socket every change on the
    /// node side goes through: the requester of their notifications (see
    /// [`crate::events::Event::requester`]). Inside containers, changes
    /// go through sockets bound to [`crate::events::container_port_id`].
    pub fn node_port_id(&self) -> u32 {
        self.node.port_id()
    }

    /// The visitor thread, started again if it stopped.
    fn visitor(&self) -> Result<std::sync::Arc<NsVisitor>, NetnsError> {
        let mut v = self.visitor.lock().expect("visitor lock");
        if let Some(alive) = v.as_ref().filter(|v| v.is_alive()) {
            return Ok(alive.clone());
        }
        let fresh = std::sync::Arc::new(NsVisitor::spawn(&self.home)?);
        *v = Some(fresh.clone());
        Ok(fresh)
    }

    async fn enter(&self, ns: &NetnsRef) -> Result<ContainerConn, EndpointError> {
        if ns.inode == self.node_inode {
            return Err(EndpointError::NodeNamespace { pid: ns.pid });
        }
        let file = open_container(ns)?;
        let visitor = self.visitor()?;
        let label = format!("pid {}", ns.pid);
        let conn = Conn::in_ns_via(&visitor, &file, &label).await?;
        Ok(ContainerConn {
            ns: file,
            visitor,
            label,
            conn,
        })
    }

    async fn observe_with(
        &self,
        spec: &EndpointSpec,
        c: &ContainerConn,
    ) -> Result<(Observed, Links), EndpointError> {
        let host = host_ifname(&spec.container_id);
        let (node, (container, eth0)) = futures::try_join!(
            observe::observe_node(&self.node, &host, &c.ns, spec),
            observe::observe_container(&c.conn)
        )?;
        let ipv6_force_forwarding = self.force_forwarding;
        let links = Links {
            host: node.facts,
            eth0,
        };
        let observed = Observed {
            host: node.link,
            host_addresses: node.addresses,
            host_neighbours: node.neighbours,
            host_routes: node.routes,
            container_nsid: node.nsid,
            container,
            ipv6_force_forwarding,
        };
        Ok((observed, links))
    }

    /// The id the node's namespace has for itself, if anyone gave it one
    /// (`ip netns set` can): the node's event socket then sees its own
    /// events tagged with it, as if from a peer.
    pub async fn node_nsid(&self) -> Result<Option<i32>, EndpointError> {
        Ok(observe::nsid_of(&self.node, &self.home, std::process::id()).await?)
    }

    /// Reads the kernel for one endpoint.
    pub async fn observe(&self, spec: &EndpointSpec) -> Result<Observed, EndpointError> {
        let c = self.enter(&spec.netns).await?;
        Ok(self.observe_with(spec, &c).await?.0)
    }

    /// Makes the kernel match `spec` (with `dry_run`, only says what it
    /// would do). Fails with [`EndpointError::Gone`] when the container's
    /// namespace no longer exists.
    pub async fn ensure(
        &self,
        spec: &EndpointSpec,
        dry_run: bool,
    ) -> Result<Ensured, EndpointError> {
        let started = std::time::Instant::now();
        let c = self.enter(&spec.netns).await?;
        tracing::trace!(
            stage = "enter",
            took_us = started.elapsed().as_micros() as u64
        );
        let started = std::time::Instant::now();
        let (observed, links) = self.observe_with(spec, &c).await?;
        tracing::trace!(
            stage = "observe",
            took_us = started.elapsed().as_micros() as u64
        );
        let actions = plan(spec, &observed)?;
        let mut ensured = Ensured {
            actions,
            host_ifname: host_ifname(&spec.container_id),
            container_mac: observed
                .container
                .eth0
                .as_ref()
                .and_then(|l| l.mac.as_deref())
                .map(format_mac),
            container_nsid: observed.container_nsid,
            links,
        };
        if dry_run || ensured.actions.is_empty() {
            return Ok(ensured);
        }
        if observed.container_nsid.is_none() {
            // Before the pair: see `nsid` for why we choose the id.
            self.nsids.give(&self.node, &c.ns).await;
        }
        let side = ContainerSide {
            handle: &c.conn,
            visitor: &c.visitor,
            label: &c.label,
            ns: &c.ns,
        };
        Applier::new(&self.node, &self.home, &self.sysctls, Some(side))
            .apply_all(&ensured.actions)
            .await?;
        let started = std::time::Instant::now();
        let (after, links) = self.observe_with(spec, &c).await?;
        tracing::trace!(
            stage = "verify",
            took_us = started.elapsed().as_micros() as u64
        );
        let remaining = plan(spec, &after)?;
        if !remaining.is_empty() {
            return Err(EndpointError::NotConverged { remaining });
        }
        ensured.container_mac = after
            .container
            .eth0
            .as_ref()
            .and_then(|l| l.mac.as_deref())
            .map(format_mac);
        // A converged pair implies an id (see `is_pair`).
        ensured.container_nsid = after.container_nsid;
        ensured.links = links;
        Ok(ensured)
    }

    /// Removes the endpoint's dataplane: its host veth (the kernel deletes
    /// the peer and every route through it). A link under our name that is
    /// not a veth was not made by us and is left alone. Returns what it did
    /// (or, with `dry_run`, would do).
    pub async fn remove(
        &self,
        container_id: &str,
        dry_run: bool,
    ) -> Result<Vec<Action>, EndpointError> {
        let name = host_ifname(container_id);
        let link = observe::link_by_name(&self.node, &name, Side::Node).await?;
        let actions: Vec<Action> = match link {
            Some(l) if l.is_veth => vec![Action::DeleteHostLink {
                name,
                index: l.index,
            }],
            Some(_) => {
                tracing::warn!(link = %name, "a link that is not a veth has our name; left alone");
                vec![]
            }
            None => vec![],
        };
        if !dry_run {
            self.apply_node(&actions).await?;
        }
        Ok(actions)
    }

    /// Applies node-side actions only (deleting stray links and routes).
    /// Two or more [`Action::DeleteHostLink`] are done first, together, in
    /// one unregister batch ([`Self::delete_host_links`]); the other
    /// actions follow in order.
    pub async fn apply_node(&self, actions: &[Action]) -> Result<(), EndpointError> {
        let links: Vec<(String, u32)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteHostLink { name, index } => Some((name.clone(), *index)),
                _ => None,
            })
            .collect();
        let rest: Vec<Action> = if links.len() >= 2 {
            self.delete_host_links(&links).await?;
            actions
                .iter()
                .filter(|a| !matches!(a, Action::DeleteHostLink { .. }))
                .cloned()
                .collect()
        } else {
            actions.to_vec()
        };
        Applier::new(&self.node, &self.home, &self.sysctls, None)
            .apply_all(&rest)
            .await?;
        Ok(())
    }

    /// Deletes host links, given as (name, index), in one unregister
    /// batch: each is moved into [`crate::DOOMED_LINK_GROUP`] (one cheap
    /// request per link), then one `RTM_DELLINK` for the group deletes them
    /// all. The kernel answers a link delete only after RCU grace periods
    /// (20–40 ms at 1,000 containers); the batch waits once for all of
    /// them. A link already gone is skipped. Should the group delete
    /// fail, the links are deleted one by one.
    pub async fn delete_host_links(&self, links: &[(String, u32)]) -> Result<(), EndpointError> {
        let mut grouped = Vec::new();
        for (name, index) in links {
            let mut m = LinkMessage::default();
            m.header.index = *index;
            m.attributes
                .push(LinkAttribute::Group(crate::DOOMED_LINK_GROUP));
            match request(
                &self.node,
                RouteNetlinkMessage::SetLink(m),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
            {
                Ok(_) => grouped.push((name.clone(), *index)),
                Err(e) if e.errno() == Some(libc::ENODEV) => {}
                Err(source) => {
                    return Err(ApplyError::Netlink {
                        action: format!("move {name} (index {index}) into the doomed link group"),
                        source,
                    }
                    .into())
                }
            }
        }
        if grouped.is_empty() {
            return Ok(());
        }
        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::Group(crate::DOOMED_LINK_GROUP));
        let started = std::time::Instant::now();
        let batch = request(
            &self.node,
            RouteNetlinkMessage::DelLink(m),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await;
        tracing::trace!(
            stage = "delete links in one batch",
            links = grouped.len(),
            took_us = started.elapsed().as_micros() as u64
        );
        match batch {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "deleting the doomed link group failed; deleting one by one");
                let one_by_one: Vec<Action> = grouped
                    .into_iter()
                    .map(|(name, index)| Action::DeleteHostLink { name, index })
                    .collect();
                Applier::new(&self.node, &self.home, &self.sysctls, None)
                    .apply_all(&one_by_one)
                    .await?;
                Ok(())
            }
        }
    }

    /// Everything on the node that looks like ours (one link dump, one
    /// route dump and one neighbour dump per family): for the resync.
    pub async fn inventory(&self) -> Result<Inventory, EndpointError> {
        let h = &self.node;
        // Veths only, without counters: the kernel filters by kind.
        let mut dump = LinkMessage::default();
        dump.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        dump.attributes.push(observe::skip_stats());
        let answers = request(
            h,
            RouteNetlinkMessage::GetLink(dump),
            NLM_F_REQUEST | NLM_F_DUMP,
        )
        .await?;
        let mut inv = Inventory::default();
        for m in answers {
            if let RouteNetlinkMessage::NewLink(l) = m {
                let f = observe::link_facts(&l);
                let ours = f.alias.as_deref() == Some(crate::OWNER_ALIAS);
                if ours && f.is_veth && f.name.starts_with(HOST_IFNAME_PREFIX) {
                    let link = HostLink {
                        index: f.index,
                        is_veth: f.is_veth,
                        mac: f.mac,
                        up: f.up,
                        marked: true,
                        peer_index: f.peer_index,
                        peer_netnsid: f.peer_netnsid,
                        sysctls: f.sysctls,
                    };
                    inv.links.insert(f.name, link);
                }
            }
        }
        for v6 in [false, true] {
            let routes = observe::dump_routes(h, v6, Some(ROUTE_PROTOCOL), None).await?;
            inv.routes.extend(routes.into_iter().map(|r| HostRoute {
                dst: r.dst,
                prefix_len: r.prefix_len,
                table: r.table,
                protocol: r.protocol,
                oif: r.oif,
            }));
        }
        inv.host_routes = inv
            .routes
            .iter()
            .filter(|r| r.prefix_len == full_prefix(r.dst))
            .filter_map(|r| Some((r.dst, r.oif?)))
            .collect();
        inv.neighbours = observe::permanent_neighbours(h)
            .await?
            .into_iter()
            .collect();
        Ok(inv)
    }

    /// True when the node side of `spec` is right according to `inv` (see
    /// [`host_side_matches`]).
    pub fn host_side_matches(&self, spec: &EndpointSpec, inv: &Inventory) -> bool {
        host_side_matches(
            spec,
            inv.links.get(&host_ifname(&spec.container_id)),
            |dst, oif| inv.has_route(dst, oif),
            |addr, index| inv.has_neighbour(addr, index),
            self.force_forwarding,
        )
    }
}

#[cfg(test)]
mod name_tests {
    use super::host_ifname;

    #[test]
    fn host_ifname_is_cali_and_the_first_eleven_hex_digits_of_the_sha256() {
        // sha256("container-1") starts 20125537917… (computed elsewhere).
        assert_eq!(host_ifname("container-1"), "cali20125537917");
        assert_eq!(host_ifname("container-1").len(), 15);
        assert_ne!(host_ifname("container-2"), host_ifname("container-1"));
    }
}
