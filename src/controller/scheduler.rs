//! The work queue's bookkeeping, in the style of kube-runtime's scheduler:
//! each key is queued at most once (the earliest deadline wins), a key that
//! is running is never handed out again until it finishes (a request that
//! arrives meanwhile is kept and served after), and a key that fails is
//! retried with per-key exponential backoff with jitter. Pure: time is
//! passed in, so it is tested without a clock.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// Backoff after the first failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Backoff never grows past this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Queued keys with deadlines, the keys running, and failure counts.
#[derive(Debug)]
pub struct Scheduler<K: Clone + Eq + Hash + Ord> {
    deadline: HashMap<K, Instant>,
    order: BTreeSet<(Instant, K)>,
    running: HashSet<K>,
    failures: HashMap<K, u32>,
}

impl<K: Clone + Eq + Hash + Ord> Default for Scheduler<K> {
    fn default() -> Self {
        Scheduler {
            deadline: HashMap::new(),
            order: BTreeSet::new(),
            running: HashSet::new(),
            failures: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Scheduler<K> {
    /// Queue `key` to run at `at`; an earlier deadline already queued wins.
    pub fn schedule(&mut self, key: K, at: Instant) {
        if let Some(&existing) = self.deadline.get(&key) {
            if existing <= at {
                return;
            }
            self.order.remove(&(existing, key.clone()));
        }
        self.deadline.insert(key.clone(), at);
        self.order.insert((at, key));
    }

    /// The earliest deadline among keys that could run now.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.order
            .iter()
            .find(|(_, k)| !self.running.contains(k))
            .map(|(at, _)| *at)
    }

    /// Take the next key due at `now` that is not running, and mark it running.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let (at, key) = self
            .order
            .iter()
            .take_while(|(at, _)| *at <= now)
            .find(|(_, k)| !self.running.contains(k))
            .cloned()?;
        self.order.remove(&(at, key.clone()));
        self.deadline.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// A run of `key` finished; on failure it is queued again after its backoff
    /// (`jitter` in [0, 1) spreads retries). Returns the retry delay, if any.
    pub fn finish(&mut self, key: &K, ok: bool, now: Instant, jitter: f64) -> Option<Duration> {
        self.running.remove(key);
        if ok {
            self.failures.remove(key);
            return None;
        }
        let failures = self.failures.entry(key.clone()).or_insert(0);
        *failures += 1;
        let delay = backoff(*failures, jitter);
        self.schedule(key.clone(), now + delay);
        Some(delay)
    }

    /// Forget a key's failures (its intent changed: retry promptly).
    pub fn reset_backoff(&mut self, key: &K) {
        self.failures.remove(key);
    }

    /// How many keys are queued.
    pub fn queued(&self) -> usize {
        self.order.len()
    }

    /// How many keys are running.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

/// Exponential backoff for the n-th consecutive failure, with up to 50%
/// jitter added, capped at [`BACKOFF_MAX`].
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    base.mul_f64(1.0 + 0.5 * jitter.clamp(0.0, 1.0))
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn earliest_deadline_wins_and_keys_are_deduplicated() {
        let t = Instant::now();
        let mut s = Scheduler::default();
        s.schedule("a", at(t, 100));
        s.schedule("a", at(t, 10));
        s.schedule("a", at(t, 50));
        s.schedule("b", at(t, 20));
        assert_eq!(s.queued(), 2);
        assert_eq!(s.next_deadline(), Some(at(t, 10)));
        assert_eq!(s.pop_due(at(t, 5)), None);
        assert_eq!(s.pop_due(at(t, 30)), Some("a"));
        assert_eq!(s.pop_due(at(t, 30)), Some("b"));
        assert_eq!(s.pop_due(at(t, 30)), None);
    }

    #[test]
    fn a_running_key_is_not_handed_out_twice() {
        let t = Instant::now();
        let mut s = Scheduler::default();
        s.schedule("a", t);
        assert_eq!(s.pop_due(t), Some("a"));
        s.schedule("a", t); // intent changed while running
        assert_eq!(s.pop_due(t), None, "never twice at once");
        assert_eq!(s.next_deadline(), None);
        s.finish(&"a", true, t, 0.0);
        assert_eq!(s.pop_due(t), Some("a"), "served after the run finished");
    }

    #[test]
    fn failures_back_off_exponentially_and_reset_on_success() {
        let t = Instant::now();
        let mut s = Scheduler::default();
        s.schedule("a", t);
        let mut delays = vec![];
        for _ in 0..4 {
            let now = s.next_deadline().unwrap();
            assert_eq!(s.pop_due(now), Some("a"));
            delays.push(s.finish(&"a", false, now, 0.0).unwrap());
        }
        assert_eq!(
            delays,
            [50, 100, 200, 400].map(Duration::from_millis).to_vec()
        );
        let now = s.next_deadline().unwrap();
        s.pop_due(now);
        assert_eq!(s.finish(&"a", true, now, 0.0), None);
        s.schedule("a", now);
        s.pop_due(now);
        assert_eq!(s.finish(&"a", false, now, 0.0), Some(BACKOFF_MIN));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        assert_eq!(backoff(30, 0.0), BACKOFF_MAX);
        assert_eq!(backoff(1, 0.999).as_millis(), 74);
    }
}
