//! Which kernel events are the echoes of the daemon's own changes. Every
//! change a reconcile makes comes back on the node's event socket, tagged
//! with the port id of the socket that asked for it; the reconcile that
//! made it has already read the result back, so the echo needs no second
//! look. Anything else (a change by another process, or by the kernel on
//! its own) is worth one.
//!
//! Pure: the daemon learns its sockets' port ids once and asks here.

use super::nsids::Origin;

/// The port ids the daemon's own changes carry.
#[derive(Debug, Clone, Default)]
pub struct OwnRequests {
    /// The sockets in the node's namespace that change the kernel (the
    /// endpoints' node side, the fabric's routes).
    node: Vec<u32>,
    /// The port id of every socket the daemon opens inside a container's
    /// namespace (see `reconcilers::events::container_port_id`).
    container: u32,
}

impl OwnRequests {
    /// The daemon's node sockets' port ids and the one its container
    /// sockets are bound to.
    pub fn new(node: impl IntoIterator<Item = u32>, container: u32) -> Self {
        OwnRequests {
            node: node.into_iter().filter(|&p| p != 0).collect(),
            container,
        }
    }

    /// True when an event that happened at `origin` at the request of the
    /// socket with port id `requester` (0: the kernel itself) is the echo
    /// of one of our own changes.
    pub fn made(&self, origin: &Origin, requester: u32) -> bool {
        if requester == 0 {
            return false;
        }
        match origin {
            Origin::Node => self.node.contains(&requester),
            Origin::Container(_) => requester == self.container,
            Origin::Unknown(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_sockets_echoes_are_told_from_everyone_elses() {
        let ours = OwnRequests::new([4242, 17], 0x8000_1234);
        let container = Origin::Container("c1".into());
        // Our node sockets, in the node.
        assert!(ours.made(&Origin::Node, 4242));
        assert!(ours.made(&Origin::Node, 17));
        // Our container port, inside a container.
        assert!(ours.made(&container, 0x8000_1234));
        // Port ids are per namespace: the same number elsewhere is not us.
        assert!(!ours.made(&container, 4242));
        assert!(!ours.made(&Origin::Node, 0x8000_1234));
        assert!(!ours.made(&Origin::Unknown(3), 4242));
        // Another process, and the kernel on its own, are never us.
        assert!(!ours.made(&Origin::Node, 999));
        assert!(!ours.made(&container, 999));
        assert!(!ours.made(&Origin::Node, 0));
        assert!(!OwnRequests::new([0], 0).made(&Origin::Node, 0));
    }
}
