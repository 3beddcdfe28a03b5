//! Every request/answer pair in `fixtures/netmodules/` (format in its
//! README.md), run through the real binary against a fresh store each.

mod common;

use common::{check_answer, Cidr, TestStore};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The fixture files, in name order.
fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/netmodules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_gets_its_expected_answer() {
    let files = fixtures();
    assert!(files.len() >= 80, "only {} fixtures found", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).expect("read fixture");
        let result = serde_json::from_str::<Value>(&text)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|fixture| run_fixture(&fixture));
        if let Err(e) = result {
            failures.push(format!("--- {name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// The checks of the README, for one fixture.
fn run_fixture(fixture: &Value) -> Result<(), String> {
    let fixture = fixture.as_object().ok_or("a fixture is a JSON object")?;
    const KEYS: [&str; 6] = ["description", "setup", "request", "expect", "exit", "store"];
    if let Some(unknown) = fixture.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown fixture key {unknown:?}"));
    }
    let request = fixture.get("request").ok_or("no request")?;
    let expect = fixture
        .get("expect")
        .and_then(Value::as_object)
        .ok_or("no expect object")?;
    let exit = fixture
        .get("exit")
        .and_then(Value::as_i64)
        .ok_or("no exit status")?;

    let store = TestStore::empty();
    for step in fixture
        .get("setup")
        .map(|s| s.as_array().ok_or("setup is a list"))
        .transpose()?
        .into_iter()
        .flatten()
    {
        setup(&store, step)?;
    }

    let before = store.dump();
    let input = match request {
        // A string is sent as it is (non-JSON input); anything else as JSON.
        Value::String(raw) => raw.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let out = common::run(store.command(), &input);
    let reply = check_answer(&out)?;
    let answer = reply.answer.as_object().expect("checked: an object");
    let context = |why: String| format!("{why}\nanswer: {}", reply.answer);

    if i64::from(reply.code) != exit {
        return Err(context(format!("exit {} (want {exit})", reply.code)));
    }
    let want_keys: BTreeSet<&String> = expect.keys().collect();
    let got_keys: BTreeSet<&String> = answer.keys().collect();
    if want_keys != got_keys {
        return Err(context(format!(
            "answer fields {got_keys:?}, want {want_keys:?}"
        )));
    }
    for (field, want) in expect {
        let got = &answer[field];
        let matched = match field.as_str() {
            "error" => match_error(want, got),
            "ipv4" | "ipv6" => match_addresses(want, got),
            _ => Err(format!("no matcher for field {field}")),
        };
        matched.map_err(|e| context(format!("{field}: {e}")))?;
    }

    let after = store.state();
    let held = after
        .check_consistency()
        .map_err(|e| context(format!("store inconsistent:\n{e}")))?;
    if reply.is_ok() {
        if request["command"] == "allocate" {
            // What the answer hands out is held under the uid.
            let uid = request["args"]["uid"].as_str().unwrap_or_default();
            for addr in reply.all_addrs() {
                if held.get(&addr).map(String::as_str) != Some(uid) {
                    return Err(context(format!("{addr} is not held under {uid}")));
                }
            }
        }
    } else if store.dump() != before {
        return Err(context(
            "the store changed although the request failed".to_string(),
        ));
    }
    if let Some(want) = fixture.get("store") {
        match_store(want, &after.handles()).map_err(context)?;
    }
    Ok(())
}

/// One setup step: a CLI command (list of arguments) or a request that must
/// succeed.
fn setup(store: &TestStore, step: &Value) -> Result<(), String> {
    match step {
        Value::Array(args) => {
            let args: Vec<&str> = args
                .iter()
                .map(|a| a.as_str().ok_or("CLI arguments are strings"))
                .collect::<Result<_, _>>()?;
            store.cli(&args);
            Ok(())
        }
        Value::Object(_) => {
            let reply = store.send(step);
            if reply.is_ok() {
                Ok(())
            } else {
                Err(format!("setup request {step} failed: {}", reply.answer))
            }
        }
        other => Err(format!("bad setup step {other}")),
    }
}

/// `null`, an exact text, `{"nonempty": true}`, or
/// `{"contains": [...], "excludes": [...]}`.
fn match_error(want: &Value, got: &Value) -> Result<(), String> {
    match want {
        Value::Null | Value::String(_) if want == got => Ok(()),
        Value::Null | Value::String(_) => Err(format!("got {got}, want {want}")),
        Value::Object(spec) => {
            let text = got
                .as_str()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("got {got}, want a non-empty error"))?;
            check_spec_keys(spec, &["nonempty", "contains", "excludes"])?;
            for part in strings(spec.get("contains"))? {
                if !text.contains(part) {
                    return Err(format!("{text:?} does not contain {part:?}"));
                }
            }
            for part in strings(spec.get("excludes"))? {
                if text.contains(part) {
                    return Err(format!("{text:?} contains {part:?}"));
                }
            }
            Ok(())
        }
        other => Err(format!("bad error matcher {other}")),
    }
}

/// An exact list of addresses, or `{"count": n, "in": cidr, "ends_with": [...]}`.
fn match_addresses(want: &Value, got: &Value) -> Result<(), String> {
    let got_list = got
        .as_array()
        .ok_or_else(|| format!("got {got}, want a list"))?;
    let mut addrs = Vec::new();
    for item in got_list {
        let addr: IpAddr = item
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{item} is not an address"))?;
        if item.as_str() != Some(addr.to_string().as_str()) {
            return Err(format!("{item} is not in canonical form"));
        }
        addrs.push(addr);
    }
    let unique: BTreeSet<&IpAddr> = addrs.iter().collect();
    if unique.len() != addrs.len() {
        return Err(format!("{got} repeats an address"));
    }
    match want {
        Value::Array(_) => {
            if want == got {
                Ok(())
            } else {
                Err(format!("got {got}, want {want}"))
            }
        }
        Value::Object(spec) => {
            check_spec_keys(spec, &["count", "in", "ends_with"])?;
            if let Some(count) = spec.get("count") {
                if count.as_u64() != Some(addrs.len() as u64) {
                    return Err(format!("got {} addresses, want {count}", addrs.len()));
                }
            }
            if let Some(cidr) = spec.get("in") {
                let cidr = cidr
                    .as_str()
                    .and_then(Cidr::parse)
                    .ok_or_else(|| format!("bad cidr {cidr}"))?;
                if let Some(outside) = addrs.iter().find(|a| !cidr.contains(**a)) {
                    return Err(format!("{outside} is outside {}", cidr.segment()));
                }
            }
            let tail = strings(spec.get("ends_with"))?;
            let got_tail: Vec<String> = addrs
                .iter()
                .skip(addrs.len().saturating_sub(tail.len()))
                .map(ToString::to_string)
                .collect();
            if got_tail != tail {
                return Err(format!("{got} does not end with {tail:?}"));
            }
            Ok(())
        }
        other => Err(format!("bad address matcher {other}")),
    }
}

/// `{"handles": {uid: [addresses] | {"count": n, ...}}}`: exactly these handles.
fn match_store(want: &Value, handles: &BTreeMap<String, BTreeSet<IpAddr>>) -> Result<(), String> {
    let spec = want.as_object().ok_or("store is an object")?;
    check_spec_keys(spec, &["handles"])?;
    let Some(want) = spec.get("handles") else {
        return Ok(());
    };
    let want = want.as_object().ok_or("store.handles is an object")?;
    let got_uids: BTreeSet<&String> = handles.keys().collect();
    let want_uids: BTreeSet<&String> = want.keys().collect();
    if got_uids != want_uids {
        return Err(format!(
            "store holds handles {got_uids:?}, want {want_uids:?}"
        ));
    }
    for (uid, matcher) in want {
        let held = &handles[uid];
        let got = Value::from(held.iter().map(ToString::to_string).collect::<Vec<_>>());
        let matcher = match matcher {
            // Handles are sets: compare sorted.
            Value::Array(list) => {
                let mut sorted: Vec<IpAddr> = list
                    .iter()
                    .map(|a| a.as_str().and_then(|s| s.parse().ok()).ok_or("bad address"))
                    .collect::<Result<_, _>>()?;
                sorted.sort();
                Value::from(sorted.iter().map(ToString::to_string).collect::<Vec<_>>())
            }
            other => other.clone(),
        };
        match_addresses(&matcher, &got).map_err(|e| format!("handle {uid}: {e}"))?;
    }
    Ok(())
}

fn check_spec_keys(spec: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match spec.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown matcher key {k:?}")),
        None => Ok(()),
    }
}

fn strings(value: Option<&Value>) -> Result<Vec<&str>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| format!("{i} is not a string")))
            .collect(),
        Some(other) => Err(format!("{other} is not a string or a list")),
    }
}
