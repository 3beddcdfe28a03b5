//! The policy reconciler against the real kernel, inside test namespaces
//! (TESTING.md): apply and read back, real pings that follow the profile
//! matrix in both families, anti-spoofing, drift repaired after nft events
//! from someone else, membership changes as element updates, endpoints
//! sharing their profile list's chains, the memo of a short-lived process
//! trusted only at the generation it was written at, and a timing printout
//! at 1,000 endpoints.

use reconcilers::endpoint::{host_ifname, EndpointDataplane, EndpointSpec};
use reconcilers::policy::{
    ep_in_chain, ep_out_chain, parse_listing, plan, profile_list_id, render, to_nft,
    EndpointPolicy, LibNft, Members, Memo, NftBackend, NftBackendKind, NftEvent, NftEvents,
    NftOptions, PolicyAction, PolicyDataplane, PolicySpec, ProfileRules, Rule, SpecChange,
    FROM_ENDPOINT, FROM_LIST, LIBNFTABLES, NFT_TIMEOUT, TABLE, TO_LIST,
};
use reconcilers::NetnsRef;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};
use testsupport::{ping, ping_from, require_root, run_ok, Container, Exec, Node};

/// A node namespace, a runtime made outside it (tokio's first IO runtime
/// makes a process-wide socket pair, which would otherwise pin the node
/// namespace) and a policy dataplane bound to the node. Fields drop in
/// order: the dataplane's namespace handle first, the node last.
struct Harness {
    dp: PolicyDataplane,
    rt: tokio::runtime::Runtime,
    node: Node,
}

impl Harness {
    /// With the default backend (libnftables, which CI has).
    fn new(tag: &str, x: u8) -> Harness {
        Harness::with(tag, x, Backend::Library)
    }

    fn with(tag: &str, x: u8, backend: Backend) -> Harness {
        let node = Node::new(tag, x);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dp = node
            .ns
            .run(|| PolicyDataplane::with_backend(backend.open()));
        assert_eq!(dp.backend_kind(), backend.kind());
        Harness { dp, rt, node }
    }

    /// Runs `f` on a thread inside the node namespace.
    fn block<R: Send>(&self, f: impl AsyncFnOnce(&PolicyDataplane) -> R + Send) -> R {
        let (rt, dp) = (&self.rt, &self.dp);
        self.node.ns.run(move || rt.block_on(f(dp)))
    }

    fn ensure(&self, spec: &PolicySpec) -> Vec<PolicyAction> {
        self.block(async |dp| dp.ensure(spec, false).await.unwrap())
    }

    /// The kernel's table equals what `spec` renders to, read fresh.
    fn assert_kernel_is(&self, spec: &PolicySpec) {
        let observed = self.block(async |dp| dp.observe().await.unwrap());
        assert_eq!(observed, Some(render(spec).unwrap()));
    }

