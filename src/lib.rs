//! calico-mesos: IP-per-container networking for Apache Mesos agents.
//!
//! This crate is the intent side: the net-modules plugin, the desired-state
//! store, IPAM and configuration. Nothing here calls into the kernel; the
//! `reconcilers` crate does that.

pub mod config;
pub mod controller;
pub mod endpoint;
pub mod ipam;
pub mod node;
pub mod plugin;
pub mod policy;
pub mod store;
