//! Dataplane benchmarks (issue 3), printed as Markdown for BENCHMARKS.md,
//! with the peer measured in the same run: CNI `ptp` + `host-local`
//! (/usr/lib/cni) doing the same per-container work (a veth, IPv4 and IPv6
//! addresses, host routes).
//!
//! - whole-process isolate (spawn → Ready → answer) as the node fills up to
//!   1,000 endpoints, with the daemon and without it; CNI ADD likewise.
//!   Each isolate follows an untimed `allocate` through the plugin, as the
//!   agent sends them (served by the daemon when one runs);
//! - whole-process cleanup at 1,000, against CNI DEL;
//! - rebuilding every endpoint with `calico-mesos reconcile` after the node
//!   namespace was destroyed and recreated (a reboot);
//! - the daemon's CPU for one resync that finds no drift;
//! - drift repair latency (a host veth deleted → back);
//! - the floor: the same netlink requests made by one long-lived process
//!   (the endpoint reconciler in-process) for every container.
//!
//! Runs as root, in test namespaces only (TESTING.md). `cargo bench --bench
//! dataplane`; `cargo test --benches` runs a quick version. Numbers are
//! reported, never asserted.
//!
//! Every timed process, ours and the peer's, is started the same way: by
//! default by a fork of this bench that enters the node namespace before
//! exec (as Mesos' libprocess forks), with `BENCH_SPAWN=posix` by
//! posix_spawn from a thread inside the namespace (as a Go runtime such as
//! containerd starts CNI plugins). The first row gives the time to start
//! `/bin/cat` that way.
//!
//! Each phase that builds a node first waits for the machine to be quiet
//! (`wait_quiet`): the kernel destroys the previous phase's namespaces in
//! the background for seconds after their processes exit.
//!
//! `DATAPLANE_PHASES` runs only some phases (comma-separated; default all):
//! `peer` (CNI ADD and DEL), `inline` (isolate with no daemon), `floor`,
//! `open` (isolate with the daemon, policy disabled), `daemon` (isolate
//! with the daemon, policy enforced), and on that node afterwards
//! `cleanup`, `repair`, `resync`, `rebuild` (each implies `daemon`), and
//! `again`: more fills of a node with the daemon, each from 0 to 1,000 and
//! torn down (`DATAPLANE_AGAIN`, default 2), to give the growth of each
//! beside the main fill's (a slow stretch of the VM during one fill's
//! first or last 50 moves that fill's growth alone). The rows of phases
//! not run show "—". `DATAPLANE_DAEMON_LOG=PATH` appends
//! the daemons' (and the rebuild's) logs, at debug level (the stages of each isolate, with
//! their times) or `DATAPLANE_DAEMON_LOG_LEVEL`, to PATH. For the isolate
//! target alone:
//!
//!     DATAPLANE_PHASES=floor,daemon,cleanup cargo bench --bench dataplane

mod common;

use calico_mesos::ipam;
use calico_mesos::store::sqlite::SqliteStore;
use common::{
    cpu_time, in_netns, median, ms, p99, teardown, timed, wait_quiet, window, Daemon, Spawn, BIN,
};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testsupport::{wait_no_eth0, Container, Netns, Node};

const PTP: &str = "/usr/lib/cni/ptp";

/// A store and the environment of every process of one agent.
struct Env {
    dir: tempfile::TempDir,
    /// `enforce` or `disabled` (the `policy` key).
    policy: &'static str,
    /// How the timed plugin processes are started.
    spawn: Spawn,
}

impl Env {
    fn new(policy: &'static str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("calico-mesos-bench-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("config.yaml"), "").unwrap();
        let store = self_store(dir.path());
        for cidr in ["198.18.0.0/16", "2001:db8:1::/64"] {
            ipam::add_pool(
                &store,
                &ipam::IpPool::new(cidr.parse().unwrap(), None).unwrap(),
            )
            .unwrap();
        }
        Env {
            dir,
            policy,
            spawn: Spawn::from_env(),
        }
    }

    fn store(&self) -> SqliteStore {
        self_store(self.dir.path())
    }

    /// The binary, entering `node` before exec (as an agent in its own
    /// namespace runs it, without `ip netns exec`'s own cost): for the
    /// daemon and the untimed commands.
    fn command(&self, node: &Netns) -> Command {
        self.configured(in_netns(BIN, node))
    }

