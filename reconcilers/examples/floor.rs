//! The endpoint reconciler's floor, per action: one long-lived process
//! makes every endpoint of a node filling up to `FLOOR_N` (default 1,050)
//! containers, then removes the last `FLOOR_W` (default 50) one by one, and
//! prints the median time of each kind of action (from the applier's
//! `applied took_us` trace events) and of each stage of `ensure` in the
//! first and the last window, plus the removal medians.
//!
//! Measurement only (BENCHMARKS.md's "floor"); runs as root inside test
//! namespaces it makes and removes (TESTING.md). Knobs for experiments:
//! `FLOOR_V4_ONLY=1` gives the endpoints IPv4 addresses only, and
//! `FLOOR_NODE_SYSCTL=key=value` is set in the node namespace first (e.g.
//! `net.ipv6.conf.default.disable_ipv6=1`, to see what the host veths' IPv6
//! state costs). `FLOOR_REMOVE` changes the removal: `batch` deletes the
//! last window in one unregister batch (`delete_host_links`), `v6off`
//! turns IPv6 off on each host link first, `container` deletes eth0 from
//! the container's side first (through a process).
//!
//!     cargo run --release -p reconcilers --example floor

use reconcilers::endpoint::{host_ifname, EndpointDataplane, EndpointSpec};
use reconcilers::NetnsRef;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use testsupport::{Container, Node};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// (kind, microseconds) of every `applied` / `stage` event since the last take.
static SEEN: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

/// Collects the reconciler's timing events; nothing else.
struct Collect;

