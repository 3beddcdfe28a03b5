//! Plain data: the fabric routes wanted, the fabric routes the kernel
//! showed, the actions between them, and [`desired_routes`], which turns
//! cluster facts (blocks, endpoints, node addresses) into the wanted set.
//! No kernel access here.

use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// One wanted route: `dst` via another node's fabric address `via`, in the
/// main table with our protocol; the kernel picks the output interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FabricRoute {
    /// The destination: a block, or one address (/32, /128) borrowed from
    /// a block that is not affine to the node the container runs on.
    pub dst: IpNet,
    /// The next hop: the fabric address of the node that has `dst`.
    pub via: IpAddr,
}

/// Every fabric route this node should have: plain data handed in by the
/// caller. Unchecked; [`FabricSpec::validate`] makes a [`ValidFabricSpec`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FabricSpec {
    /// The routes, in any order; an exact duplicate counts once.
    pub routes: Vec<FabricRoute>,
}

/// Why a [`FabricSpec`] is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Destination and gateway are of different families.
    #[error("route {dst} via {via}: destination and gateway are of different address families")]
    FamilyMismatch {
        /// The destination.
        dst: IpNet,
        /// The gateway.
        via: IpAddr,
    },
    /// The destination has host bits set (e.g. 198.18.0.65/26).
    #[error("route {dst} via {via}: the destination is not a network address (did you mean {}?)", .dst.trunc())]
    NotNetwork {
        /// The destination.
        dst: IpNet,
        /// The gateway.
        via: IpAddr,
    },
    /// A default route (/0) is never a fabric route.
    #[error("route {dst} via {via}: a default route is not a fabric route")]
    DefaultRoute {
        /// The destination.
        dst: IpNet,
        /// The gateway.
        via: IpAddr,
    },
    /// The gateway cannot be a next hop (unspecified, loopback, multicast
    /// or broadcast).
    #[error("route {dst} via {via}: {via} cannot be a next hop")]
    BadGateway {
        /// The destination.
        dst: IpNet,
        /// The gateway.
        via: IpAddr,
    },
    /// One destination wanted through two different gateways.
    #[error("route {dst} is wanted via two gateways: {first} and {second}")]
    Conflict {
        /// The destination.
        dst: IpNet,
        /// One gateway.
        first: IpAddr,
        /// The other gateway.
        second: IpAddr,
    },
}

/// A checked [`FabricSpec`]: one gateway per destination, families match,
/// destinations are network addresses. Only [`FabricSpec::validate`] makes one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidFabricSpec {
    routes: BTreeMap<IpNet, IpAddr>,
}

impl ValidFabricSpec {
    /// The wanted gateway of every destination, ordered by destination.
    pub fn routes(&self) -> &BTreeMap<IpNet, IpAddr> {
        &self.routes
    }
}

fn bad_next_hop(via: IpAddr) -> bool {
    via.is_unspecified()
        || via.is_loopback()
        || via.is_multicast()
        || matches!(via, IpAddr::V4(v) if v.is_broadcast())
}

impl FabricSpec {
    /// Checks the spec; the first problem found (in the routes' order) is
    /// the error.
    pub fn validate(&self) -> Result<ValidFabricSpec, SpecError> {
        let mut routes = BTreeMap::new();
        for &FabricRoute { dst, via } in &self.routes {
            if dst.addr().is_ipv4() != via.is_ipv4() {
                return Err(SpecError::FamilyMismatch { dst, via });
            }
            if dst.trunc() != dst {
                return Err(SpecError::NotNetwork { dst, via });
            }
            if dst.prefix_len() == 0 {
                return Err(SpecError::DefaultRoute { dst, via });
            }
            if bad_next_hop(via) {
                return Err(SpecError::BadGateway { dst, via });
            }
            match routes.insert(dst, via) {
                Some(first) if first != via => {
                    return Err(SpecError::Conflict {
                        dst,
                        first,
                        second: via,
                    })
                }
                _ => {}
            }
        }
        Ok(ValidFabricSpec { routes })
    }
}

/// The metric the kernel gives a route added without one: 0 for IPv4,
/// 1024 for IPv6. Our routes are added without one, so a route of ours at
/// another metric was not made by us as it is and is replaced by one at
/// this metric.
pub fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// One fabric route of ours found in the kernel (see the module doc of
/// [`super`] for which routes count as ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservedRoute {
    /// The destination.
    pub dst: IpNet,
    /// The gateway.
    pub via: IpAddr,
    /// The metric (RTA_PRIORITY; 0 when IPv4 reports none).
    pub metric: u32,
}

