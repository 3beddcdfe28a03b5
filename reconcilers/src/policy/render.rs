//! Pure: a node's [`PolicySpec`] → the [`Ruleset`] our table must hold.
//!
//! Shape (DESIGN.md "Policy"; the README's design notes say why):
//!
//! - base chains `forward`, `input`, `output` (filter, priority 0, policy
//!   accept) only dispatch traffic of `cali*` interfaces: from an endpoint
//!   → `jump from-endpoint`, to an endpoint → `jump to-endpoint`. Nothing
//!   else is ever looked at.
//! - `from-endpoint`: IPv6 neighbour discovery (hop limit 255, so never a
//!   forwarded packet) accept; anti-spoofing (`iifname . ip saddr` must be
//!   in `ep-src.v4`, same for IPv6) *before* conntrack, so a spoofed packet
//!   cannot ride on another endpoint's established flow; established and
//!   related accept; invalid drop; `goto from-endpoint-list`.
//! - `to-endpoint`: neighbour discovery accept; established, related
//!   accept; invalid drop; `goto to-endpoint-list`.
//! - one pair of chains per distinct ordered profile list on the node, named
//!   from it (`<id>` is [`profile_list_id`], 16 hex digits of a hash of the
//!   list) and shared by every endpoint with that list, and one set
//!   `ep.<id>` (`type ifname`) of those endpoints' interfaces. The
//!   dispatch chains hold one rule per list, in id order:
//!   `from-endpoint-list`: `iifname @ep.<id> goto ep-out.<id>`,
//!   `to-endpoint-list`: `oifname @ep.<id> goto ep-in.<id>`; then drop (an
//!   interface of no list). `ep-out.<id>`: every outbound rule of the
//!   list's profiles with verdict `return` (back in the base chain, the
//!   destination's check follows), de-duplicated, then drop. `ep-in.<id>`:
//!   inbound rules with `accept`, then drop. A rule that allows everything
//!   ends the chain (what would follow it could never match). Unknown
//!   profiles add nothing, so a list whose profiles are all unknown drops
//!   all. The name depends on the list, not on the profiles' rules: editing
//!   a profile rewrites its lists' chains in place and leaves every set
//!   alone.
//!
//!   Why sets and not a verdict map `ifname → goto`: every commit that
//!   adds a verdict map element has the kernel validate the whole table,
//!   every element of the map and the chain it names, so each isolate's
//!   commit cost grew with the node; adding to a plain set validates
//!   nothing. The price: a new flow of an endpoint walks one rule per list
//!   on the node (after the conntrack accept, so only a flow's first
//!   packet), and a list that comes or goes rewrites the two dispatch
//!   chains.
//! - netgroup `n` named by any rendered rule: sets `ng.<n>.v4`, `ng.<n>.v6`
//!   with its members' addresses.
//!
//! Size: chains and rules grow with the number of distinct profile lists
//! (at most the number of endpoints; on a real node one per combination of
//! netgroups and `public` in use there, the host profile being the
//! node's), and so do the dispatch rules; set elements grow with
//! endpoints (their addresses, and each interface once in its list's
//! set); two sets per netgroup; never anything per pair of endpoints. So
//! an endpoint whose list the node already has is element updates only:
//! its anti-spoofing elements, its list set element, its netgroup
//! members.

use super::model::{PolicySpec, Rule};
use super::ruleset::*;
use crate::HOST_IFNAME_PREFIX;
use ipnet::IpNet;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem, CT,
};
use nftables::stmt::{JumpTarget, Match, Operator, Statement};
use nftables::types::NfHook;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Why a spec cannot be rendered. Nothing is applied then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// An endpoint key is not a host-side interface name of ours.
    #[error("endpoint {name:?} is not a host interface name of ours (`{HOST_IFNAME_PREFIX}` then at most 11 of [A-Za-z0-9._-])")]
    EndpointName {
        /// The key given.
        name: String,
    },
    /// A profile names a netgroup that is not a valid netgroup name.
    #[error("profile {profile:?} names netgroup {name:?}, which is not 1 to 64 of [A-Za-z0-9._-]")]
    NetgroupName {
        /// The profile.
        profile: String,
        /// The netgroup name given.
        name: String,
    },
    /// Two different profile lists have the same id (a 64-bit hash
    /// collision: never expected, but sharing their chains would give one
    /// list the other's rules).
    #[error("profile lists {first:?} and {second:?} have the same id {id}: rename a profile")]
    ProfileListCollision {
        /// The id both hash to.
        id: String,
        /// One list.
        first: Vec<String>,
        /// The other.
        second: Vec<String>,
    },
}

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
/// Longest netgroup name.
const NETGROUP_MAX: usize = 64;
/// Longest readable label in a rule comment (nft's limit for the whole
/// comment is 128 bytes; the hash and a space follow the label).
const LABEL_MAX: usize = 100;

