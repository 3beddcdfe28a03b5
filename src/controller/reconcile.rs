//! One reconcile of one endpoint, shared by the plugin, the daemon and the
//! one-shot `reconcile` command: read intent and status from the store, make
//! the kernel match through the endpoint reconciler, write the status back.
//!
//! Level-triggered: it reads the truth itself and is safe to run any number
//! of times. Status is written only when it changes, so a resync that finds
//! nothing to do writes nothing.

use super::coalesce::Coalesced;
use super::dataplane::{Dataplane, Home};
use crate::config::{Config, PolicyMode};
use crate::endpoint::{self, Endpoint, EndpointStatus, Phase};
use crate::ipam::{self, InUse, Leak};
use crate::policy::{self, profiles, PolicyInputs};
use crate::store::cache::{Changed, Follower, PrefixCache};
use crate::store::{keys, Store, Versioned};
use anyhow::Context as _;
use reconcilers::endpoint::{host_ifname, Action, EndpointError, EndpointSpec, Inventory};
use reconcilers::fabric::{FabricAction, FabricDataplane};
use reconcilers::policy::{Memo, PolicyAction, PolicyDataplane, PolicySpec, SpecChange};
use reconcilers::NetnsRef;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What one node's loop needs: its store, its name, its dataplanes.
pub struct NodeContext {
    /// The desired-state store.
    pub store: Arc<dyn Store>,
    /// This node's name.
    pub node: String,
    /// The endpoint reconciler, in the node's namespace.
    pub dataplane: Dataplane,
    /// The policy reconciler (our nftables table); `None` when policy is
    /// disabled.
    pub policy: Option<PolicyDataplane>,
    /// The node's own addresses, which its host profile lets in and out.
    pub node_addresses: Vec<IpAddr>,
    /// How long an orphaned endpoint is kept before it is collected.
    pub orphan_grace: Duration,
    /// How long an allocation no endpoint uses is kept (ipam::leaks).
    pub leak_grace: Duration,
    /// Runs of the node's policy, coalesced.
    policy_runs: Coalesced,
    /// The fabric reconciler (routes to other nodes' blocks); `None` when
    /// fabric routes are turned off.
    pub fabric: Option<FabricDataplane>,
    /// Runs of the node's fabric routes, coalesced.
    pub(super) fabric_runs: Coalesced,
    /// Every endpoint of the cluster, kept up to date from the store's
    /// changes (policy membership, routes to other nodes' containers).
    pub(super) endpoints: PrefixCache<Endpoint>,
    /// The policy's place in the changes of `endpoints` (only with
    /// policy on: a follower nobody reads would keep every change).
    policy_follower: Option<Follower>,
    /// What the policy was last brought up to date with; `None`: the next
    /// run starts from scratch.
    policy_inputs: std::sync::Mutex<Option<PolicyInputs>>,
}

impl NodeContext {
    /// The context of this node, in the calling thread's network namespace
    /// (the node's): resolves the node's addresses (configured or
    /// detected) and keeps its host profile in step with them. With policy
    /// disabled, removes our nftables table if one was left. `home` says
    /// where the endpoint reconciler runs.
    pub async fn open(
        config: &Config,
        store: Arc<dyn Store>,
        home: Home,
    ) -> anyhow::Result<NodeContext> {
        let node_addresses = policy::resolve_node_addresses(config)
            .await
            .context("cannot detect the node's addresses (set node_addresses)")?;
        let policy = match config.policy {
            PolicyMode::Enforce => {
                profiles::ensure_host_profile(store.as_ref(), &config.nodename, &node_addresses)?;
                Some(policy_dataplane(config, home))
            }
            PolicyMode::Disabled => {
                if PolicyDataplane::new().remove().await? {
                    tracing::info!("policy disabled: removed our nftables table");
                }
                None
            }
        };
        let endpoints = PrefixCache::new(keys::ENDPOINTS);
        let policy_follower = policy.is_some().then(|| endpoints.follow());
        Ok(NodeContext {
            store,
            node: config.nodename.clone(),
            dataplane: Dataplane::open(home)?,
            policy,
            node_addresses,
            orphan_grace: config.orphan_grace,
            leak_grace: config.leak_grace,
            policy_runs: Coalesced::default(),
            fabric: if config.fabric_routes {
                Some(FabricDataplane::new()?)
            } else {
                let removed = FabricDataplane::new()?.remove_all().await?;
                if !removed.is_empty() {
                    tracing::info!(routes = removed.len(), "fabric routes off: removed ours");
                }
                None
            },
            fabric_runs: Coalesced::default(),
            endpoints,
            policy_follower,
            policy_inputs: std::sync::Mutex::new(None),
        })
    }
}

