//! Plugin mode: stdin → answer → stdout, exit status 1 on error.

use calico_mesos::config::Config;
use calico_mesos::plugin::{self, Answer};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

/// Read one request, answer it, and exit.
pub fn run(config_path: Option<&Path>) -> ExitCode {
    if std::io::stdin().is_terminal() {
        eprintln!(
            "calico-mesos: no command given and stdin is a terminal.\n\
             As a net-modules plugin it reads one JSON request on stdin; see `calico-mesos --help`."
        );
        return ExitCode::from(2);
    }
    let answer = match plugin::read_request(std::io::stdin().lock()) {
        Ok(input) => plugin::answer(&input, || {
            let config = Config::load(config_path).map_err(|e| e.to_string())?;
            super::init_logging(&config, false);
            Ok(config)
        }),
        Err(message) => Answer::error(message),
    };
    let mut stdout = std::io::stdout().lock();
    // The answer is the protocol: nothing else is ever written to stdout.
    let written = writeln!(stdout, "{}", answer.body).and_then(|_| stdout.flush());
    if written.is_err() || !answer.is_ok() {
        if let Some(message) = answer.body["error"].as_str() {
            tracing::warn!(error = message, "request failed");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
