//! Pure tests of the policy planner: table tests of the cases the daemon
//! meets, and properties over random specs (every plan is valid for nft,
//! reaches the desired table, and is empty when nothing changed).

use super::*;
use ipnet::IpNet;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

fn v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

fn v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n as u16)
}

fn ifname(n: u8) -> String {
    format!("cali{n:011}")
}

/// A node with the host profile, `public`, and one profile per netgroup.
fn base_spec() -> PolicySpec {
    let mut s = PolicySpec::default();
    let node: Vec<Rule> = ["198.19.0.1/32", "2001:db8:f::1/128"]
        .iter()
        .map(|c| Rule::Cidr(c.parse::<IpNet>().unwrap()))
        .collect();
    s.profiles.insert(
        "host:node1".into(),
        ProfileRules {
            inbound: node.clone(),
            outbound: node,
        },
    );
    s.profiles.insert(
        "public".into(),
        ProfileRules {
            inbound: vec![Rule::All],
            outbound: vec![Rule::All],
        },
    );
    for n in ["a", "b", "c"] {
        s.profiles.insert(
            n.into(),
            ProfileRules {
                inbound: vec![Rule::Netgroup(n.into())],
                outbound: vec![Rule::All],
            },
        );
    }
    s
}

/// Adds endpoint `n` in `groups` (a netgroup or "public"), keeping the
/// netgroup membership consistent.
fn add_endpoint(s: &mut PolicySpec, n: u8, groups: &[&str]) {
    let mut profiles = vec!["host:node1".to_string()];
    for g in groups {
        profiles.push(g.to_string());
        if *g != "public" {
            let m = s.netgroups.entry(g.to_string()).or_default();
            m.ipv4.insert(v4(n));
            m.ipv6.insert(v6(n));
        }
    }
    s.endpoints.insert(
        ifname(n),
        EndpointPolicy {
            ipv4: vec![v4(n)],
            ipv6: vec![v6(n)],
            profiles,
        },
    );
}

fn six() -> PolicySpec {
    let mut s = base_spec();
    for (n, g) in [
        (1, &["a"][..]),
        (2, &["a"]),
        (3, &["b"]),
        (4, &["a", "b"]),
        (5, &["public"]),
        (6, &[]),
    ] {
        add_endpoint(&mut s, n, g);
    }
    s
}

/// Plans `to` against the table rendered for `from`, checks that the plan
/// is valid and reaches `to`'s table, and returns it.
fn plan_between(from: &PolicySpec, to: &PolicySpec) -> Vec<PolicyAction> {
    let have = render(from).unwrap();
    let want = render(to).unwrap();
    let actions = plan(&want, Some(&have));
    let after = simulate(Some(have), &actions).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after, Some(want));
    actions
}

fn lines(actions: &[PolicyAction]) -> Vec<String> {
    actions.iter().map(|a| a.to_string()).collect()
}

fn position(actions: &[PolicyAction], f: impl Fn(&PolicyAction) -> bool) -> usize {
    actions
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("not found in {:?}", lines(actions)))
}

#[test]
fn unchanged_plans_nothing() {
    let s = six();
    assert!(plan_between(&s, &s).is_empty());
}

#[test]
fn table_missing_is_a_full_create() {
    let want = render(&six()).unwrap();
    let actions = plan(&want, None);
    assert_eq!(actions[0], PolicyAction::CreateTable);
    assert!(!actions.contains(&PolicyAction::DeleteTable));
    assert_eq!(simulate(None, &actions).unwrap(), Some(want));
}

#[test]
fn an_endpoint_added_is_its_chains_entries_and_elements() {
    let before = six();
    let mut after = six();
    add_endpoint(&mut after, 7, &["a"]);
    let actions = plan_between(&before, &after);
    let e = ifname(7);
    assert_eq!(
        lines(&actions),
        vec![
            format!("create chain ep-in.{e}"),
            format!("create chain ep-out.{e}"),
            "add 1 element to set ep-src.v4".to_string(),
            "add 1 element to set ep-src.v6".to_string(),
            "add 1 element to set ng.a.v4".to_string(),
            "add 1 element to set ng.a.v6".to_string(),
            format!("fill chain ep-in.{e} (5 rules)"),
            format!("fill chain ep-out.{e} (3 rules)"),
            "add 1 entry to map from-ep".to_string(),
            "add 1 entry to map to-ep".to_string(),
        ]
    );
}

