//! `isolate` and `cleanup`: record the intent, have it reconciled (by the
//! daemon or in this process), and answer from the status the loop wrote.

use super::request::{self, Cleanup, Isolate};
use super::Answer;
use crate::config::Config;
use crate::controller::converge::{Converge, ConvergeError};
use crate::endpoint::{self, Endpoint, NetnsId, Phase, Recorded};
use crate::ipam;
use crate::store::Store;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// Configure the container's network and answer once it is Ready.
pub fn isolate(
    store: &Arc<dyn Store>,
    config: &Config,
    converger: &dyn Converge,
    args: &Isolate,
) -> Result<Answer, String> {
    let started = std::time::Instant::now();
    let id = request::echo(&args.container_id);
    let fail = |why: String| format!("Cannot isolate container '{id}': {why}");
    let netns = NetnsId::of_pid(args.pid).map_err(|e| {
        fail(format!(
            "process {} has no network namespace to configure ({e}).",
            args.pid
        ))
    })?;
    if NetnsId::of_pid(std::process::id()).is_ok_and(|own| own.inode == netns.inode) {
        return Err(fail(format!(
            "process {} is in the node's own network namespace, not in a container's.",
            args.pid
        )));
    }
    let addresses: Vec<IpAddr> = args
        .ipv4
        .iter()
        .map(|a| IpAddr::V4(*a))
        .chain(args.ipv6.iter().map(|a| IpAddr::V6(*a)))
        .collect();
    let holders = ipam::holders(store.as_ref(), &addresses).map_err(|e| e.to_string())?;
    let desired = Endpoint {
        node: config.nodename.clone(),
        container_id: args.container_id.clone(),
        netns,
        ipv4: args.ipv4.clone(),
        ipv6: args.ipv6.clone(),
        netgroups: args.netgroups.clone(),
        labels: args.labels.0.clone(),
        holders,
        generation: 0,
        deletion_requested: false,
    };
    let held_us = started.elapsed().as_micros() as u64;
    let recorded = endpoint::record(store.as_ref(), desired).map_err(|e| e.to_string())?;
    let recorded_us = started.elapsed().as_micros() as u64;
    let generation = recorded.endpoint().generation;
    let ready = |store: &dyn Store| -> Result<Option<Answer>, String> {
        let status = endpoint::get_status(store, &config.nodename, &args.container_id)
            .map_err(|e| e.to_string())?;
        match status {
            Some(s) if s.observed_generation >= generation => match s.phase {
                Phase::Ready => Ok(Some(Answer::ok(json!({})))),
                Phase::Failed | Phase::Orphaned | Phase::Terminating => Err(fail(s.message)),
                Phase::Pending => Ok(None),
            },
            _ => Ok(None),
        }
    };
    // A repeated isolate of a Ready endpoint: nothing to do.
    if let (Recorded::Unchanged(_), Ok(Some(answer))) = (&recorded, ready(store.as_ref())) {
        return Ok(answer);
    }
    match converger.converge(recorded.endpoint(), config.isolate_timeout) {
        Ok(_) => {}
        Err(ConvergeError::Timeout(t)) => {
            return Err(fail(format!(
                "its network was not ready within {t:?} (isolate_timeout); it stays recorded and is retried."
            )))
        }
        Err(ConvergeError::Other(e)) => return Err(fail(format!("{e:#}"))),
    }
    let converged_us = started.elapsed().as_micros() as u64;
    let answer = ready(store.as_ref())?.ok_or_else(|| {
        fail("the reconcile finished but its status does not show this request yet.".into())
    });
    tracing::debug!(
        container = %args.container_id,
        held_us,
        recorded_us,
        converged_us,
        took_us = started.elapsed().as_micros() as u64,
        "isolated"
    );
    answer
}

/// Remove the container's network; unknown containers succeed.
pub fn cleanup(
    store: &Arc<dyn Store>,
    config: &Config,
    converger: &dyn Converge,
    args: &Cleanup,
) -> Result<Answer, String> {
    let started = std::time::Instant::now();
    let id = request::echo(&args.container_id);
    let fail = |why: String| format!("Cannot clean up container '{id}': {why}");
    let requested =
        endpoint::request_deletion(store.as_ref(), &config.nodename, &args.container_id)
            .map_err(|e| e.to_string())?;
    let Some(requested) = requested else {
        // Nothing was ever configured for it: cleanups are idempotent.
        return Ok(Answer::ok(json!({})));
    };
    let requested_us = started.elapsed().as_micros() as u64;
    match converger.converge(&requested, config.isolate_timeout) {
        Ok(_) => {}
        Err(ConvergeError::Timeout(t)) => {
            return Err(fail(format!(
                "its network was not removed within {t:?} (isolate_timeout); removal is retried."
            )))
        }
        Err(ConvergeError::Other(e)) => return Err(fail(format!("{e:#}"))),
    }
    let converged_us = started.elapsed().as_micros() as u64;
    let left = endpoint::get(store.as_ref(), &config.nodename, &args.container_id)
        .map_err(|e| e.to_string())?;
    if left.is_none() {
        tracing::debug!(
            container = %args.container_id,
            converged_us,
            took_us = started.elapsed().as_micros() as u64,
            requested_us,
            "cleaned up"
        );
        return Ok(Answer::ok(json!({})));
    }
    let message = endpoint::get_status(store.as_ref(), &config.nodename, &args.container_id)
        .map_err(|e| e.to_string())?
        .map(|s| s.message)
        .unwrap_or_default();
    Err(fail(format!("removal is not finished: {message}")))
}
