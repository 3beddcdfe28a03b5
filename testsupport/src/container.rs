//! The [`Container`] guard: a process in a fresh network namespace,
//! started from inside a node namespace, as Mesos would start one.

use crate::cmd::{run, run_ok, CmdError, COMMAND_TIMEOUT};
use crate::netns::{netns_inode, Netns};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `sleep infinity` in its own network namespace (TESTING.md rule 3).
///
/// Its pid and namespace inode are what an `isolate` receives. On drop the
/// process is killed and reaped, which destroys its namespace (and any
/// veth end inside it).
#[derive(Debug)]
pub struct Container {
    child: Option<Child>,
    pid: u32,
    inode: u64,
}

impl Container {
    /// Starts `nsenter --net=/run/netns/<node> unshare --net sleep infinity`.
    ///
    /// `nsenter` and `unshare` (without `--fork`) both exec in place, so the
    /// child's pid is the sleep's pid; unlike `ip netns exec`, nothing is
    /// mounted and no mount namespace is made. Waits (bounded) until the
    /// process really sits in a namespace of its own.
    pub fn new(node: &Netns) -> Container {
        let node_inode = node.inode();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["unshare", "--net", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn unshare --net sleep infinity");
        let pid = child.id();
        let mut c = Container {
            child: Some(child),
            pid,
            inode: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let ino = netns_inode(format!("/proc/{pid}/ns/net")).unwrap_or(0);
            if comm.trim() == "sleep" && ino != 0 && ino != node_inode {
                c.inode = ino;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "container process {pid} did not reach its own network namespace in time"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // lo stays down: bringing it up is the reconciler's job.
        c
    }

    /// The pid of the process inside the namespace.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The inode of the container's network namespace (taken at start).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// `/proc/<pid>/ns/net`.
    pub fn netns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid)
    }

    /// Runs `cmd` in the container's network namespace
    /// (`nsenter --net=/proc/<pid>/ns/net`), bounded.
    pub fn exec(&self, cmd: &[&str]) -> Result<Output, CmdError> {
        run(
            Command::new("nsenter")
                .arg(format!("--net={}", self.netns_path()))
                .arg("--")
                .args(cmd),
            COMMAND_TIMEOUT,
        )
    }

    /// Runs `cmd` in the container's namespace and panics unless it
    /// succeeds; returns stdout.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        run_ok(
            Command::new("nsenter")
                .arg(format!("--net={}", self.netns_path()))
                .arg("--")
                .args(cmd),
        )
        .unwrap_or_else(|e| panic!("in container {}: {e}", self.pid))
    }

    /// Runs `ip -j <args>` in the container and parses the answer.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut cmd = vec!["ip", "-j"];
        cmd.extend_from_slice(args);
        let out = self.exec_ok(&cmd);
        if out.trim().is_empty() {
            return serde_json::Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j output {out:?}: {e}"))
    }

    /// Reads a sysctl of the container's namespace.
    pub fn sysctl(&self, key: &str) -> String {
        self.exec_ok(&["cat", &format!("/proc/sys/{key}")])
            .trim()
            .to_string()
    }

    /// Kills and reaps the process now (its namespace goes with it); pid
    /// and inode stay readable, for "the container is gone" tests.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` in `container`'s network namespace (see [`Container::exec`]).
pub fn exec_in(container: &Container, cmd: &[&str]) -> Result<Output, CmdError> {
    container.exec(cmd)
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls the namespaces of the processes `pids` until none has an `eth0`
/// (the kernel has torn down their veths, e.g. after their node namespace
/// was destroyed); returns how long that took. Panics after `limit`.
pub fn wait_no_eth0(pids: &[u32], limit: Duration) -> Duration {
    use std::os::fd::AsRawFd;
    let start = Instant::now();
    let pids = pids.to_vec();
    // A thread of its own, since it moves between namespaces.
    std::thread::spawn(move || {
        let eth0 = std::ffi::CString::new("eth0").expect("no NUL");
        let mut left = pids;
        while !left.is_empty() {
            assert!(start.elapsed() < limit, "teardown not done after {limit:?}");
            left.retain(|pid| {
                let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/net")) else {
                    return false;
                };
                // SAFETY: this helper thread only runs this loop; moving
                // it between namespaces affects nothing else.
                unsafe {
                    libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0
                        && libc::if_nametoindex(eth0.as_ptr()) != 0
                }
            });
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    })
    .join()
    .expect("the waiting thread panicked")
}
