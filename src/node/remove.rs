//! `node remove`: forget a node for good. Its endpoints' addresses and
//! every address in its blocks are released, its blocks deleted (other
//! nodes may claim them again), and its records (node, liveness, loop
//! status, endpoint intent and status, host profile) deleted. The other
//! nodes' daemons then drop their routes to it and its members from their
//! policy, through their store watch. The node's own kernel state is not
//! touched: it is gone, or about to be reinstalled.

use super::{get, Liveness};
use crate::endpoint;
use crate::ipam::{self, IpamError};
use crate::policy::host_profile_name;
use crate::store::{self, keys, Store, StoreError, Txn};
use ipnet::IpNet;
use std::net::IpAddr;

/// Deletions per transaction (etcd's default limit is 128 operations).
const MAX_TXN_OPS: usize = 100;

/// Errors of removing a node.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// Nothing in the store belongs to a node of that name.
    #[error("no node named '{0}' is known (see `calico-mesos node list`)")]
    Unknown(String),
    /// The node's daemon still renews its lease.
    #[error("node '{name}' is up (daemon pid {pid} renews its lease): stop its daemon first, or pass --force")]
    Up {
        /// The node.
        name: String,
        /// Its daemon's pid on that node.
        pid: u32,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Releasing addresses failed.
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// What [`remove_node`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// The node's endpoints whose records were deleted.
    pub endpoints: usize,
    /// The addresses released (its endpoints' and those left in its blocks).
    pub released: Vec<IpAddr>,
    /// Its blocks, deleted.
    pub blocks: Vec<IpNet>,
}

/// Remove node `name` from the store (see the module doc). Refuses while
/// the node is up unless `force`.
pub fn remove_node(store: &dyn Store, name: &str, force: bool) -> Result<Removed, RemoveError> {
    let alive = store::get_json::<Liveness>(store, &keys::alive(name))?;
    if let (Some(alive), false) = (&alive, force) {
        return Err(RemoveError::Up {
            name: name.to_string(),
            pid: alive.value.pid,
        });
    }
    let endpoints = endpoint::list(store, name)?;
    let owns_blocks = store::list_json::<ipam::Block>(store, keys::BLOCKS)?
        .iter()
        .any(|b| b.value.affinity.as_deref() == Some(name));
    if get(store, name)?.is_none() && alive.is_none() && endpoints.is_empty() && !owns_blocks {
        return Err(RemoveError::Unknown(name.to_string()));
    }
    let mut removed = Removed::default();
    for ep in &endpoints {
        removed
            .released
            .extend(ipam::release_held(store, &ep.value.holders)?);
        // A record changed meanwhile (its node is down, so by an operator)
        // is deleted by the prefix sweep below.
        endpoint::delete(store, ep)?;
        removed.endpoints += 1;
    }
    let retired = ipam::retire_node_blocks(store, name)?;
    removed.released.extend(retired.released);
    removed.blocks = retired.blocks;
    let mut leftovers = vec![
        keys::node(name),
        keys::alive(name),
        keys::loop_status(name),
        keys::profile(&host_profile_name(name)),
    ];
    for prefix in [
        keys::endpoints_of(name),
        endpoint::status_prefix(name),
        keys::free_blocks_of(name, true),
        keys::free_blocks_of(name, false),
    ] {
        leftovers.extend(store.list_keys(&prefix)?);
    }
    // etcd caps the operations of one transaction.
    for chunk in leftovers.chunks(MAX_TXN_OPS) {
        let mut txn = Txn::default();
        chunk.iter().for_each(|key| txn.delete(key.clone()));
        store.commit(&txn)?;
    }
    removed.released.sort();
    removed.released.dedup();
    Ok(removed)
}
