//! Cluster benchmarks (issue 5), printed as Markdown for BENCHMARKS.md.
//! Three node namespaces on one L2 fabric (`testsupport::Fabric`), a real
//! etcd (Debian's etcd-server) in the fabric's switch namespace, a daemon
//! on every node, and every call a whole plugin process (spawn → answer)
//! run inside its node's namespace, as the Mesos agent runs it:
//!
//! - allocate throughput with the three nodes contending on etcd: plugin
//!   processes on all nodes allocating in parallel; every address handed
//!   out is checked to be distinct, and against the store's count; once
//!   with each plugin started by posix_spawn from a thread in the node's
//!   namespace (as an agent in its namespace starts it), once by a fork of
//!   the bench that enters the namespace (what the fork costs the bench);
//! - isolate (spawn → Ready → answer) on node 1 as it fills up to 1,000
//!   endpoints, medians and p99 per window of 50; the same on SQLite (one
//!   node, same netgroups) in the same run, for comparison;
//! - propagation: from isolate answered on node 1 to node 2's kernel having
//!   both the route to the container's (new) block via node 1 and the
//!   container's addresses in its netgroup's sets; node 2's kernel is polled
//!   in process (a netlink route dump, `list set` through libnftables)
//!   every millisecond, bounded per sample. On an empty cluster and with
//!   1,000 endpoints on node 1.
//!
//! Runs as root, in test namespaces only (TESTING.md). `cargo bench --bench
//! cluster` (`CLUSTER_PHASES=allocate` or `isolate` for one part); `cargo
//! test --benches` runs a quick version. Numbers are
//! reported, never asserted; an address handed out twice is a failure.

mod common;

use common::{in_netns, median, ms, p99, teardown, timed, window, window_of, Daemon, Spawn, BIN};
use reconcilers::fabric::FabricDataplane;
use reconcilers::policy::{netgroup_set, LibNft, LIBNFTABLES};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testsupport::etcd::Etcd;
use testsupport::{Container, Fabric, Netns};

/// The netgroup of the propagation samples (node 2 has a member).
const WEB: &str = "web";
/// How long one propagation sample may take before it counts as missed.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);
/// The pause between two looks at node 2's kernel.
const POLL_EVERY: Duration = Duration::from_millis(1);

/// Where the agents keep their desired state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Datastore {
    /// An etcd in the fabric's switch namespace.
    Etcd,
    /// One SQLite file (a single agent).
    Sqlite,
}

/// Agents on one fabric sharing one store. Fields drop in order: the
/// daemons sign off while the store is still there, then etcd, then the
/// namespaces, then the directory.
struct Agents {
    daemons: Vec<Daemon>,
    /// Held for its guard: stopped after the daemons, before the fabric.
    _etcd: Option<Etcd>,
    fabric: Fabric,
    dir: tempfile::TempDir,
    datastore: String,
}

/// A container as the agent launched it.
struct Launched {
    container: Container,
    id: String,
    v4: IpAddr,
    v6: IpAddr,
}

