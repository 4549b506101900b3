//! The store's etcd semantics, one behaviour per test, through the public API only.

use super::*;
use crate::proto::cairnpb::raft_request::Request as Command;
use crate::proto::cairnpb::raft_response::Response as Reply;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    request_op, response_op, AlarmRequest, AlarmType, CompactionRequest, Compare,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp, ResponseHeader,
    ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

mod leases;
mod model;

pub(super) fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb")).unwrap();
    (dir, store)
}

pub(super) fn apply(store: &Store, command: Command) -> Result<Reply, KvError> {
    let mut results = store.apply_batch(&[command], b"applied").unwrap();
    assert_eq!(results.len(), 1);
    results.pop().unwrap()
}

pub(super) fn put_request(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..PutRequest::default()
    }
}

fn put(store: &Store, key: &[u8], value: &[u8]) -> PutResponse {
    expect_put(apply(store, Command::Put(put_request(key, value))))
}

fn expect_put(reply: Result<Reply, KvError>) -> PutResponse {
    match reply {
        Ok(Reply::Put(response)) => response,
        other => panic!("expected a put response, got {other:?}"),
    }
}

pub(super) fn delete_request(key: &[u8], range_end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    }
}

fn delete(store: &Store, key: &[u8], range_end: &[u8]) -> DeleteRangeResponse {
    match apply(store, Command::DeleteRange(delete_request(key, range_end))) {
        Ok(Reply::DeleteRange(response)) => response,
        other => panic!("expected a delete response, got {other:?}"),
    }
}

fn txn(store: &Store, request: TxnRequest) -> Result<TxnResponse, KvError> {
    apply(store, Command::Txn(request)).map(|reply| match reply {
        Reply::Txn(response) => response,
        other => panic!("expected a txn response, got {other:?}"),
    })
}

fn compact(store: &Store, revision: i64) -> Result<Reply, KvError> {
    apply(
        store,
        Command::Compaction(CompactionRequest {
            revision,
            physical: false,
        }),
    )
}

pub(super) fn range_request(key: &[u8], range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..RangeRequest::default()
    }
}

fn get(store: &Store, key: &[u8]) -> Option<KeyValue> {
    let mut response = store.range(&range_request(key, b"")).unwrap();
    assert!(response.kvs.len() <= 1);
    response.kvs.pop()
}

fn keys(response: &RangeResponse) -> Vec<&[u8]> {
    response.kvs.iter().map(|kv| kv.key.as_slice()).collect()
}

fn header_revision(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().expect("a header").revision
}

pub(super) fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

pub(super) fn op_put(key: &[u8], value: &[u8]) -> RequestOp {
    op(request_op::Request::RequestPut(put_request(key, value)))
}

fn op_range(key: &[u8], range_end: &[u8]) -> RequestOp {
    op(request_op::Request::RequestRange(range_request(
        key, range_end,
    )))
}

pub(super) fn op_delete(key: &[u8], range_end: &[u8]) -> RequestOp {
    op(request_op::Request::RequestDeleteRange(delete_request(
        key, range_end,
    )))
}

pub(super) fn compare(
    key: &[u8],
    target: CompareTarget,
    result: CompareResult,
    operand: TargetUnion,
) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.to_vec(),
        target_union: Some(operand),
        range_end: Vec::new(),
    }
}

fn response_range(response: &ResponseOp) -> &RangeResponse {
    match &response.response {
        Some(response_op::Response::ResponseRange(range)) => range,
        other => panic!("expected a range response, got {other:?}"),
    }
}

fn alarm(store: &Store, action: AlarmAction, member_id: u64, alarm: AlarmType) -> Vec<AlarmMember> {
    match apply(
        store,
        Command::Alarm(AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }),
    ) {
        Ok(Reply::Alarm(response)) => response.alarms,
        other => panic!("expected an alarm response, got {other:?}"),
    }
}

#[test]
fn store_is_shared_across_threads_by_cloning() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Store>();
}

#[test]
fn new_store_is_at_revision_one_and_never_compacted() {
    let (_dir, store) = open_temp();
    assert_eq!(store.current_revision(), 1);
    assert_eq!(store.compact_revision(), -1);
    assert_eq!(store.raft_meta(), None);
    let response = store.range(&range_request(b"a", b"\0")).unwrap();
    assert_eq!((header_revision(&response.header), response.count), (1, 0));
}

#[test]
fn put_creates_version_one_at_the_next_revision() {
    let (_dir, store) = open_temp();
    let response = put(&store, b"k", b"v");
    assert_eq!(header_revision(&response.header), 2);
    assert_eq!(response.prev_kv, None);
    assert_eq!(
        get(&store, b"k").unwrap(),
        KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"v".to_vec(),
            lease: 0,
        }
    );
    assert_eq!(store.current_revision(), 2);
    assert_eq!(store.raft_meta().as_deref(), Some(&b"applied"[..]));
}

#[test]
fn put_again_increments_version_and_keeps_create_revision() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"v1");
    put(&store, b"other", b"x");
    put(&store, b"k", b"v2");
    let kv = get(&store, b"k").unwrap();
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.as_slice()
        ),
        (2, 4, 2, &b"v2"[..])
    );
}

