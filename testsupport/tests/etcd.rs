//! The etcd launcher itself: inside a test namespace, and across a stop and
//! a restart that keep the data.

use std::net::{IpAddr, Ipv4Addr};
use testsupport::etcd::Etcd;

#[test]
fn etcd_in_a_namespace_survives_a_restart_with_its_data() {
    if !testsupport::require_root() {
        return;
    }
    let ns = testsupport::Netns::new("etcd");
    let mut etcd = Etcd::builder()
        .netns(ns.name(), IpAddr::V4(Ipv4Addr::LOCALHOST))
        .start();
    assert_eq!(etcd.endpoint(), "http://127.0.0.1:2379");
    let before = etcd.revision();
    etcd.compact(before);
    etcd.stop();
    assert!(!etcd.is_running());
    etcd.restart();
    assert!(etcd.is_running());
    assert!(etcd.revision() >= before, "the data survived the restart");
    drop(etcd);
    let pids =
        testsupport::run_ok(std::process::Command::new("ip").args(["netns", "pids", ns.name()]))
            .unwrap();
    assert!(
        pids.trim().is_empty(),
        "etcd is gone from the namespace: {pids}"
    );
}
