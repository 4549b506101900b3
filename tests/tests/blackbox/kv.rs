//! Put, Range and DeleteRange with etcd's semantics: revisions, versions, history, range
//! options, compaction and response headers.

use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, ConnectOptions, DeleteOptions, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp,
};

use crate::harness::{keys, put, revision, Node, NodeOptions};

/// The keys a range read returns.
async fn keys_in(c: &mut Client, key: &str, options: GetOptions) -> Vec<String> {
    keys(c.get(key, Some(options)).await.expect("get").kvs())
}

/// (create revision, mod revision, version) of `key`, if it exists.
async fn meta(c: &mut Client, key: &str) -> Option<(i64, i64, i64)> {
    let got = c.get(key, None).await.expect("get");
    got.kvs()
        .first()
        .map(|kv| (kv.create_revision(), kv.mod_revision(), kv.version()))
}

#[tokio::test]
async fn fresh_store_is_at_revision_one_and_each_write_adds_one() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;

    let empty = c.get("missing", None).await.expect("get");
    assert_eq!(revision(empty.header()), 1);
    assert!(empty.kvs().is_empty());
    assert_eq!(empty.count(), 0);

    assert_eq!(put(&mut c, "a", "1").await, 2);
    assert_eq!(put(&mut c, "a", "2").await, 3);
    assert_eq!(put(&mut c, "b", "1").await, 4);
    let deleted = c.delete("a", None).await.expect("delete");
    assert_eq!(revision(deleted.header()), 5);
}

#[tokio::test]
async fn put_then_get_returns_the_value_and_its_metadata() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let rev = put(&mut c, "foo", "bar").await;

    let got = c.get("foo", None).await.expect("get");
    assert_eq!(revision(got.header()), rev);
    assert_eq!((got.count(), got.more()), (1, false));
    let [kv] = got.kvs() else {
        panic!("expected one key, got {:?}", got.kvs());
    };
    assert_eq!((kv.key(), kv.value()), (&b"foo"[..], &b"bar"[..]));
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (rev, rev, 1, 0)
    );
}

#[tokio::test]
async fn keys_and_values_are_arbitrary_bytes() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let key = vec![0xff_u8, 0x00, 0x01, b'k'];
    let value = vec![0x00_u8, 0xfe, 0xff, 0x80];
    c.put(key.clone(), value.clone(), None).await.expect("put");

    let got = c.get(key.clone(), None).await.expect("get");
    let [kv] = got.kvs() else {
        panic!("expected one key, got {:?}", got.kvs());
    };
    assert_eq!((kv.key(), kv.value()), (&key[..], &value[..]));
}

#[tokio::test]
async fn put_with_prev_kv_returns_the_previous_pair() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let with_prev = || Some(PutOptions::new().with_prev_key());

    let first = c.put("k", "v1", with_prev()).await.expect("put v1");
    assert!(first.prev_key().is_none(), "a new key has no previous pair");
    let first_rev = revision(first.header());

    let second = c.put("k", "v2", with_prev()).await.expect("put v2");
    let prev = second.prev_key().expect("the previous pair");
    assert_eq!((prev.key(), prev.value()), (&b"k"[..], &b"v1"[..]));
    assert_eq!(
        (prev.create_revision(), prev.mod_revision(), prev.version()),
        (first_rev, first_rev, 1)
    );

    let third = c.put("k", "v3", None).await.expect("put v3");
    assert!(third.prev_key().is_none(), "prev_kv was not asked for");
}

#[tokio::test]
async fn delete_with_prev_kv_returns_the_deleted_pairs() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let rev_a = put(&mut c, "p/a", "1").await;
    let rev_b = put(&mut c, "p/b", "2").await;
    put(&mut c, "q", "3").await;

    let options = DeleteOptions::new().with_prefix().with_prev_key();
    let deleted = c.delete("p/", Some(options)).await.expect("delete");
    assert_eq!(deleted.deleted(), 2);
    let prev = deleted.prev_kvs();
    assert_eq!(keys(prev), ["p/a", "p/b"]);
    assert_eq!((prev[0].value(), prev[1].value()), (&b"1"[..], &b"2"[..]));
    assert_eq!(
        (prev[0].mod_revision(), prev[1].mod_revision()),
        (rev_a, rev_b)
    );

    let plain = c.delete("q", None).await.expect("delete q");
    assert_eq!(plain.deleted(), 1);
    assert!(plain.prev_kvs().is_empty(), "prev_kv was not asked for");
}

