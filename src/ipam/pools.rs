//! Pool operations on the store: add, list, remove, and the defaults made
//! on first use.

use super::{with_retries, Block, IpPool, IpamError};
use crate::store::{self, keys, Commit, Store, Txn, Versioned};
use ipnet::IpNet;

/// Calico's default pools, created by the first allocation when no pool
/// is configured at all.
pub const DEFAULT_POOLS: [&str; 2] = ["192.168.0.0/16", "fd80:24e2:f998:72d6::/64"];

/// Every pool with its revision, in key order.
pub fn list_pools(store: &dyn Store) -> Result<Vec<Versioned<IpPool>>, IpamError> {
    Ok(store::list_json(store, keys::POOLS)?)
}

/// Add a pool; refused when it overlaps an existing one.
pub fn add_pool(store: &dyn Store, pool: &IpPool) -> Result<(), IpamError> {
    with_retries(|| {
        let key = keys::pool(&pool.cidr);
        let mut txn = Txn::default();
        for existing in list_pools(store)? {
            let other = existing.value.cidr;
            if other.contains(&pool.cidr.network()) || pool.cidr.contains(&other.network()) {
                return Err(IpamError::PoolOverlap {
                    new: pool.cidr,
                    existing: other,
                });
            }
        }
        txn.compare(key.clone(), 0);
        txn.put_json(key, pool);
        commit(store, &txn)
    })
}

/// Calico's default pools, not yet stored (revision 0).
pub(super) fn default_pools() -> Vec<Versioned<IpPool>> {
    DEFAULT_POOLS
        .iter()
        .map(|cidr| Versioned {
            value: IpPool::new(cidr.parse().expect("default pools parse"), None)
                .expect("default pools are valid"),
            mod_revision: 0,
        })
        .collect()
}

/// Remove a pool and its (empty) blocks; refused while any address is held.
pub fn remove_pool(store: &dyn Store, cidr: &IpNet) -> Result<(), IpamError> {
    with_retries(|| {
        let key = keys::pool(cidr);
        let pool = store::get_json::<IpPool>(store, &key)?.ok_or(IpamError::PoolNotFound(*cidr))?;
        let mut txn = Txn::default();
        txn.compare(key.clone(), pool.mod_revision);
        txn.delete(key);
        let mut in_use = 0;
        for block in store::list_json::<Block>(store, keys::BLOCKS)? {
            if block.value.pool != *cidr {
                continue;
            }
            in_use += block.value.allocations.len();
            let block_key = keys::block(&block.value.cidr);
            txn.compare(block_key.clone(), block.mod_revision);
            txn.delete(block_key);
            if let Some(node) = &block.value.affinity {
                txn.delete(keys::free_block(node, &block.value.cidr));
            }
        }
        if in_use > 0 {
            return Err(IpamError::PoolInUse {
                cidr: *cidr,
                in_use,
            });
        }
        commit(store, &txn)
    })
}

/// Commit, turning a failed guard into a retryable conflict.
pub(super) fn commit(store: &dyn Store, txn: &Txn) -> Result<(), IpamError> {
    match store.commit(txn)? {
        Commit::Done(_) => Ok(()),
        Commit::Conflict => Err(IpamError::Conflict),
    }
}