#[test]
fn delete_ends_the_generation_and_the_next_put_starts_a_new_one() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"v1");
    put(&store, b"k", b"v2");
    let deleted = delete(&store, b"k", b"");
    assert_eq!((deleted.deleted, header_revision(&deleted.header)), (1, 4));
    assert_eq!(get(&store, b"k"), None);
    put(&store, b"k", b"v3");
    let kv = get(&store, b"k").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn delete_range_matching_nothing_keeps_the_revision() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"1");
    let deleted = delete(&store, b"b", b"c");
    assert_eq!((deleted.deleted, header_revision(&deleted.header)), (0, 2));
    assert_eq!(store.current_revision(), 2);
}

#[test]
fn delete_range_counts_deleted_keys_and_returns_prev_kvs() {
    let (_dir, store) = open_temp();
    for key in [&b"a"[..], b"b", b"c", b"d"] {
        put(&store, key, key);
    }
    let mut request = delete_request(b"b", b"d");
    request.prev_kv = true;
    let response = match apply(&store, Command::DeleteRange(request)) {
        Ok(Reply::DeleteRange(response)) => response,
        other => panic!("{other:?}"),
    };
    assert_eq!(response.deleted, 2);
    let prev: Vec<_> = response
        .prev_kvs
        .iter()
        .map(|kv| kv.value.as_slice())
        .collect();
    assert_eq!(prev, [&b"b"[..], b"c"]);
    assert_eq!(header_revision(&response.header), 6);
    let rest = store.range(&range_request(b"a", b"\0")).unwrap();
    assert_eq!(keys(&rest), [&b"a"[..], b"d"]);

    // Both tombstones share the revision, with sub revisions 0 and 1.
    let history = store.range(&RangeRequest {
        revision: 5,
        ..range_request(b"a", b"\0")
    });
    assert_eq!(history.unwrap().count, 4);
}

#[test]
fn put_prev_kv_returns_the_replaced_version() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"old");
    let response = expect_put(apply(
        &store,
        Command::Put(PutRequest {
            prev_kv: true,
            ..put_request(b"k", b"new")
        }),
    ));
    let prev = response.prev_kv.unwrap();
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"old"[..], 2));
}

#[test]
fn put_ignore_value_keeps_the_stored_value() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"kept");
    expect_put(apply(
        &store,
        Command::Put(PutRequest {
            ignore_value: true,
            ignore_lease: true,
            ..put_request(b"k", b"")
        }),
    ));
    let kv = get(&store, b"k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"kept"[..], 2));
}

#[test]
fn put_ignore_value_on_a_missing_key_is_key_not_found() {
    let (_dir, store) = open_temp();
    for request in [
        PutRequest {
            ignore_value: true,
            ..put_request(b"k", b"")
        },
        PutRequest {
            ignore_lease: true,
            ..put_request(b"k", b"v")
        },
    ] {
        let error = apply(&store, Command::Put(request)).unwrap_err();
        assert!(matches!(error, KvError::KeyNotFound), "{error:?}");
    }
    assert_eq!(store.current_revision(), 1);
    assert_eq!(get(&store, b"k"), None);
}

#[test]
fn put_with_a_lease_is_lease_not_found() {
    let (_dir, store) = open_temp();
    let error = apply(
        &store,
        Command::Put(PutRequest {
            lease: 42,
            ..put_request(b"k", b"v")
        }),
    )
    .unwrap_err();
    assert!(matches!(error, KvError::LeaseNotFound), "{error:?}");
    assert_eq!(store.current_revision(), 1);
}

#[test]
fn range_end_selects_one_key_an_interval_or_everything_after() {
    let (_dir, store) = open_temp();
    for key in [&b"a"[..], b"ab", b"abc", b"b", b"c"] {
        put(&store, key, b"v");
    }
    let range = |key: &[u8], end: &[u8]| store.range(&range_request(key, end)).unwrap();
    assert_eq!(keys(&range(b"ab", b"")), [&b"ab"[..]]);
    assert_eq!(keys(&range(b"ab", b"ac")), [&b"ab"[..], b"abc"]);
    assert_eq!(keys(&range(b"ab", b"\0")), [&b"ab"[..], b"abc", b"b", b"c"]);
    assert_eq!(keys(&range(b"", b"\0")).len(), 5);
    assert_eq!(range(b"c", b"a").count, 0);
    assert_eq!(range(b"zz", b"").count, 0);
}

#[test]
fn range_at_a_historical_revision_sees_the_versions_of_then() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"v1"); // 2
    put(&store, b"k", b"v2"); // 3
    delete(&store, b"k", b""); // 4
    put(&store, b"j", b"x"); // 5
    let at = |revision: i64| {
        store
            .range(&RangeRequest {
                revision,
                ..range_request(b"a", b"\0")
            })
            .unwrap()
    };
    assert_eq!(at(1).count, 0);
    assert_eq!(at(2).kvs[0].value, b"v1");
    assert_eq!(at(3).kvs[0].value, b"v2");
    assert_eq!(at(4).count, 0);
    assert_eq!(keys(&at(5)), [&b"j"[..]]);
    // The header still carries the current revision.
    assert_eq!(header_revision(&at(2).header), 5);
}

