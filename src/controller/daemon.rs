//! `calico-mesos daemon`: the node's reconcile loop, running until told to
//! stop. Triggers come from kicks (plugin processes), store changes,
//! kernel events (one socket in the node namespace that hears every
//! container namespace too), container exits, and a periodic resync; the
//! runner reconciles each endpoint they name.
//!
//! A graceful stop finishes the reconciles in progress and leaves the
//! dataplane in place.

use super::converge::{Converge, ConvergeError, Reconciler};
use super::dataplane::Home;
use super::echoes::OwnRequests;
use super::fabric::FabricView;
use super::freshness::Freshness;
use super::index::OwnerIndex;
use super::key_locks::KeyLocks;
use super::kick::{self, KickReply, KickRequest, ServeRequest};
use super::link_book::{LinkBook, Side, Verdict};
use super::lock::NodeLock;
use super::loop_status::{self, LoopStatus};
use super::nsids::{NsidMap, Origin};
use super::reconcile::{
    collect_leaked_addresses, list_and_sweep, reconcile_endpoint, reconcile_policy, spec_of,
    NodeContext, Outcome, Sweep,
};
use super::runner::{self, RunResult, Trigger};
use super::scheduler::BACKOFF_MIN;
use crate::config::Config;
use crate::endpoint::{self, Endpoint, NetnsId};
use crate::ipam::Block;
use crate::node;
use crate::plugin::{self, request};
use crate::store::mirror::MirroredStore;
use crate::store::{self, keys, Change, Store, StoreError};
use anyhow::Context as _;
use reconcilers::endpoint::{Action, CONTAINER_IFNAME, GATEWAY_V4, GATEWAY_V6};
use reconcilers::events::{Event, Events, KernelEvent, ProcessExit};
use reconcilers::policy::{NftEvent, NftEvents};
use reconcilers::HOST_IFNAME_PREFIX;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

/// How many endpoints are reconciled at once.
pub const CONCURRENCY: usize = 8;
/// How often the store is polled for changes nobody kicked us about.
pub const STORE_POLL: Duration = Duration::from_millis(500);
/// How long a kernel event waits before its endpoint is reconciled, so a
/// burst of events (a veth being deleted sends several) makes one run.
pub const EVENT_DELAY: Duration = Duration::from_millis(5);
/// One resync in this many reads our nftables table back from the kernel.
pub const READ_BACK_EVERY: u64 = 10;
/// How long a graceful stop waits for reconciles in progress.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an nftables change by someone else waits before our table is
/// checked, so a burst of commits makes one check.
pub const POLICY_EVENT_DELAY: Duration = Duration::from_millis(20);

/// What the runner reconciles: one endpoint, or the node's policy table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Work {
    /// The endpoint of this container id.
    Endpoint(String),
    /// The node's nftables policy.
    Policy,
    /// The node's routes to other nodes' blocks.
    Fabric,
}

type Triggers = mpsc::Sender<Trigger<Work>>;

