//! The endpoint reconciler against the real kernel, inside test namespaces
//! (TESTING.md): build, read back, ping, repair drift, remove.

use reconcilers::endpoint::{
    host_ifname, EndpointDataplane, EndpointSpec, HIGHEST_NSID, LOWEST_NSID,
};
use reconcilers::{NetnsRef, ROUTE_PROTOCOL};
use std::net::{IpAddr, Ipv4Addr};
use testsupport::{ping, require_root, Container, Node};

mod common;
use common::spec;

/// Runs `f` with a reconciler inside the node namespace. The runtime is
/// built outside it: tokio's first IO runtime makes a process-wide socket
/// pair, which would otherwise pin the node namespace.
fn in_node<R: Send>(node: &Node, f: impl AsyncFnOnce(&EndpointDataplane) -> R + Send) -> R {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    node.ns.run(move || {
        rt.block_on(async move {
            let dp = EndpointDataplane::new().unwrap();
            f(&dp).await
        })
    })
}

fn our_routes(node: &Node) -> Vec<String> {
    let mut out = vec![];
    for fam in ["-4", "-6"] {
        let v = node
            .ns
            .ip_json(&[fam, "route", "show", "proto", &ROUTE_PROTOCOL.to_string()]);
        for r in v.as_array().unwrap() {
            out.push(format!(
                "{} dev {}",
                r["dst"].as_str().unwrap(),
                r["dev"].as_str().unwrap()
            ));
        }
    }
    out.sort();
    out
}

/// The host's neighbour entries (IPv4 and IPv6) on `dev` in the node, as
/// `address lladdr state...`.
fn host_neighbours(node: &Node, dev: &str) -> Vec<String> {
    let v = node.ns.ip_json(&["neigh", "show", "dev", dev]);
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let states: Vec<&str> = n["state"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            format!(
                "{} lladdr {} {}",
                n["dst"].as_str().unwrap(),
                n["lladdr"].as_str().unwrap_or("-"),
                states.join(",")
            )
        })
        .collect();
    out.sort();
    out
}

/// The MAC of `eth0` in container `c`.
fn eth0_mac(c: &Container) -> String {
    c.ip_json(&["link", "show", "dev", "eth0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The IPv6 addresses on `dev` in the node as `address/prefix flag ...`
/// (the flags `ip -j` reports, in a fixed order; `forever` when it never
/// expires).
fn host_ipv6_addresses(node: &Node, dev: &str) -> Vec<String> {
    let v = node.ns.ip_json(&["-6", "addr", "show", "dev", dev]);
    let mut out = vec![];
    for l in v.as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            let mut s = format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]);
            for f in ["dadfailed", "nodad", "noprefixroute", "tentative"] {
                if a[f].as_bool() == Some(true) {
                    s.push(' ');
                    s.push_str(f);
                }
            }
            if a["valid_life_time"].as_u64() == Some(u64::from(u32::MAX)) {
                s.push_str(" forever");
            }
            out.push(s);
        }
    }
    out
}

/// `ip -6 route show ARGS` in the node, one line each.
fn ipv6_routes(node: &Node, args: &[&str]) -> Vec<String> {
    let mut a = vec!["ip", "-6", "route", "show"];
    a.extend_from_slice(args);
    node.ns.exec_ok(&a).lines().map(str::to_string).collect()
}

