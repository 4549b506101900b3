//! Txn with etcd's semantics: every compare target and result, ranges in compares, both
//! branches, reads inside a txn, nested txns, and one revision per txn.

use std::cmp::Ordering;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use crate::harness::{keys, put, revision, Node, NodeOptions};

const RESULTS: [CompareOp; 4] = [
    CompareOp::Equal,
    CompareOp::Greater,
    CompareOp::Less,
    CompareOp::NotEqual,
];

/// Whether etcd's compare `stored RESULT operand` holds, given how they order.
fn holds(result: CompareOp, stored_vs_operand: Ordering) -> bool {
    match result {
        CompareOp::Equal => stored_vs_operand == Ordering::Equal,
        CompareOp::Greater => stored_vs_operand == Ordering::Greater,
        CompareOp::Less => stored_vs_operand == Ordering::Less,
        CompareOp::NotEqual => stored_vs_operand != Ordering::Equal,
    }
}

async fn succeeds(c: &mut Client, compares: Vec<Compare>) -> bool {
    c.txn(Txn::new().when(compares))
        .await
        .expect("txn")
        .succeeded()
}

async fn value_of(c: &mut Client, key: &str) -> Option<Vec<u8>> {
    let got = c.get(key, None).await.expect("get");
    got.kvs().first().map(|kv| kv.value().to_vec())
}

fn get_response(response: &TxnOpResponse) -> &etcd_client::GetResponse {
    match response {
        TxnOpResponse::Get(get) => get,
        other => panic!("expected a range response, got {other:?}"),
    }
}

fn kinds(response: &TxnResponse) -> Vec<&'static str> {
    response
        .op_responses()
        .iter()
        .map(|r| match r {
            TxnOpResponse::Put(_) => "put",
            TxnOpResponse::Get(_) => "get",
            TxnOpResponse::Delete(_) => "delete",
            TxnOpResponse::Txn(_) => "txn",
        })
        .collect()
}