#[tokio::test]
async fn put_with_ignore_value_keeps_the_current_value() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let created = put(&mut c, "k", "v1").await;

    let options = PutOptions::new().with_ignore_value();
    let updated = c.put("k", "", Some(options)).await.expect("put");
    let updated = revision(updated.header());
    assert_eq!(updated, created + 1);

    let got = c.get("k", None).await.expect("get");
    let [kv] = got.kvs() else {
        panic!("expected one key, got {:?}", got.kvs());
    };
    assert_eq!(kv.value(), b"v1");
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (created, updated, 2)
    );
}

#[tokio::test]
async fn put_with_ignore_lease_keeps_the_current_lease_and_a_plain_put_drops_it() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    c.put("k", "v1", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");

    let options = PutOptions::new().with_ignore_lease();
    c.put("k", "v2", Some(options)).await.expect("put");
    let got = c.get("k", None).await.expect("get");
    assert_eq!(
        (got.kvs()[0].value(), got.kvs()[0].lease()),
        (&b"v2"[..], lease)
    );

    c.put("k", "v3", None).await.expect("plain put");
    let got = c.get("k", None).await.expect("get");
    assert_eq!(
        (got.kvs()[0].value(), got.kvs()[0].lease()),
        (&b"v3"[..], 0)
    );
}

#[tokio::test]
async fn range_with_prefix_returns_matching_keys_in_key_order() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for key in ["p/3", "a", "p/1", "q", "p/2", "p", "p0"] {
        put(&mut c, key, "v").await;
    }

    let got = c
        .get("p/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(keys(got.kvs()), ["p/1", "p/2", "p/3"]);
    assert_eq!((got.count(), got.more()), (3, false));
}

#[tokio::test]
async fn range_end_bounds_the_range_and_nul_means_every_key_from_the_start() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for key in ["a", "b", "c", "d"] {
        put(&mut c, key, "v").await;
    }

    assert_eq!(
        keys_in(&mut c, "b", GetOptions::new().with_range("d")).await,
        ["b", "c"]
    );
    assert_eq!(
        keys_in(&mut c, "b", GetOptions::new().with_range(vec![0_u8])).await,
        ["b", "c", "d"]
    );
    assert_eq!(
        keys_in(&mut c, "b", GetOptions::new().with_from_key()).await,
        ["b", "c", "d"]
    );
    assert_eq!(
        keys_in(&mut c, "", GetOptions::new().with_all_keys()).await,
        ["a", "b", "c", "d"]
    );
    assert!(keys_in(&mut c, "c", GetOptions::new().with_range("b"))
        .await
        .is_empty());
}

#[tokio::test]
async fn range_limit_sets_more_and_keeps_the_full_count() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for i in 1..=5 {
        put(&mut c, &format!("l/{i}"), "v").await;
    }

    for (limit, expected, more) in [
        (2, vec!["l/1", "l/2"], true),
        (4, vec!["l/1", "l/2", "l/3", "l/4"], true),
        (5, vec!["l/1", "l/2", "l/3", "l/4", "l/5"], false),
        (6, vec!["l/1", "l/2", "l/3", "l/4", "l/5"], false),
        (0, vec!["l/1", "l/2", "l/3", "l/4", "l/5"], false),
    ] {
        let options = GetOptions::new().with_prefix().with_limit(limit);
        let got = c.get("l/", Some(options)).await.expect("get");
        assert_eq!(keys(got.kvs()), expected, "limit {limit}");
        assert_eq!((got.more(), got.count()), (more, 5), "limit {limit}");
    }
}

