//! [`NftBackend`]: how the policy dataplane reaches nftables, chosen once
//! by [`NftBackend::open`] and injected into
//! [`PolicyDataplane::with_backend`](super::PolicyDataplane::with_backend).
//!
//! Two ways, one contract (run a JSON batch as one transaction; list our
//! table as JSON): libnftables in process ([`LibNft`], the default) or an
//! `nft` process per call ([`NftProcess`], when the library cannot be
//! loaded). Both run in the network namespace of the thread that opened
//! them.

use super::apply::{PolicyError, NFT_TIMEOUT};
use super::libnft::{LibNft, LIBNFTABLES};
use super::observe::is_missing_table;
use super::process::NftProcess;
use super::ruleset::TABLE;
use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A transaction gets one more second per this many bytes of input: a
/// full create at 1,000 endpoints in 100 profile lists is about 600 KiB
/// and takes nft well under a second.
const BYTES_PER_EXTRA_SECOND: usize = 512 * 1024;

/// The deadline of one call sending `input_len` bytes.
pub(crate) fn deadline(timeout: Duration, input_len: usize) -> Duration {
    timeout + Duration::from_secs((input_len / BYTES_PER_EXTRA_SECOND) as u64)
}

/// What [`NftBackend::open`] tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftOptions {
    /// The libnftables to load (a soname or a path); `None`: always run
    /// `nft` processes.
    pub library: Option<OsString>,
    /// The `nft` program of the process path.
    pub program: OsString,
    /// The deadline of one call (plus a second per 512 KiB of input).
    pub timeout: Duration,
}

impl Default for NftOptions {
    /// libnftables.so.1 if it loads, else `nft` from PATH; [`NFT_TIMEOUT`].
    fn default() -> Self {
        NftOptions {
            library: Some(LIBNFTABLES.into()),
            program: "nft".into(),
            timeout: NFT_TIMEOUT,
        }
    }
}

impl NftOptions {
    /// Only `nft` processes, running `program`.
    pub fn process(program: impl Into<OsString>) -> NftOptions {
        NftOptions {
            library: None,
            program: program.into(),
            ..NftOptions::default()
        }
    }

    /// The same, with another deadline per call.
    pub fn with_timeout(mut self, timeout: Duration) -> NftOptions {
        self.timeout = timeout;
        self
    }
}

/// Which way a backend reaches nftables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftBackendKind {
    /// libnftables, one persistent context.
    Library,
    /// One `nft` process per call.
    Process,
}

/// How a [`PolicyDataplane`](super::PolicyDataplane) reaches nftables.
#[derive(Debug)]
pub enum NftBackend {
    /// libnftables in process.
    Library(LibNft),
    /// `nft` processes.
    Process(NftProcess),
}

/// Set once the fallback has been logged: it is said once per process.
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

impl NftBackend {
    /// The backend `options` ask for, in the calling thread's network
    /// namespace: libnftables when it loads, else `nft` processes (said
    /// once per process, at info).
    pub fn open(options: &NftOptions) -> NftBackend {
        if let Some(library) = &options.library {
            match LibNft::open(library, options.timeout) {
                Ok(lib) => return NftBackend::Library(lib),
                Err(e) => {
                    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            error = %e,
                            library = %library.to_string_lossy(),
                            "libnftables unavailable: running an nft process per policy change"
                        );
                    }
                }
            }
        }
        NftBackend::Process(NftProcess::new(options.program.clone(), options.timeout))
    }

    /// Which way this backend reaches nftables.
    pub fn kind(&self) -> NftBackendKind {
        match self {
            NftBackend::Library(_) => NftBackendKind::Library,
            NftBackend::Process(_) => NftBackendKind::Process,
        }
    }

    /// True when a commit reported with `pid` was made by this backend.
    pub fn committed(&self, pid: u32) -> bool {
        match self {
            NftBackend::Library(l) => l.committed(pid),
            NftBackend::Process(p) => p.spawned(pid),
        }
    }

    /// Applies one nft JSON document as one transaction: all of it or, on
    /// [`PolicyError::NftFailed`], nothing.
    pub async fn apply(&self, doc: &[u8], what: &str) -> Result<(), PolicyError> {
        match self {
            NftBackend::Library(l) => l.run(doc, what).await.map(drop),
            NftBackend::Process(p) => p.run(&["-j", "-f", "-"], Some(doc), what).await.map(drop),
        }
    }

    /// Our table as nft's JSON listing; `None` when it does not exist.
    pub async fn list_table(&self) -> Result<Option<String>, PolicyError> {
        let what = format!("list table inet {TABLE}");
        let listed = match self {
            NftBackend::Library(l) => l.run(what.as_bytes(), &what).await,
            NftBackend::Process(p) => {
                p.run(&["-j", "list", "table", "inet", TABLE], None, &what)
                    .await
            }
        };
        match listed {
            Ok(json) => Ok(Some(json)),
            Err(PolicyError::NftFailed { stderr, .. }) if is_missing_table(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
