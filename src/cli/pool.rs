//! `calico-mesos pool add|list|remove`.

use calico_mesos::ipam::{self, IpPool};
use calico_mesos::store::Store;
use clap::Subcommand;
use ipnet::IpNet;

/// Pool commands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Add a pool that containers' addresses are taken from.
    Add {
        /// The pool, e.g. 198.18.0.0/16 or 2001:db8:1::/64.
        cidr: IpNet,
        /// Prefix length of the blocks nodes claim (default 26 for IPv4, 122 for IPv6).
        #[arg(long, value_name = "N")]
        block_size: Option<u8>,
    },
    /// List pools.
    List,
    /// Remove a pool (refused while any of its addresses is in use).
    Remove {
        /// The pool's CIDR, as listed.
        cidr: IpNet,
    },
}

/// Run a pool command.
pub fn run(store: &dyn Store, command: PoolCommand) -> anyhow::Result<()> {
    match command {
        PoolCommand::Add { cidr, block_size } => {
            let pool = IpPool::new(cidr, block_size)?;
            ipam::add_pool(store, &pool)?;
            println!("added pool {} (blocks of /{})", pool.cidr, pool.block_size);
        }
        PoolCommand::List => {
            println!("{:<40} {:>10} {:>8}", "CIDR", "BLOCK SIZE", "DISABLED");
            for pool in ipam::list_pools(store)? {
                let p = pool.value;
                println!(
                    "{:<40} {:>10} {:>8}",
                    p.cidr.to_string(),
                    format!("/{}", p.block_size),
                    p.disabled
                );
            }
        }
        PoolCommand::Remove { cidr } => {
            ipam::remove_pool(store, &cidr)?;
            println!("removed pool {cidr}");
        }
    }
    Ok(())
}
