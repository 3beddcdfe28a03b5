//! Kernel events: netlink multicast subscriptions (links, addresses,
//! routes) in the node's namespace or inside a container's, and the exit
//! of a container's process (a pidfd). The daemon turns them into the keys
//! of the endpoints to re-check; this module only reports what changed.

use crate::endpoint::observe::{link_facts, route_facts};
use crate::netns::{open_container, NetnsError, NetnsRef};
use crate::nl::NlError;
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr, TokioSocket};
use std::net::IpAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// Something changed in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link appeared, changed or went.
    Link {
        /// Its name.
        name: String,
        /// Its index.
        index: u32,
        /// True when it was deleted.
        deleted: bool,
    },
    /// A route appeared, changed or went.
    Route {
        /// Destination.
        dst: IpAddr,
        /// Destination prefix length.
        prefix_len: u8,
        /// Route protocol.
        protocol: u8,
        /// Output interface.
        oif: Option<u32>,
        /// True when it was deleted.
        deleted: bool,
    },
    /// The kernel dropped events (the socket's buffer overran): anything
    /// may have changed unseen.
    Overrun,
    /// An address was added to or removed from a link.
    Address {
        /// The link's index.
        index: u32,
        /// True when it was removed.
        deleted: bool,
    },
}

/// The bit of multicast group `group` (an RTNLGRP_* number) in the legacy
/// group mask of bind(2).
const fn group_bit(group: u32) -> u32 {
    1 << (group - 1)
}
const GROUP_LINK: u32 = group_bit(1);
const GROUP_IPV4_IFADDR: u32 = group_bit(5);
const GROUP_IPV4_ROUTE: u32 = group_bit(7);
const GROUP_IPV6_IFADDR: u32 = group_bit(9);
const GROUP_IPV6_ROUTE: u32 = group_bit(11);
/// A generous receive buffer: a burst of events (1,000 veths made at boot)
/// must not overrun it; the periodic resync covers what is lost anyway.
const RX_BUFFER: usize = 8 << 20;

fn event_socket() -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(
        0,
        GROUP_LINK | GROUP_IPV4_IFADDR | GROUP_IPV4_ROUTE | GROUP_IPV6_IFADDR | GROUP_IPV6_ROUTE,
    ))?;
    s.set_rx_buf_sz(RX_BUFFER)?;
    Ok(s)
}

/// A subscription to one namespace's link, address and route events.
/// Dropping it closes the socket.
#[derive(Debug)]
pub struct Events {
    task: tokio::task::JoinHandle<()>,
    rx: futures::channel::mpsc::UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        SocketAddr,
    )>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn subscribe(sock: Socket) -> Events {
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` was just released by a valid netlink socket; ownership
    // passes to the TokioSocket exactly once, inside a tokio runtime.
    let tokio_sock = unsafe { TokioSocket::from_raw_fd(fd) };
    let (conn, _handle, rx) = rtnetlink::from_socket(tokio_sock);
    Events {
        task: tokio::spawn(conn),
        rx,
    }
}

impl Events {
    /// Events of the calling thread's namespace (the node's).
    pub fn node() -> Result<Events, NlError> {
        Ok(subscribe(
            event_socket().map_err(|source| NlError::Socket { source })?,
        ))
    }

    /// Events inside a container's namespace, the socket made there by
    /// `visitor`. Note: the socket holds a reference to the namespace, so
    /// drop the subscription once the container is gone.
    pub async fn container(
        visitor: &crate::netns::NsVisitor,
        ns: &NetnsRef,
    ) -> Result<Events, NetnsError> {
        let file = open_container(ns)?;
        let label = format!("pid {}", ns.pid);
        let sock = visitor
            .run_in(&file, &label, event_socket)
            .await?
            .map_err(|source| NetnsError::Spawn {
                label: format!("events of pid {}", ns.pid),
                source,
            })?;
        Ok(subscribe(sock))
    }

    /// The next event; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<KernelEvent> {
        loop {
            let (msg, _) = self.rx.next().await?;
            let inner = match msg.payload {
                NetlinkPayload::InnerMessage(inner) => inner,
                NetlinkPayload::Overrun(_) => return Some(KernelEvent::Overrun),
                _ => continue,
            };
            let event = match inner {
                RouteNetlinkMessage::NewLink(l) => link_event(&l, false),
                RouteNetlinkMessage::DelLink(l) => link_event(&l, true),
                RouteNetlinkMessage::NewRoute(r) => match route_event(&r, false) {
                    Some(e) => e,
                    None => continue,
                },
                RouteNetlinkMessage::DelRoute(r) => match route_event(&r, true) {
                    Some(e) => e,
                    None => continue,
                },
                RouteNetlinkMessage::NewAddress(a) => KernelEvent::Address {
                    index: a.header.index,
                    deleted: false,
                },
                RouteNetlinkMessage::DelAddress(a) => KernelEvent::Address {
                    index: a.header.index,
                    deleted: true,
                },
                _ => continue,
            };
            return Some(event);
        }
    }
}

fn link_event(l: &netlink_packet_route::link::LinkMessage, deleted: bool) -> KernelEvent {
    let f = link_facts(l);
    KernelEvent::Link {
        name: f.name,
        index: f.index,
        deleted,
    }
}

fn route_event(
    r: &netlink_packet_route::route::RouteMessage,
    deleted: bool,
) -> Option<KernelEvent> {
    let f = route_facts(r)?;
    Some(KernelEvent::Route {
        dst: f.dst,
        prefix_len: f.prefix_len,
        protocol: f.protocol,
        oif: f.oif,
        deleted,
    })
}

/// Readable once the process exits (Linux `pidfd_open`).
#[derive(Debug)]
pub struct ProcessExit {
    fd: AsyncFd<OwnedFd>,
}

impl ProcessExit {
    /// Watches `pid`; fails if it does not exist.
    pub fn watch(pid: u32) -> std::io::Result<ProcessExit> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_open,
                pid as libc::pid_t,
                libc::PIDFD_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: an OwnedFd keeps its fd open and unchanged for as long as
        // the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(ProcessExit { fd })
    }

    /// Waits until the process has exited.
    pub async fn exited(&self) {
        // A pidfd becomes readable when the process exits, and stays so.
        let _ = self.fd.readable().await.map(|mut g| g.retain_ready());
    }
}
