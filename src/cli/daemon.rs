//! `calico-mesos daemon`: run this node's reconcile loop until SIGTERM or
//! SIGINT.

use calico_mesos::config::Config;
use calico_mesos::controller::daemon;
use calico_mesos::store::Store;
use std::sync::Arc;

/// Run the daemon.
pub fn run(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(daemon::run(config, store, async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }))
}
