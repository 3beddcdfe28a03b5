//! One reconcile of one endpoint, shared by the plugin, the daemon and the
//! one-shot `reconcile` command: read intent and status from the store, make
//! the kernel match through the endpoint reconciler, write the status back.
//!
//! Level-triggered: it reads the truth itself and is safe to run any number
//! of times. Status is written only when it changes, so a resync that finds
//! nothing to do writes nothing.

use crate::endpoint::{self, Endpoint, EndpointStatus, Phase};
use crate::ipam;
use crate::store::{Store, Versioned};
use reconcilers::endpoint::{
    host_ifname, Action, EndpointDataplane, EndpointError, EndpointSpec, Inventory,
};
use reconcilers::NetnsRef;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What one node's loop needs: its store, its name, its dataplane.
pub struct NodeContext {
    /// The desired-state store.
    pub store: Arc<dyn Store>,
    /// This node's name.
    pub node: String,
    /// The endpoint reconciler, in the node's namespace.
    pub dataplane: EndpointDataplane,
    /// How long an orphaned endpoint is kept before it is collected.
    pub orphan_grace: Duration,
}

/// What a reconcile of one endpoint found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No intent for this container on this node.
    Unknown,
    /// The dataplane is in place; `actions` were applied (or, in a dry
    /// run, would be).
    Ready {
        /// Actions applied.
        actions: Vec<Action>,
        /// The generation of intent now in place.
        generation: u64,
    },
    /// Cleanup done: dataplane removed, addresses released, record deleted.
    Removed {
        /// Actions applied.
        actions: Vec<Action>,
        /// Addresses released.
        released: Vec<IpAddr>,
    },
    /// The container's namespace is gone; collected once the grace period
    /// is over, after `remaining`.
    Orphaned {
        /// Time left of the grace period.
        remaining: Duration,
    },
    /// An orphan collected: dataplane removed, addresses released, record
    /// deleted.
    Collected {
        /// Actions applied.
        actions: Vec<Action>,
        /// Addresses released.
        released: Vec<IpAddr>,
    },
    /// The dataplane could not be made; the status says why.
    Failed {
        /// Why.
        message: String,
    },
}

impl Outcome {
    /// A one-word name, for logs and summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Unknown => "unknown",
            Outcome::Ready { .. } => "ready",
            Outcome::Removed { .. } => "removed",
            Outcome::Orphaned { .. } => "orphaned",
            Outcome::Collected { .. } => "collected",
            Outcome::Failed { .. } => "failed",
        }
    }

    /// The kernel actions this outcome applied (or would apply).
    pub fn actions(&self) -> &[Action] {
        match self {
            Outcome::Ready { actions, .. }
            | Outcome::Removed { actions, .. }
            | Outcome::Collected { actions, .. } => actions,
            _ => &[],
        }
    }
}

/// The dataplane an endpoint wants, as plain data for the reconcilers.
pub fn spec_of(ep: &Endpoint) -> EndpointSpec {
    EndpointSpec {
        container_id: ep.container_id.clone(),
        netns: NetnsRef {
            pid: ep.netns.pid,
            inode: ep.netns.inode,
        },
        ipv4: ep.ipv4.clone(),
        ipv6: ep.ipv6.clone(),
    }
}

/// Reconciles the endpoint of `container_id` on this node. With `dry_run`
/// nothing is changed, in the kernel or in the store.
///
/// Errors are store failures (worth a retry); dataplane failures are an
/// [`Outcome::Failed`] with the status written.
pub async fn reconcile_endpoint(
    ctx: &NodeContext,
    container_id: &str,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let store = ctx.store.as_ref();
    let Some(ep) = endpoint::get(store, &ctx.node, container_id)? else {
        return Ok(Outcome::Unknown);
    };
    let status = endpoint::get_status(store, &ctx.node, container_id)?;
    if ep.value.deletion_requested {
        return remove(ctx, &ep, dry_run, false).await;
    }
    match ctx.dataplane.ensure(&spec_of(&ep.value), dry_run).await {
        Ok(done) => {
            let next = EndpointStatus {
                observed_generation: ep.value.generation,
                phase: Phase::Ready,
                host_interface: done.host_ifname,
                mac: done.container_mac.unwrap_or_default(),
                message: String::new(),
                last_reconcile_ms: endpoint::now_ms(),
                orphaned_since_ms: None,
            };
            if !dry_run {
                write_if_changed(
                    ctx,
                    &ep.value,
                    status.as_ref(),
                    next,
                    !done.actions.is_empty(),
                )?;
            }
            Ok(Outcome::Ready {
                actions: done.actions,
                generation: ep.value.generation,
            })
        }
        Err(e) if e.is_gone() => orphaned(ctx, &ep, status, &e, dry_run).await,
        Err(e) => {
            let message = format!("{:#}", anyhow::Error::from(e));
            let next = EndpointStatus {
                observed_generation: ep.value.generation,
                phase: Phase::Failed,
                host_interface: host_ifname(container_id),
                mac: status.as_ref().map(|s| s.mac.clone()).unwrap_or_default(),
                message: message.clone(),
                last_reconcile_ms: endpoint::now_ms(),
                orphaned_since_ms: None,
            };
            if !dry_run {
                write_if_changed(ctx, &ep.value, status.as_ref(), next, false)?;
            }
            Ok(Outcome::Failed { message })
        }
    }
}

