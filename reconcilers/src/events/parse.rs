//! Pure parsing of what the event socket receives: the netlink messages of
//! one datagram into [`KernelEvent`]s, and the ancillary data of a
//! `recvmsg` into the id of the namespace the events came from.
//!
//! Owns nothing and touches no socket: bytes in, values out, so that it is
//! tested on byte fixtures captured from a real kernel.

use super::KernelEvent;
use crate::endpoint::observe::{link_facts, route_facts};
use crate::nl::{neighbour_destination, own_address};
use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::RouteNetlinkMessage;

/// `SOL_NETLINK`: the socket level of netlink's options and control messages.
pub(crate) const SOL_NETLINK: i32 = libc::SOL_NETLINK;
/// `NETLINK_LISTEN_ALL_NSID`: the socket option, and the type of the
/// control message that carries the source namespace's id.
pub(crate) const NETLINK_LISTEN_ALL_NSID: i32 = 8;
/// `NETNSA_NSID_NOT_ASSIGNED`: the namespace has no id in ours.
pub(crate) const NSID_NOT_ASSIGNED: i32 = -1;

/// Netlink messages start on 4-byte boundaries (`NLMSG_ALIGN`).
fn nlmsg_align(len: usize) -> usize {
    (len + 3) & !3
}

/// The events in one datagram, in order, each with the port id of the
/// netlink socket whose request caused it (`nlmsg_pid`; 0 when the kernel
/// made the change on its own). Messages that are not link, neighbour,
/// address or route changes (or that cannot be decoded) are skipped; a truncated
/// message ends the datagram.
pub(crate) fn kernel_events(datagram: &[u8]) -> Vec<(u32, KernelEvent)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = match NetlinkBuffer::new_checked(rest) {
            Ok(buf) => buf.length() as usize,
            Err(e) => {
                tracing::debug!(error = %e, bytes = rest.len(), "undecodable netlink message; the rest of the datagram is dropped");
                break;
            }
        };
        if len == 0 {
            break;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
            Ok(msg) => {
                let requester = msg.header.port_number;
                out.extend(event_of(msg.payload).map(|event| (requester, event)));
            }
            Err(e) => tracing::debug!(error = %e, "undecodable netlink message skipped"),
        }
        rest = rest.get(nlmsg_align(len)..).unwrap_or_default();
    }
    out
}

