//! Profiles in the store (`profile/<escaped name>`): who may reach an
//! endpoint and where it may send (DESIGN.md, "Policy").
//!
//! Three kinds are made automatically as endpoints need them: one per
//! netgroup, `public`, and one host profile per node (`host:<node>`).
//! Netgroup and `public` profiles are written once and never overwritten
//! (operators may edit them); the host profile belongs to the project and is
//! rewritten whenever the node's addresses change. This module owns the
//! profile records; it never touches endpoints' records or the kernel.

use crate::endpoint::Endpoint;
use crate::store::{self, keys, Commit, Store, StoreError, Txn};
use ipnet::IpNet;
use reconcilers::policy::{ProfileRules, Rule};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The name of the profile that lets anyone in (asked for with the
/// netgroup `public`).
pub const PUBLIC: &str = "public";
/// Host profiles are named `host:<nodename>`; `:` cannot appear in a
/// netgroup name, so a netgroup profile can never take a host's name.
pub const HOST_PREFIX: &str = "host:";

/// A named set of rules, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The profile's name: a netgroup, `public`, or `host:<node>`.
    pub name: String,
    /// Its rules.
    pub rules: ProfileRules,
}

/// What made a profile, told by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileKind {
    /// One netgroup's profile: members reach each other.
    Netgroup,
    /// The `public` profile: anyone reaches its endpoints.
    Public,
    /// A node's host profile: the node reaches its own endpoints.
    Host,
}

impl ProfileKind {
    /// The kind of the profile called `name`.
    pub fn of(name: &str) -> ProfileKind {
        if name.starts_with(HOST_PREFIX) {
            ProfileKind::Host
        } else if name == PUBLIC {
            ProfileKind::Public
        } else {
            ProfileKind::Netgroup
        }
    }
}

impl std::fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProfileKind::Netgroup => "netgroup",
            ProfileKind::Public => "public",
            ProfileKind::Host => "host",
        })
    }
}

impl Profile {
    /// The profile of netgroup `name`: inbound from its members, outbound
    /// to anywhere.
    pub fn netgroup(name: &str) -> Profile {
        Profile {
            name: name.to_string(),
            rules: ProfileRules {
                inbound: vec![Rule::Netgroup(name.to_string())],
                outbound: vec![Rule::All],
            },
        }
    }

    /// The `public` profile: inbound from and outbound to anywhere.
    pub fn public() -> Profile {
        Profile {
            name: PUBLIC.to_string(),
            rules: ProfileRules {
                inbound: vec![Rule::All],
                outbound: vec![Rule::All],
            },
        }
    }

    /// The host profile of `node`: inbound from and outbound to each of the
    /// node's addresses (as /32 or /128). No addresses: it allows nothing.
    pub fn host(node: &str, node_addresses: &[IpAddr]) -> Profile {
        let rules: Vec<Rule> = node_addresses
            .iter()
            .map(|a| Rule::Cidr(IpNet::from(*a)))
            .collect();
        Profile {
            name: host_profile_name(node),
            rules: ProfileRules {
                inbound: rules.clone(),
                outbound: rules,
            },
        }
    }

    /// What made this profile.
    pub fn kind(&self) -> ProfileKind {
        ProfileKind::of(&self.name)
    }

    /// The store key of this profile.
    pub fn key(&self) -> String {
        keys::profile(&self.name)
    }
}

/// The name of `node`'s host profile.
pub fn host_profile_name(node: &str) -> String {
    format!("{HOST_PREFIX}{node}")
}

/// An endpoint's profiles, in order: the host profile of `node` (the
/// endpoint's node), `public` if its netgroups contain it, then each other
/// netgroup as given. An endpoint with no netgroups gets only its host
/// profile: only its node reaches it.
pub fn profile_names(endpoint: &Endpoint, node: &str) -> Vec<String> {
    let mut names = vec![host_profile_name(node)];
    if endpoint.netgroups.iter().any(|n| n == PUBLIC) {
        names.push(PUBLIC.to_string());
    }
    for netgroup in &endpoint.netgroups {
        if netgroup != PUBLIC && !names.contains(netgroup) {
            names.push(netgroup.clone());
        }
    }
    names
}

/// The profiles an endpoint needs, as they are made when missing. Pure.
pub fn needed_profiles(endpoint: &Endpoint, node: &str, node_addresses: &[IpAddr]) -> Vec<Profile> {
    profile_names(endpoint, node)
        .iter()
        .map(|name| match ProfileKind::of(name) {
            ProfileKind::Host => Profile::host(node, node_addresses),
            ProfileKind::Public => Profile::public(),
            ProfileKind::Netgroup => Profile::netgroup(name),
        })
        .collect()
}

