//! The node's routes to other nodes' containers (issue 5, "routes between
//! nodes"): gathers from the store the blocks and their nodes, the nodes'
//! fabric addresses and the endpoints elsewhere, has
//! `reconcilers::fabric::desired_routes` compute the routes, and hands them
//! to the fabric reconciler. Shared by the daemon and `reconcile`.

use super::reconcile::NodeContext;
use crate::endpoint::Endpoint;
use crate::ipam::Block;
use crate::node;
use crate::policy;
use crate::store::cache::PrefixCache;
use crate::store::{self, keys, Store};
use ipnet::IpNet;
use reconcilers::fabric::{desired_routes, FabricAction, FabricSpec};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Everything the routes of `this_node` depend on, read from the store
/// (the cluster's endpoints through `endpoints`).
pub fn desired_fabric(
    store: &dyn Store,
    endpoints: &PrefixCache<Endpoint>,
    this_node: &str,
) -> anyhow::Result<FabricSpec> {
    let blocks: Vec<(IpNet, String)> = store::list_json::<Block>(store, keys::BLOCKS)?
        .into_iter()
        .filter_map(|b| Some((b.value.cidr, b.value.affinity?)))
        .collect();
    let elsewhere: Vec<(IpAddr, String)> = endpoints.with_current(store, |all| {
        all.values()
            .filter(|e| e.node != this_node)
            .flat_map(|e| {
                policy::addresses(e)
                    .into_iter()
                    .map(move |a| (a, e.node.clone()))
            })
            .collect()
    })?;
    let nodes: BTreeMap<String, Vec<IpAddr>> = node::all(store)?
        .into_iter()
        .map(|(name, n)| (name, n.addresses))
        .collect();
    let (spec, warnings) = desired_routes(&blocks, &elsewhere, &nodes, this_node);
    for warning in warnings {
        tracing::debug!(%warning, "fabric route skipped");
    }
    Ok(spec)
}

/// Brings the node's fabric routes up to date with the store; concurrent
/// calls are coalesced like the policy's. Returns what this call changed
/// (or, with `dry_run`, would change); nothing when fabric routes are off.
pub async fn reconcile_fabric(
    ctx: &NodeContext,
    dry_run: bool,
) -> anyhow::Result<Vec<FabricAction>> {
    let Some(dataplane) = &ctx.fabric else {
        return Ok(Vec::new());
    };
    let run = || async {
        let spec = desired_fabric(ctx.store.as_ref(), &ctx.endpoints, &ctx.node)?;
        anyhow::Ok(dataplane.ensure(&spec, dry_run).await?)
    };
    if dry_run {
        return run().await;
    }
    Ok(ctx.fabric_runs.run(run).await?.unwrap_or_default())
}

/// What the daemon remembers to tell which store changes can move this
/// node's fabric routes: every block's CIDR and node, and the other nodes'
/// endpoints holding an address outside their own node's blocks (a
/// borrowed address, which gets a route of its own). Seeded from a listing
/// ([`FabricView::read`]), then kept up to date from the store's changes.
#[derive(Debug, Default)]
pub struct FabricView {
    /// Block key → (CIDR, node), for blocks with an affinity.
    blocks: std::collections::HashMap<String, (IpNet, String)>,
    /// Keys of other nodes' endpoints with a borrowed address.
    borrowing: std::collections::HashSet<String>,
}

impl FabricView {
    /// Every block and endpoint in the store, as seen from `this_node`.
    pub fn read(store: &dyn Store, this_node: &str) -> Result<FabricView, store::StoreError> {
        let mut view = FabricView::default();
        for kv in store.list(keys::BLOCKS, None)? {
            view.block_changed(&kv.key, store::decode::<Block>(&kv).ok().as_ref());
        }
        let own = keys::endpoints_of(this_node);
        for kv in store.list(keys::ENDPOINTS, None)? {
            if !kv.key.starts_with(&own) {
                view.endpoint_put(&kv.key, store::decode::<Endpoint>(&kv).ok().as_ref());
            }
        }
        Ok(view)
    }