    /// `nft <args>` in the node namespace (the test's own change).
    fn nft(&self, args: &[&str]) -> String {
        let mut cmd = self.node.ns.command("nft");
        cmd.args(args);
        run_ok(&mut cmd).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Which nftables backend a test uses.
#[derive(Clone, Copy, Debug)]
enum Backend {
    /// libnftables; it must load (the nftables package brings it).
    Library,
    /// An `nft` process per call.
    Process,
}

impl Backend {
    /// Opens it in the calling thread's namespace.
    fn open(self) -> NftBackend {
        match self {
            Backend::Library => NftBackend::Library(
                LibNft::open(LIBNFTABLES, NFT_TIMEOUT)
                    .unwrap_or_else(|e| panic!("{e}: is libnftables1 installed?")),
            ),
            Backend::Process => NftBackend::open(&NftOptions::process("nft")),
        }
    }

    fn kind(self) -> NftBackendKind {
        match self {
            Backend::Library => NftBackendKind::Library,
            Backend::Process => NftBackendKind::Process,
        }
    }
}

/// One test container with its endpoint made by the endpoint reconciler.
struct Ep {
    c: Container,
    ifname: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Ep {
    fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// Makes containers 1..=n (addresses 198.18.0.x, 2001:db8:1::x) with real
/// veths.
fn endpoints(h: &Harness, n: u8) -> Vec<Ep> {
    let eps: Vec<Ep> = (1..=n)
        .map(|x| Ep {
            c: Container::new(&h.node.ns),
            ifname: host_ifname(&format!("policy-{x}")),
            v4: Ipv4Addr::new(198, 18, 0, x),
            v6: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, x as u16),
        })
        .collect();
    let specs: Vec<EndpointSpec> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| EndpointSpec {
            container_id: format!("policy-{}", i + 1),
            netns: NetnsRef {
                pid: e.c.pid(),
                inode: e.c.inode(),
            },
            ipv4: vec![e.v4],
            ipv6: vec![e.v6],
        })
        .collect();
    let rt = &h.rt;
    h.node.ns.run(move || {
        rt.block_on(async {
            let edp = EndpointDataplane::new().unwrap();
            for s in &specs {
                edp.ensure(s, false).await.unwrap();
            }
        })
    });
    eps
}

/// Profiles as the store makes them: the host profile of this node,
/// `public`, and one per netgroup.
fn profiles(node: &Node, netgroups: &[&str]) -> BTreeMap<String, ProfileRules> {
    let node_rules = vec![
        Rule::Cidr(format!("{}/32", node.v4).parse().unwrap()),
        Rule::Cidr(format!("{}/128", node.v6).parse().unwrap()),
    ];
    let mut p = BTreeMap::new();
    p.insert(
        "host:node1".to_string(),
        ProfileRules {
            inbound: node_rules.clone(),
            outbound: node_rules,
        },
    );
    p.insert(
        "public".to_string(),
        ProfileRules {
            inbound: vec![Rule::All],
            outbound: vec![Rule::All],
        },
    );
    for n in netgroups {
        p.insert(
            n.to_string(),
            ProfileRules {
                inbound: vec![Rule::Netgroup(n.to_string())],
                outbound: vec![Rule::All],
            },
        );
    }
    p
}

/// The spec for `eps[i]` in `groups[i]` ("public" selects the profile).
fn spec(node: &Node, eps: &[&Ep], groups: &[&[&str]]) -> PolicySpec {
    let mut s = PolicySpec {
        profiles: profiles(node, &["a", "b"]),
        ..Default::default()
    };
    for (e, gs) in eps.iter().zip(groups) {
        let mut prof = vec!["host:node1".to_string()];
        for g in *gs {
            prof.push(g.to_string());
            if *g != "public" {
                let m = s.netgroups.entry(g.to_string()).or_default();
                m.ipv4.insert(e.v4);
                m.ipv6.insert(e.v6);
            }
        }
        s.endpoints.insert(
            e.ifname.clone(),
            EndpointPolicy {
                ipv4: vec![e.v4],
                ipv6: vec![e.v6],
                profiles: prof,
            },
        );
    }
    s
}

/// Pings every (from, to, family) concurrently (each bounded by -W1) and
/// returns the outcomes in order.
fn pings<F: Exec + Sync>(cases: &[(&F, IpAddr)]) -> Vec<bool> {
    std::thread::scope(|s| {
        let hs: Vec<_> = cases
            .iter()
            .map(|(from, to)| s.spawn(move || ping(*from, *to)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Checks every ordered pair of containers in both families against
/// `allowed(from, to)`.
fn check_matrix(eps: &[Ep], allowed: impl Fn(usize, usize) -> bool, what: &str) {
    let mut cases = vec![];
    let mut expect = vec![];
    for (i, a) in eps.iter().enumerate() {
        for (j, b) in eps.iter().enumerate() {
            if i == j {
                continue;
            }
            for v6 in [false, true] {
                cases.push((&a.c, b.addr(v6)));
                expect.push((i + 1, j + 1, v6, allowed(i, j)));
            }
        }
    }
    let got = pings(&cases);
    let wrong: Vec<String> = expect
        .iter()
        .zip(&got)
        .filter(|((.., want), got)| want != *got)
        .map(|((i, j, v6, want), _)| {
            format!(
                "{i}->{j} {}: expected {}",
                if *v6 { "v6" } else { "v4" },
                if *want { "reply" } else { "none" }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{what}: {wrong:?}");
}

#[test]
fn applies_reads_back_and_pings_follow_the_profiles() {
    if !require_root() {
        return;
    }
    let h = Harness::new("polmatrix", 1);
    // 1, 2 in netgroup a; 3 in b; 4 public; 5 has a veth but no policy yet.
    let eps = endpoints(&h, 5);
    let groups: [&[&str]; 4] = [&["a"], &["a"], &["b"], &["public"]];
    let with_policy: Vec<&Ep> = eps[..4].iter().collect();
    let s = spec(&h.node, &with_policy, &groups);

    // Without our table every pair talks: a failure later is the policy's.
    check_matrix(&eps, |_, _| true, "no policy yet");

    let first = h.ensure(&s);
    assert_eq!(first[0], PolicyAction::CreateTable);
    h.assert_kernel_is(&s);
    assert!(h.ensure(&s).is_empty(), "second ensure (cached)");
    h.dp.forget();
    assert!(
        h.ensure(&s).is_empty(),
        "second ensure (read from the kernel)"
    );
    let dry = h.block(async |dp| dp.ensure(&s, true).await.unwrap());
    assert!(dry.is_empty());

    let in_group = |i: usize, g: &str| i < 4 && groups[i].contains(&g);
    check_matrix(
        &eps,
        |from, to| {
            // Outbound is open for netgroup and public profiles; what
            // decides is the destination's inbound rules. Endpoint 5 has
            // no policy: everything to and from it is dropped.
            from != 4
                && to != 4
                && (in_group(to, "public")
                    || groups[to]
                        .iter()
                        .any(|g| *g != "public" && in_group(from, g)))
        },
        "with policy",
    );

    // The node reaches every endpoint with policy (host profile), and
    // they reach it; endpoint 5 is cut off both ways.
    let mut node_cases = vec![];
    for e in &eps {
        for v6 in [false, true] {
            node_cases.push((&h.node.ns, e.addr(v6)));
        }
    }
    let got = pings(&node_cases);
    let want: Vec<bool> = (0..10).map(|i| i < 8).collect();
    assert_eq!(got, want, "node -> endpoints");
    let node4 = IpAddr::V4(h.node.v4);
    let node6 = IpAddr::V6(h.node.v6);
    let back: Vec<(&Container, IpAddr)> = eps
        .iter()
        .flat_map(|e| [(&e.c, node4), (&e.c, node6)])
        .collect();
    assert_eq!(pings(&back), want, "endpoints -> node");

    // 1 and 2 share the chains of [host:node1, a]: 1 going is element
    // and entry deletions only, and 2 keeps its policy.
    let mut without_1 = s.clone();
    without_1.endpoints.remove(&eps[0].ifname);
    for m in without_1.netgroups.values_mut() {
        m.ipv4.remove(&eps[0].v4);
        m.ipv6.remove(&eps[0].v6);
    }
    let actions = h.ensure(&without_1);
    assert!(
        actions.iter().all(|a| matches!(
            a,
            PolicyAction::DeleteMapEntries { .. } | PolicyAction::DeleteElements { .. }
        )),
        "{actions:?}"
    );
    h.assert_kernel_is(&without_1);
    let got = pings(&[
        (&h.node.ns, eps[1].addr(false)),
        (&h.node.ns, eps[1].addr(true)),
        (&h.node.ns, eps[0].addr(false)),
        (&h.node.ns, eps[0].addr(true)),
    ]);
    assert_eq!(got, [true, true, false, false], "node -> 2, 1 after 1 went");
    assert!(!ping(&eps[2].c, eps[1].addr(false)), "b still not in a");

    // Removing the table opens everything again; removing twice is fine.
    assert!(h.block(async |dp| dp.remove().await.unwrap()));
    assert!(!h.block(async |dp| dp.remove().await.unwrap()));
    assert_eq!(h.block(async |dp| dp.observe().await.unwrap()), None);
    assert!(ping(&eps[2].c, eps[0].addr(false)));
}

#[test]
fn an_endpoint_sends_only_from_its_own_addresses() {
    if !require_root() {
        return;
    }
    let h = Harness::new("polspoof", 2);
    let eps = endpoints(&h, 1);
    let a = &eps[0];
    let mut s = spec(&h.node, &[a], &[&["public"]]);
    h.ensure(&s);

    // A foreign address in the test range on the container's eth0, and a
    // way back to it from the node, so only policy can stop the reply.
    let spoof4 = Ipv4Addr::new(198, 18, 99, 1);
    let spoof6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x99);
    a.c.exec_ok(&["ip", "addr", "add", &format!("{spoof4}/32"), "dev", "eth0"]);
    a.c.exec_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{spoof6}/128"),
        "dev",
        "eth0",
        "nodad",
    ]);
    h.node
        .ns
        .ip(&["route", "add", &format!("{spoof4}/32"), "dev", &a.ifname]);
    h.node
        .ns
        .ip(&["route", "add", &format!("{spoof6}/128"), "dev", &a.ifname]);
    // (the host side has no IPv6 address to solicit from: the endpoint
    // reconciler writes a permanent neighbour per address, so does the test)
    let eth0 = a.c.exec_ok(&["ip", "-br", "link", "show", "dev", "eth0"]);
    let eth0_mac = eth0.split_whitespace().nth(2).expect("eth0's MAC");
    h.node.ns.ip(&[
        "-6",
        "neigh",
        "replace",
        &spoof6.to_string(),
        "lladdr",
        eth0_mac,
        "dev",
        &a.ifname,
        "nud",
        "permanent",
    ]);
    let node4 = IpAddr::V4(h.node.v4);
    let node6 = IpAddr::V6(h.node.v6);
    // (the source is forced: with two addresses the kernel may pick either)
    assert!(
        ping_from(&a.c, a.addr(false), node4),
        "its own address passes"
    );
    assert!(
        ping_from(&a.c, a.addr(true), node6),
        "its own address passes (v6)"
    );
    assert!(
        !ping_from(&a.c, IpAddr::V4(spoof4), node4),
        "spoofed v4 dropped"
    );
    assert!(
        !ping_from(&a.c, IpAddr::V6(spoof6), node6),
        "spoofed v6 dropped"
    );

    // The same packets pass once the address is the endpoint's: the drop
    // above was anti-spoofing, nothing else.
    let ep = s.endpoints.get_mut(&a.ifname).unwrap();
    ep.ipv4.push(spoof4);
    ep.ipv6.push(spoof6);
    let actions = h.ensure(&s);
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, PolicyAction::AddElements { .. })),
        "{actions:?}"
    );
    assert!(ping_from(&a.c, IpAddr::V4(spoof4), node4));
    assert!(ping_from(&a.c, IpAddr::V6(spoof6), node6));
}

/// Waits (bounded) for a commit event that `pick` accepts; returns its pid.
async fn wait_commit(events: &mut NftEvents, pick: impl Fn(u32) -> bool) -> u32 {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.next().await {
                Some(NftEvent::Committed { pid: Some(p), .. }) if pick(p) => return p,
                Some(_) => continue,
                None => panic!("event socket closed"),
            }
        }
    })
    .await
    .expect("a commit event within 5 s")
}

#[test]
fn drift_is_seen_as_someone_elses_commit_and_repaired() {
    if require_root() {
        drift(Harness::with("poldrift", 3, Backend::Library));
    }
}

#[test]
fn drift_is_seen_and_repaired_with_nft_processes_too() {
    if require_root() {
        drift(Harness::with("poldriftp", 7, Backend::Process));
    }
}

fn drift(h: Harness) {
    let eps = endpoints(&h, 2);
    let (x, y) = (&eps[0], &eps[1]);
    let s = spec(&h.node, &[x, y], &[&["a"], &["b"]]);
    let rt = &h.rt;
    let dp = &h.dp;
    let sref = &s;
    // One block: the event subscription lives in this runtime and thread.
    let foreign = h.node.ns.run(move || {
        rt.block_on(async move {
            let mut events = NftEvents::new().unwrap();
            dp.ensure(sref, false).await.unwrap();
            let ours = wait_commit(&mut events, |p| dp.spawned_by_us(p)).await;

            // Someone else deletes our table (this thread is in the node
            // namespace, so the child is too).
            let child = std::process::Command::new("nft")
                .args(["delete", "table", "inet", "calico-mesos"])
                .spawn()
                .unwrap();
            let theirs = child.id();
            assert!(child.wait_with_output().unwrap().status.success());
            let seen = wait_commit(&mut events, |p| p == theirs).await;
            assert!(!dp.spawned_by_us(seen));
            assert_ne!(seen, ours);
            seen
        })
    });
    assert!(!h.dp.spawned_by_us(foreign));
    assert!(ping(&y.c, x.addr(false)), "table gone: all open");

    // Without forget() the cache is trusted; with it the kernel is read.
    assert!(h.ensure(&s).is_empty(), "cache believes the table exists");
    h.dp.forget();
    let repaired = h.ensure(&s);
    assert_eq!(repaired[0], PolicyAction::CreateTable);
    h.assert_kernel_is(&s);
    assert!(!ping(&y.c, x.addr(false)), "policy back");
    assert!(ping(&h.node.ns, x.addr(true)));

    // Deleted again, and this time a change comes before any forget():
    // the incremental transaction fails on the missing set, so ensure
    // reads the kernel, plans again (a full create) and applies that.
    h.nft(&["delete", "table", "inet", "calico-mesos"]);
    let mut s2 = s.clone();
    s2.netgroups
        .get_mut("a")
        .unwrap()
        .ipv4
        .insert(Ipv4Addr::new(198, 18, 1, 1));
    let retried = h.ensure(&s2);
    assert_eq!(retried[0], PolicyAction::CreateTable, "{retried:?}");
    h.assert_kernel_is(&s2);
    assert!(h.ensure(&s).len() == 1, "back to s: one element out");

    // A member deleted from a netgroup set: one element comes back.
    h.nft(&[
        "delete",
        "element",
        "inet",
        "calico-mesos",
        "ng.a.v4",
        &format!("{{ {} }}", x.v4),
    ]);
    h.dp.forget();
    let actions = h.ensure(&s);
    assert_eq!(
        actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        ["add 1 element to set ng.a.v4"]
    );

    // A rule slipped into an endpoint chain: that chain is rewritten.
    let chain = ep_in_chain(&profile_list_id(&s.endpoints[&x.ifname].profiles));
    h.nft(&["insert", "rule", "inet", "calico-mesos", &chain, "accept"]);
    assert!(ping(&y.c, x.addr(false)), "the inserted rule opened x");
    h.dp.forget();
    let actions = h.ensure(&s);
    assert!(
        matches!(actions.as_slice(), [PolicyAction::ReplaceChain { name, .. }] if *name == chain),
        "{actions:?}"
    );
    h.assert_kernel_is(&s);
    assert!(!ping(&y.c, x.addr(false)));
}

#[test]
fn joining_a_netgroup_is_element_updates_and_opens_its_members() {
    if !require_root() {
        return;
    }
    let h = Harness::new("polmember", 4);
    let eps = endpoints(&h, 2);
    let (x, y) = (&eps[0], &eps[1]);
    let mut s = spec(&h.node, &[x, y], &[&["a"], &["b"]]);
    h.ensure(&s);
    assert!(!ping(&y.c, x.addr(false)));
    assert!(!ping(&y.c, x.addr(true)));

    // y becomes a member of a: its addresses join a's sets, nothing else.
    let m: &mut Members = s.netgroups.get_mut("a").unwrap();
    m.ipv4.insert(y.v4);
    m.ipv6.insert(y.v6);
    let dry = h.block(async |dp| dp.ensure(&s, true).await.unwrap());
    assert_eq!(dry.len(), 2, "{dry:?}");
    assert!(!ping(&y.c, x.addr(false)), "a dry run changes nothing");
    let actions = h.ensure(&s);
    assert_eq!(actions, dry);
    assert_eq!(
        actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        [
            "add 1 element to set ng.a.v4",
            "add 1 element to set ng.a.v6"
        ]
    );
    assert!(ping(&y.c, x.addr(false)), "y reaches a's members");
    assert!(ping(&y.c, x.addr(true)));
    // x -> y still needs y's own rules to accept a: its profile. y's list
    // becomes [host, b, a], new on this node: its chains and interface set
    // are made, the dispatch chains get its rule, and [host, b]'s chains
    // and set, now unused, go.
    assert!(!ping(&x.c, y.addr(false)));
    let old = profile_list_id(&s.endpoints[&y.ifname].profiles);
    s.endpoints
        .get_mut(&y.ifname)
        .unwrap()
        .profiles
        .push("a".into());
    let new = profile_list_id(&s.endpoints[&y.ifname].profiles);
    let actions = h.ensure(&s);
    assert!(
        actions.iter().all(|a| match a {
            PolicyAction::ReplaceChain { name, .. } => name == FROM_LIST || name == TO_LIST,
            _ => true,
        }),
        "{actions:?}"
    );
    assert!(
        actions.contains(&PolicyAction::DeleteChains {
            names: vec![ep_in_chain(&old), ep_out_chain(&old)]
        }),
        "{actions:?}"
    );
    let observed = h.block(async |dp| dp.observe().await.unwrap()).unwrap();
    assert_eq!(observed.list_of(&y.ifname), Some(new.as_str()));
    assert!(observed.chains.contains_key(&ep_in_chain(&new)));
    assert!(!observed.chains.contains_key(&ep_out_chain(&old)));
    assert!(observed.maps.is_empty());
    assert!(ping(&x.c, y.addr(false)));
    assert!(ping(&x.c, y.addr(true)));
}

/// A node-sized spec: `n` endpoints (veths are not needed for nft) in
/// `groups` netgroups, each in one or two of them.
fn big_spec(node: &Node, n: u32, groups: u32) -> PolicySpec {
    let names: Vec<String> = (0..groups).map(|g| format!("ng{g}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut s = PolicySpec {
        profiles: profiles(node, &refs),
        ..Default::default()
    };
    for i in 0..n {
        let v4 = Ipv4Addr::new(198, 18, (i / 250) as u8 + 10, (i % 250) as u8 + 1);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 1, i as u16);
        let mut prof = vec!["host:node1".to_string()];
        for g in [i % groups, (i * 7 + 3) % groups] {
            let name = format!("ng{g}");
            if prof.contains(&name) {
                continue;
            }
            prof.push(name.clone());
            let m = s.netgroups.entry(name).or_default();
            m.ipv4.insert(v4);
            m.ipv6.insert(v6);
        }
        s.endpoints.insert(
            host_ifname(&format!("big-{i}")),
            EndpointPolicy {
                ipv4: vec![v4],
                ipv6: vec![v6],
                profiles: prof,
            },
        );
    }
    s
}

/// Adds endpoint `name` with `profiles` and fresh addresses (made from
/// `x`), and makes it a member of the netgroups it names.
fn add_big_endpoint(s: &mut PolicySpec, name: &str, x: u8, profiles: Vec<String>) {
    let v4 = Ipv4Addr::new(198, 18, 9, x);
    let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 9, x as u16);
    for p in &profiles {
        if let Some(m) = s.netgroups.get_mut(p) {
            m.ipv4.insert(v4);
            m.ipv6.insert(v6);
        }
    }
    s.endpoints.insert(
        host_ifname(name),
        EndpointPolicy {
            ipv4: vec![v4],
            ipv6: vec![v6],
            profiles,
        },
    );
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[runs / 2]
}