/// Runs every (compare, expected result) case and fails listing all the wrong ones.
async fn check_compares(c: &mut Client, cases: Vec<(String, Compare, bool)>) {
    let mut wrong = Vec::new();
    for (label, compare, expected) in cases {
        if succeeds(c, vec![compare]).await != expected {
            wrong.push(format!("{label}: expected {expected}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong compare results:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn txn_compares_version_create_mod_and_value_with_every_result() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let create = put(&mut c, "t", "a").await;
    put(&mut c, "other", "x").await;
    let modified = put(&mut c, "t", "m").await;
    // Now t has version 2, create revision `create`, mod revision `modified` (> create + 1)
    // and value "m".

    let mut cases = Vec::new();
    for result in RESULTS {
        for delta in [-1_i64, 0, 1] {
            let integer_targets = [
                ("version", 2, Compare::version("t", result, 2 + delta)),
                (
                    "create",
                    create,
                    Compare::create_revision("t", result, create + delta),
                ),
                (
                    "mod",
                    modified,
                    Compare::mod_revision("t", result, modified + delta),
                ),
            ];
            for (target, stored, compare) in integer_targets {
                let expected = holds(result, stored.cmp(&(stored + delta)));
                let label = format!("{target} {result:?} stored{delta:+}");
                cases.push((label, compare, expected));
            }
        }
        for operand in ["l", "m", "n", "", "mm"] {
            let expected = holds(result, b"m"[..].cmp(operand.as_bytes()));
            let label = format!("value {result:?} {operand:?}");
            cases.push((label, Compare::value("t", result, operand), expected));
        }
    }
    check_compares(&mut c, cases).await;
}

#[tokio::test]
async fn txn_compares_lease_with_every_result() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    let options = PutOptions::new().with_lease(lease);
    c.put("t", "v", Some(options)).await.expect("put");
    put(&mut c, "no-lease", "v").await;

    let mut cases = Vec::new();
    for result in RESULTS {
        for delta in [-1_i64, 0, 1] {
            let expected = holds(result, lease.cmp(&(lease + delta)));
            let label = format!("lease {result:?} lease{delta:+}");
            cases.push((label, Compare::lease("t", result, lease + delta), expected));
        }
        let expected = holds(result, 0.cmp(&lease));
        let label = format!("no lease {result:?} lease");
        cases.push((label, Compare::lease("no-lease", result, lease), expected));
    }
    check_compares(&mut c, cases).await;
}

#[tokio::test]
async fn txn_compare_on_a_missing_key_sees_zero_fields_and_never_a_value() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "present", "v").await;

    let cases = [
        (Compare::version("absent", CompareOp::Equal, 0), true),
        (Compare::version("absent", CompareOp::Greater, 0), false),
        (
            Compare::create_revision("absent", CompareOp::Equal, 0),
            true,
        ),
        (Compare::mod_revision("absent", CompareOp::Less, 1), true),
        (Compare::lease("absent", CompareOp::Equal, 0), true),
        (Compare::value("absent", CompareOp::Equal, ""), false),
        (Compare::value("absent", CompareOp::NotEqual, "x"), false),
        (Compare::value("absent", CompareOp::Less, "x"), false),
    ];
    for (compare, expected) in cases {
        let label = format!("{compare:?}");
        assert_eq!(succeeds(&mut c, vec![compare]).await, expected, "{label}");
    }
}

#[tokio::test]
async fn txn_runs_success_ops_when_every_compare_holds_and_failure_ops_otherwise() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "k", "1").await;

    let txn = Txn::new()
        .when([
            Compare::value("k", CompareOp::Equal, "1"),
            Compare::version("k", CompareOp::Equal, 1),
        ])
        .and_then([TxnOp::put("then1", "yes", None), TxnOp::get("k", None)])
        .or_else([TxnOp::put("else1", "yes", None)]);
    let response = c.txn(txn).await.expect("txn");
    assert!(response.succeeded());
    assert_eq!(kinds(&response), ["put", "get"]);
    let read = &response.op_responses()[1];
    assert_eq!(get_response(read).kvs()[0].value(), b"1");
    assert_eq!(
        value_of(&mut c, "then1").await.as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(value_of(&mut c, "else1").await, None);

    // One compare of two fails: the failure branch runs.
    let txn = Txn::new()
        .when([
            Compare::value("k", CompareOp::Equal, "1"),
            Compare::version("k", CompareOp::Equal, 2),
        ])
        .and_then([TxnOp::put("then2", "yes", None)])
        .or_else([
            TxnOp::put("else2", "yes", None),
            TxnOp::delete("then1", None),
        ]);
    let response = c.txn(txn).await.expect("txn");
    assert!(!response.succeeded());
    assert_eq!(kinds(&response), ["put", "delete"]);
    assert_eq!(
        value_of(&mut c, "else2").await.as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(value_of(&mut c, "then2").await, None);
    assert_eq!(value_of(&mut c, "then1").await, None);
}

#[tokio::test]
async fn txn_compare_over_a_range_must_hold_for_every_key_in_it() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    for key in ["r/a", "r/b", "r/c"] {
        put(&mut c, key, "1").await;
    }
    put(&mut c, "rz", "2").await;

    let all_one = || Compare::value("r/", CompareOp::Equal, "1").with_prefix();
    assert!(succeeds(&mut c, vec![all_one()]).await);
    put(&mut c, "r/b", "2").await;
    assert!(!succeeds(&mut c, vec![all_one()]).await, "r/b is now 2");

    let first_version = |end: &str| Compare::version("r/a", CompareOp::Equal, 1).with_range(end);
    assert!(
        succeeds(&mut c, vec![first_version("r/b")]).await,
        "[r/a, r/b) holds only r/a, still at version 1"
    );
    assert!(
        !succeeds(&mut c, vec![first_version("r/c")]).await,
        "[r/a, r/c) holds r/b at version 2"
    );

    let nothing = Compare::version("x/", CompareOp::Equal, 0).with_prefix();
    assert!(
        succeeds(&mut c, vec![nothing]).await,
        "an empty range compares as a missing key"
    );
}

