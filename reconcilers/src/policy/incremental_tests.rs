//! Pure tests of the incremental path: random sequences of spec changes
//! applied to a [`RenderedPolicy`] give the table that rendering the whole
//! spec from scratch gives, and the actions that planning the whole new
//! table against the whole old one gives; table tests of the cases the
//! daemon meets most.

use super::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const PROFILES: [&str; 6] = ["host:n1", "public", "a", "b", "c", "gone"];
const GROUPS: [&str; 3] = ["a", "b", "c"];

fn ifname(n: u8) -> String {
    format!("cali{n:011}")
}

fn v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

fn v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n as u16)
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        2 => Just(Rule::All),
        5 => proptest::sample::select(&GROUPS[..]).prop_map(|g| Rule::Netgroup(g.to_string())),
        // Not a netgroup name: rendering fails while a list reaches it.
        1 => Just(Rule::Netgroup("not one".to_string())),
        2 => (1u8..4).prop_map(|n| Rule::Cidr(IpAddr::V4(Ipv4Addr::new(198, 19, 0, n)).into())),
    ]
}

fn arb_change() -> impl Strategy<Value = SpecChange> {
    let policy = (
        proptest::collection::vec(1u8..8, 0..3),
        proptest::collection::vec(1u8..8, 0..2),
        proptest::collection::vec(proptest::sample::select(&PROFILES[..]), 0..4),
    )
        .prop_map(|(a4, a6, profiles)| EndpointPolicy {
            ipv4: a4.into_iter().map(v4).collect(),
            ipv6: a6.into_iter().map(v6).collect(),
            profiles: profiles.into_iter().map(String::from).collect(),
        });
    let name = prop_oneof![
        20 => (1u8..7).prop_map(ifname),
        // Not one of ours: rendering fails while it is there.
        1 => Just("eth0".to_string()),
    ];
    let rules = (
        proptest::collection::vec(arb_rule(), 0..3),
        proptest::collection::vec(arb_rule(), 0..3),
    )
        .prop_map(|(inbound, outbound)| ProfileRules { inbound, outbound });
    let addr = prop_oneof![
        (1u8..10).prop_map(|n| IpAddr::V4(v4(n))),
        (1u8..10).prop_map(|n| IpAddr::V6(v6(n))),
    ];
    prop_oneof![
        5 => (name, proptest::option::weighted(0.7, policy))
            .prop_map(|(ifname, policy)| SpecChange::Endpoint { ifname, policy }),
        2 => (
            proptest::sample::select(&PROFILES[..5]),
            proptest::option::weighted(0.8, rules)
        )
            .prop_map(|(name, rules)| SpecChange::Profile {
                name: name.to_string(),
                rules
            }),
        4 => (proptest::sample::select(&GROUPS[..]), addr, any::<bool>()).prop_map(
            |(g, addr, present)| SpecChange::Member {
                netgroup: g.to_string(),
                addr,
                present
            }
        ),
    ]
}

/// Batches of changes, as the daemon hands them over run by run.
fn arb_batches() -> impl Strategy<Value = Vec<Vec<SpecChange>>> {
    proptest::collection::vec(proptest::collection::vec(arb_change(), 1..5), 1..12)
}

/// The table the incremental path must reach, and the kernel's table as
/// the daemon would leave it (what was last applied).
struct Reference {
    spec: PolicySpec,
    applied: Option<Ruleset>,
}

