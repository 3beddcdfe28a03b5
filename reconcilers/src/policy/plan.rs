//! Pure: (desired [`Ruleset`], observed table or none) → the ordered
//! [`PolicyAction`]s that make the table the desired one, all to be applied
//! in one nft transaction.
//!
//! Membership and address changes are element updates only, and so is an
//! endpoint whose profile list the node already has (its anti-spoofing
//! elements, its list set element, its netgroup members): chains and list
//! sets belong to profile lists, so a list's pair and set are created with
//! its first endpoint and deleted, after the dispatch rule that names
//! them, with its last. A chain is rewritten
//! only when its rules (their comments) differ; the table is
//! deleted and rebuilt (inside the same transaction, so traffic never sees
//! it missing) only when its structure is not ours: a base chain with
//! another hook, a set or map of another type under one of our names.
//!
//! Order, chosen so that every command is valid at its place in the
//! transaction: create table, sets, maps and chains; delete map entries
//! (they may point at chains deleted below); set elements out, then in;
//! fill new chains and replace changed ones (rules may name the new sets);
//! add map entries (their chains now exist); flush and delete stale chains;
//! delete stale sets and maps (no rule names them any more).

use super::ruleset::*;
use std::collections::BTreeMap;
use std::fmt;

/// One step of a plan. [`to_nft`](super::to_nft()) turns a plan into one
/// nft transaction; `Display` gives the short line operators read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// Delete our table: its structure is not ours (see the module doc).
    /// A full create follows in the same transaction.
    DeleteTable,
    /// Create the (empty) table.
    CreateTable,
    /// Create an empty named set.
    CreateSet {
        /// Its name.
        name: String,
        /// Its element type.
        kind: SetKind,
    },
    /// Create an empty verdict map `type ifname : verdict`.
    CreateMap {
        /// Its name.
        name: String,
    },
    /// Create an empty chain (a base chain when `base` is given).
    CreateChain {
        /// Its name.
        name: String,
        /// Its hook, for a base chain.
        base: Option<BaseHook>,
    },
    /// Delete entries from a verdict map.
    DeleteMapEntries {
        /// The map.
        map: String,
        /// The interface names whose entries go.
        keys: Vec<String>,
    },
    /// Delete elements from a set.
    DeleteElements {
        /// The set.
        set: String,
        /// The elements.
        elements: Vec<SetElem>,
    },
    /// Add elements to a set.
    AddElements {
        /// The set.
        set: String,
        /// The elements.
        elements: Vec<SetElem>,
    },
    /// Add the rules of a chain created in this plan.
    FillChain {
        /// The chain.
        name: String,
        /// Its rules.
        rules: Vec<RuleModel>,
    },
    /// Flush an existing chain and add its rules.
    ReplaceChain {
        /// The chain.
        name: String,
        /// Its rules.
        rules: Vec<RuleModel>,
    },
    /// Add `goto` entries to a verdict map.
    AddMapEntries {
        /// The map.
        map: String,
        /// (interface name, chain to go to).
        entries: Vec<(String, String)>,
    },
    /// Flush the chains, then delete them.
    DeleteChains {
        /// Their names.
        names: Vec<String>,
    },
    /// Delete a named set.
    DeleteSet {
        /// Its name.
        name: String,
    },
    /// Delete a named map.
    DeleteMap {
        /// Its name.
        name: String,
    },
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PolicyAction::*;
        match self {
            DeleteTable => write!(
                f,
                "delete table inet {TABLE} (not our structure; rebuilt in the same transaction)"
            ),
            CreateTable => write!(f, "create table inet {TABLE}"),
            CreateSet { name, .. } => write!(f, "create set {name}"),
            CreateMap { name } => write!(f, "create map {name}"),
            CreateChain { name, base: None } => write!(f, "create chain {name}"),
            CreateChain {
                name,
                base: Some(b),
            } => write!(f, "create base chain {name} (hook {:?})", b.hook),
            DeleteMapEntries { map, keys } => {
                write!(
                    f,
                    "delete {} from map {map}",
                    plural(keys.len(), "entry", "entries")
                )
            }
            DeleteElements { set, elements } => write!(
                f,
                "delete {} from set {set}",
                plural(elements.len(), "element", "elements")
            ),
            AddElements { set, elements } => write!(
                f,
                "add {} to set {set}",
                plural(elements.len(), "element", "elements")
            ),
            FillChain { name, rules } => {
                write!(
                    f,
                    "fill chain {name} ({})",
                    plural(rules.len(), "rule", "rules")
                )
            }
            ReplaceChain { name, rules } => write!(
                f,
                "replace rules of chain {name} ({})",
                plural(rules.len(), "rule", "rules")
            ),
            AddMapEntries { map, entries } => write!(
                f,
                "add {} to map {map}",
                plural(entries.len(), "entry", "entries")
            ),
            DeleteChains { names } => write!(f, "delete chains {}", names.join(", ")),
            DeleteSet { name } => write!(f, "delete set {name}"),
            DeleteMap { name } => write!(f, "delete map {name}"),
        }
    }
}

