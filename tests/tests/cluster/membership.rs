//! Membership changes through etcd's Cluster service: learners join, catch up and become
//! voters (automatically, keeping the number of voters odd, or on `MemberPromote`);
//! followers and leaders are removed, and the rest go on without them; a member's peer URLs
//! change with `MemberUpdate`.

use std::time::Instant;

use etcd_client::{Client, MemberAddOptions};

use crate::harness::{
    expect_ok, linearizable_value, poll, put_acknowledged, value_of, within, Cluster, ClusterSpec,
    DEADLINE, POLL_INTERVAL, REQUEST_TIMEOUT,
};

/// The ids of the voters and of the learners in `client`'s member's `MemberList`.
async fn roles(client: &Client) -> Result<(Vec<u64>, Vec<u64>), String> {
    let mut client = client.clone();
    let listed = within(REQUEST_TIMEOUT, client.member_list()).await?;
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for member in listed.members() {
        let ids = if member.is_learner() {
            &mut learners
        } else {
            &mut voters
        };
        ids.push(member.id());
    }
    voters.sort_unstable();
    learners.sort_unstable();
    Ok((voters, learners))
}

/// Waits until `client`'s member lists member `index` with its name and client URL, as
/// etcd does once an added member has started.
async fn wait_until_listed_by_name(cluster: &Cluster, client: &Client, index: usize) {
    let member = cluster.member(index);
    let what = format!("MemberList naming {} with its client URL", member.name());
    expect_ok(
        poll(&what, || async {
            let mut client = client.clone();
            let listed = within(REQUEST_TIMEOUT, client.member_list()).await?;
            let found = listed
                .members()
                .iter()
                .find(|listed| listed.id() == member.id())
                .ok_or("the member is not listed")?;
            if found.name() == member.name() && found.client_urls() == [member.endpoint()] {
                Ok(())
            } else {
                Err(format!("listed as {found:?}"))
            }
        })
        .await,
    );
}

/// Waits until member `index` has applied `key` (a serializable read there finds it).
async fn wait_until_replicated(cluster: &Cluster, index: usize, key: &str) {
    let client = cluster.member(index).client().await;
    let what = format!("{key} on {}", cluster.member(index).name());
    expect_ok(
        poll(&what, || async {
            match value_of(&client, key, true).await? {
                Some(_) => Ok(()),
                None => Err("not there yet".to_owned()),
            }
        })
        .await,
    );
}

/// Waits until member `index`'s own `Status` says it is a voter.
async fn wait_until_voter(cluster: &Cluster, index: usize) {
    let client = cluster.member(index).client().await;
    let what = format!(
        "Status of {} saying it is a voter",
        cluster.member(index).name()
    );
    expect_ok(
        poll(&what, || async {
            let mut client = client.clone();
            let status = within(REQUEST_TIMEOUT, client.status()).await?;
            if status.is_learner() {
                Err("is_learner is still true".to_owned())
            } else {
                Ok(())
            }
        })
        .await,
    );
}

/// Writes a key through member `writer` and reads it (linearizable) through each of `readers`.
async fn assert_write_is_read_everywhere(cluster: &Cluster, writer: usize, readers: &[usize]) {
    let key = format!("written-through/{}", cluster.member(writer).name());
    put_acknowledged(&cluster.member(writer).client().await, &key, "1").await;
    for &reader in readers {
        let client = cluster.member(reader).client().await;
        let read = linearizable_value(&client, &key).await;
        assert_eq!(
            read.as_deref(),
            Some("1"),
            "{key} read through {}",
            cluster.member(reader).name()
        );
    }
}

