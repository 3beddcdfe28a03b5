//! The fabric reconciler against the real kernel, inside test namespaces
//! (TESTING.md): three nodes on one bridge, containers made by the
//! endpoint reconciler, fabric routes computed by `desired_routes` and made
//! by `ensure`; read back with `ip -j route`, real pings across nodes,
//! foreign routes left alone, drift repaired, everything removed.

use ipnet::IpNet;
use reconcilers::endpoint::{EndpointDataplane, EndpointSpec};
use reconcilers::fabric::{
    desired_routes, FabricAction, FabricDataplane, FabricError, FabricRoute, FabricSpec, RouteError,
};
use reconcilers::{NetnsRef, ROUTE_PROTOCOL};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use testsupport::{ping, require_root, Container, Fabric, FabricNode, Netns};

fn v4(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, c, d)
}
fn v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n)
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn route(dst: &str, via: &str) -> FabricRoute {
    FabricRoute {
        dst: net(dst),
        via: ip(via),
    }
}

/// Runs `f` inside the namespace `ns` on a fresh current-thread runtime
/// (built outside it: tokio's first IO runtime makes a process-wide socket
/// pair, which would otherwise pin the namespace).
fn in_ns<R: Send>(ns: &Netns, f: impl AsyncFnOnce() -> R + Send) -> R {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    ns.run(move || rt.block_on(f()))
}

fn fabric_ensure(node: &FabricNode, spec: &FabricSpec) -> Result<Vec<FabricAction>, FabricError> {
    in_ns(&node.ns, async || {
        FabricDataplane::new().unwrap().ensure(spec, false).await
    })
}

fn fabric_dry_run(node: &FabricNode, spec: &FabricSpec) -> Vec<FabricAction> {
    in_ns(&node.ns, async || {
        FabricDataplane::new()
            .unwrap()
            .ensure(spec, true)
            .await
            .unwrap()
    })
}

fn fabric_remove_all(node: &FabricNode) -> Vec<FabricAction> {
    in_ns(&node.ns, async || {
        FabricDataplane::new().unwrap().remove_all().await.unwrap()
    })
}

/// A container on `node` with one address of each family, made by the
/// endpoint reconciler (its host routes are proto-81 device routes).
fn container(node: &FabricNode, id: &str, a4: Ipv4Addr, a6: Ipv6Addr) -> Container {
    let c = Container::new(&node.ns);
    let spec = EndpointSpec {
        container_id: id.to_string(),
        netns: NetnsRef {
            pid: c.pid(),
            inode: c.inode(),
        },
        ipv4: vec![a4],
        ipv6: vec![a6],
    };
    in_ns(&node.ns, async || {
        EndpointDataplane::new()
            .unwrap()
            .ensure(&spec, false)
            .await
            .unwrap()
    });
    c
}

/// Every route in the node's main table, both families, as
/// "dst [via gw] [dev d] proto p", read by `ip -j`, independently of our
/// netlink code. Host routes get their /32 or /128 written out.
fn all_routes(node: &FabricNode) -> Vec<String> {
    let mut out = vec![];
    for (fam, full) in [("-4", "/32"), ("-6", "/128")] {
        let v = node.ns.ip_json(&[fam, "route", "show", "table", "main"]);
        for r in v.as_array().unwrap() {
            let mut dst = r["dst"].as_str().unwrap().to_string();
            if dst.starts_with("fe80:") || dst.starts_with("ff00:") {
                continue; // the kernel's link-local and multicast routes
            }
            if dst != "default" && !dst.contains('/') {
                dst.push_str(full);
            }
            let mut s = dst;
            if let Some(g) = r["gateway"].as_str() {
                s.push_str(&format!(" via {g}"));
            }
            if let Some(d) = r["dev"].as_str() {
                if !d.starts_with("cali") {
                    s.push_str(&format!(" dev {d}"));
                } else {
                    s.push_str(" dev cali*");
                }
            }
            let proto = r["protocol"].as_str().unwrap_or("boot");
            s.push_str(&format!(" proto {proto}"));
            out.push(s);
        }
    }
    out.sort();
    out
}

/// The routes `ip route show proto 81` lists that have a gateway: exactly
/// what the fabric reconciler owns.
fn fabric_routes(node: &FabricNode) -> Vec<String> {
    let mut out = vec![];
    for (fam, full) in [("-4", "/32"), ("-6", "/128")] {
        let v = node
            .ns
            .ip_json(&[fam, "route", "show", "proto", &ROUTE_PROTOCOL.to_string()]);
        for r in v.as_array().unwrap() {
            let Some(g) = r["gateway"].as_str() else {
                continue;
            };
            let mut dst = r["dst"].as_str().unwrap().to_string();
            if !dst.contains('/') {
                dst.push_str(full);
            }
            assert_eq!(r["dev"], "eth0", "the kernel picks the fabric link: {r}");
            out.push(format!("{dst} via {g}"));
        }
    }
    out.sort();
    out
}

