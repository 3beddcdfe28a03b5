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
            count(p.size),
            p.used,
            count(p.free),
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

/// An address count for the table: exact up to ten million, beyond that
/// (IPv6 pools) as a power of two, or a power of two minus the rest
/// (`2^64 − 3`), so the columns stay readable. JSON keeps exact numbers.
fn count(n: u128) -> String {
    const EXACT: u128 = 10_000_000;
    if n < EXACT {
        return n.to_string();
    }
    if n > 1 << 127 {
        return format!("{:.3e}", n as f64);
    }
    let above = n.next_power_of_two();
    let bits = above.trailing_zeros();
    match above - n {
        0 => format!("2^{bits}"),
        short if short < EXACT => format!("2^{bits} − {short}"),
        _ => format!("{:.3e}", n as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_stay_readable() {
        for (n, want) in [
            (0u128, "0"),
            (65_536, "65536"),
            (9_999_999, "9999999"),
            (1 << 64, "2^64"),
            ((1 << 64) - 3, "2^64 − 3"),
            (1 << 24, "2^24"),
            (3 << 40, "3.299e12"),
        ] {
            assert_eq!(count(n), want, "{n}");
        }
    }
}
