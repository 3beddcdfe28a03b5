//! Shared helpers of the plugin tests (`tests/plugin_*.rs`): a throw-away
//! SQLite store, the real `calico-mesos` binary spawned exactly as
//! net-modules does it (no arguments, one request on stdin), the protocol
//! checks every answer must pass, and a reader of `store dump` that checks
//! the IPAM records agree with each other.
//!
//! Safety: the plugin_* tests never send a *valid* `isolate` (that
//! configures a real network namespace); wherever an isolate needs a
//! well-typed pid they use [`NO_SUCH_PID`], above the kernel's pid limit.
//! The dataplane tests (`tests/dataplane_*.rs`) run the binary inside test
//! namespaces only ([`TestStore::command_in`]).
#![allow(dead_code)]

pub mod agent;
pub mod cluster;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test, as cargo built it for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_calico-mesos");
/// The IPv4 test pool.
pub const V4_POOL: &str = "198.18.0.0/16";
/// The IPv6 test pool.
pub const V6_POOL: &str = "2001:db8:1::/64";
/// net-modules reads at most this much of the answer.
pub const MAX_ANSWER: usize = 40 * 1024;
/// Longest any single process may run before the test fails.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
/// A well-typed pid that can never be a live process (above pid_max's
/// ceiling of 2^22), for isolate requests that must fail validation.
pub const NO_SUCH_PID: i64 = 2_147_483_647;

/// A fresh store in a temporary directory (removed on drop), and the
/// environment that points the binary at it.
pub struct TestStore {
    dir: tempfile::TempDir,
    url: String,
    config: PathBuf,
    /// The node name processes run as unless told otherwise.
    pub node: String,
}

impl TestStore {
    /// An empty store: no pools.
    pub fn empty() -> TestStore {
        let dir = tempfile::Builder::new()
            .prefix("calico-mesos-plugin-test-")
            .tempdir()
            .expect("create temp dir");
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        // An explicit, empty config file: the machine's
        // /etc/calico-mesos/config.yaml (if any) must not leak in.
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, "").expect("write config");
        TestStore {
            dir,
            url,
            config,
            node: "test-node".to_string(),
        }
    }

    /// A store with the IPv4 and IPv6 test pools (default block sizes).
    pub fn with_pools() -> TestStore {
        let store = TestStore::empty();
        store.cli(&["pool", "add", V4_POOL]);
        store.cli(&["pool", "add", V6_POOL]);
        store
    }

    /// The temporary directory.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The binary with this store's environment, running as `node`.
    pub fn command_on(&self, node: &str) -> Command {
        self.with_env(Command::new(BIN), node)
    }

    /// The binary with this store's environment, run inside the network
    /// namespace `netns` (`ip netns exec`), as on a simulated agent.
    pub fn command_in(&self, netns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, BIN]);
        self.with_env(cmd, &self.node)
    }

    /// The run directory (sockets, the node lock) processes use.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Sets this store's environment (and no other CALICO_MESOS_*) on `cmd`.
    pub fn with_env(&self, mut cmd: Command, node: &str) -> Command {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CALICO_MESOS_") {
                cmd.env_remove(&name);
            }
        }
        cmd.env("CALICO_MESOS_CONFIG", &self.config)
            .env("CALICO_MESOS_DATASTORE", &self.url)
            .env("CALICO_MESOS_RUN_DIR", self.run_dir())
            .env("CALICO_MESOS_NODENAME", node)
            .env("RUST_BACKTRACE", "1");
        cmd
    }

    /// The binary with this store's environment.
    pub fn command(&self) -> Command {
        self.command_on(&self.node)
    }

    /// Run an operator command; it must succeed. Returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = self.command();
        cmd.args(args);
        let out = run(cmd, b"");
        assert!(
            out.status.success(),
            "calico-mesos {args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("CLI output is UTF-8")
    }

    /// Send raw bytes to the plugin as `node`; the answer must obey the
    /// protocol (see [`check_answer`]).
    pub fn send_raw_on(&self, node: &str, input: &[u8]) -> Reply {
        let out = run(self.command_on(node), input);
        check_answer(&out).unwrap_or_else(|e| panic!("{e}\nrequest: {}", preview(input)))
    }

    /// Send raw bytes to the plugin.
    pub fn send_raw(&self, input: &[u8]) -> Reply {
        self.send_raw_on(&self.node, input)
    }

    /// Send one JSON request to the plugin.
    pub fn send(&self, request: &Value) -> Reply {
        self.send_raw(request.to_string().as_bytes())
    }

    /// Send one JSON request as `node`.
    pub fn send_on(&self, node: &str, request: &Value) -> Reply {
        self.send_raw_on(node, request.to_string().as_bytes())
    }

    /// Send a request that must succeed.
    pub fn ok(&self, request: &Value) -> Reply {
        let reply = self.send(request);
        assert!(
            reply.is_ok(),
            "request failed: {}\nrequest: {request}",
            reply.answer
        );
        reply
    }

    /// Start a process without waiting for it.
    pub fn spawn(cmd: Command, input: &[u8]) -> Running {
        Running::start(cmd, input)
    }

    /// Start the plugin without waiting for it (the crash tests kill it).
    pub fn spawn_on(&self, node: &str, input: &[u8]) -> Running {
        Running::start(self.command_on(node), input)
    }

    /// `store dump`, verbatim: the revision and every key.
    pub fn dump(&self) -> String {
        self.cli(&["store", "dump"])
    }

    /// `store dump`, parsed.
    pub fn state(&self) -> State {
        State::parse(&self.dump())
    }

    /// Addresses in use over all pools, from `ipam show -o json`.
    pub fn used(&self) -> u64 {
        let text = self.cli(&["ipam", "show", "-o", "json"]);
        let usage: Value = serde_json::from_str(&text).expect("ipam show -o json is JSON");
        usage["pools"]
            .as_array()
            .expect("ipam show lists pools")
            .iter()
            .map(|p| p["used"].as_u64().expect("used is a count"))
            .sum()
    }
}

