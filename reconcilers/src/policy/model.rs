//! The desired policy of one node, as plain data: what the store's
//! profiles and endpoints say, with no store or Mesos types.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// One allow rule of a profile: whom it lets in (inbound: the source) or
/// out (outbound: the destination). What no rule allows is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Anyone.
    All,
    /// The addresses of every endpoint, on any node, in this netgroup.
    Netgroup(String),
    /// Any address in this network.
    Cidr(IpNet),
}

/// A profile's rules, as operators see and (later) edit them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProfileRules {
    /// Who may send to an endpoint with this profile.
    pub inbound: Vec<Rule>,
    /// Where an endpoint with this profile may send.
    pub outbound: Vec<Rule>,
}

/// The addresses of a netgroup's members, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Members {
    /// IPv4 addresses of the members.
    pub ipv4: BTreeSet<Ipv4Addr>,
    /// IPv6 addresses of the members.
    pub ipv6: BTreeSet<Ipv6Addr>,
}

/// One endpoint of this node, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EndpointPolicy {
    /// Its IPv4 addresses: the only IPv4 sources it may send from.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its IPv6 addresses: the only IPv6 sources it may send from.
    pub ipv6: Vec<Ipv6Addr>,
    /// Its profiles, in order (host profile, `public` if asked, one per
    /// netgroup). Traffic passes when any of them allows it. A name with no
    /// profile in [`PolicySpec::profiles`] allows nothing (fail closed).
    pub profiles: Vec<String>,
}

/// The whole desired policy of one node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PolicySpec {
    /// This node's endpoints, by host-side interface name.
    pub endpoints: BTreeMap<String, EndpointPolicy>,
    /// Profiles by name (at least every one an endpoint names).
    pub profiles: BTreeMap<String, ProfileRules>,
    /// Netgroup membership, cluster-wide (at least every netgroup a rule
    /// names; a netgroup missing here has no members).
    pub netgroups: BTreeMap<String, Members>,
}