/// `has(k, v)`: does `map` hold `k → v`? For keys asked in ascending
/// order (one walk along `map`, not a lookup per key: plans compare maps of
/// thousands of entries).
fn sorted_lookup<'m, K: Ord, V: PartialEq>(
    map: &'m BTreeMap<K, V>,
) -> impl FnMut(&K, &V) -> bool + 'm {
    let mut it = map.iter().peekable();
    move |k, v| {
        while it.next_if(|(have, _)| *have < k).is_some() {}
        matches!(it.peek(), Some((have, hv)) if *have == k && *hv == v)
    }
}

/// True when `observed` can be brought to `desired` by element and chain
/// updates: every desired base chain is a base chain with the same hook
/// (or absent), every desired regular chain is not a base chain, every
/// desired set and map has its type.
fn compatible(desired: &Ruleset, observed: &Ruleset) -> bool {
    let chains = desired
        .chains
        .iter()
        .all(|(name, d)| observed.chains.get(name).is_none_or(|o| o.base == d.base));
    let sets = desired
        .sets
        .iter()
        .all(|(name, d)| observed.sets.get(name).is_none_or(|o| o.kind == d.kind));
    let maps = desired
        .maps
        .keys()
        .all(|name| observed.maps.get(name).is_none_or(|o| o.well_typed));
    // A set under a map's name or the reverse would make creation fail.
    let crossed = desired.sets.keys().any(|n| observed.maps.contains_key(n))
        || desired.maps.keys().any(|n| observed.sets.contains_key(n));
    chains && sets && maps && !crossed
}