#[test]
fn timing_at_a_thousand_endpoints() {
    if !require_root() {
        return;
    }
    const AT: &str = "policy timing, 1,000 endpoints / 100 netgroups";
    let h = Harness::new("poltime", 5);
    let s = big_spec(&h.node, 1000, 100);
    // Subscribed during the full create: one notification per object.
    let (full, events) = {
        let rt = &h.rt;
        let dp = &h.dp;
        let sref = &s;
        h.node.ns.run(move || {
            rt.block_on(async move {
                let mut events = NftEvents::new().unwrap();
                let t = Instant::now();
                let full = dp.ensure(sref, false).await.unwrap();
                println!(
                    "{AT}: full create: {} actions in {:?}",
                    full.len(),
                    t.elapsed()
                );
                let mut seen = vec![];
                while let Ok(Some(e)) =
                    tokio::time::timeout(Duration::from_millis(200), events.next()).await
                {
                    seen.push(e);
                }
                (full, seen)
            })
        })
    };
    println!("policy timing: events seen during the full create: {events:?}");
    assert!(full.len() > 400, "{}", full.len());
    let rs = render(&s).unwrap();
    let doc = serde_json::to_vec(&to_nft(&full)).unwrap();
    let lists: std::collections::BTreeSet<&Vec<String>> =
        s.endpoints.values().map(|e| &e.profiles).collect();
    println!(
        "policy timing: table has {} chains ({} profile lists), {} rules, {} elements; the full create is {} KiB of JSON",
        rs.chains.len(),
        lists.len(),
        rs.rule_count(),
        rs.element_count(),
        doc.len() / 1024
    );
    // Base (3), endpoint (2) and dispatch (2) chains, and two per list.
    assert_eq!(rs.chains.len(), 7 + 2 * lists.len());

    // The in-process part, alone (medians of 21 runs).
    let rendered = median(21, || drop(render(&s).unwrap()));
    let planned = median(21, || assert!(plan(&rs, Some(&rs)).is_empty()));
    println!(
        "policy timing: render alone: {rendered:?}; plan alone (nothing changed): {planned:?}"
    );

    let t = Instant::now();
    let observed = h.block(async |dp| dp.observe().await.unwrap());
    println!("policy timing: observe (list + parse): {:?}", t.elapsed());
    let t = Instant::now();
    let listing = h.nft(&["-j", "list", "table", "inet", "calico-mesos"]);
    println!(
        "policy timing: of which nft -j list alone: {:?} ({} KiB)",
        t.elapsed(),
        listing.len() / 1024
    );
    let parsed = median(5, || drop(parse_listing(&listing).unwrap()));
    println!("policy timing: of which parse alone: {parsed:?}");
    assert_eq!(observed, Some(rs));

    // Each change below is made and undone RUNS times; medians are printed,
    // with the in-process part (render + plan) of making it. The rest is
    // the nft process: ~3 ms to start it and fill its cache on an empty
    // table here, more as our table grows. A transaction that deletes
    // anything costs one RCU grace period more (~10-15 ms here, whatever the
    // table's size): the kernel frees deleted objects after one, and waits
    // for that when nft closes its netlink socket on exit.
    const RUNS: usize = 7;
    let timed = |s: &PolicySpec| {
        let t = Instant::now();
        let actions = h.ensure(s);
        (t.elapsed(), actions)
    };
    let unchanged = median(RUNS, || assert!(h.ensure(&s).is_empty()));
    println!("{AT}: unchanged (cached): median {unchanged:?}");
    let forgotten = median(3, || {
        h.dp.forget();
        assert!(h.ensure(&s).is_empty());
    });
    println!("{AT}: unchanged (read from the kernel): median {forgotten:?}");

    let cycle = |what: &str, undo: &str, s: &PolicySpec, changed: &PolicySpec| {
        let before = render(s).unwrap();
        let in_process = median(RUNS, || {
            drop(plan(&render(changed).unwrap(), Some(&before)))
        });
        let (mut there, mut back) = (vec![], vec![]);
        let mut first = None;
        for _ in 0..RUNS {
            let (t, actions) = timed(changed);
            there.push(t);
            let (u, undone) = timed(s);
            back.push(u);
            first.get_or_insert((actions, undone));
        }
        there.sort();
        back.sort();
        let (actions, undone) = first.unwrap();
        println!(
            "{AT}: {what}: {} actions, median {:?} (render + plan {in_process:?}); {undo}: {} actions, median {:?}",
            actions.len(),
            there[RUNS / 2],
            undone.len(),
            back[RUNS / 2]
        );
        (actions, undone)
    };

    // A new endpoint with a profile list the node has (big-5's): elements
    // and map entries, no chain; and taking it out again.
    let mut with = s.clone();
    let existing = s.endpoints[&host_ifname("big-5")].profiles.clone();
    add_big_endpoint(&mut with, "big-new", 1, existing);
    let (added, removed) = cycle(
        "one endpoint added (its profile list exists)",
        "removed (its profile list stays)",
        &s,
        &with,
    );
    assert!(
        added.iter().all(|a| matches!(
            a,
            PolicyAction::AddElements { .. } | PolicyAction::AddMapEntries { .. }
        )),
        "{added:?}"
    );
    assert!(added.len() <= 8, "{added:?}");
    assert!(
        removed.iter().all(|a| matches!(
            a,
            PolicyAction::DeleteElements { .. } | PolicyAction::DeleteMapEntries { .. }
        )),
        "{removed:?}"
    );

    let mut joined = s.clone();
    joined
        .netgroups
        .get_mut("ng7")
        .unwrap()
        .ipv4
        .insert(Ipv4Addr::new(198, 18, 200, 1));
    let (member, left) = cycle("one remote member joins a netgroup", "leaves", &s, &joined);
    assert_eq!((member.len(), left.len()), (1, 1));

    // A profile list the node does not have yet: its two chains come and go.
    let mut lone = s.clone();
    add_big_endpoint(
        &mut lone,
        "big-lone",
        2,
        vec!["host:node1".into(), "ng5".into()],
    );
    let (came, gone) = cycle(
        "one endpoint added (a new profile list)",
        "removed (its profile list goes)",
        &s,
        &lone,
    );
    // Its set, chains, elements, and the two dispatch chains rewritten.
    assert!(came.len() <= 12, "{came:?}");
    assert!(
        gone.iter()
            .any(|a| matches!(a, PolicyAction::DeleteChains { names } if names.len() == 2)),
        "{gone:?}"
    );
    h.assert_kernel_is(&s);
}

