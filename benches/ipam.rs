//! IPAM benchmarks (issue 2), printed as a Markdown table for BENCHMARKS.md:
//! - in-process allocation throughput on SQLite;
//! - whole-process `allocate` (spawn → answer) median and p99;
//! - store size and allocate cost with 50,000 addresses already allocated;
//! - in-process allocation on a real etcd (Debian's etcd-server on a free
//!   loopback port), reading the store directly (as a plugin process does)
//!   and through the daemon's replica of it (`store::mirror`).
//!
//! Run with `cargo bench --bench ipam`. Numbers are reported, never asserted.

mod common;

use calico_mesos::ipam::{self, IpPool, Request};
use calico_mesos::store::mirror::MirroredStore;
use calico_mesos::store::sqlite::SqliteStore;
use calico_mesos::store::{etcd::EtcdStore, EtcdOptions, Store};
use common::cpu_time;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn store(dir: &std::path::Path) -> SqliteStore {
    let path = dir.join("store.db");
    let store = SqliteStore::open(path.to_str().unwrap(), Duration::from_secs(5)).unwrap();
    add_pools(&store);
    store
}

fn add_pools(store: &dyn Store) {
    for cidr in ["198.18.0.0/16", "2001:db8:1::/64"] {
        ipam::add_pool(store, &IpPool::new(cidr.parse().unwrap(), None).unwrap()).unwrap();
    }
}

fn allocate_one(store: &dyn Store, uid: &str) {
    ipam::allocate(
        store,
        &Request {
            node: "bench",
            uid,
            num_ipv4: 1,
            ..Default::default()
        },
    )
    .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn in_process_throughput() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let n = 5_000;
    let start = Instant::now();
    for i in 0..n {
        allocate_one(&s, &format!("uid-{i}"));
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn whole_process(samples: usize) -> (Duration, Duration) {
    let dir = tempfile::tempdir().unwrap();
    drop(store(dir.path()));
    let datastore = format!("sqlite://{}/store.db", dir.path().display());
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let request = format!(
            r#"{{"command":"allocate","args":{{"hostname":"bench","uid":"p-{i}","num_ipv4":1,"num_ipv6":0}}}}"#
        );
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_calico-mesos"))
            .env("CALICO_MESOS_DATASTORE", &datastore)
            .env("CALICO_MESOS_NODENAME", "bench")
            .env("CALICO_MESOS_LOG_LEVEL", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        times.push(start.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// Allocate 50,000 addresses; compare the cost of the first and last 1,000.
fn at_scale() -> (Duration, Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let total = 50_000;
    let mut first = Duration::ZERO;
    let mut last = Duration::ZERO;
    for i in 0..total {
        let start = Instant::now();
        allocate_one(&s, &format!("uid-{i}"));
        let took = start.elapsed();
        if i < 1_000 {
            first += took;
        } else if i >= total - 1_000 {
            last += took;
        }
    }
    drop(s);
    let size: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    (first / 1_000, last / 1_000, size)
}

/// Sequential in-process allocations on etcd under a prefix of their own:
/// (wall time, this process's CPU time) per allocation.
fn on_etcd(etcd: &testsupport::etcd::Etcd, mirrored: bool, n: usize) -> (Duration, Duration) {
    let direct = EtcdStore::open(
        &[etcd.host_port()],
        false,
        &EtcdOptions {
            prefix: testsupport::etcd::unique_prefix("ipam-bench"),
            ..Default::default()
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let s: Box<dyn Store> = if mirrored {
        Box::new(MirroredStore::new(Arc::new(direct)).unwrap())
    } else {
        Box::new(direct)
    };
    add_pools(s.as_ref());
    allocate_one(s.as_ref(), "warm-up");
    let (start, cpu) = (Instant::now(), cpu_time(libc::RUSAGE_SELF));
    for i in 0..n {
        allocate_one(s.as_ref(), &format!("uid-{i}"));
    }
    (
        start.elapsed() / n as u32,
        (cpu_time(libc::RUSAGE_SELF) - cpu) / n as u32,
    )
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: keep it quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let throughput = in_process_throughput();
    let (median, p99) = whole_process(if quick { 20 } else { 500 });
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!("| in-process allocate throughput (SQLite, 1 IPv4 each) | {throughput:.0} allocations/s | ≥ 5,000/s |");
    println!(
        "| whole-process allocate (spawn → answer) median | {} | ≤ 3 ms |",
        ms(median)
    );
    println!("| whole-process allocate p99 | {} | — |", ms(p99));
    let etcd = testsupport::etcd::Etcd::start();
    let n = if quick { 20 } else { 1_000 };
    for (mirrored, how) in [
        (false, "read directly"),
        (true, "through the daemon's replica"),
    ] {
        let (wall, cpu) = on_etcd(&etcd, mirrored, n);
        println!(
            "| in-process allocate on etcd (1 IPv4 each, {n} in a row), {how}: per allocation, wall / CPU of this process | {} / {} | — |",
            ms(wall),
            ms(cpu)
        );
    }
    if quick {
        return;
    }
    let (first, last, size) = at_scale();
    println!(
        "| allocate, mean of the first 1,000 of 50,000 | {} | — |",
        ms(first)
    );
    println!(
        "| allocate, mean of the last 1,000 of 50,000 | {} ({:.2}× the first) | no growth |",
        ms(last),
        last.as_secs_f64() / first.as_secs_f64()
    );
    println!(
        "| store size with 50,000 addresses allocated | {:.1} MiB ({:.0} bytes/address) | — |",
        size as f64 / 1048576.0,
        size as f64 / 50_000.0
    );
}