/// A plugin process that is running.
pub struct Running {
    child: Child,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
    writer: Option<JoinHandle<()>>,
}

impl Running {
    fn start(mut cmd: Command, input: &[u8]) -> Running {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn calico-mesos");
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A pipe holds 64 KiB: small requests are written at once, big ones
        // from a thread. Closing stdin ends the request. The plugin may stop
        // reading early (oversized input): a broken pipe is expected then.
        let writer = if input.len() <= 16 * 1024 {
            let _ = stdin.write_all(input);
            drop(stdin);
            None
        } else {
            let input = input.to_vec();
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            }))
        };
        let stdout = read_all(child.stdout.take().expect("piped stdout"));
        let stderr = read_all(child.stderr.take().expect("piped stderr"));
        Running {
            child,
            stdout,
            stderr,
            writer,
        }
    }

    /// SIGKILL the process (no effect once it has exited).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Wait (bounded) for the process to end and collect its output.
    pub fn finish(mut self) -> Output {
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        let mut pause = Duration::from_micros(100);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for calico-mesos") {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                let _ = self.child.wait();
                panic!("calico-mesos did not finish within {PROCESS_TIMEOUT:?}");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        };
        if let Some(writer) = self.writer.take() {
            writer.join().expect("stdin writer");
        }
        Output {
            status,
            stdout: self.stdout.join().expect("stdout reader"),
            stderr: self.stderr.join().expect("stderr reader"),
        }
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Run a command to completion (bounded), feeding it `input`.
pub fn run(cmd: Command, input: &[u8]) -> Output {
    Running::start(cmd, input).finish()
}

/// A protocol-conforming answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The exit status (0 or 1).
    pub code: i32,
    /// The answer object.
    pub answer: Value,
    /// stderr, for messages.
    pub stderr: String,
}

