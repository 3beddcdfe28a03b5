//! Deleting one host link and returning as soon as it is gone.
//!
//! The kernel answers an `RTM_DELLINK` only after it has also reclaimed
//! the link: the request unregisters the pair (both ends leave their
//! namespaces, their routes, addresses and neighbour entries go, the
//! notifications are sent) in about a millisecond, then, with the rtnl
//! lock already released, waits for RCU grace periods and for the last
//! references to drop before it frees the devices: 15–20 ms more, all
//! inside the `sendmsg` of the request. Nothing of the link is visible to
//! anyone during that wait, so a removal is complete once the link is
//! gone. The request is sent from a thread of its own (entering the
//! node's namespace first) so that wait blocks nobody, and the caller
//! polls the link by index until the kernel no longer has it, or the
//! request's answer comes (an error is reported as such).

use crate::netns::{spawn_in, NetnsError};
use crate::nl::{new_socket, Conn, NlError};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use std::fs::File;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a deleted link may stay visible before the delete is reported
/// as failed (the kernel's own answer, whenever it comes, is not awaited
/// past this).
const GONE_TIMEOUT: Duration = Duration::from_secs(30);
/// The first look after sending; each later one waits twice as long, up
/// to [`LOOK_MAX`].
const LOOK_FIRST: Duration = Duration::from_micros(250);
/// The longest wait between two looks.
const LOOK_MAX: Duration = Duration::from_millis(2);

/// Deletes link `index` of the namespace `home` refers to (the one `node`
/// is in) and returns once the kernel no longer has it. A link already
/// gone counts as deleted.
pub(crate) async fn delete_link(node: &Conn, home: &File, index: u32) -> Result<(), NlError> {
    let mut answer = send_delete(home, index)?;
    let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
    let mut wait = LOOK_FIRST;
    loop {
        tokio::select! {
            answered = &mut answer => {
                return match answered.unwrap_or(Err(NlError::Closed)) {
                    Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
                    other => other,
                };
            }
            _ = tokio::time::sleep(wait) => {}
        }
        if !link_exists(node, index).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NlError::TimedOut {
                what: format!("link {index} to be deleted"),
                after: GONE_TIMEOUT,
            });
        }
        wait = (wait * 2).min(LOOK_MAX);
    }
}

/// True while the namespace of `node` has a link with this index.
async fn link_exists(node: &Conn, index: u32) -> Result<bool, NlError> {
    Ok(super::observe::link_by_index(node, index).await?.is_some())
}

/// Sends the delete from a new thread in `home`; the receiver gets the
/// kernel's answer.
fn send_delete(home: &File, index: u32) -> Result<oneshot::Receiver<Result<(), NlError>>, NlError> {
    let (tx, rx) = oneshot::channel();
    spawn_in(home, "link-delete", move |entered| {
        let answer = match entered {
            Ok(()) => delete_and_wait(index),
            Err(source) => Err(NlError::Namespace {
                source: NetnsError::Setns {
                    label: "the node's".to_string(),
                    source,
                },
            }),
        };
        let _ = tx.send(answer);
    })
    .map_err(|source| NlError::Namespace { source })?;
    Ok(rx)
}

/// One blocking `RTM_DELLINK` on a socket of its own; its answer.
fn delete_and_wait(index: u32) -> Result<(), NlError> {
    let socket = new_socket(None).map_err(|source| NlError::Socket { source })?;
    let mut m = LinkMessage::default();
    m.header.index = index;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelLink(m));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.header.sequence_number = 1;
    req.finalize();
    let mut out = vec![0; req.buffer_len()];
    req.serialize(&mut out);
    // The kernel handles the request inside this call, reclamation
    // included: when it returns, the answer is queued.
    socket
        .send(&out, 0)
        .map_err(|source| NlError::Socket { source })?;
    let mut answer = Vec::with_capacity(4096);
    socket
        .recv(&mut answer, libc::MSG_DONTWAIT)
        .map_err(|source| NlError::Socket { source })?;
    let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer).map_err(|e| {
        NlError::Socket {
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        }
    })?;
    match parsed.payload {
        NetlinkPayload::Error(e) => match e.code {
            Some(code) => Err(NlError::Kernel {
                error: std::io::Error::from_raw_os_error(-code.get()),
            }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}
