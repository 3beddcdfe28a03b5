//! Pure: the desired table kept in memory and brought up to date from
//! [`SpecChange`]s at the cost of the change, not of the node.
//!
//! [`RenderedPolicy`] holds the spec, the [`Ruleset`] it renders to, and
//! what an update needs to find its way: how many endpoints each profile
//! list has (its chains live while it has one), which netgroups each
//! list's chains name and how many lists name each netgroup (its sets live
//! while one does). An update applies the changes to the spec, works out
//! which elements, chains and sets they touch (nothing else can differ;
//! the dispatch chains only when a list comes or goes), and returns that
//! part of the table before and after ([`Delta`]).
//! [`plan()`](super::plan()) of the two small tables gives exactly the
//! actions that planning the whole new table against the whole old one
//! gives: every comparison `plan` makes is per name or per
//! element, and what lies outside the delta is equal on both sides.
//!
//! The from-scratch path stays: a [`RenderedPolicy`] is built by
//! [`render()`](super::render()), and one whose update failed (a name that
//! cannot be rendered) renders everything again on its next update. The
//! property tests hold the two paths to the same table and the same
//! actions.

use super::change::SpecChange;
use super::model::{EndpointPolicy, PolicySpec};
use super::plan::{plan, PolicyAction};
use super::render::{dispatch_chains, list_chains, render, valid_endpoint, RenderError};
use super::ruleset::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// A node's desired policy, rendered, and kept up to date from changes.
#[derive(Debug, Clone, Default)]
pub struct RenderedPolicy {
    spec: PolicySpec,
    /// `None` until rendered, and after an update that could not be.
    table: Option<Indexed>,
}

/// What an [`update`](RenderedPolicy::update) changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Only this part of the table changed: the touched objects before and
    /// after (see the module doc). Plan it with [`Delta::plan`].
    Delta(Delta),
    /// The table was rendered from scratch (nothing was rendered before,
    /// or the last update failed): compare the whole of it.
    Rendered,
}

/// The part of the table an update touched, before and after.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    /// The touched objects as they were.
    pub before: Ruleset,
    /// The touched objects as they are now.
    pub after: Ruleset,
}

impl Delta {
    /// The actions that take a table holding the old rendering to the new
    /// one: the same as [`plan()`](super::plan()) of the whole tables.
    pub fn plan(&self) -> Vec<PolicyAction> {
        plan(&self.after, Some(&self.before))
    }
}

/// The rendered table and its index.
#[derive(Debug, Clone)]
struct Indexed {
    ruleset: Ruleset,
    /// Each profile list in use: its endpoints and chains.
    lists: HashMap<Vec<String>, List>,
    /// Netgroup → how many lists' chains name it (only those above 0).
    named: HashMap<String, usize>,
}

/// One profile list in use on the node.
#[derive(Debug, Clone)]
struct List {
    /// Its [`profile_list_id`].
    id: String,
    /// How many endpoints have it.
    endpoints: usize,
    /// Its outbound chain.
    out: Arc<str>,
    /// Its inbound chain.
    inn: Arc<str>,
    /// The netgroups its chains name.
    netgroups: BTreeSet<String>,
}

/// The edits to the table one update makes, in order.
#[derive(Debug, Default)]
struct Edits {
    /// (anti-spoofing set, element, present afterwards).
    elements: Vec<(&'static str, SetElem, bool)>,
    /// (chain, rules afterwards; `None`: deleted).
    chains: Vec<(Arc<str>, Option<Vec<RuleModel>>)>,
    /// (netgroup or list set, whole set afterwards; `None`: deleted).
    sets: Vec<(String, Option<SetModel>)>,
    /// (netgroup or list set, element, present afterwards), for sets
    /// that stay.
    members: Vec<(String, SetElem, bool)>,
}

/// An endpoint whose profile list changed: its interface, its list
/// before and after (`None`: it had none, or has none now).
type Moved<'a> = (&'a str, Option<&'a [String]>, Option<&'a [String]>);

/// What changes touched in the spec.
#[derive(Debug, Default)]
struct Touched {
    /// Endpoints, with their policy before the first change.
    endpoints: HashMap<String, Option<EndpointPolicy>>,
    /// Profiles.
    profiles: HashSet<String>,
    /// Netgroup → member addresses.
    members: HashMap<String, BTreeSet<IpAddr>>,
}

impl RenderedPolicy {
    /// The policy of `spec`, rendered on the first [`update`](Self::update)
    /// (or now, with [`render`](Self::render)).
    pub fn new(spec: PolicySpec) -> RenderedPolicy {
        RenderedPolicy { spec, table: None }
    }

