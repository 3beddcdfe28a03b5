//! Configuration: a YAML file (`/etc/calico-mesos/config.yaml`, `--config`,
//! or `CALICO_MESOS_CONFIG`), every key overridable by an environment
//! variable `CALICO_MESOS_<KEY>`. Unknown keys and bad values are errors
//! that name the key. This module only parses; it opens nothing.
//!
//! The etcd settings also honour the variables Calico users know: the
//! datastore is `CALICO_MESOS_DATASTORE`, else the file's `datastore`, else
//! `ETCD_ENDPOINTS`, else the legacy `ETCD_AUTHORITY`, else the SQLite
//! default; each `etcd_*` key is `CALICO_MESOS_ETCD_*`, else the file,
//! else `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE`, `ETCD_KEY_FILE`,
//! `ETCD_USERNAME`, `ETCD_PASSWORD`.

use crate::store::{Datastore, EtcdOptions, Secret, StoreOptions, DEFAULT_ETCD_PREFIX};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/calico-mesos/config.yaml";
/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "CALICO_MESOS_CONFIG";
/// Prefix of the per-key environment overrides.
pub const ENV_PREFIX: &str = "CALICO_MESOS_";

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Datastore URL: `sqlite:///path/to/store.db`, `etcd://host:2379[,…]`
    /// or `etcds://host:2379[,…]` (TLS).
    pub datastore: String,
    /// etcd settings (certificates, user, key prefix).
    pub etcd: EtcdOptions,
    /// This node's name (default: the host name).
    pub nodename: String,
    /// Directory for sockets and locks.
    pub run_dir: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    pub log_level: tracing::Level,
    /// Also append logs to this file.
    pub log_file: Option<PathBuf>,
    /// How long a request waits for the datastore before failing.
    pub store_timeout: Duration,
    /// How long isolate and cleanup wait for the dataplane before failing.
    pub isolate_timeout: Duration,
    /// How often the daemon re-checks every endpoint and our kernel objects.
    pub resync_interval: Duration,
    /// How long an endpoint whose container is gone is kept before its
    /// interface is removed and its addresses are released.
    pub orphan_grace: Duration,
    /// How long after its last allocation a uid's addresses that no
    /// endpoint uses are released (an allocate whose isolate never came).
    pub leak_grace: Duration,
    /// This node's own addresses, which its host profile lets reach its
    /// containers; `None` = detect them (`policy::node_addresses`).
    pub node_addresses: Option<Vec<IpAddr>>,
    /// Whether netgroup policy is enforced (our nftables table) or not.
    pub policy: PolicyMode,
    /// Whether the daemon routes other nodes' blocks via their fabric
    /// addresses (`fabric_routes: on`, the default) or leaves routing
    /// between nodes to something else, e.g. BGP on an L3 fabric (`off`).
    pub fabric_routes: bool,
}

/// The `policy` key: `enforce` (the default) or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// Only containers that share a netgroup may talk (DESIGN.md, "Policy").
    Enforce,
    /// No policy: every container reaches every other; our nftables table
    /// is removed.
    Disabled,
}

/// The file's form: every key optional, nothing else allowed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    datastore: Option<String>,
    nodename: Option<String>,
    run_dir: Option<String>,
    log_level: Option<String>,
    log_file: Option<String>,
    store_timeout: Option<String>,
    isolate_timeout: Option<String>,
    resync_interval: Option<String>,
    orphan_grace: Option<String>,
    leak_grace: Option<String>,
    node_addresses: Option<AddressList>,
    policy: Option<String>,
    fabric_routes: Option<String>,
    etcd_ca_cert_file: Option<String>,
    etcd_cert_file: Option<String>,
    etcd_key_file: Option<String>,
    etcd_username: Option<String>,
    etcd_password: Option<String>,
    etcd_prefix: Option<String>,
}

/// `node_addresses` as written: a YAML list, or one string with the
/// addresses separated by commas (the environment variable's form).
#[derive(Debug)]
enum AddressList {
    List(Vec<String>),
    Text(String),
}

