//! A simulated Mesos agent for the dataplane tests: a node namespace (with
//! an agent address and a gateway, see `testsupport::Node`), a throw-away
//! store, the real binary run inside the node namespace, and containers
//! launched through the real net-modules protocol.

use super::{check_answer, run, Reply, Running, TestStore};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testsupport::{Container, Node};

/// One container as the agent launched it.
pub struct Launched {
    /// The container process and namespace.
    pub container: Container,
    /// Its Mesos container id.
    pub id: String,
    /// Its allocation uid.
    pub uid: String,
    /// Its IPv4 address.
    pub v4: IpAddr,
    /// Its IPv6 address.
    pub v6: IpAddr,
}

/// The agent: a node namespace and the store its processes use.
pub struct Agent {
    /// The store and environment.
    pub store: TestStore,
    /// The node namespace (replaceable, for the reboot test).
    pub node: Node,
}

impl Agent {
    /// A node numbered `x` with the test pools and `extra` environment.
    pub fn new(tag: &str, x: u8) -> Agent {
        Agent {
            store: TestStore::with_pools(),
            node: Node::new(tag, x),
        }
    }

    /// The binary inside the node namespace, with the store's environment.
    pub fn command(&self) -> Command {
        self.store.command_in(self.node.ns.name())
    }

    /// Sends one request to the plugin inside the node namespace.
    pub fn plugin(&self, request: &Value) -> Reply {
        let out = run(self.command(), request.to_string().as_bytes());
        check_answer(&out).unwrap_or_else(|e| panic!("{e}\nrequest: {request}"))
    }

    /// A request that must succeed.
    pub fn plugin_ok(&self, request: &Value) -> Reply {
        let reply = self.plugin(request);
        assert!(reply.is_ok(), "{request} answered {}", reply.answer);
        reply
    }

    /// Starts a request without waiting for its answer.
    pub fn plugin_spawn(&self, request: &Value) -> Running {
        TestStore::spawn(self.command(), request.to_string().as_bytes())
    }

    /// Runs an operator command inside the node namespace; returns
    /// (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run(cmd, b"");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `status -o json`, parsed.
    pub fn status(&self) -> Value {
        let (ok, out, err) = self.cli(&["status", "-o", "json"]);
        assert!(ok, "status failed: {err}");
        serde_json::from_str(&out).expect("status -o json is JSON")
    }

    /// Allocates and isolates a new container (`n` names it).
    pub fn launch(&self, n: usize, netgroups: &[&str]) -> Launched {
        let container = Container::new(&self.node.ns);
        let (uid, id) = (format!("task-{n}"), format!("container-{n}"));
        let reply = self.plugin_ok(&json!({"command": "allocate", "args": {
            "hostname": "agent", "uid": uid, "num_ipv4": 1, "num_ipv6": 1, "netgroups": netgroups}}));
        let (v4, v6) = (reply.addrs("ipv4")[0], reply.addrs("ipv6")[0]);
        self.plugin_ok(&isolate(&id, container.pid(), v4, v6, netgroups));
        Launched {
            container,
            id,
            uid,
            v4,
            v6,
        }
    }

    /// Releases and cleans up a container, as net-modules does.
    pub fn finish(&self, c: &Launched) {
        self.plugin_ok(
            &json!({"command": "release", "args": {"ips": [c.v4.to_string(), c.v6.to_string()]}}),
        );
        self.plugin_ok(
            &json!({"command": "cleanup", "args": {"hostname": "agent", "container_id": c.id}}),
        );
    }

    /// Our host interfaces in the node namespace (`cali*`).
    pub fn host_links(&self) -> BTreeSet<String> {
        self.node
            .ns
            .ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("cali"))
            .map(String::from)
            .collect()
    }

    /// Routes with our protocol in the node namespace, as "dst dev".
    pub fn our_routes(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for fam in ["-4", "-6"] {
            let routes = self.node.ns.ip_json(&[fam, "route", "show", "proto", "81"]);
            for r in routes.as_array().unwrap() {
                out.insert(format!(
                    "{} dev {}",
                    r["dst"].as_str().unwrap(),
                    r["dev"].as_str().unwrap()
                ));
            }
        }
        out
    }

    /// What our nftables table in the node namespace holds for endpoints:
    /// per-endpoint chains (`chain NAME`) and their rules (`rule CHAIN:
    /// COMMENT`), and every set or map element (`SET: ELEMENT`). Empty when
    /// there is no table.
    pub fn policy_entries(&self) -> BTreeSet<String> {
        let out = self
            .node
            .ns
            .exec(&["nft", "-j", "list", "table", "inet", "calico-mesos"])
            .expect("nft runs");
        if !out.status.success() {
            return BTreeSet::new();
        }
        let listing: Value = serde_json::from_slice(&out.stdout).expect("nft -j is JSON");
        let mut entries = BTreeSet::new();
        for item in listing["nftables"].as_array().unwrap() {
            if let Some(name) = item["chain"]["name"].as_str() {
                if name.starts_with("ep-") {
                    entries.insert(format!("chain {name}"));
                }
            }
            let rule = &item["rule"];
            if let Some(chain) = rule["chain"].as_str().filter(|c| c.starts_with("ep-")) {
                entries.insert(format!("rule {chain}: {}", rule["comment"]));
            }
            for kind in ["set", "map"] {
                let object = &item[kind];
                for e in object["elem"].as_array().into_iter().flatten() {
                    entries.insert(format!("{}: {e}", object["name"].as_str().unwrap()));
                }
            }
        }
        entries
    }

    /// Starts the daemon in the node namespace and waits (bounded) until it
    /// listens.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// Like [`Self::start_daemon`], with extra environment.
    pub fn start_daemon_with(&self, env: &[(&str, &str)]) -> Daemon {
        let log = self.store.path().join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let mut cmd = self.command();
        cmd.arg("daemon")
            .env("CALICO_MESOS_LOG_LEVEL", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"));
        let child = cmd.spawn().expect("spawn the daemon");
        let socket = self.store.run_dir().join("daemon.sock");
        let mut d = Daemon { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok()) {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("the daemon exited ({status}): {}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not listen within 10 s: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }
}

/// An `isolate` request.
pub fn isolate(id: &str, pid: u32, v4: IpAddr, v6: IpAddr, netgroups: &[&str]) -> Value {
    json!({"command": "isolate", "args": {"hostname": "agent", "container_id": id, "pid": pid,
        "ipv4_addrs": [v4.to_string()], "ipv6_addrs": [v6.to_string()], "netgroups": netgroups}})
}

/// A running daemon; SIGKILLed on drop if still running.
pub struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Wraps a spawned daemon process and the file its stderr goes to.
    pub fn new(child: Child, log: std::path::PathBuf) -> Daemon {
        Daemon { child, log }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the daemon (e.g. SIGSTOP to freeze it).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// The exit status when the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then a bounded wait; true when it exited with status 0.
    pub fn stop(mut self) -> bool {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 5 ms until it holds or `limit` passes; returns the
/// time it took, or None.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
