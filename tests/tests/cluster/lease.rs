//! Leases in a cluster: only the leader's lessor knows deadlines, so followers forward
//! keepalives and TimeToLive to it, and the leader alone expires leases, for every member.

use std::time::{Duration, Instant};

use etcd_client::{LeaseTimeToLiveOptions, PutOptions};

use crate::harness::{expect_ok, poll, retry, value_of, Cluster, ClusterSpec};

#[tokio::test]
async fn lease_requests_through_followers_reach_the_leaders_lessor() {
    let cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..cluster.len()).filter(|&i| i != leader).collect();
    let mut first = cluster.member(followers[0]).client().await;
    let mut second = cluster.member(followers[1]).client().await;

    let granted = expect_ok(
        retry("a grant", || {
            let mut client = first.clone();
            async move { client.lease_grant(30, None).await }
        })
        .await,
    );
    let lease = granted.id();
    assert!(lease > 0, "a follower picks a positive ID too");
    let options = PutOptions::new().with_lease(lease);
    first
        .put("leased", "v", Some(options))
        .await
        .expect("put with lease");

    let with_keys = LeaseTimeToLiveOptions::new().with_keys();
    let ttl = second
        .lease_time_to_live(lease, Some(with_keys))
        .await
        .expect("TimeToLive through a follower");
    assert_eq!(
        (ttl.granted_ttl(), ttl.keys()),
        (30, &[b"leased".to_vec()][..])
    );
    assert!((28..=30).contains(&ttl.ttl()), "remaining {}", ttl.ttl());

    let (mut keeper, mut answers) = second
        .lease_keep_alive(lease)
        .await
        .expect("keepalive through a follower");
    keeper.keep_alive().await.expect("send a keepalive");
    let answer = answers.message().await.expect("answer").expect("open");
    assert_eq!((answer.id(), answer.ttl()), (lease, 30));

    second.lease_revoke(lease).await.expect("revoke");
    let unknown = first
        .lease_time_to_live(lease, None)
        .await
        .expect("TimeToLive of an unknown lease");
    assert_eq!(unknown.ttl(), -1);
    keeper.keep_alive().await.expect("send a keepalive");
    let answer = answers.message().await.expect("answer").expect("open");
    assert_eq!(
        answer.ttl(),
        0,
        "a keepalive of an unknown lease answers TTL 0"
    );
}

#[tokio::test]
async fn the_leader_expires_a_lease_granted_through_a_follower_on_every_member() {
    let cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let follower = (0..cluster.len())
        .find(|&i| i != leader)
        .expect("a follower");
    let mut client = cluster.member(follower).client().await;
    let ttl = 2;
    let granted = retry("a grant", || {
        let mut client = client.clone();
        async move { client.lease_grant(ttl, None).await }
    })
    .await;
    let lease = expect_ok(granted).id();
    let options = PutOptions::new().with_lease(lease);
    client
        .put("expiring", "v", Some(options))
        .await
        .expect("put with lease");
    let granted_at = Instant::now();

    for index in 0..cluster.len() {
        let member = cluster.member(index).client().await;
        expect_ok(
            poll("the key's expiry", || async {
                match value_of(&member, "expiring", true).await? {
                    None => Ok(()),
                    Some(_) => Err("still there".to_owned()),
                }
            })
            .await,
        );
    }
    let gone_after = granted_at.elapsed();
    assert!(
        gone_after <= Duration::from_secs(ttl as u64 + 1),
        "expired {gone_after:?} after the grant"
    );
}
