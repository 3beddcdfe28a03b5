//! `calico-mesos profile list|show` through the real binary, over a store
//! whose endpoints and profiles were written through the library exactly as
//! isolate records them (`endpoint::record`, then `ensure_profiles`). No
//! kernel is touched: the endpoints' pids are never used.

mod common;

use calico_mesos::endpoint::{self, Endpoint, NetnsId};
use calico_mesos::policy::ensure_profiles;
use calico_mesos::store::{self, Store};
use common::{run, TestStore, NO_SUCH_PID};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

fn open(ts: &TestStore) -> Box<dyn Store> {
    let url = format!("sqlite://{}", ts.path().join("store.db").display());
    store::open(&store::StoreOptions::new(url, Duration::from_secs(5)))
        .expect("open the test store")
}

/// Records endpoint `id` on `node` with address number `n` of each family,
/// and the profiles it needs, as isolate does.
fn launch(
    store: &dyn Store,
    node: &str,
    node_addresses: &[IpAddr],
    id: &str,
    n: u8,
    netgroups: &[&str],
) {
    let ep = Endpoint {
        node: node.to_string(),
        container_id: id.to_string(),
        netns: NetnsId {
            pid: NO_SUCH_PID as u32,
            inode: 1,
        },
        ipv4: vec![Ipv4Addr::new(198, 18, 0, n)],
        ipv6: vec![Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, n as u16)],
        netgroups: netgroups.iter().map(|s| s.to_string()).collect(),
        labels: Default::default(),
        holders: Default::default(),
        generation: 0,
        deletion_requested: false,
    };
    endpoint::record(store, ep.clone()).expect("record the endpoint");
    ensure_profiles(store, node, node_addresses, &ep).expect("ensure the profiles");
}

/// A store with endpoints on two nodes; one of them is being deleted.
fn cluster() -> TestStore {
    let ts = TestStore::empty();
    let store = open(&ts);
    let n1: Vec<IpAddr> = vec![
        "198.19.0.1".parse().unwrap(),
        "2001:db8:f::1".parse().unwrap(),
    ];
    let n2: Vec<IpAddr> = vec!["198.19.0.2".parse().unwrap()];
    launch(store.as_ref(), "node-1", &n1, "ctr-a", 1, &["web"]);
    launch(
        store.as_ref(),
        "node-1",
        &n1,
        "ctr-b",
        2,
        &["public", "web"],
    );
    launch(store.as_ref(), "node-1", &n1, "ctr-lone", 3, &[]);
    launch(store.as_ref(), "node-2", &n2, "ctr-c", 4, &["web", "db"]);
    launch(store.as_ref(), "node-2", &n2, "ctr-gone", 5, &["web"]);
    endpoint::request_deletion(store.as_ref(), "node-2", "ctr-gone")
        .unwrap()
        .expect("ctr-gone exists");
    ts
}

/// Runs `calico-mesos <args>`; returns (exit code, stdout, stderr).
fn cli(ts: &TestStore, args: &[&str]) -> (i32, String, String) {
    let mut cmd = ts.command();
    cmd.args(args);
    let out = run(cmd, b"");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The table's rows as whitespace-separated words.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn profile_list_table_and_json() {
    let ts = cluster();
    let store = open(&ts);
    let revision = store.revision().unwrap();

    let table = ts.cli(&["profile", "list"]);
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(str::to_string).collect() };
    assert_eq!(
        rows(&table),
        vec![
            words("NAME KIND INBOUND OUTBOUND MEMBERS"),
            words("db netgroup netgroup db all 1"),
            words(
                "host:node-1 host 198.19.0.1/32,2001:db8:f::1/128 198.19.0.1/32,2001:db8:f::1/128 3"
            ),
            words("host:node-2 host 198.19.0.2/32 198.19.0.2/32 1"),
            words("public public all all 1"),
            words("web netgroup netgroup web all 3"),
        ],
        "{table}"
    );

    let doc: Value =
        serde_json::from_str(&ts.cli(&["profile", "list", "--output", "json"])).unwrap();
    let list = doc.as_array().expect("a JSON array");
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "host:node-1", "host:node-2", "public", "web"]);
    let web = &list[4];
    assert_eq!(
        *web,
        json!({
            "name": "web",
            "kind": "netgroup",
            "inbound": [{ "netgroup": "web" }],
            "outbound": ["all"],
            "members": 3,
        })
    );
    assert_eq!(list[1]["kind"], "host");
    assert_eq!(
        list[1]["inbound"],
        json!([{ "cidr": "198.19.0.1/32" }, { "cidr": "2001:db8:f::1/128" }])
    );
    assert_eq!(list[3]["kind"], "public");
    assert_eq!(list[3]["members"], 1);

    // Reading changes nothing.
    assert_eq!(store.revision().unwrap(), revision);
}

#[test]
fn profile_show_table_and_json() {
    let ts = cluster();

    let web = ts.cli(&["profile", "show", "web"]);
    let lines: Vec<&str> = web.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "profile web (netgroup)",
            "inbound: allow from netgroup web",
            "outbound: allow all",
            "members: 3",
        ],
        "{web}"
    );
    assert_eq!(
        rows(&lines[4..].join("\n")),
        rows(
            "NODE CONTAINER ADDRESSES\n\
             node-1 ctr-a 198.18.0.1,2001:db8:1::1\n\
             node-1 ctr-b 198.18.0.2,2001:db8:1::2\n\
             node-2 ctr-c 198.18.0.4,2001:db8:1::4"
        ),
        "{web}"
    );

    let host = ts.cli(&["profile", "show", "host:node-1"]);
    for line in [
        "profile host:node-1 (host)",
        "inbound: allow from 198.19.0.1/32",
        "inbound: allow from 2001:db8:f::1/128",
        "outbound: allow to 198.19.0.1/32",
        "outbound: allow to 2001:db8:f::1/128",
        "members: 3",
    ] {
        assert!(host.lines().any(|l| l == line), "{line:?} missing:\n{host}");
    }
    assert!(host.contains("ctr-lone"), "{host}");

    let public = ts.cli(&["profile", "show", "public"]);
    assert!(
        public.contains("inbound: allow all\noutbound: allow all\nmembers: 1\n"),
        "{public}"
    );

    let doc: Value =
        serde_json::from_str(&ts.cli(&["profile", "show", "host:node-2", "-o", "json"])).unwrap();
    assert_eq!(
        doc,
        json!({
            "name": "host:node-2",
            "kind": "host",
            "rules": {
                "inbound": [{ "cidr": "198.19.0.2/32" }],
                "outbound": [{ "cidr": "198.19.0.2/32" }],
            },
            "members": [{
                "node": "node-2",
                "container_id": "ctr-c",
                "ipv4": ["198.18.0.4"],
                "ipv6": ["2001:db8:1::4"],
            }],
        })
    );
}

#[test]
fn unknown_profile_is_a_clear_error() {
    let ts = cluster();
    for args in [
        &["profile", "show", "nope"][..],
        &["profile", "show", "nope", "--output", "json"][..],
    ] {
        let (code, stdout, stderr) = cli(&ts, args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        assert!(
            stderr.contains("no profile named 'nope'") && stderr.contains("profile list"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn an_empty_store_lists_no_profiles() {
    let ts = TestStore::empty();
    assert_eq!(
        rows(&ts.cli(&["profile", "list"])),
        [["NAME", "KIND", "INBOUND", "OUTBOUND", "MEMBERS"]]
    );
    assert_eq!(ts.cli(&["profile", "list", "-o", "json"]).trim(), "[]");
}
