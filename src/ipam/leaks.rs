//! Addresses allocated and never used. net-modules releases a uid's
//! addresses only when it cleans up a container it knows; an agent that
//! restarts between allocate and isolate (or a launch that fails without
//! its cleanup) leaves a handle no endpoint will ever use. A handle none of
//! whose addresses an endpoint accounts for, long after its last
//! allocation, is such a leak, and is released.
//!
//! Each node collects the leaks whose addresses are all in its own blocks,
//! so every leak has one collector. The release is guarded on the handle's
//! revision: a handle allocated again since it was found is left alone.

use super::assign::release_handle_at;
use super::{Block, Handle, IpamError};
use crate::store::{self, keys, Revision, Store, Versioned};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;

/// What the endpoints of the cluster use: their addresses, and the uids
/// they recorded as holding them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InUse {
    /// Every address of every endpoint.
    pub addresses: HashSet<IpAddr>,
    /// Every uid an endpoint recorded as the holder of one of them.
    pub uids: HashSet<String>,
}

/// A handle found leaked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// Its uid.
    pub uid: String,
    /// The addresses it holds.
    pub addresses: BTreeSet<IpAddr>,
    /// How long ago it was last allocated.
    pub age: Duration,
    /// Its revision when found (the release is guarded on it).
    pub(super) revision: Revision,
}

/// The handles that are leaks, as seen by `node`'s collector: not empty,
/// allocated at least `grace` before `now_ms` (handles without that time
/// are never collected), every address in a block affine to `node`, and
/// none used by an endpoint. Pure.
pub fn find_leaks(
    handles: &[Versioned<Handle>],
    blocks: &[Block],
    in_use: &InUse,
    node: &str,
    now_ms: u64,
    grace: Duration,
) -> Vec<Leak> {
    let collects = |addr: &IpAddr| {
        blocks
            .iter()
            .any(|b| b.cidr.contains(addr) && b.affinity.as_deref() == Some(node))
    };
    handles
        .iter()
        .filter_map(|versioned| {
            let handle = &versioned.value;
            let age = Duration::from_millis(now_ms.saturating_sub(handle.allocated_ms?));
            let leaked = age >= grace
                && !handle.addresses.is_empty()
                && handle.addresses.iter().all(collects)
                && !in_use.uids.contains(&handle.uid)
                && !handle
                    .addresses
                    .iter()
                    .any(|a| in_use.addresses.contains(a));
            leaked.then(|| Leak {
                uid: handle.uid.clone(),
                addresses: handle.addresses.clone(),
                age,
                revision: versioned.mod_revision,
            })
        })
        .collect()
}

/// Finds the leaks `node` collects (see [`find_leaks`]) and, unless
/// `dry_run`, releases each, unless it changed since it was found. Returns
/// the leaks found (released, or that would be).
pub fn collect_leaks(
    store: &dyn Store,
    node: &str,
    in_use: &InUse,
    grace: Duration,
    dry_run: bool,
) -> Result<Vec<Leak>, IpamError> {
    let handles = store::list_json::<Handle>(store, keys::HANDLES)?;
    let blocks: Vec<Block> = store::list_json::<Block>(store, keys::BLOCKS)?
        .into_iter()
        .map(|v| v.value)
        .collect();
    let leaks = find_leaks(
        &handles,
        &blocks,
        in_use,
        node,
        crate::endpoint::now_ms(),
        grace,
    );
    if dry_run {
        return Ok(leaks);
    }
    let mut released = Vec::with_capacity(leaks.len());
    for leak in leaks {
        if release_handle_at(store, &leak.uid, Some(leak.revision))?.is_some() {
            released.push(leak);
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn handle(uid: &str, addrs: &[&str], allocated_ms: Option<u64>) -> Versioned<Handle> {
        Versioned {
            value: Handle {
                uid: uid.into(),
                addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                allocated_ms,
            },
            mod_revision: 7,
        }
    }

    fn block(cidr: &str, node: Option<&str>) -> Block {
        let mut b = Block::claimed(cidr.parse().unwrap(), "198.18.0.0/16".parse().unwrap(), "x");
        b.affinity = node.map(str::to_string);
        b
    }

    fn uids(leaks: &[Leak]) -> Vec<&str> {
        leaks.iter().map(|l| l.uid.as_str()).collect()
    }

    #[test]
    fn only_old_unused_handles_in_this_nodes_blocks_are_leaks() {
        let blocks = [
            block("198.18.0.0/26", Some("n1")),
            block("198.18.0.64/26", Some("n2")),
            block("198.18.0.128/26", None),
        ];
        let now = 100 * MIN;
        let old = Some(now - 11 * MIN);
        let handles = [
            handle("leaked", &["198.18.0.1"], old),
            handle("young", &["198.18.0.2"], Some(now - MIN)),
            handle("no-time", &["198.18.0.3"], None),
            handle("empty", &[], old),
            handle("used-address", &["198.18.0.4"], old),
            handle("used-uid", &["198.18.0.5"], old),
            handle("other-node", &["198.18.0.65"], old),
            handle("no-affinity", &["198.18.0.129"], old),
            handle("partly-here", &["198.18.0.6", "198.18.0.66"], old),
            handle("no-block", &["198.18.9.1"], old),
            handle("leaked-two", &["198.18.0.7", "198.18.0.8"], old),
        ];
        let in_use = InUse {
            addresses: ["198.18.0.4".parse().unwrap()].into(),
            uids: ["used-uid".to_string()].into(),
        };
        let grace = Duration::from_secs(600);
        let leaks = find_leaks(&handles, &blocks, &in_use, "n1", now, grace);
        assert_eq!(uids(&leaks), ["leaked", "leaked-two"]);
        assert_eq!(leaks[0].age, Duration::from_secs(660));
        // Node 2 collects its own.
        let theirs = find_leaks(&handles, &blocks, &in_use, "n2", now, grace);
        assert_eq!(uids(&theirs), ["other-node"]);
        // With no grace at all, the young one too.
        let all = find_leaks(&handles, &blocks, &in_use, "n1", now, Duration::ZERO);
        assert_eq!(uids(&all), ["leaked", "young", "leaked-two"]);
    }
}