impl ObservedRoute {
    /// The route as the kernel shows it, as a [`FabricRoute`].
    pub fn route(&self) -> FabricRoute {
        FabricRoute {
            dst: self.dst,
            via: self.via,
        }
    }
}

/// One step of a fabric plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FabricAction {
    /// Add a missing route (fails, and is reported, if a route that is not
    /// ours holds the same destination and metric).
    Add(FabricRoute),
    /// Replace (`NLM_F_REPLACE`) our route for `to.dst` at the default
    /// metric, whose gateway is wrong, with one via `to.via`.
    Replace {
        /// The route of ours found.
        from: ObservedRoute,
        /// The route wanted.
        to: FabricRoute,
    },
    /// Delete one route of ours (matched by destination, gateway, metric
    /// and our protocol; a route already gone is not an error).
    Delete(ObservedRoute),
}

impl FabricAction {
    /// The destination the action is about.
    pub fn dst(&self) -> IpNet {
        match self {
            Self::Add(r) => r.dst,
            Self::Replace { to, .. } => to.dst,
            Self::Delete(o) => o.dst,
        }
    }
}

impl fmt::Display for FabricRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.dst, self.via)
    }
}

impl fmt::Display for ObservedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {} metric {}", self.dst, self.via, self.metric)
    }
}

impl fmt::Display for FabricAction {
    /// One line an operator can read, e.g. "add route 198.18.0.64/26 via 198.19.0.2".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Add(r) => write!(f, "add route {r}"),
            Self::Replace { from, to } => {
                write!(f, "replace route {from} with {to}")
            }
            Self::Delete(o) => write!(f, "delete route {o}"),
        }
    }
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => v.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn full_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

