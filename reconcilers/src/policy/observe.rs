//! Reads our table back: the JSON of `nft -j list table inet calico-mesos`
//! → the [`Ruleset`] model.
//!
//! Lenient where leniency is safe: whatever cannot be read is recorded in a
//! form that never equals what we want (a set of [`SetKind::Unsupported`],
//! a map that is not well typed, a rule without a comment), so the planner
//! replaces it. Object kinds we never make (counters, quotas, flowtables,
//! ...) are ignored: no rule of ours refers to them.
//!
//! Read in one pass over the text, without building a JSON tree and
//! without reading rule expressions at all: a rule is recognised by its
//! comment alone (see [`ruleset`](super::ruleset)), so an observed rule's
//! [`RuleModel::expr`] is left empty. Chains (few) go through the
//! nftables crate's schema types.

use super::ruleset::*;
use nftables::schema::{Chain, SetType, SetTypeValue};
use nftables::types::{NfChainPolicy, NfChainType};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

/// Why a listing could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Not the JSON document nft prints.
    #[error("not an nft JSON listing: {0}")]
    Json(#[from] serde_json::Error),
    /// A chain of our table could not be read.
    #[error("cannot read chain {name:?}: {source}")]
    Chain {
        /// Its name, when known.
        name: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Deserialize)]
struct Listing<'a> {
    #[serde(borrow)]
    nftables: Vec<IfObject<Item<'a>>>,
}