#[test]
fn range_at_a_compacted_revision_is_out_of_range() {
    let (_dir, store) = open_temp();
    for value in [&b"1"[..], b"2", b"3"] {
        put(&store, b"k", value);
    }
    compact(&store, 3).unwrap();
    let at = |revision: i64| {
        store.range(&RangeRequest {
            revision,
            ..range_request(b"k", b"")
        })
    };
    assert!(matches!(at(2), Err(KvError::Compacted)));
    assert_eq!(at(3).unwrap().kvs[0].value, b"2");
    assert_eq!(at(0).unwrap().kvs[0].value, b"3");
}

#[test]
fn range_at_a_future_revision_is_future_revision() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"v");
    let error = store
        .range(&RangeRequest {
            revision: 3,
            ..range_request(b"k", b"")
        })
        .unwrap_err();
    assert!(matches!(error, KvError::FutureRevision));
}

#[test]
fn range_limit_sets_more_and_count_counts_everything() {
    let (_dir, store) = open_temp();
    for key in [&b"a"[..], b"b", b"c"] {
        put(&store, key, b"v");
    }
    let limited = |limit: i64| {
        store
            .range(&RangeRequest {
                limit,
                ..range_request(b"a", b"\0")
            })
            .unwrap()
    };
    let two = limited(2);
    assert_eq!(
        (keys(&two), two.more, two.count),
        (vec![&b"a"[..], b"b"], true, 3)
    );
    let three = limited(3);
    assert_eq!((three.kvs.len(), three.more, three.count), (3, false, 3));
    let unlimited = limited(0);
    assert_eq!((unlimited.kvs.len(), unlimited.more), (3, false));
}

#[test]
fn range_sorts_by_each_target_in_each_order() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"3"); // create 2
    put(&store, b"b", b"1"); // create 3
    put(&store, b"c", b"2"); // create 4
    put(&store, b"a", b"4"); // a: version 2, mod 5
    put(&store, b"b", b"5"); // b: version 2, mod 6
    put(&store, b"b", b"6"); // b: version 3, mod 7
    let sorted = |order: SortOrder, target: SortTarget| {
        let response = store
            .range(&RangeRequest {
                sort_order: order as i32,
                sort_target: target as i32,
                ..range_request(b"a", b"\0")
            })
            .unwrap();
        keys(&response)
            .into_iter()
            .map(|key| key[0] as char)
            .collect::<String>()
    };
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), "cba");
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Key), "abc");
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Version), "bac");
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Create), "abc");
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Create), "cba");
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Mod), "bac");
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Value), "cab");
    // No order but a target other than the key: ascending, as etcd does.
    assert_eq!(sorted(SortOrder::None, SortTarget::Value), "cab");
    assert_eq!(sorted(SortOrder::None, SortTarget::Version), "cab");
}

#[test]
fn range_with_limit_sorts_everything_before_trimming_when_an_order_is_given() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"3");
    put(&store, b"b", b"1");
    put(&store, b"c", b"2");
    let response = store
        .range(&RangeRequest {
            limit: 2,
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Value as i32,
            ..range_request(b"a", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&response), [&b"b"[..], b"c"]);
    assert_eq!((response.more, response.count), (true, 3));
}

#[test]
fn range_with_limit_and_only_a_sort_target_trims_by_key_first() {
    // etcd 3.5 reads limit + 1 keys in key order when the order is NONE, then sorts them.
    let (_dir, store) = open_temp();
    put(&store, b"a", b"3");
    put(&store, b"b", b"2");
    put(&store, b"c", b"1");
    put(&store, b"d", b"0");
    let response = store
        .range(&RangeRequest {
            limit: 2,
            sort_target: SortTarget::Value as i32,
            ..range_request(b"a", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&response), [&b"c"[..], b"b"]);
    assert_eq!((response.more, response.count), (true, 4));
}

#[test]
fn range_keys_only_drops_values_and_count_only_drops_kvs() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"b", b"2");
    let keys_only = store
        .range(&RangeRequest {
            keys_only: true,
            ..range_request(b"a", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&keys_only), [&b"a"[..], b"b"]);
    assert!(keys_only
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
    let count_only = store
        .range(&RangeRequest {
            count_only: true,
            limit: 1,
            ..range_request(b"a", b"\0")
        })
        .unwrap();
    assert_eq!(
        (count_only.kvs.len(), count_only.count, count_only.more),
        (0, 2, false)
    );
}

#[test]
fn range_revision_filters_prune_kvs_but_not_count() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"1"); // 2
    put(&store, b"b", b"1"); // 3
    put(&store, b"c", b"1"); // 4
    put(&store, b"a", b"2"); // 5: a created 2, mod 5
    let filtered = |request: RangeRequest| store.range(&request).unwrap();
    let all = range_request(b"a", b"\0");
    let response = filtered(RangeRequest {
        min_mod_revision: 4,
        ..all.clone()
    });
    assert_eq!(
        (keys(&response), response.count),
        (vec![&b"a"[..], b"c"], 3)
    );
    let response = filtered(RangeRequest {
        max_mod_revision: 3,
        ..all.clone()
    });
    assert_eq!(keys(&response), [&b"b"[..]]);
    let response = filtered(RangeRequest {
        min_create_revision: 3,
        ..all.clone()
    });
    assert_eq!(keys(&response), [&b"b"[..], b"c"]);
    let response = filtered(RangeRequest {
        max_create_revision: 3,
        limit: 1,
        ..all
    });
    assert_eq!((keys(&response), response.more), (vec![&b"a"[..]], true));
}