impl Reply {
    /// True when `error` is null.
    pub fn is_ok(&self) -> bool {
        self.answer["error"].is_null()
    }

    /// The error text, if any.
    pub fn error(&self) -> Option<&str> {
        self.answer["error"].as_str()
    }

    /// The addresses in the answer's `ipv4` or `ipv6` list.
    pub fn addrs(&self, field: &str) -> Vec<IpAddr> {
        self.answer[field]
            .as_array()
            .unwrap_or_else(|| panic!("answer has no {field} list: {}", self.answer))
            .iter()
            .map(|a| {
                a.as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("{field} holds a non-address: {a}"))
            })
            .collect()
    }

    /// Both lists of an allocate answer.
    pub fn all_addrs(&self) -> Vec<IpAddr> {
        let mut all = self.addrs("ipv4");
        all.extend(self.addrs("ipv6"));
        all
    }
}

/// Check one plugin run against the protocol: it exited (0 or 1, never by a
/// signal or a panic), stdout is exactly one JSON object and a newline, at
/// most 40 KiB, with an `error` that is null (exit 0) or a non-empty string
/// (exit 1).
pub fn check_answer(out: &Output) -> Result<Reply, String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let fail = |why: String| Err(format!("{why}\nstdout: {stdout}\nstderr: {stderr}"));
    if stderr.contains("panicked") {
        return fail("the plugin panicked".into());
    }
    let code = match out.status.code() {
        Some(code @ (0 | 1)) => code,
        _ => return fail(format!("unexpected exit status {}", out.status)),
    };
    if out.stdout.len() > MAX_ANSWER {
        return fail(format!(
            "answer is {} bytes, over net-modules' 40 KiB",
            out.stdout.len()
        ));
    }
    let Some(body) = out.stdout.strip_suffix(b"\n") else {
        return fail("stdout does not end with a newline".into());
    };
    if body.contains(&b'\n') {
        return fail("stdout holds more than one line".into());
    }
    let answer: Value = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) => return fail(format!("stdout is not JSON: {e}")),
    };
    let Some(object) = answer.as_object() else {
        return fail("the answer is not a JSON object".into());
    };
    match (object.get("error"), code) {
        (Some(Value::Null), 0) => {}
        (Some(Value::String(e)), 1) if !e.trim().is_empty() => {}
        (error, code) => {
            return fail(format!(
                "exit {code} with error {error:?}: want null with 0, a non-empty string with 1"
            ))
        }
    }
    Ok(Reply {
        code,
        answer,
        stderr,
    })
}

/// The start of some input, for messages.
pub fn preview(input: &[u8]) -> String {
    let text = String::from_utf8_lossy(&input[..input.len().min(200)]);
    if input.len() > 200 {
        format!("{text}… ({} bytes)", input.len())
    } else {
        text.into_owned()
    }
}

/// An `allocate` request.
pub fn allocate(uid: &str, num_ipv4: u32, num_ipv6: u32) -> Value {
    serde_json::json!({"command": "allocate", "args": {
        "hostname": "agent-1", "uid": uid, "num_ipv4": num_ipv4, "num_ipv6": num_ipv6,
    }})
}

/// A `release` of everything held under `uid`.
pub fn release_uid(uid: &str) -> Value {
    serde_json::json!({"command": "release", "args": {"uid": uid}})
}

/// A `release` of these addresses.
pub fn release_ips(ips: &[IpAddr]) -> Value {
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    serde_json::json!({"command": "release", "args": {"ips": ips}})
}

