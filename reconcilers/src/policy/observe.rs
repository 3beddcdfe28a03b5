//! Reads our table back: the JSON of `nft -j list table inet calico-mesos`
//! → the [`Ruleset`] model, with the nftables crate's schema types.
//!
//! Lenient where leniency is safe: whatever cannot be read is recorded in a
//! form that never equals what we want (a rule with an "unreadable" comment,
//! a set of [`SetKind::Unsupported`], a map that is not well typed), so the
//! planner replaces it. Object kinds we never make (counters, quotas,
//! flowtables, ...) are ignored: no rule of ours refers to them.

use super::ruleset::*;
use nftables::expr::{Expression, NamedExpression, Verdict};
use nftables::schema::{Chain, Rule, Set, SetType, SetTypeValue};
use nftables::types::{NfChainPolicy, NfChainType};
use serde::Deserialize;
use serde_json::Value;
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
struct Listing {
    nftables: Vec<Value>,
}

/// A verdict map as nft lists it (the crate's `Map` cannot hold
/// `map: "verdict"`, nftables-rs issue #237).
#[derive(Deserialize)]
struct MapListing<'a> {
    table: String,
    name: String,
    #[serde(rename = "type")]
    key_type: SetTypeValue<'a>,
    map: Value,
    #[serde(default)]
    elem: Option<Vec<Expression<'a>>>,
}

fn text(e: &Expression<'_>) -> Option<String> {
    match e {
        Expression::String(s) => Some(s.to_string()),
        Expression::Named(NamedExpression::Elem(el)) => text(&el.val),
        _ => None,
    }
}

