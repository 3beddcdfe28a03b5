//! IP pools: the ranges blocks are carved from. Pure validation and
//! arithmetic; the store operations live in [`super::pools`].

use super::IpamError;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Default IPv4 block size (64 addresses), as in Calico.
pub const DEFAULT_V4_BLOCK_SIZE: u8 = 26;
/// Default IPv6 block size (64 addresses), as in Calico.
pub const DEFAULT_V6_BLOCK_SIZE: u8 = 122;
/// The largest block holds 4,096 addresses, so a block stays a small record.
const MAX_BLOCK_BITS: u8 = 12;

/// An IP pool, stored at `pool/<cidr>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpPool {
    /// The pool's range.
    pub cidr: IpNet,
    /// Prefix length of the blocks carved from it.
    pub block_size: u8,
    /// A disabled pool hands out no new addresses; existing ones stay.
    #[serde(default)]
    pub disabled: bool,
}

impl IpPool {
    /// A checked pool: `cidr` must be a network address, and the block size
    /// must fit inside it and hold at most 4,096 addresses.
    pub fn new(cidr: IpNet, block_size: Option<u8>) -> Result<Self, IpamError> {
        let bad = |why: String| IpamError::BadPool(format!("{cidr}: {why}"));
        if cidr.trunc() != cidr {
            return Err(bad(format!(
                "not a network address (did you mean {}?)",
                cidr.trunc()
            )));
        }
        let max = cidr.max_prefix_len();
        let block_size = block_size.unwrap_or(match cidr {
            IpNet::V4(_) => DEFAULT_V4_BLOCK_SIZE,
            IpNet::V6(_) => DEFAULT_V6_BLOCK_SIZE,
        });
        if block_size > max {
            return Err(bad(format!(
                "block size /{block_size} is longer than /{max}"
            )));
        }
        if max - block_size > MAX_BLOCK_BITS {
            return Err(bad(format!(
                "block size /{block_size} is too large (at most {} addresses per block: /{} or longer)",
                1u32 << MAX_BLOCK_BITS,
                max - MAX_BLOCK_BITS
            )));
        }
        if block_size < cidr.prefix_len() {
            return Err(bad(format!(
                "block size /{block_size} is larger than the pool itself"
            )));
        }
        Ok(IpPool {
            cidr,
            block_size,
            disabled: false,
        })
    }

    /// True for an IPv4 pool.
    pub fn is_v4(&self) -> bool {
        matches!(self.cidr, IpNet::V4(_))
    }

    /// The block of this pool that holds `addr`.
    pub fn block_of(&self, addr: IpAddr) -> IpNet {
        IpNet::new(addr, self.block_size)
            .expect("block size was checked against the family")
            .trunc()
    }

    /// Every block of the pool, in address order (lazy; IPv6 pools are huge).
    pub fn blocks(&self) -> impl Iterator<Item = IpNet> {
        self.cidr
            .subnets(self.block_size)
            .expect("block size was checked against the pool")
    }

    /// Number of addresses in the pool.
    pub fn size(&self) -> u128 {
        1u128 << (self.cidr.max_prefix_len() - self.cidr.prefix_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_calico() {
        let p = IpPool::new("198.18.0.0/16".parse().unwrap(), None).unwrap();
        assert_eq!(p.block_size, 26);
        let p = IpPool::new("2001:db8:1::/64".parse().unwrap(), None).unwrap();
        assert_eq!(p.block_size, 122);
    }

    #[test]
    fn rejects_bad_pools_with_reason() {
        let err = IpPool::new("198.18.0.1/16".parse().unwrap(), None).unwrap_err();
        assert!(
            err.to_string().contains("did you mean 198.18.0.0/16"),
            "{err}"
        );
        let err = IpPool::new("198.18.0.0/16".parse().unwrap(), Some(19)).unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        let err = IpPool::new("198.18.0.0/28".parse().unwrap(), Some(26)).unwrap_err();
        assert!(err.to_string().contains("larger than the pool"), "{err}");
        assert!(IpPool::new("198.18.0.0/24".parse().unwrap(), Some(33)).is_err());
    }

    #[test]
    fn block_of_truncates() {
        let p = IpPool::new("198.18.0.0/16".parse().unwrap(), None).unwrap();
        assert_eq!(
            p.block_of("198.18.1.77".parse().unwrap()).to_string(),
            "198.18.1.64/26"
        );
        assert_eq!(p.blocks().nth(2).unwrap().to_string(), "198.18.0.128/26");
    }
}