/// True when `endpoint` (on its own node) has the profile `name`.
pub fn is_member(endpoint: &Endpoint, name: &str) -> bool {
    profile_names(endpoint, &endpoint.node)
        .iter()
        .any(|n| n == name)
}

/// Errors of writing profiles.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Contention did not clear.
    #[error("The datastore is too busy: gave up writing profiles {0:?} after repeated conflicting updates. Try again.")]
    TooBusy(Vec<String>),
}

/// Make the profiles `endpoint` needs that are missing, in one transaction:
/// netgroup and `public` profiles only when absent (an existing one is
/// never overwritten), the host profile also when the node's addresses
/// changed. Returns the names written (empty: nothing to do).
pub fn ensure_profiles(
    store: &dyn Store,
    node: &str,
    node_addresses: &[IpAddr],
    endpoint: &Endpoint,
) -> Result<Vec<String>, ProfileError> {
    ensure(store, &needed_profiles(endpoint, node, node_addresses))
}

/// Make or refresh `node`'s host profile alone (e.g. when a daemon starts
/// with other addresses than the node had). True when it was written.
pub fn ensure_host_profile(
    store: &dyn Store,
    node: &str,
    node_addresses: &[IpAddr],
) -> Result<bool, ProfileError> {
    Ok(!ensure(store, &[Profile::host(node, node_addresses)])?.is_empty())
}

/// Write the `wanted` profiles that are missing (and host profiles whose
/// rules differ), guarded by the revisions read, retrying on conflict.
fn ensure(store: &dyn Store, wanted: &[Profile]) -> Result<Vec<String>, ProfileError> {
    for _ in 0..100 {
        let mut txn = Txn::default();
        let mut written = Vec::new();
        for profile in wanted {
            let key = profile.key();
            let revision = match store::get_json::<Profile>(store, &key)? {
                None => 0,
                Some(current)
                    if profile.kind() == ProfileKind::Host && current.value != *profile =>
                {
                    current.mod_revision
                }
                Some(_) => continue,
            };
            txn.compare(key.clone(), revision);
            txn.put_json(key, profile);
            written.push(profile.name.clone());
        }
        if txn.is_empty() {
            return Ok(written);
        }
        if let Commit::Done(_) = store.commit(&txn)? {
            for p in wanted.iter().filter(|p| written.contains(&p.name)) {
                if p.kind() == ProfileKind::Host && p.rules.inbound.is_empty() {
                    tracing::warn!(
                        profile = %p.name,
                        "no node addresses: this host profile lets nothing reach the node's containers (set node_addresses)"
                    );
                }
            }
            return Ok(written);
        }
    }
    Err(ProfileError::TooBusy(
        wanted.iter().map(|p| p.name.clone()).collect(),
    ))
}

