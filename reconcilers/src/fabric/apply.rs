//! Applies a fabric plan: one netlink request per action, a few at a time.
//! Every action is tried; the failures are collected, not the first one
//! returned (one unreachable gateway must not keep the other routes away).

use super::model::*;
use crate::endpoint::MAIN_TABLE;
use crate::nl::{request, Conn, NlError};
use crate::ROUTE_PROTOCOL;
use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

/// How many requests are in flight at once on the node's connection.
const IN_FLIGHT: usize = 16;

/// Why one fabric action failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The kernel refused the gateway: it is not on a subnet this node is
    /// connected to (IPv4 answers EINVAL "invalid gateway", IPv6
    /// EHOSTUNREACH), so no output interface can be chosen.
    #[error("{action}: gateway {via} is not on a subnet this node is connected to")]
    GatewayNotOnLink {
        /// The action, described.
        action: String,
        /// The gateway.
        via: IpAddr,
        /// The kernel's answer.
        #[source]
        source: NlError,
    },
    /// A route for the destination at our metric exists and is not ours
    /// (another protocol): it is left alone, and ours is not added.
    #[error("{action}: a route for {dst} that is not ours is in the way; left alone")]
    NotOurs {
        /// The action, described.
        action: String,
        /// The destination.
        dst: IpNet,
        /// The kernel's answer (EEXIST).
        #[source]
        source: NlError,
    },
    /// Any other refusal.
    #[error("{action}")]
    Kernel {
        /// The action, described.
        action: String,
        /// The kernel's answer.
        #[source]
        source: NlError,
    },
}

const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
const REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
const DELETE: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// The message for our route `dst` via `via` (metric given only for a
/// delete: a new route gets the kernel's default, see [`default_metric`]).
fn route_message(dst: IpNet, via: IpAddr, metric: Option<u32>, delete: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = MAIN_TABLE as u8;
    // The kernel deletes only a route of this protocol with this gateway
    // (and metric): never anyone else's.
    m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    m.header.scope = if delete {
        RouteScope::NoWhere
    } else {
        RouteScope::Universe
    };
    m.header.kind = RouteType::Unicast;
    m.attributes
        .push(RouteAttribute::Destination(dst.network().into()));
    if dst.addr().is_ipv4() == via.is_ipv4() {
        m.attributes.push(RouteAttribute::Gateway(via.into()));
    } else {
        // Only a route made by hand can mix families: RTA_VIA.
        m.attributes.push(RouteAttribute::Via(match via {
            IpAddr::V4(v) => RouteVia::Inet(v),
            IpAddr::V6(v) => RouteVia::Inet6(v),
        }));
    }
    if let Some(p) = metric.filter(|p| *p != 0) {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    m
}

async fn apply_one(conn: &Conn, a: &FabricAction) -> Result<(), RouteError> {
    let (msg, flags, via) = match a {
        FabricAction::Add(r) => (
            RouteNetlinkMessage::NewRoute(route_message(r.dst, r.via, None, false)),
            ADD,
            r.via,
        ),
        FabricAction::Replace { to, .. } => (
            RouteNetlinkMessage::NewRoute(route_message(to.dst, to.via, None, false)),
            REPLACE,
            to.via,
        ),
        FabricAction::Delete(o) => (
            RouteNetlinkMessage::DelRoute(route_message(o.dst, o.via, Some(o.metric), true)),
            DELETE,
            o.via,
        ),
    };
    let deleting = matches!(a, FabricAction::Delete(_));
    match request(conn, msg, flags).await {
        Ok(_) => Ok(()),
        // Someone removed it first: what we wanted.
        Err(e) if deleting && e.errno() == Some(libc::ESRCH) => Ok(()),
        Err(source) if !deleting => match source.errno() {
            Some(libc::EINVAL | libc::ENETUNREACH | libc::EHOSTUNREACH) => {
                Err(RouteError::GatewayNotOnLink {
                    action: a.to_string(),
                    via,
                    source,
                })
            }
            Some(libc::EEXIST) => Err(RouteError::NotOurs {
                action: a.to_string(),
                dst: a.dst(),
                source,
            }),
            _ => Err(RouteError::Kernel {
                action: a.to_string(),
                source,
            }),
        },
        Err(source) => Err(RouteError::Kernel {
            action: a.to_string(),
            source,
        }),
    }
}

/// Applies every action (a few concurrently: they concern different
/// routes, or, for one destination, a replace and deletes at other
/// metrics or gateways, which do not interfere). Returns the actions that
/// succeeded and the failures, both in plan order.
pub(crate) async fn apply_all(
    conn: &Conn,
    actions: &[FabricAction],
) -> (Vec<FabricAction>, Vec<RouteError>) {
    let results: Vec<(FabricAction, Result<(), RouteError>)> =
        futures::stream::iter(actions.iter().copied())
            .map(|a| async move { (a, apply_one(conn, &a).await) })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (a, r) in results {
        match r {
            Ok(()) => {
                tracing::info!(action = %a, "fabric route changed");
                done.push(a);
            }
            Err(e) => {
                tracing::warn!(action = %a, error = %e, "fabric route change failed");
                failed.push(e);
            }
        }
    }
    (done, failed)
}
