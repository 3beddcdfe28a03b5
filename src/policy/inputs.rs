//! The node's desired policy as changes: what [`desired_policy`] computes
//! from every endpoint of the cluster, computed instead from the endpoints
//! that changed (and the profiles), as [`SpecChange`]s for
//! `reconcilers::policy::RenderedPolicy`. Pure: no store, no kernel.
//!
//! The spec these changes build is a superset of [`desired_policy`]'s
//! that renders to the same table: every profile (not only those this
//! node's endpoints name) and every netgroup's members (not only those a
//! rule names); rendering looks up only what it needs.
//!
//! [`desired_policy`]: super::desired_policy

use super::desired::{endpoint_policy, memberships};
use super::profiles::Profile;
use crate::endpoint::Endpoint;
use reconcilers::endpoint::host_ifname;
use reconcilers::policy::{PolicySpec, ProfileRules, SpecChange};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// What the changes handed out so far said: enough to tell what a changed
/// endpoint or profile changes in the spec.
#[derive(Debug, Clone)]
pub struct PolicyInputs {
    node: String,
    /// Host interface → the store keys of this node's live endpoints with
    /// that name (more than one only if two container ids' hashes collide:
    /// the last key wins, as in [`desired_policy`](super::desired_policy)).
    local: HashMap<String, BTreeSet<String>>,
    /// (netgroup, address) → how many live endpoints of the cluster have it.
    members: HashMap<(String, IpAddr), u32>,
    /// Every profile, as last handed out.
    profiles: BTreeMap<String, ProfileRules>,
}

impl PolicyInputs {
    /// Inputs of the node `node` that have handed out nothing yet.
    pub fn new(node: &str) -> PolicyInputs {
        PolicyInputs {
            node: node.to_string(),
            local: HashMap::new(),
            members: HashMap::new(),
            profiles: BTreeMap::new(),
        }
    }

    /// The whole spec of `endpoints` (every endpoint of the cluster, by
    /// store key) and `profiles`, from fresh inputs that then follow it.
    pub fn seed(
        node: &str,
        endpoints: &BTreeMap<String, Endpoint>,
        profiles: &[Profile],
    ) -> (PolicyInputs, PolicySpec) {
        let mut inputs = PolicyInputs::new(node);
        let everything: HashMap<String, Option<Endpoint>> =
            endpoints.keys().map(|k| (k.clone(), None)).collect();
        let changes = inputs.update(endpoints, &everything, profiles);
        (inputs, PolicySpec::from_changes(&changes))
    }

    /// The changes to the spec: `endpoints` is every endpoint now,
    /// `changed` the keys that changed since the last call with the value
    /// each had then, `profiles` every profile now.
    pub fn update(
        &mut self,
        endpoints: &BTreeMap<String, Endpoint>,
        changed: &HashMap<String, Option<Endpoint>>,
        profiles: &[Profile],
    ) -> Vec<SpecChange> {
        let mut out = Vec::new();
        self.profiles_changed(profiles, &mut out);
        let mut moved: BTreeSet<String> = BTreeSet::new();
        for (key, before) in changed {
            let now = endpoints.get(key);
            let local = |e: &&Endpoint| e.node == self.node && !e.deletion_requested;
            let was = before
                .as_ref()
                .filter(local)
                .map(|e| host_ifname(&e.container_id));
            let is = now.filter(local).map(|e| host_ifname(&e.container_id));
            if let Some(ifname) = was {
                if let Some(keys) = self.local.get_mut(&ifname) {
                    keys.remove(key);
                    if keys.is_empty() {
                        self.local.remove(&ifname);
                    }
                }
                moved.insert(ifname);
            }
            if let Some(ifname) = is {
                self.local
                    .entry(ifname.clone())
                    .or_default()
                    .insert(key.clone());
                moved.insert(ifname);
            }
            let old = before.as_ref().map(memberships).unwrap_or_default();
            let new = now.map(memberships).unwrap_or_default();
            for (netgroup, addr) in old.difference(&new) {
                let count = self
                    .members
                    .get_mut(&(netgroup.to_string(), *addr))
                    .expect("a member counted before");
                *count -= 1;
                if *count == 0 {
                    self.members.remove(&(netgroup.to_string(), *addr));
                    out.push(member(netgroup, *addr, false));
                }
            }
            for (netgroup, addr) in new.difference(&old) {
                let count = self
                    .members
                    .entry((netgroup.to_string(), *addr))
                    .or_insert(0);
                *count += 1;
                if *count == 1 {
                    out.push(member(netgroup, *addr, true));
                }
            }
        }
        for ifname in moved {
            let policy = self
                .local
                .get(&ifname)
                .and_then(|keys| keys.last())
                .map(|key| endpoint_policy(&endpoints[key]));
            out.push(SpecChange::Endpoint { ifname, policy });
        }
        out
    }