/// State shared by the daemon's tasks.
struct Shared {
    ctx: Arc<NodeContext>,
    /// The daemon's configuration (requests it serves are answered with it).
    config: Config,
    /// Held while a served IPAM request runs (one at a time per node).
    ipam_writer: Mutex<()>,
    /// Served allocations waiting for the IPAM writer (see
    /// [`allocate_grouped`]).
    allocations: Mutex<
        Vec<(
            request::Allocate,
            std::sync::mpsc::SyncSender<plugin::Answer>,
        )>,
    >,
    index: OwnerIndex,
    /// Container ids with a live watch of their process's exit, and the
    /// namespace they had then.
    watchers: Mutex<HashMap<String, (NetnsId, AbortHandle)>>,
    /// The container each namespace id (the tag on kernel events from
    /// inside containers) names.
    nsids: NsidMap,
    /// The id the node's namespace has for itself, if any: its own events
    /// carry it then (see `EndpointDataplane::node_nsid`).
    node_nsid: Mutex<Option<i32>>,
    /// Kernel events from namespaces no endpoint accounts for (the node's
    /// gateway, a container not yet Ready, one just gone), ignored.
    unattributed: std::sync::atomic::AtomicU64,
    /// The port ids our own kernel changes carry (their echoes are skipped).
    own_requests: OwnRequests,
    /// What each endpoint's last reconcile read back of its links.
    links: LinkBook,
    /// Kernel events that needed no look: the echoes of our own changes,
    /// and events that change nothing the planner reads.
    skipped: std::sync::atomic::AtomicU64,
    triggers: mpsc::WeakSender<Trigger<Work>>,
    started_ms: u64,
    /// Endpoints known right without looking (see [`Freshness`]).
    fresh: Freshness,
    /// Held by each reconcile of an endpoint, by container id: the runner
    /// and [`run_now`] never run one endpoint at once.
    running: KeyLocks<String>,
    /// Resyncs so far.
    resyncs: std::sync::atomic::AtomicU64,
    /// What tells which store changes can move the fabric routes (blocks'
    /// nodes, other nodes' endpoints with borrowed addresses); `None` until
    /// read (or when it could not be read after a relist): then every
    /// block and endpoint change counts.
    fabric_view: Mutex<Option<FabricView>>,
    /// When allocations no endpoint uses were last collected.
    leaks_collected: Mutex<Option<Instant>>,
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(
    config: &Config,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Some(lock) = NodeLock::try_acquire(&config.run_dir)
        .with_context(|| format!("cannot take the node lock in {}", config.run_dir.display()))?
    else {
        anyhow::bail!(
            "another calico-mesos daemon or reconcile holds {}: one daemon per node",
            super::lock::lock_path(&config.run_dir).display()
        );
    };
    // The node's context first (with policy disabled that removes our
    // table): a daemon that listens has its configuration in force.
    // Plugins that kick meanwhile find no socket and wait for it, since
    // the node lock is held.
    // On etcd the daemon reads from a replica of the store that the watch
    // keeps current, and writes through it (store::mirror).
    let store: Arc<dyn Store> = match MirroredStore::new(store.clone()) {
        Some(mirrored) => Arc::new(mirrored),
        None => store,
    };
    let ctx = Arc::new(NodeContext::open(config, store.clone(), Home::OwnThread).await?);
    let socket = kick::socket_path(&config.run_dir);
    // We hold the lock, so a socket file left here is a dead daemon's.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;

    let own_requests = OwnRequests::new(
        std::iter::once(ctx.dataplane.node_port_id())
            .chain(ctx.fabric.as_ref().map(|f| f.port_id())),
        reconcilers::events::container_port_id(),
    );
    let (tx, rx) = mpsc::channel::<Trigger<Work>>(16_384);
    let shared = Arc::new(Shared {
        ctx,
        config: config.clone(),
        ipam_writer: Mutex::new(()),
        allocations: Mutex::new(Vec::new()),
        index: OwnerIndex::default(),
        watchers: Mutex::new(HashMap::new()),
        nsids: NsidMap::default(),
        node_nsid: Mutex::new(None),
        unattributed: Default::default(),
        own_requests,
        links: LinkBook::default(),
        skipped: Default::default(),
        triggers: tx.downgrade(),
        started_ms: endpoint::now_ms(),
        fresh: Freshness::default(),
        running: KeyLocks::default(),
        resyncs: Default::default(),
        fabric_view: Mutex::new(None),
        leaks_collected: Mutex::new(None),
    });
    let runner = tokio::spawn(runner::run(rx, CONCURRENCY, {
        let shared = shared.clone();
        move |work: Work| {
            let shared = shared.clone();
            async move {
                match work {
                    Work::Endpoint(cid) => shared.reconcile(cid).await,
                    Work::Policy => shared.reconcile_policy().await,
                    Work::Fabric => shared.reconcile_fabric().await,
                }
            }
        }
    }));

    let mut tasks = JoinSet::new();
    node::register(store.as_ref(), &config.nodename, &shared.ctx.node_addresses)?;
    let liveness = node::Liveness::of_this_process();
    node::renew(store.as_ref(), &config.nodename, &liveness)?;
    loop_status::put(
        store.as_ref(),
        &config.nodename,
        &LoopStatus {
            mode: "daemon".into(),
            pid: std::process::id(),
            started_ms: shared.started_ms,
            last_full_pass_ms: None,
            endpoints: 0,
            failed: 0,
        },
    )?;
    let revision = store.revision()?;
    // Read after the revision: later changes reach it through the watch.
    shared.read_fabric_view();
    shared.resync(&tx).await?;
    tracing::info!(node = %config.nodename, socket = %socket.display(), "daemon started");
    let (stop_accepting, stopping) = watch::channel(false);
    let mut accepting = tokio::spawn(accept(listener, shared.clone(), stopping));
    tasks.spawn(watch_store(shared.clone(), tx.clone(), revision));
    tasks.spawn(watch_kernel(shared.clone(), tx.clone()));
    tasks.spawn(keep_alive(shared.clone(), liveness));
    if shared.ctx.policy.is_some() {
        tasks.spawn(watch_nftables(shared.clone(), tx.clone()));
    }
    tasks.spawn(resync_every(
        shared.clone(),
        tx.clone(),
        config.resync_interval,
    ));
    drop(tx);

    tokio::select! {
        () = shutdown => tracing::info!("stopping: finishing the reconciles in progress"),
        Some(ended) = tasks.join_next() => {
            tracing::error!(?ended, "a daemon task ended unexpectedly; stopping");
        }
    }
    // No new requests; the ones being answered are finished first (the
    // runner still runs for them).
    let _ = stop_accepting.send(true);
    if tokio::time::timeout(STOP_TIMEOUT, &mut accepting)
        .await
        .is_err()
    {
        tracing::warn!("requests still being answered after {STOP_TIMEOUT:?}; stopping anyway");
        accepting.abort();
    }
    // Every sender goes with these tasks; the runner then finishes what
    // runs and returns.
    tasks.shutdown().await;
    for (_, (_, watcher)) in shared.watchers.lock().expect("watchers lock").drain() {
        watcher.abort();
    }
    if tokio::time::timeout(STOP_TIMEOUT, runner).await.is_err() {
        tracing::warn!("reconciles still running after {STOP_TIMEOUT:?}; stopping anyway");
    }
    if let Err(e) = node::sign_off(store.as_ref(), &config.nodename) {
        tracing::warn!(error = %e, "cannot sign the node off; it shows as up until its lease expires");
    }
    let _ = std::fs::remove_file(&socket);
    drop(lock);
    tracing::info!("daemon stopped");
    Ok(())
}

fn describe(actions: &[Action]) -> String {
    actions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Shared {
    /// Counts a kernel event that needed no look.
    fn skip(&self) {
        self.skipped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn trigger(&self, cid: String, delay: Duration, reset_backoff: bool) {
        if let Some(tx) = self.triggers.upgrade() {
            let _ = tx.try_send(Trigger {
                key: Work::Endpoint(cid),
                at: Instant::now() + delay,
                done: None,
                reset_backoff,
            });
        }
    }

    fn trigger_work(&self, work: Work, delay: Duration) {
        if let Some(tx) = self.triggers.upgrade() {
            let _ = tx.try_send(Trigger {
                at: Instant::now() + delay,
                ..Trigger::now(work)
            });
        }
    }

    /// One reconcile of an endpoint, the runner's or a served request's
    /// ([`run_now`]), under the endpoint's key lock: reconcile, then keep
    /// watchers and the index in step with what happened.
    async fn reconcile(self: Arc<Self>, cid: String) -> Result<(), String> {
        let _running = self.running.lock(cid.clone()).await;
        let started = std::time::Instant::now();
        let token = self.fresh.start(&cid);
        let run = self.links.begin(&cid);
        let outcome = reconcile_endpoint(&self.ctx, &cid, false)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let read_back = match &outcome {
            Outcome::Ready { links, .. } => Some((**links).clone()),
            _ => None,
        };
        if run.finish(read_back) {
            // A link changed again after the read-back.
            self.fresh.touch(&cid);
            self.trigger(cid.clone(), EVENT_DELAY, false);
        }
        match &outcome {
            Outcome::Removed { released, .. } | Outcome::Collected { released, .. } => {
                tracing::info!(container = %cid, outcome = outcome.kind(), actions = %describe(outcome.actions()), released = ?released, "reconciled");
            }
            Outcome::Ready { actions, .. } if actions.is_empty() => {}
            Outcome::Unknown | Outcome::Failed { .. } => {}
            _ => {
                tracing::info!(container = %cid, outcome = outcome.kind(), actions = %describe(outcome.actions()), "reconciled")
            }
        }
        let key = keys::endpoint(&self.ctx.node, &cid);
        match outcome {
            Outcome::Ready {
                generation,
                container_nsid,
                ..
            } => {
                let reconciled_us = started.elapsed().as_micros() as u64;
                match self.clone().watch(&cid, container_nsid) {
                    // Right now, and every later change will be seen.
                    Ok(()) => self.fresh.verified(&cid, generation, token),
                    Err(e) => {
                        tracing::debug!(container = %cid, error = %e, "the container is not watched; the resync re-checks it")
                    }
                }
                tracing::debug!(container = %cid, reconciled_us, took_us = started.elapsed().as_micros() as u64, "reconciled and watched");
                Ok(())
            }
            Outcome::Orphaned { remaining } => {
                self.unwatch(&cid);
                self.fresh.forget(&cid);
                self.trigger(cid, remaining, false);
                Ok(())
            }
            Outcome::Removed { .. } | Outcome::Collected { .. } | Outcome::Unknown => {
                self.unwatch(&cid);
                self.fresh.forget(&cid);
                self.links.forget(&cid);
                self.index.remove_key(&key);
                Ok(())
            }
            Outcome::Failed { message } => Err(message),
        }
    }

    /// One run of the node's policy: the table made to match the store.
    async fn reconcile_policy(self: Arc<Self>) -> Result<(), String> {
        let actions = reconcile_policy(&self.ctx, false)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if !actions.is_empty() {
            let list: Vec<String> = actions.iter().map(ToString::to_string).collect();
            tracing::info!(actions = %list.join("; "), "policy reconciled");
        }
        Ok(())
    }

    /// One run of the node's fabric routes: made to match the store.
    async fn reconcile_fabric(self: Arc<Self>) -> Result<(), String> {
        let actions = super::fabric::reconcile_fabric(&self.ctx, false)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if !actions.is_empty() {
            let list: Vec<String> = actions.iter().map(ToString::to_string).collect();
            tracing::info!(actions = %list.join("; "), "routes to other nodes reconciled");
        }
        Ok(())
    }

    /// Asks for a run of the node's policy, read from the kernel (it may
    /// have been changed behind our back).
    fn recheck_policy(&self, delay: Duration) {
        if let Some(policy) = &self.ctx.policy {
            policy.forget();
            self.trigger_work(Work::Policy, delay);
        }
    }

    /// Watches the container: events from inside its namespace (id
    /// `nsid` in the node's, heard by the node's one event socket, see
    /// [`watch_kernel`]) and its process's exit; either re-enqueues the
    /// endpoint. Nothing of ours stays open in the container's namespace
    /// (a pidfd refers to the process), so it is free to go when the
    /// process exits. Fails when either cannot be watched: the endpoint
    /// is then not counted as fresh.
    fn watch(self: Arc<Self>, cid: &str, nsid: Option<i32>) -> anyhow::Result<()> {
        let key = keys::endpoint(&self.ctx.node, cid);
        let ep = match self.index.endpoint(&key) {
            Some(ep) => ep,
            None => match endpoint::get(self.ctx.store.as_ref(), &self.ctx.node, cid)? {
                Some(v) => {
                    self.index.upsert(v.value.clone());
                    v.value
                }
                None => return Ok(()),
            },
        };
        let Some(nsid) = nsid else {
            anyhow::bail!("the node has no id for the container's namespace");
        };
        self.nsids.insert(nsid, cid);
        if let Some((netns, task)) = self.watchers.lock().expect("watchers lock").get(cid) {
            if *netns == ep.netns && !task.is_finished() {
                return Ok(());
            }
        }
        let exit = ProcessExit::watch(ep.netns.pid)?;
        let shared = self.clone();
        let id = cid.to_string();
        let task = tokio::spawn(async move {
            exit.exited().await;
            shared.fresh.touch(&id);
            shared.trigger(id, Duration::ZERO, false);
        });
        if let Some((_, old)) = self
            .watchers
            .lock()
            .expect("watchers lock")
            .insert(cid.to_string(), (ep.netns, task.abort_handle()))
        {
            old.abort();
        }
        Ok(())
    }

    fn unwatch(&self, cid: &str) {
        self.nsids.remove(cid);
        if let Some((_, task)) = self.watchers.lock().expect("watchers lock").remove(cid) {
            task.abort();
        }
    }

    /// Lists everything: removes our links no endpoint accounts for, then
    /// enqueues every endpoint of the node; once all have run, records the
    /// pass in the loop status.
    async fn resync(self: &Arc<Self>, tx: &Triggers) -> anyhow::Result<()> {
        let Sweep {
            endpoints,
            strays,
            inventory,
        } = list_and_sweep(&self.ctx, false).await?;
        if !strays.is_empty() {
            tracing::info!(actions = %describe(&strays), "removed links and routes no endpoint accounts for");
        }
        self.collect_leaks();
        match self.ctx.dataplane.node_nsid().await {
            Ok(nsid) => *self.node_nsid.lock().expect("node nsid lock") = nsid,
            Err(e) => tracing::warn!(error = %e, "cannot read the node namespace's id for itself"),
        }
        self.index.replace_all(endpoints.iter().cloned());
        let total = endpoints.len();
        // Stale endpoints, and fresh ones whose node side the inventory
        // shows changed without an event (a sysctl changed behind our back).
        let stale: Vec<Endpoint> = endpoints
            .into_iter()
            .filter(|ep| {
                !self.fresh.is_fresh(&ep.container_id, ep.generation)
                    || !self
                        .ctx
                        .dataplane
                        .host_side_matches(&spec_of(ep), &inventory)
            })
            .collect();
        tracing::debug!(
            total,
            stale = stale.len(),
            watched = self.nsids.len(),
            unattributed_events = self.unattributed.load(std::sync::atomic::Ordering::Relaxed),
            skipped_events = self.skipped.load(std::sync::atomic::Ordering::Relaxed),
            "resync"
        );
        // Every commit to nftables makes an event, so the table is read
        // back (costly on a big node) only every READ_BACK_EVERY resyncs,
        // in case events were lost unnoticed; the other resyncs compare
        // the store with what we applied (cheap, no nft run).
        let count = self
            .resyncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if count.is_multiple_of(READ_BACK_EVERY) {
            self.recheck_policy(Duration::ZERO);
        } else {
            self.trigger_work(Work::Policy, Duration::ZERO);
        }
        self.trigger_work(Work::Fabric, Duration::ZERO);
        let mut finished = Vec::with_capacity(stale.len());
        for ep in stale {
            let (done, rx) = oneshot::channel();
            let trigger = Trigger {
                done: Some(done),
                ..Trigger::now(Work::Endpoint(ep.container_id))
            };
            if tx.send(trigger).await.is_ok() {
                finished.push(rx);
            }
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let count = total;
            for rx in finished {
                if rx.await.is_err() {
                    return; // stopping
                }
            }
            shared.record_pass(count);
        });
        Ok(())
    }

    /// Releases allocations no endpoint uses (the whole store's handles are
    /// read): at most every quarter of `leak_grace`, so a leak is released
    /// at most a quarter of the grace late, and most resyncs skip it.
    fn collect_leaks(&self) {
        let mut last = self.leaks_collected.lock().expect("leak collection lock");
        if last.is_some_and(|at| at.elapsed() < self.ctx.leak_grace / 4) {
            return;
        }
        match collect_leaked_addresses(&self.ctx, false) {
            Ok(_) => *last = Some(Instant::now()),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot collect allocations no endpoint uses; will retry at the next resync")
            }
        }
    }

    /// (Re)reads the [`FabricView`] from the store; on failure it is
    /// forgotten, so that every change counts until the next relist.
    fn read_fabric_view(&self) {
        let view = match FabricView::read(self.ctx.store.as_ref(), &self.ctx.node) {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list blocks and endpoints; every change re-runs the routes to other nodes");
                None
            }
        };
        *self.fabric_view.lock().expect("fabric view lock") = view;
    }

