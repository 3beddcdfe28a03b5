//! Kernel side of calico-mesos. Filled in by the endpoint reconciler work.
