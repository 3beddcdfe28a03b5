//! Retiring a node's blocks when an operator removes the node: every
//! address in a block affine to it is released (whoever holds it) and the
//! block is deleted, so other nodes can claim it again.

use super::draft::Draft;
use super::pools::commit;
use super::{with_retries, Block, IpamError};
use crate::store::{self, keys, Store};
use ipnet::IpNet;
use std::net::IpAddr;

/// What [`retire_node_blocks`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The deleted blocks.
    pub blocks: Vec<IpNet>,
    /// The addresses that were still allocated in them, now released.
    pub released: Vec<IpAddr>,
}

/// Release every address in the blocks affine to `node` and delete those
/// blocks. One transaction per block (etcd caps the operations of one
/// transaction), each guarded like every IPAM change.
pub fn retire_node_blocks(store: &dyn Store, node: &str) -> Result<Retired, IpamError> {
    let mut retired = Retired::default();
    for block in store::list_json::<Block>(store, keys::BLOCKS)? {
        if block.value.affinity.as_deref() != Some(node) {
            continue;
        }
        let key = keys::block(&block.value.cidr);
        let released = with_retries(|| {
            let mut draft = Draft::new(store);
            let Some(current) = draft.block(&key)? else {
                return Ok(None); // deleted meanwhile
            };
            if current.affinity.as_deref() != Some(node) {
                return Ok(None);
            }
            let held: Vec<IpAddr> = current.allocated().map(|(addr, _)| addr).collect();
            for &addr in &held {
                draft.free(&key, addr)?;
            }
            draft.remove_block(&key);
            commit(store, &draft.into_txn())?;
            Ok(Some(held))
        })?;
        if let Some(held) = released {
            retired.blocks.push(block.value.cidr);
            retired.released.extend(held);
        }
    }
    Ok(retired)
}