/// Every profile, by name.
pub fn list(store: &dyn Store) -> Result<Vec<Profile>, StoreError> {
    Ok(store::list_json::<Profile>(store, keys::PROFILES)?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// One profile (`None` when there is none by that name).
pub fn get(store: &dyn Store, name: &str) -> Result<Option<Profile>, StoreError> {
    Ok(store::get_json(store, &keys::profile(name))?.map(|v| v.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::NetnsId;
    use crate::store::sqlite::SqliteStore;
    use std::time::Duration;

    pub(crate) fn endpoint(node: &str, id: &str, netgroups: &[&str]) -> Endpoint {
        Endpoint {
            node: node.to_string(),
            container_id: id.to_string(),
            netns: NetnsId { pid: 1, inode: 1 },
            ipv4: vec![],
            ipv6: vec![],
            netgroups: netgroups.iter().map(|s| s.to_string()).collect(),
            labels: Default::default(),
            holders: Default::default(),
            generation: 1,
            deletion_requested: false,
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(
            dir.path().join("s.db").to_str().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        (dir, s)
    }

    fn cidr(text: &str) -> Rule {
        Rule::Cidr(text.parse().unwrap())
    }

    #[test]
    fn profile_names_table() {
        let cases: [(&[&str], &[&str]); 6] = [
            (&[], &["host:n1"]),
            (&["public"], &["host:n1", "public"]),
            (&["web"], &["host:n1", "web"]),
            (
                &["web", "public", "db"],
                &["host:n1", "public", "web", "db"],
            ),
            (&["db", "web"], &["host:n1", "db", "web"]),
            (
                &["web", "web", "public", "public"],
                &["host:n1", "public", "web"],
            ),
        ];
        for (netgroups, want) in cases {
            let ep = endpoint("n1", "c", netgroups);
            assert_eq!(profile_names(&ep, "n1"), want, "netgroups {netgroups:?}");
        }
    }

    #[test]
    fn kinds_are_told_by_name() {
        for (name, kind) in [
            ("host:n1", ProfileKind::Host),
            ("host:", ProfileKind::Host),
            ("public", ProfileKind::Public),
            ("web", ProfileKind::Netgroup),
            ("hostweb", ProfileKind::Netgroup),
            ("Public", ProfileKind::Netgroup),
        ] {
            assert_eq!(ProfileKind::of(name), kind, "{name}");
        }
    }

    #[test]
    fn the_three_automatic_profiles() {
        assert_eq!(
            Profile::netgroup("web").rules,
            ProfileRules {
                inbound: vec![Rule::Netgroup("web".into())],
                outbound: vec![Rule::All],
            }
        );
        assert_eq!(
            Profile::public().rules,
            ProfileRules {
                inbound: vec![Rule::All],
                outbound: vec![Rule::All],
            }
        );
        let host = Profile::host(
            "n1",
            &[
                "198.19.0.1".parse().unwrap(),
                "2001:db8:f::1".parse().unwrap(),
            ],
        );
        assert_eq!(host.name, "host:n1");
        let want = vec![cidr("198.19.0.1/32"), cidr("2001:db8:f::1/128")];
        assert_eq!(host.rules.inbound, want);
        assert_eq!(host.rules.outbound, want);
        assert_eq!(host.key(), "profile/host:n1");
        assert_eq!(Profile::host("n/1", &[]).key(), "profile/host:n%2F1");
    }

    #[test]
    fn ensure_creates_missing_profiles_once() {
        let (_dir, s) = store();
        let addrs: Vec<IpAddr> = vec!["198.19.0.1".parse().unwrap()];
        let ep = endpoint("n1", "c1", &["web", "public"]);
        let written = ensure_profiles(&s, "n1", &addrs, &ep).unwrap();
        assert_eq!(written, ["host:n1", "public", "web"]);
        let names: Vec<String> = list(&s).unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["host:n1", "public", "web"]);
        // A second time: nothing to write, the revision stays.
        let rev = s.revision().unwrap();
        assert!(ensure_profiles(&s, "n1", &addrs, &ep).unwrap().is_empty());
        assert_eq!(s.revision().unwrap(), rev);
        // Another endpoint adds only its new netgroup.
        let other = endpoint("n1", "c2", &["web", "db"]);
        assert_eq!(ensure_profiles(&s, "n1", &addrs, &other).unwrap(), ["db"]);
        assert_eq!(get(&s, "db").unwrap(), Some(Profile::netgroup("db")));
        assert_eq!(get(&s, "nope").unwrap(), None);
    }

    #[test]
    fn operator_edits_survive_but_the_host_profile_follows_the_node() {
        let (_dir, s) = store();
        let ep = endpoint("n1", "c1", &["web", "public"]);
        let old: Vec<IpAddr> = vec!["198.19.0.1".parse().unwrap()];
        ensure_profiles(&s, "n1", &old, &ep).unwrap();
        // An operator narrows `web` and `public`.
        let mut web = Profile::netgroup("web");
        web.rules.outbound = vec![Rule::Netgroup("web".into())];
        let mut public = Profile::public();
        public.rules.inbound = vec![cidr("198.51.100.0/24")];
        let mut txn = Txn::default();
        txn.put_json(web.key(), &web);
        txn.put_json(public.key(), &public);
        s.commit(&txn).unwrap();
        // The node's addresses change.
        let new: Vec<IpAddr> = vec!["198.19.0.2".parse().unwrap()];
        assert_eq!(ensure_profiles(&s, "n1", &new, &ep).unwrap(), ["host:n1"]);
        assert_eq!(get(&s, "web").unwrap(), Some(web));
        assert_eq!(get(&s, "public").unwrap(), Some(public));
        assert_eq!(
            get(&s, "host:n1").unwrap().unwrap().rules.inbound,
            [cidr("198.19.0.2/32")]
        );
        assert!(!ensure_host_profile(&s, "n1", &new).unwrap());
        assert!(ensure_host_profile(&s, "n1", &old).unwrap());
    }

    #[test]
    fn membership_follows_the_endpoints_node_and_netgroups() {
        let a = endpoint("n1", "a", &["web"]);
        let b = endpoint("n2", "b", &["public"]);
        assert!(is_member(&a, "host:n1"));
        assert!(!is_member(&a, "host:n2"));
        assert!(is_member(&a, "web"));
        assert!(!is_member(&a, "public"));
        assert!(is_member(&b, "public"));
        assert!(is_member(&b, "host:n2"));
    }
}