    /// One plugin request in `node`, started [`Env::spawn`]'s way:
    /// (spawn → answer, stdout).
    fn call(&self, node: &Netns, input: &str) -> (Duration, String) {
        let cmd = self.configured(self.spawn.command(BIN, node));
        self.spawn.timed(node, cmd, input)
    }

    /// `cmd` with this agent's environment.
    fn configured(&self, mut cmd: Command) -> Command {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CALICO_MESOS_CONFIG", self.dir.path().join("config.yaml"))
            .env(
                "CALICO_MESOS_DATASTORE",
                format!("sqlite://{}/store.db", self.dir.path().display()),
            )
            .env("CALICO_MESOS_RUN_DIR", self.dir.path().join("run"))
            .env("CALICO_MESOS_NODENAME", "bench")
            .env("CALICO_MESOS_LOG_LEVEL", "warn")
            .env("CALICO_MESOS_POLICY", self.policy);
        cmd
    }

    /// Starts this agent's daemon in `node` with `extra` environment (and
    /// its log in `DATAPLANE_DAEMON_LOG`, when set).
    fn daemon(&self, node: &Netns, extra: &[(&str, &str)]) -> Daemon {
        let mut cmd = self.command(node);
        cmd.arg("daemon")
            .envs(extra.iter().copied())
            .stderr(Stdio::null());
        logged(&mut cmd);
        Daemon::start(cmd, &self.dir.path().join("run/daemon.sock"))
    }
}

/// Has `cmd` (a daemon, or the rebuild's `reconcile`) append its log to
/// `DATAPLANE_DAEMON_LOG` at `DATAPLANE_DAEMON_LOG_LEVEL` (default debug),
/// when set.
fn logged(cmd: &mut Command) {
    if let Ok(log) = std::env::var("DATAPLANE_DAEMON_LOG") {
        let level = std::env::var("DATAPLANE_DAEMON_LOG_LEVEL");
        cmd.env("CALICO_MESOS_LOG_FILE", log).env(
            "CALICO_MESOS_LOG_LEVEL",
            level.as_deref().unwrap_or("debug"),
        );
    }
}