#[test]
fn builds_pings_repairs_and_removes() {
    if !require_root() {
        return;
    }
    let node = Node::new("epnetns", 1);
    let a = Container::new(&node.ns);
    let b = Container::new(&node.ns);
    let sa = spec(&a, "container-a", 1);
    let sb = spec(&b, "container-b", 2);

    // Build both; a second pass has nothing to do.
    let (first, second) = in_node(&node, async |dp| {
        let first = dp.ensure(&sa, false).await.unwrap();
        dp.ensure(&sb, false).await.unwrap();
        let second = dp.ensure(&sa, false).await.unwrap();
        (first, second)
    });
    assert!(!first.actions.is_empty());
    assert!(
        second.actions.is_empty(),
        "second pass: {:?}",
        second.actions
    );
    assert!(first.container_mac.is_some());

    // Read the kernel back.
    let ha = host_ifname("container-a");
    let hb = host_ifname("container-b");
    let link = &node.ns.ip_json(&["-d", "link", "show", &ha])[0];
    assert_eq!(link["address"], "ee:ee:ee:ee:ee:ee");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(link["linkinfo"]["info_kind"], "veth");
    assert_eq!(link["ifalias"], reconcilers::OWNER_ALIAS, "marked as ours");
    assert_eq!(
        node.ns.sysctl(&format!("net/ipv4/conf/{ha}/proxy_arp")),
        "1"
    );
    assert_eq!(
        node.ns.sysctl(&format!("net/ipv4/conf/{ha}/forwarding")),
        "1"
    );
    // The host side's IPv6: no address at all (none of the kernel's own,
    // none of ours), so no local, prefix or anycast route per veth; a
    // permanent neighbour entry per container address, to eth0's MAC (the
    // one we gave it).
    assert_eq!(
        node.ns.sysctl(&format!("net/ipv6/conf/{ha}/addr_gen_mode")),
        "1"
    );
    assert_eq!(host_ipv6_addresses(&node, &ha), Vec::<String>::new());
    assert_eq!(host_ipv6_addresses(&node, &hb), Vec::<String>::new());
    let mac_a = eth0_mac(&a);
    assert_eq!(
        mac_a,
        reconcilers::endpoint::format_mac(&reconcilers::endpoint::container_mac("container-a"))
    );
    assert_eq!(first.container_mac.as_deref(), Some(mac_a.as_str()));
    assert_eq!(
        host_neighbours(&node, &ha),
        vec![
            format!("198.18.0.1 lladdr {mac_a} PERMANENT"),
            format!("2001:db8:1::1 lladdr {mac_a} PERMANENT")
        ]
    );
    let mac_b = eth0_mac(&b);
    assert_eq!(
        host_neighbours(&node, &hb),
        vec![
            format!("198.18.0.2 lladdr {mac_b} PERMANENT"),
            format!("2001:db8:1::2 lladdr {mac_b} PERMANENT")
        ]
    );
    let per_veth: Vec<String> = [&ha, &hb]
        .iter()
        .flat_map(|h| ipv6_routes(&node, &["table", "all", "dev", h]))
        .filter(|r| {
            r.starts_with("fe80")
                || r.starts_with("local")
                || r.contains("anycast")
                || r.starts_with("multicast")
        })
        .collect();
    assert!(
        per_veth.is_empty(),
        "local, prefix, anycast and the kernel's ff00::/8 routes: {per_veth:?}"
    );
    assert_eq!(our_routes(&node), {
        let mut v = vec![
            format!("198.18.0.1 dev {ha}"),
            format!("198.18.0.2 dev {hb}"),
            format!("2001:db8:1::1 dev {ha}"),
            format!("2001:db8:1::2 dev {hb}"),
        ];
        v.sort();
        v
    });
    let addrs = a.ip_json(&["addr", "show", "dev", "eth0"]);
    let got: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["scope"] == "global")
        .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
        .collect();
    assert_eq!(got, vec!["198.18.0.1/32", "2001:db8:1::1/128"]);
    let neigh = a.exec_ok(&["ip", "neigh", "show", "dev", "eth0"]);
    assert!(
        neigh.contains("169.254.1.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT"),
        "{neigh}"
    );

    // Real packets: node <-> container and container <-> container, both families.
    let a4 = IpAddr::V4(sa.ipv4[0]);
    let a6 = IpAddr::V6(sa.ipv6[0]);
    let b4 = IpAddr::V4(sb.ipv4[0]);
    let b6 = IpAddr::V6(sb.ipv6[0]);
    assert!(ping(&node.ns, a4));
    assert!(ping(&node.ns, a6));
    assert!(ping(&a, IpAddr::V4(node.v4)));
    assert!(ping(&a, IpAddr::V6(node.v6)));
    assert!(ping(&a, b4));
    assert!(ping(&a, b6));
    assert!(ping(&b, a4));
    assert!(ping(&b, a6));

    // Drift: each break is repaired by one ensure.
    type Break<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let breaks: Vec<Break> = vec![
        (
            "delete host veth",
            Box::new(|| {
                node.ns.ip(&["link", "del", &ha]);
            }),
        ),
        (
            "delete host route",
            Box::new(|| {
                node.ns.ip(&["route", "del", "198.18.0.1/32"]);
            }),
        ),
        (
            "delete container address",
            Box::new(|| {
                a.exec_ok(&["ip", "addr", "del", "2001:db8:1::1/128", "dev", "eth0"]);
            }),
        ),
        (
            "set link down",
            Box::new(|| {
                node.ns.ip(&["link", "set", &ha, "down"]);
            }),
        ),
        (
            "delete the host's neighbour entry for the container's IPv6 address",
            Box::new(|| {
                node.ns
                    .ip(&["-6", "neigh", "del", "2001:db8:1::1", "dev", &ha]);
            }),
        ),
        (
            "an IPv6 address on the host side (the previous version's gateway)",
            Box::new(|| {
                node.ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    "fe80::ecee:eeff:feee:eeee/128",
                    "dev",
                    &ha,
                    "nodad",
                    "noprefixroute",
                ]);
            }),
        ),
        (
            "our alias removed from the host veth",
            Box::new(|| {
                node.ns.ip(&["link", "set", "dev", &ha, "alias", ""]);
            }),
        ),
        (
            "delete container default route",
            Box::new(|| {
                a.exec_ok(&["ip", "route", "del", "default"]);
            }),
        ),
        (
            "route of ours via the wrong link",
            Box::new(|| {
                node.ns.ip(&[
                    "route",
                    "replace",
                    "198.18.0.1/32",
                    "dev",
                    &hb,
                    "proto",
                    &ROUTE_PROTOCOL.to_string(),
                ]);
            }),
        ),
    ];
    for (what, break_it) in &breaks {
        break_it();
        let repaired = in_node(&node, async |dp| dp.ensure(&sa, false).await.unwrap());
        assert!(!repaired.actions.is_empty(), "{what}: nothing repaired");
        assert!(ping(&node.ns, a4), "{what}: IPv4 after repair");
        assert!(ping(&b, a6), "{what}: IPv6 after repair");
        assert!(
            ping(&a, IpAddr::V6(node.v6)),
            "{what}: IPv6 through the link-local gateway after repair"
        );
        assert_eq!(
            host_ipv6_addresses(&node, &ha),
            Vec::<String>::new(),
            "{what}"
        );
        let mac = eth0_mac(&a);
        assert_eq!(
            host_neighbours(&node, &ha),
            vec![
                format!("198.18.0.1 lladdr {mac} PERMANENT"),
                format!("2001:db8:1::1 lladdr {mac} PERMANENT")
            ],
            "{what}"
        );
        let link = &node.ns.ip_json(&["-d", "link", "show", &ha])[0];
        assert_eq!(link["ifalias"], reconcilers::OWNER_ALIAS, "{what}");
    }

    // eth0 given another MAC: the host's entries follow it (and the
    // container's gateway entries, which the kernel flushes with any MAC
    // change, come back). The node has talked to a over IPv4 before: an ARP
    // entry it had learnt would still name the old MAC for half a minute.
    a.exec_ok(&["ip", "link", "set", "eth0", "address", "02:00:00:00:00:77"]);
    let repaired = in_node(&node, async |dp| dp.ensure(&sa, false).await.unwrap());
    use reconcilers::endpoint::{Action, ContainerNeighbour, HostNeighbour};
    assert_eq!(
        repaired.actions,
        vec![
            Action::ReplaceContainerNeighbour(ContainerNeighbour::GatewayV4),
            Action::ReplaceContainerNeighbour(ContainerNeighbour::GatewayV6),
            Action::ReplaceHostNeighbour {
                host: ha.clone(),
                neighbour: HostNeighbour {
                    addr: a4,
                    lladdr: vec![2, 0, 0, 0, 0, 0x77],
                },
            },
            Action::ReplaceHostNeighbour {
                host: ha.clone(),
                neighbour: HostNeighbour {
                    addr: a6,
                    lladdr: vec![2, 0, 0, 0, 0, 0x77],
                },
            }
        ]
    );
    assert_eq!(
        host_neighbours(&node, &ha),
        vec![
            "198.18.0.1 lladdr 02:00:00:00:00:77 PERMANENT".to_string(),
            "2001:db8:1::1 lladdr 02:00:00:00:00:77 PERMANENT".to_string()
        ]
    );
    assert!(ping(&node.ns, a4), "IPv4 to the new MAC");
    assert!(ping(&b, a4), "IPv4 from a neighbour to the new MAC");
    assert!(ping(&node.ns, a6), "IPv6 to the new MAC");
    assert!(ping(&b, a6), "IPv6 from a neighbour to the new MAC");

    // Removal takes everything of a, and nothing of b.
    let removed = in_node(&node, async |dp| {
        dp.remove("container-a", false).await.unwrap()
    });
    assert_eq!(removed.len(), 1);
    assert!(
        node.ns
            .ip_json(&["link", "show", "dev", &hb])
            .as_array()
            .unwrap()
            .len()
            == 1
    );
    assert_eq!(
        our_routes(&node),
        vec![
            format!("198.18.0.2 dev {hb}"),
            format!("2001:db8:1::2 dev {hb}")
        ]
    );
    assert_eq!(
        a.ip_json(&["link", "show"]).as_array().unwrap().len(),
        1,
        "only lo left"
    );
    let again = in_node(&node, async |dp| {
        dp.remove("container-a", false).await.unwrap()
    });
    assert!(again.is_empty(), "removal is idempotent");
    assert!(ping(&node.ns, b4));
    // The removal returned once the link was gone; the thread that sent
    // the delete ends when the kernel answers (after it freed the pair).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while link_delete_threads() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        link_delete_threads(),
        0,
        "a link-delete thread is still running 10 s after the removal"
    );
}