fn parse_elem(kind: SetKind, e: &Expression<'_>) -> Option<SetElem> {
    let e = match e {
        Expression::Named(NamedExpression::Elem(el)) => &*el.val,
        e => e,
    };
    match (kind, e) {
        (SetKind::Ipv4 | SetKind::Ipv6, Expression::String(s)) => match s.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) if kind == SetKind::Ipv4 => Some(SetElem::V4(a)),
            IpAddr::V6(a) if kind == SetKind::Ipv6 => Some(SetElem::V6(a)),
            _ => None,
        },
        (
            SetKind::IfnameIpv4 | SetKind::IfnameIpv6,
            Expression::Named(NamedExpression::Concat(parts)),
        ) => {
            let [ifname, addr] = parts.as_slice() else {
                return None;
            };
            let ifname = text(ifname)?;
            match text(addr)?.parse::<IpAddr>().ok()? {
                IpAddr::V4(a) if kind == SetKind::IfnameIpv4 => Some(SetElem::IfV4(ifname, a)),
                IpAddr::V6(a) if kind == SetKind::IfnameIpv6 => Some(SetElem::IfV6(ifname, a)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn set_kind(t: &SetTypeValue<'_>) -> SetKind {
    match t {
        SetTypeValue::Single(SetType::Ipv4Addr) => SetKind::Ipv4,
        SetTypeValue::Single(SetType::Ipv6Addr) => SetKind::Ipv6,
        SetTypeValue::Concatenated(parts) => match parts.as_ref() {
            [SetType::Ifname, SetType::Ipv4Addr] => SetKind::IfnameIpv4,
            [SetType::Ifname, SetType::Ipv6Addr] => SetKind::IfnameIpv6,
            _ => SetKind::Unsupported,
        },
        _ => SetKind::Unsupported,
    }
}

fn read_set(raw: Value) -> Option<(String, SetModel)> {
    let name = raw.get("name")?.as_str()?.to_string();
    if raw.get("table").and_then(Value::as_str) != Some(TABLE) {
        return None;
    }
    let unsupported = SetModel::new(SetKind::Unsupported);
    let Ok(set) = serde_json::from_value::<Set>(raw) else {
        return Some((name, unsupported));
    };
    let kind = set_kind(&set.set_type);
    if kind == SetKind::Unsupported || set.flags.as_ref().is_some_and(|f| !f.is_empty()) {
        return Some((name, unsupported));
    }
    let mut model = SetModel::new(kind);
    for e in set.elem.as_deref().unwrap_or_default() {
        match parse_elem(kind, e) {
            Some(el) => {
                model.elements.insert(el);
            }
            None => return Some((name, unsupported)),
        }
    }
    Some((name, model))
}

fn verdict_text(v: &Verdict<'_>) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

fn read_map(raw: Value) -> Option<(String, MapModel)> {
    let name = raw.get("name")?.as_str()?.to_string();
    if raw.get("table").and_then(Value::as_str) != Some(TABLE) {
        return None;
    }
    let broken = MapModel {
        well_typed: false,
        entries: Default::default(),
    };
    let Ok(map) = serde_json::from_value::<MapListing>(raw) else {
        return Some((name, broken));
    };
    debug_assert_eq!(map.table, TABLE);
    let typed = matches!(map.key_type, SetTypeValue::Single(SetType::Ifname))
        && map.map.as_str() == Some("verdict");
    if !typed {
        return Some((map.name, broken));
    }
    let mut model = MapModel::default();
    for e in map.elem.unwrap_or_default() {
        let Expression::List(pair) = e else {
            return Some((map.name, broken));
        };
        let [key, Expression::Verdict(v)] = pair.as_slice() else {
            return Some((map.name, broken));
        };
        let Some(key) = text(key) else {
            return Some((map.name, broken));
        };
        let target = match v {
            Verdict::Goto(t) => MapTarget::Goto(t.target.to_string()),
            other => MapTarget::Other(verdict_text(other)),
        };
        model.entries.insert(key, target);
    }
    Some((map.name, model))
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

/// The comment given to a rule nft listed in a form we cannot read: never
/// one of ours, so its chain is replaced.
const UNREADABLE: &str = "(unreadable rule)";

fn read_rule(raw: Value) -> Option<(String, RuleModel)> {
    if raw.get("table").and_then(Value::as_str) != Some(TABLE) {
        return None;
    }
    let chain = raw.get("chain")?.as_str()?.to_string();
    let rule = match serde_json::from_value::<Rule>(raw) {
        Ok(r) => RuleModel {
            comment: r.comment.map(|c| c.to_string()).unwrap_or_default(),
            expr: r.expr.into_owned(),
        },
        Err(_) => RuleModel {
            comment: UNREADABLE.to_string(),
            expr: vec![],
        },
    };
    Some((chain, rule))
}

/// Reads the JSON listing of our table (`nft -j list table inet
/// calico-mesos`). Objects of other tables, if any, are skipped.
pub fn parse_listing(json: &str) -> Result<Ruleset, ObserveError> {
    let listing: Listing = serde_json::from_str(json)?;
    let mut rs = Ruleset::default();
    let mut rules: Vec<(String, RuleModel)> = Vec::new();
    for obj in listing.nftables {
        let Value::Object(map) = obj else { continue };
        for (kind, raw) in map {
            match kind.as_str() {
                "chain" => {
                    if let Some((name, c)) = read_chain(raw)? {
                        rs.chains.insert(name, c);
                    }
                }
                "set" => {
                    if let Some((name, s)) = read_set(raw) {
                        rs.sets.insert(name, s);
                    }
                }
                "map" => {
                    if let Some((name, m)) = read_map(raw) {
                        rs.maps.insert(name, m);
                    }
                }
                "rule" => rules.extend(read_rule(raw)),
                _ => {}
            }
        }
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
        assert_eq!(fwd.rules[0].expr.len(), 2);
        let out = &rs.chains["ep-out.cali123"];
        assert_eq!(out.base, None);
        assert_eq!(out.signature(), ["", UNREADABLE]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_listing("not json").is_err());
        assert!(parse_listing("{\"nftables\": [1, \"x\", {\"rule\": 5}]}").is_ok());
    }
}
