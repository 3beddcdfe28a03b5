//! The policy reconciler: one nftables table, `inet calico-mesos`, that
//! holds the inbound and outbound rules of each distinct profile list the
//! node's endpoints have (one pair of chains per list, shared by its
//! endpoints), a set of each list's interfaces with one dispatch rule per
//! list, netgroup membership as sets and anti-spoofing (DESIGN.md,
//! "Policy" and "Dataplane per endpoint").
//!
//! Pure planning is separated from side effects: [`render()`] (spec →
//! [`Ruleset`]), [`RenderedPolicy`] (the same, kept up to date from
//! [`SpecChange`]s at the cost of the change), [`parse_listing`] (nft's JSON → [`Ruleset`]), [`plan()`]
//! (desired, observed → [`PolicyAction`]s) and [`to_nft()`] (actions → one
//! nft JSON transaction) touch nothing. [`PolicyDataplane`] applies them
//! through an [`NftBackend`] (libnftables in process, else `nft`);
//! [`NftEvents`] listens for commits by others.
//!
//! Owns our table and nothing else: no other table is ever listed,
//! changed or deleted, and traffic that touches no `cali*` interface is
//! never judged by it.

mod apply;
mod backend;
mod change;
mod events;
mod incremental;
#[cfg(test)]
mod incremental_tests;
mod libnft;
mod memo;
mod model;
mod nft;
mod observe;
mod plan;
#[cfg(test)]
mod plan_tests;
mod process;
mod render;
mod ruleset;

pub use apply::{PolicyDataplane, PolicyError, NFT_TIMEOUT};
pub use backend::{NftBackend, NftBackendKind, NftOptions};
pub use change::SpecChange;
pub use events::{parse_datagram, NftEvent, NftEvents};
pub use incremental::{Delta, RenderedPolicy, Update};
pub use libnft::{LibNft, LibNftError, LIBNFTABLES};
pub use memo::{Memo, Stamp};
pub use model::*;
pub use nft::to_nft;
pub use observe::{parse_listing, ObserveError};
pub use plan::{plan, simulate, PolicyAction, SimulateError};
pub use process::NftProcess;
pub use render::{render, valid_endpoint, valid_netgroup, RenderError};
pub use ruleset::*;