/// Writes `next` unless the stored status says the same (the time of the
/// last reconcile aside) and nothing was changed in the kernel.
fn write_if_changed(
    ctx: &NodeContext,
    ep: &Endpoint,
    current: Option<&EndpointStatus>,
    next: EndpointStatus,
    changed: bool,
) -> anyhow::Result<()> {
    let same = current.is_some_and(|c| {
        EndpointStatus {
            last_reconcile_ms: next.last_reconcile_ms,
            ..c.clone()
        } == next
    });
    if changed || !same {
        endpoint::write_status(ctx.store.as_ref(), &ctx.node, &ep.container_id, &next)?;
    }
    Ok(())
}

async fn orphaned(
    ctx: &NodeContext,
    ep: &Versioned<Endpoint>,
    status: Option<EndpointStatus>,
    why: &EndpointError,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let now = endpoint::now_ms();
    let since = status
        .as_ref()
        .and_then(|s| s.orphaned_since_ms)
        .unwrap_or(now);
    let grace = ctx.orphan_grace.as_millis() as u64;
    let elapsed = now.saturating_sub(since);
    if elapsed < grace {
        let next = EndpointStatus {
            observed_generation: ep.value.generation,
            phase: Phase::Orphaned,
            host_interface: host_ifname(&ep.value.container_id),
            mac: status.as_ref().map(|s| s.mac.clone()).unwrap_or_default(),
            message: format!("{why}; collected after the grace period"),
            last_reconcile_ms: now,
            orphaned_since_ms: Some(since),
        };
        if !dry_run {
            write_if_changed(ctx, &ep.value, status.as_ref(), next, false)?;
        }
        return Ok(Outcome::Orphaned {
            remaining: Duration::from_millis(grace - elapsed),
        });
    }
    // Checked again right before anything is released: never collect a
    // live container.
    if ep.value.netns.is_alive() {
        anyhow::bail!(
            "container {} looked gone but its namespace is alive again",
            ep.value.container_id
        );
    }
    remove(ctx, ep, dry_run, true).await
}

/// Removes the dataplane, releases the addresses the endpoint's holders
/// still hold, and deletes the record (guarded by its revision).
async fn remove(
    ctx: &NodeContext,
    ep: &Versioned<Endpoint>,
    dry_run: bool,
    collected: bool,
) -> anyhow::Result<Outcome> {
    let actions = match ctx.dataplane.remove(&ep.value.container_id, dry_run).await {
        Ok(actions) => actions,
        Err(e) => {
            let message = format!("{:#}", anyhow::Error::from(e));
            if !dry_run {
                let next = EndpointStatus {
                    observed_generation: ep.value.generation,
                    phase: Phase::Terminating,
                    host_interface: host_ifname(&ep.value.container_id),
                    mac: String::new(),
                    message: message.clone(),
                    last_reconcile_ms: endpoint::now_ms(),
                    orphaned_since_ms: None,
                };
                endpoint::write_status(
                    ctx.store.as_ref(),
                    &ctx.node,
                    &ep.value.container_id,
                    &next,
                )?;
            }
            return Ok(Outcome::Failed { message });
        }
    };
    let released = if dry_run {
        ipam::holders(ctx.store.as_ref(), &addresses(&ep.value))?
            .into_iter()
            .filter(|(addr, uid)| ep.value.holders.get(addr) == Some(uid))
            .map(|(addr, _)| addr)
            .collect()
    } else {
        let released = ipam::release_held(ctx.store.as_ref(), &ep.value.holders)?;
        if !endpoint::delete(ctx.store.as_ref(), ep)? {
            anyhow::bail!(
                "the intent of container {} changed while it was being removed",
                ep.value.container_id
            );
        }
        released
    };
    Ok(if collected {
        Outcome::Collected { actions, released }
    } else {
        Outcome::Removed { actions, released }
    })
}

