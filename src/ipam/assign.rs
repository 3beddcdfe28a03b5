//! Allocate, reserve and release addresses.
//!
//! Order of preference when allocating, as in Calico: free addresses in
//! blocks this node already claimed; then a newly claimed block; then, only
//! when no pool of the family has an unclaimed block left, a free address in
//! another node's block (borrowing). All or nothing: when the request cannot
//! be met in full, nothing is written.

use super::draft::Draft;
use super::pools::{commit, default_pools, list_pools, DEFAULT_POOLS};
use super::{family_name, with_retries, IpPool, IpamError};
use crate::store::{keys, Commit, Compare, Revision, Store, Txn, Versioned};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

/// What one allocation asks for.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// The node whose blocks are used first.
    pub node: &'a str,
    /// The handle every address is held under.
    pub uid: &'a str,
    /// How many IPv4 addresses to pick.
    pub num_ipv4: u32,
    /// How many IPv6 addresses to pick.
    pub num_ipv6: u32,
    /// Exact addresses to reserve as well (they come after the picked ones).
    pub reserve: &'a [IpAddr],
    /// When no pool exists at all, create Calico's default pools in the same
    /// transaction (so a failed request leaves them uncreated too).
    pub default_pools: bool,
}

/// The addresses assigned by one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// IPv4 addresses: picked first, then reserved.
    pub ipv4: Vec<IpAddr>,
    /// IPv6 addresses: picked first, then reserved.
    pub ipv6: Vec<IpAddr>,
}

/// Allocate (and reserve) addresses under `request.uid`, all or nothing.
pub fn allocate(store: &dyn Store, request: &Request<'_>) -> Result<Assigned, IpamError> {
    allocate_many(store, std::slice::from_ref(request))?
        .pop()
        .expect("one answer per request")
}