/// Threads of this process that are sending a link delete.
fn link_delete_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "link-delete")
        .count()
}

#[test]
fn gone_container_is_reported_as_gone() {
    if !require_root() {
        return;
    }
    let node = Node::new("epgone", 2);
    let mut c = Container::new(&node.ns);
    let s = spec(&c, "gone", 9);
    c.kill();
    let err = in_node(&node, async |dp| dp.ensure(&s, false).await.unwrap_err());
    assert!(err.is_gone(), "{err}");
}

#[test]
fn a_process_of_the_node_itself_is_never_configured() {
    if !require_root() {
        return;
    }
    let node = Node::new("epnode", 3);
    let inode = node.ns.inode();
    // The reconciler's own thread is in the node namespace: use its pid
    // with the node's inode, as a confused caller would.
    let err = in_node(&node, async move |dp| {
        let s = EndpointSpec {
            container_id: "node-itself".into(),
            netns: NetnsRef {
                pid: std::process::id(),
                inode,
            },
            ipv4: vec![Ipv4Addr::new(198, 18, 0, 77)],
            ipv6: vec![],
        };
        dp.ensure(&s, false).await.unwrap_err()
    });
    assert!(
        err.to_string().contains("node's own network namespace"),
        "{err}"
    );
    assert!(
        ping(&node.ns, IpAddr::V4(testsupport::GATEWAY_V4)),
        "the node's eth0 is intact"
    );
}

