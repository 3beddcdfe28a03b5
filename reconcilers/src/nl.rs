//! The thin netlink layer: one rtnetlink connection per namespace, and
//! request helpers that turn kernel answers into values or errno errors.

use crate::netns::{NetnsError, NsVisitor};
use futures::StreamExt;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr, TokioSocket};
use rtnetlink::Handle;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

/// Failures of one netlink request.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// The kernel refused the request.
    #[error("kernel answered: {error}")]
    Kernel {
        /// The errno, as an I/O error (its message names it; not a
        /// `#[source]`, so chains do not repeat it).
        error: std::io::Error,
    },
    /// The connection is closed: the request could not be sent.
    #[error("netlink connection closed")]
    Closed,
    /// The kernel did not do what was asked within the time allowed.
    #[error("timed out after {after:?} waiting for {what}")]
    TimedOut {
        /// What was waited for.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
    /// A netlink socket could not be created or configured.
    #[error("cannot create a netlink socket")]
    Socket {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The namespace the socket was to be created in could not be used.
    #[error("cannot create a netlink socket in the namespace")]
    Namespace {
        /// The error.
        #[source]
        source: NetnsError,
    },
}

impl NlError {
    /// The kernel's errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { error } => error.raw_os_error(),
            _ => None,
        }
    }
}

/// An rtnetlink connection bound to one namespace (the one it was created
/// in); the background task is stopped when this is dropped.
#[derive(Debug)]
pub(crate) struct Conn {
    handle: Handle,
    /// The kernel runs one dump per socket at a time (a second one gets
    /// EBUSY): dumps take turns, other requests go concurrently.
    dump_turn: tokio::sync::Mutex<()>,
    /// The socket's port id in its namespace (see [`port_id`]).
    port_id: u32,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The port id this process binds its sockets in container namespaces to:
/// chosen at random, once, from the range the kernel's own autobind falls
/// back to (negative as an `i32`, below -4096), so that no other process's
/// socket there is likely to have it. The kernel stamps it on every
/// notification of a change our requests make (`nlmsg_pid`), which lets
/// the daemon tell its own changes' echoes from anyone else's. (The node's
/// sockets keep the port id the kernel gives them: they stay open, so it
/// is theirs alone; see [`Conn::port_id`].)
pub fn container_port_id() -> u32 {
    static PORT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // i32::MIN ..= -4097, as the kernel's autobind picks.
    *PORT.get_or_init(|| fastrand::i32(i32::MIN..=-4097) as u32)
}

/// A netlink route socket in the calling thread's namespace, bound to
/// `port` when given and free there (else to whatever the kernel picks).
pub(crate) fn new_socket(port: Option<u32>) -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    match port {
        Some(port) => match s.bind(&SocketAddr::new(port, 0)) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                tracing::debug!(
                    port,
                    "port id taken in this namespace; the kernel picks one"
                );
                s.bind_auto()?;
            }
            other => other?,
        },
        None => {
            s.bind_auto()?;
        }
    }
    // Strict checking makes the kernel filter dumps by the header fields
    // and attributes we set (table, protocol, output interface) instead of
    // silently returning everything.
    s.set_netlink_get_strict_chk(true)?;
    s.set_ext_ack(true)?;
    Ok(s)
}

fn wrap(sock: Socket) -> std::io::Result<Conn> {
    let mut bound = SocketAddr::new(0, 0);
    sock.get_address(&mut bound)?;
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd` of a valid netlink
    // socket, so ownership passes to the TokioSocket exactly once. We are
    // inside a tokio runtime (callers are async), as AsyncFd requires.
    let tokio_sock = unsafe { TokioSocket::from_raw_fd(fd) };
    let (conn, handle, _) = rtnetlink::from_socket(tokio_sock);
    let task = tokio::spawn(conn);
    Ok(Conn {
        handle,
        dump_turn: tokio::sync::Mutex::new(()),
        port_id: bound.port_number(),
        task,
    })
}

impl Conn {
    /// A connection in the calling thread's network namespace.
    pub fn current() -> Result<Conn, NlError> {
        new_socket(None)
            .and_then(wrap)
            .map_err(|source| NlError::Socket { source })
    }

    /// A connection in the namespace `ns` refers to, its socket made by
    /// `visitor` while inside it and bound to [`container_port_id`].
    pub async fn in_ns_via(
        visitor: &NsVisitor,
        ns: &std::fs::File,
        label: &str,
    ) -> Result<Conn, NlError> {
        let sock = visitor
            .run_in(ns, label, || new_socket(Some(container_port_id())))
            .await
            .map_err(|source| NlError::Namespace { source })?
            .map_err(|source| NlError::Socket { source })?;
        wrap(sock).map_err(|source| NlError::Socket { source })
    }

    /// The socket's port id in its namespace: the `nlmsg_pid` of the
    /// notifications of the changes made through it.
    pub fn port_id(&self) -> u32 {
        self.port_id
    }
}

/// Sends one request and collects the answers (an empty list for a plain
/// acknowledgement). A kernel error ends the request with [`NlError::Kernel`].
pub(crate) async fn request(
    conn: &Conn,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> Result<Vec<RouteNetlinkMessage>, NlError> {
    let _turn = if flags & NLM_F_DUMP != 0 {
        Some(conn.dump_turn.lock().await)
    } else {
        None
    };
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    let mut stream = conn
        .handle
        .clone()
        .request(req)
        .map_err(|_| NlError::Closed)?;
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(NlError::Kernel {
                        error: std::io::Error::from_raw_os_error(-code.get()),
                    });
                }
            }
            NetlinkPayload::Done(_) => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Every address of both families (IPv4 dump, then IPv6), or only those of
/// interface `index` when it is not 0 (the kernel filters by the index in
/// the request; the answers are checked again, as older kernels ignore it).
pub(crate) async fn dump_addresses(
    conn: &Conn,
    index: u32,
) -> Result<Vec<AddressMessage>, NlError> {
    let mut out = dump_addresses_of(conn, AddressFamily::Inet, index).await?;
    out.extend(dump_addresses_of(conn, AddressFamily::Inet6, index).await?);
    Ok(out)
}

/// The addresses of one family, of interface `index` only when it is not 0
/// (as [`dump_addresses`]).
pub(crate) async fn dump_addresses_of(
    conn: &Conn,
    family: AddressFamily,
    index: u32,
) -> Result<Vec<AddressMessage>, NlError> {
    let mut msg = AddressMessage::default();
    msg.header.family = family;
    msg.header.index = index;
    Ok(request(
        conn,
        RouteNetlinkMessage::GetAddress(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .await?
    .into_iter()
    .filter_map(|m| match m {
        RouteNetlinkMessage::NewAddress(a) if index == 0 || a.header.index == index => Some(a),
        _ => None,
    })
    .collect())
}

/// The interface's own address in an address message: IFA_LOCAL, else
/// IFA_ADDRESS (which is the peer's on point-to-point links, and the same
/// as IFA_LOCAL elsewhere).
pub(crate) fn own_address(a: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

/// The IP address a neighbour message is about (`NDA_DST`), if it has one.
pub(crate) fn neighbour_destination(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
        _ => None,
    })
}