fn self_store(dir: &Path) -> SqliteStore {
    SqliteStore::open(
        dir.join("store.db").to_str().unwrap(),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// Allocates one IPv4 and one IPv6 address for `uid` the way the agent
/// does before an isolate: a plugin process (served by the daemon when
/// one runs, so its own store connection makes the write, as in
/// production). Untimed.
fn allocate(env: &Env, node: &Netns, uid: &str) -> (IpAddr, IpAddr) {
    let (_, answer) = env.call(
        node,
        &format!(
            r#"{{"command":"allocate","args":{{"hostname":"bench","uid":"{uid}","num_ipv4":1,"num_ipv6":1}}}}"#
        ),
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("an allocate answer");
    let first = |family: &str| -> IpAddr {
        answer[family][0]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {family} address in {answer}"))
    };
    (first("ipv4"), first("ipv6"))
}

fn isolate_json(id: &str, pid: u32, v4: IpAddr, v6: IpAddr) -> String {
    format!(
        r#"{{"command":"isolate","args":{{"hostname":"bench","container_id":"{id}","pid":{pid},"ipv4_addrs":["{v4}"],"ipv6_addrs":["{v6}"]}}}}"#
    )
}

fn cleanup_json(id: &str) -> String {
    format!(r#"{{"command":"cleanup","args":{{"hostname":"bench","container_id":"{id}"}}}}"#)
}

/// One calico-mesos run: isolate `n` containers one by one on a fresh node;
/// returns (node, env, containers with ids, isolate latencies).
struct Fleet {
    env: Env,
    node: Node,
    containers: Vec<(Container, String, IpAddr)>,
}

/// Waits for the kernel to finish destroying the namespaces of earlier
/// phases before a phase starts (see [`wait_quiet`]).
fn settle() {
    let waited = wait_quiet(Duration::from_secs(120));
    eprintln!("waited {} for the machine to be quiet", ms(waited));
}

fn fill(
    tag: &str,
    n: usize,
    with_daemon: bool,
    policy: &'static str,
) -> (Fleet, Vec<Duration>, Option<Daemon>) {
    settle();
    let env = Env::new(policy);
    let node = Node::new(tag, 1);
    let daemon = with_daemon.then(|| env.daemon(&node.ns, &[]));
    let mut times = Vec::with_capacity(n);
    let mut containers = Vec::with_capacity(n);
    for i in 0..n {
        let c = Container::new(&node.ns);
        let (v4, v6) = allocate(&env, &node.ns, &format!("task-{i}"));
        let id = format!("container-{i}");
        let (took, answer) = env.call(&node.ns, &isolate_json(&id, c.pid(), v4, v6));
        assert!(answer.contains(r#""error":null"#), "{answer}");
        times.push(took);
        containers.push((c, id, v4));
    }
    (
        Fleet {
            env,
            node,
            containers,
        },
        times,
        daemon,
    )
}

/// CNI ptp + host-local: ADD `n` containers one by one; returns the node,
/// containers and latencies.
fn fill_cni(
    tag: &str,
    n: usize,
    dual_stack: bool,
) -> (
    Node,
    tempfile::TempDir,
    Vec<(Container, String)>,
    Vec<Duration>,
) {
    settle();
    let node = Node::new(tag, 1);
    let dir = tempfile::Builder::new()
        .prefix("calico-mesos-bench-cni-")
        .tempdir()
        .unwrap();
    let mut times = Vec::with_capacity(n);
    let mut containers = Vec::with_capacity(n);
    for i in 0..n {
        let c = Container::new(&node.ns);
        let id = format!("cni-{i}");
        let (took, _) = cni(
            &node.ns,
            "ADD",
            &id,
            &c,
            &cni_config(dir.path(), dual_stack),
        );
        times.push(took);
        containers.push((c, id));
    }
    (node, dir, containers, times)
}

/// The peer's configuration. Dual stack makes ptp wait for IPv6 duplicate
/// address detection (about 1.8 s per container), so the main comparison
/// is IPv4 only and dual stack is sampled separately.
fn cni_config(data: &Path, dual_stack: bool) -> String {
    let v6 = if dual_stack {
        r#",[{"subnet":"2001:db8:1::/64"}]"#
    } else {
        ""
    };
    format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"ptp","ipMasq":false,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"198.18.0.0/16"}}]{v6}]}}}}"#,
        data.display()
    )
}

/// One call of the peer in `node` with `config` on stdin, started the
/// same way as ours: (spawn → answer, stdout).
fn cni(node: &Netns, command: &str, id: &str, c: &Container, config: &str) -> (Duration, String) {
    let spawn = Spawn::from_env();
    let mut cmd = spawn.command(PTP, node);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", c.netns_path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni");
    spawn.timed(node, cmd, config)
}

/// Deletes the host veth `name` in `node` and returns the time from the
/// kernel's "link deleted" event to the "route added" event of the
/// container address `addr` (the last step of a repair), both seen on an
/// event subscription inside the node namespace.
///
/// The runtime is built here, in the root namespace, and only the event
/// socket is made inside the node's: tokio's first IO-enabled runtime
/// creates a process-wide socket pair (its signal registry), and a socket
/// made inside the node namespace would keep that namespace alive for the
/// rest of the run.
fn repair_latency(node: &Netns, name: &str, addr: IpAddr, limit: Duration) -> Option<Duration> {
    use reconcilers::events::{Events, KernelEvent};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut events = node.run(|| {
        let _in_runtime = rt.enter();
        Events::node().unwrap()
    });
    let mut del = Command::new("ip");
    del.args(["-n", node.name(), "link", "del", name]);
    let deleting = std::thread::spawn(move || del.status());
    let result = rt.block_on(async {
        let mut deleted_at = None;
        tokio::time::timeout(limit, async {
            while let Some(event) = events.next().await {
                match event.kind {
                    KernelEvent::Link {
                        facts,
                        deleted: true,
                    } if facts.name == name => {
                        deleted_at.get_or_insert_with(Instant::now);
                    }
                    KernelEvent::Route {
                        dst,
                        deleted: false,
                        ..
                    } if dst == addr => {
                        if let Some(at) = deleted_at {
                            return Some(at.elapsed());
                        }
                    }
                    _ => {}
                }
            }
            None
        })
        .await
    });
    let _ = deleting.join();
    result.ok().flatten()
}

