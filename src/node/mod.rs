//! Nodes of the cluster (DESIGN.md, "Node"): each daemon registers its
//! node (name and fabric addresses, the next hop other nodes route its
//! blocks through) and keeps a liveness key alive with a store lease. A node
//! whose lease expired is *down*: its blocks, endpoints and the routes to it
//! are left alone until an operator removes it ([`remove::remove_node`]).
//! This module owns the `node/` and `alive/` keys; it never touches the
//! kernel.

pub mod remove;

use crate::endpoint::now_ms;
use crate::store::{self, keys, Commit, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// How long a node stays up without renewing its lease.
pub const LIVENESS_TTL: Duration = Duration::from_secs(15);
/// How often a daemon renews its lease (a third of the TTL, so two missed
/// renewals are survived).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A registered node, stored at `node/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The node's name (`nodename`).
    pub name: String,
    /// Its fabric addresses: other nodes route its blocks via these.
    pub addresses: Vec<IpAddr>,
    /// When it first registered (ms since the epoch).
    pub registered_ms: u64,
}

/// What a live daemon keeps at `alive/<name>` under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// The daemon's pid on its node.
    pub pid: u32,
    /// When the daemon started (ms since the epoch).
    pub since_ms: u64,
    /// The calico-mesos version it runs.
    pub version: String,
}

impl Liveness {
    /// The liveness of this process, started now.
    pub fn of_this_process() -> Self {
        Liveness {
            pid: std::process::id(),
            since_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// A node as `node list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// The registered node.
    pub node: Node,
    /// Its liveness when its lease is current; `None` = down.
    pub alive: Option<Liveness>,
}

/// Record (or update) this node's name and fabric addresses. Returns true
/// when the stored record changed.
pub fn register(store: &dyn Store, name: &str, addresses: &[IpAddr]) -> Result<bool, StoreError> {
    let key = keys::node(name);
    loop {
        let current = store::get_json::<Node>(store, &key)?;
        let registered_ms = current
            .as_ref()
            .map_or_else(now_ms, |c| c.value.registered_ms);
        let wanted = Node {
            name: name.to_string(),
            addresses: addresses.to_vec(),
            registered_ms,
        };
        if current.as_ref().is_some_and(|c| c.value == wanted) {
            return Ok(false);
        }
        let mut txn = Txn::default();
        txn.compare(key.clone(), current.map_or(0, |c| c.mod_revision));
        txn.put_json(key.clone(), &wanted);
        if let Commit::Done(_) = store.commit(&txn)? {
            return Ok(true);
        }
    }
}

/// Write or renew this node's liveness under a lease of [`LIVENESS_TTL`].
pub fn renew(store: &dyn Store, name: &str, liveness: &Liveness) -> Result<(), StoreError> {
    let value = serde_json::to_vec(liveness).expect("liveness serialises");
    store.put_leased(&keys::alive(name), &value, LIVENESS_TTL)
}

/// Say this node's daemon stopped: its liveness goes now, not at expiry.
pub fn sign_off(store: &dyn Store, name: &str) -> Result<(), StoreError> {
    store.revoke_lease(&keys::alive(name))
}

/// One node's record.
pub fn get(store: &dyn Store, name: &str) -> Result<Option<Node>, StoreError> {
    Ok(store::get_json::<Node>(store, &keys::node(name))?.map(|v| v.value))
}

/// Every registered node, by name.
pub fn all(store: &dyn Store) -> Result<BTreeMap<String, Node>, StoreError> {
    Ok(store::list_json::<Node>(store, keys::NODES)?
        .into_iter()
        .map(|v| (v.value.name.clone(), v.value))
        .collect())
}

/// Every registered node with its liveness, by name.
pub fn list(store: &dyn Store) -> Result<Vec<NodeView>, StoreError> {
    let mut alive: BTreeMap<String, Liveness> = BTreeMap::new();
    for kv in store.list(keys::ALIVE, None)? {
        let liveness: Liveness = store::decode(&kv)?;
        alive.insert(kv.key, liveness);
    }
    Ok(all(store)?
        .into_values()
        .map(|node| {
            let alive = alive.remove(&keys::alive(&node.name));
            NodeView { node, alive }
        })
        .collect())
}