fn name_chars_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when `name` is a valid netgroup name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_netgroup(name: &str) -> bool {
    !name.is_empty() && name.len() <= NETGROUP_MAX && name_chars_ok(name)
}

/// True when `name` can be an endpoint's host-side interface: `cali`, then
/// 1 to 11 of `[A-Za-z0-9._-]`.
pub fn valid_endpoint(name: &str) -> bool {
    name.len() > HOST_IFNAME_PREFIX.len()
        && name.len() <= IFNAME_MAX
        && name.starts_with(HOST_IFNAME_PREFIX)
        && name_chars_ok(name)
}

fn s(text: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(text.into()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn ct_state() -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed("state"),
        family: None,
        dir: None,
    }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}

/// A rule whose comment is `label` plus the first 8 hex digits of the
/// SHA-256 of its statements' JSON.
pub(crate) fn rule(label: &str, expr: Vec<Statement<'static>>) -> RuleModel {
    let json = serde_json::to_string(&expr).expect("nft statements always serialise");
    let digest = Sha256::digest(json.as_bytes());
    let mut cut = label.len().min(LABEL_MAX);
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut comment = String::with_capacity(cut + 9);
    comment.push_str(&label[..cut]);
    comment.push(' ');
    for b in &digest[..4] {
        use std::fmt::Write;
        let _ = write!(comment, "{b:02x}");
    }
    RuleModel { comment, expr }
}

/// Traffic direction as seen from an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Dir {
    /// To the endpoint: match the source, verdict accept.
    In,
    /// From the endpoint: match the destination, verdict return.
    Out,
}

impl Dir {
    fn verdict(self) -> Statement<'static> {
        match self {
            Dir::In => Statement::Accept(None),
            Dir::Out => Statement::Return(None),
        }
    }

    fn field(self) -> &'static str {
        match self {
            Dir::In => "saddr",
            Dir::Out => "daddr",
        }
    }
}

/// The ICMPv6 neighbour discovery rule: these use link-local or
/// unspecified sources, which anti-spoofing would drop, and conntrack does
/// not track them. Hop limit 255 is what RFC 4861 requires of them and
/// what no forwarded packet has.
fn nd_rule(types: &[&str]) -> RuleModel {
    let set = types.iter().map(|t| SetItem::Element(s(*t))).collect();
    rule(
        "neighbour discovery",
        vec![
            matches(
                payload("icmpv6", "type"),
                Operator::EQ,
                Expression::Named(NamedExpression::Set(set)),
            ),
            matches(
                payload("ip6", "hoplimit"),
                Operator::EQ,
                Expression::Number(255),
            ),
            Statement::Accept(None),
        ],
    )
}

fn conntrack_rules() -> [RuleModel; 2] {
    [
        rule(
            "established or related",
            vec![
                matches(
                    ct_state(),
                    Operator::IN,
                    Expression::List(vec![s("established"), s("related")]),
                ),
                Statement::Accept(None),
            ],
        ),
        rule(
            "invalid",
            vec![
                matches(ct_state(), Operator::IN, s("invalid")),
                Statement::Drop(None),
            ],
        ),
    ]
}

fn drop_rule(label: &str) -> RuleModel {
    rule(label, vec![Statement::Drop(None)])
}

fn goto(chain: &str) -> Statement<'static> {
    Statement::Goto(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}

/// The rules of the two dispatch chains ([`FROM_LIST`], [`TO_LIST`]) for
/// the profile lists `ids` (sorted, so a table renders one way): per list,
/// its interface set → its chain; then drop (an interface of no list).
pub(super) fn dispatch_chains<'a>(
    ids: impl Iterator<Item = &'a str>,
) -> (Vec<RuleModel>, Vec<RuleModel>) {
    let by_set = |key: MetaKey, id: &str, chain: String| {
        rule(
            &format!("list {id}"),
            vec![
                matches(meta(key), Operator::EQ, s(format!("@{}", list_set(id)))),
                goto(&chain),
            ],
        )
    };
    let (mut out, mut inn) = (Vec::new(), Vec::new());
    for id in ids {
        out.push(by_set(MetaKey::Iifname, id, ep_out_chain(id)));
        inn.push(by_set(MetaKey::Oifname, id, ep_in_chain(id)));
    }
    out.push(drop_rule("no endpoint"));
    inn.push(drop_rule("no endpoint"));
    (out, inn)
}