/// The median time to start `/bin/cat` (stdin to stdout) `samples` times
/// in a node namespace `spawn`'s way: what starting any process costs.
fn spawn_floor(spawn: Spawn, samples: usize) -> Duration {
    let node = Node::new("bspawn", 1);
    let times: Vec<Duration> = (0..samples)
        .map(|_| {
            spawn
                .timed(&node.ns, spawn.command("/bin/cat", &node.ns), "{}")
                .0
        })
        .collect();
    median(&times)
}

/// What the floor measured: per-container latencies of making the
/// endpoints, of removing the last ones again (as the reconciler does:
/// done once the link is gone), and of deleting the `removed` before those
/// the kernel's way (a plain `RTM_DELLINK`, done when the kernel answers,
/// after it has freed the pair: the issue's "~20 ms veth delete").
struct FloorTimes {
    made: Vec<Duration>,
    removed: Vec<Duration>,
    deleted_answered: Vec<Duration>,
}

/// The floor: one long-lived process (this one) making the endpoint
/// reconciler's netlink requests for `n` containers, one after the other,
/// then removing the last `removed` and deleting `removed` more (see
/// [`FloorTimes`]).
fn fill_floor(tag: &str, n: usize, removed: usize) -> (Node, Vec<Container>, FloorTimes) {
    use futures::TryStreamExt;
    use reconcilers::endpoint::{EndpointDataplane, EndpointSpec};
    settle();
    let node = Node::new(tag, 1);
    let containers: Vec<Container> = (0..n).map(|_| Container::new(&node.ns)).collect();
    // Built here, outside the node namespace (see `repair_latency`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let floor = node.ns.run(|| {
        rt.block_on(async {
            let dataplane = EndpointDataplane::new().unwrap();
            let mut times = Vec::with_capacity(n);
            for (i, c) in containers.iter().enumerate() {
                let spec = EndpointSpec {
                    container_id: format!("floor-{i}"),
                    netns: reconcilers::NetnsRef {
                        pid: c.pid(),
                        inode: c.inode(),
                    },
                    ipv4: vec![std::net::Ipv4Addr::from(0xc612_0000 + i as u32 + 1)],
                    ipv6: vec![std::net::Ipv6Addr::from(
                        0x2001_0db8_0001_0000_0000_0000_0000_0000u128 + i as u128 + 1,
                    )],
                };
                let start = Instant::now();
                dataplane.ensure(&spec, false).await.unwrap();
                times.push(start.elapsed());
            }
            let mut removals = Vec::with_capacity(removed);
            for i in (n - removed..n).rev() {
                let start = Instant::now();
                dataplane
                    .remove(&format!("floor-{i}"), false)
                    .await
                    .unwrap();
                removals.push(start.elapsed());
            }
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let mut answered = Vec::with_capacity(removed);
            for i in (n - 2 * removed..n - removed).rev() {
                let name = reconcilers::endpoint::host_ifname(&format!("floor-{i}"));
                let link = handle
                    .link()
                    .get()
                    .match_name(name)
                    .execute()
                    .try_next()
                    .await
                    .unwrap()
                    .expect("the floor's host link");
                let start = Instant::now();
                handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .unwrap();
                answered.push(start.elapsed());
            }
            FloorTimes {
                made: times,
                removed: removals,
                deleted_answered: answered,
            }
        })
    });
    (node, containers, floor)
}

/// The phases a run measures (`DATAPLANE_PHASES`, see the module doc).
struct Phases(Vec<String>);

impl Phases {
    const ALL: [&'static str; 10] = [
        "peer", "inline", "floor", "open", "again", "daemon", "cleanup", "repair", "resync",
        "rebuild",
    ];

    fn from_env() -> Phases {
        let Ok(list) = std::env::var("DATAPLANE_PHASES") else {
            return Phases(Self::ALL.iter().map(|p| p.to_string()).collect());
        };
        let mut phases: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                assert!(
                    Self::ALL.contains(&p),
                    "unknown phase {p:?} in DATAPLANE_PHASES (known: {})",
                    Self::ALL.join(", ")
                );
                p.to_string()
            })
            .collect();
        // The phases after the fill run on the daemon's node.
        if phases.iter().any(|p| Self::ALL[6..].contains(&p.as_str())) {
            phases.push("daemon".into());
        }
        Phases(phases)
    }

    fn has(&self, phase: &str) -> bool {
        self.0.iter().any(|p| p == phase)
    }
}

