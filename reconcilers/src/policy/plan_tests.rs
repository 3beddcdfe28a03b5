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

/// The names of the (outbound, inbound) chains of a profile list.
fn chains_for(profiles: &[&str]) -> (String, String) {
    let id = id_of(profiles);
    (ep_out_chain(&id), ep_in_chain(&id))
}

/// The id of a profile list.
fn id_of(profiles: &[&str]) -> String {
    let list: Vec<String> = profiles.iter().map(|p| p.to_string()).collect();
    profile_list_id(&list)
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
fn an_endpoint_with_a_profile_list_the_node_has_is_elements_only() {
    let before = six();
    let mut after = six();
    // 1 and 2 already have [host:node1, a].
    add_endpoint(&mut after, 7, &["a"]);
    let actions = plan_between(&before, &after);
    let list = list_set(&id_of(&["host:node1", "a"]));
    assert_eq!(
        lines(&actions),
        vec![
            "add 1 element to set ep-src.v4".to_string(),
            "add 1 element to set ep-src.v6".to_string(),
            format!("add 1 element to set {list}"),
            "add 1 element to set ng.a.v4".to_string(),
            "add 1 element to set ng.a.v6".to_string(),
        ]
    );
    assert!(actions.contains(&PolicyAction::AddElements {
        set: list,
        elements: vec![SetElem::If(ifname(7).into())]
    }));
}

#[test]
fn the_first_endpoint_of_a_profile_list_brings_its_chains() {
    let before = six();
    let mut after = six();
    add_endpoint(&mut after, 7, &["c"]);
    let actions = plan_between(&before, &after);
    let (out, inn) = chains_for(&["host:node1", "c"]);
    let list = list_set(&id_of(&["host:node1", "c"]));
    // The six endpoints had five lists: the dispatch chains now hold six
    // rules each, and the drop.
    assert_eq!(
        lines(&actions),
        vec![
            format!("create set {list}"),
            "create set ng.c.v4".to_string(),
            "create set ng.c.v6".to_string(),
            format!("create chain {inn}"),
            format!("create chain {out}"),
            "add 1 element to set ep-src.v4".to_string(),
            "add 1 element to set ep-src.v6".to_string(),
            format!("add 1 element to set {list}"),
            "add 1 element to set ng.c.v4".to_string(),
            "add 1 element to set ng.c.v6".to_string(),
            format!("fill chain {inn} (5 rules)"),
            format!("fill chain {out} (3 rules)"),
            format!("replace rules of chain {FROM_LIST} (7 rules)"),
            format!("replace rules of chain {TO_LIST} (7 rules)"),
        ]
    );
}

#[test]
fn an_endpoint_removed_loses_elements_and_dispatch_rules_before_its_lists_chains() {
    let before = six();
    let mut after = six();
    // 4 is the only endpoint with [host:node1, a, b].
    let gone = ifname(4);
    after.endpoints.remove(&gone);
    for m in after.netgroups.values_mut() {
        m.ipv4.remove(&v4(4));
        m.ipv6.remove(&v6(4));
    }
    let actions = plan_between(&before, &after);
    let chains = position(&actions, |a| matches!(a, PolicyAction::DeleteChains { .. }));
    let (out, inn) = chains_for(&["host:node1", "a", "b"]);
    let mut names = vec![out, inn];
    names.sort();
    assert_eq!(actions[chains], PolicyAction::DeleteChains { names });
    let list = list_set(&id_of(&["host:node1", "a", "b"]));
    for (i, a) in actions.iter().enumerate() {
        match a {
            PolicyAction::DeleteElements { set, elements } => {
                assert!(i < chains);
                assert_ne!(*set, list, "a set that goes is not emptied first");
                assert!(!elements.contains(&SetElem::If(gone.as_str().into())));
            }
            // The dispatch chains lose the list's rule before its chains go.
            PolicyAction::ReplaceChain { name, rules } => {
                assert!(i < chains);
                assert!(*name == FROM_LIST || *name == TO_LIST, "{name}");
                assert_eq!(rules.len(), 4 + 1, "four lists left, and the drop");
            }
            PolicyAction::DeleteChains { .. } => {}
            PolicyAction::DeleteSet { name } => {
                assert_eq!(*name, list);
                assert!(i > chains);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(actions.len(), 6 + 2 + 1 + 1, "{:?}", lines(&actions));
}

#[test]
fn an_endpoint_removed_whose_list_others_share_keeps_the_chains() {
    let before = six();
    let mut after = six();
    // 1 and 2 share [host:node1, a]; 1 goes.
    after.endpoints.remove(&ifname(1));
    for m in after.netgroups.values_mut() {
        m.ipv4.remove(&v4(1));
        m.ipv6.remove(&v6(1));
    }
    let actions = plan_between(&before, &after);
    let list = list_set(&id_of(&["host:node1", "a"]));
    assert_eq!(
        lines(&actions),
        vec![
            "delete 1 element from set ep-src.v4".to_string(),
            "delete 1 element from set ep-src.v6".to_string(),
            format!("delete 1 element from set {list}"),
            "delete 1 element from set ng.a.v4".to_string(),
            "delete 1 element from set ng.a.v6".to_string(),
        ]
    );
}

#[test]
fn an_endpoint_moving_to_another_list_changes_list_sets() {
    let before = six();
    let mut after = six();
    // 3 ([host, b]) joins a too: [host, b, a] is new; [host, b] loses its
    // only endpoint.
    let e = ifname(3);
    after
        .endpoints
        .get_mut(&e)
        .unwrap()
        .profiles
        .push("a".into());
    let actions = plan_between(&before, &after);
    let (new_out, new_in) = chains_for(&["host:node1", "b", "a"]);
    let (old_out, old_in) = chains_for(&["host:node1", "b"]);
    let new_set = list_set(&id_of(&["host:node1", "b", "a"]));
    let old_set = list_set(&id_of(&["host:node1", "b"]));
    let at = |f: &dyn Fn(&PolicyAction) -> bool| position(&actions, f);
    let created = at(&|a| matches!(a, PolicyAction::CreateSet { name, .. } if *name == new_set));
    let joined = at(&|a| {
        matches!(a, PolicyAction::AddElements { set, elements }
            if *set == new_set && *elements == [SetElem::If(e.as_str().into())])
    });
    let filled = at(&|a| matches!(a, PolicyAction::FillChain { name, .. } if *name == new_in));
    let filled_out = at(&|a| matches!(a, PolicyAction::FillChain { name, .. } if *name == new_out));
    let dispatched =
        at(&|a| matches!(a, PolicyAction::ReplaceChain { name, .. } if name == FROM_LIST));
    let deleted = at(
        &|a| matches!(a, PolicyAction::DeleteChains { names } if names.contains(&old_in) && names.contains(&old_out)),
    );
    let dropped = at(&|a| matches!(a, PolicyAction::DeleteSet { name } if *name == old_set));
    assert!(created < joined && joined < dispatched);
    assert!(filled < dispatched && filled_out < dispatched);
    assert!(dispatched < deleted && deleted < dropped);
    let replaced: Vec<&str> = actions
        .iter()
        .filter_map(|a| match a {
            PolicyAction::ReplaceChain { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        replaced,
        [FROM_LIST, TO_LIST],
        "no other chain is rewritten"
    );
}

#[test]
fn a_profile_edit_rewrites_its_lists_chains_in_place() {
    let before = six();
    let mut after = six();
    after
        .profiles
        .get_mut("a")
        .unwrap()
        .inbound
        .push(Rule::Cidr("198.19.0.0/24".parse().unwrap()));
    let actions = plan_between(&before, &after);
    let mut replaced: Vec<&str> = actions
        .iter()
        .map(|a| match a {
            PolicyAction::ReplaceChain { name, .. } => name.as_str(),
            other => panic!("not a chain rewrite: {other}"),
        })
        .collect();
    replaced.sort();
    // Lists with a: [host, a] (1, 2) and [host, a, b] (4): their inbound
    // chains; no map entry changes.
    let mut want = vec![
        chains_for(&["host:node1", "a"]).1,
        chains_for(&["host:node1", "a", "b"]).1,
    ];
    want.sort();
    assert_eq!(replaced, want);
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
    let name = chains_for(&["host:node1", "b"]).1;
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
    let list = list_set(&id_of(&["host:node1", "a"]));
    have.sets.get_mut("ep-src.v6").unwrap().elements.pop_first();
    have.sets.get_mut(&list).unwrap().elements.pop_first();
    assert_eq!(
        lines(&plan(&want, Some(&have))),
        vec![
            "add 1 element to set ep-src.v6".to_string(),
            format!("add 1 element to set {list}"),
        ]
    );
}

#[test]
fn an_interface_in_another_lists_set_is_moved_back() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    let e = SetElem::If(ifname(1).as_str().into());
    let (right, wrong) = (
        list_set(&id_of(&["host:node1", "a"])),
        list_set(&id_of(&["host:node1", "b"])),
    );
    have.sets.get_mut(&right).unwrap().elements.remove(&e);
    have.sets
        .get_mut(&wrong)
        .unwrap()
        .elements
        .insert(e.clone());
    let actions = plan(&want, Some(&have));
    assert_eq!(
        actions,
        vec![
            PolicyAction::DeleteElements {
                set: wrong,
                elements: vec![e.clone()]
            },
            PolicyAction::AddElements {
                set: right,
                elements: vec![e]
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
    // 3 ([host, b]) and 4 ([host, a, b]) leave b: they move to the lists of
    // 6 ([host]) and of 1, 2 ([host, a]); no rule names b any more.
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
    let chains = position(&actions, |a| matches!(a, PolicyAction::DeleteChains { .. }));
    let first_delete = position(&actions, |a| matches!(a, PolicyAction::DeleteSet { .. }));
    assert!(chains < first_delete, "{:?}", lines(&actions));
    assert!(lines(&actions).contains(&"delete set ng.b.v4".to_string()));
    assert!(!actions.iter().any(|a| matches!(
        a,
        PolicyAction::CreateChain { .. } | PolicyAction::FillChain { .. }
    )));
    // Only the dispatch chains are rewritten (two lists went).
    for a in &actions {
        if let PolicyAction::ReplaceChain { name, .. } = a {
            assert!(name == FROM_LIST || name == TO_LIST, "{name}");
        }
    }
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
    let list = list_set(&id_of(&["host:node1", "a"]));
    have.sets.get_mut(&list).unwrap().kind = SetKind::IfnameIpv4;
    assert_eq!(plan(&want, Some(&have))[0], PolicyAction::DeleteTable);
}

#[test]
fn the_verdict_maps_of_an_earlier_version_go_after_the_rules_that_used_them() {
    let want = render(&six()).unwrap();
    let mut have = want.clone();
    // The earlier version's dispatch: a map per direction, and the
    // `vmap` rule in the endpoint chains.
    for (map, chain) in [("from-ep", FROM_ENDPOINT), ("to-ep", TO_ENDPOINT)] {
        let mut m = MapModel::default();
        let out = ep_out_chain(&id_of(&["host:node1", "a"]));
        m.entries
            .insert(ifname(1).as_str().into(), MapTarget::Goto(out.into()));
        have.maps.insert(map.to_string(), m);
        let rules = &mut have.chains.get_mut(chain).unwrap().rules;
        rules.pop();
        rules.push(crate::policy::render::rule(
            &format!("dispatch by {map}"),
            vec![],
        ));
    }
    let actions = plan(&want, Some(&have));
    assert!(
        !actions.contains(&PolicyAction::DeleteTable),
        "migrated in place"
    );
    let replaced = position(&actions, |a| matches!(a, PolicyAction::ReplaceChain { .. }));
    let dropped = position(&actions, |a| matches!(a, PolicyAction::DeleteMap { .. }));
    assert!(replaced < dropped, "{:?}", lines(&actions));
    assert_eq!(simulate(Some(have), &actions).unwrap(), Some(want));
}

#[test]
fn a_new_cali_interface_without_policy_is_dropped() {
    // The jumps match every cali* interface; one that is in no list set
    // and no anti-spoofing set falls through to the dispatch chains' drop.
    let rs = render(&base_spec()).unwrap();
    for (chain, dispatch) in [(FROM_ENDPOINT, FROM_LIST), (TO_ENDPOINT, TO_LIST)] {
        let goto = rs.chains[chain].rules.last().unwrap();
        assert!(matches!(
            goto.expr.as_slice(),
            [nftables::stmt::Statement::Goto(t)] if t.target == dispatch
        ));
        let last = rs.chains[dispatch].rules.last().unwrap();
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
fn chains_grow_with_profile_lists_and_elements_with_endpoints() {
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
    // Three lists ([host, a], [host, b], [host, c]) at either size.
    assert_eq!(big.chains.len() - base.chains.len(), 6);
    assert_eq!(big.chains.len(), small.chains.len());
    assert_eq!(big.rule_count(), small.rule_count());
    // Per endpoint: 2 anti-spoofing elements, 1 in its list's interface
    // set, 2 members.
    let per = |r: &Ruleset| r.element_count() - base.element_count();
    assert_eq!(per(&small), 50 * 5);
    assert_eq!(per(&big), 100 * 5);
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
    fn chains_are_one_pair_per_distinct_profile_list(s in arb_spec()) {
        let rs = render(&s).unwrap();
        let lists: BTreeSet<&Vec<String>> = s.endpoints.values().map(|e| &e.profiles).collect();
        let base = render(&PolicySpec::default()).unwrap();
        prop_assert_eq!(rs.chains.len(), base.chains.len() + 2 * lists.len());
        for (ifname, ep) in &s.endpoints {
            let id = profile_list_id(&ep.profiles);
            prop_assert_eq!(rs.list_of(ifname), Some(id.as_str()));
            prop_assert!(rs.chains.contains_key(&ep_out_chain(&id)));
            prop_assert!(rs.chains.contains_key(&ep_in_chain(&id)));
        }
    }

    #[test]
    fn an_endpoint_with_a_list_in_use_adds_no_chain(s in arb_spec(), pick in any::<prop::sample::Index>()) {
        prop_assume!(!s.endpoints.is_empty());
        let lists: Vec<&Vec<String>> = s.endpoints.values().map(|e| &e.profiles).collect();
        let profiles = pick.get(&lists).to_vec();
        let mut s2 = s.clone();
        s2.endpoints.insert(ifname(50), EndpointPolicy { ipv4: vec![v4(50)], ipv6: vec![v6(50)], profiles });
        let have = render(&s).unwrap();
        let want = render(&s2).unwrap();
        let actions = plan(&want, Some(&have));
        for a in &actions {
            prop_assert!(
                matches!(a, PolicyAction::AddElements { .. }),
                "not an element addition: {}", a
            );
        }
        // Anti-spoofing (IPv4, IPv6) and the list's interface set.
        prop_assert_eq!(actions.len(), 3);
        prop_assert_eq!(simulate(Some(have), &actions), Ok(Some(want)));
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
