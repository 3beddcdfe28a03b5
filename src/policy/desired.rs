//! The desired policy of one node, computed from intent: this node's
//! endpoints, every endpoint of the cluster (netgroup membership) and the
//! profiles. Pure: no store, no kernel; the policy reconciler is handed the
//! result as plain data. This is the definition from scratch; the daemon
//! computes the same incrementally ([`PolicyInputs`](super::PolicyInputs)),
//! and the tests hold the two to one table.

use super::profiles::{profile_names, Profile};
use crate::endpoint::Endpoint;
use reconcilers::endpoint::host_ifname;
use reconcilers::policy::{EndpointPolicy, Members, PolicySpec, Rule};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The policy `node_endpoints` (this node's) should have.
///
/// - `endpoints`: every endpoint of this node not being deleted (its policy
///   goes with it), keyed by its host-side interface name.
/// - `profiles`: every profile an included endpoint names that exists in
///   `profiles`; a named profile that does not exist is left out, so it
///   allows nothing (fail closed).
/// - `netgroups`: every netgroup a rule of an included profile names, with
///   the addresses of every endpoint of the cluster in it that is not being
///   deleted (`cluster_endpoints`, plus `node_endpoints` in case the caller
///   listed them apart); a netgroup without members is present and empty.
///
/// Takes anything that iterates over references (slices, a cache's
/// values), so a caller never copies the cluster's endpoints.
pub fn desired_policy<'a, N>(
    node_endpoints: N,
    cluster_endpoints: impl IntoIterator<Item = &'a Endpoint>,
    profiles: impl IntoIterator<Item = &'a Profile>,
) -> PolicySpec
where
    N: IntoIterator<Item = &'a Endpoint>,
    N::IntoIter: Clone,
{
    let node_endpoints = node_endpoints.into_iter();
    let by_name: BTreeMap<&str, &Profile> =
        profiles.into_iter().map(|p| (p.name.as_str(), p)).collect();
    let mut spec = PolicySpec::default();
    for ep in node_endpoints.clone().filter(|e| !e.deletion_requested) {
        for name in &profile_names(ep, &ep.node) {
            if let Some(profile) = by_name.get(name.as_str()) {
                spec.profiles
                    .entry(name.clone())
                    .or_insert_with(|| profile.rules.clone());
            }
        }
        spec.endpoints
            .insert(host_ifname(&ep.container_id), endpoint_policy(ep));
    }
    let named: BTreeSet<&str> = spec
        .profiles
        .values()
        .flat_map(|rules| rules.inbound.iter().chain(&rules.outbound))
        .filter_map(|rule| match rule {
            Rule::Netgroup(n) => Some(n.as_str()),
            Rule::All | Rule::Cidr(_) => None,
        })
        .collect();
    let mut netgroups: BTreeMap<String, Members> = named
        .iter()
        .map(|n| (n.to_string(), Members::default()))
        .collect();
    for ep in cluster_endpoints.into_iter().chain(node_endpoints) {
        for (netgroup, addr) in memberships(ep) {
            if let Some(members) = netgroups.get_mut(netgroup) {
                match addr {
                    IpAddr::V4(a) => members.ipv4.insert(a),
                    IpAddr::V6(a) => members.ipv6.insert(a),
                };
            }
        }
    }
    spec.netgroups = netgroups;
    spec
}

/// The policy of one endpoint of this node (not being deleted).
pub(super) fn endpoint_policy(ep: &Endpoint) -> EndpointPolicy {
    EndpointPolicy {
        ipv4: ep.ipv4.clone(),
        ipv6: ep.ipv6.clone(),
        profiles: profile_names(ep, &ep.node),
    }
}

/// The (netgroup, address) pairs an endpoint of any node makes members:
/// none while it is being deleted.
pub(super) fn memberships(ep: &Endpoint) -> BTreeSet<(&str, IpAddr)> {
    if ep.deletion_requested {
        return BTreeSet::new();
    }
    ep.netgroups
        .iter()
        .flat_map(|n| addresses(ep).into_iter().map(move |a| (n.as_str(), a)))
        .collect()
}

