//! What the benches share: the binary run inside a node namespace as an
//! agent runs it, timed whole-process calls, the daemon guard, the
//! statistics the tables print, and the teardown that waits for the
//! kernel. Each bench uses a part of it.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testsupport::Netns;

/// The binary under measure, as cargo built it for this bench.
pub const BIN: &str = env!("CARGO_BIN_EXE_calico-mesos");

/// `program`, run inside `node`'s network namespace (setns before exec,
/// as an agent in its own namespace runs it, without `ip netns exec`'s
/// own cost).
pub fn in_netns(program: &str, node: &Netns) -> Command {
    let ns = File::open(node.path()).unwrap();
    let mut cmd = Command::new(program);
    // SAFETY: between fork and exec we only call setns(2), which is
    // async-signal-safe; `ns` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// How a bench starts the processes it times (`BENCH_SPAWN=fork|posix`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Spawn {
    /// A fork of the whole many-threaded bench that enters the namespace
    /// before exec: what Mesos' libprocess does (it forks), paying for a
    /// copy of the parent's page tables. The default.
    Fork,
    /// posix_spawn (a `CLONE_VM | CLONE_VFORK` clone, no copy of the bench)
    /// from a thread that entered the node's namespace: how a runtime
    /// written in Go (containerd, the CNI callers) or with posix_spawn
    /// starts a plugin.
    Posix,
}

impl Spawn {
    /// `BENCH_SPAWN`, [`Spawn::Fork`] when unset.
    pub fn from_env() -> Spawn {
        match std::env::var("BENCH_SPAWN").as_deref() {
            Err(_) | Ok("fork") => Spawn::Fork,
            Ok("posix") => Spawn::Posix,
            Ok(other) => panic!("BENCH_SPAWN={other:?}: expected fork or posix"),
        }
    }

    /// How the table names it.
    pub fn label(self) -> &'static str {
        match self {
            Spawn::Posix => "posix_spawn from a thread in the node's namespace",
            Spawn::Fork => "a fork of the bench entering the node's namespace",
        }
    }

    /// `program`, to be run inside `node` this way: with [`Spawn::Posix`]
    /// the caller must be in `node` (see [`Spawn::timed`]).
    pub fn command(self, program: &str, node: &Netns) -> Command {
        match self {
            Spawn::Posix => Command::new(program),
            Spawn::Fork => in_netns(program, node),
        }
    }

    /// [`timed`] of `cmd` (made by [`Spawn::command`]) inside `node`.
    pub fn timed(self, node: &Netns, cmd: Command, input: &str) -> (Duration, String) {
        match self {
            Spawn::Posix => node.run(|| timed(cmd, input)),
            Spawn::Fork => timed(cmd, input),
        }
    }
}

/// Runs `cmd` with `input`, returns (elapsed, stdout); panics on failure.
pub fn timed(mut cmd: Command, input: &str) -> (Duration, String) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, stdout)
}

/// Busy and total CPU time of the whole machine so far, in clock ticks
/// (the `cpu` line of `/proc/stat`; idle and I/O wait are not busy).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits (at most `limit`) until the machine is quiet: two half-seconds in
/// a row with under 10% of its CPU busy. The kernel destroys a network
/// namespace in the background, well after its last process exited, and
/// the namespaces of a thousand containers keep a core busy for seconds
/// (every device's IPv6 routes are walked as it goes): without this, one
/// phase's teardown is measured as the next phase's slowness. Returns how
/// long it waited.
pub fn wait_quiet(limit: Duration) -> Duration {
    let start = Instant::now();
    let mut quiet = 0;
    let mut last = machine_ticks();
    while quiet < 2 && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        let now = machine_ticks();
        let (busy, total) = (now.0 - last.0, now.1 - last.1);
        quiet = if total > 0 && busy * 10 < total {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
    if quiet < 2 {
        eprintln!("the machine was still busy after {limit:?}; measuring anyway");
    }
    start.elapsed()
}

/// CPU time (user + system) so far of `who`: `libc::RUSAGE_SELF` (this
/// process) or `libc::RUSAGE_CHILDREN` (the children it has waited for:
/// the difference around one [`timed`] is that process's CPU).
pub fn cpu_time(who: i32) -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(who, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The median (the upper one of an even count).
pub fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// The 99th percentile (of 50 samples: the largest).
pub fn p99(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// The `len` samples from `from` on (cut to what there is).
pub fn window_of(times: &[Duration], from: usize, len: usize) -> &[Duration] {
    &times[from.min(times.len() - 1)..(from + len).min(times.len())]
}

/// The median of [`window_of`].
pub fn window(times: &[Duration], from: usize, len: usize) -> Duration {
    median(window_of(times, from, len))
}

/// A running daemon; SIGTERM (then SIGKILL after a bounded wait) on drop.
pub struct Daemon(Child);

impl Daemon {
    /// Spawns `cmd` (a `calico-mesos daemon`) and waits, bounded, until it
    /// listens on `socket`.
    pub fn start(mut cmd: Command, socket: &Path) -> Daemon {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let mut d = Daemon(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Ok(Some(status)) = d.0.try_wait() {
                panic!("the daemon exited ({status}) before listening on {socket:?}");
            }
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        d
    }

    /// Sends `signal` to the daemon (SIGSTOP pauses it, SIGCONT resumes).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signals our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// User + system CPU time of the daemon so far.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_micros(ticks * 1_000_000 / hz)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Drops `owner` (whatever holds the node namespaces) and waits (bounded)
/// until the kernel has deleted every veth, seen from the containers
/// (their `eth0` goes with the host side); then kills the containers. The
/// next phase then never competes with an asynchronous namespace teardown
/// for the kernel's rtnl lock. Returns how long the teardown took.
pub fn teardown<O, C>(owner: O, containers: Vec<C>, pid: impl Fn(&C) -> u32) -> Duration {
    let pids: Vec<u32> = containers.iter().map(&pid).collect();
    drop(owner);
    let took = testsupport::wait_no_eth0(&pids, Duration::from_secs(300));
    drop(containers);
    took
}
