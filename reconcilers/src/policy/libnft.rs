//! [`LibNft`]: libnftables loaded at run time, one `nft_ctx` kept for the
//! life of the dataplane on a thread of its own inside the node's network
//! namespace.
//!
//! Why: an `nft` process per change pays the spawn, a fresh cache and, when
//! the transaction deleted anything, an RCU grace period when it closes
//! its netlink socket (the kernel flushes the deferred destruction of
//! deleted objects on socket release). A persistent context pays none of
//! these: its socket stays open and its cache is refreshed only when the
//! ruleset's generation id moved (libnftables compares it before every
//! command, so a change made by someone else is seen).
//!
//! Facts this relies on (libnftables 1.0.6, checked by the tests):
//! - `nft_ctx_new` opens the context's netlink socket at once, in the
//!   namespace of the calling thread; the socket stays bound to that
//!   namespace (and keeps it alive) until `nft_ctx_free`. So the context is
//!   made, used and freed on one thread that entered the node's namespace
//!   first, and dropping the [`LibNft`] frees it.
//! - A context is not thread-safe, and `nft_ctx_new` initialises library
//!   globals once without a lock: contexts are created under one
//!   process-wide lock, and each is used only by its own thread.
//! - libmnl opens the socket without `SOCK_CLOEXEC`: it is marked
//!   close-on-exec right after creation, or every child we start (and its
//!   children: a container's `sleep`) would inherit it and keep the node's
//!   namespace alive.
//! - With JSON output on, `nft_run_cmd_from_buffer` reads JSON input too
//!   (1.0.6 has no `nft_ctx_input_set_flags`).
//! - The library is never unloaded (loaded once per process and name):
//!   nothing guarantees that libnftables and its dependencies unload
//!   cleanly.
//!
//! Owns the thread, the context and its socket; never touches another
//! namespace than the one it was made in.

