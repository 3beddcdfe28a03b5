//! Which endpoint owns a kernel object: the daemon's map from host
//! interface names and container addresses to container ids, kept in step
//! with the store, so a netlink event re-enqueues exactly its endpoint.

use crate::endpoint::Endpoint;
use reconcilers::endpoint::host_ifname;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct Maps {
    by_ifname: HashMap<String, String>,
    by_addr: HashMap<IpAddr, String>,
    by_key: HashMap<String, Endpoint>,
}

/// The owner index; cheap to query from event handlers.
#[derive(Debug, Default)]
pub struct OwnerIndex {
    maps: Mutex<Maps>,
}

impl OwnerIndex {
    /// Replaces everything with `endpoints` (a full list from the store).
    pub fn replace_all(&self, endpoints: impl IntoIterator<Item = Endpoint>) {
        let mut fresh = Maps::default();
        for ep in endpoints {
            insert(&mut fresh, ep);
        }
        *self.maps.lock().expect("index lock") = fresh;
    }

    /// Adds or updates one endpoint.
    pub fn upsert(&self, ep: Endpoint) {
        let mut maps = self.maps.lock().expect("index lock");
        if let Some(old) = maps.by_key.get(&ep.key()).cloned() {
            remove(&mut maps, &old);
        }
        insert(&mut maps, ep);
    }

    /// Forgets the endpoint stored under `key`; returns its container id.
    pub fn remove_key(&self, key: &str) -> Option<String> {
        let mut maps = self.maps.lock().expect("index lock");
        let old = maps.by_key.get(key).cloned()?;
        remove(&mut maps, &old);
        Some(old.container_id)
    }

    /// The container whose host interface is `name`.
    pub fn owner_of_link(&self, name: &str) -> Option<String> {
        self.maps
            .lock()
            .expect("index lock")
            .by_ifname
            .get(name)
            .cloned()
    }

    /// The container that has `addr`.
    pub fn owner_of_addr(&self, addr: &IpAddr) -> Option<String> {
        self.maps
            .lock()
            .expect("index lock")
            .by_addr
            .get(addr)
            .cloned()
    }

    /// The endpoint of `container_id`, as last seen in the store.
    pub fn endpoint(&self, key: &str) -> Option<Endpoint> {
        self.maps
            .lock()
            .expect("index lock")
            .by_key
            .get(key)
            .cloned()
    }

    /// Every host interface name an endpoint accounts for.
    pub fn ifnames(&self) -> Vec<String> {
        self.maps
            .lock()
            .expect("index lock")
            .by_ifname
            .keys()
            .cloned()
            .collect()
    }

    /// Every container id known.
    pub fn container_ids(&self) -> Vec<String> {
        self.maps
            .lock()
            .expect("index lock")
            .by_key
            .values()
            .map(|e| e.container_id.clone())
            .collect()
    }
}

fn addrs(ep: &Endpoint) -> impl Iterator<Item = IpAddr> + '_ {
    ep.ipv4
        .iter()
        .map(|a| IpAddr::V4(*a))
        .chain(ep.ipv6.iter().map(|a| IpAddr::V6(*a)))
}

fn insert(maps: &mut Maps, ep: Endpoint) {
    maps.by_ifname
        .insert(host_ifname(&ep.container_id), ep.container_id.clone());
    for a in addrs(&ep) {
        maps.by_addr.insert(a, ep.container_id.clone());
    }
    maps.by_key.insert(ep.key(), ep);
}

fn remove(maps: &mut Maps, ep: &Endpoint) {
    maps.by_ifname.remove(&host_ifname(&ep.container_id));
    for a in addrs(ep) {
        if maps.by_addr.get(&a) == Some(&ep.container_id) {
            maps.by_addr.remove(&a);
        }
    }
    maps.by_key.remove(&ep.key());
}
