//! Kernel side of calico-mesos: observe, plan and apply the dataplane.
//!
//! Each module owns one kind of dataplane object and is handed the desired
//! state as plain data (no store, no Mesos types). Planning is pure and
//! tested without root; applying is thin netlink and tested in network
//! namespaces.

pub mod endpoint;
pub mod events;
pub mod fabric;
pub mod netns;
mod nl;
pub mod node;
pub mod policy;

pub use netns::{NetnsError, NetnsRef};
pub use nl::NlError;

/// The route protocol number that tags every route we make (`ip route ...
/// proto 81`). Calico's Felix uses 80; ours differs so that both can be told
/// apart on one host. Routes with another protocol are never ours.
pub const ROUTE_PROTOCOL: u8 = 81;

/// Every host-side interface we make starts with this.
pub const HOST_IFNAME_PREFIX: &str = "cali";

/// The link group ([`IFLA_GROUP`], `ip link show` prints it) that stray
/// host veths are moved into just before one `RTM_DELLINK` for the group
/// deletes them all in one unregister batch
/// ([`endpoint::EndpointDataplane::delete_host_links`]). Our links live in
/// the default group 0 otherwise; no other software on the node may use
/// this number (like [`ROUTE_PROTOCOL`], it is ours).
///
/// [`IFLA_GROUP`]: https://man7.org/linux/man-pages/man8/ip-link.8.html
pub const DOOMED_LINK_GROUP: u32 = 0x636d_646c;

/// The interface alias (`ip link show` prints it) set on every host-side
/// veth we bring up: how the resync tells our links from anyone else's
/// `cali*` links (Calico's Felix names its veths the same way).
pub const OWNER_ALIAS: &str = "calico-mesos";