impl<'de> Deserialize<'de> for AddressList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AddressList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of IP addresses, or one string of comma-separated addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AddressList, E> {
                Ok(AddressList::Text(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AddressList, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(AddressList::List(items))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Errors of configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape (unknown keys included).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// An environment variable with our prefix names no key.
    #[error("unknown configuration variable {0}")]
    UnknownVariable(String),
    /// A value is not valid for its key.
    #[error("bad value for {key}: {message}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Load from the file `path` names (or the default path, which may be
    /// absent) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let explicit = path
            .map(Path::to_path_buf)
            .or_else(|| env.get(CONFIG_ENV).map(PathBuf::from));
        let text = match &explicit {
            Some(path) => Some(read(path)?),
            None => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
                Ok(text) => Some(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: DEFAULT_CONFIG_PATH.into(),
                        source,
                    })
                }
            },
        };
        let path = explicit.unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
        Config::from_parts(text.as_deref(), &path, &env)
    }

    /// Resolve from file text (if any) and an environment; pure.
    pub fn from_parts(
        text: Option<&str>,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut file: FileConfig = match text {
            Some(text) if !text.trim().is_empty() => {
                serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            _ => FileConfig::default(),
        };
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let slot = match key {
                "CONFIG" => continue,
                "DATASTORE" => &mut file.datastore,
                "NODENAME" => &mut file.nodename,
                "RUN_DIR" => &mut file.run_dir,
                "LOG_LEVEL" => &mut file.log_level,
                "LOG_FILE" => &mut file.log_file,
                "STORE_TIMEOUT" => &mut file.store_timeout,
                "ISOLATE_TIMEOUT" => &mut file.isolate_timeout,
                "RESYNC_INTERVAL" => &mut file.resync_interval,
                "ORPHAN_GRACE" => &mut file.orphan_grace,
                "LEAK_GRACE" => &mut file.leak_grace,
                "POLICY" => &mut file.policy,
                "FABRIC_ROUTES" => &mut file.fabric_routes,
                "ETCD_CA_CERT_FILE" => &mut file.etcd_ca_cert_file,
                "ETCD_CERT_FILE" => &mut file.etcd_cert_file,
                "ETCD_KEY_FILE" => &mut file.etcd_key_file,
                "ETCD_USERNAME" => &mut file.etcd_username,
                "ETCD_PASSWORD" => &mut file.etcd_password,
                "ETCD_PREFIX" => &mut file.etcd_prefix,
                "NODE_ADDRESSES" => {
                    // A list, not a string: comma-separated.
                    file.node_addresses = Some(AddressList::Text(value.clone()));
                    continue;
                }
                _ => return Err(ConfigError::UnknownVariable(name.clone())),
            };
            *slot = Some(value.clone());
        }
        // Calico's own variables come last.
        let calico = |name: &str| env.get(name).filter(|v| !v.trim().is_empty()).cloned();
        for (slot, name) in [
            (&mut file.etcd_ca_cert_file, "ETCD_CA_CERT_FILE"),
            (&mut file.etcd_cert_file, "ETCD_CERT_FILE"),
            (&mut file.etcd_key_file, "ETCD_KEY_FILE"),
            (&mut file.etcd_username, "ETCD_USERNAME"),
            (&mut file.etcd_password, "ETCD_PASSWORD"),
        ] {
            if slot.is_none() {
                *slot = calico(name);
            }
        }
        let datastore = match non_empty("datastore", file.datastore)? {
            Some(url) => url,
            None => match Datastore::from_etcd_env(
                env.get("ETCD_ENDPOINTS").map(String::as_str),
                env.get("ETCD_AUTHORITY").map(String::as_str),
            ) {
                Some(Ok(url)) => url,
                Some(Err((key, message))) => return Err(ConfigError::BadValue { key, message }),
                None => "sqlite:///var/lib/calico-mesos/store.db".into(),
            },
        };
        if let Err(e) = Datastore::parse(&datastore) {
            return Err(ConfigError::BadValue {
                key: "datastore",
                message: e.to_string(),
            });
        }
        let path =
            |key, v: Option<String>| Ok::<_, ConfigError>(non_empty(key, v)?.map(PathBuf::from));
        let etcd = EtcdOptions {
            ca_cert_file: path("etcd_ca_cert_file", file.etcd_ca_cert_file)?,
            cert_file: path("etcd_cert_file", file.etcd_cert_file)?,
            key_file: path("etcd_key_file", file.etcd_key_file)?,
            username: non_empty("etcd_username", file.etcd_username)?,
            password: non_empty("etcd_password", file.etcd_password)?.map(Secret),
            prefix: match non_empty("etcd_prefix", file.etcd_prefix)? {
                Some(p) if p.ends_with('/') => p,
                Some(p) => format!("{p}/"),
                None => DEFAULT_ETCD_PREFIX.into(),
            },
        };
        Ok(Config {
            datastore,
            etcd,
            nodename: match non_empty("nodename", file.nodename)? {
                Some(name) => name,
                None => host_name()?,
            },
            run_dir: non_empty("run_dir", file.run_dir)?
                .unwrap_or_else(|| "/run/calico-mesos".into())
                .into(),
            log_level: match file.log_level {
                Some(level) => parse_level(&level)?,
                None => tracing::Level::INFO,
            },
            log_file: non_empty("log_file", file.log_file)?.map(PathBuf::from),
            store_timeout: duration("store_timeout", file.store_timeout, 5)?,
            isolate_timeout: duration("isolate_timeout", file.isolate_timeout, 30)?,
            resync_interval: duration("resync_interval", file.resync_interval, 60)?,
            orphan_grace: duration("orphan_grace", file.orphan_grace, 60)?,
            leak_grace: duration("leak_grace", file.leak_grace, 600)?,
            node_addresses: file.node_addresses.map(node_addresses).transpose()?,
            policy: match file.policy.as_deref() {
                None | Some("enforce") => PolicyMode::Enforce,
                Some("disabled") => PolicyMode::Disabled,
                Some(other) => {
                    return Err(ConfigError::BadValue {
                        key: "policy",
                        message: format!("'{other}': use enforce or disabled"),
                    })
                }
            },
            fabric_routes: match file.fabric_routes.as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    return Err(ConfigError::BadValue {
                        key: "fabric_routes",
                        message: format!("'{other}': use on or off"),
                    })
                }
            },
        })
    }
}

