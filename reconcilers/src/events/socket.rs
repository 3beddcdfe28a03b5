//! The event socket: one netlink multicast subscription to link,
//! neighbour, address and route changes, made in the calling thread's namespace (the node's),
//! read with `recvmsg` so that, with `NETLINK_LISTEN_ALL_NSID`, each
//! datagram comes with the id of the namespace it happened in.
//!
//! Owns: its one socket. It never enters another namespace: the kernel
//! delivers the events of every namespace that has an id in ours.

use super::filter;
use super::parse::{kernel_events, source_nsid};
use super::{Event, KernelEvent};
use crate::nl::{container_port_id, NlError};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The bit of multicast group `group` (an RTNLGRP_* number) in the legacy
/// group mask of bind(2).
const fn group_bit(group: u32) -> u32 {
    1 << (group - 1)
}
const GROUP_LINK: u32 = group_bit(1);
const GROUP_NEIGH: u32 = group_bit(3);
const GROUP_IPV4_IFADDR: u32 = group_bit(5);
const GROUP_IPV4_ROUTE: u32 = group_bit(7);
const GROUP_IPV6_IFADDR: u32 = group_bit(9);
const GROUP_IPV6_ROUTE: u32 = group_bit(11);
/// A generous receive buffer: a burst of events (1,000 veths made at boot,
/// each with events on both sides when every namespace is listened to)
/// must not overrun it; the periodic resync covers what is lost anyway.
const RX_BUFFER: usize = 16 << 20;
/// One datagram: the kernel's multicast messages are at most a page or
/// two (`NLMSG_GOODSIZE`); a bigger one is cut, and reported as lost.
const DATAGRAM: usize = 64 << 10;
/// Room for the control messages of one datagram (the nsid, an i32, and
/// slack for any other the kernel adds).
const CONTROL: usize = 128;

/// A subscription to link, address and route events: of the calling
/// thread's namespace only ([`Events::node`]), or of it and every
/// namespace that has an id in it ([`Events::all_namespaces`]). Dropping
/// it closes the socket.
#[derive(Debug)]
pub struct Events {
    socket: AsyncFd<Socket>,
    datagram: Vec<u8>,
    control: Vec<u8>,
    pending: VecDeque<Event>,
}

fn open(all_namespaces: bool) -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(
        0,
        GROUP_LINK
            | GROUP_NEIGH
            | GROUP_IPV4_IFADDR
            | GROUP_IPV4_ROUTE
            | GROUP_IPV6_IFADDR
            | GROUP_IPV6_ROUTE,
    ))?;
    s.set_rx_buf_sz(RX_BUFFER)?;
    if all_namespaces {
        s.set_listen_all_namespaces(true)?;
        filter::attach(s.as_raw_fd(), &filter::program(container_port_id()))?;
    }
    s.set_non_blocking(true)?;
    Ok(s)
}

impl Events {
    /// Events of the calling thread's namespace only (must run inside a
    /// tokio runtime).
    pub fn node() -> Result<Events, NlError> {
        Self::subscribe(false)
    }

    /// Events of the calling thread's namespace and of every namespace
    /// that has an id in it (`NETLINK_LISTEN_ALL_NSID`), each tagged with
    /// that id (must run inside a tokio runtime). A container's namespace
    /// has one once a veth joins it to ours (see
    /// [`crate::endpoint::Ensured::container_nsid`]). Never delivered
    /// (dropped in the kernel, see [`super::filter`]): the echoes of this
    /// process's changes inside containers (requester
    /// [`container_port_id`]) and the kernel's own routes, anywhere.
    pub fn all_namespaces() -> Result<Events, NlError> {
        Self::subscribe(true)
    }

    fn subscribe(all_namespaces: bool) -> Result<Events, NlError> {
        let socket = open(all_namespaces).map_err(|source| NlError::Socket { source })?;
        // SAFETY: the Socket owns its fd and keeps it open, unchanged, for
        // as long as the AsyncFd owns the Socket.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| NlError::Socket { source: e.into() })?;
        Ok(Events {
            socket,
            datagram: vec![0; DATAGRAM],
            control: vec![0; CONTROL],
            pending: VecDeque::new(),
        })
    }

    /// The next event; `None` when the subscription ended (the socket
    /// failed).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            let Events {
                socket,
                datagram,
                control,
                pending,
            } = self;
            let received = socket
                .async_io(Interest::READABLE, |s| {
                    receive(s.as_raw_fd(), datagram, control)
                })
                .await;
            match received {
                Ok(Received {
                    len,
                    control_len,
                    truncated,
                }) => {
                    let nsid = source_nsid(&control[..control_len]);
                    if truncated {
                        // Part of the datagram is lost: say so.
                        pending.push_back(Event {
                            nsid: None,
                            requester: 0,
                            kind: KernelEvent::Overrun,
                        });
                    }
                    pending.extend(kernel_events(&datagram[..len]).into_iter().map(
                        |(requester, kind)| Event {
                            nsid,
                            requester,
                            kind,
                        },
                    ));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Some(Event {
                        nsid: None,
                        requester: 0,
                        kind: KernelEvent::Overrun,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!(error = %e, "kernel event socket failed");
                    return None;
                }
            }
        }
    }
}

/// What one `recvmsg` filled.
struct Received {
    len: usize,
    control_len: usize,
    /// The datagram or its control messages did not fit.
    truncated: bool,
}

/// One `recvmsg` on `fd` (non-blocking): the datagram into `datagram`,
/// its control messages into `control`.
fn receive(fd: i32, datagram: &mut [u8], control: &mut [u8]) -> std::io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: datagram.as_mut_ptr().cast(),
        iov_len: datagram.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name, no data" header.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control.as_mut_ptr().cast();
    mh.msg_controllen = control.len() as _;
    // SAFETY: `mh` points at one iovec over `datagram` and at `control`,
    // both live and writable for their whole lengths during the call; the
    // kernel writes no more than those lengths.
    let n = unsafe { libc::recvmsg(fd, &mut mh, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let truncated = mh.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    Ok(Received {
        len: (n as usize).min(datagram.len()),
        control_len: (mh.msg_controllen as usize).min(control.len()),
        truncated,
    })
}