    fn record_pass(&self, endpoints: usize) {
        let store = self.ctx.store.as_ref();
        let failed = endpoint::list_statuses(store, &self.ctx.node)
            .map(|s| {
                s.values()
                    .filter(|s| s.phase == crate::endpoint::Phase::Failed)
                    .count()
            })
            .unwrap_or(0);
        let status = LoopStatus {
            mode: "daemon".into(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            last_full_pass_ms: Some(endpoint::now_ms()),
            endpoints,
            failed,
        };
        if let Err(e) = loop_status::put(store, &self.ctx.node, &status) {
            tracing::warn!(error = %e, "cannot record the loop status");
        }
    }
}

/// Serves the kick socket until `stop` turns true, then stops listening
/// and finishes the requests being answered. Each connection either asks
/// for one endpoint (answered once a reconcile that started after the ask
/// has finished, run directly: [`run_now`]) or hands over a net-modules
/// request (answered here).
async fn accept(listener: UnixListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // The only change ever sent is the stop (or the sender gone).
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the kick socket failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // From here a plugin finds nobody listening and waits for the lock.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(stream: UnixStream, shared: Arc<Shared>) {
    let started = std::time::Instant::now();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(kick::MAX_LINE_BYTES));
    let request =
        match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<KickRequest>(&line),
            _ => return,
        };
    let reply = match request {
        Ok(KickRequest::Reconcile(cid)) => {
            let recorded = kicked(&shared, &cid);
            match run_now(shared, cid, recorded).await {
                Ok(()) => KickReply::Done,
                Err(why) => KickReply::Failed(why),
            }
        }
        Ok(KickRequest::Serve(request)) => match refusal(&shared.config, &request) {
            Some(why) => KickReply::Refused(why),
            // A plugin gone before this reply has not had anything done.
            None if send(&mut write, &KickReply::Accepted).await.is_err() => return,
            None => KickReply::Answer(serve(shared, request).await),
        },
        Err(e) => KickReply::Refused(format!("unreadable request: {e}")),
    };
    let _ = send(&mut write, &reply).await;
    tracing::debug!(
        took_us = started.elapsed().as_micros() as u64,
        "kick socket request answered"
    );
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &KickReply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_string(reply).expect("a kick reply serialises");
    line.push('\n');
    write.write_all(line.as_bytes()).await
}

