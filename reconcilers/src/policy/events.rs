//! [`NftEvents`]: nftables' netlink notifications in one namespace, reduced
//! to "a transaction was committed, by this pid".
//!
//! Every nftables transaction ends with an `NFT_MSG_NEWGEN` message that
//! carries the committing task's id (the thread's, which for a
//! single-threaded `nft` is its pid; for our libnftables context, the id of
//! its own thread). The daemon compares it with
//! [`PolicyDataplane::spawned_by_us`](super::PolicyDataplane::spawned_by_us):
//! a commit by anyone else may have changed our table, so it calls
//! `forget()` and `ensure` (which changes nothing when nothing of ours was
//! touched). Owns one netlink socket; reads, never writes.
//!
//! Wire format (all in one datagram, possibly several messages):
//!
//! ```text
//! nlmsghdr   len u32, type u16, flags u16, seq u32, pid u32   (host order)
//!            type = NFNL_SUBSYS_NFTABLES (10) << 8 | NFT_MSG_NEWGEN (15)
//! nfgenmsg   family u8, version u8, res_id u16                (4 bytes)
//! nlattr*    len u16, type u16 (host order), value, padded to 4 bytes
//!            NFTA_GEN_ID (1): u32 big-endian
//!            NFTA_GEN_PROC_PID (2): u32 big-endian
//!            NFTA_GEN_PROC_NAME (3): string
//! ```

use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;

/// nftables' multicast group (`NFNLGRP_NFTABLES`).
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN`.
const MSG_NEWGEN: u16 = (10 << 8) | 15;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NFTA_GEN_ID: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
/// Attribute type bits (the top two are NLA_F_NESTED and NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// A burst of notifications (a full create of a big table sends one per
/// object) must not overrun the socket; an overrun is reported anyway.
const RX_BUFFER: usize = 8 << 20;

/// Something happened to the namespace's nftables ruleset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftEvent {
    /// A transaction was committed.
    Committed {
        /// The new generation id, if the kernel said.
        generation: Option<u32>,
        /// The committing process, if the kernel said.
        pid: Option<u32>,
    },
    /// The kernel dropped notifications (socket buffer full): anything may
    /// have changed unseen.
    Overrun,
}

/// A subscription to nftables' notifications in the calling thread's
/// network namespace. Dropping it closes the socket.
pub struct NftEvents {
    sock: TokioSocket,
    pending: VecDeque<NftEvent>,
}

impl std::fmt::Debug for NftEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftEvents")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl NftEvents {
    /// Subscribes in the calling thread's namespace (must run inside a
    /// tokio runtime).
    pub fn new() -> std::io::Result<NftEvents> {
        let mut sock = TokioSocket::new(NETLINK_NETFILTER)?;
        // An unbound socket has port id 0 and is passed over by multicast
        // delivery: bind (the kernel picks the port id), then join.
        sock.socket_mut().bind_auto()?;
        sock.socket_ref().add_membership(NFNLGRP_NFTABLES)?;
        set_rx_buffer(&sock);
        Ok(NftEvents {
            sock,
            pending: VecDeque::new(),
        })
    }

    /// The next event; `None` when the socket failed for good.
    pub async fn next(&mut self) -> Option<NftEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            match self.sock.recv_from_full().await {
                Ok((buf, _)) => self.pending.extend(parse_datagram(&buf)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Some(NftEvent::Overrun)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "nftables event socket failed");
                    return None;
                }
            }
        }
    }
}

/// A big receive buffer: SO_RCVBUFFORCE (root may exceed
/// net.core.rmem_max), else SO_RCVBUF (capped by it). Best effort: an
/// overrun is reported as [`NftEvent::Overrun`] anyway.
fn set_rx_buffer(sock: &TokioSocket) {
    let size = RX_BUFFER as libc::c_int;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live
    // c_int on this stack frame; the fd is an open socket we own.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = sock.socket_ref().set_rx_buf_sz(RX_BUFFER);
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The events in one datagram: one per `NFT_MSG_NEWGEN` message; other
/// messages are skipped, a truncated one ends the parse.
pub fn parse_datagram(buf: &[u8]) -> Vec<NftEvent> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(len) = u32_at(buf, at) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        let msg = &buf[at..at + len];
        if u16_at(msg, 4) == Some(MSG_NEWGEN) {
            out.push(parse_newgen(&msg[NLMSG_HDRLEN..]));
        }
        at += align4(len);
    }
    out
}

/// Reads the attributes after the nfgenmsg header.
fn parse_newgen(payload: &[u8]) -> NftEvent {
    let mut generation = None;
    let mut pid = None;
    let mut at = NFGENMSG_LEN;
    while let (Some(len), Some(kind)) = (u16_at(payload, at), u16_at(payload, at + 2)) {
        let len = len as usize;
        if len < 4 || at + len > payload.len() {
            break;
        }
        let value = &payload[at + 4..at + len];
        let be32 = || Some(u32::from_be_bytes(value.get(..4)?.try_into().ok()?));
        match kind & NLA_TYPE_MASK {
            NFTA_GEN_ID => generation = be32(),
            NFTA_GEN_PROC_PID => pid = be32(),
            _ => {}
        }
        at += align4(len);
    }
    NftEvent::Committed { generation, pid }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn newgen(generation: u32, pid: u32) -> Vec<u8> {
        let mut p = vec![0, 0, 0, 0];
        p.extend(attr(NFTA_GEN_ID, &generation.to_be_bytes()));
        p.extend(attr(NFTA_GEN_PROC_PID, &pid.to_be_bytes()));
        p.extend(attr(3, b"nft\0"));
        message(MSG_NEWGEN, &p)
    }

    #[test]
    fn finds_newgen_among_other_messages() {
        let mut d = message((10 << 8) | 6, &[0, 0, 0, 0, 1, 2, 3, 4]); // NEWRULE
        d.extend(newgen(42, 4242));
        assert_eq!(
            parse_datagram(&d),
            vec![NftEvent::Committed {
                generation: Some(42),
                pid: Some(4242)
            }]
        );
    }

    #[test]
    fn newgen_type_is_the_kernels() {
        // linux/netfilter/nf_tables.h: NFT_MSG_NEWGEN is the 16th message
        // type (15 counted from 0); nfnetlink.h: NFNL_SUBSYS_NFTABLES 10.
        assert_eq!(MSG_NEWGEN, 0x0a0f);
    }

    #[test]
    fn missing_attributes_are_none() {
        let d = message(MSG_NEWGEN, &[0, 0, 0, 0]);
        assert_eq!(
            parse_datagram(&d),
            vec![NftEvent::Committed {
                generation: None,
                pid: None
            }]
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_datagram(&bytes);
        }

        #[test]
        fn truncation_never_invents_a_pid(cut in 0usize..60) {
            let d = newgen(1, 99);
            for e in parse_datagram(&d[..cut.min(d.len())]) {
                if let NftEvent::Committed { pid: Some(p), .. } = e {
                    prop_assert_eq!(p, 99);
                }
            }
        }
    }
}