#[test]
fn stray_links_go_in_one_batch_and_nothing_else_does() {
    if !require_root() {
        return;
    }
    let node = Node::new("epbatch", 4);
    let cs: Vec<Container> = (0..3).map(|_| Container::new(&node.ns)).collect();
    let specs: Vec<EndpointSpec> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| spec(c, &format!("batch-{i}"), 10 + i as u8))
        .collect();
    // Someone else's link, with a name like ours, must survive.
    node.ns.ip(&[
        "link",
        "add",
        "califoreign0",
        "type",
        "veth",
        "peer",
        "name",
        "foreignpeer0",
    ]);
    let names: Vec<String> = specs.iter().map(|s| host_ifname(&s.container_id)).collect();
    in_node(&node, async |dp| {
        for s in &specs {
            dp.ensure(s, false).await.unwrap();
        }
        let inv = dp.inventory().await.unwrap();
        let strays: Vec<reconcilers::endpoint::Action> = names[..2]
            .iter()
            .map(|n| reconcilers::endpoint::Action::DeleteHostLink {
                name: n.clone(),
                index: inv.links[n].index,
            })
            .collect();
        dp.apply_node(&strays).await.unwrap();
        // Again: both already gone, nothing to do and no error.
        dp.delete_host_links(&[(names[0].clone(), inv.links[&names[0]].index)])
            .await
            .unwrap();
    });
    let links: Vec<String> = node
        .ns
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !links.contains(&names[0]) && !links.contains(&names[1]),
        "{links:?}"
    );
    assert!(links.contains(&names[2]), "{links:?}");
    assert!(links.contains(&"califoreign0".to_string()), "{links:?}");
    for c in &cs[..2] {
        assert_eq!(
            c.ip_json(&["link", "show"]).as_array().unwrap().len(),
            1,
            "the peer went with its host veth"
        );
    }
    assert_eq!(
        our_routes(&node),
        vec![
            format!("198.18.0.12 dev {}", names[2]),
            format!("2001:db8:1::c dev {}", names[2]),
        ]
    );
    let grouped = node.ns.ip_json(&[
        "link",
        "show",
        "group",
        &reconcilers::DOOMED_LINK_GROUP.to_string(),
    ]);
    // (`ip -j` prints an empty object for each link not in the group.)
    let in_group = grouped
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("ifname").is_some())
        .count();
    assert_eq!(in_group, 0, "{grouped}");
    assert!(ping(&node.ns, IpAddr::V4(specs[2].ipv4[0])));
}

