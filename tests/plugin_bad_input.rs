//! Bad input through the real binary: every malformed request gets a JSON
//! error answer and exit 1, and the store is left exactly as it was; and a
//! property test that arbitrary JSON never makes the plugin panic or break
//! the protocol.

mod common;

use common::{check_answer, TestStore, NO_SUCH_PID};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

const H: &str = "agent-1";
const UID: &str = "0cd47986-24ad-4c00-b9d3-5db9e5c02028";
const CID: &str = "ba11f1de-fc4d-46fd-9f15-424f4ef05a3a";

/// A valid request of each command (isolate: valid apart from the pid that
/// no process can have) whose fields the cases below spoil one at a time.
fn base(command: &str) -> Map<String, Value> {
    let args = match command {
        "allocate" => json!({"hostname": H, "uid": UID, "num_ipv4": 1, "num_ipv6": 1,
            "netgroups": ["prod"], "labels": [{"key": "app", "value": "web"}]}),
        "reserve" => json!({"hostname": H, "uid": UID, "ipv4_addrs": ["198.18.3.7"],
            "ipv6_addrs": ["2001:db8:1::37"], "netgroups": ["prod"],
            "labels": [{"key": "app", "value": "web"}]}),
        "release" => json!({"ips": ["198.18.77.1"]}),
        "isolate" => json!({"hostname": H, "container_id": CID, "pid": NO_SUCH_PID,
            "ipv4_addrs": ["198.18.3.7"], "netgroups": ["prod"],
            "labels": [{"key": "app", "value": "web"}]}),
        "cleanup" => json!({"hostname": H, "container_id": CID}),
        _ => unreachable!(),
    };
    args.as_object().unwrap().clone()
}

/// `command` with `field` set to `value` (or removed, for `None`).
fn with(command: &str, field: &str, value: Option<Value>) -> Vec<u8> {
    let mut args = base(command);
    match value {
        Some(v) => args.insert(field.to_string(), v),
        None => args.remove(field),
    };
    json!({"command": command, "args": args})
        .to_string()
        .into_bytes()
}

/// Nesting `depth` levels deep: `[[[...]]]` or `{"a":{"a":...}}`.
fn nested(depth: usize, open: &str, close: &str) -> String {
    format!("{}1{}", open.repeat(depth), close.repeat(depth))
}

