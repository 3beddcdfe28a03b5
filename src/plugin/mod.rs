//! The net-modules protocol (PROTOCOL.md): one JSON request on stdin, one
//! JSON answer on stdout. This module owns the protocol's shapes and texts;
//! it turns a checked request into calls on the protocol-free API (IPAM,
//! endpoints) and never writes anything before the request is valid.

mod dataplane;
pub mod labels;
pub mod request;

use crate::config::Config;
use crate::controller::converge::{Converge, KickOrInline};
use crate::controller::kick::{self, KickError, ServeError, ServeRequest};
use crate::ipam::{self, Assigned};
use crate::store::{self, Store};
pub use request::{parse, Request};
use serde_json::{json, Value};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// The largest request read from stdin; net-modules' requests are tiny.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The JSON object written to stdout.
    pub body: Value,
}

impl Answer {
    /// A success with extra fields (`error` is set to null).
    pub fn ok(mut fields: Value) -> Answer {
        fields["error"] = Value::Null;
        Answer { body: fields }
    }

    /// A failure with the operator-facing message.
    pub fn error(message: impl Into<String>) -> Answer {
        Answer {
            body: json!({ "error": message.into() }),
        }
    }

    /// True when `error` is null.
    pub fn is_ok(&self) -> bool {
        self.body["error"].is_null()
    }
}

/// Read at most [`MAX_REQUEST_BYTES`] of stdin.
pub fn read_request(input: impl Read) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    input
        .take(MAX_REQUEST_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the request from stdin: {e}"))?;
    if buf.len() as u64 > MAX_REQUEST_BYTES {
        return Err(format!(
            "the request is larger than {MAX_REQUEST_BYTES} bytes"
        ));
    }
    Ok(buf)
}

/// Answer one raw request. `config` is only loaded once the request is valid,
/// and the store only opened then, so bad input touches nothing. The node's
/// daemon answers it when one runs for the same node and store (it has the
/// store open and the dataplane at hand); otherwise this process does.
pub fn answer(input: &[u8], config: impl FnOnce() -> Result<Config, String>) -> Answer {
    let request = match parse(input) {
        Ok(request) => request,
        Err(invalid) => return Answer::error(invalid.0),
    };
    let config = match config() {
        Ok(config) => config,
        Err(message) => return Answer::error(message),
    };
    match ask_daemon(input, &config) {
        Ok(body) => return Answer { body },
        Err(ServeError::NotServed(why)) => {
            tracing::debug!(%why, "the daemon did not take the request; answering it here")
        }
        // The daemon went away with it: do it here if doing it twice is
        // harmless (not after a timeout: the wait is used up).
        Err(ServeError::Unanswered(why))
            if request.repeatable() && !matches!(why, KickError::Timeout(_)) =>
        {
            tracing::warn!(%why, "the daemon accepted the request and went away; answering it here")
        }
        Err(unanswered) => return Answer::error(format!("{unanswered:#}")),
    }
    let store: Arc<dyn Store> = match store::open(&config.store_options()) {
        Ok(store) => Arc::from(store),
        Err(e) => return Answer::error(e.to_string()),
    };
    let converger = KickOrInline {
        store: &store,
        config: &config,
    };
    execute(&store, &config, &converger, request)
}

/// How long the plugin waits for each of the daemon's replies: the longest
/// the daemon's own work can take (the dataplane wait plus a few store
/// calls, each bounded by `store_timeout`), and a second more.
pub fn daemon_timeout(config: &Config) -> Duration {
    config.isolate_timeout + 4 * config.store_timeout + Duration::from_secs(1)
}

fn ask_daemon(input: &[u8], config: &Config) -> Result<Value, ServeError> {
    let request = ServeRequest {
        node: config.nodename.clone(),
        datastore: config.datastore.clone(),
        etcd_prefix: config.etcd.prefix.clone(),
        isolate_timeout_ms: config.isolate_timeout.as_millis() as u64,
        request: String::from_utf8_lossy(input).into_owned(),
    };
    kick::serve(&config.run_dir, request, daemon_timeout(config))
}

/// Carry out a checked request against the store; isolate and cleanup have
/// their endpoint reconciled through `converger`.
pub fn execute(
    shared: &Arc<dyn Store>,
    config: &Config,
    converger: &dyn Converge,
    request: Request,
) -> Answer {
    let node = config.nodename.as_str();
    let store = shared.as_ref();
    let result = match request {
        Request::Allocate(args) => return allocate_all(store, node, &[&args]).remove(0),
        Request::Reserve(args) => ipam::reserve(
            store,
            &ipam::Request {
                node,
                uid: &args.uid,
                reserve: &args.addresses,
                ..Default::default()
            },
        )
        .map(|_| Answer::ok(json!({})))
        .map_err(|e| e.to_string()),
        Request::Release(request::Release::Uid(uid)) => ipam::release_handle(store, &uid)
            .map(|_| Answer::ok(json!({})))
            .map_err(|e| e.to_string()),
        Request::Release(request::Release::Ips(ips)) => ipam::release_addresses(store, &ips)
            .map(|_| Answer::ok(json!({})))
            .map_err(|e| e.to_string()),
        Request::Isolate(args) => dataplane::isolate(shared, config, converger, &args),
        Request::Cleanup(args) => dataplane::cleanup(shared, config, converger, &args),
    };
    result.unwrap_or_else(Answer::error)
}

/// Answers several `allocate` requests of `node` with one store
/// transaction (each still all or nothing); one answer per request.
pub fn allocate_all(store: &dyn Store, node: &str, requests: &[&request::Allocate]) -> Vec<Answer> {
    let asked: Vec<ipam::Request<'_>> = requests
        .iter()
        .map(|args| ipam::Request {
            node,
            uid: &args.uid,
            num_ipv4: args.num_ipv4,
            num_ipv6: args.num_ipv6,
            reserve: &args.label_ipv4,
            default_pools: true,
        })
        .collect();
    match ipam::allocate_many(store, &asked) {
        Ok(answers) => answers
            .into_iter()
            .map(|answer| match answer {
                Ok(Assigned { ipv4, ipv6 }) => Answer::ok(json!({ "ipv4": ipv4, "ipv6": ipv6 })),
                Err(e) => Answer::error(e.to_string()),
            })
            .collect(),
        Err(e) => requests
            .iter()
            .map(|_| Answer::error(e.to_string()))
            .collect(),
    }
}
