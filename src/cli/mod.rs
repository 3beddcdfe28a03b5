//! Command-line front end: argument definitions and one small function per
//! command. Commands print to stdout; logs go to stderr.

pub mod daemon;
pub mod ipam;
pub mod node;
pub mod plugin;
pub mod pool;
pub mod profile;
pub mod reconcile;
pub mod status;

use calico_mesos::config::Config;
use calico_mesos::store::{self, Store};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// IP-per-container networking for Apache Mesos agents.
///
/// Run with no arguments, calico-mesos is the net-modules plugin: it reads one
/// JSON request on stdin and writes one JSON answer on stdout.
#[derive(Debug, Parser)]
#[command(name = "calico-mesos", version, about, long_about)]
pub struct Cli {
    /// Configuration file (default /etc/calico-mesos/config.yaml, or $CALICO_MESOS_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The operator command; none = net-modules plugin mode.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage IP pools.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Inspect IP address management.
    #[command(subcommand)]
    Ipam(ipam::IpamCommand),
    /// The cluster's nodes: list them, remove one that is gone.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Inspect policy profiles (netgroup, public, host).
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Inspect the desired-state store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Run this node's reconcile loop until SIGTERM (graceful: finishes the
    /// reconciles in progress, leaves the dataplane in place).
    Daemon,
    /// Reconcile every endpoint of this node once and exit (at boot, after
    /// an outage); exit status 1 if any failed.
    Reconcile {
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show this node's endpoints: interface, addresses, netgroups, phase,
    /// age of the last reconcile.
    Status {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = ipam::Output::Table)]
        output: ipam::Output,
    },
}

/// Store inspection.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Print every key and value with the store revision, as JSON lines.
    Dump,
}

/// Run an operator command.
pub fn run(config_path: Option<&Path>, command: Command) -> ExitCode {
    let result = (|| {
        let config = Config::load(config_path)?;
        init_logging(&config, false);
        let store: Arc<dyn Store> = store::open(&config.store_options())?.into();
        match command {
            Command::Pool(cmd) => pool::run(store.as_ref(), cmd),
            Command::Ipam(cmd) => ipam::run(store.as_ref(), cmd),
            Command::Profile(cmd) => profile::run(store.as_ref(), cmd),
            Command::Node(cmd) => node::run(store.as_ref(), cmd),
            Command::Store(StoreCommand::Dump) => dump(store.as_ref()),
            Command::Daemon => daemon::run(&config, store),
            Command::Reconcile { dry_run } => reconcile::run(&config, store, dry_run),
            Command::Status { output } => status::run(&config, store.as_ref(), output),
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dump(store: &dyn Store) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "{}",
        serde_json::json!({ "revision": store.revision()? })
    )?;
    for kv in store.list("", None)? {
        let value: serde_json::Value =
            serde_json::from_slice(&kv.value).unwrap_or(serde_json::Value::Null);
        let line =
            serde_json::json!({ "key": kv.key, "mod_revision": kv.mod_revision, "value": value });
        writeln!(out, "{line}")?;
    }
    Ok(out.flush()?)
}

/// Send logs to stderr (and the configured log file) at the configured level.
pub fn init_logging(config: &Config, quiet_stderr: bool) {
    use tracing_subscriber::{filter::LevelFilter, fmt, layer::SubscriberExt, Layer, Registry};
    let level = LevelFilter::from_level(config.log_level);
    let stderr = (!quiet_stderr).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .with_filter(level)
    });
    let file = config.log_file.as_ref().and_then(|path| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("cannot open log file {}: {e}", path.display()))
            .ok()?;
        Some(
            fmt::layer()
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .with_filter(level),
        )
    });
    let _ = tracing::subscriber::set_global_default(Registry::default().with(stderr).with(file));
}