/// The last rule of `from-endpoint` and `to-endpoint`: on to the
/// dispatch chain (a `goto`, so the list chain's `return` goes back to
/// the base chain).
fn to_dispatch(chain: &str) -> RuleModel {
    rule(&format!("by profile list in {chain}"), vec![goto(chain)])
}

fn cali_jump(key: MetaKey, chain: &str) -> RuleModel {
    rule(
        &format!("{HOST_IFNAME_PREFIX}* to {chain}"),
        vec![
            matches(meta(key), Operator::EQ, s(format!("{HOST_IFNAME_PREFIX}*"))),
            jump(chain),
        ],
    )
}

fn base_chains(rs: &mut Ruleset) {
    let from = || cali_jump(MetaKey::Iifname, FROM_ENDPOINT);
    let to = || cali_jump(MetaKey::Oifname, TO_ENDPOINT);
    for (name, hook, rules) in [
        ("forward", NfHook::Forward, vec![from(), to()]),
        ("input", NfHook::Input, vec![from()]),
        ("output", NfHook::Output, vec![to()]),
    ] {
        rs.chains.insert(
            name.to_string(),
            ChainModel {
                base: Some(BaseHook::filter(hook)),
                rules,
            },
        );
    }
    let [established, invalid] = conntrack_rules();
    let spoof = |field_proto: &'static str, set: &str| {
        rule(
            &format!("source not in {set}"),
            vec![
                matches(
                    Expression::Named(NamedExpression::Concat(vec![
                        meta(MetaKey::Iifname),
                        payload(field_proto, "saddr"),
                    ])),
                    Operator::NEQ,
                    s(format!("@{set}")),
                ),
                Statement::Drop(None),
            ],
        )
    };
    rs.chains.insert(
        FROM_ENDPOINT.to_string(),
        ChainModel {
            base: None,
            rules: vec![
                nd_rule(&[
                    "nd-neighbor-solicit",
                    "nd-neighbor-advert",
                    "nd-router-solicit",
                ]),
                spoof("ip", SRC_V4),
                spoof("ip6", SRC_V6),
                established.clone(),
                invalid.clone(),
                to_dispatch(FROM_LIST),
            ],
        },
    );
    rs.chains.insert(
        TO_ENDPOINT.to_string(),
        ChainModel {
            base: None,
            rules: vec![
                nd_rule(&["nd-neighbor-solicit", "nd-neighbor-advert"]),
                established,
                invalid,
                to_dispatch(TO_LIST),
            ],
        },
    );
}

/// Renders one profile rule for one direction (one or two nft rules);
/// records the netgroups it names.
fn render_rule(
    r: &Rule,
    dir: Dir,
    profile: &str,
    netgroups: &mut BTreeSet<String>,
) -> Result<Vec<RuleModel>, RenderError> {
    Ok(match r {
        Rule::All => vec![rule("all", vec![dir.verdict()])],
        Rule::Netgroup(n) => {
            if !valid_netgroup(n) {
                return Err(RenderError::NetgroupName {
                    profile: profile.to_string(),
                    name: n.clone(),
                });
            }
            netgroups.insert(n.clone());
            [("ip", false), ("ip6", true)]
                .into_iter()
                .map(|(proto, v6)| {
                    let set = netgroup_set(n, v6);
                    rule(
                        &format!("netgroup {n} {}", if v6 { "v6" } else { "v4" }),
                        vec![
                            matches(
                                payload(proto, dir.field()),
                                Operator::EQ,
                                s(format!("@{set}")),
                            ),
                            dir.verdict(),
                        ],
                    )
                })
                .collect()
        }
        Rule::Cidr(net) => {
            let net = net.trunc();
            let proto = match net {
                IpNet::V4(_) => "ip",
                IpNet::V6(_) => "ip6",
            };
            let prefix = Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(s(net.network().to_string())),
                len: u32::from(net.prefix_len()),
            }));
            vec![rule(
                &format!("cidr {net}"),
                vec![
                    matches(payload(proto, dir.field()), Operator::EQ, prefix),
                    dir.verdict(),
                ],
            )]
        }
    })
}

