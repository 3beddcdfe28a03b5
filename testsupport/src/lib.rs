//! Test-only helpers for calico-mesos: network namespaces, containers, a
//! node topology and pings, all behind guards that clean up on success,
//! failure and panic (TESTING.md, "Safety rules for network tests").
//!
//! Owns: network namespaces whose names start with [`NETNS_PREFIX`], the
//! processes it starts in them, and nothing else. It never creates, changes
//! or deletes anything in the root network namespace: every `ip` command it
//! runs is scoped with `ip -n <ns>`, `ip netns exec <ns>` or `nsenter`, and
//! in-process work runs on a thread that has entered a test namespace.
//!
//! Typical use:
//!
//! ```no_run
//! if !testsupport::require_root() {
//!     return;
//! }
//! let node = testsupport::Node::new("mytest", 1);
//! let c = testsupport::Container::new(&node.ns);
//! assert!(!testsupport::ping(&c, "198.19.0.1".parse().unwrap()));
//! ```

mod cmd;
mod container;
pub mod etcd;
mod fabric;
mod netns;
mod node;
mod ping;

pub use cmd::{run, run_ok, CmdError, COMMAND_TIMEOUT};
pub use container::{exec_in, wait_no_eth0, Container};
pub use fabric::{Fabric, FabricNode};
pub use netns::{netns_inode, Netns, NETNS_PREFIX};
pub use node::{Node, GATEWAY_V4, GATEWAY_V6};
pub use ping::{ping, ping_from, Exec};

/// What [`require_root`] decided.
///
/// `true` means "go on"; `false` means "skip this test" (a line saying why
/// has been printed).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (network namespaces) and CI=true: a missing privilege is a failure in CI");
    }
    eprintln!("skipped: this test needs root to create network namespaces (run as root, or with CI=true to make it mandatory)");
    false
}
