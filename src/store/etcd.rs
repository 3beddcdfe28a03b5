//! The etcd v3 backend of [`Store`], for a cluster of agents.
//!
//! Owns: the keys under its prefix (`/calico-mesos/v1/` by default) and the
//! leases it grants; it never reads or writes outside the prefix. Keys above
//! this module are relative (`block/198.18.0.0-26`): the prefix is added on
//! the way in and removed on the way out.
//!
//! **Threads.** The trait is synchronous and is called from plain threads
//! (the plugin) and from tokio tasks (the daemon). The store owns one
//! background thread running its own current-thread tokio runtime with the
//! etcd client; a call spawns its request there and waits for the answer on
//! a channel, bounded by the store timeout, so nothing ever `block_on`s on
//! the caller's thread (which may be a runtime worker). A call that gets no
//! answer in time, or cannot reach etcd, is [`StoreError::Unavailable`];
//! one etcd refuses (authentication, permissions) is
//! [`StoreError::Refused`].
//!
//! **Transactions** are one etcd Txn: each guard compares the key's
//! `mod_revision` (0 matches an absent key, as etcd compares absent keys
//! against an empty record), the writes are the success branch, and the
//! answer carries the header revision. Revisions are etcd's global
//! revision: they grow, but also move for writes outside our prefix.
//!
//! **Changes.** `changes_since(R)` is served from memory: the first call
//! starts one long-lived watch on the prefix from `R + 1` (after checking
//! that `R` is not compacted), and the background thread keeps, for every
//! key changed since, only its latest change, ordered by revision. That is
//! exactly "at most one change per key, its latest state, oldest first".
//! The log is complete for `(floor, seen]`: `floor` is where it started (or
//! what was trimmed when it outgrew its bounds) and `seen` advances only
//! with the revision of delivered events and of progress notifications
//! (both of which etcd sends in order on the watcher's own channel). After a
//! disconnect the watch resumes from `seen + 1`, so nothing is missed or
//! applied twice; if that history was compacted meanwhile, the log restarts
//! from the current revision and older `R` answer [`StoreError::Compacted`]
//! (the daemon relists). A caller asking from below `floor` also gets
//! `Compacted`. One-off watches from an older `R` are deliberately not
//! used: etcd 3.4 sends nothing for a catch-up without events and answers
//! `RequestProgress` on a separate channel that can overtake pending
//! events, so such a watch cannot tell when it has caught up.
//!
//! The answer may lag etcd by the watch's delivery delay (milliseconds),
//! except for this store's own writes: a call waits until the watch has
//! delivered every change this store made, so a writer always reads its
//! own changes back. [`Store::change_signal`] moves with every delivery.
//!
//! **Leases.** `put_leased` grants a lease and puts the key under it; a
//! later call sends one keep-alive and rewrites the key only if its value
//! or lease changed (one txn comparing both), so renewals create no
//! revision. A lease that expired during an outage is granted anew.

