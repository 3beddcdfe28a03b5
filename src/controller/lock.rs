//! The node's reconcile lock: one file in `run_dir`, locked with `flock`.
//! The daemon holds it for its whole life (so there is one per node); a
//! plugin process or `calico-mesos reconcile` holds it while it reconciles
//! by itself. The kernel drops it when its holder exits, even on SIGKILL.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The lock file's name in `run_dir`.
pub const LOCK_FILE: &str = "reconcile.lock";

/// A held node lock; released when dropped.
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
}

/// Creates `run_dir` (mode 0700) if it is missing.
pub fn ensure_run_dir(run_dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
}

/// The lock file's path.
pub fn lock_path(run_dir: &Path) -> PathBuf {
    run_dir.join(LOCK_FILE)
}

impl NodeLock {
    /// Takes the lock if nobody holds it; `Ok(None)` when someone does.
    pub fn try_acquire(run_dir: &Path) -> std::io::Result<Option<NodeLock>> {
        ensure_run_dir(run_dir)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(lock_path(run_dir))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(NodeLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}