impl Config {
    /// What [`crate::store::open`] needs from the configuration.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            datastore: self.datastore.clone(),
            timeout: self.store_timeout,
            etcd: self.etcd.clone(),
        }
    }
}

/// A duration key: its value parsed, or `default_secs` when unset; zero is
/// refused (a zero timeout or interval would make no sense).
fn duration(
    key: &'static str,
    value: Option<String>,
    default_secs: u64,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(Duration::from_secs(default_secs));
    };
    match parse_duration(&text) {
        Ok(d) if d.is_zero() => Err(ConfigError::BadValue {
            key,
            message: "must be greater than zero".into(),
        }),
        Ok(d) => Ok(d),
        Err(message) => Err(ConfigError::BadValue { key, message }),
    }
}

/// The `node_addresses` key: one or more distinct unicast addresses, each
/// written alone (no prefix length).
fn node_addresses(value: AddressList) -> Result<Vec<IpAddr>, ConfigError> {
    let bad = |message: String| ConfigError::BadValue {
        key: "node_addresses",
        message,
    };
    let items: Vec<String> = match value {
        AddressList::List(items) => items,
        AddressList::Text(text) if text.trim().is_empty() => vec![],
        AddressList::Text(text) => text.split(',').map(str::to_string).collect(),
    };
    if items.is_empty() {
        return Err(bad(
            "must list at least one address (leave the key out to detect the node's addresses)"
                .into(),
        ));
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(items.len());
    for item in items {
        let text = item.trim();
        if text.is_empty() {
            return Err(bad("has an empty entry".into()));
        }
        let addr: IpAddr = text.parse().map_err(|_| {
            if text.contains('/') {
                bad(format!(
                    "'{text}' is a network: write the node's address alone, without a prefix length"
                ))
            } else {
                bad(format!("'{text}' is not an IP address"))
            }
        })?;
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
            return Err(bad(format!(
                "'{text}' cannot be a node's address (unspecified, loopback or multicast)"
            )));
        }
        if out.contains(&addr) {
            return Err(bad(format!("'{text}' is listed twice")));
        }
        out.push(addr);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn non_empty(key: &'static str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(ConfigError::BadValue {
            key,
            message: "must not be empty".into(),
        }),
        other => Ok(other),
    }
}

