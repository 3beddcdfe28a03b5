//! Drives the [`Scheduler`]: takes triggers from a channel, runs due keys
//! with a concurrency cap, retries failures with backoff, and tells waiters
//! how a run that started after they asked has finished. Triggers are only
//! hints: the reconcile function reads the truth itself (level-triggered).

use super::scheduler::Scheduler;
use futures::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How a run ended: Ok, or the error message of a failed run.
pub type RunResult = Result<(), String>;

/// A request to reconcile a key.
#[derive(Debug)]
pub struct Trigger<K> {
    /// The key.
    pub key: K,
    /// When to run it (now, for events).
    pub at: Instant,
    /// Told once a run that started after this trigger has finished, with
    /// that run's result.
    pub done: Option<oneshot::Sender<RunResult>>,
    /// The key's intent changed: forget its backoff.
    pub reset_backoff: bool,
}

impl<K> Trigger<K> {
    /// Reconcile `key` now.
    pub fn now(key: K) -> Self {
        Trigger {
            key,
            at: Instant::now(),
            done: None,
            reset_backoff: false,
        }
    }
}

/// Run until the trigger channel closes and every run in progress finished.
/// `reconcile` returns Ok(()) or an error message (which schedules a retry).
pub async fn run<K, F, Fut>(
    mut triggers: mpsc::Receiver<Trigger<K>>,
    concurrency: usize,
    reconcile: F,
) where
    K: Clone + Eq + Hash + Ord + Send + Sync + std::fmt::Debug + 'static,
    F: Fn(K) -> Fut,
    Fut: Future<Output = RunResult> + Send + 'static,
{
    let mut scheduler = Scheduler::<K>::default();
    let mut waiting: HashMap<K, Vec<oneshot::Sender<RunResult>>> = HashMap::new();
    let mut in_run: HashMap<K, Vec<oneshot::Sender<RunResult>>> = HashMap::new();
    let mut tasks: JoinSet<(K, RunResult)> = JoinSet::new();
    let mut open = true;
    loop {
        // Start everything due, up to the cap.
        while tasks.len() < concurrency {
            let Some(key) = scheduler.pop_due(Instant::now()) else {
                break;
            };
            in_run.insert(key.clone(), waiting.remove(&key).unwrap_or_default());
            let run = reconcile(key.clone());
            tasks.spawn(async move {
                // A panic is a failed run of this key, not a lost key.
                let result = std::panic::AssertUnwindSafe(run)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err("the reconcile panicked".to_string()));
                (key, result)
            });
        }
        if !open && tasks.is_empty() {
            return;
        }
        let sleep_until = scheduler
            .next_deadline()
            .filter(|_| tasks.len() < concurrency);
        tokio::select! {
            trigger = triggers.recv(), if open => match trigger {
                Some(t) => {
                    if t.reset_backoff {
                        scheduler.reset_backoff(&t.key);
                    }
                    if let Some(done) = t.done {
                        waiting.entry(t.key.clone()).or_default().push(done);
                    }
                    scheduler.schedule(t.key, t.at);
                }
                // Stop taking work; finish what runs. Queued keys are dropped:
                // the next start lists and reconciles everything anyway.
                None => open = false,
            },
            Some(joined) = tasks.join_next() => {
                let (key, result) = match joined {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        tracing::error!(error = %e, "a reconcile task panicked");
                        continue;
                    }
                };
                let ok = result.is_ok();
                if let Err(message) = &result {
                    tracing::warn!(key = ?key, error = %message, "reconcile failed; will retry");
                }
                let retry = scheduler.finish(&key, ok, Instant::now(), rand::random::<f64>());
                if let Some(delay) = retry {
                    tracing::debug!(key = ?key, ?delay, "retry scheduled");
                }
                for waiter in in_run.remove(&key).unwrap_or_default() {
                    let _ = waiter.send(result.clone());
                }
            },
            _ = async {
                match sleep_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    type Log = Arc<Mutex<Vec<(String, u128)>>>;

    fn recorder(
        log: Log,
        fail_first: usize,
        start: Instant,
    ) -> impl Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let failures = Arc::new(Mutex::new(fail_first));
        move |key: String| {
            let log = log.clone();
            let failures = failures.clone();
            Box::pin(async move {
                log.lock().unwrap().push((key, start.elapsed().as_millis()));
                tokio::time::sleep(Duration::from_millis(10)).await;
                let mut left = failures.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return Err("boom".into());
                }
                Ok(())
            })
        }
    }

    /// Triggers `key` now with a waiter; the receiver of its run's result.
    async fn trigger_and_wait(
        tx: &mpsc::Sender<Trigger<String>>,
        key: &str,
    ) -> oneshot::Receiver<RunResult> {
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(Trigger {
            done: Some(done_tx),
            ..Trigger::now(key.to_string())
        })
        .await
        .unwrap();
        done_rx
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_triggers_run_once() {
        let log: Log = Default::default();
        let (tx, rx) = mpsc::channel(16);
        let runner = tokio::spawn(run(rx, 4, recorder(log.clone(), 0, Instant::now())));
        let soon = Instant::now() + Duration::from_millis(50);
        for _ in 0..5 {
            tx.send(Trigger {
                at: soon,
                ..Trigger::now("a".to_string())
            })
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Triggers while "a" runs: exactly one more run afterwards.
        for _ in 0..5 {
            tx.send(Trigger::now("a".to_string())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(tx);
        runner.await.unwrap();
        let runs = log.lock().unwrap().len();
        assert_eq!(runs, 3, "one run for the first burst, two for the second");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_growing_backoff() {
        let log: Log = Default::default();
        let (tx, rx) = mpsc::channel(16);
        let runner = tokio::spawn(run(rx, 4, recorder(log.clone(), 3, Instant::now())));
        tx.send(Trigger::now("a".to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(tx);
        runner.await.unwrap();
        let times: Vec<u128> = log.lock().unwrap().iter().map(|(_, t)| *t).collect();
        assert_eq!(times.len(), 4, "three failures then a success: {times:?}");
        let gaps: Vec<u128> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps[0] >= 60 && gaps[1] >= 110 && gaps[2] >= 210,
            "{gaps:?}"
        );
        assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_told_after_a_run_that_started_later() {
        let log: Log = Default::default();
        let (tx, rx) = mpsc::channel(16);
        let runner = tokio::spawn(run(rx, 4, recorder(log.clone(), 0, Instant::now())));
        tx.send(Trigger::now("a".to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await; // "a" is running
        let done_rx = trigger_and_wait(&tx, "a").await;
        assert_eq!(done_rx.await.unwrap(), Ok(()));
        assert_eq!(
            log.lock().unwrap().len(),
            2,
            "told only after the second run"
        );
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_told_why_its_run_failed_not_the_retry() {
        let log: Log = Default::default();
        let (tx, rx) = mpsc::channel(16);
        let runner = tokio::spawn(run(rx, 4, recorder(log.clone(), 1, Instant::now())));
        let done_rx = trigger_and_wait(&tx, "a").await;
        assert_eq!(done_rx.await.unwrap(), Err("boom".to_string()));
        assert_eq!(log.lock().unwrap().len(), 1, "told after the failed run");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(log.lock().unwrap().len(), 2, "and the key was retried");
        drop(tx);
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_resync_runs_at_its_deadline() {
        let log: Log = Default::default();
        let (tx, rx) = mpsc::channel(16);
        let start = Instant::now();
        let runner = tokio::spawn(run(rx, 1, recorder(log.clone(), 0, start)));
        tx.send(Trigger {
            at: start + Duration::from_secs(60),
            ..Trigger::now("b".to_string())
        })
        .await
        .unwrap();
        tx.send(Trigger::now("a".to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_secs(61)).await;
        drop(tx);
        runner.await.unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log[0].0, "a");
        assert_eq!(log[1], ("b".to_string(), 60_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_is_a_failure_of_its_key() {
        let runs = Arc::new(Mutex::new(0u32));
        let (tx, rx) = mpsc::channel(16);
        let counter = runs.clone();
        let runner = tokio::spawn(run(rx, 2, move |_key: String| {
            let counter = counter.clone();
            async move {
                let n = {
                    let mut runs = counter.lock().unwrap();
                    *runs += 1;
                    *runs
                };
                if n == 1 {
                    panic!("deliberate");
                }
                Ok(())
            }
        }));
        let done_rx = trigger_and_wait(&tx, "a").await;
        // The waiter of the panicked run is told so; the key is retried.
        assert_eq!(
            done_rx.await.unwrap(),
            Err("the reconcile panicked".to_string())
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*runs.lock().unwrap(), 2, "retried after the panic");
        drop(tx);
        runner.await.unwrap();
    }
}