/// The endpoint a kicking plugin process recorded for `cid`, read for the
/// owner index (the store's change may reach the daemon later).
fn kicked(shared: &Shared, cid: &str) -> Option<Endpoint> {
    endpoint::get(shared.ctx.store.as_ref(), &shared.ctx.node, cid)
        .ok()
        .flatten()
        .map(|ep| ep.value)
}

/// Reconciles `cid`'s endpoint here and now, for a request the daemon
/// serves (`recorded`, its intent as the caller knows it, goes into the
/// owner index first), without a trip through the runner: every hand-off
/// between threads is a wake-up on the isolate's path. The endpoint's key
/// lock keeps it from running beside a run of the runner; a failed run is
/// handed to the runner, to be retried with backoff. A failed run may
/// have written no status (the store refused it), so the caller must not
/// read the status as current then.
async fn run_now(shared: Arc<Shared>, cid: String, recorded: Option<Endpoint>) -> RunResult {
    if let Some(ep) = recorded {
        shared.index.upsert(ep);
    }
    let result = shared.clone().reconcile(cid.clone()).await;
    if result.is_err() {
        shared.trigger(cid, BACKOFF_MIN, true);
    }
    result
}

/// Why the daemon will not answer a plugin's request for it: the plugin is
/// configured for another node or store. `None`: it will.
fn refusal(config: &Config, request: &ServeRequest) -> Option<String> {
    let mine = (&config.nodename, &config.datastore, &config.etcd.prefix);
    let theirs = (&request.node, &request.datastore, &request.etcd_prefix);
    (mine != theirs).then(|| {
        format!(
            "this daemon serves node {:?} on {} (prefix {:?}); the request is for node {:?} on {} (prefix {:?})",
            mine.0, mine.1, mine.2, theirs.0, theirs.1, theirs.2
        )
    })
}