#[tokio::test]
async fn learners_are_promoted_automatically_keeping_the_voters_odd() {
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
    let observer = cluster.member(0).client().await;
    let first = cluster.add_member(0, true).await;
    put_acknowledged(&observer, "after-first-learner", "1").await;
    wait_until_replicated(&cluster, first, "after-first-learner").await;
    // Caught up, but promoting it alone would make four voters.
    let (voters, learners) = expect_ok(roles(&observer).await);
    assert_eq!(
        (voters.len(), learners),
        (3, vec![cluster.member(first).id()]),
        "voters and learners with one caught-up learner"
    );
    let mut learner = cluster.member(first).client().await;
    let status = expect_ok(within(REQUEST_TIMEOUT, learner.status()).await);
    assert!(status.is_learner(), "the learner's own Status: {status:?}");

    let second = cluster.add_member(0, true).await;
    expect_ok(
        poll("both learners promoted", || async {
            let (voters, learners) = roles(&observer).await?;
            assert!(
                voters.len() % 2 == 1,
                "MemberList shows an even number of voters: {voters:x?} (learners {learners:x?})"
            );
            if learners.is_empty() {
                Ok(())
            } else {
                Err(format!("voters {voters:x?}, learners {learners:x?}"))
            }
        })
        .await,
    );
    for index in [first, second] {
        wait_until_voter(&cluster, index).await;
        wait_until_listed_by_name(&cluster, &observer, index).await;
    }
    let all: Vec<usize> = (0..cluster.len()).collect();
    cluster.leader_among(&all).await;
    assert_write_is_read_everywhere(&cluster, second, &all).await;
    cluster.assert_converged(&all).await;
}

#[tokio::test]
async fn learner_is_promoted_on_request_when_automatic_promotion_is_off() {
    let mut cluster =
        Cluster::start(ClusterSpec::new(3).setting("auto-promote-learners", "false")).await;
    let learner = cluster.add_member(0, true).await;
    let learner_id = cluster.member(learner).id();
    let client = cluster.member(0).client().await;
    // etcd refuses to promote a learner that is not in sync with the leader yet.
    let promoted = expect_ok(
        poll("MemberPromote of the learner", || async {
            let mut client = client.clone();
            within(REQUEST_TIMEOUT, client.member_promote(learner_id)).await
        })
        .await,
    );
    let promoted_member = promoted
        .members()
        .iter()
        .find(|member| member.id() == learner_id)
        .unwrap_or_else(|| panic!("MemberPromote's member list lacks the learner: {promoted:?}"));
    assert!(
        !promoted_member.is_learner(),
        "still a learner: {promoted:?}"
    );
    wait_until_voter(&cluster, learner).await;
    let all: Vec<usize> = (0..cluster.len()).collect();
    assert_eq!(expect_ok(roles(&client).await).0.len(), 4, "voters");
    assert_write_is_read_everywhere(&cluster, learner, &all).await;
    cluster.assert_converged(&all).await;
}

/// Removes member `removed` through member `via` and checks the answer lists the rest.
async fn remove(cluster: &mut Cluster, removed: usize, via: usize) {
    let removed_id = cluster.member(removed).id();
    let mut client = cluster.member(via).client().await;
    let answer = expect_ok(within(REQUEST_TIMEOUT, client.member_remove(removed_id)).await);
    cluster.member_mut(removed).retire();
    let mut listed: Vec<u64> = answer.members().iter().map(|member| member.id()).collect();
    listed.sort_unstable();
    let mut expected: Vec<u64> = cluster
        .serving()
        .iter()
        .map(|&index| cluster.member(index).id())
        .collect();
    expected.sort_unstable();
    assert_eq!(listed, expected, "members after MemberRemove");
}