#[tokio::test]
async fn range_at_a_past_revision_sees_the_store_as_it_was() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let r1 = put(&mut c, "k", "v1").await;
    let r2 = put(&mut c, "k", "v2").await;
    let r3 = revision(c.delete("k", None).await.expect("delete").header());
    let r4 = put(&mut c, "k", "v3").await;
    let r5 = put(&mut c, "j", "x").await;

    let at = |rev: i64| Some(GetOptions::new().with_revision(rev));
    for (rev, value, create, version) in [(r1, "v1", r1, 1), (r2, "v2", r1, 2), (r4, "v3", r4, 1)] {
        let got = c.get("k", at(rev)).await.expect("historical get");
        assert_eq!(
            revision(got.header()),
            r5,
            "the header carries the current revision"
        );
        let [kv] = got.kvs() else {
            panic!("expected k at revision {rev}, got {:?}", got.kvs());
        };
        assert_eq!(kv.value(), value.as_bytes(), "revision {rev}");
        assert_eq!(
            (kv.create_revision(), kv.mod_revision(), kv.version()),
            (create, rev, version),
            "revision {rev}"
        );
    }

    let deleted = c.get("k", at(r3)).await.expect("get at the delete");
    assert!(deleted.kvs().is_empty(), "k was deleted at revision {r3}");
    assert_eq!(deleted.count(), 0);

    let all = |rev: i64| Some(GetOptions::new().with_all_keys().with_revision(rev));
    assert_eq!(keys(c.get("", all(r4)).await.expect("get").kvs()), ["k"]);
    assert_eq!(
        keys(c.get("", all(r5)).await.expect("get").kvs()),
        ["j", "k"]
    );
}

#[tokio::test]
async fn range_sorts_by_every_target_in_both_orders() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    // Every key is always written with the same value; the writes are chosen so that each
    // target orders the keys differently:
    //   create order b d a c; versions a=4 b=2 c=3 d=1; last writes d b a c;
    //   values c=v1 d=v2 a=v3 b=v4.
    let value = |key: &str| match key {
        "a" => "v3",
        "b" => "v4",
        "c" => "v1",
        _ => "v2",
    };
    for key in ["b", "d", "a", "c", "c", "a", "a", "b", "a", "c"] {
        put(&mut c, &format!("s/{key}"), value(key)).await;
    }

    let cases = [
        (SortTarget::Key, SortOrder::Ascend, "abcd"),
        (SortTarget::Key, SortOrder::Descend, "dcba"),
        (SortTarget::Create, SortOrder::Ascend, "bdac"),
        (SortTarget::Create, SortOrder::Descend, "cadb"),
        (SortTarget::Mod, SortOrder::Ascend, "dbac"),
        (SortTarget::Mod, SortOrder::Descend, "cabd"),
        (SortTarget::Version, SortOrder::Ascend, "dbca"),
        (SortTarget::Version, SortOrder::Descend, "acbd"),
        (SortTarget::Value, SortOrder::Ascend, "cdab"),
        (SortTarget::Value, SortOrder::Descend, "badc"),
        // etcd sorts ascending when a target other than the key comes with no order.
        (SortTarget::Create, SortOrder::None, "bdac"),
    ];
    for (target, order, expected) in cases {
        let options = GetOptions::new().with_prefix().with_sort(target, order);
        let got = c.get("s/", Some(options)).await.expect("sorted get");
        let order_seen: String = keys(got.kvs()).iter().map(|k| &k[2..]).collect();
        assert_eq!(order_seen, expected, "sort by {target:?} {order:?}");
    }

    // The limit applies after sorting.
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(2);
    let got = c.get("s/", Some(options)).await.expect("sorted get");
    assert_eq!(keys(got.kvs()), ["s/c", "s/a"]);
    assert_eq!((got.more(), got.count()), (true, 4));
}

#[tokio::test]
async fn keys_only_omits_values_and_count_only_omits_pairs() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let r1 = put(&mut c, "k/1", "one").await;
    let r2 = put(&mut c, "k/2", "two").await;

    let options = GetOptions::new().with_prefix().with_keys_only();
    let got = c.get("k/", Some(options)).await.expect("keys only");
    assert_eq!(keys(got.kvs()), ["k/1", "k/2"]);
    assert!(got.kvs().iter().all(|kv| kv.value().is_empty()));
    let mods: Vec<i64> = got.kvs().iter().map(|kv| kv.mod_revision()).collect();
    assert_eq!(mods, [r1, r2]);
    assert_eq!(got.count(), 2);

    let options = GetOptions::new().with_prefix().with_count_only();
    let got = c.get("k/", Some(options)).await.expect("count only");
    assert!(got.kvs().is_empty(), "count_only returns no pairs");
    assert_eq!((got.count(), got.more()), (2, false));
}