/// Answers a plugin's request with the daemon's store, reconciling its
/// endpoint directly ([`Directly`]); the plugin's `isolate_timeout`
/// bounds the dataplane wait.
async fn serve(shared: Arc<Shared>, request: ServeRequest) -> serde_json::Value {
    let runtime = tokio::runtime::Handle::current();
    // The store's calls block: they run on a thread made for that.
    let answered = tokio::task::spawn_blocking(move || {
        let mut config = shared.config.clone();
        config.isolate_timeout = Duration::from_millis(request.isolate_timeout_ms.max(1));
        let converger = Directly {
            shared: shared.clone(),
            runtime,
        };
        let answer = match plugin::parse(request.request.as_bytes()) {
            Ok(plugin::Request::Allocate(args)) => allocate_grouped(&shared, args),
            Ok(request) => {
                // One IPAM writer per node: concurrent allocations of one
                // node would all take the next address of the same block
                // and retry each other's conflicts.
                let _writer = request
                    .is_ipam()
                    .then(|| shared.ipam_writer.lock().expect("IPAM writer lock"));
                plugin::execute(&shared.ctx.store, &config, &converger, request)
            }
            Err(invalid) => plugin::Answer::error(invalid.0),
        };
        tracing::debug!(ok = answer.is_ok(), "answered a plugin's request");
        answer.body
    })
    .await;
    answered
        .unwrap_or_else(|e| plugin::Answer::error(format!("the daemon failed to answer: {e}")).body)
}