/// The fabric routes this node needs, from cluster facts.
///
/// - `blocks`: every IPAM block with the node it is affine to;
/// - `endpoints_elsewhere`: the addresses of containers, with the node each
///   runs on (entries for `this_node` are ignored);
/// - `nodes`: each node's fabric addresses (the first one of a family, not
///   link-local, is the next hop for that family);
/// - `this_node`: our node's name.
///
/// Gives a route per block affine to another node, via that node's address
/// of the block's family; and a host route (/32, /128) per container
/// address on another node that lies outside every block affine to that
/// node (an address borrowed from someone else's block: the longest
/// prefix wins over the block's route). Nothing for this node's blocks or
/// containers. Skipped, each with a warning: a node that is unknown or has
/// no usable address of the family; a destination claimed by two nodes
/// (a block affine to two, or one address on two), which gets no route at
/// all rather than a guessed one. The spec is sorted by destination and
/// always passes [`FabricSpec::validate`] when the inputs are well formed
/// (blocks given as network addresses).
pub fn desired_routes(
    blocks: &[(IpNet, String)],
    endpoints_elsewhere: &[(IpAddr, String)],
    nodes: &BTreeMap<String, Vec<IpAddr>>,
    this_node: &str,
) -> (FabricSpec, Vec<String>) {
    let mut warnings = Vec::new();
    let next_hop = |node: &str, v4: bool, what: &str, warnings: &mut Vec<String>| {
        let Some(addrs) = nodes.get(node) else {
            warnings.push(format!(
                "{what} is on node {node}, which is unknown: no route"
            ));
            return None;
        };
        let found = addrs
            .iter()
            .find(|a| a.is_ipv4() == v4 && !is_link_local(a) && !bad_next_hop(**a))
            .copied();
        if found.is_none() {
            let fam = if v4 { "IPv4" } else { "IPv6" };
            warnings.push(format!(
                "{what} is on node {node}, which has no {fam} fabric address: no route"
            ));
        }
        found
    };

    // Destination → the nodes that claim it.
    let mut claims: BTreeMap<IpNet, BTreeSet<&str>> = BTreeMap::new();
    for (block, node) in blocks {
        claims.entry(*block).or_default().insert(node);
    }
    let mut host_claims: BTreeMap<IpNet, BTreeSet<&str>> = BTreeMap::new();
    for (addr, node) in endpoints_elsewhere {
        if node == this_node {
            continue;
        }
        let inside_own_block = blocks.iter().any(|(b, n)| n == node && b.contains(addr));
        if !inside_own_block {
            host_claims.entry(full_net(*addr)).or_default().insert(node);
        }
    }

    let mut routes = Vec::new();
    for (kind, map) in [("block", &claims), ("borrowed address", &host_claims)] {
        for (dst, owners) in map {
            if owners.len() > 1 {
                let list: Vec<&str> = owners.iter().copied().collect();
                warnings.push(format!(
                    "{kind} {dst} is claimed by nodes {}: no route",
                    list.join(", ")
                ));
                continue;
            }
            let node = *owners.iter().next().expect("one owner");
            if node == this_node {
                continue;
            }
            let what = format!("{kind} {dst}");
            if let Some(via) = next_hop(node, dst.addr().is_ipv4(), &what, &mut warnings) {
                routes.push(FabricRoute { dst: *dst, via });
            }
        }
    }
    routes.sort();
    (FabricSpec { routes }, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn r(dst: &str, via: &str) -> FabricRoute {
        FabricRoute {
            dst: net(dst),
            via: ip(via),
        }
    }
    fn nodes() -> BTreeMap<String, Vec<IpAddr>> {
        [
            ("n1", vec![ip("198.19.0.1"), ip("2001:db8:f::1")]),
            (
                "n2",
                vec![ip("fe80::2"), ip("2001:db8:f::2"), ip("198.19.0.2")],
            ),
            ("n3", vec![ip("198.19.0.3")]),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect()
    }
    fn blocks(list: &[(&str, &str)]) -> Vec<(IpNet, String)> {
        list.iter().map(|(b, n)| (net(b), n.to_string())).collect()
    }
    fn eps(list: &[(&str, &str)]) -> Vec<(IpAddr, String)> {
        list.iter().map(|(a, n)| (ip(a), n.to_string())).collect()
    }

    #[test]
    fn validate_accepts_good_routes_and_merges_exact_duplicates() {
        let s = FabricSpec {
            routes: vec![
                r("198.18.0.64/26", "198.19.0.2"),
                r("2001:db8:1::40/122", "2001:db8:f::2"),
                r("198.18.0.64/26", "198.19.0.2"),
                r("198.18.1.7/32", "198.19.0.3"),
            ],
        };
        let v = s.validate().unwrap();
        assert_eq!(v.routes().len(), 3);
        assert_eq!(v.routes()[&net("198.18.0.64/26")], ip("198.19.0.2"));
    }

    #[test]
    fn validate_refuses_bad_routes_naming_them() {
        let cases: Vec<(FabricRoute, SpecError, &str)> = vec![
            (
                r("198.18.0.64/26", "2001:db8:f::2"),
                SpecError::FamilyMismatch {
                    dst: net("198.18.0.64/26"),
                    via: ip("2001:db8:f::2"),
                },
                "route 198.18.0.64/26 via 2001:db8:f::2: destination and gateway are of different address families",
            ),
            (
                r("198.18.0.65/26", "198.19.0.2"),
                SpecError::NotNetwork {
                    dst: net("198.18.0.65/26"),
                    via: ip("198.19.0.2"),
                },
                "route 198.18.0.65/26 via 198.19.0.2: the destination is not a network address (did you mean 198.18.0.64/26?)",
            ),
            (
                r("::/0", "2001:db8:f::2"),
                SpecError::DefaultRoute {
                    dst: net("::/0"),
                    via: ip("2001:db8:f::2"),
                },
                "route ::/0 via 2001:db8:f::2: a default route is not a fabric route",
            ),
            (
                r("198.18.0.64/26", "0.0.0.0"),
                SpecError::BadGateway {
                    dst: net("198.18.0.64/26"),
                    via: ip("0.0.0.0"),
                },
                "route 198.18.0.64/26 via 0.0.0.0: 0.0.0.0 cannot be a next hop",
            ),
        ];
        for (route, err, msg) in cases {
            let s = FabricSpec {
                routes: vec![r("198.18.1.0/26", "198.19.0.3"), route],
            };
            let got = s.validate().unwrap_err();
            assert_eq!(got, err);
            assert_eq!(got.to_string(), msg);
        }
    }

    #[test]
    fn validate_names_both_gateways_of_a_conflict() {
        let s = FabricSpec {
            routes: vec![
                r("198.18.0.64/26", "198.19.0.2"),
                r("198.18.0.64/26", "198.19.0.3"),
            ],
        };
        let e = s.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "route 198.18.0.64/26 is wanted via two gateways: 198.19.0.2 and 198.19.0.3"
        );
    }

    #[test]
    fn blocks_of_other_nodes_get_routes_ours_do_not() {
        let (spec, warnings) = desired_routes(
            &blocks(&[
                ("198.18.0.0/26", "n1"),
                ("198.18.0.64/26", "n2"),
                ("2001:db8:1::40/122", "n2"),
                ("198.18.0.128/26", "n3"),
                ("2001:db8:1::/122", "n1"),
            ]),
            &[],
            &nodes(),
            "n1",
        );
        assert_eq!(
            spec.routes,
            vec![
                r("198.18.0.64/26", "198.19.0.2"),
                r("198.18.0.128/26", "198.19.0.3"),
                // n2's link-local address is passed over.
                r("2001:db8:1::40/122", "2001:db8:f::2"),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn borrowed_addresses_get_host_routes_others_do_not() {
        let (spec, warnings) = desired_routes(
            &blocks(&[("198.18.0.0/26", "n1"), ("198.18.0.64/26", "n2")]),
            &eps(&[
                // Inside n2's own block: the block route covers it.
                ("198.18.0.70", "n2"),
                // Borrowed from n1's block, runs on n2.
                ("198.18.0.5", "n2"),
                // From no block at all, runs on n3.
                ("198.18.9.9", "n3"),
                // Ours: ignored.
                ("198.18.0.6", "n1"),
                // IPv6, borrowed, on n2.
                ("2001:db8:1::99", "n2"),
            ]),
            &nodes(),
            "n1",
        );
        assert_eq!(
            spec.routes,
            vec![
                r("198.18.0.5/32", "198.19.0.2"),
                r("198.18.0.64/26", "198.19.0.2"),
                r("198.18.9.9/32", "198.19.0.3"),
                r("2001:db8:1::99/128", "2001:db8:f::2"),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_borrowed_address_seen_from_the_block_owner_and_from_a_third_node() {
        let b = blocks(&[("198.18.0.0/26", "n1"), ("198.18.0.64/26", "n2")]);
        let e = eps(&[("198.18.0.5", "n2")]);
        // The block's own node needs the host route too.
        let (on_n1, _) = desired_routes(&b, &e, &nodes(), "n1");
        assert!(on_n1.routes.contains(&r("198.18.0.5/32", "198.19.0.2")));
        // A third node has the block route via n1 and the longer host route via n2.
        let (on_n3, _) = desired_routes(&b, &e, &nodes(), "n3");
        assert_eq!(
            on_n3.routes,
            vec![
                r("198.18.0.0/26", "198.19.0.1"),
                r("198.18.0.5/32", "198.19.0.2"),
                r("198.18.0.64/26", "198.19.0.2"),
            ]
        );
        // The node the container runs on needs nothing for it.
        let (on_n2, _) = desired_routes(&b, &e, &nodes(), "n2");
        assert_eq!(on_n2.routes, vec![r("198.18.0.0/26", "198.19.0.1")]);
    }

    #[test]
    fn unknown_nodes_missing_families_and_conflicts_are_skipped_with_warnings() {
        let (spec, warnings) = desired_routes(
            &blocks(&[
                ("198.18.0.64/26", "ghost"),
                ("2001:db8:1::80/122", "n3"),
                ("198.18.1.0/26", "n2"),
                ("198.18.1.0/26", "n3"),
                ("198.18.2.0/26", "n2"),
            ]),
            &eps(&[("198.18.7.7", "n2"), ("198.18.7.7", "n3")]),
            &nodes(),
            "n1",
        );
        assert_eq!(spec.routes, vec![r("198.18.2.0/26", "198.19.0.2")]);
        assert_eq!(
            warnings,
            vec![
                "block 198.18.0.64/26 is on node ghost, which is unknown: no route",
                "block 198.18.1.0/26 is claimed by nodes n2, n3: no route",
                "block 2001:db8:1::80/122 is on node n3, which has no IPv6 fabric address: no route",
                "borrowed address 198.18.7.7/32 is claimed by nodes n2, n3: no route",
            ]
        );
    }

    #[test]
    fn nothing_at_all_is_an_empty_spec() {
        let (spec, warnings) = desired_routes(&[], &[], &BTreeMap::new(), "n1");
        assert!(spec.routes.is_empty() && warnings.is_empty());
    }
}