#[test]
fn txn_runs_success_ops_when_all_compares_hold_and_failure_ops_otherwise() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"v");
    let request = |expected: &[u8]| TxnRequest {
        compare: vec![compare(
            b"k",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(expected.to_vec()),
        )],
        success: vec![op_put(b"s", b"1")],
        failure: vec![op_put(b"f", b"1")],
    };
    let response = txn(&store, request(b"v")).unwrap();
    assert!(response.succeeded);
    assert_eq!(header_revision(&response.header), 3);
    let response = txn(&store, request(b"nope")).unwrap();
    assert!(!response.succeeded);
    assert!(get(&store, b"s").is_some() && get(&store, b"f").is_some());
    assert_eq!(store.current_revision(), 4);
}

#[test]
fn txn_compares_each_target_with_each_result() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"m"); // 2
    put(&store, b"k", b"m"); // 3: create 2, mod 3, version 2, lease 0
    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget::{Create, Lease, Mod, Value, Version};
    let cases = [
        (Version, TargetUnion::Version(2), Equal, true),
        (Version, TargetUnion::Version(1), Greater, true),
        (Version, TargetUnion::Version(2), Less, false),
        (Create, TargetUnion::CreateRevision(2), Equal, true),
        (Create, TargetUnion::CreateRevision(3), Less, true),
        (Mod, TargetUnion::ModRevision(3), NotEqual, false),
        (Mod, TargetUnion::ModRevision(2), Greater, true),
        (Value, TargetUnion::Value(b"l".to_vec()), Greater, true),
        (Value, TargetUnion::Value(b"n".to_vec()), Less, true),
        (Value, TargetUnion::Value(b"m".to_vec()), NotEqual, false),
        (Lease, TargetUnion::Lease(0), Equal, true),
        (Lease, TargetUnion::Lease(1), Less, true),
        // A target_union of another kind counts as zero.
        (Version, TargetUnion::ModRevision(2), Greater, true),
    ];
    for (target, operand, result, expected) in cases {
        let response = txn(
            &store,
            TxnRequest {
                compare: vec![compare(b"k", target, result, operand.clone())],
                ..TxnRequest::default()
            },
        )
        .unwrap();
        assert_eq!(
            response.succeeded, expected,
            "{target:?} {result:?} {operand:?}"
        );
    }
}

#[test]
fn txn_compare_on_a_missing_key_uses_zero_but_a_value_compare_fails() {
    let (_dir, store) = open_temp();
    let holds = |compare: Compare| {
        txn(
            &store,
            TxnRequest {
                compare: vec![compare],
                ..TxnRequest::default()
            },
        )
        .unwrap()
        .succeeded
    };
    use CompareResult::{Equal, NotEqual};
    assert!(holds(compare(
        b"x",
        CompareTarget::Version,
        Equal,
        TargetUnion::Version(0)
    )));
    assert!(holds(compare(
        b"x",
        CompareTarget::Create,
        Equal,
        TargetUnion::CreateRevision(0)
    )));
    assert!(holds(compare(
        b"x",
        CompareTarget::Mod,
        Equal,
        TargetUnion::ModRevision(0)
    )));
    assert!(holds(compare(
        b"x",
        CompareTarget::Lease,
        Equal,
        TargetUnion::Lease(0)
    )));
    assert!(!holds(compare(
        b"x",
        CompareTarget::Value,
        Equal,
        TargetUnion::Value(Vec::new())
    )));
    assert!(!holds(compare(
        b"x",
        CompareTarget::Value,
        NotEqual,
        TargetUnion::Value(b"a".to_vec())
    )));
}

#[test]
fn txn_compare_over_a_range_holds_only_if_it_holds_for_every_key() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"b", b"1");
    put(&store, b"b", b"2");
    let version_one = |range_end: &[u8]| {
        let mut compare = compare(
            b"a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(1),
        );
        compare.range_end = range_end.to_vec();
        txn(
            &store,
            TxnRequest {
                compare: vec![compare],
                ..TxnRequest::default()
            },
        )
        .unwrap()
        .succeeded
    };
    assert!(version_one(b"b"));
    assert!(!version_one(b"c"));
    assert!(!version_one(b"\0"));
}

