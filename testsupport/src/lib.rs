//! Test-only helpers for calico-mesos: namespaces, containers, pings, all with cleanup guards.