/// Answers a served allocate together with the node's other allocations
/// waiting by then, in one store transaction (a group commit): each
/// request queues itself, then takes the IPAM writer; whoever holds it
/// runs everything queued, so a request finds its answer there or made by
/// an earlier holder. With several agents' tasks starting at once, one
/// etcd round trip (and one WAL sync) serves them all.
fn allocate_grouped(shared: &Shared, args: request::Allocate) -> plugin::Answer {
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    shared
        .allocations
        .lock()
        .expect("allocation queue lock")
        .push((args, answer));
    let _writer = shared.ipam_writer.lock().expect("IPAM writer lock");
    if let Ok(done) = answered.try_recv() {
        return done; // in an earlier holder's group
    }
    let group = std::mem::take(&mut *shared.allocations.lock().expect("allocation queue lock"));
    let requests: Vec<&request::Allocate> = group.iter().map(|(args, _)| args).collect();
    let answers = plugin::allocate_all(shared.ctx.store.as_ref(), &shared.ctx.node, &requests);
    if group.len() > 1 {
        tracing::debug!(requests = group.len(), "allocations committed together");
    }
    for ((_, waiting), answer) in group.iter().zip(answers) {
        let _ = waiting.send(answer);
    }
    answered
        .try_recv()
        .expect("a request queued before its holder took the writer is in its group")
}

