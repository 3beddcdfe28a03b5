//! Our nftables table as plain data: what [`render`](super::render())
//! wants and what [`observe`](super::observe) reads back, in one shape so
//! that [`plan`](super::plan()) can compare them.
//!
//! Rules are identified by their comment, which carries a readable label
//! and a short hash of the rule's rendered content: nft re-serialises
//! expressions in its own way when it lists them, so comparing expressions
//! would need a normaliser for every construct; comparing comments needs
//! none. Everything else (sets, set elements, map entries, base chain
//! hooks) is compared by value.
//!
//! Interface and chain names in elements and map entries are `Arc<str>`:
//! a node's table repeats each interface name four times and each chain
//! name once per endpoint, and rendering it is on every change's path.

use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The name of our table (family `inet`). Nothing outside it is ever read
/// or changed.
pub const TABLE: &str = "calico-mesos";
/// The family of our table.
pub const FAMILY: NfFamily = NfFamily::INet;
/// Chain that checks traffic coming from an endpoint (its outbound rules).
pub const FROM_ENDPOINT: &str = "from-endpoint";
/// Chain that checks traffic going to an endpoint (its inbound rules).
pub const TO_ENDPOINT: &str = "to-endpoint";
/// Chain that sends traffic from an endpoint to its profile list's
/// `ep-out.<id>`: one rule per list, matching the list's interface set.
pub const FROM_LIST: &str = "from-endpoint-list";
/// Chain that sends traffic to an endpoint to its profile list's
/// `ep-in.<id>`: one rule per list, matching the list's interface set.
pub const TO_LIST: &str = "to-endpoint-list";
/// Anti-spoofing set: `ifname . ipv4_addr` pairs an endpoint may send from.
pub const SRC_V4: &str = "ep-src.v4";
/// Anti-spoofing set: `ifname . ipv6_addr` pairs an endpoint may send from.
pub const SRC_V6: &str = "ep-src.v6";

/// The id of an ordered profile list: 16 hex digits of the SHA-256 of the
/// names, each preceded by its length (so no two lists encode alike).
/// Every endpoint with this list shares the chains named from it.
pub fn profile_list_id(profiles: &[String]) -> String {
    let mut h = Sha256::new();
    for p in profiles {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut id = String::with_capacity(16);
    for b in &digest[..8] {
        use std::fmt::Write;
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// The chain holding the outbound rules of a profile list (by its
/// [`profile_list_id`]).
pub fn ep_out_chain(list_id: &str) -> String {
    format!("ep-out.{list_id}")
}

/// The chain holding the inbound rules of a profile list (by its
/// [`profile_list_id`]).
pub fn ep_in_chain(list_id: &str) -> String {
    format!("ep-in.{list_id}")
}

/// What the name of a profile list's interface set starts with.
const LIST_SET_PREFIX: &str = "ep.";

/// The set of the host interfaces of the endpoints that have a profile
/// list (by its [`profile_list_id`]).
pub fn list_set(list_id: &str) -> String {
    format!("{LIST_SET_PREFIX}{list_id}")
}

/// The set holding a netgroup's IPv4 (`v6 == false`) or IPv6 members.
pub fn netgroup_set(netgroup: &str, v6: bool) -> String {
    format!("ng.{netgroup}.{}", if v6 { "v6" } else { "v4" })
}

/// The whole table: named sets, verdict maps and chains, by name. We
/// build no maps any more (see [`FROM_LIST`]); a table of an earlier
/// version has two, which a plan deletes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Named sets.
    pub sets: BTreeMap<String, SetModel>,
    /// Named verdict maps.
    pub maps: BTreeMap<String, MapModel>,
    /// Chains, base and regular.
    pub chains: BTreeMap<String, ChainModel>,
}

/// The element type of a named set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetKind {
    /// `ipv4_addr`.
    Ipv4,
    /// `ipv6_addr`.
    Ipv6,
    /// `ifname . ipv4_addr`.
    IfnameIpv4,
    /// `ifname . ipv6_addr`.
    IfnameIpv6,
    /// `ifname`.
    Ifname,
    /// Only in observations: a type we never build, or elements we could
    /// not read. Never equal to what we want, so the table is rebuilt.
    Unsupported,
}

impl SetKind {
    /// The type as nft names it.
    pub fn nft_type(self) -> &'static [&'static str] {
        match self {
            SetKind::Ipv4 => &["ipv4_addr"],
            SetKind::Ipv6 => &["ipv6_addr"],
            SetKind::IfnameIpv4 => &["ifname", "ipv4_addr"],
            SetKind::IfnameIpv6 => &["ifname", "ipv6_addr"],
            SetKind::Ifname => &["ifname"],
            SetKind::Unsupported => &[],
        }
    }
}

