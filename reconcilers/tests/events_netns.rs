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
    // The runtime is built outside the node namespace: tokio's first IO
    // runtime makes a process-wide socket pair that would pin it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
                e.nsid == Some(na)
                    && matches!(
                        e.kind,
                        KernelEvent::Link {
                            ref name,
                            deleted: false,
                            ..
                        } if name == "eth0"
                    )
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
