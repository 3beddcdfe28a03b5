//! A real etcd server (`/usr/bin/etcd`, 3.4) for tests: started on free
//! ports with a temporary data directory, stopped (and the directory
//! removed) by the guard on success, failure and panic.
//!
//! Owns: the etcd processes it starts and their temporary directories,
//! nothing else. It listens on loopback (or on an address inside a test
//! network namespace) and never touches the root namespace's network
//! configuration.
//!
//! ```no_run
//! let etcd = testsupport::etcd::Etcd::start();
//! let url = etcd.endpoint(); // http://127.0.0.1:<port>
//! etcd.compact(1);
//! ```
//!
//! Tests that only need "an etcd" share one per test process with
//! [`shared`] and keep apart by key prefix ([`unique_prefix`]); tests that
//! stop, restart, compact, secure or enable authentication start their own.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The etcd binary (Debian's etcd-server package).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// How long a start (up to "ready to serve client requests") may take.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stop waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin request (compact, auth setup) may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server side of TLS: files etcd is started with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// CA that signs client certificates (etcd's `--trusted-ca-file`).
    pub ca_file: PathBuf,
    /// The server certificate (must name the listen address).
    pub cert_file: PathBuf,
    /// The server key.
    pub key_file: PathBuf,
    /// Require client certificates (`--client-cert-auth`).
    pub client_cert_auth: bool,
    /// Client certificate and key the admin helpers use.
    pub admin_identity: Option<(PathBuf, PathBuf)>,
}

/// How to start an etcd; [`EtcdBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct EtcdBuilder {
    netns: Option<String>,
    address: IpAddr,
    tls: Option<ServerTls>,
}

impl Default for EtcdBuilder {
    fn default() -> Self {
        EtcdBuilder {
            netns: None,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tls: None,
        }
    }
}

impl EtcdBuilder {
    /// Run etcd inside the named network namespace (`ip netns exec`),
    /// listening on `address` (which must be configured there). Ports are
    /// then etcd's own 2379 (client) and 2380 (peer).
    pub fn netns(mut self, name: &str, address: IpAddr) -> Self {
        self.netns = Some(name.to_string());
        self.address = address;
        self
    }

    /// Serve clients over TLS.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Start the server and wait until it serves clients; panics (after
    /// cleaning up) when it does not within [`START_TIMEOUT`].
    pub fn start(self) -> Etcd {
        let mut errors = Vec::new();
        // A free port found by binding can be taken by someone else before
        // etcd binds it: try a few times, each with a fresh directory.
        for _ in 0..3 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = tempfile::Builder::new()
                .prefix(&format!("calico-mesos-etcd-{}-{n}-", std::process::id()))
                .tempdir()
                .expect("create the etcd temp dir");
            let (client_port, peer_port) = match self.netns {
                Some(_) => (2379, 2380),
                None => (free_port(self.address), free_port(self.address)),
            };
            let mut etcd = Etcd {
                name: format!("test{n}"),
                builder: self.clone(),
                client_port,
                peer_port,
                dir: Some(dir),
                child: None,
                root_password: Mutex::new(None),
            };
            match etcd.spawn() {
                Ok(()) => return etcd,
                Err(e) => errors.push(e), // dropping `etcd` kills it and removes the dir
            }
        }
        panic!("etcd did not start:\n{}", errors.join("\n---\n"));
    }
}

/// A running (or stopped) test etcd; dropping it kills etcd and removes its
/// data directory.
pub struct Etcd {
    name: String,
    builder: EtcdBuilder,
    client_port: u16,
    peer_port: u16,
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    root_password: Mutex<Option<String>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoint", &self.endpoint())
            .field("netns", &self.builder.netns)
            .finish()
    }
}

