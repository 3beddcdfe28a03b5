//! What each endpoint's last reconcile read back of its two links, so that
//! a link event that changes nothing the planner reads (a carrier coming
//! up, the kernel's own follow-ups of our changes, an MTU set by hand)
//! costs no second reconcile, while one that does (a link set down, its
//! alias or sysctls changed) gets one.
//!
//! Events that arrive while the endpoint is being reconciled are held: they
//! may be the intermediate states of that reconcile's own actions (the
//! host link with its alias set but not yet up). When the reconcile ends,
//! the last held facts of each link are compared with what it read back:
//! the kernel delivers a link's events in order, so the last one says how
//! the link was last left.
//!
//! Pure bookkeeping: no kernel, no store.

use reconcilers::endpoint::{LinkFacts, Links};
use std::collections::HashMap;
use std::sync::Mutex;

/// Which of an endpoint's links an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The host side, in the node's namespace.
    Host,
    /// `eth0`, in the container's namespace.
    Eth0,
}

/// What to do about one link event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The link is not as the last reconcile left it (or nobody knows how
    /// that was): reconcile the endpoint.
    Recheck,
    /// The link is exactly as the last reconcile read it back.
    Unchanged,
    /// The endpoint is being reconciled: [`Run::finish`] decides.
    Held,
}

#[derive(Debug, Default)]
struct Entry {
    /// What the last Ready reconcile read back.
    verified: Option<Links>,
    /// A reconcile is running.
    running: bool,
    /// The last facts of each link seen while it ran.
    held: Links,
}

/// One reconcile of an endpoint, as the book follows it.
#[must_use = "a run dropped unfinished forgets what was known"]
pub struct Run<'a> {
    book: &'a LinkBook,
    cid: &'a str,
    finished: bool,
}

impl Run<'_> {
    /// The reconcile ended; `read_back` is what it read of the links when
    /// the endpoint is Ready (`None` otherwise: nothing is known then, and
    /// every later event asks for a look). True when a link event held
    /// meanwhile says something else than the read-back: the endpoint
    /// needs another reconcile.
    pub fn finish(mut self, read_back: Option<Links>) -> bool {
        self.finished = true;
        self.book.finish(self.cid, read_back)
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.book.finish(self.cid, None);
        }
    }
}

/// The book, shared by the event handler and the runner.
#[derive(Debug, Default)]
pub struct LinkBook {
    entries: Mutex<HashMap<String, Entry>>,
}

fn slot(links: &mut Links, side: Side) -> &mut Option<LinkFacts> {
    match side {
        Side::Host => &mut links.host,
        Side::Eth0 => &mut links.eth0,
    }
}

impl LinkBook {
    /// A reconcile of `cid` starts: its link events are held until the
    /// returned run is finished ([`Run::finish`]), or dropped (a run that
    /// failed, panicked or was cancelled: then nothing is known).
    pub fn begin<'a>(&'a self, cid: &'a str) -> Run<'a> {
        let mut entries = self.entries.lock().expect("link book lock");
        let e = entries.entry(cid.to_string()).or_default();
        e.running = true;
        e.held = Links::default();
        Run {
            book: self,
            cid,
            finished: false,
        }
    }

    fn finish(&self, cid: &str, read_back: Option<Links>) -> bool {
        let mut entries = self.entries.lock().expect("link book lock");
        let Some(e) = entries.get_mut(cid) else {
            return false;
        };
        e.running = false;
        let held = std::mem::take(&mut e.held);
        let Some(verified) = read_back else {
            entries.remove(cid);
            return false;
        };
        let differs = |held: &Option<LinkFacts>, verified: &Option<LinkFacts>| {
            held.as_ref().is_some_and(|h| Some(h) != verified.as_ref())
        };
        let recheck = differs(&held.host, &verified.host) || differs(&held.eth0, &verified.eth0);
        e.verified = Some(verified);
        recheck
    }

