//! Which endpoints the daemon knows to be right in the kernel without
//! looking: verified by a reconcile, with every kernel event about them
//! watched since (the node's one event socket, which hears the node and
//! every container namespace).
//! A resync reconciles only the others, so a resync that finds no drift
//! costs almost nothing; kernel events and event overruns make endpoints
//! stale again.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Counts {
    /// Kernel events seen per container id, ever.
    events: HashMap<String, u64>,
    /// Per container id: (generation verified, events seen when the
    /// verifying reconcile started).
    verified: HashMap<String, (u64, u64)>,
}

/// The freshness book.
#[derive(Debug, Default)]
pub struct Freshness {
    counts: Mutex<Counts>,
}

impl Freshness {
    /// An event concerning `cid` arrived: it is stale.
    pub fn touch(&self, cid: &str) {
        let mut c = self.counts.lock().expect("freshness lock");
        *c.events.entry(cid.to_string()).or_default() += 1;
    }

    /// Events may have been lost (a subscription overran or ended): every
    /// endpoint is stale.
    pub fn touch_all(&self) {
        self.counts.lock().expect("freshness lock").verified.clear();
    }

    /// A reconcile of `cid` starts: the token to hand to [`Self::verified`].
    pub fn start(&self, cid: &str) -> u64 {
        let c = self.counts.lock().expect("freshness lock");
        c.events.get(cid).copied().unwrap_or(0)
    }

    /// The reconcile that started with `token` found `cid` right at
    /// `generation`, and its events are watched.
    pub fn verified(&self, cid: &str, generation: u64, token: u64) {
        let mut c = self.counts.lock().expect("freshness lock");
        c.verified.insert(cid.to_string(), (generation, token));
    }

    /// True when `cid` was verified at `generation` and no event about it
    /// arrived since that reconcile started.
    pub fn is_fresh(&self, cid: &str, generation: u64) -> bool {
        let c = self.counts.lock().expect("freshness lock");
        let seen = c.events.get(cid).copied().unwrap_or(0);
        c.verified.get(cid) == Some(&(generation, seen))
    }

    /// `cid` is gone: forget it.
    pub fn forget(&self, cid: &str) {
        let mut c = self.counts.lock().expect("freshness lock");
        c.events.remove(cid);
        c.verified.remove(cid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_during_a_reconcile_keeps_the_endpoint_stale() {
        let f = Freshness::default();
        assert!(!f.is_fresh("a", 1));
        let token = f.start("a");
        f.verified("a", 1, token);
        assert!(f.is_fresh("a", 1));
        assert!(!f.is_fresh("a", 2), "another generation is not verified");

        let token = f.start("a");
        f.touch("a"); // arrives while the reconcile runs
        f.verified("a", 1, token);
        assert!(!f.is_fresh("a", 1));

        let token = f.start("a");
        f.verified("a", 1, token);
        assert!(f.is_fresh("a", 1));
        f.touch_all();
        assert!(!f.is_fresh("a", 1));
        f.verified("a", 1, f.start("a"));
        f.forget("a");
        assert!(!f.is_fresh("a", 1));
    }
}
