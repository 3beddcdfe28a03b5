//! Coalescing of node-wide runs: many endpoints ask for the node's policy
//! to be brought up to date at once; one run that starts after a request
//! answers it, so a burst of N requests costs a few runs, not N.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Mutex;

/// Serialises runs of one node-wide job and lets a caller skip its own run
/// when a run that started after its request has finished.
#[derive(Debug, Default)]
pub struct Coalesced {
    /// Tickets handed out so far (one per request).
    requested: AtomicU64,
    /// The highest ticket a finished run answered; held while a run runs.
    answered: Mutex<u64>,
}

impl Coalesced {
    /// Runs `job` unless a run that started after this call has already
    /// finished successfully; returns `Some(result)` when `job` ran here
    /// and `None` when another run answered. A failed run answers nobody:
    /// the next waiter runs again.
    pub async fn run<T, E, F, Fut>(&self, job: F) -> Result<Option<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut answered = self.answered.lock().await;
        if *answered >= ticket {
            return Ok(None);
        }
        // Every ticket handed out before the job starts reading is covered.
        let covers = self.requested.load(Ordering::SeqCst);
        let result = job().await?;
        *answered = covers;
        Ok(Some(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_requests_makes_two_runs() {
        let gate = Arc::new(Coalesced::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (gate, runs) = (gate.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                gate.run(|| async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok::<_, ()>(())
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // The first request runs alone; the nine that queued behind it are
        // answered by one more run.
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_after_a_run_runs_again() {
        let gate = Coalesced::default();
        assert_eq!(gate.run(|| async { Ok::<_, ()>(1) }).await, Ok(Some(1)));
        assert_eq!(gate.run(|| async { Ok::<_, ()>(2) }).await, Ok(Some(2)));
    }

    #[tokio::test]
    async fn a_failed_run_answers_nobody() {
        let gate = Coalesced::default();
        assert_eq!(gate.run(|| async { Err::<u8, _>("no") }).await, Err("no"));
        assert_eq!(gate.run(|| async { Ok::<_, &str>(3) }).await, Ok(Some(3)));
    }
}