#[test]
fn an_endpoint_removed_loses_entries_and_elements_before_its_chains() {
    let before = six();
    let mut after = six();
    let gone = ifname(4);
    after.endpoints.remove(&gone);
    for m in after.netgroups.values_mut() {
        m.ipv4.remove(&v4(4));
        m.ipv6.remove(&v6(4));
    }
    let actions = plan_between(&before, &after);
    let chains = position(&actions, |a| matches!(a, PolicyAction::DeleteChains { .. }));
    assert_eq!(
        actions[chains],
        PolicyAction::DeleteChains {
            names: vec![format!("ep-in.{gone}"), format!("ep-out.{gone}")]
        }
    );
    for (i, a) in actions.iter().enumerate() {
        match a {
            PolicyAction::DeleteMapEntries { keys, .. } => {
                assert_eq!(keys, &vec![gone.clone()]);
                assert!(i < chains);
            }
            PolicyAction::DeleteElements { .. } => assert!(i < chains),
            PolicyAction::DeleteChains { .. } => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(actions.len(), 2 + 6 + 1, "{:?}", lines(&actions));
}

#[test]
fn membership_change_is_element_updates_only() {
    let before = six();
    let mut after = six();
    // A member of netgroup a on another node joins, one of b leaves.
    after
        .netgroups
        .get_mut("a")
        .unwrap()
        .ipv4
        .insert(Ipv4Addr::new(198, 18, 1, 9));
    after.netgroups.get_mut("b").unwrap().ipv6.remove(&v6(3));
    let actions = plan_between(&before, &after);
    assert_eq!(
        lines(&actions),
        vec![
            "delete 1 element from set ng.b.v6",
            "add 1 element to set ng.a.v4"
        ]
    );
}

#[test]
fn an_address_change_is_element_updates_only() {
    let before = six();
    let mut after = six();
    after.endpoints.get_mut(&ifname(6)).unwrap().ipv4 = vec![Ipv4Addr::new(198, 18, 0, 66)];
    let actions = plan_between(&before, &after);
    assert_eq!(
        lines(&actions),
        vec![
            "delete 1 element from set ep-src.v4",
            "add 1 element to set ep-src.v4"
        ]
    );
}

#[test]
fn a_chain_edited_behind_our_back_is_replaced() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    let name = format!("ep-in.{}", ifname(3));
    have.chains.get_mut(&name).unwrap().rules[0].comment = "edited by hand".into();
    let actions = plan(&want, Some(&have));
    assert_eq!(
        actions,
        vec![PolicyAction::ReplaceChain {
            name: name.clone(),
            rules: want.chains[&name].rules.clone()
        }]
    );
    assert_eq!(
        simulate(Some(have.clone()), &actions).unwrap(),
        Some(want.clone())
    );
    // A rule added at the end, or one deleted, is the same case.
    have.chains.get_mut(&name).unwrap().rules.pop();
    assert_eq!(plan(&want, Some(&have)).len(), 1);
}

#[test]
fn a_missing_set_is_created_and_filled() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    have.sets.remove("ng.b.v4");
    // (a rule that names a missing set cannot exist in the kernel; the
    // chains that name it are rewritten too when nft lists them changed)
    let actions = plan(&want, Some(&have));
    assert_eq!(
        lines(&actions),
        vec!["create set ng.b.v4", "add 2 elements to set ng.b.v4"]
    );
}

#[test]
fn a_deleted_element_is_added_back() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    have.sets.get_mut("ep-src.v6").unwrap().elements.pop_first();
    have.maps.get_mut("to-ep").unwrap().entries.pop_first();
    assert_eq!(
        lines(&plan(&want, Some(&have))),
        vec!["add 1 element to set ep-src.v6", "add 1 entry to map to-ep"]
    );
}