/// The rules of one direction of a profile list's chain: its profiles'
/// rules in order, de-duplicated, up to the first that allows everything,
/// then `deny` unless one did. Unknown profiles add nothing (fail closed).
fn list_rules<'s>(
    spec: &'s PolicySpec,
    profiles: &[String],
    dir: Dir,
    memo: &mut HashMap<(&'s Rule, Dir), Vec<RuleModel>>,
    netgroups: &mut BTreeSet<String>,
    deny: &RuleModel,
) -> Result<Vec<RuleModel>, RenderError> {
    let mut rules: Vec<RuleModel> = Vec::new();
    for profile in profiles {
        let Some(p) = spec.profiles.get(profile) else {
            continue;
        };
        let list = match dir {
            Dir::In => &p.inbound,
            Dir::Out => &p.outbound,
        };
        for r in list {
            let rendered = match memo.entry((r, dir)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(render_rule(r, dir, profile, netgroups)?),
            };
            for nr in rendered.iter() {
                // A chain holds a few rules: a scan beats a set here.
                if !rules.iter().any(|have| have.comment == nr.comment) {
                    rules.push(nr.clone());
                }
            }
            if *r == Rule::All {
                // After a rule that allows everything, nothing matters.
                return Ok(rules);
            }
        }
    }
    rules.push(deny.clone());
    Ok(rules)
}

/// The rules of a profile list's two chains and the netgroups they name.
pub(super) struct ListChains {
    /// The rules of `ep-out.<id>`.
    pub(super) outbound: Vec<RuleModel>,
    /// The rules of `ep-in.<id>`.
    pub(super) inbound: Vec<RuleModel>,
    /// Every netgroup a rule of either chain names.
    pub(super) netgroups: BTreeSet<String>,
}

/// Renders the two chains of the profile list `profiles`, as [`render`]
/// does, alone (for the incremental path, which renders only the lists a
/// change touches).
pub(super) fn list_chains(
    spec: &PolicySpec,
    profiles: &[String],
) -> Result<ListChains, RenderError> {
    let mut memo = HashMap::new();
    let mut netgroups = BTreeSet::new();
    let deny = drop_rule("nothing allows it");
    let outbound = list_rules(spec, profiles, Dir::Out, &mut memo, &mut netgroups, &deny)?;
    let inbound = list_rules(spec, profiles, Dir::In, &mut memo, &mut netgroups, &deny)?;
    Ok(ListChains {
        outbound,
        inbound,
        netgroups,
    })
}

