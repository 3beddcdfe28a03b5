//! Where the endpoint reconciler runs: in the caller's runtime, or on a
//! thread of its own with a single-threaded runtime (the daemon's choice).
//!
//! An ensure is some twenty netlink requests, each a message to the
//! connection's task and an answer back. On the daemon's multi-threaded
//! runtime that task and the ensure often sit on different workers, so
//! every request wakes another thread, and on a VM whose idle vCPUs halt a
//! wake-up is tens of microseconds. On one thread the request, the
//! kernel's answer (already queued when `sendmsg` returns) and the ensure
//! run back to back: two handoffs per call (there and back) instead of two
//! per request. The rest of the daemon (store calls, policy, events) stays
//! on the multi-threaded runtime.

use anyhow::Context as _;
use reconcilers::endpoint::{
    Action, EndpointDataplane, EndpointError, EndpointSpec, Ensured, Inventory,
};
use reconcilers::NlError;
use std::future::Future;
use std::sync::Arc;

/// Where [`Dataplane::open`] puts the endpoint reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// In the calling runtime: for one-shot processes (the plugin without
    /// a daemon), where a thread would cost more than it saves.
    Here,
    /// On a thread of its own, `calico-dataplane`, with a single-threaded
    /// runtime: for the daemon and the `reconcile` command.
    OwnThread,
}

/// The node's endpoint reconciler, at its [`Home`]. Derefs to it for its
/// synchronous methods; the async ones are run at home.
pub struct Dataplane {
    inner: Arc<EndpointDataplane>,
    thread: Option<Thread>,
}

/// The dataplane's own thread: its runtime's handle, and what stops it.
struct Thread {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Dataplane {
    /// Connects to the calling thread's network namespace (the node's; a
    /// new thread starts in its creator's namespace). Must run in a tokio
    /// runtime.
    pub fn open(home: Home) -> anyhow::Result<Dataplane> {
        match home {
            Home::Here => Ok(Dataplane {
                inner: Arc::new(EndpointDataplane::new()?),
                thread: None,
            }),
            Home::OwnThread => Self::on_own_thread(),
        }
    }

    fn on_own_thread() -> anyhow::Result<Dataplane> {
        let (ready, opened) = std::sync::mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name("calico-dataplane".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(anyhow::Error::from(e)
                            .context("cannot build the dataplane thread's runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let opened = EndpointDataplane::new()
                        .map(|dp| (Arc::new(dp), tokio::runtime::Handle::current()))
                        .map_err(anyhow::Error::from);
                    let failed = opened.is_err();
                    let _ = ready.send(opened);
                    if !failed {
                        // Runs the spawned calls until the Dataplane is
                        // dropped (or every sender is gone).
                        let _ = stopped.await;
                    }
                });
            })
            .context("cannot start the dataplane thread")?;
        let (inner, runtime) = opened
            .recv()
            .context("the dataplane thread ended before it opened")??;
        Ok(Dataplane {
            inner,
            thread: Some(Thread {
                runtime,
                stop: Some(stop),
                join: Some(join),
            }),
        })
    }

    /// Runs `call` at home: there when it has a thread of its own, else in
    /// the caller's task. A call cut short because the thread stopped
    /// (only when the daemon ends) fails as a closed connection.
    async fn at_home<T, F>(
        &self,
        call: impl FnOnce(Arc<EndpointDataplane>) -> F,
    ) -> Result<T, EndpointError>
    where
        F: Future<Output = Result<T, EndpointError>> + Send + 'static,
        T: Send + 'static,
    {
        let Some(thread) = &self.thread else {
            return call(self.inner.clone()).await;
        };
        match thread.runtime.spawn(call(self.inner.clone())).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(EndpointError::Netlink(NlError::Closed)),
        }
    }

    /// [`EndpointDataplane::ensure`], at home.
    pub async fn ensure(
        &self,
        spec: EndpointSpec,
        dry_run: bool,
    ) -> Result<Ensured, EndpointError> {
        self.at_home(|dp| async move { dp.ensure(&spec, dry_run).await })
            .await
    }

    /// [`EndpointDataplane::remove`], at home.
    pub async fn remove(
        &self,
        container_id: String,
        dry_run: bool,
    ) -> Result<Vec<Action>, EndpointError> {
        self.at_home(|dp| async move { dp.remove(&container_id, dry_run).await })
            .await
    }

    /// [`EndpointDataplane::apply_node`], at home.
    pub async fn apply_node(&self, actions: Vec<Action>) -> Result<(), EndpointError> {
        self.at_home(|dp| async move { dp.apply_node(&actions).await })
            .await
    }

    /// [`EndpointDataplane::inventory`], at home.
    pub async fn inventory(&self) -> Result<Inventory, EndpointError> {
        self.at_home(|dp| async move { dp.inventory().await }).await
    }

    /// [`EndpointDataplane::node_nsid`], at home.
    pub async fn node_nsid(&self) -> Result<Option<i32>, EndpointError> {
        self.at_home(|dp| async move { dp.node_nsid().await }).await
    }
}

impl std::ops::Deref for Dataplane {
    type Target = EndpointDataplane;

    fn deref(&self) -> &EndpointDataplane {
        &self.inner
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(thread) = &mut self.thread {
            if let Some(stop) = thread.stop.take() {
                let _ = stop.send(());
            }
            // The runtime ends its tasks and the thread exits at once.
            if let Some(join) = thread.join.take() {
                let _ = join.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> Option<String> {
        std::thread::current().name().map(String::from)
    }

    /// Calls run on the dataplane's own thread when it has one, in the
    /// caller's task otherwise; dropping it ends the thread. (Only opens
    /// sockets in the test's namespace: nothing is changed there.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn calls_run_at_home_and_the_thread_ends_with_it() {
        let caller = thread_name();
        let here = Dataplane::open(Home::Here).expect("a netlink socket");
        let ran = here.at_home(|_| async { Ok(thread_name()) }).await.unwrap();
        assert_eq!(ran, caller);

        let own = Dataplane::open(Home::OwnThread).expect("a netlink socket");
        let ran = own.at_home(|_| async { Ok(thread_name()) }).await.unwrap();
        assert_eq!(ran.as_deref(), Some("calico-dataplane"));
        let runtime = own.thread.as_ref().unwrap().runtime.clone();
        drop(own);
        // The thread's runtime is shut down: nothing spawned there runs.
        let after = runtime.spawn(async {}).await;
        assert!(after.is_err_and(|e| e.is_cancelled()));
    }
}
