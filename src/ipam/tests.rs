//! IPAM behaviour against a real store: this file is compiled three times,
//! as `ipam::tests` (a SQLite file in a temporary directory),
//! `ipam::tests_etcd` (its own prefix on a real test etcd) and
//! `ipam::tests_mirror` (the same, read through the daemon's replica).

use super::*;
use crate::store::{keys, testing, Store};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A fresh store of this module's backend, and what keeps it alive.
fn store() -> (testing::Keep, Box<dyn Store>) {
    testing::fresh(testing::kind_of_module(module_path!()))
}

fn with_pool(store: &dyn Store, cidr: &str, block: u8) {
    add_pool(
        store,
        &IpPool::new(cidr.parse().unwrap(), Some(block)).unwrap(),
    )
    .unwrap();
}

fn alloc(
    store: &dyn Store,
    node: &str,
    uid: &str,
    v4: u32,
    v6: u32,
) -> Result<Assigned, IpamError> {
    allocate(
        store,
        &Request {
            node,
            uid,
            num_ipv4: v4,
            num_ipv6: v6,
            reserve: &[],
            default_pools: false,
        },
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn blocks_of(store: &dyn Store, node: &str) -> Vec<String> {
    usage(store)
        .unwrap()
        .nodes
        .get(node)
        .map_or(vec![], |b| b.iter().map(|b| b.cidr.to_string()).collect())
}

#[test]
fn a_node_fills_its_block_before_claiming_another() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 30);
    let first = alloc(&s, "n1", "u1", 3, 0).unwrap();
    assert_eq!(
        first.ipv4,
        vec![ip("198.18.0.0"), ip("198.18.0.1"), ip("198.18.0.2")]
    );
    assert_eq!(blocks_of(&s, "n1"), vec!["198.18.0.0/30"]);
    let next = alloc(&s, "n1", "u2", 2, 0).unwrap();
    assert_eq!(next.ipv4, vec![ip("198.18.0.3"), ip("198.18.0.4")]);
    assert_eq!(blocks_of(&s, "n1"), vec!["198.18.0.0/30", "198.18.0.4/30"]);
}

#[test]
fn nodes_get_their_own_blocks() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 30);
    alloc(&s, "n1", "u1", 1, 0).unwrap();
    let other = alloc(&s, "n2", "u2", 1, 0).unwrap();
    assert_eq!(other.ipv4, vec![ip("198.18.0.4")]);
    // n1 keeps using its own block, not n2's.
    assert_eq!(
        alloc(&s, "n1", "u3", 1, 0).unwrap().ipv4,
        vec![ip("198.18.0.1")]
    );
    assert_eq!(blocks_of(&s, "n2"), vec!["198.18.0.4/30"]);
}

#[test]
fn borrows_only_when_no_block_is_left_to_claim() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/29", 30); // two blocks of four
    alloc(&s, "n1", "u1", 1, 0).unwrap();
    alloc(&s, "n2", "u2", 1, 0).unwrap();
    // n1 fills its block (3 left), then must borrow from n2's block.
    let got = alloc(&s, "n1", "u3", 5, 0).unwrap();
    assert_eq!(got.ipv4.len(), 5);
    assert!(got.ipv4.contains(&ip("198.18.0.5")), "{got:?}");
    assert_eq!(
        blocks_of(&s, "n1"),
        vec!["198.18.0.0/30"],
        "borrowing claims no block"
    );
}

#[test]
fn exhaustion_is_all_or_nothing_and_names_the_family() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/30", 30);
    with_pool(&s, "2001:db8:1::/126", 126);
    alloc(&s, "n1", "u1", 2, 0).unwrap();
    let before = s.list("", None).unwrap();
    let err = alloc(&s, "n1", "u2", 1, 5).unwrap_err();
    assert!(err.to_string().contains("IPv6"), "{err}");
    assert_eq!(s.list("", None).unwrap(), before, "nothing written");
    let err = alloc(&s, "n1", "u2", 3, 0).unwrap_err();
    assert!(
        err.to_string().contains("IPv4") && err.to_string().contains("only 2"),
        "{err}"
    );
    assert_eq!(s.get(&keys::handle("u2")).unwrap(), None);
    assert_eq!(alloc(&s, "n1", "u2", 2, 4).unwrap().ipv4.len(), 2);
}

