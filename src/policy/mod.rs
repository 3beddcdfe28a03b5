//! Policy intent (DESIGN.md, "Policy"): the profiles in the store, the
//! node's own addresses its host profile allows, and the pure computation
//! of one node's desired policy ([`desired_policy`], and incrementally,
//! from what changed, [`PolicyInputs`]) that the nftables reconciler is
//! handed. The data model is the reconcilers crate's
//! (`reconcilers::policy`); this module never touches the kernel itself
//! (detecting the node's addresses is a read the reconcilers crate does).

mod desired;
mod inputs;
pub mod profiles;

pub use desired::{addresses, desired_policy};
pub use inputs::PolicyInputs;
pub use profiles::{
    ensure_host_profile, ensure_profiles, host_profile_name, needed_profiles, profile_names,
    Profile, ProfileError, ProfileKind,
};

use crate::config::Config;
use crate::endpoint::Endpoint;
use crate::store::{self, keys, Store, StoreError};
use std::net::IpAddr;

/// Every endpoint of the cluster (every node's, under `endpoint/`), for
/// netgroup membership.
pub fn all_endpoints(store: &dyn Store) -> Result<Vec<Endpoint>, StoreError> {
    Ok(store::list_json::<Endpoint>(store, keys::ENDPOINTS)?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// The node's own addresses: `node_addresses` when configured, otherwise
/// what `detect` finds (called only then). Pure apart from `detect`.
pub fn node_addresses<E>(
    config: &Config,
    detect: impl FnOnce() -> Result<Vec<IpAddr>, E>,
) -> Result<Vec<IpAddr>, E> {
    match &config.node_addresses {
        Some(configured) => Ok(configured.clone()),
        None => detect(),
    }
}

/// [`node_addresses`], detecting in the calling thread's network namespace
/// when none are configured (must run inside a tokio runtime).
pub async fn resolve_node_addresses(config: &Config) -> Result<Vec<IpAddr>, reconcilers::NlError> {
    if let Some(configured) = &config.node_addresses {
        return Ok(configured.clone());
    }
    reconcilers::node::detect_addresses().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn config(node_addresses: Option<&str>) -> Config {
        let mut env = BTreeMap::from([("CALICO_MESOS_NODENAME".to_string(), "n".to_string())]);
        if let Some(list) = node_addresses {
            env.insert("CALICO_MESOS_NODE_ADDRESSES".into(), list.into());
        }
        Config::from_parts(None, Path::new("/x"), &env).unwrap()
    }

    #[test]
    fn configured_addresses_win_and_detection_runs_only_without_them() {
        let detected: Vec<IpAddr> = vec!["198.19.0.9".parse().unwrap()];
        let got = node_addresses(&config(Some("198.19.0.1")), || -> Result<_, ()> {
            panic!("must not detect when configured")
        });
        assert_eq!(got, Ok(vec!["198.19.0.1".parse().unwrap()]));
        let got = node_addresses(&config(None), || Ok::<_, ()>(detected.clone()));
        assert_eq!(got, Ok(detected));
        let got = node_addresses(&config(None), || Err::<Vec<IpAddr>, _>("no netlink"));
        assert_eq!(got, Err("no netlink"));
    }
}
