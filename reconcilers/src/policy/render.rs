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
//!   related accept; invalid drop; `iifname vmap @from-ep` → `goto
//!   ep-out.<if>`; drop (an interface with no entry).
//! - `to-endpoint`: neighbour discovery accept; established, related
//!   accept; invalid drop; `oifname vmap @to-ep` → `goto ep-in.<if>`; drop.
//! - `ep-out.<if>`: every outbound rule of the endpoint's profiles with
//!   verdict `return` (back in the base chain, the destination's check
//!   follows), de-duplicated, then drop. `ep-in.<if>`: inbound rules with
//!   `accept`, then drop. A rule that allows everything ends the chain
//!   (what would follow it could never match). Unknown profiles add
//!   nothing, so an endpoint whose profiles are all unknown drops all.
//! - netgroup `n` named by any rendered rule: sets `ng.<n>.v4`, `ng.<n>.v6`
//!   with its members' addresses.
//!
//! Size: two chains and a few elements per endpoint, two sets per netgroup;
//! never anything per pair of endpoints.

use super::model::{PolicySpec, Rule};
use super::ruleset::*;
use crate::HOST_IFNAME_PREFIX;
use ipnet::IpNet;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem, CT,
};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, VerdictMap};
use nftables::types::NfHook;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

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
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let mut label = label.to_string();
    if label.len() > LABEL_MAX {
        let mut cut = LABEL_MAX;
        while !label.is_char_boundary(cut) {
            cut -= 1;
        }
        label.truncate(cut);
    }
    RuleModel {
        comment: format!("{label} {hash}"),
        expr,
    }
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

fn dispatch(key: MetaKey, map: &str) -> RuleModel {
    rule(
        &format!("dispatch by {map}"),
        vec![Statement::VerdictMap(VerdictMap {
            key: meta(key),
            data: s(format!("@{map}")),
        })],
    )
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
                dispatch(MetaKey::Iifname, FROM_EP_MAP),
                drop_rule("no endpoint"),
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
                dispatch(MetaKey::Oifname, TO_EP_MAP),
                drop_rule("no endpoint"),
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

/// Renders the table for `spec`. Fails on names that cannot be ours
/// (endpoint keys) or cannot be netgroups (names in rules).
pub fn render(spec: &PolicySpec) -> Result<Ruleset, RenderError> {
    let mut rs = Ruleset::default();
    base_chains(&mut rs);
    let mut src4 = SetModel::new(SetKind::IfnameIpv4);
    let mut src6 = SetModel::new(SetKind::IfnameIpv6);
    let mut from_ep = MapModel::default();
    let mut to_ep = MapModel::default();
    let mut netgroups = BTreeSet::new();
    // Many endpoints share profiles: render each (rule, direction) once.
    let mut memo: HashMap<(&Rule, Dir), Vec<RuleModel>> = HashMap::new();
    for (ifname, ep) in &spec.endpoints {
        if !valid_endpoint(ifname) {
            return Err(RenderError::EndpointName {
                name: ifname.clone(),
            });
        }
        src4.elements
            .extend(ep.ipv4.iter().map(|a| SetElem::IfV4(ifname.clone(), *a)));
        src6.elements
            .extend(ep.ipv6.iter().map(|a| SetElem::IfV6(ifname.clone(), *a)));
        for (dir, chain, map) in [
            (Dir::Out, ep_out_chain(ifname), &mut from_ep),
            (Dir::In, ep_in_chain(ifname), &mut to_ep),
        ] {
            let mut rules: Vec<RuleModel> = Vec::new();
            let mut seen = BTreeSet::new();
            // After a rule that allows everything, nothing else matters.
            let mut allows_all = false;
            'profiles: for profile in &ep.profiles {
                // An unknown profile allows nothing (fail closed).
                let Some(p) = spec.profiles.get(profile) else {
                    continue;
                };
                let list = match dir {
                    Dir::In => &p.inbound,
                    Dir::Out => &p.outbound,
                };
                for r in list {
                    let rendered = match memo.get(&(r, dir)) {
                        Some(v) => v.clone(),
                        None => {
                            let v = render_rule(r, dir, profile, &mut netgroups)?;
                            memo.insert((r, dir), v.clone());
                            v
                        }
                    };
                    for nr in rendered {
                        if seen.insert(nr.comment.clone()) {
                            rules.push(nr);
                        }
                    }
                    if *r == Rule::All {
                        allows_all = true;
                        break 'profiles;
                    }
                }
            }
            if !allows_all {
                rules.push(drop_rule("nothing allows it"));
            }
            map.entries
                .insert(ifname.clone(), MapTarget::Goto(chain.clone()));
            rs.chains.insert(chain, ChainModel { base: None, rules });
        }
    }
    rs.sets.insert(SRC_V4.to_string(), src4);
    rs.sets.insert(SRC_V6.to_string(), src6);
    rs.maps.insert(FROM_EP_MAP.to_string(), from_ep);
    rs.maps.insert(TO_EP_MAP.to_string(), to_ep);
    for n in netgroups {
        let members = spec.netgroups.get(&n);
        let mut v4 = SetModel::new(SetKind::Ipv4);
        let mut v6 = SetModel::new(SetKind::Ipv6);
        if let Some(m) = members {
            v4.elements.extend(m.ipv4.iter().map(|a| SetElem::V4(*a)));
            v6.elements.extend(m.ipv6.iter().map(|a| SetElem::V6(*a)));
        }
        rs.sets.insert(netgroup_set(&n, false), v4);
        rs.sets.insert(netgroup_set(&n, true), v6);
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

    #[test]
    fn rules_are_deduplicated_and_stop_at_all() {
        let rs = render(&spec()).unwrap();
        let out = &rs.chains["ep-out.cali1"];
        // a: All; nothing after it matters (no final drop either).
        assert_eq!(out.signature().len(), 1, "{:?}", out.signature());
        assert!(out.rules[0].comment.starts_with("all "));
        // a: netgroup a (v4, v6), public: All.
        let inn = &rs.chains["ep-in.cali1"];
        assert_eq!(inn.rules.len(), 3, "{:?}", inn.signature());
        let mut s = spec();
        s.endpoints.get_mut("cali1").unwrap().profiles = vec!["a".into(), "a".into()];
        s.profiles.get_mut("a").unwrap().outbound =
            vec![Rule::Netgroup("a".into()), Rule::Netgroup("a".into())];
        let rs = render(&s).unwrap();
        let out = &rs.chains["ep-out.cali1"];
        assert_eq!(out.rules.len(), 3, "deduplicated: {:?}", out.signature());
        assert!(out.rules[2].comment.starts_with("nothing allows it "));
    }

    #[test]
    fn netgroup_sets_exist_only_when_named() {
        let rs = render(&spec()).unwrap();
        assert_eq!(
            rs.sets.keys().collect::<Vec<_>>(),
            ["ep-src.v4", "ep-src.v6", "ng.a.v4", "ng.a.v6"]
        );
        assert_eq!(rs.sets["ng.a.v4"].elements.len(), 1);
        assert!(rs.sets["ng.a.v6"].elements.is_empty());
    }

    #[test]
    fn same_rule_has_a_different_comment_per_direction() {
        let rs = render(&spec()).unwrap();
        let out = &rs.chains["ep-out.cali1"].rules[0].comment;
        let inn = &rs.chains["ep-in.cali1"].rules[2].comment;
        assert!(out.starts_with("all "));
        assert!(inn.starts_with("all "));
        assert_ne!(out, inn, "return and accept hash differently");
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
