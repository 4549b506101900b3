//! Leases with etcd's semantics: grant, revoke (every attached key in one revision),
//! keepalive, TimeToLive, Leases, expiry, and etcd's answers for unknown leases, through the
//! `etcd-client` crate and `etcdctl`.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp,
};

use crate::etcdctl::Etcdctl;
use crate::harness::{assert_etcd_error, keys, put, revision, Node, NodeOptions, POLL_INTERVAL};

/// etcd's minimum TTL with the default election timeout (1 s): ceil(1.5 × 1 s).
const MIN_TTL: i64 = 2;

async fn put_with_lease(c: &mut Client, key: &str, lease: i64) -> i64 {
    let options = PutOptions::new().with_lease(lease);
    let response = c
        .put(key, "v", Some(options))
        .await
        .expect("put with lease");
    revision(response.header())
}

async fn exists(c: &mut Client, key: &str) -> bool {
    !c.get(key, None).await.expect("get").kvs().is_empty()
}

/// Polls until `key` is gone and returns when that was seen; fails after `limit`.
async fn wait_until_gone(c: &mut Client, key: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if !exists(c, key).await {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{key} still exists {limit:?} later"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test]
async fn grant_picks_a_positive_id_and_time_to_live_lists_the_attached_keys() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let granted = c.lease_grant(60, None).await.expect("grant");
    assert!(granted.id() > 0, "generated lease IDs are positive");
    assert_eq!(granted.ttl(), 60);
    assert_eq!(revision(granted.header()), 1, "a grant writes no revision");

    put_with_lease(&mut c, "b", granted.id()).await;
    put_with_lease(&mut c, "a", granted.id()).await;
    put(&mut c, "other", "v").await;
    let options = LeaseTimeToLiveOptions::new().with_keys();
    let ttl = c
        .lease_time_to_live(granted.id(), Some(options))
        .await
        .expect("time to live");
    assert_eq!((ttl.id(), ttl.granted_ttl()), (granted.id(), 60));
    assert!((58..=60).contains(&ttl.ttl()), "remaining {}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"a".to_vec(), b"b".to_vec()]);
    let without_keys = c
        .lease_time_to_live(granted.id(), None)
        .await
        .expect("time to live");
    assert!(without_keys.keys().is_empty());

    let second = c.lease_grant(30, None).await.expect("grant").id();
    let listed: Vec<i64> = c
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|lease| lease.id())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&granted.id()) && listed.contains(&second));
}

#[tokio::test]
async fn grant_with_an_id_uses_it_and_the_same_id_again_is_lease_already_exists() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let options = || Some(LeaseGrantOptions::new().with_id(0x1234));
    assert_eq!(
        c.lease_grant(30, options()).await.expect("grant").id(),
        0x1234
    );
    assert_etcd_error(
        c.lease_grant(30, options()).await,
        tonic::Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
}

#[tokio::test]
async fn grant_raises_a_short_ttl_to_the_minimum_and_refuses_a_too_large_one() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    assert_eq!(c.lease_grant(1, None).await.expect("grant").ttl(), MIN_TTL);
    assert_eq!(c.lease_grant(0, None).await.expect("grant").ttl(), MIN_TTL);
    assert_eq!(
        c.lease_grant(9_000_000_000, None)
            .await
            .expect("grant")
            .ttl(),
        9_000_000_000
    );
    assert_etcd_error(
        c.lease_grant(9_000_000_001, None).await,
        tonic::Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
}

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(60, None).await.expect("grant").id();
    for key in ["k1", "k2", "k3"] {
        put_with_lease(&mut c, key, lease).await;
    }
    let before = put(&mut c, "other", "v").await;

    let revoked = c.lease_revoke(lease).await.expect("revoke");
    assert_eq!(revision(revoked.header()), before + 1);
    let all = || Some(GetOptions::new().with_prefix());
    assert_eq!(keys(c.get("", all()).await.expect("get").kvs()), ["other"]);
    let just_before = Some(GetOptions::new().with_prefix().with_revision(before));
    assert_eq!(
        keys(c.get("k", just_before).await.expect("get").kvs()),
        ["k1", "k2", "k3"]
    );
    assert_etcd_error(
        c.lease_revoke(lease).await,
        tonic::Code::NotFound,
        "etcdserver: requested lease not found",
    );
}

#[tokio::test]
async fn a_put_or_txn_with_an_unknown_or_revoked_lease_is_lease_not_found() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(60, None).await.expect("grant").id();
    c.lease_revoke(lease).await.expect("revoke");
    let options = PutOptions::new().with_lease(lease);
    assert_etcd_error(
        c.put("k", "v", Some(options.clone())).await,
        tonic::Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let txn = Txn::new().and_then([
        TxnOp::put("a", "v", None),
        TxnOp::put("k", "v", Some(options)),
    ]);
    assert_etcd_error(
        c.txn(txn).await,
        tonic::Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert!(!exists(&mut c, "a").await, "the failed txn wrote nothing");
}

#[tokio::test]
async fn deleting_or_overwriting_a_key_detaches_it_from_its_lease() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(60, None).await.expect("grant").id();
    for key in ["kept", "deleted", "overwritten"] {
        put_with_lease(&mut c, key, lease).await;
    }
    c.delete("deleted", None).await.expect("delete");
    put(&mut c, "overwritten", "plain").await;
    let options = LeaseTimeToLiveOptions::new().with_keys();
    let ttl = c
        .lease_time_to_live(lease, Some(options))
        .await
        .expect("time to live");
    assert_eq!(ttl.keys(), [b"kept".to_vec()]);
    c.lease_revoke(lease).await.expect("revoke");
    assert!(exists(&mut c, "overwritten").await);
}