/// The daemon's way to converge an endpoint for a request it serves:
/// [`run_now`], on the thread that serves the request.
struct Directly {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl Converge for Directly {
    fn converge(
        &self,
        recorded: &Endpoint,
        timeout: Duration,
    ) -> Result<Reconciler, ConvergeError> {
        let mut run = Box::pin(run_now(
            self.shared.clone(),
            recorded.container_id.clone(),
            Some(recorded.clone()),
        ));
        match self
            .runtime
            .block_on(tokio::time::timeout(timeout, &mut run))
        {
            Ok(Ok(())) => Ok(Reconciler::Daemon),
            Ok(Err(why)) => Err(ConvergeError::Other(anyhow::anyhow!(why))),
            Err(_) => {
                // Not cut off half-way: it finishes in the background,
                // holding the endpoint's key until then.
                self.runtime.spawn(run);
                Err(ConvergeError::Timeout(timeout))
            }
        }
    }
}

/// Renews the node's liveness lease while the daemon runs. A renewal the
/// store refuses (an outage) is retried at the next tick; the dataplane is
/// never touched for lack of the store.
async fn keep_alive(shared: Arc<Shared>, liveness: node::Liveness) {
    let mut tick = tokio::time::interval(node::RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = node::renew(shared.ctx.store.as_ref(), &shared.ctx.node, &liveness) {
            tracing::warn!(error = %e, "cannot renew the node's liveness; will retry");
        }
    }
}

/// Follows the store: endpoint intent changed by anyone re-enqueues it.
/// Polls every [`STORE_POLL`], and at once when the store signals a change
/// (etcd's watch: another node's change arrives within milliseconds).
async fn watch_store(shared: Arc<Shared>, tx: Triggers, mut revision: store::Revision) {
    let store = shared.ctx.store.clone();
    let prefix = keys::endpoints_of(&shared.ctx.node);
    let mut tick = tokio::time::interval(STORE_POLL);
    let mut signal = store.change_signal();
    loop {
        match signal.as_mut() {
            Some(changes) => {
                let closed = tokio::select! {
                    _ = tick.tick() => false,
                    changed = changes.changed() => changed.is_err(),
                };
                if closed {
                    signal = None; // the store stopped signalling: poll only
                }
            }
            None => {
                tick.tick().await;
            }
        }
        let changes = match store.changes_since(revision) {
            Ok(changes) => changes,
            Err(StoreError::Compacted { .. }) => {
                tracing::info!("store history compacted past our revision; relisting");
                match store.revision() {
                    Ok(r) => revision = r,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the store revision");
                        continue;
                    }
                }
                shared.read_fabric_view();
                if let Err(e) = shared.resync(&tx).await {
                    tracing::warn!(error = %format!("{e:#}"), "resync failed");
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read store changes; will retry");
                continue;
            }
        };
        revision = changes.revision;
        let mut policy_changed = false;
        let mut fabric_changed = false;
        // This node's own endpoints bring the policy up to date in their
        // own reconcile (matched above, before this guard).
        let affects_policy = |key: &str| {
            key.starts_with(keys::PROFILES)
                || (key.starts_with(keys::ENDPOINTS) && !key.starts_with(&prefix))
        };
        for change in &changes.changes {
            let (key, value) = match change {
                Change::Put(kv) => (&kv.key, Some(kv)),
                Change::Delete { key, .. } => (key, None),
            };
            fabric_changed |= affects_fabric(&shared, key, value);
        }
        for change in changes.changes {
            match change {
                Change::Put(kv) if kv.key.starts_with(&prefix) => {
                    match store::decode::<Endpoint>(&kv) {
                        Ok(ep) => {
                            let cid = ep.container_id.clone();
                            // Usually the isolate that wrote it kicked us
                            // and its reconcile verified this generation
                            // already: another run would find nothing.
                            // Every change of intent makes a new generation.
                            let verified = shared.fresh.is_fresh(&cid, ep.generation);
                            shared.index.upsert(ep);
                            if verified {
                                continue;
                            }
                            let _ = tx
                                .send(Trigger {
                                    reset_backoff: true,
                                    ..Trigger::now(Work::Endpoint(cid))
                                })
                                .await;
                        }
                        Err(e) => tracing::warn!(error = %e, "undecodable endpoint"),
                    }
                }
                Change::Delete { key, .. } if key.starts_with(&prefix) => {
                    if let Some(cid) = shared.index.remove_key(&key) {
                        shared.unwatch(&cid);
                    }
                }
                // Profiles, and other nodes' endpoints (netgroup members),
                // feed the node's policy.
                Change::Put(kv) if affects_policy(&kv.key) => policy_changed = true,
                Change::Delete { key, .. } if affects_policy(&key) => policy_changed = true,
                _ => {}
            }
        }
        if fabric_changed && shared.ctx.fabric.is_some() {
            let _ = tx.send(Trigger::now(Work::Fabric)).await;
        }
        if policy_changed && shared.ctx.policy.is_some() {
            let _ = tx.send(Trigger::now(Work::Policy)).await;
        }
    }
}

/// Whether a store change may move this node's routes to other nodes: a
/// node's record, a block whose node affinity is new or changed
/// (allocations inside a block do not move routes), or another node's
/// endpoint that holds, or held, an address borrowed from a block not
/// affine to its node (one with an address in its own node's blocks is
/// covered by that block's route). Without a [`FabricView`], every block
/// and other node's endpoint counts.
fn affects_fabric(shared: &Shared, key: &str, value: Option<&store::KeyValue>) -> bool {
    if key.starts_with(keys::NODES) {
        return true;
    }
    let is_block = key.starts_with(keys::BLOCKS);
    let is_other_endpoint =
        key.starts_with(keys::ENDPOINTS) && !key.starts_with(&keys::endpoints_of(&shared.ctx.node));
    if !is_block && !is_other_endpoint {
        return false;
    }
    let mut view = shared.fabric_view.lock().expect("fabric view lock");
    let Some(view) = view.as_mut() else {
        return true;
    };
    match (is_block, value) {
        (true, value) => view.block_changed(
            key,
            value
                .and_then(|kv| store::decode::<Block>(kv).ok())
                .as_ref(),
        ),
        (false, Some(kv)) => view.endpoint_put(key, store::decode::<Endpoint>(kv).ok().as_ref()),
        (false, None) => view.endpoint_deleted(key),
    }
}

/// Follows nftables commits in the node namespace: a commit made by anyone
/// but us (our libnftables context's thread, or our `nft` processes), or
/// lost notifications, has our table read back and repaired.
async fn watch_nftables(shared: Arc<Shared>, tx: Triggers) {
    drop(tx); // triggers go through `recheck_policy`
    let mut events = match NftEvents::new() {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to nftables events; relying on the resync");
            std::future::pending::<()>().await;
            return;
        }
    };
    let ours = |pid: Option<u32>| {
        let policy = shared.ctx.policy.as_ref();
        pid.is_some_and(|pid| policy.is_some_and(|p| p.spawned_by_us(pid)))
    };
    while let Some(event) = events.next().await {
        match event {
            NftEvent::Committed { pid, .. } if ours(pid) => {}
            NftEvent::Committed { pid, .. } => {
                tracing::debug!(?pid, "nftables changed by someone else; checking our table");
                shared.recheck_policy(POLICY_EVENT_DELAY);
            }
            NftEvent::Overrun => {
                tracing::warn!("nftables events were lost; checking our table");
                shared.recheck_policy(POLICY_EVENT_DELAY);
            }
        }
    }
    tracing::error!("the nftables event subscription ended; relying on the resync");
    std::future::pending::<()>().await;
}