use super::{
    keys, Backend, Change, Changes, Commit, EtcdOptions, KeyValue, Op, Revision, Store, StoreError,
    Txn,
};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Keys read per range request when listing (keeps each answer well under
/// gRPC's 4 MiB message limit).
const PAGE: usize = 500;
/// The change log keeps at most this many keys...
const LOG_MAX_KEYS: usize = 100_000;
/// ...and at most this many bytes of keys and values.
const LOG_MAX_BYTES: usize = 64 << 20;
/// First and longest pause before the watch reconnects.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// The longest pause between reconnection attempts of the watch.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Slack for the hand-over between the caller and the background thread.
const HANDOVER: Duration = Duration::from_millis(200);

/// The etcd store.
pub struct EtcdStore {
    inner: Arc<Inner>,
    /// The leases this store keeps, by relative key.
    leases: Mutex<HashMap<String, Lease>>,
    background: Background,
}

/// A lease held by this store.
#[derive(Debug, Clone)]
struct Lease {
    id: i64,
    ttl: Duration,
}

/// What the background tasks and the callers share.
struct Inner {
    client: Client,
    prefix: String,
    location: String,
    timeout: Duration,
    log: Mutex<WatchLog>,
    /// Notified whenever the log changes (events, connection state).
    log_changed: Condvar,
    signal: watch::Sender<Revision>,
    /// The newest revision at which this store changed one of its keys.
    last_write: AtomicI64,
}

/// The in-memory change log fed by the watch.
#[derive(Default)]
struct WatchLog {
    /// Whether the watch task runs.
    started: bool,
    /// The watch has been created (and not lost since).
    connected: bool,
    /// Why the watch is not connected, for messages.
    error: Option<String>,
    /// The log holds every change after this revision...
    floor: Revision,
    /// ...up to this one.
    seen: Revision,
    /// Each key's latest change and its revision.
    latest: HashMap<String, (Revision, Change)>,
    /// The same keys ordered by that revision.
    order: BTreeSet<(Revision, String)>,
    /// Bytes of keys and values held.
    bytes: usize,
}

fn change_bytes(key: &str, change: &Change) -> usize {
    key.len()
        + match change {
            Change::Put(kv) => kv.value.len(),
            Change::Delete { .. } => 0,
        }
}

impl WatchLog {
    fn record(&mut self, revision: Revision, key: String, change: Change) {
        self.bytes += change_bytes(&key, &change);
        if let Some((old_rev, old)) = self.latest.insert(key.clone(), (revision, change)) {
            self.order.remove(&(old_rev, key.clone()));
            self.bytes -= change_bytes(&key, &old);
        }
        self.order.insert((revision, key));
        while self.order.len() > LOG_MAX_KEYS || self.bytes > LOG_MAX_BYTES {
            let Some((rev, key)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, old)) = self.latest.remove(&key) {
                self.bytes -= change_bytes(&key, &old);
            }
            self.floor = self.floor.max(rev);
        }
    }

    /// Forget everything: the log is complete from `revision` on.
    fn reset(&mut self, revision: Revision) {
        self.latest.clear();
        self.order.clear();
        self.bytes = 0;
        self.floor = revision;
        self.seen = revision;
    }

    fn since(&self, revision: Revision) -> Vec<Change> {
        self.order
            .range((revision + 1, String::new())..)
            .filter_map(|(_, key)| self.latest.get(key).map(|(_, c)| c.clone()))
            .collect()
    }
}

/// The dedicated thread with the store's tokio runtime; stopping it (on
/// drop) ends the watch and every request in flight.
struct Background {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start() -> std::io::Result<Background> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("etcd-store".into())
            .spawn(move || {
                // Ends on a stop message or when the store is gone.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Background {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Read a file a setting names, naming the setting on failure.
fn read_setting(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::BadConfig {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })
}

fn unavailable(location: &str, reason: impl Into<String>) -> StoreError {
    let reason = reason.into();
    tracing::warn!(location, reason = %reason, "etcd unavailable");
    StoreError::Unavailable {
        backend: Backend::Etcd,
        location: location.to_string(),
        reason,
    }
}

/// Sort a client error into "cannot reach" and "refused".
fn classify(location: &str, error: etcd_client::Error) -> StoreError {
    use tonic::Code;
    match error {
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::NotFound
            | Code::AlreadyExists => StoreError::Refused {
                location: location.to_string(),
                reason: status.message().to_string(),
            },
            _ => unavailable(location, status.to_string()),
        },
        other => unavailable(location, other.to_string()),
    }
}

/// True when etcd answered that a revision is compacted.
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(s) if s.message().contains("compacted"))
}