use super::apply::PolicyError;
use super::backend::deadline;
use std::ffi::{c_char, c_int, c_uint, CStr, CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The library's soname on Debian (package `libnftables1`, pulled in by
/// `nftables`).
pub const LIBNFTABLES: &str = "libnftables.so.1";
/// `NFT_CTX_DEFAULT`.
const NFT_CTX_DEFAULT: u32 = 0;
/// `NFT_CTX_OUTPUT_JSON` (`libnftables.h`).
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;
/// How long opening (thread start, `setns`, context creation) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dropping waits for the thread to free the context.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The thread's name: the kernel reports it with each commit we make
/// (`NFTA_GEN_PROC_NAME`, as `nft monitor` shows).
const THREAD_NAME: &str = "calico-nft";

/// Why libnftables could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LibNftError {
    /// The shared library could not be loaded.
    #[error("cannot load {library}")]
    Load {
        /// The name or path tried.
        library: String,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// The library lacks a function we call.
    #[error("{library} has no {symbol}")]
    Symbol {
        /// The library.
        library: String,
        /// The missing function.
        symbol: &'static str,
        /// The loader's error.
        #[source]
        source: libloading::Error,
    },
    /// `nft_ctx_new` returned no context.
    #[error("nft_ctx_new failed")]
    NoContext,
    /// The context's thread could not be started.
    #[error("cannot start the libnftables thread")]
    Thread(#[source] std::io::Error),
    /// The context's thread could not enter the namespace.
    #[error("cannot enter the network namespace for libnftables")]
    Setns(#[source] std::io::Error),
    /// The context's thread did not report back in time.
    #[error("the libnftables thread did not start within {0:?}")]
    Timeout(Duration),
}

/// `struct nft_ctx`, opaque.
#[repr(C)]
struct NftCtx {
    _opaque: [u8; 0],
}

type CtxNew = unsafe extern "C" fn(u32) -> *mut NftCtx;
type CtxFree = unsafe extern "C" fn(*mut NftCtx);
type CtxBuffer = unsafe extern "C" fn(*mut NftCtx) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut NftCtx) -> *const c_char;
type CtxSetFlags = unsafe extern "C" fn(*mut NftCtx, c_uint);
type RunCmd = unsafe extern "C" fn(*mut NftCtx, *const c_char) -> c_int;

/// The functions we call, resolved once per library.
struct Api {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxBuffer,
    buffer_error: CtxBuffer,
    get_output: CtxGetBuffer,
    get_error: CtxGetBuffer,
    output_set_flags: CtxSetFlags,
    run_cmd: RunCmd,
    /// Keeps the functions above mapped; never dropped (see the module doc).
    _lib: libloading::Library,
}

/// Libraries loaded so far, by the name they were asked by.
static LOADED: Mutex<Vec<(OsString, &'static Api)>> = Mutex::new(Vec::new());
/// Serialises `nft_ctx_new` (unlocked one-time initialisation inside) and
/// the close-on-exec fix that follows it.
static CREATE: Mutex<()> = Mutex::new(());

fn symbol<T: Copy>(
    lib: &libloading::Library,
    library: &OsStr,
    name: &'static str,
) -> Result<T, LibNftError> {
    let with_nul = format!("{name}\0");
    // SAFETY: every `T` this is called with is the exact C signature of
    // `name` in libnftables.h (1.0.x; these functions are in the library's
    // first symbol version, LIBNFTABLES_1, and have not changed since).
    // The copied pointer stays valid because the library is never
    // unloaded.
    unsafe { lib.get::<T>(with_nul.as_bytes()) }
        .map(|s| *s)
        .map_err(|source| LibNftError::Symbol {
            library: library.to_string_lossy().into_owned(),
            symbol: name,
            source,
        })
}

fn load(library: &OsStr) -> Result<&'static Api, LibNftError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, api)) = loaded.iter().find(|(n, _)| n == library) {
        return Ok(api);
    }
    // SAFETY: loading runs the library's initialisers. libnftables and
    // its dependencies (libmnl, libnftnl, jansson, gmp, libxtables) are
    // ordinary C libraries whose initialisers only set up their own state.
    let lib = unsafe { libloading::Library::new(library) }.map_err(|source| LibNftError::Load {
        library: library.to_string_lossy().into_owned(),
        source,
    })?;
    let api = Api {
        ctx_new: symbol(&lib, library, "nft_ctx_new")?,
        ctx_free: symbol(&lib, library, "nft_ctx_free")?,
        buffer_output: symbol(&lib, library, "nft_ctx_buffer_output")?,
        buffer_error: symbol(&lib, library, "nft_ctx_buffer_error")?,
        get_output: symbol(&lib, library, "nft_ctx_get_output_buffer")?,
        get_error: symbol(&lib, library, "nft_ctx_get_error_buffer")?,
        output_set_flags: symbol(&lib, library, "nft_ctx_output_set_flags")?,
        run_cmd: symbol(&lib, library, "nft_run_cmd_from_buffer")?,
        _lib: lib,
    };
    let api: &'static Api = Box::leak(Box::new(api));
    loaded.push((library.to_os_string(), api));
    Ok(api)
}

/// One context, owned by its thread.
struct Session {
    api: &'static Api,
    ctx: *mut NftCtx,
}

/// What one command left: its return code, output and error text.
struct Outcome {
    rc: c_int,
    output: String,
    error: String,
}

impl Session {
    fn open(api: &'static Api) -> Result<Session, LibNftError> {
        let _create = CREATE.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the signature is nft_ctx_new's; the global initialisation
        // it does on first use is serialised by CREATE.
        let ctx = unsafe { (api.ctx_new)(NFT_CTX_DEFAULT) };
        if ctx.is_null() {
            return Err(LibNftError::NoContext);
        }
        let session = Session { api, ctx };
        // SAFETY: `ctx` is a live context used by this thread alone; these
        // calls only set the context's own options (buffering output and
        // errors in memory instead of writing to stdout and stderr).
        unsafe {
            (api.buffer_output)(ctx);
            (api.buffer_error)(ctx);
            (api.output_set_flags)(ctx, NFT_CTX_OUTPUT_JSON);
        }
        mark_netfilter_sockets_cloexec();
        Ok(session)
    }

    /// Runs one command (nft syntax or a JSON document).
    fn run(&mut self, command: &CStr) -> Outcome {
        // SAFETY: `ctx` is live and used by this thread alone; `command` is
        // NUL-terminated and outlives the call; the library copies it.
        let rc = unsafe { (self.api.run_cmd)(self.ctx, command.as_ptr()) };
        Outcome {
            rc,
            output: self.take(self.api.get_output),
            error: self.take(self.api.get_error),
        }
    }

    /// Copies out (and so empties) one of the context's buffers.
    fn take(&self, get: CtxGetBuffer) -> String {
        // SAFETY: with buffering on, the getter returns a NUL-terminated
        // string owned by the context (or NULL), valid until the next call
        // on the context; it is copied before any other call.
        unsafe {
            let p = get(self.ctx);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from nft_ctx_new, is freed once, here, on the
        // thread that used it; nothing refers to it afterwards.
        unsafe { (self.api.ctx_free)(self.ctx) };
    }
}

/// Marks every netfilter netlink socket of the process close-on-exec (see
/// the module doc). Only libnftables makes such sockets without the flag;
/// setting it on one that has it changes nothing.
fn mark_netfilter_sockets_cloexec() {
    for fd in netfilter_sockets() {
        // SAFETY: fcntl on an fd number only reads or sets its flags; if the
        // fd was closed meanwhile the call fails with EBADF, harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The process's open `AF_NETLINK` / `NETLINK_NETFILTER` sockets.
pub(crate) fn netfilter_sockets() -> Vec<c_int> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<c_int>().ok())
        .filter(|&fd| {
            sockopt(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
                && sockopt(fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        })
        .collect()
}

fn sockopt(fd: c_int, opt: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a live
    // c_int on this frame; a non-socket fd fails with ENOTSOCK.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

fn current_tid() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u32 }
}

type Job = Box<dyn FnOnce(&mut Session) + Send + 'static>;

/// libnftables with one persistent context, on its own thread in the
/// network namespace of the thread that opened it.
pub struct LibNft {
    tx: Option<mpsc::Sender<Job>>,
    join: Option<JoinHandle<()>>,
    /// The thread's id: the pid the kernel reports for our commits.
    tid: u32,
    timeout: Duration,
}

impl std::fmt::Debug for LibNft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibNft")
            .field("tid", &self.tid)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LibNft {
    /// Loads `library` and makes a context in the calling thread's network
    /// namespace; each later call may take `timeout` (plus a second per
    /// 512 KiB of input).
    pub fn open(library: impl AsRef<OsStr>, timeout: Duration) -> Result<LibNft, LibNftError> {
        let api = load(library.as_ref())?;
        // The thread would inherit this thread's namespace anyway; entering
        // it by fd also holds if that changes under us.
        let netns = File::open("/proc/thread-self/ns/net").ok();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<u32, LibNftError>>(1);
        let join = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                if let Some(ns) = netns {
                    let here = std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino());
                    let there = ns.metadata().map(|m| m.ino());
                    if here.ok() != there.ok() {
                        // SAFETY: setns(2) with CLONE_NEWNET only changes
                        // the namespace of this thread, which we own and
                        // which runs nothing but our jobs; `ns` is an open
                        // nsfs file.
                        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            let e = std::io::Error::last_os_error();
                            let _ = ready_tx.send(Err(LibNftError::Setns(e)));
                            return;
                        }
                    }
                }
                let mut session = match Session::open(api) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(current_tid())).is_err() {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job(&mut session);
                }
                // `session` drops here: the context and its socket are
                // freed on this thread, before it ends.
            })
            .map_err(LibNftError::Thread)?;
        let tid = match ready_rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(Ok(tid)) => tid,
            Ok(Err(e)) => {
                let _ = join.join();
                return Err(e);
            }
            Err(_) => {
                // Stuck (or gone) before answering: leave it; closing `tx`
                // ends it if it ever gets to its loop.
                return Err(LibNftError::Timeout(OPEN_TIMEOUT));
            }
        };
        Ok(LibNft {
            tx: Some(tx),
            join: Some(join),
            tid,
            timeout,
        })
    }

    /// True when `pid` is our context's thread: the kernel reports a
    /// thread's own id as the pid of the commits it makes.
    pub fn committed(&self, pid: u32) -> bool {
        pid == self.tid
    }

    /// Runs `command` on the context; a non-zero return is
    /// [`PolicyError::NftFailed`] with the library's error text. Returns
    /// the output.
    pub async fn run(&self, command: &[u8], what: &str) -> Result<String, PolicyError> {
        let timeout = deadline(self.timeout, command.len());
        let command = CString::new(command).map_err(|_| PolicyError::NftFailed {
            what: what.to_string(),
            status: "not run".into(),
            stderr: "the command contains a NUL byte".into(),
        })?;
        let (otx, orx) = tokio::sync::oneshot::channel();
        let gone = || PolicyError::LibraryGone {
            what: what.to_string(),
        };
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Box::new(move |s: &mut Session| {
                let _ = otx.send(s.run(&command));
            }))
            .map_err(|_| gone())?;
        let out = match tokio::time::timeout(timeout, orx).await {
            Err(_) => {
                return Err(PolicyError::Timeout {
                    what: what.to_string(),
                    timeout,
                })
            }
            Ok(Err(_)) => return Err(gone()),
            Ok(Ok(out)) => out,
        };
        if out.rc != 0 {
            return Err(PolicyError::NftFailed {
                what: what.to_string(),
                status: format!("libnftables returned {}", out.rc),
                stderr: out.error.trim().to_string(),
            });
        }
        Ok(out.output)
    }
}

impl Drop for LibNft {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop, which frees the
        // context (closing its socket, which unpins the namespace). Wait
        // for that, bounded: a thread stuck in a call is left behind.
        self.tx.take();
        let Some(join) = self.join.take() else {
            return;
        };
        let started = Instant::now();
        while !join.is_finished() {
            if started.elapsed() > CLOSE_TIMEOUT {
                tracing::warn!(timeout = ?CLOSE_TIMEOUT, "libnftables thread did not stop; leaving it");
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = join.join();
    }
}