    /// A link event about `side` of `cid`'s endpoint (not a deletion:
    /// those always ask for a look).
    pub fn event(&self, cid: &str, side: Side, facts: &LinkFacts) -> Verdict {
        let mut entries = self.entries.lock().expect("link book lock");
        let Some(e) = entries.get_mut(cid) else {
            return Verdict::Recheck;
        };
        if e.running {
            *slot(&mut e.held, side) = Some(facts.clone());
            return Verdict::Held;
        }
        match e.verified.as_mut().map(|v| slot(v, side)) {
            Some(Some(v)) if v == facts => Verdict::Unchanged,
            _ => Verdict::Recheck,
        }
    }

    /// Forgets `cid` (its endpoint was removed or collected).
    pub fn forget(&self, cid: &str) {
        self.entries.lock().expect("link book lock").remove(cid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, up: bool) -> LinkFacts {
        LinkFacts {
            index: 7,
            name: name.into(),
            alias: Some("calico-mesos".into()),
            up,
            is_veth: true,
            mac: Some(vec![0xee; 6]),
            peer_index: Some(2),
            peer_netnsid: Some(0),
            sysctls: Default::default(),
        }
    }

    fn links(up: bool) -> Links {
        Links {
            host: Some(link("calia", up)),
            eth0: Some(link("eth0", true)),
        }
    }

    fn verdict(book: &LinkBook, side: Side, facts: LinkFacts) -> Verdict {
        book.event("a", side, &facts)
    }

    #[test]
    fn an_unknown_endpoint_is_always_rechecked() {
        let book = LinkBook::default();
        assert_eq!(
            verdict(&book, Side::Host, link("calia", true)),
            Verdict::Recheck
        );
    }

    #[test]
    fn after_a_reconcile_only_other_facts_ask_for_a_look() {
        let book = LinkBook::default();
        assert!(!book.begin("a").finish(Some(links(true))));
        assert_eq!(
            verdict(&book, Side::Host, link("calia", true)),
            Verdict::Unchanged
        );
        assert_eq!(
            verdict(&book, Side::Eth0, link("eth0", true)),
            Verdict::Unchanged
        );
        assert_eq!(
            verdict(&book, Side::Host, link("calia", false)),
            Verdict::Recheck
        );
        assert_eq!(
            verdict(&book, Side::Eth0, link("eth0", false)),
            Verdict::Recheck
        );
        // Another endpoint's verdicts are its own.
        assert_eq!(
            book.event("b", Side::Host, &link("calia", true)),
            Verdict::Recheck
        );
    }

    #[test]
    fn events_during_a_reconcile_are_judged_by_the_last_one_per_link() {
        let book = LinkBook::default();
        let run = book.begin("a");
        // The reconcile's own steps: down first, then up as read back.
        assert_eq!(
            verdict(&book, Side::Host, link("calia", false)),
            Verdict::Held
        );
        assert_eq!(
            verdict(&book, Side::Host, link("calia", true)),
            Verdict::Held
        );
        assert!(!run.finish(Some(links(true))), "left as read back");

        // Set down by someone right after the read-back.
        let run = book.begin("a");
        verdict(&book, Side::Host, link("calia", true));
        verdict(&book, Side::Host, link("calia", false));
        assert!(run.finish(Some(links(true))), "the last word differs");

        // Only the other link seen: judged on its own.
        let run = book.begin("a");
        verdict(&book, Side::Eth0, link("eth0", true));
        assert!(!run.finish(Some(links(true))));
    }

    #[test]
    fn a_reconcile_that_ends_not_ready_or_never_ends_leaves_nothing_known() {
        let book = LinkBook::default();
        assert!(!book.begin("a").finish(Some(links(true))));
        let run = book.begin("a");
        verdict(&book, Side::Host, link("calia", false));
        assert!(!run.finish(None), "not ready: the runner retries anyway");
        assert_eq!(
            verdict(&book, Side::Host, link("calia", true)),
            Verdict::Recheck
        );

        // A run dropped unfinished (failed, panicked, cancelled) leaves
        // nothing held and nothing known.
        assert!(!book.begin("a").finish(Some(links(true))));
        drop(book.begin("a"));
        assert_eq!(
            verdict(&book, Side::Host, link("calia", true)),
            Verdict::Recheck
        );

        assert!(!book.begin("a").finish(Some(links(true))));
        book.forget("a");
        assert_eq!(
            verdict(&book, Side::Host, link("calia", true)),
            Verdict::Recheck
        );
    }
}
