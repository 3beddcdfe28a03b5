//! `calico-mesos ipam show`.

use calico_mesos::ipam;
use calico_mesos::store::Store;
use clap::{Subcommand, ValueEnum};

/// IPAM commands.
#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Show per pool its size, used and free addresses, and per node its blocks.
    Show {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// One JSON document.
    Json,
}

/// Run an IPAM command.
pub fn run(store: &dyn Store, command: IpamCommand) -> anyhow::Result<()> {
    let IpamCommand::Show { output } = command;
    let usage = ipam::usage(store)?;
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(&usage)?);
        return Ok(());
    }
    println!(
        "{:<40} {:>6} {:>22} {:>8} {:>22} {:>7}",
        "POOL", "BLOCK", "SIZE", "USED", "FREE", "BLOCKS"
    );
    for p in &usage.pools {
        let cidr = if p.disabled {
            format!("{} (disabled)", p.cidr)
        } else {
            p.cidr.to_string()
        };
        println!(
            "{:<40} {:>6} {:>22} {:>8} {:>22} {:>7}",
            cidr,
            format!("/{}", p.block_size),
            p.size,
            p.used,
            p.free,
            p.blocks
        );
    }
    for (node, blocks) in &usage.nodes {
        let name = if node.is_empty() {
            "(no affinity)"
        } else {
            node
        };
        println!("\nnode {name}: {} blocks", blocks.len());
        for b in blocks {
            println!(
                "  {:<40} {:>5}/{:<5} used",
                b.cidr.to_string(),
                b.used,
                b.size
            );
        }
    }
    Ok(())
}
