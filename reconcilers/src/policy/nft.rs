//! Pure: a plan → one nft JSON document (`nft -j -f -` applies it as one
//! atomic transaction: packets see the table before or after, never in
//! between).
//!
//! Built with the nftables crate's schema types, except for verdict maps:
//! the crate's `Map` cannot say `map: "verdict"` (nftables-rs issue #237),
//! so creating and deleting a map are written with the two small structs
//! below. Map *entries* use the crate's `Element` and `Verdict` types.

use super::plan::PolicyAction;
use super::ruleset::*;
use nftables::expr::{Expression, NamedExpression, Verdict};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Rule, Set, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::JumpTarget;
use nftables::types::NfFamily;
use serde::Serialize;
use serde_json::{json, Value};
use std::borrow::Cow;

/// `{"map": {...}}` for `add`: `type ifname : verdict`.
#[derive(Serialize)]
struct MapDecl<'a> {
    family: NfFamily,
    table: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    key_type: &'static str,
    map: &'static str,
}

/// `{"set": {...}}` or `{"map": {...}}` for `delete`: only the name counts.
#[derive(Serialize)]
struct ObjRef<'a> {
    family: NfFamily,
    table: &'a str,
    name: &'a str,
}

fn obj_ref(name: &str) -> ObjRef<'_> {
    ObjRef {
        family: FAMILY,
        table: TABLE,
        name,
    }
}

fn cmd(c: NfCmd<'_>) -> Value {
    serde_json::to_value(NfObject::CmdObject(c)).expect("nft commands always serialise")
}

fn table() -> Table<'static> {
    Table {
        family: FAMILY,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn chain(name: &str, base: Option<BaseHook>) -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        newname: None,
        handle: None,
        _type: base.map(|b| b.chain_type),
        hook: base.map(|b| b.hook),
        prio: base.map(|b| b.prio),
        dev: None,
        policy: base.map(|b| b.policy),
    }
}

fn set_type(kind: SetKind) -> SetTypeValue<'static> {
    match kind {
        SetKind::Ipv4 => SetTypeValue::Single(SetType::Ipv4Addr),
        SetKind::Ipv6 => SetTypeValue::Single(SetType::Ipv6Addr),
        SetKind::IfnameIpv4 => {
            SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ifname, SetType::Ipv4Addr]))
        }
        SetKind::IfnameIpv6 => {
            SetTypeValue::Concatenated(Cow::Owned(vec![SetType::Ifname, SetType::Ipv6Addr]))
        }
        SetKind::Ifname => SetTypeValue::Single(SetType::Ifname),
        SetKind::Unsupported => unreachable!("never planned: only observed"),
    }
}

fn s(text: String) -> Expression<'static> {
    Expression::String(Cow::Owned(text))
}

/// The nft expression of a set element.
pub(crate) fn elem_expr(e: &SetElem) -> Expression<'static> {
    match e {
        SetElem::V4(a) => s(a.to_string()),
        SetElem::V6(a) => s(a.to_string()),
        SetElem::IfV4(i, a) => Expression::Named(NamedExpression::Concat(vec![
            s(i.to_string()),
            s(a.to_string()),
        ])),
        SetElem::IfV6(i, a) => Expression::Named(NamedExpression::Concat(vec![
            s(i.to_string()),
            s(a.to_string()),
        ])),
        SetElem::If(i) => s(i.to_string()),
    }
}

fn element(set: &str, elem: Vec<Expression<'static>>) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: FAMILY,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(set.to_string()),
        elem: Cow::Owned(elem),
    })
}

fn rules(name: &str, rules: &[RuleModel], out: &mut Vec<Value>) {
    for r in rules {
        out.push(cmd(NfCmd::Add(NfListObject::Rule(Rule {
            family: FAMILY,
            table: Cow::Borrowed(TABLE),
            chain: Cow::Owned(name.to_string()),
            expr: Cow::Owned(r.expr.clone()),
            handle: None,
            index: None,
            comment: Some(Cow::Owned(r.comment.clone())),
        }))));
    }
}

/// The commands of `actions`, in order, as one `{"nftables": [...]}`
/// document.
pub fn to_nft(actions: &[PolicyAction]) -> Value {
    use PolicyAction::*;
    let mut out: Vec<Value> = Vec::new();
    for a in actions {
        match a {
            DeleteTable => out.push(cmd(NfCmd::Delete(NfListObject::Table(table())))),
            CreateTable => out.push(cmd(NfCmd::Add(NfListObject::Table(table())))),
            CreateSet { name, kind } => {
                out.push(cmd(NfCmd::Add(NfListObject::Set(Box::new(Set {
                    family: FAMILY,
                    table: Cow::Borrowed(TABLE),
                    name: Cow::Owned(name.clone()),
                    handle: None,
                    set_type: set_type(*kind),
                    policy: None,
                    flags: None,
                    elem: None,
                    timeout: None,
                    gc_interval: None,
                    size: None,
                    comment: None,
                })))))
            }
            CreateMap { name } => {
                let decl = MapDecl {
                    family: FAMILY,
                    table: TABLE,
                    name,
                    key_type: "ifname",
                    map: "verdict",
                };
                out.push(json!({"add": {"map": decl}}));
            }
            CreateChain { name, base } => {
                out.push(cmd(NfCmd::Add(NfListObject::Chain(chain(name, *base)))))
            }
            DeleteMapEntries { map, keys } => out.push(cmd(NfCmd::Delete(element(
                map,
                keys.iter().map(|k| s(k.clone())).collect(),
            )))),
            DeleteElements { set, elements } => out.push(cmd(NfCmd::Delete(element(
                set,
                elements.iter().map(elem_expr).collect(),
            )))),
            AddElements { set, elements } => out.push(cmd(NfCmd::Add(element(
                set,
                elements.iter().map(elem_expr).collect(),
            )))),
            FillChain { name, rules: r } => rules(name, r, &mut out),
            ReplaceChain { name, rules: r } => {
                out.push(cmd(NfCmd::Flush(FlushObject::Chain(chain(name, None)))));
                rules(name, r, &mut out);
            }
            AddMapEntries { map, entries } => {
                let elem = entries
                    .iter()
                    .map(|(k, target)| {
                        Expression::List(vec![
                            s(k.clone()),
                            Expression::Verdict(Verdict::Goto(JumpTarget {
                                target: Cow::Owned(target.clone()),
                            })),
                        ])
                    })
                    .collect();
                out.push(cmd(NfCmd::Add(element(map, elem))));
            }
            DeleteChains { names } => {
                for n in names {
                    out.push(cmd(NfCmd::Flush(FlushObject::Chain(chain(n, None)))));
                }
                for n in names {
                    out.push(cmd(NfCmd::Delete(NfListObject::Chain(chain(n, None)))));
                }
            }
            DeleteSet { name } => out.push(json!({"delete": {"set": obj_ref(name)}})),
            DeleteMap { name } => out.push(json!({"delete": {"map": obj_ref(name)}})),
        }
    }
    json!({ "nftables": out })
}

/// The document that deletes our table.
pub fn delete_table() -> Value {
    to_nft(&[PolicyAction::DeleteTable])
}
