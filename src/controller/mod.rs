//! The reconcile loop's runtime, in the kube-runtime style: triggers (store
//! changes, kicks from plugin processes, netlink events, periodic resync)
//! feed a de-duplicating work queue; a runner reconciles each key, never
//! one key twice at once, with per-key backoff on failure. This module owns
//! the runtime only; what a reconcile does lives with the object it serves.

pub mod coalesce;
pub mod converge;
pub mod daemon;
pub mod dataplane;
pub mod echoes;
pub mod fabric;
pub mod freshness;
pub mod index;
pub mod key_locks;
pub mod kick;
pub mod link_book;
pub mod lock;
pub mod loop_status;
pub mod nsids;
pub mod reconcile;
pub mod runner;
pub mod scheduler;
