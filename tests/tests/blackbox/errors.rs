//! The errors etcd returns, with the same gRPC code and the same message: clients match
//! on the text.

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use tonic::Code;

use crate::harness::{assert_etcd_error, put, Node, NodeOptions};

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";

/// A node whose key "k" was written three times, compacted at the second write.
/// Returns the node, a client, the compaction revision and the current revision.
async fn compacted_node() -> (Node, Client, i64, i64) {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "k", "v1").await;
    let compacted = put(&mut c, "k", "v2").await;
    let current = put(&mut c, "k", "v3").await;
    c.compact(compacted, None).await.expect("compact");
    (node, c, compacted, current)
}

#[tokio::test]
async fn empty_key_is_invalid_argument() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let message = "etcdserver: key is not provided";
    assert_etcd_error(c.put("", "v", None).await, Code::InvalidArgument, message);
    assert_etcd_error(c.get("", None).await, Code::InvalidArgument, message);
    assert_etcd_error(c.delete("", None).await, Code::InvalidArgument, message);
    let txn = Txn::new().and_then([TxnOp::put("", "v", None)]);
    assert_etcd_error(c.txn(txn).await, Code::InvalidArgument, message);
}

#[tokio::test]
async fn duplicate_key_in_txn_is_invalid_argument() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let message = "etcdserver: duplicate key given in txn request";

    let two_puts = Txn::new().and_then([TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)]);
    assert_etcd_error(c.txn(two_puts).await, Code::InvalidArgument, message);
    let delete_covering_a_put = Txn::new().or_else([
        TxnOp::delete("p/", Some(etcd_client::DeleteOptions::new().with_prefix())),
        TxnOp::put("p/x", "1", None),
    ]);
    assert_etcd_error(
        c.txn(delete_covering_a_put).await,
        Code::InvalidArgument,
        message,
    );
    assert!(
        c.get("a", None).await.expect("get").kvs().is_empty(),
        "a rejected txn writes nothing"
    );

    // The same key in the two branches is allowed: only one of them runs.
    let branches = Txn::new()
        .and_then([TxnOp::put("a", "then", None)])
        .or_else([TxnOp::put("a", "else", None)]);
    assert!(c.txn(branches).await.expect("txn").succeeded());
}

#[tokio::test]
async fn range_at_compacted_revision_is_out_of_range() {
    let (_node, mut c, compacted, _) = compacted_node().await;
    let below = Some(GetOptions::new().with_revision(compacted - 1));
    assert_etcd_error(c.get("k", below).await, Code::OutOfRange, COMPACTED);
}

#[tokio::test]
async fn compaction_at_compacted_revision_is_out_of_range() {
    let (_node, mut c, compacted, _) = compacted_node().await;
    assert_etcd_error(
        c.compact(compacted, None).await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_etcd_error(
        c.compact(compacted - 1, None).await,
        Code::OutOfRange,
        COMPACTED,
    );
}

#[tokio::test]
async fn range_at_future_revision_is_out_of_range() {
    let (_node, mut c, _, current) = compacted_node().await;
    let at = |rev: i64| Some(GetOptions::new().with_revision(rev));
    c.get("k", at(current)).await.expect("the current revision");
    assert_etcd_error(c.get("k", at(current + 1)).await, Code::OutOfRange, FUTURE);
}

#[tokio::test]
async fn compaction_at_future_revision_is_out_of_range() {
    let (_node, mut c, _, current) = compacted_node().await;
    assert_etcd_error(c.compact(current + 1, None).await, Code::OutOfRange, FUTURE);
}

#[tokio::test]
async fn put_with_unknown_lease_is_not_found() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let options = PutOptions::new().with_lease(0x1234_5678);
    assert_etcd_error(
        c.put("k", "v", Some(options)).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert!(c.get("k", None).await.expect("get").kvs().is_empty());
}

#[tokio::test]
async fn ignore_value_or_lease_on_a_missing_key_is_key_not_found() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let ignore_value = Some(PutOptions::new().with_ignore_value());
    assert_etcd_error(
        c.put("missing", "", ignore_value).await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    let ignore_lease = Some(PutOptions::new().with_ignore_lease());
    assert_etcd_error(
        c.put("missing", "v", ignore_lease).await,
        Code::InvalidArgument,
        KEY_NOT_FOUND,
    );
    assert!(c.get("missing", None).await.expect("get").kvs().is_empty());
}

#[tokio::test]
async fn ignore_value_with_a_value_is_invalid_argument() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    put(&mut c, "k", "v").await;
    let options = Some(PutOptions::new().with_ignore_value());
    assert_etcd_error(
        c.put("k", "new", options).await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
}

#[tokio::test]
async fn ignore_lease_with_a_lease_is_invalid_argument() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(600, None).await.expect("grant").id();
    put(&mut c, "k", "v").await;
    let options = Some(PutOptions::new().with_ignore_lease().with_lease(lease));
    assert_etcd_error(
        c.put("k", "v", options).await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
}

#[tokio::test]
async fn more_than_128_ops_in_a_txn_is_invalid_argument() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let puts = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("op/{i:03}"), "v", None))
            .collect()
    };

    assert_etcd_error(
        c.txn(Txn::new().and_then(puts(129))).await,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let count_only = GetOptions::new().with_prefix().with_count_only();
    let written = c.get("op/", Some(count_only.clone())).await.expect("count");
    assert_eq!(written.count(), 0, "a rejected txn writes nothing");

    c.txn(Txn::new().and_then(puts(128)))
        .await
        .expect("128 ops are allowed");
    let written = c.get("op/", Some(count_only)).await.expect("count");
    assert_eq!(written.count(), 128);
}
