//! Endpoints: the intent "this container on this node has these addresses
//! and netgroups", and the status the reconcile loop reports back.
//!
//! Intent (`endpoint/<node>/<container>`) is written only by front ends;
//! status (`status/<node>/<container>`) only by the loop. Keeping them apart
//! means a status write never conflicts with, nor wakes, an intent write.
//! This module owns both records and the protocol-free API front ends call;
//! it knows nothing of net-modules or the kernel.

use crate::store::{self, keys, Commit, Store, StoreError, Txn, Versioned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Identity of a container's network namespace: a pid inside it and the
/// namespace's inode, so a reused pid is never mistaken for the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsId {
    /// A process inside the namespace.
    pub pid: u32,
    /// Inode of `/proc/<pid>/ns/net` when the intent was recorded.
    pub inode: u64,
}

impl NetnsId {
    /// Read the namespace identity of `pid` from `/proc`.
    pub fn of_pid(pid: u32) -> std::io::Result<NetnsId> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(format!("/proc/{pid}/ns/net"))?;
        Ok(NetnsId {
            pid,
            inode: meta.ino(),
        })
    }

    /// True while the pid still lives in the same namespace.
    pub fn is_alive(&self) -> bool {
        NetnsId::of_pid(self.pid).is_ok_and(|now| now.inode == self.inode)
    }
}

/// The desired state of one container's networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The node the container runs on.
    pub node: String,
    /// The Mesos container id.
    pub container_id: String,
    /// The container's network namespace.
    pub netns: NetnsId,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its IPv6 addresses.
    pub ipv6: Vec<Ipv6Addr>,
    /// Its netgroups (`public` selects the public profile).
    pub netgroups: Vec<String>,
    /// The task's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Who held each address when the intent was recorded (the allocating
    /// uid): removal releases an address only while that uid still holds it.
    #[serde(default)]
    pub holders: BTreeMap<IpAddr, String>,
    /// Grows by one with every change of intent.
    pub generation: u64,
    /// Set by cleanup: remove everything, then the record.
    #[serde(default)]
    pub deletion_requested: bool,
}

impl Endpoint {
    /// The store key of this endpoint's intent.
    pub fn key(&self) -> String {
        keys::endpoint(&self.node, &self.container_id)
    }

    /// True when `other` asks for the same addresses (order aside).
    pub fn same_addresses(&self, ipv4: &[Ipv4Addr], ipv6: &[Ipv6Addr]) -> bool {
        let sorted4 = |v: &[Ipv4Addr]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        let sorted6 = |v: &[Ipv6Addr]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        sorted4(&self.ipv4) == sorted4(ipv4) && sorted6(&self.ipv6) == sorted6(ipv6)
    }
}

/// Where an endpoint is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Recorded, not yet reconciled.
    Pending,
    /// Interface, addresses and routes are in place.
    Ready,
    /// The last reconcile failed; `message` says why.
    Failed,
    /// Deletion requested; being removed.
    Terminating,
    /// The container's namespace is gone; collected after the grace period.
    Orphaned,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What the loop last did with an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The intent generation this status describes.
    pub observed_generation: u64,
    /// The phase.
    pub phase: Phase,
    /// The host-side interface.
    pub host_interface: String,
    /// The host-side MAC address.
    pub mac: String,
    /// Why it failed, or what happened last.
    pub message: String,
    /// When the loop last reconciled it (milliseconds since the Unix epoch).
    pub last_reconcile_ms: u64,
    /// When the namespace was first seen gone (ms since the epoch).
    #[serde(default)]
    pub orphaned_since_ms: Option<u64>,
}

/// Key of an endpoint's status.
pub fn status_key(node: &str, container_id: &str) -> String {
    format!("{}{}", status_prefix(node), keys::escape(container_id))
}

/// Prefix of one node's endpoint statuses.
pub fn status_prefix(node: &str) -> String {
    format!("status/{}/", keys::escape(node))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Errors of recording intent.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container is already configured with other addresses.
    #[error("This container has already been configured with Calico Networking.")]
    AlreadyConfigured,
    /// The container is being cleaned up.
    #[error("Container '{0}' is being cleaned up; try again when cleanup has finished.")]
    Terminating(String),
    /// Contention did not clear.
    #[error("The datastore is too busy: gave up after repeated conflicting updates. Try again.")]
    TooBusy,
}

/// What recording an isolate did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// A new generation was written.
    Written(Endpoint),
    /// The identical intent was already recorded (a repeated isolate).
    Unchanged(Endpoint),
}