#[test]
fn nft_runs_in_the_namespace_the_dataplane_was_made_in() {
    if !require_root() {
        return;
    }
    let h = Harness::new("polwhere", 6);
    let s = spec(&h.node, &[], &[]);
    // Called from a thread in another (test) namespace, the gateway's: the
    // nft children must still run in the node's.
    let (rt, dp, sref) = (&h.rt, &h.dp, &s);
    let actions = h
        .node
        .gateway
        .run(move || rt.block_on(async move { dp.ensure(sref, false).await.unwrap() }));
    assert_eq!(actions[0], PolicyAction::CreateTable);
    let tables = |ns: &testsupport::Netns| {
        let mut cmd = ns.command("nft");
        cmd.args(["list", "tables"]);
        run_ok(&mut cmd).unwrap()
    };
    assert!(tables(&h.node.ns).contains("table inet calico-mesos"));
    assert!(!tables(&h.node.gateway).contains("calico-mesos"));
    h.assert_kernel_is(&s);
}

/// `v` without its `"handle"` members (numbers the kernel hands out, which
/// differ between two tables built alike at different times).
fn without_handles(mut v: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

#[test]
fn both_backends_apply_the_same_ensures_and_read_back_identical_tables() {
    if !require_root() {
        return;
    }
    // Two dataplanes on one node: libnftables and nft processes.
    let h = Harness::with("polboth", 8, Backend::Process);
    let lib = h
        .node
        .ns
        .run(|| PolicyDataplane::with_backend(Backend::Library.open()));
    let ensure_on = |dp: &PolicyDataplane, s: &PolicySpec| -> Vec<PolicyAction> {
        let rt = &h.rt;
        h.node
            .ns
            .run(move || rt.block_on(async move { dp.ensure(s, false).await.unwrap() }))
    };
    // The raw listing through each backend, of one and the same kernel state.
    let listings = || -> (String, String) {
        let (rt, pdp, ldp) = (&h.rt, &h.dp, &lib);
        h.node.ns.run(move || {
            rt.block_on(async move {
                (
                    pdp.backend().list_table().await.unwrap().unwrap(),
                    ldp.backend().list_table().await.unwrap().unwrap(),
                )
            })
        })
    };
    let s = big_spec(&h.node, 40, 6);
    let mut s2 = s.clone();
    add_big_endpoint(
        &mut s2,
        "both-new",
        1,
        vec!["host:node1".into(), "ng2".into()],
    );
    let mut s3 = s2.clone();
    s3.endpoints.remove(&host_ifname("big-3"));

    // The same ensures through nft processes, then (on a fresh table)
    // through libnftables.
    let mut seen = vec![];
    for dp in [&h.dp, &lib] {
        dp.forget();
        let actions: Vec<Vec<PolicyAction>> =
            [&s, &s2, &s3].iter().map(|x| ensure_on(dp, x)).collect();
        assert_eq!(actions[0][0], PolicyAction::CreateTable);
        assert!(!actions[1].is_empty() && !actions[2].is_empty());
        let (by_process, by_library) = listings();
        assert_eq!(by_process, by_library, "one kernel state, two listings");
        assert_eq!(
            parse_listing(&by_library).unwrap(),
            render(&s3).unwrap(),
            "{:?} left what s3 renders to",
            dp.backend_kind()
        );
        seen.push((actions, by_library));
        let rt = &h.rt;
        assert!(h.node.ns.run(move || rt.block_on(dp.remove()).unwrap()));
    }
    let (proc_actions, proc_listing) = &seen[0];
    let (lib_actions, lib_listing) = &seen[1];
    assert_eq!(proc_actions, lib_actions, "the same plans");
    let json = |t: &str| without_handles(serde_json::from_str(t).unwrap());
    assert_eq!(json(proc_listing), json(lib_listing), "identical tables");
    // Both see the table gone, and removing it again is no error.
    for dp in [&h.dp, &lib] {
        let rt = &h.rt;
        assert_eq!(
            h.node.ns.run(move || rt.block_on(dp.observe()).unwrap()),
            None
        );
        assert!(!h.node.ns.run(move || rt.block_on(dp.remove()).unwrap()));
    }
    drop(lib);
}

#[test]
fn libnftables_sees_what_others_changed_between_its_calls() {
    if !require_root() {
        return;
    }
    for (tag, x, backend) in [
        ("polcachel", 9, Backend::Library),
        ("polcachep", 10, Backend::Process),
    ] {
        let h = Harness::with(tag, x, backend);
        let s = big_spec(&h.node, 10, 2);
        // A listing and a transaction: the context's cache now holds our
        // table, with set ng0.v4 of type ipv4_addr.
        assert_eq!(h.ensure(&s)[0], PolicyAction::CreateTable);
        h.assert_kernel_is(&s);
        // Someone else replaces the table by one whose ng0.v4 holds marks
        // (4 bytes, as an IPv4 address is): an element encoded from a stale
        // cache would be accepted by the kernel into the wrong set.
        let set = reconcilers::policy::netgroup_set("ng0", false);
        h.nft(&["delete", "table", "inet", "calico-mesos"]);
        h.nft(&["add", "table", "inet", "calico-mesos"]);
        h.nft(&["add", "set", "inet", "calico-mesos", &set, "{ type mark; }"]);
        // A change, with no forget(): the dataplane's own memory says the
        // table is `s`, so it sends one element update. libnftables must
        // see the new generation, read the set's new type and refuse the
        // address; ensure then reads the kernel and rebuilds.
        let mut s2 = s.clone();
        s2.netgroups
            .get_mut("ng0")
            .unwrap()
            .ipv4
            .insert(Ipv4Addr::new(198, 18, 1, 1));
        // (A stale cache would have let the one element update through,
        // and ensure would have returned just that.)
        let actions = h.ensure(&s2);
        assert!(
            actions.len() > 1
                && actions
                    .iter()
                    .any(|a| matches!(a, PolicyAction::CreateSet { name, .. } if *name == set)),
            "{backend:?}: {actions:?}"
        );
        h.assert_kernel_is(&s2);
        // And a foreign element add is seen by the next read.
        h.nft(&[
            "add",
            "element",
            "inet",
            "calico-mesos",
            &set,
            "{ 198.18.1.2 }",
        ]);
        h.dp.forget();
        let actions = h.ensure(&s2);
        assert_eq!(
            actions.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            [format!("delete 1 element from set {set}")],
            "{backend:?}"
        );
    }
}

/// The `NETLINK_NETFILTER` sockets of this process that live in the network
/// namespace with inode `netns`, with whether each is close-on-exec.
fn netfilter_sockets_in(netns: u64) -> Vec<bool> {
    use std::os::unix::fs::MetadataExt;
    const SIOCGSKNS: libc::c_ulong = 0x894c;
    let sockopt = |fd: libc::c_int, opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a live c_int.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    let mut out = vec![];
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        if sockopt(fd, libc::SO_DOMAIN) != Some(libc::AF_NETLINK)
            || sockopt(fd, libc::SO_PROTOCOL) != Some(libc::NETLINK_NETFILTER)
        {
            continue;
        }
        // SAFETY: SIOCGSKNS returns a new fd for the socket's namespace (or
        // fails); we own it and wrap it at once.
        let ns = unsafe { libc::ioctl(fd, SIOCGSKNS as _) };
        if ns < 0 {
            continue;
        }
        // SAFETY: `ns` is a fresh fd that nothing else owns.
        let ns = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(ns) };
        if ns.metadata().unwrap().ino() == netns {
            // SAFETY: F_GETFD only reads the fd's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            out.push(flags & libc::FD_CLOEXEC != 0);
        }
    }
    out
}