/// The actions that turn `observed` (None: no table) into `desired`.
/// Empty when they are the same.
pub fn plan(desired: &Ruleset, observed: Option<&Ruleset>) -> Vec<PolicyAction> {
    use PolicyAction::*;
    let empty = Ruleset::default();
    let mut out = Vec::new();
    let observed = match observed {
        None => {
            out.push(CreateTable);
            &empty
        }
        Some(o) if !compatible(desired, o) => {
            out.push(DeleteTable);
            out.push(CreateTable);
            &empty
        }
        Some(o) => o,
    };

    // Creations.
    for (name, set) in &desired.sets {
        if !observed.sets.contains_key(name) {
            out.push(CreateSet {
                name: name.clone(),
                kind: set.kind,
            });
        }
    }
    for name in desired.maps.keys() {
        if !observed.maps.contains_key(name) {
            out.push(CreateMap { name: name.clone() });
        }
    }
    for (name, chain) in &desired.chains {
        if !observed.chains.contains_key(name) {
            out.push(CreateChain {
                name: name.clone(),
                base: chain.base,
            });
        }
    }

    // Map entries that go or change.
    let no_entries = BTreeMap::new();
    for (name, map) in &observed.maps {
        // A map that is not desired at all goes as a whole, below.
        let Some(want) = desired.maps.get(name).map(|m| &m.entries) else {
            continue;
        };
        let mut has_entry = sorted_lookup(want);
        let keys: Vec<String> = map
            .entries
            .iter()
            .filter(|&(k, v)| !has_entry(k, v))
            .map(|(k, _)| k.to_string())
            .collect();
        if !keys.is_empty() {
            out.push(DeleteMapEntries {
                map: name.clone(),
                keys,
            });
        }
    }

    // Set elements: out, then in.
    for (name, set) in &observed.sets {
        if let Some(want) = desired.sets.get(name) {
            let gone: Vec<SetElem> = set.elements.difference(&want.elements).cloned().collect();
            if !gone.is_empty() {
                out.push(DeleteElements {
                    set: name.clone(),
                    elements: gone,
                });
            }
        }
    }
    for (name, want) in &desired.sets {
        let added: Vec<SetElem> = match observed.sets.get(name) {
            Some(have) => want.elements.difference(&have.elements).cloned().collect(),
            None => want.elements.iter().cloned().collect(),
        };
        if !added.is_empty() {
            out.push(AddElements {
                set: name.clone(),
                elements: added,
            });
        }
    }

    // Chains: fill the new ones, replace the changed ones.
    for (name, want) in &desired.chains {
        match observed.chains.get(name) {
            None if want.rules.is_empty() => {}
            None => out.push(FillChain {
                name: name.clone(),
                rules: want.rules.clone(),
            }),
            Some(have) if have.rules != want.rules => out.push(ReplaceChain {
                name: name.clone(),
                rules: want.rules.clone(),
            }),
            Some(_) => {}
        }
    }

    // Map entries that are new or changed.
    for (name, want) in &desired.maps {
        let have = observed.maps.get(name).map_or(&no_entries, |m| &m.entries);
        let mut has_entry = sorted_lookup(have);
        let entries: Vec<(String, String)> = want
            .entries
            .iter()
            .filter(|&(k, v)| !has_entry(k, v))
            .filter_map(|(k, v)| match v {
                MapTarget::Goto(chain) => Some((k.to_string(), chain.to_string())),
                MapTarget::Other(_) => None,
            })
            .collect();
        if !entries.is_empty() {
            out.push(AddMapEntries {
                map: name.clone(),
                entries,
            });
        }
    }

    // Deletions, after everything that referred to them is gone.
    let stale: Vec<String> = observed
        .chains
        .keys()
        .filter(|n| !desired.chains.contains_key(*n))
        .cloned()
        .collect();
    if !stale.is_empty() {
        out.push(DeleteChains { names: stale });
    }
    for name in observed.sets.keys() {
        if !desired.sets.contains_key(name) {
            out.push(DeleteSet { name: name.clone() });
        }
    }
    for name in observed.maps.keys() {
        if !desired.maps.contains_key(name) {
            out.push(DeleteMap { name: name.clone() });
        }
    }
    out
}

/// Why [`simulate`] refused an action: what nft would refuse too.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("action {index} ({action}): {reason}")]
pub struct SimulateError {
    /// Position of the action in the plan.
    pub index: usize,
    /// The action, described.
    pub action: String,
    /// What is wrong.
    pub reason: String,
}

fn refers_to_set(rules: &[RuleModel], set: &str) -> bool {
    let needle = format!("\"@{set}\"");
    rules.iter().any(|r| {
        serde_json::to_string(&r.expr)
            .map(|j| j.contains(&needle))
            .unwrap_or(false)
    })
}

fn refers_to_chain(rules: &[RuleModel], chain: &str) -> bool {
    let needle = format!("\"target\":\"{chain}\"");
    rules.iter().any(|r| {
        serde_json::to_string(&r.expr)
            .map(|j| j.contains(&needle))
            .unwrap_or(false)
    })
}