impl EtcdStore {
    /// Connect to `endpoints` (`host:port`, TLS when `tls`). Without
    /// credentials nothing is sent until the first call; with a user the
    /// authentication happens here, within `timeout`.
    pub fn open(
        endpoints: &[String],
        tls: bool,
        options: &EtcdOptions,
        timeout: Duration,
    ) -> Result<EtcdStore, StoreError> {
        let scheme = if tls { "https" } else { "http" };
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let location = urls.join(",");
        let prefix = match options.prefix.trim() {
            "" => {
                return Err(StoreError::BadConfig {
                    key: "etcd_prefix",
                    message: "must not be empty".into(),
                })
            }
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        };
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(timeout, timeout)
            .with_keep_alive_while_idle(true)
            .with_auto_token_refresh(true);
        if tls {
            let ca = options
                .ca_cert_file
                .as_deref()
                .ok_or_else(|| StoreError::BadConfig {
                    key: "etcd_ca_cert_file",
                    message: format!(
                        "the datastore '{location}' uses TLS (etcds://, https://) and needs the CA certificate that signs etcd's (ETCD_CA_CERT_FILE)"
                    ),
                })?;
            let mut tls_options = TlsOptions::new().ca_certificate(Certificate::from_pem(
                read_setting("etcd_ca_cert_file", ca)?,
            ));
            match (&options.cert_file, &options.key_file) {
                (Some(cert), Some(key)) => {
                    tls_options = tls_options.identity(Identity::from_pem(
                        read_setting("etcd_cert_file", cert)?,
                        read_setting("etcd_key_file", key)?,
                    ));
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(StoreError::BadConfig {
                        key: "etcd_key_file",
                        message: "etcd_cert_file is set, so the client key is needed too".into(),
                    })
                }
                (None, Some(_)) => {
                    return Err(StoreError::BadConfig {
                        key: "etcd_cert_file",
                        message: "etcd_key_file is set, so the client certificate is needed too"
                            .into(),
                    })
                }
            }
            connect = connect.with_tls(tls_options);
        } else if options.ca_cert_file.is_some() || options.cert_file.is_some() {
            tracing::warn!(location = %location, "etcd certificate settings are ignored: the datastore is not TLS (use etcds:// or https:// endpoints)");
        }
        match (&options.username, &options.password) {
            (Some(user), Some(password)) => {
                connect = connect.with_user(user.clone(), password.0.clone());
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(StoreError::BadConfig {
                    key: "etcd_password",
                    message: "etcd_username is set, so the password is needed too".into(),
                })
            }
            (None, Some(_)) => {
                return Err(StoreError::BadConfig {
                    key: "etcd_username",
                    message: "etcd_password is set without a user name".into(),
                })
            }
        }
        let background = Background::start()
            .map_err(|e| unavailable(&location, format!("cannot start the etcd thread: {e}")))?;
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let location = location.clone();
            background.handle.spawn(async move {
                let answer =
                    match tokio::time::timeout(timeout, Client::connect(urls, Some(connect))).await
                    {
                        Ok(Ok(client)) => Ok(client),
                        Ok(Err(etcd_client::Error::InvalidUri(e))) => Err(StoreError::BadUrl {
                            url: location.clone(),
                            reason: e.to_string(),
                        }),
                        Ok(Err(e)) => Err(classify(&location, e)),
                        Err(_) => Err(unavailable(
                            &location,
                            format!("no answer within {timeout:?} while connecting"),
                        )),
                    };
                let _ = tx.send(answer);
            });
        }
        let client = rx
            .recv_timeout(timeout + HANDOVER)
            .map_err(|_| unavailable(&location, "no answer while connecting"))??;
        let (signal, _) = watch::channel(0);
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                prefix,
                location,
                timeout,
                log: Mutex::new(WatchLog::default()),
                log_changed: Condvar::new(),
                signal,
                last_write: AtomicI64::new(0),
            }),
            leases: Mutex::new(HashMap::new()),
            background,
        })
    }

    /// Run `request` on the background runtime and wait for its answer, at
    /// most the store timeout.
    fn call<T, Fut>(&self, request: impl FnOnce(Arc<Inner>) -> Fut) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let timeout = inner.timeout;
        let location = inner.location.clone();
        let future = request(inner);
        let (tx, rx) = mpsc::sync_channel(1);
        self.background.handle.spawn({
            let location = location.clone();
            async move {
                let answer = match tokio::time::timeout(timeout, future).await {
                    Ok(answer) => answer,
                    Err(_) => Err(unavailable(
                        &location,
                        format!("no answer within {timeout:?}"),
                    )),
                };
                let _ = tx.send(answer);
            }
        });
        let wait = || rx.recv_timeout(timeout + HANDOVER);
        // On a worker of a multi-thread runtime (the daemon's), the wait
        // holds that worker: during an outage every write waits out the
        // timeout, and two such waits would stall all of the daemon's
        // tasks (its answers to plugins included). block_in_place hands
        // the worker's other tasks to another thread meanwhile.
        let answer = if on_multi_thread_runtime() {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        };
        answer.map_err(|_| unavailable(&location, format!("no answer within {timeout:?}")))?
    }

    fn lock_log(&self) -> MutexGuard<'_, WatchLog> {
        self.inner.log.lock().expect("watch log mutex poisoned")
    }
}

impl Inner {
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The relative key of a full key from etcd.
    fn relative(&self, key: &[u8]) -> String {
        let key = String::from_utf8_lossy(key);
        key.strip_prefix(self.prefix.as_str())
            .unwrap_or(&key)
            .to_string()
    }