    /// The policy of `spec`, rendered from scratch.
    pub fn render(spec: PolicySpec) -> Result<RenderedPolicy, RenderError> {
        let table = Indexed::build(&spec)?;
        Ok(RenderedPolicy {
            spec,
            table: Some(table),
        })
    }

    /// The spec, with every change so far.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// The table the spec renders to; `None` when it could not be
    /// rendered (or has not been yet).
    pub fn ruleset(&self) -> Option<&Ruleset> {
        self.table.as_ref().map(|t| &t.ruleset)
    }

    /// Applies `changes` to the spec and brings the table up to date.
    /// The spec always takes the changes; when the table cannot be
    /// rendered (a name that cannot be ours) it is dropped, the error is
    /// returned, and the next update renders from scratch.
    pub fn update(&mut self, changes: &[SpecChange]) -> Result<Update, RenderError> {
        let mut touched = Touched::default();
        for change in changes {
            let before = self.spec.apply(change);
            match change {
                SpecChange::Endpoint { ifname, .. } => {
                    touched.endpoints.entry(ifname.clone()).or_insert(before);
                }
                SpecChange::Profile { name, .. } => {
                    touched.profiles.insert(name.clone());
                }
                SpecChange::Member { netgroup, addr, .. } => {
                    touched
                        .members
                        .entry(netgroup.clone())
                        .or_default()
                        .insert(*addr);
                }
            }
        }
        let Some(table) = self.table.as_mut() else {
            self.table = Some(Indexed::build(&self.spec)?);
            return Ok(Update::Rendered);
        };
        match table.edits(&self.spec, &touched) {
            Ok(edits) => Ok(Update::Delta(table.apply(edits))),
            Err(e) => {
                self.table = None;
                Err(e)
            }
        }
    }
}

impl Indexed {
    /// Renders `spec` from scratch and indexes it.
    fn build(spec: &PolicySpec) -> Result<Indexed, RenderError> {
        let ruleset = render(spec)?;
        let mut lists: HashMap<Vec<String>, List> = HashMap::new();
        for ep in spec.endpoints.values() {
            if let Some(list) = lists.get_mut(&ep.profiles) {
                list.endpoints += 1;
                continue;
            }
            let id = profile_list_id(&ep.profiles);
            let netgroups = list_chains(spec, &ep.profiles)?.netgroups;
            lists.insert(
                ep.profiles.clone(),
                List {
                    endpoints: 1,
                    out: ep_out_chain(&id).into(),
                    inn: ep_in_chain(&id).into(),
                    id,
                    netgroups,
                },
            );
        }
        let mut named = HashMap::new();
        for n in lists.values().flat_map(|l| &l.netgroups) {
            *named.entry(n.clone()).or_insert(0) += 1;
        }
        Ok(Indexed {
            ruleset,
            lists,
            named,
        })
    }