/// `Some` for a JSON object read as `T`, `None` for any other value
/// (skipped): nft prints objects, but a stray value must not fail the
/// listing.
struct IfObject<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for IfObject<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = IfObject<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| IfObject(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IfObject(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(IfObject(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(IfObject(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(IfObject(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(IfObject(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(IfObject(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(IfObject(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// One object of the listing: `{"<kind>": {...}}`. Other kinds are
/// skipped unread.
#[derive(Deserialize)]
struct Item<'a> {
    chain: Option<Value>,
    #[serde(borrow)]
    set: Option<IfObject<SetListing<'a>>>,
    #[serde(borrow)]
    map: Option<IfObject<MapListing<'a>>>,
    #[serde(borrow)]
    rule: Option<IfObject<RuleListing<'a>>>,
}

/// A named set as nft lists it (its type is read apart, so that a type we
/// never build does not fail the listing).
#[derive(Deserialize)]
struct SetListing<'a> {
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    name: Option<String>,
    #[serde(rename = "type")]
    key_type: Option<Value>,
    flags: Option<Value>,
    elem: Option<Vec<Elem>>,
}

/// A verdict map as nft lists it (the crate's `Map` cannot hold
/// `map: "verdict"`, nftables-rs issue #237).
#[derive(Deserialize)]
struct MapListing<'a> {
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    name: Option<String>,
    #[serde(rename = "type")]
    key_type: Option<Value>,
    map: Option<Value>,
    elem: Option<Vec<Elem>>,
}

/// A rule: where it is and its comment; its expressions are not read.
#[derive(Deserialize)]
struct RuleListing<'a> {
    #[serde(borrow)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow)]
    chain: Option<Cow<'a, str>>,
    #[serde(borrow)]
    comment: Option<Cow<'a, str>>,
}

/// A set or map element, read leniently: whatever we never write is
/// `Other`, which no element of ours equals.
#[derive(Debug, PartialEq)]
enum Elem {
    /// A string: an address or an interface name.
    Text(String),
    /// `{"concat": [...]}`.
    Concat(Vec<Elem>),
    /// `[...]`: a map entry is `[key, verdict]`.
    List(Vec<Elem>),
    /// `{"goto": {"target": ...}}`.
    Goto(String),
    /// Anything else; for an object, its key (a verdict's name).
    Other(String),
}

impl<'de> Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped {
            val: Elem,
        }
        #[derive(Deserialize)]
        struct Target {
            target: String,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Elem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a set or map element")
            }
            fn visit_str<E>(self, s: &str) -> Result<Elem, E> {
                Ok(Elem::Text(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(e) = seq.next_element()? {
                    v.push(e);
                }
                Ok(Elem::List(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Elem, A::Error> {
                let mut out = Elem::Other(String::new());
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    out = match &*key {
                        "concat" => Elem::Concat(map.next_value()?),
                        // An element with properties (timeout, ...).
                        "elem" => map.next_value::<Wrapped>()?.val,
                        "goto" => Elem::Goto(map.next_value::<Target>()?.target),
                        other => {
                            map.next_value::<IgnoredAny>()?;
                            Elem::Other(other.to_string())
                        }
                    };
                }
                Ok(out)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Elem, E> {
                Ok(Elem::Other(String::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Elem, E> {
                Ok(Elem::Other(String::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Elem, E> {
                Ok(Elem::Other(String::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Elem, E> {
                Ok(Elem::Other(String::new()))
            }
            fn visit_unit<E>(self) -> Result<Elem, E> {
                Ok(Elem::Other(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_elem(kind: SetKind, e: &Elem) -> Option<SetElem> {
    match (kind, e) {
        (SetKind::Ipv4 | SetKind::Ipv6, Elem::Text(s)) => match s.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) if kind == SetKind::Ipv4 => Some(SetElem::V4(a)),
            IpAddr::V6(a) if kind == SetKind::Ipv6 => Some(SetElem::V6(a)),
            _ => None,
        },
        (SetKind::Ifname, Elem::Text(s)) => Some(SetElem::If(s.as_str().into())),
        (SetKind::IfnameIpv4 | SetKind::IfnameIpv6, Elem::Concat(parts)) => {
            let [Elem::Text(ifname), Elem::Text(addr)] = parts.as_slice() else {
                return None;
            };
            match addr.parse::<IpAddr>().ok()? {
                IpAddr::V4(a) if kind == SetKind::IfnameIpv4 => {
                    Some(SetElem::IfV4(ifname.as_str().into(), a))
                }
                IpAddr::V6(a) if kind == SetKind::IfnameIpv6 => {
                    Some(SetElem::IfV6(ifname.as_str().into(), a))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn set_kind(t: &Value) -> SetKind {
    match SetTypeValue::deserialize(t) {
        Ok(SetTypeValue::Single(SetType::Ipv4Addr)) => SetKind::Ipv4,
        Ok(SetTypeValue::Single(SetType::Ipv6Addr)) => SetKind::Ipv6,
        Ok(SetTypeValue::Single(SetType::Ifname)) => SetKind::Ifname,
        Ok(SetTypeValue::Concatenated(parts)) => match parts.as_ref() {
            [SetType::Ifname, SetType::Ipv4Addr] => SetKind::IfnameIpv4,
            [SetType::Ifname, SetType::Ipv6Addr] => SetKind::IfnameIpv6,
            _ => SetKind::Unsupported,
        },
        _ => SetKind::Unsupported,
    }
}

fn read_set(set: SetListing<'_>) -> Option<(String, SetModel)> {
    let name = set.name?;
    if set.table.as_deref() != Some(TABLE) {
        return None;
    }
    let unsupported = SetModel::new(SetKind::Unsupported);
    let kind = set.key_type.as_ref().map_or(SetKind::Unsupported, set_kind);
    let flagged = match &set.flags {
        None => false,
        Some(Value::Array(f)) => !f.is_empty(),
        Some(_) => true,
    };
    if kind == SetKind::Unsupported || flagged {
        return Some((name, unsupported));
    }
    let mut elements = Vec::new();
    for e in set.elem.as_deref().unwrap_or_default() {
        match parse_elem(kind, e) {
            Some(el) => elements.push(el),
            None => return Some((name, unsupported)),
        }
    }
    let model = SetModel {
        kind,
        elements: elements.into_iter().collect(),
    };
    Some((name, model))
}

fn read_map(map: MapListing<'_>) -> Option<(String, MapModel)> {
    let name = map.name?;
    if map.table.as_deref() != Some(TABLE) {
        return None;
    }
    let broken = MapModel {
        well_typed: false,
        entries: Default::default(),
    };
    let typed = map.key_type.as_ref().and_then(Value::as_str) == Some("ifname")
        && map.map.as_ref().and_then(Value::as_str) == Some("verdict");
    if !typed {
        return Some((name, broken));
    }
    let mut entries = Vec::new();
    for e in map.elem.unwrap_or_default() {
        let Elem::List(pair) = e else {
            return Some((name, broken));
        };
        let Ok([key, verdict]) = <[Elem; 2]>::try_from(pair) else {
            return Some((name, broken));
        };
        let Elem::Text(key) = key else {
            return Some((name, broken));
        };
        let target = match verdict {
            Elem::Goto(t) => MapTarget::Goto(t.into()),
            Elem::Other(v) => MapTarget::Other(v),
            _ => return Some((name, broken)),
        };
        entries.push((key.into(), target));
    }
    let model = MapModel {
        well_typed: true,
        entries: entries.into_iter().collect(),
    };
    Some((name, model))
}

fn read_chain(raw: Value) -> Result<Option<(String, ChainModel)>, ObserveError> {
    let name = raw
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let chain: Chain =
        serde_json::from_value(raw).map_err(|source| ObserveError::Chain { name, source })?;
    if chain.table != TABLE {
        return Ok(None);
    }
    let base = chain.hook.map(|hook| BaseHook {
        hook,
        chain_type: chain._type.unwrap_or(NfChainType::Filter),
        prio: chain.prio.unwrap_or(0),
        policy: chain.policy.unwrap_or(NfChainPolicy::Accept),
    });
    Ok(Some((
        chain.name.to_string(),
        ChainModel {
            base,
            rules: vec![],
        },
    )))
}

fn read_rule(rule: RuleListing<'_>) -> Option<(String, RuleModel)> {
    if rule.table.as_deref() != Some(TABLE) {
        return None;
    }
    let rule = (
        rule.chain?.into_owned(),
        RuleModel {
            comment: rule.comment.map(Cow::into_owned).unwrap_or_default(),
            expr: vec![],
        },
    );
    Some(rule)
}

/// Reads the JSON listing of our table (`nft -j list table inet
/// calico-mesos`). Objects of other tables, if any, are skipped.
pub fn parse_listing(json: &str) -> Result<Ruleset, ObserveError> {
    let listing: Listing = serde_json::from_str(json)?;
    let mut rs = Ruleset::default();
    let mut rules: Vec<(String, RuleModel)> = Vec::new();
    for item in listing.nftables {
        let IfObject(Some(item)) = item else { continue };
        if let Some(raw) = item.chain {
            if let Some((name, c)) = read_chain(raw)? {
                rs.chains.insert(name, c);
            }
        }
        if let Some((name, s)) = item.set.and_then(|s| s.0).and_then(read_set) {
            rs.sets.insert(name, s);
        }
        if let Some((name, m)) = item.map.and_then(|m| m.0).and_then(read_map) {
            rs.maps.insert(name, m);
        }
        rules.extend(item.rule.and_then(|r| r.0).and_then(read_rule));
    }
    for (chain, rule) in rules {
        rs.chains.entry(chain).or_default().rules.push(rule);
    }
    Ok(rs)
}

/// True when nft's stderr says the table does not exist.
pub(crate) fn is_missing_table(stderr: &str) -> bool {
    stderr.contains("No such file or directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nft 1.0.6 printed for a small table (trimmed by hand).
    const LISTING: &str = r#"{"nftables": [
      {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
      {"table": {"family": "inet", "name": "calico-mesos", "handle": 1}},
      {"map": {"family": "inet", "name": "from-ep", "table": "calico-mesos", "type": "ifname", "handle": 1, "map": "verdict",
               "elem": [["cali123", {"goto": {"target": "ep-out.cali123"}}], ["cali9", {"accept": null}]]}},
      {"set": {"family": "inet", "name": "ep-src.v4", "table": "calico-mesos", "type": ["ifname", "ipv4_addr"], "handle": 2,
               "elem": [{"concat": ["cali123", "198.18.0.1"]}]}},
      {"set": {"family": "inet", "name": "ng.a-b_c.v6", "table": "calico-mesos", "type": "ipv6_addr", "handle": 3, "elem": ["2001:db8:1::1"]}},
      {"set": {"family": "inet", "name": "ports", "table": "calico-mesos", "type": "inet_service", "handle": 4, "elem": [22]}},
      {"chain": {"family": "inet", "table": "calico-mesos", "name": "forward", "handle": 4, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
      {"chain": {"family": "inet", "table": "calico-mesos", "name": "ep-out.cali123", "handle": 6}},
      {"rule": {"family": "inet", "table": "calico-mesos", "chain": "forward", "handle": 7, "comment": "cali* to from-endpoint 1234abcd",
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cali*"}}, {"jump": {"target": "from-endpoint"}}]}},
      {"rule": {"family": "inet", "table": "calico-mesos", "chain": "ep-out.cali123", "handle": 8,
                "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "198.19.0.1"}}, {"return": null}]}},
      {"rule": {"family": "inet", "table": "calico-mesos", "chain": "ep-out.cali123", "handle": 9,
                "expr": [{"some-future-statement": {"x": 1}}], "comment": "drop 00000000"}}
    ]}"#;

    #[test]
    fn reads_every_kind_of_object() {
        let rs = parse_listing(LISTING).unwrap();
        let m = &rs.maps["from-ep"];
        assert!(m.well_typed);
        assert_eq!(
            m.entries["cali123"],
            MapTarget::Goto("ep-out.cali123".into())
        );
        assert!(matches!(m.entries["cali9"], MapTarget::Other(_)));
        assert_eq!(
            rs.sets["ep-src.v4"].elements.iter().next(),
            Some(&SetElem::IfV4(
                "cali123".into(),
                "198.18.0.1".parse().unwrap()
            ))
        );
        assert_eq!(rs.sets["ng.a-b_c.v6"].kind, SetKind::Ipv6);
        assert_eq!(rs.sets["ports"].kind, SetKind::Unsupported);
        let fwd = &rs.chains["forward"];
        assert_eq!(
            fwd.base,
            Some(BaseHook::filter(nftables::types::NfHook::Forward))
        );
        assert_eq!(fwd.signature(), ["cali* to from-endpoint 1234abcd"]);
        // Rules are recognised by comment: expressions are not read, so
        // one nft lists in a form we do not know changes nothing.
        assert!(fwd.rules[0].expr.is_empty());
        let out = &rs.chains["ep-out.cali123"];
        assert_eq!(out.base, None);
        assert_eq!(out.signature(), ["", "drop 00000000"]);
    }

    #[test]
    fn elements_are_read_leniently() {
        let listing = |set: &str| format!(r#"{{"nftables": [{set}]}}"#);
        let one = |json: &str| {
            let rs = parse_listing(&listing(json)).unwrap();
            rs.sets.into_values().next().unwrap()
        };
        // An element with properties is read through its "elem" wrapper.
        let s = one(
            r#"{"set": {"family": "inet", "name": "s", "table": "calico-mesos", "type": "ipv4_addr",
                "elem": [{"elem": {"val": "198.18.0.1", "timeout": 5}}, "198.18.0.2"]}}"#,
        );
        assert_eq!(s.kind, SetKind::Ipv4);
        assert_eq!(s.elements.len(), 2);
        // A range, a prefix, a number: a set we would not make.
        for elem in [
            r#"{"range": ["198.18.0.1", "198.18.0.9"]}"#,
            r#"{"prefix": {"addr": "198.18.0.0", "len": 24}}"#,
            "7",
        ] {
            let s = one(&format!(
                r#"{{"set": {{"family": "inet", "name": "s", "table": "calico-mesos", "type": "ipv4_addr", "elem": [{elem}]}}}}"#
            ));
            assert_eq!(s.kind, SetKind::Unsupported, "{elem}");
        }
        // Flags (interval, timeout, ...): not ours either.
        let s = one(
            r#"{"set": {"family": "inet", "name": "s", "table": "calico-mesos", "type": "ipv4_addr", "flags": ["interval"]}}"#,
        );
        assert_eq!(s.kind, SetKind::Unsupported);
        // A map entry that jumps, or one that is not a pair.
        let rs = parse_listing(&listing(
            r#"{"map": {"family": "inet", "name": "m", "table": "calico-mesos", "type": "ifname", "map": "verdict",
                "elem": [["cali1", {"jump": {"target": "x"}}]]}},
               {"map": {"family": "inet", "name": "n", "table": "calico-mesos", "type": "ifname", "map": "verdict",
                "elem": [["cali1"]]}},
               {"map": {"family": "inet", "name": "o", "table": "calico-mesos", "type": "ipv4_addr", "map": "verdict"}},
               {"map": {"family": "inet", "name": "p", "table": "elsewhere", "type": "ifname", "map": "verdict"}}"#,
        ))
        .unwrap();
        assert_eq!(
            rs.maps["m"].entries["cali1"],
            MapTarget::Other("jump".into())
        );
        assert!(rs.maps["m"].well_typed);
        assert!(!rs.maps["n"].well_typed);
        assert!(!rs.maps["o"].well_typed);
        assert!(!rs.maps.contains_key("p"), "another table's map");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_listing("not json").is_err());
        assert!(parse_listing("{\"nftables\": [1, \"x\", {\"rule\": 5}]}").is_ok());
        assert!(parse_listing(r#"{"nftables": [[1], null, {"set": "x", "map": [2]}]}"#).is_ok());
        assert!(parse_listing(r#"{"nftables": [{"chain": {"name": 5}}]}"#).is_err());
    }
}