#[test]
fn txn_ops_share_one_revision_and_reads_see_earlier_writes() {
    let (_dir, store) = open_temp();
    put(&store, b"gone", b"x"); // 2
    let response = txn(
        &store,
        TxnRequest {
            compare: Vec::new(),
            success: vec![
                op_put(b"a", b"1"),
                op_put(b"b", b"1"),
                op_delete(b"gone", b""),
                op_put(b"a", b"2"),
                op_range(b"a", b"\0"),
            ],
            failure: Vec::new(),
        },
    )
    .unwrap();
    assert_eq!(header_revision(&response.header), 3);
    let read = response_range(&response.responses[4]);
    assert_eq!(header_revision(&read.header), 3);
    let seen: Vec<_> = read
        .kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice(), kv.version))
        .collect();
    assert_eq!(seen, [(&b"a"[..], &b"2"[..], 2), (b"b", b"1", 1)]);
    let a = get(&store, b"a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (3, 3, 2));
    assert_eq!(get(&store, b"gone"), None);
    assert_eq!(store.current_revision(), 3);
    for op in &response.responses[..4] {
        let revision = match &op.response {
            Some(response_op::Response::ResponsePut(put)) => header_revision(&put.header),
            Some(response_op::Response::ResponseDeleteRange(delete)) => {
                header_revision(&delete.header)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(revision, 3);
    }
}

#[test]
fn read_only_txn_keeps_the_revision() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"1");
    let response = txn(
        &store,
        TxnRequest {
            success: vec![op_range(b"a", b""), op_delete(b"missing", b"")],
            ..TxnRequest::default()
        },
    )
    .unwrap();
    assert_eq!(header_revision(&response.header), 2);
    assert_eq!(store.current_revision(), 2);
    assert_eq!(response_range(&response.responses[0]).kvs.len(), 1);
}

#[test]
fn nested_txn_compares_see_the_store_before_the_outer_txn() {
    let (_dir, store) = open_temp();
    let nested = TxnRequest {
        compare: vec![compare(
            b"k",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        success: vec![op_put(b"nested-saw-nothing", b"1")],
        failure: vec![op_put(b"nested-saw-k", b"1")],
    };
    let response = txn(
        &store,
        TxnRequest {
            success: vec![
                op_put(b"k", b"v"),
                op(request_op::Request::RequestTxn(nested)),
            ],
            ..TxnRequest::default()
        },
    )
    .unwrap();
    assert!(get(&store, b"nested-saw-nothing").is_some());
    assert!(get(&store, b"nested-saw-k").is_none());
    match &response.responses[1].response {
        Some(response_op::Response::ResponseTxn(nested)) => {
            assert!(nested.succeeded);
            // etcd leaves the nested header's revision unset.
            assert_eq!(header_revision(&nested.header), 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn txn_checks_ops_against_the_store_before_it_and_fails_whole() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"v");
    // The put to "new" comes first, but etcd checks ignore_value before running anything.
    let error = txn(
        &store,
        TxnRequest {
            success: vec![
                op_put(b"new", b"1"),
                op(request_op::Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put_request(b"new", b"")
                })),
            ],
            ..TxnRequest::default()
        },
    )
    .unwrap_err();
    assert!(matches!(error, KvError::KeyNotFound));
    let error = txn(
        &store,
        TxnRequest {
            success: vec![
                op_put(b"a", b"1"),
                op(request_op::Request::RequestRange(RangeRequest {
                    revision: 3,
                    ..range_request(b"a", b"")
                })),
            ],
            ..TxnRequest::default()
        },
    )
    .unwrap_err();
    assert!(matches!(error, KvError::FutureRevision));
    assert_eq!(store.current_revision(), 2);
    assert_eq!(get(&store, b"new"), None);
    assert_eq!(get(&store, b"a"), None);
}

#[test]
fn txn_failing_midway_changes_nothing() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"v");
    // Passes the up-front check (k exists before the txn) but fails once the delete ran.
    let error = txn(
        &store,
        TxnRequest {
            success: vec![
                op_put(b"a", b"1"),
                op_delete(b"k", b""),
                op(request_op::Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put_request(b"k", b"")
                })),
            ],
            ..TxnRequest::default()
        },
    )
    .unwrap_err();
    assert!(matches!(error, KvError::KeyNotFound));
    assert_eq!(store.current_revision(), 2);
    assert_eq!(get(&store, b"a"), None);
    assert_eq!(get(&store, b"k").unwrap().value, b"v");
    // The next write reuses the revision the failed txn did not take.
    assert_eq!(header_revision(&put(&store, b"b", b"1").header), 3);
    let history = store
        .range(&RangeRequest {
            revision: 3,
            ..range_request(b"", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&history), [&b"b"[..], b"k"]);
}