#[tokio::test]
async fn txn_range_op_sees_the_earlier_ops_of_the_same_txn() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let before = put(&mut c, "k", "old").await;

    let txn = Txn::new().and_then([
        TxnOp::get("k", None),
        TxnOp::put("k", "new", None),
        TxnOp::get("k", None),
        TxnOp::get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        ),
    ]);
    let response = c.txn(txn).await.expect("txn");
    assert_eq!(revision(response.header()), before + 1);
    let ops = response.op_responses();
    let first = &get_response(&ops[0]).kvs()[0];
    assert_eq!((first.value(), first.mod_revision()), (&b"old"[..], before));
    let second = &get_response(&ops[2]).kvs()[0];
    assert_eq!(
        (second.value(), second.mod_revision(), second.version()),
        (&b"new"[..], before + 1, 2)
    );
    assert_eq!(get_response(&ops[3]).count(), 1);
}

#[tokio::test]
async fn nested_txn_runs_its_own_compares_and_branches() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "n", "1").await;

    let inner = Txn::new()
        .when([Compare::value("n", CompareOp::Equal, "2")])
        .and_then([TxnOp::put("inner", "then", None)])
        .or_else([TxnOp::put("inner", "else", None), TxnOp::get("n", None)]);
    let outer = Txn::new()
        .when([Compare::value("n", CompareOp::Equal, "1")])
        .and_then([TxnOp::txn(inner), TxnOp::put("outer", "then", None)])
        .or_else([TxnOp::put("outer", "else", None)]);
    let response = c.txn(outer).await.expect("nested txn");
    assert!(response.succeeded());
    assert_eq!(kinds(&response), ["txn", "put"]);
    let TxnOpResponse::Txn(inner) = &response.op_responses()[0] else {
        unreachable!("kinds checked above")
    };
    assert!(!inner.succeeded());
    assert_eq!(kinds(inner), ["put", "get"]);
    assert_eq!(
        get_response(&inner.op_responses()[1]).kvs()[0].value(),
        b"1"
    );

    let rev = revision(response.header());
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    assert_eq!(keys(all.kvs()), ["inner", "n", "outer"]);
    let written: Vec<(&[u8], i64)> = [&all.kvs()[0], &all.kvs()[2]]
        .iter()
        .map(|kv| (kv.value(), kv.mod_revision()))
        .collect();
    assert_eq!(written, [(&b"else"[..], rev), (&b"then"[..], rev)]);
}

#[tokio::test]
async fn all_writes_of_a_txn_share_one_revision_and_reads_add_none() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let before = put(&mut c, "c", "1").await;

    let txn = Txn::new().and_then([
        TxnOp::put("a", "1", None),
        TxnOp::put("b", "1", None),
        TxnOp::delete("c", None),
    ]);
    let response = c.txn(txn).await.expect("txn");
    let rev = revision(response.header());
    assert_eq!(rev, before + 1);
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    assert_eq!(keys(all.kvs()), ["a", "b"]);
    assert!(all.kvs().iter().all(|kv| kv.mod_revision() == rev));
    let at = |r: i64| Some(GetOptions::new().with_revision(r));
    assert_eq!(
        keys(c.get("c", at(before)).await.expect("get").kvs()),
        ["c"]
    );
    assert!(c.get("c", at(rev)).await.expect("get").kvs().is_empty());

    let read_only = Txn::new().and_then([TxnOp::get("a", None)]);
    let response = c.txn(read_only).await.expect("read-only txn");
    assert_eq!(revision(response.header()), rev);
    assert_eq!(put(&mut c, "d", "1").await, rev + 1);
}