/// What the table holds after `actions`, starting from `table` (None: no
/// table), with the checks nft makes: elements go only into sets that
/// exist and only out of sets that hold them, a map entry needs its chain,
/// a chain or set still referred to cannot be deleted. For tests of the
/// planner (a plan must be valid and must reach the desired table).
pub fn simulate(
    mut table: Option<Ruleset>,
    actions: &[PolicyAction],
) -> Result<Option<Ruleset>, SimulateError> {
    use PolicyAction::*;
    for (index, a) in actions.iter().enumerate() {
        let fail = |reason: String| SimulateError {
            index,
            action: a.to_string(),
            reason,
        };
        if matches!(a, DeleteTable) {
            if table.take().is_none() {
                return Err(fail("no table".into()));
            }
            continue;
        }
        if matches!(a, CreateTable) {
            table.get_or_insert_with(Ruleset::default);
            continue;
        }
        let t = table.as_mut().ok_or_else(|| fail("no table".into()))?;
        match a {
            DeleteTable | CreateTable => unreachable!(),
            CreateSet { name, kind } => match t.sets.get(name) {
                Some(s) if s.kind != *kind => return Err(fail("exists with another type".into())),
                Some(_) => {}
                None => {
                    t.sets.insert(name.clone(), SetModel::new(*kind));
                }
            },
            CreateMap { name } => {
                t.maps.entry(name.clone()).or_default();
            }
            CreateChain { name, base } => match t.chains.get(name) {
                Some(c) if c.base != *base => return Err(fail("exists with another hook".into())),
                Some(_) => {}
                None => {
                    t.chains.insert(
                        name.clone(),
                        ChainModel {
                            base: *base,
                            rules: vec![],
                        },
                    );
                }
            },
            DeleteMapEntries { map, keys } => {
                let m = t
                    .maps
                    .get_mut(map)
                    .ok_or_else(|| fail("no such map".into()))?;
                for k in keys {
                    m.entries
                        .remove(k.as_str())
                        .ok_or_else(|| fail(format!("no entry {k}")))?;
                }
            }
            DeleteElements { set, elements } => {
                let s = t
                    .sets
                    .get_mut(set)
                    .ok_or_else(|| fail("no such set".into()))?;
                for e in elements {
                    if !s.elements.remove(e) {
                        return Err(fail(format!("no element {e}")));
                    }
                }
            }
            AddElements { set, elements } => {
                let s = t
                    .sets
                    .get_mut(set)
                    .ok_or_else(|| fail("no such set".into()))?;
                for e in elements {
                    if e.kind() != s.kind {
                        return Err(fail(format!("element {e} of another type")));
                    }
                    s.elements.insert(e.clone());
                }
            }
            FillChain { name, rules } | ReplaceChain { name, rules } => {
                for r in rules {
                    let json = serde_json::to_string(&r.expr).unwrap_or_default();
                    // Every "@name" a rule mentions must exist.
                    for part in json.split("\"@").skip(1) {
                        let name = part.split('"').next().unwrap_or_default();
                        if !t.sets.contains_key(name) && !t.maps.contains_key(name) {
                            return Err(fail(format!("rule refers to missing set {name}")));
                        }
                    }
                }
                let c = t
                    .chains
                    .get_mut(name)
                    .ok_or_else(|| fail("no such chain".into()))?;
                if matches!(a, FillChain { .. }) && !c.rules.is_empty() {
                    return Err(fail("fill of a chain that has rules".into()));
                }
                c.rules = rules.clone();
            }
            AddMapEntries { map, entries } => {
                for (_, chain) in entries {
                    if !t.chains.contains_key(chain) {
                        return Err(fail(format!("no chain {chain}")));
                    }
                }
                let m = t
                    .maps
                    .get_mut(map)
                    .ok_or_else(|| fail("no such map".into()))?;
                for (k, chain) in entries {
                    if m.entries.contains_key(k.as_str()) {
                        return Err(fail(format!("entry {k} exists")));
                    }
                    m.entries
                        .insert(k.as_str().into(), MapTarget::Goto(chain.as_str().into()));
                }
            }
            DeleteChains { names } => {
                for n in names {
                    t.chains
                        .get_mut(n)
                        .ok_or_else(|| fail(format!("no chain {n}")))?
                        .rules
                        .clear();
                }
                for n in names {
                    let target = MapTarget::Goto(n.as_str().into());
                    let in_map = t
                        .maps
                        .values()
                        .any(|m| m.entries.values().any(|v| *v == target));
                    let in_rule = t.chains.values().any(|c| refers_to_chain(&c.rules, n));
                    if in_map || in_rule {
                        return Err(fail(format!("chain {n} is still referred to")));
                    }
                    t.chains.remove(n);
                }
            }
            DeleteSet { name } => {
                if t.chains.values().any(|c| refers_to_set(&c.rules, name)) {
                    return Err(fail("still referred to by a rule".into()));
                }
                t.sets
                    .remove(name)
                    .ok_or_else(|| fail("no such set".into()))?;
            }
            DeleteMap { name } => {
                if t.chains.values().any(|c| refers_to_set(&c.rules, name)) {
                    return Err(fail("still referred to by a rule".into()));
                }
                t.maps
                    .remove(name)
                    .ok_or_else(|| fail("no such map".into()))?;
            }
        }
    }
    Ok(table)
}
