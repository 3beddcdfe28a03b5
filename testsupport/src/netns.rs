//! The [`Netns`] guard: a named network namespace made for one test.

use crate::cmd::{run, run_ok, CmdError, COMMAND_TIMEOUT};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every namespace this crate creates is named `<NETNS_PREFIX><tag>-<pid>-<n>`.
pub const NETNS_PREFIX: &str = "cmt-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The inode of the network namespace at `path` (e.g. `/proc/<pid>/ns/net`).
pub fn netns_inode(path: impl AsRef<Path>) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// A named network namespace (`ip netns add`) with a unique, per-test name.
///
/// `lo` is up. On drop every process still inside is killed and the
/// namespace is deleted, also when the test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `cmt-<tag>-<pid>-<n>`: `tag` is cut to 10 safe characters,
    /// the pid and a process-wide counter make the name unique.
    pub fn new(tag: &str) -> Netns {
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(10)
            .collect::<String>()
            .to_ascii_lowercase();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))
            .unwrap_or_else(|e| panic!("create network namespace {name}: {e}"));
        // From here on the guard owns it: a failure below still deletes it.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the namespace's bind mount.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The inode that identifies this namespace.
    pub fn inode(&self) -> u64 {
        netns_inode(self.path()).expect("stat the namespace's bind mount")
    }

    /// Runs `ip -n <ns> <args>` and panics if it fails; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .unwrap_or_else(|e| panic!("in {}: {e}", self.name))
    }

    /// Runs `ip -j -n <ns> <args>` and parses the JSON answer.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = run_ok(Command::new("ip").args(["-j", "-n", &self.name]).args(args))
            .unwrap_or_else(|e| panic!("in {}: {e}", self.name));
        if out.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j output {out:?}: {e}"))
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`), bounded by
    /// [`COMMAND_TIMEOUT`]; the caller looks at the status.
    pub fn exec(&self, cmd: &[&str]) -> Result<Output, CmdError> {
        run(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(cmd),
            COMMAND_TIMEOUT,
        )
    }

    /// Runs `cmd` inside the namespace and panics unless it succeeds;
    /// returns stdout.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(cmd),
        )
        .unwrap_or_else(|e| panic!("in {}: {e}", self.name))
    }

    /// Reads a sysctl of this namespace, e.g. `net/ipv4/conf/lo/forwarding`.
    pub fn sysctl(&self, key: &str) -> String {
        self.exec_ok(&["cat", &format!("/proc/sys/{key}")])
            .trim()
            .to_string()
    }

    /// Runs `f` on a new thread that has entered this namespace (`setns`),
    /// and returns its result; a panic in `f` is re-raised here.
    ///
    /// In-process code under test (a reconciler, a tokio runtime built
    /// inside `f`) then sees this namespace and never the root one.
    pub fn run<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        let file = File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                // SAFETY: setns only changes this (scoped, short-lived)
                // thread's network namespace; `file` is an open nsfs file
                // kept alive for the duration of the call.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
                drop(file);
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    fn pids(&self) -> Vec<i32> {
        match run(
            Command::new("ip").args(["netns", "pids", &self.name]),
            COMMAND_TIMEOUT,
        ) {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => vec![],
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes left inside keep nothing alive once the name is gone,
        // but they would leak: kill them first (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions; the pids
                // were just listed as running inside our own test namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(e) = run_ok(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "testsupport: could not delete network namespace {}: {e}",
                self.name
            );
        }
    }
}