/// Allocate for several requests in one transaction (a group commit: one
/// store round trip for all), each all or nothing: a request that cannot
/// be met answers its error and changes nothing, the others go on. One
/// answer per request, in order; the outer error (the store failed, or
/// contention did not clear) is every request's.
pub fn allocate_many(
    store: &dyn Store,
    requests: &[Request<'_>],
) -> Result<Vec<Result<Assigned, IpamError>>, IpamError> {
    with_retries(|| {
        let mut pools = list_pools(store)?;
        let mut draft = Draft::new(store);
        let mut created_defaults = false;
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let before = (draft.clone(), pools.clone());
            match allocate_in(&mut draft, &mut pools, store, request) {
                Ok((assigned, created)) => {
                    created_defaults |= created;
                    answers.push(Ok(assigned));
                }
                Err(e) if e.is_about_the_request() => {
                    (draft, pools) = before;
                    answers.push(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        commit(store, &draft.into_txn())?;
        if created_defaults {
            tracing::info!(
                pools = ?DEFAULT_POOLS,
                "no IP pool was configured: created the default pools"
            );
        }
        Ok(answers)
    })
}

/// One request's allocation into `draft`; also whether it created the
/// default pools (then in `pools`, not stored yet).
fn allocate_in(
    draft: &mut Draft<'_>,
    pools: &mut Vec<Versioned<IpPool>>,
    store: &dyn Store,
    request: &Request<'_>,
) -> Result<(Assigned, bool), IpamError> {
    let wants_any = request.num_ipv4 + request.num_ipv6 > 0 || !request.reserve.is_empty();
    let creates_defaults = pools.is_empty() && request.default_pools && wants_any;
    if creates_defaults {
        *pools = default_pools();
        for pool in pools.iter() {
            draft.create_pool(&pool.value);
        }
    }
    let reserved = reserve_in(draft, pools, request)?;
    let mut assigned = Assigned {
        ipv4: pick(draft, store, pools, request, true, request.num_ipv4)?,
        ipv6: pick(draft, store, pools, request, false, request.num_ipv6)?,
    };
    for addr in reserved {
        match addr {
            IpAddr::V4(_) => assigned.ipv4.push(addr),
            IpAddr::V6(_) => assigned.ipv6.push(addr),
        }
    }
    Ok((assigned, creates_defaults))
}

/// Reserve exactly `request.reserve` under `request.uid`, all or nothing.
pub fn reserve(store: &dyn Store, request: &Request<'_>) -> Result<Assigned, IpamError> {
    allocate(
        store,
        &Request {
            num_ipv4: 0,
            num_ipv6: 0,
            default_pools: false,
            ..request.clone()
        },
    )
}

/// Release these addresses, whoever holds them. Addresses that are not
/// allocated (or in no pool) are skipped. Returns those released.
pub fn release_addresses(store: &dyn Store, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, IpamError> {
    with_retries(|| {
        let pools = list_pools(store)?;
        let mut draft = Draft::new(store);
        let mut released = Vec::new();
        for &addr in addrs {
            let Some(pool) = pool_of(&pools, addr) else {
                continue;
            };
            if draft.free(&keys::block(&pool.block_of(addr)), addr)? {
                released.push(addr);
            }
        }
        commit(store, &draft.into_txn())?;
        Ok(released)
    })
}

/// Who holds each of `addrs` (the allocating uid); addresses that are not
/// allocated, or in no pool, are left out.
pub fn holders(store: &dyn Store, addrs: &[IpAddr]) -> Result<BTreeMap<IpAddr, String>, IpamError> {
    let pools = list_pools(store)?;
    let mut draft = Draft::new(store);
    let mut out = BTreeMap::new();
    for &addr in addrs {
        let Some(pool) = pool_of(&pools, addr) else {
            continue;
        };
        let key = keys::block(&pool.block_of(addr));
        if let Some(uid) = draft.block(&key)?.and_then(|b| b.holder(addr)) {
            out.insert(addr, uid.to_string());
        }
    }
    Ok(out)
}

/// Release each address only while it is still held by the uid given for
/// it: an address released meanwhile and handed to someone else is never
/// taken away from them. Returns those released.
pub fn release_held(
    store: &dyn Store,
    held: &BTreeMap<IpAddr, String>,
) -> Result<Vec<IpAddr>, IpamError> {
    Ok(release_held_with(store, held, &Txn::default())?.unwrap_or_default())
}

/// [`release_held`] and `also` in one transaction: `also`'s writes are
/// made together with the release, and only while its guards hold. `None`
/// (nothing released, nothing written) once one of `also`'s guards no
/// longer holds; a conflict on the blocks alone is retried as usual.
pub fn release_held_with(
    store: &dyn Store,
    held: &BTreeMap<IpAddr, String>,
    also: &Txn,
) -> Result<Option<Vec<IpAddr>>, IpamError> {
    with_retries(|| {
        let pools = list_pools(store)?;
        let mut draft = Draft::new(store);
        let mut released = Vec::new();
        for (&addr, uid) in held {
            let Some(pool) = pool_of(&pools, addr) else {
                continue;
            };
            let key = keys::block(&pool.block_of(addr));
            if draft.block(&key)?.and_then(|b| b.holder(addr)) == Some(uid.as_str())
                && draft.free(&key, addr)?
            {
                released.push(addr);
            }
        }
        let mut txn = if released.is_empty() {
            Txn::default()
        } else {
            draft.into_txn()
        };
        txn.compares.extend(also.compares.iter().cloned());
        txn.ops.extend(also.ops.iter().cloned());
        if txn.is_empty() {
            return Ok(Some(released));
        }
        match store.commit(&txn)? {
            Commit::Done(_) => Ok(Some(released)),
            Commit::Conflict if !guards_hold(store, &also.compares)? => Ok(None),
            Commit::Conflict => Err(IpamError::Conflict),
        }
    })
}

/// True when every key of `compares` is still at its revision.
fn guards_hold(store: &dyn Store, compares: &[Compare]) -> Result<bool, IpamError> {
    for c in compares {
        let now = store.get(&c.key)?.map_or(0, |kv| kv.mod_revision);
        if now != c.mod_revision {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Release every address held under `uid`. Returns those released.
pub fn release_handle(store: &dyn Store, uid: &str) -> Result<Vec<IpAddr>, IpamError> {
    Ok(release_handle_at(store, uid, None)?.unwrap_or_default())
}

/// Release every address held under `uid`, but only while its handle is
/// still at `revision` (`None`: whatever it is); `None` when it was not.
pub(super) fn release_handle_at(
    store: &dyn Store,
    uid: &str,
    revision: Option<Revision>,
) -> Result<Option<Vec<IpAddr>>, IpamError> {
    with_retries(|| {
        let pools = list_pools(store)?;
        let mut draft = Draft::new(store);
        if let Some(expected) = revision {
            if draft.handle_revision(uid)? != expected {
                return Ok(None); // allocated again, or released, since
            }
        }
        let held: Vec<IpAddr> = draft.handle(uid)?.addresses.iter().copied().collect();
        let mut released = Vec::new();
        for addr in held {
            let Some(pool) = pool_of(&pools, addr) else {
                continue;
            };
            let key = keys::block(&pool.block_of(addr));
            // Only free what this uid really holds.
            if draft.block(&key)?.and_then(|b| b.holder(addr)) == Some(uid)
                && draft.free(&key, addr)?
            {
                released.push(addr);
            }
        }
        draft.handle(uid)?.addresses.clear();
        commit(store, &draft.into_txn())?;
        Ok(Some(released))
    })
}

fn pool_of(pools: &[Versioned<IpPool>], addr: IpAddr) -> Option<&IpPool> {
    pools
        .iter()
        .map(|p| &p.value)
        .find(|p| p.cidr.contains(&addr))
}

/// Put the exact addresses under the uid; returns them, de-duplicated.
fn reserve_in(
    draft: &mut Draft<'_>,
    pools: &[Versioned<IpPool>],
    request: &Request<'_>,
) -> Result<Vec<IpAddr>, IpamError> {
    let mut done = Vec::new();
    for &addr in request.reserve {
        if done.contains(&addr) {
            continue;
        }
        let versioned = pools
            .iter()
            .find(|p| p.value.cidr.contains(&addr))
            .ok_or(IpamError::NoPool(addr))?;
        let pool = &versioned.value;
        let cidr = pool.block_of(addr);
        let mut key = keys::block(&cidr);
        if draft.block(&key)?.is_none() {
            draft.guard(keys::pool(&pool.cidr), versioned.mod_revision);
            key = draft.claim_block(pool, cidr, request.node);
        }
        match draft.block(&key)?.and_then(|b| b.holder(addr)) {
            Some(holder) if holder == request.uid => {}
            Some(_) => return Err(IpamError::InUse(addr)),
            None => draft.record(&key, addr, request.uid)?,
        }
        done.push(addr);
    }
    Ok(done)
}

/// Pick `count` free addresses of one family, in order of preference.
fn pick(
    draft: &mut Draft<'_>,
    store: &dyn Store,
    pools: &[Versioned<IpPool>],
    request: &Request<'_>,
    v4: bool,
    count: u32,
) -> Result<Vec<IpAddr>, IpamError> {
    let mut got = Vec::new();
    if count == 0 {
        return Ok(got);
    }
    let usable: Vec<&Versioned<IpPool>> = pools
        .iter()
        .filter(|p| p.value.is_v4() == v4 && !p.value.disabled)
        .collect();
    let is_usable = |pool: &ipnet::IpNet| usable.iter().any(|p| p.value.cidr == *pool);
    let want = count as usize;

    // 1. Blocks this node already claimed that have room (including one a
    // reservation of this same request just claimed). Every indexed block
    // has room for one more, so the first `want` entries usually suffice:
    // the rest is read only when they do not (one store round trip less
    // for almost every request, which matters on etcd).
    let own = keys::free_blocks_of(request.node, v4);
    let first = store.list(&own, Some(want))?;
    let more = first.len() == want;
    let mut candidates = draft.affine_blocks(request.node, v4);
    candidates.extend(first.iter().map(|index| block_key_of_index(&index.key)));
    for key in &candidates {
        fill(draft, key, &is_usable, request.uid, want, &mut got)?;
        if got.len() == want {
            return Ok(got);
        }
    }
    if more {
        for index in store.list(&own, None)? {
            let key = block_key_of_index(&index.key);
            if candidates.contains(&key) {
                continue;
            }
            fill(draft, &key, &is_usable, request.uid, want, &mut got)?;
            if got.len() == want {
                return Ok(got);
            }
        }
    }

    // 2. Claim new blocks.
    let claimed: HashSet<String> = store.list_keys(keys::BLOCKS)?.into_iter().collect();
    for versioned in &usable {
        for cidr in versioned.value.blocks() {
            let key = keys::block(&cidr);
            if claimed.contains(&key) || draft.block(&key)?.is_some() {
                continue;
            }
            draft.guard(keys::pool(&versioned.value.cidr), versioned.mod_revision);
            let key = draft.claim_block(&versioned.value, cidr, request.node);
            fill(draft, &key, &is_usable, request.uid, want, &mut got)?;
            if got.len() == want {
                return Ok(got);
            }
        }
    }

    // 3. Borrow from other nodes' blocks.
    let family = format!("/{}/", keys::family(v4));
    for index in store.list(keys::FREE_BLOCKS, None)? {
        if index.key.starts_with(&own) || !index.key.contains(&family) {
            continue;
        }
        fill(
            draft,
            &block_key_of_index(&index.key),
            &is_usable,
            request.uid,
            want,
            &mut got,
        )?;
        if got.len() == want {
            return Ok(got);
        }
    }
    Err(IpamError::Exhausted {
        family: family_name(v4),
        asked: count,
        available: got.len() as u32,
    })
}

/// `blockfree/<node>/<fam>/<cidr>` → `block/<cidr>`.
fn block_key_of_index(index_key: &str) -> String {
    let cidr = index_key.rsplit('/').next().unwrap_or_default();
    format!("{}{cidr}", keys::BLOCKS)
}

/// Take free addresses from one block until `want` are picked.
fn fill(
    draft: &mut Draft<'_>,
    key: &str,
    is_usable: &dyn Fn(&ipnet::IpNet) -> bool,
    uid: &str,
    want: usize,
    got: &mut Vec<IpAddr>,
) -> Result<(), IpamError> {
    while got.len() < want {
        let Some(block) = draft.block(key)? else {
            return Ok(());
        };
        if !is_usable(&block.pool) {
            return Ok(());
        }
        let Some(addr) = block.allocate_next(uid) else {
            return Ok(());
        };
        draft.record(key, addr, uid)?;
        got.push(addr);
    }
    Ok(())
}