fn parse_level(text: &str) -> Result<tracing::Level, ConfigError> {
    text.trim()
        .to_ascii_lowercase()
        .parse()
        .map_err(|_| ConfigError::BadValue {
            key: "log_level",
            message: format!("'{text}' is not one of error, warn, info, debug, trace"),
        })
}

/// The host name, as the kernel knows it.
fn host_name() -> Result<String, ConfigError> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or(ConfigError::BadValue {
            key: "nodename",
            message: "not set and the host name could not be read".into(),
        })
}

/// Parse a duration written like `2s`, `500ms`, `1m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{text}' has no unit (write e.g. 2s, 500ms, 1m)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' does not start with a whole number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "'{text}' has an unknown unit '{unit}' (ms, s, m or h)"
            ))
        }
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(Some(text), Path::new("/x/config.yaml"), &env)
    }

    #[test]
    fn defaults() {
        let c = resolve("", &[("CALICO_MESOS_NODENAME", "n1")]).unwrap();
        assert_eq!(c.datastore, "sqlite:///var/lib/calico-mesos/store.db");
        assert_eq!(c.run_dir, PathBuf::from("/run/calico-mesos"));
        assert_eq!(c.log_level, tracing::Level::INFO);
        assert_eq!(c.store_timeout, Duration::from_secs(5));
        assert_eq!(c.nodename, "n1");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = resolve(
            "datastore: sqlite:///a.db\nlog_level: debug\nstore_timeout: 500ms\nnodename: f\n",
            &[
                ("CALICO_MESOS_DATASTORE", "sqlite:///b.db"),
                ("PATH", "/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.datastore, "sqlite:///b.db");
        assert_eq!(c.log_level, tracing::Level::DEBUG);
        assert_eq!(c.store_timeout, Duration::from_millis(500));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = resolve("datastor: x\n", &[]).unwrap_err().to_string();
        assert!(err.contains("datastor"), "{err}");
        let err = resolve("", &[("CALICO_MESOS_FOO", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CALICO_MESOS_FOO"), "{err}");
        let err = resolve("log_level: loud\nnodename: n\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_level"), "{err}");
        let err = resolve("store_timeout: 5\nnodename: n\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store_timeout") && err.contains("no unit"),
            "{err}"
        );
        let err = resolve("run_dir: ''\nnodename: n\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("run_dir"), "{err}");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../deploy/config.yaml");
        let c = resolve(text, &[("CALICO_MESOS_NODENAME", "n")]).unwrap();
        assert_eq!(c.store_timeout, Duration::from_secs(5));
    }

    #[test]
    fn node_addresses_from_the_file_or_the_environment() {
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        let n = [("CALICO_MESOS_NODENAME", "n")];
        /// File text, environment, the addresses resolved.
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<Vec<IpAddr>>);
        let cases: Vec<Case> = vec![
            ("", vec![], None),
            (
                "node_addresses: [198.19.0.1, '2001:db8:f::1']\n",
                vec![],
                Some(ips(&["198.19.0.1", "2001:db8:f::1"])),
            ),
            (
                "node_addresses:\n  - 198.19.0.1\n",
                vec![],
                Some(ips(&["198.19.0.1"])),
            ),
            (
                "node_addresses: 198.19.0.1, 198.19.0.2\n",
                vec![],
                Some(ips(&["198.19.0.1", "198.19.0.2"])),
            ),
            (
                "node_addresses: [198.19.0.1]\n",
                vec![("CALICO_MESOS_NODE_ADDRESSES", " 198.19.0.9 , 2001:db8:f::9")],
                Some(ips(&["198.19.0.9", "2001:db8:f::9"])),
            ),
        ];
        for (text, env, want) in cases {
            let env: Vec<(&str, &str)> = n.iter().copied().chain(env).collect();
            let c = resolve(text, &env).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(c.node_addresses, want, "{text:?} {env:?}");
        }
    }

    #[test]
    fn policy_is_enforced_unless_disabled() {
        let env = |v: &str| {
            BTreeMap::from([
                ("CALICO_MESOS_NODENAME".to_string(), "n".to_string()),
                ("CALICO_MESOS_POLICY".to_string(), v.to_string()),
            ])
        };
        let base = BTreeMap::from([("CALICO_MESOS_NODENAME".to_string(), "n".to_string())]);
        let load = |text: Option<&str>, env: &BTreeMap<String, String>| {
            Config::from_parts(text, Path::new("/x"), env)
        };
        assert_eq!(load(None, &base).unwrap().policy, PolicyMode::Enforce);
        assert_eq!(
            load(Some("policy: disabled\n"), &base).unwrap().policy,
            PolicyMode::Disabled
        );
        assert_eq!(
            load(Some("policy: disabled\n"), &env("enforce"))
                .unwrap()
                .policy,
            PolicyMode::Enforce
        );
        let err = load(None, &env("off")).unwrap_err().to_string();
        assert!(err.contains("policy") && err.contains("'off'"), "{err}");
    }

    #[test]
    fn fabric_routes_are_on_unless_turned_off() {
        let base = BTreeMap::from([("CALICO_MESOS_NODENAME".to_string(), "n".to_string())]);
        let load = |text: &str| Config::from_parts(Some(text), Path::new("/x"), &base);
        assert!(load("").unwrap().fabric_routes);
        assert!(!load("fabric_routes: off\n").unwrap().fabric_routes);
        let err = load("fabric_routes: maybe\n").unwrap_err().to_string();
        assert!(
            err.contains("fabric_routes") && err.contains("'maybe'"),
            "{err}"
        );
    }

    #[test]
    fn bad_node_addresses_are_refused_with_the_reason() {
        let cases = [
            ("node_addresses: []\n", "at least one address"),
            ("node_addresses: ''\n", "at least one address"),
            ("node_addresses: [nope]\n", "'nope' is not an IP address"),
            ("node_addresses: 198.19.0.1,,198.19.0.2\n", "empty entry"),
            (
                "node_addresses: [198.19.0.1/24]\n",
                "without a prefix length",
            ),
            ("node_addresses: [0.0.0.0]\n", "cannot be a node's address"),
            ("node_addresses: ['::1']\n", "cannot be a node's address"),
            (
                "node_addresses: [224.0.0.1]\n",
                "cannot be a node's address",
            ),
            ("node_addresses: [198.19.0.1, 198.19.0.1]\n", "listed twice"),
        ];
        for (text, want) in cases {
            let err = resolve(text, &[("CALICO_MESOS_NODENAME", "n")])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("node_addresses") && err.contains(want),
                "{text:?}: {err}"
            );
        }
        let err = resolve(
            "",
            &[
                ("CALICO_MESOS_NODENAME", "n"),
                ("CALICO_MESOS_NODE_ADDRESSES", "198.19.0.1,example.org"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'example.org' is not an IP address"), "{err}");
    }

    #[test]
    fn the_datastore_comes_from_ours_then_the_file_then_calicos_variables() {
        let n = ("CALICO_MESOS_NODENAME", "n");
        let ds = |text: &str, env: &[(&str, &str)]| {
            let env: Vec<(&str, &str)> = std::iter::once(n).chain(env.iter().copied()).collect();
            resolve(text, &env).map(|c| c.datastore)
        };
        let endpoints = (
            "ETCD_ENDPOINTS",
            "http://198.19.0.1:2379,http://198.19.0.2:2379",
        );
        let authority = ("ETCD_AUTHORITY", "198.19.0.9:4001");
        assert_eq!(
            ds("", &[endpoints, authority]).unwrap(),
            "etcd://198.19.0.1:2379,198.19.0.2:2379"
        );
        assert_eq!(ds("", &[authority]).unwrap(), "etcd://198.19.0.9:4001");
        assert_eq!(
            ds("", &[("ETCD_ENDPOINTS", "https://[2001:db8:f::1]:2379")]).unwrap(),
            "etcds://[2001:db8:f::1]:2379"
        );
        assert_eq!(
            ds("datastore: etcds://e1\n", &[endpoints]).unwrap(),
            "etcds://e1"
        );
        assert_eq!(
            ds(
                "datastore: etcds://e1\n",
                &[endpoints, ("CALICO_MESOS_DATASTORE", "sqlite:///x.db")]
            )
            .unwrap(),
            "sqlite:///x.db"
        );
        assert_eq!(
            ds("", &[]).unwrap(),
            "sqlite:///var/lib/calico-mesos/store.db"
        );
        for (text, env, key) in [
            (
                "",
                vec![("ETCD_ENDPOINTS", "198.19.0.1:2379")],
                "ETCD_ENDPOINTS",
            ),
            (
                "",
                vec![("ETCD_ENDPOINTS", "http://a:1,https://b:2")],
                "ETCD_ENDPOINTS",
            ),
            ("", vec![("ETCD_AUTHORITY", "a:port")], "ETCD_AUTHORITY"),
            ("datastore: etcd://\n", vec![], "datastore"),
            ("datastore: mysql://x\n", vec![], "datastore"),
            ("datastore: etcd://a:99999\n", vec![], "datastore"),
        ] {
            let err = ds(text, &env).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} {env:?}: {err}");
        }
    }

    #[test]
    fn etcd_settings_from_ours_the_file_and_calicos_variables() {
        let c = resolve(
            "etcd_cert_file: /file/cert.pem\netcd_prefix: /other\n",
            &[
                ("CALICO_MESOS_NODENAME", "n"),
                ("CALICO_MESOS_ETCD_CA_CERT_FILE", "/ours/ca.pem"),
                ("ETCD_CA_CERT_FILE", "/calico/ca.pem"),
                ("ETCD_CERT_FILE", "/calico/cert.pem"),
                ("ETCD_KEY_FILE", "/calico/key.pem"),
                ("ETCD_USERNAME", "u"),
                ("ETCD_PASSWORD", "secret"),
            ],
        )
        .unwrap();
        assert_eq!(c.etcd.ca_cert_file, Some("/ours/ca.pem".into()));
        assert_eq!(c.etcd.cert_file, Some("/file/cert.pem".into()));
        assert_eq!(c.etcd.key_file, Some("/calico/key.pem".into()));
        assert_eq!(c.etcd.username.as_deref(), Some("u"));
        assert_eq!(c.etcd.password, Some(Secret("secret".into())));
        assert_eq!(c.etcd.prefix, "/other/");
        assert!(
            !format!("{c:?}").contains("secret"),
            "the password is never printed"
        );
        let c = resolve("", &[("CALICO_MESOS_NODENAME", "n")]).unwrap();
        assert_eq!(c.etcd.prefix, DEFAULT_ETCD_PREFIX);
        let err = resolve("etcd_prefix: ''\nnodename: n\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("etcd_prefix"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("2x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