#[test]
fn ipv6_allocation_uses_122_blocks() {
    let (_d, s) = store();
    with_pool(&s, "2001:db8:1::/64", 122);
    let got = alloc(&s, "n1", "u1", 0, 2).unwrap();
    assert_eq!(got.ipv6, vec![ip("2001:db8:1::"), ip("2001:db8:1::1")]);
    assert_eq!(blocks_of(&s, "n1"), vec!["2001:db8:1::/122"]);
}

#[test]
fn reserve_in_someone_elses_block_and_conflicts() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    alloc(&s, "n1", "u1", 1, 0).unwrap(); // n1 claims 198.18.0.0/26
    let wanted = [ip("198.18.0.9")];
    let req = |node, uid| Request {
        node,
        uid,
        reserve: &wanted,
        ..Default::default()
    };
    assert_eq!(reserve(&s, &req("n2", "u2")).unwrap().ipv4, wanted);
    assert_eq!(
        blocks_of(&s, "n2"),
        Vec::<String>::new(),
        "the block stays n1's"
    );
    // The same uid again is fine; another uid is refused.
    reserve(&s, &req("n2", "u2")).unwrap();
    let err = reserve(&s, &req("n3", "u3")).unwrap_err();
    assert_eq!(err.to_string(), "IP '198.18.0.9' already in use.");
    // n1's allocations skip the reserved address.
    let got = alloc(&s, "n1", "u4", 9, 0).unwrap();
    assert!(!got.ipv4.contains(&ip("198.18.0.9")));
    // An address in no pool.
    let outside = [ip("198.51.100.1")];
    let err = reserve(
        &s,
        &Request {
            node: "n1",
            uid: "u5",
            reserve: &outside,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("198.51.100.1"), "{err}");
}

#[test]
fn reserve_claims_an_unclaimed_block_and_allocation_returns_reserved_last() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    let wanted = [ip("198.18.0.200")];
    let got = allocate(
        &s,
        &Request {
            node: "n1",
            uid: "u",
            num_ipv4: 2,
            num_ipv6: 0,
            reserve: &wanted,
            default_pools: false,
        },
    )
    .unwrap();
    assert_eq!(
        got.ipv4,
        vec![ip("198.18.0.192"), ip("198.18.0.193"), ip("198.18.0.200")]
    );
    assert_eq!(blocks_of(&s, "n1"), vec!["198.18.0.192/26"]);
}

#[test]
fn release_by_uid_frees_exactly_that_uid() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    with_pool(&s, "2001:db8:1::/64", 122);
    let a = alloc(&s, "n1", "a", 2, 1).unwrap();
    let b = alloc(&s, "n1", "b", 2, 1).unwrap();
    let released = release_handle(&s, "a").unwrap();
    assert_eq!(released.len(), 3);
    assert_eq!(s.get(&keys::handle("a")).unwrap(), None);
    let u = usage(&s).unwrap();
    assert_eq!(u.pools.iter().map(|p| p.used).sum::<u128>(), 3);
    // Freed addresses are handed out again; b's are untouched.
    let c = alloc(&s, "n1", "c", 2, 1).unwrap();
    assert_eq!(c.ipv4, a.ipv4);
    assert!(b.ipv4.iter().all(|x| !c.ipv4.contains(x)));
    assert!(release_handle(&s, "nobody").unwrap().is_empty());
}

#[test]
fn release_held_with_writes_the_rest_only_with_the_release_and_its_guards() {
    use crate::store::Txn;
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    let a = alloc(&s, "n1", "a", 2, 0).unwrap();
    let held: BTreeMap<IpAddr, String> = a.ipv4.iter().map(|&x| (x, "a".to_string())).collect();
    s.commit(&{
        let mut t = Txn::default();
        t.put("record", b"1".to_vec());
        t
    })
    .unwrap();
    let record = s.get("record").unwrap().unwrap();
    // A guard that no longer holds: nothing is released, nothing written.
    let mut stale = Txn::default();
    stale.compare("record", record.mod_revision - 1);
    stale.delete("record");
    assert_eq!(release_held_with(&s, &held, &stale).unwrap(), None);
    assert_eq!(usage(&s).unwrap().pools[0].used, 2);
    assert!(s.get("record").unwrap().is_some());
    // Its guard holds: the release and the delete together.
    let mut fresh = Txn::default();
    fresh.compare("record", record.mod_revision);
    fresh.delete("record");
    let mut released = release_held_with(&s, &held, &fresh).unwrap().unwrap();
    released.sort();
    assert_eq!(released, a.ipv4);
    assert_eq!(usage(&s).unwrap().pools[0].used, 0);
    assert_eq!(s.get("record").unwrap(), None);
    // Nothing left to release: the rest is still written.
    let mut again = Txn::default();
    again.compare("record", 0);
    again.put("record", b"2".to_vec());
    assert_eq!(release_held_with(&s, &held, &again).unwrap(), Some(vec![]));
    assert!(s.get("record").unwrap().is_some());
}

