//! [`Memo`]: what the last short-lived process applied to our table, kept
//! in a file, so that the next one need not read the whole table back.
//!
//! A plugin that reconciles inline is a fresh process each time: without
//! this it lists our whole table through libnftables to compare (about
//! 10 ms at 1,000 endpoints). The kernel counts every committed nftables
//! transaction in a namespace: the ruleset generation (`NFT_MSG_GETGEN`).
//! A process that committed our table, and saw the generation move by
//! exactly one across its commit, knows the table is its spec at that
//! generation. It writes that down with the generation. The next process
//! that finds the same generation knows that nobody has committed anything
//! since, so the table is still that spec.
//!
//! The generation starts again at 1 in every new namespace, so the memo
//! also names the namespace: its cookie (`SO_NETNS_COOKIE`, never reused
//! while the machine is up) and the boot id. It names the program too
//! (the executable file's device, inode, size and modification time): the
//! spec is rendered again by whoever recalls it, and another build may
//! render it otherwise, so only the same file's memo is used.
//!
//! A memo that does not match the namespace's current [`Stamp`] is not
//! used; a missing or unreadable one is the same as none. The file is
//! replaced whole (written beside it, then renamed), so a reader never
//! sees half of one. Only a SIGKILL between the write and the rename
//! leaves the file beside it (`<name>.tmp.<pid>`) behind.

use super::events::{parse_datagram, NftEvent};
use super::model::PolicySpec;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN`.
const MSG_GETGEN: u16 = (10 << 8) | 16;
/// `SO_NETNS_COOKIE` (asm-generic, as on x86 and arm).
const SO_NETNS_COOKIE: libc::c_int = 71;
/// How long the kernel may take to answer the generation request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Which namespace, in which boot, at which ruleset generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The namespace's cookie.
    pub netns_cookie: u64,
    /// The running program's executable file.
    pub program: String,
    /// The namespace's nftables ruleset generation.
    pub generation: u32,
}

/// The memo's file content: the spec our table held at `stamp`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    stamp: Stamp,
    spec: PolicySpec,
}

/// The memo of one node's table: its file, and a netlink socket in the
/// node's namespace to ask for the generation.
#[derive(Debug)]
pub struct Memo {
    path: PathBuf,
    socket: Socket,
    boot_id: String,
    netns_cookie: u64,
    program: String,
}

impl Memo {
    /// A memo kept at `path`, for the calling thread's network namespace.
    pub fn open(path: &Path) -> io::Result<Memo> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        set_receive_timeout(&socket, ANSWER_TIMEOUT)?;
        let netns_cookie = netns_cookie(&socket)?;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
            .trim()
            .to_string();
        Ok(Memo {
            path: path.to_path_buf(),
            socket,
            boot_id,
            netns_cookie,
            program: program()?,
        })
    }

    /// The namespace's stamp now.
    pub fn stamp(&self) -> io::Result<Stamp> {
        Ok(Stamp {
            boot_id: self.boot_id.clone(),
            netns_cookie: self.netns_cookie,
            program: self.program.clone(),
            generation: self.generation()?,
        })
    }

    /// The spec the memo says our table holds, if its stamp is `now`.
    pub fn recall(&self, now: &Stamp) -> Option<PolicySpec> {
        let bytes = std::fs::read(&self.path).ok()?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        (record.stamp == *now).then_some(record.spec)
    }

    /// Writes down that our table holds `spec` at `stamp`.
    pub fn remember(&self, stamp: &Stamp, spec: &PolicySpec) -> io::Result<()> {
        let record = Record {
            stamp: stamp.clone(),
            spec: spec.clone(),
        };
        let bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        let beside = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&beside, bytes)?;
        std::fs::rename(&beside, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&beside);
        })
    }

    /// The ruleset generation, asked of the kernel.
    fn generation(&self) -> io::Result<u32> {
        let mut request = Vec::with_capacity(20);
        request.extend_from_slice(&20u32.to_ne_bytes());
        request.extend_from_slice(&MSG_GETGEN.to_ne_bytes());
        request.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // nfgenmsg
        self.socket.send(&request, 0)?;
        // Each receive waits at most ANSWER_TIMEOUT, and only a message
        // that is neither the answer nor an error makes us receive again.
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            if let Some(NftEvent::Committed {
                generation: Some(g),
                ..
            }) = parse_datagram(&buf).into_iter().next()
            {
                return Ok(g);
            }
            if let Some(errno) = netlink_error(&buf) {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
    }
}

/// The errno of a netlink error message, if `buf` starts with one.
fn netlink_error(buf: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    if kind != libc::NLMSG_ERROR as u16 {
        return None;
    }
    let code = i32::from_ne_bytes(buf.get(16..20)?.try_into().ok()?);
    Some(if code == 0 { libc::EPROTO } else { -code })
}

/// The running executable file, as `device:inode:size:mtime`.
fn program() -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/exe")?;
    Ok(format!(
        "{}:{}:{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads `size_of::<timeval>()` bytes from a live
    // timeval on this stack frame; the fd is an open socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn netns_cookie(socket: &Socket) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live u64 on this
    // stack frame and updates `len`; the fd is an open socket we own.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_netlink_error_gives_its_errno_and_other_messages_none() {
        let mut e = Vec::new();
        e.extend_from_slice(&36u32.to_ne_bytes());
        e.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        e.extend_from_slice(&[0; 10]);
        e.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(netlink_error(&e), Some(libc::EPERM));
        e[2 + 4 - 2..6].copy_from_slice(&MSG_GETGEN.to_ne_bytes());
        assert_eq!(netlink_error(&e), None);
        assert_eq!(netlink_error(&[1, 2]), None);
    }
}
