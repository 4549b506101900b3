//! A member cut off from the others (its peer link down in its network namespace) is a
//! minority of one: it must neither acknowledge a write nor serve a linearizable read,
//! while the majority elects a leader if needed and goes on. Once the link is back, the
//! member converges with the rest.

use crate::harness::{
    expect_ok, linearizable_value, poll, put_acknowledged, value_of, within, Cluster, ClusterSpec,
    REQUEST_TIMEOUT,
};

/// Which member the test cuts off.
#[derive(Clone, Copy)]
enum Cut {
    Leader,
    Follower,
}

async fn minority_cannot_write_or_read_linearizably(cut: Cut) {
    let cluster = Cluster::start(ClusterSpec::new(3).in_namespaces()).await;
    let leader = cluster.leader().await;
    let isolated = match cut {
        Cut::Leader => leader,
        Cut::Follower => (leader + 1) % cluster.len(),
    };
    let majority: Vec<usize> = (0..cluster.len()).filter(|&i| i != isolated).collect();
    put_acknowledged(&cluster.member(leader).client().await, "before", "1").await;

    cluster.cut(isolated);
    let minority = cluster.member(isolated).client().await;
    let mut writer = minority.clone();
    let (write, read) = tokio::join!(
        within(REQUEST_TIMEOUT, writer.put("minority-write", "1", None)),
        value_of(&minority, "before", false),
    );
    let name = cluster.member(isolated).name();
    assert!(
        write.is_err(),
        "the cut-off member {name} acknowledged a write: {write:?}"
    );
    assert!(
        read.is_err(),
        "the cut-off member {name} served a linearizable read: {read:?}"
    );

    let (status, body) = expect_ok(cluster.member(isolated).page("/readyz").await);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains("[-]linearizable_read failed"), "{body}");
    let (status, body) = expect_ok(cluster.member(isolated).page("/health").await);
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(
        body.contains(r#""reason":"QGET ERROR""#) || body.contains(r#""reason":"RAFT NO LEADER""#),
        "{body}"
    );
    let (status, body) = expect_ok(
        cluster
            .member(isolated)
            .page("/health?serializable=true")
            .await,
    );
    assert_eq!(
        status, "HTTP/1.1 200 OK",
        "a local read needs no quorum: {body}"
    );

    let new_leader = cluster.leader_among(&majority).await;
    println!(
        "leader {} before the cut, {} in the majority after",
        cluster.member(leader).name(),
        cluster.member(new_leader).name()
    );
    for &writer in &majority {
        let key = format!("majority-write/{}", cluster.member(writer).name());
        put_acknowledged(&cluster.member(writer).client().await, &key, "1").await;
        for &reader in &majority {
            let client = cluster.member(reader).client().await;
            let read = linearizable_value(&client, &key).await;
            assert_eq!(read.as_deref(), Some("1"), "{key} read in the majority");
        }
        let stale = expect_ok(value_of(&minority, &key, true).await);
        assert_eq!(stale, None, "{key} reached the cut-off member {name}");
    }

    cluster.heal(isolated);
    let all: Vec<usize> = majority.iter().copied().chain([isolated]).collect();
    cluster.leader_among(&all).await;
    cluster.assert_converged(&all).await;
    let ready = poll("the healed member's /readyz", || async {
        match cluster.member(isolated).page("/readyz").await? {
            (status, body) if status == "HTTP/1.1 200 OK" && body == "ok" => Ok(()),
            answer => Err(format!("{answer:?}")),
        }
    })
    .await;
    expect_ok(ready);
    for &writer in &majority {
        let key = format!("majority-write/{}", cluster.member(writer).name());
        let read = linearizable_value(&minority, &key).await;
        assert_eq!(
            read.as_deref(),
            Some("1"),
            "{key} read through {name} after healing"
        );
    }
}

#[tokio::test]
async fn minority_side_cannot_write_or_read_linearizably_when_the_leader_is_cut_off() {
    minority_cannot_write_or_read_linearizably(Cut::Leader).await;
}

#[tokio::test]
async fn minority_side_cannot_write_or_read_linearizably_when_a_follower_is_cut_off() {
    minority_cannot_write_or_read_linearizably(Cut::Follower).await;
}
