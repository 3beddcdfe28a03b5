//! The kick socket: how a plugin process reaches the node's daemon. One
//! JSON line each way over a Unix socket in `run_dir`; when nobody listens
//! there, there is no daemon. A client asks either for one endpoint to be
//! reconciled now ([`kick`]), or for a whole net-modules request to be
//! answered by the daemon with its long-lived store and dataplane
//! ([`serve`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's name in `run_dir`.
pub const SOCKET_FILE: &str = "daemon.sock";

/// The longest request line the daemon reads: a net-modules request of
/// the largest size the plugin accepts, escaped, with room for the rest.
pub const MAX_LINE_BYTES: u64 = 4 * crate::plugin::MAX_REQUEST_BYTES + 4096;

/// The socket's path.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_FILE)
}

/// True when a daemon listens on `run_dir`'s socket.
pub fn daemon_listening(run_dir: &Path) -> bool {
    UnixStream::connect(socket_path(run_dir)).is_ok()
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickRequest {
    /// Reconcile this container's endpoint and answer when done.
    Reconcile(String),
    /// Answer this net-modules request.
    Serve(ServeRequest),
}

/// A net-modules request for the daemon to answer, with what the daemon
/// checks before it does: it serves only a plugin configured for the same
/// node and store as itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeRequest {
    /// The plugin's `nodename`.
    pub node: String,
    /// The plugin's `datastore` URL.
    pub datastore: String,
    /// The plugin's `etcd_prefix`.
    pub etcd_prefix: String,
    /// The plugin's `isolate_timeout`, in milliseconds: how long isolate
    /// and cleanup wait for the dataplane.
    pub isolate_timeout_ms: u64,
    /// The request, exactly as read from stdin (already checked valid).
    pub request: String,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickReply {
    /// A reconcile that started after the request has finished: the
    /// status in the store is current.
    Done,
    /// A reconcile that started after the request has failed; the status
    /// in the store may not show it (the store refused the write).
    Failed(String),
    /// The daemon could not serve the request (it is stopping, the request
    /// was malformed, or the plugin is configured for another node or
    /// store); nothing of it was carried out.
    Refused(String),
    /// The daemon has started carrying out a [`ServeRequest`]; its
    /// [`Answer`](KickReply::Answer) follows.
    Accepted,
    /// The net-modules answer to a [`ServeRequest`].
    Answer(Value),
}

/// Why a kick did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// Nobody listens: no daemon runs on this node.
    #[error("no daemon is listening on {0}")]
    NoDaemon(PathBuf),
    /// The daemon did not answer in time.
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon refused.
    #[error("the daemon refused: {0}")]
    Refused(String),
    /// The daemon's reconcile failed, for this reason.
    #[error("{0}")]
    Failed(String),
    /// Anything else on the socket.
    #[error("talking to the daemon on {path}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Why the daemon did not answer a [`ServeRequest`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The daemon did not take the request (there is none, it refused, or
    /// it went away before accepting): nothing was carried out, and the
    /// caller may answer the request itself.
    #[error(transparent)]
    NotServed(KickError),
    /// The daemon accepted the request but gave no answer (it went away,
    /// or `timeout` passed): the request may have been carried out.
    #[error("the node's daemon accepted the request but did not answer: {0}")]
    Unanswered(KickError),
}

/// A connection to the daemon with a request written on it.
struct Exchange {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    timeout: Duration,
}

impl Exchange {
    /// Connects and writes `request`; every later read waits at most
    /// `timeout`.
    fn start(run_dir: &Path, request: &KickRequest, timeout: Duration) -> Result<Self, KickError> {
        let path = socket_path(run_dir);
        let mut stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(KickError::NoDaemon(path));
            }
            Err(e) => return Err(KickError::Io { path, source: e }),
        };
        let timeout = timeout.max(Duration::from_millis(1));
        let io = |source| KickError::Io {
            path: path.clone(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut line = serde_json::to_string(request).expect("a kick request serialises");
        line.push('\n');
        if let Err(e) = stream.write_all(line.as_bytes()) {
            return Err(match e.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    KickError::Refused(format!("the daemon went away ({e})"))
                }
                _ => io(e),
            });
        }
        Ok(Exchange {
            reader: BufReader::new(stream),
            path,
            timeout,
        })
    }

    /// The daemon's next reply line.
    fn reply(&mut self) -> Result<KickReply, KickError> {
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) => Err(KickError::Refused(
                "the daemon closed the connection".into(),
            )),
            Ok(_) => match serde_json::from_str(&answer) {
                Ok(KickReply::Refused(why)) => Err(KickError::Refused(why)),
                Ok(reply) => Ok(reply),
                Err(e) => Err(KickError::Refused(format!("unreadable answer: {e}"))),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(KickError::Timeout(self.timeout))
            }
            Err(e) => Err(KickError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }
}

fn unexpected(reply: KickReply) -> KickError {
    KickError::Refused(format!("unexpected answer: {reply:?}"))
}

