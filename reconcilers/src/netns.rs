//! Network namespaces as the reconcilers see them: a container's namespace
//! named by pid *and* inode, and worker threads that live inside a namespace.
//!
//! Owns: the file descriptors it opens and the threads it starts. It never
//! changes the namespace of a thread it did not start (a `setns` on a
//! runtime thread would move unrelated work into a container).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A container's network namespace: the pid the caller was given and the
/// inode of `/proc/<pid>/ns/net` at the time, so that a pid reused by
/// another process (in another namespace) is detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsRef {
    /// A process inside the namespace.
    pub pid: u32,
    /// The namespace's inode (`stat -L /proc/<pid>/ns/net`).
    pub inode: u64,
}

impl NetnsRef {
    /// The pid's current namespace: reads the inode now.
    pub fn of_pid(pid: u32) -> Result<NetnsRef, NetnsError> {
        let file = open_path(pid)?;
        let inode = inode_of(&file, pid)?;
        Ok(NetnsRef { pid, inode })
    }
}

/// Failures around namespaces.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The process is gone, so its namespace is unreachable by pid.
    #[error("process {pid} is gone (/proc/{pid}/ns/net cannot be opened)")]
    ProcessGone {
        /// The pid we were given.
        pid: u32,
        /// Why the open failed.
        #[source]
        source: std::io::Error,
    },
    /// The pid lives in another namespace than the one recorded: the
    /// container is gone and the pid was reused.
    #[error("process {pid} is in network namespace {found}, not {expected}: pid reused")]
    InodeMismatch {
        /// The pid we were given.
        pid: u32,
        /// The inode recorded for the container.
        expected: u64,
        /// The inode the pid's namespace has now.
        found: u64,
    },
    /// A namespace file could not be opened or inspected.
    #[error("cannot open network namespace {path}")]
    Open {
        /// The path tried.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `setns` into the namespace failed on the worker thread.
    #[error("cannot enter network namespace {label}")]
    Setns {
        /// Which namespace.
        label: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The worker thread could not be started.
    #[error("cannot start a worker thread for network namespace {label}")]
    Spawn {
        /// Which namespace.
        label: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The worker thread stopped (a job panicked) before answering.
    #[error("worker thread of network namespace {label} stopped")]
    ThreadGone {
        /// Which namespace.
        label: String,
    },
}

impl NetnsError {
    /// True when the error means "the container's namespace no longer exists".
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::ProcessGone { .. } | Self::InodeMismatch { .. })
    }
}

fn open_path(pid: u32) -> Result<File, NetnsError> {
    let path = format!("/proc/{pid}/ns/net");
    File::open(&path).map_err(|source| match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => NetnsError::ProcessGone { pid, source },
        _ => NetnsError::Open { path, source },
    })
}

fn inode_of(file: &File, pid: u32) -> Result<u64, NetnsError> {
    file.metadata()
        .map(|m| m.ino())
        .map_err(|source| NetnsError::Open {
            path: format!("/proc/{pid}/ns/net"),
            source,
        })
}

/// Opens the container's namespace and checks it is still the recorded one.
///
/// The returned file pins the namespace: everything done through it (or
/// through sockets created inside it) reaches exactly that namespace, even
/// if the pid is reused meanwhile.
pub fn open_container(ns: &NetnsRef) -> Result<File, NetnsError> {
    let file = open_path(ns.pid)?;
    let found = inode_of(&file, ns.pid)?;
    if found != ns.inode {
        return Err(NetnsError::InodeMismatch {
            pid: ns.pid,
            expected: ns.inode,
            found,
        });
    }
    Ok(file)
}

/// Opens the calling thread's own network namespace.
pub fn open_current() -> Result<File, NetnsError> {
    let path = "/proc/thread-self/ns/net";
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_string(),
        source,
    })
}

/// A visit: called with the outcome of entering the job's namespace.
type NsJob = Box<dyn FnOnce(std::io::Result<()>) + Send + 'static>;