fn addresses(ep: &Endpoint) -> Vec<IpAddr> {
    ep.ipv4
        .iter()
        .map(|a| IpAddr::V4(*a))
        .chain(ep.ipv6.iter().map(|a| IpAddr::V6(*a)))
        .collect()
}

/// Lists the node's endpoints and removes (or, in a dry run, only lists)
/// what of ours none of them accounts for: `cali*` veths with our alias
/// whose name is no endpoint's, and routes of ours through one of our
/// veths for an address its endpoint does not have. The kernel is read
/// before the store: an endpoint is recorded before its link is made, so
/// every link seen has its record in the list.
pub async fn list_and_sweep(ctx: &NodeContext, dry_run: bool) -> anyhow::Result<Sweep> {
    let inventory = ctx.dataplane.inventory().await?;
    let endpoints: Vec<Endpoint> = endpoint::list(ctx.store.as_ref(), &ctx.node)?
        .into_iter()
        .map(|v| v.value)
        .collect();
    let wanted: std::collections::HashMap<String, Vec<IpAddr>> = endpoints
        .iter()
        .map(|e| (host_ifname(&e.container_id), addresses(e)))
        .collect();
    let mut strays = Vec::new();
    let mut addresses_of_link = std::collections::HashMap::new();
    for (name, link) in &inventory.links {
        match wanted.get(name) {
            Some(addrs) => {
                addresses_of_link.insert(link.index, addrs);
            }
            None => strays.push(Action::DeleteHostLink {
                name: name.clone(),
                index: link.index,
            }),
        }
    }
    for r in &inventory.routes {
        let Some(addrs) = r.oif.and_then(|i| addresses_of_link.get(&i)) else {
            continue; // not through one of our veths: not the endpoints' business
        };
        if !addrs.iter().any(|a| r.is_host_route_for(*a)) {
            strays.push(Action::DeleteHostRoute {
                dst: r.dst,
                prefix_len: r.prefix_len,
                table: r.table,
                oif: r.oif.unwrap_or_default(),
            });
        }
    }
    if !dry_run && !strays.is_empty() {
        ctx.dataplane.apply_node(&strays).await?;
    }
    Ok(Sweep {
        endpoints,
        strays,
        inventory,
    })
}

/// What [`list_and_sweep`] found.
#[derive(Debug)]
pub struct Sweep {
    /// Every endpoint of the node.
    pub endpoints: Vec<Endpoint>,
    /// What was removed (or, in a dry run, would be).
    pub strays: Vec<Action>,
    /// The node's links and routes of ours, as read before the sweep.
    pub inventory: Inventory,
}

/// The result of one pass over every endpoint of the node.
#[derive(Debug, Default)]
pub struct Pass {
    /// Per container: what happened, or the store error.
    pub outcomes: Vec<(String, Result<Outcome, String>)>,
    /// Links of ours no endpoint accounts for, removed (or to remove).
    pub strays: Vec<Action>,
}

impl Pass {
    /// How many endpoints failed.
    pub fn failed(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|(_, r)| matches!(r, Err(_) | Ok(Outcome::Failed { .. })))
            .count()
    }
}

/// Reconciles every endpoint of the node once, `concurrency` at a time:
/// what `calico-mesos reconcile` runs at boot and after an outage.
pub async fn full_pass(
    ctx: &NodeContext,
    dry_run: bool,
    concurrency: usize,
) -> anyhow::Result<Pass> {
    use futures::StreamExt;
    let Sweep {
        endpoints, strays, ..
    } = list_and_sweep(ctx, dry_run).await?;
    let outcomes = futures::stream::iter(endpoints)
        .map(|ep| async move {
            let result = reconcile_endpoint(ctx, &ep.container_id, dry_run)
                .await
                .map_err(|e| format!("{e:#}"));
            (ep.container_id, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    Ok(Pass { outcomes, strays })
}