/// A small deterministic generator (SplitMix64) for random test schedules.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `PLUGIN_TEST_SEED` or the clock; prints the seed so a
    /// failing run can be repeated.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("PLUGIN_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: PLUGIN_TEST_SEED={seed}");
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An independent generator, for another thread.
    pub fn split(&mut self) -> Rng {
        Rng(self.next())
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// An address range: family, first address as a number, size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub network: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parse `198.18.0.0/26` or `2001:db8:1::/122`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = text.split_once('/')?;
        let network: IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let cidr = Cidr { network, prefix };
        (prefix <= cidr.max_prefix() && cidr.start() & cidr.host_mask() == 0).then_some(cidr)
    }

    fn max_prefix(&self) -> u8 {
        if self.network.is_ipv4() {
            32
        } else {
            128
        }
    }

    fn host_mask(&self) -> u128 {
        let bits = u32::from(self.max_prefix() - self.prefix);
        if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        }
    }

    /// The network address as a number.
    pub fn start(&self) -> u128 {
        to_number(self.network)
    }

    /// How many addresses it has (saturating for huge IPv6 ranges).
    pub fn size(&self) -> u128 {
        self.host_mask().saturating_add(1)
    }

    /// The address `offset` from the start.
    pub fn at(&self, offset: u128) -> IpAddr {
        match self.network {
            IpAddr::V4(_) => IpAddr::V4(((self.start() + offset) as u32).into()),
            IpAddr::V6(_) => IpAddr::V6((self.start() + offset).into()),
        }
    }

    /// True when `addr` is inside.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.network.is_ipv4()
            && to_number(addr) & !self.host_mask() == self.start()
    }

    /// The key segment the store uses: `198.18.0.0-26`.
    pub fn segment(&self) -> String {
        format!("{}-{}", self.network, self.prefix)
    }
}

