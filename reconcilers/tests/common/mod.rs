//! What the namespace tests of the reconcilers share.

use reconcilers::endpoint::EndpointSpec;
use reconcilers::NetnsRef;
use std::net::{Ipv4Addr, Ipv6Addr};
use testsupport::Container;

/// The endpoint of container `c` with id `id` and the test addresses
/// 198.18.0.`n` and 2001:db8:1::`n`.
pub fn spec(c: &Container, id: &str, n: u8) -> EndpointSpec {
    EndpointSpec {
        container_id: id.to_string(),
        netns: NetnsRef {
            pid: c.pid(),
            inode: c.inode(),
        },
        ipv4: vec![Ipv4Addr::new(198, 18, 0, n)],
        ipv6: vec![Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n as u16)],
    }
}