#[test]
fn a_map_entry_pointing_elsewhere_is_rewritten() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    let e = ifname(1);
    have.maps
        .get_mut("from-ep")
        .unwrap()
        .entries
        .insert(e.clone(), MapTarget::Other("{\"accept\":null}".into()));
    let actions = plan(&want, Some(&have));
    assert_eq!(
        actions,
        vec![
            PolicyAction::DeleteMapEntries {
                map: "from-ep".into(),
                keys: vec![e.clone()]
            },
            PolicyAction::AddMapEntries {
                map: "from-ep".into(),
                entries: vec![(e.clone(), format!("ep-out.{e}"))]
            },
        ]
    );
}

#[test]
fn foreign_objects_in_our_table_are_removed_after_use() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    have.sets
        .insert("intruder".into(), SetModel::new(SetKind::Unsupported));
    have.chains.insert("intruder".into(), ChainModel::default());
    have.maps.insert("intruder-map".into(), MapModel::default());
    assert_eq!(
        lines(&plan(&want, Some(&have))),
        vec![
            "delete chains intruder",
            "delete set intruder",
            "delete map intruder-map"
        ]
    );
}

#[test]
fn a_netgroup_no_longer_named_loses_its_sets_after_the_rules() {
    let before = six();
    let mut after = six();
    // Endpoint 3 leaves b; 4 keeps b. Then 4 leaves b too: no rule names b.
    for n in [3, 4] {
        after
            .endpoints
            .get_mut(&ifname(n))
            .unwrap()
            .profiles
            .retain(|p| p != "b");
    }
    after.netgroups.remove("b");
    let actions = plan_between(&before, &after);
    let last_replace = actions
        .iter()
        .rposition(|a| matches!(a, PolicyAction::ReplaceChain { .. }))
        .unwrap();
    let first_delete = position(&actions, |a| matches!(a, PolicyAction::DeleteSet { .. }));
    assert!(last_replace < first_delete, "{:?}", lines(&actions));
    assert!(lines(&actions).contains(&"delete set ng.b.v4".to_string()));
}

#[test]
fn a_foreign_structure_is_rebuilt_in_one_transaction() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    have.chains.get_mut("forward").unwrap().base =
        Some(BaseHook::filter(nftables::types::NfHook::Prerouting));
    let actions = plan(&want, Some(&have));
    assert_eq!(
        actions[..2],
        [PolicyAction::DeleteTable, PolicyAction::CreateTable]
    );
    assert_eq!(simulate(Some(have), &actions).unwrap(), Some(want.clone()));

    let mut have = want.clone();
    have.sets.get_mut("ng.a.v4").unwrap().kind = SetKind::Ipv6;
    assert_eq!(plan(&want, Some(&have))[0], PolicyAction::DeleteTable);

    let mut have = want.clone();
    have.maps.get_mut("to-ep").unwrap().well_typed = false;
    assert_eq!(plan(&want, Some(&have))[0], PolicyAction::DeleteTable);
}

#[test]
fn a_new_cali_interface_without_policy_is_dropped() {
    // The dispatch rules match every cali* interface; one that is in no
    // map and no anti-spoofing set falls through to the drop rules.
    let rs = render(&base_spec()).unwrap();
    for chain in [FROM_ENDPOINT, TO_ENDPOINT] {
        let last = rs.chains[chain].rules.last().unwrap();
        assert!(matches!(
            last.expr.as_slice(),
            [nftables::stmt::Statement::Drop(None)]
        ));
    }
}

#[test]
fn display_lines_are_short_and_readable() {
    let a = PolicyAction::AddElements {
        set: "ng.web.v4".into(),
        elements: vec![SetElem::V4(v4(1)), SetElem::V4(v4(2))],
    };
    assert_eq!(a.to_string(), "add 2 elements to set ng.web.v4");
    let d = PolicyAction::DeleteChains {
        names: vec!["ep-in.cali1".into(), "ep-out.cali1".into()],
    };
    assert_eq!(d.to_string(), "delete chains ep-in.cali1, ep-out.cali1");
}

#[test]
fn size_is_linear_in_endpoints() {
    let mut s = base_spec();
    for n in 1..=50u8 {
        add_endpoint(&mut s, n, &[["a", "b", "c"][n as usize % 3]]);
    }
    let small = render(&s).unwrap();
    for n in 51..=100u8 {
        add_endpoint(&mut s, n, &[["a", "b", "c"][n as usize % 3]]);
    }
    let big = render(&s).unwrap();
    let base = render(&base_spec()).unwrap();
    let per = |r: &Ruleset| r.rule_count() - base.rule_count();
    assert_eq!(per(&big), 2 * per(&small));
    assert_eq!(big.chains.len() - base.chains.len(), 200);
}