#[test]
fn the_library_context_lives_in_the_node_namespace_and_goes_with_the_dataplane() {
    if !require_root() {
        return;
    }
    let h = Harness::with("polctx", 11, Backend::Library);
    let inode = h.node.ns.inode();
    // Made from a thread in the node namespace: exactly one socket there,
    // close-on-exec (a child must not inherit it and pin the namespace).
    assert_eq!(netfilter_sockets_in(inode), [true]);
    // Used from a thread in another namespace, it still acts on the node.
    let (rt, dp) = (&h.rt, &h.dp);
    let s = big_spec(&h.node, 3, 1);
    let sref = &s;
    h.node
        .gateway
        .run(move || rt.block_on(async move { dp.ensure(sref, false).await.unwrap() }));
    h.assert_kernel_is(&s);
    assert_eq!(
        netfilter_sockets_in(h.node.gateway.inode()),
        Vec::<bool>::new()
    );
    // Dropping the dataplane frees the context: no socket keeps the node.
    let Harness { dp, rt, node } = h;
    drop(dp);
    assert_eq!(netfilter_sockets_in(inode), Vec::<bool>::new());
    drop(rt);
    drop(node);
}

#[test]
fn a_library_that_does_not_load_falls_back_to_nft_processes() {
    if !require_root() {
        return;
    }
    let node = Node::new("polfallback", 12);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = NftOptions {
        library: Some("libnftables-not-here.so.1".into()),
        ..NftOptions::default()
    };
    let dp = node
        .ns
        .run(|| PolicyDataplane::with_backend(NftBackend::open(&options)));
    assert_eq!(dp.backend_kind(), NftBackendKind::Process);
    let s = big_spec(&node, 3, 1);
    let (rtr, dpr, sref) = (&rt, &dp, &s);
    let observed = node.ns.run(move || {
        rtr.block_on(async move {
            dpr.ensure(sref, false).await.unwrap();
            dpr.observe().await.unwrap()
        })
    });
    assert_eq!(observed, Some(render(&s).unwrap()));
    assert_eq!(netfilter_sockets_in(node.ns.inode()), Vec::<bool>::new());
    drop(dp);
}