/// An endpoint's addresses, IPv4 first.
pub fn addresses(endpoint: &Endpoint) -> Vec<IpAddr> {
    endpoint
        .ipv4
        .iter()
        .map(|a| IpAddr::V4(*a))
        .chain(endpoint.ipv6.iter().map(|a| IpAddr::V6(*a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::NetnsId;
    use reconcilers::policy::ProfileRules;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// An endpoint on `node` with address number `n` of each family.
    fn ep(node: &str, id: &str, n: u8, netgroups: &[&str]) -> Endpoint {
        Endpoint {
            node: node.to_string(),
            container_id: id.to_string(),
            netns: NetnsId { pid: 1, inode: 1 },
            ipv4: vec![v4(n)],
            ipv6: vec![v6(n)],
            netgroups: netgroups.iter().map(|s| s.to_string()).collect(),
            labels: Default::default(),
            holders: Default::default(),
            generation: 1,
            deletion_requested: false,
        }
    }

    fn deleting(mut e: Endpoint) -> Endpoint {
        e.deletion_requested = true;
        e
    }

    fn v4(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, n)
    }

    fn v6(n: u8) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n as u16)
    }

    fn host(node: &str, n: u8) -> Profile {
        Profile::host(node, &[IpAddr::V4(Ipv4Addr::new(198, 19, 0, n))])
    }

    fn policy(id: &str, n: u8, profiles: &[&str]) -> (String, EndpointPolicy) {
        (
            host_ifname(id),
            EndpointPolicy {
                ipv4: vec![v4(n)],
                ipv6: vec![v6(n)],
                profiles: profiles.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    fn members(ns: &[u8]) -> Members {
        Members {
            ipv4: ns.iter().map(|n| v4(*n)).collect(),
            ipv6: ns.iter().map(|n| v6(*n)).collect(),
        }
    }

    fn rules(profiles: &[Profile]) -> BTreeMap<String, ProfileRules> {
        profiles
            .iter()
            .map(|p| (p.name.clone(), p.rules.clone()))
            .collect()
    }

    struct Case {
        name: &'static str,
        node: Vec<Endpoint>,
        cluster: Vec<Endpoint>,
        profiles: Vec<Profile>,
        want: PolicySpec,
    }

    fn all_profiles() -> Vec<Profile> {
        vec![
            host("n1", 1),
            host("n2", 2),
            Profile::public(),
            Profile::netgroup("web"),
            Profile::netgroup("db"),
        ]
    }

    #[test]
    fn desired_policy_table() {
        let a = ep("n1", "a", 1, &["web"]);
        let b = ep("n1", "b", 2, &["db", "public"]);
        let c = ep("n2", "c", 3, &["web"]);
        let lone = ep("n1", "lone", 4, &[]);
        // A profile an operator made `web` reach `db` as well.
        let mut web_to_db = Profile::netgroup("web");
        web_to_db.rules.inbound.push(Rule::Netgroup("db".into()));
        let cases = vec![
            Case {
                name: "no endpoints: nothing",
                node: vec![],
                cluster: vec![c.clone()],
                profiles: all_profiles(),
                want: PolicySpec::default(),
            },
            Case {
                name: "membership spans nodes; unused profiles are left out",
                node: vec![a.clone()],
                cluster: vec![a.clone(), c.clone()],
                profiles: all_profiles(),
                want: PolicySpec {
                    endpoints: [policy("a", 1, &["host:n1", "web"])].into(),
                    profiles: rules(&[host("n1", 1), Profile::netgroup("web")]),
                    netgroups: [("web".into(), members(&[1, 3]))].into(),
                },
            },
            Case {
                name: "public first, no netgroup for public",
                node: vec![b.clone()],
                cluster: vec![b.clone()],
                profiles: all_profiles(),
                want: PolicySpec {
                    endpoints: [policy("b", 2, &["host:n1", "public", "db"])].into(),
                    profiles: rules(&[host("n1", 1), Profile::public(), Profile::netgroup("db")]),
                    netgroups: [("db".into(), members(&[2]))].into(),
                },
            },
            Case {
                name: "no netgroups: reachable from its node only",
                node: vec![lone.clone()],
                cluster: vec![lone.clone(), a.clone()],
                profiles: all_profiles(),
                want: PolicySpec {
                    endpoints: [policy("lone", 4, &["host:n1"])].into(),
                    profiles: rules(&[host("n1", 1)]),
                    netgroups: BTreeMap::new(),
                },
            },
            Case {
                name: "endpoints being deleted are neither policed nor members",
                node: vec![a.clone(), deleting(b.clone())],
                cluster: vec![a.clone(), deleting(b.clone()), deleting(c.clone())],
                profiles: all_profiles(),
                want: PolicySpec {
                    endpoints: [policy("a", 1, &["host:n1", "web"])].into(),
                    profiles: rules(&[host("n1", 1), Profile::netgroup("web")]),
                    netgroups: [("web".into(), members(&[1]))].into(),
                },
            },
            Case {
                name: "a netgroup a rule names is included, even with no members",
                node: vec![a.clone()],
                cluster: vec![a.clone(), c.clone()],
                profiles: vec![host("n1", 1), web_to_db.clone()],
                want: PolicySpec {
                    endpoints: [policy("a", 1, &["host:n1", "web"])].into(),
                    profiles: rules(&[host("n1", 1), web_to_db.clone()]),
                    netgroups: [
                        ("web".into(), members(&[1, 3])),
                        ("db".into(), Members::default()),
                    ]
                    .into(),
                },
            },
            Case {
                name: "a missing profile stays missing (fails closed)",
                node: vec![a.clone()],
                cluster: vec![a.clone()],
                profiles: vec![Profile::netgroup("web")],
                want: PolicySpec {
                    endpoints: [policy("a", 1, &["host:n1", "web"])].into(),
                    profiles: rules(&[Profile::netgroup("web")]),
                    netgroups: [("web".into(), members(&[1]))].into(),
                },
            },
            Case {
                name: "this node's endpoints count as members even if listed apart",
                node: vec![a.clone()],
                cluster: vec![c.clone()],
                profiles: all_profiles(),
                want: PolicySpec {
                    endpoints: [policy("a", 1, &["host:n1", "web"])].into(),
                    profiles: rules(&[host("n1", 1), Profile::netgroup("web")]),
                    netgroups: [("web".into(), members(&[1, 3]))].into(),
                },
            },
        ];
        for case in cases {
            let got = desired_policy(&case.node, &case.cluster, &case.profiles);
            assert_eq!(got, case.want, "case: {}", case.name);
        }
    }

    #[test]
    fn addresses_ipv4_first() {
        let e = ep("n1", "a", 7, &[]);
        assert_eq!(addresses(&e), [IpAddr::V4(v4(7)), IpAddr::V6(v6(7))]);
    }
}
