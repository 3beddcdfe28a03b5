//! A draft of one IPAM change: it reads blocks and handles through the
//! store, remembers the revision of everything it read, lets the caller
//! change them in memory, and turns the result into one guarded
//! transaction. A conflict means someone else wrote first: re-run.

use super::{Block, Handle, IpPool, IpamError};
use crate::store::{self, keys, Revision, Store, Txn};
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Clone)]
struct Entry<T> {
    value: Option<T>,
    revision: Revision,
    /// Whether a block was full when read (drives the free-block index).
    was_full: bool,
    dirty: bool,
}

/// Blocks and handles read for one change, and their edits.
#[derive(Clone)]
pub(super) struct Draft<'a> {
    store: &'a dyn Store,
    blocks: BTreeMap<String, Entry<Block>>,
    handles: BTreeMap<String, Entry<Handle>>,
    guards: Vec<(String, Revision)>,
    new_pools: Vec<IpPool>,
    /// Free-block index keys of blocks removed in this draft.
    removed_index: Vec<String>,
}

impl<'a> Draft<'a> {
    pub(super) fn new(store: &'a dyn Store) -> Self {
        Draft {
            store,
            blocks: BTreeMap::new(),
            handles: BTreeMap::new(),
            guards: Vec::new(),
            new_pools: Vec::new(),
            removed_index: Vec::new(),
        }
    }

    /// Create a pool (guarded as absent) in the same transaction.
    pub(super) fn create_pool(&mut self, pool: &IpPool) {
        let key = keys::pool(&pool.cidr);
        self.guards.push((key.clone(), 0));
        self.new_pools.push(pool.clone());
    }

    /// Also require `key` to be unchanged at `revision` when committing.
    pub(super) fn guard(&mut self, key: String, revision: Revision) {
        self.guards.push((key, revision));
    }

    /// The block at `key`, read once per draft.
    pub(super) fn block(&mut self, key: &str) -> Result<Option<&mut Block>, IpamError> {
        if !self.blocks.contains_key(key) {
            let read = store::get_json::<Block>(self.store, key)?;
            let (value, revision) = match read {
                Some(v) => (Some(v.value), v.mod_revision),
                None => (None, 0),
            };
            let was_full = value.as_ref().is_some_and(Block::is_full);
            self.blocks.insert(
                key.to_string(),
                Entry {
                    value,
                    revision,
                    was_full,
                    dirty: false,
                },
            );
        }
        let entry = self.blocks.get_mut(key).expect("just inserted");
        Ok(entry.value.as_mut())
    }