    /// Works out the edits `touched` makes, updating the index. On an
    /// error the index is left half updated (the caller drops it); the
    /// table itself is untouched.
    fn edits(&mut self, spec: &PolicySpec, touched: &Touched) -> Result<Edits, RenderError> {
        let mut edits = Edits::default();
        // Endpoints: anti-spoofing elements now, list set elements once
        // it is known which lists come and go; each list's endpoint count.
        let mut counts: HashMap<&[String], isize> = HashMap::new();
        let mut moved: Vec<Moved> = Vec::new();
        for (ifname, old) in &touched.endpoints {
            let new = spec.endpoints.get(ifname);
            if new.is_some() && !valid_endpoint(ifname) {
                return Err(RenderError::EndpointName {
                    name: ifname.clone(),
                });
            }
            if old.as_ref() == new {
                continue;
            }
            let name: Arc<str> = ifname.as_str().into();
            for (ep, present, step) in [(old.as_ref(), false, -1), (new, true, 1)] {
                let Some(ep) = ep else { continue };
                for a in &ep.ipv4 {
                    edits
                        .elements
                        .push((SRC_V4, SetElem::IfV4(name.clone(), *a), present));
                }
                for a in &ep.ipv6 {
                    edits
                        .elements
                        .push((SRC_V6, SetElem::IfV6(name.clone(), *a), present));
                }
                *counts.entry(&ep.profiles).or_insert(0) += step;
            }
            let lists = (
                old.as_ref().map(|ep| ep.profiles.as_slice()),
                new.map(|ep| ep.profiles.as_slice()),
            );
            if lists.0 != lists.1 {
                moved.push((ifname, lists.0, lists.1));
            }
        }
        // Lists whose profiles changed are rendered again.
        let rerender: HashSet<Vec<String>> = if touched.profiles.is_empty() {
            HashSet::new()
        } else {
            self.lists
                .keys()
                .filter(|list| list.iter().any(|p| touched.profiles.contains(p)))
                .cloned()
                .collect()
        };
        let mut affected: Vec<Vec<String>> = counts.keys().map(|l| l.to_vec()).collect();
        affected.extend(
            rerender
                .iter()
                .filter(|l| !counts.contains_key(l.as_slice()))
                .cloned(),
        );
        let mut named_before: HashMap<String, bool> = HashMap::new();
        // Whether a list came or went (the dispatch chains change then).
        let mut lists_changed = false;
        for list in &affected {
            let list = list.as_slice();
            let step = counts.get(list).copied().unwrap_or(0);
            let had = self.lists.get(list).map_or(0, |l| l.endpoints);
            let has = usize::try_from(had as isize + step).expect("never below zero");
            let old_netgroups = match (had, has) {
                (0, 0) => continue,
                (_, 0) => {
                    let gone = self.lists.remove(list).expect("a list with endpoints");
                    edits.chains.push((gone.out, None));
                    edits.chains.push((gone.inn, None));
                    edits.sets.push((list_set(&gone.id), None));
                    lists_changed = true;
                    self.name(&gone.netgroups, &BTreeSet::new(), &mut named_before);
                    continue;
                }
                (0, _) => {
                    let id = profile_list_id(list);
                    let (out, inn): (Arc<str>, Arc<str>) =
                        (ep_out_chain(&id).into(), ep_in_chain(&id).into());
                    let taken = self.ruleset.chains.contains_key(&*out)
                        || edits.chains.iter().any(|(c, r)| *c == out && r.is_some());
                    if taken {
                        let first = self
                            .lists
                            .iter()
                            .find(|(_, l)| l.out == out)
                            .map(|(p, _)| p.clone())
                            .unwrap_or_default();
                        return Err(RenderError::ProfileListCollision {
                            id,
                            first,
                            second: list.to_vec(),
                        });
                    }
                    // Made empty: its endpoints all moved into it, and
                    // are added below.
                    let members = SetModel::new(SetKind::Ifname);
                    edits.sets.push((list_set(&id), Some(members)));
                    lists_changed = true;
                    self.lists.insert(
                        list.to_vec(),
                        List {
                            id,
                            endpoints: has,
                            out,
                            inn,
                            netgroups: BTreeSet::new(),
                        },
                    );
                    BTreeSet::new()
                }
                (_, _) if !rerender.contains(list) && had > 0 => {
                    self.lists.get_mut(list).expect("in use").endpoints = has;
                    continue;
                }
                (_, _) => {
                    let l = self.lists.get_mut(list).expect("in use");
                    l.endpoints = has;
                    std::mem::take(&mut l.netgroups)
                }
            };
            let chains = list_chains(spec, list)?;
            let l = self.lists.get_mut(list).expect("in use");
            edits.chains.push((l.out.clone(), Some(chains.outbound)));
            edits.chains.push((l.inn.clone(), Some(chains.inbound)));
            l.netgroups = chains.netgroups.clone();
            self.name(&old_netgroups, &chains.netgroups, &mut named_before);
        }
        // List set elements of the endpoints that changed lists (a list
        // that went takes its set with it); the dispatch chains when a
        // list came or went.
        for (ifname, before, after) in moved {
            for (list, present) in [(before, false), (after, true)] {
                let Some(l) = list.and_then(|l| self.lists.get(l)) else {
                    continue;
                };
                let elem = SetElem::If(ifname.into());
                edits.members.push((list_set(&l.id), elem, present));
            }
        }
        if lists_changed {
            let mut ids: Vec<&str> = self.lists.values().map(|l| l.id.as_str()).collect();
            ids.sort_unstable();
            let (from_list, to_list) = dispatch_chains(ids.into_iter());
            edits.chains.push((FROM_LIST.into(), Some(from_list)));
            edits.chains.push((TO_LIST.into(), Some(to_list)));
        }
        // Netgroup sets: made when first named, deleted when no longer,
        // element updates for the members of those that stay.
        for (n, before) in &named_before {
            let after = self.named.contains_key(n);
            match (before, after) {
                (false, true) => {
                    let members = spec.netgroups.get(n);
                    for v6 in [false, true] {
                        let mut set = SetModel::new(if v6 { SetKind::Ipv6 } else { SetKind::Ipv4 });
                        if let Some(m) = members {
                            set.elements = if v6 {
                                m.ipv6.iter().map(|a| SetElem::V6(*a)).collect()
                            } else {
                                m.ipv4.iter().map(|a| SetElem::V4(*a)).collect()
                            };
                        }
                        edits.sets.push((netgroup_set(n, v6), Some(set)));
                    }
                }
                (true, false) => {
                    for v6 in [false, true] {
                        edits.sets.push((netgroup_set(n, v6), None));
                    }
                }
                _ => {}
            }
        }
        for (n, addrs) in &touched.members {
            let made_or_gone = named_before
                .get(n)
                .is_some_and(|before| *before != self.named.contains_key(n));
            if made_or_gone || !self.named.contains_key(n) {
                continue;
            }
            let members = spec.netgroups.get(n);
            for addr in addrs {
                let (v6, elem, present) = match addr {
                    IpAddr::V4(a) => (
                        false,
                        SetElem::V4(*a),
                        members.is_some_and(|m| m.ipv4.contains(a)),
                    ),
                    IpAddr::V6(a) => (
                        true,
                        SetElem::V6(*a),
                        members.is_some_and(|m| m.ipv6.contains(a)),
                    ),
                };
                edits.members.push((netgroup_set(n, v6), elem, present));
            }
        }
        Ok(edits)
    }

