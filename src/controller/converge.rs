//! Getting one endpoint reconciled *now*, for a front end that waits on it
//! ([`Converge`]). From a process of its own ([`KickOrInline`]): ask the
//! node's daemon (a kick), or, when no daemon runs, reconcile in this
//! process under the node lock. Inside the daemon, the thread serving the
//! request runs it, under the endpoint's key lock. Every way, the same
//! [`reconcile_endpoint`] runs.

use super::dataplane::Home;
use super::kick::{kick, KickError};
use super::lock::NodeLock;
use super::reconcile::{reconcile_endpoint, NodeContext};
use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciler {
    /// The node's daemon, after a kick.
    Daemon,
    /// This process, holding the node lock.
    Inline,
}

/// Why the endpoint could not be reconciled in time.
#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    /// The deadline passed.
    #[error("no reconcile finished within {0:?}")]
    Timeout(Duration),
    /// The daemon could not be asked, or the inline reconcile failed.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// How a front end has one endpoint reconciled now.
pub trait Converge {
    /// Has the endpoint reconciled within `timeout`; `recorded` is the
    /// intent just written (or found) in the store. On Ok the status in
    /// the store shows the result. A daemon's run that failed is an error,
    /// since it may have written no status (the store refused the write).
    fn converge(&self, recorded: &Endpoint, timeout: Duration)
        -> Result<Reconciler, ConvergeError>;
}

/// A front end in a process of its own: kicks the daemon, or reconciles
/// inline when none runs ([`converge`]).
pub struct KickOrInline<'a> {
    /// The store the front end opened.
    pub store: &'a Arc<dyn Store>,
    /// Its configuration.
    pub config: &'a Config,
}

impl Converge for KickOrInline<'_> {
    fn converge(
        &self,
        recorded: &Endpoint,
        timeout: Duration,
    ) -> Result<Reconciler, ConvergeError> {
        converge(self.store, self.config, &recorded.container_id, timeout)
    }
}

/// Has `container_id`'s endpoint reconciled within `timeout`, by the
/// daemon or inline; the status in the store then shows the result.
pub fn converge(
    store: &Arc<dyn Store>,
    config: &Config,
    container_id: &str,
    timeout: Duration,
) -> Result<Reconciler, ConvergeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConvergeError::Timeout(timeout));
        }
        match kick(&config.run_dir, container_id, left) {
            Ok(()) => return Ok(Reconciler::Daemon),
            Err(KickError::NoDaemon(_)) => {}
            // A daemon that is stopping refuses; it releases the lock soon.
            Err(KickError::Refused(why)) => tracing::debug!(%why, "daemon refused a kick"),
            Err(KickError::Timeout(t)) => return Err(ConvergeError::Timeout(t)),
            Err(KickError::Failed(why)) => return Err(ConvergeError::Other(anyhow::anyhow!(why))),
            Err(e) => return Err(ConvergeError::Other(e.into())),
        }
        if let Some(lock) = NodeLock::try_acquire(&config.run_dir).map_err(anyhow::Error::from)? {
            inline(store, config, container_id, left)?;
            drop(lock);
            return Ok(Reconciler::Inline);
        }
        // A daemon is starting or another process reconciles: try again.
        std::thread::sleep(Duration::from_millis(2).min(left));
    }
}

fn inline(
    store: &Arc<dyn Store>,
    config: &Config,
    container_id: &str,
    timeout: Duration,
) -> Result<(), ConvergeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    runtime.block_on(async {
        let ctx = Arc::new(NodeContext::open(config, store.clone(), Home::Here).await?);
        match tokio::time::timeout(timeout, reconcile_endpoint(&ctx, container_id, false)).await {
            Ok(result) => result.map(drop).map_err(ConvergeError::Other),
            Err(_) => Err(ConvergeError::Timeout(timeout)),
        }
    })
}