    /// Records a block's new state (`None`: deleted or unreadable); true
    /// when its node affinity is new or moved (an allocation inside a
    /// block moves no route).
    pub fn block_changed(&mut self, key: &str, block: Option<&Block>) -> bool {
        let now = block.and_then(|b| Some((b.cidr, b.affinity.clone()?)));
        let before = match &now {
            Some(entry) => self.blocks.insert(key.to_string(), entry.clone()),
            None => self.blocks.remove(key),
        };
        before.map(|(_, node)| node) != now.map(|(_, node)| node)
    }

    /// Records another node's endpoint's new state (`None`: unreadable,
    /// which counts as borrowing); true when it may move a route: it holds
    /// a borrowed address now or did before. An address in no known block
    /// counts as borrowed.
    pub fn endpoint_put(&mut self, key: &str, endpoint: Option<&Endpoint>) -> bool {
        let borrows = endpoint.is_none_or(|e| {
            !policy::addresses(e).iter().all(|a| {
                self.blocks
                    .values()
                    .any(|(cidr, node)| *node == e.node && cidr.contains(a))
            })
        });
        let borrowed = if borrows {
            !self.borrowing.insert(key.to_string())
        } else {
            self.borrowing.remove(key)
        };
        borrows || borrowed
    }

    /// Records that another node's endpoint is gone; true when it held a
    /// borrowed address (its route goes).
    pub fn endpoint_deleted(&mut self, key: &str) -> bool {
        self.borrowing.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::NetnsId;

    fn block(cidr: &str, node: &str) -> Block {
        Block {
            cidr: cidr.parse().unwrap(),
            pool: "198.18.0.0/16".parse().unwrap(),
            affinity: Some(node.to_string()),
            allocations: Default::default(),
        }
    }

    fn endpoint(node: &str, v4: &str) -> Endpoint {
        Endpoint {
            node: node.to_string(),
            container_id: "c".into(),
            netns: NetnsId { pid: 1, inode: 1 },
            ipv4: vec![v4.parse().unwrap()],
            ipv6: vec![],
            netgroups: vec![],
            labels: Default::default(),
            holders: Default::default(),
            generation: 1,
            deletion_requested: false,
        }
    }

    #[test]
    fn only_new_or_moved_blocks_count() {
        let mut view = FabricView::default();
        let b = block("198.18.0.0/26", "a");
        assert!(view.block_changed("block/x", Some(&b)), "a new block");
        assert!(!view.block_changed("block/x", Some(&b)), "an allocation");
        assert!(view.block_changed("block/x", Some(&block("198.18.0.0/26", "b"))));
        assert!(view.block_changed("block/x", None), "a deleted block");
        assert!(!view.block_changed("block/x", None));
    }

    #[test]
    fn endpoints_count_while_or_after_they_borrow() {
        let mut view = FabricView::default();
        view.block_changed("block/a", Some(&block("198.18.0.0/26", "a")));
        view.block_changed("block/b", Some(&block("198.18.0.64/26", "b")));
        let own = endpoint("a", "198.18.0.1");
        let borrowed = endpoint("a", "198.18.0.65");
        let unknown = endpoint("a", "198.18.9.1");
        assert!(!view.endpoint_put("endpoint/a/c", Some(&own)));
        assert!(view.endpoint_put("endpoint/a/c", Some(&borrowed)));
        assert!(view.endpoint_put("endpoint/a/c", Some(&borrowed)));
        assert!(
            view.endpoint_put("endpoint/a/c", Some(&own)),
            "its /32 goes"
        );
        assert!(!view.endpoint_put("endpoint/a/c", Some(&own)));
        assert!(!view.endpoint_deleted("endpoint/a/c"));
        assert!(view.endpoint_put("endpoint/a/d", Some(&unknown)));
        assert!(view.endpoint_put("endpoint/a/e", None), "unreadable");
        assert!(view.endpoint_deleted("endpoint/a/d"), "its /32 goes");
        assert!(!view.endpoint_deleted("endpoint/a/d"));
    }
}