/// The node's policy dataplane. A process that lives for one request
/// (the plugin reconciling inline) keeps a memo of what it applied in
/// `run_dir`, so that the next one need not read the whole table back
/// (see [`Memo`]); the daemon keeps what it applied in memory.
fn policy_dataplane(config: &Config, home: Home) -> PolicyDataplane {
    let dataplane = PolicyDataplane::new();
    if home != Home::Here {
        return dataplane;
    }
    match Memo::open(&config.run_dir.join(POLICY_MEMO)) {
        Ok(memo) => dataplane.with_memo(memo),
        Err(e) => {
            tracing::debug!(error = %e, "no policy memo");
            dataplane
        }
    }
}

/// The policy memo's file in `run_dir`.
pub const POLICY_MEMO: &str = "policy-memo.json";

/// Brings the node's policy table up to date with the store: every
/// endpoint of this node not being deleted, the profiles they name, and
/// netgroup membership across the cluster. Concurrent calls are coalesced:
/// a caller is answered by any run that started after it asked. Returns
/// what this call changed (or, with `dry_run`, would change).
///
/// A run hands the dataplane only what changed since the last one (the
/// endpoints the cache saw change, the profiles that differ), which costs
/// what changed. It starts from scratch (every endpoint, the whole table
/// rendered again and compared) on the first run, after the cache listed
/// the store again, after a failed run, when the dataplane was told to
/// forget what it applied (drift, resync), and for a dry run.
pub async fn reconcile_policy(
    ctx: &NodeContext,
    dry_run: bool,
) -> anyhow::Result<Vec<PolicyAction>> {
    let (Some(dataplane), Some(follower)) = (&ctx.policy, &ctx.policy_follower) else {
        return Ok(Vec::new());
    };
    let store = ctx.store.as_ref();
    if dry_run {
        let profiles = profiles::list(store)?;
        let spec = ctx.endpoints.with_current(store, |endpoints| {
            PolicyInputs::seed(&ctx.node, endpoints, &profiles).1
        })?;
        return Ok(dataplane.ensure(&spec, true).await?);
    }
    let run = || async {
        // Profiles are few, and one an isolate has just made must be seen:
        // read from the store itself.
        let profiles = profiles::list(store)?;
        let from_scratch = dataplane.is_stale();
        let work = ctx
            .endpoints
            .with_changes(store, follower, |endpoints, changed| {
                let mut inputs = ctx.policy_inputs.lock().expect("policy inputs lock");
                match (changed, inputs.as_mut()) {
                    (Changed::Keys(keys), Some(inputs)) if !from_scratch => {
                        PolicyWork::Changes(inputs.update(endpoints, &keys, &profiles))
                    }
                    _ => {
                        let (seeded, spec) = PolicyInputs::seed(&ctx.node, endpoints, &profiles);
                        *inputs = Some(seeded);
                        PolicyWork::Whole(spec)
                    }
                }
            })?;
        let result = match &work {
            PolicyWork::Whole(spec) => dataplane.ensure(spec, false).await,
            PolicyWork::Changes(changes) => dataplane.update(changes).await,
        };
        if result.is_err() {
            // Whatever the dataplane took of it, start again from scratch.
            *ctx.policy_inputs.lock().expect("policy inputs lock") = None;
        }
        anyhow::Ok(result?)
    };
    Ok(ctx.policy_runs.run(run).await?.unwrap_or_default())
}

