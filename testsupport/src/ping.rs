//! Real packets: `ping -c1 -W1`, from a namespace or a container.

use crate::cmd::run;
use crate::container::Container;
use crate::netns::Netns;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

/// Somewhere a command can run: a named namespace or a container.
pub trait Exec {
    /// A command that runs `program` there.
    fn command(&self, program: &str) -> Command;
}

impl Exec for Netns {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), program]);
        c
    }
}

impl Exec for Container {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path()))
            .arg("--")
            .arg(program);
        c
    }
}

/// One echo request from `from` to `to` (`ping -c1 -W1`); true when a
/// reply came back. Bounded: the command itself is killed after 5 s.
pub fn ping(from: &impl Exec, to: IpAddr) -> bool {
    ping_args(from, &[], to)
}

/// Like [`ping`], with the source address forced (`ping -I <source>`).
pub fn ping_from(from: &impl Exec, source: IpAddr, to: IpAddr) -> bool {
    ping_args(from, &["-I", &source.to_string()], to)
}

fn ping_args(from: &impl Exec, extra: &[&str], to: IpAddr) -> bool {
    let mut cmd = from.command("ping");
    cmd.args(["-n", "-q", "-c1", "-W1"])
        .args(extra)
        .arg(to.to_string());
    matches!(run(&mut cmd, Duration::from_secs(5)), Ok(out) if out.status.success())
}