fn free_port(address: IpAddr) -> u16 {
    TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

fn host(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

impl Etcd {
    /// A plain etcd on loopback.
    pub fn start() -> Etcd {
        EtcdBuilder::default().start()
    }

    /// Start configuring one.
    pub fn builder() -> EtcdBuilder {
        EtcdBuilder::default()
    }

    /// `host:port` of the client listener.
    pub fn host_port(&self) -> String {
        format!("{}:{}", host(self.builder.address), self.client_port)
    }

    /// The client URL, `http://…` or `https://…`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.builder.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host_port())
    }

    /// The data directory (kept across [`Etcd::stop`] and [`Etcd::restart`]).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.as_ref().expect("the etcd dir").path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("the etcd dir")
            .path()
            .join("etcd.log")
    }

    /// The last lines etcd logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether etcd is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let host = host(self.builder.address);
        let scheme = if self.builder.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client = format!("{scheme}://{host}:{}", self.client_port);
        let peer = format!("http://{host}:{}", self.peer_port);
        let mut cmd = match &self.builder.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, ETCD_BIN]);
                c
            }
            None => Command::new(ETCD_BIN),
        };
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .args(["--initial-cluster-state", "new"])
            // A single member elects itself quickly with short timers.
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"]);
        if let Some(tls) = &self.builder.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert_file)
                .arg("--key-file")
                .arg(&tls.key_file)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_file);
            if tls.client_cert_auth {
                cmd.arg("--client-cert-auth");
            }
        }
        let log = std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {ETCD_BIN}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(self.log_path()) {
                let _ = f.read_to_string(&mut text);
            }
            if text.contains("ready to serve client requests") {
                return Ok(());
            }
            if !self.is_running() {
                return Err(format!("etcd exited during start:\n{}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd not ready after {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop etcd (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]), keeping
    /// its data directory for [`Etcd::restart`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Send etcd `signal`: `SIGSTOP` freezes it with its connections
    /// open (a stalled server, not a dead one), `SIGCONT` resumes it.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("etcd is running");
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// Kill etcd at once (SIGKILL), as a crash would; the data is kept.
    pub fn crash(&mut self) {
        self.kill();
    }

    /// Start the stopped etcd again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            self.kill();
            panic!("etcd did not restart: {e}");
        }
    }

    /// Run `f` with an admin client (root, once authentication is on),
    /// from inside etcd's namespace when it has one.
    fn admin<T: Send>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut etcd_client::Client) -> Result<T, etcd_client::Error> + Send,
    ) -> T {
        let endpoint = self.endpoint();
        let tls = self.builder.tls.clone();
        let root = self.root_password.lock().unwrap().clone();
        let work = move || -> Result<T, String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let mut options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(ADMIN_TIMEOUT)
                    .with_timeout(ADMIN_TIMEOUT);
                if let Some(tls) = &tls {
                    let ca = std::fs::read(&tls.ca_file).map_err(|e| e.to_string())?;
                    let mut t = etcd_client::TlsOptions::new()
                        .ca_certificate(etcd_client::Certificate::from_pem(ca));
                    if let Some((cert, key)) = &tls.admin_identity {
                        t = t.identity(etcd_client::Identity::from_pem(
                            std::fs::read(cert).map_err(|e| e.to_string())?,
                            std::fs::read(key).map_err(|e| e.to_string())?,
                        ));
                    }
                    options = options.with_tls(t);
                }
                if let Some(password) = root {
                    options = options.with_user("root", password);
                }
                let run = async {
                    let mut client =
                        etcd_client::Client::connect([endpoint.as_str()], Some(options)).await?;
                    f(&mut client).await
                };
                tokio::time::timeout(ADMIN_TIMEOUT, run)
                    .await
                    .map_err(|_| format!("no answer within {ADMIN_TIMEOUT:?}"))?
                    .map_err(|e| e.to_string())
            })
        };
        let result = match &self.builder.netns {
            Some(ns) => in_netns(ns, work),
            None => std::thread::scope(|s| s.spawn(work).join().expect("admin thread")),
        };
        result.unwrap_or_else(|e| panic!("etcd {what} at {}: {e}", self.endpoint()))
    }

    /// Compact etcd's history up to `revision` (physically, waiting for it).
    pub fn compact(&self, revision: i64) {
        self.admin("compact", async move |c: &mut etcd_client::Client| {
            c.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .map(|_| ())
        });
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.admin("read the revision", async |c: &mut etcd_client::Client| {
            let resp = c.get("/", None).await?;
            Ok(resp.header().map_or(0, |h| h.revision()))
        })
    }

    /// Turn on etcd's authentication: a `root` user (password
    /// `root_password`, used by these helpers from now on) and `user` with
    /// read-write access to every key under `prefix` only.
    pub fn enable_auth(&self, root_password: &str, user: &str, password: &str, prefix: &str) {
        let (root_pw, user, password, prefix) = (
            root_password.to_string(),
            user.to_string(),
            password.to_string(),
            prefix.to_string(),
        );
        let role = format!("{user}-role");
        self.admin(
            "enable authentication",
            async move |c: &mut etcd_client::Client| {
                c.user_add("root", root_pw, None).await?;
                c.user_grant_role("root", "root").await?;
                c.role_add(role.clone()).await?;
                c.role_grant_permission(
                    role.clone(),
                    etcd_client::Permission::read_write(prefix).with_prefix(),
                )
                .await?;
                c.user_add(user.clone(), password, None).await?;
                c.user_grant_role(user, role).await?;
                c.auth_enable().await?;
                Ok(())
            },
        );
        *self.root_password.lock().unwrap() = Some(root_password.to_string());
    }
}

/// Run `f` on a thread inside the named network namespace.
fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    use std::os::fd::AsRawFd;
    let path = PathBuf::from("/run/netns").join(name);
    let file =
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns only changes this short-lived scoped thread's
            // network namespace; `file` is an open nsfs file.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {name}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        // The TempDir removes the data directory when it drops.
    }
}

/// The etcd shared by the tests of this process that need nothing special:
/// started by the first, stopped when the last one holding it is done.
pub fn shared() -> Arc<Etcd> {
    static SHARED: Mutex<Weak<Etcd>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(etcd) = slot.upgrade() {
        return etcd;
    }
    let etcd = Arc::new(Etcd::start());
    *slot = Arc::downgrade(&etcd);
    etcd
}

/// A key prefix no other test of any process uses: `/cm-test/<tag>-<pid>-<n>/`.
pub fn unique_prefix(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("/cm-test/{tag}-{}-{n}/", std::process::id())
}
