//! [`PolicyDataplane`]: render (whole, or only what changed) → plan → one
//! nftables transaction, through
//! the [`NftBackend`] it was given (libnftables in process by default, else
//! an `nft` process per call).
//!
//! Owns our table `inet calico-mesos` (and, through its backend, the
//! libnftables context or the `nft` children); it never lists, changes or
//! deletes any other table.

use super::backend::{NftBackend, NftBackendKind, NftOptions};
use super::change::SpecChange;
use super::incremental::{RenderedPolicy, Update};
use super::memo::{Memo, Stamp};
use super::model::PolicySpec;
use super::nft::{delete_table, to_nft};
use super::observe::{is_missing_table, parse_listing, ObserveError};
use super::plan::{plan, PolicyAction};
use super::render::{render, RenderError};
use super::ruleset::{Ruleset, TABLE};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long one nftables call may take before it is given up (an `nft`
/// process is killed; a libnftables call is left to finish on its thread).
/// A transaction gets one more second per 512 KiB of JSON it sends.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// nftables refused the command (`nft` exited non-zero, or
    /// libnftables returned an error); nothing of that transaction was
    /// applied.
    #[error("nft failed to {what} ({status}): {stderr}")]
    NftFailed {
        /// What it was to do.
        what: String,
        /// How it failed: the exit status, or the library's return code.
        status: String,
        /// Its error text.
        stderr: String,
    },
    /// The call ran past its deadline (an `nft` process was killed).
    #[error("nft did not {what} within {timeout:?}")]
    Timeout {
        /// What it was to do.
        what: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The libnftables thread stopped (a panic) before answering.
    #[error("the libnftables thread stopped before it could {what}")]
    LibraryGone {
        /// What it was to do.
        what: String,
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
    /// The table is this (what we read).
    Present(Ruleset),
    /// The table is what [`State::desired`] renders to (we applied it).
    Desired,
}

/// What a dataplane wants and what it knows of the kernel.
#[derive(Debug)]
struct State {
    /// The desired policy, kept rendered; `None` before the first call.
    desired: Option<RenderedPolicy>,
    /// The kernel's table.
    known: Known,
    /// With a [`Memo`]: when `known` was last established (read,
    /// recalled, or applied by us); `None` when unsure.
    known_at: Option<KnownAt>,
}

/// The namespace's stamp when what we know of the table was established.
#[derive(Debug)]
struct KnownAt {
    stamp: Stamp,
    /// The memo already says so (it was recalled, or written by us).
    in_memo: bool,
}

/// The policy reconciler of one node, bound to the network namespace of
/// the thread that created it: every nftables call it makes is in that
/// namespace. Dropping it frees its backend (and with it any socket that
/// would keep the namespace alive).
///
/// It keeps the desired policy rendered in memory: [`ensure`](Self::ensure)
/// replaces it with a whole spec (rendered from scratch),
/// [`update`](Self::update) changes it by [`SpecChange`]s at the cost of the
/// change (see [`RenderedPolicy`]).
#[derive(Debug)]
pub struct PolicyDataplane {
    backend: NftBackend,
    /// Serialises `ensure`/`update`/`remove`, and holds what we want and
    /// what we know of the table.
    state: tokio::sync::Mutex<State>,
    /// Set by [`forget`](Self::forget): the next call reads the kernel.
    stale: AtomicBool,
    /// Where a short-lived process finds what the last one applied.
    memo: Option<Memo>,
}

impl Default for PolicyDataplane {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyDataplane {
    /// A dataplane for the calling thread's network namespace (the node's),
    /// through libnftables if it loads, else `nft` processes
    /// ([`NftOptions::default`]). Needs no runtime; its async methods need
    /// a tokio runtime.
    pub fn new() -> PolicyDataplane {
        Self::with_backend(NftBackend::open(&NftOptions::default()))
    }

    /// A dataplane that reaches nftables through `backend` (opened in the
    /// node's namespace).
    pub fn with_backend(backend: NftBackend) -> PolicyDataplane {
        PolicyDataplane {
            backend,
            state: tokio::sync::Mutex::new(State {
                desired: None,
                known: Known::Unknown,
                known_at: None,
            }),
            stale: AtomicBool::new(false),
            memo: None,
        }
    }

    /// This dataplane with `memo`: [`ensure`](Self::ensure) trusts what it
    /// recalls instead of reading the table when the namespace's stamp is
    /// the one it was written at, and writes down what it applied when it
    /// can prove the table holds it. For processes that live for one
    /// request; see [`Memo`].
    pub fn with_memo(mut self, memo: Memo) -> PolicyDataplane {
        self.memo = Some(memo);
        self
    }

    /// Which way this dataplane reaches nftables.
    pub fn backend_kind(&self) -> NftBackendKind {
        self.backend.kind()
    }

    /// The backend itself (to list the table as nft prints it).
    pub fn backend(&self) -> &NftBackend {
        &self.backend
    }

    /// Drift is suspected: the next `ensure` reads the kernel instead of
    /// trusting what it last applied.
    pub fn forget(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// True after [`forget`](Self::forget) until the next call has read
    /// the kernel.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// True when a committed generation reported with `pid` was our own
    /// change: one of our recent `nft` processes, or our libnftables
    /// thread (the kernel reports the committing thread's id).
    pub fn spawned_by_us(&self, pid: u32) -> bool {
        self.backend.committed(pid)
    }

    /// Reads our table from the kernel; `None` when it does not exist.
    pub async fn observe(&self) -> Result<Option<Ruleset>, PolicyError> {
        match self.backend.list_table().await? {
            Some(json) => parse_listing(&json)
                .map(Some)
                .map_err(PolicyError::Unparsable),
            None => Ok(None),
        }
    }

    async fn apply(&self, actions: &[PolicyAction]) -> Result<(), PolicyError> {
        let doc = serde_json::to_vec(&to_nft(actions)).expect("nft documents always serialise");
        let what = format!("apply {} policy actions", actions.len());
        let started = Instant::now();
        let applied = self.backend.apply(&doc, &what).await;
        tracing::debug!(
            actions = actions.len(),
            took_us = started.elapsed().as_micros() as u64,
            "policy transaction"
        );
        applied
    }

    /// The kernel's table as far as we know it, reading it when we do
    /// not (and remembering what was read). `previous` is what
    /// [`Known::Desired`] stands for.
    async fn current<'k>(
        &self,
        known: &'k mut Known,
        known_at: &mut Option<KnownAt>,
        previous: Option<&'k Ruleset>,
    ) -> Result<Option<&'k Ruleset>, PolicyError> {
        if self.stale.swap(false, Ordering::SeqCst)
            || (matches!(known, Known::Desired) && previous.is_none())
        {
            *known = Known::Unknown;
        }
        if matches!(known, Known::Unknown) {
            *known = self.learn(known_at).await?;
        }
        Ok(match known {
            Known::Present(r) => Some(r),
            Known::Desired => previous,
            Known::Absent | Known::Unknown => None,
        })
    }

    /// What the kernel's table is: recalled from the memo when its stamp
    /// is the namespace's now, else read (and with a memo, `known_at` is
    /// the stamp the read was made at, if nobody committed during it).
    async fn learn(&self, known_at: &mut Option<KnownAt>) -> Result<Known, PolicyError> {
        *known_at = None;
        let before = self.memo.as_ref().and_then(|memo| {
            memo.stamp()
                .inspect_err(|e| tracing::debug!(error = %e, "no nftables generation: no memo"))
                .ok()
        });
        if let (Some(memo), Some(now)) = (&self.memo, &before) {
            if let Some(ruleset) = memo.recall(now).and_then(|spec| render(&spec).ok()) {
                tracing::debug!(
                    generation = now.generation,
                    "policy table recalled from the memo"
                );
                *known_at = before.map(|stamp| KnownAt {
                    stamp,
                    in_memo: true,
                });
                return Ok(Known::Present(ruleset));
            }
        }
        let observed = self.observe().await?;
        if let (Some(memo), Some(before)) = (&self.memo, before) {
            *known_at = memo
                .stamp()
                .ok()
                .filter(|after| *after == before)
                .map(|stamp| KnownAt {
                    stamp,
                    in_memo: false,
                });
        }
        Ok(match observed {
            Some(r) => Known::Present(r),
            None => Known::Absent,
        })
    }

    /// With a memo, after `ensure` applied `actions` (planned against what
    /// was known at `basis`): writes down that the table holds `spec` when
    /// the generation shows that nobody else committed since `basis`, it
    /// moved by one for our transaction, or not at all when there was
    /// none. Returns the stamp the table is known at.
    fn note_applied(
        &self,
        basis: Option<KnownAt>,
        applied: bool,
        spec: &PolicySpec,
    ) -> Option<KnownAt> {
        let (memo, basis) = (self.memo.as_ref()?, basis?);
        let after = memo.stamp().ok()?;
        let expected = Stamp {
            generation: if applied {
                // The kernel skips 0 when the generation wraps.
                basis.stamp.generation.wrapping_add(1).max(1)
            } else {
                basis.stamp.generation
            },
            ..basis.stamp
        };
        if after != expected {
            return None;
        }
        if applied || !basis.in_memo {
            if let Err(e) = memo.remember(&after, spec) {
                tracing::debug!(error = %e, "cannot write the policy memo");
                return None;
            }
        }
        Some(KnownAt {
            stamp: after,
            in_memo: true,
        })
    }

    /// Makes our table hold the policy of `spec`, rendered from scratch,
    /// in one nft transaction. Returns the actions taken (with `dry_run`,
    /// the ones it would take, changing nothing). Compares with what it
    /// last applied unless [`forget`](Self::forget) was called; when the
    /// kernel refuses the transaction it reads the kernel, plans again and
    /// applies once more. Without `dry_run`, `spec` becomes the base that
    /// [`update`](Self::update) changes (even when applying fails).
    pub async fn ensure(
        &self,
        spec: &PolicySpec,
        dry_run: bool,
    ) -> Result<Vec<PolicyAction>, PolicyError> {
        let fresh = RenderedPolicy::render(spec.clone())?;
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let State {
            desired,
            known,
            known_at,
        } = &mut *state;
        let previous = desired.as_ref().and_then(RenderedPolicy::ruleset);
        let current = self.current(known, known_at, previous).await?;
        let want = fresh.ruleset().expect("rendered");
        let actions = plan(want, current);
        if dry_run {
            return Ok(actions);
        }
        // `converge` sets `known` before anything else, so it never says
        // `Desired` of the replaced policy.
        *desired = Some(fresh);
        let want = desired.as_ref().and_then(RenderedPolicy::ruleset);
        let basis = known_at.take();
        let applied = self
            .converge(known, want.expect("rendered"), actions, started)
            .await?;
        *known_at = self.note_applied(basis, !applied.is_empty(), spec);
        Ok(applied)
    }

    /// Changes the desired policy by `changes` (starting from the empty
    /// spec when [`ensure`](Self::ensure) never ran) and makes our table
    /// hold it, in one nft transaction. When the table holds what was last
    /// applied, only what the changes touch is rendered and compared (the
    /// same actions as comparing everything); otherwise, as after
    /// [`forget`](Self::forget) or a failure, the whole desired table is
    /// compared with the kernel's. Returns the actions taken.
    pub async fn update(&self, changes: &[SpecChange]) -> Result<Vec<PolicyAction>, PolicyError> {
        let mut state = self.state.lock().await;
        let started = Instant::now();
        let State {
            desired,
            known,
            known_at,
        } = &mut *state;
        // Its commits are not written down in the memo.
        *known_at = None;
        let desired = desired.get_or_insert_with(RenderedPolicy::default);
        if self.stale.swap(false, Ordering::SeqCst) {
            *known = Known::Unknown;
        }
        if matches!(known, Known::Desired) && desired.ruleset().is_none() {
            *known = Known::Unknown;
        }
        let step = match desired.update(changes) {
            Ok(step) => step,
            Err(e) => {
                if matches!(known, Known::Desired) {
                    *known = Known::Unknown;
                }
                return Err(e.into());
            }
        };
        let want = desired.ruleset().expect("updated");
        let actions = match step {
            Update::Delta(delta) if matches!(known, Known::Desired) => delta.plan(),
            _ => {
                // The table before the changes is gone from memory: a
                // whole comparison needs the kernel's (or a remembered) one.
                if matches!(known, Known::Desired) {
                    *known = Known::Unknown;
                }
                let current = self.current(known, known_at, None).await?;
                plan(want, current)
            }
        };
        self.converge(known, want, actions, started).await
    }

    /// Applies `actions` (planned for `want` against what `known` says),
    /// reading the kernel and planning again once if the kernel refuses
    /// them; `known` ends as [`Known::Desired`] on success.
    async fn converge(
        &self,
        known: &mut Known,
        want: &Ruleset,
        actions: Vec<PolicyAction>,
        started: Instant,
    ) -> Result<Vec<PolicyAction>, PolicyError> {
        if actions.is_empty() {
            *known = Known::Desired;
            return Ok(actions);
        }
        // Until it succeeds, the kernel's state is uncertain.
        *known = Known::Unknown;
        let actions = match self.apply(&actions).await {
            Ok(()) => actions,
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, "policy transaction refused; reading the table and planning again");
                let observed = self.observe().await?;
                let again = plan(want, observed.as_ref());
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
        *known = Known::Desired;
        Ok(actions)
    }

    /// Deletes our table if it exists; true when it did.
    pub async fn remove(&self) -> Result<bool, PolicyError> {
        let mut state = self.state.lock().await;
        state.known = Known::Unknown;
        let doc = serde_json::to_vec(&delete_table()).expect("nft documents always serialise");
        let what = format!("delete table inet {TABLE}");
        let existed = match self.backend.apply(&doc, &what).await {
            Ok(()) => true,
            Err(PolicyError::NftFailed { stderr, .. }) if is_missing_table(&stderr) => false,
            Err(e) => return Err(e),
        };
        state.known = Known::Absent;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::process::RECENT_PIDS;
    use std::os::unix::fs::PermissionsExt;

    /// A dataplane that runs `program` as nft.
    fn with_program(program: impl Into<std::ffi::OsString>) -> PolicyDataplane {
        PolicyDataplane::with_backend(NftBackend::open(&NftOptions::process(program)))
    }

    fn process(dp: &PolicyDataplane) -> &crate::policy::process::NftProcess {
        match &dp.backend {
            NftBackend::Process(p) => p,
            NftBackend::Library(_) => panic!("a process backend was asked for"),
        }
    }

    #[tokio::test]
    async fn a_missing_nft_is_named() {
        let dp = with_program("/nonexistent/nft");
        assert_eq!(dp.backend_kind(), NftBackendKind::Process);
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
        let dp = PolicyDataplane::with_backend(NftBackend::open(
            &NftOptions::process(&script).with_timeout(Duration::from_millis(200)),
        ));
        let started = Instant::now();
        let err = dp.observe().await.unwrap_err();
        let _ = std::fs::remove_file(&script);
        assert!(matches!(err, PolicyError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // It ran, and its pid is remembered as ours.
        let pids = process(&dp).remembered();
        assert_eq!(pids.len(), 1);
        assert!(dp.spawned_by_us(pids[0]));
        assert!(!dp.spawned_by_us(pids[0].wrapping_add(1)));
    }

    #[tokio::test]
    async fn a_failing_nft_reports_its_stderr() {
        let script = fake_nft("fail", "echo 'Error: something broke' >&2; exit 1");
        let dp = with_program(&script);
        let err = dp.observe().await.unwrap_err();
        let _ = std::fs::remove_file(&script);
        assert!(err.to_string().contains("something broke"), "{err}");
        // "No such file or directory" from a listing means: no table.
        let script = fake_nft(
            "absent",
            "echo 'Error: No such file or directory' >&2; exit 1",
        );
        let dp = with_program(&script);
        assert_eq!(dp.observe().await.unwrap(), None);
        let _ = std::fs::remove_file(&script);
    }

    #[tokio::test]
    async fn garbage_from_nft_is_unparsable() {
        let script = fake_nft("garbage", "echo 'not json'");
        let dp = with_program(&script);
        let err = dp.observe().await.unwrap_err();
        let _ = std::fs::remove_file(&script);
        assert!(matches!(err, PolicyError::Unparsable(_)), "{err}");
    }

    #[test]
    fn the_pid_ring_is_bounded() {
        let dp = with_program("nft");
        for pid in 1..=(RECENT_PIDS as u32 + 5) {
            process(&dp).remember(pid);
        }
        assert!(!dp.spawned_by_us(1));
        assert!(dp.spawned_by_us(RECENT_PIDS as u32 + 5));
        assert_eq!(process(&dp).remembered().len(), RECENT_PIDS);
    }

    #[test]
    fn a_library_that_does_not_load_falls_back_to_nft_processes() {
        let options = NftOptions {
            library: Some("libnftables-that-does-not-exist.so.1".into()),
            ..NftOptions::default()
        };
        let backend = NftBackend::open(&options);
        assert_eq!(backend.kind(), NftBackendKind::Process);
        let err = crate::policy::LibNft::open(options.library.as_ref().unwrap(), NFT_TIMEOUT)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot load libnftables-that-does-not-exist.so.1"),
            "{err}"
        );
        // A library without nftables' functions is refused by name.
        let err = crate::policy::LibNft::open("libc.so.6", NFT_TIMEOUT).unwrap_err();
        assert!(
            err.to_string().contains("libc.so.6 has no nft_ctx_new"),
            "{err}"
        );
        assert_eq!(
            NftBackend::open(&NftOptions {
                library: Some("libc.so.6".into()),
                ..NftOptions::default()
            })
            .kind(),
            NftBackendKind::Process
        );
    }
}
