//! Size limits: `--max-request-bytes` and `--quota-backend-bytes` (the NOSPACE alarm).

use etcd_client::{AlarmAction, AlarmType};
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

#[tokio::test]
async fn exceeding_the_backend_quota_raises_nospace_and_blocks_only_puts() {
    let options = NodeOptions::default().setting("quota-backend-bytes", &(4 << 20).to_string());
    let node = Node::start(options).await;
    let mut c = node.client().await;
    let value = vec![b'x'; 64 << 10];

    let mut accepted = 0;
    loop {
        assert!(
            accepted < 2000,
            "2000 puts of 64 KiB never exceeded a 4 MiB quota"
        );
        match c
            .put(format!("fill/{accepted:04}"), value.clone(), None)
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_etcd_error::<()>(Err(e), Code::ResourceExhausted, NO_SPACE);
                break;
            }
        }
    }
    assert!(accepted > 0, "the quota rejected even the first put");

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
}