#[test]
fn a_failed_command_leaves_the_rest_of_its_batch_applied() {
    let (_dir, store) = open_temp();
    let results = store
        .apply_batch(
            &[
                Command::Put(put_request(b"a", b"1")),
                Command::Put(PutRequest {
                    lease: 7,
                    ..put_request(b"b", b"1")
                }),
                Command::Put(put_request(b"c", b"1")),
                Command::DeleteRange(delete_request(b"a", b"")),
            ],
            b"log 4",
        )
        .unwrap();
    assert!(matches!(results[1], Err(KvError::LeaseNotFound)));
    let revisions: Vec<_> = [&results[0], &results[2]]
        .into_iter()
        .map(|result| match result {
            Ok(Reply::Put(put)) => header_revision(&put.header),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(revisions, [2, 3]);
    assert_eq!(store.current_revision(), 4);
    assert_eq!(
        keys(&store.range(&range_request(b"", b"\0")).unwrap()),
        [&b"c"[..]]
    );
    assert_eq!(store.raft_meta().as_deref(), Some(&b"log 4"[..]));
}

#[test]
fn compaction_keeps_the_newest_version_of_live_keys_only() {
    let (_dir, store) = open_temp();
    put(&store, b"live", b"1"); // 2
    put(&store, b"live", b"2"); // 3
    put(&store, b"dead", b"1"); // 4
    delete(&store, b"dead", b""); // 5
    put(&store, b"live", b"3"); // 6
    match compact(&store, 5).unwrap() {
        Reply::Compaction(response) => assert_eq!(header_revision(&response.header), 6),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.compact_revision(), 5);
    assert_eq!(store.current_revision(), 6);
    let at = |revision: i64| {
        store.range(&RangeRequest {
            revision,
            ..range_request(b"", b"\0")
        })
    };
    let at_five = at(5).unwrap();
    assert_eq!(keys(&at_five), [&b"live"[..]]);
    assert_eq!(at_five.kvs[0].value, b"2");
    assert_eq!(at(6).unwrap().kvs[0].value, b"3");
    assert!(matches!(at(4), Err(KvError::Compacted)));
    // A key recreated after compaction starts a fresh generation.
    put(&store, b"dead", b"again"); // 7
    let kv = get(&store, b"dead").unwrap();
    assert_eq!((kv.create_revision, kv.version), (7, 1));
}

#[test]
fn compaction_at_or_below_the_compact_revision_is_compacted() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"1");
    put(&store, b"k", b"2");
    compact(&store, 2).unwrap();
    assert!(matches!(compact(&store, 2), Err(KvError::Compacted)));
    assert!(matches!(compact(&store, 1), Err(KvError::Compacted)));
    assert!(matches!(compact(&store, 4), Err(KvError::FutureRevision)));
    compact(&store, 3).unwrap();
    assert_eq!(store.compact_revision(), 3);
}

#[test]
fn compaction_inside_a_batch_applies_in_order_with_the_other_commands() {
    let (_dir, store) = open_temp();
    let results = store
        .apply_batch(
            &[
                Command::Put(put_request(b"k", b"1")),              // 2
                Command::Put(put_request(b"k", b"2")),              // 3
                Command::Put(put_request(b"gone", b"1")),           // 4
                Command::DeleteRange(delete_request(b"gone", b"")), // 5
                Command::Compaction(CompactionRequest {
                    revision: 5,
                    physical: true,
                }),
                Command::Put(put_request(b"k", b"3")), // 6
                Command::Txn(TxnRequest {
                    success: vec![op_range(b"", b"\0")],
                    ..TxnRequest::default()
                }),
                Command::Compaction(CompactionRequest {
                    revision: 4,
                    physical: true,
                }),
            ],
            b"batch",
        )
        .unwrap();
    assert!(matches!(results[7], Err(KvError::Compacted)));
    match &results[6] {
        Ok(Reply::Txn(response)) => {
            let read = response_range(&response.responses[0]);
            assert_eq!(
                (keys(read), read.kvs[0].value.as_slice()),
                (vec![&b"k"[..]], &b"3"[..])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.compact_revision(), 5);
    let at_five = store
        .range(&RangeRequest {
            revision: 5,
            ..range_request(b"", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&at_five), at_five.kvs[0].version),
        (vec![&b"k"[..]], 2)
    );
    assert_eq!(get(&store, b"k").unwrap().version, 3);
}

#[test]
fn alarms_activate_list_and_deactivate() {
    let (_dir, store) = open_temp();
    let member = |member_id: u64, alarm: AlarmType| AlarmMember {
        member_id,
        alarm: alarm as i32,
    };
    assert_eq!(
        alarm(&store, AlarmAction::Activate, 2, AlarmType::Nospace),
        [member(2, AlarmType::Nospace)]
    );
    alarm(&store, AlarmAction::Activate, 1, AlarmType::Corrupt);
    alarm(&store, AlarmAction::Activate, 1, AlarmType::Nospace);
    alarm(&store, AlarmAction::Activate, 1, AlarmType::Nospace);
    assert!(alarm(&store, AlarmAction::Activate, 1, AlarmType::None).is_empty());
    assert_eq!(
        alarm(&store, AlarmAction::Get, 0, AlarmType::None),
        [
            member(1, AlarmType::Nospace),
            member(2, AlarmType::Nospace),
            member(1, AlarmType::Corrupt)
        ]
    );
    assert_eq!(
        alarm(&store, AlarmAction::Get, 0, AlarmType::Corrupt),
        [member(1, AlarmType::Corrupt)]
    );
    assert_eq!(
        alarm(&store, AlarmAction::Deactivate, 1, AlarmType::Nospace),
        [member(1, AlarmType::Nospace)]
    );
    assert!(alarm(&store, AlarmAction::Deactivate, 1, AlarmType::Nospace).is_empty());
    assert_eq!(
        store.alarms(),
        [member(2, AlarmType::Nospace), member(1, AlarmType::Corrupt)]
    );
    assert_eq!(store.current_revision(), 1);
}

#[test]
fn nospace_alarm_refuses_puts_but_allows_reads_deletes_and_compaction() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"1");
    put(&store, b"b", b"1");
    alarm(&store, AlarmAction::Activate, 1, AlarmType::Nospace);

    let error = apply(&store, Command::Put(put_request(b"c", b"1"))).unwrap_err();
    assert!(matches!(error, KvError::NoSpace));
    let nested_put = TxnRequest {
        failure: vec![op(request_op::Request::RequestTxn(TxnRequest {
            success: vec![op_put(b"c", b"1")],
            ..TxnRequest::default()
        }))],
        ..TxnRequest::default()
    };
    assert!(matches!(txn(&store, nested_put), Err(KvError::NoSpace)));
    let deleting = txn(
        &store,
        TxnRequest {
            success: vec![op_delete(b"a", b""), op_range(b"b", b"")],
            ..TxnRequest::default()
        },
    )
    .unwrap();
    assert_eq!(response_range(&deleting.responses[1]).count, 1);
    assert_eq!(delete(&store, b"b", b"").deleted, 1);
    compact(&store, 3).unwrap();
    assert_eq!(store.current_revision(), 5);

    alarm(&store, AlarmAction::Deactivate, 1, AlarmType::Nospace);
    put(&store, b"c", b"1");
}