impl Recorded {
    /// The endpoint as stored.
    pub fn endpoint(&self) -> &Endpoint {
        match self {
            Recorded::Written(e) | Recorded::Unchanged(e) => e,
        }
    }
}

/// Read one endpoint's intent.
pub fn get(
    store: &dyn Store,
    node: &str,
    container_id: &str,
) -> Result<Option<Versioned<Endpoint>>, StoreError> {
    store::get_json(store, &keys::endpoint(node, container_id))
}

/// Read one endpoint's status.
pub fn get_status(
    store: &dyn Store,
    node: &str,
    container_id: &str,
) -> Result<Option<EndpointStatus>, StoreError> {
    Ok(store::get_json(store, &status_key(node, container_id))?.map(|v| v.value))
}

/// Record the intent of an isolate: a new endpoint, or a new generation of
/// one whose netgroups, labels or namespace changed. The same container with
/// other addresses is refused; an identical request changes nothing.
pub fn record(store: &dyn Store, desired: Endpoint) -> Result<Recorded, EndpointError> {
    for _ in 0..100 {
        let key = desired.key();
        let current = store::get_json::<Endpoint>(store, &key)?;
        let mut next = desired.clone();
        let revision = match &current {
            None => {
                next.generation = 1;
                0
            }
            Some(existing) => {
                let existing_ep = &existing.value;
                if existing_ep.deletion_requested {
                    return Err(EndpointError::Terminating(desired.container_id.clone()));
                }
                if !existing_ep.same_addresses(&desired.ipv4, &desired.ipv6) {
                    return Err(EndpointError::AlreadyConfigured);
                }
                next.generation = existing_ep.generation;
                if *existing_ep == next {
                    return Ok(Recorded::Unchanged(next));
                }
                next.generation = existing_ep.generation + 1;
                existing.mod_revision
            }
        };
        let mut txn = Txn::default();
        txn.compare(key.clone(), revision);
        txn.put_json(key, &next);
        if let Commit::Done(_) = store.commit(&txn)? {
            return Ok(Recorded::Written(next));
        }
    }
    Err(EndpointError::TooBusy)
}

/// Mark an endpoint for deletion. Returns the endpoint (None when unknown).
pub fn request_deletion(
    store: &dyn Store,
    node: &str,
    container_id: &str,
) -> Result<Option<Endpoint>, EndpointError> {
    for _ in 0..100 {
        let Some(current) = get(store, node, container_id)? else {
            return Ok(None);
        };
        let mut next = current.value;
        if next.deletion_requested {
            return Ok(Some(next));
        }
        next.deletion_requested = true;
        next.generation += 1;
        let mut txn = Txn::default();
        txn.compare(next.key(), current.mod_revision);
        txn.put_json(next.key(), &next);
        if let Commit::Done(_) = store.commit(&txn)? {
            return Ok(Some(next));
        }
    }
    Err(EndpointError::TooBusy)
}

/// Every endpoint of a node.
pub fn list(store: &dyn Store, node: &str) -> Result<Vec<Versioned<Endpoint>>, StoreError> {
    store::list_json(store, &keys::endpoints_of(node))
}

/// Every status of a node, by container id.
pub fn list_statuses(
    store: &dyn Store,
    node: &str,
) -> Result<BTreeMap<String, EndpointStatus>, StoreError> {
    let prefix = status_prefix(node);
    Ok(store
        .list(&prefix, None)?
        .iter()
        .filter_map(|kv| {
            let status: EndpointStatus = store::decode(kv).ok()?;
            Some((kv.key[prefix.len()..].to_string(), status))
        })
        .collect())
}

/// Write a status (unconditionally: only the node's loop writes it).
pub fn write_status(
    store: &dyn Store,
    node: &str,
    container_id: &str,
    status: &EndpointStatus,
) -> Result<(), StoreError> {
    let mut txn = Txn::default();
    txn.put_json(status_key(node, container_id), status);
    store.commit(&txn).map(|_| ())
}

/// Delete an endpoint's intent (if still at `revision`) and its status.
pub fn delete(store: &dyn Store, endpoint: &Versioned<Endpoint>) -> Result<bool, StoreError> {
    Ok(matches!(
        store.commit(&deletion(endpoint))?,
        Commit::Done(_)
    ))
}

/// The transaction of [`delete`]: the record and its status go, guarded by
/// the record's revision (to be committed alone or with other writes).
pub fn deletion(endpoint: &Versioned<Endpoint>) -> Txn {
    let e = &endpoint.value;
    let mut txn = Txn::default();
    txn.compare(e.key(), endpoint.mod_revision);
    txn.delete(e.key());
    txn.delete(status_key(&e.node, &e.container_id));
    txn
}