/// What one policy run hands the dataplane.
enum PolicyWork {
    /// The whole spec, to render from scratch.
    Whole(PolicySpec),
    /// What changed since the last run.
    Changes(Vec<SpecChange>),
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
        /// The id the node's namespace has for the container's (see
        /// [`reconcilers::endpoint::Ensured::container_nsid`]).
        container_nsid: Option<i32>,
        /// The endpoint's links as the reconcile read them back (see
        /// [`reconcilers::endpoint::Links`]).
        links: Box<reconcilers::endpoint::Links>,
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
    ctx: &Arc<NodeContext>,
    container_id: &str,
    dry_run: bool,
) -> anyhow::Result<Outcome> {
    let started = std::time::Instant::now();
    let store = ctx.store.as_ref();
    let Some(ep) = endpoint::get(store, &ctx.node, container_id)? else {
        return Ok(Outcome::Unknown);
    };
    let status = endpoint::get_status(store, &ctx.node, container_id)?;
    let read_us = started.elapsed().as_micros() as u64;
    if ep.value.deletion_requested {
        return remove(ctx, &ep, dry_run, false).await;
    }
    // New intent (or not Ready yet): the policy must include the endpoint
    // before it is Ready. A repair of a known endpoint leaves policy to the
    // policy's own reconcile (keyed by interface name, it still holds).
    let new_intent = status
        .as_ref()
        .is_none_or(|s| s.observed_generation != ep.value.generation || s.phase != Phase::Ready);
    // The policy is keyed by interface name and drops everything of a
    // `cali*` interface it does not know, so it can be brought in while
    // the veth is made: the isolate waits for the slower of the two, not
    // both in turn. A task of its own, so that its rendering (CPU) and the
    // veth's netlink requests (kernel) run on both cores.
    let admitting = (new_intent && ctx.policy.is_some()).then(|| {
        let (ctx, ep) = (ctx.clone(), ep.clone());
        tokio::spawn(async move { admit_to_policy(&ctx, &ep, dry_run).await })
    });
    let dataplane = ctx.dataplane.ensure(spec_of(&ep.value), dry_run).await;
    let ensured_us = started.elapsed().as_micros() as u64;
    let admitted = match admitting {
        Some(task) => match task.await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("the policy task failed: {e}")),
        },
        None => Ok(()),
    };
    let admitted_us = started.elapsed().as_micros() as u64;
    let ensured = match dataplane {
        Ok(done) => match admitted {
            Ok(()) => Ok(done),
            Err(e) => Err(format!("policy: {e:#}")),
        },
        Err(e) if e.is_gone() => return orphaned(ctx, &ep, status, &e, dry_run).await,
        Err(e) => Err(format!("{:#}", anyhow::Error::from(e))),
    };
    match ensured {
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
            tracing::debug!(
                container = %container_id,
                read_us,
                ensured_us,
                admitted_us,
                took_us = started.elapsed().as_micros() as u64,
                "endpoint ready"
            );
            Ok(Outcome::Ready {
                actions: done.actions,
                generation: ep.value.generation,
                container_nsid: done.container_nsid,
                links: Box::new(done.links),
            })
        }
        Err(message) => {
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

/// Makes the profiles `ep` needs and brings the node's policy up to date
/// so that it includes `ep`.
async fn admit_to_policy(
    ctx: &NodeContext,
    ep: &Versioned<Endpoint>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    if !dry_run {
        profiles::ensure_profiles(
            ctx.store.as_ref(),
            &ctx.node,
            &ctx.node_addresses,
            &ep.value,
        )?;
    }
    let profiled_us = started.elapsed().as_micros() as u64;
    note_endpoint(ctx, ep);
    reconcile_policy(ctx, dry_run).await?;
    tracing::debug!(
        container = %ep.value.container_id,
        profiled_us,
        took_us = started.elapsed().as_micros() as u64,
        "admitted to policy"
    );
    Ok(())
}

/// Tells the cache of the cluster's endpoints about `ep` as just read,
/// before a policy run that must include it as it is now (the store's
/// changes can reach the cache later than a read).
fn note_endpoint(ctx: &NodeContext, ep: &Versioned<Endpoint>) {
    ctx.endpoints
        .note(&ep.value.key(), ep.value.clone(), ep.mod_revision);
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
    ctx: &Arc<NodeContext>,
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
    ctx: &Arc<NodeContext>,
    ep: &Versioned<Endpoint>,
    dry_run: bool,
    collected: bool,
) -> anyhow::Result<Outcome> {
    // A cleanup takes the endpoint out of the policy (it is left out of the
    // desired policy once deletion is requested) while its veth is
    // removed: a `cali*` interface the policy does not know has all its
    // traffic dropped, so neither order opens anything. An orphan's record
    // goes first, then its policy (below). A failure here is repaired by
    // the policy's own reconcile: chains for a gone interface match nothing.
    let policy = (!collected).then(|| {
        note_endpoint(ctx, ep);
        let (ctx, cid) = (ctx.clone(), ep.value.container_id.clone());
        tokio::spawn(async move {
            if let Err(e) = reconcile_policy(&ctx, dry_run).await {
                tracing::warn!(container = %cid, error = %format!("{e:#}"), "policy not updated before removal");
            }
        })
    });
    let started = std::time::Instant::now();
    let removed = ctx
        .dataplane
        .remove(ep.value.container_id.clone(), dry_run)
        .await;
    let unlinked_us = started.elapsed().as_micros() as u64;
    if let Some(task) = policy {
        let _ = task.await; // its failure was logged; the policy's own runs repair it
    }
    let policy_us = started.elapsed().as_micros() as u64;
    let actions = match removed {
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
        // One transaction: the addresses are never free while the record
        // still names them, and never held once it is gone.
        let deletion = endpoint::deletion(ep);
        let Some(released) =
            ipam::release_held_with(ctx.store.as_ref(), &ep.value.holders, &deletion)?
        else {
            anyhow::bail!(
                "the intent of container {} changed while it was being removed",
                ep.value.container_id
            );
        };
        tracing::debug!(
            container = %ep.value.container_id,
            unlinked_us,
            policy_us,
            took_us = started.elapsed().as_micros() as u64,
            "endpoint removed"
        );
        if collected {
            if let Err(e) = reconcile_policy(ctx, dry_run).await {
                tracing::warn!(container = %ep.value.container_id, error = %format!("{e:#}"), "policy not updated after collection");
            }
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

/// Releases the allocations this node collects that no endpoint of the
/// cluster uses, `leak_grace` after their last allocation (see
/// `ipam::leaks`); with `dry_run` only finds them. An isolate that records
/// its endpoint while this runs, that long after its allocate, can lose
/// its addresses: the grace is there to make that moment never come.
pub fn collect_leaked_addresses(ctx: &NodeContext, dry_run: bool) -> anyhow::Result<Vec<Leak>> {
    let in_use = ctx.endpoints.with_current(ctx.store.as_ref(), |all| {
        let mut in_use = InUse::default();
        for ep in all.values() {
            in_use.addresses.extend(addresses(ep));
            in_use.uids.extend(ep.holders.values().cloned());
        }
        in_use
    })?;
    let leaks = ipam::collect_leaks(
        ctx.store.as_ref(),
        &ctx.node,
        &in_use,
        ctx.leak_grace,
        dry_run,
    )?;
    for leak in leaks.iter().filter(|_| !dry_run) {
        tracing::info!(uid = %leak.uid, addresses = ?leak.addresses, age_s = leak.age.as_secs(), "released an allocation no endpoint used");
    }
    Ok(leaks)
}

/// Lists the node's endpoints and removes (or, in a dry run, only lists)
/// what of ours none of them accounts for: `cali*` veths with our alias
/// whose name is no endpoint's, and routes of ours through one of our
/// veths for an address its endpoint does not have. The kernel is read
/// before the store: an endpoint is recorded before its link is made, so
/// every link seen has its record in the list.
pub async fn list_and_sweep(ctx: &NodeContext, dry_run: bool) -> anyhow::Result<Sweep> {
    let inventory = ctx.dataplane.inventory().await?;
    // Read from the store, not the endpoint cache: a link just made must
    // find its endpoint here, and the cache may not have seen it yet. (The
    // daemon's replica of an etcd store has it: links are only made by the
    // node lock's holder, after it read or wrote the endpoint through that
    // same store.)
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
        ctx.dataplane.apply_node(strays.clone()).await?;
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
#[derive(Debug)]
pub struct Pass {
    /// Per container: what happened, or the store error.
    pub outcomes: Vec<(String, Result<Outcome, String>)>,
    /// Links of ours no endpoint accounts for, removed (or to remove).
    pub strays: Vec<Action>,
    /// What the node's policy needed (or the error).
    pub policy: Result<Vec<PolicyAction>, String>,
    /// What the node's routes to other nodes needed (or the error).
    pub fabric: Result<Vec<FabricAction>, String>,
    /// Allocations no endpoint uses, released (or to release), or the error.
    pub leaks: Result<Vec<Leak>, String>,
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
    ctx: &Arc<NodeContext>,
    dry_run: bool,
    concurrency: usize,
) -> anyhow::Result<Pass> {
    use futures::StreamExt;
    let Sweep {
        endpoints, strays, ..
    } = list_and_sweep(ctx, dry_run).await?;
    // Policy first, read from the kernel: after a reboot the table is gone,
    // and veths made below are then never open before their policy exists.
    if let Some(policy) = &ctx.policy {
        policy.forget();
    }
    let policy = reconcile_policy(ctx, dry_run)
        .await
        .map_err(|e| format!("{e:#}"));
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
    let fabric = super::fabric::reconcile_fabric(ctx, dry_run)
        .await
        .map_err(|e| format!("{e:#}"));
    let leaks = collect_leaked_addresses(ctx, dry_run).map_err(|e| format!("{e:#}"));
    Ok(Pass {
        outcomes,
        strays,
        policy,
        fabric,
        leaks,
    })
}