/// How many more fills the `again` phase makes (`DATAPLANE_AGAIN`).
fn again_passes() -> usize {
    std::env::var("DATAPLANE_AGAIN").map_or(2, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("DATAPLANE_AGAIN={v:?} is not a count"))
    })
}

/// `f` of a phase's samples, or "—" when the phase did not run.
fn or_dash(t: &Option<Vec<Duration>>, f: impl Fn(&[Duration]) -> String) -> String {
    t.as_deref().map_or_else(|| "—".to_string(), f)
}

fn main() {
    if !testsupport::require_root() {
        return;
    }
    // `cargo test --benches` runs benches without --bench: keep it quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let phases = Phases::from_env();
    let n = if quick { 12 } else { 1_050 };
    let w = if quick { 4 } else { 50 };
    let at = |i: usize| if quick { i / 100 } else { i };
    println!("| measure | calico-mesos (IPv4 + IPv6) | CNI ptp + host-local (IPv4) | target |");
    println!("|---|---|---|---|");
    let spawn = Spawn::from_env();
    let spawned = spawn_floor(spawn, w);
    println!(
        "| how every timed process is started (`BENCH_SPAWN`); `/bin/cat` started so, median of {w} | {}; {} | the same | — |",
        spawn.label(),
        ms(spawned)
    );

    // The peer first: isolate (ADD) and cleanup (DEL) at 1,000.
    let (cni_times, cni_del, cni_dual) = if phases.has("peer") {
        let (cni_node, cni_dir, cni_containers, cni_times) = fill_cni("bcni", n, false);
        let mut cni_del = Vec::new();
        for (c, id) in cni_containers.iter().rev().take(w) {
            let (took, _) = cni(
                &cni_node.ns,
                "DEL",
                id,
                c,
                &cni_config(cni_dir.path(), false),
            );
            cni_del.push(took);
        }
        teardown(cni_node, cni_containers, |(c, _)| c.pid());
        let (dual_node, _dual_dir, dual_containers, cni_dual) = fill_cni("bcnidual", 3, true);
        teardown(dual_node, dual_containers, |(c, _)| c.pid());
        (Some(cni_times), Some(cni_del), Some(cni_dual))
    } else {
        (None, None, None)
    };

    // Isolate with no daemon (inline).
    let inline_times = phases.has("inline").then(|| {
        let (inline, inline_times, _) = fill("bnoinl", n, false, "enforce");
        teardown(inline.node, inline.containers, |(c, _, _)| c.pid());
        inline_times
    });

    // The floor: the same netlink requests from one long-lived process.
    let (floor_times, floor_removals, floor_answered) = if phases.has("floor") {
        let (floor_node, floor_containers, floor) = fill_floor("bfloor", n, w);
        teardown(floor_node, floor_containers, |c| c.pid());
        (
            Some(floor.made),
            Some(floor.removed),
            Some(floor.deleted_answered),
        )
    } else {
        (None, None, None)
    };

    // Isolate with the daemon and policy disabled: what policy costs.
    let open_times = phases.has("open").then(|| {
        let (open, open_times, open_daemon) = fill("bopen", n, true, "disabled");
        drop(open_daemon);
        teardown(open.node, open.containers, |(c, _, _)| c.pid());
        open_times
    });

    // More fills with the daemon, each torn down: their growth only.
    let again_times: Vec<Vec<Duration>> = if phases.has("again") {
        let passes = if quick { 1 } else { again_passes() };
        (0..passes)
            .map(|i| {
                let (fleet, t, daemon) = fill(&format!("bagain{i}"), n, true, "enforce");
                drop(daemon);
                teardown(fleet.node, fleet.containers, |(c, _, _)| c.pid());
                t
            })
            .collect()
    } else {
        Vec::new()
    };

    // Isolate with the daemon; that node then serves the other measures.
    let filled = phases
        .has("daemon")
        .then(|| fill("bdaemon", n, true, "enforce"));
    let times = filled.as_ref().map(|(_, times, _)| times.clone());
    let last = |t: &[Duration]| t[t.len().saturating_sub(w)..].to_vec();
    for (label, idx) in [("0", 0), ("100", at(100)), ("1,000", at(1000))] {
        println!(
            "| isolate, whole process, median at {label} endpoints: with daemon / inline | {} / {} | {} | ≤ 5 ms at 1,000 |",
            or_dash(&times, |t| ms(window(t, idx, w))),
            or_dash(&inline_times, |t| ms(window(t, idx, w))),
            or_dash(&cni_times, |t| ms(window(t, idx, w)))
        );
    }
    println!(
        "| isolate with the daemon at 0 / 1,000 endpoints: policy enforced vs disabled | {} / {} | {} / {} (disabled) | policy adds ≤ 3 ms |",
        or_dash(&times, |t| ms(window(t, 0, w))),
        or_dash(&times, |t| ms(window(t, at(1000), w))),
        or_dash(&open_times, |t| ms(window(t, 0, w))),
        or_dash(&open_times, |t| ms(window(t, at(1000), w)))
    );
    println!(
        "| isolate p99 of the last {w}: with daemon / inline | {} / {} | {} | — |",
        or_dash(&times, |t| ms(p99(&last(t)))),
        or_dash(&inline_times, |t| ms(p99(&last(t)))),
        or_dash(&cni_times, |t| ms(p99(&last(t))))
    );
    let ratio = |ours: &Option<Vec<Duration>>| match (&cni_times, ours) {
        (Some(cni), Some(ours)) => format!(
            "{:.2}×",
            window(cni, at(1000), w).as_secs_f64() / window(ours, at(1000), w).as_secs_f64()
        ),
        _ => "—".to_string(),
    };
    println!(
        "| isolate at 1,000: CNI median ÷ ours (daemon / inline) | {} / {} | 1× | ≥ 2× |",
        ratio(&times),
        ratio(&inline_times)
    );
    println!(
        "| floor: the same netlink requests from one long-lived process, median at 0 / 100 / 1,000 | {} / {} / {} | — | — |",
        or_dash(&floor_times, |t| ms(window(t, 0, w))),
        or_dash(&floor_times, |t| ms(window(t, at(100), w))),
        or_dash(&floor_times, |t| ms(window(t, at(1000), w)))
    );
    println!(
        "| (peer with IPv6 too: CNI ptp waits for duplicate address detection) | — | {} | — |",
        or_dash(&cni_dual, |t| format!(
            "{} (median of {})",
            ms(median(t)),
            t.len()
        ))
    );
    for (label, t) in [
        ("daemon", &times),
        ("inline", &inline_times),
        ("cni", &cni_times),
        ("floor", &floor_times),
        ("daemon, policy disabled", &open_times),
    ] {
        let Some(t) = t else { continue };
        let per: Vec<String> = t.chunks(w.max(1) * 2).map(|c| ms(median(c))).collect();
        eprintln!("isolate medians by {} ({label}): {}", w * 2, per.join(", "));
    }
    // The last window is past 1,000 (cleanup's containers): left out.
    let growth = |t: &Option<Vec<Duration>>| {
        or_dash(t, |t| {
            let t = &t[..t.len() - w];
            format!(
                "{:.2}×",
                window(t, t.len().saturating_sub(w), w).as_secs_f64()
                    / window(t, 0, w).as_secs_f64()
            )
        })
    };
    println!(
        "| isolate growth, last {w} of 1,000 vs first {w}: with daemon / inline | {} / {} | {} | ≤ 1.2× |",
        growth(&times),
        growth(&inline_times),
        growth(&cni_times)
    );
    if !again_times.is_empty() {
        let each: Vec<String> = again_times
            .iter()
            .map(|t| {
                format!(
                    "{} ({})",
                    growth(&Some(t.clone())),
                    ms(window(t, at(1000), w))
                )
            })
            .collect();
        println!(
            "| isolate growth with the daemon in the `again` fills, each: growth (isolate median at 1,000) | {} | — | ≤ 1.2× |",
            each.join(", ")
        );
    }
    if let Some(removals) = &floor_removals {
        println!(
            "| floor: removal by one long-lived process (done once the link is gone), median at 1,000 | {} | — | — |",
            ms(median(removals))
        );
    }
    if let Some(answered) = &floor_answered {
        println!(
            "| floor: the kernel's veth delete, until it answers (after freeing the pair), median at ~1,000 | {} | — | — |",
            ms(median(answered))
        );
    }
    let Some((fleet, _, daemon)) = filled else {
        return;
    };
    let daemon = daemon.unwrap();

    // Cleanup at 1,000 (the last w containers), against CNI DEL.
    if phases.has("cleanup") {
        let mut clean = Vec::new();
        for (_, id, _) in fleet.containers.iter().rev().take(w) {
            let (took, answer) = fleet.env.call(&fleet.node.ns, &cleanup_json(id));
            assert!(answer.contains(r#""error":null"#), "{answer}");
            clean.push(took);
        }
        println!(
            "| cleanup, whole process, median at 1,000 endpoints (with daemon) | {} | {} | ≤ 1.25 × the ~20 ms veth delete |",
            ms(median(&clean)),
            or_dash(&cni_del, |t| ms(median(t)))
        );
        if let (Some(removals), Some(answered)) = (&floor_removals, &floor_answered) {
            println!(
                "| cleanup ÷ the floor's removal / ÷ the kernel's answered delete, same run | {:.2}× / {:.2}× | — | ≤ 1.25× of the ~20 ms delete |",
                median(&clean).as_secs_f64() / median(removals).as_secs_f64(),
                median(&clean).as_secs_f64() / median(answered).as_secs_f64()
            );
        }
    }

    // Drift repair: delete host veths one at a time; time until back.
    let live_count = fleet.containers.len() - w;
    let live = &fleet.containers[..live_count];
    if phases.has("repair") {
        let mut repairs = Vec::new();
        for (_, id, v4) in live.iter().step_by((live.len() / 20).max(1)).take(20) {
            let name = reconcilers::endpoint::host_ifname(id);
            let took = repair_latency(&fleet.node.ns, &name, *v4, Duration::from_secs(10))
                .expect("repaired");
            repairs.push(took);
        }
        println!(
            "| drift repair (host veth deleted → its routes back), median of {} | {} | — | ≤ 50 ms |",
            repairs.len(),
            ms(median(&repairs))
        );
    }

    // One resync with no drift: the daemon's CPU from the end of one
    // recorded full pass to the end of the next, once the start-up pass
    // (which reconciles every endpoint) and a first periodic one are over.
    drop(daemon);
    if phases.has("resync") {
        let daemon = fleet
            .env
            .daemon(&fleet.node.ns, &[("CALICO_MESOS_RESYNC_INTERVAL", "2s")]);
        let store = fleet.env.store();
        let pass_after = |after: u64| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let status = calico_mesos::controller::loop_status::get(&store, "bench").unwrap();
                match status.and_then(|s| (s.pid == daemon.pid()).then_some(s.last_full_pass_ms)) {
                    Some(Some(at)) if at > after => return at,
                    _ => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "no full pass recorded after {after}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let started = pass_after(0);
        let settled = pass_after(started);
        let before = daemon.cpu();
        let next = pass_after(settled);
        let cpu = daemon.cpu() - before;
        println!(
            "| daemon CPU over one resync period with no drift ({live_count} endpoints; {} ms from one full pass to the next) | {} | — | ≤ 50 ms |",
            next - settled,
            ms(cpu)
        );
        drop(daemon);
    }

    let Fleet {
        env,
        node,
        containers,
    } = fleet;
    if !phases.has("rebuild") {
        teardown(node, containers, |(c, _, _)| c.pid());
        drop(env);
        return;
    }
    // Reboot: the node namespace is destroyed and made again; rebuild.
    let pids: Vec<u32> = containers.iter().map(|(c, _, _)| c.pid()).collect();
    drop(node);
    let gone = wait_no_eth0(&pids, Duration::from_secs(300));
    eprintln!(
        "the kernel took {} to destroy the old node namespace",
        ms(gone)
    );
    settle();
    let node = Node::new("breboot", 1);
    let mut cmd = env.command(&node.ns);
    cmd.arg("reconcile");
    logged(&mut cmd);
    let cpu = cpu_time(libc::RUSAGE_CHILDREN);
    let (took, out) = timed(cmd, "");
    let cpu = cpu_time(libc::RUSAGE_CHILDREN) - cpu;
    println!(
        "| rebuild every endpoint with `reconcile` after a reboot ({live_count} endpoints); its CPU (user + system) | {}; CPU {} | — | ≤ 2 s |",
        ms(took),
        ms(cpu)
    );
    assert!(out.contains("0 failed"), "{out}");
    drop((containers, node, env));
}