/// Follows the kernel's events, of the node namespace and (tagged with
/// their namespace's id) of every container's, on one socket: a change
/// inside a container re-enqueues its endpoint; in the node, a change to
/// one of our links, or to a route for a container address, does.
async fn watch_kernel(shared: Arc<Shared>, tx: Triggers) {
    let mut events = match Events::all_namespaces() {
        Ok(events) => events,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to kernel events; relying on the resync");
            std::future::pending::<()>().await;
            return;
        }
    };
    while let Some(Event {
        nsid,
        requester,
        kind: event,
    }) = events.next().await
    {
        if let KernelEvent::Overrun = event {
            tracing::warn!("kernel events were lost; every endpoint will be re-checked");
            shared.fresh.touch_all();
            shared.trigger_work(Work::Fabric, EVENT_DELAY);
            continue;
        }
        let node_nsid = *shared.node_nsid.lock().expect("node nsid lock");
        let origin = shared.nsids.origin(nsid, node_nsid);
        if shared.own_requests.made(&origin, requester) {
            // The reconcile that made this change has read it back.
            shared.skip();
            continue;
        }
        tracing::trace!(?origin, requester, ?event, "kernel event");
        let owner = match origin {
            Origin::Node => node_event_owner(&shared, &event),
            Origin::Container(cid) => {
                if container_event_needs_look(&shared, &cid, &event) {
                    shared.fresh.touch(&cid);
                    shared.trigger(cid, EVENT_DELAY, false);
                } else {
                    shared.skip();
                }
                continue;
            }
            Origin::Unknown(nsid) => {
                shared
                    .unattributed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::trace!(
                    nsid,
                    ?event,
                    "event from a namespace no endpoint accounts for"
                );
                continue;
            }
        };
        let owner = match owner {
            NodeEvent::Owner(cid) => Some(cid),
            NodeEvent::Nobody => None,
            NodeEvent::Unchanged => {
                shared.skip();
                continue;
            }
        };
        // A route of ours that no endpoint owns may be a fabric route.
        if let (
            KernelEvent::Route {
                protocol: reconcilers::ROUTE_PROTOCOL,
                ..
            },
            None,
        ) = (&event, &owner)
        {
            shared.trigger_work(Work::Fabric, EVENT_DELAY);
            continue;
        }
        if let Some(cid) = owner {
            shared.fresh.touch(&cid);
            let _ = tx
                .send(Trigger {
                    at: Instant::now() + EVENT_DELAY,
                    ..Trigger::now(Work::Endpoint(cid))
                })
                .await;
        }
    }
    tracing::error!("the kernel event subscription ended; relying on the resync");
    std::future::pending::<()>().await;
}

/// What a kernel event in the node's own namespace is about.
enum NodeEvent {
    /// Something of this endpoint's changed: it needs a look.
    Owner(String),
    /// No endpoint's (the fabric may still care).
    Nobody,
    /// An endpoint's host link, with nothing changed that the planner
    /// reads (see [`LinkBook`]), or held for the reconcile in progress.
    Unchanged,
}

/// Whose is a kernel event in the node's namespace: the endpoint whose
/// host link it is about, or that holds the address of a host route or of
/// a neighbour entry (ours: a permanent one on its host link).
fn node_event_owner(shared: &Shared, event: &KernelEvent) -> NodeEvent {
    match event {
        KernelEvent::Link { facts, deleted } if facts.name.starts_with(HOST_IFNAME_PREFIX) => {
            match shared.index.owner_of_link(&facts.name) {
                None => NodeEvent::Nobody,
                Some(cid)
                    if !deleted
                        && shared.links.event(&cid, Side::Host, facts) != Verdict::Recheck =>
                {
                    NodeEvent::Unchanged
                }
                Some(cid) => NodeEvent::Owner(cid),
            }
        }
        KernelEvent::Route {
            dst, prefix_len, ..
        } if *prefix_len == if dst.is_ipv4() { 32 } else { 128 } => shared
            .index
            .owner_of_addr(dst)
            .map_or(NodeEvent::Nobody, NodeEvent::Owner),
        KernelEvent::Neighbour {
            address: Some(address),
            ..
        } => shared
            .index
            .owner_of_addr(address)
            .map_or(NodeEvent::Nobody, NodeEvent::Owner),
        _ => NodeEvent::Nobody,
    }
}

/// Whether a kernel event inside `cid`'s container needs a look. Not:
/// the kernel's own routes (local, multicast, link: they follow address
/// and link changes, which have events of their own, and none is the
/// planner's); an address of the endpoint's own appearing (as wanted:
/// the kernel says so again when duplicate address detection ends);
/// `eth0` with nothing changed that the planner reads; a neighbour entry
/// other than the gateways' (the only ones the planner makes there).
fn container_event_needs_look(shared: &Shared, cid: &str, event: &KernelEvent) -> bool {
    match event {
        KernelEvent::Route {
            protocol: libc::RTPROT_KERNEL,
            ..
        } => false,
        KernelEvent::Address {
            deleted: false,
            address: Some(address),
            ..
        } => shared.index.owner_of_addr(address).as_deref() != Some(cid),
        KernelEvent::Link {
            facts,
            deleted: false,
        } if facts.name == CONTAINER_IFNAME => {
            shared.links.event(cid, Side::Eth0, facts) == Verdict::Recheck
        }
        KernelEvent::Neighbour { address, .. } => {
            *address == Some(IpAddr::V4(GATEWAY_V4)) || *address == Some(IpAddr::V6(GATEWAY_V6))
        }
        _ => true,
    }
}

/// Resyncs every `interval`.
async fn resync_every(shared: Arc<Shared>, tx: Triggers, interval: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        if let Err(e) = shared.resync(&tx).await {
            tracing::warn!(error = %format!("{e:#}"), "resync failed");
        }
    }
}
