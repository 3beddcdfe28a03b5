//! The fabric reconciler: routes to the blocks (and borrowed addresses)
//! of the other nodes, via their fabric addresses on the shared L2
//! segment (DESIGN.md, "between nodes"; the role BGP plays in Calico).
//!
//! # What it owns, and what it must not touch
//!
//! A route is a fabric route of ours when, in the main table, it has our
//! protocol [`ROUTE_PROTOCOL`], is unicast, and has a gateway (RTA_GATEWAY,
//! or RTA_VIA). Exactly those are observed, replaced and deleted here.
//! Never touched: a route of any other protocol (even for the same
//! destination: adding ours then fails, and that is reported), any other
//! table, and the endpoints' routes, which share our protocol but are
//! device routes through `cali*` veths with no gateway (the endpoint
//! reconciler owns them; its resync in turn only sweeps routes through
//! our veths, so it never sees these).
//!
//! Our routes carry no output interface: the kernel picks it from the
//! gateway, which must be on a connected subnet (else the kernel refuses
//! the route: [`RouteError::GatewayNotOnLink`]). They are added at the
//! kernel's default metric ([`default_metric`]).
//!
//! [`FabricDataplane::ensure`] observes (one dump per family), plans
//! ([`plan()`], pure) and applies, trying every action and collecting the
//! failures; then observes again and fails unless nothing is left to do.

mod apply;
mod model;
mod observe;
mod plan;

pub use apply::RouteError;
pub use model::*;
pub use plan::plan;

use crate::nl::{Conn, NlError};
use crate::ROUTE_PROTOCOL;

/// Why the fabric routes could not be made to match.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The spec is malformed; nothing was changed.
    #[error("fabric routes refused: {0}")]
    Spec(#[from] SpecError),
    /// A netlink connection could not be made.
    #[error(transparent)]
    Netlink(#[from] NlError),
    /// Reading our routes failed.
    #[error("cannot read the fabric routes (protocol {ROUTE_PROTOCOL}, main table)")]
    Observe {
        /// The netlink error.
        #[source]
        source: NlError,
    },
    /// Some actions failed; the others were applied.
    #[error("{} of {} fabric route changes failed: {}", .failures.len(), .failures.len() + .applied.len(), describe_failures(.failures))]
    Failed {
        /// The actions that were applied.
        applied: Vec<FabricAction>,
        /// Every failure, in plan order.
        failures: Vec<RouteError>,
    },
    /// Everything was applied, yet the kernel still differs (someone
    /// changed it at the same moment, or a replace hit another route).
    #[error("the fabric routes still differ after applying: {}", describe(.remaining))]
    NotConverged {
        /// The actions that were applied.
        applied: Vec<FabricAction>,
        /// What a new plan would still do.
        remaining: Vec<FabricAction>,
    },
}

fn describe(actions: &[FabricAction]) -> String {
    actions
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_failures(failures: &[RouteError]) -> String {
    failures
        .iter()
        .map(|e| match std::error::Error::source(e) {
            Some(s) => format!("{e} ({s})"),
            None => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The fabric reconciler, bound to the namespace it was created in (the
/// node's).
#[derive(Debug)]
pub struct FabricDataplane {
    conn: Conn,
}

impl FabricDataplane {
    /// Connects to the calling thread's namespace (must run in a tokio
    /// runtime).
    pub fn new() -> Result<Self, NlError> {
        Ok(FabricDataplane {
            conn: Conn::current()?,
        })
    }

    /// The port id of the netlink socket the fabric's changes go through:
    /// the requester of their notifications.
    pub fn port_id(&self) -> u32 {
        self.conn.port_id()
    }

    /// Our fabric routes as the kernel has them now.
    pub async fn observe(&self) -> Result<Vec<ObservedRoute>, FabricError> {
        observe::observe(&self.conn)
            .await
            .map_err(|source| FabricError::Observe { source })
    }

    /// Makes our fabric routes exactly `spec` (with `dry_run`, only says
    /// what it would do). Returns the actions applied (or that would be);
    /// empty when the kernel already matched.
    pub async fn ensure(
        &self,
        spec: &FabricSpec,
        dry_run: bool,
    ) -> Result<Vec<FabricAction>, FabricError> {
        let spec = spec.validate()?;
        let actions = plan(&spec, &self.observe().await?);
        if dry_run || actions.is_empty() {
            return Ok(actions);
        }
        let applied = self.apply(&actions).await?;
        let remaining = plan(&spec, &self.observe().await?);
        if !remaining.is_empty() {
            return Err(FabricError::NotConverged { applied, remaining });
        }
        Ok(applied)
    }

    /// Applies `actions` (e.g. a dry run's, after review), trying every
    /// one; returns them when all succeeded, else every failure. A route
    /// to delete that is already gone counts as deleted.
    pub async fn apply(&self, actions: &[FabricAction]) -> Result<Vec<FabricAction>, FabricError> {
        let (applied, failures) = apply::apply_all(&self.conn, actions).await;
        if failures.is_empty() {
            Ok(applied)
        } else {
            Err(FabricError::Failed { applied, failures })
        }
    }

    /// Deletes every fabric route of ours (and nothing else); returns what
    /// it deleted.
    pub async fn remove_all(&self) -> Result<Vec<FabricAction>, FabricError> {
        self.ensure(&FabricSpec::default(), false).await
    }
}