#[test]
fn release_by_address_updates_the_handle_and_ignores_unknown() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    let a = alloc(&s, "n1", "a", 2, 0).unwrap();
    let released =
        release_addresses(&s, &[a.ipv4[0], ip("198.18.0.77"), ip("203.0.113.1")]).unwrap();
    assert_eq!(released, vec![a.ipv4[0]]);
    let handle: Handle = crate::store::get_json(&s, &keys::handle("a"))
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        handle.addresses.into_iter().collect::<Vec<_>>(),
        vec![a.ipv4[1]]
    );
    release_addresses(&s, &[a.ipv4[1]]).unwrap();
    assert_eq!(
        s.get(&keys::handle("a")).unwrap(),
        None,
        "an empty handle is deleted"
    );
}

#[test]
fn full_blocks_leave_the_free_index_and_come_back() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 30);
    let a = alloc(&s, "n1", "a", 4, 0).unwrap();
    assert!(s
        .list(&keys::free_blocks_of("n1", true), None)
        .unwrap()
        .is_empty());
    release_addresses(&s, &a.ipv4[..1]).unwrap();
    assert_eq!(
        s.list(&keys::free_blocks_of("n1", true), None)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(alloc(&s, "n1", "b", 1, 0).unwrap().ipv4, a.ipv4[..1]);
}

#[test]
fn default_pools_are_created_with_the_first_allocation_only() {
    let (_d, s) = store();
    let req = |uid, reserve| Request {
        node: "n1",
        uid,
        num_ipv4: 1,
        reserve,
        default_pools: true,
        ..Default::default()
    };
    // A failing request creates nothing, not even the default pools.
    let outside = [ip("198.51.100.1")];
    assert!(allocate(&s, &req("u0", &outside)).is_err());
    assert!(s.list("", None).unwrap().is_empty(), "nothing written");
    let got = allocate(&s, &req("u1", &[])).unwrap();
    assert!(got.ipv4[0].to_string().starts_with("192.168."), "{got:?}");
    let cidrs: Vec<String> = list_pools(&s)
        .unwrap()
        .iter()
        .map(|p| p.value.cidr.to_string())
        .collect();
    assert_eq!(cidrs.len(), 2);
    assert!(cidrs.contains(&DEFAULT_POOLS[0].to_string()));
    // With pools present, none are added.
    remove_pool(&s, &DEFAULT_POOLS[1].parse().unwrap()).unwrap();
    allocate(&s, &req("u2", &[])).unwrap();
    assert_eq!(list_pools(&s).unwrap().len(), 1);
}

#[test]
fn pools_refuse_overlap_and_removal_in_use() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    let err = add_pool(
        &s,
        &IpPool::new("198.18.0.128/25".parse().unwrap(), None).unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    alloc(&s, "n1", "a", 3, 0).unwrap();
    let err = remove_pool(&s, &"198.18.0.0/24".parse().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool 198.18.0.0/24 still has 3 addresses in use; release them first"
    );
    release_handle(&s, "a").unwrap();
    remove_pool(&s, &"198.18.0.0/24".parse().unwrap()).unwrap();
    assert!(
        s.list("", None).unwrap().is_empty(),
        "pool, blocks and index all gone"
    );
}

#[test]
fn disabled_pools_hand_out_nothing_new() {
    let (_d, s) = store();
    let mut pool = IpPool::new("198.18.0.0/24".parse().unwrap(), Some(26)).unwrap();
    pool.disabled = true;
    add_pool(&s, &pool).unwrap();
    assert!(matches!(
        alloc(&s, "n1", "a", 1, 0),
        Err(IpamError::Exhausted { .. })
    ));
}

#[test]
fn a_block_claimed_by_a_reservation_is_filled_first() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    let wanted = [ip("198.18.0.70")];
    let got = allocate(
        &s,
        &Request {
            node: "n1",
            uid: "u",
            num_ipv4: 1,
            num_ipv6: 0,
            reserve: &wanted,
            default_pools: false,
        },
    )
    .unwrap();
    assert_eq!(got.ipv4, vec![ip("198.18.0.64"), ip("198.18.0.70")]);
    assert_eq!(blocks_of(&s, "n1"), vec!["198.18.0.64/26"]);
}

