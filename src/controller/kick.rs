//! The kick: how a plugin process asks the node's daemon to reconcile one
//! endpoint now and waits until it has. One JSON line each way over a Unix
//! socket in `run_dir`; when nobody listens there, there is no daemon.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The socket's name in `run_dir`.
pub const SOCKET_FILE: &str = "daemon.sock";

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
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickReply {
    /// A reconcile that started after the request has finished: the
    /// status in the store is current.
    Done,
    /// The daemon could not serve the request (it is stopping, or the
    /// request was malformed).
    Refused(String),
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

/// Asks the daemon to reconcile `container_id` and waits (at most
/// `timeout`) for it to finish.
pub fn kick(run_dir: &Path, container_id: &str, timeout: Duration) -> Result<(), KickError> {
    let path = socket_path(run_dir);
    let io = |source| KickError::Io {
        path: path.clone(),
        source,
    };
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
        Err(e) => return Err(io(e)),
    };
    let timeout = timeout.max(Duration::from_millis(1));
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(&KickRequest::Reconcile(container_id.to_string()))
        .expect("a kick request serialises");
    line.push('\n');
    if let Err(e) = stream.write_all(line.as_bytes()) {
        return Err(match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                KickError::Refused(format!("the daemon went away ({e})"))
            }
            _ => io(e),
        });
    }
    let mut answer = String::new();
    match BufReader::new(&stream).read_line(&mut answer) {
        Ok(0) => Err(KickError::Refused(
            "the daemon closed the connection".into(),
        )),
        Ok(_) => match serde_json::from_str(&answer) {
            Ok(KickReply::Done) => Ok(()),
            Ok(KickReply::Refused(why)) => Err(KickError::Refused(why)),
            Err(e) => Err(KickError::Refused(format!("unreadable answer: {e}"))),
        },
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(KickError::Timeout(timeout))
        }
        Err(e) => Err(io(e)),
    }
}
