//! What `calico-mesos ipam show` reports: usage per pool and blocks per node.

use super::{list_pools, Block, IpamError};
use crate::store::{self, keys, Store};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;

/// Usage of one pool.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolUsage {
    /// The pool.
    pub cidr: IpNet,
    /// Its block size.
    pub block_size: u8,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Addresses in the pool.
    pub size: u128,
    /// Addresses held.
    pub used: u128,
    /// Addresses not held.
    pub free: u128,
    /// Blocks claimed from it.
    pub blocks: usize,
}

/// One claimed block.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BlockUsage {
    /// The block.
    pub cidr: IpNet,
    /// Addresses held in it.
    pub used: u32,
    /// Addresses in it.
    pub size: u32,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Per pool, in key order.
    pub pools: Vec<PoolUsage>,
    /// Per node (affinity), its blocks; unclaimed blocks under "".
    pub nodes: BTreeMap<String, Vec<BlockUsage>>,
}

/// Read the store and summarise address usage.
pub fn usage(store: &dyn Store) -> Result<Usage, IpamError> {
    let blocks = store::list_json::<Block>(store, keys::BLOCKS)?;
    let mut pools: Vec<PoolUsage> = list_pools(store)?
        .into_iter()
        .map(|p| PoolUsage {
            cidr: p.value.cidr,
            block_size: p.value.block_size,
            disabled: p.value.disabled,
            size: p.value.size(),
            used: 0,
            free: p.value.size(),
            blocks: 0,
        })
        .collect();
    let mut nodes: BTreeMap<String, Vec<BlockUsage>> = BTreeMap::new();
    for block in blocks.into_iter().map(|b| b.value) {
        let used = block.allocations.len() as u32;
        if let Some(pool) = pools.iter_mut().find(|p| p.cidr == block.pool) {
            pool.used += u128::from(used);
            pool.free -= u128::from(used);
            pool.blocks += 1;
        }
        nodes
            .entry(block.affinity.clone().unwrap_or_default())
            .or_default()
            .push(BlockUsage {
                cidr: block.cidr,
                used,
                size: block.size(),
            });
    }
    Ok(Usage { pools, nodes })
}
