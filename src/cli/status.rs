//! `calico-mesos status [--output json]`: this node's endpoints as the
//! loop last reported them.

use super::ipam::Output;
use calico_mesos::config::Config;
use calico_mesos::controller::kick::daemon_listening;
use calico_mesos::controller::loop_status;
use calico_mesos::endpoint::{self, Phase};
use calico_mesos::store::Store;
use reconcilers::endpoint::host_ifname;
use serde::Serialize;

/// One row of the status table.
#[derive(Debug, Serialize)]
struct Row {
    container_id: String,
    interface: String,
    mac: String,
    ipv4: Vec<String>,
    ipv6: Vec<String>,
    netgroups: Vec<String>,
    phase: Phase,
    generation: u64,
    observed_generation: u64,
    message: String,
    /// When the loop last reconciled it (ms since the epoch).
    last_reconcile_ms: Option<u64>,
}

/// Print the table (or JSON).
pub fn run(config: &Config, store: &dyn Store, output: Output) -> anyhow::Result<()> {
    let node = &config.nodename;
    let statuses = endpoint::list_statuses(store, node)?;
    let loop_status = loop_status::get(store, node)?;
    let last_pass = loop_status.as_ref().and_then(|l| l.last_full_pass_ms);
    let mut rows = Vec::new();
    for ep in endpoint::list(store, node)? {
        let ep = ep.value;
        let status = statuses.get(&keys_segment(&ep.container_id));
        let (phase, observed, message, mac, changed) = match status {
            Some(s) if s.observed_generation >= ep.generation => (
                s.phase,
                s.observed_generation,
                s.message.clone(),
                s.mac.clone(),
                Some(s.last_reconcile_ms),
            ),
            Some(s) => (
                Phase::Pending,
                s.observed_generation,
                String::new(),
                s.mac.clone(),
                None,
            ),
            None => (Phase::Pending, 0, String::new(), String::new(), None),
        };
        let phase = if ep.deletion_requested && phase != Phase::Failed {
            Phase::Terminating
        } else {
            phase
        };
        // A status is written when it changes; a full pass that ended later
        // re-checked it too.
        let last = match (changed, last_pass) {
            (Some(c), Some(p)) => Some(c.max(p)),
            (c, _) => c,
        };
        rows.push(Row {
            interface: host_ifname(&ep.container_id),
            container_id: ep.container_id,
            mac,
            ipv4: ep.ipv4.iter().map(ToString::to_string).collect(),
            ipv6: ep.ipv6.iter().map(ToString::to_string).collect(),
            netgroups: ep.netgroups,
            phase,
            generation: ep.generation,
            observed_generation: observed,
            message,
            last_reconcile_ms: last,
        });
    }
    if let Output::Json = output {
        let daemon_up = daemon_listening(&config.run_dir);
        let doc = serde_json::json!({ "node": node, "daemon_running": daemon_up, "loop": loop_status, "endpoints": rows });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let now = endpoint::now_ms();
    let daemon_up = daemon_listening(&config.run_dir);
    println!(
        "daemon: {}",
        if daemon_up {
            "running"
        } else {
            "not running (isolate and cleanup reconcile inline; nothing repairs drift in between)"
        }
    );
    match &loop_status {
        Some(l) => println!(
            "node {node}: last loop {} (pid {}){}",
            l.mode,
            l.pid,
            l.last_full_pass_ms
                .map(|t| format!(
                    ", last full pass {} ago over {} endpoint(s), {} failed",
                    age(now, t),
                    l.endpoints,
                    l.failed
                ))
                .unwrap_or_default()
        ),
        None => println!("node {node}: no reconcile has run yet"),
    }
    println!(
        "{:<38} {:<16} {:<34} {:<20} {:<11} {:>8}",
        "CONTAINER", "INTERFACE", "ADDRESSES", "NETGROUPS", "PHASE", "LAST"
    );
    for r in &rows {
        let addrs: Vec<&str> = r.ipv4.iter().chain(&r.ipv6).map(String::as_str).collect();
        println!(
            "{:<38} {:<16} {:<34} {:<20} {:<11} {:>8}",
            r.container_id,
            r.interface,
            addrs.join(","),
            r.netgroups.join(","),
            r.phase.to_string(),
            r.last_reconcile_ms
                .map(|t| age(now, t))
                .unwrap_or_else(|| "-".into()),
        );
        if !r.message.is_empty() {
            println!("  {}", r.message);
        }
    }
    Ok(())
}

/// How the status map is keyed: the escaped container id.
fn keys_segment(container_id: &str) -> String {
    calico_mesos::store::keys::escape(container_id)
}

/// "3s", "5m", "2h", "4d".
fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