/// Waits until the removed member `removed` has exited (as etcd's does) or at least
/// refuses writes: it is no longer a member.
async fn assert_no_longer_serves(cluster: &mut Cluster, removed: usize) {
    let client = cluster.member(removed).client().await;
    let deadline = Instant::now() + DEADLINE;
    let name = cluster.member(removed).name().to_owned();
    loop {
        if cluster.member_mut(removed).has_exited() {
            println!("{name} exited after its removal");
            return;
        }
        let mut client = client.clone();
        if let Err(refusal) =
            within(REQUEST_TIMEOUT, client.put("through-removed", "1", None)).await
        {
            println!("{name} refuses writes after its removal: {refusal}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still accepts writes {DEADLINE:?} after its removal"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every remaining member lists exactly the remaining members, the removed one serves no
/// more, and the rest elect a leader among themselves and take writes.
async fn assert_cluster_goes_on_without(cluster: &mut Cluster, removed: usize) {
    let remaining = cluster.serving();
    let removed_id = cluster.member(removed).id();
    let removed_name = cluster.member(removed).name();
    for &index in &remaining {
        let client = cluster.member(index).client().await;
        let what = format!(
            "MemberList of {} without {removed_name}",
            cluster.member(index).name()
        );
        expect_ok(
            poll(&what, || async {
                let (voters, _) = roles(&client).await?;
                if voters.len() == remaining.len() && !voters.contains(&removed_id) {
                    Ok(())
                } else {
                    Err(format!("voters {voters:x?}"))
                }
            })
            .await,
        );
    }
    assert_no_longer_serves(cluster, removed).await;
    let leader = cluster.leader_among(&remaining).await;
    for &writer in &remaining {
        assert_write_is_read_everywhere(cluster, writer, &remaining).await;
    }
    // The removed member must not disturb the others: they still follow the same leader.
    assert_eq!(
        cluster.leader_among(&remaining).await,
        leader,
        "leader changed"
    );
    cluster.assert_converged(&remaining).await;
}

#[tokio::test]
async fn removed_follower_stops_serving_and_the_rest_keep_working() {
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % cluster.len();
    remove(&mut cluster, follower, leader).await;
    assert_cluster_goes_on_without(&mut cluster, follower).await;
}

#[tokio::test]
async fn removed_leader_is_replaced_by_a_new_leader_among_the_rest() {
    let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % cluster.len();
    remove(&mut cluster, leader, follower).await;
    assert_cluster_goes_on_without(&mut cluster, leader).await;
}

/// The peer URLs `client`'s member lists for member `id`.
async fn peer_urls_of(client: &Client, id: u64) -> Vec<String> {
    let mut client = client.clone();
    let listed = expect_ok(within(REQUEST_TIMEOUT, client.member_list()).await);
    listed
        .members()
        .iter()
        .find(|member| member.id() == id)
        .unwrap_or_else(|| panic!("member {id:x} is not listed: {listed:?}"))
        .peer_urls()
        .to_vec()
}

/// MemberUpdate changes a member's peer URLs, and MemberList through any member shows the
/// change at once (it is linearizable); MemberPromote of a voter, and of a learner that has
/// not caught up, fail with etcd's errors.
#[tokio::test]
async fn member_update_changes_peer_urls_and_promote_refuses_voters_and_lagging_learners() {
    let cluster = Cluster::start(ClusterSpec::new(3)).await;
    let leader = cluster.leader().await;
    let mut others = (0..cluster.len()).filter(|&i| i != leader);
    let (updated, observer) = (
        others.next().expect("a follower"),
        others.next().expect("another"),
    );
    let updated_id = cluster.member(updated).id();
    let mut client = cluster.member(leader).client().await;

    let refused = within(REQUEST_TIMEOUT, client.member_promote(updated_id)).await;
    assert!(
        matches!(&refused, Err(error) if error.contains("etcdserver: can only promote a learner member")
            && !error.contains("in sync")),
        "MemberPromote of a voter: {refused:?}"
    );

    // A learner whose process never started has none of the log: not in sync.
    let added = expect_ok(
        within(
            REQUEST_TIMEOUT,
            client.member_add(
                ["http://127.0.0.1:1"],
                Some(MemberAddOptions::new().with_is_learner()),
            ),
        )
        .await,
    );
    let lagging_id = added.member().expect("MemberAdd names the new member").id();
    let refused = within(REQUEST_TIMEOUT, client.member_promote(lagging_id)).await;
    assert!(
        matches!(&refused, Err(error) if error.contains(
            "etcdserver: can only promote a learner member which is in sync with leader"
        )),
        "MemberPromote of a learner that never ran: {refused:?}"
    );
    let (_, learners) = expect_ok(roles(&client).await);
    assert_eq!(
        learners,
        vec![lagging_id],
        "the refused learner is still a learner"
    );
    expect_ok(within(REQUEST_TIMEOUT, client.member_remove(lagging_id)).await);

    let original = peer_urls_of(&client, updated_id).await;
    let moved = vec!["http://127.0.0.1:1".to_owned()];
    expect_ok(
        within(
            REQUEST_TIMEOUT,
            client.member_update(updated_id, moved.clone()),
        )
        .await,
    );
    let observer_client = cluster.member(observer).client().await;
    assert_eq!(peer_urls_of(&observer_client, updated_id).await, moved);

    expect_ok(
        within(
            REQUEST_TIMEOUT,
            client.member_update(updated_id, original.clone()),
        )
        .await,
    );
    assert_eq!(peer_urls_of(&observer_client, updated_id).await, original);
    let all: Vec<usize> = (0..cluster.len()).collect();
    assert_write_is_read_everywhere(&cluster, leader, &all).await;
    cluster.assert_converged(&all).await;
}
