//! [`PolicyDataplane`]: render → plan → one `nft -j -f -` transaction.
//!
//! Owns the `nft` child processes it starts (each bounded by a timeout and
//! killed when it passes it) and our table `inet calico-mesos`; it never
//! lists, changes or deletes any other table.

use super::model::PolicySpec;
use super::nft::{delete_table, to_nft};
use super::observe::{is_missing_table, parse_listing, ObserveError};
use super::plan::{plan, PolicyAction};
use super::render::{render, RenderError};
use super::ruleset::{Ruleset, TABLE};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// How long one `nft` run may take before it is killed (a transaction
/// gets one more second per 512 KiB of JSON it sends: a full create at
/// 1,000 endpoints in 100 profile lists is about 600 KiB and takes nft
/// well under a second).
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`NFT_TIMEOUT`].
const BYTES_PER_EXTRA_SECOND: usize = 512 * 1024;
/// How many of our recent `nft` pids [`PolicyDataplane::spawned_by_us`]
/// remembers.
const RECENT_PIDS: usize = 32;

/// Why the policy dataplane could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The spec cannot be rendered (a name that cannot be ours).
    #[error("invalid policy: {0}")]
    Render(#[from] RenderError),
    /// The `nft` program is not installed (or not on PATH).
    #[error("{program} not found: is the nftables package installed?")]
    NftMissing {
        /// The program looked for.
        program: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` could not be started or talked to.
    #[error("cannot run {program} to {what}")]
    Spawn {
        /// The program.
        program: String,
        /// What it was to do.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and failed; nothing of that transaction was applied.
    #[error("nft failed to {what} ({status}): {stderr}")]
    NftFailed {
        /// What it was to do.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error.
        stderr: String,
    },
    /// `nft` ran past its deadline and was killed.
    #[error("nft did not {what} within {timeout:?}: killed")]
    Timeout {
        /// What it was to do.
        what: String,
        /// The deadline.
        timeout: Duration,
    },
    /// nft's listing of our table could not be read.
    #[error("cannot read nft's listing of table inet {TABLE}")]
    Unparsable(#[source] ObserveError),
}

impl PolicyError {
    /// True for failures that a fresh look at the kernel may cure: nft ran
    /// and refused the transaction (someone changed the table meanwhile),
    /// or it hung.
    fn retryable(&self) -> bool {
        matches!(self, Self::NftFailed { .. } | Self::Timeout { .. })
    }
}

/// What we know of the kernel's table.
#[derive(Debug)]
enum Known {
    /// Nothing: read the kernel.
    Unknown,
    /// The table does not exist.
    Absent,
    /// The table is this (what we last applied or read).
    Present(Ruleset),
}

/// The policy reconciler of one node, bound to the network namespace of
/// the thread that created it: every `nft` it runs is in that namespace.
#[derive(Debug)]
pub struct PolicyDataplane {
    /// The namespace `nft` runs in, and its inode.
    netns: Option<(File, u64)>,
    program: OsString,
    timeout: Duration,
    /// Serialises `ensure`/`remove`, and holds what we know of the table.
    known: tokio::sync::Mutex<Known>,
    /// Set by [`forget`](Self::forget): the next call reads the kernel.
    stale: AtomicBool,
    /// Pids of our recent `nft` runs, newest last.
    recent: Mutex<VecDeque<u32>>,
}

impl Default for PolicyDataplane {
    fn default() -> Self {
        Self::new()
    }
}

fn thread_netns_inode() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

impl PolicyDataplane {
    /// A dataplane for the calling thread's network namespace (the node's).
    /// Needs no runtime; its async methods need a tokio runtime.
    pub fn new() -> PolicyDataplane {
        let netns = match File::open("/proc/thread-self/ns/net") {
            Ok(f) => f.metadata().ok().map(|m| (f, m.ino())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open this thread's network namespace; nft will run in the namespace of whichever thread starts it");
                None
            }
        };
        PolicyDataplane {
            netns,
            program: OsString::from("nft"),
            timeout: NFT_TIMEOUT,
            known: tokio::sync::Mutex::new(Known::Unknown),
            stale: AtomicBool::new(false),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_PIDS)),
        }
    }

    /// Uses `program` instead of `nft` from PATH.
    pub fn with_program(mut self, program: impl Into<OsString>) -> Self {
        self.program = program.into();
        self
    }

    /// Sets the deadline of each `nft` run (default [`NFT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Drift is suspected: the next `ensure` reads the kernel instead of
    /// trusting what it last applied.
    pub fn forget(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// True when `pid` is one of the `nft` processes this dataplane ran
    /// recently: a committed generation with that pid was our own change.
    pub fn spawned_by_us(&self, pid: u32) -> bool {
        self.recent
            .lock()
            .map(|r| r.contains(&pid))
            .unwrap_or(false)
    }

    fn remember(&self, pid: u32) {
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT_PIDS {
                r.pop_front();
            }
            r.push_back(pid);
        }
    }

    /// Runs `nft <args>` with `input` on stdin; returns stdout. A non-zero
    /// exit is [`PolicyError::NftFailed`].
    async fn nft(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
        what: &str,
    ) -> Result<String, PolicyError> {
        let timeout = self.timeout
            + Duration::from_secs((input.map_or(0, <[u8]>::len) / BYTES_PER_EXTRA_SECOND) as u64);
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
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Reads our table from the kernel; `None` when it does not exist.
    pub async fn observe(&self) -> Result<Option<Ruleset>, PolicyError> {
        let what = format!("list table inet {TABLE}");
        match self
            .nft(&["-j", "list", "table", "inet", TABLE], None, &what)
            .await
        {
            Ok(json) => parse_listing(&json)
                .map(Some)
                .map_err(PolicyError::Unparsable),
            Err(PolicyError::NftFailed { stderr, .. }) if is_missing_table(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn apply(&self, actions: &[PolicyAction]) -> Result<(), PolicyError> {
        let doc = serde_json::to_vec(&to_nft(actions)).expect("nft documents always serialise");
        let what = format!("apply {} policy actions", actions.len());
        self.nft(&["-j", "-f", "-"], Some(&doc), &what).await?;
        Ok(())
    }

    async fn current(&self, known: &mut Known) -> Result<Option<Ruleset>, PolicyError> {
        if self.stale.swap(false, Ordering::SeqCst) {
            *known = Known::Unknown;
        }
        Ok(match std::mem::replace(known, Known::Unknown) {
            Known::Present(r) => Some(r),
            Known::Absent => None,
            Known::Unknown => self.observe().await?,
        })
    }

    /// Makes our table hold the policy of `spec`, in one nft transaction.
    /// Returns the actions taken (with `dry_run`, the ones it would take,
    /// changing nothing). Compares with what it last applied unless
    /// [`forget`](Self::forget) was called; when the kernel refuses the
    /// transaction it reads the kernel, plans again and applies once more.
    pub async fn ensure(
        &self,
        spec: &PolicySpec,
        dry_run: bool,
    ) -> Result<Vec<PolicyAction>, PolicyError> {
        let desired = render(spec)?;
        let mut known = self.known.lock().await;
        let started = Instant::now();
        let current = self.current(&mut known).await?;
        let actions = plan(&desired, current.as_ref());
        if dry_run || actions.is_empty() {
            *known = match current {
                Some(r) => Known::Present(r),
                None => Known::Absent,
            };
            return Ok(actions);
        }
        // Until it succeeds, the kernel's state is uncertain.
        *known = Known::Unknown;
        let actions = match self.apply(&actions).await {
            Ok(()) => actions,
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, "policy transaction refused; reading the table and planning again");
                let observed = self.observe().await?;
                let again = plan(&desired, observed.as_ref());
                if !again.is_empty() {
                    self.apply(&again).await?;
                }
                again
            }
            Err(e) => return Err(e),
        };
        tracing::info!(
            actions = actions.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "policy applied"
        );
        *known = Known::Present(desired);
        Ok(actions)
    }

    /// Deletes our table if it exists; true when it did.
    pub async fn remove(&self) -> Result<bool, PolicyError> {
        let mut known = self.known.lock().await;
        *known = Known::Unknown;
        let doc = serde_json::to_vec(&delete_table()).expect("nft documents always serialise");
        let what = format!("delete table inet {TABLE}");
        let existed = match self.nft(&["-j", "-f", "-"], Some(&doc), &what).await {
            Ok(_) => true,
            Err(PolicyError::NftFailed { stderr, .. }) if is_missing_table(&stderr) => false,
            Err(e) => return Err(e),
        };
        *known = Known::Absent;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_missing_nft_is_named() {
        let dp = PolicyDataplane::new().with_program("/nonexistent/nft");
        let err = dp.ensure(&PolicySpec::default(), false).await.unwrap_err();
        assert!(matches!(err, PolicyError::NftMissing { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/nft not found"),
            "{err}"
        );
    }

    /// A stand-in for nft: a script that runs `body`.
    fn fake_nft(tag: &str, body: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("fake-nft-{tag}-{}", std::process::id()));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn a_hanging_nft_is_killed_at_its_deadline() {
        let script = fake_nft("hang", "exec sleep 30");
        let dp = PolicyDataplane::new()
            .with_program(&script)
            .with_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let err = dp.observe().await.unwrap_err();
        let _ = std::fs::remove_file(&script);
        assert!(matches!(err, PolicyError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // It ran, and its pid is remembered as ours.
        assert_eq!(dp.recent.lock().unwrap().len(), 1);
        let pid = dp.recent.lock().unwrap()[0];
        assert!(dp.spawned_by_us(pid));
        assert!(!dp.spawned_by_us(pid.wrapping_add(1)));
    }

    #[tokio::test]
    async fn a_failing_nft_reports_its_stderr() {
        let script = fake_nft("fail", "echo 'Error: something broke' >&2; exit 1");
        let dp = PolicyDataplane::new().with_program(&script);
        let err = dp.observe().await.unwrap_err();
        let _ = std::fs::remove_file(&script);
        assert!(err.to_string().contains("something broke"), "{err}");
        // "No such file or directory" from a listing means: no table.
        let script = fake_nft(
            "absent",
            "echo 'Error: No such file or directory' >&2; exit 1",
        );
        let dp = PolicyDataplane::new().with_program(&script);
        assert_eq!(dp.observe().await.unwrap(), None);
        let _ = std::fs::remove_file(&script);
    }

    #[tokio::test]
    async fn garbage_from_nft_is_unparsable() {
        let script = fake_nft("garbage", "echo 'not json'");
        let dp = PolicyDataplane::new().with_program(&script);
        let err = dp.observe().await.unwrap_err();
        let _ = std::fs::remove_file(&script);
        assert!(matches!(err, PolicyError::Unparsable(_)), "{err}");
    }

    #[tokio::test]
    async fn the_pid_ring_is_bounded() {
        let dp = PolicyDataplane::new();
        for pid in 1..=(RECENT_PIDS as u32 + 5) {
            dp.remember(pid);
        }
        assert!(!dp.spawned_by_us(1));
        assert!(dp.spawned_by_us(RECENT_PIDS as u32 + 5));
        assert_eq!(dp.recent.lock().unwrap().len(), RECENT_PIDS);
    }
}