#[tokio::test]
async fn unknown_leases_answer_keepalive_ttl_0_and_time_to_live_minus_1() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(60, None).await.expect("grant").id();
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.expect("keepalive");
    c.lease_revoke(lease).await.expect("revoke");

    keeper.keep_alive().await.expect("send a keepalive");
    let answer = answers
        .message()
        .await
        .expect("keepalive answer")
        .expect("the stream stays open");
    assert_eq!((answer.id(), answer.ttl()), (lease, 0));

    let ttl = c
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live of an unknown lease is no error");
    assert_eq!((ttl.id(), ttl.ttl(), ttl.granted_ttl()), (lease, -1, 0));
    assert!(ttl.header().is_some());
}

#[tokio::test]
async fn keepalives_hold_a_lease_and_its_keys_vanish_within_ttl_plus_1s_after_the_last() {
    let node = Node::start(NodeOptions::default()).await;
    let mut c = node.client().await;
    let lease = c.lease_grant(MIN_TTL, None).await.expect("grant").id();
    put_with_lease(&mut c, "held", lease).await;

    // Kept alive for twice its TTL, the key stays.
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.expect("keepalive");
    let held_until = Instant::now() + Duration::from_secs(2 * MIN_TTL as u64);
    let mut last_keepalive;
    loop {
        keeper.keep_alive().await.expect("send a keepalive");
        let answer = answers.message().await.expect("answer").expect("open");
        last_keepalive = Instant::now();
        assert_eq!(answer.ttl(), MIN_TTL);
        assert!(exists(&mut c, "held").await, "expired while kept alive");
        if last_keepalive >= held_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(keeper);

    // Not before the TTL is over (with margin for the client's own delays)...
    tokio::time::sleep(Duration::from_millis(MIN_TTL as u64 * 1000 - 500)).await;
    assert!(exists(&mut c, "held").await, "expired before its TTL");
    // ...and gone within TTL + 1 s of the last keepalive.
    let gone = wait_until_gone(&mut c, "held", Duration::from_secs(10)).await;
    let after = gone - last_keepalive;
    assert!(
        after <= Duration::from_secs(MIN_TTL as u64 + 1),
        "the key outlived its lease by {after:?}"
    );
    let ttl = c.lease_time_to_live(lease, None).await.expect("ttl");
    assert_eq!(ttl.ttl(), -1, "an expired lease is revoked");
}

#[tokio::test]
async fn a_lease_survives_a_restart_and_expires_afterwards() {
    let mut node = Node::start(NodeOptions::default()).await;
    let lease = {
        let mut c = node.client().await;
        let lease = c.lease_grant(MIN_TTL + 1, None).await.expect("grant").id();
        put_with_lease(&mut c, "k", lease).await;
        lease
    };
    node.kill9();
    node.restart().await;
    let mut c = node.client().await;
    let ttl = c.lease_time_to_live(lease, None).await.expect("ttl");
    assert_eq!(ttl.granted_ttl(), MIN_TTL + 1);
    assert!(ttl.ttl() > 0);
    assert!(exists(&mut c, "k").await);
    // Promotion extends a lease by an election timeout beyond its TTL, as etcd does.
    wait_until_gone(&mut c, "k", Duration::from_secs(MIN_TTL as u64 + 5)).await;
}

#[tokio::test]
async fn etcdctl_grants_keeps_alive_inspects_and_revokes_leases() {
    let node = Node::start(NodeOptions::default()).await;
    let ctl = Etcdctl::new(&node);
    let granted = ctl.ok(&["lease", "grant", "100"]).await;
    let id = granted
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(" granted with TTL(100s)\n"))
        .unwrap_or_else(|| panic!("unexpected grant output {granted:?}"))
        .to_owned();
    assert_eq!(id.len(), 16, "etcdctl prints IDs as 16 hex digits");
    assert_eq!(ctl.ok(&["put", "--lease", &id, "k", "v"]).await, "OK\n");

    let ttl = ctl.ok(&["lease", "timetolive", "--keys", &id]).await;
    let expected_start = format!("lease {id} granted with TTL(100s), remaining(");
    assert!(ttl.starts_with(&expected_start), "{ttl:?}");
    assert!(ttl.ends_with("s), attached keys([k])\n"), "{ttl:?}");
    assert_eq!(
        ctl.ok(&["lease", "keep-alive", "--once", &id]).await,
        format!("lease {id} keepalived with TTL(100)\n")
    );
    assert_eq!(
        ctl.ok(&["lease", "list"]).await,
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        ctl.ok(&["lease", "revoke", &id]).await,
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl.ok(&["get", "k"]).await, "");
    assert_eq!(
        ctl.ok(&["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );
    let unknown = ctl.run(&["lease", "keep-alive", "--once", &id], "").await;
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("requested lease not found"),
        "unexpected stderr {stderr:?}"
    );
}