    fn key_value(&self, kv: &etcd_client::KeyValue) -> KeyValue {
        KeyValue {
            key: self.relative(kv.key()),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        }
    }

    fn err(&self, error: etcd_client::Error) -> StoreError {
        classify(&self.location, error)
    }

    /// Remember that this store changed a key at `revision`.
    fn wrote(&self, revision: Revision) {
        self.last_write.fetch_max(revision, Ordering::SeqCst);
    }

    fn log(&self) -> MutexGuard<'_, WatchLog> {
        self.log.lock().expect("watch log mutex poisoned")
    }

    /// The current revision (one cheap range request).
    async fn current_revision(&self) -> Result<Revision, etcd_client::Error> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(
                self.prefix.clone(),
                Some(GetOptions::new().with_keys_only().with_limit(1)),
            )
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Every key in `[start, end)` as of one revision, page by page.
    async fn range(
        &self,
        start: String,
        limit: Option<usize>,
        keys_only: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let end = keys::prefix_end(&start);
        let mut out: Vec<KeyValue> = Vec::new();
        let mut from = start.into_bytes();
        let mut revision = 0;
        let mut kv = self.client.kv_client();
        loop {
            let want = limit.map_or(PAGE, |l| (l - out.len()).min(PAGE));
            if want == 0 {
                return Ok(out);
            }
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(want as i64)
                .with_revision(revision);
            if keys_only {
                options = options.with_keys_only();
            }
            let resp = kv
                .get(from.clone(), Some(options))
                .await
                .map_err(|e| self.err(e))?;
            if revision == 0 {
                // Later pages read the same snapshot.
                revision = resp.header().map_or(0, |h| h.revision());
            }
            out.extend(resp.kvs().iter().map(|kv| self.key_value(kv)));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn disconnected(&self, reason: String) {
        let mut log = self.log();
        if log.connected {
            tracing::warn!(location = %self.location, reason = %reason, "etcd watch lost; reconnecting");
        }
        log.connected = false;
        log.error = Some(reason);
        drop(log);
        self.log_changed.notify_all();
    }

    /// Apply one watch response to the log.
    fn apply(&self, resp: &etcd_client::WatchResponse) {
        let mut log = self.log();
        let before = log.seen;
        if resp.events().is_empty() {
            // A progress notification: the watcher is synced up to here.
            if let Some(h) = resp.header() {
                log.seen = log.seen.max(h.revision());
            }
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            let key = self.relative(kv.key());
            let change = match event.event_type() {
                etcd_client::EventType::Put => Change::Put(self.key_value(kv)),
                etcd_client::EventType::Delete => Change::Delete {
                    key: key.clone(),
                    revision,
                },
            };
            log.record(revision, key, change);
            log.seen = log.seen.max(revision);
        }
        let seen = log.seen;
        drop(log);
        if seen != before {
            self.signal.send_replace(seen);
        }
        self.log_changed.notify_all();
    }
}

/// The watch task: follows the prefix from the log's `seen + 1` for as long
/// as the store lives, reconnecting with backoff.
async fn follow(inner: Arc<Inner>) {
    let end = keys::prefix_end(&inner.prefix);
    let mut delay = RETRY_MIN;
    loop {
        let start = inner.log().seen + 1;
        let mut client = inner.client.watch_client();
        let options = WatchOptions::new()
            .with_range(end.clone())
            .with_start_revision(start)
            .with_progress_notify();
        // Refuse to start from a compacted revision: etcd would accept the
        // watch and cancel it only later.
        let checked = async {
            let mut kv = inner.client.kv_client();
            kv.get(
                inner.prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_keys_only()
                        .with_limit(1)
                        .with_revision(start - 1),
                ),
            )
            .await?;
            client.watch(inner.prefix.clone(), Some(options)).await
        };
        let mut stream = match tokio::time::timeout(inner.timeout, checked).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if is_compacted(&e) => {
                restart_after_compaction(&inner, e.to_string()).await;
                continue;
            }
            Ok(Err(e)) => {
                inner.disconnected(e.to_string());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
            Err(_) => {
                inner.disconnected(format!(
                    "no answer within {:?} creating the watch",
                    inner.timeout
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) if resp.compact_revision() > 0 => {
                    let reason =
                        format!("history compacted at revision {}", resp.compact_revision());
                    restart_after_compaction(&inner, reason).await;
                    break;
                }
                Ok(Some(resp)) if resp.canceled() => {
                    inner.disconnected(format!("watch canceled: {}", resp.cancel_reason()));
                    break;
                }
                Ok(Some(resp)) if resp.created() => {
                    let mut log = inner.log();
                    log.connected = true;
                    log.error = None;
                    drop(log);
                    inner.log_changed.notify_all();
                    delay = RETRY_MIN;
                }
                Ok(Some(resp)) => inner.apply(&resp),
                Ok(None) => {
                    inner.disconnected("the watch stream ended".into());
                    break;
                }
                Err(e) => {
                    inner.disconnected(e.to_string());
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// The history after `seen` is gone: start the log again from the current
/// revision, so older requests answer `Compacted` and callers relist.
async fn restart_after_compaction(inner: &Inner, reason: String) {
    match inner.current_revision().await {
        Ok(now) => {
            tracing::info!(location = %inner.location, reason = %reason, revision = now, "etcd watch history lost; following from the current revision");
            inner.log().reset(now);
            inner.signal.send_replace(now);
            inner.log_changed.notify_all();
        }
        Err(e) => {
            inner.disconnected(e.to_string());
            tokio::time::sleep(RETRY_MIN).await;
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let full = self.inner.full(key);
        self.call(|inner| async move {
            let resp = inner
                .client
                .kv_client()
                .get(full, None)
                .await
                .map_err(|e| inner.err(e))?;
            Ok(resp.kvs().first().map(|kv| inner.key_value(kv)))
        })
    }

    fn list(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<KeyValue>, StoreError> {
        let start = self.inner.full(prefix);
        self.call(|inner| async move { inner.range(start, limit, false).await })
    }

    fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let start = self.inner.full(prefix);
        self.call(|inner| async move {
            Ok(inner
                .range(start, None, true)
                .await?
                .into_iter()
                .map(|kv| kv.key)
                .collect())
        })
    }

    fn commit(&self, txn: &Txn) -> Result<Commit, StoreError> {
        let inner = &self.inner;
        let compares: Vec<Compare> = txn
            .compares
            .iter()
            .map(|c| Compare::mod_revision(inner.full(&c.key), CompareOp::Equal, c.mod_revision))
            .collect();
        // etcd refuses a txn that touches one key twice; applying the ops
        // in order is the same as keeping each key's last op.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, op) in txn.ops.iter().enumerate() {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
            };
            last.insert(key, i);
        }
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .enumerate()
            .filter(|(i, op)| {
                let key = match op {
                    Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
                };
                last.get(key) == Some(i)
            })
            .map(|(_, op)| match op {
                Op::Put { key, value } => TxnOp::put(inner.full(key), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(inner.full(key), None),
            })
            .collect();
        let request = EtcdTxn::new().when(compares).and_then(ops);
        self.call(|inner| async move {
            let resp = inner
                .client
                .kv_client()
                .txn(request)
                .await
                .map_err(|e| inner.err(e))?;
            let revision = resp.header().map_or(0, |h| h.revision());
            if !resp.succeeded() {
                return Ok(Commit::Conflict);
            }
            let changed = resp.op_responses().iter().any(|r| match r {
                TxnOpResponse::Put(_) => true,
                TxnOpResponse::Delete(d) => d.deleted() > 0,
                _ => false,
            });
            if changed {
                inner.wrote(revision);
            }
            Ok(Commit::Done(revision))
        })
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        self.call(|inner| async move { inner.current_revision().await.map_err(|e| inner.err(e)) })
    }

    fn changes_since(&self, revision: Revision) -> Result<Changes, StoreError> {
        {
            let mut log = self.lock_log();
            if !log.started {
                log.started = true;
                log.floor = revision;
                log.seen = revision;
                self.background.handle.spawn(follow(self.inner.clone()));
            }
        }
        // Wait for the watch, and for it to deliver this store's own writes.
        let deadline = Instant::now() + self.inner.timeout;
        let mut log = self.lock_log();
        loop {
            let own = self.inner.last_write.load(Ordering::SeqCst);
            if log.connected && log.seen >= own {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let reason = log
                    .error
                    .clone()
                    .unwrap_or_else(|| "the watch has not caught up".into());
                drop(log);
                return Err(unavailable(&self.inner.location, reason));
            }
            log = self
                .inner
                .log_changed
                .wait_timeout(log, left)
                .expect("watch log mutex poisoned")
                .0;
        }
        logged_since(&log, revision)
    }

    fn changes_delivered_since(&self, revision: Revision) -> Result<Changes, StoreError> {
        let log = self.lock_log();
        if !log.started {
            drop(log);
            return self.changes_since(revision); // starts the feed
        }
        logged_since(&log, revision)
    }

    fn location(&self) -> String {
        self.inner.location.clone()
    }

    fn change_signal(&self) -> Option<watch::Receiver<Revision>> {
        Some(self.inner.signal.subscribe())
    }

    fn put_leased(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let held = self
            .leases
            .lock()
            .expect("lease mutex poisoned")
            .get(key)
            .cloned();
        let full = self.inner.full(key);
        let value = value.to_vec();
        let lease = self.call(move |inner| async move {
            let mut client = inner.client.clone();
            if let Some(lease) = held.filter(|l| l.ttl == ttl) {
                match client.lease_keep_alive(lease.id).await {
                    Ok(_) => {
                        // Rewrite only when the key lost its value or lease.
                        let txn = EtcdTxn::new()
                            .when(vec![
                                Compare::lease(full.clone(), CompareOp::Equal, lease.id),
                                Compare::value(full.clone(), CompareOp::Equal, value.clone()),
                            ])
                            .or_else(vec![TxnOp::put(
                                full.clone(),
                                value.clone(),
                                Some(PutOptions::new().with_lease(lease.id)),
                            )]);
                        match client.txn(txn).await {
                            Ok(resp) => {
                                if !resp.succeeded() {
                                    inner.wrote(resp.header().map_or(0, |h| h.revision()));
                                }
                                return Ok(lease);
                            }
                            Err(e) if !e.to_string().contains("lease not found") => {
                                return Err(inner.err(e))
                            }
                            Err(_) => {} // expired just now: grant anew
                        }
                    }
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => {} // expired
                    Err(e) => return Err(inner.err(e)),
                }
            }
            let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            let granted = client
                .lease_grant(secs.max(1) as i64, None)
                .await
                .map_err(|e| inner.err(e))?;
            let resp = client
                .put(
                    full,
                    value,
                    Some(PutOptions::new().with_lease(granted.id())),
                )
                .await
                .map_err(|e| inner.err(e))?;
            inner.wrote(resp.header().map_or(0, |h| h.revision()));
            Ok(Lease {
                id: granted.id(),
                ttl,
            })
        })?;
        let old = self
            .leases
            .lock()
            .expect("lease mutex poisoned")
            .insert(key.to_string(), lease.clone());
        if let Some(old) = old.filter(|o| o.id != lease.id) {
            // A lease replaced because its ttl changed: stop the old one.
            let _ = self.call(move |inner| async move {
                let _ = inner.client.lease_client().revoke(old.id).await;
                Ok(())
            });
        }
        Ok(())
    }

    fn revoke_lease(&self, key: &str) -> Result<(), StoreError> {
        let held = self
            .leases
            .lock()
            .expect("lease mutex poisoned")
            .remove(key);
        let full = self.inner.full(key);
        self.call(move |inner| async move {
            let resp = inner
                .client
                .kv_client()
                .delete(full, None::<DeleteOptions>)
                .await
                .map_err(|e| inner.err(e))?;
            if resp.deleted() > 0 {
                inner.wrote(resp.header().map_or(0, |h| h.revision()));
            }
            if let Some(lease) = held {
                if let Err(e) = inner.client.lease_client().revoke(lease.id).await {
                    if !e.to_string().contains("not found") {
                        return Err(inner.err(e));
                    }
                }
            }
            Ok(())
        })
    }
}

/// What the watch's log holds after `revision`, up to what it has seen.
fn logged_since(log: &WatchLog, revision: Revision) -> Result<Changes, StoreError> {
    if revision < log.floor {
        return Err(StoreError::Compacted {
            requested: revision,
            compacted: log.floor,
        });
    }
    Ok(Changes {
        revision: revision.max(log.seen),
        changes: log.since(revision),
    })
}

/// True on a thread of a multi-thread tokio runtime, where a blocking wait
/// must go through `block_in_place` (which would panic on a current-thread
/// runtime, and is not needed outside any runtime).
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