/// Renders the table for `spec`. Fails on names that cannot be ours
/// (endpoint keys) or cannot be netgroups (names in rules).
pub fn render(spec: &PolicySpec) -> Result<Ruleset, RenderError> {
    let mut rs = Ruleset::default();
    base_chains(&mut rs);
    // Built as vectors in interface order, then collected: a sorted bulk
    // build costs a fraction of one insert at a time.
    let n = spec.endpoints.len();
    let mut src4 = Vec::with_capacity(n);
    let mut src6 = Vec::with_capacity(n);
    let mut netgroups = BTreeSet::new();
    // Many lists share profiles: render each (rule, direction) once.
    let mut memo: HashMap<(&Rule, Dir), Vec<RuleModel>> = HashMap::new();
    let deny = drop_rule("nothing allows it");
    // Profile list → its id and its endpoints' interfaces.
    let mut lists: HashMap<&[String], (String, Vec<SetElem>)> = HashMap::new();
    for (ifname, ep) in &spec.endpoints {
        if !valid_endpoint(ifname) {
            return Err(RenderError::EndpointName {
                name: ifname.clone(),
            });
        }
        let name: Arc<str> = Arc::from(ifname.as_str());
        src4.extend(ep.ipv4.iter().map(|a| SetElem::IfV4(name.clone(), *a)));
        src6.extend(ep.ipv6.iter().map(|a| SetElem::IfV6(name.clone(), *a)));
        let (_, members) = match lists.entry(ep.profiles.as_slice()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let id = profile_list_id(&ep.profiles);
                for (dir, chain) in [(Dir::Out, ep_out_chain(&id)), (Dir::In, ep_in_chain(&id))] {
                    let rules =
                        list_rules(spec, &ep.profiles, dir, &mut memo, &mut netgroups, &deny)?;
                    let model = ChainModel { base: None, rules };
                    if rs.chains.insert(chain, model).is_some() {
                        let first = spec
                            .endpoints
                            .values()
                            .map(|other| &other.profiles)
                            .find(|p| **p != ep.profiles && profile_list_id(p) == id)
                            .cloned()
                            .unwrap_or_default();
                        return Err(RenderError::ProfileListCollision {
                            id,
                            first,
                            second: ep.profiles.clone(),
                        });
                    }
                }
                e.insert((id, Vec::new()))
            }
        };
        members.push(SetElem::If(name));
    }
    let set = |kind, elements: Vec<SetElem>| SetModel {
        kind,
        elements: elements.into_iter().collect(),
    };
    rs.sets
        .insert(SRC_V4.to_string(), set(SetKind::IfnameIpv4, src4));
    rs.sets
        .insert(SRC_V6.to_string(), set(SetKind::IfnameIpv6, src6));
    let mut ids = BTreeSet::new();
    for (id, members) in lists.into_values() {
        rs.sets.insert(list_set(&id), set(SetKind::Ifname, members));
        ids.insert(id);
    }
    let (from_list, to_list) = dispatch_chains(ids.iter().map(String::as_str));
    for (name, rules) in [(FROM_LIST, from_list), (TO_LIST, to_list)] {
        rs.chains
            .insert(name.to_string(), ChainModel { base: None, rules });
    }
    for n in netgroups {
        let (v4, v6) = match spec.netgroups.get(&n) {
            Some(m) => (
                m.ipv4.iter().map(|a| SetElem::V4(*a)).collect(),
                m.ipv6.iter().map(|a| SetElem::V6(*a)).collect(),
            ),
            None => Default::default(),
        };
        rs.sets.insert(
            netgroup_set(&n, false),
            SetModel {
                kind: SetKind::Ipv4,
                elements: v4,
            },
        );
        rs.sets.insert(
            netgroup_set(&n, true),
            SetModel {
                kind: SetKind::Ipv6,
                elements: v6,
            },
        );
    }
    Ok(rs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{EndpointPolicy, Members, ProfileRules};

    fn spec() -> PolicySpec {
        let mut s = PolicySpec::default();
        s.profiles.insert(
            "a".into(),
            ProfileRules {
                inbound: vec![Rule::Netgroup("a".into())],
                outbound: vec![Rule::All],
            },
        );
        s.profiles.insert(
            "public".into(),
            ProfileRules {
                inbound: vec![Rule::All],
                outbound: vec![Rule::All],
            },
        );
        s.endpoints.insert(
            "cali1".into(),
            EndpointPolicy {
                ipv4: vec!["198.18.0.1".parse().unwrap()],
                ipv6: vec![],
                profiles: vec!["a".into(), "public".into(), "nope".into()],
            },
        );
        s.netgroups.insert(
            "a".into(),
            Members {
                ipv4: ["198.18.0.1".parse().unwrap()].into(),
                ipv6: Default::default(),
            },
        );
        s
    }

    /// The (outbound, inbound) chains of endpoint `ifname`, through the maps.
    fn chains_of<'r>(rs: &'r Ruleset, ifname: &str) -> (&'r ChainModel, &'r ChainModel) {
        let id = rs.list_of(ifname).expect("in a list set");
        (&rs.chains[&ep_out_chain(id)], &rs.chains[&ep_in_chain(id)])
    }

    #[test]
    fn rules_are_deduplicated_and_stop_at_all() {
        let rs = render(&spec()).unwrap();
        let (out, inn) = chains_of(&rs, "cali1");
        // a: All; nothing after it matters (no final drop either).
        assert_eq!(out.signature().len(), 1, "{:?}", out.signature());
        assert!(out.rules[0].comment.starts_with("all "));
        // a: netgroup a (v4, v6), public: All.
        assert_eq!(inn.rules.len(), 3, "{:?}", inn.signature());
        let mut s = spec();
        s.endpoints.get_mut("cali1").unwrap().profiles = vec!["a".into(), "a".into()];
        s.profiles.get_mut("a").unwrap().outbound =
            vec![Rule::Netgroup("a".into()), Rule::Netgroup("a".into())];
        let rs = render(&s).unwrap();
        let (out, _) = chains_of(&rs, "cali1");
        assert_eq!(out.rules.len(), 3, "deduplicated: {:?}", out.signature());
        assert!(out.rules[2].comment.starts_with("nothing allows it "));
    }

    #[test]
    fn netgroup_sets_exist_only_when_named() {
        let rs = render(&spec()).unwrap();
        let list = list_set(rs.list_of("cali1").unwrap());
        assert_eq!(
            rs.sets.keys().collect::<Vec<_>>(),
            ["ep-src.v4", "ep-src.v6", &list, "ng.a.v4", "ng.a.v6"]
        );
        assert_eq!(rs.sets["ng.a.v4"].elements.len(), 1);
        assert!(rs.sets["ng.a.v6"].elements.is_empty());
    }

    #[test]
    fn same_rule_has_a_different_comment_per_direction() {
        let rs = render(&spec()).unwrap();
        let (out, inn) = chains_of(&rs, "cali1");
        let (out, inn) = (&out.rules[0].comment, &inn.rules[2].comment);
        assert!(out.starts_with("all "));
        assert!(inn.starts_with("all "));
        assert_ne!(out, inn, "return and accept hash differently");
    }

    #[test]
    fn endpoints_with_one_profile_list_share_its_chains() {
        let mut s = spec();
        let one = s.endpoints["cali1"].clone();
        s.endpoints.insert("cali2".into(), one.clone());
        let mut reordered = one.clone();
        reordered.profiles.reverse();
        s.endpoints.insert("cali3".into(), reordered);
        let rs = render(&s).unwrap();
        let id = profile_list_id(&one.profiles);
        for ifname in ["cali1", "cali2"] {
            assert_eq!(rs.list_of(ifname), Some(id.as_str()));
        }
        // Order matters (it decides where a rule allowing all stops the
        // chain): another order is another list.
        assert_ne!(rs.list_of("cali3"), rs.list_of("cali1"));
        // One dispatch rule per list, in id order, then the drop.
        let mut ids = vec![id.clone(), rs.list_of("cali3").unwrap().to_string()];
        ids.sort();
        let dispatch = rs.chains[FROM_LIST].signature();
        assert_eq!(dispatch.len(), 3, "{dispatch:?}");
        for (rule, id) in dispatch.iter().zip(&ids) {
            assert!(rule.starts_with(&format!("list {id} ")), "{rule}");
        }
        assert!(dispatch[2].starts_with("no endpoint "));
        assert!(rs.maps.is_empty(), "no verdict maps");
        // Two lists, two chains each.
        let chains: Vec<&String> = rs.chains.keys().filter(|n| n.starts_with("ep-")).collect();
        assert_eq!(chains.len(), 4, "{chains:?}");
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn list_ids_do_not_confuse_boundaries() {
        let id = |l: &[&str]| profile_list_id(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_ne!(id(&["ab", "c"]), id(&["a", "bc"]));
        assert_ne!(id(&["a"]), id(&["a", ""]));
        assert_ne!(id(&[]), id(&[""]));
        assert_eq!(id(&["host:n1", "web"]), id(&["host:n1", "web"]));
    }

    #[test]
    fn bad_names_are_refused() {
        let mut s = spec();
        s.endpoints.insert("eth0".into(), EndpointPolicy::default());
        assert!(matches!(render(&s), Err(RenderError::EndpointName { .. })));
        let mut s = spec();
        s.profiles.get_mut("a").unwrap().inbound = vec![Rule::Netgroup("a b".into())];
        assert!(matches!(render(&s), Err(RenderError::NetgroupName { .. })));
        assert!(valid_netgroup(&"x".repeat(64)));
        assert!(!valid_netgroup(&"x".repeat(65)));
        assert!(!valid_endpoint("cali123456789012"));
        assert!(valid_endpoint("cali12345678901"));
    }

    #[test]
    fn comments_fit_nft_limit() {
        let mut s = spec();
        let long = "n".repeat(64);
        s.profiles.get_mut("a").unwrap().inbound = vec![
            Rule::Netgroup(long),
            Rule::Cidr(
                "2001:db8:1234:5678:9abc:def0:1234:5678/128"
                    .parse()
                    .unwrap(),
            ),
        ];
        let rs = render(&s).unwrap();
        for c in rs.chains.values() {
            for r in &c.rules {
                assert!(r.comment.len() <= 128, "{}", r.comment);
            }
        }
    }
}
