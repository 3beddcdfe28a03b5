//! The node's one kernel event socket against the real kernel, inside test
//! namespaces (TESTING.md): a change inside a container arrives tagged with
//! the id the node has for that container's namespace, as `ensure` learnt
//! it, and nothing arrives tagged with another container's.

use reconcilers::endpoint::{host_ifname, EndpointDataplane};
use reconcilers::events::{Event, Events, KernelEvent};
use std::time::{Duration, Instant};
use testsupport::{require_root, Container, Node};

mod common;
use common::spec;

/// A runtime for one test, to be built outside the node namespace: tokio's
/// first IO runtime makes a process-wide socket pair that would pin it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every event that arrives within `window` (bounded by it).
async fn collect(events: &mut Events, window: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
        out.push(e);
    }
    out
}

/// Events until `wanted` matches one (bounded by `limit`): all of them.
async fn until(
    events: &mut Events,
    limit: Duration,
    wanted: impl Fn(&Event) -> bool,
) -> Result<Vec<Event>, Vec<Event>> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(e)) => {
                let hit = wanted(&e);
                seen.push(e);
                if hit {
                    return Ok(seen);
                }
            }
            _ => break,
        }
    }
    Err(seen)
}

#[test]
fn a_change_inside_a_container_arrives_on_the_node_socket_tagged_with_its_nsid() {
    if !require_root() {
        return;
    }
    let node = Node::new("evnsid", 1);
    let a = Container::new(&node.ns);
    let b = Container::new(&node.ns);
    let (sa, sb) = (spec(&a, "container-a", 1), spec(&b, "container-b", 2));
    let rt = runtime();
    let (na, nb, during, node_side) = node.ns.run(|| {
        rt.block_on(async {
            let dp = EndpointDataplane::new().unwrap();
            let na = dp.ensure(&sa, false).await.unwrap().container_nsid;
            let nb = dp.ensure(&sb, false).await.unwrap().container_nsid;
            let (na, nb) = (na.expect("A has an id"), nb.expect("B has an id"));
            // An ensure with nothing to do reads the same id again.
            let again = dp.ensure(&sa, false).await.unwrap();
            assert!(again.actions.is_empty(), "{:?}", again.actions);
            assert_eq!(again.container_nsid, Some(na));
            assert_eq!(dp.node_nsid().await.unwrap(), None, "no id for itself");

            let mut events = Events::all_namespaces().unwrap();
            // Late echoes of the ensures, if any, are not what is tested.
            collect(&mut events, Duration::from_millis(200)).await;

            // Inside A only: an address, then eth0 down.
            a.exec_ok(&["ip", "addr", "add", "198.18.0.99/32", "dev", "eth0"]);
            a.exec_ok(&["ip", "link", "set", "eth0", "down"]);
            let mut during = until(&mut events, Duration::from_secs(5), |e| {
                link_event(e, Some(na), "eth0")
            })
            .await
            .unwrap_or_else(|seen| panic!("no eth0 event tagged {na}: {seen:?}"));
            during.extend(collect(&mut events, Duration::from_millis(300)).await);

            // In the node itself: untagged.
            let ha = host_ifname("container-a");
            node.ns.ip(&[
                "route",
                "add",
                "198.18.0.200/32",
                "dev",
                &ha,
                "proto",
                "81",
            ]);
            let node_side = until(&mut events, Duration::from_secs(5), |e| {
                matches!(e.kind, KernelEvent::Route { dst, .. } if dst.to_string() == "198.18.0.200")
            })
            .await
            .unwrap_or_else(|seen| panic!("no route event from the node: {seen:?}"));
            (na, nb, during, node_side)
        })
    });
    assert_ne!(na, nb, "two namespaces, two ids");
    // The kernel agrees: the host veth's peer lives in namespace `na`.
    let link = &node
        .ns
        .ip_json(&["-d", "link", "show", &host_ifname("container-a")])[0];
    assert_eq!(link["link_netnsid"].as_i64(), Some(i64::from(na)));

    assert!(
        during
            .iter()
            .any(|e| e.nsid == Some(na)
                && matches!(e.kind, KernelEvent::Address { deleted: false, .. })),
        "the address added inside A, tagged {na}: {during:?}"
    );
    assert!(
        !during.iter().any(|e| e.nsid == Some(nb)),
        "nothing from B while only A changed: {during:?}"
    );
    let route = node_side.last().unwrap();
    assert_eq!(route.nsid, None, "the node's own event: {route:?}");
}

/// The first event that matches `wanted` (bounded by five seconds).
async fn first(events: &mut Events, wanted: impl Fn(&Event) -> bool) -> Event {
    until(events, Duration::from_secs(5), wanted)
        .await
        .unwrap_or_else(|seen| panic!("no such event: {seen:?}"))
        .pop()
        .unwrap()
}

/// A link event for `name`, tagged `nsid`.
fn link_event(e: &Event, nsid: Option<i32>, name: &str) -> bool {
    e.nsid == nsid
        && matches!(&e.kind, KernelEvent::Link { facts, deleted: false } if facts.name == name)
}

fn facts(e: &Event) -> &reconcilers::endpoint::LinkFacts {
    match &e.kind {
        KernelEvent::Link { facts, .. } => facts,
        other => panic!("not a link event: {other:?}"),
    }
}