    /// Moves the naming counts from a list's `old` netgroups to its `new`
    /// ones, noting each netgroup's state before its first move.
    fn name(
        &mut self,
        old: &BTreeSet<String>,
        new: &BTreeSet<String>,
        before: &mut HashMap<String, bool>,
    ) {
        for n in old.difference(new) {
            before.entry(n.clone()).or_insert(true);
            let count = self.named.get_mut(n).expect("a named netgroup");
            *count -= 1;
            if *count == 0 {
                self.named.remove(n);
            }
        }
        for n in new.difference(old) {
            let was = self.named.contains_key(n);
            before.entry(n.clone()).or_insert(was);
            *self.named.entry(n.clone()).or_insert(0) += 1;
        }
    }

    /// Applies `edits` to the table; returns what they touched, before and
    /// after.
    fn apply(&mut self, edits: Edits) -> Delta {
        let before = self.slice(&edits);
        let rs = &mut self.ruleset;
        for (name, set) in &edits.sets {
            match set {
                Some(set) => rs.sets.insert(name.clone(), set.clone()),
                None => rs.sets.remove(name),
            };
        }
        let elements = edits.elements.iter().map(|(s, e, p)| (*s, e, *p));
        let members = edits.members.iter().map(|(s, e, p)| (s.as_str(), e, *p));
        for (set, elem, present) in elements.chain(members) {
            let set = rs.sets.get_mut(set).expect("edits name existing sets");
            if present {
                set.elements.insert(elem.clone());
            } else {
                set.elements.remove(elem);
            }
        }
        for (name, rules) in &edits.chains {
            match rules {
                Some(rules) => {
                    rs.chains.insert(
                        name.to_string(),
                        ChainModel {
                            base: None,
                            rules: rules.clone(),
                        },
                    );
                }
                None => {
                    rs.chains.remove(&**name);
                }
            }
        }
        let after = self.slice(&edits);
        Delta { before, after }
    }

    /// The objects `edits` touch, as the table holds them now: the
    /// touched elements and entries of their sets and maps, whole chains,
    /// whole netgroup sets that are made or deleted.
    fn slice(&self, edits: &Edits) -> Ruleset {
        let rs = &self.ruleset;
        let mut out = Ruleset::default();
        let elements = edits.elements.iter().map(|(s, e, _)| (*s, e));
        let members = edits.members.iter().map(|(s, e, _)| (s.as_str(), e));
        for (name, elem) in elements.chain(members) {
            if let Some(set) = rs.sets.get(name) {
                let part = out
                    .sets
                    .entry(name.to_string())
                    .or_insert_with(|| SetModel::new(set.kind));
                if set.elements.contains(elem) {
                    part.elements.insert(elem.clone());
                }
            }
        }
        for (name, _) in &edits.sets {
            if let Some(set) = rs.sets.get(name) {
                out.sets.insert(name.clone(), set.clone());
            }
        }
        for (name, _) in &edits.chains {
            if let Some(chain) = rs.chains.get(&**name) {
                out.chains.insert(name.to_string(), chain.clone());
            }
        }
        out
    }
}
