//! A simulated cluster for the multi-node tests: nodes on one L2 fabric
//! (`testsupport::Fabric`), one shared datastore (any URL the binary
//! accepts, e.g. an etcd in the fabric's switch namespace), the real binary
//! run inside each node namespace with that node's name, run directory and
//! fabric addresses, and containers launched through the net-modules
//! protocol.

use super::agent::{isolate, Daemon, Launched};
use super::{check_answer, run, Reply, BIN, V4_POOL, V6_POOL};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testsupport::{Container, Fabric, FabricNode};

/// The cluster: nodes, the datastore's environment and a temporary
/// directory for run directories, configuration and logs.
pub struct Cluster {
    /// The nodes (node x at index x - 1) and the switch.
    pub fabric: Fabric,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// `count` nodes whose processes use the datastore that `env` names
    /// (`CALICO_MESOS_DATASTORE` and any other setting). Nodes forward
    /// packets, as a Calico host must.
    pub fn new(tag: &str, count: u8, env: &[(&str, &str)]) -> Cluster {
        let fabric = Fabric::new(tag, count);
        fabric.enable_forwarding();
        let dir = tempfile::Builder::new()
            .prefix("calico-mesos-cluster-test-")
            .tempdir()
            .expect("create temp dir");
        std::fs::write(dir.path().join("config.yaml"), "").expect("write config");
        Cluster {
            fabric,
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The same cluster with more environment for every process.
    pub fn with_env(mut self, env: &[(&str, &str)]) -> Cluster {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Adds the IPv4 and IPv6 test pools (from node 1).
    pub fn with_pools(self) -> Cluster {
        for pool in [V4_POOL, V6_POOL] {
            let (ok, _, err) = self.cli(1, &["pool", "add", pool]);
            assert!(ok, "pool add {pool}: {err}");
        }
        self
    }

    /// Node `x`'s name.
    pub fn name(x: u8) -> String {
        format!("node-{x}")
    }

    /// Node `x`.
    pub fn node(&self, x: u8) -> &FabricNode {
        &self.fabric.nodes[usize::from(x) - 1]
    }

    /// Node `x`'s run directory.
    pub fn run_dir(&self, x: u8) -> PathBuf {
        self.dir.path().join(format!("run-{x}"))
    }

    /// The binary inside node `x`'s namespace, as that node.
    pub fn command(&self, x: u8) -> Command {
        let node = self.node(x);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node.ns.name(), BIN]);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CALICO_MESOS_") || name.starts_with("ETCD_") {
                cmd.env_remove(name.as_ref());
            }
        }
        cmd.env("CALICO_MESOS_CONFIG", self.dir.path().join("config.yaml"))
            .env("CALICO_MESOS_RUN_DIR", self.run_dir(x))
            .env("CALICO_MESOS_NODENAME", Self::name(x))
            .env(
                "CALICO_MESOS_NODE_ADDRESSES",
                format!("{},{}", node.v4, node.v6),
            )
            .env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// One plugin request on node `x`; the answer must obey the protocol.
    pub fn plugin(&self, x: u8, request: &Value) -> Reply {
        let out = run(self.command(x), request.to_string().as_bytes());
        check_answer(&out).unwrap_or_else(|e| panic!("{e}\nrequest: {request}"))
    }

    /// A request on node `x` that must succeed.
    pub fn plugin_ok(&self, x: u8, request: &Value) -> Reply {
        let reply = self.plugin(x, request);
        assert!(
            reply.is_ok(),
            "node {x}: {request} answered {}",
            reply.answer
        );
        reply
    }

    /// An operator command on node `x`: (success, stdout, stderr).
    pub fn cli(&self, x: u8, args: &[&str]) -> (bool, String, String) {
        let mut cmd = self.command(x);
        cmd.args(args);
        let out = run(cmd, b"");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Allocates and isolates a new container on node `x` (`n` names it,
    /// unique in the cluster).
    pub fn launch(&self, x: u8, n: usize, netgroups: &[&str]) -> Launched {
        let container = Container::new(&self.node(x).ns);
        let (uid, id) = (format!("task-{n}"), format!("container-{n}"));
        let reply = self.plugin_ok(
            x,
            &json!({"command": "allocate", "args": {
            "hostname": "agent", "uid": uid, "num_ipv4": 1, "num_ipv6": 1, "netgroups": netgroups}}),
        );
        let (v4, v6) = (reply.addrs("ipv4")[0], reply.addrs("ipv6")[0]);
        self.plugin_ok(x, &isolate(&id, container.pid(), v4, v6, netgroups));
        Launched {
            container,
            id,
            uid,
            v4,
            v6,
        }
    }

    /// Releases and cleans up a container on node `x`, as net-modules does.
    pub fn finish(&self, x: u8, c: &Launched) {
        self.plugin_ok(
            x,
            &json!({"command": "release", "args": {"ips": [c.v4.to_string(), c.v6.to_string()]}}),
        );
        self.plugin_ok(
            x,
            &json!({"command": "cleanup", "args": {"hostname": "agent", "container_id": c.id}}),
        );
    }

    /// Routes of ours with a gateway in node `x` (fabric routes), as
    /// "dst via gw".
    pub fn fabric_routes(&self, x: u8) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for fam in ["-4", "-6"] {
            let routes = self
                .node(x)
                .ns
                .ip_json(&[fam, "route", "show", "proto", "81"]);
            for r in routes.as_array().unwrap() {
                if let Some(gw) = r["gateway"].as_str() {
                    out.insert(format!("{} via {gw}", r["dst"].as_str().unwrap()));
                }
            }
        }
        out
    }

    /// Starts the daemon on node `x` and waits (bounded) until it listens.
    pub fn start_daemon(&self, x: u8) -> Daemon {
        let log = self.dir.path().join(format!(
            "daemon-{x}-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = self.command(x);
        cmd.arg("daemon")
            .env("CALICO_MESOS_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"));
        let child = cmd.spawn().expect("spawn the daemon");
        let socket = self.run_dir(x).join("daemon.sock");
        let mut d = Daemon::new(child, log);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok()) {
            if let Some(status) = d.exited() {
                panic!("the daemon of node {x} exited ({status}): {}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon of node {x} did not listen within 15 s: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }
}
