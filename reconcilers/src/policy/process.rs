//! [`NftProcess`]: one `nft` child process per call, the fallback when
//! libnftables cannot be loaded (see [`backend`](super::backend)).
//!
//! Owns the `nft` children it starts (each bounded by a timeout and killed
//! when it passes it) and nothing else.

use super::apply::PolicyError;
use super::backend::deadline;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How many of our recent `nft` pids [`NftProcess::spawned`] remembers.
pub(crate) const RECENT_PIDS: usize = 32;

/// Runs `nft` processes in the network namespace of the thread that made
/// it.
#[derive(Debug)]
pub struct NftProcess {
    /// The namespace `nft` runs in, and its inode.
    netns: Option<(File, u64)>,
    program: OsString,
    timeout: Duration,
    /// Pids of our recent `nft` runs, newest last.
    recent: Mutex<VecDeque<u32>>,
}

fn thread_netns_inode() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

impl NftProcess {
    /// Runs `program` (each run bounded by `timeout`, plus a second per
    /// 512 KiB of input) in the calling thread's network namespace.
    pub fn new(program: impl Into<OsString>, timeout: Duration) -> NftProcess {
        let netns = match File::open("/proc/thread-self/ns/net") {
            Ok(f) => f.metadata().ok().map(|m| (f, m.ino())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open this thread's network namespace; nft will run in the namespace of whichever thread starts it");
                None
            }
        };
        NftProcess {
            netns,
            program: program.into(),
            timeout,
            recent: Mutex::new(VecDeque::with_capacity(RECENT_PIDS)),
        }
    }

    /// True when `pid` is one of the `nft` processes run recently.
    pub fn spawned(&self, pid: u32) -> bool {
        self.recent
            .lock()
            .map(|r| r.contains(&pid))
            .unwrap_or(false)
    }

    pub(crate) fn remember(&self, pid: u32) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT_PIDS {
                r.pop_front();
            }
            r.push_back(pid);
        }
    }

    /// How many pids are remembered (tests).
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> Vec<u32> {
        self.recent.lock().unwrap().iter().copied().collect()
    }

    /// Runs `nft <args>` with `input` on stdin; returns stdout. A non-zero
    /// exit is [`PolicyError::NftFailed`].
    pub async fn run(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
        what: &str,
    ) -> Result<String, PolicyError> {
        let timeout = deadline(self.timeout, input.map_or(0, <[u8]>::len));
        let program = self.program.to_string_lossy().into_owned();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((file, inode)) = &self.netns {
            // A child starts in the namespace of the thread that forks it;
            // on a runtime thread elsewhere, move it into ours first.
            if thread_netns_inode() != Some(*inode) {
                let fd = file.as_raw_fd();
                // SAFETY: the closure runs in the forked child before exec
                // and only makes the setns syscall (async-signal-safe) on
                // an fd that `self` keeps open across the spawn.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                PolicyError::NftMissing {
                    program: program.clone(),
                    source,
                }
            } else {
                PolicyError::Spawn {
                    program: program.clone(),
                    what: what.to_string(),
                    source,
                }
            }
        })?;
        if let Some(pid) = child.id() {
            self.remember(pid);
        }
        let stdin = child.stdin.take();
        let run = async {
            let feed = async {
                if let (Some(mut w), Some(data)) = (stdin, input) {
                    // nft reads all of its input before it answers; a
                    // broken pipe means it exited early, which its exit
                    // status explains.
                    let _ = w.write_all(data).await;
                    let _ = w.shutdown().await;
                }
            };
            let ((), out) = tokio::join!(feed, child.wait_with_output());
            out
        };
        let out = match tokio::time::timeout(timeout, run).await {
            Err(_) => {
                return Err(PolicyError::Timeout {
                    what: what.to_string(),
                    timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(PolicyError::Spawn {
                    program,
                    what: what.to_string(),
                    source,
                })
            }
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            return Err(PolicyError::NftFailed {
                what: what.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
