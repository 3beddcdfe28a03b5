//! The id the node's namespace gives a container's namespace, handed out
//! by us before the veth pair is made, downward: each new container gets
//! an id below every id we gave before.
//!
//! Why: the kernel finds the id of a namespace by walking the node's ids
//! in ascending order until it meets it (`__peernet2id`, an
//! `idr_for_each`). It does so for every notification from inside a
//! container that our all-namespace event socket could receive, and for
//! every message about a host veth (its peer's `IFLA_LINK_NETNSID`). Left
//! to the kernel, a new namespace gets the lowest free id, which on a
//! node of 1,000 containers is the 1,001st: each of the ~20 lookups an
//! isolate causes walked all 1,000. Given the lowest id instead, the
//! container being set up is found first, and the lookups cost the same
//! at 1,000 containers as at none. Lookups for old containers (their
//! removal, a repair) walk past the newer ones instead; they are rare.
//!
//! Best effort: when no id can be given (another process took it, the
//! range is used up, an old kernel), the kernel gives one when the pair is
//! made, as before. Nothing depends on the value.

use crate::nl::{request, Conn, NlError};
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::RouteNetlinkMessage;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

/// The first id handed out (the highest): far above the ids the kernel
/// gives by itself, which start at 0.
pub const HIGHEST: i32 = 1 << 30;
/// Below this, none are handed out (the kernel gives them then): half a
/// billion ids, never reached while old containers' ids are freed.
pub const LOWEST: i32 = 1 << 29;
/// How many taken ids one assignment skips before giving up.
const ATTEMPTS: i32 = 16;

/// The next id to hand out below those in `taken`: one below the lowest
/// of them in our range, [`HIGHEST`] when none is, `None` once the range
/// is used up.
pub fn next_below(taken: impl IntoIterator<Item = i32>) -> Option<i32> {
    let lowest = taken
        .into_iter()
        .filter(|id| (LOWEST..=HIGHEST).contains(id))
        .min();
    match lowest {
        None => Some(HIGHEST),
        Some(id) if id > LOWEST => Some(id - 1),
        Some(_) => None,
    }
}

/// Hands out ids downward; one per [`super::EndpointDataplane`]. The next
/// id is learnt from one dump of the node's ids on first use, then kept.
#[derive(Debug, Default)]
pub(crate) struct NsidGiver {
    /// The next id to try; `None` until the first dump.
    next: Mutex<Option<i32>>,
}

impl NsidGiver {
    /// Gives `container_ns` the next id, unless it has one in the node's
    /// namespace already (then that one stays). Returns the id it has
    /// afterwards, or `None` when it could not be given one (then the
    /// kernel gives one when the veth is made).
    pub async fn give(&self, node: &Conn, container_ns: &File) -> Option<i32> {
        if self.next.lock().expect("nsid lock").is_none() {
            let started = std::time::Instant::now();
            let next = match taken_ids(node).await {
                Ok(taken) => {
                    let next = next_below(taken.iter().copied());
                    tracing::debug!(
                        taken = taken.len(),
                        ?next,
                        took_us = started.elapsed().as_micros() as u64,
                        "learnt the next namespace id"
                    );
                    next?
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot list the node's namespace ids");
                    return None;
                }
            };
            self.next.lock().expect("nsid lock").get_or_insert(next);
        }
        for _ in 0..ATTEMPTS {
            let id = self.reserve()?;
            match set_nsid(node, container_ns, id).await {
                Ok(()) => return Some(id),
                // The id is taken (by another process handing out ids),
                // or the namespace got one meanwhile: the kernel's answer
                // does not say which.
                Err(e) if e.errno() == Some(libc::EEXIST) => {
                    if let Ok(Some(own)) = super::observe::nsid_of(node, container_ns, 0).await {
                        return Some(own);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, id, "cannot give a namespace id");
                    return None;
                }
            }
        }
        None
    }

    /// Takes the next id, so that concurrent calls try different ones.
    fn reserve(&self) -> Option<i32> {
        let mut next = self.next.lock().expect("nsid lock");
        let id = (*next)?;
        if id < LOWEST {
            return None;
        }
        *next = Some(id - 1);
        Some(id)
    }
}

/// Every id the node's namespace has given out.
async fn taken_ids(node: &Conn) -> Result<Vec<i32>, NlError> {
    let answers = request(
        node,
        RouteNetlinkMessage::GetNsId(NsidMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )
    .await?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNsId(n) => n.attributes.into_iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(id),
                _ => None,
            }),
            _ => None,
        })
        .collect())
}

/// `RTM_NEWNSID`: the node's namespace names `ns` with `id`.
async fn set_nsid(node: &Conn, ns: &File, id: i32) -> Result<(), NlError> {
    let mut msg = NsidMessage::default();
    msg.attributes
        .push(NsidAttribute::Fd(ns.as_raw_fd() as u32));
    msg.attributes.push(NsidAttribute::Id(id));
    request(
        node,
        RouteNetlinkMessage::NewNsId(msg),
        NLM_F_REQUEST | NLM_F_ACK,
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_down_from_the_highest_and_ignore_the_kernels_own() {
        assert_eq!(next_below([]), Some(HIGHEST));
        // The kernel's ids (from 0) and foreign ones above ours don't count.
        assert_eq!(next_below([0, 1, 2, i32::MAX - 1]), Some(HIGHEST));
        assert_eq!(next_below([0, HIGHEST, HIGHEST - 7, 5]), Some(HIGHEST - 8));
        assert_eq!(next_below([LOWEST + 1]), Some(LOWEST));
        assert_eq!(next_below([LOWEST]), None, "the range is used up");
    }
}
