//! An address block: a power-of-two slice of a pool, claimed by one node
//! (affinity), holding which of its addresses belong to which handle.
//! Pure data and arithmetic; no store access.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A block of addresses, stored at `block/<cidr>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block's own CIDR (e.g. 198.18.0.64/26).
    pub cidr: IpNet,
    /// The pool it was carved from.
    pub pool: IpNet,
    /// The node that claimed it and allocates from it first.
    pub affinity: Option<String>,
    /// Allocated addresses: offset in the block → handle (the uid).
    #[serde(default)]
    pub allocations: BTreeMap<u32, String>,
}

impl Block {
    /// A new, empty block claimed by `node`.
    pub fn claimed(cidr: IpNet, pool: IpNet, node: &str) -> Self {
        Block {
            cidr,
            pool,
            affinity: Some(node.to_string()),
            allocations: BTreeMap::new(),
        }
    }

    /// How many addresses the block has.
    pub fn size(&self) -> u32 {
        1u32 << (self.cidr.max_prefix_len() - self.cidr.prefix_len())
    }

    /// How many addresses are free.
    pub fn free(&self) -> u32 {
        self.size() - self.allocations.len() as u32
    }

    /// True when every address is allocated.
    pub fn is_full(&self) -> bool {
        self.free() == 0
    }

    /// The address at `offset` from the start of the block.
    pub fn addr_at(&self, offset: u32) -> IpAddr {
        match self.cidr {
            IpNet::V4(net) => IpAddr::V4(Ipv4Addr::from(
                u32::from(net.network()).wrapping_add(offset),
            )),
            IpNet::V6(net) => IpAddr::V6(Ipv6Addr::from(
                u128::from(net.network()).wrapping_add(u128::from(offset)),
            )),
        }
    }

    /// The offset of `addr` in the block, if it is inside.
    pub fn offset_of(&self, addr: IpAddr) -> Option<u32> {
        if !self.cidr.contains(&addr) {
            return None;
        }
        match (self.cidr, addr) {
            (IpNet::V4(net), IpAddr::V4(a)) => Some(u32::from(a) - u32::from(net.network())),
            (IpNet::V6(net), IpAddr::V6(a)) => {
                Some((u128::from(a) - u128::from(net.network())) as u32)
            }
            _ => None,
        }
    }

    /// Who holds `addr`, if anyone.
    pub fn holder(&self, addr: IpAddr) -> Option<&str> {
        self.offset_of(addr)
            .and_then(|o| self.allocations.get(&o))
            .map(String::as_str)
    }

    /// Allocate the lowest free address to `handle`.
    pub fn allocate_next(&mut self, handle: &str) -> Option<IpAddr> {
        let offset = (0..self.size()).find(|o| !self.allocations.contains_key(o))?;
        self.allocations.insert(offset, handle.to_string());
        Some(self.addr_at(offset))
    }

    /// Record `addr` as held by `handle` (the caller checked it is free).
    pub fn assign(&mut self, addr: IpAddr, handle: &str) {
        if let Some(offset) = self.offset_of(addr) {
            self.allocations.insert(offset, handle.to_string());
        }
    }

    /// Free `addr`; returns the handle that held it.
    pub fn release(&mut self, addr: IpAddr) -> Option<String> {
        self.offset_of(addr)
            .and_then(|o| self.allocations.remove(&o))
    }

    /// Every allocated address with its handle.
    pub fn allocated(&self) -> impl Iterator<Item = (IpAddr, &str)> + '_ {
        self.allocations
            .iter()
            .map(|(o, h)| (self.addr_at(*o), h.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str) -> Block {
        let cidr: IpNet = cidr.parse().unwrap();
        Block::claimed(cidr, cidr.supernet().unwrap(), "node-1")
    }

    #[test]
    fn fills_lowest_first_and_reports_full() {
        let mut b = block("198.18.0.0/30");
        assert_eq!(b.size(), 4);
        let got: Vec<_> = (0..4).map(|_| b.allocate_next("h").unwrap()).collect();
        assert_eq!(got[0], "198.18.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(got[3], "198.18.0.3".parse::<IpAddr>().unwrap());
        assert!(b.is_full());
        assert_eq!(b.allocate_next("h"), None);
        assert_eq!(b.release(got[1]).as_deref(), Some("h"));
        assert_eq!(b.allocate_next("x"), Some(got[1]));
    }

    #[test]
    fn ipv6_offsets() {
        let mut b = block("2001:db8:1::40/122");
        assert_eq!(b.size(), 64);
        let a = b.allocate_next("h").unwrap();
        assert_eq!(a, "2001:db8:1::40".parse::<IpAddr>().unwrap());
        assert_eq!(b.offset_of("2001:db8:1::7f".parse().unwrap()), Some(63));
        assert_eq!(b.offset_of("2001:db8:1::80".parse().unwrap()), None);
        assert_eq!(b.holder(a), Some("h"));
    }
}