fn expected(spec: &FabricSpec) -> Vec<String> {
    let mut v: Vec<String> = spec.routes.iter().map(|r| r.to_string()).collect();
    v.sort();
    v
}

fn without<'a>(all: &'a [String], gone: &[String]) -> Vec<&'a String> {
    all.iter().filter(|r| !gone.contains(r)).collect()
}

/// The cluster facts of the test: each node has one block per family;
/// container `b2` on node 2 borrowed its addresses from node 1's blocks.
struct Cluster {
    blocks: Vec<(IpNet, String)>,
    endpoints: Vec<(IpAddr, String)>,
    nodes: BTreeMap<String, Vec<IpAddr>>,
}

impl Cluster {
    fn spec_for(&self, node: &str) -> FabricSpec {
        let others: Vec<(IpAddr, String)> = self
            .endpoints
            .iter()
            .filter(|(_, n)| n != node)
            .cloned()
            .collect();
        let (spec, warnings) = desired_routes(&self.blocks, &others, &self.nodes, node);
        assert!(warnings.is_empty(), "{warnings:?}");
        spec
    }
}

#[test]
fn routes_between_nodes_carry_traffic_are_repaired_and_removed() {
    if !require_root() {
        return;
    }
    let fabric = Fabric::new("fabric", 3);
    for n in &fabric.nodes {
        n.ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        n.ns.exec_ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    }
    let (n1, n2, n3) = (fabric.node(1), fabric.node(2), fabric.node(3));

    // Containers: a1 on node 1, a2 and b2 (borrowed from node 1's
    // blocks) on node 2, a3 on node 3.
    let a1 = container(n1, "a1", v4(0, 1), v6(0x1));
    let a2 = container(n2, "a2", v4(0, 65), v6(0x41));
    let b2 = container(n2, "b2", v4(0, 5), v6(0x5));
    let a3 = container(n3, "a3", v4(0, 129), v6(0x81));
    let cluster = Cluster {
        blocks: vec![
            (net("198.18.0.0/26"), "n1".into()),
            (net("2001:db8:1::/122"), "n1".into()),
            (net("198.18.0.64/26"), "n2".into()),
            (net("2001:db8:1::40/122"), "n2".into()),
            (net("198.18.0.128/26"), "n3".into()),
            (net("2001:db8:1::80/122"), "n3".into()),
        ],
        endpoints: [
            ("198.18.0.1", "n1"),
            ("2001:db8:1::1", "n1"),
            ("198.18.0.65", "n2"),
            ("2001:db8:1::41", "n2"),
            ("198.18.0.5", "n2"),
            ("2001:db8:1::5", "n2"),
            ("198.18.0.129", "n3"),
            ("2001:db8:1::81", "n3"),
        ]
        .iter()
        .map(|(a, n)| (ip(a), n.to_string()))
        .collect(),
        nodes: [("n1", n1), ("n2", n2), ("n3", n3)]
            .iter()
            .map(|(name, n)| (name.to_string(), n.addresses()))
            .collect(),
    };
    let specs = [
        cluster.spec_for("n1"),
        cluster.spec_for("n2"),
        cluster.spec_for("n3"),
    ];
    assert_eq!(
        expected(&specs[0]),
        vec![
            "198.18.0.128/26 via 198.19.0.3",
            "198.18.0.5/32 via 198.19.0.2",
            "198.18.0.64/26 via 198.19.0.2",
            "2001:db8:1::40/122 via 2001:db8:f::2",
            "2001:db8:1::5/128 via 2001:db8:f::2",
            "2001:db8:1::80/122 via 2001:db8:f::3",
        ]
    );

    // Foreign routes on node 1: another protocol, both families.
    n1.ns.ip(&[
        "route",
        "add",
        "198.18.200.0/24",
        "via",
        "198.19.0.2",
        "proto",
        "static",
    ]);
    n1.ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:1::c800/120",
        "via",
        "2001:db8:f::2",
        "proto",
        "static",
    ]);
    // A proto-81 device route standing for another endpoint's route (the
    // containers' real ones are there too).
    n1.ns.ip(&[
        "route",
        "add",
        "198.18.0.9/32",
        "dev",
        "eth0",
        "proto",
        "81",
    ]);
    let before = all_routes(n1);

    // No fabric routes yet: no traffic between nodes.
    let containers = [(&a1, 0), (&a2, 1), (&b2, 2), (&a3, 3)];
    let addr4 = [v4(0, 1), v4(0, 65), v4(0, 5), v4(0, 129)];
    let addr6 = [v6(0x1), v6(0x41), v6(0x5), v6(0x81)];
    assert!(!ping(&a1, IpAddr::V4(addr4[1])), "no route yet");

    // A dry run changes nothing.
    let dry = fabric_dry_run(n1, &specs[0]);
    assert_eq!(dry.len(), 6, "{dry:?}");
    assert!(dry.iter().all(|a| matches!(a, FabricAction::Add(_))));
    assert_eq!(all_routes(n1), before);

    // Build every node; a second pass is a no-op.
    for (n, spec) in fabric.nodes.iter().zip(&specs) {
        let first = fabric_ensure(n, spec).unwrap();
        assert_eq!(first.len(), spec.routes.len(), "{first:?}");
        assert_eq!(fabric_ensure(n, spec).unwrap(), vec![], "second pass");
        assert_eq!(fabric_routes(n), expected(spec));
    }
    // On node 1, exactly the fabric routes were added; nothing else moved.
    let after = all_routes(n1);
    let added: Vec<String> = expected(&specs[0])
        .iter()
        .map(|r| format!("{r} dev eth0 proto 81"))
        .collect();
    let mut got: Vec<&String> = without(&after, &before);
    got.sort();
    assert_eq!(got, added.iter().collect::<Vec<_>>());
    assert!(without(&before, &after).is_empty(), "a route vanished");

    // Real packets between every pair of containers on different nodes,
    // both families (b2 and a2 share node 2). a3 → b2 takes node 3's /32
    // via node 2 over its /26 via node 1; a1 → b2 is the block owner's
    // host route.
    let node_of = [1, 2, 2, 3];
    for (from, i) in containers {
        for j in 0..4 {
            if node_of[i] == node_of[j] {
                continue;
            }
            assert!(
                ping(from, IpAddr::V4(addr4[j])),
                "IPv4 {} -> {}",
                addr4[i],
                addr4[j]
            );
            assert!(
                ping(from, IpAddr::V6(addr6[j])),
                "IPv6 {} -> {}",
                addr6[i],
                addr6[j]
            );
        }
    }

    // Drift: a route deleted by hand is restored.
    n1.ns.ip(&["route", "del", "198.18.0.64/26"]);
    n1.ns.ip(&["-6", "route", "del", "2001:db8:1::40/122"]);
    assert_eq!(
        fabric_ensure(n1, &specs[0]).unwrap(),
        vec![
            FabricAction::Add(route("198.18.0.64/26", "198.19.0.2")),
            FabricAction::Add(route("2001:db8:1::40/122", "2001:db8:f::2")),
        ]
    );
    assert_eq!(fabric_routes(n1), expected(&specs[0]));

    // Drift: a gateway changed by hand (still our protocol) is replaced.
    n1.ns.ip(&[
        "route",
        "replace",
        "198.18.0.64/26",
        "via",
        "198.19.0.3",
        "proto",
        "81",
    ]);
    n1.ns.ip(&[
        "-6",
        "route",
        "replace",
        "2001:db8:1::40/122",
        "via",
        "2001:db8:f::3",
        "proto",
        "81",
    ]);
    let repaired = fabric_ensure(n1, &specs[0]).unwrap();
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert!(repaired
        .iter()
        .all(|a| matches!(a, FabricAction::Replace { .. })));
    assert_eq!(fabric_routes(n1), expected(&specs[0]));
    assert!(ping(&a1, IpAddr::V4(addr4[1])));
    assert!(ping(&a1, IpAddr::V6(addr6[1])));

    // Drift: a route taken over by hand with another protocol is not ours
    // any more: left alone, and the failure names it; the rest is fine.
    n1.ns
        .ip(&["route", "replace", "198.18.0.128/26", "via", "198.19.0.3"]);
    let err = fabric_ensure(n1, &specs[0]).unwrap_err();
    match &err {
        FabricError::Failed { applied, failures } => {
            assert!(applied.is_empty(), "{applied:?}");
            assert_eq!(failures.len(), 1, "{failures:?}");
            assert!(matches!(failures[0], RouteError::NotOurs { .. }));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        err.to_string().contains(
            "add route 198.18.0.128/26 via 198.19.0.3: a route for 198.18.0.128/26 that is not ours is in the way"
        ),
        "{err}"
    );
    let taken = &n1.ns.ip_json(&["route", "show", "198.18.0.128/26"])[0];
    // `ip -j` leaves out the default protocol (boot).
    assert!(taken.get("protocol").is_none(), "{taken}");
    assert_eq!(taken["gateway"], "198.19.0.3", "{taken}");
    n1.ns.ip(&["route", "del", "198.18.0.128/26"]);
    assert_eq!(fabric_ensure(n1, &specs[0]).unwrap().len(), 1);

    // A gateway that is not on a connected subnet (reachable only through
    // the default route) is refused by the kernel, per route, and the
    // other routes are still made.
    let mut bad = specs[0].clone();
    bad.routes.extend([
        route("198.18.9.0/26", "198.19.1.1"),
        route("2001:db8:1::900/122", "2001:db8:2::1"),
        route("198.18.10.0/26", "198.19.0.2"),
    ]);
    let err = fabric_ensure(n1, &bad).unwrap_err();
    match &err {
        FabricError::Failed { applied, failures } => {
            assert_eq!(
                applied,
                &vec![FabricAction::Add(route("198.18.10.0/26", "198.19.0.2"))]
            );
            assert_eq!(failures.len(), 2, "{failures:?}");
            assert!(failures
                .iter()
                .all(|f| matches!(f, RouteError::GatewayNotOnLink { .. })));
        }
        other => panic!("unexpected error {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("add route 198.18.9.0/26 via 198.19.1.1: gateway 198.19.1.1 is not on a subnet this node is connected to"),
        "{msg}"
    );
    assert!(
        msg.contains("add route 2001:db8:1::900/122 via 2001:db8:2::1: gateway 2001:db8:2::1 is not on a subnet"),
        "{msg}"
    );
    let mut with_extra = expected(&specs[0]);
    with_extra.push("198.18.10.0/26 via 198.19.0.2".into());
    with_extra.sort();
    assert_eq!(fabric_routes(n1), with_extra);

    // A bad spec changes nothing.
    let mut conflict = specs[0].clone();
    conflict.routes.push(route("198.18.0.64/26", "198.19.0.3"));
    let err = fabric_ensure(n1, &conflict).unwrap_err();
    assert!(matches!(err, FabricError::Spec(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "fabric routes refused: route 198.18.0.64/26 is wanted via two gateways: 198.19.0.2 and 198.19.0.3"
    );
    assert_eq!(fabric_routes(n1), with_extra);

    // The extra route goes when no longer wanted.
    assert_eq!(
        fabric_ensure(n1, &specs[0]).unwrap(),
        vec![FabricAction::Delete(reconcilers::fabric::ObservedRoute {
            dst: net("198.18.10.0/26"),
            via: ip("198.19.0.2"),
            metric: 0,
        })]
    );

    // Deleting a route someone else already deleted is not an error.
    let plan = fabric_dry_run(n1, &FabricSpec::default());
    assert_eq!(plan.len(), 6);
    n1.ns.ip(&["route", "del", "198.18.0.5/32"]);
    n1.ns.ip(&["-6", "route", "del", "2001:db8:1::5/128"]);
    let applied = in_ns(&n1.ns, async || {
        FabricDataplane::new().unwrap().apply(&plan).await.unwrap()
    });
    assert_eq!(applied, plan);
    assert_eq!(fabric_routes(n1), Vec::<String>::new());
    assert_eq!(all_routes(n1), before, "only the fabric routes went");

    // remove_all on the other nodes: only the fabric routes go.
    for (n, spec) in [(n2, &specs[1]), (n3, &specs[2])] {
        let before = all_routes(n);
        let removed = fabric_remove_all(n);
        assert_eq!(removed.len(), spec.routes.len(), "{removed:?}");
        assert!(removed.iter().all(|a| matches!(a, FabricAction::Delete(_))));
        assert_eq!(fabric_routes(n), Vec::<String>::new());
        let after = all_routes(n);
        assert_eq!(
            without(&before, &after).len(),
            spec.routes.len(),
            "exactly the fabric routes went"
        );
        assert!(without(&after, &before).is_empty());
        assert_eq!(fabric_remove_all(n), vec![], "nothing left to remove");
    }
    // The endpoint routes and the foreign routes are all still there.
    let left = all_routes(n1);
    for r in [
        "198.18.200.0/24 via 198.19.0.2 dev eth0 proto static",
        "2001:db8:1::c800/120 via 2001:db8:f::2 dev eth0 proto static",
        "198.18.0.9/32 dev eth0 proto 81",
        "198.18.0.1/32 dev cali* proto 81",
        "2001:db8:1::1/128 dev cali* proto 81",
    ] {
        assert!(left.iter().any(|l| l == r), "{r} missing from {left:?}");
    }
    assert!(!ping(&a1, IpAddr::V4(addr4[1])), "no route any more");
}

#[test]
fn a_namespace_list_is_left_as_found() {
    if !require_root() {
        return;
    }
    let list = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("cmt-fablea"))
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let before = list();
    {
        let f = Fabric::new("fableak", 2);
        assert_eq!(list().len(), before.len() + 3);
        assert!(ping(&f.node(1).ns, IpAddr::V4(f.node(2).v4)));
        assert!(ping(&f.node(1).ns, IpAddr::V6(f.node(2).v6)));
    }
    assert_eq!(list(), before);
}