fn event_of(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<KernelEvent> {
    let inner = match payload {
        NetlinkPayload::InnerMessage(inner) => inner,
        NetlinkPayload::Overrun(_) => return Some(KernelEvent::Overrun),
        _ => return None,
    };
    match inner {
        RouteNetlinkMessage::NewLink(l) => Some(link_event(&l, false)),
        RouteNetlinkMessage::DelLink(l) => Some(link_event(&l, true)),
        RouteNetlinkMessage::NewRoute(r) => route_event(&r, false),
        RouteNetlinkMessage::DelRoute(r) => route_event(&r, true),
        RouteNetlinkMessage::NewNeighbour(n) => Some(neighbour_event(&n, false)),
        RouteNetlinkMessage::DelNeighbour(n) => Some(neighbour_event(&n, true)),
        RouteNetlinkMessage::NewAddress(a) => Some(address_event(&a, false)),
        RouteNetlinkMessage::DelAddress(a) => Some(address_event(&a, true)),
        _ => None,
    }
}

fn neighbour_event(n: &NeighbourMessage, deleted: bool) -> KernelEvent {
    KernelEvent::Neighbour {
        index: n.header.ifindex,
        address: neighbour_destination(n),
        deleted,
    }
}

fn address_event(a: &AddressMessage, deleted: bool) -> KernelEvent {
    KernelEvent::Address {
        index: a.header.index,
        address: own_address(a),
        deleted,
    }
}

fn link_event(l: &LinkMessage, deleted: bool) -> KernelEvent {
    KernelEvent::Link {
        facts: link_facts(l),
        deleted,
    }
}

fn route_event(r: &RouteMessage, deleted: bool) -> Option<KernelEvent> {
    let f = route_facts(r)?;
    Some(KernelEvent::Route {
        dst: f.dst,
        prefix_len: f.prefix_len,
        protocol: f.protocol,
        oif: f.oif,
        deleted,
    })
}

/// `CMSG_ALIGN`: control messages and their data are aligned to the size
/// of `size_t` (the type of `cmsg_len`).
fn cmsg_align(len: usize) -> usize {
    let a = std::mem::size_of::<libc::size_t>();
    (len + a - 1) & !(a - 1)
}

/// The id, in the receiving socket's namespace, of the namespace the
/// datagram's events happened in: the `NETLINK_LISTEN_ALL_NSID` control
/// message in `control` (the `msg_control` bytes `recvmsg` filled, in the
/// host's `struct cmsghdr` layout). `None` when there is none (the
/// socket's own namespace) or it says "not assigned".
pub(crate) fn source_nsid(control: &[u8]) -> Option<i32> {
    let header = std::mem::size_of::<libc::cmsghdr>();
    let word = std::mem::size_of::<libc::size_t>();
    let mut rest = control;
    while rest.len() >= header {
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }
        let len = usize::from_ne_bytes(rest[..word].try_into().ok()?);
        let level = i32::from_ne_bytes(rest[word..word + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(rest[word + 4..word + 8].try_into().ok()?);
        if len < header || len > rest.len() {
            return None; // malformed (or cut by MSG_CTRUNC)
        }
        let data = &rest[cmsg_align(header)..len];
        if level == SOL_NETLINK && kind == NETLINK_LISTEN_ALL_NSID && data.len() >= 4 {
            let nsid = i32::from_ne_bytes(data[..4].try_into().ok()?);
            return (nsid != NSID_NOT_ASSIGNED && nsid >= 0).then_some(nsid);
        }
        rest = rest.get(cmsg_align(len)..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// Bytes of a fixture file: hex, as captured (`fixtures/README.md`).
    fn hex(text: &str) -> Vec<u8> {
        let t = text.trim();
        (0..t.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&t[i..i + 2], 16).unwrap())
            .collect()
    }

    const NEWADDR: &str = include_str!("fixtures/container_newaddr_v4.hex");
    const DELADDR: &str = include_str!("fixtures/container_deladdr_v4.hex");
    const LOCAL_ROUTE: &str = include_str!("fixtures/container_newroute_local_v4.hex");
    const OUR_ROUTE: &str = include_str!("fixtures/node_newroute_proto81_v4.hex");
    const DELLINK: &str = include_str!("fixtures/node_dellink_cali.hex");
    const CONTROL_NSID0: &str = include_str!("fixtures/control_nsid0.hex");
    const NEWNEIGH: &str = include_str!("fixtures/node_newneigh_permanent_v6.hex");
    const DELNEIGH: &str = include_str!("fixtures/node_delneigh_v6.hex");

    /// The port ids of the `ip` processes whose requests the fixtures
    /// captured (`ip` binds its socket to its own pid).
    const IP_ADDR_ADD: u32 = 5609;
    const IP_ADDR_DEL: u32 = 5610;
    const IP_ROUTE_ADD: u32 = 5612;
    const IP_NEIGH_ADD: u32 = 12701;
    /// The port id of changes the kernel made on its own.
    const KERNEL: u32 = 0;

    /// The events alone, without who asked for them.
    fn kinds(datagram: &[u8]) -> Vec<KernelEvent> {
        kernel_events(datagram)
            .into_iter()
            .map(|(_, k)| k)
            .collect()
    }

    #[test]
    fn an_address_added_and_removed_inside_a_container() {
        assert_eq!(
            kernel_events(&hex(NEWADDR)),
            vec![(
                IP_ADDR_ADD,
                KernelEvent::Address {
                    index: 2,
                    address: Some("198.18.0.7".parse().unwrap()),
                    deleted: false
                }
            )]
        );
        assert_eq!(
            kernel_events(&hex(DELADDR)),
            vec![(
                IP_ADDR_DEL,
                KernelEvent::Address {
                    index: 2,
                    address: Some("198.18.0.7".parse().unwrap()),
                    deleted: true
                }
            )]
        );
    }

    #[test]
    fn routes_keep_destination_protocol_interface_and_requester() {
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        // The kernel's local route for 198.18.0.7 inside the container:
        // made by the kernel itself.
        assert_eq!(
            kernel_events(&hex(LOCAL_ROUTE)),
            vec![(
                KERNEL,
                KernelEvent::Route {
                    dst: addr("198.18.0.7"),
                    prefix_len: 32,
                    protocol: 2,
                    oif: Some(2),
                    deleted: false
                }
            )]
        );
        // `ip route add 198.18.0.9/32 dev califixture0001 proto 81`.
        assert_eq!(
            kernel_events(&hex(OUR_ROUTE)),
            vec![(
                IP_ROUTE_ADD,
                KernelEvent::Route {
                    dst: addr("198.18.0.9"),
                    prefix_len: 32,
                    protocol: crate::ROUTE_PROTOCOL,
                    oif: Some(2),
                    deleted: false
                }
            )]
        );
    }

    #[test]
    fn a_deleted_link_keeps_its_facts() {
        // Deleted by the kernel, as the container's namespace went.
        let events = kernel_events(&hex(DELLINK));
        let [(
            KERNEL,
            KernelEvent::Link {
                facts,
                deleted: true,
            },
        )] = &events[..]
        else {
            panic!("one deleted link, by the kernel: {events:?}");
        };
        assert_eq!(facts.name, "califixture0001");
        assert_eq!(facts.index, 2);
        assert!(facts.is_veth, "{facts:?}");
    }

    #[test]
    fn several_messages_in_one_datagram_are_all_read_and_a_cut_one_ends_it() {
        let mut datagram = hex(NEWADDR);
        datagram.extend(hex(DELLINK));
        datagram.extend(hex(DELADDR));
        let events = kernel_events(&datagram);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(
            events[1],
            (KERNEL, KernelEvent::Link { deleted: true, .. })
        ));
        assert_eq!(events[2].0, IP_ADDR_DEL);

        let cut = &datagram[..datagram.len() - 10];
        assert_eq!(kernel_events(cut).len(), 2, "the cut message is dropped");
        assert!(kernel_events(&[]).is_empty());
        assert!(kernel_events(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn a_permanent_neighbour_added_and_deleted_in_the_node() {
        let entry = Some("2001:db8:1::7".parse().unwrap());
        assert_eq!(
            kernel_events(&hex(NEWNEIGH)),
            vec![(
                IP_NEIGH_ADD,
                KernelEvent::Neighbour {
                    index: 3,
                    address: entry,
                    deleted: false
                }
            )]
        );
        assert_eq!(
            kernel_events(&hex(DELNEIGH)),
            vec![(
                KERNEL,
                KernelEvent::Neighbour {
                    index: 3,
                    address: entry,
                    deleted: true
                }
            )]
        );
    }

    #[test]
    fn other_messages_are_skipped() {
        // The same RTM_NEWADDR bytes retyped as RTM_NEWRULE (32): no
        // event, whether or not the body decodes; the next one is kept.
        let mut rule = hex(NEWADDR);
        rule[4..6].copy_from_slice(&32u16.to_ne_bytes());
        rule.extend(hex(DELADDR));
        assert_eq!(
            kinds(&rule),
            vec![KernelEvent::Address {
                index: 2,
                address: Some("198.18.0.7".parse().unwrap()),
                deleted: true
            }]
        );
        // NLMSG_OVERRUN (4) says events were lost.
        let mut overrun = vec![0u8; 16];
        overrun[0..4].copy_from_slice(&16u32.to_ne_bytes());
        overrun[4..6].copy_from_slice(&4u16.to_ne_bytes());
        assert_eq!(kinds(&overrun), vec![KernelEvent::Overrun]);
    }

    /// A control buffer of `(level, type, data)` messages, laid out with
    /// libc's own `CMSG_*` macros (a second opinion on the layout).
    fn control(messages: &[(i32, i32, &[u8])]) -> Vec<u8> {
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let space: usize = messages
            .iter()
            .map(|(_, _, d)| unsafe { libc::CMSG_SPACE(d.len() as u32) } as usize)
            .sum();
        let mut buf = vec![0u8; space];
        // SAFETY: a zeroed msghdr whose control buffer is `buf`, large
        // enough for every message (CMSG_SPACE each); the CMSG_* macros
        // only compute pointers inside it, and each write stays within
        // the CMSG_LEN of its message.
        unsafe {
            let mut mh: libc::msghdr = std::mem::zeroed();
            mh.msg_control = buf.as_mut_ptr().cast();
            mh.msg_controllen = space as _;
            let mut c = libc::CMSG_FIRSTHDR(&mh);
            for (level, kind, data) in messages {
                assert!(!c.is_null());
                (*c).cmsg_level = *level;
                (*c).cmsg_type = *kind;
                (*c).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
                c = libc::CMSG_NXTHDR(&mh, c);
            }
        }
        buf
    }

    #[test]
    fn the_source_namespace_id_is_read_from_the_control_message() {
        // As the kernel sent it (x86_64): nsid 0.
        if cfg!(all(target_pointer_width = "64", target_endian = "little")) {
            assert_eq!(source_nsid(&hex(CONTROL_NSID0)), Some(0));
        }
        let nsid = |n: i32| control(&[(SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, &n.to_ne_bytes())]);
        assert_eq!(source_nsid(&nsid(0)), Some(0));
        assert_eq!(source_nsid(&nsid(7)), Some(7));
        assert_eq!(source_nsid(&nsid(NSID_NOT_ASSIGNED)), None);
        // Found behind another control message (NETLINK_PKTINFO, 3).
        let both = control(&[
            (SOL_NETLINK, 3, &5u32.to_ne_bytes()),
            (SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, &9i32.to_ne_bytes()),
        ]);
        assert_eq!(source_nsid(&both), Some(9));
        // Another level's message of the same type is not it.
        let other = control(&[(
            libc::SOL_SOCKET,
            NETLINK_LISTEN_ALL_NSID,
            &9i32.to_ne_bytes(),
        )]);
        assert_eq!(source_nsid(&other), None);
        // The socket's own namespace: no control message at all.
        assert_eq!(source_nsid(&[]), None);
        // Malformed lengths never panic.
        let mut bad = nsid(3);
        bad[0] = 0xff;
        assert_eq!(source_nsid(&bad), None);
        assert_eq!(source_nsid(&nsid(3)[..10]), None);
    }
}