/// One element of a named set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetElem {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address.
    V6(Ipv6Addr),
    /// An interface and an IPv4 address.
    IfV4(Arc<str>, Ipv4Addr),
    /// An interface and an IPv6 address.
    IfV6(Arc<str>, Ipv6Addr),
    /// An interface.
    If(Arc<str>),
}

impl SetElem {
    /// The kind of set this element belongs in.
    pub fn kind(&self) -> SetKind {
        match self {
            SetElem::V4(_) => SetKind::Ipv4,
            SetElem::V6(_) => SetKind::Ipv6,
            SetElem::IfV4(..) => SetKind::IfnameIpv4,
            SetElem::IfV6(..) => SetKind::IfnameIpv6,
            SetElem::If(_) => SetKind::Ifname,
        }
    }
}

impl std::fmt::Display for SetElem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetElem::V4(a) => write!(f, "{a}"),
            SetElem::V6(a) => write!(f, "{a}"),
            SetElem::IfV4(i, a) => write!(f, "\"{i}\" . {a}"),
            SetElem::IfV6(i, a) => write!(f, "\"{i}\" . {a}"),
            SetElem::If(i) => write!(f, "\"{i}\""),
        }
    }
}

/// A named set and its elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetModel {
    /// Its element type.
    pub kind: SetKind,
    /// Its elements.
    pub elements: BTreeSet<SetElem>,
}

impl SetModel {
    /// An empty set of `kind`.
    pub fn new(kind: SetKind) -> SetModel {
        SetModel {
            kind,
            elements: BTreeSet::new(),
        }
    }
}

/// What a verdict map entry does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapTarget {
    /// `goto <chain>`: the only kind we build.
    Goto(Arc<str>),
    /// Only in observations: any other verdict, as nft lists it.
    Other(String),
}

/// A named verdict map, keyed by interface name (`type ifname : verdict`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapModel {
    /// False when an observed map with this name has another type (then
    /// the table is rebuilt).
    pub well_typed: bool,
    /// Interface name → verdict.
    pub entries: BTreeMap<Arc<str>, MapTarget>,
}

impl Default for MapModel {
    fn default() -> Self {
        MapModel {
            well_typed: true,
            entries: BTreeMap::new(),
        }
    }
}

/// A base chain's hook, as nft lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHook {
    /// The netfilter hook.
    pub hook: NfHook,
    /// The chain type.
    pub chain_type: NfChainType,
    /// The priority.
    pub prio: i32,
    /// The policy.
    pub policy: NfChainPolicy,
}

impl BaseHook {
    /// A filter chain at priority `filter` (0) with policy accept: ours
    /// only ever dispatch, never decide for traffic that is not theirs.
    pub fn filter(hook: NfHook) -> BaseHook {
        BaseHook {
            hook,
            chain_type: NfChainType::Filter,
            prio: 0,
            policy: NfChainPolicy::Accept,
        }
    }
}

/// A chain: a base chain when it has a hook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainModel {
    /// The hook of a base chain; `None` for a regular chain.
    pub base: Option<BaseHook>,
    /// Its rules, in order.
    pub rules: Vec<RuleModel>,
}

/// One rule: its statements and the comment that identifies it.
///
/// Equality compares comments only (see the module doc): the comment of a
/// rendered rule ends with a hash of its statements.
#[derive(Clone, Debug)]
pub struct RuleModel {
    /// `<label> <hash>`; empty for an observed rule without a comment.
    pub comment: String,
    /// The statements; empty for observed rules, which are recognised by
    /// their comment alone (nft's listing of them is not read).
    pub expr: Vec<Statement<'static>>,
}

impl PartialEq for RuleModel {
    fn eq(&self, other: &Self) -> bool {
        self.comment == other.comment
    }
}

impl Eq for RuleModel {}

impl ChainModel {
    /// The comments of its rules: what identifies its content.
    pub fn signature(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.comment.as_str()).collect()
    }
}

impl Ruleset {
    /// Number of rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// The id of the profile list whose interface set holds `ifname`.
    pub fn list_of(&self, ifname: &str) -> Option<&str> {
        let elem = SetElem::If(ifname.into());
        self.sets.iter().find_map(|(name, set)| {
            let id = name.strip_prefix(LIST_SET_PREFIX)?;
            set.elements.contains(&elem).then_some(id)
        })
    }

    /// Number of set elements plus map entries.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum::<usize>()
            + self.maps.values().map(|m| m.entries.len()).sum::<usize>()
    }
}