// Properties over random specs.

const GROUPS: [&str; 4] = ["a", "b", "c", "d"];
const PROFILES: [&str; 6] = ["host:node1", "public", "a", "b", "c", "missing"];

fn arb_rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        Just(Rule::All),
        proptest::sample::select(&GROUPS[..]).prop_map(|g| Rule::Netgroup(g.to_string())),
        (0u8..4).prop_map(|n| Rule::Cidr(format!("198.19.{n}.0/24").parse().unwrap())),
        (0u8..4).prop_map(|n| Rule::Cidr(format!("2001:db8:f:{n}::/64").parse().unwrap())),
    ]
}

fn arb_spec() -> impl Strategy<Value = PolicySpec> {
    let endpoint = (
        proptest::collection::btree_set(1u8..12, 0..3),
        proptest::collection::btree_set(1u8..12, 0..3),
        proptest::collection::vec(proptest::sample::select(&PROFILES[..]), 0..4),
    );
    let profile = (
        proptest::collection::vec(arb_rule(), 0..3),
        proptest::collection::vec(arb_rule(), 0..3),
    );
    let members = (
        proptest::collection::btree_set(1u8..12, 0..4),
        proptest::collection::btree_set(1u8..12, 0..4),
    );
    (
        proptest::collection::btree_map(1u8..10, endpoint, 0..6),
        proptest::collection::btree_map(proptest::sample::select(&PROFILES[..5]), profile, 0..5),
        proptest::collection::btree_map(proptest::sample::select(&GROUPS[..]), members, 0..4),
    )
        .prop_map(|(eps, profiles, groups)| PolicySpec {
            endpoints: eps
                .into_iter()
                .map(|(n, (a4, a6, p))| {
                    (
                        ifname(n),
                        EndpointPolicy {
                            ipv4: a4.into_iter().map(v4).collect(),
                            ipv6: a6.into_iter().map(v6).collect(),
                            profiles: p.into_iter().map(String::from).collect(),
                        },
                    )
                })
                .collect(),
            profiles: profiles
                .into_iter()
                .map(|(n, (inbound, outbound))| (n.to_string(), ProfileRules { inbound, outbound }))
                .collect(),
            netgroups: groups
                .into_iter()
                .map(|(g, (m4, m6))| {
                    (
                        g.to_string(),
                        Members {
                            ipv4: m4.into_iter().map(v4).collect(),
                            ipv6: m6.into_iter().map(v6).collect(),
                        },
                    )
                })
                .collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_plan_is_valid_and_reaches_the_desired_table(s1 in arb_spec(), s2 in arb_spec()) {
        let have = render(&s1).unwrap();
        let want = render(&s2).unwrap();
        let actions = plan(&want, Some(&have));
        let after = simulate(Some(have), &actions);
        prop_assert_eq!(after, Ok(Some(want.clone())));
        prop_assert!(!actions.contains(&PolicyAction::DeleteTable));
        let created = simulate(None, &plan(&want, None));
        prop_assert_eq!(created, Ok(Some(want)));
    }

    #[test]
    fn the_same_spec_plans_nothing(s in arb_spec()) {
        let rs = render(&s).unwrap();
        prop_assert!(plan(&rs, Some(&rs)).is_empty());
    }

    #[test]
    fn membership_changes_are_element_updates_only(s in arb_spec(), other in arb_spec()) {
        let mut s2 = s.clone();
        s2.netgroups = other.netgroups;
        let actions = plan(&render(&s2).unwrap(), Some(&render(&s).unwrap()));
        let sets: BTreeSet<&str> = actions
            .iter()
            .map(|a| match a {
                PolicyAction::AddElements { set, .. } | PolicyAction::DeleteElements { set, .. } => set.as_str(),
                other => panic!("not an element update: {other}"),
            })
            .collect();
        prop_assert!(sets.iter().all(|s| s.starts_with("ng.")));
    }
}