#[test]
fn events_tell_our_own_changes_and_unchanged_links_from_drift() {
    if !require_root() {
        return;
    }
    let node = Node::new("evecho", 1);
    let a = Container::new(&node.ns);
    let sa = spec(&a, "container-a", 1);
    let host = host_ifname("container-a");
    let rt = runtime();
    node.ns.run(|| {
        rt.block_on(async {
            let dp = EndpointDataplane::new().unwrap();
            let ensured = dp.ensure(&sa, false).await.unwrap();
            let na = ensured.container_nsid;
            let verified = ensured.links.clone();
            assert_eq!(verified.host.as_ref().map(|f| f.name.as_str()), Some(host.as_str()));
            assert_eq!(verified.eth0.as_ref().map(|f| f.name.as_str()), Some("eth0"));
            let mut events = Events::all_namespaces().unwrap();
            collect(&mut events, Duration::from_millis(200)).await;

            // Our own repair: the route `ensure` puts back carries the
            // node socket's port id; the one deleted by `ip` does not.
            node.ns.ip(&["route", "del", "198.18.0.1/32", "dev", &host]);
            let deleted = first(&mut events, |e| {
                matches!(e.kind, KernelEvent::Route { deleted: true, dst, .. } if dst.to_string() == "198.18.0.1")
            })
            .await;
            assert_ne!(deleted.requester, dp.node_port_id());
            let repaired = dp.ensure(&sa, false).await.unwrap();
            assert!(!repaired.actions.is_empty());
            let added = first(&mut events, |e| {
                matches!(e.kind, KernelEvent::Route { deleted: false, dst, .. } if dst.to_string() == "198.18.0.1")
            })
            .await;
            assert_eq!(added.nsid, None);
            assert_eq!(added.requester, dp.node_port_id(), "{added:?}");

            // A change the planner does not read (the MTU): the event has
            // exactly the facts the ensure read back, on both sides.
            node.ns.ip(&["link", "set", &host, "mtu", "1400"]);
            let e = first(&mut events, |e| link_event(e, None, &host)).await;
            assert_eq!(Some(facts(&e)), verified.host.as_ref(), "host side: {e:?}");
            a.exec_ok(&["ip", "link", "set", "eth0", "mtu", "1400"]);
            let e = first(&mut events, |e| link_event(e, na, "eth0")).await;
            assert_eq!(Some(facts(&e)), verified.eth0.as_ref(), "container side: {e:?}");

            // Drift: the host side set down has other facts.
            node.ns.ip(&["link", "set", &host, "down"]);
            let e = first(&mut events, |e| link_event(e, None, &host) && !facts(e).up).await;
            assert_ne!(Some(facts(&e)), verified.host.as_ref());

            // Another process's address: its port id, not ours, and the
            // address itself.
            a.exec_ok(&["ip", "addr", "add", "198.18.0.99/32", "dev", "eth0"]);
            let e = first(&mut events, |e| {
                e.nsid == na && matches!(e.kind, KernelEvent::Address { deleted: false, .. })
            })
            .await;
            assert!(matches!(e.kind, KernelEvent::Address { address: Some(a), .. } if a.to_string() == "198.18.0.99"), "{e:?}");
            assert_ne!(e.requester, 0);
            assert_ne!(e.requester, reconcilers::events::container_port_id());

        })
    });
}

#[test]
fn our_own_changes_inside_a_container_and_the_kernels_routes_never_arrive() {
    if !require_root() {
        return;
    }
    let node = Node::new("evfilt", 1);
    let a = Container::new(&node.ns);
    let sa = spec(&a, "container-a", 1);
    let rt = runtime();
    let (na, node_port, seen) = node.ns.run(|| {
        rt.block_on(async {
            let dp = EndpointDataplane::new().unwrap();
            // Subscribed before the endpoint is made: every change of the
            // ensure (eth0 and lo up, addresses, routes, neighbours inside
            // the container; the kernel's routes that follow) happens
            // while we listen.
            let mut events = Events::all_namespaces().unwrap();
            let ensured = dp.ensure(&sa, false).await.unwrap();
            assert!(!ensured.actions.is_empty());
            let na = ensured.container_nsid.expect("A has an id");
            // Someone else's change inside A does arrive.
            a.exec_ok(&["ip", "addr", "add", "198.18.0.99/32", "dev", "eth0"]);
            let seen = until(&mut events, Duration::from_secs(5), |e| {
                e.nsid == Some(na) && matches!(e.kind, KernelEvent::Address { address: Some(a), .. } if a.to_string() == "198.18.0.99")
            })
            .await
            .unwrap_or_else(|seen| panic!("no address event tagged {na}: {seen:?}"));
            (na, dp.node_port_id(), seen)
        })
    });
    let ours = reconcilers::events::container_port_id();
    assert!(
        !seen
            .iter()
            .any(|e| e.nsid == Some(na) && e.requester == ours),
        "an echo of our own change inside the container: {seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(
            e.kind,
            KernelEvent::Route {
                protocol: libc::RTPROT_KERNEL,
                ..
            }
        )),
        "a route of the kernel's own: {seen:?}"
    );
    // The node side's echoes are the daemon's to skip: they arrive.
    assert!(
        seen.iter()
            .any(|e| e.nsid.is_none() && e.requester == node_port),
        "no echo of the node side's changes: {seen:?}"
    );
}
