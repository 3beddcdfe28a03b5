//! The node loop's own status (`loop/<node>`): which process runs it and
//! when it last finished reconciling every endpoint. `status` uses it to
//! tell an operator whether a daemon is at work and how fresh things are;
//! endpoint statuses are written only when they change.

use crate::store::{self, keys, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};

/// What the loop last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopStatus {
    /// `daemon` or `reconcile`.
    pub mode: String,
    /// The process that wrote it.
    pub pid: u32,
    /// When that process started its loop (ms since the epoch).
    pub started_ms: u64,
    /// When it last finished a pass over every endpoint (ms since the epoch).
    pub last_full_pass_ms: Option<u64>,
    /// How many endpoints that pass covered.
    pub endpoints: usize,
    /// How many of them failed.
    pub failed: usize,
}

/// Reads a node's loop status.
pub fn get(store: &dyn Store, node: &str) -> Result<Option<LoopStatus>, StoreError> {
    Ok(store::get_json(store, &keys::loop_status(node))?.map(|v| v.value))
}

/// Writes a node's loop status.
pub fn put(store: &dyn Store, node: &str, status: &LoopStatus) -> Result<(), StoreError> {
    let mut txn = Txn::default();
    txn.put_json(keys::loop_status(node), status);
    store.commit(&txn).map(drop)
}
