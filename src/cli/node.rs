//! `calico-mesos node list|remove`: the cluster's nodes, whether each is up
//! (its daemon renews its lease), and removing one for good.

use super::ipam::Output;
use calico_mesos::endpoint::now_ms;
use calico_mesos::ipam;
use calico_mesos::node::{self, remove::remove_node};
use calico_mesos::store::Store;
use serde::Serialize;
use std::collections::BTreeMap;

/// Node commands.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// List nodes: fabric addresses, up or down, blocks and endpoints.
    List {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove a node that is gone: release its addresses, delete its blocks
    /// and records. Other nodes drop their routes to it.
    Remove {
        /// The node's name.
        name: String,
        /// Remove it even while its daemon still renews its lease.
        #[arg(long)]
        force: bool,
    },
}

/// One row of `node list`.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    addresses: Vec<String>,
    up: bool,
    /// The daemon's pid when up.
    pid: Option<u32>,
    /// For how long the daemon has been up (seconds).
    up_for_s: Option<u64>,
    blocks: usize,
    endpoints: usize,
}

/// Run a node command.
pub fn run(store: &dyn Store, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::List { output } => {
            let usage = ipam::usage(store)?;
            let mut endpoints: BTreeMap<String, usize> = BTreeMap::new();
            for ep in calico_mesos::policy::all_endpoints(store)? {
                *endpoints.entry(ep.node).or_default() += 1;
            }
            let rows: Vec<Row> = node::list(store)?
                .into_iter()
                .map(|v| Row {
                    blocks: usage.nodes.get(&v.node.name).map_or(0, Vec::len),
                    endpoints: endpoints.get(&v.node.name).copied().unwrap_or(0),
                    addresses: v.node.addresses.iter().map(ToString::to_string).collect(),
                    up: v.alive.is_some(),
                    pid: v.alive.as_ref().map(|a| a.pid),
                    up_for_s: v
                        .alive
                        .as_ref()
                        .map(|a| now_ms().saturating_sub(a.since_ms) / 1000),
                    name: v.node.name,
                })
                .collect();
            print_list(&rows, output)
        }
        NodeCommand::Remove { name, force } => {
            let removed = remove_node(store, &name, force)?;
            println!(
                "removed node {name}: {} endpoint(s), {} address(es) released, {} block(s) deleted",
                removed.endpoints,
                removed.released.len(),
                removed.blocks.len()
            );
            Ok(())
        }
    }
}

fn print_list(rows: &[Row], output: Output) -> anyhow::Result<()> {
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<40} {:<6} {:>10} {:>7} {:>9}",
        "NAME", "ADDRESSES", "STATE", "UP FOR", "BLOCKS", "ENDPOINTS"
    );
    for r in rows {
        let up_for = r.up_for_s.map_or("-".to_string(), |s| format!("{s}s"));
        println!(
            "{:<24} {:<40} {:<6} {:>10} {:>7} {:>9}",
            r.name,
            r.addresses.join(","),
            if r.up { "up" } else { "down" },
            up_for,
            r.blocks,
            r.endpoints
        );
    }
    Ok(())
}