#[derive(Default)]
struct Fields {
    action: Option<String>,
    stage: Option<String>,
    took_us: Option<u64>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "took_us" {
            self.took_us = Some(value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "stage" {
            self.stage = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "action" => self.action = Some(kind(&format!("{value:?}"))),
            "stage" => self.stage = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl Subscriber for Collect {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target().starts_with("reconcilers")
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut f = Fields::default();
        e.record(&mut f);
        let name = f.action.or(f.stage.map(|s| format!("[stage] {s}")));
        if let (Some(name), Some(us)) = (name, f.took_us) {
            SEEN.lock().unwrap().push((name, us));
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// An action's description with the interface name and addresses taken
/// out, so that one kind of action reads the same for every endpoint.
fn kind(action: &str) -> String {
    action
        .split(' ')
        .map(|w| {
            if let Some(i) = w.find("/cali") {
                let rest = &w[i + 5..];
                let tail = rest.find('/').map(|j| &rest[j..]).unwrap_or("");
                format!("{}/caliX{tail}", &w[..i])
            } else if w.starts_with("cali") && w.len() == 15 {
                "caliX".to_string()
            } else if let Some((a, _)) = w
                .split_once('/')
                .filter(|_| w.contains('.') || w.contains(':'))
            {
                match a.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(v)) if v.octets()[0] == 198 => "V4".into(),
                    Ok(std::net::IpAddr::V6(v)) if v.segments()[0] == 0x2001 => "V6".into(),
                    _ => w.to_string(),
                }
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2] as f64 / 1000.0
}

fn med_ms(v: &[Duration]) -> f64 {
    let mut v: Vec<u64> = v.iter().map(|d| d.as_micros() as u64).collect();
    median(&mut v)
}

fn main() {
    if !testsupport::require_root() {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("FLOOR_N", 1050);
    let w = env("FLOOR_W", 50);
    let v4_only = std::env::var("FLOOR_V4_ONLY").is_ok();
    tracing::subscriber::set_global_default(Collect).unwrap();

    let node = Node::new("floorx", 1);
    if let Ok(kv) = std::env::var("FLOOR_NODE_SYSCTL") {
        node.ns.exec_ok(&["sysctl", "-qw", &kv]);
    }
    let containers: Vec<Container> = (0..n).map(|_| Container::new(&node.ns)).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Per container: every event of its ensure.
    let (per, times, removals) = node.ns.run(|| {
        rt.block_on(async {
            let dp = EndpointDataplane::new().unwrap();
            let mut per: Vec<Vec<(String, u64)>> = Vec::with_capacity(n);
            let mut times = Vec::with_capacity(n);
            for (i, c) in containers.iter().enumerate() {
                let spec = EndpointSpec {
                    container_id: format!("floor-{i}"),
                    netns: NetnsRef {
                        pid: c.pid(),
                        inode: c.inode(),
                    },
                    ipv4: vec![Ipv4Addr::from(0xc612_0000 + i as u32 + 1)],
                    ipv6: if v4_only {
                        vec![]
                    } else {
                        vec![Ipv6Addr::from(
                            0x2001_0db8_0001_0000_0000_0000_0000_0000u128 + i as u128 + 1,
                        )]
                    },
                };
                let start = Instant::now();
                dp.ensure(&spec, false).await.unwrap();
                times.push(start.elapsed());
                per.push(std::mem::take(&mut *SEEN.lock().unwrap()));
            }
            let mut removals = Vec::with_capacity(w);
            let mode = std::env::var("FLOOR_REMOVE").unwrap_or_default();
            if mode == "batch" {
                // All of the last window in one unregister batch; each
                // removal is counted as the batch's time divided by its size.
                let inv = dp.inventory().await.unwrap();
                let links: Vec<(String, u32)> = (n - w..n)
                    .map(|i| {
                        let name = host_ifname(&format!("floor-{i}"));
                        let index = inv.links[&name].index;
                        (name, index)
                    })
                    .collect();
                let start = Instant::now();
                dp.delete_host_links(&links).await.unwrap();
                let took = start.elapsed();
                eprintln!("batch of {w}: {:.3} ms", took.as_secs_f64() * 1e3);
                removals = vec![took / w as u32; w];
            } else {
                for i in (n - w..n).rev() {
                    let id = format!("floor-{i}");
                    let start = Instant::now();
                    match mode.as_str() {
                        // IPv6 off on the host link first (addresses and
                        // routes go then), to see what the delete costs without.
                        "v6off" => std::fs::write(
                            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", host_ifname(&id)),
                            "1",
                        )
                        .unwrap(),
                        // From the container's side (a process: subtract
                        // the `spawn` median printed below).
                        "container" => {
                            let pid = containers[i].pid().to_string();
                            let ok = std::process::Command::new("nsenter")
                                .args(["-t", &pid, "-n", "ip", "link", "del", "eth0"])
                                .status()
                                .unwrap()
                                .success();
                            assert!(ok);
                        }
                        _ => {}
                    }
                    dp.remove(&id, false).await.unwrap();
                    removals.push(start.elapsed());
                }
                if mode == "container" {
                    let mut spawn = vec![];
                    for c in &containers[..w] {
                        let pid = c.pid().to_string();
                        let start = Instant::now();
                        std::process::Command::new("nsenter")
                            .args(["-t", &pid, "-n", "ip", "link", "show", "lo"])
                            .output()
                            .unwrap();
                        spawn.push(start.elapsed());
                    }
                    eprintln!("spawn median {:.3} ms", med_ms(&spawn));
                }
            }
            SEEN.lock().unwrap().clear();
            (per, times, removals)
        })
    });

    let windows = [(0usize, "first"), (n.saturating_sub(w), "last")];
    let mut table: BTreeMap<String, [Vec<u64>; 2]> = BTreeMap::new();
    for (k, (from, _)) in windows.iter().enumerate() {
        for events in &per[*from..(*from + w).min(n)] {
            for (name, us) in events {
                table.entry(name.clone()).or_default()[k].push(*us);
            }
        }
    }
    println!("| action | first {w} (ms) | last {w} of {n} (ms) | count/endpoint |");
    println!("|---|---|---|---|");
    for (name, [a, b]) in table.iter_mut() {
        let count = a.len() as f64 / w as f64;
        println!(
            "| {name} | {:.3} | {:.3} | {count:.1} |",
            median(a),
            median(b)
        );
    }
    let first = med_ms(&times[..w.min(n)]);
    let last = med_ms(&times[n.saturating_sub(w)..]);
    println!(
        "| **ensure, whole** | {first:.3} | {last:.3} | growth {:.2}× |",
        last / first
    );
    let chunks: Vec<String> = times
        .chunks(100)
        .map(|c| format!("{:.2}", med_ms(c)))
        .collect();
    println!("medians per 100: {}", chunks.join(", "));
    println!(
        "removal, one by one, median of the last {w}: {:.3} ms",
        med_ms(&removals)
    );
    // Wait (bounded) until the kernel has torn the node's veths down, so
    // that a next run does not compete with it for the rtnl lock.
    let pids: Vec<u32> = containers.iter().map(|c| c.pid()).collect();
    // The runtime owns the aborted netlink tasks' sockets, which pin the
    // node namespace until it goes.
    drop(rt);
    drop(node);
    let gone = testsupport::wait_no_eth0(&pids, Duration::from_secs(120));
    eprintln!(
        "node namespace torn down in {:.0} ms",
        gone.as_secs_f64() * 1e3
    );
    drop(containers);
}
