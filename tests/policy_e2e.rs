//! Netgroup policy end to end, through the real binary and the daemon, in
//! test namespaces (TESTING.md): who may reach whom, computed from the
//! profiles in the store and checked with real pings over IPv4 and IPv6;
//! anti-spoofing; our nftables table repaired after it was deleted or
//! edited behind our back; and everything open again once policy is
//! disabled (which proves the denials were the policy's).

mod common;

use calico_mesos::endpoint;
use calico_mesos::policy::{profile_names, profiles, Profile};
use calico_mesos::store::{self, Store};
use common::agent::{wait_until, Agent, Launched};
use reconcilers::policy::Rule;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use testsupport::{ping, ping_from, require_root};

/// The netgroups of the matrix's containers, as the issue lists them.
const GROUPS: [&[&str]; 6] = [&["a"], &["a"], &["b"], &["a", "b"], &["public"], &[]];
/// How long a repair may take before the test gives up.
const LIMIT: Duration = Duration::from_secs(10);

fn open(agent: &Agent) -> Box<dyn Store> {
    let url = format!("sqlite://{}", agent.store.path().join("store.db").display());
    store::open(&store::StoreOptions::new(url, Duration::from_secs(5)))
        .expect("open the test store")
}

/// Who a packet comes from or goes to, as the rules see it.
struct Peer<'a> {
    addr: IpAddr,
    /// Its netgroups when it is an endpoint; `None` for the node.
    netgroups: Option<&'a [String]>,
}

fn rule_matches(rule: &Rule, peer: &Peer) -> bool {
    match rule {
        Rule::All => true,
        Rule::Netgroup(n) => peer.netgroups.is_some_and(|g| g.contains(n)),
        Rule::Cidr(net) => net.contains(&peer.addr),
    }
}

/// The expected verdict, from the profiles in the store: some profile of
/// the destination lets the source in, and (for an endpoint source) some
/// profile of the source lets it out to the destination.
fn expected(
    profiles: &BTreeMap<String, Profile>,
    src_profiles: Option<&[String]>,
    src: &Peer,
    dst_profiles: &[String],
    dst: &Peer,
) -> bool {
    let rules = |names: &[String], inbound: bool| -> Vec<Rule> {
        names
            .iter()
            .filter_map(|n| profiles.get(n))
            .flat_map(|p| {
                if inbound {
                    p.rules.inbound.clone()
                } else {
                    p.rules.outbound.clone()
                }
            })
            .collect()
    };
    let let_in = rules(dst_profiles, true)
        .iter()
        .any(|r| rule_matches(r, src));
    let let_out =
        src_profiles.is_none_or(|names| rules(names, false).iter().any(|r| rule_matches(r, dst)));
    let_in && let_out
}