#[test]
fn reopening_recovers_data_counters_alarms_and_raft_meta() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let expected = {
        let store = Store::open(&path).unwrap();
        put(&store, b"a", b"1");
        put(&store, b"a", b"2");
        put(&store, b"b", b"1");
        delete(&store, b"b", b"");
        put(&store, b"c", b"1");
        compact(&store, 3).unwrap();
        alarm(&store, AlarmAction::Activate, 9, AlarmType::Corrupt);
        store.sync().unwrap();
        (
            store.range(&range_request(b"", b"\0")).unwrap(),
            store.hash_kv(0).unwrap(),
        )
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.current_revision(), 6);
    assert_eq!(store.compact_revision(), 3);
    assert_eq!(store.alarms().len(), 1);
    assert_eq!(store.raft_meta().as_deref(), Some(&b"applied"[..]));
    assert_eq!(store.range(&range_request(b"", b"\0")).unwrap(), expected.0);
    assert_eq!(store.hash_kv(0).unwrap(), expected.1);
    // The index rebuilt from disk carries on where it was.
    put(&store, b"a", b"3");
    let kv = get(&store, b"a").unwrap();
    assert_eq!((kv.create_revision, kv.version, kv.mod_revision), (2, 3, 7));
    put(&store, b"b", b"2");
    assert_eq!(get(&store, b"b").unwrap().version, 1);
}

#[test]
fn a_file_with_one_row_per_revision_is_packed_into_chunks_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let expected = {
        let store = Store::open(&path).unwrap();
        for round in 0..300u32 {
            put(&store, format!("key{}", round % 40).as_bytes(), &[7; 300]);
        }
        delete(&store, b"key1", b"");
        compact(&store, 100).unwrap();
        store.sync().unwrap();
        (
            store.range(&range_request(b"", b"\0")).unwrap(),
            store.hash_kv(0).unwrap(),
        )
    };
    // The file rewritten to the layout of earlier releases.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let rows: Vec<_> = chunks::all(&txn.open_table(VERSIONS).unwrap())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Puts at revisions 2 to 301, the delete at 302; compaction at 100 kept each key's
        // version current there.
        assert_eq!(rows.len(), 40 + 201 + 1);
        {
            let mut legacy = txn.open_table(LEGACY_REVISIONS).unwrap();
            for (revision, value) in &rows {
                legacy.insert(revision, value.as_slice()).unwrap();
            }
        }
        txn.delete_table(VERSIONS).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.range(&range_request(b"", b"\0")).unwrap(), expected.0);
    assert_eq!(store.hash_kv(0).unwrap(), expected.1);
    drop(store);
    let db = Database::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    assert!(read
        .list_tables()
        .unwrap()
        .all(|table| table.name() != LEGACY_REVISIONS.name()));
}

#[test]
fn unsynced_batches_are_lost_after_a_crash_together_with_their_raft_meta() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let crashed = dir.path().join("crashed.redb");
    let store = Store::open(&path).unwrap();
    store
        .apply_batch(&[Command::Put(put_request(b"a", b"1"))], b"index 1")
        .unwrap();
    store.sync().unwrap();
    store
        .apply_batch(&[Command::Put(put_request(b"a", b"2"))], b"index 2")
        .unwrap();
    // A copy of the file taken now is what a power cut would leave behind.
    std::fs::copy(&path, &crashed).unwrap();
    drop(store);

    let recovered = Store::open(&crashed).unwrap();
    assert_eq!(recovered.raft_meta().as_deref(), Some(&b"index 1"[..]));
    assert_eq!(recovered.current_revision(), 2);
    assert_eq!(get(&recovered, b"a").unwrap().value, b"1");
    // Raft re-applies the lost entry, which lands exactly as it did the first time.
    recovered
        .apply_batch(&[Command::Put(put_request(b"a", b"2"))], b"index 2")
        .unwrap();
    let clean = Store::open(&path).unwrap();
    assert_eq!(recovered.hash_kv(0).unwrap(), clean.hash_kv(0).unwrap());
}