fn to_number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The store's key escaping (bytes outside `[A-Za-z0-9._:-]` become `%XX`),
/// so the checks can predict keys for any uid or node name.
pub fn escape(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'-' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A parsed `store dump`.
#[derive(Debug, Clone)]
pub struct State {
    /// The store revision.
    pub revision: i64,
    /// Every key with its (JSON) value.
    pub keys: BTreeMap<String, Value>,
}

impl State {
    /// Parse the JSON lines of `store dump`.
    pub fn parse(dump: &str) -> State {
        let mut lines = dump.lines();
        let first: Value = serde_json::from_str(lines.next().expect("dump is not empty"))
            .expect("dump line 1 is JSON");
        let revision = first["revision"]
            .as_i64()
            .expect("dump starts with the revision");
        let keys = lines
            .map(|line| {
                let v: Value = serde_json::from_str(line).expect("dump lines are JSON");
                let key = v["key"].as_str().expect("dump line has a key").to_string();
                (key, v["value"].clone())
            })
            .collect();
        State { revision, keys }
    }

    /// Every handle: uid → addresses.
    pub fn handles(&self) -> BTreeMap<String, BTreeSet<IpAddr>> {
        self.keys
            .iter()
            .filter(|(k, _)| k.starts_with("handle/"))
            .map(|(k, v)| {
                let uid = v["uid"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{k} has no uid"))
                    .to_string();
                let addrs = v["addresses"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{k} has no addresses"))
                    .iter()
                    .map(|a| a.as_str().and_then(|s| s.parse().ok()).expect("address"))
                    .collect();
                (uid, addrs)
            })
            .collect()
    }

    /// Check that the IPAM records agree, and return every held address with
    /// its holder. Checked: blocks are well-formed and do not overlap, lie in
    /// their pool, and no address is allocated twice; every block allocation
    /// is in its uid's handle and every handle address is allocated to that
    /// uid in its block (so no address is in two handles); handles are not
    /// empty; the free-block index lists exactly the affine blocks with room.
    pub fn check_consistency(&self) -> Result<BTreeMap<IpAddr, String>, String> {
        let mut errors = Vec::new();
        let mut pools = Vec::new();
        for (key, value) in self.keys.iter().filter(|(k, _)| k.starts_with("pool/")) {
            match value["cidr"].as_str().and_then(Cidr::parse) {
                Some(cidr) => pools.push(cidr),
                None => errors.push(format!("{key}: bad cidr {}", value["cidr"])),
            }
        }
        let mut held: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut ranges: Vec<(bool, u128, u128, String)> = Vec::new();
        let mut with_room: BTreeSet<String> = BTreeSet::new();
        for (key, block) in self.keys.iter().filter(|(k, _)| k.starts_with("block/")) {
            let Some(cidr) = block["cidr"].as_str().and_then(Cidr::parse) else {
                errors.push(format!("{key}: bad cidr {}", block["cidr"]));
                continue;
            };
            if *key != format!("block/{}", cidr.segment()) {
                errors.push(format!("{key} holds block {}", cidr.segment()));
            }
            let pool = block["pool"].as_str().and_then(Cidr::parse);
            if !pool.is_some_and(|p| pools.contains(&p) && p.contains(cidr.network)) {
                errors.push(format!(
                    "{key}: its pool {} is not a pool holding it",
                    block["pool"]
                ));
            }
            ranges.push((
                cidr.network.is_ipv4(),
                cidr.start(),
                cidr.start() + cidr.size() - 1,
                key.clone(),
            ));
            let allocations = block["allocations"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for (offset, uid) in &allocations {
                let (Ok(offset), Some(uid)) = (offset.parse::<u128>(), uid.as_str()) else {
                    errors.push(format!("{key}: bad allocation {offset} → {uid}"));
                    continue;
                };
                if offset >= cidr.size() {
                    errors.push(format!("{key}: offset {offset} is outside the block"));
                    continue;
                }
                let addr = cidr.at(offset);
                if let Some(other) = held.insert(addr, uid.to_string()) {
                    errors.push(format!("{addr} is allocated twice ({other}, {uid})"));
                }
            }
            if let Some(node) = block["affinity"].as_str() {
                if (allocations.len() as u128) < cidr.size() {
                    let family = if cidr.network.is_ipv4() { "v4" } else { "v6" };
                    with_room.insert(format!(
                        "blockfree/{}/{family}/{}",
                        escape(node),
                        cidr.segment()
                    ));
                }
            }
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            if pair[0].0 == pair[1].0 && pair[1].1 <= pair[0].2 {
                errors.push(format!("blocks {} and {} overlap", pair[0].3, pair[1].3));
            }
        }
        let handles = self.handles();
        let mut in_handles: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (uid, addrs) in &handles {
            if !self.keys.contains_key(&format!("handle/{}", escape(uid))) {
                errors.push(format!("handle of {uid:?} is not at its key"));
            }
            if addrs.is_empty() {
                errors.push(format!("handle of {uid} is empty"));
            }
            for addr in addrs {
                if let Some(other) = in_handles.insert(*addr, uid) {
                    errors.push(format!("{addr} is in two handles ({other}, {uid})"));
                }
                match held.get(addr) {
                    Some(holder) if holder == uid => {}
                    Some(holder) => errors.push(format!(
                        "{addr} is in the handle of {uid} but allocated to {holder}"
                    )),
                    None => errors.push(format!(
                        "{addr} is in the handle of {uid} but not allocated in any block"
                    )),
                }
            }
        }
        for (addr, uid) in &held {
            if !handles.get(uid).is_some_and(|a| a.contains(addr)) {
                errors.push(format!(
                    "{addr} is allocated to {uid} but not in its handle"
                ));
            }
        }
        let index: BTreeSet<String> = self
            .keys
            .keys()
            .filter(|k| k.starts_with("blockfree/"))
            .cloned()
            .collect();
        for missing in with_room.difference(&index) {
            errors.push(format!("free-block index lacks {missing}"));
        }
        for stale in index.difference(&with_room) {
            errors.push(format!(
                "free-block index has {stale} for no block with room"
            ));
        }
        if errors.is_empty() {
            Ok(held)
        } else {
            Err(errors.join("\n"))
        }
    }
}
