//! Pure: one change to a [`PolicySpec`], the unit the incremental path
//! ([`RenderedPolicy`](super::RenderedPolicy)) is fed with: an endpoint of
//! this node, a profile, or one member address of a netgroup.

use super::model::{EndpointPolicy, PolicySpec, ProfileRules};
use std::net::IpAddr;

/// One change to a node's desired policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecChange {
    /// This node's endpoint behind host interface `ifname` now has
    /// `policy` (`None`: it has none any more).
    Endpoint {
        /// Its host-side interface name.
        ifname: String,
        /// Its policy, or `None` when it is gone.
        policy: Option<EndpointPolicy>,
    },
    /// Profile `name` now has `rules` (`None`: it does not exist).
    Profile {
        /// The profile's name.
        name: String,
        /// Its rules, or `None` when it is gone.
        rules: Option<ProfileRules>,
    },
    /// Address `addr` is (`present`) or is not a member of `netgroup`.
    Member {
        /// The netgroup.
        netgroup: String,
        /// The member address.
        addr: IpAddr,
        /// True when it is a member now.
        present: bool,
    },
}

impl PolicySpec {
    /// Applies `change`. Returns the endpoint's policy before the change
    /// for an endpoint change (`None` otherwise, or when it had none).
    /// A netgroup left without members is dropped (a missing netgroup has
    /// no members).
    pub fn apply(&mut self, change: &SpecChange) -> Option<EndpointPolicy> {
        match change {
            SpecChange::Endpoint { ifname, policy } => match policy {
                Some(p) => self.endpoints.insert(ifname.clone(), p.clone()),
                None => self.endpoints.remove(ifname),
            },
            SpecChange::Profile { name, rules } => {
                match rules {
                    Some(r) => self.profiles.insert(name.clone(), r.clone()),
                    None => self.profiles.remove(name),
                };
                None
            }
            SpecChange::Member {
                netgroup,
                addr,
                present,
            } => {
                let members = self.netgroups.entry(netgroup.clone()).or_default();
                match (addr, present) {
                    (IpAddr::V4(a), true) => {
                        members.ipv4.insert(*a);
                    }
                    (IpAddr::V4(a), false) => {
                        members.ipv4.remove(a);
                    }
                    (IpAddr::V6(a), true) => {
                        members.ipv6.insert(*a);
                    }
                    (IpAddr::V6(a), false) => {
                        members.ipv6.remove(a);
                    }
                }
                if members.ipv4.is_empty() && members.ipv6.is_empty() {
                    self.netgroups.remove(netgroup);
                }
                None
            }
        }
    }

    /// The spec `changes` make from the empty one.
    pub fn from_changes<'c>(changes: impl IntoIterator<Item = &'c SpecChange>) -> PolicySpec {
        let mut spec = PolicySpec::default();
        for c in changes {
            spec.apply(c);
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_and_empty_netgroups_go() {
        let addr: IpAddr = "198.18.0.1".parse().unwrap();
        let member = |present| SpecChange::Member {
            netgroup: "web".into(),
            addr,
            present,
        };
        let ep = EndpointPolicy {
            profiles: vec!["web".into()],
            ..Default::default()
        };
        let add = SpecChange::Endpoint {
            ifname: "cali1".into(),
            policy: Some(ep.clone()),
        };
        let mut spec = PolicySpec::from_changes(&[add.clone(), member(true)]);
        assert_eq!(spec.endpoints["cali1"], ep);
        assert!(spec.netgroups["web"]
            .ipv4
            .contains(&"198.18.0.1".parse().unwrap()));
        assert_eq!(spec.apply(&add), Some(ep.clone()), "the policy before");
        spec.apply(&member(false));
        assert!(!spec.netgroups.contains_key("web"));
        let gone = SpecChange::Endpoint {
            ifname: "cali1".into(),
            policy: None,
        };
        assert_eq!(spec.apply(&gone), Some(ep));
        spec.apply(&SpecChange::Profile {
            name: "web".into(),
            rules: Some(ProfileRules::default()),
        });
        assert!(spec.profiles.contains_key("web"));
        spec.apply(&SpecChange::Profile {
            name: "web".into(),
            rules: None,
        });
        assert_eq!(spec, PolicySpec::default());
    }
}
