//! Parse a net-modules request into a typed, checked value, with the exact
//! messages and order of PROTOCOL.md. Code after this sees only checked
//! requests. Pure: no I/O.

use super::labels::{parse_address_list_label, Labels};
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most addresses of one family a request may name or ask for; keeps the
/// answer far below net-modules' 40 KiB read limit.
pub const MAX_ADDRESSES: u32 = 256;
/// Longest container id, uid or host name accepted.
pub const MAX_ID_LEN: usize = 255;
/// Longest netgroup name accepted.
pub const MAX_NETGROUP_LEN: usize = 64;
/// Most netgroups one container may join.
pub const MAX_NETGROUPS: usize = 64;
/// How much of an offending input an error message repeats.
const ECHO_LEN: usize = 64;

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Pick addresses (and reserve those the `ipv4_addrs` label names).
    Allocate(Allocate),
    /// Reserve exact addresses.
    Reserve(Reserve),
    /// Release addresses.
    Release(Release),
    /// Configure a container's networking.
    Isolate(Isolate),
    /// Remove a container's networking.
    Cleanup(Cleanup),
}

impl Request {
    /// True when carrying the request out twice has the effect of once
    /// (isolate, cleanup, release: intent and deletes are idempotent), so
    /// it may be tried again when it is unknown whether it was carried out.
    /// Not allocate (it would pick more addresses) nor reserve.
    pub fn repeatable(&self) -> bool {
        matches!(
            self,
            Request::Isolate(_) | Request::Cleanup(_) | Request::Release(_)
        )
    }

    /// True for the requests that change IPAM only (allocate, reserve,
    /// release).
    pub fn is_ipam(&self) -> bool {
        matches!(
            self,
            Request::Allocate(_) | Request::Reserve(_) | Request::Release(_)
        )
    }
}

/// Arguments of `allocate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate {
    /// The agent's host name.
    pub hostname: String,
    /// The handle the addresses are held under.
    pub uid: String,
    /// IPv4 addresses to pick (the label's reserved ones already subtracted).
    pub num_ipv4: u32,
    /// IPv6 addresses to pick.
    pub num_ipv6: u32,
    /// Exact IPv4 addresses asked for by the `ipv4_addrs` label.
    pub label_ipv4: Vec<IpAddr>,
    /// The task's labels.
    pub labels: Labels,
}

/// Arguments of `reserve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserve {
    /// The agent's host name.
    pub hostname: String,
    /// The handle the addresses are held under.
    pub uid: String,
    /// The addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// The task's labels.
    pub labels: Labels,
}

/// Arguments of `release`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Release everything held under this uid.
    Uid(String),
    /// Release these addresses, whoever holds them.
    Ips(Vec<IpAddr>),
}

/// Arguments of `isolate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolate {
    /// The agent's host name.
    pub hostname: String,
    /// The Mesos container id.
    pub container_id: String,
    /// A process inside the container's network namespace.
    pub pid: u32,
    /// The container's IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// The container's IPv6 addresses.
    pub ipv6: Vec<Ipv6Addr>,
    /// Netgroups, in order, without duplicates (`public` included as given).
    pub netgroups: Vec<String>,
    /// The task's labels.
    pub labels: Labels,
}

/// Arguments of `cleanup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    /// The agent's host name.
    pub hostname: String,
    /// The Mesos container id.
    pub container_id: String,
}

/// A request that failed validation; the message is the protocol's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(message: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(message.into()))
}

/// Shorten outside text before repeating it in a message.
pub fn echo(text: &str) -> String {
    if text.chars().count() <= ECHO_LEN {
        return text.to_string();
    }
    let head: String = text.chars().take(ECHO_LEN).collect();
    format!("{head}…")
}

fn echo_value(value: &Value) -> String {
    match value {
        Value::String(s) => echo(s),
        other => echo(&other.to_string()),
    }
}

/// Parse raw stdin bytes into a checked request.
pub fn parse(input: &[u8]) -> Result<Request, Invalid> {
    let value: Value = serde_json::from_slice(input).map_err(|e| Invalid(e.to_string()))?;
    parse_value(&value)
}