#[tokio::test]
async fn revision_filters_select_keys_by_mod_and_create_revision() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "f/a", "1").await; // a: created first, modified last
    let rb = put(&mut c, "f/b", "1").await;
    let rc = put(&mut c, "f/c", "1").await;
    put(&mut c, "f/a", "2").await;

    let prefix = || GetOptions::new().with_prefix();
    let cases = [
        (
            "min_mod",
            prefix().with_min_mod_revision(rc),
            vec!["f/a", "f/c"],
        ),
        (
            "max_mod",
            prefix().with_max_mod_revision(rc),
            vec!["f/b", "f/c"],
        ),
        (
            "min_create",
            prefix().with_min_create_revision(rb),
            vec!["f/b", "f/c"],
        ),
        (
            "max_create",
            prefix().with_max_create_revision(rb),
            vec!["f/a", "f/b"],
        ),
        (
            "min_mod and max_create",
            prefix()
                .with_min_mod_revision(rc)
                .with_max_create_revision(rb),
            vec!["f/a"],
        ),
    ];
    for (name, options, expected) in cases {
        let got = c.get("f/", Some(options)).await.expect("filtered get");
        assert_eq!(keys(got.kvs()), expected, "{name}");
        // As in etcd, the count is of the whole range, before the filters.
        assert_eq!(got.count(), 3, "{name}");
    }
}

#[tokio::test]
async fn serializable_read_sees_an_acknowledged_write() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let rev = put(&mut c, "k", "v").await;

    let options = GetOptions::new().with_serializable();
    let got = c.get("k", Some(options)).await.expect("serializable get");
    assert_eq!(revision(got.header()), rev);
    assert_eq!(keys(got.kvs()), ["k"]);
    assert_eq!(got.kvs()[0].value(), b"v");
}

#[tokio::test]
async fn create_revision_mod_revision_and_version_follow_put_delete_put() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;

    let r1 = put(&mut c, "k", "a").await;
    assert_eq!(meta(&mut c, "k").await, Some((r1, r1, 1)));
    let r2 = put(&mut c, "k", "b").await;
    assert_eq!(meta(&mut c, "k").await, Some((r1, r2, 2)));

    let deleted = c.delete("k", None).await.expect("delete");
    assert_eq!((deleted.deleted(), revision(deleted.header())), (1, r2 + 1));
    assert_eq!(meta(&mut c, "k").await, None);

    let r4 = put(&mut c, "k", "c").await;
    assert_eq!(r4, r2 + 2);
    assert_eq!(
        meta(&mut c, "k").await,
        Some((r4, r4, 1)),
        "a key put again after a delete starts a new life"
    );
}

#[tokio::test]
async fn delete_that_matches_nothing_does_not_change_the_revision() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let rev = put(&mut c, "x", "1").await;

    let missing = c.delete("nothing", None).await.expect("delete");
    assert_eq!((missing.deleted(), revision(missing.header())), (0, rev));
    let options = DeleteOptions::new().with_prefix();
    let empty_range = c.delete("zzz/", Some(options)).await.expect("delete");
    assert_eq!(
        (empty_range.deleted(), revision(empty_range.header())),
        (0, rev)
    );

    assert_eq!(revision(c.get("x", None).await.expect("get").header()), rev);
    assert_eq!(put(&mut c, "y", "1").await, rev + 1);
}

#[tokio::test]
async fn delete_range_removes_every_key_in_one_revision_and_counts_them() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for key in ["d/1", "d/2", "d/3", "dx", "e", "f"] {
        put(&mut c, key, "v").await;
    }
    let before = put(&mut c, "d/4", "v").await;

    let options = DeleteOptions::new().with_prefix();
    let deleted = c.delete("d/", Some(options)).await.expect("delete prefix");
    assert_eq!(
        (deleted.deleted(), revision(deleted.header())),
        (4, before + 1)
    );
    let all = || Some(GetOptions::new().with_all_keys());
    assert_eq!(
        keys(c.get("", all()).await.expect("get").kvs()),
        ["dx", "e", "f"]
    );

    let options = DeleteOptions::new().with_range("f");
    let deleted = c.delete("dx", Some(options)).await.expect("delete range");
    assert_eq!(
        (deleted.deleted(), revision(deleted.header())),
        (2, before + 2)
    );
    assert_eq!(keys(c.get("", all()).await.expect("get").kvs()), ["f"]);

    let history = GetOptions::new().with_prefix().with_revision(before);
    let got = c.get("d/", Some(history)).await.expect("historical get");
    assert_eq!(keys(got.kvs()), ["d/1", "d/2", "d/3", "d/4"]);
}