/// Feeds `batches` to a policy that starts from `start` and checks every
/// step against rendering and planning from scratch.
fn check(start: PolicySpec, batches: &[Vec<SpecChange>]) -> Result<(), TestCaseError> {
    let mut model = RenderedPolicy::new(start.clone());
    let mut reference = Reference {
        spec: start,
        applied: None,
    };
    for batch in batches {
        for c in batch {
            reference.spec.apply(c);
        }
        let whole = render(&reference.spec);
        let step = model.update(batch);
        prop_assert_eq!(model.spec(), &reference.spec, "the spec takes every change");
        match (step, whole) {
            (Err(_), Err(_)) => prop_assert!(model.ruleset().is_none()),
            (Ok(step), Ok(want)) => {
                prop_assert_eq!(model.ruleset(), Some(&want), "same table as from scratch");
                let full = plan(&want, reference.applied.as_ref());
                let actions = match step {
                    Update::Delta(delta) => {
                        let actions = delta.plan();
                        // From the table last applied, the same actions.
                        prop_assert_eq!(&actions, &full);
                        actions
                    }
                    // Rendered from scratch: compared whole.
                    Update::Rendered => full,
                };
                let reached = simulate(reference.applied.take(), &actions)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(reached.as_ref(), Some(&want), "the plan reaches it");
                reference.applied = reached;
            }
            (step, whole) => {
                return Err(TestCaseError::fail(format!(
                    "incremental {:?} but from scratch {:?}",
                    step.map(|_| ()),
                    whole.map(|_| ())
                )))
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// From nothing, any sequence of changes.
    #[test]
    fn changes_give_what_rendering_from_scratch_gives(batches in arb_batches()) {
        check(PolicySpec::default(), &batches)?;
    }

    /// From a node that already has endpoints and profiles.
    #[test]
    fn changes_to_a_populated_node_give_the_same(
        seed in proptest::collection::vec(arb_change(), 0..30),
        batches in arb_batches(),
    ) {
        let start = PolicySpec::from_changes(
            seed.iter().filter(|c| !matches!(c, SpecChange::Endpoint { ifname, .. } if ifname == "eth0")),
        );
        check(start, &batches)?;
    }
}

/// A node with two endpoints in netgroup `a` and the profiles they use.
fn node() -> PolicySpec {
    let mut changes = vec![
        SpecChange::Profile {
            name: "a".into(),
            rules: Some(ProfileRules {
                inbound: vec![Rule::Netgroup("a".into())],
                outbound: vec![Rule::All],
            }),
        },
        SpecChange::Profile {
            name: "b".into(),
            rules: Some(ProfileRules {
                inbound: vec![Rule::Netgroup("b".into())],
                outbound: vec![Rule::All],
            }),
        },
    ];
    for n in [1, 2] {
        changes.extend(joins(n, "a"));
    }
    PolicySpec::from_changes(&changes)
}

/// Endpoint `n` of this node joining `netgroup` (its profile list is
/// just that netgroup's profile), with its member address.
fn joins(n: u8, netgroup: &str) -> Vec<SpecChange> {
    vec![
        SpecChange::Endpoint {
            ifname: ifname(n),
            policy: Some(EndpointPolicy {
                ipv4: vec![v4(n)],
                ipv6: vec![],
                profiles: vec![netgroup.to_string()],
            }),
        },
        SpecChange::Member {
            netgroup: netgroup.into(),
            addr: IpAddr::V4(v4(n)),
            present: true,
        },
    ]
}

fn planned(spec: PolicySpec, changes: &[SpecChange]) -> Vec<String> {
    let mut model = RenderedPolicy::render(spec).unwrap();
    match model.update(changes).unwrap() {
        Update::Delta(delta) => delta.plan().iter().map(ToString::to_string).collect(),
        Update::Rendered => panic!("a rendered policy updates incrementally"),
    }
}

#[test]
fn an_endpoint_whose_list_exists_is_elements_only() {
    let list = list_set(&profile_list_id(&["a".to_string()]));
    assert_eq!(
        planned(node(), &joins(3, "a")),
        [
            "add 1 element to set ep-src.v4".to_string(),
            format!("add 1 element to set {list}"),
            "add 1 element to set ng.a.v4".to_string(),
        ]
    );
}

#[test]
fn the_first_endpoint_of_a_netgroup_brings_its_chains_and_sets() {
    let lines = planned(node(), &joins(3, "b"));
    let list = list_set(&profile_list_id(&["b".to_string()]));
    let want_start = [
        format!("create set {list}"),
        "create set ng.b.v4".to_string(),
        "create set ng.b.v6".to_string(),
    ];
    assert_eq!(&lines[..3], want_start, "{lines:?}");
    assert!(lines[3].starts_with("create chain ep-in."), "{lines:?}");
    assert!(lines[4].starts_with("create chain ep-out."), "{lines:?}");
    assert!(lines.contains(&"add 1 element to set ng.b.v4".to_string()));
    assert!(lines.contains(&format!("add 1 element to set {list}")));
    // A new list: one more rule in each dispatch chain.
    assert!(lines.contains(&format!("replace rules of chain {FROM_LIST} (3 rules)")));
    assert!(lines.contains(&format!("replace rules of chain {TO_LIST} (3 rules)")));
}

#[test]
fn a_member_elsewhere_is_one_element_and_an_unnamed_netgroup_nothing() {
    let member = |netgroup: &str| SpecChange::Member {
        netgroup: netgroup.into(),
        addr: IpAddr::V4(v4(9)),
        present: true,
    };
    assert_eq!(
        planned(node(), &[member("a")]),
        ["add 1 element to set ng.a.v4"]
    );
    assert!(planned(node(), &[member("c")]).is_empty());
}

#[test]
fn an_update_that_cannot_be_rendered_is_refused_and_the_next_renders_all() {
    let mut model = RenderedPolicy::render(node()).unwrap();
    let bad = SpecChange::Endpoint {
        ifname: "eth0".into(),
        policy: Some(EndpointPolicy::default()),
    };
    assert!(matches!(
        model.update(std::slice::from_ref(&bad)),
        Err(RenderError::EndpointName { .. })
    ));
    assert!(model.ruleset().is_none());
    let mended = SpecChange::Endpoint {
        ifname: "eth0".into(),
        policy: None,
    };
    assert_eq!(model.update(&[mended]), Ok(Update::Rendered));
    assert_eq!(model.ruleset(), Some(&render(&node()).unwrap()));
}