/// Parse a JSON value into a checked request.
pub fn parse_value(value: &Value) -> Result<Request, Invalid> {
    let Some(root) = value.as_object() else {
        return invalid("Missing command");
    };
    let command = match root.get("command") {
        None | Some(Value::Null) => return invalid("Missing command"),
        Some(Value::String(c)) => c.as_str(),
        Some(other) => return invalid(format!("Unknown command: {}", echo_value(other))),
    };
    let args = match root.get("args") {
        None | Some(Value::Null) => return invalid("Missing args"),
        Some(Value::Object(args)) => Args(args),
        Some(_) => return invalid("args must be an object"),
    };
    match command {
        "allocate" => parse_allocate(args).map(Request::Allocate),
        "reserve" => parse_reserve(args).map(Request::Reserve),
        "release" => parse_release(args).map(Request::Release),
        "isolate" => parse_isolate(args).map(Request::Isolate),
        "cleanup" => parse_cleanup(args).map(Request::Cleanup),
        other => invalid(format!("Unknown command: {}", echo(other))),
    }
}

/// The `args` object with typed accessors that produce protocol messages.
#[derive(Clone, Copy)]
struct Args<'a>(&'a Map<String, Value>);

impl<'a> Args<'a> {
    fn present(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// A required identifier: a non-empty string without control characters.
    fn id(&self, key: &str) -> Result<String, Invalid> {
        let value = match self.present(key) {
            None => return invalid(format!("Missing {key}")),
            Some(Value::String(s)) if s.is_empty() => return invalid(format!("Missing {key}")),
            Some(Value::String(s)) => s,
            Some(_) => return invalid(format!("{key} must be a string")),
        };
        if value.chars().count() > MAX_ID_LEN {
            return invalid(format!(
                "{key} is too long (at most {MAX_ID_LEN} characters)"
            ));
        }
        if value.chars().any(char::is_control) {
            return invalid(format!("{key} must not contain control characters"));
        }
        Ok(value.clone())
    }

    /// A required non-negative count; integers and numeric strings.
    fn count(&self, key: &str) -> Result<u32, Invalid> {
        let value = self
            .present(key)
            .ok_or_else(|| Invalid(format!("Missing {key}")))?;
        let number = match value {
            Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)),
            Value::String(s) => s.parse::<i64>().ok(),
            _ => None,
        };
        let Some(number) = number else {
            return invalid(format!("{key} must be an integer"));
        };
        if number < 0 {
            return invalid(format!("{key} must not be negative"));
        }
        if number > i64::from(MAX_ADDRESSES) {
            return invalid(format!("{key} must be at most {MAX_ADDRESSES}"));
        }
        Ok(number as u32)
    }

    fn pid(&self) -> Result<u32, Invalid> {
        let value = self
            .present("pid")
            .ok_or_else(|| Invalid("Missing pid".into()))?;
        let pid = match value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse::<i64>().ok(),
            _ => None,
        };
        match pid {
            Some(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok(pid as u32),
            _ => invalid("pid must be a positive integer"),
        }
    }

    /// An optional list of addresses of one family.
    fn addresses(&self, key: &str, v4: bool) -> Result<Vec<IpAddr>, Invalid> {
        let Some(value) = self.present(key) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return invalid(format!("{key} must be a list of IP addresses"));
        };
        if items.len() > MAX_ADDRESSES as usize {
            return invalid(format!("{key} lists more than {MAX_ADDRESSES} addresses"));
        }
        let texts = items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.as_str()),
                other => invalid(format!(
                    "IP address could not be parsed: {}",
                    echo_value(other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        parse_family(&texts, v4)
    }

    /// The optional `netgroups` list, checked and de-duplicated.
    fn netgroups(&self) -> Result<Vec<String>, Invalid> {
        match self.present("netgroups") {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => netgroups(items),
            Some(_) => invalid("Must provide list of netgroups."),
        }
    }

    fn labels(&self) -> Result<Labels, Invalid> {
        Labels::from_json(self.present("labels"))
    }
}

/// Parse address texts that must all be of one family, de-duplicated.
pub fn parse_family(texts: &[&str], v4: bool) -> Result<Vec<IpAddr>, Invalid> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(texts.len());
    for text in texts {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| Invalid(format!("IP address could not be parsed: {}", echo(text))))?;
        match (v4, addr) {
            (true, IpAddr::V6(_)) => {
                return invalid("IPv6 address must not be placed in IPv4 address field.")
            }
            (false, IpAddr::V4(_)) => {
                return invalid("IPv4 address must not be placed in IPv6 address field.")
            }
            _ => {}
        }
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

fn parse_allocate(args: Args<'_>) -> Result<Allocate, Invalid> {
    let uid = args.id("uid")?;
    let hostname = args.id("hostname")?;
    let num_ipv4 = args.count("num_ipv4")?;
    let num_ipv6 = args.count("num_ipv6")?;
    args.netgroups()?;
    let labels = args.labels()?;
    let label_ipv4 = match labels.get("ipv4_addrs") {
        Some(text) => parse_address_list_label(text)?,
        None => Vec::new(),
    };
    let reserved = label_ipv4.len() as u32;
    if reserved > num_ipv4 {
        return invalid(format!(
            "The ipv4_addrs label names {reserved} addresses but num_ipv4 is {num_ipv4}."
        ));
    }
    Ok(Allocate {
        hostname,
        uid,
        num_ipv4: num_ipv4 - reserved,
        num_ipv6,
        label_ipv4,
        labels,
    })
}

fn parse_reserve(args: Args<'_>) -> Result<Reserve, Invalid> {
    let uid = args.id("uid")?;
    let hostname = args.id("hostname")?;
    let mut addresses = args.addresses("ipv4_addrs", true)?;
    addresses.extend(args.addresses("ipv6_addrs", false)?);
    if addresses.is_empty() {
        return invalid("Must provide at least one IPv4 or IPv6 address.");
    }
    args.netgroups()?;
    let labels = args.labels()?;
    Ok(Reserve {
        hostname,
        uid,
        addresses,
        labels,
    })
}

fn parse_release(args: Args<'_>) -> Result<Release, Invalid> {
    match (args.present("uid"), args.present("ips")) {
        (None, None) => invalid("Must supply either uid or ips."),
        (Some(_), Some(_)) => invalid("Supply either uid or ips, not both."),
        (Some(Value::String(_)), None) => Ok(Release::Uid(args.id("uid")?)),
        (Some(_), None) => invalid("uid must be a string"),
        (None, Some(Value::Array(items))) => {
            if items.len() > 2 * MAX_ADDRESSES as usize {
                return invalid(format!(
                    "ips lists more than {} addresses",
                    2 * MAX_ADDRESSES
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let addr = item
                    .as_str()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .ok_or_else(|| {
                        Invalid(format!(
                            "IP address could not be parsed: {}",
                            echo_value(item)
                        ))
                    })?;
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
            Ok(Release::Ips(out))
        }
        (None, Some(_)) => invalid("ips must be a list of IP addresses"),
    }
}

fn parse_isolate(args: Args<'_>) -> Result<Isolate, Invalid> {
    let container_id = args.id("container_id")?;
    let hostname = args.id("hostname")?;
    let pid = args.pid()?;
    let ipv4 = args.addresses("ipv4_addrs", true)?;
    let ipv6 = args.addresses("ipv6_addrs", false)?;
    if ipv4.is_empty() && ipv6.is_empty() {
        return invalid("Must provide at least one IPv4 or IPv6 address.");
    }
    let netgroups = args.netgroups()?;
    let labels = args.labels()?;
    Ok(Isolate {
        hostname,
        container_id,
        pid,
        ipv4: ipv4
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect(),
        ipv6: ipv6
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            })
            .collect(),
        netgroups,
        labels,
    })
}

fn netgroups(items: &[Value]) -> Result<Vec<String>, Invalid> {
    if items.len() > MAX_NETGROUPS {
        return invalid(format!(
            "A container may join at most {MAX_NETGROUPS} netgroups."
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let Value::String(name) = item else {
            return invalid("Must provide list of netgroups.");
        };
        let valid = !name.is_empty()
            && name.len() <= MAX_NETGROUP_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return invalid(format!(
                "Invalid netgroup name '{}': use 1 to {MAX_NETGROUP_LEN} letters, digits, '.', '_' or '-'.",
                echo(name)
            ));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

fn parse_cleanup(args: Args<'_>) -> Result<Cleanup, Invalid> {
    let container_id = args.id("container_id")?;
    let hostname = args.id("hostname")?;
    Ok(Cleanup {
        hostname,
        container_id,
    })
}