/// The ids the node's namespace has given out, as `ip netns list-id` reads them.
fn node_nsids(node: &Node) -> Vec<i64> {
    let v = node.ns.ip_json(&["netns", "list-id"]);
    let mut ids: Vec<i64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|n| n["nsid"].as_i64()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn new_containers_get_namespace_ids_downward_and_an_id_given_before_is_kept() {
    if !require_root() {
        return;
    }
    let node = Node::new("epnsid", 5);
    let cs: Vec<Container> = (0..3).map(|_| Container::new(&node.ns)).collect();
    // The third container's namespace already has an id, given by the
    // kernel for someone else's veth into it (the lowest free one).
    let pid = cs[2].pid().to_string();
    node.ns.ip(&[
        "link", "add", "nsidtmp0", "type", "veth", "peer", "name", "nsidtmp1", "netns", &pid,
    ]);
    let given = node.ns.ip_json(&["link", "show", "dev", "nsidtmp0"])[0]["link_netnsid"]
        .as_i64()
        .expect("the kernel gave the peer's namespace an id");
    node.ns.ip(&["link", "del", "nsidtmp0"]);
    let specs: Vec<EndpointSpec> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| spec(c, &format!("nsid-{i}"), 20 + i as u8))
        .collect();
    let ids: Vec<i64> = in_node(&node, async |dp| {
        let mut ids = vec![];
        for s in &specs {
            let ensured = dp.ensure(s, false).await.unwrap();
            ids.push(i64::from(ensured.container_nsid.expect("an id")));
        }
        ids
    });
    let ours = i64::from(LOWEST_NSID)..=i64::from(HIGHEST_NSID);
    assert!(ours.contains(&ids[0]) && ours.contains(&ids[1]), "{ids:?}");
    assert!(
        ids[1] < ids[0],
        "the newer container has the lower id: {ids:?}"
    );
    assert_eq!(ids[2], given, "an id the namespace had is kept");
    let listed = node_nsids(&node);
    for id in &ids {
        assert!(listed.contains(id), "the kernel lists {id}: {listed:?}");
    }
    // The pairs work with the ids we gave.
    assert!(ping(&node.ns, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20))));
    assert!(ping(&node.ns, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 22))));
}
