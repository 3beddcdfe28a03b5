//! IP address management, after Calico's: pools are cut into blocks, a node
//! claims whole blocks (affinity) and fills its own before claiming another,
//! and borrows from other nodes' blocks only when no block is left to claim.
//! Every address is held under a handle (the net-modules `uid`).
//!
//! Every change reads what it needs, edits it in a draft (`draft::Draft`), and
//! commits one transaction guarded by the revisions it read, so two writers
//! (processes, or nodes on etcd) can never hand out the same address. This
//! module owns pools, blocks and handles; it knows nothing of Mesos.

mod assign;
mod block;
mod draft;
mod leaks;
mod pool;
mod pools;
mod report;
mod retire;

pub use assign::{
    allocate, allocate_many, holders, release_addresses, release_handle, release_held,
    release_held_with, reserve, Assigned, Request,
};
pub use block::Block;
pub use leaks::{collect_leaks, find_leaks, InUse, Leak};
pub use pool::{IpPool, DEFAULT_V4_BLOCK_SIZE, DEFAULT_V6_BLOCK_SIZE};
pub use pools::{add_pool, list_pools, remove_pool, DEFAULT_POOLS};
pub use report::{usage, BlockUsage, PoolUsage, Usage};
pub use retire::{retire_node_blocks, Retired};

use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The addresses held under one uid, stored at `handle/<uid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// The uid net-modules chose for the allocation.
    pub uid: String,
    /// Every address held under it.
    pub addresses: BTreeSet<IpAddr>,
    /// When an address was last added to it (ms since the Unix epoch);
    /// `None` in handles written before this was recorded. A handle that
    /// no endpoint uses long after this is a leak ([`collect_leaks`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_ms: Option<u64>,
}

impl Handle {
    /// An empty handle.
    pub fn new(uid: &str) -> Self {
        Handle {
            uid: uid.to_string(),
            addresses: BTreeSet::new(),
            allocated_ms: None,
        }
    }
}

/// The name of an address family, as operators read it.
pub fn family_name(v4: bool) -> &'static str {
    if v4 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Errors of IPAM.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The address is held by another uid.
    #[error("IP '{0}' already in use.")]
    InUse(IpAddr),
    /// The address is in no configured pool.
    #[error("IP '{0}' is not in any configured IP pool.")]
    NoPool(IpAddr),
    /// The pools of a family cannot supply what was asked.
    #[error("Not enough free {family} addresses: asked for {asked}, only {available} available in the {family} pools.")]
    Exhausted {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// How many were asked for.
        asked: u32,
        /// How many could have been assigned.
        available: u32,
    },
    /// Another writer changed what this change read; it is retried.
    #[error("the datastore changed under this request; retry")]
    Conflict,
    /// Contention did not clear within the retry budget.
    #[error("The datastore is too busy: gave up after repeated conflicting updates. Try again.")]
    TooBusy,
    /// A pool definition is invalid.
    #[error("invalid pool {0}")]
    BadPool(String),
    /// A new pool overlaps an existing one.
    #[error("pool {new} overlaps the existing pool {existing}")]
    PoolOverlap {
        /// The pool being added.
        new: ipnet::IpNet,
        /// The pool it overlaps.
        existing: ipnet::IpNet,
    },
    /// No pool with that CIDR.
    #[error("no pool {0}")]
    PoolNotFound(ipnet::IpNet),
    /// A pool cannot be removed while its addresses are held.
    #[error("pool {cidr} still has {in_use} addresses in use; release them first")]
    PoolInUse {
        /// The pool.
        cidr: ipnet::IpNet,
        /// How many of its addresses are held.
        in_use: usize,
    },
}

impl IpamError {
    /// Whether the error is about what the request asked (it fails that
    /// request alone), not about the store or contention.
    pub fn is_about_the_request(&self) -> bool {
        matches!(
            self,
            IpamError::InUse(_) | IpamError::NoPool(_) | IpamError::Exhausted { .. }
        )
    }
}

/// Run a draft-and-commit attempt until it does not conflict, with jittered
/// exponential backoff; gives up with [`IpamError::TooBusy`].
pub(crate) fn with_retries<T>(
    mut attempt: impl FnMut() -> Result<T, IpamError>,
) -> Result<T, IpamError> {
    use backon::{BlockingRetryable, ExponentialBuilder};
    let policy = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_micros(200))
        .with_max_delay(std::time::Duration::from_millis(20))
        .with_jitter()
        .with_max_times(500);
    match (|| attempt())
        .retry(policy)
        .when(|e| matches!(e, IpamError::Conflict))
        .notify(|_, pause| {
            tracing::debug!(
                pause_us = pause.as_micros() as u64,
                "store conflict (another writer changed what was read); retrying"
            )
        })
        .call()
    {
        Err(IpamError::Conflict) => Err(IpamError::TooBusy),
        other => other,
    }
}

#[cfg(test)]
mod tests;
// The same tests again, against etcd (the backend follows the module name).
#[cfg(test)]
#[path = "tests.rs"]
#[allow(clippy::duplicate_mod)]
mod tests_etcd;
// And against etcd read through the daemon's replica of it.
#[cfg(test)]
#[path = "tests.rs"]
#[allow(clippy::duplicate_mod)]
mod tests_mirror;