#[test]
fn leaked_handles_are_released_unless_used_or_allocated_again() {
    use std::time::Duration;
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/24", 26);
    let used = alloc(&s, "n1", "used", 1, 0).unwrap().ipv4[0];
    let leaked = alloc(&s, "n1", "leaked", 2, 0).unwrap();
    alloc(&s, "n1", "again", 1, 0).unwrap();
    alloc(&s, "n2", "elsewhere", 1, 0).unwrap();
    let in_use = InUse {
        addresses: [used].into(),
        uids: Default::default(),
    };
    let found = |node: &str, grace: Duration| {
        let leaks = collect_leaks(&s, node, &in_use, grace, true).unwrap();
        let mut uids: Vec<String> = leaks.iter().map(|l| l.uid.clone()).collect();
        uids.sort();
        (leaks, uids)
    };
    assert!(
        found("n1", Duration::from_secs(600)).1.is_empty(),
        "all too young"
    );
    let (leaks, uids) = found("n1", Duration::ZERO);
    assert_eq!(uids, ["again", "leaked"]);
    assert_eq!(found("n2", Duration::ZERO).1, ["elsewhere"]);
    // "again" is allocated more between finding and releasing: kept.
    alloc(&s, "n1", "again", 1, 0).unwrap();
    for leak in &leaks {
        let released = assign::release_handle_at(&s, &leak.uid, Some(leak.revision)).unwrap();
        match leak.uid.as_str() {
            "leaked" => {
                assert_eq!(released, Some(leaked.ipv4.clone()));
            }
            _ => assert_eq!(released, None, "{} changed since found", leak.uid),
        }
    }
    assert_eq!(
        usage(&s).unwrap().pools[0].used,
        4,
        "used, again ×2, elsewhere"
    );
    // The next collection takes "again" (still unused), and only that.
    let taken = collect_leaks(&s, "n1", &in_use, Duration::ZERO, false).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].uid.as_str(), taken[0].addresses.len()),
        ("again", 2)
    );
    assert_eq!(holders(&s, &[used]).unwrap()[&used], "used");
}

#[test]
fn a_batch_commits_once_and_a_failing_request_changes_nothing() {
    let (_d, s) = store();
    with_pool(&s, "198.18.0.0/29", 29); // eight addresses
    let req = |uid: &'static str, v4: u32, reserve: &'static [IpAddr]| Request {
        node: "n1",
        uid,
        num_ipv4: v4,
        num_ipv6: 0,
        reserve,
        default_pools: false,
    };
    let first: &'static [IpAddr] = Box::leak(Box::new([ip("198.18.0.0")]));
    let before = s.revision().unwrap();
    let answers = allocate_many(
        &s,
        &[
            req("a", 3, &[]),
            req("too-many", 6, &[]), // only five left: refused whole
            req("taken", 0, first),  // "a" got it just before, in this batch
            req("b", 2, &[]),
            req("ipv6", 0, &[]),
        ],
    )
    .unwrap();
    let ok: Vec<Vec<IpAddr>> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().map(|a| a.ipv4.clone()))
        .collect();
    assert_eq!(
        ok,
        vec![
            vec![ip("198.18.0.0"), ip("198.18.0.1"), ip("198.18.0.2")],
            vec![ip("198.18.0.3"), ip("198.18.0.4")],
            vec![],
        ]
    );
    assert!(matches!(
        answers[1],
        Err(IpamError::Exhausted {
            asked: 6,
            available: 5,
            ..
        })
    ));
    assert!(matches!(answers[2], Err(IpamError::InUse(a)) if a == ip("198.18.0.0")));
    // One transaction for the batch (etcd's revision also counts other
    // tests' writes, so only "at least one" holds there).
    let after = s.revision().unwrap();
    assert!(after > before);
    if testing::kind_of_module(module_path!()) == testing::Kind::Sqlite {
        assert_eq!(after, before + 1, "one commit for the whole batch");
    }
    let held = |uid: &str| release_handle(&s, uid).unwrap().len();
    assert_eq!(
        (held("a"), held("b"), held("too-many"), held("taken")),
        (3, 2, 0, 0)
    );
}
