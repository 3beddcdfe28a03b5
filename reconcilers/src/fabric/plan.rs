//! The pure planner: wanted fabric routes + our fabric routes in the
//! kernel → ordered actions. No I/O.
//!
//! Per destination, among our routes at the default metric: one with the
//! right gateway is kept; else the first is replaced (`NLM_F_REPLACE`
//! changes the route at that destination and metric in place, so traffic
//! never sees it missing); else the route is added. Every other route of
//! ours for the destination (another metric, a second gateway) and every
//! route of ours for a destination not wanted is deleted. Order: replaces,
//! adds, then deletes (new paths exist before old ones go), each group by
//! destination.

use super::model::*;
use std::collections::BTreeSet;

/// Plans the actions that make our fabric routes exactly `spec`.
///
/// `observed` holds only routes of ours (see the module doc of
/// [`super`]); routes of anyone else are never named by a plan. Pure and
/// deterministic; a plan applied to the state it was made from leaves
/// nothing to do (tested against a model of the kernel).
pub fn plan(spec: &ValidFabricSpec, observed: &[ObservedRoute]) -> Vec<FabricAction> {
    let mut observed: Vec<ObservedRoute> = observed.to_vec();
    observed.sort();
    observed.dedup();

    let mut replaces = Vec::new();
    let mut adds = Vec::new();
    let mut deletes = Vec::new();
    // The observed routes that stay (kept as they are, or replaced in place).
    let mut staying: BTreeSet<ObservedRoute> = BTreeSet::new();

    for (&dst, &via) in spec.routes() {
        let at_default: Vec<&ObservedRoute> = observed
            .iter()
            .filter(|o| o.dst == dst && o.metric == default_metric(&dst))
            .collect();
        let to = FabricRoute { dst, via };
        if let Some(good) = at_default.iter().find(|o| o.via == via) {
            staying.insert(**good);
        } else if let Some(first) = at_default.first() {
            staying.insert(**first);
            replaces.push(FabricAction::Replace { from: **first, to });
        } else {
            adds.push(FabricAction::Add(to));
        }
    }
    for o in &observed {
        if !staying.contains(o) {
            deletes.push(FabricAction::Delete(*o));
        }
    }
    replaces.into_iter().chain(adds).chain(deletes).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn want(list: &[(&str, &str)]) -> ValidFabricSpec {
        FabricSpec {
            routes: list
                .iter()
                .map(|(d, v)| FabricRoute {
                    dst: net(d),
                    via: ip(v),
                })
                .collect(),
        }
        .validate()
        .unwrap()
    }
    fn obs(dst: &str, via: &str, metric: u32) -> ObservedRoute {
        ObservedRoute {
            dst: net(dst),
            via: ip(via),
            metric,
        }
    }
    fn fr(dst: &str, via: &str) -> FabricRoute {
        FabricRoute {
            dst: net(dst),
            via: ip(via),
        }
    }

    struct Case {
        name: &'static str,
        want: Vec<(&'static str, &'static str)>,
        have: Vec<ObservedRoute>,
        plan: Vec<FabricAction>,
    }

    #[test]
    fn table() {
        let b4 = "198.18.0.64/26";
        let b6 = "2001:db8:1::40/122";
        let cases = vec![
            Case {
                name: "nothing wanted, nothing there",
                want: vec![],
                have: vec![],
                plan: vec![],
            },
            Case {
                name: "fresh node: add both families",
                want: vec![(b6, "2001:db8:f::2"), (b4, "198.19.0.2")],
                have: vec![],
                plan: vec![
                    FabricAction::Add(fr(b4, "198.19.0.2")),
                    FabricAction::Add(fr(b6, "2001:db8:f::2")),
                ],
            },
            Case {
                name: "converged: nothing to do",
                want: vec![(b4, "198.19.0.2"), (b6, "2001:db8:f::2")],
                have: vec![obs(b4, "198.19.0.2", 0), obs(b6, "2001:db8:f::2", 1024)],
                plan: vec![],
            },
            Case {
                name: "wrong gateway: replaced in place",
                want: vec![(b4, "198.19.0.2"), (b6, "2001:db8:f::2")],
                have: vec![obs(b4, "198.19.0.9", 0), obs(b6, "2001:db8:f::9", 1024)],
                plan: vec![
                    FabricAction::Replace {
                        from: obs(b4, "198.19.0.9", 0),
                        to: fr(b4, "198.19.0.2"),
                    },
                    FabricAction::Replace {
                        from: obs(b6, "2001:db8:f::9", 1024),
                        to: fr(b6, "2001:db8:f::2"),
                    },
                ],
            },
            Case {
                name: "no longer wanted: deleted",
                want: vec![],
                have: vec![obs(b4, "198.19.0.2", 0), obs(b6, "2001:db8:f::2", 1024)],
                plan: vec![
                    FabricAction::Delete(obs(b4, "198.19.0.2", 0)),
                    FabricAction::Delete(obs(b6, "2001:db8:f::2", 1024)),
                ],
            },
            Case {
                name: "another metric: a new one at the default metric, the odd one deleted",
                want: vec![(b4, "198.19.0.2")],
                have: vec![obs(b4, "198.19.0.2", 50)],
                plan: vec![
                    FabricAction::Add(fr(b4, "198.19.0.2")),
                    FabricAction::Delete(obs(b4, "198.19.0.2", 50)),
                ],
            },
            Case {
                name: "two gateways at the default metric: the right one kept, the other deleted",
                want: vec![(b4, "198.19.0.2")],
                have: vec![obs(b4, "198.19.0.3", 0), obs(b4, "198.19.0.2", 0)],
                plan: vec![FabricAction::Delete(obs(b4, "198.19.0.3", 0))],
            },
            Case {
                name: "two wrong gateways: the first replaced, the other deleted",
                want: vec![(b4, "198.19.0.2")],
                have: vec![obs(b4, "198.19.0.4", 0), obs(b4, "198.19.0.3", 0)],
                plan: vec![
                    FabricAction::Replace {
                        from: obs(b4, "198.19.0.3", 0),
                        to: fr(b4, "198.19.0.2"),
                    },
                    FabricAction::Delete(obs(b4, "198.19.0.4", 0)),
                ],
            },
            Case {
                name: "a host route beside its block: both kept, a stale one deleted, a missing one added",
                want: vec![
                    (b4, "198.19.0.2"),
                    ("198.18.0.5/32", "198.19.0.3"),
                    ("198.18.0.6/32", "198.19.0.3"),
                ],
                have: vec![
                    obs(b4, "198.19.0.2", 0),
                    obs("198.18.0.5/32", "198.19.0.3", 0),
                    obs("198.18.0.7/32", "198.19.0.3", 0),
                ],
                plan: vec![
                    FabricAction::Add(fr("198.18.0.6/32", "198.19.0.3")),
                    FabricAction::Delete(obs("198.18.0.7/32", "198.19.0.3", 0)),
                ],
            },
            Case {
                name: "an IPv4 route at 1024 is not at IPv4's default metric",
                want: vec![(b4, "198.19.0.2")],
                have: vec![obs(b4, "198.19.0.2", 1024)],
                plan: vec![
                    FabricAction::Add(fr(b4, "198.19.0.2")),
                    FabricAction::Delete(obs(b4, "198.19.0.2", 1024)),
                ],
            },
        ];
        for c in cases {
            let got = plan(&want(&c.want), &c.have);
            assert_eq!(got, c.plan, "case: {}", c.name);
        }
    }

    #[test]
    fn actions_read_well() {
        let b4 = "198.18.0.64/26";
        assert_eq!(
            FabricAction::Add(fr(b4, "198.19.0.2")).to_string(),
            "add route 198.18.0.64/26 via 198.19.0.2"
        );
        assert_eq!(
            FabricAction::Replace {
                from: obs(b4, "198.19.0.9", 0),
                to: fr(b4, "198.19.0.2")
            }
            .to_string(),
            "replace route 198.18.0.64/26 via 198.19.0.9 metric 0 with 198.18.0.64/26 via 198.19.0.2"
        );
        assert_eq!(
            FabricAction::Delete(obs("2001:db8:1::40/122", "2001:db8:f::2", 1024)).to_string(),
            "delete route 2001:db8:1::40/122 via 2001:db8:f::2 metric 1024"
        );
    }

    // -- A model of the kernel: our routes keyed by (destination, metric);
    // more than one gateway at one key is allowed (IPv4 `ip route append`,
    // IPv6 multipath) to exercise the odd states too.

    type Kernel = BTreeMap<(IpNet, u32), Vec<IpAddr>>;

    fn observe(k: &Kernel) -> Vec<ObservedRoute> {
        k.iter()
            .flat_map(|((dst, metric), vias)| {
                vias.iter().map(|via| ObservedRoute {
                    dst: *dst,
                    via: *via,
                    metric: *metric,
                })
            })
            .collect()
    }

    fn apply(k: &mut Kernel, a: &FabricAction) -> Result<(), String> {
        match a {
            FabricAction::Add(r) => {
                let key = (r.dst, default_metric(&r.dst));
                if k.get(&key).is_some_and(|v| !v.is_empty()) {
                    return Err(format!("{a}: exists"));
                }
                k.insert(key, vec![r.via]);
            }
            FabricAction::Replace { from, to } => {
                let key = (to.dst, default_metric(&to.dst));
                if (from.dst, from.metric) != key {
                    return Err(format!("{a}: replaces at another key"));
                }
                // The kernel replaces the first alias at that key.
                let vias = k.entry(key).or_default();
                if vias.first() != Some(&from.via) {
                    return Err(format!("{a}: not the first alias"));
                }
                vias[0] = to.via;
            }
            FabricAction::Delete(o) => {
                let vias = k.entry((o.dst, o.metric)).or_default();
                let Some(i) = vias.iter().position(|v| *v == o.via) else {
                    return Err(format!("{a}: nothing to delete"));
                };
                vias.remove(i);
                if vias.is_empty() {
                    k.remove(&(o.dst, o.metric));
                }
            }
        }
        Ok(())
    }

    fn arb_dst() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (0u8..4, prop::sample::select(vec![26u8, 32])).prop_map(|(n, len)| {
                IpNet::new(IpAddr::V4(Ipv4Addr::new(198, 18, n, 0)), len).unwrap()
            }),
            (0u16..4, prop::sample::select(vec![122u8, 128])).prop_map(|(n, len)| {
                IpNet::new(
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, n, 0)),
                    len,
                )
                .unwrap()
            }),
        ]
    }

    fn via_for(dst: &IpNet, n: u8) -> IpAddr {
        match dst {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, 0, n)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, n as u16)),
        }
    }

    fn arb_spec() -> impl Strategy<Value = ValidFabricSpec> {
        prop::collection::btree_map(arb_dst(), 1u8..4, 0..6).prop_map(|m| {
            FabricSpec {
                routes: m
                    .into_iter()
                    .map(|(dst, n)| FabricRoute {
                        dst,
                        via: via_for(&dst, n),
                    })
                    .collect(),
            }
            .validate()
            .unwrap()
        })
    }

    fn arb_kernel() -> impl Strategy<Value = Kernel> {
        prop::collection::vec(
            (
                arb_dst(),
                prop::sample::select(vec![0u32, 50, 1024]),
                prop::collection::btree_set(1u8..4, 1..3),
            ),
            0..8,
        )
        .prop_map(|entries| {
            let mut k = Kernel::new();
            for (dst, metric, vias) in entries {
                k.insert(
                    (dst, metric),
                    vias.into_iter().map(|n| via_for(&dst, n)).collect(),
                );
            }
            k
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any state: the plan is accepted step by step by the kernel
        /// model, leaves exactly the wanted routes at the default metric,
        /// and a second plan is empty.
        #[test]
        fn a_plan_converges(spec in arb_spec(), mut k in arb_kernel()) {
            let actions = plan(&spec, &observe(&k));
            for a in &actions {
                apply(&mut k, a).map_err(TestCaseError::fail)?;
            }
            let wanted: Kernel = spec
                .routes()
                .iter()
                .map(|(dst, via)| ((*dst, default_metric(dst)), vec![*via]))
                .collect();
            prop_assert_eq!(&k, &wanted);
            prop_assert!(plan(&spec, &observe(&k)).is_empty());
        }

        /// Same inputs, same plan, whatever the order of the observation.
        #[test]
        fn planning_is_deterministic(spec in arb_spec(), k in arb_kernel()) {
            let o = observe(&k);
            let mut reversed = o.clone();
            reversed.reverse();
            prop_assert_eq!(plan(&spec, &o), plan(&spec, &reversed));
        }
    }
}
