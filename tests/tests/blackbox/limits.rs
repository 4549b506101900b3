//! Size limits: `--max-request-bytes` and `--quota-backend-bytes` (the NOSPACE alarm).

use cairn_tests::http_get;
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, DeleteOptions, GetOptions};
use tonic::Code;

use crate::harness::{assert_etcd_error, Node, NodeOptions};

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

#[tokio::test]
async fn request_larger_than_max_request_bytes_is_rejected_and_not_applied() {
    let options = NodeOptions::default().setting("max-request-bytes", "4096");
    let node = Node::start(options).await;
    let mut c = node.client().await;

    assert_etcd_error(
        c.put("big", vec![b'x'; 8000], None).await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert!(c.get("big", None).await.expect("get").kvs().is_empty());

    c.put("small", vec![b'x'; 1000], None)
        .await
        .expect("a request under the limit is accepted");
}

/// A node with a 4 MiB quota, and a client of it.
async fn start_with_small_quota() -> (Node, Client) {
    let options = NodeOptions::default().setting("quota-backend-bytes", &(4 << 20).to_string());
    let node = Node::start(options).await;
    let client = node.client().await;
    (node, client)
}

/// Puts `value` under `fill/NNNN` keys until the quota refuses one with NOSPACE, after at
/// least one was accepted.
async fn fill_until_nospace(c: &mut Client, value: &[u8]) {
    let mut accepted = 0;
    loop {
        assert!(
            accepted < 2000,
            "2000 puts of {} bytes never exceeded the quota",
            value.len()
        );
        match c.put(format!("fill/{accepted:04}"), value, None).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_etcd_error::<()>(Err(e), Code::ResourceExhausted, NO_SPACE);
                break;
            }
        }
    }
    assert!(accepted > 0, "the quota rejected even the first put");
}

#[tokio::test]
async fn exceeding_the_backend_quota_raises_nospace_and_blocks_only_puts() {
    let (node, mut c) = start_with_small_quota().await;
    let value = vec![b'x'; 64 << 10];

    fill_until_nospace(&mut c, &value).await;

    let read = c.get("fill/0000", None).await.expect("reads still work");
    assert_eq!(read.kvs()[0].value(), &value[..]);
    let deleted = c
        .delete("fill/0000", None)
        .await
        .expect("deletes still work");
    assert_eq!(deleted.deleted(), 1);
    assert_etcd_error(
        c.put("tiny", "v", None).await,
        Code::ResourceExhausted,
        NO_SPACE,
    );

    let member = c.status().await.expect("status").leader();
    let alarms = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    let raised: Vec<(u64, AlarmType)> = alarms
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(raised, [(member, AlarmType::Nospace)]);

    // etcd's /health names the alarm, and a probe may exclude it (as kubeadm's does).
    let port = node.client_port();
    let health = http_get("127.0.0.1", port, "/health").expect("GET /health");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains(r#""reason":"ALARM NOSPACE""#), "{health}");
    let excluded = http_get(
        "127.0.0.1",
        port,
        "/health?exclude=NOSPACE&serializable=true",
    )
    .expect("GET /health excluding NOSPACE");
    assert!(excluded.starts_with("HTTP/1.1 200"), "{excluded}");
    assert!(excluded.contains(r#""health":"true""#), "{excluded}");
}

/// etcd's documented way out of NOSPACE: delete, compact, defragment, disarm.
#[tokio::test]
async fn nospace_is_cleared_by_compacting_defragmenting_and_disarming() {
    let (_node, mut c) = start_with_small_quota().await;
    let value = vec![b'x'; 64 << 10];
    c.put("keep", "kept", None).await.expect("put");
    fill_until_nospace(&mut c, &value).await;

    let full = c.status().await.expect("status");
    let member = full.header().expect("header").member_id();
    let deleted = c
        .delete("fill/", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("deletes work under NOSPACE");
    let revision = deleted.header().expect("header").revision();
    c.compact(revision, None).await.expect("compact");
    c.defragment().await.expect("defragment");

    let defragmented = c.status().await.expect("status");
    assert!(
        defragmented.db_size() * 2 < full.db_size(),
        "defragmenting after deleting and compacting everything left {} of {} bytes",
        defragmented.db_size(),
        full.db_size()
    );
    let mut disarm = AlarmOptions::new();
    disarm.with_member(member);
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(disarm))
        .await
        .expect("disarm");
    c.put("after", "v", None)
        .await
        .expect("a put after disarming");
    for (key, value) in [("after", "v"), ("keep", "kept")] {
        let read = c.get(key, None).await.expect("get");
        assert_eq!(read.kvs()[0].value(), value.as_bytes(), "{key}");
    }
    let left = c
        .get(
            "fill/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert_eq!(left.count(), 0);
}
