//! Bounded external commands: every command a helper runs has a deadline
//! and is killed (and reaped) when it passes it.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The deadline of any single command run through [`run`].
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a command did not give a successful answer.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The command could not be started at all.
    #[error("cannot start {cmd}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// The command ran past its deadline and was killed.
    #[error("{cmd} still running after {timeout:?}: killed")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// The command exited unsuccessfully.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error, lossily decoded.
        stderr: String,
    },
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion within `timeout`, capturing its output.
///
/// Output is read on helper threads so a chatty command cannot block on a
/// full pipe; on timeout the process is killed and reaped.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, CmdError> {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            cmd: line.clone(),
            source,
        })?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CmdError::Timeout { cmd: line, timeout });
            }
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` with [`COMMAND_TIMEOUT`] and requires success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String, CmdError> {
    let line = describe(cmd);
    let out = run(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