#[tokio::test]
async fn compaction_keeps_its_revision_and_later_ones_readable() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "old", "kept").await;
    put(&mut c, "gone", "x").await;
    c.delete("gone", None).await.expect("delete");
    put(&mut c, "k", "v1").await;
    let r2 = put(&mut c, "k", "v2").await;
    let r3 = put(&mut c, "k", "v3").await;

    let compacted = c
        .compact(r2, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    assert_eq!(revision(compacted.header()), r3);

    let all_at = |rev: i64| Some(GetOptions::new().with_all_keys().with_revision(rev));
    let at_r2 = c.get("", all_at(r2)).await.expect("get at the compaction");
    assert_eq!(keys(at_r2.kvs()), ["k", "old"]);
    let values: Vec<&[u8]> = at_r2.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(values, [&b"v2"[..], &b"kept"[..]]);
    let at_r3 = c.get("k", Some(GetOptions::new().with_revision(r3))).await;
    assert_eq!(at_r3.expect("get after").kvs()[0].value(), b"v3");
    let latest = c.get("k", None).await.expect("get latest");
    assert_eq!(
        (latest.kvs()[0].value(), latest.kvs()[0].version()),
        (&b"v3"[..], 3)
    );
}

#[tokio::test]
async fn response_headers_carry_cluster_member_term_and_revision() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let put_response = c.put("h", "1", None).await.expect("put");
    let header = put_response.header().expect("put header");
    let (cluster, member, term, rev) = (
        header.cluster_id(),
        header.member_id(),
        header.raft_term(),
        header.revision(),
    );
    assert!(cluster != 0 && member != 0 && term != 0, "{header:?}");
    assert_eq!(rev, 2);

    let status = c.status().await.expect("status");
    assert_eq!(status.leader(), member, "a single member leads");
    assert_eq!(status.raft_term(), term);
    let members = c.member_list().await.expect("member list");
    let ids: Vec<u64> = members.members().iter().map(|m| m.id()).collect();
    assert_eq!(ids, [member]);
    // etcd leaves the revision of a member list header at 0; the rest is filled in.
    let list_header = members.header().expect("member list header");
    assert_eq!(
        (
            list_header.cluster_id(),
            list_header.member_id(),
            list_header.raft_term()
        ),
        (cluster, member, term)
    );

    let get = c.get("h", None).await.expect("get");
    let txn = c
        .txn(Txn::new().and_then([TxnOp::put("t", "1", None)]))
        .await
        .expect("txn");
    let delete = c.delete("h", None).await.expect("delete");
    let compact = c.compact(2, None).await.expect("compact");
    let headers = [
        ("status", status.header(), rev),
        ("get", get.header(), rev),
        ("txn", txn.header(), rev + 1),
        ("delete", delete.header(), rev + 2),
        ("compact", compact.header(), rev + 2),
    ];
    for (what, header, expected_rev) in headers {
        let header = header.unwrap_or_else(|| panic!("{what} has no header"));
        assert_eq!(
            (header.cluster_id(), header.member_id(), header.raft_term()),
            (cluster, member, term),
            "{what}"
        );
        assert_eq!(header.revision(), expected_rev, "{what}");
    }
}

/// clientv3's `WithRequireLeader` (kube-apiserver's watches carry it): a member that has a
/// leader serves such requests and streams as any other.
#[tokio::test]
async fn requests_and_streams_that_require_a_leader_are_served_by_a_member_with_one() {
    let node = Node::start(NodeOptions::default()).await;
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(10))
        .with_require_leader(true);
    let mut c = Client::connect([node.endpoint()], Some(options))
        .await
        .expect("connect with require-leader");

    let mut events = c
        .watch("k", None)
        .await
        .expect("a watch requiring a leader");
    c.put("k", "v", None)
        .await
        .expect("a put requiring a leader");
    let got = c.get("k", None).await.expect("a get requiring a leader");
    assert_eq!(got.kvs()[0].value(), b"v");
    let answer = loop {
        let answer = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("the watch delivers within 10 s")
            .expect("the watch stays open")
            .expect("a response");
        if !answer.events().is_empty() {
            break answer;
        }
    };
    assert_eq!(answer.events()[0].kv().unwrap().value(), b"v");

    let lease = c.lease_grant(10, None).await.expect("grant").id();
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.expect("keepalive");
    keeper.keep_alive().await.expect("send a keepalive");
    let renewed = answers.message().await.expect("an answer").expect("one");
    assert_eq!(renewed.ttl(), 10);
}