#[test]
fn updates_apply_what_changed_and_recover_from_a_refused_transaction() {
    if !require_root() {
        return;
    }
    let h = Harness::new("polupd", 13);
    let eps = endpoints(&h, 3);
    let (x, y, z) = (&eps[0], &eps[1], &eps[2]);
    let mut s = spec(&h.node, &[x, y, z], &[&["a"], &["a"], &["b"]]);
    h.ensure(&s);
    let update = |s: &mut PolicySpec, changes: Vec<SpecChange>| {
        for c in &changes {
            s.apply(c);
        }
        let actions = h.block(async |dp| dp.update(&changes).await.unwrap());
        h.assert_kernel_is(s);
        actions.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let member = |netgroup: &str, e: &Ep, present: bool| {
        [IpAddr::V4(e.v4), IpAddr::V6(e.v6)].map(|addr| SpecChange::Member {
            netgroup: netgroup.into(),
            addr,
            present,
        })
    };
    check_matrix(&eps, |i, j| i < 2 && j < 2, "x and y share a, z is alone");

    // z joins a: its addresses become a's members (two elements), so it
    // reaches x and y; they do not reach z yet (its list is [host, b]).
    let actions = update(&mut s, member("a", z, true).to_vec());
    assert_eq!(
        actions,
        [
            "add 1 element to set ng.a.v4",
            "add 1 element to set ng.a.v6"
        ]
    );
    // z's list gains a: new chains, z's map entries move to them.
    let mut moved = s.endpoints[&z.ifname].clone();
    moved.profiles.push("a".into());
    let actions = update(
        &mut s,
        vec![SpecChange::Endpoint {
            ifname: z.ifname.clone(),
            policy: Some(moved),
        }],
    );
    assert!(
        actions.iter().any(|a| a.starts_with("create chain ep-in.")),
        "{actions:?}"
    );
    check_matrix(&eps, |_, _| true, "all three in a");

    // y goes: its elements (anti-spoofing, its list's interface set,
    // members), nothing else; its interface is then dropped.
    let mut gone = vec![SpecChange::Endpoint {
        ifname: y.ifname.clone(),
        policy: None,
    }];
    gone.extend(member("a", y, false));
    let actions = update(&mut s, gone);
    assert_eq!(actions.len(), 5, "{actions:?}");
    check_matrix(&eps, |i, j| i != 1 && j != 1, "y is gone");

    // Someone else deletes one of z's elements, and no event tells us: the
    // transaction that deletes it too is refused, the table is read back
    // and planned again.
    h.nft(&[
        "delete",
        "element",
        "inet",
        "calico-mesos",
        "ng.a.v4",
        &format!("{{ {} }}", z.v4),
    ]);
    let actions = update(&mut s, member("a", z, false).to_vec());
    assert_eq!(actions, ["delete 1 element from set ng.a.v6"]);
    check_matrix(
        &eps,
        |i, j| i != 1 && j != 1 && !(i == 2 && j == 0),
        "z left a",
    );
}

/// A dataplane as a one-request process makes it: libnftables, and the
/// memo at `path`, opened in `h`'s node namespace.
fn with_memo(h: &Harness, path: &std::path::Path) -> PolicyDataplane {
    h.node
        .ns
        .run(|| PolicyDataplane::new().with_memo(Memo::open(path).unwrap()))
}

/// `dp.ensure(spec)` on a thread inside `h`'s node namespace.
fn ensure_with(h: &Harness, dp: &PolicyDataplane, spec: &PolicySpec) -> Vec<PolicyAction> {
    let rt = &h.rt;
    h.node
        .ns
        .run(move || rt.block_on(dp.ensure(spec, false)))
        .unwrap()
}

#[test]
fn a_memo_is_trusted_only_at_the_generation_it_was_written_at() {
    if !require_root() {
        return;
    }
    let h = Harness::new("polmemo", 14);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy-memo.json");
    let first = big_spec(&h.node, 6, 2);
    let mut second = first.clone();
    add_big_endpoint(&mut second, "memo-a", 1, vec!["ng0".into()]);

    // A first process applies and writes down what it applied.
    let one = with_memo(&h, &path);
    assert_eq!(ensure_with(&h, &one, &first)[0], PolicyAction::CreateTable);
    h.assert_kernel_is(&first);
    assert!(path.exists(), "no memo written");
    drop(one);

    // The next one plans against the memo: only the new endpoint.
    let two = with_memo(&h, &path);
    let actions = ensure_with(&h, &two, &second);
    assert!(
        !actions.is_empty() && !actions.contains(&PolicyAction::CreateTable),
        "{actions:?}"
    );
    h.assert_kernel_is(&second);
    drop(two);

    // A memo written at the current generation is trusted without a look
    // at the table: one that claims a third endpoint is believed.
    let mut claimed = second.clone();
    add_big_endpoint(&mut claimed, "memo-b", 2, vec!["ng1".into()]);
    h.node.ns.run(|| {
        let memo = Memo::open(&path).unwrap();
        memo.remember(&memo.stamp().unwrap(), &claimed).unwrap();
    });
    let liar = with_memo(&h, &path);
    assert_eq!(ensure_with(&h, &liar, &claimed), vec![]);
    drop(liar);
    let observed = h.block(async |dp| dp.observe().await.unwrap());
    assert_eq!(observed, Some(render(&second).unwrap()));

    // Anyone's commit moves the generation: the memo is passed over, the
    // table read, and the third endpoint really added.
    h.nft(&["add", "table", "inet", "memo-test"]);
    let three = with_memo(&h, &path);
    let actions = ensure_with(&h, &three, &claimed);
    assert!(!actions.is_empty(), "the stale memo was trusted");
    h.assert_kernel_is(&claimed);
    drop(three);
    h.nft(&["delete", "table", "inet", "memo-test"]);

    // The same holds across a commit of our own table by someone else.
    h.nft(&["flush", "chain", "inet", TABLE, FROM_ENDPOINT]);
    let four = with_memo(&h, &path);
    assert!(!ensure_with(&h, &four, &claimed).is_empty());
    h.assert_kernel_is(&claimed);
}