impl Agents {
    /// `count` nodes on `store`, with the test pools and a daemon on each.
    fn new(tag: &str, count: u8, store: Datastore) -> Agents {
        let fabric = Fabric::new(tag, count);
        fabric.enable_forwarding();
        let dir = tempfile::Builder::new()
            .prefix("calico-mesos-bench-cluster-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("config.yaml"), "").unwrap();
        let (etcd, datastore) = match store {
            Datastore::Etcd => {
                let etcd = fabric.start_etcd();
                let url = format!("etcd://{}", etcd.host_port());
                (Some(etcd), url)
            }
            Datastore::Sqlite => (None, format!("sqlite://{}/store.db", dir.path().display())),
        };
        let mut agents = Agents {
            daemons: Vec::new(),
            _etcd: etcd,
            fabric,
            dir,
            datastore,
        };
        for pool in ["198.18.0.0/16", "2001:db8:1::/64"] {
            let mut cmd = agents.command(1);
            cmd.args(["pool", "add", pool]);
            timed(cmd, "");
        }
        agents.daemons = (1..=count).map(|x| agents.daemon(x)).collect();
        agents
    }

    fn name(x: u8) -> String {
        format!("node-{x}")
    }

    fn run_dir(&self, x: u8) -> PathBuf {
        self.dir.path().join(format!("run-{x}"))
    }

    fn ns(&self, x: u8) -> &Netns {
        &self.fabric.node(x).ns
    }

    /// The binary inside node `x`'s namespace, as that node.
    fn command(&self, x: u8) -> Command {
        self.configured(x, in_netns(BIN, &self.fabric.node(x).ns))
    }

    /// The binary as node `x`, started `spawn`'s way.
    fn command_as(&self, x: u8, spawn: Spawn) -> Command {
        self.configured(x, spawn.command(BIN, self.ns(x)))
    }

    /// `cmd` with node `x`'s environment.
    fn configured(&self, x: u8, mut cmd: Command) -> Command {
        let node = self.fabric.node(x);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CALICO_MESOS_CONFIG", self.dir.path().join("config.yaml"))
            .env("CALICO_MESOS_DATASTORE", &self.datastore)
            .env("CALICO_MESOS_RUN_DIR", self.run_dir(x))
            .env("CALICO_MESOS_NODENAME", Self::name(x))
            .env(
                "CALICO_MESOS_NODE_ADDRESSES",
                format!("{},{}", node.v4, node.v6),
            )
            .env("CALICO_MESOS_LOG_LEVEL", "warn");
        cmd
    }

    fn daemon(&self, x: u8) -> Daemon {
        let mut cmd = self.command(x);
        cmd.arg("daemon").stderr(Stdio::null());
        Daemon::start(cmd, &self.run_dir(x).join("daemon.sock"))
    }

    /// One request on node `x` that must succeed: (time, answer).
    fn plugin(&self, x: u8, request: &Value) -> (Duration, Value) {
        self.plugin_as(self.command(x), x, request)
    }

    /// One request run as `cmd` (node `x`'s binary) that must succeed.
    fn plugin_as(&self, cmd: Command, x: u8, request: &Value) -> (Duration, Value) {
        let (took, out) = timed(cmd, &request.to_string());
        let answer: Value = serde_json::from_str(&out).unwrap();
        assert!(answer["error"].is_null(), "node {x}: {request}: {answer}");
        (took, answer)
    }

    /// Allocates on node `x` for `uid`: one IPv4 (`v4`, when given, is
    /// reserved through the `ipv4_addrs` label) and, with `v6`, one IPv6.
    fn allocate(
        &self,
        x: u8,
        uid: &str,
        v4: Option<Ipv4Addr>,
        v6: bool,
    ) -> (Duration, Vec<IpAddr>) {
        self.allocate_as(self.command(x), x, uid, v4, v6)
    }

    /// [`Agents::allocate`] run as `cmd` (node `x`'s binary).
    fn allocate_as(
        &self,
        cmd: Command,
        x: u8,
        uid: &str,
        v4: Option<Ipv4Addr>,
        v6: bool,
    ) -> (Duration, Vec<IpAddr>) {
        let mut args = json!({"hostname": "agent", "uid": uid, "num_ipv4": 1,
            "num_ipv6": u8::from(v6)});
        if let Some(a) = v4 {
            args["labels"] = json!([{"key": "ipv4_addrs", "value": format!("['{a}']")}]);
        }
        let (took, answer) = self.plugin_as(cmd, x, &json!({"command": "allocate", "args": args}));
        let addrs = ["ipv4", "ipv6"]
            .iter()
            .flat_map(|f| answer[f].as_array().cloned().unwrap_or_default())
            .map(|a| a.as_str().unwrap().parse().unwrap())
            .collect();
        (took, addrs)
    }

    /// Allocates (one IPv4, `v4` if given, and one IPv6) and isolates a new
    /// container on node `x` in `netgroup`; returns the container and the
    /// allocate's and the isolate's times.
    fn launch(
        &self,
        x: u8,
        id: &str,
        netgroup: &str,
        v4: Option<Ipv4Addr>,
    ) -> (Launched, Duration, Duration) {
        let container = Container::new(self.ns(x));
        let (allocated, addrs) = self.allocate(x, id, v4, true);
        let (v4, v6) = (addrs[0], addrs[1]);
        let (isolated, _) = self.plugin(
            x,
            &json!({"command": "isolate", "args": {"hostname": "agent", "container_id": id,
                "pid": container.pid(), "ipv4_addrs": [v4.to_string()],
                "ipv6_addrs": [v6.to_string()], "netgroups": [netgroup]}}),
        );
        let launched = Launched {
            container,
            id: id.to_string(),
            v4,
            v6,
        };
        (launched, allocated, isolated)
    }

    /// Releases and cleans up a container on node `x`, as net-modules does.
    fn finish(&self, x: u8, c: &Launched) {
        self.plugin(
            x,
            &json!({"command": "release", "args": {"ips": [c.v4.to_string(), c.v6.to_string()]}}),
        );
        self.plugin(
            x,
            &json!({"command": "cleanup", "args": {"hostname": "agent", "container_id": c.id}}),
        );
    }

    /// Launches `n` containers on node `x` one after the other, container
    /// i in netgroup `g{i % 100}`; returns them and the isolate times.
    fn fill(&self, x: u8, n: usize) -> (Vec<Launched>, Vec<Duration>) {
        let mut containers = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let (c, _, took) = self.launch(x, &format!("fill-{i}"), &format!("g{}", i % 100), None);
            containers.push(c);
            times.push(took);
        }
        (containers, times)
    }

