//! Reads our fabric routes from the kernel: one route dump per family,
//! filtered by the kernel to the main table and our protocol, then to the
//! routes that are ours by the rule in the module doc of [`super`].

use super::model::ObservedRoute;
use crate::endpoint::observe::{dump_routes, RouteFacts};
use crate::nl::{Conn, NlError};
use crate::ROUTE_PROTOCOL;
use ipnet::IpNet;
use netlink_packet_route::route::RouteType;

/// The fabric route in `r`, if `r` is one of ours: our protocol (the dump
/// filters by it; checked again), a unicast route with a gateway. Device
/// routes of ours (the endpoints') have no gateway and are not listed.
pub(crate) fn fabric_route(r: &RouteFacts) -> Option<ObservedRoute> {
    if r.protocol != ROUTE_PROTOCOL || r.kind != RouteType::Unicast {
        return None;
    }
    let via = r.gateway?;
    let dst = IpNet::new(r.dst, r.prefix_len).ok()?;
    Some(ObservedRoute {
        dst,
        via,
        metric: r.priority.unwrap_or(0),
    })
}

/// Every fabric route of ours, IPv4 first.
pub(crate) async fn observe(conn: &Conn) -> Result<Vec<ObservedRoute>, NlError> {
    let (v4, v6) = futures::join!(
        dump_routes(conn, false, Some(ROUTE_PROTOCOL), None),
        dump_routes(conn, true, Some(ROUTE_PROTOCOL), None)
    );
    Ok(v4?
        .iter()
        .chain(v6?.iter())
        .filter_map(fabric_route)
        .collect())
}