/// One long-lived thread that visits namespaces: for each job it enters
/// the job's namespace, runs the job there and goes back to its home (the
/// namespace of the thread that started it) before taking the next.
///
/// Starting and stopping a thread per container namespace cost 0.1 ms on a
/// quiet machine but 2–3 ms when the cores are busy (the new thread waits
/// to be scheduled), more than the netlink work done through it; a visit
/// costs two `setns` calls on a thread that is already there. The thread never runs a
/// job anywhere but in the namespace the job names, and stops for good if
/// it cannot get home.
pub struct NsVisitor {
    tx: std::sync::Mutex<Option<mpsc::Sender<(File, NsJob)>>>,
    join: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NsVisitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsVisitor").finish_non_exhaustive()
    }
}

fn setns_net(fd: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) with CLONE_NEWNET changes only the network namespace
    // of the calling thread, which is the visitor's own thread (it runs
    // nothing but visitor jobs); `fd` is an open nsfs file.
    let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Starts a thread named `name` that enters the namespace `ns` refers to
/// and then runs `f`, handing it the outcome of entering (on failure the
/// thread is still in the namespace it was started from, and `f` should
/// only report it). The new thread's namespace is made explicit: a thread
/// inherits its creator's, but nothing depends on that.
pub(crate) fn spawn_in<F>(ns: &File, name: &str, f: F) -> Result<JoinHandle<()>, NetnsError>
where
    F: FnOnce(std::io::Result<()>) + Send + 'static,
{
    let spawn_error = |source| NetnsError::Spawn {
        label: name.to_string(),
        source,
    };
    let ns = ns.try_clone().map_err(spawn_error)?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || f(setns_net(&ns)))
        .map_err(spawn_error)
}

impl NsVisitor {
    /// Starts the thread; its home is the namespace `home` refers to (an
    /// nsfs file, e.g. from [`open_current`]).
    pub fn spawn(home: &File) -> Result<NsVisitor, NetnsError> {
        let home_again = home.try_clone().map_err(|source| NetnsError::Spawn {
            label: "namespace visitor".to_string(),
            source,
        })?;
        let (tx, rx) = mpsc::channel::<(File, NsJob)>();
        let join = spawn_in(home, "netns-visitor", move |at_home| {
            let home = home_again;
            if at_home.is_err() {
                return;
            }
            while let Ok((target, job)) = rx.recv() {
                let entered = setns_net(&target);
                drop(target);
                let moved = entered.is_ok();
                // On failure the job only reports it: still at home.
                job(entered);
                if !moved {
                    continue;
                }
                if let Err(e) = setns_net(&home) {
                    // Never run another job from a foreign namespace.
                    tracing::error!(error = %e, "namespace visitor cannot return home; stopping it");
                    return;
                }
            }
        })?;
        Ok(NsVisitor {
            tx: std::sync::Mutex::new(Some(tx)),
            join: std::sync::Mutex::new(Some(join)),
        })
    }

    /// Runs `f` inside the namespace `ns` refers to and returns its result.
    /// Jobs take turns on the one thread: keep them short.
    pub async fn run_in<R, F>(&self, ns: &File, label: &str, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let target = ns.try_clone().map_err(|source| NetnsError::Spawn {
            label: label.to_string(),
            source,
        })?;
        let (otx, orx) = tokio::sync::oneshot::channel();
        let job: NsJob = Box::new(move |entered| {
            let _ = otx.send(entered.map(|()| f()));
        });
        let sent = self
            .tx
            .lock()
            .expect("visitor sender lock")
            .as_ref()
            .map(|tx| tx.send((target, job)).is_ok())
            .unwrap_or(false);
        let gone = || NetnsError::ThreadGone {
            label: label.to_string(),
        };
        if !sent {
            return Err(gone());
        }
        orx.await
            .map_err(|_| gone())?
            .map_err(|source| NetnsError::Setns {
                label: label.to_string(),
                source,
            })
    }

    /// True while the thread takes jobs.
    pub fn is_alive(&self) -> bool {
        self.join
            .lock()
            .expect("visitor join lock")
            .as_ref()
            .is_some_and(|j| !j.is_finished())
    }
}

impl Drop for NsVisitor {
    fn drop(&mut self) {
        self.tx.lock().map(|mut t| t.take()).ok();
        if let Some(j) = self.join.lock().ok().and_then(|mut j| j.take()) {
            let _ = j.join();
        }
    }
}
