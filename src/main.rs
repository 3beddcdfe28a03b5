//! The `calico-mesos` binary: with no arguments it is the net-modules plugin
//! (one JSON request on stdin, one answer on stdout); otherwise an operator
//! command. Parsing and dispatch only: the logic lives in the library.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // net-modules runs the plugin with no arguments for every request:
    // skip building the whole command-line parser (every subcommand's
    // arguments) for it. `Cli::parse` of no arguments gives the same.
    if std::env::args_os().len() == 1 {
        return cli::plugin::run(None);
    }
    let args = cli::Cli::parse();
    match args.command {
        None => cli::plugin::run(args.config.as_deref()),
        Some(command) => cli::run(args.config.as_deref(), command),
    }
}
