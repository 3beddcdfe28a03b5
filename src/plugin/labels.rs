//! Task labels as net-modules sends them (a protobuf JSON list of
//! `{"key", "value"}`; a plain object is accepted too), and the
//! `ipv4_addrs` label whose value is a Python-style list literal.

use super::request::{echo, parse_family, Invalid};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The labels of a task: key → value (a missing value is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Labels(pub BTreeMap<String, String>);

const SHAPE: &str =
    "labels must be a list of {\"key\": ..., \"value\": ...} objects or an object of strings";

impl Labels {
    /// Parse the `labels` argument (absent = no labels).
    pub fn from_json(value: Option<&Value>) -> Result<Labels, Invalid> {
        let mut labels = BTreeMap::new();
        match value {
            None => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let key = item.get("key").and_then(Value::as_str);
                    let value = match item.get("value") {
                        None | Some(Value::Null) => Some(""),
                        Some(v) => v.as_str(),
                    };
                    let (Some(key), Some(value)) = (key, value) else {
                        return Err(Invalid(SHAPE.into()));
                    };
                    labels.insert(key.to_string(), value.to_string());
                }
            }
            Some(Value::Object(map)) => {
                for (key, value) in map {
                    let value = match value {
                        Value::Null => "",
                        Value::String(s) => s.as_str(),
                        _ => return Err(Invalid(SHAPE.into())),
                    };
                    labels.insert(key.clone(), value.to_string());
                }
            }
            Some(_) => return Err(Invalid(SHAPE.into())),
        }
        Ok(Labels(labels))
    }

    /// The value of one label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

const MALFORMED: &str = "Calico detected a malformed ipv4_addrs field. Ensure you've specified a string representation of a list of strings.";

/// Parse `"['198.18.3.1', \"198.18.3.2\"]"` into IPv4 addresses.
pub fn parse_address_list_label(text: &str) -> Result<Vec<IpAddr>, Invalid> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| Invalid(MALFORMED.into()))?;
    let mut items = Vec::new();
    if !inner.trim().is_empty() {
        for raw in inner.split(',') {
            let raw = raw.trim();
            let quoted = ['\'', '"'].iter().find_map(|q| {
                raw.strip_prefix(*q)
                    .and_then(|r| r.strip_suffix(*q))
                    .filter(|r| !r.contains(*q))
            });
            match quoted {
                Some(item) => items.push(item),
                None => return Err(Invalid(MALFORMED.into())),
            }
        }
    }
    parse_family(&items, true).map_err(|e| {
        if e.0.starts_with("IP address could not be parsed") || e.0.starts_with("IPv6") {
            e
        } else {
            Invalid(format!("{MALFORMED} ({})", echo(text)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn protobuf_list_and_plain_object() {
        let list = json!([{"key": "a", "value": "1"}, {"key": "b"}]);
        let l = Labels::from_json(Some(&list)).unwrap();
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some(""));
        let obj = json!({"a": "1"});
        assert_eq!(Labels::from_json(Some(&obj)).unwrap().get("a"), Some("1"));
        assert!(Labels::from_json(Some(&json!([{"value": "x"}]))).is_err());
        assert!(Labels::from_json(Some(&json!("x"))).is_err());
    }

    #[test]
    fn ipv4_addrs_label() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_address_list_label("['198.18.3.1', \"198.18.3.2\"]").unwrap(),
            vec![ip("198.18.3.1"), ip("198.18.3.2")]
        );
        assert!(parse_address_list_label("[]").unwrap().is_empty());
        for bad in ["198.18.3.1", "[198.18.3.1]", "['198.18.3.1'", "['a\"]"] {
            assert_eq!(
                parse_address_list_label(bad).unwrap_err().0,
                MALFORMED,
                "{bad}"
            );
        }
        assert_eq!(
            parse_address_list_label("['x']").unwrap_err().0,
            "IP address could not be parsed: x"
        );
    }
}
