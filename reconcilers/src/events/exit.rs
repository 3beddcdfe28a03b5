//! The exit of a container's process, as a pidfd (Linux `pidfd_open`).
//!
//! Owns: the pidfd it opens. A pidfd refers to the process, not to its
//! namespaces, so watching it never keeps a container's namespace alive.

use std::os::fd::{FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// Readable once the process exits (Linux `pidfd_open`).
#[derive(Debug)]
pub struct ProcessExit {
    fd: AsyncFd<OwnedFd>,
}

impl ProcessExit {
    /// Watches `pid`; fails if it does not exist.
    pub fn watch(pid: u32) -> std::io::Result<ProcessExit> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_open,
                pid as libc::pid_t,
                libc::PIDFD_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: an OwnedFd keeps its fd open and unchanged for as long as
        // the AsyncFd owns it.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(ProcessExit { fd })
    }

    /// Waits until the process has exited.
    pub async fn exited(&self) {
        // A pidfd becomes readable when the process exits, and stays so.
        let _ = self.fd.readable().await.map(|mut g| g.retain_ready());
    }
}