    /// Addresses in use over all pools, as the store counts them.
    fn used(&self) -> u64 {
        let mut cmd = self.command(1);
        cmd.args(["ipam", "show", "-o", "json"]);
        let (_, out) = timed(cmd, "");
        let usage: Value = serde_json::from_str(&out).unwrap();
        usage["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["used"].as_u64().unwrap())
            .sum()
    }
}

/// What the parallel allocation found.
struct Throughput {
    addresses: usize,
    distinct: usize,
    in_store: u64,
    wall: Duration,
    latencies: Vec<Duration>,
    /// `/bin/cat` processes per second (stdin to stdout), started the same way by the same
    /// workers just before: the machine's own limit for this spawn method.
    floor: f64,
}

/// `workers` plugin processes at a time on each of three nodes, each
/// making `per_worker` allocations one after the other.
fn allocate_in_parallel(
    tag: &str,
    workers: usize,
    per_worker: usize,
    v6: bool,
    spawn: Spawn,
) -> Throughput {
    let agents = Agents::new(tag, 3, Datastore::Etcd);
    let start = Instant::now();
    let spawned = on_every_node(&agents, workers, per_worker, spawn, |x, _| {
        timed(spawn.command("/bin/cat", agents.ns(x)), "{}");
    });
    let floor = spawned.len() as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let results = on_every_node(&agents, workers, per_worker, spawn, |x, i| {
        agents.allocate_as(
            agents.command_as(x, spawn),
            x,
            &format!("n{x}-{i}"),
            None,
            v6,
        )
    });
    let wall = start.elapsed();
    let all: Vec<IpAddr> = results.iter().flat_map(|(_, a)| a.clone()).collect();
    let distinct = all.iter().collect::<BTreeSet<_>>().len();
    Throughput {
        addresses: all.len(),
        distinct,
        in_store: agents.used(),
        wall,
        latencies: results.into_iter().map(|(took, _)| took).collect(),
        floor,
    }
}

/// Runs `call(node, n)` `per_worker` times one after the other on each of
/// `workers` threads per node, all nodes at once (`n` numbers a node's
/// calls); each thread is in its node's namespace for [`Spawn::Posix`].
/// The results of all calls.
fn on_every_node<R: Send>(
    agents: &Agents,
    workers: usize,
    per_worker: usize,
    spawn: Spawn,
    call: impl Fn(u8, usize) -> R + Sync,
) -> Vec<R> {
    let call = &call;
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..=3u8)
            .flat_map(|x| (0..workers).map(move |w| (x, w)))
            .map(|(x, w)| {
                s.spawn(move || {
                    let work = || {
                        (0..per_worker)
                            .map(|i| call(x, w * per_worker + i))
                            .collect::<Vec<R>>()
                    };
                    match spawn {
                        Spawn::Fork => work(),
                        Spawn::Posix => agents.ns(x).run(work),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Looks at one node's kernel from this process: its fabric routes
/// (netlink) and its nftables sets (a libnftables context of its own).
struct Probe {
    rt: tokio::runtime::Runtime,
    fabric: FabricDataplane,
    nft: LibNft,
}

impl Probe {
    /// Both sockets are made inside `ns`; the runtime is built out here,
    /// in the root namespace (tokio's first runtime makes a process-wide
    /// socket pair, which would otherwise keep `ns` alive).
    fn new(ns: &Netns) -> Probe {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (fabric, nft) = ns.run(|| {
            let _in_runtime = rt.enter();
            (
                FabricDataplane::new().unwrap(),
                LibNft::open(LIBNFTABLES, Duration::from_secs(5)).unwrap(),
            )
        });
        Probe { rt, fabric, nft }
    }

    /// A route of ours covering `addr` via `via`.
    fn has_route(&self, addr: IpAddr, via: IpAddr) -> bool {
        self.rt
            .block_on(self.fabric.observe())
            .unwrap()
            .iter()
            .any(|r| r.via == via && r.dst.contains(&addr))
    }

    /// `addr` is an element of our set `set`.
    fn in_set(&self, set: &str, addr: IpAddr) -> bool {
        let command = format!("list set inet calico-mesos {set}");
        match self
            .rt
            .block_on(self.nft.run(command.as_bytes(), "list a set"))
        {
            Ok(listing) => listing.contains(&format!("\"{addr}\"")),
            Err(_) => false, // no such set yet
        }
    }
}

/// One propagation sample: when each condition first held on node 2.
struct Propagation {
    allocated: Instant,
    /// The isolate process was spawned.
    started: Instant,
    isolated: Instant,
    route: Option<Instant>,
    policy: Option<Instant>,
}

impl Propagation {
    /// From `from` to both in place (zero if they already were).
    fn after(&self, from: Instant) -> Option<Duration> {
        let done = self.route?.max(self.policy?);
        Some(done.saturating_duration_since(from))
    }

    /// From isolate answered to both in place.
    fn total(&self) -> Option<Duration> {
        self.after(self.isolated)
    }
}

/// `samples` containers launched on node 1 in netgroup [`WEB`], each with
/// its IPv4 address in a block nobody has claimed yet (`block_base` is the
/// third octet of the first); node 2 is watched from before the allocate
/// until both its route and its policy include the container. Returns the
/// samples and the containers (still running).
fn propagation(
    agents: &Agents,
    probe: &Probe,
    samples: usize,
    block_base: u8,
) -> (Vec<Propagation>, Vec<Launched>) {
    let via = IpAddr::V4(agents.fabric.node(1).v4);
    let (set4, set6) = (netgroup_set(WEB, false), netgroup_set(WEB, true));
    let mut out = Vec::with_capacity(samples);
    let mut containers = Vec::with_capacity(samples);
    for i in 0..samples {
        // A /26 of its own: 4 blocks per /24.
        let v4 = Ipv4Addr::new(198, 18, block_base + (i / 4) as u8, (i % 4) as u8 * 64 + 1);
        let (watching, watch) = std::sync::mpsc::channel::<IpAddr>();
        let (set4, set6) = (&set4, &set6);
        let (sample, launched) = std::thread::scope(|s| {
            let poller = s.spawn(move || {
                let deadline = Instant::now() + PROPAGATION_LIMIT;
                let (mut route, mut policy) = (None, None);
                let mut v6 = None;
                while (route.is_none() || policy.is_none()) && Instant::now() < deadline {
                    // The IPv6 address is known once the allocate answered.
                    if let Ok(a) = watch.try_recv() {
                        v6 = Some(a);
                    }
                    let now = Instant::now();
                    if route.is_none() && probe.has_route(IpAddr::V4(v4), via) {
                        route = Some(now);
                    }
                    if policy.is_none()
                        && v6.is_some_and(|v6| {
                            probe.in_set(set4, IpAddr::V4(v4)) && probe.in_set(set6, v6)
                        })
                    {
                        policy = Some(now);
                    }
                    std::thread::sleep(POLL_EVERY);
                }
                (route, policy)
            });
            let container = Container::new(agents.ns(1));
            let id = format!("prop-{block_base}-{i}");
            let (_, addrs) = agents.allocate(1, &id, Some(v4), true);
            let allocated = Instant::now();
            watching.send(addrs[1]).unwrap();
            let started = Instant::now();
            agents.plugin(
                1,
                &json!({"command": "isolate", "args": {"hostname": "agent", "container_id": id,
                    "pid": container.pid(), "ipv4_addrs": [addrs[0].to_string()],
                    "ipv6_addrs": [addrs[1].to_string()], "netgroups": [WEB]}}),
            );
            let isolated = Instant::now();
            let (route, policy) = poller.join().unwrap();
            let sample = Propagation {
                allocated,
                started,
                isolated,
                route,
                policy,
            };
            let launched = Launched {
                container,
                id,
                v4: addrs[0],
                v6: addrs[1],
            };
            (sample, launched)
        });
        out.push(sample);
        containers.push(launched);
    }
    (out, containers)
}

/// Table rows for one set of propagation samples.
fn report_propagation(label: &str, samples: &[Propagation]) {
    let total: Vec<Duration> = samples.iter().filter_map(Propagation::total).collect();
    let missed = samples.len() - total.len();
    let policy: Vec<Duration> = samples
        .iter()
        .filter_map(|s| Some(s.policy?.saturating_duration_since(s.isolated)))
        .collect();
    let route: Vec<Duration> = samples
        .iter()
        .filter_map(|s| Some(s.route?.saturating_duration_since(s.allocated)))
        .collect();
    let early = samples
        .iter()
        .filter(|s| s.route.is_some_and(|r| r <= s.isolated))
        .count();
    if total.is_empty() {
        println!("| propagation node 1 → node 2, {label} | none of {} samples within {PROPAGATION_LIMIT:?} | ≤ 100 ms |", samples.len());
        return;
    }
    println!(
        "| propagation node 1 → node 2, {label}: isolate answered → route and policy on node 2, median / p99 of {} | {} / {} ({missed} missed) | median ≤ 100 ms |",
        total.len(),
        ms(median(&total)),
        ms(p99(&total))
    );
    let from_start: Vec<Duration> = samples.iter().filter_map(|s| s.after(s.started)).collect();
    println!(
        "| of which: isolate answered → addresses in node 2's netgroup sets, median; allocate answered → route to the new block, median (already there at the answer: {early} of {}) | {} ; {} | — |",
        samples.len(),
        ms(median(&policy)),
        ms(median(&route))
    );
    println!(
        "| the same from isolate *started* (spawned) on node 1: median / p99 (node 1's own isolate: {}) | {} / {} | — |",
        ms(median(
            &samples
                .iter()
                .map(|s| s.isolated - s.started)
                .collect::<Vec<_>>()
        )),
        ms(median(&from_start)),
        ms(p99(&from_start))
    );
}

/// The median time of `rounds` listings of every endpoint in the store,
/// made by this process from inside node 1's namespace (where etcd is
/// reachable), as every policy and fabric run lists them.
fn list_endpoints_from(agents: &Agents, rounds: usize) -> (Duration, usize) {
    use calico_mesos::store::etcd::EtcdStore;
    use calico_mesos::store::EtcdOptions;
    let endpoint = agents.datastore.trim_start_matches("etcd://").to_string();
    // The store's thread (and its connection) is made inside the node.
    let store = agents.ns(1).run(|| {
        EtcdStore::open(
            &[endpoint],
            false,
            &EtcdOptions::default(),
            Duration::from_secs(5),
        )
        .unwrap()
    });
    let mut count = 0;
    let times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            count = calico_mesos::policy::all_endpoints(&store).unwrap().len();
            start.elapsed()
        })
        .collect();
    (median(&times), count)
}

/// Median and p99 of the isolate window from `from`.
fn window_stats(times: &[Duration], from: usize, w: usize) -> String {
    format!(
        "{} / {}",
        ms(window(times, from, w)),
        ms(p99(window_of(times, from, w)))
    )
}

/// True when `name` is among the phases to run: `CLUSTER_PHASES`, a
/// comma-separated list of `allocate` and `isolate` (the isolate windows
/// and the propagation samples); all when unset.
fn phase(name: &str) -> bool {
    std::env::var("CLUSTER_PHASES").map_or(true, |list| list.split(',').any(|p| p.trim() == name))
}

fn main() {
    if !testsupport::require_root() {
        return;
    }
    // Made here, in the root namespace, before any runtime or socket is
    // made inside a node's (see `Probe::new`).
    let _root_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // `cargo test --benches` runs benches without --bench: keep it quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 12 } else { 1_050 };
    let w = if quick { 4 } else { 50 };
    let at = |i: usize| if quick { i / 100 } else { i };
    let (workers, per_worker) = if quick { (2, 5) } else { (4, 126) };
    let prop_samples = if quick { 3 } else { 30 };

    println!("| measure | result | target |");
    println!("|---|---|---|");

    // 1. Allocation from all three nodes at once.
    let allocations = [
        ("ba4p", false, Spawn::Posix),
        ("ba6p", true, Spawn::Posix),
        ("ba4f", false, Spawn::Fork),
        ("ba6f", true, Spawn::Fork),
    ];
    for (tag, v6, spawn) in allocations.into_iter().filter(|_| phase("allocate")) {
        let per = if v6 { per_worker / 2 } else { per_worker };
        let t = allocate_in_parallel(tag, workers, per, v6, spawn);
        let requests = t.latencies.len();
        let what = if v6 {
            "1 IPv4 + 1 IPv6 each"
        } else {
            "1 IPv4 each"
        };
        let how = spawn.label();
        println!(
            "| allocate throughput, 3 nodes × {workers} plugin processes at a time on etcd ({how}), {what}: {} addresses in {requests} requests | {:.0} addresses/s ({:.0} requests/s) | ≥ 500 addresses/s |",
            t.addresses,
            t.addresses as f64 / t.wall.as_secs_f64(),
            requests as f64 / t.wall.as_secs_f64()
        );
        println!(
            "| the same workers starting `/bin/cat` instead, just before: the spawn floor | {:.0} processes/s | — |",
            t.floor
        );
        println!(
            "| of which: duplicates; addresses in use as the store counts them; allocate median / p99 | {} duplicates; {} in use; {} / {} | 0 |",
            t.addresses - t.distinct,
            t.in_store,
            ms(median(&t.latencies)),
            ms(p99(&t.latencies))
        );
        assert_eq!(t.distinct, t.addresses, "an address was handed out twice");
        assert_eq!(t.in_store, t.addresses as u64, "the store disagrees");
    }

    if !phase("isolate") {
        return;
    }
    // 2. SQLite, one node, for comparison: isolate as the node fills up.
    let sqlite = Agents::new("bsqlite", 1, Datastore::Sqlite);
    let (sqlite_containers, sqlite_times) = sqlite.fill(1, n);
    teardown(sqlite, sqlite_containers, |c| c.container.pid());

    // 3. etcd, three nodes: propagation on an empty cluster, isolate as
    // node 1 fills up, propagation again at 1,000.
    let agents = Agents::new("betcd", 3, Datastore::Etcd);
    let (member, _, _) = agents.launch(2, "member", WEB, None);
    let probe = Probe::new(agents.ns(2));
    let (empty, samples) = propagation(&agents, &probe, prop_samples, 200);
    for c in &samples {
        agents.finish(1, c);
    }
    drop(samples);
    let (mut containers, times) = agents.fill(1, n);
    // Where the time at 1,000 goes: one listing of every endpoint from
    // etcd (each policy and fabric run makes one, on every node), and
    // isolate with the other two nodes' daemons paused.
    let (listing, listed) = list_endpoints_from(&agents, if quick { 3 } else { 10 });
    for d in &agents.daemons[1..] {
        d.signal(libc::SIGSTOP);
    }
    let (paused, paused_times): (Vec<Launched>, Vec<Duration>) = (0..w)
        .map(|i| {
            let (c, _, took) =
                agents.launch(1, &format!("alone-{i}"), &format!("g{}", i % 100), None);
            (c, took)
        })
        .unzip();
    for d in &agents.daemons[1..] {
        d.signal(libc::SIGCONT);
    }
    containers.extend(paused);
    let (full, samples) = propagation(&agents, &probe, prop_samples, 220);
    containers.extend(samples);

    for (label, idx) in [("0", 0), ("100", at(100)), ("1,000", at(1000))] {
        println!(
            "| isolate on etcd (3 nodes, daemons), whole process, median / p99 of {w} at {label} endpoints on the node | {} | ≤ 15 ms at 1,000 |",
            window_stats(&times, idx, w)
        );
    }
    for (label, idx) in [("0", 0), ("100", at(100)), ("1,000", at(1000))] {
        println!(
            "| the same on SQLite (one node), same run: median / p99 at {label} | {} | — |",
            window_stats(&sqlite_times, idx, w)
        );
    }
    println!(
        "| isolate on etcd at 1,000 with node 2's and node 3's daemons paused (SIGSTOP): median / p99 of {w} | {} | — |",
        window_stats(&paused_times, 0, w)
    );
    println!(
        "| one listing of every endpoint from etcd ({listed} endpoints, in process on node 1), median | {} | — |",
        ms(listing)
    );
    println!(
        "| isolate at 1,000: etcd median ÷ SQLite median | {:.2}× | — |",
        window(&times, at(1000), w).as_secs_f64()
            / window(&sqlite_times, at(1000), w).as_secs_f64()
    );
    report_propagation("empty cluster", &empty);
    report_propagation(&format!("{} endpoints on node 1", n), &full);
    for (label, t) in [("etcd", &times), ("sqlite", &sqlite_times)] {
        let per: Vec<String> = t.chunks(w.max(1) * 2).map(|c| ms(median(c))).collect();
        eprintln!("isolate medians by {} ({label}): {}", w * 2, per.join(", "));
    }
    drop(probe);
    containers.push(member);
    teardown(agents, containers, |c| c.container.pid());
}
