//! `calico-mesos reconcile [--dry-run]`: one pass over every endpoint of
//! this node, then exit; what runs at boot and after an outage.

use calico_mesos::config::Config;
use calico_mesos::controller::dataplane::Home;
use calico_mesos::controller::lock::NodeLock;
use calico_mesos::controller::loop_status::{self, LoopStatus};
use calico_mesos::controller::reconcile::{full_pass, NodeContext, Outcome, Pass};
use calico_mesos::endpoint;
use calico_mesos::node;
use calico_mesos::store::Store;
use std::sync::Arc;

/// How many endpoints are reconciled at once.
const CONCURRENCY: usize = 8;

/// Run one pass; fails (exit status 1) if any endpoint failed.
pub fn run(config: &Config, store: Arc<dyn Store>, dry_run: bool) -> anyhow::Result<()> {
    let Some(lock) = NodeLock::try_acquire(&config.run_dir)? else {
        anyhow::bail!(
            "a calico-mesos daemon (or another reconcile) is running on this node and holds {}; \
             the daemon reconciles continuously: see `calico-mesos status`",
            calico_mesos::controller::lock::lock_path(&config.run_dir).display()
        );
    };
    let started_ms = endpoint::now_ms();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pass = runtime.block_on(async {
        let ctx =
            std::sync::Arc::new(NodeContext::open(config, store.clone(), Home::OwnThread).await?);
        if !dry_run {
            node::register(store.as_ref(), &config.nodename, &ctx.node_addresses)?;
        }
        full_pass(&ctx, dry_run, CONCURRENCY).await
    })?;
    print!("{}", summary(&pass, dry_run));
    if !dry_run {
        loop_status::put(
            store.as_ref(),
            &config.nodename,
            &LoopStatus {
                mode: "reconcile".into(),
                pid: std::process::id(),
                started_ms,
                last_full_pass_ms: Some(endpoint::now_ms()),
                endpoints: pass.outcomes.len(),
                failed: pass.failed(),
            },
        )?;
    }
    drop(lock);
    if let Err(message) = &pass.policy {
        anyhow::bail!("the node's policy could not be applied: {message}");
    }
    if let Err(message) = &pass.fabric {
        anyhow::bail!("the routes to other nodes could not be applied: {message}");
    }
    if let Err(message) = &pass.leaks {
        anyhow::bail!("allocations no endpoint uses could not be collected: {message}");
    }
    match pass.failed() {
        0 => Ok(()),
        n => anyhow::bail!("{n} endpoint(s) failed"),
    }
}

/// The readable summary: one block per endpoint that changed or is not
/// Ready, then totals.
fn summary(pass: &Pass, dry_run: bool) -> String {
    let verb = if dry_run { "would" } else { "did" };
    let mut out = String::new();
    let mut outcomes: Vec<_> = pass.outcomes.iter().collect();
    outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut ready, mut changed, mut removed, mut orphaned, mut failed) = (0, 0, 0, 0, 0);
    for (cid, result) in outcomes {
        let (label, detail) = match result {
            Ok(Outcome::Ready { actions, .. }) if actions.is_empty() => {
                ready += 1;
                continue;
            }
            Ok(Outcome::Ready { .. }) => {
                ready += 1;
                changed += 1;
                ("ready", String::new())
            }
            Ok(Outcome::Removed { released, .. }) | Ok(Outcome::Collected { released, .. }) => {
                removed += 1;
                (
                    "removed",
                    format!("{verb} release {} address(es)", released.len()),
                )
            }
            Ok(Outcome::Orphaned { remaining }) => {
                orphaned += 1;
                (
                    "orphaned",
                    format!("container gone; collected in {}s", remaining.as_secs()),
                )
            }
            Ok(Outcome::Failed { message }) => {
                failed += 1;
                ("FAILED", message.clone())
            }
            Ok(Outcome::Unknown) => continue,
            Err(message) => {
                failed += 1;
                ("FAILED", message.clone())
            }
        };
        out.push_str(&format!("{cid}: {label}"));
        if !detail.is_empty() {
            out.push_str(&format!(" ({detail})"));
        }
        out.push('\n');
        for a in result.as_ref().map(|o| o.actions()).unwrap_or_default() {
            out.push_str(&format!("  {a}\n"));
        }
    }
    for a in &pass.strays {
        out.push_str(&format!("stray: {a}\n"));
    }
    match &pass.policy {
        Ok(actions) => {
            for a in actions {
                out.push_str(&format!("policy: {a}\n"));
            }
        }
        Err(message) => out.push_str(&format!("policy: FAILED ({message})\n")),
    }
    match &pass.fabric {
        Ok(actions) => {
            for a in actions {
                out.push_str(&format!("route: {a}\n"));
            }
        }
        Err(message) => out.push_str(&format!("routes: FAILED ({message})\n")),
    }
    match &pass.leaks {
        Ok(leaks) => {
            for leak in leaks {
                let addresses: Vec<String> =
                    leak.addresses.iter().map(ToString::to_string).collect();
                out.push_str(&format!(
                    "leaked: uid {} ({}), allocated {}s ago and used by no endpoint: {verb} release\n",
                    leak.uid,
                    addresses.join(", "),
                    leak.age.as_secs()
                ));
            }
        }
        Err(message) => out.push_str(&format!("leaked allocations: FAILED ({message})\n")),
    }
    let what = if dry_run { "would change" } else { "changed" };
    out.push_str(&format!(
        "{} endpoint(s): {ready} ready ({changed} {what}), {removed} removed, {orphaned} orphaned, {failed} failed; {} stray link(s) or route(s); {} policy change(s); {} route(s) to other nodes changed; {} leaked allocation(s) {}\n",
        pass.outcomes.len(),
        pass.strays.len(),
        pass.policy.as_ref().map_or(0, Vec::len),
        pass.fabric.as_ref().map_or(0, Vec::len),
        pass.leaks.as_ref().map_or(0, Vec::len),
        if dry_run { "to release" } else { "released" }
    ));
    out
}
