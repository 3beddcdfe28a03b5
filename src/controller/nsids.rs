//! Which container a namespace id names: the daemon's map from the ids the
//! node's namespace has for container namespaces (the tag on every event
//! of the node's one event socket) to container ids.
//!
//! Filled when an endpoint becomes Ready (its reconcile read the id) and
//! emptied of it when the endpoint is removed, collected or orphaned. The
//! kernel reuses an id once its namespace is gone, so a new endpoint's id
//! replaces whatever held it, and forgetting an endpoint drops its id only
//! while the id is still its own.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Maps {
    by_nsid: HashMap<i32, String>,
    by_container: HashMap<String, i32>,
}

/// Where a kernel event happened, as far as the daemon can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// In the node's own namespace (no id, or the node's id for itself).
    Node,
    /// Inside the namespace of this container.
    Container(String),
    /// In a namespace no endpoint accounts for (the node's gateway, a
    /// container not Ready yet, one just gone).
    Unknown(i32),
}

/// The map; cheap to query from the event handler.
#[derive(Debug, Default)]
pub struct NsidMap {
    maps: Mutex<Maps>,
}

impl NsidMap {
    /// `container_id`'s namespace has id `nsid`: replaces the container's
    /// previous id and any other container's claim on `nsid`.
    pub fn insert(&self, nsid: i32, container_id: &str) {
        let mut m = self.maps.lock().expect("nsid map lock");
        if m.by_container.get(container_id) == Some(&nsid) {
            return; // the usual case: every Ready reconcile says it again
        }
        if let Some(old) = m.by_container.insert(container_id.to_string(), nsid) {
            if m.by_nsid.get(&old).is_some_and(|c| c == container_id) {
                m.by_nsid.remove(&old);
            }
        }
        if let Some(previous) = m.by_nsid.insert(nsid, container_id.to_string()) {
            if previous != container_id && m.by_container.get(&previous) == Some(&nsid) {
                m.by_container.remove(&previous);
            }
        }
    }

    /// Forgets `container_id`; its id, if still its own, names nobody.
    pub fn remove(&self, container_id: &str) {
        let mut m = self.maps.lock().expect("nsid map lock");
        if let Some(nsid) = m.by_container.remove(container_id) {
            if m.by_nsid.get(&nsid).is_some_and(|c| c == container_id) {
                m.by_nsid.remove(&nsid);
            }
        }
    }

    /// The container whose namespace has id `nsid`.
    pub fn owner(&self, nsid: i32) -> Option<String> {
        self.maps
            .lock()
            .expect("nsid map lock")
            .by_nsid
            .get(&nsid)
            .cloned()
    }

    /// Where an event tagged `nsid` happened, given the id the node's
    /// namespace has for itself (`node_nsid`, usually none).
    pub fn origin(&self, nsid: Option<i32>, node_nsid: Option<i32>) -> Origin {
        match nsid {
            None => Origin::Node,
            Some(n) if Some(n) == node_nsid => Origin::Node,
            Some(n) => self.owner(n).map_or(Origin::Unknown(n), Origin::Container),
        }
    }

    /// How many containers are mapped.
    pub fn len(&self) -> usize {
        self.maps.lock().expect("nsid map lock").by_nsid.len()
    }

    /// True when no container is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_container_until_the_container_is_forgotten() {
        let m = NsidMap::default();
        assert!(m.is_empty());
        m.insert(3, "a");
        m.insert(4, "b");
        m.insert(3, "a"); // again: nothing changes
        assert_eq!(m.owner(3).as_deref(), Some("a"));
        assert_eq!(m.owner(4).as_deref(), Some("b"));
        assert_eq!(m.owner(5), None);
        assert_eq!(m.len(), 2);
        m.remove("a");
        assert_eq!(m.owner(3), None);
        assert_eq!(m.owner(4).as_deref(), Some("b"));
        m.remove("a"); // unknown: nothing happens
        m.remove("b");
        assert!(m.is_empty());
    }

    #[test]
    fn a_reused_id_belongs_to_the_new_container_and_survives_the_old_ones_removal() {
        let m = NsidMap::default();
        m.insert(7, "old");
        // The old container's namespace died; the kernel gave its id to a
        // new container's namespace before the old endpoint was collected.
        m.insert(7, "new");
        assert_eq!(m.owner(7).as_deref(), Some("new"));
        assert_eq!(m.len(), 1);
        m.remove("old");
        assert_eq!(m.owner(7).as_deref(), Some("new"), "the new one keeps it");
        m.remove("new");
        assert_eq!(m.owner(7), None);
    }

    #[test]
    fn untagged_events_are_the_nodes_and_unknown_ids_are_nobodys() {
        let m = NsidMap::default();
        m.insert(2, "a");
        assert_eq!(m.origin(None, None), Origin::Node);
        assert_eq!(m.origin(Some(2), None), Origin::Container("a".into()));
        assert_eq!(m.origin(Some(9), None), Origin::Unknown(9));
        // The node has an id for itself: its own events carry it.
        assert_eq!(m.origin(Some(9), Some(9)), Origin::Node);
        assert_eq!(m.origin(None, Some(9)), Origin::Node);
        assert_eq!(m.origin(Some(2), Some(9)), Origin::Container("a".into()));
    }

    #[test]
    fn a_container_with_a_new_id_drops_its_old_one() {
        let m = NsidMap::default();
        m.insert(1, "a");
        m.insert(2, "a"); // a new namespace for the same container id
        assert_eq!(m.owner(1), None);
        assert_eq!(m.owner(2).as_deref(), Some("a"));
        // And an old id taken over meanwhile is not dropped by mistake.
        m.insert(1, "b");
        m.insert(5, "a");
        assert_eq!(m.owner(1).as_deref(), Some("b"));
        assert_eq!(m.owner(2), None);
        assert_eq!(m.len(), 2);
    }
}