/// The malformed requests, each with a name for messages.
fn cases() -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, input: Vec<u8>| cases.push((name.to_string(), input));

    // Not JSON at all, or not only JSON.
    let full = String::from_utf8(with("reserve", "uid", Some(json!(UID)))).unwrap();
    for cut in [
        1,
        2,
        10,
        11,
        25,
        40,
        80,
        full.len() / 2,
        full.len() - 2,
        full.len() - 1,
    ] {
        add(
            &format!("truncated at {cut}"),
            full.as_bytes()[..cut].to_vec(),
        );
    }
    add("empty stdin", Vec::new());
    add("only whitespace", b" \n\t\r\n".to_vec());
    add("plain text", b"allocate".to_vec());
    add("bare word true", b"tru".to_vec());
    add(
        "single quotes",
        b"{'command': 'release', 'args': {'uid': 'u'}}".to_vec(),
    );
    add(
        "trailing comma",
        br#"{"command":"release","args":{"uid":"u",}}"#.to_vec(),
    );
    add(
        "comment",
        br#"{"command":"release", /* x */ "args":{"uid":"u"}}"#.to_vec(),
    );
    add(
        "two requests",
        [full.as_bytes(), b"\n", full.as_bytes()].concat(),
    );
    add("trailing garbage", [full.as_bytes(), b" x"].concat());

    add(
        "UTF-8 BOM",
        [b"\xEF\xBB\xBF".as_slice(), full.as_bytes()].concat(),
    );
    add(
        "UTF-16 request",
        full.encode_utf16().flat_map(u16::to_le_bytes).collect(),
    );
    add(
        "non-UTF-8 byte in a string",
        full.replacen("agent-1", "agent\u{1}1", 1)
            .into_bytes()
            .into_iter()
            .map(|b| if b == 1 { 0xFF } else { b })
            .collect(),
    );
    add("non-UTF-8 bytes only", vec![0xFF, 0xFE, 0x80, 0xC0, 0xAF]);
    add(
        "overlong UTF-8 slash",
        [
            br#"{"command":"release","args":{"uid":"a"#.as_slice(),
            b"\xC0\xAF\"}}",
        ]
        .concat(),
    );
    add(
        "lone surrogate escape",
        br#"{"command":"release","args":{"uid":"\ud800"}}"#.to_vec(),
    );
    add(
        "raw NUL between tokens",
        b"{\"command\":\"release\",\0\"args\":{\"uid\":\"u\"}}".to_vec(),
    );
    add(
        "raw NUL in a string",
        b"{\"command\":\"release\",\"args\":{\"uid\":\"u\0\"}}".to_vec(),
    );
    add("only NUL bytes", vec![0; 64]);
    add(
        "nested arrays 10,000 deep",
        nested(10_000, "[", "]").into_bytes(),
    );
    // Raw text spliced into an allocate's arguments.
    let allocate_with = |json: &str| {
        format!(r#"{{"command":"allocate","args":{{"hostname":"h","uid":"u",{json}}}}}"#)
            .into_bytes()
    };
    let deep_labels = format!(
        r#""num_ipv4":1,"num_ipv6":0,"labels":{}"#,
        nested(10_000, r#"{"a":"#, "}")
    );
    add(
        "nested objects 10,000 deep in args",
        allocate_with(&deep_labels),
    );
    let deep_count = format!(r#""num_ipv4":{},"num_ipv6":0"#, nested(200, "[", "]"));
    add(
        "nested arrays 200 deep as num_ipv4",
        allocate_with(&deep_count),
    );
    let big_label = format!(
        r#""num_ipv4":1,"num_ipv6":0,"labels":{{"big":"{}"}}"#,
        "x".repeat((1 << 20) + 1024)
    );
    add("request over 1 MiB", allocate_with(&big_label));
    add("NaN count", allocate_with(r#""num_ipv4":NaN,"num_ipv6":0"#));
    add(
        "4 MiB of spaces then a request",
        [vec![b' '; 4 << 20], full.clone().into_bytes()].concat(),
    );

    // Not a request object.
    for (name, text) in [
        ("null", "null"),
        ("number", "42"),
        ("string", "\"allocate\""),
        ("list", r#"["allocate", {}]"#),
        ("empty object", "{}"),
    ] {
        add(&format!("top level {name}"), text.as_bytes().to_vec());
    }
    for (name, command) in [
        ("number", json!(5)),
        ("list", json!(["allocate"])),
        ("object", json!({"name": "allocate"})),
        ("true", json!(true)),
        ("empty", json!("")),
        ("padded", json!(" allocate")),
        ("100 KB", json!("a".repeat(100_000))),
    ] {
        let request = json!({"command": command, "args": base("allocate")});
        add(&format!("command {name}"), request.to_string().into_bytes());
    }
    for (name, args) in [
        ("string", json!("uid=u")),
        ("list", json!([{"uid": "u"}])),
        ("number", json!(1)),
        ("false", json!(false)),
    ] {
        add(
            &format!("args {name}"),
            json!({"command": "release", "args": args})
                .to_string()
                .into_bytes(),
        );
    }

    // Identifiers: missing, empty, wrong type, too long, control characters.
    let ids = [
        ("allocate", "uid"),
        ("allocate", "hostname"),
        ("reserve", "uid"),
        ("reserve", "hostname"),
        ("isolate", "container_id"),
        ("isolate", "hostname"),
        ("cleanup", "container_id"),
        ("cleanup", "hostname"),
    ];
    for (command, field) in ids {
        add(
            &format!("{command} {field} missing"),
            with(command, field, None),
        );
        add(
            &format!("{command} {field} null"),
            with(command, field, Some(Value::Null)),
        );
        add(
            &format!("{command} {field} number"),
            with(command, field, Some(json!(7))),
        );
        add(
            &format!("{command} {field} list"),
            with(command, field, Some(json!([UID]))),
        );
        add(
            &format!("{command} {field} object"),
            with(command, field, Some(json!({"id": UID}))),
        );
        add(
            &format!("{command} {field} 100 KB"),
            with(command, field, Some(json!("u".repeat(100_000)))),
        );
        add(
            &format!("{command} {field} NUL"),
            with(command, field, Some(json!("ab\u{0}cd"))),
        );
        add(
            &format!("{command} {field} newline"),
            with(command, field, Some(json!("ab\ncd"))),
        );
    }
    for (name, uid) in [
        ("number", json!(12)),
        ("object", json!({"u": 1})),
        ("true", json!(true)),
        ("empty", json!("")),
        ("100 KB", json!("u".repeat(100_000))),
        ("NUL", json!("u\u{0}")),
    ] {
        let request = json!({"command": "release", "args": {"uid": uid}});
        add(
            &format!("release uid {name}"),
            request.to_string().into_bytes(),
        );
    }

    // Counts: wrong types, negative, huge.
    for field in ["num_ipv4", "num_ipv6"] {
        for (name, value) in [
            ("missing", None),
            ("null", Some(Value::Null)),
            ("word", Some(json!("one"))),
            ("fraction", Some(json!(1.5))),
            ("true", Some(json!(true))),
            ("list", Some(json!([1]))),
            ("object", Some(json!({"n": 1}))),
            ("-1", Some(json!(-1))),
            ("i64 min", Some(json!(i64::MIN))),
            ("\"-5\"", Some(json!("-5"))),
            ("257", Some(json!(257))),
            ("2^32", Some(json!(1u64 << 32))),
            ("u64 max", Some(json!(u64::MAX))),
            ("1e300", Some(json!(1e300))),
            ("20-digit string", Some(json!("99999999999999999999"))),
            ("100 KB digits", Some(json!("9".repeat(100_000)))),
            ("empty string", Some(json!(""))),
            ("spaced string", Some(json!(" 1"))),
        ] {
            add(
                &format!("allocate {field} {name}"),
                with("allocate", field, value),
            );
        }
    }

    // Addresses: wrong types, bad text, wrong family.
    for (command, field, v4) in [
        ("reserve", "ipv4_addrs", true),
        ("reserve", "ipv6_addrs", false),
        ("isolate", "ipv4_addrs", true),
        ("isolate", "ipv6_addrs", false),
    ] {
        let other = if v4 { "2001:db8:1::9" } else { "198.18.0.9" };
        for (name, value) in [
            ("string", json!("198.18.0.9")),
            ("number", json!(3_323_068_425u64)),
            ("object", json!({"ip": "198.18.0.9"})),
            ("list of numbers", json!([1])),
            ("list of null", json!([null])),
            ("list of lists", json!([["198.18.0.9"]])),
            ("bad text", json!(["198.18.0.256"])),
            ("empty text", json!([""])),
            ("100 KB text", json!(["1".repeat(100_000)])),
            ("NUL", json!(["198.18.0.9\u{0}"])),
            ("other family", json!([other])),
            ("cidr", json!(["198.18.0.0/24"])),
            (
                "300 addresses",
                json!((0..300)
                    .map(|i| format!("198.18.1.{}", i % 256))
                    .collect::<Vec<_>>()),
            ),
        ] {
            add(
                &format!("{command} {field} {name}"),
                with(command, field, Some(value)),
            );
        }
    }
    for (name, value) in [
        ("string", json!("198.18.77.1")),
        ("number", json!(1)),
        ("object", json!({})),
        ("list of numbers", json!([1, 2])),
        ("bad text", json!(["198.18.77.1", "x"])),
        ("NUL", json!(["\u{0}"])),
        ("100 KB", json!(["f".repeat(100_000)])),
        ("2,000 items", json!(vec!["198.18.77.1"; 2000])),
        ("with uid", json!(["198.18.77.1"])),
    ] {
        let mut input = with("release", "ips", Some(value));
        if name == "with uid" {
            input = with_arg(input, "uid", json!(UID));
        }
        add(&format!("release ips {name}"), input);
    }
    add(
        "release ips null and uid null",
        with("release", "ips", Some(Value::Null)),
    );
    add(
        "release empty args",
        json!({"command": "release", "args": {}})
            .to_string()
            .into_bytes(),
    );

    // isolate: pid, netgroups, no address.
    for (name, value) in [
        ("missing", None),
        ("null", Some(Value::Null)),
        ("0", Some(json!(0))),
        ("-1", Some(json!(-1))),
        ("fraction", Some(json!(1.5))),
        ("word", Some(json!("init"))),
        ("list", Some(json!([1]))),
        ("true", Some(json!(true))),
        ("2^40", Some(json!(1u64 << 40))),
        ("u64 max", Some(json!(u64::MAX))),
        ("100 KB digits", Some(json!("1".repeat(100_000)))),
    ] {
        add(
            &format!("isolate pid {name}"),
            with("isolate", "pid", value),
        );
    }
    for (name, value) in [
        ("string", json!("prod")),
        ("object", json!({"prod": 1})),
        ("number", json!(1)),
        ("list of numbers", json!([1])),
        ("list with null", json!(["prod", null])),
        ("bad name", json!(["a b"])),
        ("empty name", json!([""])),
        ("100 KB name", json!(["n".repeat(100_000)])),
        ("NUL name", json!(["pr\u{0}od"])),
        (
            "1,000 names",
            json!((0..1000).map(|i| format!("g{i}")).collect::<Vec<_>>()),
        ),
    ] {
        add(
            &format!("isolate netgroups {name}"),
            with("isolate", "netgroups", Some(value)),
        );
    }
    add("isolate no address", with("isolate", "ipv4_addrs", None));
    add(
        "reserve no address",
        with_arg(
            with("reserve", "ipv4_addrs", Some(json!([]))),
            "ipv6_addrs",
            json!([]),
        ),
    );

    // Labels.
    for command in ["allocate", "reserve", "isolate"] {
        for (name, value) in [
            ("string", json!("app=web")),
            ("number", json!(1)),
            ("list of strings", json!(["app"])),
            ("key not a string", json!([{"key": 1, "value": "x"}])),
            ("no key", json!([{"value": "x"}])),
            ("value a number", json!([{"key": "k", "value": 1}])),
            ("object value a list", json!({"k": ["v"]})),
            ("list of lists", json!([[{"key": "k"}]])),
        ] {
            add(
                &format!("{command} labels {name}"),
                with(command, "labels", Some(value)),
            );
        }
    }
    for (name, text) in [
        ("bare address", "198.18.3.1".to_string()),
        ("unquoted", "[198.18.3.1]".into()),
        ("unclosed", "['198.18.3.1'".into()),
        ("trailing comma", "['198.18.3.1',]".into()),
        ("nested", "[['198.18.3.1']]".into()),
        ("bad address", "['198.18.3.x']".into()),
        ("ipv6", "['2001:db8:1::5']".into()),
        ("NUL", "['198.18.3.1\u{0}']".into()),
        ("100 KB", format!("['{}']", "1".repeat(100_000))),
        ("more than num_ipv4", "['198.18.3.1', '198.18.3.2']".into()),
    ] {
        add(
            &format!("allocate ipv4_addrs label {name}"),
            with(
                "allocate",
                "labels",
                Some(json!([{"key": "ipv4_addrs", "value": text}])),
            ),
        );
    }
    cases
}

/// Add or replace one argument of a serialised request.
fn with_arg(input: Vec<u8>, field: &str, value: Value) -> Vec<u8> {
    let mut request: Value = serde_json::from_slice(&input).unwrap();
    request["args"][field] = value;
    request.to_string().into_bytes()
}

/// A store with pools and some addresses held, so "unchanged" means something.
fn populated_store() -> TestStore {
    let store = TestStore::with_pools();
    store.ok(&common::allocate("held-1", 2, 1));
    store.ok(
        &json!({"command": "reserve", "args": {"hostname": H, "uid": "held-2",
        "ipv4_addrs": ["198.18.77.1"], "ipv6_addrs": ["2001:db8:1::771"]}}),
    );
    store
}

#[test]
fn malformed_requests_get_an_error_and_change_nothing() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    eprintln!("{} malformed requests", cases.len());
    let store = populated_store();
    let mut before = store.dump();
    let mut failures = Vec::new();
    for (name, input) in &cases {
        let out = common::run(store.command(), input);
        let problem = match check_answer(&out) {
            Err(e) => Some(e),
            Ok(reply) if reply.is_ok() => Some(format!("accepted: {}", reply.answer)),
            Ok(_) => None,
        };
        let after = store.dump();
        let problem = problem.or_else(|| {
            (after != before).then(|| format!("the store changed:\n{before}---\n{after}"))
        });
        if let Some(problem) = problem {
            failures.push(format!("--- {name}: {problem}"));
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    store.state().check_consistency().unwrap();
}

/// PROTOCOL.md lists `netgroups` of allocate and reserve as "optional list";
/// a value of another type is accepted today and the request carried out.
#[test]
fn allocate_and_reserve_reject_netgroups_that_are_not_a_list() {
    let store = populated_store();
    for command in ["allocate", "reserve"] {
        for value in [json!("prod"), json!(5), json!({"prod": true}), json!([1])] {
            let before = store.dump();
            let reply = store.send_raw(&with(command, "netgroups", Some(value.clone())));
            assert!(
                !reply.is_ok(),
                "{command} with netgroups {value}: {}",
                reply.answer
            );
            assert_eq!(
                store.dump(),
                before,
                "{command} with netgroups {value} wrote"
            );
        }
    }
}

// ---- property test: arbitrary JSON never breaks the protocol ----

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values that are nearly right for the protocol's fields, so that many
/// requests get past validation.
fn plausible() -> impl Strategy<Value = Value> {
    let v4 = (0u8..4, any::<u8>()).prop_map(|(c, d)| format!("198.18.{c}.{d}"));
    let v6 = any::<u8>().prop_map(|d| format!("2001:db8:1::{d:x}"));
    prop_oneof![
        (0u32..4).prop_map(Value::from),
        (0u32..4).prop_map(|n| Value::from(n.to_string())),
        "[a-z0-9-]{1,12}".prop_map(Value::from),
        prop::collection::vec(v4.clone(), 0..3).prop_map(Value::from),
        prop::collection::vec(v6.clone(), 0..3).prop_map(Value::from),
        prop::collection::vec(prop_oneof![v4.clone(), v6], 0..3).prop_map(Value::from),
        prop::collection::vec("[a-z]{1,6}", 0..3).prop_map(Value::from),
        prop::collection::vec(v4, 0..3).prop_map(|list| {
            let text = format!("{list:?}");
            json!([{"key": "ipv4_addrs", "value": text}, {"key": "app"}])
        }),
    ]
}

const FIELDS: [&str; 13] = [
    "hostname",
    "uid",
    "num_ipv4",
    "num_ipv6",
    "ipv4_addrs",
    "ipv6_addrs",
    "ips",
    "netgroups",
    "labels",
    "container_id",
    "pid",
    "command",
    "args",
];

/// Valid arguments for one command (isolate: never valid, see below).
fn valid_args(command: &'static str) -> BoxedStrategy<Map<String, Value>> {
    let uid = "[a-z0-9]{1,12}";
    let v4 = (0u8..4, any::<u8>()).prop_map(|(c, d)| format!("198.18.{c}.{d}"));
    let args = match command {
        "allocate" => (uid, 0u32..3, 0u32..3)
            .prop_map(
                |(uid, v4, v6)| json!({"hostname": H, "uid": uid, "num_ipv4": v4, "num_ipv6": v6}),
            )
            .boxed(),
        "reserve" => (uid, prop::collection::vec(v4.clone(), 1..3))
            .prop_map(|(uid, ips)| json!({"hostname": H, "uid": uid, "ipv4_addrs": ips}))
            .boxed(),
        "release" => prop_oneof![
            uid.prop_map(|uid| json!({"uid": uid})),
            prop::collection::vec(v4, 0..3).prop_map(|ips| json!({"ips": ips})),
        ]
        .boxed(),
        "cleanup" => uid
            .prop_map(|id| json!({"hostname": H, "container_id": id}))
            .boxed(),
        _ => {
            Just(json!({"hostname": H, "container_id": CID, "ipv4_addrs": ["198.18.3.7"]})).boxed()
        }
    };
    args.prop_map(|a| a.as_object().unwrap().clone()).boxed()
}

/// A request: arbitrary JSON, arbitrary bytes, or a command with arguments
/// that start valid and get up to three fields removed, replaced by nearly
/// right or arbitrary values, or added.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let command =
        prop::sample::select(vec!["allocate", "reserve", "release", "isolate", "cleanup"]);
    let field = prop::sample::select(FIELDS.to_vec()).prop_map(String::from);
    let key = prop_oneof![4 => field, 1 => ".{0,8}"];
    let value = prop_oneof![
        1 => Just(None),
        3 => plausible().prop_map(Some),
        2 => any_json().prop_map(Some),
    ];
    let mutations = prop::collection::vec((key, value), 0..4);
    let command_request = (
        command.prop_flat_map(|c| (Just(c), valid_args(c))),
        mutations,
        any_json(),
    )
        .prop_map(|((command, mut args), mutations, odd_command)| {
            for (key, value) in mutations {
                match value {
                    Some(value) => args.insert(key, value),
                    None => args.remove(&key),
                };
            }
            // Now and then the command itself is arbitrary.
            let command = if args.len() % 7 == 6 {
                odd_command
            } else {
                Value::from(command)
            };
            if command == "isolate" {
                // Never a valid isolate: it would configure a real namespace.
                args.remove("pid");
            }
            json!({"command": command, "args": args})
                .to_string()
                .into_bytes()
        });
    prop_oneof![
        6 => command_request,
        2 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

#[test]
fn arbitrary_json_never_breaks_the_protocol() {
    let store = TestStore::with_pools();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = std::cell::Cell::new(0);
    let result = runner.run(&request(), |input| {
        let before = store.dump();
        let out = common::run(store.command(), &input);
        let reply = check_answer(&out).map_err(TestCaseError::fail)?;
        if reply.is_ok() {
            accepted.set(accepted.get() + 1);
        } else {
            prop_assert_eq!(store.dump(), before, "a failed request changed the store");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "{} of 64 arbitrary requests were carried out",
        accepted.get()
    );
    store.state().check_consistency().unwrap();
}

/// A datastore that cannot be used gets a prompt error answer that names it
/// and says how to point at another one, and a file that is not a store is
/// left untouched.
#[test]
fn an_unusable_datastore_gets_a_clear_error() {
    let store = TestStore::empty();
    let dir = store.path();
    std::fs::write(dir.join("a-file"), "x").unwrap();
    std::fs::create_dir(dir.join("a-dir.db")).unwrap();
    let garbage: Vec<u8> = b"this is not a database\n".repeat(400);
    std::fs::write(dir.join("garbage.db"), &garbage).unwrap();
    let request = common::allocate("u1", 1, 1).to_string();
    let sqlite = |path: &str| format!("sqlite://{}", dir.join(path).display());
    for (url, names) in [
        (sqlite("a-file/store.db"), "a-file/store.db"),
        (sqlite("a-dir.db"), "a-dir.db"),
        (sqlite("garbage.db"), "garbage.db"),
        // PROTOCOL.md's text: the endpoints as URLs, and what to change.
        (
            "etcd://127.0.0.1:1".to_string(),
            "etcd at 'http://127.0.0.1:1'",
        ),
    ] {
        let mut cmd = store.command();
        cmd.env("CALICO_MESOS_DATASTORE", &url);
        let started = std::time::Instant::now();
        let reply = check_answer(&common::run(cmd, request.as_bytes()))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let error = reply.error().unwrap_or_else(|| panic!("{url}: accepted"));
        assert!(error.contains(names), "{url}: {error}");
        if url.starts_with("sqlite") {
            assert!(error.contains("CALICO_MESOS_DATASTORE"), "{url}: {error}");
        } else {
            assert_eq!(
                error,
                "Failed to communicate with etcd at 'http://127.0.0.1:1'. Ensure that it is up and running or change ETCD_ENDPOINTS (or ETCD_AUTHORITY) for the mesos-agent process.",
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{url}: too slow"
        );
    }
    assert_eq!(std::fs::read(dir.join("garbage.db")).unwrap(), garbage);
}

/// With no pool configured, an allocate that fails still leaves the default
/// pools written: an error answer that changed the store.
#[test]
fn a_failed_allocate_on_an_empty_store_writes_nothing() {
    let store = TestStore::empty();
    let before = store.dump();
    let reply = store.send(
        &json!({"command": "allocate", "args": {"hostname": H, "uid": UID,
        "num_ipv4": 1, "num_ipv6": 0, "labels": {"ipv4_addrs": "['198.18.3.1']"}}}),
    );
    assert!(!reply.is_ok(), "{}", reply.answer);
    assert_eq!(
        store.dump(),
        before,
        "the failed allocate wrote to the store"
    );
}