#[test]
fn snapshot_installs_into_another_store_and_replaces_everything() {
    let (_dir, source) = open_temp();
    put(&source, b"a", b"1");
    put(&source, b"a", b"2");
    put(&source, b"b", b"1");
    delete(&source, b"a", b"");
    compact(&source, 3).unwrap();
    alarm(&source, AlarmAction::Activate, 3, AlarmType::Nospace);
    let snapshot = source.snapshot().unwrap();

    let (_dir2, target) = open_temp();
    put(&target, b"stale", b"x");
    put(&target, b"stale", b"y");
    target.install_snapshot(&snapshot).unwrap();
    assert_eq!(target.current_revision(), source.current_revision());
    assert_eq!(target.compact_revision(), 3);
    assert_eq!(target.alarms(), source.alarms());
    assert_eq!(target.raft_meta(), source.raft_meta());
    assert_eq!(target.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
    let everything = |store: &Store, revision: i64| {
        store
            .range(&RangeRequest {
                revision,
                ..range_request(b"", b"\0")
            })
            .unwrap()
    };
    assert_eq!(everything(&target, 3), everything(&source, 3));
    assert_eq!(keys(&everything(&target, 0)), [&b"b"[..]]);
    assert_eq!(get(&target, b"stale"), None);

    // The installed state is durable and rebuilt on reopen.
    let path = target.inner.path.clone();
    drop(target);
    let reopened = Store::open(&path).unwrap();
    assert_eq!(reopened.hash_kv(0).unwrap(), source.hash_kv(0).unwrap());
}

#[test]
fn install_snapshot_rejects_a_damaged_snapshot_and_keeps_the_state() {
    let (_dir, store) = open_temp();
    put(&store, b"a", b"1");
    let mut snapshot = store.snapshot().unwrap();
    let middle = snapshot.len() / 2;
    snapshot[middle] ^= 0x40;
    assert!(matches!(
        store.install_snapshot(&snapshot),
        Err(StoreError::InvalidSnapshot(_))
    ));
    assert!(store.install_snapshot(b"nonsense").is_err());
    assert_eq!(get(&store, b"a").unwrap().value, b"1");
}

#[test]
fn hash_kv_covers_versions_up_to_the_revision() {
    let (_dir, one) = open_temp();
    let (_dir2, two) = open_temp();
    for store in [&one, &two] {
        put(store, b"a", b"1");
        put(store, b"b", b"1");
    }
    put(&two, b"c", b"1");
    assert_eq!(one.hash_kv(3).unwrap(), two.hash_kv(3).unwrap());
    let (hash_one, compacted, revision) = one.hash_kv(0).unwrap();
    assert_eq!((compacted, revision), (-1, 3));
    assert_ne!(hash_one, two.hash_kv(0).unwrap().0);
    assert!(matches!(one.hash_kv(4), Err(KvError::FutureRevision)));
    compact(&one, 3).unwrap();
    assert!(matches!(one.hash_kv(2), Err(KvError::Compacted)));
    assert_eq!(one.hash_kv(3).unwrap().1, 3);
}

#[test]
fn sync_writes_the_file_only_when_something_was_applied() {
    let (dir, store) = open_temp();
    let path = dir.path().join("state.redb");
    let modified = || std::fs::metadata(&path).unwrap().modified().unwrap();
    put(&store, b"a", b"1");
    store.sync().unwrap();
    let synced = modified();
    store.sync().unwrap();
    assert_eq!(modified(), synced, "an idle store was written again");
    std::thread::sleep(std::time::Duration::from_millis(20));
    put(&store, b"a", b"2");
    store.sync().unwrap();
    assert!(modified() > synced, "the new write did not reach the file");
}

#[test]
fn sync_and_sizes_report_the_file() {
    let (_dir, store) = open_temp();
    for i in 0..200u32 {
        put(&store, &i.to_be_bytes(), &[7; 512]);
    }
    store.sync().unwrap();
    assert!(store.db_size() > 100 * 512);
    assert!(store.db_size_in_use() > 0);
    assert!(store.db_size_in_use() <= store.db_size());
}

#[test]
fn kv_errors_carry_etcds_codes_and_messages() {
    let cases = [
        (
            KvError::Compacted,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        (
            KvError::FutureRevision,
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        ),
        (
            KvError::KeyNotFound,
            tonic::Code::InvalidArgument,
            "etcdserver: key not found",
        ),
        (
            KvError::LeaseNotFound,
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        ),
        (
            KvError::NoSpace,
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        (
            KvError::LeaseExists,
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists",
        ),
        (
            KvError::LeaseTtlTooLarge,
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL",
        ),
    ];
    for (error, code, message) in cases {
        let status = tonic::Status::from(error);
        assert_eq!((status.code(), status.message()), (code, message));
    }
}

#[test]
fn reads_run_while_batches_with_compactions_apply() {
    let (_dir, store) = open_temp();
    put(&store, b"k", b"0");
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = store.range(&range_request(b"", b"\0")).unwrap();
                    assert_eq!(keys(&response), [&b"k"[..]]);
                    let compacted = store.compact_revision();
                    let at = store.range(&RangeRequest {
                        revision: compacted.max(1),
                        ..range_request(b"k", b"")
                    });
                    assert!(matches!(at, Ok(_) | Err(KvError::Compacted)), "{at:?}");
                }
            });
        }
        for round in 1..=200i64 {
            let mut commands = vec![Command::Put(put_request(b"k", &round.to_be_bytes()))];
            if round % 10 == 0 {
                commands.push(Command::Compaction(CompactionRequest {
                    revision: store.current_revision(),
                    physical: true,
                }));
            }
            for result in store.apply_batch(&commands, b"x").unwrap() {
                result.unwrap();
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(get(&store, b"k").unwrap().version, 201);
}