    fn profiles_changed(&mut self, profiles: &[Profile], out: &mut Vec<SpecChange>) {
        let now: BTreeMap<&str, &ProfileRules> = profiles
            .iter()
            .map(|p| (p.name.as_str(), &p.rules))
            .collect();
        self.profiles.retain(|name, _| {
            let keep = now.contains_key(name.as_str());
            if !keep {
                out.push(SpecChange::Profile {
                    name: name.clone(),
                    rules: None,
                });
            }
            keep
        });
        for (name, rules) in now {
            if self.profiles.get(name) != Some(rules) {
                self.profiles.insert(name.to_string(), rules.clone());
                out.push(SpecChange::Profile {
                    name: name.to_string(),
                    rules: Some(rules.clone()),
                });
            }
        }
    }
}

fn member(netgroup: &str, addr: IpAddr, present: bool) -> SpecChange {
    SpecChange::Member {
        netgroup: netgroup.to_string(),
        addr,
        present,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::NetnsId;
    use crate::policy::desired_policy;
    use proptest::prelude::*;
    use reconcilers::policy::{plan, render, RenderedPolicy, Update};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NODES: [&str; 2] = ["n1", "n2"];
    const NETGROUPS: [&str; 4] = ["web", "db", "public", "ops"];

    fn endpoint(node: &str, id: u8, addr: u8, netgroups: Vec<String>, deleting: bool) -> Endpoint {
        Endpoint {
            node: node.to_string(),
            container_id: format!("c{id}"),
            netns: NetnsId { pid: 1, inode: 1 },
            ipv4: vec![Ipv4Addr::new(198, 18, 0, addr)],
            ipv6: vec![Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, addr.into())],
            netgroups,
            labels: Default::default(),
            holders: Default::default(),
            generation: 1,
            deletion_requested: deleting,
        }
    }

    /// One step: an endpoint (node, id) set to something or deleted, or
    /// the profiles replaced.
    #[derive(Debug, Clone)]
    enum Step {
        Put(Endpoint),
        Delete(String, u8),
        Profiles(Vec<Profile>),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        let netgroups = proptest::collection::vec(proptest::sample::select(&NETGROUPS[..]), 0..3)
            .prop_map(|v| v.into_iter().map(String::from).collect());
        let put = (
            proptest::sample::select(&NODES[..]),
            0u8..6,
            // Few addresses: two endpoints may share one.
            1u8..5,
            netgroups,
            proptest::bool::weighted(0.2),
        )
            .prop_map(|(node, id, addr, ng, del)| Step::Put(endpoint(node, id, addr, ng, del)));
        let delete = (proptest::sample::select(&NODES[..]), 0u8..6)
            .prop_map(|(node, id)| Step::Delete(node.to_string(), id));
        let profiles = proptest::collection::vec(proptest::sample::select(&NETGROUPS[..]), 0..4)
            .prop_map(|names| {
                let mut all = vec![Profile::host("n1", &["198.19.0.1".parse().unwrap()])];
                for n in names {
                    let mut p = if n == "public" {
                        Profile::public()
                    } else {
                        Profile::netgroup(n)
                    };
                    // An operator's edit: this one reaches `ops` as well.
                    if n == "db" {
                        p.rules
                            .inbound
                            .push(reconcilers::policy::Rule::Netgroup("ops".into()));
                    }
                    all.retain(|q| q.name != p.name);
                    all.push(p);
                }
                all
            });
        prop_oneof![6 => put, 2 => delete, 1 => profiles.prop_map(Step::Profiles)]
    }

    fn from_scratch(all: &BTreeMap<String, Endpoint>, profiles: &[Profile]) -> PolicySpec {
        let node = all.values().filter(|e| e.node == "n1");
        let cluster = all.values().filter(|e| e.node != "n1");
        desired_policy(node, cluster, profiles)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random changes of the cluster's endpoints and the profiles, fed
        /// run by run as the cache tells them, give the table and the
        /// actions that `desired_policy` from scratch, rendered and
        /// planned against the last table, gives.
        #[test]
        fn changes_follow_desired_policy(
            runs in proptest::collection::vec(proptest::collection::vec(arb_step(), 1..5), 1..10),
        ) {
            let mut all: BTreeMap<String, Endpoint> = BTreeMap::new();
            let mut profiles: Vec<Profile> = Vec::new();
            let (mut inputs, spec) = PolicyInputs::seed("n1", &all, &profiles);
            let mut model = RenderedPolicy::render(spec).unwrap();
            let mut last = render(&from_scratch(&all, &profiles)).unwrap();
            prop_assert_eq!(model.ruleset(), Some(&last));
            for run in runs {
                let mut changed: HashMap<String, Option<Endpoint>> = HashMap::new();
                for step in run {
                    let (key, value) = match step {
                        Step::Put(e) => (e.key(), Some(e)),
                        Step::Delete(node, id) => {
                            (crate::store::keys::endpoint(&node, &format!("c{id}")), None)
                        }
                        Step::Profiles(p) => {
                            profiles = p;
                            continue;
                        }
                    };
                    let before = match &value {
                        Some(v) => all.insert(key.clone(), v.clone()),
                        None => all.remove(&key),
                    };
                    changed.entry(key).or_insert(before);
                }
                let changes = inputs.update(&all, &changed, &profiles);
                let want = render(&from_scratch(&all, &profiles)).unwrap();
                match model.update(&changes).unwrap() {
                    Update::Delta(delta) => prop_assert_eq!(delta.plan(), plan(&want, Some(&last))),
                    Update::Rendered => prop_assert!(false, "always rendered"),
                }
                prop_assert_eq!(model.ruleset(), Some(&want));
                // Seeding from scratch gives the same table.
                let (_, seeded) = PolicyInputs::seed("n1", &all, &profiles);
                prop_assert_eq!(render(&seeded).unwrap(), want.clone());
                last = want;
            }
        }
    }

    #[test]
    fn an_isolate_elsewhere_is_one_member_per_address_and_nothing_else() {
        let profiles = vec![Profile::netgroup("web")];
        let mut all = BTreeMap::new();
        let mine = endpoint("n1", 1, 1, vec!["web".into()], false);
        all.insert(mine.key(), mine);
        let (mut inputs, _) = PolicyInputs::seed("n1", &all, &profiles);
        let theirs = endpoint("n2", 2, 2, vec!["web".into()], false);
        all.insert(theirs.key(), theirs.clone());
        let changed = HashMap::from([(theirs.key(), None)]);
        let changes = inputs.update(&all, &changed, &profiles);
        assert_eq!(
            changes,
            [
                member("web", "198.18.0.2".parse().unwrap(), true),
                member("web", "2001:db8:1::2".parse().unwrap(), true),
            ]
        );
        // A new generation with the same policy changes nothing.
        let mut again = theirs.clone();
        again.generation = 2;
        all.insert(again.key(), again);
        let changed = HashMap::from([(theirs.key(), Some(theirs))]);
        assert!(inputs.update(&all, &changed, &profiles).is_empty());
    }
}
