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
