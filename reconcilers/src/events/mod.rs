//! Kernel events: one netlink multicast subscription (links, neighbours,
//! addresses, routes) in the node's namespace that also hears every container's
//! namespace, each event tagged with the id the node has for the namespace
//! it happened in; and the exit of a container's process (a pidfd). The
//! daemon turns them into the keys of the endpoints to re-check; this
//! module only reports what changed, and where.
//!
//! - `parse`: netlink bytes and control messages into [`KernelEvent`]s
//!   and namespace ids (pure);
//! - `socket`: the subscription itself ([`Events`]);
//! - `exit`: a process's exit ([`ProcessExit`]).

mod exit;
mod filter;
mod parse;
mod socket;

pub use crate::nl::container_port_id;
pub use exit::ProcessExit;
pub use socket::Events;

use crate::endpoint::LinkFacts;
use std::net::IpAddr;

/// Something changed in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link appeared, changed or went.
    Link {
        /// What the message says of it (its name and index among them).
        facts: LinkFacts,
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
    /// may have changed unseen, in any namespace listened to.
    Overrun,
    /// A neighbour entry appeared, changed state or went.
    Neighbour {
        /// The link's index.
        index: u32,
        /// The entry's address (`None` if the message carried none).
        address: Option<IpAddr>,
        /// True when it was deleted.
        deleted: bool,
    },
    /// An address was added to or removed from a link.
    Address {
        /// The link's index.
        index: u32,
        /// The address (`None` if the message carried none).
        address: Option<IpAddr>,
        /// True when it was removed.
        deleted: bool,
    },
}

/// One event and where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The id the subscribing namespace has for the namespace the event
    /// happened in; `None` for the subscribing namespace itself (and for
    /// [`KernelEvent::Overrun`], which concerns the socket).
    pub nsid: Option<i32>,
    /// The port id of the netlink socket whose request made the change
    /// (`nlmsg_pid`), unique among the open sockets of the namespace the
    /// event happened in; 0 when the kernel made it on its own (and for
    /// [`KernelEvent::Overrun`]). A subscriber tells its own changes'
    /// echoes apart by it (see [`container_port_id`]).
    pub requester: u32,
    /// What changed.
    pub kind: KernelEvent,
}