/// One ping per (source, destination, family), all at once (a denied ping
/// waits its whole timeout); returns the failures against `want`.
fn check_matrix(agent: &Agent, launched: &[Launched], want_policy: bool) -> Vec<String> {
    let store = open(agent);
    let profiles: BTreeMap<String, Profile> = profiles::list(store.as_ref())
        .unwrap()
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    let node = agent.store.node.clone();
    let eps: BTreeMap<String, endpoint::Endpoint> = endpoint::list(store.as_ref(), &node)
        .unwrap()
        .into_iter()
        .map(|v| (v.value.container_id.clone(), v.value))
        .collect();
    let names = |c: &Launched| profile_names(&eps[&c.id], &node);
    let mut cases = Vec::new(); // (label, from: Option<&Launched>, to addr, expected)
    for dst in launched {
        let dst_ng = &eps[&dst.id].netgroups;
        for (fam, addr, node_addr) in [
            ("IPv4", dst.v4, IpAddr::V4(agent.node.v4)),
            ("IPv6", dst.v6, IpAddr::V6(agent.node.v6)),
        ] {
            let to = Peer {
                addr,
                netgroups: Some(dst_ng),
            };
            let node = Peer {
                addr: node_addr,
                netgroups: None,
            };
            let allow = !want_policy || expected(&profiles, None, &node, &names(dst), &to);
            cases.push((format!("node -> {} ({fam})", dst.id), None, addr, allow));
            for src in launched.iter().filter(|s| s.id != dst.id) {
                let from = Peer {
                    addr: if addr.is_ipv4() { src.v4 } else { src.v6 },
                    netgroups: Some(&eps[&src.id].netgroups),
                };
                let allow =
                    !want_policy || expected(&profiles, Some(&names(src)), &from, &names(dst), &to);
                cases.push((
                    format!("{} -> {} ({fam})", src.id, dst.id),
                    Some(src),
                    addr,
                    allow,
                ));
            }
        }
    }
    let allowed = cases.iter().filter(|c| c.3).count();
    println!(
        "{} pairs: {allowed} allowed, {} denied",
        cases.len(),
        cases.len() - allowed
    );
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(label, from, to, allow)| {
                s.spawn(move || {
                    let got = match from {
                        Some(c) => ping(&c.container, *to),
                        None => ping(&agent.node.ns, *to),
                    };
                    (got != *allow).then(|| format!("{label}: expected {allow}, got {got}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    })
}

fn launch_matrix(agent: &Agent) -> Vec<Launched> {
    GROUPS
        .iter()
        .enumerate()
        .map(|(n, g)| agent.launch(n, g))
        .collect()
}

#[test]
fn netgroups_decide_who_reaches_whom() {
    if !require_root() {
        return;
    }
    let agent = Agent::new("polmx", 1);
    let daemon = agent.start_daemon();
    let launched = launch_matrix(&agent);
    let failures = check_matrix(&agent, &launched, true);
    assert!(failures.is_empty(), "{failures:#?}\n{}", daemon.log_text());

    // The CLI shows the profiles isolate made.
    let (ok, list, err) = agent.cli(&["profile", "list"]);
    assert!(ok, "{err}");
    for name in ["a", "b", "public", &format!("host:{}", agent.store.node)] {
        assert!(list.contains(name), "{list}");
    }

    // Policy disabled: the table goes and every pair talks, so the denials
    // above were the policy's.
    drop(daemon);
    let open_daemon = agent.start_daemon_with(&[("CALICO_MESOS_POLICY", "disabled")]);
    assert!(agent.policy_entries().is_empty());
    let failures = check_matrix(&agent, &launched, false);
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        open_daemon.log_text()
    );
    drop(open_daemon);

    let _daemon = agent.start_daemon();
    for c in &launched {
        agent.finish(c);
    }
    assert!(
        agent.policy_entries().is_empty(),
        "{:?}",
        agent.policy_entries()
    );
    assert!(agent.host_links().is_empty());
}

/// Packets of one ICMP counter in the node namespace's `/proc/net/snmp`
/// (IPv4) or `snmp6` (IPv6).
fn echo_requests_received(agent: &Agent, v6: bool) -> u64 {
    let (file, key) = if v6 {
        ("/proc/net/snmp6", "Icmp6InEchos")
    } else {
        ("/proc/net/snmp", "InEchos")
    };
    let text = agent.node.ns.exec_ok(&["cat", file]);
    if v6 {
        let line = text.lines().find(|l| l.starts_with(key)).unwrap();
        return line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    let mut icmp = text.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names.split_whitespace().position(|n| n == key).unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[test]
fn a_container_may_send_only_from_its_own_addresses() {
    if !require_root() {
        return;
    }
    // No daemon: it would repair the container's addresses (drift) before
    // the spoofed packets are sent; the plugin reconciles inline.
    let agent = Agent::new("polspf", 1);
    let spoofer = agent.launch(0, &["a"]);
    let victim = agent.launch(1, &["a"]);
    // Another container's address, and one nobody has (test ranges only).
    for (foreign, node_addr) in [
        (victim.v4, IpAddr::V4(agent.node.v4)),
        ("198.18.255.1".parse().unwrap(), IpAddr::V4(agent.node.v4)),
        (victim.v6, IpAddr::V6(agent.node.v6)),
        (
            "2001:db8:1:ffff::1".parse().unwrap(),
            IpAddr::V6(agent.node.v6),
        ),
    ] {
        let prefix = if foreign.is_ipv4() { 32 } else { 128 };
        spoofer.container.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{foreign}/{prefix}"),
            "dev",
            "eth0",
            "nodad",
        ]);
        // Echo requests that reach the node are counted there: from the
        // real address one arrives, from the foreign one none does.
        let v6 = foreign.is_ipv6();
        let before = echo_requests_received(&agent, v6);
        let own = if v6 { spoofer.v6 } else { spoofer.v4 };
        assert!(ping_from(&spoofer.container, own, node_addr), "own address");
        let after_own = echo_requests_received(&agent, v6);
        assert_eq!(after_own, before + 1);
        assert!(!ping_from(&spoofer.container, foreign, node_addr));
        assert_eq!(
            echo_requests_received(&agent, v6),
            after_own,
            "{foreign} got through"
        );
        spoofer.container.exec_ok(&[
            "ip",
            "addr",
            "del",
            &format!("{foreign}/{prefix}"),
            "dev",
            "eth0",
        ]);
    }
    // The victim's own traffic is untouched.
    assert!(ping(&victim.container, spoofer.v4));
}

#[test]
fn our_table_is_restored_after_drift() {
    if !require_root() {
        return;
    }
    let agent = Agent::new("poldft", 1);
    let daemon = agent.start_daemon();
    let launched = launch_matrix(&agent);
    let healthy = agent.policy_entries();
    assert!(!healthy.is_empty());
    let member = launched[0].v4.to_string();
    let breaks: [(&str, Vec<&str>); 3] = [
        (
            "delete our table",
            vec!["delete", "table", "inet", "calico-mesos"],
        ),
        (
            "delete a netgroup member",
            vec![
                "delete",
                "element",
                "inet",
                "calico-mesos",
                "ng.a.v4",
                "{",
                &member,
                "}",
            ],
        ),
        (
            "flush an endpoint's chain",
            vec![
                "flush",
                "chain",
                "inet",
                "calico-mesos",
                "ep-in.placeholder",
            ],
        ),
    ];
    let chain = healthy
        .iter()
        .find_map(|e| e.strip_prefix("chain ep-in."))
        .map(|c| format!("ep-in.{c}"))
        .unwrap();
    for (what, mut command) in breaks {
        if let Some(last) = command.last_mut() {
            if *last == "ep-in.placeholder" {
                *last = &chain;
            }
        }
        let mut args = vec!["nft"];
        args.extend(command);
        agent.node.ns.exec_ok(&args);
        let took = wait_until(LIMIT, || agent.policy_entries() == healthy);
        assert!(
            took.is_some(),
            "{what}: not repaired\n{}",
            daemon.log_text()
        );
        println!("{what}: repaired in {:?}", took.unwrap());
    }
    let failures = check_matrix(&agent, &launched, true);
    assert!(failures.is_empty(), "{failures:#?}");
}
