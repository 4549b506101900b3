//! `MoveLeader`: the leader hands leadership to the member named; a follower refuses the
//! request as etcd does, since only the leader can transfer leadership.

use crate::harness::{expect_ok, put_acknowledged, within, Cluster, ClusterSpec, REQUEST_TIMEOUT};

#[tokio::test]
async fn move_leader_hands_leadership_to_the_member_named() {
    let cluster = Cluster::start(ClusterSpec::new(3)).await;
    let everyone: Vec<usize> = (0..cluster.len()).collect();
    let leader = cluster.leader().await;
    let target = (leader + 1) % cluster.len();
    let bystander = (leader + 2) % cluster.len();
    let target_id = cluster.member(target).id();

    let mut follower = cluster.member(bystander).client().await;
    let refused = tokio::time::timeout(REQUEST_TIMEOUT, follower.move_leader(target_id))
        .await
        .expect("MoveLeader through a follower answers");
    match refused {
        Err(etcd_client::Error::GRpcStatus(status)) => assert_eq!(
            (status.code(), status.message()),
            (tonic::Code::FailedPrecondition, "etcdserver: not leader"),
            "MoveLeader through a follower"
        ),
        other => panic!("MoveLeader through a follower: {other:?}"),
    }

    let mut client = cluster.member(leader).client().await;
    expect_ok(within(REQUEST_TIMEOUT, client.move_leader(target_id)).await);
    assert_eq!(
        cluster.leader_among(&everyone).await,
        target,
        "the leader after MoveLeader"
    );
    put_acknowledged(&cluster.member(bystander).client().await, "after-move", "1").await;
    cluster.assert_converged(&everyone).await;
}