    /// Keys of blocks read or claimed in this draft that are affine to
    /// `node` and of one family.
    pub(super) fn affine_blocks(&self, node: &str, v4: bool) -> Vec<String> {
        self.blocks
            .iter()
            .filter(|(_, e)| {
                e.value.as_ref().is_some_and(|b| {
                    b.affinity.as_deref() == Some(node) && b.cidr.network().is_ipv4() == v4
                })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Mark the block at `key` changed.
    pub(super) fn touch_block(&mut self, key: &str) {
        if let Some(entry) = self.blocks.get_mut(key) {
            entry.dirty = true;
        }
    }

    /// Delete the block at `key` (read through [`Draft::block`] first) and
    /// its free-block index entry.
    pub(super) fn remove_block(&mut self, key: &str) {
        if let Some(entry) = self.blocks.get_mut(key) {
            if let Some(block) = entry.value.take() {
                if let Some(node) = &block.affinity {
                    self.removed_index.push(keys::free_block(node, &block.cidr));
                }
                entry.dirty = true;
            }
        }
    }

    /// Create a block claimed by `node` at a key that was read as absent.
    pub(super) fn claim_block(&mut self, pool: &IpPool, cidr: ipnet::IpNet, node: &str) -> String {
        let key = keys::block(&cidr);
        self.blocks.insert(
            key.clone(),
            Entry {
                value: Some(Block::claimed(cidr, pool.cidr, node)),
                revision: 0,
                was_full: false,
                dirty: true,
            },
        );
        key
    }

    /// The handle of `uid` (created empty if absent), marked changed.
    pub(super) fn handle(&mut self, uid: &str) -> Result<&mut Handle, IpamError> {
        let entry = self.handle_entry(uid)?;
        entry.dirty = true;
        Ok(entry.value.as_mut().expect("handles are always present"))
    }

    /// The modification revision of `uid`'s handle as this draft read it
    /// (0: absent); the commit is guarded on it.
    pub(super) fn handle_revision(&mut self, uid: &str) -> Result<Revision, IpamError> {
        Ok(self.handle_entry(uid)?.revision)
    }

    fn handle_entry(&mut self, uid: &str) -> Result<&mut Entry<Handle>, IpamError> {
        let key = keys::handle(uid);
        if !self.handles.contains_key(&key) {
            let read = store::get_json::<Handle>(self.store, &key)?;
            let revision = read.as_ref().map_or(0, |v| v.mod_revision);
            let value = read.map(|v| v.value).unwrap_or_else(|| Handle::new(uid));
            self.handles.insert(
                key.clone(),
                Entry {
                    value: Some(value),
                    revision,
                    was_full: false,
                    dirty: false,
                },
            );
        }
        Ok(self.handles.get_mut(&key).expect("just inserted"))
    }

    /// Record `addr` as allocated to `uid` in the block at `block_key`.
    pub(super) fn record(
        &mut self,
        block_key: &str,
        addr: IpAddr,
        uid: &str,
    ) -> Result<(), IpamError> {
        if let Some(block) = self.block(block_key)? {
            block.assign(addr, uid);
        }
        self.touch_block(block_key);
        let handle = self.handle(uid)?;
        handle.addresses.insert(addr);
        handle.allocated_ms = Some(crate::endpoint::now_ms());
        Ok(())
    }

    /// Free `addr` in the block at `block_key`, and drop it from its handle.
    /// Returns false when it was not allocated.
    pub(super) fn free(&mut self, block_key: &str, addr: IpAddr) -> Result<bool, IpamError> {
        let Some(holder) = self.block(block_key)?.and_then(|b| b.release(addr)) else {
            return Ok(false);
        };
        self.touch_block(block_key);
        self.handle(&holder)?.addresses.remove(&addr);
        Ok(true)
    }

    /// The guarded transaction that makes every edit, with the free-block
    /// index kept in step with the blocks.
    pub(super) fn into_txn(self) -> Txn {
        let mut txn = Txn::default();
        for (key, revision) in self.guards {
            txn.compare(key, revision);
        }
        for pool in &self.new_pools {
            txn.put_json(keys::pool(&pool.cidr), pool);
        }
        for index in self.removed_index {
            txn.delete(index);
        }
        for (key, entry) in self.blocks {
            txn.compare(key.clone(), entry.revision);
            let (true, Some(block)) = (entry.dirty, entry.value) else {
                if entry.dirty && entry.revision != 0 {
                    txn.delete(key); // removed by `remove_block`
                }
                continue;
            };
            if let Some(node) = &block.affinity {
                let index = keys::free_block(node, &block.cidr);
                let created = entry.revision == 0;
                if block.is_full() && (created || !entry.was_full) {
                    txn.delete(index);
                } else if !block.is_full() && (created || entry.was_full) {
                    txn.put(index, Vec::new());
                }
            }
            txn.put_json(key, &block);
        }
        for (key, entry) in self.handles {
            txn.compare(key.clone(), entry.revision);
            let (true, Some(handle)) = (entry.dirty, entry.value) else {
                continue;
            };
            if handle.addresses.is_empty() {
                if entry.revision != 0 {
                    txn.delete(key);
                }
            } else {
                txn.put_json(key, &handle);
            }
        }
        txn
    }
}