/// Asks the daemon to reconcile `container_id` and waits (at most
/// `timeout`) for it to finish.
pub fn kick(run_dir: &Path, container_id: &str, timeout: Duration) -> Result<(), KickError> {
    let request = KickRequest::Reconcile(container_id.to_string());
    match Exchange::start(run_dir, &request, timeout)?.reply()? {
        KickReply::Done => Ok(()),
        KickReply::Failed(why) => Err(KickError::Failed(why)),
        other => Err(unexpected(other)),
    }
}

/// Has the daemon answer `request`, waiting at most `timeout` for each of
/// its two replies (accepted, then the answer); returns the answer's body.
pub fn serve(
    run_dir: &Path,
    request: ServeRequest,
    timeout: Duration,
) -> Result<Value, ServeError> {
    let mut exchange = Exchange::start(run_dir, &KickRequest::Serve(request), timeout)
        .map_err(ServeError::NotServed)?;
    // Refused or closed before accepting: the daemon did nothing. A
    // timeout or an error on the socket leaves that unknown.
    match exchange.reply() {
        Ok(KickReply::Accepted) => {}
        Ok(other) => return Err(ServeError::NotServed(unexpected(other))),
        Err(e @ KickError::Refused(_)) => return Err(ServeError::NotServed(e)),
        Err(e) => return Err(ServeError::Unanswered(e)),
    }
    match exchange.reply().map_err(ServeError::Unanswered)? {
        KickReply::Answer(body) => Ok(body),
        other => Err(ServeError::Unanswered(unexpected(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn request() -> ServeRequest {
        ServeRequest {
            node: "n".into(),
            datastore: "sqlite:///x".into(),
            etcd_prefix: "/p/".into(),
            isolate_timeout_ms: 1000,
            request: r#"{"command":"allocate"}"#.into(),
        }
    }

    /// A daemon stand-in on a real socket: reads one request line, then
    /// writes `lines` (each followed by a newline) and closes, or keeps
    /// the connection open without a word when `hang`.
    fn fake_daemon(
        lines: &'static [&'static str],
        hang: bool,
    ) -> (tempfile::TempDir, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = UnixListener::bind(socket_path(dir.path())).expect("bind");
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("read request");
            let mut writer = stream;
            for reply in lines {
                writer
                    .write_all(format!("{reply}\n").as_bytes())
                    .expect("reply");
            }
            if hang {
                std::thread::sleep(Duration::from_millis(500));
            }
            line
        });
        (dir, handle)
    }

    #[test]
    fn no_socket_means_no_daemon_and_nothing_served() {
        let dir = tempfile::tempdir().expect("temp dir");
        let e = serve(dir.path(), request(), Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(e, ServeError::NotServed(KickError::NoDaemon(_))),
            "{e:?}"
        );
    }

    #[test]
    fn an_accepted_request_gets_its_answer() {
        let (dir, daemon) = fake_daemon(
            &[r#""accepted""#, r#"{"answer":{"error":null,"ipv4":[]}}"#],
            false,
        );
        let body = serve(dir.path(), request(), Duration::from_secs(5)).expect("served");
        assert_eq!(body, serde_json::json!({"error": null, "ipv4": []}));
        let sent: KickRequest = serde_json::from_str(&daemon.join().unwrap()).unwrap();
        assert_eq!(sent, KickRequest::Serve(request()));
    }

    /// What `serve` makes of a daemon that replies `lines` (and then stays
    /// silent when `hang`), waiting `wait` for each reply.
    fn failure(lines: &'static [&'static str], hang: bool, wait: Duration) -> ServeError {
        let (dir, daemon) = fake_daemon(lines, hang);
        let e = serve(dir.path(), request(), wait).unwrap_err();
        daemon.join().unwrap();
        e
    }

    #[test]
    fn only_what_the_daemon_never_accepted_counts_as_not_served() {
        use KickError::{Refused, Timeout};
        use ServeError::{NotServed, Unanswered};
        let (long, short) = (Duration::from_secs(5), Duration::from_millis(50));
        let refused: &[&str] = &[r#"{"refused":"another node"}"#];
        let accepted: &[&str] = &[r#""accepted""#];
        // Refused, or closed before accepting: nothing was done.
        assert!(matches!(
            failure(refused, false, long),
            NotServed(Refused(_))
        ));
        assert!(matches!(failure(&[], false, long), NotServed(Refused(_))));
        // Silent past the wait, before or after accepting, or closed after
        // accepting: it may have been carried out.
        assert!(matches!(failure(&[], true, short), Unanswered(Timeout(_))));
        assert!(matches!(
            failure(accepted, true, short),
            Unanswered(Timeout(_))
        ));
        assert!(matches!(
            failure(accepted, false, long),
            Unanswered(Refused(_))
        ));
    }

    #[test]
    fn a_kick_is_done_when_the_daemon_says_so() {
        let (dir, daemon) = fake_daemon(&[r#""done""#], false);
        kick(dir.path(), "c1", Duration::from_secs(5)).expect("done");
        let sent: KickRequest = serde_json::from_str(&daemon.join().unwrap()).unwrap();
        assert_eq!(sent, KickRequest::Reconcile("c1".into()));
    }
}
